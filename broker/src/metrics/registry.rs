//! The cells ([`Counter`], [`Gauge`]), one core's set of them ([`CoreMetrics`]) and the whole
//! broker's ([`Metrics`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::histogram::WalMetrics;

/// A monotonic `u64` counter with a single writer.
///
/// [`add`](Counter::add) is a `Relaxed` load followed by a `Relaxed` store rather than a
/// `fetch_add`: with one writer thread that is exact and avoids the locked instruction (a
/// plain `mov` pair on x86). Readers on other threads see some recent value, never a torn one.
/// Calling it from two threads at once would lose increments.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one. Only the owning thread may call this.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`. Only the owning thread may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Relaxed);
        self.0.store(v.wrapping_add(n), Relaxed);
    }

    /// Replaces the value, for publishing a count kept elsewhere (e.g. a core's plain
    /// `u64` statistics copied out periodically). The caller keeps it monotonic.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// The current value (from any thread).
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A `u64` value that goes up and down, set (not added to) by its single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value. Only the owning thread may call this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// The current value (from any thread).
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// The values of a core's gauges, for setting them all in one call
/// ([`CoreMetrics::set_gauges`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GaugeSnapshot {
    /// Open client connections on this core.
    pub connections: u64,
    /// Sessions on this core, connected or not.
    pub sessions: u64,
    /// Retained messages in this core's shard of the topic space.
    pub retained_messages: u64,
    /// Outbound QoS 1/2 messages sent and not yet acknowledged, over this core's sessions.
    pub inflight_messages: u64,
    /// Messages waiting in this core's session queues.
    pub queued_messages: u64,
    /// Subscriptions in this core's shard of the topic space.
    pub subscriptions: u64,
}

/// One core's metrics. Written only by that core's thread; read by the metrics thread.
///
/// Aligned to 128 bytes so that the cores' structs, which sit side by side in
/// [`Metrics`], never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreMetrics {
    // Connections.
    /// Network connections accepted (before CONNECT is read).
    pub connections_accepted: Counter,
    /// Network connections closed, for any reason.
    pub connections_closed: Counter,
    /// Connections refused because the connection limit was reached.
    pub connections_refused_limit: Counter,
    /// CONNECTs (or MQTT 5 re-authentications) refused for bad credentials.
    pub auth_failures: Counter,
    /// PUBLISHes refused by the ACL.
    pub acl_denied_publish: Counter,
    /// Subscriptions (topic filters) refused by the ACL.
    pub acl_denied_subscribe: Counter,
    /// Messages not delivered because the ACL denies the subscriber reading the topic.
    pub acl_denied_read: Counter,

    // Traffic.
    /// PUBLISHes received from clients, indexed by QoS (0, 1, 2).
    pub messages_received: [Counter; 3],
    /// PUBLISHes sent to clients, indexed by QoS (0, 1, 2).
    pub messages_sent: [Counter; 3],
    /// Bytes read from client connections.
    pub bytes_received: Counter,
    /// Bytes written to client connections.
    pub bytes_sent: Counter,

    // Messages not delivered, by reason.
    /// A session queue was full; a message was dropped.
    pub dropped_queue_full: Counter,
    /// QoS 0 message for a session without a connection.
    pub dropped_offline_qos0: Counter,
    /// QoS 0 message for a connection whose write queue was over its limit.
    pub dropped_slow_qos0: Counter,
    /// Larger than the receiving client's Maximum Packet Size.
    pub dropped_too_large: Counter,
    /// Message expiry interval passed before delivery.
    pub dropped_expired: Counter,
    /// Routed to a session incarnation that has since been replaced.
    pub dropped_stale_session: Counter,
    /// Publishes refused because of a rate limit.
    pub publish_rate_limited: Counter,
    /// Publishes refused because the log's backlog was full.
    pub journal_rejected: Counter,
    /// Acknowledgements failed because the log reported an error before the record was durable.
    pub journal_failed_acks: Counter,
    /// A cross-core ring was full and the message waited in the sender's overflow queue (not a loss).
    pub ring_overflows: Counter,
    /// Times a core became overloaded and QoS 1/2 publishers were read more slowly.
    pub overloads: Counter,

    // Gauges, usually set together with [`set_gauges`](Self::set_gauges).
    /// Open client connections on this core.
    pub connections: Gauge,
    /// Sessions on this core, connected or not.
    pub sessions: Gauge,
    /// Retained messages in this core's shard of the topic space.
    pub retained_messages: Gauge,
    /// Outbound QoS 1/2 messages sent and not yet acknowledged, over this core's sessions.
    pub inflight_messages: Gauge,
    /// Messages waiting in this core's session queues.
    pub queued_messages: Gauge,
    /// Subscriptions in this core's shard of the topic space.
    pub subscriptions: Gauge,
    /// Idle connections of this core parked off their tasks (io_uring runtime).
    pub parked_connections: Gauge,
}

impl CoreMetrics {
    /// Counts a PUBLISH received with `qos` (values above 2 count as 2) and its size on the wire.
    #[inline]
    pub fn message_received(&self, qos: u8, bytes: u64) {
        self.messages_received[usize::from(qos.min(2))].inc();
        self.bytes_received.add(bytes);
    }

    /// Counts a PUBLISH sent with `qos` (values above 2 count as 2). Bytes are counted
    /// separately ([`bytes_sent`](Self::bytes_sent)) because writes are usually batched.
    #[inline]
    pub fn message_sent(&self, qos: u8) {
        self.messages_sent[usize::from(qos.min(2))].inc();
    }

    /// Sets every gauge from `g`.
    pub fn set_gauges(&self, g: &GaugeSnapshot) {
        self.connections.set(g.connections);
        self.sessions.set(g.sessions);
        self.retained_messages.set(g.retained_messages);
        self.inflight_messages.set(g.inflight_messages);
        self.queued_messages.set(g.queued_messages);
        self.subscriptions.set(g.subscriptions);
    }

    /// The gauges' current values.
    pub fn gauges(&self) -> GaugeSnapshot {
        GaugeSnapshot {
            connections: self.connections.get(),
            sessions: self.sessions.get(),
            retained_messages: self.retained_messages.get(),
            inflight_messages: self.inflight_messages.get(),
            queued_messages: self.queued_messages.get(),
            subscriptions: self.subscriptions.get(),
        }
    }

    /// Messages received over all QoS levels.
    pub fn messages_received_total(&self) -> u64 {
        self.messages_received.iter().map(Counter::get).fold(0, u64::wrapping_add)
    }

    /// Messages sent over all QoS levels.
    pub fn messages_sent_total(&self) -> u64 {
        self.messages_sent.iter().map(Counter::get).fold(0, u64::wrapping_add)
    }
}

/// The broker's metrics: one [`CoreMetrics`] per core, one [`WalMetrics`] per WAL shard.
/// Allocated once; share it in an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    cores: Box<[CoreMetrics]>,
    wal: Box<[WalMetrics]>,
}

impl Metrics {
    /// Metrics for `cores` cores, with one WAL shard per core.
    pub fn new(cores: usize) -> Self {
        Self::with_wal_shards(cores, cores)
    }

    /// Metrics for `cores` cores and `wal_shards` WAL shards.
    pub fn with_wal_shards(cores: usize, wal_shards: usize) -> Self {
        Self {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            wal: (0..wal_shards).map(|_| WalMetrics::default()).collect(),
        }
    }

    /// Core `i`'s metrics. Only core `i`'s thread may update them.
    ///
    /// # Panics
    /// If `i` is not below the number of cores given to [`new`](Self::new).
    #[inline]
    pub fn core(&self, i: usize) -> &CoreMetrics {
        &self.cores[i]
    }

    /// Every core's metrics, in core order.
    pub fn cores(&self) -> &[CoreMetrics] {
        &self.cores
    }

    /// WAL shard `shard`'s metrics. Only that shard's writer thread may update them.
    ///
    /// # Panics
    /// If `shard` is not below the number of WAL shards.
    #[inline]
    pub fn wal(&self, shard: usize) -> &WalMetrics {
        &self.wal[shard]
    }

    /// Every WAL shard's metrics, in shard order.
    pub fn wal_shards(&self) -> &[WalMetrics] {
        &self.wal
    }

    /// The sum over cores of one counter, e.g. `m.sum_counter(|c| &c.connections_accepted)`.
    pub fn sum_counter(&self, f: impl Fn(&CoreMetrics) -> &Counter) -> u64 {
        self.cores.iter().map(|c| f(c).get()).fold(0, u64::wrapping_add)
    }

    /// The sum over cores of one gauge, e.g. `m.sum_gauge(|c| &c.connections)`.
    pub fn sum_gauge(&self, f: impl Fn(&CoreMetrics) -> &Gauge) -> u64 {
        self.cores.iter().map(|c| f(c).get()).fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_metrics_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<CoreMetrics>(), 128);
        assert_eq!(std::mem::size_of::<CoreMetrics>() % 128, 0);
        let m = Metrics::new(3);
        let a = m.core(0) as *const CoreMetrics as usize;
        let b = m.core(1) as *const CoreMetrics as usize;
        assert_eq!(a % 128, 0);
        assert!(b - a >= 128);
    }

    #[test]
    fn metrics_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
    }

    #[test]
    fn counters_sum_over_cores() {
        let m = Metrics::new(3);
        m.core(0).connections_accepted.inc();
        m.core(2).connections_accepted.add(4);
        m.core(1).message_received(1, 100);
        m.core(1).message_received(7, 10);
        m.core(0).message_sent(0);
        assert_eq!(m.sum_counter(|c| &c.connections_accepted), 5);
        assert_eq!(m.core(1).messages_received[1].get(), 1);
        assert_eq!(m.core(1).messages_received[2].get(), 1);
        assert_eq!(m.core(1).messages_received_total(), 2);
        assert_eq!(m.sum_counter(|c| &c.bytes_received), 110);
        assert_eq!(m.core(0).messages_sent_total(), 1);
        m.core(0).connections_accepted.set(10);
        assert_eq!(m.sum_counter(|c| &c.connections_accepted), 14);
    }

    #[test]
    fn gauges_set_from_snapshot() {
        let m = Metrics::new(2);
        let g = GaugeSnapshot {
            connections: 1,
            sessions: 2,
            retained_messages: 3,
            inflight_messages: 4,
            queued_messages: 5,
            subscriptions: 6,
        };
        m.core(0).set_gauges(&g);
        m.core(1).set_gauges(&g);
        assert_eq!(m.core(1).gauges(), g);
        assert_eq!(m.sum_gauge(|c| &c.queued_messages), 10);
        m.core(1).set_gauges(&GaugeSnapshot::default());
        assert_eq!(m.sum_gauge(|c| &c.queued_messages), 5);
    }
}
