//! The state of the live layer: [`LiveState`] (what the live routes, the web clients' routes and the hub
//! share) and [`Live`] (tokens, limiters, the hub's command channel, the media and sink seams).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::FromRef;
use tokio::sync::mpsc;

use super::close::SocketId;
use super::ended::ConversationSink;
use super::hub::Command;
use super::limits;
use super::tokens::{VisitorTokens, WindowLimiter};
use crate::chat_protocol::ConversationId;
use crate::config::Config;
use crate::http::plumbing::AuthState;
use crate::live_config::{LimitsConfig, LiveConfig};
use crate::media::{MediaControl, MediaEvent};

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
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) command_rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    pub(crate) socket_slots: Arc<tokio::sync::Semaphore>,
    /// The agents' own socket pool (`limits.max_agent_sockets`).
    pub(crate) agent_slots: Arc<tokio::sync::Semaphore>,
    /// Open visitor sockets per address group.
    pub(crate) address_slots: limits::KeyedSlots<std::net::IpAddr>,
    /// Live and queued conversations (the hub writes, the session endpoint reads).
    pub(crate) occupancy: limits::SharedOccupancy,
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
            occupancy: Arc::new(Mutex::new(limits::Occupancy::default())),
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

    /// Live and queued conversations on this node (the cluster registry's load figures).
    pub fn conversation_counts(&self) -> (usize, usize) {
        limits::with_occupancy(&self.occupancy, |o| o.totals())
    }

    /// Whether one more conversation through `site_key` fits the caps of `limits`.
    pub(crate) fn admits(&self, limits: &LimitsConfig, site_key: &str) -> Result<(), limits::Busy> {
        limits::with_occupancy(&self.occupancy, |o| o.admits(limits, site_key))
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

/// What the server is given at start for the live layer (in its start options). Both default to none:
/// calls get `media_unavailable`, ended conversations go to a no-op sink.
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
