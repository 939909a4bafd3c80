//! Recording rows in PostgreSQL (see [`crate::recording`]).

use postgres::Row;

use super::{PgStore, R, check_key_id, is_unique_violation, unsigned, write_audit};
use crate::store::{
    AuditEvent, NewRecordingRow, RecordingInfo, RecordingRow, RecordingState, RecordingStore, StoreError, StoreResult,
};

fn info_of(r: &Row) -> R<RecordingInfo> {
    let state: String = r.try_get(4)?;
    Ok(RecordingInfo {
        id: r.try_get(0)?,
        conversation_id: r.try_get(1)?,
        started_at: r.try_get(2)?,
        ended_at: r.try_get(3)?,
        state: RecordingState::parse(&state),
        chunks: unsigned(r.try_get(5)?),
    })
}

impl RecordingStore for PgStore {
    fn recording_count(&self, conversation: &str) -> StoreResult<u64> {
        self.with(|c| {
            let n: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM recordings WHERE conversation_id = $1",
                    &[&conversation],
                )?
                .try_get(0)?;
            Ok(unsigned(n))
        })
    }

    fn insert_recording(&self, row: &NewRecordingRow, audit: &AuditEvent) -> StoreResult<()> {
        self.write(|tx| {
            check_key_id(tx, &row.master_key_id)?;
            let res = tx
                .execute(
                    "INSERT INTO recordings (id, conversation_id, file, started_at, state, master_key_id, wrapped_key)
                     VALUES ($1, $2, $3, $4, 'recording', $5, $6)",
                    &[
                        &row.id,
                        &row.conversation_id,
                        &row.file,
                        &row.started_at,
                        &row.master_key_id,
                        &row.wrapped_key,
                    ],
                )
                .map_err(super::PgError::from);
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Duplicate {
                        what: "recording",
                        name: row.id.chars().take(128).collect(),
                    }
                    .into());
                }
                r => r?,
            };
            write_audit(tx, audit)?;
            Ok(())
        })
    }

    fn finish_recording(&self, id: &str, chunks: u32, ended_at_ms: i64, audit: &AuditEvent) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE recordings SET state = 'complete', chunks = $1, ended_at = $2 WHERE id = $3",
                &[&i64::from(chunks), &ended_at_ms, &id],
            )?;
            write_audit(tx, audit)?;
            Ok(())
        })
    }

    fn mark_recordings_interrupted(&self) -> StoreResult<usize> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE recordings SET state = 'interrupted' WHERE state = 'recording'",
                &[],
            )?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn list_recordings(&self, conversation: &str) -> StoreResult<Vec<RecordingInfo>> {
        self.with(|c| {
            c.query(
                "SELECT id, conversation_id, started_at, ended_at, state, chunks FROM recordings
                 WHERE conversation_id = $1 ORDER BY started_at, id",
                &[&conversation],
            )?
            .iter()
            .map(info_of)
            .collect()
        })
    }

    fn recording(&self, conversation: &str, which: Option<&str>) -> StoreResult<Option<RecordingRow>> {
        self.with(|c| {
            let row = c.query_opt(
                "SELECT id, conversation_id, started_at, ended_at, state, chunks, file, wrapped_key FROM recordings
                 WHERE conversation_id = $1 AND ($2::TEXT IS NULL OR id = $2) ORDER BY started_at DESC, id DESC LIMIT 1",
                &[&conversation, &which],
            )?;
            match row {
                Some(r) => Ok(Some(RecordingRow {
                    info: info_of(&r)?,
                    file: r.try_get(6)?,
                    wrapped_key: r.try_get(7)?,
                })),
                None => Ok(None),
            }
        })
    }
}
