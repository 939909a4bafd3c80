//! Forwarding: a participant's published tracks and receive slots, which track feeds which slot, and the
//! per-packet path from a publisher's RTP to every subscriber slot it feeds (rewritten per slot).

use std::collections::HashMap;
use std::time::Instant;

use str0m::format::PayloadParams;
use str0m::media::{Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};

use super::simulcast::{Layer, LayerSnapshot, MAX_LAYERS};
use super::{IncomingRtp, Participant, Sfu, Shared, Work, doom, guard, keyframe, kind_index, mark_dirty, speaking};
use crate::codec::is_keyframe_start;
use crate::rewrite::Rewriter;
use crate::types::*;

/// One published m-line (the client sends on it).
#[derive(Debug)]
pub(super) struct Track {
    pub(super) mid: Mid,
    pub(super) kind: MediaKind,
    pub(super) layers: Vec<Layer>,
    /// Cached payload parameters of the last payload type seen.
    pub(super) pt_cache: Option<PayloadParams>,
}

/// One m-line the server sends on to this client (a receive slot of the client).
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) mid: Mid,
    pub(super) kind: MediaKind,
    /// The publisher track forwarded here: (publisher, its mid).
    pub(super) source: Option<(ParticipantId, Mid)>,
    pub(super) rewriter: Rewriter,
    /// Layer currently forwarded (`Some(None)`: the non-simulcast stream).
    pub(super) current_rid: Option<Option<Rid>>,
    /// Video: nothing is forwarded until a keyframe of the selected layer.
    pub(super) waiting_keyframe: bool,
    /// Incoming payload type → outgoing payload type.
    pub(super) pt_map: Option<(u8, u8)>,
    /// When the forwarded layer last changed (simulcast hysteresis).
    pub(super) switched_at: Option<Instant>,
}

impl Sfu {
    /// Forward one incoming RTP packet to every subscriber slot fed by (from, mid).
    pub(super) fn forward(&mut self, now: Instant, rtp: IncomingRtp) {
        self.tap_packet(now, &rtp);
        let (from, mid, rid, kind, keyframe) = (rtp.from, rtp.mid, rtp.rid, rtp.kind, rtp.keyframe);
        let (params, layers, pkt) = (&rtp.params, &rtp.layers, &rtp.pkt);
        let mut routes = std::mem::take(&mut self.scratch_routes);
        routes.clear();
        if let Some(r) = self.participants.get(&from).and_then(|p| p.routes.get(&mid)) {
            routes.extend_from_slice(r);
        }
        if routes.is_empty() {
            self.shared.stats.drops.not_forwarded += 1;
        }
        let simulcast = layers.n > 1;
        let pace_video = self.config.pace_video;
        let clock_rate = params.spec().clock_rate.get();
        let mut want_keyframe: Option<Option<Rid>> = None;
        for &(sub, slot_mid) in &routes {
            let Some(s) = self.participants.get_mut(&sub) else {
                continue;
            };
            let bwe = s.bwe_bps;
            let paused = s.doomed.is_some() || s.receive_paused[kind_index(kind)];
            let Some(slot) = s.slots.iter_mut().find(|sl| sl.mid == slot_mid) else {
                continue;
            };
            if paused {
                // Resume later without a sequence gap the subscriber would NACK.
                slot.rewriter.rebase();
                self.shared.stats.drops.not_forwarded += 1;
                continue;
            }

            // Layer selection: keep the current layer until the target layer delivers a keyframe.
            let target = if simulcast {
                let since = slot.switched_at.map(|t| now.saturating_duration_since(t));
                layers.pick(bwe, slot.current_rid.flatten(), since)
            } else {
                rid
            };
            let is_key = keyframe.unwrap_or(true);
            let mut switching = false;
            match slot.current_rid {
                Some(cur) if cur == rid => {
                    if simulcast && target != rid {
                        want_keyframe = Some(target);
                    }
                    if slot.waiting_keyframe {
                        if !is_key {
                            want_keyframe = Some(rid);
                            slot.rewriter.rebase();
                            self.shared.stats.drops.not_forwarded += 1;
                            continue;
                        }
                        slot.waiting_keyframe = false;
                    }
                }
                _ => {
                    if rid != target || !is_key {
                        if rid == target {
                            want_keyframe = Some(rid);
                        }
                        self.shared.stats.drops.not_forwarded += 1;
                        continue;
                    }
                    // The first layer a slot gets is not a switch: its first upgrade is not held back.
                    if slot.current_rid.is_some() {
                        slot.switched_at = Some(now);
                    }
                    slot.current_rid = Some(rid);
                    slot.waiting_keyframe = false;
                    switching = true;
                }
            }

            let in_pt = *params.pt();
            let out_pt = match slot.pt_map {
                Some((i, o)) if i == in_pt => o,
                _ => match s.rtc.codec_config().match_params(*params) {
                    Some(local) => {
                        let o = *local.pt();
                        slot.pt_map = Some((in_pt, o));
                        o
                    }
                    None => {
                        self.shared.stats.drops.not_forwarded += 1;
                        continue;
                    }
                },
            };
            let Some((seq, ts)) = slot.rewriter.rewrite(
                now,
                pkt.header.ssrc,
                *pkt.seq_no,
                pkt.header.timestamp,
                clock_rate,
                switching,
            ) else {
                self.shared.stats.drops.not_forwarded += 1;
                continue;
            };
            let ext = ExtensionValues {
                audio_level: pkt.header.ext_vals.audio_level,
                voice_activity: pkt.header.ext_vals.voice_activity,
                video_orientation: pkt.header.ext_vals.video_orientation,
                ..Default::default()
            };
            let write = RtpWrite::new(out_pt.into(), SeqNo::from(seq), ts, pkt.timestamp, pkt.payload.clone())
                .marker(pkt.header.marker)
                .ext_vals(ext)
                .nackable(kind == MediaKind::Video);
            let written = guard(|| match s.rtc.direct_api().stream_tx_by_mid(slot_mid, None) {
                Some(tx) => {
                    if kind == MediaKind::Video {
                        tx.set_unpaced(!pace_video);
                    }
                    tx.write_rtp(write);
                    true
                }
                None => false,
            });
            match written {
                Some(true) => self.shared.stats.rtp_forwarded += 1,
                Some(false) => self.shared.stats.drops.not_forwarded += 1,
                None => doom(&mut self.shared, s, LeaveReason::Panicked),
            }
            mark_dirty(&mut self.shared, s);
        }
        self.scratch_routes = routes;
        if let Some(r) = want_keyframe {
            self.request_keyframe(now, from, mid, r, false);
        }
    }

    /// Recompute which publisher track feeds which subscriber slot in a room, and the routes.
    pub(super) fn reassign(&mut self, now: Instant, room: RoomId) {
        let Some(r) = self.rooms.get(&room) else { return };
        let members = r.members.clone();
        // (publisher, role, [(mid, kind)])
        type Published = (ParticipantId, Role, Vec<(Mid, MediaKind)>);
        let publishers: Vec<Published> = members
            .iter()
            .filter_map(|id| self.participants.get(id))
            .filter(|p| p.doomed.is_none())
            .map(|p| (p.id, p.role, p.tracks.iter().map(|t| (t.mid, t.kind)).collect()))
            .collect();
        let mut new_sources: Vec<(ParticipantId, Mid)> = Vec::new();
        for sub_id in &members {
            let Some(s) = self.participants.get_mut(sub_id) else {
                continue;
            };
            let wanted: Vec<(ParticipantId, Mid, MediaKind)> = publishers
                .iter()
                .filter(|(pid, _, _)| pid != sub_id)
                .flat_map(|(pid, role, tracks)| {
                    tracks
                        .iter()
                        .filter(|(_, k)| role.forwards_to(s.role, *k))
                        .map(move |(m, k)| (*pid, *m, *k))
                })
                .collect();
            for slot in s.slots.iter_mut() {
                if let Some((pid, m)) = slot.source
                    && !wanted.iter().any(|(wp, wm, _)| *wp == pid && *wm == m)
                {
                    slot.source = None;
                    slot.current_rid = None;
                }
            }
            let mut missing = (0usize, 0usize);
            for (pid, m, k) in &wanted {
                if s.slots.iter().any(|sl| sl.source == Some((*pid, *m))) {
                    continue;
                }
                match s.slots.iter_mut().find(|sl| sl.kind == *k && sl.source.is_none()) {
                    Some(slot) => {
                        slot.source = Some((*pid, *m));
                        slot.current_rid = None;
                        slot.waiting_keyframe = *k == MediaKind::Video;
                        slot.pt_map = None;
                        new_sources.push((*pid, *m));
                    }
                    None => match k {
                        MediaKind::Audio => missing.0 += 1,
                        MediaKind::Video => missing.1 += 1,
                    },
                }
            }
            if missing != s.missing {
                s.missing = missing;
                if missing != (0, 0) {
                    let have = |k: MediaKind| s.slots.iter().filter(|sl| sl.kind == k).count();
                    self.shared.events.push_back(Event::RenegotiationNeeded {
                        room,
                        participant: s.id,
                        audio: have(MediaKind::Audio) + missing.0,
                        video: have(MediaKind::Video) + missing.1,
                    });
                }
            }
        }
        // Routes: publisher mid → [(subscriber, slot mid)].
        let mut routes: HashMap<ParticipantId, HashMap<Mid, Vec<(ParticipantId, Mid)>>> = HashMap::new();
        for sub_id in &members {
            let Some(s) = self.participants.get(sub_id) else {
                continue;
            };
            for slot in &s.slots {
                if let Some((pid, m)) = slot.source {
                    routes
                        .entry(pid)
                        .or_default()
                        .entry(m)
                        .or_default()
                        .push((*sub_id, slot.mid));
                }
            }
        }
        for id in &members {
            if let Some(p) = self.participants.get_mut(id) {
                p.routes = routes.remove(id).unwrap_or_default();
            }
        }
        // A late joiner (or a newly fed slot) needs a keyframe now.
        for (pid, m) in new_sources {
            self.request_keyframe(now, pid, m, None, true);
        }
    }

    /// Mute or unmute what `participant` publishes of `kind` ([`Command::SetPublishMuted`]).
    pub(super) fn set_publish_muted(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        kind: MediaKind,
        muted: bool,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&participant)
            .ok_or(SfuError::NoSuchParticipant(participant))?;
        p.publish_muted[kind_index(kind)] = muted;
        let video_mids: Vec<Mid> = p
            .tracks
            .iter()
            .filter(|t| t.kind == MediaKind::Video)
            .map(|t| t.mid)
            .collect();
        // Subscribers continue their sequence numbers without a gap when the media resumes.
        let fed: Vec<(ParticipantId, Mid)> = p
            .tracks
            .iter()
            .filter(|t| t.kind == kind)
            .filter_map(|t| p.routes.get(&t.mid))
            .flatten()
            .copied()
            .collect();
        for (sub, slot_mid) in fed {
            let slot = self
                .participants
                .get_mut(&sub)
                .and_then(|s| s.slots.iter_mut().find(|sl| sl.mid == slot_mid));
            if let Some(slot) = slot {
                slot.rewriter.rebase();
                slot.waiting_keyframe = kind == MediaKind::Video;
            }
        }
        if !muted && kind == MediaKind::Video {
            // Subscribers need a keyframe to resume.
            for mid in video_mids {
                self.request_keyframe(now, participant, mid, None, true);
            }
        }
        Ok(())
    }

    /// Pause or resume what `participant` receives of `kind` ([`Command::SetReceivePaused`]).
    pub(super) fn set_receive_paused(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        kind: MediaKind,
        paused: bool,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&participant)
            .ok_or(SfuError::NoSuchParticipant(participant))?;
        p.receive_paused[kind_index(kind)] = paused;
        if !paused && kind == MediaKind::Video {
            let sources: Vec<(ParticipantId, Mid)> = p
                .slots
                .iter_mut()
                .filter(|s| s.kind == MediaKind::Video)
                .filter_map(|s| {
                    s.waiting_keyframe = true;
                    s.source
                })
                .collect();
            for (pub_id, mid) in sources {
                self.request_keyframe(now, pub_id, mid, None, true);
            }
        }
        Ok(())
    }
}

/// Incoming RTP from a publisher: bookkeeping here, forwarding deferred as [`Work::Rtp`].
pub(super) fn on_rtp(p: &mut Participant, shared: &mut Shared, now: Instant, pkt: RtpPacket) {
    let ids = p
        .rtc
        .direct_api()
        .stream_rx(&pkt.header.ssrc)
        .map(|rx| (rx.mid(), rx.rid()));
    let Some((mid, rid)) = ids else {
        shared.stats.drops.not_forwarded += 1;
        return;
    };
    let Some(track) = p.tracks.iter_mut().find(|t| t.mid == mid) else {
        shared.stats.drops.not_forwarded += 1;
        return;
    };
    let kind = track.kind;
    let pt = pkt.header.payload_type;
    let params = match track.pt_cache {
        Some(c) if c.pt() == pt => c,
        _ => match p.rtc.codec_config().find(|c| c.pt() == pt) {
            Some(c) => {
                track.pt_cache = Some(*c);
                *c
            }
            None => {
                shared.stats.drops.not_forwarded += 1;
                return;
            }
        },
    };
    // Layer bookkeeping: bitrate window, pending keyframe requests.
    if !track.layers.iter().any(|l| l.rid == rid) && track.layers.len() < MAX_LAYERS {
        track.layers.push(Layer::new(rid));
    }
    let keyframe = if kind == MediaKind::Video {
        is_keyframe_start(params.spec().codec, &pkt.payload)
    } else {
        None
    };
    if let Some(layer) = track.layers.iter_mut().find(|l| l.rid == rid) {
        layer.measure(now, pkt.payload.len());
        if keyframe == Some(true) {
            layer.kf_pending = false;
        }
        keyframe::send_pending_request(&mut p.rtc, p.room, p.id, mid, layer, shared, now);
    }
    let layers = LayerSnapshot::of(&track.layers);
    if kind == MediaKind::Audio {
        speaking::on_audio(p, shared, now, &pkt.header.ext_vals);
    }
    if p.publish_muted[kind_index(kind)] || pkt.payload.is_empty() {
        shared.stats.drops.not_forwarded += 1;
        return;
    }
    shared.work.push_back(Work::Rtp(IncomingRtp {
        from: p.id,
        mid,
        rid,
        kind,
        params,
        keyframe,
        layers,
        pkt,
    }));
}

/// Rebuild a participant's tracks (m-lines it sends on) and slots (m-lines we send on) from its media.
pub(super) fn rescan_media(p: &mut Participant, shared: &mut Shared) {
    let mut tracks = Vec::new();
    let mut slots = Vec::new();
    for mid in &p.mids {
        let Some(m) = p.rtc.media(*mid) else { continue };
        if m.disabled() || m.stopped() {
            continue;
        }
        let kind = MediaKind::from(m.kind());
        let dir = m.direction();
        if dir.is_receiving() {
            match p.tracks.iter().position(|t| t.mid == *mid) {
                Some(i) => tracks.push(p.tracks.swap_remove(i)),
                None => {
                    shared.events.push_back(Event::MediaAdded {
                        room: p.room,
                        participant: p.id,
                        kind,
                    });
                    tracks.push(Track {
                        mid: *mid,
                        kind,
                        layers: Vec::new(),
                        pt_cache: None,
                    });
                }
            }
        }
        if dir.is_sending() {
            match p.slots.iter().position(|s| s.mid == *mid) {
                Some(i) => slots.push(p.slots.swap_remove(i)),
                None => slots.push(Slot {
                    mid: *mid,
                    kind,
                    source: None,
                    rewriter: Rewriter::default(),
                    current_rid: None,
                    waiting_keyframe: kind == MediaKind::Video,
                    pt_map: None,
                    switched_at: None,
                }),
            }
        }
    }
    p.tracks = tracks;
    p.slots = slots;
    p.scanned = true;
}
