//! The domain types of the store, shared by every backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StoreError;

pub use crate::domain::Role;

impl std::str::FromStr for Role {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "agent" => Ok(Role::Agent),
            "supervisor" => Ok(Role::Supervisor),
            "admin" => Ok(Role::Admin),
            _ => Err(StoreError::Invalid("role must be agent, supervisor or admin".into())),
        }
    }
}

/// A user as the API and the CLI show it (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// Numeric id.
    pub id: i64,
    /// Login name (unique, case-insensitive).
    pub username: String,
    /// Name shown to others.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Names of the groups the user belongs to, sorted.
    pub groups: Vec<String>,
    /// Most conversations the user handles at once.
    pub max_conversations: u32,
    /// A disabled user cannot log in and their sessions stop working.
    pub disabled: bool,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

/// A group of agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Group {
    /// Numeric id.
    pub id: i64,
    /// Unique name (case-insensitive).
    pub name: String,
    /// Number of members.
    pub members: u32,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Whether the calls of the group's conversations are recorded.
    pub recording: RecordingPolicy,
}

/// Whether a group's calls are recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingPolicy {
    /// Never recorded.
    #[default]
    Off,
    /// Every call is recorded from its start (the agent may pause, e.g. for a payment).
    Always,
    /// Recorded only once the agent starts it.
    OnRequest,
}

impl RecordingPolicy {
    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingPolicy::Off => "off",
            RecordingPolicy::Always => "always",
            RecordingPolicy::OnRequest => "on_request",
        }
    }
}

impl std::fmt::Display for RecordingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RecordingPolicy {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "off" => Ok(RecordingPolicy::Off),
            "always" => Ok(RecordingPolicy::Always),
            "on_request" | "on-request" => Ok(RecordingPolicy::OnRequest),
            _ => Err(StoreError::Invalid(
                "recording must be off, always or on_request".into(),
            )),
        }
    }
}

/// A public site key: it lets a web page of an allowed origin start visitor sessions for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SiteKey {
    /// The key, `pk_` + 32 hex digits. Public: it is embedded in web pages.
    pub key: String,
    /// The group the key routes to.
    pub group: String,
    /// Allowed origins, normalised (`scheme://host[:port]`).
    pub origins: Vec<String>,
    /// Free text for operators.
    pub label: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Revocation time, Unix seconds; a revoked key starts no session.
    pub revoked_at: Option<i64>,
}

/// A new user. `password_hash` is a PHC string from [`crate::password::hash_password`].
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Login name.
    pub username: String,
    /// Display name; empty means the username.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Group names (must exist).
    pub groups: Vec<String>,
    /// Most concurrent conversations.
    pub max_conversations: u32,
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// A partial update of a user; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// New display name.
    pub display_name: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// New group list (replaces the old one).
    pub groups: Option<Vec<String>>,
    /// New capacity.
    pub max_conversations: Option<u32>,
    /// Disable (true) or enable (false). Disabling ends the user's sessions.
    pub disabled: Option<bool>,
    /// New password hash. Ends the user's sessions.
    pub password_hash: Option<String>,
}

/// What the login path needs about a user.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user.
    pub user: User,
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// An audit log record to write. Never put a password or a token in any field.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    /// Who acted: a username, `cli`, or `system`.
    pub actor: Option<String>,
    /// What happened, e.g. `login.success`, `user.create`.
    pub action: String,
    /// What it happened to (username, group, key).
    pub target: Option<String>,
    /// Client IP address for network actions.
    pub client_addr: Option<String>,
    /// Extra non-secret detail.
    pub detail: Option<String>,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Sequence number.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Who acted.
    pub actor: Option<String>,
    /// What happened.
    pub action: String,
    /// What it happened to.
    pub target: Option<String>,
    /// Client address.
    pub client_addr: Option<String>,
    /// Extra detail.
    pub detail: Option<String>,
}

/// Session lifetime rules.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// A session unused this long expires.
    pub idle: Duration,
    /// A session expires this long after login, used or not.
    pub absolute: Duration,
}

/// Where a recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Being written now.
    Recording,
    /// Closed properly: every chunk, the final one included, is on disk.
    Complete,
    /// The server stopped while writing it (crash): it exports up to the last sealed chunk.
    Interrupted,
}

impl RecordingState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recording => "recording",
            Self::Complete => "complete",
            Self::Interrupted => "interrupted",
        }
    }

    /// The state of a stored name (anything unknown reads as interrupted).
    pub fn parse(s: &str) -> Self {
        match s {
            "complete" => Self::Complete,
            "recording" => Self::Recording,
            _ => Self::Interrupted,
        }
    }
}

/// A recording as listed (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RecordingInfo {
    /// `{conversation}-{n}`.
    pub id: String,
    /// The conversation.
    pub conversation_id: String,
    /// Start, unix ms.
    pub started_at: i64,
    /// End, unix ms (none while recording or after a crash).
    pub ended_at: Option<i64>,
    /// Where it stands.
    pub state: RecordingState,
    /// Sealed chunks written (known once complete).
    pub chunks: u32,
}
