//! Results: the end-of-run table, the `--json` object, and /proc readings of a process.

use std::fmt::Write as _;
use std::net::SocketAddr;

use hdrhistogram::Histogram;

use crate::cli::{Options, Scenario};

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Latency {
    /// From a histogram of nanoseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

/// The `conns` scenario's findings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnsReport {
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    /// Connections the broker closed while they were held.
    pub dropped: usize,
    pub connect_secs: f64,
    pub rss_before_kb: Option<u64>,
    pub rss_after_kb: Option<u64>,
    pub bytes_per_conn: Option<f64>,
    pub first_error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub scenario: &'static str,
    pub broker: String,
    pub mqtt: &'static str,
    pub qos: u8,
    pub payload: u32,
    pub publishers: usize,
    pub subscribers: usize,
    pub rate: u64,
    pub inflight: u32,
    pub window_secs: f64,
    pub warmup_secs: f64,
    pub drain_secs: f64,
    /// Messages published in the measured window.
    pub sent: u64,
    pub sent_per_sec: f64,
    /// Deliveries owed for the messages of the window (× subscribers for fan-out).
    pub expected: u64,
    /// First deliveries of those, by the end of the drain.
    pub delivered: u64,
    /// Deliveries (all PUBLISHes at subscribers) received during the window, per second.
    pub delivered_per_sec: f64,
    /// Measured messages that arrived only after the publishers had stopped.
    pub delivered_late: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// PUBLISHes without our stamp (not from this run).
    pub foreign: u64,
    pub latency: Option<Latency>,
    /// CPU use over the window in % of one core.
    pub broker_cpu_pct: Option<f64>,
    pub bench_cpu_pct: Option<f64>,
    /// CPU used by every other process on the machine over the window (% of one core):
    /// anything well above zero means the run shared the cores with something else.
    pub other_cpu_pct: Option<f64>,
    /// The broker's resident memory at the end of the run, and its peak (VmHWM).
    pub broker_rss_kb: Option<u64>,
    pub broker_peak_rss_kb: Option<u64>,
    pub conns: Option<ConnsReport>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn new(opts: &Options, addr: SocketAddr, publishers: usize, subscribers: usize) -> Report {
        Report {
            scenario: opts.scenario.name(),
            broker: addr.to_string(),
            mqtt: if opts.mqtt == "3" { "3.1.1" } else { "5.0" },
            qos: opts.qos,
            payload: opts.payload,
            publishers,
            subscribers,
            rate: opts.rate,
            inflight: opts.inflight,
            warmup_secs: opts.warmup,
            ..Report::default()
        }
    }

    pub fn loss_pct(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            100.0 * self.lost as f64 / self.expected as f64
        }
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        if let Some(c) = &self.conns {
            let _ = writeln!(s, "conns: {} requested, broker {}, MQTT {}", c.requested, self.broker, self.mqtt);
            let _ = writeln!(
                s,
                "| connected | failed | dropped | connect s | RSS before KiB | RSS after KiB | bytes/conn |"
            );
            let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {} | {} | {} |",
                c.connected,
                c.failed,
                c.dropped,
                c.connect_secs,
                opt_u(c.rss_before_kb),
                opt_u(c.rss_after_kb),
                c.bytes_per_conn.map(|b| format!("{b:.0}")).unwrap_or_else(|| "-".into())
            );
            if let Some(e) = &c.first_error {
                let _ = writeln!(s, "first connection error: {e}");
            }
        } else {
            let rate = if self.rate == 0 { "max".to_string() } else { format!("{} msgs/s", self.rate) };
            let _ = writeln!(
                s,
                "{}: {} pub -> {} sub, broker {}, MQTT {}, QoS {}, payload {} B, rate {rate}, {:.1} s measured after {:.1} s warm-up, drain {:.2} s",
                self.scenario,
                self.publishers,
                self.subscribers,
                self.broker,
                self.mqtt,
                self.qos,
                self.payload,
                self.window_secs,
                self.warmup_secs,
                self.drain_secs
            );
            let _ = writeln!(
                s,
                "| sent msgs/s | delivered msgs/s | p50 us | p90 us | p99 us | p99.9 us | max us | lost | dup | reordered | late | broker CPU | bench CPU | other CPU | broker peak RSS MiB |"
            );
            let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            let l = self.latency.unwrap_or_default();
            let lat = |v: f64| if self.latency.is_some() { format!("{v:.0}") } else { "-".into() };
            let _ = writeln!(
                s,
                "| {:.0} | {:.0} | {} | {} | {} | {} | {} | {} ({:.3}%) | {} | {} | {} | {} | {} | {} | {} |",
                self.sent_per_sec,
                self.delivered_per_sec,
                lat(l.p50),
                lat(l.p90),
                lat(l.p99),
                lat(l.p999),
                lat(l.max),
                self.lost,
                self.loss_pct(),
                self.duplicates,
                self.reordered,
                self.delivered_late,
                pct(self.broker_cpu_pct),
                pct(self.bench_cpu_pct),
                pct(self.other_cpu_pct),
                self.broker_peak_rss_kb.map(|k| format!("{:.0}", k as f64 / 1024.0)).unwrap_or_else(|| "-".into())
            );
            if self.foreign > 0 {
                let _ = writeln!(s, "{} PUBLISHes without this run's stamp were ignored", self.foreign);
            }
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        s
    }

    /// One flat JSON object (one line).
    pub fn json(&self) -> String {
        let mut j = Json::default();
        j.str("scenario", self.scenario);
        j.str("broker", &self.broker);
        j.str("mqtt", self.mqtt);
        if let Some(c) = &self.conns {
            j.num("connections", c.requested as f64);
            j.num("connected", c.connected as f64);
            j.num("failed", c.failed as f64);
            j.num("dropped", c.dropped as f64);
            j.num("connect_secs", c.connect_secs);
            j.opt("rss_before_kb", c.rss_before_kb.map(|v| v as f64));
            j.opt("rss_after_kb", c.rss_after_kb.map(|v| v as f64));
            j.opt("bytes_per_conn", c.bytes_per_conn);
        } else {
            j.num("qos", self.qos as f64);
            j.num("payload", self.payload as f64);
            j.num("publishers", self.publishers as f64);
            j.num("subscribers", self.subscribers as f64);
            j.num("rate", self.rate as f64);
            j.num("inflight", self.inflight as f64);
            j.num("window_secs", self.window_secs);
            j.num("warmup_secs", self.warmup_secs);
            j.num("drain_secs", self.drain_secs);
            j.num("sent", self.sent as f64);
            j.num("sent_per_sec", self.sent_per_sec);
            j.num("expected", self.expected as f64);
            j.num("delivered", self.delivered as f64);
            j.num("delivered_per_sec", self.delivered_per_sec);
            j.num("delivered_late", self.delivered_late as f64);
            j.num("lost", self.lost as f64);
            j.num("loss_pct", self.loss_pct());
            j.num("duplicates", self.duplicates as f64);
            j.num("reordered", self.reordered as f64);
            j.num("foreign", self.foreign as f64);
            let l = self.latency;
            j.opt("p50_us", l.map(|l| l.p50));
            j.opt("p90_us", l.map(|l| l.p90));
            j.opt("p99_us", l.map(|l| l.p99));
            j.opt("p999_us", l.map(|l| l.p999));
            j.opt("max_us", l.map(|l| l.max));
            j.opt("mean_us", l.map(|l| l.mean));
            j.opt("latency_samples", l.map(|l| l.count as f64));
        }
        j.opt("broker_cpu_pct", self.broker_cpu_pct);
        j.opt("bench_cpu_pct", self.bench_cpu_pct);
        j.opt("other_cpu_pct", self.other_cpu_pct);
        j.opt("broker_rss_kb", self.broker_rss_kb.map(|v| v as f64));
        j.opt("broker_peak_rss_kb", self.broker_peak_rss_kb.map(|v| v as f64));
        j.num("errors", self.errors.len() as f64);
        j.str("first_error", self.errors.first().map(String::as_str).unwrap_or(""));
        j.finish()
    }
}

/// Scenario-independent JSON for a setup failure (no report).
pub fn failure_json(scenario: Scenario, err: &str) -> String {
    let mut j = Json::default();
    j.str("scenario", scenario.name());
    j.num("errors", 1.0);
    j.str("first_error", err);
    j.finish()
}

fn opt_u(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}%")).unwrap_or_else(|| "-".into())
}

#[derive(Default)]
struct Json {
    out: String,
}

impl Json {
    fn key(&mut self, k: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push('"');
        for c in v.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn num(&mut self, k: &str, v: f64) {
        self.key(k);
        if !v.is_finite() {
            self.out.push_str("null");
        } else if v.fract() == 0.0 && v.abs() < 1e15 {
            let _ = write!(self.out, "{}", v as i64);
        } else {
            let _ = write!(self.out, "{v:.3}");
        }
    }

    fn opt(&mut self, k: &str, v: Option<f64>) {
        match v {
            Some(v) => self.num(k, v),
            None => {
                self.key(k);
                self.out.push_str("null");
            }
        }
    }

    fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

/// CPU time of a process (utime + stime, in clock ticks) at one moment.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    ticks: u64,
}

impl CpuSample {
    /// Of `pid`, or of this process when `None`. `None` where /proc is unavailable.
    pub fn take(pid: Option<u32>) -> Option<CpuSample> {
        let path = match pid {
            Some(p) => format!("/proc/{p}/stat"),
            None => "/proc/self/stat".to_string(),
        };
        let s = std::fs::read_to_string(path).ok()?;
        // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
        let rest = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some(CpuSample { ticks: utime + stime })
    }

    /// % of one core used between `earlier` and this sample, `secs` apart.
    pub fn percent_since(&self, earlier: &CpuSample, secs: f64) -> f64 {
        let hz = clock_ticks_per_sec();
        100.0 * (self.ticks.saturating_sub(earlier.ticks)) as f64 / hz / secs.max(1e-9)
    }
}

fn clock_ticks_per_sec() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if v > 0 {
            return v as f64;
        }
    }
    100.0
}

/// VmRSS of a process in KiB, from /proc/PID/status.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&s)
}

/// VmHWM (peak resident memory) of a process in KiB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kb(&s, "VmHWM:")
}

pub fn parse_vmrss(status: &str) -> Option<u64> {
    status_kb(status, "VmRSS:")
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy time of the whole machine (all CPUs, clock ticks) from the first line of /proc/stat.
pub fn machine_busy_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(s.lines().next()?)
}

fn parse_machine_busy(cpu_line: &str) -> Option<u64> {
    let mut f = cpu_line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user). Interrupt
    // time is left out: the loopback traffic of the run itself shows up there, not in any
    // process's time. Steal (the hypervisor's) is kept: it is interference too.
    let busy = [0, 1, 2, 7].iter().map(|&i| v.get(i).copied().unwrap_or(0)).sum();
    Some(busy)
}

/// CPU counters of the broker, this process and the machine at one moment.
pub struct Usage {
    broker: Option<CpuSample>,
    bench: Option<CpuSample>,
    machine: Option<u64>,
    at: std::time::Instant,
}

impl Usage {
    pub fn take(broker_pid: Option<u32>) -> Usage {
        Usage {
            broker: broker_pid.and_then(|p| CpuSample::take(Some(p))),
            bench: CpuSample::take(None),
            machine: machine_busy_ticks(),
            at: std::time::Instant::now(),
        }
    }

    /// Fills the CPU fields of `r` with the use between `earlier` and this sample.
    pub fn fill_since(&self, earlier: &Usage, r: &mut Report) {
        let secs = (self.at - earlier.at).as_secs_f64();
        let per = |a: Option<CpuSample>, z: Option<CpuSample>| a.zip(z).map(|(a, z)| z.percent_since(&a, secs));
        r.broker_cpu_pct = per(earlier.broker, self.broker);
        r.bench_cpu_pct = per(earlier.bench, self.bench);
        if let (Some(a), Some(z)) = (earlier.machine, self.machine) {
            let all = 100.0 * z.saturating_sub(a) as f64 / clock_ticks_per_sec() / secs.max(1e-9);
            r.other_cpu_pct = Some((all - r.broker_cpu_pct.unwrap_or(0.0) - r.bench_cpu_pct.unwrap_or(0.0)).max(0.0));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_is_flat_and_escaped() {
        let mut j = Json::default();
        j.str("a", "x\"y\\z\n");
        j.num("b", 3.0);
        j.num("c", 1.23456);
        j.opt("d", None);
        assert_eq!(j.finish(), r#"{"a":"x\"y\\z\u000a","b":3,"c":1.235,"d":null}"#);
    }

    #[test]
    fn vmrss() {
        let s = "Name:\tmosquitto\nVmPeak:\t  9000 kB\nVmRSS:\t    7168 kB\nThreads: 1\n";
        assert_eq!(parse_vmrss(s), Some(7168));
        assert_eq!(parse_vmrss("Name: x\n"), None);
    }

    #[test]
    fn machine_busy() {
        assert_eq!(parse_machine_busy("cpu  10 1 5 1000 7 2 3 4 0 0"), Some(10 + 1 + 5 + 4));
        assert_eq!(parse_machine_busy("cpu0 1 2 3"), None);
    }

    #[test]
    fn own_cpu_and_rss_readable() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(CpuSample::take(None).is_some());
            assert!(rss_kb(std::process::id()).unwrap_or(0) > 0);
        }
    }
}
