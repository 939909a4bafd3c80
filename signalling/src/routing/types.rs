//! The router's vocabulary: presence and status, the actions it emits, its errors, its configuration and
//! the public view of a conversation.

use std::time::{Duration, Instant};

use super::{AgentId, ConversationId, GroupId};

/// What an agent chose (the server also forces `Offline` when the agent's connection is lost for longer than
/// the grace period, and `Away` after repeated missed offers, see [`RouterConfig::away_after_missed_offers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Takes new conversations.
    Available,
    /// Keeps the open conversations, takes no new ones.
    Away,
    /// Not working; takes no new conversations.
    Offline,
}

/// The status others see: the presence combined with the connection and the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Connected, available and below capacity.
    Available,
    /// Connected and available, but at capacity.
    Busy,
    /// Connected and away.
    Away,
    /// Not connected, or offline by choice.
    Offline,
}

/// Why an outstanding offer was taken back from an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawReason {
    /// The agent did not answer within [`RouterConfig::offer_timeout`].
    Timeout,
    /// The agent disconnected, went away/offline or was removed.
    AgentUnavailable,
    /// The conversation ended (the visitor left) before the agent answered.
    ConversationEnded,
    /// The agent accepted while already at capacity (their capacity was lowered meanwhile).
    CapacityFull,
    /// The conversation was moved to another group, or a transfer was superseded.
    Cancelled,
}

/// Why a conversation went back to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueReason {
    /// Its agent's connection was lost for longer than [`RouterConfig::reconnect_grace`].
    AgentLost,
    /// Its agent transferred it to a group.
    Transferred,
    /// Its agent was removed (e.g. the account was disabled).
    AgentRemoved,
}

/// Why a transfer to a named agent did not happen (the conversation stays with its agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferFailure {
    /// The target declined.
    Declined,
    /// The target did not answer in time.
    Timeout,
    /// The target disconnected or became unavailable meanwhile.
    TargetUnavailable,
}

/// An output of the router, to be delivered by the caller (to agent and visitor sockets, logs, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Offer `conversation` to `agent`, who must [`accept`](Router::accept) or [`decline`](Router::decline)
    /// before `expires_at`. `transfer_from` is set when a colleague transfers it to this agent.
    Offer {
        /// The conversation offered.
        conversation: ConversationId,
        /// The agent it is offered to.
        agent: AgentId,
        /// When the offer lapses.
        expires_at: Instant,
        /// The agent transferring it, for a transfer offer.
        transfer_from: Option<AgentId>,
    },
    /// The offer of `conversation` to `agent` no longer stands (tell the agent's UI).
    OfferWithdrawn {
        /// The conversation.
        conversation: ConversationId,
        /// The agent whose offer is withdrawn.
        agent: AgentId,
        /// Why.
        reason: WithdrawReason,
    },
    /// `agent` now handles `conversation`; `previous` is the agent it was transferred from, if any.
    Assigned {
        /// The conversation.
        conversation: ConversationId,
        /// Its new agent.
        agent: AgentId,
        /// The agent that handled it before (a transfer).
        previous: Option<AgentId>,
    },
    /// The waiting visitor of `conversation` is now at `position` (1 = next) in its group's queue. Emitted
    /// when it joins a queue and every time the number changes, in queue order.
    QueuePosition {
        /// The conversation.
        conversation: ConversationId,
        /// 1-based position.
        position: u32,
    },
    /// `conversation` left `previous_agent` and waits again, in `group`'s queue (ahead of fresh visitors).
    Requeued {
        /// The conversation.
        conversation: ConversationId,
        /// The queue it waits in.
        group: GroupId,
        /// The agent that had it.
        previous_agent: AgentId,
        /// Why.
        reason: RequeueReason,
    },
    /// A transfer from `from` to `to` did not happen; the conversation stays with `from`.
    TransferFailed {
        /// The conversation.
        conversation: ConversationId,
        /// The agent that still has it.
        from: AgentId,
        /// The intended target.
        to: AgentId,
        /// Why.
        reason: TransferFailure,
    },
    /// The status of `agent` changed (for their own UI and supervisors' dashboards).
    AgentStatusChanged {
        /// The agent.
        agent: AgentId,
        /// The new status.
        status: AgentStatus,
    },
    /// `conversation` waited in `group`'s queue for [`RouterConfig::queue_timeout`] without being
    /// assigned: it has left the router (as after [`Router::end`]; an outstanding offer was withdrawn).
    /// The caller ends it with reason `queue_timeout`.
    QueueTimedOut {
        /// The conversation.
        conversation: ConversationId,
        /// The queue it waited in.
        group: GroupId,
    },
}

/// Errors of router operations. An error leaves the router unchanged unless the variant says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// No agent with this id is registered.
    #[error("unknown agent {0}")]
    UnknownAgent(AgentId),
    /// An agent with this id is already registered.
    #[error("agent {0} is already registered")]
    DuplicateAgent(AgentId),
    /// No live conversation with this id (never queued, or already ended).
    #[error("unknown or ended conversation {0}")]
    UnknownConversation(ConversationId),
    /// A conversation with this id is already live.
    #[error("conversation {0} already exists")]
    DuplicateConversation(ConversationId),
    /// The agent answered an offer they do not hold (never made, withdrawn, or expired).
    #[error("{conversation} is not offered to {agent}")]
    NotOfferedToYou {
        /// The conversation.
        conversation: ConversationId,
        /// The agent who answered.
        agent: AgentId,
    },
    /// The agent tried to act on a conversation that is not assigned to them.
    #[error("{conversation} is not assigned to {agent}")]
    NotAssignedToYou {
        /// The conversation.
        conversation: ConversationId,
        /// The agent.
        agent: AgentId,
    },
    /// The agent is at capacity. For [`Router::accept`], the offer has been withdrawn and the conversation
    /// re-routed.
    #[error("{0} is at capacity")]
    CapacityFull(AgentId),
    /// The target of a transfer cannot take it now (not available, at capacity, or holding another offer).
    #[error("{agent} cannot take a transfer now (status {status:?})")]
    TargetUnavailable {
        /// The target.
        agent: AgentId,
        /// Its status.
        status: AgentStatus,
    },
    /// A conversation cannot be transferred to the agent who has it.
    #[error("cannot transfer {0} to the agent who has it")]
    TransferToSelf(ConversationId),
    /// A transfer of this conversation is already waiting for an answer.
    #[error("a transfer of {0} is already pending")]
    TransferPending(ConversationId),
}

/// Tunables of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// How long an agent has to accept an offer (default 20 s).
    pub offer_timeout: Duration,
    /// How long a disconnected agent keeps their conversations before they are requeued (default 30 s).
    pub reconnect_grace: Duration,
    /// After an agent declines or lets an offer lapse, the same conversation is not offered to them again
    /// for this long (default 60 s); other agents get it first. After that they may get it again, so a
    /// group with a single agent never strands a visitor.
    pub reoffer_after: Duration,
    /// After this many consecutive lapsed offers the agent is set `Away` (the "presence that lies" problem:
    /// an agent who left the desk keeps receiving offers). `None` disables it. Default `Some(3)`.
    pub away_after_missed_offers: Option<u32>,
    /// A conversation waiting in a queue this long (counted from when it last joined a queue) leaves the
    /// router with [`Action::QueueTimedOut`]. `None` (the default here; the server sets it) never times out.
    pub queue_timeout: Option<Duration>,
}

/// The longest duration the router accepts in its configuration (one day); longer values are capped.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            offer_timeout: Duration::from_secs(20),
            reconnect_grace: Duration::from_secs(30),
            reoffer_after: Duration::from_secs(60),
            away_after_missed_offers: Some(3),
            queue_timeout: None,
        }
    }
}

/// The public view of a live conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationState {
    /// Waiting in `group`'s queue at `position`, possibly with an outstanding offer.
    Queued {
        /// The queue.
        group: GroupId,
        /// 1-based position.
        position: u32,
        /// The agent holding the current offer, if any.
        offered_to: Option<AgentId>,
    },
    /// Handled by `agent`.
    Assigned {
        /// The group it belongs to (the last queue it waited in).
        group: GroupId,
        /// Its agent.
        agent: AgentId,
        /// The target of a pending transfer offer, if any.
        transfer_to: Option<AgentId>,
    },
}
