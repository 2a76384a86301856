//! Command-line options.

use clap::{Parser, ValueEnum};

use crate::mqtt::Version;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N publishers -> N subscribers, one topic per pair
    Pairs,
    /// N publishers (one topic each) -> one subscriber on a `+` wildcard
    Fanin,
    /// one publisher -> N subscribers of the same topic
    Fanout,
    /// publishers -> a `$share/<group>/...` group of N subscribers
    Shared,
    /// K idle connections held open (memory per connection with --pid)
    Conns,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pairs => "pairs",
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Shared => "shared",
            Scenario::Conns => "conns",
        }
    }
}

/// Limits that keep a run bounded whatever it is asked for.
pub const MAX_CLIENTS: usize = 10_000;
pub const MAX_CONNECTIONS: usize = 60_000;
pub const MAX_SECONDS: f64 = 24.0 * 3600.0;

/// Load generator for any MQTT 3.1.1/5.0 broker over TCP: throughput, end-to-end latency,
/// loss/duplicates/reordering, and the broker's memory per idle connection.
///
/// Every payload carries a send timestamp and a per-publisher sequence number; subscribers
/// run in the same process and measure against the same clock. Only the window after the
/// warm-up is measured; after the publishers stop, in-flight deliveries get --drain seconds,
/// and whatever is still missing then is reported as lost.
#[derive(Parser, Clone, Debug)]
#[command(name = "promptmq-bench", version)]
pub struct Options {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker host (the only address the generator connects to)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// QoS of publications and subscriptions
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least 16: send timestamp, publisher index, sequence number)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub payload: u32,
    /// Total publish rate in msgs/s over all publishers; 0 = as fast as the broker takes them
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Unacknowledged QoS 1/2 PUBLISHes per publisher (also capped by the broker's Receive
    /// Maximum); QoS 0 is bounded by the socket buffer only
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=32_768))]
    pub inflight: u32,
    /// Publisher socket send buffer (SO_SNDBUF) in bytes; 0 = the kernel's autotuning, which
    /// lets megabytes (seconds of messages) wait in the generator's own socket when the broker
    /// reads slower than publishers write
    #[arg(long, default_value_t = 131_072)]
    pub sndbuf: u32,
    /// Subscribers ask for sessions the broker keeps (clean start 0; 5.0 Session Expiry 60 s;
    /// the client ids are unique per run; with `--mqtt 3.1.1` clean session 0 has no expiry, so
    /// the broker keeps them until it restarts). Brokers log such sessions' progress, and some (PromptMQ) each
    /// step of their QoS 2 exchanges: this measures what that costs
    #[arg(long)]
    pub persistent_subscribers: bool,
    /// Measured seconds (after the warm-up); for `conns`, how long the connections are held
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of traffic before measuring starts
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds to wait after the publishers stop for deliveries still in flight
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Publishers (default: pairs 8, fanin 16, fanout 1, shared 4)
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Subscribers (default: pairs = publishers, fanin 1, fanout 16, shared 4)
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Idle connections for `conns`
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connection attempts in flight at once
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// MQTT protocol: 3 (3.1.1) or 5 (5.0)
    #[arg(long, default_value = "5", value_parser = ["3", "5"])]
    pub mqtt: String,
    /// Broker process id: reports its CPU use, and for `conns` its RSS before/after
    #[arg(long)]
    pub pid: Option<u32>,
    /// Print one JSON object on stdout (the table goes to stderr)
    #[arg(long)]
    pub json: bool,
    /// No progress lines
    #[arg(long)]
    pub quiet: bool,
    /// Topic prefix (default: `bench/<run id>`, unique per run)
    #[arg(long)]
    pub topic_prefix: Option<String>,
}

impl Options {
    pub fn version(&self) -> Version {
        if self.mqtt == "3" {
            Version::V311
        } else {
            Version::V5
        }
    }

    /// Publishers and subscribers after the scenario's defaults.
    pub fn clients(&self) -> (usize, usize) {
        let (p, s) = match self.scenario {
            Scenario::Pairs => {
                let n = self.publishers.or(self.subscribers).unwrap_or(8);
                (n, n)
            }
            Scenario::Fanin => (16, 1),
            Scenario::Fanout => (1, 16),
            Scenario::Shared => (4, 4),
            Scenario::Conns => (0, 0),
        };
        (self.publishers.unwrap_or(p), self.subscribers.unwrap_or(s))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let (p, s) = self.clients();
        anyhow::ensure!(self.duration > 0.0 && self.duration <= MAX_SECONDS, "--duration out of range");
        anyhow::ensure!(self.warmup >= 0.0 && self.warmup <= MAX_SECONDS, "--warmup out of range");
        anyhow::ensure!(self.drain >= 0.0 && self.drain <= 600.0, "--drain out of range");
        anyhow::ensure!(self.connect_concurrency >= 1, "--connect-concurrency must be at least 1");
        if self.scenario == Scenario::Conns {
            anyhow::ensure!(
                (1..=MAX_CONNECTIONS).contains(&self.connections),
                "--connections must be 1..={MAX_CONNECTIONS}"
            );
        } else {
            anyhow::ensure!(p >= 1 && s >= 1, "need at least one publisher and one subscriber");
            anyhow::ensure!(p + s <= MAX_CLIENTS, "at most {MAX_CLIENTS} publishers and subscribers");
            if self.scenario == Scenario::Pairs {
                anyhow::ensure!(p == s, "pairs needs as many subscribers as publishers");
            }
        }
        Ok(())
    }
}
