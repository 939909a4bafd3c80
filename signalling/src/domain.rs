//! The concepts every part of the crate shares: the ids of agents, conversations and groups, a user's
//! role, and the role a party has in a conversation. A leaf: it depends on nothing else in the crate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest display name or label (of a user, a group, an archived participant), in characters.
pub const MAX_DISPLAY_CHARS: usize = 128;

/// An agent (any user who can take conversations: agents, and supervisors or admins who also take chats).
/// The same number as the user's id in the store; a JSON number on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub i64);

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent:{}", self.0)
    }
}

/// A conversation (one visitor's chat, from joining the queue to its end). On the wire a JSON **string** of
/// decimal digits (`"42"`), because JavaScript numbers lose integers above 2^53.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub u64);

impl serde::Serialize for ConversationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ConversationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        // Canonical decimal only: no sign, no leading zeros (so one id has one spelling).
        let canonical =
            !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text.len() == 1 || !text.starts_with('0'));
        match text.parse::<u64>() {
            Ok(n) if canonical => Ok(Self(n)),
            _ => Err(serde::de::Error::custom("conversation id must be a decimal string")),
        }
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conversation:{}", self.0)
    }
}

/// An agent group (the target of a site key), by its unique name. The caller normalises case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct GroupId(String);

impl GroupId {
    /// The group with this (already normalised) name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The group named `name` as the store spells or a user types it. The one case-folding rule for group
    /// names, the store's own (SQLite `NOCASE`): ASCII letters compare without case, every other character
    /// exactly. So `Sales` and `sales` are one group, while `Äpfel` and `äpfel`, or `Key` and `\u{212A}ey`
    /// (a Kelvin sign), stay as distinct here as they are in the store.
    pub fn from_name(name: &str) -> Self {
        Self(name.to_ascii_lowercase())
    }

    /// The group's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Handles conversations.
    Agent,
    /// Watches the conversations of their groups.
    Supervisor,
    /// Administers users, groups and site keys.
    Admin,
}

impl Role {
    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The party a participant is in a conversation: in its transcript (`archive`) and in a call's
/// `call_state` frames (`chat_protocol::CallParty`). Serialised in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantRole {
    /// The website visitor (customer).
    Visitor,
    /// An agent who handled the conversation (in a call: the agent's peer connection).
    Agent,
    /// A supervisor who watched it (in a call: a silent monitoring connection, reported to that
    /// supervisor only, never to the visitor nor to the agent).
    Supervisor,
}

impl ParticipantRole {
    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantRole::Visitor => "visitor",
            ParticipantRole::Agent => "agent",
            ParticipantRole::Supervisor => "supervisor",
        }
    }

    /// The role named `s` (as [`as_str`](Self::as_str) writes it).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "visitor" => Some(ParticipantRole::Visitor),
            "agent" => Some(ParticipantRole::Agent),
            "supervisor" => Some(ParticipantRole::Supervisor),
            _ => None,
        }
    }
}
