//! `GET /api/v1/admin/conversations/{id}/transcript[?format=json|text]`: the decrypted (masked) transcript
//! of an archived conversation.
//!
//! Access: admins for every conversation, supervisors for conversations of their groups (404 otherwise, as
//! for an unknown id: nobody learns which ids exist in other groups), agents never (403). Unknown id: 404. Every successful export is written to the audit log
//! (`archive.export`: who, which conversation, when, from where) in the same transaction that read it; a
//! refused attempt is audited as `archive.export_denied`.

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiPath, AuthUser, ClientAddr, SharedState};
use crate::archive::{ArchiveError, MAX_ID_BYTES};
use crate::routing::GroupId;
use crate::store::{AuditEvent, Role};

/// The routes of this module (merged under `/api/v1`).
pub fn routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(transcript))
}

/// Output format of the export.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// The [`Transcript`](crate::archive::Transcript) as JSON (default).
    #[default]
    Json,
    /// Plain text, one message per line.
    Text,
}

/// Query string of the export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: ExportFormat,
}

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::NotFound(_) => not_found(),
            ArchiveError::Unreadable { .. } | ArchiveError::MissingMasterKey(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "archive_unreadable",
                "the archived transcript cannot be decrypted (damaged data or unavailable key)",
            )
            .with_detail(e),
            ArchiveError::Store(s) => ApiError::from(s),
            other => ApiError::internal(other),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no archived conversation with this id",
    )
}

/// The decrypted (masked) transcript of an archived conversation; every export is audited.
#[utoipa::path(get, path = "/admin/conversations/{id}/transcript", tag = super::names::TAG_ADMIN,
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "The conversation id"),
        ("format" = inline(Option<ExportFormat>), Query, description = "`json` (default) or `text`"),
    ),
    responses(
        (status = 200, description = "The transcript", content(
            (crate::archive::Transcript = "application/json"),
            (String = "text/plain; charset=utf-8"),
        )),
        (status = 400, description = "`invalid_input`: format is not json or text; `invalid_path`"),
        (status = 401, description = "`unauthenticated`: no valid session cookie"),
        (status = 403, description = "`forbidden`: the role is agent"),
        (status = 404, description = "`not_found`: no archived conversation with this id (for a supervisor, also one of a group they do not supervise)"),
        (status = 500, description = "`archive_unreadable`: the archived data is damaged or its master key is not available"),
    ))]
async fn transcript(
    State(state): State<SharedState>,
    auth: AuthUser,
    ClientAddr(addr): ClientAddr,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::invalid("format must be json or text").with_detail(e.body_text()))?;
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(not_found());
    }
    let user = &auth.user;
    let audit = |action: &str| AuditEvent {
        actor: Some(user.username.clone()),
        action: action.into(),
        target: Some(format!("conversation:{id}")),
        client_addr: Some(addr.to_string()),
        detail: None,
    };
    // Why the export is refused, if it is; every refusal is audited before it is answered. A
    // conversation of a group the supervisor does not supervise is answered as one that does not exist.
    let refusal = match user.role {
        Role::Admin => None,
        Role::Agent => Some(ApiError::forbidden(
            "transcript export requires the admin or supervisor role",
        )),
        Role::Supervisor => {
            let group = GroupId::from_name(&state.archive.conversation_group(&id).await?);
            (!user.groups.iter().any(|g| GroupId::from_name(g) == group)).then(not_found)
        }
    };
    if let Some(error) = refusal {
        let e = audit("archive.export_denied");
        state.store.call(move |db| db.audit(e)).await?;
        return Err(error);
    }
    let transcript = state.archive.export(&id, audit("archive.export")).await?;
    tracing::info!(conversation = %transcript.id, messages = transcript.messages.len(), "transcript exported");
    Ok(match query.format {
        ExportFormat::Json => axum::Json(transcript).into_response(),
        ExportFormat::Text => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            transcript.to_text(),
        )
            .into_response(),
    })
}
