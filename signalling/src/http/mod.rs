//! The HTTP API: the router with its layers, and the route groups. The state is [`crate::app::AppState`];
//! the error type, the extractors and the CSRF check are in [`plumbing`], the shared names in [`names`].
//!
//! Route groups: `/healthz`, `/metrics`, `/api/v1/openapi.json` ([`openapi`]), `/api/v1/auth/*` ([`auth`]),
//! `/api/v1/admin/*` ([`admin`]). Later features add their own sub-routers in [`routes`]. Cookie-authenticated
//! routes sit behind [`csrf_guard`]; public routes (visitor sessions) must not.
//!
//! Every route is registered with `utoipa_axum::routes!(handler)` on an [`OpenApiRouter`]: the handler's
//! `#[utoipa::path]` attribute is both its route and its entry in the OpenAPI description ([`openapi`]).

pub mod admin;
pub mod auth;
pub mod client_ip;
pub mod names;
pub mod openapi;
pub mod plumbing;
pub mod recordings;
pub mod transcripts;

use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use crate::app::{AppState, SharedState};
pub use plumbing::{
    AdminUser, ApiError, ApiJson, ApiPath, ApiQuery, AuthState, AuthUser, CSRF_HEADER, ClientAddr, SESSION_COOKIE,
    check_csrf, csrf_guard, own_origin, session_token,
};

/// The process-wide Prometheus recorder's handle (installed on first call). If another recorder is
/// already installed, a detached one is returned (its output then lacks that recorder's metrics).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be partial");
                PrometheusBuilder::new().build_recorder().handle()
            }
        })
        .clone()
}

/// The full router. Layers: request span, request counter, body limit; JSON 404 and 405.
pub fn router(state: SharedState) -> Router {
    router_with(state, Router::new())
}

/// The full router with `extra` routes merged in (they get the same layers, JSON 404/405 and state).
/// Paths in `extra` must not collide with the built-in ones. Cookie-authenticated state-changing routes
/// in `extra` must apply [`csrf_guard`] themselves.
pub fn router_with(state: SharedState, extra: Router<SharedState>) -> Router {
    let (routes, description) = routes(&state).split_for_parts();
    let description = openapi::Description::new(description);
    routes
        .merge(extra)
        .layer(Extension(description))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.http.max_body_bytes))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), request_timeout))
        .layer(middleware::from_fn(catch_panics))
        .layer(middleware::from_fn(close_after_refused_body))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), security_headers))
        .layer(middleware::from_fn(count_requests))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // The path only: query strings may carry tokens in later features.
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), user = tracing::field::Empty)
        }))
        .with_state(state)
}

/// Every route of the API with its description: each handler is registered by its `#[utoipa::path]`
/// attribute. The cookie-authenticated groups (`/api/v1/auth`, `/api/v1/admin`) get [`csrf_guard`].
pub fn routes(state: &SharedState) -> OpenApiRouter<SharedState> {
    let api = OpenApiRouter::new()
        .nest("/auth", auth::routes())
        .nest("/admin", admin::routes())
        .merge(transcripts::routes())
        .merge(recordings::routes())
        .layer(middleware::from_fn_with_state(AuthState::from_ref(state), csrf_guard));
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::openapi_json))
        .nest("/api/v1", api)
        .merge(crate::live::routes().with_state(Arc::clone(&state.live)))
        .merge(crate::web::routes().with_state(Arc::clone(&state.live)))
}

/// Liveness: the server answers.
#[utoipa::path(get, path = "/healthz", tag = names::TAG_OPERATIONS,
    responses((status = 200, description = "The server is up", body = openapi::Health)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": crate::VERSION }))
}

/// Prometheus metrics (aggregate counters only; no authentication).
#[utoipa::path(get, path = "/metrics", tag = names::TAG_OPERATIONS,
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")))]
async fn metrics(State(state): State<SharedState>) -> Response {
    let body = state.metrics.render();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed for this endpoint",
    )
}

/// Bounds the time to read a request's body and answer it (a slow-body client cannot hold a handler).
/// A WebSocket upgrade answers at once; the socket's life is not bounded by this.
async fn request_timeout(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let limit = std::time::Duration::from_secs(state.config.http.request_timeout_secs);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "request took too long").into_response()
        }
    }
}

/// Headers every response carries: HSTS (the server speaks only HTTPS) and `nosniff` (a download, a
/// transcript or an error body is never sniffed into something a browser would run). A route may set
/// stricter ones of its own.
async fn security_headers(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let max_age = state.config.http.hsts_max_age_secs;
    if max_age > 0
        && let Ok(v) = HeaderValue::from_str(&format!("max-age={max_age}"))
    {
        h.insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
    h.entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    resp
}

/// A request with a body that is refused (4xx, 5xx) is answered with `Connection: close`. Many refusals
/// come before the body is read (no session, no CSRF header, no files token), and hyper then closes the
/// connection after the answer, since the unread body stands between it and the next request. Without this
/// header the client believes the connection is kept alive, sends its next request on it and gets an EOF
/// instead of an answer. Refusals are rare on a working client: the reconnection costs nothing that matters.
async fn close_after_refused_body(req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A panicking handler is a bug; the client still gets a JSON 500 and the connection survives.
async fn catch_panics(req: Request, next: Next) -> Response {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(_) => ApiError::internal("handler panicked").into_response(),
    }
}

async fn count_requests(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() {
        100..=399 => "ok",
        400..=499 => "client_error",
        _ => "server_error",
    };
    metrics::counter!("relaydesk_http_requests_total", "class" => class).increment(1);
    resp
}
