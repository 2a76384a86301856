//! CONNECT / CONNACK, client identifiers, session takeover, keep alive and
//! protocol-level checks, for MQTT 3.1.1 and 5.0.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 3.1.1 CONNECT with a given protocol name/level, built by hand.
fn connect_bytes(name: &[u8], level: u8, flags: u8, keep_alive: u16, id: &str, v5_props: bool) -> Vec<u8> {
    let mut body = mqtt_str(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if v5_props {
        body.push(0);
    }
    body.extend(mqtt_str(id.as_bytes()));
    frame(0x10, &body)
}

// [MQTT-3.2.0-1] the first packet from the server is CONNACK; [MQTT-3.2.2-1]
// clean session 1 -> Session Present 0 and return code 0 (3.1.1);
// [MQTT-3.12.4-1] PINGREQ is answered with PINGRESP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_connect_connack_and_ping() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut r = Raw::open(b.port(), "v311").await;
        r.send(|buf| connect4("cc-v311", true).write(buf)).await;
        let f = r.expect(CONNACK).await;
        // 3.1.1 CONNACK is exactly 20 02 00 00.
        assert_eq!(f.bytes, vec![0x20, 0x02, 0x00, 0x00], "3.1.1 CONNACK bytes");
        r.send_bytes(&[0xC0, 0x00]).await.expect("PINGREQ");
        let f = r.expect(PINGRESP).await;
        assert_eq!(f.bytes, vec![0xD0, 0x00]);
    })
    .await;
}

// [MQTT-3.2.2-2] (v5) clean start 1 -> Session Present 0; CONNACK Reason
// Code 0x00; the limits from the command line are announced: Receive
// Maximum (3.2.2.3.3), Maximum Packet Size (3.2.2.3.6) and Topic Alias
// Maximum (3.2.2.3.8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connect_connack_announces_limits() {
    let opts = BrokerOpts::new().max_inflight(17).max_packet_size(5000).topic_alias_maximum(7);
    on_cores(opts, |b| async move {
        let (_r, ack) = Raw::connect5_ok(b.port(), connect5("cc-v5", true)).await;
        assert!(!ack.session_present);
        let p = ack.properties.expect("CONNACK properties");
        assert_eq!(p.receive_max, Some(17), "Receive Maximum = --max-inflight");
        assert_eq!(p.max_packet_size, Some(5000), "Maximum Packet Size = --max-packet-size");
        assert_eq!(p.topic_alias_max, Some(7), "Topic Alias Maximum = --topic-alias-maximum");
    })
    .await;
}

// [MQTT-3.2.2-16] a zero-length Client Identifier gets an Assigned Client
// Identifier in the v5 CONNACK; [MQTT-3.1.3-6] it is unique.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_empty_client_id_gets_assigned_identifier() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut r1, a1) = Raw::connect5_ok(b.port(), connect5("", true)).await;
        let (_r2, a2) = Raw::connect5_ok(b.port(), connect5("", true)).await;
        let id1 = a1.properties.and_then(|p| p.assigned_client_identifier).expect("Assigned Client Identifier");
        let id2 = a2.properties.and_then(|p| p.assigned_client_identifier).expect("Assigned Client Identifier");
        assert!(!id1.is_empty());
        assert_ne!(id1, id2, "assigned identifiers must be unique");
        // The connection is usable.
        r1.sub5(1, "cc/assigned", QoS::AtMostOnce).await;
        r1.publish5(&publish5("cc/assigned", QoS::AtMostOnce, 0, false, b"x")).await;
        let p = r1.expect_publish5().await;
        assert_eq!(&p.payload[..], b"x");
    })
    .await;
}

// [MQTT-3.1.3-8] 3.1.1: zero-byte ClientId with CleanSession 0 -> CONNACK
// 0x02 (identifier rejected) and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_with_persistent_session_rejected() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut r = Raw::open(b.port(), "empty-id").await;
        r.send(|buf| connect4("", false).write(buf)).await;
        let f = r.expect(CONNACK).await;
        assert_eq!(f.body(), &[0x00, 0x02], "CONNACK session-present 0, return code 0x02");
        r.expect_closed(TIMEOUT).await;
    })
    .await;
}

// [MQTT-3.1.3-6] / [MQTT-3.1.3-7] 3.1.1: zero-byte ClientId with
// CleanSession 1 is accepted and the connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_with_clean_session_accepted() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut r, ack) = Raw::connect4_ok(b.port(), "", true).await;
        assert!(!ack.session_present);
        let a = r.subscribe4(1, "cc/empty311", QoS::AtLeastOnce).await;
        assert_eq!(a.return_codes, vec![v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        r.publish4("cc/empty311", QoS::AtMostOnce, 0, false, b"hi").await;
        let p = r.expect_publish4().await;
        assert_eq!(&p.payload[..], b"hi");
    })
    .await;
}

// [MQTT-3.1.0-2] a second CONNECT is a protocol violation: the server closes
// the connection (v5: optionally after DISCONNECT 0x82 Protocol Error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_closes_connection() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut by = Bystander::connect(b.port(), "second-connect").await;

        let (mut r4, _) = Raw::connect4_ok(b.port(), "cc-second-4", true).await;
        r4.send(|buf| connect4("cc-second-4", true).write(buf)).await;
        let frames = r4.expect_closed(TIMEOUT).await;
        assert!(frames.iter().all(|f| f.ptype() != CONNACK), "no second CONNACK: {frames:?}");

        let (mut r5, _) = Raw::connect5_ok(b.port(), connect5("cc-second-5", true)).await;
        r5.send(|buf| connect5("cc-second-5", true).write(buf)).await;
        let frames = r5.expect_closed(TIMEOUT).await;
        for f in &frames {
            match f.ptype() {
                DISCONNECT => assert_eq!(f.disconnect_reason(), Some(0x82), "{f:?}"),
                _ => panic!("unexpected packet before close: {f:?}"),
            }
        }
        by.check().await;
    })
    .await;
}

// [MQTT-3.1.4-3] a CONNECT with the ClientId of a connected client takes the
// session over: the old v5 connection gets DISCONNECT 0x8E (Session taken
// over) and is closed; the new connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_takeover_disconnects_old_connection() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut old, _) = Raw::connect5_ok(b.port(), connect5_session("cc-take5", false, 60)).await;
        old.sub5(1, "cc/take5", QoS::AtLeastOnce).await;
        let (mut new, ack) = Raw::connect5_ok(b.port(), connect5_session("cc-take5", false, 60)).await;
        if is_mosquitto() {
            // mosquitto 2.0.11 closes the old connection without sending
            // DISCONNECT 0x8E first: only the close is checked there.
            old.expect_closed(TIMEOUT).await;
        } else {
            old.expect_disconnect5(&[0x8E]).await;
        }
        assert!(ack.session_present, "taken-over session is resumed");
        // The subscription belongs to the session and moved to the new
        // connection.
        new.publish5(&publish5("cc/take5", QoS::AtMostOnce, 0, false, b"after")).await;
        let p = new.expect_publish5().await;
        assert_eq!(&p.payload[..], b"after");
    })
    .await;
}

// [MQTT-3.1.4-2] (3.1.1) the existing connection with the same ClientId is
// closed when a new one connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_session_takeover_closes_old_connection() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut old, _) = Raw::connect4_ok(b.port(), "cc-take4", true).await;
        let (mut new, _) = Raw::connect4_ok(b.port(), "cc-take4", true).await;
        let frames = old.expect_closed(TIMEOUT).await;
        assert!(frames.is_empty(), "3.1.1 has no server DISCONNECT: {frames:?}");
        new.send_bytes(&[0xC0, 0x00]).await.expect("PINGREQ");
        new.expect(PINGRESP).await;
    })
    .await;
}

// Session Present: 3.1.1 [MQTT-3.2.2-1] clean 1 -> 0, [MQTT-3.2.2-2] clean 0
// with stored session -> 1, [MQTT-3.2.2-3] clean 0 without session -> 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_session_present_flag() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (r, a) = Raw::connect4_ok(b.port(), "cc-sp4", false).await;
        assert!(!a.session_present, "no session existed");
        r.disconnect4().await;
        let (r, a) = Raw::connect4_ok(b.port(), "cc-sp4", false).await;
        assert!(a.session_present, "session resumed");
        r.disconnect4().await;
        let (r, a) = Raw::connect4_ok(b.port(), "cc-sp4", true).await;
        assert!(!a.session_present, "clean session");
        r.disconnect4().await;
        // The clean session discarded the old one.
        let (_r, a) = Raw::connect4_ok(b.port(), "cc-sp4", false).await;
        assert!(!a.session_present, "old session was discarded by clean session");
    })
    .await;
}

// Session Present (v5): [MQTT-3.2.2-2] clean start 1 -> 0; [MQTT-3.2.2-3]
// clean start 0 with a session -> 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_present_flag() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (r, a) = Raw::connect5_ok(b.port(), connect5_session("cc-sp5", false, 60)).await;
        assert!(!a.session_present);
        r.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;
        let (r, a) = Raw::connect5_ok(b.port(), connect5_session("cc-sp5", false, 60)).await;
        assert!(a.session_present);
        r.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;
        let (_r, a) = Raw::connect5_ok(b.port(), connect5_session("cc-sp5", true, 60)).await;
        assert!(!a.session_present);
    })
    .await;
}

// [MQTT-3.1.2-21] / 3.2.2.3.14: the server caps the keep alive with Server
// Keep Alive in CONNACK when the client asks for more than --max-keep-alive;
// a smaller request is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_server_keep_alive_caps_client_keep_alive() {
    on_cores(BrokerOpts::new().max_keep_alive(20), |b| async move {
        let mut c = connect5("cc-ka-big", true);
        c.keep_alive = 300;
        let (_r, a) = Raw::connect5_ok(b.port(), c).await;
        let ska = a.properties.and_then(|p| p.server_keep_alive);
        assert_eq!(ska, Some(20), "Server Keep Alive = --max-keep-alive");

        let mut c = connect5("cc-ka-small", true);
        c.keep_alive = 15;
        let (_r, a) = Raw::connect5_ok(b.port(), c).await;
        let ska = a.properties.and_then(|p| p.server_keep_alive);
        assert!(ska.is_none() || ska == Some(15), "keep alive 15 must not be changed: {ska:?}");
    })
    .await;
}

// [MQTT-3.1.2-24] (3.1.1; v5: [MQTT-3.1.2-22]) with keep alive 1 s and no
// packets, the server closes the
// connection after 1.5 x keep alive; a client that pings in time stays
// connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_closes_idle_connection() {
    on_cores(BrokerOpts::new(), |b| async move {
        // v5 idle client
        let mut c = connect5("cc-ka-idle5", true);
        c.keep_alive = 1;
        let (mut idle5, _) = Raw::connect5_ok(b.port(), c).await;
        let start5 = Instant::now();
        // 3.1.1 idle client
        let mut c = connect4("cc-ka-idle4", true);
        c.keep_alive = 1;
        let (mut idle4, _) = Raw::connect4(b.port(), c).await;
        let start4 = Instant::now();
        // pinging client
        let mut c = connect4("cc-ka-ping", true);
        c.keep_alive = 1;
        let (mut pinger, _) = Raw::connect4(b.port(), c).await;

        // mosquitto 2.0.11 checks keep alive only every few seconds: it
        // closes an idle keep-alive-1 connection after 4-6 s instead of
        // 1.5 s, so only the lower bound is meaningful there.
        let upper = if is_mosquitto() { Duration::from_secs(8) } else { Duration::from_millis(3000) };
        let t5 = tokio::spawn(async move {
            let frames = idle5.expect_closed(upper + Duration::from_secs(1)).await;
            for f in &frames {
                assert_eq!(f.disconnect_reason(), Some(0x8D), "only DISCONNECT 0x8D may precede close: {f:?}");
            }
            start5.elapsed()
        });
        let t4 = tokio::spawn(async move {
            idle4.expect_closed(upper + Duration::from_secs(1)).await;
            start4.elapsed()
        });
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            pinger.send_bytes(&[0xC0, 0x00]).await.expect("PINGREQ");
            pinger.expect(PINGRESP).await;
        }
        for (name, e) in [("v5", t5.await.expect("v5 task")), ("3.1.1", t4.await.expect("3.1.1 task"))] {
            assert!(e >= Duration::from_millis(1000), "{name}: closed too early after {e:?}");
            assert!(e <= upper, "{name}: closed too late after {e:?}");
        }
    })
    .await;
}

// [MQTT-3.1.2-2] unsupported protocol level: CONNACK 0x84 (v5 framing) or
// 0x01 (3.1.1 framing), then the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_rejected() {
    on_cores(BrokerOpts::new(), |b| async move {
        for (level, v5_props) in [(6u8, true), (3u8, false), (0u8, false)] {
            let mut r = Raw::open(b.port(), &format!("level{level}")).await;
            let _ = r.send_bytes(&connect_bytes(b"MQTT", level, 0x02, 30, &format!("cc-level{level}"), v5_props)).await;
            let frames = r.expect_closed(TIMEOUT).await;
            assert_eq!(frames.len(), 1, "level {level}: expected exactly one CONNACK: {frames:?}");
            let f = &frames[0];
            assert_eq!(f.ptype(), CONNACK, "level {level}: {f:?}");
            let code = f.body().get(1).copied();
            assert!(
                code == Some(0x84) || code == Some(0x01),
                "level {level}: CONNACK code {code:?}, expected 0x84 or 0x01"
            );
        }
    })
    .await;
}

// [MQTT-3.1.0-1] the first packet must be CONNECT: otherwise the server
// closes the connection without answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_not_connect_closes() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut by = Bystander::connect(b.port(), "first-not-connect").await;
        let subscribe = encode(|buf| {
            let mut s = v4::Subscribe::new("cc/nope", QoS::AtMostOnce);
            s.pkid = 1;
            s.write(buf)
        });
        let publish = encode(|buf| v4::Publish::new("cc/nope", QoS::AtMostOnce, b"x".to_vec()).write(buf));
        for (name, bytes) in [("PINGREQ", vec![0xC0, 0x00]), ("SUBSCRIBE", subscribe), ("PUBLISH", publish)] {
            let mut r = Raw::open(b.port(), name).await;
            let _ = r.send_bytes(&bytes).await;
            let frames = r.expect_closed(TIMEOUT).await;
            assert!(frames.is_empty(), "{name} before CONNECT was answered: {frames:?}");
        }
        by.check().await;
    })
    .await;
}

// [MQTT-4.12.0-1] / 3.2.2.2: an Authentication Method the server does not
// support gets CONNACK 0x8C (Bad authentication method), then close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unsupported_authentication_method_gets_0x8c() {
    on_cores(BrokerOpts::new(), |b| async move {
        let mut c = connect5("cc-auth", true);
        let mut p = connect_props5();
        p.authentication_method = Some("X-UNSUPPORTED-METHOD".into());
        p.authentication_data = Some(bytes::Bytes::from_static(b"data"));
        c.properties = Some(p);
        let mut r = Raw::open(b.port(), "auth").await;
        r.send(|buf| c.write(buf)).await;
        let frames = r.expect_closed(TIMEOUT).await;
        assert_eq!(frames.len(), 1, "expected exactly one CONNACK: {frames:?}");
        assert_eq!(frames[0].ptype(), CONNACK, "{:?}", frames[0]);
        assert_eq!(frames[0].body().get(1), Some(&0x8C), "reason code: {:?}", frames[0]);
    })
    .await;
}

// 4.12 / 3.15: an AUTH packet from a client that did not use
// enhanced authentication in CONNECT is a Protocol Error: DISCONNECT
// (0x82 or 0x8C) or plain close; never ignored silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_auth_packet_without_auth_method_closes() {
    on_cores(BrokerOpts::new(), |b| async move {
        let (mut r, _) = Raw::connect5_ok(b.port(), connect5("cc-auth-pkt", true)).await;
        // AUTH, reason 0x19 (re-authenticate), empty properties
        let _ = r.send_bytes(&[0xF0, 0x02, 0x19, 0x00]).await;
        let frames = r.expect_closed(TIMEOUT).await;
        for f in &frames {
            let rc = f.disconnect_reason();
            assert!(matches!(rc, Some(0x82) | Some(0x8C)), "unexpected {f:?}");
        }
    })
    .await;
}

// [MQTT-3.1.2-3] the reserved flag in CONNECT must be 0, otherwise the
// server closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reserved_flag_closes() {
    on_cores(BrokerOpts::new(), |b| async move {
        for (level, v5_props) in [(4u8, false), (5u8, true)] {
            let mut r = Raw::open(b.port(), "reserved-flag").await;
            let _ = r.send_bytes(&connect_bytes(b"MQTT", level, 0x03, 30, "cc-reserved", v5_props)).await;
            let frames = r.expect_closed(TIMEOUT).await;
            for f in &frames {
                assert!(
                    f.ptype() == DISCONNECT || (f.ptype() == CONNACK && f.body().get(1).copied().unwrap_or(0) != 0),
                    "level {level}: no successful CONNACK allowed: {f:?}"
                );
            }
        }
    })
    .await;
}
