//! Tests of the runtime API, each run on both drivers (io_uring, when this machine allows it,
//! and epoll).

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;

/// Runs `f` on a fresh io_uring runtime (skipped with a note if io_uring is refused here) and
/// on a fresh epoll runtime.
fn on_both<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    match build_uring(SetupFlags::DEFAULT, RING_ENTRIES) {
        Ok(mut rt) => rt.block_on(f()),
        Err(e) => eprintln!("io_uring refused here ({e}): testing epoll only"),
    }
    build_epoll().expect("epoll runtime").block_on(f());
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

#[test]
fn wakeup_rung_from_another_thread_wakes_a_waiting_core() {
    on_both(|| async {
        let wakeup = Wakeup::new();
        let remote = wakeup.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            remote.ring();
        });
        let started = Instant::now();
        wakeup.wait().await;
        assert!(started.elapsed() >= Duration::from_millis(40));
        t.join().expect("ringer");
    });
}

#[test]
fn wakeup_rung_while_nobody_waits_is_remembered_once() {
    on_both(|| async {
        let wakeup = Wakeup::new();
        let remote = wakeup.clone();
        std::thread::spawn(move || {
            remote.ring();
            remote.ring();
        })
        .join()
        .expect("ringer");
        // The permit is there: returns at once.
        wakeup.wait().await;
        // Only one permit: a second wait blocks until the next ring.
        let again = Wakeup::clone(&wakeup);
        let woke = Rc::new(Cell::new(false));
        let w = Rc::clone(&woke);
        spawn_local(async move {
            again.wait().await;
            w.set(true);
        });
        sleep(Duration::from_millis(30)).await;
        assert!(!woke.get(), "a second wait returned without a ring");
        wakeup.ring();
        sleep(Duration::from_millis(30)).await;
        assert!(woke.get());
    });
}

#[test]
fn many_rings_from_many_threads_are_not_lost() {
    on_both(|| async {
        let wakeup = Wakeup::new();
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let w = wakeup.clone();
                let c = Arc::clone(&counter);
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        c.fetch_add(1, Ordering::SeqCst);
                        w.ring();
                    }
                })
            })
            .collect();
        // Whatever the interleaving, the last increment is followed by a ring that the waiter
        // sees: it must reach 6000 without hanging.
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter.load(Ordering::SeqCst) < 6000 {
            wakeup.wait().await;
            assert!(Instant::now() < deadline, "lost wakeup");
        }
        for t in threads {
            t.join().expect("ringer");
        }
    });
}

#[test]
fn timers_sleep_at_least_as_long_as_asked() {
    on_both(|| async {
        let t = Instant::now();
        sleep(Duration::from_millis(20)).await;
        assert!(t.elapsed() >= Duration::from_millis(20));
        let deadline = Instant::now() + Duration::from_millis(15);
        sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
    });
}

/// A client thread that sends `payload`, then reads everything the server echoes until EOF.
fn echo_client(addr: SocketAddr, payload: Vec<u8>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let mut writer = s.try_clone().expect("clone");
        let sent = payload.clone();
        let w = std::thread::spawn(move || {
            writer.write_all(&sent).expect("client write");
            writer.shutdown(std::net::Shutdown::Write).expect("client shutdown");
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("client read");
        w.join().expect("client writer");
        got
    })
}

#[test]
fn stream_echo_with_owned_buffers_and_vectored_writes() {
    on_both(|| async {
        let listener = Listener::bind(loopback()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        // 4 MiB: more than a socket buffer, so writes are partial and reads come in pieces.
        let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let client = echo_client(addr, payload.clone());
        let (stream, _) = listener.accept().await.expect("accept");
        let (mut r, mut w, _closer) = stream.into_split().expect("split");
        let mut buf = BytesMut::with_capacity(100);
        buf.extend_from_slice(b"");
        let mut spare = Vec::new();
        loop {
            let (res, b) = r.read(buf).await;
            buf = b;
            let n = res.expect("read");
            if n == 0 {
                break;
            }
            // Echo in many small chunks (more than MAX_IOVECS per write) to exercise
            // the partial-write bookkeeping.
            let data = buf.split().freeze();
            let mut chunks: Vec<Bytes> = std::mem::take(&mut spare);
            let mut at = 0;
            while at < data.len() {
                let end = (at + 7).min(data.len());
                chunks.push(data.slice(at..end));
                chunks.push(Bytes::new());
                at = end;
            }
            let (res, emptied) = w.write_all(chunks).await;
            res.expect("write");
            assert!(emptied.is_empty());
            spare = emptied;
        }
        w.shutdown_write().expect("shutdown");
        let got = client.join().expect("client");
        assert_eq!(got.len(), payload.len());
        assert!(got == payload, "echo differs");
    });
}

#[test]
fn read_appends_after_bytes_already_held() {
    on_both(|| async {
        let listener = Listener::bind(loopback()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(b"world").expect("write");
            s
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let (mut r, _w, _closer) = stream.into_split().expect("split");
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"hello ");
        let mut total = 0;
        while total < 5 {
            let (res, b) = r.read(buf).await;
            buf = b;
            total += res.expect("read");
        }
        assert_eq!(&buf[..], b"hello world");
        drop(client.join());
    });
}

#[test]
fn closer_ends_a_pending_read() {
    on_both(|| async {
        let listener = Listener::bind(loopback()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A client that connects and stays silent.
        let client = std::thread::spawn(move || {
            let s = std::net::TcpStream::connect(addr).expect("connect");
            std::thread::sleep(Duration::from_millis(500));
            drop(s);
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let (mut r, _w, closer) = stream.into_split().expect("split");
        let started = Instant::now();
        spawn_local(async move {
            sleep(Duration::from_millis(30)).await;
            closer.close();
        });
        let (res, _) = r.read(BytesMut::new()).await;
        assert!(matches!(res, Ok(0) | Err(_)), "{res:?}");
        assert!(started.elapsed() < Duration::from_millis(400), "the read did not end at the close");
        client.join().expect("client");
    });
}

#[test]
fn a_stream_moves_to_another_core_through_std() {
    on_both(|| async {
        let listener = Listener::bind(loopback()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = echo_client(addr, b"ping".to_vec());
        let (stream, _) = listener.accept().await.expect("accept");
        let std = stream.into_std().expect("into_std");
        // Another core adopts it.
        let handle = std::thread::spawn(move || {
            build_epoll().expect("epoll").block_on(async move {
                let stream = Stream::from_std(std).expect("from_std");
                let (mut r, mut w, _c) = stream.into_split().expect("split");
                let mut buf = BytesMut::new();
                loop {
                    let (res, b) = r.read(buf).await;
                    buf = b;
                    if res.expect("read") == 0 {
                        break;
                    }
                }
                let (res, _) = w.write_all(vec![buf.freeze()]).await;
                res.expect("write");
                w.close().expect("close");
            })
        });
        handle.join().expect("other core");
        assert_eq!(client.join().expect("client"), b"ping");
    });
}

#[test]
fn run_per_core_reports_each_cores_driver() {
    run_per_core(
        2,
        |_| {},
        |index| async move {
            let listener = Listener::bind(loopback()).expect("bind");
            assert!(listener.local_addr().is_ok(), "core {index}");
        },
    )
    .expect("run");
    let d = driver_description();
    assert!(d.starts_with("io_uring") || d.starts_with("epoll (io_uring refused"), "{d}");
}

#[test]
fn descriptions_name_the_driver_and_the_reason() {
    let uring = CoreDriver { driver: "io_uring", note: String::new() };
    let epoll = CoreDriver { driver: "epoll", note: "io_uring refused: EPERM".into() };
    assert_eq!(describe(&[uring.clone(), uring.clone()]), "io_uring");
    assert_eq!(describe(&[epoll.clone(), epoll.clone()]), "epoll (io_uring refused: EPERM)");
    assert_eq!(describe(&[uring.clone(), uring, epoll]), "cores 0-1 io_uring; core 2 epoll (io_uring refused: EPERM)");
}

#[test]
fn setup_flags_parse_and_weaken() {
    assert_eq!(SetupFlags::parse("none"), SetupFlags::NONE);
    let d = SetupFlags::parse("defer_taskrun");
    assert!(d.defer_taskrun && d.single_issuer);
    assert_eq!(SetupFlags::DEFAULT.names(), "coop_taskrun+taskrun_flag+single_issuer");
    let w = SetupFlags::DEFAULT.weaker().expect("weaker");
    assert!(!w.single_issuer && w.coop_taskrun);
    assert_eq!(w.weaker(), Some(SetupFlags::NONE));
    assert_eq!(SetupFlags::NONE.weaker(), None);
}

#[test]
fn yield_now_runs_the_other_ready_tasks_first() {
    on_both(|| async {
        let order = Rc::new(RefCell::new(Vec::new()));
        for i in 0..3 {
            let o = Rc::clone(&order);
            spawn_local(async move { o.borrow_mut().push(i) });
        }
        yield_now().await;
        assert_eq!(*order.borrow(), vec![0, 1, 2]);
        // A task that keeps yielding does not starve the others.
        let o = Rc::clone(&order);
        spawn_local(async move {
            for _ in 0..3 {
                o.borrow_mut().push(10);
                yield_now().await;
            }
        });
        let o = Rc::clone(&order);
        spawn_local(async move { o.borrow_mut().push(20) });
        sleep(Duration::from_millis(10)).await;
        assert_eq!(order.borrow()[3..], [10, 20, 10, 10]);
    });
}

#[test]
fn closer_does_nothing_once_both_halves_are_gone() {
    on_both(|| async {
        let listener = Listener::bind(loopback()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).expect("connect"));
        let (stream, _) = listener.accept().await.expect("accept");
        let (r, w, closer) = stream.into_split().expect("split");
        let _client = client.join().expect("client");
        drop(r);
        drop(w);
        // Let the close run, then open another socket that may reuse the descriptor number.
        sleep(Duration::from_millis(10)).await;
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind other");
        closer.close();
        // `other` still works: the closer did not shut down a reused descriptor.
        assert!(other.local_addr().is_ok());
        let probe = std::net::TcpStream::connect(other.local_addr().expect("addr"));
        assert!(probe.is_ok(), "the closer touched a reused descriptor");
    });
}

#[test]
fn read_room_grows_for_bulk_data_and_shrinks_when_idle() {
    on_both(|| async {
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
        // Bulk: 1 MiB sent at once; reads given empty buffers get more room each time.
        tx.send(vec![7u8; 1 << 20]).expect("send");
        let mut total = 0;
        let mut largest = 0;
        while total < 1 << 20 {
            let (res, buf) = r.read(BytesMut::new()).await;
            let n = res.expect("read");
            assert_eq!(buf.len(), n);
            largest = largest.max(buf.capacity());
            total += n;
        }
        assert!(largest >= 32 * 1024, "largest read buffer {largest}");
        // Small messages: the room shrinks back.
        for _ in 0..10 {
            tx.send(vec![1u8; 2]).expect("send");
            let (res, _) = r.read(BytesMut::new()).await;
            assert_eq!(res.expect("read"), 2);
        }
        assert_eq!(r.next_room as usize, READ_ROOM_MIN);
        drop(tx);
        client.join().expect("client");
    });
}

#[test]
fn a_reader_with_data_always_waiting_lets_other_tasks_run() {
    on_both(|| async {
        let listener = Listener::bind(loopback()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            // Far more than one read takes: the socket always has data waiting.
            let _ = s.write_all(&vec![0u8; 8 << 20]);
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let (mut r, w, _c) = stream.into_split().expect("split");
        // Let data pile up, and learn that the socket is readable.
        sleep(Duration::from_millis(100)).await;
        let (res, _) = r.read(BytesMut::with_capacity(4096)).await;
        assert!(res.expect("read") > 0);
        let other_ran = Rc::new(Cell::new(false));
        let o = Rc::clone(&other_ran);
        spawn_local(async move { o.set(true) });
        // Read without ever awaiting anything else, as the broker's read loop does.
        let mut reads = 0;
        while !other_ran.get() {
            // Small reads, so that the data already waiting lasts for all of them.
            let (res, _) = r.read(BytesMut::with_capacity(READ_ROOM_MIN)).await;
            assert!(res.expect("read") > 0);
            reads += 1;
            assert!(reads < 100, "the other task never ran");
        }
        // Close the socket so the client's write ends (on io_uring the close is an operation
        // of the ring: let the core submit it before blocking on the join).
        drop(r);
        drop(w);
        sleep(Duration::from_millis(20)).await;
        client.join().expect("client");
    });
}

#[test]
fn a_parked_socket_is_reported_once_readable_and_reads_normally_after() {
    on_both(|| async {
        let listener = Listener::bind(loopback()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            rx.recv().expect("go");
            s.write_all(b"ping").expect("write");
            std::thread::sleep(Duration::from_millis(300));
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let (mut r, w, _closer) = stream.into_split().expect("split");
        let parker = Parker::new().expect("parker");
        // Dropping a wait for readiness loses nothing: this is what the broker does when it
        // parks a connection it was waiting on.
        {
            let mut wait = std::pin::pin!(r.ready());
            let mut timeout = std::pin::pin!(sleep(Duration::from_millis(20)));
            let first = std::future::poll_fn(|cx| match wait.as_mut().poll(cx) {
                Poll::Ready(_) => Poll::Ready(true),
                Poll::Pending => timeout.as_mut().poll(cx).map(|_| false),
            })
            .await;
            assert!(!first, "nothing was sent yet");
        }
        parker.park(&w, 42).expect("park");
        let mut ready = Vec::new();
        parker.take_ready(&mut ready).expect("poll");
        assert!(ready.is_empty(), "silent socket reported: {ready:?}");
        tx.send(()).expect("go");
        // Bounded: a parker that never reports would otherwise hang the test run.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ready.is_empty() {
            let mut wait = std::pin::pin!(parker.wait());
            let mut timeout = std::pin::pin!(sleep(Duration::from_millis(100)));
            std::future::poll_fn(|cx| match wait.as_mut().poll(cx) {
                Poll::Ready(res) => {
                    res.expect("wait");
                    Poll::Ready(())
                }
                Poll::Pending => timeout.as_mut().poll(cx),
            })
            .await;
            parker.take_ready(&mut ready).expect("poll");
            assert!(std::time::Instant::now() < deadline, "the parked socket was never reported readable");
        }
        assert_eq!(ready, [42]);
        parker.unpark(&w);
        r.resume_after_idle();
        let (res, buf) = r.read(BytesMut::new()).await;
        assert_eq!((res.expect("read"), &buf[..]), (4, &b"ping"[..]));
        client.join().expect("client");
    });
}
