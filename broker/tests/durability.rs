//! Durability through real crashes: the broker is `kill -9`ed under QoS 1 load and
//! restarted from its data directory.
//!
//! What a process crash can show: an acknowledgement was not sent before its record was
//! written to the log. (A power cut would also test the fdatasync itself; the page cache
//! survives a process kill.)

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// A 2-core broker whose acknowledgements wait for the fdatasync that covers them
/// (`immediate`), logging at `info` (its log is shown when an assertion fails).
fn immediate_broker() -> BrokerOpts {
    BrokerOpts::new().cores(2).log_level("info").extra_args(&["--wal-sync-mode", "immediate"])
}

/// Leaves behind an offline persistent session (expiry 1 h) subscribed to `filter`.
async fn offline_subscriber(port: u16, id: &str, filter: &str, qos: QoS5) {
    let mut c = Client5::connect(port, id, false, Some(3600)).await;
    c.subscribe(filter, qos).await;
    c.disconnect().await;
}

/// Publishes retained QoS 1 updates (payload = a sequence number) round-robin over
/// `topics` topics with up to 32 in flight, until `until`; returns the highest
/// acknowledged sequence number per topic. Connection errors end it quietly (the broker
/// is being killed).
async fn publish_until(port: u16, id: &str, topics: usize, first_seq: u64, until: Instant) -> HashMap<String, u64> {
    let mut acked = HashMap::new();
    for (topic, acks) in publish_until_timed(port, id, topics, first_seq, until).await {
        acked.insert(topic, acks.iter().map(|a| a.0).max().unwrap_or(0));
    }
    acked
}

/// Like `publish_until`, with every acknowledgement: topic -> [(seq, when acknowledged)].
async fn publish_until_timed(
    port: u16,
    id: &str,
    topics: usize,
    first_seq: u64,
    until: Instant,
) -> HashMap<String, Vec<(u64, Instant)>> {
    use mqttbytes::v4;
    let mut acked: HashMap<String, Vec<(u64, Instant)>> = HashMap::new();
    let Ok(Ok((mut c, _))) =
        tokio::time::timeout(Duration::from_secs(5), async { Ok::<_, ()>(Raw::connect4_ok(port, id, true).await) })
            .await
    else {
        return acked;
    };
    let mut in_flight: HashMap<u16, (String, u64)> = HashMap::new();
    let mut seq = first_seq;
    let mut pkid: u16 = 0;
    while Instant::now() < until {
        while in_flight.len() < 32 {
            pkid = pkid % 60_000 + 1;
            let topic = format!("dur/{}", seq % topics as u64);
            let mut p = v4::Publish::new(&topic, QoS::AtLeastOnce, seq.to_string().into_bytes());
            p.pkid = pkid;
            p.retain = true;
            let mut b = bytes::BytesMut::new();
            if p.write(&mut b).is_err() || c.send_bytes(&b).await.is_err() {
                return acked;
            }
            in_flight.insert(pkid, (topic, seq));
            seq += 1;
        }
        match c.read_frame(Duration::from_secs(2)).await {
            Ok(f) if f.ptype() == 4 => {
                let id = u16::from_be_bytes([f.body()[0], f.body()[1]]);
                if let Some((topic, s)) = in_flight.remove(&id) {
                    acked.entry(topic).or_default().push((s, Instant::now()));
                }
            }
            Ok(_) => {}
            Err(_) => return acked,
        }
    }
    acked
}

/// One crash cycle: 700 ms of retained QoS 1 load from sequence number `seq`, `kill -9`,
/// restart. Returns every acknowledgement, when the kill happened, and what survived.
async fn load_then_kill(
    broker: &mut Broker,
    id: &str,
    topics: usize,
    seq: u64,
) -> (HashMap<String, Vec<(u64, Instant)>>, Instant, HashMap<String, u64>) {
    let acked = publish_until_timed(broker.port(), id, topics, seq, Instant::now() + Duration::from_millis(700)).await;
    let killed_at = Instant::now();
    broker.crash_and_restart().await;
    let retained = retained_now(broker.port(), topics).await;
    (acked, killed_at, retained)
}

/// Reads the retained message of every `dur/` topic: topic -> sequence number.
async fn retained_now(port: u16, topics: usize) -> HashMap<String, u64> {
    let mut sub = Client4::connect(port, "dur-reader", true).await;
    sub.subscribe("dur/#", rumqttc::QoS::AtLeastOnce).await;
    let mut got = HashMap::new();
    while got.len() < topics {
        let Some(p) = sub.try_recv(Duration::from_secs(3)).await else { break };
        assert!(p.retain, "retained on subscribe [MQTT-3.3.1-9]");
        let seq: u64 = String::from_utf8_lossy(&p.payload).parse().expect("numeric payload");
        got.insert(p.topic.clone(), seq);
    }
    sub.disconnect().await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_retained_messages_survive_kill_9() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    let topics = 40;
    let mut broker = immediate_broker().start().await;
    let mut acked_total: HashMap<String, u64> = HashMap::new();
    let mut seq = 1;
    for cycle in 0..4 {
        let run_for = Duration::from_millis(300 + 150 * cycle);
        let acked =
            publish_until(broker.port(), &format!("dur-pub-{cycle}"), topics, seq, Instant::now() + run_for).await;
        // Kill while the publisher's last messages may be in flight.
        broker.crash_and_restart().await;
        for (t, s) in acked {
            let e = acked_total.entry(t).or_insert(0);
            *e = (*e).max(s);
        }
        seq += 1_000_000;
        let retained = retained_now(broker.port(), topics).await;
        assert!(!acked_total.is_empty(), "cycle {cycle}: the publisher got acknowledgements");
        for (topic, acked_seq) in &acked_total {
            let kept = retained.get(topic).copied();
            assert!(
                kept.is_some_and(|k| k >= *acked_seq),
                "cycle {cycle}: {topic} acknowledged up to {acked_seq}, retained after restart: {kept:?}"
            );
        }
    }
    let log = broker.log_text();
    // Recovery after each kill found no damage to report: no quarantined segment, no gap.
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_data_directory_is_refused() {
    skip_on_mosquitto!("promptmq's data directory lock");
    let broker = BrokerOpts::new().cores(2).start().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_promptmq"))
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(broker.data_dir())
        .output()
        .expect("run a second broker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another promptmq process"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_a_restart_even_without_immediate_sync() {
    skip_on_mosquitto!("promptmq's WAL");
    let mut broker = BrokerOpts::new().cores(4).extra_args(&["--wal-sync-mode", "periodic"]).start().await;
    let mut p = Client5::connect(broker.port(), "ret-pub", true, None).await;
    for i in 0..20 {
        p.publish(&format!("dur/{i}"), QoS5::AtLeastOnce, true, i.to_string()).await;
    }
    // Delete one: an empty retained payload is logged too [MQTT-3.3.1-6].
    p.publish("dur/3", QoS5::AtLeastOnce, true, Vec::new()).await;
    p.disconnect().await;
    // Periodic mode syncs every 100 ms; the page cache survives a process kill anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.crash_and_restart().await;
    let retained = retained_now(broker.port(), 19).await;
    assert_eq!(retained.len(), 19, "{retained:?}");
    assert!(!retained.contains_key("dur/3"));
    assert_eq!(retained.get("dur/7"), Some(&7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscriber_gets_every_acknowledged_message_after_kill_9() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    let mut broker = immediate_broker().max_queued_messages(1_000_000).start().await;
    let port = broker.port();
    offline_subscriber(port, "pq-sub", "pq/#", QoS5::AtLeastOnce).await;
    // And one with an exact filter (recovery indexes exact filters apart from wildcards).
    offline_subscriber(port, "pq-exact", "pq/3", QoS5::AtLeastOnce).await;
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut first = 1;
    for cycle in 0..3 {
        // Publish while the subscriber is offline and kill the broker in the middle of it.
        let publisher = tokio::spawn(publish_qos1(port, format!("pq-pub-{cycle}"), 8, first, 4_000));
        tokio::time::sleep(Duration::from_millis(120)).await;
        broker.crash_and_restart().await;
        acked.extend(publisher.await.expect("publisher task"));
        first += 1_000_000;
        assert!(!acked.is_empty(), "cycle {cycle}: some publishes were acknowledged before the kill");

        let mut sub = Client5::connect(port, "pq-sub", false, Some(3600)).await;
        assert!(sub.connack.session_present, "cycle {cycle}: the session survived the crash\n{}", broker.log_text());
        let mut got: HashMap<String, Vec<u64>> = HashMap::new();
        while let Some(p) = sub.try_recv(Duration::from_secs(2)).await {
            let seq: u64 = String::from_utf8_lossy(&p.payload).parse().expect("numeric payload");
            got.entry(topic5(&p)).or_default().push(seq);
        }
        sub.disconnect().await;
        for (topic, seq) in &acked {
            if *seq < first - 1_000_000 {
                continue; // delivered in an earlier cycle
            }
            let seqs = got.get(topic).map(Vec::as_slice).unwrap_or(&[]);
            assert!(seqs.contains(seq), "cycle {cycle}: acknowledged {topic} #{seq} was not delivered");
        }
        for (topic, seqs) in &got {
            // In order per topic [MQTT-4.6.0-5]; a redelivery after the crash may repeat a
            // message, never go backwards past a new one.
            let mut firsts: Vec<u64> = Vec::new();
            for s in seqs {
                if !firsts.contains(s) {
                    firsts.push(*s);
                }
            }
            assert!(firsts.windows(2).all(|w| w[0] < w[1]), "cycle {cycle}: {topic} out of order: {seqs:?}");
        }
        let mut exact = Client5::connect(port, "pq-exact", false, Some(3600)).await;
        let mut got_exact: Vec<u64> = Vec::new();
        while let Some(p) = exact.try_recv(Duration::from_secs(1)).await {
            assert_eq!(topic5(&p), "pq/3");
            got_exact.push(String::from_utf8_lossy(&p.payload).parse().expect("numeric payload"));
        }
        exact.disconnect().await;
        for (_, seq) in acked.iter().filter(|(t, s)| t == "pq/3" && *s >= first - 1_000_000) {
            assert!(got_exact.contains(seq), "cycle {cycle}: acknowledged pq/3 #{seq} missed the exact subscriber");
        }
    }
}

fn segment_count(data: &std::path::Path) -> usize {
    let Ok(shards) = std::fs::read_dir(data.join("wal")) else { return 0 };
    shards
        .filter_map(|s| std::fs::read_dir(s.ok()?.path()).ok())
        .flat_map(|files| files.filter_map(|f| f.ok()))
        .filter(|f| f.path().extension().is_some_and(|e| e == "wal"))
        .count()
}

/// Waits (up to 20 s) until the number of segment files drops below `than`.
async fn segments_drop_below(data: &std::path::Path, than: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = segment_count(data);
        if n < than || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_segments_but_keeps_what_is_still_needed() {
    skip_on_mosquitto!("promptmq's WAL retention");
    let mut broker = BrokerOpts::new()
        .cores(2)
        .max_queued_messages(100_000)
        .extra_args(&["--wal-segment-size", "65536", "--retention-max-size", "262144"])
        .start()
        .await;
    let port = broker.port();
    // State that lives in the oldest segments: a retained message, a persistent session,
    // and messages owed to that session while it is offline.
    let mut p = Client5::connect(port, "ret-pub", true, None).await;
    p.publish("keep/retained", QoS5::AtLeastOnce, true, "still here").await;
    offline_subscriber(port, "ret-sub", "owed/#", QoS5::AtLeastOnce).await;
    for i in 0..20 {
        p.publish("owed/x", QoS5::AtLeastOnce, false, format!("owed {i}")).await;
    }
    // Then much more history than the size limit allows.
    let noise = vec![b'n'; 400];
    let publish_noise = async |p: &mut Client5| {
        for _ in 0..30 {
            let batch: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("noise/{i}"), noise.clone())).collect();
            p.publish_many(batch, QoS5::AtLeastOnce).await;
        }
    };
    publish_noise(&mut p).await;
    let before = segment_count(&broker.data_dir());
    let after = segments_drop_below(&broker.data_dir(), before).await;
    assert!(after < before, "old segments deleted: {before} -> {after}");

    // The owed messages pin their shard's log until the session has them.
    let mut sub = Client5::connect(port, "ret-sub", false, Some(3600)).await;
    let mut owed = Vec::new();
    while let Some(m) = sub.try_recv(Duration::from_secs(2)).await {
        owed.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    let expected: Vec<String> = (0..20).map(|i| format!("owed {i}")).collect();
    assert_eq!(owed, expected, "messages owed to the offline session were kept");
    sub.disconnect().await;
    // Released: now every shard's oldest segments go, retained message and session
    // snapshot included, and those two must have been rewritten ahead of the cut.
    publish_noise(&mut p).await;
    p.disconnect().await;
    let settled = segments_drop_below(&broker.data_dir(), after).await;
    assert!(settled < after, "pinned segments released: {after} -> {settled}");
    let per_shard_limit = 262_144 / 65_536 + 2;
    assert!(settled <= 2 * per_shard_limit, "{settled} segments for 2 shards");

    broker.crash_and_restart().await;
    let mut r = Client5::connect(port, "ret-reader", true, None).await;
    r.subscribe("keep/#", QoS5::AtLeastOnce).await;
    let retained = r.recv().await;
    assert_eq!(&retained.payload[..], b"still here", "the retained message was rewritten ahead of the cut");
    let sub = Client5::connect(port, "ret-sub", false, Some(3600)).await;
    assert!(sub.connack.session_present, "the session snapshot was rewritten ahead of the cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_mode_loses_at_most_its_interval_on_kill_9() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    // Periodic mode acknowledges before syncing; the log is written (and synced) every
    // interval, so a crash may lose what was acknowledged in the last interval, and no more.
    let interval = Duration::from_millis(300);
    let slack = Duration::from_millis(250);
    let topics = 40;
    let mut broker = BrokerOpts::new()
        .cores(2)
        .extra_args(&["--wal-sync-mode", "periodic", "--wal-sync-interval", "300"])
        .start()
        .await;
    let mut seq = 1;
    let mut lost_total = 0;
    let mut acked_total = 0;
    for cycle in 0..3 {
        let (acked, killed_at, retained) = load_then_kill(&mut broker, &format!("per-{cycle}"), topics, seq).await;
        seq += 1_000_000;
        for (topic, acks) in &acked {
            let kept = retained.get(topic).copied().unwrap_or(0);
            acked_total += acks.len();
            for &(s, at) in acks.iter().filter(|(s, _)| *s > kept) {
                lost_total += 1;
                let age = killed_at.duration_since(at);
                assert!(
                    age <= interval + slack,
                    "cycle {cycle}: {topic} #{s} was acknowledged {age:?} before the kill and lost (interval {interval:?})"
                );
            }
        }
    }
    eprintln!(
        "periodic mode: {lost_total} of {acked_total} acknowledged messages lost over 3 kills, all within the interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_deletes_segments_older_than_the_limit() {
    skip_on_mosquitto!("promptmq's WAL retention");
    let mut broker = BrokerOpts::new()
        .cores(2)
        .extra_args(&["--wal-segment-size", "65536", "--retention-max-message-age", "4s"])
        .start()
        .await;
    let port = broker.port();
    let mut p = Client5::connect(port, "age-pub", true, None).await;
    p.publish("age/retained", QoS5::AtLeastOnce, true, "still here").await;
    let noise = vec![b'n'; 400];
    for _ in 0..20 {
        let batch: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("age/noise/{i}"), noise.clone())).collect();
        p.publish_many(batch, QoS5::AtLeastOnce).await;
    }
    p.disconnect().await;
    let before = segment_count(&broker.data_dir());
    assert!(before >= 8, "the noise filled several segments: {before}");
    // Nothing new arrives: once the history is older than 4 s (and the shard's next
    // retention check runs), only the active segments and the rewritten state remain.
    let after = segments_drop_below(&broker.data_dir(), 5).await;
    assert!(after < 5, "segments older than the age limit deleted: {before} -> {after}");
    broker.crash_and_restart().await;
    let mut r = Client5::connect(port, "age-reader", true, None).await;
    r.subscribe("age/retained", QoS5::AtLeastOnce).await;
    assert_eq!(&r.recv().await.payload[..], b"still here", "the retained message was rewritten ahead of the cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_loses_at_most_its_batch_on_kill_9() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    // Batch mode acknowledges before syncing and syncs every `batch` records (the interval
    // is set long so that the record count is what triggers). A crash can lose the records
    // appended since the last sync: fewer than `batch` per shard, plus those acknowledged
    // while that sync ran (they wait in the writer's queue; a sync takes 0.1 to several ms).
    let sync_slack = Duration::from_millis(100);
    let batch = 64;
    let cores = 2;
    let topics = 40;
    let mut broker = BrokerOpts::new()
        .cores(cores)
        .extra_args(&["--wal-sync-mode", "batch", "--wal-batch-sync-size", "64", "--wal-sync-interval", "60s"])
        .start()
        .await;
    let mut seq = 1;
    let (mut lost_total, mut acked_total) = (0, 0);
    for cycle in 0..4 {
        let (acked, killed_at, retained) = load_then_kill(&mut broker, &format!("bat-{cycle}"), topics, seq).await;
        seq += 1_000_000;
        let during_last_sync =
            acked.values().flatten().filter(|(_, at)| killed_at.duration_since(*at) <= sync_slack).count();
        // Each topic's retained value is its newest surviving sequence number; every
        // acknowledged message of a topic above it was lost.
        let lost: usize = acked
            .iter()
            .map(|(topic, acks)| {
                let kept = retained.get(topic).copied().unwrap_or(0);
                acks.iter().filter(|(s, _)| *s > kept).count()
            })
            .sum();
        let acked_count: usize = acked.values().map(Vec::len).sum();
        assert!(acked_count > 200, "cycle {cycle}: only {acked_count} acknowledged: the test did not load the log");
        assert!(
            lost <= cores * batch + during_last_sync,
            "cycle {cycle}: {lost} acknowledged messages lost, more than {cores} shards x {batch} + the \
             {during_last_sync} acknowledged in the last {sync_slack:?}"
        );
        lost_total += lost;
        acked_total += acked_count;
    }
    eprintln!("batch mode (64 records): {lost_total} of {acked_total} acknowledged messages lost over 4 kills");
}

/// A v5 CONNECT for a persistent session (expiry an hour) with a retained QoS 1 will on
/// `topic`, sent `delay` seconds after the connection ends.
fn persistent_with_will(id: &str, topic: &str, payload: &[u8], delay: u32) -> mqttbytes::v5::Connect {
    let mut c = connect5_session(id, true, 3600);
    let mut w = mqttbytes::v5::LastWill::new(topic, payload.to_vec(), mqttbytes::QoS::AtLeastOnce, true);
    let mut p = will_props5();
    p.delay_interval = Some(delay);
    w.properties = Some(p);
    c.last_will = Some(w);
    c
}

/// The retained message on `topic` as a new subscriber sees it, if any within `wait`.
async fn retained_payload(port: u16, topic: &str, wait: Duration) -> Option<Vec<u8>> {
    let (mut r, _) = Raw::connect5_ok(port, connect5("will-reader", true)).await;
    r.sub5(1, topic, mqttbytes::QoS::AtLeastOnce).await;
    match r.read_frame(wait).await {
        Ok(f) => match f.v5() {
            mqttbytes::v5::Packet::Publish(p) => Some(p.payload.to_vec()),
            other => panic!("expected the retained PUBLISH, got {other:?}"),
        },
        Err(_) => None,
    }
}

/// Wills of persistent sessions are in their logged snapshots: a client that was connected
/// when the broker was killed lost its connection without DISCONNECT, so after the restart
/// its will is published once its delay has run [MQTT-3.1.2-8]; a delayed will that was
/// already running keeps its time; one that was published before the crash, or cancelled by
/// a normal DISCONNECT [MQTT-3.1.2-10], does not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_of_persistent_sessions_survive_kill_9() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    let mut broker = BrokerOpts::new().start().await;
    let port = broker.port();
    // Connected through the crash, will delay 1 s.
    let (_live, ack) = Raw::connect5(port, persistent_with_will("will-live", "wills/live", b"live gone", 1)).await;
    assert_eq!(ack.code as u8, 0);
    // Connection dropped before the crash; its will (delay 2 s) is running when it happens.
    let (dropped, _) = Raw::connect5(port, persistent_with_will("will-drop", "wills/drop", b"drop gone", 2)).await;
    drop(dropped);
    // Disconnected normally: its will is discarded and must stay so.
    let (polite, _) = Raw::connect5(port, persistent_with_will("will-polite", "wills/polite", b"never", 0)).await;
    polite.disconnect5(mqttbytes::v5::DisconnectReasonCode::NormalDisconnection).await;
    // Dropped with no delay: published now, and not again after the restart.
    let (once, _) = Raw::connect5(port, persistent_with_will("will-once", "wills/once", b"once", 0)).await;
    drop(once);
    assert_eq!(retained_payload(port, "wills/once", Duration::from_secs(5)).await.as_deref(), Some(&b"once"[..]));
    // Delete the retained "once" so that a second publication would show.
    let mut cleaner = Client5::connect(port, "will-cleaner", true, None).await;
    cleaner.publish("wills/once", QoS5::AtLeastOnce, true, Vec::new()).await;
    // The session snapshots are logged by the sessions' home shards; give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    broker.crash_and_restart().await;
    assert_eq!(
        retained_payload(port, "wills/live", Duration::from_secs(5)).await.as_deref(),
        Some(&b"live gone"[..]),
        "the will of a client connected at the crash"
    );
    assert_eq!(
        retained_payload(port, "wills/drop", Duration::from_secs(5)).await.as_deref(),
        Some(&b"drop gone"[..]),
        "a delayed will running at the crash"
    );
    assert_eq!(retained_payload(port, "wills/polite", Duration::from_millis(500)).await, None, "a discarded will");
    assert_eq!(retained_payload(port, "wills/once", Duration::from_millis(500)).await, None, "a will published twice");
}

/// A session that expires while the broker is down still owes its will: session expiry 1 s,
/// will delay 60 s, the connection dropped, the broker killed and started again 2 s later.
/// The session ended during the downtime, and a will is published when its session ends
/// (MQTT 5, 3.1.2.5): it goes out at the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_whose_session_expired_while_the_broker_was_down_is_published() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    let mut broker = BrokerOpts::new().start().await;
    let port = broker.port();
    let mut c = persistent_with_will("will-expired", "wills/expired", b"expired", 60);
    if let Some(p) = c.properties.as_mut() {
        p.session_expiry_interval = Some(1);
    }
    let (dropped, ack) = Raw::connect5(port, c).await;
    assert_eq!(ack.code as u8, 0);
    drop(dropped);
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.crash_and_restart().await;
    assert_eq!(
        retained_payload(port, "wills/expired", Duration::from_secs(5)).await.as_deref(),
        Some(&b"expired"[..]),
        "the will of a session that ended during the downtime"
    );
}

/// The reason code of a v5 PUBREC/PUBCOMP frame (0x00 when omitted), after checking its id.
fn ack_reason(f: &Frame, pkid: u16) -> u8 {
    assert_eq!(&f.body()[..2], &pkid.to_be_bytes(), "packet id of {f:?}");
    f.body().get(2).copied().unwrap_or(0)
}

// Exactly once across a crash [MQTT-4.3.3-9]: an inbound QoS 2 exchange of a persistent
// session that got its PUBREC before `kill -9` is still known after the restart. The
// publisher's resent PUBLISH (DUP) is answered and not delivered again, its PUBREL gets
// PUBCOMP 0x00 (not 0x92 "not found"), and an id whose exchange completed before the crash
// is free for a new message after it [MQTT-4.3.3-13].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_qos2_exchange_survives_kill_9_and_its_message_is_delivered_once() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    let mut broker = immediate_broker().start().await;
    let port = broker.port();
    offline_subscriber(port, "q2x-sub", "q2x/#", QoS5::ExactlyOnce).await;

    let (mut p5, _) = Raw::connect5_ok(port, connect5_session("q2x-pub5", true, 3600)).await;
    p5.publish5(&publish5("q2x/v5", QoS::ExactlyOnce, 7, false, b"once5")).await;
    assert_eq!(ack_reason(&p5.expect(PUBREC).await, 7), 0x00);
    assert_eq!(p5.publish5_complete(&publish5("q2x/v5b", QoS::ExactlyOnce, 8, false, b"before")).await, 0x00);
    let (mut p4, _) = Raw::connect4_ok(port, "q2x-pub4", false).await;
    p4.publish4("q2x/v4", QoS::ExactlyOnce, 9, false, b"once4").await;
    p4.expect(PUBREC).await;
    drop((p5, p4));
    broker.crash_and_restart().await;

    let (mut p5, ack) = Raw::connect5_ok(port, connect5_session("q2x-pub5", false, 3600)).await;
    assert!(ack.session_present, "the publisher's session survived\n{}", broker.log_text());
    let mut dup = publish5("q2x/v5", QoS::ExactlyOnce, 7, false, b"once5");
    dup.dup = true;
    p5.publish5(&dup).await;
    assert_eq!(ack_reason(&p5.expect(PUBREC).await, 7), 0x00);
    let rel = v5::PubRel::new(7);
    p5.send(|b| rel.write(b)).await;
    assert_eq!(ack_reason(&p5.expect(PUBCOMP).await, 7), 0x00, "the exchange was still known");
    assert_eq!(p5.publish5_complete(&publish5("q2x/v5b", QoS::ExactlyOnce, 8, false, b"after")).await, 0x00);

    let (mut p4, ack) = Raw::connect4_ok(port, "q2x-pub4", false).await;
    assert!(ack.session_present);
    let mut dup = v4::Publish::new("q2x/v4", QoS::ExactlyOnce, b"once4".to_vec());
    dup.pkid = 9;
    dup.dup = true;
    p4.send(|b| dup.write(b)).await;
    assert_eq!(p4.expect(PUBREC).await.body(), &9u16.to_be_bytes());
    let rel = v4::PubRel::new(9);
    p4.send(|b| rel.write(b)).await;
    assert_eq!(p4.expect(PUBCOMP).await.body(), &9u16.to_be_bytes());

    let mut sub = Client5::connect(port, "q2x-sub", false, Some(3600)).await;
    let mut got = Vec::new();
    while let Some(p) = sub.try_recv(Duration::from_secs(2)).await {
        got.push(String::from_utf8_lossy(&p.payload).to_string());
    }
    got.sort();
    assert_eq!(got, ["after", "before", "once4", "once5"], "each message exactly once");
}

// Exactly once to a subscriber across a crash: an outbound QoS 2 exchange of a persistent
// session resumes after `kill -9` with its packet id. The broker re-sends the PUBLISH with
// DUP for one not yet PUBREC'd and PUBREL for one that was [MQTT-4.4.0-1], and never sends
// again, under a new packet id, a message whose exchange completed or was PUBREC'd (the
// client already passed it on [MQTT-4.3.3-12]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_qos2_exchange_resumes_with_its_packet_id_after_kill_9() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    let mut broker = immediate_broker().start().await;
    let port = broker.port();
    let (mut sub, _) = Raw::connect5_ok(port, connect5_session("q2o-sub", true, 3600)).await;
    sub.sub5(1, "q2o/#", QoS::ExactlyOnce).await;
    let disconnect = v5::Disconnect::new();
    sub.send(|b| disconnect.write(b)).await;
    drop(sub);

    let (mut publisher, _) = Raw::connect5_ok(port, connect5("q2o-pub", true)).await;
    // One topic: one shard's log holds every record of the three exchanges, in order.
    for (i, name) in ["completed", "received", "sent"].into_iter().enumerate() {
        let p = publish5("q2o/t", QoS::ExactlyOnce, i as u16 + 1, false, name.as_bytes());
        assert_eq!(publisher.publish5_complete(&p).await, 0x00);
    }

    // The subscriber gets the three and takes each to a different point of its exchange.
    let (mut sub, ack) = Raw::connect5_ok(port, connect5_session("q2o-sub", false, 3600)).await;
    assert!(ack.session_present);
    let mut pkids: HashMap<String, u16> = HashMap::new();
    for _ in 0..3 {
        let p = sub.expect_publish5().await;
        assert_eq!((p.qos, p.dup), (QoS::ExactlyOnce, false));
        pkids.insert(String::from_utf8_lossy(&p.payload).to_string(), p.pkid);
    }
    for name in ["completed", "received"] {
        let rec = v5::PubRec::new(pkids[name]);
        sub.send(|b| rec.write(b)).await;
        assert_eq!(ack_reason(&sub.expect(PUBREL).await, pkids[name]), 0x00);
        if name == "completed" {
            // Nothing waits for the completion's record; the PUBREL of the next exchange,
            // logged after it in the same log, waits for a sync that covers both.
            let comp = v5::PubComp::new(pkids["completed"]);
            sub.send(|b| comp.write(b)).await;
        }
    }
    sub.expect_silence(Duration::from_millis(300)).await;
    drop(sub);
    broker.crash_and_restart().await;

    let (mut sub, ack) = Raw::connect5_ok(port, connect5_session("q2o-sub", false, 3600)).await;
    assert!(ack.session_present, "the session survived the crash\n{}", broker.log_text());
    let mut resumed = Vec::new();
    while let Ok(f) = sub.read_frame(Duration::from_secs(1)).await {
        resumed.push(match f.v5() {
            v5::Packet::Publish(p) => {
                format!("PUBLISH {} pkid={} dup={}", String::from_utf8_lossy(&p.payload), p.pkid, p.dup)
            }
            v5::Packet::PubRel(r) => format!("PUBREL pkid={}", r.pkid),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        resumed,
        [format!("PUBREL pkid={}", pkids["received"]), format!("PUBLISH sent pkid={} dup=true", pkids["sent"])],
        "the open exchanges resume in order with their packet ids, and nothing else is sent\n{}",
        broker.log_text()
    );
    let comp = v5::PubComp::new(pkids["received"]);
    sub.send(|b| comp.write(b)).await;
    let rec = v5::PubRec::new(pkids["sent"]);
    sub.send(|b| rec.write(b)).await;
    assert_eq!(ack_reason(&sub.expect(PUBREL).await, pkids["sent"]), 0x00);
    let comp = v5::PubComp::new(pkids["sent"]);
    sub.send(|b| comp.write(b)).await;
    // Nothing waits for this last completion's record: leave the log's group commit (a
    // sync every few milliseconds while records come) ample time to cover it.
    sub.expect_silence(Duration::from_secs(1)).await;
    drop(sub);

    // Completed before a second crash: nothing comes back after it.
    broker.crash_and_restart().await;
    let (mut sub, ack) = Raw::connect5_ok(port, connect5_session("q2o-sub", false, 3600)).await;
    assert!(ack.session_present);
    sub.expect_silence(Duration::from_secs(1)).await;
}

// In `immediate` mode a persistent session's SUBACK waits for its snapshot to be durable:
// `kill -9` right after the SUBACK (before its record could have been synced otherwise)
// still finds the session and the subscription after the restart, so messages published
// to it meanwhile are kept for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_acknowledged_in_immediate_mode_survives_kill_9_right_after_its_suback() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    let mut broker = immediate_broker().start().await;
    let port = broker.port();
    for round in 0..4 {
        let id = format!("sub-now-{round}");
        let filter = format!("now/{round}/#");
        let (mut sub, _) = Raw::connect5_ok(port, connect5_session(&id, true, 3600)).await;
        sub.sub5(1, &filter, QoS::AtLeastOnce).await;
        broker.crash_and_restart().await;
        let (mut publisher, _) = Raw::connect5_ok(port, connect5("now-pub", true)).await;
        let p = publish5(&format!("now/{round}/x"), QoS::AtLeastOnce, 1, false, b"kept");
        assert_eq!(publisher.publish5_complete(&p).await, 0x00);
        let (mut sub, ack) = Raw::connect5_ok(port, connect5_session(&id, false, 3600)).await;
        assert!(ack.session_present, "round {round}: the session survived\n{}", broker.log_text());
        let got = sub.expect_publish5().await;
        assert_eq!(got.payload.as_ref(), b"kept", "round {round}");
    }
}

// A shared subscription's messages are owed to the member they went to, also across a crash:
// what was routed to an offline persistent member comes back to it after `kill -9` (each
// message of a group to one member [MQTT-4.8.2-2]), and nothing that went to another member
// is sent to it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_routed_to_an_offline_shared_subscription_member_survive_kill_9() {
    skip_on_mosquitto!("crash test of promptmq's WAL");
    let mut broker = immediate_broker().start().await;
    let port = broker.port();
    offline_subscriber(port, "sh-persistent", "$share/g/sh/#", QoS5::AtLeastOnce).await;
    let mut online = Client5::connect(port, "sh-online", true, None).await;
    online.subscribe("$share/g/sh/#", QoS5::AtLeastOnce).await;

    let mut publisher = Client5::connect(port, "sh-pub", true, None).await;
    let all: Vec<String> = (0..20).map(|i| format!("{i:02}")).collect();
    publisher
        .publish_many(all.iter().map(|p| ("sh/t".to_string(), p.clone().into_bytes())).collect(), QoS5::AtLeastOnce)
        .await;
    let mut got_online = Vec::new();
    while let Some(p) = online.try_recv(Duration::from_secs(1)).await {
        got_online.push(String::from_utf8_lossy(&p.payload).to_string());
    }
    assert!(!got_online.is_empty() && got_online.len() < all.len(), "the group shares: {got_online:?}");
    broker.crash_and_restart().await;

    let mut member = Client5::connect(port, "sh-persistent", false, Some(3600)).await;
    assert!(member.connack.session_present);
    let mut got_member = Vec::new();
    while let Some(p) = member.try_recv(Duration::from_secs(2)).await {
        got_member.push(String::from_utf8_lossy(&p.payload).to_string());
    }
    let mut sorted = got_member.clone();
    sorted.sort();
    assert_eq!(got_member, sorted, "in order [MQTT-4.6.0-5]");
    for p in &got_member {
        assert!(!got_online.contains(p), "{p} went to the other member already\n{}", broker.log_text());
    }
    let mut both: Vec<String> = got_online.iter().chain(&got_member).cloned().collect();
    both.sort();
    assert_eq!(both, all, "every acknowledged message reached one member\n{}", broker.log_text());
}
