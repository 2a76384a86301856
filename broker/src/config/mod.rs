//! The broker's configuration: one type, defaults in one place.
//!
//! [`Config`] is a clap parser: every setting is a command-line flag with a default and a
//! `PROMPTMQ_*` environment variable. A YAML file (`--config`) sits between the defaults and
//! the environment: [`layers`] maps its dotted keys (`storage.wal.sync-mode`) onto the same
//! flags, so each value goes through one parser whichever layer it came from. Precedence:
//! flag > environment > file > default. [`keys::KEYS`] is the list of keys; a unit test
//! checks it against the flags, so no key can exist without a field that uses it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

pub mod keys;
pub mod layers;
pub mod units;

/// Everything the broker can be told. Every field is used; its doc says where.
#[derive(Debug, Clone, Parser)]
#[command(name = "promptmq", version = crate::VERSION_STRING, about = "A fast, durable MQTT 3.1.1 and 5.0 broker")]
pub struct Config {
    /// A YAML config file; its keys are listed by `promptmq config show`. Flags and
    /// `PROMPTMQ_*` variables override what it says.
    #[arg(long = "config", env = "PROMPTMQ_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Address of the MQTT TCP listener.
    #[arg(long, env = "PROMPTMQ_SERVER_BIND", default_value = "0.0.0.0:1883")]
    pub bind: SocketAddr,

    /// MQTT over TLS. Defaults to 0.0.0.0:8883 when a certificate is configured
    /// (`server.tls-cert` and `server.tls-key`).
    #[arg(long, env = "PROMPTMQ_SERVER_TLS_BIND", requires = "tls_cert")]
    pub tls_bind: Option<SocketAddr>,

    /// Certificate chain (PEM) of the TLS and secure WebSocket listeners.
    #[arg(long, env = "PROMPTMQ_SERVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `server.tls-cert`.
    #[arg(long, env = "PROMPTMQ_SERVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM): when set, TLS clients must present a certificate signed by
    /// one of them (mutual TLS).
    #[arg(long, env = "PROMPTMQ_SERVER_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Oldest TLS version accepted: 1.2 or 1.3.
    #[arg(long, env = "PROMPTMQ_SERVER_TLS_MIN_VERSION", default_value = "1.2", value_parser = parse_tls_version)]
    pub tls_min_version: String,

    /// MQTT over WebSocket (subprotocol `mqtt`), e.g. 0.0.0.0:8080. Off unless set.
    #[arg(long, env = "PROMPTMQ_SERVER_WS_BIND")]
    pub ws_bind: Option<SocketAddr>,

    /// MQTT over secure WebSocket (TLS with `server.tls-cert`), e.g. 0.0.0.0:8443.
    #[arg(long, env = "PROMPTMQ_SERVER_WSS_BIND", requires = "tls_cert")]
    pub wss_bind: Option<SocketAddr>,

    /// The HTTP path WebSocket clients must request (e.g. `/mqtt`); any path when unset.
    #[arg(long, env = "PROMPTMQ_SERVER_WS_PATH")]
    pub ws_path: Option<String>,

    /// Accept clients that send no username. With a password file, clients that do send
    /// one must match it either way.
    #[arg(long, env = "PROMPTMQ_AUTH_ALLOW_ANONYMOUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_anonymous: bool,

    /// On listeners that verify client certificates (`server.tls-ca`), the certificate's
    /// subject CN is the client's user name, for logins and the ACL, and whatever user name
    /// and password the client sends are ignored (mosquitto's `use_identity_as_username`).
    #[arg(long, env = "PROMPTMQ_AUTH_USE_IDENTITY_AS_USERNAME", default_value_t = false, action = clap::ArgAction::Set, requires_if("true", "tls_ca"))]
    pub use_identity_as_username: bool,

    /// Password file in mosquitto's format (`user:hash`, hashes from `mosquitto_passwd` or
    /// `promptmq passwd`). Reloaded on SIGHUP.
    #[arg(long, env = "PROMPTMQ_AUTH_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// ACL file in mosquitto's format (`user`, `topic`, `pattern` lines). Without one,
    /// every client may publish and subscribe to everything. Reloaded on SIGHUP.
    #[arg(long, env = "PROMPTMQ_AUTH_ACL_FILE")]
    pub acl_file: Option<PathBuf>,

    /// Worker threads, one per core, each owning a shard of the topics (0 = number of CPUs;
    /// at most 1024).
    #[arg(long, env = "PROMPTMQ_SERVER_CORES", default_value_t = 0, value_parser = parse_cores)]
    pub cores: usize,

    /// Directory for durable state; created if missing.
    #[arg(long, env = "PROMPTMQ_STORAGE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Keep the write-ahead log: QoS 1/2 and retained messages are appended to the owning
    /// shard's log under `<data-dir>/wal/`, and retained messages survive restarts.
    /// `false` runs without a log (for benchmarks against a log-less baseline).
    #[arg(long, env = "PROMPTMQ_STORAGE_WAL_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub wal_enabled: bool,

    /// When a logged message is durable. `immediate`: PUBACK/PUBREC only after the fdatasync
    /// that covers it (group commit). `batch`: sync every --wal-batch-sync-size records or
    /// --wal-sync-interval, whichever first. `periodic`: sync every --wal-sync-interval; a
    /// crash can lose that interval. `none`: never sync (benchmarks). Acknowledgements wait
    /// for durability only in `immediate` mode.
    #[arg(long, env = "PROMPTMQ_STORAGE_WAL_SYNC_MODE", value_enum, default_value_t = WalSyncMode::Immediate)]
    pub wal_sync_mode: WalSyncMode,

    /// Interval of `periodic` syncs and the longest wait of a `batch` sync, in milliseconds
    /// (or with a unit: `250ms`, `1s`; at most one minute).
    #[arg(long, env = "PROMPTMQ_STORAGE_WAL_SYNC_INTERVAL", default_value_t = 100, value_parser = parse_sync_interval)]
    pub wal_sync_interval: u64,

    /// Records after which a `batch` sync happens.
    #[arg(long, env = "PROMPTMQ_STORAGE_WAL_BATCH_SYNC_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub wal_batch_sync_size: u64,

    /// Size of each WAL segment file in bytes (a multiple of 4096, at least 65536; `64MiB`).
    #[arg(long, env = "PROMPTMQ_STORAGE_WAL_SEGMENT_SIZE", default_value_t = 64 * 1024 * 1024, value_parser = parse_segment_size)]
    pub wal_segment_size: u64,

    /// Delete log segments whose newest record is older than this many seconds or this
    /// duration (`7d`, `12h`; 0 = keep
    /// regardless of age). Data still needed is kept: messages owed to persistent sessions,
    /// and retained messages and session state, which are rewritten ahead of the cut.
    #[arg(long, env = "PROMPTMQ_STORAGE_RETENTION_MAX_MESSAGE_AGE", default_value_t = 7 * 24 * 3600, value_parser = parse_age_secs)]
    pub retention_max_message_age: u64,

    /// Keep each shard's log under this many bytes (or `10GiB`) by deleting its oldest
    /// segments (0 = no limit), with the same exceptions as the age limit.
    #[arg(long, env = "PROMPTMQ_STORAGE_RETENTION_MAX_SIZE", default_value_t = 0, value_parser = parse_size)]
    pub retention_max_size: u64,

    /// How connections reach the cores: `reuseport` (each core accepts on its own
    /// SO_REUSEPORT listener; Linux only) or `handoff` (core 0 accepts and hands sockets to
    /// the cores round-robin). The default picks reuseport where the kernel balances it.
    #[arg(long, env = "PROMPTMQ_SERVER_ACCEPT_MODE", value_enum, default_value_t = AcceptMode::platform_default())]
    pub accept_mode: AcceptMode,

    /// Serve Prometheus metrics and a health check over HTTP on `metrics.bind`.
    #[arg(long, env = "PROMPTMQ_METRICS_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_enabled: bool,

    /// Address of the metrics endpoint (with `metrics.enabled`). `/health` is served there too:
    /// 200 while every core is running and every log writable, else 503 with the reason.
    #[arg(long, env = "PROMPTMQ_METRICS_BIND", default_value = "0.0.0.0:9090")]
    pub metrics_bind: SocketAddr,

    /// HTTP path of the Prometheus metrics.
    #[arg(long, env = "PROMPTMQ_METRICS_PATH", default_value = "/metrics", value_parser = parse_http_path)]
    pub metrics_path: String,

    /// Seconds between updates of the `$SYS/broker/...` topics (0 = none).
    #[arg(long, env = "PROMPTMQ_MQTT_SYS_INTERVAL", default_value_t = 10, value_parser = parse_age_secs)]
    pub sys_interval: u64,

    /// Log format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, env = "PROMPTMQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter: error, warn, info, debug, trace (or a tracing EnvFilter directive).
    #[arg(long, env = "PROMPTMQ_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Largest keep-alive granted, in seconds. An MQTT 5 client asking for more is told this
    /// value as Server Keep Alive in CONNACK.
    #[arg(long, env = "PROMPTMQ_MQTT_MAX_KEEP_ALIVE", default_value_t = 65535, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_keep_alive: u16,

    /// Highest QoS the broker takes: announced as Maximum QoS (5.0); subscriptions are
    /// granted at most this; a PUBLISH above it closes the connection (5.0: 0x9B).
    #[arg(long, env = "PROMPTMQ_MQTT_MAX_QOS", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub max_qos: u8,

    /// Whether retained messages are kept. `false`: announced as Retain Available 0 (5.0),
    /// a retained PUBLISH closes a 5.0 connection (0x9A), a 3.1.1 one is delivered unretained.
    #[arg(long, env = "PROMPTMQ_MQTT_RETAIN_AVAILABLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub retain_available: bool,

    /// Keep-alive imposed, in seconds, on MQTT 5 clients that ask for none (0): they are told
    /// it as Server Keep Alive. 0 lets them go without.
    #[arg(long, env = "PROMPTMQ_MQTT_KEEP_ALIVE", default_value_t = 0)]
    pub keep_alive: u16,

    /// Most client connections at once, over all listeners (0 = no limit). Beyond it a
    /// CONNECT is refused (5.0: 0x97 Quota exceeded; 3.1.1: 3 Server unavailable).
    #[arg(long, env = "PROMPTMQ_MQTT_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// PUBLISH packets per second one client may send (0 = no limit). A faster client is
    /// not disconnected: the broker reads from it more slowly.
    #[arg(long, env = "PROMPTMQ_MQTT_MAX_PUBLISH_RATE", default_value_t = 0)]
    pub max_publish_rate: u32,

    /// Largest MQTT packet accepted, in bytes (announced as Maximum Packet Size in 5.0);
    /// larger packets close the connection with reason 0x95.
    #[arg(long, env = "PROMPTMQ_MQTT_MAX_PACKET_SIZE", default_value_t = 1024 * 1024, value_parser = parse_packet_size)]
    pub max_packet_size: u32,

    /// Receive Maximum: QoS 1/2 publishes a client may have unacknowledged towards the
    /// broker (a 5.0 client that sends more gets DISCONNECT 0x93; a 3.1.1 client, which is
    /// not told, has its further QoS 1 publishes read once PUBACKs free places, and more QoS 2
    /// exchanges close its connection), and the cap on the broker's own outbound window.
    #[arg(long, env = "PROMPTMQ_MQTT_MAX_INFLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_inflight: u16,

    /// Messages queued per session beyond its inflight window (offline persistent sessions
    /// and slow consumers). When full, the oldest queued message is dropped and counted.
    #[arg(long, env = "PROMPTMQ_MQTT_MAX_QUEUED_MESSAGES", default_value_t = 1000)]
    pub max_queued_messages: usize,

    /// Bytes (topic and payload) queued per session beyond its inflight window, `0` = no
    /// byte limit (or with a unit: `16MiB`). Together with `max-queued-messages`, whichever
    /// is reached first; the drop policy decides what goes.
    #[arg(long, env = "PROMPTMQ_MQTT_MAX_QUEUED_BYTES", default_value_t = 0, value_parser = parse_usize_size)]
    pub max_queued_bytes: usize,

    /// What a full session queue drops: the oldest queued message (`drop-oldest`) or the
    /// one arriving (`drop-newest`). Either way the drop is counted.
    #[arg(long, env = "PROMPTMQ_MQTT_QUEUE_DROP_POLICY", value_enum, default_value_t = DropPolicy::DropOldest)]
    pub queue_drop_policy: DropPolicy,

    /// Topic Alias Maximum announced to MQTT 5 clients (client-to-broker aliases); 0 disables.
    #[arg(long, env = "PROMPTMQ_MQTT_TOPIC_ALIAS_MAXIMUM", default_value_t = 1024)]
    pub topic_alias_maximum: u16,

    /// Bytes that may wait in one connection's write queue before QoS 0 messages to it are
    /// dropped (QoS 1/2 wait in the session queue instead).
    #[arg(long, env = "PROMPTMQ_MQTT_MAX_WRITE_BUFFER", default_value_t = 4 * 1024 * 1024, value_parser = parse_write_buffer)]
    pub max_write_buffer: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WalSyncMode {
    Immediate,
    Batch,
    Periodic,
    None,
}

fn parse_cores(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= MAX_CORES => Ok(n),
        _ => Err(format!("expected a number of cores from 0 (one per CPU) to {MAX_CORES}")),
    }
}

/// More cores than any machine this runs on has; the client-id registry packs a core number
/// in 16 bits.
pub const MAX_CORES: usize = 1024;

fn parse_segment_size(s: &str) -> Result<u64, String> {
    let v = units::parse_size(s)?;
    if v < 65_536 || !v.is_multiple_of(4096) {
        return Err(format!("{v} is not a multiple of 4096 of at least 65536"));
    }
    Ok(v)
}

fn parse_http_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.contains(char::is_whitespace) && s != "/health" {
        Ok(s.to_string())
    } else {
        Err("expected a path starting with / (not /health, which is the health check)".to_string())
    }
}

fn parse_tls_version(s: &str) -> Result<String, String> {
    match s {
        "1.2" | "1.3" => Ok(s.to_string()),
        _ => Err("expected 1.2 or 1.3".to_string()),
    }
}

fn parse_sync_interval(s: &str) -> Result<u64, String> {
    match units::parse_duration_ms(s, 1)? {
        v @ 1..=60_000 => Ok(v),
        v => Err(format!("{v} ms is outside 1ms..=60s")),
    }
}

fn parse_age_secs(s: &str) -> Result<u64, String> {
    match units::parse_duration_ms(s, 1000)? {
        ms @ 1..=999 => Err(format!("{ms} ms is below this setting's resolution of one second (0 turns it off)")),
        ms if ms % 1000 != 0 => Err(format!("{ms} ms is not a whole number of seconds")),
        ms => Ok(ms / 1000),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    units::parse_size(s)
}

fn parse_packet_size(s: &str) -> Result<u32, String> {
    match units::parse_size(s)? {
        v @ 16..=268_435_460 => Ok(v as u32),
        v => Err(format!("{v} is outside 16..=268435460 (the largest packet MQTT can encode)")),
    }
}

fn parse_usize_size(s: &str) -> Result<usize, String> {
    let v = units::parse_size(s)?;
    usize::try_from(v).map_err(|_| format!("{v} is too large"))
}

fn parse_write_buffer(s: &str) -> Result<usize, String> {
    match units::parse_size(s)? {
        v @ 1024.. => usize::try_from(v).map_err(|_| format!("{v} is too large")),
        v => Err(format!("{v} is below 1024 bytes")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DropPolicy {
    DropOldest,
    DropNewest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcceptMode {
    Reuseport,
    Handoff,
}

impl AcceptMode {
    pub fn platform_default() -> AcceptMode {
        if crate::server::rt::reuseport_supported() {
            AcceptMode::Reuseport
        } else {
            AcceptMode::Handoff
        }
    }
}

impl Config {
    /// The TLS listener's address: `tls_bind`, or 0.0.0.0:8883 when a certificate is set.
    pub fn effective_tls_bind(&self) -> Option<SocketAddr> {
        self.tls_bind.or_else(|| self.tls_cert.as_ref().map(|_| SocketAddr::from(([0, 0, 0, 0], 8883))))
    }

    /// The number of cores to run: `cores`, or the number of CPUs when it is 0.
    pub fn effective_cores(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(MAX_CORES)
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::parse_from(["promptmq"])
    }
}
