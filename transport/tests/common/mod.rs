//! Test certificates, a temporary directory, an in-memory TLS client and WebSocket frame helpers.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use promptmq_transport::rustls::{self, ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};
use promptmq_transport::{Transport, TransportError};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// Signed by another CA, with the same subject as the good client certificate.
    pub rogue_cert_pem: String,
    pub rogue_key_pem: String,
}

fn ca(name: &str) -> (Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(names: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose, issuer: &(Certificate, KeyPair)) -> (String, String) {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "PromptMQ tests");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer.0, &issuer.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Generated once per test binary: key generation is the slow part.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = ca("PromptMQ test CA");
        let other = ca_other();
        let (server_cert_pem, server_key_pem) =
            leaf(&["localhost"], "localhost", ExtendedKeyUsagePurpose::ServerAuth, &ca);
        let (client_cert_pem, client_key_pem) = leaf(&[], "client-1", ExtendedKeyUsagePurpose::ClientAuth, &ca);
        let (rogue_cert_pem, rogue_key_pem) = leaf(&[], "client-1", ExtendedKeyUsagePurpose::ClientAuth, &other);
        Pki {
            ca_pem: ca.0.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
            rogue_cert_pem,
            rogue_key_pem,
        }
    })
}

fn ca_other() -> (Certificate, KeyPair) {
    // Same name as the real CA: only the key tells them apart.
    ca("PromptMQ test CA")
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "promptmq-transport-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub const BOTH_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A client trusting the test CA, with an optional certificate (PEM cert, PEM key).
pub fn client_config(
    cert: Option<(&str, &str)>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki().ca_pem.as_bytes()).unwrap()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[derive(Debug)]
pub enum Failure {
    Server(TransportError),
    Client(rustls::Error),
}

/// A rustls client and a server `Transport`, bytes shuttled between them in memory.
pub struct Pair {
    pub client: ClientConnection,
    pub server: Transport,
    /// Application bytes the server decoded.
    pub server_app: BytesMut,
    /// Feed the server this many bytes per `receive` call (0: all at once).
    pub feed_size: usize,
    client_plain: Vec<u8>,
    client_eof: bool,
}

impl Pair {
    pub fn new(config: Arc<ClientConfig>, server: Transport) -> Self {
        let mut client = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        client.set_buffer_limit(None);
        Pair { client, server, server_app: BytesMut::new(), feed_size: 0, client_plain: Vec::new(), client_eof: false }
    }

    /// Moves bytes both ways until neither side has any to send.
    pub fn pump(&mut self) -> Result<(), Failure> {
        for _ in 0..1000 {
            let mut progress = false;
            let mut buf = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                progress = true;
                self.feed_server(&buf)?;
            }
            progress |= self.server_to_client()?;
            if !progress {
                return Ok(());
            }
        }
        panic!("no quiescence after 1000 rounds");
    }

    pub fn feed_server(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let size = if self.feed_size == 0 { bytes.len().max(1) } else { self.feed_size };
        for piece in bytes.chunks(size) {
            let mut wire = BytesMut::from(piece);
            self.server.receive(&mut wire, &mut self.server_app).map_err(Failure::Server)?;
            assert!(wire.is_empty(), "receive must take all of wire");
        }
        Ok(())
    }

    /// Flushes the server and hands its output to the client. Whether there was any.
    pub fn server_to_client(&mut self) -> Result<bool, Failure> {
        let mut wire = Vec::new();
        self.server.flush(&mut wire).map_err(Failure::Server)?;
        self.deliver(&wire)
    }

    pub fn deliver(&mut self, wire: &[Bytes]) -> Result<bool, Failure> {
        let bytes: Vec<u8> = wire.concat();
        let mut rd = &bytes[..];
        while !rd.is_empty() {
            self.client.read_tls(&mut rd).unwrap();
            self.client.process_new_packets().map_err(Failure::Client)?;
            self.drain_client();
        }
        Ok(!bytes.is_empty())
    }

    /// Sends application chunks from the server and delivers them to the client.
    pub fn server_send(&mut self, chunks: Vec<Bytes>) -> Result<Vec<Bytes>, Failure> {
        let mut app = chunks;
        let mut wire = Vec::new();
        self.server.send(&mut app, &mut wire).map_err(Failure::Server)?;
        assert!(app.is_empty(), "send must take the chunks");
        self.deliver(&wire)?;
        Ok(wire)
    }

    pub fn client_write(&mut self, data: &[u8]) {
        self.client.writer().write_all(data).unwrap();
    }

    /// Plaintext the client has received since the last call, and whether the server's
    /// close_notify came.
    pub fn client_read(&mut self) -> (Vec<u8>, bool) {
        self.drain_client();
        (std::mem::take(&mut self.client_plain), self.client_eof)
    }

    fn drain_client(&mut self) {
        let mut buf = [0u8; 16384];
        loop {
            match self.client.reader().read(&mut buf) {
                Ok(0) => {
                    self.client_eof = true;
                    return;
                }
                Ok(n) => self.client_plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }
}

/// A masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Parses unmasked server frames; panics on anything else, or a partial frame.
pub fn server_frames(mut bytes: &[u8]) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (b0, b1) = (bytes[0], bytes[1]);
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        assert_eq!(b0 & 0x70, 0, "no reserved bits");
        let (len, at) = match b1 & 0x7F {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        frames.push(ServerFrame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, payload: bytes[at..at + len].to_vec() });
        bytes = &bytes[at + len..];
    }
    frames
}

pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A valid upgrade request with extra header lines (each ending in CRLF).
pub fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// The concatenated output of a flush.
pub fn flush(t: &mut Transport) -> Vec<u8> {
    let mut wire = Vec::new();
    t.flush(&mut wire).unwrap();
    wire.concat()
}

/// Small deterministic pseudo-random numbers (xorshift), for split points and payloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
