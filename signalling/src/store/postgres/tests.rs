//! The shared suite run against PostgreSQL, and what is PostgreSQL's own: its migrations and its errors.
//!
//! Needs a server: `RELAYDESK_TEST_POSTGRES` (a connection string of a user that may create databases),
//! default `host=127.0.0.1 port=5432 user=postgres`. Each run creates a database of its own
//! (`relaydesk_suite_<pid>_<time>`), each test a schema in it; databases of earlier runs are dropped at
//! the start of the next one. Not skipped when the server is missing: the tests fail and say so.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::store::AuditStore as _;
use crate::store::suite::storage_suite;

fn admin_url() -> String {
    std::env::var("RELAYDESK_TEST_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

/// The database of this run, created on first use.
fn database() -> &'static str {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| {
        let mut admin = postgres::Client::connect(&admin_url(), NoTls)
            .unwrap_or_else(|e| panic!("PostgreSQL for the store's tests at {:?}: {e}", admin_url()));
        let old = admin
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'relaydesk\\_suite\\_%'",
                &[],
            )
            .unwrap();
        for row in old {
            let name: String = row.get(0);
            // Another run may still use it: then it stays.
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("relaydesk_suite_{}_{nanos}", std::process::id());
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).unwrap();
        name
    })
}

/// A connection string to a new, empty schema of this run's database.
fn fresh_schema() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let schema = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let url = format!("{} dbname={}", admin_url(), database());
    let mut c = postgres::Client::connect(&url, NoTls).unwrap();
    c.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
    format!("{url} options='-c search_path={schema}'")
}

fn fresh() -> Box<dyn Storage> {
    Box::new(Pg::connect(&fresh_schema(), 2, None).unwrap())
}

storage_suite!(fresh);

#[test]
fn migrations_run_once_and_a_newer_schema_is_refused() {
    let url = fresh_schema();
    let pg = Pg::connect(&url, 1, None).unwrap();
    assert_eq!(pg.schema_version().unwrap(), MIGRATIONS.len() as i64);
    drop(pg);
    // A second node connecting finds the schema in place.
    let pg = Pg::connect(&url, 1, None).unwrap();
    assert_eq!(pg.schema_version().unwrap(), MIGRATIONS.len() as i64);
    pg.with(|c| Ok(c.execute("UPDATE relaydesk_schema SET version = version + 1", &[])?))
        .unwrap();
    drop(pg);
    assert!(matches!(
        Pg::connect(&url, 1, None),
        Err(StoreError::SchemaTooNew { found, known }) if found == MIGRATIONS.len() as i64 + 1 && known == MIGRATIONS.len()
    ));
}

#[test]
fn errors_become_neutral_ones() {
    assert!(matches!(
        Pg::connect("not a url ===", 1, None),
        Err(StoreError::Invalid(_))
    ));
    let pg = Pg::connect(&fresh_schema(), 1, None).unwrap();
    let constraint = pg.with(|c| Ok(c.execute("INSERT INTO archive_meta (id, master_key_id) VALUES (2, 'k')", &[])?));
    assert!(matches!(constraint, Err(StoreError::Conflict(_))), "{constraint:?}");
    let syntax = pg.with(|c| Ok(c.execute("SELEC 1", &[])?));
    assert!(matches!(syntax, Err(StoreError::Backend(_))), "{syntax:?}");
    let text = format!("{pg:?}");
    assert!(!text.contains("postgres"), "no connection string in Debug: {text}");
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

    let dir = tempfile::tempdir().unwrap();
    let pg = Pg::connect(&fresh_schema(), 2, Some(dir.path().to_path_buf())).unwrap();
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
