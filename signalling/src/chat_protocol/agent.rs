//! The agent socket's frames, both directions.

use super::*;

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
