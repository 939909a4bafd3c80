//! Per-subscriber RTP sequence-number and timestamp rewriting.
//!
//! Each subscriber slot owns one [`Rewriter`]. Its output is one continuous stream whatever happens
//! upstream: a publisher restarting (new SSRC, new random sequence and timestamp bases), a simulcast layer
//! switch, or another publisher taking over the slot. Sequence numbers start at 1 for every subscriber, so the
//! SRTP rollover counter the subscriber infers (0) is right (forwarding a publisher's extended sequence number
//! past 65535 to a new subscriber would break its SRTP).

use std::time::Instant;

use str0m::rtp::Ssrc;

/// The rewriting state of one outgoing stream.
#[derive(Debug, Default)]
pub struct Rewriter {
    /// Highest extended sequence number written so far (0: none yet).
    last_out_seq: u64,
    /// The first output sequence number of the current source segment: older ones belong to no segment.
    segment_start: u64,
    /// `out_seq = in_seq + seq_offset` for the current source.
    seq_offset: i64,
    /// `out_ts = in_ts + ts_offset (mod 2^32)` for the current source.
    ts_offset: u32,
    /// Timestamp of the packet with `last_out_seq`.
    last_out_ts: u32,
    /// When the packet with `last_out_seq` was written.
    last_out_at: Option<Instant>,
    /// The SSRC currently forwarded.
    current: Option<Ssrc>,
    /// The SSRC forwarded before the current one: its late packets are dropped.
    previous: Option<Ssrc>,
}

impl Rewriter {
    /// Map an incoming packet (its source `ssrc`, extended sequence number and RTP timestamp) to the
    /// outgoing extended sequence number and timestamp, or `None` to drop it (late packet of an older
    /// segment). `clock_rate` is the codec's RTP clock, used to space timestamps across a source switch.
    /// `switching` says the forwarder deliberately switches to this source now (a simulcast layer switch on a
    /// keyframe): then even the previous source is accepted; otherwise its late packets are dropped.
    pub fn rewrite(
        &mut self,
        now: Instant,
        ssrc: Ssrc,
        in_seq: u64,
        in_ts: u32,
        clock_rate: u32,
        switching: bool,
    ) -> Option<(u64, u32)> {
        if self.previous == Some(ssrc) && !switching {
            return None;
        }
        if self.current != Some(ssrc) {
            let out_seq = self.last_out_seq + 1;
            // Sequence numbers from str0m are extended from a 16-bit start: they fit in i64.
            self.seq_offset = out_seq as i64 - in_seq as i64;
            let out_ts = match self.last_out_at {
                Some(at) => {
                    let gap = now.saturating_duration_since(at);
                    let ticks = (gap.as_micros() as u64).saturating_mul(u64::from(clock_rate)) / 1_000_000;
                    self.last_out_ts
                        .wrapping_add(ticks.clamp(1, u64::from(u32::MAX / 2)) as u32)
                }
                None => in_ts,
            };
            self.ts_offset = out_ts.wrapping_sub(in_ts);
            self.previous = self.current;
            self.current = Some(ssrc);
            self.segment_start = out_seq;
        }
        let out = in_seq as i64 + self.seq_offset;
        if out < 1 || (out as u64) < self.segment_start {
            return None;
        }
        let out = out as u64;
        let ts = in_ts.wrapping_add(self.ts_offset);
        if out > self.last_out_seq {
            self.last_out_seq = out;
            self.last_out_ts = ts;
            self.last_out_at = Some(now);
        }
        Some((out, ts))
    }

    /// Forget the current source: the next packet (even of the same SSRC) continues the output at the next
    /// sequence number. Call when packets are deliberately not forwarded (pause, waiting for a keyframe), so
    /// the subscriber sees no gap it would try to NACK.
    pub fn rebase(&mut self) {
        self.current = None;
        self.previous = None;
    }

    /// The SSRC currently forwarded, if any.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Option<Ssrc> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    #[test]
    fn continuous_across_source_switch() {
        let t0 = start();
        let mut r = Rewriter::default();
        let a: Ssrc = 1.into();
        let b: Ssrc = 2.into();
        // Publisher A starts at a high extended sequence number (past a rollover).
        for i in 0..10u64 {
            let (s, ts) = r
                .rewrite(
                    t0 + Duration::from_millis(20 * i),
                    a,
                    70_000 + i,
                    1000 + 960 * i as u32,
                    48_000,
                    false,
                )
                .unwrap();
            assert_eq!(s, 1 + i);
            assert_eq!(ts, 1000 + 960 * i as u32);
        }
        // B takes over 100 ms after A's last packet, with unrelated bases.
        let t1 = t0 + Duration::from_millis(20 * 9 + 100);
        let (s, ts) = r.rewrite(t1, b, 5, 4_000_000_000, 48_000, false).unwrap();
        assert_eq!(s, 11);
        assert_eq!(ts, 1000 + 960 * 9 + 4800);
        assert_eq!(r.current(), Some(b));
        // A late packet of A is dropped; one of B before its first is dropped too.
        assert!(r.rewrite(t1, a, 70_010, 0, 48_000, false).is_none());
        assert!(r.rewrite(t1, b, 4, 0, 48_000, false).is_none());
        // A deliberate switch back to A (a simulcast layer switch) is allowed and continues the numbering.
        let (s, _) = r.rewrite(t1, a, 70_020, 0, 48_000, true).unwrap();
        assert_eq!(s, 12);
        let (s, _) = r.rewrite(t1, b, 7, 4_000_001_920, 48_000, true).unwrap();
        assert_eq!(s, 13);
    }
}
