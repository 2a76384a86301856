//! Core threads are pinned to the CPUs the broker was given, not to CPUs 0..n: under
//! `taskset` (or a cpuset cgroup, or a container's `--cpuset-cpus`) core *i* goes to the
//! *i*-th allowed CPU. Pinning to CPU *i* instead would move a core out of the set the
//! operator chose (or be refused by a cpuset).
#![cfg(target_os = "linux")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Cpus_allowed_list` of each `promptmq-core-*` thread of `pid`.
fn core_thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if !comm.starts_with("promptmq-core-") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        out.push((comm, cpus));
    }
    out.sort();
    out
}

/// The CPUs this test process may use, from its own `Cpus_allowed_list` (e.g. `0-1`, `4,6`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).expect("Cpus_allowed_list").trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().expect("cpu")..=b.parse::<usize>().expect("cpu")),
            None => cpus.push(part.parse().expect("cpu")),
        }
    }
    cpus
}

#[tokio::test]
async fn under_taskset_every_core_is_pinned_inside_the_given_cpus() {
    if Command::new("taskset").arg("-V").output().is_err() {
        eprintln!("taskset is not installed (util-linux): skipped");
        return;
    }
    // The last CPU this process may use: with two or more, not CPU 0, which is where core 0
    // would land if the broker pinned core i to CPU i.
    let cpu = *allowed_cpus().last().expect("at least one CPU");
    let port = common::free_port();
    let data = std::env::temp_dir().join(format!("promptmq-affinity-{}", std::process::id()));
    let child = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(env!("CARGO_BIN_EXE_promptmq"))
        .args(["--bind", &format!("127.0.0.1:{port}"), "--cores", "2", "--log-level", "warn", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start promptmq under taskset");
    let proc = Proc(child);
    let pid = proc.0.id();

    let want = vec![("promptmq-core-0".to_string(), cpu.to_string()), ("promptmq-core-1".to_string(), cpu.to_string())];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = core_thread_cpus(pid);
    while seen != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        seen = core_thread_cpus(pid);
    }
    assert_eq!(seen, want, "core threads and their CPUs under `taskset -c {cpu}`");

    // And it serves: a client connects and is accepted.
    let c = common::Client4::connect(port, "affinity", true).await;
    assert_eq!(c.connack.code, rumqttc::ConnectReturnCode::Success);
    drop(proc);
    let _ = std::fs::remove_dir_all(&data);
}
