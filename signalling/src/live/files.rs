//! Files shared in a conversation's chat (outside a call): upload and download over HTTPS.
//!
//! Routes (see `docs/protocol.md`, Files):
//! - `POST /api/v1/visitor/files?name=…` and `GET /api/v1/visitor/files/{id}`: the visitor, with
//!   `Authorization: Bearer <files_token>` (from its latest `welcome`; it is the conversation's own).
//! - `POST /api/v1/agent/conversations/{id}/files?name=…` (session cookie, CSRF header, the conversation's
//!   agent) and `GET /api/v1/agent/files/{id}` (session cookie, anyone who may read the conversation).
//!
//! An upload is authorised by the hub *before* its body is read, limited to `live.files.max_bytes`, checked
//! against the allowed media types by its first bytes (not its name), hashed (SHA-256), sealed with a fresh
//! key (XChaCha20-Poly1305, the archive's cipher) and written under `<data_dir>/files/`; only then does the
//! hub post it into the chat as a `message` with a `file` (its name masked like any text). Keys live in the
//! hub's memory and, sealed under the conversation's key, in its record at rest (`crate::live_store`, so a
//! shared file survives a crash with its conversation); files are deleted when their conversation ends (and
//! files of no live conversation are deleted when the server starts), so nothing readable outlives a
//! conversation. Downloads are always
//! `application/octet-stream` attachments with `nosniff`: a shared file is never rendered on this origin.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::Digest as _;
use tokio::sync::oneshot;

use super::SharedLive;
use super::hub::{Command, FileCaller, Refusal, StoredFile};
use crate::archive_crypto::DataKey;
use crate::chat_protocol::{ConversationId, ErrorCode, FileRef};
use crate::http::plumbing::{ApiError, ApiPath, AuthUser};
pub use crate::live_config::FilesConfig;
use crate::live_config::SVG;

/// Extensions whose type we know: a file named with one must be declared with that type.
const KNOWN_EXTENSIONS: &[(&str, &str)] = &[
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("pdf", "application/pdf"),
    ("txt", "text/plain"),
    ("svg", SVG),
];

/// Checks a cleaned file name's extension against `policy` and the declared type; a name without an
/// extension gets the usual one of its type. Returns the name to use.
///
/// # Errors
/// [`ContentError::ExtensionNotAllowed`], or [`ContentError::Mismatch`] when a known extension names
/// another type than the declared one (`photo.pdf` declared `image/png`).
pub fn check_name(policy: &FilesConfig, name: &str, mime: &str) -> Result<String, ContentError> {
    let allowed = |ext: &str| policy.allowed_extensions.iter().any(|a| a.eq_ignore_ascii_case(ext));
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => {
            if !allowed(ext) {
                return Err(ContentError::ExtensionNotAllowed);
            }
            match KNOWN_EXTENSIONS.iter().find(|(e, _)| e.eq_ignore_ascii_case(ext)) {
                Some((_, known)) if *known != mime => Err(ContentError::Mismatch),
                _ => Ok(name.to_owned()),
            }
        }
        _ => KNOWN_EXTENSIONS
            .iter()
            .find(|(e, t)| *t == mime && allowed(e))
            .map(|(e, _)| format!("{name}.{e}"))
            .ok_or(ContentError::ExtensionNotAllowed),
    }
}

/// Why a file's content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// The declared media type is not a valid `type/subtype`.
    #[error("bad media type")]
    BadType,
    /// The media type is not in `live.files.allowed_types`.
    #[error("files of this type are not accepted")]
    TypeNotAllowed,
    /// The bytes do not match the declared type (e.g. a program named `.png`).
    #[error("the content does not match its type")]
    Mismatch,
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// The file name's extension is not in `live.files.allowed_extensions` (or it has none and its type
    /// has no usual one that is).
    #[error("files with this name extension are not accepted")]
    ExtensionNotAllowed,
}

/// Normalises a declared media type (`Content-Type`, parameters dropped; missing: octet-stream).
fn media_type(declared: Option<&str>) -> Result<String, ContentError> {
    let raw = declared.unwrap_or("application/octet-stream");
    let mime = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let mut parts = mime.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|p| {
            !p.is_empty()
                && p.len() <= 60
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
        })
    };
    if ok(parts.next()) && ok(parts.next()) && parts.next().is_none() {
        Ok(mime)
    } else {
        Err(ContentError::BadType)
    }
}

/// Checks `bytes` against `policy` and the signature of `mime`.
///
/// # Errors
/// [`ContentError`].
pub fn check_content(policy: &FilesConfig, mime: &str, bytes: &[u8]) -> Result<(), ContentError> {
    if bytes.is_empty() {
        return Err(ContentError::Empty);
    }
    if !policy.allows_type(mime) {
        return Err(ContentError::TypeNotAllowed);
    }
    let signature_ok = match mime {
        "image/png" => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a"),
        "image/webp" => bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP",
        "application/pdf" => bytes.starts_with(b"%PDF-"),
        "text/plain" => std::str::from_utf8(bytes).is_ok_and(|t| !t.contains('\0')),
        // Other images are not rendered by us; everything is served as an attachment.
        _ => true,
    };
    if signature_ok {
        Ok(())
    } else {
        Err(ContentError::Mismatch)
    }
}

/// Cleans a file name: the last path component, no control or format characters (bidi overrides,
/// invisible joiners), at most 200 bytes; empty → `file`.
pub fn clean_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out = String::new();
    for c in base
        .chars()
        .filter(|&c| !c.is_control() && !crate::masking::is_invisible(c))
    {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    let trimmed = out.trim().trim_start_matches('.').to_owned();
    if trimmed.is_empty() { "file".to_owned() } else { trimmed }
}

/// The directory of sealed files.
pub(crate) fn dir(state: &SharedLive) -> PathBuf {
    state.config.data_dir.join("files")
}

/// Prepares (creates) the files directory and deletes every file in it but `keep` (the files of the
/// conversations restored at start): the others have no key any more.
pub(crate) async fn prune_dir(dir: PathBuf, keep: std::collections::HashSet<String>) {
    let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| keep.contains(n)) {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the files directory could not be prepared"),
        Err(e) => tracing::error!(error = %e, "the files directory task failed"),
    }
}

/// Deletes sealed files (best effort; a leftover is unreadable and removed at the next start).
pub(crate) fn remove(dir: PathBuf, ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for id in ids {
            if let Err(e) = tokio::fs::remove_file(dir.join(&id)).await {
                tracing::debug!(error = %e, "removing a shared file failed");
            }
        }
    });
}

fn file_path(dir: &Path, id: &str) -> Option<PathBuf> {
    // Ids are 32 lowercase hex digits (ours); anything else never touches the file system.
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then(|| dir.join(id))
}

fn refusal_response((code, message): Refusal) -> Response {
    let status = match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NotReady => StatusCode::UNAUTHORIZED,
        ErrorCode::BadMessage => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::BAD_REQUEST => "bad_request",
        _ => "internal",
    };
    ApiError::new(status, code, message).into_response()
}

/// A console user calling a file route. Their account was just read from the store (with the session):
/// it goes to the hub ahead of the request, so the hub checks the request against the current role and
/// groups, not those of an older socket.
fn agent_caller(state: &SharedLive, user: crate::store::User) -> FileCaller {
    let id = crate::chat_protocol::AgentId(user.id);
    let _ = state.live.commands.send(Command::UserChanged {
        user,
        sessions_ended: false,
        reply: None,
    });
    FileCaller::Agent(id)
}

async fn ask<T>(
    state: &SharedLive,
    make: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Command,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    if state.live.commands.send(make(tx)).is_err() {
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the server is stopping").into_response(),
        );
    }
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(r)) => Err(refusal_response(r)),
        Err(_) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the server is stopping").into_response())
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<[u8; 32], ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .map(crate::token::hash_token)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing Authorization: Bearer <files_token>",
            )
        })
}

/// Query of the upload routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadQuery {
    name: Option<String>,
}

/// The refusals both uploads (the visitor's and the agent's) share, as the OpenAPI description gives them.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only described: the handlers answer with `ApiError`.
enum UploadRefusals {
    /// A bad query, an empty file, a bad path.
    #[response(
        status = 400,
        description = "`bad_request`: a query parameter other than `name`; `file_refused`: the file is empty; `invalid_path`"
    )]
    BadRequest,
    /// Files are off, or no such conversation.
    #[response(
        status = 404,
        description = "`not_found`: files are disabled, or no such conversation"
    )]
    NotFound,
    /// The conversation has ended.
    #[response(status = 409, description = "`conflict`: the conversation has ended")]
    Conflict,
    /// Too large, or too many files.
    #[response(
        status = 413,
        description = "`too_large`: larger than live.files.max_bytes, or the conversation holds live.files.max_per_conversation files"
    )]
    TooLarge,
    /// A type or content refused.
    #[response(
        status = 415,
        description = "`bad_type`: not a media type; `file_refused`: type or extension not accepted, or the content does not match the type"
    )]
    BadType,
    /// Uploads in progress in the conversation.
    #[response(
        status = 429,
        description = "`too_many_uploads`: the conversation has uploads in progress"
    )]
    TooManyUploads,
    /// Uploads in progress on the server, or stopping.
    #[response(
        status = 503,
        description = "`busy`: too many uploads in progress on the server; `unavailable`: the server is stopping"
    )]
    Busy,
}

/// `POST /api/v1/visitor/files?name=…`
#[utoipa::path(post, path = "/api/v1/visitor/files", tag = crate::http::names::TAG_VISITOR,
    security(("files_token" = [])),
    description = "Shares a file in the visitor's conversation.",
    request_body(description = "The file's bytes; `Content-Type` is its media type (checked against its first bytes)",
        content(
            (Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/gif"), (Vec<u8> = "image/webp"),
            (Vec<u8> = "application/pdf"), (Vec<u8> = "text/plain"),
        )),
    params(("name" = Option<String>, Query, description = "The file's name (cleaned, masked like chat text)")),
    responses(
        (status = 201, description = "Shared: the file as it appears in the chat's `message`", body = FileRef),
        UploadRefusals,
        (status = 403, description = "`forbidden`: not this conversation's party"),
        (status = 401, description = "`unauthenticated`: no `Authorization: Bearer <files_token>`, or not a current one"),
    ))]
pub(crate) async fn visitor_upload(
    State(state): State<SharedLive>,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Response {
    let caller = match bearer(&headers) {
        Ok(h) => FileCaller::Visitor(h),
        Err(e) => return e.into_response(),
    };
    upload(state, caller, None, headers, query, body).await
}

/// `POST /api/v1/agent/conversations/{id}/files?name=…`
#[utoipa::path(post, path = "/api/v1/agent/conversations/{id}/files", tag = crate::http::names::TAG_AGENT,
    security(("session" = [], "csrf" = [])),
    description = "Shares a file in a conversation assigned to the caller.",
    request_body(description = "The file's bytes; `Content-Type` is its media type (checked against its first bytes)",
        content(
            (Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/gif"), (Vec<u8> = "image/webp"),
            (Vec<u8> = "application/pdf"), (Vec<u8> = "text/plain"),
        )),
    params(("id" = String, Path, description = "The conversation id"), ("name" = Option<String>, Query, description = "The file's name (cleaned, masked like chat text)")),
    responses(
        (status = 201, description = "Shared: the file as it appears in the chat's `message`", body = FileRef),
        UploadRefusals,
        (status = 403, description = "`forbidden`: not this conversation's agent; `csrf`"),
        (status = 401, description = "`unauthenticated`: no valid session cookie"),
    ))]
pub(crate) async fn agent_upload(
    State(state): State<SharedLive>,
    auth: Result<AuthUser, ApiError>,
    ApiPath(conversation): ApiPath<String>,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Response {
    let auth = match auth {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = crate::http::plumbing::check_csrf(&state.config, &headers) {
        return e.into_response();
    }
    let Ok(conversation) = conversation.parse::<u64>() else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such conversation").into_response();
    };
    let caller = agent_caller(&state, auth.user);
    upload(state, caller, Some(ConversationId(conversation)), headers, query, body).await
}

async fn upload(
    state: SharedLive,
    caller: FileCaller,
    conversation: Option<ConversationId>,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Response {
    let policy = state.config.live.files.clone();
    if !policy.enabled() {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "files are disabled on this server").into_response();
    }
    let Ok(Query(query)) = query else {
        return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "the query takes only name").into_response();
    };
    let name = clean_name(query.name.as_deref().unwrap_or(""));
    let mime = match media_type(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())) {
        Ok(m) => m,
        Err(e) => return ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_type", e.to_string()).into_response(),
    };
    let name = match check_name(&policy, &name, &mime) {
        Ok(n) => n,
        Err(e) => {
            metrics::counter!("relaydesk_chat_files_refused_total").increment(1);
            return ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "file_refused", e.to_string()).into_response();
        }
    };
    // Authorised, and a file slot of the conversation taken, before the body is read.
    let conv = match ask(&state, |reply| Command::FileUpload {
        caller,
        conversation,
        reply,
    })
    .await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let slot = SlotGuard {
        commands: state.live.commands.clone(),
        conversation: Some(conv),
    };
    // Each upload holds its body in memory until it is sealed: bound how many run at once.
    let (_in_flight, _permit) = match upload_slots(&state, conv) {
        Ok(slots) => slots,
        Err(e) => return e.into_response(),
    };
    let limit = usize::try_from(policy.max_bytes).unwrap_or(usize::MAX);
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("files are limited to {} bytes", policy.max_bytes),
            )
            .into_response();
        }
    };
    if let Err(e) = check_content(&policy, &mime, &bytes) {
        let status = match e {
            ContentError::Empty => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        };
        metrics::counter!("relaydesk_chat_files_refused_total").increment(1);
        return ApiError::new(status, "file_refused", e.to_string()).into_response();
    }
    let files_dir = dir(&state);
    let sealed = tokio::task::spawn_blocking(move || seal_and_write(&files_dir, &bytes)).await;
    let (id, key, sha256, size) = match sealed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return ApiError::internal(e).into_response(),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let file = StoredFile {
        id: id.clone(),
        cipher: Arc::new(super::persist::file_cipher_of(&key, &id)),
        key: Arc::new(key),
        raw_name: name,
        size,
        mime,
        sha256,
    };
    // The hub takes the slot over with the file (or gives it back if it refuses it).
    slot.disarm();
    match ask(&state, |reply| Command::FileShared {
        caller,
        conversation: conv,
        file,
        reply,
    })
    .await
    {
        Ok(file_ref) => (StatusCode::CREATED, axum::Json(file_ref)).into_response(),
        Err(r) => {
            remove(dir(&state), vec![id]);
            r
        }
    }
}

/// A conversation's file slot taken for an upload in progress; dropped before the hub took the file over
/// (the body failed, was refused, the request timed out or the client went away), it gives the slot back.
struct SlotGuard {
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    conversation: Option<ConversationId>,
}

impl SlotGuard {
    fn disarm(mut self) {
        self.conversation = None;
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(conversation) = self.conversation.take() {
            // The hub gone means the server is stopping: nothing left to give back.
            let _ = self.commands.send(Command::FileSlotReleased { conversation });
        }
    }
}

/// A place for one upload of `conv`, in the conversation's and in the server's count (`[live.limits]`).
fn upload_slots(
    state: &SharedLive,
    conv: ConversationId,
) -> Result<
    (
        super::limits::KeyedSlot<ConversationId>,
        tokio::sync::OwnedSemaphorePermit,
    ),
    ApiError,
> {
    let limits = &state.config.live.limits;
    let wait = std::time::Duration::from_secs(5);
    let Some(slot) = state
        .live
        .conversation_uploads
        .try_take(conv, limits.max_uploads_per_conversation)
    else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            "this conversation has uploads in progress; wait for them to finish",
        )
        .with_retry_after(wait));
    };
    let permit = Arc::clone(&state.live.upload_slots).try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many uploads in progress; retry later",
        )
        .with_retry_after(wait)
    })?;
    Ok((slot, permit))
}

/// Seals `bytes` under a fresh key into a new file of `dir`, synced to disk before it returns (the file's
/// record is then committed and acknowledged: it must not point at a file a power loss could drop).
fn seal_and_write(dir: &Path, bytes: &[u8]) -> Result<(String, DataKey, String, u64), String> {
    let id = crate::token::random_bytes::<16>()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        .map_err(|e| e.to_string())?;
    let key = DataKey::generate().map_err(|e| e.to_string())?;
    let cipher = super::persist::file_cipher_of(&key, &id);
    let sealed = cipher.seal(0, bytes).map_err(|e| e.to_string())?;
    let sha256: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(&id);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(&path).map_err(|e| format!("writing a shared file: {e}"))?;
    std::io::Write::write_all(&mut f, &sealed).map_err(|e| format!("writing a shared file: {e}"))?;
    f.sync_all().map_err(|e| format!("syncing a shared file: {e}"))?;
    // The new directory entry too.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing the files directory: {e}"))?;
    Ok((id, key, sha256, bytes.len() as u64))
}

/// The answer of both downloads (the visitor's and the agent's), as the OpenAPI description gives it.
#[derive(utoipa::ToResponse)]
#[response(description = "The file, always as an attachment", content_type = "application/octet-stream",
    headers(
        ("Content-Disposition" = String, description = "`attachment` with the (masked) file name"),
        ("X-RelayDesk-SHA256" = String, description = "Lowercase hex SHA-256 of the content"),
    ))]
#[allow(dead_code)] // Only described, never built: `download` writes the bytes itself.
struct FileDownload(Vec<u8>);

/// `GET /api/v1/visitor/files/{id}`
#[utoipa::path(get, path = "/api/v1/visitor/files/{id}", tag = crate::http::names::TAG_VISITOR,
    security(("files_token" = [])),
    params(("id" = String, Path, description = "The file's id (from its `FileRef`)")),
    responses(
        (status = 200, response = inline(FileDownload)),
        (status = 401, description = "`unauthenticated`: no `Authorization: Bearer <files_token>`, or not a current one"),
        (status = 400, description = "`invalid_path`: the id is not valid UTF-8"),
        (status = 404, description = "`not_found`: no such file, or not the caller's to read"),
        (status = 503, description = "`unavailable`: the server is stopping"),
    ))]
pub(crate) async fn visitor_download(
    State(state): State<SharedLive>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Response {
    match bearer(&headers) {
        Ok(h) => download(state, FileCaller::Visitor(h), id).await,
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/agent/files/{id}`
#[utoipa::path(get, path = "/api/v1/agent/files/{id}", tag = crate::http::names::TAG_AGENT,
    security(("session" = [])),
    params(("id" = String, Path, description = "The file's id (from its `FileRef`)")),
    responses(
        (status = 200, response = inline(FileDownload)),
        (status = 401, description = "`unauthenticated`: no valid session cookie"),
        (status = 400, description = "`invalid_path`: the id is not valid UTF-8"),
        (status = 404, description = "`not_found`: no such file, or not the caller's to read"),
        (status = 503, description = "`unavailable`: the server is stopping"),
    ))]
pub(crate) async fn agent_download(
    State(state): State<SharedLive>,
    auth: Result<AuthUser, ApiError>,
    ApiPath(id): ApiPath<String>,
) -> Response {
    match auth {
        Ok(a) => {
            let caller = agent_caller(&state, a.user);
            download(state, caller, id).await
        }
        Err(e) => e.into_response(),
    }
}

async fn download(state: SharedLive, caller: FileCaller, id: String) -> Response {
    let Some(path) = file_path(&dir(&state), &id) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response();
    };
    let (file_ref, cipher) = match ask(&state, |reply| Command::FileFetch { caller, id, reply }).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let opened = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let sealed = std::fs::read(&path).map_err(|e| format!("reading a shared file: {e}"))?;
        cipher.open(0, &sealed).map_err(|e| e.to_string())
    })
    .await;
    let bytes = match opened {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return ApiError::internal(e).into_response(),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    // RFC 6266 / 5987: an ASCII fallback and the UTF-8 name.
    let ascii: String = file_ref
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = file_ref
        .name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&file_ref.sha256) {
        h.insert("x-relaydesk-sha256", v);
    }
    resp
}

#[cfg(test)]
mod tests;
