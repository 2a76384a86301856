//! A full disk under the WAL: immediate-mode publishes are answered with a failure reason
//! code instead of a false success, the broker keeps serving, and publishing succeeds again
//! once space returns. Runs on a small loop-mounted ext4 file system, so it needs root (CI
//! runs as root); elsewhere it says it was skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct LoopMount {
    dir: PathBuf,
    image: PathBuf,
}

impl LoopMount {
    fn new(size_mib: u32) -> Option<LoopMount> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: the full-disk test mounts a file system and needs root");
            return None;
        }
        let base = std::env::temp_dir().join(format!("promptmq-fulldisk-{}", std::process::id()));
        let dir = base.join("mnt");
        std::fs::create_dir_all(&dir).expect("mount point");
        let image = base.join("disk.img");
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        assert!(ok(Command::new("truncate").arg("-s").arg(format!("{size_mib}M")).arg(&image)), "truncate");
        assert!(ok(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&image)), "mkfs.ext4 (e2fsprogs)");
        assert!(ok(Command::new("mount").arg("-o").arg("loop").arg(&image).arg(&dir)), "mount -o loop");
        Some(LoopMount { dir, image })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        if let Some(base) = self.image.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

fn fill(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0xAB; bytes]).expect("ballast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_publishes_honestly_and_recovers_when_space_returns() {
    skip_on_mosquitto!("promptmq's WAL on a full disk");
    let Some(mount) = LoopMount::new(16) else { return };
    let data = mount.dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let metrics_port = free_port();
    let metrics_bind = format!("127.0.0.1:{metrics_port}");
    let broker = BrokerOpts::new()
        .cores(2)
        .data_dir(&data)
        .extra_args(&["--wal-segment-size", "1048576", "--wal-sync-mode", "immediate"])
        .extra_args(&["--metrics-enabled", "true", "--metrics-bind", &metrics_bind])
        .start()
        .await;
    let mut by = Bystander::connect(broker.port(), "fulldisk").await;
    // Leave little room: a ballast file we can delete later.
    let ballast = mount.dir.join("ballast");
    let free = fs_free(&mount.dir);
    fill(&ballast, free.saturating_sub(2 * 1024 * 1024) as usize);

    let (mut c, _) = Raw::connect5_ok(broker.port(), connect5("fill", true)).await;
    let payload = vec![b'p'; 32 * 1024];
    let mut failed_with = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pkid = 0u16;
    while failed_with.is_none() {
        assert!(Instant::now() < deadline, "the disk never filled up");
        pkid = pkid % 60_000 + 1;
        let code = c.publish5_complete(&publish5("fill/x", QoS::AtLeastOnce, pkid, false, &payload)).await;
        if code >= 0x80 {
            failed_with = Some(code);
        }
    }
    assert_eq!(failed_with, Some(0x80), "an unwritable log fails the PUBACK (Unspecified error)");
    eprintln!("the log failed after {pkid} publishes of 32 KiB");
    by.check().await; // QoS 0 traffic and other clients are unaffected
                      // The health check says so (cores copy the log's state every 50 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = http_get(metrics_port, "/health");
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "/health while the log cannot be written: {body}");
    assert!(body.contains("cannot be written"), "{body}");

    // Space returns: publishing succeeds again, without a restart.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        pkid = pkid % 60_000 + 1;
        let code = c.publish5_complete(&publish5("fill/x", QoS::AtLeastOnce, pkid, false, b"after")).await;
        if code < 0x80 {
            break;
        }
        assert!(Instant::now() < deadline, "still failing after space returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(metrics_port, "/health").0 != 200 {
        assert!(Instant::now() < deadline, "/health still failing after the log recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(broker);
}

fn fs_free(dir: &Path) -> u64 {
    let out = Command::new("df").arg("-B1").arg("--output=avail").arg(dir).output().expect("df");
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output")
}
