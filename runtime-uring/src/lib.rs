//! PromptMQ's runtime API on monoio: one io_uring runtime per core, epoll where io_uring is
//! refused.
//!
//! This crate exposes exactly the API of `promptmq-runtime-tokio` (same names, same
//! signatures), so the broker's driver (`broker/src/server.rs`) compiles against either one
//! with a single `use ... as rt;` line. What differs is underneath:
//!
//! - [`run_per_core`] starts one OS thread per core (the caller pins it), each with its own
//!   monoio runtime.
//!   Each core first tries an io_uring driver; the ring is built with
//!   `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SINGLE_ISSUER`
//!   (each core's ring is only ever entered by its own thread, and nothing needs the kernel to
//!   interrupt a running core to post completions: they are reaped at the next `io_uring_enter`).
//!   No buffers are registered.
//! - **Fallback**: when the kernel refuses io_uring (`EPERM`: `kernel.io_uring_disabled`, or a
//!   seccomp profile such as Docker's default; `ENOSYS`: a kernel without it) the core runs on
//!   monoio's epoll driver instead. `ENOMEM` (RLIMIT_MEMLOCK too low for the ring on kernels
//!   that charge rings to it) retries with a smaller ring first; `EINVAL` (a kernel older than
//!   the setup flags) retries with fewer flags. [`driver_description`] tells which driver each
//!   core got and why, for the startup line.
//! - `PROMPTMQ_FORCE_EPOLL=1` makes every core treat io_uring as refused (to test the
//!   fallback, or to run on epoll on purpose). `PROMPTMQ_URING_SETUP` overrides the ring flags
//!   for measurements: a comma-separated list of `coop_taskrun`, `taskrun_flag`,
//!   `single_issuer`, `defer_taskrun`, or `none`.
//! - Reads and writes use owned buffers, which is what io_uring needs: the kernel owns the
//!   buffer while the operation runs, and a dropped future leaves the buffer with monoio until
//!   the operation completes. Reads append to the caller's `BytesMut` in place; writes send the
//!   caller's `Bytes` chunks with one `writev` (up to 256 at a time), no copy.
//! - [`Wakeup`] is a permit plus an [`atomic_waker::AtomicWaker`]: ringing a core that is busy
//!   costs one atomic swap; ringing a core parked in `io_uring_enter` (or `epoll_wait`) wakes it
//!   through monoio's cross-thread waker, an eventfd the parked core has a read pending on.
//!   It may be rung from any thread, including threads that run no runtime (the WAL writer).
//!
//! Invariant: nothing here blocks a core's thread; all waiting is `async`.
//!
//! # Running it
//!
//! - **Memory lock limit.** Kernels before 5.12 charge io_uring rings to `RLIMIT_MEMLOCK`.
//!   A core's ring (1024 submission entries, 2048 completion entries) needs about 100 KiB;
//!   older distributions default the limit to 64 KiB. The broker then retries with a
//!   256-entry ring (about 28 KiB) and says so in the startup line, and falls back to epoll
//!   if even that is refused. Give it room with `LimitMEMLOCK=infinity` (systemd),
//!   `ulimit -l`, `--ulimit memlock=-1` (Docker), or `CAP_IPC_LOCK`. Since 5.12 rings are
//!   charged to the memory cgroup and the limit does not matter.
//! - **Containers.** The default seccomp profiles of recent Docker and containerd block the
//!   `io_uring_*` system calls: ring setup fails with `EPERM` and the broker runs on epoll
//!   (`runtime epoll (io_uring refused: EPERM)`). To run on io_uring, use a profile that
//!   allows `io_uring_setup`, `io_uring_enter` and `io_uring_register`
//!   (`--security-opt seccomp=<profile.json>`), or `--security-opt seccomp=unconfined`.
//! - **`kernel.io_uring_disabled`** (Linux 6.6+): 1 allows io_uring only to privileged
//!   processes (or the `kernel.io_uring_group`), 2 to nobody; refused cores run on epoll.
//! - **systemd hardening**: a `SystemCallFilter=` without the `io_uring_*` calls has the same
//!   effect as the container profiles.
#![cfg(target_os = "linux")]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBufMut, IoVecBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

/// The runtime this crate prefers; which driver each core really got is in
/// [`driver_description`].
pub const RUNTIME_NAME: &str = "io_uring";

/// The environment variable that makes ring setup count as refused.
pub const FORCE_EPOLL_ENV: &str = "PROMPTMQ_FORCE_EPOLL";
/// The environment variable that overrides the ring setup flags (measurements).
pub const URING_SETUP_ENV: &str = "PROMPTMQ_URING_SETUP";

/// Submission queue entries per core ring, first try.
const RING_ENTRIES: u32 = 1024;
/// After ENOMEM: the smallest ring monoio accepts.
const SMALL_RING_ENTRIES: u32 = 256;
/// Chunks handed to one `writev` (IOV_MAX is 1024).
const MAX_IOVECS: usize = 256;
/// iovec vectors kept for reuse per core (one is in use per write in flight).
const IOVEC_POOL: usize = 64;

thread_local! {
    /// This core's spare iovec vectors. Per core, not per connection: kept by each
    /// connection they would cost every idle one, and made for each write they would cost
    /// an allocation per write.
    static IOVECS: std::cell::RefCell<Vec<Vec<libc::iovec>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn iovec_pool_take() -> Vec<libc::iovec> {
    IOVECS.with(|pool| pool.borrow_mut().pop()).unwrap_or_default()
}

fn iovec_pool_give(mut iovecs: Vec<libc::iovec>) {
    iovecs.clear();
    IOVECS.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < IOVEC_POOL {
            pool.push(iovecs);
        }
    });
}

// ---------------------------------------------------------------------------
// Ring setup and fallback
// ---------------------------------------------------------------------------

/// Ring setup flags, as a small bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SetupFlags {
    coop_taskrun: bool,
    taskrun_flag: bool,
    single_issuer: bool,
    defer_taskrun: bool,
}

impl SetupFlags {
    const DEFAULT: SetupFlags =
        SetupFlags { coop_taskrun: true, taskrun_flag: true, single_issuer: true, defer_taskrun: false };
    const NONE: SetupFlags =
        SetupFlags { coop_taskrun: false, taskrun_flag: false, single_issuer: false, defer_taskrun: false };

    /// `PROMPTMQ_URING_SETUP`, or the default.
    fn from_env() -> SetupFlags {
        match std::env::var(URING_SETUP_ENV) {
            Ok(list) if !list.trim().is_empty() => SetupFlags::parse(&list),
            _ => SetupFlags::DEFAULT,
        }
    }

    fn parse(list: &str) -> SetupFlags {
        let mut flags = SetupFlags::NONE;
        for word in list.split(',').map(str::trim) {
            match word {
                "coop_taskrun" => flags.coop_taskrun = true,
                "taskrun_flag" => flags.taskrun_flag = true,
                "single_issuer" => flags.single_issuer = true,
                "defer_taskrun" => {
                    // The kernel requires SINGLE_ISSUER with DEFER_TASKRUN.
                    flags.defer_taskrun = true;
                    flags.single_issuer = true;
                }
                _ => {}
            }
        }
        flags
    }

    /// The next weaker set to try when the kernel says EINVAL (it predates a flag).
    fn weaker(self) -> Option<SetupFlags> {
        if self.defer_taskrun || self.single_issuer {
            // DEFER_TASKRUN needs 6.1, SINGLE_ISSUER 6.0.
            Some(SetupFlags { defer_taskrun: false, single_issuer: false, ..self })
        } else if self.coop_taskrun || self.taskrun_flag {
            // COOP_TASKRUN and TASKRUN_FLAG need 5.19.
            Some(SetupFlags::NONE)
        } else {
            None
        }
    }

    fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        if self.coop_taskrun {
            b.setup_coop_taskrun();
        }
        if self.taskrun_flag {
            b.setup_taskrun_flag();
        }
        if self.single_issuer {
            b.setup_single_issuer();
        }
        if self.defer_taskrun {
            b.setup_defer_taskrun();
        }
        b
    }

    fn names(self) -> String {
        let mut v = Vec::new();
        if self.coop_taskrun {
            v.push("coop_taskrun");
        }
        if self.taskrun_flag {
            v.push("taskrun_flag");
        }
        if self.single_issuer {
            v.push("single_issuer");
        }
        if self.defer_taskrun {
            v.push("defer_taskrun");
        }
        if v.is_empty() {
            "no setup flags".to_string()
        } else {
            v.join("+")
        }
    }
}

type UringRuntime = monoio::Runtime<TimeDriver<IoUringDriver>>;
type EpollRuntime = monoio::Runtime<TimeDriver<LegacyDriver>>;

enum CoreRuntime {
    Uring(UringRuntime),
    Epoll(EpollRuntime),
}

/// What one core got, for [`driver_description`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct CoreDriver {
    /// "io_uring" or "epoll".
    driver: &'static str,
    /// Why it is not the default io_uring setup, if it is not ("" otherwise).
    note: String,
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ENOSYS) => "ENOSYS".into(),
        Some(libc::ENOMEM) => "ENOMEM".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::EMFILE) => "EMFILE".into(),
        Some(libc::ENFILE) => "ENFILE".into(),
        Some(libc::EFAULT) => "EFAULT".into(),
        _ => e.to_string(),
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn build_uring(flags: SetupFlags, entries: u32) -> io::Result<UringRuntime> {
    RuntimeBuilder::<IoUringDriver>::new().with_entries(entries).uring_builder(flags.builder()).enable_timer().build()
}

fn build_epoll() -> io::Result<EpollRuntime> {
    RuntimeBuilder::<LegacyDriver>::new().enable_timer().build()
}

/// Builds this core's runtime: io_uring if the kernel allows it, else epoll.
fn build_core_runtime() -> io::Result<(CoreRuntime, CoreDriver)> {
    let epoll = |why: String| -> io::Result<(CoreRuntime, CoreDriver)> {
        let rt = build_epoll()?;
        Ok((CoreRuntime::Epoll(rt), CoreDriver { driver: "epoll", note: format!("io_uring refused: {why}") }))
    };
    if env_flag(FORCE_EPOLL_ENV) {
        return epoll(format!("{FORCE_EPOLL_ENV}=1"));
    }
    let wanted = SetupFlags::from_env();
    let mut flags = wanted;
    let mut entries = RING_ENTRIES;
    let mut notes: Vec<String> = Vec::new();
    loop {
        match build_uring(flags, entries) {
            Ok(rt) => {
                if flags != SetupFlags::DEFAULT {
                    notes.insert(0, flags.names());
                }
                if entries != RING_ENTRIES {
                    notes.push(format!("{entries}-entry ring"));
                }
                return Ok((CoreRuntime::Uring(rt), CoreDriver { driver: "io_uring", note: notes.join(", ") }));
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES) => return epoll(errno_name(&e)),
                Some(libc::ENOMEM) if entries > SMALL_RING_ENTRIES => {
                    notes.push(format!("ENOMEM at {entries} entries, raise LimitMEMLOCK"));
                    entries = SMALL_RING_ENTRIES;
                }
                Some(libc::ENOMEM) => {
                    return epoll(format!("ENOMEM even with a {entries}-entry ring, raise LimitMEMLOCK"));
                }
                Some(libc::EINVAL) => match flags.weaker() {
                    Some(w) => {
                        notes.push(format!("kernel refused {}", flags.names()));
                        flags = w;
                    }
                    None => return epoll(errno_name(&e)),
                },
                _ => return epoll(errno_name(&e)),
            },
        }
    }
}

/// The drivers the cores of the latest [`run_per_core`] got, filled in as they start.
struct Report {
    drivers: Vec<Option<CoreDriver>>,
}

static REPORT: Mutex<Option<Report>> = Mutex::new(None);
static REPORT_CHANGED: Condvar = Condvar::new();

fn report_start(cores: usize) {
    if let Ok(mut r) = REPORT.lock() {
        *r = Some(Report { drivers: vec![None; cores] });
    }
    REPORT_CHANGED.notify_all();
}

fn report_core(index: usize, driver: CoreDriver) {
    if let Ok(mut r) = REPORT.lock() {
        if let Some(slot) = r.as_mut().and_then(|r| r.drivers.get_mut(index)) {
            *slot = Some(driver);
        }
    }
    REPORT_CHANGED.notify_all();
}

/// Which driver each core of the running broker got, and why, as the startup line says it:
/// `io_uring`, `epoll (io_uring refused: EPERM)`, or per core where they differ
/// (`cores 0-2 io_uring; core 3 epoll (io_uring refused: ENOMEM ...)`).
///
/// Waits (up to 10 s) until every core started by the latest [`run_per_core`] has built its
/// runtime, so it may be called right after starting the cores on another thread.
pub fn driver_description() -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let Ok(mut guard) = REPORT.lock() else { return RUNTIME_NAME.to_string() };
    loop {
        if let Some(r) = guard.as_ref() {
            if r.drivers.iter().all(Option::is_some) {
                let drivers: Vec<CoreDriver> = r.drivers.iter().flatten().cloned().collect();
                return describe(&drivers);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return format!("{RUNTIME_NAME} (cores still starting)");
        }
        guard = match REPORT_CHANGED.wait_timeout(guard, deadline - now) {
            Ok((g, _)) => g,
            Err(_) => return RUNTIME_NAME.to_string(),
        };
    }
}

fn describe(drivers: &[CoreDriver]) -> String {
    let one = |d: &CoreDriver| {
        if d.note.is_empty() {
            d.driver.to_string()
        } else {
            format!("{} ({})", d.driver, d.note)
        }
    };
    match drivers.first() {
        None => RUNTIME_NAME.to_string(),
        Some(first) if drivers.iter().all(|d| d == first) => one(first),
        Some(_) => {
            // Group consecutive cores with the same outcome.
            let mut parts = Vec::new();
            let mut start = 0;
            for i in 1..=drivers.len() {
                if i == drivers.len() || drivers[i] != drivers[start] {
                    let range =
                        if i - start == 1 { format!("core {start}") } else { format!("cores {start}-{}", i - 1) };
                    parts.push(format!("{range} {}", one(&drivers[start])));
                    start = i;
                }
            }
            parts.join("; ")
        }
    }
}

// ---------------------------------------------------------------------------
// Cores
// ---------------------------------------------------------------------------

/// Runs `core_main(core_index)` on `cores` threads, one monoio runtime each, and blocks until
/// all of them return. Each thread first calls `on_start(core_index)`, before its ring is
/// built (so that the ring's memory is allocated where the caller pinned the thread). A core whose runtime cannot be built at all (neither
/// io_uring nor epoll) makes this return that error once the other cores have returned.
pub fn run_per_core<S, F, Fut>(cores: usize, on_start: S, core_main: F) -> io::Result<()>
where
    S: Fn(usize) + Send + Sync + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    report_start(cores);
    let on_start = Arc::new(on_start);
    let core_main = Arc::new(core_main);
    let mut threads = Vec::with_capacity(cores);
    for index in 0..cores {
        let on_start = Arc::clone(&on_start);
        let core_main = Arc::clone(&core_main);
        let thread =
            std::thread::Builder::new().name(format!("promptmq-core-{index}")).spawn(move || -> io::Result<()> {
                on_start(index);
                let (runtime, driver) = match build_core_runtime() {
                    Ok(built) => built,
                    Err(e) => {
                        report_core(index, CoreDriver { driver: "none", note: format!("no runtime: {e}") });
                        return Err(e);
                    }
                };
                report_core(index, driver);
                match runtime {
                    CoreRuntime::Uring(mut rt) => rt.block_on(core_main(index)),
                    CoreRuntime::Epoll(mut rt) => rt.block_on(core_main(index)),
                }
                Ok(())
            })?;
        threads.push(thread);
    }
    let mut result = Ok(());
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(io::Error::other("a core thread panicked")),
        }
    }
    result
}

/// Spawns a task on the current core. It never migrates to another core.
pub fn spawn_local<F>(future: F)
where
    F: Future<Output = ()> + 'static,
{
    // Detached: dropping the join handle does not cancel the task.
    drop(monoio::spawn(future));
}

/// Sleeps until `deadline`.
///
/// The timer is boxed: monoio's `Sleep` is 768 bytes and 128-byte aligned (its timer entry
/// is cache-padded), and held inline it would make every task that can ever sleep that big
/// for its whole life, sleeping or not (each connection's task, for its rate-limit pause
/// and its linger). Sleeps are rare next to reads and writes, so the allocation is cheap.
pub async fn sleep_until(deadline: Instant) {
    Box::pin(monoio::time::sleep_until(monoio::time::Instant::from_std(deadline))).await
}

/// Sleeps for `duration` (boxed, see [`sleep_until`]).
pub async fn sleep(duration: Duration) {
    Box::pin(monoio::time::sleep(duration)).await
}

/// Lets other tasks on this core run: the task goes to the back of the core's run queue.
///
/// monoio puts a task that wakes itself while it runs at the *front* of the queue (so
/// `wake_by_ref` + `Pending` would run it again at once); instead a one-shot helper task,
/// queued at the back, wakes it, which queues it behind everything already runnable.
pub async fn yield_now() {
    struct WakeWhenRun(Option<Waker>);
    impl Future for WakeWhenRun {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            if let Some(w) = self.0.take() {
                w.wake();
            }
            Poll::Ready(())
        }
    }
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            drop(monoio::spawn(WakeWhenRun(Some(cx.waker().clone()))));
            Poll::Pending
        }
    }
    YieldNow(false).await
}

/// Whether every core can have its own listener on the same port with the kernel spreading
/// connections between them: always, on Linux.
pub fn reuseport_supported() -> bool {
    true
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

/// A TCP listener owned by one core.
///
/// It is not accepted from with an io_uring `ACCEPT` (or `POLL_ADD` on the listener): a request
/// in flight holds a reference to the socket, and when the process dies (a crash, `kill -9`)
/// the kernel cancels a ring's requests only later, asynchronously. Until then the dead
/// process's listeners stay in the `SO_REUSEPORT` group, the kernel keeps handing them new
/// connections, and those are reset: a broker restarted at once would see its first clients
/// refused. Instead the listener sits in a private epoll instance (which does not keep it
/// open), and the core waits for that epoll descriptor to become readable (one `POLL_ADD` on
/// io_uring, a nested registration on the epoll driver), then accepts with a plain
/// non-blocking `accept4`. Accepting is rare next to reads and writes, so this costs nothing
/// that matters.
pub struct Listener {
    inner: std::net::TcpListener,
    /// The epoll instance watching `inner` for incoming connections. It is held in a
    /// `UnixStream` shell only to be registered with monoio and waited on with
    /// [`monoio::net::UnixStream::readable`]; it is never read or written.
    ready: monoio::net::UnixStream,
}

impl Listener {
    /// Binds `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, so that each core can bind the same
    /// address. Must be called from within a core (inside [`run_per_core`]).
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        Listener::from_std(Listener::bind_std(addr)?)
    }

    /// Creates the listening socket without registering it with a runtime, so that the
    /// caller can bind every core's socket up front (port 0 resolved once, errors reported
    /// before any core starts) and hand each core its own.
    pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    }

    /// Registers a listener made by [`Listener::bind_std`] with this core's runtime.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Listener> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        listener.set_nonblocking(true)?;
        // SAFETY: epoll_create1 has no memory-safety preconditions; on success it returns a new
        // descriptor that nothing else owns, which OwnedFd then owns (and closes).
        let epoll = unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
        // SAFETY: both descriptors are open for the duration of the call (owned by `epoll` and
        // `listener`), and `event` is a valid epoll_event the kernel only reads.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, listener.as_raw_fd(), &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let shell = std::os::unix::net::UnixStream::from(epoll);
        Ok(Listener { inner: listener, ready: monoio::net::UnixStream::from_std(shell)? })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        loop {
            match self.inner.accept() {
                Ok((stream, peer)) => {
                    stream.set_nodelay(true)?;
                    return Ok((Stream { inner: stream }, peer));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.ready.readable(false).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A connected TCP stream owned by one core. It is registered with the core's driver when it
/// is split ([`Stream::into_split`]); until then it can move to another core.
pub struct Stream {
    inner: std::net::TcpStream,
}

impl Stream {
    /// Converts a std stream accepted elsewhere (the round-robin hand-off on platforms
    /// without `SO_REUSEPORT`). Must be called on the core that will own it.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Stream> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(Stream { inner: stream })
    }

    /// Detaches the socket from this core so it can be sent to another core, which adopts it
    /// with [`Stream::from_std`].
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        Ok(self.inner)
    }

    /// Splits into independently owned read and write halves (one task reads, one writes)
    /// and a [`Closer`] that can end the connection while either half is blocked.
    ///
    /// All three use the one descriptor (no `dup`: a connection costs one file descriptor).
    /// The descriptor is closed when both halves are dropped; the closer then does nothing.
    pub fn into_split(self) -> io::Result<(ReadHalf, WriteHalf, Closer)> {
        use std::os::fd::AsRawFd;
        self.inner.set_nonblocking(true)?;
        let fd = self.inner.as_raw_fd();
        let stream = monoio::net::TcpStream::from_std(self.inner)?;
        let (r, w) = stream.into_split();
        // The halves share the stream through monoio's `Rc`; a weak reference to it tells the
        // closer whether the descriptor is still open, with no allocation of its own.
        let closer = Closer { open: Rc::downgrade(&r.0) };
        Ok((
            ReadHalf {
                inner: r,
                next_room: READ_ROOM_START as u32,
                ready_streak: 0,
                quiet: true,
                first_done: false,
                ready_known: false,
                last_read_ms: 0,
                busy_reads: 0,
            },
            WriteHalf { inner: w, fd },
            closer,
        ))
    }
}

/// Shuts a connection down from outside its read and write tasks: a write blocked on a
/// peer that stopped reading, or a read waiting on a silent peer, returns at once.
pub struct Closer {
    /// The stream the halves share: alive while either half (and so the descriptor) is.
    open: std::rc::Weak<std::cell::UnsafeCell<monoio::net::TcpStream>>,
}

impl Closer {
    pub fn close(&self) {
        use std::os::fd::AsRawFd;
        if let Some(stream) = self.open.upgrade() {
            // SAFETY: the stream is alive (upgraded); reading its descriptor takes no `&mut`
            // and nothing else on this thread runs during this call.
            let fd = unsafe { &*stream.get() }.as_raw_fd();
            let _ = shutdown(fd, std::net::Shutdown::Both);
        }
    }
}

/// `shutdown(2)` on a connection's descriptor. Only called with the descriptor of a live
/// [`ReadHalf`] or [`WriteHalf`] (each keeps its share of the monoio stream, which owns the
/// descriptor, until it is dropped; all of them live on one thread).
fn shutdown(fd: std::os::fd::RawFd, how: std::net::Shutdown) -> io::Result<()> {
    // SAFETY: per the contract above the descriptor is open for the duration of this call,
    // and it is only borrowed (never closed) here.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).shutdown(how)
}

pub struct ReadHalf {
    inner: OwnedReadHalf<monoio::net::TcpStream>,
    /// Room to give the next read when the caller's buffer has none (see [`ReadHalf::read`]).
    next_room: u32,
    /// Reads in a row that completed without waiting (see [`ReadHalf::read`]).
    ready_streak: u8,
    /// The connection looks quiet: a read given an empty buffer first waits until the
    /// socket is readable, and only then reserves room (see [`ReadHalf::read`]).
    quiet: bool,
    /// The first read (usually the CONNECT) has completed.
    first_done: bool,
    /// [`ReadHalf::ready`] saw the socket readable: the next read need not wait for it again.
    ready_known: bool,
    /// When the last read completed (coarse clock, ms, wrapping).
    last_read_ms: u32,
    /// Reads in a row that came within a clock tick of the one before, or brought plenty.
    busy_reads: u8,
}

/// Reads in a row that may complete without waiting before the reading task yields.
const READY_STREAK_YIELD: u8 = 16;

/// Polls a future and notes whether it was ready at its first poll.
struct NoteReady<F> {
    inner: F,
    polled: bool,
    ready_at_once: bool,
}

impl<F: Future + Unpin> Future for NoteReady<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let first = !self.polled;
        self.polled = true;
        let out = Pin::new(&mut self.inner).poll(cx);
        if first && out.is_ready() {
            self.ready_at_once = true;
        }
        out
    }
}

/// Bounds of the room a read gets when the caller's buffer has none.
const READ_ROOM_MIN: usize = 512;
const READ_ROOM_START: usize = 512;
const READ_ROOM_MAX: usize = 64 * 1024;
/// A read that completes less than this long after the one before (or brings at least
/// [`READ_ROOM_MIN`]) is a busy one. Measured on the coarse clock, so in effect "within one
/// clock tick" (1 to 10 ms depending on the kernel's HZ).
const QUIET_GAP_MS: u32 = 1;
/// Busy reads in a row after which a connection is busy, not quiet. More than one: a client
/// that sends a few packets at once (CONNECT, then SUBSCRIBE as soon as the CONNACK is in)
/// and then nothing stays quiet, so its idle wait can be parked (see [`Parker`]).
const BUSY_READS: u8 = 4;

/// `CLOCK_MONOTONIC_COARSE`: a few nanoseconds to read (no hardware counter), which matters
/// at two reads of the clock per receive; its resolution (a kernel tick) is plenty to tell a
/// connection that waits for milliseconds from one that does not.
fn coarse_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, which only
    // writes it; CLOCK_MONOTONIC_COARSE exists on every Linux this crate runs on (2.6.32+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl ReadHalf {
    /// For a quiet connection (see [`ReadHalf::read`]), waits until the socket is readable,
    /// and the next read given an empty buffer does not wait again; for a busy one, returns at
    /// once. Dropping it while it waits loses nothing (no buffer is involved), which is what
    /// lets the caller stop waiting and [park](Parker) the connection instead.
    #[allow(clippy::manual_async_fn)] // not an `async fn`, like `read`
    pub fn ready(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        async move {
            if self.quiet && !self.ready_known {
                // SAFETY: as in `read`: the stream outlives this borrow, and everything that
                // touches it runs on this thread, never holding a `&mut` across an await.
                let stream = unsafe { &*self.inner.0.get() };
                stream.readable(false).await?;
                self.ready_known = true;
            }
            Ok(())
        }
    }

    /// The connection was idle (parked) until now: it is quiet.
    pub fn resume_after_idle(&mut self) {
        self.quiet = true;
        self.busy_reads = 0;
    }

    /// Appends what is available to `buf` and returns the count, 0 at end of stream, with
    /// the buffer.
    ///
    /// An io_uring receive needs its buffer while it waits (no buffers are registered or
    /// provided to the kernel), so when `buf` has little room the read reserves some, sized by
    /// what this connection's reads brought lately: it doubles after a read that filled most
    /// of it (up to 64 KiB, fewer receives for a busy publisher) and halves after one that
    /// used under a quarter (down to 512 bytes, so an idle connection that the caller gives an
    /// empty buffer holds only that while it waits).
    ///
    /// A connection that is quiet (its last few reads were not all busy: each within a clock
    /// tick of the one before, or bringing [`READ_ROOM_MIN`] or more; see [`BUSY_READS`]) would hold
    /// that room for as long as it stays silent, which for an idle client is its whole life.
    /// (The size matters as much as the wait: on a busy core a read can wait for the core
    /// rather than for data, and it then brings plenty.) So when the caller
    /// hands an empty buffer to a quiet connection, the read first waits until the socket is
    /// readable (a `POLL_ADD` on io_uring, the readiness state on epoll) and only then reserves
    /// room and receives, which completes at once: an idle connection holds no buffer. Busy
    /// connections skip the wait, so they pay no extra operation per read.
    ///
    /// On the epoll driver a read of a socket with data waiting completes at once, without
    /// returning to the scheduler; a task reading a busy publisher in a loop would then never
    /// let the core's other tasks (the writers) run. After 16 such reads in a row the read
    /// yields first. (On io_uring every read waits for its completion, so this never triggers.)
    ///
    /// Not an `async fn`: that would keep `self` and `buf` twice in the future, which a waiting
    /// connection holds for as long as it is silent.
    #[allow(clippy::manual_async_fn)] // deliberately not an `async fn`, see above
    pub fn read(&mut self, mut buf: BytesMut) -> impl Future<Output = (io::Result<usize>, BytesMut)> + '_ {
        async move {
            let ready_known = std::mem::replace(&mut self.ready_known, false);
            if self.quiet && buf.is_empty() && !ready_known {
                // SAFETY: the stream lives in the `Rc<UnsafeCell<..>>` shared by the two halves,
                // which outlives this borrow (`self.inner` holds one count). Everything that
                // touches it runs on this thread, and the other half only takes a `&mut` for the
                // moment it takes to create an operation (which clones the descriptor's handle),
                // never across an await. This borrow is used only when the poll operation is
                // created, likewise.
                let stream = unsafe { &*self.inner.0.get() };
                // Not relaxed: on epoll, readiness left over from the last read (which did not
                // drain the socket to EAGAIN) must not count, or the receive below would wait.
                if let Err(e) = stream.readable(false).await {
                    return (Err(e), buf);
                }
            }
            if buf.capacity() - buf.len() < READ_ROOM_MIN {
                buf.reserve(self.next_room as usize);
            }
            let (len, cap) = (buf.len(), buf.capacity());
            let room = cap - len;
            // In a block, so that the receive has ended before the yield below. Boxed: its
            // future is larger than all the rest of this one, and inline it would be part of
            // every connection's task for good, while it is needed only during a receive.
            let (res, slice, ready_at_once) = {
                // The kernel writes into the spare capacity after the bytes already held; monoio
                // advances the length by what it wrote.
                let read = Box::pin(self.inner.read(buf.slice_mut(len..cap)));
                let mut op = NoteReady { inner: read, polled: false, ready_at_once: false };
                let (res, slice) = (&mut op).await;
                (res, slice, op.ready_at_once)
            };
            if ready_at_once {
                self.ready_streak += 1;
                if self.ready_streak >= READY_STREAK_YIELD {
                    self.ready_streak = 0;
                    yield_now().await;
                }
            } else {
                self.ready_streak = 0;
            }
            if let Ok(n) = res {
                if n >= room - room / 4 {
                    self.next_room = (self.next_room * 2).min(READ_ROOM_MAX as u32);
                } else if n < room / 4 {
                    self.next_room = (self.next_room / 2).max(READ_ROOM_MIN as u32);
                }
                // The first read stays quiet: a client that sends CONNECT and then nothing is the
                // idle connection this is for, and its CONNECT arrives right after the accept.
                let now_ms = coarse_now().as_millis() as u32;
                let gap = now_ms.wrapping_sub(std::mem::replace(&mut self.last_read_ms, now_ms));
                self.busy_reads =
                    if gap < QUIET_GAP_MS || n >= READ_ROOM_MIN { self.busy_reads.saturating_add(1) } else { 0 };
                self.quiet = !self.first_done || self.busy_reads < BUSY_READS;
                self.first_done = true;
            }
            (res, slice.into_inner())
        }
    }
}

pub struct WriteHalf {
    inner: OwnedWriteHalf<monoio::net::TcpStream>,
    /// The socket's descriptor (owned by `inner`), for shutdowns.
    fd: std::os::fd::RawFd,
}

/// The chunks of one `writev`, owned by the operation while the kernel reads them.
struct Chunks {
    chunks: Vec<Bytes>,
    /// Index of the first chunk not yet fully written.
    first: usize,
    /// iovecs for `chunks[first..first + iovecs.len()]`.
    iovecs: Vec<libc::iovec>,
}

impl Chunks {
    fn fill_iovecs(&mut self) {
        self.iovecs.clear();
        for c in self.chunks[self.first..].iter().filter(|c| !c.is_empty()).take(MAX_IOVECS) {
            self.iovecs.push(libc::iovec { iov_base: c.as_ptr() as *mut libc::c_void, iov_len: c.len() });
        }
    }

    /// Drops what the kernel took: `written` bytes from the front.
    fn advance(&mut self, mut written: usize) {
        while self.first < self.chunks.len() {
            let len = self.chunks[self.first].len();
            if written >= len {
                written -= len;
                self.first += 1;
            } else {
                let rest = self.chunks[self.first].slice(written..);
                self.chunks[self.first] = rest;
                break;
            }
        }
    }

    fn done(&self) -> bool {
        self.chunks[self.first..].iter().all(Bytes::is_empty)
    }
}

// SAFETY: `read_iovec_ptr` points at `iovecs`' heap buffer and `read_iovec_len` is its length;
// every iovec points into a `Bytes` held in `chunks` (or at static memory), whose data does not
// move when `Chunks` moves. While monoio owns a `Chunks` (for the duration of the operation),
// nothing can modify `iovecs` or `chunks`, so the pointers stay valid until the operation
// completes, even if the future awaiting it is dropped.
unsafe impl IoVecBuf for Chunks {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

impl WriteHalf {
    /// Writes every chunk fully (vectored) and gives the emptied vector back for reuse.
    pub async fn write_all(&mut self, chunks: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        let mut buf = Chunks { chunks, first: 0, iovecs: iovec_pool_take() };
        let result = loop {
            if buf.done() {
                break Ok(());
            }
            buf.fill_iovecs();
            let (res, back) = self.inner.writev(buf).await;
            buf = back;
            match res {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let Chunks { mut chunks, iovecs, .. } = buf;
        iovec_pool_give(iovecs);
        chunks.clear();
        (result, chunks)
    }

    /// Sends FIN after what was written: the peer reads everything up to here, then end of
    /// stream. Reads on the other half keep working.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        shutdown(self.fd, std::net::Shutdown::Write)
    }

    /// Closes the connection in both directions, so that a read pending on the other half
    /// ends too (a client that never closes its side cannot keep the connection alive).
    pub fn close(&mut self) -> io::Result<()> {
        shutdown(self.fd, std::net::Shutdown::Both)
    }
}

// ---------------------------------------------------------------------------
// Wakeups
// ---------------------------------------------------------------------------

#[derive(Default)]
struct WakeupInner {
    /// The permit: a ring nobody has consumed yet.
    notified: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

/// Watches idle connections for input without a task or a pending operation each: a
/// private epoll instance (which the core waits on the way [`Listener`] does) holds the
/// parked sockets, one-shot, tagged with the caller's token.
///
/// A connection's task with its pending `POLL_ADD` is most of what an idle connection costs
/// (about 600 bytes); a parked one costs its epoll registration, which is kernel memory.
/// Parking and unparking are one `epoll_ctl` each, so the caller parks only connections that
/// have been idle for a while.
pub struct Parker {
    /// The epoll instance, in a `UnixStream` shell only to be waited on (as in [`Listener`]).
    ready: monoio::net::UnixStream,
}

impl Parker {
    pub fn new() -> io::Result<Parker> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: epoll_create1 has no memory-safety preconditions; on success it returns a new
        // descriptor that nothing else owns, which OwnedFd then owns (and closes).
        let epoll = unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let shell = std::os::unix::net::UnixStream::from(epoll);
        Ok(Parker { ready: monoio::net::UnixStream::from_std(shell)? })
    }

    fn ctl(&self, op: libc::c_int, fd: std::os::fd::RawFd, token: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let events = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT;
        let mut event = libc::epoll_event { events: events as u32, u64: token };
        // SAFETY: the epoll descriptor is owned by `self.ready`; `fd` is the descriptor of a
        // live half (the caller holds it); `event` is a valid epoll_event the kernel only reads.
        if unsafe { libc::epoll_ctl(self.ready.as_raw_fd(), op, fd, &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `half`'s socket until it is readable (data, end of stream or an error), then
    /// reports `token` once from [`Parker::wait`]. A socket that is readable already is
    /// reported at once. The caller keeps the halves meanwhile, and must not read until it
    /// calls [`Parker::unpark`].
    pub fn park(&self, half: &WriteHalf, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, half.fd, token)
    }

    /// Stops watching `half`'s socket (reported or not).
    pub fn unpark(&self, half: &WriteHalf) {
        // An error means it is not watched (already removed): nothing to undo.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, half.fd, 0);
    }

    /// Waits until a parked socket may be ready (then [`Parker::take_ready`] says which).
    pub async fn wait(&self) -> io::Result<()> {
        self.ready.readable(false).await
    }

    /// Appends the tokens of the parked sockets that are ready to `out` (each is reported
    /// once per [`Parker::park`]); never waits.
    pub fn take_ready(&self, out: &mut Vec<u64>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: `events` is writable for 64 entries; the timeout 0 never blocks.
            let n = unsafe { libc::epoll_wait(self.ready.as_raw_fd(), events.as_mut_ptr(), 64, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            out.extend(events.iter().take(n as usize).map(|e| e.u64));
            if n < 64 {
                return Ok(());
            }
        }
    }
}

/// A cross-thread doorbell: any thread may [`ring`](Wakeup::ring); the owning core awaits
/// [`wait`](Wakeup::wait). A ring while nobody waits is remembered, so none is lost.
#[derive(Clone, Default)]
pub struct Wakeup {
    inner: Arc<WakeupInner>,
}

impl Wakeup {
    pub fn new() -> Wakeup {
        Wakeup::default()
    }

    pub fn ring(&self) {
        // A permit already pending means a wake is already on its way (or the waiter will find
        // the permit before it sleeps): nothing more to do, and no system call.
        if !self.inner.notified.swap(true, Ordering::AcqRel) {
            self.inner.waker.wake();
        }
    }

    pub async fn wait(&self) {
        WakeupWait { inner: &self.inner }.await
    }
}

struct WakeupWait<'a> {
    inner: &'a WakeupInner,
}

impl Future for WakeupWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.notified.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.inner.waker.register(cx.waker());
        // A ring between the check above and the registration would have found no waker:
        // check again. (Both sides swap `notified`, so one of them sees the other.)
        if self.inner.notified.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
