//! Sans-IO transport layers for the PromptMQ broker: TLS, WebSocket, and WebSocket inside TLS.
//!
//! The broker's connection tasks read socket bytes and write chunks of bytes; the MQTT core
//! consumes and produces the plaintext MQTT byte stream. A [`Transport`] sits between the two
//! and performs no IO of its own, so the same code serves both async runtimes. Plain TCP has
//! no transport at all: the broker holds an `Option<Transport>` and skips it when `None`.
//!
//! Invariants:
//! - Order is preserved: bytes the layers generate themselves (handshake records, the HTTP
//!   101 answer, pongs, close frames, alerts) go out before or instead of the application data
//!   of the same [`Transport::send`] call, never reordered with it.
//! - [`Transport::receive`] takes all of the wire bytes it is given. Decoded application bytes
//!   are the caller's; what a layer keeps is small and bounded (a TLS record in progress, a
//!   WebSocket frame header, a control frame of at most 125 bytes, the upgrade request up to
//!   [`WsSettings::max_request_size`]). Sizes the client announces are checked against
//!   [`WsSettings::max_message_size`] before anything is read.
//! - No IO, no clocks, no threads: handshake timeouts belong to the broker.
//!
//! Start with [`Transport`]; the layers are in `tls.rs` (rustls with the ring provider, its
//! configuration loaded from PEM files in `tls_config.rs`) and `ws.rs` (upgrade request in
//! `http.rs`, framing in `ws_frame.rs`). `x509.rs` reads a client certificate's Common Name.

//!
//! Cargo features: `tls` (rustls and ring) and `ws` (httparse, and ring for the handshake's
//! SHA-1), both on by default. What a feature leaves out does not exist: a build without
//! `tls` has no [`Transport::tls`], and a build without either has no way to make a
//! `Transport` at all (its type still exists, so callers need no feature checks of their own
//! to hold an `Option` of one).

// Without a layer the methods' arguments have nothing to go to (and no Transport exists).
#![cfg_attr(not(any(feature = "tls", feature = "ws")), allow(unused_variables, clippy::ptr_arg))]

#[cfg(feature = "ws")]
mod http;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
mod tls_config;
#[cfg(feature = "ws")]
mod ws;
#[cfg(feature = "ws")]
mod ws_frame;
#[cfg(feature = "tls")]
mod x509;

use bytes::{Bytes, BytesMut};

#[cfg(feature = "ws")]
pub use http::{UpgradeError, SUBPROTOCOLS};
#[cfg(feature = "tls")]
pub use rustls;
#[cfg(feature = "tls")]
pub use tls_config::{ClientCertMode, MinTlsVersion, TlsConfig, TlsConfigError, TlsSettings, ALPN_MQTT};
#[cfg(feature = "ws")]
pub use ws::{WsSettings, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_REQUEST_SIZE};
#[cfg(feature = "ws")]
pub use ws_frame::WsError;
#[cfg(feature = "tls")]
pub use x509::subject_common_name;

/// Why a connection's transport gave up. After any of these, the connection is over: call
/// [`Transport::flush`] once for the last bytes to send (TLS alert, WebSocket close frame or
/// HTTP error response), write them, and close the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[cfg(feature = "tls")]
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[cfg(feature = "tls")]
    #[error("TLS: {0}")]
    TlsIo(std::io::Error),
    #[cfg(feature = "ws")]
    #[error("WebSocket upgrade refused: {0}")]
    Upgrade(UpgradeError),
    #[cfg(feature = "ws")]
    #[error("WebSocket: {0}")]
    WebSocket(WsError),
}

/// The layers of one connection: TLS, WebSocket, or WebSocket inside TLS.
///
/// The reader task calls [`receive`](Self::receive) with what it read, and wakes the writer when
/// [`wants_write`](Self::wants_write) says the layers have something of their own to send; the
/// writer calls [`send`](Self::send) with the MQTT chunks (or [`flush`](Self::flush) with none).
/// Single-threaded callers share one `Transport` between the two tasks (e.g. in a `RefCell`): no
/// call blocks.
///
/// ```
/// # #[cfg(feature = "ws")] {
/// use bytes::{Bytes, BytesMut};
/// use promptmq_transport::{Transport, WsSettings};
///
/// let mut t = Transport::ws(&WsSettings::default());
/// // Reader: what the socket gave, all of it taken; MQTT bytes (none yet) appended to `app`.
/// let mut wire = BytesMut::from(
///     &b"GET /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
///        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"[..],
/// );
/// let mut app = BytesMut::new();
/// t.receive(&mut wire, &mut app)?;
/// assert!(wire.is_empty() && app.is_empty());
/// assert!(t.wants_write()); // the 101 answer is pending: wake the writer
///
/// // Writer: MQTT chunks in (a CONNACK), chunks for a vectored write out.
/// let mut chunks = vec![Bytes::from_static(b"\x20\x02\x00\x00")];
/// let mut out = Vec::new();
/// t.send(&mut chunks, &mut out)?;
/// assert!(out[0].starts_with(b"HTTP/1.1 101 Switching Protocols"));
/// assert_eq!(&out[1][..], &[0x82, 4]); // binary frame header, then the CONNACK chunk unchanged
/// assert_eq!(&out[2][..], b"\x20\x02\x00\x00");
/// # }
/// # Ok::<(), promptmq_transport::TransportError>(())
/// ```
pub struct Transport {
    stack: Stack,
}

enum Stack {
    // Boxed: a rustls connection is large.
    #[cfg(feature = "tls")]
    Tls(Box<tls::TlsLayer>),
    #[cfg(feature = "ws")]
    Ws(ws::WsLayer),
    #[cfg(all(feature = "tls", feature = "ws"))]
    Wss {
        tls: Box<tls::TlsLayer>,
        ws: ws::WsLayer,
        /// Plaintext from TLS for the WebSocket decoder. Empty between calls.
        plain: BytesMut,
        /// WebSocket output for TLS to encrypt. Empty between calls.
        framed: Vec<Bytes>,
    },
}

impl Transport {
    /// MQTT over TLS.
    #[cfg(feature = "tls")]
    pub fn tls(config: &TlsConfig) -> Self {
        Transport { stack: Stack::Tls(Box::new(tls::TlsLayer::new(config))) }
    }

    /// MQTT over WebSocket.
    #[cfg(feature = "ws")]
    pub fn ws(settings: &WsSettings) -> Self {
        Transport { stack: Stack::Ws(ws::WsLayer::new(settings)) }
    }

    /// MQTT over WebSocket over TLS.
    #[cfg(all(feature = "tls", feature = "ws"))]
    pub fn wss(config: &TlsConfig, settings: &WsSettings) -> Self {
        Transport {
            stack: Stack::Wss {
                tls: Box::new(tls::TlsLayer::new(config)),
                ws: ws::WsLayer::new(settings),
                plain: BytesMut::new(),
                framed: Vec::new(),
            },
        }
    }

    /// Takes all of `wire` (bytes read from the socket) and appends the application bytes it
    /// carried to `app`. Check [`wants_write`](Self::wants_write) and
    /// [`is_closed`](Self::is_closed) afterwards. Once closed, input is discarded.
    ///
    /// Application bytes decoded before an error are in `app`; see [`TransportError`] for what
    /// to do after one.
    pub fn receive(&mut self, wire: &mut BytesMut, app: &mut BytesMut) -> Result<(), TransportError> {
        match &mut self.stack {
            // No layer compiled in: no Transport can exist.
            #[cfg(not(any(feature = "tls", feature = "ws")))]
            stack => match *stack {},
            #[cfg(feature = "tls")]
            Stack::Tls(tls) => tls.receive(wire, app),
            #[cfg(feature = "ws")]
            Stack::Ws(ws) => ws.receive(wire, app),
            #[cfg(all(feature = "tls", feature = "ws"))]
            Stack::Wss { tls, ws, plain, .. } => {
                let decrypted = tls.receive(wire, plain);
                // Plaintext decrypted before a TLS failure is still decoded: it was authentic.
                let decoded = ws.receive(plain, app);
                decrypted.and(decoded)
            }
        }
    }

    /// Appends to `wire` the bytes the layers have pending, then the application chunks (taken
    /// from `app`, which is left empty for reuse) wrapped for the wire. Chunks given while the
    /// connection cannot carry them (WebSocket handshake not done, after a close) are dropped.
    ///
    /// WebSocket puts all the chunks of one call in one frame and moves them to `wire` as they are
    /// (taking them, not cloning, spares a reference count per chunk); TLS encrypts them together
    /// into as few records as fit and appends one chunk.
    pub fn send(&mut self, app: &mut Vec<Bytes>, wire: &mut Vec<Bytes>) -> Result<(), TransportError> {
        match &mut self.stack {
            // No layer compiled in: no Transport can exist.
            #[cfg(not(any(feature = "tls", feature = "ws")))]
            stack => match *stack {},
            #[cfg(feature = "tls")]
            Stack::Tls(tls) => {
                let written = tls.write(app);
                app.clear();
                written?;
                tls.drain(wire)
            }
            #[cfg(feature = "ws")]
            Stack::Ws(ws) => {
                ws.send(app, wire);
                Ok(())
            }
            #[cfg(all(feature = "tls", feature = "ws"))]
            Stack::Wss { tls, ws, framed, .. } => {
                ws.send(app, framed);
                let written = tls.write(framed);
                framed.clear();
                written?;
                tls.drain(wire)
            }
        }
    }

    /// [`send`](Self::send) with no application data: the layers' own pending bytes.
    pub fn flush(&mut self, wire: &mut Vec<Bytes>) -> Result<(), TransportError> {
        self.send(&mut Vec::new(), wire)
    }

    /// Starts an orderly close from our side and appends the last bytes to `wire`: a WebSocket
    /// close frame (1000) and a TLS close_notify, whichever apply and were not sent yet, after
    /// anything still pending. Application data sent afterwards is dropped.
    pub fn close(&mut self, wire: &mut Vec<Bytes>) -> Result<(), TransportError> {
        match &mut self.stack {
            // No layer compiled in: no Transport can exist.
            #[cfg(not(any(feature = "tls", feature = "ws")))]
            stack => match *stack {},
            #[cfg(feature = "tls")]
            Stack::Tls(tls) => {
                tls.close();
                tls.drain(wire)
            }
            #[cfg(feature = "ws")]
            Stack::Ws(ws) => {
                ws.close();
                ws.send(&mut Vec::new(), wire);
                Ok(())
            }
            #[cfg(all(feature = "tls", feature = "ws"))]
            Stack::Wss { tls, ws, framed, .. } => {
                ws.close();
                ws.send(&mut Vec::new(), framed);
                let written = tls.write(framed);
                framed.clear();
                written?;
                tls.close();
                tls.drain(wire)
            }
        }
    }

    /// The layers have bytes of their own to send: the writer should call
    /// [`flush`](Self::flush) (or [`send`](Self::send)) even with no application data.
    pub fn wants_write(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls_layer().is_some_and(|t| t.wants_write()) {
            return true;
        }
        #[cfg(feature = "ws")]
        if self.ws_layer().is_some_and(|w| w.wants_write()) {
            return true;
        }
        false
    }

    /// The peer ended the stream (WebSocket close frame, TLS close_notify) or a layer failed:
    /// no more application data will come. Flush, then close the connection.
    pub fn is_closed(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls_layer().is_some_and(|t| t.is_ended()) {
            return true;
        }
        #[cfg(feature = "ws")]
        if self.ws_layer().is_some_and(|w| w.is_ended()) {
            return true;
        }
        false
    }

    /// Handshakes are still in progress: no application data has flowed yet.
    pub fn is_handshaking(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls_layer().is_some_and(|t| t.is_handshaking()) {
            return true;
        }
        #[cfg(feature = "ws")]
        if self.ws_layer().is_some_and(|w| !w.is_open()) {
            return true;
        }
        false
    }

    /// The client's certificate chain (its own first), once verified by the TLS handshake.
    #[cfg(feature = "tls")]
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.tls_layer()?.peer_certificates()
    }

    /// The subject Common Name of the client's certificate, if it presented one with a CN.
    /// For mosquitto's `use_identity_as_username`.
    #[cfg(feature = "tls")]
    pub fn peer_common_name(&self) -> Option<String> {
        subject_common_name(self.peer_certificates()?.first()?)
    }

    /// The server name (SNI) the TLS client asked for.
    #[cfg(feature = "tls")]
    pub fn server_name(&self) -> Option<&str> {
        self.tls_layer()?.connection()?.server_name()
    }

    /// The ALPN protocol selected (`mqtt`), if the client offered it.
    #[cfg(feature = "tls")]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls_layer()?.connection()?.alpn_protocol()
    }

    /// The negotiated TLS version.
    #[cfg(feature = "tls")]
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls_layer()?.connection()?.protocol_version()
    }

    /// The WebSocket subprotocol selected, as the client spelled it (`mqtt`, `mqttv3.1`).
    #[cfg(feature = "ws")]
    pub fn ws_subprotocol(&self) -> Option<&str> {
        self.ws_layer()?.subprotocol()
    }

    /// The path of the accepted WebSocket upgrade request, without its query.
    #[cfg(feature = "ws")]
    pub fn ws_path(&self) -> Option<&str> {
        self.ws_layer()?.request_path()
    }

    #[cfg(feature = "tls")]
    fn tls_layer(&self) -> Option<&tls::TlsLayer> {
        match &self.stack {
            Stack::Tls(tls) => Some(tls),
            #[cfg(feature = "ws")]
            Stack::Wss { tls, .. } => Some(tls),
            #[cfg(feature = "ws")]
            Stack::Ws(_) => None,
        }
    }

    #[cfg(feature = "ws")]
    fn ws_layer(&self) -> Option<&ws::WsLayer> {
        match &self.stack {
            Stack::Ws(ws) => Some(ws),
            #[cfg(feature = "tls")]
            Stack::Wss { ws, .. } => Some(ws),
            #[cfg(feature = "tls")]
            Stack::Tls(_) => None,
        }
    }
}
