//! The traffic scenarios (`pairs`, `fanin`, `fanout`, `shared`): connect subscribers, then
//! publishers, run warm-up + measured window, drain, and account for every message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::cli::{Options, Scenario};
use crate::conn::{self, Client, ReadBuf, PING_EVERY};
use crate::mqtt::{self, Version};
use crate::report::{rss_kb, Latency, Report, Usage};
use crate::stamp::{self, SeqTrack, Stamp, STAMP_LEN};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Session Expiry Interval of `--persistent-subscribers` (seconds): long enough for a run,
/// short enough that the sessions do not outlive it by much.
const PERSISTENT_SESSION_EXPIRY: u32 = 60;
/// Bytes encoded per write when the rate allows it.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
const SUB_READ_BYTES: usize = 256 * 1024;

/// Who publishes where, who subscribes to what, and which publishers each subscriber hears.
pub struct Layout {
    pub pub_topics: Vec<String>,
    pub sub_filters: Vec<String>,
    /// Per subscriber: the publishers whose every message it must get (for `shared`, the group
    /// as a whole must get them).
    pub expects: Vec<Vec<usize>>,
    pub shared: bool,
}

pub fn layout(scenario: Scenario, prefix: &str, publishers: usize, subscribers: usize) -> Layout {
    let all: Vec<usize> = (0..publishers).collect();
    match scenario {
        Scenario::Pairs => Layout {
            pub_topics: (0..publishers).map(|i| format!("{prefix}/p/{i}")).collect(),
            sub_filters: (0..subscribers).map(|i| format!("{prefix}/p/{i}")).collect(),
            expects: (0..subscribers).map(|i| vec![i]).collect(),
            shared: false,
        },
        Scenario::Fanin => Layout {
            pub_topics: (0..publishers).map(|i| format!("{prefix}/in/{i}")).collect(),
            sub_filters: vec![format!("{prefix}/in/+"); subscribers],
            expects: vec![all; subscribers],
            shared: false,
        },
        Scenario::Fanout => Layout {
            pub_topics: vec![format!("{prefix}/out"); publishers],
            sub_filters: vec![format!("{prefix}/out"); subscribers],
            expects: vec![all; subscribers],
            shared: false,
        },
        Scenario::Shared | Scenario::Conns => Layout {
            pub_topics: (0..publishers).map(|i| format!("{prefix}/sh/{i}")).collect(),
            sub_filters: vec![format!("$share/g/{prefix}/sh/+"); subscribers],
            expects: vec![all; subscribers],
            shared: true,
        },
    }
}

/// The time line of a run, as `stamp::now_ns` values and `Instant`s.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    warm_end: Instant,
    stop: Instant,
    drain_end: Instant,
    warm_end_ns: u64,
    stop_ns: u64,
}

struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    /// First deliveries of measured messages, summed over subscribers.
    measured_distinct: AtomicU64,
}

/// What a publisher leaves behind even if its task is aborted.
struct PubState {
    /// First sequence number stamped inside the measured window (u32::MAX: none yet).
    first_measured: AtomicU32,
    /// Sequence numbers below this were completely written to the socket.
    written: AtomicU32,
    error: Mutex<Option<String>>,
    done: AtomicBool,
}

/// Between a publisher's writer and its acknowledgement reader.
struct AckState {
    inflight: AtomicUsize,
    notify: Notify,
    pubrel: Mutex<Vec<u16>>,
    closed: AtomicBool,
}

struct SubResult {
    hist: Histogram<u64>,
    tracks: Vec<SeqTrack>,
    in_window: u64,
    late: u64,
    foreign: u64,
    error: Option<String>,
}

pub async fn run(opts: &Options, addr: SocketAddr) -> Result<Report> {
    let version = opts.version();
    let (np, ns) = opts.clients();
    let prefix = opts.topic_prefix.clone().unwrap_or_else(|| format!("bench/{}", run_id()));
    let lay = layout(opts.scenario, &prefix, np, ns);
    let qos = opts.qos;
    let mut report = Report::new(opts, addr, np, ns);
    let progress = !opts.quiet;

    // Subscribers first, all subscribed before anything is published.
    let mut subs = Vec::with_capacity(ns);
    for (i, filter) in lay.sub_filters.iter().enumerate() {
        let id = format!("pmqb-{}-s{i}", std::process::id());
        let expiry = opts.persistent_subscribers.then_some(PERSISTENT_SESSION_EXPIRY);
        let mut c = conn::connect(addr, version, &id, SUB_READ_BYTES, None, expiry, CONNECT_TIMEOUT)
            .await
            .with_context(|| format!("subscriber {i}"))?;
        c.subscribe(version, filter, qos, CONNECT_TIMEOUT).await.with_context(|| format!("subscriber {i}"))?;
        subs.push(c);
    }
    let sndbuf = (opts.sndbuf > 0).then_some(opts.sndbuf);
    let mut pubs = Vec::with_capacity(np);
    for i in 0..np {
        let id = format!("pmqb-{}-p{i}", std::process::id());
        pubs.push(
            conn::connect(addr, version, &id, 64 * 1024, sndbuf, None, CONNECT_TIMEOUT)
                .await
                .with_context(|| format!("publisher {i}"))?,
        );
    }
    if progress {
        eprintln!(
            "{}: {np} publisher(s), {ns} subscriber(s) connected to {addr}; {} s warm-up, {} s measured",
            opts.scenario.name(),
            opts.warmup,
            opts.duration
        );
    }

    let start = Instant::now() + Duration::from_millis(20);
    let warm_end = start + Duration::from_secs_f64(opts.warmup);
    let stop = warm_end + Duration::from_secs_f64(opts.duration);
    let clock = Clock {
        start,
        warm_end,
        stop,
        drain_end: stop + Duration::from_secs_f64(opts.drain),
        warm_end_ns: stamp::instant_ns(warm_end),
        stop_ns: stamp::instant_ns(stop),
    };
    let counters = Arc::new(Counters {
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        measured_distinct: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut sub_tasks: Vec<JoinHandle<SubResult>> = Vec::with_capacity(ns);
    for c in subs {
        let counters = counters.clone();
        let stop_rx = stop_rx.clone();
        sub_tasks.push(tokio::spawn(subscriber(c, version, np, clock, counters, stop_rx)));
    }
    let mut pub_states = Vec::with_capacity(np);
    let mut pub_tasks: Vec<JoinHandle<()>> = Vec::with_capacity(np);
    let per_pub_rate = opts.rate as f64 / np as f64;
    for (i, c) in pubs.into_iter().enumerate() {
        let state = Arc::new(PubState {
            first_measured: AtomicU32::new(u32::MAX),
            written: AtomicU32::new(0),
            error: Mutex::new(None),
            done: AtomicBool::new(false),
        });
        pub_states.push(state.clone());
        let cfg = PubCfg {
            index: i as u32,
            topic: lay.pub_topics[i].clone(),
            version,
            qos,
            payload: opts.payload as usize,
            rate: per_pub_rate,
            window: (opts.inflight as usize).min(c.receive_maximum.max(1) as usize),
        };
        let counters = counters.clone();
        pub_tasks.push(tokio::spawn(async move {
            let r = publisher(c, &cfg, clock, &state, &counters).await;
            if let Err(e) = r {
                *state.error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("publisher {}: {e:#}", cfg.index));
            }
            state.done.store(true, Relaxed);
        }));
    }

    let mut cpu_warm = None;
    // Progress once a second; the measured window; then the drain.
    let mut tick = clock.start + Duration::from_secs(1);
    let (mut last_sent, mut last_recv, mut last_t) = (0u64, 0u64, clock.start);
    loop {
        let now = Instant::now();
        if cpu_warm.is_none() && now >= clock.warm_end {
            cpu_warm = Some(Usage::take(opts.pid));
        }
        if now >= clock.stop {
            break;
        }
        let next = tick.min(if cpu_warm.is_none() { clock.warm_end } else { clock.stop });
        tokio::time::sleep_until(next.into()).await;
        if Instant::now() >= tick {
            tick += Duration::from_secs(1);
            let (s, r, t) = (counters.sent.load(Relaxed), counters.received.load(Relaxed), Instant::now());
            if progress {
                print_progress(&clock, t, s - last_sent, r - last_recv, t - last_t);
            }
            (last_sent, last_recv, last_t) = (s, r, t);
        }
    }
    if let Some(u) = cpu_warm {
        Usage::take(opts.pid).fill_since(&u, &mut report);
    }

    // Drain: until every measured message is delivered, or the drain time is up.
    let expected_of = |states: &[Arc<PubState>]| -> Vec<(u32, u32)> {
        states
            .iter()
            .map(|s| {
                let w = s.written.load(Relaxed);
                let f = s.first_measured.load(Relaxed).min(w);
                (f, w)
            })
            .collect()
    };
    let expected_total = |ranges: &[(u32, u32)]| -> u64 {
        lay.expects.iter().map(|e| e.iter().map(|&p| (ranges[p].1 - ranges[p].0) as u64).sum::<u64>()).sum::<u64>()
            / if lay.shared { ns as u64 } else { 1 }
    };
    loop {
        let now = Instant::now();
        let all_pubs_done = pub_states.iter().all(|s| s.done.load(Relaxed));
        if all_pubs_done {
            let exp = expected_total(&expected_of(&pub_states));
            if counters.measured_distinct.load(Relaxed) >= exp {
                break;
            }
        }
        if now >= clock.drain_end {
            break;
        }
        let next = tick.min(clock.drain_end).min(now + Duration::from_millis(5));
        tokio::time::sleep_until(next.into()).await;
        if Instant::now() >= tick {
            tick += Duration::from_secs(1);
            let (s, r, t) = (counters.sent.load(Relaxed), counters.received.load(Relaxed), Instant::now());
            if progress {
                print_progress(&clock, t, s - last_sent, r - last_recv, t - last_t);
            }
            (last_sent, last_recv, last_t) = (s, r, t);
        }
    }
    let drained_at = Instant::now();
    for t in &pub_tasks {
        t.abort();
    }
    let ranges = expected_of(&pub_states);
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(ns);
    for (i, t) in sub_tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(3), t).await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => report.errors.push(format!("subscriber {i}: task failed: {e}")),
            Err(_) => report.errors.push(format!("subscriber {i}: did not stop")),
        }
    }
    for s in &pub_states {
        if let Some(e) = s.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            report.errors.push(e);
        }
    }

    // Accounting.
    if let Some(pid) = opts.pid {
        report.broker_rss_kb = rss_kb(pid);
        report.broker_peak_rss_kb = crate::report::peak_rss_kb(pid);
    }
    let window = (clock.stop - clock.warm_end).as_secs_f64();
    let sent: u64 = ranges.iter().map(|&(f, w)| (w - f) as u64).sum();
    report.window_secs = window;
    report.drain_secs = (drained_at - clock.stop).as_secs_f64();
    report.sent = sent;
    report.sent_per_sec = sent as f64 / window;
    let mut hist = new_histogram();
    let mut in_window = 0;
    let mut late = 0;
    for r in &results {
        let _ = hist.add(&r.hist);
        in_window += r.in_window;
        late += r.late;
        report.foreign += r.foreign;
        if let Some(e) = &r.error {
            report.errors.push(e.clone());
        }
    }
    report.delivered_per_sec = in_window as f64 / window;
    report.delivered_late = late;
    if results.len() == ns {
        let mut expected = 0u64;
        let mut delivered = 0u64;
        if lay.shared {
            let mut merged = vec![SeqTrack::default(); np];
            for r in &results {
                for (m, t) in merged.iter_mut().zip(&r.tracks) {
                    m.merge(t);
                }
            }
            for (p, t) in merged.iter().enumerate() {
                let (f, w) = ranges[p];
                expected += (w - f) as u64;
                delivered += t.distinct_in(f, w);
                report.duplicates += t.duplicates;
                report.reordered += t.reordered;
            }
        } else {
            for (r, exp) in results.iter().zip(&lay.expects) {
                for &p in exp {
                    let (f, w) = ranges[p];
                    expected += (w - f) as u64;
                    delivered += r.tracks[p].distinct_in(f, w);
                }
                for t in &r.tracks {
                    report.duplicates += t.duplicates;
                    report.reordered += t.reordered;
                }
            }
        }
        report.expected = expected;
        report.delivered = delivered;
        report.lost = expected - delivered;
    }
    if !hist.is_empty() {
        report.latency = Some(Latency::from_histogram(&hist));
    }
    Ok(report)
}

fn print_progress(clock: &Clock, now: Instant, sent: u64, recv: u64, dt: Duration) {
    let secs = dt.as_secs_f64().max(1e-9);
    let mid = now - dt / 2;
    let phase = if mid <= clock.warm_end {
        "warm-up"
    } else if mid <= clock.stop {
        "measure"
    } else {
        "drain  "
    };
    eprintln!(
        "[{:6.1}s] {phase}  sent {:>10.0} msgs/s  delivered {:>10.0} msgs/s",
        (now - clock.start).as_secs_f64(),
        sent as f64 / secs,
        recv as f64 / secs
    );
}

fn run_id() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), t.as_micros() as u64 & 0xff_ffff_ffff)
}

pub fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 10 minutes, 3 significant digits.
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 600_000_000_000, 3).unwrap()
}

struct PubCfg {
    index: u32,
    topic: String,
    version: Version,
    qos: u8,
    payload: usize,
    /// msgs/s for this publisher; 0 = unlimited.
    rate: f64,
    window: usize,
}

async fn publisher(c: Client, cfg: &PubCfg, clock: Clock, state: &PubState, counters: &Counters) -> Result<()> {
    let Client { stream, rbuf, .. } = c;
    let (rd, mut wr) = stream.into_split();
    let acks = Arc::new(AckState {
        inflight: AtomicUsize::new(0),
        notify: Notify::new(),
        pubrel: Mutex::new(Vec::new()),
        closed: AtomicBool::new(false),
    });
    let reader = tokio::spawn(ack_reader(rd, rbuf, cfg.qos, acks.clone()));
    let r = publish_loop(&mut wr, cfg, clock, state, counters, &acks).await;
    reader.abort();
    r
}

async fn publish_loop(
    wr: &mut OwnedWriteHalf,
    cfg: &PubCfg,
    clock: Clock,
    state: &PubState,
    counters: &Counters,
    acks: &AckState,
) -> Result<()> {
    let pkt = mqtt::publish_len(cfg.version, &cfg.topic, cfg.qos, cfg.payload);
    let batch_cap = (WRITE_BATCH_BYTES / pkt).max(1);
    let mut buf: Vec<u8> = Vec::with_capacity(batch_cap * pkt + 4096);
    let mut payload = vec![0x5au8; cfg.payload];
    let mut seq: u32 = 0;
    let mut pid: u16 = 0;
    let mut releases: Vec<u16> = Vec::new();
    let mut last_write = Instant::now();
    tokio::time::sleep_until(clock.start.into()).await;
    loop {
        if acks.closed.load(Relaxed) {
            anyhow::bail!("connection closed by the broker");
        }
        if cfg.qos == 2 {
            take_releases(acks, &mut releases, &mut buf);
        }
        let now = Instant::now();
        if now >= clock.stop {
            break;
        }
        let mut n = batch_cap;
        if cfg.qos > 0 {
            n = n.min(cfg.window.saturating_sub(acks.inflight.load(Relaxed)));
        }
        if cfg.rate > 0.0 {
            let due = ((now - clock.start).as_secs_f64() * cfg.rate) as u64;
            n = n.min(due.saturating_sub(seq as u64) as usize);
        }
        if n > 0 {
            let ts = stamp::instant_ns(now);
            if ts >= clock.warm_end_ns && state.first_measured.load(Relaxed) == u32::MAX {
                state.first_measured.store(seq, Relaxed);
            }
            if cfg.qos > 0 {
                acks.inflight.fetch_add(n, Relaxed);
            }
            for _ in 0..n {
                if cfg.qos > 0 {
                    pid = if pid == u16::MAX { 1 } else { pid + 1 };
                }
                mqtt::encode_publish_header(&mut buf, cfg.version, &cfg.topic, cfg.qos, pid, cfg.payload);
                stamp::write_stamp(&mut payload[..STAMP_LEN], Stamp { sent_ns: ts, publisher: cfg.index, seq });
                buf.extend_from_slice(&payload);
                seq += 1;
            }
        }
        if !buf.is_empty() {
            wr.write_all(&buf).await?;
            buf.clear();
            state.written.store(seq, Relaxed);
            counters.sent.fetch_add(n as u64, Relaxed);
            last_write = now;
            continue;
        }
        // Nothing to send: wait for an acknowledgement, the next due message, or the end.
        let mut wake = clock.stop.min(last_write + PING_EVERY);
        if cfg.rate > 0.0 {
            wake = wake.min(clock.start + Duration::from_secs_f64((seq as f64 + 1.0) / cfg.rate));
        }
        tokio::select! {
            _ = acks.notify.notified() => {}
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= last_write + PING_EVERY {
                    mqtt::encode_pingreq(&mut buf);
                    wr.write_all(&buf).await?;
                    buf.clear();
                    last_write = Instant::now();
                }
            }
        }
    }
    // Stopped: let outstanding QoS 1/2 exchanges complete (within the drain time).
    while cfg.qos > 0 && acks.inflight.load(Relaxed) > 0 && !acks.closed.load(Relaxed) {
        if cfg.qos == 2 {
            take_releases(acks, &mut releases, &mut buf);
            if !buf.is_empty() {
                wr.write_all(&buf).await?;
                buf.clear();
            }
        }
        if Instant::now() >= clock.drain_end {
            break;
        }
        tokio::select! {
            _ = acks.notify.notified() => {}
            _ = tokio::time::sleep_until(clock.drain_end.into()) => {}
        }
    }
    mqtt::encode_disconnect(&mut buf);
    let _ = tokio::time::timeout(Duration::from_millis(500), wr.write_all(&buf)).await;
    Ok(())
}

fn take_releases(acks: &AckState, scratch: &mut Vec<u16>, buf: &mut Vec<u8>) {
    {
        let mut q = acks.pubrel.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *q, scratch);
    }
    for pid in scratch.drain(..) {
        mqtt::encode_ack(buf, mqtt::PUBREL, pid);
    }
}

async fn ack_reader(mut rd: OwnedReadHalf, mut rbuf: ReadBuf, qos: u8, acks: Arc<AckState>) {
    let r: Result<()> = async {
        loop {
            let mut done = 0usize;
            let mut rels = false;
            while let Some((f, used)) = mqtt::parse_frame(&rbuf.data[rbuf.start..rbuf.end])? {
                match f.kind() {
                    mqtt::PUBACK | mqtt::PUBCOMP => done += 1,
                    mqtt::PUBREC if qos == 2 => {
                        let (pid, code) = mqtt::decode_ack(f.body)?;
                        if code >= 0x80 {
                            // Refused: the exchange ends here (5.0, 4.3.3).
                            done += 1;
                        } else {
                            acks.pubrel.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
                            rels = true;
                        }
                    }
                    mqtt::DISCONNECT => anyhow::bail!("DISCONNECT from the broker"),
                    _ => {}
                }
                rbuf.start += used;
            }
            if done > 0 {
                acks.inflight.fetch_sub(done, Relaxed);
            }
            if done > 0 || rels {
                acks.notify.notify_one();
            }
            if rbuf.read_from(&mut rd).await? == 0 {
                anyhow::bail!("closed");
            }
        }
    }
    .await;
    let _ = r;
    acks.closed.store(true, Relaxed);
    acks.notify.notify_one();
}

async fn subscriber(
    c: Client,
    version: Version,
    publishers: usize,
    clock: Clock,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let Client { mut stream, mut rbuf, .. } = c;
    let mut res = SubResult {
        hist: new_histogram(),
        tracks: vec![SeqTrack::default(); publishers],
        in_window: 0,
        late: 0,
        foreign: 0,
        error: None,
    };
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let ping = tokio::time::sleep(PING_EVERY);
    tokio::pin!(ping);
    let r: Result<()> = async {
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                _ = &mut ping => {
                    mqtt::encode_pingreq(&mut out);
                    stream.write_all(&out).await?;
                    out.clear();
                    ping.as_mut().reset((Instant::now() + PING_EVERY).into());
                }
                n = rbuf.read_from(&mut stream) => {
                    if n? == 0 {
                        anyhow::bail!("connection closed by the broker");
                    }
                    let now = Instant::now();
                    let now_ns = stamp::instant_ns(now);
                    let in_window = now >= clock.warm_end && now < clock.stop;
                    let (mut got, mut distinct) = (0u64, 0u64);
                    while let Some((f, used)) = mqtt::parse_frame(&rbuf.data[rbuf.start..rbuf.end])? {
                        match f.kind() {
                            mqtt::PUBLISH => {
                                let p = mqtt::decode_publish(version, f.header, f.body)?;
                                match p.qos {
                                    1 => mqtt::encode_ack(&mut out, mqtt::PUBACK, p.pid),
                                    2 => mqtt::encode_ack(&mut out, mqtt::PUBREC, p.pid),
                                    _ => {}
                                }
                                got += 1;
                                match stamp::read_stamp(p.payload) {
                                    Some(s) if (s.publisher as usize) < publishers => {
                                        let measured = s.sent_ns >= clock.warm_end_ns && s.sent_ns < clock.stop_ns;
                                        let first = res.tracks[s.publisher as usize].record(s.seq, measured);
                                        if measured {
                                            res.hist.saturating_record(now_ns.saturating_sub(s.sent_ns).max(1));
                                            if first {
                                                distinct += 1;
                                            }
                                            if now >= clock.stop {
                                                res.late += 1;
                                            }
                                        }
                                    }
                                    _ => res.foreign += 1,
                                }
                            }
                            mqtt::PUBREL => {
                                let (pid, _) = mqtt::decode_ack(f.body)?;
                                mqtt::encode_ack(&mut out, mqtt::PUBCOMP, pid);
                            }
                            mqtt::DISCONNECT => anyhow::bail!("DISCONNECT from the broker"),
                            _ => {}
                        }
                        rbuf.start += used;
                    }
                    if in_window {
                        res.in_window += got;
                    }
                    counters.received.fetch_add(got, Relaxed);
                    if distinct > 0 {
                        counters.measured_distinct.fetch_add(distinct, Relaxed);
                    }
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                        out.clear();
                        ping.as_mut().reset((Instant::now() + PING_EVERY).into());
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = r {
        res.error = Some(format!("subscriber: {e:#}"));
    } else {
        let mut b = Vec::new();
        mqtt::encode_disconnect(&mut b);
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.write_all(&b)).await;
    }
    res
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let l = layout(Scenario::Pairs, "x", 2, 2);
        assert_eq!(l.pub_topics, ["x/p/0", "x/p/1"]);
        assert_eq!(l.sub_filters, ["x/p/0", "x/p/1"]);
        assert_eq!(l.expects, [vec![0], vec![1]]);
        let l = layout(Scenario::Fanin, "x", 3, 1);
        assert_eq!(l.sub_filters, ["x/in/+"]);
        assert_eq!(l.expects, [vec![0, 1, 2]]);
        let l = layout(Scenario::Fanout, "x", 1, 3);
        assert_eq!(l.pub_topics, ["x/out"]);
        assert_eq!(l.expects.len(), 3);
        let l = layout(Scenario::Shared, "x", 2, 2);
        assert!(l.shared);
        assert_eq!(l.sub_filters[0], "$share/g/x/sh/+");
    }
}
