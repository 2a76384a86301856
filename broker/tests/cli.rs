//! The binary as a user meets it: the README's mosquitto_pub/mosquitto_sub example, the
//! startup line, `--version`, bad flags, and the `handoff` accept mode.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BrokerOpts, Client4};

fn mosquitto_tool(name: &str) -> Command {
    // .ci/run installs mosquitto-clients; a missing tool is a setup error, not a skip.
    assert!(
        Command::new("sh").args(["-c", &format!("command -v {name}")]).output().is_ok_and(|o| o.status.success()),
        "{name} not found: apt-get install mosquitto-clients"
    );
    Command::new(name)
}

#[tokio::test]
async fn readme_example_with_mosquitto_clients() {
    let broker = BrokerOpts::new().cores(2).start().await;
    let port = broker.port().to_string();
    let sub = mosquitto_tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "sensors/#", "-v", "-V", "mqttv5", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_sub");
    // Let the subscription settle before publishing (QoS 0 to a topic without subscribers is
    // simply not delivered).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = mosquitto_tool("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "sensors/kitchen", "-m", "21.5", "-q", "1"])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success());
    let out = sub.wait_with_output().expect("mosquitto_sub output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sensors/kitchen 21.5");

    // Retained, then a late subscriber gets it [MQTT-3.3.1-6].
    let status = mosquitto_tool("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "status/door", "-m", "open", "-r"])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success());
    let out = mosquitto_tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "status/+", "-C", "1", "-v", "-W", "10"])
        .output()
        .expect("run mosquitto_sub");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "status/door open");
}

#[test]
fn version_prints_version_and_commit() {
    if common::is_mosquitto() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_promptmq")).arg("--version").output().expect("run --version");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("promptmq {} (", env!("CARGO_PKG_VERSION"))), "{text}");
}

#[test]
fn bad_flag_values_are_refused_with_the_allowed_range() {
    if common::is_mosquitto() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_promptmq"))
        .args(["--max-inflight", "0", "--bind", "127.0.0.1:0"])
        .output()
        .expect("run promptmq");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-inflight") && err.contains("1..="), "{err}");
    let out =
        Command::new(env!("CARGO_BIN_EXE_promptmq")).args(["--bind", "not-an-address"]).output().expect("run promptmq");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bind"));
}

#[tokio::test]
async fn startup_line_names_version_runtime_cores_and_address() {
    if common::is_mosquitto() {
        return;
    }
    let broker = BrokerOpts::new().cores(2).log_level("info").start().await;
    // The port accepts connections as soon as it is bound, a moment before the line is
    // written: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = broker.log_text();
        if log.contains("listening on") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let line = log.lines().find(|l| l.contains("listening on")).unwrap_or_else(|| panic!("no startup line in {log}"));
    assert!(line.contains(env!("CARGO_PKG_VERSION")), "{line}");
    // The io_uring build (the Linux default) says which driver its cores got: io_uring, or
    // epoll and why where the kernel refuses io_uring (see tests/uring_fallback.rs).
    if cfg!(all(target_os = "linux", feature = "uring", not(feature = "tokio"))) {
        assert!(line.contains("runtime io_uring") || line.contains("runtime epoll (io_uring refused: "), "{line}");
    } else {
        assert!(line.contains("runtime tokio"), "{line}");
    }
    assert!(line.contains("2 cores"), "{line}");
    assert!(line.contains(&broker.addr()), "{line}");
}

#[tokio::test]
async fn handoff_accept_mode_serves_clients_on_every_core() {
    if common::is_mosquitto() {
        return;
    }
    let broker = BrokerOpts::new()
        .cores(4)
        .log_level("warn,promptmq::server=debug")
        .extra_args(&["--accept-mode", "handoff"])
        .start()
        .await;
    let port = broker.port();
    let mut sub = Client4::connect(port, "handoff-sub", true).await;
    sub.subscribe("h/#", rumqttc::QoS::AtLeastOnce).await;
    // Enough publishers that the round-robin hands some to each of the 4 cores.
    for i in 0..8 {
        let mut p = Client4::connect(port, &format!("handoff-pub-{i}"), true).await;
        p.publish(&format!("h/{i}"), rumqttc::QoS::AtLeastOnce, false, format!("m{i}")).await;
        p.disconnect().await;
    }
    let mut got: Vec<String> = Vec::new();
    for _ in 0..8 {
        got.push(String::from_utf8_lossy(&sub.recv().await.payload).into_owned());
    }
    got.sort();
    assert_eq!(got, (0..8).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let log = broker.log_text();
    let cores: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("connection accepted"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("core=")))
        .collect();
    assert_eq!(cores.len(), 4, "connections spread over all 4 cores: {cores:?}\n{log}");
}

#[tokio::test]
async fn wal_stats_and_dump_read_a_data_directory() {
    if common::is_mosquitto() {
        return;
    }
    let broker = BrokerOpts::new().cores(2).start().await;
    let mut p = Client4::connect(broker.port(), "wal-tools", true).await;
    for i in 0..5 {
        p.publish("tools/history", rumqttc::QoS::AtLeastOnce, false, format!("entry {i}")).await;
    }
    p.publish("tools/state", rumqttc::QoS::AtMostOnce, true, "retained").await;
    p.disconnect().await;
    let data = broker.data_dir();
    // Immediate mode: acknowledged means written. The QoS 0 retained publish has no
    // acknowledgement to wait for; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_promptmq")).args(args).output().expect("run tool");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dir = data.to_str().expect("utf-8 path");
    let stats = run(&["wal", "stats", "--data-dir", dir]);
    assert!(stats.contains("shard 0") && stats.contains("shard 1"), "{stats}");
    assert!(stats.lines().any(|l| l.trim_start().starts_with("5 records") && l.ends_with("tools/history")), "{stats}");
    let dump = run(&["wal", "dump", "--data-dir", dir, "--topic", "tools/history", "--limit", "3"]);
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 3, "{dump}");
    assert!(
        lines[0].contains("\"entry 2\"") && lines[2].contains("\"entry 4\"") && lines[2].contains("qos 1"),
        "{dump}"
    );
}
