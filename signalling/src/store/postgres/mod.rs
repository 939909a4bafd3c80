//! The PostgreSQL backend, for several nodes sharing one database: a pool of synchronous connections
//! (`r2d2` over `postgres`); each call takes a connection for its transaction, so calls run in parallel up
//! to the pool's size. Its own migrations ([`MIGRATIONS`]) run when it connects, under an advisory lock so
//! that nodes starting together apply them once.
//!
//! Transactions run at PostgreSQL's default isolation (read committed). Where SQLite relies on its single
//! writer, this backend locks: the last-admin check of a user update holds a transaction-scoped advisory
//! lock, and a write that wraps a key under the current master key holds the `archive_meta` row shared
//! while a rotation holds it exclusively. Erased rows are deleted, not overwritten: PostgreSQL reclaims
//! them at its next vacuum (SQLite's `secure_delete` has no equivalent here).

mod accounts;
mod archive;
mod live;
mod migrations;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{GenericClient, NoTls};
use r2d2_postgres::PostgresConnectionManager;

pub use migrations::MIGRATIONS;

use super::{AuditEvent, Storage, StoreError, bounded_audit};
use crate::time::unix_now;

/// Connections of the pool unless the caller says otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 8;
/// Advisory lock keys (an arbitrary constant namespace: "RD" and a number).
const LOCK_MIGRATIONS: i64 = 0x5244_0001;
const LOCK_ACCOUNTS: i64 = 0x5244_0002;

/// An error inside this backend.
#[derive(Debug)]
enum PgError {
    Pg(postgres::Error),
    Pool(r2d2::Error),
    Store(StoreError),
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> Self {
        PgError::Pg(e)
    }
}

impl From<r2d2::Error> for PgError {
    fn from(e: r2d2::Error) -> Self {
        PgError::Pool(e)
    }
}

impl From<StoreError> for PgError {
    fn from(e: StoreError) -> Self {
        PgError::Store(e)
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Store(e) => e,
            // No connection from the pool in time: the database is down or saturated.
            PgError::Pool(e) => StoreError::Unavailable(e.to_string()),
            PgError::Pg(e) => {
                let text = e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                match e.code() {
                    None => StoreError::Unavailable(text),
                    Some(c) if c.code().starts_with("23") => StoreError::Conflict(text),
                    Some(
                        &SqlState::T_R_SERIALIZATION_FAILURE
                        | &SqlState::T_R_DEADLOCK_DETECTED
                        | &SqlState::LOCK_NOT_AVAILABLE
                        | &SqlState::ADMIN_SHUTDOWN
                        | &SqlState::CANNOT_CONNECT_NOW
                        | &SqlState::TOO_MANY_CONNECTIONS,
                    ) => StoreError::Unavailable(text),
                    Some(_) => StoreError::Backend(text),
                }
            }
        }
    }
}

/// Results inside this backend.
type R<T> = Result<T, PgError>;

/// True for a UNIQUE or PRIMARY KEY violation.
fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A non-negative integer as stored (saturating).
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored non-negative integer (negative reads as 0).
fn from_sql_int(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The PostgreSQL store: a pool of connections.
pub struct Pg {
    pool: r2d2::Pool<PostgresConnectionManager<NoTls>>,
    data_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the connection string: it may hold a password.
        f.debug_struct("Pg")
            .field("pool_size", &self.pool.max_size())
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Pg {
    /// Connects to `url` (`postgres://user@host/db` or `host=… user=… dbname=…`) with a pool of
    /// `pool_size` connections and runs the pending migrations. `data_dir` is where the files beside the
    /// database (sealed recordings) live on this node.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a malformed URL, [`StoreError::Unavailable`] if the database cannot be
    /// reached, [`StoreError::SchemaTooNew`], database errors of the migrations.
    pub fn connect(url: &str, pool_size: u32, data_dir: Option<PathBuf>) -> Result<Self, StoreError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Invalid(format!("database URL: {e}")))?;
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .map_err(PgError::from)?;
        let pg = Self { pool, data_dir };
        pg.with(migrate)?;
        Ok(pg)
    }

    /// Runs `f` on a pooled connection, turning PostgreSQL's errors into the store's.
    fn with<T>(&self, f: impl FnOnce(&mut postgres::Client) -> R<T>) -> Result<T, StoreError> {
        let mut conn = self.pool.get().map_err(PgError::from)?;
        Ok(f(&mut conn)?)
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            let row = c.query_one("SELECT version FROM relaydesk_schema WHERE id = 1", &[])?;
            Ok(i64::from(row.try_get::<_, i32>(0)?))
        })
    }
}

impl Storage for Pg {
    fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir.clone()
    }
}

/// Writes an audit record (bounded), inside the caller's transaction if any.
fn write_audit(c: &mut impl GenericClient, e: &AuditEvent) -> R<()> {
    let e = bounded_audit(e);
    c.execute(
        "INSERT INTO audit_log (at, actor, action, target, client_addr, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&unix_now(), &e.actor, &e.action, &e.target, &e.client_addr, &e.detail],
    )?;
    Ok(())
}

/// The recorded master key id; `lock` holds its row shared until the transaction ends, so a rotation
/// (which holds it exclusively) comes wholly before or after.
fn meta_key_id(c: &mut impl GenericClient, lock: bool) -> R<Option<String>> {
    let sql = if lock {
        "SELECT master_key_id FROM archive_meta WHERE id = 1 FOR SHARE"
    } else {
        "SELECT master_key_id FROM archive_meta WHERE id = 1"
    };
    Ok(match c.query_opt(sql, &[])? {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

/// Fails with [`StoreError::MasterKeyChanged`] unless the recorded master key id is unset or `key_id`.
fn check_key_id(c: &mut impl GenericClient, key_id: &str) -> R<()> {
    match meta_key_id(c, true)? {
        Some(current) if current != key_id => Err(StoreError::MasterKeyChanged.into()),
        _ => Ok(()),
    }
}

/// Applies the pending migrations; refuses a database newer than [`MIGRATIONS`].
fn migrate(c: &mut postgres::Client) -> R<()> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATIONS])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS relaydesk_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
    )?;
    let version: i32 = match tx.query_opt("SELECT version FROM relaydesk_schema WHERE id = 1", &[])? {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    let known = MIGRATIONS.len();
    let done = usize::try_from(version)
        .ok()
        .filter(|v| *v <= known)
        .ok_or(StoreError::SchemaTooNew {
            found: i64::from(version),
            known,
        })?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(step)?;
        let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO relaydesk_schema (id, version) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            &[&v],
        )?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    tx.commit()?;
    Ok(())
}
