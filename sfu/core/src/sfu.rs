//! The [`Sfu`] state machine: its inputs and outputs (in the call order documented on the type), its rooms
//! and participants, the demultiplexing of datagrams to participants, and the work loop that drains
//! participants and runs the deferred work they produce.
//!
//! Each other concern is a private submodule of one job, most of them adding `impl Sfu` blocks; they use
//! the records defined here and never import each other in a circle:
//! - [`participant`]: joining, renegotiation, driving a participant's str0m instance, leaving;
//! - [`forward`]: tracks, receive slots, which track feeds which slot, the per-packet path;
//! - [`simulcast`]: layer bitrates and the choice of a subscriber's layer;
//! - [`keyframe`]: keyframe requests, coalesced and throttled per (track, layer);
//! - [`speaking`]: who is speaking, from audio levels;
//! - [`data`]: the data-channel relay (in-call text and files).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use str0m::channel::ChannelId;
use str0m::format::PayloadParams;
use str0m::media::{Mid, Rid};
use str0m::net::{DatagramRecv, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Input, Rtc};
use tracing::{debug, info, warn};

use crate::stun;
use crate::types::*;

mod data;
mod forward;
mod keyframe;
mod participant;
mod record;
mod simulcast;
mod speaking;

use data::FileIn;
use forward::{Slot, Track};
use simulcast::LayerSnapshot;

/// Datagrams larger than this are dropped before any parsing.
const MAX_DATAGRAM: usize = 2048;
/// Remote addresses remembered per participant (ICE may try several).
const MAX_ADDRS_PER_PARTICIPANT: usize = 4;
/// Bound on internal work per input, so a bug can never hang the shard.
const MAX_STEPS_PER_INPUT: usize = 1_000_000;
/// A connected participant not heard from for this long had its path cut (a browser in a call sends audio
/// every 20 ms and RTCP feedback several times a second). When it is heard again, the video on both sides of
/// the cut restarts on a keyframe at once, instead of when the browser's decoder gives up waiting for the
/// frames lost in the cut (about 3 s in Chrome, after which its own request may be lost too).
const RESUME_AFTER_SILENCE: Duration = Duration::from_secs(1);

/// One conversation's room.
struct Room {
    /// Members in join order.
    members: Vec<ParticipantId>,
    /// Whether the customer's and the agent's media go to the tap (see [`record`]).
    recording: bool,
}

/// One member of a room: its str0m instance and what the SFU keeps about it.
struct Participant {
    id: ParticipantId,
    room: RoomId,
    role: Role,
    rtc: Box<Rtc>,
    span: tracing::Span,
    ufrag: String,
    /// Remote addresses (with their transport) learnt for it, oldest first.
    addrs: Vec<(Transport, SocketAddr)>,
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
    /// When a datagram from this participant last reached it (see [`RESUME_AFTER_SILENCE`]).
    last_heard: Option<Instant>,
    /// Receive slots missing at the last [`Event::RenegotiationNeeded`] (audio, video).
    missing: (usize, usize),
    /// Whether the media of the accepted offer has been scanned (slots known).
    scanned: bool,
    /// Deadline to get connected.
    connect_deadline: Instant,
}

/// The index of `k` in the per-kind arrays (`publish_muted`, `receive_paused`).
fn kind_index(k: MediaKind) -> usize {
    match k {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}

/// One RTP packet from a publisher, with what forwarding and the recording tap need to know about it.
struct IncomingRtp {
    from: ParticipantId,
    mid: Mid,
    rid: Option<Rid>,
    kind: MediaKind,
    params: PayloadParams,
    keyframe: Option<bool>,
    layers: LayerSnapshot,
    pkt: RtpPacket,
}

/// Deferred cross-participant work, produced while draining one participant.
#[allow(clippy::large_enum_variant)] // `Rtp` is the hot variant: boxing it would allocate per packet
enum Work {
    Rtp(IncomingRtp),
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
    /// Participants speaking now (see [`speaking`]).
    speaking: Vec<ParticipantId>,
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
    tap: Box<dyn MediaTap>,
    /// Rooms being recorded (0: the forwarding path skips the tap at once).
    recorded_rooms: usize,
    rooms: HashMap<RoomId, Room>,
    participants: HashMap<ParticipantId, Participant>,
    /// Remote address and transport → participant: a TCP connection and a UDP socket of two different
    /// peers may share an address and port.
    addrs: HashMap<(Transport, SocketAddr), ParticipantId>,
    ufrags: HashMap<String, ParticipantId>,
    shared: Shared,
    /// Reused buffer of routes for one packet (no allocation per packet).
    scratch_routes: Vec<(ParticipantId, Mid)>,
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
            tap: Box::new(NoTap),
            recorded_rooms: 0,
            rooms: HashMap::new(),
            participants: HashMap::new(),
            addrs: HashMap::new(),
            ufrags: HashMap::new(),
            shared: Shared {
                keyframe_throttle,
                ..Shared::default()
            },
            scratch_routes: Vec::with_capacity(16),
        }
    }

    /// Sets where the media of recorded rooms goes (see [`Command::SetRecording`]); by default nowhere.
    pub fn set_tap(&mut self, tap: Box<dyn MediaTap>) {
        self.tap = tap;
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

    /// The announced local address a datagram received on `to` belongs to (see [`Sfu::handle_datagram`]).
    fn announced(&self, proto: Transport, to: SocketAddr) -> SocketAddr {
        let addrs = match proto {
            Transport::Udp => &self.config.local_addrs,
            Transport::Tcp => &self.config.tcp_addrs,
        };
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
        self.handle_receive(now, Transport::Udp, from, to, data);
    }

    /// Whether a participant with this local (server-side) ICE ufrag lives here: how an embedder finds the
    /// shard that owns a new ICE-TCP connection (see [`stun_local_ufrag`]).
    pub fn owns_ufrag(&self, ufrag: &str) -> bool {
        self.ufrags.contains_key(ufrag)
    }

    /// A datagram (UDP), or the payload of one RFC 4571 frame read from a TCP connection (`proto` TCP,
    /// `from` the connection's remote address, `to` its local address), arrived. As for
    /// [`Sfu::handle_datagram`], a `to` that is not one of the announced addresses of its transport
    /// (`SfuConfig::local_addrs`, `SfuConfig::tcp_addrs`) is taken as the announced one with the same port.
    pub fn handle_receive(&mut self, now: Instant, proto: Transport, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let to = self.announced(proto, to);
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
        let (pid, new_addr) = match self.addrs.get(&(proto, from)) {
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
                proto: proto.into(),
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
        let resumed = p.connected && p.last_heard.is_some_and(|t| now >= t + RESUME_AFTER_SILENCE);
        p.last_heard = Some(now);
        match guard(|| p.rtc.handle_input(input)) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.shared.stats.drops.rejected += 1;
                debug!(parent: &p.span, error = %e, "datagram refused");
            }
            None => doom(&mut self.shared, p, LeaveReason::Panicked),
        }
        mark_dirty(&mut self.shared, p);
        if resumed {
            self.resume_video(now, pid);
        }
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
                self.rooms.insert(
                    room,
                    Room {
                        members: Vec::new(),
                        recording: false,
                    },
                );
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
                if self.rooms.remove(&room).is_some_and(|r| r.recording) {
                    self.recorded_rooms = self.recorded_rooms.saturating_sub(1);
                }
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
            Command::Renegotiate { participant, offer } => self.renegotiate(now, participant, &offer)?,
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
                self.set_publish_muted(now, participant, kind, muted)?;
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
            Command::SetTcpCandidates { addrs } => {
                info!(?addrs, "ICE-TCP candidates set");
                self.config.tcp_addrs = addrs;
                Reply::Done
            }
            Command::SetRecording { room, recording } => {
                self.set_recording(now, room, recording)?;
                Reply::Done
            }
            Command::SetReceivePaused {
                participant,
                kind,
                paused,
            } => {
                self.set_receive_paused(now, participant, kind, paused)?;
                Reply::Done
            }
        };
        self.run(now);
        Ok(reply)
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

    /// Run one item of deferred work.
    fn process(&mut self, w: Work, now: Instant) {
        match w {
            Work::Rtp(rtp) => self.forward(now, rtp),
            Work::KeyframeRequest { subscriber, mid } => self.relay_keyframe_request(now, subscriber, mid),
            Work::Text { from, binary, data } => self.relay_text(from, binary, data),
            Work::File { from, binary, data } => self.relay_file(from, binary, data),
            Work::Reassign { room } => self.reassign(now, room),
        }
    }
}

/// An ICE-lite str0m instance only ever sends to a remote address that passed a STUN check with its
/// password: from then on datagrams from that address go straight to this participant.
fn learn_address(
    addrs: &mut HashMap<(Transport, SocketAddr), ParticipantId>,
    p: &mut Participant,
    addr: (Transport, SocketAddr),
) {
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
        debug!(parent: &p.span, addr = %addr.1, proto = addr.0.as_str(), from = %previous, "address taken over");
    }
    debug!(parent: &p.span, addr = %addr.1, proto = addr.0.as_str(), "remote address learnt");
}

/// Queue `p` to be drained (polled until its timeout) by the work loop, once.
fn mark_dirty(shared: &mut Shared, p: &mut Participant) {
    if !p.dirty {
        p.dirty = true;
        shared.dirty.push(p.id);
    }
}

/// Mark `p` for removal with `reason` (the first reason wins); the work loop removes it.
fn doom(shared: &mut Shared, p: &mut Participant, reason: LeaveReason) {
    if p.doomed.is_none() {
        p.doomed = Some(reason);
        shared.doomed.push(p.id);
    }
}
