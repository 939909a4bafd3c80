//! The shared suite run against SQLite (in memory), and what is SQLite's own: versions and the file.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::store::{AccountStore as _, suite::storage_suite};

fn in_memory() -> Box<dyn Storage> {
    Box::new(Db::open_in_memory().unwrap())
}

storage_suite!(in_memory);

fn audit(action: &str) -> AuditEvent {
    AuditEvent {
        actor: Some("test".into()),
        action: action.into(),
        ..Default::default()
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
        .lock()
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
fn reopen_keeps_data_and_is_wal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.data_dir().as_deref(), Some(dir.path()));
        db.create_group("g", audit("x")).unwrap();
    }
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.list_groups().unwrap().len(), 1);
    let mode: String = db
        .lock()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(Db::open_in_memory().unwrap().data_dir(), None);
}

#[test]
fn sqlite_errors_become_neutral_ones() {
    let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    assert!(matches!(
        StoreError::from(SqlError::from(busy)),
        StoreError::Unavailable(_)
    ));
    let constraint = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT), None);
    assert!(matches!(
        StoreError::from(SqlError::from(constraint)),
        StoreError::Conflict(_)
    ));
    assert!(matches!(
        StoreError::from(SqlError::from(rusqlite::Error::InvalidQuery)),
        StoreError::Backend(_)
    ));
}
