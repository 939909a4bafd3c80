//! A conversation's life in the router: enqueued, accepted or declined, ended, restored after a restart.

use super::*;

impl Router {
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
}
