//! `cargo bench -p promptmq --bench e2e`: publish-to-deliver latency and throughput through
//! a whole broker, over loopback TCP, in one process.
//!
//! The broker is started with `promptmq::server::start` on 127.0.0.1 (a free port) with 2
//! cores, first without the write-ahead log, then with the log in `immediate` mode in a
//! fresh directory under the system temp directory (a QoS 1 PUBACK then waits for the
//! fdatasync that covers the message; QoS 0 is never logged, so only QoS 1 is run there).
//! The clients are plain `std::net::TcpStream`s speaking MQTT 3.1.1, with packets encoded
//! and decoded by `promptmq::codec`. Connections are handed to the cores round-robin
//! (`accept_mode = handoff`), so the subscriber always sits on core 1 and the publisher on
//! core 0, and each topic is picked so that its shard (`core::shard_of`, the core that
//! orders and routes it) is a known one: every message then crosses cores exactly once.
//! With `reuseport` the kernel's hash would place the connections, and runs would differ by
//! it. With the log, both placements are run, because the PUBACK of a logged message
//! leaves from the shard once the sync covers it, and only crosses back to the publisher's
//! core when the shard is the subscriber's.
//!
//! Each message carries its send time (nanoseconds since the bench started) in the first 8
//! bytes of its 64-byte payload; the subscriber's receive time minus that is the latency.
//! - one at a time: the next PUBLISH goes only after the previous one was delivered (and,
//!   for QoS 1, acknowledged by the broker, whose PUBACK latency is its own row); ops/s is
//!   round trips per second, which is 1 / latency plus the client's own work.
//! - pipelined: 100k messages as fast as the broker takes them (QoS 1: at most 256
//!   unacknowledged), the subscriber reading on its own thread; ops/s is messages delivered
//!   per second, and the latency is then mostly time spent queued. QoS 0 messages the
//!   broker drops for a slow subscriber would be counted as lost in the row's name.
//!
//! How to read it: the clients and the broker's two cores share the machine's CPUs, so on
//! a 2-CPU machine this measures the broker competing with its clients, as on a loaded
//! host. The broker's threads keep running when the bench ends; the process just exits.
//!
//! The run takes about 15 s; `PROMPTMQ_BENCH_SECS=60` measures for longer (and sends
//! proportionally more pipelined messages).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use promptmq::codec::{
    check_frame, decode_packet, encode_packet, encode_publish, Ack, Connect, Packet, Properties, ProtocolVersion,
    Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use promptmq::config::{AcceptMode, Config, WalSyncMode};
use promptmq::core::shard_of;

use common::{budget_secs, histogram, print_header, print_row, Row};

const V: ProtocolVersion = ProtocolVersion::V311;
const PAYLOAD: usize = 64;
/// Unacknowledged QoS 1 PUBLISHes the pipelined publisher allows itself.
const WINDOW: u64 = 256;
/// Messages encoded per `write` by the pipelined publisher.
const WRITE_BATCH: u64 = 32;
/// Longest wait for anything the broker owes the bench; past it the bench fails (or, for
/// a pipelined QoS 0 run, counts the missing messages as lost).
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the pipelined subscriber waits for more before it counts the rest as lost.
const QUIET: Duration = Duration::from_secs(2);

/// The clock every timestamp is taken against.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn stamped_payload() -> Bytes {
    let mut payload = vec![0x5a; PAYLOAD];
    payload[..8].copy_from_slice(&now_ns().to_le_bytes());
    Bytes::from(payload)
}

fn stamp_of(payload: &[u8]) -> u64 {
    let bytes: [u8; 8] = payload.get(..8).and_then(|b| b.try_into().ok()).expect("payload carries a timestamp");
    u64::from_le_bytes(bytes)
}

/// One MQTT 3.1.1 connection over a blocking socket.
struct Client {
    stream: TcpStream,
    /// Received bytes not yet decoded.
    inbox: BytesMut,
    /// Encoded packets not yet written.
    outbox: BytesMut,
    chunk: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, client_id: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the broker");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        let mut c = Client { stream, inbox: BytesMut::new(), outbox: BytesMut::new(), chunk: vec![0; 64 * 1024] };
        c.queue(&Packet::Connect(Connect {
            protocol: V,
            clean_start: true,
            keep_alive: 0,
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }));
        c.flush();
        match c.read_packet() {
            Packet::ConnAck(ack) if ack.code == 0 => c,
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.queue(&Packet::Subscribe(Subscribe {
            pkid: 1,
            properties: Properties::default(),
            filters: vec![SubscribeFilter {
                filter: Bytes::copy_from_slice(filter.as_bytes()),
                options: SubscriptionOptions { qos, ..SubscriptionOptions::default() },
            }],
        }));
        self.flush();
        match self.read_packet() {
            Packet::SubAck(ack) if ack.reasons == [qos as u8] => {}
            other => panic!("expected a SUBACK granting {qos:?}, got {other:?}"),
        }
    }

    fn queue(&mut self, packet: &Packet) {
        encode_packet(packet, V, &mut self.outbox, usize::MAX).expect("encode");
    }

    fn queue_publish(&mut self, topic: &Bytes, qos: QoS, pkid: u16) {
        let mut p = Publish::new(topic.clone(), qos, stamped_payload());
        p.pkid = pkid;
        encode_publish(&p, V, &mut self.outbox).expect("encode");
    }

    fn flush(&mut self) {
        if !self.outbox.is_empty() {
            self.stream.write_all(&self.outbox).expect("write to the broker");
            self.outbox.clear();
        }
    }

    /// The next packet already received, if a whole one is there.
    fn buffered(&mut self) -> Option<Packet> {
        let frame = check_frame(&self.inbox, usize::MAX).expect("well-formed frame from the broker")?;
        let bytes = self.inbox.split_to(frame.total_len).freeze();
        Some(decode_packet(bytes, Some(V)).expect("well-formed packet from the broker"))
    }

    /// Waits for more bytes; `false` when nothing came within the read timeout or the
    /// connection was closed.
    fn fill(&mut self) -> bool {
        match self.stream.read(&mut self.chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.inbox.extend_from_slice(&self.chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => panic!("read from the broker: {e}"),
        }
    }

    fn read_packet(&mut self) -> Packet {
        loop {
            if let Some(p) = self.buffered() {
                return p;
            }
            assert!(self.fill(), "the broker closed the connection or sent nothing for {TIMEOUT:?}");
        }
    }

    fn disconnect(mut self) {
        self.queue(&Packet::Disconnect(promptmq::codec::Disconnect { reason: 0, properties: Properties::default() }));
        let _ = self.stream.write_all(&self.outbox);
    }
}

/// A subscriber and a publisher on `topic`, in that order (see the module doc on handoff).
fn pair(addr: SocketAddr, topic: &str, qos: QoS) -> (Client, Client) {
    let mut sub = Client::connect(addr, &format!("{topic}-sub"));
    sub.subscribe(topic, qos);
    let publ = Client::connect(addr, &format!("{topic}-pub"));
    (sub, publ)
}

/// Ping-pong: returns the deliver row and, for QoS 1, the PUBACK row.
fn one_at_a_time(addr: SocketAddr, topic: &str, qos: QoS, time: Duration) -> (Row, Option<Row>) {
    let (mut sub, mut publ) = pair(addr, topic, qos);
    let topic_bytes = Bytes::copy_from_slice(topic.as_bytes());
    let mut deliver = histogram(60_000_000_000);
    let mut puback = histogram(60_000_000_000);
    let mut pkid = 0u16;
    let mut rounds = 0u64;
    // Warm-up: the first messages find cold caches and unsized buffers.
    let warm_until = Instant::now() + time / 10;
    let began = Instant::now();
    let until = warm_until + time;
    let mut measured_from = None;
    while Instant::now() < until {
        let warm = Instant::now() < warm_until;
        if !warm && measured_from.is_none() {
            measured_from = Some(Instant::now());
        }
        pkid = pkid % u16::MAX + 1;
        let sent = now_ns();
        publ.queue_publish(&topic_bytes, qos, pkid);
        publ.flush();
        match sub.read_packet() {
            Packet::Publish(p) => {
                if !warm {
                    let _ = deliver.record(now_ns().saturating_sub(stamp_of(&p.payload)).max(1));
                }
                if p.qos == QoS::AtLeastOnce {
                    sub.queue(&Packet::PubAck(Ack::new(p.pkid, 0)));
                    sub.flush();
                }
            }
            other => panic!("subscriber expected PUBLISH, got {other:?}"),
        }
        if qos == QoS::AtLeastOnce {
            match publ.read_packet() {
                Packet::PubAck(a) if a.pkid == pkid => {
                    if !warm {
                        let _ = puback.record(now_ns().saturating_sub(sent).max(1));
                    }
                }
                other => panic!("publisher expected PUBACK {pkid}, got {other:?}"),
            }
        }
        if !warm {
            rounds += 1;
        }
    }
    let secs = measured_from.unwrap_or(began).elapsed().as_secs_f64().max(1e-9);
    sub.disconnect();
    publ.disconnect();
    let q = qos as u8;
    let rate = Some(rounds as f64 / secs);
    let deliver = Row::new(format!("QoS {q} deliver, one at a time"), rate, &deliver, 1.0);
    let puback = (qos == QoS::AtLeastOnce).then(|| Row::new("QoS 1 PUBACK, one at a time", rate, &puback, 1.0));
    (deliver, puback)
}

/// What the subscriber thread of a pipelined run saw.
struct Received {
    latency: Histogram<u64>,
    count: u64,
    last_ns: u64,
}

/// Reads PUBLISHes (acknowledging QoS 1 ones in batches) until `goal` of them came, or the
/// broker goes quiet for [`QUIET`]. The publisher lowers `goal` when it stops short.
fn receive(mut sub: Client, goal: &AtomicU64) -> Received {
    sub.stream.set_read_timeout(Some(QUIET)).expect("read timeout");
    let mut latency = histogram(60_000_000_000);
    let mut count = 0;
    let mut last_ns = 0;
    while count < goal.load(Ordering::Acquire) {
        while let Some(packet) = sub.buffered() {
            match packet {
                Packet::Publish(p) => {
                    last_ns = now_ns();
                    let _ = latency.record(last_ns.saturating_sub(stamp_of(&p.payload)).max(1));
                    count += 1;
                    if p.qos == QoS::AtLeastOnce {
                        sub.queue(&Packet::PubAck(Ack::new(p.pkid, 0)));
                    }
                }
                other => panic!("subscriber expected PUBLISH, got {other:?}"),
            }
        }
        // One write for every acknowledgement of what one read brought.
        sub.flush();
        if count < goal.load(Ordering::Acquire) && !sub.fill() {
            break;
        }
    }
    sub.disconnect();
    Received { latency, count, last_ns }
}

/// Returns the deliver row and, for QoS 1, the PUBACK row.
fn pipelined(addr: SocketAddr, topic: &str, qos: QoS, n: u64, cap: Duration) -> Vec<Row> {
    let (sub, mut publ) = pair(addr, topic, qos);
    let topic_bytes = Bytes::copy_from_slice(topic.as_bytes());
    let goal = Arc::new(AtomicU64::new(n));
    let subscriber = {
        let goal = Arc::clone(&goal);
        std::thread::Builder::new().name("e2e-sub".into()).spawn(move || receive(sub, &goal)).expect("spawn")
    };
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack_ns = Arc::new(AtomicU64::new(0));
    // Send time by packet id, for the PUBACK latency.
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..=u16::MAX).map(|_| AtomicU64::new(0)).collect());
    let puback = Arc::new(std::sync::Mutex::new(histogram(60_000_000_000)));
    if qos == QoS::AtLeastOnce {
        // A second thread reads the publisher's PUBACKs, so that writing never waits on
        // reading. It ends when the connection closes (after the DISCONNECT below).
        let stream = publ.stream.try_clone().expect("clone the publisher's socket");
        let mut reader = Client { stream, inbox: BytesMut::new(), outbox: BytesMut::new(), chunk: vec![0; 64 * 1024] };
        let (acked, last_ack_ns) = (Arc::clone(&acked), Arc::clone(&last_ack_ns));
        let (sent_at, puback) = (Arc::clone(&sent_at), Arc::clone(&puback));
        std::thread::Builder::new()
            .name("e2e-acks".into())
            .spawn(move || loop {
                match reader.buffered() {
                    Some(Packet::PubAck(a)) => {
                        let t = sent_at[usize::from(a.pkid)].load(Ordering::Acquire);
                        let now = now_ns();
                        let mut h = puback.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = h.record(now.saturating_sub(t).max(1));
                        drop(h);
                        last_ack_ns.store(now, Ordering::Release);
                        acked.fetch_add(1, Ordering::AcqRel);
                    }
                    Some(other) => panic!("publisher expected PUBACK, got {other:?}"),
                    None if !reader.fill() => return,
                    None => {}
                }
            })
            .expect("spawn");
    }
    let began = now_ns();
    let deadline = Instant::now() + cap;
    let mut sent = 0u64;
    while sent < n && Instant::now() < deadline {
        let room = match qos {
            QoS::AtMostOnce => WRITE_BATCH,
            _ => (WINDOW - (sent - acked.load(Ordering::Acquire))).min(WRITE_BATCH),
        };
        if room == 0 {
            std::thread::yield_now();
            continue;
        }
        for _ in 0..room.min(n - sent) {
            // Packet ids cycle through 1..=65535; the window keeps reuse far apart.
            let pkid = (sent % u64::from(u16::MAX)) as u16 + 1;
            sent_at[usize::from(pkid)].store(now_ns(), Ordering::Release);
            publ.queue_publish(&topic_bytes, qos, pkid);
            sent += 1;
        }
        publ.flush();
    }
    goal.store(sent, Ordering::Release);
    let got = subscriber.join().expect("subscriber thread");
    let acks_due = Instant::now() + QUIET;
    while qos == QoS::AtLeastOnce && acked.load(Ordering::Acquire) < sent && Instant::now() < acks_due {
        std::thread::sleep(Duration::from_millis(1));
    }
    publ.disconnect();
    let secs = got.last_ns.saturating_sub(began) as f64 / 1e9;
    let q = qos as u8;
    let k = sent / 1000;
    let mut name = format!("QoS {q} deliver, {k}k pipelined");
    if got.count < sent {
        name.push_str(&format!(" (lost {})", sent - got.count));
    }
    let mut rows = vec![Row::new(name, Some(got.count as f64 / secs.max(1e-9)), &got.latency, 1.0)];
    if qos == QoS::AtLeastOnce {
        let acked = acked.load(Ordering::Acquire);
        let secs = last_ack_ns.load(Ordering::Acquire).saturating_sub(began) as f64 / 1e9;
        let hist = puback.lock().unwrap_or_else(|p| p.into_inner()).clone();
        rows.push(Row::new(format!("QoS 1 PUBACK, {k}k pipelined"), Some(acked as f64 / secs.max(1e-9)), &hist, 1.0));
    }
    rows
}

fn start(wal_dir: Option<&std::path::Path>) -> promptmq::server::Running {
    let mut config = Config {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        cores: CORES,
        accept_mode: AcceptMode::Handoff,
        sys_interval: 0,
        metrics_enabled: false,
        ..Config::default()
    };
    match wal_dir {
        Some(dir) => {
            // The binary creates the data directory before starting; `server::start` expects it.
            std::fs::create_dir_all(dir).expect("create the data directory");
            config.wal_enabled = true;
            config.wal_sync_mode = WalSyncMode::Immediate;
            config.data_dir = dir.to_path_buf();
        }
        None => config.wal_enabled = false,
    }
    promptmq::server::start(config).expect("start the broker")
}

/// The cores the two connections land on: with handoff, core 0 gives the first connection
/// to core 1 and keeps the second, and `pair` connects the subscriber first.
const SUB_CORE: usize = 1;
const PUB_CORE: usize = 0;
const CORES: usize = 2;

/// `base/N` for the first N whose shard (the core that orders and routes it) is `core`.
fn topic_on(core: usize, base: &str) -> String {
    (0..).map(|i| format!("{base}/{i}")).find(|t| shard_of(t.as_bytes(), CORES) == core).expect("a topic on every core")
}

/// The rows of one broker configuration with topics owned by `core`.
fn section(addr: SocketAddr, label: &str, core: usize, qos0: bool, per_case: Duration, n: u64, cap: Duration) {
    let side = if core == PUB_CORE { "publisher" } else { "subscriber" };
    println!("[{label}; topic owned by the {side}'s core]");
    let base = format!("bench/{}/{side}", label.replace(' ', "-"));
    if qos0 {
        print_row(&one_at_a_time(addr, &topic_on(core, &format!("{base}/q0")), QoS::AtMostOnce, per_case).0);
    }
    let (deliver, puback) = one_at_a_time(addr, &topic_on(core, &format!("{base}/q1")), QoS::AtLeastOnce, per_case);
    print_row(&deliver);
    print_row(&puback.expect("QoS 1 has a PUBACK row"));
    if qos0 {
        pipelined(addr, &topic_on(core, &format!("{base}/p0")), QoS::AtMostOnce, n, cap).iter().for_each(print_row);
    }
    pipelined(addr, &topic_on(core, &format!("{base}/p1")), QoS::AtLeastOnce, n, cap).iter().for_each(print_row);
}

fn main() {
    let secs = budget_secs(15.0);
    // Four one-at-a-time runs of this long each, and four pipelined runs that take about
    // as long between them (unless the cap stops one).
    let per_case = Duration::from_secs_f64(secs / 7.0);
    let n = ((100_000.0 * secs / 15.0) as u64).max(1000);
    let cap = per_case * 3 / 2;
    now_ns();

    print_header(
        "e2e (loopback, 2 cores, MQTT 3.1.1)",
        "Publish-to-deliver latency through an in-process broker (server::start, 2 cores) over \
         loopback TCP: subscriber and publisher on different cores, 64-byte payloads stamped with \
         their send time. One at a time: the next PUBLISH after the previous delivery (ops/s = \
         round trips/s; PUBACK = publish to the publisher's PUBACK). Pipelined: as fast as the \
         broker takes them (QoS 1 with 256 in flight); ops/s = deliveries/s, latency mostly \
         queueing. Clients and broker share the CPUs.",
    );

    let broker = start(None);
    section(broker.local_addr, "WAL off", PUB_CORE, true, per_case, n, cap);
    // Idle from here on; stopping it keeps its ticks out of the next broker's numbers.
    broker.control().stop();

    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("promptmq-e2e-bench-{}-{nanos}", std::process::id()));
    println!("(WAL in {})", dir.display());
    let broker = start(Some(&dir));
    // Both placements: the PUBACK of a logged message is sent by the shard once the sync
    // covers it, and crosses back to the publisher's core only in the second.
    section(broker.local_addr, "WAL immediate", PUB_CORE, false, per_case, n, cap);
    section(broker.local_addr, "WAL immediate", SUB_CORE, false, per_case, n, cap);
    // The broker's threads still run (and hold the log open); the files go with the
    // directory, and the process exits when main returns.
    let _ = std::fs::remove_dir_all(&dir);
    drop(broker);
}
