//! The media seam: what signalling needs from the SFU, as a trait this crate owns.
//!
//! Signalling never depends on the SFU crates. The binary implements [`MediaControl`] on the SFU driver's
//! handle and forwards the SFU's events as [`MediaEvent`]s into the channel it gives the server. Tests can
//! implement it with a fake at this seam (it is ours).
//!
//! Call order for one conversation: [`MediaControl::open_room`] once, then [`MediaControl::join`] per
//! participant (its SDP offer in, the SDP answer out), [`MediaControl::renegotiate`] when a participant
//! re-offers (adding video, or after [`MediaEvent::RenegotiationNeeded`]), [`MediaControl::set_role`] when a
//! supervisor starts or stops whispering, [`MediaControl::leave`] when one
//! hangs up, and [`MediaControl::close_room`] when the conversation ends (which also ends every participant).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// The media room of one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaRoomId(pub u64);

/// One peer connection in a media room (one per browser tab and call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaParticipantId(pub u64);

impl fmt::Display for MediaRoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "room-{}", self.0)
    }
}

impl fmt::Display for MediaParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mp-{}", self.0)
    }
}

/// What a participant may send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaRole {
    /// The website visitor: publishes and receives the agent.
    Visitor,
    /// The agent: publishes and receives the visitor (and a whispering supervisor's audio).
    Agent,
    /// A supervisor: receives both silently; with `whisper`, its audio goes to the agent only.
    Supervisor {
        /// Whether its audio is sent to the agent.
        whisper: bool,
    },
}

/// Why a media operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The SDP offer was not acceptable (malformed, no usable media).
    #[error("the SDP offer was refused: {0}")]
    BadOffer(String),
    /// No such room or participant.
    #[error("no such media room or participant")]
    NotFound,
    /// A limit was reached (rooms, participants per room).
    #[error("media capacity reached")]
    Capacity,
    /// Media is not available on this server.
    #[error("media is not available")]
    Unavailable,
    /// Any other failure of the media side.
    #[error("media failure: {0}")]
    Other(String),
}

/// Something the media side reports about a room.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaEvent {
    /// ICE and DTLS are up: media can flow.
    Connected {
        /// The room.
        room: MediaRoomId,
        /// Who.
        participant: MediaParticipantId,
    },
    /// The participant's peer connection ended (hung up, disconnected, failed).
    Left {
        /// The room.
        room: MediaRoomId,
        /// Who.
        participant: MediaParticipantId,
        /// Why, in a few words (`removed`, `disconnected`, `failed`).
        reason: String,
    },
    /// The participant must send a new offer with at least this many audio and video m-lines.
    RenegotiationNeeded {
        /// The room.
        room: MediaRoomId,
        /// Who should re-offer.
        participant: MediaParticipantId,
        /// Audio m-lines needed.
        audio: usize,
        /// Video m-lines needed.
        video: usize,
    },
    /// In-call text was relayed on the participant's `text` data channel (masked by the SFU's filter).
    CallText {
        /// The room.
        room: MediaRoomId,
        /// The author.
        participant: MediaParticipantId,
        /// The text as relayed (masked).
        text: String,
        /// Stricter versions of the author's earlier in-call texts (a card number split over two
        /// messages): `(back, text)`, `back` 1 being the author's previous in-call text in this room.
        amended: Vec<(usize, String)>,
    },
    /// A file sent on the participant's `file` data channel was relayed in full and its hash checked.
    CallFile {
        /// The room.
        room: MediaRoomId,
        /// The sender.
        participant: MediaParticipantId,
        /// The file name as relayed (cleaned and masked).
        name: String,
        /// Size in bytes.
        size: u64,
        /// Declared media type.
        mime: String,
        /// SHA-256 of the bytes relayed, lowercase hex.
        sha256: String,
    },
    /// A data channel with an unknown label was refused (an error sent on it, then closed).
    DataChannelRefused {
        /// The room.
        room: MediaRoomId,
        /// Who opened it.
        participant: MediaParticipantId,
        /// Its label (at most 64 bytes).
        label: String,
    },
    /// Voice activity changed.
    Speaking {
        /// The room.
        room: MediaRoomId,
        /// Who.
        participant: MediaParticipantId,
        /// Speaking or not.
        speaking: bool,
    },
}

/// A boxed future returned by [`MediaControl`] methods (object-safe async).
pub type MediaFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, MediaError>> + Send + 'a>>;

/// Control of the media side, implemented by the binary on the SFU handle.
pub trait MediaControl: Send + Sync + 'static {
    /// Opens the media room of a conversation. Opening an open room is not an error.
    fn open_room(&self, room: MediaRoomId) -> MediaFuture<'_, ()>;
    /// Adds a participant with its SDP offer; returns the SDP answer (only the server's candidates).
    fn join(
        &self,
        room: MediaRoomId,
        participant: MediaParticipantId,
        role: MediaRole,
        offer: String,
    ) -> MediaFuture<'_, String>;
    /// A new offer from an existing participant; returns the answer.
    fn renegotiate(&self, room: MediaRoomId, participant: MediaParticipantId, offer: String)
    -> MediaFuture<'_, String>;
    /// Changes what a participant may send and receive (a supervisor starting or stopping a whisper).
    /// Members that now need another receive slot get [`MediaEvent::RenegotiationNeeded`].
    fn set_role(&self, room: MediaRoomId, participant: MediaParticipantId, role: MediaRole) -> MediaFuture<'_, ()>;
    /// Removes a participant (hang-up). Removing an absent one is not an error.
    fn leave(&self, room: MediaRoomId, participant: MediaParticipantId) -> MediaFuture<'_, ()>;
    /// Closes the room and ends all its participants. Closing a closed room is not an error.
    fn close_room(&self, room: MediaRoomId) -> MediaFuture<'_, ()>;

    /// Sets the public address of the passive ICE-TCP candidate put in later answers (`None`: UDP only).
    /// The server calls it once its listener is bound, before it accepts anything. By default ignored.
    fn set_tcp_candidate(&self, _addr: Option<SocketAddr>) -> MediaFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Takes over a TCP connection whose first RFC 4571 frame is a STUN Binding request (ICE-TCP): the
    /// media side finds the participant by the ICE username fragment and serves the connection from then on.
    /// [`MediaError::NotFound`] when no participant has that username fragment (the connection is dropped,
    /// i.e. closed). By default media over TCP is unavailable.
    fn accept_ice_tcp(&self, _conn: IceTcpConnection) -> MediaFuture<'_, ()> {
        Box::pin(async { Err(MediaError::Unavailable) })
    }

    /// Starts, pauses, resumes or stops the recording of a room (customer's and agent's audio and video,
    /// without transcoding). Returns the number of sealed chunks written (final for `Stop`). By default
    /// recording is unavailable.
    fn set_recording(&self, _room: MediaRoomId, _control: RecordingControl) -> MediaFuture<'_, u32> {
        Box::pin(async { Err(MediaError::Unavailable) })
    }
}

/// A change to the recording of a room (see [`MediaControl::set_recording`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum RecordingControl {
    /// Start recording into a new sealed file (see [`crate::recording`]).
    Start {
        /// The recording id (bound into every sealed chunk).
        id: String,
        /// The file to create.
        path: std::path::PathBuf,
        /// Its data key.
        key: crate::archive_crypto::DataKey,
    },
    /// Stop taking media until [`RecordingControl::Resume`]: the paused span is not in the file at all.
    Pause,
    /// Take media again (a keyframe is asked for at once).
    Resume,
    /// Stop and close the file with its final chunk.
    Stop,
}

/// A new ICE-TCP connection handed from the server's listener to the media side.
#[derive(Debug)]
pub struct IceTcpConnection {
    /// The connection, in non-blocking mode, positioned just after the first frame.
    pub stream: std::net::TcpStream,
    /// The browser's address.
    pub peer: SocketAddr,
    /// Our address the browser connected to.
    pub local: SocketAddr,
    /// The payload of the first RFC 4571 frame (a STUN Binding request), without its length header.
    pub first_frame: Vec<u8>,
}
