//! Chat: masking, storing and delivering a message, its amendments, and the end of a conversation.

use super::*;

impl Hub {
    // ----- chat -----

    pub(super) fn author_of(&self, party: Party) -> Author {
        match party {
            Party::Visitor => Author::Visitor {},
            // Supervisors never write chat (the authorisation matrix refuses it); named like an agent if so.
            Party::Agent(a) | Party::Supervisor(a) => Author::Agent {
                id: a,
                name: self.agents.get(&a).map(|e| e.name.clone()).unwrap_or_default(),
            },
        }
    }

    /// The conversation, if it may take one more message of `text` bytes.
    pub(super) fn conv_with_room(&mut self, conv: ConversationId, text: usize) -> Result<&mut Conv, Refusal> {
        let max = self.config.live.max_messages_per_conversation;
        let max_text = self.config.live.limits.max_text_bytes_per_conversation;
        let c = self
            .convs
            .get_mut(&conv)
            .ok_or((ErrorCode::NotFound, "no such conversation"))?;
        if c.messages.len() >= max {
            return Err((ErrorCode::TooLarge, "the conversation has too many messages"));
        }
        if c.text_bytes.saturating_add(text) > max_text {
            return Err((ErrorCode::TooLarge, "the conversation has reached its size limit"));
        }
        Ok(c)
    }

    /// Masks, stores and delivers one message. `body` is the raw text and goes nowhere but the masker.
    pub(super) fn append_message(
        &mut self,
        conv: ConversationId,
        party: Party,
        client_id: String,
        body: &str,
    ) -> Result<(), Refusal> {
        let from = self.author_of(party);
        let ts = self.now.unix_ms;
        let c = self.conv_with_room(conv, body.len() + client_id.len())?;
        let key = party.sender_key();
        let outcome = c.masker.mask(key, body);
        let amendments = c.amend_and_track(key, &outcome);
        c.push(ts, from, party, Some(client_id), outcome.text, None);
        let seq = c.messages.len() as u64;
        self.persist_messages(conv, std::iter::once(seq).chain(amendments.iter().map(|a| a.1)));
        metrics::counter!("relaydesk_chat_messages_total", "from" => party.metric_label()).increment(1);
        if !outcome.findings.is_empty() {
            metrics::counter!("relaydesk_chat_masked_messages_total").increment(1);
        }
        self.deliver_last(conv);
        self.send_amendments(conv, amendments);
        Ok(())
    }

    /// Queues the writes of messages `seqs` of `conv` (new or amended), sealed.
    pub(super) fn persist_messages(&mut self, conv: ConversationId, seqs: impl Iterator<Item = u64>) {
        let Some(c) = self.convs.get(&conv) else { return };
        for seq in seqs {
            let Some(m) = usize::try_from(seq)
                .ok()
                .and_then(|s| s.checked_sub(1))
                .and_then(|i| c.messages.get(i))
            else {
                continue;
            };
            let rest = MessageAtRest {
                id: m.id.clone(),
                ts: m.ts,
                from: m.from.clone(),
                party: m.party.at_rest(),
                client_id: m.client_id.clone(),
                body: m.body.as_str().to_owned(),
                amended: m.amended,
                file: m.file.clone(),
                kind: m.kind,
                call_file: m.call_file.clone(),
            };
            match persist::seal_message(&c.cipher, m.seq, &rest) {
                Ok(body) => self.writes.push(LiveWrite::Message {
                    id: conv.0,
                    seq: m.seq,
                    body,
                }),
                Err(e) => tracing::error!(conversation = %conv, error = %e, "sealing a message failed"),
            }
        }
    }

    /// Tells the visitor and every agent-side viewer about re-masked earlier messages.
    pub(super) fn send_amendments(&mut self, conv: ConversationId, amendments: Vec<(String, u64, String)>) {
        for (id, seq, body) in amendments {
            self.send_visitor(
                conv,
                &ServerToVisitor::MessageAmended {
                    id: id.clone(),
                    seq,
                    body: body.clone(),
                },
            );
            self.send_agent_viewers(
                conv,
                &ServerToAgent::MessageAmended {
                    conversation: conv,
                    id,
                    seq,
                    body,
                },
            );
        }
    }

    pub(super) fn end_conversation(&mut self, id: ConversationId, reason: EndReason) {
        // The note that the recording stopped is the transcript's last.
        self.recording_ended(id);
        let last_agent = self.router.access(id).and_then(|a| a.agent);
        self.live_dirty.remove(&id);
        if let Some(mut summary) = self.live_summary(id, Some(LiveState::Ended)) {
            summary.in_call = false;
            self.live_ended.push(summary);
        }
        let _ = self.router.end(self.now.at, id);
        self.drain();
        self.ix.assigned.remove(&id);
        let viewers = self.agent_viewers(id);
        if let Some(text) = to_json(&ServerToAgent::Ended {
            conversation: id,
            reason,
        }) {
            for (s, _) in &viewers {
                self.send_text(*s, text.clone());
            }
        }
        if let Some(agent) = last_agent
            && !viewers.iter().any(|(_, a)| *a == agent)
        {
            self.send_agent(
                agent,
                &ServerToAgent::Ended {
                    conversation: id,
                    reason,
                },
            );
        }
        self.send_visitor(id, &ServerToVisitor::Ended { reason });
        let Some(c) = self.convs.remove(&id) else { return };
        self.with_occupancy(|o| o.ended(&c.site_key));
        self.ix.forget_conversation(id, &c);
        if let Some(s) = c.visitor_socket {
            if self.stopping {
                self.close_socket(s, 1001, "server shutting down");
            } else {
                self.close_socket(s, 1000, "conversation ended");
            }
        }
        if !c.files.is_empty() {
            self.out
                .push_back(Output::RemoveFiles(c.files.keys().cloned().collect()));
        }
        if c.visitor_socket.is_none() && reason != EndReason::VisitorLost {
            let now = self.now.at;
            self.ended_while_away.retain(|_, (_, until)| *until > now);
            let grace = Duration::from_millis(self.config.live.resume_grace_ms);
            self.ended_while_away.insert(c.resume_hash, (reason, now + grace));
        }
        self.invites.forget(id);
        if !c.calls.is_empty() && self.config.media {
            self.out.push_back(Output::Media(MediaRequest::CloseRoom {
                room: MediaRoomId(id.0),
            }));
        }
        let record = EndedConversation {
            id,
            group: c.group,
            site_key: c.site_key,
            visitor_id: c.visitor_id,
            participants: c.participants,
            started_at_ms: c.started_at_ms,
            ended_at_ms: self.now.unix_ms,
            reason,
            messages: c.messages.into_iter().map(Stored::archived).collect(),
        };
        // At rest it stays until the archive has it (the archive's transaction deletes it): a crash before
        // then archives it at the next start.
        self.writes.push(LiveWrite::Ended {
            id: id.0,
            at_ms: record.ended_at_ms,
            reason: reason_name(reason),
        });
        self.out.push_back(Output::Ended(record));
        tracing::info!(conversation = %id, ?reason, "conversation ended");
    }

    /// Sends the conversation's newest message to the visitor and every agent-side viewer.
    pub(super) fn deliver_last(&mut self, conv: ConversationId) {
        let Some(frame) = self
            .convs
            .get(&conv)
            .and_then(|c| c.messages.last())
            .map(Self::visitor_message_frame)
        else {
            return;
        };
        self.send_visitor(conv, &frame);
        for (s, viewer) in self.agent_viewers(conv) {
            let frame = match self.convs.get(&conv).and_then(|c| c.messages.last()) {
                Some(m) => Self::agent_message_frame(conv, m, Some(viewer)),
                None => break,
            };
            self.send_agent_socket(s, &frame);
        }
    }
}
