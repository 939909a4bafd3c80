//! Visitors: join, resume within the grace, disconnect, and their frames.

use super::*;

impl Hub {
    // ----- visitors -----

    /// A fresh visitor token for `conv`: its hash replaces the old one in the conversation (`slot`) and in
    /// `index`, so the previous token stops working.
    pub(super) fn rotate_token(
        convs: &mut HashMap<ConversationId, Conv>,
        index: &mut HashMap<[u8; 32], ConversationId>,
        conv: ConversationId,
        slot: fn(&mut Conv) -> &mut [u8; 32],
    ) -> Option<String> {
        let token = match crate::token::new_session_token() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "no randomness for a visitor token");
                return None;
            }
        };
        let hash = crate::token::hash_token(&token);
        let old = std::mem::replace(slot(convs.get_mut(&conv)?), hash);
        index.remove(&old);
        index.insert(hash, conv);
        Some(token)
    }

    pub(super) fn new_resume_token(&mut self, conv: ConversationId) -> Option<String> {
        Self::rotate_token(&mut self.convs, &mut self.ix.resume_index, conv, |c| &mut c.resume_hash)
    }

    /// A new `files_token` for the visitor of `conv`, when files are enabled.
    pub(super) fn new_files_token(&mut self, conv: ConversationId) -> Option<String> {
        if !self.config.live.files.enabled() {
            return None;
        }
        Self::rotate_token(&mut self.convs, &mut self.ix.files_index, conv, |c| &mut c.files_hash)
    }

    /// Whether one more conversation of `site_key` fits the caps.
    fn admits(&self, site_key: &str) -> Result<(), crate::live::limits::Busy> {
        self.with_occupancy(|o| o.admits(&self.config.live.limits, site_key))
    }

    pub(super) fn welcome(&mut self, conv: ConversationId) -> bool {
        let Some(resume_token) = self.new_resume_token(conv) else {
            return false;
        };
        let files_token = self.new_files_token(conv);
        if let Some(c) = self.convs.get(&conv) {
            // A no-op for a conversation not created at rest yet (its creation carries the hashes).
            self.writes.push(LiveWrite::Tokens {
                id: conv.0,
                resume_hash: c.resume_hash,
                files_hash: c.files_hash,
            });
        }
        let secs = self.config.live.resume_grace_ms.div_ceil(1000);
        self.send_visitor(
            conv,
            &ServerToVisitor::Welcome {
                conversation: conv,
                resume_token,
                resume_within_secs: u32::try_from(secs).unwrap_or(u32::MAX),
                files_token,
            },
        );
        true
    }

    pub(super) fn visitor_join(&mut self, socket: SocketId, grant: TokenGrant) {
        self.sockets.insert(socket);
        if let Err(busy) = self.admits(&grant.site_key) {
            // Tokens issued before the cap was reached still meet it here.
            metrics::counter!("relaydesk_visitor_tokens_refused_total", "reason" => busy.label()).increment(1);
            tracing::info!(reason = busy.label(), "visitor refused: conversation cap");
            if let Some(text) = to_json(&ServerToVisitor::error(ErrorCode::Busy, busy.to_string())) {
                self.send_text(socket, text);
            }
            self.close_socket(socket, close::BUSY, "server busy");
            return;
        }
        self.next_conversation += 1;
        let id = ConversationId(self.next_conversation);
        let group = GroupId::from_name(&grant.group);
        self.ix.visitor_sockets.insert(socket, id);
        let masker = ConversationMasker::new(self.masker_for(&group));
        let key = match DataKey::generate() {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::error!(error = %e, "no randomness for a conversation key");
                self.ix.visitor_sockets.remove(&socket);
                self.close_socket(socket, 1011, "internal error");
                return;
            }
        };
        self.convs.insert(
            id,
            Conv {
                id,
                cipher: Arc::new(ConversationCipher::new(&key, id.0.to_string())),
                group: group.clone(),
                site_key: grant.site_key,
                visitor_id: grant.visitor_id,
                origin: grant.origin,
                masker,
                messages: Vec::new(),
                by_sender: HashMap::new(),
                visitor_socket: Some(socket),
                resume_hash: [0; 32],
                epoch: 0,
                watchers: BTreeSet::new(),
                participants: Vec::new(),
                started_at_ms: self.now.unix_ms,
                calls: HashMap::new(),
                files_hash: [0; 32],
                files: HashMap::new(),
                files_pending: 0,
                text_bytes: 0,
                file_bytes: 0,
                call_texts: HashMap::new(),
            },
        );
        if !self.welcome(id) {
            self.convs.remove(&id);
            self.close_socket(socket, 1011, "internal error");
            return;
        }
        if let Some(c) = self.convs.get(&id) {
            match persist::seal_state(&c.cipher, &c.visitor_id, &c.participants) {
                Ok(state) => self.writes.push(LiveWrite::Create(Box::new(NewLiveConversation {
                    id: id.0,
                    group: c.group.as_str().to_owned(),
                    site_key: c.site_key.clone(),
                    origin: c.origin.clone(),
                    started_at_ms: c.started_at_ms,
                    resume_hash: c.resume_hash,
                    files_hash: c.files_hash,
                    key: Arc::clone(&key),
                    state,
                }))),
                Err(e) => tracing::error!(conversation = %id, error = %e, "sealing a conversation failed"),
            }
        }
        let key = self.convs.get(&id).map(|c| c.site_key.clone()).unwrap_or_default();
        self.with_occupancy(|o| o.started(&key));
        if let Err(e) = self.router.enqueue(self.now.at, id, group) {
            tracing::error!(error = %e, "enqueue failed");
        }
        self.live_dirty.insert(id);
        self.drain();
        tracing::info!(conversation = %id, "visitor joined");
    }

    pub(super) fn visitor_resume(&mut self, socket: SocketId, origin: &str, token: &str, last_seq: u64) {
        self.sockets.insert(socket);
        let hash = crate::token::hash_token(token);
        if let Some((reason, until)) = self.ended_while_away.remove(&hash)
            && self.now.at < until
        {
            if let Some(text) = to_json(&ServerToVisitor::Ended { reason }) {
                self.send_text(socket, text);
            }
            self.close_socket(socket, 1000, "conversation ended");
            return;
        }
        let Some(id) = self.ix.resume_index.remove(&hash) else {
            tracing::info!("resume refused: unknown or used token");
            metrics::counter!("relaydesk_visitor_tokens_refused_total", "reason" => "resume").increment(1);
            self.close_socket(socket, close::RESUME_REFUSED, "resume token invalid");
            return;
        };
        let Some(c) = self.convs.get_mut(&id) else {
            self.close_socket(socket, close::RESUME_REFUSED, "resume token invalid");
            return;
        };
        if c.origin != origin {
            tracing::info!(conversation = %id, "resume refused: foreign origin");
            self.close_socket(socket, close::ORIGIN, "origin mismatch");
            return;
        }
        c.epoch += 1;
        let old = c.visitor_socket.replace(socket);
        if let Some(old) = old {
            self.ix.visitor_sockets.remove(&old);
            self.close_socket(old, close::SUPERSEDED, "resumed elsewhere");
        }
        self.ix.visitor_sockets.insert(socket, id);
        if !self.welcome(id) {
            return;
        }
        // What was missed, in order; then earlier messages that were amended (idempotent replacements).
        let frames: Vec<String> = match self.convs.get(&id) {
            Some(c) => {
                let mut v: Vec<String> = c
                    .messages
                    .iter()
                    .filter(|m| m.seq > last_seq && m.is_chat())
                    .filter_map(|m| to_json(&Self::visitor_message_frame(m)))
                    .collect();
                v.extend(
                    c.messages
                        .iter()
                        .filter(|m| m.seq <= last_seq && m.amended && m.is_chat())
                        .filter_map(|m| {
                            to_json(&ServerToVisitor::MessageAmended {
                                id: m.id.clone(),
                                seq: m.seq,
                                body: m.body.as_str().to_owned(),
                            })
                        }),
                );
                v
            }
            None => Vec::new(),
        };
        self.send_batch(socket, frames);
        match self.router.conversation_state(id) {
            Some(crate::routing::ConversationState::Queued { position, .. }) => {
                self.send_visitor(id, &ServerToVisitor::QueuePosition { position });
            }
            Some(crate::routing::ConversationState::Assigned { agent, .. }) => {
                let agent_name = self.agents.get(&agent).map(|a| a.name.clone()).unwrap_or_default();
                self.send_visitor(id, &ServerToVisitor::Assigned { agent_name });
            }
            None => {}
        }
        tracing::info!(conversation = %id, "visitor resumed");
    }

    pub(super) fn visitor_closed(&mut self, socket: SocketId) {
        self.sockets.remove(&socket);
        let Some(id) = self.ix.visitor_sockets.remove(&socket) else {
            return;
        };
        let grace = Duration::from_millis(self.config.live.resume_grace_ms);
        let Some(c) = self.convs.get_mut(&id) else { return };
        if c.visitor_socket != Some(socket) {
            return;
        }
        c.visitor_socket = None;
        c.epoch += 1;
        self.deadlines.push(Reverse((self.now.at + grace, id, c.epoch)));
        self.drop_leg(id, Party::Visitor, "disconnected");
    }

    pub(super) fn visitor_frame(&mut self, socket: SocketId, frame: VisitorToServer) {
        let Some(&id) = self.ix.visitor_sockets.get(&socket) else {
            return;
        };
        match frame {
            VisitorToServer::Hello { .. } | VisitorToServer::Resume { .. } => {
                self.visitor_error(socket, (ErrorCode::Conflict, "already joined"));
            }
            VisitorToServer::Message { client_id, body } => {
                if let Err(r) = self.append_message(id, Party::Visitor, client_id, &body) {
                    self.visitor_error(socket, r);
                }
            }
            VisitorToServer::Typing { active } => self.send_agent_viewers(
                id,
                &ServerToAgent::Typing {
                    conversation: id,
                    from: Author::Visitor {},
                    active,
                },
            ),
            VisitorToServer::Delivered { up_to_seq } => self.send_agent_viewers(
                id,
                &ServerToAgent::Delivered {
                    conversation: id,
                    up_to_seq,
                },
            ),
            VisitorToServer::Read { up_to_seq } => self.send_agent_viewers(
                id,
                &ServerToAgent::Read {
                    conversation: id,
                    up_to_seq,
                },
            ),
            VisitorToServer::End {} => self.end_conversation(id, EndReason::VisitorLeft),
            VisitorToServer::CallOffer { sdp } => self.call_offer(id, Party::Visitor, socket, sdp),
            VisitorToServer::CallInvite { video } => self.call_invite(id, Party::Visitor, socket, video),
            VisitorToServer::CallAccept {} => self.call_reply(id, Party::Visitor, socket, true),
            VisitorToServer::CallDecline {} => self.call_reply(id, Party::Visitor, socket, false),
            VisitorToServer::CallCancel {} => self.call_cancel(id, Party::Visitor, socket),
            VisitorToServer::CallScreenReply { share } => self.call_screen_reply(id, socket, share),
            VisitorToServer::CallMediaState {
                audio,
                video,
                screen,
                reconnecting,
            } => self.call_media_state(id, Party::Visitor, socket, [audio, video, screen, reconnecting]),
            VisitorToServer::CallEnd { reason } => self.call_end_with(id, Party::Visitor, reason),
            VisitorToServer::CallPrepare {} => self.call_prepare(id, Party::Visitor, socket),
            VisitorToServer::Payment { active } => self.recording_payment(id, active),
        }
    }
}
