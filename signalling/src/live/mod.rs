//! The live conversation layer: visitor session tokens, the visitor and agent WebSockets, the routing hub,
//! chat with masking, resume, and call signalling relayed to the media side.
//!
//! # Shape
//! - [`tokens`]: single-use visitor session tokens (only SHA-256 hashes kept, in memory) and the
//!   fixed-window limiter of `POST /api/v1/visitor/session`.
//! - `visitor` and `agent`: the HTTP handlers (session endpoint, WebSocket upgrades). Each socket runs in its
//!   own task (`socket`): it enforces frame limits, rate limits, keepalive and shutdown, parses frames and
//!   sends commands to the hub.
//! - `hub`: one task owning all live state (the sans-IO [`Router`](crate::routing::Router), the
//!   conversations with their [`ConversationMasker`](crate::masking::ConversationMasker) and messages, the
//!   sockets' outboxes, the media legs). Commands come in over an unbounded channel and are handled one at a
//!   time, so every conversation has one order of messages; timers are the router's `poll_timeout` and the
//!   visitors' resume deadlines.
//!
//! Every text a visitor or agent sends passes the conversation's masker inside the hub before it is stored
//! or sent anywhere; only [`MaskedText`] is put into outgoing bodies and into the [`EndedConversation`]
//! handed to the [`ConversationSink`]. Nothing here logs a message body or a token.
//!
//! The wire protocol is documented in `docs/protocol.md` (endpoints, close codes) and `docs/ws-messages.md`
//! (frames).

mod agent;
pub mod files;
mod hub;
pub mod limits;
mod persist;
mod socket;
pub mod tokens;
mod visitor;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::FromRef;
use tokio::sync::mpsc;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use crate::chat_protocol::{AgentId, Author, ConversationId, GroupId};
use crate::config::Config;
use crate::http::plumbing::AuthState;
use crate::masking::MaskedText;
use crate::media::{MediaControl, MediaEvent};

pub use crate::live_config::{FilesConfig, LimitsConfig, LiveConfig};
pub use tokens::{TokenGrant, VisitorTokens, WindowLimiter};
// The visitor session request and its URL check, public for the fuzz targets (fuzz/).
/// The visitor socket handler, also serving the widget frame's socket (`web`).
pub(crate) use visitor::visitor_ws;
pub use visitor::{SessionRequest, url_origin};

/// Close codes of the visitor and agent sockets (besides the standard 1000, 1001, 1008, 1009, 1011).
pub mod close {
    /// The first frame was not `hello` (token socket) or `resume` (socket opened without a token), or it did
    /// not arrive within 10 s.
    pub const PROTOCOL: u16 = 4400;
    /// The resume token is unknown, used or expired; on the agent socket: the login session ended.
    pub const RESUME_REFUSED: u16 = 4401;
    /// The socket's `Origin` does not match the conversation's.
    pub const ORIGIN: u16 = 4403;
    /// No frame or pong for two ping intervals.
    pub const KEEPALIVE: u16 = 4408;
    /// Another socket resumed this conversation (only the newest socket is served).
    pub const SUPERSEDED: u16 = 4409;
    /// The client does not read its frames fast enough (outbox full, or a write blocked for 10 s).
    pub const SLOW_CONSUMER: u16 = 4429;
    /// Agent socket: the user's groups changed; reconnect to get the new ones.
    pub const RIGHTS_CHANGED: u16 = 4410;
    /// The server is at a conversation cap (`[live.limits]`); an `error` frame with code `busy` comes first.
    pub const BUSY: u16 = 4503;
}

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

/// Identifies one WebSocket within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);

/// What the live routes (visitor and agent sockets, the session endpoint, files), the web clients' routes
/// and the hub share: the parts of the application they use, and the live layer itself.
#[derive(Debug)]
pub struct LiveState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The store (site keys, sessions of agents).
    pub store: crate::store::Store,
    /// The encrypted archive (live conversations at rest, recordings).
    pub archive: Arc<crate::archive::Archive>,
    /// The server's shutdown signal; sockets end when it resolves.
    pub shutdown: crate::shutdown::ShutdownHandle,
    /// Tokens, limiters, the hub's command channel, and the media and archive seams.
    pub live: Live,
    /// TURN credentials and the TURN-over-TLS pass-through (`[turn]`); None without TURN.
    pub turn: Option<Arc<crate::turn::TurnService>>,
}

impl LiveState {
    /// The live state over the application's parts; the live layer is new (no media, the no-op sink).
    pub fn new(
        config: Arc<Config>,
        store: crate::store::Store,
        archive: Arc<crate::archive::Archive>,
        shutdown: crate::shutdown::ShutdownHandle,
        turn: Option<Arc<crate::turn::TurnService>>,
    ) -> Self {
        Self {
            live: Live::new(&config.live),
            config,
            store,
            archive,
            shutdown,
            turn,
        }
    }
}

/// The handle of the live state: the state of the live routes.
pub type SharedLive = Arc<LiveState>;

impl FromRef<SharedLive> for AuthState {
    fn from_ref(state: &SharedLive) -> Self {
        AuthState {
            config: Arc::clone(&state.config),
            store: state.store.clone(),
        }
    }
}

/// The live layer's own part of [`LiveState`]: token store, limiters, the hub's command channel, the socket
/// cap, and the media and archive seams.
pub struct Live {
    pub(crate) tokens: VisitorTokens,
    pub(crate) per_address: WindowLimiter<std::net::IpAddr>,
    pub(crate) per_key: WindowLimiter<String>,
    pub(crate) commands: mpsc::UnboundedSender<hub::Command>,
    pub(crate) command_rx: Mutex<Option<mpsc::UnboundedReceiver<hub::Command>>>,
    pub(crate) socket_slots: Arc<tokio::sync::Semaphore>,
    /// The agents' own socket pool (`limits.max_agent_sockets`).
    pub(crate) agent_slots: Arc<tokio::sync::Semaphore>,
    /// Open visitor sockets per address group.
    pub(crate) address_slots: limits::KeyedSlots<std::net::IpAddr>,
    /// Live and queued conversations (the hub writes, the session endpoint reads).
    pub(crate) occupancy: Mutex<limits::Occupancy>,
    /// Uploads in progress on the server (`limits.max_concurrent_uploads`).
    pub(crate) upload_slots: Arc<tokio::sync::Semaphore>,
    /// Uploads in progress per conversation.
    pub(crate) conversation_uploads: limits::KeyedSlots<ConversationId>,
    next_socket: AtomicU64,
    media: OnceLock<Arc<dyn MediaControl>>,
    sinks: OnceLock<Vec<Arc<dyn ConversationSink>>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("pending_tokens", &self.tokens.len())
            .field("media", &self.media.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Live {
    /// The live layer for `config`, without media and with the no-op sink.
    pub fn new(config: &LiveConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tokens: VisitorTokens::new(Duration::from_secs(config.visitor_token_ttl_secs)),
            per_address: WindowLimiter::new(config.sessions_per_minute_per_address, Duration::from_secs(60)),
            per_key: WindowLimiter::new(config.sessions_per_minute_per_key, Duration::from_secs(60)),
            commands: tx,
            command_rx: Mutex::new(Some(rx)),
            socket_slots: Arc::new(tokio::sync::Semaphore::new(config.max_sockets)),
            agent_slots: Arc::new(tokio::sync::Semaphore::new(config.limits.max_agent_sockets)),
            address_slots: limits::KeyedSlots::default(),
            occupancy: Mutex::new(limits::Occupancy::default()),
            upload_slots: Arc::new(tokio::sync::Semaphore::new(config.limits.max_concurrent_uploads)),
            conversation_uploads: limits::KeyedSlots::default(),
            next_socket: AtomicU64::new(1),
            media: OnceLock::new(),
            sinks: OnceLock::new(),
        }
    }

    /// Sets the media side (calls), once; `false` if it was set already. Without it, call requests get
    /// `media_unavailable`.
    pub fn set_media(&self, media: Arc<dyn MediaControl>) -> bool {
        self.media.set(media).is_ok()
    }

    /// Sets where ended conversations go (the archive, and any observer), once; `false` if they were set
    /// already. Default: nowhere.
    pub fn set_sinks(&self, sinks: Vec<Arc<dyn ConversationSink>>) -> bool {
        self.sinks.set(sinks).is_ok()
    }

    /// The media side, if any.
    pub fn media(&self) -> Option<Arc<dyn MediaControl>> {
        self.media.get().cloned()
    }

    /// The sinks of ended conversations.
    pub fn sinks(&self) -> Vec<Arc<dyn ConversationSink>> {
        self.sinks.get().cloned().unwrap_or_default()
    }

    /// Installs `parts` (media, extra sink) after `archive`, and returns the media event receiver for the
    /// hub.
    pub(crate) fn install(
        &self,
        parts: LiveParts,
        archive: Arc<dyn ConversationSink>,
    ) -> Option<mpsc::Receiver<MediaEvent>> {
        let mut sinks = vec![archive];
        sinks.extend(parts.sink);
        self.set_sinks(sinks);
        let wiring = parts.media?;
        self.set_media(wiring.control);
        Some(wiring.events)
    }

    /// The visitor session tokens issued and not yet used or purged.
    pub fn pending_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Whether one more conversation through `site_key` fits the caps of `limits`.
    pub(crate) fn admits(&self, limits: &LimitsConfig, site_key: &str) -> Result<(), limits::Busy> {
        match self.occupancy.lock() {
            Ok(o) => o.admits(limits, site_key),
            Err(poisoned) => poisoned.into_inner().admits(limits, site_key),
        }
    }

    /// Updates the occupancy (the hub only).
    pub(crate) fn with_occupancy(&self, f: impl FnOnce(&mut limits::Occupancy)) {
        match self.occupancy.lock() {
            Ok(mut o) => f(&mut o),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub(crate) fn next_socket_id(&self) -> SocketId {
        SocketId(self.next_socket.fetch_add(1, Ordering::Relaxed))
    }
}

/// The media side as the server is given it at start: the control handle and the events it reports.
pub struct MediaWiring {
    /// Control of the SFU.
    pub control: Arc<dyn MediaControl>,
    /// The SFU's events (connected, left, renegotiation needed).
    pub events: mpsc::Receiver<MediaEvent>,
}

impl std::fmt::Debug for MediaWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaWiring").finish_non_exhaustive()
    }
}

/// What the server is given at start for the live layer (see
/// [`Server::start_with_parts`](crate::server::Server::start_with_parts)). Both default to none: calls get
/// `media_unavailable`, ended conversations go to a no-op sink.
#[derive(Default)]
pub struct LiveParts {
    /// The media side and its events.
    pub media: Option<MediaWiring>,
    /// Where ended conversations go besides the archive (an observer, e.g. in tests).
    pub sink: Option<Arc<dyn ConversationSink>>,
}

impl std::fmt::Debug for LiveParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveParts")
            .field("media", &self.media.is_some())
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

/// The routes of the live layer (merged into the main router with the [`SharedLive`] as their state).
pub fn routes() -> OpenApiRouter<SharedLive> {
    OpenApiRouter::new()
        .routes(routes!(visitor::create_session, visitor::preflight))
        .routes(routes!(visitor::visitor_ws))
        .routes(routes!(agent::agent_ws))
        // The body limit of the upload routes is live.files.max_bytes, enforced by the handler as it reads.
        .routes(routes!(files::visitor_upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .routes(routes!(files::visitor_download))
        .routes(routes!(files::agent_upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .routes(routes!(files::agent_download))
}

pub(crate) use crate::time::unix_ms;

/// Applies an account change to the live layer (see `agent::apply_user`).
pub(crate) use agent::apply_user;
/// Starts the hub task (see the `hub` module); called once by the server.
pub(crate) use hub::spawn as spawn_hub;

/// A group's recording policy changed: conversations whose first call comes later get the new one.
pub(crate) fn apply_group_recording(live: &Live, group: &str, policy: crate::store::RecordingPolicy) {
    let _ = live.commands.send(hub::Command::GroupRecording {
        group: crate::chat_protocol::GroupId::from_name(group),
        policy,
    });
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn example_config_documents_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/relaydesk.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let live: LiveConfig = table["live"].clone().try_into().unwrap();
        assert_eq!(live, LiveConfig::default());
        assert!(live.validate().is_ok());
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = [
            LiveConfig {
                visitor_token_ttl_secs: 61,
                ..LiveConfig::default()
            },
            LiveConfig {
                max_message_bytes: 0,
                ..LiveConfig::default()
            },
            LiveConfig {
                messages_per_second: 0,
                ..LiveConfig::default()
            },
            LiveConfig {
                resume_grace_ms: u64::MAX,
                ..LiveConfig::default()
            },
            LiveConfig {
                ping_interval_secs: u64::MAX,
                ..LiveConfig::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let mut c = LiveConfig::default();
        let pattern: crate::masking::ExtraPattern = toml::from_str("name = \"x\"\nregex = \"(\"").unwrap();
        c.masking_groups.insert("sales".into(), vec![pattern]);
        let err = c.validate().unwrap_err();
        assert!(err.starts_with("live.masking_groups.sales"), "{err}");
    }
}
