//! The TLS server layer over rustls' in-memory API.

use std::io::{self, BufRead, IoSlice, Write};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rustls::pki_types::CertificateDer;
use rustls::server::{Accepted, Acceptor};
use rustls::ServerConnection;

use crate::tls_config::{TlsConfig, ALPN_MQTT};
use crate::TransportError;

/// Chunks handed to rustls in one vectored write; rustls packs them into as few records as fit.
const SLICES_PER_WRITE: usize = 64;

enum State {
    /// Waiting for the whole ClientHello, to choose the configuration by its ALPN offer.
    Accepting(Acceptor, TlsConfig),
    Connected(ServerConnection),
    /// The handshake failed before a connection existed; only the alert is left to send.
    Refused,
}

pub(crate) struct TlsLayer {
    state: State,
    /// An alert that the acceptor produced (a connection queues its own).
    alert: Option<Bytes>,
    /// The peer sent close_notify, or the connection failed.
    ended: bool,
    failed: bool,
    close_sent: bool,
}

impl TlsLayer {
    pub(crate) fn new(config: &TlsConfig) -> Self {
        TlsLayer {
            state: State::Accepting(Acceptor::default(), config.clone()),
            alert: None,
            ended: false,
            failed: false,
            close_sent: false,
        }
    }

    /// Decrypts all of `wire`, appending plaintext to `plain`.
    pub(crate) fn receive(&mut self, wire: &mut BytesMut, plain: &mut BytesMut) -> Result<(), TransportError> {
        let result = self.receive_inner(wire, plain);
        if result.is_err() {
            self.failed = true;
            self.ended = true;
        }
        if self.ended {
            // Nothing after close_notify or a fatal error is meaningful.
            wire.clear();
        }
        result
    }

    fn receive_inner(&mut self, wire: &mut BytesMut, plain: &mut BytesMut) -> Result<(), TransportError> {
        while !wire.is_empty() && !self.ended {
            match &mut self.state {
                State::Accepting(acceptor, config) => {
                    let n = acceptor.read_tls(&mut &wire[..]).map_err(TransportError::TlsIo)?;
                    advance(wire, n)?;
                    match acceptor.accept() {
                        Ok(None) => {}
                        Ok(Some(accepted)) => {
                            let config = choose_config(&accepted, config);
                            match accepted.into_connection(config) {
                                Ok(mut conn) => {
                                    // The broker bounds its write queue; a partial write here
                                    // would only mean data to carry over.
                                    conn.set_buffer_limit(None);
                                    self.state = State::Connected(conn);
                                    // The acceptor may have buffered records after the hello.
                                    self.process(plain)?;
                                }
                                Err((error, alert)) => return Err(self.refuse(error, alert)),
                            }
                        }
                        Err((error, alert)) => return Err(self.refuse(error, alert)),
                    }
                }
                State::Connected(conn) => {
                    let n = conn.read_tls(&mut &wire[..]).map_err(TransportError::TlsIo)?;
                    advance(wire, n)?;
                    self.process(plain)?;
                }
                State::Refused => break,
            }
        }
        Ok(())
    }

    /// Processes buffered records and moves the plaintext out.
    fn process(&mut self, plain: &mut BytesMut) -> Result<(), TransportError> {
        let State::Connected(conn) = &mut self.state else { return Ok(()) };
        let io = conn.process_new_packets().map_err(TransportError::Tls)?;
        let mut reader = conn.reader();
        loop {
            match reader.fill_buf() {
                Ok([]) => break,
                Ok(chunk) => {
                    let n = chunk.len();
                    plain.extend_from_slice(chunk);
                    reader.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(TransportError::TlsIo(e)),
            }
        }
        if io.peer_has_closed() {
            self.ended = true;
        }
        Ok(())
    }

    fn refuse(&mut self, error: rustls::Error, mut alert: rustls::server::AcceptedAlert) -> TransportError {
        let mut bytes = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = alert.write_all(&mut bytes);
        if !bytes.is_empty() {
            self.alert = Some(Bytes::from(bytes));
        }
        self.state = State::Refused;
        TransportError::Tls(error)
    }

    /// Encrypts the chunks (not before the handshake has started, nor after a failure or our
    /// close_notify: then they are dropped).
    pub(crate) fn write(&mut self, app: &[Bytes]) -> Result<(), TransportError> {
        let State::Connected(conn) = &mut self.state else { return Ok(()) };
        if self.failed || self.close_sent {
            return Ok(());
        }
        let mut writer = conn.writer();
        for group in app.chunks(SLICES_PER_WRITE) {
            let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE];
            for (slice, chunk) in slices.iter_mut().zip(group) {
                *slice = IoSlice::new(chunk);
            }
            let total: usize = group.iter().map(Bytes::len).sum();
            let written = writer.write_vectored(&slices[..group.len()]).map_err(TransportError::TlsIo)?;
            if written < total {
                // Not expected without a buffer limit; finish chunk by chunk.
                let mut skip = written;
                for chunk in group {
                    if skip >= chunk.len() {
                        skip -= chunk.len();
                        continue;
                    }
                    writer.write_all(&chunk[skip..]).map_err(TransportError::TlsIo)?;
                    skip = 0;
                }
            }
        }
        Ok(())
    }

    /// Queues close_notify.
    pub(crate) fn close(&mut self) {
        if let State::Connected(conn) = &mut self.state {
            if !self.close_sent && !self.failed {
                conn.send_close_notify();
            }
        }
        self.close_sent = true;
    }

    /// Appends the records waiting to be sent to `wire`, as one chunk.
    pub(crate) fn drain(&mut self, wire: &mut Vec<Bytes>) -> Result<(), TransportError> {
        wire.extend(self.alert.take());
        let State::Connected(conn) = &mut self.state else { return Ok(()) };
        if !conn.wants_write() {
            return Ok(());
        }
        let mut out = BytesMut::new().writer();
        while conn.wants_write() {
            conn.write_tls(&mut out).map_err(TransportError::TlsIo)?;
        }
        wire.push(out.into_inner().freeze());
        Ok(())
    }

    pub(crate) fn wants_write(&self) -> bool {
        self.alert.is_some() || matches!(&self.state, State::Connected(conn) if conn.wants_write())
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Connected(conn) => conn.is_handshaking(),
            _ => true,
        }
    }

    pub(crate) fn connection(&self) -> Option<&ServerConnection> {
        match &self.state {
            State::Connected(conn) => Some(conn),
            _ => None,
        }
    }

    pub(crate) fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.connection()?.peer_certificates()
    }
}

/// rustls reads from a non-empty slice until its buffer is full, and reports a full buffer as an
/// error; zero bytes read would loop forever, so it is refused rather than trusted never to happen.
fn advance(wire: &mut BytesMut, n: usize) -> Result<(), TransportError> {
    if n == 0 {
        return Err(TransportError::TlsIo(io::Error::other("TLS layer accepted no bytes")));
    }
    wire.advance(n);
    Ok(())
}

fn choose_config(accepted: &Accepted, config: &TlsConfig) -> Arc<rustls::ServerConfig> {
    let hello = accepted.client_hello();
    let offers_mqtt = hello.alpn().is_some_and(|mut offered| offered.any(|p| p == ALPN_MQTT));
    Arc::clone(if offers_mqtt { &config.with_alpn } else { &config.without_alpn })
}
