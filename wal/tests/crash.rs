//! Durability under `kill -9`: a child process appends through the writer thread in
//! `immediate` mode and prints every durable mark it is told about; the parent kills it at
//! a random moment, reopens the log and checks that every record reported durable is there,
//! intact and in order. Several cycles on the same directory, so recovery of a log that was
//! itself recovered is exercised too.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use promptmq_wal::writer::{system_clock_ms, SyncMode, WalWriter};
use promptmq_wal::{Log, Options};

const CHILD_ENV: &str = "PROMPTMQ_WAL_CRASH_CHILD_DIR";

fn options() -> Options {
    Options { segment_size: 256 * 1024, direct_io: true, buffer_size: 64 * 1024 }
}

fn payload(seq: u64) -> Vec<u8> {
    format!("payload-{seq}-").repeat(1 + (seq % 13) as usize).into_bytes()
}

/// The child: runs only when the parent starts it (as `--ignored --exact child_writer`).
#[test]
#[ignore = "helper process of immediate_mode_loses_nothing_acknowledged_under_kill_9"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let (log, _) = Log::open(&PathBuf::from(dir), 0, options(), system_clock_ms(), |_| {}).expect("child open");
    let mut next = log.next_seq();
    let out = std::sync::Mutex::new(std::io::stdout());
    let mut w = WalWriter::start(
        log,
        SyncMode::Immediate,
        4096,
        system_clock_ms,
        move |synced: promptmq_wal::writer::Synced| {
            let durable = synced.seq;
            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(o, "durable {durable}");
            let _ = o.flush();
        },
    )
    .expect("writer");
    loop {
        match w.append(system_clock_ms(), 0, payload(next)) {
            Ok(seq) => {
                assert_eq!(seq, next);
                next += 1;
            }
            Err(_) => std::thread::sleep(Duration::from_micros(50)),
        }
    }
}

#[test]
fn immediate_mode_loses_nothing_acknowledged_under_kill_9() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("promptmq-wal-crash-{}-{nanos}", std::process::id()));
    let mut rng = nanos as u64 | 1;
    let mut total_acked = 0;
    for cycle in 0..6 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--ignored", "--exact", "child_writer", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("durable ").and_then(|n| n.parse::<u64>().ok()) {
                    let _ = tx.send(n);
                }
            }
        });
        // Kill at a pseudo-random moment once the child has made progress.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(150 + rng % 400);
        let start = Instant::now();
        let mut acked = 0;
        while start.elapsed() < run_for || acked == 0 {
            assert!(start.elapsed() < Duration::from_secs(20), "child made no progress");
            if let Ok(n) = rx.recv_timeout(Duration::from_millis(10)) {
                acked = acked.max(n);
            }
        }
        child.kill().expect("kill -9");
        let _ = child.wait();
        // Durable marks printed before the kill may still sit in the pipe.
        while let Ok(n) = rx.recv_timeout(Duration::from_millis(200)) {
            acked = acked.max(n);
        }
        let mut seen = Vec::new();
        let (_, report) =
            Log::open(&dir, 0, options(), system_clock_ms(), |r| seen.push((r.seq, r.body.to_vec()))).expect("reopen");
        assert!(report.quarantined.is_empty() && report.gaps.is_empty(), "cycle {cycle}: {report:?}");
        let last = seen.last().map_or(0, |s| s.0);
        assert!(last >= acked, "cycle {cycle}: {acked} acknowledged as durable, only {last} recovered");
        for (i, (seq, body)) in seen.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "cycle {cycle}: contiguous");
            assert_eq!(body, &payload(*seq), "cycle {cycle}: record {seq} intact");
        }
        assert!(acked > total_acked, "cycle {cycle} made progress");
        total_acked = acked;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
