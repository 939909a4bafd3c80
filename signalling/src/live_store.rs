//! Live conversations at rest: what lets an acknowledged chat message, a shared file and a conversation
//! survive a crash of the server (see `docs/RELIABILITY.md`, "Crash safety").
//!
//! # Tables (migration 3 of [`crate::store::MIGRATIONS`])
//! - `live_conversations`: one row per live conversation: group, site key, origin, start, assigned agent,
//!   the SHA-256 hashes of the visitor's current resume and files tokens (never a token), its data key
//!   wrapped under the archive's master key (as the archive does, [`crate::archive_crypto`]), `state` (the
//!   visitor id and the participants, sealed), and `ended_at`/`ended_reason` once it ended.
//! - `live_messages`: each message as the hub holds it (id, time, author, masked body, file reference),
//!   serialised and sealed with the conversation's key bound to its sequence number. An amended message
//!   (masking across messages) is sealed again in place.
//! - `live_files`: the data key of each shared file, sealed with the conversation's key bound to the file id.
//!
//! Nothing readable is written: bodies, the visitor id and file keys are sealed; tokens are hashes.
//!
//! # Order and atomicity
//! The hub hands over the writes of each batch of commands as one list, applied by [`apply`] in one
//! transaction, in order; it sends the frames those commands produced only after the commit (see the `hub`
//! module). Archiving a conversation ([`crate::archive::ArchiveKeys::store_conversation`]) deletes its live
//! rows in the archive's own transaction, so a conversation is at rest in exactly one of the two places.

use std::sync::Arc;

use crate::archive::{ArchiveError, ArchiveKeys};
use crate::archive_crypto::DataKey;
use crate::store::{LiveChange, LiveCreate, Storage, StoreError};

/// Length of a token hash.
pub const HASH_LEN: usize = 32;

/// A conversation to create at rest.
pub struct NewLiveConversation {
    /// The conversation id.
    pub id: u64,
    /// Its group (name).
    pub group: String,
    /// The site key the visitor came through.
    pub site_key: String,
    /// The visitor's origin (a resume must come from it).
    pub origin: String,
    /// Start, unix ms.
    pub started_at_ms: u64,
    /// Hash of the visitor's resume token.
    pub resume_hash: [u8; HASH_LEN],
    /// Hash of the visitor's files token (zeros when files are off).
    pub files_hash: [u8; HASH_LEN],
    /// The conversation's data key (wrapped here under the current master key).
    pub key: Arc<DataKey>,
    /// The sealed state (visitor id, participants).
    pub state: Vec<u8>,
}

impl std::fmt::Debug for NewLiveConversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewLiveConversation")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// One change to the live conversations at rest.
#[derive(Debug)]
pub enum LiveWrite {
    /// A visitor joined.
    Create(Box<NewLiveConversation>),
    /// The visitor's tokens were replaced (every `welcome`).
    Tokens {
        /// The conversation.
        id: u64,
        /// Hash of the new resume token.
        resume_hash: [u8; HASH_LEN],
        /// Hash of the new files token.
        files_hash: [u8; HASH_LEN],
    },
    /// The conversation's group or agent changed (assigned, requeued, transferred).
    Routing {
        /// The conversation.
        id: u64,
        /// Its group.
        group: String,
        /// Its agent, `None` while queued.
        agent: Option<i64>,
    },
    /// The sealed state changed (a new participant).
    State {
        /// The conversation.
        id: u64,
        /// The sealed state.
        state: Vec<u8>,
    },
    /// A message, new or amended (sealed).
    Message {
        /// The conversation.
        id: u64,
        /// Its sequence number.
        seq: u64,
        /// The sealed message.
        body: Vec<u8>,
    },
    /// A shared file's key (sealed).
    File {
        /// The conversation.
        id: u64,
        /// The file id.
        file_id: String,
        /// The sealed key.
        sealed_key: Vec<u8>,
    },
    /// The conversation ended; it stays here until the archive has it.
    Ended {
        /// The conversation.
        id: u64,
        /// End, unix ms.
        at_ms: u64,
        /// The end reason (its wire name).
        reason: String,
    },
}

/// Attempts of a batch when a rotation of the master key races its creations.
const KEY_CHANGE_ATTEMPTS: u32 = 4;

/// Applies `writes` in order, in one transaction (all or nothing). New conversations' keys are wrapped
/// under the master key the store records as current; if a rotation changed it meanwhile the batch is
/// wrapped again and retried.
///
/// # Errors
/// Database or key errors; then nothing was written.
pub fn apply(db: &dyn Storage, keys: &ArchiveKeys, writes: &[LiveWrite]) -> Result<(), ArchiveError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut wrapped = Vec::new();
        for w in writes {
            if let LiveWrite::Create(c) = w {
                let key = keys.wrap_current(db, &c.key, &c.id.to_string())?;
                wrapped.push((key.master_key_id().to_string(), key.to_bytes()));
            }
        }
        let mut wrapped_iter = wrapped.iter();
        let mut changes = Vec::with_capacity(writes.len());
        for w in writes {
            changes.push(match w {
                LiveWrite::Create(c) => {
                    let (key_id, key) = wrapped_iter
                        .next()
                        .ok_or_else(|| ArchiveError::Invalid("live batch changed while applied".into()))?;
                    LiveChange::Create(LiveCreate {
                        id: c.id,
                        group: &c.group,
                        site_key: &c.site_key,
                        origin: &c.origin,
                        started_at_ms: c.started_at_ms,
                        resume_hash: &c.resume_hash,
                        files_hash: &c.files_hash,
                        master_key_id: key_id,
                        wrapped_key: key,
                        state: &c.state,
                    })
                }
                LiveWrite::Tokens {
                    id,
                    resume_hash,
                    files_hash,
                } => LiveChange::Tokens {
                    id: *id,
                    resume_hash,
                    files_hash,
                },
                LiveWrite::Routing { id, group, agent } => LiveChange::Routing {
                    id: *id,
                    group,
                    agent: *agent,
                },
                LiveWrite::State { id, state } => LiveChange::State { id: *id, state },
                LiveWrite::Message { id, seq, body } => LiveChange::Message {
                    id: *id,
                    seq: *seq,
                    body,
                },
                LiveWrite::File {
                    id,
                    file_id,
                    sealed_key,
                } => LiveChange::File {
                    id: *id,
                    file_id,
                    sealed_key,
                },
                LiveWrite::Ended { id, at_ms, reason } => LiveChange::Ended {
                    id: *id,
                    at_ms: *at_ms,
                    reason,
                },
            });
        }
        match db.live_apply(&changes) {
            Ok(()) => return Ok(()),
            Err(StoreError::MasterKeyChanged) if attempt < KEY_CHANGE_ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A live conversation read back at start.
pub struct StoredLiveConversation {
    /// The conversation id.
    pub id: u64,
    /// Its group.
    pub group: String,
    /// Its site key.
    pub site_key: String,
    /// The visitor's origin.
    pub origin: String,
    /// Start, unix ms.
    pub started_at_ms: u64,
    /// Its agent, if assigned.
    pub agent: Option<i64>,
    /// Hash of the visitor's resume token.
    pub resume_hash: [u8; HASH_LEN],
    /// Hash of the visitor's files token.
    pub files_hash: [u8; HASH_LEN],
    /// Its data key, or why it cannot be opened (lost master key, damaged row).
    pub key: Result<DataKey, ArchiveError>,
    /// The sealed state.
    pub state: Vec<u8>,
    /// End (unix ms) and reason, if it ended before the archive had it.
    pub ended: Option<(u64, String)>,
    /// Sealed messages by sequence number.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Sealed file keys by file id.
    pub files: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for StoredLiveConversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredLiveConversation")
            .field("id", &self.id)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

/// Reads every live conversation at rest, by id. A conversation already archived (which the archive's
/// transaction makes impossible, but a hand-edited database may hold) is dropped from the live tables.
///
/// # Errors
/// Database errors; a key that cannot be opened is reported per conversation in
/// [`StoredLiveConversation::key`].
pub fn load(db: &dyn Storage, keys: &ArchiveKeys) -> Result<Vec<StoredLiveConversation>, ArchiveError> {
    let rows = db.live_load()?;
    Ok(rows
        .into_iter()
        .map(|r| StoredLiveConversation {
            key: keys.unwrap_stored(db, &r.wrapped_key, &r.id.to_string()),
            id: r.id,
            group: r.group,
            site_key: r.site_key,
            origin: r.origin,
            started_at_ms: r.started_at_ms,
            agent: r.agent,
            resume_hash: r.resume_hash,
            files_hash: r.files_hash,
            state: r.state,
            ended: r.ended,
            messages: r.messages,
            files: r.files,
        })
        .collect())
}

/// Number of live conversations at rest (for tests and the operator).
///
/// # Errors
/// Database errors.
pub fn count(db: &dyn Storage) -> Result<u64, ArchiveError> {
    Ok(db.live_count()?)
}

/// Whether `id` is live at rest.
///
/// # Errors
/// Database errors.
pub fn exists(db: &dyn Storage, id: u64) -> Result<bool, ArchiveError> {
    Ok(db.live_exists(id)?)
}

/// The async face of this module over the server's [`crate::archive::Archive`] (each call on a blocking
/// thread of the store).
impl crate::archive::Archive {
    /// Applies the writes of live conversations ([`apply`]) in one transaction on a
    /// blocking thread; returns when they are committed.
    ///
    /// # Errors
    /// Database or key errors (then nothing was written).
    pub async fn live_apply(&self, writes: Arc<Vec<LiveWrite>>) -> Result<(), ArchiveError> {
        let (store, keys) = self.parts();
        store.call(move |db| Ok(apply(db, &keys, &writes))).await?
    }

    /// Reads the live conversations at rest ([`load`]).
    ///
    /// # Errors
    /// Database errors.
    pub async fn live_load(&self) -> Result<Vec<StoredLiveConversation>, ArchiveError> {
        let (store, keys) = self.parts();
        store.call(move |db| Ok(load(db, &keys))).await?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::archive::{
        ArchivedMessage, ArchivedParticipant, ConversationRecord, KeySource, MessageAuthor, MessageKind,
    };
    use crate::archive_crypto::ConversationCipher;
    use crate::masking::{Masker, Redacted};
    use crate::store::Db;

    fn open(dir: &std::path::Path) -> (Db, ArchiveKeys) {
        let db = Db::open(dir).unwrap();
        let keys = ArchiveKeys::open(KeySource::File(dir.join("master.key")), &db).unwrap();
        (db, keys)
    }

    fn create(id: u64, key: &Arc<DataKey>, cipher: &ConversationCipher) -> LiveWrite {
        LiveWrite::Create(Box::new(NewLiveConversation {
            id,
            group: "sales".into(),
            site_key: "pk_1".into(),
            origin: "https://shop.example".into(),
            started_at_ms: 5,
            resume_hash: [7; 32],
            files_hash: [8; 32],
            key: Arc::clone(key),
            state: cipher.seal(0, b"state").unwrap(),
        }))
    }

    #[test]
    fn writes_read_back_sealed_and_a_failed_batch_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (db, keys) = open(dir.path());
        let key = Arc::new(DataKey::generate().unwrap());
        let cipher = ConversationCipher::new(&key, "41");
        let file_key = DataKey::generate().unwrap();
        let writes = vec![
            create(41, &key, &cipher),
            LiveWrite::Message {
                id: 41,
                seq: 1,
                body: cipher.seal(1, b"one").unwrap(),
            },
            LiveWrite::Message {
                id: 41,
                seq: 2,
                body: cipher.seal(2, b"two").unwrap(),
            },
            // An amendment replaces message 1 in place.
            LiveWrite::Message {
                id: 41,
                seq: 1,
                body: cipher.seal(1, b"one, amended").unwrap(),
            },
            LiveWrite::File {
                id: 41,
                file_id: "f1".into(),
                sealed_key: cipher.seal_key(&file_key, "f1").unwrap(),
            },
            LiveWrite::Tokens {
                id: 41,
                resume_hash: [9; 32],
                files_hash: [10; 32],
            },
            LiveWrite::Routing {
                id: 41,
                group: "billing".into(),
                agent: Some(3),
            },
        ];
        apply(&db, &keys, &writes).unwrap();
        // A batch that fails half-way (a message of an unknown conversation) leaves nothing behind.
        let bad = vec![
            LiveWrite::Message {
                id: 41,
                seq: 3,
                body: cipher.seal(3, b"three").unwrap(),
            },
            LiveWrite::Message {
                id: 999,
                seq: 1,
                body: vec![1],
            },
        ];
        assert!(apply(&db, &keys, &bad).is_err());

        let stored = load(&db, &keys).unwrap();
        assert_eq!(stored.len(), 1);
        let c = &stored[0];
        assert_eq!((c.id, c.group.as_str(), c.agent), (41, "billing", Some(3)));
        assert_eq!((c.resume_hash, c.files_hash), ([9; 32], [10; 32]));
        assert!(c.ended.is_none());
        let opened = ConversationCipher::new(c.key.as_ref().unwrap(), "41");
        let bodies: Vec<(u64, Vec<u8>)> = c
            .messages
            .iter()
            .map(|(seq, b)| (*seq, opened.open(*seq, b).unwrap()))
            .collect();
        assert_eq!(bodies, vec![(1, b"one, amended".to_vec()), (2, b"two".to_vec())]);
        assert_eq!(c.files.len(), 1);
        assert!(opened.open_key(&c.files[0].1, "f1").is_ok());
        assert_eq!(count(&db).unwrap(), 1);
    }

    #[test]
    fn rotation_rewraps_live_keys_and_archiving_deletes_the_live_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (db, keys) = open(dir.path());
        let key = Arc::new(DataKey::generate().unwrap());
        let cipher = ConversationCipher::new(&key, "42");
        apply(&db, &keys, &[create(42, &key, &cipher)]).unwrap();
        let report = crate::archive::rotate_master_key(&db, &dir.path().join("master.key"), "test").unwrap();
        assert_eq!(report.rewrapped, 1, "the live conversation's key was re-wrapped");
        // The old key file is gone: the live key opens with the new one only.
        let (db, keys) = open(dir.path());
        let stored = load(&db, &keys).unwrap();
        assert!(stored[0].key.is_ok());

        assert!(exists(&db, 42).unwrap());
        let record = ConversationRecord {
            id: "42".into(),
            group: "sales".into(),
            site_key_id: "pk_1".into(),
            visitor_id: Redacted::new("v_1".to_string()),
            participants: vec![ArchivedParticipant::visitor("Visitor", 5)],
            started_at: 5,
            ended_at: 6,
            messages: vec![ArchivedMessage {
                seq: 1,
                author: MessageAuthor::Visitor,
                sent_at: 5,
                body: Masker::default().mask("hi"),
                kind: MessageKind::Chat,
                file: None,
            }],
        };
        keys.store_conversation(&db, &record).unwrap();
        assert!(!exists(&db, 42).unwrap(), "archived and live at once");
        assert_eq!(count(&db).unwrap(), 0);
    }
}
