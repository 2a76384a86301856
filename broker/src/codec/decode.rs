//! Bytes to [`Packet`]: framing ([`check_frame`]) and parsing of one frame ([`decode_packet`]).
//!
//! Every read goes through [`Reader`], whose methods check bounds and return
//! [`DecodeError::Malformed`] instead of panicking, so hostile input can only produce errors.

use bytes::Bytes;

use super::error::DecodeError;
use super::packet::*;
use super::properties::{decode_properties, PropertyKind};
use super::reason;
use crate::topic::validate_topic_name;

/// Where a complete packet sits at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Fixed header bytes: the type/flags byte plus 1..=4 Remaining Length bytes.
    pub header_len: usize,
    /// Fixed header plus Remaining Length: the bytes to split off for [`decode_packet`].
    pub total_len: usize,
}

/// Decodes a Variable Byte Integer (spec 1.5.5) from the start of `buf`.
///
/// `Ok(None)` means `buf` ends inside the integer. A fifth byte or a non-minimal encoding
/// [MQTT-1.5.5-1] is Malformed: both would let a peer make us wait on or accept lengths the
/// spec does not allow.
fn read_vbi(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(DecodeError::Malformed("variable byte integer not minimally encoded"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::Malformed("variable byte integer longer than 4 bytes"));
    }
    Ok(None)
}

/// Looks for one complete packet at the start of `buf`.
///
/// `Ok(None)` asks for more bytes. [`DecodeError::PacketTooLarge`] is returned as soon as
/// the fixed header announces more than `max_packet_size` bytes in total, so an oversized
/// body is never buffered.
pub fn check_frame(buf: &[u8], max_packet_size: usize) -> Result<Option<Frame>, DecodeError> {
    let Some(len_bytes) = buf.get(1..) else {
        return Ok(None);
    };
    let Some((remaining, n)) = read_vbi(len_bytes)? else {
        return Ok(None);
    };
    let header_len = 1 + n;
    let total_len = header_len + remaining as usize;
    if total_len > max_packet_size {
        return Err(DecodeError::PacketTooLarge { size: total_len, max: max_packet_size });
    }
    if buf.len() < total_len {
        return Ok(None);
    }
    Ok(Some(Frame { header_len, total_len }))
}

/// A bounds-checked cursor over a `Bytes`; everything it returns is a slice of that buffer.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn rest_slice(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// The next `n` bytes, zero-copy. `what` is the error message when they are not there.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Malformed(what));
        }
        let start = self.pos;
        self.pos += n;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A reader over the next `n` bytes, which this reader skips.
    pub(crate) fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader, DecodeError> {
        self.take(n, what).map(Reader::new)
    }

    /// Everything left (a PUBLISH payload, a list of reason codes).
    pub(crate) fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.buf.len());
        self.pos = self.buf.len();
        self.buf.slice(start..)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes: [u8; N] =
            self.rest_slice().get(..N).and_then(|s| s.try_into().ok()).ok_or(DecodeError::Malformed(what))?;
        self.pos += N;
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(what).map(|[b]| b)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub(crate) fn vbi(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let (value, n) = read_vbi(self.rest_slice())?.ok_or(DecodeError::Malformed(what))?;
        self.pos += n;
        Ok(value)
    }

    /// Two-byte length + bytes (spec 1.5.6 Binary Data).
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// A UTF-8 Encoded String (spec 1.5.4): well-formed UTF-8 [MQTT-1.5.4-1] without
    /// U+0000 [MQTT-1.5.4-2]. Rust's UTF-8 check already rejects surrogates and overlong
    /// forms, which the spec also forbids.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let s = self.binary(what)?;
        if std::str::from_utf8(&s).is_err() {
            return Err(DecodeError::Malformed("string is not valid UTF-8"));
        }
        if s.contains(&0) {
            return Err(DecodeError::Malformed("string contains U+0000"));
        }
        Ok(s)
    }

    /// A non-zero Packet Identifier [MQTT-2.2.1-3] ([MQTT-2.3.1-1] in 3.1.1).
    fn pkid(&mut self) -> Result<u16, DecodeError> {
        match self.u16("truncated packet identifier")? {
            0 => Err(DecodeError::Protocol("packet identifier is 0")),
            id => Ok(id),
        }
    }
}

/// Decodes exactly one complete frame, as split off the receive buffer after
/// [`check_frame`]. `version` is the connection's protocol once CONNECT has been seen and
/// `None` before, when only CONNECT is acceptable [MQTT-3.1.0-1]; a CONNECT always decodes
/// with the version it declares.
///
/// Every packet type is decoded whatever its direction: deciding which ones a server may
/// receive is the session's job. Topics, strings and payloads are slices of `frame`.
pub fn decode_packet(frame: Bytes, version: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    let Some(&first) = frame.first() else {
        return Err(DecodeError::Malformed("empty frame"));
    };
    let (remaining, n) =
        read_vbi(frame.get(1..).unwrap_or_default())?.ok_or(DecodeError::Malformed("incomplete fixed header"))?;
    let header_len = 1 + n;
    if frame.len() != header_len + remaining as usize {
        return Err(DecodeError::Malformed("frame length differs from its remaining length"));
    }
    let kind = first >> 4;
    let flags = first & 0x0F;

    let version = match version {
        Some(v) => v,
        None if kind == 1 => ProtocolVersion::V5, // unused: CONNECT brings its own
        None => return Err(DecodeError::Protocol("first packet is not CONNECT")),
    };
    check_flags(kind, flags)?;

    let mut r = Reader::new(frame);
    r.pos = header_len;
    let packet = match kind {
        1 => Packet::Connect(connect(&mut r)?),
        2 => Packet::ConnAck(connack(&mut r, version)?),
        3 => Packet::Publish(publish(&mut r, flags, version)?),
        4 => Packet::PubAck(ack(&mut r, version)?),
        5 => Packet::PubRec(ack(&mut r, version)?),
        6 => Packet::PubRel(ack(&mut r, version)?),
        7 => Packet::PubComp(ack(&mut r, version)?),
        8 => Packet::Subscribe(subscribe(&mut r, version)?),
        9 => Packet::SubAck(suback(&mut r, version)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r, version)?),
        11 => Packet::UnsubAck(unsuback(&mut r, version)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => {
            let (reason, properties) = reason_and_properties(&mut r, version, PropertyKind::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        15 if version.is_v5() => {
            let (reason, properties) = reason_and_properties(&mut r, version, PropertyKind::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
        15 => return Err(DecodeError::Malformed("AUTH does not exist in MQTT 3.1.1")),
        _ => return Err(DecodeError::Malformed("reserved packet type 0")),
    };
    if !r.is_empty() {
        return Err(DecodeError::Malformed("bytes after the end of the packet"));
    }
    Ok(packet)
}

/// Fixed header flags (spec 2.1.3): fixed values for every type but PUBLISH
/// [MQTT-2.1.3-1]; PUBLISH's are checked by [`publish`].
fn check_flags(kind: u8, flags: u8) -> Result<(), DecodeError> {
    let expected = match kind {
        3 => return Ok(()),
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(DecodeError::Malformed("reserved fixed header flags"));
    }
    Ok(())
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary("truncated protocol name")?;
    let level = r.u8("truncated protocol level")?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        // MQIsdp is MQTT 3.1: a real client speaking a version we do not, which deserves a
        // CONNACK saying so rather than a silent close.
        (b"MQTT", _) | (b"MQIsdp", _) => {
            return Err(DecodeError::UnsupportedProtocolVersion(level));
        }
        _ => return Err(DecodeError::Malformed("unknown protocol name")),
    };
    let v5 = protocol.is_v5();

    let flags = r.u8("truncated connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("connect flags reserved bit set")); // [MQTT-3.1.2-3]
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain set without will flag"));
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::Malformed("password without user name")); // [MQTT-3.1.2-22]
    }

    let keep_alive = r.u16("truncated keep alive")?;
    let properties = if v5 { decode_properties(r, PropertyKind::Connect)? } else { Properties::default() };
    let client_id = r.string("truncated client identifier")?;
    let will = if will_flag {
        let properties = if v5 { decode_properties(r, PropertyKind::Will)? } else { Properties::default() };
        let topic = r.string("truncated will topic")?;
        // The will is published as if by PUBLISH, so its topic obeys [MQTT-3.3.2-2].
        if validate_topic_name(&topic).is_err() {
            return Err(DecodeError::TopicNameInvalid("will topic is not a valid topic name"));
        }
        let payload = r.binary("truncated will payload")?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if username_flag { Some(r.string("truncated user name")?) } else { None };
    let password = if password_flag { Some(r.binary("truncated password")?) } else { None };
    Ok(Connect { protocol, clean_start, keep_alive, client_id, will, username, password, properties })
}

/// Inverse of [`reason::connack_code_for_v311`], so that [`ConnAck::code`] is always an
/// MQTT 5 reason code whatever the wire version.
fn connack_code_from_v311(code: u8) -> Option<u8> {
    Some(match code {
        reason::v311::ACCEPTED => reason::SUCCESS,
        reason::v311::UNACCEPTABLE_PROTOCOL_VERSION => reason::UNSUPPORTED_PROTOCOL_VERSION,
        reason::v311::IDENTIFIER_REJECTED => reason::CLIENT_IDENTIFIER_NOT_VALID,
        reason::v311::SERVER_UNAVAILABLE => reason::SERVER_UNAVAILABLE,
        reason::v311::BAD_USER_NAME_OR_PASSWORD => reason::BAD_USER_NAME_OR_PASSWORD,
        reason::v311::NOT_AUTHORIZED => reason::NOT_AUTHORIZED,
        _ => return None,
    })
}

fn connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("truncated connack flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("connack flags reserved bits set")); // [MQTT-3.2.2-1]
    }
    let code = r.u8("truncated connack code")?;
    let (code, properties) = if version.is_v5() {
        (code, decode_properties(r, PropertyKind::ConnAck)?)
    } else {
        let code = connack_code_from_v311(code).ok_or(DecodeError::Malformed("reserved 3.1.1 connack return code"))?;
        (code, Properties::default())
    };
    Ok(ConnAck { session_present: flags & 0x01 != 0, code, properties })
}

fn publish(r: &mut Reader, flags: u8, version: ProtocolVersion) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?; // [MQTT-3.3.1-4]
    let dup = flags & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on QoS 0 PUBLISH")); // [MQTT-3.3.1-2]
    }
    let retain = flags & 0x01 != 0;
    let topic = r.string("truncated topic name")?;
    let pkid = if qos == QoS::AtMostOnce { 0 } else { r.pkid()? };
    let properties = if version.is_v5() { decode_properties(r, PropertyKind::Publish)? } else { Properties::default() };
    if topic.is_empty() {
        // Spec 3.3.2.3.4: an empty topic stands for the one a Topic Alias maps to.
        if !version.is_v5() {
            return Err(DecodeError::TopicNameInvalid("empty topic name"));
        }
        if properties.topic_alias.is_none() {
            return Err(DecodeError::Protocol("empty topic name without topic alias"));
        }
    } else if validate_topic_name(&topic).is_err() {
        return Err(DecodeError::TopicNameInvalid("wildcard in topic name")); // [MQTT-3.3.2-2]
    }
    let payload = r.rest();
    Ok(Publish { dup, qos, retain, topic, pkid, properties, payload })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In v5 the reason code may be left out when it is 0 and
/// the property length when there are no properties (spec 3.4.2.1).
fn ack(r: &mut Reader, version: ProtocolVersion) -> Result<Ack, DecodeError> {
    let pkid = r.pkid()?;
    if !version.is_v5() || r.is_empty() {
        return Ok(Ack::new(pkid, reason::SUCCESS));
    }
    let reason = r.u8("truncated reason code")?;
    let properties = if r.is_empty() { Properties::default() } else { decode_properties(r, PropertyKind::Ack)? };
    Ok(Ack { pkid, reason, properties })
}

/// The v5 DISCONNECT and AUTH body: both parts optional (spec 3.14.2.1, 3.15.2.1).
/// In 3.1.1 only DISCONNECT exists and it has no body.
fn reason_and_properties(
    r: &mut Reader,
    version: ProtocolVersion,
    kind: PropertyKind,
) -> Result<(u8, Properties), DecodeError> {
    if !version.is_v5() || r.is_empty() {
        return Ok((reason::SUCCESS, Properties::default()));
    }
    let reason = r.u8("truncated reason code")?;
    let properties = if r.is_empty() { Properties::default() } else { decode_properties(r, kind)? };
    Ok((reason, properties))
}

fn subscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let pkid = r.pkid()?;
    let properties =
        if version.is_v5() { decode_properties(r, PropertyKind::Subscribe)? } else { Properties::default() };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("truncated topic filter")?;
        let opts = r.u8("missing subscription options")?;
        let options = if version.is_v5() {
            if opts & 0xC0 != 0 {
                return Err(DecodeError::Malformed("subscription options reserved bits set"));
            }
            let retain_handling = (opts >> 4) & 0x03;
            if retain_handling == 3 {
                return Err(DecodeError::Malformed("retain handling 3"));
            }
            SubscriptionOptions {
                qos: QoS::from_u8(opts & 0x03).ok_or(DecodeError::Malformed("requested QoS 3"))?,
                no_local: opts & 0x04 != 0,
                retain_as_published: opts & 0x08 != 0,
                retain_handling,
            }
        } else {
            if opts & 0xFC != 0 {
                return Err(DecodeError::Malformed("requested QoS reserved bits set"));
            }
            SubscriptionOptions {
                qos: QoS::from_u8(opts).ok_or(DecodeError::Malformed("requested QoS 3"))?,
                ..SubscriptionOptions::default()
            }
        };
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters")); // [MQTT-3.8.3-3]
    }
    Ok(Subscribe { pkid, properties, filters })
}

fn suback(r: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let pkid = r.pkid()?;
    let properties = if version.is_v5() { decode_properties(r, PropertyKind::SubAck)? } else { Properties::default() };
    let reasons = r.rest().to_vec();
    if reasons.is_empty() {
        return Err(DecodeError::Malformed("SUBACK without reason codes"));
    }
    if !version.is_v5() && reasons.iter().any(|&c| !matches!(c, 0 | 1 | 2 | reason::v311::SUBACK_FAILURE)) {
        return Err(DecodeError::Malformed("reserved SUBACK return code")); // [MQTT-3.9.3-2]
    }
    Ok(SubAck { pkid, properties, reasons })
}

fn unsubscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let pkid = r.pkid()?;
    let properties =
        if version.is_v5() { decode_properties(r, PropertyKind::Unsubscribe)? } else { Properties::default() };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("truncated topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters")); // [MQTT-3.10.3-2]
    }
    Ok(Unsubscribe { pkid, properties, filters })
}

fn unsuback(r: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let pkid = r.pkid()?;
    if !version.is_v5() {
        return Ok(UnsubAck { pkid, properties: Properties::default(), reasons: Vec::new() });
    }
    let properties = decode_properties(r, PropertyKind::UnsubAck)?;
    let reasons = r.rest().to_vec();
    if reasons.is_empty() {
        return Err(DecodeError::Malformed("UNSUBACK without reason codes"));
    }
    Ok(UnsubAck { pkid, properties, reasons })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::encode::{encode_packet, encoded_len, put_vbi};
    use bytes::BytesMut;

    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;
    const BOTH: [ProtocolVersion; 2] = [V311, V5];

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn props_if(v: ProtocolVersion, p: Properties) -> Properties {
        if v.is_v5() {
            p
        } else {
            Properties::default()
        }
    }

    fn reason_string(s: &str) -> Properties {
        Properties { reason_string: Some(b(s)), ..Properties::default() }
    }

    fn user(k: &str, v: &str) -> Properties {
        Properties { user_properties: vec![(b(k), b(v))], ..Properties::default() }
    }

    /// Valid packets of every type, as they decode in `v` (so 3.1.1 ones carry no
    /// properties and only 3.1.1 codes).
    pub(crate) fn samples(v: ProtocolVersion) -> Vec<Packet> {
        let v5 = v.is_v5();
        let mut out = Vec::new();
        out.push(Packet::Connect(Connect {
            protocol: v,
            clean_start: true,
            keep_alive: 60,
            client_id: b("client-1"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }));
        out.push(Packet::Connect(Connect {
            protocol: v,
            clean_start: false,
            keep_alive: 0,
            client_id: b(""),
            will: Some(Will {
                topic: b("last/will"),
                payload: Bytes::from_static(&[0, 1, 2, 0xFF]),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: props_if(
                    v,
                    Properties {
                        will_delay_interval: Some(5),
                        payload_format_indicator: Some(0),
                        message_expiry_interval: Some(60),
                        content_type: Some(b("application/octet-stream")),
                        response_topic: Some(b("will/reply")),
                        correlation_data: Some(b("corr")),
                        user_properties: vec![(b("w"), b("1"))],
                        ..Properties::default()
                    },
                ),
            }),
            username: Some(b("üser")),
            password: Some(Bytes::from_static(&[0, 0xFE, 0xFF])),
            properties: props_if(
                v,
                Properties {
                    session_expiry_interval: Some(3600),
                    receive_maximum: Some(20),
                    maximum_packet_size: Some(65536),
                    topic_alias_maximum: Some(10),
                    request_response_information: Some(1),
                    request_problem_information: Some(0),
                    user_properties: vec![(b("a"), b("b")), (b("a"), b("c"))],
                    authentication_method: Some(b("PLAIN")),
                    authentication_data: Some(b("secret")),
                    ..Properties::default()
                },
            ),
        }));
        for qos in [QoS::AtMostOnce, QoS::ExactlyOnce] {
            out.push(Packet::Connect(Connect {
                protocol: v,
                clean_start: true,
                keep_alive: u16::MAX,
                client_id: b("w"),
                will: Some(Will {
                    topic: b("t"),
                    payload: Bytes::new(),
                    qos,
                    retain: false,
                    properties: Properties::default(),
                }),
                username: Some(b("")),
                password: None,
                properties: Properties::default(),
            }));
        }
        if v5 {
            // Password without user name is legal in 5.0 only.
            out.push(Packet::Connect(Connect {
                protocol: v,
                clean_start: true,
                keep_alive: 1,
                client_id: b("p"),
                will: None,
                username: None,
                password: Some(b("token")),
                properties: Properties::default(),
            }));
        }
        out.push(Packet::ConnAck(ConnAck {
            session_present: true,
            code: reason::SUCCESS,
            properties: Properties::default(),
        }));
        for code in [
            reason::UNSUPPORTED_PROTOCOL_VERSION,
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            reason::SERVER_UNAVAILABLE,
            reason::BAD_USER_NAME_OR_PASSWORD,
            reason::NOT_AUTHORIZED,
        ] {
            out.push(Packet::ConnAck(ConnAck { session_present: false, code, properties: Properties::default() }));
        }
        if v5 {
            out.push(Packet::ConnAck(ConnAck {
                session_present: false,
                code: reason::SUCCESS,
                properties: Properties {
                    session_expiry_interval: Some(0),
                    assigned_client_identifier: Some(b("auto-123")),
                    server_keep_alive: Some(30),
                    response_information: Some(b("resp/")),
                    server_reference: Some(b("other")),
                    reason_string: Some(b("ok")),
                    receive_maximum: Some(100),
                    topic_alias_maximum: Some(5),
                    maximum_qos: Some(1),
                    retain_available: Some(0),
                    maximum_packet_size: Some(1 << 20),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(1),
                    shared_subscription_available: Some(0),
                    user_properties: vec![(b("x"), b("y"))],
                    authentication_method: Some(b("SCRAM")),
                    authentication_data: Some(b("\x01\x02")),
                    ..Properties::default()
                },
            }));
        }
        out.push(Packet::Publish(Publish::new(b("a/b"), QoS::AtMostOnce, b("hello"))));
        out.push(Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: b("/"),
            pkid: 1,
            properties: Properties::default(),
            payload: Bytes::new(),
        }));
        out.push(Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: b("sensors/ünïcode/$x"),
            pkid: u16::MAX,
            properties: props_if(
                v,
                Properties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(10),
                    topic_alias: Some(3),
                    response_topic: Some(b("r/t")),
                    correlation_data: Some(b("c")),
                    user_properties: vec![(b("k"), b("v"))],
                    subscription_identifiers: vec![1, 127, 128, 268_435_455],
                    content_type: Some(b("text/plain")),
                    ..Properties::default()
                },
            ),
            payload: Bytes::from(vec![0xAB; 300]),
        }));
        if v5 {
            let mut p = Publish::new(Bytes::new(), QoS::AtLeastOnce, b("aliased"));
            p.pkid = 7;
            p.properties.topic_alias = Some(1);
            out.push(Packet::Publish(p));
        }
        let acks = |pkid| {
            let mut acks = vec![Ack::new(pkid, reason::SUCCESS)];
            if v5 {
                acks.push(Ack::new(pkid, reason::NO_MATCHING_SUBSCRIBERS));
                acks.push(Ack { pkid, reason: reason::PACKET_IDENTIFIER_NOT_FOUND, properties: reason_string("gone") });
                acks.push(Ack { pkid, reason: reason::SUCCESS, properties: user("u", "v") });
            }
            acks
        };
        for a in acks(1) {
            out.push(Packet::PubAck(a));
        }
        for a in acks(2) {
            out.push(Packet::PubRec(a));
        }
        for a in acks(300) {
            out.push(Packet::PubRel(a));
        }
        for a in acks(u16::MAX) {
            out.push(Packet::PubComp(a));
        }
        let opts = |qos, no_local, retain_as_published, retain_handling| {
            if v5 {
                SubscriptionOptions { qos, no_local, retain_as_published, retain_handling }
            } else {
                SubscriptionOptions { qos, ..SubscriptionOptions::default() }
            }
        };
        out.push(Packet::Subscribe(Subscribe {
            pkid: 10,
            properties: props_if(
                v,
                Properties {
                    subscription_identifiers: vec![42],
                    user_properties: vec![(b("s"), b("1"))],
                    ..Properties::default()
                },
            ),
            filters: vec![
                SubscribeFilter { filter: b("a/+/c"), options: opts(QoS::AtMostOnce, false, false, 0) },
                SubscribeFilter { filter: b("#"), options: opts(QoS::AtLeastOnce, true, false, 1) },
                SubscribeFilter { filter: b("$share/g/x/#"), options: opts(QoS::ExactlyOnce, false, true, 2) },
                // Wildcard placement is the session's business; the codec keeps the bytes.
                SubscribeFilter { filter: b("bad#filter"), options: opts(QoS::AtMostOnce, true, true, 2) },
            ],
        }));
        out.push(Packet::SubAck(SubAck {
            pkid: 10,
            properties: props_if(v, reason_string("partly")),
            reasons: if v5 {
                vec![0, 1, 2, 0x80, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2]
            } else {
                vec![0, 1, 2, 0x80]
            },
        }));
        out.push(Packet::Unsubscribe(Unsubscribe {
            pkid: 11,
            properties: props_if(v, user("why", "done")),
            filters: vec![b("a/+/c"), b("#"), b("")],
        }));
        out.push(Packet::UnsubAck(UnsubAck {
            pkid: 11,
            properties: props_if(v, reason_string("r")),
            reasons: if v5 { vec![0x00, 0x11, 0x87] } else { Vec::new() },
        }));
        out.push(Packet::PingReq);
        out.push(Packet::PingResp);
        out.push(Packet::Disconnect(Disconnect {
            reason: reason::NORMAL_DISCONNECTION,
            properties: Properties::default(),
        }));
        if v5 {
            out.push(Packet::Disconnect(Disconnect {
                reason: reason::DISCONNECT_WITH_WILL_MESSAGE,
                properties: Properties::default(),
            }));
            out.push(Packet::Disconnect(Disconnect {
                reason: reason::SERVER_MOVED,
                properties: Properties {
                    session_expiry_interval: Some(0),
                    reason_string: Some(b("moving")),
                    server_reference: Some(b("elsewhere")),
                    user_properties: vec![(b("a"), b("b"))],
                    ..Properties::default()
                },
            }));
            out.push(Packet::Auth(Auth { reason: reason::SUCCESS, properties: Properties::default() }));
            out.push(Packet::Auth(Auth {
                reason: reason::CONTINUE_AUTHENTICATION,
                properties: Properties {
                    authentication_method: Some(b("SCRAM-SHA-256")),
                    authentication_data: Some(Bytes::from_static(&[1, 2, 3])),
                    reason_string: Some(b("more")),
                    ..Properties::default()
                },
            }));
            out.push(Packet::Auth(Auth { reason: reason::RE_AUTHENTICATE, properties: Properties::default() }));
        }
        out
    }

    pub(crate) fn encode(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_packet(p, v, &mut out, usize::MAX).expect("encodable sample");
        out.to_vec()
    }

    /// `first` byte + Remaining Length + `body`.
    fn frame(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.extend_from_slice(&[first]);
        put_vbi(&mut out, body.len());
        out.extend_from_slice(body);
        out.to_vec()
    }

    /// Frames and decodes one complete packet.
    fn dec(bytes: &[u8], v: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
        let f = check_frame(bytes, usize::MAX)?.expect("complete frame");
        assert_eq!(f.total_len, bytes.len(), "test input is exactly one frame");
        decode_packet(Bytes::copy_from_slice(bytes), v)
    }

    fn malformed(r: Result<Packet, DecodeError>) -> bool {
        matches!(r, Err(DecodeError::Malformed(_)))
    }

    fn protocol(r: Result<Packet, DecodeError>) -> bool {
        matches!(r, Err(DecodeError::Protocol(_)))
    }

    /// A string field: two-byte length + bytes.
    fn s(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    /// CONNECT body with the given level, flags and payload (no properties in 3.1.1, an
    /// empty property section in 5.0).
    fn connect_body(level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = s(b"MQTT");
        body.extend_from_slice(&[level, flags, 0, 60]);
        if level == 5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        body
    }

    #[test]
    fn round_trip_every_packet_type_in_both_versions() {
        let mut types = std::collections::BTreeSet::new();
        for v in BOTH {
            for p in samples(v) {
                let bytes = encode(&p, v);
                assert_eq!(bytes.len(), encoded_len(&p, v), "{p:?}");
                let f = check_frame(&bytes, bytes.len()).expect("frame").expect("complete");
                assert_eq!(f.total_len, bytes.len());
                let got = decode_packet(Bytes::from(bytes), Some(v));
                assert_eq!(got.as_ref(), Ok(&p), "{v:?}");
                types.insert(p.packet_type());
            }
        }
        assert_eq!(types.len(), 15, "every packet type is covered");
    }

    #[test]
    fn connect_brings_its_own_version() {
        for v in BOTH {
            for p in samples(v).into_iter().filter(|p| matches!(p, Packet::Connect(_))) {
                let bytes = encode(&p, v);
                for known in [None, Some(V311), Some(V5)] {
                    assert_eq!(dec(&bytes, known), Ok(p.clone()));
                }
            }
        }
    }

    #[test]
    fn first_packet_must_be_connect_mqtt_3_1_0_1() {
        for v in BOTH {
            for p in samples(v).into_iter().filter(|p| !matches!(p, Packet::Connect(_))) {
                assert!(protocol(dec(&encode(&p, v), None)), "{p:?}");
            }
        }
    }

    #[test]
    fn protocol_name_and_level() {
        let cases: [(&[u8], u8, Result<(), DecodeError>); 6] = [
            (b"MQIsdp", 3, Err(DecodeError::UnsupportedProtocolVersion(3))),
            (b"MQTT", 3, Err(DecodeError::UnsupportedProtocolVersion(3))),
            (b"MQTT", 6, Err(DecodeError::UnsupportedProtocolVersion(6))),
            (b"MQTT", 0, Err(DecodeError::UnsupportedProtocolVersion(0))),
            (b"MQTX", 4, Err(DecodeError::Malformed("unknown protocol name"))),
            (b"mqtt", 5, Err(DecodeError::Malformed("unknown protocol name"))),
        ];
        for (name, level, want) in cases {
            let mut body = s(name);
            body.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'c']);
            assert_eq!(dec(&frame(0x10, &body), None).map(|_| ()), want);
        }
        // Truncated protocol name.
        assert!(malformed(dec(&frame(0x10, &[0, 4, b'M', b'Q']), None)));
    }

    #[test]
    fn reserved_fixed_header_flags_are_malformed_mqtt_2_1_3_1() {
        for v in BOTH {
            for p in samples(v) {
                if matches!(p, Packet::Publish(_)) {
                    continue;
                }
                let bytes = encode(&p, v);
                let good = bytes[0] & 0x0F;
                for flags in 0..16u8 {
                    let mut bad = bytes.clone();
                    bad[0] = (bad[0] & 0xF0) | flags;
                    let got = dec(&bad, Some(v));
                    if flags == good {
                        assert!(got.is_ok());
                    } else {
                        assert!(malformed(got), "{p:?} flags {flags:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn publish_qos_3_is_malformed_mqtt_3_3_1_4() {
        for v in BOTH {
            let mut body = s(b"a");
            body.extend_from_slice(&[0, 1]);
            if v.is_v5() {
                body.push(0);
            }
            assert!(dec(&frame(0x32, &body), Some(v)).is_ok());
            assert!(malformed(dec(&frame(0x36, &body), Some(v))));
            assert!(malformed(dec(&frame(0x3F, &body), Some(v))));
        }
    }

    #[test]
    fn dup_on_qos_0_is_malformed_mqtt_3_3_1_2() {
        for v in BOTH {
            let mut body = s(b"a");
            if v.is_v5() {
                body.push(0);
            }
            assert!(dec(&frame(0x30, &body), Some(v)).is_ok());
            assert!(malformed(dec(&frame(0x38, &body), Some(v))));
        }
    }

    #[test]
    fn zero_packet_identifier_is_rejected_mqtt_2_2_1_3() {
        for v in BOTH {
            let props: &[u8] = if v.is_v5() { &[0] } else { &[] };
            let mut publish = s(b"a");
            publish.extend_from_slice(&[0, 0]);
            publish.extend_from_slice(props);
            let mut subscribe = vec![0, 0];
            subscribe.extend_from_slice(props);
            subscribe.extend_from_slice(&s(b"a"));
            subscribe.push(0);
            let mut unsubscribe = vec![0, 0];
            unsubscribe.extend_from_slice(props);
            unsubscribe.extend_from_slice(&s(b"a"));
            let mut suback = vec![0, 0];
            suback.extend_from_slice(props);
            suback.push(0);
            let mut unsuback = vec![0, 0];
            if v.is_v5() {
                unsuback.extend_from_slice(&[0, 0]);
            }
            let cases = [
                frame(0x32, &publish),
                frame(0x34, &publish),
                frame(0x82, &subscribe),
                frame(0xA2, &unsubscribe),
                frame(0x90, &suback),
                frame(0xB0, &unsuback),
                frame(0x40, &[0, 0]),
                frame(0x50, &[0, 0]),
                frame(0x62, &[0, 0]),
                frame(0x70, &[0, 0]),
            ];
            for bytes in cases {
                assert!(protocol(dec(&bytes, Some(v))), "{v:?} {bytes:?}");
                // The same packet with id 1 is fine.
                let mut ok = bytes.clone();
                let at = if bytes[0] >> 4 == 3 { 5 } else { 3 };
                ok[at] = 1;
                assert!(dec(&ok, Some(v)).is_ok(), "{v:?} {ok:?}");
            }
        }
    }

    #[test]
    fn connect_reserved_flag_must_be_zero_mqtt_3_1_2_3() {
        for level in [4, 5] {
            let payload = s(b"c");
            assert!(dec(&frame(0x10, &connect_body(level, 0x02, &payload)), None).is_ok());
            assert!(malformed(dec(&frame(0x10, &connect_body(level, 0x03, &payload)), None)));
        }
    }

    #[test]
    fn will_qos_and_retain_need_the_will_flag_mqtt_3_1_2_11_and_13() {
        // v5 numbering [MQTT-3.1.2-11] (QoS) and [MQTT-3.1.2-13] (retain); 3.1.1 numbers
        // them [MQTT-3.1.2-13] and [MQTT-3.1.2-15].
        for level in [4, 5] {
            let payload = s(b"c");
            for flags in [0x08, 0x10, 0x18, 0x20, 0x28] {
                let got = dec(&frame(0x10, &connect_body(level, flags, &payload)), None);
                assert!(malformed(got), "level {level} flags {flags:#x}");
            }
        }
    }

    #[test]
    fn will_qos_3_is_malformed_mqtt_3_1_2_12() {
        // [MQTT-3.1.2-12] in 5.0, [MQTT-3.1.2-14] in 3.1.1.
        for level in [4u8, 5] {
            let mut payload = s(b"c");
            if level == 5 {
                payload.push(0); // will properties
            }
            payload.extend_from_slice(&s(b"t"));
            payload.extend_from_slice(&s(b"m"));
            for (qos, ok) in [(0u8, true), (1, true), (2, true), (3, false)] {
                let flags = 0x04 | qos << 3;
                let got = dec(&frame(0x10, &connect_body(level, flags, &payload)), None);
                assert_eq!(got.is_ok(), ok, "level {level} qos {qos}");
                if !ok {
                    assert!(malformed(got));
                }
            }
        }
    }

    #[test]
    fn password_without_user_name_mqtt_3_1_2_22() {
        let mut payload = s(b"c");
        payload.extend_from_slice(&s(b"pw"));
        assert!(malformed(dec(&frame(0x10, &connect_body(4, 0x42, &payload)), None)));
        let Ok(Packet::Connect(c)) = dec(&frame(0x10, &connect_body(5, 0x42, &payload)), None) else {
            panic!("5.0 allows a password alone");
        };
        assert_eq!((c.username, c.password), (None, Some(b("pw"))));
    }

    #[test]
    fn will_topic_must_be_a_topic_name() {
        for level in [4u8, 5] {
            let mut payload = s(b"c");
            if level == 5 {
                payload.push(0);
            }
            payload.extend_from_slice(&s(b"a/+"));
            payload.extend_from_slice(&s(b"m"));
            let got = dec(&frame(0x10, &connect_body(level, 0x06, &payload)), None);
            assert!(matches!(got, Err(DecodeError::TopicNameInvalid(_))));
        }
    }

    const BAD_UTF8: [&[u8]; 5] = [
        &[0xFF],
        &[0xC0, 0x80],             // overlong U+0000
        &[0xED, 0xA0, 0x80],       // UTF-16 surrogate
        &[b'a', 0xE2, 0x82],       // truncated sequence
        &[0xF4, 0x90, 0x80, 0x80], // above U+10FFFF
    ];

    #[test]
    fn strings_must_be_well_formed_utf8_mqtt_1_5_4_1_and_without_nul_mqtt_1_5_4_2() {
        let nul: &[u8] = &[b'a', 0, b'b'];
        for v in BOTH {
            let level = v.level();
            let props: &[u8] = if v.is_v5() { &[0] } else { &[] };
            for bad in BAD_UTF8.iter().chain(std::iter::once(&nul)) {
                // Client identifier.
                let got = dec(&frame(0x10, &connect_body(level, 0x02, &s(bad))), None);
                assert!(malformed(got), "client id {bad:?}");
                // User name.
                let mut payload = s(b"c");
                payload.extend_from_slice(&s(bad));
                let got = dec(&frame(0x10, &connect_body(level, 0x82, &payload)), None);
                assert!(malformed(got), "user name {bad:?}");
                // PUBLISH topic.
                let mut publish = s(bad);
                publish.extend_from_slice(props);
                assert!(malformed(dec(&frame(0x30, &publish), Some(v))), "topic {bad:?}");
                // SUBSCRIBE and UNSUBSCRIBE filters.
                let mut sub = vec![0, 1];
                sub.extend_from_slice(props);
                sub.extend_from_slice(&s(bad));
                let unsub = sub.clone();
                sub.push(0);
                assert!(malformed(dec(&frame(0x82, &sub), Some(v))), "filter {bad:?}");
                assert!(malformed(dec(&frame(0xA2, &unsub), Some(v))), "filter {bad:?}");
            }
        }
        // The password and payloads are binary and may hold anything.
        let mut payload = s(b"c");
        payload.extend_from_slice(&s(b"u"));
        payload.extend_from_slice(&s(&[0, 0xFF]));
        assert!(dec(&frame(0x10, &connect_body(4, 0xC2, &payload)), None).is_ok());
        let mut publish = s(b"t");
        publish.extend_from_slice(&[0xFF, 0, 0xC0]);
        assert!(dec(&frame(0x30, &publish), Some(V311)).is_ok());
    }

    #[test]
    fn publish_topic_with_wildcards_is_invalid_mqtt_3_3_2_2() {
        for v in BOTH {
            for topic in [&b"a/+"[..], b"#", b"a/#", b"+", b"a+b"] {
                let mut body = s(topic);
                if v.is_v5() {
                    body.push(0);
                }
                let got = dec(&frame(0x30, &body), Some(v));
                assert!(matches!(got, Err(DecodeError::TopicNameInvalid(_))), "{topic:?}");
            }
        }
    }

    #[test]
    fn empty_publish_topic_needs_a_topic_alias() {
        // 3.1.1: topic names are at least one character [MQTT-4.7.3-1].
        let got = dec(&frame(0x30, &s(b"")), Some(V311));
        assert!(matches!(got, Err(DecodeError::TopicNameInvalid(_))));
        // 5.0, spec 3.3.2.3.4: a zero-length topic without Topic Alias is a Protocol Error.
        let mut body = s(b"");
        body.push(0);
        assert!(protocol(dec(&frame(0x30, &body), Some(V5))));
        let mut body = s(b"");
        body.extend_from_slice(&[3, 0x23, 0, 9]);
        let Ok(Packet::Publish(p)) = dec(&frame(0x30, &body), Some(V5)) else {
            panic!("empty topic with alias is valid");
        };
        assert_eq!((p.topic.len(), p.properties.topic_alias), (0, Some(9)));
    }

    #[test]
    fn subscribe_without_filters_is_a_protocol_error_mqtt_3_8_3_3() {
        assert!(protocol(dec(&frame(0x82, &[0, 1]), Some(V311))));
        assert!(protocol(dec(&frame(0x82, &[0, 1, 0]), Some(V5))));
    }

    #[test]
    fn unsubscribe_without_filters_is_a_protocol_error_mqtt_3_10_3_2() {
        assert!(protocol(dec(&frame(0xA2, &[0, 1]), Some(V311))));
        assert!(protocol(dec(&frame(0xA2, &[0, 1, 0]), Some(V5))));
    }

    fn subscribe_with_options(v: ProtocolVersion, opts: u8) -> Result<Packet, DecodeError> {
        let mut body = vec![0, 1];
        if v.is_v5() {
            body.push(0);
        }
        body.extend_from_slice(&s(b"a/b"));
        body.push(opts);
        dec(&frame(0x82, &body), Some(v))
    }

    #[test]
    fn subscription_options_reserved_bits_mqtt_3_8_3_5() {
        assert!(subscribe_with_options(V5, 0b0010_1110).is_ok());
        for opts in [0x40, 0x80, 0xC0, 0x41] {
            assert!(malformed(subscribe_with_options(V5, opts)), "{opts:#x}");
        }
        // Retain handling 3 (the spec calls it a Protocol Error; we close as malformed).
        assert!(malformed(subscribe_with_options(V5, 0x30)));
        let Ok(Packet::Subscribe(sub)) = subscribe_with_options(V5, 0b0010_1110) else {
            panic!("valid options");
        };
        assert_eq!(
            sub.filters[0].options,
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2
            }
        );
    }

    #[test]
    fn requested_qos_upper_bits_must_be_zero_in_3_1_1_mqtt_3_8_3_4() {
        // The 3.1.1 spec spells this one [MQTT-3-8.3-4].
        for q in 0..3 {
            assert!(subscribe_with_options(V311, q).is_ok());
        }
        for opts in [0x04, 0x08, 0x10, 0x20, 0x40, 0x80] {
            assert!(malformed(subscribe_with_options(V311, opts)), "{opts:#x}");
        }
    }

    #[test]
    fn requested_qos_3_is_malformed() {
        for v in BOTH {
            assert!(malformed(subscribe_with_options(v, 3)));
        }
    }

    #[test]
    fn missing_subscription_options_byte_is_malformed() {
        let mut body = vec![0, 1];
        body.extend_from_slice(&s(b"a"));
        assert!(malformed(dec(&frame(0x82, &body), Some(V311))));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let cases: [(Vec<u8>, ProtocolVersion); 9] = [
            (frame(0xC0, &[0]), V5),
            (frame(0xD0, &[0]), V311),
            (frame(0xE0, &[0]), V311),
            (frame(0x40, &[0, 1, 0]), V311),
            (frame(0x62, &[0, 1, 0, 0, 0]), V5), // property length 0 then one more byte
            (frame(0xB0, &[0, 1, 0]), V311),
            (frame(0x20, &[0, 0, 0]), V311),
            (frame(0x20, &[0, 0, 0, 1]), V5),
            (frame(0xE0, &[0, 0, 0]), V5),
        ];
        for (bytes, v) in cases {
            assert!(malformed(dec(&bytes, Some(v))), "{bytes:?}");
        }
        let mut connect = connect_body(4, 0x02, &s(b"c"));
        connect.push(0);
        assert!(malformed(dec(&frame(0x10, &connect), None)));
    }

    #[test]
    fn truncated_bodies_are_malformed() {
        let cases: [(Vec<u8>, ProtocolVersion); 6] = [
            (frame(0x40, &[0]), V311),
            (frame(0x20, &[0]), V5),
            (frame(0x20, &[0, 0]), V5), // v5 CONNACK needs a property length
            (frame(0x30, &[0, 5, b'a']), V311),
            (frame(0x30, &s(b"a")), V5),  // missing property length
            (frame(0x90, &[0, 1]), V311), // SUBACK without codes
        ];
        for (bytes, v) in cases {
            assert!(malformed(dec(&bytes, Some(v))), "{bytes:?}");
        }
    }

    #[test]
    fn v5_acks_have_optional_reason_and_properties() {
        for first in [0x40u8, 0x50, 0x62, 0x70] {
            let ack = |bytes: &[u8]| match dec(&frame(first, bytes), Some(V5)) {
                Ok(Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)) => a,
                other => panic!("{other:?}"),
            };
            assert_eq!(ack(&[0, 9]), Ack::new(9, 0));
            assert_eq!(ack(&[0, 9, 0x10]), Ack::new(9, 0x10));
            assert_eq!(ack(&[0, 9, 0x10, 0]), Ack::new(9, 0x10));
            assert_eq!(
                ack(&[0, 9, 0x80, 4, 0x1F, 0, 1, b'x']),
                Ack { pkid: 9, reason: 0x80, properties: reason_string("x") }
            );
        }
        // 3.1.1 acks are exactly two bytes.
        assert!(malformed(dec(&frame(0x40, &[0, 9, 0x10]), Some(V311))));
    }

    #[test]
    fn v5_disconnect_and_auth_may_be_empty() {
        assert_eq!(
            dec(&frame(0xE0, &[]), Some(V5)),
            Ok(Packet::Disconnect(Disconnect { reason: 0, properties: Properties::default() }))
        );
        assert_eq!(
            dec(&frame(0xE0, &[0x04]), Some(V5)),
            Ok(Packet::Disconnect(Disconnect { reason: 4, properties: Properties::default() }))
        );
        assert_eq!(
            dec(&frame(0xF0, &[]), Some(V5)),
            Ok(Packet::Auth(Auth { reason: 0, properties: Properties::default() }))
        );
        // A property not allowed in DISCONNECT.
        assert!(protocol(dec(&frame(0xE0, &[0x00, 2, 0x23, 0]), Some(V5))));
        // AUTH is type 15 in 5.0 and reserved in 3.1.1; type 0 is reserved in both.
        assert!(malformed(dec(&frame(0xF0, &[]), Some(V311))));
        for v in BOTH {
            assert!(malformed(dec(&frame(0x00, &[]), Some(v))));
        }
    }

    #[test]
    fn connack_reserved_flags_and_codes() {
        // [MQTT-3.2.2-1]: bits 7-1 of the acknowledge flags are reserved.
        assert!(malformed(dec(&frame(0x20, &[0x02, 0]), Some(V311))));
        assert!(malformed(dec(&frame(0x20, &[0x80, 0, 0]), Some(V5))));
        // 3.1.1 return codes 6..=255 are reserved.
        assert!(malformed(dec(&frame(0x20, &[0, 6]), Some(V311))));
        // 3.1.1 return codes read back as the matching 5.0 reason codes.
        assert_eq!(
            dec(&frame(0x20, &[1, 5]), Some(V311)),
            Ok(Packet::ConnAck(ConnAck {
                session_present: true,
                code: reason::NOT_AUTHORIZED,
                properties: Properties::default()
            }))
        );
    }

    #[test]
    fn v311_suback_return_codes_are_restricted_mqtt_3_9_3_2() {
        assert!(dec(&frame(0x90, &[0, 1, 0, 1, 2, 0x80]), Some(V311)).is_ok());
        for code in [3, 0x7F, 0x81, 0x87] {
            assert!(malformed(dec(&frame(0x90, &[0, 1, code]), Some(V311))));
        }
        assert!(dec(&frame(0x90, &[0, 1, 0, 0x87]), Some(V5)).is_ok());
    }

    #[test]
    fn partial_frames_ask_for_more() {
        assert_eq!(check_frame(&[], 100), Ok(None));
        assert_eq!(check_frame(&[0x30], 100), Ok(None));
        assert_eq!(check_frame(&[0x30, 0x80], 1000), Ok(None));
        assert_eq!(check_frame(&[0x30, 0x80, 0x80, 0x80], usize::MAX), Ok(None));
        for v in BOTH {
            for p in samples(v) {
                let bytes = encode(&p, v);
                for cut in 0..bytes.len() {
                    assert_eq!(check_frame(&bytes[..cut], usize::MAX), Ok(None), "{p:?} {cut}");
                }
                // Extra bytes after the frame (the next packet) are left alone.
                let mut two = bytes.clone();
                two.extend_from_slice(&bytes);
                let f = check_frame(&two, usize::MAX).expect("ok").expect("complete");
                assert_eq!(f.total_len, bytes.len());
            }
        }
    }

    #[test]
    fn packet_too_large_is_known_from_the_header_alone() {
        // 268,435,455 remaining bytes announced; none of them present.
        assert_eq!(
            check_frame(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 1 << 20),
            Err(DecodeError::PacketTooLarge { size: 268_435_460, max: 1 << 20 })
        );
        // 200 remaining + 3 header bytes against a limit of 202.
        assert_eq!(check_frame(&[0x30, 0xC8, 0x01], 202), Err(DecodeError::PacketTooLarge { size: 203, max: 202 }));
        assert_eq!(check_frame(&[0x30, 0xC8, 0x01], 203), Ok(None));
        // Exactly at the limit is fine.
        let ping = [0xC0, 0x00];
        assert_eq!(check_frame(&ping, 2), Ok(Some(Frame { header_len: 2, total_len: 2 })));
        assert!(matches!(check_frame(&ping, 1), Err(DecodeError::PacketTooLarge { .. })));
        let reason = DecodeError::PacketTooLarge { size: 3, max: 2 }.reason_code();
        assert_eq!(reason, reason::PACKET_TOO_LARGE);
    }

    #[test]
    fn remaining_length_encoding_is_checked_mqtt_1_5_5_1() {
        // A fifth length byte.
        assert!(matches!(
            check_frame(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], usize::MAX),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(check_frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], usize::MAX), Err(DecodeError::Malformed(_))));
        // Non-minimal encodings of 0 and of 1.
        for bad in [&[0xC0u8, 0x80, 0x00][..], &[0xC0, 0x81, 0x80, 0x00]] {
            assert!(matches!(check_frame(bad, usize::MAX), Err(DecodeError::Malformed(_))));
        }
        // Boundaries of each length.
        let cases: [(&[u8], usize); 8] = [
            (&[0x00], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], MAX_REMAINING_LENGTH),
        ];
        for (len, value) in cases {
            assert_eq!(read_vbi(len), Ok(Some((value as u32, len.len()))));
        }
    }

    #[test]
    fn decode_rejects_a_frame_that_is_not_exactly_one_packet() {
        let ping = Bytes::from_static(&[0xC0, 0x00, 0x00]);
        assert!(malformed(decode_packet(ping, Some(V5))));
        assert!(malformed(decode_packet(Bytes::from_static(&[0x40, 0x02, 0x00]), Some(V5))));
        assert!(malformed(decode_packet(Bytes::new(), Some(V5))));
        assert!(malformed(decode_packet(Bytes::from_static(&[0x40]), Some(V5))));
    }

    #[test]
    fn topics_and_payloads_are_zero_copy_slices() {
        let mut p = Publish::new(b("zero/copy"), QoS::AtLeastOnce, b("payload bytes"));
        p.pkid = 5;
        p.properties.correlation_data = Some(b("corr"));
        let bytes = Bytes::from(encode(&Packet::Publish(p), V5));
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        let Ok(Packet::Publish(got)) = decode_packet(bytes.clone(), Some(V5)) else {
            panic!("decodes");
        };
        for part in [&got.topic, &got.payload, got.properties.correlation_data.as_ref().expect("corr")] {
            assert!(range.contains(&(part.as_ptr() as usize)), "{part:?} was copied");
        }
    }

    /// xorshift64*: enough randomness to reach odd corners, reproducible from the seed.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(data.len());
            match rng.below(7) {
                0 if !data.is_empty() => data[at] ^= 1 << rng.below(8),
                1 if !data.is_empty() => data[at] = rng.byte(),
                2 => data.insert(at.min(data.len()), rng.byte()),
                3 if !data.is_empty() => {
                    data.remove(at);
                }
                4 => data.truncate(at),
                5 if !data.is_empty() => {
                    // Interesting values where lengths and flags live.
                    data[at] = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0B, 0x26][rng.below(7)];
                }
                _ => {
                    let end = (at + rng.below(8)).min(data.len());
                    let chunk = data[at..end].to_vec();
                    data.splice(at..at, chunk);
                }
            }
        }
    }

    /// Runs one input through the whole pipeline; whatever decodes must encode to
    /// `encoded_len` bytes and decode again to the same packet.
    pub(crate) fn exercise(input: &[u8]) {
        for version in [None, Some(V311), Some(V5)] {
            let Ok(Some(f)) = check_frame(input, 1 << 16) else {
                continue;
            };
            assert!(f.header_len >= 2 && f.header_len <= 5 && f.total_len <= input.len());
            let frame = Bytes::copy_from_slice(&input[..f.total_len]);
            let Ok(packet) = decode_packet(frame, version) else {
                continue;
            };
            let v = version.unwrap_or(V5);
            let mut out = BytesMut::new();
            encode_packet(&packet, v, &mut out, usize::MAX).expect("decoded packets re-encode");
            assert_eq!(out.len(), encoded_len(&packet, v));
            let again = decode_packet(out.freeze(), version).expect("re-encoded packet decodes");
            assert_eq!(again, packet);
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = Rng::new(0x5EED_1234_ABCD_0001);
        let corpus: Vec<Vec<u8>> =
            BOTH.iter().flat_map(|&v| samples(v).into_iter().map(move |p| encode(&p, v))).collect();
        // Pure noise, with a plausible first byte half the time.
        for _ in 0..100_000 {
            let len = rng.below(48);
            let mut data: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            if rng.below(2) == 0 && !data.is_empty() {
                data[0] = (rng.byte() & 0xF0) | [0, 2][rng.below(2)];
                if data.len() > 1 {
                    data[1] = (data.len() - 2).min(127) as u8;
                }
            }
            exercise(&data);
        }
        for i in 0..200_000 {
            let base = &corpus[rng.below(corpus.len())];
            if i % 2 == 0 {
                // Mutate anywhere: headers, lengths, everything.
                let mut data = base.clone();
                mutate(&mut rng, &mut data);
                exercise(&data);
            } else {
                // Mutate the body and re-frame it, so the decoder proper sees the damage.
                let header = check_frame(base, usize::MAX).expect("ok").expect("frame").header_len;
                let mut body = base[header..].to_vec();
                mutate(&mut rng, &mut body);
                exercise(&frame(base[0], &body));
            }
        }
    }
}
