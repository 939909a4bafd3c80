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
//! # Master key
//! Resolved by [`KeySource::resolve`]: env `RELAYDESK_MASTER_KEY` (base64 of 32 bytes; cannot be rotated by
//! the CLI), else env `RELAYDESK_MASTER_KEY_FILE`, else `[archive] master_key_file`, else
//! `<data-dir>/master.key`, created `0600` on first start. `archive_meta` records the id of the key that
//! wraps new conversation keys.
//!
//! # Rotation (`relaydesk keys rotate`, [`rotate_master_key`])
//! 1. write a new key to `<key file>.next` (0600; an existing `.next` from an interrupted rotation is reused);
//! 2. in one transaction re-wrap every data key under it and record its id in `archive_meta`;
//! 3. rename `.next` over the key file (the old key is then gone).
//!
//! A crash between the steps loses nothing: at start both files are loaded and `archive_meta` says which one
//! is current; running the command again finishes the job. A running server notices the new key id in
//! `archive_meta` on its next write or read and reloads the key files.
//!
//! # Retention and erasure
//! [`purge_ended_before`] (driven by `retention_days`, see [`Archive::run_retention`]) and
//! [`purge_visitor`] delete conversations with their rows, with SQLite's `secure_delete` on and a WAL
//! checkpoint afterwards, and write an audit record.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive_crypto::{
    ArchiveCryptoError, ConversationCipher, DataKey, Keyring, MasterKey, MasterKeyId, WrappedKey,
};
use crate::masking::{MaskedText, Redacted};
use crate::shutdown::ShutdownHandle;
use crate::store::{AuditEvent, Db, Store, StoreError};

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

impl From<rusqlite::Error> for ArchiveError {
    fn from(e: rusqlite::Error) -> Self {
        ArchiveError::Store(StoreError::Sqlite(e))
    }
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

pub use crate::domain::ParticipantRole;

/// One participant of an archived conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ArchivedParticipant {
    /// Their role.
    pub role: ParticipantRole,
    /// The store user id for agents and supervisors; `None` for the visitor.
    pub user_id: Option<i64>,
    /// The name shown in the conversation.
    pub display_name: String,
    /// When they joined (unix ms), if known.
    pub joined_at: Option<i64>,
    /// When they left (unix ms), if before the end.
    pub left_at: Option<i64>,
}

impl ArchivedParticipant {
    /// The visitor, joined at `joined_at` (unix ms).
    pub fn visitor(display_name: impl Into<String>, joined_at: i64) -> Self {
        Self {
            role: ParticipantRole::Visitor,
            user_id: None,
            display_name: display_name.into(),
            joined_at: Some(joined_at),
            left_at: None,
        }
    }

    /// An agent or supervisor (store user id), joined at `joined_at` (unix ms).
    pub fn user(role: ParticipantRole, user_id: i64, display_name: impl Into<String>, joined_at: i64) -> Self {
        Self {
            role,
            user_id: Some(user_id),
            display_name: display_name.into(),
            joined_at: Some(joined_at),
            left_at: None,
        }
    }
}

/// Who wrote an archived message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageAuthor {
    /// The visitor.
    Visitor,
    /// An agent (or supervisor), by store user id.
    Agent {
        /// The user id.
        user_id: i64,
    },
    /// The server (notices such as transfers).
    System,
}

/// What a transcript entry is: a chat message (or notice) over the WebSocket, or what passed over a call's
/// data channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A chat message (or a notice).
    #[default]
    Chat,
    /// In-call text (a call's `text` data channel), masked as it was relayed.
    CallText,
    /// A file sent during a call (a call's `file` data channel): the body is its name (cleaned, masked),
    /// the `file` field its size, type and hash. The content is not kept.
    CallFile,
}

impl MessageKind {
    /// The name stored in `archive_messages.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Chat => "chat",
            MessageKind::CallText => "call_text",
            MessageKind::CallFile => "call_file",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "chat" => MessageKind::Chat,
            "call_text" => MessageKind::CallText,
            "call_file" => MessageKind::CallFile,
            _ => return None,
        })
    }
}

/// A file relayed during a call, as the transcript lists it (its name is the entry's body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallFile {
    /// Size in bytes.
    pub size: u64,
    /// The media type the sender declared (and the server's file policy accepted).
    pub mime: String,
    /// SHA-256 of the bytes relayed, computed by the server while relaying (lowercase hex).
    pub sha256: String,
}

impl CallFile {
    fn validate(&self) -> Result<()> {
        if self.mime.is_empty() || self.mime.len() > 255 {
            return Err(ArchiveError::Invalid("call file media type length".into()));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ArchiveError::Invalid(
                "call file sha256 is not 64 lowercase hex digits".into(),
            ));
        }
        Ok(())
    }
}

/// A call file as sealed in `archive_messages.body`.
#[derive(Serialize, Deserialize)]
struct SealedCallFile {
    name: String,
    #[serde(flatten)]
    file: CallFile,
}

/// One message to archive. The body is [`MaskedText`]: only masked text can be archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Sequence number, unique within the conversation (order of the transcript).
    pub seq: u64,
    /// Who wrote it.
    pub author: MessageAuthor,
    /// When it was sent (unix ms).
    pub sent_at: i64,
    /// The masked body (of a [`MessageKind::CallFile`]: the file name).
    pub body: MaskedText,
    /// What it is.
    pub kind: MessageKind,
    /// The file of a [`MessageKind::CallFile`] (and of no other kind).
    pub file: Option<CallFile>,
}

/// An ended conversation, as handed to [`Archive::store_conversation`].
#[derive(Debug, Clone)]
pub struct ConversationRecord {
    /// The canonical conversation id (1 to [`MAX_ID_BYTES`] printable ASCII bytes, e.g. `"42"`).
    pub id: String,
    /// The agent group (name) the conversation belonged to at its end; supervisors of it may export it.
    pub group: String,
    /// The site key (`pk_…`) the visitor came through.
    pub site_key_id: String,
    /// The visitor's id; stored only as a digest, redacted in `Debug`/`Display`.
    pub visitor_id: Redacted<String>,
    /// Everyone who took part.
    pub participants: Vec<ArchivedParticipant>,
    /// Start (unix ms).
    pub started_at: i64,
    /// End (unix ms), not before `started_at`.
    pub ended_at: i64,
    /// The messages; sequence numbers unique.
    pub messages: Vec<ArchivedMessage>,
}

/// A decrypted message of a [`Transcript`]. The body is the masked text that was archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TranscriptMessage {
    /// Sequence number.
    pub seq: u64,
    /// Who wrote it.
    pub author: MessageAuthor,
    /// When (unix ms).
    pub sent_at: i64,
    /// The masked body (of a `call_file` entry: the file name).
    pub body: String,
    /// What it is.
    pub kind: MessageKind,
    /// The file of a `call_file` entry (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<CallFile>,
}

/// A decrypted (masked) transcript, as exported. Serialises as the JSON of the export endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Transcript {
    /// The conversation id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// The site key the visitor came through.
    pub site_key_id: String,
    /// Start (unix ms).
    pub started_at: i64,
    /// End (unix ms).
    pub ended_at: i64,
    /// Participants in the order they were recorded.
    pub participants: Vec<ArchivedParticipant>,
    /// Messages by sequence number.
    pub messages: Vec<TranscriptMessage>,
}

impl Transcript {
    /// The JSON export (`relaydesk archive export --format json`), pretty-printed.
    pub fn to_json_pretty(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Human-readable form (`relaydesk archive export --format text`), one message per line, times in UTC.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Conversation {} (group {}, site key {})",
            self.id, self.group, self.site_key_id
        );
        let _ = writeln!(
            out,
            "Started {}, ended {}",
            format_unix_ms(self.started_at),
            format_unix_ms(self.ended_at)
        );
        for p in &self.participants {
            match p.user_id {
                Some(id) => {
                    let _ = writeln!(out, "Participant: {} {} (user {id})", p.role.as_str(), p.display_name);
                }
                None => {
                    let _ = writeln!(out, "Participant: {} {}", p.role.as_str(), p.display_name);
                }
            }
        }
        for m in &self.messages {
            let who = match m.author {
                MessageAuthor::Visitor => "visitor".to_string(),
                MessageAuthor::Agent { user_id } => self
                    .participants
                    .iter()
                    .find(|p| p.user_id == Some(user_id))
                    .map(|p| format!("{} (user {user_id})", p.display_name))
                    .unwrap_or_else(|| format!("user {user_id}")),
                MessageAuthor::System => "system".to_string(),
            };
            // One line per message: line breaks inside a body are shown as `\n`.
            let body = m.body.replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r");
            let at = format_unix_ms(m.sent_at);
            let _ = match (m.kind, &m.file) {
                (MessageKind::CallFile, Some(f)) => writeln!(
                    out,
                    "[{at}] #{} {who} (in call, file): {body} ({}, {} bytes, sha256 {})",
                    m.seq, f.mime, f.size, f.sha256
                ),
                (MessageKind::CallText, _) => writeln!(out, "[{at}] #{} {who} (in call): {body}", m.seq),
                _ => writeln!(out, "[{at}] #{} {who}: {body}", m.seq),
            };
        }
        out
    }
}

/// Formats unix milliseconds as RFC 3339 UTC (`2026-11-21T20:54:47.123Z`).
pub fn format_unix_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

pub use crate::time::unix_now_ms;

/// The digest stored instead of a visitor id.
fn visitor_digest(visitor_id: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"relaydesk/visitor/v1");
    h.update(visitor_id.as_bytes());
    h.finalize().to_vec()
}

fn valid_id(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_ID_BYTES || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ArchiveError::Invalid(format!(
            "{what} must be 1 to {MAX_ID_BYTES} printable ASCII characters"
        )));
    }
    Ok(())
}

impl ConversationRecord {
    /// Checks bounds and consistency (called by [`Archive::store_conversation`]).
    ///
    /// # Errors
    /// [`ArchiveError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<()> {
        valid_id("conversation id", &self.id)?;
        if self.group.is_empty() || self.group.chars().count() > crate::store::MAX_NAME_CHARS {
            return Err(ArchiveError::Invalid("group name length".into()));
        }
        valid_id("site key id", &self.site_key_id)?;
        if self.visitor_id.expose().is_empty() || self.visitor_id.expose().len() > MAX_ID_BYTES {
            return Err(ArchiveError::Invalid("visitor id length".into()));
        }
        if self.ended_at < self.started_at {
            return Err(ArchiveError::Invalid("ended_at is before started_at".into()));
        }
        if self.participants.len() > MAX_PARTICIPANTS {
            return Err(ArchiveError::Invalid(format!(
                "more than {MAX_PARTICIPANTS} participants"
            )));
        }
        for p in &self.participants {
            if p.display_name.chars().count() > MAX_DISPLAY_CHARS {
                return Err(ArchiveError::Invalid("participant display name too long".into()));
            }
            if (p.role == ParticipantRole::Visitor) != p.user_id.is_none() {
                return Err(ArchiveError::Invalid(
                    "the visitor has no user id; agents and supervisors have one".into(),
                ));
            }
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(ArchiveError::Invalid(format!("more than {MAX_MESSAGES} messages")));
        }
        let mut seqs = std::collections::HashSet::with_capacity(self.messages.len());
        for m in &self.messages {
            if i64::try_from(m.seq).is_err() {
                return Err(ArchiveError::Invalid("message seq above 2^63-1".into()));
            }
            if !seqs.insert(m.seq) {
                return Err(ArchiveError::Invalid(format!("duplicate message seq {}", m.seq)));
            }
            if m.body.len() > MAX_BODY_BYTES {
                return Err(ArchiveError::Invalid(format!(
                    "message {} longer than {MAX_BODY_BYTES} bytes",
                    m.seq
                )));
            }
            match (m.kind, &m.file) {
                (MessageKind::CallFile, Some(f)) => f.validate()?,
                (MessageKind::CallFile, None) | (_, Some(_)) => {
                    return Err(ArchiveError::Invalid(format!(
                        "message {}: a call_file entry has a file, no other has",
                        m.seq
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Where the master key comes from.
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
fn build_keyring(mut keys: Vec<MasterKey>, current: Option<MasterKeyId>) -> Option<Keyring> {
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

fn meta_key_id(conn: &rusqlite::Connection) -> Result<Option<MasterKeyId>> {
    let text: Option<String> = conn
        .query_row("SELECT master_key_id FROM archive_meta WHERE id = 1", [], |r| r.get(0))
        .optional()?;
    match text {
        None => Ok(None),
        Some(t) => t
            .parse::<MasterKeyId>()
            .map(Some)
            .map_err(|_| ArchiveError::Invalid("archive_meta holds a malformed key id".into())),
    }
}

fn set_meta_key_id(conn: &rusqlite::Connection, id: MasterKeyId) -> Result<()> {
    conn.execute(
        "INSERT INTO archive_meta (id, master_key_id) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET master_key_id = excluded.master_key_id",
        params![id.to_string()],
    )?;
    Ok(())
}

/// The master keys in use, reloaded from their source when the database names a key they lack (a rotation
/// by the CLI while the server runs). Synchronous; used directly by the offline CLI and through [`Archive`]
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
    pub fn open(source: KeySource, db: &mut Db) -> Result<Self> {
        let keys = source.load_all()?;
        let conn = db.conn_mut();
        let recorded = meta_key_id(conn)?;
        let ring = build_keyring(keys, recorded).ok_or_else(|| ArchiveError::Invalid("no master key".into()))?;
        let current = ring.current().id();
        if recorded != Some(current) {
            if let Some(old) = recorded {
                let orphans: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM archive_conversations WHERE master_key_id = ?1",
                    params![old.to_string()],
                    |r| r.get(0),
                )?;
                if orphans > 0 {
                    tracing::warn!(recorded = %old, given = %current, conversations = orphans,
                        "the archive's master key is not available; those conversations cannot be exported");
                }
            }
            set_meta_key_id(conn, current)?;
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
    fn unwrap(&self, conn: &rusqlite::Connection, wrapped: &WrappedKey, conversation: &str) -> Result<DataKey> {
        let ring = self.ring();
        let ring = if ring.get(wrapped.master_key_id()).is_some() {
            ring
        } else {
            self.ring_for(meta_key_id(conn)?)?
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

    /// Wraps a live conversation's data key under the master key the database names as current (reloading
    /// the key files after a rotation), inside the caller's transaction: a rotation either re-wraps it or
    /// comes after it.
    ///
    /// # Errors
    /// Key or database errors.
    pub(crate) fn wrap_live_key(
        &self,
        conn: &rusqlite::Connection,
        key: &DataKey,
        conversation: &str,
    ) -> Result<WrappedKey> {
        let ring = self.ring_for(meta_key_id(conn)?)?;
        Ok(key.wrap(ring.current(), conversation)?)
    }

    /// Opens a stored wrapped data key of `conversation` (a live conversation's).
    ///
    /// # Errors
    /// [`ArchiveError::Unreadable`], [`ArchiveError::MissingMasterKey`], database errors.
    pub(crate) fn unwrap_stored(
        &self,
        conn: &rusqlite::Connection,
        bytes: &[u8],
        conversation: &str,
    ) -> Result<DataKey> {
        let wrapped = WrappedKey::from_bytes(bytes).map_err(|source| ArchiveError::Unreadable {
            conversation: conversation.to_string(),
            seq: None,
            source,
        })?;
        self.unwrap(conn, &wrapped, conversation)
    }

    /// Stores an ended conversation in one transaction (see [`Archive::store_conversation`]).
    ///
    /// # Errors
    /// [`ArchiveError::Invalid`], [`ArchiveError::Duplicate`], key or database errors.
    pub fn store_conversation(&self, db: &mut Db, record: &ConversationRecord) -> Result<()> {
        record.validate()?;
        let tx = db
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM archive_conversations WHERE id = ?1",
                params![record.id],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            return Err(ArchiveError::Duplicate(record.id.clone()));
        }
        // The live copy (crate::live_store) goes in the same transaction: a conversation is either live at
        // rest or archived, never both and never neither.
        if let Ok(live_id) = record.id.parse::<i64>() {
            tx.execute("DELETE FROM live_conversations WHERE id = ?1", params![live_id])?;
        }
        let ring = self.ring_for(meta_key_id(&tx)?)?;
        let master = ring.current();
        let data_key = DataKey::generate()?;
        let wrapped = data_key.wrap(master, &record.id)?;
        let cipher = ConversationCipher::new(&data_key, record.id.clone());
        tx.execute(
            "INSERT INTO archive_conversations (id, group_name, site_key_id, visitor_digest, started_at, ended_at,
                 master_key_id, wrapped_key, archived_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                record.id,
                record.group,
                record.site_key_id,
                visitor_digest(record.visitor_id.expose()),
                record.started_at,
                record.ended_at,
                master.id().to_string(),
                wrapped.to_bytes(),
                unix_now_ms()
            ],
        )?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO archive_participants (conversation_id, position, role, user_id, display_name, joined_at, left_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (i, p) in record.participants.iter().enumerate() {
                stmt.execute(params![
                    record.id,
                    i as i64,
                    p.role.as_str(),
                    p.user_id,
                    p.display_name,
                    p.joined_at,
                    p.left_at
                ])?;
            }
            let mut stmt = tx.prepare(
                "INSERT INTO archive_messages (conversation_id, seq, author, author_user_id, sent_at, body, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
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
                stmt.execute(params![
                    record.id,
                    seq,
                    author,
                    user,
                    m.sent_at,
                    sealed,
                    m.kind.as_str()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The group of an archived conversation (for authorisation before decrypting).
    ///
    /// # Errors
    /// [`ArchiveError::NotFound`] or database errors.
    pub fn conversation_group(&self, db: &mut Db, id: &str) -> Result<String> {
        db.conn_mut()
            .query_row(
                "SELECT group_name FROM archive_conversations WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| ArchiveError::NotFound(bounded(id)))
    }

    /// Decrypts a transcript and writes `audit` (action `archive.export`) in the same transaction, so no
    /// export goes unrecorded.
    ///
    /// # Errors
    /// [`ArchiveError::NotFound`], [`ArchiveError::Unreadable`] (tampered rows, wrong key),
    /// [`ArchiveError::MissingMasterKey`], database errors.
    pub fn export(&self, db: &mut Db, id: &str, audit: &AuditEvent) -> Result<Transcript> {
        let tx = db
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = tx
            .query_row(
                "SELECT group_name, site_key_id, started_at, ended_at, wrapped_key FROM archive_conversations WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((group, site_key_id, started_at, ended_at, wrapped)) = row else {
            return Err(ArchiveError::NotFound(bounded(id)));
        };
        let unreadable = |seq, source| ArchiveError::Unreadable {
            conversation: id.to_string(),
            seq,
            source,
        };
        let wrapped = WrappedKey::from_bytes(&wrapped).map_err(|e| unreadable(None, e))?;
        let data_key = self.unwrap(&tx, &wrapped, id)?;
        let cipher = ConversationCipher::new(&data_key, id.to_string());
        let participants = {
            let mut stmt = tx.prepare(
                "SELECT role, user_id, display_name, joined_at, left_at FROM archive_participants
                 WHERE conversation_id = ?1 ORDER BY position",
            )?;
            let rows = stmt.query_map(params![id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (role, user_id, display_name, joined_at, left_at) = row?;
                let role = ParticipantRole::parse(&role)
                    .ok_or_else(|| ArchiveError::Invalid(format!("unknown participant role in conversation {id:?}")))?;
                out.push(ArchivedParticipant {
                    role,
                    user_id,
                    display_name,
                    joined_at,
                    left_at,
                });
            }
            out
        };
        let messages = {
            let mut stmt = tx.prepare(
                "SELECT seq, author, author_user_id, sent_at, body, kind FROM archive_messages
                 WHERE conversation_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, author, user, sent_at, sealed, kind) = row?;
                let seq = u64::try_from(seq).map_err(|_| ArchiveError::Invalid("negative seq in archive".into()))?;
                let author = match (author.as_str(), user) {
                    ("visitor", None) => MessageAuthor::Visitor,
                    ("agent", Some(user_id)) => MessageAuthor::Agent { user_id },
                    ("system", None) => MessageAuthor::System,
                    _ => {
                        return Err(ArchiveError::Invalid(format!(
                            "malformed author of message {seq} in {id:?}"
                        )));
                    }
                };
                let body = cipher.open(seq, &sealed).map_err(|e| unreadable(Some(seq), e))?;
                let body = String::from_utf8(body).map_err(|_| unreadable(Some(seq), ArchiveCryptoError::NotUtf8))?;
                let kind = MessageKind::parse(&kind)
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
                out.push(TranscriptMessage {
                    seq,
                    author,
                    sent_at,
                    body,
                    kind,
                    file,
                });
            }
            out
        };
        crate::store::write_audit(&tx, audit)?;
        tx.commit()?;
        Ok(Transcript {
            id: id.to_string(),
            group,
            site_key_id,
            started_at,
            ended_at,
            participants,
            messages,
        })
    }
}

/// Extra attempts of [`Archive::store_conversation`] when the database stays locked.
const STORE_RETRIES: u32 = 4;

fn is_busy(e: &ArchiveError) -> bool {
    matches!(
        e,
        ArchiveError::Store(StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_ID_BYTES).collect()
}

/// Deletes conversations matching `filter` (a WHERE clause on `archive_conversations` with one parameter),
/// overwriting freed pages, writes `audit` with the count in `detail`, then checkpoints the WAL.
/// Inside a purge transaction: deletes the recording rows of the archived conversations matching `filter`
/// (a WHERE clause on `archive_conversations` with one parameter) and returns their files, to remove once the
/// transaction committed (without its wrapped key a file is unreadable already).
fn delete_recording_rows_of_archived(
    tx: &rusqlite::Connection,
    filter: &str,
    param: &dyn rusqlite::ToSql,
) -> rusqlite::Result<Vec<String>> {
    let files = {
        let mut stmt = tx.prepare(&format!(
            "SELECT file FROM recordings WHERE conversation_id IN (SELECT id FROM archive_conversations WHERE {filter})"
        ))?;
        let rows = stmt.query_map([param], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.execute(
        &format!(
            "DELETE FROM recordings WHERE conversation_id IN (SELECT id FROM archive_conversations WHERE {filter})"
        ),
        [param],
    )?;
    Ok(files)
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

fn purge_where(db: &mut Db, filter: &str, param: &dyn rusqlite::ToSql, mut audit: AuditEvent) -> Result<usize> {
    let data_dir = db.data_dir();
    let conn = db.conn_mut();
    // Deleted rows are overwritten with zeros rather than left in free pages.
    conn.pragma_update(None, "secure_delete", true)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Their recordings go with them: the rows (and so the keys) now, the sealed files after the commit.
    let recordings = delete_recording_rows_of_archived(&tx, filter, param)?;
    let n = tx.execute(&format!("DELETE FROM archive_conversations WHERE {filter}"), [param])?;
    let what = format!("{n} conversations erased ({} recordings)", recordings.len());
    audit.detail = Some(match audit.detail.take() {
        Some(d) => format!("{d}; {what}"),
        None => what,
    });
    crate::store::write_audit(&tx, &audit)?;
    tx.commit()?;
    remove_recording_files(data_dir, &recordings);
    if n > 0 {
        // Old WAL frames still hold the deleted pages: copy back and truncate. Best effort (a reader may
        // keep the WAL busy; the frames are then overwritten later).
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    Ok(n)
}

/// Deletes every conversation that ended before `cutoff_ms` (unix ms), audited as `archive.purge`.
///
/// # Errors
/// Database errors.
pub fn purge_ended_before(db: &mut Db, cutoff_ms: i64, actor: &str) -> Result<usize> {
    let audit = AuditEvent {
        actor: Some(actor.into()),
        action: "archive.purge".into(),
        target: Some(format!("ended before {}", format_unix_ms(cutoff_ms))),
        ..Default::default()
    };
    purge_where(db, "ended_at < ?1", &cutoff_ms, audit)
}

/// Erases every conversation of one visitor, audited as `archive.purge_visitor` (the audit record names the
/// visitor only by a short digest prefix).
///
/// # Errors
/// Database errors; [`ArchiveError::Invalid`] for an empty id.
pub fn purge_visitor(db: &mut Db, visitor_id: &Redacted<String>, actor: &str) -> Result<usize> {
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
    purge_where(db, "visitor_digest = ?1", &digest, audit)
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
pub fn rotate_master_key(db: &mut Db, key_file: &Path, actor: &str) -> Result<RotationReport> {
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
    let tx = db
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut rewrapped = 0usize;
    // Archived conversations, then live ones (crate::live_store; their id is an integer column: the key is
    // bound to its decimal form, and SQLite compares the text parameter numerically with it), then
    // recordings (crate::recording; a key per recording, bound to its id).
    for table in ["archive_conversations", "live_conversations", "recordings"] {
        let rows: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT CAST(id AS TEXT), wrapped_key FROM {table} WHERE master_key_id != ?1"
            ))?;
            let rows = stmt.query_map(params![new_id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut update = tx.prepare(&format!(
            "UPDATE {table} SET master_key_id = ?1, wrapped_key = ?2 WHERE id = ?3"
        ))?;
        for (id, bytes) in &rows {
            let wrapped = WrappedKey::from_bytes(bytes).map_err(|source| ArchiveError::Unreadable {
                conversation: id.clone(),
                seq: None,
                source,
            })?;
            let new = ring.rewrap_to_current(&wrapped, id).map_err(|e| match e {
                ArchiveCryptoError::UnknownMasterKey(k) => ArchiveError::MissingMasterKey(k),
                source => ArchiveError::Unreadable {
                    conversation: id.clone(),
                    seq: None,
                    source,
                },
            })?;
            if let Some(new) = new {
                update.execute(params![new_id.to_string(), new.to_bytes(), id])?;
                rewrapped += 1;
            }
        }
    }
    set_meta_key_id(&tx, new_id)?;
    crate::store::write_audit(
        &tx,
        &AuditEvent {
            actor: Some(actor.into()),
            action: "keys.rotate".into(),
            target: Some(new_id.to_string()),
            detail: Some(format!("from {old_id}; {rewrapped} conversation keys re-wrapped")),
            ..Default::default()
        },
    )?;
    tx.commit()?;
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
        F: FnOnce(&mut Db) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        // The archive's own error travels inside the store call's result.
        self.store.call(move |db| Ok(f(db))).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::Masker;

    fn record(id: &str, visitor: &str) -> ConversationRecord {
        ConversationRecord {
            id: id.into(),
            group: "sales".into(),
            site_key_id: "pk_1".into(),
            visitor_id: Redacted::new(visitor.to_string()),
            participants: vec![ArchivedParticipant::visitor("Visitor", 0)],
            started_at: 0,
            ended_at: 10,
            messages: vec![ArchivedMessage {
                seq: 1,
                author: MessageAuthor::Visitor,
                sent_at: 5,
                body: Masker::default().mask("hello"),
                kind: MessageKind::Chat,
                file: None,
            }],
        }
    }

    #[test]
    fn in_call_entries_round_trip_with_their_kind_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open_in_memory().unwrap();
        let keys = ArchiveKeys::open(KeySource::File(dir.path().join("k")), &mut db).unwrap();
        let masker = Masker::default();
        let file = CallFile {
            size: 3,
            mime: "text/plain".into(),
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
        };
        let mut r = record("1", "v");
        r.messages.push(ArchivedMessage {
            seq: 2,
            author: MessageAuthor::Agent { user_id: 4 },
            sent_at: 6,
            body: masker.mask("card 4111 1111 1111 1111"),
            kind: MessageKind::CallText,
            file: None,
        });
        r.messages.push(ArchivedMessage {
            seq: 3,
            author: MessageAuthor::Visitor,
            sent_at: 7,
            body: masker.mask("abc.txt"),
            kind: MessageKind::CallFile,
            file: Some(file.clone()),
        });
        keys.store_conversation(&mut db, &r).unwrap();
        let t = keys.export(&mut db, "1", &AuditEvent::default()).unwrap();
        let kinds: Vec<MessageKind> = t.messages.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, [MessageKind::Chat, MessageKind::CallText, MessageKind::CallFile]);
        assert_eq!(t.messages[1].body, "card •••• •••• •••• 1111");
        assert_eq!(
            (t.messages[2].body.as_str(), t.messages[2].file.as_ref()),
            ("abc.txt", Some(&file))
        );
        let json: serde_json::Value = serde_json::from_str(&t.to_json_pretty()).unwrap();
        assert_eq!(json["messages"][0]["kind"], "chat");
        assert!(json["messages"][0].get("file").is_none());
        assert_eq!(json["messages"][2]["file"]["sha256"], file.sha256.as_str());
        // The documented example (docs/protocol.md, "Archive") has the fields of real entries, kind by kind.
        let doc = include_str!("../../docs/protocol.md");
        let start = doc.find("```json transcript").unwrap();
        let block = doc[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.trim() != "```")
            .collect::<Vec<_>>()
            .join("\n");
        let example: serde_json::Value = serde_json::from_str(&block).unwrap();
        let fields = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(fields(&example), fields(&json));
        let mut shown = Vec::new();
        for m in example["messages"].as_array().unwrap() {
            let real = json["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["kind"] == m["kind"])
                .unwrap_or_else(|| panic!("no real entry of kind {}", m["kind"]));
            assert_eq!(fields(m), fields(real), "{m}");
            if let Some(f) = m.get("file") {
                assert_eq!(fields(f), fields(&real["file"]));
            }
            shown.push(m["kind"].as_str().unwrap().to_owned());
        }
        shown.dedup();
        assert!(shown.contains(&"call_text".to_owned()) && shown.contains(&"call_file".to_owned()));
        let text = t.to_text();
        assert!(text.contains("#2 user 4 (in call): card •••• •••• •••• 1111"), "{text}");
        assert!(
            text.contains(&format!(
                "#3 visitor (in call, file): abc.txt (text/plain, 3 bytes, sha256 {})",
                file.sha256
            )),
            "{text}"
        );
        // A call file needs its details, and only a call file has them.
        for (kind, f) in [(MessageKind::CallFile, None), (MessageKind::Chat, Some(file.clone()))] {
            let mut bad = record("2", "v");
            bad.messages[0].kind = kind;
            bad.messages[0].file = f;
            assert!(matches!(
                keys.store_conversation(&mut db, &bad),
                Err(ArchiveError::Invalid(_))
            ));
        }
        let mut bad = record("3", "v");
        bad.messages[0].kind = MessageKind::CallFile;
        bad.messages[0].file = Some(CallFile {
            sha256: "XYZ".into(),
            ..file
        });
        assert!(matches!(
            keys.store_conversation(&mut db, &bad),
            Err(ArchiveError::Invalid(_))
        ));
    }

    #[test]
    fn formats_unix_ms_as_rfc3339() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_unix_ms(1_763_758_487_001), "2025-11-21T20:54:47.001Z");
        assert_eq!(format_unix_ms(-1), "1969-12-31T23:59:59.999Z");
        // Extremes do not panic.
        let _ = format_unix_ms(i64::MAX);
        let _ = format_unix_ms(i64::MIN);
    }

    #[test]
    fn retention_cutoff_rules() {
        assert_eq!(retention_cutoff(0, 1_000_000_000_000), None);
        assert_eq!(
            retention_cutoff(1, 1_000_000_000_000),
            Some(1_000_000_000_000 - 86_400_000)
        );
        assert_eq!(retention_cutoff(36_500, i64::MIN + 5), Some(i64::MIN));
    }

    #[test]
    fn record_debug_redacts_the_visitor() {
        let r = record("1", "visitor-secret-id");
        let text = format!("{r:?}");
        assert!(!text.contains("visitor-secret-id"), "{text}");
    }

    #[test]
    fn store_export_in_memory_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open_in_memory().unwrap();
        let keys = ArchiveKeys::open(KeySource::File(dir.path().join("k")), &mut db).unwrap();
        keys.store_conversation(&mut db, &record("1", "v")).unwrap();
        let t = keys.export(&mut db, "1", &AuditEvent::default()).unwrap();
        assert_eq!(t.messages[0].body, "hello");
        assert!(matches!(
            keys.store_conversation(&mut db, &record("1", "v")),
            Err(ArchiveError::Duplicate(_))
        ));
        let mut big = record("2", "v");
        big.messages[0].body = Masker::default().mask(&"a".repeat(MAX_BODY_BYTES + 1));
        assert!(matches!(
            keys.store_conversation(&mut db, &big),
            Err(ArchiveError::Invalid(_))
        ));
        let mut huge_seq = record("3", "v");
        huge_seq.messages[0].seq = u64::MAX;
        assert!(matches!(
            keys.store_conversation(&mut db, &huge_seq),
            Err(ArchiveError::Invalid(_))
        ));
        let mut empty_visitor = record("4", "");
        empty_visitor.visitor_id = Redacted::new(String::new());
        assert!(matches!(
            keys.store_conversation(&mut db, &empty_visitor),
            Err(ArchiveError::Invalid(m)) if m == "visitor id length"
        ));
        assert!(matches!(
            purge_visitor(&mut db, &Redacted::new(String::new()), "t"),
            Err(ArchiveError::Invalid(_))
        ));
        assert_eq!(purge_visitor(&mut db, &Redacted::new("v".into()), "t").unwrap(), 1);
        assert!(matches!(
            keys.export(&mut db, "1", &AuditEvent::default()),
            Err(ArchiveError::NotFound(_))
        ));
        // The cascade removed the rows.
        let left: i64 = db
            .conn_mut()
            .query_row("SELECT COUNT(*) FROM archive_messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
}
