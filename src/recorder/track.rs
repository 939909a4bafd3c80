//! One recorded track: RTP packets in, frames with file timestamps out.
//!
//! - **Timing.** A track is anchored on its first packet (and again after a resume or a long silence): the
//!   anchor maps the packet's RTP timestamp to the file time of its arrival (the recording's running time,
//!   paused spans excluded). Later frames take their time from the RTP timestamp, so packet loss and jitter
//!   do not move them, and a gap where the publisher sent nothing stays a gap. When the RTP clock and the
//!   arrival clock disagree by more than [`MAX_DRIFT_MS`] (a sender restarted its clock), the track is
//!   anchored again. Times strictly increase within a track.
//! - **Frames.** Opus: one RTP payload is one frame. VP8 (RFC 7741): the payload descriptor is removed and the
//!   packets of one picture (one RTP timestamp) are joined; a picture with a missing packet is dropped, and
//!   after a resume nothing is written before a keyframe.

use std::time::Duration;

/// Largest disagreement between the RTP clock and arrival before a track is anchored again.
pub const MAX_DRIFT_MS: i64 = 2_000;
/// Largest picture assembled (a 4K keyframe is far below).
const MAX_FRAME: usize = 4 << 20;

/// A frame ready for the file.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// File time, ms.
    pub ms: u64,
    /// A keyframe (always true for audio).
    pub keyframe: bool,
    /// The codec frame.
    pub data: Vec<u8>,
}

/// Which depacketiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Opus (48 kHz clock).
    Opus,
    /// VP8 (90 kHz clock).
    Vp8,
}

#[derive(Debug, Default)]
struct Picture {
    rtp_time: u32,
    next_seq: u64,
    data: Vec<u8>,
    keyframe: bool,
    broken: bool,
    /// When its first packet arrived (file time).
    arrived: Duration,
}

/// The state of one track of a recording.
#[derive(Debug)]
pub struct Track {
    kind: Kind,
    anchor: Option<(i64, u32)>,
    last_ms: Option<u64>,
    picture: Option<Picture>,
    want_keyframe: bool,
    /// RTP time of the last frame written: a picture or packet not newer (a retransmission arriving after its
    /// frame was written, or a late duplicate) is dropped.
    last_rtp: Option<u32>,
    /// Frames dropped (incomplete pictures, waiting for a keyframe, duplicates).
    pub dropped: u64,
}

impl Track {
    /// A new track.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            anchor: None,
            last_ms: None,
            picture: None,
            want_keyframe: kind == Kind::Vp8,
            last_rtp: None,
            dropped: 0,
        }
    }

    fn clock_khz(&self) -> i64 {
        match self.kind {
            Kind::Opus => 48,
            Kind::Vp8 => 90,
        }
    }

    /// Forget the anchor and any half picture (after a pause): the next packet anchors again, and video waits
    /// for a keyframe.
    pub fn reset(&mut self) {
        self.anchor = None;
        self.last_rtp = None;
        self.picture = None;
        self.want_keyframe = self.kind == Kind::Vp8;
    }

    /// File time of RTP time `rtp` for a packet that arrived at file time `now`.
    fn time_of(&mut self, rtp: u32, now: Duration) -> u64 {
        let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        let ms = match self.anchor {
            Some((a_ms, a_rtp)) => {
                let ms = a_ms + i64::from(rtp.wrapping_sub(a_rtp) as i32) / self.clock_khz();
                if (ms - now_ms).abs() > MAX_DRIFT_MS {
                    self.anchor = Some((now_ms, rtp));
                    now_ms
                } else {
                    ms
                }
            }
            None => {
                self.anchor = Some((now_ms, rtp));
                now_ms
            }
        };
        let ms = u64::try_from(ms.max(0)).unwrap_or(0);
        // Each frame after the last: players and muxers need strictly increasing times per track.
        let ms = self.last_ms.map_or(ms, |l| ms.max(l + 1));
        self.last_ms = Some(ms);
        ms
    }

    /// Whether RTP time `rtp` comes after the last frame written (wrapping comparison). A jump back of more
    /// than 5 s is a sender that restarted its clock (taken, and anchored again), not a late packet.
    fn is_new(&self, rtp: u32) -> bool {
        let restart = -self.clock_khz() * 5_000;
        self.last_rtp.is_none_or(|l| {
            let d = i64::from(rtp.wrapping_sub(l) as i32);
            d > 0 || d < restart
        })
    }

    /// One RTP packet (payload as received) that arrived at file time `now`; returns a finished frame.
    pub fn packet(&mut self, rtp: u32, seq: u64, marker: bool, payload: &[u8], now: Duration) -> Option<Frame> {
        if !self.is_new(rtp) {
            self.dropped += 1;
            return None;
        }
        let frame = self.frame(rtp, seq, marker, payload, now);
        if frame.is_some() {
            self.last_rtp = Some(rtp);
        }
        frame
    }

    fn frame(&mut self, rtp: u32, seq: u64, marker: bool, payload: &[u8], now: Duration) -> Option<Frame> {
        match self.kind {
            Kind::Opus => {
                if payload.is_empty() {
                    return None;
                }
                let ms = self.time_of(rtp, now);
                Some(Frame {
                    ms,
                    keyframe: true,
                    data: payload.to_vec(),
                })
            }
            Kind::Vp8 => self.vp8(rtp, seq, marker, payload, now),
        }
    }

    fn vp8(&mut self, rtp: u32, seq: u64, marker: bool, payload: &[u8], now: Duration) -> Option<Frame> {
        let (start, body) = vp8_descriptor(payload)?;
        let mut done = None;
        if self.picture.as_ref().is_some_and(|p| p.rtp_time != rtp) {
            // A new picture began before the last one's marker: the last one lost its end.
            self.picture = None;
            self.dropped += 1;
        }
        if start {
            if self.picture.is_some() {
                self.dropped += 1;
            }
            self.picture = Some(Picture {
                rtp_time: rtp,
                next_seq: seq,
                data: Vec::with_capacity(body.len() * 4),
                // RFC 6386 §9.1: bit 0 of the first byte of the frame tag is 0 on a keyframe.
                keyframe: body.first().is_some_and(|b| b & 1 == 0),
                broken: false,
                arrived: now,
            });
        }
        let p = self.picture.as_mut()?;
        if p.next_seq != seq || p.data.len() + body.len() > MAX_FRAME {
            p.broken = true;
        }
        p.next_seq = seq + 1;
        p.data.extend_from_slice(body);
        if marker {
            let p = self.picture.take()?;
            if p.broken || (self.want_keyframe && !p.keyframe) {
                self.dropped += 1;
                return None;
            }
            self.want_keyframe = false;
            let ms = self.time_of(rtp, p.arrived);
            done = Some(Frame {
                ms,
                keyframe: p.keyframe,
                data: p.data,
            });
        }
        done
    }
}

/// Parses the VP8 payload descriptor (RFC 7741 §4.2): (start of a picture, the VP8 payload).
fn vp8_descriptor(p: &[u8]) -> Option<(bool, &[u8])> {
    let b0 = *p.first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let m = *p.get(at)?;
            at += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID/Y/KEYIDX
        }
    }
    let body = p.get(at..)?;
    if body.is_empty() {
        return None;
    }
    Some((start, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn opus_times_follow_rtp_across_loss_and_jitter() {
        let mut t = Track::new(Kind::Opus);
        // 20 ms frames (960 ticks); packet 2 lost, packet 3 late by 15 ms.
        assert_eq!(t.packet(1000, 1, false, b"a", ms(100)).unwrap().ms, 100);
        assert_eq!(t.packet(1960, 2, false, b"b", ms(121)).unwrap().ms, 120);
        assert_eq!(t.packet(3880, 4, false, b"d", ms(175)).unwrap().ms, 160);
        // A silence of 3 s: the RTP clock moved on, so the gap stays.
        assert_eq!(t.packet(3880 + 48 * 3000, 5, false, b"e", ms(3170)).unwrap().ms, 3160);
    }

    #[test]
    fn a_restarted_clock_reanchors_and_time_never_goes_back() {
        let mut t = Track::new(Kind::Opus);
        t.packet(5_000_000, 1, false, b"a", ms(1000));
        // The sender's clock jumped back by a lot: anchored on arrival, and not before the last frame.
        assert_eq!(t.packet(10, 2, false, b"b", ms(1020)).unwrap().ms, 1020);
        t.reset();
        assert_eq!(t.packet(99, 3, false, b"c", ms(900)).unwrap().ms, 1021);
    }

    fn vp8_pkt(start: bool, key: bool, body: &[u8]) -> Vec<u8> {
        // X=1 with a 15-bit PictureID, S as given.
        let mut p = vec![0x80 | if start { 0x10 } else { 0 }, 0x80, 0x81, 0x23];
        if start {
            p.push(if key { 0x00 } else { 0x01 });
        }
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn vp8_joins_pictures_waits_for_a_keyframe_and_drops_broken_ones() {
        let mut t = Track::new(Kind::Vp8);
        // A delta picture first: dropped (waiting for a keyframe).
        assert!(t.packet(0, 1, true, &vp8_pkt(true, false, b"d"), ms(0)).is_none());
        // A keyframe in two packets.
        assert!(t.packet(3000, 2, false, &vp8_pkt(true, true, b"k1"), ms(33)).is_none());
        let f = t.packet(3000, 3, true, &vp8_pkt(false, true, b"k2"), ms(34)).unwrap();
        assert_eq!((f.ms, f.keyframe, f.data.as_slice()), (33, true, &b"\x00k1k2"[..]));
        // A delta picture whose middle packet is lost: dropped; the next one is written, 66 ms later.
        assert!(t.packet(6000, 4, false, &vp8_pkt(true, false, b"a"), ms(66)).is_none());
        assert!(t.packet(6000, 6, true, &vp8_pkt(false, false, b"c"), ms(67)).is_none());
        let f = t.packet(9000, 7, true, &vp8_pkt(true, false, b"e"), ms(100)).unwrap();
        assert_eq!((f.ms, f.keyframe), (99, false));
        assert_eq!(t.dropped, 2);
        // A retransmission of a picture already written, arriving late: dropped, nothing written twice.
        assert!(t.packet(9000, 7, true, &vp8_pkt(true, false, b"e"), ms(140)).is_none());
        assert!(t.packet(3000, 2, false, &vp8_pkt(true, true, b"k1"), ms(141)).is_none());
        assert_eq!(t.dropped, 4);
        assert!(vp8_descriptor(&[0x80]).is_none());
    }
}
