//! Clients that do not read: the broker stops reading from them instead of buffering their
//! replies without bound, and closes a connection whose writes cannot drain.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

// A client that floods PINGREQs and never reads its PINGRESPs. Once the replies queued for
// it pass --max-write-buffer, the broker stops reading its socket, so the client's own
// writes stall (TCP flow control) long before it could push 200 MB through; meanwhile
// other clients are served normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_throttled_not_buffered() {
    skip_on_mosquitto!("checks promptmq's --max-write-buffer");
    let broker = BrokerOpts::new().cores(2).extra_args(&["--max-write-buffer", "65536"]).start().await;
    let mut by = Bystander::connect(broker.port(), "slow-bystander").await;
    let mut s = tokio::net::TcpStream::connect(broker.addr()).await.expect("connect");
    let mut connect = bytes::BytesMut::new();
    let mut c = connect4("never-reads", true);
    c.keep_alive = 600;
    c.write(&mut connect).expect("encode");
    s.write_all(&connect).await.expect("CONNECT");
    let chunk: Vec<u8> = [0xC0u8, 0x00].repeat(32 * 1024); // 32k PINGREQs, 64 KiB
    let limit = 200 * 1024 * 1024;
    let mut written = 0usize;
    let started = Instant::now();
    let stalled = loop {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
            Err(_) => break true,
            Ok(Err(e)) => panic!("write failed after {written} bytes: {e}"),
            Ok(Ok(())) => written += chunk.len(),
        }
        if written >= limit {
            break false;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "neither stalled nor done");
    };
    assert!(stalled, "the broker kept reading {written} bytes from a client that reads nothing");
    by.check().await;
}

/// The broker's resident memory now, from /proc (Linux).
#[cfg(target_os = "linux")]
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

// Subscribers (one QoS 0, one persistent QoS 1) that stop reading while a publisher pushes
// 200 MB at them: what waits for them is bounded by --max-write-buffer, the inflight window
// and --max-queued-messages, so the broker's memory stays flat; the rest is dropped and
// counted, and the publisher is not slowed to a halt.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_stop_reading_do_not_grow_memory() {
    skip_on_mosquitto!("reads promptmq's memory");
    let broker = BrokerOpts::new().cores(2).extra_args(&["--wal-enabled", "false"]).start().await;
    let pid = broker.pid();
    let mut stalled = Vec::new();
    for (id, clean, qos) in [("stall-0", true, QoS::AtMostOnce), ("stall-1", false, QoS::AtLeastOnce)] {
        let (mut r, _) = Raw::connect4_ok(broker.port(), id, clean).await;
        r.subscribe4(1, "flood/#", qos).await;
        r.subscribe4(2, "pq/#", qos).await;
        stalled.push(r); // never read again
    }
    let (mut publ, _) = Raw::connect4_ok(broker.port(), "flooder", true).await;
    let payload = vec![b'f'; 1024];
    let mut batch = bytes::BytesMut::new();
    for i in 0..64 {
        let mut p = mqttbytes::v4::Publish::new(format!("flood/{}", i % 8), QoS::AtLeastOnce, payload.clone());
        p.qos = QoS::AtMostOnce;
        p.write(&mut batch).expect("encode");
    }
    let baseline = rss_kib(pid).expect("VmRSS");
    // QoS 1 for the persistent subscriber: its inflight window and queue fill, then the
    // queue drops; the publisher still gets every PUBACK.
    let acked = publish_qos1(broker.port(), "q1-pub".into(), 8, 1, 20_000).await;
    assert_eq!(acked.len(), 20_000, "QoS 1 publisher stalled");
    let total = 200 * 1024 * 1024;
    let mut sent = 0usize;
    let mut peak = baseline;
    let started = Instant::now();
    while sent < total {
        publ.send_bytes(&batch).await.expect("publish");
        sent += batch.len();
        if sent % (8 * 1024 * 1024) < batch.len() {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
        }
        assert!(started.elapsed() < Duration::from_secs(120), "only {sent} bytes in 120 s: the publisher was stalled");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    peak = peak.max(rss_kib(pid).unwrap_or(0));
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "pushed {} MiB at 2 stalled subscribers in {:?}: RSS {baseline} KiB -> peak {peak} KiB (+{grew} KiB)",
        sent >> 20,
        started.elapsed()
    );
    // Bounds: 2 x 4 MiB write buffers, 1024 inflight + 1000 queued 1 KiB messages, buffers.
    assert!(grew < 48 * 1024, "RSS grew by {grew} KiB while subscribers did not read");
    drop(stalled);
}
