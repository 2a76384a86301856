//! [`Packet`] to bytes, for both protocol versions.
//!
//! Lengths are computed first ([`encoded_len`], [`publish_len`]) so that a size limit is
//! enforced before anything is written, and the buffer is reserved once. If a field turns
//! out to be unencodable halfway, the output buffer is truncated back to where it was, so a
//! failed encode never leaves half a packet in a connection's write buffer.
//!
//! The encoder does not judge semantics (packet id 0, empty SUBSCRIBE, DUP on QoS 0 are all
//! written as given): tests build invalid input with it, and the session decides what to send.

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::packet::*;
use super::properties::{encode_properties, properties_block_len, properties_len};
use super::reason;

/// Largest whole packet: type byte + 4 length bytes + the largest Remaining Length.
const MAX_TOTAL_LEN: usize = 1 + 4 + MAX_REMAINING_LENGTH;

/// Bytes a Variable Byte Integer takes (values past the 4-byte maximum count as 4; callers
/// reject them before writing).
pub(crate) fn vbi_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a Variable Byte Integer; `value` must be at most [`MAX_REMAINING_LENGTH`].
pub(crate) fn put_vbi(out: &mut BytesMut, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

/// Writes Binary Data or a UTF-8 string: two-byte length, then the bytes.
pub(crate) fn put_binary(out: &mut BytesMut, data: &[u8], what: &'static str) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong(what))?;
    out.put_u16(len);
    out.put_slice(data);
    Ok(())
}

fn total_len(remaining: usize) -> usize {
    1 + vbi_len(remaining) + remaining
}

fn props_block(p: &Properties, v5: bool) -> usize {
    if v5 {
        properties_block_len(p)
    } else {
        0
    }
}

fn publish_remaining(p: &Publish, version: ProtocolVersion) -> usize {
    let pkid = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
    2 + p.topic.len() + pkid + props_block(&p.properties, version.is_v5()) + p.payload.len()
}

/// Total bytes of `p` on the wire, fixed header included.
pub fn publish_len(p: &Publish, version: ProtocolVersion) -> usize {
    total_len(publish_remaining(p, version))
}

/// Writes one PUBLISH. There is no size limit argument: the broker encodes a message once,
/// then compares [`publish_len`] with each subscriber's Maximum Packet Size before sending
/// these bytes to it.
pub fn encode_publish(p: &Publish, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
    let remaining = publish_remaining(p, version);
    check_size(remaining, MAX_TOTAL_LEN)?;
    let start = out.len();
    out.reserve(total_len(remaining));
    let res = write_publish(p, version, remaining, out, true);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

/// Writes a PUBLISH without its payload: the fixed header (whose length counts the
/// payload), topic, packet id and properties. The caller sends `p.payload` right after
/// these bytes as a separate chunk, so a payload fanned out to many subscribers is never
/// copied per subscriber.
pub fn encode_publish_header(p: &Publish, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
    let remaining = publish_remaining(p, version);
    check_size(remaining, MAX_TOTAL_LEN)?;
    let start = out.len();
    out.reserve(total_len(remaining) - p.payload.len());
    let res = write_publish(p, version, remaining, out, false);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

fn write_publish(
    p: &Publish,
    version: ProtocolVersion,
    remaining: usize,
    out: &mut BytesMut,
    with_payload: bool,
) -> Result<(), EncodeError> {
    let first = 0x30 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain);
    out.put_u8(first);
    put_vbi(out, remaining);
    put_binary(out, &p.topic, "topic name")?;
    if p.qos != QoS::AtMostOnce {
        out.put_u16(p.pkid);
    }
    if version.is_v5() {
        encode_properties(&p.properties, out)?;
    }
    if with_payload {
        out.put_slice(&p.payload);
    }
    Ok(())
}

fn check_size(remaining: usize, max: usize) -> Result<(), EncodeError> {
    let size = total_len(remaining);
    if remaining > MAX_REMAINING_LENGTH || size > max {
        return Err(EncodeError::PacketTooLarge { size, max: max.min(MAX_TOTAL_LEN) });
    }
    Ok(())
}

/// The v5 acknowledgement body is shortened when it carries nothing (spec 3.4.2.1):
/// reason 0 without properties is just the packet id.
fn ack_remaining(a: &Ack, version: ProtocolVersion) -> usize {
    if !version.is_v5() {
        return 2;
    }
    let props = properties_len(&a.properties);
    match (a.reason, props) {
        (reason::SUCCESS, 0) => 2,
        (_, 0) => 3,
        _ => 3 + properties_block_len(&a.properties),
    }
}

/// v5 DISCONNECT: empty for a normal disconnection, reason only without properties
/// (spec 3.14.2.2.1). AUTH may only drop both (spec 3.15.2.1), so it is always written
/// in full otherwise.
fn reason_props_remaining(reason_code: u8, p: &Properties, shortest_reason_only: bool) -> usize {
    let props = properties_len(p);
    match (reason_code, props) {
        (0, 0) => 0,
        (_, 0) if shortest_reason_only => 1,
        _ => 1 + properties_block_len(p),
    }
}

fn connect_remaining(c: &Connect) -> usize {
    let v5 = c.protocol.is_v5();
    let mut len = 2 + 4 + 1 + 1 + 2; // protocol name, level, flags, keep alive
    len += props_block(&c.properties, v5);
    len += 2 + c.client_id.len();
    if let Some(w) = &c.will {
        len += props_block(&w.properties, v5) + 2 + w.topic.len() + 2 + w.payload.len();
    }
    if let Some(u) = &c.username {
        len += 2 + u.len();
    }
    if let Some(p) = &c.password {
        len += 2 + p.len();
    }
    len
}

/// Remaining Length of `packet`; `None` when it cannot be sent in `version` at all.
fn remaining_len(packet: &Packet, version: ProtocolVersion) -> Option<usize> {
    let v5 = version.is_v5();
    Some(match packet {
        Packet::Connect(c) => connect_remaining(c),
        Packet::ConnAck(c) => 2 + props_block(&c.properties, v5),
        Packet::Publish(p) => publish_remaining(p, version),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => ack_remaining(a, version),
        Packet::Subscribe(s) => {
            2 + props_block(&s.properties, v5) + s.filters.iter().map(|f| 2 + f.filter.len() + 1).sum::<usize>()
        }
        Packet::SubAck(s) => 2 + props_block(&s.properties, v5) + s.reasons.len(),
        Packet::Unsubscribe(u) => {
            2 + props_block(&u.properties, v5) + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
        }
        Packet::UnsubAck(u) if v5 => 2 + properties_block_len(&u.properties) + u.reasons.len(),
        Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) if v5 => reason_props_remaining(d.reason, &d.properties, true),
        Packet::Disconnect(_) => 0,
        Packet::Auth(a) if v5 => reason_props_remaining(a.reason, &a.properties, false),
        Packet::Auth(_) => return None,
    })
}

/// Total bytes `encode_packet` writes for `packet`, fixed header included. A CONNECT is
/// measured in its own [`Connect::protocol`]. 0 for a packet the version cannot carry
/// (AUTH in 3.1.1).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    remaining_len(packet, version).map_or(0, total_len)
}

/// Writes `packet` as `version` speaks it, refusing anything over `max_packet_size` bytes
/// in total. A CONNECT is always written in its own [`Connect::protocol`], the way the
/// decoder reads a CONNECT in the version it declares.
pub fn encode_packet(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
    max_packet_size: usize,
) -> Result<(), EncodeError> {
    let remaining =
        remaining_len(packet, version).ok_or(EncodeError::NotInVersion("AUTH does not exist in MQTT 3.1.1"))?;
    check_size(remaining, max_packet_size)?;
    if let Packet::Publish(p) = packet {
        return encode_publish(p, version, out);
    }
    let start = out.len();
    out.reserve(total_len(remaining));
    let res = write_packet(packet, version, remaining, out);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

fn write_packet(
    packet: &Packet,
    version: ProtocolVersion,
    remaining: usize,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Packet::Publish(p) = packet {
        return write_publish(p, version, remaining, out, true);
    }
    let v5 = version.is_v5();
    let flags = match packet {
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    // A 3.1.1 CONNECT cannot express a password without a user name [MQTT-3.1.2-22];
    // refuse before writing the header.
    if let Packet::Connect(c) = packet {
        if !c.protocol.is_v5() && c.password.is_some() && c.username.is_none() {
            return Err(EncodeError::NotInVersion("password without user name in 3.1.1"));
        }
    }
    out.put_u8(packet.packet_type() << 4 | flags);
    put_vbi(out, remaining);
    match packet {
        Packet::Connect(c) => write_connect(c, out)?,
        Packet::ConnAck(c) => {
            out.put_u8(u8::from(c.session_present));
            if v5 {
                out.put_u8(c.code);
                encode_properties(&c.properties, out)?;
            } else {
                out.put_u8(reason::connack_code_for_v311(c.code));
            }
        }
        // Written by write_publish above.
        Packet::Publish(_) => {}
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            out.put_u16(a.pkid);
            match remaining {
                2 => {}
                3 => out.put_u8(a.reason),
                _ => {
                    out.put_u8(a.reason);
                    encode_properties(&a.properties, out)?;
                }
            }
        }
        Packet::Subscribe(s) => {
            out.put_u16(s.pkid);
            if v5 {
                encode_properties(&s.properties, out)?;
            }
            for f in &s.filters {
                put_binary(out, &f.filter, "topic filter")?;
                let o = &f.options;
                let mut byte = o.qos as u8;
                if v5 {
                    byte |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling & 0x03) << 4;
                }
                out.put_u8(byte);
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.pkid);
            if v5 {
                encode_properties(&s.properties, out)?;
                out.put_slice(&s.reasons);
            } else {
                for &code in &s.reasons {
                    // 3.1.1 knows only the granted QoS and one failure code.
                    out.put_u8(if code <= 2 { code } else { reason::v311::SUBACK_FAILURE });
                }
            }
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.pkid);
            if v5 {
                encode_properties(&u.properties, out)?;
            }
            for f in &u.filters {
                put_binary(out, f, "topic filter")?;
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u16(u.pkid);
            if v5 {
                encode_properties(&u.properties, out)?;
                out.put_slice(&u.reasons);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(Disconnect { reason, properties }) | Packet::Auth(Auth { reason, properties }) => {
            if remaining > 0 {
                out.put_u8(*reason);
            }
            if remaining > 1 {
                encode_properties(properties, out)?;
            }
        }
    }
    Ok(())
}

fn write_connect(c: &Connect, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    put_binary(out, b"MQTT", "protocol name")?;
    out.put_u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if v5 {
        encode_properties(&c.properties, out)?;
    }
    put_binary(out, &c.client_id, "client identifier")?;
    if let Some(w) = &c.will {
        if v5 {
            encode_properties(&w.properties, out)?;
        }
        put_binary(out, &w.topic, "will topic")?;
        put_binary(out, &w.payload, "will payload")?;
    }
    if let Some(u) = &c.username {
        put_binary(out, u, "user name")?;
    }
    if let Some(p) = &c.password {
        put_binary(out, p, "password")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode::tests::samples;
    use crate::codec::decode::{check_frame, decode_packet};
    use bytes::Bytes;

    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn enc(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_packet(p, v, &mut out, usize::MAX).expect("encodes");
        assert_eq!(out.len(), encoded_len(p, v));
        out.to_vec()
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn publish_header_plus_payload_is_the_whole_publish() {
        for v in [V311, V5] {
            let mut p = Publish::new(b("fan/out"), QoS::AtLeastOnce, Bytes::from(vec![7u8; 300]));
            p.pkid = 42;
            if v.is_v5() {
                p.properties.user_properties.push((b("k"), b("v")));
            }
            let mut whole = BytesMut::new();
            encode_publish(&p, v, &mut whole).expect("encodes");
            let mut split = BytesMut::new();
            encode_publish_header(&p, v, &mut split).expect("encodes");
            split.extend_from_slice(&p.payload);
            assert_eq!(whole, split);
        }
    }

    #[test]
    fn vbi_boundaries() {
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING_LENGTH, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            let mut out = BytesMut::new();
            put_vbi(&mut out, value);
            assert_eq!(&out[..], bytes, "{value}");
            assert_eq!(vbi_len(value), bytes.len());
        }
    }

    #[test]
    fn v5_acks_use_the_short_forms() {
        let pkid = 0x0102;
        assert_eq!(enc(&Packet::PubAck(Ack::new(pkid, 0)), V5), [0x40, 2, 1, 2]);
        assert_eq!(enc(&Packet::PubRec(Ack::new(pkid, 0x10)), V5), [0x50, 3, 1, 2, 0x10]);
        assert_eq!(enc(&Packet::PubRel(Ack::new(pkid, 0)), V5), [0x62, 2, 1, 2]);
        assert_eq!(enc(&Packet::PubComp(Ack::new(pkid, 0x92)), V5), [0x70, 3, 1, 2, 0x92]);
        let with_props =
            Ack { pkid, reason: 0, properties: Properties { reason_string: Some(b("r")), ..Properties::default() } };
        assert_eq!(enc(&Packet::PubAck(with_props), V5), [0x40, 8, 1, 2, 0, 4, 0x1F, 0, 1, b'r']);
    }

    #[test]
    fn v5_disconnect_and_auth_short_forms() {
        let d = |reason| Packet::Disconnect(Disconnect { reason, properties: Properties::default() });
        assert_eq!(enc(&d(0), V5), [0xE0, 0]);
        assert_eq!(enc(&d(0x8E), V5), [0xE0, 1, 0x8E]);
        let a = |reason| Packet::Auth(Auth { reason, properties: Properties::default() });
        assert_eq!(enc(&a(0), V5), [0xF0, 0]);
        // AUTH may only drop both fields, never the property length alone.
        assert_eq!(enc(&a(0x18), V5), [0xF0, 2, 0x18, 0]);
    }

    #[test]
    fn v311_drops_what_3_1_1_cannot_say() {
        let props = Properties {
            reason_string: Some(b("not in 3.1.1")),
            user_properties: vec![(b("k"), b("v"))],
            ..Properties::default()
        };
        // CONNACK codes map to 3.1.1 return codes.
        for (code, want) in [(0x00, 0), (0x84, 1), (0x85, 2), (0x88, 3), (0x86, 4), (0x87, 5), (0x80, 3)] {
            let p = Packet::ConnAck(ConnAck { session_present: false, code, properties: props.clone() });
            assert_eq!(enc(&p, V311), [0x20, 2, 0, want], "{code:#x}");
        }
        // SUBACK failures collapse to 0x80.
        let suback = Packet::SubAck(SubAck {
            pkid: 1,
            properties: props.clone(),
            reasons: vec![0, 1, 2, 0x80, 0x87, 0x8F, 0xA2],
        });
        assert_eq!(enc(&suback, V311), [0x90, 9, 0, 1, 0, 1, 2, 0x80, 0x80, 0x80, 0x80]);
        // UNSUBACK has no payload, acks are two bytes, DISCONNECT is empty.
        let unsuback = Packet::UnsubAck(UnsubAck { pkid: 1, properties: props.clone(), reasons: vec![0x11] });
        assert_eq!(enc(&unsuback, V311), [0xB0, 2, 0, 1]);
        let ack = Ack { pkid: 1, reason: 0x80, properties: props.clone() };
        assert_eq!(enc(&Packet::PubAck(ack), V311), [0x40, 2, 0, 1]);
        let disconnect = Packet::Disconnect(Disconnect { reason: 0x8B, properties: props.clone() });
        assert_eq!(enc(&disconnect, V311), [0xE0, 0]);
        // PUBLISH without properties.
        let mut publish = Publish::new(b("t"), QoS::AtMostOnce, b("x"));
        publish.properties = props.clone();
        assert_eq!(enc(&Packet::Publish(publish), V311), [0x30, 4, 0, 1, b't', b'x']);
        // AUTH does not exist.
        let auth = Packet::Auth(Auth { reason: 0, properties: Properties::default() });
        let mut out = BytesMut::new();
        assert!(matches!(encode_packet(&auth, V311, &mut out, usize::MAX), Err(EncodeError::NotInVersion(_))));
        assert!(out.is_empty());
        assert_eq!(encoded_len(&auth, V311), 0);
    }

    #[test]
    fn connect_matches_the_spec_layout() {
        // Spec 3.1.2.10 example variable header, with a small payload.
        let c = Connect {
            protocol: V311,
            clean_start: true,
            keep_alive: 10,
            client_id: b("id"),
            will: Some(Will {
                topic: b("w"),
                payload: b("m"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: Properties::default(),
            }),
            username: Some(b("u")),
            password: Some(b("p")),
            properties: Properties::default(),
        };
        let mut want = vec![0x10, 26, 0, 4, b'M', b'Q', b'T', b'T', 4, 0b1111_0110, 0, 10];
        want.extend_from_slice(&[0, 2, b'i', b'd', 0, 1, b'w', 0, 1, b'm', 0, 1, b'u', 0, 1, b'p']);
        assert_eq!(enc(&Packet::Connect(c.clone()), V311), want);
        // A CONNECT is written in its own version, whatever the argument says.
        assert_eq!(enc(&Packet::Connect(c), V5), want);
    }

    #[test]
    fn v311_connect_cannot_carry_a_password_alone() {
        let c = Connect {
            protocol: V311,
            clean_start: true,
            keep_alive: 0,
            client_id: b("c"),
            will: None,
            username: None,
            password: Some(b("p")),
            properties: Properties::default(),
        };
        let mut out = BytesMut::from(&b"keep"[..]);
        let res = encode_packet(&Packet::Connect(c), V311, &mut out, usize::MAX);
        assert!(matches!(res, Err(EncodeError::NotInVersion(_))));
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn subscription_options_byte() {
        let sub = || {
            Packet::Subscribe(Subscribe {
                pkid: 1,
                properties: Properties::default(),
                filters: vec![SubscribeFilter {
                    filter: b("a"),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: 2,
                    },
                }],
            })
        };
        assert_eq!(enc(&sub(), V5), [0x82, 7, 0, 1, 0, 0, 1, b'a', 0b0010_1101]);
        // 3.1.1 has only the QoS.
        assert_eq!(enc(&sub(), V311), [0x82, 6, 0, 1, 0, 1, b'a', 0x01]);
    }

    #[test]
    fn too_large_packets_are_refused_before_writing() {
        let p = Packet::Publish(Publish::new(b("t"), QoS::AtMostOnce, Bytes::from(vec![0; 100])));
        let len = encoded_len(&p, V5);
        assert_eq!(len, 2 + 2 + 1 + 1 + 100);
        let mut out = BytesMut::new();
        assert_eq!(
            encode_packet(&p, V5, &mut out, len - 1),
            Err(EncodeError::PacketTooLarge { size: len, max: len - 1 })
        );
        assert!(out.is_empty());
        encode_packet(&p, V5, &mut out, len).expect("exactly at the limit");
        assert_eq!(out.len(), len);
        // Bigger than any Remaining Length can express, whatever the limit.
        let huge = Publish::new(b("t"), QoS::AtMostOnce, Bytes::from(vec![0; MAX_REMAINING_LENGTH]));
        let mut out = BytesMut::new();
        assert!(matches!(encode_publish(&huge, V311, &mut out), Err(EncodeError::PacketTooLarge { .. })));
        assert!(out.is_empty());
    }

    #[test]
    fn strings_over_65535_bytes_are_refused() {
        let long = Bytes::from(vec![b'a'; 65_536]);
        let mut out = BytesMut::from(&b"prev"[..]);
        let p = Publish::new(long.clone(), QoS::AtMostOnce, Bytes::new());
        assert_eq!(encode_publish(&p, V5, &mut out), Err(EncodeError::FieldTooLong("topic name")));
        let unsub = Packet::Unsubscribe(Unsubscribe {
            pkid: 1,
            properties: Properties::default(),
            filters: vec![b("ok"), long.clone()],
        });
        assert!(matches!(encode_packet(&unsub, V5, &mut out, usize::MAX), Err(EncodeError::FieldTooLong(_))));
        // Nothing of the failed packets is left behind.
        assert_eq!(&out[..], b"prev");
        // 65535 itself is fine.
        let max = Publish::new(Bytes::from(vec![b'a'; 65_535]), QoS::AtMostOnce, Bytes::new());
        encode_publish(&max, V5, &mut out).expect("longest topic");
    }

    #[test]
    fn publish_len_matches_the_bytes_and_the_header() {
        for size in [0usize, 120, 121, 122, 16_370, 16_380, 16_390, 2_097_140, 2_097_160] {
            for v in [V311, V5] {
                let mut p = Publish::new(b("a/b"), QoS::AtLeastOnce, Bytes::from(vec![7; size]));
                p.pkid = 1;
                let mut out = BytesMut::new();
                encode_publish(&p, v, &mut out).expect("encodes");
                assert_eq!(out.len(), publish_len(&p, v));
                assert_eq!(publish_len(&p, v), encoded_len(&Packet::Publish(p.clone()), v));
                let frame = check_frame(&out, usize::MAX).expect("ok").expect("complete");
                assert_eq!(frame.total_len, out.len());
                assert_eq!(decode_packet(out.freeze(), Some(v)), Ok(Packet::Publish(p)));
            }
        }
    }

    #[test]
    fn encode_appends_to_what_is_already_buffered() {
        for v in [V311, V5] {
            let mut out = BytesMut::new();
            let packets = samples(v);
            for p in &packets {
                encode_packet(p, v, &mut out, usize::MAX).expect("encodes");
            }
            let mut decoded = Vec::new();
            while let Some(f) = check_frame(&out, usize::MAX).expect("frames") {
                decoded.push(decode_packet(out.split_to(f.total_len).freeze(), Some(v)).expect("ok"));
            }
            assert!(out.is_empty());
            assert_eq!(decoded, packets);
        }
    }
}
