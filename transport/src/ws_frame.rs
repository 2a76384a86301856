//! RFC 6455 framing: a streaming decoder for client frames and the encoder for server frames.
//!
//! The decoder never holds a data frame's payload: it unmasks payload bytes as they arrive and
//! hands them to the caller's buffer, so its memory is a 14-byte header and at most one control
//! frame payload (125 bytes), whatever the client announces.

use bytes::{Buf, BytesMut};

/// Under this many payload bytes a copy into the caller's buffer is cheaper than splitting the
/// wire buffer (a split turns it into a shared allocation).
const ZERO_COPY_MIN: usize = 4096;

/// Control frames carry at most this many payload bytes (RFC 6455 5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// A WebSocket protocol violation by the client. Each maps to the close code sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    #[error("client frame is not masked")]
    Unmasked,
    #[error("reserved bits set, but no extension was negotiated")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("continuation frame with no fragmented message to continue")]
    UnexpectedContinuation,
    #[error("new data frame before the fragmented message was finished")]
    UnfinishedMessage,
    #[error("frame length with the most significant bit set")]
    BadLength,
    #[error("text frame: only binary frames carry MQTT")]
    TextFrame,
    #[error("message of at least {size} bytes is over the limit of {limit} bytes")]
    TooBig { size: u64, limit: usize },
    #[error("close frame with a 1-byte payload or an invalid status code")]
    BadClose,
    #[error("close frame reason is not UTF-8")]
    CloseReasonNotUtf8,
}

impl WsError {
    /// The status code of the close frame that answers this violation.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TextFrame => 1003,
            WsError::CloseReasonNotUtf8 => 1007,
            WsError::TooBig { .. } => 1009,
            _ => 1002,
        }
    }
}

/// A complete control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Control {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// The frame whose payload is being received.
struct Frame {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes received so far, modulo 4: where the mask stands.
    phase: usize,
    remaining: u64,
}

pub(crate) struct Decoder {
    max_message: usize,
    header: [u8; 14],
    have: usize,
    frame: Option<Frame>,
    /// Inside a fragmented binary message (its first frame had FIN clear).
    in_message: bool,
    message_len: u64,
    control: Vec<u8>,
}

impl Decoder {
    pub(crate) fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            header: [0; 14],
            have: 0,
            frame: None,
            in_message: false,
            message_len: 0,
            control: Vec::new(),
        }
    }

    /// Consumes `wire`, appending unmasked binary payload to `app`, until `wire` is empty
    /// (`Ok(None)`) or a control frame is complete (`Ok(Some(..))`, with the rest of `wire`
    /// left for the next call).
    pub(crate) fn decode(&mut self, wire: &mut BytesMut, app: &mut BytesMut) -> Result<Option<Control>, WsError> {
        loop {
            let Some(frame) = &mut self.frame else {
                if wire.is_empty() {
                    return Ok(None);
                }
                self.read_header(wire)?;
                continue;
            };
            if frame.remaining > 0 {
                if wire.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(frame.remaining).unwrap_or(usize::MAX).min(wire.len());
                let is_control = frame.opcode >= OP_CLOSE;
                if is_control {
                    let start = self.control.len();
                    self.control.extend_from_slice(&wire[..n]);
                    wire.advance(n);
                    unmask(&mut self.control[start..], frame.mask, frame.phase);
                } else if app.is_empty() && n >= ZERO_COPY_MIN {
                    let mut chunk = wire.split_to(n);
                    unmask(&mut chunk, frame.mask, frame.phase);
                    *app = chunk;
                } else {
                    let start = app.len();
                    app.extend_from_slice(&wire[..n]);
                    wire.advance(n);
                    unmask(&mut app[start..], frame.mask, frame.phase);
                }
                frame.phase = (frame.phase + n) % 4;
                frame.remaining -= n as u64;
                if frame.remaining > 0 {
                    continue;
                }
            }
            let (opcode, fin) = (frame.opcode, frame.fin);
            self.frame = None;
            if opcode >= OP_CLOSE {
                return Ok(Some(Control { opcode, payload: std::mem::take(&mut self.control) }));
            }
            if fin {
                self.in_message = false;
                self.message_len = 0;
            }
        }
    }

    /// Moves header bytes from `wire` into `self.header`; starts the frame once it is whole.
    fn read_header(&mut self, wire: &mut BytesMut) -> Result<(), WsError> {
        if self.have < 2 {
            let n = (2 - self.have).min(wire.len());
            self.header[self.have..self.have + n].copy_from_slice(&wire[..n]);
            wire.advance(n);
            self.have += n;
            if self.have < 2 {
                return Ok(());
            }
            // Checked as soon as possible so that a bad frame is refused before its length is read.
            self.check_start(self.header[0], self.header[1])?;
        }
        let need = header_len(self.header[1]);
        let n = (need - self.have).min(wire.len());
        self.header[self.have..self.have + n].copy_from_slice(&wire[..n]);
        wire.advance(n);
        self.have += n;
        if self.have < need {
            return Ok(());
        }
        self.have = 0;
        let (b0, b1) = (self.header[0], self.header[1]);
        let (len, mask_at) = match b1 & 0x7F {
            126 => (u64::from(u16::from_be_bytes([self.header[2], self.header[3]])), 4),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            short => (u64::from(short), 2),
        };
        if len >> 63 != 0 {
            return Err(WsError::BadLength);
        }
        let opcode = b0 & 0x0F;
        if opcode < OP_CLOSE {
            let size = self.message_len.saturating_add(len);
            if size > self.max_message as u64 {
                return Err(WsError::TooBig { size, limit: self.max_message });
            }
            self.message_len = size;
            self.in_message = true;
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.header[mask_at..mask_at + 4]);
        self.frame = Some(Frame { opcode, fin: b0 & 0x80 != 0, mask, phase: 0, remaining: len });
        Ok(())
    }

    fn check_start(&self, b0: u8, b1: u8) -> Result<(), WsError> {
        if b0 & 0x70 != 0 {
            return Err(WsError::ReservedBits);
        }
        if b1 & 0x80 == 0 {
            return Err(WsError::Unmasked);
        }
        let fin = b0 & 0x80 != 0;
        match b0 & 0x0F {
            OP_CLOSE | OP_PING | OP_PONG if !fin || usize::from(b1 & 0x7F) > MAX_CONTROL_PAYLOAD => {
                Err(WsError::BadControlFrame)
            }
            OP_CLOSE | OP_PING | OP_PONG => Ok(()),
            OP_TEXT => Err(WsError::TextFrame),
            OP_BINARY if self.in_message => Err(WsError::UnfinishedMessage),
            OP_CONTINUATION if !self.in_message => Err(WsError::UnexpectedContinuation),
            OP_BINARY | OP_CONTINUATION => Ok(()),
            other => Err(WsError::UnknownOpcode(other)),
        }
    }
}

/// Length of a client frame header (always masked) given its second byte.
fn header_len(b1: u8) -> usize {
    match b1 & 0x7F {
        126 => 2 + 2 + 4,
        127 => 2 + 8 + 4,
        _ => 2 + 4,
    }
}

/// XORs `data` with the mask, `data[0]` being payload byte number `phase` (mod 4).
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let mut rotated = [0u8; 4];
    for (i, b) in rotated.iter_mut().enumerate() {
        *b = mask[(phase + i) % 4];
    }
    // Eight bytes at a time: the pattern repeats every four, so one u64 covers it in any byte order.
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2], rotated[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i % 4];
    }
}

/// A final, unmasked server frame header for a payload of `len` bytes. Returns the buffer and
/// how many of its bytes are the header.
pub(crate) fn server_header(opcode: u8, len: u64) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&len.to_be_bytes());
        (h, 10)
    }
}

/// Checks a close frame's payload: empty, or a valid status code and a UTF-8 reason.
/// Returns the status code, if any.
pub(crate) fn parse_close(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::BadClose),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // Codes an endpoint may send (RFC 6455 7.4 and the IANA registry); 1005, 1006 and
            // 1015 are reserved for reporting and never appear on the wire.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(WsError::BadClose);
            }
            std::str::from_utf8(reason).map_err(|_| WsError::CloseReasonNotUtf8)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn naive_unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask[(phase + i) % 4];
        }
    }

    #[test]
    fn unmask_matches_the_definition_at_every_phase_and_length() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for phase in 0..4 {
            for len in 0..40 {
                let original: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
                let mut fast = original.clone();
                let mut slow = original.clone();
                unmask(&mut fast, mask, phase);
                naive_unmask(&mut slow, mask, phase);
                assert_eq!(fast, slow, "phase {phase} len {len}");
            }
        }
    }

    #[test]
    fn server_header_uses_the_shortest_length_encoding() {
        let (h, n) = server_header(OP_BINARY, 0);
        assert_eq!(&h[..n], &[0x82, 0]);
        let (h, n) = server_header(OP_BINARY, 125);
        assert_eq!(&h[..n], &[0x82, 125]);
        let (h, n) = server_header(OP_BINARY, 126);
        assert_eq!(&h[..n], &[0x82, 126, 0, 126]);
        let (h, n) = server_header(OP_BINARY, 65535);
        assert_eq!(&h[..n], &[0x82, 126, 0xFF, 0xFF]);
        let (h, n) = server_header(OP_BINARY, 65536);
        assert_eq!(&h[..n], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let (h, n) = server_header(OP_CLOSE, 2);
        assert_eq!(&h[..n], &[0x88, 2]);
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close(&[]), Ok(None));
        assert_eq!(parse_close(&[0x03]), Err(WsError::BadClose));
        assert_eq!(parse_close(&[0x03, 0xE8]), Ok(Some(1000)));
        assert_eq!(parse_close(&[0x03, 0xE8, b'o', b'k']), Ok(Some(1000)));
        assert_eq!(parse_close(&[0x0F, 0xA0]), Ok(Some(4000)));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(parse_close(&bad.to_be_bytes()), Err(WsError::BadClose), "{bad}");
        }
        assert_eq!(parse_close(&[0x03, 0xE8, 0xFF]), Err(WsError::CloseReasonNotUtf8));
    }

    #[test]
    fn decoder_hands_back_the_rest_after_a_control_frame() {
        let mut d = Decoder::new(1024);
        // Masked ping "hi" (mask 0) then masked binary "abc" (mask 0).
        let mut wire =
            BytesMut::from(&[0x89, 0x82, 0, 0, 0, 0, b'h', b'i', 0x82, 0x83, 0, 0, 0, 0, b'a', b'b', b'c'][..]);
        let mut app = BytesMut::new();
        let c = d.decode(&mut wire, &mut app).unwrap();
        assert_eq!(c, Some(Control { opcode: OP_PING, payload: b"hi".to_vec() }));
        assert!(app.is_empty());
        assert_eq!(wire.len(), 9);
        assert_eq!(d.decode(&mut wire, &mut app).unwrap(), None);
        assert_eq!(&app[..], b"abc");
        assert!(wire.is_empty());
    }

    #[test]
    fn large_payload_into_an_empty_buffer_is_not_copied() {
        let mut d = Decoder::new(1 << 20);
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[0x82, 0xFE, 0x20, 0x00, 0, 0, 0, 0]);
        wire.extend_from_slice(&[7u8; 0x2000]);
        let payload_at = wire[8..].as_ptr();
        let mut app = BytesMut::new();
        assert_eq!(d.decode(&mut wire, &mut app).unwrap(), None);
        assert_eq!(app.len(), 0x2000);
        assert_eq!(app.as_ptr(), payload_at);
    }
}
