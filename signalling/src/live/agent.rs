//! `GET /api/v1/agent/ws`: the agent's (or supervisor's) console socket.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use super::SharedLive;
use super::hub::Command;
use super::socket::{self, FrameGate, Out, Refused};
use crate::chat_protocol::{AgentToServer, ServerToAgent};
use crate::http::plumbing::{ApiError, AuthUser};
use crate::store::User;

/// `GET /api/v1/agent/ws`: session cookie (401 without), `Origin` equal to the server's own (403).
#[utoipa::path(get, path = "/api/v1/agent/ws", tag = crate::http::names::TAG_AGENT, security(("session" = [])),
    description = "The agent's (or supervisor's) console WebSocket (frames: docs/ws-messages.md).",
    params(("Origin" = String, Header, description = "Must be the server's own origin")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 401, description = "`unauthenticated`: no valid session cookie"),
        (status = 403, description = "`origin_mismatch`: no `Origin`, or not the server's own"),
        (status = 426, description = "`websocket_required`: not a WebSocket upgrade request"),
        (status = 503, description = "`too_many_sockets`: the agents' socket pool is full"),
    ))]
pub(crate) async fn agent_ws(
    State(state): State<SharedLive>,
    headers: HeaderMap,
    auth: Result<AuthUser, ApiError>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return super::socket::upgrade_required(&e),
    };
    let auth = match auth {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if !crate::http::plumbing::from_own_origin(&state.config, &headers) {
        return ApiError::new(StatusCode::FORBIDDEN, "origin_mismatch", "cross-origin socket refused").into_response();
    }
    let permit = match super::socket::acquire_slot(&state.live.agent_slots) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let user = auth.user;
    let token_hash = auth.token_hash;
    let span = tracing::info_span!("agent_ws", user = user.id);
    ws.max_message_size(socket::HARD_MESSAGE_LIMIT)
        .max_frame_size(socket::HARD_MESSAGE_LIMIT)
        .on_upgrade(move |ws| {
            async move {
                metrics::gauge!("relaydesk_ws_sockets_open", "kind" => "agent").increment(1.0);
                run(ws, state, user, token_hash).await;
                metrics::gauge!("relaydesk_ws_sockets_open", "kind" => "agent").decrement(1.0);
                drop(permit);
            }
            .instrument(span)
        })
}

/// Hands the user's account as the store has it now to the live layer and waits (bounded) until it is
/// applied: a change of role or groups, a disabled account, or `sessions_ended` (a new password) closes the
/// user's console sockets at once.
pub(crate) async fn apply_user(state: &SharedLive, user: User, sessions_ended: bool) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let id = user.id;
    let cmd = Command::UserChanged {
        user,
        sessions_ended,
        reply: Some(tx),
    };
    if state.live.commands.send(cmd).is_ok()
        && tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .is_err()
    {
        tracing::warn!(user = id, "the live layer did not apply an account change in time");
    }
}

/// Re-checks the socket's login session every ping interval (it also counts as activity); when it is gone
/// (logout, expiry, password or role change, account disabled) the socket is closed with 4401. The account
/// read with it goes to the hub, so changes made outside the admin API (the command line) reach the live
/// layer within one interval.
async fn watch_session(state: SharedLive, token_hash: [u8; 32], outbox: socket::Outbox) {
    let every = std::time::Duration::from_secs(state.config.live.ping_interval_secs);
    loop {
        tokio::select! {
            _ = outbox.closed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let limits = state.config.sessions.limits();
        let now = crate::time::unix_now();
        match state
            .store
            .call(move |db| db.touch_session(&token_hash, now, limits))
            .await
        {
            Ok(Some(user)) => {
                let _ = state.live.commands.send(Command::UserChanged {
                    user,
                    sessions_ended: false,
                    reply: None,
                });
            }
            Ok(None) => {
                tracing::info!("agent session ended; closing the socket");
                outbox.close(super::close::RESUME_REFUSED, "session ended");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "session check failed"),
        }
    }
}

async fn run(ws: WebSocket, state: SharedLive, user: User, token_hash: [u8; 32]) {
    let socket_id = state.live.next_socket_id();
    let (tx, rx) = socket::outbox();
    tokio::spawn(watch_session(state.clone(), token_hash, tx.clone()).in_current_span());
    let commands = state.live.commands.clone();
    let open = Command::AgentOpen {
        socket: socket_id,
        outbox: tx.clone(),
        user,
    };
    if commands.send(open).is_err() {
        return;
    }
    let mut gate = FrameGate::new(&state.config.live, Instant::now());
    let error = |(code, msg): Refused, conversation| {
        if let Ok(text) = serde_json::to_string(&ServerToAgent::error(code, msg, conversation)) {
            let _ = tx.try_send(Out::Text(text));
        }
    };
    let ping = Duration::from_secs(state.config.live.ping_interval_secs);
    socket::pump(ws, rx, ping, &state.shutdown, |text| {
        let now = Instant::now();
        let frame: AgentToServer = match gate.frame(text, now) {
            Ok(f) => f,
            Err(refused) => return error(refused, None),
        };
        if let AgentToServer::Message {
            conversation,
            client_id,
            body,
        } = &frame
            && let Err(refused) = gate.message(client_id, body, now)
        {
            return error(refused, Some(*conversation));
        }
        let _ = commands.send(Command::AgentFrame {
            socket: socket_id,
            frame,
        });
    })
    .await;
    let _ = state.live.commands.send(Command::AgentClosed { socket: socket_id });
}
