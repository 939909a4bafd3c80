//! The embedded store: SQLite in `<data-dir>/relaydesk.db` (WAL, foreign keys, busy timeout), with
//! versioned migrations (`PRAGMA user_version` indexes [`MIGRATIONS`]).
//!
//! [`Db`] is the synchronous API (one connection); the offline CLI uses it directly. [`Store`] is the
//! async API the server uses: the same operations, each run on a blocking thread so SQLite never blocks
//! the async runtime. Every query is parameterised; names are validated and bounded here, whichever path
//! the data came from. The operations are deliberately coarse (create a user with its groups, revoke a
//! key, ...) so that another backend (PostgreSQL for several nodes) can implement the same list.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "relaydesk.db";
/// Longest username or group name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
pub use crate::domain::MAX_DISPLAY_CHARS;
/// Most allowed origins per site key.
pub const MAX_ORIGINS: usize = 32;
/// Most groups per user.
pub const MAX_GROUPS_PER_USER: usize = 64;
/// Longest audit text field, in characters (usernames as typed are truncated to this).
pub const MAX_AUDIT_CHARS: usize = 128;

/// Schema migrations, applied in order; `PRAGMA user_version` holds how many have run.
/// Append new steps; never edit a released one.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts, sessions, site keys, audit log.
    "CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('agent', 'supervisor', 'admin')),
        password_hash TEXT NOT NULL,
        max_conversations INTEGER NOT NULL DEFAULT 4,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE user_groups (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        PRIMARY KEY (user_id, group_id)
    );
    CREATE INDEX user_groups_group ON user_groups(group_id);
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE site_keys (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        allowed_origins TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT,
        action TEXT NOT NULL,
        target TEXT,
        client_addr TEXT,
        detail TEXT
    );",
    // 2: the encrypted transcript archive (see crate::archive). Bodies are sealed; the visitor id is a digest.
    "CREATE TABLE archive_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        master_key_id TEXT NOT NULL
    );
    CREATE TABLE archive_conversations (
        id TEXT PRIMARY KEY,
        group_name TEXT NOT NULL,
        site_key_id TEXT NOT NULL,
        visitor_digest BLOB NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER NOT NULL,
        master_key_id TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        archived_at INTEGER NOT NULL
    );
    CREATE INDEX archive_conversations_ended ON archive_conversations(ended_at);
    CREATE INDEX archive_conversations_visitor ON archive_conversations(visitor_digest);
    CREATE INDEX archive_conversations_key ON archive_conversations(master_key_id);
    CREATE TABLE archive_participants (
        conversation_id TEXT NOT NULL REFERENCES archive_conversations(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('visitor', 'agent', 'supervisor')),
        user_id INTEGER,
        display_name TEXT NOT NULL,
        joined_at INTEGER,
        left_at INTEGER,
        PRIMARY KEY (conversation_id, position)
    ) WITHOUT ROWID;
    CREATE TABLE archive_messages (
        conversation_id TEXT NOT NULL REFERENCES archive_conversations(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        author TEXT NOT NULL CHECK (author IN ('visitor', 'agent', 'system')),
        author_user_id INTEGER,
        sent_at INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;",
    // 3: live conversations at rest, so that an acknowledged message survives a crash (see
    // crate::live_store). Like the archive: a data key per conversation wrapped under the master key, every
    // message (and the visitor id, in `state`) sealed with it; token columns hold SHA-256 hashes only.
    "CREATE TABLE live_conversations (
        id INTEGER PRIMARY KEY,
        group_name TEXT NOT NULL,
        site_key_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        agent_id INTEGER,
        resume_hash BLOB NOT NULL,
        files_hash BLOB NOT NULL,
        master_key_id TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        state BLOB NOT NULL,
        ended_at INTEGER,
        ended_reason TEXT
    );
    CREATE INDEX live_conversations_key ON live_conversations(master_key_id);
    CREATE TABLE live_messages (
        conversation_id INTEGER NOT NULL REFERENCES live_conversations(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE live_files (
        conversation_id INTEGER NOT NULL REFERENCES live_conversations(id) ON DELETE CASCADE,
        file_id TEXT NOT NULL,
        sealed_key BLOB NOT NULL,
        PRIMARY KEY (conversation_id, file_id)
    ) WITHOUT ROWID;",
    // 4: the kind of an archived transcript entry: chat, or what passed over a call's data channels (in-call
    // text, in-call files; crate::archive::MessageKind). Existing rows are chat.
    "ALTER TABLE archive_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'chat'
        CHECK (kind IN ('chat', 'call_text', 'call_file'));",
    // 5: call recording (see crate::recording): each group's policy, and one row per recording file. The
    // file holds sealed chunks only; its data key is wrapped under the master key here, as the archive's.
    "ALTER TABLE groups ADD COLUMN recording TEXT NOT NULL DEFAULT 'off'
        CHECK (recording IN ('off', 'always', 'on_request'));
    CREATE TABLE recordings (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL,
        file TEXT NOT NULL UNIQUE,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        state TEXT NOT NULL CHECK (state IN ('recording', 'complete', 'interrupted')),
        chunks INTEGER NOT NULL DEFAULT 0,
        master_key_id TEXT NOT NULL,
        wrapped_key BLOB NOT NULL
    );
    CREATE INDEX recordings_conversation ON recordings(conversation_id);
    CREATE INDEX recordings_key ON recordings(master_key_id);",
];

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be created or read.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database was written by a newer RelayDesk.
    #[error("database schema version {found} is newer than this program knows ({known})")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this program knows.
        known: usize,
    },
    /// A named thing does not exist.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// Kind of thing (user, group, site key).
        what: &'static str,
        /// The name asked for (bounded).
        name: String,
    },
    /// A name is already taken.
    #[error("{what} {name:?} already exists")]
    Duplicate {
        /// Kind of thing.
        what: &'static str,
        /// The name (bounded).
        name: String,
    },
    /// Input failed validation.
    #[error("{0}")]
    Invalid(String),
    /// The change would leave no enabled admin.
    #[error("the last enabled admin cannot be disabled or demoted")]
    LastAdmin,
    /// The thing is still referenced (e.g. a group with site keys).
    #[error("{0}")]
    InUse(String),
    /// A blocking task failed to complete.
    #[error("store task failed: {0}")]
    Task(String),
}

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

use crate::time::unix_now;

fn bounded(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn validate_name(what: &str, name: &str) -> Result<(), StoreError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(StoreError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(StoreError::Invalid(format!(
            "{what} must not contain spaces or control characters"
        )));
    }
    Ok(())
}

fn validate_text(what: &str, text: &str) -> Result<(), StoreError> {
    if text.chars().count() > MAX_DISPLAY_CHARS {
        return Err(StoreError::Invalid(format!(
            "{what} must be at most {MAX_DISPLAY_CHARS} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

fn validate_capacity(n: u32) -> Result<(), StoreError> {
    if (1..=100).contains(&n) {
        Ok(())
    } else {
        Err(StoreError::Invalid("max_conversations must be from 1 to 100".into()))
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// The synchronous store: one SQLite connection.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
}

impl Db {
    /// Opens (creating if needed) the database in `data_dir` and runs pending migrations.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        create_data_dir(data_dir)?;
        let conn = Connection::open(data_dir.join(DB_FILE))?;
        Self::init(conn, MIGRATIONS.len())
    }

    /// Opens (creating if needed) the database in `data_dir` and runs the migrations only up to
    /// `version`: a database as the release of that schema version wrote it. For writing the schema
    /// fixtures of `tests/fixtures/schema/` (see its README); the server and the CLI use [`Db::open`].
    ///
    /// # Errors
    /// As [`Db::open`]; [`StoreError::Invalid`] if `version` is 0 or beyond [`MIGRATIONS`], or if the
    /// database is already past `version`.
    #[doc(hidden)]
    pub fn open_at_version(data_dir: &Path, version: usize) -> Result<Self, StoreError> {
        if version == 0 || version > MIGRATIONS.len() {
            return Err(StoreError::Invalid(format!(
                "schema version {version} is not between 1 and {}",
                MIGRATIONS.len()
            )));
        }
        create_data_dir(data_dir)?;
        let db = Self::init(Connection::open(data_dir.join(DB_FILE))?, version)?;
        if db.schema_version()? != version as i64 {
            return Err(StoreError::Invalid(format!(
                "the database is already past schema version {version}"
            )));
        }
        Ok(db)
    }

    /// An in-memory database (for tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?, MIGRATIONS.len())
    }

    /// Sets the connection up and migrates it to `target` (at most `MIGRATIONS.len()`).
    fn init(mut conn: Connection, target: usize) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // In-memory databases answer "memory"; a file answers "wal".
        let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        // FULL: in WAL mode every commit fsyncs the WAL, so a committed transaction (an acknowledged chat
        // message, see crate::live_store) survives a power loss, not only a crash of the process (NORMAL
        // would sync only at checkpoints). Cost per commit: docs/PERFORMANCE.md, "Durable chat".
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate(&mut conn, target)?;
        Ok(Self { conn })
    }

    /// The data directory the database file lives in (`None` for an in-memory database).
    pub fn data_dir(&self) -> Option<PathBuf> {
        let path = self.conn.path().filter(|p| !p.is_empty())?;
        Path::new(path).parent().map(Path::to_path_buf)
    }

    /// The connection, for modules of this crate that keep their own tables (the archive).
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Sets SQLite's `synchronous` mode (`true`: FULL, the default; `false`: NORMAL). For the benchmark
    /// that measures what FULL costs (`benches/durable_chat.rs`); the server always runs FULL.
    ///
    /// # Errors
    /// Database errors.
    #[doc(hidden)]
    pub fn set_synchronous_full(&mut self, full: bool) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
        Ok(())
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn group_id(tx: &Connection, name: &str) -> Result<i64, StoreError> {
        tx.query_row("SELECT id FROM groups WHERE name = ?1", params![name], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "group",
                name: bounded(name, MAX_NAME_CHARS),
            })
    }

    fn set_groups(tx: &Connection, user_id: i64, groups: &[String]) -> Result<(), StoreError> {
        if groups.len() > MAX_GROUPS_PER_USER {
            return Err(StoreError::Invalid(format!(
                "a user can be in at most {MAX_GROUPS_PER_USER} groups"
            )));
        }
        let ids = groups
            .iter()
            .map(|g| Self::group_id(tx, g))
            .collect::<Result<Vec<_>, _>>()?;
        tx.execute("DELETE FROM user_groups WHERE user_id = ?1", params![user_id])?;
        for gid in ids {
            tx.execute(
                "INSERT OR IGNORE INTO user_groups (user_id, group_id) VALUES (?1, ?2)",
                params![user_id, gid],
            )?;
        }
        Ok(())
    }

    fn load_user(
        conn: &Connection,
        where_sql: &str,
        arg: &dyn rusqlite::ToSql,
    ) -> Result<Option<Credentials>, StoreError> {
        let sql = format!(
            "SELECT id, username, display_name, role, max_conversations, disabled, created_at, password_hash \
             FROM users WHERE {where_sql}"
        );
        let row = conn
            .query_row(&sql, [arg], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, bool>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, String>(7)?,
                ))
            })
            .optional()?;
        let Some((id, username, display_name, role, max_conversations, disabled, created_at, password_hash)) = row
        else {
            return Ok(None);
        };
        let groups = Self::user_groups(conn, id)?;
        let user = User {
            id,
            username,
            display_name,
            role: role.parse()?,
            groups,
            max_conversations,
            disabled,
            created_at,
        };
        Ok(Some(Credentials { user, password_hash }))
    }

    fn user_groups(conn: &Connection, user_id: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = conn.prepare_cached(
            "SELECT g.name FROM groups g JOIN user_groups ug ON ug.group_id = g.id WHERE ug.user_id = ?1 ORDER BY g.name",
        )?;
        let names = stmt
            .query_map(params![user_id], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }

    fn enabled_admins(conn: &Connection) -> Result<i64, StoreError> {
        Ok(conn.query_row(
            "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0",
            [],
            |r| r.get(0),
        )?)
    }

    /// True if at least one enabled admin exists.
    pub fn has_admin(&self) -> Result<bool, StoreError> {
        Ok(Self::enabled_admins(&self.conn)? > 0)
    }

    /// True if a user with this name exists (enabled or not).
    pub fn user_exists(&self, username: &str) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM users WHERE username = ?1)",
            params![username],
            |r| r.get(0),
        )?)
    }

    /// Creates a user with its groups, and writes `audit` in the same transaction.
    pub fn create_user(&mut self, new: NewUser, audit: AuditEvent) -> Result<User, StoreError> {
        validate_name("username", &new.username)?;
        validate_text("display_name", &new.display_name)?;
        validate_capacity(new.max_conversations)?;
        let display = if new.display_name.is_empty() {
            new.username.clone()
        } else {
            new.display_name.clone()
        };
        let now = unix_now();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let res = tx.execute(
            "INSERT INTO users (username, display_name, role, password_hash, max_conversations, disabled, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6)",
            params![new.username, display, new.role.as_str(), new.password_hash, new.max_conversations, now],
        );
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Duplicate {
                    what: "user",
                    name: bounded(&new.username, MAX_NAME_CHARS),
                });
            }
            r => r?,
        };
        let id = tx.last_insert_rowid();
        Self::set_groups(&tx, id, &new.groups)?;
        write_audit(&tx, &audit)?;
        let user = Self::load_user(&tx, "id = ?1", &id)?.map(|c| c.user);
        tx.commit()?;
        user.ok_or_else(|| StoreError::Task("user vanished after insert".into()))
    }

    /// Looks a user up by name, with the password hash (for login).
    pub fn credentials(&self, username: &str) -> Result<Option<Credentials>, StoreError> {
        if username.chars().count() > MAX_NAME_CHARS {
            return Ok(None);
        }
        Self::load_user(&self.conn, "username = ?1", &username)
    }

    /// A user by id.
    pub fn user(&self, id: i64) -> Result<User, StoreError> {
        Self::load_user(&self.conn, "id = ?1", &id)?
            .map(|c| c.user)
            .ok_or_else(|| StoreError::NotFound {
                what: "user",
                name: id.to_string(),
            })
    }

    /// A user by name.
    pub fn user_by_name(&self, username: &str) -> Result<User, StoreError> {
        self.credentials(username)?
            .map(|c| c.user)
            .ok_or_else(|| StoreError::NotFound {
                what: "user",
                name: bounded(username, MAX_NAME_CHARS),
            })
    }

    /// All users, by name.
    pub fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let ids: Vec<i64> = {
            let mut stmt = self.conn.prepare("SELECT id FROM users ORDER BY username")?;
            stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        ids.into_iter().map(|id| self.user(id)).collect()
    }

    /// Applies `update` to the user `id`, writes `audit`, and returns the new user. Disabling, demoting or
    /// changing the password ends the user's sessions. Refuses to leave no enabled admin.
    pub fn update_user(&mut self, id: i64, update: UserUpdate, audit: AuditEvent) -> Result<User, StoreError> {
        if let Some(d) = &update.display_name {
            validate_text("display_name", d)?;
        }
        if let Some(n) = update.max_conversations {
            validate_capacity(n)?;
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let before = Self::load_user(&tx, "id = ?1", &id)?
            .map(|c| c.user)
            .ok_or_else(|| StoreError::NotFound {
                what: "user",
                name: id.to_string(),
            })?;
        let now = unix_now();
        if let Some(d) = &update.display_name {
            let d = if d.is_empty() { &before.username } else { d };
            tx.execute(
                "UPDATE users SET display_name = ?1, updated_at = ?2 WHERE id = ?3",
                params![d, now, id],
            )?;
        }
        if let Some(role) = update.role {
            tx.execute(
                "UPDATE users SET role = ?1, updated_at = ?2 WHERE id = ?3",
                params![role.as_str(), now, id],
            )?;
        }
        if let Some(n) = update.max_conversations {
            tx.execute(
                "UPDATE users SET max_conversations = ?1, updated_at = ?2 WHERE id = ?3",
                params![n, now, id],
            )?;
        }
        if let Some(disabled) = update.disabled {
            tx.execute(
                "UPDATE users SET disabled = ?1, updated_at = ?2 WHERE id = ?3",
                params![disabled, now, id],
            )?;
        }
        if let Some(h) = &update.password_hash {
            tx.execute(
                "UPDATE users SET password_hash = ?1, updated_at = ?2 WHERE id = ?3",
                params![h, now, id],
            )?;
        }
        if let Some(groups) = &update.groups {
            Self::set_groups(&tx, id, groups)?;
        }
        if before.role == Role::Admin && !before.disabled && Self::enabled_admins(&tx)? == 0 {
            return Err(StoreError::LastAdmin);
        }
        let ends_sessions = update.disabled == Some(true)
            || update.password_hash.is_some()
            || update.role.is_some_and(|r| r != before.role);
        if ends_sessions {
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", params![id])?;
        }
        write_audit(&tx, &audit)?;
        let after = Self::load_user(&tx, "id = ?1", &id)?.map(|c| c.user);
        tx.commit()?;
        after.ok_or_else(|| StoreError::NotFound {
            what: "user",
            name: id.to_string(),
        })
    }

    /// Creates a group.
    pub fn create_group(&mut self, name: &str, audit: AuditEvent) -> Result<Group, StoreError> {
        self.create_group_with(name, RecordingPolicy::Off, audit)
    }

    /// Creates a group with a recording policy.
    pub fn create_group_with(
        &mut self,
        name: &str,
        recording: RecordingPolicy,
        audit: AuditEvent,
    ) -> Result<Group, StoreError> {
        validate_name("group name", name)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let res = tx.execute(
            "INSERT INTO groups (name, created_at, recording) VALUES (?1, ?2, ?3)",
            params![name, unix_now(), recording.as_str()],
        );
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Duplicate {
                    what: "group",
                    name: bounded(name, MAX_NAME_CHARS),
                });
            }
            r => r?,
        };
        write_audit(&tx, &audit)?;
        tx.commit()?;
        self.group(name)
    }

    /// Changes a group's recording policy (calls already started keep theirs).
    pub fn set_group_recording(
        &mut self,
        name: &str,
        recording: RecordingPolicy,
        audit: AuditEvent,
    ) -> Result<Group, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let gid = Self::group_id(&tx, name)?;
        tx.execute(
            "UPDATE groups SET recording = ?1 WHERE id = ?2",
            params![recording.as_str(), gid],
        )?;
        write_audit(&tx, &audit)?;
        tx.commit()?;
        self.group(name)
    }

    /// A group by name.
    pub fn group(&self, name: &str) -> Result<Group, StoreError> {
        self.list_groups()?
            .into_iter()
            .find(|g| g.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| StoreError::NotFound {
                what: "group",
                name: bounded(name, MAX_NAME_CHARS),
            })
    }

    /// All groups, by name.
    pub fn list_groups(&self) -> Result<Vec<Group>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT g.id, g.name, g.created_at, (SELECT COUNT(*) FROM user_groups ug WHERE ug.group_id = g.id), \
             g.recording FROM groups g ORDER BY g.name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                let recording: String = r.get(4)?;
                Ok(Group {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                    members: r.get(3)?,
                    // The CHECK constraint admits only the three names.
                    recording: recording.parse().unwrap_or_default(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Deletes a group. Refused while site keys (even revoked ones) refer to it; members lose the group.
    pub fn delete_group(&mut self, name: &str, audit: AuditEvent) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let gid = Self::group_id(&tx, name)?;
        let keys: i64 = tx.query_row(
            "SELECT COUNT(*) FROM site_keys WHERE group_id = ?1",
            params![gid],
            |r| r.get(0),
        )?;
        if keys > 0 {
            return Err(StoreError::InUse(format!(
                "group has {keys} site key(s); it cannot be deleted"
            )));
        }
        tx.execute("DELETE FROM groups WHERE id = ?1", params![gid])?;
        write_audit(&tx, &audit)?;
        tx.commit()?;
        Ok(())
    }

    /// Creates a site key for `group` with already-normalised `origins` (see [`crate::origin`]).
    pub fn create_site_key(
        &mut self,
        key: &str,
        group: &str,
        origins: &[String],
        label: &str,
        audit: AuditEvent,
    ) -> Result<SiteKey, StoreError> {
        if origins.is_empty() || origins.len() > MAX_ORIGINS {
            return Err(StoreError::Invalid(format!(
                "a site key needs 1 to {MAX_ORIGINS} allowed origins"
            )));
        }
        validate_text("label", label)?;
        let mut origins = origins.to_vec();
        origins.sort();
        origins.dedup();
        let json = serde_json::to_string(&origins).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let gid = Self::group_id(&tx, group)?;
        tx.execute(
            "INSERT INTO site_keys (key, group_id, allowed_origins, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key, gid, json, label, unix_now()],
        )?;
        write_audit(&tx, &audit)?;
        tx.commit()?;
        self.site_key(key)
    }

    fn key_rows(&self, filter: Option<&str>) -> Result<Vec<SiteKey>, StoreError> {
        let sql = "SELECT k.key, g.name, k.allowed_origins, k.label, k.created_at, k.revoked_at \
                   FROM site_keys k JOIN groups g ON g.id = k.group_id WHERE (?1 IS NULL OR k.key = ?1) ORDER BY k.id";
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt
            .query_map(params![filter], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(key, group, origins, label, created_at, revoked_at)| {
                let origins: Vec<String> =
                    serde_json::from_str(&origins).map_err(|e| StoreError::Invalid(format!("stored origins: {e}")))?;
                Ok(SiteKey {
                    key,
                    group,
                    origins,
                    label,
                    created_at,
                    revoked_at,
                })
            })
            .collect()
    }

    /// A site key (revoked or not).
    pub fn site_key(&self, key: &str) -> Result<SiteKey, StoreError> {
        self.key_rows(Some(key))?.pop().ok_or_else(|| StoreError::NotFound {
            what: "site key",
            name: bounded(key, MAX_NAME_CHARS),
        })
    }

    /// All site keys, oldest first.
    pub fn list_site_keys(&self) -> Result<Vec<SiteKey>, StoreError> {
        self.key_rows(None)
    }

    /// Revokes a site key (idempotent: revoking twice keeps the first time).
    pub fn revoke_site_key(&mut self, key: &str, audit: AuditEvent) -> Result<SiteKey, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE site_keys SET revoked_at = COALESCE(revoked_at, ?1) WHERE key = ?2",
            params![unix_now(), key],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "site key",
                name: bounded(key, MAX_NAME_CHARS),
            });
        }
        write_audit(&tx, &audit)?;
        tx.commit()?;
        self.site_key(key)
    }

    /// Stores a new session for `user_id` under the hash of its token.
    pub fn create_session(&mut self, token_hash: &[u8; 32], user_id: i64, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO sessions (token_hash, user_id, created_at, last_seen) VALUES (?1, ?2, ?3, ?3)",
            params![&token_hash[..], user_id, now],
        )?;
        Ok(())
    }

    /// Resolves a session token hash to its enabled user, refreshing the idle timer. Expired sessions
    /// and sessions of disabled users are deleted and give `None`.
    pub fn touch_session(
        &mut self,
        token_hash: &[u8; 32],
        now: i64,
        limits: SessionLimits,
    ) -> Result<Option<User>, StoreError> {
        let row: Option<(i64, i64, i64, bool)> = self
            .conn
            .query_row(
                "SELECT s.user_id, s.created_at, s.last_seen, u.disabled FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = ?1",
                params![&token_hash[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((user_id, created_at, last_seen, disabled)) = row else {
            return Ok(None);
        };
        let idle = limits.idle.as_secs() as i64;
        let absolute = limits.absolute.as_secs() as i64;
        if disabled || now - last_seen > idle || now - created_at > absolute {
            self.conn
                .execute("DELETE FROM sessions WHERE token_hash = ?1", params![&token_hash[..]])?;
            return Ok(None);
        }
        // Refresh at most every few seconds to spare writes.
        if now - last_seen >= 5 {
            self.conn.execute(
                "UPDATE sessions SET last_seen = ?1 WHERE token_hash = ?2",
                params![now, &token_hash[..]],
            )?;
        }
        Ok(Self::load_user(&self.conn, "id = ?1", &user_id)?.map(|c| c.user))
    }

    /// Deletes a session (logout). Unknown tokens are ignored.
    pub fn delete_session(&mut self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM sessions WHERE token_hash = ?1", params![&token_hash[..]])?;
        Ok(())
    }

    /// Deletes every expired session; returns how many.
    pub fn purge_sessions(&mut self, now: i64, limits: SessionLimits) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM sessions WHERE last_seen < ?1 OR created_at < ?2",
            params![
                now - limits.idle.as_secs() as i64,
                now - limits.absolute.as_secs() as i64
            ],
        )?)
    }

    /// Appends an audit record.
    pub fn audit(&mut self, event: AuditEvent) -> Result<(), StoreError> {
        write_audit(&self.conn, &event)
    }

    /// The newest `limit` audit records, newest first.
    pub fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at, actor, action, target, client_addr, detail FROM audit_log ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map(params![limit], |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    client_addr: r.get(5)?,
                    detail: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

pub(crate) fn write_audit(conn: &Connection, e: &AuditEvent) -> Result<(), StoreError> {
    let b = |s: &Option<String>| s.as_deref().map(|s| bounded(s, MAX_AUDIT_CHARS));
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, target, client_addr, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            unix_now(),
            b(&e.actor),
            bounded(&e.action, MAX_AUDIT_CHARS),
            b(&e.target),
            b(&e.client_addr),
            b(&e.detail)
        ],
    )?;
    Ok(())
}

/// Applies the pending migrations up to `target`; refuses a database newer than [`MIGRATIONS`].
fn migrate(conn: &mut Connection, target: usize) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 0 || version as usize > MIGRATIONS.len() {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().take(target).skip(version as usize) {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    tx.commit()?;
    Ok(())
}

/// Creates the data directory (mode 0700 on Unix) if it does not exist.
pub fn create_data_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io)
}

/// The async store used by the server: a [`Db`] behind a mutex, each call on a blocking thread.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<Mutex<Db>>,
}

impl Store {
    /// Wraps an open database.
    pub fn new(db: Db) -> Self {
        Self {
            db: Arc::new(Mutex::new(db)),
        }
    }

    /// Runs `f` with the database on a blocking thread.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves SQLite consistent (the transaction rolled back on drop).
            let mut guard = db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(action: &str) -> AuditEvent {
        AuditEvent {
            actor: Some("test".into()),
            action: action.into(),
            ..Default::default()
        }
    }

    fn new_user(name: &str, role: Role, groups: &[&str]) -> NewUser {
        NewUser {
            username: name.into(),
            display_name: String::new(),
            role,
            groups: groups.iter().map(|s| s.to_string()).collect(),
            max_conversations: 4,
            password_hash: "$argon2id$x".into(),
        }
    }

    #[test]
    fn open_at_version_stops_at_that_version() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [0, MIGRATIONS.len() + 1] {
            assert!(matches!(
                Db::open_at_version(dir.path(), bad),
                Err(StoreError::Invalid(_))
            ));
        }
        let db = Db::open_at_version(dir.path(), 1).unwrap();
        assert_eq!(db.schema_version().unwrap(), 1);
        let tables: i64 = db
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'archive_meta'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "migration 2 not applied");
        drop(db);
        assert_eq!(
            Db::open(dir.path()).unwrap().schema_version().unwrap(),
            MIGRATIONS.len() as i64
        );
        let err = Db::open_at_version(dir.path(), 1).unwrap_err();
        assert!(err.to_string().contains("already past"), "{err}");
    }

    #[test]
    fn users_groups_keys_and_sessions() {
        let mut db = Db::open_in_memory().unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        db.create_group("sales", audit("group.create")).unwrap();
        assert!(matches!(
            db.create_group("Sales", audit("x")),
            Err(StoreError::Duplicate { .. })
        ));
        let u = db
            .create_user(new_user("o'brien%ü", Role::Agent, &["sales"]), audit("user.create"))
            .unwrap();
        assert_eq!(u.groups, vec!["sales".to_string()]);
        assert_eq!(u.display_name, "o'brien%ü");
        assert!(matches!(
            db.create_user(new_user("O'BRIEN%ü", Role::Agent, &[]), audit("x")),
            Err(StoreError::Duplicate { what: "user", .. })
        ));
        assert!(matches!(
            db.create_user(new_user("x", Role::Agent, &["nope"]), audit("x")),
            Err(StoreError::NotFound { .. })
        ));
        assert!(!db.user_exists("x").unwrap(), "failed creation rolled back");
        assert!(matches!(
            db.create_user(new_user(&"a".repeat(65), Role::Agent, &[]), audit("x")),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            db.create_user(new_user("a b", Role::Agent, &[]), audit("x")),
            Err(StoreError::Invalid(_))
        ));

        let limits = SessionLimits {
            idle: Duration::from_secs(100),
            absolute: Duration::from_secs(1000),
        };
        let h = [7u8; 32];
        db.create_session(&h, u.id, 10).unwrap();
        assert_eq!(db.touch_session(&h, 50, limits).unwrap().map(|u| u.id), Some(u.id));
        assert!(db.touch_session(&h, 200, limits).unwrap().is_none(), "idle expiry");
        assert!(db.touch_session(&h, 60, limits).unwrap().is_none(), "deleted on expiry");
        db.create_session(&h, u.id, 10).unwrap();
        for t in (90..1000).step_by(90) {
            assert!(db.touch_session(&h, t, limits).unwrap().is_some());
        }
        assert!(db.touch_session(&h, 1020, limits).unwrap().is_none(), "absolute expiry");
        db.create_session(&h, u.id, 10).unwrap();
        db.update_user(
            u.id,
            UserUpdate {
                disabled: Some(true),
                ..Default::default()
            },
            audit("user.disable"),
        )
        .unwrap();
        assert!(db.touch_session(&h, 11, limits).unwrap().is_none(), "disabled user");

        let k = db
            .create_site_key(
                "pk_1",
                "sales",
                &["https://b".into(), "https://a".into()],
                "",
                audit("key.create"),
            )
            .unwrap();
        assert_eq!(k.origins, vec!["https://a".to_string(), "https://b".to_string()]);
        assert!(matches!(
            db.delete_group("sales", audit("x")),
            Err(StoreError::InUse(_))
        ));
        let k = db.revoke_site_key("pk_1", audit("key.revoke")).unwrap();
        assert!(k.revoked_at.is_some());
        assert!(matches!(
            db.revoke_site_key("pk_2", audit("x")),
            Err(StoreError::NotFound { .. })
        ));
        assert!(db.recent_audit(100).unwrap().iter().any(|r| r.action == "key.revoke"));
    }

    #[test]
    fn last_admin_is_protected() {
        let mut db = Db::open_in_memory().unwrap();
        let a = db.create_user(new_user("admin", Role::Admin, &[]), audit("x")).unwrap();
        assert!(db.has_admin().unwrap());
        let r = db.update_user(
            a.id,
            UserUpdate {
                disabled: Some(true),
                ..Default::default()
            },
            audit("x"),
        );
        assert!(matches!(r, Err(StoreError::LastAdmin)));
        let r = db.update_user(
            a.id,
            UserUpdate {
                role: Some(Role::Agent),
                ..Default::default()
            },
            audit("x"),
        );
        assert!(matches!(r, Err(StoreError::LastAdmin)));
        assert!(!db.user(a.id).unwrap().disabled, "rolled back");
        db.create_user(new_user("admin2", Role::Admin, &[]), audit("x"))
            .unwrap();
        db.update_user(
            a.id,
            UserUpdate {
                disabled: Some(true),
                ..Default::default()
            },
            audit("x"),
        )
        .unwrap();
    }

    #[test]
    fn reopen_keeps_data_and_is_wal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut db = Db::open(dir.path()).unwrap();
            db.create_group("g", audit("x")).unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.list_groups().unwrap().len(), 1);
        let mode: String = db.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
}
