//! The supervisors' side: the live list, a conversation moving between groups, monitoring and whisper.

use super::*;

impl Hub {
    // ----- the supervisors' live list -----

    pub(super) fn live_summary(&self, conv: ConversationId, state: Option<LiveState>) -> Option<LiveConversation> {
        let c = self.convs.get(&conv)?;
        let agent = self.router.access(conv).and_then(|a| a.agent);
        let state = state.unwrap_or(if agent.is_some() {
            LiveState::Assigned
        } else {
            LiveState::Queued
        });
        Some(LiveConversation {
            conversation: conv,
            group: c.group.clone(),
            state,
            agent,
            agent_name: agent.and_then(|a| self.agents.get(&a)).map(|e| e.name.clone()),
            started_at_ms: c.started_at_ms,
            in_call: c.calls.keys().any(|p| p.is_party_to_call()),
        })
    }

    /// The sockets of supervisors of `group` and of admins.
    pub(super) fn supervisor_sockets(&self, group: &GroupId) -> Vec<SocketId> {
        self.agents
            .values()
            .filter(|e| match e.role {
                Role::Admin => true,
                Role::Supervisor => e.groups.contains(group),
                Role::Agent => false,
            })
            .flat_map(|e| e.sockets.iter().copied())
            .collect()
    }

    /// Sends the summaries that changed since the last call (once per command, so changes coalesce).
    pub(super) fn flush_live(&mut self) {
        if self.live_dirty.is_empty() && self.live_ended.is_empty() {
            return;
        }
        let mut summaries = std::mem::take(&mut self.live_ended);
        for conv in std::mem::take(&mut self.live_dirty) {
            summaries.extend(self.live_summary(conv, None));
        }
        for summary in summaries {
            let targets = self.supervisor_sockets(&summary.group);
            if targets.is_empty() {
                continue;
            }
            if let Some(text) = to_json(&ServerToAgent::LiveUpdate { summary }) {
                for s in targets {
                    self.send_text(s, text.clone());
                }
            }
        }
    }

    pub(super) fn send_live_list(&mut self, socket: SocketId, role: Role, groups: &[GroupId]) {
        let mut ids: Vec<ConversationId> = self
            .convs
            .iter()
            .filter(|(_, c)| role == Role::Admin || groups.contains(&c.group))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        let conversations: Vec<LiveConversation> =
            ids.into_iter().filter_map(|id| self.live_summary(id, None)).collect();
        self.send_agent_socket(socket, &ServerToAgent::LiveList { conversations });
    }

    /// update names the new group), and monitors and watchers who may no longer see it are dropped.
    pub(super) fn moved_group(&mut self, conv: ConversationId, old: &GroupId) {
        if let Some(summary) = self.live_summary(conv, None)
            && let Some(text) = to_json(&ServerToAgent::LiveUpdate { summary })
        {
            for s in self.supervisor_sockets(old) {
                self.send_text(s, text.clone());
            }
        }
        let Some(c) = self.convs.get(&conv) else { return };
        let monitors: Vec<AgentId> = c
            .calls
            .keys()
            .filter_map(|p| match p {
                Party::Supervisor(a) => Some(*a),
                _ => None,
            })
            .collect();
        let watchers: Vec<SocketId> = c.watchers.iter().copied().collect();
        for a in monitors {
            if self.check(a, conv, crate::routing::can_monitor).is_err() {
                self.drop_leg(conv, Party::Supervisor(a), "not_permitted");
            }
        }
        for w in watchers {
            let Some(&a) = self.ix.agent_sockets.get(&w) else {
                continue;
            };
            if self.check(a, conv, crate::routing::can_read).is_err() {
                self.unwatch(w, conv);
                self.agent_error(
                    w,
                    Some(conv),
                    (
                        ErrorCode::Forbidden,
                        "the conversation moved to a group you do not supervise",
                    ),
                );
            }
        }
    }

    pub(super) fn notify_whisper(&mut self, conv: ConversationId, supervisor: AgentId, active: bool) {
        let Some(agent) = self.router.access(conv).and_then(|a| a.agent) else {
            return;
        };
        let name = self.agents.get(&supervisor).map(|e| e.name.clone()).unwrap_or_default();
        self.send_agent(
            agent,
            &ServerToAgent::Whisper {
                conversation: conv,
                supervisor: name,
                active,
            },
        );
    }

    /// Starts or stops a supervisor's whisper (its audio to the agent only).
    pub(super) fn whisper(
        &mut self,
        conv: ConversationId,
        supervisor: AgentId,
        agent: Option<AgentId>,
        socket: SocketId,
        active: bool,
    ) -> Result<(), Refusal> {
        if agent.is_none() {
            return Err((ErrorCode::Conflict, "the conversation has no agent"));
        }
        let leg = self
            .convs
            .get_mut(&conv)
            .and_then(|c| c.calls.get_mut(&Party::Supervisor(supervisor)))
            .ok_or((
                ErrorCode::Conflict,
                "you are not monitoring this call (monitor_offer first)",
            ))?;
        if leg.whisper == active {
            return Ok(());
        }
        leg.whisper = active;
        let participant = leg.participant;
        if !self.config.media {
            return Err((ErrorCode::MediaUnavailable, "calls are not available on this server"));
        }
        self.out.push_back(Output::Media(MediaRequest::SetRole {
            conversation: conv,
            participant,
            role: MediaRole::Supervisor { whisper: active },
            socket,
        }));
        self.notify_whisper(conv, supervisor, active);
        tracing::info!(conversation = %conv, supervisor = supervisor.0, active, "whisper");
        Ok(())
    }
}
