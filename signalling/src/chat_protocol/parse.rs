//! Parsing frames and checking chat messages, with errors that are safe to send back.

use serde::de::DeserializeOwned;

use super::*;

/// Why an incoming frame could not be turned into a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame is longer than [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, unknown `type`, unknown or missing field, or a bad value. The text says which kind and, when
    /// known, where (line, column); it never quotes the frame, so it is safe to log and to send back.
    #[error("bad message: {0}")]
    Malformed(String),
    /// A message body is longer than the configured limit (bytes of UTF-8).
    #[error("message body of {len} bytes exceeds the limit of {max}")]
    BodyTooLong {
        /// The body's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message body is empty or only white space.
    #[error("message body is empty")]
    EmptyBody,
    /// A `client_id` is empty, longer than [`MAX_CLIENT_ID_BYTES`], or has characters other than ASCII
    /// letters, digits, `-`, `_`, `.` and `:`.
    #[error("client_id must be 1 to 64 characters of [A-Za-z0-9._:-]")]
    BadClientId,
}

impl ProtocolError {
    /// The `error` frame code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } | Self::BodyTooLong { .. } => ErrorCode::TooLarge,
            Self::Malformed(_) | Self::EmptyBody | Self::BadClientId => ErrorCode::BadMessage,
        }
    }
}

/// Parses one incoming text frame into `T` (one of the `*ToServer` enums), refusing frames longer than
/// `max_len` before parsing.
///
/// # Errors
/// [`ProtocolError::TooLarge`] or [`ProtocolError::Malformed`].
pub fn parse_frame<T: DeserializeOwned>(text: &str, max_len: usize) -> Result<T, ProtocolError> {
    if text.len() > max_len {
        return Err(ProtocolError::TooLarge {
            len: text.len(),
            max: max_len,
        });
    }
    serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(describe(&e)))
}

/// Checks the parts of a chat message (`message` from a visitor or an agent) that the types cannot: the
/// body's length (`max_body_bytes`, [`MAX_BODY_BYTES`] by default) and emptiness, and the `client_id`'s form.
/// Call it after [`parse_frame`] and before masking; on error answer an `error` frame with
/// [`ProtocolError::code`] and keep the connection.
///
/// # Errors
/// [`ProtocolError::BodyTooLong`], [`ProtocolError::EmptyBody`], [`ProtocolError::BadClientId`].
pub fn check_chat_message(client_id: &str, body: &str, max_body_bytes: usize) -> Result<(), ProtocolError> {
    let id_ok = !client_id.is_empty()
        && client_id.len() <= MAX_CLIENT_ID_BYTES
        && client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !id_ok {
        return Err(ProtocolError::BadClientId);
    }
    if body.len() > max_body_bytes {
        return Err(ProtocolError::BodyTooLong {
            len: body.len(),
            max: max_body_bytes,
        });
    }
    if body.trim().is_empty() {
        return Err(ProtocolError::EmptyBody);
    }
    Ok(())
}

/// A description of a parse error that never quotes the frame: serde_json's messages can include string
/// values ("invalid type: string \"4111…\"") or client-chosen names, which must not reach logs or be echoed.
/// Only the names of our own fields (for a missing field) and the position are kept.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = if let Some(rest) = text.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        // Our own field names are short identifiers; anything else is not echoed.
        if !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            format!("missing field `{name}`")
        } else {
            "missing field".to_owned()
        }
    } else if text.starts_with("unknown field") {
        "unknown field".to_owned()
    } else if text.starts_with("unknown variant") {
        "unknown message type or enum value".to_owned()
    } else if text.starts_with("invalid type") {
        "a field has the wrong type".to_owned()
    } else if text.starts_with("invalid value") || text.starts_with("invalid length") {
        "a field has an invalid value".to_owned()
    } else {
        match e.classify() {
            serde_json::error::Category::Syntax => "not valid JSON".to_owned(),
            serde_json::error::Category::Eof => "incomplete JSON".to_owned(),
            serde_json::error::Category::Io | serde_json::error::Category::Data => "invalid message".to_owned(),
        }
    };
    // Errors found after serde buffered an internally tagged object carry no position (line 0).
    if e.line() == 0 {
        what
    } else {
        format!("{what} at line {} column {}", e.line(), e.column())
    }
}
