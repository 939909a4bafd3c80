//! `POST /api/v1/visitor/session` (with its CORS preflight) and `GET /api/v1/visitor/ws`.

use std::time::{Duration, Instant};

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument as _;

use super::SharedLive;
use super::hub::Command;
use super::socket::{self, FrameGate, Out, Refused};
use super::tokens::{TokenGrant, TokenRefusal};
use crate::chat_protocol::{ErrorCode, MAX_FRAME_BYTES, ServerToVisitor, VisitorToServer, parse_frame};
use crate::http::client_ip::address_group;
use crate::http::plumbing::{ApiError, ApiJson, ClientAddr};

/// Body of `POST /api/v1/visitor/session`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The site key the page was configured with (`pk_` and 32 hex digits).
    pub site_key: String,
    /// The page's URL: an absolute `http(s)` URL of the request's `Origin`.
    pub page_url: String,
}

/// The normalised origin of an absolute `http(s)` URL, or `None`. Userinfo is refused.
pub fn url_origin(url: &str) -> Option<String> {
    if url.len() > 4096 {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return None;
    }
    crate::origin::normalize_origin(&format!("{scheme}://{authority}")).ok()
}

/// The request's `Origin`, normalised; `None` if absent or malformed (`null` included).
fn request_origin(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::ORIGIN)?.to_str().ok()?;
    crate::origin::normalize_origin(raw).ok()
}

fn with_cors(mut resp: Response, origin: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(origin) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

fn refused(reason: &'static str) {
    metrics::counter!("relaydesk_visitor_tokens_refused_total", "reason" => reason).increment(1);
}

/// `POST /api/v1/visitor/session`: checks the site key and the origin and issues a session token.
#[utoipa::path(post, path = "/api/v1/visitor/session", tag = crate::http::names::TAG_VISITOR,
    description = "Public (no cookie, no CSRF header): the site key and the page's Origin authorise it. \
        The checks run in this order: address rate, address sockets, body, site key, Origin, page_url, key rate, conversation caps.",
    params(("Origin" = String, Header, description = "The page's origin; must be an allowed origin of the site key")),
    request_body = SessionRequest,
    responses(
        (status = 201, description = "A single-use session token, with `Cache-Control: no-store` and CORS headers",
            body = crate::http::openapi::VisitorSession,
            headers(("Access-Control-Allow-Origin" = String, description = "The request's origin"))),
        (status = 401, description = "`invalid_site_key`: unknown or revoked site key"),
        (status = 403, description = "`origin_required`: no valid `Origin`; `origin_not_allowed`: not an origin of the key; `origin_mismatch`: page_url is not of that origin"),
        (status = 429, description = "`rate_limited`: too many requests from the address or for the key; `too_many_connections`: the address has too many visitor sockets open"),
        (status = 503, description = "`busy`: a conversation cap is reached"),
    ))]
pub(crate) async fn create_session(
    State(state): State<SharedLive>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    body: Result<ApiJson<SessionRequest>, ApiError>,
) -> Response {
    let now = Instant::now();
    let live = &state.live;
    let group = address_group(ip);
    if let Err(wait) = live.per_address.hit(now, &group) {
        refused("rate_limited");
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many session requests from this address; retry later",
        )
        .with_retry_after(wait)
        .into_response();
    }
    if live.address_slots.open(&group) >= state.config.live.limits.max_visitor_sockets_per_address {
        refused("address_full");
        return address_full().into_response();
    }
    let ApiJson(req) = match body {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let key_text = req.site_key.clone();
    let key = match state.store.call(move |db| db.site_key(&key_text)).await {
        Ok(k) if k.revoked_at.is_none() => k,
        Ok(_) => {
            refused("revoked_key");
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_site_key",
                "unknown or revoked site key",
            )
            .into_response();
        }
        Err(crate::store::StoreError::NotFound { .. }) => {
            refused("unknown_key");
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_site_key",
                "unknown or revoked site key",
            )
            .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(origin) = request_origin(&headers) else {
        refused("origin_missing");
        return ApiError::new(StatusCode::FORBIDDEN, "origin_required", "an Origin header is required").into_response();
    };
    if !key.origins.contains(&origin) {
        refused("origin_not_allowed");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not use this site key",
        )
        .into_response();
    }
    if url_origin(&req.page_url).as_deref() != Some(origin.as_str()) {
        refused("page_url_mismatch");
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_mismatch",
            "page_url must be an absolute URL of the requesting origin",
        );
        return with_cors(e.into_response(), &origin);
    }
    if let Err(wait) = live.per_key.hit(now, &key.key) {
        refused("rate_limited");
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many session requests for this site key; retry later",
        )
        .with_retry_after(wait);
        return with_cors(e.into_response(), &origin);
    }
    if let Err(busy) = live.admits(&state.config.live.limits, &key.key) {
        refused(busy.label());
        return with_cors(busy_error(busy).into_response(), &origin);
    }
    let visitor_id = match crate::token::random_bytes::<12>() {
        Ok(b) => format!("v_{}", hex::encode(b)),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let (token, grant) = match live
        .tokens
        .issue(now, visitor_id, origin.clone(), key.key.clone(), key.group.clone())
    {
        Ok(t) => t,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    metrics::counter!("relaydesk_visitor_tokens_issued_total").increment(1);
    let body = json!({
        "session_token": token,
        "expires_in": live.tokens.ttl().as_secs(),
        "visitor_id": grant.visitor_id,
    });
    let mut resp = (StatusCode::CREATED, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    with_cors(resp, &origin)
}

/// `OPTIONS /api/v1/visitor/session`: CORS preflight, granted to origins of any active site key.
#[utoipa::path(options, path = "/api/v1/visitor/session", tag = crate::http::names::TAG_VISITOR,
    params(("Origin" = String, Header, description = "The page's origin")),
    responses(
        (status = 204, description = "Granted: `Access-Control-Allow-Origin`, `-Methods: POST`, `-Headers: content-type`, `-Max-Age: 600`",
            headers(("Access-Control-Allow-Origin" = String, description = "The request's origin"))),
        (status = 403, description = "`origin_required`: no valid `Origin`; `origin_not_allowed`: no active site key allows it"),
    ))]
pub(crate) async fn preflight(State(state): State<SharedLive>, headers: HeaderMap) -> Response {
    let Some(origin) = request_origin(&headers) else {
        return ApiError::new(StatusCode::FORBIDDEN, "origin_required", "an Origin header is required").into_response();
    };
    let keys = match state.store.call(|db| db.list_site_keys()).await {
        Ok(k) => k,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let allowed = keys
        .iter()
        .any(|k| k.revoked_at.is_none() && k.origins.contains(&origin));
    if !allowed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not start visitor sessions",
        )
        .into_response();
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    with_cors(resp, &origin)
}

/// 429 `too_many_connections`: the client's address (IPv6: its /64) has as many visitor sockets open as
/// `live.limits.max_visitor_sockets_per_address`.
fn address_full() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        "too many open chats from this address; close one or retry later",
    )
    .with_retry_after(std::time::Duration::from_secs(30))
}

/// 503 `busy`: a conversation cap of `[live.limits]` is reached.
pub(crate) fn busy_error(busy: super::limits::Busy) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", busy.to_string())
        .with_retry_after(std::time::Duration::from_secs(30))
}

/// Whether `origin` is an allowed origin of an active site key.
async fn known_origin(state: &SharedLive, origin: &str) -> Result<bool, ApiError> {
    let keys = state.store.call(|db| db.list_site_keys()).await?;
    Ok(keys
        .iter()
        .any(|k| k.revoked_at.is_none() && k.origins.iter().any(|o| o == origin)))
}

/// Query of `GET /api/v1/visitor/ws`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

/// The refusals of the visitor socket that the widget frame's socket (`web`) shares, as the OpenAPI
/// description gives them.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only described: the handlers answer with `ApiError`.
pub(crate) enum VisitorSocketRefusals {
    /// The token is unknown, used or expired.
    #[response(status = 401, description = "`invalid_token`: unknown, used or expired token")]
    InvalidToken,
    /// Not a WebSocket upgrade.
    #[response(status = 426, description = "`websocket_required`: not a WebSocket upgrade request")]
    WebSocketRequired,
    /// The address has too many sockets open.
    #[response(
        status = 429,
        description = "`too_many_connections`: the address has too many visitor sockets open"
    )]
    TooManyConnections,
    /// The visitors' pool is full.
    #[response(status = 503, description = "`too_many_sockets`: the visitors' socket pool is full")]
    TooManySockets,
}

/// `GET /api/v1/visitor/ws[?token=…]`: with a token, a new conversation (first frame `hello`); without,
/// a resume (first frame `resume`).
///
/// Admission, in order, so that nothing is spent on a request that fails a check: the token (peeked, not
/// used) or, without one, an `Origin` of an active site key; the client address's socket cap; a slot of
/// the visitors' pool (agents have their own); then the token is used.
#[utoipa::path(get, path = "/api/v1/visitor/ws", tag = crate::http::names::TAG_VISITOR,
    description = "The visitor's WebSocket (frames: docs/ws-messages.md). With `token`, a new conversation \
        (first frame `hello`); without, a resume (first frame `resume`).",
    params(
        ("token" = Option<String>, Query, description = "A session token from POST /api/v1/visitor/session (single use)"),
        ("Origin" = String, Header, description = "The page's origin: the token's, or for a resume an allowed origin of an active site key"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "`invalid_input`: unexpected query parameters"),
        VisitorSocketRefusals,
        (status = 403, description = "`origin_required`, `origin_mismatch` (the token is spent), `origin_not_allowed`"),
    ))]
pub(crate) async fn visitor_ws(
    State(state): State<SharedLive>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return ApiError::invalid("unexpected query parameters").into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return super::socket::upgrade_required(&e),
    };
    let Some(origin) = request_origin(&headers) else {
        refused("origin_missing");
        return ApiError::new(StatusCode::FORBIDDEN, "origin_required", "an Origin header is required").into_response();
    };
    let now = Instant::now();
    match &query.token {
        Some(token) => match state.live.tokens.peek(now, token) {
            Ok(grant) if grant.origin == origin => {}
            Ok(_) => {
                // A token seen from another origin leaked: burn it.
                let _ = state.live.tokens.consume(now, token);
                refused("foreign_origin");
                tracing::info!("visitor token used from a foreign origin");
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "origin_mismatch",
                    "the token was issued to another origin",
                )
                .into_response();
            }
            Err(r) => return invalid_token(r).into_response(),
        },
        None => match known_origin(&state, &origin).await {
            Ok(true) => {}
            Ok(false) => {
                refused("origin_not_allowed");
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    "this origin may not open visitor sockets",
                )
                .into_response();
            }
            Err(e) => return e.into_response(),
        },
    }
    let cap = state.config.live.limits.max_visitor_sockets_per_address;
    let Some(address_slot) = state.live.address_slots.try_take(address_group(ip), cap) else {
        refused("address_full");
        return address_full().into_response();
    };
    let permit = match super::socket::acquire_slot(&state.live.socket_slots) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let grant = match query.token {
        // Peeked above; a concurrent use of the same token may have won meanwhile.
        Some(token) => match state.live.tokens.consume(now, &token) {
            Ok(grant) => Some(grant),
            Err(r) => return invalid_token(r).into_response(),
        },
        None => None,
    };
    ws.max_message_size(socket::HARD_MESSAGE_LIMIT)
        .max_frame_size(socket::HARD_MESSAGE_LIMIT)
        .on_upgrade(move |ws| async move {
            metrics::gauge!("relaydesk_ws_sockets_open", "kind" => "visitor").increment(1.0);
            run(ws, state, origin, grant)
                .instrument(tracing::info_span!("visitor_ws"))
                .await;
            metrics::gauge!("relaydesk_ws_sockets_open", "kind" => "visitor").decrement(1.0);
            drop(permit);
            drop(address_slot);
        })
}

fn invalid_token(r: TokenRefusal) -> ApiError {
    refused(match r {
        TokenRefusal::Expired => "expired",
        _ => "unknown",
    });
    tracing::info!(reason = %r, "visitor token refused");
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "the session token is unknown, used or expired",
    )
}

async fn run(mut ws: WebSocket, state: SharedLive, origin: String, grant: Option<TokenGrant>) {
    let socket_id = state.live.next_socket_id();
    let first = socket::first_text(&mut ws, &state.shutdown).await;
    let first: Option<VisitorToServer> = first.and_then(|t| parse_frame(&t, MAX_FRAME_BYTES).ok());
    let (tx, rx) = socket::outbox();
    let cmd = match (first, grant) {
        (Some(VisitorToServer::Hello { .. }), Some(grant)) => Command::VisitorJoin {
            socket: socket_id,
            outbox: tx.clone(),
            grant,
        },
        (Some(VisitorToServer::Resume { resume_token, last_seq }), None) => Command::VisitorResume {
            socket: socket_id,
            outbox: tx.clone(),
            origin,
            resume_token,
            last_seq,
        },
        _ => {
            socket::close_ws(
                &mut ws,
                super::close::PROTOCOL,
                "expected hello (with a token) or resume",
            )
            .await;
            return;
        }
    };
    let commands = state.live.commands.clone();
    if commands.send(cmd).is_err() {
        socket::close_ws(&mut ws, 1011, "server unavailable").await;
        return;
    }
    let mut gate = FrameGate::new(&state.config.live, Instant::now());
    let error = |(code, message): Refused| {
        if let Ok(text) = serde_json::to_string(&ServerToVisitor::Error { code, message }) {
            let _ = tx.try_send(Out::Text(text));
        }
    };
    let ping = Duration::from_secs(state.config.live.ping_interval_secs);
    socket::pump(ws, rx, ping, &state.shutdown, |text| {
        let now = Instant::now();
        let frame: VisitorToServer = match gate.frame(text, now) {
            Ok(f) => f,
            Err(refused) => return error(refused),
        };
        if let VisitorToServer::Message { client_id, body } = &frame
            && let Err(refused) = gate.message(client_id, body, now)
        {
            return error(refused);
        }
        if let VisitorToServer::CallOffer { sdp } = &frame
            && sdp.is_empty()
        {
            return error((ErrorCode::BadMessage, "empty SDP".into()));
        }
        let _ = commands.send(Command::VisitorFrame {
            socket: socket_id,
            frame,
        });
    })
    .await;
    let _ = state.live.commands.send(Command::VisitorClosed { socket: socket_id });
}
