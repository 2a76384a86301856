//! Per-client state: the [`Session`] (what outlives a connection: subscriptions, QoS
//! state, queue, will, expiry) and the [`Conn`] (what belongs to one network connection:
//! negotiated limits, keep-alive, topic aliases, write-queue size).
//!
//! The functions here turn a message owed to a session into PUBLISH bytes while keeping
//! the MQTT invariants: at most Receive Maximum unacknowledged QoS 1/2 publishes
//! [MQTT-4.9.0-2], never a packet over the client's Maximum Packet Size [MQTT-3.1.2-24],
//! expired messages dropped [MQTT-3.3.2-5], unacknowledged ones resent with DUP on
//! resume [MQTT-4.4.0-1].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{self, Ack, Packet, ProtocolVersion, Publish, QoS, SubscriptionOptions, Will};
use crate::config::DropPolicy;
use crate::message::SharedMessage;
use crate::persist::{self, Delivery, DeliveryState};
use crate::stats::Stats;
use promptmq_auth::ClientAcl;

/// How long a connection may take to send its CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Identifies a network connection on its core.
pub type ConnId = u64;

/// A message owed to a session, with the per-subscriber delivery parameters.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub msg: SharedMessage,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// (shard, log sequence number) when the message is in a shard's WAL: what a
    /// persistent session's progress is measured in.
    pub origin: Option<(usize, u64)>,
}

#[derive(Debug)]
pub struct Inflight {
    /// Send order, for in-order resend on resume.
    pub seq: u64,
    pub out: Outgoing,
    /// QoS 2 after PUBREC: waiting for PUBCOMP, resend PUBREL not PUBLISH.
    pub released: bool,
    /// A logged outbound QoS 2 exchange (see [`logs_delivery`]) whose next step (`sent`
    /// before the PUBLISH, `received` before the PUBREL) is being logged: the packet goes
    /// out when the record is durable.
    pub logging: bool,
    /// Logging that step failed (full disk): tried again at the next checkpoint.
    pub log_failed: bool,
}

/// A step of a logged outbound QoS 2 exchange for the core to send to the message's shard
/// (see `persist.rs`, delivery records).
#[derive(Debug)]
pub struct DeliveryStep {
    /// The shard whose log holds the message, and will hold this record.
    pub shard: usize,
    pub body: Vec<u8>,
    /// The connection that waits for the record to be durable, to send the PUBLISH (or the
    /// PUBREL when `received`); `None` for a completion, which nothing waits for.
    pub waiting: Option<(ConnId, u16, u64)>,
    pub received: bool,
}

/// Where an inbound QoS 2 exchange of a persistent session is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedExchange {
    /// The shard whose log holds the message (and will hold the release).
    pub shard: usize,
    /// The message's sequence number in that log; 0 until the shard reports it.
    pub seq: u64,
    /// A release was sent to the shard on this connection and is not durable yet.
    pub releasing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
    /// Per shard, the log sequence number at which the subscription took effect: on
    /// recovery, only later messages of that shard are owed to it.
    pub since: Vec<(usize, u64)>,
}

/// The hasher of session maps whose keys the broker chooses (packet ids it allocates, shard
/// indices), so a client cannot aim collisions at them: unkeyed, it takes no room in the map
/// (`RandomState` takes 16 bytes in each, of every session).
pub type BrokerKeys = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// What outlives a connection. Moves between cores on takeover, so it is `Send`.
#[derive(Debug)]
pub struct Session {
    pub client_id: Bytes,
    /// Incarnation number: the claim token that created the session. Shards tag
    /// subscriptions with it; it does not change while the session continues.
    pub epoch: u64,
    /// The registry claim currently holding the session (changes on every takeover).
    pub claim: u64,
    /// The connection it is attached to (see [`Session::conn`]); connection ids start at
    /// 1, so `None` takes no room of its own.
    conn: Option<std::num::NonZeroU64>,
    pub version: ProtocolVersion,
    /// Seconds after disconnect; `u32::MAX` never expires.
    pub expiry_interval: u32,
    pub expires_at: Moment,
    /// Keyed by the full filter as subscribed (including any `$share/group/` prefix).
    pub subscriptions: LazyMap<Bytes, StoredSubscription>,
    pub inflight: LazyMap<u16, Inflight, BrokerKeys>,
    /// Inflight packet ids not yet resent on the current connection, oldest first: after a
    /// reconnect they go out as the new connection's Receive Maximum allows [MQTT-3.3.4-9].
    pub resend: LazyDeque<u16>,
    pub next_seq: u64,
    pub next_pkid: u16,
    /// Add and take with the `enqueue` and `queue_*` methods.
    pub queue: MessageQueue,
    /// Inbound QoS 2 packet ids between PUBLISH and PUBREL: a resent PUBLISH with one of
    /// these ids is not delivered again (exactly once, [MQTT-4.3.3-9]). The value says
    /// where the exchange is logged (see `persist.rs`); `None` when it is not (a session
    /// that is not persistent, or no log).
    pub incoming_qos2: LazyMap<u16, Option<LoggedExchange>, BrokerKeys>,
    /// Set when the session is created (a clean start creates a new one), kept across
    /// takeovers and restarts: logged inbound QoS 2 exchanges carry it, so that those of an
    /// earlier session with the same client id never come back.
    pub incarnation: u64,
    /// The will of the current or last connection, until published or discarded. Boxed:
    /// a `Will` is 472 bytes, and most sessions have none.
    pub will: Option<Box<Will>>,
    /// When a delayed will becomes due (connection lost, will delay running).
    pub will_due: Moment,
    /// Due time of this session's one live timer-heap entry.
    pub timer_at: Moment,
    /// Per shard, the highest log sequence number offered to this session.
    pub seen: LazyMap<usize, u64, BrokerKeys>,
    /// Whether a snapshot of this session is in a log (so its end must be logged too).
    pub persisted: bool,
    /// Progress not yet checkpointed.
    pub progress_dirty: bool,
    /// The client completed an outbound QoS 1/2 exchange since the core last looked (see
    /// `Core::overload_level`): a client that acknowledges is draining its queue, one that
    /// has stopped is not, and only the first kind counts towards overload.
    pub acked_since_check: bool,
    /// What the client may read, as of its last CONNECT (`None`: no ACL file, or restored
    /// from the log and not reconnected yet).
    pub acl: Option<Arc<ClientAcl>>,
}

/// A number no earlier session of any client id had, with overwhelming probability: the
/// wall clock hashed with the process's random keys (never 0, which means "none" in logs).
fn new_incarnation() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one(nanos).max(1)
}

impl Session {
    pub fn new(client_id: Bytes, epoch: u64, version: ProtocolVersion) -> Session {
        Session {
            client_id,
            epoch,
            claim: epoch,
            conn: None,
            version,
            expiry_interval: 0,
            expires_at: Moment::NONE,
            subscriptions: LazyMap::default(),
            inflight: LazyMap::default(),
            resend: LazyDeque::default(),
            next_seq: 0,
            next_pkid: 1,
            queue: MessageQueue::default(),
            incoming_qos2: LazyMap::default(),
            incarnation: new_incarnation(),
            will: None,
            will_due: Moment::NONE,
            timer_at: Moment::NONE,
            seen: LazyMap::default(),
            persisted: false,
            progress_dirty: false,
            acked_since_check: false,
            acl: None,
        }
    }

    /// The connection the session is attached to, if any.
    pub fn conn(&self) -> Option<ConnId> {
        self.conn.map(|c| c.get())
    }

    /// Attaches the session to a connection (ids start at 1; 0 means none), or detaches it.
    pub fn set_conn(&mut self, conn: Option<ConnId>) {
        self.conn = conn.and_then(std::num::NonZeroU64::new);
    }

    pub fn take_conn(&mut self) -> Option<ConnId> {
        self.conn.take().map(|c| c.get())
    }

    /// Whether the session outlives its connection (and so is logged).
    pub fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    /// Per shard, the log sequence number up to which nothing is owed to this session any
    /// more: everything it was offered from that shard, except what still waits in its
    /// queue or for an acknowledgement.
    pub fn watermarks(&self) -> Vec<(usize, u64)> {
        let mut marks: Vec<(usize, u64)> = self.seen.iter().map(|(&shard, &seq)| (shard, seq)).collect();
        marks.sort_unstable();
        let owed = self.inflight.values().map(|f| &f.out).chain(self.queue.iter());
        for (shard, seq) in owed.filter_map(|o| o.origin) {
            if let Ok(i) = marks.binary_search_by_key(&shard, |&(s, _)| s) {
                marks[i].1 = marks[i].1.min(seq - 1);
            }
        }
        marks
    }

    /// The earliest instant at which a timer of this session (will delay, expiry) is due.
    pub fn next_due(&self) -> Option<Instant> {
        match (self.will_due.get(), self.expires_at.get()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queues a message for later. A full queue (by count, or by bytes) drops by the
    /// configured policy: the newest message (this one), or the oldest until it fits. A
    /// message larger than the byte limit by itself is dropped. Every drop is counted.
    pub fn enqueue(&mut self, out: Outgoing, limits: Limits, stats: &mut Stats) {
        let size = queued_size(&out);
        let max_bytes = if limits.max_queued_bytes == 0 { usize::MAX } else { limits.max_queued_bytes };
        let full = |s: &Session| s.queue.len() >= limits.max_queued || s.queue.bytes() + size > max_bytes;
        if size > max_bytes {
            stats.dropped_queue_full += 1;
            return;
        }
        while full(self) {
            stats.dropped_queue_full += 1;
            match limits.drop_policy {
                DropPolicy::DropNewest => return,
                DropPolicy::DropOldest => {
                    if self.queue_pop_front().is_none() {
                        return;
                    }
                }
            }
        }
        self.queue.push_back(out, size);
    }

    pub fn queue_pop_front(&mut self) -> Option<Outgoing> {
        self.queue.pop_front()
    }

    /// Puts a message back at the head (it could not be sent after all).
    pub fn queue_push_front(&mut self, out: Outgoing) {
        let size = queued_size(&out);
        self.queue.push_front(out, size);
    }

    fn allocate_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_pkid;
            self.next_pkid = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// The step exchange `pkid` is logging (`sent`, or `received` once PUBREC came), logged
    /// again for connection `conn` (its earlier try failed, or was for another connection).
    pub fn relog_step(&mut self, pkid: u16, conn: ConnId) -> Option<DeliveryStep> {
        let f = self.inflight.get_mut(&pkid)?;
        f.log_failed = false;
        let state = if f.released { DeliveryState::Received } else { DeliveryState::Sent };
        self.delivery_step(pkid, state, Some(conn))
    }

    /// The log record of a step of outbound QoS 2 exchange `pkid` (which must be logged,
    /// see [`logs_delivery`]).
    pub fn delivery_step(&self, pkid: u16, state: DeliveryState, conn: Option<ConnId>) -> Option<DeliveryStep> {
        let f = self.inflight.get(&pkid)?;
        let (shard, msg_seq) = f.out.origin?;
        let d = Delivery { incarnation: self.incarnation, pkid, msg_seq, order: f.seq, state };
        Some(DeliveryStep {
            shard,
            body: persist::encode_delivery(&self.client_id, d),
            waiting: conn.map(|c| (c, pkid, f.seq)),
            received: state == DeliveryState::Received,
        })
    }
}

/// Whether an outbound exchange is logged step by step, so that it resumes with its packet
/// id after a crash: QoS 2 to a persistent session, of a message that is in a log.
pub fn logs_delivery(session: &Session, out: &Outgoing, limits: Limits) -> bool {
    limits.log_deliveries && out.qos == QoS::ExactlyOnce && out.origin.is_some() && session.is_persistent()
}

/// Where a connection is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Only CONNECT is acceptable [MQTT-3.1.0-1]. `peer_identity`: the subject CN of the
    /// client certificate the TLS layer verified, kept for the CONNECT when
    /// `auth.use-identity-as-username` is set (see `Core::set_peer_identity`). Here rather
    /// than in [`Conn`], where every connection would pay for it for its whole life.
    AwaitingConnect {
        peer_identity: Option<Box<Bytes>>,
    },
    /// CONNECT read; its password is being checked off the core (see
    /// [`crate::access::LoginCheck`]). What the client sent behind it is not decoded yet: it
    /// waits in the read buffer (`Core::on_bytes`, `Core::read_pause`).
    AwaitingLogin {
        connect: Box<crate::codec::Connect>,
    },
    /// CONNECT accepted; waiting for the session to arrive from another owner (takeover).
    /// Packets the client pipelined behind CONNECT wait in `pending`.
    AwaitingSession {
        pending: Vec<Packet>,
    },
    Connected,
}

/// What belongs to one network connection.
#[derive(Debug)]
pub struct Conn {
    pub id: ConnId,
    /// Due time of this connection's one live timer-heap entry. Until CONNECT is accepted,
    /// that is the CONNECT deadline (see [`Conn::keep_alive_deadline`]).
    pub timer_at: Moment,
    pub phase: Phase,
    pub version: ProtocolVersion,
    pub client_id: Bytes,
    /// Seconds; 0: none.
    pub keep_alive: u16,
    pub last_seen: Moment,
    /// The client's Receive Maximum: our outbound window [MQTT-3.3.4-7].
    pub client_receive_max: u16,
    /// The client's Maximum Packet Size.
    pub client_max_packet: u32,
    /// The client's Topic Alias Maximum (server-to-client aliases we may use).
    pub client_alias_max: u16,
    pub aliases_in: LazyMap<u16, Bytes>,
    pub aliases_out: LazyMap<Bytes, u16>,
    /// Inbound QoS 1 publishes handed to the shard and not yet acknowledged.
    pub unacked_qos1: u32,
    /// Bytes handed to the writer and not yet written.
    /// (32 bits: a write queue is bounded far below 4 GiB, see `mqtt.max-write-buffer`.)
    pub pending_write: u32,
    /// Clean Start / Clean Session of the CONNECT, kept while the session is fetched.
    pub clean_start: bool,
    pub session_expiry: u32,
    /// Boxed: a `Will` is 472 bytes, and most connections have none.
    pub will: Option<Box<Will>>,
    pub server_keep_alive: Option<u16>,
    pub assigned_client_id: bool,
    /// What this client may publish and subscribe to (`None`: no ACL file).
    pub acl: Option<Arc<ClientAcl>>,
    /// Set when the connection limit was reached at accept: the CONNECT is refused so.
    /// (A CONNACK refusal code, 0x80 and up; 0: none. One byte, where an `Option` takes two.)
    pub refuse_with: u8,
    /// The core's tick count (wrapping) when bytes were last written to the client, plus
    /// one (0: never): a client written to lately is reading, and its write backlog drains,
    /// as opposed to one that stopped reading (see `Core::overload_level`).
    pub written_tick: u16,
    /// Publish rate limit (`mqtt.max-publish-rate`), from the first publish on; boxed, as
    /// most brokers set no limit.
    pub rate: Option<Box<RateBucket>>,
}

/// A connection's publish-rate token bucket.
#[derive(Debug)]
pub struct RateBucket {
    /// Tokens left (negative: debt) as of `at`.
    pub tokens: f64,
    pub at: Instant,
}

impl Conn {
    pub fn new(id: ConnId, now: Instant) -> Conn {
        Conn {
            id,
            timer_at: Moment::at(now + CONNECT_TIMEOUT),
            phase: Phase::AwaitingConnect { peer_identity: None },
            version: ProtocolVersion::V311,
            client_id: Bytes::new(),
            keep_alive: 0,
            last_seen: Moment::at(now),
            client_receive_max: u16::MAX,
            client_max_packet: (codec::MAX_REMAINING_LENGTH + 5) as u32,
            client_alias_max: 0,
            aliases_in: LazyMap::default(),
            aliases_out: LazyMap::default(),
            unacked_qos1: 0,
            pending_write: 0,
            clean_start: true,
            session_expiry: 0,
            will: None,
            server_keep_alive: None,
            assigned_client_id: false,
            acl: None,
            refuse_with: 0,
            written_tick: 0,
            rate: None,
        }
    }

    /// CONNECT is not accepted yet (not read, or its password being checked).
    pub fn awaiting_connect(&self) -> bool {
        matches!(self.phase, Phase::AwaitingConnect { .. } | Phase::AwaitingLogin { .. })
    }

    /// The publish-rate bucket (`rate` tokens a second, holding one second's worth) brought
    /// up to `now`; returns how long until it is out of debt, if it is in debt.
    pub fn rate_refill(&mut self, rate: u32, now: Instant) -> Option<Duration> {
        let rate = f64::from(rate);
        // A new bucket is full (one second of publishes).
        let b = self.rate.get_or_insert_with(|| Box::new(RateBucket { tokens: rate, at: now }));
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * rate;
        b.tokens = (b.tokens + refill).min(rate);
        b.at = now;
        (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / rate))
    }

    /// Takes a token for a publish; true when that puts the bucket in debt.
    pub fn rate_take(&mut self, rate: u32, now: Instant) -> bool {
        self.rate_refill(rate, now);
        self.rate.as_mut().is_some_and(|b| {
            b.tokens -= 1.0;
            b.tokens < 0.0
        })
    }

    /// When the keep-alive runs out: 1.5 times the interval after the last packet
    /// [MQTT-3.1.2-24].
    /// Before CONNECT is accepted, the deadline is [`CONNECT_TIMEOUT`] after accept, however
    /// many bytes trickle in, so idle or slow-loris sockets cannot pile up (and a login
    /// waiting behind many others gives up).
    pub fn keep_alive_deadline(&self) -> Option<Instant> {
        if self.awaiting_connect() {
            return self.timer_at.get();
        }
        let last_seen = self.last_seen.get()?;
        (self.keep_alive > 0).then(|| last_seen + Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }
}

/// A hash map that allocates nothing, and takes one pointer, until its first entry: for the
/// maps most connections and sessions never fill (topic aliases, subscriptions of a client
/// that only publishes, QoS 1/2 state of one that only uses QoS 0), which as plain `HashMap`s
/// would cost every idle connection 32 to 48 bytes each. Emptied, it keeps its allocation.
#[derive(Debug, Clone)]
#[allow(clippy::box_collection)] // the box is the point: one pointer while empty
pub struct LazyMap<K, V, S = std::collections::hash_map::RandomState>(Option<Box<HashMap<K, V, S>>>);

impl<K, V, S> Default for LazyMap<K, V, S> {
    fn default() -> Self {
        LazyMap(None)
    }
}

impl<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher + Default> LazyMap<K, V, S> {
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.as_ref()?.get(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.as_mut()?.get_mut(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.map_mut().insert(key, value)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.as_mut()?.remove(key)
    }

    pub fn entry(&mut self, key: K) -> std::collections::hash_map::Entry<'_, K, V> {
        self.map_mut().entry(key)
    }

    /// The map itself, allocated now if it was not.
    pub fn map_mut(&mut self) -> &mut HashMap<K, V, S> {
        self.0.get_or_insert_with(Default::default)
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().flat_map(|m| m.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.0.iter_mut().flat_map(|m| m.values_mut())
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (K, V)> + '_ {
        self.0.iter_mut().flat_map(|m| m.drain())
    }
}

impl<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher + Default> FromIterator<(K, V)> for LazyMap<K, V, S> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let map: HashMap<K, V, S> = iter.into_iter().collect();
        if map.is_empty() {
            LazyMap(None)
        } else {
            LazyMap(Some(Box::new(map)))
        }
    }
}

/// An optional point in time in 8 bytes, where an `Option<Instant>` takes 16: nanoseconds
/// since a process-wide origin, 0 for none. Every connection and session holds a few, and
/// idle ones are most of a broker's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(u64);

/// An hour before the first use: instants a little older than that (an earlier `now` held
/// by a caller) still convert exactly.
fn moment_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

impl Moment {
    pub const NONE: Moment = Moment(0);

    pub fn at(t: Instant) -> Moment {
        let nanos = t.saturating_duration_since(moment_origin()).as_nanos();
        Moment(u64::try_from(nanos).unwrap_or(u64::MAX).max(1))
    }

    pub fn get(self) -> Option<Instant> {
        (self.0 != 0).then(|| moment_origin() + Duration::from_nanos(self.0))
    }
}

/// Messages owed to a session that wait for its connection or its window, and their size.
/// One pointer until the first message (most sessions never queue); the allocation stays
/// after that, as a queue that fills and drains at full speed should not allocate each time.
#[derive(Debug, Default)]
pub struct MessageQueue(Option<Box<QueueInner>>);

#[derive(Debug, Default)]
struct QueueInner {
    items: VecDeque<Outgoing>,
    /// Topic and payload bytes of `items` (see `queued_size`).
    bytes: usize,
}

impl MessageQueue {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.items.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Topic and payload bytes of the messages queued.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.bytes)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.0.iter().flat_map(|q| q.items.iter())
    }

    fn push_back(&mut self, out: Outgoing, size: usize) {
        let q = self.0.get_or_insert_with(Default::default);
        q.bytes += size;
        q.items.push_back(out);
    }

    fn push_front(&mut self, out: Outgoing, size: usize) {
        let q = self.0.get_or_insert_with(Default::default);
        q.bytes += size;
        q.items.push_front(out);
    }

    fn pop_front(&mut self) -> Option<Outgoing> {
        let q = self.0.as_mut()?;
        let out = q.items.pop_front()?;
        q.bytes = q.bytes.saturating_sub(queued_size(&out));
        Some(out)
    }
}

/// A queue that takes one pointer until its first element (see [`LazyMap`]): packet ids to
/// resend exist only after a reconnect.
#[derive(Debug)]
#[allow(clippy::box_collection)] // the box is the point: one pointer while empty
pub struct LazyDeque<T>(Option<Box<VecDeque<T>>>);

impl<T> Default for LazyDeque<T> {
    fn default() -> Self {
        LazyDeque(None)
    }
}

impl<T> LazyDeque<T> {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let q = self.0.as_mut()?;
        let front = q.pop_front();
        if q.is_empty() {
            // Done resending: the queue goes with the last of them.
            self.0 = None;
        }
        front
    }

    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        if let Some(q) = self.0.as_mut() {
            q.retain(keep);
        }
    }
}

impl<T> FromIterator<T> for LazyDeque<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let q: VecDeque<T> = iter.into_iter().collect();
        LazyDeque((!q.is_empty()).then(|| Box::new(q)))
    }
}

/// Payloads at least this large are sent as their own chunk (shared by every subscriber)
/// instead of being copied behind the header; below it, one small copy beats an extra
/// iovec.
const SHARED_PAYLOAD_MIN: usize = 512;

/// The wire bytes of the last message sent without per-subscriber fields (QoS 0, no
/// subscription identifier, no topic alias): identical for every such subscriber of the
/// same protocol version and RETAIN flag, so a fan-out encodes the message once.
#[derive(Default)]
pub struct FanoutCache {
    /// Holding the `Arc` (not just its address) keeps the address from being reused by
    /// another message while the entry is alive.
    message: Option<(SharedMessage, Instant)>,
    /// Indexed by (v5, retain).
    encoded: [Option<Vec<Bytes>>; 4],
}

impl FanoutCache {
    fn get(&mut self, out: &Outgoing, version: ProtocolVersion, now: Instant) -> &mut Option<Vec<Bytes>> {
        let same = self.message.as_ref().is_some_and(|(m, t)| std::sync::Arc::ptr_eq(m, &out.msg) && *t == now);
        if !same {
            self.message = Some((out.msg.clone(), now));
            self.encoded = Default::default();
        }
        &mut self.encoded[usize::from(version.is_v5()) * 2 + usize::from(out.retain)]
    }
}

/// Bytes to write to connections, collected by the caller into actions.
pub struct Writer<'a> {
    pub out: &'a mut Vec<(ConnId, Bytes)>,
    pub scratch: &'a mut BytesMut,
    pub cache: &'a mut FanoutCache,
    /// Steps of logged outbound QoS 2 exchanges, for the core to send to their shards.
    pub deliveries: &'a mut Vec<DeliveryStep>,
}

impl Writer<'_> {
    pub fn packet(&mut self, conn: &mut Conn, packet: &Packet) {
        // Our own packets are always within limits except PUBLISH (checked by the caller),
        // so an encode error here is a bug worth seeing in the logs, not a crash.
        match codec::encode_packet(packet, conn.version, self.scratch, usize::MAX) {
            Ok(()) => {
                self.flush(conn);
            }
            Err(e) => {
                self.scratch.clear();
                tracing::error!(conn = conn.id, error = %e, "could not encode packet");
            }
        }
    }

    fn flush(&mut self, conn: &mut Conn) -> Bytes {
        let bytes = self.scratch.split().freeze();
        self.push(conn, bytes.clone());
        bytes
    }

    fn push(&mut self, conn: &mut Conn, bytes: Bytes) {
        conn.pending_write = conn.pending_write.saturating_add(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        self.out.push((conn.id, bytes));
    }
}

/// Whether the ACL of the session's current client lets it read this message.
fn may_read(session: &Session, out: &Outgoing) -> bool {
    session.acl.as_ref().is_none_or(|acl| crate::access::can_read(acl, &out.msg.topic))
}

/// What a queued message counts against `Limits::max_queued_bytes`: topic, payload and
/// properties (user properties can be most of a packet).
fn queued_size(out: &Outgoing) -> usize {
    out.msg.topic.len() + out.msg.payload.len() + codec::properties_len(&out.msg.properties)
}

/// Limits the session logic needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_inflight: u16,
    pub max_queued: usize,
    /// Topic and payload bytes a session queue may hold (0 = no byte limit).
    pub max_queued_bytes: usize,
    pub drop_policy: DropPolicy,
    pub max_write_buffer: usize,
    /// The WAL is on: outbound QoS 2 exchanges of persistent sessions are logged.
    pub log_deliveries: bool,
}

impl Limits {
    pub fn from_config(config: &crate::config::Config) -> Limits {
        Limits {
            max_inflight: config.max_inflight,
            max_queued: config.max_queued_messages,
            max_queued_bytes: config.max_queued_bytes,
            drop_policy: config.queue_drop_policy,
            max_write_buffer: config.max_write_buffer,
            log_deliveries: config.wal_enabled,
        }
    }

    /// How full `queue` is against a quarter of its bound, in messages or (with a byte
    /// bound) in bytes, whichever is fuller: above 1.0 a client that takes what it is sent
    /// has the broker overloaded on its own (see `Core::offer` and `Core::overload_level_now`).
    pub fn queue_quarter_level(&self, queue: &MessageQueue) -> f64 {
        let mut level = queue.len() as f64 / (self.max_queued / 4).max(1) as f64;
        if self.max_queued_bytes > 0 {
            level = level.max(queue.bytes() as f64 / (self.max_queued_bytes / 4).max(1) as f64);
        }
        level
    }
}

/// Offers a message to a session: sends it now if connected and the window allows,
/// queues it otherwise (QoS 1/2), or drops it (QoS 0 while offline or when the
/// connection's write queue is full).
pub fn offer(
    session: &mut Session,
    conn: Option<&mut Conn>,
    out: Outgoing,
    limits: Limits,
    now: Instant,
    w: &mut Writer<'_>,
    stats: &mut Stats,
) {
    if let Some((shard, seq)) = out.origin {
        let seen = session.seen.entry(shard).or_insert(0);
        *seen = (*seen).max(seq);
        session.progress_dirty = true;
    }
    if out.msg.is_expired(now) {
        stats.dropped_expired += 1;
        return;
    }
    // After `seen` moved on: a message the client may not read is not owed either (it
    // must not come back from the log after a restart).
    if !may_read(session, &out) {
        stats.acl_denied_read += 1;
        return;
    }
    let Some(conn) = conn.filter(|c| matches!(c.phase, Phase::Connected)) else {
        if out.qos == QoS::AtMostOnce {
            stats.dropped_offline_qos0 += 1;
        } else {
            session.enqueue(out, limits, stats);
        }
        return;
    };
    if out.qos == QoS::AtMostOnce {
        if conn.pending_write as usize > limits.max_write_buffer {
            stats.dropped_slow_qos0 += 1;
            return;
        }
        send_publish(conn, &out, 0, false, now, w, stats);
        return;
    }
    if !session.queue.is_empty() || !session.resend.is_empty() || in_use(session) >= window(conn, limits) {
        session.enqueue(out, limits, stats);
        return;
    }
    start_inflight(session, conn, out, limits, now, w, stats);
}

fn window(conn: &Conn, limits: Limits) -> usize {
    usize::from(conn.client_receive_max.min(limits.max_inflight))
}

/// QoS 1/2 publishes sent on the current connection and not yet completed.
fn in_use(session: &Session) -> usize {
    session.inflight.len() - session.resend.len()
}

/// Removes an acknowledged (or abandoned) outbound exchange.
pub fn complete(session: &mut Session, pkid: u16) {
    if let Some(f) = session.inflight.remove(&pkid) {
        if !session.resend.is_empty() {
            session.resend.retain(|&id| id != pkid);
        }
        session.progress_dirty |= f.out.origin.is_some();
        session.acked_since_check = true;
    }
}

fn start_inflight(
    session: &mut Session,
    conn: &mut Conn,
    out: Outgoing,
    limits: Limits,
    now: Instant,
    w: &mut Writer<'_>,
    stats: &mut Stats,
) {
    let Some(pkid) = session.allocate_pkid() else {
        session.queue_push_front(out);
        return;
    };
    let logged = logs_delivery(session, &out, limits);
    if !logged && !send_publish(conn, &out, pkid, false, now, w, stats) {
        return;
    }
    let seq = session.next_seq;
    session.next_seq += 1;
    session.inflight.insert(pkid, Inflight { seq, out, released: false, logging: logged, log_failed: false });
    if logged {
        // The PUBLISH waits for its `sent` record (see `delivery_logged`).
        w.deliveries.extend(session.delivery_step(pkid, DeliveryState::Sent, Some(conn.id)));
    }
}

/// The step of logged exchange `pkid` that connection `conn` waited for is durable
/// (`ok`) or failed: the PUBLISH (or, `received`, the PUBREL) goes out now, or the step is
/// retried at the next checkpoint. A step of another connection, or one already done, is
/// ignored.
#[allow(clippy::too_many_arguments)]
pub fn delivery_logged(
    session: &mut Session,
    conn: &mut Conn,
    pkid: u16,
    order: u64,
    received: bool,
    ok: bool,
    limits: Limits,
    now: Instant,
    w: &mut Writer<'_>,
    stats: &mut Stats,
) {
    let Some(f) = session.inflight.get_mut(&pkid) else { return };
    if f.seq != order || !f.logging || f.released != received {
        return;
    }
    if !ok {
        f.log_failed = true;
        return;
    }
    f.logging = false;
    if received {
        w.packet(conn, &Packet::PubRel(Ack::new(pkid, 0)));
        return;
    }
    send_inflight(session, conn, pkid, false, limits, now, w, stats);
}

/// Sends the PUBLISH of inflight exchange `pkid`. Delivery already started, so an expired
/// message is still sent ([MQTT-3.3.2-5] only deletes copies not yet sent); one that no
/// longer fits the client's Maximum Packet Size is abandoned [MQTT-3.1.2-25], and so is one
/// the client now connected to the session may not read.
#[allow(clippy::too_many_arguments)]
fn send_inflight(
    session: &mut Session,
    conn: &mut Conn,
    pkid: u16,
    dup: bool,
    limits: Limits,
    now: Instant,
    w: &mut Writer<'_>,
    stats: &mut Stats,
) {
    let Some(out) = session.inflight.get(&pkid).map(|f| f.out.clone()) else { return };
    if !may_read(session, &out) {
        stats.acl_denied_read += 1;
        abandon(session, pkid, limits, w);
    } else if !send_publish(conn, &out, pkid, dup, now, w, stats) {
        abandon(session, pkid, limits, w);
    }
}

/// Ends an outbound exchange the broker gives up on (the client may no longer read the
/// message, or it no longer fits), logging its end when it was logged.
fn abandon(session: &mut Session, pkid: u16, limits: Limits, w: &mut Writer<'_>) {
    if session.inflight.get(&pkid).is_some_and(|f| logs_delivery(session, &f.out, limits)) {
        w.deliveries.extend(session.delivery_step(pkid, DeliveryState::Completed, None));
    }
    complete(session, pkid);
}

/// Sends queued messages while the window has room.
pub fn pump(
    session: &mut Session,
    conn: &mut Conn,
    limits: Limits,
    now: Instant,
    w: &mut Writer<'_>,
    stats: &mut Stats,
) {
    while in_use(session) < window(conn, limits) {
        if let Some(pkid) = session.resend.pop_front() {
            let Some(f) = session.inflight.get_mut(&pkid) else { continue };
            if f.logging {
                // Its step was being logged for an earlier connection: log it again for
                // this one, which sends the packet once it is durable.
                w.deliveries.extend(session.relog_step(pkid, conn.id));
            } else if f.released {
                w.packet(conn, &Packet::PubRel(Ack::new(pkid, 0)));
            } else {
                send_inflight(session, conn, pkid, true, limits, now, w, stats);
            }
            continue;
        }
        let Some(out) = session.queue_pop_front() else { break };
        if out.msg.is_expired(now) {
            stats.dropped_expired += 1;
            continue;
        }
        // Queued before a restart, a takeover by another user or an ACL reload: the rules
        // of the client connected now decide.
        if !may_read(session, &out) {
            stats.acl_denied_read += 1;
            continue;
        }
        if out.qos == QoS::AtMostOnce {
            send_publish(conn, &out, 0, false, now, w, stats);
        } else {
            start_inflight(session, conn, out, limits, now, w, stats);
        }
    }
}

/// Resends every unacknowledged outbound message in its original order: PUBLISH with DUP
/// for those not yet PUBREC'd, PUBREL for those that were [MQTT-4.4.0-1], as many as the
/// new connection's Receive Maximum allows (the rest as acknowledgements free the window).
pub fn resume(
    session: &mut Session,
    conn: &mut Conn,
    limits: Limits,
    now: Instant,
    w: &mut Writer<'_>,
    stats: &mut Stats,
) {
    let mut order: Vec<(u64, u16)> = session.inflight.iter().map(|(id, f)| (f.seq, *id)).collect();
    order.sort_unstable();
    session.resend = order.into_iter().map(|(_, pkid)| pkid).collect();
    pump(session, conn, limits, now, w, stats);
}

/// Encodes and writes one PUBLISH; returns false if it was dropped because it exceeds the
/// client's Maximum Packet Size [MQTT-3.1.2-25].
fn send_publish(
    conn: &mut Conn,
    out: &Outgoing,
    pkid: u16,
    dup: bool,
    now: Instant,
    w: &mut Writer<'_>,
    stats: &mut Stats,
) -> bool {
    let msg = &out.msg;
    let v5 = conn.version.is_v5();
    let mut p = Publish::new(msg.topic.clone(), out.qos, msg.payload.clone());
    p.dup = dup && out.qos != QoS::AtMostOnce;
    p.retain = out.retain;
    p.pkid = pkid;
    if v5 {
        p.properties = msg.properties.clone();
        p.properties.message_expiry_interval = msg.remaining_expiry(now);
        p.properties.subscription_identifiers = out.subscription_ids.clone();
    }
    // Server-to-client topic alias [MQTT-3.3.2-10]: reuse the topic's alias (empty topic),
    // or establish a new one while the client's Topic Alias Maximum allows. A new alias is
    // recorded only once its packet is certain to be sent, or the client would later get
    // an alias it never learned.
    let mut new_alias = None;
    if v5 && conn.client_alias_max > 0 {
        match conn.aliases_out.get(&msg.topic) {
            Some(&alias) => {
                p.properties.topic_alias = Some(alias);
                p.topic = Bytes::new();
            }
            None if conn.aliases_out.len() < usize::from(conn.client_alias_max) => {
                let alias = conn.aliases_out.len() as u16 + 1;
                p.properties.topic_alias = Some(alias);
                new_alias = Some(alias);
            }
            None => {}
        }
    }
    if codec::publish_len(&p, conn.version) > conn.client_max_packet as usize {
        stats.dropped_too_large += 1;
        return false;
    }
    if let Some(alias) = new_alias {
        conn.aliases_out.insert(crate::message::owned(&msg.topic), alias);
    }
    let cacheable = out.qos == QoS::AtMostOnce && p.properties.topic_alias.is_none() && out.subscription_ids.is_empty();
    if cacheable {
        if let Some(chunks) = w.cache.get(out, conn.version, now) {
            for chunk in chunks.clone() {
                w.push(conn, chunk);
            }
            stats.messages_out_by_qos[out.qos as usize] += 1;
            return true;
        }
    }
    let shared_payload = p.payload.len() >= SHARED_PAYLOAD_MIN;
    let encoded = if shared_payload {
        codec::encode_publish_header(&p, conn.version, w.scratch)
    } else {
        codec::encode_publish(&p, conn.version, w.scratch)
    };
    if let Err(e) = encoded {
        w.scratch.clear();
        tracing::warn!(conn = conn.id, error = %e, "dropping unencodable publish");
        stats.dropped_too_large += 1;
        return false;
    }
    let header = w.flush(conn);
    if shared_payload {
        w.push(conn, p.payload.clone());
    }
    if cacheable {
        let chunks = if shared_payload { vec![header, p.payload] } else { vec![header] };
        *w.cache.get(out, conn.version, now) = Some(chunks);
    }
    stats.messages_out_by_qos[out.qos as usize] += 1;
    true
}
