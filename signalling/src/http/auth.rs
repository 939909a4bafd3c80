//! `POST /api/v1/auth/login`, `POST /api/v1/auth/logout`, `GET /api/v1/auth/me`.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::names::TAG_AUTH;
use super::openapi::UserBody;
use super::{ApiError, ApiJson, AuthUser, ClientAddr, SESSION_COOKIE, SharedState, session_token};
use crate::store::{AuditEvent, MAX_AUDIT_CHARS};
use crate::throttle::ThrottleKey;
use crate::time::unix_now;

/// The auth sub-router (mounted at `/api/v1/auth`).
pub fn routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
}

/// Login request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The username.
    pub username: String,
    /// The password (redacted in `Debug`).
    #[schema(value_type = String, format = Password)]
    pub password: crate::password::Password,
}

fn truncated(s: &str) -> String {
    s.chars().take(MAX_AUDIT_CHARS).collect()
}

/// The address a login is throttled by: an IPv4 address, an IPv6 address's /64, as the visitor limits
/// count. A host given a /64 picks any of its 2^64 addresses; counted one by one, each would start with
/// a clean record.
fn throttle_address(ip: std::net::IpAddr) -> std::net::IpAddr {
    super::client_ip::address_group(ip)
}

/// Logs in: sets the session cookie and answers the user.
#[utoipa::path(post, path = "/login", tag = TAG_AUTH, security(("csrf" = [])), request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = UserBody,
            headers(("Set-Cookie" = String, description = "The session cookie `__Host-relaydesk_session`"))),
        (status = 401, description = "`invalid_credentials`: wrong password, unknown or disabled user (one answer)"),
        (status = 403, description = "`csrf`: no `X-RelayDesk-CSRF: 1`, or a foreign `Origin`"),
        (status = 429, description = "`too_many_attempts`: throttled (see Login throttling in docs/protocol.md)"),
        (status = 503, description = "`busy`: every password-hashing thread is busy"),
    ))]
async fn login(
    State(state): State<SharedState>,
    ClientAddr(ip): ClientAddr,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let LoginRequest { username, password } = req;
    // Counted before the password is verified: parallel attempts cannot overrun the limits. Refusals
    // are audited in aggregate ([`audit_refusals`]), not one record each.
    let attempt = match state.throttle.begin(&username, throttle_address(ip), Instant::now()) {
        Ok(attempt) => attempt,
        Err(locked) => {
            metrics::counter!("relaydesk_logins_total", "result" => "throttled").increment(1);
            return Err(ApiError::too_many(locked.retry_after));
        }
    };
    if !attempt.delay().is_zero() {
        metrics::counter!("relaydesk_logins_delayed_total").increment(1);
        tokio::time::sleep(attempt.delay()).await;
    }

    let lookup = username.clone();
    let creds = state.store.call(move |db| db.credentials(&lookup)).await?;
    // Unknown users verify against a dummy hash so both paths cost one argon2 computation.
    let hash = creds
        .as_ref()
        .map_or_else(|| state.dummy_hash.clone(), |c| c.password_hash.clone());
    let verified = match state.hash_pool.verify(password, hash).await {
        Ok(verified) => verified,
        Err(e) => {
            // Not verified at all (the pool is full or stopped): the attempt proves nothing.
            attempt.release(Instant::now());
            metrics::counter!("relaydesk_logins_total", "result" => "busy").increment(1);
            return Err(e.into());
        }
    };

    let addr = ip.to_string();
    match creds {
        Some(c) if verified && !c.user.disabled => {
            attempt.succeed(Instant::now());
            let token = crate::token::new_session_token().map_err(ApiError::internal)?;
            let token_hash = crate::token::hash_token(&token);
            let user = c.user;
            let (uid, uname) = (user.id, user.username.clone());
            state
                .store
                .call(move |db| {
                    db.create_session(&token_hash, uid, unix_now())?;
                    db.audit(AuditEvent {
                        actor: Some(uname.clone()),
                        action: "login.success".into(),
                        target: Some(uname),
                        client_addr: Some(addr),
                        ..Default::default()
                    })
                })
                .await?;
            metrics::counter!("relaydesk_logins_total", "result" => "success").increment(1);
            tracing::info!(user = user.id, "login succeeded");
            let cookie = format!(
                "{SESSION_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
                state.config.sessions.absolute_timeout_secs
            );
            let mut resp = (StatusCode::OK, Json(json!({ "user": user }))).into_response();
            resp.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        other => {
            attempt.fail(Instant::now());
            let reason = match other {
                None => "unknown user",
                Some(c) if c.user.disabled => "disabled user",
                Some(_) => "wrong password",
            };
            let name = truncated(&username);
            state
                .store
                .call(move |db| {
                    db.audit(AuditEvent {
                        action: "login.failure".into(),
                        target: Some(name),
                        client_addr: Some(addr),
                        detail: Some(reason.into()),
                        ..Default::default()
                    })
                })
                .await?;
            metrics::counter!("relaydesk_logins_total", "result" => "failure").increment(1);
            Err(ApiError::invalid_credentials().with_detail(reason))
        }
    }
}

/// Writes one `login.throttled` audit record per throttle key and lockout: the lockouts ended at `now`,
/// or every pending count when `now` is `None` (at shutdown).
pub(crate) async fn audit_refusals(state: &SharedState, now: Option<Instant>) -> Result<(), ApiError> {
    let refusals = state.throttle.take_refusals(now);
    if refusals.is_empty() {
        return Ok(());
    }
    let events: Vec<AuditEvent> = refusals
        .into_iter()
        .map(|r| {
            let (target, addr) = match r.key {
                ThrottleKey::Pair(account, addr) => (Some(truncated(&account)), addr),
                ThrottleKey::Address(addr) => (None, addr),
            };
            AuditEvent {
                action: "login.throttled".into(),
                target,
                client_addr: Some(addr.to_string()),
                detail: Some(format!("{} attempts refused", r.count)),
                ..Default::default()
            }
        })
        .collect();
    state
        .store
        .call(move |db| events.into_iter().try_for_each(|e| db.audit(e)))
        .await?;
    Ok(())
}

/// Audits ended lockouts every `interval` until shutdown (the server flushes the rest after its
/// connections have ended).
pub(crate) async fn run_refusal_audit(state: SharedState, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    let stopped = state.shutdown.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {
                if let Err(e) = audit_refusals(&state, Some(Instant::now())).await {
                    tracing::warn!(code = e.code(), "throttled logins not audited");
                }
            }
        }
    }
}

/// Ends the session named by the cookie (if any) and clears the cookie. Always 204.
#[utoipa::path(post, path = "/logout", tag = TAG_AUTH, security(("session" = [], "csrf" = []), ("csrf" = [])),
    responses(
        (status = 204, description = "Logged out; the cookie is cleared",
            headers(("Set-Cookie" = String, description = "The session cookie with `Max-Age=0`"))),
        (status = 403, description = "`csrf`: no `X-RelayDesk-CSRF: 1`, or a foreign `Origin`"),
    ))]
async fn logout(
    State(state): State<SharedState>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = session_token(&headers) {
        let token_hash = crate::token::hash_token(&token);
        let addr = ip.to_string();
        let limits = state.config.sessions.limits();
        state
            .store
            .call(move |db| {
                let user = db.touch_session(&token_hash, unix_now(), limits)?;
                db.delete_session(&token_hash)?;
                if let Some(u) = user {
                    db.audit(AuditEvent {
                        actor: Some(u.username.clone()),
                        action: "logout".into(),
                        target: Some(u.username),
                        client_addr: Some(addr),
                        ..Default::default()
                    })?;
                }
                Ok(())
            })
            .await?;
    }
    let clear = format!("{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0");
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear).map_err(ApiError::internal)?,
    );
    Ok(resp)
}

/// The logged-in user.
#[utoipa::path(get, path = "/me", tag = TAG_AUTH, security(("session" = [])),
    responses(
        (status = 200, description = "The session's user", body = UserBody),
        (status = 401, description = "`unauthenticated`: no valid session cookie"),
    ))]
async fn me(auth: AuthUser) -> Json<serde_json::Value> {
    Json(json!({ "user": auth.user }))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Instant;

    use super::throttle_address;
    use crate::throttle::{LoginThrottle, ThrottleConfig};

    #[test]
    fn an_ipv6_network_is_throttled_as_one_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let throttle = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        // Five failures from five addresses of one /64 lock that network out of the account...
        for i in 1..=5 {
            let a = throttle
                .begin("alice", throttle_address(ip(&format!("2001:db8:1:2::{i}"))), now)
                .unwrap();
            a.fail(now);
        }
        let sixth = throttle.begin("alice", throttle_address(ip("2001:db8:1:2:ffff::9")), now);
        assert!(sixth.is_err(), "a sixth address of the same /64 is locked too");
        // ...but not another network, nor an IPv4 client.
        assert!(
            throttle
                .begin("alice", throttle_address(ip("2001:db8:1:3::1")), now)
                .is_ok()
        );
        assert!(throttle.begin("alice", throttle_address(ip("192.0.2.7")), now).is_ok());
        assert_eq!(throttle_address(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
