//! `promptmq-bench`: a load generator for any MQTT 3.1.1/5.0 broker reachable over TCP.
//!
//! DESIGN: its own lean client (`mqtt`) on one tokio multi-thread runtime. Publishers encode
//! many PUBLISHes into one reused buffer per write; subscribers read 256 KiB at a time, take
//! one clock reading per read and stamp-parse every PUBLISH in it. Latency is end to end:
//! the send time is in the payload and publishers and subscribers share one process clock
//! (`stamp`). Per-publisher sequence numbers give loss, duplicates and reordering at every
//! subscriber (`stamp::SeqTrack`). It does not depend on the `promptmq` crate: it measures
//! other brokers just the same.

pub mod cli;
pub mod conn;
pub mod conns;
pub mod engine;
pub mod mqtt;
pub mod report;
pub mod stamp;

use std::net::SocketAddr;

use anyhow::{Context, Result};

pub use cli::{Options, Scenario};
pub use report::Report;

/// Resolves the broker address and runs the scenario.
pub async fn run(opts: &Options) -> Result<Report> {
    opts.validate()?;
    let addr: SocketAddr = tokio::net::lookup_host((opts.host.as_str(), opts.port))
        .await
        .with_context(|| format!("resolve {}:{}", opts.host, opts.port))?
        .next()
        .with_context(|| format!("{} resolves to no address", opts.host))?;
    stamp::now_ns(); // fix the clock origin before anything is stamped
    match opts.scenario {
        Scenario::Conns => conns::run(opts, addr).await,
        _ => engine::run(opts, addr).await,
    }
}

/// Raises the soft open-files limit to the hard limit (for thousands of connections).
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: rl is a valid, writable rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
            return None;
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            // SAFETY: rl is a valid rlimit with cur <= max.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
        }
        // SAFETY: as above.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        Some(rl.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}
