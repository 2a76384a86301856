//! The WebSocket server layer: the opening handshake, then binary frames both ways, pings
//! answered and the closing handshake.

use bytes::{Buf, Bytes, BytesMut};

use crate::http::{self, UpgradeError};
use crate::ws_frame::{self, Decoder, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG};
use crate::TransportError;

/// Configuration of a WebSocket listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// Largest message (all frames of a fragmented message together) a client may send; larger
    /// ones are answered with close code 1009. The payload is not buffered here, so this bounds
    /// what the MQTT layer may be asked to hold: set it to the broker's maximum packet size or
    /// more, as one message may carry one MQTT packet or several.
    pub max_message_size: usize,
    /// Largest upgrade request head; a larger one is answered with 431.
    pub max_request_size: usize,
    /// The only request path served (query string ignored), e.g. `/mqtt`. `None` serves any
    /// path: MQTT clients disagree on the default (`/mqtt`, `/`, `/ws`), and the port is
    /// dedicated to MQTT anyway.
    pub path: Option<String>,
}

/// The largest MQTT packet: a 5-byte fixed header and 268,435,455 bytes.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 268_435_460;
/// Browsers send well under 2 KiB.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 8192;

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            path: None,
        }
    }
}

enum Phase {
    /// Collecting the upgrade request head.
    Request(Vec<u8>),
    Open,
    /// Refused, failed or closed: input is discarded.
    Done,
}

pub(crate) struct WsLayer {
    max_request: usize,
    path: Option<String>,
    phase: Phase,
    decoder: Decoder,
    /// Bytes of our own, sent in this order before (response, pong) or instead of (close)
    /// further application data.
    response: Option<Bytes>,
    pong: Option<Bytes>,
    close: Option<Bytes>,
    /// A close frame was queued: no data frame may follow it (RFC 6455 5.5.1).
    close_queued: bool,
    /// The peer closed, broke the protocol, or the handshake failed: no more input is wanted.
    ended: bool,
    subprotocol: Option<String>,
    request_path: Option<String>,
}

impl WsLayer {
    pub(crate) fn new(settings: &WsSettings) -> Self {
        WsLayer {
            max_request: settings.max_request_size,
            path: settings.path.clone(),
            phase: Phase::Request(Vec::new()),
            decoder: Decoder::new(settings.max_message_size),
            response: None,
            pong: None,
            close: None,
            close_queued: false,
            ended: false,
            subprotocol: None,
            request_path: None,
        }
    }

    pub(crate) fn receive(&mut self, wire: &mut BytesMut, app: &mut BytesMut) -> Result<(), TransportError> {
        if let Phase::Request(head) = &mut self.phase {
            let old = head.len();
            // At most one byte over the limit is kept: enough to know the limit was passed.
            let take = wire.len().min((self.max_request + 1).saturating_sub(old));
            head.extend_from_slice(&wire[..take]);
            let outcome = match http::head_end(head, old) {
                Some(end) if end <= self.max_request => {
                    // The head did not end before this call, so what follows it is still in `wire`.
                    wire.advance(take - (head.len() - end));
                    head.truncate(end);
                    http::parse_upgrade(head, self.path.as_deref())
                }
                _ if head.len() > self.max_request => Err(UpgradeError::TooLarge { limit: self.max_request }),
                _ => {
                    wire.advance(take);
                    return Ok(());
                }
            };
            match outcome {
                Ok(upgrade) => {
                    self.response = Some(http::switching_response(&upgrade));
                    self.subprotocol = upgrade.subprotocol;
                    self.request_path = Some(upgrade.path);
                    self.phase = Phase::Open;
                }
                Err(e) => return Err(self.refuse(wire, e)),
            }
        }
        if !matches!(self.phase, Phase::Open) {
            wire.clear();
            return Ok(());
        }
        loop {
            let control = match self.decoder.decode(wire, app) {
                Ok(Some(control)) => control,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.fail(wire, e.close_code());
                    return Err(TransportError::WebSocket(e));
                }
            };
            match control.opcode {
                OP_PING if !self.close_queued => {
                    // Only the latest ping is answered (allowed by RFC 6455 5.5.3): a client
                    // pinging faster than we write cannot grow a queue.
                    self.pong = Some(frame(OP_PONG, &control.payload));
                }
                OP_CLOSE => {
                    let code = match ws_frame::parse_close(&control.payload) {
                        Ok(code) => code,
                        Err(e) => {
                            self.fail(wire, e.close_code());
                            return Err(TransportError::WebSocket(e));
                        }
                    };
                    if !self.close_queued {
                        // Echo the status code, as RFC 6455 5.5.1 suggests.
                        let payload = code.map(u16::to_be_bytes);
                        self.queue_close(payload.as_ref().map_or(&[][..], |p| &p[..]));
                    }
                    self.end(wire);
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    /// Appends to `out` the layer's pending bytes and, framed, the application chunks (drained).
    pub(crate) fn send(&mut self, app: &mut Vec<Bytes>, out: &mut Vec<Bytes>) {
        out.extend(self.response.take());
        out.extend(self.pong.take());
        let len: usize = app.iter().map(Bytes::len).sum();
        // Before the 101 nothing may be framed, and after a close frame nothing may follow: the
        // MQTT layer only answers what it received, so data is dropped only when the connection
        // is going away anyway.
        if len > 0 && matches!(self.phase, Phase::Open) && !self.close_queued {
            // One frame for the whole batch; server frames are unmasked, so the chunks go out as
            // they are, after a header of their own.
            let (header, n) = ws_frame::server_header(OP_BINARY, len as u64);
            out.push(Bytes::copy_from_slice(&header[..n]));
            out.extend(app.drain(..).filter(|c| !c.is_empty()));
        }
        app.clear();
        out.extend(self.close.take());
    }

    /// Queues a close frame (1000, normal closure) unless one was already sent or queued.
    pub(crate) fn close(&mut self) {
        match self.phase {
            Phase::Open if !self.close_queued => self.queue_close(&1000u16.to_be_bytes()),
            Phase::Open => {}
            // No WebSocket yet: nothing to close politely.
            _ => self.phase = Phase::Done,
        }
    }

    pub(crate) fn wants_write(&self) -> bool {
        self.response.is_some() || self.pong.is_some() || self.close.is_some()
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    pub(crate) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    pub(crate) fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    pub(crate) fn request_path(&self) -> Option<&str> {
        self.request_path.as_deref()
    }

    fn refuse(&mut self, wire: &mut BytesMut, error: UpgradeError) -> TransportError {
        self.response = Some(http::error_response(&error));
        self.end(wire);
        TransportError::Upgrade(error)
    }

    fn fail(&mut self, wire: &mut BytesMut, code: u16) {
        if !self.close_queued {
            self.queue_close(&code.to_be_bytes());
        }
        self.end(wire);
    }

    fn end(&mut self, wire: &mut BytesMut) {
        wire.clear();
        self.phase = Phase::Done;
        self.ended = true;
    }

    fn queue_close(&mut self, payload: &[u8]) {
        self.close = Some(frame(OP_CLOSE, payload));
        self.close_queued = true;
        self.pong = None;
    }
}

/// A whole server frame with a small payload (a control frame).
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let (header, n) = ws_frame::server_header(opcode, payload.len() as u64);
    let mut f = Vec::with_capacity(n + payload.len());
    f.extend_from_slice(&header[..n]);
    f.extend_from_slice(payload);
    Bytes::from(f)
}
