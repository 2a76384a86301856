//! `cargo bench -p promptmq-wal`: append throughput and durable latency per sync mode.
//!
//! For each mode, one producer appends 256-byte records through the writer thread as fast
//! as its queue takes them (group commit does the rest); every record's time from append to
//! the durable notification that covers it goes into a histogram. The log lives in the
//! system temp directory (O_DIRECT where the file system allows). Set
//! `PROMPTMQ_BENCH_RECORDS` to change the record count (default 200,000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use promptmq_wal::writer::{SyncMode, WalWriter};
use promptmq_wal::{Log, Options};

struct Run {
    name: &'static str,
    records_per_sec: f64,
    latency: Option<Histogram<u64>>,
}

fn run(name: &'static str, mode: SyncMode, records: usize, rate: Option<f64>) -> Run {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("promptmq-wal-bench-{name}-{}-{nanos}", std::process::id()));
    let (log, report) = Log::open(&dir, 0, Options::default(), 0, |_| {}).expect("open log");
    let start = Instant::now();
    let appended: Arc<Vec<AtomicU64>> = Arc::new((0..records + 1).map(|_| AtomicU64::new(0)).collect());
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram")));
    let last = Arc::new(AtomicU64::new(0));
    let (a, h, l) = (Arc::clone(&appended), Arc::clone(&hist), Arc::clone(&last));
    let mut writer = WalWriter::start(
        log,
        mode,
        64 * 1024,
        || 0,
        move |synced: promptmq_wal::writer::Synced| {
            let durable = synced.seq;
            let now = start.elapsed().as_nanos() as u64;
            let from = l.swap(durable, Ordering::AcqRel) + 1;
            let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
            for seq in from..=durable.min(a.len() as u64 - 1) {
                let t = a[seq as usize].load(Ordering::Acquire);
                let _ = h.record((now.saturating_sub(t) / 1000).max(1));
            }
        },
    )
    .expect("writer");
    let body = vec![0x5a_u8; 256];
    let began = Instant::now();
    let mut n = 0;
    while n < records {
        if let Some(rate) = rate {
            // Paced: the n-th record is due at n / rate seconds.
            let due = Duration::from_secs_f64(n as f64 / rate);
            while began.elapsed() < due {
                std::hint::spin_loop();
            }
        }
        let t = start.elapsed().as_nanos() as u64;
        let seq = writer.next_seq() as usize;
        appended[seq.min(records)].store(t, Ordering::Release);
        match writer.append(0, 0, body.clone()) {
            Ok(_) => n += 1,
            Err(_) => std::thread::yield_now(),
        }
    }
    let waited = matches!(mode, SyncMode::None);
    if !waited {
        let deadline = Instant::now() + Duration::from_secs(30);
        while writer.durable_seq() < records as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let elapsed = began.elapsed();
    drop(writer);
    let _ = std::fs::remove_dir_all(&dir);
    let latency = (!waited).then(|| hist.lock().unwrap_or_else(|p| p.into_inner()).clone());
    if !report.direct_io {
        eprintln!("note: O_DIRECT not available in {}", dir.display());
    }
    Run { name, records_per_sec: records as f64 / elapsed.as_secs_f64(), latency }
}

fn main() {
    let records = std::env::var("PROMPTMQ_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let modes = [
        ("immediate", SyncMode::Immediate),
        ("batch", SyncMode::Batch { records: 1000, bytes: 4 << 20, delay: Duration::from_millis(10) }),
        ("periodic", SyncMode::Periodic(Duration::from_millis(100))),
        ("none", SyncMode::None),
    ];
    for rate in [None, Some(20_000.0)] {
        match rate {
            None => println!("\nWAL append, {records} records of 256 B, one producer as fast as the queue takes them"),
            Some(r) => println!("\nWAL append, {} records of 256 B, paced at {r:.0} records/s", records / 10),
        }
        println!("(durable latency = from append to the sync that covers the record)");
        println!(
            "{:<10} {:>14} {:>10} {:>10} {:>10} {:>10}",
            "mode", "records/s", "p50 us", "p99 us", "p99.9 us", "max us"
        );
        table(&modes, if rate.is_some() { records / 10 } else { records }, rate);
    }
}

fn table(modes: &[(&'static str, SyncMode)], records: usize, rate: Option<f64>) {
    for &(name, mode) in modes {
        let r = run(name, mode, records, rate);
        match r.latency {
            Some(h) => println!(
                "{:<10} {:>14.0} {:>10} {:>10} {:>10} {:>10}",
                r.name,
                r.records_per_sec,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            ),
            None => {
                println!("{:<10} {:>14.0} {:>10} {:>10} {:>10} {:>10}", r.name, r.records_per_sec, "-", "-", "-", "-")
            }
        }
    }
}
