//! Scenario tests of the log on a real file system: replay, segment rolls, torn tails,
//! damaged and missing segments, retention, and the writer thread's sync modes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use promptmq_wal::format::{BLOCK, HEADER_LEN};
use promptmq_wal::writer::{SyncMode, WalWriter};
use promptmq_wal::{Log, Options, RecoveryReport};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("promptmq-wal-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn small() -> Options {
    Options { segment_size: 64 * 1024, direct_io: true, buffer_size: 16 * 1024 }
}

fn body(seq: u64) -> Vec<u8> {
    format!("record number {seq} ").repeat(1 + (seq % 7) as usize).into_bytes()
}

fn open(dir: &Path) -> (Log, RecoveryReport, Vec<(u64, Vec<u8>)>) {
    let mut seen = Vec::new();
    let (log, report) = Log::open(dir, 0, small(), 1_000, |r| seen.push((r.seq, r.body.to_vec()))).expect("open");
    (log, report, seen)
}

fn fill(log: &mut Log, n: u64) {
    for _ in 0..n {
        let seq = log.next_seq();
        log.append(1_000 + seq, 0, &body(seq), 1_000).expect("append");
    }
    log.sync().expect("sync");
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn synced_records_are_replayed_in_order_across_segments() {
    let dir = TempDir::new("replay");
    let (mut log, report, seen) = open(&dir.0);
    assert!(seen.is_empty());
    assert!(report.direct_io, "O_DIRECT on the test file system");
    fill(&mut log, 2_000);
    assert_eq!(log.durable_seq(), 2_000);
    assert!(log.segments().count() > 3, "small segments roll");
    drop(log);
    let (log, report, seen) = open(&dir.0);
    assert_eq!(seen.len(), 2_000);
    assert!(seen.iter().enumerate().all(|(i, (seq, b))| *seq == i as u64 + 1 && *b == body(*seq)));
    assert!(report.torn_tail.is_none() && report.quarantined.is_empty() && report.gaps.is_empty(), "{report:?}");
    assert_eq!(log.next_seq(), 2_001);
}

#[test]
fn appends_continue_after_reopen_in_the_same_block() {
    let dir = TempDir::new("continue");
    let (mut log, _, _) = open(&dir.0);
    fill(&mut log, 3);
    drop(log);
    for round in 0..3 {
        let (mut log, _, seen) = open(&dir.0);
        assert_eq!(seen.len(), 3 + round * 2);
        fill(&mut log, 2);
    }
    let (_, _, seen) = open(&dir.0);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
}

#[test]
fn unsynced_records_are_not_reported_durable() {
    let dir = TempDir::new("unsynced");
    let (mut log, _, _) = open(&dir.0);
    fill(&mut log, 5);
    log.append(1, 0, b"not yet", 1).expect("append");
    assert_eq!(log.durable_seq(), 5);
    log.sync().expect("sync");
    assert_eq!(log.durable_seq(), 6);
}

#[test]
fn torn_tail_is_cut_and_writing_resumes_after_the_last_good_record() {
    let dir = TempDir::new("torn");
    let (mut log, _, _) = open(&dir.0);
    fill(&mut log, 40);
    drop(log);
    let last = segment_files(&dir.0).pop().expect("a segment");
    let mut data = fs::read(&last).expect("read");
    let end = data.iter().rposition(|&b| b != 0).expect("data");
    // Damage the last record's body: a write torn in the middle.
    data[end - 3] ^= 0xff;
    // And leave stale bytes further out, as a half-finished write of later blocks would.
    data[end + 2 * BLOCK] = 0x55;
    fs::write(&last, &data).expect("write back");
    let (mut log, report, seen) = open(&dir.0);
    assert_eq!(seen.len(), 39, "the torn record is dropped, the rest kept");
    let (path, _, why) = report.torn_tail.expect("torn tail reported");
    assert_eq!(path, last);
    assert_eq!(why, "record checksum mismatch");
    fill(&mut log, 5);
    drop(log);
    let (_, report, seen) = open(&dir.0);
    assert!(report.torn_tail.is_none(), "clean after the cut: {report:?}");
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=44).collect::<Vec<_>>());
}

#[test]
fn damaged_middle_segment_is_quarantined_keeping_its_intact_prefix() {
    let dir = TempDir::new("middle");
    let (mut log, _, _) = open(&dir.0);
    fill(&mut log, 2_000);
    drop(log);
    let files = segment_files(&dir.0);
    assert!(files.len() >= 3);
    let victim = &files[1];
    let mut data = fs::read(victim).expect("read");
    data[HEADER_LEN + 5_000] ^= 0x01;
    fs::write(victim, &data).expect("write back");
    let (mut log, report, seen) = open(&dir.0);
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    let (orig, aside, what) = &report.quarantined[0];
    assert_eq!(orig, victim);
    assert!(aside.exists() && what.contains("checksum"), "{what}");
    assert_eq!(report.gaps.len(), 1, "the lost records are a reported gap: {report:?}");
    let (lost_from, lost_to) = report.gaps[0];
    let kept: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert!(kept.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(kept.len() as u64, 2_000 - (lost_to - lost_from + 1));
    assert!(!kept.contains(&lost_from) && kept.contains(&(lost_from - 1)) && kept.contains(&(lost_to + 1)));
    fill(&mut log, 1);
    drop(log);
    // The intact prefix survived the quarantine: the same records come back next time, and
    // the damage is not reported again.
    let (_, report, seen_again) = open(&dir.0);
    assert!(report.quarantined.is_empty(), "{report:?}");
    assert_eq!(seen_again.len(), seen.len() + 1);
}

#[test]
fn deleted_segment_is_a_reported_gap() {
    let dir = TempDir::new("deleted");
    let (mut log, _, _) = open(&dir.0);
    fill(&mut log, 2_000);
    drop(log);
    let files = segment_files(&dir.0);
    fs::remove_file(&files[1]).expect("rm");
    let (_, report, seen) = open(&dir.0);
    assert_eq!(report.gaps.len(), 1, "{report:?}");
    assert!(seen.len() < 2_000 && seen.len() > 1_000);
}

#[test]
fn unreadable_header_is_quarantined_and_the_log_still_opens() {
    let dir = TempDir::new("header");
    let (mut log, _, _) = open(&dir.0);
    fill(&mut log, 2_000);
    drop(log);
    let files = segment_files(&dir.0);
    let mut data = fs::read(&files[0]).expect("read");
    data[0] = b'X';
    fs::write(&files[0], &data).expect("write");
    let (_, report, seen) = open(&dir.0);
    assert_eq!(report.quarantined.len(), 1);
    assert!(report.quarantined[0].2.contains("magic"), "{:?}", report.quarantined);
    assert!(!seen.is_empty() && seen[0].0 > 1);
}

#[test]
fn retention_deletes_whole_old_segments_but_never_needed_ones() {
    let dir = TempDir::new("retention");
    let (mut log, _, _) = open(&dir.0);
    fill(&mut log, 3_000);
    let before = log.segments().count();
    assert!(before > 4);
    // Size: keep at most 3 segments' worth, but seq 1 is still needed: nothing goes.
    assert!(log.enforce_retention(1_000, None, Some(3 * 64 * 1024), 1).expect("retention").is_empty());
    let deleted = log.enforce_retention(1_000, None, Some(3 * 64 * 1024), u64::MAX).expect("retention");
    assert_eq!(log.segments().count(), 3);
    assert_eq!(deleted.len(), before - 3);
    assert!(deleted.iter().all(|p| !p.exists()));
    // Age: records were stamped 1_000 + seq ms; at now = 10_000_000 all closed ones are old.
    let deleted = log.enforce_retention(10_000_000, Some(1_000), None, u64::MAX).expect("retention");
    assert_eq!(deleted.len(), 2, "the active segment is never deleted");
    drop(log);
    let (_, report, seen) = open(&dir.0);
    assert!(report.quarantined.is_empty());
    assert_eq!(seen.last().map(|s| s.0), Some(3_000));
}

#[test]
fn writer_thread_immediate_mode_reports_durability_after_sync() {
    let dir = TempDir::new("writer");
    let (log, _, _) = open(&dir.0);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut w = WalWriter::start(
        log,
        SyncMode::Immediate,
        1024,
        || 1_000,
        move |synced: promptmq_wal::writer::Synced| {
            let _ = tx.send(synced.seq);
        },
    )
    .expect("start");
    let mut last = 0;
    for i in 0..500u64 {
        last = w.append(1_000, 0, body(i)).expect("queue has room");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.durable_seq() < last {
        assert!(std::time::Instant::now() < deadline, "durable mark stuck at {}", w.durable_seq());
        let _ = rx.recv_timeout(Duration::from_millis(100));
    }
    assert_eq!(w.durable_seq(), 500);
    assert!(w.last_error().is_none());
    let log = w.shutdown().expect("log back");
    assert_eq!(log.durable_seq(), 500);
}

#[test]
fn writer_thread_batch_mode_syncs_within_its_delay() {
    let dir = TempDir::new("batch");
    let (log, _, _) = open(&dir.0);
    let mode = SyncMode::Batch { records: 1_000_000, bytes: usize::MAX, delay: Duration::from_millis(50) };
    let mut w = WalWriter::start(log, mode, 1024, || 1_000, |_| {}).expect("start");
    let seq = w.append(1, 0, b"one".to_vec()).expect("room");
    let start = std::time::Instant::now();
    while w.durable_seq() < seq {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(start.elapsed() >= Duration::from_millis(40), "not before the batch delay");
}
