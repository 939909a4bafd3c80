//! The encrypted transcript archive: ended conversations (masked bodies, participants, timings) at rest.
//!
//! # For the live conversation layer
//! When a conversation ends, build a [`ConversationRecord`] and call
//! [`Archive::store_conversation`] on `state.archive` (an `Arc<Archive>` in
//! [`AppState`](crate::http::AppState)):
//!
//! ```no_run
//! # use relaydesk_signalling::archive::*;
//! # use relaydesk_signalling::masking::{Masker, Redacted};
//! # async fn demo(archive: &Archive, masker: &Masker) -> Result<(), ArchiveError> {
//! let record = ConversationRecord {
//!     id: "42".into(),                    // the canonical conversation id (ConversationId(42).0.to_string())
//!     group: "sales".into(),
//!     site_key_id: "pk_0123".into(),
//!     visitor_id: Redacted::new("v_abc".to_string()),
//!     participants: vec![
//!         ArchivedParticipant::visitor("Visitor", 1_000),
//!         ArchivedParticipant::user(ParticipantRole::Agent, 7, "Alice", 2_000),
//!     ],
//!     started_at: 1_000,                  // unix milliseconds
//!     ended_at: 9_000,
//!     messages: vec![ArchivedMessage { seq: 1, author: MessageAuthor::Visitor, sent_at: 3_000, body: masker.mask("hi"),
//!         kind: MessageKind::Chat, file: None }],
//! };
//! archive.store_conversation(record).await?;
//! # Ok(()) }
//! ```
//!
//! Storing is idempotent per id only in the sense that a second store of the same id is refused with
//! [`ArchiveError::Duplicate`] (nothing is overwritten). Errors never contain bodies, keys or the visitor id.
//!
//! # At rest
//! Tables `archive_conversations`, `archive_participants`, `archive_messages` and `archive_meta` (migration 2
//! of [`crate::store::MIGRATIONS`]). Each conversation has a random data key, stored only wrapped under the
//! master key (its key id in its own column); each message body is sealed with XChaCha20-Poly1305 bound to
//! the conversation id and the sequence number ([`crate::archive_crypto`]). The visitor id is stored only as a
//! SHA-256 digest (enough to erase one visitor's data, useless to identify them). No plaintext body is
//! written to the database or its WAL.
//!
//! This module keeps the crypto and the policy; the rows go through the storage traits
//! ([`crate::store::ArchiveStore`]), which see only sealed bodies, wrapped keys and digests.
//!
//! # Master key
//! Resolved by [`KeySource::resolve`]: env `RELAYDESK_MASTER_KEY` (base64 of 32 bytes; cannot be rotated by
//! the CLI), else env `RELAYDESK_MASTER_KEY_FILE`, else `[archive] master_key_file`, else
//! `<data-dir>/master.key`, created `0600` on first start. `archive_meta` records the id of the key that
//! wraps new conversation keys.
//!
//! # Rotation (`relaydesk keys rotate`, [`rotate_master_key`])
//! 1. write a new key to `<key file>.next` (0600; an existing `.next` from an interrupted rotation is reused);
//! 2. read every data key not under it, re-wrap them, and in one transaction swap them in and record its id
//!    in `archive_meta` (the store refuses the swap if a key was wrapped under the old one meanwhile: then
//!    again from the reading);
//! 3. rename `.next` over the key file (the old key is then gone).
//!
//! A crash between the steps loses nothing: at start both files are loaded and `archive_meta` says which one
//! is current; running the command again finishes the job. A running server notices the new key id in
//! `archive_meta` on its next write or read and reloads the key files.
//!
//! # Retention and erasure
//! [`purge_ended_before`] (driven by `retention_days`, see [`Archive::run_retention`]) and
//! [`purge_visitor`] delete conversations with their rows and their recordings (SQLite: with
//! `secure_delete` on and a WAL checkpoint afterwards), and write an audit record.

mod keys;
mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keys::KEY_CHANGE_ATTEMPTS;
pub use keys::{ArchiveKeys, KeySource};
use record::visitor_digest;
pub use record::{
    ArchivedMessage, ArchivedParticipant, CallFile, ConversationRecord, MessageAuthor, MessageKind, ParticipantRole,
    Transcript, TranscriptMessage, format_unix_ms,
};

pub use crate::time::unix_now_ms;

use crate::archive_crypto::{ArchiveCryptoError, Keyring, MasterKey, MasterKeyId, WrappedKey};
use crate::masking::Redacted;
use crate::shutdown::ShutdownHandle;
use crate::store::{AuditEvent, PurgeFilter, Storage, Store, StoreError, WrappedKeyRow};

/// Default master key file name inside the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Directory of sealed call recordings inside the data directory (the recording module writes them).
pub const RECORDINGS_DIR: &str = "recordings";
/// Suffix of the next key's file during a rotation (`master.key.next`).
pub const NEXT_KEY_SUFFIX: &str = ".next";
/// Environment variable holding the master key itself (base64 of 32 bytes).
pub const ENV_MASTER_KEY: &str = "RELAYDESK_MASTER_KEY";
/// Environment variable naming the master key file.
pub const ENV_MASTER_KEY_FILE: &str = "RELAYDESK_MASTER_KEY_FILE";
/// Longest conversation id, group name or site key id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Largest masked body of one archived message, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most messages in one archived conversation.
pub const MAX_MESSAGES: usize = 100_000;
/// Most participants in one archived conversation.
pub const MAX_PARTICIPANTS: usize = 256;
pub use crate::domain::MAX_DISPLAY_CHARS;

/// Errors of the archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key handling failed (key file, random generator, wrapping).
    #[error(transparent)]
    Crypto(#[from] ArchiveCryptoError),
    /// No archived conversation has this id.
    #[error("archived conversation {0:?} not found")]
    NotFound(String),
    /// A conversation with this id is already archived (nothing was overwritten).
    #[error("conversation {0:?} is already archived")]
    Duplicate(String),
    /// The record is malformed (the message says which field; never a body or a visitor id).
    #[error("invalid archive record: {0}")]
    Invalid(String),
    /// Stored data of this conversation cannot be decrypted: tampered rows, or a key that is not the one it
    /// was written with. `seq` is the message concerned, `None` for the conversation key.
    #[error("archived conversation {conversation:?} is unreadable (message {seq:?}): {source}")]
    Unreadable {
        /// The conversation.
        conversation: String,
        /// The message, if a body failed.
        seq: Option<u64>,
        /// Why.
        source: ArchiveCryptoError,
    },
    /// The master key named in the database is not available (lost key file or a wrong key given).
    #[error("master key {0} recorded in the database is not available")]
    MissingMasterKey(MasterKeyId),
    /// The master key cannot be rotated from here (it was given by environment variable).
    #[error("cannot rotate: {0}")]
    NotRotatable(String),
    /// A file operation of the rotation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// Where the master key comes from.
/// Extra attempts of [`Archive::store_conversation`] when the database stays locked.
const STORE_RETRIES: u32 = 4;

fn is_busy(e: &ArchiveError) -> bool {
    matches!(e, ArchiveError::Store(StoreError::Unavailable(_)))
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_ID_BYTES).collect()
}

/// Removes recording files (best effort: a file left behind has no key any more).
fn remove_recording_files(data_dir: Option<PathBuf>, files: &[String]) {
    let Some(dir) = data_dir else { return };
    for f in files {
        // Names come from our own rows (`{id}.rdrec`); never follow a path out of the directory.
        if f.contains('/') || f.contains("..") {
            continue;
        }
        if let Err(e) = std::fs::remove_file(dir.join(RECORDINGS_DIR).join(f))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "an erased recording's file could not be removed");
        }
    }
}

/// Erases the conversations matching `filter` with their rows (overwritten where the backend can), then
/// their recordings' files; `audit` is written with the counts in `detail`.
fn purge_where(db: &dyn Storage, filter: PurgeFilter, audit: AuditEvent) -> Result<usize> {
    let outcome = db.purge_archived(&filter, audit)?;
    remove_recording_files(db.data_dir(), &outcome.recording_files);
    Ok(outcome.conversations)
}

/// Deletes every conversation that ended before `cutoff_ms` (unix ms), audited as `archive.purge`.
///
/// # Errors
/// Database errors.
pub fn purge_ended_before(db: &dyn Storage, cutoff_ms: i64, actor: &str) -> Result<usize> {
    let audit = AuditEvent {
        actor: Some(actor.into()),
        action: "archive.purge".into(),
        target: Some(format!("ended before {}", format_unix_ms(cutoff_ms))),
        ..Default::default()
    };
    purge_where(db, PurgeFilter::EndedBefore(cutoff_ms), audit)
}

/// Erases every conversation of one visitor, audited as `archive.purge_visitor` (the audit record names the
/// visitor only by a short digest prefix).
///
/// # Errors
/// Database errors; [`ArchiveError::Invalid`] for an empty id.
pub fn purge_visitor(db: &dyn Storage, visitor_id: &Redacted<String>, actor: &str) -> Result<usize> {
    if visitor_id.expose().is_empty() {
        return Err(ArchiveError::Invalid("visitor id is empty".into()));
    }
    let digest = visitor_digest(visitor_id.expose());
    let audit = AuditEvent {
        actor: Some(actor.into()),
        action: "archive.purge_visitor".into(),
        target: Some(format!("visitor digest {}", hex::encode(&digest[..8]))),
        ..Default::default()
    };
    purge_where(db, PurgeFilter::Visitor(digest), audit)
}

/// Cutoff for `retention_days` at `now_ms`; `None` when retention is off (0 days).
pub fn retention_cutoff(retention_days: u32, now_ms: i64) -> Option<i64> {
    (retention_days > 0).then(|| now_ms.saturating_sub(i64::from(retention_days) * 86_400_000))
}

/// What [`rotate_master_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// The key that was current before.
    pub old_key_id: MasterKeyId,
    /// The new current key.
    pub new_key_id: MasterKeyId,
    /// Conversation keys re-wrapped.
    pub rewrapped: usize,
}

/// Rotates the master key in `key_file` (see the module docs for the crash-safe order), audited as
/// `keys.rotate` with both key ids.
///
/// # Errors
/// Key file or database errors; [`ArchiveError::MissingMasterKey`] if some conversation key is wrapped under
/// a key that neither file holds (then nothing changed in the database).
pub fn rotate_master_key(db: &dyn Storage, key_file: &Path, actor: &str) -> Result<RotationReport> {
    let old = MasterKey::load(key_file)?;
    let old_id = old.id();
    let next_path = KeySource::next_path(key_file);
    let next = if next_path.exists() {
        MasterKey::load(&next_path)?
    } else {
        let k = MasterKey::generate()?;
        k.save_new(&next_path)?;
        k
    };
    let new_id = next.id();
    let mut ring = Keyring::new(next);
    ring.add_previous(old);
    // Archived conversations, live ones (crate::live_store; bound to their decimal id) and recordings
    // (crate::recording; bound to their id). The store refuses the swap if a key was wrapped under the old
    // master key meanwhile (a running server); then read them again.
    let mut attempt = 0;
    let rewrapped = loop {
        attempt += 1;
        let rows = db.keys_not_under(&new_id.to_string())?;
        let mut new_rows = Vec::with_capacity(rows.len());
        for row in rows {
            let unreadable = |source| ArchiveError::Unreadable {
                conversation: row.id.clone(),
                seq: None,
                source,
            };
            let wrapped = WrappedKey::from_bytes(&row.wrapped_key).map_err(unreadable)?;
            let new = ring.rewrap_to_current(&wrapped, &row.id).map_err(|e| match e {
                ArchiveCryptoError::UnknownMasterKey(k) => ArchiveError::MissingMasterKey(k),
                source => unreadable(source),
            })?;
            // `None`: the key already names the new master key; only its column did not.
            let wrapped_key = new.map_or_else(|| row.wrapped_key.clone(), |new| new.to_bytes());
            new_rows.push(WrappedKeyRow { wrapped_key, ..row });
        }
        let audit = AuditEvent {
            actor: Some(actor.into()),
            action: "keys.rotate".into(),
            target: Some(new_id.to_string()),
            detail: Some(format!(
                "from {old_id}; {} conversation keys re-wrapped",
                new_rows.len()
            )),
            ..Default::default()
        };
        match db.replace_wrapped_keys(&new_id.to_string(), &new_rows, audit) {
            Ok(()) => break new_rows.len(),
            Err(StoreError::MasterKeyChanged) if attempt < KEY_CHANGE_ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // Only now may the old key disappear: every conversation key is wrapped under the new one.
    std::fs::rename(&next_path, key_file).map_err(|source| ArchiveError::Io {
        path: key_file.to_path_buf(),
        source,
    })?;
    if let Some(dir) = key_file.parent() {
        // Make the rename durable; failure here leaves a state the next start handles.
        if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
    Ok(RotationReport {
        old_key_id: old_id,
        new_key_id: new_id,
        rewrapped,
    })
}

/// The server's archive: the async face of [`ArchiveKeys`] over the [`Store`]. Cheap to clone.
///
/// Call order: [`Archive::open`] once at server start (after the store), then any number of
/// [`store_conversation`](Self::store_conversation) / [`export`](Self::export) calls from any task;
/// [`run_retention`](Self::run_retention) runs as one background task until shutdown.
#[derive(Debug, Clone)]
pub struct Archive {
    store: Store,
    keys: Arc<ArchiveKeys>,
}

impl Archive {
    /// Opens the archive on `store` with keys from `source` (see [`ArchiveKeys::open`]).
    ///
    /// # Errors
    /// As [`ArchiveKeys::open`].
    pub async fn open(store: Store, source: KeySource) -> Result<Self> {
        let keys = store.call(move |db| Ok(ArchiveKeys::open(source, db))).await??;
        Ok(Self {
            store,
            keys: Arc::new(keys),
        })
    }

    /// An archive over already opened keys.
    pub fn from_keys(store: Store, keys: ArchiveKeys) -> Self {
        Self {
            store,
            keys: Arc::new(keys),
        }
    }

    /// The keys.
    pub fn keys(&self) -> &ArchiveKeys {
        &self.keys
    }

    /// The store and the keys, for the modules that keep their own rows under the archive's keys
    /// (recordings, live conversations at rest).
    pub(crate) fn parts(&self) -> (Store, Arc<ArchiveKeys>) {
        (self.store.clone(), Arc::clone(&self.keys))
    }

    /// Stores an ended conversation: one transaction, bodies sealed under a fresh data key. Runs on a
    /// blocking thread.
    ///
    /// # Errors
    /// [`ArchiveError::Invalid`] (bounds: [`MAX_ID_BYTES`], [`MAX_BODY_BYTES`], [`MAX_MESSAGES`], unique
    /// seqs, `ended_at >= started_at`), [`ArchiveError::Duplicate`], key or database errors.
    pub async fn store_conversation(&self, record: ConversationRecord) -> Result<()> {
        let record = Arc::new(record);
        let mut attempt = 0u32;
        loop {
            let keys = Arc::clone(&self.keys);
            let r = Arc::clone(&record);
            match self.call(move |db| keys.store_conversation(db, &r)).await {
                Ok(()) => break,
                // Another process (the CLI rotating keys or purging) holds the write lock beyond the busy
                // timeout: back off and retry rather than lose the transcript.
                Err(e) if is_busy(&e) && attempt < STORE_RETRIES => {
                    attempt += 1;
                    tracing::warn!(conversation = %bounded(&record.id), attempt, "archive busy; retrying");
                    tokio::time::sleep(Duration::from_millis(250) * attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(conversation = %bounded(&record.id), messages = record.messages.len(), "conversation archived");
        Ok(())
    }

    /// The group of an archived conversation.
    ///
    /// # Errors
    /// [`ArchiveError::NotFound`] or database errors.
    pub async fn conversation_group(&self, id: &str) -> Result<String> {
        let keys = Arc::clone(&self.keys);
        let id = id.to_string();
        self.call(move |db| keys.conversation_group(db, &id)).await
    }

    /// Decrypts a transcript, auditing the export (see [`ArchiveKeys::export`]).
    ///
    /// # Errors
    /// As [`ArchiveKeys::export`].
    pub async fn export(&self, id: &str, audit: AuditEvent) -> Result<Transcript> {
        let keys = Arc::clone(&self.keys);
        let id = id.to_string();
        self.call(move |db| keys.export(db, &id, &audit)).await
    }

    /// Purges conversations older than `retention_days` now; `Ok(0)` when retention is off.
    ///
    /// # Errors
    /// Database errors.
    pub async fn purge_expired(&self, retention_days: u32) -> Result<usize> {
        let Some(cutoff) = retention_cutoff(retention_days, unix_now_ms()) else {
            return Ok(0);
        };
        self.call(move |db| purge_ended_before(db, cutoff, "system")).await
    }

    /// Purges expired transcripts at once and then every `interval`, until `shutdown`. Failures are logged
    /// and retried at the next tick. Does nothing (returns at once) when `retention_days` is 0.
    pub async fn run_retention(self, retention_days: u32, interval: Duration, shutdown: ShutdownHandle) {
        if retention_days == 0 {
            return;
        }
        let stopped = shutdown.stopped();
        tokio::pin!(stopped);
        let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tick.tick() => match self.purge_expired(retention_days).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, retention_days, "expired transcripts purged"),
                    Err(e) => tracing::warn!(error = %e, "transcript retention purge failed"),
                },
            }
        }
    }

    async fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&dyn Storage) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        // The archive's own error travels inside the store call's result.
        self.store.call(move |db| Ok(f(db))).await?
    }
}

#[cfg(test)]
mod tests;
