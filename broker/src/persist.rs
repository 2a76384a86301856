//! What the broker writes into a shard's WAL, and reads back on recovery.
//!
//! The WAL (`promptmq-wal`) stores opaque bodies; this module gives them meaning. Each
//! body starts with a version byte and a kind byte:
//!
//! ```text
//! body    := version=1 u8 | kind u8 | kind-specific fields
//! message := kind=1
//!            flags          u8   bits 0-1 QoS, bit 2 RETAIN
//!            topic          u16 length + bytes
//!            publisher      u16 length + bytes (client id, for No Local)
//!            expiry_ms      u64  absolute Unix time in ms when it expires, 0 = never
//!            present        u8   bit 0 payload format, 1 content type, 2 response topic,
//!                                3 correlation data
//!            [payload format u8] [content type u16+bytes] [response topic u16+bytes]
//!            [correlation data u16+bytes]
//!            user properties u16 count, then (u16+bytes, u16+bytes) each
//!            payload        u32 length + bytes
//! ```
//!
//! All integers are little-endian. Decoding checks every length against the body, so a
//! body that passed the WAL's CRC but is not ours (or a future version) is an error, never
//! a panic.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};

use crate::codec::{Properties, QoS};
use crate::message::Message;

const VERSION: u8 = 1;
const KIND_MESSAGE: u8 = 1;

/// Why a WAL body could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record body truncated")]
    Truncated,
    #[error("unsupported record version {0}")]
    Version(u8),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// Converts between the core's monotonic clock and wall-clock milliseconds, which is what a
/// durable record must carry (an `Instant` means nothing after a restart).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    pub anchor: Instant,
    pub anchor_unix_ms: u64,
}

impl WallClock {
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.anchor).as_millis() as u64;
        self.anchor_unix_ms + since
    }

    pub fn instant(&self, unix_ms: u64, now: Instant) -> Instant {
        let now_ms = self.unix_ms(now);
        if unix_ms >= now_ms {
            now + Duration::from_millis(unix_ms - now_ms)
        } else {
            now.checked_sub(Duration::from_millis(now_ms - unix_ms)).unwrap_or(now)
        }
    }
}

fn put_short(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.put_u16_le(len);
    out.extend_from_slice(&b[..usize::from(len)]);
}

/// Encodes a routed message for the WAL.
pub fn encode_message(msg: &Message, clock: &WallClock) -> Vec<u8> {
    let p = &msg.properties;
    let mut out = Vec::with_capacity(64 + msg.topic.len() + msg.payload.len());
    out.push(VERSION);
    out.push(KIND_MESSAGE);
    out.push(msg.qos as u8 | u8::from(msg.retain) << 2);
    put_short(&mut out, &msg.topic);
    put_short(&mut out, &msg.publisher);
    out.put_u64_le(msg.expires_at.map_or(0, |t| clock.unix_ms(t).max(1)));
    let present = u8::from(p.payload_format_indicator.is_some())
        | u8::from(p.content_type.is_some()) << 1
        | u8::from(p.response_topic.is_some()) << 2
        | u8::from(p.correlation_data.is_some()) << 3;
    out.push(present);
    if let Some(f) = p.payload_format_indicator {
        out.push(f);
    }
    for b in [&p.content_type, &p.response_topic, &p.correlation_data].into_iter().flatten() {
        put_short(&mut out, b);
    }
    out.put_u16_le(u16::try_from(p.user_properties.len()).unwrap_or(u16::MAX));
    for (k, v) in p.user_properties.iter().take(usize::from(u16::MAX)) {
        put_short(&mut out, k);
        put_short(&mut out, v);
    }
    out.put_u32_le(msg.payload.len() as u32);
    out.extend_from_slice(&msg.payload);
    out
}

struct Reader<'a> {
    body: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<Bytes, RecordError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.body.len()).ok_or(RecordError::Truncated)?;
        let b = self.body.slice(self.at..end);
        self.at = end;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut x = [0; 8];
        x.copy_from_slice(&b);
        Ok(u64::from_le_bytes(x))
    }
    fn short(&mut self) -> Result<Bytes, RecordError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Decodes a body written by [`encode_message`]. `body` should own its bytes (a copy of
/// the WAL record), since the message's fields are slices of it.
pub fn decode_message(body: &Bytes, clock: &WallClock, now: Instant) -> Result<Message, RecordError> {
    let mut r = Reader { body, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let kind = r.u8()?;
    if kind != KIND_MESSAGE {
        return Err(RecordError::Kind(kind));
    }
    let flags = r.u8()?;
    let qos = QoS::from_u8(flags & 0b11).ok_or(RecordError::Invalid("QoS"))?;
    let retain = flags & 0b100 != 0;
    let topic = r.short()?;
    let publisher = r.short()?;
    let expiry_ms = r.u64()?;
    let present = r.u8()?;
    let mut properties = Properties::default();
    if present & 1 != 0 {
        properties.payload_format_indicator = Some(r.u8()?);
    }
    if present & 2 != 0 {
        properties.content_type = Some(r.short()?);
    }
    if present & 4 != 0 {
        properties.response_topic = Some(r.short()?);
    }
    if present & 8 != 0 {
        properties.correlation_data = Some(r.short()?);
    }
    let count = r.u16()?;
    for _ in 0..count {
        let k = r.short()?;
        let v = r.short()?;
        properties.user_properties.push((k, v));
    }
    let len = r.u32()? as usize;
    let payload = r.take(len)?;
    if r.at != body.len() {
        return Err(RecordError::Invalid("trailing bytes"));
    }
    let expires_at = (expiry_ms != 0).then(|| clock.instant(expiry_ms, now));
    Ok(Message { topic, payload, qos, retain, properties, publisher, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(now: Instant) -> WallClock {
        WallClock { anchor: now, anchor_unix_ms: 1_700_000_000_000 }
    }

    #[test]
    fn message_round_trip_with_every_field() {
        let now = Instant::now();
        let c = clock(now);
        let msg = Message {
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Properties {
                payload_format_indicator: Some(1),
                content_type: Some(Bytes::from_static(b"text/plain")),
                response_topic: Some(Bytes::from_static(b"r/t")),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))],
                ..Default::default()
            },
            publisher: Bytes::from_static(b"client"),
            expires_at: Some(now + Duration::from_secs(30)),
        };
        let body = Bytes::from(encode_message(&msg, &c));
        let back = decode_message(&body, &c, now).expect("decodes");
        assert_eq!((back.topic, back.payload, back.qos, back.retain), (msg.topic, msg.payload, msg.qos, msg.retain));
        assert_eq!(back.properties, msg.properties);
        assert_eq!(back.publisher, msg.publisher);
        assert_eq!(back.expires_at, msg.expires_at);
    }

    #[test]
    fn expiry_survives_a_restart_as_wall_time() {
        let now = Instant::now();
        let before = clock(now);
        let mut msg = Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            publisher: Bytes::new(),
            expires_at: Some(now + Duration::from_secs(10)),
        };
        let body = Bytes::from(encode_message(&msg, &before));
        // "Restarted" 4 s of wall time later, with a new monotonic anchor.
        let later = now + Duration::from_secs(100);
        let after = WallClock { anchor: later, anchor_unix_ms: before.anchor_unix_ms + 4_000 };
        msg = decode_message(&body, &after, later).expect("decodes");
        assert_eq!(msg.remaining_expiry(later), Some(6));
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let now = Instant::now();
        let c = clock(now);
        let msg = Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
            publisher: Bytes::new(),
            expires_at: None,
        };
        let body = encode_message(&msg, &c);
        for cut in 0..body.len() {
            assert!(decode_message(&Bytes::copy_from_slice(&body[..cut]), &c, now).is_err());
        }
        let mut wrong = body.clone();
        wrong[0] = 9;
        assert_eq!(decode_message(&Bytes::from(wrong), &c, now).err(), Some(RecordError::Version(9)));
    }
}
