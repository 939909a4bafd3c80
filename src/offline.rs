//! Offline administration on the data directory (the server may be running: SQLite serialises writers).
//! Every change is written to the audit log with actor `cli`.

use std::io::BufRead as _;

use relaydesk_signalling::config::Config;
use relaydesk_signalling::origin::normalize_origin;
use relaydesk_signalling::store::{AuditEvent, NewUser, Storage, UserUpdate};
use relaydesk_signalling::{password, token};

use crate::cli::{Command, GroupCommand, KeyCommand, UserCommand};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn audit(action: &str, target: &str) -> AuditEvent {
    AuditEvent {
        actor: Some("cli".into()),
        action: action.into(),
        target: Some(target.into()),
        ..Default::default()
    }
}

/// Reads the first line of stdin as a password (without its line ending).
fn read_password_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    password::check_policy(&pw)?;
    Ok(pw)
}

/// A password from stdin, or a generated one (returned as `Some` to be printed once).
fn obtain_password(from_stdin: bool) -> Result<(String, Option<String>)> {
    if from_stdin {
        Ok((read_password_stdin()?, None))
    } else {
        let pw = token::new_password()?;
        Ok((pw.clone(), Some(pw)))
    }
}

/// Runs one offline command.
pub fn run(command: Command, config: &Config) -> Result<()> {
    let db = relaydesk_signalling::store::open(&config.database, &config.data_dir)?;
    let db = db.as_ref();
    match command {
        Command::Serve(_) => Err("serve is not an offline command".into()),
        Command::User(c) => user(db, c),
        Command::Group(c) => group(db, c),
        Command::Key(c) => key(db, c),
        Command::Archive(c) => crate::archive_cli::archive(db, config, c),
        Command::Keys(c) => crate::archive_cli::keys(db, config, c),
        Command::Mask(_) => Err("mask is not an offline command".into()),
        Command::Cluster(_) => Err("cluster is not an offline command".into()),
    }
}

fn user(db: &dyn Storage, c: UserCommand) -> Result<()> {
    match c {
        UserCommand::Add {
            name,
            role,
            groups,
            display_name,
            max_conversations,
            password_stdin,
        } => {
            // Check what can be checked before the (slow) hash.
            if db.user_exists(&name)? {
                return Err(format!("user {name:?} already exists").into());
            }
            for g in &groups {
                db.group(g)
                    .map_err(|_| format!("unknown group {g:?} (create it with `relaydesk group add {g}`)"))?;
            }
            let (pw, generated) = obtain_password(password_stdin)?;
            let new = NewUser {
                username: name.clone(),
                display_name,
                role,
                groups,
                max_conversations,
                password_hash: password::hash_password(&pw)?,
            };
            let u = db.create_user(new, audit("user.create", &name))?;
            println!(
                "created user {} (id {}, role {}, groups: {})",
                u.username,
                u.id,
                u.role,
                u.groups.join(",")
            );
            if let Some(pw) = generated {
                println!("password: {pw}");
            }
        }
        UserCommand::List => {
            println!(
                "{:<6} {:<24} {:<10} {:<4} {:<8} {:<24} GROUPS",
                "ID", "USERNAME", "ROLE", "MAX", "STATE", "DISPLAY NAME"
            );
            for u in db.list_users()? {
                let state = if u.disabled { "disabled" } else { "active" };
                println!(
                    "{:<6} {:<24} {:<10} {:<4} {:<8} {:<24} {}",
                    u.id,
                    u.username,
                    u.role,
                    u.max_conversations,
                    state,
                    u.display_name,
                    u.groups.join(",")
                );
            }
        }
        UserCommand::Passwd { name, password_stdin } => {
            let id = db.user_by_name(&name)?.id;
            let (pw, generated) = obtain_password(password_stdin)?;
            let update = UserUpdate {
                password_hash: Some(password::hash_password(&pw)?),
                ..Default::default()
            };
            db.update_user(id, update, audit("user.passwd", &name))?;
            println!("password of {name} changed; their sessions ended");
            if let Some(pw) = generated {
                println!("password: {pw}");
            }
        }
        UserCommand::Disable { name } => {
            let id = db.user_by_name(&name)?.id;
            db.update_user(
                id,
                UserUpdate {
                    disabled: Some(true),
                    ..Default::default()
                },
                audit("user.disable", &name),
            )?;
            println!("user {name} disabled; their sessions ended");
        }
        UserCommand::Enable { name } => {
            let id = db.user_by_name(&name)?.id;
            db.update_user(
                id,
                UserUpdate {
                    disabled: Some(false),
                    ..Default::default()
                },
                audit("user.enable", &name),
            )?;
            println!("user {name} enabled");
        }
    }
    Ok(())
}

fn group(db: &dyn Storage, c: GroupCommand) -> Result<()> {
    match c {
        GroupCommand::Add { name, recording } => {
            let mut ev = audit("group.create", &name);
            ev.detail = Some(format!("recording {recording}"));
            let g = db.create_group_with(&name, recording, ev)?;
            println!("created group {} (id {}, recording {})", g.name, g.id, g.recording);
        }
        GroupCommand::Set { name, recording } => {
            let mut ev = audit("group.recording", &name);
            ev.detail = Some(format!("recording {recording}"));
            let g = db.set_group_recording(&name, recording, ev)?;
            println!("group {}: recording {}", g.name, g.recording);
        }
        GroupCommand::List => {
            println!("{:<6} {:<24} {:<8} RECORDING", "ID", "NAME", "MEMBERS");
            for g in db.list_groups()? {
                println!("{:<6} {:<24} {:<8} {}", g.id, g.name, g.members, g.recording);
            }
        }
    }
    Ok(())
}

fn key(db: &dyn Storage, c: KeyCommand) -> Result<()> {
    match c {
        KeyCommand::Add { group, origins, label } => {
            let origins = origins
                .iter()
                .map(|o| normalize_origin(o).map_err(|e| format!("bad origin {o:?}: {e}")))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            db.group(&group).map_err(|_| format!("unknown group {group:?}"))?;
            let key = token::new_site_key()?;
            let mut ev = audit("key.create", &key);
            ev.detail = Some(format!("group {group}"));
            let k = db.create_site_key(&key, &group, &origins, &label, ev)?;
            println!("{}", k.key);
        }
        KeyCommand::List => {
            println!("{:<36} {:<16} {:<8} ORIGINS", "KEY", "GROUP", "STATE");
            for k in db.list_site_keys()? {
                let state = if k.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{:<36} {:<16} {:<8} {}", k.key, k.group, state, k.origins.join(" "));
            }
        }
        KeyCommand::Revoke { key } => {
            db.revoke_site_key(&key, audit("key.revoke", &key))?;
            println!("revoked {key}");
        }
    }
    Ok(())
}
