//! What passes over a call's data channels, as entries of the conversation's transcript: in-call text
//! (masked as it was relayed, and amended like chat when a later text completes a split card number) and
//! in-call files (name, size, type and the SHA-256 the SFU computed while relaying). The entries take the
//! next sequence numbers of the conversation, so they stand in order with the chat; they are sealed at rest
//! like chat (a restart restores them) and archived with their kind. They are never sent on the WebSocket:
//! the parties had them over the data channel. A refused data channel (unknown label) is reported to its
//! owner on the WebSocket as well.

use super::{Conv, Hub, Party};
use crate::archive::{CallFile, MessageKind};
use crate::chat_protocol::{ConversationId, ErrorCode};
use crate::masking::Masker;
use crate::media::MediaParticipantId;

/// The error frame's message for a refused data channel (the data channel itself carried the details).
const UNKNOWN_CHANNEL: &str = "a data channel with an unknown label was refused: only `text` and `file` exist";

impl Conv {
    /// Appends an in-call entry; returns its seq.
    fn push_call_entry(
        &mut self,
        ts: u64,
        from: crate::chat_protocol::Author,
        party: Party,
        body: crate::masking::MaskedText,
        kind: MessageKind,
        call_file: Option<CallFile>,
    ) -> u64 {
        self.push(ts, from, party, None, body, None);
        if let Some(m) = self.messages.last_mut() {
            m.kind = kind;
            m.call_file = call_file;
        }
        self.messages.len() as u64
    }

    /// Applies a participant's in-call amendments (`back` 1: its previous in-call text) and counts the entry
    /// at `idx` as its latest text. Returns the seqs of the amended entries.
    fn amend_call_texts(
        &mut self,
        participant: MediaParticipantId,
        masker: &Masker,
        amended: &[(usize, String)],
        idx: usize,
    ) -> Vec<u64> {
        let own = self.call_texts.entry(participant).or_default();
        let mut seqs = Vec::new();
        for (back, text) in amended {
            let Some(i) = own.len().checked_sub(*back).filter(|_| *back > 0) else {
                continue;
            };
            if let Some(m) = self.messages.get_mut(own[i]) {
                // The SFU's filter made this text; masking it again (idempotent) keeps the rule that only
                // the masker makes a MaskedText.
                m.body = masker.mask(text);
                m.amended = true;
                seqs.push(m.seq);
            }
        }
        own.push(idx);
        seqs
    }
}

impl Hub {
    /// The socket that set up `party`'s call leg in `conv`.
    pub(super) fn leg_socket(&self, conv: ConversationId, party: Party) -> Option<super::SocketId> {
        self.convs.get(&conv)?.calls.get(&party).map(|l| l.socket)
    }

    /// The conversation and party of a call participant, and the conversation's masker.
    fn call_party(&self, participant: MediaParticipantId) -> Option<(ConversationId, Party, Masker)> {
        let &(conv, party) = self.ix.legs.get(&participant)?;
        let masker = self.convs.get(&conv)?.masker.masker().clone();
        Some((conv, party, masker))
    }

    /// In-call text relayed by the SFU (already masked there): a transcript entry, and the amendments of
    /// the author's earlier in-call texts applied to theirs.
    pub(super) fn call_text(&mut self, participant: MediaParticipantId, text: &str, amended: Vec<(usize, String)>) {
        let Some((conv, party, masker)) = self.call_party(participant) else {
            return;
        };
        let from = self.author_of(party);
        let ts = self.now.unix_ms;
        let c = match self.conv_with_room(conv, text.len()) {
            Ok(c) => c,
            Err((_, why)) => {
                tracing::warn!(conversation = %conv, why, "in-call text not added to the transcript");
                return;
            }
        };
        let body = masker.mask(text);
        let seq = c.push_call_entry(ts, from, party, body, MessageKind::CallText, None);
        let amended = c.amend_call_texts(participant, &masker, &amended, c.messages.len() - 1);
        self.persist_messages(conv, std::iter::once(seq).chain(amended));
        metrics::counter!("relaydesk_call_texts_total", "from" => party.metric_label()).increment(1);
    }

    /// A file relayed in full during a call: a transcript entry with its name, size, type and hash.
    pub(super) fn call_file(&mut self, participant: MediaParticipantId, name: &str, file: CallFile) {
        let Some((conv, party, masker)) = self.call_party(participant) else {
            return;
        };
        let from = self.author_of(party);
        let ts = self.now.unix_ms;
        let c = match self.conv_with_room(conv, name.len() + file.mime.len() + file.sha256.len()) {
            Ok(c) => c,
            Err((_, why)) => {
                tracing::warn!(conversation = %conv, why, "in-call file not added to the transcript");
                return;
            }
        };
        let seq = c.push_call_entry(ts, from, party, masker.mask(name), MessageKind::CallFile, Some(file));
        self.persist_messages(conv, std::iter::once(seq));
        metrics::counter!("relaydesk_call_files_total", "from" => party.metric_label()).increment(1);
    }

    /// The SFU refused a data channel of `participant` (unknown label): its owner hears it on the
    /// WebSocket too, with `bad_message`.
    pub(super) fn data_channel_refused(&mut self, participant: MediaParticipantId, label: &str) {
        let Some((conv, party, masker)) = self.call_party(participant) else {
            return;
        };
        // The label is the client's: masked before it reaches a log.
        tracing::info!(conversation = %conv, label = masker.mask(label).as_str(), "unknown data channel refused");
        metrics::counter!("relaydesk_data_channels_refused_total").increment(1);
        let Some(socket) = self.leg_socket(conv, party) else {
            return;
        };
        let refusal = (ErrorCode::BadMessage, UNKNOWN_CHANNEL);
        match party {
            Party::Visitor => self.visitor_error(socket, refusal),
            Party::Agent(_) | Party::Supervisor(_) => self.agent_error(socket, Some(conv), refusal),
        }
    }
}
