//! Will messages: published on abnormal close, suppressed by a normal
//! DISCONNECT, forced by DISCONNECT 0x04, delayed by the Will Delay
//! Interval, bounded by session expiry, retained on request.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn will4(id: &str, topic: &str, payload: &[u8], qos: QoS, retain: bool) -> v4::Connect {
    let mut c = connect4(id, true);
    c.last_will = Some(v4::LastWill::new(topic, payload.to_vec(), qos, retain));
    c
}

fn will5(id: &str, topic: &str, payload: &[u8], delay: Option<u32>, session_expiry: Option<u32>) -> v5::Connect {
    let mut c = match session_expiry {
        Some(e) => connect5_session(id, true, e),
        None => connect5(id, true),
    };
    let mut w = v5::LastWill::new(topic, payload.to_vec(), QoS::AtLeastOnce, false);
    if delay.is_some() {
        let mut p = will_props5();
        p.delay_interval = delay;
        w.properties = Some(p);
    }
    c.last_will = Some(w);
    c
}

async fn watcher(port: u16, id: &str, filter: &str) -> Raw {
    let (mut w, _) = Raw::connect5_ok(port, connect5(id, true)).await;
    w.sub5(1, filter, QoS::AtLeastOnce).await;
    w
}

// [MQTT-3.1.2-8] the Will Message is published when the network connection
// is closed without DISCONNECT (3.1.1 and v5), with its QoS and
// properties (3.1.3.2: will properties are sent with the message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_on_abrupt_close() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut w = watcher(b.port(), "wl-watch", "wl/abrupt/#").await;
        let (c4, _) = Raw::connect4(b.port(), will4("wl-a4", "wl/abrupt/v4", b"gone4", QoS::ExactlyOnce, false)).await;
        let mut c = will5("wl-a5", "wl/abrupt/v5", b"gone5", None, None);
        if let Some(lw) = c.last_will.as_mut() {
            let mut p = will_props5();
            p.content_type = Some("text/plain".into());
            p.user_properties = vec![("why".into(), "crash".into()), ("a".into(), "b".into())];
            lw.properties = Some(p);
        }
        let (c5, _) = Raw::connect5_ok(b.port(), c).await;
        w.assert_no_publish5(Duration::from_millis(200)).await;
        drop(c4);
        let got = w.collect5(1).await;
        assert_eq!((got[0].topic.as_str(), &got[0].payload[..]), ("wl/abrupt/v4", &b"gone4"[..]));
        assert_eq!(got[0].qos, QoS::AtLeastOnce, "min(will QoS 2, granted 1)");
        drop(c5);
        let got = w.collect5(1).await;
        assert_eq!((got[0].topic.as_str(), &got[0].payload[..]), ("wl/abrupt/v5", &b"gone5"[..]));
        let p = got[0].properties.clone().expect("will properties forwarded");
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            p.user_properties,
            vec![("why".to_string(), "crash".to_string()), ("a".to_string(), "b".to_string())]
        );
    })
    .await;
}

// [MQTT-3.1.2-10] after a normal DISCONNECT (3.1.1, v5 reason 0x00) the Will
// Message is discarded and not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_not_published_after_normal_disconnect() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut w = watcher(b.port(), "wn-watch", "wl/normal/#").await;
        let (c4, _) = Raw::connect4(b.port(), will4("wn-4", "wl/normal/v4", b"x", QoS::AtLeastOnce, false)).await;
        c4.disconnect4().await;
        let (c5, _) = Raw::connect5_ok(b.port(), will5("wn-5", "wl/normal/v5", b"x", None, None)).await;
        c5.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;
        w.assert_no_publish5(Duration::from_millis(700)).await;
    })
    .await;
}

// 3.14.2.1: DISCONNECT with reason 0x04 (Disconnect with Will Message) makes
// the server publish the Will Message [MQTT-3.1.2-8].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_after_disconnect_0x04() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut w = watcher(b.port(), "w4-watch", "wl/x04/#").await;
        let (c5, _) = Raw::connect5_ok(b.port(), will5("w4-5", "wl/x04/v5", b"asked", None, None)).await;
        c5.disconnect5(v5::DisconnectReasonCode::DisconnectWithWillMessage).await;
        let got = w.collect5(1).await;
        assert_eq!((got[0].topic.as_str(), &got[0].payload[..]), ("wl/x04/v5", &b"asked"[..]));
    })
    .await;
}

// [MQTT-3.1.3-9] the Will Message is published after the Will Delay
// Interval, and not at all if the client reconnects to the session before
// the interval passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_interval() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut w = watcher(b.port(), "wd-watch", "wl/delay/#").await;
        let (late, _) = Raw::connect5_ok(b.port(), will5("wd-late", "wl/delay/late", b"late", Some(2), Some(60))).await;
        let (back, _) = Raw::connect5_ok(b.port(), will5("wd-back", "wl/delay/back", b"back", Some(2), Some(60))).await;
        let t0 = Instant::now();
        drop(late);
        drop(back);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // "wd-back" resumes its session in time
        let (_back, ack) = Raw::connect5_ok(b.port(), connect5_session("wd-back", false, 60)).await;
        assert!(ack.session_present);
        let early = w.drain5(Duration::from_millis(1200)).await;
        assert!(early.is_empty(), "nothing before the delay: {early:?}");
        let got = w.collect5(1).await;
        let elapsed = t0.elapsed();
        assert_eq!(got[0].topic, "wl/delay/late");
        assert!(elapsed >= Duration::from_millis(1900), "published after {elapsed:?}, delay is 2 s");
        assert!(elapsed <= Duration::from_millis(4000), "published late: {elapsed:?}");
        w.assert_no_publish5(Duration::from_millis(800)).await;
    })
    .await;
}

// [MQTT-3.1.3-9] a Will Delay Interval longer than the Session Expiry
// Interval: the will is published when the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_when_session_ends_before_delay() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut w = watcher(b.port(), "we-watch", "wl/expiry/#").await;
        let (c, _) = Raw::connect5_ok(b.port(), will5("we-5", "wl/expiry/v5", b"ended", Some(60), Some(1))).await;
        let t0 = Instant::now();
        drop(c);
        let got = w.collect5(1).await;
        let elapsed = t0.elapsed();
        assert_eq!(&got[0].payload[..], b"ended");
        assert!(elapsed >= Duration::from_millis(700), "published before the session ended: {elapsed:?}");
        assert!(elapsed <= Duration::from_millis(3500), "published late: {elapsed:?}");
    })
    .await;
}

// [MQTT-3.1.2-17] Will Retain 1: the will is published as a retained
// message (a later subscriber gets it with RETAIN 1); [MQTT-3.1.2-16] Will
// Retain 0: not retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_retain_flag_honored() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut w = watcher(b.port(), "wr-watch", "wl/retain/#").await;
        let (c, _) = Raw::connect4(b.port(), will4("wr-1", "wl/retain/yes", b"kept", QoS::AtLeastOnce, true)).await;
        drop(c);
        let (c, _) = Raw::connect4(b.port(), will4("wr-0", "wl/retain/no", b"not kept", QoS::AtLeastOnce, false)).await;
        drop(c);
        w.collect5(2).await;
        let mut late = Client4::connect(b.port(), "wr-late", true).await;
        late.subscribe("wl/retain/#", rumqttc::QoS::AtLeastOnce).await;
        let m = late.recv().await;
        assert_eq!((m.topic.as_str(), &m.payload[..], m.retain), ("wl/retain/yes", &b"kept"[..], true));
        late.assert_no_message(QUIET).await;
    })
    .await;
}

// [MQTT-3.1.2-8] a connection closed by the server because of a protocol
// error also publishes the will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_on_protocol_error() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut w = watcher(b.port(), "wp-watch", "wl/perr/#").await;
        let (mut c, _) = Raw::connect4(b.port(), will4("wp-4", "wl/perr/v4", b"bad", QoS::AtMostOnce, false)).await;
        // PUBLISH with QoS 3
        let _ = c.send_bytes(&frame(0x36, &[0, 3, b'a', b'/', b'b', 0, 1, b'x'])).await;
        c.expect_closed(TIMEOUT).await;
        let got = w.collect5(1).await;
        assert_eq!(&got[0].payload[..], b"bad");
    })
    .await;
}
