//! The storage traits, grouped by concern, and the rows they carry. Every method takes `&self`, runs in
//! its own transaction (all or nothing) and returns once it is committed; see the module docs of
//! [`crate::store`] for why they are blocking and how the server calls them.
//!
//! Where to add a backend: implement every trait of this file for one type (plus [`Storage`]), in a
//! module of its own under `store/`, with its own migrations, and run the shared suite against it
//! (`store/suite.rs`, see `store/sqlite/tests.rs`).

use std::fmt;
use std::path::PathBuf;

use super::{
    AuditEvent, AuditRecord, Credentials, Group, NewUser, RecordingInfo, RecordingPolicy, SessionLimits, SiteKey,
    StoreError, User, UserUpdate,
};

/// Results of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Users and groups. Writes that change them record their audit event in the same transaction.
pub trait AccountStore {
    /// True if at least one enabled admin exists.
    fn has_admin(&self) -> StoreResult<bool>;
    /// True if a user with this name exists (enabled or not; names compare case-insensitively).
    fn user_exists(&self, username: &str) -> StoreResult<bool>;
    /// Creates a user with its groups (which must exist). [`StoreError::Duplicate`] for a taken name.
    fn create_user(&self, new: NewUser, audit: AuditEvent) -> StoreResult<User>;
    /// A user by name, with the password hash (for login); `None` if unknown.
    fn credentials(&self, username: &str) -> StoreResult<Option<Credentials>>;
    /// A user by id.
    fn user(&self, id: i64) -> StoreResult<User>;
    /// All users, by name.
    fn list_users(&self) -> StoreResult<Vec<User>>;
    /// Applies `update` to the user `id` and returns the new user. Disabling, changing the role or the
    /// password ends the user's sessions. Refuses ([`StoreError::LastAdmin`]) to leave no enabled admin.
    fn update_user(&self, id: i64, update: UserUpdate, audit: AuditEvent) -> StoreResult<User>;
    /// Creates a group with a recording policy.
    fn create_group_with(&self, name: &str, recording: RecordingPolicy, audit: AuditEvent) -> StoreResult<Group>;
    /// Changes a group's recording policy (calls already started keep theirs).
    fn set_group_recording(&self, name: &str, recording: RecordingPolicy, audit: AuditEvent) -> StoreResult<Group>;
    /// All groups, by name.
    fn list_groups(&self) -> StoreResult<Vec<Group>>;
    /// Deletes a group. Refused ([`StoreError::InUse`]) while site keys (even revoked ones) refer to it;
    /// members lose the group.
    fn delete_group(&self, name: &str, audit: AuditEvent) -> StoreResult<()>;

    /// A user by name.
    fn user_by_name(&self, username: &str) -> StoreResult<User> {
        self.credentials(username)?
            .map(|c| c.user)
            .ok_or_else(|| StoreError::NotFound {
                what: "user",
                name: super::bounded(username, super::MAX_NAME_CHARS),
            })
    }

    /// Creates a group (recording off).
    fn create_group(&self, name: &str, audit: AuditEvent) -> StoreResult<Group> {
        self.create_group_with(name, RecordingPolicy::Off, audit)
    }

    /// A group by name (case-insensitive).
    fn group(&self, name: &str) -> StoreResult<Group> {
        super::find_group(self.list_groups()?, name)
    }
}

/// Public site keys.
pub trait SiteKeyStore {
    /// Creates a site key for `group` with already-normalised `origins` (see [`crate::origin`]).
    fn create_site_key(
        &self,
        key: &str,
        group: &str,
        origins: &[String],
        label: &str,
        audit: AuditEvent,
    ) -> StoreResult<SiteKey>;
    /// A site key (revoked or not).
    fn site_key(&self, key: &str) -> StoreResult<SiteKey>;
    /// All site keys, oldest first.
    fn list_site_keys(&self) -> StoreResult<Vec<SiteKey>>;
    /// Revokes a site key (idempotent: revoking twice keeps the first time).
    fn revoke_site_key(&self, key: &str, audit: AuditEvent) -> StoreResult<SiteKey>;
}

/// Login sessions, stored under the SHA-256 hash of their token.
pub trait SessionStore {
    /// Stores a new session for `user_id`.
    fn create_session(&self, token_hash: &[u8; 32], user_id: i64, now: i64) -> StoreResult<()>;
    /// Resolves a session to its enabled user, refreshing its idle timer. Expired sessions and sessions of
    /// disabled users are deleted and give `None`.
    fn touch_session(&self, token_hash: &[u8; 32], now: i64, limits: SessionLimits) -> StoreResult<Option<User>>;
    /// Deletes a session (logout). Unknown tokens are ignored.
    fn delete_session(&self, token_hash: &[u8; 32]) -> StoreResult<()>;
    /// Deletes every expired session; returns how many.
    fn purge_sessions(&self, now: i64, limits: SessionLimits) -> StoreResult<usize>;
}

/// The audit log.
pub trait AuditStore {
    /// Appends an audit record (fields bounded to [`super::MAX_AUDIT_CHARS`]).
    fn audit(&self, event: AuditEvent) -> StoreResult<()>;
    /// The newest `limit` audit records, newest first.
    fn recent_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>>;
}

/// One participant row of an archived conversation (its position is its index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantRow {
    /// `visitor`, `agent` or `supervisor`.
    pub role: String,
    /// The user id of an agent or supervisor.
    pub user_id: Option<i64>,
    /// The name shown.
    pub display_name: String,
    /// Joined, unix ms.
    pub joined_at: Option<i64>,
    /// Left, unix ms.
    pub left_at: Option<i64>,
}

/// One message row of an archived conversation: its body is sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// Sequence number (unique within the conversation).
    pub seq: i64,
    /// `visitor`, `agent` or `system`.
    pub author: String,
    /// The user id of an agent author.
    pub author_user_id: Option<i64>,
    /// Sent, unix ms.
    pub sent_at: i64,
    /// The sealed body.
    pub body: Vec<u8>,
    /// `chat`, `call_text` or `call_file`.
    pub kind: String,
}

impl fmt::Debug for MessageRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageRow")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// An archived conversation as stored: sealed bodies, its data key wrapped, the visitor as a digest.
#[derive(Clone, PartialEq, Eq)]
pub struct ArchivedConversationRow {
    /// The conversation id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// The site key the visitor came through.
    pub site_key_id: String,
    /// Digest of the visitor id.
    pub visitor_digest: Vec<u8>,
    /// Start, unix ms.
    pub started_at: i64,
    /// End, unix ms.
    pub ended_at: i64,
    /// The id of the master key that wraps `wrapped_key`.
    pub master_key_id: String,
    /// The conversation's data key, wrapped.
    pub wrapped_key: Vec<u8>,
    /// When it was archived, unix ms.
    pub archived_at: i64,
    /// Participants in order.
    pub participants: Vec<ParticipantRow>,
    /// Messages by sequence number.
    pub messages: Vec<MessageRow>,
}

impl fmt::Debug for ArchivedConversationRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchivedConversationRow")
            .field("id", &self.id)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

/// Which archived conversations a purge erases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeFilter {
    /// Those that ended before this time (unix ms).
    EndedBefore(i64),
    /// Those of the visitor with this digest.
    Visitor(Vec<u8>),
}

/// What a purge erased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeOutcome {
    /// Conversations erased.
    pub conversations: usize,
    /// The files of their recordings, whose rows (and keys) were erased: remove them now.
    pub recording_files: Vec<String>,
}

/// What a wrapped data key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOwner {
    /// An archived conversation.
    Archived,
    /// A live conversation at rest (id in decimal).
    Live,
    /// A recording.
    Recording,
}

/// A wrapped data key, for a rotation of the master key.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKeyRow {
    /// What it belongs to.
    pub owner: KeyOwner,
    /// The owner's id (the key is bound to it).
    pub id: String,
    /// The wrapped key.
    pub wrapped_key: Vec<u8>,
}

impl fmt::Debug for WrappedKeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKeyRow")
            .field("owner", &self.owner)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The archive's rows and its master key record.
pub trait ArchiveStore {
    /// The id of the master key that wraps new data keys, as recorded; `None` in a fresh store.
    fn master_key_id(&self) -> StoreResult<Option<String>>;
    /// Records the id of the current master key.
    fn set_master_key_id(&self, key_id: &str) -> StoreResult<()>;
    /// Number of archived conversations whose key is wrapped under `key_id`.
    fn archived_under_key(&self, key_id: &str) -> StoreResult<u64>;
    /// Stores an archived conversation and deletes its live copy (a live conversation whose decimal id is
    /// `row.id`), in one transaction: a conversation is live or archived, never both, never neither.
    /// [`StoreError::Duplicate`] if the id is archived already; [`StoreError::MasterKeyChanged`] if the
    /// recorded master key id is set and is not `row.master_key_id`. Nothing is written then.
    fn insert_archived(&self, row: &ArchivedConversationRow) -> StoreResult<()>;
    /// The group of an archived conversation, `None` if unknown.
    fn archived_group(&self, id: &str) -> StoreResult<Option<String>>;
    /// An archived conversation with its participants and messages, `None` if unknown.
    fn read_archived(&self, id: &str) -> StoreResult<Option<ArchivedConversationRow>>;
    /// Erases the conversations matching `filter` with their rows and their recordings' rows, overwriting
    /// what the backend can (SQLite: `secure_delete` and a WAL checkpoint), and writes `audit` with
    /// [`purge_detail`] appended to its detail, in the same transaction.
    fn purge_archived(&self, filter: &PurgeFilter, audit: AuditEvent) -> StoreResult<PurgeOutcome>;
    /// Every data key (archived, live, recordings) not wrapped under `key_id`.
    fn keys_not_under(&self, key_id: &str) -> StoreResult<Vec<WrappedKeyRow>>;
    /// Replaces the wrapped keys `rows` (now wrapped under `key_id`), records `key_id` as the current
    /// master key and writes `audit`, in one transaction. [`StoreError::MasterKeyChanged`] (nothing
    /// written) if some key would then still be wrapped under another master key: one was added
    /// meanwhile; read them again.
    fn replace_wrapped_keys(&self, key_id: &str, rows: &[WrappedKeyRow], audit: AuditEvent) -> StoreResult<()>;
}

/// The audit detail a purge appends: how many conversations and recordings it erased.
pub fn purge_detail(audit: &mut AuditEvent, conversations: usize, recordings: usize) {
    let what = format!("{conversations} conversations erased ({recordings} recordings)");
    audit.detail = Some(match audit.detail.take() {
        Some(d) => format!("{d}; {what}"),
        None => what,
    });
}

/// A live conversation to create at rest: its data key already wrapped.
#[derive(Clone, Copy)]
pub struct LiveCreate<'a> {
    /// The conversation id.
    pub id: u64,
    /// Its group.
    pub group: &'a str,
    /// The site key.
    pub site_key: &'a str,
    /// The visitor's origin.
    pub origin: &'a str,
    /// Start, unix ms.
    pub started_at_ms: u64,
    /// Hash of the resume token.
    pub resume_hash: &'a [u8; 32],
    /// Hash of the files token.
    pub files_hash: &'a [u8; 32],
    /// The master key that wraps `wrapped_key`.
    pub master_key_id: &'a str,
    /// The data key, wrapped.
    pub wrapped_key: &'a [u8],
    /// The sealed state.
    pub state: &'a [u8],
}

/// One change to the live conversations at rest (see [`crate::live_store::LiveWrite`], which the archive
/// turns into these after wrapping keys).
#[derive(Clone, Copy)]
pub enum LiveChange<'a> {
    /// A visitor joined.
    Create(LiveCreate<'a>),
    /// New token hashes.
    Tokens {
        /// The conversation.
        id: u64,
        /// Hash of the resume token.
        resume_hash: &'a [u8; 32],
        /// Hash of the files token.
        files_hash: &'a [u8; 32],
    },
    /// New group or agent.
    Routing {
        /// The conversation.
        id: u64,
        /// Its group.
        group: &'a str,
        /// Its agent.
        agent: Option<i64>,
    },
    /// New sealed state.
    State {
        /// The conversation.
        id: u64,
        /// The sealed state.
        state: &'a [u8],
    },
    /// A message, new or replacing the one of that sequence number.
    Message {
        /// The conversation.
        id: u64,
        /// Its sequence number.
        seq: u64,
        /// The sealed message.
        body: &'a [u8],
    },
    /// A file's sealed key (replacing one of that id).
    File {
        /// The conversation.
        id: u64,
        /// The file id.
        file_id: &'a str,
        /// The sealed key.
        sealed_key: &'a [u8],
    },
    /// The conversation ended.
    Ended {
        /// The conversation.
        id: u64,
        /// End, unix ms.
        at_ms: u64,
        /// The reason.
        reason: &'a str,
    },
}

/// A live conversation at rest as read back.
#[derive(Clone, PartialEq, Eq)]
pub struct LiveConversationRow {
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
    /// Its agent.
    pub agent: Option<i64>,
    /// Hash of the resume token (zeros if the stored one is malformed).
    pub resume_hash: [u8; 32],
    /// Hash of the files token.
    pub files_hash: [u8; 32],
    /// Its data key, wrapped.
    pub wrapped_key: Vec<u8>,
    /// The sealed state.
    pub state: Vec<u8>,
    /// End (unix ms) and reason.
    pub ended: Option<(u64, String)>,
    /// Sealed messages by sequence number.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Sealed file keys by file id.
    pub files: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for LiveConversationRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveConversationRow")
            .field("id", &self.id)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

/// Live conversations at rest (what survives a crash of the server).
pub trait LiveStore {
    /// Applies `changes` in order, in one transaction (all or nothing). An update of an unknown
    /// conversation changes nothing; a message or file of one fails the batch, and a [`LiveChange::Create`] whose key is not wrapped under the recorded
    /// master key fails it with [`StoreError::MasterKeyChanged`].
    fn live_apply(&self, changes: &[LiveChange<'_>]) -> StoreResult<()>;
    /// Every live conversation at rest, by id, after dropping those already archived.
    fn live_load(&self) -> StoreResult<Vec<LiveConversationRow>>;
    /// Number of live conversations at rest.
    fn live_count(&self) -> StoreResult<u64>;
    /// Whether `id` is live at rest.
    fn live_exists(&self, id: u64) -> StoreResult<bool>;
}

/// A recording row to insert.
#[derive(Clone, PartialEq, Eq)]
pub struct NewRecordingRow {
    /// `{conversation}-{n}`.
    pub id: String,
    /// The conversation.
    pub conversation_id: String,
    /// The file name (in the recordings directory).
    pub file: String,
    /// Start, unix ms.
    pub started_at: i64,
    /// The master key that wraps `wrapped_key`.
    pub master_key_id: String,
    /// The recording's data key, wrapped.
    pub wrapped_key: Vec<u8>,
}

/// A stored recording with its file and wrapped key.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordingRow {
    /// As listed.
    pub info: RecordingInfo,
    /// The file name.
    pub file: String,
    /// The data key, wrapped.
    pub wrapped_key: Vec<u8>,
}

/// Recording rows (the files are written beside the database, see [`Storage::data_dir`]).
pub trait RecordingStore {
    /// Number of recordings of `conversation`.
    fn recording_count(&self, conversation: &str) -> StoreResult<u64>;
    /// Inserts a recording in state `recording` and writes `audit`, in one transaction.
    /// [`StoreError::Duplicate`] if the id exists; [`StoreError::MasterKeyChanged`] as
    /// [`ArchiveStore::insert_archived`].
    fn insert_recording(&self, row: &NewRecordingRow, audit: &AuditEvent) -> StoreResult<()>;
    /// Marks a recording complete with `chunks` chunks and writes `audit`, in one transaction.
    fn finish_recording(&self, id: &str, chunks: u32, ended_at_ms: i64, audit: &AuditEvent) -> StoreResult<()>;
    /// Marks every recording still `recording` as `interrupted`; returns how many.
    fn mark_recordings_interrupted(&self) -> StoreResult<usize>;
    /// The recordings of a conversation, oldest first.
    fn list_recordings(&self, conversation: &str) -> StoreResult<Vec<RecordingInfo>>;
    /// A recording of `conversation` (`which`: its id; `None`: the latest), `None` if there is none.
    fn recording(&self, conversation: &str, which: Option<&str>) -> StoreResult<Option<RecordingRow>>;
}

/// A whole backend: every concern, shareable between threads.
pub trait Storage:
    AccountStore
    + SiteKeyStore
    + SessionStore
    + AuditStore
    + ArchiveStore
    + LiveStore
    + RecordingStore
    + Send
    + Sync
    + fmt::Debug
{
    /// The local directory for the files kept beside the database (sealed recordings), `None` if there is
    /// none (an in-memory database).
    fn data_dir(&self) -> Option<PathBuf>;

    /// Claims the store for this server process, where several processes could reach it: a PostgreSQL
    /// database serves one running node at a time until clustering lands (two nodes would each restore
    /// and drive the same live conversations). Held until the store is dropped. SQLite's file is one
    /// node's by construction: nothing to claim.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if another node holds the store.
    fn claim_node(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The traits, to call their methods on a concrete backend (`use relaydesk_signalling::store::prelude::*`).
pub mod prelude {
    pub use super::{
        AccountStore, ArchiveStore, AuditStore, LiveStore, RecordingStore, SessionStore, SiteKeyStore, Storage,
    };
}
