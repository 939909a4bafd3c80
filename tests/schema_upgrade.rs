//! Schema upgrades from databases as older releases wrote them: each `tests/fixtures/schema/vN/` (written by
//! `examples/schema_fixtures.rs`, rows listed in `tests/fixtures/schema/spec.rs`) is opened by the current
//! code, migrated to the newest version, and every row must have survived: users log in with their
//! passwords, sessions and site keys stay valid, audit rows are kept, archived transcripts decrypt with the
//! fixture's master key. A database newer than the code is refused and left untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "fixtures/schema/spec.rs"]
mod spec;

use relaydesk_signalling::store::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relaydesk_signalling::archive::{self, ArchiveKeys, KeySource, MASTER_KEY_FILE, Transcript};
use relaydesk_signalling::archive_crypto::MasterKey;
use relaydesk_signalling::masking::Redacted;
use relaydesk_signalling::password::verify_password;
use relaydesk_signalling::recording;
use relaydesk_signalling::store::{DB_FILE, Db, MIGRATIONS, SessionLimits, StoreError};
use relaydesk_signalling::token::hash_token;
use relaydesk_signalling::{Server, ServerError};

fn fixture_dir(version: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/schema/v{version}"))
}

/// A private copy of the fixture of `version` (the key file 0600, as the server requires).
fn copy_fixture(version: usize) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let from = fixture_dir(version);
    assert!(
        from.join(DB_FILE).is_file(),
        "no fixture for schema version {version}: run `cargo run --example schema_fixtures -- {version}`"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut files = vec![DB_FILE];
    if version >= 2 {
        assert!(from.join(MASTER_KEY_FILE).is_file(), "v{version} needs its master key");
        files.push(MASTER_KEY_FILE);
    }
    for name in files {
        let to = tmp.path().join(name);
        std::fs::copy(from.join(name), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    if version >= 5 {
        let (src, dst) = (from.join(recording::DIR), tmp.path().join(recording::DIR));
        std::fs::create_dir(&dst).unwrap();
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
    }
    tmp
}

/// `PRAGMA user_version` read without migrating.
fn raw_version(dir: &Path) -> i64 {
    rusqlite::Connection::open(dir.join(DB_FILE))
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

fn sorted(items: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    let mut v: Vec<String> = items.into_iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The transcript matches the fixture's conversation: participants, times, authors and every body.
fn assert_transcript(t: &Transcript, c: &spec::FixtureConversation) {
    let r = spec::record(c);
    assert_eq!(
        (t.id.as_str(), t.group.as_str(), t.site_key_id.as_str()),
        (c.id, c.group, c.site_key)
    );
    assert_eq!((t.started_at, t.ended_at), (r.started_at, r.ended_at));
    assert_eq!(t.participants, r.participants, "conversation {}", c.id);
    let got: Vec<_> = t
        .messages
        .iter()
        .map(|m| (m.seq, m.author, m.sent_at, m.body.as_str()))
        .collect();
    let want: Vec<_> = r
        .messages
        .iter()
        .zip(c.messages)
        .map(|(m, (_, _, archived))| (m.seq, m.author, m.sent_at, *archived))
        .collect();
    assert_eq!(got, want, "conversation {}", c.id);
}

/// Every row of the fixture is there, read through the store's API after its migrations ran.
fn assert_rows_survived(dir: &Path, version: usize) {
    let db = Db::open(dir).unwrap();
    assert_eq!(
        db.schema_version().unwrap(),
        MIGRATIONS.len() as i64,
        "v{version} migrated"
    );

    assert_eq!(
        sorted(db.list_groups().unwrap().iter().map(|g| &g.name)),
        sorted(spec::GROUPS)
    );
    for u in spec::USERS {
        let user = db.user_by_name(u.username).unwrap();
        assert_eq!(
            (
                user.display_name.as_str(),
                user.role.as_str(),
                user.max_conversations,
                user.disabled
            ),
            (u.display_name, u.role, u.max_conversations, u.disabled),
            "v{version} user {}",
            u.username
        );
        assert_eq!(
            sorted(&user.groups),
            sorted(u.groups),
            "v{version} groups of {}",
            u.username
        );
        let creds = db.credentials(u.username).unwrap().unwrap();
        assert!(
            verify_password(u.password, &creds.password_hash),
            "v{version} password of {}",
            u.username
        );
    }

    let limits = SessionLimits {
        idle: Duration::from_secs(3_600),
        absolute: Duration::from_secs(86_400),
    };
    for u in spec::USERS {
        if let Some(token) = u.session {
            let user = db
                .touch_session(&hash_token(token), spec::WRITTEN_AT + 60, limits)
                .unwrap();
            assert_eq!(
                user.map(|u| u.username),
                Some(u.username.to_string()),
                "v{version} session"
            );
        }
    }

    for k in spec::SITE_KEYS {
        let key = db.site_key(k.key).unwrap();
        assert_eq!(
            (
                key.group.as_str(),
                sorted(&key.origins),
                key.label.as_str(),
                key.revoked_at.is_some()
            ),
            (k.group, sorted(k.origins), k.label, k.revoked),
            "v{version} site key {}",
            k.key
        );
    }

    let audit = db.recent_audit(1_000).unwrap();
    let (actor, action, target, client_addr, detail) = spec::AUDIT_ROW;
    assert!(
        audit.iter().any(|a| a.actor.as_deref() == Some(actor)
            && a.action == action
            && a.target.as_deref() == Some(target)
            && a.client_addr.as_deref() == Some(client_addr)
            && a.detail.as_deref() == Some(detail)),
        "v{version} audit: {audit:?}"
    );
    for u in spec::USERS {
        let target = format!("user:{}", u.username);
        assert!(
            audit
                .iter()
                .any(|a| a.action == "user.create" && a.target.as_deref() == Some(&target)),
            "v{version} audit of {target}"
        );
    }

    if version >= 2 {
        let key_file = dir.join(MASTER_KEY_FILE);
        let keys = ArchiveKeys::open(KeySource::File(key_file.clone()), &db).unwrap();
        assert_eq!(keys.current_key_id(), MasterKey::load(&key_file).unwrap().id());
        for c in spec::CONVERSATIONS {
            assert_transcript(&keys.export(&db, c.id, &Default::default()).unwrap(), c);
        }
        // Recordings (version 5): the group's policy, and the sealed recording, exported whole.
        let conv = spec::CONVERSATIONS[0].id;
        let recordings = recording::list(&db, conv).unwrap();
        if version >= 5 {
            let exported = recording::export(&db, &keys, conv, None, &Default::default()).unwrap();
            assert!(exported.complete, "v{version} recording complete");
            assert_eq!(exported.webm, spec::RECORDING_CHUNKS.concat(), "v{version} recording");
            assert_eq!(recordings.len(), 1);
        } else {
            assert!(recordings.is_empty());
        }
    }
    for g in db.list_groups().unwrap() {
        let want = match spec::RECORDED_GROUP {
            (name, policy) if version >= 5 && g.name == name => policy,
            _ => "off",
        };
        assert_eq!(g.recording.as_str(), want, "v{version} recording policy of {}", g.name);
    }
}

#[tokio::test]
async fn every_schema_version_has_a_fixture_whose_rows_survive_the_upgrade() {
    for version in 1..=MIGRATIONS.len() {
        let tmp = copy_fixture(version);
        let dir = tmp.path();
        assert_eq!(raw_version(dir), version as i64, "the fixture is at its version");
        assert_rows_survived(dir, version);

        // The real server starts on the upgraded database: no new admin, the users log in over HTTPS.
        let server = Server::start(common::test_config(dir)).await.unwrap();
        assert!(
            server.admin_bootstrap().is_none(),
            "v{version}: the fixture's admin was kept"
        );
        let client = || common::Client::new(server.local_addr(), server.cert_path());
        for u in spec::USERS {
            let r = client().login(u.username, u.password).await;
            let want = if u.disabled { 401 } else { 200 };
            assert_eq!(r.status, want, "v{version} login of {}: {}", u.username, r.text());
        }
        if version >= 2 {
            for c in spec::CONVERSATIONS {
                let t = server.state().archive.export(c.id, Default::default()).await.unwrap();
                assert_transcript(&t, c);
            }
        }
        tokio::time::timeout(common::IO_TIMEOUT, server.shutdown())
            .await
            .unwrap()
            .unwrap();
        if version >= 2 {
            // The visitor digests survived too: erasing one visitor finds their conversation.
            let db = Db::open(dir).unwrap();
            for c in spec::CONVERSATIONS {
                let visitor = Redacted::new(c.visitor.to_string());
                assert_eq!(archive::purge_visitor(&db, &visitor, "test").unwrap(), 1, "{}", c.id);
            }
        }
    }
}

#[tokio::test]
async fn a_database_newer_than_the_code_is_refused_and_left_untouched() {
    let newest = MIGRATIONS.len();
    let tmp = copy_fixture(newest);
    let dir = tmp.path();
    let future = newest as i64 + 1;
    rusqlite::Connection::open(dir.join(DB_FILE))
        .unwrap()
        .pragma_update(None, "user_version", future)
        .unwrap();
    let expected = format!("database schema version {future} is newer than this program knows ({newest})");

    let err = Db::open(dir).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, known } if found == future && known == newest),
        "{err:?}"
    );
    assert_eq!(err.to_string(), expected);

    let err = Server::start(common::test_config(dir)).await.unwrap_err();
    assert!(
        matches!(err, ServerError::Store(StoreError::SchemaTooNew { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains(&expected), "{err}");

    let out = common::process::output_of(
        std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"))
            .arg("--data-dir")
            .arg(dir)
            .args(["user", "list"])
            .env_remove("RELAYDESK_DATA_DIR")
            .env_remove("RELAYDESK_CONFIG"),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&expected), "{stderr}");

    // Nothing was changed: the version and the rows are as the newer release left them.
    assert_eq!(raw_version(dir), future);
    let users: i64 = rusqlite::Connection::open(dir.join(DB_FILE))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, spec::USERS.len() as i64);
}
