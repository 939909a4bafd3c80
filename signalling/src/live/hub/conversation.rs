//! One live conversation as plain data: its messages (masked, numbered), their amendments, its call legs,
//! files and tokens.

use super::*;

/// One entry of a conversation's transcript.
pub(super) struct Stored {
    pub(super) id: String,
    pub(super) seq: u64,
    pub(super) ts: u64,
    pub(super) from: Author,
    pub(super) party: Party,
    pub(super) client_id: Option<String>,
    pub(super) body: MaskedText,
    pub(super) amended: bool,
    pub(super) file: Option<FileRef>,
    /// Chat, or an entry of what passed over a call's data channels (in the transcript only: the parties
    /// had it over the data channel, so it is never sent on the WebSocket).
    pub(super) kind: MessageKind,
    pub(super) call_file: Option<CallFile>,
}

impl Stored {
    pub(super) fn is_chat(&self) -> bool {
        self.kind == MessageKind::Chat
    }
}

/// A party's call leg.
pub(super) struct CallLeg {
    pub(super) participant: MediaParticipantId,
    pub(super) socket: SocketId,
    /// A supervisor's leg that is whispering to the agent.
    pub(super) whisper: bool,
    /// Audio and video m-lines of the leg's last offer.
    pub(super) offered: (usize, usize),
}

/// One live conversation.
pub(super) struct Conv {
    pub(super) id: ConversationId,
    /// Seals the conversation's records at rest (its data key, wrapped in `live_conversations`).
    pub(super) cipher: Arc<ConversationCipher>,
    pub(super) group: GroupId,
    pub(super) site_key: String,
    pub(super) visitor_id: String,
    pub(super) origin: String,
    pub(super) masker: ConversationMasker,
    pub(super) messages: Vec<Stored>,
    pub(super) by_sender: HashMap<SenderKey, Vec<usize>>,
    pub(super) visitor_socket: Option<SocketId>,
    pub(super) resume_hash: [u8; 32],
    pub(super) epoch: u64,
    pub(super) watchers: BTreeSet<SocketId>,
    pub(super) participants: Vec<crate::live::Participant>,
    pub(super) started_at_ms: u64,
    pub(super) calls: HashMap<Party, CallLeg>,
    /// Hash of the visitor's current `files_token`.
    pub(super) files_hash: [u8; 32],
    /// Files shared in the chat, with the only copy of their keys.
    pub(super) files: HashMap<String, (FileRef, Arc<ConversationCipher>)>,
    /// File slots taken by uploads whose body is still being read.
    pub(super) files_pending: usize,
    /// Bytes of text kept (bodies, client ids, file names), against `limits.max_text_bytes_per_conversation`.
    pub(super) text_bytes: usize,
    /// Bytes of shared files on disk, against `limits.max_file_bytes_per_conversation`.
    pub(super) file_bytes: u64,
    /// Indices in `messages` of each call participant's in-call texts (for the masker's amendments).
    pub(super) call_texts: HashMap<MediaParticipantId, Vec<usize>>,
}

impl Conv {
    /// Applies the masker's amendments to `key`'s earlier messages (their text, and the name of a file
    /// they share) and counts the message about to be pushed as `key`'s. Returns `(id, seq, body)` of
    /// each amended message.
    pub(super) fn amend_and_track(&mut self, key: SenderKey, outcome: &MaskOutcome) -> Vec<(String, u64, String)> {
        let mut amended = Vec::new();
        let own = self.by_sender.entry(key).or_default();
        for a in outcome.amendments() {
            if a.back == 0 || a.back > own.len() {
                continue;
            }
            let idx = own[own.len() - a.back];
            if let Some(m) = self.messages.get_mut(idx) {
                if let Some(f) = m.file.as_mut() {
                    a.text.as_str().clone_into(&mut f.name);
                    if let Some((r, _)) = self.files.get_mut(&f.id) {
                        r.name.clone_from(&f.name);
                    }
                }
                m.body = a.text;
                m.amended = true;
                amended.push(idx);
            }
        }
        own.push(self.messages.len());
        amended
            .iter()
            .filter_map(|i| self.messages.get(*i))
            .map(|m| (m.id.clone(), m.seq, m.body.as_str().to_owned()))
            .collect()
    }

    /// Stores the next message (its id and `seq` follow the last one's).
    pub(super) fn push(
        &mut self,
        ts: u64,
        from: Author,
        party: Party,
        client_id: Option<String>,
        body: MaskedText,
        file: Option<FileRef>,
    ) {
        let seq = self.messages.len() as u64 + 1;
        self.text_bytes = self
            .text_bytes
            .saturating_add(body.as_str().len() + client_id.as_ref().map_or(0, String::len));
        self.messages.push(Stored {
            id: format!("{}-{seq}", self.id.0),
            seq,
            ts,
            from,
            party,
            client_id,
            body,
            amended: false,
            file,
            kind: MessageKind::Chat,
            call_file: None,
        });
    }
}
