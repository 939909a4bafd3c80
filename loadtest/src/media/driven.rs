//! One peer as a shard drives it: its state, and the audio, video and file data it writes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::Rtc;
use str0m::channel::ChannelId;
use str0m::media::Mid;
use str0m::rtp::RtpWrite;

use super::MediaConfig;
use super::files::{FILE_CHUNK, FileIn, FileOut};
use super::link::Link;
use super::snapshot::MediaSnapshot;
use crate::stats::{Stamp, StreamKind, StreamStats, micros_since_epoch};

/// Largest RTP payload of a video packet.
const VIDEO_MTU_PAYLOAD: usize = 1100;

/// One peer as a shard drives it.
pub(super) struct Driven {
    pub(super) rtc: Rtc,
    pub(super) link: Link,
    pub(super) local: SocketAddr,
    pub(super) audio: Option<(Mid, u8)>,
    pub(super) video: Option<(Mid, u8)>,
    pub(super) sends: bool,
    pub(super) created: Instant,
    pub(super) timeout: Instant,
    pub(super) next_audio: Instant,
    pub(super) next_video: Instant,
    pub(super) last_key: Instant,
    pub(super) force_key: bool,
    pub(super) audio_seq: u64,
    pub(super) video_seq: u64,
    pub(super) frame: u32,
    pub(super) connected: bool,
    pub(super) failed: bool,
    pub(super) first_media: bool,
    pub(super) rx: HashMap<StreamKind, StreamStats>,
    pub(super) nacks_sent: HashMap<Mid, u64>,
    pub(super) nacks_received: HashMap<Mid, u64>,
    pub(super) file_send: Option<u64>,
    pub(super) file_chan: Option<ChannelId>,
    pub(super) file_out: Option<FileOut>,
    pub(super) file_in: Option<FileIn>,
}

/// Writes as much of the file being sent as the channel takes; then the end marker.
pub(super) fn pump_file(p: &mut Driven, stats: &mut MediaSnapshot, now: Instant) {
    let (Some(id), Some(f)) = (p.file_chan, p.file_out.as_mut()) else {
        return;
    };
    if f.done || now < f.start_at {
        return;
    }
    let Some(mut ch) = p.rtc.channel(id) else { return };
    if let Some(h) = f.header.take() {
        match ch.write(false, h.as_bytes()) {
            Ok(true) => {}
            Ok(false) => {
                f.header = Some(h);
                return;
            }
            Err(_) => {
                f.done = true;
                stats.file_failures += 1;
                return;
            }
        }
    }
    while f.offset < f.data.len() {
        let end = (f.offset + FILE_CHUNK).min(f.data.len());
        match ch.write(true, &f.data[f.offset..end]) {
            Ok(true) => f.offset = end,
            Ok(false) => return,
            Err(_) => {
                f.done = true;
                stats.file_failures += 1;
                return;
            }
        }
    }
    match ch.write(false, br#"{"type":"end"}"#) {
        Ok(true) => f.done = true,
        Ok(false) => {}
        Err(_) => {
            f.done = true;
            stats.file_failures += 1;
        }
    }
}

pub(super) fn send_audio(p: &mut Driven, mid: Mid, pt: u8, now: Instant, bytes: usize) {
    let seq = p.audio_seq;
    let mut payload = vec![0u8; bytes.max(crate::stats::STAMP_LEN)];
    Stamp {
        kind: StreamKind::Audio,
        seq: seq as u16,
        sent_us: micros_since_epoch(now),
    }
    .write(&mut payload);
    let ts = (seq as u32).wrapping_mul(960);
    if let Some(tx) = p.rtc.direct_api().stream_tx_by_mid(mid, None) {
        tx.write_rtp(RtpWrite::new(pt.into(), seq.into(), ts, now, payload).nackable(false));
        p.audio_seq += 1;
    }
}

/// Sends one VP8-sized frame split into packets; returns the number of packets written.
pub(super) fn send_video(p: &mut Driven, mid: Mid, pt: u8, now: Instant, c: &MediaConfig) -> u64 {
    let key = p.force_key || now.duration_since(p.last_key) >= c.keyframe_interval;
    if key {
        p.force_key = false;
        p.last_key = now;
    }
    let per_frame = (u64::from(c.video_kbps) * 1000 / 8 / u64::from(c.fps.max(1))) as usize;
    let size = if key { per_frame * 4 } else { per_frame }.max(64);
    let packets = size.div_ceil(VIDEO_MTU_PAYLOAD);
    let ts = p.frame.wrapping_mul(90_000 / c.fps.max(1));
    p.frame = p.frame.wrapping_add(1);
    let sent_us = micros_since_epoch(now);
    let mut api = p.rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return 0;
    };
    for k in 0..packets {
        let len = if k + 1 == packets {
            size - k * VIDEO_MTU_PAYLOAD
        } else {
            VIDEO_MTU_PAYLOAD
        }
        .max(24);
        let mut payload = vec![0u8; len];
        let off = if k == 0 {
            // RFC 7741 descriptor with S=1, then the frame tag (P bit 0 on a keyframe) and start code.
            payload[0] = 0x10;
            payload[1] = if key { 0x00 } else { 0x01 };
            payload[4] = 0x9d;
            payload[5] = 0x01;
            payload[6] = 0x2a;
            7
        } else {
            payload[0] = 0x00;
            1
        };
        let seq = p.video_seq;
        Stamp {
            kind: StreamKind::Video,
            seq: seq as u16,
            sent_us,
        }
        .write(&mut payload[off..]);
        tx.write_rtp(
            RtpWrite::new(pt.into(), seq.into(), ts, now, payload)
                .marker(k + 1 == packets)
                .nackable(true),
        );
        p.video_seq += 1;
    }
    packets as u64
}
