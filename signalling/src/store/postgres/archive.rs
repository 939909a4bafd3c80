//! The archive's rows and its master key record in PostgreSQL.

use postgres::GenericClient;
use postgres::types::ToSql;

use super::{PgStore, R, check_key_id, meta_key_id, unsigned, write_audit};
use crate::store::{
    ArchiveStore, ArchivedConversationRow, AuditEvent, KeyOwner, MessageRow, ParticipantRow, PurgeFilter, PurgeOutcome,
    StoreError, StoreResult, WrappedKeyRow, purge_detail,
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

fn set_meta_key_id(c: &mut impl GenericClient, key_id: &str) -> R<()> {
    c.execute(
        "INSERT INTO archive_meta (id, master_key_id) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET master_key_id = excluded.master_key_id",
        &[&key_id],
    )?;
    Ok(())
}

/// The WHERE clause on `archive_conversations` of a purge, and its parameter.
fn purge_clause(filter: &PurgeFilter) -> (&'static str, &(dyn ToSql + Sync)) {
    match filter {
        PurgeFilter::EndedBefore(cutoff) => ("ended_at < $1", cutoff),
        PurgeFilter::Visitor(digest) => ("visitor_digest = $1", digest),
    }
}

impl ArchiveStore for PgStore {
    fn master_key_id(&self) -> StoreResult<Option<String>> {
        self.read(meta_key_id)
    }

    fn set_master_key_id(&self, key_id: &str) -> StoreResult<()> {
        self.write(|tx| set_meta_key_id(tx, key_id))
    }

    fn archived_under_key(&self, key_id: &str) -> StoreResult<u64> {
        self.with(|c| {
            let n: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM archive_conversations WHERE master_key_id = $1",
                    &[&key_id],
                )?
                .try_get(0)?;
            Ok(unsigned(n))
        })
    }

    fn insert_archived(&self, row: &ArchivedConversationRow) -> StoreResult<()> {
        self.write(|tx| {
            let exists = tx.query_opt("SELECT 1 FROM archive_conversations WHERE id = $1", &[&row.id])?;
            if exists.is_some() {
                return Err(StoreError::Duplicate {
                    what: "archived conversation",
                    name: row.id.chars().take(128).collect(),
                }
                .into());
            }
            check_key_id(tx, &row.master_key_id)?;
            // The live copy goes in the same transaction: live at rest or archived, never both or neither.
            if let Ok(live_id) = row.id.parse::<i64>() {
                tx.execute("DELETE FROM live_conversations WHERE id = $1", &[&live_id])?;
            }
            tx.execute(
                "INSERT INTO archive_conversations (id, group_name, site_key_id, visitor_digest, started_at, ended_at,
                     master_key_id, wrapped_key, archived_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &row.id,
                    &row.group,
                    &row.site_key_id,
                    &row.visitor_digest,
                    &row.started_at,
                    &row.ended_at,
                    &row.master_key_id,
                    &row.wrapped_key,
                    &row.archived_at,
                ],
            )?;
            let participant = tx.prepare(
                "INSERT INTO archive_participants (conversation_id, position, role, user_id, display_name, joined_at, left_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )?;
            for (i, p) in row.participants.iter().enumerate() {
                let position = i as i64;
                tx.execute(
                    &participant,
                    &[&row.id, &position, &p.role, &p.user_id, &p.display_name, &p.joined_at, &p.left_at],
                )?;
            }
            let message = tx.prepare(
                "INSERT INTO archive_messages (conversation_id, seq, author, author_user_id, sent_at, body, kind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )?;
            for m in &row.messages {
                tx.execute(
                    &message,
                    &[&row.id, &m.seq, &m.author, &m.author_user_id, &m.sent_at, &m.body, &m.kind],
                )?;
            }
            Ok(())
        })
    }

    fn archived_group(&self, id: &str) -> StoreResult<Option<String>> {
        self.with(
            |c| match c.query_opt("SELECT group_name FROM archive_conversations WHERE id = $1", &[&id])? {
                Some(r) => Ok(Some(r.try_get(0)?)),
                None => Ok(None),
            },
        )
    }

    fn read_archived(&self, id: &str) -> StoreResult<Option<ArchivedConversationRow>> {
        self.read(|tx| {
            let Some(r) = tx.query_opt(
                "SELECT group_name, site_key_id, visitor_digest, started_at, ended_at, master_key_id, wrapped_key,
                     archived_at
                 FROM archive_conversations WHERE id = $1",
                &[&id],
            )?
            else {
                return Ok(None);
            };
            let mut row = ArchivedConversationRow {
                id: id.to_string(),
                group: r.try_get(0)?,
                site_key_id: r.try_get(1)?,
                visitor_digest: r.try_get(2)?,
                started_at: r.try_get(3)?,
                ended_at: r.try_get(4)?,
                master_key_id: r.try_get(5)?,
                wrapped_key: r.try_get(6)?,
                archived_at: r.try_get(7)?,
                participants: Vec::new(),
                messages: Vec::new(),
            };
            row.participants = tx
                .query(
                    "SELECT role, user_id, display_name, joined_at, left_at FROM archive_participants
                     WHERE conversation_id = $1 ORDER BY position",
                    &[&id],
                )?
                .iter()
                .map(|r| {
                    Ok(ParticipantRow {
                        role: r.try_get(0)?,
                        user_id: r.try_get(1)?,
                        display_name: r.try_get(2)?,
                        joined_at: r.try_get(3)?,
                        left_at: r.try_get(4)?,
                    })
                })
                .collect::<R<_>>()?;
            row.messages = tx
                .query(
                    "SELECT seq, author, author_user_id, sent_at, body, kind FROM archive_messages
                     WHERE conversation_id = $1 ORDER BY seq",
                    &[&id],
                )?
                .iter()
                .map(|r| {
                    Ok(MessageRow {
                        seq: r.try_get(0)?,
                        author: r.try_get(1)?,
                        author_user_id: r.try_get(2)?,
                        sent_at: r.try_get(3)?,
                        body: r.try_get(4)?,
                        kind: r.try_get(5)?,
                    })
                })
                .collect::<R<_>>()?;
            Ok(Some(row))
        })
    }

    fn purge_archived(&self, filter: &PurgeFilter, audit: AuditEvent) -> StoreResult<PurgeOutcome> {
        let (clause, param) = purge_clause(filter);
        let outcome = self.write(|tx| {
            // Their recordings go with them: the rows (and so the keys) now; the caller removes the files.
            let of_archived = format!("conversation_id IN (SELECT id FROM archive_conversations WHERE {clause})");
            let recording_files = tx
                .query(&format!("SELECT file FROM recordings WHERE {of_archived}"), &[param])?
                .iter()
                .map(|r| Ok(r.try_get::<_, String>(0)?))
                .collect::<R<Vec<_>>>()?;
            tx.execute(&format!("DELETE FROM recordings WHERE {of_archived}"), &[param])?;
            let n = tx.execute(&format!("DELETE FROM archive_conversations WHERE {clause}"), &[param])?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            // A fresh copy per attempt: the transaction may be tried again.
            let mut audit = audit.clone();
            purge_detail(&mut audit, n, recording_files.len());
            write_audit(tx, &audit)?;
            Ok(PurgeOutcome {
                conversations: n,
                recording_files,
            })
        })?;
        if outcome.conversations > 0 {
            // Dead rows stay in the tables' pages until their space is reused: let VACUUM reclaim them now
            // (best effort; it cannot run inside a transaction). See the module docs on erasure.
            let _ = self.with(|c| {
                c.batch_execute("VACUUM archive_messages, archive_participants, archive_conversations, recordings")?;
                Ok(())
            });
        }
        Ok(outcome)
    }

    fn keys_not_under(&self, key_id: &str) -> StoreResult<Vec<WrappedKeyRow>> {
        self.read(|tx| {
            let mut out = Vec::new();
            for owner in OWNERS {
                // A live conversation's id is an integer column: its key is bound to the decimal form.
                let rows = tx.query(
                    &format!(
                        "SELECT id::TEXT, wrapped_key FROM {} WHERE master_key_id <> $1",
                        table(owner)
                    ),
                    &[&key_id],
                )?;
                for r in &rows {
                    out.push(WrappedKeyRow {
                        owner,
                        id: r.try_get(0)?,
                        wrapped_key: r.try_get(1)?,
                    });
                }
            }
            Ok(out)
        })
    }

    fn replace_wrapped_keys(&self, key_id: &str, rows: &[WrappedKeyRow], audit: AuditEvent) -> StoreResult<()> {
        self.write(|tx| {
            for row in rows {
                tx.execute(
                    &format!(
                        "UPDATE {} SET master_key_id = $1, wrapped_key = $2 WHERE id::TEXT = $3",
                        table(row.owner)
                    ),
                    &[&key_id, &row.wrapped_key, &row.id],
                )?;
            }
            for owner in OWNERS {
                let left: i64 = tx
                    .query_one(
                        &format!("SELECT COUNT(*) FROM {} WHERE master_key_id <> $1", table(owner)),
                        &[&key_id],
                    )?
                    .try_get(0)?;
                if left > 0 {
                    return Err(StoreError::MasterKeyChanged.into());
                }
            }
            set_meta_key_id(tx, key_id)?;
            write_audit(tx, &audit)?;
            Ok(())
        })
    }
}
