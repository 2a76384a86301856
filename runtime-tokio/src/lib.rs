//! PromptMQ's runtime API on tokio: one single-threaded tokio runtime per core.
//!
//! The broker core is sans-IO; this crate is the small surface it is driven through, kept
//! deliberately narrow so that an io_uring runtime (monoio) can implement the same API:
//!
//! - [`run_per_core`] starts one OS thread per core (the caller pins it), each with its own
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
/// blocks until all of them return. Each thread first calls `on_start(core_index)`, before
/// its runtime exists: where the caller pins the thread to a CPU.
pub fn run_per_core<S, F, Fut>(cores: usize, on_start: S, core_main: F) -> io::Result<()>
where
    S: Fn(usize) + Send + Sync + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let on_start = Arc::new(on_start);
    let core_main = Arc::new(core_main);
    let mut threads = Vec::with_capacity(cores);
    for index in 0..cores {
        let on_start = Arc::clone(&on_start);
        let core_main = Arc::clone(&core_main);
        let thread =
            std::thread::Builder::new().name(format!("promptmq-core-{index}")).spawn(move || -> io::Result<()> {
                on_start(index);
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

/// Spawns a task on the current core. It never migrates to another core.
pub fn spawn_local<F>(future: F)
where
    F: Future<Output = ()> + 'static,
{
    tokio::task::spawn_local(future);
}

/// Sleeps until `deadline`.
///
/// The timer is boxed: tokio's `Sleep` is about 100 bytes, and held inline it would make every
/// task that can ever sleep that much bigger for its whole life, sleeping or not (each
/// connection's task, for its rate-limit pause and its linger). Sleeps are rare next to reads
/// and writes, so the allocation is cheap.
pub async fn sleep_until(deadline: Instant) {
    Box::pin(tokio::time::sleep_until(deadline.into())).await
}

/// Sleeps for `duration` (boxed, see [`sleep_until`]).
pub async fn sleep(duration: Duration) {
    Box::pin(tokio::time::sleep(duration)).await
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
        Ok((
            ReadHalf { inner: Rc::clone(&inner), drained: true },
            WriteHalf { inner: Rc::clone(&inner) },
            Closer { inner },
        ))
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
    /// The last read found the socket drained (it brought less than its room, or nothing),
    /// so the readiness tokio still reports may be stale (see [`ReadHalf::read`]).
    drained: bool,
}

/// What a read of a probably drained socket tries first, into a stack buffer.
const PROBE: usize = 1024;
/// The room a read reserves when the socket is expected to have more.
const READ_ROOM: usize = 8 * 1024;

impl ReadHalf {
    /// Waits until the socket is readable. `poll_read_ready` rather than `readable()`: the
    /// latter's future (an intrusive waiter, 152 bytes) would be part of every connection's
    /// task while it waits; this one holds a reference. Only this half reads, so the one
    /// waker slot `poll_read_ready` keeps is enough.
    fn read_ready(&self) -> impl Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(|cx| self.inner.poll_read_ready(cx))
    }

    /// The connection was idle until now (nothing to adjust on tokio, which never parks).
    pub fn resume_after_idle(&mut self) {}

    /// Waits until the socket is readable (tokio's readiness; at once when it is known to
    /// be). Dropping it while it waits loses nothing.
    pub fn ready(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        self.read_ready()
    }

    /// Appends what is available to `buf` and returns the count, 0 at end of stream, with
    /// the buffer. When `buf` has no room it waits for data before growing it, so an idle
    /// connection given an empty buffer holds no buffer memory while it waits.
    ///
    /// tokio clears a socket's readiness only when a read finds nothing, so after a read that
    /// drained the socket (the usual case) the next readiness wait returns at once. Reserving
    /// room then would mean allocating it only to give it back when the read finds nothing
    /// (or keeping it for as long as the peer stays silent). So after such a read, the next
    /// one goes first into a 1 KiB stack buffer, and room is allocated only for what came (when
    /// that fills it, 8 KiB more is read at once); a read that filled its room (more is likely
    /// waiting) reserves 8 KiB and reads into it.
    ///
    /// Not an `async fn`: that would keep `self` and `buf` twice in the future, which a waiting
    /// connection holds for as long as it is silent.
    #[allow(clippy::manual_async_fn)] // deliberately not an `async fn`, see above
    pub fn read(&mut self, mut buf: BytesMut) -> impl Future<Output = (io::Result<usize>, BytesMut)> + '_ {
        async move {
            // A buffer with room (a partial packet's) is read into at once.
            let mut wait_first = buf.capacity() - buf.len() < 1024;
            loop {
                if wait_first {
                    if let Err(e) = self.read_ready().await {
                        return (Err(e), buf);
                    }
                }
                wait_first = true;
                let room = buf.capacity() - buf.len();
                let got = if room < 1024 && self.drained {
                    let mut probe = [0u8; PROBE];
                    match self.inner.try_read(&mut probe) {
                        Ok(n) if n == PROBE => {
                            // More is likely waiting: read it now, in the same turn.
                            buf.reserve(PROBE + READ_ROOM);
                            buf.extend_from_slice(&probe);
                            let room = buf.capacity() - buf.len();
                            match self.inner.try_read_buf(&mut buf) {
                                Ok(more) => {
                                    self.drained = more < room;
                                    Ok(n + more)
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
                                Err(e) => Err(e),
                            }
                        }
                        Ok(n) => {
                            buf.extend_from_slice(&probe[..n]);
                            self.drained = true;
                            Ok(n)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    let reserved = room < 1024;
                    if reserved {
                        buf.reserve(READ_ROOM);
                    }
                    let room = buf.capacity() - buf.len();
                    let got = self.inner.try_read_buf(&mut buf);
                    match &got {
                        Ok(n) => self.drained = *n < room,
                        // Nothing after all: the room goes back before the wait.
                        Err(_) if reserved && buf.is_empty() => buf = BytesMut::new(),
                        Err(_) => {}
                    }
                    got
                };
                match got {
                    Ok(n) => {
                        // `try_read` does not spend tokio's cooperative budget; without this a
                        // publisher that always has data waiting would keep its core's other
                        // tasks (writers, the inbox) from running.
                        tokio::task::consume_budget().await;
                        return (Ok(n), buf);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained = true,
                    Err(e) => return (Err(e), buf),
                }
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
            // In a block, so that the 1 KiB of slices is not part of the future's state across
            // the wait for writability below.
            let tried = {
                let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
                let count = chunks.len().min(first + MAX_IOVECS) - first;
                for (slot, chunk) in slices.iter_mut().zip(&chunks[first..first + count]) {
                    *slot = io::IoSlice::new(chunk);
                }
                self.inner.try_write_vectored(&slices[..count])
            };
            let mut written = match tried {
                Ok(0) => {
                    chunks.clear();
                    return (Err(io::ErrorKind::WriteZero.into()), chunks);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = std::future::poll_fn(|cx| self.inner.poll_write_ready(cx)).await {
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

/// Parking idle connections (taking them off their tasks, see the io_uring runtime's
/// `Parker`) is not done on tokio: [`Parker::new`] says `Unsupported`, and the broker keeps
/// every connection on its task. The other methods exist so that the broker compiles against
/// either runtime; without a parker they are never called.
pub struct Parker {
    _none: (),
}

impl Parker {
    pub fn new() -> io::Result<Parker> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "parking connections needs the io_uring runtime"))
    }

    pub fn park(&self, _half: &WriteHalf, _token: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub fn unpark(&self, _half: &WriteHalf) {}

    pub async fn wait(&self) -> io::Result<()> {
        std::future::pending().await
    }

    pub fn take_ready(&self, _out: &mut Vec<u64>) -> io::Result<()> {
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Runs `f` on a current-thread runtime with a `LocalSet`, as a core does.
    fn on_core<F: Future<Output = ()>>(f: F) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn reads_given_empty_buffers_return_every_byte_in_order() {
        on_core(async {
            let listener = Listener::bind(loopback()).expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let client = std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                for chunk in rx {
                    s.write_all(&chunk).expect("write");
                }
            });
            let (stream, _) = listener.accept().await.expect("accept");
            let (mut r, _w, _c) = stream.into_split().expect("split");
            // Small writes with pauses (reads of a drained socket, through the stack buffer),
            // then bulk (the stack buffer fills and the read goes on into reserved room).
            let mut sent = Vec::new();
            for i in 0..20u8 {
                let chunk = vec![i; 1 + usize::from(i) * 7];
                sent.extend_from_slice(&chunk);
                tx.send(chunk).expect("send");
                sleep(Duration::from_millis(2)).await;
            }
            let bulk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
            sent.extend_from_slice(&bulk);
            tx.send(bulk).expect("send");
            drop(tx);
            let mut got = Vec::new();
            loop {
                let (res, buf) = r.read(BytesMut::new()).await;
                let n = res.expect("read");
                assert_eq!(buf.len(), n);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf);
            }
            assert_eq!(got.len(), sent.len());
            assert!(got == sent, "bytes differ");
            client.join().expect("client");
        });
    }
}
