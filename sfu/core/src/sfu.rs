//! The [`Sfu`] state machine.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::format::PayloadParams;
use str0m::media::{Mid, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Input, Output as RtcOutput, Rtc};
use tracing::{debug, info, warn};

use crate::codec::is_keyframe_start;
use crate::rewrite::Rewriter;
use crate::stun;
use crate::types::*;
use crate::wire::FileMessage;

mod data;
mod keyframe;
mod simulcast;
mod speaking;

use data::{FileIn, flush_file_out};
use simulcast::{Layer, LayerSnapshot, MAX_LAYERS};

/// Datagrams larger than this are dropped before any parsing.
const MAX_DATAGRAM: usize = 2048;
/// Remote addresses remembered per participant (ICE may try several).
const MAX_ADDRS_PER_PARTICIPANT: usize = 4;
/// Bound on internal work per input, so a bug can never hang the shard.
const MAX_STEPS_PER_INPUT: usize = 1_000_000;

/// One published m-line (the client sends on it).
#[derive(Debug)]
struct Track {
    mid: Mid,
    kind: MediaKind,
    layers: Vec<Layer>,
    /// Cached payload parameters of the last payload type seen.
    pt_cache: Option<PayloadParams>,
}

/// One m-line the server sends on to this client (a receive slot of the client).
#[derive(Debug)]
struct Slot {
    mid: Mid,
    kind: MediaKind,
    /// The publisher track forwarded here: (publisher, its mid).
    source: Option<(ParticipantId, Mid)>,
    rewriter: Rewriter,
    /// Layer currently forwarded (`Some(None)`: the non-simulcast stream).
    current_rid: Option<Option<Rid>>,
    /// Video: nothing is forwarded until a keyframe of the selected layer.
    waiting_keyframe: bool,
    /// Incoming payload type → outgoing payload type.
    pt_map: Option<(u8, u8)>,
    /// When the forwarded layer last changed (simulcast hysteresis).
    switched_at: Option<Instant>,
}

struct Participant {
    id: ParticipantId,
    room: RoomId,
    role: Role,
    rtc: Box<Rtc>,
    span: tracing::Span,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    /// The time of this participant's valid entry in the timer heap.
    timer: Option<Instant>,
    dirty: bool,
    doomed: Option<LeaveReason>,
    connected: bool,
    mids: Vec<Mid>,
    tracks: Vec<Track>,
    slots: Vec<Slot>,
    /// Published mid → subscriber slots it feeds.
    routes: HashMap<Mid, Vec<(ParticipantId, Mid)>>,
    publish_muted: [bool; 2],
    receive_paused: [bool; 2],
    bwe_bps: u64,
    text_ch: Option<ChannelId>,
    file_ch: Option<ChannelId>,
    file_in: FileIn,
    file_out: VecDeque<(bool, Vec<u8>)>,
    file_out_bytes: usize,
    speaking: bool,
    last_loud: Option<Instant>,
    /// Receive slots missing at the last [`Event::RenegotiationNeeded`] (audio, video).
    missing: (usize, usize),
    /// Whether the media of the accepted offer has been scanned (slots known).
    scanned: bool,
    /// Deadline to get connected.
    connect_deadline: Instant,
}

fn kind_index(k: MediaKind) -> usize {
    match k {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}

struct Room {
    /// Members in join order.
    members: Vec<ParticipantId>,
}

/// Deferred cross-participant work, produced while draining one participant.
#[allow(clippy::large_enum_variant)] // `Rtp` is the hot variant: boxing it would allocate per packet
enum Work {
    Rtp {
        from: ParticipantId,
        mid: Mid,
        rid: Option<Rid>,
        kind: MediaKind,
        params: PayloadParams,
        keyframe: Option<bool>,
        layers: LayerSnapshot,
        pkt: RtpPacket,
    },
    KeyframeRequest {
        subscriber: ParticipantId,
        mid: Mid,
    },
    Text {
        from: ParticipantId,
        binary: bool,
        data: Vec<u8>,
    },
    File {
        from: ParticipantId,
        binary: bool,
        data: Vec<u8>,
    },
    Reassign {
        room: RoomId,
    },
}

/// Queues shared by all participants (split from the participant map so both can be borrowed at once).
#[derive(Default)]
struct Shared {
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    work: VecDeque<Work>,
    dirty: Vec<ParticipantId>,
    doomed: Vec<ParticipantId>,
    heap: BinaryHeap<Reverse<(Instant, ParticipantId)>>,
    stats: SfuStats,
    /// Copy of `SfuConfig::keyframe_throttle` for the per-packet path.
    keyframe_throttle: Duration,
}

/// A loss fraction (0..=1) in parts per million, clamped.
fn loss_ppm(fraction: f32) -> u32 {
    // Clamped to 0..=1e6 first, so the cast cannot truncate.
    (fraction.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
}

/// Run `f`, converting a panic into `None`.
///
/// `AssertUnwindSafe` is sound here: when a participant's str0m instance panics mid-call, that instance
/// (and our per-participant state borrowed in `f`) may be inconsistent, and we never use it again: the
/// participant is marked doomed and removed. Shared queues are only appended to by whole items.
fn guard<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// A selective forwarding unit for one shard: rooms, participants (one str0m `Rtc` each), forwarding.
///
/// # Call order
/// 1. [`Sfu::new`] once.
/// 2. Feed inputs as they happen, each with the current time: [`Sfu::handle_datagram`] for every UDP datagram
///    received on one of `SfuConfig::local_addrs`, [`Sfu::handle_command`] for signalling requests (it replies
///    synchronously, e.g. with the SDP answer), and [`Sfu::handle_timeout`] when the last returned timeout is
///    reached.
/// 3. After **every** input, call [`Sfu::poll_output`] until it returns [`Output::Timeout`]: send each
///    [`Output::Transmit`], hand each [`Output::Event`] to the embedder, then wait for the next input or for
///    the timeout instant (`None`: no timer, wait for input).
///
/// `now` must never go backwards. The `Sfu` never reads a clock, opens a socket or spawns a thread.
pub struct Sfu {
    config: SfuConfig,
    filter: Box<dyn TextFilter>,
    rooms: HashMap<RoomId, Room>,
    participants: HashMap<ParticipantId, Participant>,
    addrs: HashMap<SocketAddr, ParticipantId>,
    ufrags: HashMap<String, ParticipantId>,
    shared: Shared,
    /// Reused buffer of routes for one packet (no allocation per packet).
    scratch_routes: Vec<(ParticipantId, Mid)>,
    speaking: Vec<ParticipantId>,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// A new SFU with no rooms, relaying in-call text unchanged (see [`Sfu::with_filter`]).
    pub fn new(config: SfuConfig) -> Self {
        Self::with_filter(config, Box::new(NoFilter))
    }

    /// A new SFU whose in-call text and file names pass through `filter`.
    pub fn with_filter(config: SfuConfig, filter: Box<dyn TextFilter>) -> Self {
        let keyframe_throttle = config.keyframe_throttle;
        Sfu {
            config,
            filter,
            rooms: HashMap::new(),
            participants: HashMap::new(),
            addrs: HashMap::new(),
            ufrags: HashMap::new(),
            shared: Shared {
                keyframe_throttle,
                ..Shared::default()
            },
            scratch_routes: Vec::with_capacity(16),
            speaking: Vec::new(),
        }
    }

    /// Counters and gauges.
    pub fn stats(&self) -> SfuStats {
        let mut s = self.shared.stats;
        s.rooms = self.rooms.len();
        s.participants = self.participants.len();
        s.addresses = self.addrs.len();
        s.ufrags = self.ufrags.len();
        s.timers = self.shared.heap.len();
        s
    }

    /// Test hook: make the next operation on `participant` panic inside the participant guard, as a panic in
    /// its str0m instance would. The participant is removed with [`LeaveReason::Panicked`]; nothing else is
    /// affected. Not for production use.
    #[doc(hidden)]
    pub fn inject_participant_panic(&mut self, now: Instant, participant: ParticipantId) {
        let Some(p) = self.participants.get_mut(&participant) else {
            return;
        };
        if guard(|| panic!("injected participant panic")).is_none() {
            doom(&mut self.shared, p, LeaveReason::Panicked);
        }
        self.run(now);
    }

    /// Members of a room in join order (empty if there is no such room).
    pub fn room_members(&self, room: RoomId) -> Vec<ParticipantId> {
        self.rooms.get(&room).map(|r| r.members.clone()).unwrap_or_default()
    }

    /// The next output. Call until it returns [`Output::Timeout`] after every input.
    pub fn poll_output(&mut self) -> Output {
        if let Some(t) = self.shared.transmits.pop_front() {
            self.shared.stats.packets_out += 1;
            self.shared.stats.bytes_out += t.contents.len() as u64;
            return Output::Transmit(t);
        }
        if let Some(e) = self.shared.events.pop_front() {
            return Output::Event(e);
        }
        // The earliest valid timer; stale heap entries are dropped on the way.
        while let Some(Reverse((t, pid))) = self.shared.heap.peek().copied() {
            match self.participants.get(&pid) {
                Some(p) if p.timer == Some(t) => {
                    // A speaker must be timed out even if str0m sleeps longer.
                    let t = self.speaking_deadline().map_or(t, |s| s.min(t));
                    return Output::Timeout(Some(t));
                }
                _ => {
                    self.shared.heap.pop();
                }
            }
        }
        Output::Timeout(self.speaking_deadline())
    }

    fn announced(&self, to: SocketAddr) -> SocketAddr {
        let addrs = &self.config.local_addrs;
        if addrs.contains(&to) {
            return to;
        }
        addrs
            .iter()
            .find(|a| a.port() == to.port())
            .or(addrs.first())
            .copied()
            .unwrap_or(to)
    }

    /// A UDP datagram `data` arrived from `from` on our local address `to`.
    ///
    /// `to` may be the socket's bound address rather than the announced one (a socket bound to `0.0.0.0`,
    /// or behind NAT): a `to` that is not one of `SfuConfig::local_addrs` is taken as the announced address
    /// with the same port (else the first), since str0m only answers on its own candidates.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let to = self.announced(to);
        let stats = &mut self.shared.stats;
        stats.packets_in += 1;
        stats.bytes_in += data.len() as u64;
        if data.len() > MAX_DATAGRAM {
            stats.drops.oversized += 1;
            return;
        }
        if data.is_empty() {
            stats.drops.malformed += 1;
            return;
        }
        // Demultiplex first (cheap): a known address, or a STUN request naming a participant's ufrag.
        let (pid, new_addr) = match self.addrs.get(&from) {
            Some(pid) => (*pid, false),
            None => {
                if !stun::is_stun(data) {
                    stats.drops.unknown_address += 1;
                    return;
                }
                let Some(pid) = stun::local_ufrag(data).and_then(|u| self.ufrags.get(u)).copied() else {
                    stats.drops.stun_unknown_user += 1;
                    return;
                };
                (pid, true)
            }
        };
        let Ok(contents) = DatagramRecv::try_from(data) else {
            stats.drops.malformed += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: to,
                contents,
            },
        );
        if new_addr {
            let Some(p) = self.participants.get_mut(&pid) else {
                stats.drops.stun_unknown_user += 1;
                return;
            };
            if !guard(|| p.rtc.accepts(&input)).unwrap_or(false) {
                stats.drops.rejected += 1;
                return;
            }
            // The address is not learnt here: only when str0m answers the request (see `learn_address`),
            // i.e. after it verified the STUN message integrity with the ICE password. A forged request
            // that merely names a ufrag cannot redirect or claim a participant's address.
        }
        let Some(p) = self.participants.get_mut(&pid) else {
            self.shared.stats.drops.unknown_address += 1;
            return;
        };
        match guard(|| p.rtc.handle_input(input)) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.shared.stats.drops.rejected += 1;
                debug!(parent: &p.span, error = %e, "datagram refused");
            }
            None => doom(&mut self.shared, p, LeaveReason::Panicked),
        }
        mark_dirty(&mut self.shared, p);
        self.run(now);
    }

    /// Time has reached the last timeout returned by [`Sfu::poll_output`] (calling it early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, pid))) = self.shared.heap.peek().copied() {
            if t > now {
                break;
            }
            self.shared.heap.pop();
            let Some(p) = self.participants.get_mut(&pid) else {
                continue;
            };
            if p.timer != Some(t) {
                continue;
            }
            p.timer = None;
            if !p.connected && now >= p.connect_deadline {
                info!(parent: &p.span, "not connected in time");
                doom(&mut self.shared, p, LeaveReason::Disconnected);
                continue;
            }
            match guard(|| p.rtc.handle_input(Input::Timeout(now))) {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    warn!(parent: &p.span, error = %e, "timeout handling failed");
                    doom(&mut self.shared, p, LeaveReason::Failed);
                }
                None => doom(&mut self.shared, p, LeaveReason::Panicked),
            }
            mark_dirty(&mut self.shared, p);
        }
        self.expire_speakers(now);
        self.run(now);
    }

    /// Apply a command from the embedder.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) -> Result<Reply, SfuError> {
        let reply = match cmd {
            Command::CreateRoom { room } => {
                if self.rooms.contains_key(&room) {
                    return Err(SfuError::RoomExists(room));
                }
                if self.rooms.len() >= self.config.max_rooms {
                    return Err(SfuError::TooManyRooms);
                }
                self.rooms.insert(room, Room { members: Vec::new() });
                info!(%room, "room created");
                Reply::Done
            }
            Command::CloseRoom { room } => {
                let Some(r) = self.rooms.get(&room) else {
                    return Err(SfuError::NoSuchRoom(room));
                };
                for pid in r.members.clone() {
                    self.remove_participant(pid, LeaveReason::Removed);
                }
                self.rooms.remove(&room);
                self.filter.room_closed(room);
                info!(%room, "room closed");
                Reply::Done
            }
            Command::AddParticipant {
                room,
                participant,
                role,
                offer,
            } => self.add_participant(now, room, participant, role, &offer)?,
            Command::Renegotiate { participant, offer } => {
                let offer = SdpOffer::from_sdp_string(&offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
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
                mark_dirty(&mut self.shared, p);
                Reply::Answer(answer.to_sdp_string())
            }
            Command::RemoveParticipant { participant } => {
                if !self.participants.contains_key(&participant) {
                    return Err(SfuError::NoSuchParticipant(participant));
                }
                self.remove_participant(participant, LeaveReason::Removed);
                Reply::Done
            }
            Command::SetPublishMuted {
                participant,
                kind,
                muted,
            } => {
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
                Reply::Done
            }
            Command::SetRole { participant, role } => {
                let p = self
                    .participants
                    .get_mut(&participant)
                    .ok_or(SfuError::NoSuchParticipant(participant))?;
                if p.role != role {
                    info!(%participant, from = p.role.as_str(), to = role.as_str(), whisper = matches!(role, Role::Supervisor { whisper: true }), "role changed");
                    p.role = role;
                    let room = p.room;
                    self.reassign(now, room);
                }
                Reply::Done
            }
            Command::SetReceivePaused {
                participant,
                kind,
                paused,
            } => {
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
                Reply::Done
            }
        };
        self.run(now);
        Ok(reply)
    }

    fn add_participant(
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
    fn remove_participant(&mut self, id: ParticipantId, reason: LeaveReason) {
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
        self.speaking.retain(|s| *s != id);
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

    /// Drain dirty participants and deferred work until quiet, then remove doomed participants.
    fn run(&mut self, now: Instant) {
        let mut steps = 0usize;
        loop {
            steps += 1;
            if steps > MAX_STEPS_PER_INPUT {
                warn!("work bound reached; deferring the rest to the next input");
                break;
            }
            if let Some(pid) = self.shared.dirty.pop() {
                self.drain(pid, now);
                continue;
            }
            if let Some(w) = self.shared.work.pop_front() {
                self.process(w, now);
                continue;
            }
            if let Some(pid) = self.shared.doomed.pop() {
                let reason = self
                    .participants
                    .get(&pid)
                    .and_then(|p| p.doomed)
                    .unwrap_or(LeaveReason::Failed);
                if reason == LeaveReason::Panicked {
                    self.shared.stats.panics += 1;
                }
                self.remove_participant(pid, reason);
                continue;
            }
            break;
        }
        // Keep the lazily-deleted heap bounded.
        if self.shared.heap.len() > 4 * self.participants.len() + 64 {
            let participants = &self.participants;
            self.shared
                .heap
                .retain(|Reverse((t, pid))| participants.get(pid).is_some_and(|p| p.timer == Some(*t)));
        }
    }

    /// Poll one participant's str0m instance until it returns a timeout.
    fn drain(&mut self, pid: ParticipantId, now: Instant) {
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
                    if !p.addrs.contains(&t.destination) {
                        learn_address(&mut self.addrs, p, t.destination);
                    }
                    shared.transmits.push_back(Transmit {
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

    fn process(&mut self, w: Work, now: Instant) {
        match w {
            Work::Rtp {
                from,
                mid,
                rid,
                kind,
                params,
                keyframe,
                layers,
                pkt,
            } => self.forward(now, from, mid, rid, kind, params, keyframe, layers, pkt),
            Work::KeyframeRequest { subscriber, mid } => self.relay_keyframe_request(now, subscriber, mid),
            Work::Text { from, binary, data } => self.relay_text(from, binary, data),
            Work::File { from, binary, data } => self.relay_file(from, binary, data),
            Work::Reassign { room } => self.reassign(now, room),
        }
    }

    /// Forward one incoming RTP packet to every subscriber slot fed by (from, mid).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        now: Instant,
        from: ParticipantId,
        mid: Mid,
        rid: Option<Rid>,
        kind: MediaKind,
        params: PayloadParams,
        keyframe: Option<bool>,
        layers: LayerSnapshot,
        pkt: RtpPacket,
    ) {
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
                _ => match s.rtc.codec_config().match_params(params) {
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
    fn reassign(&mut self, now: Instant, room: RoomId) {
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
}

/// An ICE-lite str0m instance only ever sends to a remote address that passed a STUN check with its
/// password: from then on datagrams from that address go straight to this participant.
fn learn_address(addrs: &mut HashMap<SocketAddr, ParticipantId>, p: &mut Participant, addr: SocketAddr) {
    if p.addrs.len() >= MAX_ADDRS_PER_PARTICIPANT {
        let old = p.addrs.remove(0);
        if addrs.get(&old) == Some(&p.id) {
            addrs.remove(&old);
        }
    }
    p.addrs.push(addr);
    if let Some(previous) = addrs.insert(addr, p.id)
        && previous != p.id
    {
        // The address moved to another participant (NAT rebinding, port reuse): the new owner proved it.
        debug!(parent: &p.span, %addr, from = %previous, "address taken over");
    }
    debug!(parent: &p.span, %addr, "remote address learnt");
}

fn mark_dirty(shared: &mut Shared, p: &mut Participant) {
    if !p.dirty {
        p.dirty = true;
        shared.dirty.push(p.id);
    }
}

fn doom(shared: &mut Shared, p: &mut Participant, reason: LeaveReason) {
    if p.doomed.is_none() {
        p.doomed = Some(reason);
        shared.doomed.push(p.id);
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
        RtcEvent::ChannelOpen(id, label) => data::on_channel_open(p, id, &label),
        RtcEvent::ChannelData(d) => data::on_channel_data(p, shared, d),
        RtcEvent::ChannelClose(id) => data::on_channel_close(p, id),
        RtcEvent::ChannelBufferedAmountLow(id) if p.file_ch == Some(id) => flush_file_out(p, shared),
        _ => {}
    }
    Ok(())
}

/// Incoming RTP from a publisher: bookkeeping here, forwarding deferred as [`Work::Rtp`].
fn on_rtp(p: &mut Participant, shared: &mut Shared, now: Instant, pkt: RtpPacket) {
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
    shared.work.push_back(Work::Rtp {
        from: p.id,
        mid,
        rid,
        kind,
        params,
        keyframe,
        layers,
        pkt,
    });
}

/// Rebuild a participant's tracks (m-lines it sends on) and slots (m-lines we send on) from its media.
fn rescan_media(p: &mut Participant, shared: &mut Shared) {
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
