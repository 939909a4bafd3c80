//! Live conversations at rest in PostgreSQL (see [`crate::live_store`]).

use super::{PgStore, check_key_id, sql_int, unsigned};
use crate::store::{LiveChange, LiveConversationRow, LiveStore, StoreResult};

fn hash_of(bytes: Vec<u8>) -> [u8; 32] {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(&bytes);
    }
    out
}

impl LiveStore for PgStore {
    fn live_apply(&self, changes: &[LiveChange<'_>]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            for change in changes {
                match *change {
                    LiveChange::Create(n) => {
                        check_key_id(tx, n.master_key_id)?;
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
            Ok(())
        })
    }

    fn live_load(&self) -> StoreResult<Vec<LiveConversationRow>> {
        self.write(|tx| {
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
            for r in &rows {
                let ended = match (r.try_get::<_, Option<i64>>(10)?, r.try_get::<_, Option<String>>(11)?) {
                    (Some(at), Some(reason)) => Some((unsigned(at), reason)),
                    _ => None,
                };
                out.push(LiveConversationRow {
                    id: unsigned(r.try_get(0)?),
                    group: r.try_get(1)?,
                    site_key: r.try_get(2)?,
                    origin: r.try_get(3)?,
                    started_at_ms: unsigned(r.try_get(4)?),
                    agent: r.try_get(5)?,
                    resume_hash: hash_of(r.try_get(6)?),
                    files_hash: hash_of(r.try_get(7)?),
                    wrapped_key: r.try_get(8)?,
                    state: r.try_get(9)?,
                    ended,
                    messages: Vec::new(),
                    files: Vec::new(),
                });
            }
            let messages = tx.prepare("SELECT seq, body FROM live_messages WHERE conversation_id = $1 ORDER BY seq")?;
            let files =
                tx.prepare("SELECT file_id, sealed_key FROM live_files WHERE conversation_id = $1 ORDER BY file_id")?;
            for conv in &mut out {
                let id = sql_int(conv.id);
                conv.messages = tx
                    .query(&messages, &[&id])?
                    .iter()
                    .map(|r| Ok((unsigned(r.try_get::<_, i64>(0)?), r.try_get::<_, Vec<u8>>(1)?)))
                    .collect::<super::R<_>>()?;
                conv.files = tx
                    .query(&files, &[&id])?
                    .iter()
                    .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, Vec<u8>>(1)?)))
                    .collect::<super::R<_>>()?;
            }
            Ok(out)
        })
    }

    fn live_count(&self) -> StoreResult<u64> {
        self.with(|c| {
            let n: i64 = c
                .query_one("SELECT COUNT(*) FROM live_conversations", &[])?
                .try_get(0)?;
            Ok(unsigned(n))
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
