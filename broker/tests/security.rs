//! Authentication and authorization as an operator sets them up: a password file made by
//! `mosquitto_passwd` (and by `promptmq passwd`), `auth.allow-anonymous`, an ACL file in
//! mosquitto's format, and SIGHUP reloading both without dropping connections.
#![cfg(unix)] // signals (and, for TLS/WebSocket, openssl and paho-mqtt from the test machine)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use mqttbytes::v5;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("promptmq-sec-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A password file written by Debian's `mosquitto_passwd` (mosquitto-clients' sibling,
/// installed by .ci/run with the broker package).
fn mosquitto_passwd(path: &Path, user: &str, password: &str) {
    let mut cmd = Command::new("mosquitto_passwd");
    if !path.exists() {
        cmd.arg("-c");
    }
    let status = cmd.arg("-b").arg(path).args([user, password]).status().expect("run mosquitto_passwd");
    assert!(status.success(), "mosquitto_passwd failed");
}

/// A password file (every user's password is `pw`, hashed by mosquitto_passwd) and an ACL
/// file with `acl` in `dir`.
fn auth_files(dir: &Path, users: &[&str], acl: &str) -> (PathBuf, PathBuf) {
    let passwd = dir.join("passwd");
    let _ = std::fs::remove_file(&passwd);
    for user in users {
        mosquitto_passwd(&passwd, user, "pw");
    }
    let acl_path = dir.join("acl");
    std::fs::write(&acl_path, acl).expect("write acl");
    (passwd, acl_path)
}

/// A broker that checks logins against `passwd` and rules against `acl`.
fn auth_opts(passwd: &Path, acl: &Path) -> BrokerOpts {
    BrokerOpts::new().extra_args(&[
        "--password-file",
        passwd.to_str().expect("utf-8"),
        "--acl-file",
        acl.to_str().expect("utf-8"),
    ])
}

fn login5(id: &str, user: Option<(&str, &str)>) -> v5::Connect {
    let mut c = connect5(id, true);
    if let Some((u, p)) = user {
        c.set_login(u, p);
    }
    c
}

async fn connack_code(port: u16, c: v5::Connect) -> u8 {
    let (_raw, ack) = Raw::connect5(port, c).await;
    ack.code as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_from_mosquitto_passwd_decides_who_connects() {
    skip_on_mosquitto!("promptmq's flags");
    let dir = temp_dir("passwd");
    let file = dir.join("passwd");
    let _ = std::fs::remove_file(&file);
    mosquitto_passwd(&file, "alice", "wonderland");
    let file_arg = file.to_str().expect("utf-8");
    let broker =
        BrokerOpts::new().extra_args(&["--password-file", file_arg, "--allow-anonymous", "false"]).start().await;
    let port = broker.port();
    // [MQTT-3.1.4-2]-style refusal: CONNACK with a reason code, then the connection closes.
    assert_eq!(connack_code(port, login5("a1", Some(("alice", "wonderland")))).await, 0x00);
    assert_eq!(connack_code(port, login5("a2", Some(("alice", "looking-glass")))).await, 0x86, "wrong password");
    assert_eq!(connack_code(port, login5("a3", Some(("mallory", "wonderland")))).await, 0x86, "unknown user");
    assert_eq!(connack_code(port, login5("a4", None)).await, 0x87, "anonymous refused");
    // MQTT 3.1.1 return codes: 4 bad user name or password, 5 not authorized.
    let (_r, ack) = Raw::connect4(port, {
        let mut c = connect4("a5", true);
        c.set_login("alice", "nope");
        c
    })
    .await;
    assert_eq!(ack.code, mqttbytes::v4::ConnectReturnCode::BadUserNamePassword);
    let (_r, ack) = Raw::connect4(port, connect4("a6", true)).await;
    assert_eq!(ack.code, mqttbytes::v4::ConnectReturnCode::NotAuthorized);
    // The mosquitto clients, as a user would try it.
    let pub_ok = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "t", "-m", "x", "-u", "alice", "-P", "wonderland"])
        .status()
        .expect("mosquitto_pub");
    assert!(pub_ok.success());
    let pub_bad = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "t", "-m", "x", "-u", "alice", "-P", "bad"])
        .output()
        .expect("mosquitto_pub");
    assert!(!pub_bad.status.success());
    // Failed logins are logged with the user name, never the password.
    let log = broker.log_text();
    assert!(log.contains("login refused") && log.contains("mallory"), "{log}");
    assert!(!log.contains("looking-glass"), "password in the log");
}

#[test]
fn promptmq_passwd_writes_hashes_the_broker_and_mosquitto_format_share() {
    if is_mosquitto() {
        return;
    }
    let dir = temp_dir("ppasswd");
    let file = dir.join("passwd");
    let _ = std::fs::remove_file(&file);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_promptmq")).arg("passwd").args(args).output().expect("promptmq passwd")
    };
    let f = file.to_str().expect("utf-8");
    assert!(run(&["-c", "-b", f, "bob", "builder"]).status.success());
    assert!(run(&["-b", f, "carol", "singer"]).status.success());
    let text = std::fs::read_to_string(&file).expect("read passwd");
    assert!(text.lines().any(|l| l.starts_with("bob:$7$")), "{text}");
    assert!(!text.contains("builder"), "plain password written");
    assert!(run(&["-D", f, "carol"]).status.success());
    let text = std::fs::read_to_string(&file).expect("read passwd");
    assert!(!text.contains("carol:"), "{text}");
    let missing = run(&["-D", f, "nobody"]);
    assert!(!missing.status.success());
}

const ACL: &str = "\
# anonymous clients: nothing but the public feed
topic read public/#

user alice
topic readwrite alice/#
topic read public/#
topic deny public/secret
topic write inbox/+

pattern readwrite clients/%c/#
pattern read users/%u/#
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_file_limits_publish_subscribe_and_delivery() {
    skip_on_mosquitto!("promptmq's flags");
    let dir = temp_dir("acl");
    let (passwd, acl) = auth_files(&dir, &["alice", "root"], &format!("{ACL}\nuser root\ntopic readwrite #\n"));
    let broker = auth_opts(&passwd, &acl).start().await;
    let port = broker.port();
    let (mut alice, _) = Raw::connect5_ok(port, login5("alice-1", Some(("alice", "pw")))).await;
    let (mut root, _) = Raw::connect5_ok(port, login5("root-1", Some(("root", "pw")))).await;
    root.sub5(1, "#", QoS::AtLeastOnce).await;

    // Subscribe: covered filters granted, the rest refused with 0x80 [MQTT-3.9.3-1].
    let a = alice
        .subscribe5(
            1,
            vec![
                filter5("alice/#", QoS::AtLeastOnce),
                filter5("bob/#", QoS::AtLeastOnce),
                filter5("public/#", QoS::AtLeastOnce),
                filter5("clients/alice-1/+", QoS::AtLeastOnce),
                filter5("clients/other/+", QoS::AtLeastOnce),
                filter5("users/alice/x", QoS::AtLeastOnce),
                filter5("#", QoS::AtLeastOnce),
            ],
            None,
        )
        .await;
    let codes: Vec<u8> = a.return_codes.iter().map(|c| *c as u8).collect();
    assert_eq!(codes, vec![1, 0x80, 1, 1, 0x80, 1, 0x80], "{:?}", a.return_codes);

    // Publish: allowed topics flow; a refused QoS 1 publish gets 0x87 and goes nowhere.
    let mut p = v5::Publish::new("bob/secret", QoS::AtLeastOnce, "no");
    p.pkid = 10;
    assert_eq!(alice.publish5_complete(&p).await, 0x87, "PUBACK Not authorized");
    let mut p = v5::Publish::new("inbox/bob", QoS::AtLeastOnce, "hi bob");
    p.pkid = 11;
    assert_eq!(alice.publish5_complete(&p).await, 0x00);
    let got = root.recv().await;
    match got.v5() {
        v5::Packet::Publish(p) => assert_eq!(p.topic, "inbox/bob", "bob/secret must not have been delivered"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }

    // Delivery: alice's public/# overlaps a deny rule, so each message is checked: she
    // reads public/news but not public/secret.
    let (mut root_pub, _) = Raw::connect5_ok(port, login5("root-2", Some(("root", "pw")))).await;
    for (pkid, topic) in [(2, "public/secret"), (3, "public/news")] {
        let mut p = v5::Publish::new(topic, QoS::AtLeastOnce, "extra");
        p.pkid = pkid;
        assert_eq!(root_pub.publish5_complete(&p).await, 0x00);
    }
    match alice.recv().await.v5() {
        v5::Packet::Publish(p) => assert_eq!(p.topic, "public/news"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert_eq!(alice.read_frame(Duration::from_millis(300)).await.err(), Some(ReadError::Timeout), "public/secret");

    // Anonymous clients get the top-of-file rules only.
    let (mut anon, _) = Raw::connect5_ok(port, login5("anon-1", None)).await;
    let a =
        anon.subscribe5(1, vec![filter5("public/#", QoS::AtMostOnce), filter5("alice/#", QoS::AtMostOnce)], None).await;
    let codes: Vec<u8> = a.return_codes.iter().map(|c| *c as u8).collect();
    assert_eq!(codes, vec![0, 0x80]);
}

/// Without a password file nothing vouches for a user name, so it must not select a
/// `user` block: the client gets the anonymous rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_user_name_gets_anonymous_rules() {
    skip_on_mosquitto!("promptmq's flags");
    let dir = temp_dir("unverified");
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "topic read public/#
user admin
topic readwrite #
",
    )
    .expect("write acl");
    let broker = BrokerOpts::new().extra_args(&["--acl-file", acl.to_str().expect("utf-8")]).start().await;
    let (mut c, _) = Raw::connect5_ok(broker.port(), login5("claims-admin", Some(("admin", "anything")))).await;
    let a = c.subscribe5(1, vec![filter5("#", QoS::AtMostOnce), filter5("public/x", QoS::AtMostOnce)], None).await;
    assert_eq!(a.return_codes.iter().map(|c| *c as u8).collect::<Vec<_>>(), vec![0x80, 0]);
}

/// The Eclipse Paho interoperability suite's `test_subscribe_failure`: everything allowed
/// but `test/nosubscribe`, refused with 0x80 in both protocol versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_nosubscribe_topic_is_refused_in_both_versions() {
    skip_on_mosquitto!("promptmq's flags");
    let dir = temp_dir("paho");
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite #\ntopic deny test/nosubscribe\n").expect("write acl");
    let broker = BrokerOpts::new().extra_args(&["--acl-file", acl.to_str().expect("utf-8")]).start().await;
    let (mut c5, _) = Raw::connect5_ok(broker.port(), connect5("paho5", true)).await;
    let a = c5.subscribe5(1, vec![filter5("test/nosubscribe", QoS::ExactlyOnce)], None).await;
    assert_eq!(a.return_codes.iter().map(|c| *c as u8).collect::<Vec<_>>(), vec![0x80]);
    c5.sub5(2, "test/other", QoS::ExactlyOnce).await;
    let (mut c4, _) = Raw::connect4_ok(broker.port(), "paho4", true).await;
    let a = c4.subscribe4(1, "test/nosubscribe", QoS::ExactlyOnce).await;
    assert_eq!(a.return_codes, vec![mqttbytes::v4::SubscribeReasonCode::Failure]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_passwords_and_acl_without_dropping_connections() {
    skip_on_mosquitto!("promptmq's SIGHUP");
    let dir = temp_dir("hup");
    let (passwd, acl) = auth_files(&dir, &["alice"], "user alice\ntopic readwrite alice/#\n");
    let broker = auth_opts(&passwd, &acl).log_level("info").start().await;
    let port = broker.port();
    let (mut alice, _) = Raw::connect5_ok(port, login5("alice-1", Some(("alice", "pw")))).await;
    alice.sub5(1, "alice/#", QoS::AtLeastOnce).await;
    let a = alice.subscribe5(2, vec![filter5("extra/#", QoS::AtLeastOnce)], None).await;
    assert_eq!(a.return_codes.iter().map(|c| *c as u8).collect::<Vec<_>>(), vec![0x80]);
    assert_eq!(connack_code(port, login5("dave-1", Some(("dave", "pw2")))).await, 0x86);

    mosquitto_passwd(&passwd, "dave", "pw2");
    std::fs::write(&acl, "user alice\ntopic readwrite alice/#\ntopic read extra/#\nuser dave\ntopic readwrite #\n")
        .expect("write acl");
    broker.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !broker.log_text().contains("SIGHUP: reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload logged:\n{}", broker.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new user can log in; alice's connection survived and works.
    let (mut dave, _) = Raw::connect5_ok(port, login5("dave-1", Some(("dave", "pw2")))).await;
    let mut p = v5::Publish::new("alice/hello", QoS::AtLeastOnce, "from dave");
    p.pkid = 1;
    assert_eq!(dave.publish5_complete(&p).await, 0x00);
    match alice.recv().await.v5() {
        v5::Packet::Publish(p) => assert_eq!(p.topic, "alice/hello"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // New rules apply from the next CONNECT on.
    let (mut alice2, _) = Raw::connect5_ok(port, login5("alice-2", Some(("alice", "pw")))).await;
    alice2.sub5(1, "extra/#", QoS::AtLeastOnce).await;

    // A broken file is refused and the previous rules stay.
    std::fs::write(&acl, "user alice\ntopic sometimes alice/#\n").expect("write acl");
    broker.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !broker.log_text().contains("previous version kept") {
        assert!(std::time::Instant::now() < deadline, "no reload error logged:\n{}", broker.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut alice3, _) = Raw::connect5_ok(port, login5("alice-3", Some(("alice", "pw")))).await;
    alice3.sub5(1, "extra/#", QoS::AtLeastOnce).await;
}

/// What waits in a session's queue is checked against the rules of the client that finally
/// receives it: here the ACL changes (SIGHUP) while alice is offline with messages queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_are_checked_when_they_are_delivered() {
    skip_on_mosquitto!("promptmq's SIGHUP");
    let dir = temp_dir("queued");
    let rules = |alice: &str| format!("user root\ntopic readwrite #\nuser alice\n{alice}");
    let (passwd, acl) = auth_files(&dir, &["alice", "root"], &rules("topic readwrite alice/#\n"));
    let broker = auth_opts(&passwd, &acl).log_level("info").start().await;
    let port = broker.port();
    let mut c = connect5("alice-q", false);
    c.set_login("alice", "pw");
    c.properties = Some(v5::ConnectProperties {
        session_expiry_interval: Some(600),
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    });
    let (mut alice, _) = Raw::connect5_ok(port, c.clone()).await;
    alice.sub5(1, "alice/#", QoS::AtLeastOnce).await;
    alice.disconnect5(v5::DisconnectReasonCode::NormalDisconnection).await;
    let (mut root, _) = Raw::connect5_ok(port, login5("root-q", Some(("root", "pw")))).await;
    for (pkid, topic) in [(1, "alice/private/x"), (2, "alice/ok")] {
        assert_eq!(root.publish5_complete(&publish5(topic, QoS::AtLeastOnce, pkid, false, b"m")).await, 0);
    }
    std::fs::write(&acl, rules("topic readwrite alice/#\ntopic deny alice/private/#\n")).expect("write acl");
    broker.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !broker.log_text().contains("SIGHUP: reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut alice, ack) = Raw::connect5_ok(port, c).await;
    assert!(ack.session_present);
    match alice.recv().await.v5() {
        v5::Packet::Publish(p) => assert_eq!(p.topic, "alice/ok", "alice/private/x was queued before the deny rule"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert_eq!(alice.read_frame(Duration::from_millis(500)).await.err(), Some(ReadError::Timeout));
}

/// Password hashes are slow on purpose (here PBKDF2 with 20,000 rounds: tens of milliseconds
/// in a release build, a good part of a second in this debug one). They are checked off the
/// cores, so while clients log in, a client already connected to the same (only) core is
/// answered at once, and the logins all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_password_checks_do_not_stall_the_core() {
    skip_on_mosquitto!("promptmq's flags");
    let dir = temp_dir("slowhash");
    let passwd = dir.join("passwd");
    let _ = std::fs::remove_file(&passwd);
    let status = Command::new(env!("CARGO_BIN_EXE_promptmq"))
        .args(["passwd", "-c", "-b", "-I", "20000"])
        .arg(&passwd)
        .args(["slow", "pw"])
        .status()
        .expect("run promptmq passwd");
    assert!(status.success());
    let broker = BrokerOpts::new()
        .cores(1)
        .extra_args(&["--password-file", passwd.to_str().expect("utf-8"), "--allow-anonymous", "true"])
        .start()
        .await;
    let port = broker.port();
    pipelined_login_then_close(port).await;
    // Anonymous: connects without a hash.
    let (mut idle, ack) = Raw::connect5(port, login5("bystander", None)).await;
    assert_eq!(ack.code as u8, 0);

    // One login alone: how long a check takes on this machine.
    let started = std::time::Instant::now();
    assert_eq!(connack_code(port, login5("slow-0", Some(("slow", "pw")))).await, 0);
    let one_login = started.elapsed();

    // Four at once, while the bystander pings the core.
    let logins: Vec<_> = (1..=4)
        .map(|i| {
            tokio::spawn(async move { connack_code(port, login5(&format!("slow-{i}"), Some(("slow", "pw")))).await })
        })
        .collect();
    let mut worst = Duration::ZERO;
    while logins.iter().any(|l| !l.is_finished()) {
        let sent = std::time::Instant::now();
        idle.send_bytes(&[0xC0, 0x00]).await.expect("PINGREQ");
        idle.expect(PINGRESP).await;
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for l in logins {
        assert_eq!(l.await.expect("login task"), 0, "a correct password was refused");
    }
    assert!(
        worst < one_login / 2,
        "a PINGREQ waited {worst:?} while passwords were checked (one check takes {one_login:?}): the core was blocked"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that sends CONNECT (with a password that takes a while to check), a PUBLISH and
/// DISCONNECT in one write and closes at once: the PUBLISH is still delivered, once the login
/// is accepted, as it would be with the password checked on the spot.
async fn pipelined_login_then_close(port: u16) {
    let (mut sub, _) = Raw::connect5_ok(port, connect5("pipe-sub", true)).await;
    sub.sub5(1, "pipe/t", QoS::AtMostOnce).await;
    let mut burst = bytes::BytesMut::new();
    login5("pipe-pub", Some(("slow", "pw"))).write(&mut burst).expect("encode CONNECT");
    publish5("pipe/t", QoS::AtMostOnce, 0, false, b"behind the login").write(&mut burst).expect("encode PUBLISH");
    v5::Disconnect::new().write(&mut burst).expect("encode DISCONNECT");
    let mut publ = Raw::open(port, "pipe-pub").await;
    publ.send_bytes(&burst).await.expect("send");
    drop(publ);
    match sub.recv().await.v5() {
        v5::Packet::Publish(p) => assert_eq!(p.payload, &b"behind the login"[..]),
        other => panic!("expected the pipelined PUBLISH, got {other:?}"),
    }
    // CONNECT with a will, then the connection is gone before the login is checked: the login
    // is still completed, so the connection was established and then lost, and the will goes
    // out [MQTT-3.1.2-8].
    let mut c = login5("pipe-will", Some(("slow", "pw")));
    c.last_will = Some(v5::LastWill::new("pipe/t", b"gone".to_vec(), QoS::AtMostOnce, false));
    let mut burst = bytes::BytesMut::new();
    c.write(&mut burst).expect("encode CONNECT");
    let mut willing = Raw::open(port, "pipe-will").await;
    willing.send_bytes(&burst).await.expect("send");
    drop(willing);
    match sub.recv().await.v5() {
        v5::Packet::Publish(p) => assert_eq!(p.payload, &b"gone"[..]),
        other => panic!("expected the will, got {other:?}"),
    }
}
