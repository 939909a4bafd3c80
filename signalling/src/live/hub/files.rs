//! Files in chat: who may write or read a conversation's files, its slots, a shared file posted.

use super::*;

/// A sealed file on disk, with its key (kept at rest sealed under its conversation's key).
pub(crate) struct StoredFile {
    /// Its id (also the file name on disk).
    pub id: String,
    /// Opens its content.
    pub cipher: Arc<ConversationCipher>,
    /// Its key, for the conversation's record at rest.
    pub key: Arc<DataKey>,
    /// Raw (unmasked) name: the hub masks it before anyone sees it.
    pub raw_name: String,
    pub size: u64,
    pub mime: String,
    pub sha256: String,
}

impl std::fmt::Debug for StoredFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredFile")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The part of a [`FileRef`] the hub fills in.
pub(crate) fn file_ref(file: &StoredFile, masked_name: String) -> FileRef {
    FileRef {
        id: file.id.clone(),
        name: masked_name,
        size: file.size,
        mime: file.mime.clone(),
        sha256: file.sha256.clone(),
    }
}

impl Hub {
    // ----- files -----

    /// Who may write a file into which conversation: the visitor (by its token) or the conversation's agent.
    pub(super) fn file_writer(
        &self,
        caller: FileCaller,
        conv: Option<ConversationId>,
    ) -> Result<(ConversationId, Party), Refusal> {
        let (id, party) = match caller {
            FileCaller::Visitor(hash) => {
                let id = self
                    .ix
                    .files_index
                    .get(&hash)
                    .copied()
                    .ok_or((ErrorCode::NotReady, "unknown or replaced files token"))?;
                if self.router.access(id).and_then(|a| a.agent).is_none() {
                    return Err((ErrorCode::Conflict, "no agent has joined the conversation yet"));
                }
                (id, Party::Visitor)
            }
            FileCaller::Agent(agent) => {
                let id = conv.ok_or((ErrorCode::NotFound, "no such conversation"))?;
                self.check(agent, id, crate::routing::can_write)?;
                (id, Party::Agent(agent))
            }
        };
        let max_bytes = self.config.live.limits.max_file_bytes_per_conversation;
        if self.convs.get(&id).is_some_and(|c| c.file_bytes >= max_bytes) {
            return Err((
                ErrorCode::TooLarge,
                "this conversation has shared its limit of file bytes",
            ));
        }
        Ok((id, party))
    }

    /// Takes a file slot of the conversation for an upload whose body is not read yet. Bounds the disk one
    /// conversation can fill (each file is at most `max_bytes`), also against uploads running in parallel.
    pub(super) fn take_file_slot(&mut self, conv: ConversationId) -> Result<ConversationId, Refusal> {
        let max = self.config.live.files.max_per_conversation;
        let c = self
            .convs
            .get_mut(&conv)
            .ok_or((ErrorCode::NotFound, "no such conversation"))?;
        if c.files.len() + c.files_pending >= max {
            return Err((ErrorCode::TooLarge, "this conversation has shared too many files"));
        }
        c.files_pending += 1;
        Ok(conv)
    }

    pub(super) fn share_file(
        &mut self,
        caller: FileCaller,
        conv: ConversationId,
        file: StoredFile,
    ) -> Result<FileRef, Refusal> {
        // The upload's slot becomes the file, or is freed if the file is refused now.
        if let Some(c) = self.convs.get_mut(&conv) {
            c.files_pending = c.files_pending.saturating_sub(1);
        }
        let (id, party) = self.file_writer(caller, Some(conv))?;
        if id != conv {
            return Err((ErrorCode::NotReady, "unknown or replaced files token"));
        }
        let from = self.author_of(party);
        let ts = self.now.unix_ms;
        let max_files = self.config.live.limits.max_file_bytes_per_conversation;
        let c = self.conv_with_room(conv, file.raw_name.len())?;
        if c.file_bytes.saturating_add(file.size) > max_files {
            return Err((
                ErrorCode::TooLarge,
                "this conversation has shared its limit of file bytes",
            ));
        }
        c.file_bytes = c.file_bytes.saturating_add(file.size);
        // The name is masked like a message of the same sender: a number split between messages and file
        // names is caught, and the earlier parts are amended.
        let key = party.sender_key();
        let outcome = c.masker.mask(key, &file.raw_name);
        let amendments = c.amend_and_track(key, &outcome);
        let file_ref = file_ref(&file, outcome.text.as_str().to_owned());
        c.files
            .insert(file.id.clone(), (file_ref.clone(), Arc::clone(&file.cipher)));
        c.push(ts, from, party, None, outcome.text, Some(file_ref.clone()));
        let seq = c.messages.len() as u64;
        match c.cipher.seal_key(&file.key, &file.id) {
            Ok(sealed_key) => self.writes.push(LiveWrite::File {
                id: conv.0,
                file_id: file.id.clone(),
                sealed_key,
            }),
            Err(e) => tracing::error!(conversation = %conv, error = %e, "sealing a file key failed"),
        }
        self.persist_messages(conv, std::iter::once(seq).chain(amendments.iter().map(|a| a.1)));
        self.ix.file_convs.insert(file.id.clone(), conv);
        metrics::counter!("relaydesk_chat_files_total", "from" => party.metric_label()).increment(1);
        self.deliver_last(conv);
        self.send_amendments(conv, amendments);
        tracing::info!(conversation = %conv, size = file.size, "file shared");
        Ok(file_ref)
    }

    pub(super) fn file_reader(
        &self,
        caller: FileCaller,
        id: &str,
    ) -> Result<(FileRef, Arc<ConversationCipher>), Refusal> {
        const NOT_FOUND: Refusal = (ErrorCode::NotFound, "no such file");
        match caller {
            FileCaller::Visitor(hash) => {
                let conv = self
                    .ix
                    .files_index
                    .get(&hash)
                    .ok_or((ErrorCode::NotReady, "unknown or replaced files token"))?;
                let c = self.convs.get(conv).ok_or(NOT_FOUND)?;
                c.files
                    .get(id)
                    .map(|(r, cipher)| (r.clone(), Arc::clone(cipher)))
                    .ok_or(NOT_FOUND)
            }
            FileCaller::Agent(agent) => {
                // A file id names its conversation only through the hub: look it up, then apply `can_read`.
                let conv = *self.ix.file_convs.get(id).ok_or(NOT_FOUND)?;
                let found = self.convs.get(&conv).and_then(|c| c.files.get(id)).ok_or(NOT_FOUND)?;
                // Someone who may not read the conversation learns nothing, not even that the file exists.
                self.check(agent, conv, crate::routing::can_read)
                    .map_err(|_| NOT_FOUND)?;
                Ok((found.0.clone(), Arc::clone(&found.1)))
            }
        }
    }
}
