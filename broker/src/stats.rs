//! Counters a core keeps about itself; the metrics endpoint (operations issue) exports them.

/// Per-core counters. Every drop has a named reason.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub connections_accepted: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    /// A session queue was full; its oldest message was dropped.
    pub dropped_queue_full: u64,
    /// QoS 0 message for a session without a connection.
    pub dropped_offline_qos0: u64,
    /// QoS 0 message for a connection whose write queue was over its limit.
    pub dropped_slow_qos0: u64,
    /// Larger than the receiving client's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Message expiry interval passed before delivery.
    pub dropped_expired: u64,
    /// Routed to a session incarnation that has since been replaced (clean start).
    pub dropped_stale_session: u64,
    /// Publishes refused because the log's backlog was full.
    pub journal_rejected: u64,
    /// Acknowledgements failed because the log reported an error before the record was
    /// durable.
    pub journal_failed_acks: u64,
    /// A cross-core ring was full and the message waited in the sender's overflow queue.
    pub ring_overflows: u64,
}
