//! The MQTT 3.1.1 / 5.0 wire codec: pure functions from bytes to [`Packet`]s and back.
//!
//! Invariants:
//! - Decoding never panics and never reads past the frame it was given: every read is
//!   bounds-checked first (two phases, as in mini-redis: [`decode::check_frame`] finds a
//!   complete frame and its length; [`decode::decode_packet`] then parses exactly that frame).
//! - Topics, payloads and binary properties are `Bytes` slices of the receive buffer
//!   (zero-copy); UTF-8 fields are validated once at decode time and stay `Bytes`.
//! - Every decode error maps to an MQTT 5 reason code ([`DecodeError::reason_code`]), so the
//!   session can answer with the right DISCONNECT/CONNACK.
//! - The maximum packet size is enforced on decode (before the body is buffered) and on
//!   encode ([`encode::encoded_len`] lets callers skip a packet too large for a peer).
//!
//! Start reading at [`packet`] (the types), then [`decode`] and [`encode`].

pub mod decode;
pub mod encode;
pub mod error;
pub mod packet;
mod properties;
pub mod reason;

pub use decode::{check_frame, decode_packet, Frame};
pub use encode::{encode_packet, encode_publish, encode_publish_header, encoded_len, publish_len};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub(crate) use properties::properties_len;
