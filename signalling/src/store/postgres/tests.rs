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

/// The archive's crypto and policy over this backend: a live conversation's key wrapped, re-wrapped by a
/// rotation, the conversation archived (its live copy gone), exported decrypted, erased.
#[test]
fn the_archive_works_over_postgres() {
    use std::sync::Arc;

    use crate::archive::{
        ArchiveKeys, ArchivedMessage, ArchivedParticipant, ConversationRecord, KeySource, MessageAuthor, MessageKind,
        purge_visitor, rotate_master_key,
    };
    use crate::archive_crypto::{ConversationCipher, DataKey};
    use crate::live_store::{self, LiveWrite, NewLiveConversation};
    use crate::masking::{Masker, Redacted};
    use crate::store::AuditStore as _;

    let dir = tempfile::tempdir().unwrap();
    let pg = PgStore::open_scratch(&url(), dir.path()).unwrap();
    let key_file = dir.path().join("master.key");
    let keys = ArchiveKeys::open(KeySource::File(key_file.clone()), &pg).unwrap();
    let data_key = Arc::new(DataKey::generate().unwrap());
    let cipher = ConversationCipher::new(&data_key, "7");
    let create = LiveWrite::Create(Box::new(NewLiveConversation {
        id: 7,
        group: "sales".into(),
        site_key: "pk_1".into(),
        origin: "https://shop.example".into(),
        started_at_ms: 5,
        resume_hash: [1; 32],
        files_hash: [2; 32],
        key: Arc::clone(&data_key),
        state: cipher.seal(0, b"state").unwrap(),
    }));
    live_store::apply(&pg, &keys, &[create]).unwrap();
    let report = rotate_master_key(&pg, &key_file, "test").unwrap();
    assert_eq!(report.rewrapped, 1);
    // The old key file is gone: the live key opens under the new key only.
    let keys = ArchiveKeys::open(KeySource::File(key_file), &pg).unwrap();
    assert_eq!(keys.current_key_id(), report.new_key_id);
    let stored = live_store::load(&pg, &keys).unwrap();
    let opened = ConversationCipher::new(stored[0].key.as_ref().unwrap(), "7");
    assert_eq!(opened.open(0, &stored[0].state).unwrap(), b"state");

    let record = ConversationRecord {
        id: "7".into(),
        group: "sales".into(),
        site_key_id: "pk_1".into(),
        visitor_id: Redacted::new("v_7".to_string()),
        participants: vec![ArchivedParticipant::visitor("Visitor", 5)],
        started_at: 5,
        ended_at: 9,
        messages: vec![ArchivedMessage {
            seq: 1,
            author: MessageAuthor::Visitor,
            sent_at: 6,
            body: Masker::default().mask("card 4111 1111 1111 1111"),
            kind: MessageKind::Chat,
            file: None,
        }],
    };
    keys.store_conversation(&pg, &record).unwrap();
    assert!(!live_store::exists(&pg, 7).unwrap(), "archived and live at once");
    let audit = AuditEvent {
        action: "archive.export".into(),
        ..Default::default()
    };
    let t = keys.export(&pg, "7", &audit).unwrap();
    assert_eq!(t.messages[0].body, "card •••• •••• •••• 1111");
    assert_eq!(pg.recent_audit(1).unwrap()[0].action, "archive.export");
    assert_eq!(
        purge_visitor(&pg, &Redacted::new("v_7".to_string()), "test").unwrap(),
        1
    );
    assert!(keys.export(&pg, "7", &audit).is_err());
}

/// A database serves one node at a time: a second claim on the same schema is refused while the first
/// store lives, and succeeds once it is gone.
#[test]
fn one_node_claims_a_database_at_a_time() {
    let owner = scratch();
    let schema = owner.scratch_schema.clone().unwrap();
    let sep = if url().contains('?') { '&' } else { '?' };
    let same = format!("{}{sep}options=-c%20search_path%3D{schema}", url());
    let dir = tempfile::tempdir().unwrap();
    let open = |wait_ms: u64| {
        PgStore::open(
            &same,
            &PgOptions {
                pool_size: 2,
                connect_timeout: Duration::from_millis(wait_ms),
                data_dir: dir.path().to_path_buf(),
                ca_file: None,
            },
        )
        .unwrap()
    };
    let first = open(1_000);
    first.claim_node().unwrap();
    let refused = open(300).claim_node().unwrap_err();
    assert!(
        matches!(refused, StoreError::Conflict(ref m) if m.contains("another RelayDesk node")),
        "{refused:?}"
    );
    // Another schema of the same database is another store: not held.
    scratch().claim_node().unwrap();
    drop(first);
    // The claim is let go as the first store's connections close (the second one waits up to its timeout).
    open(10_000).claim_node().unwrap();
    drop(owner);
}
