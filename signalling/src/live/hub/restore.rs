//! Restart: the live conversations at rest brought back before any command is served.

use super::*;

impl Hub {
    // ----- restart -----

    /// Brings back the live conversations at rest (after a crash or a restart), before any command is
    /// served: conversations with their messages, files and tokens; their agents, registered from the
    /// store as it is now and given the reconnect grace; the queues, in the order the conversations
    /// started. A conversation that ended before the archive had it is archived now; one whose agent is
    /// gone or disabled is requeued; one that cannot be read (a lost master key, a damaged row) stays at
    /// rest untouched and is reported. Returns the ids of the shared files to keep.
    ///
    /// `stored` are the conversations at rest ([`crate::archive::Archive::live_load`]); `users` the accounts
    /// of their agents as the store has them now (enabled ones only), read by the driver.
    pub(crate) fn restore(
        &mut self,
        stored: Vec<crate::live_store::StoredLiveConversation>,
        users: HashMap<i64, User>,
        now: Now,
    ) -> HashSet<String> {
        self.now = now;
        let mut keep = HashSet::new();
        if stored.is_empty() {
            return keep;
        }
        let now = self.now.at;
        for (id, user) in &users {
            let groups: Vec<GroupId> = user.groups.iter().map(|g| GroupId::from_name(g)).collect();
            if let Err(e) = self.router.add_agent(now, AgentId(*id), groups, user.max_conversations) {
                tracing::warn!(agent = id, error = %e, "restored agent not registered");
            }
        }
        let (mut restored, mut archived, mut failed) = (0usize, 0usize, 0usize);
        for conv in stored {
            let id = ConversationId(conv.id);
            self.next_conversation = self.next_conversation.max(conv.id);
            let ended = conv.ended.is_some();
            match self.restore_one(conv, &users, now) {
                Ok(files) => {
                    keep.extend(files);
                    if ended {
                        archived += 1;
                    } else {
                        restored += 1;
                    }
                }
                Err(e) => {
                    failed += 1;
                    tracing::error!(conversation = %id, error = %e,
                        "a live conversation at rest cannot be read; left in the database");
                }
            }
        }
        // Agents not connected yet keep their conversations for the reconnect grace, as after a dropped
        // socket; then they are requeued.
        for id in users.keys() {
            let agent = AgentId(*id);
            let connected = self.router.handle_agent_connected(now, agent);
            if let Err(e) = connected.and_then(|()| self.router.handle_agent_disconnected(now, agent)) {
                tracing::warn!(agent = id, error = %e, "restored agent has no reconnect grace");
            }
        }
        self.drain();
        metrics::counter!("relaydesk_conversations_restored_total").increment(restored as u64);
        tracing::info!(restored, archived, failed, "live conversations restored");
        keep
    }

    /// Restores one conversation (or, if it had ended, hands it to the archive). Returns its files.
    pub(super) fn restore_one(
        &mut self,
        s: crate::live_store::StoredLiveConversation,
        users: &HashMap<i64, User>,
        now: Instant,
    ) -> Result<Vec<String>, String> {
        let id = ConversationId(s.id);
        let key = s.key.map_err(|e| e.to_string())?;
        let cipher = Arc::new(ConversationCipher::new(&key, s.id.to_string()));
        let (visitor_id, participants) = persist::open_state(&cipher, &s.state).map_err(|e| e.to_string())?;
        let group = GroupId::new(s.group.clone());
        let masker = self.masker_for(&group);
        let mut messages = Vec::with_capacity(s.messages.len());
        let mut by_sender: HashMap<SenderKey, Vec<usize>> = HashMap::new();
        let mut text_bytes = 0usize;
        for (seq, sealed) in &s.messages {
            if *seq != messages.len() as u64 + 1 {
                return Err(format!("message {seq} out of sequence"));
            }
            let m = persist::open_message(&cipher, *seq, sealed).map_err(|e| format!("message {seq}: {e}"))?;
            let party = Party::from_rest(m.party);
            if m.kind == MessageKind::Chat {
                by_sender.entry(party.sender_key()).or_default().push(messages.len());
            }
            // Stored bodies were masked before they were sealed; masking again (idempotent) keeps the rule
            // that only the masker makes a MaskedText.
            let body = masker.mask(&m.body);
            text_bytes = text_bytes.saturating_add(body.len() + m.client_id.as_ref().map_or(0, String::len));
            messages.push(Stored {
                id: m.id,
                seq: *seq,
                ts: m.ts,
                from: m.from,
                party,
                client_id: m.client_id,
                body,
                amended: m.amended,
                file: m.file,
                kind: m.kind,
                call_file: m.call_file,
            });
        }
        if let Some((ended_at_ms, reason)) = s.ended {
            // It ended before the archive had it: archive it now.
            self.out.push_back(Output::Ended(EndedConversation {
                id,
                group,
                site_key: s.site_key,
                visitor_id,
                participants,
                started_at_ms: s.started_at_ms,
                ended_at_ms,
                reason: reason_from_name(&reason),
                messages: messages.into_iter().map(Stored::archived).collect(),
            }));
            return Ok(Vec::new());
        }
        let mut files = HashMap::new();
        let mut file_bytes = 0u64;
        for (file_id, sealed_key) in &s.files {
            let Some(file_ref) = messages
                .iter()
                .filter_map(|m| m.file.as_ref())
                .find(|f| &f.id == file_id)
            else {
                continue;
            };
            let file_cipher =
                persist::file_cipher(&cipher, file_id, sealed_key).map_err(|e| format!("file key: {e}"))?;
            file_bytes = file_bytes.saturating_add(file_ref.size);
            files.insert(file_id.clone(), (file_ref.clone(), file_cipher));
        }
        let kept: Vec<String> = files.keys().cloned().collect();
        self.with_occupancy(|o| o.started(&s.site_key));
        // The visitor has the resume grace to come back, as after a dropped socket.
        let grace = Duration::from_millis(self.config.live.resume_grace_ms);
        self.deadlines.push(Reverse((now + grace, id, 0)));
        let agent = s.agent.filter(|a| users.contains_key(a)).map(AgentId);
        self.convs.insert(
            id,
            Conv {
                id,
                cipher,
                group: group.clone(),
                site_key: s.site_key,
                visitor_id,
                origin: s.origin,
                masker: ConversationMasker::new(masker),
                messages,
                by_sender,
                visitor_socket: None,
                resume_hash: s.resume_hash,
                epoch: 0,
                watchers: BTreeSet::new(),
                participants,
                started_at_ms: s.started_at_ms,
                calls: HashMap::new(),
                files_hash: s.files_hash,
                files,
                files_pending: 0,
                text_bytes,
                file_bytes,
                call_texts: HashMap::new(),
            },
        );
        if let Some(c) = self.convs.get(&id) {
            self.ix.add_restored(id, c, self.config.live.files.enabled());
        }
        let routed = match agent {
            Some(agent) => self.router.restore_assigned(now, id, group.clone(), agent).map(|()| {
                self.ix.assigned.insert(id);
            }),
            None => {
                if s.agent.is_some() {
                    // Its agent is gone or disabled: it waits in the queue again.
                    self.writes.push(LiveWrite::Routing {
                        id: id.0,
                        group: group.as_str().to_owned(),
                        agent: None,
                    });
                }
                self.router.enqueue(now, id, group)
            }
        };
        if let Err(e) = routed {
            tracing::error!(conversation = %id, error = %e, "restored conversation not routed");
        }
        self.live_dirty.insert(id);
        Ok(kept)
    }
}
