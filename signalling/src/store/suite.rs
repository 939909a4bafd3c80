//! The store's test suite, written against the traits of [`crate::store::traits`] only, so that every
//! backend runs the same tests: `storage_suite!(|| Box::new(backend()))` in the backend's tests generates one
//! `#[test]` per function here; each gets a fresh, empty, migrated store.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;

/// A fresh store.
pub(crate) type Make<'a> = &'a dyn Fn() -> Box<dyn Storage>;

/// Generates the suite's tests for a backend: `storage_suite!(make)` with `make: fn() -> Box<dyn Storage>`.
macro_rules! storage_suite {
    ($make:expr) => {
        $crate::store::suite::storage_suite!(@tests $make;
            users_groups_keys_and_sessions, last_admin_is_protected, sessions_expire_and_purge,
            audit_is_bounded_and_newest_first, archive_rows_round_trip, archive_insert_replaces_the_live_copy,
            purge_erases_conversations_and_their_recordings, writes_check_the_recorded_master_key,
            live_batches_are_all_or_nothing, recordings_rows, rotation_swaps_every_key_or_none);
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::store::suite::$name(&$make);
            }
        )*
    };
}
pub(crate) use storage_suite;

fn audit(action: &str) -> AuditEvent {
    AuditEvent {
        actor: Some("test".into()),
        action: action.into(),
        ..Default::default()
    }
}

fn new_user(name: &str, role: Role, groups: &[&str]) -> NewUser {
    NewUser {
        username: name.into(),
        display_name: String::new(),
        role,
        groups: groups.iter().map(|s| s.to_string()).collect(),
        max_conversations: 4,
        password_hash: "$argon2id$x".into(),
    }
}

pub(crate) fn users_groups_keys_and_sessions(make: Make<'_>) {
    let db = make();
    db.create_group("sales", audit("group.create")).unwrap();
    assert!(matches!(
        db.create_group("Sales", audit("x")),
        Err(StoreError::Duplicate { .. })
    ));
    let u = db
        .create_user(new_user("o'brien%ü", Role::Agent, &["sales"]), audit("user.create"))
        .unwrap();
    assert_eq!(u.groups, vec!["sales".to_string()]);
    assert_eq!(u.display_name, "o'brien%ü");
    assert_eq!(
        db.user_by_name("O'BRIEN%ü").unwrap().id,
        u.id,
        "names compare case-insensitively"
    );
    assert!(matches!(
        db.create_user(new_user("O'BRIEN%ü", Role::Agent, &[]), audit("x")),
        Err(StoreError::Duplicate { what: "user", .. })
    ));
    assert!(matches!(
        db.create_user(new_user("x", Role::Agent, &["nope"]), audit("x")),
        Err(StoreError::NotFound { .. })
    ));
    assert!(!db.user_exists("x").unwrap(), "failed creation rolled back");
    assert!(matches!(
        db.create_user(new_user(&"a".repeat(65), Role::Agent, &[]), audit("x")),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        db.create_user(new_user("a b", Role::Agent, &[]), audit("x")),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(db.group("SALES").unwrap().members, 1);
    let g = db
        .set_group_recording("sales", RecordingPolicy::OnRequest, audit("group.recording"))
        .unwrap();
    assert_eq!(g.recording, RecordingPolicy::OnRequest);

    let limits = SessionLimits {
        idle: Duration::from_secs(100),
        absolute: Duration::from_secs(1000),
    };
    let h = [7u8; 32];
    db.create_session(&h, u.id, 10).unwrap();
    assert_eq!(db.touch_session(&h, 50, limits).unwrap().map(|u| u.id), Some(u.id));
    assert!(db.touch_session(&h, 200, limits).unwrap().is_none(), "idle expiry");
    assert!(db.touch_session(&h, 60, limits).unwrap().is_none(), "deleted on expiry");
    db.create_session(&h, u.id, 10).unwrap();
    for t in (90..1000).step_by(90) {
        assert!(db.touch_session(&h, t, limits).unwrap().is_some());
    }
    assert!(db.touch_session(&h, 1020, limits).unwrap().is_none(), "absolute expiry");
    db.create_session(&h, u.id, 10).unwrap();
    db.update_user(
        u.id,
        UserUpdate {
            disabled: Some(true),
            ..Default::default()
        },
        audit("user.disable"),
    )
    .unwrap();
    assert!(db.touch_session(&h, 11, limits).unwrap().is_none(), "disabled user");

    let k = db
        .create_site_key(
            "pk_1",
            "sales",
            &["https://b".into(), "https://a".into()],
            "",
            audit("key.create"),
        )
        .unwrap();
    assert_eq!(k.origins, vec!["https://a".to_string(), "https://b".to_string()]);
    assert!(matches!(
        db.delete_group("sales", audit("x")),
        Err(StoreError::InUse(_))
    ));
    let k = db.revoke_site_key("pk_1", audit("key.revoke")).unwrap();
    assert!(k.revoked_at.is_some());
    assert_eq!(
        db.revoke_site_key("pk_1", audit("key.revoke")).unwrap().revoked_at,
        k.revoked_at
    );
    assert!(matches!(
        db.revoke_site_key("pk_2", audit("x")),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(db.list_site_keys().unwrap().len(), 1);
    assert!(db.recent_audit(100).unwrap().iter().any(|r| r.action == "key.revoke"));

    db.create_group("empty", audit("group.create")).unwrap();
    db.delete_group("empty", audit("group.delete")).unwrap();
    assert!(matches!(db.group("empty"), Err(StoreError::NotFound { .. })));
}

pub(crate) fn last_admin_is_protected(make: Make<'_>) {
    let db = make();
    assert!(!db.has_admin().unwrap());
    let a = db.create_user(new_user("admin", Role::Admin, &[]), audit("x")).unwrap();
    assert!(db.has_admin().unwrap());
    let r = db.update_user(
        a.id,
        UserUpdate {
            disabled: Some(true),
            ..Default::default()
        },
        audit("x"),
    );
    assert!(matches!(r, Err(StoreError::LastAdmin)));
    let r = db.update_user(
        a.id,
        UserUpdate {
            role: Some(Role::Agent),
            ..Default::default()
        },
        audit("x"),
    );
    assert!(matches!(r, Err(StoreError::LastAdmin)));
    assert!(!db.user(a.id).unwrap().disabled, "rolled back");
    db.create_user(new_user("admin2", Role::Admin, &[]), audit("x"))
        .unwrap();
    db.update_user(
        a.id,
        UserUpdate {
            disabled: Some(true),
            ..Default::default()
        },
        audit("x"),
    )
    .unwrap();
    let names: Vec<String> = db.list_users().unwrap().into_iter().map(|u| u.username).collect();
    assert_eq!(names, ["admin", "admin2"]);
}

pub(crate) fn sessions_expire_and_purge(make: Make<'_>) {
    let db = make();
    let u = db.create_user(new_user("a", Role::Agent, &[]), audit("x")).unwrap();
    let limits = SessionLimits {
        idle: Duration::from_secs(100),
        absolute: Duration::from_secs(1000),
    };
    db.create_session(&[1; 32], u.id, 10).unwrap();
    db.create_session(&[2; 32], u.id, 500).unwrap();
    assert_eq!(db.purge_sessions(520, limits).unwrap(), 1, "the idle one");
    assert!(db.touch_session(&[2; 32], 520, limits).unwrap().is_some());
    db.delete_session(&[2; 32]).unwrap();
    assert!(db.touch_session(&[2; 32], 521, limits).unwrap().is_none());
    db.delete_session(&[3; 32]).unwrap();
    // A new password ends the sessions.
    db.create_session(&[4; 32], u.id, 600).unwrap();
    db.update_user(
        u.id,
        UserUpdate {
            password_hash: Some("$argon2id$y".into()),
            ..Default::default()
        },
        audit("x"),
    )
    .unwrap();
    assert!(db.touch_session(&[4; 32], 601, limits).unwrap().is_none());
    assert_eq!(db.credentials("a").unwrap().unwrap().password_hash, "$argon2id$y");
}

pub(crate) fn audit_is_bounded_and_newest_first(make: Make<'_>) {
    let db = make();
    db.audit(audit("first")).unwrap();
    db.audit(AuditEvent {
        actor: Some("x".repeat(500)),
        action: "second".into(),
        detail: Some("d".into()),
        ..Default::default()
    })
    .unwrap();
    let all = db.recent_audit(10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].action, "second");
    assert_eq!(all[0].actor.as_ref().map(|a| a.chars().count()), Some(MAX_AUDIT_CHARS));
    assert_eq!(all[0].detail.as_deref(), Some("d"));
    assert!(all[0].id > all[1].id);
    assert_eq!(db.recent_audit(1).unwrap().len(), 1);
}

fn archived(id: &str, visitor: &[u8], ended_at: i64, key_id: &str) -> ArchivedConversationRow {
    ArchivedConversationRow {
        id: id.into(),
        group: "sales".into(),
        site_key_id: "pk_1".into(),
        visitor_digest: visitor.to_vec(),
        started_at: 1,
        ended_at,
        master_key_id: key_id.into(),
        wrapped_key: vec![9; 40],
        archived_at: 5,
        participants: vec![
            ParticipantRow {
                role: "visitor".into(),
                user_id: None,
                display_name: "Visitor".into(),
                joined_at: Some(1),
                left_at: None,
            },
            ParticipantRow {
                role: "agent".into(),
                user_id: Some(3),
                display_name: "Alice".into(),
                joined_at: Some(2),
                left_at: Some(3),
            },
        ],
        messages: vec![
            MessageRow {
                seq: 2,
                author: "agent".into(),
                author_user_id: Some(3),
                sent_at: 3,
                body: vec![2, 2],
                kind: "call_text".into(),
            },
            MessageRow {
                seq: 1,
                author: "visitor".into(),
                author_user_id: None,
                sent_at: 2,
                body: vec![1],
                kind: "chat".into(),
            },
        ],
    }
}

pub(crate) fn archive_rows_round_trip(make: Make<'_>) {
    let db = make();
    assert_eq!(db.master_key_id().unwrap(), None);
    db.set_master_key_id("k1").unwrap();
    db.set_master_key_id("k2").unwrap();
    assert_eq!(db.master_key_id().unwrap().as_deref(), Some("k2"));
    let row = archived("c1", b"v1", 10, "k2");
    db.insert_archived(&row).unwrap();
    assert!(matches!(db.insert_archived(&row), Err(StoreError::Duplicate { .. })));
    let mut back = db.read_archived("c1").unwrap().unwrap();
    assert_eq!(
        back.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2],
        "by seq"
    );
    back.messages.sort_by_key(|m| -m.seq);
    assert_eq!(back, row);
    assert_eq!(db.archived_group("c1").unwrap().as_deref(), Some("sales"));
    assert_eq!(db.archived_group("c2").unwrap(), None);
    assert!(db.read_archived("c2").unwrap().is_none());
    assert_eq!(db.archived_under_key("k2").unwrap(), 1);
    assert_eq!(db.archived_under_key("k1").unwrap(), 0);
}

fn live_create<'a>(id: u64, key_id: &'a str, hashes: &'a [u8; 32]) -> LiveChange<'a> {
    LiveChange::Create(LiveCreate {
        id,
        group: "sales",
        site_key: "pk_1",
        origin: "https://shop.example",
        started_at_ms: 5,
        resume_hash: hashes,
        files_hash: hashes,
        master_key_id: key_id,
        wrapped_key: b"wrapped",
        state: b"state",
    })
}

pub(crate) fn archive_insert_replaces_the_live_copy(make: Make<'_>) {
    let db = make();
    db.set_master_key_id("k").unwrap();
    db.live_apply(&[live_create(42, "k", &[1; 32])]).unwrap();
    assert!(db.live_exists(42).unwrap());
    db.insert_archived(&archived("42", b"v", 10, "k")).unwrap();
    assert!(!db.live_exists(42).unwrap(), "archived and live at once");
    assert_eq!(db.live_count().unwrap(), 0);
}

pub(crate) fn purge_erases_conversations_and_their_recordings(make: Make<'_>) {
    let db = make();
    db.set_master_key_id("k").unwrap();
    db.insert_archived(&archived("old", b"v1", 10, "k")).unwrap();
    db.insert_archived(&archived("new", b"v1", 1_000, "k")).unwrap();
    db.insert_archived(&archived("other", b"v2", 10_000, "k")).unwrap();
    db.insert_recording(&recording_row("old", 1, "k"), &audit("recording.start"))
        .unwrap();
    let out = db
        .purge_archived(&PurgeFilter::EndedBefore(100), audit("archive.purge"))
        .unwrap();
    assert_eq!(
        out,
        PurgeOutcome {
            conversations: 1,
            recording_files: vec!["old-1.rdrec".into()],
        }
    );
    assert!(db.read_archived("old").unwrap().is_none());
    assert!(db.list_recordings("old").unwrap().is_empty());
    let a = &db.recent_audit(1).unwrap()[0];
    assert_eq!(a.action, "archive.purge");
    assert_eq!(a.detail.as_deref(), Some("1 conversations erased (1 recordings)"));
    let out = db
        .purge_archived(&PurgeFilter::Visitor(b"v1".to_vec()), audit("archive.purge_visitor"))
        .unwrap();
    assert_eq!(out.conversations, 1);
    assert!(db.read_archived("new").unwrap().is_none());
    assert!(db.read_archived("other").unwrap().is_some());
}

fn recording_row(conversation: &str, n: u32, key_id: &str) -> NewRecordingRow {
    NewRecordingRow {
        id: format!("{conversation}-{n}"),
        conversation_id: conversation.into(),
        file: format!("{conversation}-{n}.rdrec"),
        started_at: i64::from(n),
        master_key_id: key_id.into(),
        wrapped_key: vec![n as u8; 8],
    }
}

pub(crate) fn writes_check_the_recorded_master_key(make: Make<'_>) {
    let db = make();
    db.set_master_key_id("new").unwrap();
    assert!(matches!(
        db.insert_archived(&archived("c", b"v", 1, "old")),
        Err(StoreError::MasterKeyChanged)
    ));
    assert!(db.read_archived("c").unwrap().is_none());
    assert!(matches!(
        db.live_apply(&[live_create(1, "new", &[0; 32]), live_create(2, "old", &[0; 32])]),
        Err(StoreError::MasterKeyChanged)
    ));
    assert_eq!(db.live_count().unwrap(), 0, "nothing of the batch written");
    assert!(matches!(
        db.insert_recording(&recording_row("c", 1, "old"), &audit("recording.start")),
        Err(StoreError::MasterKeyChanged)
    ));
    assert_eq!(db.recording_count("c").unwrap(), 0);
}

pub(crate) fn live_batches_are_all_or_nothing(make: Make<'_>) {
    let db = make();
    db.set_master_key_id("k").unwrap();
    let h = [7u8; 32];
    db.live_apply(&[
        live_create(41, "k", &h),
        LiveChange::Message {
            id: 41,
            seq: 1,
            body: b"one",
        },
        LiveChange::Message {
            id: 41,
            seq: 2,
            body: b"two",
        },
        LiveChange::Message {
            id: 41,
            seq: 1,
            body: b"one, amended",
        },
        LiveChange::File {
            id: 41,
            file_id: "f1",
            sealed_key: b"fk",
        },
        LiveChange::Tokens {
            id: 41,
            resume_hash: &[9; 32],
            files_hash: &[10; 32],
        },
        LiveChange::Routing {
            id: 41,
            group: "billing",
            agent: Some(3),
        },
        LiveChange::State { id: 41, state: b"s2" },
    ])
    .unwrap();
    // A message of an unknown conversation fails the whole batch.
    assert!(
        db.live_apply(&[
            LiveChange::Message {
                id: 41,
                seq: 3,
                body: b"three",
            },
            LiveChange::Message {
                id: 999,
                seq: 1,
                body: b"x",
            },
        ])
        .is_err()
    );
    db.live_apply(&[LiveChange::Ended {
        id: 41,
        at_ms: 77,
        reason: "visitor_left",
    }])
    .unwrap();
    let rows = db.live_load().unwrap();
    assert_eq!(rows.len(), 1);
    let c = &rows[0];
    assert_eq!((c.id, c.group.as_str(), c.agent), (41, "billing", Some(3)));
    assert_eq!((c.resume_hash, c.files_hash), ([9; 32], [10; 32]));
    assert_eq!(
        (c.site_key.as_str(), c.origin.as_str(), c.started_at_ms),
        ("pk_1", "https://shop.example", 5)
    );
    assert_eq!(
        (c.wrapped_key.as_slice(), c.state.as_slice()),
        (&b"wrapped"[..], &b"s2"[..])
    );
    assert_eq!(c.ended, Some((77, "visitor_left".into())));
    assert_eq!(c.messages, vec![(1, b"one, amended".to_vec()), (2, b"two".to_vec())]);
    assert_eq!(c.files, vec![("f1".to_string(), b"fk".to_vec())]);
    assert_eq!(db.live_count().unwrap(), 1);
    assert!(!db.live_exists(40).unwrap());
}

pub(crate) fn recordings_rows(make: Make<'_>) {
    let db = make();
    db.set_master_key_id("k").unwrap();
    for n in 1..=2 {
        db.insert_recording(&recording_row("c", n, "k"), &audit("recording.start"))
            .unwrap();
    }
    assert!(matches!(
        db.insert_recording(&recording_row("c", 2, "k"), &audit("x")),
        Err(StoreError::Duplicate { .. })
    ));
    assert_eq!(db.recording_count("c").unwrap(), 2);
    db.finish_recording("c-1", 5, 9, &audit("recording.stop")).unwrap();
    assert_eq!(db.recent_audit(1).unwrap()[0].action, "recording.stop");
    assert_eq!(db.mark_recordings_interrupted().unwrap(), 1);
    let list = db.list_recordings("c").unwrap();
    let states: Vec<_> = list
        .iter()
        .map(|r| (r.id.as_str(), r.state, r.chunks, r.ended_at))
        .collect();
    assert_eq!(
        states,
        [
            ("c-1", RecordingState::Complete, 5, Some(9)),
            ("c-2", RecordingState::Interrupted, 0, None)
        ]
    );
    let latest = db.recording("c", None).unwrap().unwrap();
    assert_eq!((latest.info.id.as_str(), latest.file.as_str()), ("c-2", "c-2.rdrec"));
    assert_eq!(latest.wrapped_key, vec![2; 8]);
    assert_eq!(db.recording("c", Some("c-1")).unwrap().unwrap().info.chunks, 5);
    assert!(db.recording("c", Some("c-9")).unwrap().is_none());
    assert!(db.recording("d", None).unwrap().is_none());
}

pub(crate) fn rotation_swaps_every_key_or_none(make: Make<'_>) {
    let db = make();
    db.set_master_key_id("old").unwrap();
    db.insert_archived(&archived("1", b"v", 1, "old")).unwrap();
    db.live_apply(&[live_create(2, "old", &[0; 32])]).unwrap();
    db.insert_recording(&recording_row("1", 1, "old"), &audit("x")).unwrap();
    let mut rows = db.keys_not_under("new").unwrap();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let owners: Vec<_> = rows.iter().map(|r| (r.owner, r.id.as_str())).collect();
    assert_eq!(
        owners,
        [
            (KeyOwner::Archived, "1"),
            (KeyOwner::Recording, "1-1"),
            (KeyOwner::Live, "2")
        ]
    );
    let rewrapped: Vec<WrappedKeyRow> = rows
        .iter()
        .map(|r| WrappedKeyRow {
            wrapped_key: b"new".to_vec(),
            ..r.clone()
        })
        .collect();
    // A key wrapped under the old master key that the rotation did not see: refused, nothing changed.
    assert!(matches!(
        db.replace_wrapped_keys("new", &rewrapped[..2], audit("keys.rotate")),
        Err(StoreError::MasterKeyChanged)
    ));
    assert_eq!(db.master_key_id().unwrap().as_deref(), Some("old"));
    assert_eq!(db.keys_not_under("new").unwrap().len(), 3);
    db.replace_wrapped_keys("new", &rewrapped, audit("keys.rotate"))
        .unwrap();
    assert_eq!(db.master_key_id().unwrap().as_deref(), Some("new"));
    assert!(db.keys_not_under("new").unwrap().is_empty());
    assert_eq!(db.read_archived("1").unwrap().unwrap().wrapped_key, b"new");
    assert_eq!(db.live_load().unwrap()[0].wrapped_key, b"new");
    assert_eq!(db.recording("1", None).unwrap().unwrap().wrapped_key, b"new");
    assert_eq!(db.recent_audit(1).unwrap()[0].action, "keys.rotate");
}
