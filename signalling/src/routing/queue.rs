//! Queues: positions and their reports, requeueing, queue timeouts, and `finish`, which every public
//! mutation ends with (offers, positions, status changes).

use super::*;

impl Router {
    pub(super) fn position_of(&self, group: &GroupId, conversation: ConversationId) -> Option<u32> {
        let q = self.queues.get(group)?;
        let i = q.iter().position(|c| *c == conversation)?;
        u32::try_from(i + 1).ok()
    }

    pub(super) fn remove_from_queue(&mut self, group: &GroupId, conversation: ConversationId) {
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
    pub(super) fn note_queue_change(&mut self, group: &GroupId, at: usize) {
        let from = self.positions_from.entry(group.clone()).or_insert(at);
        *from = (*from).min(at);
    }

    /// Arms the queue timeout of `conversation` (it just joined a queue), replacing an earlier one.
    pub(super) fn start_queue_timer(&mut self, now: Instant, conversation: ConversationId) {
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
    pub(super) fn clear_queue_timer(&mut self, conversation: ConversationId) {
        if let Some((at, id)) = self
            .conversations
            .get_mut(&conversation)
            .and_then(|c| c.queue_deadline.take())
        {
            self.timers.remove(&(at, Timer::QueueTimeout { conversation, id }));
        }
    }

    pub(super) fn queue_timed_out(&mut self, now: Instant, conversation: ConversationId, id: u64) {
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

    /// Moves an assigned conversation back to the front part of its group's queue.
    pub(super) fn requeue(&mut self, now: Instant, conversation: ConversationId, reason: RequeueReason) {
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

    pub(super) fn report_positions(&mut self, group: &GroupId, from: usize) {
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

    /// Makes offers, emits positions and status changes. Called at the end of every public mutation.
    pub(super) fn finish(&mut self, now: Instant) {
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
}
