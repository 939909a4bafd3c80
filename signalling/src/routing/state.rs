//! The router's internal state: conversations, agents, pending offers and timers.

use std::collections::BTreeSet;
use std::time::Instant;

use super::{AgentId, AgentStatus, ConversationId, GroupId, Presence};

#[derive(Debug, Clone)]
pub(super) struct PendingOffer {
    pub(super) agent: AgentId,
    pub(super) expires_at: Instant,
    pub(super) id: u64,
}

#[derive(Debug)]
pub(super) enum ConvState {
    Queued {
        offer: Option<PendingOffer>,
        priority: bool,
    },
    Assigned {
        agent: AgentId,
        transfer: Option<PendingOffer>,
    },
}

#[derive(Debug)]
pub(super) struct Conversation {
    pub(super) group: GroupId,
    pub(super) state: ConvState,
    /// Agents not to offer this conversation to before the given instant.
    pub(super) skip: Vec<(AgentId, Instant)>,
    /// The position last reported to the visitor (None while assigned).
    pub(super) reported_position: Option<u32>,
    /// When it last joined a queue (enqueue or requeue): the order of offers across groups.
    pub(super) waiting_since: Instant,
    /// The pending queue timeout while queued: (deadline, timer id).
    pub(super) queue_deadline: Option<(Instant, u64)>,
}

#[derive(Debug)]
pub(super) struct Agent {
    pub(super) groups: BTreeSet<GroupId>,
    pub(super) capacity: u32,
    pub(super) presence: Presence,
    /// Open sockets (an agent may have several tabs); connected while above zero.
    pub(super) connections: u32,
    /// Set while disconnected and within the grace period: (deadline, epoch).
    pub(super) grace: Option<(Instant, u64)>,
    pub(super) idle_since: Instant,
    pub(super) assigned: BTreeSet<ConversationId>,
    /// The single outstanding offer (queue or transfer) to this agent.
    pub(super) offer: Option<ConversationId>,
    pub(super) missed_offers: u32,
    pub(super) reported_status: AgentStatus,
}

impl Agent {
    pub(super) fn load(&self) -> u32 {
        u32::try_from(self.assigned.len()).unwrap_or(u32::MAX)
    }

    pub(super) fn status(&self) -> AgentStatus {
        if self.connections == 0 || self.presence == Presence::Offline {
            AgentStatus::Offline
        } else if self.presence == Presence::Away {
            AgentStatus::Away
        } else if self.load() >= self.capacity {
            AgentStatus::Busy
        } else {
            AgentStatus::Available
        }
    }

    /// Can receive a new offer (ignoring per-conversation skips).
    pub(super) fn offerable(&self) -> bool {
        self.status() == AgentStatus::Available && self.offer.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    Offer { conversation: ConversationId, id: u64 },
    Grace { agent: AgentId, epoch: u64 },
    Redispatch { group: GroupId },
    QueueTimeout { conversation: ConversationId, id: u64 },
}
