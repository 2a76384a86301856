//! TLS, mutual TLS, WebSocket and secure WebSocket listeners, tried with real clients:
//! `mosquitto_pub`/`mosquitto_sub` over TLS with certificates made by `openssl` here, and
//! paho-mqtt (Python) over WebSocket. Also: SIGHUP loads a new certificate for new
//! connections while established ones keep running.
#![cfg(all(unix, feature = "tls", feature = "websocket"))] // openssl, mosquitto clients and paho-mqtt from the test machine

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("utf-8 path").to_string()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1/localhost with subject CN `server_cn`, a
/// client certificate from the CA, and a client certificate from another CA.
fn make_pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("promptmq-pki-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("pki dir");
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext");
    // Extensions also make it an X.509 v3 certificate (webpki refuses v1).
    std::fs::write(dir.join("client.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n").expect("ext");
    for ca in ["ca", "rogue-ca"] {
        openssl(&dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{ca}.key")]);
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
            ],
        );
    }
    issue(&dir, "server", "ca", "server-one", true);
    issue(&dir, "client", "ca", "client-one", false);
    issue(&dir, "rogue", "rogue-ca", "rogue", false);
    Pki { dir }
}

fn issue(dir: &Path, name: &str, ca: &str, cn: &str, server: bool) {
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{name}.key")]);
    openssl(
        dir,
        &["req", "-new", "-key", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={cn}")],
    );
    let mut args = vec![
        "x509".to_string(),
        "-req".into(),
        "-in".into(),
        format!("{name}.csr"),
        "-CA".into(),
        format!("{ca}.crt"),
        "-CAkey".into(),
        format!("{ca}.key"),
        "-CAcreateserial".into(),
        "-out".into(),
        format!("{name}.crt"),
        "-days".into(),
        "2".into(),
    ];
    args.extend(["-extfile".to_string(), if server { "server.ext" } else { "client.ext" }.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(dir, &args);
}

fn mosquitto(tool: &str, port: u16, pki: &Pki, client_cert: Option<&str>, extra: &[&str]) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile", &pki.path("ca.crt")]);
    if let Some(name) = client_cert {
        c.args(["--cert", &pki.path(&format!("{name}.crt")), "--key", &pki.path(&format!("{name}.key"))]);
    }
    c.args(extra);
    c
}

/// A broker with a TLS listener on `tls_port` using the PKI's server certificate, plus `extra`.
fn tls_broker(pki: &Pki, tls_port: u16, extra: &[&str]) -> BrokerOpts {
    let (bind, cert, key) = (format!("127.0.0.1:{tls_port}"), pki.path("server.crt"), pki.path("server.key"));
    let mut args = vec!["--tls-bind", &bind, "--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    BrokerOpts::new().extra_args(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_mosquitto_clients() {
    skip_on_mosquitto!("promptmq's TLS flags");
    let pki = make_pki("mtls");
    let tls_port = free_port();
    let broker = tls_broker(&pki, tls_port, &["--tls-ca", &pki.path("ca.crt")]).start().await;
    let sub = mosquitto("mosquitto_sub", tls_port, &pki, Some("client"), &["-t", "tls/t", "-C", "1", "-W", "15"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Plain TCP publisher, TLS subscriber: one broker, several listeners.
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-t", "tls/t", "-m", "over tls", "-q", "1"])
        .status()
        .expect("mosquitto_pub");
    assert!(status.success());
    let out = sub.wait_with_output().expect("mosquitto_sub");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");

    // Without a client certificate, or with one from another CA: refused.
    for cert in [None, Some("rogue")] {
        let out = mosquitto("mosquitto_pub", tls_port, &pki, cert, &["-t", "tls/t", "-m", "x"])
            .output()
            .expect("mosquitto_pub");
        assert!(!out.status.success(), "client certificate {cert:?} accepted");
    }
    let ok = mosquitto("mosquitto_pub", tls_port, &pki, Some("client"), &["-t", "tls/t", "-m", "x", "-q", "1"])
        .output()
        .expect("mosquitto_pub");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_minimum_version_is_enforced() {
    skip_on_mosquitto!("promptmq's TLS flags");
    let pki = make_pki("minver");
    let tls_port = free_port();
    let _broker = tls_broker(&pki, tls_port, &["--tls-min-version", "1.3"]).start().await;
    let bind = format!("127.0.0.1:{tls_port}");
    // mosquitto_pub's --tls-version is a minimum too, so ask openssl for exactly one version.
    let try_version = |flag: &str| {
        Command::new("openssl")
            .args(["s_client", "-connect", &bind, "-CAfile", &pki.path("ca.crt"), flag, "-brief"])
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client")
            .status
            .success()
    };
    assert!(try_version("-tls1_3"), "TLS 1.3 accepted");
    assert!(!try_version("-tls1_2"), "TLS 1.2 refused with --tls-min-version 1.3");
}

/// A paho-mqtt (Python) client over WebSocket or secure WebSocket subscribes, a TCP client
/// publishes, the WebSocket client must print what it got.
fn paho_ws_subscriber(port: u16, ca: Option<&str>) -> std::process::Child {
    const SCRIPT: &str = r#"
import sys, paho.mqtt.client as mqtt
port, ca = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ws-sub", transport="websockets", protocol=mqtt.MQTTv5)
if ca:
    c.tls_set(ca_certs=ca)
c.on_connect = lambda c, u, f, rc, p: c.subscribe("ws/t", qos=1)
c.on_subscribe = lambda c, u, mid, rcs, p: print("SUBSCRIBED", [int(r.value) for r in rcs], flush=True)
def on_message(c, u, m):
    print("GOT", m.topic, m.payload.decode(), flush=True)
    c.disconnect()
c.on_message = on_message
c.connect("127.0.0.1", port, 30)
c.loop_forever()
"#;
    Command::new("python3")
        .args(["-c", SCRIPT, &port.to_string(), ca.unwrap_or("")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt (pip install paho-mqtt)")
}

fn wait_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, prefix: &str) -> String {
    for line in lines.by_ref() {
        let line = line.expect("read python output");
        if line.starts_with(prefix) {
            return line;
        }
    }
    panic!("the WebSocket client ended without printing {prefix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_secure_websocket_with_paho() {
    skip_on_mosquitto!("promptmq's WebSocket flags");
    let pki = make_pki("ws");
    let (ws_port, wss_port) = (free_port(), free_port());
    let (ws, wss) = (format!("127.0.0.1:{ws_port}"), format!("127.0.0.1:{wss_port}"));
    let broker = BrokerOpts::new()
        .extra_args(&[
            "--ws-path",
            "/mqtt",
            "--ws-bind",
            &ws,
            "--wss-bind",
            &wss,
            "--tls-cert",
            &pki.path("server.crt"),
            "--tls-key",
            &pki.path("server.key"),
            "--tls-bind",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .start()
        .await;
    // --ws-path: paho asks for /mqtt; anything else is not found.
    for (path, status) in [("/other", "HTTP/1.1 404"), ("/mqtt", "HTTP/1.1 101")] {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&ws).expect("connect ws");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        .expect("send upgrade");
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).expect("read status line");
        assert_eq!(String::from_utf8_lossy(&head), status, "{path}");
    }
    let ca = pki.path("ca.crt");
    for (port, ca) in [(ws_port, None), (wss_port, Some(ca.as_str()))] {
        let mut child = paho_ws_subscriber(port, ca);
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let sub = wait_line(&mut lines, "SUBSCRIBED");
            let got = wait_line(&mut lines, "GOT");
            (sub, got)
        });
        // Publish until the subscriber has it (it may still be subscribing).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reader.is_finished() {
            assert!(Instant::now() < deadline, "WebSocket subscriber got nothing (port {port})");
            let _ = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-t", "ws/t", "-m", "hello ws", "-q", "1"])
                .status();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (sub, got) = reader.join().expect("reader thread");
        assert_eq!(sub, "SUBSCRIBED [1]", "port {port}");
        assert_eq!(got, "GOT ws/t hello ws", "port {port}");
        let status = child.wait().expect("python exit");
        assert!(status.success());
    }
}

fn served_subject(port: u16, ca: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-CAfile", ca, "-brief"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.lines().find(|l| l.contains("Peer certificate")).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_loads_a_new_certificate_for_new_connections() {
    skip_on_mosquitto!("promptmq's SIGHUP");
    let pki = make_pki("reload");
    let tls_port = free_port();
    let bind = format!("127.0.0.1:{tls_port}");
    let (cert, key) = (pki.dir.join("live.crt"), pki.dir.join("live.key"));
    std::fs::copy(pki.dir.join("server.crt"), &cert).expect("copy cert");
    std::fs::copy(pki.dir.join("server.key"), &key).expect("copy key");
    let broker = BrokerOpts::new()
        .log_level("info")
        .extra_args(&["--tls-bind", &bind, "--tls-cert", &pki.path("live.crt"), "--tls-key", &pki.path("live.key")])
        .start()
        .await;
    let ca = pki.path("ca.crt");
    assert!(served_subject(tls_port, &ca).contains("server-one"), "{}", served_subject(tls_port, &ca));
    // An established TLS subscriber.
    let sub = mosquitto("mosquitto_sub", tls_port, &pki, None, &["-t", "r/t", "-C", "1", "-W", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(700)).await;

    issue(&pki.dir, "server2", "ca", "server-two", true);
    std::fs::copy(pki.dir.join("server2.crt"), &cert).expect("copy cert");
    std::fs::copy(pki.dir.join("server2.key"), &key).expect("copy key");
    broker.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !broker.log_text().contains("TLS certificate") {
        assert!(Instant::now() < deadline, "no reload logged:\n{}", broker.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served_subject(tls_port, &ca).contains("server-two"), "{}", served_subject(tls_port, &ca));
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-t", "r/t", "-m", "still here", "-q", "1"])
        .status()
        .expect("mosquitto_pub");
    assert!(status.success());
    let out = sub.wait_with_output().expect("mosquitto_sub");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still here", "the old connection survived the reload");
}

/// `auth.use-identity-as-username`: on the mTLS listener the client certificate's CN is the
/// user name. Anonymous clients are refused, yet the certificate holder connects with no user
/// name and gets the ACL's `user client-one` rules (read and write `id/#` only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_cn_is_the_user_name() {
    skip_on_mosquitto!("promptmq's TLS flags");
    let pki = make_pki("identity");
    let acl = pki.path("acl");
    std::fs::write(&acl, "user client-one\ntopic readwrite id/#\n").expect("write acl");
    let tls_port = free_port();
    let ca = pki.path("ca.crt");
    let extra =
        ["--tls-ca", &ca, "--use-identity-as-username", "true", "--allow-anonymous", "false", "--acl-file", &acl];
    let broker = tls_broker(&pki, tls_port, &extra).start().await;
    // Plain TCP, no user name: refused (anonymous is off).
    let anonymous = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-t", "id/t", "-m", "x", "-q", "1"])
        .output()
        .expect("mosquitto_pub");
    assert!(!anonymous.status.success(), "an anonymous client was let in");

    let sub =
        mosquitto("mosquitto_sub", tls_port, &pki, Some("client"), &["-t", "id/t", "-C", "1", "-W", "15", "-q", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Both ends are `client-one` by certificate only; the ACL's block for that user is what
    // lets them write and read `id/t` (anonymous clients have no rules at all).
    let out =
        mosquitto("mosquitto_pub", tls_port, &pki, Some("client"), &["-t", "id/t", "-m", "as client-one", "-q", "1"])
            .output()
            .expect("mosquitto_pub");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = sub.wait_with_output().expect("mosquitto_sub");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "as client-one",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
