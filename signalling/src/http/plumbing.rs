//! The plumbing of the HTTP API, apart from its route tree and its state: the one error type, the extractors
//! (JSON, path, query, client address, the logged-in user) and the CSRF check. They are generic over the
//! router's state and take from it only an [`AuthState`] (through [`FromRef`]), so the route modules, the
//! live layer and the web clients build on them without naming the application's state or the live layer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::config::Config;
use crate::store::{Store, StoreError, User};

pub use super::names::{CSRF_HEADER, SESSION_COOKIE};

/// What the extractors and the CSRF check need: the configuration (trusted proxies, session limits, the
/// public origin) and the store (sessions). Every router's state gives one through [`FromRef`].
#[derive(Debug, Clone)]
pub struct AuthState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The store.
    pub store: Store,
}

/// The one error type of the HTTP API. Renders `{"error":{"code":"…","message":"…"}}` with a safe
/// message; the internal detail (if any) goes only to the log, inside the request's span.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
    detail: Option<String>,
}

impl ApiError {
    /// An error with a status, a stable code and a client-safe message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            detail: None,
        }
    }

    /// 400 `invalid_input`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 401 `unauthenticated`: no valid session.
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", "login required")
    }

    /// 401 `invalid_credentials`: the one answer for every failed login.
    pub fn invalid_credentials() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid username or password",
        )
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 429 `too_many_attempts` with `Retry-After` (whole seconds, rounded up).
    pub fn too_many(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed attempts; retry later",
        );
        e.retry_after_secs = Some(secs.max(1));
        e
    }

    /// 500 `internal`; `detail` is logged, never sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let mut e = Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error");
        e.detail = Some(detail.to_string());
        e
    }

    /// Adds a `Retry-After` header (whole seconds, rounded up, at least 1).
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// Adds a detail for the log.
    pub fn with_detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), code = self.code, detail = ?self.detail, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), code = self.code, detail = ?self.detail, "request refused");
        }
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            StoreError::Duplicate { .. } | StoreError::InUse(_) | StoreError::LastAdmin => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::Invalid(msg) => Self::invalid(msg),
            // The database is away or saturated (a PostgreSQL store): worth retrying; the cause goes to the
            // log only.
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; retry shortly",
                )
                .with_retry_after(std::time::Duration::from_secs(5))
            }
            other => Self::internal(other),
        }
    }
}

impl From<crate::hash_pool::HashPoolError> for ApiError {
    fn from(e: crate::hash_pool::HashPoolError) -> Self {
        use crate::hash_pool::HashPoolError;
        match e {
            HashPoolError::Busy => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server is checking too many passwords; retry shortly",
            )
            .with_retry_after(std::time::Duration::from_secs(1)),
            HashPoolError::Password(crate::password::PasswordError::Length) => {
                Self::invalid(crate::password::PasswordError::Length.to_string())
            }
            other => Self::internal(other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let detail = r.body_text();
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body too large",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            // Syntax errors, wrong types, unknown or missing fields, invalid UTF-8: the serde message is
            // safe (it names the field and position, never echoes the value).
            _ => Self::new(StatusCode::BAD_REQUEST, "invalid_json", detail.clone()),
        }
        .with_detail(detail)
    }
}

/// A JSON body whose every rejection is an [`ApiError`] (400, 413 or 415 with a JSON body).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// A path parameter whose rejection is a JSON 400.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e @ PathRejection::FailedToDeserializePathParams(_)) => {
                Err(
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", "invalid path parameter")
                        .with_detail(e.body_text()),
                )
            }
            Err(e) => Err(ApiError::internal(e.body_text())),
        }
    }
}

/// A query string whose rejection is a JSON 400 `invalid_input` (axum's own is plain text).
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::invalid("invalid query string").with_detail(e.body_text())),
        }
    }
}

/// The client's IP address: the connection's peer, or, when that peer is one of `http.trusted_proxies`, the
/// address its `X-Forwarded-For` names (see [`client_ip`](super::client_ip::client_ip)). Nobody else's
/// header is read.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr
where
    AuthState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AuthState::from_ref(state);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        Ok(ClientAddr(super::client_ip::client_ip(
            peer,
            forwarded,
            &state.config.http.trusted_proxies,
        )))
    }
}

/// Reads the session token from the `Cookie` headers.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// A request authenticated by a valid session cookie. Rejects with 401 `unauthenticated`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The logged-in user (enabled).
    pub user: User,
    /// Hash of the session token (for logout).
    pub token_hash: [u8; 32],
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser
where
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(u) = parts.extensions.get::<AuthUser>() {
            return Ok(u.clone());
        }
        let state = AuthState::from_ref(state);
        let token = session_token(&parts.headers).ok_or_else(ApiError::unauthenticated)?;
        let token_hash = crate::token::hash_token(&token);
        let limits = state.config.sessions.limits();
        let now = crate::time::unix_now();
        let user = state
            .store
            .call(move |db| db.touch_session(&token_hash, now, limits))
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        tracing::Span::current().record("user", user.id);
        let auth = AuthUser { user, token_hash };
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}

/// An [`AuthUser`] whose role is admin. Rejects with 401 (no session) or 403 (other roles).
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl<S: Send + Sync> FromRequestParts<S> for AdminUser
where
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = AuthUser::from_request_parts(parts, state).await?;
        if auth.user.role != crate::store::Role::Admin {
            return Err(ApiError::forbidden("admin role required"));
        }
        Ok(AdminUser(auth))
    }
}

/// The origin this server answers for: the configured public origin, else `https://` + `Host`.
pub fn own_origin(config: &Config, headers: &HeaderMap) -> Option<String> {
    if let Some(o) = &config.public_origin {
        return Some(o.clone());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    crate::origin::normalize_origin(&format!("https://{host}")).ok()
}

/// Whether the request's `Origin` is this server's own ([`own_origin`]); false without either.
pub fn from_own_origin(config: &Config, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(|o| crate::origin::normalize_origin(o).ok());
    given.is_some() && given == own_origin(config, headers)
}

/// CSRF protection for cookie-authenticated routes: every POST/PUT/PATCH/DELETE must carry
/// `X-RelayDesk-CSRF: 1` (a header a cross-site form cannot send and a cross-site script cannot send
/// without a CORS preflight this server never grants), and an `Origin` header, when present, must equal
/// the server's own origin. Failures are 403 `csrf`.
pub async fn csrf_guard(State(state): State<AuthState>, req: Request, next: Next) -> Response {
    let m = req.method();
    let changes = m == Method::POST || m == Method::PUT || m == Method::PATCH || m == Method::DELETE;
    if changes && let Err(e) = check_csrf(&state.config, req.headers()) {
        return e.into_response();
    }
    next.run(req).await
}

/// The check of [`csrf_guard`] for one state-changing request, for handlers outside the guarded routes.
///
/// # Errors
/// 403 `csrf` without the header or from another origin.
pub fn check_csrf(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.get(CSRF_HEADER).map(HeaderValue::as_bytes) != Some(b"1") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "missing X-RelayDesk-CSRF: 1 header",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let given = origin
            .to_str()
            .ok()
            .and_then(|o| crate::origin::normalize_origin(o).ok());
        let own = own_origin(config, headers);
        if given.is_none() || given != own {
            return Err(
                ApiError::new(StatusCode::FORBIDDEN, "csrf", "cross-origin request refused")
                    .with_detail(format!("origin {:?}", origin.to_str().unwrap_or("<non-ascii>"))),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_their_answers() {
        let unavailable = ApiError::from(StoreError::Unavailable("connection refused to db.internal".into()));
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.code(), "unavailable");
        assert_eq!(unavailable.retry_after_secs, Some(5));
        assert!(
            !unavailable.message.contains("db.internal"),
            "the cause stays in the log"
        );
        assert_eq!(ApiError::from(StoreError::LastAdmin).code(), "conflict");
        assert_eq!(
            ApiError::from(StoreError::Backend("x".into())).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
