//! The OpenAPI 3.1 description of the HTTP API, served at `GET /api/v1/openapi.json`.
//!
//! Nothing here lists routes: every route is registered through utoipa-axum's
//! [`OpenApiRouter`](utoipa_axum::router::OpenApiRouter) with `routes!(handler)`, which takes the method and
//! the path from the handler's `#[utoipa::path]` attribute and adds the same operation to the description,
//! so a route cannot be served without being described nor described without being served
//! (`tests/openapi.rs` also compares the router the server runs with the description it serves).
//!
//! This module holds the schemas of the JSON bodies the handlers build with `json!` (their shapes are
//! checked against the live server by the schemathesis run of `tests/openapi.rs`), the security schemes,
//! and [`Description::new`], which adds what every route shares because of the layers they sit behind: the
//! error body of every 4xx/5xx answer, `408` (the request timeout), and `400`/`413`/`415` on JSON bodies.

use std::sync::Arc;

use axum::Extension;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::content::Content;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::info::{InfoBuilder, LicenseBuilder};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::Response as ApiResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, OpenApi, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::store::{Group, SiteKey, User};

use super::names::TAG_OPERATIONS;

/// Security scheme: the login session cookie.
pub const SESSION: &str = "session";
/// Security scheme: the CSRF header every cookie-authenticated state-changing request carries.
pub const CSRF: &str = "csrf";
/// Security scheme: a visitor's `files_token` (from its `welcome` frame) as a bearer token.
pub const FILES_TOKEN: &str = "files_token";

/// The refusals every admin route that only reads shares: no session (401), not an admin (403).
#[derive(utoipa::IntoResponses)]
pub enum AdminRead {
    /// No valid session cookie.
    #[response(status = 401, description = "`unauthenticated`: no valid session cookie")]
    Unauthenticated,
    /// Not an admin.
    #[response(status = 403, description = "`forbidden`: the role is not admin")]
    Forbidden,
}

/// The refusals every admin route that changes something shares: no session (401), not an admin or no
/// CSRF header (403).
#[derive(utoipa::IntoResponses)]
pub enum AdminWrite {
    /// No valid session cookie.
    #[response(status = 401, description = "`unauthenticated`: no valid session cookie")]
    Unauthenticated,
    /// Not an admin, or the CSRF check failed.
    #[response(status = 403, description = "`forbidden`: the role is not admin; `csrf`")]
    Forbidden,
}

/// The error body of every failure: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    #[schema(inline)]
    pub error: ErrorDetail,
}

/// The `error` member of [`ErrorBody`].
#[derive(Debug, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs (`invalid_json`, `unauthenticated`, `csrf`, `not_found`, …; the table in
    /// `docs/protocol.md` lists them all).
    pub code: String,
    /// For people; may change.
    pub message: String,
}

/// `GET /healthz`.
#[derive(Debug, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// `{"user": User}`.
#[derive(Debug, ToSchema)]
pub struct UserBody {
    /// The user.
    pub user: User,
}

/// `POST /api/v1/admin/users`: the user, and the generated password when none was given.
#[derive(Debug, ToSchema)]
pub struct CreatedUser {
    /// The new user.
    pub user: User,
    /// The generated password, shown only this once (absent when the request gave one).
    #[schema(required = false)]
    pub password: String,
}

/// `{"users": [User]}`, sorted by username.
#[derive(Debug, ToSchema)]
pub struct UserList {
    /// Every user.
    pub users: Vec<User>,
}

/// `{"group": Group}`.
#[derive(Debug, ToSchema)]
pub struct GroupBody {
    /// The group.
    pub group: Group,
}

/// `{"groups": [Group]}`.
#[derive(Debug, ToSchema)]
pub struct GroupList {
    /// Every group.
    pub groups: Vec<Group>,
}

/// `{"key": SiteKey}`.
#[derive(Debug, ToSchema)]
pub struct KeyBody {
    /// The site key.
    pub key: SiteKey,
}

/// `{"keys": [SiteKey]}`, oldest first.
#[derive(Debug, ToSchema)]
pub struct KeyList {
    /// Every site key, revoked ones included.
    pub keys: Vec<SiteKey>,
}

/// `POST /api/v1/visitor/session`.
#[derive(Debug, ToSchema)]
pub struct VisitorSession {
    /// Single-use token for `GET /api/v1/visitor/ws?token=…` (256 random bits, base64url).
    pub session_token: String,
    /// Seconds the token stays valid.
    pub expires_in: u64,
    /// The visitor's pseudonymous id.
    pub visitor_id: String,
}

/// The served description (JSON), built once when the router is.
#[derive(Debug, Clone)]
pub struct Description(Arc<str>);

impl Description {
    /// Completes the description collected from the routes and renders it.
    pub fn new(collected: OpenApi) -> Self {
        let doc = complete(collected);
        // Serialising the description's own types cannot fail; an empty object would fail every check.
        Self(Arc::from(serde_json::to_string(&doc).unwrap_or_else(|_| "{}".into())))
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }
}

/// The OpenAPI 3.1 description of every route of this server (this document).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = TAG_OPERATIONS,
    responses((status = 200, description = "This description (OpenAPI 3.1)", body = Object)))]
pub(crate) async fn openapi_json(Extension(doc): Extension<Description>) -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        doc.json().to_owned(),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The collected description with its info, security schemes, shared schemas and the responses every
/// route has because of the layers in front of it.
pub fn complete(mut doc: OpenApi) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("RelayDesk HTTP API")
        .version(crate::VERSION)
        .description(Some(
            "Every HTTP route of a RelayDesk server. The prose reference, with the frames of the two \
             WebSockets, is docs/protocol.md and docs/ws-messages.md in the repository. Every failure has \
             the body {\"error\":{\"code\":\"…\",\"message\":\"…\"}}.",
        ))
        .license(Some(LicenseBuilder::new().name("Apache-2.0").build()))
        .build();
    let mut components = doc
        .components
        .take()
        .unwrap_or_else(|| ComponentsBuilder::new().build());
    components.add_security_scheme(
        SESSION,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            super::names::SESSION_COOKIE,
            "The login session, set by POST /api/v1/auth/login (HttpOnly, Secure, SameSite=Strict).",
        ))),
    );
    components.add_security_scheme(
        CSRF,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-RelayDesk-CSRF",
            "Must be exactly 1 on every POST, PUT, PATCH and DELETE authenticated by the cookie (and on \
             login); an Origin header, when present, must be the server's own origin.",
        ))),
    );
    components.add_security_scheme(
        FILES_TOKEN,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The files_token of the visitor's latest welcome frame."))
                .build(),
        ),
    );
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    doc.components = Some(components);

    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_shared_responses(op);
        }
    }
    doc
}

/// The responses an operation has because of the layers every route sits behind, and the error body on
/// every 4xx and 5xx answer.
fn add_shared_responses(op: &mut Operation) {
    let takes_json = matches!(&op.request_body, Some(RefOr::T(body)) if body.content.contains_key("application/json"));
    let mut shared = vec![(
        "408",
        "`request_timeout`: the body did not arrive, or the answer was not ready, within http.request_timeout_secs",
    )];
    if takes_json {
        shared.extend([
            (
                "400",
                "`invalid_json`: not JSON, not UTF-8, a wrong type, a missing or an unknown field",
            ),
            (
                "413",
                "`payload_too_large`: the body is larger than http.max_body_bytes",
            ),
            (
                "415",
                "`unsupported_media_type`: the body is not sent as application/json",
            ),
        ]);
    }
    for (status, description) in shared {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(ApiResponse::new(description)));
    }
    for (status, response) in &mut op.responses.responses {
        let RefOr::T(response) = response else { continue };
        let failure = status.starts_with('4') || status.starts_with('5');
        if failure && response.content.is_empty() {
            response.content.insert(
                "application/json".to_owned(),
                RefOr::T(Content::new(Some(Ref::from_schema_name(ErrorBody::name())))),
            );
        }
        if status == "429" || status == "503" {
            response.headers.entry("Retry-After".to_owned()).or_insert_with(|| {
                RefOr::T(
                    HeaderBuilder::new()
                        .schema(Some(<u64 as PartialSchema>::schema()))
                        .description(Some("Seconds to wait before retrying (when the wait is known)"))
                        .build(),
                )
            });
        }
    }
}
