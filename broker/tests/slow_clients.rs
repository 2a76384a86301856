//! Clients that do not read: the broker stops reading from them instead of buffering their
//! replies without bound, and closes a connection whose writes cannot drain.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

// A client that floods PINGREQs and never reads its PINGRESPs. Once the replies queued for
// it pass --max-write-buffer, the broker stops reading its socket, so the client's own
// writes stall (TCP flow control) long before it could push 200 MB through; meanwhile
// other clients are served normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_throttled_not_buffered() {
    skip_on_mosquitto!("checks promptmq's --max-write-buffer");
    let broker = BrokerOpts::new().cores(2).extra_args(&["--max-write-buffer", "65536"]).start().await;
    let mut by = Bystander::connect(broker.port(), "slow-bystander").await;
    let mut s = tokio::net::TcpStream::connect(broker.addr()).await.expect("connect");
    let mut connect = bytes::BytesMut::new();
    let mut c = connect4("never-reads", true);
    c.keep_alive = 600;
    c.write(&mut connect).expect("encode");
    s.write_all(&connect).await.expect("CONNECT");
    let chunk: Vec<u8> = [0xC0u8, 0x00].repeat(32 * 1024); // 32k PINGREQs, 64 KiB
    let limit = 200 * 1024 * 1024;
    let mut written = 0usize;
    let started = Instant::now();
    let stalled = loop {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
            Err(_) => break true,
            Ok(Err(e)) => panic!("write failed after {written} bytes: {e}"),
            Ok(Ok(())) => written += chunk.len(),
        }
        if written >= limit {
            break false;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "neither stalled nor done");
    };
    assert!(stalled, "the broker kept reading {written} bytes from a client that reads nothing");
    by.check().await;
}
