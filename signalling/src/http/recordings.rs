//! `GET /api/v1/admin/conversations/{id}/recordings` (the list) and
//! `GET /api/v1/admin/conversations/{id}/recording[?recording=ID]` (one recording, decrypted: a WebM file).
//!
//! Access: admins only (a recording holds voices and faces; supervisors review transcripts). Every download
//! is written to the audit log (`recording.export`: who, which recording, from where) in the transaction that
//! reads its key; a refused attempt is audited as `recording.export_denied`.

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::AdminRead;
use super::{ApiError, ApiPath, AuthUser, ClientAddr, SharedState};
use crate::archive::MAX_ID_BYTES;
use crate::recording::{RecordingError, RecordingInfo};
use crate::store::{AuditEvent, Role};

/// The routes of this module (merged under `/api/v1`).
pub fn routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(recording))
        .routes(routes!(recordings))
}

/// Query string of the download.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecordingQuery {
    /// Which recording (`{conversation}-{n}`, as listed); the latest when absent.
    pub recording: Option<String>,
}

/// `{"recordings": [RecordingInfo]}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RecordingList {
    /// Oldest first.
    pub recordings: Vec<RecordingInfo>,
}

impl From<RecordingError> for ApiError {
    fn from(e: RecordingError) -> Self {
        match e {
            RecordingError::NotFound(_) => not_found(),
            RecordingError::Archive(a) => ApiError::from(a),
            RecordingError::Sealed { .. } | RecordingError::Truncated(_) | RecordingError::Io { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "recording_unreadable",
                "the recording cannot be decrypted (damaged or cut file, or unavailable key)",
            )
            .with_detail(e),
            other => ApiError::internal(other),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no recording of this conversation")
}

/// Admins only; anyone else is refused (and audited).
async fn admit(state: &SharedState, auth: &AuthUser, audit: AuditEvent) -> Result<(), ApiError> {
    if auth.user.role == Role::Admin {
        return Ok(());
    }
    state.store.call(move |db| db.audit(audit)).await?;
    Err(ApiError::forbidden("recordings are available to admins only"))
}

fn audit_event(auth: &AuthUser, addr: std::net::IpAddr, action: &str, id: &str) -> AuditEvent {
    AuditEvent {
        actor: Some(auth.user.username.clone()),
        action: action.into(),
        target: Some(format!("conversation:{id}")),
        client_addr: Some(addr.to_string()),
        detail: None,
    }
}

/// The recordings of a conversation (never their keys).
#[utoipa::path(get, path = "/admin/conversations/{id}/recordings", tag = super::names::TAG_ADMIN,
    security(("session" = [])),
    params(("id" = String, Path, description = "The conversation id")),
    responses(
        (status = 200, description = "The recordings, oldest first (maybe none)", body = RecordingList),
        AdminRead,
    ))]
async fn recordings(
    State(state): State<SharedState>,
    auth: AuthUser,
    ClientAddr(addr): ClientAddr,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    admit(&state, &auth, audit_event(&auth, addr, "recording.list_denied", &id)).await?;
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Ok(axum::Json(RecordingList { recordings: vec![] }).into_response());
    }
    let list = state
        .store
        .call(move |db| Ok(crate::recording::list(db, &id)))
        .await?
        .map_err(ApiError::from)?;
    Ok(axum::Json(RecordingList { recordings: list }).into_response())
}

/// One recording of a conversation, decrypted: a WebM file (Opus and VP8, a track per party and kind).
/// A recording interrupted by a crash is given up to its last sealed chunk, with
/// `X-Recording-Complete: false`. Every download is audited.
#[utoipa::path(get, path = "/admin/conversations/{id}/recording", tag = super::names::TAG_ADMIN,
    security(("session" = [])),
    params(("id" = String, Path, description = "The conversation id"), RecordingQuery),
    responses(
        (status = 200, description = "The recording", content((Vec<u8> = "video/webm")),
            headers(("X-Recording-Complete" = String, description = "`true`, or `false` for a recording interrupted by a crash"))),
        (status = 400, description = "`invalid_input`: an unknown query parameter; `invalid_path`"),
        AdminRead,
        (status = 404, description = "`not_found`: no such recording"),
        (status = 500, description = "`recording_unreadable`: the file is damaged or cut, or its key is not available"),
    ))]
async fn recording(
    State(state): State<SharedState>,
    auth: AuthUser,
    ClientAddr(addr): ClientAddr,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<RecordingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("unknown query parameter").with_detail(e.body_text()))?;
    admit(&state, &auth, audit_event(&auth, addr, "recording.export_denied", &id)).await?;
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(not_found());
    }
    let audit = audit_event(&auth, addr, "recording.export", &id);
    let out = state.archive.recording_export(id, query.recording, audit).await?;
    tracing::info!(recording = %out.info.id, bytes = out.webm.len(), complete = out.complete, "recording exported");
    let name = format!("attachment; filename=\"recording-{}.webm\"", out.info.id);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "video/webm".to_owned()),
            (header::CONTENT_DISPOSITION, name),
            (
                header::HeaderName::from_static("x-recording-complete"),
                out.complete.to_string(),
            ),
        ],
        out.webm,
    )
        .into_response())
}
