//! Recordings at rest with a real database and key file: a crash leaves a recording that exports up to its
//! last sealed chunk; a cut file of a closed recording is refused; rotation re-wraps recording keys; erasing
//! an archived conversation erases its recordings (row, key and file).
#![allow(clippy::unwrap_used)]

use std::fs::File;

use super::*;
use crate::archive::{ArchivedParticipant, ConversationRecord, KeySource, rotate_master_key};
use crate::masking::Redacted;
use crate::store::Db;
use crate::store::prelude::*;

fn open(dir: &Path) -> (Db, ArchiveKeys) {
    let db = Db::open(dir).unwrap();
    let keys = ArchiveKeys::open(KeySource::File(dir.join("master.key")), &db).unwrap();
    (db, keys)
}

fn audit(action: &str) -> AuditEvent {
    AuditEvent {
        actor: Some("test".into()),
        action: action.into(),
        ..Default::default()
    }
}

/// Begins a recording of `conv` and writes `chunks` sealed chunks of known bytes; returns it and the writer.
fn record(db: &Db, keys: &ArchiveKeys, conv: &str, chunks: &[&[u8]]) -> (String, sealed::SealedWriter<File>) {
    let new = begin(db, keys, conv, 1_000, &audit("recording.start")).unwrap();
    let file = File::create_new(&new.path).unwrap();
    let mut w = sealed::SealedWriter::new(&new.key, &new.id, file).unwrap();
    for c in chunks {
        w.write(c).unwrap();
        w.seal_chunk().unwrap();
    }
    (new.id, w)
}

#[test]
fn a_crash_exports_up_to_the_last_sealed_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (db, keys) = open(dir.path());
    let (id, mut w) = record(&db, &keys, "42", &[b"first second ", b"second second "]);
    // Buffered but never sealed: lost with the crash.
    w.write(b"never sealed").unwrap();
    drop(w);
    drop(db);
    // The restart.
    let (db, keys) = open(dir.path());
    assert_eq!(mark_interrupted(&db).unwrap(), 1);
    let listed = list(&db, "42").unwrap();
    assert_eq!(listed[0].state, RecordingState::Interrupted);
    let out = export(&db, &keys, "42", None, &audit("recording.export")).unwrap();
    assert_eq!(out.info.id, id);
    assert!(!out.complete);
    assert_eq!(out.webm, b"first second second second ");
    let audits = db.recent_audit(5).unwrap();
    assert!(audits.iter().any(|a| a.action == "recording.export"));
}

#[test]
fn a_cut_file_of_a_closed_recording_is_refused_and_a_whole_one_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (db, keys) = open(dir.path());
    let (id, w) = record(&db, &keys, "7", &[b"aaaa", b"bbbb"]);
    let (_, chunks) = w.finish().unwrap();
    finish(&db, &id, chunks, 2_000, &audit("recording.stop")).unwrap();
    let out = export(&db, &keys, "7", Some(&id), &audit("recording.export")).unwrap();
    assert!(out.complete);
    assert_eq!(out.webm, b"aaaabbbb");
    // Cut off the final chunk (20 bytes: its length and the tag of an empty plaintext).
    let path = dir.path().join(DIR).join(format!("{id}.{EXT}"));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
    assert!(matches!(
        export(&db, &keys, "7", None, &audit("recording.export")),
        Err(RecordingError::Truncated(_))
    ));
    assert!(matches!(
        export(&db, &keys, "8", None, &audit("recording.export")),
        Err(RecordingError::NotFound(_))
    ));
}

#[test]
fn rotation_rewraps_and_erasure_removes_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let (db, keys) = open(dir.path());
    let (id, w) = record(&db, &keys, "9", &[b"voice"]);
    let (_, chunks) = w.finish().unwrap();
    finish(&db, &id, chunks, 2_000, &audit("recording.stop")).unwrap();
    let report = rotate_master_key(&db, &dir.path().join("master.key"), "test").unwrap();
    assert!(report.rewrapped >= 1);
    drop(keys);
    let keys = ArchiveKeys::open(KeySource::File(dir.path().join("master.key")), &db).unwrap();
    let out = export(&db, &keys, "9", None, &audit("recording.export")).unwrap();
    assert_eq!(out.webm, b"voice");
    // Archive the conversation, then erase it by retention: its recording goes too.
    let record = ConversationRecord {
        id: "9".into(),
        group: "sales".into(),
        site_key_id: "pk_1".into(),
        visitor_id: Redacted::new("v-1".to_string()),
        participants: vec![ArchivedParticipant::visitor("Visitor", 1)],
        started_at: 1,
        ended_at: 2,
        messages: vec![],
    };
    keys.store_conversation(&db, &record).unwrap();
    let path = dir.path().join(DIR).join(format!("{id}.{EXT}"));
    assert!(path.exists());
    assert_eq!(crate::archive::purge_ended_before(&db, 10, "test").unwrap(), 1);
    assert!(!path.exists());
    assert!(list(&db, "9").unwrap().is_empty());
}
