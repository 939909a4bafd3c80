//! The hub's boundary: the commands of the sockets ([`Command`]), the hub's inputs and outputs, its media
//! requests, its configuration and its notion of time. Nothing here acts; the driver turns outputs into
//! effects and effects' results into inputs.

use super::*;

/// A request to the hub.
#[derive(Debug)]
pub(crate) enum Command {
    /// A visitor socket authenticated by a session token sent `hello`.
    VisitorJoin {
        socket: SocketId,
        outbox: Outbox,
        grant: TokenGrant,
    },
    /// A socket opened without a token sent `resume`.
    VisitorResume {
        socket: SocketId,
        outbox: Outbox,
        origin: String,
        resume_token: String,
        last_seq: u64,
    },
    /// A later frame of a visitor socket (already parsed and size-checked).
    VisitorFrame { socket: SocketId, frame: VisitorToServer },
    /// A visitor socket closed.
    VisitorClosed { socket: SocketId },
    /// An agent socket opened (authenticated by its session cookie).
    AgentOpen {
        socket: SocketId,
        outbox: Outbox,
        user: User,
    },
    /// A frame of an agent socket (already parsed and size-checked).
    AgentFrame { socket: SocketId, frame: AgentToServer },
    /// An agent socket closed.
    AgentClosed { socket: SocketId },
    /// An event of the media side.
    Media(MediaEvent),
    /// A group's recording policy changed (admin API).
    GroupRecording {
        group: GroupId,
        policy: crate::store::RecordingPolicy,
    },
    /// May `caller` share a file in the conversation (the visitor's own, or `conversation` for an agent)?
    /// If so, takes one of the conversation's file slots and replies with the conversation. The slot is
    /// given back by [`Command::FileSlotReleased`] or taken over by [`Command::FileShared`].
    FileUpload {
        caller: FileCaller,
        conversation: Option<ConversationId>,
        reply: oneshot::Sender<Result<ConversationId, Refusal>>,
    },
    /// A file was sealed and written: post it into the chat (re-checking the caller), reply with its
    /// reference (masked name). Takes over the slot of its [`Command::FileUpload`], whatever the answer.
    FileShared {
        caller: FileCaller,
        conversation: ConversationId,
        file: StoredFile,
        reply: oneshot::Sender<Result<FileRef, Refusal>>,
    },
    /// An authorised upload failed before its file reached the hub: give its slot back.
    FileSlotReleased { conversation: ConversationId },
    /// May `caller` download file `id`? Replies with its reference and cipher.
    FileFetch {
        caller: FileCaller,
        id: String,
        reply: oneshot::Sender<Result<(FileRef, Arc<ConversationCipher>), Refusal>>,
    },
    /// A console user as the store has it now (after an admin change, or read by a session check or an
    /// authenticated request): the hub's copy of their role and groups follows it. `reply` is answered
    /// once it is applied.
    UserChanged {
        user: User,
        /// Their login sessions were ended (a new password): close their sockets with 4401.
        sessions_ended: bool,
        reply: Option<oneshot::Sender<()>>,
    },
}

/// Who calls a file route.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FileCaller {
    /// A visitor, by the hash of its `files_token`.
    Visitor([u8; 32]),
    /// A console user (agent, supervisor, admin).
    Agent(AgentId),
}

/// One input of the hub: a [`Command`] without its outbox, or something only the driver reports.
#[derive(Debug)]
pub(crate) enum Input {
    /// A visitor socket authenticated by a session token sent `hello`.
    VisitorJoin {
        socket: SocketId,
        grant: TokenGrant,
    },
    /// A socket opened without a token sent `resume`.
    VisitorResume {
        socket: SocketId,
        origin: String,
        resume_token: String,
        last_seq: u64,
    },
    VisitorFrame {
        socket: SocketId,
        frame: VisitorToServer,
    },
    VisitorClosed {
        socket: SocketId,
    },
    AgentOpen {
        socket: SocketId,
        user: User,
    },
    AgentFrame {
        socket: SocketId,
        frame: AgentToServer,
    },
    AgentClosed {
        socket: SocketId,
    },
    Media(MediaEvent),
    Recording(RecordingOutcome),
    GroupRecording {
        group: GroupId,
        policy: crate::store::RecordingPolicy,
    },
    /// The media side answered a leg's offer ([`MediaRequest::Join`]): the answer goes to its socket; a
    /// failed join forgets the leg.
    CallAnswered {
        leg: LegOffer,
        result: Result<String, MediaError>,
    },
    /// A whisper change ([`MediaRequest::SetRole`]) failed.
    WhisperFailed {
        conversation: ConversationId,
        socket: SocketId,
        error: MediaError,
    },
    FileUpload {
        caller: FileCaller,
        conversation: Option<ConversationId>,
        reply: oneshot::Sender<Result<ConversationId, Refusal>>,
    },
    FileShared {
        caller: FileCaller,
        conversation: ConversationId,
        file: StoredFile,
        reply: oneshot::Sender<Result<FileRef, Refusal>>,
    },
    FileSlotReleased {
        conversation: ConversationId,
    },
    FileFetch {
        caller: FileCaller,
        id: String,
        reply: oneshot::Sender<Result<(FileRef, Arc<ConversationCipher>), Refusal>>,
    },
    UserChanged {
        user: User,
        sessions_ended: bool,
        reply: Option<oneshot::Sender<()>>,
    },
    /// The socket's outbox was full (a slow consumer) or gone when the driver sent to it: the outbox has
    /// told its task to close it with 4429; the hub treats it as closed (an agent goes offline as on a
    /// dropped socket, a visitor may resume).
    Overflowed {
        socket: SocketId,
    },
}

/// What the hub asks of its driver, in order.
pub(crate) enum Output {
    /// The batch's writes at rest: committed (retried until durable) before anything after them is done.
    Commit(Vec<LiveWrite>),
    /// A frame for a socket.
    Text(SocketId, String),
    /// A history replay: one queue entry, and the socket's backlog allowed for it.
    Batch(SocketId, Vec<String>, usize),
    /// Close a socket with a code and reason.
    Close(SocketId, u16, &'static str),
    /// A reply to a request (an upload's file reference, an account change applied).
    Reply(Box<dyn FnOnce() + Send>),
    /// An ended conversation for the sinks (the archive), after its last writes.
    Ended(EndedConversation),
    /// A request to the media side; its result, if any, comes back as an [`Input`].
    Media(MediaRequest),
    /// Shared files of an ended conversation, to delete from disk.
    RemoveFiles(Vec<String>),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Commit(w) => f.debug_tuple("Commit").field(&w.len()).finish(),
            Output::Text(s, t) => f.debug_tuple("Text").field(s).field(t).finish(),
            Output::Batch(s, frames, _) => f.debug_tuple("Batch").field(s).field(frames).finish(),
            Output::Close(s, code, reason) => f.debug_tuple("Close").field(s).field(code).field(reason).finish(),
            Output::Reply(_) => f.write_str("Reply"),
            Output::Ended(e) => f.debug_tuple("Ended").field(&e.id).field(&e.reason).finish(),
            Output::Media(m) => f.debug_tuple("Media").field(m).finish(),
            Output::RemoveFiles(files) => f.debug_tuple("RemoveFiles").field(files).finish(),
        }
    }
}

/// A request to the media side (see [`crate::media::MediaControl`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MediaRequest {
    /// Open the room and join a new leg, or renegotiate an existing one; answered by
    /// [`Input::CallAnswered`].
    Join {
        leg: LegOffer,
        role: MediaRole,
        sdp: String,
    },
    /// A leg left.
    Leave {
        room: MediaRoomId,
        participant: MediaParticipantId,
    },
    /// The conversation ended with legs in its room.
    CloseRoom { room: MediaRoomId },
    /// A supervisor's whisper changed; a failure comes back as [`Input::WhisperFailed`].
    SetRole {
        conversation: ConversationId,
        participant: MediaParticipantId,
        role: MediaRole,
        socket: SocketId,
    },
    /// Start, pause or resume the recording (with the archive's row); the outcome comes back as
    /// [`Input::Recording`].
    RecordingChange {
        conversation: ConversationId,
        action: RecordingAction,
        by: Option<String>,
        id: Option<String>,
    },
    /// Stop the recording `id` and finish its row.
    RecordingStop { conversation: ConversationId, id: String },
}

/// A leg's offer handed to the media side, and where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LegOffer {
    pub(crate) conversation: ConversationId,
    pub(crate) participant: MediaParticipantId,
    pub(crate) party: Party,
    /// The socket that offered (it gets the answer).
    pub(crate) socket: SocketId,
    /// An offer of a leg already joined (no room to open, nothing to forget on failure).
    pub(crate) renegotiate: bool,
}

/// The configuration the hub runs with: plain values, taken from the server's configuration.
#[derive(Debug, Clone)]
pub(crate) struct HubConfig {
    /// `[live]`: routing, grace periods, masking, limits, files.
    pub(crate) live: LiveConfig,
    /// `[media] max_participants`.
    pub(crate) max_media_participants: usize,
    /// Whether a media side is wired (calls possible).
    pub(crate) media: bool,
    /// Issues TURN credentials for `call_prepare` (a pure function of its secret and the time).
    pub(crate) turn: Option<Arc<TurnService>>,
    /// In a cluster: an orderly stop hands the conversations over (they stay live at rest for the next
    /// leader, sockets are closed with 1012) instead of ending them.
    pub(crate) hand_over: bool,
}

/// The time of an input: the monotonic instant (deadlines) and the wall clock (timestamps, in ms since the
/// Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    pub(crate) unix_ms: u64,
}
