//! The shared suite run against PostgreSQL (a fresh schema per test), and what is PostgreSQL's own.
//!
//! The database is `RELAYDESK_TEST_POSTGRES` (`cargo xtask test` sets it, and starts PostgreSQL where none
//! runs), else `postgres://postgres@127.0.0.1:5432/postgres`.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::store::{AccountStore as _, NewUser, Role, UserUpdate, suite::storage_suite};

fn url() -> String {
    std::env::var("RELAYDESK_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn scratch() -> PgStore {
    PgStore::open_scratch(&url(), &std::env::temp_dir()).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {} is needed by these tests (cargo xtask test starts one): {e}",
            url()
        )
    })
}

fn fresh() -> Box<dyn Storage> {
    Box::new(scratch())
}

storage_suite!(fresh);

fn audit(action: &str) -> AuditEvent {
    AuditEvent {
        actor: Some("test".into()),
        action: action.into(),
        ..Default::default()
    }
}

#[test]
fn migrations_run_once_and_a_newer_schema_is_refused() {
    let store = scratch();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    // Opening again (another node starting) applies nothing and keeps the data.
    store.create_group("g", audit("x")).unwrap();
    store.migrate().unwrap();
    assert_eq!(store.list_groups().unwrap().len(), 1);
    store
        .with(|c| {
            c.execute("UPDATE relaydesk_schema SET version = 99", &[])?;
            Ok(())
        })
        .unwrap();
    assert!(matches!(
        store.migrate(),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

#[test]
fn an_unreachable_database_is_unavailable_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = PgOptions::new(dir.path());
    options.connect_timeout = Duration::from_millis(500);
    // Port 1 on loopback: nothing listens there.
    let err = PgStore::open("postgres://postgres@127.0.0.1:1/postgres", &options).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = PgStore::open("postgres://[::1", &options).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

#[test]
fn concurrent_writers_keep_the_last_admin() {
    // Two nodes demote the only two admins at once: serialisable transactions let one through.
    let store = std::sync::Arc::new(scratch());
    let user = |name: &str| NewUser {
        username: name.into(),
        display_name: String::new(),
        role: Role::Admin,
        groups: Vec::new(),
        max_conversations: 4,
        password_hash: "$argon2id$x".into(),
    };
    let a = store.create_user(user("a"), audit("x")).unwrap();
    let b = store.create_user(user("b"), audit("x")).unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let demote = |id: i64| {
        let store = std::sync::Arc::clone(&store);
        let barrier = std::sync::Arc::clone(&barrier);
        std::thread::spawn(move || {
            barrier.wait();
            store.update_user(
                id,
                UserUpdate {
                    role: Some(Role::Agent),
                    ..Default::default()
                },
                audit("demote"),
            )
        })
    };
    let (ra, rb) = (demote(a.id), demote(b.id));
    let results = [ra.join().unwrap(), rb.join().unwrap()];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().any(|r| matches!(r, Err(StoreError::LastAdmin))));
    assert!(store.has_admin().unwrap());
}
