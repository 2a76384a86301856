//! The broker's metrics: counters and gauges updated from the cores' hot path, latency
//! histograms updated from the WAL writer threads, and a small HTTP endpoint that serves
//! them in the Prometheus text exposition format (version 0.0.4) plus a `/health` check.
//!
//! Where to start reading:
//! - [`Metrics`] ([`registry`]): one [`CoreMetrics`] per core and one [`WalMetrics`] per WAL
//!   shard, allocated once at startup and shared in an `Arc`.
//! - [`Counter`], [`Gauge`] ([`registry`]) and [`Histogram`] ([`histogram`]): the cells.
//! - [`Metrics::render`] ([`render`]): the text exposition; [`BrokerInfo`] carries what is
//!   not a counter (version, uptime).
//! - [`serve`] ([`http`]): the blocking HTTP/1.1 endpoint on its own thread.
//!
//! Invariants:
//! - **Single writer per cell.** A [`CoreMetrics`] is written only by its own core thread, a
//!   [`WalMetrics`] only by its shard's WAL writer thread. Updates are a `Relaxed` load and a
//!   `Relaxed` store (no locked read-modify-write instruction); a second writer would lose
//!   updates (never undefined behaviour, just wrong counts).
//! - **No shared cache lines on the message path.** Each [`CoreMetrics`] and [`WalMetrics`] is
//!   `#[repr(align(128))]`, so two cores never write to the same cache line (128 bytes covers
//!   the adjacent-line prefetcher on x86 and the 128-byte lines of some ARM parts).
//! - **Readers sum.** The HTTP thread reads every cell with `Relaxed` loads and sums over
//!   cores; a scrape is not an atomic snapshot across cells (a message may be counted as
//!   received but not yet as sent), which Prometheus tolerates.
//! - **Never blocks a core.** Nothing here takes a lock, allocates or does I/O on an update;
//!   rendering and HTTP run on the metrics thread only.

pub mod histogram;
pub mod http;
pub mod registry;
pub mod render;

pub use histogram::{Histogram, HistogramSnapshot, WalMetrics, BUCKETS};
pub use http::serve;
pub use registry::{CoreMetrics, Counter, Gauge, GaugeSnapshot, Metrics};
pub use render::BrokerInfo;
