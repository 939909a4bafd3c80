//! The store: accounts, groups, site keys, login sessions, the audit log, archive rows, live conversations at
//! rest and recording rows, behind the traits of [`traits`] with neutral errors ([`StoreError`]).
//!
//! # Backends
//! - [`sqlite`]: SQLite in `<data-dir>/relaydesk.db` (WAL, foreign keys, `synchronous = FULL`), with
//!   versioned migrations ([`MIGRATIONS`]). [`Db`] is that backend.
//! - [`postgres`]: PostgreSQL through a connection pool, for several nodes sharing one database
//!   (serialisable writes retried on conflict, migrations under an advisory lock).
//!
//! [`open`] picks the backend from the configuration's `[database] url` (none: SQLite in the data
//! directory), for the server and the offline CLI alike.
//!
//! # Blocking traits, async wrapper
//! The traits are synchronous: every method takes `&self`, runs its own transaction and returns when it
//! is committed. [`Store`] is the async API the server uses: it holds any backend as
//! `Arc<dyn Storage>` and runs each call on a blocking thread ([`Store::call`]), so the database never
//! blocks the async runtime. This choice, rather than async traits, keeps one shape for every backend:
//! SQLite is a synchronous library (it would run on a blocking thread anyway) and serialises on its
//! connection's mutex; a networked database (PostgreSQL) implements the same methods with a synchronous
//! client over a connection pool, one pooled connection per call, so calls run in parallel up to the
//! pool's size. The offline CLI and the tests call the same methods without a runtime. The traits stay
//! object-safe (no generic methods, no `async fn`), so the server picks its backend at start.
//!
//! # Contract every backend keeps
//! Every query is parameterised; names are validated and bounded here (`validate_name` and friends),
//! whichever path the data came from. The operations are deliberately coarse (create a user with its groups
//! and its audit record, revoke a key, apply a batch of live writes...), each one transaction, so that
//! another backend implements the same list without exposing transactions. Rows of the archive, of live
//! conversations and of recordings are opaque to the store: sealed bodies and wrapped keys; the crypto and
//! the policy (sealing, key wrapping, retention, rotation) stay in [`crate::archive`]. The shared test suite
//! (`store/suite.rs`) runs against each backend.

mod open;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;
pub mod traits;
mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use open::{DatabaseConfig, open, redact_url};
pub use sqlite::{DB_FILE, Db, MIGRATIONS};
pub use traits::prelude;
pub use traits::*;
pub use types::*;

/// Longest username or group name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
pub use crate::domain::MAX_DISPLAY_CHARS;
/// Most allowed origins per site key.
pub const MAX_ORIGINS: usize = 32;
/// Most groups per user.
pub const MAX_GROUPS_PER_USER: usize = 64;
/// Longest audit text field, in characters (usernames as typed are truncated to this).
pub const MAX_AUDIT_CHARS: usize = 128;

/// Store errors. Neutral: no backend's error type appears here; a backend's own error becomes
/// [`StoreError::Backend`] or [`StoreError::Unavailable`] with its message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed (the backend's message).
    #[error("database error: {0}")]
    Backend(String),
    /// The database is busy or unreachable for now (locked by another process, pool exhausted, connection
    /// lost): retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A write conflicts with what is stored (a constraint of the schema).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The master key id recorded in the store is not the one the caller wrapped its key under (a rotation
    /// happened meanwhile): nothing was written; reload the keys and try again.
    #[error("the archive's master key changed; nothing was written")]
    MasterKeyChanged,
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

/// The first `max` characters of `s`.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A username or group name: 1 to [`MAX_NAME_CHARS`] characters, no spaces or control characters.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<(), StoreError> {
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

/// A display name or label: at most [`MAX_DISPLAY_CHARS`] characters, no control characters.
pub(crate) fn validate_text(what: &str, text: &str) -> Result<(), StoreError> {
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

/// A user's capacity: 1 to 100 conversations.
pub(crate) fn validate_capacity(n: u32) -> Result<(), StoreError> {
    if (1..=100).contains(&n) {
        Ok(())
    } else {
        Err(StoreError::Invalid("max_conversations must be from 1 to 100".into()))
    }
}

/// Checks a new user's fields; returns the display name to store (the username when empty).
pub(crate) fn check_new_user(new: &NewUser) -> Result<String, StoreError> {
    validate_name("username", &new.username)?;
    validate_text("display_name", &new.display_name)?;
    validate_capacity(new.max_conversations)?;
    Ok(if new.display_name.is_empty() {
        new.username.clone()
    } else {
        new.display_name.clone()
    })
}

/// Checks the fields a user update sets.
pub(crate) fn check_user_update(update: &UserUpdate) -> Result<(), StoreError> {
    if let Some(d) = &update.display_name {
        validate_text("display_name", d)?;
    }
    if let Some(n) = update.max_conversations {
        validate_capacity(n)?;
    }
    Ok(())
}

/// A name already taken (`name` bounded to `max` characters).
pub(crate) fn duplicate(what: &'static str, name: &str, max: usize) -> StoreError {
    StoreError::Duplicate {
        what,
        name: bounded(name, max),
    }
}

/// Allowed origins of a new site key: 1 to [`MAX_ORIGINS`], sorted and without duplicates.
pub(crate) fn normalise_origins(origins: &[String]) -> Result<Vec<String>, StoreError> {
    if origins.is_empty() || origins.len() > MAX_ORIGINS {
        return Err(StoreError::Invalid(format!(
            "a site key needs 1 to {MAX_ORIGINS} allowed origins"
        )));
    }
    let mut origins = origins.to_vec();
    origins.sort();
    origins.dedup();
    Ok(origins)
}

/// An audit event's fields bounded to [`MAX_AUDIT_CHARS`], as every backend stores them.
pub(crate) fn bounded_audit(e: &AuditEvent) -> AuditEvent {
    let b = |s: &Option<String>| s.as_deref().map(|s| bounded(s, MAX_AUDIT_CHARS));
    AuditEvent {
        actor: b(&e.actor),
        action: bounded(&e.action, MAX_AUDIT_CHARS),
        target: b(&e.target),
        client_addr: b(&e.client_addr),
        detail: b(&e.detail),
    }
}

/// The group named `name` (case-insensitive) among `groups`.
pub(crate) fn find_group(groups: Vec<Group>, name: &str) -> Result<Group, StoreError> {
    groups
        .into_iter()
        .find(|g| g.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| StoreError::NotFound {
            what: "group",
            name: bounded(name, MAX_NAME_CHARS),
        })
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

/// The async store used by the server: a backend shared between tasks, each call on a blocking thread.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Storage>,
}

impl Store {
    /// Wraps an open backend (a [`Db`] for SQLite).
    pub fn new(backend: impl Storage + 'static) -> Self {
        Self {
            backend: Arc::new(backend),
        }
    }

    /// Wraps a shared backend.
    pub fn from_arc(backend: Arc<dyn Storage>) -> Self {
        Self { backend }
    }

    /// Runs `f` with the backend on a blocking thread.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&dyn Storage) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let backend = Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || f(backend.as_ref()))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}
