//! PromptMQ's write-ahead log: one log per shard, in fixed-size preallocated segments,
//! written in 4 KiB-aligned blocks with `O_DIRECT`, checksummed per record, with group
//! commit. It knows nothing of MQTT or of any async runtime.
//!
//! Start reading at [`format`] (the on-disk format, byte by byte), then [`log::Log`] (append,
//! sync, recovery, retention) and [`writer`] (the thread that runs a log with a sync mode).
//!
//! Invariants:
//! - Sequence numbers are contiguous within a log, starting at 1; a record is durable when
//!   [`log::Log::durable_seq`] (or the writer's durable mark) has reached it, never before.
//! - Every write is block-aligned in memory, offset and length; the last block of a write is
//!   zero-padded, so "8 zero bytes" marks the end of the data.
//! - Recovery never refuses to open because of damaged data: it cuts a torn tail, sets a
//!   damaged segment aside (keeping its intact prefix), and reports what it dropped.

pub mod format;
mod io;
pub mod log;
pub mod writer;

pub use format::RecordRef;
pub use log::{inspect, Log, Options, RecoveryReport, SegmentInfo};

use std::path::{Path, PathBuf};

/// Errors of the log. Data damage is not an error (see [`RecoveryReport`]); these are.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot {op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("record of {len} bytes exceeds the maximum of {max}")]
    RecordTooLarge { len: usize, max: usize },
    #[error("invalid WAL configuration: {0}")]
    Config(String),
}

impl WalError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> WalError {
        WalError::Io { op, path: path.to_path_buf(), source }
    }

    /// Whether the error is the disk being full (the caller may retry once space returns).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}
