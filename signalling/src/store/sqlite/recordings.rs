//! Recording rows in SQLite (migration 5; see [`crate::recording`]).

use rusqlite::{OptionalExtension as _, TransactionBehavior, params};

use super::{Db, check_key_id, is_unique_violation, write_audit};
use crate::store::{
    AuditEvent, NewRecordingRow, RecordingInfo, RecordingRow, RecordingState, RecordingStore, StoreResult, duplicate,
};

fn info_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordingInfo> {
    let state: String = r.get(4)?;
    Ok(RecordingInfo {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        started_at: r.get(2)?,
        ended_at: r.get(3)?,
        state: RecordingState::parse(&state),
        chunks: r.get(5)?,
    })
}

impl RecordingStore for Db {
    fn recording_count(&self, conversation: &str) -> StoreResult<u64> {
        self.with(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM recordings WHERE conversation_id = ?1",
                params![conversation],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn insert_recording(&self, row: &NewRecordingRow, audit: &AuditEvent) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            check_key_id(&tx, &row.master_key_id)?;
            let res = tx.execute(
                "INSERT INTO recordings (id, conversation_id, file, started_at, state, master_key_id, wrapped_key)
                 VALUES (?1, ?2, ?3, ?4, 'recording', ?5, ?6)",
                params![
                    row.id,
                    row.conversation_id,
                    row.file,
                    row.started_at,
                    row.master_key_id,
                    row.wrapped_key
                ],
            );
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(duplicate("recording", &row.id, 128).into());
                }
                r => r?,
            };
            write_audit(&tx, audit)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn finish_recording(&self, id: &str, chunks: u32, ended_at_ms: i64, audit: &AuditEvent) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE recordings SET state = 'complete', chunks = ?1, ended_at = ?2 WHERE id = ?3",
                params![chunks, ended_at_ms, id],
            )?;
            write_audit(&tx, audit)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn mark_recordings_interrupted(&self) -> StoreResult<usize> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE recordings SET state = 'interrupted' WHERE state = 'recording'",
                [],
            )?)
        })
    }

    fn list_recordings(&self, conversation: &str) -> StoreResult<Vec<RecordingInfo>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, conversation_id, started_at, ended_at, state, chunks FROM recordings
                 WHERE conversation_id = ?1 ORDER BY started_at, id",
            )?;
            let rows = stmt.query_map(params![conversation], info_of)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn recording(&self, conversation: &str, which: Option<&str>) -> StoreResult<Option<RecordingRow>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT id, conversation_id, started_at, ended_at, state, chunks, file, wrapped_key FROM recordings
                 WHERE conversation_id = ?1 AND (?2 IS NULL OR id = ?2) ORDER BY started_at DESC, id DESC LIMIT 1",
                params![conversation, which],
                |r| {
                    Ok(RecordingRow {
                        info: info_of(r)?,
                        file: r.get(6)?,
                        wrapped_key: r.get(7)?,
                    })
                },
            )
            .optional()?)
        })
    }
}
