//! The SQLite backend: one connection to `<data-dir>/relaydesk.db` (WAL, foreign keys, busy timeout,
//! `synchronous = FULL`) behind a mutex, so calls serialise; versioned migrations ([`MIGRATIONS`],
//! `PRAGMA user_version` counts those applied). rusqlite stays inside this module: its errors become
//! [`StoreError::Backend`], [`StoreError::Unavailable`] (busy, locked) or [`StoreError::Conflict`]
//! (a constraint).

mod accounts;
mod archive;
mod live;
mod migrations;
mod recordings;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

pub use migrations::MIGRATIONS;

use super::{AuditEvent, Storage, StoreError, bounded_audit, create_data_dir};
use crate::time::unix_now;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "relaydesk.db";

/// An error inside this backend: SQLite's, or the store's own (validation, not found...).
#[derive(Debug)]
enum SqlError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> Self {
        SqlError::Sqlite(e)
    }
}

impl From<StoreError> for SqlError {
    fn from(e: StoreError) -> Self {
        SqlError::Store(e)
    }
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Store(e) => e,
            SqlError::Sqlite(e) => match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    StoreError::Unavailable(e.to_string())
                }
                Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
                _ => StoreError::Backend(e.to_string()),
            },
        }
    }
}

/// Results inside this backend.
type R<T> = Result<T, SqlError>;

/// True for a UNIQUE or PRIMARY KEY violation.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// A non-negative integer as SQLite stores it (saturating).
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The SQLite store: one connection behind a mutex.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (creating if needed) the database in `data_dir` and runs pending migrations.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        create_data_dir(data_dir)?;
        let conn = Connection::open(data_dir.join(DB_FILE)).map_err(SqlError::from)?;
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
        let conn = Connection::open(data_dir.join(DB_FILE)).map_err(SqlError::from)?;
        let db = Self::init(conn, version)?;
        if db.schema_version()? != version as i64 {
            return Err(StoreError::Invalid(format!(
                "the database is already past schema version {version}"
            )));
        }
        Ok(db)
    }

    /// An in-memory database (for tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(SqlError::from)?, MIGRATIONS.len())
    }

    /// Sets the connection up and migrates it to `target` (at most `MIGRATIONS.len()`).
    fn init(mut conn: Connection, target: usize) -> Result<Self, StoreError> {
        let setup = |conn: &mut Connection| -> R<()> {
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "foreign_keys", true)?;
            // In-memory databases answer "memory"; a file answers "wal".
            let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            // FULL: in WAL mode every commit fsyncs the WAL, so a committed transaction (an acknowledged chat
            // message, see crate::live_store) survives a power loss, not only a crash of the process (NORMAL
            // would sync only at checkpoints). Cost per commit: docs/PERFORMANCE.md, "Durable chat".
            conn.pragma_update(None, "synchronous", "FULL")?;
            migrate(conn, target)
        };
        setup(&mut conn)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    /// The connection. A panic while it was held left SQLite consistent (the transaction rolled back on
    /// drop), so a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the connection, turning SQLite's errors into the store's.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> R<T>) -> Result<T, StoreError> {
        Ok(f(&mut self.lock())?)
    }

    /// Sets SQLite's `synchronous` mode (`true`: FULL, the default; `false`: NORMAL). For the benchmark
    /// that measures what FULL costs (`benches/durable_chat.rs`); the server always runs FULL.
    ///
    /// # Errors
    /// Database errors.
    #[doc(hidden)]
    pub fn set_synchronous_full(&self, full: bool) -> Result<(), StoreError> {
        self.with(|c| Ok(c.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?))
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.with(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
    }
}

impl Storage for Db {
    fn data_dir(&self) -> Option<PathBuf> {
        let conn = self.lock();
        let path = conn.path().filter(|p| !p.is_empty())?;
        Path::new(path).parent().map(Path::to_path_buf)
    }
}

/// Writes an audit record (bounded) on `conn`, inside the caller's transaction if any.
fn write_audit(conn: &Connection, e: &AuditEvent) -> R<()> {
    let e = bounded_audit(e);
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, target, client_addr, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![unix_now(), e.actor, e.action, e.target, e.client_addr, e.detail],
    )?;
    Ok(())
}

/// The recorded master key id (`archive_meta`).
fn meta_key_id(conn: &Connection) -> R<Option<String>> {
    Ok(conn
        .query_row("SELECT master_key_id FROM archive_meta WHERE id = 1", [], |r| r.get(0))
        .optional()?)
}

/// Fails with [`StoreError::MasterKeyChanged`] unless the recorded master key id is unset or `key_id`.
fn check_key_id(conn: &Connection, key_id: &str) -> R<()> {
    match meta_key_id(conn)? {
        Some(current) if current != key_id => Err(StoreError::MasterKeyChanged.into()),
        _ => Ok(()),
    }
}

/// Applies the pending migrations up to `target`; refuses a database newer than [`MIGRATIONS`].
fn migrate(conn: &mut Connection, target: usize) -> R<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 0 || version as usize > MIGRATIONS.len() {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known: MIGRATIONS.len(),
        }
        .into());
    }
    for (i, step) in MIGRATIONS.iter().enumerate().take(target).skip(version as usize) {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
impl Db {
    /// Number of rows of `table` (tests check what the schema's cascades removed).
    pub(crate) fn count_rows(&self, table: &str) -> i64 {
        self.lock()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap_or(-1)
    }
}
