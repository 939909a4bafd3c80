//! The archive and masking commands through the built binary: `relaydesk mask`, `archive export`,
//! `archive purge`, `keys rotate` (also while the server runs and after an interrupted rotation), and the
//! server's retention purge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use relaydesk_signalling::store::prelude::*;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use relaydesk_signalling::archive::{
    self, ArchiveKeys, ArchivedMessage, ArchivedParticipant, ConversationRecord, KeySource, MessageAuthor, MessageKind,
    ParticipantRole,
};
use relaydesk_signalling::archive_crypto::{MasterKey, MasterKeyId};
use relaydesk_signalling::masking::{Masker, Redacted};
use relaydesk_signalling::store::Db;

const BIN: &str = env!("CARGO_BIN_EXE_relaydesk");
const DAY_MS: i64 = 86_400_000;

fn run(dir: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("RELAYDESK_DATA_DIR")
        .env_remove("RELAYDESK_CONFIG")
        .env_remove(archive::ENV_MASTER_KEY)
        .env_remove(archive::ENV_MASTER_KEY_FILE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    common::process::output_within(child)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn record(id: &str, visitor: &str, ended_at: i64, text: &str) -> ConversationRecord {
    let masker = Masker::default();
    ConversationRecord {
        id: id.into(),
        group: "sales".into(),
        site_key_id: "pk_cli".into(),
        visitor_id: Redacted::new(visitor.to_string()),
        participants: vec![
            ArchivedParticipant::visitor("Visitor", ended_at - 5_000),
            ArchivedParticipant::user(ParticipantRole::Agent, 3, "Ann", ended_at - 4_000),
        ],
        started_at: ended_at - 5_000,
        ended_at,
        messages: vec![
            ArchivedMessage {
                seq: 1,
                author: MessageAuthor::Visitor,
                sent_at: ended_at - 3_000,
                body: masker.mask(text),
                kind: MessageKind::Chat,
                file: None,
            },
            ArchivedMessage {
                seq: 2,
                author: MessageAuthor::Agent { user_id: 3 },
                sent_at: ended_at - 2_000,
                body: masker.mask("noted"),
                kind: MessageKind::Chat,
                file: None,
            },
        ],
    }
}

/// Stores conversations directly through the library, as the server would.
fn store(dir: &Path, records: &[ConversationRecord]) {
    let db = Db::open(dir).unwrap();
    let keys = ArchiveKeys::open(KeySource::File(dir.join(archive::MASTER_KEY_FILE)), &db).unwrap();
    for r in records {
        keys.store_conversation(&db, r).unwrap();
    }
}

fn export_json(dir: &Path, id: &str) -> serde_json::Value {
    let out = ok(&run(dir, &["archive", "export", "--conversation", id], b"", &[]));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn mask_command_masks_lines_and_refuses_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&run(
        dir.path(),
        &["mask"],
        b"my card 4111 1111\n1111 1111\nhello there\r\norder ORD-123456\n",
        &[],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(!out.contains("4111 1111"), "{out}");
    assert!(lines[1].ends_with("1111"), "last four kept: {out}");
    assert_eq!(lines[2], "hello there");
    assert_eq!(lines[3], "order ORD-123456");

    // An operator policy with an extra pattern (the documented `[masking]` form).
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[masking]\nextra = [{ name = \"order\", regex = '\\bORD-[0-9]{6}\\b' }]\n",
    )
    .unwrap();
    let out = ok(&run(
        dir.path(),
        &["mask", "--policy", policy.to_str().unwrap()],
        b"order ORD-123456\n",
        &[],
    ));
    assert_eq!(out, "order [order]\n");
    // A broken policy is a clear error.
    std::fs::write(&policy, "cardz = true\n").unwrap();
    let err = failed(&run(
        dir.path(),
        &["mask", "--policy", policy.to_str().unwrap()],
        b"x\n",
        &[],
    ));
    assert!(err.contains("policy file"), "{err}");

    // Invalid UTF-8: the lines before are printed, then a clear error and a non-zero exit.
    let out = run(dir.path(), &["mask"], b"first\nbad \xff\xfe here\nlast\n", &[]);
    let err = failed(&out);
    assert!(err.contains("line 2 is not valid UTF-8"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first\n");
    // `mask` needs no data directory.
    assert!(!dir.path().join("relaydesk.db").exists());
}

#[test]
fn export_json_and_text_audited() {
    let dir = tempfile::tempdir().unwrap();
    let now = archive::unix_now_ms();
    store(
        dir.path(),
        &[record("5", "v", now, "first message, card 4111111111111111")],
    );
    let t = export_json(dir.path(), "5");
    assert_eq!(t["id"], "5");
    assert!(!t["messages"][0]["body"].as_str().unwrap().contains("4111111111111111"));
    assert!(t["messages"][0]["body"].as_str().unwrap().starts_with("first message"));
    assert_eq!(t["messages"][1]["author"]["user_id"], 3);
    let text = ok(&run(
        dir.path(),
        &["archive", "export", "--conversation", "5", "--format", "text"],
        b"",
        &[],
    ));
    assert!(text.starts_with("Conversation 5 (group sales"), "{text}");
    assert!(text.contains("#2 Ann (user 3): noted"), "{text}");
    let err = failed(&run(
        dir.path(),
        &["archive", "export", "--conversation", "6"],
        b"",
        &[],
    ));
    assert!(err.contains("not found"), "{err}");
    let db = Db::open(dir.path()).unwrap();
    let audit = db.recent_audit(50).unwrap();
    let exports: Vec<_> = audit.iter().filter(|a| a.action == "archive.export").collect();
    assert_eq!(exports.len(), 2, "{audit:?}");
    assert!(
        exports
            .iter()
            .all(|a| a.actor.as_deref() == Some("cli") && a.target.as_deref() == Some("conversation:5"))
    );
}

#[test]
fn rotation_rewraps_and_exports_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let now = archive::unix_now_ms();
    store(
        dir.path(),
        &[record("1", "v", now, "one"), record("2", "v", now, "two")],
    );
    let key_file = dir.path().join("master.key");
    let before = std::fs::read(&key_file).unwrap();
    let old = MasterKey::load(&key_file).unwrap().id();
    let out = ok(&run(dir.path(), &["keys", "rotate"], b"", &[]));
    let new = MasterKey::load(&key_file).unwrap().id();
    assert_ne!(old, new);
    assert_ne!(
        std::fs::read(&key_file).unwrap(),
        before,
        "the old key is gone from the key file"
    );
    assert!(
        out.contains(&format!("{old} -> {new} (2 conversation keys re-wrapped)")),
        "{out}"
    );
    assert!(!KeySource::next_path(&key_file).exists());
    // Mode stays 0600.
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(export_json(dir.path(), "1")["messages"][0]["body"], "one");
    assert_eq!(export_json(dir.path(), "2")["messages"][0]["body"], "two");
    // Only the new key is needed now: a keyring of exactly the new key file opens everything.
    let db = Db::open(dir.path()).unwrap();
    let keys = ArchiveKeys::open(KeySource::File(key_file.clone()), &db).unwrap();
    assert_eq!(keys.current_key_id(), new);
    keys.export(&db, "1", &Default::default()).unwrap();
    let audit = db.recent_audit(50).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "keys.rotate" && a.target == Some(new.to_string()))
    );

    // With the old key given instead, the archive is unreadable: a clear error, no panic.
    drop(db);
    let old_dir = tempfile::tempdir().unwrap();
    let other = MasterKey::generate().unwrap();
    let err = failed(&run(
        dir.path(),
        &["archive", "export", "--conversation", "1"],
        b"",
        &[(archive::ENV_MASTER_KEY, &other.to_base64())],
    ));
    assert!(err.contains("not available"), "{err}");
    // Rotation refuses a key given by environment.
    let err = failed(&run(
        old_dir.path(),
        &["keys", "rotate"],
        b"",
        &[(archive::ENV_MASTER_KEY, &other.to_base64())],
    ));
    assert!(err.contains("cannot rotate"), "{err}");
}

#[tokio::test]
async fn interrupted_rotation_loses_nothing_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let now = archive::unix_now_ms();
    store(dir.path(), &[record("1", "v", now, "one")]);
    let key_file = dir.path().join("master.key");
    let old = MasterKey::load(&key_file).unwrap().id();
    // A crash right after step 1: the next key exists, nothing re-wrapped yet.
    let next = MasterKey::generate().unwrap();
    next.save_new(&KeySource::next_path(&key_file)).unwrap();
    assert_eq!(export_json(dir.path(), "1")["messages"][0]["body"], "one");
    // New conversations still use the recorded (old) key until the rotation finishes, in the server too.
    store(dir.path(), &[record("2", "v", now, "two")]);
    server_exports(
        dir.path(),
        old,
        &[("1", "one"), ("2", "two")],
        record("3", "v", now, "three"),
    )
    .await;
    // Running the command again finishes with the key already written.
    rotation_rerun_finishes(dir.path(), old, next.id(), 3);
}

/// Starts the real server on `dir`, checks its current master key and that it exports every transcript in
/// `bodies` (conversation id, first message), stores `extra`, and stops it.
async fn server_exports(dir: &Path, current: MasterKeyId, bodies: &[(&str, &str)], extra: ConversationRecord) {
    let server = relaydesk_signalling::Server::start(common::test_config(dir))
        .await
        .unwrap();
    let archive = server.state().archive.clone();
    assert_eq!(archive.keys().current_key_id(), current);
    for (id, body) in bodies {
        let t = archive.export(id, Default::default()).await.unwrap();
        assert_eq!(t.messages[0].body, *body, "conversation {id}");
    }
    archive.store_conversation(extra).await.unwrap();
    tokio::time::timeout(common::IO_TIMEOUT, server.shutdown())
        .await
        .unwrap()
        .unwrap();
}

/// Runs `keys rotate` on an interrupted rotation from `old` to `new` and checks it finished: `new` alone is in
/// the key file, no `.next` is left, and conversations 1 to 3 export with it.
fn rotation_rerun_finishes(dir: &Path, old: MasterKeyId, new: MasterKeyId, rewrapped: usize) {
    let key_file = dir.join("master.key");
    let out = ok(&run(dir, &["keys", "rotate"], b"", &[]));
    assert!(
        out.contains(&format!("{old} -> {new} ({rewrapped} conversation keys re-wrapped)")),
        "{out}"
    );
    assert_eq!(MasterKey::load(&key_file).unwrap().id(), new);
    assert!(!KeySource::next_path(&key_file).exists());
    for (id, body) in [("1", "one"), ("2", "two"), ("3", "three")] {
        assert_eq!(export_json(dir, id)["messages"][0]["body"], body, "conversation {id}");
    }
}

#[tokio::test]
async fn rotation_crash_after_the_commit_starts_and_resumes() {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let dir = tempfile::tempdir().unwrap();
    let now = archive::unix_now_ms();
    store(
        dir.path(),
        &[record("1", "v", now, "one"), record("2", "w", now, "two")],
    );
    let key_file = dir.path().join("master.key");
    let next_file = KeySource::next_path(&key_file);
    let old_bytes = std::fs::read(&key_file).unwrap();
    let old = MasterKey::load(&key_file).unwrap().id();
    // Steps 1 and 2 through the command, then the files put back as a crash before step 3's rename leaves
    // them: the key file holds the old key, `.next` the new one, the database names the new one.
    ok(&run(dir.path(), &["keys", "rotate"], b"", &[]));
    std::fs::rename(&key_file, &next_file).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_file)
        .unwrap()
        .write_all(&old_bytes)
        .unwrap();
    let new = MasterKey::load(&next_file).unwrap().id();
    assert_ne!(old, new);
    {
        let conn = rusqlite::Connection::open(dir.path().join("relaydesk.db")).unwrap();
        let meta: String = conn
            .query_row("SELECT master_key_id FROM archive_meta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(meta, new.to_string(), "the database commit happened");
        let under_old: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM archive_conversations WHERE master_key_id != ?1",
                [new.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(under_old, 0, "every conversation key is re-wrapped");
    }

    // (a) The server starts (it loads `.next`), exports every transcript and archives under the new key.
    server_exports(
        dir.path(),
        new,
        &[("1", "one"), ("2", "two")],
        record("3", "v", now, "three"),
    )
    .await;

    // (b) The command run again finishes the rotation: `.next` renamed over the key file, the old key gone.
    rotation_rerun_finishes(dir.path(), old, new, 0);
    assert_ne!(std::fs::read(&key_file).unwrap(), old_bytes);
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn purge_by_age_and_by_visitor() {
    let dir = tempfile::tempdir().unwrap();
    let now = archive::unix_now_ms();
    store(
        dir.path(),
        &[
            record("old", "alice", now - 40 * DAY_MS, "old one"),
            record("new", "alice", now - DAY_MS, "new one"),
            record("bob1", "bob", now - DAY_MS, "bob's"),
        ],
    );
    let out = ok(&run(
        dir.path(),
        &["archive", "purge", "--older-than-days", "30"],
        b"",
        &[],
    ));
    assert_eq!(out.trim(), "erased 1 archived conversations");
    failed(&run(
        dir.path(),
        &["archive", "export", "--conversation", "old"],
        b"",
        &[],
    ));
    export_json(dir.path(), "new");

    let out = ok(&run(dir.path(), &["archive", "purge", "--visitor", "alice"], b"", &[]));
    assert_eq!(out.trim(), "erased 1 archived conversations");
    failed(&run(
        dir.path(),
        &["archive", "export", "--conversation", "new"],
        b"",
        &[],
    ));
    assert_eq!(export_json(dir.path(), "bob1")["messages"][0]["body"], "bob's");
    // Exactly one of the two selectors.
    failed(&run(dir.path(), &["archive", "purge"], b"", &[]));
    failed(&run(
        dir.path(),
        &["archive", "purge", "--visitor", "x", "--older-than-days", "1"],
        b"",
        &[],
    ));

    let db = Db::open(dir.path()).unwrap();
    let audit = db.recent_audit(50).unwrap();
    let purge = audit.iter().find(|a| a.action == "archive.purge_visitor").unwrap();
    assert_eq!(purge.actor.as_deref(), Some("cli"));
    assert!(purge.detail.as_deref().unwrap().contains("1 conversations erased"));
    assert!(
        audit.iter().all(|a| !format!("{a:?}").contains("alice")),
        "visitor id never in the audit log"
    );
    assert!(audit.iter().any(|a| a.action == "archive.purge"));
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + common::IO_TIMEOUT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn server_purges_by_retention_and_follows_a_cli_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let now = archive::unix_now_ms();
    store(
        dir.path(),
        &[
            record("ancient", "v", now - 100 * DAY_MS, "x"),
            record("recent", "v", now, "kept"),
        ],
    );
    let mut config = common::test_config(dir.path());
    config.archive.retention_days = 30;
    let server = relaydesk_signalling::Server::start(config).await.unwrap();
    let state = server.state().clone();
    let archive = state.archive.clone();
    // The retention task runs at start.
    eventually("the retention purge", async || {
        matches!(
            archive.export("ancient", Default::default()).await,
            Err(archive::ArchiveError::NotFound(_))
        )
    })
    .await;
    assert_eq!(
        archive.export("recent", Default::default()).await.unwrap().messages[0].body,
        "kept"
    );
    let audit = state.store.call(|db| db.recent_audit(50)).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "archive.purge" && a.actor.as_deref() == Some("system"))
    );

    // Rotate with the CLI while the server runs; the server follows on its next write and read.
    let d = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || run(&d, &["keys", "rotate"], b"", &[]))
        .await
        .unwrap();
    ok(&out);
    let new_id = MasterKey::load(&dir.path().join("master.key")).unwrap().id();
    archive
        .store_conversation(record("after", "v", now, "after rotation"))
        .await
        .unwrap();
    assert_eq!(archive.keys().current_key_id(), new_id);
    assert_eq!(
        archive.export("recent", Default::default()).await.unwrap().messages[0].body,
        "kept"
    );
    server.shutdown().await.unwrap();
    // A fresh start (only the new key on disk) reads both.
    let d = dir.path().to_path_buf();
    let t = tokio::task::spawn_blocking(move || export_json(&d, "after"))
        .await
        .unwrap();
    assert_eq!(t["messages"][0]["body"], "after rotation");
}

#[tokio::test]
async fn server_refuses_a_master_key_readable_by_others() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    std::fs::write(&key_file, MasterKey::generate().unwrap().to_base64()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = relaydesk_signalling::Server::start(common::test_config(dir.path()))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("master key file") && text.contains("0600"), "{text}");
    // A malformed key file is refused too, without echoing its content.
    std::fs::write(&key_file, "not-a-key-SECRETISH").unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = relaydesk_signalling::Server::start(common::test_config(dir.path()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("malformed master key") && !text.contains("SECRETISH"),
        "{text}"
    );
}
