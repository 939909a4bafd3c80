//! The typed WebSocket messages of the visitor and agent sockets (draft).
//!
//! One enum per direction: [`VisitorToServer`], [`ServerToVisitor`], [`AgentToServer`], [`ServerToAgent`].
//! Every frame is one JSON object in a WebSocket **text** frame, with a `"type"` field in `snake_case`; unknown
//! types and unknown fields are rejected (the server answers `error` with code `bad_message` and keeps the
//! connection). `docs/ws-messages.md` shows a JSON example of every message; a test parses each of them.
//!
//! # Conventions
//! - Conversation ids are decimal strings (`"42"`), agent ids numbers (see [`ConversationId`], [`AgentId`]).
//! - `seq` numbers a conversation's messages from 1, in the one order everybody sees; `ts` is Unix time in
//!   milliseconds, set by the server.
//! - `client_id` is chosen by the sender of a message (unique per sender, at most [`MAX_CLIENT_ID_BYTES`]); the
//!   server echoes it back to that sender only, so a client can match its pending message and drop
//!   duplicates after a resume.
//! - Every `body` the server sends is **masked text**: the server fills it only from the masker's
//!   `MaskedText` (a `String` here because the wire type is just text). Nothing sent by the server carries the
//!   raw text a visitor typed, not even back to that visitor.
//!
//! # Sizes
//! Size limits are the caller's job, before and after parsing: the socket refuses frames larger than
//! [`MAX_FRAME_BYTES`] (use [`parse_frame`], which checks the length before parsing, or the WebSocket library's
//! own frame limit), and the chat layer refuses bodies longer than [`MAX_BODY_BYTES`] with
//! [`ErrorCode::TooLarge`]. Neither closes the connection.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::routing::{AgentId, AgentStatus, ConversationId, GroupId, Presence};

/// The largest text frame the sockets accept (JSON included). Larger frames get [`ErrorCode::TooLarge`].
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// The default limit of a message body in bytes of UTF-8 (the chat layer's configurable limit).
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// The longest `client_id` accepted.
pub const MAX_CLIENT_ID_BYTES: usize = 64;

/// Who wrote a message or is typing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case", deny_unknown_fields)]
pub enum Author {
    /// The visitor of the conversation.
    Visitor {},
    /// An agent, with the name the visitor sees.
    Agent {
        /// The agent's id.
        id: AgentId,
        /// Display name.
        name: String,
    },
    /// The server itself (notices such as "transferred to billing").
    System {},
}

/// Why a conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The visitor closed it.
    VisitorLeft,
    /// The agent closed it.
    AgentEnded,
    /// The visitor's connection was lost for longer than the resume grace period.
    VisitorLost,
    /// Nobody took it before the queue's time limit.
    QueueTimeout,
    /// The server is shutting down or an administrator closed it.
    Closed,
}

/// Why an agent lost a conversation or an offer (agent socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawnReason {
    /// The offer was not accepted in time.
    Timeout,
    /// The agent became unavailable (disconnect, away, offline).
    Unavailable,
    /// The visitor left before the offer was answered.
    ConversationEnded,
    /// The agent is at capacity.
    CapacityFull,
    /// Superseded (e.g. the conversation moved elsewhere).
    Cancelled,
}

/// Why a transfer to a named agent did not happen (the conversation stays with the sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferFailedReason {
    /// The target declined.
    Declined,
    /// The target did not answer in time.
    Timeout,
    /// The target is not available.
    Unavailable,
}

/// Why a conversation was taken from an agent and requeued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnassignedReason {
    /// The agent transferred it.
    Transferred,
    /// The agent's connection was lost beyond the grace period.
    ConnectionLost,
    /// The agent's account was disabled.
    Removed,
}

/// Where a conversation is transferred to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransferTarget {
    /// A named agent (who must accept; until then the conversation stays with the sender).
    Agent {
        /// The target agent.
        agent: AgentId,
    },
    /// A group's queue (immediately; ahead of fresh visitors).
    Group {
        /// The target group's name.
        group: GroupId,
    },
}

/// The error codes of `error` frames. The connection stays open after every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON, has an unknown `type`, a missing or unknown field, or a bad value.
    BadMessage,
    /// The frame or the message body is larger than allowed.
    TooLarge,
    /// Too many messages per second; slow down.
    RateLimited,
    /// The sender may not do this (role, group membership, not assigned).
    Forbidden,
    /// The conversation (or offer) does not exist any more.
    NotFound,
    /// The request conflicts with the current state (e.g. the offer was withdrawn meanwhile).
    Conflict,
    /// Reserved: not sent on the sockets (a wrong first frame closes a visitor socket with 4400, an invalid
    /// resume token with 4401); the file routes use it for an unknown or replaced files token.
    NotReady,
    /// The server failed; the message was not processed.
    Internal,
    /// Calls are not available on this server (no media server configured, or it stopped).
    MediaUnavailable,
    /// The media server is at its capacity (`[media] max_participants`): the new call (or monitoring leg)
    /// is refused, the calls in progress go on, the chat goes on. Try again later.
    MediaBusy,
    /// The server is at a conversation cap (overall, queue or site key); the socket is closed with 4503.
    /// Try again later.
    Busy,
}

/// Whose call leg a `call_state` frame is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallParty {
    /// The visitor's peer connection.
    Visitor,
    /// The agent's peer connection.
    Agent,
    /// A supervisor's silent monitoring connection (reported to that supervisor only, never to the
    /// visitor, nor to the agent).
    Supervisor,
}

/// A file shared in a conversation's chat: what a `message` carries besides its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// Server-assigned id (for the download route).
    pub id: String,
    /// The file's name, masked like chat text.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The media type the server checked the content against.
    pub mime: String,
    /// Lowercase hex SHA-256 of the content, computed by the server.
    pub sha256: String,
}

/// Where a conversation stands, for the supervisors' live list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveState {
    /// Waiting for an agent (queued or offered).
    Queued,
    /// With an agent.
    Assigned,
    /// Over (the last update of this conversation).
    Ended,
}

/// One conversation as the supervisors' live list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConversation {
    /// The conversation.
    pub conversation: ConversationId,
    /// Its group.
    pub group: GroupId,
    /// Where it stands.
    pub state: LiveState,
    /// Its agent, when assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    /// The agent's display name, when assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    /// When the visitor arrived, Unix milliseconds.
    pub started_at_ms: u64,
    /// Whether the visitor or the agent is in a call.
    pub in_call: bool,
}

/// A TURN server a browser may relay its call through: the shape of WebRTC's `RTCIceServer`, so a client
/// passes the list to `new RTCPeerConnection({iceServers})` as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `turn:` / `turns:` URLs of one server.
    pub urls: Vec<String>,
    /// Short-lived username (`EXPIRY:ID`, EXPIRY in Unix seconds).
    pub username: String,
    /// Its password.
    pub credential: String,
}

/// The state of one party's call leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallLegState {
    /// ICE and DTLS are up: media flows.
    Connected,
    /// The leg ended (hung up, disconnected or failed).
    Left,
}

/// How a call invitation ended (`call_invitation_ended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvitationOutcome {
    /// The invited party accepted (or invited at the same time): both parties now start their call legs
    /// (`call_prepare`, `call_offer`).
    Accepted,
    /// The invited party declined.
    Declined,
    /// The inviting party withdrew the invitation (`call_cancel`), hung up, or left the conversation.
    Cancelled,
    /// Nobody answered within `live.call_invite_timeout_ms` (45 s by default).
    Expired,
}

/// Why a party hangs up, when it is not a plain hang-up (`call_end`'s optional `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEndReason {
    /// The person hung up.
    HungUp,
    /// This side's media never connected, or its connection failed (e.g. a network that blocks calls). The
    /// other party hears `call_state` `left` with reason `failed`.
    Failed,
}

/// Whether a call is being recorded now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Not recorded (yet, or any more).
    Off,
    /// Recorded now.
    On,
    /// Recording paused (e.g. while a card number is read out): nothing of this span is kept.
    Paused,
}

/// What an agent asks of the recording of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingAction {
    /// Start recording (policy `on_request`, or after a stop).
    Start,
    /// Pause (nothing is kept until `resume`).
    Pause,
    /// Resume after a pause.
    Resume,
}

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

/// Frames an agent's (or supervisor's) console sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentToServer {
    /// First frame (the socket is authenticated by the session cookie). Answered by `welcome`.
    Hello {
        /// Highest `seq` received per open conversation, to resend what was missed after a reconnect.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resume: Vec<ResumePoint>,
    },
    /// Set the agent's own presence.
    SetPresence {
        /// The new presence.
        presence: Presence,
    },
    /// Accept an offered conversation.
    Accept {
        /// The conversation offered.
        conversation: ConversationId,
    },
    /// Decline an offered conversation.
    Decline {
        /// The conversation offered.
        conversation: ConversationId,
    },
    /// A chat message in one of the agent's conversations (masked like the visitor's before anyone sees it).
    Message {
        /// The conversation.
        conversation: ConversationId,
        /// Sender-chosen id for deduplication.
        client_id: String,
        /// The text (at most [`MAX_BODY_BYTES`]).
        body: String,
    },
    /// The agent started or stopped typing.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Typing or not.
        active: bool,
    },
    /// Every message up to `seq` reached the console.
    Delivered {
        /// The conversation.
        conversation: ConversationId,
        /// Highest `seq` delivered.
        up_to_seq: u64,
    },
    /// The agent has seen every message up to `seq`.
    Read {
        /// The conversation.
        conversation: ConversationId,
        /// Highest `seq` read.
        up_to_seq: u64,
    },
    /// Transfer a conversation to another agent or a group.
    Transfer {
        /// The conversation.
        conversation: ConversationId,
        /// Where to.
        to: TransferTarget,
    },
    /// End a conversation.
    End {
        /// The conversation.
        conversation: ConversationId,
    },
    /// Supervisors: start watching a conversation of their groups (read-only, masked).
    Watch {
        /// The conversation.
        conversation: ConversationId,
    },
    /// Supervisors: stop watching.
    Unwatch {
        /// The conversation.
        conversation: ConversationId,
    },
    /// Call signalling: the agent's SDP offer.
    CallOffer {
        /// The conversation.
        conversation: ConversationId,
        /// Session description (SDP) text.
        sdp: String,
    },
    /// Call signalling: the agent hangs up (or, with `reason` `failed`, its media could not connect).
    CallEnd {
        /// The conversation.
        conversation: ConversationId,
        /// Why, when it is not a plain hang-up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<CallEndReason>,
    },
    /// Invites the visitor to a call (audio, with `video` a video call). Answered by `call_invitation`.
    CallInvite {
        /// The conversation.
        conversation: ConversationId,
        /// A video call (else audio only).
        video: bool,
    },
    /// Accepts the visitor's pending invitation.
    CallAccept {
        /// The conversation.
        conversation: ConversationId,
    },
    /// Declines the visitor's pending invitation.
    CallDecline {
        /// The conversation.
        conversation: ConversationId,
    },
    /// Withdraws the agent's own pending invitation.
    CallCancel {
        /// The conversation.
        conversation: ConversationId,
    },
    /// In a call: asks the visitor to share a screen or tab (support). Answered by `call_screen_reply`.
    CallScreenRequest {
        /// The conversation.
        conversation: ConversationId,
    },
    /// In a call: what the agent sends now, relayed to the visitor.
    CallMediaState {
        /// The conversation.
        conversation: ConversationId,
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
    /// Supervisors: join the conversation's call silently (receive both parties' audio and video, send
    /// nothing), or re-offer (after `call_renegotiate`). Answered by `call_answer`. Neither the visitor nor
    /// the agent is told.
    MonitorOffer {
        /// The conversation.
        conversation: ConversationId,
        /// Session description (SDP) text.
        sdp: String,
    },
    /// Supervisors: start or stop sending their audio to the agent only (coaching). The agent is told.
    Whisper {
        /// The conversation.
        conversation: ConversationId,
        /// Whispering or not.
        active: bool,
    },
    /// Supervisors: leave the conversation's call.
    MonitorEnd {
        /// The conversation.
        conversation: ConversationId,
    },
    /// Before a call or a monitoring leg: asks for the TURN servers to create the peer connection with.
    /// Answered by `ice_servers`.
    CallPrepare {
        /// The conversation.
        conversation: ConversationId,
    },
    /// Agents: start, pause or resume the recording of the conversation's call (answered by `recording`
    /// to both parties; audited, and noted in the transcript).
    Recording {
        /// The conversation.
        conversation: ConversationId,
        /// What to do.
        action: RecordingAction,
    },
}

/// The last `seq` a client has of one conversation (for resending after a reconnect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumePoint {
    /// The conversation.
    pub conversation: ConversationId,
    /// Highest `seq` received.
    pub last_seq: u64,
}

/// Frames the server sends to an agent's (or supervisor's) console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerToAgent {
    /// Answer to `hello`: who the agent is and what they hold.
    Welcome {
        /// The agent's id.
        agent: AgentId,
        /// Display name.
        name: String,
        /// Current presence.
        presence: Presence,
        /// Most conversations at once.
        capacity: u32,
        /// Open conversations assigned to the agent.
        conversations: Vec<ConversationId>,
    },
    /// A conversation is offered; `accept` or `decline` within `expires_in_ms`.
    Offered {
        /// The conversation.
        conversation: ConversationId,
        /// Its group.
        group: GroupId,
        /// Milliseconds left to answer.
        expires_in_ms: u64,
        /// The agent transferring it, for a transfer offer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer_from: Option<AgentId>,
    },
    /// An offer no longer stands.
    OfferWithdrawn {
        /// The conversation.
        conversation: ConversationId,
        /// Why.
        reason: WithdrawnReason,
    },
    /// The conversation is now the agent's (answer to `accept`).
    Assigned {
        /// The conversation.
        conversation: ConversationId,
        /// Its group.
        group: GroupId,
    },
    /// The conversation was taken from the agent (transferred, or requeued after a lost connection).
    Unassigned {
        /// The conversation.
        conversation: ConversationId,
        /// Why.
        reason: UnassignedReason,
    },
    /// A chat message, in `seq` order. The body is masked text.
    Message {
        /// The conversation.
        conversation: ConversationId,
        /// Server-assigned id.
        id: String,
        /// Position in the conversation.
        seq: u64,
        /// Server time, Unix milliseconds.
        ts: u64,
        /// Who wrote it.
        from: Author,
        /// The agent's own `client_id`, on their own messages only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Masked text (for a file: its masked name).
        body: String,
        /// A file shared in the conversation (fetched from the file routes by its id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FileRef>,
    },
    /// An earlier message was masked retroactively (a card number split across messages): replace its text.
    MessageAmended {
        /// The conversation.
        conversation: ConversationId,
        /// The id of the message to replace.
        id: String,
        /// Its `seq`.
        seq: u64,
        /// The new masked text.
        body: String,
    },
    /// Someone in the conversation started or stopped typing.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who.
        from: Author,
        /// Typing or not.
        active: bool,
    },
    /// The visitor's widget received every message up to `seq`.
    Delivered {
        /// The conversation.
        conversation: ConversationId,
        /// Highest `seq` delivered.
        up_to_seq: u64,
    },
    /// The visitor has seen every message up to `seq`.
    Read {
        /// The conversation.
        conversation: ConversationId,
        /// Highest `seq` read.
        up_to_seq: u64,
    },
    /// An agent's status changed (the agent's own, or a colleague's for supervisors).
    PresenceChanged {
        /// The agent.
        agent: AgentId,
        /// The new status (`busy` is derived from load and capacity).
        status: AgentStatus,
    },
    /// A transfer to a named agent did not happen; the conversation stays with the sender.
    TransferFailed {
        /// The conversation.
        conversation: ConversationId,
        /// The intended target.
        to: AgentId,
        /// Why.
        reason: TransferFailedReason,
    },
    /// The conversation is over.
    Ended {
        /// The conversation.
        conversation: ConversationId,
        /// Why.
        reason: EndReason,
    },
    /// Call signalling: the server's SDP answer.
    CallAnswer {
        /// The conversation.
        conversation: ConversationId,
        /// Session description (SDP) text.
        sdp: String,
    },
    /// Call signalling: the call ended.
    CallEnd {
        /// The conversation.
        conversation: ConversationId,
    },
    /// A party's call leg connected or left (sent to both parties).
    CallState {
        /// The conversation.
        conversation: ConversationId,
        /// Whose leg.
        party: CallParty,
        /// Its new state.
        state: CallLegState,
        /// Why it left (`hung_up`, `disconnected`, `failed`, `removed`, `transferred`, `not_permitted`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A call invitation rings (sent to the visitor and the conversation's agent-side viewers).
    CallInvitation {
        /// The conversation.
        conversation: ConversationId,
        /// Who invited (`visitor` or `agent`).
        from: CallParty,
        /// A video call (else audio only).
        video: bool,
        /// Milliseconds until it expires.
        expires_in_ms: u64,
    },
    /// The invitation no longer rings.
    CallInvitationEnded {
        /// The conversation.
        conversation: ConversationId,
        /// Who had invited.
        from: CallParty,
        /// How it ended.
        outcome: InvitationOutcome,
    },
    /// The visitor's answer to `call_screen_request`.
    CallScreenReply {
        /// The conversation.
        conversation: ConversationId,
        /// Sharing (the screen arrives as another video track) or not.
        share: bool,
    },
    /// What the other party sends now in the call, and whether its connection is being restored.
    CallMediaState {
        /// The conversation.
        conversation: ConversationId,
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
    /// The media server needs a new `call_offer` from this console with at least these m-lines.
    CallRenegotiate {
        /// The conversation.
        conversation: ConversationId,
        /// Audio m-lines needed.
        audio: u32,
        /// Video m-lines needed.
        video: u32,
    },
    /// Answer to `call_prepare`: the TURN servers for this call (empty when the server has none).
    IceServers {
        /// The conversation.
        conversation: ConversationId,
        /// `RTCIceServer` entries with short-lived credentials.
        ice_servers: Vec<IceServer>,
        /// When the credentials stop working, Unix milliseconds (absent with an empty list).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// A supervisor started or stopped whispering to this agent in a call.
    Whisper {
        /// The conversation.
        conversation: ConversationId,
        /// The supervisor's display name.
        supervisor: String,
        /// Whispering or not.
        active: bool,
    },
    /// The recording of a conversation's call: sent before `ice_servers`, and on every change.
    Recording {
        /// The conversation.
        conversation: ConversationId,
        /// Recorded now, paused, or not.
        state: RecordingState,
        /// The group's policy: `off`, `always` or `on_request`.
        policy: crate::store::RecordingPolicy,
    },
    /// Supervisors and admins, after `welcome`: the open conversations of their groups (admins: all).
    LiveList {
        /// Oldest first.
        conversations: Vec<LiveConversation>,
    },
    /// Supervisors and admins: a conversation of their groups arrived, changed or ended.
    LiveUpdate {
        /// Its new summary (state `ended` is the last one).
        summary: LiveConversation,
    },
    /// A frame of the agent was refused; the connection stays open.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation (never contains message text).
        message: String,
        /// The conversation concerned, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation: Option<ConversationId>,
    },
}

/// Why an incoming frame could not be turned into a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame is longer than [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, unknown `type`, unknown or missing field, or a bad value. The text says which kind and, when
    /// known, where (line, column); it never quotes the frame, so it is safe to log and to send back.
    #[error("bad message: {0}")]
    Malformed(String),
    /// A message body is longer than the configured limit (bytes of UTF-8).
    #[error("message body of {len} bytes exceeds the limit of {max}")]
    BodyTooLong {
        /// The body's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message body is empty or only white space.
    #[error("message body is empty")]
    EmptyBody,
    /// A `client_id` is empty, longer than [`MAX_CLIENT_ID_BYTES`], or has characters other than ASCII
    /// letters, digits, `-`, `_`, `.` and `:`.
    #[error("client_id must be 1 to 64 characters of [A-Za-z0-9._:-]")]
    BadClientId,
}

impl ProtocolError {
    /// The `error` frame code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } | Self::BodyTooLong { .. } => ErrorCode::TooLarge,
            Self::Malformed(_) | Self::EmptyBody | Self::BadClientId => ErrorCode::BadMessage,
        }
    }
}

/// Parses one incoming text frame into `T` (one of the `*ToServer` enums), refusing frames longer than
/// `max_len` before parsing.
///
/// # Errors
/// [`ProtocolError::TooLarge`] or [`ProtocolError::Malformed`].
pub fn parse_frame<T: DeserializeOwned>(text: &str, max_len: usize) -> Result<T, ProtocolError> {
    if text.len() > max_len {
        return Err(ProtocolError::TooLarge {
            len: text.len(),
            max: max_len,
        });
    }
    serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(describe(&e)))
}

/// Checks the parts of a chat message (`message` from a visitor or an agent) that the types cannot: the
/// body's length (`max_body_bytes`, [`MAX_BODY_BYTES`] by default) and emptiness, and the `client_id`'s form.
/// Call it after [`parse_frame`] and before masking; on error answer an `error` frame with
/// [`ProtocolError::code`] and keep the connection.
///
/// # Errors
/// [`ProtocolError::BodyTooLong`], [`ProtocolError::EmptyBody`], [`ProtocolError::BadClientId`].
pub fn check_chat_message(client_id: &str, body: &str, max_body_bytes: usize) -> Result<(), ProtocolError> {
    let id_ok = !client_id.is_empty()
        && client_id.len() <= MAX_CLIENT_ID_BYTES
        && client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !id_ok {
        return Err(ProtocolError::BadClientId);
    }
    if body.len() > max_body_bytes {
        return Err(ProtocolError::BodyTooLong {
            len: body.len(),
            max: max_body_bytes,
        });
    }
    if body.trim().is_empty() {
        return Err(ProtocolError::EmptyBody);
    }
    Ok(())
}

/// A description of a parse error that never quotes the frame: serde_json's messages can include string
/// values ("invalid type: string \"4111…\"") or client-chosen names, which must not reach logs or be echoed.
/// Only the names of our own fields (for a missing field) and the position are kept.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = if let Some(rest) = text.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        // Our own field names are short identifiers; anything else is not echoed.
        if !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            format!("missing field `{name}`")
        } else {
            "missing field".to_owned()
        }
    } else if text.starts_with("unknown field") {
        "unknown field".to_owned()
    } else if text.starts_with("unknown variant") {
        "unknown message type or enum value".to_owned()
    } else if text.starts_with("invalid type") {
        "a field has the wrong type".to_owned()
    } else if text.starts_with("invalid value") || text.starts_with("invalid length") {
        "a field has an invalid value".to_owned()
    } else {
        match e.classify() {
            serde_json::error::Category::Syntax => "not valid JSON".to_owned(),
            serde_json::error::Category::Eof => "incomplete JSON".to_owned(),
            serde_json::error::Category::Io | serde_json::error::Category::Data => "invalid message".to_owned(),
        }
    };
    // Errors found after serde buffered an internally tagged object carry no position (line 0).
    if e.line() == 0 {
        what
    } else {
        format!("{what} at line {} column {}", e.line(), e.column())
    }
}

/// The `type` name of each message (for logs and metrics: never log a frame, log its type).
pub trait MessageType {
    /// The value of the `"type"` field.
    fn type_name(&self) -> &'static str;
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

impl MessageType for AgentToServer {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::SetPresence { .. } => "set_presence",
            Self::Accept { .. } => "accept",
            Self::Decline { .. } => "decline",
            Self::Message { .. } => "message",
            Self::Typing { .. } => "typing",
            Self::Delivered { .. } => "delivered",
            Self::Read { .. } => "read",
            Self::Transfer { .. } => "transfer",
            Self::End { .. } => "end",
            Self::Watch { .. } => "watch",
            Self::Unwatch { .. } => "unwatch",
            Self::CallOffer { .. } => "call_offer",
            Self::CallEnd { .. } => "call_end",
            Self::CallInvite { .. } => "call_invite",
            Self::CallAccept { .. } => "call_accept",
            Self::CallDecline { .. } => "call_decline",
            Self::CallCancel { .. } => "call_cancel",
            Self::CallMediaState { .. } => "call_media_state",
            Self::CallScreenRequest { .. } => "call_screen_request",
            Self::MonitorOffer { .. } => "monitor_offer",
            Self::Whisper { .. } => "whisper",
            Self::MonitorEnd { .. } => "monitor_end",
            Self::CallPrepare { .. } => "call_prepare",
            Self::Recording { .. } => "recording",
        }
    }
}

impl MessageType for ServerToAgent {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::Offered { .. } => "offered",
            Self::OfferWithdrawn { .. } => "offer_withdrawn",
            Self::Assigned { .. } => "assigned",
            Self::Unassigned { .. } => "unassigned",
            Self::Message { .. } => "message",
            Self::MessageAmended { .. } => "message_amended",
            Self::Typing { .. } => "typing",
            Self::Delivered { .. } => "delivered",
            Self::Read { .. } => "read",
            Self::PresenceChanged { .. } => "presence_changed",
            Self::TransferFailed { .. } => "transfer_failed",
            Self::Ended { .. } => "ended",
            Self::CallAnswer { .. } => "call_answer",
            Self::CallEnd { .. } => "call_end",
            Self::CallInvitation { .. } => "call_invitation",
            Self::CallInvitationEnded { .. } => "call_invitation_ended",
            Self::CallMediaState { .. } => "call_media_state",
            Self::CallScreenReply { .. } => "call_screen_reply",
            Self::CallState { .. } => "call_state",
            Self::CallRenegotiate { .. } => "call_renegotiate",
            Self::IceServers { .. } => "ice_servers",
            Self::Whisper { .. } => "whisper",
            Self::Recording { .. } => "recording",
            Self::LiveList { .. } => "live_list",
            Self::LiveUpdate { .. } => "live_update",
            Self::Error { .. } => "error",
        }
    }
}

impl From<crate::routing::WithdrawReason> for WithdrawnReason {
    fn from(reason: crate::routing::WithdrawReason) -> Self {
        use crate::routing::WithdrawReason as R;
        match reason {
            R::Timeout => Self::Timeout,
            R::AgentUnavailable => Self::Unavailable,
            R::ConversationEnded => Self::ConversationEnded,
            R::CapacityFull => Self::CapacityFull,
            R::Cancelled => Self::Cancelled,
        }
    }
}

impl From<crate::routing::TransferFailure> for TransferFailedReason {
    fn from(reason: crate::routing::TransferFailure) -> Self {
        use crate::routing::TransferFailure as R;
        match reason {
            R::Declined => Self::Declined,
            R::Timeout => Self::Timeout,
            R::TargetUnavailable => Self::Unavailable,
        }
    }
}

impl From<crate::routing::RequeueReason> for UnassignedReason {
    fn from(reason: crate::routing::RequeueReason) -> Self {
        use crate::routing::RequeueReason as R;
        match reason {
            R::Transferred => Self::Transferred,
            R::AgentLost => Self::ConnectionLost,
            R::AgentRemoved => Self::Removed,
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

impl ServerToAgent {
    /// An `error` frame, optionally about one conversation.
    pub fn error(code: ErrorCode, message: impl Into<String>, conversation: Option<ConversationId>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            conversation,
        }
    }
}

#[cfg(test)]
mod tests;
