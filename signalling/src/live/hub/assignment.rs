//! The router's actions delivered: offers, assignments, requeues, transfers, presence.

use super::*;

impl Hub {
    // ----- router actions -----

    pub(super) fn drain(&mut self) {
        while let Some(action) = self.router.poll_action() {
            self.deliver(action);
        }
    }

    pub(super) fn deliver(&mut self, action: Action) {
        match action {
            Action::Offer {
                conversation,
                agent,
                expires_at,
                transfer_from,
            } => {
                let Some(group) = self.convs.get(&conversation).map(|c| c.group.clone()) else {
                    return;
                };
                let ms = expires_at.saturating_duration_since(self.now.at).as_millis();
                self.send_agent(
                    agent,
                    &ServerToAgent::Offered {
                        conversation,
                        group,
                        expires_in_ms: u64::try_from(ms).unwrap_or(u64::MAX),
                        transfer_from,
                    },
                );
            }
            Action::OfferWithdrawn {
                conversation,
                agent,
                reason,
            } => self.send_agent(
                agent,
                &ServerToAgent::OfferWithdrawn {
                    conversation,
                    reason: reason.into(),
                },
            ),
            Action::Assigned {
                conversation,
                agent,
                previous,
            } => self.assigned(conversation, agent, previous),
            Action::QueuePosition { conversation, position } => {
                self.send_visitor(conversation, &ServerToVisitor::QueuePosition { position });
            }
            Action::Requeued {
                conversation,
                group,
                previous_agent,
                reason,
            } => {
                self.ix.assigned.remove(&conversation);
                self.live_dirty.insert(conversation);
                let masker = self.masker_for(&group);
                let mut old_group = None;
                if let Some(c) = self.convs.get_mut(&conversation)
                    && c.group != group
                {
                    c.masker.set_masker(masker);
                    old_group = Some(std::mem::replace(&mut c.group, group));
                }
                if let Some(old) = old_group {
                    self.moved_group(conversation, &old);
                }
                if let Some(c) = self.convs.get(&conversation) {
                    self.writes.push(LiveWrite::Routing {
                        id: conversation.0,
                        group: c.group.as_str().to_owned(),
                        agent: None,
                    });
                }
                self.drop_leg(conversation, Party::Agent(previous_agent), "transferred");
                self.send_agent(
                    previous_agent,
                    &ServerToAgent::Unassigned {
                        conversation,
                        reason: reason.into(),
                    },
                );
                self.send_visitor(conversation, &ServerToVisitor::Transferred {});
            }
            Action::TransferFailed {
                conversation,
                from,
                to,
                reason,
            } => self.send_agent(
                from,
                &ServerToAgent::TransferFailed {
                    conversation,
                    to,
                    reason: reason.into(),
                },
            ),
            Action::QueueTimedOut { conversation, .. } => {
                metrics::counter!("relaydesk_queue_timeouts_total").increment(1);
                self.end_conversation(conversation, EndReason::QueueTimeout);
            }
            Action::AgentStatusChanged { agent, status } => {
                let frame = ServerToAgent::PresenceChanged { agent, status };
                let Some(text) = to_json(&frame) else { return };
                let groups = self.agents.get(&agent).map(|a| a.groups.clone()).unwrap_or_default();
                let mut targets = Vec::new();
                for (id, entry) in &self.agents {
                    let watcher = match entry.role {
                        Role::Admin => true,
                        Role::Supervisor => entry.groups.iter().any(|g| groups.contains(g)),
                        Role::Agent => false,
                    };
                    if *id == agent || watcher {
                        targets.extend(entry.sockets.iter().copied());
                    }
                }
                for s in targets {
                    self.send_text(s, text.clone());
                }
            }
        }
    }

    /// The conversation moved to another group: the old group's supervisors see it leave their list (the
    pub(super) fn assigned(&mut self, conversation: ConversationId, agent: AgentId, previous: Option<AgentId>) {
        self.ix.assigned.insert(conversation);
        self.live_dirty.insert(conversation);
        let Some(c) = self.convs.get_mut(&conversation) else {
            return;
        };
        if !c.participants.iter().any(|p| p.agent == agent) {
            let name = self.agents.get(&agent).map(|a| a.name.clone()).unwrap_or_default();
            c.participants.push(crate::live::Participant {
                agent,
                name,
                joined_at_ms: self.now.unix_ms,
            });
            match persist::seal_state(&c.cipher, &c.visitor_id, &c.participants) {
                Ok(state) => self.writes.push(LiveWrite::State {
                    id: conversation.0,
                    state,
                }),
                Err(e) => tracing::error!(conversation = %conversation, error = %e, "sealing a conversation failed"),
            }
        }
        let group = c.group.clone();
        self.writes.push(LiveWrite::Routing {
            id: conversation.0,
            group: group.as_str().to_owned(),
            agent: Some(agent.0),
        });
        if let Some(prev) = previous {
            self.drop_leg(conversation, Party::Agent(prev), "transferred");
            self.send_agent(
                prev,
                &ServerToAgent::Unassigned {
                    conversation,
                    reason: crate::chat_protocol::UnassignedReason::Transferred,
                },
            );
        }
        self.send_agent(agent, &ServerToAgent::Assigned { conversation, group });
        let sockets: Vec<SocketId> = self
            .agents
            .get(&agent)
            .map(|a| a.sockets.iter().copied().collect())
            .unwrap_or_default();
        for s in sockets {
            self.replay_to_agent_socket(s, conversation, 0, agent);
        }
        let agent_name = self.agents.get(&agent).map(|a| a.name.clone()).unwrap_or_default();
        self.send_visitor(conversation, &ServerToVisitor::Assigned { agent_name });
    }
}
