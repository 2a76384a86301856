//! The config-file keys and the flags they set.
//!
//! Names follow the Go PromptMQ this broker replaces where it had the key. The environment
//! variable of a key is `PROMPTMQ_` + the key upper-cased with `.` and `-` as `_`; a test
//! checks that every flag's `env` follows that rule and that every flag has exactly one key,
//! so the file, the environment and the command line always name the same settings.

/// One setting: its config-file key and the `Config` field (clap argument id) it fills.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub arg: &'static str,
}

const fn key(name: &'static str, arg: &'static str) -> Key {
    Key { name, arg }
}

/// Every key, grouped by section (`config show` prints them in this order).
pub const KEYS: &[Key] = &[
    key("server.bind", "bind"),
    key("server.tls-bind", "tls_bind"),
    key("server.tls-cert", "tls_cert"),
    key("server.tls-key", "tls_key"),
    key("server.tls-ca", "tls_ca"),
    key("server.tls-min-version", "tls_min_version"),
    key("server.ws-bind", "ws_bind"),
    key("server.wss-bind", "wss_bind"),
    key("server.ws-path", "ws_path"),
    key("server.cores", "cores"),
    key("server.accept-mode", "accept_mode"),
    key("mqtt.max-qos", "max_qos"),
    key("mqtt.retain-available", "retain_available"),
    key("mqtt.keep-alive", "keep_alive"),
    key("mqtt.max-connections", "max_connections"),
    key("mqtt.max-publish-rate", "max_publish_rate"),
    key("mqtt.max-keep-alive", "max_keep_alive"),
    key("mqtt.max-packet-size", "max_packet_size"),
    key("mqtt.max-inflight", "max_inflight"),
    key("mqtt.max-queued-messages", "max_queued_messages"),
    key("mqtt.max-queued-bytes", "max_queued_bytes"),
    key("mqtt.queue-drop-policy", "queue_drop_policy"),
    key("mqtt.topic-alias-maximum", "topic_alias_maximum"),
    key("mqtt.max-write-buffer", "max_write_buffer"),
    key("mqtt.sys-interval", "sys_interval"),
    key("storage.data-dir", "data_dir"),
    key("storage.wal.enabled", "wal_enabled"),
    key("storage.wal.sync-mode", "wal_sync_mode"),
    key("storage.wal.sync-interval", "wal_sync_interval"),
    key("storage.wal.batch-sync-size", "wal_batch_sync_size"),
    key("storage.wal.segment-size", "wal_segment_size"),
    key("storage.retention.max-message-age", "retention_max_message_age"),
    key("storage.retention.max-size", "retention_max_size"),
    key("auth.allow-anonymous", "allow_anonymous"),
    key("auth.use-identity-as-username", "use_identity_as_username"),
    key("auth.password-file", "password_file"),
    key("auth.acl-file", "acl_file"),
    key("metrics.enabled", "metrics_enabled"),
    key("metrics.bind", "metrics_bind"),
    key("metrics.path", "metrics_path"),
    key("log.level", "log_level"),
    key("log.format", "log_format"),
];

/// Keys of one section must be adjacent (`config show` prints each section once).
/// Flags that are not settings and so have no key.
pub const NOT_KEYS: &[&str] = &["config_file"];

/// The environment variable that sets `key`.
pub fn env_name(key: &str) -> String {
    let mut env = String::from("PROMPTMQ_");
    env.extend(key.chars().map(|c| if c == '.' || c == '-' { '_' } else { c.to_ascii_uppercase() }));
    env
}

pub fn by_name(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}
