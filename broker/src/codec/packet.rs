//! The packet types. Field names follow the MQTT 5.0 specification; the 3.1.1 subset is the
//! same types with empty [`Properties`] and 3.1.1 return codes.

use bytes::Bytes;

/// Largest value the variable-length "Remaining Length" can carry (spec 1.5.5).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// Largest Subscription Identifier value (spec 3.3.2.3.8).
pub const MAX_SUBSCRIPTION_ID: u32 = 268_435_455;

/// The protocol level from CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A UTF-8 string pair (User Property).
pub type UserProperty = (Bytes, Bytes);

/// All MQTT 5 properties. Each packet type allows a subset (spec 2.2.2.2); the decoder
/// rejects a property that is not allowed in the packet it appears in, a duplicate of a
/// property that may appear once, and out-of-range values. Absent means `None`/empty.
/// UTF-8 string properties are stored as validated `Bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01, PUBLISH and Will: 0 = unspecified bytes, 1 = UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02, PUBLISH and Will, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH and Will.
    pub content_type: Option<Bytes>,
    /// 0x08, PUBLISH and Will; must be a valid topic name.
    pub response_topic: Option<Bytes>,
    /// 0x09, PUBLISH and Will, binary.
    pub correlation_data: Option<Bytes>,
    /// 0x0B, PUBLISH (server to client, may repeat) and SUBSCRIBE (once). 1..=268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT, CONNACK, DISCONNECT, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<Bytes>,
    /// 0x13, CONNACK, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT, CONNACK, AUTH.
    pub authentication_method: Option<Bytes>,
    /// 0x16, CONNECT, CONNACK, AUTH, binary.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT, 0 or 1.
    pub request_problem_information: Option<u8>,
    /// 0x18, Will properties, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT, 0 or 1.
    pub request_response_information: Option<u8>,
    /// 0x1A, CONNACK.
    pub response_information: Option<Bytes>,
    /// 0x1C, CONNACK, DISCONNECT.
    pub server_reference: Option<Bytes>,
    /// 0x1F, CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH.
    pub reason_string: Option<Bytes>,
    /// 0x21, CONNECT, CONNACK; never 0.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT, CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH; never 0.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK, 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25, CONNACK, 0 or 1.
    pub retain_available: Option<u8>,
    /// 0x26, every packet with properties, may repeat, order preserved.
    pub user_properties: Vec<UserProperty>,
    /// 0x27, CONNECT, CONNACK; never 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK, 0 or 1.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29, CONNACK, 0 or 1.
    pub subscription_identifiers_available: Option<u8>,
    /// 0x2A, CONNACK, 0 or 1.
    pub shared_subscription_available: Option<u8>,
}

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (v5): will delay, payload format, expiry, content type, response
    /// topic, correlation data, user properties.
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// "Clean Session" in 3.1.1, "Clean Start" in 5.0.
    pub clean_start: bool,
    pub keep_alive: u16,
    /// May be empty (the server then assigns one or refuses, by version).
    pub client_id: Bytes,
    pub will: Option<Will>,
    pub username: Option<Bytes>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// MQTT 5 reason code; the encoder maps it to a 3.1.1 return code for level 4.
    pub code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in v5 when a Topic Alias property is present.
    pub topic: Bytes,
    /// 0 for QoS 0 (absent on the wire).
    pub pkid: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

impl Publish {
    pub fn new(topic: Bytes, qos: QoS, payload: Bytes) -> Publish {
        Publish { dup: false, qos, retain: false, topic, pkid: 0, properties: Properties::default(), payload }
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    /// 0x00 on success. Omitted on the wire when 0 and there are no properties (v5) and
    /// always absent in 3.1.1.
    pub reason: u8,
    pub properties: Properties,
}

impl Ack {
    pub fn new(pkid: u16, reason: u8) -> Ack {
        Ack { pkid, reason, properties: Properties::default() }
    }
}

/// Subscription options byte (spec 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 = send retained on subscribe, 1 = only if the subscription is new, 2 = never.
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub filter: Bytes,
    pub options: SubscriptionOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    /// Subscription identifier (at most one) and user properties.
    pub properties: Properties,
    /// Never empty (the decoder rejects an empty SUBSCRIBE [MQTT-3.8.3-3]).
    pub filters: Vec<SubscribeFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub properties: Properties,
    /// One per filter: granted QoS or failure code (0x80 in 3.1.1, a 5.0 reason code in 5.0).
    pub reasons: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub properties: Properties,
    /// Never empty [MQTT-3.10.3-2].
    pub filters: Vec<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
    pub properties: Properties,
    /// One per filter in 5.0; not on the wire in 3.1.1.
    pub reasons: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: u8,
    pub properties: Properties,
}

// Packets are decoded, matched and dropped (or encoded straight from a reference), never
// stored in bulk, so the size of the CONNECT variant costs a memcpy rather than memory.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The control packet type from the fixed header (spec 2.1.2).
    pub fn packet_type(&self) -> u8 {
        match self {
            Packet::Connect(_) => 1,
            Packet::ConnAck(_) => 2,
            Packet::Publish(_) => 3,
            Packet::PubAck(_) => 4,
            Packet::PubRec(_) => 5,
            Packet::PubRel(_) => 6,
            Packet::PubComp(_) => 7,
            Packet::Subscribe(_) => 8,
            Packet::SubAck(_) => 9,
            Packet::Unsubscribe(_) => 10,
            Packet::UnsubAck(_) => 11,
            Packet::PingReq => 12,
            Packet::PingResp => 13,
            Packet::Disconnect(_) => 14,
            Packet::Auth(_) => 15,
        }
    }
}
