//! Shared harness for the PromptMQ integration tests.
//!
//! * [`BrokerOpts`] / [`Broker`]: spawn a broker process (PromptMQ, or mosquitto
//!   when `PROMPTMQ_TEST_BROKER=mosquitto`) on a free port with its own data
//!   directory, wait until it accepts TCP connections and kill it on drop.
//! * [`on_cores`]: run one scenario against a 2-core and a 4-core broker at
//!   the same time, so every scenario also exercises cross-core paths.
//! * [`Client4`] / [`Client5`]: rumqttc (3.1.1 / 5.0) wrappers whose every
//!   wait has a deadline.
//! * [`Raw`]: a raw TCP client encoding and decoding with `mqttbytes` 0.6, for
//!   exact control over packets, flags and malformed bytes.
//!
//! Each test binary uses only part of this module.
//!
//! Run against PromptMQ: `cargo test -p promptmq --test connect`; against the
//! reference broker (Debian package `mosquitto`, 2.0.x):
//! `PROMPTMQ_TEST_BROKER=mosquitto cargo test -p promptmq --test connect`.
//! Where mosquitto is known to deviate from the spec, a test either skips
//! itself (`skip_on_mosquitto!`) or relaxes one assertion behind
//! `is_mosquitto()`, always with a comment saying what mosquitto does.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs;
use std::future::Future;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use mqttbytes::{v4, v5, QoS};

/// Default deadline for anything the test expects to happen.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test listens to conclude that something did NOT happen.
pub const QUIET: Duration = Duration::from_millis(400);
/// The cores every scenario runs with.
pub const CORES: [usize; 2] = [2, 4];

// ---------------------------------------------------------------------------
// Which broker
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    PromptMq,
    Mosquitto,
}

pub fn broker_kind() -> BrokerKind {
    match std::env::var("PROMPTMQ_TEST_BROKER").as_deref() {
        Ok("mosquitto") => BrokerKind::Mosquitto,
        Ok("") | Ok("promptmq") | Err(_) => BrokerKind::PromptMq,
        Ok(other) => panic!("PROMPTMQ_TEST_BROKER={other}: expected `promptmq` or `mosquitto`"),
    }
}

pub fn is_mosquitto() -> bool {
    broker_kind() == BrokerKind::Mosquitto
}

/// Returns early from a test when it runs against mosquitto. Every use must
/// carry a comment saying what mosquitto does differently from the spec or
/// from PromptMQ's contract.
#[macro_export]
macro_rules! skip_on_mosquitto {
    ($why:expr) => {
        if $crate::common::is_mosquitto() {
            eprintln!("SKIPPED on mosquitto: {}", $why);
            return;
        }
    };
}

// ---------------------------------------------------------------------------
// Broker process
// ---------------------------------------------------------------------------

/// Command-line options of the broker under test.
#[derive(Clone, Debug)]
pub struct BrokerOpts {
    pub cores: usize,
    pub max_keep_alive: Option<u16>,
    pub max_packet_size: Option<u32>,
    pub max_inflight: Option<u16>,
    pub max_queued_messages: Option<usize>,
    pub topic_alias_maximum: Option<u16>,
    /// `--log-level` (promptmq only); `warn` unless set.
    pub log_level: Option<String>,
    /// Further promptmq flags, appended as given (ignored for mosquitto).
    pub extra_args: Vec<String>,
    /// Use this data directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Environment variables for the broker process (ignored for mosquitto).
    pub env: Vec<(String, String)>,
}

impl Default for BrokerOpts {
    fn default() -> Self {
        BrokerOpts {
            cores: 2,
            max_keep_alive: None,
            max_packet_size: None,
            max_inflight: None,
            max_queued_messages: None,
            topic_alias_maximum: None,
            log_level: None,
            extra_args: Vec::new(),
            data_dir: None,
            env: Vec::new(),
        }
    }
}

impl BrokerOpts {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = n;
        self
    }
    pub fn max_keep_alive(mut self, secs: u16) -> Self {
        self.max_keep_alive = Some(secs);
        self
    }
    pub fn max_packet_size(mut self, bytes: u32) -> Self {
        self.max_packet_size = Some(bytes);
        self
    }
    pub fn max_inflight(mut self, n: u16) -> Self {
        self.max_inflight = Some(n);
        self
    }
    pub fn max_queued_messages(mut self, n: usize) -> Self {
        self.max_queued_messages = Some(n);
        self
    }
    pub fn topic_alias_maximum(mut self, n: u16) -> Self {
        self.topic_alias_maximum = Some(n);
        self
    }
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.to_string());
        self
    }
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    pub fn extra_args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Spawns the broker and waits until it accepts TCP connections.
    pub async fn start(&self) -> Broker {
        let mut last_err = String::new();
        // A port picked as free can be taken by a parallel test before the
        // broker binds it: retry with another port if the broker dies early.
        for _ in 0..3 {
            match Broker::spawn(self).await {
                Ok(b) => return b,
                Err(e) => last_err = e,
            }
        }
        panic!("broker did not start: {last_err}");
    }
}

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("promptmq-it-{tag}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running broker; killed (and its temp dir removed) on drop.
pub struct Broker {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    argv: Vec<std::ffi::OsString>,
    pub opts: BrokerOpts,
}

impl Broker {
    async fn spawn(opts: &BrokerOpts) -> Result<Broker, String> {
        let port = free_port();
        let dir = unique_dir(&format!("c{}", opts.cores));
        let log = dir.join("broker.log");
        let data = opts.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let mut cmd = match broker_kind() {
            BrokerKind::PromptMq => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_promptmq"));
                c.arg("--bind")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--cores")
                    .arg(opts.cores.to_string())
                    .arg("--data-dir")
                    .arg(&data)
                    .arg("--log-level")
                    .arg(opts.log_level.as_deref().unwrap_or("warn"))
                    .args(&opts.extra_args)
                    .envs(opts.env.iter().map(|(k, v)| (k, v)));
                if let Some(v) = opts.max_keep_alive {
                    c.arg("--max-keep-alive").arg(v.to_string());
                }
                if let Some(v) = opts.max_packet_size {
                    c.arg("--max-packet-size").arg(v.to_string());
                }
                if let Some(v) = opts.max_inflight {
                    c.arg("--max-inflight").arg(v.to_string());
                }
                if let Some(v) = opts.max_queued_messages {
                    c.arg("--max-queued-messages").arg(v.to_string());
                }
                if let Some(v) = opts.topic_alias_maximum {
                    c.arg("--topic-alias-maximum").arg(v.to_string());
                }
                c
            }
            BrokerKind::Mosquitto => {
                let conf = dir.join("mosquitto.conf");
                fs::write(&conf, mosquitto_conf(opts, port)).map_err(|e| e.to_string())?;
                let mut c = Command::new("mosquitto");
                c.arg("-c").arg(&conf);
                c
            }
        };
        let child = spawn_logged(&mut cmd, &log)?;
        let argv: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut broker = Broker { child, port, dir, log, argv, opts: opts.clone() };
        broker.wait_ready().await?;
        Ok(broker)
    }

    /// `kill -9`s the broker (start it again with [`crash_and_restart`](Self::crash_and_restart)).
    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// `kill -9`s the broker and starts it again with the same arguments (same port, same
    /// data directory), waiting until it accepts connections.
    pub async fn crash_and_restart(&mut self) {
        assert!(!is_mosquitto(), "crash tests run against promptmq");
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptmq"));
        cmd.args(&self.argv).envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        // Keep the earlier runs' logs: append.
        self.child = spawn_logged(&mut cmd, &self.log).unwrap_or_else(|e| panic!("restart: {e}"));
        if let Err(e) = self.wait_ready().await {
            panic!("restart: {e}");
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the broker process.
    #[cfg(unix)]
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits up to `bound` for the broker process to exit; its exit status, or None if it
    /// is still running.
    pub async fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the broker again with the same arguments after it exited (see `wait_exit`).
    pub async fn restart(&mut self) {
        assert!(matches!(self.child.try_wait(), Ok(Some(_))), "restart: the broker is still running");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptmq"));
        cmd.args(&self.argv).envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        self.child = spawn_logged(&mut cmd, &self.log).unwrap_or_else(|e| panic!("restart: {e}"));
        if let Err(e) = self.wait_ready().await {
            panic!("restart: {e}");
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let broker = self;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(format!("broker exited early ({status}); log:\n{}", broker.log_text()));
            }
            if let Ok(Ok(_s)) =
                tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(broker.addr())).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "broker not accepting connections on {} after 15 s; log:\n{}",
                    broker.addr(),
                    broker.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn cores(&self) -> usize {
        self.opts.cores
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the broker process, in KiB (Linux).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.opts.data_dir.clone().unwrap_or_else(|| self.dir.join("data"))
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        if s.len() > 8000 {
            let cut = s.len() - 8000;
            let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s = format!("...{}", &s[cut..]);
        }
        s
    }

    /// Whether the broker process is still alive (e.g. it did not crash on a
    /// malformed packet).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- broker (cores={}, port={}) log ----\n{}", self.opts.cores, self.port, self.log_text());
        }
        remove_dir(&self.dir);
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let logf = fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| e.to_string())?;
    let logf2 = logf.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(Stdio::from(logf)).stderr(Stdio::from(logf2));
    cmd.spawn().map_err(|e| format!("spawn {:?}: {e}", broker_kind()))
}

fn remove_dir(p: &Path) {
    let _ = fs::remove_dir_all(p);
}

fn mosquitto_conf(opts: &BrokerOpts, port: u16) -> String {
    let mut c = format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         connection_messages true\n"
    );
    if let Some(v) = opts.max_keep_alive {
        c += &format!("max_keepalive {v}\n");
    }
    if let Some(v) = opts.max_packet_size {
        c += &format!("max_packet_size {v}\n");
    }
    if let Some(v) = opts.max_inflight {
        c += &format!("max_inflight_messages {v}\n");
    }
    if let Some(v) = opts.max_queued_messages {
        c += &format!("max_queued_messages {v}\n");
    }
    // PromptMQ's default is 1024 aliases; mosquitto's is 10.
    c += &format!("max_topic_alias {}\n", opts.topic_alias_maximum.unwrap_or(1024));
    c
}

// ---------------------------------------------------------------------------
// Running a scenario on 2 and 4 cores
// ---------------------------------------------------------------------------

/// Runs `scenario` against one broker with 2 cores and one with 4 cores
/// (concurrently), both started with `opts`. Fails if either run fails.
pub async fn on_cores<F, Fut>(opts: BrokerOpts, scenario: F)
where
    F: Fn(Broker) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut handles = Vec::new();
    for cores in CORES {
        let broker = opts.clone().cores(cores).start().await;
        handles.push((cores, tokio::spawn(scenario(broker))));
    }
    let mut failures = Vec::new();
    for (cores, h) in handles {
        if let Err(e) = h.await {
            let msg = if e.is_panic() {
                let p = e.into_panic();
                if let Some(s) = p.downcast_ref::<String>() {
                    s.clone()
                } else if let Some(s) = p.downcast_ref::<&str>() {
                    s.to_string()
                } else {
                    "panic".to_string()
                }
            } else {
                e.to_string()
            };
            failures.push(format!("cores={cores}: {msg}"));
        }
    }
    if !failures.is_empty() {
        panic!("scenario failed:\n{}", failures.join("\n"));
    }
}

/// Awaits `fut` or panics with `what` after `dur`.
pub async fn within<T>(dur: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(dur, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {dur:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------
// rumqttc wrappers
// ---------------------------------------------------------------------------

/// MQTT 3.1.1 client (rumqttc). The event loop is polled only inside the
/// wrapper's methods; incoming PUBLISHes seen meanwhile are queued.
pub struct Client4 {
    pub client: rumqttc::AsyncClient,
    pub eventloop: rumqttc::EventLoop,
    pub connack: rumqttc::ConnAck,
    inbox: VecDeque<rumqttc::Publish>,
    id: String,
}

pub fn opts4(port: u16, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    o
}

impl Client4 {
    /// Connects with clean session = `clean`.
    pub async fn connect(port: u16, id: &str, clean: bool) -> Client4 {
        let mut o = opts4(port, id);
        o.set_clean_session(clean);
        Self::connect_with(o).await
    }

    pub async fn connect_with(o: rumqttc::MqttOptions) -> Client4 {
        let id = o.client_id();
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 1000);
        let connack = within(TIMEOUT, &format!("CONNACK for {id}"), async {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => break c,
                    Ok(_) => {}
                    Err(e) => panic!("{id}: connect failed: {e}"),
                }
            }
        })
        .await;
        Client4 { client, eventloop, connack, inbox: VecDeque::new(), id }
    }

    async fn poll(&mut self, what: &str) -> rumqttc::Event {
        let id = self.id.clone();
        match tokio::time::timeout(TIMEOUT, self.eventloop.poll()).await {
            Ok(Ok(ev)) => {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = &ev {
                    self.inbox.push_back(p.clone());
                }
                ev
            }
            Ok(Err(e)) => panic!("{id}: connection error while waiting for {what}: {e}"),
            Err(_) => panic!("{id}: timed out waiting for {what}"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.expect("queue SUBSCRIBE");
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s)) =
                self.poll(&format!("SUBACK for {filter}")).await
            {
                return s.return_codes;
            }
        }
    }

    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.expect("queue UNSUBSCRIBE");
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::UnsubAck(_)) =
                self.poll(&format!("UNSUBACK for {filter}")).await
            {
                return;
            }
        }
    }

    /// Publishes and waits until the flow is complete (written for QoS 0,
    /// PUBACK for QoS 1, PUBCOMP for QoS 2).
    pub async fn publish(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos, retain, payload).await.expect("queue PUBLISH");
        let pkid = loop {
            if let rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) = self.poll("outgoing PUBLISH").await {
                break pkid;
            }
        };
        if qos == rumqttc::QoS::AtMostOnce {
            return;
        }
        loop {
            match (qos, self.poll("PUBLISH acknowledgement").await) {
                (rumqttc::QoS::AtLeastOnce, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a))) if a.pkid == pkid => {
                    return
                }
                (rumqttc::QoS::ExactlyOnce, rumqttc::Event::Incoming(rumqttc::Packet::PubComp(a)))
                    if a.pkid == pkid =>
                {
                    return
                }
                _ => {}
            }
        }
    }

    /// Next application message, or panic after [`TIMEOUT`].
    pub async fn recv(&mut self) -> rumqttc::Publish {
        match self.try_recv(TIMEOUT).await {
            Some(p) => p,
            None => panic!("{}: no PUBLISH within {TIMEOUT:?}", self.id),
        }
    }

    /// Next application message within `dur`, if any.
    pub async fn try_recv(&mut self, dur: Duration) -> Option<rumqttc::Publish> {
        if let Some(p) = self.inbox.pop_front() {
            return Some(p);
        }
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Err(_) => return None,
                Ok(Err(e)) => panic!("{}: connection error while receiving: {e}", self.id),
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => return Some(p),
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn assert_no_message(&mut self, dur: Duration) {
        if let Some(p) = self.try_recv(dur).await {
            panic!("{}: unexpected message {:?} payload={:?}", self.id, p.topic, p.payload);
        }
    }

    /// Sends DISCONNECT and waits until it is written.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        loop {
            match tokio::time::timeout(TIMEOUT, self.eventloop.poll()).await {
                Ok(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return,
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => panic!("{}: DISCONNECT not sent", self.id),
            }
        }
    }
}

/// MQTT 5 client (rumqttc::v5), same shape as [`Client4`].
pub struct Client5 {
    pub client: rumqttc::v5::AsyncClient,
    pub eventloop: rumqttc::v5::EventLoop,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
    inbox: VecDeque<rumqttc::v5::mqttbytes::v5::Publish>,
    id: String,
}

pub fn opts5(port: u16, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(2 * 1024 * 1024));
    o
}

pub type Publish5 = rumqttc::v5::mqttbytes::v5::Publish;
pub type QoS5 = rumqttc::v5::mqttbytes::QoS;

impl Client5 {
    /// Connects with clean start = `clean` and the given session expiry.
    pub async fn connect(port: u16, id: &str, clean: bool, session_expiry: Option<u32>) -> Client5 {
        let mut o = opts5(port, id);
        o.set_clean_start(clean);
        o.set_session_expiry_interval(session_expiry);
        Self::connect_with(o).await
    }

    pub async fn connect_with(o: rumqttc::v5::MqttOptions) -> Client5 {
        use rumqttc::v5::{mqttbytes::v5::Packet, Event};
        let id = o.client_id();
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, 1000);
        let connack = within(TIMEOUT, &format!("CONNACK for {id}"), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => break c,
                    Ok(_) => {}
                    Err(e) => panic!("{id}: connect failed: {e}"),
                }
            }
        })
        .await;
        Client5 { client, eventloop, connack, inbox: VecDeque::new(), id }
    }

    async fn poll(&mut self, what: &str) -> rumqttc::v5::Event {
        use rumqttc::v5::{mqttbytes::v5::Packet, Event};
        let id = self.id.clone();
        match tokio::time::timeout(TIMEOUT, self.eventloop.poll()).await {
            Ok(Ok(ev)) => {
                if let Event::Incoming(Packet::Publish(p)) = &ev {
                    self.inbox.push_back(p.clone());
                }
                ev
            }
            Ok(Err(e)) => panic!("{id}: connection error while waiting for {what}: {e}"),
            Err(_) => panic!("{id}: timed out waiting for {what}"),
        }
    }

    /// Subscribes with full filter options and an optional subscription id.
    pub async fn subscribe_filters(
        &mut self,
        filters: Vec<rumqttc::v5::mqttbytes::v5::Filter>,
        id: Option<usize>,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        use rumqttc::v5::{mqttbytes::v5::Packet, Event};
        let what = format!("SUBACK for {:?}", filters.iter().map(|f| &f.path).collect::<Vec<_>>());
        match id {
            Some(id) => self
                .client
                .subscribe_many_with_properties(
                    filters,
                    rumqttc::v5::mqttbytes::v5::SubscribeProperties { id: Some(id), user_properties: vec![] },
                )
                .await
                .expect("queue SUBSCRIBE"),
            None => self.client.subscribe_many(filters).await.expect("queue SUBSCRIBE"),
        }
        loop {
            if let Event::Incoming(Packet::SubAck(s)) = self.poll(&what).await {
                return s.return_codes;
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS5) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        self.subscribe_filters(vec![rumqttc::v5::mqttbytes::v5::Filter::new(filter, qos)], None).await
    }

    pub async fn unsubscribe(&mut self, filter: &str) -> Vec<rumqttc::v5::mqttbytes::v5::UnsubAckReason> {
        use rumqttc::v5::{mqttbytes::v5::Packet, Event};
        self.client.unsubscribe(filter).await.expect("queue UNSUBSCRIBE");
        loop {
            if let Event::Incoming(Packet::UnsubAck(u)) = self.poll(&format!("UNSUBACK for {filter}")).await {
                return u.reasons;
            }
        }
    }

    /// Publishes (optionally with properties) and waits until the flow is
    /// complete.
    pub async fn publish_props(
        &mut self,
        topic: &str,
        qos: QoS5,
        retain: bool,
        payload: impl Into<Vec<u8>>,
        props: Option<rumqttc::v5::mqttbytes::v5::PublishProperties>,
    ) {
        use rumqttc::v5::{mqttbytes::v5::Packet, Event};
        let payload: Vec<u8> = payload.into();
        match props {
            Some(p) => {
                self.client.publish_with_properties(topic, qos, retain, payload, p).await.expect("queue PUBLISH")
            }
            None => self.client.publish(topic, qos, retain, payload).await.expect("queue PUBLISH"),
        }
        let pkid = loop {
            if let Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) = self.poll("outgoing PUBLISH").await {
                break pkid;
            }
        };
        if qos == QoS5::AtMostOnce {
            return;
        }
        loop {
            match (qos, self.poll("PUBLISH acknowledgement").await) {
                (QoS5::AtLeastOnce, Event::Incoming(Packet::PubAck(a))) if a.pkid == pkid => return,
                (QoS5::ExactlyOnce, Event::Incoming(Packet::PubComp(a))) if a.pkid == pkid => return,
                _ => {}
            }
        }
    }

    pub async fn publish(&mut self, topic: &str, qos: QoS5, retain: bool, payload: impl Into<Vec<u8>>) {
        self.publish_props(topic, qos, retain, payload, None).await
    }

    /// Queues all messages at once (rumqttc pipelines them within the
    /// server's Receive Maximum) and waits until every flow is complete.
    pub async fn publish_many(&mut self, msgs: Vec<(String, Vec<u8>)>, qos: QoS5) {
        use rumqttc::v5::{mqttbytes::v5::Packet, Event};
        let n = msgs.len();
        assert!(n < 1000, "request channel capacity");
        for (t, p) in msgs {
            self.client.publish(t, qos, false, p).await.expect("queue PUBLISH");
        }
        let mut done = 0;
        while done < n {
            match (qos, self.poll("PUBLISH flows").await) {
                (QoS5::AtMostOnce, Event::Outgoing(rumqttc::Outgoing::Publish(_))) => done += 1,
                (QoS5::AtLeastOnce, Event::Incoming(Packet::PubAck(_))) => done += 1,
                (QoS5::ExactlyOnce, Event::Incoming(Packet::PubComp(_))) => done += 1,
                _ => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Publish5 {
        match self.try_recv(TIMEOUT).await {
            Some(p) => p,
            None => panic!("{}: no PUBLISH within {TIMEOUT:?}", self.id),
        }
    }

    pub async fn try_recv(&mut self, dur: Duration) -> Option<Publish5> {
        use rumqttc::v5::{mqttbytes::v5::Packet, Event};
        if let Some(p) = self.inbox.pop_front() {
            return Some(p);
        }
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Err(_) => return None,
                Ok(Err(e)) => panic!("{}: connection error while receiving: {e}", self.id),
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn assert_no_message(&mut self, dur: Duration) {
        if let Some(p) = self.try_recv(dur).await {
            panic!("{}: unexpected message {:?} payload={:?}", self.id, p.topic, p.payload);
        }
    }

    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        loop {
            match tokio::time::timeout(TIMEOUT, self.eventloop.poll()).await {
                Ok(Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return,
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => panic!("{}: DISCONNECT not sent", self.id),
            }
        }
    }
}

/// Topic of a rumqttc v5 publish as a string.
pub fn topic5(p: &Publish5) -> String {
    String::from_utf8(p.topic.to_vec()).expect("utf-8 topic")
}

// ---------------------------------------------------------------------------
// Raw client (mqttbytes 0.6)
// ---------------------------------------------------------------------------

/// One MQTT control packet as received: the complete frame bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    header_len: usize,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.bytes[..self.bytes.len().min(48)];
        write!(
            f,
            "Frame(type={}, flags={:#06b}, len={}, bytes={:02x?}{})",
            self.ptype(),
            self.flags(),
            self.bytes.len(),
            shown,
            if self.bytes.len() > 48 { ".." } else { "" }
        )
    }
}

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const UNSUBACK: u8 = 11;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;
pub const AUTH: u8 = 15;

impl Frame {
    pub fn ptype(&self) -> u8 {
        self.bytes[0] >> 4
    }
    pub fn flags(&self) -> u8 {
        self.bytes[0] & 0x0f
    }
    /// Variable header + payload.
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }

    /// Decodes as a 3.1.1 packet.
    pub fn v4(&self) -> v4::Packet {
        let mut b = BytesMut::from(&self.bytes[..]);
        v4::read(&mut b, usize::MAX).unwrap_or_else(|e| panic!("cannot decode {self:?} as 3.1.1: {e:?}"))
    }

    /// Decodes as an MQTT 5 packet. DISCONNECT is decoded here because
    /// mqttbytes 0.6 rejects the short forms the spec allows.
    pub fn v5(&self) -> v5::Packet {
        if self.ptype() == DISCONNECT {
            let rc = self.body().first().copied().unwrap_or(0);
            let reason_code = v5::DisconnectReasonCode::try_from(rc)
                .unwrap_or_else(|_| panic!("invalid DISCONNECT reason code {rc:#04x}"));
            return v5::Packet::Disconnect(v5::Disconnect { reason_code, properties: None });
        }
        let mut b = BytesMut::from(&self.bytes[..]);
        v5::read(&mut b, usize::MAX).unwrap_or_else(|e| panic!("cannot decode {self:?} as MQTT 5: {e:?}"))
    }

    /// Reason code of a v5 DISCONNECT (0 when omitted).
    pub fn disconnect_reason(&self) -> Option<u8> {
        (self.ptype() == DISCONNECT).then(|| self.body().first().copied().unwrap_or(0))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// EOF or connection reset.
    Closed,
    Timeout,
}

/// A raw MQTT connection.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    /// PUBLISH frames that arrived ahead of an awaited SUBACK (allowed by spec 3.8.4:
    /// retained messages may precede the SUBACK); handed out first by later reads.
    stash: std::collections::VecDeque<Frame>,
    pub name: String,
}

/// Parses a fixed header: Some((header_len, remaining_len)) once complete.
fn parse_fixed_header(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *b.get(1 + i)?;
        len |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((2 + i, len));
        }
    }
    panic!("peer sent a remaining length longer than 4 bytes: {:02x?}", &b[..5]);
}

impl Raw {
    pub async fn open(port: u16, name: &str) -> Raw {
        let stream =
            within(TIMEOUT, "TCP connect", TcpStream::connect(("127.0.0.1", port))).await.expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream, buf: BytesMut::with_capacity(4096), stash: Default::default(), name: name.to_string() }
    }

    /// Writes raw bytes. Errors (the peer may already have closed) are
    /// returned, not raised.
    pub async fn send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b).await?;
        self.stream.flush().await
    }

    /// Encodes with an mqttbytes writer and sends; panics on write errors.
    pub async fn send<F>(&mut self, enc: F)
    where
        F: FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>,
    {
        let b = encode(enc);
        self.send_bytes(&b).await.unwrap_or_else(|e| panic!("{}: write failed: {e}", self.name));
    }

    /// Reads the next complete frame.
    pub async fn read_frame(&mut self, dur: Duration) -> Result<Frame, ReadError> {
        if let Some(f) = self.stash.pop_front() {
            return Ok(f);
        }
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if let Some((hl, rl)) = parse_fixed_header(&self.buf) {
                if self.buf.len() >= hl + rl {
                    let bytes = self.buf.split_to(hl + rl).to_vec();
                    return Ok(Frame { bytes, header_len: hl });
                }
            }
            let mut tmp = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(ReadError::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Next frame, panicking on timeout or close.
    pub async fn recv(&mut self) -> Frame {
        match self.read_frame(TIMEOUT).await {
            Ok(f) => f,
            Err(e) => panic!("{}: expected a packet, got {e:?}", self.name),
        }
    }

    /// Next frame, which must be of type `ptype`.
    pub async fn expect(&mut self, ptype: u8) -> Frame {
        let f = self.recv().await;
        assert_eq!(f.ptype(), ptype, "{}: unexpected packet {f:?}", self.name);
        f
    }

    /// The next SUBACK; PUBLISHes that come first are kept for later reads.
    pub async fn recv_suback(&mut self) -> Frame {
        let mut early = Vec::new();
        let f = loop {
            let f = self.recv().await;
            if f.ptype() == 3 {
                early.push(f);
            } else {
                break f;
            }
        };
        for e in early.into_iter().rev() {
            self.stash.push_front(e);
        }
        f
    }

    pub async fn recv4(&mut self) -> v4::Packet {
        self.recv().await.v4()
    }

    pub async fn recv5(&mut self) -> v5::Packet {
        self.recv().await.v5()
    }

    pub async fn expect_publish4(&mut self) -> v4::Publish {
        match self.recv4().await {
            v4::Packet::Publish(p) => p,
            other => panic!("{}: expected PUBLISH, got {other:?}", self.name),
        }
    }

    pub async fn expect_publish5(&mut self) -> v5::Publish {
        match self.recv5().await {
            v5::Packet::Publish(p) => p,
            other => panic!("{}: expected PUBLISH, got {other:?}", self.name),
        }
    }

    /// Asserts that nothing arrives within `dur` (and the connection stays
    /// open).
    pub async fn expect_silence(&mut self, dur: Duration) {
        match self.read_frame(dur).await {
            Err(ReadError::Timeout) => {}
            Err(ReadError::Closed) => panic!("{}: connection closed unexpectedly", self.name),
            Ok(f) => panic!("{}: unexpected packet {f:?}", self.name),
        }
    }

    /// Reads until the server closes the connection; returns what arrived
    /// before. Panics if it is still open after `dur`.
    pub async fn expect_closed(&mut self, dur: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + dur;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Err(ReadError::Closed) => return frames,
                Err(ReadError::Timeout) => {
                    panic!("{}: connection still open after {dur:?}; received {frames:?}", self.name)
                }
                Ok(f) => frames.push(f),
            }
        }
    }

    /// Like [`Raw::expect_closed`], and the close must be preceded by a v5
    /// DISCONNECT with one of `reasons` (asserted when `reasons` is not
    /// empty). Returns the reason code seen, if any.
    pub async fn expect_disconnect5(&mut self, reasons: &[u8]) -> Option<u8> {
        let frames = self.expect_closed(TIMEOUT).await;
        let rc = frames.iter().find_map(|f| f.disconnect_reason());
        if !reasons.is_empty() {
            match rc {
                Some(rc) => assert!(
                    reasons.contains(&rc),
                    "{}: DISCONNECT reason {rc:#04x}, expected one of {reasons:02x?}",
                    self.name
                ),
                None => panic!(
                    "{}: closed without DISCONNECT (expected one of {reasons:02x?}); received {frames:?}",
                    self.name
                ),
            }
        }
        rc
    }

    // ----- MQTT 3.1.1 helpers -------------------------------------------

    /// Opens a connection and performs a 3.1.1 CONNECT; returns the CONNACK.
    pub async fn connect4(port: u16, c: v4::Connect) -> (Raw, v4::ConnAck) {
        let mut r = Raw::open(port, &format!("raw4:{}", c.client_id)).await;
        r.send(|b| c.write(b)).await;
        match r.recv4().await {
            v4::Packet::ConnAck(a) => (r, a),
            other => panic!("{}: expected CONNACK, got {other:?}", r.name),
        }
    }

    /// 3.1.1 connect that must succeed.
    pub async fn connect4_ok(port: u16, id: &str, clean: bool) -> (Raw, v4::ConnAck) {
        let (r, a) = Raw::connect4(port, connect4(id, clean)).await;
        assert_eq!(a.code, v4::ConnectReturnCode::Success, "{id}: CONNACK {a:?}");
        (r, a)
    }

    pub async fn subscribe4(&mut self, pkid: u16, filter: &str, qos: QoS) -> v4::SubAck {
        let mut s = v4::Subscribe::new(filter, qos);
        s.pkid = pkid;
        self.send(|b| s.write(b)).await;
        match self.recv_suback().await.v4() {
            v4::Packet::SubAck(a) => {
                assert_eq!(a.pkid, pkid, "{}: SUBACK packet id", self.name);
                a
            }
            other => panic!("{}: expected SUBACK, got {other:?}", self.name),
        }
    }

    pub async fn publish4(&mut self, topic: &str, qos: QoS, pkid: u16, retain: bool, payload: &[u8]) {
        let mut p = v4::Publish::new(topic, qos, payload.to_vec());
        p.pkid = pkid;
        p.retain = retain;
        self.send(|b| p.write(b)).await;
    }

    pub async fn disconnect4(mut self) {
        let _ = self.send_bytes(&[0xE0, 0x00]).await;
        // Wait for the server to close so that the DISCONNECT is processed
        // before the test goes on.
        let _ = self.read_frame(Duration::from_secs(2)).await;
    }

    // ----- MQTT 5 helpers -------------------------------------------------

    /// Opens a connection and performs a v5 CONNECT; returns the CONNACK.
    pub async fn connect5(port: u16, c: v5::Connect) -> (Raw, v5::ConnAck) {
        let mut r = Raw::open(port, &format!("raw5:{}", c.client_id)).await;
        r.send(|b| c.write(b)).await;
        match r.recv5().await {
            v5::Packet::ConnAck(a) => (r, a),
            other => panic!("{}: expected CONNACK, got {other:?}", r.name),
        }
    }

    /// v5 connect that must succeed.
    pub async fn connect5_ok(port: u16, c: v5::Connect) -> (Raw, v5::ConnAck) {
        let id = c.client_id.clone();
        let (r, a) = Raw::connect5(port, c).await;
        assert_eq!(a.code, v5::ConnectReturnCode::Success, "{id}: CONNACK {a:?}");
        (r, a)
    }

    /// Subscribes with explicit filters and optional subscription id.
    pub async fn subscribe5(
        &mut self,
        pkid: u16,
        filters: Vec<v5::SubscribeFilter>,
        sub_id: Option<usize>,
    ) -> v5::SubAck {
        let s = v5::Subscribe {
            pkid,
            filters,
            properties: sub_id.map(|id| v5::SubscribeProperties { id: Some(id), user_properties: vec![] }),
        };
        self.send(|b| s.write(b)).await;
        match self.recv_suback().await.v5() {
            v5::Packet::SubAck(a) => {
                assert_eq!(a.pkid, pkid, "{}: SUBACK packet id", self.name);
                a
            }
            other => panic!("{}: expected SUBACK, got {other:?}", self.name),
        }
    }

    /// Subscribes to one filter and asserts the granted QoS.
    pub async fn sub5(&mut self, pkid: u16, filter: &str, qos: QoS) {
        let a = self.subscribe5(pkid, vec![filter5(filter, qos)], None).await;
        assert_eq!(a.return_codes, vec![granted5(qos)], "{}: SUBACK for {filter}", self.name);
    }

    pub async fn publish5(&mut self, p: &v5::Publish) {
        self.send(|b| p.write(b)).await;
    }

    /// Sends a v5 PUBLISH and completes its flow (PUBACK, or PUBREC ->
    /// PUBREL -> PUBCOMP). The connection must not receive PUBLISHes
    /// meanwhile. Returns the PUBACK/PUBREC reason code.
    pub async fn publish5_complete(&mut self, p: &v5::Publish) -> u8 {
        self.publish5(p).await;
        match p.qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => {
                let f = self.expect(PUBACK).await;
                match f.v5() {
                    v5::Packet::PubAck(a) => {
                        assert_eq!(a.pkid, p.pkid, "{}: PUBACK packet id", self.name);
                        a.reason as u8
                    }
                    other => panic!("{}: expected PUBACK, got {other:?}", self.name),
                }
            }
            QoS::ExactlyOnce => {
                let f = self.expect(PUBREC).await;
                let rc = f.body().get(2).copied().unwrap_or(0);
                let rel = v5::PubRel::new(p.pkid);
                self.send(|b| rel.write(b)).await;
                let f = self.expect(PUBCOMP).await;
                assert_eq!(&f.body()[..2], &p.pkid.to_be_bytes(), "{}: PUBCOMP packet id", self.name);
                rc
            }
        }
    }

    /// Acknowledges a received v5 PUBLISH (PUBACK for QoS 1, PUBREC for
    /// QoS 2; the PUBREL is answered in [`Raw::collect5`]).
    pub async fn ack5(&mut self, p: &v5::Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let a = v5::PubAck::new(p.pkid);
                self.send(|b| a.write(b)).await;
            }
            QoS::ExactlyOnce => {
                let a = v5::PubRec::new(p.pkid);
                self.send(|b| a.write(b)).await;
            }
        }
    }

    /// Handles one non-PUBLISH packet during collection; returns the
    /// PUBLISH if it was one.
    async fn collect_step5(&mut self, f: Frame) -> Option<v5::Publish> {
        match f.ptype() {
            PUBLISH => match f.v5() {
                v5::Packet::Publish(p) => {
                    self.ack5(&p).await;
                    Some(p)
                }
                _ => unreachable!(),
            },
            PUBREL => {
                let pkid = u16::from_be_bytes([f.body()[0], f.body()[1]]);
                let c = v5::PubComp::new(pkid);
                self.send(|b| c.write(b)).await;
                None
            }
            PUBREC => {
                // we are the publisher of a QoS 2 message
                let pkid = u16::from_be_bytes([f.body()[0], f.body()[1]]);
                let r = v5::PubRel::new(pkid);
                self.send(|b| r.write(b)).await;
                None
            }
            PUBACK | PUBCOMP | PINGRESP => None,
            _ => panic!("{}: unexpected packet while collecting: {f:?}", self.name),
        }
    }

    /// Collects exactly `n` PUBLISHes (acknowledging them), or panics after
    /// [`TIMEOUT`].
    pub async fn collect5(&mut self, n: usize) -> Vec<v5::Publish> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Ok(f) => {
                    if let Some(p) = self.collect_step5(f).await {
                        out.push(p);
                    }
                }
                Err(e) => panic!(
                    "{}: got {} of {n} PUBLISHes, then {e:?}: {:?}",
                    self.name,
                    out.len(),
                    out.iter().map(|p| (&p.topic, &p.payload)).collect::<Vec<_>>()
                ),
            }
        }
        out
    }

    /// Collects every PUBLISH arriving within `dur` (acknowledging them).
    pub async fn drain5(&mut self, dur: Duration) -> Vec<v5::Publish> {
        let deadline = tokio::time::Instant::now() + dur;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Ok(f) => {
                    if let Some(p) = self.collect_step5(f).await {
                        out.push(p);
                    }
                }
                Err(ReadError::Timeout) => return out,
                Err(ReadError::Closed) => panic!("{}: closed while draining", self.name),
            }
        }
    }

    /// Asserts that no PUBLISH arrives within `dur` (acknowledgement traffic
    /// of earlier flows is handled and allowed).
    pub async fn assert_no_publish5(&mut self, dur: Duration) {
        let got = self.drain5(dur).await;
        assert!(got.is_empty(), "{}: unexpected PUBLISH {got:?}", self.name);
    }

    /// 3.1.1 counterpart of [`Raw::collect5`].
    pub async fn collect4(&mut self, n: usize) -> Vec<v4::Publish> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = match self.read_frame(left).await {
                Ok(f) => f,
                Err(e) => panic!("{}: got {} of {n} PUBLISHes, then {e:?}", self.name, out.len()),
            };
            match f.ptype() {
                PUBLISH => {
                    let p = match f.v4() {
                        v4::Packet::Publish(p) => p,
                        _ => unreachable!(),
                    };
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => {
                            let a = v4::PubAck::new(p.pkid);
                            self.send(|b| a.write(b)).await;
                        }
                        QoS::ExactlyOnce => {
                            let a = v4::PubRec::new(p.pkid);
                            self.send(|b| a.write(b)).await;
                        }
                    }
                    out.push(p);
                }
                PUBREL => {
                    let pkid = u16::from_be_bytes([f.body()[0], f.body()[1]]);
                    let c = v4::PubComp::new(pkid);
                    self.send(|b| c.write(b)).await;
                }
                PUBACK | PUBCOMP | PINGRESP => {}
                _ => panic!("{}: unexpected packet while collecting: {f:?}", self.name),
            }
        }
        out
    }

    pub async fn disconnect5(mut self, reason: v5::DisconnectReasonCode) {
        let d = v5::Disconnect { reason_code: reason, properties: None };
        self.send(|b| d.write(b)).await;
        let _ = self.read_frame(Duration::from_secs(2)).await;
    }
}

/// Encodes with an mqttbytes writer.
pub fn encode<F>(enc: F) -> Vec<u8>
where
    F: FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>,
{
    let mut b = BytesMut::new();
    enc(&mut b).expect("encode packet");
    b.to_vec()
}

/// 3.1.1 CONNECT with keep alive 30 s.
pub fn connect4(id: &str, clean: bool) -> v4::Connect {
    let mut c = v4::Connect::new(id);
    c.protocol = mqttbytes::Protocol::V4;
    c.keep_alive = 30;
    c.clean_session = clean;
    c
}

/// v5 CONNECT with keep alive 30 s and no properties.
pub fn connect5(id: &str, clean: bool) -> v5::Connect {
    let mut c = v5::Connect::new(id);
    c.keep_alive = 30;
    c.clean_session = clean;
    c
}

/// Empty v5 CONNECT properties.
pub fn connect_props5() -> v5::ConnectProperties {
    v5::ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: vec![],
        authentication_method: None,
        authentication_data: None,
    }
}

/// v5 CONNECT with a Session Expiry Interval.
pub fn connect5_session(id: &str, clean: bool, expiry: u32) -> v5::Connect {
    let mut c = connect5(id, clean);
    let mut p = connect_props5();
    p.session_expiry_interval = Some(expiry);
    c.properties = Some(p);
    c
}

/// Empty v5 will properties.
pub fn will_props5() -> v5::WillProperties {
    v5::WillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    }
}

/// Empty v5 PUBLISH properties.
pub fn publish_props5() -> v5::PublishProperties {
    v5::PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
        subscription_identifiers: vec![],
        content_type: None,
    }
}

/// v5 PUBLISH builder.
pub fn publish5(topic: &str, qos: QoS, pkid: u16, retain: bool, payload: &[u8]) -> v5::Publish {
    let mut p = v5::Publish::new(topic, qos, payload.to_vec());
    p.pkid = pkid;
    p.retain = retain;
    p
}

pub fn filter5(path: &str, qos: QoS) -> v5::SubscribeFilter {
    v5::SubscribeFilter::new(path.to_string(), qos)
}

pub fn granted5(qos: QoS) -> v5::SubscribeReasonCode {
    match qos {
        QoS::AtMostOnce => v5::SubscribeReasonCode::QoS0,
        QoS::AtLeastOnce => v5::SubscribeReasonCode::QoS1,
        QoS::ExactlyOnce => v5::SubscribeReasonCode::QoS2,
    }
}

/// Subscription identifiers carried by a v5 PUBLISH.
pub fn sub_ids(p: &v5::Publish) -> Vec<usize> {
    let mut v = p.properties.as_ref().map(|pp| pp.subscription_identifiers.clone()).unwrap_or_default();
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------------------
// Bystander: a client that must keep working while others misbehave
// ---------------------------------------------------------------------------

/// A v5 client connected before a misbehaving client acts; afterwards
/// [`Bystander::check`] proves it still publishes and receives normally.
pub struct Bystander {
    raw: Raw,
    topic: String,
    pkid: u16,
}

impl Bystander {
    pub async fn connect(port: u16, tag: &str) -> Bystander {
        let (mut raw, _) = Raw::connect5_ok(port, connect5(&format!("bystander-{tag}"), true)).await;
        let topic = format!("bystander/{tag}");
        raw.sub5(1, &topic, QoS::AtLeastOnce).await;
        Bystander { raw, topic, pkid: 100 }
    }

    /// Publishes a QoS 1 message to its own topic and expects both the PUBACK
    /// and the delivery.
    pub async fn check(&mut self) {
        self.pkid += 1;
        let payload = format!("alive-{}", self.pkid);
        let p = publish5(&self.topic, QoS::AtLeastOnce, self.pkid, false, payload.as_bytes());
        self.raw.publish5(&p).await;
        let mut got_ack = false;
        let mut got_msg = false;
        while !(got_ack && got_msg) {
            match self.raw.recv5().await {
                v5::Packet::PubAck(a) if a.pkid == self.pkid => got_ack = true,
                v5::Packet::Publish(m) => {
                    assert_eq!(m.topic, self.topic, "bystander got a foreign message");
                    assert_eq!(&m.payload[..], payload.as_bytes());
                    if m.qos == QoS::AtLeastOnce {
                        let ack = v5::PubAck::new(m.pkid);
                        self.raw.send(|b| ack.write(b)).await;
                    }
                    got_msg = true;
                }
                other => panic!("bystander: unexpected {other:?}"),
            }
        }
    }
}

/// Consumes `b` as a big-endian u16 (for hand-built packets).
pub fn read_u16(b: &mut &[u8]) -> u16 {
    b.get_u16()
}

/// Encodes an MQTT variable byte integer.
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// Builds a frame from a first byte and a body (computes the remaining
/// length).
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend(varint(body.len()));
    v.extend_from_slice(body);
    v
}

/// An MQTT UTF-8 string / binary data field (2-byte length prefix).
pub fn mqtt_str(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// Publishes QoS 1 messages (payload = sequence number) over `topics` topics `pq/{n}` with
/// up to 32 in flight, stopping at `count` messages or when the connection breaks;
/// returns the acknowledged (topic, seq) pairs.
pub async fn publish_qos1(port: u16, id: String, topics: u64, first: u64, count: u64) -> Vec<(String, u64)> {
    use mqttbytes::v4;
    let mut acked = Vec::new();
    let (mut c, _) = Raw::connect4_ok(port, &id, true).await;
    let mut in_flight: std::collections::HashMap<u16, (String, u64)> = Default::default();
    let mut seq = first;
    let mut pkid: u16 = 0;
    loop {
        while in_flight.len() < 32 && seq < first + count {
            pkid = pkid % 60_000 + 1;
            let topic = format!("pq/{}", seq % topics);
            let mut p = v4::Publish::new(&topic, QoS::AtLeastOnce, seq.to_string().into_bytes());
            p.pkid = pkid;
            let mut b = bytes::BytesMut::new();
            if p.write(&mut b).is_err() || c.send_bytes(&b).await.is_err() {
                return acked;
            }
            in_flight.insert(pkid, (topic, seq));
            seq += 1;
        }
        if in_flight.is_empty() {
            return acked;
        }
        match c.read_frame(Duration::from_secs(2)).await {
            Ok(f) if f.ptype() == 4 => {
                let id = u16::from_be_bytes([f.body()[0], f.body()[1]]);
                if let Some(m) = in_flight.remove(&id) {
                    acked.push(m);
                }
            }
            Ok(_) => {}
            Err(_) => return acked,
        }
    }
}

/// The value of the Prometheus sample `name` (with its labels, if any) in `body`.
pub fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET path` on 127.0.0.1:port: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).expect("read response");
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
