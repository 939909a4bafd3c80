//! Transfers of an assigned conversation to another agent (an offer) or to a group (a requeue).

use super::*;

impl Router {
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
        self.check_transferable(from, Some(to), conversation)?;
        let target = self.agents.get(&to).ok_or(RoutingError::UnknownAgent(to))?;
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

    /// A transfer by `from` (to agent `to`, if given) needs both agents known, `conversation` assigned to
    /// `from` and no transfer of it pending. The errors come in that order.
    pub(super) fn check_transferable(
        &self,
        from: AgentId,
        to: Option<AgentId>,
        conversation: ConversationId,
    ) -> Result<()> {
        for agent in std::iter::once(from).chain(to) {
            if !self.agents.contains_key(&agent) {
                return Err(RoutingError::UnknownAgent(agent));
            }
        }
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
        self.check_transferable(from, None, conversation)?;
        if let Some(c) = self.conversations.get_mut(&conversation) {
            c.group = group;
            c.skip.push((from, now + self.config.reoffer_after));
        }
        self.requeue(now, conversation, RequeueReason::Transferred);
        self.finish(now);
        Ok(())
    }
}
