//! The visitor socket's frames, both directions.

use super::*;

/// Frames a visitor's browser sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VisitorToServer {
    /// First frame of a new session (the socket was opened with a session token). Answered by `welcome`.
    Hello {
        /// Free text identifying the widget build, for logs (optional).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// First frame after a reconnect: the single-use resume token from the last `welcome`, and the last `seq`
    /// the visitor received. Answered by `welcome` (with a new token) and every message after `last_seq`.
    Resume {
        /// Single-use, rotating.
        resume_token: String,
        /// Highest `seq` received (0 if none).
        last_seq: u64,
    },
    /// A chat message. The server masks it and answers with `message` (carrying this `client_id`).
    Message {
        /// Sender-chosen id for deduplication.
        client_id: String,
        /// The text as typed (at most [`MAX_BODY_BYTES`]).
        body: String,
    },
    /// The visitor started (`true`) or stopped typing.
    Typing {
        /// Typing or not.
        active: bool,
    },
    /// Every message up to `seq` has reached the visitor's widget.
    Delivered {
        /// Highest `seq` delivered.
        up_to_seq: u64,
    },
    /// The visitor has seen every message up to `seq`.
    Read {
        /// Highest `seq` read.
        up_to_seq: u64,
    },
    /// The visitor leaves; the conversation ends.
    End {},
    /// Call signalling: the visitor's SDP offer to start or renegotiate a call with the SFU.
    CallOffer {
        /// Session description (SDP) text.
        sdp: String,
    },
    /// Call signalling: the visitor hangs up (or, with `reason` `failed`, its media could not connect).
    CallEnd {
        /// Why, when it is not a plain hang-up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<CallEndReason>,
    },
    /// Invites the agent to a call (audio, with `video` a video call). Answered to both parties by
    /// `call_invitation`; camera and microphone are used only once it is accepted.
    CallInvite {
        /// A video call (else audio only).
        video: bool,
    },
    /// Accepts the agent's pending invitation.
    CallAccept {},
    /// Declines the agent's pending invitation.
    CallDecline {},
    /// Withdraws the visitor's own pending invitation.
    CallCancel {},
    /// Answers the agent's `call_screen_request`: `share` true once the visitor picked what to share (the
    /// screen then arrives as another video track), false when the visitor said no.
    CallScreenReply {
        /// Sharing or not.
        share: bool,
    },
    /// In a call: what the visitor sends now (microphone, camera, screen), relayed to the agent.
    CallMediaState {
        /// The microphone is on (not muted).
        audio: bool,
        /// The camera is on.
        video: bool,
        /// A screen or tab is being shared.
        #[serde(default)]
        screen: bool,
        /// The client lost its media connection and is restoring it (ICE restart).
        #[serde(default)]
        reconnecting: bool,
    },
    /// Before a call: asks for the TURN servers to create the peer connection with. Answered by
    /// `ice_servers`.
    CallPrepare {},
    /// The host page says the visitor entered (`active: true`) or left its payment step
    /// (`RelayDesk.paymentStarted()` / `paymentEnded()`): a recording in progress pauses, and resumes after
    /// if this paused it. No answer.
    Payment {
        /// On the payment step or not.
        active: bool,
    },
}

/// Frames the server sends to a visitor's browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerToVisitor {
    /// Answer to `hello` or `resume`: the conversation and the next single-use resume token.
    Welcome {
        /// The conversation.
        conversation: ConversationId,
        /// The token for the next `resume` (replaces any earlier one).
        resume_token: String,
        /// How long after a drop the token stays valid, in seconds.
        resume_within_secs: u32,
        /// Bearer token of this conversation's file routes (`/api/v1/visitor/files`); replaced with every
        /// `welcome`. Absent when files are disabled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        files_token: Option<String>,
    },
    /// The visitor's place in the queue (1 = next); sent on joining and whenever it changes.
    QueuePosition {
        /// 1-based position.
        position: u32,
    },
    /// An agent took the conversation (also after a transfer).
    Assigned {
        /// The agent's display name.
        agent_name: String,
    },
    /// The conversation went back to a queue (transfer to a group, or the agent was lost); positions follow.
    Transferred {},
    /// A chat message, in `seq` order. The body is masked text.
    Message {
        /// Server-assigned id.
        id: String,
        /// Position in the conversation.
        seq: u64,
        /// Server time, Unix milliseconds.
        ts: u64,
        /// Who wrote it.
        from: Author,
        /// The visitor's own `client_id`, on the visitor's own messages only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Masked text (for a file: its masked name).
        body: String,
        /// A file shared in the conversation (fetched from the file routes by its id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FileRef>,
    },
    /// An earlier message now reads differently: the masker found a card number split across it and a later
    /// message, and masked it retroactively. Replace the text of message `id`.
    MessageAmended {
        /// The id of the message to replace.
        id: String,
        /// Its `seq`.
        seq: u64,
        /// The new masked text.
        body: String,
    },
    /// The agent started or stopped typing.
    Typing {
        /// Who.
        from: Author,
        /// Typing or not.
        active: bool,
    },
    /// The agent's client received every message up to `seq`.
    Delivered {
        /// Highest `seq` delivered.
        up_to_seq: u64,
    },
    /// The agent has seen every message up to `seq`.
    Read {
        /// Highest `seq` read.
        up_to_seq: u64,
    },
    /// The conversation is over; the server closes the socket after this frame.
    Ended {
        /// Why.
        reason: EndReason,
    },
    /// Call signalling: the server's SDP answer to the visitor's `call_offer`.
    CallAnswer {
        /// Session description (SDP) text.
        sdp: String,
    },
    /// Call signalling: the call ended.
    CallEnd {},
    /// A call invitation rings (sent to both parties): `from` is who invited.
    CallInvitation {
        /// Who invited (`visitor` or `agent`).
        from: CallParty,
        /// A video call (else audio only).
        video: bool,
        /// Milliseconds until it expires.
        expires_in_ms: u64,
    },
    /// The invitation no longer rings (sent to both parties).
    CallInvitationEnded {
        /// Who had invited.
        from: CallParty,
        /// How it ended.
        outcome: InvitationOutcome,
    },
    /// The agent asks the visitor to share a screen or tab (the visitor answers `call_screen_reply`).
    CallScreenRequest {},
    /// What the other party sends now in the call (microphone, camera, screen), and whether its connection
    /// is being restored.
    CallMediaState {
        /// Whose.
        party: CallParty,
        /// The microphone is on (not muted).
        audio: bool,
        /// The camera is on.
        video: bool,
        /// A screen or tab is being shared.
        #[serde(default)]
        screen: bool,
        /// The client lost its media connection and is restoring it (ICE restart).
        #[serde(default)]
        reconnecting: bool,
    },
    /// A party's call leg connected or left (sent to both parties).
    CallState {
        /// Whose leg.
        party: CallParty,
        /// Its new state.
        state: CallLegState,
        /// Why it left (`hung_up`, `disconnected`, `failed`, `removed`, `transferred`, `not_permitted`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The media server needs a new `call_offer` from this client with at least these m-lines.
    CallRenegotiate {
        /// Audio m-lines needed.
        audio: u32,
        /// Video m-lines needed.
        video: u32,
    },
    /// Answer to `call_prepare`: the TURN servers for this call (empty when the server has none).
    IceServers {
        /// `RTCIceServer` entries with short-lived credentials.
        ice_servers: Vec<IceServer>,
        /// When the credentials stop working, Unix milliseconds (absent with an empty list).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// The recording of the call: sent before `ice_servers` (so before any media), and on every change.
    Recording {
        /// Recorded now, paused, or not.
        state: RecordingState,
        /// The group's policy: `off`, `always` or `on_request`.
        policy: crate::store::RecordingPolicy,
    },
    /// A frame of the visitor was refused; the connection stays open.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation (never contains message text).
        message: String,
    },
}

impl MessageType for VisitorToServer {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Resume { .. } => "resume",
            Self::Message { .. } => "message",
            Self::Typing { .. } => "typing",
            Self::Delivered { .. } => "delivered",
            Self::Read { .. } => "read",
            Self::End {} => "end",
            Self::CallOffer { .. } => "call_offer",
            Self::CallEnd { .. } => "call_end",
            Self::CallPrepare {} => "call_prepare",
            Self::CallInvite { .. } => "call_invite",
            Self::CallAccept {} => "call_accept",
            Self::CallDecline {} => "call_decline",
            Self::CallCancel {} => "call_cancel",
            Self::CallMediaState { .. } => "call_media_state",
            Self::CallScreenReply { .. } => "call_screen_reply",
            Self::Payment { .. } => "payment",
        }
    }
}

impl MessageType for ServerToVisitor {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::QueuePosition { .. } => "queue_position",
            Self::Assigned { .. } => "assigned",
            Self::Transferred {} => "transferred",
            Self::Message { .. } => "message",
            Self::MessageAmended { .. } => "message_amended",
            Self::Typing { .. } => "typing",
            Self::Delivered { .. } => "delivered",
            Self::Read { .. } => "read",
            Self::Ended { .. } => "ended",
            Self::CallAnswer { .. } => "call_answer",
            Self::CallEnd {} => "call_end",
            Self::CallInvitation { .. } => "call_invitation",
            Self::CallInvitationEnded { .. } => "call_invitation_ended",
            Self::CallMediaState { .. } => "call_media_state",
            Self::CallScreenRequest {} => "call_screen_request",
            Self::CallState { .. } => "call_state",
            Self::CallRenegotiate { .. } => "call_renegotiate",
            Self::IceServers { .. } => "ice_servers",
            Self::Recording { .. } => "recording",
            Self::Error { .. } => "error",
        }
    }
}

impl ServerToVisitor {
    /// An `error` frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }
}
