//! `relaydesk mask`, `relaydesk archive export|purge` and `relaydesk keys rotate`.

use std::io::Write as _;

use relaydesk_signalling::archive::{self, ArchiveError, ArchiveKeys, KeySource};
use relaydesk_signalling::config::Config;
use relaydesk_signalling::masking::{MaskPolicy, Masker, Redacted, mask_lines};
use relaydesk_signalling::recording;
use relaydesk_signalling::store::{AuditEvent, Storage};

use crate::cli::{ArchiveCommand, ExportFormat, KeysCommand, MaskArgs};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Largest policy file read (a policy is a few kilobytes).
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// `relaydesk mask`: stdin lines → masked lines on stdout. Invalid UTF-8 or an overlong line stops with an
/// error (the lines before it are printed) and a non-zero exit.
pub fn mask(args: &MaskArgs) -> Result<()> {
    let masker = match &args.policy {
        None => Masker::default(),
        Some(path) => {
            let meta = std::fs::metadata(path).map_err(|e| format!("policy file {}: {e}", path.display()))?;
            if meta.len() > MAX_POLICY_BYTES {
                return Err(format!("policy file {} is larger than {MAX_POLICY_BYTES} bytes", path.display()).into());
            }
            let text = std::fs::read_to_string(path).map_err(|e| format!("policy file {}: {e}", path.display()))?;
            let policy = parse_policy(&text).map_err(|e| format!("policy file {}: {e}", path.display()))?;
            policy
                .compile()
                .map_err(|e| format!("policy file {}: {e}", path.display()))?
        }
    };
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let result = mask_lines(&masker, stdin, &mut stdout);
    let flushed = stdout.flush();
    result?;
    flushed?;
    Ok(())
}

/// A policy file holds a `[masking]` table (as in docs/masking.md) or the same keys at the top level.
fn parse_policy(text: &str) -> std::result::Result<MaskPolicy, toml::de::Error> {
    let table: toml::Table = toml::from_str(text)?;
    match table.get("masking") {
        Some(toml::Value::Table(inner)) if table.len() == 1 => inner.clone().try_into(),
        _ => table.try_into(),
    }
}

fn open_keys(db: &dyn Storage, config: &Config) -> std::result::Result<ArchiveKeys, ArchiveError> {
    ArchiveKeys::open(
        KeySource::resolve(config.archive.master_key_file.as_deref(), &config.data_dir, |k| {
            std::env::var(k).ok()
        }),
        db,
    )
}

/// `relaydesk archive …`.
pub fn archive(db: &dyn Storage, config: &Config, command: ArchiveCommand) -> Result<()> {
    match command {
        ArchiveCommand::Export {
            conversation,
            recording: Some(path),
            recording_id,
            ..
        } => export_recording(db, config, &conversation, &path, recording_id.as_deref()),
        ArchiveCommand::Recordings { conversation } => {
            println!("{:<28} {:<12} {:<8} STARTED", "ID", "STATE", "CHUNKS");
            for r in recording::list(db, &conversation)? {
                println!(
                    "{:<28} {:<12} {:<8} {}",
                    r.id,
                    r.state.as_str(),
                    r.chunks,
                    archive::format_unix_ms(r.started_at)
                );
            }
            Ok(())
        }
        ArchiveCommand::Export {
            conversation, format, ..
        } => {
            let keys = open_keys(db, config)?;
            let audit = AuditEvent {
                actor: Some("cli".into()),
                action: "archive.export".into(),
                target: Some(format!("conversation:{conversation}")),
                ..Default::default()
            };
            let transcript = keys.export(db, &conversation, &audit)?;
            let mut out = std::io::stdout().lock();
            match format {
                ExportFormat::Json => {
                    writeln!(out, "{}", transcript.to_json_pretty())?;
                }
                ExportFormat::Text => out.write_all(transcript.to_text().as_bytes())?,
            }
            out.flush()?;
            Ok(())
        }
        ArchiveCommand::Purge {
            older_than_days,
            visitor,
        } => {
            let erased = match (older_than_days, visitor) {
                (Some(days), None) => {
                    let cutoff = archive::unix_now_ms().saturating_sub(i64::from(days) * 86_400_000);
                    archive::purge_ended_before(db, cutoff, "cli")?
                }
                (None, Some(visitor)) => archive::purge_visitor(db, &Redacted::new(visitor), "cli")?,
                // clap's argument group makes exactly one of them present.
                _ => return Err("give exactly one of --older-than-days or --visitor".into()),
            };
            println!("erased {erased} archived conversations");
            Ok(())
        }
    }
}

/// `relaydesk archive export --recording FILE`: decrypts a recording into a new file (never overwriting
/// one: a recording is not to be lost by a typo), audited as `recording.export`.
fn export_recording(
    db: &dyn Storage,
    config: &Config,
    conversation: &str,
    path: &std::path::Path,
    which: Option<&str>,
) -> Result<()> {
    let keys = open_keys(db, config)?;
    let audit = AuditEvent {
        actor: Some("cli".into()),
        action: "recording.export".into(),
        target: Some(format!("conversation:{conversation}")),
        ..Default::default()
    };
    // The file first: a refused destination decrypts (and audits) nothing.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let out = match recording::export(db, &keys, conversation, which, &audit) {
        Ok(out) => out,
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
    };
    file.write_all(&out.webm)?;
    file.sync_all()?;
    let note = if out.complete {
        String::new()
    } else {
        " (interrupted: up to its last sealed chunk)".to_owned()
    };
    println!(
        "recording {} written to {} ({} bytes){note}",
        out.info.id,
        path.display(),
        out.webm.len()
    );
    Ok(())
}

/// `relaydesk keys …`.
pub fn keys(db: &dyn Storage, config: &Config, command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Rotate => {
            let source = KeySource::resolve(config.archive.master_key_file.as_deref(), &config.data_dir, |k| {
                std::env::var(k).ok()
            });
            let KeySource::File(path) = source.clone() else {
                return Err(ArchiveError::NotRotatable(format!(
                    "the master key is given by {}; generate a new key and re-wrap with a key file instead",
                    archive::ENV_MASTER_KEY
                ))
                .into());
            };
            // Creates the key on a fresh data directory and records it, so there is something to rotate.
            drop(ArchiveKeys::open(source, db)?);
            let report = archive::rotate_master_key(db, &path, "cli")?;
            println!(
                "master key rotated: {} -> {} ({} conversation keys re-wrapped); key file {}",
                report.old_key_id,
                report.new_key_id,
                report.rewrapped,
                path.display()
            );
            Ok(())
        }
    }
}
