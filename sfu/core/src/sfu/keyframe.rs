//! Keyframes: requests from subscribers (PLI/FIR), new subscribers and layer switches are coalesced and
//! throttled per (track, layer) before one PLI goes to the publisher; a request held back by the throttle
//! goes out with the first packet after the throttle window.

use std::time::Instant;

use tracing::info;

use str0m::Rtc;
use str0m::media::{KeyframeRequestKind, Mid, Rid};

use super::simulcast::Layer;
use super::{Sfu, Shared, doom, guard, mark_dirty};
use crate::types::*;

/// str0m's default send buffer for answering NACKs (2000 packets over 3 s, resends capped at 15 % of the
/// bytes), restored empty by [`Sfu::resume_video`].
const RTX_CACHE_PACKETS: usize = 2000;
const RTX_CACHE_AGE: std::time::Duration = std::time::Duration::from_secs(3);
const RTX_RATIO_CAP: f32 = 0.15;

impl Sfu {
    /// Ask a publisher for a keyframe on (mid, rid), throttled per layer. `rid: None` on a simulcast track
    /// asks every layer. `force` bypasses the throttle (used when a new subscriber joins).
    pub(super) fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        mid: Mid,
        rid: Option<Rid>,
        force: bool,
    ) {
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        if p.doomed.is_some() {
            return;
        }
        let throttle = self.config.keyframe_throttle;
        let Some(track) = p.tracks.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        let mut asked = false;
        for layer in track.layers.iter_mut() {
            if rid.is_some() && layer.rid != rid {
                continue;
            }
            let due = force || layer.last_kf_request.is_none_or(|t| now >= t + throttle);
            if !due {
                layer.kf_pending = true;
                continue;
            }
            let r = layer.rid;
            let sent = guard(|| match p.rtc.direct_api().stream_rx_by_mid(mid, r) {
                Some(rx) => {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    true
                }
                // Browsers may skip a simulcast layer: "not now", not an error.
                None => false,
            });
            match sent {
                Some(true) => {
                    layer.last_kf_request = Some(now);
                    layer.kf_pending = false;
                    asked = true;
                }
                Some(false) => {}
                None => {
                    doom(&mut self.shared, p, LeaveReason::Panicked);
                    return;
                }
            }
        }
        if track.layers.is_empty() {
            // Nothing received yet: ask the plain stream so the first frame is a keyframe.
            let sent = guard(|| match p.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                Some(rx) => {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    true
                }
                None => false,
            });
            asked = sent == Some(true);
        }
        if asked {
            self.shared.stats.keyframe_requests += 1;
            self.shared.events.push_back(Event::KeyframeRequested {
                room: p.room,
                publisher,
            });
            mark_dirty(&mut self.shared, p);
        }
    }

    /// Participant `pid` is heard again after a silence (its path was cut, see `RESUME_AFTER_SILENCE`): the
    /// video it publishes and the video it receives restart on keyframes (throttled as any request), since
    /// what was lost in the cut can no longer be repaired by retransmission.
    pub(super) fn resume_video(&mut self, now: Instant, pid: ParticipantId) {
        let Some(p) = self.participants.get(&pid) else {
            return;
        };
        if p.doomed.is_some() {
            return;
        }
        info!(parent: &p.span, "heard again after a silence: asking for keyframes");
        let published: Vec<Mid> = p
            .tracks
            .iter()
            .filter(|t| t.kind == MediaKind::Video)
            .map(|t| t.mid)
            .collect();
        let received: Vec<Mid> = p
            .slots
            .iter()
            .filter(|s| s.kind == MediaKind::Video && s.source.is_some())
            .map(|s| s.mid)
            .collect();
        // Every subscriber of the video it publishes (and its own slots) skips what came before the
        // keyframe: the output continues without a sequence gap, so nobody NACKs what the cut lost for good,
        // and decoding restarts at the keyframe instead of waiting for a repair that cannot come.
        let mut waiting: Vec<(ParticipantId, Mid)> = received.iter().map(|m| (pid, *m)).collect();
        for mid in &published {
            waiting.extend(p.routes.get(mid).into_iter().flatten().copied());
        }
        for (sub, slot_mid) in waiting {
            if let Some(slot) = self
                .participants
                .get_mut(&sub)
                .and_then(|s| s.slots.iter_mut().find(|sl| sl.mid == slot_mid))
                && slot.kind == MediaKind::Video
                && slot.source.is_some()
            {
                slot.waiting_keyframe = true;
                slot.rewriter.rebase();
            }
        }
        // What was sent to it during the cut is lost for good and older than the keyframe it is about to
        // get: answering its NACKs for those would only deliver frames seconds late (a browser's jitter
        // buffer then delays everything after them by as much). Its video send buffers start empty.
        if let Some(p) = self.participants.get_mut(&pid) {
            for mid in &received {
                let reset = guard(|| {
                    if let Some(tx) = p.rtc.direct_api().stream_tx_by_mid(*mid, None) {
                        tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
                    }
                });
                if reset.is_none() {
                    doom(&mut self.shared, p, LeaveReason::Panicked);
                    return;
                }
            }
        }
        for mid in published {
            self.request_keyframe(now, pid, mid, None, false);
        }
        for mid in received {
            self.relay_keyframe_request(now, pid, mid);
        }
    }

    /// A subscriber asked for a keyframe on its slot `mid`: ask the publisher feeding that slot, for the
    /// layer the slot gets now.
    pub(super) fn relay_keyframe_request(&mut self, now: Instant, subscriber: ParticipantId, mid: Mid) {
        let Some(s) = self.participants.get(&subscriber) else {
            return;
        };
        let Some(slot) = s.slots.iter().find(|sl| sl.mid == mid) else {
            return;
        };
        let Some((pub_id, pub_mid)) = slot.source else { return };
        let rid = slot.current_rid.flatten();
        self.request_keyframe(now, pub_id, pub_mid, rid, false);
    }
}

/// A packet of `layer` (of `publisher`'s track `mid`) arrived at `now`: a request throttled earlier goes out
/// once the throttle window has passed (first packet after it).
pub(super) fn send_pending_request(
    rtc: &mut Rtc,
    room: RoomId,
    publisher: ParticipantId,
    mid: Mid,
    layer: &mut Layer,
    shared: &mut Shared,
    now: Instant,
) {
    if layer.kf_pending
        && layer
            .last_kf_request
            .is_none_or(|t| now >= t + shared.keyframe_throttle)
    {
        if let Some(rx) = rtc.direct_api().stream_rx_by_mid(mid, layer.rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            shared.stats.keyframe_requests += 1;
            shared.events.push_back(Event::KeyframeRequested { room, publisher });
        }
        layer.last_kf_request = Some(now);
        layer.kf_pending = false;
    }
}
