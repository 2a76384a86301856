//! What an operator watches: Prometheus `/metrics` and `/health` over HTTP, the
//! `$SYS/broker/...` topics, and JSON logs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mqttbytes::v5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_and_health_over_http() {
    skip_on_mosquitto!("promptmq's metrics endpoint");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let broker = BrokerOpts::new()
        .extra_args(&["--metrics-enabled", "true", "--metrics-bind", &bind, "--metrics-path", "/prom"])
        .start()
        .await;
    let (mut sub, _) = Raw::connect5_ok(broker.port(), connect5("m-sub", true)).await;
    sub.sub5(1, "m/t", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect5_ok(broker.port(), connect5("m-pub", true)).await;
    for i in 0..5u16 {
        let mut p = v5::Publish::new("m/t", QoS::AtLeastOnce, "x");
        p.pkid = i + 1;
        assert_eq!(publ.publish5_complete(&p).await, 0);
        sub.recv().await;
    }
    // Counters are copied every 50 ms, gauges every second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, body) = http_get(port, "/prom");
        assert_eq!(status, 200, "{body}");
        if sample(&body, "promptmq_connections") == Some(2.0) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sample(&body, "promptmq_messages_received_total{qos=\"1\"}"), Some(5.0), "{body}");
    assert!(sample(&body, "promptmq_messages_sent_total{qos=\"1\"}") >= Some(5.0), "{body}");
    assert_eq!(sample(&body, "promptmq_connections"), Some(2.0), "{body}");
    assert_eq!(sample(&body, "promptmq_subscriptions"), Some(1.0), "{body}");
    assert!(sample(&body, "promptmq_received_bytes_total") > Some(0.0), "{body}");
    // Immediate mode: every QoS 1 publish was synced before its PUBACK.
    let syncs: f64 = body
        .lines()
        .filter(|l| l.starts_with("promptmq_wal_sync_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(syncs >= 1.0, "WAL sync histogram recorded nothing:\n{body}");
    assert!(body.contains("promptmq_build_info{version=\""), "{body}");

    assert_eq!(http_get(port, "/metrics").0, 404, "the path is --metrics-path");
    assert_eq!(http_get(port, "/health"), (200, "ok\n".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_report_the_broker_and_stay_out_of_wildcards() {
    skip_on_mosquitto!("promptmq's --sys-interval");
    let broker = BrokerOpts::new().extra_args(&["--sys-interval", "1"]).start().await;
    let (mut all, _) = Raw::connect5_ok(broker.port(), connect5("sys-all", true)).await;
    all.sub5(1, "#", QoS::AtMostOnce).await;
    let (mut sys, _) = Raw::connect5_ok(broker.port(), connect5("sys-sub", true)).await;
    sys.sub5(1, "$SYS/broker/clients/connected", QoS::AtMostOnce).await;
    match sys.recv().await.v5() {
        v5::Packet::Publish(p) => {
            assert_eq!(p.topic, "$SYS/broker/clients/connected");
            let n: u64 = String::from_utf8_lossy(&p.payload).parse().expect("a number");
            assert!(n >= 1, "connected clients: {n}");
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // [MQTT-4.7.2-1]: `#` does not match topics beginning with `$`.
    assert_eq!(all.read_frame(Duration::from_millis(1500)).await.err(), Some(ReadError::Timeout));
    // Clients cannot write there, not even with a will.
    let mut p = v5::Publish::new("$SYS/broker/clients/connected", QoS::AtLeastOnce, "999");
    p.pkid = 7;
    assert_eq!(all.publish5_complete(&p).await, 0x87);
    let mut c = connect5("sys-will", true);
    c.last_will = Some(v5::LastWill::new("$SYS/broker/clients/connected", "999", QoS::AtMostOnce, true));
    let (_r, ack) = Raw::connect5(broker.port(), c).await;
    assert_eq!(ack.code as u8, 0x87, "a will on $SYS/ is refused");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    skip_on_mosquitto!("promptmq's --log-format");
    let broker = BrokerOpts::new().log_level("info").extra_args(&["--log-format", "json"]).start().await;
    // The startup line may come just after the port opens.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = broker.log_text();
        if text.contains("listening on") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().any(|l| l.contains("listening on")), "{text}");
    for line in lines {
        assert!(line.starts_with('{') && line.ends_with('}'), "not a JSON object: {line}");
        assert!(line.contains("\"level\":\"INFO\""), "{line}");
    }
}

/// `/health` is 503 while listeners fail to accept (here the broker's open-files limit is
/// lowered to what it holds, so accepts fail with EMFILE) and for a second after the last
/// failure, then 200 again. (While descriptors are exhausted the health check itself cannot
/// be accepted either; the answer is seen once one is free.)
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_while_connections_cannot_be_accepted() {
    skip_on_mosquitto!("promptmq's health check");
    if std::process::Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("prlimit (util-linux) is not installed: skipped");
        return;
    }
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let broker =
        BrokerOpts::new().cores(1).extra_args(&["--metrics-enabled", "true", "--metrics-bind", &bind]).start().await;
    // The MQTT port answers first (the kernel queues connections once it is bound); the
    // metrics endpoint is bound a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "metrics endpoint not listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(port, "/health").0, 200);
    // The soft limit only (`N:`), so that it can be raised back.
    let set_nofile = |n: usize| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &broker.pid().to_string(), &format!("--nofile={n}:")])
            .status()
            .expect("run prlimit");
        assert!(status.success(), "prlimit failed");
    };
    // Below what it holds (the metrics thread may have one more open for a moment): no new
    // descriptor at all until it is raised again.
    let open = std::fs::read_dir(format!("/proc/{}/fd", broker.pid())).expect("fd dir").count();
    set_nofile(open.saturating_sub(4).max(1));
    // Completed by the kernel, waiting in the listen queue: every accept fails meanwhile.
    let clients: Vec<_> =
        (0..4).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", broker.port())).ok()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_nofile(1_024);
    let (status, failing) = http_get(port, "/health");
    assert_eq!(status, 503, "{failing}");
    assert!(failing.contains("cannot accept"), "{failing}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(port, "/health").0 != 200 {
        assert!(Instant::now() < deadline, "health did not recover once accepts worked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(clients);
}
