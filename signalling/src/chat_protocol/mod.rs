//! The typed WebSocket messages of the visitor and agent sockets (draft).
//!
//! One enum per direction: [`VisitorToServer`], [`ServerToVisitor`], [`AgentToServer`], [`ServerToAgent`].
//! Every frame is one JSON object in a WebSocket **text** frame, with a `"type"` field in `snake_case`; unknown
//! types and unknown fields are rejected (the server answers `error` with code `bad_message` and keeps the
//! connection). `docs/ws-messages.md` shows a JSON example of every message; a test parses each of them.
//!
//! # Conventions
//! - Conversation ids are decimal strings (`"42"`), agent ids numbers (see [`ConversationId`], [`AgentId`]).
//! - `seq` numbers a conversation's messages from 1, in the one order everybody sees; `ts` is Unix time in
//!   milliseconds, set by the server.
//! - `client_id` is chosen by the sender of a message (unique per sender, at most [`MAX_CLIENT_ID_BYTES`]); the
//!   server echoes it back to that sender only, so a client can match its pending message and drop
//!   duplicates after a resume.
//! - Every `body` the server sends is **masked text**: the server fills it only from the masker's
//!   `MaskedText` (a `String` here because the wire type is just text). Nothing sent by the server carries the
//!   raw text a visitor typed, not even back to that visitor.
//!
//! # Sizes
//! Size limits are the caller's job, before and after parsing: the socket refuses frames larger than
//! [`MAX_FRAME_BYTES`] (use [`parse_frame`], which checks the length before parsing, or the WebSocket library's
//! own frame limit), and the chat layer refuses bodies longer than [`MAX_BODY_BYTES`] with
//! [`ErrorCode::TooLarge`]. Neither closes the connection.

use serde::{Deserialize, Serialize};

pub use crate::domain::{AgentId, ConversationId, GroupId};
pub use crate::routing::{AgentStatus, Presence};

/// The largest text frame the sockets accept (JSON included). Larger frames get [`ErrorCode::TooLarge`].
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// The default limit of a message body in bytes of UTF-8 (the chat layer's configurable limit).
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// The longest `client_id` accepted.
pub const MAX_CLIENT_ID_BYTES: usize = 64;

mod agent;
mod calls;
mod parse;
mod shared;
mod visitor;

pub use agent::*;
pub use calls::*;
pub use parse::*;
pub use shared::*;
pub use visitor::*;

/// The `type` name of each message (for logs and metrics: never log a frame, log its type).
pub trait MessageType {
    /// The value of the `"type"` field.
    fn type_name(&self) -> &'static str;
}

#[cfg(test)]
mod tests;
