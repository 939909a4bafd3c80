//! Live conversations at rest in SQLite (migration 3; see [`crate::live_store`]).

use rusqlite::{OptionalExtension as _, TransactionBehavior, params};

use super::{Db, check_key_id, sql_int};
use crate::store::{LiveChange, LiveConversationRow, LiveStore, StoreResult};

fn hash_of(bytes: Vec<u8>) -> [u8; 32] {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(&bytes);
    }
    out
}

impl LiveStore for Db {
    fn live_apply(&self, changes: &[LiveChange<'_>]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for change in changes {
                match *change {
                    LiveChange::Create(n) => {
                        check_key_id(&tx, n.master_key_id)?;
                        tx.execute(
                            "INSERT INTO live_conversations (id, group_name, site_key_id, origin, started_at, agent_id,
                                 resume_hash, files_hash, master_key_id, wrapped_key, state)
                             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?8, ?9, ?10)",
                            params![
                                sql_int(n.id),
                                n.group,
                                n.site_key,
                                n.origin,
                                sql_int(n.started_at_ms),
                                &n.resume_hash[..],
                                &n.files_hash[..],
                                n.master_key_id,
                                n.wrapped_key,
                                n.state
                            ],
                        )?;
                    }
                    LiveChange::Tokens {
                        id,
                        resume_hash,
                        files_hash,
                    } => {
                        tx.execute(
                            "UPDATE live_conversations SET resume_hash = ?2, files_hash = ?3 WHERE id = ?1",
                            params![sql_int(id), &resume_hash[..], &files_hash[..]],
                        )?;
                    }
                    LiveChange::Routing { id, group, agent } => {
                        tx.execute(
                            "UPDATE live_conversations SET group_name = ?2, agent_id = ?3 WHERE id = ?1",
                            params![sql_int(id), group, agent],
                        )?;
                    }
                    LiveChange::State { id, state } => {
                        tx.execute(
                            "UPDATE live_conversations SET state = ?2 WHERE id = ?1",
                            params![sql_int(id), state],
                        )?;
                    }
                    LiveChange::Message { id, seq, body } => {
                        tx.execute(
                            "INSERT INTO live_messages (conversation_id, seq, body) VALUES (?1, ?2, ?3)
                             ON CONFLICT (conversation_id, seq) DO UPDATE SET body = excluded.body",
                            params![sql_int(id), sql_int(seq), body],
                        )?;
                    }
                    LiveChange::File {
                        id,
                        file_id,
                        sealed_key,
                    } => {
                        tx.execute(
                            "INSERT OR REPLACE INTO live_files (conversation_id, file_id, sealed_key) VALUES (?1, ?2, ?3)",
                            params![sql_int(id), file_id, sealed_key],
                        )?;
                    }
                    LiveChange::Ended { id, at_ms, reason } => {
                        tx.execute(
                            "UPDATE live_conversations SET ended_at = ?2, ended_reason = ?3 WHERE id = ?1",
                            params![sql_int(id), sql_int(at_ms), reason],
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
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM live_conversations WHERE CAST(id AS TEXT) IN (SELECT id FROM archive_conversations)",
                [],
            )?;
            let mut out: Vec<LiveConversationRow> = {
                let mut stmt = tx.prepare(
                    "SELECT id, group_name, site_key_id, origin, started_at, agent_id, resume_hash, files_hash,
                         wrapped_key, state, ended_at, ended_reason
                     FROM live_conversations ORDER BY id",
                )?;
                let rows = stmt.query_map([], |r| {
                    let ended = match (r.get::<_, Option<i64>>(10)?, r.get::<_, Option<String>>(11)?) {
                        (Some(at), Some(reason)) => Some((u64::try_from(at).unwrap_or(0), reason)),
                        _ => None,
                    };
                    Ok(LiveConversationRow {
                        id: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        group: r.get(1)?,
                        site_key: r.get(2)?,
                        origin: r.get(3)?,
                        started_at_ms: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                        agent: r.get(5)?,
                        resume_hash: hash_of(r.get(6)?),
                        files_hash: hash_of(r.get(7)?),
                        wrapped_key: r.get(8)?,
                        state: r.get(9)?,
                        ended,
                        messages: Vec::new(),
                        files: Vec::new(),
                    })
                })?;
                rows.collect::<Result<_, _>>()?
            };
            {
                let mut messages =
                    tx.prepare("SELECT seq, body FROM live_messages WHERE conversation_id = ?1 ORDER BY seq")?;
                let mut files = tx.prepare(
                    "SELECT file_id, sealed_key FROM live_files WHERE conversation_id = ?1 ORDER BY file_id",
                )?;
                for conv in &mut out {
                    let id = sql_int(conv.id);
                    conv.messages = messages
                        .query_map(params![id], |r| {
                            Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get::<_, Vec<u8>>(1)?))
                        })?
                        .collect::<Result<_, _>>()?;
                    conv.files = files
                        .query_map(params![id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?
                        .collect::<Result<_, _>>()?;
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn live_count(&self) -> StoreResult<u64> {
        self.with(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM live_conversations", [], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn live_exists(&self, id: u64) -> StoreResult<bool> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT 1 FROM live_conversations WHERE id = ?1",
                params![sql_int(id)],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some())
        })
    }
}
