//! Malformed and abusive input, built byte by byte. In every case the
//! offending connection is closed (v5: after DISCONNECT with the right reason
//! code where the spec says so), nothing it sent is delivered, and a client
//! connected at the same time keeps publishing and receiving normally.

mod common;

use common::*;

/// Connects a raw client of version 4 or 5 (with `id`).
async fn client(port: u16, v5: bool, id: &str) -> Raw {
    if v5 {
        Raw::connect5_ok(port, connect5(id, true)).await.0
    } else {
        Raw::connect4_ok(port, id, true).await.0
    }
}

/// A PUBLISH body: topic, optional packet id, (v5) empty properties,
/// payload.
fn publish_body(topic: &[u8], pkid: Option<u16>, v5: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = mqtt_str(topic);
    if let Some(id) = pkid {
        b.extend_from_slice(&id.to_be_bytes());
    }
    if v5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    b
}

/// Sends `bytes` on a fresh connection and expects the server to close it:
/// v5 connections may (or, with `reasons` non-empty, must) get a DISCONNECT
/// with one of `reasons` first; nothing else may be sent back.
async fn expect_rejected(port: u16, v5: bool, id: &str, bytes: &[u8], reasons: &[u8]) {
    let mut c = client(port, v5, id).await;
    let _ = c.send_bytes(bytes).await;
    let frames = c.expect_closed(TIMEOUT).await;
    let rc = frames.iter().find_map(|f| f.disconnect_reason());
    for f in &frames {
        assert_eq!(f.ptype(), DISCONNECT, "{id}: only DISCONNECT may precede the close: {f:?}");
        assert!(v5, "{id}: 3.1.1 server never sends DISCONNECT");
    }
    if v5 && !reasons.is_empty() {
        if let Some(rc) = rc {
            assert!(reasons.contains(&rc), "{id}: DISCONNECT reason {rc:#04x}, expected {reasons:02x?}");
        }
    }
}

/// Runs `case` for 3.1.1 and v5 with a bystander and a watcher on
/// "mf/#", then checks that the watcher saw nothing and the bystander still
/// works.
async fn with_bystander<F, Fut>(b: &Broker, tag: &str, case: F)
where
    F: Fn(u16, bool, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut by = Bystander::connect(b.port(), tag).await;
    let (mut watch, _) = Raw::connect5_ok(b.port(), connect5(&format!("watch-{tag}"), true)).await;
    watch.sub5(1, "mf/#", QoS::AtLeastOnce).await;
    for v5 in [false, true] {
        case(b.port(), v5, format!("{tag}-{}", if v5 { 5 } else { 4 })).await;
    }
    by.check().await;
    watch.assert_no_publish5(QUIET).await;
}

// [MQTT-2.1.3-1] reserved fixed-header flags must have the listed values;
// otherwise the packet is malformed and the connection is closed
// ([MQTT-3.8.1-1] SUBSCRIBE 0010, [MQTT-3.6.1-1] PUBREL 0010,
// [MQTT-3.10.1-1] UNSUBSCRIBE 0010, PINGREQ 0000, DISCONNECT 0000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_fixed_header_flags_close_connection() {
    on_cores(BrokerOpts::new(), |b| async move {
        with_bystander(&b, "flags", |port, v5, id| async move {
            let opts = if v5 { vec![0u8] } else { vec![] };
            // SUBSCRIBE with flags 0000 instead of 0010
            let mut body = 1u16.to_be_bytes().to_vec();
            body.extend(&opts);
            body.extend(mqtt_str(b"mf/sub"));
            body.push(1);
            expect_rejected(port, v5, &format!("{id}-sub"), &frame(0x80, &body), &[0x81]).await;
            // UNSUBSCRIBE with flags 0000
            let mut body = 2u16.to_be_bytes().to_vec();
            body.extend(&opts);
            body.extend(mqtt_str(b"mf/sub"));
            expect_rejected(port, v5, &format!("{id}-unsub"), &frame(0xA0, &body), &[0x81]).await;
            // PUBREL with flags 0000
            expect_rejected(port, v5, &format!("{id}-pubrel"), &frame(0x60, &[0, 1]), &[0x81]).await;
            // PINGREQ with flags 0001. mosquitto 2.0.11 does not check the
            // PINGREQ flags (it answers PINGRESP), so this case is skipped
            // there.
            if !is_mosquitto() {
                expect_rejected(port, v5, &format!("{id}-ping"), &[0xC1, 0x00], &[0x81]).await;
            }
        })
        .await;
    })
    .await;
}

// [MQTT-3.3.1-4] a PUBLISH must not have both QoS bits set; the message is
// not delivered and the connection is closed (v5: 0x81 Malformed Packet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_qos_3_closes_connection() {
    on_cores(BrokerOpts::new(), |b| async move {
        with_bystander(&b, "qos3", |port, v5, id| async move {
            let bytes = frame(0x36, &publish_body(b"mf/qos3", Some(1), v5, b"x"));
            expect_rejected(port, v5, &id, &bytes, &[0x81]).await;
        })
        .await;
    })
    .await;
}

// [MQTT-3.3.2-2] the Topic Name in a PUBLISH must not contain wildcards:
// v5 gets DISCONNECT 0x90 (Topic Name invalid) or 0x81, then close; 3.1.1
// is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_in_publish_topic_closes_connection() {
    on_cores(BrokerOpts::new(), |b| async move {
        with_bystander(&b, "wild", |port, v5, id| async move {
            for topic in [&b"mf/+/x"[..], b"mf/#"] {
                let bytes = frame(0x32, &publish_body(topic, Some(1), v5, b"x"));
                let mut c = client(port, v5, &id).await;
                let _ = c.send_bytes(&bytes).await;
                if v5 {
                    // mosquitto 2.0.11 uses 0x82 (Protocol Error) here.
                    let reasons: &[u8] = if is_mosquitto() { &[0x82] } else { &[0x90, 0x81] };
                    c.expect_disconnect5(reasons).await;
                } else {
                    let frames = c.expect_closed(TIMEOUT).await;
                    assert!(frames.is_empty(), "{frames:?}");
                }
            }
        })
        .await;
    })
    .await;
}

// 3.2.2.3.6 / 4.13: a packet larger than the server's Maximum Packet Size
// (--max-packet-size) is a protocol error: v5 gets DISCONNECT 0x95 (Packet
// too large), 3.1.1 is closed; the message is not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_larger_than_max_packet_size_closes_connection() {
    on_cores(BrokerOpts::new().max_packet_size(1024), |b| async move {
        with_bystander(&b, "big", |port, v5, id| async move {
            let mut c = client(port, v5, &id).await;
            // a packet just under the limit is fine
            let ok = frame(0x32, &publish_body(b"mfok/ok", Some(1), v5, &[1u8; 900]));
            assert!(ok.len() <= 1024);
            c.send_bytes(&ok).await.expect("send");
            c.expect(PUBACK).await;
            let big = frame(0x32, &publish_body(b"mf/big", Some(2), v5, &[2u8; 2000]));
            let _ = c.send_bytes(&big).await;
            if v5 {
                c.expect_disconnect5(&[0x95]).await;
            } else {
                c.expect_closed(TIMEOUT).await;
            }
        })
        .await;
    })
    .await;
}

// [MQTT-1.5.4-1] ill-formed UTF-8 and [MQTT-1.5.4-2] U+0000 in a topic
// name are malformed: the connection is closed (v5: 0x81 or 0x90).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_nul_in_topic_close_connection() {
    on_cores(BrokerOpts::new(), |b| async move {
        with_bystander(&b, "utf8", |port, v5, id| async move {
            let cases: [(&str, &[u8]); 4] = [
                ("bad-utf8", b"mf/\xc3\x28"),
                ("surrogate", b"mf/\xed\xa0\x80"),
                ("overlong", b"mf/\xc0\xaf"),
                ("nul", b"mf/a\x00b"),
            ];
            for (name, topic) in cases {
                let bytes = frame(0x32, &publish_body(topic, Some(1), v5, b"x"));
                expect_rejected(port, v5, &format!("{id}-{name}"), &bytes, &[0x81, 0x90]).await;
            }
            // also in a SUBSCRIBE topic filter
            let mut body = 1u16.to_be_bytes().to_vec();
            if v5 {
                body.push(0);
            }
            body.extend(mqtt_str(b"mf/\xff"));
            body.push(0);
            expect_rejected(port, v5, &format!("{id}-filter"), &frame(0x82, &body), &[0x81, 0x8F]).await;
        })
        .await;
    })
    .await;
}

// 1.5.5 / 2.1.4: the Remaining Length is at most 4 bytes; a fifth
// continuation byte makes the packet malformed and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_length_with_five_bytes_closes_connection() {
    on_cores(BrokerOpts::new(), |b| async move {
        with_bystander(&b, "rl5", |port, v5, id| async move {
            let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x01, b'x'];
            expect_rejected(port, v5, &id, &bytes, &[0x81, 0x95]).await;
        })
        .await;
    })
    .await;
}

// 3.3.4 / 4.9 flow control: a v5 client that sends more unacknowledged QoS 2
// PUBLISHes than the server's Receive Maximum (--max-inflight) gets
// DISCONNECT 0x93 (Receive Maximum exceeded) and is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_receive_maximum_disconnects_with_0x93() {
    on_cores(BrokerOpts::new().max_inflight(3), |b| async move {
        let mut by = Bystander::connect(b.port(), "recvmax").await;
        let (mut c, ack) = Raw::connect5_ok(b.port(), connect5("rmx", true)).await;
        assert_eq!(ack.properties.and_then(|p| p.receive_max), Some(3));
        for pkid in 1..=3u16 {
            c.publish5(&publish5("mf/rm", QoS::ExactlyOnce, pkid, false, b"x")).await;
            let f = c.expect(PUBREC).await;
            assert_eq!(&f.body()[..2], &pkid.to_be_bytes());
        }
        // no PUBREL: 3 flows are open. A fourth exceeds the quota.
        c.publish5(&publish5("mf/rm", QoS::ExactlyOnce, 4, false, b"x")).await;
        if is_mosquitto() {
            // mosquitto 2.0.11 answers the extra PUBLISH with PUBREC 0x97
            // (Quota exceeded) and keeps the connection instead of sending
            // DISCONNECT 0x93: only the part up to here runs there.
            let f = c.expect(PUBREC).await;
            assert_eq!(f.body().get(2), Some(&0x97));
            return;
        }
        c.expect_disconnect5(&[0x93]).await;
        by.check().await;
    })
    .await;
}

// 3.3.2.3.4: [MQTT-3.3.2-8] a Topic Alias of 0 is not permitted (a
// protocol error: DISCONNECT 0x94 Topic Alias invalid or 0x82 Protocol
// Error); [MQTT-3.3.2-9] one above the server's Topic Alias Maximum gets
// DISCONNECT 0x94; an empty topic with an unknown alias is a protocol
// error too (0x82 or 0x94).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_alias_disconnects() {
    on_cores(BrokerOpts::new().topic_alias_maximum(4), |b| async move {
        let mut by = Bystander::connect(b.port(), "alias").await;
        for (name, topic, alias, reasons) in [
            ("zero", "mf/alias", 0u16, &[0x94u8, 0x82][..]),
            ("too-big", "mf/alias", 5, &[0x94][..]),
            ("unknown", "", 3, &[0x82, 0x94][..]),
        ] {
            let (mut c, _) = Raw::connect5_ok(b.port(), connect5(&format!("alias-{name}"), true)).await;
            let mut p = publish5(topic, QoS::AtMostOnce, 0, false, b"x");
            let mut props = publish_props5();
            props.topic_alias = Some(alias);
            p.properties = Some(props);
            c.publish5(&p).await;
            if is_mosquitto() && alias == 0 {
                // mosquitto 2.0.11 treats alias 0 as a malformed packet (0x81)
                // instead of a protocol error (0x94 / 0x82).
                c.expect_disconnect5(&[0x81]).await;
            } else {
                c.expect_disconnect5(reasons).await;
            }
        }
        by.check().await;
    })
    .await;
}

// 4.13: garbage (an unknown packet type 0) and a truncated
// CONNECT never crash the server; the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_packets_close_connection() {
    on_cores(BrokerOpts::new(), |mut b| async move {
        let mut by = Bystander::connect(b.port(), "garbage").await;
        // packet type 0 after a valid CONNECT
        expect_rejected(b.port(), true, "garbage-type0", &[0x00, 0x00], &[0x81, 0x82]).await;
        expect_rejected(b.port(), false, "garbage-type0-4", &[0x00, 0x00], &[]).await;
        // CONNECT whose remaining length is shorter than its contents
        let mut r = Raw::open(b.port(), "truncated").await;
        let _ = r.send_bytes(&[0x10, 0x04, 0x00, 0x04, b'M', b'Q']).await;
        let frames = r.expect_closed(TIMEOUT).await;
        assert!(frames.iter().all(|f| f.ptype() != CONNACK || f.body().get(1) != Some(&0)), "{frames:?}");
        by.check().await;
        assert!(b.is_running(), "broker process died");
    })
    .await;
}

// [MQTT-4.13.1-1] / 3.14: the broker's DISCONNECT must reach a client that is still busy
// sending. A client floods Receive Maximum + 1 QoS 2 publishes and then, like the paho
// interoperability client, reads one packet at a time from the socket and answers each
// PUBREC with a PUBREL. Closing the socket at once would answer those PUBRELs with a
// reset that discards the unread DISCONNECT; the broker lingers before closing instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_0x93_reaches_a_client_that_keeps_sending() {
    skip_on_mosquitto!("mosquitto answers PUBREC 0x97 instead of DISCONNECT 0x93");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Reads exactly one packet, byte-exact like a simple client, so unread packets stay in
    // the kernel's receive buffer where a reset would destroy them.
    async fn read_packet(s: &mut tokio::net::TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
        let first = s.read_u8().await?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = s.read_u8().await?;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        s.read_exact(&mut body).await?;
        Ok((first >> 4, body))
    }
    on_cores(BrokerOpts::new(), |b| async move {
        for round in 0..3 {
            let mut s = tokio::net::TcpStream::connect(b.addr()).await.expect("connect");
            let mut out = bytes::BytesMut::new();
            connect5(&format!("flood-{round}"), true).write(&mut out).expect("encode");
            s.write_all(&out).await.expect("send CONNECT");
            let (kind, _) = read_packet(&mut s).await.expect("CONNACK");
            assert_eq!(kind, 2);
            let max = 1024; // the broker's default Receive Maximum (--max-inflight)
            let mut flood = bytes::BytesMut::new();
            for pkid in 1..=max + 1 {
                publish5("mf/flood", QoS::ExactlyOnce, pkid, false, b"x").write(&mut flood).expect("encode");
            }
            s.write_all(&flood).await.expect("send flood");
            let reason = loop {
                match tokio::time::timeout(TIMEOUT, read_packet(&mut s)).await {
                    Ok(Ok((5, body))) => {
                        let mut rel = bytes::BytesMut::new();
                        v5::PubRel::new(u16::from_be_bytes([body[0], body[1]])).write(&mut rel).expect("encode");
                        // Until the client has read the DISCONNECT its writes must not fail:
                        // a broker that closes without lingering makes them fail with
                        // EPIPE/ECONNRESET, which crashes simple clients (paho's among them).
                        s.write_all(&rel).await.unwrap_or_else(|e| panic!("round {round}: PUBREL write failed: {e}"));
                        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                    }
                    Ok(Ok((14, body))) => break body.first().copied(),
                    Ok(Ok((kind, _))) => panic!("round {round}: unexpected packet type {kind}"),
                    Ok(Err(e)) => panic!("round {round}: connection ended without DISCONNECT: {e}"),
                    Err(_) => panic!("round {round}: no DISCONNECT within {TIMEOUT:?}"),
                }
            };
            assert_eq!(reason, Some(0x93), "round {round}");
        }
    })
    .await;
}
