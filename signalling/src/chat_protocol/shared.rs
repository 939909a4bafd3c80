//! What both directions share: authors, reasons, error codes, transfer targets, files, live conversations.

use super::*;

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
