//! The broker's use of the write-ahead log: one log per shard under `<data-dir>/wal/`,
//! opened and recovered at startup, then written by a [`WalWriter`] thread per shard.
//!
//! Recovery restores retained messages (the newest record per topic wins; an empty
//! payload deletes) and persistent sessions (the newest snapshot wins; an end record
//! deletes), then queues for each restored session the logged QoS 1/2 messages it is still
//! owed: those after its progress watermark for that shard and after the start of a
//! matching subscription. QoS 1/2 messages are acknowledged only once durable in
//! `immediate` mode, so what a publisher was told is taken is there to be re-queued.
//! Each restored session also gets back its inbound QoS 2 exchanges that were not released
//! (logged with their messages, see `persist.rs`), so a publisher's resent PUBLISH is not
//! delivered twice.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use promptmq_wal::writer::{SyncMode, WalWriter};
use promptmq_wal::{Log, Options, RecoveryReport};

use crate::codec::QoS;
use crate::config::{Config, WalSyncMode};
use crate::core::Journal;
use crate::message::SharedMessage;
use crate::persist::{self, DeliveryState, Record, SessionRecord, WallClock};
use crate::session::{Inflight, Limits, LoggedExchange, Moment, Outgoing, Session};
use crate::stats::Stats;
use crate::topic;

/// Why storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot use data directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("data directory {0} is in use by another promptmq process")]
    Locked(PathBuf),
    #[error(transparent)]
    Wal(#[from] promptmq_wal::WalError),
    #[error("cannot start the WAL writer thread: {0}")]
    Thread(std::io::Error),
}

/// Holds the data directory's lock for as long as the broker runs.
pub struct DirLock {
    _file: File,
}

/// Takes an exclusive lock on `<data-dir>/LOCK`, so two brokers never write the same logs.
pub fn lock_data_dir(dir: &Path) -> Result<DirLock, StorageError> {
    // "Created if missing", also for embedders that call `server::start` directly.
    std::fs::create_dir_all(dir).map_err(|source| StorageError::Dir { path: dir.to_path_buf(), source })?;
    let path = dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StorageError::Dir { path: path.clone(), source })?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StorageError::Locked(dir.to_path_buf()));
        }
    }
    Ok(DirLock { _file: file })
}

pub fn shard_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join("wal").join(format!("shard-{shard}"))
}

/// The directories of every shard log present, including those of shards beyond the
/// current core count (a restart with fewer cores still recovers their retained messages).
fn existing_shards(data_dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("wal")) else { return Vec::new() };
    let mut v: Vec<usize> =
        entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("shard-")?.parse().ok()).collect();
    v.sort_unstable();
    v
}

/// (timestamp, shard, sequence): orders the records of one topic or client across logs.
type RecordKey = (u64, usize, u64);

/// What recovery produced for the cores.
pub struct Recovered {
    /// One open log per current shard.
    pub logs: Vec<Log>,
    /// The retained messages to restore.
    pub retained: Vec<SharedMessage>,
    /// Persistent sessions to restore (offline), with the messages they are owed queued,
    /// and when they went offline.
    pub sessions: Vec<(Session, Instant)>,
    pub reports: Vec<(usize, RecoveryReport)>,
    /// Records that passed the log's checksum but could not be decoded.
    pub undecodable: u64,
    /// Messages queued for restored sessions.
    pub requeued: u64,
}

fn options(config: &Config) -> Options {
    Options { segment_size: config.wal_segment_size, ..Options::default() }
}

/// Opens (creating as needed) every shard's log and replays it: the newest retained message
/// per topic, the newest snapshot of each persistent session, then (second pass) the
/// messages each restored session is still owed.
pub fn recover(config: &Config, clock: &WallClock, now: Instant) -> Result<Recovered, StorageError> {
    let cores = config.effective_cores();
    let now_ms = clock.unix_ms(now);
    // Newest record per topic / client id: (timestamp, shard, seq) orders the records of
    // one topic even when the core count changed between runs.
    let mut latest: HashMap<Bytes, (RecordKey, Option<SharedMessage>)> = HashMap::new();
    let mut sessions: HashMap<Bytes, (RecordKey, Option<SessionRecord>)> = HashMap::new();
    // Inbound QoS 2 exchanges not released, per (client id, session incarnation):
    // (shard, packet id) -> the message's sequence number. A release is in the same log as
    // its exchange, later, so each log's order settles them (see `persist.rs`).
    let mut exchanges: HashMap<(Bytes, u64), HashMap<(usize, u16), u64>> = HashMap::new();
    // Outbound QoS 2 exchanges per (client id, session incarnation): (shard, message seq)
    // -> (send order, packet id, furthest state). See `persist.rs`.
    let mut deliveries: HashMap<(Bytes, u64), HashMap<(usize, u64), LoggedDelivery>> = HashMap::new();
    let mut undecodable = 0;
    let mut opened: Vec<(usize, Log)> = Vec::new();
    let mut reports = Vec::new();
    let mut shards: Vec<usize> = (0..cores).collect();
    shards.extend(existing_shards(&config.data_dir).into_iter().filter(|&s| s >= cores));
    for shard in shards {
        let dir = shard_dir(&config.data_dir, shard);
        let (log, report) = Log::open(&dir, shard as u32, options(config), now_ms, |r| {
            let key = (r.timestamp_ms, shard, r.seq);
            let body = Bytes::copy_from_slice(r.body);
            match persist::decode_record(&body, clock, now) {
                Ok(Record::Message(msg, exchange, _)) => {
                    if let Some(x) = exchange {
                        let open = exchanges.entry((msg.publisher.clone(), x.incarnation)).or_default();
                        open.insert((shard, x.pkid), r.seq);
                    }
                    if msg.retain {
                        let entry = latest.entry(msg.topic.clone()).or_insert((key, None));
                        if key >= entry.0 {
                            *entry = (key, (!msg.payload.is_empty()).then(|| Arc::new(*msg)));
                        }
                    }
                }
                Ok(Record::Released(client_id, x)) => {
                    if let Some(open) = exchanges.get_mut(&(client_id, x.incarnation)) {
                        open.remove(&(shard, x.pkid));
                    }
                }
                Ok(Record::Delivery(client_id, d)) => {
                    let open = deliveries.entry((client_id, d.incarnation)).or_default();
                    let step = (d.order, d.pkid, d.state);
                    let entry = open.entry((shard, d.msg_seq)).or_insert(step);
                    // A step is logged again when a connection that waited for it is replaced.
                    if (step.0, step.2) >= (entry.0, entry.2) {
                        *entry = step;
                    }
                }
                Ok(Record::Session(rec)) => {
                    let entry = sessions.entry(rec.client_id.clone()).or_insert((key, None));
                    if key >= entry.0 {
                        *entry = (key, Some(rec));
                    }
                }
                Ok(Record::SessionEnd(client_id)) => {
                    let entry = sessions.entry(client_id).or_insert((key, None));
                    if key >= entry.0 {
                        *entry = (key, None);
                    }
                }
                Err(_) => undecodable += 1,
            }
        })?;
        reports.push((shard, report));
        opened.push((shard, log));
    }
    let retained = latest.into_values().filter_map(|(_, m)| m).filter(|m| !m.is_expired(now)).collect();

    // Sessions that have not expired meanwhile. One connected at the crash counts as
    // disconnected now.
    let mut restored: Vec<(Session, Instant)> = sessions
        .into_values()
        .filter_map(|(_, rec)| rec)
        .filter_map(|rec| {
            let gone_ms = if rec.disconnected_ms == 0 { now_ms } else { rec.disconnected_ms };
            let expired = rec.expiry_interval != u32::MAX
                && gone_ms.saturating_add(u64::from(rec.expiry_interval) * 1000) <= now_ms;
            // One that ended while the broker was down still owes its will: restored, it is
            // ended at once by its core (will published, end logged).
            (!expired || rec.will.is_some()).then(|| (session_from(rec, clock, now), clock.instant(gone_ms, now)))
        })
        .collect();
    let mut outbound: Vec<HashMap<(usize, u64), LoggedDelivery>> = Vec::with_capacity(restored.len());
    for (s, _) in restored.iter_mut() {
        // Exchanges of an earlier session with this client id have another incarnation.
        let open = exchanges.remove(&(s.client_id.clone(), s.incarnation)).unwrap_or_default();
        for ((shard, pkid), seq) in open {
            s.incoming_qos2.insert(pkid, Some(LoggedExchange { shard, seq, releasing: false }));
        }
        let sent = deliveries.remove(&(s.client_id.clone(), s.incarnation)).unwrap_or_default();
        outbound.push(live_deliveries(s, sent));
    }

    let mut requeued = 0;
    if !restored.is_empty() {
        // Which sessions a topic can concern: those with that exact filter, and those with
        // any wildcard filter. Keeps the replay near O(messages) when most subscriptions
        // are exact, instead of every message against every session's every filter.
        let mut by_topic: HashMap<Bytes, Vec<usize>> = HashMap::new();
        let mut wildcard: Vec<usize> = Vec::new();
        for (index, (session, _)) in restored.iter().enumerate() {
            let mut has_wildcard = false;
            for filter in session.subscriptions.keys() {
                if !matches!(topic::parse_shared(filter), Ok(None)) {
                    continue;
                }
                if filter.iter().any(|&b| b == b'+' || b == b'#') {
                    has_wildcard = true;
                } else {
                    by_topic.entry(filter.clone()).or_default().push(index);
                }
            }
            if has_wildcard {
                wildcard.push(index);
            }
        }
        let by_client: HashMap<Bytes, usize> =
            restored.iter().enumerate().map(|(index, (s, _))| (s.client_id.clone(), index)).collect();
        let mut candidates: Vec<usize> = Vec::new();
        let limits = Limits::from_config(config);
        let mut stats = Stats::default();
        for (shard, log) in &opened {
            let start = restored.iter().map(|(s, _)| s.seen.get(shard).copied().unwrap_or(0)).min().unwrap_or(0);
            log.read_from(start + 1, |r| {
                let body = Bytes::copy_from_slice(r.body);
                let Ok(Record::Message(msg, _, shared_to)) = persist::decode_record(&body, clock, now) else { return };
                if msg.qos == QoS::AtMostOnce || msg.is_expired(now) {
                    return;
                }
                let msg = Arc::new(*msg);
                candidates.clear();
                candidates.extend(by_topic.get(&msg.topic).into_iter().flatten().chain(&wildcard));
                candidates.extend(shared_to.iter().filter_map(|c| by_client.get(c)));
                candidates.sort_unstable();
                candidates.dedup();
                for &index in &candidates {
                    let session = &mut restored[index].0;
                    let shared = shared_to.contains(&session.client_id);
                    let Some(mut out) = owed(session, *shard, r.seq, &msg, shared) else { continue };
                    match outbound[index].get(&(*shard, r.seq)) {
                        Some(&(_, _, DeliveryState::Completed)) => continue,
                        Some(&(order, pkid, state)) => {
                            // Resumes with its packet id: PUBLISH with DUP, or PUBREL.
                            out.qos = QoS::ExactlyOnce;
                            let released = state == DeliveryState::Received;
                            let f = Inflight { seq: order, out, released, logging: false, log_failed: false };
                            session.inflight.insert(pkid, f);
                        }
                        None => session.enqueue(out, limits, &mut stats),
                    }
                    requeued += 1;
                }
            })?;
            let last = log.next_seq() - 1;
            for (session, _) in restored.iter_mut() {
                // Everything of this shard up to its last record has now been considered.
                let seen = session.seen.entry(*shard).or_insert(0);
                *seen = (*seen).max(last);
            }
        }
    }
    let logs = opened.into_iter().filter(|(shard, _)| *shard < cores).map(|(_, log)| log).collect();
    Ok(Recovered { logs, retained, sessions: restored, reports, undecodable, requeued })
}

/// An outbound QoS 2 exchange as its records left it: (send order, packet id, state).
type LoggedDelivery = (u64, u16, DeliveryState);

/// Of a restored session's logged outbound exchanges, those still open, by message. Of two
/// with one packet id (a `completed` not yet durable when the id was reused for a message
/// of another log), the later in send order is the live one: the other one is over. Sets
/// the session's send order past every logged one.
fn live_deliveries(
    s: &mut Session,
    mut logged: HashMap<(usize, u64), LoggedDelivery>,
) -> HashMap<(usize, u64), LoggedDelivery> {
    let mut latest: HashMap<u16, u64> = HashMap::new();
    for &(order, pkid, state) in logged.values() {
        s.next_seq = s.next_seq.max(order + 1);
        if state != DeliveryState::Completed {
            let l = latest.entry(pkid).or_insert(order);
            *l = (*l).max(order);
        }
    }
    for (order, pkid, state) in logged.values_mut() {
        if latest.get(pkid).is_some_and(|&l| l > *order) {
            *state = DeliveryState::Completed;
        }
    }
    logged
}

fn session_from(rec: SessionRecord, clock: &WallClock, now: Instant) -> Session {
    let mut s = Session::new(rec.client_id, 0, rec.version);
    s.expiry_interval = rec.expiry_interval;
    s.subscriptions = rec.subscriptions.into_iter().collect();
    s.seen = rec.watermarks.into_iter().collect();
    if rec.incarnation != 0 {
        // (A record from before incarnations keeps the new one: no exchange names it.)
        s.incarnation = rec.incarnation;
    }
    if let Some((will, due_ms)) = rec.will {
        // A delayed will keeps its time. A connection that was live when the broker stopped
        // ended without DISCONNECT: its will is due after its delay, from now (MQTT 5
        // 3.1.2.5: the will is published when the network connection closes without one).
        let delay = Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)));
        s.will_due =
            Moment::at(if due_ms != 0 && rec.disconnected_ms != 0 { clock.instant(due_ms, now) } else { now + delay });
        s.will = Some(will);
    }
    s
}

/// The delivery `session` is owed for message `seq` of `shard`'s log, if any: the message
/// is after the session's progress and after the start of a subscription that matches it
/// (one copy for overlapping subscriptions, highest QoS, all identifiers). Its shared
/// subscriptions count only when its record names the session as the member the message
/// went to (`shared`): each message of a group is owed to one member.
fn owed(session: &Session, shard: usize, seq: u64, msg: &SharedMessage, shared: bool) -> Option<Outgoing> {
    if seq <= session.seen.get(&shard).copied().unwrap_or(0) {
        return None;
    }
    let mut out: Option<Outgoing> = None;
    for (filter, sub) in session.subscriptions.iter() {
        let inner = match topic::parse_shared(filter) {
            Ok(None) => &filter[..],
            Ok(Some((_, inner))) if shared => inner,
            _ => continue,
        };
        let since = sub.since.iter().find(|(s, _)| *s == shard).map_or(0, |(_, seq)| *seq);
        if seq <= since || !topic::matches(inner, &msg.topic) {
            continue;
        }
        if sub.options.no_local && msg.publisher == session.client_id {
            continue;
        }
        let qos = sub.options.qos.min(msg.qos);
        let o = out.get_or_insert_with(|| Outgoing {
            msg: Arc::clone(msg),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            origin: Some((shard, seq)),
        });
        o.qos = o.qos.max(qos);
        o.retain |= sub.options.retain_as_published && msg.retain;
        o.subscription_ids.extend(sub.subscription_id);
    }
    out.filter(|o| o.qos != QoS::AtMostOnce)
}

/// Logs what recovery found, loudly where data was lost.
pub fn log_recovery(r: &Recovered) {
    for (shard, report) in &r.reports {
        tracing::info!(
            shard,
            segments = report.segments,
            records = report.records,
            direct_io = report.direct_io,
            "WAL recovered"
        );
        if let Some((path, offset, why)) = &report.torn_tail {
            tracing::warn!(shard, path = %path.display(), offset, reason = why, "WAL torn tail cut (an unfinished write at crash time)");
        }
        for (path, aside, what) in &report.quarantined {
            tracing::error!(shard, path = %path.display(), moved_to = %aside.display(), lost = %what, "WAL segment damaged and set aside");
        }
        for (first, last) in &report.gaps {
            tracing::error!(shard, first, last, "WAL records missing (segment lost or damaged)");
        }
    }
    if r.undecodable > 0 {
        tracing::error!(records = r.undecodable, "WAL records could not be decoded and were skipped");
    }
    tracing::info!(
        retained = r.retained.len(),
        sessions = r.sessions.len(),
        requeued = r.requeued,
        "retained messages and persistent sessions restored"
    );
}

/// The sync mode the writer threads run with.
pub fn sync_mode(config: &Config) -> SyncMode {
    let interval = Duration::from_millis(config.wal_sync_interval);
    match config.wal_sync_mode {
        WalSyncMode::Immediate => SyncMode::Immediate,
        WalSyncMode::Batch => {
            SyncMode::Batch { records: config.wal_batch_sync_size as usize, bytes: 4 * 1024 * 1024, delay: interval }
        }
        WalSyncMode::Periodic => SyncMode::Periodic(interval),
        WalSyncMode::None => SyncMode::None,
    }
}

/// A shard's journal: the writer thread behind the core's [`Journal`] interface.
pub struct WalJournal {
    writer: WalWriter,
}

impl WalJournal {
    /// Starts the writer thread for `log`; `on_durable` runs on that thread whenever the
    /// durable mark advances (the broker rings the shard core's wakeup there).
    pub fn start(
        log: Log,
        config: &Config,
        on_durable: impl Fn(promptmq_wal::writer::Synced) + Send + 'static,
    ) -> Result<WalJournal, StorageError> {
        let writer =
            WalWriter::start(log, sync_mode(config), 64 * 1024, promptmq_wal::writer::system_clock_ms, on_durable)
                .map_err(StorageError::Thread)?;
        Ok(WalJournal { writer })
    }
}

impl Journal for WalJournal {
    fn append(&mut self, timestamp_ms: u64, body: Vec<u8>) -> Result<u64, Vec<u8>> {
        self.writer.append(timestamp_ms, 0, body)
    }
    fn durable_seq(&self) -> u64 {
        self.writer.durable_seq()
    }
    fn failing(&self) -> bool {
        self.writer.is_failing()
    }
    fn next_seq(&self) -> u64 {
        self.writer.next_seq()
    }
    fn segments(&self) -> Vec<promptmq_wal::SegmentInfo> {
        self.writer.segments()
    }
    fn delete_before(&mut self, seq: u64) {
        self.writer.delete_before(seq);
    }
}
