//! The live conversation layer: visitor session tokens, the visitor and agent WebSockets, the routing hub,
//! chat with masking, resume, and call signalling relayed to the media side.
//!
//! # Shape
//! - `state`: [`LiveState`], what the live routes, the web clients' routes and the hub share (the parts of the
//!   application they use, and [`Live`]: tokens, limiters, the hub's command channel, the media and sink
//!   seams). The routes here take a [`SharedLive`]; they never name the application's state.
//! - [`close`]: socket ids and close codes; `ended`: the [`EndedConversation`] and its [`ConversationSink`].
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
//! or sent anywhere; only [`MaskedText`](crate::masking::MaskedText) is put into outgoing bodies and into
//! the [`EndedConversation`] handed to the [`ConversationSink`]. Nothing here logs a message body or a token.
//!
//! The wire protocol is documented in `docs/protocol.md` (endpoints, close codes) and `docs/ws-messages.md`
//! (frames).

mod agent;
pub mod close;
mod ended;
pub mod files;
mod hub;
pub mod limits;
mod persist;
mod socket;
mod state;
pub mod tokens;
mod visitor;

use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

pub use crate::live_config::{FilesConfig, LimitsConfig, LiveConfig};
pub use close::SocketId;
pub use ended::{ArchivedMessage, ConversationSink, EndedConversation, NoopSink, Participant, SinkFuture};
pub use state::{Live, LiveParts, LiveState, MediaWiring, SharedLive};
pub use tokens::{TokenGrant, VisitorTokens, WindowLimiter};
// The visitor session request and its URL check, public for the fuzz targets (fuzz/).
pub use visitor::{SessionRequest, url_origin};
/// The visitor socket handler, also serving the widget frame's socket (`web`).
pub(crate) use visitor::{VisitorSocketRefusals, visitor_ws};

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
