//! The archive's rows and its master key record in SQLite.

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use super::{Db, R, check_key_id, meta_key_id, write_audit};
use crate::store::{
    ArchiveStore, ArchivedConversationRow, AuditEvent, KeyOwner, MessageRow, ParticipantRow, PurgeFilter, PurgeOutcome,
    StoreError, StoreResult, WrappedKeyRow, duplicate, purge_detail,
};

/// The table of each owner of a wrapped key.
fn table(owner: KeyOwner) -> &'static str {
    match owner {
        KeyOwner::Archived => "archive_conversations",
        KeyOwner::Live => "live_conversations",
        KeyOwner::Recording => "recordings",
    }
}

const OWNERS: [KeyOwner; 3] = [KeyOwner::Archived, KeyOwner::Live, KeyOwner::Recording];

fn set_meta_key_id(conn: &Connection, key_id: &str) -> R<()> {
    conn.execute(
        "INSERT INTO archive_meta (id, master_key_id) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET master_key_id = excluded.master_key_id",
        params![key_id],
    )?;
    Ok(())
}

/// The WHERE clause on `archive_conversations` of a purge, and its parameter.
fn purge_clause(filter: &PurgeFilter) -> (&'static str, &dyn rusqlite::ToSql) {
    match filter {
        PurgeFilter::EndedBefore(cutoff) => ("ended_at < ?1", cutoff),
        PurgeFilter::Visitor(digest) => ("visitor_digest = ?1", digest),
    }
}

impl ArchiveStore for Db {
    fn master_key_id(&self) -> StoreResult<Option<String>> {
        self.with(|c| meta_key_id(c))
    }

    fn set_master_key_id(&self, key_id: &str) -> StoreResult<()> {
        self.with(|c| set_meta_key_id(c, key_id))
    }

    fn archived_under_key(&self, key_id: &str) -> StoreResult<u64> {
        self.with(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM archive_conversations WHERE master_key_id = ?1",
                params![key_id],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn insert_archived(&self, row: &ArchivedConversationRow) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM archive_conversations WHERE id = ?1",
                    params![row.id],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_some() {
                return Err(duplicate("archived conversation", &row.id, 128).into());
            }
            check_key_id(&tx, &row.master_key_id)?;
            // The live copy goes in the same transaction: live at rest or archived, never both or neither.
            if let Ok(live_id) = row.id.parse::<i64>() {
                tx.execute("DELETE FROM live_conversations WHERE id = ?1", params![live_id])?;
            }
            tx.execute(
                "INSERT INTO archive_conversations (id, group_name, site_key_id, visitor_digest, started_at, ended_at,
                     master_key_id, wrapped_key, archived_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    row.id,
                    row.group,
                    row.site_key_id,
                    row.visitor_digest,
                    row.started_at,
                    row.ended_at,
                    row.master_key_id,
                    row.wrapped_key,
                    row.archived_at
                ],
            )?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO archive_participants (conversation_id, position, role, user_id, display_name, joined_at, left_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for (i, p) in row.participants.iter().enumerate() {
                    stmt.execute(params![
                        row.id,
                        i as i64,
                        p.role,
                        p.user_id,
                        p.display_name,
                        p.joined_at,
                        p.left_at
                    ])?;
                }
                let mut stmt = tx.prepare(
                    "INSERT INTO archive_messages (conversation_id, seq, author, author_user_id, sent_at, body, kind)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for m in &row.messages {
                    stmt.execute(params![
                        row.id,
                        m.seq,
                        m.author,
                        m.author_user_id,
                        m.sent_at,
                        m.body,
                        m.kind
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn archived_group(&self, id: &str) -> StoreResult<Option<String>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT group_name FROM archive_conversations WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn read_archived(&self, id: &str) -> StoreResult<Option<ArchivedConversationRow>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let row = tx
                .query_row(
                    "SELECT group_name, site_key_id, visitor_digest, started_at, ended_at, master_key_id, wrapped_key,
                         archived_at
                     FROM archive_conversations WHERE id = ?1",
                    params![id],
                    |r| {
                        Ok(ArchivedConversationRow {
                            id: id.to_string(),
                            group: r.get(0)?,
                            site_key_id: r.get(1)?,
                            visitor_digest: r.get(2)?,
                            started_at: r.get(3)?,
                            ended_at: r.get(4)?,
                            master_key_id: r.get(5)?,
                            wrapped_key: r.get(6)?,
                            archived_at: r.get(7)?,
                            participants: Vec::new(),
                            messages: Vec::new(),
                        })
                    },
                )
                .optional()?;
            let Some(mut row) = row else { return Ok(None) };
            {
                let mut stmt = tx.prepare(
                    "SELECT role, user_id, display_name, joined_at, left_at FROM archive_participants
                     WHERE conversation_id = ?1 ORDER BY position",
                )?;
                row.participants = stmt
                    .query_map(params![id], |r| {
                        Ok(ParticipantRow {
                            role: r.get(0)?,
                            user_id: r.get(1)?,
                            display_name: r.get(2)?,
                            joined_at: r.get(3)?,
                            left_at: r.get(4)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                let mut stmt = tx.prepare(
                    "SELECT seq, author, author_user_id, sent_at, body, kind FROM archive_messages
                     WHERE conversation_id = ?1 ORDER BY seq",
                )?;
                row.messages = stmt
                    .query_map(params![id], |r| {
                        Ok(MessageRow {
                            seq: r.get(0)?,
                            author: r.get(1)?,
                            author_user_id: r.get(2)?,
                            sent_at: r.get(3)?,
                            body: r.get(4)?,
                            kind: r.get(5)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
            }
            tx.commit()?;
            Ok(Some(row))
        })
    }

    fn purge_archived(&self, filter: &PurgeFilter, mut audit: AuditEvent) -> StoreResult<PurgeOutcome> {
        let (clause, param) = purge_clause(filter);
        self.with(|c| {
            // Deleted rows are overwritten with zeros rather than left in free pages.
            c.pragma_update(None, "secure_delete", true)?;
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Their recordings go with them: the rows (and so the keys) now; the caller removes the files.
            let of_archived = format!("conversation_id IN (SELECT id FROM archive_conversations WHERE {clause})");
            let recording_files = {
                let mut stmt = tx.prepare(&format!("SELECT file FROM recordings WHERE {of_archived}"))?;
                let rows = stmt.query_map([param], |r| r.get::<_, String>(0))?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            tx.execute(&format!("DELETE FROM recordings WHERE {of_archived}"), [param])?;
            let n = tx.execute(&format!("DELETE FROM archive_conversations WHERE {clause}"), [param])?;
            purge_detail(&mut audit, n, recording_files.len());
            write_audit(&tx, &audit)?;
            tx.commit()?;
            if n > 0 {
                // Old WAL frames still hold the deleted pages: copy back and truncate. Best effort (a reader
                // may keep the WAL busy; the frames are then overwritten later).
                let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
            Ok(PurgeOutcome {
                conversations: n,
                recording_files,
            })
        })
    }

    fn keys_not_under(&self, key_id: &str) -> StoreResult<Vec<WrappedKeyRow>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut out = Vec::new();
            for owner in OWNERS {
                // A live conversation's id is an integer column: its key is bound to the decimal form.
                let mut stmt = tx.prepare(&format!(
                    "SELECT CAST(id AS TEXT), wrapped_key FROM {} WHERE master_key_id != ?1",
                    table(owner)
                ))?;
                let rows = stmt.query_map(params![key_id], |r| {
                    Ok(WrappedKeyRow {
                        owner,
                        id: r.get(0)?,
                        wrapped_key: r.get(1)?,
                    })
                })?;
                for row in rows {
                    out.push(row?);
                }
            }
            drop(tx);
            Ok(out)
        })
    }

    fn replace_wrapped_keys(&self, key_id: &str, rows: &[WrappedKeyRow], audit: AuditEvent) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for row in rows {
                // SQLite compares the text id numerically with an integer column (live conversations).
                tx.execute(
                    &format!(
                        "UPDATE {} SET master_key_id = ?1, wrapped_key = ?2 WHERE id = ?3",
                        table(row.owner)
                    ),
                    params![key_id, row.wrapped_key, row.id],
                )?;
            }
            for owner in OWNERS {
                let left: i64 = tx.query_row(
                    &format!("SELECT COUNT(*) FROM {} WHERE master_key_id != ?1", table(owner)),
                    params![key_id],
                    |r| r.get(0),
                )?;
                if left > 0 {
                    return Err(StoreError::MasterKeyChanged.into());
                }
            }
            set_meta_key_id(&tx, key_id)?;
            write_audit(&tx, &audit)?;
            tx.commit()?;
            Ok(())
        })
    }
}
