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
//!
//! Files: this one holds the state, the events and the dispatch; `lifecycle.rs` CONNECT,
//! takeover, close, keep-alive, wills and expiry; `publish.rs` the message path;
//! `subscribe.rs` SUBSCRIBE/UNSUBSCRIBE; `durability.rs` the write-ahead log's side;
//! `tests.rs` scenario tests of several cores wired together with an injected clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::access::{self, Access};
use crate::codec::{
    self, reason, Ack, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS,
    SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use crate::config::Config;
use crate::message::{detach_properties, owned, Message, SharedMessage};
use crate::persist::{self, DeliveryState, WallClock};
use crate::registry::Registry;
use crate::router::{RetainedStore, SessionRef, Subscriber, SubscriptionIndex, Target};
use crate::session::{
    self, Conn, ConnId, DeliveryStep, FanoutCache, Limits, LoggedExchange, Moment, Outgoing, Phase, Session,
    StoredSubscription, Writer,
};
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
    /// Check these credentials off the core and hand the verdict to [`Core::on_login`].
    CheckLogin(crate::access::LoginCheck),
    /// An acknowledging client's queue passed half its bound: overload now, without waiting
    /// for the next tick (see [`OVERLOAD_BACKLOG`]).
    Overloaded,
}

/// Identifies a request awaiting replies from shards (SUBSCRIBE, UNSUBSCRIBE).
#[derive(Debug, Clone, Copy)]
pub struct RequestRef {
    pub core: usize,
    pub id: u64,
}

/// Where a shard sends the acknowledgement of an inbound QoS 1/2 publish (or of a logged
/// QoS 2 release). The shard replies once it has taken the message (and, with the WAL in
/// `immediate` mode, once it is durable), so the PUBACK/PUBREC/PUBCOMP is an action the
/// shard may delay.
#[derive(Debug, Clone, Copy)]
pub struct PublishAck {
    pub core: usize,
    pub conn: ConnId,
    pub pkid: u16,
    pub qos: QoS,
    /// A persistent session's QoS 2 exchange, logged with the message so that it survives
    /// a restart (see `persist.rs`).
    pub exchange: Option<persist::Exchange>,
    /// What the record answers.
    pub step: AckStep,
}

/// What a logged record a connection waits for is about (see [`PublishAck`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStep {
    /// An inbound PUBLISH: answer PUBACK/PUBREC.
    Publish,
    /// An inbound PUBREL whose release was logged: answer PUBCOMP.
    Release,
    /// A step of an outbound QoS 2 exchange of a persistent session (session send order,
    /// whether it is `received`): send its PUBLISH or PUBREL (see `session::delivery_logged`).
    Delivery { order: u64, received: bool },
    /// A session snapshot logged for a SUBSCRIBE or UNSUBSCRIBE (request id): answer it.
    Snapshot { request: u64 },
}

/// Messages between cores.
#[derive(Debug)]
pub enum CoreMsg {
    /// To the topic's shard: order, retain, fan out.
    Publish {
        msg: SharedMessage,
        ack: Option<PublishAck>,
    },
    /// From the shard: the publish (or release) was taken.
    /// `reason`: success, no matching subscribers, or a failure (the log could not keep it).
    /// `seq`: its record's sequence number in the shard's log, 0 when not logged.
    PublishDone {
        ack: PublishAck,
        reason: u8,
        seq: u64,
    },
    /// To the shard that logged a QoS 2 exchange: log its end (a `persist::encode_release`
    /// body) in the same log, then answer `ack` if there is one.
    Release {
        body: Vec<u8>,
        ack: Option<PublishAck>,
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
    /// To a client id's home shard: append this session record to its log (and answer
    /// `ack` once it is durable, in `immediate` mode).
    Persist {
        body: Vec<u8>,
        ack: Option<PublishAck>,
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

/// Timers of sessions and of moved sessions' tombstones. Connections' keep-alive (and
/// CONNECT) deadlines have a heap of their own, [`Core::conn_timers`], with entries under a third
/// the size: every idle connection has one or two.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Session(Bytes),
    Tombstone(Bytes),
}

const RETAINED_SWEEP: Duration = Duration::from_secs(30);
/// How often persistent sessions' delivery progress is logged.
const CHECKPOINT: Duration = Duration::from_secs(1);
/// How often a connection waiting for its login verdict looks again (see `read_pause`).
pub const LOGIN_POLL: Duration = Duration::from_millis(2);
/// How often a 3.1.1 connection whose QoS 1 window is full looks again (see `read_pause`).
const WINDOW_POLL: Duration = Duration::from_millis(1);
/// How long a core forwards deliveries for a session that moved to another core (they were
/// routed before the shards learned the new route).
const TOMBSTONE: Duration = Duration::from_secs(10);

fn session_ref(s: &Session, core: usize) -> SessionRef {
    SessionRef { client_id: s.client_id.clone(), core, epoch: s.epoch, claim: s.claim }
}

/// Topics the broker publishes about itself; clients may not publish there.
pub(crate) const SYS_PREFIX: &[u8] = b"$SYS/";

/// Why a connection is being closed by the broker.
struct CloseWith {
    /// DISCONNECT reason to send first (MQTT 5 only).
    reason: Option<u8>,
    /// Publish the will (abnormal end) or discard it.
    will: bool,
}

/// One core: session host and shard.
/// Overload protection for QoS 1/2. A QoS 1 PUBLISH is acknowledged when the broker has
/// taken it, not when it is delivered, so nothing ties what publishers send to what
/// subscribers take: at full speed, with every client keeping up as well as the CPUs allow,
/// session queues grew by hundreds of thousands of messages (seconds of latency, hundreds of
/// MiB) or, with the default queue bounds, dropped acknowledged messages. So when the queues
/// of acknowledging clients pass half their bounds, or this many messages on one core (see
/// [`Core::overload_level`]), the server reads QoS 1/2 publishers more slowly until they are
/// down to a quarter of that.
pub const OVERLOAD_BACKLOG: usize = 8 * 1024;
/// The most sessions [`Core::overload_level_now`] looks at between ticks (about a
/// microsecond of work per millisecond of overload).
const WATCHED_MAX: usize = 64;

pub struct Core {
    pub id: usize,
    cores: usize,
    config: Arc<Config>,
    limits: Limits,
    registry: Arc<Registry>,
    /// Boxed, as are the sessions: a hash table keeps up to about twice as many slots as
    /// entries, and with values inline every empty slot would be as large as a `Conn` (a few
    /// hundred bytes), and idle connections would pay for them (benchmarks issue, item 5).
    conns: HashMap<ConnId, Box<Conn>>,
    next_conn: ConnId,
    sessions: HashMap<Bytes, Box<Session>>,
    /// Sessions handed to another core: (epoch, core, until). Deliveries still addressed
    /// here for that epoch are forwarded.
    moved: HashMap<Bytes, (u64, usize, Instant)>,
    /// Takeover requests that arrived while this core's connection for the same client id
    /// was still waiting for the session; served once the session arrives.
    deferred_takeovers: HashMap<Bytes, CoreMsg>,
    /// Connections that closed while waiting for their session: (client id, session expiry,
    /// will), applied when the session arrives.
    closed_awaiting: HashMap<ConnId, (Bytes, u32, Option<Box<Will>>)>,
    subscriptions: SubscriptionIndex,
    retained: RetainedStore,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Keep-alive and CONNECT deadlines; an entry is live if it is its connection's
    /// `timer_at`.
    conn_timers: BinaryHeap<Reverse<(Moment, ConnId)>>,
    local_inbox: VecDeque<CoreMsg>,
    actions: Vec<Action>,
    /// [`Action::Overloaded`] was emitted since the last [`Core::overload_level`].
    overload_signalled: bool,
    /// A delivery was left waiting in a connected session's queue since the last
    /// [`Core::overload_level`]; without one there is no backlog to measure, and the walk
    /// over every session is skipped (an idle core with many sessions does no work per tick).
    queued_since_check: bool,
    /// Likewise for a connection's write backlog (QoS 0 has no queue: what a subscriber has
    /// not read yet waits in its write buffer).
    backlogged_since_check: bool,
    /// The session-queue part of the overload level, as of the last tick (see
    /// [`Core::overload_level`]) or the last look at `watched`.
    queue_level: f64,
    /// The sessions whose queues count towards overload: those queued at the last tick, and
    /// those that made the core overloaded since. Between ticks `overload_level_now` looks
    /// at these again, so that publishers go on as soon as those queues drain (waiting for
    /// the next tick stalled them for up to 50 ms each time). `None` when there are too many
    /// to look at every millisecond ([`WATCHED_MAX`]): then the tick decides.
    watched: Option<Vec<Bytes>>,
    /// The message and byte limits of the last tick's measurement, for `watched`.
    watched_limits: (usize, usize),
    /// Inbound QoS 1/2 acknowledgements wait while set (see [`Core::set_hold_acks`]).
    hold_acks: bool,
    /// Those waiting, oldest first: (held since, connection, packet id, QoS, reason code).
    held_acks: VecDeque<(Instant, ConnId, u16, QoS, u8)>,
    /// Ticks so far (wrapping; see `Conn::written_tick`).
    ticks: u16,
    writes: Vec<(ConnId, Bytes)>,
    scratch: BytesMut,
    fanout: FanoutCache,
    /// Steps of logged outbound QoS 2 exchanges the session logic asked for, sent to their
    /// shards by `run_local`.
    deliveries: Vec<DeliveryStep>,
    /// Some step of `deliveries` failed to log: `retry_deliveries` at the next checkpoint.
    deliveries_failed: bool,
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
    /// Login and ACL checks; `None` when nothing is restricted.
    access: Option<Arc<Access>>,
    /// The log was closed (the broker is stopping): QoS 1/2 and retained publishes fail.
    journal_closed: bool,
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
        let limits = Limits::from_config(&config);
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
            conn_timers: BinaryHeap::new(),
            local_inbox: VecDeque::new(),
            actions: Vec::new(),
            overload_signalled: false,
            queued_since_check: false,
            backlogged_since_check: false,
            queue_level: 0.0,
            watched: Some(Vec::new()),
            watched_limits: (usize::MAX, usize::MAX),
            hold_acks: false,
            held_acks: VecDeque::new(),
            ticks: 0,
            writes: Vec::new(),
            scratch: BytesMut::with_capacity(4096),
            fanout: FanoutCache::default(),
            deliveries: Vec::new(),
            deliveries_failed: false,
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
            access: None,
            journal_closed: false,
            stats: Stats::default(),
        }
    }

    /// Turns on login and ACL checks (see [`crate::access`]).
    pub fn set_access(&mut self, access: Arc<Access>) {
        self.access = Some(access);
    }

    /// The verified identity (client certificate subject CN) of a connection, before its
    /// CONNECT: with `auth.use-identity-as-username` it replaces the user name the client
    /// sends.
    pub fn set_peer_identity(&mut self, id: ConnId, name: Bytes) {
        if let Some(conn) = self.conns.get_mut(&id) {
            if let Phase::AwaitingConnect { peer_identity } = &mut conn.phase {
                *peer_identity = Some(Box::new(name));
            }
        }
    }

    /// The access rules in force (`None`: everything allowed).
    pub fn access(&self) -> Option<Arc<Access>> {
        self.access.clone()
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self, into: &mut Vec<Action>) {
        self.flush_writes();
        into.append(&mut self.actions);
    }

    /// The sizes the metrics report (walks every session: call it about once a second).
    pub fn gauges(&self) -> crate::metrics::GaugeSnapshot {
        let mut g = crate::metrics::GaugeSnapshot {
            connections: self.conns.len() as u64,
            sessions: self.sessions.len() as u64,
            retained_messages: self.retained.len() as u64,
            ..Default::default()
        };
        for s in self.sessions.values() {
            g.inflight_messages += s.inflight.len() as u64;
            g.queued_messages += s.queue.len() as u64;
            g.subscriptions += s.subscriptions.len() as u64;
        }
        g
    }

    /// How far this core is into overload, measured once per tick: 1.0 and above is
    /// overloaded (see [`OVERLOAD_BACKLOG`]).
    ///
    /// It counts what waits in the queues (beyond the in-flight window) of connected clients
    /// that acknowledged something since the previous call: work the broker has taken in and
    /// owes to clients that are taking it. A client that stopped acknowledging does not count:
    /// its queue is bounded by `mqtt.max-queued-messages` and the drop policy, and it must not
    /// slow everybody else down. The limit is half of what those clients' queues may hold
    /// together (so that overload is declared before they start dropping), and at most
    /// [`OVERLOAD_BACKLOG`] messages. Walks every session.
    pub fn overload_level(&mut self) -> f64 {
        self.overload_signalled = false;
        self.queue_level = self.queue_level();
        self.queue_level.max(self.write_backlog_level())
    }

    /// The overload level between ticks: the session-queue part as of the last tick, the
    /// write backlogs measured now. Write backlogs drain within milliseconds once publishers
    /// wait, and publishers must not wait for the next tick to learn it.
    pub fn overload_level_now(&mut self) -> f64 {
        self.overload_signalled = false;
        if self.queue_level > 0.0 {
            if let Some(level) = self.watched_queue_level() {
                self.queue_level = level;
            }
        }
        self.queue_level.max(self.write_backlog_level())
    }

    /// The queue part of the overload level over the watched sessions only: their queues
    /// against the last tick's limit together, and each against the quarter of its bound that
    /// made it overload on its own (see `Core::offer`). `None` when too many are watched.
    fn watched_queue_level(&self) -> Option<f64> {
        let watched = self.watched.as_ref()?;
        let (max_messages, max_bytes) = self.watched_limits;
        let (mut messages, mut bytes, mut alone) = (0usize, 0usize, 0.0f64);
        for s in watched.iter().filter_map(|id| self.sessions.get(id)).filter(|s| s.conn().is_some()) {
            messages += s.queue.len();
            bytes += s.queue.bytes();
            alone = alone.max(self.limits.queue_quarter_level(&s.queue));
        }
        let together = (messages as f64 / max_messages.max(1) as f64).max(bytes as f64 / max_bytes.max(1) as f64);
        Some(together.max(alone))
    }

    /// Adds a session to those `overload_level_now` looks at between ticks.
    pub(super) fn watch_queue(&mut self, client_id: &Bytes) {
        watch(&mut self.watched, client_id);
    }

    /// QoS 0 has no queue: what a subscriber has not read yet waits in its write buffer.
    /// The bytes waiting for clients that are reading (written to since the last tick),
    /// against half of what their buffers may hold (QoS 0 to them is dropped beyond
    /// `mqtt.max-write-buffer`). A client that stopped reading does not count, as above.
    fn write_backlog_level(&mut self) -> f64 {
        if !std::mem::take(&mut self.backlogged_since_check) {
            return 0.0;
        }
        let (mut bytes, mut conns) = (0usize, 0usize);
        for c in self.conns.values() {
            if reading(c, self.ticks) && c.pending_write > 0 {
                bytes += c.pending_write as usize;
                conns += 1;
            }
        }
        if conns == 0 {
            return 0.0;
        }
        let limit = (conns.saturating_mul(self.limits.max_write_buffer) / 2).max(1);
        let level = bytes as f64 / limit as f64;
        // Still backlogged: look again next time.
        self.backlogged_since_check = level > 0.0;
        level
    }

    fn queue_level(&mut self) -> f64 {
        if !std::mem::take(&mut self.queued_since_check) {
            return 0.0;
        }
        let (mut messages, mut bytes, mut sessions) = (0usize, 0usize, 0usize);
        let mut watched = Some(Vec::new());
        // Only clients that acknowledged since the last tick: one that stopped (however
        // recently it was written to) must not keep everybody throttled; the quick rule in
        // `Core::offer` is the one that also counts clients being written to.
        for s in self.sessions.values_mut() {
            if s.conn().is_some() && std::mem::take(&mut s.acked_since_check) {
                messages += s.queue.len();
                bytes += s.queue.bytes();
                sessions += 1;
                if !s.queue.is_empty() {
                    watch(&mut watched, &s.client_id);
                }
            }
        }
        self.watched = watched;
        if sessions == 0 {
            return 0.0;
        }
        let limit = (sessions.saturating_mul(self.limits.max_queued) / 2).clamp(1, OVERLOAD_BACKLOG);
        let mut level = messages as f64 / limit as f64;
        let mut limit_bytes = usize::MAX;
        if self.limits.max_queued_bytes > 0 {
            limit_bytes = (sessions.saturating_mul(self.limits.max_queued_bytes) / 2).max(1);
            level = level.max(bytes as f64 / limit_bytes as f64);
        }
        self.watched_limits = (limit, limit_bytes);
        level
    }

    /// PUBLISH packets received so far on this core's connections.
    pub fn publishes_received(&self) -> u64 {
        self.stats.messages_in_by_qos.iter().sum()
    }

    /// Whether this shard's log reports a failing write or sync (e.g. a full disk).
    pub fn journal_failing(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| j.failing())
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

    /// The connection limit was reached when `id` was accepted: its CONNECT is answered
    /// with a refusal (5.0: 0x97 Quota exceeded; 3.1.1: Server unavailable).
    pub fn refuse_at_limit(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.refuse_with = reason::QUOTA_EXCEEDED;
        }
    }

    /// How long to stop reading from a connection: over its publish rate (see
    /// `mqtt.max-publish-rate`), until its token debt is paid back; while its password is
    /// being checked, [`LOGIN_POLL`] at a time (what it sends meanwhile waits unread).
    pub fn read_pause(&mut self, id: ConnId, now: Instant) -> Option<Duration> {
        let conn = self.conns.get_mut(&id)?;
        if matches!(conn.phase, Phase::AwaitingLogin { .. }) {
            return Some(LOGIN_POLL);
        }
        if qos1_window_full(conn, self.config.max_inflight) {
            return Some(WINDOW_POLL);
        }
        let rate = self.config.max_publish_rate;
        if rate == 0 {
            return None;
        }
        conn.rate_refill(rate, now)
    }

    /// Whether the connection's password is still being checked (see [`Core::on_login`]).
    pub fn awaiting_login(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| matches!(c.phase, Phase::AwaitingLogin { .. }))
    }

    /// A connection was accepted on this core.
    pub fn on_accept(&mut self, now: Instant) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        let conn = Conn::new(id, now);
        // Its CONNECT deadline (`Conn::new` set `timer_at` to it).
        if let Some(deadline) = conn.timer_at.get() {
            self.conn_timers.push(Reverse((Moment::at(deadline), id)));
        }
        self.conns.insert(id, Box::new(conn));
        self.stats.connections_accepted += 1;
        id
    }

    /// Bytes arrived on a connection: decodes and handles every complete packet in `buf`,
    /// leaving a partial one in place.
    pub fn on_bytes(&mut self, id: ConnId, buf: &mut BytesMut, now: Instant) {
        let max = self.config.max_packet_size as usize;
        let rate = self.config.max_publish_rate;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                buf.clear();
                break;
            };
            if rate > 0 && conn.rate_refill(rate, now).is_some() {
                // Over its publish rate: the rest waits in the buffer (see `read_pause`).
                break;
            }
            if matches!(conn.phase, Phase::AwaitingLogin { .. }) {
                // Nothing more is decoded (or held) for a client whose password is still being
                // checked: the rest waits in the buffer, and reading waits (see `read_pause`).
                break;
            }
            if qos1_window_full(conn, self.config.max_inflight) && next_is_qos1_or_2_publish(buf) {
                // The PUBLISH waits in the buffer until a PUBACK frees a place.
                break;
            }
            conn.last_seen = Moment::at(now);
            let version = match conn.phase {
                Phase::AwaitingConnect { .. } => None,
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
            self.stats.bytes_in += frame.total_len as u64;
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
        self.conns.get(&id).map_or(0, |c| c.pending_write as usize)
    }

    /// The writer wrote `n` bytes of this connection's queue.
    pub fn on_written(&mut self, id: ConnId, n: usize) {
        self.stats.bytes_out += n as u64;
        if let Some(c) = self.conns.get_mut(&id) {
            c.pending_write = c.pending_write.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
            if n > 0 {
                c.written_tick = self.ticks.wrapping_add(1).max(1);
            }
        }
    }

    /// A message from another core (or from this one).
    pub fn on_message(&mut self, msg: CoreMsg, now: Instant) {
        self.handle_message(msg, now);
        self.run_local(now);
    }

    /// Time passed: keep-alive, will delay, session expiry.
    pub fn on_tick(&mut self, now: Instant) {
        self.ticks = self.ticks.wrapping_add(1);
        self.prune_timers();
        self.on_durable(now);
        if self.next_retained_sweep.is_none_or(|t| t <= now) {
            self.retained.remove_expired(now);
            self.next_retained_sweep = Some(now + RETAINED_SWEEP);
        }
        if self.next_checkpoint.is_none_or(|t| t <= now) {
            // Log the progress of persistent sessions, so that after a crash fewer
            // acknowledged messages are delivered again.
            self.checkpoint_sessions(now);
            if std::mem::take(&mut self.deliveries_failed) {
                self.retry_deliveries();
            }
            self.publish_pins();
            self.next_checkpoint = Some(now + CHECKPOINT);
        }
        if self.next_retention_check.is_none_or(|t| t <= now) {
            self.check_retention(now);
            self.next_retention_check = Some(now + RETENTION_CHECK);
        }
        let until = Moment::at(now);
        while let Some(&Reverse((due, id))) = self.conn_timers.peek() {
            if due > until {
                break;
            }
            self.conn_timers.pop();
            self.check_keep_alive(id, due, now);
        }
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, timer))) = self.timers.pop() else { break };
            match timer {
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
        let session = self.timers.peek().map(|Reverse((t, _))| *t);
        let conn = self.conn_timers.peek().and_then(|Reverse((t, _))| t.get());
        match (session, conn) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn send(&mut self, core: usize, msg: CoreMsg) {
        if core == self.id {
            self.local_inbox.push_back(msg);
        } else {
            self.actions.push(Action::Send(core, msg));
        }
    }

    fn run_local(&mut self, now: Instant) {
        loop {
            self.send_deliveries();
            let Some(msg) = self.local_inbox.pop_front() else { break };
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
        Writer {
            out: &mut self.writes,
            scratch: &mut self.scratch,
            cache: &mut self.fanout,
            deliveries: &mut self.deliveries,
        }
        .packet(conn, packet);
    }

    fn shards_for(&self, filter: &[u8]) -> Vec<usize> {
        if topic::has_wildcards(filter) {
            (0..self.cores).collect()
        } else {
            vec![shard_of(filter, self.cores)]
        }
    }

    fn on_packet(&mut self, id: ConnId, packet: Packet, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        match &mut conn.phase {
            Phase::AwaitingConnect { .. } => match packet {
                Packet::Connect(c) => self.on_connect(id, c, now),
                // The decoder accepts only CONNECT before CONNECT; this is defence in depth.
                _ => self.close(id, CloseWith { reason: None, will: false }, now),
            },
            // `on_bytes` decodes nothing for a connection waiting for its login verdict.
            Phase::AwaitingLogin { .. } => self.close(id, CloseWith { reason: None, will: false }, now),
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
        if matches!(conn.phase, Phase::AwaitingConnect { .. }) {
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

    /// Drops stale timer entries when they outnumber live ones, so that connection churn
    /// cannot grow the heap (entries of closed connections would otherwise wait for their
    /// due time, up to a day for a long keep-alive).
    fn prune_timers(&mut self) {
        if self.conn_timers.len() > 2 * self.conns.len() + 1024 {
            let conns = &self.conns;
            self.conn_timers.retain(|Reverse((due, id))| conns.get(id).is_some_and(|c| c.timer_at == *due));
        }
        if self.timers.len() > 2 * (self.sessions.len() + self.moved.len()) + 1024 {
            let sessions = &self.sessions;
            let moved = &self.moved;
            self.timers.retain(|Reverse((due, t))| match t {
                Timer::Session(id) => sessions.get(id).is_some_and(|s| s.timer_at.get() == Some(*due)),
                Timer::Tombstone(id) => moved.contains_key(id),
            });
        }
    }

    fn handle_message(&mut self, msg: CoreMsg, now: Instant) {
        match msg {
            CoreMsg::Publish { msg, ack } => self.shard_publish(msg, ack, now),
            CoreMsg::PublishDone { ack, reason, seq } => self.on_publish_done(ack, reason, seq, now),
            CoreMsg::Release { body, ack } => self.shard_release(body, ack, now),
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
            CoreMsg::Persist { body, ack } => {
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
                }
                self.append_answered(body, ack, reason::SUCCESS, now);
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
}

/// Keeps one live heap entry per session (see `Core::arm_conn_timer`).
/// Ticks (of 50 ms) a client may go without any write to it completing and still count as
/// reading: a large write to a slow reader takes a while, and one that stopped reading
/// slows publishers for at most this long.
const READING_TICKS: u16 = 10;

/// Whether a 3.1.1 client has as many QoS 1 publishes unacknowledged as the broker's
/// window (`mqtt.max-inflight`). 3.1.1 has no Receive Maximum to tell the client, so it is
/// not disconnected (a 5.0 client that goes past the one it was told is, [MQTT-3.3.4-9]):
/// its next QoS 1/2 PUBLISH waits in the buffer and reading pauses until a PUBACK frees a
/// place. Those PUBACKs need nothing more from the client, so this cannot deadlock. (QoS 2
/// exchanges wait for the client's PUBREL, which may be behind a waiting PUBLISH: past the
/// window, they still close the connection.)
fn qos1_window_full(conn: &Conn, max_inflight: u16) -> bool {
    conn.version == ProtocolVersion::V311 && conn.unacked_qos1 >= u32::from(max_inflight)
}

/// Whether the next packet in `buf` is a QoS 1 or 2 PUBLISH (fixed header: type 3, QoS bits).
fn next_is_qos1_or_2_publish(buf: &[u8]) -> bool {
    buf.first().is_some_and(|&b| b >> 4 == 3 && b & 0b0110 != 0)
}

/// Whether bytes were written to the client within the last [`READING_TICKS`].
fn reading(c: &Conn, ticks: u16) -> bool {
    c.written_tick != 0 && ticks.wrapping_add(1).wrapping_sub(c.written_tick) <= READING_TICKS
}

/// Adds a session to a watch list (see `Core::watched`); too many make it `None`.
fn watch(watched: &mut Option<Vec<Bytes>>, client_id: &Bytes) {
    if let Some(w) = watched {
        if !w.contains(client_id) {
            if w.len() >= WATCHED_MAX {
                *watched = None;
            } else {
                w.push(client_id.clone());
            }
        }
    }
}

fn arm_session_timer(session: &mut Session, timers: &mut BinaryHeap<Reverse<(Instant, Timer)>>) {
    if let Some(due) = session.next_due() {
        if session.timer_at.get().is_none_or(|t| due < t) {
            session.timer_at = Moment::at(due);
            timers.push(Reverse((due, Timer::Session(session.client_id.clone()))));
        }
    }
}

fn will_delay(w: &Will) -> u32 {
    w.properties.will_delay_interval.unwrap_or(0)
}

mod durability;
mod lifecycle;
mod publish;
mod subscribe;
#[cfg(test)]
mod tests;

use durability::{Backlogged, JOURNAL_BACKLOG_MAX, RETENTION_CHECK};
pub use durability::{Journal, RetentionPins};
