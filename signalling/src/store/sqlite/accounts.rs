//! Users, groups, site keys, sessions and the audit log in SQLite.

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use super::{Db, R, is_unique_violation, write_audit};
use crate::store::{
    AccountStore, AuditEvent, AuditRecord, AuditStore, Credentials, Group, MAX_GROUPS_PER_USER, MAX_NAME_CHARS,
    NewUser, RecordingPolicy, Role, SessionLimits, SessionStore, SiteKey, SiteKeyStore, StoreError, StoreResult, User,
    UserUpdate, bounded, check_new_user, check_user_update, duplicate, find_group, normalise_origins, validate_name,
    validate_text,
};
use crate::time::unix_now;

fn group_id(tx: &Connection, name: &str) -> R<i64> {
    tx.query_row("SELECT id FROM groups WHERE name = ?1", params![name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| {
            StoreError::NotFound {
                what: "group",
                name: bounded(name, MAX_NAME_CHARS),
            }
            .into()
        })
}

fn set_groups(tx: &Connection, user_id: i64, groups: &[String]) -> R<()> {
    if groups.len() > MAX_GROUPS_PER_USER {
        return Err(StoreError::Invalid(format!("a user can be in at most {MAX_GROUPS_PER_USER} groups")).into());
    }
    let ids = groups.iter().map(|g| group_id(tx, g)).collect::<R<Vec<_>>>()?;
    tx.execute("DELETE FROM user_groups WHERE user_id = ?1", params![user_id])?;
    for gid in ids {
        tx.execute(
            "INSERT OR IGNORE INTO user_groups (user_id, group_id) VALUES (?1, ?2)",
            params![user_id, gid],
        )?;
    }
    Ok(())
}

fn load_user(conn: &Connection, where_sql: &str, arg: &dyn rusqlite::ToSql) -> R<Option<Credentials>> {
    let sql = format!(
        "SELECT id, username, display_name, role, max_conversations, disabled, created_at, password_hash \
         FROM users WHERE {where_sql}"
    );
    let row = conn
        .query_row(&sql, [arg], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, String>(7)?,
            ))
        })
        .optional()?;
    let Some((id, username, display_name, role, max_conversations, disabled, created_at, password_hash)) = row else {
        return Ok(None);
    };
    let groups = user_groups(conn, id)?;
    let user = User {
        id,
        username,
        display_name,
        role: role.parse::<Role>()?,
        groups,
        max_conversations,
        disabled,
        created_at,
    };
    Ok(Some(Credentials { user, password_hash }))
}

fn user_by_id(conn: &Connection, id: i64) -> R<User> {
    load_user(conn, "id = ?1", &id)?.map(|c| c.user).ok_or_else(|| {
        StoreError::NotFound {
            what: "user",
            name: id.to_string(),
        }
        .into()
    })
}

fn user_groups(conn: &Connection, user_id: i64) -> R<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT g.name FROM groups g JOIN user_groups ug ON ug.group_id = g.id WHERE ug.user_id = ?1 ORDER BY g.name",
    )?;
    let names = stmt
        .query_map(params![user_id], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

fn enabled_admins(conn: &Connection) -> R<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0",
        [],
        |r| r.get(0),
    )?)
}

fn list_groups(conn: &Connection) -> R<Vec<Group>> {
    let mut stmt = conn.prepare(
        "SELECT g.id, g.name, g.created_at, (SELECT COUNT(*) FROM user_groups ug WHERE ug.group_id = g.id), \
         g.recording FROM groups g ORDER BY g.name",
    )?;
    let rows = stmt
        .query_map([], |r| {
            let recording: String = r.get(4)?;
            Ok(Group {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: r.get(2)?,
                members: r.get(3)?,
                // The CHECK constraint admits only the three names.
                recording: recording.parse().unwrap_or_default(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn group_by_name(conn: &Connection, name: &str) -> R<Group> {
    Ok(find_group(list_groups(conn)?, name)?)
}

fn key_rows(conn: &Connection, filter: Option<&str>) -> R<Vec<SiteKey>> {
    let sql = "SELECT k.key, g.name, k.allowed_origins, k.label, k.created_at, k.revoked_at \
               FROM site_keys k JOIN groups g ON g.id = k.group_id WHERE (?1 IS NULL OR k.key = ?1) ORDER BY k.id";
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params![filter], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(key, group, origins, label, created_at, revoked_at)| {
            let origins: Vec<String> =
                serde_json::from_str(&origins).map_err(|e| StoreError::Invalid(format!("stored origins: {e}")))?;
            Ok(SiteKey {
                key,
                group,
                origins,
                label,
                created_at,
                revoked_at,
            })
        })
        .collect()
}

fn site_key(conn: &Connection, key: &str) -> R<SiteKey> {
    key_rows(conn, Some(key))?.pop().ok_or_else(|| {
        StoreError::NotFound {
            what: "site key",
            name: bounded(key, MAX_NAME_CHARS),
        }
        .into()
    })
}

impl AccountStore for Db {
    fn has_admin(&self) -> StoreResult<bool> {
        self.with(|c| Ok(enabled_admins(c)? > 0))
    }

    fn user_exists(&self, username: &str) -> StoreResult<bool> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT EXISTS(SELECT 1 FROM users WHERE username = ?1)",
                params![username],
                |r| r.get(0),
            )?)
        })
    }

    fn create_user(&self, new: NewUser, audit: AuditEvent) -> StoreResult<User> {
        let display = check_new_user(&new)?;
        let now = unix_now();
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let res = tx.execute(
                "INSERT INTO users (username, display_name, role, password_hash, max_conversations, disabled, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6)",
                params![new.username, display, new.role.as_str(), new.password_hash, new.max_conversations, now],
            );
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(duplicate("user", &new.username, MAX_NAME_CHARS).into());
                }
                r => r?,
            };
            let id = tx.last_insert_rowid();
            set_groups(&tx, id, &new.groups)?;
            write_audit(&tx, &audit)?;
            let user = user_by_id(&tx, id)?;
            tx.commit()?;
            Ok(user)
        })
    }

    fn credentials(&self, username: &str) -> StoreResult<Option<Credentials>> {
        if username.chars().count() > MAX_NAME_CHARS {
            return Ok(None);
        }
        self.with(|c| load_user(c, "username = ?1", &username))
    }

    fn user(&self, id: i64) -> StoreResult<User> {
        self.with(|c| user_by_id(c, id))
    }

    fn list_users(&self) -> StoreResult<Vec<User>> {
        self.with(|c| {
            let ids: Vec<i64> = {
                let mut stmt = c.prepare("SELECT id FROM users ORDER BY username")?;
                stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
            };
            ids.into_iter().map(|id| user_by_id(c, id)).collect()
        })
    }

    fn update_user(&self, id: i64, update: UserUpdate, audit: AuditEvent) -> StoreResult<User> {
        check_user_update(&update)?;
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let before = user_by_id(&tx, id)?;
            let now = unix_now();
            if let Some(d) = &update.display_name {
                let d = if d.is_empty() { &before.username } else { d };
                tx.execute(
                    "UPDATE users SET display_name = ?1, updated_at = ?2 WHERE id = ?3",
                    params![d, now, id],
                )?;
            }
            if let Some(role) = update.role {
                tx.execute(
                    "UPDATE users SET role = ?1, updated_at = ?2 WHERE id = ?3",
                    params![role.as_str(), now, id],
                )?;
            }
            if let Some(n) = update.max_conversations {
                tx.execute(
                    "UPDATE users SET max_conversations = ?1, updated_at = ?2 WHERE id = ?3",
                    params![n, now, id],
                )?;
            }
            if let Some(disabled) = update.disabled {
                tx.execute(
                    "UPDATE users SET disabled = ?1, updated_at = ?2 WHERE id = ?3",
                    params![disabled, now, id],
                )?;
            }
            if let Some(h) = &update.password_hash {
                tx.execute(
                    "UPDATE users SET password_hash = ?1, updated_at = ?2 WHERE id = ?3",
                    params![h, now, id],
                )?;
            }
            if let Some(groups) = &update.groups {
                set_groups(&tx, id, groups)?;
            }
            if before.role == Role::Admin && !before.disabled && enabled_admins(&tx)? == 0 {
                return Err(StoreError::LastAdmin.into());
            }
            let ends_sessions = update.disabled == Some(true)
                || update.password_hash.is_some()
                || update.role.is_some_and(|r| r != before.role);
            if ends_sessions {
                tx.execute("DELETE FROM sessions WHERE user_id = ?1", params![id])?;
            }
            write_audit(&tx, &audit)?;
            let after = user_by_id(&tx, id)?;
            tx.commit()?;
            Ok(after)
        })
    }

    fn create_group_with(&self, name: &str, recording: RecordingPolicy, audit: AuditEvent) -> StoreResult<Group> {
        validate_name("group name", name)?;
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let res = tx.execute(
                "INSERT INTO groups (name, created_at, recording) VALUES (?1, ?2, ?3)",
                params![name, unix_now(), recording.as_str()],
            );
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(duplicate("group", name, MAX_NAME_CHARS).into());
                }
                r => r?,
            };
            write_audit(&tx, &audit)?;
            tx.commit()?;
            group_by_name(c, name)
        })
    }

    fn set_group_recording(&self, name: &str, recording: RecordingPolicy, audit: AuditEvent) -> StoreResult<Group> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let gid = group_id(&tx, name)?;
            tx.execute(
                "UPDATE groups SET recording = ?1 WHERE id = ?2",
                params![recording.as_str(), gid],
            )?;
            write_audit(&tx, &audit)?;
            tx.commit()?;
            group_by_name(c, name)
        })
    }

    fn list_groups(&self) -> StoreResult<Vec<Group>> {
        self.with(|c| list_groups(c))
    }

    fn delete_group(&self, name: &str, audit: AuditEvent) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let gid = group_id(&tx, name)?;
            let keys: i64 = tx.query_row(
                "SELECT COUNT(*) FROM site_keys WHERE group_id = ?1",
                params![gid],
                |r| r.get(0),
            )?;
            if keys > 0 {
                return Err(StoreError::InUse(format!("group has {keys} site key(s); it cannot be deleted")).into());
            }
            tx.execute("DELETE FROM groups WHERE id = ?1", params![gid])?;
            write_audit(&tx, &audit)?;
            tx.commit()?;
            Ok(())
        })
    }
}

impl SiteKeyStore for Db {
    fn create_site_key(
        &self,
        key: &str,
        group: &str,
        origins: &[String],
        label: &str,
        audit: AuditEvent,
    ) -> StoreResult<SiteKey> {
        let origins = normalise_origins(origins)?;
        validate_text("label", label)?;
        let json = serde_json::to_string(&origins).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let gid = group_id(&tx, group)?;
            tx.execute(
                "INSERT INTO site_keys (key, group_id, allowed_origins, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, gid, json, label, unix_now()],
            )?;
            write_audit(&tx, &audit)?;
            tx.commit()?;
            site_key(c, key)
        })
    }

    fn site_key(&self, key: &str) -> StoreResult<SiteKey> {
        self.with(|c| site_key(c, key))
    }

    fn list_site_keys(&self) -> StoreResult<Vec<SiteKey>> {
        self.with(|c| key_rows(c, None))
    }

    fn revoke_site_key(&self, key: &str, audit: AuditEvent) -> StoreResult<SiteKey> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE site_keys SET revoked_at = COALESCE(revoked_at, ?1) WHERE key = ?2",
                params![unix_now(), key],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "site key",
                    name: bounded(key, MAX_NAME_CHARS),
                }
                .into());
            }
            write_audit(&tx, &audit)?;
            tx.commit()?;
            site_key(c, key)
        })
    }
}

impl SessionStore for Db {
    fn create_session(&self, token_hash: &[u8; 32], user_id: i64, now: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, last_seen) VALUES (?1, ?2, ?3, ?3)",
                params![&token_hash[..], user_id, now],
            )?;
            Ok(())
        })
    }

    fn touch_session(&self, token_hash: &[u8; 32], now: i64, limits: SessionLimits) -> StoreResult<Option<User>> {
        self.with(|c| {
            let row: Option<(i64, i64, i64, bool)> = c
                .query_row(
                    "SELECT s.user_id, s.created_at, s.last_seen, u.disabled FROM sessions s JOIN users u ON u.id = s.user_id \
                     WHERE s.token_hash = ?1",
                    params![&token_hash[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((user_id, created_at, last_seen, disabled)) = row else {
                return Ok(None);
            };
            let idle = limits.idle.as_secs() as i64;
            let absolute = limits.absolute.as_secs() as i64;
            if disabled || now - last_seen > idle || now - created_at > absolute {
                c.execute("DELETE FROM sessions WHERE token_hash = ?1", params![&token_hash[..]])?;
                return Ok(None);
            }
            // Refresh at most every few seconds to spare writes.
            if now - last_seen >= 5 {
                c.execute(
                    "UPDATE sessions SET last_seen = ?1 WHERE token_hash = ?2",
                    params![now, &token_hash[..]],
                )?;
            }
            Ok(load_user(c, "id = ?1", &user_id)?.map(|c| c.user))
        })
    }

    fn delete_session(&self, token_hash: &[u8; 32]) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM sessions WHERE token_hash = ?1", params![&token_hash[..]])?;
            Ok(())
        })
    }

    fn purge_sessions(&self, now: i64, limits: SessionLimits) -> StoreResult<usize> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM sessions WHERE last_seen < ?1 OR created_at < ?2",
                params![
                    now - limits.idle.as_secs() as i64,
                    now - limits.absolute.as_secs() as i64
                ],
            )?)
        })
    }
}

impl AuditStore for Db {
    fn audit(&self, event: AuditEvent) -> StoreResult<()> {
        self.with(|c| write_audit(c, &event))
    }

    fn recent_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at, actor, action, target, client_addr, detail FROM audit_log ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt
                .query_map(params![limit], |r| {
                    Ok(AuditRecord {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        target: r.get(4)?,
                        client_addr: r.get(5)?,
                        detail: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}
