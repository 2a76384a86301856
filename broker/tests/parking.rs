//! Idle connections leave their tasks ("parking", see `PARK_SWEEP` in `server.rs`): a
//! connection silent after its CONNECT, or for a sweep interval later, waits in its core's
//! epoll set, and gets a task back when it sends something or the broker has something for
//! it. What a client sees must not change: these tests park connections (checked through
//! `promptmq_parked_connections`) and then use every way back.
//!
//! Only in the io_uring build (the Linux default): tokio keeps every connection on its task.
#![cfg(all(target_os = "linux", feature = "uring", not(feature = "tokio")))]

mod common;

use std::time::{Duration, Instant};

use common::*;
use mqttbytes::v5;

struct Scrape {
    port: u16,
}

impl Scrape {
    fn value(&self, name: &str) -> f64 {
        let (status, body) = http_get(self.port, "/metrics");
        assert_eq!(status, 200, "{body}");
        sample(&body, name).unwrap_or_else(|| panic!("no {name} in\n{body}"))
    }

    /// Waits until `name` satisfies `ok` (gauges are refreshed every 50 ms to 1 s).
    async fn until(&self, name: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.value(name);
            if ok(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{name} = {v}, expected {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_are_served_as_if_they_never_left() {
    skip_on_mosquitto!("promptmq's parking and its gauge");
    let metrics_port = free_port();
    let bind = format!("127.0.0.1:{metrics_port}");
    let broker = BrokerOpts::new().extra_args(&["--metrics-enabled", "true", "--metrics-bind", &bind]).start().await;
    let m = Scrape { port: metrics_port };
    let port = broker.port();

    // Silent after CONNACK: parked at once.
    let (mut sub, _) = Raw::connect5_ok(port, connect5("park-sub", true)).await;
    let (mut publ, _) = Raw::connect5_ok(port, connect5("park-pub", true)).await;
    let (mut pinger, _) = Raw::connect5_ok(port, connect5("park-ping", true)).await;
    let mut idle = Vec::new();
    for i in 0..20 {
        idle.push(Raw::connect5_ok(port, connect5(&format!("park-idle-{i}"), true)).await.0);
    }
    m.until("promptmq_parked_connections", ">= 23", |v| v >= 23.0).await;

    // A subscription (a read that wakes it), then back to parked a sweep or two later.
    sub.sub5(1, "park/t", QoS::AtLeastOnce).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    m.until("promptmq_parked_connections", ">= 23 again", |v| v >= 23.0).await;

    // A parked publisher is read, and a parked subscriber is written to.
    let mut p = v5::Publish::new("park/t", QoS::AtLeastOnce, "hello");
    p.pkid = 1;
    assert_eq!(publ.publish5_complete(&p).await, 0x00, "PUBACK to a parked publisher");
    let got = sub.expect_publish5().await;
    assert_eq!((got.topic.as_ref(), got.payload.as_ref()), (&b"park/t"[..], &b"hello"[..]));
    sub.ack5(&got).await;

    // [MQTT-3.12.4-1] a PINGREQ gets its PINGRESP.
    pinger.send_bytes(&[0xC0, 0x00]).await.expect("PINGREQ");
    pinger.expect(PINGRESP).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    m.until("promptmq_parked_connections", "all 23 back", |v| v >= 23.0).await;

    // The broker closes a parked connection whose keep-alive ran out [MQTT-3.1.2-22] ...
    let mut short = connect5("park-short", true);
    short.keep_alive = 2;
    let (mut short, _) = Raw::connect5_ok(port, short).await;
    m.until("promptmq_parked_connections", ">= 24", |v| v >= 24.0).await;
    short.expect_closed(Duration::from_secs(6)).await;

    // ... and notices parked clients that went away: 10 of the 23 left (the short one is
    // gone too), and the gauges (refreshed once a second) come down to exactly the rest.
    idle.truncate(10);
    m.until("promptmq_connections", "13 connections left", |v| v == 13.0).await;
    m.until("promptmq_parked_connections", "the 13 left parked, the 10 gone not counted", |v| v == 13.0).await;
    drop(idle);
}
