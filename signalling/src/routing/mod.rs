//! The conversation router: queues per agent group, offers to agents, presence, transfers, and the
//! authorisation matrix for conversations. A sans-IO state machine: no clock, no tasks, no sockets.
//!
//! See [`Router`] for the call order and the policies (fairness, timeouts, requeueing, transfers), and
//! [`can_read`] / [`can_write`] / [`can_manage`] for who may do what with a conversation.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

/// The ids and the user role, defined in [`crate::domain`].
pub use crate::domain::{AgentId, ConversationId, GroupId, Role};

mod access;
mod agents;
mod conversations;
mod invariants;
mod offers;
mod queue;
mod state;
mod transfers;
mod types;

pub use access::{ConversationAccess, can_manage, can_monitor, can_read, can_write};
use state::{Agent, ConvState, Conversation, PendingOffer, Timer};
pub use types::*;

/// The conversation router.
///
/// # Call order
/// 1. Register agents with [`add_agent`](Self::add_agent) (they start disconnected and `Offline`), report
///    their sockets with [`handle_agent_connected`](Self::handle_agent_connected) /
///    [`handle_agent_disconnected`](Self::handle_agent_disconnected) and their choices with
///    [`set_presence`](Self::set_presence).
/// 2. Feed conversation events: [`enqueue`](Self::enqueue), [`accept`](Self::accept),
///    [`decline`](Self::decline), [`transfer_to_agent`](Self::transfer_to_agent),
///    [`transfer_to_group`](Self::transfer_to_group), [`end`](Self::end).
/// 3. After **every** call (including the failed ones, which can emit actions: see [`RoutingError`]), drain
///    [`poll_action`](Self::poll_action) until `None` and deliver the actions in order.
/// 4. Then ask [`poll_timeout`](Self::poll_timeout) and call [`handle_timeout`](Self::handle_timeout) once
///    that instant has passed (earlier calls are harmless); drain actions again.
///
/// Every method takes `now`; it must never go backwards between calls.
///
/// # Policies
/// - **Selection**: the head of a group's queue (first in, first out; requeued and transferred conversations
///   go ahead of fresh visitors, in the order they came back) is offered to the group's agent that is
///   connected, `Available`, below capacity and holds no other offer, choosing the **least loaded** and,
///   among equals, the **longest idle** (idle since the end of their last conversation or since they
///   became available), then the lowest id. With a capacity of one this is plain longest-idle. A
///   conversation that no agent may take is passed over; the ones behind it can still be offered. An agent
///   in several groups gets the conversation that has waited longest across those groups (requeued ones
///   first).
/// - **Offers**: one outstanding offer per conversation and per agent. An offer lapses after
///   [`RouterConfig::offer_timeout`]; lapsed or declined, the conversation goes to the next agent and is
///   not offered to the same agent again for [`RouterConfig::reoffer_after`].
/// - **Presence**: an agent who disconnects gets no offers (their outstanding offer is withdrawn at once)
///   and keeps their conversations for [`RouterConfig::reconnect_grace`]; back in time, nothing changes;
///   otherwise their conversations are requeued at the front and their presence becomes `Offline`.
///   Going `Away` or `Offline` by choice withdraws the outstanding offer and keeps open conversations.
/// - **Transfers**: to an agent, as an offer to that agent while the conversation stays with the current
///   agent until the target accepts (decline or timeout: [`Action::TransferFailed`], nothing lost); to a
///   group, immediately requeued at the front of that group's queue (the visitor has already waited once),
///   not offered back to the transferring agent for [`RouterConfig::reoffer_after`].
/// - **Queue positions** are emitted to every waiting conversation whose position changed, front to back.
/// - **Queue timeout**: a conversation still waiting [`RouterConfig::queue_timeout`] after it last joined a
///   queue leaves the router ([`Action::QueueTimedOut`]; an outstanding offer is withdrawn first). Assigned
///   conversations never time out.
///
/// # Example
/// ```
/// use std::time::Instant;
/// use relaydesk_signalling::routing::*;
///
/// let mut router = Router::new(RouterConfig::default());
/// let t0 = Instant::now();
/// let sales = GroupId::new("sales");
/// router.add_agent(t0, AgentId(1), [sales.clone()], 4)?;
/// router.handle_agent_connected(t0, AgentId(1))?;
/// router.set_presence(t0, AgentId(1), Presence::Available)?;
/// router.enqueue(t0, ConversationId(10), sales)?;
/// let mut offered = None;
/// while let Some(action) = router.poll_action() {
///     // Deliver: `queue_position` to the visitor, `offered` to the agent, ...
///     if let Action::Offer { conversation, agent, .. } = action {
///         offered = Some((conversation, agent));
///     }
/// }
/// assert_eq!(offered, Some((ConversationId(10), AgentId(1))));
/// // Nobody answers; the driver sleeps until the next deadline and reports it.
/// let deadline = router.poll_timeout().expect("the offer has a deadline");
/// router.handle_timeout(deadline);
/// assert!(matches!(router.poll_action(), Some(Action::OfferWithdrawn { reason: WithdrawReason::Timeout, .. })));
/// # Ok::<(), RoutingError>(())
/// ```
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    agents: BTreeMap<AgentId, Agent>,
    members: BTreeMap<GroupId, BTreeSet<AgentId>>,
    queues: BTreeMap<GroupId, VecDeque<ConversationId>>,
    conversations: HashMap<ConversationId, Conversation>,
    timers: BTreeSet<(Instant, Timer)>,
    actions: VecDeque<Action>,
    dirty_groups: BTreeSet<GroupId>,
    /// Per queue, the first index whose position may have changed since positions were last reported.
    positions_from: BTreeMap<GroupId, usize>,
    touched_agents: BTreeSet<AgentId>,
    next_id: u64,
}

type Result<T, E = RoutingError> = std::result::Result<T, E>;

impl Router {
    /// An empty router. Durations in `config` are capped at [`MAX_DURATION`] (so deadlines never overflow).
    pub fn new(mut config: RouterConfig) -> Self {
        for d in [
            &mut config.offer_timeout,
            &mut config.reconnect_grace,
            &mut config.reoffer_after,
        ] {
            *d = (*d).min(MAX_DURATION);
        }
        config.queue_timeout = config.queue_timeout.map(|d| d.min(MAX_DURATION));
        Self {
            config,
            agents: BTreeMap::new(),
            members: BTreeMap::new(),
            queues: BTreeMap::new(),
            conversations: HashMap::new(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            dirty_groups: BTreeSet::new(),
            positions_from: BTreeMap::new(),
            touched_agents: BTreeSet::new(),
            next_id: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The next action to deliver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if anything is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Fires every timer due at `now`: lapsed offers, expired reconnect grace periods, ended skips.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, timer)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::Offer { conversation, id } => self.offer_lapsed(now, conversation, id),
                Timer::Grace { agent, epoch } => self.grace_expired(now, agent, epoch),
                Timer::Redispatch { group } => {
                    self.dirty_groups.insert(group);
                }
                Timer::QueueTimeout { conversation, id } => self.queue_timed_out(now, conversation, id),
            }
        }
        self.finish(now);
    }

    /// The state of a live conversation.
    pub fn conversation_state(&self, conversation: ConversationId) -> Option<ConversationState> {
        let c = self.conversations.get(&conversation)?;
        Some(match &c.state {
            ConvState::Queued { offer, .. } => ConversationState::Queued {
                group: c.group.clone(),
                position: self.position_of(&c.group, conversation).unwrap_or(0),
                offered_to: offer.as_ref().map(|o| o.agent),
            },
            ConvState::Assigned { agent, transfer } => ConversationState::Assigned {
                group: c.group.clone(),
                agent: *agent,
                transfer_to: transfer.as_ref().map(|o| o.agent),
            },
        })
    }

    /// What the [authorisation functions](can_read) need to know about a live conversation.
    pub fn access(&self, conversation: ConversationId) -> Option<ConversationAccess> {
        let c = self.conversations.get(&conversation)?;
        let agent = match &c.state {
            ConvState::Assigned { agent, .. } => Some(*agent),
            ConvState::Queued { .. } => None,
        };
        Some(ConversationAccess {
            group: c.group.clone(),
            agent,
        })
    }

    /// The agent's current status.
    pub fn agent_status(&self, agent: AgentId) -> Option<AgentStatus> {
        self.agents.get(&agent).map(Agent::status)
    }

    /// The agent's chosen presence.
    pub fn agent_presence(&self, agent: AgentId) -> Option<Presence> {
        self.agents.get(&agent).map(|a| a.presence)
    }

    /// The conversations assigned to the agent, by id.
    pub fn agent_conversations(&self, agent: AgentId) -> Vec<ConversationId> {
        self.agents
            .get(&agent)
            .map(|a| a.assigned.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The conversations waiting in `group`'s queue, front first.
    pub fn queue(&self, group: &GroupId) -> Vec<ConversationId> {
        self.queues
            .get(group)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Number of live conversations (queued or assigned).
    pub fn live_conversations(&self) -> usize {
        self.conversations.len()
    }
}

#[cfg(test)]
mod tests;
