//! The master keys ([`KeySource`], [`ArchiveKeys`]) and the archive's synchronous operations under them:
//! storing a conversation sealed, exporting it decrypted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::record::{SealedCallFile, visitor_digest};
use super::{
    ArchiveError, ArchivedParticipant, ConversationRecord, ENV_MASTER_KEY, ENV_MASTER_KEY_FILE, MASTER_KEY_FILE,
    MessageAuthor, MessageKind, NEXT_KEY_SUFFIX, ParticipantRole, Result, Transcript, TranscriptMessage, bounded,
    unix_now_ms,
};
use crate::archive_crypto::{
    ArchiveCryptoError, ConversationCipher, DataKey, Keyring, MasterKey, MasterKeyId, WrappedKey,
};
use crate::store::{ArchivedConversationRow, AuditEvent, MessageRow, ParticipantRow, Storage, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key file (created `0600` if missing); rotatable.
    File(PathBuf),
    /// The key given in env `RELAYDESK_MASTER_KEY` (never stored here: re-read on each load).
    Env,
}

impl KeySource {
    /// Resolves the source: env [`ENV_MASTER_KEY`] > env [`ENV_MASTER_KEY_FILE`] > `master_key_file`
    /// (`archive.master_key_file` of the configuration) > `<data_dir>/master.key`. Pass
    /// `|k| std::env::var(k).ok()` as `env`.
    pub fn resolve(master_key_file: Option<&Path>, data_dir: &Path, env: impl Fn(&str) -> Option<String>) -> Self {
        if env(ENV_MASTER_KEY).is_some_and(|v| !v.is_empty()) {
            return KeySource::Env;
        }
        if let Some(path) = env(ENV_MASTER_KEY_FILE).filter(|v| !v.is_empty()) {
            return KeySource::File(PathBuf::from(path));
        }
        match master_key_file {
            Some(p) => KeySource::File(p.to_path_buf()),
            None => KeySource::File(data_dir.join(MASTER_KEY_FILE)),
        }
    }

    /// The `.next` file of a file source.
    pub fn next_path(path: &Path) -> PathBuf {
        let mut s = path.as_os_str().to_os_string();
        s.push(NEXT_KEY_SUFFIX);
        PathBuf::from(s)
    }

    /// Loads every key of this source: the main key (created if missing) and, for a file, the `.next` key of
    /// an unfinished rotation.
    fn load_all(&self) -> Result<Vec<MasterKey>> {
        match self {
            KeySource::Env => {
                let value = std::env::var(ENV_MASTER_KEY).unwrap_or_default();
                Ok(vec![MasterKey::from_base64(&value)?])
            }
            KeySource::File(path) => {
                let mut keys = vec![MasterKey::load_or_create(path)?];
                let next = Self::next_path(path);
                if next.exists() {
                    keys.push(MasterKey::load(&next)?);
                }
                Ok(keys)
            }
        }
    }
}

/// Builds a keyring whose current key is the one with `current` id if held, else the first key.
pub(super) fn build_keyring(mut keys: Vec<MasterKey>, current: Option<MasterKeyId>) -> Option<Keyring> {
    let idx = current
        .and_then(|id| keys.iter().position(|k| k.id() == id))
        .unwrap_or(0);
    if keys.is_empty() {
        return None;
    }
    let cur = keys.swap_remove(idx);
    let mut ring = Keyring::new(cur);
    for k in keys {
        ring.add_previous(k);
    }
    Some(ring)
}

/// The master key id the store records as current.
pub(super) fn meta_key_id(db: &dyn Storage) -> Result<Option<MasterKeyId>> {
    match db.master_key_id()? {
        None => Ok(None),
        Some(t) => t
            .parse::<MasterKeyId>()
            .map(Some)
            .map_err(|_| ArchiveError::Invalid("archive_meta holds a malformed key id".into())),
    }
}

/// Attempts of a write that wraps a key under the current master key when a rotation races it.
pub(super) const KEY_CHANGE_ATTEMPTS: u32 = 4;

/// The master keys in use, reloaded from their source when the database names a key they lack (a rotation
/// by the CLI while the server runs). Synchronous; used directly by the offline CLI and through [`Archive`](super::Archive)
/// by the server.
pub struct ArchiveKeys {
    source: KeySource,
    ring: RwLock<Arc<Keyring>>,
}

impl fmt::Debug for ArchiveKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveKeys")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ArchiveKeys {
    /// Loads the keys of `source` (creating the key file on first start) and reconciles them with the
    /// database: the key recorded in `archive_meta` becomes current if held; a fresh database records the
    /// loaded key; if the recorded key is not held, a warning is logged and the loaded key is recorded
    /// (conversations under the lost key stay unreadable until it is given back).
    ///
    /// # Errors
    /// Key file problems ([`ArchiveError::Crypto`]) or database errors.
    pub fn open(source: KeySource, db: &dyn Storage) -> Result<Self> {
        let keys = source.load_all()?;
        let recorded = meta_key_id(db)?;
        let ring = build_keyring(keys, recorded).ok_or_else(|| ArchiveError::Invalid("no master key".into()))?;
        let current = ring.current().id();
        if recorded != Some(current) {
            if let Some(old) = recorded {
                let orphans = db.archived_under_key(&old.to_string())?;
                if orphans > 0 {
                    tracing::warn!(recorded = %old, given = %current, conversations = orphans,
                        "the archive's master key is not available; those conversations cannot be exported");
                }
            }
            db.set_master_key_id(&current.to_string())?;
        }
        tracing::info!(key_id = %current, "archive master key loaded");
        Ok(Self {
            source,
            ring: RwLock::new(Arc::new(ring)),
        })
    }

    /// The key source.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The id of the key that wraps new conversation keys.
    pub fn current_key_id(&self) -> MasterKeyId {
        self.ring().current().id()
    }

    fn ring(&self) -> Arc<Keyring> {
        Arc::clone(&self.ring.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// A keyring whose current key is `wanted` (reloading the source if needed), for a write.
    fn ring_for(&self, wanted: Option<MasterKeyId>) -> Result<Arc<Keyring>> {
        let ring = self.ring();
        let Some(wanted) = wanted else { return Ok(ring) };
        if ring.current().id() == wanted {
            return Ok(ring);
        }
        let fresh = build_keyring(self.source.load_all()?, Some(wanted))
            .ok_or_else(|| ArchiveError::Invalid("no master key".into()))?;
        if fresh.current().id() != wanted {
            return Err(ArchiveError::MissingMasterKey(wanted));
        }
        tracing::info!(key_id = %wanted, "archive master key reloaded after a rotation");
        let fresh = Arc::new(fresh);
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// Opens a wrapped key, reloading the source once if its master key is not held.
    fn unwrap(&self, db: &dyn Storage, wrapped: &WrappedKey, conversation: &str) -> Result<DataKey> {
        let ring = self.ring();
        let ring = if ring.get(wrapped.master_key_id()).is_some() {
            ring
        } else {
            self.ring_for(meta_key_id(db)?)?
        };
        ring.unwrap_key(wrapped, conversation).map_err(|e| match e {
            ArchiveCryptoError::UnknownMasterKey(id) => ArchiveError::MissingMasterKey(id),
            source => ArchiveError::Unreadable {
                conversation: conversation.to_string(),
                seq: None,
                source,
            },
        })
    }

    /// Wraps a data key under the master key the store names as current (reloading the key files after a
    /// rotation). The store checks that this key is still current when it writes the wrapped key
    /// ([`StoreError::MasterKeyChanged`] otherwise; then wrap again): a rotation either re-wraps it or comes
    /// after it.
    ///
    /// # Errors
    /// Key or database errors.
    pub(crate) fn wrap_current(&self, db: &dyn Storage, key: &DataKey, conversation: &str) -> Result<WrappedKey> {
        let ring = self.ring_for(meta_key_id(db)?)?;
        Ok(key.wrap(ring.current(), conversation)?)
    }

    /// Opens a stored wrapped data key of `conversation` (a live conversation's).
    ///
    /// # Errors
    /// [`ArchiveError::Unreadable`], [`ArchiveError::MissingMasterKey`], database errors.
    pub(crate) fn unwrap_stored(&self, db: &dyn Storage, bytes: &[u8], conversation: &str) -> Result<DataKey> {
        let wrapped = WrappedKey::from_bytes(bytes).map_err(|source| ArchiveError::Unreadable {
            conversation: conversation.to_string(),
            seq: None,
            source,
        })?;
        self.unwrap(db, &wrapped, conversation)
    }

    /// Stores an ended conversation in one transaction (see [`Archive::store_conversation`](super::Archive::store_conversation)).
    ///
    /// # Errors
    /// [`ArchiveError::Invalid`], [`ArchiveError::Duplicate`], key or database errors.
    pub fn store_conversation(&self, db: &dyn Storage, record: &ConversationRecord) -> Result<()> {
        record.validate()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let row = self.seal_record(db, record)?;
            match db.insert_archived(&row) {
                Ok(()) => return Ok(()),
                Err(StoreError::Duplicate { .. }) => return Err(ArchiveError::Duplicate(record.id.clone())),
                // A rotation recorded a new master key meanwhile: wrap under it.
                Err(StoreError::MasterKeyChanged) if attempt < KEY_CHANGE_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The rows of `record`: a fresh data key wrapped under the current master key, every body sealed.
    fn seal_record(&self, db: &dyn Storage, record: &ConversationRecord) -> Result<ArchivedConversationRow> {
        let ring = self.ring_for(meta_key_id(db)?)?;
        let master = ring.current();
        let data_key = DataKey::generate()?;
        let wrapped = data_key.wrap(master, &record.id)?;
        let cipher = ConversationCipher::new(&data_key, record.id.clone());
        let participants = record
            .participants
            .iter()
            .map(|p| ParticipantRow {
                role: p.role.as_str().to_owned(),
                user_id: p.user_id,
                display_name: p.display_name.clone(),
                joined_at: p.joined_at,
                left_at: p.left_at,
            })
            .collect();
        let mut messages = Vec::with_capacity(record.messages.len());
        for m in &record.messages {
            let (author, user) = match m.author {
                MessageAuthor::Visitor => ("visitor", None),
                MessageAuthor::Agent { user_id } => ("agent", Some(user_id)),
                MessageAuthor::System => ("system", None),
            };
            let sealed = match &m.file {
                // A call file's name (the body) is sealed with its details.
                Some(file) => {
                    let json = serde_json::to_vec(&SealedCallFile {
                        name: m.body.as_str().to_owned(),
                        file: file.clone(),
                    })
                    .map_err(|e| ArchiveError::Invalid(format!("call file: {e}")))?;
                    cipher.seal(m.seq, &json)?
                }
                None => cipher.seal(m.seq, m.body.as_str().as_bytes())?,
            };
            // validate() checked that seq fits in i64.
            let seq = i64::try_from(m.seq).map_err(|_| ArchiveError::Invalid("seq".into()))?;
            messages.push(MessageRow {
                seq,
                author: author.to_owned(),
                author_user_id: user,
                sent_at: m.sent_at,
                body: sealed,
                kind: m.kind.as_str().to_owned(),
            });
        }
        Ok(ArchivedConversationRow {
            id: record.id.clone(),
            group: record.group.clone(),
            site_key_id: record.site_key_id.clone(),
            visitor_digest: visitor_digest(record.visitor_id.expose()),
            started_at: record.started_at,
            ended_at: record.ended_at,
            master_key_id: master.id().to_string(),
            wrapped_key: wrapped.to_bytes(),
            archived_at: unix_now_ms(),
            participants,
            messages,
        })
    }

    /// The group of an archived conversation (for authorisation before decrypting).
    ///
    /// # Errors
    /// [`ArchiveError::NotFound`] or database errors.
    pub fn conversation_group(&self, db: &dyn Storage, id: &str) -> Result<String> {
        db.archived_group(id)?
            .ok_or_else(|| ArchiveError::NotFound(bounded(id)))
    }

    /// Decrypts a transcript and writes `audit` (action `archive.export`); the transcript is returned only
    /// once the audit record is committed, so no export goes unrecorded.
    ///
    /// # Errors
    /// [`ArchiveError::NotFound`], [`ArchiveError::Unreadable`] (tampered rows, wrong key),
    /// [`ArchiveError::MissingMasterKey`], database errors.
    pub fn export(&self, db: &dyn Storage, id: &str, audit: &AuditEvent) -> Result<Transcript> {
        let Some(row) = db.read_archived(id)? else {
            return Err(ArchiveError::NotFound(bounded(id)));
        };
        let unreadable = |seq, source| ArchiveError::Unreadable {
            conversation: id.to_string(),
            seq,
            source,
        };
        let wrapped = WrappedKey::from_bytes(&row.wrapped_key).map_err(|e| unreadable(None, e))?;
        let data_key = self.unwrap(db, &wrapped, id)?;
        let cipher = ConversationCipher::new(&data_key, id.to_string());
        let mut participants = Vec::with_capacity(row.participants.len());
        for p in row.participants {
            let role = ParticipantRole::parse(&p.role)
                .ok_or_else(|| ArchiveError::Invalid(format!("unknown participant role in conversation {id:?}")))?;
            participants.push(ArchivedParticipant {
                role,
                user_id: p.user_id,
                display_name: p.display_name,
                joined_at: p.joined_at,
                left_at: p.left_at,
            });
        }
        let mut messages = Vec::with_capacity(row.messages.len());
        for m in row.messages {
            let seq = u64::try_from(m.seq).map_err(|_| ArchiveError::Invalid("negative seq in archive".into()))?;
            let author = match (m.author.as_str(), m.author_user_id) {
                ("visitor", None) => MessageAuthor::Visitor,
                ("agent", Some(user_id)) => MessageAuthor::Agent { user_id },
                ("system", None) => MessageAuthor::System,
                _ => {
                    return Err(ArchiveError::Invalid(format!(
                        "malformed author of message {seq} in {id:?}"
                    )));
                }
            };
            let body = cipher.open(seq, &m.body).map_err(|e| unreadable(Some(seq), e))?;
            let body = String::from_utf8(body).map_err(|_| unreadable(Some(seq), ArchiveCryptoError::NotUtf8))?;
            let kind = MessageKind::parse(&m.kind)
                .ok_or_else(|| ArchiveError::Invalid(format!("unknown kind of message {seq} in {id:?}")))?;
            let (body, file) = match kind {
                MessageKind::CallFile => {
                    let f: SealedCallFile = serde_json::from_str(&body).map_err(|_| {
                        ArchiveError::Invalid(format!("malformed call file of message {seq} in {id:?}"))
                    })?;
                    (f.name, Some(f.file))
                }
                _ => (body, None),
            };
            messages.push(TranscriptMessage {
                seq,
                author,
                sent_at: m.sent_at,
                body,
                kind,
                file,
            });
        }
        db.audit(audit.clone())?;
        Ok(Transcript {
            id: id.to_string(),
            group: row.group,
            site_key_id: row.site_key_id,
            started_at: row.started_at,
            ended_at: row.ended_at,
            participants,
            messages,
        })
    }
}
