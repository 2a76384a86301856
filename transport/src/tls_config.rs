//! Building the rustls server configuration from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

/// The ALPN protocol name MQTT clients offer (AWS IoT's convention, also IANA-registered).
pub const ALPN_MQTT: &[u8] = b"mqtt";

/// The oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinTlsVersion {
    #[default]
    Tls12,
    Tls13,
}

impl std::str::FromStr for MinTlsVersion {
    type Err = String;

    /// Accepts `1.2`, `1.3`, `tlsv1.2`, `tlsv1.3` (mosquitto's spelling), any case.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.strip_prefix("tlsv").unwrap_or(&s) {
            "1.2" => Ok(MinTlsVersion::Tls12),
            "1.3" => Ok(MinTlsVersion::Tls13),
            _ => Err(format!("unsupported TLS version {s:?} (expected 1.2 or 1.3)")),
        }
    }
}

/// Whether clients must present a certificate. Only used when a CA file is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCertMode {
    /// Connections without a valid client certificate are refused (mutual TLS).
    #[default]
    Required,
    /// A client certificate is verified if presented; clients without one are accepted too.
    Optional,
}

/// Where a TLS listener's keys come from, and its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates are verified against. `None`: clients are
    /// not asked for a certificate.
    pub client_ca_file: Option<PathBuf>,
    pub client_cert: ClientCertMode,
    pub min_version: MinTlsVersion,
}

/// Why a TLS configuration could not be built. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: no CERTIFICATE found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found (expected a PKCS#8, RSA or EC private key in PEM)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: CA certificate rejected: {source}", path.display())]
    BadCa { path: PathBuf, source: rustls::Error },
    #[error("{}: {source}", path.display())]
    Verifier { path: PathBuf, source: VerifierBuilderError },
    #[error("{} and {} do not make a usable certificate and key: {source}", cert.display(), key.display())]
    CertKey { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS protocol versions: {0}")]
    Versions(rustls::Error),
}

/// A loaded TLS configuration, shared by all connections of a listener.
///
/// Holds the server configuration twice, with and without ALPN: rustls refuses a client whose
/// ALPN offer shares nothing with a non-empty server list, and browsers (WebSocket over TLS)
/// offer `http/1.1`, other MQTT clients offer nothing or other names. So `mqtt` is selected when
/// offered, and otherwise ALPN is left out of the handshake.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) with_alpn: Arc<ServerConfig>,
    pub(crate) without_alpn: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// From a configuration built elsewhere. Its `alpn_protocols` are replaced.
    pub fn from_server_config(config: ServerConfig) -> Self {
        let mut with_alpn = config.clone();
        with_alpn.alpn_protocols = vec![ALPN_MQTT.to_vec()];
        let mut without_alpn = config;
        without_alpn.alpn_protocols = Vec::new();
        TlsConfig { with_alpn: Arc::new(with_alpn), without_alpn: Arc::new(without_alpn) }
    }
}

impl TlsSettings {
    /// Settings without client certificates and with TLS 1.2 as the minimum.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        TlsSettings {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            client_cert: ClientCertMode::Required,
            min_version: MinTlsVersion::Tls12,
        }
    }

    /// Reads the files and builds the configuration.
    pub fn load(&self) -> Result<TlsConfig, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = load_certs(&self.cert_file)?;
        let key = load_key(&self.key_file)?;
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.min_version {
            MinTlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinTlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(TlsConfigError::Versions)?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, self.client_cert, provider)?),
        };
        let config = builder.with_single_cert(chain, key).map_err(|source| TlsConfigError::CertKey {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            source,
        })?;
        Ok(TlsConfig::from_server_config(config))
    }
}

fn client_verifier(
    path: &Path,
    mode: ClientCertMode,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsConfigError::BadCa { path: path.to_owned(), source })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match mode {
        ClientCertMode::Required => builder,
        ClientCertMode::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|source| TlsConfigError::Verifier { path: path.to_owned(), source })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read { path: path.to_owned(), source })
}

fn pem_error(path: &Path, error: pem::Error) -> TlsConfigError {
    TlsConfigError::Pem { path: path.to_owned(), reason: error.to_string() }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsConfigError::NoKey { path: path.to_owned() },
        e => pem_error(path, e),
    })
}
