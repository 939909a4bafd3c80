//! Data-channel wire format: in-call text and file transfer.
//!
//! A client opens (in its SDP offer, in-band DCEP) up to two data channels with these labels. A channel
//! with any other label is refused: the server sends on it one [`ChannelError`] with code
//! `unknown_data_channel` and closes it. (The full contract is in `docs/protocol.md`, "In-call data
//! channels".)
//!
//! ## `text` — in-call text
//! - Client → server: one UTF-8 **text** message per chat line, at most `SfuConfig::max_text_len` bytes.
//! - The server passes it through the embedder's [`crate::TextFilter`] (the masker), then sends to every other
//!   member allowed to read it (a supervisor's text reaches agents only) one **text** message:
//!   `{"from": <participant id>, "role": "visitor"|"agent"|"supervisor", "text": "<filtered text>"}`.
//! - A message that is binary, not UTF-8 or too long is not relayed; its sender gets a [`ChannelError`]
//!   (`not_text`, `too_long`) on its text channel.
//!
//! ## `file` — file transfer
//! Sender → server, in order:
//! 1. a **text** message `{"type":"header","name":"a.pdf","size":1234,"mime":"application/pdf","sha256":"<64 hex>"}`;
//! 2. **binary** messages, the file's bytes in order, each at most `FilePolicy::max_chunk` bytes;
//! 3. a **text** message `{"type":"end"}` (or `{"type":"abort"}` to give up).
//!
//! The server checks the header against the [`crate::FilePolicy`] (size, media type), passes the name through
//! the [`crate::TextFilter`], answers the sender `{"type":"accepted"}` or `{"type":"error","reason":"..."}`, and
//! relays to the recipients: the header (with `"from"` added and the filtered name), the chunks, and the end.
//! At the end it checks the byte count and the SHA-256 itself; on a mismatch the recipients get
//! `{"type":"abort","reason":"..."}` instead of the end and the sender an error. The sender gets
//! `{"type":"done"}` on success. Recipients verify the SHA-256 from the header themselves (end to end).
//! Backpressure: the server queues chunks per recipient and writes them as the recipient's SCTP buffer drains
//! (`ChannelBufferedAmountLow`); a sender should watch its own `bufferedAmount` the same way.

use serde::{Deserialize, Serialize};

/// Label of the in-call text channel.
pub const TEXT_LABEL: &str = "text";
/// Label of the file-transfer channel.
pub const FILE_LABEL: &str = "file";

/// A control message on the `file` channel (text messages; chunks are binary messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum FileMessage {
    /// Start of a file.
    Header {
        /// Sender's participant id, set by the server when relaying.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<u64>,
        /// File name (filtered by the server when relaying).
        name: String,
        /// Size in bytes.
        size: u64,
        /// Media type.
        mime: String,
        /// SHA-256 of the content, lowercase hex.
        sha256: String,
    },
    /// All chunks sent.
    End,
    /// The transfer is given up.
    Abort {
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Server → sender: the header was accepted.
    Accepted,
    /// Server → sender: the file was relayed and verified.
    Done,
    /// Server → sender: refused.
    Error {
        /// Why.
        reason: String,
    },
}

/// A relayed in-call text message (server → recipients on the `text` channel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextMessage {
    /// Author's participant id.
    pub from: u64,
    /// Author's role.
    pub role: String,
    /// The filtered text.
    pub text: String,
}

/// The `code` of a [`ChannelError`].
pub mod error_code {
    /// A data channel with a label other than `text` and `file`: sent on it just before it is closed.
    pub const UNKNOWN_DATA_CHANNEL: &str = "unknown_data_channel";
    /// A `text` channel message that is binary or not UTF-8: not relayed.
    pub const NOT_TEXT: &str = "not_text";
    /// A `text` channel message longer than the limit: not relayed.
    pub const TOO_LONG: &str = "too_long";
}

/// Server → client: an error on the `text` channel (a message was not relayed) or on a channel with an
/// unknown label (just before the server closes it):
/// `{"type":"error","code":"unknown_data_channel","reason":"..."}`. Codes: [`error_code`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelError {
    /// Always `"error"` (relayed text messages have no `type`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Machine-readable code, one of [`error_code`].
    pub code: String,
    /// Human-readable reason.
    pub reason: String,
}

impl ChannelError {
    /// An error with `code` and `reason`.
    pub fn new(code: &str, reason: String) -> Self {
        Self {
            kind: "error".into(),
            code: code.into(),
            reason,
        }
    }

    /// Its JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
