//! Counters a core keeps about itself; the metrics endpoint (operations issue) exports them.

/// Per-core counters. Every drop has a named reason.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub connections_accepted: u64,
    /// PUBLISHes received, by QoS.
    pub messages_in_by_qos: [u64; 3],
    /// PUBLISHes sent, by QoS.
    pub messages_out_by_qos: [u64; 3],
    /// MQTT bytes decoded from clients and written to them.
    pub bytes_in: u64,
    pub bytes_out: u64,
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
    /// CONNECTs refused because the connection limit was reached.
    pub refused_at_limit: u64,
    /// Times a client's reading was paused for going over its publish rate.
    pub rate_limited: u64,
    /// CONNECTs refused for their credentials (or for sending none).
    pub auth_failures: u64,
    /// Publishes the ACL refused (dropped; MQTT 5 QoS 1/2 answered with 0x87).
    pub acl_denied_publish: u64,
    /// Subscriptions the ACL refused (SUBACK failure).
    pub acl_denied_subscribe: u64,
    /// Messages not delivered because the ACL denies the subscriber reading the topic.
    pub acl_denied_read: u64,
    /// A cross-core ring was full and the message waited in the sender's overflow queue.
    pub ring_overflows: u64,
    /// Times this core became overloaded (see `core::OVERLOAD_BACKLOG`) and QoS 1/2
    /// publishers were read more slowly.
    pub overloads: u64,
}
