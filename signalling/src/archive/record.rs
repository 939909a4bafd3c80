//! The archive's records: what the live layer hands over ([`ConversationRecord`]), what an export gives
//! back ([`Transcript`]), their bounds and formats.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ArchiveError, MAX_BODY_BYTES, MAX_DISPLAY_CHARS, MAX_ID_BYTES, MAX_MESSAGES, MAX_PARTICIPANTS, Result};
use crate::masking::{MaskedText, Redacted};

pub use crate::domain::ParticipantRole;

/// One participant of an archived conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ArchivedParticipant {
    /// Their role.
    pub role: ParticipantRole,
    /// The store user id for agents and supervisors; `None` for the visitor.
    pub user_id: Option<i64>,
    /// The name shown in the conversation.
    pub display_name: String,
    /// When they joined (unix ms), if known.
    pub joined_at: Option<i64>,
    /// When they left (unix ms), if before the end.
    pub left_at: Option<i64>,
}

impl ArchivedParticipant {
    /// The visitor, joined at `joined_at` (unix ms).
    pub fn visitor(display_name: impl Into<String>, joined_at: i64) -> Self {
        Self {
            role: ParticipantRole::Visitor,
            user_id: None,
            display_name: display_name.into(),
            joined_at: Some(joined_at),
            left_at: None,
        }
    }

    /// An agent or supervisor (store user id), joined at `joined_at` (unix ms).
    pub fn user(role: ParticipantRole, user_id: i64, display_name: impl Into<String>, joined_at: i64) -> Self {
        Self {
            role,
            user_id: Some(user_id),
            display_name: display_name.into(),
            joined_at: Some(joined_at),
            left_at: None,
        }
    }
}

/// Who wrote an archived message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageAuthor {
    /// The visitor.
    Visitor,
    /// An agent (or supervisor), by store user id.
    Agent {
        /// The user id.
        user_id: i64,
    },
    /// The server (notices such as transfers).
    System,
}

/// What a transcript entry is: a chat message (or notice) over the WebSocket, or what passed over a call's
/// data channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A chat message (or a notice).
    #[default]
    Chat,
    /// In-call text (a call's `text` data channel), masked as it was relayed.
    CallText,
    /// A file sent during a call (a call's `file` data channel): the body is its name (cleaned, masked),
    /// the `file` field its size, type and hash. The content is not kept.
    CallFile,
}

impl MessageKind {
    /// The name stored in `archive_messages.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Chat => "chat",
            MessageKind::CallText => "call_text",
            MessageKind::CallFile => "call_file",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "chat" => MessageKind::Chat,
            "call_text" => MessageKind::CallText,
            "call_file" => MessageKind::CallFile,
            _ => return None,
        })
    }
}

/// A file relayed during a call, as the transcript lists it (its name is the entry's body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallFile {
    /// Size in bytes.
    pub size: u64,
    /// The media type the sender declared (and the server's file policy accepted).
    pub mime: String,
    /// SHA-256 of the bytes relayed, computed by the server while relaying (lowercase hex).
    pub sha256: String,
}

impl CallFile {
    fn validate(&self) -> Result<()> {
        if self.mime.is_empty() || self.mime.len() > 255 {
            return Err(ArchiveError::Invalid("call file media type length".into()));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ArchiveError::Invalid(
                "call file sha256 is not 64 lowercase hex digits".into(),
            ));
        }
        Ok(())
    }
}

/// A call file as sealed in `archive_messages.body`.
#[derive(Serialize, Deserialize)]
pub(super) struct SealedCallFile {
    pub(super) name: String,
    #[serde(flatten)]
    pub(super) file: CallFile,
}

/// One message to archive. The body is [`MaskedText`]: only masked text can be archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Sequence number, unique within the conversation (order of the transcript).
    pub seq: u64,
    /// Who wrote it.
    pub author: MessageAuthor,
    /// When it was sent (unix ms).
    pub sent_at: i64,
    /// The masked body (of a [`MessageKind::CallFile`]: the file name).
    pub body: MaskedText,
    /// What it is.
    pub kind: MessageKind,
    /// The file of a [`MessageKind::CallFile`] (and of no other kind).
    pub file: Option<CallFile>,
}

/// An ended conversation, as handed to [`Archive::store_conversation`](super::Archive::store_conversation).
#[derive(Debug, Clone)]
pub struct ConversationRecord {
    /// The canonical conversation id (1 to [`MAX_ID_BYTES`] printable ASCII bytes, e.g. `"42"`).
    pub id: String,
    /// The agent group (name) the conversation belonged to at its end; supervisors of it may export it.
    pub group: String,
    /// The site key (`pk_…`) the visitor came through.
    pub site_key_id: String,
    /// The visitor's id; stored only as a digest, redacted in `Debug`/`Display`.
    pub visitor_id: Redacted<String>,
    /// Everyone who took part.
    pub participants: Vec<ArchivedParticipant>,
    /// Start (unix ms).
    pub started_at: i64,
    /// End (unix ms), not before `started_at`.
    pub ended_at: i64,
    /// The messages; sequence numbers unique.
    pub messages: Vec<ArchivedMessage>,
}

/// A decrypted message of a [`Transcript`]. The body is the masked text that was archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TranscriptMessage {
    /// Sequence number.
    pub seq: u64,
    /// Who wrote it.
    pub author: MessageAuthor,
    /// When (unix ms).
    pub sent_at: i64,
    /// The masked body (of a `call_file` entry: the file name).
    pub body: String,
    /// What it is.
    pub kind: MessageKind,
    /// The file of a `call_file` entry (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<CallFile>,
}

/// A decrypted (masked) transcript, as exported. Serialises as the JSON of the export endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Transcript {
    /// The conversation id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// The site key the visitor came through.
    pub site_key_id: String,
    /// Start (unix ms).
    pub started_at: i64,
    /// End (unix ms).
    pub ended_at: i64,
    /// Participants in the order they were recorded.
    pub participants: Vec<ArchivedParticipant>,
    /// Messages by sequence number.
    pub messages: Vec<TranscriptMessage>,
}

impl Transcript {
    /// The JSON export (`relaydesk archive export --format json`), pretty-printed.
    pub fn to_json_pretty(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Human-readable form (`relaydesk archive export --format text`), one message per line, times in UTC.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Conversation {} (group {}, site key {})",
            self.id, self.group, self.site_key_id
        );
        let _ = writeln!(
            out,
            "Started {}, ended {}",
            format_unix_ms(self.started_at),
            format_unix_ms(self.ended_at)
        );
        for p in &self.participants {
            match p.user_id {
                Some(id) => {
                    let _ = writeln!(out, "Participant: {} {} (user {id})", p.role.as_str(), p.display_name);
                }
                None => {
                    let _ = writeln!(out, "Participant: {} {}", p.role.as_str(), p.display_name);
                }
            }
        }
        for m in &self.messages {
            let who = match m.author {
                MessageAuthor::Visitor => "visitor".to_string(),
                MessageAuthor::Agent { user_id } => self
                    .participants
                    .iter()
                    .find(|p| p.user_id == Some(user_id))
                    .map(|p| format!("{} (user {user_id})", p.display_name))
                    .unwrap_or_else(|| format!("user {user_id}")),
                MessageAuthor::System => "system".to_string(),
            };
            // One line per message: line breaks inside a body are shown as `\n`.
            let body = m.body.replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r");
            let at = format_unix_ms(m.sent_at);
            let _ = match (m.kind, &m.file) {
                (MessageKind::CallFile, Some(f)) => writeln!(
                    out,
                    "[{at}] #{} {who} (in call, file): {body} ({}, {} bytes, sha256 {})",
                    m.seq, f.mime, f.size, f.sha256
                ),
                (MessageKind::CallText, _) => writeln!(out, "[{at}] #{} {who} (in call): {body}", m.seq),
                _ => writeln!(out, "[{at}] #{} {who}: {body}", m.seq),
            };
        }
        out
    }
}

/// Formats unix milliseconds as RFC 3339 UTC (`2026-11-21T20:54:47.123Z`).
pub fn format_unix_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// The digest stored instead of a visitor id.
pub(super) fn visitor_digest(visitor_id: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"relaydesk/visitor/v1");
    h.update(visitor_id.as_bytes());
    h.finalize().to_vec()
}

fn valid_id(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_ID_BYTES || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ArchiveError::Invalid(format!(
            "{what} must be 1 to {MAX_ID_BYTES} printable ASCII characters"
        )));
    }
    Ok(())
}

impl ConversationRecord {
    /// Checks bounds and consistency (called by [`Archive::store_conversation`](super::Archive::store_conversation)).
    ///
    /// # Errors
    /// [`ArchiveError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<()> {
        valid_id("conversation id", &self.id)?;
        if self.group.is_empty() || self.group.chars().count() > crate::store::MAX_NAME_CHARS {
            return Err(ArchiveError::Invalid("group name length".into()));
        }
        valid_id("site key id", &self.site_key_id)?;
        if self.visitor_id.expose().is_empty() || self.visitor_id.expose().len() > MAX_ID_BYTES {
            return Err(ArchiveError::Invalid("visitor id length".into()));
        }
        if self.ended_at < self.started_at {
            return Err(ArchiveError::Invalid("ended_at is before started_at".into()));
        }
        if self.participants.len() > MAX_PARTICIPANTS {
            return Err(ArchiveError::Invalid(format!(
                "more than {MAX_PARTICIPANTS} participants"
            )));
        }
        for p in &self.participants {
            if p.display_name.chars().count() > MAX_DISPLAY_CHARS {
                return Err(ArchiveError::Invalid("participant display name too long".into()));
            }
            if (p.role == ParticipantRole::Visitor) != p.user_id.is_none() {
                return Err(ArchiveError::Invalid(
                    "the visitor has no user id; agents and supervisors have one".into(),
                ));
            }
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(ArchiveError::Invalid(format!("more than {MAX_MESSAGES} messages")));
        }
        let mut seqs = std::collections::HashSet::with_capacity(self.messages.len());
        for m in &self.messages {
            if i64::try_from(m.seq).is_err() {
                return Err(ArchiveError::Invalid("message seq above 2^63-1".into()));
            }
            if !seqs.insert(m.seq) {
                return Err(ArchiveError::Invalid(format!("duplicate message seq {}", m.seq)));
            }
            if m.body.len() > MAX_BODY_BYTES {
                return Err(ArchiveError::Invalid(format!(
                    "message {} longer than {MAX_BODY_BYTES} bytes",
                    m.seq
                )));
            }
            match (m.kind, &m.file) {
                (MessageKind::CallFile, Some(f)) => f.validate()?,
                (MessageKind::CallFile, None) | (_, Some(_)) => {
                    return Err(ArchiveError::Invalid(format!(
                        "message {}: a call_file entry has a file, no other has",
                        m.seq
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
