//! Live conversations at rest and recording rows in PostgreSQL.

use super::{Pg, R, check_key_id, from_sql_int, is_unique_violation, sql_int, write_audit};
use crate::store::{
    AuditEvent, LiveChange, LiveConversationRow, LiveStore, NewRecordingRow, RecordingInfo, RecordingRow,
    RecordingState, RecordingStore, StoreResult, duplicate,
};

fn hash_of(bytes: Vec<u8>) -> [u8; 32] {
    <[u8; 32]>::try_from(bytes.as_slice()).unwrap_or([0; 32])
}

impl LiveStore for Pg {
    fn live_apply(&self, changes: &[LiveChange<'_>]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let mut tx = c.transaction()?;
            for change in changes {
                match *change {
                    LiveChange::Create(n) => {
                        check_key_id(&mut tx, n.master_key_id)?;
                        tx.execute(
                            "INSERT INTO live_conversations (id, group_name, site_key_id, origin, started_at, agent_id,
                                 resume_hash, files_hash, master_key_id, wrapped_key, state)
                             VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $9, $10)",
                            &[
                                &sql_int(n.id),
                                &n.group,
                                &n.site_key,
                                &n.origin,
                                &sql_int(n.started_at_ms),
                                &&n.resume_hash[..],
                                &&n.files_hash[..],
                                &n.master_key_id,
                                &n.wrapped_key,
                                &n.state,
                            ],
                        )?;
                    }
                    LiveChange::Tokens {
                        id,
                        resume_hash,
                        files_hash,
                    } => {
                        tx.execute(
                            "UPDATE live_conversations SET resume_hash = $2, files_hash = $3 WHERE id = $1",
                            &[&sql_int(id), &&resume_hash[..], &&files_hash[..]],
                        )?;
                    }
                    LiveChange::Routing { id, group, agent } => {
                        tx.execute(
                            "UPDATE live_conversations SET group_name = $2, agent_id = $3 WHERE id = $1",
                            &[&sql_int(id), &group, &agent],
                        )?;
                    }
                    LiveChange::State { id, state } => {
                        tx.execute(
                            "UPDATE live_conversations SET state = $2 WHERE id = $1",
                            &[&sql_int(id), &state],
                        )?;
                    }
                    LiveChange::Message { id, seq, body } => {
                        tx.execute(
                            "INSERT INTO live_messages (conversation_id, seq, body) VALUES ($1, $2, $3)
                             ON CONFLICT (conversation_id, seq) DO UPDATE SET body = excluded.body",
                            &[&sql_int(id), &sql_int(seq), &body],
                        )?;
                    }
                    LiveChange::File {
                        id,
                        file_id,
                        sealed_key,
                    } => {
                        tx.execute(
                            "INSERT INTO live_files (conversation_id, file_id, sealed_key) VALUES ($1, $2, $3)
                             ON CONFLICT (conversation_id, file_id) DO UPDATE SET sealed_key = excluded.sealed_key",
                            &[&sql_int(id), &file_id, &sealed_key],
                        )?;
                    }
                    LiveChange::Ended { id, at_ms, reason } => {
                        tx.execute(
                            "UPDATE live_conversations SET ended_at = $2, ended_reason = $3 WHERE id = $1",
                            &[&sql_int(id), &sql_int(at_ms), &reason],
                        )?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn live_load(&self) -> StoreResult<Vec<LiveConversationRow>> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "DELETE FROM live_conversations WHERE id::TEXT IN (SELECT id FROM archive_conversations)",
                &[],
            )?;
            let rows = tx.query(
                "SELECT id, group_name, site_key_id, origin, started_at, agent_id, resume_hash, files_hash,
                     wrapped_key, state, ended_at, ended_reason
                 FROM live_conversations ORDER BY id",
                &[],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let id: i64 = r.try_get(0)?;
                let ended = match (r.try_get::<_, Option<i64>>(10)?, r.try_get::<_, Option<String>>(11)?) {
                    (Some(at), Some(reason)) => Some((from_sql_int(at), reason)),
                    _ => None,
                };
                let messages = tx
                    .query(
                        "SELECT seq, body FROM live_messages WHERE conversation_id = $1 ORDER BY seq",
                        &[&id],
                    )?
                    .iter()
                    .map(|m| Ok((from_sql_int(m.try_get(0)?), m.try_get(1)?)))
                    .collect::<R<_>>()?;
                let files = tx
                    .query(
                        "SELECT file_id, sealed_key FROM live_files WHERE conversation_id = $1 ORDER BY file_id",
                        &[&id],
                    )?
                    .iter()
                    .map(|f| Ok((f.try_get(0)?, f.try_get(1)?)))
                    .collect::<R<_>>()?;
                out.push(LiveConversationRow {
                    id: from_sql_int(id),
                    group: r.try_get(1)?,
                    site_key: r.try_get(2)?,
                    origin: r.try_get(3)?,
                    started_at_ms: from_sql_int(r.try_get(4)?),
                    agent: r.try_get(5)?,
                    resume_hash: hash_of(r.try_get(6)?),
                    files_hash: hash_of(r.try_get(7)?),
                    wrapped_key: r.try_get(8)?,
                    state: r.try_get(9)?,
                    ended,
                    messages,
                    files,
                });
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn live_count(&self) -> StoreResult<u64> {
        self.with(|c| {
            let n: i64 = c
                .query_one("SELECT COUNT(*) FROM live_conversations", &[])?
                .try_get(0)?;
            Ok(from_sql_int(n))
        })
    }

    fn live_exists(&self, id: u64) -> StoreResult<bool> {
        self.with(|c| {
            Ok(
                c.query_opt("SELECT 1 FROM live_conversations WHERE id = $1", &[&sql_int(id)])?
                    .is_some(),
            )
        })
    }
}

fn info_of(r: &postgres::Row) -> R<RecordingInfo> {
    let state: String = r.try_get(4)?;
    let chunks: i32 = r.try_get(5)?;
    Ok(RecordingInfo {
        id: r.try_get(0)?,
        conversation_id: r.try_get(1)?,
        started_at: r.try_get(2)?,
        ended_at: r.try_get(3)?,
        state: RecordingState::parse(&state),
        chunks: u32::try_from(chunks).unwrap_or(0),
    })
}

impl RecordingStore for Pg {
    fn recording_count(&self, conversation: &str) -> StoreResult<u64> {
        self.with(|c| {
            let n: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM recordings WHERE conversation_id = $1",
                    &[&conversation],
                )?
                .try_get(0)?;
            Ok(from_sql_int(n))
        })
    }

    fn insert_recording(&self, row: &NewRecordingRow, audit: &AuditEvent) -> StoreResult<()> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            check_key_id(&mut tx, &row.master_key_id)?;
            let res = tx.execute(
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
            );
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(duplicate("recording", &row.id, 128).into());
                }
                r => r?,
            };
            write_audit(&mut tx, audit)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn finish_recording(&self, id: &str, chunks: u32, ended_at_ms: i64, audit: &AuditEvent) -> StoreResult<()> {
        let chunks = i32::try_from(chunks).unwrap_or(i32::MAX);
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE recordings SET state = 'complete', chunks = $1, ended_at = $2 WHERE id = $3",
                &[&chunks, &ended_at_ms, &id],
            )?;
            write_audit(&mut tx, audit)?;
            tx.commit()?;
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
            Ok(match row {
                Some(r) => Some(RecordingRow {
                    info: info_of(&r)?,
                    file: r.try_get(6)?,
                    wrapped_key: r.try_get(7)?,
                }),
                None => None,
            })
        })
    }
}
