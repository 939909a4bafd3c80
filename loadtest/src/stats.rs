//! Media measurements: the stamp each payload carries, sequence tracking with wrap-around, loss, jitter
//! and latency histograms.

use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

/// The first bytes of every stamp, so a payload that is not ours is never misread.
pub const STAMP_MAGIC: [u8; 2] = [0xD5, 0x17];
/// Length of a stamp in bytes: magic (2), kind (1), stream sequence (2), send time in µs (8).
pub const STAMP_LEN: usize = 13;

/// Which kind of stream a stamp belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Opus-sized audio packets every 20 ms.
    Audio,
    /// VP8-sized video frames.
    Video,
}

/// What a payload says about itself: written by the sender, read by the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Audio or video.
    pub kind: StreamKind,
    /// The sender's own 16-bit sequence number of this stream (wraps).
    pub seq: u16,
    /// Send time in µs since [`epoch`].
    pub sent_us: u64,
}

impl Stamp {
    /// Writes the stamp into `out` (at least [`STAMP_LEN`] bytes; a shorter buffer is left untouched).
    pub fn write(&self, out: &mut [u8]) {
        let Some(out) = out.get_mut(..STAMP_LEN) else { return };
        out[..2].copy_from_slice(&STAMP_MAGIC);
        out[2] = match self.kind {
            StreamKind::Audio => 0xA0,
            StreamKind::Video => 0xB0,
        };
        out[3..5].copy_from_slice(&self.seq.to_be_bytes());
        out[5..13].copy_from_slice(&self.sent_us.to_be_bytes());
    }

    /// Finds a stamp in the first bytes of a payload (a forwarder may have rewritten a codec descriptor in
    /// front of it, so the first 16 offsets are tried).
    pub fn find(payload: &[u8]) -> Option<Stamp> {
        (0..16).find_map(|off| Stamp::read(payload.get(off..)?))
    }

    /// Reads a stamp at the start of `b`.
    pub fn read(b: &[u8]) -> Option<Stamp> {
        let b = b.get(..STAMP_LEN)?;
        if b[..2] != STAMP_MAGIC {
            return None;
        }
        let kind = match b[2] {
            0xA0 => StreamKind::Audio,
            0xB0 => StreamKind::Video,
            _ => return None,
        };
        let seq = u16::from_be_bytes([b[3], b[4]]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[5..13]);
        Some(Stamp {
            kind,
            seq,
            sent_us: u64::from_be_bytes(t),
        })
    }
}

/// The process-wide time origin of send stamps. Sender and receiver are the same process, so a monotonic
/// clock serves both.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds from [`epoch`] to `t` (0 before it).
pub fn micros_since_epoch(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_micros()).unwrap_or(u64::MAX)
}

/// Extends 16-bit sequence numbers to 64 bits across wrap-arounds and counts loss from gaps (RFC 3550,
/// appendix A.1 style): `expected = highest - first + 1`, `lost = expected - received` (duplicates and
/// late packets do not make loss negative).
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    first: Option<u64>,
    highest: u64,
    received: u64,
    duplicates_or_late: u64,
}

impl SeqTracker {
    /// Records one received sequence number; returns its extended value.
    pub fn record(&mut self, seq: u16) -> u64 {
        let Some(_) = self.first else {
            let ext = u64::from(seq) + (1 << 16); // room below for a reordered packet before the first
            self.first = Some(ext);
            self.highest = ext;
            self.received = 1;
            return ext;
        };
        // Choose the extension of `seq` closest to the highest seen so far.
        let base = self.highest & !0xFFFF;
        let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
        let mut ext = base + u64::from(seq);
        let mut best = u64::MAX;
        for c in candidates {
            let e = c + u64::from(seq);
            let d = e.abs_diff(self.highest);
            if d < best {
                best = d;
                ext = e;
            }
        }
        if ext > self.highest {
            self.highest = ext;
        } else {
            self.duplicates_or_late += 1;
        }
        if let Some(first) = self.first
            && ext < first
        {
            self.first = Some(ext);
        }
        self.received += 1;
        ext
    }

    /// Packets expected from the first to the highest sequence number seen.
    pub fn expected(&self) -> u64 {
        match self.first {
            Some(first) => self.highest - first + 1,
            None => 0,
        }
    }

    /// Packets received (duplicates included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets missing: expected minus received, never negative.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// RFC 3550 interarrival jitter from send stamps and arrival times, in µs.
#[derive(Debug, Clone, Default)]
pub struct Jitter {
    last_transit: Option<i64>,
    jitter: f64,
}

impl Jitter {
    /// Records a packet sent at `sent_us` and received at `recv_us` (same clock).
    pub fn record(&mut self, sent_us: u64, recv_us: u64) {
        let transit = recv_us as i64 - sent_us as i64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// The current estimate in µs.
    pub fn micros(&self) -> f64 {
        self.jitter
    }
}

/// Everything measured about one received stream.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    /// Sequence tracking and loss.
    pub seq: SeqTracker,
    /// Interarrival jitter.
    pub jitter: Jitter,
    /// Bytes of payload received.
    pub bytes: u64,
}

impl StreamStats {
    /// Records a received stamp at `recv_us`; returns the one-way latency in µs.
    pub fn record(&mut self, stamp: &Stamp, recv_us: u64, payload_len: usize) -> u64 {
        self.seq.record(stamp.seq);
        self.jitter.record(stamp.sent_us, recv_us);
        self.bytes += payload_len as u64;
        recv_us.saturating_sub(stamp.sent_us)
    }
}

/// A latency histogram in µs from 1 µs to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits (low >= 1, high >= 2 * low, sigfig <= 5), so
    // construction cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Records `value` into `h`, clamped to its range (a value out of range is never lost).
pub fn record_clamped(h: &mut Histogram<u64>, value: u64) {
    let v = value.clamp(h.low(), h.high());
    let _ = h.record(v);
}

/// p-th percentile of `h` in milliseconds (0 when empty).
pub fn percentile_ms(h: &Histogram<u64>, p: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(p / 100.0) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stamp_round_trip_and_search_behind_a_descriptor() {
        let s = Stamp {
            kind: StreamKind::Video,
            seq: 65535,
            sent_us: 123_456_789,
        };
        let mut buf = vec![0u8; 40];
        s.write(&mut buf[4..]);
        buf[0] = 0x90;
        assert_eq!(Stamp::find(&buf), Some(s));
        assert_eq!(Stamp::read(&buf), None, "not at offset 0");
        assert_eq!(Stamp::find(&[0u8; 40]), None);
        assert_eq!(Stamp::find(&buf[..10]), None, "truncated");
        let mut bad = buf.clone();
        bad[6] = 0x11; // kind byte
        assert_eq!(Stamp::find(&bad), None);
    }

    #[test]
    fn loss_from_gaps() {
        let mut t = SeqTracker::default();
        for s in [10u16, 11, 13, 14, 17] {
            t.record(s);
        }
        assert_eq!(t.expected(), 8);
        assert_eq!(t.received(), 5);
        assert_eq!(t.lost(), 3);
    }

    #[test]
    fn loss_across_wrap() {
        let mut t = SeqTracker::default();
        for s in [65533u16, 65534, 0, 1, 3] {
            t.record(s);
        }
        // 65533, 65534, (65535 lost), 0, 1, (2 lost), 3
        assert_eq!(t.expected(), 7);
        assert_eq!(t.lost(), 2);
    }

    #[test]
    fn many_wraps_without_loss() {
        let mut t = SeqTracker::default();
        let mut s: u16 = 40_000;
        for _ in 0..200_000 {
            t.record(s);
            s = s.wrapping_add(1);
        }
        assert_eq!(t.expected(), 200_000);
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn reordered_and_duplicate_packets_are_not_loss() {
        let mut t = SeqTracker::default();
        for s in [100u16, 102, 101, 103, 103] {
            t.record(s);
        }
        assert_eq!(t.expected(), 4);
        assert_eq!(t.lost(), 0, "received 5 with a duplicate: loss saturates at 0");
        // Reordering across the wrap: 0 arrives before 65535.
        let mut t = SeqTracker::default();
        for s in [65534u16, 0, 65535, 1] {
            t.record(s);
        }
        assert_eq!(t.expected(), 4);
        assert_eq!(t.lost(), 0);
        // A packet from before the first one extends the range backwards.
        let mut t = SeqTracker::default();
        for s in [5u16, 3, 6] {
            t.record(s);
        }
        assert_eq!(t.expected(), 4);
        assert_eq!(t.lost(), 1);
    }

    #[test]
    fn latency_and_jitter_from_stamps() {
        let mut st = StreamStats::default();
        let stamp = Stamp {
            kind: StreamKind::Audio,
            seq: 1,
            sent_us: 1_000,
        };
        assert_eq!(st.record(&stamp, 1_250, 100), 250);
        // Constant transit: no jitter.
        let stamp2 = Stamp {
            kind: StreamKind::Audio,
            seq: 2,
            sent_us: 21_000,
        };
        assert_eq!(st.record(&stamp2, 21_250, 100), 250);
        assert_eq!(st.jitter.micros(), 0.0);
        // Transit grows by 1600 µs: jitter moves by 1600/16.
        let stamp3 = Stamp {
            kind: StreamKind::Audio,
            seq: 3,
            sent_us: 41_000,
        };
        st.record(&stamp3, 42_850, 100);
        assert!((st.jitter.micros() - 100.0).abs() < 1e-9);
        assert_eq!(st.bytes, 300);
        let mut h = new_histogram();
        record_clamped(&mut h, 0);
        record_clamped(&mut h, 5_000);
        assert!(percentile_ms(&h, 100.0) >= 4.99);
        assert_eq!(percentile_ms(&new_histogram(), 99.0), 0.0);
    }
}
