//! Offers: choosing an agent for the head of a queue, making, withdrawing and lapsing offers.

use super::*;

impl Router {
    pub(super) fn make_offer(
        &mut self,
        now: Instant,
        conversation: ConversationId,
        agent: AgentId,
        from: Option<AgentId>,
    ) {
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
    pub(super) fn clear_offer(&mut self, conversation: ConversationId) -> Option<(PendingOffer, Option<AgentId>)> {
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
    pub(super) fn withdraw_offer(&mut self, _now: Instant, conversation: ConversationId, reason: WithdrawReason) {
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

    pub(super) fn withdraw_agent_offer(&mut self, now: Instant, agent: AgentId, reason: WithdrawReason) {
        if let Some(conversation) = self.agents.get(&agent).and_then(|a| a.offer) {
            self.withdraw_offer(now, conversation, reason);
        }
    }

    /// The offer holder declined or let it lapse: skip them for a while and move on.
    pub(super) fn take_offer(&mut self, now: Instant, conversation: ConversationId, failure: TransferFailure) {
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

    pub(super) fn offer_lapsed(&mut self, now: Instant, conversation: ConversationId, id: u64) {
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

    /// Offers waiting conversations of `groups` to free agents, oldest first across all these groups:
    /// requeued ones before fresh ones, then by the time they (re)joined a queue.
    ///
    /// Each queue is already in that order (requeued entries sit in front in the order they came back,
    /// fresh ones behind in arrival order), so this merges the queues lazily and stops reading a queue as
    /// soon as its group has no free agent left: the cost is the offers made plus the entries passed over,
    /// not the queue lengths.
    pub(super) fn dispatch(&mut self, now: Instant, groups: &BTreeSet<GroupId>) {
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
}
