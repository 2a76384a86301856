//! The broker's use of the write-ahead log: one log per shard under `<data-dir>/wal/`,
//! opened and recovered at startup, then written by a [`WalWriter`] thread per shard.
//!
//! Recovery today restores retained messages (the newest record per topic wins; an empty
//! payload deletes). QoS 1/2 messages are logged, and acknowledged only once durable in
//! `immediate` mode, so an acknowledged message is on disk after a crash; restoring the
//! persistent sessions that were owed them is the next step of the WAL work.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use promptmq_wal::writer::{SyncMode, WalWriter};
use promptmq_wal::{Log, Options, RecoveryReport};

use crate::config::{Config, WalSyncMode};
use crate::core::Journal;
use crate::message::SharedMessage;
use crate::persist::{self, WallClock};

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

/// What recovery produced for the cores.
pub struct Recovered {
    /// One open log per current shard.
    pub logs: Vec<Log>,
    /// The retained messages to restore.
    pub retained: Vec<SharedMessage>,
    pub reports: Vec<(usize, RecoveryReport)>,
    /// Records that passed the log's checksum but could not be decoded.
    pub undecodable: u64,
}

fn options(config: &Config) -> Options {
    Options { segment_size: config.wal_segment_size, ..Options::default() }
}

/// (timestamp, shard, sequence): orders the records of one topic across logs.
type RecordKey = (u64, usize, u64);

/// Opens (creating as needed) every shard's log and replays it.
pub fn recover(config: &Config, clock: &WallClock, now: Instant) -> Result<Recovered, StorageError> {
    let cores = config.effective_cores();
    let now_ms = clock.unix_ms(now);
    // Newest retained record per topic: (timestamp, shard, seq) orders records of one
    // topic even when the core count changed between runs.
    let mut latest: HashMap<Bytes, (RecordKey, Option<SharedMessage>)> = HashMap::new();
    let mut undecodable = 0;
    let mut logs = Vec::with_capacity(cores);
    let mut reports = Vec::new();
    let mut shards: Vec<usize> = (0..cores).collect();
    shards.extend(existing_shards(&config.data_dir).into_iter().filter(|&s| s >= cores));
    for shard in shards {
        let dir = shard_dir(&config.data_dir, shard);
        let (log, report) = Log::open(&dir, shard as u32, options(config), now_ms, |r| {
            let body = Bytes::copy_from_slice(r.body);
            match persist::decode_message(&body, clock, now) {
                Ok(msg) if msg.retain => {
                    let key = (r.timestamp_ms, shard, r.seq);
                    let entry = latest.entry(msg.topic.clone()).or_insert((key, None));
                    if key >= entry.0 {
                        *entry = (key, (!msg.payload.is_empty()).then(|| Arc::new(msg)));
                    }
                }
                Ok(_) => {}
                Err(_) => undecodable += 1,
            }
        })?;
        reports.push((shard, report));
        if shard < cores {
            logs.push(log);
        }
    }
    let retained = latest.into_values().filter_map(|(_, m)| m).filter(|m| !m.is_expired(now)).collect();
    Ok(Recovered { logs, retained, reports, undecodable })
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
    tracing::info!(retained = r.retained.len(), "retained messages restored");
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
        on_durable: impl Fn(u64) + Send + 'static,
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
}
