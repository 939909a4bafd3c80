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
    /// The entry as the archive keeps it.
    pub(super) fn archived(self) -> ArchivedMessage {
        ArchivedMessage {
            seq: self.seq,
            author: self.from,
            sent_at_ms: self.ts,
            body: self.body,
            kind: self.kind,
            file: self.call_file,
        }
    }

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

#[cfg(test)]
impl Conv {
    /// A conversation with one of everything the indexes point at: a visitor socket (1), a watcher (2), both
    /// tokens, a file (`f1`) and the visitor's call leg (participant 3).
    pub(super) fn for_tests(id: ConversationId) -> Self {
        #![allow(clippy::unwrap_used)]
        let key = DataKey::generate().unwrap();
        let file = FileRef {
            id: "f1".into(),
            name: "a.pdf".into(),
            size: 1,
            mime: "application/pdf".into(),
            sha256: String::new(),
        };
        let cipher = Arc::new(ConversationCipher::new(&key, id.0.to_string()));
        Conv {
            id,
            cipher: Arc::clone(&cipher),
            group: GroupId::from_name("support"),
            site_key: "key".into(),
            visitor_id: "v".into(),
            origin: "https://shop.example".into(),
            masker: ConversationMasker::new(Masker::default()),
            messages: Vec::new(),
            by_sender: HashMap::new(),
            visitor_socket: Some(SocketId(1)),
            resume_hash: [1; 32],
            epoch: 0,
            watchers: BTreeSet::from([SocketId(2)]),
            participants: Vec::new(),
            started_at_ms: 0,
            calls: HashMap::from([(
                Party::Visitor,
                CallLeg {
                    participant: MediaParticipantId(3),
                    socket: SocketId(1),
                    whisper: false,
                    offered: (1, 0),
                },
            )]),
            files_hash: [2; 32],
            files: HashMap::from([("f1".to_owned(), (file, cipher))]),
            files_pending: 0,
            text_bytes: 0,
            file_bytes: 0,
            call_texts: HashMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_numbered_in_order_and_counted_against_the_text_limit() {
        let mut c = Conv::for_tests(ConversationId(9));
        let masker = Masker::default();
        c.push(
            5,
            Author::Visitor {},
            Party::Visitor,
            Some("c1".into()),
            masker.mask("hello"),
            None,
        );
        c.push(6, Author::System {}, Party::Visitor, None, masker.mask("note"), None);
        let ids: Vec<(&str, u64, u64)> = c.messages.iter().map(|m| (m.id.as_str(), m.seq, m.ts)).collect();
        assert_eq!(ids, vec![("9-1", 1, 5), ("9-2", 2, 6)]);
        assert_eq!(c.text_bytes, "hello".len() + "c1".len() + "note".len());
        assert!(c.messages.iter().all(Stored::is_chat));
    }

    #[test]
    fn a_number_split_over_two_messages_amends_the_first() {
        let mut c = Conv::for_tests(ConversationId(9));
        let key = Party::Visitor.sender_key();
        for (n, part) in ["4111 1111", "1111 1111"].into_iter().enumerate() {
            let outcome = c.masker.mask(key, part);
            let amended = c.amend_and_track(key, &outcome);
            c.push(0, Author::Visitor {}, Party::Visitor, None, outcome.text, None);
            if n == 0 {
                assert!(amended.is_empty());
            } else {
                assert_eq!(amended.len(), 1, "the first part is amended");
                assert_eq!(amended[0].1, 1);
                assert!(!amended[0].2.contains("4111"));
            }
        }
        assert!(c.messages[0].amended);
        assert!(!c.messages[0].body.as_str().contains("4111"));
        // Another sender's messages are never amended by this one's.
        let other = Party::Agent(AgentId(4)).sender_key();
        let outcome = c.masker.mask(other, "1111");
        assert!(c.amend_and_track(other, &outcome).is_empty());
    }
}
