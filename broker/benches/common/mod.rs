//! What the broker's benches share: the time budget, batched timing into a histogram, and
//! the table every bench prints.
//!
//! Not a bench itself: each bench includes it with `mod common;`, and each uses only part
//! of it.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The environment variable that sets a bench's measuring time, in seconds.
pub const SECS_VAR: &str = "PROMPTMQ_BENCH_SECS";

/// The seconds this bench should spend measuring, spread over its cases: `PROMPTMQ_BENCH_SECS`,
/// else `default`. Run outside `cargo bench` (which passes `--bench`), for instance by
/// `cargo test --benches`, the bench is only a smoke test and gets a tenth of a second.
pub fn budget_secs(default: f64) -> f64 {
    if let Some(secs) = std::env::var(SECS_VAR).ok().and_then(|v| v.parse::<f64>().ok()).filter(|s| *s > 0.0) {
        return secs;
    }
    if std::env::args().any(|a| a == "--bench") {
        default
    } else {
        0.1
    }
}

/// A histogram for values from 1 to `max` with 3 significant digits.
pub fn histogram(max: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, max, 3).expect("histogram bounds")
}

/// One line of a table: throughput and latency quantiles, each `None` when the case does
/// not measure it.
pub struct Row {
    pub name: String,
    pub ops_per_sec: Option<f64>,
    /// p50, p99, p99.9 in nanoseconds.
    pub quantiles: Option<[f64; 3]>,
}

impl Row {
    /// Quantiles from a histogram whose values are `unit_ns` nanoseconds each
    /// (1.0 for nanoseconds, 0.001 for picoseconds).
    pub fn new(name: impl Into<String>, ops_per_sec: Option<f64>, hist: &Histogram<u64>, unit_ns: f64) -> Row {
        let q = |p: f64| hist.value_at_quantile(p) as f64 * unit_ns;
        let quantiles = (!hist.is_empty()).then(|| [q(0.5), q(0.99), q(0.999)]);
        Row { name: name.into(), ops_per_sec, quantiles }
    }
}

const NAME_WIDTH: usize = 40;

/// Prints the explanation of a bench and the header line of its table.
pub fn print_header(title: &str, about: &str) {
    println!();
    for line in wrap(about, 92) {
        println!("{line}");
    }
    println!();
    println!("{:<NAME_WIDTH$} {:>14} {:>10} {:>10} {:>10}", title, "ops/s", "p50", "p99", "p99.9");
}

/// Prints one row (as soon as it is measured, so a long bench shows progress).
pub fn print_row(row: &Row) {
    let ops = row.ops_per_sec.map_or_else(|| "-".to_string(), fmt_count);
    let [p50, p99, p999] = match row.quantiles {
        Some(q) => q.map(fmt_time),
        None => ["-".to_string(), "-".to_string(), "-".to_string()],
    };
    println!("{:<NAME_WIDTH$} {:>14} {:>10} {:>10} {:>10}", row.name, ops, p50, p99, p999);
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// `12345678.9` as `12,345,679`.
pub fn fmt_count(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in nanoseconds with three significant digits or so, in the unit that fits.
pub fn fmt_time(ns: f64) -> String {
    if ns < 10.0 {
        format!("{ns:.1} ns")
    } else if ns < 10_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 10_000_000.0 {
        format!("{:.1} us", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

/// Times `op` in batches of `batch` calls for about `time` (after a warm-up of a tenth of
/// that), records each batch's time divided by `batch` as one per-operation sample (in
/// picoseconds, so that a 7.5 ns operation is not rounded), and returns the row.
///
/// A single call of a few nanoseconds is shorter than the clock can resolve, hence the
/// batches; the quantiles are therefore over batch averages: p99.9 shows a batch that an
/// interrupt or a cache-cold stretch slowed down, not the slowest single call.
pub fn batched<R>(name: impl Into<String>, batch: u32, time: Duration, mut op: impl FnMut() -> R) -> Row {
    let warm_until = Instant::now() + time / 10;
    while Instant::now() < warm_until {
        for _ in 0..batch {
            black_box(op());
        }
    }
    let mut hist = histogram(60_000_000_000_000);
    let mut measured = Duration::ZERO;
    let mut ops = 0u64;
    let until = Instant::now() + time;
    while Instant::now() < until {
        let began = Instant::now();
        for _ in 0..batch {
            black_box(op());
        }
        let took = began.elapsed();
        measured += took;
        ops += u64::from(batch);
        let per_op_ps = (took.as_nanos() * 1000 / u128::from(batch)).max(1);
        let _ = hist.record(u64::try_from(per_op_ps).unwrap_or(u64::MAX));
    }
    Row::new(name, Some(ops as f64 / measured.as_secs_f64().max(1e-9)), &hist, 0.001)
}

/// Pins the calling thread to the `index`-th CPU this process may run on (modulo their
/// number), as the broker pins its cores; returns whether it worked.
///
/// The CPUs are read once, before the first pin: a thread spawned by a pinned thread
/// inherits its one-CPU mask, so asking from there would find a single CPU and put every
/// thread on it.
pub fn pin_to_cpu(index: usize) -> bool {
    use promptmq::affinity;
    static ALLOWED: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    let allowed = ALLOWED.get_or_init(affinity::allowed_cpus);
    affinity::cpu_for_core(allowed, index).is_some_and(|cpu| affinity::pin_current_thread(cpu).is_ok())
}
