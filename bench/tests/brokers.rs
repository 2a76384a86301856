//! The generator against real brokers on loopback: PromptMQ built from this workspace, and
//! mosquitto when it is installed (`.ci/run` installs it).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use promptmq_bench::{Options, Report};

/// A broker process, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A fresh directory per call: tests run in parallel, and two brokers must not share a data
/// directory (the second would find it locked).
fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("promptmq-bench-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

fn wait_listening(b: &mut Broker) {
    let addr: SocketAddr = ([127, 0, 0, 1], b.port).into();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = b.child.try_wait() {
            panic!("broker exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("broker not listening on {addr}");
}

/// `target/debug/promptmq`, brought up to date with `cargo build -p promptmq` (a no-op under
/// `cargo test --workspace`, which has just built it for the broker's own tests).
fn promptmq_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join(format!("promptmq{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let status = Command::new(cargo).args(["build", "--quiet", "-p", "promptmq"]).current_dir(&root).status();
    match status {
        Ok(s) if s.success() => {}
        other => assert!(bin.exists(), "cargo build -p promptmq failed ({other:?}) and {} is missing", bin.display()),
    }
    bin
}

/// PromptMQ with its defaults (queues of 1,000 messages, WAL in `immediate` mode).
fn start_promptmq() -> Broker {
    let port = free_port();
    let dir = temp_dir("promptmq");
    let child = Command::new(promptmq_binary())
        .args(["--bind", &format!("127.0.0.1:{port}"), "--cores", "2", "--log-level", "warn", "--data-dir"])
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn promptmq");
    let mut b = Broker { child, port, dir };
    wait_listening(&mut b);
    b
}

fn mosquitto_path() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

fn start_mosquitto(bin: PathBuf) -> Broker {
    let port = free_port();
    let dir = temp_dir("mosquitto");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 1000000\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
        ),
    )
    .expect("write mosquitto.conf");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto");
    let mut b = Broker { child, port, dir };
    wait_listening(&mut b);
    b
}

/// Runs the generator in-process with command-line `args` against `b`.
async fn bench(b: &Broker, args: &str) -> Report {
    let port = b.port.to_string();
    let pid = b.child.id().to_string();
    let mut argv = vec!["promptmq-bench"];
    argv.extend(args.split_whitespace());
    argv.extend_from_slice(&["--port", &port, "--pid", &pid, "--quiet"]);
    let opts = Options::try_parse_from(&argv).expect("options");
    let r = promptmq_bench::run(&opts).await.expect("scenario runs");
    eprint!("{}", r.table());
    r
}

fn assert_exact(r: &Report) {
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert!(r.sent > 100, "sent only {}", r.sent);
    assert_eq!(r.lost, 0, "lost");
    assert_eq!(r.delivered, r.expected);
    assert_eq!(r.duplicates, 0, "duplicates");
    assert_eq!(r.reordered, 0, "reordered");
    assert_eq!(r.foreign, 0);
    let l = r.latency.expect("latency recorded");
    assert!(l.count >= r.delivered && l.p50 > 0.0 && l.max >= l.p99);
    assert!(r.json().contains("\"lost\":0,"));
}

const PAIRS_QOS1: &str = "pairs --publishers 2 --qos 1 --duration 1 --warmup 0.3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_qos1_against_promptmq() {
    let b = start_promptmq();
    let r = bench(&b, PAIRS_QOS1).await;
    assert_exact(&r);
    assert_eq!((r.publishers, r.subscribers), (2, 2));
    assert!(r.broker_cpu_pct.is_some());

    // QoS 2 fan-in at a fixed rate, over MQTT 3.1.1: every exchange completes.
    let r = bench(&b, "fanin --publishers 3 --qos 2 --rate 3000 --mqtt 3 --duration 1 --warmup 0.2").await;
    assert_exact(&r);
    // About 3000 msgs/s were asked for.
    assert!((1000.0..4500.0).contains(&r.sent_per_sec), "sent {}/s", r.sent_per_sec);

    let r = bench(&b, "conns --connections 50 --duration 0.3").await;
    let c = r.conns.expect("conns report");
    assert_eq!((c.connected, c.failed, c.dropped), (50, 0, 0));
    assert!(c.rss_before_kb.is_some() && c.bytes_per_conn.is_some());
}

/// QoS 1 publishers as fast as their windows allow, subscribers on the other core (or on
/// the same one) that keep up on average but fall behind for milliseconds at a time (the
/// broker, the generator and the kernel share two CPUs): the broker slows the publishers
/// down instead of dropping what it acknowledged. Before deliveries between cores counted
/// towards overload, a core that fell behind took in a thousand acknowledged messages for
/// one subscriber at once, past its queue of 1,000, and most runs lost some (`queue_full`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_8x8_qos1_at_full_speed_loses_nothing_with_default_queues() {
    let b = start_promptmq();
    let r = bench(&b, "pairs --publishers 8 --qos 1 --inflight 1024 --duration 3 --warmup 0.3").await;
    assert_exact(&r);
    assert_eq!((r.publishers, r.subscribers), (8, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_qos1_against_mosquitto() {
    let Some(bin) = mosquitto_path() else {
        eprintln!("mosquitto is not installed: skipped (apt-get install mosquitto)");
        return;
    };
    let b = start_mosquitto(bin);
    let r = bench(&b, PAIRS_QOS1).await;
    assert_exact(&r);
    // Shared subscription: the group gets every message once.
    let r = bench(&b, "shared --publishers 2 --subscribers 3 --qos 1 --duration 1").await;
    assert_exact(&r);
}
