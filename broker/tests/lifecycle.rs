//! Stopping the broker: SIGTERM and SIGINT close connections (MQTT 5 clients are told
//! DISCONNECT 0x8B, Server shutting down), sync the logs and exit 0 within a bound; under
//! QoS 1 load no acknowledged message is lost across the stop and the restart.
#![cfg(unix)] // signals

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use mqttbytes::v4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_disconnect_clients_and_exit_0() {
    skip_on_mosquitto!("promptmq's signal handling");
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut broker = BrokerOpts::new().cores(2).log_level("info").start().await;
        let (mut v5, _) = Raw::connect5_ok(broker.port(), connect5("stop-v5", true)).await;
        let (mut v4, _) = Raw::connect4_ok(broker.port(), "stop-v4", true).await;
        let sent = Instant::now();
        broker.signal(sig);
        // [MQTT-3.14.2-1]-style server DISCONNECT: 0x8B Server shutting down (MQTT 5 only).
        let f = v5.recv().await;
        assert_eq!(f.disconnect_reason(), Some(0x8B), "{name}: MQTT 5 client told why: {f:?}");
        assert_eq!(v5.read_frame(Duration::from_secs(5)).await.err(), Some(ReadError::Closed), "{name}");
        // MQTT 3.1.1 has no server DISCONNECT: the connection just closes.
        assert_eq!(v4.read_frame(Duration::from_secs(5)).await.err(), Some(ReadError::Closed), "{name}");
        let status = broker.wait_exit(Duration::from_secs(10)).await;
        let took = sent.elapsed();
        assert!(status.is_some_and(|s| s.success()), "{name}: exit status {status:?}\n{}", broker.log_text());
        assert!(took < Duration::from_secs(5), "{name}: took {took:?}");
        let log = broker.log_text();
        assert!(log.contains(&format!("{name}: stopping")) && log.contains("promptmq stopped"), "{log}");
    }
}

/// Stopping begins with closing the listeners: while the broker is still finishing with a
/// client that has not closed its side, a new connection is refused by the kernel, not
/// accepted and dropped (what a load balancer's health check and a reconnecting client see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_refuses_new_connections() {
    skip_on_mosquitto!("promptmq's signal handling");
    let mut broker = BrokerOpts::new().cores(2).start().await;
    let port = broker.port();
    // Told to go but keeping its socket open: the broker lingers on it (up to 2 s).
    let (mut lingering, _) = Raw::connect5_ok(port, connect5("stop-linger", true)).await;
    broker.signal(libc::SIGTERM);
    assert_eq!(lingering.recv().await.disconnect_reason(), Some(0x8B));
    // Every core has begun stopping by now (they are told at once; the lingering client
    // keeps the broker up for 2 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Not one connection gets through: each would otherwise be accepted, then dropped.
    for attempt in 0..4 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "attempt {attempt}: {e}"),
            Ok(_) => panic!("attempt {attempt}: a connection was accepted 500 ms into the stop"),
        }
    }
    assert!(broker.is_running(), "the broker had already exited: the check proves nothing");
    drop(lingering);
    let status = broker.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
}

/// A persistent subscriber (QoS 1, acknowledging what it gets) and a publisher running
/// flat out; SIGTERM mid-stream; restart from the same data directory. Every message the
/// publisher had acknowledged reaches the subscriber, before the stop or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_qos1_load_loses_no_acknowledged_message() {
    skip_on_mosquitto!("promptmq's graceful stop");
    let mut broker = BrokerOpts::new().cores(2).log_level("info").start().await;
    let port = broker.port();
    let (mut sub, _) = Raw::connect4_ok(port, "stop-sub", false).await;
    sub.subscribe4(1, "pq/#", QoS::AtLeastOnce).await;

    let publisher = tokio::spawn(publish_qos1(port, "stop-pub".into(), 8, 1, 10_000_000));
    let mut got: HashSet<u64> = HashSet::new();
    let mut order: HashMap<String, u64> = HashMap::new();
    let stop_at = Instant::now() + Duration::from_millis(800);
    let mut signalled = false;
    loop {
        if !signalled && Instant::now() > stop_at {
            broker.signal(libc::SIGTERM);
            signalled = true;
        }
        match sub.read_frame(Duration::from_secs(5)).await {
            Ok(f) => receive(&mut sub, f, &mut got, &mut order).await,
            Err(_) => break,
        }
    }
    assert!(signalled, "the subscriber's connection ended before the stop");
    let acked = publisher.await.expect("publisher task");
    let status = broker.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}\n{}", broker.log_text());
    assert!(acked.len() > 1000, "only {} acknowledged before the stop: no load", acked.len());
    let before = got.len();

    broker.restart().await;
    let (mut sub, ack) = Raw::connect4_ok(port, "stop-sub", false).await;
    assert!(ack.session_present, "the persistent session survived the stop");
    while let Ok(f) = sub.read_frame(Duration::from_secs(2)).await {
        receive(&mut sub, f, &mut got, &mut order).await;
    }
    let missing: Vec<u64> = acked.iter().map(|(_, s)| *s).filter(|s| !got.contains(s)).collect();
    eprintln!(
        "{} acknowledged; subscriber got {before} before the stop and {} after; missing {}",
        acked.len(),
        got.len() - before,
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Records a PUBLISH (payload = sequence number), checks per-topic order of first
/// deliveries, and acknowledges it.
async fn receive(sub: &mut Raw, f: Frame, got: &mut HashSet<u64>, order: &mut HashMap<String, u64>) {
    let v4::Packet::Publish(p) = f.v4() else { return };
    let seq: u64 = String::from_utf8_lossy(&p.payload).parse().expect("sequence number payload");
    if got.insert(seq) && !p.dup {
        let last = order.entry(p.topic.clone()).or_insert(0);
        assert!(seq > *last, "{}: #{seq} after #{last} [MQTT-4.6.0-5]", p.topic);
        *last = seq;
    }
    let mut ack = bytes::BytesMut::new();
    v4::PubAck::new(p.pkid).write(&mut ack).expect("encode PUBACK");
    let _ = sub.send_bytes(&ack).await;
}
