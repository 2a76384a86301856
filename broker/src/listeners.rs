//! The broker's listeners: plain MQTT, MQTT over TLS, over WebSocket and over secure
//! WebSocket, and the per-connection transport layer each kind needs.
//!
//! TLS and WebSocket are sans-IO layers (`promptmq-transport`) between the socket and the
//! MQTT core, so both runtimes serve every kind with the same code; a plain MQTT
//! connection has no layer at all. The TLS certificate is loaded at startup (an error stops
//! the broker) and again on SIGHUP: new connections get the new certificate, a certificate
//! that no longer loads keeps the old one in force.
//!
//! TLS and WebSocket are cargo features (`tls`, `websocket`, both default): a build without
//! one refuses at startup a configuration that asks for its listeners.

use std::net::SocketAddr;
use std::sync::Arc;
#[cfg(feature = "tls")]
use std::sync::RwLock;

use promptmq_transport::Transport;
#[cfg(feature = "websocket")]
use promptmq_transport::WsSettings;
#[cfg(feature = "tls")]
use promptmq_transport::{ClientCertMode, MinTlsVersion, TlsConfig, TlsSettings};

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Mqtt,
    Tls,
    Ws,
    Wss,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Tls => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

/// The listeners the configuration asks for, plain MQTT first.
pub fn configured(config: &Config) -> Vec<(ListenerKind, SocketAddr)> {
    let mut out = vec![(ListenerKind::Mqtt, config.bind)];
    out.extend(config.effective_tls_bind().map(|a| (ListenerKind::Tls, a)));
    out.extend(config.ws_bind.map(|a| (ListenerKind::Ws, a)));
    out.extend(config.wss_bind.map(|a| (ListenerKind::Wss, a)));
    out
}

/// Why the listeners' transport layers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportSetupError {
    #[cfg(feature = "tls")]
    #[error("TLS: {0}")]
    Tls(#[from] promptmq_transport::TlsConfigError),
    /// The configuration asks for a listener this build leaves out (cargo features).
    #[error("{setting} is set, but this build has no {what} (cargo feature `{feature}`)")]
    NotBuilt { setting: &'static str, what: &'static str, feature: &'static str },
}

/// What new connections need to set up their transport layer.
pub struct Transports {
    #[cfg(feature = "tls")]
    settings: Option<TlsSettings>,
    #[cfg(feature = "tls")]
    tls: RwLock<Option<TlsConfig>>,
    #[cfg(feature = "websocket")]
    ws: WsSettings,
}

impl Transports {
    pub fn from_config(config: &Config) -> Result<Transports, TransportSetupError> {
        #[cfg(not(feature = "tls"))]
        if config.tls_cert.is_some() || config.tls_bind.is_some() || config.wss_bind.is_some() {
            let setting = "server.tls-cert, server.tls-bind or server.wss-bind";
            return Err(TransportSetupError::NotBuilt { setting, what: "TLS", feature: "tls" });
        }
        #[cfg(not(feature = "websocket"))]
        if config.ws_bind.is_some() || config.wss_bind.is_some() {
            let setting = "server.ws-bind or server.wss-bind";
            return Err(TransportSetupError::NotBuilt { setting, what: "WebSocket", feature: "websocket" });
        }
        #[cfg(feature = "tls")]
        let settings = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: config.tls_ca.clone(),
                client_cert: ClientCertMode::Required,
                min_version: if config.tls_min_version == "1.3" { MinTlsVersion::Tls13 } else { MinTlsVersion::Tls12 },
            }),
            _ => None,
        };
        #[cfg(feature = "tls")]
        let tls = settings.as_ref().map(TlsSettings::load).transpose()?;
        #[cfg(feature = "websocket")]
        let ws = WsSettings {
            // One WebSocket message may carry one MQTT packet or several.
            max_message_size: (config.max_packet_size as usize).saturating_mul(4),
            path: config.ws_path.clone(),
            ..WsSettings::default()
        };
        Ok(Transports {
            #[cfg(feature = "tls")]
            settings,
            #[cfg(feature = "tls")]
            tls: RwLock::new(tls),
            #[cfg(feature = "websocket")]
            ws,
        })
    }

    /// Loads the certificate and key again (SIGHUP). On error the old ones stay.
    pub fn reload(&self) -> Result<bool, TransportSetupError> {
        #[cfg(feature = "tls")]
        if let Some(settings) = &self.settings {
            let fresh = settings.load()?;
            *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
            return Ok(true);
        }
        Ok(false)
    }

    /// The layer for a new connection on a listener of `kind`; `None` for plain MQTT (and
    /// for a kind this build or configuration lacks, which `from_config` refuses and
    /// `configured` never produces).
    pub fn for_kind(&self, kind: ListenerKind) -> Option<Box<Transport>> {
        #[cfg(feature = "tls")]
        let tls = || self.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
        match kind {
            ListenerKind::Mqtt => None,
            #[cfg(feature = "websocket")]
            ListenerKind::Ws => Some(Box::new(Transport::ws(&self.ws))),
            #[cfg(feature = "tls")]
            ListenerKind::Tls => tls().map(|c| Box::new(Transport::tls(&c))),
            #[cfg(all(feature = "tls", feature = "websocket"))]
            ListenerKind::Wss => tls().map(|c| Box::new(Transport::wss(&c, &self.ws))),
            #[allow(unreachable_patterns)] // with every feature, the arms above cover all kinds
            _ => None,
        }
    }
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Transports");
        #[cfg(feature = "tls")]
        d.field("tls", &self.settings.is_some());
        d.finish()
    }
}

pub type SharedTransports = Arc<Transports>;
