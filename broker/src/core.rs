//! One core's broker state machine, sans-IO: events in ([`Core::on_bytes`],
//! [`Core::on_message`], [`Core::on_tick`], ...), [`Action`]s out. The runtime driver
//! (`server.rs`) owns sockets, timers and rings and does what the actions say; this file
//! never touches a socket or reads a clock (time comes in as `now`).
//!
//! A core plays two roles:
//! - **session host** for the connections it accepted and the sessions that live on it;
//! - **shard** for the topics that hash to it: it orders their messages, keeps their
//!   retained messages and their subscriptions (exact filters here only, wildcard
//!   filters on every shard), and fans messages out to the cores hosting subscribers.
//!
//! Cores talk only through [`CoreMsg`]s. A message to itself takes no ring: it goes
//! through `local_inbox` within the same event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{
    self, reason, Ack, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS,
    SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use crate::config::Config;
use crate::message::{detach_properties, owned, Message, SharedMessage};
use crate::persist::{self, WallClock};
use crate::registry::Registry;
use crate::router::{RetainedStore, SessionRef, Subscriber, SubscriptionIndex, Target};
use crate::session::{self, Conn, ConnId, FanoutCache, Limits, Outgoing, Phase, Session, StoredSubscription, Writer};
use crate::stats::Stats;
use crate::topic;

/// What the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Append these bytes to the connection's write queue.
    Write(ConnId, Bytes),
    /// Write what is queued, then close the connection.
    Close(ConnId),
    /// Push onto the ring towards `core` and wake it.
    Send(usize, CoreMsg),
}

/// Identifies a request awaiting replies from shards (SUBSCRIBE, UNSUBSCRIBE).
#[derive(Debug, Clone, Copy)]
pub struct RequestRef {
    pub core: usize,
    pub id: u64,
}

/// Where a shard sends the acknowledgement of an inbound QoS 1/2 publish. The shard
/// replies once it has taken the message (and, with the WAL, once it is durable), so the
/// PUBACK/PUBREC is an action the shard may delay.
#[derive(Debug, Clone, Copy)]
pub struct PublishAck {
    pub core: usize,
    pub conn: ConnId,
    pub pkid: u16,
    pub qos: QoS,
}

/// Messages between cores.
#[derive(Debug)]
pub enum CoreMsg {
    /// To the topic's shard: order, retain, fan out.
    Publish {
        msg: SharedMessage,
        ack: Option<PublishAck>,
    },
    /// From the shard: the publish was taken.
    /// `reason`: success, no matching subscribers, or a failure (the log could not keep it).
    PublishDone {
        conn: ConnId,
        pkid: u16,
        qos: QoS,
        reason: u8,
    },
    /// From a shard to a session host: deliver `msg` to these sessions.
    Deliver {
        msg: SharedMessage,
        /// (shard, log sequence number) when the message was logged.
        origin: Option<(usize, u64)>,
        targets: Vec<Target>,
    },
    /// To a shard: add or replace a subscription.
    Subscribe {
        req: Option<(RequestRef, usize)>,
        subscriber: Subscriber,
        filter: Bytes,
        group: Option<Bytes>,
        want_retained: bool,
    },
    /// From a shard: subscription in place; retained messages that match it.
    /// `head` is the shard's last log sequence number when the subscription took effect.
    SubscribeDone {
        req_id: u64,
        filter_index: usize,
        retained: Vec<SharedMessage>,
        shard: usize,
        head: u64,
    },
    /// To a client id's home shard: append this session record to its log.
    Persist {
        body: Vec<u8>,
    },
    /// To a shard: remove a subscription of this session incarnation.
    Unsubscribe {
        req: Option<RequestRef>,
        client_id: Bytes,
        epoch: u64,
        filter: Bytes,
        group: Option<Bytes>,
    },
    UnsubscribeDone {
        req_id: u64,
    },
    /// To the core holding a client id: a new connection on `new_core` claims it.
    Takeover {
        client_id: Bytes,
        new_core: usize,
        new_claim: u64,
        clean_start: bool,
        conn: ConnId,
    },
    /// Reply to `Takeover`: the session, unless it ended or the new connection asked for a
    /// clean start.
    Handoff {
        client_id: Bytes,
        conn: ConnId,
        claim: u64,
        session: Option<Box<Session>>,
    },
}

enum Pending {
    SubAck {
        conn: ConnId,
        pkid: u16,
        reasons: Vec<u8>,
        filters: Vec<(QoS, Option<u32>)>,
        /// The filter of each index (empty for refused ones), to record where each
        /// subscription starts in each shard's log.
        keys: Vec<Bytes>,
        outstanding: usize,
        retained: Vec<(usize, SharedMessage)>,
    },
    UnsubAck {
        conn: ConnId,
        pkid: u16,
        reasons: Vec<u8>,
        outstanding: usize,
    },
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    KeepAlive(ConnId),
    Session(Bytes),
    Tombstone(Bytes),
}

const RETAINED_SWEEP: Duration = Duration::from_secs(30);
/// How often persistent sessions' delivery progress is logged.
const CHECKPOINT: Duration = Duration::from_secs(1);
/// Records waiting for room in the journal's queue beyond which publishes are refused.
const JOURNAL_BACKLOG_MAX: usize = 100_000;

/// A record waiting for room in the journal: (timestamp, body).
type Backlogged = (u64, Vec<u8>);

/// A shard's durable log as the core sees it. Appends never block; durability is reported
/// asynchronously (the driver calls [`Core::on_durable`] when it may have advanced).
pub trait Journal {
    /// Queues a record and returns its sequence number, or gives the body back when the
    /// queue is full.
    fn append(&mut self, timestamp_ms: u64, body: Vec<u8>) -> Result<u64, Vec<u8>>;
    /// Every record up to this sequence number is durable.
    fn durable_seq(&self) -> u64;
    /// Whether writing or syncing is currently failing (e.g. full disk).
    fn failing(&self) -> bool;
    /// The sequence number the next append gets.
    fn next_seq(&self) -> u64;
    /// The log's segments, closed ones oldest first, then the active one.
    fn segments(&self) -> Vec<promptmq_wal::SegmentInfo> {
        Vec::new()
    }
    /// Allows deleting the closed segments whose records all come before `seq`.
    fn delete_before(&mut self, _seq: u64) {}
}

/// What persistent sessions still need from each shard's log, published by every core
/// for its own sessions (one row per core, one column per shard) so that a shard never
/// deletes a segment holding messages owed to a session that lives on another core.
/// Written once a second per core; not on the message path.
pub struct RetentionPins {
    cores: usize,
    needed: Vec<std::sync::atomic::AtomicU64>,
}

impl RetentionPins {
    pub fn new(cores: usize) -> RetentionPins {
        RetentionPins { cores, needed: (0..cores * cores).map(|_| std::sync::atomic::AtomicU64::new(0)).collect() }
    }

    fn publish(&self, core: usize, shard: usize, seq: u64) {
        if let Some(a) = self.needed.get(core * self.cores + shard) {
            a.store(seq, std::sync::atomic::Ordering::Release);
        }
    }

    /// The lowest sequence number of `shard`'s log any core still needs. Until a core has
    /// published, it pins everything (0).
    fn needed_from(&self, shard: usize) -> u64 {
        (0..self.cores)
            .filter_map(|c| self.needed.get(c * self.cores + shard))
            .map(|a| a.load(std::sync::atomic::Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}

/// Records younger than this are never deleted (see `check_retention`).
const PIN_LAG_MS: u64 = 3_000;

/// How often a shard looks at its log's retention.
const RETENTION_CHECK: Duration = Duration::from_secs(5);
/// How long a core forwards deliveries for a session that moved to another core (they were
/// routed before the shards learned the new route).
const TOMBSTONE: Duration = Duration::from_secs(10);

fn session_ref(s: &Session, core: usize) -> SessionRef {
    SessionRef { client_id: s.client_id.clone(), core, epoch: s.epoch, claim: s.claim }
}

/// Why a connection is being closed by the broker.
struct CloseWith {
    /// DISCONNECT reason to send first (MQTT 5 only).
    reason: Option<u8>,
    /// Publish the will (abnormal end) or discard it.
    will: bool,
}

/// One core: session host and shard.
pub struct Core {
    pub id: usize,
    cores: usize,
    config: Arc<Config>,
    limits: Limits,
    registry: Arc<Registry>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    sessions: HashMap<Bytes, Session>,
    /// Sessions handed to another core: (epoch, core, until). Deliveries still addressed
    /// here for that epoch are forwarded.
    moved: HashMap<Bytes, (u64, usize, Instant)>,
    /// Takeover requests that arrived while this core's connection for the same client id
    /// was still waiting for the session; served once the session arrives.
    deferred_takeovers: HashMap<Bytes, CoreMsg>,
    /// Connections that closed while waiting for their session: (client id, session expiry,
    /// will), applied when the session arrives.
    closed_awaiting: HashMap<ConnId, (Bytes, u32, Option<Will>)>,
    subscriptions: SubscriptionIndex,
    retained: RetainedStore,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    local_inbox: VecDeque<CoreMsg>,
    actions: Vec<Action>,
    writes: Vec<(ConnId, Bytes)>,
    scratch: BytesMut,
    fanout: FanoutCache,
    route_scratch: Vec<Target>,
    /// This shard's durable log, if any.
    journal: Option<Box<dyn Journal>>,
    wait_for_durable: bool,
    /// Records not yet accepted by the journal (its queue was full): (timestamp, body,
    /// acknowledgement waiting for it).
    journal_backlog: VecDeque<Backlogged>,
    /// The sequence number this shard's next log record gets.
    next_log_seq: u64,
    pins: Option<Arc<RetentionPins>>,
    /// Log sequence number of each retained message's record in this shard's log (0 when
    /// it was restored from an earlier run: rewritten before any deletion).
    retained_seq: HashMap<Bytes, u64>,
    /// The latest snapshot of each persistent session homed at this shard: (seq, body),
    /// rewritten ahead of a retention cut.
    snapshots: HashMap<Bytes, (u64, Vec<u8>)>,
    /// A deletion waiting for the rewritten records to be durable: (cut, needs durable).
    pending_cut: Option<(u64, u64)>,
    next_retention_check: Option<Instant>,
    /// Acknowledgements waiting for their record to be durable, in sequence order.
    pending_acks: VecDeque<(u64, PublishAck, u8)>,
    /// Wall clock for durable records.
    clock: WallClock,
    /// When expired retained messages are next swept out.
    next_retained_sweep: Option<Instant>,
    /// When persistent sessions' progress is next logged.
    next_checkpoint: Option<Instant>,
    /// Distinguishes assigned client ids of this process from those of earlier runs.
    nonce: u64,
    pub stats: Stats,
}

/// FNV-1a: stable across processes and platforms, so a topic maps to the same shard after
/// a restart (the WAL depends on that).
pub fn shard_of(topic: &[u8], cores: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in topic {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % cores.max(1) as u64) as usize
}

impl Core {
    /// `nonce` makes assigned client ids unique across restarts (the driver passes the
    /// start time).
    pub fn new(
        id: usize,
        cores: usize,
        config: Arc<Config>,
        registry: Arc<Registry>,
        nonce: u64,
        clock: WallClock,
    ) -> Core {
        let limits = Limits {
            max_inflight: config.max_inflight,
            max_queued: config.max_queued_messages,
            drop_policy: config.queue_drop_policy,
            max_write_buffer: config.max_write_buffer,
        };
        Core {
            id,
            cores,
            config,
            limits,
            registry,
            conns: HashMap::new(),
            next_conn: 1,
            sessions: HashMap::new(),
            moved: HashMap::new(),
            deferred_takeovers: HashMap::new(),
            closed_awaiting: HashMap::new(),
            subscriptions: SubscriptionIndex::default(),
            retained: RetainedStore::default(),
            pending: HashMap::new(),
            next_request: 1,
            timers: BinaryHeap::new(),
            local_inbox: VecDeque::new(),
            actions: Vec::new(),
            writes: Vec::new(),
            scratch: BytesMut::with_capacity(4096),
            fanout: FanoutCache::default(),
            route_scratch: Vec::new(),
            nonce,
            next_retained_sweep: None,
            next_checkpoint: None,
            journal: None,
            wait_for_durable: false,
            journal_backlog: VecDeque::new(),
            pending_acks: VecDeque::new(),
            next_log_seq: 1,
            pins: None,
            retained_seq: HashMap::new(),
            snapshots: HashMap::new(),
            pending_cut: None,
            next_retention_check: None,
            clock,
            stats: Stats::default(),
        }
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self, into: &mut Vec<Action>) {
        self.flush_writes();
        into.append(&mut self.actions);
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    // ---- events from the driver -------------------------------------------------------

    /// A connection was accepted on this core.
    pub fn on_accept(&mut self, now: Instant) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, Conn::new(id, now));
        self.arm_conn_timer(id);
        self.stats.connections_accepted += 1;
        id
    }

    /// Bytes arrived on a connection: decodes and handles every complete packet in `buf`,
    /// leaving a partial one in place.
    pub fn on_bytes(&mut self, id: ConnId, buf: &mut BytesMut, now: Instant) {
        let max = self.config.max_packet_size as usize;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                buf.clear();
                break;
            };
            conn.last_seen = now;
            let version = match conn.phase {
                Phase::AwaitingConnect => None,
                _ => Some(conn.version),
            };
            let frame = match codec::check_frame(buf, max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    buf.clear();
                    self.protocol_failure(id, &e, now);
                    break;
                }
            };
            let bytes = buf.split_to(frame.total_len).freeze();
            match codec::decode_packet(bytes, version) {
                Ok(packet) => self.on_packet(id, packet, now),
                Err(e) => {
                    buf.clear();
                    self.protocol_failure(id, &e, now);
                    break;
                }
            }
        }
        self.run_local(now);
    }

    /// The connection's socket closed or failed.
    pub fn on_closed(&mut self, id: ConnId, now: Instant) {
        if self.conns.contains_key(&id) {
            self.close(id, CloseWith { reason: None, will: true }, now);
            self.run_local(now);
        }
    }

    /// Bytes handed to the writer of this connection and not yet written.
    pub fn pending_write(&self, id: ConnId) -> usize {
        self.conns.get(&id).map_or(0, |c| c.pending_write)
    }

    /// The writer wrote `n` bytes of this connection's queue.
    pub fn on_written(&mut self, id: ConnId, n: usize) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.pending_write = c.pending_write.saturating_sub(n);
        }
    }

    /// A message from another core (or from this one).
    pub fn on_message(&mut self, msg: CoreMsg, now: Instant) {
        self.handle_message(msg, now);
        self.run_local(now);
    }

    /// Time passed: keep-alive, will delay, session expiry.
    pub fn on_tick(&mut self, now: Instant) {
        self.prune_timers();
        self.on_durable(now);
        if self.next_retained_sweep.is_none_or(|t| t <= now) {
            self.retained.remove_expired(now);
            self.next_retained_sweep = Some(now + RETAINED_SWEEP);
        }
        if self.next_checkpoint.is_none_or(|t| t <= now) {
            // Log the progress of persistent sessions, so that after a crash fewer
            // acknowledged messages are delivered again.
            let dirty: Vec<Bytes> = self
                .sessions
                .values()
                .filter(|s| s.progress_dirty && s.is_persistent())
                .map(|s| s.client_id.clone())
                .collect();
            for client_id in dirty {
                self.persist_session(&client_id, now);
            }
            self.publish_pins();
            self.next_checkpoint = Some(now + CHECKPOINT);
        }
        if self.next_retention_check.is_none_or(|t| t <= now) {
            self.check_retention(now);
            self.next_retention_check = Some(now + RETENTION_CHECK);
        }
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, timer))) = self.timers.pop() else { break };
            match timer {
                Timer::KeepAlive(id) => self.check_keep_alive(id, due, now),
                Timer::Session(client_id) => self.check_session(&client_id, due, now),
                Timer::Tombstone(client_id) => {
                    if self.moved.get(&client_id).is_some_and(|m| m.2 <= now) {
                        self.moved.remove(&client_id);
                    }
                }
            }
        }
        self.run_local(now);
    }

    /// The earliest timer, so the driver knows when to tick next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    // ---- plumbing -----------------------------------------------------------------------

    fn send(&mut self, core: usize, msg: CoreMsg) {
        if core == self.id {
            self.local_inbox.push_back(msg);
        } else {
            self.actions.push(Action::Send(core, msg));
        }
    }

    fn run_local(&mut self, now: Instant) {
        while let Some(msg) = self.local_inbox.pop_front() {
            self.handle_message(msg, now);
        }
        self.flush_writes();
    }

    fn flush_writes(&mut self) {
        for (id, bytes) in self.writes.drain(..) {
            self.actions.push(Action::Write(id, bytes));
        }
    }

    fn write_packet(&mut self, id: ConnId, packet: &Packet) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        Writer { out: &mut self.writes, scratch: &mut self.scratch, cache: &mut self.fanout }.packet(conn, packet);
    }

    fn shards_for(&self, filter: &[u8]) -> Vec<usize> {
        if topic::has_wildcards(filter) {
            (0..self.cores).collect()
        } else {
            vec![shard_of(filter, self.cores)]
        }
    }

    // ---- packets ------------------------------------------------------------------------

    fn on_packet(&mut self, id: ConnId, packet: Packet, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        match &mut conn.phase {
            Phase::AwaitingConnect => match packet {
                Packet::Connect(c) => self.on_connect(id, c, now),
                // The decoder accepts only CONNECT before CONNECT; this is defence in depth.
                _ => self.close(id, CloseWith { reason: None, will: false }, now),
            },
            Phase::AwaitingSession { pending } => {
                // A client may pipeline packets behind CONNECT; a few are normal, hundreds
                // before the CONNACK are abuse (each may be a full-size packet).
                if pending.len() >= 128 {
                    self.close(id, CloseWith { reason: Some(reason::RECEIVE_MAXIMUM_EXCEEDED), will: false }, now);
                } else {
                    pending.push(packet);
                }
            }
            Phase::Connected => self.on_connected_packet(id, packet, now),
        }
    }

    fn on_connected_packet(&mut self, id: ConnId, packet: Packet, now: Instant) {
        match packet {
            Packet::Publish(p) => self.on_publish(id, p, now),
            Packet::PubAck(a) => self.on_puback(id, a.pkid, now),
            Packet::PubRec(a) => self.on_pubrec(id, a, now),
            Packet::PubRel(a) => self.on_pubrel(id, a.pkid),
            Packet::PubComp(a) => self.on_pubcomp(id, a.pkid, now),
            Packet::Subscribe(s) => self.on_subscribe(id, s, now),
            Packet::Unsubscribe(u) => self.on_unsubscribe(id, u, now),
            Packet::PingReq => self.write_packet(id, &Packet::PingResp),
            Packet::Disconnect(d) => self.on_disconnect(id, d, now),
            // A second CONNECT is a protocol error [MQTT-3.1.0-2]; so is AUTH when CONNECT
            // named no authentication method [MQTT-4.12.0-1]; and server-to-client packets.
            Packet::Connect(_)
            | Packet::Auth(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => self.close(id, CloseWith { reason: Some(reason::PROTOCOL_ERROR), will: true }, now),
        }
    }

    fn protocol_failure(&mut self, id: ConnId, e: &DecodeError, now: Instant) {
        let Some(conn) = self.conns.get(&id) else { return };
        tracing::debug!(conn = id, error = %e, "closing connection on bad packet");
        if matches!(conn.phase, Phase::AwaitingConnect) {
            // A CONNECT we cannot accept: answer with CONNACK where the client can read it
            // [MQTT-3.1.2-2], then close.
            if let DecodeError::UnsupportedProtocolVersion(level) = e {
                let (version, code) = if *level > 5 {
                    (ProtocolVersion::V5, reason::UNSUPPORTED_PROTOCOL_VERSION)
                } else {
                    (ProtocolVersion::V311, reason::UNSUPPORTED_PROTOCOL_VERSION)
                };
                if let Some(c) = self.conns.get_mut(&id) {
                    c.version = version;
                }
                self.connack_refuse(id, code);
                return;
            }
            self.close(id, CloseWith { reason: None, will: false }, now);
            return;
        }
        self.close(id, CloseWith { reason: Some(e.reason_code()), will: true }, now);
    }

    // ---- CONNECT ------------------------------------------------------------------------

    fn connack_refuse(&mut self, id: ConnId, code: u8) {
        let ack = ConnAck { session_present: false, code, properties: Properties::default() };
        self.write_packet(id, &Packet::ConnAck(ack));
        self.conns.remove(&id);
        self.flush_writes();
        self.actions.push(Action::Close(id));
    }

    fn on_connect(&mut self, id: ConnId, c: Connect, now: Instant) {
        let max_keep_alive = self.config.max_keep_alive;
        let core_id = self.id;
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.version = c.protocol;
        let v5 = c.protocol.is_v5();
        if v5 && c.properties.authentication_method.is_some() {
            // Enhanced authentication is not supported: say so [MQTT-4.12.0-1].
            self.connack_refuse(id, reason::BAD_AUTHENTICATION_METHOD);
            return;
        }
        if let Some(w) = &c.will {
            if topic::validate_topic_name(&w.topic).is_err() {
                self.connack_refuse(id, reason::TOPIC_NAME_INVALID);
                return;
            }
        }
        // Owned copies: these live as long as the session, and a slice would pin the whole
        // read buffer it came from.
        let mut client_id = owned(&c.client_id);
        if client_id.is_empty() {
            if !v5 && !c.clean_start {
                // [MQTT-3.1.3-8]
                self.connack_refuse(id, reason::CLIENT_IDENTIFIER_NOT_VALID);
                return;
            }
            client_id = Bytes::from(format!("promptmq-{:x}-{core_id}-{id}", self.nonce));
            conn.assigned_client_id = v5;
        }
        conn.client_id = client_id.clone();
        let mut keep_alive = c.keep_alive;
        if v5 && keep_alive > max_keep_alive {
            keep_alive = max_keep_alive;
            conn.server_keep_alive = Some(max_keep_alive);
        }
        conn.keep_alive = Duration::from_secs(u64::from(keep_alive));
        conn.clean_start = c.clean_start;
        conn.will = c.will.map(|mut w| {
            w.topic = owned(&w.topic);
            w.payload = owned(&w.payload);
            detach_properties(&mut w.properties);
            w
        });
        if v5 {
            let p = &c.properties;
            conn.client_receive_max = p.receive_maximum.unwrap_or(u16::MAX);
            conn.client_max_packet = p.maximum_packet_size.map_or(conn.client_max_packet, |m| m as usize);
            conn.client_alias_max = p.topic_alias_maximum.unwrap_or(0);
            conn.session_expiry = p.session_expiry_interval.unwrap_or(0);
        } else {
            conn.session_expiry = if c.clean_start { 0 } else { u32::MAX };
        }
        if !conn.keep_alive.is_zero() {
            // Not keep_alive_deadline(): the phase is still AwaitingConnect here.
            let deadline = now + conn.keep_alive * 3 / 2;
            if conn.timer_at.is_none_or(|t| deadline < t) {
                conn.timer_at = Some(deadline);
                self.timers.push(Reverse((deadline, Timer::KeepAlive(id))));
            }
        }
        let claim = self.registry.claim(&client_id, self.id);
        match claim.previous_core {
            None => self.establish(id, claim.token, None, now),
            Some(old_core) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.phase = Phase::AwaitingSession { pending: Vec::new() };
                }
                let clean_start = c.clean_start;
                let takeover =
                    CoreMsg::Takeover { client_id, new_core: self.id, new_claim: claim.token, clean_start, conn: id };
                self.send(old_core, takeover);
            }
        }
    }

    /// Completes a CONNECT: attaches (or creates) the session, sends CONNACK, resumes
    /// unacknowledged deliveries and handles packets pipelined behind CONNECT. `claim` is
    /// the registry token of this connection's claim on the client id.
    fn establish(&mut self, id: ConnId, claim: u64, existing: Option<Box<Session>>, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            // The connection closed while its session was in transit.
            let Some((client_id, expiry, will)) = self.closed_awaiting.remove(&id) else { return };
            match existing {
                Some(s) => self.adopt_orphan(*s, claim, expiry, will, now),
                None => match self.deferred_takeovers.remove(&client_id) {
                    Some(t) => self.handle_message(t, now),
                    None => self.registry.release(&client_id, claim),
                },
            }
            return;
        };
        let pending = match std::mem::replace(&mut conn.phase, Phase::Connected) {
            Phase::AwaitingSession { pending } => pending,
            _ => Vec::new(),
        };
        let session_present = existing.is_some() && !conn.clean_start;
        let mut session = match existing {
            Some(s) if !conn.clean_start => *s,
            _ => Session::new(conn.client_id.clone(), claim, conn.version),
        };
        // A continuing session keeps its epoch (deliveries already routed to it stay
        // valid); its claim token moves on, so shards can tell newer routes from older.
        let repoint = session.claim != claim;
        session.claim = claim;
        session.conn = Some(id);
        session.version = conn.version;
        session.expiry_interval = conn.session_expiry;
        session.expires_at = None;
        session.will = conn.will.take();
        session.will_due = None;
        // Any heap entry for the session (possibly on another core's heap) is now stale.
        session.timer_at = None;

        let mut props = Properties::default();
        if conn.version.is_v5() {
            props.receive_maximum = Some(self.config.max_inflight);
            props.maximum_packet_size = Some(self.config.max_packet_size);
            props.topic_alias_maximum =
                (self.config.topic_alias_maximum > 0).then_some(self.config.topic_alias_maximum);
            props.server_keep_alive = conn.server_keep_alive;
            if conn.assigned_client_id {
                props.assigned_client_identifier = Some(conn.client_id.clone());
            }
        }
        let ack = ConnAck { session_present, code: reason::SUCCESS, properties: props };
        let mut w = Writer { out: &mut self.writes, scratch: &mut self.scratch, cache: &mut self.fanout };
        w.packet(conn, &Packet::ConnAck(ack));
        session::resume(&mut session, conn, self.limits, now, &mut w, &mut self.stats);
        if repoint {
            self.repoint_subscriptions(&session);
        }
        let client_id = session.client_id.clone();
        self.sessions.insert(client_id.clone(), session);
        self.persist_session(&client_id, now);
        for packet in pending {
            if self.conns.contains_key(&id) {
                self.on_connected_packet(id, packet, now);
            }
        }
        // A newer CONNECT for the same client id arrived while this one waited for the
        // session: it takes the session over now [MQTT-3.1.4-3].
        if let Some(t) = self.deferred_takeovers.remove(&client_id) {
            self.handle_message(t, now);
        }
    }

    /// Tells the shards that the session's subscriptions now route to this core, under its
    /// current claim (a shard ignores route updates older than the one it holds).
    fn repoint_subscriptions(&mut self, session: &Session) {
        let sref = session_ref(session, self.id);
        let subs: Vec<(Bytes, StoredSubscription)> =
            session.subscriptions.iter().map(|(f, s)| (f.clone(), s.clone())).collect();
        for (full, stored) in subs {
            self.route_subscribe(None, &sref, &full, stored, false);
        }
    }

    /// A session arrived for a connection that closed while waiting for it. The session
    /// continues as that connection left it: its will and session expiry apply as if the
    /// connection had been established and then lost.
    fn adopt_orphan(&mut self, mut s: Session, claim: u64, expiry: u32, will: Option<Will>, now: Instant) {
        if !self.registry.owns(&s.client_id, claim) {
            // Yet another connection claimed the client id meanwhile; its takeover request
            // was deferred here and carries the session on.
            if let Some(t) = self.deferred_takeovers.remove(&s.client_id) {
                s.conn = None;
                self.sessions.insert(s.client_id.clone(), s);
                self.handle_message(t, now);
            } else {
                s.will = None;
                self.end_session(s, now);
            }
            return;
        }
        s.claim = claim;
        s.conn = None;
        s.expiry_interval = expiry;
        s.will = will;
        self.repoint_subscriptions(&s);
        self.detach(s, true, now);
    }

    fn on_takeover(
        &mut self,
        client_id: Bytes,
        new_core: usize,
        new_claim: u64,
        clean_start: bool,
        conn: ConnId,
        now: Instant,
    ) {
        let Some(mut s) = self.sessions.remove(&client_id) else {
            let waiting = self
                .conns
                .values()
                .any(|c| c.client_id == client_id && matches!(c.phase, Phase::AwaitingSession { .. }));
            if waiting {
                // The session is on its way here for an earlier CONNECT: pass it on once it
                // arrives, instead of answering "no session" now.
                let t = CoreMsg::Takeover { client_id: client_id.clone(), new_core, new_claim, clean_start, conn };
                self.deferred_takeovers.insert(client_id, t);
            } else {
                self.send(new_core, CoreMsg::Handoff { client_id, conn, claim: new_claim, session: None });
            }
            return;
        };
        let was_connected = s.conn.is_some();
        if let Some(old) = s.conn.take() {
            // [MQTT-3.1.4-3]: the existing connection gets DISCONNECT 0x8E and is closed.
            if let Some(c) = self.conns.get_mut(&old) {
                if c.version.is_v5() {
                    let d = Disconnect { reason: reason::SESSION_TAKEN_OVER, properties: Properties::default() };
                    Writer { out: &mut self.writes, scratch: &mut self.scratch, cache: &mut self.fanout }
                        .packet(c, &Packet::Disconnect(d));
                }
            }
            self.conns.remove(&old);
            self.flush_writes();
            self.actions.push(Action::Close(old));
        }
        // The session ends on takeover when the new connection asks for a clean start, or
        // when the old connection's Session Expiry Interval was 0 (spec 3.1.4, and
        // [MQTT-3.1.2-6] for 3.1.1's Clean Session).
        let ends = clean_start || s.expiry_interval == 0;
        // The old connection's will (spec 3.1.3.2.2): sent now if its delay is 0 or the
        // session ends; a delayed will is cancelled when the session continues on the new
        // connection [MQTT-3.1.3-9].
        let delay = s.will.as_ref().map_or(0, will_delay);
        if ends || (was_connected && delay == 0) {
            if let Some(w) = s.will.take() {
                self.publish_will(&s.client_id, w, now);
            }
        }
        s.will = None;
        s.will_due = None;
        s.timer_at = None;
        if ends {
            self.end_session(s, now);
            self.send(new_core, CoreMsg::Handoff { client_id, conn, claim: new_claim, session: None });
            return;
        }
        if new_core != self.id {
            let tomb_until = now + TOMBSTONE;
            self.moved.insert(client_id.clone(), (s.epoch, new_core, tomb_until));
            self.timers.push(Reverse((tomb_until, Timer::Tombstone(client_id.clone()))));
        }
        self.send(new_core, CoreMsg::Handoff { client_id, conn, claim: new_claim, session: Some(Box::new(s)) });
    }

    // ---- PUBLISH in ---------------------------------------------------------------------

    fn on_publish(&mut self, id: ConnId, p: Publish, now: Instant) {
        let alias_max = self.config.topic_alias_maximum;
        let max_inflight = usize::from(self.config.max_inflight);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        // Topic alias (client to server) [MQTT-3.3.2-7..12].
        let topic = match p.properties.topic_alias {
            Some(alias) if alias == 0 || alias > alias_max => {
                return self.close(id, CloseWith { reason: Some(reason::TOPIC_ALIAS_INVALID), will: true }, now);
            }
            Some(alias) if p.topic.is_empty() => match conn.aliases_in.get(&alias) {
                Some(t) => t.clone(),
                None => return self.close(id, CloseWith { reason: Some(reason::PROTOCOL_ERROR), will: true }, now),
            },
            Some(alias) => {
                conn.aliases_in.insert(alias, owned(&p.topic));
                p.topic.clone()
            }
            None => p.topic.clone(),
        };
        if topic::validate_topic_name(&topic).is_err() {
            return self.close(id, CloseWith { reason: Some(reason::TOPIC_NAME_INVALID), will: true }, now);
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // Only the server sets subscription identifiers [MQTT-3.3.4-6].
            return self.close(id, CloseWith { reason: Some(reason::PROTOCOL_ERROR), will: true }, now);
        }
        let client_id = conn.client_id.clone();
        let Some(session) = self.sessions.get_mut(&client_id) else { return };
        let qos = p.qos;
        let pkid = p.pkid;
        if qos != QoS::AtMostOnce {
            // Receive Maximum: unacknowledged QoS 1 plus unreleased QoS 2 [MQTT-3.3.4-7].
            // 3.1.1 has no Receive Maximum; the same bound keeps its state finite.
            let in_use = conn.unacked_qos1 + session.incoming_qos2.len();
            let duplicate_qos2 = qos == QoS::ExactlyOnce && session.incoming_qos2.contains(&pkid);
            if in_use >= max_inflight && !duplicate_qos2 {
                return self.close(id, CloseWith { reason: Some(reason::RECEIVE_MAXIMUM_EXCEEDED), will: true }, now);
            }
            if duplicate_qos2 {
                // Already taken: answer again, deliver nothing twice [MQTT-4.3.3-9].
                let ack = Packet::PubRec(Ack::new(pkid, reason::SUCCESS));
                return self.write_packet(id, &ack);
            }
            if qos == QoS::ExactlyOnce {
                session.incoming_qos2.insert(pkid);
            } else {
                conn.unacked_qos1 += 1;
            }
        }
        self.stats.messages_in += 1;
        let mut msg = Message::from_publish(p, topic, client_id, now);
        if qos != QoS::AtMostOnce || msg.retain {
            // It may wait in queues or the retained store: own its bytes (one copy here,
            // not one per subscriber).
            msg = msg.detached();
        }
        let msg = Arc::new(msg);
        let ack = (qos != QoS::AtMostOnce).then_some(PublishAck { core: self.id, conn: id, pkid, qos });
        let shard = shard_of(&msg.topic, self.cores);
        self.send(shard, CoreMsg::Publish { msg, ack });
    }

    fn on_publish_done(&mut self, id: ConnId, pkid: u16, qos: QoS, code: u8, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if code >= 0x80 {
            // The message could not be made durable: the publisher must not be told it was
            // taken. The exchange ends, so a retry with this packet id is a new message.
            if qos == QoS::ExactlyOnce {
                if let Some(s) = self.sessions.get_mut(&conn.client_id) {
                    s.incoming_qos2.remove(&pkid);
                }
            }
            if !conn.version.is_v5() {
                // 3.1.1 has no failure code for PUBACK/PUBREC: close, the client resends.
                return self.close(id, CloseWith { reason: None, will: true }, now);
            }
        }
        let code = if conn.version.is_v5() { code } else { reason::SUCCESS };
        let packet = if qos == QoS::ExactlyOnce {
            Packet::PubRec(Ack::new(pkid, code))
        } else {
            conn.unacked_qos1 = conn.unacked_qos1.saturating_sub(1);
            Packet::PubAck(Ack::new(pkid, code))
        };
        self.write_packet(id, &packet);
    }

    fn on_pubrel(&mut self, id: ConnId, pkid: u16) {
        let Some(conn) = self.conns.get(&id) else { return };
        let known = self.sessions.get_mut(&conn.client_id).is_some_and(|s| s.incoming_qos2.remove(&pkid));
        let code = if known { reason::SUCCESS } else { reason::PACKET_IDENTIFIER_NOT_FOUND };
        self.write_packet(id, &Packet::PubComp(Ack::new(pkid, code)));
    }

    // ---- PUBLISH out acknowledgements -----------------------------------------------------

    fn with_session(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut Session, &mut Conn, &mut Writer<'_>, Limits, &mut Stats),
    ) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let Some(session) = self.sessions.get_mut(&conn.client_id) else { return };
        let mut w = Writer { out: &mut self.writes, scratch: &mut self.scratch, cache: &mut self.fanout };
        f(session, conn, &mut w, self.limits, &mut self.stats);
    }

    fn on_puback(&mut self, id: ConnId, pkid: u16, now: Instant) {
        self.with_session(id, |s, c, w, limits, stats| {
            if s.inflight.get(&pkid).is_some_and(|f| f.out.qos == QoS::AtLeastOnce) {
                session::complete(s, pkid);
                session::pump(s, c, limits, now, w, stats);
            }
        });
    }

    fn on_pubrec(&mut self, id: ConnId, a: Ack, now: Instant) {
        self.with_session(id, |s, c, w, limits, stats| {
            match s.inflight.get_mut(&a.pkid) {
                Some(f) if f.out.qos == QoS::ExactlyOnce => {
                    if a.reason >= 0x80 {
                        // The receiver refused it: the exchange ends here.
                        session::complete(s, a.pkid);
                        session::pump(s, c, limits, now, w, stats);
                    } else {
                        f.released = true;
                        w.packet(c, &Packet::PubRel(Ack::new(a.pkid, reason::SUCCESS)));
                    }
                }
                _ => w.packet(c, &Packet::PubRel(Ack::new(a.pkid, reason::PACKET_IDENTIFIER_NOT_FOUND))),
            }
        });
    }

    fn on_pubcomp(&mut self, id: ConnId, pkid: u16, now: Instant) {
        self.with_session(id, |s, c, w, limits, stats| {
            if s.inflight.get(&pkid).is_some_and(|f| f.released) {
                session::complete(s, pkid);
                session::pump(s, c, limits, now, w, stats);
            }
        });
    }

    // ---- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------

    fn on_subscribe(&mut self, id: ConnId, s: Subscribe, now: Instant) {
        let Some(conn) = self.conns.get(&id) else { return };
        let v5 = conn.version.is_v5();
        let client_id = conn.client_id.clone();
        let Some(session) = self.sessions.get(&client_id) else { return };
        let sref = session_ref(session, self.id);
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut filters = Vec::with_capacity(s.filters.len());
        let mut keys = Vec::with_capacity(s.filters.len());
        let mut accepted = Vec::new();
        for (index, f) in s.filters.iter().enumerate() {
            let shared = topic::parse_shared(&f.filter);
            let valid = match shared {
                Ok(Some(_)) => true,
                Ok(None) => topic::validate_filter(&f.filter).is_ok(),
                Err(_) => false,
            };
            if !valid {
                reasons.push(if v5 { reason::TOPIC_FILTER_INVALID } else { reason::v311::SUBACK_FAILURE });
                filters.push((QoS::AtMostOnce, None));
                keys.push(Bytes::new());
                continue;
            }
            if matches!(shared, Ok(Some(_))) && f.options.no_local {
                // [MQTT-3.8.3-4]
                return self.close(id, CloseWith { reason: Some(reason::PROTOCOL_ERROR), will: true }, now);
            }
            reasons.push(f.options.qos as u8);
            filters.push((f.options.qos, sub_id));
            keys.push(owned(&f.filter));
            let is_new = !session.subscriptions.contains_key(&f.filter);
            let want_retained = matches!(shared, Ok(None))
                && match f.options.retain_handling {
                    0 => true,
                    1 => is_new,
                    _ => false,
                };
            accepted.push((
                index,
                f.filter.clone(),
                StoredSubscription { options: f.options, subscription_id: sub_id, since: Vec::new() },
                want_retained,
            ));
        }
        let req_id = self.next_request;
        self.next_request += 1;
        let mut outstanding = 0;
        for (index, filter, stored, want_retained) in accepted {
            if let Some(session) = self.sessions.get_mut(&client_id) {
                session.subscriptions.insert(owned(&filter), stored.clone());
            }
            outstanding += self.route_subscribe(
                Some((RequestRef { core: self.id, id: req_id }, index)),
                &sref,
                &filter,
                stored,
                want_retained,
            );
        }
        let pending =
            Pending::SubAck { conn: id, pkid: s.pkid, reasons, filters, keys, outstanding, retained: Vec::new() };
        self.pending.insert(req_id, pending);
        if outstanding == 0 {
            self.finish_request(req_id, now);
        }
    }

    /// Sends a subscription to the shards that must know it; returns how many replies to
    /// expect (when `req` is set).
    fn route_subscribe(
        &mut self,
        req: Option<(RequestRef, usize)>,
        sref: &SessionRef,
        full: &Bytes,
        stored: StoredSubscription,
        want_retained: bool,
    ) -> usize {
        let (group, filter) = match topic::parse_shared(full) {
            Ok(Some((g, f))) => (Some(full.slice_ref(g)), full.slice_ref(f)),
            _ => (None, full.clone()),
        };
        let shards = self.shards_for(&filter);
        let n = shards.len();
        for shard in shards {
            let subscriber =
                Subscriber { session: sref.clone(), options: stored.options, subscription_id: stored.subscription_id };
            self.send(
                shard,
                CoreMsg::Subscribe { req, subscriber, filter: filter.clone(), group: group.clone(), want_retained },
            );
        }
        if req.is_some() {
            n
        } else {
            0
        }
    }

    fn route_unsubscribe(&mut self, req: Option<RequestRef>, client_id: &Bytes, epoch: u64, full: &Bytes) -> usize {
        let (group, filter) = match topic::parse_shared(full) {
            Ok(Some((g, f))) => (Some(full.slice_ref(g)), full.slice_ref(f)),
            _ => (None, full.clone()),
        };
        let shards = self.shards_for(&filter);
        let n = shards.len();
        for shard in shards {
            let msg = CoreMsg::Unsubscribe {
                req,
                client_id: client_id.clone(),
                epoch,
                filter: filter.clone(),
                group: group.clone(),
            };
            self.send(shard, msg);
        }
        if req.is_some() {
            n
        } else {
            0
        }
    }

    fn on_unsubscribe(&mut self, id: ConnId, u: Unsubscribe, now: Instant) {
        let Some(conn) = self.conns.get(&id) else { return };
        let client_id = conn.client_id.clone();
        let Some(session) = self.sessions.get_mut(&client_id) else { return };
        let epoch = session.epoch;
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut removed = Vec::new();
        for f in &u.filters {
            if session.subscriptions.remove(f).is_some() {
                reasons.push(reason::SUCCESS);
                removed.push(f.clone());
            } else {
                reasons.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        let req_id = self.next_request;
        self.next_request += 1;
        let mut outstanding = 0;
        for f in removed {
            outstanding +=
                self.route_unsubscribe(Some(RequestRef { core: self.id, id: req_id }), &client_id, epoch, &f);
        }
        self.pending.insert(req_id, Pending::UnsubAck { conn: id, pkid: u.pkid, reasons, outstanding });
        if outstanding == 0 {
            self.finish_request(req_id, now);
        }
    }

    fn finish_request(&mut self, req_id: u64, now: Instant) {
        let Some(p) = self.pending.remove(&req_id) else { return };
        match p {
            Pending::SubAck { conn, pkid, reasons, filters, retained, .. } => {
                self.write_packet(conn, &Packet::SubAck(SubAck { pkid, properties: Properties::default(), reasons }));
                // Retained messages follow the SUBACK, with RETAIN set [MQTT-3.3.1-8].
                let Some(client_id) = self.conns.get(&conn).map(|c| c.client_id.clone()) else { return };
                self.persist_session(&client_id, now);
                for (index, msg) in retained {
                    let Some(&granted) = filters.get(index) else { continue };
                    self.offer_retained(&client_id, msg, granted, now);
                }
            }
            Pending::UnsubAck { conn, pkid, reasons, .. } => {
                self.write_packet(
                    conn,
                    &Packet::UnsubAck(UnsubAck { pkid, properties: Properties::default(), reasons }),
                );
                if let Some(client_id) = self.conns.get(&conn).map(|c| c.client_id.clone()) {
                    self.persist_session(&client_id, now);
                }
            }
        }
    }

    /// Sends a retained message on subscribe: RETAIN set [MQTT-3.3.1-8], QoS the lower of
    /// the message's and the granted one, with the filter's subscription identifier.
    fn offer_retained(&mut self, client_id: &Bytes, msg: SharedMessage, granted: (QoS, Option<u32>), now: Instant) {
        let (qos, sub_id) = granted;
        let out = Outgoing {
            qos: qos.min(msg.qos),
            retain: true,
            subscription_ids: sub_id.into_iter().collect(),
            msg,
            origin: None,
        };
        self.offer(client_id, out, now);
    }

    fn request_reply(
        &mut self,
        req_id: u64,
        filter_index: Option<usize>,
        mut retained: Vec<SharedMessage>,
        now: Instant,
    ) {
        let done = match self.pending.get_mut(&req_id) {
            Some(Pending::SubAck { outstanding, retained: r, conn, filters, .. }) => {
                *outstanding -= 1;
                if let Some(i) = filter_index {
                    if *outstanding == 0 {
                        // The last reply: SUBACK first, then these (in finish_request).
                        r.extend(retained.drain(..).map(|m| (i, m)));
                    } else if !retained.is_empty() {
                        // More shards to hear from: send this shard's retained messages now,
                        // ahead of the live messages it routes from here on (which would
                        // otherwise overtake them). PUBLISH before SUBACK is allowed (3.8.4).
                        let (conn, granted) = (*conn, filters.get(i).copied());
                        let client_id = self.conns.get(&conn).map(|c| c.client_id.clone());
                        if let (Some(client_id), Some(granted)) = (client_id, granted) {
                            for msg in retained.drain(..) {
                                self.offer_retained(&client_id, msg, granted, now);
                            }
                        }
                        return;
                    }
                }
                *outstanding == 0
            }
            Some(Pending::UnsubAck { outstanding, .. }) => {
                *outstanding -= 1;
                *outstanding == 0
            }
            None => false,
        };
        if done {
            self.finish_request(req_id, now);
        }
    }

    // ---- DISCONNECT / close ------------------------------------------------------------------

    fn on_disconnect(&mut self, id: ConnId, d: Disconnect, now: Instant) {
        let Some(conn) = self.conns.get(&id) else { return };
        if let Some(new_expiry) = d.properties.session_expiry_interval {
            let Some(session) = self.sessions.get_mut(&conn.client_id) else { return };
            if session.expiry_interval == 0 && new_expiry != 0 {
                // [MQTT-3.14.2-2]
                return self.close(id, CloseWith { reason: Some(reason::PROTOCOL_ERROR), will: true }, now);
            }
            session.expiry_interval = new_expiry;
        }
        // The will is discarded only on a normal DISCONNECT (0x00) [MQTT-3.1.2-10]; 0x04 and
        // error reasons keep it [MQTT-3.1.2-8].
        let will = d.reason != reason::NORMAL_DISCONNECTION;
        self.close(id, CloseWith { reason: None, will }, now);
    }

    /// Each connection has at most one live entry in the timer heap: the one whose due
    /// time is `conn.timer_at`. Others are stale and ignored.
    fn arm_conn_timer(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let Some(deadline) = conn.keep_alive_deadline() else { return };
        if conn.timer_at.is_none_or(|t| deadline < t) {
            conn.timer_at = Some(deadline);
            self.timers.push(Reverse((deadline, Timer::KeepAlive(id))));
        }
    }

    fn check_keep_alive(&mut self, id: ConnId, due: Instant, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.timer_at != Some(due) {
            return;
        }
        conn.timer_at = None;
        let Some(deadline) = conn.keep_alive_deadline() else { return };
        if deadline <= now {
            tracing::debug!(conn = id, "keep-alive timeout");
            self.close(id, CloseWith { reason: Some(reason::KEEP_ALIVE_TIMEOUT), will: true }, now);
        } else {
            self.arm_conn_timer(id);
        }
    }

    /// Drops stale timer entries when they outnumber live ones, so that connection churn
    /// cannot grow the heap (entries of closed connections would otherwise wait for their
    /// due time, up to a day for a long keep-alive).
    fn prune_timers(&mut self) {
        let live = self.conns.len() + self.sessions.len() + self.moved.len();
        if self.timers.len() <= 2 * live + 1024 {
            return;
        }
        let conns = &self.conns;
        let sessions = &self.sessions;
        let moved = &self.moved;
        self.timers.retain(|Reverse((due, t))| match t {
            Timer::KeepAlive(id) => conns.get(id).is_some_and(|c| c.timer_at == Some(*due)),
            Timer::Session(id) => sessions.get(id).is_some_and(|s| s.timer_at == Some(*due)),
            Timer::Tombstone(id) => moved.contains_key(id),
        });
    }

    /// Closes a connection from the broker side and detaches its session.
    fn close(&mut self, id: ConnId, how: CloseWith, now: Instant) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        if let (Some(code), true) = (how.reason, conn.version.is_v5() && matches!(conn.phase, Phase::Connected)) {
            let d = Disconnect { reason: code, properties: Properties::default() };
            Writer { out: &mut self.writes, scratch: &mut self.scratch, cache: &mut self.fanout }
                .packet(&mut conn, &Packet::Disconnect(d));
        }
        self.flush_writes();
        self.actions.push(Action::Close(id));
        match conn.phase {
            Phase::Connected => {}
            Phase::AwaitingSession { .. } => {
                // Its session is in transit: remember what this connection would have set,
                // for when the session arrives (see `adopt_orphan`).
                let will = if how.will { conn.will.take() } else { None };
                self.closed_awaiting.insert(id, (conn.client_id.clone(), conn.session_expiry, will));
                return;
            }
            Phase::AwaitingConnect => return,
        }
        let Some(mut session) = self.sessions.remove(&conn.client_id) else { return };
        if session.conn != Some(id) {
            self.sessions.insert(conn.client_id.clone(), session);
            return;
        }
        session.conn = None;
        self.detach(session, how.will, now);
    }

    /// Applies the end of a session's connection: its will (published now, or when the will
    /// delay passes, or discarded when `will` is false) and its expiry (ends now when the
    /// Session Expiry Interval is 0, otherwise the session waits offline).
    fn detach(&mut self, mut session: Session, will: bool, now: Instant) {
        if !will {
            session.will = None;
        }
        if let Some(w) = &session.will {
            let delay = will_delay(w);
            if delay == 0 {
                if let Some(w) = session.will.take() {
                    self.publish_will(&session.client_id, w, now);
                }
            } else {
                session.will_due = Some(now + Duration::from_secs(u64::from(delay)));
            }
        }
        if session.expiry_interval == 0 {
            self.end_session(session, now);
        } else {
            if session.expiry_interval != u32::MAX {
                session.expires_at = Some(now + Duration::from_secs(u64::from(session.expiry_interval)));
            }
            self.park_session(session, now);
        }
    }

    fn park_session(&mut self, mut session: Session, now: Instant) {
        arm_session_timer(&mut session, &mut self.timers);
        let client_id = session.client_id.clone();
        self.sessions.insert(client_id.clone(), session);
        self.persist_session(&client_id, now);
    }

    fn check_session(&mut self, client_id: &Bytes, due: Instant, now: Instant) {
        let Some(session) = self.sessions.get_mut(client_id) else { return };
        if session.timer_at != Some(due) {
            return;
        }
        session.timer_at = None;
        if session.conn.is_some() {
            return;
        }
        if session.expires_at.is_some_and(|t| t <= now) {
            if let Some(s) = self.sessions.remove(client_id) {
                self.end_session(s, now);
            }
            return;
        }
        if session.will_due.is_some_and(|t| t <= now) {
            session.will_due = None;
            if let Some(w) = session.will.take() {
                let cid = session.client_id.clone();
                self.publish_will(&cid, w, now);
            }
        }
        if let Some(session) = self.sessions.get_mut(client_id) {
            arm_session_timer(session, &mut self.timers);
        }
    }

    /// Ends a session: its pending will is published (will delay or session end, whichever
    /// comes first), its subscriptions leave the shards and its client id is released.
    fn end_session(&mut self, mut s: Session, now: Instant) {
        if let Some(w) = s.will.take() {
            self.publish_will(&s.client_id, w, now);
        }
        if s.persisted && self.config.wal_enabled {
            let home = shard_of(&s.client_id, self.cores);
            self.send(home, CoreMsg::Persist { body: persist::encode_session_end(&s.client_id) });
        }
        let filters: Vec<Bytes> = s.subscriptions.drain().map(|(f, _)| f).collect();
        for f in filters {
            self.route_unsubscribe(None, &s.client_id, s.epoch, &f);
        }
        self.registry.release(&s.client_id, s.claim);
    }

    fn publish_will(&mut self, client_id: &Bytes, w: Will, now: Instant) {
        let mut p = Publish::new(w.topic.clone(), w.qos, w.payload);
        p.retain = w.retain;
        p.properties = w.properties;
        p.properties.will_delay_interval = None;
        let msg = Arc::new(Message::from_publish(p, w.topic, client_id.clone(), now));
        let shard = shard_of(&msg.topic, self.cores);
        self.send(shard, CoreMsg::Publish { msg, ack: None });
    }

    // ---- shard side ----------------------------------------------------------------------

    fn handle_message(&mut self, msg: CoreMsg, now: Instant) {
        match msg {
            CoreMsg::Publish { msg, ack } => self.shard_publish(msg, ack, now),
            CoreMsg::PublishDone { conn, pkid, qos, reason } => self.on_publish_done(conn, pkid, qos, reason, now),
            CoreMsg::Deliver { msg, origin, targets } => {
                for t in targets {
                    self.deliver(t, &msg, origin, now);
                }
            }
            CoreMsg::Subscribe { req, subscriber, filter, group, want_retained } => {
                self.subscriptions.subscribe(&filter, group.as_ref(), subscriber);
                if let Some((r, index)) = req {
                    let mut retained = Vec::new();
                    if want_retained {
                        self.retained.matching(&filter, &mut retained);
                        retained.retain(|m| !m.is_expired(now));
                    }
                    let head = self.next_log_seq.saturating_sub(1);
                    let done =
                        CoreMsg::SubscribeDone { req_id: r.id, filter_index: index, retained, shard: self.id, head };
                    self.send(r.core, done);
                }
            }
            CoreMsg::SubscribeDone { req_id, filter_index, retained, shard, head } => {
                self.record_since(req_id, filter_index, shard, head);
                self.request_reply(req_id, Some(filter_index), retained, now)
            }
            CoreMsg::Persist { body } => {
                if self.journal.is_some() {
                    match persist::record_client_id(&body) {
                        Some((client_id, true)) => {
                            self.snapshots.insert(owned(&client_id), (self.next_log_seq, body.clone()));
                        }
                        Some((client_id, false)) => {
                            self.snapshots.remove(&client_id);
                        }
                        None => {}
                    }
                    self.append_record(self.clock.unix_ms(now), body, None);
                }
            }
            CoreMsg::Unsubscribe { req, client_id, epoch, filter, group } => {
                self.subscriptions.unsubscribe(&filter, group.as_ref(), &client_id, epoch);
                if let Some(r) = req {
                    self.send(r.core, CoreMsg::UnsubscribeDone { req_id: r.id });
                }
            }
            CoreMsg::UnsubscribeDone { req_id } => self.request_reply(req_id, None, Vec::new(), now),
            CoreMsg::Takeover { client_id, new_core, new_claim, clean_start, conn } => {
                self.on_takeover(client_id, new_core, new_claim, clean_start, conn, now)
            }
            CoreMsg::Handoff { client_id: _, conn, claim, session } => self.establish(conn, claim, session, now),
        }
    }

    fn shard_publish(&mut self, msg: SharedMessage, ack: Option<PublishAck>, now: Instant) {
        let logged = self.journal.is_some() && (msg.qos != QoS::AtMostOnce || msg.retain);
        if logged && self.journal_backlog.len() >= JOURNAL_BACKLOG_MAX {
            // The log cannot keep up (or is failing): refuse rather than grow without bound,
            // and do not deliver what the publisher is told was not taken.
            self.stats.journal_rejected += 1;
            if let Some(a) = ack {
                let reason = reason::QUOTA_EXCEEDED;
                self.send(a.core, CoreMsg::PublishDone { conn: a.conn, pkid: a.pkid, qos: a.qos, reason });
            }
            return;
        }
        if msg.retain {
            // [MQTT-3.3.1-5]: store (or delete, for an empty payload) the retained message.
            self.retained.set(&msg);
        }
        let origin = logged.then_some((self.id, self.next_log_seq));
        let mut targets = std::mem::take(&mut self.route_scratch);
        self.subscriptions.route(&msg, &mut targets);
        let matched = !targets.is_empty();
        if targets.iter().all(|t| t.session.core == self.id) {
            for t in targets.drain(..) {
                self.deliver(t, &msg, origin, now);
            }
        } else {
            targets.sort_by_key(|t| t.session.core);
            while let Some(last) = targets.last() {
                let core = last.session.core;
                let split = targets.partition_point(|t| t.session.core < core);
                let batch = targets.split_off(split);
                if core == self.id {
                    for t in batch {
                        self.deliver(t, &msg, origin, now);
                    }
                } else {
                    self.send(core, CoreMsg::Deliver { msg: msg.clone(), origin, targets: batch });
                }
            }
        }
        self.route_scratch = targets;
        let code = if matched { reason::SUCCESS } else { reason::NO_MATCHING_SUBSCRIBERS };
        if !logged {
            if let Some(a) = ack {
                self.send(a.core, CoreMsg::PublishDone { conn: a.conn, pkid: a.pkid, qos: a.qos, reason: code });
            }
            return;
        }
        // In immediate mode the acknowledgement waits for the sync that covers the record;
        // otherwise it goes now.
        let waiting = if self.wait_for_durable { ack.map(|a| (a, code)) } else { None };
        if !self.wait_for_durable {
            if let Some(a) = ack {
                self.send(a.core, CoreMsg::PublishDone { conn: a.conn, pkid: a.pkid, qos: a.qos, reason: code });
            }
        }
        let body = persist::encode_message(&msg, &self.clock);
        if msg.retain {
            if msg.payload.is_empty() {
                self.retained_seq.remove(&msg.topic);
            } else {
                self.retained_seq.insert(owned(&msg.topic), self.next_log_seq);
            }
        }
        self.append_record(self.clock.unix_ms(now), body, waiting);
    }

    /// Appends a record to this shard's log (through the backlog when the writer's queue is
    /// full). Its sequence number is known now: nothing else appends to this log, so it is
    /// `next_log_seq`.
    fn append_record(&mut self, timestamp_ms: u64, body: Vec<u8>, waiting: Option<(PublishAck, u8)>) {
        let seq = self.next_log_seq;
        self.next_log_seq += 1;
        if let Some((a, code)) = waiting {
            self.pending_acks.push_back((seq, a, code));
        }
        self.journal_backlog.push_back((timestamp_ms, body));
        self.feed_journal();
    }

    /// Moves backlogged records into the journal, in order, while it takes them.
    fn feed_journal(&mut self) {
        let Some(journal) = self.journal.as_mut() else { return };
        while let Some((ts, body)) = self.journal_backlog.pop_front() {
            if let Err(body) = journal.append(ts, body) {
                self.journal_backlog.push_front((ts, body));
                break;
            }
        }
    }

    /// The journal's durable mark may have moved (the driver calls this when the writer
    /// thread reports progress, and on every tick): release the acknowledgements it covers,
    /// or fail them while the log reports an error (full disk, failed sync).
    pub fn on_durable(&mut self, _now: Instant) {
        self.feed_journal();
        let Some(journal) = self.journal.as_ref() else { return };
        let durable = journal.durable_seq();
        let failing = journal.failing();
        while let Some(&(seq, a, code)) = self.pending_acks.front() {
            let code = if seq <= durable {
                code
            } else if failing {
                self.stats.journal_failed_acks += 1;
                reason::UNSPECIFIED_ERROR
            } else {
                break;
            };
            self.pending_acks.pop_front();
            self.send(a.core, CoreMsg::PublishDone { conn: a.conn, pkid: a.pkid, qos: a.qos, reason: code });
        }
        if failing {
            // Backlogged records are not failed here: they have no sequence number yet and
            // are retried when the log recovers; their acknowledgements wait until then.
        }
    }

    /// Installs the shard's durable log. `wait_for_durable` (sync mode `immediate`) makes
    /// QoS 1/2 acknowledgements wait for the sync that covers their record.
    pub fn set_journal(&mut self, journal: Box<dyn Journal>, wait_for_durable: bool, pins: Arc<RetentionPins>) {
        self.next_log_seq = journal.next_seq();
        self.journal = Some(journal);
        self.pins = Some(pins);
        self.wait_for_durable = wait_for_durable;
    }

    /// Logs a snapshot of a persistent session in its home shard's log (the shard its
    /// client id hashes to, so that one log orders all of a client's records however the
    /// session moves between cores).
    fn persist_session(&mut self, client_id: &Bytes, now: Instant) {
        if !self.config.wal_enabled {
            return;
        }
        let Some(s) = self.sessions.get_mut(client_id) else { return };
        if !s.is_persistent() && !s.persisted {
            return;
        }
        let body = if s.is_persistent() {
            s.persisted = true;
            s.progress_dirty = false;
            let record = persist::SessionRecord {
                client_id: s.client_id.clone(),
                version: s.version,
                expiry_interval: s.expiry_interval,
                disconnected_ms: if s.conn.is_some() { 0 } else { self.clock.unix_ms(now).max(1) },
                subscriptions: s.subscriptions.iter().map(|(f, st)| (f.clone(), st.clone())).collect(),
                watermarks: s.watermarks(),
            };
            persist::encode_session(&record)
        } else {
            // It was logged as persistent before and no longer is: its earlier snapshot must
            // not come back after a restart.
            s.persisted = false;
            persist::encode_session_end(client_id)
        };
        let home = shard_of(client_id, self.cores);
        self.send(home, CoreMsg::Persist { body });
    }

    /// Records where, in a shard's log, a new subscription starts (see
    /// [`StoredSubscription::since`]).
    fn record_since(&mut self, req_id: u64, filter_index: usize, shard: usize, head: u64) {
        let Some(Pending::SubAck { conn, keys, .. }) = self.pending.get(&req_id) else { return };
        let Some(key) = keys.get(filter_index).filter(|k| !k.is_empty()) else { return };
        let Some(client_id) = self.conns.get(conn).map(|c| c.client_id.clone()) else { return };
        let Some(stored) = self.sessions.get_mut(&client_id).and_then(|s| s.subscriptions.get_mut(key)) else {
            return;
        };
        match stored.since.iter_mut().find(|(s, _)| *s == shard) {
            Some(entry) => entry.1 = head,
            None => stored.since.push((shard, head)),
        }
    }

    /// Publishes, per shard, the lowest log sequence number the persistent sessions of this
    /// core still need: the oldest message each holds (queued or unacknowledged) from that
    /// shard. Messages never routed to a session are not needed by it, whatever its
    /// subscriptions; messages routed from now on are at the head of the log.
    fn publish_pins(&mut self) {
        let Some(pins) = self.pins.clone() else { return };
        let mut needed = vec![u64::MAX; self.cores];
        for s in self.sessions.values().filter(|s| s.is_persistent()) {
            let held = s.inflight.values().map(|f| &f.out).chain(s.queue.iter());
            for (shard, seq) in held.filter_map(|o| o.origin) {
                if let Some(n) = needed.get_mut(shard) {
                    *n = (*n).min(seq);
                }
            }
        }
        for (shard, n) in needed.into_iter().enumerate() {
            pins.publish(self.id, shard, n);
        }
    }

    /// Applies the retention limits to this shard's log: finds the closed segments past
    /// their age or beyond the size limit, keeps those holding messages persistent sessions
    /// are owed, rewrites the retained messages and session snapshots that live in them
    /// (they are state, not history), and once the rewrites are durable lets the writer
    /// delete the segments.
    fn check_retention(&mut self, now: Instant) {
        let Some(journal) = self.journal.as_mut() else { return };
        if let Some((cut, needs)) = self.pending_cut {
            if journal.durable_seq() >= needs {
                journal.delete_before(cut);
                self.pending_cut = None;
            }
            return;
        }
        let (max_age_s, max_size) = (self.config.retention_max_message_age, self.config.retention_max_size);
        if max_age_s == 0 && max_size == 0 {
            return;
        }
        let segments = journal.segments();
        let Some((_active, closed)) = segments.split_last() else { return };
        let now_ms = self.clock.unix_ms(now);
        let mut total: u64 = segments.iter().map(|s| self.config.wal_segment_size.max(s.used_bytes)).sum();
        let mut cut = 0;
        for seg in closed {
            // Pins are published once a second: a segment with records younger than a few
            // seconds may hold messages just routed to a session whose pin is not out yet.
            if seg.newest_ms.is_some_and(|t| now_ms.saturating_sub(t) < PIN_LAG_MS) {
                break;
            }
            let too_old = max_age_s > 0 && seg.newest_ms.is_none_or(|t| now_ms.saturating_sub(t) > max_age_s * 1000);
            let too_big = max_size > 0 && total > max_size;
            if !(too_old || too_big) {
                break;
            }
            cut = seg.last_seq + 1;
            total = total.saturating_sub(self.config.wal_segment_size.max(seg.used_bytes));
        }
        let sessions_need = self.pins.as_ref().map_or(0, |p| p.needed_from(self.id));
        let cut = cut.min(sessions_need);
        if cut <= 1 {
            return;
        }
        // State living below the cut is written again at the head of the log.
        let stale_retained: Vec<Bytes> =
            self.retained_seq.iter().filter(|(_, &seq)| seq < cut).map(|(t, _)| t.clone()).collect();
        for topic in stale_retained {
            let mut found = Vec::new();
            self.retained.matching(&topic, &mut found);
            match found.into_iter().find(|m| m.topic == topic) {
                Some(msg) if !msg.is_expired(now) => {
                    self.retained_seq.insert(topic, self.next_log_seq);
                    let body = persist::encode_message(&msg, &self.clock);
                    self.append_record(now_ms, body, None);
                }
                _ => {
                    self.retained_seq.remove(&topic);
                }
            }
        }
        let stale_snapshots: Vec<Bytes> =
            self.snapshots.iter().filter(|(_, (seq, _))| *seq < cut).map(|(c, _)| c.clone()).collect();
        for client_id in stale_snapshots {
            if let Some((_, body)) = self.snapshots.get(&client_id).cloned() {
                self.snapshots.insert(client_id, (self.next_log_seq, body.clone()));
                self.append_record(now_ms, body, None);
            }
        }
        self.pending_cut = Some((cut, self.next_log_seq - 1));
    }

    /// Restores a persistent session recovered from the logs at startup: offline, with its
    /// subscriptions re-registered in the shards and the messages it was owed queued. The
    /// caller has already claimed its client id for this core in the registry.
    pub fn restore_session(&mut self, mut s: Session, disconnected: Instant) {
        s.conn = None;
        s.persisted = true;
        if s.expiry_interval != u32::MAX {
            s.expires_at = Some(disconnected + Duration::from_secs(u64::from(s.expiry_interval)));
        }
        self.repoint_subscriptions(&s);
        self.park_session(s, disconnected);
    }

    /// Restores a retained message recovered from a log at startup.
    pub fn restore_retained(&mut self, msg: SharedMessage) {
        self.retained_seq.insert(owned(&msg.topic), 0);
        self.retained.set(&msg);
    }

    fn deliver(&mut self, t: Target, msg: &SharedMessage, origin: Option<(usize, u64)>, now: Instant) {
        let epoch_ok = self.sessions.get(&t.session.client_id).map(|s| s.epoch == t.session.epoch);
        match epoch_ok {
            Some(true) => {
                let out = Outgoing {
                    msg: msg.clone(),
                    qos: t.qos,
                    retain: t.retain,
                    subscription_ids: t.subscription_ids,
                    origin,
                };
                self.offer(&t.session.client_id, out, now);
            }
            Some(false) => self.stats.dropped_stale_session += 1,
            None => {
                // The session moved to another core after the shard routed this: forward it.
                if let Some(&(epoch, core, _)) = self.moved.get(&t.session.client_id) {
                    if epoch == t.session.epoch && core != self.id {
                        let mut t = t;
                        t.session.core = core;
                        self.send(core, CoreMsg::Deliver { msg: msg.clone(), origin, targets: vec![t] });
                    }
                }
            }
        }
    }

    fn offer(&mut self, client_id: &Bytes, out: Outgoing, now: Instant) {
        let Some(session) = self.sessions.get_mut(client_id) else { return };
        let conn = session.conn.and_then(|id| self.conns.get_mut(&id));
        let mut w = Writer { out: &mut self.writes, scratch: &mut self.scratch, cache: &mut self.fanout };
        session::offer(session, conn, out, self.limits, now, &mut w, &mut self.stats);
    }
}

/// Keeps one live heap entry per session (see `Core::arm_conn_timer`).
fn arm_session_timer(session: &mut Session, timers: &mut BinaryHeap<Reverse<(Instant, Timer)>>) {
    if let Some(due) = session.next_due() {
        if session.timer_at.is_none_or(|t| due < t) {
            session.timer_at = Some(due);
            timers.push(Reverse((due, Timer::Session(session.client_id.clone()))));
        }
    }
}

fn will_delay(w: &Will) -> u32 {
    w.properties.will_delay_interval.unwrap_or(0)
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
