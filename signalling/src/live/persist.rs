//! The hub's conversations in the form kept at rest ([`crate::live_store`]): what is serialised and sealed,
//! and how it is read back after a restart. The SQL lives in [`crate::live_store`]; the hub decides when to
//! write (see the `hub` module: writes are committed before the frames they acknowledge are sent).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Participant;
use crate::archive::{CallFile, MessageKind};
use crate::archive_crypto::{ArchiveCryptoError, ConversationCipher, DataKey};
use crate::chat_protocol::{AgentId, Author, FileRef};

/// Sequence number the sealed state is bound to (messages start at 1).
const STATE_SEQ: u64 = 0;

/// Who wrote a message, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum PartyAtRest {
    Visitor,
    Agent { id: i64 },
    Supervisor { id: i64 },
}

/// One message as stored (sealed as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessageAtRest {
    pub id: String,
    pub ts: u64,
    pub from: Author,
    pub party: PartyAtRest,
    pub client_id: Option<String>,
    /// The masked body.
    pub body: String,
    pub amended: bool,
    pub file: Option<FileRef>,
    /// Chat (absent in records written before in-call entries existed), or in-call text or file.
    #[serde(default)]
    pub kind: MessageKind,
    /// The details of an in-call file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_file: Option<CallFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ParticipantAtRest {
    agent: i64,
    name: String,
    joined_at_ms: u64,
}

/// What the conversation row keeps sealed: the visitor's id and the agents who took part.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateAtRest {
    visitor_id: String,
    participants: Vec<ParticipantAtRest>,
}

/// Why a stored conversation cannot be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestError {
    #[error(transparent)]
    Crypto(#[from] ArchiveCryptoError),
    #[error("malformed stored record: {0}")]
    Json(#[from] serde_json::Error),
}

/// Seals one message for `live_messages`.
pub(crate) fn seal_message(cipher: &ConversationCipher, seq: u64, m: &MessageAtRest) -> Result<Vec<u8>, RestError> {
    let json = serde_json::to_vec(m)?;
    Ok(cipher.seal(seq, &json)?)
}

/// Opens one message of `live_messages`.
pub(crate) fn open_message(cipher: &ConversationCipher, seq: u64, sealed: &[u8]) -> Result<MessageAtRest, RestError> {
    let json = cipher.open(seq, sealed)?;
    Ok(serde_json::from_slice(&json)?)
}

/// Seals the conversation's state.
pub(crate) fn seal_state(
    cipher: &ConversationCipher,
    visitor_id: &str,
    participants: &[Participant],
) -> Result<Vec<u8>, RestError> {
    let state = StateAtRest {
        visitor_id: visitor_id.to_owned(),
        participants: participants
            .iter()
            .map(|p| ParticipantAtRest {
                agent: p.agent.0,
                name: p.name.clone(),
                joined_at_ms: p.joined_at_ms,
            })
            .collect(),
    };
    Ok(cipher.seal(STATE_SEQ, &serde_json::to_vec(&state)?)?)
}

/// Opens the conversation's state: the visitor id and the participants.
pub(crate) fn open_state(cipher: &ConversationCipher, sealed: &[u8]) -> Result<(String, Vec<Participant>), RestError> {
    let state: StateAtRest = serde_json::from_slice(&cipher.open(STATE_SEQ, sealed)?)?;
    Ok((
        state.visitor_id,
        state
            .participants
            .into_iter()
            .map(|p| Participant {
                agent: AgentId(p.agent),
                name: p.name,
                joined_at_ms: p.joined_at_ms,
            })
            .collect(),
    ))
}

/// The cipher of a shared file from its stored key (the file on disk is sealed with it).
pub(crate) fn file_cipher(
    conversation: &ConversationCipher,
    file_id: &str,
    sealed_key: &[u8],
) -> Result<Arc<ConversationCipher>, RestError> {
    let key = conversation.open_key(sealed_key, file_id)?;
    Ok(Arc::new(file_cipher_of(&key, file_id)))
}

/// The cipher a shared file is sealed with (the binding of `files::seal_and_write`).
pub(crate) fn file_cipher_of(key: &DataKey, file_id: &str) -> ConversationCipher {
    ConversationCipher::new(key, format!("file:{file_id}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn messages_and_state_round_trip_sealed_and_bound_to_their_place() {
        let key = DataKey::generate().unwrap();
        let cipher = ConversationCipher::new(&key, "42");
        let m = MessageAtRest {
            id: "42-3".into(),
            ts: 7,
            from: Author::Agent {
                id: AgentId(5),
                name: "Alice".into(),
            },
            party: PartyAtRest::Agent { id: 5 },
            client_id: Some("c1".into()),
            body: "card ****".into(),
            amended: true,
            file: None,
            kind: MessageKind::Chat,
            call_file: None,
        };
        let sealed = seal_message(&cipher, 3, &m).unwrap();
        assert!(!sealed.windows(4).any(|w| w == b"card"), "the body is sealed");
        let back = open_message(&cipher, 3, &sealed).unwrap();
        assert_eq!(
            (back.id.as_str(), back.body.as_str(), back.party),
            ("42-3", "card ****", m.party)
        );
        assert_eq!(back.kind, MessageKind::Chat);
        // Moved to another position or conversation, it does not open.
        assert!(open_message(&cipher, 4, &sealed).is_err());
        // A record written before in-call entries existed (no kind) reads as chat; an in-call file keeps
        // its details.
        let old = r#"{"id":"42-1","ts":1,"from":{"role":"visitor"},"party":{"kind":"visitor"},"client_id":null,"body":"hi","amended":false,"file":null}"#;
        let old: MessageAtRest = serde_json::from_str(old).unwrap();
        assert_eq!((old.kind, old.call_file), (MessageKind::Chat, None));
        let f = CallFile {
            size: 3,
            mime: "text/plain".into(),
            sha256: "ab".repeat(32),
        };
        let call = MessageAtRest {
            kind: MessageKind::CallFile,
            call_file: Some(f.clone()),
            ..m.clone()
        };
        let back = open_message(&cipher, 5, &seal_message(&cipher, 5, &call).unwrap()).unwrap();
        assert_eq!((back.kind, back.call_file), (MessageKind::CallFile, Some(f)));
        assert!(open_message(&ConversationCipher::new(&key, "43"), 3, &sealed).is_err());

        let p = vec![Participant {
            agent: AgentId(5),
            name: "Alice".into(),
            joined_at_ms: 9,
        }];
        let state = seal_state(&cipher, "v_visitor", &p).unwrap();
        assert!(!state.windows(9).any(|w| w == b"v_visitor"));
        assert_eq!(open_state(&cipher, &state).unwrap(), ("v_visitor".to_string(), p));

        let file_key = DataKey::generate().unwrap();
        let sealed_key = cipher.seal_key(&file_key, "f1").unwrap();
        let body = file_cipher_of(&file_key, "f1").seal(0, b"content").unwrap();
        assert_eq!(
            file_cipher(&cipher, "f1", &sealed_key).unwrap().open(0, &body).unwrap(),
            b"content"
        );
        assert!(file_cipher(&cipher, "f2", &sealed_key).is_err(), "bound to its file id");
    }
}
