//! The Prometheus text exposition (format 0.0.4) of [`Metrics`].
//!
//! Layout: every family is one `# HELP` line, one `# TYPE` line, then its samples, and no
//! family appears twice. Counters end in `_total`; durations are in seconds, sizes in bytes.
//! Counters are summed over cores; the gauges that show how load spreads over cores
//! (connections, inflight, queued) and the message counters also have a `promptmq_core_*`
//! family with a `core` label, kept apart from the totals so that `sum()` never counts twice.

use std::fmt::{Display, Write};

use super::histogram::{Histogram, BUCKETS};
use super::registry::{CoreMetrics, Counter, Gauge, Metrics};

/// What the exposition needs that is not a counter; filled by the server for each scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerInfo {
    /// Version string, e.g. [`crate::VERSION_STRING`]; the `version` label of
    /// `promptmq_build_info`.
    pub version: String,
    /// The runtime the cores run on (e.g. `uring`, `epoll`, `tokio`); the `runtime` label of
    /// `promptmq_build_info`.
    pub runtime: String,
    /// Seconds since the broker started.
    pub uptime_seconds: f64,
    /// The configured connection limit, if any (`promptmq_connections_limit`).
    pub max_connections: Option<u64>,
}

/// Selects one counter of a core.
type CounterOf = fn(&CoreMetrics) -> &Counter;
/// Selects one gauge of a core.
type GaugeOf = fn(&CoreMetrics) -> &Gauge;

/// Drop reasons: label value and the counter.
const DROP_REASONS: [(&str, CounterOf); 8] = [
    ("queue_full", |c| &c.dropped_queue_full),
    ("offline_qos0", |c| &c.dropped_offline_qos0),
    ("slow_qos0", |c| &c.dropped_slow_qos0),
    ("too_large", |c| &c.dropped_too_large),
    ("expired", |c| &c.dropped_expired),
    ("stale_session", |c| &c.dropped_stale_session),
    ("journal_rejected", |c| &c.journal_rejected),
    ("journal_failed_acks", |c| &c.journal_failed_acks),
];

/// Totals of the per-core gauges: name, help, gauge.
const GAUGE_TOTALS: [(&str, &str, GaugeOf); 7] = [
    ("promptmq_connections", "Open client connections (including those that have not sent CONNECT yet).", |c| {
        &c.connections
    }),
    ("promptmq_sessions", "Sessions, connected or not.", |c| &c.sessions),
    ("promptmq_retained_messages", "Retained messages.", |c| &c.retained_messages),
    ("promptmq_subscriptions", "Subscriptions (topic filters).", |c| &c.subscriptions),
    ("promptmq_inflight_messages", "Outbound QoS 1 and 2 messages sent and not yet acknowledged.", |c| {
        &c.inflight_messages
    }),
    ("promptmq_queued_messages", "Messages waiting in session queues.", |c| &c.queued_messages),
    (
        "promptmq_parked_connections",
        "Idle connections waiting in their core's epoll set, without a task of their own (io_uring runtime).",
        |c| &c.parked_connections,
    ),
];

/// Per-core gauges: name, help, gauge.
const GAUGE_PER_CORE: [(&str, &str, GaugeOf); 3] = [
    ("promptmq_core_connections", "Open client connections, per core.", |c| &c.connections),
    (
        "promptmq_core_inflight_messages",
        "Outbound QoS 1 and 2 messages sent and not yet acknowledged, per core.",
        |c| &c.inflight_messages,
    ),
    ("promptmq_core_queued_messages", "Messages waiting in session queues, per core.", |c| &c.queued_messages),
];

impl Metrics {
    /// Appends the Prometheus text exposition (format 0.0.4) of every metric to `out`.
    pub fn render(&self, out: &mut String, info: &BrokerInfo) {
        let mut w = Writer { out };

        w.family("promptmq_build_info", "gauge", "Build information; the value is always 1.");
        w.sample("promptmq_build_info", &[("version", &info.version), ("runtime", &info.runtime)], 1);
        w.family("promptmq_uptime_seconds", "gauge", "Seconds since the broker started.");
        w.sample("promptmq_uptime_seconds", &[], F64(info.uptime_seconds));
        w.family("promptmq_cores", "gauge", "Core threads, each owning its connections and a shard of the topics.");
        w.sample("promptmq_cores", &[], self.cores().len());
        if let Some(max) = info.max_connections {
            w.family("promptmq_connections_limit", "gauge", "Configured maximum number of client connections.");
            w.sample("promptmq_connections_limit", &[], max);
        }

        // Connections.
        w.counter(
            "promptmq_connections_accepted_total",
            "Network connections accepted.",
            self.sum_counter(|c| &c.connections_accepted),
        );
        w.counter(
            "promptmq_connections_closed_total",
            "Network connections closed, for any reason.",
            self.sum_counter(|c| &c.connections_closed),
        );
        w.family(
            "promptmq_connections_refused_total",
            "counter",
            "Connections refused by reason (authentication failures are in promptmq_auth_failures_total).",
        );
        w.sample(
            "promptmq_connections_refused_total",
            &[("reason", "limit")],
            self.sum_counter(|c| &c.connections_refused_limit),
        );
        w.counter(
            "promptmq_publish_rate_limited_total",
            "Times a client's reading was paused for going over mqtt.max-publish-rate (nothing is dropped).",
            self.sum_counter(|c| &c.publish_rate_limited),
        );
        w.counter(
            "promptmq_auth_failures_total",
            "Authentications refused for bad credentials.",
            self.sum_counter(|c| &c.auth_failures),
        );
        w.family(
            "promptmq_acl_denied_total",
            "counter",
            "Operations refused by the ACL, by action (read: a message not delivered to a subscriber).",
        );
        w.sample("promptmq_acl_denied_total", &[("action", "publish")], self.sum_counter(|c| &c.acl_denied_publish));
        w.sample(
            "promptmq_acl_denied_total",
            &[("action", "subscribe")],
            self.sum_counter(|c| &c.acl_denied_subscribe),
        );
        w.sample("promptmq_acl_denied_total", &[("action", "read")], self.sum_counter(|c| &c.acl_denied_read));

        // Traffic.
        w.family("promptmq_messages_received_total", "counter", "PUBLISH packets received from clients, by QoS.");
        for (qos, label) in ["0", "1", "2"].iter().enumerate() {
            w.sample(
                "promptmq_messages_received_total",
                &[("qos", label)],
                self.sum_counter(|c| &c.messages_received[qos]),
            );
        }
        w.family("promptmq_messages_sent_total", "counter", "PUBLISH packets sent to clients, by QoS.");
        for (qos, label) in ["0", "1", "2"].iter().enumerate() {
            w.sample("promptmq_messages_sent_total", &[("qos", label)], self.sum_counter(|c| &c.messages_sent[qos]));
        }
        w.counter(
            "promptmq_received_bytes_total",
            "Bytes read from client connections.",
            self.sum_counter(|c| &c.bytes_received),
        );
        w.counter(
            "promptmq_sent_bytes_total",
            "Bytes written to client connections.",
            self.sum_counter(|c| &c.bytes_sent),
        );

        // Losses.
        w.family("promptmq_messages_dropped_total", "counter", "Messages not delivered or not accepted, by reason.");
        for (reason, counter) in DROP_REASONS {
            w.sample("promptmq_messages_dropped_total", &[("reason", reason)], self.sum_counter(counter));
        }
        w.counter(
            "promptmq_ring_overflows_total",
            "Cross-core messages that waited in an overflow queue because a ring was full (not a loss).",
            self.sum_counter(|c| &c.ring_overflows),
        );
        w.counter(
            "promptmq_overloads_total",
            "Times a core's connected, acknowledging clients had more queued (or on its way to them from another core) than it delivers soon, and publishers were read more slowly and their PUBACK/PUBREC held back (not a loss).",
            self.sum_counter(|c| &c.overloads),
        );

        // Gauges: totals, then per core.
        for (name, help, gauge) in GAUGE_TOTALS {
            w.family(name, "gauge", help);
            w.sample(name, &[], self.sum_gauge(gauge));
        }
        let core_labels: Vec<String> = (0..self.cores().len()).map(|i| i.to_string()).collect();
        for (name, help, gauge) in GAUGE_PER_CORE {
            w.family(name, "gauge", help);
            for (core, label) in self.cores().iter().zip(&core_labels) {
                w.sample(name, &[("core", label)], gauge(core).get());
            }
        }
        w.family(
            "promptmq_core_messages_received_total",
            "counter",
            "PUBLISH packets received from clients, per core.",
        );
        for (core, label) in self.cores().iter().zip(&core_labels) {
            w.sample("promptmq_core_messages_received_total", &[("core", label)], core.messages_received_total());
        }
        w.family("promptmq_core_messages_sent_total", "counter", "PUBLISH packets sent to clients, per core.");
        for (core, label) in self.cores().iter().zip(&core_labels) {
            w.sample("promptmq_core_messages_sent_total", &[("core", label)], core.messages_sent_total());
        }

        // WAL histograms, per shard.
        let shard_labels: Vec<String> = (0..self.wal_shards().len()).map(|i| i.to_string()).collect();
        w.family(
            "promptmq_wal_durable_latency_seconds",
            "histogram",
            "Time from appending a record to a WAL shard until it was durable.",
        );
        for (wal, label) in self.wal_shards().iter().zip(&shard_labels) {
            w.histogram("promptmq_wal_durable_latency_seconds", label, wal.durable_latency());
        }
        w.family("promptmq_wal_sync_duration_seconds", "histogram", "Duration of one fdatasync of a WAL shard's log.");
        for (wal, label) in self.wal_shards().iter().zip(&shard_labels) {
            w.histogram("promptmq_wal_sync_duration_seconds", label, wal.sync());
        }
    }
}

/// An `f64` sample value in the exposition's spelling (`+Inf`, `-Inf`, `NaN`).
struct F64(f64);

impl Display for F64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v == f64::INFINITY {
            f.write_str("+Inf")
        } else if v == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            // Rust's Display for f64 never uses an exponent and round-trips exactly.
            write!(f, "{v}")
        }
    }
}

/// Appends exposition lines to a `String`. Writing to a `String` cannot fail, so the
/// `fmt::Result`s are discarded.
struct Writer<'a> {
    out: &'a mut String,
}

impl Writer<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_into(self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind);
        self.out.push('\n');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_into(self.out, v, true);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, shard: &str, h: &Histogram) {
        let s = h.snapshot();
        for ((_, le), count) in BUCKETS.iter().zip(&s.cumulative) {
            let _ = writeln!(self.out, "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {count}");
        }
        let _ = writeln!(self.out, "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(self.out, "{name}_sum{{shard=\"{shard}\"}} {}", F64(s.sum_seconds));
        let _ = writeln!(self.out, "{name}_count{{shard=\"{shard}\"}} {}", s.count);
    }
}

/// Escapes `\` and newline (HELP text), and also `"` in label values.
fn escape_into(out: &mut String, s: &str, label_value: bool) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label_value => out.push_str("\\\""),
            _ => out.push(ch),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::metrics::GaugeSnapshot;

    fn info() -> BrokerInfo {
        BrokerInfo {
            version: "0.1.0 (abc\"def)".into(),
            runtime: "uring".into(),
            uptime_seconds: 12.5,
            max_connections: Some(1000),
        }
    }

    /// A small fixed state: two cores, two WAL shards.
    fn fixed() -> Metrics {
        let m = Metrics::new(2);
        let (a, b) = (m.core(0), m.core(1));
        a.connections_accepted.add(3);
        b.connections_accepted.add(4);
        a.connections_closed.inc();
        b.connections_refused_limit.add(2);
        a.auth_failures.inc();
        a.acl_denied_publish.add(5);
        b.acl_denied_subscribe.add(6);
        b.acl_denied_read.add(8);
        for _ in 0..5 {
            a.message_received(1, 10);
        }
        b.message_received(0, 7);
        b.message_received(2, 3);
        a.message_sent(0);
        b.message_sent(0);
        b.message_sent(1);
        a.bytes_sent.add(1234);
        a.dropped_queue_full.add(2);
        b.dropped_queue_full.add(1);
        b.publish_rate_limited.inc();
        a.journal_failed_acks.add(9);
        b.ring_overflows.add(11);
        a.overloads.add(2);
        a.set_gauges(&GaugeSnapshot {
            connections: 10,
            sessions: 12,
            retained_messages: 1,
            inflight_messages: 4,
            queued_messages: 100,
            subscriptions: 20,
        });
        b.set_gauges(&GaugeSnapshot {
            connections: 5,
            sessions: 6,
            retained_messages: 2,
            inflight_messages: 0,
            queued_messages: 7,
            subscriptions: 3,
        });
        m.wal(0).record_sync(Duration::from_micros(40)); // le 0.00005
        m.wal(0).record_sync(Duration::from_millis(3)); // le 0.005
        m.wal(0).record_durable_latency(Duration::from_micros(250)); // le 0.00025 (inclusive)
        m.wal(1).record_sync(Duration::from_secs(5)); // +Inf
        m
    }

    fn rendered() -> String {
        let mut out = String::new();
        fixed().render(&mut out, &info());
        out
    }

    #[test]
    fn counters_and_gauges_render_as_expected() {
        let out = rendered();
        let expect = [
            "promptmq_build_info{version=\"0.1.0 (abc\\\"def)\",runtime=\"uring\"} 1\n",
            "promptmq_uptime_seconds 12.5\n",
            "promptmq_cores 2\n",
            "promptmq_connections_limit 1000\n",
            "# HELP promptmq_connections_accepted_total Network connections accepted.\n\
             # TYPE promptmq_connections_accepted_total counter\n\
             promptmq_connections_accepted_total 7\n",
            "promptmq_connections_closed_total 1\n",
            "promptmq_connections_refused_total{reason=\"limit\"} 2\n",
            "promptmq_auth_failures_total 1\n",
            "promptmq_acl_denied_total{action=\"publish\"} 5\n\
             promptmq_acl_denied_total{action=\"subscribe\"} 6\n\
             promptmq_acl_denied_total{action=\"read\"} 8\n",
            "# TYPE promptmq_messages_received_total counter\n\
             promptmq_messages_received_total{qos=\"0\"} 1\n\
             promptmq_messages_received_total{qos=\"1\"} 5\n\
             promptmq_messages_received_total{qos=\"2\"} 1\n",
            "promptmq_messages_sent_total{qos=\"0\"} 2\n\
             promptmq_messages_sent_total{qos=\"1\"} 1\n\
             promptmq_messages_sent_total{qos=\"2\"} 0\n",
            "promptmq_received_bytes_total 60\n",
            "promptmq_sent_bytes_total 1234\n",
            "promptmq_messages_dropped_total{reason=\"queue_full\"} 3\n",
            "promptmq_messages_dropped_total{reason=\"offline_qos0\"} 0\n",
            "promptmq_publish_rate_limited_total 1\n",
            "promptmq_messages_dropped_total{reason=\"journal_failed_acks\"} 9\n",
            "promptmq_ring_overflows_total 11\n",
            "promptmq_overloads_total 2\n",
            "# TYPE promptmq_connections gauge\npromptmq_connections 15\n",
            "promptmq_sessions 18\n",
            "promptmq_retained_messages 3\n",
            "promptmq_subscriptions 23\n",
            "promptmq_inflight_messages 4\n",
            "promptmq_queued_messages 107\n",
            "# TYPE promptmq_core_queued_messages gauge\n\
             promptmq_core_queued_messages{core=\"0\"} 100\n\
             promptmq_core_queued_messages{core=\"1\"} 7\n",
            "promptmq_core_connections{core=\"0\"} 10\npromptmq_core_connections{core=\"1\"} 5\n",
            "promptmq_core_messages_received_total{core=\"0\"} 5\n\
             promptmq_core_messages_received_total{core=\"1\"} 2\n",
            "promptmq_core_messages_sent_total{core=\"0\"} 1\n\
             promptmq_core_messages_sent_total{core=\"1\"} 2\n",
        ];
        for e in expect {
            assert!(out.contains(e), "missing:\n{e}\nin:\n{out}");
        }
        // Lines start at the beginning of the output, and it ends with a newline.
        assert!(out.starts_with("# HELP promptmq_build_info "));
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let out = rendered();
        let sync0: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("promptmq_wal_sync_duration_seconds") && l.contains("shard=\"0\""))
            .collect();
        let expect = [
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.00001\"} 0",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.000025\"} 0",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.00005\"} 1",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.0001\"} 1",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.00025\"} 1",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.0005\"} 1",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.001\"} 1",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.0025\"} 1",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.005\"} 2",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.01\"} 2",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.025\"} 2",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.05\"} 2",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.1\"} 2",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.25\"} 2",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"0.5\"} 2",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"1\"} 2",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"2.5\"} 2",
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2",
            "promptmq_wal_sync_duration_seconds_sum{shard=\"0\"} 0.00304",
            "promptmq_wal_sync_duration_seconds_count{shard=\"0\"} 2",
        ];
        assert_eq!(sync0, expect);
        assert!(out.contains(
            "promptmq_wal_sync_duration_seconds_bucket{shard=\"1\",le=\"2.5\"} 0\n\
             promptmq_wal_sync_duration_seconds_bucket{shard=\"1\",le=\"+Inf\"} 1\n\
             promptmq_wal_sync_duration_seconds_sum{shard=\"1\"} 5\n\
             promptmq_wal_sync_duration_seconds_count{shard=\"1\"} 1\n"
        ));
        assert!(out.contains(
            "promptmq_wal_durable_latency_seconds_bucket{shard=\"0\",le=\"0.0001\"} 0\n\
             promptmq_wal_durable_latency_seconds_bucket{shard=\"0\",le=\"0.00025\"} 1\n"
        ));
        assert!(out.contains("# TYPE promptmq_wal_durable_latency_seconds histogram\n"));
    }

    /// A sample: name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A sample line split into its parts; `None` if it is not well formed.
    fn parse_sample(line: &str) -> Option<Sample> {
        let valid_name = |n: &str| {
            let mut cs = n.chars();
            cs.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return None;
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=')?;
                let key = &rest[..eq];
                if !valid_name(key) || key.contains(':') {
                    return None;
                }
                rest = rest[eq + 1..].strip_prefix('"')?;
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let end = loop {
                    match chars.next()? {
                        (_, '\\') => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            _ => return None,
                        },
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_string(), value));
                rest = &rest[end + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                }
            }
        }
        let value = rest.strip_prefix(' ')?;
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse::<f64>().ok()?,
        };
        Some((name.to_string(), labels, v))
    }

    #[test]
    fn output_parses_back() {
        let out = rendered();
        let mut help: HashMap<String, usize> = HashMap::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut type_count: HashMap<String, usize> = HashMap::new();
        let mut finished: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut samples = 0;
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                *help.entry(name.clone()).or_default() += 1;
                if let Some(prev) = current.replace(name.clone()) {
                    if prev != name {
                        finished.push(prev);
                    }
                }
                assert!(!finished.contains(&name), "family {name} appears twice");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap().to_string();
                let kind = parts.next().unwrap().to_string();
                assert!(["counter", "gauge", "histogram"].contains(&kind.as_str()), "{line}");
                assert_eq!(current.as_deref(), Some(name.as_str()), "TYPE without HELP first: {line}");
                *type_count.entry(name.clone()).or_default() += 1;
                types.insert(name, kind);
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let (name, labels, value) = parse_sample(line).unwrap_or_else(|| panic!("malformed sample: {line:?}"));
            samples += 1;
            let family = current.clone().unwrap();
            let kind = types.get(&family).unwrap_or_else(|| panic!("sample before TYPE: {line}"));
            match kind.as_str() {
                "histogram" => {
                    let suffix = name.strip_prefix(family.as_str()).unwrap();
                    assert!(["_bucket", "_sum", "_count"].contains(&suffix), "{line}");
                    assert_eq!(labels.iter().any(|(k, _)| k == "le"), suffix == "_bucket", "{line}");
                }
                "counter" => {
                    assert_eq!(name, family);
                    assert!(name.ends_with("_total"), "counter without _total: {name}");
                }
                _ => assert_eq!(name, family, "{line}"),
            }
            assert!(value.is_finite() && value >= 0.0, "{line}");
        }
        assert!(samples > 50);
        assert_eq!(help.keys().len(), types.keys().len());
        for (name, n) in &help {
            assert_eq!(*n, 1, "{name} has {n} HELP lines");
            assert_eq!(type_count.get(name), Some(&1), "{name} has no single TYPE");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new(1);
        let mut out = String::new();
        let info = BrokerInfo { version: "a\\b\"c\nd".into(), ..BrokerInfo::default() };
        m.render(&mut out, &info);
        assert!(out.contains("promptmq_build_info{version=\"a\\\\b\\\"c\\nd\",runtime=\"\"} 1\n"), "{out}");
        // No connection limit configured: no family.
        assert!(!out.contains("promptmq_connections_limit"));
        let (_, labels, _) =
            parse_sample(out.lines().find(|l| l.starts_with("promptmq_build_info{")).unwrap()).unwrap();
        assert_eq!(labels[0].1, "a\\b\"c\nd");
    }

    #[test]
    fn special_float_values() {
        assert_eq!(F64(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(F64(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(F64(f64::NAN).to_string(), "NaN");
        assert_eq!(F64(0.0).to_string(), "0");
        assert_eq!(F64(1e-7).to_string(), "0.0000001");
    }
}
