//! Admin API (role admin only): `/api/v1/admin/users`, `/groups`, `/keys`. Every change is audited.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::names::TAG_ADMIN;
use super::openapi::{AdminRead, AdminWrite, CreatedUser, GroupBody, GroupList, KeyBody, KeyList, UserBody, UserList};
use super::{AdminUser, ApiError, ApiJson, ApiPath, ClientAddr, SharedState};
use crate::store::{AuditEvent, NewUser, RecordingPolicy, Role, UserUpdate};

/// The admin sub-router (mounted at `/api/v1/admin`).
pub fn routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user))
        .routes(routes!(list_groups, create_group))
        .routes(routes!(delete_group, update_group))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
}

fn audit(admin: &AdminUser, ip: ClientAddr, action: &str, target: &str) -> AuditEvent {
    AuditEvent {
        actor: Some(admin.0.user.username.clone()),
        action: action.into(),
        target: Some(target.into()),
        client_addr: Some(ip.0.to_string()),
        detail: None,
    }
}

/// Hashes a password on the hashing pool (503 when it is at capacity).
pub(crate) async fn hash_password(state: &SharedState, password: String) -> Result<String, ApiError> {
    crate::password::check_policy(&password).map_err(|e| ApiError::invalid(e.to_string()))?;
    state.hash_pool.hash(password).await.map_err(ApiError::from)
}

/// Every user, sorted by username.
#[utoipa::path(get, path = "/users", tag = TAG_ADMIN, security(("session" = [])),
    responses(
        (status = 200, description = "The users", body = UserList),
        AdminRead,
    ))]
async fn list_users(State(state): State<SharedState>, _admin: AdminUser) -> Result<Json<serde_json::Value>, ApiError> {
    let users = state.store.call(|db| db.list_users()).await?;
    Ok(Json(json!({ "users": users })))
}

/// One user.
#[utoipa::path(get, path = "/users/{id}", tag = TAG_ADMIN, security(("session" = [])),
    params(("id" = i64, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user", body = UserBody),
        (status = 400, description = "`invalid_path`: the id is not an integer"),
        AdminRead,
        (status = 404, description = "`not_found`: no such user"),
    ))]
async fn get_user(
    State(state): State<SharedState>,
    _admin: AdminUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = state.store.call(move |db| db.user(id)).await?;
    Ok(Json(json!({ "user": user })))
}

/// `POST /users` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Login name.
    #[schema(min_length = 1, max_length = 64)]
    pub username: String,
    /// Display name (default: the username).
    #[serde(default)]
    #[schema(max_length = 128)]
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Capacity (default 4).
    #[schema(minimum = 1, maximum = 100)]
    pub max_conversations: Option<u32>,
    /// Password; when absent one is generated and returned once in the response.
    #[schema(value_type = Option<String>, format = Password, min_length = 8, max_length = 1024)]
    pub password: Option<crate::password::Password>,
}

/// Creates a user (audited `user.create`).
#[utoipa::path(post, path = "/users", tag = TAG_ADMIN, security(("session" = [], "csrf" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created; `password` only when it was generated", body = CreatedUser),
        (status = 400, description = "`invalid_json`, or `invalid_input`: a value breaks a rule (name, password length, capacity)"),
        AdminWrite,
        (status = 404, description = "`not_found`: an unknown group"),
        (status = 409, description = "`conflict`: the username is taken"),
        (status = 503, description = "`busy`: password hashing is at capacity"),
    ))]
async fn create_user(
    State(state): State<SharedState>,
    admin: AdminUser,
    ip: ClientAddr,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<Response, ApiError> {
    let (password, generated) = match req.password {
        Some(p) => (p.into_inner(), false),
        None => (crate::token::new_password().map_err(ApiError::internal)?, true),
    };
    let password_hash = hash_password(&state, password.clone()).await?;
    let new = NewUser {
        username: req.username,
        display_name: req.display_name,
        role: req.role,
        groups: req.groups,
        max_conversations: req.max_conversations.unwrap_or(4),
        password_hash,
    };
    let ev = audit(&admin, ip, "user.create", &new.username);
    let user = state.store.call(move |db| db.create_user(new, ev)).await?;
    let body = if generated {
        json!({ "user": user, "password": password })
    } else {
        json!({ "user": user })
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `PATCH /users/{id}` body; absent fields are unchanged.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New display name.
    #[schema(max_length = 128)]
    pub display_name: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// New group list (replaces).
    pub groups: Option<Vec<String>>,
    /// New capacity.
    #[schema(minimum = 1, maximum = 100)]
    pub max_conversations: Option<u32>,
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// New password.
    #[schema(value_type = Option<String>, format = Password, min_length = 8, max_length = 1024)]
    pub password: Option<crate::password::Password>,
}

/// Changes a user (audited `user.update` or `user.disable`). A new password or role, or disabling, ends
/// the user's sessions and closes their console sockets.
#[utoipa::path(patch, path = "/users/{id}", tag = TAG_ADMIN, security(("session" = [], "csrf" = [])),
    params(("id" = i64, Path, description = "The user's id")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The changed user", body = UserBody),
        (status = 400, description = "`invalid_json`, `invalid_path`, or `invalid_input`: a value breaks a rule"),
        AdminWrite,
        (status = 404, description = "`not_found`: no such user, or an unknown group"),
        (status = 409, description = "`conflict`: the change would leave no enabled admin"),
        (status = 503, description = "`busy`: password hashing is at capacity"),
    ))]
async fn update_user(
    State(state): State<SharedState>,
    admin: AdminUser,
    ip: ClientAddr,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let password_hash = match req.password {
        Some(p) => Some(hash_password(&state, p.into_inner()).await?),
        None => None,
    };
    let new_password = password_hash.is_some();
    let mut changed: Vec<&str> = Vec::new();
    for (set, name) in [
        (req.display_name.is_some(), "display_name"),
        (req.role.is_some(), "role"),
        (req.groups.is_some(), "groups"),
        (req.max_conversations.is_some(), "max_conversations"),
        (req.disabled.is_some(), "disabled"),
        (password_hash.is_some(), "password"),
    ] {
        if set {
            changed.push(name);
        }
    }
    let action = match req.disabled {
        Some(true) => "user.disable",
        _ => "user.update",
    };
    let mut ev = audit(&admin, ip, action, &id.to_string());
    ev.detail = Some(format!("changed: {}", changed.join(",")));
    let update = UserUpdate {
        display_name: req.display_name,
        role: req.role,
        groups: req.groups,
        max_conversations: req.max_conversations,
        disabled: req.disabled,
        password_hash,
    };
    let user = state
        .store
        .call(move |db| {
            let name = db.user(id)?.username;
            ev.target = Some(name);
            db.update_user(id, update, ev)
        })
        .await?;
    // Takes effect on open sockets before the answer (see `live::apply_user`).
    crate::live::apply_user(&state.live, user.clone(), new_password).await;
    Ok(Json(json!({ "user": user })))
}

/// Every group.
#[utoipa::path(get, path = "/groups", tag = TAG_ADMIN, security(("session" = [])),
    responses(
        (status = 200, description = "The groups", body = GroupList),
        AdminRead,
    ))]
async fn list_groups(State(state): State<SharedState>, _admin: AdminUser) -> Result<Json<serde_json::Value>, ApiError> {
    let groups = state.store.call(|db| db.list_groups()).await?;
    Ok(Json(json!({ "groups": groups })))
}

/// `POST /groups` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// Group name.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// Whether its calls are recorded (default `off`).
    #[serde(default)]
    pub recording: RecordingPolicy,
}

/// Creates a group (audited `group.create`).
#[utoipa::path(post, path = "/groups", tag = TAG_ADMIN, security(("session" = [], "csrf" = [])),
    request_body = CreateGroup,
    responses(
        (status = 201, description = "Created", body = GroupBody),
        (status = 400, description = "`invalid_json`, or `invalid_input`: not a valid group name"),
        AdminWrite,
        (status = 409, description = "`conflict`: the name is taken"),
    ))]
async fn create_group(
    State(state): State<SharedState>,
    admin: AdminUser,
    ip: ClientAddr,
    ApiJson(req): ApiJson<CreateGroup>,
) -> Result<Response, ApiError> {
    let mut ev = audit(&admin, ip, "group.create", &req.name);
    ev.detail = Some(format!("recording {}", req.recording));
    let group = state
        .store
        .call(move |db| db.create_group_with(&req.name, req.recording, ev))
        .await?;
    crate::live::apply_group_recording(&state.live.live, &group.name, group.recording);
    Ok((StatusCode::CREATED, Json(json!({ "group": group }))).into_response())
}

/// `PATCH /groups/{name}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    /// The new recording policy; calls already in progress keep theirs.
    pub recording: RecordingPolicy,
}

/// Changes a group's recording policy (audited `group.recording`).
#[utoipa::path(patch, path = "/groups/{name}", tag = TAG_ADMIN, security(("session" = [], "csrf" = [])),
    params(("name" = String, Path, description = "The group's name")),
    request_body = UpdateGroup,
    responses(
        (status = 200, description = "Changed", body = GroupBody),
        (status = 400, description = "`invalid_json`: not `off`, `always` or `on_request`; `invalid_path`"),
        AdminWrite,
        (status = 404, description = "`not_found`: no such group"),
    ))]
async fn update_group(
    State(state): State<SharedState>,
    admin: AdminUser,
    ip: ClientAddr,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateGroup>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut ev = audit(&admin, ip, "group.recording", &name);
    ev.detail = Some(format!("recording {}", req.recording));
    let group = state
        .store
        .call(move |db| db.set_group_recording(&name, req.recording, ev))
        .await?;
    crate::live::apply_group_recording(&state.live.live, &group.name, group.recording);
    Ok(Json(json!({ "group": group })))
}

/// Deletes a group (audited `group.delete`); its members lose it.
#[utoipa::path(delete, path = "/groups/{name}", tag = TAG_ADMIN, security(("session" = [], "csrf" = [])),
    params(("name" = String, Path, description = "The group's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_path`: the name is not valid UTF-8"),
        AdminWrite,
        (status = 404, description = "`not_found`: no such group"),
        (status = 409, description = "`conflict`: a site key (even a revoked one) belongs to the group"),
    ))]
async fn delete_group(
    State(state): State<SharedState>,
    admin: AdminUser,
    ip: ClientAddr,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let ev = audit(&admin, ip, "group.delete", &name);
    state.store.call(move |db| db.delete_group(&name, ev)).await?;
    // Its members lost it: the live layer follows before the answer.
    let users = state.store.call(|db| db.list_users()).await?;
    for user in users {
        crate::live::apply_user(&state.live, user, false).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Every site key, oldest first, revoked ones included.
#[utoipa::path(get, path = "/keys", tag = TAG_ADMIN, security(("session" = [])),
    responses(
        (status = 200, description = "The site keys", body = KeyList),
        AdminRead,
    ))]
async fn list_keys(State(state): State<SharedState>, _admin: AdminUser) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = state.store.call(|db| db.list_site_keys()).await?;
    Ok(Json(json!({ "keys": keys })))
}

/// `POST /keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Group the key routes to.
    pub group: String,
    /// Allowed origins (`https://shop.example`, exact scheme, host and port).
    #[schema(min_items = 1, max_items = 32)]
    pub origins: Vec<String>,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 128)]
    pub label: String,
}

/// Creates a site key (audited `key.create`).
#[utoipa::path(post, path = "/keys", tag = TAG_ADMIN, security(("session" = [], "csrf" = [])),
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created", body = KeyBody),
        (status = 400, description = "`invalid_json`, or `invalid_input`: an origin is not `scheme://host[:port]`, none or more than 32, a label too long"),
        AdminWrite,
        (status = 404, description = "`not_found`: an unknown group"),
    ))]
async fn create_key(
    State(state): State<SharedState>,
    admin: AdminUser,
    ip: ClientAddr,
    ApiJson(req): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    let origins = req
        .origins
        .iter()
        .map(|o| crate::origin::normalize_origin(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let key = crate::token::new_site_key().map_err(ApiError::internal)?;
    let mut ev = audit(&admin, ip, "key.create", &key);
    ev.detail = Some(format!("group {}", req.group));
    let site_key = state
        .store
        .call(move |db| db.create_site_key(&key, &req.group, &origins, &req.label, ev))
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "key": site_key }))).into_response())
}

/// Revokes a site key (idempotent; audited `key.revoke`).
#[utoipa::path(delete, path = "/keys/{key}", tag = TAG_ADMIN, security(("session" = [], "csrf" = [])),
    params(("key" = String, Path, description = "The site key, `pk_` and 32 hex digits")),
    responses(
        (status = 200, description = "The key, with `revoked_at` set", body = KeyBody),
        (status = 400, description = "`invalid_path`: the key is not valid UTF-8"),
        AdminWrite,
        (status = 404, description = "`not_found`: no such key"),
    ))]
async fn revoke_key(
    State(state): State<SharedState>,
    admin: AdminUser,
    ip: ClientAddr,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ev = audit(&admin, ip, "key.revoke", &key);
    let site_key = state.store.call(move |db| db.revoke_site_key(&key, ev)).await?;
    Ok(Json(json!({ "key": site_key })))
}
