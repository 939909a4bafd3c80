//! Users, groups, site keys, sessions and the audit log in PostgreSQL.

use postgres::types::ToSql;
use postgres::{GenericClient, Row};

use super::{PgStore, R, is_unique_violation, unsigned, write_audit};
use crate::store::{
    AccountStore, AuditEvent, AuditRecord, AuditStore, Credentials, Group, MAX_GROUPS_PER_USER, MAX_NAME_CHARS,
    NewUser, RecordingPolicy, Role, SessionLimits, SessionStore, SiteKey, SiteKeyStore, StoreError, StoreResult, User,
    UserUpdate, bounded, normalise_origins, validate_capacity, validate_name, validate_text,
};
use crate::time::unix_now;

fn not_found(what: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        what,
        name: bounded(name, MAX_NAME_CHARS),
    }
}

fn group_id(c: &mut impl GenericClient, name: &str) -> R<i64> {
    match c.query_opt("SELECT id FROM groups WHERE lower(name) = lower($1)", &[&name])? {
        Some(r) => Ok(r.try_get(0)?),
        None => Err(not_found("group", name).into()),
    }
}

fn set_groups(c: &mut impl GenericClient, user_id: i64, groups: &[String]) -> R<()> {
    if groups.len() > MAX_GROUPS_PER_USER {
        return Err(StoreError::Invalid(format!("a user can be in at most {MAX_GROUPS_PER_USER} groups")).into());
    }
    let ids = groups.iter().map(|g| group_id(c, g)).collect::<R<Vec<_>>>()?;
    c.execute("DELETE FROM user_groups WHERE user_id = $1", &[&user_id])?;
    for gid in ids {
        c.execute(
            "INSERT INTO user_groups (user_id, group_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&user_id, &gid],
        )?;
    }
    Ok(())
}

const USER_COLUMNS: &str =
    "SELECT id, username, display_name, role, max_conversations, disabled, created_at, password_hash FROM users";

fn credentials_of(c: &mut impl GenericClient, row: &Row) -> R<Credentials> {
    let id: i64 = row.try_get(0)?;
    let role: String = row.try_get(3)?;
    let user = User {
        id,
        username: row.try_get(1)?,
        display_name: row.try_get(2)?,
        role: role.parse::<Role>()?,
        groups: user_groups(c, id)?,
        max_conversations: unsigned(row.try_get(4)?),
        disabled: row.try_get(5)?,
        created_at: row.try_get(6)?,
    };
    Ok(Credentials {
        user,
        password_hash: row.try_get(7)?,
    })
}

fn load_user(c: &mut impl GenericClient, where_sql: &str, arg: &(dyn ToSql + Sync)) -> R<Option<Credentials>> {
    let row = c.query_opt(&format!("{USER_COLUMNS} WHERE {where_sql}"), &[arg])?;
    match row {
        Some(row) => Ok(Some(credentials_of(c, &row)?)),
        None => Ok(None),
    }
}

fn user_by_id(c: &mut impl GenericClient, id: i64) -> R<User> {
    load_user(c, "id = $1", &id)?
        .map(|c| c.user)
        .ok_or_else(|| not_found("user", &id.to_string()).into())
}

fn user_groups(c: &mut impl GenericClient, user_id: i64) -> R<Vec<String>> {
    let rows = c.query(
        "SELECT g.name FROM groups g JOIN user_groups ug ON ug.group_id = g.id WHERE ug.user_id = $1 \
         ORDER BY lower(g.name), g.name",
        &[&user_id],
    )?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

fn enabled_admins(c: &mut impl GenericClient) -> R<i64> {
    let row = c.query_one("SELECT COUNT(*) FROM users WHERE role = 'admin' AND NOT disabled", &[])?;
    Ok(row.try_get(0)?)
}

fn list_groups(c: &mut impl GenericClient) -> R<Vec<Group>> {
    let rows = c.query(
        "SELECT g.id, g.name, g.created_at, (SELECT COUNT(*) FROM user_groups ug WHERE ug.group_id = g.id), \
         g.recording FROM groups g ORDER BY lower(g.name), g.name",
        &[],
    )?;
    rows.iter()
        .map(|r| {
            let recording: String = r.try_get(4)?;
            Ok(Group {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                created_at: r.try_get(2)?,
                members: unsigned(r.try_get(3)?),
                // The CHECK constraint admits only the three names.
                recording: recording.parse().unwrap_or_default(),
            })
        })
        .collect()
}

fn group_by_name(c: &mut impl GenericClient, name: &str) -> R<Group> {
    list_groups(c)?
        .into_iter()
        .find(|g| g.name.eq_ignore_ascii_case(name) || g.name.to_lowercase() == name.to_lowercase())
        .ok_or_else(|| not_found("group", name).into())
}

fn key_rows(c: &mut impl GenericClient, filter: Option<&str>) -> R<Vec<SiteKey>> {
    let rows = c.query(
        "SELECT k.key, g.name, k.allowed_origins, k.label, k.created_at, k.revoked_at \
         FROM site_keys k JOIN groups g ON g.id = k.group_id WHERE ($1::TEXT IS NULL OR k.key = $1) ORDER BY k.id",
        &[&filter],
    )?;
    rows.iter()
        .map(|r| {
            let origins: String = r.try_get(2)?;
            let origins: Vec<String> =
                serde_json::from_str(&origins).map_err(|e| StoreError::Invalid(format!("stored origins: {e}")))?;
            Ok(SiteKey {
                key: r.try_get(0)?,
                group: r.try_get(1)?,
                origins,
                label: r.try_get(3)?,
                created_at: r.try_get(4)?,
                revoked_at: r.try_get(5)?,
            })
        })
        .collect()
}

fn site_key(c: &mut impl GenericClient, key: &str) -> R<SiteKey> {
    key_rows(c, Some(key))?
        .pop()
        .ok_or_else(|| not_found("site key", key).into())
}

impl AccountStore for PgStore {
    fn has_admin(&self) -> StoreResult<bool> {
        self.with(|c| Ok(enabled_admins(c)? > 0))
    }

    fn user_exists(&self, username: &str) -> StoreResult<bool> {
        self.with(|c| {
            let row = c.query_one(
                "SELECT EXISTS(SELECT 1 FROM users WHERE lower(username) = lower($1))",
                &[&username],
            )?;
            Ok(row.try_get(0)?)
        })
    }

    fn create_user(&self, new: NewUser, audit: AuditEvent) -> StoreResult<User> {
        validate_name("username", &new.username)?;
        validate_text("display_name", &new.display_name)?;
        validate_capacity(new.max_conversations)?;
        let display = if new.display_name.is_empty() {
            new.username.clone()
        } else {
            new.display_name.clone()
        };
        let now = unix_now();
        let capacity = i64::from(new.max_conversations);
        self.write(|tx| {
            let res = tx.query_one(
                "INSERT INTO users (username, display_name, role, password_hash, max_conversations, disabled, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, FALSE, $6, $6) RETURNING id",
                &[&new.username, &display, &new.role.as_str(), &new.password_hash, &capacity, &now],
            );
            let id: i64 = match res.map_err(super::PgError::from) {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Duplicate {
                        what: "user",
                        name: bounded(&new.username, MAX_NAME_CHARS),
                    }
                    .into());
                }
                r => r?.try_get(0)?,
            };
            set_groups(tx, id, &new.groups)?;
            write_audit(tx, &audit)?;
            user_by_id(tx, id)
        })
    }

    fn credentials(&self, username: &str) -> StoreResult<Option<Credentials>> {
        if username.chars().count() > MAX_NAME_CHARS {
            return Ok(None);
        }
        self.read(|tx| load_user(tx, "lower(username) = lower($1)", &username))
    }

    fn user(&self, id: i64) -> StoreResult<User> {
        self.read(|tx| user_by_id(tx, id))
    }

    fn list_users(&self) -> StoreResult<Vec<User>> {
        self.read(|tx| {
            let rows = tx.query(&format!("{USER_COLUMNS} ORDER BY lower(username), username"), &[])?;
            rows.iter().map(|r| Ok(credentials_of(tx, r)?.user)).collect()
        })
    }

    fn update_user(&self, id: i64, update: UserUpdate, audit: AuditEvent) -> StoreResult<User> {
        if let Some(d) = &update.display_name {
            validate_text("display_name", d)?;
        }
        if let Some(n) = update.max_conversations {
            validate_capacity(n)?;
        }
        self.write(|tx| {
            let before = user_by_id(tx, id)?;
            let now = unix_now();
            if let Some(d) = &update.display_name {
                let d = if d.is_empty() { &before.username } else { d };
                tx.execute(
                    "UPDATE users SET display_name = $1, updated_at = $2 WHERE id = $3",
                    &[d, &now, &id],
                )?;
            }
            if let Some(role) = update.role {
                tx.execute(
                    "UPDATE users SET role = $1, updated_at = $2 WHERE id = $3",
                    &[&role.as_str(), &now, &id],
                )?;
            }
            if let Some(n) = update.max_conversations {
                tx.execute(
                    "UPDATE users SET max_conversations = $1, updated_at = $2 WHERE id = $3",
                    &[&i64::from(n), &now, &id],
                )?;
            }
            if let Some(disabled) = update.disabled {
                tx.execute(
                    "UPDATE users SET disabled = $1, updated_at = $2 WHERE id = $3",
                    &[&disabled, &now, &id],
                )?;
            }
            if let Some(h) = &update.password_hash {
                tx.execute(
                    "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3",
                    &[h, &now, &id],
                )?;
            }
            if let Some(groups) = &update.groups {
                set_groups(tx, id, groups)?;
            }
            if before.role == Role::Admin && !before.disabled && enabled_admins(tx)? == 0 {
                return Err(StoreError::LastAdmin.into());
            }
            let ends_sessions = update.disabled == Some(true)
                || update.password_hash.is_some()
                || update.role.is_some_and(|r| r != before.role);
            if ends_sessions {
                tx.execute("DELETE FROM sessions WHERE user_id = $1", &[&id])?;
            }
            write_audit(tx, &audit)?;
            user_by_id(tx, id)
        })
    }

    fn create_group_with(&self, name: &str, recording: RecordingPolicy, audit: AuditEvent) -> StoreResult<Group> {
        validate_name("group name", name)?;
        self.write(|tx| {
            let res = tx
                .execute(
                    "INSERT INTO groups (name, created_at, recording) VALUES ($1, $2, $3)",
                    &[&name, &unix_now(), &recording.as_str()],
                )
                .map_err(super::PgError::from);
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Duplicate {
                        what: "group",
                        name: bounded(name, MAX_NAME_CHARS),
                    }
                    .into());
                }
                r => r?,
            };
            write_audit(tx, &audit)?;
            group_by_name(tx, name)
        })
    }

    fn set_group_recording(&self, name: &str, recording: RecordingPolicy, audit: AuditEvent) -> StoreResult<Group> {
        self.write(|tx| {
            let gid = group_id(tx, name)?;
            tx.execute(
                "UPDATE groups SET recording = $1 WHERE id = $2",
                &[&recording.as_str(), &gid],
            )?;
            write_audit(tx, &audit)?;
            group_by_name(tx, name)
        })
    }

    fn list_groups(&self) -> StoreResult<Vec<Group>> {
        self.with(list_groups)
    }

    fn delete_group(&self, name: &str, audit: AuditEvent) -> StoreResult<()> {
        self.write(|tx| {
            let gid = group_id(tx, name)?;
            let keys: i64 = tx
                .query_one("SELECT COUNT(*) FROM site_keys WHERE group_id = $1", &[&gid])?
                .try_get(0)?;
            if keys > 0 {
                return Err(StoreError::InUse(format!("group has {keys} site key(s); it cannot be deleted")).into());
            }
            tx.execute("DELETE FROM groups WHERE id = $1", &[&gid])?;
            write_audit(tx, &audit)?;
            Ok(())
        })
    }
}

impl SiteKeyStore for PgStore {
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
        self.write(|tx| {
            let gid = group_id(tx, group)?;
            tx.execute(
                "INSERT INTO site_keys (key, group_id, allowed_origins, label, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&key, &gid, &json, &label, &unix_now()],
            )?;
            write_audit(tx, &audit)?;
            site_key(tx, key)
        })
    }

    fn site_key(&self, key: &str) -> StoreResult<SiteKey> {
        self.with(|c| site_key(c, key))
    }

    fn list_site_keys(&self) -> StoreResult<Vec<SiteKey>> {
        self.with(|c| key_rows(c, None))
    }

    fn revoke_site_key(&self, key: &str, audit: AuditEvent) -> StoreResult<SiteKey> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE site_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE key = $2",
                &[&unix_now(), &key],
            )?;
            if n == 0 {
                return Err(not_found("site key", key).into());
            }
            write_audit(tx, &audit)?;
            site_key(tx, key)
        })
    }
}

impl SessionStore for PgStore {
    fn create_session(&self, token_hash: &[u8; 32], user_id: i64, now: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, last_seen) VALUES ($1, $2, $3, $3)",
                &[&&token_hash[..], &user_id, &now],
            )?;
            Ok(())
        })
    }

    fn touch_session(&self, token_hash: &[u8; 32], now: i64, limits: SessionLimits) -> StoreResult<Option<User>> {
        let hash = &token_hash[..];
        self.with(|c| {
            let row = c.query_opt(
                "SELECT s.user_id, s.created_at, s.last_seen, u.disabled FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = $1",
                &[&hash],
            )?;
            let Some(row) = row else { return Ok(None) };
            let (user_id, created_at, last_seen, disabled): (i64, i64, i64, bool) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            let idle = limits.idle.as_secs() as i64;
            let absolute = limits.absolute.as_secs() as i64;
            if disabled || now - last_seen > idle || now - created_at > absolute {
                c.execute("DELETE FROM sessions WHERE token_hash = $1", &[&hash])?;
                return Ok(None);
            }
            // Refresh at most every few seconds to spare writes.
            if now - last_seen >= 5 {
                c.execute(
                    "UPDATE sessions SET last_seen = $1 WHERE token_hash = $2",
                    &[&now, &hash],
                )?;
            }
            Ok(load_user(c, "id = $1", &user_id)?.map(|c| c.user))
        })
    }

    fn delete_session(&self, token_hash: &[u8; 32]) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM sessions WHERE token_hash = $1", &[&&token_hash[..]])?;
            Ok(())
        })
    }

    fn purge_sessions(&self, now: i64, limits: SessionLimits) -> StoreResult<usize> {
        let idle_before = now - limits.idle.as_secs() as i64;
        let absolute_before = now - limits.absolute.as_secs() as i64;
        self.with(|c| {
            let n = c.execute(
                "DELETE FROM sessions WHERE last_seen < $1 OR created_at < $2",
                &[&idle_before, &absolute_before],
            )?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }
}

impl AuditStore for PgStore {
    fn audit(&self, event: AuditEvent) -> StoreResult<()> {
        self.write(|tx| write_audit(tx, &event))
    }

    fn recent_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT id, at, actor, action, target, client_addr, detail FROM audit_log ORDER BY id DESC LIMIT $1",
                &[&i64::from(limit)],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(AuditRecord {
                        id: r.try_get(0)?,
                        at: r.try_get(1)?,
                        actor: r.try_get(2)?,
                        action: r.try_get(3)?,
                        target: r.try_get(4)?,
                        client_addr: r.try_get(5)?,
                        detail: r.try_get(6)?,
                    })
                })
                .collect()
        })
    }
}
