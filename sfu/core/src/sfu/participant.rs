//! Participant: one member of a room with its str0m instance — joining (the answer to its offer),
//! renegotiation, driving the instance (polling it, handling its events) and leaving.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, TcpType};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Output as RtcOutput, Rtc};
use tracing::{info, warn};

use super::data::{self, FileIn, flush_file_out};
use super::forward::{on_rtp, rescan_media};
use super::{Participant, Sfu, Shared, Work, doom, guard, learn_address, mark_dirty};
use crate::types::*;
use crate::wire::FileMessage;

/// Our transport for str0m's protocol: we only ever announce UDP and plain (RFC 4571) TCP candidates.
fn transport_of(p: Protocol) -> Transport {
    match p {
        Protocol::Udp => Transport::Udp,
        _ => Transport::Tcp,
    }
}

/// A loss fraction (0..=1) in parts per million, clamped.
fn loss_ppm(fraction: f32) -> u32 {
    // Clamped to 0..=1e6 first, so the cast cannot truncate.
    (fraction.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
}

impl Sfu {
    /// Create `id` in `room` from its first offer ([`Command::AddParticipant`]) and return the answer.
    pub(super) fn add_participant(
        &mut self,
        now: Instant,
        room: RoomId,
        id: ParticipantId,
        role: Role,
        offer: &str,
    ) -> Result<Reply, SfuError> {
        let r = self.rooms.get(&room).ok_or(SfuError::NoSuchRoom(room))?;
        if r.members.len() >= self.config.max_participants_per_room {
            return Err(SfuError::RoomFull(room));
        }
        if self.participants.contains_key(&id) {
            return Err(SfuError::ParticipantExists(id));
        }
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let span = tracing::info_span!("participant", %room, participant = %id, role = role.as_str());

        let built = guard(|| {
            let mut rtc = Rtc::builder()
                .set_ice_lite(true)
                .set_rtp_mode(true)
                .enable_bwe(Some(Bitrate::bps(self.config.initial_bitrate_bps)))
                .set_stats_interval(self.config.stats_interval)
                .build(now);
            let mut candidates = 0;
            for addr in &self.config.local_addrs {
                match Candidate::host(*addr, "udp") {
                    Ok(c) => {
                        if rtc.add_local_candidate(c).is_some() {
                            candidates += 1;
                        }
                    }
                    Err(e) => warn!(%addr, error = %e, "unusable local address"),
                }
            }
            if candidates == 0 {
                return Err(SfuError::NoLocalAddress);
            }
            // Passive TCP candidates after the UDP ones: their type preference (90 against 126 for UDP
            // host candidates) makes a browser pick UDP where it works.
            for addr in &self.config.tcp_addrs {
                match Candidate::builder().tcp().host(*addr).tcptype(TcpType::Passive).build() {
                    Ok(c) => {
                        let _ = rtc.add_local_candidate(c);
                    }
                    Err(e) => warn!(%addr, error = %e, "unusable TCP candidate address"),
                }
            }
            let answer = rtc
                .sdp_api()
                .accept_offer(offer)
                .map_err(|e| SfuError::Negotiation(e.to_string()))?;
            rtc.bwe().set_bitrate(Bitrate::kbps(300), Bitrate::mbps(3));
            let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
            Ok((rtc, answer, ufrag))
        });
        let (rtc, answer, ufrag) = match built {
            Some(r) => r?,
            None => {
                self.shared.stats.panics += 1;
                return Err(SfuError::Panicked(id));
            }
        };
        if self.ufrags.contains_key(&ufrag) {
            // Random 32-bit-plus ufrags colliding means a broken RNG: refuse rather than misroute.
            return Err(SfuError::Negotiation("ICE ufrag collision".into()));
        }
        // Register before the answer leaves: the first STUN request may follow it immediately.
        self.ufrags.insert(ufrag.clone(), id);
        if let Some(r) = self.rooms.get_mut(&room) {
            r.members.push(id);
        }
        let p = Participant {
            id,
            room,
            role,
            rtc: Box::new(rtc),
            span,
            ufrag,
            addrs: Vec::new(),
            timer: None,
            dirty: false,
            doomed: None,
            connected: false,
            mids: Vec::new(),
            tracks: Vec::new(),
            slots: Vec::new(),
            routes: HashMap::new(),
            publish_muted: [false; 2],
            receive_paused: [false; 2],
            bwe_bps: self.config.initial_bitrate_bps,
            text_ch: None,
            file_ch: None,
            file_in: FileIn::Idle,
            file_out: VecDeque::new(),
            file_out_bytes: 0,
            speaking: false,
            last_loud: None,
            last_heard: None,
            missing: (0, 0),
            scanned: false,
            connect_deadline: now + self.config.connect_timeout,
        };
        info!(parent: &p.span, "participant added");
        let p = self.participants.entry(id).or_insert(p);
        mark_dirty(&mut self.shared, p);
        Ok(Reply::Answer(answer.to_sdp_string()))
    }

    /// Remove a participant now and free everything it holds.
    pub(super) fn remove_participant(&mut self, id: ParticipantId, reason: LeaveReason) {
        let Some(mut p) = self.participants.remove(&id) else {
            return;
        };
        // Say goodbye (DTLS close_notify, RTCP BYE) if the instance is still sane.
        if reason != LeaveReason::Panicked {
            let transmits = &mut self.shared.transmits;
            let _ = guard(|| {
                p.rtc.disconnect();
                for _ in 0..64 {
                    match p.rtc.poll_output() {
                        Ok(RtcOutput::Transmit(t)) => transmits.push_back(Transmit {
                            proto: transport_of(t.proto),
                            source: t.source,
                            destination: t.destination,
                            contents: t.contents.into(),
                        }),
                        Ok(RtcOutput::Event(_)) => {}
                        _ => break,
                    }
                }
            });
        }
        for a in &p.addrs {
            if self.addrs.get(a) == Some(&id) {
                self.addrs.remove(a);
            }
        }
        self.ufrags.remove(&p.ufrag);
        self.shared.speaking.retain(|s| *s != id);
        self.shared.heap.retain(|Reverse((_, pid))| *pid != id);
        self.shared.dirty.retain(|d| *d != id);
        if let Some(r) = self.rooms.get_mut(&p.room) {
            r.members.retain(|m| *m != id);
        }
        // Recipients of an unfinished file from this sender get an abort.
        if let FileIn::Receiving { recipients, .. } = std::mem::take(&mut p.file_in) {
            self.send_file_control(
                &recipients,
                &FileMessage::Abort {
                    reason: "sender left".into(),
                },
            );
        }
        info!(parent: &p.span, ?reason, "participant left");
        self.shared.events.push_back(Event::ParticipantLeft {
            room: p.room,
            participant: id,
            reason,
        });
        self.shared.work.push_back(Work::Reassign { room: p.room });
    }

    /// Apply a later offer of `participant` ([`Command::Renegotiate`]) and return the answer.
    pub(super) fn renegotiate(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        offer: &str,
    ) -> Result<Reply, SfuError> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let p = self
            .participants
            .get_mut(&participant)
            .ok_or(SfuError::NoSuchParticipant(participant))?;
        let answer = match guard(|| p.rtc.sdp_api().accept_offer(offer)) {
            Some(Ok(a)) => a,
            Some(Err(e)) => return Err(SfuError::Negotiation(e.to_string())),
            None => {
                doom(&mut self.shared, p, LeaveReason::Panicked);
                self.run(now);
                return Err(SfuError::Panicked(participant));
            }
        };
        // An offer with new ICE credentials restarts ICE (a client whose network changed): str0m answers with
        // new ones of its own, and the client's checks will carry the new ufrag, from wherever it is now.
        let ufrag = p.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != p.ufrag {
            if self.ufrags.get(&ufrag).is_some_and(|id| *id != participant) {
                doom(&mut self.shared, p, LeaveReason::Failed);
                self.run(now);
                return Err(SfuError::Negotiation("ICE ufrag collision".into()));
            }
            let old = std::mem::replace(&mut p.ufrag, ufrag.clone());
            self.ufrags.remove(&old);
            self.ufrags.insert(ufrag, participant);
            info!(parent: &p.span, "ICE restart");
        }
        mark_dirty(&mut self.shared, p);
        Ok(Reply::Answer(answer.to_sdp_string()))
    }

    /// Poll one participant's str0m instance until it returns a timeout.
    pub(super) fn drain(&mut self, pid: ParticipantId, now: Instant) {
        let Some(p) = self.participants.get_mut(&pid) else {
            return;
        };
        p.dirty = false;
        if p.doomed.is_some() {
            return;
        }
        let shared = &mut self.shared;
        // The first drain after the offer scans it even if it has no m-line (data channels only).
        let mut media_changed = !p.scanned;
        let mut timed_out = false;
        for _ in 0..100_000 {
            let out = match guard(|| p.rtc.poll_output()) {
                None => {
                    doom(shared, p, LeaveReason::Panicked);
                    return;
                }
                Some(Err(e)) => {
                    warn!(parent: &p.span, error = %e, "str0m failed");
                    doom(shared, p, LeaveReason::Failed);
                    return;
                }
                Some(Ok(o)) => o,
            };
            match out {
                RtcOutput::Timeout(t) => {
                    let t = if p.connected { t } else { t.min(p.connect_deadline) };
                    if p.timer != Some(t) {
                        p.timer = Some(t);
                        shared.heap.push(Reverse((t, pid)));
                    }
                    timed_out = true;
                    break;
                }
                RtcOutput::Transmit(t) => {
                    let proto = transport_of(t.proto);
                    if !p.addrs.contains(&(proto, t.destination)) {
                        learn_address(&mut self.addrs, p, (proto, t.destination));
                    }
                    shared.transmits.push_back(Transmit {
                        proto,
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    })
                }
                RtcOutput::Event(e) => {
                    if let Err(reason) = on_rtc_event(p, shared, now, e, &mut media_changed) {
                        doom(shared, p, reason);
                        return;
                    }
                }
            }
        }
        if !timed_out {
            // Output bound reached (a flood of work): continue at the next timeout instead of starving others.
            p.timer = Some(now);
            shared.heap.push(Reverse((now, pid)));
        }
        if !guard(|| p.rtc.is_alive()).unwrap_or(false) {
            doom(shared, p, LeaveReason::Disconnected);
            return;
        }
        // Backpressure safety net: retry queued file data whenever this participant was polled.
        if !p.file_out.is_empty() {
            flush_file_out(p, shared);
        }
        if media_changed {
            rescan_media(p, shared);
            shared.work.push_back(Work::Reassign { room: p.room });
        }
    }
}

/// Handle one event of a participant's str0m instance. `Err` ends the participant.
fn on_rtc_event(
    p: &mut Participant,
    shared: &mut Shared,
    now: Instant,
    e: RtcEvent,
    media_changed: &mut bool,
) -> Result<(), LeaveReason> {
    match e {
        RtcEvent::Connected => {
            p.connected = true;
            info!(parent: &p.span, "connected");
            shared.events.push_back(Event::ParticipantConnected {
                room: p.room,
                participant: p.id,
            });
        }
        RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            return Err(LeaveReason::Disconnected);
        }
        RtcEvent::Closed => return Err(LeaveReason::Disconnected),
        RtcEvent::MediaAdded(m) => {
            if !p.mids.contains(&m.mid) {
                p.mids.push(m.mid);
            }
            *media_changed = true;
        }
        RtcEvent::MediaChanged(_) => *media_changed = true,
        RtcEvent::PeerStats(st) => shared.events.push_back(Event::ParticipantStats {
            room: p.room,
            participant: p.id,
            stats: crate::ParticipantStats {
                rtt: st.rtt,
                egress_loss_ppm: st.egress_loss_fraction.map(loss_ppm),
                ingress_loss_ppm: st.ingress_loss_fraction.map(loss_ppm),
                bwe_bps: st.bwe_tx.map(|b| b.as_u64()),
                // Counted by this side's `Rtc`: rx is what the participant sent us (str0m's field docs have
                // the two words swapped; its code counts received datagrams as rx).
                bytes_in: st.bytes_rx,
                bytes_out: st.bytes_tx,
            },
        }),
        RtcEvent::RtpPacket(pkt) => on_rtp(p, shared, now, pkt),
        RtcEvent::KeyframeRequest(r) => {
            shared.work.push_back(Work::KeyframeRequest {
                subscriber: p.id,
                mid: r.mid,
            });
        }
        RtcEvent::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
            p.bwe_bps = estimate.as_u64();
        }
        RtcEvent::ChannelOpen(id, label) => data::on_channel_open(p, shared, id, &label),
        RtcEvent::ChannelData(d) => data::on_channel_data(p, shared, d),
        RtcEvent::ChannelClose(id) => data::on_channel_close(p, id),
        RtcEvent::ChannelBufferedAmountLow(id) if p.file_ch == Some(id) => flush_file_out(p, shared),
        _ => {}
    }
    Ok(())
}
