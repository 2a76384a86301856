//! The io_uring build falls back to epoll when ring setup is refused, says so in its startup
//! line, and still serves clients. `PROMPTMQ_FORCE_EPOLL=1` makes ring setup count as refused
//! (as `kernel.io_uring_disabled` or a container's seccomp profile would).
//!
//! Only in the io_uring build (the Linux default); the tokio build has no driver to fall back
//! from.
#![cfg(all(target_os = "linux", feature = "uring", not(feature = "tokio")))]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Client4;

/// A broker process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the broker with `envs` on a free port and returns it with its startup line.
fn start(envs: &[(&str, &str)], data: &std::path::Path) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptmq"));
    cmd.args(["--bind", "127.0.0.1:0", "--cores", "2", "--log-level", "info", "--data-dir"])
        .arg(data)
        .env_remove("PROMPTMQ_FORCE_EPOLL")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start promptmq");
    let stderr = child.stderr.take().expect("stderr");
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening on") {
                let _ = tx.send(line);
            }
            // Keep draining so the broker never blocks on a full pipe.
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("no startup line within 20 s");
    (proc, line)
}

fn port_of(line: &str) -> u16 {
    let addr = line.split("listening on ").nth(1).and_then(|s| s.split_whitespace().next()).expect("address");
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {line}"))
}

#[tokio::test]
async fn forced_epoll_fallback_says_why_and_serves_clients() {
    let dir = std::env::temp_dir().join(format!("promptmq-it-uring-fallback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_broker, line) = start(&[("PROMPTMQ_FORCE_EPOLL", "1")], &dir);
    assert!(line.contains("runtime epoll (io_uring refused: PROMPTMQ_FORCE_EPOLL=1)"), "{line}");
    assert!(line.contains("2 cores"), "{line}");

    // A publish/subscribe round trip, QoS 0 and QoS 1, with enough connections that both
    // cores accept some.
    let port = port_of(&line);
    let mut sub = Client4::connect(port, "fallback-sub", true).await;
    sub.subscribe("fb/#", rumqttc::QoS::AtLeastOnce).await;
    for i in 0..4 {
        let mut p = Client4::connect(port, &format!("fallback-pub-{i}"), true).await;
        let qos = if i % 2 == 0 { rumqttc::QoS::AtMostOnce } else { rumqttc::QoS::AtLeastOnce };
        p.publish(&format!("fb/{i}"), qos, false, format!("m{i}")).await;
        p.disconnect().await;
    }
    let mut got: Vec<String> = Vec::new();
    for _ in 0..4 {
        got.push(String::from_utf8_lossy(&sub.recv().await.payload).into_owned());
    }
    got.sort();
    assert_eq!(got, ["m0", "m1", "m2", "m3"]);
    sub.disconnect().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_the_switch_the_startup_line_names_the_driver_each_core_got() {
    let dir = std::env::temp_dir().join(format!("promptmq-it-uring-default-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_broker, line) = start(&[], &dir);
    // io_uring where the kernel allows it; otherwise epoll and the kernel's answer.
    // (kernel.io_uring_disabled = 2 refuses everyone; 1 refuses unprivileged processes.)
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "2");
    if !disabled {
        assert!(line.contains("runtime io_uring") || line.contains("runtime epoll (io_uring refused: E"), "{line}");
    } else {
        assert!(line.contains("runtime epoll (io_uring refused: E"), "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
