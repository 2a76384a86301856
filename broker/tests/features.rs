//! A build without the `tls` and `websocket` cargo features (`cargo test -p promptmq
//! --no-default-features --features uring --test features`, run by `.ci/run`) serves plain
//! MQTT and refuses, with the reason, a configuration that asks for what it left out.
#![cfg(not(any(feature = "tls", feature = "websocket")))]

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_without_tls_or_websocket_refuses_their_listeners_and_serves_plain_mqtt() {
    for (args, what) in [
        (vec!["--tls-cert", "c.pem", "--tls-key", "k.pem"], "no TLS (cargo feature `tls`)"),
        (vec!["--ws-bind", "127.0.0.1:0"], "no WebSocket (cargo feature `websocket`)"),
    ] {
        let data = std::env::temp_dir().join(format!("promptmq-features-{}", std::process::id()));
        let out = Command::new(env!("CARGO_BIN_EXE_promptmq"))
            .args(["--bind", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(&args)
            .output()
            .expect("run promptmq");
        let _ = std::fs::remove_dir_all(&data);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(what), "{args:?}: {err}");
    }
    let broker = BrokerOpts::new().start().await;
    let mut c = Client4::connect(broker.port(), "lean", true).await;
    c.subscribe("lean/t", rumqttc::QoS::AtLeastOnce).await;
    c.publish("lean/t", rumqttc::QoS::AtLeastOnce, false, "plain").await;
    assert_eq!(c.recv().await.payload, "plain");
}
