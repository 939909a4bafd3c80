//! Agents: registration, capacity and groups, sockets and reconnect grace, presence.

use super::*;

impl Router {
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

    pub(super) fn mark_agent(&mut self, agent: AgentId) {
        self.touched_agents.insert(agent);
        if let Some(a) = self.agents.get(&agent) {
            self.dirty_groups.extend(a.groups.iter().cloned());
        }
    }

    /// Takes `conversation` off `agent` (transfer away, end, requeue): frees capacity, restarts idle time.
    pub(super) fn release_from_agent(&mut self, now: Instant, agent: AgentId, conversation: ConversationId) {
        if let Some(a) = self.agents.get_mut(&agent)
            && a.assigned.remove(&conversation)
        {
            a.idle_since = now;
        }
        self.mark_agent(agent);
    }

    pub(super) fn grace_expired(&mut self, now: Instant, agent: AgentId, epoch: u64) {
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
    pub(super) fn cancel_transfers_from(&mut self, agent: AgentId) {
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

    pub(super) fn requeue_all(&mut self, now: Instant, agent: AgentId, reason: RequeueReason) {
        let held: Vec<ConversationId> = self
            .agents
            .get(&agent)
            .map(|a| a.assigned.iter().copied().collect())
            .unwrap_or_default();
        for conversation in held {
            self.requeue(now, conversation, reason);
        }
    }
}
