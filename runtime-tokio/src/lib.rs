//! PromptMQ's runtime API on tokio: one single-threaded tokio runtime per core.
//!
//! The broker core is sans-IO; this crate is the small surface it is driven through, kept
//! deliberately narrow so that an io_uring runtime (monoio) can implement the same API:
//!
//! - [`run_per_core`] starts one pinned OS thread per core, each with its own
//!   `current_thread` runtime and a `LocalSet`, so tasks on a core share state through
//!   `Rc<RefCell<..>>` with no locks.
//! - [`Listener::bind`] opens a listener per core with `SO_REUSEPORT` on Linux, so the kernel
//!   spreads connections across cores; elsewhere one core accepts and the caller hands
//!   sockets round-robin to the others (see [`reuseport_supported`]).
//! - [`Stream`] does reads and writes with owned buffers: a read takes a `BytesMut` and gives it
//!   back with the result, a write takes the chunks and gives the vector back. That is the
//!   shape io_uring needs (the kernel owns the buffer while the operation runs).
//! - [`Wakeup`] is the cross-core doorbell a core rings after pushing into another core's ring.
//!
//! Invariant: nothing here blocks a core's thread; all waiting is `async`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

/// The name printed in the startup line.
pub const RUNTIME_NAME: &str = "tokio";

/// Runs `core_main(core_index)` on `cores` threads, one current-thread runtime each, and
/// blocks until all of them return. With `pin`, thread *i* is pinned to CPU *i* (Linux only;
/// a failure to pin is reported and otherwise ignored).
pub fn run_per_core<F, Fut>(cores: usize, pin: bool, core_main: F) -> io::Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let core_main = Arc::new(core_main);
    let mut threads = Vec::with_capacity(cores);
    for index in 0..cores {
        let core_main = Arc::clone(&core_main);
        let thread =
            std::thread::Builder::new().name(format!("promptmq-core-{index}")).spawn(move || -> io::Result<()> {
                if pin {
                    if let Err(e) = pin_to_cpu(index) {
                        eprintln!("promptmq: could not pin core {index}: {e}");
                    }
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, core_main(index));
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

#[cfg(target_os = "linux")]
fn pin_to_cpu(index: usize) -> io::Result<()> {
    let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu = index % available;
    // SAFETY: cpu_set_t is a plain bitmask; CPU_ZERO/CPU_SET only write within it, and
    // sched_setaffinity(0, ..) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn pin_to_cpu(_index: usize) -> io::Result<()> {
    Ok(())
}

/// Spawns a task on the current core. It never migrates to another core.
pub fn spawn_local<F>(future: F)
where
    F: Future<Output = ()> + 'static,
{
    tokio::task::spawn_local(future);
}

/// Sleeps until `deadline`.
pub async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(deadline.into()).await
}

/// Sleeps for `duration`.
pub async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await
}

/// Lets other tasks on this core run.
pub async fn yield_now() {
    tokio::task::yield_now().await
}

/// Whether every core can have its own listener on the same port with the kernel spreading
/// connections between them. Linux balances `SO_REUSEPORT` listeners; macOS and the BSDs
/// accept the option but do not balance, and Windows has no equivalent, so there one core
/// accepts and hands sockets to the others.
pub fn reuseport_supported() -> bool {
    cfg!(target_os = "linux")
}

/// A TCP listener owned by one core.
pub struct Listener {
    inner: tokio::net::TcpListener,
}

impl Listener {
    /// Binds `addr` with `SO_REUSEADDR`, and `SO_REUSEPORT` where supported, so that each
    /// core can bind the same address. Must be called from within a core (inside
    /// [`run_per_core`]).
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
        #[cfg(target_os = "linux")]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    }

    /// Registers a listener made by [`Listener::bind_std`] with this core's runtime.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        Ok(Listener { inner: tokio::net::TcpListener::from_std(listener)? })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        stream.set_nodelay(true)?;
        Ok((Stream { inner: stream }, peer))
    }
}

/// A connected TCP stream owned by one core.
pub struct Stream {
    inner: tokio::net::TcpStream,
}

impl Stream {
    /// Converts a std stream accepted elsewhere (the round-robin hand-off on platforms
    /// without `SO_REUSEPORT`). Must be called on the core that will own it.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Stream> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(Stream { inner: tokio::net::TcpStream::from_std(stream)? })
    }

    /// Detaches the socket from this core's runtime so it can be sent to another core,
    /// which adopts it with [`Stream::from_std`].
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        self.inner.into_std()
    }

    /// Splits into independently owned read and write halves (one task reads, one writes)
    /// and a [`Closer`] that can end the connection while either half is blocked. All three
    /// share the one socket (no duplicated descriptor).
    pub fn into_split(self) -> io::Result<(ReadHalf, WriteHalf, Closer)> {
        let inner = Rc::new(self.inner);
        Ok((ReadHalf { inner: Rc::clone(&inner) }, WriteHalf { inner: Rc::clone(&inner) }, Closer { inner }))
    }
}

/// Shuts a connection down from outside its read and write tasks: a write blocked on a
/// peer that stopped reading, or a read waiting on a silent peer, returns at once.
pub struct Closer {
    inner: Rc<tokio::net::TcpStream>,
}

impl Closer {
    pub fn close(&self) {
        let _ = socket2::SockRef::from(&*self.inner).shutdown(std::net::Shutdown::Both);
    }
}

pub struct ReadHalf {
    inner: Rc<tokio::net::TcpStream>,
}

impl ReadHalf {
    /// Appends what is available to `buf` and returns the count, 0 at end of stream, with
    /// the buffer. When `buf` has no room it waits for data before growing it, so an idle
    /// connection given an empty buffer holds no buffer memory while it waits.
    pub async fn read(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        loop {
            if buf.capacity() - buf.len() < 1024 {
                if let Err(e) = self.inner.readable().await {
                    return (Err(e), buf);
                }
                buf.reserve(8 * 1024);
            }
            match self.inner.try_read_buf(&mut buf) {
                Ok(n) => {
                    // `try_read_buf` does not spend tokio's cooperative budget; without this a
                    // publisher that always has data waiting would keep its core's other tasks
                    // (writers, the inbox) from running.
                    tokio::task::consume_budget().await;
                    return (Ok(n), buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.inner.readable().await {
                        return (Err(e), buf);
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }
}

pub struct WriteHalf {
    inner: Rc<tokio::net::TcpStream>,
}

/// Chunks handed to one vectored write.
const MAX_IOVECS: usize = 64;

impl WriteHalf {
    /// Writes every chunk fully (vectored) and gives the emptied vector back for reuse.
    pub async fn write_all(&mut self, mut chunks: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        let mut first = 0;
        while first < chunks.len() {
            let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
            let count = chunks.len().min(first + MAX_IOVECS) - first;
            for (slot, chunk) in slices.iter_mut().zip(&chunks[first..first + count]) {
                *slot = io::IoSlice::new(chunk);
            }
            let mut written = match self.inner.try_write_vectored(&slices[..count]) {
                Ok(0) => {
                    chunks.clear();
                    return (Err(io::ErrorKind::WriteZero.into()), chunks);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.inner.writable().await {
                        chunks.clear();
                        return (Err(e), chunks);
                    }
                    continue;
                }
                Err(e) => {
                    chunks.clear();
                    return (Err(e), chunks);
                }
            };
            while written > 0 && first < chunks.len() {
                let len = chunks[first].len();
                if written >= len {
                    written -= len;
                    first += 1;
                } else {
                    chunks[first] = chunks[first].slice(written..);
                    written = 0;
                }
            }
            while first < chunks.len() && chunks[first].is_empty() {
                first += 1;
            }
        }
        chunks.clear();
        (Ok(()), chunks)
    }

    /// Sends FIN after what was written: the peer reads everything up to here, then end of
    /// stream. Reads on the other half keep working.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        socket2::SockRef::from(&*self.inner).shutdown(std::net::Shutdown::Write)
    }

    /// Closes the connection in both directions, so that a read pending on the other half
    /// ends too (a client that never closes its side cannot keep the connection alive).
    pub fn close(&mut self) -> io::Result<()> {
        socket2::SockRef::from(&*self.inner).shutdown(std::net::Shutdown::Both)
    }
}

/// A cross-thread doorbell: any thread may [`ring`](Wakeup::ring); the owning core awaits
/// [`wait`](Wakeup::wait). A ring while nobody waits is remembered, so none is lost.
#[derive(Clone, Default)]
pub struct Wakeup {
    inner: Arc<tokio::sync::Notify>,
}

impl Wakeup {
    pub fn new() -> Wakeup {
        Wakeup::default()
    }
    pub fn ring(&self) {
        self.inner.notify_one();
    }
    pub async fn wait(&self) {
        self.inner.notified().await
    }
}

/// A same-core signal between tasks (e.g. "this connection has bytes to write").
#[derive(Default)]
pub struct LocalSignal {
    inner: tokio::sync::Notify,
}

impl LocalSignal {
    pub fn signal(&self) {
        self.inner.notify_one();
    }
    pub async fn wait(&self) {
        self.inner.notified().await
    }
}
