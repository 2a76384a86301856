//! A minimal MQTT 3.1.1 / 5.0 client codec: exactly the packets a load generator sends and
//! receives, encoded straight into a reusable `Vec<u8>` and decoded from borrowed slices.
//!
//! Only what the generator needs is decoded: CONNACK (result and, for 5.0, Receive Maximum),
//! SUBACK (granted codes), PUBLISH (QoS, packet id, topic, payload) and the acknowledgements.
//! Everything else is framed and skipped.

use anyhow::{bail, ensure, Result};

/// Protocol level in CONNECT: 4 for 3.1.1, 5 for 5.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// Appends a Variable Byte Integer (remaining length, property length).
pub fn put_varint(buf: &mut Vec<u8>, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        buf.push(b);
        if v == 0 {
            break;
        }
    }
}

/// Reads a Variable Byte Integer: `Ok(None)` if `buf` ends before it does.
pub fn get_varint(buf: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut v = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else { return Ok(None) };
        v |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    bail!("malformed variable byte integer")
}

fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

/// CONNECT with no will and no credentials: a clean start, or (`session_expiry` given) a
/// session the broker keeps (3.1.1 clean session 0; 5.0 clean start 0 with that Session
/// Expiry Interval). For 5.0 it advertises Receive Maximum 65535 so the broker's outgoing
/// QoS 1/2 window is not limited by the client.
pub fn encode_connect(
    buf: &mut Vec<u8>,
    version: Version,
    client_id: &str,
    keep_alive: u16,
    session_expiry: Option<u32>,
) {
    let mut props: Vec<u8> = Vec::with_capacity(8);
    if version == Version::V5 {
        // Receive Maximum (0x21) = 65535.
        props.extend_from_slice(&[0x21, 0xff, 0xff]);
        if let Some(secs) = session_expiry {
            // Session Expiry Interval (0x11).
            props.push(0x11);
            props.extend_from_slice(&secs.to_be_bytes());
        }
    }
    let mut len = 2 + 4 + 1 + 1 + 2 + 2 + client_id.len();
    if version == Version::V5 {
        len += varint_len(props.len()) + props.len();
    }
    buf.push(0x10);
    put_varint(buf, len);
    put_str(buf, b"MQTT");
    buf.push(version.level());
    buf.push(if session_expiry.is_some() { 0x00 } else { 0x02 }); // clean session / clean start
    buf.extend_from_slice(&keep_alive.to_be_bytes());
    if version == Version::V5 {
        put_varint(buf, props.len());
        buf.extend_from_slice(&props);
    }
    put_str(buf, client_id.as_bytes());
}

/// SUBSCRIBE to one filter at `qos`.
pub fn encode_subscribe(buf: &mut Vec<u8>, version: Version, pid: u16, filter: &str, qos: u8) {
    let mut len = 2 + 2 + filter.len() + 1;
    if version == Version::V5 {
        len += 1;
    }
    buf.push(0x82);
    put_varint(buf, len);
    buf.extend_from_slice(&pid.to_be_bytes());
    if version == Version::V5 {
        buf.push(0);
    }
    put_str(buf, filter.as_bytes());
    buf.push(qos & 3);
}

/// Encoded size of a PUBLISH, for sizing batches.
pub fn publish_len(version: Version, topic: &str, qos: u8, payload_len: usize) -> usize {
    let rem = publish_remaining(version, topic, qos, payload_len);
    1 + varint_len(rem) + rem
}

fn publish_remaining(version: Version, topic: &str, qos: u8, payload_len: usize) -> usize {
    let mut len = 2 + topic.len() + payload_len;
    if qos > 0 {
        len += 2;
    }
    if version == Version::V5 {
        len += 1;
    }
    len
}

/// PUBLISH header (everything before the payload); the caller appends exactly
/// `payload_len` bytes of payload right after.
pub fn encode_publish_header(buf: &mut Vec<u8>, version: Version, topic: &str, qos: u8, pid: u16, payload_len: usize) {
    buf.push(0x30 | ((qos & 3) << 1));
    put_varint(buf, publish_remaining(version, topic, qos, payload_len));
    put_str(buf, topic.as_bytes());
    if qos > 0 {
        buf.extend_from_slice(&pid.to_be_bytes());
    }
    if version == Version::V5 {
        buf.push(0);
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP with success (the 5.0 reason code 0 is omitted).
pub fn encode_ack(buf: &mut Vec<u8>, kind: u8, pid: u16) {
    let first = if kind == PUBREL { 0x62 } else { kind << 4 };
    buf.extend_from_slice(&[first, 2]);
    buf.extend_from_slice(&pid.to_be_bytes());
}

pub fn encode_pingreq(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xc0, 0]);
}

pub fn encode_disconnect(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xe0, 0]);
}

/// One framed packet: the first byte and the body after the remaining length.
#[derive(Debug)]
pub struct Frame<'a> {
    pub header: u8,
    pub body: &'a [u8],
}

impl Frame<'_> {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }
}

/// Splits one packet off the front of `buf`: `Ok(None)` if it is incomplete; otherwise the
/// frame and the number of bytes it took.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    let Some(&header) = buf.first() else { return Ok(None) };
    let Some((len, n)) = get_varint(&buf[1..])? else { return Ok(None) };
    let total = 1 + n + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((Frame { header, body: &buf[1 + n..total] }, total)))
}

/// The bytes a complete frame at the front of `buf` would need, when its header is known.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let (len, n) = get_varint(buf.get(1..)?).ok()??;
    Some(1 + n + len)
}

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    ensure!(b.len() >= at + 2, "packet too short");
    Ok(u16::from_be_bytes([b[at], b[at + 1]]))
}

/// A decoded CONNACK.
#[derive(Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Return code (3.1.1) or reason code (5.0); 0 is success.
    pub code: u8,
    /// 5.0 Receive Maximum: how many QoS 1/2 PUBLISHes the broker accepts unacknowledged.
    pub receive_maximum: Option<u16>,
}

pub fn decode_connack(version: Version, body: &[u8]) -> Result<ConnAck> {
    ensure!(body.len() >= 2, "CONNACK too short");
    let code = body[1];
    let mut receive_maximum = None;
    if version == Version::V5 && body.len() > 2 {
        let (plen, n) = get_varint(&body[2..])?.ok_or_else(|| anyhow::anyhow!("CONNACK properties truncated"))?;
        let start = 2 + n;
        ensure!(body.len() >= start + plen, "CONNACK properties truncated");
        let mut p = &body[start..start + plen];
        while let Some(&id) = p.first() {
            let size = property_size(id, &p[1..])?;
            if id == 0x21 {
                receive_maximum = Some(u16_at(p, 1)?);
            }
            p = &p[1 + size..];
        }
    }
    Ok(ConnAck { code, receive_maximum })
}

/// Size of a 5.0 property's value (after its identifier).
fn property_size(id: u8, v: &[u8]) -> Result<usize> {
    let size = match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
        0x13 | 0x21 | 0x22 | 0x23 => 2,
        0x02 | 0x11 | 0x18 | 0x27 => 4,
        0x0b => get_varint(v)?.ok_or_else(|| anyhow::anyhow!("property truncated"))?.1,
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => 2 + u16_at(v, 0)? as usize,
        0x26 => {
            let k = 2 + u16_at(v, 0)? as usize;
            k + 2 + u16_at(v, k)? as usize
        }
        _ => bail!("unknown property 0x{id:02x}"),
    };
    ensure!(v.len() >= size, "property truncated");
    Ok(size)
}

/// SUBACK: packet id and the first granted code (one filter per SUBSCRIBE here).
pub fn decode_suback(version: Version, body: &[u8]) -> Result<(u16, u8)> {
    let pid = u16_at(body, 0)?;
    let mut at = 2;
    if version == Version::V5 {
        let (plen, n) = get_varint(&body[2..])?.ok_or_else(|| anyhow::anyhow!("SUBACK truncated"))?;
        at += n + plen;
    }
    let code = *body.get(at).ok_or_else(|| anyhow::anyhow!("SUBACK without reason code"))?;
    Ok((pid, code))
}

/// A PUBLISH as received.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub qos: u8,
    pub pid: u16,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

pub fn decode_publish(version: Version, header: u8, body: &[u8]) -> Result<Publish<'_>> {
    let qos = (header >> 1) & 3;
    ensure!(qos < 3, "PUBLISH with QoS 3");
    let tlen = u16_at(body, 0)? as usize;
    let mut at = 2 + tlen;
    ensure!(body.len() >= at, "PUBLISH topic truncated");
    let topic = &body[2..at];
    let mut pid = 0;
    if qos > 0 {
        pid = u16_at(body, at)?;
        at += 2;
    }
    if version == Version::V5 {
        let (plen, n) = get_varint(body.get(at..).unwrap_or(&[]))?
            .ok_or_else(|| anyhow::anyhow!("PUBLISH properties truncated"))?;
        at += n + plen;
        ensure!(body.len() >= at, "PUBLISH properties truncated");
    }
    Ok(Publish { qos, pid, topic, payload: &body[at..] })
}

/// Packet id of PUBACK/PUBREC/PUBREL/PUBCOMP, and the 5.0 reason code (0 when omitted).
pub fn decode_ack(body: &[u8]) -> Result<(u16, u8)> {
    let pid = u16_at(body, 0)?;
    Ok((pid, body.get(2).copied().unwrap_or(0)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for v in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(get_varint(&b).unwrap(), Some((v, b.len())));
            assert_eq!(get_varint(&b[..b.len() - 1]).unwrap(), None);
        }
        assert!(get_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }

    #[test]
    fn connect_bytes_311_and_5() {
        let mut b = Vec::new();
        encode_connect(&mut b, Version::V311, "ab", 60, None);
        assert_eq!(b, [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'a', b'b']);
        b.clear();
        encode_connect(&mut b, Version::V5, "ab", 60, None);
        assert_eq!(b, [0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 3, 0x21, 0xff, 0xff, 0, 2, b'a', b'b']);
        b.clear();
        encode_connect(&mut b, Version::V311, "ab", 60, Some(300));
        assert_eq!(b, [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 60, 0, 2, b'a', b'b']);
        b.clear();
        encode_connect(&mut b, Version::V5, "ab", 60, Some(300));
        let props = [8, 0x21, 0xff, 0xff, 0x11, 0, 0, 1, 44];
        let mut want = vec![0x10, 23, 0, 4, b'M', b'Q', b'T', b'T', 5, 0, 0, 60];
        want.extend_from_slice(&props);
        want.extend_from_slice(&[0, 2, b'a', b'b']);
        assert_eq!(b, want);
    }

    #[test]
    fn subscribe_bytes() {
        let mut b = Vec::new();
        encode_subscribe(&mut b, Version::V311, 7, "a/+", 1);
        assert_eq!(b, [0x82, 8, 0, 7, 0, 3, b'a', b'/', b'+', 1]);
        b.clear();
        encode_subscribe(&mut b, Version::V5, 7, "a/+", 2);
        assert_eq!(b, [0x82, 9, 0, 7, 0, 0, 3, b'a', b'/', b'+', 2]);
    }

    #[test]
    fn publish_round_trip_every_qos_and_version() {
        for version in [Version::V311, Version::V5] {
            for qos in 0..3u8 {
                for payload_len in [0usize, 16, 200, 20_000] {
                    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
                    let mut b = Vec::new();
                    encode_publish_header(&mut b, version, "t/1", qos, 513, payload.len());
                    b.extend_from_slice(&payload);
                    assert_eq!(b.len(), publish_len(version, "t/1", qos, payload_len));
                    let (f, used) = parse_frame(&b).unwrap().unwrap();
                    assert_eq!(used, b.len());
                    assert_eq!(frame_len(&b), Some(b.len()));
                    assert_eq!(f.kind(), PUBLISH);
                    let p = decode_publish(version, f.header, f.body).unwrap();
                    assert_eq!(p.qos, qos);
                    assert_eq!(p.pid, if qos > 0 { 513 } else { 0 });
                    assert_eq!(p.topic, b"t/1");
                    assert_eq!(p.payload, &payload[..]);
                    // Any strict prefix is incomplete, not an error.
                    assert!(parse_frame(&b[..b.len() - 1]).unwrap().is_none());
                }
            }
        }
    }

    #[test]
    fn publish_with_v5_properties_skips_them() {
        // Topic "a", QoS 1, pid 1, properties: Message Expiry (4 bytes) + Subscription Identifier.
        let body = [0, 1, b'a', 0, 1, 7, 0x02, 0, 0, 0, 9, 0x0b, 3, b'x', b'y'];
        let p = decode_publish(Version::V5, 0x32, &body).unwrap();
        assert_eq!((p.qos, p.pid, p.topic, p.payload), (1, 1, &b"a"[..], &b"xy"[..]));
    }

    #[test]
    fn acks() {
        for kind in [PUBACK, PUBREC, PUBREL, PUBCOMP] {
            let mut b = Vec::new();
            encode_ack(&mut b, kind, 0xabcd);
            let (f, _) = parse_frame(&b).unwrap().unwrap();
            assert_eq!(f.kind(), kind);
            assert_eq!(f.header & 0x0f, if kind == PUBREL { 2 } else { 0 });
            assert_eq!(decode_ack(f.body).unwrap(), (0xabcd, 0));
        }
        // 5.0 ack with a reason code and properties.
        assert_eq!(decode_ack(&[0, 5, 0x10, 0]).unwrap(), (5, 0x10));
    }

    #[test]
    fn connack_311_and_5() {
        assert_eq!(decode_connack(Version::V311, &[0, 5]).unwrap(), ConnAck { code: 5, receive_maximum: None });
        // 5.0: session present 0, success, properties: Topic Alias Maximum 10, Assigned Client
        // Identifier "id", Receive Maximum 20, User Property ("k","v").
        let body = [0, 0, 18, 0x22, 0, 10, 0x12, 0, 2, b'i', b'd', 0x21, 0, 20, 0x26, 0, 1, b'k', 0, 1, b'v'];
        assert_eq!(decode_connack(Version::V5, &body).unwrap(), ConnAck { code: 0, receive_maximum: Some(20) });
        assert!(decode_connack(Version::V5, &[0, 0, 3, 0x21, 0]).is_err());
    }

    #[test]
    fn suback_311_and_5() {
        assert_eq!(decode_suback(Version::V311, &[0, 9, 1]).unwrap(), (9, 1));
        assert_eq!(decode_suback(Version::V5, &[0, 9, 0, 0x80]).unwrap(), (9, 0x80));
        assert_eq!(decode_suback(Version::V5, &[0, 9, 3, 0x1f, 0, 0, 2]).unwrap(), (9, 2));
    }

    #[test]
    fn small_packets() {
        let mut b = Vec::new();
        encode_pingreq(&mut b);
        encode_disconnect(&mut b);
        assert_eq!(b, [0xc0, 0, 0xe0, 0]);
        let (f, n) = parse_frame(&b).unwrap().unwrap();
        assert_eq!((f.kind(), n, f.body.len()), (12, 2, 0));
    }
}
