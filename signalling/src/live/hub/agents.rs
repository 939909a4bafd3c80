//! Agents and console users: sockets opening and closing, account changes, rights checks, their frames.

use super::*;

impl Hub {
    // ----- agents -----

    pub(super) fn agent_open(&mut self, socket: SocketId, user: User) {
        let id = AgentId(user.id);
        let groups: Vec<GroupId> = user.groups.iter().map(|g| GroupId::from_name(g)).collect();
        let now = self.now.at;
        let registered = if self.router.agent_status(id).is_some() {
            self.router
                .update_agent(now, id, groups.clone(), user.max_conversations)
        } else {
            self.router.add_agent(now, id, groups.clone(), user.max_conversations)
        };
        if let Err(e) = registered.and_then(|()| self.router.handle_agent_connected(now, id)) {
            tracing::error!(error = %e, "agent registration failed");
        }
        self.sockets.insert(socket);
        self.ix.agent_sockets.insert(socket, id);
        let entry = self.agents.entry(id).or_insert_with(|| AgentEntry {
            name: String::new(),
            role: user.role,
            groups: Vec::new(),
            capacity: 0,
            sockets: BTreeSet::new(),
        });
        entry.name = user.display_name;
        entry.role = user.role;
        entry.groups = groups;
        entry.capacity = user.max_conversations;
        entry.sockets.insert(socket);
        self.drain();
        tracing::info!(agent = id.0, "agent socket opened");
    }

    pub(super) fn agent_closed(&mut self, socket: SocketId) {
        self.sockets.remove(&socket);
        let Some(agent) = self.forget_agent_socket(socket) else {
            return;
        };
        let monitored: Vec<ConversationId> = self
            .ix
            .legs
            .values()
            .filter(|(_, p)| *p == Party::Supervisor(agent))
            .map(|(c, _)| *c)
            .collect();
        for conv in monitored {
            let owned = self
                .convs
                .get(&conv)
                .and_then(|c| c.calls.get(&Party::Supervisor(agent)))
                .is_some_and(|l| l.socket == socket);
            if owned {
                self.drop_leg(conv, Party::Supervisor(agent), "disconnected");
            }
        }
        for conv in self.router.agent_conversations(agent) {
            let owned = self
                .convs
                .get(&conv)
                .and_then(|c| c.calls.get(&Party::Agent(agent)))
                .is_some_and(|l| l.socket == socket);
            if owned {
                self.drop_leg(conv, Party::Agent(agent), "disconnected");
            }
        }
        if let Err(e) = self.router.handle_agent_disconnected(self.now.at, agent) {
            tracing::warn!(error = %e, "agent disconnect not recorded");
        }
        self.drain();
    }

    /// Applies a user's current account to the live layer. Name and capacity change in place. When the role
    /// or the groups changed, the account is disabled, or `sessions_ended`, every socket of the user is
    /// closed at once (4401 when the login session ended: role change, disabled, new password; else 4410)
    /// and treated as closed, so nothing more of a group they left reaches them and their next frame is not
    /// served; the console reconnects with its new rights. A disabled user's conversations are requeued at
    /// once.
    pub(super) fn user_changed(&mut self, user: User, sessions_ended: bool) {
        let id = AgentId(user.id);
        let mut groups: Vec<GroupId> = user.groups.iter().map(|g| GroupId::new(g.to_lowercase())).collect();
        groups.sort_unstable();
        groups.dedup();
        let Some(entry) = self.agents.get_mut(&id) else { return };
        let mut before = entry.groups.clone();
        before.sort_unstable();
        before.dedup();
        let role_changed = entry.role != user.role;
        let session_over = sessions_ended || role_changed || user.disabled;
        let rights_changed = session_over || before != groups;
        let routing_changed = rights_changed || entry.capacity != user.max_conversations;
        entry.name = user.display_name;
        entry.role = user.role;
        entry.groups = groups.clone();
        entry.capacity = user.max_conversations;
        let sockets: Vec<SocketId> = if rights_changed {
            entry.sockets.iter().copied().collect()
        } else {
            Vec::new()
        };
        let (code, reason) = if session_over {
            (close::RESUME_REFUSED, "session ended")
        } else {
            (close::RIGHTS_CHANGED, "permissions changed")
        };
        for s in sockets {
            self.close_socket(s, code, reason);
            self.agent_closed(s);
        }
        let now = self.now.at;
        if routing_changed && self.router.agent_status(id).is_some() {
            let changed = if user.disabled {
                self.router.remove_agent(now, id)
            } else {
                self.router.update_agent(now, id, groups, user.max_conversations)
            };
            if let Err(e) = changed {
                tracing::warn!(agent = id.0, error = %e, "account change not applied to routing");
            }
        }
        if rights_changed {
            tracing::info!(agent = id.0, "account rights changed; sockets closed");
        }
        self.drain();
    }

    pub(super) fn check(
        &self,
        agent: AgentId,
        conv: ConversationId,
        rule: fn(AgentId, Role, &[GroupId], &ConversationAccess) -> bool,
    ) -> Result<ConversationAccess, Refusal> {
        let access = self
            .router
            .access(conv)
            .ok_or((ErrorCode::NotFound, "no such conversation"))?;
        let entry = self.agents.get(&agent).ok_or((ErrorCode::Forbidden, "unknown agent"))?;
        if rule(agent, entry.role, &entry.groups, &access) {
            Ok(access)
        } else if entry.role != Role::Admin && access.agent != Some(agent) && !entry.groups.contains(&access.group) {
            // A conversation of another group is answered as one that does not exist: nobody learns which
            // conversation ids are live elsewhere.
            Err((ErrorCode::NotFound, "no such conversation"))
        } else {
            Err((ErrorCode::Forbidden, "not permitted for this conversation"))
        }
    }

    /// The refusal of an `accept` / `decline`: an offer the agent does not hold of a conversation hidden from
    /// them (another group's) is `not_found`, like an unknown one, so the answer tells no live ids apart.
    pub(super) fn offer_refusal(&self, agent: AgentId, conv: ConversationId, e: &RoutingError) -> Refusal {
        match (e, self.check(agent, conv, |_, _, _, _| false)) {
            (RoutingError::NotOfferedToYou { .. }, Err(hidden @ (ErrorCode::NotFound, _))) => hidden,
            _ => routing_refusal(e),
        }
    }

    pub(super) fn agent_frame(&mut self, socket: SocketId, frame: AgentToServer) {
        let Some(&agent) = self.ix.agent_sockets.get(&socket) else {
            return;
        };
        let now = self.now.at;
        let conv_of = |f: &AgentToServer| -> Option<ConversationId> {
            match f {
                AgentToServer::Accept { conversation }
                | AgentToServer::Decline { conversation }
                | AgentToServer::Message { conversation, .. }
                | AgentToServer::Typing { conversation, .. }
                | AgentToServer::Delivered { conversation, .. }
                | AgentToServer::Read { conversation, .. }
                | AgentToServer::Transfer { conversation, .. }
                | AgentToServer::End { conversation }
                | AgentToServer::Watch { conversation }
                | AgentToServer::Unwatch { conversation }
                | AgentToServer::CallOffer { conversation, .. }
                | AgentToServer::CallEnd { conversation, .. }
                | AgentToServer::CallInvite { conversation, .. }
                | AgentToServer::CallAccept { conversation }
                | AgentToServer::CallDecline { conversation }
                | AgentToServer::CallCancel { conversation }
                | AgentToServer::CallMediaState { conversation, .. }
                | AgentToServer::CallScreenRequest { conversation }
                | AgentToServer::MonitorOffer { conversation, .. }
                | AgentToServer::Whisper { conversation, .. }
                | AgentToServer::MonitorEnd { conversation }
                | AgentToServer::CallPrepare { conversation }
                | AgentToServer::Recording { conversation, .. } => Some(*conversation),
                _ => None,
            }
        };
        let conv = conv_of(&frame);
        let result: Result<(), Refusal> = match frame {
            AgentToServer::Hello { resume } => {
                self.agent_hello(socket, agent, &resume);
                Ok(())
            }
            AgentToServer::SetPresence { presence } => self
                .router
                .set_presence(now, agent, presence)
                .map_err(|e| routing_refusal(&e)),
            AgentToServer::Accept { conversation } => self
                .router
                .accept(now, agent, conversation)
                .map_err(|e| self.offer_refusal(agent, conversation, &e)),
            AgentToServer::Decline { conversation } => self
                .router
                .decline(now, agent, conversation)
                .map_err(|e| self.offer_refusal(agent, conversation, &e)),
            AgentToServer::Message {
                conversation,
                client_id,
                body,
            } => self
                .check(agent, conversation, crate::routing::can_write)
                .and_then(|_| self.append_message(conversation, Party::Agent(agent), client_id, &body)),
            AgentToServer::Typing { conversation, active } => {
                self.check(agent, conversation, crate::routing::can_write).map(|_| {
                    let from = self.author_of(Party::Agent(agent));
                    self.send_visitor(
                        conversation,
                        &ServerToVisitor::Typing {
                            from: from.clone(),
                            active,
                        },
                    );
                    let viewers: Vec<SocketId> = self
                        .agent_viewers(conversation)
                        .into_iter()
                        .filter(|(_, a)| *a != agent)
                        .map(|(s, _)| s)
                        .collect();
                    for s in viewers {
                        self.send_agent_socket(
                            s,
                            &ServerToAgent::Typing {
                                conversation,
                                from: from.clone(),
                                active,
                            },
                        );
                    }
                })
            }
            AgentToServer::Delivered {
                conversation,
                up_to_seq,
            } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.send_visitor(conversation, &ServerToVisitor::Delivered { up_to_seq })),
            AgentToServer::Read {
                conversation,
                up_to_seq,
            } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.send_visitor(conversation, &ServerToVisitor::Read { up_to_seq })),
            AgentToServer::Transfer { conversation, to } => self
                .check(agent, conversation, crate::routing::can_manage)
                .and_then(|access| {
                    let from = access
                        .agent
                        .ok_or((ErrorCode::Conflict, "the conversation has no agent yet"))?;
                    match to {
                        crate::chat_protocol::TransferTarget::Agent { agent: target } => {
                            self.router.transfer_to_agent(now, from, conversation, target)
                        }
                        crate::chat_protocol::TransferTarget::Group { group } => {
                            self.router
                                .transfer_to_group(now, from, conversation, GroupId::from_name(group.as_str()))
                        }
                    }
                    .map_err(|e| routing_refusal(&e))
                }),
            AgentToServer::End { conversation } => self
                .check(agent, conversation, crate::routing::can_manage)
                .map(|_| self.end_conversation(conversation, EndReason::AgentEnded)),
            AgentToServer::Watch { conversation } => {
                self.check(agent, conversation, crate::routing::can_read).map(|_| {
                    self.watch(socket, conversation);
                    self.replay_to_agent_socket(socket, conversation, 0, agent);
                })
            }
            AgentToServer::Unwatch { conversation } => {
                self.unwatch(socket, conversation);
                // Answered like `watch`: an unknown or hidden conversation is `not_found`.
                self.check(agent, conversation, crate::routing::can_read).map(|_| ())
            }
            AgentToServer::CallOffer { conversation, sdp } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_offer(conversation, Party::Agent(agent), socket, sdp)),
            AgentToServer::CallEnd { conversation, reason } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_end_with(conversation, Party::Agent(agent), reason)),
            AgentToServer::CallInvite { conversation, video } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_invite(conversation, Party::Agent(agent), socket, video)),
            AgentToServer::CallAccept { conversation } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_reply(conversation, Party::Agent(agent), socket, true)),
            AgentToServer::CallDecline { conversation } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_reply(conversation, Party::Agent(agent), socket, false)),
            AgentToServer::CallCancel { conversation } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_cancel(conversation, Party::Agent(agent), socket)),
            AgentToServer::CallScreenRequest { conversation } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_screen_request(conversation, Party::Agent(agent), socket)),
            AgentToServer::CallMediaState {
                conversation,
                audio,
                video,
                screen,
                reconnecting,
            } => self.check(agent, conversation, crate::routing::can_write).map(|_| {
                self.call_media_state(
                    conversation,
                    Party::Agent(agent),
                    socket,
                    [audio, video, screen, reconnecting],
                )
            }),
            // A call leg of the conversation's agent, or a supervisor's monitoring leg.
            AgentToServer::CallPrepare { conversation } => {
                match self.check(agent, conversation, crate::routing::can_write) {
                    Ok(_) => Ok(Party::Agent(agent)),
                    Err(refusal) => self
                        .check(agent, conversation, crate::routing::can_monitor)
                        .map(|_| Party::Supervisor(agent))
                        .map_err(|_| refusal),
                }
                .map(|party| self.call_prepare(conversation, party, socket))
            }
            AgentToServer::MonitorOffer { conversation, sdp } => self
                .check(agent, conversation, crate::routing::can_monitor)
                .map(|_| self.call_offer(conversation, Party::Supervisor(agent), socket, sdp)),
            AgentToServer::Whisper { conversation, active } => self
                .check(agent, conversation, crate::routing::can_monitor)
                .and_then(|access| self.whisper(conversation, agent, access.agent, socket, active)),
            AgentToServer::MonitorEnd { conversation } => self
                .check(agent, conversation, crate::routing::can_monitor)
                .map(|_| self.drop_leg(conversation, Party::Supervisor(agent), "hung_up")),
            AgentToServer::Recording { conversation, action } => self
                .check(agent, conversation, crate::routing::can_write)
                .and_then(|_| self.recording_request(conversation, agent, action)),
        };
        if let Err(refusal) = result {
            self.agent_error(socket, conv, refusal);
        }
        self.drain();
    }

    pub(super) fn agent_hello(
        &mut self,
        socket: SocketId,
        agent: AgentId,
        resume: &[crate::chat_protocol::ResumePoint],
    ) {
        let Some(entry) = self.agents.get(&agent) else { return };
        let conversations = self.router.agent_conversations(agent);
        let welcome = ServerToAgent::Welcome {
            agent,
            name: entry.name.clone(),
            presence: self
                .router
                .agent_presence(agent)
                .unwrap_or(crate::routing::Presence::Offline),
            capacity: entry.capacity,
            conversations: conversations.clone(),
        };
        let (role, groups) = (entry.role, entry.groups.clone());
        self.send_agent_socket(socket, &welcome);
        // One replay for all of them, so the socket's replay backlog counts it once.
        let mut frames = Vec::new();
        for conv in conversations {
            let after = resume.iter().find(|p| p.conversation == conv).map_or(0, |p| p.last_seq);
            self.agent_replay(&mut frames, conv, after, agent);
        }
        self.send_batch(socket, frames);
        if role != Role::Agent {
            self.send_live_list(socket, role, &groups);
        }
    }
}
