//! The conversation router: queues per agent group, offers to agents, presence, transfers, and the
//! authorisation matrix for conversations. A sans-IO state machine: no clock, no tasks, no sockets.
//!
//! See [`Router`] for the call order and the policies (fairness, timeouts, requeueing, transfers), and
//! [`can_read`] / [`can_write`] / [`can_manage`] for who may do what with a conversation.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// The store's user role, used by the authorisation functions.
pub use crate::store::Role;

/// An agent (any user who can take conversations: agents, and supervisors or admins who also take chats).
/// The same number as the user's id in the store; a JSON number on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub i64);

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent:{}", self.0)
    }
}

/// A conversation (one visitor's chat, from joining the queue to its end). On the wire a JSON **string** of
/// decimal digits (`"42"`), because JavaScript numbers lose integers above 2^53.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub u64);

impl serde::Serialize for ConversationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ConversationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        // Canonical decimal only: no sign, no leading zeros (so one id has one spelling).
        let canonical =
            !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text.len() == 1 || !text.starts_with('0'));
        match text.parse::<u64>() {
            Ok(n) if canonical => Ok(Self(n)),
            _ => Err(serde::de::Error::custom("conversation id must be a decimal string")),
        }
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conversation:{}", self.0)
    }
}

/// An agent group (the target of a site key), by its unique name. The caller normalises case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct GroupId(String);

impl GroupId {
    /// The group with this (already normalised) name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The group named `name` as the store spells or a user types it. The one case-folding rule for group
    /// names, the store's own (SQLite `NOCASE`): ASCII letters compare without case, every other character
    /// exactly. So `Sales` and `sales` are one group, while `Äpfel` and `äpfel`, or `Key` and `\u{212A}ey`
    /// (a Kelvin sign), stay as distinct here as they are in the store.
    pub fn from_name(name: &str) -> Self {
        Self(name.to_ascii_lowercase())
    }

    /// The group's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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

#[derive(Debug, Clone)]
struct PendingOffer {
    agent: AgentId,
    expires_at: Instant,
    id: u64,
}

#[derive(Debug)]
enum ConvState {
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
struct Conversation {
    group: GroupId,
    state: ConvState,
    /// Agents not to offer this conversation to before the given instant.
    skip: Vec<(AgentId, Instant)>,
    /// The position last reported to the visitor (None while assigned).
    reported_position: Option<u32>,
    /// When it last joined a queue (enqueue or requeue): the order of offers across groups.
    waiting_since: Instant,
    /// The pending queue timeout while queued: (deadline, timer id).
    queue_deadline: Option<(Instant, u64)>,
}

#[derive(Debug)]
struct Agent {
    groups: BTreeSet<GroupId>,
    capacity: u32,
    presence: Presence,
    /// Open sockets (an agent may have several tabs); connected while above zero.
    connections: u32,
    /// Set while disconnected and within the grace period: (deadline, epoch).
    grace: Option<(Instant, u64)>,
    idle_since: Instant,
    assigned: BTreeSet<ConversationId>,
    /// The single outstanding offer (queue or transfer) to this agent.
    offer: Option<ConversationId>,
    missed_offers: u32,
    reported_status: AgentStatus,
}

impl Agent {
    fn load(&self) -> u32 {
        u32::try_from(self.assigned.len()).unwrap_or(u32::MAX)
    }

    fn status(&self) -> AgentStatus {
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
    fn offerable(&self) -> bool {
        self.status() == AgentStatus::Available && self.offer.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Offer { conversation: ConversationId, id: u64 },
    Grace { agent: AgentId, epoch: u64 },
    Redispatch { group: GroupId },
    QueueTimeout { conversation: ConversationId, id: u64 },
}

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

    // ----- outputs -----

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

    // ----- agents -----

    /// Registers an agent: member of `groups`, taking at most `capacity` conversations at once. The agent
    /// starts disconnected and `Offline`.
    ///
    /// # Errors
    /// [`RoutingError::DuplicateAgent`].
    pub fn add_agent(
        &mut self,
        now: Instant,
        agent: AgentId,
        groups: impl IntoIterator<Item = GroupId>,
        capacity: u32,
    ) -> Result<()> {
        if self.agents.contains_key(&agent) {
            return Err(RoutingError::DuplicateAgent(agent));
        }
        let groups: BTreeSet<GroupId> = groups.into_iter().collect();
        for g in &groups {
            self.members.entry(g.clone()).or_default().insert(agent);
        }
        self.agents.insert(
            agent,
            Agent {
                groups,
                capacity,
                presence: Presence::Offline,
                connections: 0,
                grace: None,
                idle_since: now,
                assigned: BTreeSet::new(),
                offer: None,
                missed_offers: 0,
                reported_status: AgentStatus::Offline,
            },
        );
        Ok(())
    }

    /// Changes an agent's groups and capacity (an admin edited the account). Open conversations and an
    /// outstanding offer stay; a lowered capacity only limits new assignments.
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`].
    pub fn update_agent(
        &mut self,
        now: Instant,
        agent: AgentId,
        groups: impl IntoIterator<Item = GroupId>,
        capacity: u32,
    ) -> Result<()> {
        let a = self.agents.get_mut(&agent).ok_or(RoutingError::UnknownAgent(agent))?;
        let new: BTreeSet<GroupId> = groups.into_iter().collect();
        for g in a.groups.difference(&new) {
            if let Some(m) = self.members.get_mut(g) {
                m.remove(&agent);
            }
        }
        for g in new.difference(&a.groups) {
            self.members.entry(g.clone()).or_default().insert(agent);
        }
        self.dirty_groups.extend(new.iter().cloned());
        a.groups = new;
        a.capacity = capacity;
        self.touched_agents.insert(agent);
        self.finish(now);
        Ok(())
    }

    /// Removes an agent (account disabled or deleted): the outstanding offer is withdrawn and their
    /// conversations are requeued at once.
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`].
    pub fn remove_agent(&mut self, now: Instant, agent: AgentId) -> Result<()> {
        if !self.agents.contains_key(&agent) {
            return Err(RoutingError::UnknownAgent(agent));
        }
        self.withdraw_agent_offer(now, agent, WithdrawReason::AgentUnavailable);
        self.cancel_transfers_from(agent);
        self.requeue_all(now, agent, RequeueReason::AgentRemoved);
        if let Some(a) = self.agents.remove(&agent) {
            if let Some((deadline, epoch)) = a.grace {
                self.timers.remove(&(deadline, Timer::Grace { agent, epoch }));
            }
            for g in &a.groups {
                if let Some(m) = self.members.get_mut(g) {
                    m.remove(&agent);
                }
            }
        }
        self.touched_agents.remove(&agent);
        self.finish(now);
        Ok(())
    }

    /// One of the agent's sockets is up (call once per socket: an agent with two tabs is connected until
    /// both are closed). Within the reconnect grace period this restores the agent as it was; otherwise the
    /// agent comes back with the presence it has (`Offline` after an expired grace period).
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`].
    pub fn handle_agent_connected(&mut self, now: Instant, agent: AgentId) -> Result<()> {
        let a = self.agents.get_mut(&agent).ok_or(RoutingError::UnknownAgent(agent))?;
        if let Some((deadline, epoch)) = a.grace.take() {
            self.timers.remove(&(deadline, Timer::Grace { agent, epoch }));
            tracing::debug!(%agent, "agent reconnected within grace");
        } else if a.connections == 0 && a.presence == Presence::Available {
            a.idle_since = now;
        }
        a.connections = a.connections.saturating_add(1);
        self.mark_agent(agent);
        self.finish(now);
        Ok(())
    }

    /// One of the agent's sockets closed. When it was the last one: no more offers (an outstanding one is
    /// withdrawn and re-routed), and their conversations are requeued unless they reconnect within
    /// [`RouterConfig::reconnect_grace`]. Extra calls (more closes than opens) are ignored.
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`].
    pub fn handle_agent_disconnected(&mut self, now: Instant, agent: AgentId) -> Result<()> {
        let a = self.agents.get_mut(&agent).ok_or(RoutingError::UnknownAgent(agent))?;
        if a.connections == 0 {
            return Ok(());
        }
        a.connections -= 1;
        if a.connections > 0 {
            return Ok(());
        }
        let deadline = now + self.config.reconnect_grace;
        let epoch = self.next_id;
        self.next_id += 1;
        a.grace = Some((deadline, epoch));
        self.timers.insert((deadline, Timer::Grace { agent, epoch }));
        self.withdraw_agent_offer(now, agent, WithdrawReason::AgentUnavailable);
        self.mark_agent(agent);
        self.finish(now);
        Ok(())
    }

    /// The agent's chosen presence. Becoming `Available` starts their idle time; leaving it withdraws
    /// their outstanding offer. Open conversations stay in every case.
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`].
    pub fn set_presence(&mut self, now: Instant, agent: AgentId, presence: Presence) -> Result<()> {
        let a = self.agents.get_mut(&agent).ok_or(RoutingError::UnknownAgent(agent))?;
        let before = a.presence;
        a.presence = presence;
        if presence == Presence::Available {
            a.missed_offers = 0;
            if before != Presence::Available {
                a.idle_since = now;
            }
        } else {
            self.withdraw_agent_offer(now, agent, WithdrawReason::AgentUnavailable);
        }
        self.mark_agent(agent);
        self.finish(now);
        Ok(())
    }

    // ----- conversations -----

    /// A visitor joins `group`'s queue (at the back). Emits its position and, if an agent is free, an offer.
    ///
    /// # Errors
    /// [`RoutingError::DuplicateConversation`].
    pub fn enqueue(&mut self, now: Instant, conversation: ConversationId, group: GroupId) -> Result<()> {
        if self.conversations.contains_key(&conversation) {
            return Err(RoutingError::DuplicateConversation(conversation));
        }
        self.conversations.insert(
            conversation,
            Conversation {
                group: group.clone(),
                state: ConvState::Queued {
                    offer: None,
                    priority: false,
                },
                skip: Vec::new(),
                reported_position: None,
                waiting_since: now,
                queue_deadline: None,
            },
        );
        self.start_queue_timer(now, conversation);
        let q = self.queues.entry(group.clone()).or_default();
        q.push_back(conversation);
        let at = q.len() - 1;
        self.note_queue_change(&group, at);
        self.dirty_groups.insert(group);
        self.finish(now);
        Ok(())
    }

    /// `agent` accepts the offer of `conversation` (a queue offer or a transfer offer).
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`], [`RoutingError::UnknownConversation`],
    /// [`RoutingError::NotOfferedToYou`] (also for an offer that already lapsed), and
    /// [`RoutingError::CapacityFull`] if the agent's capacity was lowered meanwhile: then the offer is
    /// withdrawn and re-routed.
    pub fn accept(&mut self, now: Instant, agent: AgentId, conversation: ConversationId) -> Result<()> {
        let a = self.agents.get(&agent).ok_or(RoutingError::UnknownAgent(agent))?;
        let at_capacity = a.load() >= a.capacity;
        let c = self
            .conversations
            .get(&conversation)
            .ok_or(RoutingError::UnknownConversation(conversation))?;
        let (offer, previous) = match &c.state {
            ConvState::Queued { offer: Some(o), .. } if o.agent == agent => (o.clone(), None),
            ConvState::Assigned {
                agent: from,
                transfer: Some(o),
            } if o.agent == agent => (o.clone(), Some(*from)),
            _ => return Err(RoutingError::NotOfferedToYou { conversation, agent }),
        };
        if at_capacity {
            self.withdraw_offer(now, conversation, WithdrawReason::CapacityFull);
            self.finish(now);
            return Err(RoutingError::CapacityFull(agent));
        }
        self.timers.remove(&(
            offer.expires_at,
            Timer::Offer {
                conversation,
                id: offer.id,
            },
        ));
        let group = c.group.clone();
        if let Some(a) = self.agents.get_mut(&agent) {
            a.offer = None;
            a.missed_offers = 0;
            a.assigned.insert(conversation);
        }
        if let Some(from) = previous {
            self.release_from_agent(now, from, conversation);
        } else {
            self.remove_from_queue(&group, conversation);
            self.clear_queue_timer(conversation);
        }
        if let Some(c) = self.conversations.get_mut(&conversation) {
            c.state = ConvState::Assigned { agent, transfer: None };
            c.reported_position = None;
            c.skip.clear();
        }
        self.mark_agent(agent);
        tracing::debug!(%conversation, %agent, ?previous, "conversation assigned");
        self.actions.push_back(Action::Assigned {
            conversation,
            agent,
            previous,
        });
        self.finish(now);
        Ok(())
    }

    /// `agent` declines the offer of `conversation`: it goes to the next agent (a transfer offer fails
    /// back to the transferring agent). Not counted as a missed offer.
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`], [`RoutingError::UnknownConversation`],
    /// [`RoutingError::NotOfferedToYou`].
    pub fn decline(&mut self, now: Instant, agent: AgentId, conversation: ConversationId) -> Result<()> {
        let a = self.agents.get_mut(&agent).ok_or(RoutingError::UnknownAgent(agent))?;
        let c = self
            .conversations
            .get(&conversation)
            .ok_or(RoutingError::UnknownConversation(conversation))?;
        let held = match &c.state {
            ConvState::Queued { offer: Some(o), .. } | ConvState::Assigned { transfer: Some(o), .. } => {
                o.agent == agent
            }
            _ => false,
        };
        if !held {
            return Err(RoutingError::NotOfferedToYou { conversation, agent });
        }
        a.missed_offers = 0;
        self.take_offer(now, conversation, TransferFailure::Declined);
        self.finish(now);
        Ok(())
    }

    /// `from` transfers `conversation` to agent `to`: an offer to `to` (who must be `Available`, below
    /// capacity and without another offer). The conversation stays with `from` until `to` accepts.
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`] (either), [`RoutingError::UnknownConversation`],
    /// [`RoutingError::NotAssignedToYou`], [`RoutingError::TransferToSelf`],
    /// [`RoutingError::TransferPending`], [`RoutingError::TargetUnavailable`].
    pub fn transfer_to_agent(
        &mut self,
        now: Instant,
        from: AgentId,
        conversation: ConversationId,
        to: AgentId,
    ) -> Result<()> {
        if !self.agents.contains_key(&from) {
            return Err(RoutingError::UnknownAgent(from));
        }
        let target = self.agents.get(&to).ok_or(RoutingError::UnknownAgent(to))?;
        self.check_transferable(from, conversation)?;
        if to == from {
            return Err(RoutingError::TransferToSelf(conversation));
        }
        if !target.offerable() {
            let status = target.status();
            return Err(RoutingError::TargetUnavailable { agent: to, status });
        }
        self.make_offer(now, conversation, to, Some(from));
        self.finish(now);
        Ok(())
    }

    /// A transfer by `from` needs `conversation` assigned to `from` and no transfer of it pending.
    fn check_transferable(&self, from: AgentId, conversation: ConversationId) -> Result<()> {
        let c = self
            .conversations
            .get(&conversation)
            .ok_or(RoutingError::UnknownConversation(conversation))?;
        match &c.state {
            ConvState::Assigned { agent, transfer } if *agent == from => match transfer {
                Some(_) => Err(RoutingError::TransferPending(conversation)),
                None => Ok(()),
            },
            _ => Err(RoutingError::NotAssignedToYou {
                conversation,
                agent: from,
            }),
        }
    }

    /// `from` transfers `conversation` to `group`: it leaves `from` at once and waits at the front of the
    /// group's queue (behind other requeued conversations, ahead of fresh visitors). `group` may be the
    /// conversation's current group.
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`], [`RoutingError::UnknownConversation`],
    /// [`RoutingError::NotAssignedToYou`], [`RoutingError::TransferPending`].
    pub fn transfer_to_group(
        &mut self,
        now: Instant,
        from: AgentId,
        conversation: ConversationId,
        group: GroupId,
    ) -> Result<()> {
        if !self.agents.contains_key(&from) {
            return Err(RoutingError::UnknownAgent(from));
        }
        self.check_transferable(from, conversation)?;
        if let Some(c) = self.conversations.get_mut(&conversation) {
            c.group = group;
            c.skip.push((from, now + self.config.reoffer_after));
        }
        self.requeue(now, conversation, RequeueReason::Transferred);
        self.finish(now);
        Ok(())
    }

    /// The conversation ended (either side closed it, or the visitor left for good): it leaves its queue
    /// or frees its agent's capacity; an outstanding offer is withdrawn. Returns the agent that had it.
    ///
    /// # Errors
    /// [`RoutingError::UnknownConversation`].
    pub fn end(&mut self, now: Instant, conversation: ConversationId) -> Result<Option<AgentId>> {
        if !self.conversations.contains_key(&conversation) {
            return Err(RoutingError::UnknownConversation(conversation));
        }
        self.withdraw_offer(now, conversation, WithdrawReason::ConversationEnded);
        let Some(c) = self.conversations.remove(&conversation) else {
            return Err(RoutingError::UnknownConversation(conversation));
        };
        if let Some((at, id)) = c.queue_deadline {
            self.timers.remove(&(at, Timer::QueueTimeout { conversation, id }));
        }
        let had = match c.state {
            ConvState::Queued { .. } => {
                self.remove_from_queue(&c.group, conversation);
                None
            }
            ConvState::Assigned { agent, .. } => {
                self.release_from_agent(now, agent, conversation);
                Some(agent)
            }
        };
        self.dirty_groups.insert(c.group);
        self.finish(now);
        Ok(had)
    }

    /// Puts back a conversation that `agent` handled before the server restarted (its state at rest): it
    /// is assigned to `agent` again, above their capacity if need be, and no [`Action::Assigned`] is emitted
    /// (nothing changed for anyone). Restore assigned conversations before the agent's connection is
    /// reported; an agent who is not connected after a restart should be given the reconnect grace
    /// (report one connection and its close), after which their conversations are requeued as usual.
    ///
    /// # Errors
    /// [`RoutingError::UnknownAgent`], [`RoutingError::DuplicateConversation`].
    pub fn restore_assigned(
        &mut self,
        now: Instant,
        conversation: ConversationId,
        group: GroupId,
        agent: AgentId,
    ) -> Result<()> {
        if self.conversations.contains_key(&conversation) {
            return Err(RoutingError::DuplicateConversation(conversation));
        }
        let a = self.agents.get_mut(&agent).ok_or(RoutingError::UnknownAgent(agent))?;
        a.assigned.insert(conversation);
        self.conversations.insert(
            conversation,
            Conversation {
                group,
                state: ConvState::Assigned { agent, transfer: None },
                skip: Vec::new(),
                reported_position: None,
                waiting_since: now,
                queue_deadline: None,
            },
        );
        self.mark_agent(agent);
        self.finish(now);
        Ok(())
    }

    // ----- queries -----

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

    // ----- internals -----

    fn mark_agent(&mut self, agent: AgentId) {
        self.touched_agents.insert(agent);
        if let Some(a) = self.agents.get(&agent) {
            self.dirty_groups.extend(a.groups.iter().cloned());
        }
    }

    fn position_of(&self, group: &GroupId, conversation: ConversationId) -> Option<u32> {
        let q = self.queues.get(group)?;
        let i = q.iter().position(|c| *c == conversation)?;
        u32::try_from(i + 1).ok()
    }

    fn remove_from_queue(&mut self, group: &GroupId, conversation: ConversationId) {
        if let Some(q) = self.queues.get_mut(group)
            && let Some(at) = q.iter().position(|c| *c == conversation)
        {
            q.remove(at);
            if q.is_empty() {
                self.queues.remove(group);
            }
            self.note_queue_change(group, at);
        }
        self.dirty_groups.insert(group.clone());
    }

    /// Entries from `at` on may have moved: report their positions at the end of this call.
    fn note_queue_change(&mut self, group: &GroupId, at: usize) {
        let from = self.positions_from.entry(group.clone()).or_insert(at);
        *from = (*from).min(at);
    }

    /// Takes `conversation` off `agent` (transfer away, end, requeue): frees capacity, restarts idle time.
    fn release_from_agent(&mut self, now: Instant, agent: AgentId, conversation: ConversationId) {
        if let Some(a) = self.agents.get_mut(&agent)
            && a.assigned.remove(&conversation)
        {
            a.idle_since = now;
        }
        self.mark_agent(agent);
    }

    fn make_offer(&mut self, now: Instant, conversation: ConversationId, agent: AgentId, from: Option<AgentId>) {
        let expires_at = now + self.config.offer_timeout;
        let id = self.next_id;
        self.next_id += 1;
        let offer = PendingOffer { agent, expires_at, id };
        let Some(c) = self.conversations.get_mut(&conversation) else {
            return;
        };
        match &mut c.state {
            ConvState::Queued { offer: slot, .. } => *slot = Some(offer),
            ConvState::Assigned { transfer, .. } => *transfer = Some(offer),
        }
        if let Some(a) = self.agents.get_mut(&agent) {
            a.offer = Some(conversation);
        }
        self.timers.insert((expires_at, Timer::Offer { conversation, id }));
        self.mark_agent(agent);
        tracing::debug!(%conversation, %agent, transfer_from = ?from, "offer");
        self.actions.push_back(Action::Offer {
            conversation,
            agent,
            expires_at,
            transfer_from: from,
        });
    }

    /// Removes the outstanding offer of `conversation` (queue or transfer) without any action; returns it
    /// and whether it was a transfer (with its source).
    fn clear_offer(&mut self, conversation: ConversationId) -> Option<(PendingOffer, Option<AgentId>)> {
        let c = self.conversations.get_mut(&conversation)?;
        let (offer, from) = match &mut c.state {
            ConvState::Queued { offer, .. } => (offer.take()?, None),
            ConvState::Assigned { agent, transfer } => (transfer.take()?, Some(*agent)),
        };
        self.dirty_groups.insert(c.group.clone());
        self.timers.remove(&(
            offer.expires_at,
            Timer::Offer {
                conversation,
                id: offer.id,
            },
        ));
        if let Some(a) = self.agents.get_mut(&offer.agent)
            && a.offer == Some(conversation)
        {
            a.offer = None;
        }
        self.mark_agent(offer.agent);
        Some((offer, from))
    }

    /// Withdraws the outstanding offer of `conversation` (if any), telling the agent, and for a transfer
    /// telling the source it failed. The conversation is re-routed by the next dispatch.
    fn withdraw_offer(&mut self, _now: Instant, conversation: ConversationId, reason: WithdrawReason) {
        if let Some((offer, from)) = self.clear_offer(conversation) {
            self.actions.push_back(Action::OfferWithdrawn {
                conversation,
                agent: offer.agent,
                reason,
            });
            if let Some(from) = from
                && reason != WithdrawReason::ConversationEnded
                && reason != WithdrawReason::Cancelled
            {
                self.actions.push_back(Action::TransferFailed {
                    conversation,
                    from,
                    to: offer.agent,
                    reason: TransferFailure::TargetUnavailable,
                });
            }
        }
    }

    fn withdraw_agent_offer(&mut self, now: Instant, agent: AgentId, reason: WithdrawReason) {
        if let Some(conversation) = self.agents.get(&agent).and_then(|a| a.offer) {
            self.withdraw_offer(now, conversation, reason);
        }
    }

    /// The offer holder declined or let it lapse: skip them for a while and move on.
    fn take_offer(&mut self, now: Instant, conversation: ConversationId, failure: TransferFailure) {
        let Some((offer, from)) = self.clear_offer(conversation) else {
            return;
        };
        if failure == TransferFailure::Timeout {
            self.actions.push_back(Action::OfferWithdrawn {
                conversation,
                agent: offer.agent,
                reason: WithdrawReason::Timeout,
            });
        }
        match from {
            Some(from) => {
                self.actions.push_back(Action::TransferFailed {
                    conversation,
                    from,
                    to: offer.agent,
                    reason: failure,
                });
            }
            None => {
                let until = now + self.config.reoffer_after;
                if let Some(c) = self.conversations.get_mut(&conversation) {
                    c.skip.retain(|(a, _)| *a != offer.agent);
                    c.skip.push((offer.agent, until));
                    self.timers
                        .insert((until, Timer::Redispatch { group: c.group.clone() }));
                }
            }
        }
    }

    fn offer_lapsed(&mut self, now: Instant, conversation: ConversationId, id: u64) {
        let holder = match self.conversations.get(&conversation).map(|c| &c.state) {
            Some(ConvState::Queued { offer: Some(o), .. } | ConvState::Assigned { transfer: Some(o), .. })
                if o.id == id =>
            {
                o.agent
            }
            _ => return,
        };
        tracing::debug!(%conversation, agent = %holder, "offer lapsed");
        self.take_offer(now, conversation, TransferFailure::Timeout);
        let limit = self.config.away_after_missed_offers;
        if let Some(a) = self.agents.get_mut(&holder) {
            a.missed_offers = a.missed_offers.saturating_add(1);
            if limit.is_some_and(|n| a.missed_offers >= n) && a.presence == Presence::Available {
                tracing::info!(agent = %holder, missed = a.missed_offers, "agent set away after missed offers");
                a.presence = Presence::Away;
            }
        }
        self.mark_agent(holder);
    }

    /// Arms the queue timeout of `conversation` (it just joined a queue), replacing an earlier one.
    fn start_queue_timer(&mut self, now: Instant, conversation: ConversationId) {
        self.clear_queue_timer(conversation);
        let Some(timeout) = self.config.queue_timeout else {
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        let at = now + timeout;
        if let Some(c) = self.conversations.get_mut(&conversation) {
            c.queue_deadline = Some((at, id));
            self.timers.insert((at, Timer::QueueTimeout { conversation, id }));
        }
    }

    /// Disarms the queue timeout of `conversation` (it left its queue).
    fn clear_queue_timer(&mut self, conversation: ConversationId) {
        if let Some((at, id)) = self
            .conversations
            .get_mut(&conversation)
            .and_then(|c| c.queue_deadline.take())
        {
            self.timers.remove(&(at, Timer::QueueTimeout { conversation, id }));
        }
    }

    fn queue_timed_out(&mut self, now: Instant, conversation: ConversationId, id: u64) {
        let due = self.conversations.get(&conversation).is_some_and(|c| {
            matches!(c.state, ConvState::Queued { .. }) && c.queue_deadline.map(|(_, i)| i) == Some(id)
        });
        if !due {
            return;
        }
        self.withdraw_offer(now, conversation, WithdrawReason::ConversationEnded);
        let Some(c) = self.conversations.remove(&conversation) else {
            return;
        };
        self.remove_from_queue(&c.group, conversation);
        tracing::info!(%conversation, group = %c.group, "queue timeout");
        self.actions.push_back(Action::QueueTimedOut {
            conversation,
            group: c.group,
        });
    }

    fn grace_expired(&mut self, now: Instant, agent: AgentId, epoch: u64) {
        let Some(a) = self.agents.get_mut(&agent) else { return };
        if a.grace.map(|(_, e)| e) != Some(epoch) {
            return;
        }
        a.grace = None;
        a.presence = Presence::Offline;
        tracing::info!(%agent, conversations = a.assigned.len(), "agent lost; requeueing");
        self.cancel_transfers_from(agent);
        self.requeue_all(now, agent, RequeueReason::AgentLost);
        self.mark_agent(agent);
    }

    /// Withdraws the pending transfer offers of conversations `agent` holds (they are about to leave them).
    fn cancel_transfers_from(&mut self, agent: AgentId) {
        let held: Vec<ConversationId> = self
            .agents
            .get(&agent)
            .map(|a| a.assigned.iter().copied().collect())
            .unwrap_or_default();
        for conversation in held {
            let pending = matches!(
                self.conversations.get(&conversation).map(|c| &c.state),
                Some(ConvState::Assigned { transfer: Some(_), .. })
            );
            if pending && let Some((offer, _)) = self.clear_offer(conversation) {
                self.actions.push_back(Action::OfferWithdrawn {
                    conversation,
                    agent: offer.agent,
                    reason: WithdrawReason::Cancelled,
                });
            }
        }
    }

    fn requeue_all(&mut self, now: Instant, agent: AgentId, reason: RequeueReason) {
        let held: Vec<ConversationId> = self
            .agents
            .get(&agent)
            .map(|a| a.assigned.iter().copied().collect())
            .unwrap_or_default();
        for conversation in held {
            self.requeue(now, conversation, reason);
        }
    }

    /// Moves an assigned conversation back to the front part of its group's queue.
    fn requeue(&mut self, now: Instant, conversation: ConversationId, reason: RequeueReason) {
        self.withdraw_offer(now, conversation, WithdrawReason::Cancelled);
        let Some(c) = self.conversations.get_mut(&conversation) else {
            return;
        };
        let ConvState::Assigned { agent, .. } = c.state else {
            return;
        };
        c.state = ConvState::Queued {
            offer: None,
            priority: true,
        };
        c.waiting_since = now;
        let group = c.group.clone();
        self.start_queue_timer(now, conversation);
        self.release_from_agent(now, agent, conversation);
        // Insert behind the other priority entries, ahead of fresh visitors.
        let conversations = &self.conversations;
        let q = self.queues.entry(group.clone()).or_default();
        let at = q
            .iter()
            .position(|id| {
                !matches!(
                    conversations.get(id).map(|c| &c.state),
                    Some(ConvState::Queued { priority: true, .. })
                )
            })
            .unwrap_or(q.len());
        q.insert(at, conversation);
        self.note_queue_change(&group, at);
        self.dirty_groups.insert(group.clone());
        tracing::debug!(%conversation, %agent, %group, ?reason, "requeued");
        self.actions.push_back(Action::Requeued {
            conversation,
            group,
            previous_agent: agent,
            reason,
        });
    }

    /// Makes offers, emits positions and status changes. Called at the end of every public mutation.
    fn finish(&mut self, now: Instant) {
        let groups = std::mem::take(&mut self.dirty_groups);
        self.dispatch(now, &groups);
        for (group, from) in std::mem::take(&mut self.positions_from) {
            self.report_positions(&group, from);
        }
        // Dispatch may have dirtied groups again (agents touched); their queues are already served.
        self.dirty_groups.clear();
        let touched = std::mem::take(&mut self.touched_agents);
        for agent in touched {
            if let Some(a) = self.agents.get_mut(&agent) {
                let status = a.status();
                if status != a.reported_status {
                    a.reported_status = status;
                    self.actions.push_back(Action::AgentStatusChanged { agent, status });
                }
            }
        }
    }

    /// Offers waiting conversations of `groups` to free agents, oldest first across all these groups:
    /// requeued ones before fresh ones, then by the time they (re)joined a queue.
    ///
    /// Each queue is already in that order (requeued entries sit in front in the order they came back,
    /// fresh ones behind in arrival order), so this merges the queues lazily and stops reading a queue as
    /// soon as its group has no free agent left: the cost is the offers made plus the entries passed over,
    /// not the queue lengths.
    fn dispatch(&mut self, now: Instant, groups: &BTreeSet<GroupId>) {
        let has_free = |router: &Self, group: &GroupId| {
            router
                .members
                .get(group)
                .is_some_and(|m| m.iter().any(|id| router.agents.get(id).is_some_and(Agent::offerable)))
        };
        let mut cursors: Vec<(GroupId, usize)> = groups
            .iter()
            .filter(|g| self.queues.contains_key(*g) && has_free(self, g))
            .map(|g| (g.clone(), 0))
            .collect();
        loop {
            // The next waiting entry of each queue, and the oldest of those.
            let mut best: Option<((bool, Instant, ConversationId), usize)> = None;
            for (ci, (group, idx)) in cursors.iter_mut().enumerate() {
                let Some(queue) = self.queues.get(group) else { continue };
                while let Some(id) = queue.get(*idx) {
                    match self.conversations.get(id) {
                        Some(c) => match c.state {
                            ConvState::Queued { offer: None, priority } => {
                                let key = (!priority, c.waiting_since, *id);
                                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                                    best = Some((key, ci));
                                }
                                break;
                            }
                            _ => *idx += 1,
                        },
                        None => *idx += 1,
                    }
                }
            }
            let Some(((_, _, conversation), ci)) = best else { break };
            cursors[ci].1 += 1;
            let group = cursors[ci].0.clone();
            if !has_free(self, &group) {
                cursors.swap_remove(ci);
                continue;
            }
            let Some(members) = self.members.get(&group) else {
                continue;
            };
            let Some(c) = self.conversations.get_mut(&conversation) else {
                continue;
            };
            c.skip.retain(|(_, until)| *until > now);
            let skip = &c.skip;
            let agents = &self.agents;
            let best = members
                .iter()
                .filter(|id| !skip.iter().any(|(a, _)| a == *id))
                .filter_map(|id| {
                    agents
                        .get(id)
                        .filter(|a| a.offerable())
                        .map(|a| ((a.load(), a.idle_since, *id), *id))
                })
                .min_by_key(|(key, _)| *key)
                .map(|(_, id)| id);
            if let Some(agent) = best {
                self.make_offer(now, conversation, agent, None);
            }
        }
    }

    fn report_positions(&mut self, group: &GroupId, from: usize) {
        let Some(queue) = self.queues.get(group) else { return };
        for (i, conversation) in queue.iter().enumerate().skip(from) {
            let position = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if let Some(c) = self.conversations.get_mut(conversation)
                && c.reported_position != Some(position)
            {
                c.reported_position = Some(position);
                self.actions.push_back(Action::QueuePosition {
                    conversation: *conversation,
                    position,
                });
            }
        }
    }

    /// Checks the internal invariants; used by tests (also of the wiring). Returns a description of the
    /// first violation found.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut seen_assigned = BTreeMap::new();
        for (id, a) in &self.agents {
            for c in &a.assigned {
                if let Some(other) = seen_assigned.insert(*c, *id) {
                    return Err(format!("{c} assigned to {other} and {id}"));
                }
                match self.conversations.get(c).map(|c| &c.state) {
                    Some(ConvState::Assigned { agent, .. }) if agent == id => {}
                    other => return Err(format!("{id} holds {c} in state {other:?}")),
                }
            }
            if let Some(c) = a.offer {
                match self.conversations.get(&c).map(|c| &c.state) {
                    Some(ConvState::Queued { offer: Some(o), .. } | ConvState::Assigned { transfer: Some(o), .. })
                        if o.agent == *id => {}
                    other => return Err(format!("{id} has offer of {c} in state {other:?}")),
                }
            }
        }
        let mut queued = BTreeSet::new();
        for (g, q) in &self.queues {
            if q.is_empty() {
                return Err(format!("empty queue {g} kept"));
            }
            for (i, c) in q.iter().enumerate() {
                if !queued.insert(*c) {
                    return Err(format!("{c} queued twice"));
                }
                let reported = self.conversations.get(c).and_then(|conv| conv.reported_position);
                if reported.and_then(|p| usize::try_from(p).ok()) != Some(i + 1) {
                    return Err(format!("{c} is at {} in {g} but was told {reported:?}", i + 1));
                }
                match self.conversations.get(c) {
                    Some(conv) if &conv.group == g && matches!(conv.state, ConvState::Queued { .. }) => {}
                    other => return Err(format!("{c} in queue {g} but {other:?}")),
                }
            }
        }
        for (id, c) in &self.conversations {
            match &c.state {
                ConvState::Queued { offer, .. } => {
                    if !queued.contains(id) {
                        return Err(format!("{id} queued but in no queue"));
                    }
                    if let Some(o) = offer
                        && self.agents.get(&o.agent).and_then(|a| a.offer) != Some(*id)
                    {
                        return Err(format!("{id} offered to {} who does not know", o.agent));
                    }
                }
                ConvState::Assigned { agent, transfer } => {
                    if seen_assigned.get(id) != Some(agent) {
                        return Err(format!("{id} assigned to {agent} who does not hold it"));
                    }
                    if let Some(o) = transfer
                        && self.agents.get(&o.agent).and_then(|a| a.offer) != Some(*id)
                    {
                        return Err(format!("{id} transfer to {} who does not know", o.agent));
                    }
                }
            }
        }
        Ok(())
    }
}

// ----- authorisation -----

/// What the authorisation functions need to know about a conversation (from [`Router::access`] while it is
/// live, or from the archive once it ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationAccess {
    /// The group it belongs to.
    pub group: GroupId,
    /// The agent handling it (the last one, for an archived conversation); `None` while it waits.
    pub agent: Option<AgentId>,
}

/// May `user` (with `role` and member of `groups`) read `conversation` (live messages or its transcript)?
///
/// | role | reads |
/// |---|---|
/// | agent | only conversations assigned to them (not ones merely offered, not colleagues') |
/// | supervisor | the ones assigned to them, and every conversation of their groups |
/// | admin | every conversation |
pub fn can_read(user: AgentId, role: Role, groups: &[GroupId], conversation: &ConversationAccess) -> bool {
    let own = conversation.agent == Some(user);
    match role {
        Role::Agent => own,
        Role::Supervisor => own || groups.contains(&conversation.group),
        Role::Admin => true,
    }
}

/// May `user` write into `conversation` (send messages, typing, call signalling)? Only the agent it is
/// assigned to, whatever their role: supervisors watch read-only, admins do not talk to visitors.
pub fn can_write(user: AgentId, _role: Role, _groups: &[GroupId], conversation: &ConversationAccess) -> bool {
    conversation.agent == Some(user)
}

/// May `user` monitor `conversation`'s call (silent media, whisper)? Supervisors of its group and admins,
/// but never its own agent (who is a party to the call).
pub fn can_monitor(user: AgentId, role: Role, groups: &[GroupId], conversation: &ConversationAccess) -> bool {
    if conversation.agent == Some(user) {
        return false;
    }
    match role {
        Role::Agent => false,
        Role::Supervisor => groups.contains(&conversation.group),
        Role::Admin => true,
    }
}

/// May `user` manage `conversation` (transfer or end it)? Its agent, supervisors of its group, and admins.
pub fn can_manage(user: AgentId, role: Role, groups: &[GroupId], conversation: &ConversationAccess) -> bool {
    let own = conversation.agent == Some(user);
    match role {
        Role::Agent => own,
        Role::Supervisor => own || groups.contains(&conversation.group),
        Role::Admin => true,
    }
}

#[cfg(test)]
mod tests;
