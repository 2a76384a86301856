//! Retained messages: store, replace, delete, delivery on subscribe, retain
//! handling, wildcard lookups over many topics and expiry.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

// 3.1.1: [MQTT-3.3.1-5] a retained message is stored and replaces the
// previous one (also at QoS 0: [MQTT-3.3.1-7]); [MQTT-3.3.1-6] a new
// subscription gets it, [MQTT-3.3.1-8] with RETAIN 1, at min(QoS);
// [MQTT-3.3.1-9] live messages to existing subscriptions have RETAIN 0;
// [MQTT-3.3.1-12] a non-retained publish leaves the retained message alone;
// [MQTT-3.3.1-10] / [MQTT-3.3.1-11] an empty retained payload deletes it
// (and is still forwarded to current subscribers).
// (MQTT 5 numbering: [MQTT-3.3.1-5] .. [MQTT-3.3.1-8].)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_set_replace_delete() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut publ = Client4::connect(b.port(), "rt-pub", true).await;
        let mut live = Client4::connect(b.port(), "rt-live", true).await;
        live.subscribe("rt/a", rumqttc::QoS::AtLeastOnce).await;

        publ.publish("rt/a", rumqttc::QoS::ExactlyOnce, true, "1").await;
        let m = live.recv().await;
        assert_eq!((&m.payload[..], m.retain), (&b"1"[..], false), "live copy has RETAIN 0");
        publ.publish("rt/a", rumqttc::QoS::AtMostOnce, true, "2").await;
        let m = live.recv().await;
        assert_eq!((&m.payload[..], m.retain), (&b"2"[..], false));
        publ.publish("rt/a", rumqttc::QoS::AtLeastOnce, false, "not retained").await;
        live.recv().await;

        let mut s1 = Client4::connect(b.port(), "rt-s1", true).await;
        s1.subscribe("rt/a", rumqttc::QoS::ExactlyOnce).await;
        let m = s1.recv().await;
        assert_eq!(&m.payload[..], b"2", "the replacing message is kept");
        assert!(m.retain, "sent because of a new subscription: RETAIN 1");
        assert_eq!(m.qos, rumqttc::QoS::AtMostOnce, "retained at QoS 0");
        s1.assert_no_message(QUIET).await;

        publ.publish("rt/a", rumqttc::QoS::ExactlyOnce, true, "3").await;
        live.recv().await;
        s1.recv().await;
        let mut s2 = Client4::connect(b.port(), "rt-s2", true).await;
        s2.subscribe("rt/a", rumqttc::QoS::AtLeastOnce).await;
        let m = s2.recv().await;
        assert_eq!((&m.payload[..], m.retain, m.qos), (&b"3"[..], true, rumqttc::QoS::AtLeastOnce));

        // delete
        publ.publish("rt/a", rumqttc::QoS::AtLeastOnce, true, Vec::new()).await;
        let m = live.recv().await;
        assert!(m.payload.is_empty(), "the empty retained message is forwarded");
        let mut s3 = Client4::connect(b.port(), "rt-s3", true).await;
        s3.subscribe("rt/a", rumqttc::QoS::AtLeastOnce).await;
        s3.assert_no_message(QUIET).await;
    })
    .await;
}

// v5 retain handling: [MQTT-3.3.1-9] 0 = send on every subscribe;
// [MQTT-3.3.1-10] 1 = only if the subscription did not exist;
// [MQTT-3.3.1-11] 2 = never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_0_1_2() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut publ = Client5::connect(b.port(), "rh-pub", true, None).await;
        publ.publish("rt/rh/t", QoS5::AtLeastOnce, true, "kept").await;
        let with_rule = |rule: v5::RetainForwardRule| {
            let mut f = filter5("rt/rh/t", QoS::AtLeastOnce);
            f.set_retain_forward_rule(rule);
            f
        };

        let (mut c0, _) = Raw::connect5_ok(b.port(), connect5("rh-0", true)).await;
        for pkid in 1..=2 {
            c0.subscribe5(pkid, vec![with_rule(v5::RetainForwardRule::OnEverySubscribe)], None).await;
            let m = c0.collect5(1).await;
            assert_eq!((&m[0].payload[..], m[0].retain), (&b"kept"[..], true), "handling 0, subscribe #{pkid}");
        }

        let (mut c1, _) = Raw::connect5_ok(b.port(), connect5("rh-1", true)).await;
        c1.subscribe5(1, vec![with_rule(v5::RetainForwardRule::OnNewSubscribe)], None).await;
        let m = c1.collect5(1).await;
        assert_eq!(&m[0].payload[..], b"kept", "handling 1, new subscription");
        c1.subscribe5(2, vec![with_rule(v5::RetainForwardRule::OnNewSubscribe)], None).await;
        c1.assert_no_publish5(QUIET).await;

        let (mut c2, _) = Raw::connect5_ok(b.port(), connect5("rh-2", true)).await;
        c2.subscribe5(1, vec![with_rule(v5::RetainForwardRule::Never)], None).await;
        c2.assert_no_publish5(QUIET).await;
        // ... but live messages still flow to it
        publ.publish("rt/rh/t", QoS5::AtLeastOnce, false, "live").await;
        let m = c2.collect5(1).await;
        assert_eq!((&m[0].payload[..], m[0].retain), (&b"live"[..], false));
    })
    .await;
}

// [MQTT-3.3.1-6] (3.1.1) / [MQTT-3.3.1-9] (v5): a wildcard subscription
// receives the retained message of every matching topic, once each, with
// RETAIN 1; topics are spread so that they live on several shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscribe_finds_retained_on_many_topics() {
    on_cores(BrokerOpts::new(), |b| async move {
        let n = 48;
        let mut publ = Client5::connect(b.port(), "rw-pub", true, None).await;
        for i in 0..n {
            publ.publish(&format!("rt/rw/{i}/v"), QoS5::AtLeastOnce, true, format!("{i}")).await;
        }
        publ.publish("rt/rw/deep/x/v", QoS5::AtLeastOnce, true, "deep").await;
        publ.publish("rt/other/1/v", QoS5::AtLeastOnce, true, "other").await;

        let (mut hash, _) = Raw::connect5_ok(b.port(), connect5("rw-hash", true)).await;
        hash.sub5(1, "rt/rw/#", QoS::AtLeastOnce).await;
        let got = hash.collect5(n + 1).await;
        assert!(got.iter().all(|p| p.retain), "all sent with RETAIN 1");
        let topics: BTreeSet<_> = got.iter().map(|p| p.topic.clone()).collect();
        assert_eq!(topics.len(), n + 1, "each retained message once");
        assert!(topics.contains("rt/rw/deep/x/v"));
        hash.assert_no_publish5(QUIET).await;

        let mut plus = Client4::connect(b.port(), "rw-plus", true).await;
        plus.subscribe("rt/rw/+/v", rumqttc::QoS::AtMostOnce).await;
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            let m = plus.recv().await;
            assert!(m.retain);
            assert!(seen.insert(m.topic.clone()), "duplicate {}", m.topic);
        }
        let expected: BTreeSet<_> = (0..n).map(|i| format!("rt/rw/{i}/v")).collect();
        assert_eq!(seen, expected);
        plus.assert_no_message(QUIET).await;
    })
    .await;
}

// [MQTT-3.3.2-5] a retained message whose Message Expiry Interval has passed
// is not delivered to new subscribers; [MQTT-3.3.2-6] a live one is sent
// with the remaining interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_expires() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut publ, _) = Raw::connect5_ok(b.port(), connect5("rx-pub", true)).await;
        for (pkid, topic, expiry) in
            [(1u16, "rt/rx/short", Some(1u32)), (2, "rt/rx/mid", Some(60)), (3, "rt/rx/none", None)]
        {
            let mut p = publish5(topic, QoS::AtLeastOnce, pkid, true, topic.as_bytes());
            let mut props = publish_props5();
            props.message_expiry_interval = expiry;
            p.properties = Some(props);
            publ.publish5_complete(&p).await;
        }
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let (mut sub, _) = Raw::connect5_ok(b.port(), connect5("rx-sub", true)).await;
        sub.sub5(1, "rt/rx/#", QoS::AtLeastOnce).await;
        let got = sub.drain5(Duration::from_millis(600)).await;
        let topics: BTreeSet<_> = got.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(topics, BTreeSet::from(["rt/rx/mid", "rt/rx/none"]), "expired retained message dropped");
        for p in &got {
            let mei = p.properties.as_ref().and_then(|pp| pp.message_expiry_interval);
            if p.topic == "rt/rx/mid" {
                assert!(matches!(mei, Some(1..=58)), "remaining expiry {mei:?}");
            } else {
                assert_eq!(mei, None);
            }
        }
    })
    .await;
}
