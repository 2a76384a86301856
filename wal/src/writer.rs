//! The writer thread: runs one [`Log`] with a sync mode, fed by a bounded lock-free queue,
//! so that the core that produces records never waits for the disk.
//!
//! The producer (one shard's core) calls [`WalWriter::append`], which assigns the record's
//! sequence number at once; the thread appends everything queued, syncs according to the
//! [`SyncMode`], publishes the durable sequence number and calls the `on_durable` callback
//! (the broker rings the core's wakeup there, and releases the acknowledgements waiting for
//! those records). Group commit falls out of this: every record queued while a sync runs
//! is covered by the next single write and sync.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::log::{Log, SegmentInfo};

/// When records become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Sync as soon as records are appended; a record is durable before it is acknowledged.
    Immediate,
    /// Sync after `records` records or `bytes` bytes since the last sync, or `delay` after the
    /// first unsynced record, whichever comes first.
    Batch { records: usize, bytes: usize, delay: Duration },
    /// Sync every interval; a crash can lose up to one interval of records.
    Periodic(Duration),
    /// Never sync (write when the buffer fills): for benchmarks.
    None,
}

/// What a sync made durable, for the `on_durable` callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Every record up to this sequence number is durable.
    pub seq: u64,
    /// Records this sync covered.
    pub records: usize,
    /// How long the write and fdatasync took.
    pub sync_time: Duration,
    /// From the append of the oldest record it covered to durable: the longest a record of
    /// this group waited.
    pub oldest_wait: Duration,
}

/// A record waiting for the writer thread.
struct Entry {
    timestamp_ms: u64,
    flags: u16,
    body: Vec<u8>,
}

struct Shared {
    queue: ArrayQueue<Entry>,
    durable: AtomicU64,
    /// Set by the thread while it parks, so producers only unpark a sleeping thread.
    sleeping: AtomicBool,
    stop: AtomicBool,
    /// Mirrors `error.is_some()`, for a cheap check on every wakeup.
    failing: AtomicBool,
    error: Mutex<Option<String>>,
    thread: std::sync::OnceLock<std::thread::Thread>,
    /// The log's segments as of the last change, for the producer's retention decisions.
    segments: Mutex<Vec<SegmentInfo>>,
    /// Closed segments entirely before this sequence number may be deleted.
    delete_before: AtomicU64,
}

/// Handle of a running writer thread. Owned by the single producer of its log.
pub struct WalWriter {
    shared: Arc<Shared>,
    next_seq: u64,
    thread: Option<JoinHandle<Log>>,
}

/// Where the writer thread gets the wall clock (milliseconds since the epoch).
pub type Clock = fn() -> u64;

pub fn system_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl WalWriter {
    /// Starts the thread. `capacity` bounds the queue; `on_durable(synced)` is called from the
    /// writer thread each time the durable mark advances.
    pub fn start(
        log: Log,
        mode: SyncMode,
        capacity: usize,
        clock: Clock,
        on_durable: impl Fn(Synced) + Send + 'static,
    ) -> std::io::Result<WalWriter> {
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(capacity.max(1)),
            durable: AtomicU64::new(log.durable_seq()),
            sleeping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            error: Mutex::new(None),
            thread: std::sync::OnceLock::new(),
            segments: Mutex::new(log.segments().cloned().collect()),
            delete_before: AtomicU64::new(0),
        });
        let next_seq = log.next_seq();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("promptmq-wal".into())
            .spawn(move || run(log, mode, clock, thread_shared, on_durable))?;
        let _ = shared.thread.set(thread.thread().clone());
        Ok(WalWriter { shared, next_seq, thread: Some(thread) })
    }

    /// Queues a record and returns its sequence number, or gives the body back when the
    /// queue is full (the caller applies back-pressure and retries).
    pub fn append(&mut self, timestamp_ms: u64, flags: u16, body: Vec<u8>) -> Result<u64, Vec<u8>> {
        if let Err(e) = self.shared.queue.push(Entry { timestamp_ms, flags, body }) {
            self.wake();
            return Err(e.body);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        // Pairs with the fence in `run`: either the thread sees the entry before parking,
        // or this sees it sleeping and unparks it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.shared.sleeping.load(Ordering::SeqCst) {
            self.wake();
        }
        Ok(seq)
    }

    fn wake(&self) {
        if let Some(t) = self.shared.thread.get() {
            t.unpark();
        }
    }

    /// The log's segments (closed ones oldest first, then the active one) as of the last
    /// roll or deletion.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.shared.segments.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lets the thread delete the closed segments whose records all come before `seq`.
    pub fn delete_before(&self, seq: u64) {
        self.shared.delete_before.fetch_max(seq, Ordering::AcqRel);
        self.wake();
    }

    /// The sequence number the next [`WalWriter::append`] returns.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every record up to this sequence number is durable (per the sync mode's meaning).
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Whether the last write or sync failed (and no sync has succeeded since).
    pub fn is_failing(&self) -> bool {
        self.shared.failing.load(Ordering::Acquire)
    }

    /// The last write or sync error, cleared when a later sync succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.shared.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the thread after it has written and synced what was queued; returns the log.
    pub fn shutdown(mut self) -> Option<Log> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Option<Log> {
        self.shared.stop.store(true, Ordering::Release);
        self.wake();
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn run(mut log: Log, mode: SyncMode, clock: Clock, shared: Arc<Shared>, on_durable: impl Fn(Synced)) -> Log {
    // Entries taken off the queue but not yet appended (an append failed, e.g. full disk):
    // they keep their order and are retried, so sequence numbers stay what the producer was
    // told.
    let mut pending: VecDeque<Entry> = VecDeque::new();
    let mut unsynced_records = 0usize;
    let mut unsynced_bytes = 0usize;
    let mut first_unsynced: Option<Instant> = None;
    let mut last_sync = Instant::now();
    let mut failing = false;
    let mut deleted_before = 0;
    let mut segment_count = log.segments().count();
    loop {
        while let Some(e) = shared.queue.pop() {
            pending.push_back(e);
        }
        let cut = shared.delete_before.load(Ordering::Acquire);
        let mut refresh = false;
        if cut > deleted_before {
            match log.delete_before(cut) {
                Ok(deleted) => {
                    deleted_before = cut;
                    refresh = !deleted.is_empty();
                }
                Err(err) => report(&shared, Some(err.to_string())),
            }
        }
        let now_ms = clock();
        while let Some(e) = pending.front() {
            match log.append(e.timestamp_ms, e.flags, &e.body, now_ms) {
                Ok(_) => {
                    unsynced_records += 1;
                    unsynced_bytes += e.body.len();
                    first_unsynced.get_or_insert_with(Instant::now);
                    pending.pop_front();
                }
                Err(err) => {
                    report(&shared, Some(err.to_string()));
                    failing = true;
                    break;
                }
            }
        }
        let count = log.segments().count();
        if count != segment_count || refresh {
            segment_count = count;
            *shared.segments.lock().unwrap_or_else(|p| p.into_inner()) = log.segments().cloned().collect();
        }
        let now = Instant::now();
        let due = unsynced_records > 0
            && match mode {
                SyncMode::Immediate => true,
                SyncMode::Batch { records, bytes, delay } => {
                    unsynced_records >= records
                        || unsynced_bytes >= bytes
                        || first_unsynced.is_some_and(|t| now.duration_since(t) >= delay)
                }
                SyncMode::Periodic(interval) => now.duration_since(last_sync) >= interval,
                SyncMode::None => false,
            };
        if due || (failing && pending.is_empty() && unsynced_records > 0) {
            let started = Instant::now();
            match log.sync() {
                Ok(durable) => {
                    let done = Instant::now();
                    let synced = Synced {
                        seq: durable,
                        records: unsynced_records,
                        sync_time: done.duration_since(started),
                        oldest_wait: first_unsynced.map_or(Duration::ZERO, |t| done.duration_since(t)),
                    };
                    unsynced_records = 0;
                    unsynced_bytes = 0;
                    first_unsynced = None;
                    last_sync = now;
                    if failing {
                        failing = false;
                        report(&shared, None);
                    }
                    shared.durable.store(durable, Ordering::Release);
                    on_durable(synced);
                }
                Err(err) => {
                    report(&shared, Some(err.to_string()));
                    failing = true;
                }
            }
        }
        if shared.stop.load(Ordering::Acquire) && shared.queue.is_empty() && (pending.is_empty() || failing) {
            let started = Instant::now();
            if unsynced_records > 0 && log.sync().is_ok() {
                shared.durable.store(log.durable_seq(), Ordering::Release);
                let done = Instant::now();
                on_durable(Synced {
                    seq: log.durable_seq(),
                    records: unsynced_records,
                    sync_time: done.duration_since(started),
                    oldest_wait: first_unsynced.map_or(Duration::ZERO, |t| done.duration_since(t)),
                });
            }
            return log;
        }
        // Sleep until there is work, the next sync is due, or (after an error) retry time.
        let wait = if failing {
            Duration::from_millis(100)
        } else {
            match mode {
                SyncMode::Batch { delay, .. } if unsynced_records > 0 => delay,
                SyncMode::Periodic(interval) if unsynced_records > 0 => {
                    interval.saturating_sub(now.duration_since(last_sync))
                }
                _ => Duration::from_millis(100),
            }
        };
        shared.sleeping.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if shared.queue.is_empty() && !shared.stop.load(Ordering::Acquire) {
            std::thread::park_timeout(wait);
        }
        shared.sleeping.store(false, Ordering::Release);
    }
}

fn report(shared: &Shared, error: Option<String>) {
    shared.failing.store(error.is_some(), Ordering::Release);
    *shared.error.lock().unwrap_or_else(|p| p.into_inner()) = error;
}
