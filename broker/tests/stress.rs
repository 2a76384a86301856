//! Stress: P publishers × S subscribers fanning out through one wildcard, and 1,000+ clients
//! connected at once, with every delivery accounted for.
//!
//! * Fan-out P×S: publisher `p` publishes M messages on `stress/<run>/<p>`, the payload
//!   carrying `p`, a sequence number and a filler derived from both; every subscriber
//!   subscribes `stress/<run>/+`, so each message reaches all S subscribers and exactly
//!   P × M × S deliveries are due. Each subscriber checks every message's topic, QoS, flags
//!   and payload and that each publisher's sequence arrives in order with no gap and no
//!   repeat [MQTT-4.6.0-5]. No client reconnects, so QoS 1 must be delivered exactly once:
//!   a lost, duplicated or reordered message fails the test when it shows, a missing tail
//!   when nothing arrives for `STALL`, a late extra during the final `QUIET` listen.
//! * Many clients: N clients connected at the same time (all subscribed), a QoS 1 broadcast
//!   that each of them must receive in full, a QoS 0 ring where every client publishes to
//!   its neighbour's topic, then an orderly DISCONNECT of all of them; the broker must still
//!   serve a client afterwards.
//!
//! Clients are raw MQTT connections (tokio `TcpStream` halves, `mqttbytes` encoding), one
//! task each, alternating MQTT 3.1.1 and 5.0: thousands of rumqttc event loops would weigh
//! more than the broker under test.
//!
//! Publishers are paced end to end ([`Flow`]): at most `CREDIT` messages may be published and
//! not yet received by the slowest subscriber. A broker may legitimately drop what a slow
//! subscriber has not taken beyond its limits (PromptMQ: QoS 1 past the inflight window plus
//! `--max-queued-messages`, QoS 0 past `--max-write-buffer`; mosquitto: past
//! `max_queued_messages`, for QoS 0 as well), and these tests are about losing nothing within
//! those limits, so no subscriber is ever more than `CREDIT` behind. That is what lets QoS 0
//! be held to exact counts too. (A broker with too little room for `CREDIT` fails the test:
//! PromptMQ with `--max-inflight 20 --max-queued-messages 500` loses messages at once.)
//!
//! Run:
//! * quick scales (in CI): `cargo test -p promptmq --test stress`
//! * large scales (`#[ignore]`d: 200×200, 500×500, 10,000 clients), in a release build:
//!   `cargo test -p promptmq --release --test stress -- --ignored --nocapture`.
//!   They raise the soft `RLIMIT_NOFILE` to the hard limit themselves (the broker, a child
//!   process, inherits it); 10,000 clients need a hard limit of at least 10,100.
//! * against mosquitto: `PROMPTMQ_TEST_BROKER=mosquitto cargo test -p promptmq --test stress`
//!
//! Each test prints one summary line (clients, messages, deliveries, time, deliveries/s);
//! `--nocapture` shows them. The tests of this file run one at a time ([`SERIAL`]): the
//! rates are then not shared with another stress test, and the file descriptors needed are
//! not added up.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

/// How long a client may wait for its next packet (or a publisher for credit) before the
/// run is declared stuck. Generous: a debug broker on 2 shared cores is slow, not stuck.
const STALL: Duration = Duration::from_secs(20);
/// Most messages published and not yet received by the slowest subscriber. Well below
/// PromptMQ's default room per subscriber (1,024 in flight + 1,000 queued): the broker
/// still counts a message as outstanding until the PUBACK sent after receiving it has
/// reached it, so the room needed is a little more than CREDIT (PromptMQ with 20 in flight
/// and 780 queued drops, with 20 + 800 it does not).
const CREDIT: u64 = 800;
/// Unacknowledged QoS 1 PUBLISHes per publisher: below mosquitto's Receive Maximum (20).
const PUB_WINDOW: usize = 16;
/// TCP connects in progress at once: mosquitto listens with a backlog of 100, and SYNs
/// beyond a full backlog are retried only after a second.
const CONNECTS_AT_ONCE: usize = 64;
/// Keep alive asked for: longer than any run, so no client needs to PINGREQ.
const KEEP_ALIVE: u16 = 600;
const PAYLOAD_LEN: usize = 32;
/// Bytes a client reads at most per system call (10,000 clients hold one buffer each).
const READ_CHUNK: usize = 8 * 1024;

/// One stress test at a time, in this binary (see the file header).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// Quick scales: run by default
// ---------------------------------------------------------------------------

// 10 publishers × 10 subscribers, QoS 0: 200,000 deliveries, exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_10x10_qos0() {
    fan_out("10x10-q0", 10, 10, 2_000, QoS::AtMostOnce).await;
}

// 10 publishers × 10 subscribers, QoS 1: 200,000 deliveries, exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_10x10_qos1() {
    fan_out("10x10-q1", 10, 10, 2_000, QoS::AtLeastOnce).await;
}

// 50 publishers × 50 subscribers, QoS 0: 250,000 deliveries, exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_50x50_qos0() {
    fan_out("50x50-q0", 50, 50, 100, QoS::AtMostOnce).await;
}

// 50 publishers × 50 subscribers, QoS 1: 250,000 deliveries, exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_50x50_qos1() {
    fan_out("50x50-q1", 50, 50, 100, QoS::AtLeastOnce).await;
}

// 1,000 clients connected at once: a 20-message broadcast to all (20,000 deliveries), a
// ring of 1,000 publishes, an orderly close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_1000() {
    many_clients(1_000, 20).await;
}

// ---------------------------------------------------------------------------
// Large scales: `cargo test -p promptmq --release --test stress -- --ignored --nocapture`
// ---------------------------------------------------------------------------

// 200 publishers × 200 subscribers, QoS 0: 10,000,000 deliveries, exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "large scale: run in release with -- --ignored"]
async fn fan_out_200x200_qos0() {
    fan_out("200x200-q0", 200, 200, 250, QoS::AtMostOnce).await;
}

// 200 publishers × 200 subscribers, QoS 1: 10,000,000 deliveries, exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "large scale: run in release with -- --ignored"]
async fn fan_out_200x200_qos1() {
    fan_out("200x200-q1", 200, 200, 250, QoS::AtLeastOnce).await;
}

// Beyond: 500 publishers × 500 subscribers, QoS 1: 5,000,000 deliveries, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "large scale: run in release with -- --ignored"]
async fn fan_out_500x500_qos1() {
    fan_out("500x500-q1", 500, 500, 20, QoS::AtLeastOnce).await;
}

// 10,000 clients connected at once: a 50-message broadcast to all (500,000 deliveries), a
// ring of 10,000 publishes, an orderly close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "large scale: run in release with -- --ignored"]
async fn many_clients_10000() {
    many_clients(10_000, 50).await;
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// P publishers × S subscribers, M messages per publisher, all at `qos` (see the header).
async fn fan_out(run: &str, publishers: usize, subscribers: usize, messages: u64, qos: QoS) {
    let _serial = SERIAL.lock().await;
    raise_nofile(publishers + subscribers + 100);
    let mut opts = BrokerOpts::new().cores(2);
    if is_mosquitto() {
        // mosquitto 2.0.11 (Debian 12's) logs "Outgoing messages are being dropped" and
        // loses QoS 1 deliveries here although no subscriber is ever more than CREDIT (800)
        // messages behind, below its max_queued_messages (1,000) plus its 20 in flight: the
        // first gap comes after ~1,100 messages per subscriber at the defaults, ~2,100 with
        // max_inflight_messages 1000. Its peak RSS also grows with the number of messages
        // sent (10×10 QoS 1: 31 MB for 2,000 per publisher, 75 MB for 6,000), and not with
        // one publisher and many subscribers. Cause not identified; with the queue limit out
        // of the way it loses nothing.
        opts = opts.max_queued_messages(10_000_000);
    }
    let mut broker = opts.start().await;
    let port = broker.port();
    let topics: Vec<String> = (0..publishers).map(|p| format!("stress/{run}/{p}")).collect();
    let filter = format!("stress/{run}/+");

    let subs = connect_many(
        port,
        (0..subscribers).map(|i| Spec::new(format!("{run}-sub-{i}"), i, vec![(filter.clone(), qos)])).collect(),
    )
    .await;
    // Publishers alternate the other way round, so both versions publish to both versions.
    let pubs =
        connect_many(port, (0..publishers).map(|i| Spec::new(format!("{run}-pub-{i}"), i + 1, vec![])).collect()).await;

    let flow = Arc::new(Flow::new(subscribers));
    let topics = Arc::new(topics);
    let started = Instant::now();
    let pacer = {
        let flow = flow.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                flow.refresh();
            }
        })
    };
    let mut tasks = JoinSet::new();
    for (i, c) in subs.into_iter().enumerate() {
        let (flow, topics) = (flow.clone(), topics.clone());
        tasks.spawn(async move {
            let check = Checker::new(0, topics.to_vec(), messages, qos);
            receive(c, check, Some(&flow.received[i])).await
        });
    }
    for (p, c) in pubs.into_iter().enumerate() {
        let (flow, topics) = (flow.clone(), topics.clone());
        tasks.spawn(async move { publish(c, &topics[p], p, messages, qos, Some(&*flow)).await });
    }
    let conns = join_all(tasks, &format!("{run} fan-out")).await;
    let elapsed = started.elapsed();
    pacer.abort();

    let published = publishers as u64 * messages;
    let deliveries = published * subscribers as u64;
    let counted: u64 = flow.received.iter().map(|r| r.load(Ordering::Acquire)).sum();
    assert_eq!(counted, deliveries, "{run}: deliveries counted by the subscribers");
    assert_eq!(flow.published.load(Ordering::Acquire), published, "{run}: messages published");
    eprintln!(
        "stress {run}: {publishers} publishers x {subscribers} subscribers, QoS {}, {published} messages, \
         {deliveries} deliveries in {:.2} s = {:.0} deliveries/s; broker peak RSS {} KiB",
        qos as u8,
        elapsed.as_secs_f64(),
        deliveries as f64 / elapsed.as_secs_f64(),
        broker.peak_rss_kib().map_or("?".to_string(), |k| k.to_string()),
    );
    quiet_then_disconnect(conns, run).await;
    assert!(broker.is_running(), "{run}: the broker died");
}

/// `n` clients connected at once, each subscribed to the broadcast topic (QoS 1) and to its
/// own ring topic (QoS 0).
async fn many_clients(n: usize, broadcasts: u64) {
    const BROADCAST: &str = "stress/many/all";
    let _serial = SERIAL.lock().await;
    raise_nofile(n + 100);
    let mut broker = BrokerOpts::new().cores(2).start().await;
    let port = broker.port();
    let ring = |i: usize| format!("stress/many/ring/{}", i % n);

    let t = Instant::now();
    let specs = (0..n)
        .map(|i| {
            let filters = vec![(BROADCAST.to_string(), QoS::AtLeastOnce), (ring(i), QoS::AtMostOnce)];
            Spec::new(format!("many-{i}"), i, filters)
        })
        .collect();
    let clients = connect_many(port, specs).await;
    let mut extra = connect_many(port, vec![Spec::new("many-broadcaster".to_string(), 1, vec![])]).await;
    let broadcaster = extra.pop().expect("one broadcaster");
    assert_eq!(clients.len(), n, "every client connected and subscribed");
    let connect_time = t.elapsed();

    // Broadcast: every one of the n connections gets all `broadcasts` messages, in order.
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for c in clients {
        tasks.spawn(receive(c, Checker::new(0, vec![BROADCAST.to_string()], broadcasts, QoS::AtLeastOnce), None));
    }
    tasks.spawn(publish(broadcaster, BROADCAST, 0, broadcasts, QoS::AtLeastOnce, None));
    let mut clients = join_all(tasks, "broadcast").await;
    let broadcast_time = t.elapsed();
    let broadcaster = clients.iter().position(|c| c.name == "many-broadcaster").expect("broadcaster");
    let mut broadcaster = clients.swap_remove(broadcaster);
    clients.sort_by_key(|c| c.name.strip_prefix("many-").and_then(|i| i.parse::<usize>().ok()));

    // Ring: client i publishes once to client i+1's topic and receives once from client i-1,
    // all at the same time.
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let (to, from) = (ring(i + 1), (i + n - 1) % n);
        let mine = ring(i);
        tasks.spawn(async move {
            let mut b = BytesMut::new();
            encode_publish(c.proto, &to, QoS::AtMostOnce, 0, payload(i, 0), &mut b)?;
            c.send(&b).await?;
            receive(c, Checker::new(from, vec![mine], 1, QoS::AtMostOnce), None).await
        });
    }
    let clients = join_all(tasks, "ring").await;
    let ring_time = t.elapsed();

    let t = Instant::now();
    quiet_then_disconnect(clients, "many clients").await;
    // Less the QUIET listen that comes first.
    let disconnect_time = t.elapsed().saturating_sub(QUIET);

    // The broker still serves after n clients came and went.
    broadcaster
        .subscribe(1, &[("stress/many/after".to_string(), QoS::AtLeastOnce)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut b = BytesMut::new();
    encode_publish(broadcaster.proto, "stress/many/after", QoS::AtLeastOnce, 1, payload(0, 0), &mut b)
        .unwrap_or_else(|e| panic!("{e}"));
    broadcaster.send(&b).await.unwrap_or_else(|e| panic!("{e}"));
    let (mut acked, mut got) = (false, false);
    while !(acked && got) {
        match broadcaster.rx.next(TIMEOUT).await.unwrap_or_else(|e| panic!("after the disconnects: {e}")) {
            In::PubAck { pkid: 1, reason: 0 } => acked = true,
            In::Publish { topic, pkid, .. } if topic == "stress/many/after" => {
                let mut b = BytesMut::new();
                encode_puback(broadcaster.proto, pkid, &mut b).unwrap_or_else(|e| panic!("{e}"));
                broadcaster.send(&b).await.unwrap_or_else(|e| panic!("{e}"));
                got = true;
            }
            other => panic!("after the disconnects: unexpected {other:?}"),
        }
    }
    broadcaster.disconnect().await.unwrap_or_else(|e| panic!("{e}"));

    let deliveries = n as u64 * broadcasts;
    eprintln!(
        "stress many clients: {n} clients connected at once in {:.2} s; broadcast of {broadcasts} QoS 1 \
         messages = {deliveries} deliveries in {:.2} s = {:.0} deliveries/s; ring of {n} QoS 0 publishes in \
         {:.2} s; {n} DISCONNECTs closed in {:.2} s; broker peak RSS {} KiB",
        connect_time.as_secs_f64(),
        broadcast_time.as_secs_f64(),
        deliveries as f64 / broadcast_time.as_secs_f64(),
        ring_time.as_secs_f64(),
        disconnect_time.as_secs_f64(),
        broker.peak_rss_kib().map_or("?".to_string(), |k| k.to_string()),
    );
    assert!(broker.is_running(), "many clients: the broker died");
}

// ---------------------------------------------------------------------------
// Pacing
// ---------------------------------------------------------------------------

/// End-to-end credit shared by the publishers and subscribers of one fan-out run.
struct Flow {
    /// Messages published (credit taken before the PUBLISH is written).
    published: AtomicU64,
    /// Messages received so far, per subscriber.
    received: Vec<AtomicU64>,
    /// The smallest of `received`, as last computed by [`Flow::refresh`].
    slowest: AtomicU64,
    /// Signalled when `slowest` grows.
    progress: Notify,
}

impl Flow {
    fn new(subscribers: usize) -> Flow {
        Flow {
            published: AtomicU64::new(0),
            received: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            slowest: AtomicU64::new(0),
            progress: Notify::new(),
        }
    }

    /// Takes credit for one message: waits while `CREDIT` messages are published and not
    /// yet received by every subscriber. Every message goes to every subscriber, so no
    /// subscriber can then be more than `CREDIT` messages behind.
    async fn reserve(&self) -> Result<(), String> {
        loop {
            // Registered before the check, so a refresh between check and wait is not missed.
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            let slowest = self.slowest.load(Ordering::Acquire);
            let published = self.published.load(Ordering::Acquire);
            if published.saturating_sub(slowest) < CREDIT {
                if self
                    .published
                    .compare_exchange(published, published + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if tokio::time::timeout(STALL, progressed).await.is_err() {
                return Err(format!(
                    "no subscriber progress for {STALL:?}: {published} messages published, the slowest \
                     subscriber has received {slowest}"
                ));
            }
        }
    }

    /// Recomputes `slowest` and wakes the publishers waiting for credit if it grew.
    fn refresh(&self) {
        let min = self.received.iter().map(|r| r.load(Ordering::Acquire)).min().unwrap_or(0);
        if min > self.slowest.load(Ordering::Acquire) {
            self.slowest.store(min, Ordering::Release);
            self.progress.notify_waiters();
        }
    }
}

// ---------------------------------------------------------------------------
// Publishing and receiving
// ---------------------------------------------------------------------------

/// Publishes `messages` messages (sequence 0..messages) on `topic` as publisher `index`;
/// for QoS 1 with up to `PUB_WINDOW` unacknowledged and every PUBACK checked. Returns the
/// connection once all are written (QoS 0) or acknowledged (QoS 1).
async fn publish(
    c: Conn,
    topic: &str,
    index: usize,
    messages: u64,
    qos: QoS,
    flow: Option<&Flow>,
) -> Result<Conn, String> {
    let Conn { name, proto, mut rx, mut tx } = c;
    let window = Semaphore::new(PUB_WINDOW);
    // Shared by the two halves below (one task: never contended).
    let outstanding = Mutex::new(HashSet::new());
    let (tx_ref, rx_ref) = (&mut tx, &mut rx);
    let writer = async {
        let mut b = BytesMut::new();
        for seq in 0..messages {
            if let Some(flow) = flow {
                flow.reserve().await.map_err(|e| format!("{name}: {e}"))?;
            }
            // Packet identifiers cycle over 1..=65535; at most PUB_WINDOW are in use.
            let pkid = if qos == QoS::AtMostOnce { 0 } else { (seq % 65_535) as u16 + 1 };
            if qos != QoS::AtMostOnce {
                window.acquire().await.map_err(|e| format!("{name}: {e}"))?.forget();
                outstanding.lock().expect("not poisoned").insert(pkid);
            }
            b.clear();
            encode_publish(proto, topic, qos, pkid, payload(index, seq), &mut b)?;
            tx_ref.write_all(&b).await.map_err(|e| format!("{name}: write PUBLISH #{seq}: {e}"))?;
        }
        Ok::<(), String>(())
    };
    let acks = async {
        if qos == QoS::AtMostOnce {
            return Ok(());
        }
        for acked in 0..messages {
            let what = format!("{name}: after {acked} of {messages} PUBACKs");
            match rx_ref.next(STALL).await.map_err(|e| format!("{what}: {e}"))? {
                In::PubAck { pkid, reason } => {
                    if !outstanding.lock().expect("not poisoned").remove(&pkid) {
                        return Err(format!("{what}: PUBACK for packet id {pkid}, which is not in flight"));
                    }
                    // 5.0: 0x10 (no matching subscribers) or an error would mean the message
                    // did not reach the subscribers.
                    if reason != 0 {
                        return Err(format!("{what}: PUBACK {pkid} with reason {reason:#04x}"));
                    }
                    window.add_permits(1);
                }
                other => return Err(format!("{what}: unexpected {other:?}")),
            }
        }
        Ok(())
    };
    tokio::try_join!(writer, acks)?;
    Ok(Conn { name, proto, rx, tx })
}

/// What one subscriber must receive: from each of the publishers `first..first +
/// topics.len()`, exactly `per_publisher` messages on `topics[p - first]`, in sequence
/// order, at `qos`, neither retained nor marked DUP.
struct Checker {
    first: usize,
    topics: Vec<String>,
    per_publisher: u64,
    qos: QoS,
    next: Vec<u64>,
}

impl Checker {
    fn new(first: usize, topics: Vec<String>, per_publisher: u64, qos: QoS) -> Checker {
        let next = vec![0; topics.len()];
        Checker { first, topics, per_publisher, qos, next }
    }

    fn total(&self) -> u64 {
        self.topics.len() as u64 * self.per_publisher
    }

    fn accept(&mut self, topic: &str, qos: QoS, dup: bool, retain: bool, body: &[u8]) -> Result<(), String> {
        let (p, seq) = parse_payload(body)?;
        let slot = p
            .checked_sub(self.first)
            .filter(|s| *s < self.topics.len())
            .ok_or_else(|| format!("message from publisher {p}, not one of this subscriber's"))?;
        if topic != self.topics[slot] {
            return Err(format!("publisher {p}'s #{seq} arrived on {topic}, expected {}", self.topics[slot]));
        }
        if qos != self.qos {
            return Err(format!("publisher {p}'s #{seq} delivered at {qos:?}, expected {:?}", self.qos));
        }
        // No reconnect happens, so nothing is ever redelivered [MQTT-4.4.0-1]: no DUP.
        if dup || retain {
            return Err(format!("publisher {p}'s #{seq}: DUP={dup} RETAIN={retain}, expected neither"));
        }
        let want = self.next[slot];
        if seq != want {
            let what = if seq < want { "repeated or out of order" } else { "a gap: lost or reordered" };
            return Err(format!("publisher {p}'s #{seq} arrived when #{want} was due ({what}) [MQTT-4.6.0-5]"));
        }
        if seq >= self.per_publisher {
            return Err(format!("publisher {p}'s #{seq}: only {} were published", self.per_publisher));
        }
        self.next[slot] += 1;
        Ok(())
    }
}

/// Reads until `check` has received everything it expects, acknowledging QoS 1 messages
/// as they come (the acknowledgements of one read go out in one write). `progress` is
/// kept up to date with the count received, for the publishers' credit.
async fn receive(mut c: Conn, mut check: Checker, progress: Option<&AtomicU64>) -> Result<Conn, String> {
    let total = check.total();
    let mut got = 0u64;
    let mut acks = BytesMut::new();
    loop {
        while let Some(packet) = c.rx.try_decode().map_err(|e| format!("{}: {e}", c.name))? {
            match packet {
                In::Publish { topic, qos, pkid, dup, retain, payload } => {
                    check
                        .accept(&topic, qos, dup, retain, &payload)
                        .map_err(|e| format!("{}: after {got} of {total} messages: {e}", c.name))?;
                    got += 1;
                    if qos == QoS::AtLeastOnce {
                        encode_puback(c.proto, pkid, &mut acks)?;
                    }
                }
                In::Other(packet) => return Err(format!("{}: unexpected {packet}", c.name)),
                other => return Err(format!("{}: unexpected {other:?}", c.name)),
            }
        }
        if !acks.is_empty() {
            c.send(&acks).await?;
            acks.clear();
        }
        if let Some(progress) = progress {
            progress.store(got, Ordering::Release);
        }
        if got == total {
            return Ok(c);
        }
        c.rx.fill(STALL).await.map_err(|e| format!("{}: after {got} of {total} messages: {e}", c.name))?;
    }
}

/// Listens `QUIET` on every connection (nothing more may arrive: a late duplicate would),
/// then sends DISCONNECT on each and waits for the broker to close it.
async fn quiet_then_disconnect(conns: Vec<Conn>, run: &str) {
    let mut tasks = JoinSet::new();
    for mut c in conns {
        tasks.spawn(async move {
            c.rx.expect_quiet(QUIET).await.map_err(|e| format!("{}: {e}", c.name))?;
            c.disconnect().await
        });
    }
    join_all(tasks, &format!("{run}: quiet and disconnect")).await;
}

/// Awaits every task; on the first failure, stops the others and fails with its message.
async fn join_all<T: 'static>(mut tasks: JoinSet<Result<T, String>>, what: &str) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                tasks.abort_all();
                panic!("{what}: {e}");
            }
            Err(e) => {
                tasks.abort_all();
                panic!("{what}: a task failed: {e}");
            }
        }
    }
    out
}

/// Payload: publisher index (4 bytes), sequence number (8 bytes), filler to `PAYLOAD_LEN`
/// derived from both, so a corrupted or misrouted payload shows.
fn payload(publisher: usize, seq: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(PAYLOAD_LEN);
    p.extend_from_slice(&(publisher as u32).to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.resize(PAYLOAD_LEN, filler(publisher, seq));
    p
}

fn filler(publisher: usize, seq: u64) -> u8 {
    (publisher as u8) ^ (seq as u8) ^ 0x5a
}

fn parse_payload(b: &[u8]) -> Result<(usize, u64), String> {
    if b.len() != PAYLOAD_LEN {
        return Err(format!("payload of {} bytes, expected {PAYLOAD_LEN}: {b:02x?}", b.len()));
    }
    let p = u32::from_be_bytes(b[..4].try_into().expect("4 bytes")) as usize;
    let seq = u64::from_be_bytes(b[4..12].try_into().expect("8 bytes"));
    if b[12..].iter().any(|x| *x != filler(p, seq)) {
        return Err(format!("corrupted payload {b:02x?}"));
    }
    Ok((p, seq))
}

// ---------------------------------------------------------------------------
// A light MQTT client
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    V4,
    V5,
}

/// A client to connect: id, protocol (even `alternate`: 3.1.1, odd: 5.0) and the filters
/// to subscribe to (one SUBSCRIBE), if any.
struct Spec {
    id: String,
    proto: Proto,
    filters: Vec<(String, QoS)>,
}

impl Spec {
    fn new(id: String, alternate: usize, filters: Vec<(String, QoS)>) -> Spec {
        let proto = if alternate.is_multiple_of(2) { Proto::V4 } else { Proto::V5 };
        Spec { id, proto, filters }
    }
}

/// Connects (and subscribes) every client of `specs`, `CONNECTS_AT_ONCE` at a time; the
/// connections in the order of `specs`.
async fn connect_many(port: u16, specs: Vec<Spec>) -> Vec<Conn> {
    let gate = Arc::new(Semaphore::new(CONNECTS_AT_ONCE));
    let mut tasks = JoinSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _turn = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let mut c = Conn::connect(port, &spec.id, spec.proto).await?;
            if !spec.filters.is_empty() {
                c.subscribe(1, &spec.filters).await?;
            }
            Ok((i, c))
        });
    }
    let mut conns = join_all(tasks, "connect").await;
    conns.sort_by_key(|(i, _)| *i);
    conns.into_iter().map(|(_, c)| c).collect()
}

/// A received packet, the same for both protocol versions.
#[derive(Debug)]
enum In {
    ConnAck { accepted: bool, detail: String },
    Publish { topic: String, qos: QoS, pkid: u16, dup: bool, retain: bool, payload: Bytes },
    PubAck { pkid: u16, reason: u8 },
    SubAck { pkid: u16, codes: Vec<u8> },
    Other(String),
}

impl In {
    fn from_v4(p: v4::Packet) -> In {
        match p {
            v4::Packet::ConnAck(a) => {
                In::ConnAck { accepted: a.code == v4::ConnectReturnCode::Success, detail: format!("{a:?}") }
            }
            v4::Packet::Publish(p) => In::Publish {
                topic: p.topic,
                qos: p.qos,
                pkid: p.pkid,
                dup: p.dup,
                retain: p.retain,
                payload: p.payload,
            },
            v4::Packet::PubAck(a) => In::PubAck { pkid: a.pkid, reason: 0 },
            v4::Packet::SubAck(a) => {
                let codes = a
                    .return_codes
                    .into_iter()
                    .map(|c| match c {
                        v4::SubscribeReasonCode::Success(q) => q as u8,
                        v4::SubscribeReasonCode::Failure => 0x80,
                    })
                    .collect();
                In::SubAck { pkid: a.pkid, codes }
            }
            other => In::Other(format!("{other:?}")),
        }
    }

    fn from_v5(p: v5::Packet) -> In {
        match p {
            v5::Packet::ConnAck(a) => {
                In::ConnAck { accepted: a.code == v5::ConnectReturnCode::Success, detail: format!("{a:?}") }
            }
            v5::Packet::Publish(p) => In::Publish {
                topic: p.topic,
                qos: p.qos,
                pkid: p.pkid,
                dup: p.dup,
                retain: p.retain,
                payload: p.payload,
            },
            v5::Packet::PubAck(a) => In::PubAck { pkid: a.pkid, reason: a.reason as u8 },
            v5::Packet::SubAck(a) => {
                In::SubAck { pkid: a.pkid, codes: a.return_codes.into_iter().map(|c| c as u8).collect() }
            }
            other => In::Other(format!("{other:?}")),
        }
    }
}

/// The receiving half of a connection and what it has read but not yet decoded.
struct Reader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    proto: Proto,
}

impl Reader {
    /// Decodes the next complete packet already read, if any.
    fn try_decode(&mut self) -> Result<Option<In>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let decoded = match self.proto {
            Proto::V4 => v4::read(&mut self.buf, usize::MAX).map(In::from_v4),
            Proto::V5 => v5::read(&mut self.buf, usize::MAX).map(In::from_v5),
        };
        match decoded {
            Ok(p) => Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(format!("undecodable packet ({e:?}) at {:02x?}", &self.buf[..self.buf.len().min(32)])),
        }
    }

    /// Reads more bytes; fails if none come within `dur` or the connection closes.
    async fn fill(&mut self, dur: Duration) -> Result<(), String> {
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout(dur, self.rd.read_buf(&mut self.buf)).await {
            Err(_) => Err(format!("nothing received for {dur:?}")),
            Ok(Ok(0)) => Err("the broker closed the connection".to_string()),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn next(&mut self, dur: Duration) -> Result<In, String> {
        loop {
            if let Some(p) = self.try_decode()? {
                return Ok(p);
            }
            self.fill(dur).await?;
        }
    }

    /// Asserts that nothing arrives within `dur` and the connection stays open.
    async fn expect_quiet(&mut self, dur: Duration) -> Result<(), String> {
        match tokio::time::timeout(dur, self.next(STALL)).await {
            Err(_) => Ok(()),
            Ok(Ok(p)) => Err(format!("unexpected {p:?} after the last expected packet")),
            Ok(Err(e)) => Err(e),
        }
    }
}

/// A raw MQTT connection split in halves, so that one task can write while another reads.
struct Conn {
    name: String,
    proto: Proto,
    rx: Reader,
    tx: OwnedWriteHalf,
}

impl Conn {
    /// TCP connect, CONNECT with a clean session, and a successful CONNACK.
    async fn connect(port: u16, id: &str, proto: Proto) -> Result<Conn, String> {
        let stream = match tokio::time::timeout(STALL, TcpStream::connect(("127.0.0.1", port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("{id}: TCP connect: {e}")),
            Err(_) => return Err(format!("{id}: TCP connect timed out")),
        };
        stream.set_nodelay(true).map_err(|e| format!("{id}: nodelay: {e}"))?;
        let (rd, tx) = stream.into_split();
        let mut c = Conn { name: id.to_string(), proto, rx: Reader { rd, buf: BytesMut::new(), proto }, tx };
        let mut b = BytesMut::new();
        let written = match proto {
            Proto::V4 => {
                let mut m = connect4(id, true);
                m.keep_alive = KEEP_ALIVE;
                m.write(&mut b)
            }
            Proto::V5 => {
                let mut m = connect5(id, true);
                m.keep_alive = KEEP_ALIVE;
                m.write(&mut b)
            }
        };
        written.map_err(|e| format!("{id}: encode CONNECT: {e:?}"))?;
        c.send(&b).await?;
        match c.rx.next(STALL).await.map_err(|e| format!("{id}: waiting for CONNACK: {e}"))? {
            In::ConnAck { accepted: true, .. } => Ok(c),
            In::ConnAck { accepted: false, detail } => Err(format!("{id}: connection refused: {detail}")),
            other => Err(format!("{id}: expected a successful CONNACK, got {other:?}")),
        }
    }

    async fn send(&mut self, b: &[u8]) -> Result<(), String> {
        self.tx.write_all(b).await.map_err(|e| format!("{}: write: {e}", self.name))
    }

    /// One SUBSCRIBE with all `filters`; every one must be granted the QoS asked for.
    async fn subscribe(&mut self, pkid: u16, filters: &[(String, QoS)]) -> Result<(), String> {
        let mut b = BytesMut::new();
        let written = match self.proto {
            Proto::V4 => v4::Subscribe {
                pkid,
                filters: filters.iter().map(|(f, q)| v4::SubscribeFilter::new(f.clone(), *q)).collect(),
            }
            .write(&mut b),
            Proto::V5 => v5::Subscribe {
                pkid,
                filters: filters.iter().map(|(f, q)| v5::SubscribeFilter::new(f.clone(), *q)).collect(),
                properties: None,
            }
            .write(&mut b),
        };
        written.map_err(|e| format!("{}: encode SUBSCRIBE: {e:?}", self.name))?;
        self.send(&b).await?;
        let want: Vec<u8> = filters.iter().map(|(_, q)| *q as u8).collect();
        match self.rx.next(STALL).await.map_err(|e| format!("{}: waiting for SUBACK: {e}", self.name))? {
            In::SubAck { pkid: got, codes } if got == pkid && codes == want => Ok(()),
            other => Err(format!("{}: expected SUBACK {pkid} granting {want:?}, got {other:?}", self.name)),
        }
    }

    /// DISCONNECT (also a valid 5.0 one: reason 0 may be omitted), then the broker must
    /// close the connection without sending anything.
    async fn disconnect(mut self) -> Result<(), String> {
        self.send(&[0xE0, 0x00]).await?;
        let mut rest = Vec::new();
        match tokio::time::timeout(STALL, self.rx.rd.read_to_end(&mut rest)).await {
            Ok(Ok(_)) if rest.is_empty() && self.rx.buf.is_empty() => Ok(()),
            Ok(Ok(_)) => Err(format!("{}: received {rest:02x?} after DISCONNECT", self.name)),
            // A reset instead of a FIN also closes the connection.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Ok(Err(e)) => Err(format!("{}: read after DISCONNECT: {e}", self.name)),
            Err(_) => Err(format!("{}: still open {STALL:?} after DISCONNECT", self.name)),
        }
    }
}

fn encode_publish(
    proto: Proto,
    topic: &str,
    qos: QoS,
    pkid: u16,
    payload: Vec<u8>,
    b: &mut BytesMut,
) -> Result<(), String> {
    let written = match proto {
        Proto::V4 => {
            let mut p = v4::Publish::new(topic, qos, payload);
            p.pkid = pkid;
            p.write(b)
        }
        Proto::V5 => {
            let mut p = v5::Publish::new(topic, qos, payload);
            p.pkid = pkid;
            p.write(b)
        }
    };
    written.map(|_| ()).map_err(|e| format!("encode PUBLISH: {e:?}"))
}

fn encode_puback(proto: Proto, pkid: u16, b: &mut BytesMut) -> Result<(), String> {
    let written = match proto {
        Proto::V4 => v4::PubAck::new(pkid).write(b),
        Proto::V5 => v5::PubAck::new(pkid).write(b),
    };
    written.map(|_| ()).map_err(|e| format!("encode PUBACK: {e:?}"))
}

/// Raises the soft limit on open files to the hard limit (the broker, started afterwards,
/// inherits it) and fails if that is still below `need`.
#[cfg(unix)]
fn raise_nofile(need: usize) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) only writes the struct passed.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    let need = need as libc::rlim_t;
    if lim.rlim_cur < lim.rlim_max {
        // An unlimited hard limit still cannot be reached (Linux: fs.nr_open, macOS:
        // OPEN_MAX): try a large finite value, then just what is needed.
        for want in [lim.rlim_max.min(1 << 20), need.max(lim.rlim_cur).min(lim.rlim_max)] {
            let raised = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max };
            // SAFETY: setrlimit(2) only reads the struct passed.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_cur = want;
                break;
            }
        }
    }
    assert!(
        lim.rlim_cur >= need,
        "this test needs {need} open files; the limit is {} (hard {}): raise the hard limit (ulimit -Hn)",
        lim.rlim_cur,
        lim.rlim_max
    );
}

#[cfg(not(unix))]
fn raise_nofile(_need: usize) {}
