//! Admin API (role admin only): `/api/v1/admin/users`, `/groups`, `/keys`. Every change is audited.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{AdminUser, ApiError, ApiJson, ApiPath, ClientAddr, SharedState};
use crate::store::{AuditEvent, NewUser, Role, UserUpdate};

/// The admin sub-router (mounted at `/api/v1/admin`).
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{id}", get(get_user).patch(update_user))
        .route("/groups", get(list_groups).post(create_group))
        .route("/groups/{name}", delete(delete_group))
        .route("/keys", get(list_keys).post(create_key))
        .route("/keys/{key}", delete(revoke_key))
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

async fn list_users(State(state): State<SharedState>, _admin: AdminUser) -> Result<Json<serde_json::Value>, ApiError> {
    let users = state.store.call(|db| db.list_users()).await?;
    Ok(Json(json!({ "users": users })))
}

async fn get_user(
    State(state): State<SharedState>,
    _admin: AdminUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = state.store.call(move |db| db.user(id)).await?;
    Ok(Json(json!({ "user": user })))
}

/// `POST /users` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Login name.
    pub username: String,
    /// Display name (default: the username).
    #[serde(default)]
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Capacity (default 4).
    pub max_conversations: Option<u32>,
    /// Password; when absent one is generated and returned once in the response.
    pub password: Option<crate::password::Password>,
}

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New display name.
    pub display_name: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// New group list (replaces).
    pub groups: Option<Vec<String>>,
    /// New capacity.
    pub max_conversations: Option<u32>,
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// New password.
    pub password: Option<crate::password::Password>,
}

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
    crate::live::apply_user(&state, user.clone(), new_password).await;
    Ok(Json(json!({ "user": user })))
}

async fn list_groups(State(state): State<SharedState>, _admin: AdminUser) -> Result<Json<serde_json::Value>, ApiError> {
    let groups = state.store.call(|db| db.list_groups()).await?;
    Ok(Json(json!({ "groups": groups })))
}

/// `POST /groups` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// Group name.
    pub name: String,
}

async fn create_group(
    State(state): State<SharedState>,
    admin: AdminUser,
    ip: ClientAddr,
    ApiJson(req): ApiJson<CreateGroup>,
) -> Result<Response, ApiError> {
    let ev = audit(&admin, ip, "group.create", &req.name);
    let group = state.store.call(move |db| db.create_group(&req.name, ev)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "group": group }))).into_response())
}

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
        crate::live::apply_user(&state, user, false).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn list_keys(State(state): State<SharedState>, _admin: AdminUser) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = state.store.call(|db| db.list_site_keys()).await?;
    Ok(Json(json!({ "keys": keys })))
}

/// `POST /keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Group the key routes to.
    pub group: String,
    /// Allowed origins (`https://shop.example`, exact scheme, host and port).
    pub origins: Vec<String>,
    /// Free text.
    #[serde(default)]
    pub label: String,
}

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
