//! The driver: runs one [`Core`] per thread on the runtime and does what its actions say.
//!
//! Per core there are four kinds of task, all on the core's own thread:
//! - the acceptor, on the core's own listener (`SO_REUSEPORT`);
//! - per connection one task that reads (bytes into `Core::on_bytes`) and writes (drains the
//!   connection's queue of encoded packets with vectored writes), see [`run_connection`];
//! - the inbox drainer, which empties the rings from every other core in batches when this
//!   core's [`Wakeup`] rings;
//! - the ticker, which drives timers (keep-alive, will delay, session expiry).
//!
//! Cross-core traffic goes through one bounded lock-free queue per ordered pair of cores
//! (`crossbeam_queue::ArrayQueue`, used single-producer/single-consumer). When a ring is
//! full the message waits in the sender's local overflow queue, and readers on the sending
//! core stop reading their sockets until the overflow drains: back-pressure reaches the
//! publishers instead of growing memory.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_queue::{ArrayQueue, SegQueue};
// The runtime, chosen at build time (see the features in broker/Cargo.toml).
#[cfg(not(all(target_os = "linux", feature = "uring", not(feature = "tokio"))))]
pub(crate) use promptmq_runtime_tokio as rt;
#[cfg(all(target_os = "linux", feature = "uring", not(feature = "tokio")))]
pub(crate) use promptmq_runtime_uring as rt;

use crate::access::{Access, AccessError, LoginThreads};
use crate::config::{AcceptMode, Config, WalSyncMode};
use crate::core::{shard_of, RetentionPins};
use crate::core::{Action, Core, CoreMsg};
use crate::listeners::{self, ListenerKind, Transports};
use crate::local_signal::LocalSignal;
use crate::message::SharedMessage;
use crate::metrics::{BrokerInfo, Metrics};
use crate::persist::WallClock;
use crate::registry::Registry;
use crate::session::ConnId;
use crate::session::Session;
use crate::storage::{self, DirLock, StorageError, WalJournal};

/// Capacity of each cross-core ring.
const RING_CAPACITY: usize = 8192;
/// Messages drained from one ring before looking at the next, so one busy peer cannot
/// starve the others.
const DRAIN_BATCH: usize = 256;
/// Back-pressure: a core is congested when more than this many of its outgoing messages
/// wait in overflow, or one of its incoming rings is more than half full. While any core is
/// congested, every core stops reading its sockets (the only source of new work) until the
/// congested ones drain below a quarter of that. Cores never stop draining their rings, so
/// this cannot deadlock; and since only reading stops, internal queues stay bounded by
/// what was in flight.
const CONGESTED_OVERFLOW: usize = 4 * 1024;
/// The longest a connection's next read waits, after a read that brought QoS 1/2 publishes,
/// while a core is overloaded. Bounded, so that even a wrong verdict costs publishers only
/// throughput (at most one read per this long), never their connection.
const OVERLOAD_PAUSE: Duration = Duration::from_millis(50);
/// Threads that check passwords (see [`LoginThreads`]): hashes like `$7$` and `$argon2id$`
/// take milliseconds each by design, and on a core every other client would wait for them.
const LOGIN_THREADS: usize = 2;
/// A login thread's verdict on a connection's password.
type LoginVerdict = (ConnId, Result<crate::access::Login, u8>);
const TICK: Duration = Duration::from_millis(50);
/// After the broker closes a connection (e.g. after DISCONNECT with an error reason), how
/// long it keeps reading and discarding what the client still sends before closing the
/// socket. Closing at once would make the kernel answer the client's in-flight packets
/// with a reset, which can destroy the DISCONNECT before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
/// A connection's write queue is a vector only while it has something to write: when its
/// writer goes idle the (empty) vectors go to a pool of this many per core, and the next
/// write to any connection of the core takes one from there. Kept by each connection they
/// would cost every idle one; dropped and made again they would cost allocations per write.
const QUEUE_POOL: usize = 64;
/// Vectors larger than this (in chunks) are not pooled (a burst's, rarely needed again).
const QUEUE_POOL_VEC_MAX: usize = 1024;
/// Connections over `mqtt.max-connections` still get a refusing CONNACK, up to this many
/// more; beyond that they are closed at once.
const LIMIT_GRACE: usize = 64;
/// How long a stopping broker waits for the cores to exchange their last messages and for
/// connections to flush, before it syncs the logs and exits anyway.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);
/// How long a stopping core waits for its log writer to take the last records.
const SHUTDOWN_JOURNAL: Duration = Duration::from_secs(5);

/// What all cores share. Only the rings and wakeups are touched per message.
struct Shared {
    config: Arc<Config>,
    registry: Arc<Registry>,
    cores: usize,
    rings: Vec<ArrayQueue<CoreMsg>>,
    /// Per ring (indexed as `rings`), the QoS 1/2 deliveries its receiver has taken out,
    /// added once per drained batch; the sender counts those it put in
    /// (`Driver::deliveries_sent`), and the difference is what is in transit (overflow
    /// included).
    ///
    /// Overload (see [`crate::core::OVERLOAD_BACKLOG`]) counts those in transit too: their
    /// publishers may already have been acknowledged, and no session queue holds them yet. A
    /// peer that falls behind (the broker's cores share the machine with its clients) would
    /// otherwise take in a thousand of them at once, all for one session, past its queue's
    /// bound, while the publishers were told nothing. More than `deliveries_overload` to one
    /// peer is overload. (QoS 0 is not counted: it has no queue to overflow, and full-speed
    /// QoS 0 keeps the rings that full.)
    deliveries_taken: Vec<CacheLine<AtomicUsize>>,
    /// Half of `mqtt.max-queued-messages`: the deliveries in transit to one peer may all be
    /// for one session, whose own queue declares overload at a quarter (`Core::offer`), and
    /// what its publishers have in flight must still fit. (A quarter was measured too: no
    /// fewer losses, a quarter less QoS 1 throughput.)
    deliveries_overload: usize,
    wakeups: Vec<rt::Wakeup>,
    /// Where passwords are checked, off the cores (with a password file).
    login_threads: Option<LoginThreads>,
    /// Per core, the verdicts of the login threads on its connections' passwords.
    verdicts: Arc<Vec<SegQueue<LoginVerdict>>>,
    /// Sockets accepted by core 0 for the other cores (accept mode `handoff`).
    handoff: Vec<ArrayQueue<(std::net::TcpStream, ListenerKind)>>,
    /// TLS and WebSocket settings for new connections.
    transports: Transports,
    /// Login and ACL checks (`None`: nothing restricted).
    access: Option<Arc<Access>>,
    metrics: Arc<Metrics>,
    /// Per core: milliseconds since `started` at its last tick (the health check's sign
    /// of life), and whether its log reports failures.
    heartbeats: Vec<AtomicU64>,
    wal_failing: Vec<AtomicBool>,
    /// Per core: milliseconds since `started` at its last failed accept (EMFILE, ENFILE,
    /// ENOMEM, ...; 0: none yet).
    accept_failed_ms: Vec<AtomicU64>,
    started: Instant,
    /// Open client connections over all cores (`mqtt.max-connections`).
    active_conns: AtomicUsize,
    nonce: u64,
    clock: WallClock,
    pins: Arc<RetentionPins>,
    /// How many cores are congested (see [`CONGESTED_OVERFLOW`]).
    congested: AtomicUsize,
    /// How many cores are overloaded (see [`crate::core::OVERLOAD_BACKLOG`]).
    overloaded: AtomicUsize,
    /// The broker is stopping (see [`Stopper`]).
    stopping: AtomicBool,
    /// Cores that have closed their connections since the broker began stopping.
    closed_cores: AtomicUsize,
}

impl Shared {
    /// Milliseconds since the broker started (the clock of the health check's marks).
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn ring(&self, from: usize, to: usize) -> &ArrayQueue<CoreMsg> {
        &self.rings[from * self.cores + to]
    }

    fn deliveries_taken(&self, from: usize, to: usize) -> &AtomicUsize {
        &self.deliveries_taken[from * self.cores + to].0
    }
}

/// A value alone on its cache line: counters one core writes and another reads must not
/// share a line with another pair's.
#[repr(align(64))]
struct CacheLine<T>(T);

/// Whether a cross-core message counts in [`Shared::deliveries_taken`].
fn acknowledged_delivery(msg: &CoreMsg) -> bool {
    matches!(msg, CoreMsg::Deliver { msg, .. } if msg.qos != crate::codec::QoS::AtMostOnce)
}

/// A running broker's listening address and the handle to wait for it.
pub struct Running {
    pub local_addr: SocketAddr,
    pub cores: usize,
    thread: std::thread::JoinHandle<io::Result<()>>,
    control: Control,
    /// Every listener and the address it is bound to (port 0 resolved).
    pub listeners: Vec<(ListenerKind, SocketAddr)>,
    _lock: Option<DirLock>,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Transports(#[from] crate::listeners::TransportSetupError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("cannot start the core threads: {0}")]
    Threads(io::Error),
}

/// What each core thread is handed at startup.
struct CoreStart {
    listeners: Vec<(ListenerKind, std::net::TcpListener)>,
    journal: Option<WalJournal>,
    retained: Vec<SharedMessage>,
    sessions: Vec<(Session, Instant)>,
}

/// Controls a running broker from outside its cores (the signal thread).
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    /// Stops the broker gracefully (SIGTERM, SIGINT): see [`shut_down`].
    pub fn stop(&self) {
        if !self.shared.stopping.swap(true, Ordering::AcqRel) {
            for wakeup in &self.shared.wakeups {
                wakeup.ring();
            }
        }
    }

    /// Reloads the password file, the ACL file and the TLS certificate (SIGHUP). Each one
    /// that fails to load keeps its previous version; the errors are returned. Returns what
    /// was reloaded.
    pub fn reload(&self) -> Result<Vec<&'static str>, Vec<String>> {
        let mut done = Vec::new();
        let mut errors = Vec::new();
        if let Some(access) = &self.shared.access {
            match access.reload() {
                Ok(()) => done.push("password and ACL files"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        match self.shared.transports.reload() {
            Ok(true) => done.push("TLS certificate"),
            Ok(false) => {}
            Err(e) => errors.push(e.to_string()),
        }
        if errors.is_empty() {
            Ok(done)
        } else {
            Err(errors)
        }
    }
}

impl Running {
    /// A handle that stops (then [`Running::wait`] returns) or reloads the broker.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Blocks until the broker stops.
    pub fn wait(self) -> io::Result<()> {
        self.thread.join().map_err(|_| io::Error::other("broker thread panicked"))?
    }
}

/// Binds the listeners and starts the cores. Returns once every core's listener is bound,
/// so bind errors are reported to the caller.
pub fn start(config: Config) -> Result<Running, StartError> {
    let cores = config.effective_cores();
    let transports = Transports::from_config(&config)?;
    let access = Access::from_config(&config)?;
    // Bind every core's sockets here: port 0 is resolved once and shared, and a bind error
    // stops startup before any thread runs. Without SO_REUSEPORT core 0 holds them all.
    let reuseport = config.accept_mode == AcceptMode::Reuseport && rt::reuseport_supported();
    let mut per_core: Vec<Vec<(ListenerKind, std::net::TcpListener)>> = (0..cores).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for (kind, addr) in listeners::configured(&config) {
        let listen_err = |source| StartError::Listen { addr, source };
        let first = rt::Listener::bind_std(addr).map_err(listen_err)?;
        let local = first.local_addr().map_err(listen_err)?;
        per_core[0].push((kind, first));
        if reuseport {
            for listeners in per_core.iter_mut().skip(1) {
                listeners.push((kind, rt::Listener::bind_std(local).map_err(listen_err)?));
            }
        }
        bound.push((kind, local));
    }
    let local_addr = bound[0].1;
    let now = Instant::now();
    let unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let clock = WallClock { anchor: now, anchor_unix_ms: unix_ms };
    let (lock, recovered) = if config.wal_enabled {
        let lock = storage::lock_data_dir(&config.data_dir)?;
        let recovered = storage::recover(&config, &clock, now)?;
        storage::log_recovery(&recovered);
        (Some(lock), Some(recovered))
    } else {
        (None, None)
    };
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let wakeups: Vec<rt::Wakeup> = (0..cores).map(|_| rt::Wakeup::new()).collect();
    let verdicts: Arc<Vec<SegQueue<LoginVerdict>>> = Arc::new((0..cores).map(|_| SegQueue::new()).collect());
    let login_threads = match &access {
        Some(access) if config.password_file.is_some() => {
            let (verdicts, wakeups) = (Arc::clone(&verdicts), wakeups.clone());
            let deliver = move |core: usize, conn, verdict| {
                verdicts[core].push((conn, verdict));
                wakeups[core].ring();
            };
            Some(LoginThreads::start(Arc::clone(access), LOGIN_THREADS, deliver).map_err(StartError::Threads)?)
        }
        _ => None,
    };
    let deliveries_overload = (config.max_queued_messages / 2).max(1);
    let shared = Arc::new(Shared {
        config: Arc::new(config),
        registry: Arc::new(Registry::new()),
        cores,
        rings: (0..cores * cores).map(|_| ArrayQueue::new(RING_CAPACITY)).collect(),
        deliveries_taken: (0..cores * cores).map(|_| CacheLine(AtomicUsize::new(0))).collect(),
        deliveries_overload,
        wakeups,
        login_threads,
        verdicts,
        handoff: (0..if reuseport { 0 } else { cores }).map(|_| ArrayQueue::new(1024)).collect(),
        transports,
        access,
        metrics: Arc::new(Metrics::new(cores)),
        heartbeats: (0..cores).map(|_| AtomicU64::new(0)).collect(),
        wal_failing: (0..cores).map(|_| AtomicBool::new(false)).collect(),
        accept_failed_ms: (0..cores).map(|_| AtomicU64::new(0)).collect(),
        started: now,
        active_conns: AtomicUsize::new(0),
        nonce,
        clock,
        pins: Arc::new(RetentionPins::new(cores)),
        congested: AtomicUsize::new(0),
        overloaded: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        closed_cores: AtomicUsize::new(0),
    });
    let control = Control { shared: Arc::clone(&shared) };
    let mut starts: Vec<CoreStart> = per_core
        .into_iter()
        .map(|listeners| CoreStart { listeners, journal: None, retained: Vec::new(), sessions: Vec::new() })
        .collect();
    if let Some(recovered) = recovered {
        for (index, log) in recovered.logs.into_iter().enumerate() {
            let wakeup = shared.wakeups[index].clone();
            let metrics = Arc::clone(&shared.metrics);
            starts[index].journal = Some(WalJournal::start(log, &shared.config, move |synced| {
                metrics.wal(index).record_sync(synced.sync_time);
                metrics.wal(index).record_durable_latency(synced.oldest_wait);
                wakeup.ring();
            })?);
        }
        for msg in recovered.retained {
            starts[shard_of(&msg.topic, cores)].retained.push(msg);
        }
        for (mut session, gone) in recovered.sessions {
            // Claimed here, before any core runs: a CONNECT that the kernel queued before
            // the cores started must find the restored session, not create a new one.
            let core = shard_of(&session.client_id, cores);
            let claim = shared.registry.claim(&session.client_id, core);
            session.epoch = claim.token;
            session.claim = claim.token;
            starts[core].sessions.push((session, gone));
        }
    }
    if shared.config.metrics_enabled {
        start_metrics(&shared)?;
    }
    let starts: Arc<Vec<std::sync::Mutex<Option<CoreStart>>>> =
        Arc::new(starts.into_iter().map(|s| std::sync::Mutex::new(Some(s))).collect());
    // Read here, before any core thread is pinned (a pinned thread sees only its own CPU).
    let cpus = crate::affinity::allowed_cpus();
    let pin = move |index: usize| {
        let Some(cpu) = crate::affinity::cpu_for_core(&cpus, index) else { return };
        match crate::affinity::pin_current_thread(cpu) {
            Ok(()) => tracing::debug!(core = index, cpu, "core pinned"),
            Err(e) => {
                tracing::warn!(core = index, cpu, error = %e, "could not pin the core to its CPU; it runs unpinned")
            }
        }
    };
    let thread = std::thread::Builder::new()
        .name("promptmq-main".into())
        .spawn(move || {
            rt::run_per_core(cores, pin, move |index| {
                let start = starts[index].lock().ok().and_then(|mut s| s.take());
                run_core(index, Arc::clone(&shared), start)
            })
        })
        .map_err(StartError::Threads)?;
    Ok(Running { local_addr, cores, thread, control, listeners: bound, _lock: lock })
}

/// The runtime for the startup line and the metrics: `io_uring`, or `epoll (io_uring
/// refused: EPERM)` and the like (which driver each core got, and why), or `tokio`. On
/// io_uring it waits until every core has built its ring.
#[cfg(all(target_os = "linux", feature = "uring", not(feature = "tokio")))]
pub fn runtime_description() -> String {
    promptmq_runtime_uring::driver_description()
}

#[cfg(not(all(target_os = "linux", feature = "uring", not(feature = "tokio"))))]
pub fn runtime_description() -> String {
    promptmq_runtime_tokio::RUNTIME_NAME.to_string()
}

/// The `/metrics` and `/health` endpoint, on its own thread.
fn start_metrics(shared: &Arc<Shared>) -> Result<(), StartError> {
    let addr = shared.config.metrics_bind;
    let listener = std::net::TcpListener::bind(addr).map_err(|source| StartError::Listen { addr, source })?;
    let for_info = Arc::clone(shared);
    let info = Arc::new(move || BrokerInfo {
        version: crate::VERSION_STRING.to_string(),
        runtime: runtime_description(),
        uptime_seconds: for_info.started.elapsed().as_secs_f64(),
        max_connections: (for_info.config.max_connections > 0).then_some(for_info.config.max_connections as u64),
    });
    let for_health = Arc::clone(shared);
    let health = Arc::new(move || health(&for_health));
    let path = shared.config.metrics_path.clone();
    crate::metrics::serve(listener, path, Arc::clone(&shared.metrics), info, health)
        .map_err(|source| StartError::Listen { addr, source })?;
    Ok(())
}

/// Healthy while not stopping, every core ticks (so it runs its accept loops and rings),
/// no listener failed to accept in the last [`HEALTH_ACCEPT_MS`] (an accept loop retries
/// every 50 ms while the error lasts), and every log can be written.
fn health(shared: &Shared) -> Result<(), String> {
    if shared.stopping.load(Ordering::Acquire) {
        return Err("stopping".into());
    }
    let now_ms = shared.now_ms();
    for (core, beat) in shared.heartbeats.iter().enumerate() {
        let last = beat.load(Ordering::Acquire);
        if now_ms.saturating_sub(last) > HEALTH_STALL_MS && now_ms > HEALTH_STALL_MS {
            return Err(format!("core {core} has not run for {} ms", now_ms - last));
        }
    }
    for (core, failed) in shared.accept_failed_ms.iter().enumerate() {
        let at = failed.load(Ordering::Acquire);
        if at != 0 && now_ms.saturating_sub(at) < HEALTH_ACCEPT_MS {
            return Err(format!("core {core} cannot accept connections (see the broker log)"));
        }
    }
    for (shard, failing) in shared.wal_failing.iter().enumerate() {
        if failing.load(Ordering::Acquire) {
            return Err(format!("the log of shard {shard} cannot be written (see the broker log)"));
        }
    }
    Ok(())
}

/// An accept failed for lack of descriptors or memory (not because of one connection).
#[cfg(unix)]
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

#[cfg(not(unix))]
fn out_of_resources(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::OutOfMemory
}

/// A failed accept keeps the health check failing for this long (see [`health`]).
const HEALTH_ACCEPT_MS: u64 = 1_000;
/// A core that has not ticked for this long is reported unhealthy.
const HEALTH_STALL_MS: u64 = 5_000;
/// How often a core refreshes the gauges that walk all its sessions.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

struct ConnIo {
    /// Encoded packets waiting for the writer. Unallocated while the connection is idle
    /// (see [`QUEUE_POOL`]).
    queue: RefCell<Vec<Bytes>>,
    signal: LocalSignal,
    closing: Cell<bool>,
    /// The reader saw end of stream or an error.
    reader_done: Cell<bool>,
    /// The writer finished (the socket is closed or about to be).
    writer_done: Cell<bool>,
    /// Set by the writer after each write, for a reader waiting on a full write queue: the
    /// two share a task, which polls the reader again when this is set (`run_connection`).
    wrote: Cell<bool>,
    closer: rt::Closer,
    /// TLS and/or WebSocket between the socket and MQTT (`None`: plain MQTT). Boxed, so
    /// that plain connections pay one pointer for it.
    transport: Option<Box<RefCell<Layer>>>,
    /// Still counted in `Shared::active_conns` (released once, when the connection is
    /// closed, not after its linger: a refused client must not hold a slot).
    counted: Cell<bool>,
    /// The socket's halves while the connection is parked: no task runs for it then (see
    /// [`PARK_SWEEP`]).
    parked: Cell<Option<(rt::ReadHalf, rt::WriteHalf)>>,
    /// Read or written since the last parking sweep.
    active: Cell<bool>,
    /// A sweep found it idle: the reader parks it at its next idle wait, unless it is busy
    /// by then.
    park_requested: Cell<bool>,
    /// The writer is waiting for something to write (its state holds nothing then).
    writer_idle: Cell<bool>,
    /// Nothing has been read yet.
    fresh: Cell<bool>,
}

/// A transport layer and the MQTT bytes it decoded that the core has not taken yet (a
/// partial packet, or what waits out a publish-rate pause).
struct Layer {
    transport: Box<promptmq_transport::Transport>,
    app: BytesMut,
    /// The peer's identity was handed to the core (see `auth.use-identity-as-username`).
    identified: bool,
}

impl ConnIo {
    fn release_slot(&self, shared: &Shared) {
        if self.counted.replace(false) {
            shared.active_conns.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether the connection may leave its task now: asked to by the sweep, nothing to
    /// write, nothing held for the core, not closing.
    fn may_park(&self) -> bool {
        self.park_requested.get()
            && self.writer_idle.get()
            && !self.closing.get()
            && self.queue.borrow().is_empty()
            && self.transport.as_ref().is_none_or(|l| {
                let l = l.borrow();
                l.app.is_empty() && !l.transport.wants_write()
            })
    }

    fn is_parked(&self) -> bool {
        let halves = self.parked.take();
        let parked = halves.is_some();
        self.parked.set(halves);
        parked
    }

    /// Notes traffic: the connection is not idle.
    fn touch(&self) {
        self.active.set(true);
        self.park_requested.set(false);
    }
}

/// How often a core looks for idle connections to park. A connection neither read nor
/// written for a whole interval leaves its task: its socket waits in the core's
/// [`rt::Parker`] (an epoll set), and a task is started again when it becomes readable or
/// the core has something to write to it. An idle connection's task, with its pending
/// `POLL_ADD`, is about 600 of the 1,900 bytes an idle connection cost; parking and
/// unparking are one `epoll_ctl` each, which is why only connections idle for a while are
/// parked. Only on the io_uring runtime (and its epoll fallback); tokio keeps every
/// connection on its task.
const PARK_SWEEP: Duration = Duration::from_millis(500);

struct Driver {
    id: usize,
    shared: Arc<Shared>,
    core: RefCell<Core>,
    conns: RefCell<HashMap<ConnId, Rc<ConnIo>>>,
    /// Empty write-queue vectors (see [`QUEUE_POOL`]).
    queue_pool: RefCell<Vec<Vec<Bytes>>>,
    overflow: RefCell<Vec<VecDeque<CoreMsg>>>,
    overflow_len: Cell<usize>,
    actions: RefCell<Vec<Action>>,
    wake: RefCell<Vec<bool>>,
    /// Per peer, the QoS 1/2 deliveries this core has sent it (see
    /// [`Shared::deliveries_taken`]).
    deliveries_sent: Vec<Cell<usize>>,
    /// Whether this core counts itself in `Shared::congested`.
    congested: Cell<bool>,
    /// Whether this core counts itself in `Shared::overloaded` (see
    /// [`crate::core::OVERLOAD_BACKLOG`]).
    overloaded: Cell<bool>,
    /// This core has begun stopping (see [`shut_down`]).
    stopping: Cell<bool>,
    /// Rung when this core has stopped; `run_core` returns then.
    stopped: LocalSignal,
    /// One per accept loop of this core, rung when the core begins stopping.
    accept_stops: RefCell<Vec<Rc<LocalSignal>>>,
    /// Where idle connections wait without a task (`None` on tokio).
    parker: Option<rt::Parker>,
    /// Parked connections the core has something for: unparked by [`unpark_loop`].
    to_unpark: RefCell<Vec<ConnId>>,
    unpark_signal: LocalSignal,
    /// Starts [`overload_loop`]: this core became overloaded, or holds acknowledgements.
    overload_signal: LocalSignal,
    parked_count: Cell<u64>,
    /// When [`Driver::update_overload_soon`] last measured (at most once a millisecond).
    overload_checked: Cell<Instant>,
}

async fn run_core(index: usize, shared: Arc<Shared>, start: Option<CoreStart>) {
    let config = Arc::clone(&shared.config);
    let mut core =
        Core::new(index, shared.cores, Arc::clone(&config), Arc::clone(&shared.registry), shared.nonce, shared.clock);
    let CoreStart { listeners, journal, retained, sessions } =
        start.unwrap_or(CoreStart { listeners: Vec::new(), journal: None, retained: Vec::new(), sessions: Vec::new() });
    if let Some(access) = &shared.access {
        core.set_access(Arc::clone(access));
    }
    if let Some(journal) = journal {
        core.set_journal(Box::new(journal), config.wal_sync_mode == WalSyncMode::Immediate, Arc::clone(&shared.pins));
    }
    for msg in retained {
        core.restore_retained(msg);
    }
    for (session, gone) in sessions {
        core.restore_session(session, gone);
    }
    let driver = Rc::new(Driver {
        id: index,
        core: RefCell::new(core),
        conns: RefCell::new(HashMap::new()),
        queue_pool: RefCell::new(Vec::new()),
        overflow: RefCell::new((0..shared.cores).map(|_| VecDeque::new()).collect()),
        overflow_len: Cell::new(0),
        actions: RefCell::new(Vec::new()),
        wake: RefCell::new(vec![false; shared.cores]),
        deliveries_sent: (0..shared.cores).map(|_| Cell::new(0)).collect(),
        congested: Cell::new(false),
        overloaded: Cell::new(false),
        stopping: Cell::new(false),
        stopped: LocalSignal::default(),
        accept_stops: RefCell::new(Vec::new()),
        parker: rt::Parker::new().ok(),
        to_unpark: RefCell::new(Vec::new()),
        unpark_signal: LocalSignal::default(),
        overload_signal: LocalSignal::default(),
        parked_count: Cell::new(0),
        overload_checked: Cell::new(Instant::now()),
        shared,
    });
    rt::spawn_local(drain_inbox(Rc::clone(&driver)));
    rt::spawn_local(tick(Rc::clone(&driver)));
    rt::spawn_local(overload_loop(Rc::clone(&driver)));
    if driver.parker.is_some() {
        rt::spawn_local(unpark_loop(Rc::clone(&driver)));
    }
    // Without listeners of its own (no SO_REUSEPORT) a core serves handed-over connections.
    for (kind, listener) in listeners {
        match rt::Listener::from_std(listener) {
            Ok(listener) => {
                let stop = Rc::new(LocalSignal::default());
                driver.accept_stops.borrow_mut().push(Rc::clone(&stop));
                rt::spawn_local(accept_loop(Rc::clone(&driver), listener, kind, stop));
            }
            Err(e) => tracing::error!(core = index, listener = kind.name(), error = %e, "listener setup failed"),
        }
    }
    // Returning ends the core's runtime, and with it every task still on it.
    driver.stopped.wait().await;
}

/// Stops this core: no more accepting or reading; every connection closed (see
/// `Core::on_shutdown`); the rings drained until every core has closed its connections and
/// nothing more arrives, so that wills and session records reach their shards; connections
/// flushed; then the log's last records written and synced. Bounded by [`SHUTDOWN_DRAIN`]
/// and [`SHUTDOWN_JOURNAL`].
async fn shut_down(driver: Rc<Driver>) {
    let shared = Arc::clone(&driver.shared);
    // Stop accepting first: the listeners close, and new connections are refused.
    for stop in driver.accept_stops.borrow_mut().drain(..) {
        stop.signal();
    }
    driver.core.borrow_mut().on_shutdown(Instant::now());
    driver.dispatch();
    shared.closed_cores.fetch_add(1, Ordering::AcqRel);
    let deadline = Instant::now() + SHUTDOWN_DRAIN;
    let mut quiet_rounds = 0;
    while quiet_rounds < 5 && Instant::now() < deadline {
        rt::sleep(Duration::from_millis(10)).await;
        let got = driver.drain_rings();
        driver.retry_overflow();
        let all_closed = shared.closed_cores.load(Ordering::Acquire) == shared.cores;
        let idle = got == 0 && driver.overflow_len.get() == 0 && driver.conns.borrow().is_empty();
        quiet_rounds = if all_closed && idle { quiet_rounds + 1 } else { 0 };
    }
    if quiet_rounds < 5 {
        tracing::warn!(
            core = driver.id,
            "stopping without a quiet moment: some connections or messages were cut short"
        );
    }
    let lost = driver.core.borrow_mut().close_journal(SHUTDOWN_JOURNAL);
    if lost > 0 {
        tracing::error!(core = driver.id, records = lost, "the log did not take its last records before the deadline");
    }
    driver.stopped.signal();
}

/// Accepts connections until `stop` is signalled, then closes the listener (returning drops
/// it), so that new connections are refused by the kernel instead of accepted and closed.
async fn accept_loop(driver: Rc<Driver>, listener: rt::Listener, kind: ListenerKind, stop: Rc<LocalSignal>) {
    let shared = Arc::clone(&driver.shared);
    let mut next = 0usize;
    loop {
        let accepted = {
            let mut accept = std::pin::pin!(listener.accept());
            let mut stopped = std::pin::pin!(stop.wait());
            std::future::poll_fn(|cx| {
                if stopped.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(None);
                }
                accept.as_mut().poll(cx).map(Some)
            })
            .await
        };
        let Some(accepted) = accepted else { return };
        match accepted {
            // Accepted just as the stop began: closed at once (dropped).
            Ok(_) if driver.stopping.get() => return,
            Ok((stream, _peer)) => {
                if shared.handoff.is_empty() {
                    serve(&driver, stream, kind);
                    continue;
                }
                // Hand-off mode: spread connections over the cores round-robin.
                next = (next + 1) % shared.cores;
                if next == driver.id {
                    serve(&driver, stream, kind);
                    continue;
                }
                match stream.into_std().map(|s| shared.handoff[next].push((s, kind))) {
                    Ok(Ok(())) => shared.wakeups[next].ring(),
                    Ok(Err(_full)) => tracing::warn!(core = next, "hand-off queue full, connection dropped"),
                    Err(e) => tracing::warn!(error = %e, "could not hand a connection over"),
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(core = driver.id, error = %e, "accept failed");
                // Only running out of something fails the health check: an error of one
                // connection (ECONNABORTED, a firewall's EPERM) says nothing about the next.
                if out_of_resources(&e) {
                    shared.accept_failed_ms[driver.id].store(shared.now_ms().max(1), Ordering::Release);
                }
                rt::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Starts the task of a new connection on this core.
fn serve(driver: &Rc<Driver>, stream: rt::Stream, kind: ListenerKind) {
    let max = driver.shared.config.max_connections;
    let active = driver.shared.active_conns.fetch_add(1, Ordering::AcqRel) + 1;
    if max > 0 && active > max + LIMIT_GRACE {
        // Far over the limit: not even a CONNACK (the socket is closed on drop).
        driver.shared.active_conns.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let id = driver.core.borrow_mut().on_accept(Instant::now());
    if max > 0 && active > max {
        driver.core.borrow_mut().refuse_at_limit(id);
    }
    tracing::debug!(core = driver.id, conn = id, "connection accepted");
    let (r, w, closer) = match stream.into_split() {
        Ok(parts) => parts,
        Err(e) => {
            tracing::warn!(core = driver.id, error = %e, "could not set up a connection");
            driver.shared.active_conns.fetch_sub(1, Ordering::AcqRel);
            driver.core.borrow_mut().on_closed(id, Instant::now());
            driver.dispatch();
            return;
        }
    };
    let io = Rc::new(ConnIo {
        queue: RefCell::new(Vec::new()),
        signal: LocalSignal::default(),
        closing: Cell::new(false),
        reader_done: Cell::new(false),
        writer_done: Cell::new(false),
        wrote: Cell::new(false),
        closer,
        transport: driver
            .shared
            .transports
            .for_kind(kind)
            .map(|transport| Box::new(RefCell::new(Layer { transport, app: BytesMut::new(), identified: false }))),
        counted: Cell::new(true),
        parked: Cell::new(None),
        active: Cell::new(true),
        park_requested: Cell::new(false),
        writer_idle: Cell::new(false),
        fresh: Cell::new(true),
    });
    driver.conns.borrow_mut().insert(id, Rc::clone(&io));
    rt::spawn_local(run_connection(Rc::clone(driver), id, r, w, io));
}

/// A connection's one task: its reader and its writer, polled together.
///
/// One task, not two, because memory per idle connection is dominated by what each task
/// holds while it waits; the two halves share the task, its header and its references to the
/// driver and the connection. Each wake polls both halves (the one that was not woken returns
/// `Pending` at once, a check of a flag or of its pending operation), the writer second, so
/// that what a read produced (a CONNACK, a PUBACK) is written in the same turn.
///
/// Not an `async fn` (nor are the two halves): an `async fn` keeps each argument twice in its
/// state (the argument and the local it is moved into), and this state lives as long as the
/// connection. For the same reason the halves borrow the socket's halves instead of taking
/// them: what the task captured keeps its place in the state even after being moved out.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`, see above
fn run_connection(
    driver: Rc<Driver>,
    id: ConnId,
    mut r: rt::ReadHalf,
    mut w: rt::WriteHalf,
    io: Rc<ConnIo>,
) -> impl Future<Output = ()> {
    async move {
        loop {
            let park = {
                // A half that has finished is dropped at once (the writer's buffers).
                let mut reader = std::pin::pin!(Some(read_loop(&driver, id, &mut r, &io)));
                let mut writer = std::pin::pin!(Some(write_loop(&driver, id, &mut w, &io)));
                std::future::poll_fn(|cx| {
                    if let Some(half) = reader.as_mut().as_pin_mut() {
                        if let std::task::Poll::Ready(park) = half.poll(cx) {
                            if park {
                                // The writer waits with nothing to write (`may_park`): it
                                // is dropped with the reader.
                                return std::task::Poll::Ready(true);
                            }
                            reader.set(None);
                        }
                    }
                    if let Some(half) = writer.as_mut().as_pin_mut() {
                        if half.poll(cx).is_ready() {
                            writer.set(None);
                        }
                    }
                    // The writer may just have made room in the write queue, or become idle
                    // (its last write, a CONNACK, done): a reader waiting for either sees it
                    // only when polled again.
                    if io.wrote.replace(false) || io.may_park() {
                        if let Some(half) = reader.as_mut().as_pin_mut() {
                            match half.poll(cx) {
                                std::task::Poll::Ready(true) => return std::task::Poll::Ready(true),
                                std::task::Poll::Ready(false) => reader.set(None),
                                std::task::Poll::Pending => {}
                            }
                        }
                    }
                    if reader.is_none() && writer.is_none() {
                        std::task::Poll::Ready(false)
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await
            };
            if !park {
                return;
            }
            let Some(parker) = &driver.parker else { return };
            io.park_requested.set(false);
            match parker.park(&w, id) {
                Ok(()) => {
                    // Nothing may keep this task alive once it ends: a waker is a reference
                    // to it.
                    io.signal.forget_waiter();
                    io.parked.set(Some((r, w)));
                    driver.parked_count.set(driver.parked_count.get() + 1);
                    return;
                }
                Err(e) => tracing::debug!(core = driver.id, conn = id, error = %e, "could not park a connection"),
            }
        }
    }
}

/// Starts the tasks of parked connections that became readable or that the core has
/// something for (see [`PARK_SWEEP`]).
async fn unpark_loop(driver: Rc<Driver>) {
    let Some(parker) = &driver.parker else { return };
    let mut ready = Vec::new();
    loop {
        {
            let mut readable = std::pin::pin!(parker.wait());
            let mut asked = std::pin::pin!(driver.unpark_signal.wait());
            std::future::poll_fn(|cx| {
                if asked.as_mut().poll(cx).is_ready() || readable.as_mut().poll(cx).is_ready() {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
            .await;
        }
        if let Err(e) = parker.take_ready(&mut ready) {
            tracing::warn!(core = driver.id, error = %e, "parked connections could not be polled");
        }
        ready.append(&mut driver.to_unpark.borrow_mut());
        for id in ready.drain(..) {
            driver.unpark(id);
        }
    }
}

/// Reads until the connection ends (false) or is to be parked (true, see [`PARK_SWEEP`]).
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`, see `run_connection`
fn read_loop<'a>(
    driver: &'a Driver,
    id: ConnId,
    r: &'a mut rt::ReadHalf,
    io: &'a ConnIo,
) -> impl Future<Output = bool> + 'a {
    async move {
        // Starts empty and is dropped whenever fully consumed, so an idle connection holds no
        // read buffer (the runtime allocates one when data arrives, where it can).
        let mut buf = BytesMut::new();
        loop {
            if buf.is_empty() && driver.parker.is_some() {
                // Idle: wait for input here, where the connection can also be parked.
                let mut ready = std::pin::pin!(r.ready());
                let park = std::future::poll_fn(|cx| {
                    if io.may_park() {
                        return std::task::Poll::Ready(true);
                    }
                    // An error shows again in the read below.
                    ready.as_mut().poll(cx).map(|_| false)
                })
                .await;
                if park {
                    return true;
                }
            }
            let (res, b) = r.read(buf).await;
            buf = b;
            let first = io.fresh.replace(false);
            if first {
                // A connection's first read (its CONNECT) is followed by silence often enough
                // to park it once that is answered, unless more comes first: not a sweep
                // later, or a burst of new idle connections would hold a task each meanwhile.
                io.active.set(false);
                io.park_requested.set(true);
            } else {
                io.touch();
            }
            // Taken around the synchronous handling only: across an await below, other
            // connections of this core publish too.
            let before = driver.core.borrow().publishes_received();
            match res {
                Ok(0) | Err(_) => {
                    // A client may send CONNECT, more packets and close at once: what it sent
                    // behind a CONNECT whose password is being checked is handled once the
                    // verdict is in, as it would have been with the check done here.
                    while driver.core.borrow().awaiting_login(id) && !io.closing.get() {
                        rt::sleep(crate::core::LOGIN_POLL).await;
                    }
                    if res.is_ok() && !io.closing.get() {
                        feed_held(driver, id, io, &mut buf);
                    }
                    driver.core.borrow_mut().on_closed(id, Instant::now());
                    driver.dispatch();
                    break;
                }
                // Closed by the broker: discard what the client still sends while lingering.
                Ok(_) if io.closing.get() => buf.clear(),
                Ok(_) => match &io.transport {
                    None => {
                        driver.core.borrow_mut().on_bytes(id, &mut buf, Instant::now());
                        driver.dispatch();
                    }
                    Some(layer) => {
                        let (res, ended, wants_write) = {
                            let mut layer = layer.borrow_mut();
                            let Layer { transport, app, identified } = &mut *layer;
                            let res = transport.receive(&mut buf, app);
                            #[cfg(feature = "tls")]
                            if !app.is_empty() && driver.shared.config.use_identity_as_username && !*identified {
                                // The handshake is done (MQTT bytes follow it): tell the core
                                // who the certificate says this is, before the CONNECT.
                                *identified = true;
                                if let Some(name) = transport.peer_common_name() {
                                    driver.core.borrow_mut().set_peer_identity(id, Bytes::from(name));
                                }
                            }
                            #[cfg(not(feature = "tls"))]
                            let _ = identified;
                            if !app.is_empty() {
                                driver.core.borrow_mut().on_bytes(id, app, Instant::now());
                            }
                            if app.is_empty() {
                                *app = BytesMut::new();
                            }
                            (res, transport.is_closed(), transport.wants_write())
                        };
                        if let Err(e) = &res {
                            tracing::debug!(core = driver.id, conn = id, error = %e, "transport error");
                        }
                        if res.is_err() || ended {
                            // The writer sends the layer's last words (alert, close frame).
                            driver.core.borrow_mut().on_closed(id, Instant::now());
                        }
                        driver.dispatch();
                        if wants_write {
                            io.signal.signal();
                        }
                    }
                },
            }
            let after = driver.core.borrow().publishes_received();
            let published = after != before;
            if first && driver.core.borrow().awaiting_login(id) {
                // Its CONNACK waits for a password check off the core: parked now, it would be
                // woken by that CONNACK at once. The sweep parks it later if it stays idle.
                io.park_requested.set(false);
            }
            // Even with no room left, an emptied buffer may still share its allocation with
            // the packets split off it: replacing it lets that go with them.
            if buf.is_empty() {
                buf = BytesMut::new();
            }
            // Over its publish rate: what was read waits, and nothing more is read until it
            // has been handed over (TCP flow control then slows the client down).
            loop {
                let pause = driver.core.borrow_mut().read_pause(id, Instant::now());
                let Some(pause) = pause else { break };
                rt::sleep(pause).await;
                if io.closing.get() || !feed_held(driver, id, io, &mut buf) {
                    break;
                }
                driver.dispatch();
            }
            // A client that sends but does not read (PINGREQs, QoS 1 publishes whose PUBACKs
            // pile up) is not read from while its write queue is over the limit.
            while !io.closing.get() && driver.core.borrow().pending_write(id) > driver.shared.config.max_write_buffer {
                // Until the writer, which shares this task, has written something: the task is
                // woken by the write, and `run_connection` polls the reader again after it.
                let mut waited = false;
                std::future::poll_fn(|_| {
                    if std::mem::replace(&mut waited, true) {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await;
            }
            // Only publishers wait, in both cases: they bring the new work, and subscribers'
            // acknowledgements are what drains queues (a subscriber not read while its
            // window is full would stall, and its queue overflow).
            while published && driver.shared.congested.load(Ordering::Acquire) > 0 && !io.closing.get() {
                rt::sleep(Duration::from_millis(1)).await;
                driver.retry_overflow();
                driver.update_congestion();
            }
            if published {
                let until = Instant::now() + OVERLOAD_PAUSE;
                while driver.shared.overloaded.load(Ordering::Acquire) > 0
                    && !io.closing.get()
                    && Instant::now() < until
                {
                    rt::sleep(Duration::from_millis(1)).await;
                    // Backlogs drain in milliseconds once publishers wait: look again now,
                    // not at the next tick (at most once a millisecond per core).
                    driver.update_overload_soon();
                }
            }
        }
        io.reader_done.set(true);
        false
    }
}

/// Hands the core what was read and is still held (a partial packet, or what waits out a
/// publish-rate pause or a login check): the read buffer, or a transport's decoded bytes.
/// False when nothing is held.
fn feed_held(driver: &Driver, id: ConnId, io: &ConnIo, buf: &mut BytesMut) -> bool {
    let mut layer = io.transport.as_ref().map(|l| l.borrow_mut());
    let held = match &mut layer {
        Some(layer) => &mut layer.app,
        None => buf,
    };
    if held.is_empty() {
        return false;
    }
    driver.core.borrow_mut().on_bytes(id, held, Instant::now());
    true
}

#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`, see `run_connection`
fn write_loop<'a>(
    driver: &'a Driver,
    id: ConnId,
    w: &'a mut rt::WriteHalf,
    io: &'a ConnIo,
) -> impl Future<Output = ()> + 'a {
    async move {
        // The vector the last write emptied, to be the queue during the next write.
        let mut spare = Vec::new();
        loop {
            let layer_pending = io.transport.as_ref().is_some_and(|l| l.borrow().transport.wants_write());
            if io.queue.borrow().is_empty() && !layer_pending {
                // Idle until signalled: the vectors go back to the core's pool.
                driver.recycle_queue_vec(std::mem::take(&mut spare));
                let queue = std::mem::take(&mut *io.queue.borrow_mut());
                driver.recycle_queue_vec(queue);
                if io.closing.get() {
                    break;
                }
                io.writer_idle.set(true);
                io.signal.wait().await;
                io.writer_idle.set(false);
                continue;
            }
            // What is queued goes out; the spare takes its place.
            let mut chunks = std::mem::replace(&mut *io.queue.borrow_mut(), std::mem::take(&mut spare));
            // `n` counts MQTT bytes (what the core accounts), not what a layer adds.
            let n: usize = chunks.iter().map(Bytes::len).sum();
            if let Some(layer) = &io.transport {
                let mut wire = Vec::new();
                if layer.borrow_mut().transport.send(&mut chunks, &mut wire).is_err() {
                    tracing::debug!(core = driver.id, conn = id, "transport refused to send");
                }
                chunks = wire;
            }
            // Boxed: a write in flight is a few hundred bytes of state (the operation, the
            // chunks' iovecs) that would otherwise stay in the connection's task while it is
            // idle; one allocation per write is cheap next to the write itself.
            let (res, emptied) = Box::pin(w.write_all(chunks)).await;
            spare = emptied;
            // Busy, as far as the sweep is concerned; a park the reader asked for after its
            // first read stands (the CONNACK it waited for has just gone out).
            io.active.set(true);
            driver.core.borrow_mut().on_written(id, n);
            io.wrote.set(true);
            if res.is_err() {
                driver.core.borrow_mut().on_closed(id, Instant::now());
                driver.dispatch();
                break;
            }
        }
        if let Some(layer) = &io.transport {
            // WebSocket close frame, TLS close_notify.
            let mut wire = Vec::new();
            if layer.borrow_mut().transport.close(&mut wire).is_ok() && !wire.is_empty() {
                let _ = Box::pin(w.write_all(wire)).await;
            }
        }
        if !io.reader_done.get() && w.shutdown_write().is_ok() {
            // Linger: let the client read our last packets and close its side first.
            let deadline = Instant::now() + LINGER;
            while !io.reader_done.get() && Instant::now() < deadline {
                rt::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = w.close();
        io.writer_done.set(true);
        io.wrote.set(true);
        driver.conns.borrow_mut().remove(&id);
        io.release_slot(&driver.shared);
    }
}

async fn drain_inbox(driver: Rc<Driver>) {
    let shared = Arc::clone(&driver.shared);
    let me = driver.id;
    loop {
        shared.wakeups[me].wait().await;
        if shared.stopping.load(Ordering::Acquire) && !driver.stopping.replace(true) {
            rt::spawn_local(shut_down(Rc::clone(&driver)));
        }
        // The WAL writer rings this wakeup too, when records became durable; so do the
        // login threads.
        driver.core.borrow_mut().on_durable(Instant::now());
        while let Some((conn, verdict)) = shared.verdicts[me].pop() {
            driver.core.borrow_mut().on_login(conn, verdict, Instant::now());
        }
        if let Some(handoff) = shared.handoff.get(me) {
            while let Some((socket, kind)) = handoff.pop() {
                match rt::Stream::from_std(socket) {
                    Ok(stream) => serve(&driver, stream, kind),
                    Err(e) => tracing::warn!(core = me, error = %e, "could not adopt a handed-over connection"),
                }
            }
        }
        loop {
            let got = driver.drain_rings();
            driver.retry_overflow();
            driver.update_congestion();
            if got == 0 {
                break;
            }
            rt::yield_now().await;
        }
    }
}

/// While this core is overloaded or holds inbound acknowledgements: looks again every
/// millisecond whether its overload is over (publishers on other cores wait for it too, and
/// must not wait for the next tick) and sends the acknowledgements once no core is
/// overloaded, or once they waited [`OVERLOAD_PAUSE`].
async fn overload_loop(driver: Rc<Driver>) {
    loop {
        driver.overload_signal.wait().await;
        while driver.overloaded.get() || driver.core.borrow().held_acks() > 0 {
            rt::sleep(Duration::from_millis(1)).await;
            driver.update_overload_soon();
            if let Some(before) = Instant::now().checked_sub(OVERLOAD_PAUSE) {
                driver.core.borrow_mut().release_held_acks(Some(before));
            }
            // (`dispatch` also ends the hold once no core is overloaded.)
            driver.dispatch();
        }
    }
}

async fn tick(driver: Rc<Driver>) {
    let mut next_gauges = Instant::now();
    let mut next_sys = Instant::now() + Duration::from_secs(1);
    let mut next_sweep = Instant::now() + PARK_SWEEP;
    loop {
        rt::sleep(TICK).await;
        let now = Instant::now();
        if driver.parker.is_some() && now >= next_sweep {
            next_sweep = now + PARK_SWEEP;
            driver.sweep_idle();
        }
        driver.core.borrow_mut().on_tick(now);
        driver.publish_metrics(now >= next_gauges);
        if now >= next_gauges {
            next_gauges = now + GAUGE_INTERVAL;
        }
        let sys_interval = driver.shared.config.sys_interval;
        if driver.id == 0 && sys_interval > 0 && now >= next_sys {
            driver.publish_sys(now);
            next_sys = now + Duration::from_secs(sys_interval);
        }
        driver.dispatch();
        driver.retry_overflow();
        driver.update_congestion();
        driver.update_overload();
    }
}

impl Driver {
    /// An empty vector for a connection's write queue, from this core's pool when it has one.
    fn queue_vec(&self) -> Vec<Bytes> {
        self.queue_pool.borrow_mut().pop().unwrap_or_default()
    }

    /// Takes back an empty write-queue vector (see [`QUEUE_POOL`]).
    fn recycle_queue_vec(&self, v: Vec<Bytes>) {
        if v.capacity() == 0 || v.capacity() > QUEUE_POOL_VEC_MAX || !v.is_empty() {
            return;
        }
        let mut pool = self.queue_pool.borrow_mut();
        if pool.len() < QUEUE_POOL {
            pool.push(v);
        }
    }

    /// Copies this core's counters into the shared metrics (it is their only writer), and
    /// with `gauges` the sizes that take a walk over the sessions.
    fn publish_metrics(&self, gauges: bool) {
        let shared = &self.shared;
        let m = shared.metrics.core(self.id);
        let core = self.core.borrow();
        let s = &core.stats;
        m.connections_accepted.set(s.connections_accepted);
        m.connections_closed.set(s.connections_accepted.saturating_sub(core.connection_count() as u64));
        m.auth_failures.set(s.auth_failures);
        m.connections_refused_limit.set(s.refused_at_limit);
        m.publish_rate_limited.set(s.rate_limited);
        m.acl_denied_publish.set(s.acl_denied_publish);
        m.acl_denied_subscribe.set(s.acl_denied_subscribe);
        m.acl_denied_read.set(s.acl_denied_read);
        for qos in 0..3 {
            m.messages_received[qos].set(s.messages_in_by_qos[qos]);
            m.messages_sent[qos].set(s.messages_out_by_qos[qos]);
        }
        m.bytes_received.set(s.bytes_in);
        m.bytes_sent.set(s.bytes_out);
        m.dropped_queue_full.set(s.dropped_queue_full);
        m.dropped_offline_qos0.set(s.dropped_offline_qos0);
        m.dropped_slow_qos0.set(s.dropped_slow_qos0);
        m.dropped_too_large.set(s.dropped_too_large);
        m.dropped_expired.set(s.dropped_expired);
        m.dropped_stale_session.set(s.dropped_stale_session);
        m.journal_rejected.set(s.journal_rejected);
        m.journal_failed_acks.set(s.journal_failed_acks);
        m.ring_overflows.set(s.ring_overflows);
        m.overloads.set(s.overloads);
        m.parked_connections.set(self.parked_count.get());
        if gauges {
            m.set_gauges(&core.gauges());
        }
        shared.wal_failing[self.id].store(core.journal_failing(), Ordering::Release);
        shared.heartbeats[self.id].store(shared.now_ms(), Ordering::Release);
    }

    /// The `$SYS/broker/...` topics, with mosquitto's names, summed over every core.
    fn publish_sys(&self, now: Instant) {
        let m = &self.shared.metrics;
        let received: u64 = m.cores().iter().map(|c| c.messages_received_total()).sum();
        let sent: u64 = m.cores().iter().map(|c| c.messages_sent_total()).sum();
        let figures = [
            ("$SYS/broker/version", format!("promptmq {}", crate::VERSION_STRING)),
            ("$SYS/broker/uptime", format!("{} seconds", self.shared.started.elapsed().as_secs())),
            ("$SYS/broker/clients/connected", m.sum_gauge(|c| &c.connections).to_string()),
            ("$SYS/broker/clients/total", m.sum_gauge(|c| &c.sessions).to_string()),
            ("$SYS/broker/messages/received", received.to_string()),
            ("$SYS/broker/messages/sent", sent.to_string()),
            ("$SYS/broker/bytes/received", m.sum_counter(|c| &c.bytes_received).to_string()),
            ("$SYS/broker/bytes/sent", m.sum_counter(|c| &c.bytes_sent).to_string()),
            ("$SYS/broker/subscriptions/count", m.sum_gauge(|c| &c.subscriptions).to_string()),
            ("$SYS/broker/retained messages/count", m.sum_gauge(|c| &c.retained_messages).to_string()),
            ("$SYS/broker/store/messages/count", m.sum_gauge(|c| &c.queued_messages).to_string()),
        ];
        let mut core = self.core.borrow_mut();
        for (topic, value) in figures {
            core.publish_system(topic, value, now);
        }
    }

    /// Takes up to a batch from every ring into this core and carries out the result;
    /// returns how many messages it took.
    fn drain_rings(&self) -> usize {
        let shared = &self.shared;
        let mut got = 0;
        for from in (0..shared.cores).filter(|&c| c != self.id) {
            let ring = shared.ring(from, self.id);
            let (mut n, mut deliveries) = (0, 0);
            while n < DRAIN_BATCH {
                let Some(msg) = ring.pop() else { break };
                deliveries += usize::from(acknowledged_delivery(&msg));
                self.core.borrow_mut().on_message(msg, Instant::now());
                n += 1;
            }
            if deliveries > 0 {
                shared.deliveries_taken(from, self.id).fetch_add(deliveries, Ordering::Relaxed);
            }
            if n == DRAIN_BATCH {
                // The sender may be holding messages in overflow: let it retry.
                shared.wakeups[from].ring();
            }
            got += n;
        }
        self.dispatch();
        got
    }

    /// Carries out the actions the core produced.
    fn dispatch(&self) {
        // Inbound acknowledgements wait while any core is overloaded (see
        // `Core::set_hold_acks`); `overload_loop` sends those held too long, and runs while
        // this core holds some (this core's own overload starts it in `set_overloaded`).
        let overloaded = self.shared.overloaded.load(Ordering::Acquire) > 0;
        {
            let mut core = self.core.borrow_mut();
            if overloaded != core.holding_acks() {
                core.set_hold_acks(overloaded);
            }
            if core.held_acks() > 0 {
                self.overload_signal.signal();
            }
        }
        let mut actions = std::mem::take(&mut *self.actions.borrow_mut());
        self.core.borrow_mut().take_actions(&mut actions);
        if actions.is_empty() {
            *self.actions.borrow_mut() = actions;
            return;
        }
        {
            let conns = self.conns.borrow();
            for action in actions.drain(..) {
                match action {
                    Action::Write(id, bytes) => {
                        if let Some(io) = conns.get(&id) {
                            let mut queue = io.queue.borrow_mut();
                            if queue.capacity() == 0 {
                                *queue = self.queue_vec();
                            }
                            queue.push(bytes);
                            drop(queue);
                            io.signal.signal();
                            self.wake_parked(id, io);
                        }
                    }
                    Action::Close(id) => {
                        if let Some(io) = conns.get(&id) {
                            if !io.closing.replace(true) {
                                io.release_slot(&self.shared);
                                // A writer blocked on a peer that stopped reading would never
                                // see the close: end the socket after the linger time.
                                let io = Rc::clone(io);
                                rt::spawn_local(async move {
                                    rt::sleep(LINGER + Duration::from_secs(1)).await;
                                    if !io.writer_done.get() {
                                        io.closer.close();
                                    }
                                });
                            }
                            io.signal.signal();
                            self.wake_parked(id, io);
                        }
                    }
                    Action::Send(core, msg) => self.push(core, msg),
                    Action::Overloaded => self.set_overloaded(),
                    Action::CheckLogin(check) => {
                        let conn = check.conn;
                        let submitted = self.shared.login_threads.as_ref().is_some_and(|t| t.submit(self.id, check));
                        if !submitted {
                            // Too many checks waiting (or no threads): refuse rather than
                            // leave the client waiting.
                            self.shared.verdicts[self.id].push((conn, Err(crate::codec::reason::SERVER_UNAVAILABLE)));
                            self.shared.wakeups[self.id].ring();
                        }
                    }
                }
            }
        }
        *self.actions.borrow_mut() = actions;
        self.ring_wakeups();
        self.update_congestion();
    }

    /// A parked connection the core has something for gets its task back (from
    /// [`unpark_loop`], which can start tasks).
    fn wake_parked(&self, id: ConnId, io: &ConnIo) {
        if io.is_parked() {
            self.to_unpark.borrow_mut().push(id);
            self.unpark_signal.signal();
        }
    }

    /// Starts the task of a parked connection again.
    fn unpark(self: &Rc<Self>, id: ConnId) {
        let Some(io) = self.conns.borrow().get(&id).cloned() else { return };
        let Some((mut r, w)) = io.parked.take() else { return };
        r.resume_after_idle();
        self.parked_count.set(self.parked_count.get().saturating_sub(1));
        if let Some(parker) = &self.parker {
            parker.unpark(&w);
        }
        io.touch();
        rt::spawn_local(run_connection(Rc::clone(self), id, r, w, io));
    }

    /// Asks the connections that were neither read nor written since the last sweep to park
    /// (see [`PARK_SWEEP`]); their tasks are woken so that the reader sees the request.
    fn sweep_idle(&self) {
        for io in self.conns.borrow().values() {
            if io.closing.get() || io.is_parked() || io.active.replace(false) {
                continue;
            }
            if !io.park_requested.replace(true) {
                io.signal.signal();
            }
        }
    }

    fn push(&self, to: usize, msg: CoreMsg) {
        self.wake.borrow_mut()[to] = true;
        if acknowledged_delivery(&msg) {
            let sent = &self.deliveries_sent[to];
            sent.set(sent.get().wrapping_add(1));
            if self.deliveries_in_transit(to) > self.shared.deliveries_overload {
                self.set_overloaded();
            }
        }
        let mut overflow = self.overflow.borrow_mut();
        // Keep per-pair FIFO order: once something waits in overflow, everything after it
        // waits too.
        if !overflow[to].is_empty() {
            overflow[to].push_back(msg);
            self.overflow_len.set(self.overflow_len.get() + 1);
            return;
        }
        if let Err(msg) = self.shared.ring(self.id, to).push(msg) {
            overflow[to].push_back(msg);
            self.overflow_len.set(self.overflow_len.get() + 1);
            self.core.borrow_mut().stats.ring_overflows += 1;
        }
    }

    /// QoS 1/2 deliveries sent to peer `to` that it has not taken yet.
    fn deliveries_in_transit(&self, to: usize) -> usize {
        let taken = self.shared.deliveries_taken(self.id, to).load(Ordering::Relaxed);
        self.deliveries_sent[to].get().wrapping_sub(taken)
    }

    /// The part of the overload level that peers have not taken yet (see
    /// [`Shared::deliveries_taken`]).
    fn in_transit_level(&self) -> f64 {
        let waiting = (0..self.shared.cores)
            .filter(|&to| to != self.id)
            .map(|to| self.deliveries_in_transit(to))
            .max()
            .unwrap_or(0);
        waiting as f64 / self.shared.deliveries_overload as f64
    }

    /// Sets or clears this core's congestion mark (see [`CONGESTED_OVERFLOW`]).
    fn update_congestion(&self) {
        let shared = &self.shared;
        let inbound =
            (0..shared.cores).filter(|&c| c != self.id).map(|c| shared.ring(c, self.id).len()).max().unwrap_or(0);
        let overflow = self.overflow_len.get();
        if !self.congested.get() {
            if overflow > CONGESTED_OVERFLOW || inbound > RING_CAPACITY / 2 {
                self.congested.set(true);
                shared.congested.fetch_add(1, Ordering::AcqRel);
            }
        } else if overflow < CONGESTED_OVERFLOW / 4 && inbound < RING_CAPACITY / 8 {
            self.congested.set(false);
            shared.congested.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Sets or clears this core's overload mark between ticks (at most once a millisecond:
    /// `overload_loop` and every publisher waiting out an overload on this core call it).
    fn update_overload_soon(&self) {
        let now = Instant::now();
        if now.saturating_duration_since(self.overload_checked.get()) >= Duration::from_millis(1) {
            self.overload_checked.set(now);
            let level = self.core.borrow_mut().overload_level_now();
            self.apply_overload(level);
        }
    }

    /// Sets or clears this core's overload mark, at the tick (see
    /// [`crate::core::OVERLOAD_BACKLOG`]).
    fn update_overload(&self) {
        let level = self.core.borrow_mut().overload_level();
        self.apply_overload(level);
    }

    /// Sets or clears the mark from the core's level (session queues, write backlogs) and
    /// what waits for peers (see [`Shared::deliveries_taken`]).
    fn apply_overload(&self, core_level: f64) {
        let level = core_level.max(self.in_transit_level());
        if level > 1.0 {
            self.set_overloaded();
        } else if self.overloaded.get() && level < 0.25 {
            self.overloaded.set(false);
            self.shared.overloaded.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn set_overloaded(&self) {
        if !self.overloaded.replace(true) {
            self.shared.overloaded.fetch_add(1, Ordering::AcqRel);
            self.core.borrow_mut().stats.overloads += 1;
            self.overload_signal.signal();
        }
    }

    fn retry_overflow(&self) {
        if self.overflow_len.get() == 0 {
            return;
        }
        let mut overflow = self.overflow.borrow_mut();
        for (to, queue) in overflow.iter_mut().enumerate() {
            let ring = self.shared.ring(self.id, to);
            while let Some(msg) = queue.pop_front() {
                if let Err(msg) = ring.push(msg) {
                    queue.push_front(msg);
                    break;
                }
                self.overflow_len.set(self.overflow_len.get() - 1);
                self.wake.borrow_mut()[to] = true;
            }
        }
        drop(overflow);
        self.ring_wakeups();
    }

    fn ring_wakeups(&self) {
        let mut wake = self.wake.borrow_mut();
        for (core, flag) in wake.iter_mut().enumerate() {
            if std::mem::take(flag) {
                self.shared.wakeups[core].ring();
            }
        }
    }
}
