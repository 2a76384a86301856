//! MQTT 5 properties (spec 2.2.2): one decoder and one encoder for every packet type.
//!
//! Which properties a packet may carry is a bitmask per [`PropertyKind`] (the table of spec
//! 2.2.2.2), so a property in the wrong packet, a repeated single-valued property and an
//! out-of-range value are all caught in the one loop that reads them. The encoder walks the
//! fields through [`visit`], the single place that fixes the order properties go on the wire,
//! so [`properties_len`] and [`encode_properties`] cannot disagree.

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};

use super::decode::Reader;
use super::encode::{put_binary, put_vbi, vbi_len};
use super::error::{DecodeError, EncodeError};
use super::packet::{Properties, MAX_SUBSCRIPTION_ID};
use crate::topic::validate_topic_name;

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIERS_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The property section a decoder is reading, which fixes the allowed identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropertyKind {
    Connect,
    ConnAck,
    Publish,
    /// The Will Properties inside the CONNECT payload.
    Will,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

const fn mask(mut ids: &[u8]) -> u64 {
    let mut m = 0u64;
    while let [first, rest @ ..] = ids {
        m |= 1u64 << *first;
        ids = rest;
    }
    m
}

impl PropertyKind {
    /// Spec 2.2.2.2, read by column.
    const fn allowed(self) -> u64 {
        match self {
            PropertyKind::Connect => mask(&[
                SESSION_EXPIRY_INTERVAL,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REQUEST_PROBLEM_INFORMATION,
                REQUEST_RESPONSE_INFORMATION,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
            ]),
            PropertyKind::ConnAck => mask(&[
                SESSION_EXPIRY_INTERVAL,
                ASSIGNED_CLIENT_IDENTIFIER,
                SERVER_KEEP_ALIVE,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                RESPONSE_INFORMATION,
                SERVER_REFERENCE,
                REASON_STRING,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                MAXIMUM_QOS,
                RETAIN_AVAILABLE,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
                WILDCARD_SUBSCRIPTION_AVAILABLE,
                SUBSCRIPTION_IDENTIFIERS_AVAILABLE,
                SHARED_SUBSCRIPTION_AVAILABLE,
            ]),
            PropertyKind::Publish => mask(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                SUBSCRIPTION_IDENTIFIER,
                TOPIC_ALIAS,
                USER_PROPERTY,
            ]),
            PropertyKind::Will => mask(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                WILL_DELAY_INTERVAL,
                USER_PROPERTY,
            ]),
            PropertyKind::Ack | PropertyKind::SubAck | PropertyKind::UnsubAck => mask(&[REASON_STRING, USER_PROPERTY]),
            PropertyKind::Subscribe => mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]),
            PropertyKind::Unsubscribe => mask(&[USER_PROPERTY]),
            PropertyKind::Disconnect => {
                mask(&[SESSION_EXPIRY_INTERVAL, SERVER_REFERENCE, REASON_STRING, USER_PROPERTY])
            }
            PropertyKind::Auth => mask(&[AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING, USER_PROPERTY]),
        }
    }

    fn allows(self, id: u32) -> bool {
        id < 64 && self.allowed() & (1u64 << id) != 0
    }
}

/// Reads a Property Length and the properties it covers, validating them for `kind`.
pub(crate) fn decode_properties(r: &mut Reader, kind: PropertyKind) -> Result<Properties, DecodeError> {
    let len = r.vbi("truncated property length")?;
    let mut pr = r.sub(len as usize, "property length runs past the packet")?;
    let mut p = Properties::default();
    let mut seen = 0u64;
    while !pr.is_empty() {
        let id = pr.vbi("truncated property identifier")?;
        if !kind.allows(id) {
            return Err(DecodeError::Protocol("property not allowed in this packet"));
        }
        // `allows` guarantees id < 64, so the shift and the narrowing are exact.
        let bit = 1u64 << id;
        let id = id as u8;
        let repeatable = id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && kind == PropertyKind::Publish);
        if !repeatable {
            if seen & bit != 0 {
                return Err(DecodeError::Protocol("property appears more than once"));
            }
            seen |= bit;
        }
        read_one(&mut pr, id, &mut p)?;
    }
    // Spec 3.1.2.11.10 / 3.2.2.3.18 / 3.15.2.2.3: data without a method means nothing.
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol("authentication data without authentication method"));
    }
    Ok(p)
}

const TRUNCATED: &str = "property value runs past the property length";

fn flag(pr: &mut Reader, what: &'static str) -> Result<u8, DecodeError> {
    match pr.u8(TRUNCATED)? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::Protocol(what)),
    }
}

fn nonzero_u16(pr: &mut Reader, what: &'static str) -> Result<u16, DecodeError> {
    match pr.u16(TRUNCATED)? {
        0 => Err(DecodeError::Protocol(what)),
        v => Ok(v),
    }
}

fn read_one(pr: &mut Reader, id: u8, p: &mut Properties) -> Result<(), DecodeError> {
    match id {
        PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(flag(pr, "payload format indicator not 0 or 1")?),
        MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(pr.u32(TRUNCATED)?),
        CONTENT_TYPE => p.content_type = Some(pr.string(TRUNCATED)?),
        RESPONSE_TOPIC => {
            let topic = pr.string(TRUNCATED)?;
            // [MQTT-3.3.2-14]: the reply is published to it, so it must be a topic name.
            if validate_topic_name(&topic).is_err() {
                return Err(DecodeError::Protocol("response topic is not a valid topic name"));
            }
            p.response_topic = Some(topic);
        }
        CORRELATION_DATA => p.correlation_data = Some(pr.binary(TRUNCATED)?),
        SUBSCRIPTION_IDENTIFIER => {
            let v = pr.vbi(TRUNCATED)?;
            if v == 0 || v > MAX_SUBSCRIPTION_ID {
                return Err(DecodeError::Protocol("subscription identifier out of range"));
            }
            p.subscription_identifiers.push(v);
        }
        SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(pr.u32(TRUNCATED)?),
        ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(pr.string(TRUNCATED)?),
        SERVER_KEEP_ALIVE => p.server_keep_alive = Some(pr.u16(TRUNCATED)?),
        AUTHENTICATION_METHOD => p.authentication_method = Some(pr.string(TRUNCATED)?),
        AUTHENTICATION_DATA => p.authentication_data = Some(pr.binary(TRUNCATED)?),
        REQUEST_PROBLEM_INFORMATION => {
            p.request_problem_information = Some(flag(pr, "request problem information not 0 or 1")?)
        }
        WILL_DELAY_INTERVAL => p.will_delay_interval = Some(pr.u32(TRUNCATED)?),
        REQUEST_RESPONSE_INFORMATION => {
            p.request_response_information = Some(flag(pr, "request response information not 0 or 1")?)
        }
        RESPONSE_INFORMATION => p.response_information = Some(pr.string(TRUNCATED)?),
        SERVER_REFERENCE => p.server_reference = Some(pr.string(TRUNCATED)?),
        REASON_STRING => p.reason_string = Some(pr.string(TRUNCATED)?),
        RECEIVE_MAXIMUM => p.receive_maximum = Some(nonzero_u16(pr, "receive maximum is 0")?),
        TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(pr.u16(TRUNCATED)?),
        TOPIC_ALIAS => p.topic_alias = Some(nonzero_u16(pr, "topic alias is 0")?),
        MAXIMUM_QOS => p.maximum_qos = Some(flag(pr, "maximum QoS not 0 or 1")?),
        RETAIN_AVAILABLE => p.retain_available = Some(flag(pr, "retain available not 0 or 1")?),
        USER_PROPERTY => {
            let key = pr.string(TRUNCATED)?;
            let value = pr.string(TRUNCATED)?;
            p.user_properties.push((key, value));
        }
        MAXIMUM_PACKET_SIZE => match pr.u32(TRUNCATED)? {
            0 => return Err(DecodeError::Protocol("maximum packet size is 0")),
            v => p.maximum_packet_size = Some(v),
        },
        WILDCARD_SUBSCRIPTION_AVAILABLE => {
            p.wildcard_subscription_available = Some(flag(pr, "wildcard subscription available not 0 or 1")?)
        }
        SUBSCRIPTION_IDENTIFIERS_AVAILABLE => {
            p.subscription_identifiers_available = Some(flag(pr, "subscription identifiers available not 0 or 1")?)
        }
        SHARED_SUBSCRIPTION_AVAILABLE => {
            p.shared_subscription_available = Some(flag(pr, "shared subscription available not 0 or 1")?)
        }
        // Unreachable while the masks only name the ids above; kept as an error, not a panic.
        _ => return Err(DecodeError::Protocol("unknown property identifier")),
    }
    Ok(())
}

/// One property value as it goes on the wire.
enum Value<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    Vbi(u32),
    /// UTF-8 string and binary data share the two-byte length prefix.
    Bin(&'a Bytes),
    Pair(&'a Bytes, &'a Bytes),
}

impl Value<'_> {
    fn len(&self) -> usize {
        match self {
            Value::Byte(_) => 1,
            Value::U16(_) => 2,
            Value::U32(_) => 4,
            Value::Vbi(v) => vbi_len(*v as usize),
            Value::Bin(b) => 2 + b.len(),
            Value::Pair(k, v) => 4 + k.len() + v.len(),
        }
    }
}

/// Calls `f` for every present property in ascending identifier order (user properties and
/// subscription identifiers in their stored order).
fn visit<E>(p: &Properties, mut f: impl FnMut(u8, Value<'_>) -> Result<(), E>) -> Result<(), E> {
    if let Some(v) = p.payload_format_indicator {
        f(PAYLOAD_FORMAT_INDICATOR, Value::Byte(v))?;
    }
    if let Some(v) = p.message_expiry_interval {
        f(MESSAGE_EXPIRY_INTERVAL, Value::U32(v))?;
    }
    if let Some(v) = &p.content_type {
        f(CONTENT_TYPE, Value::Bin(v))?;
    }
    if let Some(v) = &p.response_topic {
        f(RESPONSE_TOPIC, Value::Bin(v))?;
    }
    if let Some(v) = &p.correlation_data {
        f(CORRELATION_DATA, Value::Bin(v))?;
    }
    for &v in &p.subscription_identifiers {
        f(SUBSCRIPTION_IDENTIFIER, Value::Vbi(v))?;
    }
    if let Some(v) = p.session_expiry_interval {
        f(SESSION_EXPIRY_INTERVAL, Value::U32(v))?;
    }
    if let Some(v) = &p.assigned_client_identifier {
        f(ASSIGNED_CLIENT_IDENTIFIER, Value::Bin(v))?;
    }
    if let Some(v) = p.server_keep_alive {
        f(SERVER_KEEP_ALIVE, Value::U16(v))?;
    }
    if let Some(v) = &p.authentication_method {
        f(AUTHENTICATION_METHOD, Value::Bin(v))?;
    }
    if let Some(v) = &p.authentication_data {
        f(AUTHENTICATION_DATA, Value::Bin(v))?;
    }
    if let Some(v) = p.request_problem_information {
        f(REQUEST_PROBLEM_INFORMATION, Value::Byte(v))?;
    }
    if let Some(v) = p.will_delay_interval {
        f(WILL_DELAY_INTERVAL, Value::U32(v))?;
    }
    if let Some(v) = p.request_response_information {
        f(REQUEST_RESPONSE_INFORMATION, Value::Byte(v))?;
    }
    if let Some(v) = &p.response_information {
        f(RESPONSE_INFORMATION, Value::Bin(v))?;
    }
    if let Some(v) = &p.server_reference {
        f(SERVER_REFERENCE, Value::Bin(v))?;
    }
    if let Some(v) = &p.reason_string {
        f(REASON_STRING, Value::Bin(v))?;
    }
    if let Some(v) = p.receive_maximum {
        f(RECEIVE_MAXIMUM, Value::U16(v))?;
    }
    if let Some(v) = p.topic_alias_maximum {
        f(TOPIC_ALIAS_MAXIMUM, Value::U16(v))?;
    }
    if let Some(v) = p.topic_alias {
        f(TOPIC_ALIAS, Value::U16(v))?;
    }
    if let Some(v) = p.maximum_qos {
        f(MAXIMUM_QOS, Value::Byte(v))?;
    }
    if let Some(v) = p.retain_available {
        f(RETAIN_AVAILABLE, Value::Byte(v))?;
    }
    for (k, v) in &p.user_properties {
        f(USER_PROPERTY, Value::Pair(k, v))?;
    }
    if let Some(v) = p.maximum_packet_size {
        f(MAXIMUM_PACKET_SIZE, Value::U32(v))?;
    }
    if let Some(v) = p.wildcard_subscription_available {
        f(WILDCARD_SUBSCRIPTION_AVAILABLE, Value::Byte(v))?;
    }
    if let Some(v) = p.subscription_identifiers_available {
        f(SUBSCRIPTION_IDENTIFIERS_AVAILABLE, Value::Byte(v))?;
    }
    if let Some(v) = p.shared_subscription_available {
        f(SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(v))?;
    }
    Ok(())
}

/// Bytes the properties take on the wire, without the Property Length in front of them.
pub(crate) fn properties_len(p: &Properties) -> usize {
    let mut len = 0usize;
    // Every identifier in use is below 128, so each takes one byte as a VBI.
    let res: Result<(), Infallible> = visit(p, |_, v| {
        len = len.saturating_add(1 + v.len());
        Ok(())
    });
    match res {
        Ok(()) => len,
        Err(never) => match never {},
    }
}

/// Property Length plus the properties: what a packet needs for its property section.
pub(crate) fn properties_block_len(p: &Properties) -> usize {
    let len = properties_len(p);
    vbi_len(len).saturating_add(len)
}

/// Writes the Property Length and every present property. The caller has checked that the
/// packet as a whole fits the Remaining Length, so the length itself is always encodable.
pub(crate) fn encode_properties(p: &Properties, out: &mut BytesMut) -> Result<(), EncodeError> {
    put_vbi(out, properties_len(p));
    visit(p, |id, v| {
        out.put_u8(id);
        match v {
            Value::Byte(b) => out.put_u8(b),
            Value::U16(n) => out.put_u16(n),
            Value::U32(n) => out.put_u32(n),
            Value::Vbi(n) => {
                if n == 0 || n > MAX_SUBSCRIPTION_ID {
                    return Err(EncodeError::FieldTooLong("subscription identifier out of range"));
                }
                put_vbi(out, n as usize);
            }
            Value::Bin(b) => put_binary(out, b, "property value")?,
            Value::Pair(k, v) => {
                put_binary(out, k, "user property name")?;
                put_binary(out, v, "user property value")?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &[u8], kind: PropertyKind) -> Result<Properties, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(body));
        let p = decode_properties(&mut r, kind)?;
        assert!(r.is_empty(), "properties decoder left bytes behind");
        Ok(p)
    }

    /// Property Length prefix + raw property bytes.
    fn block(props: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_vbi(&mut out, props.len());
        out.extend_from_slice(props);
        out.to_vec()
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn every_property() -> Properties {
        Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            content_type: Some(b("text/plain")),
            response_topic: Some(b("reply/here")),
            correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xFF])),
            subscription_identifiers: vec![1, 300, 268_435_455],
            session_expiry_interval: Some(u32::MAX),
            assigned_client_identifier: Some(b("auto-1")),
            server_keep_alive: Some(30),
            authentication_method: Some(b("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"\x00data")),
            request_problem_information: Some(0),
            will_delay_interval: Some(10),
            request_response_information: Some(1),
            response_information: Some(b("resp/")),
            server_reference: Some(b("other:1883")),
            reason_string: Some(b("because")),
            receive_maximum: Some(65535),
            topic_alias_maximum: Some(0),
            topic_alias: Some(7),
            maximum_qos: Some(1),
            retain_available: Some(0),
            user_properties: vec![(b("k"), b("v1")), (b("k"), b("v2")), (b(""), b(""))],
            maximum_packet_size: Some(1024),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(0),
            shared_subscription_available: Some(1),
        }
    }

    /// Keeps only the fields that `kind` allows, with subscription ids trimmed for SUBSCRIBE.
    fn restricted(p: &Properties, kind: PropertyKind) -> Properties {
        let a = |id: u8| kind.allows(u32::from(id));
        let keep = |id: u8, v: &Option<Bytes>| if a(id) { v.clone() } else { None };
        let mut sub = if a(SUBSCRIPTION_IDENTIFIER) { p.subscription_identifiers.clone() } else { Vec::new() };
        if kind != PropertyKind::Publish {
            sub.truncate(1);
        }
        let mut out = Properties {
            payload_format_indicator: p.payload_format_indicator.filter(|_| a(0x01)),
            message_expiry_interval: p.message_expiry_interval.filter(|_| a(0x02)),
            content_type: keep(0x03, &p.content_type),
            response_topic: keep(0x08, &p.response_topic),
            correlation_data: keep(0x09, &p.correlation_data),
            subscription_identifiers: sub,
            session_expiry_interval: p.session_expiry_interval.filter(|_| a(0x11)),
            assigned_client_identifier: keep(0x12, &p.assigned_client_identifier),
            server_keep_alive: p.server_keep_alive.filter(|_| a(0x13)),
            authentication_method: keep(0x15, &p.authentication_method),
            authentication_data: keep(0x16, &p.authentication_data),
            request_problem_information: p.request_problem_information.filter(|_| a(0x17)),
            will_delay_interval: p.will_delay_interval.filter(|_| a(0x18)),
            request_response_information: p.request_response_information.filter(|_| a(0x19)),
            response_information: keep(0x1A, &p.response_information),
            server_reference: keep(0x1C, &p.server_reference),
            reason_string: keep(0x1F, &p.reason_string),
            receive_maximum: p.receive_maximum.filter(|_| a(0x21)),
            topic_alias_maximum: p.topic_alias_maximum.filter(|_| a(0x22)),
            topic_alias: p.topic_alias.filter(|_| a(0x23)),
            maximum_qos: p.maximum_qos.filter(|_| a(0x24)),
            retain_available: p.retain_available.filter(|_| a(0x25)),
            user_properties: p.user_properties.clone(),
            maximum_packet_size: p.maximum_packet_size.filter(|_| a(0x27)),
            wildcard_subscription_available: p.wildcard_subscription_available.filter(|_| a(0x28)),
            subscription_identifiers_available: p.subscription_identifiers_available.filter(|_| a(0x29)),
            shared_subscription_available: p.shared_subscription_available.filter(|_| a(0x2A)),
        };
        if out.authentication_method.is_none() {
            out.authentication_data = None;
        }
        out
    }

    const ALL_KINDS: [PropertyKind; 11] = [
        PropertyKind::Connect,
        PropertyKind::ConnAck,
        PropertyKind::Publish,
        PropertyKind::Will,
        PropertyKind::Ack,
        PropertyKind::Subscribe,
        PropertyKind::SubAck,
        PropertyKind::Unsubscribe,
        PropertyKind::UnsubAck,
        PropertyKind::Disconnect,
        PropertyKind::Auth,
    ];

    #[test]
    fn round_trip_for_every_packet_kind() {
        let all = every_property();
        for kind in ALL_KINDS {
            let p = restricted(&all, kind);
            let mut out = BytesMut::new();
            encode_properties(&p, &mut out).expect("encode");
            assert_eq!(out.len(), properties_block_len(&p), "{kind:?}");
            assert_eq!(decode(&out, kind).expect("decode"), p, "{kind:?}");
        }
    }

    #[test]
    fn empty_properties_are_one_zero_byte() {
        let mut out = BytesMut::new();
        encode_properties(&Properties::default(), &mut out).expect("encode");
        assert_eq!(&out[..], &[0]);
        assert_eq!(properties_len(&Properties::default()), 0);
        assert_eq!(decode(&[0], PropertyKind::Publish), Ok(Properties::default()));
    }

    #[test]
    fn encoding_order_is_by_identifier() {
        let p = Properties {
            topic_alias: Some(1),
            payload_format_indicator: Some(0),
            user_properties: vec![(b("a"), b("b"))],
            ..Properties::default()
        };
        let mut out = BytesMut::new();
        encode_properties(&p, &mut out).expect("encode");
        assert_eq!(&out[..], &[12, 0x01, 0, 0x23, 0, 1, 0x26, 0, 1, b'a', 0, 1, b'b']);
    }

    #[test]
    fn property_not_allowed_in_packet_is_protocol_error() {
        // Spec 2.2.2.2: topic alias in CONNECT, will delay in PUBLISH, reason string in
        // SUBSCRIBE, subscription identifier in UNSUBSCRIBE.
        let cases: [(&[u8], PropertyKind); 5] = [
            (&[0x23, 0, 1], PropertyKind::Connect),
            (&[0x18, 0, 0, 0, 1], PropertyKind::Publish),
            (&[0x1F, 0, 0], PropertyKind::Subscribe),
            (&[0x0B, 1], PropertyKind::Unsubscribe),
            (&[0x11, 0, 0, 0, 1], PropertyKind::Ack),
        ];
        for (props, kind) in cases {
            assert!(matches!(decode(&block(props), kind), Err(DecodeError::Protocol(_))), "{props:?} in {kind:?}");
        }
    }

    #[test]
    fn unknown_property_identifiers_are_rejected() {
        for id in [0u8, 0x04, 0x2B, 0x7F] {
            assert!(matches!(decode(&block(&[id, 0]), PropertyKind::ConnAck), Err(DecodeError::Protocol(_))));
        }
        // A two-byte identifier is still read as a VBI and then rejected.
        assert!(matches!(decode(&block(&[0x81, 0x01, 0]), PropertyKind::ConnAck), Err(DecodeError::Protocol(_))));
    }

    #[test]
    fn duplicate_single_valued_property_is_protocol_error() {
        let dup: &[(&[u8], PropertyKind)] = &[
            (&[0x01, 0, 0x01, 1], PropertyKind::Publish),
            (&[0x21, 0, 5, 0x21, 0, 5], PropertyKind::Connect),
            (&[0x1F, 0, 0, 0x1F, 0, 0], PropertyKind::Ack),
            (&[0x15, 0, 1, b'm', 0x15, 0, 1, b'm'], PropertyKind::Auth),
        ];
        for (props, kind) in dup {
            assert!(matches!(decode(&block(props), *kind), Err(DecodeError::Protocol(_))), "{props:?}");
        }
    }

    #[test]
    fn user_property_may_repeat_everywhere() {
        let props = block(&[0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 1, b'x']);
        for kind in ALL_KINDS {
            let p = decode(&props, kind).expect("user properties");
            assert_eq!(p.user_properties.len(), 2);
        }
    }

    #[test]
    fn subscription_identifier_repeats_only_in_publish() {
        let props = block(&[0x0B, 1, 0x0B, 0x80, 0x01]);
        let p = decode(&props, PropertyKind::Publish).expect("publish");
        assert_eq!(p.subscription_identifiers, vec![1, 128]);
        assert!(matches!(decode(&props, PropertyKind::Subscribe), Err(DecodeError::Protocol(_))));
        let one = decode(&block(&[0x0B, 5]), PropertyKind::Subscribe).expect("subscribe");
        assert_eq!(one.subscription_identifiers, vec![5]);
    }

    #[test]
    fn out_of_range_values_are_protocol_errors() {
        let bad: &[(&[u8], PropertyKind)] = &[
            (&[0x21, 0, 0], PropertyKind::Connect),       // receive maximum 0
            (&[0x27, 0, 0, 0, 0], PropertyKind::ConnAck), // maximum packet size 0
            (&[0x23, 0, 0], PropertyKind::Publish),       // topic alias 0
            (&[0x0B, 0], PropertyKind::Publish),          // subscription identifier 0
            (&[0x0B, 0], PropertyKind::Subscribe),
            (&[0x01, 2], PropertyKind::Will),
            (&[0x17, 2], PropertyKind::Connect),
            (&[0x19, 0xFF], PropertyKind::Connect),
            (&[0x24, 2], PropertyKind::ConnAck),
            (&[0x25, 2], PropertyKind::ConnAck),
            (&[0x28, 2], PropertyKind::ConnAck),
            (&[0x29, 2], PropertyKind::ConnAck),
            (&[0x2A, 2], PropertyKind::ConnAck),
            (&[0x08, 0, 3, b'a', b'/', b'#'], PropertyKind::Publish), // [MQTT-3.3.2-14]
            (&[0x16, 0, 1, 1], PropertyKind::Connect),                // auth data without method
        ];
        for (props, kind) in bad {
            assert!(matches!(decode(&block(props), *kind), Err(DecodeError::Protocol(_))), "{props:?} in {kind:?}");
        }
        // The edges that are allowed.
        let ok: &[(&[u8], PropertyKind)] = &[
            (&[0x22, 0, 0], PropertyKind::Connect), // topic alias maximum 0 means none
            (&[0x0B, 0xFF, 0xFF, 0xFF, 0x7F], PropertyKind::Publish),
            (&[0x24, 0], PropertyKind::ConnAck),
            (&[0x13, 0, 0], PropertyKind::ConnAck),
        ];
        for (props, kind) in ok {
            assert!(decode(&block(props), *kind).is_ok(), "{props:?} in {kind:?}");
        }
    }

    #[test]
    fn lengths_running_past_their_bounds_are_malformed() {
        let malformed = |bytes: &[u8], kind| matches!(decode(bytes, kind), Err(DecodeError::Malformed(_)));
        // Property Length larger than what follows.
        assert!(malformed(&[5, 0x01, 1], PropertyKind::Publish));
        // A value crossing the end of the property section, with packet bytes after it.
        let mut r = Reader::new(Bytes::from_static(&[2, 0x02, 0, 0, 0, 0]));
        assert!(matches!(decode_properties(&mut r, PropertyKind::Publish), Err(DecodeError::Malformed(_))));
        // String length beyond the section.
        assert!(malformed(&block(&[0x03, 0, 9, b'a']), PropertyKind::Publish));
        // Truncated Property Length VBI.
        assert!(malformed(&[0x80], PropertyKind::Publish));
        // Truncated identifier VBI inside the section.
        assert!(malformed(&block(&[0x80]), PropertyKind::Publish));
        // Subscription identifier VBI truncated / over 4 bytes.
        assert!(malformed(&block(&[0x0B, 0x80]), PropertyKind::Publish));
        assert!(malformed(&block(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]), PropertyKind::Publish));
    }

    #[test]
    fn string_properties_must_be_valid_utf8_without_nul() {
        // [MQTT-1.5.4-1] ill-formed UTF-8 (a lone surrogate, an overlong form) and
        // [MQTT-1.5.4-2] U+0000, in a plain string and in a user property.
        for bad in [&[0xED, 0xA0, 0x80][..], &[0xC0, 0x80], &[b'a', 0, b'b'], &[0xFF]] {
            let mut props = vec![0x1F, 0, bad.len() as u8];
            props.extend_from_slice(bad);
            assert!(matches!(decode(&block(&props), PropertyKind::Ack), Err(DecodeError::Malformed(_))), "{bad:?}");
            let mut up = vec![0x26, 0, 1, b'k', 0, bad.len() as u8];
            up.extend_from_slice(bad);
            assert!(matches!(decode(&block(&up), PropertyKind::Ack), Err(DecodeError::Malformed(_))));
        }
        // Binary properties carry anything.
        let p = decode(&block(&[0x09, 0, 2, 0, 0xFF]), PropertyKind::Publish).expect("binary");
        assert_eq!(p.correlation_data, Some(Bytes::from_static(&[0, 0xFF])));
    }

    #[test]
    fn decoded_strings_share_the_input_buffer() {
        let input = Bytes::from(block(&[0x03, 0, 4, b't', b'e', b'x', b't']));
        let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
        let mut r = Reader::new(input.clone());
        let p = decode_properties(&mut r, PropertyKind::Publish).expect("decode");
        let ct = p.content_type.expect("content type");
        assert!(range.contains(&(ct.as_ptr() as usize)));
    }

    #[test]
    fn encoder_refuses_what_the_wire_cannot_hold() {
        let long = Properties { reason_string: Some(Bytes::from(vec![b'a'; 65536])), ..Properties::default() };
        assert!(matches!(encode_properties(&long, &mut BytesMut::new()), Err(EncodeError::FieldTooLong(_))));
        for id in [0, MAX_SUBSCRIPTION_ID + 1] {
            let p = Properties { subscription_identifiers: vec![id], ..Properties::default() };
            assert!(matches!(encode_properties(&p, &mut BytesMut::new()), Err(EncodeError::FieldTooLong(_))));
        }
    }
}
