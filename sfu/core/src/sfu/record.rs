//! Call recording seen from the core: which rooms are recorded, and the copy of each packet their visitor
//! and agent publish handed to the embedder's [`MediaTap`] as it arrives (before any rewriting). The core
//! keeps no recording state beyond the flag; timing, depacketising and writing are the tap's.

use std::time::Instant;

use str0m::format::{Codec, PayloadParams};
use str0m::media::Mid;

use super::{IncomingRtp, Sfu};
use crate::types::*;

/// The tap's name for a negotiated codec.
fn tap_codec(params: &PayloadParams) -> TapCodec {
    match params.spec().codec {
        Codec::Opus => TapCodec::Opus,
        Codec::Vp8 => TapCodec::Vp8,
        Codec::H264 => TapCodec::H264,
        _ => TapCodec::Other,
    }
}

impl Sfu {
    /// Turns the tap of `room` on or off; on: every video track of its visitor and agent is asked for a
    /// keyframe now (not throttled), so the recording starts (or resumes) on a decodable picture.
    pub(super) fn set_recording(&mut self, now: Instant, room: RoomId, recording: bool) -> Result<(), SfuError> {
        let r = self.rooms.get_mut(&room).ok_or(SfuError::NoSuchRoom(room))?;
        match (r.recording, recording) {
            (false, true) => self.recorded_rooms += 1,
            (true, false) => self.recorded_rooms = self.recorded_rooms.saturating_sub(1),
            _ => {}
        }
        r.recording = recording;
        if !recording {
            return Ok(());
        }
        let video: Vec<(ParticipantId, Mid)> = r
            .members
            .iter()
            .filter_map(|id| self.participants.get(id))
            .filter(|p| matches!(p.role, Role::Visitor | Role::Agent))
            .flat_map(|p| {
                p.tracks
                    .iter()
                    .filter(|t| t.kind == MediaKind::Video)
                    .map(move |t| (p.id, t.mid))
            })
            .collect();
        for (publisher, mid) in video {
            self.request_keyframe(now, publisher, mid, None, true);
        }
        Ok(())
    }

    /// Hands a copy of `pkt` to the tap when its publisher's room is recorded (visitor and agent only).
    pub(super) fn tap_packet(&mut self, now: Instant, rtp: &IncomingRtp) {
        let (from, mid, rid, kind) = (rtp.from, rtp.mid, rtp.rid, rtp.kind);
        let (params, pkt) = (&rtp.params, &rtp.pkt);
        if self.recorded_rooms == 0 {
            return;
        }
        let Some(p) = self.participants.get(&from) else { return };
        if !matches!(p.role, Role::Visitor | Role::Agent) || !self.rooms.get(&p.room).is_some_and(|r| r.recording) {
            return;
        }
        // Each track of the publisher is its own track in the recording (a camera and a shared screen are
        // never mixed); of a simulcast track, the first layer that arrived.
        let mut same_kind = p.tracks.iter().filter(|t| t.kind == kind);
        let Some(track) = same_kind.position(|t| t.mid == mid) else {
            return;
        };
        let Some(t) = p.tracks.iter().find(|t| t.mid == mid) else {
            return;
        };
        if t.layers.first().is_some_and(|l| l.rid != rid) {
            return;
        }
        let Ok(track) = u8::try_from(track) else { return };
        self.shared.stats.rtp_tapped += 1;
        self.tap.packet(TappedPacket {
            room: p.room,
            participant: from,
            role: p.role,
            kind,
            track,
            codec: tap_codec(params),
            arrived: now,
            rtp_time: pkt.header.timestamp,
            seq: *pkt.seq_no,
            marker: pkt.header.marker,
            payload: pkt.payload.clone(),
        });
    }
}
