//! Offline operator tools over a data directory: `promptmq wal stats` and
//! `promptmq wal dump`. They only read (safe next to a running broker; what they show is
//! what was written, synced or not).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use crate::persist::{self, Record, WallClock};
use crate::storage::StorageError;

fn shard_dirs(data_dir: &Path) -> Vec<(usize, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("wal")) else { return Vec::new() };
    let mut v: Vec<(usize, std::path::PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.strip_prefix("shard-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    v
}

fn clock() -> (WallClock, Instant) {
    let now = Instant::now();
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    (WallClock { anchor: now, anchor_unix_ms: ms }, now)
}

fn time(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_string(), utc)
}

/// Unix milliseconds as RFC 3339 UTC (days to civil date: the proleptic Gregorian
/// calendar, computed in 400-year eras).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, ms % 1000)
}

#[derive(Default)]
struct TopicStats {
    records: u64,
    bytes: u64,
}

/// Segments, bytes, records per topic, sessions, oldest and newest timestamps, per shard.
pub fn wal_stats(data_dir: &Path, top: usize, out: &mut impl Write) -> Result<(), StorageError> {
    let (clock, now) = clock();
    let shards = shard_dirs(data_dir);
    let io = |e| StorageError::Dir { path: data_dir.to_path_buf(), source: e };
    if shards.is_empty() {
        writeln!(out, "no WAL under {}", data_dir.join("wal").display()).map_err(io)?;
        return Ok(());
    }
    for (shard, dir) in shards {
        let (mut segments, mut bytes, mut records) = (0u64, 0u64, 0u64);
        let (mut oldest, mut newest): (Option<u64>, Option<u64>) = (None, None);
        let (mut sessions, mut damaged) = (0u64, Vec::new());
        let mut topics: BTreeMap<Bytes, TopicStats> = BTreeMap::new();
        promptmq_wal::inspect(
            &dir,
            |info, damage| {
                segments += 1;
                bytes += info.used_bytes;
                if let Some(d) = damage {
                    damaged.push(format!("{}: {d}", info.path.display()));
                }
            },
            |r| {
                records += 1;
                oldest = Some(oldest.map_or(r.timestamp_ms, |o| o.min(r.timestamp_ms)));
                newest = Some(newest.map_or(r.timestamp_ms, |n| n.max(r.timestamp_ms)));
                match persist::decode_record(&Bytes::copy_from_slice(r.body), &clock, now) {
                    Ok(Record::Message(m, ..)) => {
                        let t = topics.entry(m.topic.clone()).or_default();
                        t.records += 1;
                        t.bytes += m.payload.len() as u64;
                    }
                    Ok(Record::Session(_) | Record::SessionEnd(_) | Record::Released(..) | Record::Delivery(..)) => {
                        sessions += 1
                    }
                    Err(_) => {}
                }
            },
        )?;
        let w = &mut *out;
        writeln!(w, "shard {shard} ({})", dir.display()).map_err(io)?;
        writeln!(w, "  segments {segments}, bytes used {bytes}, records {records} ({sessions} session records)")
            .map_err(io)?;
        writeln!(w, "  oldest record {}, newest record {}", time(oldest), time(newest)).map_err(io)?;
        for d in &damaged {
            writeln!(w, "  DAMAGED {d}").map_err(io)?;
        }
        let mut by_count: Vec<(&Bytes, &TopicStats)> = topics.iter().collect();
        by_count.sort_by(|a, b| b.1.records.cmp(&a.1.records).then(a.0.cmp(b.0)));
        writeln!(w, "  topics {} (top {} by records):", topics.len(), top.min(topics.len())).map_err(io)?;
        for (topic, t) in by_count.into_iter().take(top) {
            writeln!(
                w,
                "    {:>10} records {:>12} payload bytes  {}",
                t.records,
                t.bytes,
                String::from_utf8_lossy(topic)
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

/// The stored history of one topic, oldest first: one line per record.
pub fn wal_dump(data_dir: &Path, topic: &str, limit: usize, out: &mut impl Write) -> Result<(), StorageError> {
    let (clock, now) = clock();
    let io = |e| StorageError::Dir { path: data_dir.to_path_buf(), source: e };
    let mut lines: Vec<(u64, usize, String)> = Vec::new();
    for (shard, dir) in shard_dirs(data_dir) {
        promptmq_wal::inspect(
            &dir,
            |_, _| {},
            |r| {
                let Ok(Record::Message(m, ..)) = persist::decode_record(&Bytes::copy_from_slice(r.body), &clock, now)
                else {
                    return;
                };
                if m.topic != topic.as_bytes() {
                    return;
                }
                let payload = match std::str::from_utf8(&m.payload) {
                    Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
                    _ => format!("0x{}", m.payload.iter().map(|b| format!("{b:02x}")).collect::<String>()),
                };
                lines.push((
                    r.timestamp_ms,
                    shard,
                    format!(
                        "{} shard {shard} seq {} qos {} retain {} publisher {:?} payload {payload}",
                        utc(r.timestamp_ms),
                        r.seq,
                        m.qos as u8,
                        u8::from(m.retain),
                        String::from_utf8_lossy(&m.publisher)
                    ),
                ));
            },
        )?;
    }
    lines.sort_by_key(|l| (l.0, l.1));
    let skip = lines.len().saturating_sub(limit);
    for (_, _, line) in lines.into_iter().skip(skip) {
        writeln!(out, "{line}").map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formatting() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::utc(1_795_740_027_105), "2026-11-27T00:40:27.105Z");
    }
}
