//! The browser clients, embedded in the binary: the customer widget (`/widget.js` and its iframe page
//! `/widget/frame`), the agent console (`/agent`) and the admin pages (`/admin`), with their modules and
//! styles under `/assets/…`.
//!
//! Every page is served with a strict Content-Security-Policy: scripts and styles only from this origin
//! (no inline script or style), connections only to this origin. The console and admin pages may not be
//! framed at all (`frame-ancestors 'none'`); the widget frame may be framed only by the allowed origins of
//! its site key (the same list that feeds the visitor API's CORS check), and by nobody when the key is
//! unknown or revoked.
//!
//! The assets are plain JavaScript modules, HTML and CSS under `web/` in the repository (no build step);
//! they are compiled into the binary with `include_str!`/`include_bytes!`.

use axum::extract::{Query, Request, State};
use axum::handler::Handler as _;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::names::TAG_WEB;
use crate::http::plumbing::{ApiError, ApiPath, ApiQuery};
use crate::live::{SharedLive, VisitorSocketRefusals};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ct:expr) => {
        Asset {
            name: $name,
            content_type: $ct,
            body: include_bytes!(concat!("../../web/assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Everything under `/assets/`.
static ASSETS: &[Asset] = &[
    asset!("widget-frame.js", JS),
    asset!("widget-frame.css", CSS),
    asset!("agent.js", JS),
    asset!("admin.js", JS),
    asset!("console.css", CSS),
    asset!("common.js", JS),
    asset!("call.js", JS),
    asset!("call-ui.js", JS),
];

const WIDGET_JS: &str = include_str!("../../web/widget.js");
const WIDGET_FRAME_HTML: &str = include_str!("../../web/widget-frame.html");
const AGENT_HTML: &str = include_str!("../../web/agent.html");
const ADMIN_HTML: &str = include_str!("../../web/admin.html");

/// The policy of the console and admin pages: nothing inline, nothing foreign, never framed.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The policy of the widget frame without its `frame-ancestors` directive (added per site key).
const FRAME_CSP_BASE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'";

/// The routes of the browser clients (merged into the main router).
pub fn routes() -> OpenApiRouter<SharedLive> {
    OpenApiRouter::new()
        .routes(routes!(widget_js))
        .routes(routes!(widget_frame))
        .routes(routes!(agent_page))
        .routes(routes!(admin_page))
        .routes(routes!(asset))
        .routes(routes!(widget_ws))
}

/// Headers every page shares.
fn page(csp: &str, html: &'static str) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The agent console (HTML; never framed).
#[utoipa::path(get, path = "/agent", tag = TAG_WEB,
    responses((status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8")))]
async fn agent_page() -> Response {
    let mut r = page(CONSOLE_CSP, AGENT_HTML);
    r.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// The admin pages (HTML; never framed).
#[utoipa::path(get, path = "/admin", tag = TAG_WEB,
    responses((status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8")))]
async fn admin_page() -> Response {
    let mut r = page(CONSOLE_CSP, ADMIN_HTML);
    r.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// The host-page loader. Public and cacheable for a short while; it holds no secret.
#[utoipa::path(get, path = "/widget.js", tag = TAG_WEB,
    responses((status = 200, description = "The loader script", body = String, content_type = "text/javascript; charset=utf-8")))]
async fn widget_js() -> Response {
    let mut resp = ([(header::CONTENT_TYPE, JS)], WIDGET_JS).into_response();
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    // Loaded cross-origin by a <script> tag; no credentials are involved.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    resp
}

/// Query of the widget frame.
#[derive(Debug, Deserialize)]
struct FrameQuery {
    /// The site key the host page was configured with.
    key: Option<String>,
}

/// `frame-ancestors` for a site key: its allowed origins, or `'none'` when the key is unknown, revoked or
/// absent. Origins are stored normalised (`scheme://host[:port]`), so they are valid CSP sources.
fn frame_ancestors(origins: Option<&[String]>) -> String {
    match origins {
        Some(list) if !list.is_empty() => {
            let safe: Vec<&str> = list
                .iter()
                .map(String::as_str)
                .filter(|o| o.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b','))
                .collect();
            if safe.is_empty() {
                "frame-ancestors 'none'".to_string()
            } else {
                format!("frame-ancestors {}", safe.join(" "))
            }
        }
        _ => "frame-ancestors 'none'".to_string(),
    }
}

/// The widget's iframe page; its `frame-ancestors` are the allowed origins of the site key (none when the
/// key is unknown, revoked or absent).
#[utoipa::path(get, path = "/widget/frame", tag = TAG_WEB,
    params(("key" = Option<String>, Query, description = "The site key the host page was configured with")),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8"),
        (status = 400, description = "`invalid_input`: a malformed query"),
    ))]
async fn widget_frame(
    State(state): State<SharedLive>,
    ApiQuery(q): ApiQuery<FrameQuery>,
) -> Result<Response, ApiError> {
    let origins = match q.key {
        Some(key) if key.len() <= 64 && key.starts_with("pk_") => {
            match state.store.call(move |db| db.site_key(&key)).await {
                Ok(k) if k.revoked_at.is_none() => Some(k.origins),
                Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        }
        _ => None,
    };
    let csp = format!("{FRAME_CSP_BASE}; {}", frame_ancestors(origins.as_deref()));
    let mut resp = page(&csp, WIDGET_FRAME_HTML);
    // Camera, microphone and screen sharing for calls, only for this origin (the host's iframe `allow` delegates them).
    resp.headers_mut().insert(
        "permissions-policy",
        HeaderValue::from_static(
            "camera=(self), microphone=(self), display-capture=(self), geolocation=(), payment=()",
        ),
    );
    Ok(resp)
}

/// Query of `/widget/ws`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WidgetWsQuery {
    /// The origin of the host page the frame is embedded in (the origin the session token was issued to).
    host: String,
    /// The session token (a new conversation); absent for a resume.
    token: Option<String>,
}

/// `GET /widget/ws?host=ORIGIN[&token=…]`: the visitor socket as opened by the widget frame.
///
/// The frame is a page of this origin, so its socket's `Origin` is this server's own origin, while the
/// session token (and the conversation, for a resume) is bound to the host page's origin. This route accepts
/// only sockets whose `Origin` is this server's own origin (the widget frame; other sites' pages are refused)
/// and hands the upgrade to the handler of `GET /api/v1/visitor/ws` with `Origin` set to the host origin the frame names, so
/// every check of the visitor socket (token bound to that origin, single use, resume origin) applies
/// unchanged. Claiming another host gains nothing: the token only works for the origin it was issued to, and
/// the frame itself can only be embedded by the key's allowed origins (`frame-ancestors`).
#[utoipa::path(get, path = "/widget/ws", tag = TAG_WEB,
    params(
        ("host" = String, Query, description = "The origin of the page the frame is embedded in"),
        ("token" = Option<String>, Query, description = "A session token (a new conversation); absent for a resume"),
        ("Origin" = String, Header, description = "Must be the server's own origin (the widget frame)"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (the visitor socket)"),
        (status = 400, description = "`invalid_input`: a malformed query, host or token"),
        VisitorSocketRefusals,
        (status = 403, description = "`forbidden`: not the server's own `Origin`; then as GET /api/v1/visitor/ws for the host origin"),
    ))]
async fn widget_ws(State(state): State<SharedLive>, mut req: Request) -> Response {
    if !crate::http::plumbing::from_own_origin(&state.config, req.headers()) {
        return ApiError::forbidden("this socket is for the widget frame only").into_response();
    }
    let Ok(Query(q)) = Query::<WidgetWsQuery>::try_from_uri(req.uri()) else {
        return ApiError::invalid("expected ?host=ORIGIN[&token=…]").into_response();
    };
    let Ok(host) = crate::origin::normalize_origin(&q.host) else {
        return ApiError::invalid("host is not an origin").into_response();
    };
    let Ok(host_value) = HeaderValue::from_str(&host) else {
        return ApiError::invalid("host is not an origin").into_response();
    };
    let target = match &q.token {
        Some(t)
            if !t.is_empty()
                && t.len() <= 256
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) =>
        {
            format!("/api/v1/visitor/ws?token={t}")
        }
        Some(_) => return ApiError::invalid("malformed token").into_response(),
        None => "/api/v1/visitor/ws".to_string(),
    };
    let Ok(uri) = target.parse() else {
        return ApiError::internal("visitor socket path").into_response();
    };
    *req.uri_mut() = uri;
    req.headers_mut().insert(header::ORIGIN, host_value);
    // The same request (its upgrade handle and connection info included) goes to the visitor socket handler.
    crate::live::visitor_ws.call(req, state).await
}

/// A module or style sheet of the browser clients.
#[utoipa::path(get, path = "/assets/{name}", tag = TAG_WEB,
    params(("name" = String, Path, description = "The file name, e.g. `agent.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript; charset=utf-8"), (String = "text/css; charset=utf-8"),
        )),
        (status = 400, description = "`invalid_path`: the name is not valid UTF-8"),
        (status = 404, description = "`not_found`: no such asset"),
    ))]
async fn asset(ApiPath(name): ApiPath<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => {
            let mut resp = ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response();
            let h = resp.headers_mut();
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ancestors_lists_allowed_origins_or_none() {
        assert_eq!(frame_ancestors(None), "frame-ancestors 'none'");
        assert_eq!(frame_ancestors(Some(&[])), "frame-ancestors 'none'");
        let list = vec!["https://shop.example".to_string(), "http://127.0.0.1:8080".to_string()];
        assert_eq!(
            frame_ancestors(Some(&list)),
            "frame-ancestors https://shop.example http://127.0.0.1:8080"
        );
        // A value that could inject a directive is dropped.
        let bad = vec!["https://a.example; script-src *".to_string()];
        assert_eq!(frame_ancestors(Some(&bad)), "frame-ancestors 'none'");
    }

    #[test]
    fn every_asset_has_a_type_and_content() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
            assert!(a.content_type == JS || a.content_type == CSS, "{}", a.name);
        }
    }
}
