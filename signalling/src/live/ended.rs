//! A conversation that ended, as the hub hands it over, and where it goes: the [`ConversationSink`] (the
//! archive implements it).

use std::future::Future;
use std::pin::Pin;

use crate::chat_protocol::{AgentId, Author, ConversationId, GroupId};
use crate::masking::MaskedText;

/// One message of an ended conversation, as the archive stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Position in the conversation, from 1.
    pub seq: u64,
    /// Who wrote it.
    pub author: Author,
    /// Server time, Unix milliseconds.
    pub sent_at_ms: u64,
    /// The masked text (amendments applied); of an in-call file, its name.
    pub body: MaskedText,
    /// Chat, or what passed over a call's data channels.
    pub kind: crate::archive::MessageKind,
    /// The details of an in-call file.
    pub file: Option<crate::archive::CallFile>,
}

/// An agent who handled a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// The agent (store user id).
    pub agent: AgentId,
    /// The name the visitor saw.
    pub name: String,
    /// When they were first assigned, Unix milliseconds.
    pub joined_at_ms: u64,
}

/// A conversation that just ended, handed to the [`ConversationSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedConversation {
    /// The conversation.
    pub id: ConversationId,
    /// The group it belonged to last.
    pub group: GroupId,
    /// The site key the visitor came through.
    pub site_key: String,
    /// The visitor's pseudonymous id (from `POST /api/v1/visitor/session`).
    pub visitor_id: String,
    /// Every agent it was assigned to, in order of first assignment.
    pub participants: Vec<Participant>,
    /// When the visitor joined, Unix milliseconds.
    pub started_at_ms: u64,
    /// When it ended, Unix milliseconds.
    pub ended_at_ms: u64,
    /// Why it ended.
    pub reason: crate::chat_protocol::EndReason,
    /// The messages in `seq` order, masked.
    pub messages: Vec<ArchivedMessage>,
}

/// A boxed future returned by [`ConversationSink::conversation_ended`].
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where ended conversations go (the archive implements it). Called once per conversation, from a task of
/// its own (the hub does not wait for it; on shutdown the hub waits for the pending calls, bounded).
pub trait ConversationSink: Send + Sync + 'static {
    /// Stores an ended conversation. Failures are the sink's to log (without bodies).
    fn conversation_ended(&self, conversation: EndedConversation) -> SinkFuture<'_>;
}

/// The default sink: forgets ended conversations.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopSink;

impl ConversationSink for NoopSink {
    fn conversation_ended(&self, _conversation: EndedConversation) -> SinkFuture<'_> {
        Box::pin(async {})
    }
}

/// The archive stores every ended conversation (masked bodies, encrypted at rest).
impl ConversationSink for crate::archive::Archive {
    fn conversation_ended(&self, c: EndedConversation) -> SinkFuture<'_> {
        use crate::archive::{
            ArchivedMessage as AMessage, ArchivedParticipant, ConversationRecord, MessageAuthor, ParticipantRole,
        };
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut participants = vec![ArchivedParticipant::visitor("Visitor", ms(c.started_at_ms))];
        participants.extend(
            c.participants.iter().map(|p| {
                ArchivedParticipant::user(ParticipantRole::Agent, p.agent.0, p.name.clone(), ms(p.joined_at_ms))
            }),
        );
        let record = ConversationRecord {
            id: c.id.0.to_string(),
            group: c.group.as_str().to_owned(),
            site_key_id: c.site_key,
            visitor_id: crate::masking::Redacted::new(c.visitor_id),
            participants,
            started_at: ms(c.started_at_ms),
            ended_at: ms(c.ended_at_ms.max(c.started_at_ms)),
            messages: c
                .messages
                .into_iter()
                .map(|m| AMessage {
                    seq: m.seq,
                    author: match m.author {
                        Author::Visitor {} => MessageAuthor::Visitor,
                        Author::Agent { id, .. } => MessageAuthor::Agent { user_id: id.0 },
                        Author::System {} => MessageAuthor::System,
                    },
                    sent_at: ms(m.sent_at_ms),
                    body: m.body,
                    kind: m.kind,
                    file: m.file,
                })
                .collect(),
        };
        let id = c.id;
        Box::pin(async move {
            if let Err(e) = self.store_conversation(record).await {
                tracing::error!(conversation = %id, error = %e, "archiving the conversation failed");
            }
        })
    }
}
