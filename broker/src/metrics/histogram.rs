//! Lock-free latency histograms with fixed log-scale buckets, and the per-WAL-shard pair of
//! them ([`WalMetrics`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the finite buckets: nanoseconds and the `le` label (seconds) as rendered.
/// A value equal to a bound falls in that bucket (`le` is "less than or equal"). Values above
/// the last bound fall in the `+Inf` bucket.
pub const BUCKETS: [(u64, &str); 17] = [
    (10_000, "0.00001"),
    (25_000, "0.000025"),
    (50_000, "0.00005"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
];

/// Finite buckets plus `+Inf`.
const SLOTS: usize = BUCKETS.len() + 1;

/// A latency histogram with one writer thread.
///
/// Each bucket holds the count of observations that fell in it (not cumulative; the
/// cumulative counts Prometheus wants are computed when reading). Updates are a `Relaxed`
/// load and store per cell, like [`Counter`](super::Counter): exact with one writer.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; SLOTS],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_nanos: AtomicU64::new(0) }
    }
}

/// A histogram read at one moment, in the shape Prometheus wants.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts: `cumulative[i]` is the number of observations `<=` bound `i` of
    /// [`BUCKETS`]; the last entry is the `+Inf` bucket and equals [`count`](Self::count).
    pub cumulative: [u64; SLOTS],
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation. Only the owning thread may call this.
    #[inline]
    pub fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Index of the first bound >= nanos; BUCKETS.len() (the +Inf slot) if none.
        let slot = BUCKETS.partition_point(|&(bound, _)| bound < nanos);
        let cell = &self.buckets[slot];
        cell.store(cell.load(Relaxed).wrapping_add(1), Relaxed);
        self.sum_nanos.store(self.sum_nanos.load(Relaxed).wrapping_add(nanos), Relaxed);
    }

    /// Reads the histogram (from any thread). The count is the sum of the buckets, so the
    /// `+Inf` bucket and `_count` always agree even when read during an update.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; SLOTS];
        let mut running = 0u64;
        for (slot, cell) in cumulative.iter_mut().zip(&self.buckets) {
            running = running.wrapping_add(cell.load(Relaxed));
            *slot = running;
        }
        // Nanoseconds to seconds; f64 is exact up to 2^53 ns (104 days), plenty for a sum
        // that Prometheus only ever differentiates.
        let sum_seconds = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        HistogramSnapshot { cumulative, sum_seconds, count: running }
    }
}

/// One WAL shard's metrics. Written only by that shard's writer thread.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WalMetrics {
    sync: Histogram,
    durable_latency: Histogram,
}

impl WalMetrics {
    /// Records the duration of one `fdatasync` (or equivalent) of the shard's log.
    #[inline]
    pub fn record_sync(&self, d: Duration) {
        self.sync.record(d);
    }

    /// Records the time from a record's append until it was durable.
    #[inline]
    pub fn record_durable_latency(&self, d: Duration) {
        self.durable_latency.record(d);
    }

    /// The sync-duration histogram.
    pub fn sync(&self) -> &Histogram {
        &self.sync
    }

    /// The append-to-durable latency histogram.
    pub fn durable_latency(&self) -> &Histogram {
        &self.durable_latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_increasing_and_labels_match() {
        for w in BUCKETS.windows(2) {
            assert!(w[0].0 < w[1].0);
        }
        for (nanos, le) in BUCKETS {
            let secs: f64 = le.parse().unwrap_or(f64::NAN);
            assert!((secs * 1e9 - nanos as f64).abs() < 1e-3, "{le} != {nanos} ns");
        }
    }

    #[test]
    fn observations_land_in_the_right_bucket() {
        let h = Histogram::default();
        h.record(Duration::from_nanos(0)); // first bucket
        h.record(Duration::from_micros(10)); // exactly the first bound: first bucket
        h.record(Duration::from_nanos(10_001)); // second bucket
        h.record(Duration::from_millis(1)); // le 0.001
        h.record(Duration::from_secs(3)); // +Inf
        h.record(Duration::MAX); // +Inf, saturated
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[1], 3);
        let ms = BUCKETS.iter().position(|&(_, le)| le == "0.001").unwrap_or(usize::MAX);
        assert_eq!(s.cumulative[ms - 1], 3);
        assert_eq!(s.cumulative[ms], 4);
        assert_eq!(s.cumulative[BUCKETS.len() - 1], 4);
        assert_eq!(s.cumulative[BUCKETS.len()], 6);
        assert_eq!(s.count, 6);
    }

    #[test]
    fn buckets_are_cumulative() {
        let h = Histogram::default();
        let mut nanos = 1u64;
        for _ in 0..60 {
            h.record(Duration::from_nanos(nanos));
            nanos = nanos.saturating_mul(2);
        }
        let s = h.snapshot();
        for w in s.cumulative.windows(2) {
            assert!(w[0] <= w[1]);
        }
        assert_eq!(s.cumulative[SLOTS - 1], 60);
        assert_eq!(s.count, 60);
        // Everything up to 2^13 ns = 8192 ns is below 10 µs: 14 observations (2^0..2^13).
        assert_eq!(s.cumulative[0], 14);
    }

    #[test]
    fn sum_is_in_seconds() {
        let h = Histogram::default();
        h.record(Duration::from_millis(1));
        h.record(Duration::from_micros(500));
        let s = h.snapshot();
        assert!((s.sum_seconds - 0.0015).abs() < 1e-12);
    }

    #[test]
    fn wal_metrics_keep_sync_and_latency_apart() {
        let w = WalMetrics::default();
        w.record_sync(Duration::from_micros(80));
        w.record_durable_latency(Duration::from_micros(120));
        w.record_durable_latency(Duration::from_micros(130));
        assert_eq!(w.sync().snapshot().count, 1);
        assert_eq!(w.durable_latency().snapshot().count, 2);
        assert_eq!(std::mem::align_of::<WalMetrics>(), 128);
    }
}
