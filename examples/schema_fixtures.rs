//! Writes the schema fixture of one version: `cargo run --example schema_fixtures -- N` creates
//! `tests/fixtures/schema/vN/` holding `relaydesk.db` (the migrations up to N, then the rows of
//! `tests/fixtures/schema/spec.rs` written through the store and archive code) and, from version 2 on,
//! the `master.key` that wraps its archived conversations.
//!
//! Run it right after adding a migration, for the new version, and commit the directory. Never regenerate an
//! older version: a fixture is the database as that release wrote it, and the code of later releases may
//! write it differently. An existing directory is refused.
#![allow(clippy::print_stdout)]

#[path = "../tests/fixtures/schema/spec.rs"]
mod spec;

use relaydesk_signalling::store::prelude::*;
use std::error::Error;
use std::path::PathBuf;

use relaydesk_signalling::archive::{ArchiveKeys, KeySource, MASTER_KEY_FILE};
use relaydesk_signalling::password::hash_password;
use relaydesk_signalling::recording::{self, sealed::SealedWriter};
use relaydesk_signalling::store::{AuditEvent, DB_FILE, Db, NewUser, UserUpdate};
use relaydesk_signalling::token::hash_token;

fn audit(action: &str, target: &str) -> AuditEvent {
    AuditEvent {
        actor: Some("admin".into()),
        action: action.into(),
        target: Some(target.into()),
        ..Default::default()
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let version: usize = std::env::args()
        .nth(1)
        .ok_or("usage: schema_fixtures VERSION")?
        .parse()?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/schema/v{version}"));
    if dir.exists() {
        return Err(format!("{} exists; fixtures are never regenerated", dir.display()).into());
    }
    let db = Db::open_at_version(&dir, version)?;
    for g in spec::GROUPS {
        db.create_group(g, audit("group.create", &format!("group:{g}")))?;
    }
    for u in spec::USERS {
        let user = db.create_user(
            NewUser {
                username: u.username.into(),
                display_name: u.display_name.into(),
                role: u.role.parse()?,
                groups: u.groups.iter().map(|g| g.to_string()).collect(),
                max_conversations: u.max_conversations,
                password_hash: hash_password(u.password)?,
            },
            audit("user.create", &format!("user:{}", u.username)),
        )?;
        if let Some(token) = u.session {
            db.create_session(&hash_token(token), user.id, spec::WRITTEN_AT)?;
        }
        if u.disabled {
            let update = UserUpdate {
                disabled: Some(true),
                ..Default::default()
            };
            db.update_user(user.id, update, audit("user.disable", &format!("user:{}", u.username)))?;
        }
    }
    for k in spec::SITE_KEYS {
        let origins: Vec<String> = k.origins.iter().map(|o| o.to_string()).collect();
        db.create_site_key(k.key, k.group, &origins, k.label, audit("key.create", k.key))?;
        if k.revoked {
            db.revoke_site_key(k.key, audit("key.revoke", k.key))?;
        }
    }
    let (actor, action, target, client_addr, detail) = spec::AUDIT_ROW;
    db.audit(AuditEvent {
        actor: Some(actor.into()),
        action: action.into(),
        target: Some(target.into()),
        client_addr: Some(client_addr.into()),
        detail: Some(detail.into()),
    })?;
    if version >= 2 {
        let keys = ArchiveKeys::open(KeySource::File(dir.join(MASTER_KEY_FILE)), &db)?;
        for c in spec::CONVERSATIONS {
            let record = spec::record(c);
            for (m, (_, _, archived)) in record.messages.iter().zip(c.messages) {
                if m.body.as_str() != *archived {
                    return Err(format!("spec.rs expects {archived:?}, the masker gives {:?}", m.body.as_str()).into());
                }
            }
            keys.store_conversation(&db, &record)?;
        }
    }
    if version >= 5 {
        let (group, policy) = spec::RECORDED_GROUP;
        db.set_group_recording(group, policy.parse()?, audit("group.recording", group))?;
        let keys = ArchiveKeys::open(KeySource::File(dir.join(MASTER_KEY_FILE)), &db)?;
        let conv = spec::CONVERSATIONS[0].id;
        let new = recording::begin(
            &db,
            &keys,
            conv,
            spec::WRITTEN_AT * 1000,
            &audit("recording.start", conv),
        )?;
        let mut w = SealedWriter::new(&new.key, &new.id, std::fs::File::create_new(&new.path)?)?;
        for chunk in spec::RECORDING_CHUNKS {
            w.write(chunk)?;
            w.seal_chunk()?;
        }
        let (_, chunks) = w.finish()?;
        recording::finish(
            &db,
            &new.id,
            chunks,
            spec::WRITTEN_AT * 1000 + 2000,
            &audit("recording.stop", conv),
        )?;
    }
    // Closing the only connection checkpoints the WAL into the database file and removes it.
    drop(db);
    for leftover in ["-wal", "-shm"] {
        if dir.join(format!("{DB_FILE}{leftover}")).exists() {
            return Err(format!("{DB_FILE}{leftover} left behind").into());
        }
    }
    println!("wrote {}", dir.display());
    Ok(())
}
