//! Persistent sessions: subscriptions and QoS 1/2 messages kept while the
//! client is offline, redelivery of unacknowledged messages, QoS 2 state
//! across reconnects, session expiry, queue bounds and clean start.

mod common;

use std::time::Duration;

use common::*;

fn payloads4(v: &[v4::Publish]) -> Vec<String> {
    v.iter().map(|p| String::from_utf8_lossy(&p.payload).to_string()).collect()
}

fn payloads5(v: &[v5::Publish]) -> Vec<String> {
    v.iter().map(|p| String::from_utf8_lossy(&p.payload).to_string()).collect()
}

// 3.1.1 [MQTT-3.1.2-4] CleanSession 0 resumes the session (subscriptions
// kept); [MQTT-3.1.2-5] QoS 1 and 2 messages matching its subscriptions are
// stored while it is offline and delivered on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_persistent_session_keeps_subscriptions_and_queues() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut c, _) = Raw::connect4_ok(b.port(), "ss4", false).await;
        c.subscribe4(1, "ss/v4/q1", QoS::AtLeastOnce).await;
        c.subscribe4(2, "ss/v4/q2", QoS::ExactlyOnce).await;
        c.disconnect4().await;

        let mut publ = Client4::connect(b.port(), "ss4-pub", true).await;
        for i in 0..3 {
            publ.publish("ss/v4/q1", rumqttc::QoS::AtLeastOnce, false, format!("a{i}")).await;
            publ.publish("ss/v4/q2", rumqttc::QoS::ExactlyOnce, false, format!("b{i}")).await;
        }
        let (mut c, ack) = Raw::connect4_ok(b.port(), "ss4", false).await;
        assert!(ack.session_present);
        let got = c.collect4(6).await;
        let q1: Vec<_> = got.iter().filter(|p| p.topic == "ss/v4/q1").cloned().collect();
        let q2: Vec<_> = got.iter().filter(|p| p.topic == "ss/v4/q2").cloned().collect();
        assert_eq!(payloads4(&q1), vec!["a0", "a1", "a2"]);
        assert_eq!(payloads4(&q2), vec!["b0", "b1", "b2"]);
        assert!(q1.iter().all(|p| p.qos == QoS::AtLeastOnce));
        assert!(q2.iter().all(|p| p.qos == QoS::ExactlyOnce));
        // the subscription survived: a live message arrives without
        // subscribing again
        publ.publish("ss/v4/q1", rumqttc::QoS::AtLeastOnce, false, "live").await;
        let got = c.collect4(1).await;
        assert_eq!(payloads4(&got), vec!["live"]);
    })
    .await;
}

// v5 [MQTT-3.1.2-4] / [MQTT-3.1.2-5]: Clean Start 0 with a Session Expiry
// Interval keeps the session; queued QoS 1/2 messages arrive on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_persistent_session_keeps_subscriptions_and_queues() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut c, _) = Raw::connect5_ok(b.port(), connect5_session("ss5", true, 60)).await;
        c.sub5(1, "ss/v5/q1", QoS::AtLeastOnce).await;
        c.sub5(2, "ss/v5/q2", QoS::ExactlyOnce).await;
        c.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;

        let mut publ = Client5::connect(b.port(), "ss5-pub", true, None).await;
        for i in 0..3 {
            publ.publish("ss/v5/q1", QoS5::AtLeastOnce, false, format!("a{i}")).await;
            publ.publish("ss/v5/q2", QoS5::ExactlyOnce, false, format!("b{i}")).await;
        }
        let (mut c, ack) = Raw::connect5_ok(b.port(), connect5_session("ss5", false, 60)).await;
        assert!(ack.session_present);
        let got = c.collect5(6).await;
        let q1: Vec<_> = got.iter().filter(|p| p.topic == "ss/v5/q1").cloned().collect();
        let q2: Vec<_> = got.iter().filter(|p| p.topic == "ss/v5/q2").cloned().collect();
        assert_eq!(payloads5(&q1), vec!["a0", "a1", "a2"]);
        assert_eq!(payloads5(&q2), vec!["b0", "b1", "b2"]);
        assert!(q2.iter().all(|p| p.qos == QoS::ExactlyOnce));
        publ.publish("ss/v5/q2", QoS5::AtLeastOnce, false, "live").await;
        let got = c.collect5(1).await;
        assert_eq!(payloads5(&got), vec!["live"]);
        c.assert_no_publish5(QUIET).await;
    })
    .await;
}

// [MQTT-4.4.0-1] unacknowledged QoS 1 PUBLISHes are resent on reconnect with
// the original Packet Identifier and [MQTT-3.3.1-1] DUP = 1; once acked they
// are not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_qos1_redelivered_with_dup_after_reconnect() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut publ = Client5::connect(b.port(), "dup-pub", true, None).await;

        // v5
        let (mut c, _) = Raw::connect5_ok(b.port(), connect5_session("dup5", true, 60)).await;
        c.sub5(1, "ss/dup5", QoS::AtLeastOnce).await;
        publ.publish("ss/dup5", QoS5::AtLeastOnce, false, "m1").await;
        let first = c.expect_publish5().await;
        assert!(!first.dup, "first delivery has DUP 0");
        drop(c); // no PUBACK, connection dropped
        let (mut c, ack) = Raw::connect5_ok(b.port(), connect5_session("dup5", false, 60)).await;
        assert!(ack.session_present);
        let again = c.expect_publish5().await;
        assert!(again.dup, "redelivery has DUP 1");
        assert_eq!(again.pkid, first.pkid, "original packet identifier");
        assert_eq!(&again.payload[..], b"m1");
        assert_eq!(again.qos, QoS::AtLeastOnce);
        c.ack5(&again).await;
        c.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;
        let (mut c, _) = Raw::connect5_ok(b.port(), connect5_session("dup5", false, 60)).await;
        c.assert_no_publish5(QUIET).await;

        // 3.1.1
        let (mut c, _) = Raw::connect4_ok(b.port(), "dup4", false).await;
        c.subscribe4(1, "ss/dup4", QoS::AtLeastOnce).await;
        publ.publish("ss/dup4", QoS5::AtLeastOnce, false, "m2").await;
        let first = c.expect_publish4().await;
        assert!(!first.dup);
        drop(c);
        let (mut c, ack) = Raw::connect4_ok(b.port(), "dup4", false).await;
        assert!(ack.session_present);
        let again = c.expect_publish4().await;
        assert!(again.dup, "redelivery has DUP 1");
        assert_eq!(again.pkid, first.pkid);
        assert_eq!(&again.payload[..], b"m2");
    })
    .await;
}

// [MQTT-4.4.0-1] an outbound QoS 2 flow interrupted after PUBREC is resumed
// with PUBREL (not with the PUBLISH again) on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_qos2_pubrel_resent_after_reconnect() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut c, _) = Raw::connect5_ok(b.port(), connect5_session("rel5", true, 60)).await;
        c.sub5(1, "ss/rel", QoS::ExactlyOnce).await;
        let mut publ = Client5::connect(b.port(), "rel-pub", true, None).await;
        publ.publish("ss/rel", QoS5::ExactlyOnce, false, "q2").await;
        let p = c.expect_publish5().await;
        c.ack5(&p).await; // PUBREC
        let rel = c.expect(PUBREL).await;
        assert_eq!(&rel.body()[..2], &p.pkid.to_be_bytes());
        drop(c); // no PUBCOMP
        let (mut c, ack) = Raw::connect5_ok(b.port(), connect5_session("rel5", false, 60)).await;
        assert!(ack.session_present);
        let f = c.recv().await;
        assert_eq!(f.ptype(), PUBREL, "PUBREL resent, not the PUBLISH: {f:?}");
        assert_eq!(f.flags(), 0b0010, "PUBREL fixed header flags");
        assert_eq!(&f.body()[..2], &p.pkid.to_be_bytes(), "same packet identifier");
        let comp = v5::PubComp::new(p.pkid);
        c.send(|b| comp.write(b)).await;
        c.assert_no_publish5(QUIET).await;
    })
    .await;
}

// 4.3.3 / [MQTT-4.4.0-1] inbound QoS 2: after PUBREC the client
// reconnects and sends PUBREL; the server answers PUBCOMP (reason 0x00: the
// packet identifier is still known) and the message is delivered exactly
// once, even if the client also resent the PUBLISH with DUP 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_qos2_completed_after_reconnect_exactly_once() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut sub, _) = Raw::connect5_ok(b.port(), connect5("in2-sub", true)).await;
        sub.sub5(1, "ss/in2/#", QoS::ExactlyOnce).await;

        // v5 publisher: PUBLISH, PUBREC, reconnect, PUBREL, PUBCOMP
        let (mut p5, _) = Raw::connect5_ok(b.port(), connect5_session("in2-pub5", true, 60)).await;
        p5.publish5(&publish5("ss/in2/v5", QoS::ExactlyOnce, 7, false, b"once5")).await;
        let rec = p5.expect(PUBREC).await;
        assert_eq!(&rec.body()[..2], &7u16.to_be_bytes());
        drop(p5);
        let (mut p5, ack) = Raw::connect5_ok(b.port(), connect5_session("in2-pub5", false, 60)).await;
        assert!(ack.session_present);
        let rel = v5::PubRel::new(7);
        p5.send(|b| rel.write(b)).await;
        let comp = p5.expect(PUBCOMP).await;
        assert_eq!(&comp.body()[..2], &7u16.to_be_bytes());
        assert_eq!(comp.body().get(2).copied().unwrap_or(0), 0x00, "PUBCOMP reason: {comp:?}");

        // 3.1.1 publisher: PUBLISH, PUBREC, reconnect, PUBLISH DUP, PUBREL
        let (mut p4, _) = Raw::connect4_ok(b.port(), "in2-pub4", false).await;
        p4.publish4("ss/in2/v4", QoS::ExactlyOnce, 9, false, b"once4").await;
        p4.expect(PUBREC).await;
        drop(p4);
        let (mut p4, ack) = Raw::connect4_ok(b.port(), "in2-pub4", false).await;
        assert!(ack.session_present);
        let mut dup = v4::Publish::new("ss/in2/v4", QoS::ExactlyOnce, b"once4".to_vec());
        dup.pkid = 9;
        dup.dup = true;
        p4.send(|b| dup.write(b)).await;
        let rec = p4.expect(PUBREC).await;
        assert_eq!(rec.body(), &9u16.to_be_bytes());
        let rel = v4::PubRel::new(9);
        p4.send(|b| rel.write(b)).await;
        let comp = p4.expect(PUBCOMP).await;
        assert_eq!(comp.body(), &9u16.to_be_bytes());

        let got = sub.drain5(Duration::from_millis(700)).await;
        let mut bodies = payloads5(&got);
        bodies.sort();
        assert_eq!(bodies, vec!["once4", "once5"], "each message exactly once");
    })
    .await;
}

// [MQTT-3.1.2-23] (v5) the session is kept for the Session Expiry Interval
// only: after it passed, Session Present is 0 and nothing queued survives;
// with expiry 0 the session ends with the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_discards_session() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut c, _) = Raw::connect5_ok(b.port(), connect5_session("sx-1", true, 1)).await;
        c.sub5(1, "ss/sx", QoS::AtLeastOnce).await;
        c.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;
        let (mut c0, _) = Raw::connect5_ok(b.port(), connect5("sx-0", true)).await;
        c0.sub5(1, "ss/sx", QoS::AtLeastOnce).await;
        c0.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;

        let mut publ = Client5::connect(b.port(), "sx-pub", true, None).await;
        publ.publish("ss/sx", QoS5::AtLeastOnce, false, "lost").await;

        let (mut c0, ack) = Raw::connect5_ok(b.port(), connect5_session("sx-0", false, 60)).await;
        assert!(!ack.session_present, "expiry 0: session ended with the connection");
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let (mut c, ack) = Raw::connect5_ok(b.port(), connect5_session("sx-1", false, 60)).await;
        assert!(!ack.session_present, "session expired after 1 s");
        c.assert_no_publish5(QUIET).await;
        c0.assert_no_publish5(Duration::from_millis(50)).await;
        // the subscription died with the session
        publ.publish("ss/sx", QoS5::AtLeastOnce, false, "after").await;
        c.assert_no_publish5(QUIET).await;
    })
    .await;
}

// --max-queued-messages bounds the queue of an offline persistent session:
// the oldest messages are dropped, the newest kept in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_bound_drops_oldest() {
    // mosquitto keeps max_inflight_messages + max_queued_messages messages
    // and then drops the NEWEST ones; PromptMQ's contract drops the oldest.
    skip_on_mosquitto!("mosquitto drops the newest queued messages, not the oldest");
    on_cores(BrokerOpts::new().max_queued_messages(5), |b| async move {
        let (mut c5, _) = Raw::connect5_ok(b.port(), connect5_session("qb5", true, 60)).await;
        c5.sub5(1, "ss/qb", QoS::AtLeastOnce).await;
        c5.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;
        let (mut c4, _) = Raw::connect4_ok(b.port(), "qb4", false).await;
        c4.subscribe4(1, "ss/qb", QoS::AtLeastOnce).await;
        c4.disconnect4().await;

        let mut publ = Client5::connect(b.port(), "qb-pub", true, None).await;
        for i in 0..20 {
            publ.publish("ss/qb", QoS5::AtLeastOnce, false, format!("{i}")).await;
        }
        let expected: Vec<String> = (15..20).map(|i| i.to_string()).collect();
        let (mut c5, _) = Raw::connect5_ok(b.port(), connect5_session("qb5", false, 60)).await;
        let got = c5.drain5(Duration::from_millis(700)).await;
        assert_eq!(payloads5(&got), expected, "v5: newest 5 kept");
        let (mut c4, _) = Raw::connect4_ok(b.port(), "qb4", false).await;
        let got = c4.collect4(5).await;
        assert_eq!(payloads4(&got), expected, "3.1.1: newest 5 kept");
        c4.expect_silence(QUIET).await;
    })
    .await;
}

// [MQTT-3.1.2-4] (v5) / [MQTT-3.1.2-6] (3.1.1): Clean Start / Clean Session
// 1 discards the existing session: no queued messages, no subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_discards_old_session() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut c5, _) = Raw::connect5_ok(b.port(), connect5_session("cs5", true, 60)).await;
        c5.sub5(1, "ss/cs", QoS::AtLeastOnce).await;
        c5.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;
        let (mut c4, _) = Raw::connect4_ok(b.port(), "cs4", false).await;
        c4.subscribe4(1, "ss/cs", QoS::AtLeastOnce).await;
        c4.disconnect4().await;

        let mut publ = Client5::connect(b.port(), "cs-pub", true, None).await;
        publ.publish("ss/cs", QoS5::AtLeastOnce, false, "queued").await;

        let (mut c5, ack) = Raw::connect5_ok(b.port(), connect5_session("cs5", true, 60)).await;
        assert!(!ack.session_present);
        let (mut c4, ack) = Raw::connect4_ok(b.port(), "cs4", true).await;
        assert!(!ack.session_present);
        c5.assert_no_publish5(QUIET).await;
        c4.expect_silence(Duration::from_millis(50)).await;
        publ.publish("ss/cs", QoS5::AtLeastOnce, false, "live").await;
        c5.assert_no_publish5(QUIET).await;
        c4.expect_silence(Duration::from_millis(50)).await;
    })
    .await;
}
