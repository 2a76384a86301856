//! PromptMQ: an MQTT 3.1.1 and 5.0 broker, thread-per-core.
//!
//! This crate is the broker's sans-IO core plus the `promptmq` binary that drives it on a
//! runtime. Nothing in the core touches a socket or a clock: bytes and events go in,
//! [`core::Action`]s come out.
//!
//! Where to start reading:
//! - [`codec`]: MQTT packets to and from bytes, with every validity check.
//! - [`core`]: one core's state machine: connections, sessions, and the shard of topics it
//!   owns (subscriptions, retained messages, fan-out). Cores exchange [`core::CoreMsg`]s.
//! - [`session`]: per-client state and the outbound QoS flow.
//! - [`router`]: the subscription trie and the retained-message trie of a shard.
//! - [`server`]: the driver that runs one [`core::Core`] per thread on the runtime.
//!
//! Invariants: a client id lives on exactly one core at a time ([`registry`]); a topic's
//! messages are ordered by exactly one shard (`core::shard_of`); every queue is bounded
//! and counts its drops ([`stats`]).

pub mod access;
pub mod affinity;
pub mod codec;
pub mod config;
pub mod core;
pub mod listeners;
pub mod local_signal;
pub mod message;
pub mod metrics;
pub mod passwd;
pub mod persist;
pub mod registry;
pub mod router;
pub mod server;
pub mod session;
#[cfg(unix)]
pub mod signals;
pub mod stats;
pub mod storage;
pub mod tools;
pub mod topic;

/// `VERSION (git COMMIT)` as printed by `--version` and the startup line.
pub const VERSION_STRING: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PROMPTMQ_GIT_COMMIT"), ")");
