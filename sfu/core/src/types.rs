//! The vocabulary of the core: ids, roles, commands, replies, events, outputs, configuration, errors, stats.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A room: one per conversation. The embedder chooses the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub u64);

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "room-{}", self.0)
    }
}

/// A participant of one room (one browser peer connection). Unique per [`crate::Sfu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p-{}", self.0)
    }
}

/// What a participant may send and receive in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The website visitor: publishes and receives everything the agent publishes.
    Visitor,
    /// The contact-centre agent: publishes and receives everything the visitor publishes.
    Agent,
    /// A supervisor: receives everything, publishes nothing to the visitor. With `whisper`, its audio
    /// (and its in-call text) reaches the agents only.
    Supervisor {
        /// Whether the supervisor's audio goes to the agents.
        whisper: bool,
    },
}

impl Role {
    /// Whether media of `kind` published by `self` is forwarded to a subscriber of role `to`.
    pub fn forwards_to(self, to: Role, kind: MediaKind) -> bool {
        match self {
            Role::Visitor | Role::Agent => true,
            Role::Supervisor { whisper } => whisper && kind == MediaKind::Audio && to == Role::Agent,
        }
    }

    /// Whether in-call text (and files) sent by `self` reach a member of role `to`.
    pub fn texts_to(self, to: Role) -> bool {
        match self {
            Role::Visitor | Role::Agent => true,
            // A supervisor never talks to the visitor; it may coach the agent.
            Role::Supervisor { .. } => to == Role::Agent,
        }
    }

    /// A short name for logs and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Visitor => "visitor",
            Role::Agent => "agent",
            Role::Supervisor { .. } => "supervisor",
        }
    }
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Audio (Opus, or any negotiated audio codec, passed through).
    Audio,
    /// Video (VP8, H.264, or any negotiated video codec, passed through).
    Video,
}

impl From<str0m::media::MediaKind> for MediaKind {
    fn from(k: str0m::media::MediaKind) -> Self {
        match k {
            str0m::media::MediaKind::Audio => MediaKind::Audio,
            str0m::media::MediaKind::Video => MediaKind::Video,
        }
    }
}

/// A command from the embedder (signalling) to the SFU.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Command {
    /// Open a room. Fails if it exists or the room limit is reached.
    CreateRoom {
        /// The new room.
        room: RoomId,
    },
    /// Close a room and disconnect all its participants.
    CloseRoom {
        /// The room to close.
        room: RoomId,
    },
    /// Add a participant with the browser's SDP offer; replies [`Reply::Answer`].
    AddParticipant {
        /// The room to join (must exist).
        room: RoomId,
        /// The new participant's id (unique in this `Sfu`).
        participant: ParticipantId,
        /// What it may send and receive.
        role: Role,
        /// The client's SDP offer.
        offer: String,
    },
    /// A new offer from an existing participant (adding video, answering [`Event::RenegotiationNeeded`]).
    /// Replies [`Reply::Answer`].
    Renegotiate {
        /// Who offers.
        participant: ParticipantId,
        /// The client's SDP offer.
        offer: String,
    },
    /// Remove a participant and free all its state.
    RemoveParticipant {
        /// Who leaves.
        participant: ParticipantId,
    },
    /// Stop (or resume) forwarding what a participant publishes of one kind (server-side mute).
    SetPublishMuted {
        /// The publisher.
        participant: ParticipantId,
        /// Audio or video.
        kind: MediaKind,
        /// Muted or not.
        muted: bool,
    },
    /// Change what a participant may send and receive (a supervisor starting or stopping a whisper).
    /// Routes are recomputed at once: a member that now needs more receive slots gets
    /// [`Event::RenegotiationNeeded`]; slots whose source is no longer allowed stop at once.
    SetRole {
        /// Who.
        participant: ParticipantId,
        /// The new role.
        role: Role,
    },
    /// Set the passive ICE-TCP candidates put in later answers (the public address of the HTTPS port or
    /// of `[media] tcp_listen`); empty: UDP only. Participants already answered keep theirs.
    SetTcpCandidates {
        /// Addresses browsers connect to over TCP.
        addrs: Vec<SocketAddr>,
    },
    /// Start (or stop) handing the media the room's customer and agent publish to the [`MediaTap`] (call
    /// recording). Starting asks every video publisher of the room for a keyframe at once, so the recording
    /// can begin with a decodable picture.
    SetRecording {
        /// The room.
        room: RoomId,
        /// Tap its media or not.
        recording: bool,
    },
    /// Stop (or resume) sending one kind of media to a participant (e.g. video off to save bandwidth).
    SetReceivePaused {
        /// The subscriber.
        participant: ParticipantId,
        /// Audio or video.
        kind: MediaKind,
        /// Paused or not.
        paused: bool,
    },
}

/// The synchronous reply to a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// Done, nothing to return.
    Done,
    /// The SDP answer to send back to the client.
    Answer(String),
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaveReason {
    /// Removed by a command (or its room was closed).
    Removed,
    /// ICE disconnected or DTLS closed: the peer went away.
    Disconnected,
    /// str0m reported a fatal error for this peer.
    Failed,
    /// A panic inside this participant's str0m instance was caught; only this participant ended.
    Panicked,
}

/// Something that happened, for the embedder.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// ICE and DTLS are up for this participant.
    ParticipantConnected {
        /// Its room.
        room: RoomId,
        /// Who.
        participant: ParticipantId,
    },
    /// The participant is gone and all its state freed.
    ParticipantLeft {
        /// Its room.
        room: RoomId,
        /// Who.
        participant: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A participant negotiated a new m-line it publishes on.
    MediaAdded {
        /// Its room.
        room: RoomId,
        /// Who publishes.
        participant: ParticipantId,
        /// Audio or video.
        kind: MediaKind,
    },
    /// The participant lacks receive slots for what it should receive: the client should send a new offer
    /// (`Command::Renegotiate`) with at least this many audio and video m-lines the server may send on.
    RenegotiationNeeded {
        /// Its room.
        room: RoomId,
        /// Who should re-offer.
        participant: ParticipantId,
        /// Audio m-lines needed in total.
        audio: usize,
        /// Video m-lines needed in total.
        video: usize,
    },
    /// A keyframe request went upstream to a publisher.
    KeyframeRequested {
        /// Its room.
        room: RoomId,
        /// The publisher asked.
        publisher: ParticipantId,
    },
    /// Periodic connection figures of a participant (see [`SfuConfig::stats_interval`]).
    ParticipantStats {
        /// Its room.
        room: RoomId,
        /// Who.
        participant: ParticipantId,
        /// The figures.
        stats: ParticipantStats,
    },
    /// Voice activity of a publisher changed.
    Speaking {
        /// Its room.
        room: RoomId,
        /// Who.
        participant: ParticipantId,
        /// Speaking now or not.
        speaking: bool,
    },
    /// In-call text was filtered by the [`TextFilter`] and relayed; `text` is the filtered text.
    TextRelayed {
        /// Its room.
        room: RoomId,
        /// The author.
        from: ParticipantId,
        /// The text after the filter (masked).
        text: String,
        /// Stricter versions of the author's earlier in-call texts (already relayed as they were): a number
        /// split across messages, completed by this one. For the record (the transcript), not the wire.
        amended: Vec<TextAmendment>,
    },
    /// A file passed the policy and its hash check and was relayed in full.
    FileTransferred {
        /// Its room.
        room: RoomId,
        /// The sender.
        from: ParticipantId,
        /// The file name after the filter.
        name: String,
        /// Size in bytes.
        size: u64,
        /// Declared media type.
        mime: String,
        /// SHA-256 of the bytes relayed (computed by the SFU while relaying; equal to the declared one),
        /// lowercase hex.
        sha256: String,
    },
    /// A data channel with a label other than `text` and `file` was opened: the SFU sent an error on it
    /// and closed it.
    DataChannelRefused {
        /// Its room.
        room: RoomId,
        /// Who opened it.
        participant: ParticipantId,
        /// The label (at most 64 bytes of it).
        label: String,
    },
    /// A file transfer was refused or aborted.
    FileRejected {
        /// Its room.
        room: RoomId,
        /// The sender.
        from: ParticipantId,
        /// Why, in a few words.
        reason: String,
    },
}

/// How a datagram travels: a UDP datagram, or one RFC 4571 frame on an ICE-TCP connection.
///
/// The core never touches a socket: the embedder says on which transport each input arrived, and sends
/// each [`Transmit`] on the transport it names (for TCP: framed, on the connection whose remote address is
/// the destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// One RFC 4571 frame (2-byte big-endian length, then the packet) on a TCP connection.
    Tcp,
}

impl Transport {
    /// A short name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

impl From<Transport> for str0m::net::Protocol {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Udp => str0m::net::Protocol::Udp,
            Transport::Tcp => str0m::net::Protocol::Tcp,
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// UDP, or one RFC 4571 frame on the TCP connection to `destination`.
    pub proto: Transport,
    /// Our local address to send from (one of [`SfuConfig::local_addrs`]).
    pub source: SocketAddr,
    /// The peer's address.
    pub destination: SocketAddr,
    /// The datagram.
    pub contents: Vec<u8>,
}

/// What [`crate::Sfu::poll_output`] returns.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Hand this event to the embedder.
    Event(Event),
    /// Nothing more now: call [`crate::Sfu::handle_timeout`] at this instant, or on the next input if sooner.
    /// `None`: no timer is armed (no participants); wait for input.
    Timeout(Option<Instant>),
}

/// The codec of a tapped packet, as negotiated for its payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapCodec {
    /// Opus audio (48 kHz RTP clock).
    Opus,
    /// VP8 video (90 kHz RTP clock).
    Vp8,
    /// H.264 video (90 kHz RTP clock).
    H264,
    /// Anything else (VP9, AV1, G.711…).
    Other,
}

/// One RTP packet of a recorded room, as it arrived (decrypted, before any rewriting), for a [`MediaTap`].
#[derive(Debug, Clone)]
pub struct TappedPacket {
    /// The room.
    pub room: RoomId,
    /// The publisher.
    pub participant: ParticipantId,
    /// Its role (visitor or agent; supervisors are not recorded).
    pub role: Role,
    /// Audio or video.
    pub kind: MediaKind,
    /// Which of the publisher's tracks of this kind, in the order they appeared (0: the first, e.g. the
    /// camera; 1: the next, e.g. a shared screen). Of a simulcast track only one layer is tapped.
    pub track: u8,
    /// The codec of its payload type.
    pub codec: TapCodec,
    /// When it arrived (the `now` of the input that carried it).
    pub arrived: Instant,
    /// The RTP timestamp.
    pub rtp_time: u32,
    /// The extended (rollover-counted) sequence number.
    pub seq: u64,
    /// The RTP marker bit (end of a video frame).
    pub marker: bool,
    /// The RTP payload (codec payload descriptor included), shared with the forwarding path (no copy).
    pub payload: std::sync::Arc<[u8]>,
}

/// Where the media of recorded rooms goes (see [`Command::SetRecording`]). Called on the forwarding path:
/// an implementation must return at once (hand the packet to another thread, or drop and count it).
pub trait MediaTap: Send {
    /// A packet of a recorded room arrived.
    fn packet(&mut self, packet: TappedPacket);
}

/// A tap that drops everything (no recording).
#[derive(Debug, Default)]
pub struct NoTap;

impl MediaTap for NoTap {
    fn packet(&mut self, _packet: TappedPacket) {}
}

/// The hook through which every in-call text (and file name) passes before anyone else sees it.
/// The binary wires it to the signalling masker.
pub trait TextFilter: Send {
    /// Return the text to relay in place of `text`.
    fn filter(&mut self, room: RoomId, from: ParticipantId, text: &str) -> String;

    /// The text to relay in place of `text`, and stricter versions of the author's earlier texts (a
    /// filter that keeps state across messages, e.g. for a number split over two). The SFU relays the text
    /// and reports both in [`Event::TextRelayed`]. By default [`TextFilter::filter`], amending nothing.
    fn filter_text(&mut self, room: RoomId, from: ParticipantId, text: &str) -> FilteredText {
        FilteredText {
            text: self.filter(room, from, text),
            amended: Vec::new(),
        }
    }

    /// Return the file name to relay in place of `name` (a file header's). By default the text filter;
    /// an embedder may also clean the name (path components, invisible and bidirectional characters).
    fn filter_name(&mut self, room: RoomId, from: ParticipantId, name: &str) -> String {
        self.filter(room, from, name)
    }

    /// The room is closed: forget any state kept for it.
    fn room_closed(&mut self, _room: RoomId) {}
}

/// What a [`TextFilter`] made of one in-call text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilteredText {
    /// The text to relay.
    pub text: String,
    /// Stricter versions of the author's earlier texts.
    pub amended: Vec<TextAmendment>,
}

/// A stricter version of one of an author's earlier in-call texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextAmendment {
    /// Which text: 1 is the author's previous in-call text in this room, 2 the one before, and so on.
    pub back: usize,
    /// Its new text.
    pub text: String,
}

/// A filter that changes nothing (for embedders without masking, and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFilter;

impl TextFilter for NoFilter {
    fn filter(&mut self, _room: RoomId, _from: ParticipantId, text: &str) -> String {
        text.to_owned()
    }
}

/// File-transfer policy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FilePolicy {
    /// Largest file accepted, in bytes.
    pub max_size: u64,
    /// Accepted media types; an entry ending in `/*` accepts a whole family. Empty: refuse all files.
    pub allowed_types: Vec<String>,
    /// Largest chunk accepted, in bytes.
    pub max_chunk: usize,
}

impl Default for FilePolicy {
    fn default() -> Self {
        FilePolicy {
            max_size: 10 * 1024 * 1024,
            allowed_types: vec![
                "image/*".into(),
                "application/pdf".into(),
                "text/plain".into(),
                "application/octet-stream".into(),
            ],
            max_chunk: 64 * 1024,
        }
    }
}

impl FilePolicy {
    /// Whether `mime` is accepted.
    pub fn allows_type(&self, mime: &str) -> bool {
        let mime = mime.trim().to_ascii_lowercase();
        self.allowed_types.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            match a.strip_suffix("/*") {
                Some(family) => mime.split('/').next() == Some(family) && mime.contains('/'),
                None => a == mime,
            }
        })
    }
}

/// Configuration of one [`crate::Sfu`] (one shard).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SfuConfig {
    /// The UDP addresses this shard is reachable at, announced as host candidates (the only candidates
    /// ever given out). At least one.
    pub local_addrs: Vec<SocketAddr>,
    /// Passive ICE-TCP candidates announced after the UDP ones, at a lower priority (so UDP wins where it
    /// works): the public address where the embedder accepts TCP connections carrying RFC 4571 frames.
    /// Empty (the default): UDP only. Also settable later with [`Command::SetTcpCandidates`].
    pub tcp_addrs: Vec<SocketAddr>,
    /// Maximum rooms in this shard.
    pub max_rooms: usize,
    /// Maximum participants per room.
    pub max_participants_per_room: usize,
    /// Minimum time between two keyframe requests sent upstream for one (track, layer).
    pub keyframe_throttle: Duration,
    /// A participant whose ICE/DTLS is not up this long after its answer is removed
    /// ([`LeaveReason::Disconnected`]), so an abandoned offer never holds resources.
    pub connect_timeout: Duration,
    /// Initial bandwidth estimate per subscriber, in bits per second.
    pub initial_bitrate_bps: u64,
    /// Largest in-call text message accepted, in bytes.
    pub max_text_len: usize,
    /// File transfer policy.
    pub files: FilePolicy,
    /// How often each participant reports [`Event::ParticipantStats`]; `None`: never.
    pub stats_interval: Option<Duration>,
    /// Pace forwarded video to each subscriber at its bandwidth estimate (str0m's leaky-bucket pacer), as a
    /// browser paces what it encodes. Off by default: a forwarded frame leaves as it arrived (the publisher
    /// already paced it), as other SFUs forward, which on loopback load tests cut p99 latency by about a
    /// quarter (see docs/PERFORMANCE.md). Bandwidth probing and audio are unaffected.
    pub pace_video: bool,
}

impl SfuConfig {
    /// A configuration with defaults around the given announced addresses.
    pub fn new(local_addrs: Vec<SocketAddr>) -> Self {
        SfuConfig {
            local_addrs,
            tcp_addrs: Vec::new(),
            max_rooms: 1000,
            max_participants_per_room: 8,
            keyframe_throttle: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(30),
            initial_bitrate_bps: 1_000_000,
            max_text_len: 16 * 1024,
            files: FilePolicy::default(),
            stats_interval: Some(Duration::from_secs(5)),
            pace_video: false,
        }
    }
}

/// Connection figures of one participant, reported every [`SfuConfig::stats_interval`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParticipantStats {
    /// Round-trip time to the participant, when known.
    pub rtt: Option<Duration>,
    /// Loss of what the SFU sends to it over the last second, in parts per million, when known.
    pub egress_loss_ppm: Option<u32>,
    /// Loss of what it sends to the SFU since the last report, in parts per million, when known.
    pub ingress_loss_ppm: Option<u32>,
    /// The SFU's send-side bandwidth estimate towards it, in bits per second, when known.
    pub bwe_bps: Option<u64>,
    /// Media payload bytes received from it so far.
    pub bytes_in: u64,
    /// Media payload bytes sent to it so far.
    pub bytes_out: u64,
}

/// Errors from [`crate::Sfu::handle_command`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The room already exists.
    #[error("room {0} already exists")]
    RoomExists(RoomId),
    /// No such room.
    #[error("no such room {0}")]
    NoSuchRoom(RoomId),
    /// The shard's room limit is reached.
    #[error("room limit reached")]
    TooManyRooms,
    /// The room's participant limit is reached.
    #[error("room {0} is full")]
    RoomFull(RoomId),
    /// The participant id is already in use.
    #[error("participant {0} already exists")]
    ParticipantExists(ParticipantId),
    /// No such participant.
    #[error("no such participant {0}")]
    NoSuchParticipant(ParticipantId),
    /// The SDP could not be parsed.
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// The offer could not be accepted (no common codec, bad state...).
    #[error("negotiation failed: {0}")]
    Negotiation(String),
    /// The configuration has no usable local address.
    #[error("no usable local address configured")]
    NoLocalAddress,
    /// The participant's str0m instance panicked; the participant was removed.
    #[error("participant {0} failed internally and was removed")]
    Panicked(ParticipantId),
}

/// Drop counters, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DropCounts {
    /// Larger than any valid datagram.
    pub oversized: u64,
    /// Empty or not a STUN/DTLS/RTP/RTCP datagram.
    pub malformed: u64,
    /// Non-STUN datagram from an address (on its transport) no participant uses.
    pub unknown_address: u64,
    /// STUN whose username names no participant (or has no username).
    pub stun_unknown_user: u64,
    /// Refused by the participant's str0m instance (bad SRTP, bad STUN integrity...).
    pub rejected: u64,
    /// RTP that could not be forwarded (no subscriber slot, muted, waiting for a keyframe, out of order).
    pub not_forwarded: u64,
    /// In-call text or file message refused (too long, bad UTF-8, policy).
    pub data_refused: u64,
}

/// Counters and gauges of one [`crate::Sfu`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SfuStats {
    /// Open rooms.
    pub rooms: usize,
    /// Live participants.
    pub participants: usize,
    /// Entries of the remote-address demultiplexing map.
    pub addresses: usize,
    /// Entries of the ICE-ufrag map.
    pub ufrags: usize,
    /// Entries of the timer heap (including stale ones not yet popped).
    pub timers: usize,
    /// Datagrams received.
    pub packets_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams sent (handed out by `poll_output`).
    pub packets_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// RTP packets written to subscribers.
    pub rtp_forwarded: u64,
    /// RTP packets of recorded rooms handed to the [`MediaTap`].
    pub rtp_tapped: u64,
    /// Keyframe requests sent upstream.
    pub keyframe_requests: u64,
    /// Participants ended by a caught panic.
    pub panics: u64,
    /// Drops by reason.
    pub drops: DropCounts,
}
