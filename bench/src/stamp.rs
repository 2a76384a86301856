//! What every payload carries, and what every subscriber keeps about what it received.
//!
//! Payload layout (little endian), then filler up to the requested size:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | send time, nanoseconds since the process's clock origin ([`now_ns`]) |
//! | 8..12 | publisher index |
//! | 12..16 | sequence number, per publisher, from 0 |
//!
//! Publishers and subscribers run in the same process, so they read the same monotonic clock.

use std::sync::OnceLock;
use std::time::Instant;

pub const STAMP_LEN: usize = 16;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since the clock origin (fixed at the first call in the process).
pub fn now_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// The [`now_ns`] value of an `Instant`.
pub fn instant_ns(t: Instant) -> u64 {
    t.saturating_duration_since(origin()).as_nanos() as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub publisher: u32,
    pub seq: u32,
}

/// Writes the stamp into the first [`STAMP_LEN`] bytes of `out`.
pub fn write_stamp(out: &mut [u8], s: Stamp) {
    out[0..8].copy_from_slice(&s.sent_ns.to_le_bytes());
    out[8..12].copy_from_slice(&s.publisher.to_le_bytes());
    out[12..16].copy_from_slice(&s.seq.to_le_bytes());
}

/// Reads a stamp back, or `None` if the payload is too short to carry one.
pub fn read_stamp(p: &[u8]) -> Option<Stamp> {
    if p.len() < STAMP_LEN {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&p[0..8]);
    let mut b = [0u8; 4];
    b.copy_from_slice(&p[8..12]);
    let mut c = [0u8; 4];
    c.copy_from_slice(&p[12..16]);
    Some(Stamp { sent_ns: u64::from_le_bytes(a), publisher: u32::from_le_bytes(b), seq: u32::from_le_bytes(c) })
}

/// What one receiver (a subscriber, or a shared-subscription group after merging) got from
/// one publisher: a bitmap of the sequence numbers seen, duplicates and reorderings.
#[derive(Clone, Debug, Default)]
pub struct SeqTrack {
    bits: Vec<u64>,
    /// Highest sequence number seen plus one (0: none yet).
    next_expected: u32,
    pub duplicates: u64,
    pub reordered: u64,
}

impl SeqTrack {
    /// Records `seq`; `count` says whether the message is inside the measured window (only
    /// those count as duplicates or reorderings). Returns true for a first delivery.
    pub fn record(&mut self, seq: u32, count: bool) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.bits.len() {
            self.bits.resize((w + 1).next_power_of_two().max(64), 0);
        }
        let mask = 1u64 << b;
        if self.bits[w] & mask != 0 {
            if count {
                self.duplicates += 1;
            }
            return false;
        }
        self.bits[w] |= mask;
        if seq < self.next_expected {
            if count {
                self.reordered += 1;
            }
        } else {
            self.next_expected = seq + 1;
        }
        true
    }

    /// Distinct sequence numbers seen in `from..to`.
    pub fn distinct_in(&self, from: u32, to: u32) -> u64 {
        let mut n = 0u64;
        let mut s = from;
        while s < to {
            let w = (s / 64) as usize;
            let Some(&word) = self.bits.get(w) else { break };
            let lo = s % 64;
            let hi = if (to - s) >= 64 - lo { 64 } else { lo + (to - s) };
            let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
            n += (word & mask).count_ones() as u64;
            s += hi - lo;
        }
        n
    }

    /// Folds another receiver's track in (a shared-subscription group): sequence numbers both
    /// got count as duplicates.
    pub fn merge(&mut self, other: &SeqTrack) {
        if other.bits.len() > self.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            self.duplicates += (*a & *b).count_ones() as u64;
            *a |= *b;
        }
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.next_expected = self.next_expected.max(other.next_expected);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip() {
        let s = Stamp { sent_ns: 0x0102_0304_0506_0708, publisher: 77, seq: 0xdead_beef };
        let mut p = vec![0xaa; 64];
        write_stamp(&mut p, s);
        assert_eq!(read_stamp(&p), Some(s));
        assert_eq!(&p[16..], &[0xaa; 48][..]);
        assert_eq!(read_stamp(&p[..15]), None);
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        assert!(instant_ns(Instant::now()) >= b);
    }

    #[test]
    fn track_counts_loss_duplicates_reordering() {
        let mut t = SeqTrack::default();
        for s in [0, 1, 2, 4, 3, 3, 5, 9, 200] {
            t.record(s, true);
        }
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.reordered, 1); // 3 after 4
        assert_eq!(t.distinct_in(0, 10), 7); // 6, 7, 8 missing
        assert_eq!(t.distinct_in(3, 6), 3);
        assert_eq!(t.distinct_in(0, 1000), 8);
        assert_eq!(t.distinct_in(64, 200), 0);
        assert_eq!(t.distinct_in(10, 10), 0);
        // Outside the measured window: tracked, not counted.
        t.record(5, false);
        assert_eq!(t.duplicates, 1);
    }

    #[test]
    fn distinct_in_word_boundaries() {
        let mut t = SeqTrack::default();
        for s in 0..300 {
            t.record(s, true);
        }
        for (from, to) in [(0, 64), (63, 65), (1, 300), (64, 128), (100, 299), (0, 300)] {
            assert_eq!(t.distinct_in(from, to), (to - from) as u64, "{from}..{to}");
        }
    }

    #[test]
    fn merge_counts_overlap_as_duplicates() {
        let mut a = SeqTrack::default();
        let mut b = SeqTrack::default();
        for s in [0, 2, 4] {
            a.record(s, true);
        }
        for s in [1, 2, 3, 100] {
            b.record(s, true);
        }
        a.merge(&b);
        assert_eq!(a.duplicates, 1);
        assert_eq!(a.distinct_in(0, 5), 5);
        assert_eq!(a.distinct_in(0, 101), 6);
    }
}
