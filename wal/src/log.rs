//! One shard's log: segments on disk, the active segment's write buffer, recovery and
//! retention. Synchronous and single-threaded; [`crate::writer`] runs it on its own thread.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::format::{self, RecordRef, Scan, SegmentHeader, BLOCK, HEADER_LEN};
use crate::io;
use crate::WalError;

/// How a log is laid out on disk.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes per segment file, header included; a multiple of 4096, at least 64 KiB.
    pub segment_size: u64,
    /// Bypass the page cache where possible (see [`io::open_segment`]).
    pub direct_io: bool,
    /// Size of the in-memory write buffer; appends beyond it are written out (not synced).
    pub buffer_size: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { segment_size: 64 * 1024 * 1024, direct_io: true, buffer_size: 1024 * 1024 }
    }
}

/// What is known of a segment without reading it again.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub first_seq: u64,
    /// Sequence number of the last record, `first_seq - 1` when empty.
    pub last_seq: u64,
    pub oldest_ms: Option<u64>,
    pub newest_ms: Option<u64>,
    /// Bytes of header and records (not the preallocated rest).
    pub used_bytes: u64,
}

impl SegmentInfo {
    pub fn record_count(&self) -> u64 {
        self.last_seq + 1 - self.first_seq
    }
}

/// What recovery found and did; meant to be logged by the caller.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    /// The torn tail cut from the last segment: (segment, offset, reason).
    pub torn_tail: Option<(PathBuf, u64, &'static str)>,
    /// Segments set aside: (original path, where it went, what was lost).
    pub quarantined: Vec<(PathBuf, PathBuf, String)>,
    /// Sequence numbers missing between segments (first, last).
    pub gaps: Vec<(u64, u64)>,
    /// Whether direct I/O is in effect for the active segment.
    pub direct_io: bool,
}

/// A buffer whose start is block-aligned, as O_DIRECT requires of memory too. Safe code:
/// the backing vector is over-allocated by one block and never reallocated.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    cap: usize,
}

impl AlignedBuf {
    fn new(cap: usize) -> AlignedBuf {
        let raw = vec![0u8; cap + BLOCK];
        let start = (BLOCK - raw.as_ptr() as usize % BLOCK) % BLOCK;
        AlignedBuf { raw, start, cap }
    }
    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.cap]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.cap]
    }
}

struct Active {
    file: File,
    info: SegmentInfo,
    direct: bool,
    /// File offset of `buf[0]`; always block-aligned.
    buf_offset: u64,
    /// Bytes of `buf` holding records (the rest of the buffer is zero).
    buf_len: usize,
    /// Whether `buf` holds bytes not yet written to the file.
    dirty: bool,
    /// Whether the file has writes not yet synced.
    unsynced: bool,
}

/// One shard's write-ahead log.
pub struct Log {
    dir: PathBuf,
    shard: u32,
    opts: Options,
    closed: Vec<SegmentInfo>,
    active: Active,
    buf: AlignedBuf,
    next_seq: u64,
    durable_seq: u64,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalError::io("list", dir, e))? {
        let entry = entry.map_err(|e| WalError::io("list", dir, e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.ends_with(".wal.tmp") {
            // A segment whose creation a crash interrupted: it never held a record.
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(stem) = name.strip_suffix(".wal") else { continue };
        if let Ok(first) = stem.parse::<u64>() {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Scans a segment's bytes from the header on. Returns the info, the offset where valid
/// data ends and, if it ends on damage, why.
fn scan_segment(
    path: &Path,
    data: &[u8],
    header: &SegmentHeader,
    on_record: &mut dyn FnMut(RecordRef<'_>),
) -> (SegmentInfo, usize, Option<&'static str>) {
    let mut info = SegmentInfo {
        path: path.to_path_buf(),
        first_seq: header.first_seq,
        last_seq: header.first_seq.wrapping_sub(1),
        oldest_ms: None,
        newest_ms: None,
        used_bytes: HEADER_LEN as u64,
    };
    let mut pos = HEADER_LEN;
    let mut expected = header.first_seq;
    loop {
        match format::scan_record(data.get(pos..).unwrap_or(&[]), Some(expected)) {
            Scan::Record(r) => {
                on_record(r);
                info.last_seq = r.seq;
                info.oldest_ms.get_or_insert(r.timestamp_ms);
                info.newest_ms = Some(r.timestamp_ms);
                pos += format::record_len(r.body.len());
                expected += 1;
            }
            Scan::End => break,
            Scan::Invalid(why) => {
                info.used_bytes = pos as u64;
                return (info, pos, Some(why));
            }
        }
    }
    info.used_bytes = pos as u64;
    (info, pos, None)
}

/// Reads a log directory without changing anything (no truncation, no quarantine): for
/// operator tools that may run next to a live broker. Calls `on_segment` for each segment
/// (with the reason its scan stopped early, if it did) and `on_record` for each intact
/// record, oldest first.
pub fn inspect(
    dir: &Path,
    mut on_segment: impl FnMut(&SegmentInfo, Option<&str>),
    mut on_record: impl FnMut(RecordRef<'_>),
) -> Result<(), WalError> {
    for (_, path) in list_segments_readonly(dir)? {
        let data = fs::read(&path).map_err(|e| WalError::io("read", &path, e))?;
        match SegmentHeader::decode(&data) {
            Ok(header) => {
                let (info, _, damage) = scan_segment(&path, &data, &header, &mut on_record);
                on_segment(&info, damage);
            }
            Err(e) => {
                let info = SegmentInfo {
                    path: path.clone(),
                    first_seq: 0,
                    last_seq: 0,
                    oldest_ms: None,
                    newest_ms: None,
                    used_bytes: 0,
                };
                on_segment(&info, Some(&format!("unreadable header: {e}")));
            }
        }
    }
    Ok(())
}

fn list_segments_readonly(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalError::io("list", dir, e))? {
        let path = entry.map_err(|e| WalError::io("list", dir, e))?.path();
        let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

impl Log {
    /// Opens (or creates) the log in `dir`, replaying every intact record to `on_record` in
    /// sequence order. Never fails because of damaged data: a torn tail is cut, a damaged
    /// segment is set aside and its intact prefix kept; all of it is in the report. Fails
    /// only on I/O errors (permissions, full disk while creating the first segment, ...).
    pub fn open(
        dir: &Path,
        shard: u32,
        opts: Options,
        now_ms: u64,
        mut on_record: impl FnMut(RecordRef<'_>),
    ) -> Result<(Log, RecoveryReport), WalError> {
        if !opts.segment_size.is_multiple_of(BLOCK as u64) || opts.segment_size < 16 * BLOCK as u64 {
            return Err(WalError::Config(format!(
                "segment size {} must be a multiple of 4096 and at least 65536",
                opts.segment_size
            )));
        }
        fs::create_dir_all(dir).map_err(|e| WalError::io("create directory", dir, e))?;
        let mut report = RecoveryReport::default();
        let files = list_segments(dir)?;
        let mut infos: Vec<SegmentInfo> = Vec::new();
        let mut tail: Option<(SegmentInfo, Vec<u8>, usize)> = None;
        let count = files.len();
        for (i, (_, path)) in files.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let data = fs::read(&path).map_err(|e| WalError::io("read", &path, e))?;
            let header = match SegmentHeader::decode(&data) {
                Ok(h) => h,
                Err(e) => {
                    let aside = quarantine(dir, &path)?;
                    report.quarantined.push((path, aside, format!("unreadable header ({e}); all its records")));
                    continue;
                }
            };
            if let Some(prev) = infos.last() {
                if header.first_seq > prev.last_seq + 1 {
                    report.gaps.push((prev.last_seq + 1, header.first_seq - 1));
                }
            }
            let (info, end, damage) = scan_segment(&path, &data, &header, &mut on_record);
            report.records += info.record_count();
            match damage {
                Some(why) if is_last => {
                    report.torn_tail = Some((path.clone(), end as u64, why));
                    tail = Some((info, data, end));
                }
                Some(why) => {
                    // Damage in the middle of the log: keep the intact prefix in a rewritten
                    // segment, set the damaged file aside for inspection.
                    let aside = quarantine(dir, &path)?;
                    rewrite_prefix(&path, &header, &data[..end], opts.segment_size)?;
                    report.quarantined.push((
                        path,
                        aside,
                        format!("{why} at offset {end}: records after seq {} in this segment", info.last_seq),
                    ));
                    infos.push(info);
                }
                None if is_last => tail = Some((info, data, end)),
                None => infos.push(info),
            }
        }
        report.segments = infos.len() + usize::from(tail.is_some());
        let next_seq = tail.as_ref().map(|t| t.0.last_seq + 1).or(infos.last().map(|i| i.last_seq + 1)).unwrap_or(1);
        let mut buf = AlignedBuf::new(opts.buffer_size.max(2 * BLOCK).next_multiple_of(BLOCK));
        let active = match tail {
            Some((info, data, end)) => {
                let (file, direct) = io::open_segment(&info.path, false, opts.direct_io)
                    .map_err(|e| WalError::io("open", &info.path, e))?;
                let buf_offset = (end / BLOCK * BLOCK) as u64;
                let keep = end % BLOCK;
                buf.bytes_mut()[..keep].copy_from_slice(&data[buf_offset as usize..end]);
                let mut active =
                    Active { file, info, direct, buf_offset, buf_len: keep, dirty: false, unsynced: false };
                // Zero whatever torn bytes follow, so a later recovery cannot mistake stale
                // data behind new records for records.
                // The block holding the end keeps its intact records (rewritten from the
                // buffer, zeros after them); the blocks after it are zeroed.
                let last_nonzero = data.iter().rposition(|&b| b != 0).unwrap_or(0);
                if last_nonzero >= end {
                    let path = &active.info.path;
                    io::write_all_at(&active.file, &buf.bytes()[..BLOCK], buf_offset)
                        .map_err(|e| WalError::io("write", path, e))?;
                    let zero_to = (last_nonzero + 1).next_multiple_of(BLOCK) as u64;
                    zero_range(&active.file, buf_offset + BLOCK as u64, zero_to)
                        .map_err(|e| WalError::io("zero", path, e))?;
                    io::sync_data(&active.file).map_err(|e| WalError::io("sync", path, e))?;
                }
                active.dirty = keep > 0;
                active
            }
            None => create_segment(dir, shard, next_seq, now_ms, &opts)?,
        };
        report.direct_io = active.direct;
        let log = Log {
            dir: dir.to_path_buf(),
            shard,
            opts,
            closed: infos,
            active,
            buf,
            next_seq,
            durable_seq: next_seq - 1,
        };
        Ok((log, report))
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Everything up to and including this sequence number is on stable storage.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closed segments, oldest first, then the active one.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.closed.iter().chain(std::iter::once(&self.active.info))
    }

    /// Reads back, in order, every record with a sequence number at or after `from_seq`
    /// that is in the files (what was written; a caller wanting only durable records syncs
    /// first). Used for a second pass at recovery and by operator tools.
    pub fn read_from(&self, from_seq: u64, mut on_record: impl FnMut(RecordRef<'_>)) -> Result<(), WalError> {
        for info in self.segments().filter(|i| i.last_seq >= from_seq && i.last_seq + 1 > i.first_seq) {
            let data = fs::read(&info.path).map_err(|e| WalError::io("read", &info.path, e))?;
            let Ok(header) = SegmentHeader::decode(&data) else { continue };
            scan_segment(&info.path, &data, &header, &mut |r| {
                if r.seq >= from_seq {
                    on_record(r);
                }
            });
        }
        Ok(())
    }

    /// Appends a record to the buffer (writing the buffer out when it is full). It is
    /// durable once [`Log::sync`] returns a sequence at or past the one returned here.
    pub fn append(&mut self, timestamp_ms: u64, flags: u16, body: &[u8], now_ms: u64) -> Result<u64, WalError> {
        let len = format::record_len(body.len());
        let max_body = self.opts.segment_size as usize - HEADER_LEN - format::RECORD_HEADER_LEN;
        if body.len() > max_body || len > self.buf.cap - BLOCK {
            return Err(WalError::RecordTooLarge { len: body.len(), max: max_body.min(self.buf.cap - BLOCK) });
        }
        let end_in_file = self.active.buf_offset + (self.active.buf_len + len) as u64;
        if end_in_file > self.opts.segment_size {
            self.roll(now_ms)?;
        }
        if self.active.buf_len + len > self.buf.cap {
            self.write_out(false)?;
        }
        let seq = self.next_seq;
        let at = self.active.buf_len;
        format::encode_record(&mut self.buf.bytes_mut()[at..at + len], seq, timestamp_ms, flags, body);
        self.active.buf_len += len;
        self.active.dirty = true;
        let info = &mut self.active.info;
        info.last_seq = seq;
        info.oldest_ms.get_or_insert(timestamp_ms);
        info.newest_ms = Some(timestamp_ms);
        info.used_bytes = self.active.buf_offset + self.active.buf_len as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Writes buffered records and syncs them (group commit: one write and one sync cover
    /// everything appended since the last call). Returns the durable sequence number.
    pub fn sync(&mut self) -> Result<u64, WalError> {
        self.write_out(true)?;
        Ok(self.durable_seq)
    }

    /// Writes buffered records to the file without syncing (mode `none`).
    pub fn write(&mut self) -> Result<(), WalError> {
        self.write_out(false)
    }

    /// Writes the buffer's blocks at their offset; with `sync`, also syncs. Keeps the partial
    /// last block in the buffer: the next write rewrites it with more records behind it.
    fn write_out(&mut self, sync: bool) -> Result<(), WalError> {
        let a = &mut self.active;
        if a.dirty {
            let blocks = a.buf_len.next_multiple_of(BLOCK);
            io::write_all_at(&a.file, &self.buf.bytes()[..blocks], a.buf_offset)
                .map_err(|e| WalError::io("write", &a.info.path, e))?;
            a.dirty = false;
            a.unsynced = true;
            let full = a.buf_len / BLOCK * BLOCK;
            if full > 0 {
                let partial = a.buf_len - full;
                let bytes = self.buf.bytes_mut();
                bytes.copy_within(full..full + partial, 0);
                bytes[partial..blocks].fill(0);
                a.buf_offset += full as u64;
                a.buf_len = partial;
            }
        }
        if sync && a.unsynced {
            io::sync_data(&a.file).map_err(|e| WalError::io("sync", &a.info.path, e))?;
            a.unsynced = false;
        }
        if !a.unsynced && !a.dirty {
            self.durable_seq = self.next_seq - 1;
        }
        Ok(())
    }

    /// Seals the active segment (synced) and starts a new one.
    fn roll(&mut self, now_ms: u64) -> Result<(), WalError> {
        self.write_out(true)?;
        let fresh = create_segment(&self.dir, self.shard, self.next_seq, now_ms, &self.opts)?;
        let old = std::mem::replace(&mut self.active, fresh);
        self.closed.push(old.info);
        self.buf.bytes_mut().fill(0);
        Ok(())
    }

    /// Deletes the closed segments whose records all come before `seq` (whole segments
    /// only; the active one is never deleted). Returns the deleted paths.
    pub fn delete_before(&mut self, seq: u64) -> Result<Vec<PathBuf>, WalError> {
        let mut deleted = Vec::new();
        while let Some(oldest) = self.closed.first() {
            if oldest.last_seq >= seq {
                break;
            }
            fs::remove_file(&oldest.path).map_err(|e| WalError::io("delete", &oldest.path, e))?;
            deleted.push(self.closed.remove(0).path);
        }
        if !deleted.is_empty() {
            io::sync_dir(&self.dir).map_err(|e| WalError::io("sync directory", &self.dir, e))?;
        }
        Ok(deleted)
    }

    /// Deletes whole closed segments, oldest first, while the oldest is older than
    /// `max_age_ms` or the log is larger than `max_bytes`, never one holding a record at or
    /// after `keep_from_seq` (data still needed). Returns the deleted paths.
    pub fn enforce_retention(
        &mut self,
        now_ms: u64,
        max_age_ms: Option<u64>,
        max_bytes: Option<u64>,
        keep_from_seq: u64,
    ) -> Result<Vec<PathBuf>, WalError> {
        let mut total: u64 = self.closed.len() as u64 * self.opts.segment_size + self.opts.segment_size;
        let mut deleted = Vec::new();
        while let Some(oldest) = self.closed.first() {
            let too_old = max_age_ms.is_some_and(|age| oldest.newest_ms.is_none_or(|t| now_ms.saturating_sub(t) > age));
            let too_big = max_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) || oldest.last_seq >= keep_from_seq {
                break;
            }
            fs::remove_file(&oldest.path).map_err(|e| WalError::io("delete", &oldest.path, e))?;
            total -= self.opts.segment_size;
            deleted.push(self.closed.remove(0).path);
        }
        if !deleted.is_empty() {
            io::sync_dir(&self.dir).map_err(|e| WalError::io("sync directory", &self.dir, e))?;
        }
        Ok(deleted)
    }
}

fn create_segment(dir: &Path, shard: u32, first_seq: u64, now_ms: u64, opts: &Options) -> Result<Active, WalError> {
    // Built under a temporary name and renamed once its header is durable, so a crash
    // while creating it never leaves a segment without a valid header.
    let path = segment_path(dir, first_seq);
    let tmp = path.with_extension("wal.tmp");
    let _ = fs::remove_file(&tmp);
    let (file, direct) = io::open_segment(&tmp, true, opts.direct_io).map_err(|e| WalError::io("create", &tmp, e))?;
    let result = (|| {
        io::preallocate(&file, opts.segment_size)?;
        let mut header = AlignedBuf::new(HEADER_LEN);
        SegmentHeader { shard, first_seq, created_ms: now_ms }.encode(header.bytes_mut());
        io::write_all_at(&file, header.bytes(), 0)?;
        io::sync_data(&file)?;
        fs::rename(&tmp, &path)?;
        io::sync_dir(dir)
    })();
    if let Err(e) = result {
        // A segment we could not set up (full disk, ...) must not be found by recovery.
        let _ = fs::remove_file(&tmp);
        return Err(WalError::io("create", &path, e));
    }
    let info = SegmentInfo {
        path,
        first_seq,
        last_seq: first_seq - 1,
        oldest_ms: None,
        newest_ms: None,
        used_bytes: HEADER_LEN as u64,
    };
    Ok(Active { file, info, direct, buf_offset: HEADER_LEN as u64, buf_len: 0, dirty: false, unsynced: false })
}

fn quarantine(dir: &Path, path: &Path) -> Result<PathBuf, WalError> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".quarantined");
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside).map_err(|e| WalError::io("quarantine", path, e))?;
    io::sync_dir(dir).map_err(|e| WalError::io("sync directory", dir, e))?;
    Ok(aside)
}

/// Writes a new segment at `path` holding `prefix` (header and intact records).
fn rewrite_prefix(path: &Path, header: &SegmentHeader, prefix: &[u8], segment_size: u64) -> Result<(), WalError> {
    let err = |e| WalError::io("rewrite", path, e);
    let (file, _) = io::open_segment(path, true, false).map_err(err)?;
    io::preallocate(&file, segment_size).map_err(err)?;
    let mut block = vec![0u8; HEADER_LEN];
    header.encode(&mut block);
    io::write_all_at(&file, &block, 0).map_err(err)?;
    io::write_all_at(&file, &prefix[HEADER_LEN.min(prefix.len())..], HEADER_LEN as u64).map_err(err)?;
    io::sync_data(&file).map_err(err)?;
    if let Some(dir) = path.parent() {
        io::sync_dir(dir).map_err(err)?;
    }
    Ok(())
}

/// Writes zeros over `[from, to)`, both block-aligned.
fn zero_range(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = AlignedBuf::new(256 * 1024);
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.cap);
        io::write_all_at(file, &zeros.bytes()[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
