//! `cargo bench -p promptmq --bench codec`: decode and encode cost of typical MQTT packets.
//!
//! Each packet is encoded once up front; then, per row, one operation is repeated:
//! - decode: `check_frame` on the received bytes, then `decode_packet` on a `Bytes` slice of
//!   them, which is what a core does per packet it reads (the decoded packet is dropped,
//!   which frees what decoding allocated: property and filter lists);
//! - encode: `encode_publish` (or `encode_packet`) into a reused `BytesMut`, cleared after
//!   each call; "header only" is `encode_publish_header`, which the broker uses for payloads
//!   of 512 bytes and more so that the payload is sent from the message itself, not copied.
//!
//! How to read it: one operation takes tens of nanoseconds, below what the clock resolves,
//! so operations are timed in batches of 1000 and each batch's average is one sample. ops/s
//! is operations per second on one core; p50/p99/p99.9 are per-operation times over those
//! batch averages (p99.9 is a batch slowed by an interrupt or cold caches, not the slowest
//! single call). MQTT versions: v3 = 3.1.1, v5 = 5.0 with a few properties.
//!
//! The run takes about 13 s; `PROMPTMQ_BENCH_SECS=60` measures for 60 s instead.

mod common;

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use promptmq::codec::{
    check_frame, decode_packet, encode_packet, encode_publish, encode_publish_header, Ack, Connect, Packet, Properties,
    ProtocolVersion, Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};

use common::{batched, budget_secs, print_header, print_row};

const BATCH: u32 = 1000;
const TOPIC: &str = "sensors/building-7/floor-3/room-42/temperature";

/// The properties a typical v5 publisher sets.
fn publish_properties() -> Properties {
    Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(300),
        content_type: Some(Bytes::from_static(b"application/json")),
        user_properties: vec![(Bytes::from_static(b"source"), Bytes::from_static(b"gw-17"))],
        ..Properties::default()
    }
}

fn publish(version: ProtocolVersion, payload_len: usize) -> Packet {
    let mut p =
        Publish::new(Bytes::from_static(TOPIC.as_bytes()), QoS::AtMostOnce, Bytes::from(vec![0x5a; payload_len]));
    if version.is_v5() {
        p.properties = publish_properties();
    }
    Packet::Publish(p)
}

fn subscribe(version: ProtocolVersion) -> Packet {
    let filter = |f: &'static str, qos| SubscribeFilter {
        filter: Bytes::from_static(f.as_bytes()),
        options: SubscriptionOptions { qos, ..SubscriptionOptions::default() },
    };
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.subscription_identifiers = vec![42];
    }
    Packet::Subscribe(Subscribe {
        pkid: 7,
        properties,
        filters: vec![
            filter("sensors/building-7/+/+/temperature", QoS::AtLeastOnce),
            filter("alerts/#", QoS::AtLeastOnce),
            filter("$share/workers/jobs/+", QoS::AtMostOnce),
        ],
    })
}

fn connect(version: ProtocolVersion) -> Packet {
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.session_expiry_interval = Some(3600);
        properties.receive_maximum = Some(256);
        properties.maximum_packet_size = Some(1 << 20);
        properties.topic_alias_maximum = Some(16);
    }
    Packet::Connect(Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: Bytes::from_static(b"sensor-gw-0017"),
        will: None,
        username: Some(Bytes::from_static(b"gateway")),
        password: Some(Bytes::from_static(b"s3cr3t-token")),
        properties,
    })
}

struct Case {
    name: String,
    packet: Packet,
    version: ProtocolVersion,
    wire: Bytes,
}

fn cases() -> Vec<Case> {
    let mut packets = Vec::new();
    for (v, tag) in [(ProtocolVersion::V311, "v3"), (ProtocolVersion::V5, "v5")] {
        packets.push((format!("PUBLISH {tag} QoS0 64B"), publish(v, 64), v));
        packets.push((format!("PUBLISH {tag} QoS0 1KiB"), publish(v, 1024), v));
        packets.push((format!("PUBACK {tag}"), Packet::PubAck(Ack::new(4242, 0)), v));
        packets.push((format!("SUBSCRIBE {tag} 3 filters"), subscribe(v), v));
        packets.push((format!("CONNECT {tag}"), connect(v), v));
    }
    packets
        .into_iter()
        .map(|(name, packet, version)| {
            let mut out = BytesMut::new();
            encode_packet(&packet, version, &mut out, usize::MAX).expect("sample packet encodes");
            let wire = out.freeze();
            // The bench is only meaningful if the bytes decode back to the same packet.
            let back = decode_packet(wire.clone(), decode_version(&packet, version)).expect("sample packet decodes");
            assert_eq!(back, packet, "{name} does not survive a round trip");
            Case { name, packet, version, wire }
        })
        .collect()
}

/// A core decodes CONNECT before it knows the version (the packet declares it).
fn decode_version(packet: &Packet, version: ProtocolVersion) -> Option<ProtocolVersion> {
    match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    }
}

fn main() {
    let secs = budget_secs(12.0);
    let cases = cases();
    let header_only = cases.iter().filter(|c| matches!(&c.packet, Packet::Publish(p) if p.payload.len() >= 512));
    let rows = 2 * cases.len() + header_only.count();
    let per_row = Duration::from_secs_f64(secs / rows as f64);

    print_header(
        "codec",
        "Decode (check_frame + decode_packet) and encode (into a reused buffer) of typical packets, \
         one core, timed in batches of 1000 operations; p50/p99/p99.9 are per-operation times over \
         the batch averages, ops/s is per core. v3 = MQTT 3.1.1, v5 = MQTT 5.0 with properties.",
    );
    for c in &cases {
        let version = decode_version(&c.packet, c.version);
        // black_box: keeps the compiler from hoisting work on the fixed inputs out of the loop.
        let wire = &c.wire;
        print_row(&batched(format!("decode {}", c.name), BATCH, per_row, || {
            let frame = check_frame(black_box(wire), usize::MAX).expect("valid frame").expect("complete frame");
            decode_packet(wire.slice(..frame.total_len), version).expect("valid packet")
        }));
    }
    let mut scratch = BytesMut::with_capacity(4096);
    for c in &cases {
        let row = match &c.packet {
            Packet::Publish(p) => batched(format!("encode {}", c.name), BATCH, per_row, || {
                encode_publish(black_box(p), c.version, &mut scratch).expect("encodes");
                scratch.clear();
            }),
            packet => batched(format!("encode {}", c.name), BATCH, per_row, || {
                encode_packet(black_box(packet), c.version, &mut scratch, usize::MAX).expect("encodes");
                scratch.clear();
            }),
        };
        print_row(&row);
        if let Packet::Publish(p) = &c.packet {
            if p.payload.len() >= 512 {
                print_row(&batched(format!("encode {} header only", c.name), BATCH, per_row, || {
                    encode_publish_header(black_box(p), c.version, &mut scratch).expect("encodes");
                    scratch.clear();
                }));
            }
        }
    }
}
