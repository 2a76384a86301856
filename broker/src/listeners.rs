//! The broker's listeners: plain MQTT, MQTT over TLS, over WebSocket and over secure
//! WebSocket, and the per-connection transport layer each kind needs.
//!
//! TLS and WebSocket are sans-IO layers (`promptmq-transport`) between the socket and the
//! MQTT core, so both runtimes serve every kind with the same code; a plain MQTT
//! connection has no layer at all. The TLS certificate is loaded at startup (an error stops
//! the broker) and again on SIGHUP: new connections get the new certificate, a certificate
//! that no longer loads keeps the old one in force.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use promptmq_transport::{
    ClientCertMode, MinTlsVersion, TlsConfig, TlsConfigError, TlsSettings, Transport, WsSettings,
};

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

/// What new connections need to set up their transport layer.
pub struct Transports {
    settings: Option<TlsSettings>,
    tls: RwLock<Option<TlsConfig>>,
    ws: WsSettings,
}

impl Transports {
    pub fn from_config(config: &Config) -> Result<Transports, TlsConfigError> {
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
        let tls = settings.as_ref().map(TlsSettings::load).transpose()?;
        let ws = WsSettings {
            // One WebSocket message may carry one MQTT packet or several.
            max_message_size: (config.max_packet_size as usize).saturating_mul(4),
            path: config.ws_path.clone(),
            ..WsSettings::default()
        };
        Ok(Transports { settings, tls: RwLock::new(tls), ws })
    }

    /// Loads the certificate and key again (SIGHUP). On error the old ones stay.
    pub fn reload(&self) -> Result<bool, TlsConfigError> {
        let Some(settings) = &self.settings else { return Ok(false) };
        let fresh = settings.load()?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        Ok(true)
    }

    /// The layer for a new connection on a listener of `kind`; `None` for plain MQTT (and
    /// for a TLS kind without a certificate, which `configured` never produces).
    pub fn for_kind(&self, kind: ListenerKind) -> Option<Box<Transport>> {
        let tls = || self.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
        match kind {
            ListenerKind::Mqtt => None,
            ListenerKind::Ws => Some(Box::new(Transport::ws(&self.ws))),
            ListenerKind::Tls => tls().map(|c| Box::new(Transport::tls(&c))),
            ListenerKind::Wss => tls().map(|c| Box::new(Transport::wss(&c, &self.ws))),
        }
    }
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports").field("tls", &self.settings.is_some()).finish()
    }
}

pub type SharedTransports = Arc<Transports>;
