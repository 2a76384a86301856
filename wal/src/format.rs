//! The on-disk format. Everything is little-endian.
//!
//! A log is a directory of segment files named `{first_seq:020}.wal`. Each segment is
//! preallocated to the configured size and written in [`BLOCK`]-sized, block-aligned
//! writes (O_DIRECT needs both).
//!
//! ```text
//! segment  := header-block record* zero-fill
//! header-block (4096 bytes):
//!   0  magic       [u8; 8]  = b"PMQWAL\r\n"
//!   8  version     u32      = 1
//!   12 shard       u32
//!   16 first_seq   u64      sequence number of the first record in this segment
//!   24 created_ms  u64      wall clock, milliseconds since the Unix epoch
//!   32 crc         u32      CRC32C of bytes 0..32
//!   36 zero up to 4096
//! record (28-byte header + body, packed back to back, no alignment):
//!   0  body_len    u32
//!   4  crc         u32      CRC32C of bytes 8..28+body_len (seq, timestamp, flags, body)
//!   8  seq         u64      strictly +1 from the previous record of the log
//!   16 timestamp   u64      milliseconds since the Unix epoch
//!   24 flags       u16      meaning belongs to the caller
//!   26 reserved    u16      = 0
//!   28 body        [u8; body_len]
//! ```
//!
//! The end of the written data is the first place where the 8 bytes of `body_len` and
//! `crc` are both zero: segments are zero-filled when created and every write pads its last
//! block with zeros. A record whose length runs past the segment, whose CRC does not match,
//! or whose sequence number is not the expected one is where recovery stops (a torn write).

/// Unit of every write and of every file offset written.
pub const BLOCK: usize = 4096;
pub const MAGIC: [u8; 8] = *b"PMQWAL\r\n";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = BLOCK;
pub const RECORD_HEADER_LEN: usize = 28;

/// The segment header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: u32,
    pub first_seq: u64,
    pub created_ms: u64,
}

/// Why a segment header is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    Short,
    BadMagic,
    UnsupportedVersion(u32),
    BadChecksum,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => write!(f, "file shorter than its header"),
            HeaderError::BadMagic => write!(f, "not a PromptMQ WAL segment (bad magic)"),
            HeaderError::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            HeaderError::BadChecksum => write!(f, "header checksum mismatch"),
        }
    }
}

impl SegmentHeader {
    /// Writes the header block into `out` (at least [`HEADER_LEN`] bytes, zeroed).
    pub fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.shard.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&out[..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(block: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let b = block.get(..36).ok_or(HeaderError::Short)?;
        if b[..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        if crc32c::crc32c(&b[..32]) != u32_at(b, 32) {
            return Err(HeaderError::BadChecksum);
        }
        Ok(SegmentHeader { shard: u32_at(b, 12), first_seq: u64_at(b, 16), created_ms: u64_at(b, 24) })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A record as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub timestamp_ms: u64,
    pub flags: u16,
    pub body: &'a [u8],
}

/// Bytes a record with this body takes on disk.
pub fn record_len(body_len: usize) -> usize {
    RECORD_HEADER_LEN + body_len
}

/// Encodes a record at the start of `out`, which must hold [`record_len`] bytes.
pub fn encode_record(out: &mut [u8], seq: u64, timestamp_ms: u64, flags: u16, body: &[u8]) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&timestamp_ms.to_le_bytes());
    out[24..26].copy_from_slice(&flags.to_le_bytes());
    out[26..28].copy_from_slice(&0u16.to_le_bytes());
    out[28..28 + body.len()].copy_from_slice(body);
    let crc = crc32c::crc32c(&out[8..28 + body.len()]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// What is found at a position of a segment's data.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    Record(RecordRef<'a>),
    /// Zero fill: the written data ends here.
    End,
    /// Not a valid record: torn or damaged data starts here.
    Invalid(&'static str),
}

/// Reads the record at the start of `data`, checking length, checksum and that its sequence
/// number is `expected_seq` (when given).
pub fn scan_record(data: &[u8], expected_seq: Option<u64>) -> Scan<'_> {
    let Some(head) = data.get(..RECORD_HEADER_LEN) else {
        return if data.iter().all(|&b| b == 0) { Scan::End } else { Scan::Invalid("short record header") };
    };
    let len = u32_at(head, 0) as usize;
    let crc = u32_at(head, 4);
    if len == 0 && crc == 0 {
        return Scan::End;
    }
    let Some(whole) = data.get(..RECORD_HEADER_LEN + len) else {
        return Scan::Invalid("record runs past the end of the segment");
    };
    if crc32c::crc32c(&whole[8..]) != crc {
        return Scan::Invalid("record checksum mismatch");
    }
    let seq = u64_at(whole, 8);
    if expected_seq.is_some_and(|e| e != seq) {
        return Scan::Invalid("record sequence number out of order");
    }
    Scan::Record(RecordRef {
        seq,
        timestamp_ms: u64_at(whole, 16),
        flags: u16::from_le_bytes([whole[24], whole[25]]),
        body: &whole[RECORD_HEADER_LEN..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader { shard: 3, first_seq: 42, created_ms: 7 };
        let mut block = vec![0u8; HEADER_LEN];
        h.encode(&mut block);
        assert_eq!(SegmentHeader::decode(&block), Ok(h));
        block[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&block), Err(HeaderError::BadChecksum));
        block[0] = b'X';
        assert_eq!(SegmentHeader::decode(&block), Err(HeaderError::BadMagic));
        assert_eq!(SegmentHeader::decode(&block[..10]), Err(HeaderError::Short));
    }

    #[test]
    fn record_round_trip_end_and_damage() {
        let mut buf = vec![0u8; 256];
        encode_record(&mut buf, 9, 1000, 5, b"hello");
        let rec = RecordRef { seq: 9, timestamp_ms: 1000, flags: 5, body: b"hello" };
        assert_eq!(scan_record(&buf, Some(9)), Scan::Record(rec));
        assert_eq!(scan_record(&buf, Some(10)), Scan::Invalid("record sequence number out of order"));
        assert_eq!(scan_record(&buf[record_len(5)..], None), Scan::End);
        buf[30] ^= 0x40;
        assert_eq!(scan_record(&buf, None), Scan::Invalid("record checksum mismatch"));
        assert_eq!(scan_record(&buf[..20], None), Scan::Invalid("short record header"));
        assert!(matches!(scan_record(&buf[..30], None), Scan::Invalid(_)));
    }
}
