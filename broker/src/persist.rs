//! What the broker writes into a shard's WAL, and reads back on recovery.
//!
//! The WAL (`promptmq-wal`) stores opaque bodies; this module gives them meaning. Each
//! body starts with a version byte and a kind byte:
//!
//! ```text
//! body    := version=1 u8 | kind u8 | kind-specific fields
//! message := kind=1
//!            flags          u8   bits 0-1 QoS, bit 2 RETAIN, bit 3 inbound exchange,
//!                                bit 4 shared targets
//!            topic          u16 length + bytes
//!            publisher      u16 length + bytes (client id, for No Local)
//!            expiry_ms      u64  absolute Unix time in ms when it expires, 0 = never
//!            properties
//!            payload        u32 length + bytes
//!            [exchange]     with flags bit 3: the publisher's persistent session was in a
//!                           QoS 2 exchange for it: incarnation u64 | packet id u16
//!            [shared to]    with flags bit 4: u16 count, then client id u16+bytes each: the
//!                           members of shared subscriptions the shard routed it to (one per
//!                           group), so that after a crash it is owed to those alone
//! properties := present u8   bit 0 payload format, 1 content type, 2 response topic,
//!                            3 correlation data, 4 message expiry interval (wills; a
//!                            message stores its absolute expiry instead), 5 will delay
//!            [payload format u8] [content type u16+bytes] [response topic u16+bytes]
//!            [correlation data u16+bytes] [message expiry u32] [will delay u32]
//!            user properties u16 count, then (u16+bytes, u16+bytes) each
//! session := kind=2 or kind=4   (a snapshot of a persistent session; the newest one wins)
//!            client id      u16 length + bytes
//!            protocol       u8   4 or 5
//!            expiry         u32  Session Expiry Interval, seconds
//!            disconnected   u64  Unix ms when it went offline, 0 = connected when written
//!            subscriptions  u16 count, each:
//!                filter u16+bytes | options u8 (bits 0-1 QoS, 2 No Local, 3 Retain As
//!                Published, 4-5 Retain Handling) | subscription id u32 (0 = none) |
//!                since: u16 count of (shard u16, seq u64)
//!            watermarks     u16 count of (shard u16, seq u64): nothing up to seq of that
//!                           shard's log is owed to the session any more
//!            [incarnation]  kind=4 only: u64, set when the session was created (a clean
//!                           start makes a new one); kind=2 (older) records mean 0
//!            [will]         absent in records written before wills were logged:
//!                flags u8 (bits 0-1 QoS, 2 RETAIN) | topic u16+bytes |
//!                due u64 (Unix ms when a delayed will is due, 0 = not running) |
//!                properties (as a message's, see below) | payload u32+bytes
//! end     := kind=3    client id u16+bytes: the session ended
//! release := kind=5    client id u16+bytes | incarnation u64 | packet id u16: the client
//!                      released (PUBREL) the QoS 2 exchange logged with that message
//! delivery := kind=6   client id u16+bytes | incarnation u64 | packet id u16 |
//!                      message seq u64 | order u64 | state u8 (1 sent, 2 received,
//!                      3 completed): an outbound QoS 2 exchange of a persistent session,
//!                      for the message with that sequence number in this same log
//! ```
//!
//! Inbound QoS 2: a persistent session's exchange is logged with its message (in the
//! topic's shard) and its release in the same log, so one log orders both; the packet id is
//! reused only after PUBCOMP, which in `immediate` mode waits for the release to be durable.
//! Recovery keeps, per shard, the exchanges not released, for the incarnation the session's
//! newest snapshot names (those of an ended session are ignored).
//!
//! Outbound QoS 2: the broker logs, in the log of the message it delivers, that it sends it
//! to a persistent session with a packet id (`sent`), that the client answered PUBREC
//! (`received`) and PUBCOMP (`completed`). The PUBLISH goes out only once `sent` is durable
//! and the PUBREL only once `received` is (in `immediate` mode), so after a crash the
//! exchange resumes with the same packet id (PUBLISH with DUP, or PUBREL) instead of
//! delivering the message again under a new one. `order` is the session's send order: of
//! two open exchanges with one packet id (a `completed` that was not durable yet when the
//! id was reused for a message of another log), the later one is the live one.
//!
//! All integers are little-endian. Decoding checks every length against the body, so a
//! body that passed the WAL's CRC but is not ours (or a future version) is an error, never
//! a panic.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};

use crate::codec::{Properties, ProtocolVersion, QoS, SubscriptionOptions, Will};
use crate::message::Message;
use crate::session::StoredSubscription;

const VERSION: u8 = 1;
const KIND_MESSAGE: u8 = 1;
const KIND_SESSION: u8 = 2;
const KIND_SESSION_END: u8 = 3;
const KIND_SESSION_WITH_INCARNATION: u8 = 4;
const KIND_RELEASE: u8 = 5;
const KIND_DELIVERY: u8 = 6;

/// A persistent session's inbound QoS 2 exchange, as logged (see the format above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    pub incarnation: u64,
    pub pkid: u16,
}

/// How far an outbound QoS 2 exchange got (see the format above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeliveryState {
    /// PUBLISH sent with this packet id; PUBREC not yet received.
    Sent = 1,
    /// PUBREC received; PUBREL sent, PUBCOMP not yet received.
    Received = 2,
    /// PUBCOMP received: the exchange is over.
    Completed = 3,
}

/// An outbound QoS 2 exchange of a persistent session, as logged next to its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub incarnation: u64,
    pub pkid: u16,
    /// The message's sequence number in the log this record is in.
    pub msg_seq: u64,
    /// The session's send order ([`crate::session::Inflight::seq`]).
    pub order: u64,
    pub state: DeliveryState,
}

/// A persistent session as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: Bytes,
    pub version: ProtocolVersion,
    pub expiry_interval: u32,
    /// Unix ms when it went offline; 0 when it was connected at the time of the record.
    pub disconnected_ms: u64,
    pub subscriptions: Vec<(Bytes, StoredSubscription)>,
    pub watermarks: Vec<(usize, u64)>,
    /// See [`crate::session::Session::incarnation`]; 0 in records written before it existed.
    pub incarnation: u64,
    /// The will of the session's current or last connection, not yet published or
    /// discarded, and the Unix ms when its delay runs out (0: the connection was live).
    pub will: Option<(Box<Will>, u64)>,
}

/// Any record the broker writes.
#[derive(Debug)]
pub enum Record {
    /// A routed message, the publisher's QoS 2 exchange when one was logged with it, and the
    /// shared subscription members it went to.
    Message(Box<Message>, Option<Exchange>, Vec<Bytes>),
    Session(SessionRecord),
    SessionEnd(Bytes),
    /// The client (first) released this exchange.
    Released(Bytes, Exchange),
    /// An outbound QoS 2 exchange moved on.
    Delivery(Bytes, Delivery),
}

fn put_marks(out: &mut Vec<u8>, marks: &[(usize, u64)]) {
    out.put_u16_le(marks.len().min(usize::from(u16::MAX)) as u16);
    for &(shard, seq) in marks.iter().take(usize::from(u16::MAX)) {
        out.put_u16_le(shard as u16);
        out.put_u64_le(seq);
    }
}

pub fn encode_session(r: &SessionRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(VERSION);
    out.push(KIND_SESSION_WITH_INCARNATION);
    put_short(&mut out, &r.client_id);
    out.push(r.version.level());
    out.put_u32_le(r.expiry_interval);
    out.put_u64_le(r.disconnected_ms);
    out.put_u16_le(r.subscriptions.len().min(usize::from(u16::MAX)) as u16);
    for (filter, sub) in r.subscriptions.iter().take(usize::from(u16::MAX)) {
        put_short(&mut out, filter);
        let o = &sub.options;
        out.push(
            o.qos as u8 | u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3 | o.retain_handling << 4,
        );
        out.put_u32_le(sub.subscription_id.unwrap_or(0));
        put_marks(&mut out, &sub.since);
    }
    put_marks(&mut out, &r.watermarks);
    out.put_u64_le(r.incarnation);
    if let Some((w, due_ms)) = &r.will {
        out.push(w.qos as u8 | u8::from(w.retain) << 2);
        put_short(&mut out, &w.topic);
        out.put_u64_le(*due_ms);
        put_properties(&mut out, &w.properties, true);
        out.put_u32_le(w.payload.len() as u32);
        out.extend_from_slice(&w.payload);
    }
    out
}

/// The optional properties of a message or a will (see the format above); `intervals`: with
/// the message expiry and will delay intervals (a will's; a message stores its expiry as a time).
fn put_properties(out: &mut Vec<u8>, p: &Properties, intervals: bool) {
    let (expiry, delay) = if intervals { (p.message_expiry_interval, p.will_delay_interval) } else { (None, None) };
    let present = u8::from(p.payload_format_indicator.is_some())
        | u8::from(p.content_type.is_some()) << 1
        | u8::from(p.response_topic.is_some()) << 2
        | u8::from(p.correlation_data.is_some()) << 3
        | u8::from(expiry.is_some()) << 4
        | u8::from(delay.is_some()) << 5;
    out.push(present);
    if let Some(f) = p.payload_format_indicator {
        out.push(f);
    }
    for b in [&p.content_type, &p.response_topic, &p.correlation_data].into_iter().flatten() {
        put_short(out, b);
    }
    for v in [expiry, delay].into_iter().flatten() {
        out.put_u32_le(v);
    }
    out.put_u16_le(u16::try_from(p.user_properties.len()).unwrap_or(u16::MAX));
    for (k, v) in p.user_properties.iter().take(usize::from(u16::MAX)) {
        put_short(out, k);
        put_short(out, v);
    }
}

/// For a session record (snapshot or end), its client id and whether it is a snapshot.
pub fn record_client_id(body: &[u8]) -> Option<(Bytes, bool)> {
    let kind = *body.get(1)?;
    if !matches!(kind, KIND_SESSION | KIND_SESSION_WITH_INCARNATION | KIND_SESSION_END) {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([*body.get(2)?, *body.get(3)?]));
    let id = body.get(4..4 + len)?;
    Some((Bytes::copy_from_slice(id), kind != KIND_SESSION_END))
}

pub fn encode_session_end(client_id: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + client_id.len());
    out.push(VERSION);
    out.push(KIND_SESSION_END);
    put_short(&mut out, client_id);
    out
}

/// The client released (PUBREL) an inbound QoS 2 exchange of its persistent session.
pub fn encode_release(client_id: &[u8], exchange: Exchange) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + client_id.len());
    out.push(VERSION);
    out.push(KIND_RELEASE);
    put_short(&mut out, client_id);
    out.put_u64_le(exchange.incarnation);
    out.put_u16_le(exchange.pkid);
    out
}

/// An outbound QoS 2 exchange of a persistent session moved on (see the format above).
pub fn encode_delivery(client_id: &[u8], d: Delivery) -> Vec<u8> {
    let mut out = Vec::with_capacity(31 + client_id.len());
    out.push(VERSION);
    out.push(KIND_DELIVERY);
    put_short(&mut out, client_id);
    out.put_u64_le(d.incarnation);
    out.put_u16_le(d.pkid);
    out.put_u64_le(d.msg_seq);
    out.put_u64_le(d.order);
    out.push(d.state as u8);
    out
}

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

/// Encodes a routed message for the WAL, with the publisher's QoS 2 exchange when its
/// session is persistent and the shared subscription members it was routed to.
pub fn encode_message(msg: &Message, clock: &WallClock, exchange: Option<Exchange>, shared_to: &[Bytes]) -> Vec<u8> {
    let p = &msg.properties;
    let mut out = Vec::with_capacity(64 + msg.topic.len() + msg.payload.len());
    out.push(VERSION);
    out.push(KIND_MESSAGE);
    out.push(
        msg.qos as u8
            | u8::from(msg.retain) << 2
            | u8::from(exchange.is_some()) << 3
            | u8::from(!shared_to.is_empty()) << 4,
    );
    put_short(&mut out, &msg.topic);
    put_short(&mut out, &msg.publisher);
    out.put_u64_le(msg.expires_at.map_or(0, |t| clock.unix_ms(t).max(1)));
    // A message keeps its absolute expiry above; the interval is recomputed on delivery.
    put_properties(&mut out, p, false);
    out.put_u32_le(msg.payload.len() as u32);
    out.extend_from_slice(&msg.payload);
    if let Some(x) = exchange {
        out.put_u64_le(x.incarnation);
        out.put_u16_le(x.pkid);
    }
    if !shared_to.is_empty() {
        out.put_u16_le(shared_to.len().min(usize::from(u16::MAX)) as u16);
        for client_id in shared_to.iter().take(usize::from(u16::MAX)) {
            put_short(&mut out, client_id);
        }
    }
    out
}

struct Reader<'a> {
    body: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader past the version and kind bytes (the version checked), and the kind.
    fn start(body: &'a Bytes) -> Result<(Reader<'a>, u8), RecordError> {
        let mut r = Reader { body, at: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let kind = r.u8()?;
        Ok((r, kind))
    }

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

impl Reader<'_> {
    fn properties(&mut self) -> Result<Properties, RecordError> {
        let present = self.u8()?;
        let mut properties = Properties::default();
        if present & 1 != 0 {
            properties.payload_format_indicator = Some(self.u8()?);
        }
        if present & 2 != 0 {
            properties.content_type = Some(self.short()?);
        }
        if present & 4 != 0 {
            properties.response_topic = Some(self.short()?);
        }
        if present & 8 != 0 {
            properties.correlation_data = Some(self.short()?);
        }
        if present & 16 != 0 {
            properties.message_expiry_interval = Some(self.u32()?);
        }
        if present & 32 != 0 {
            properties.will_delay_interval = Some(self.u32()?);
        }
        let count = self.u16()?;
        for _ in 0..count {
            let k = self.short()?;
            let v = self.short()?;
            properties.user_properties.push((k, v));
        }
        Ok(properties)
    }

    fn marks(&mut self) -> Result<Vec<(usize, u64)>, RecordError> {
        let n = self.u16()?;
        (0..n).map(|_| Ok((usize::from(self.u16()?), self.u64()?))).collect()
    }

    fn done(&self) -> Result<(), RecordError> {
        if self.at == self.body.len() {
            Ok(())
        } else {
            Err(RecordError::Invalid("trailing bytes"))
        }
    }
}

/// Decodes any record body. `body` should own its bytes (a copy of the WAL record).
pub fn decode_record(body: &Bytes, clock: &WallClock, now: Instant) -> Result<Record, RecordError> {
    match body.get(1) {
        Some(&KIND_MESSAGE) => decode_message(body, clock, now).map(|(m, x, to)| Record::Message(Box::new(m), x, to)),
        Some(&KIND_RELEASE) => {
            let (mut r, _) = Reader::start(body)?;
            let client_id = r.short()?;
            let exchange = Exchange { incarnation: r.u64()?, pkid: r.u16()? };
            r.done()?;
            Ok(Record::Released(client_id, exchange))
        }
        Some(&KIND_DELIVERY) => {
            let (mut r, _) = Reader::start(body)?;
            let client_id = r.short()?;
            let (incarnation, pkid, msg_seq, order) = (r.u64()?, r.u16()?, r.u64()?, r.u64()?);
            let state = match r.u8()? {
                1 => DeliveryState::Sent,
                2 => DeliveryState::Received,
                3 => DeliveryState::Completed,
                _ => return Err(RecordError::Invalid("delivery state")),
            };
            r.done()?;
            Ok(Record::Delivery(client_id, Delivery { incarnation, pkid, msg_seq, order, state }))
        }
        Some(&KIND_SESSION) | Some(&KIND_SESSION_WITH_INCARNATION) | Some(&KIND_SESSION_END) => {
            let (mut r, kind) = Reader::start(body)?;
            let client_id = r.short()?;
            if kind == KIND_SESSION_END {
                r.done()?;
                return Ok(Record::SessionEnd(client_id));
            }
            let version = match r.u8()? {
                4 => ProtocolVersion::V311,
                5 => ProtocolVersion::V5,
                _ => return Err(RecordError::Invalid("protocol level")),
            };
            let expiry_interval = r.u32()?;
            let disconnected_ms = r.u64()?;
            let count = r.u16()?;
            let mut subscriptions = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let filter = r.short()?;
                let o = r.u8()?;
                let options = SubscriptionOptions {
                    qos: QoS::from_u8(o & 0b11).ok_or(RecordError::Invalid("subscription QoS"))?,
                    no_local: o & 0b100 != 0,
                    retain_as_published: o & 0b1000 != 0,
                    retain_handling: (o >> 4) & 0b11,
                };
                let id = r.u32()?;
                let since = r.marks()?;
                let stored = StoredSubscription { options, subscription_id: (id != 0).then_some(id), since };
                subscriptions.push((filter, stored));
            }
            let watermarks = r.marks()?;
            let incarnation = if kind == KIND_SESSION_WITH_INCARNATION { r.u64()? } else { 0 };
            let will = if r.at == body.len() {
                None
            } else {
                let flags = r.u8()?;
                let qos = QoS::from_u8(flags & 0b11).ok_or(RecordError::Invalid("will QoS"))?;
                let topic = r.short()?;
                let due_ms = r.u64()?;
                let properties = r.properties()?;
                let len = r.u32()? as usize;
                let payload = r.take(len)?;
                Some((Box::new(Will { topic, payload, qos, retain: flags & 0b100 != 0, properties }), due_ms))
            };
            r.done()?;
            Ok(Record::Session(SessionRecord {
                client_id,
                version,
                expiry_interval,
                disconnected_ms,
                subscriptions,
                watermarks,
                incarnation,
                will,
            }))
        }
        Some(&other) => Err(RecordError::Kind(other)),
        None => Err(RecordError::Truncated),
    }
}

/// Decodes a body written by [`encode_message`]. `body` should own its bytes (a copy of
/// the WAL record), since the message's fields are slices of it.
pub fn decode_message(
    body: &Bytes,
    clock: &WallClock,
    now: Instant,
) -> Result<(Message, Option<Exchange>, Vec<Bytes>), RecordError> {
    let (mut r, kind) = Reader::start(body)?;
    if kind != KIND_MESSAGE {
        return Err(RecordError::Kind(kind));
    }
    let flags = r.u8()?;
    let qos = QoS::from_u8(flags & 0b11).ok_or(RecordError::Invalid("QoS"))?;
    let retain = flags & 0b100 != 0;
    let topic = r.short()?;
    let publisher = r.short()?;
    let expiry_ms = r.u64()?;
    let properties = r.properties()?;
    let len = r.u32()? as usize;
    let payload = r.take(len)?;
    let exchange = if flags & 0b1000 != 0 { Some(Exchange { incarnation: r.u64()?, pkid: r.u16()? }) } else { None };
    let mut shared_to = Vec::new();
    if flags & 0b1_0000 != 0 {
        let count = r.u16()?;
        for _ in 0..count {
            shared_to.push(r.short()?);
        }
    }
    r.done()?;
    let expires_at = (expiry_ms != 0).then(|| clock.instant(expiry_ms, now));
    Ok((Message { topic, payload, qos, retain, properties, publisher, expires_at }, exchange, shared_to))
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
        let exchange = Exchange { incarnation: 0xfeed_beef_0001, pkid: 7 };
        let members = vec![Bytes::from_static(b"member-1"), Bytes::from_static(b"m2")];
        let cases =
            [(None, Vec::new()), (Some(exchange), Vec::new()), (None, members.clone()), (Some(exchange), members)];
        for (x, to) in cases {
            let body = Bytes::from(encode_message(&msg, &c, x, &to));
            let (back, back_x, back_to) = decode_message(&body, &c, now).expect("decodes");
            assert_eq!(back_to, to);
            assert_eq!(
                (back.topic, back.payload, back.qos, back.retain),
                (msg.topic.clone(), msg.payload.clone(), msg.qos, msg.retain)
            );
            assert_eq!(back.properties, msg.properties);
            assert_eq!(back.publisher, msg.publisher);
            assert_eq!(back.expires_at, msg.expires_at);
            assert_eq!(back_x, x);
            for cut in 0..body.len() {
                assert!(decode_message(&body.slice(..cut), &c, now).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn release_records_round_trip() {
        let now = Instant::now();
        let c = clock(now);
        let x = Exchange { incarnation: u64::MAX - 3, pkid: 65535 };
        let body = Bytes::from(encode_release(b"pub-1", x));
        match decode_record(&body, &c, now) {
            Ok(Record::Released(id, back)) => assert_eq!((id, back), (Bytes::from_static(b"pub-1"), x)),
            other => panic!("{other:?}"),
        }
        for cut in 0..body.len() {
            assert!(decode_record(&body.slice(..cut), &c, now).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn delivery_records_round_trip_and_reject_every_truncation_and_a_bad_state() {
        let now = Instant::now();
        let c = clock(now);
        for state in [DeliveryState::Sent, DeliveryState::Received, DeliveryState::Completed] {
            let d = Delivery { incarnation: 7, pkid: 65535, msg_seq: u64::MAX - 1, order: 12, state };
            let body = Bytes::from(encode_delivery(b"sub-1", d));
            match decode_record(&body, &c, now) {
                Ok(Record::Delivery(id, back)) => assert_eq!((id, back), (Bytes::from_static(b"sub-1"), d)),
                other => panic!("{other:?}"),
            }
            for cut in 0..body.len() {
                assert!(decode_record(&body.slice(..cut), &c, now).is_err(), "cut at {cut}");
            }
            let mut bad = body.to_vec();
            *bad.last_mut().expect("non-empty") = 4;
            assert!(matches!(decode_record(&Bytes::from(bad), &c, now), Err(RecordError::Invalid(_))));
        }
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
        let body = Bytes::from(encode_message(&msg, &before, None, &[]));
        // "Restarted" 4 s of wall time later, with a new monotonic anchor.
        let later = now + Duration::from_secs(100);
        let after = WallClock { anchor: later, anchor_unix_ms: before.anchor_unix_ms + 4_000 };
        msg = decode_message(&body, &after, later).expect("decodes").0;
        assert_eq!(msg.remaining_expiry(later), Some(6));
    }

    #[test]
    fn session_records_keep_the_will_and_records_from_before_wills_and_incarnations_still_load() {
        let now = Instant::now();
        let c = clock(now);
        let will = Will {
            topic: Bytes::from_static(b"dev/1/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(30),
                message_expiry_interval: Some(600),
                content_type: Some(Bytes::from_static(b"text/plain")),
                user_properties: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))],
                ..Default::default()
            },
        };
        let mut rec = SessionRecord {
            client_id: Bytes::from_static(b"dev-1"),
            version: ProtocolVersion::V5,
            expiry_interval: 3600,
            disconnected_ms: 1_700_000_000_123,
            subscriptions: Vec::new(),
            watermarks: vec![(0, 15)],
            incarnation: 42,
            will: Some((Box::new(will.clone()), 1_700_000_030_123)),
        };
        let body = encode_session(&rec);
        match decode_record(&Bytes::from(body.clone()), &c, now) {
            Ok(Record::Session(back)) => assert_eq!((back.will, back.incarnation), (rec.will.clone(), 42)),
            other => panic!("{other:?}"),
        }
        // A record written before wills were logged ends after the watermarks.
        rec.will = None;
        let old = encode_session(&rec);
        match decode_record(&Bytes::from(old.clone()), &c, now) {
            Ok(Record::Session(back)) => assert_eq!((back.will, back.incarnation), (None, 42)),
            other => panic!("{other:?}"),
        }
        // One written before incarnations (kind 2): no incarnation after the watermarks.
        let mut older = old[..old.len() - 8].to_vec();
        older[1] = KIND_SESSION;
        match decode_record(&Bytes::from(older), &c, now) {
            Ok(Record::Session(back)) => assert_eq!((back.watermarks, back.incarnation), (rec.watermarks.clone(), 0)),
            other => panic!("{other:?}"),
        }
        // Cut anywhere inside the will: an error, not a half will.
        for cut in old.len() + 1..body.len() {
            assert!(decode_record(&Bytes::copy_from_slice(&body[..cut]), &c, now).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn session_records_round_trip() {
        let now = Instant::now();
        let c = clock(now);
        let rec = SessionRecord {
            client_id: Bytes::from_static(b"dev-1"),
            version: ProtocolVersion::V5,
            expiry_interval: 3600,
            disconnected_ms: 1_700_000_000_123,
            subscriptions: vec![(
                Bytes::from_static(b"a/+"),
                StoredSubscription {
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: 2,
                    },
                    subscription_id: Some(9),
                    since: vec![(0, 10), (1, 20)],
                },
            )],
            watermarks: vec![(0, 15), (1, 25)],
            incarnation: 1,
            will: None,
        };
        match decode_record(&Bytes::from(encode_session(&rec)), &c, now) {
            Ok(Record::Session(back)) => {
                assert_eq!(back.client_id, rec.client_id);
                assert_eq!(back.expiry_interval, 3600);
                assert_eq!(back.disconnected_ms, rec.disconnected_ms);
                assert_eq!(back.watermarks, rec.watermarks);
                assert_eq!(back.subscriptions[0].0, rec.subscriptions[0].0);
                assert_eq!(back.subscriptions[0].1.options, rec.subscriptions[0].1.options);
                assert_eq!(back.subscriptions[0].1.since, rec.subscriptions[0].1.since);
                assert_eq!(back.subscriptions[0].1.subscription_id, Some(9));
            }
            other => panic!("{other:?}"),
        }
        match decode_record(&Bytes::from(encode_session_end(b"dev-1")), &c, now) {
            Ok(Record::SessionEnd(id)) => assert_eq!(id, "dev-1"),
            other => panic!("{other:?}"),
        }
        let body = encode_session(&rec);
        for cut in 0..body.len() {
            assert!(decode_record(&Bytes::copy_from_slice(&body[..cut]), &c, now).is_err());
        }
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
        let body = encode_message(&msg, &c, None, &[Bytes::from_static(b"member")]);
        for cut in 0..body.len() {
            assert!(decode_message(&Bytes::copy_from_slice(&body[..cut]), &c, now).is_err());
        }
        let mut wrong = body.clone();
        wrong[0] = 9;
        assert_eq!(decode_message(&Bytes::from(wrong), &c, now).err(), Some(RecordError::Version(9)));
    }
}
