//! The `conns` scenario: K idle MQTT connections held open, and the broker's resident
//! memory before and after (from /proc/PID/status) when its pid is given.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Semaphore};

use crate::cli::Options;
use crate::conn::{self, PING_EVERY};
use crate::mqtt;
use crate::report::{rss_kb, ConnsReport, Report, Usage};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Tally {
    connected: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

pub async fn run(opts: &Options, addr: SocketAddr) -> Result<Report> {
    let version = opts.version();
    let k = opts.connections;
    let progress = !opts.quiet;
    let mut report = Report::new(opts, addr, 0, 0);
    let mut c = ConnsReport { requested: k, ..ConnsReport::default() };
    c.rss_before_kb = opts.pid.and_then(rss_kb);
    if opts.pid.is_some() && c.rss_before_kb.is_none() {
        report.errors.push(format!("cannot read /proc/{}/status", opts.pid.unwrap_or(0)));
    }

    let tally = Arc::new(Tally::default());
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(k);
    for i in 0..k {
        let (tally, gate, mut stop) = (tally.clone(), gate.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("pmqb-{}-c{i}", std::process::id());
            let client = {
                let Ok(_permit) = gate.acquire().await else { return };
                conn::connect(addr, version, &id, 64, None, None, CONNECT_TIMEOUT).await
            };
            let mut client = match client {
                Ok(c) => c,
                Err(e) => {
                    tally.failed.fetch_add(1, Relaxed);
                    let mut first = tally.first_error.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(|| format!("{e:#}"));
                    return;
                }
            };
            tally.connected.fetch_add(1, Relaxed);
            let mut out = Vec::with_capacity(4);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(PING_EVERY) => {
                        out.clear();
                        mqtt::encode_pingreq(&mut out);
                        if client.stream.write_all(&out).await.is_err() {
                            tally.dropped.fetch_add(1, Relaxed);
                            return;
                        }
                    }
                    n = client.rbuf.read_from(&mut client.stream) => {
                        match n {
                            Ok(0) | Err(_) => {
                                tally.dropped.fetch_add(1, Relaxed);
                                return;
                            }
                            // PINGRESP or anything else: discard.
                            Ok(_) => client.rbuf.start = client.rbuf.end,
                        }
                    }
                }
            }
            out.clear();
            mqtt::encode_disconnect(&mut out);
            let _ = tokio::time::timeout(Duration::from_millis(500), client.stream.write_all(&out)).await;
        }));
    }

    // Wait for every attempt to finish (each is bounded by CONNECT_TIMEOUT).
    let bound = started + CONNECT_TIMEOUT * (1 + (k / opts.connect_concurrency) as u32).min(12);
    let mut tick = started + Duration::from_secs(1);
    loop {
        let done = tally.connected.load(Relaxed) + tally.failed.load(Relaxed);
        if done >= k || Instant::now() >= bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if progress && Instant::now() >= tick {
            tick += Duration::from_secs(1);
            eprintln!(
                "[{:6.1}s] connecting: {} connected, {} failed of {k}",
                started.elapsed().as_secs_f64(),
                tally.connected.load(Relaxed),
                tally.failed.load(Relaxed)
            );
        }
    }
    c.connect_secs = started.elapsed().as_secs_f64();
    let usage = Usage::take(opts.pid);
    let hold_start = Instant::now();
    let hold = Duration::from_secs_f64(opts.duration);
    let mut tick = hold_start + Duration::from_secs(1);
    while Instant::now() < hold_start + hold {
        tokio::time::sleep_until(tick.min(hold_start + hold).into()).await;
        tick += Duration::from_secs(1);
        if progress {
            eprintln!(
                "[{:6.1}s] holding: {} open, {} dropped by the broker",
                started.elapsed().as_secs_f64(),
                tally.connected.load(Relaxed) - tally.dropped.load(Relaxed),
                tally.dropped.load(Relaxed)
            );
        }
    }
    c.rss_after_kb = opts.pid.and_then(rss_kb);
    Usage::take(opts.pid).fill_since(&usage, &mut report);
    report.broker_rss_kb = c.rss_after_kb;
    report.broker_peak_rss_kb = opts.pid.and_then(crate::report::peak_rss_kb);
    c.connected = tally.connected.load(Relaxed);
    c.failed = k - c.connected;
    c.dropped = tally.dropped.load(Relaxed);
    c.first_error = tally.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let (Some(b), Some(a)) = (c.rss_before_kb, c.rss_after_kb) {
        if c.connected > 0 {
            c.bytes_per_conn = Some((a as f64 - b as f64) * 1024.0 / c.connected as f64);
        }
    }
    if c.failed > 0 {
        report.errors.push(format!(
            "{} of {k} connections failed: {}",
            c.failed,
            c.first_error.as_deref().unwrap_or("connect did not complete in time")
        ));
    }
    if c.dropped > 0 {
        report.errors.push(format!("{} connections were closed by the broker while idle", c.dropped));
    }

    let _ = stop_tx.send(true);
    let end = Instant::now() + Duration::from_secs(5);
    for t in tasks {
        let _ = tokio::time::timeout_at(end.into(), t).await;
    }
    report.conns = Some(c);
    Ok(report)
}
