//! The transcript archive through the real server: store via `state.archive`, export over HTTPS with the
//! authorisation matrix, audit, no plaintext on disk (database and WAL), tampered rows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use relaydesk_signalling::archive::{
    ArchiveError, ArchivedMessage, ArchivedParticipant, ConversationRecord, MessageAuthor, MessageKind, ParticipantRole,
};
use relaydesk_signalling::masking::{Masker, Redacted};
use serde_json::json;

const MARKER: &str = "zebraquokka";

fn record(id: &str, group: &str, visitor: &str, agent_id: i64, ended_at: i64) -> ConversationRecord {
    let masker = Masker::default();
    ConversationRecord {
        id: id.into(),
        group: group.into(),
        site_key_id: "pk_test".into(),
        visitor_id: Redacted::new(visitor.to_string()),
        participants: vec![
            ArchivedParticipant::visitor("Visitor", ended_at - 10_000),
            ArchivedParticipant::user(ParticipantRole::Agent, agent_id, "Ann", ended_at - 9_000),
        ],
        started_at: ended_at - 10_000,
        ended_at,
        messages: vec![
            ArchivedMessage {
                seq: 1,
                author: MessageAuthor::Visitor,
                sent_at: ended_at - 8_000,
                body: masker.mask(&format!("hello {MARKER}, my card is 4111 1111 1111 1111")),
                kind: MessageKind::Chat,
                file: None,
            },
            ArchivedMessage {
                seq: 2,
                author: MessageAuthor::Agent { user_id: agent_id },
                sent_at: ended_at - 7_000,
                body: masker.mask("thanks\nsecond line"),
                kind: MessageKind::Chat,
                file: None,
            },
            ArchivedMessage {
                seq: 3,
                author: MessageAuthor::System,
                sent_at: ended_at - 1_000,
                body: masker.mask("conversation ended"),
                kind: MessageKind::Chat,
                file: None,
            },
        ],
    }
}

async fn setup() -> (TestServer, common::Client, i64) {
    let ts = TestServer::start().await;
    let admin = ts.admin().await;
    for g in ["sales", "support"] {
        let r = admin.post_json("/api/v1/admin/groups", &json!({ "name": g })).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let agent = ts
        .create_user(&admin, "ann", "agent", &["sales"], "correct horse battery")
        .await;
    ts.create_user(&admin, "sue", "supervisor", &["Sales"], "correct horse battery")
        .await;
    ts.create_user(&admin, "otto", "supervisor", &["support"], "correct horse battery")
        .await;
    (ts, admin, agent)
}

async fn login(ts: &TestServer, name: &str) -> common::Client {
    let c = ts.client();
    let r = c.login(name, "correct horse battery").await;
    assert_eq!(r.status, 200, "{}", r.text());
    c
}

#[tokio::test]
async fn export_roundtrip_authorisation_and_audit() {
    let (ts, admin, agent_id) = setup().await;
    let archive = ts.running().state().archive.clone();
    archive
        .store_conversation(record("42", "sales", "v_1", agent_id, 1_700_000_000_000))
        .await
        .unwrap();
    // Storing the same id again is refused, nothing overwritten.
    let dup = archive
        .store_conversation(record("42", "sales", "v_1", agent_id, 1_700_000_000_000))
        .await;
    assert!(
        matches!(dup, Err(relaydesk_signalling::archive::ArchiveError::Duplicate(_))),
        "{dup:?}"
    );

    let path = "/api/v1/admin/conversations/42/transcript";
    let r = admin.get(path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(t["id"], "42");
    assert_eq!(t["group"], "sales");
    assert_eq!(t["started_at"], 1_700_000_000_000i64 - 10_000);
    assert_eq!(t["participants"][1]["role"], "agent");
    assert_eq!(t["participants"][1]["user_id"], agent_id);
    let msgs = t["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0]["author"], json!({"kind": "visitor"}));
    assert_eq!(msgs[1]["author"], json!({"kind": "agent", "user_id": agent_id}));
    assert_eq!(msgs[2]["author"], json!({"kind": "system"}));
    let body0 = msgs[0]["body"].as_str().unwrap();
    assert!(body0.contains(MARKER), "{body0}");
    assert!(
        !body0.contains("4111 1111 1111 1111"),
        "the archive holds masked text only: {body0}"
    );
    assert_eq!(msgs[1]["body"], "thanks\nsecond line");
    // The visitor id never leaves the server.
    assert!(!r.text().contains("v_1"));

    // Text format.
    let r = admin.get(&format!("{path}?format=text")).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    assert!(text.contains("#2 Ann (user"), "{text}");
    assert!(text.contains("thanks\\nsecond line"), "{text}");
    assert_eq!(admin.get(&format!("{path}?format=xml")).await.status, 400);

    // Supervisor of the group (case-insensitive group name): allowed.
    let sue = login(&ts, "sue").await;
    assert_eq!(sue.get(path).await.status, 200);
    // Supervisor of another group: 404, the same answer as for an id that does not exist.
    let otto = login(&ts, "otto").await;
    let r = otto.get(path).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error_code(), "not_found");
    let missing = otto.get("/api/v1/admin/conversations/404404/transcript").await;
    assert_eq!((missing.status, missing.json()), (r.status, r.json()));
    // Agent: 403, even for an id that does not exist.
    let ann = login(&ts, "ann").await;
    assert_eq!(ann.get(path).await.status, 403);
    assert_eq!(ann.get("/api/v1/admin/conversations/nope/transcript").await.status, 403);
    // Unknown id: 404 with a JSON body.
    let r = admin.get("/api/v1/admin/conversations/404404/transcript").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
    assert_eq!(
        sue.get("/api/v1/admin/conversations/404404/transcript").await.status,
        404
    );
    // No session: 401.
    assert_eq!(ts.client().get(path).await.status, 401);

    // Every export is audited: who, which, when; refusals too.
    let audit = ts
        .running()
        .state()
        .store
        .call(|db| db.recent_audit(200))
        .await
        .unwrap();
    let exports: Vec<_> = audit.iter().filter(|a| a.action == "archive.export").collect();
    assert_eq!(exports.len(), 3, "admin json, admin text, sue: {audit:?}");
    assert!(exports.iter().any(|a| a.actor.as_deref() == Some("sue")));
    assert!(
        exports
            .iter()
            .all(|a| a.target.as_deref() == Some("conversation:42") && a.at > 0)
    );
    assert!(exports.iter().all(|a| a.client_addr.as_deref() == Some("127.0.0.1")));
    let denied: Vec<_> = audit.iter().filter(|a| a.action == "archive.export_denied").collect();
    assert!(denied.iter().any(|a| a.actor.as_deref() == Some("otto")));
    assert!(denied.iter().any(|a| a.actor.as_deref() == Some("ann")));
    // Nothing in the audit log carries the visitor id or a body.
    for a in &audit {
        let line = format!("{a:?}");
        assert!(!line.contains("v_1") && !line.contains(MARKER), "{line}");
    }
}

/// Scans every file of the data directory's database (main file, WAL, shared memory) for `needle`.
fn db_files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("relaydesk.db") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(name);
        }
    }
    hits
}

#[tokio::test]
async fn no_plaintext_body_or_visitor_id_on_disk() {
    let (ts, admin, agent_id) = setup().await;
    let archive = ts.running().state().archive.clone();
    let visitor = "visitor-id-kangaroo";
    archive
        .store_conversation(record("7", "sales", visitor, agent_id, 1_700_000_000_000))
        .await
        .unwrap();
    // The export proves the marker really was stored (so its absence below means something).
    let r = admin.get("/api/v1/admin/conversations/7/transcript").await;
    assert!(r.text().contains(MARKER));
    let wal = ts.dir.join("relaydesk.db-wal");
    assert!(
        wal.exists() && std::fs::metadata(&wal).unwrap().len() > 0,
        "the write went through the WAL"
    );
    assert_eq!(db_files_contain(&ts.dir, MARKER.as_bytes()), Vec::<String>::new());
    assert_eq!(db_files_contain(&ts.dir, visitor.as_bytes()), Vec::<String>::new());
    assert_eq!(db_files_contain(&ts.dir, b"second line"), Vec::<String>::new());
    // Control: the scan does find what is stored in clear (the site key id of the conversation).
    assert!(
        !db_files_contain(&ts.dir, b"pk_test").is_empty(),
        "the scanner sees the stored rows"
    );
}

#[tokio::test]
async fn tampered_ciphertext_is_a_clear_error() {
    let (ts, admin, agent_id) = setup().await;
    let archive = ts.running().state().archive.clone();
    archive
        .store_conversation(record("9", "sales", "v", agent_id, 1_700_000_000_000))
        .await
        .unwrap();
    archive
        .store_conversation(record("10", "sales", "v", agent_id, 1_700_000_000_000))
        .await
        .unwrap();
    {
        let conn = rusqlite::Connection::open(ts.dir.join("relaydesk.db")).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        // Flip one byte of a sealed body.
        let mut body: Vec<u8> = conn
            .query_row(
                "SELECT body FROM archive_messages WHERE conversation_id = '9' AND seq = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let last = body.len() - 1;
        body[last] ^= 0x01;
        conn.execute(
            "UPDATE archive_messages SET body = ?1 WHERE conversation_id = '9' AND seq = 2",
            [&body],
        )
        .unwrap();
        // Move conversation 10's first body to another position (same key, wrong seq in the AAD).
        conn.execute(
            "UPDATE archive_messages SET body = (SELECT body FROM archive_messages WHERE conversation_id = '10' AND seq = 1)
             WHERE conversation_id = '10' AND seq = 3",
            [],
        )
        .unwrap();
    }
    for id in ["9", "10"] {
        let r = admin.get(&format!("/api/v1/admin/conversations/{id}/transcript")).await;
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.error_code(), "archive_unreadable");
    }
    // The server is fine afterwards.
    assert_eq!(admin.get("/healthz").await.status, 200);
    let direct = archive.export("9", Default::default()).await;
    assert!(
        matches!(
            direct,
            Err(relaydesk_signalling::archive::ArchiveError::Unreadable { seq: Some(2), .. })
        ),
        "{direct:?}"
    );
}

#[tokio::test]
async fn invalid_records_are_refused() {
    let (ts, _admin, agent_id) = setup().await;
    let archive = ts.running().state().archive.clone();
    let mut r = record("11", "sales", "v", agent_id, 1_700_000_000_000);
    r.messages[1].seq = 1;
    assert!(matches!(
        archive.store_conversation(r).await,
        Err(ArchiveError::Invalid(_))
    ));
    // Each refusal is `Invalid`, naming the field.
    let invalid = |r: Result<(), ArchiveError>| match r {
        Err(ArchiveError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let mut r = record("12", "sales", "v", agent_id, 1_700_000_000_000);
    r.ended_at = r.started_at - 1;
    let m = invalid(archive.store_conversation(r).await);
    assert!(m.contains("ended_at"), "{m}");
    let r = record("bad id", "sales", "v", agent_id, 1_700_000_000_000);
    let m = invalid(archive.store_conversation(r).await);
    assert!(m.contains("conversation id"), "{m}");
    let mut r = record("13", "sales", "v", agent_id, 1_700_000_000_000);
    r.participants[0].user_id = Some(1);
    let m = invalid(archive.store_conversation(r).await);
    assert!(m.contains("visitor has no user id"), "{m}");
    // None of them was stored.
    for id in ["12", "bad id", "13"] {
        let stored = archive.conversation_group(id).await;
        assert!(matches!(stored, Err(ArchiveError::NotFound(_))), "{id}: {stored:?}");
    }
}

/// `[archive] master_key_file` keeps the master key outside the data directory, so a backup or a copy of
/// the data directory holds only sealed data: the key is created there (0600), nothing key-like is written
/// into the data directory, and after a restart with the same setting the archive still opens.
#[tokio::test]
async fn the_master_key_can_live_outside_the_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("relaydesk-master.key");
    let config = || {
        let mut c = common::test_config(data.path());
        c.archive.master_key_file = Some(key_file.clone());
        c
    };
    let server = relaydesk_signalling::Server::start(config()).await.unwrap();
    let archive = server.state().archive.clone();
    archive
        .store_conversation(record("7", "sales", "v_7", 1, 1_700_000_000_000))
        .await
        .unwrap();
    assert!(key_file.exists(), "the key was created where configured");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let key = std::fs::read_to_string(&key_file).unwrap();
    let key = key.trim();
    assert!(key.len() >= 43, "a base64 key: {key:?}");
    // Nothing in the data directory holds the key (or a file named like it).
    let mut stack = vec![data.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            assert!(!path.ends_with("master.key"), "{path:?}");
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{path:?} holds the master key"
            );
        }
    }
    tokio::time::timeout(common::IO_TIMEOUT, server.shutdown())
        .await
        .unwrap()
        .unwrap();
    let server = relaydesk_signalling::Server::start(config()).await.unwrap();
    let t = server.state().archive.export("7", audit_event()).await.unwrap();
    assert_eq!(t.messages.len(), 3);
    tokio::time::timeout(common::IO_TIMEOUT, server.shutdown())
        .await
        .unwrap()
        .unwrap();
}

fn audit_event() -> relaydesk_signalling::store::AuditEvent {
    relaydesk_signalling::store::AuditEvent {
        actor: Some("test".into()),
        action: "archive.export".into(),
        target: Some("conversation:7".into()),
        client_addr: None,
        detail: None,
    }
}
