//! Typed codec errors. Each decode error knows the MQTT 5 reason code a server answers with.

use super::reason;

/// Why a byte sequence is not a valid MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet's structure is wrong: bad lengths, reserved flags, invalid UTF-8, etc.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well-formed but breaks a protocol rule (duplicate property, property
    /// not allowed in this packet, out-of-range property value, ...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The fixed header announces a packet larger than the allowed maximum.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// CONNECT with a protocol name/level we do not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedProtocolVersion(u8),
    /// A topic name that is not allowed in PUBLISH (wildcards, empty without alias).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code a server sends (in CONNACK or DISCONNECT) for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicNameInvalid(_) => reason::TOPIC_NAME_INVALID,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("field too long for the wire format: {0}")]
    FieldTooLong(&'static str),
    #[error("packet not valid for this protocol version: {0}")]
    NotInVersion(&'static str),
}
