//! The names the HTTP API shares: the session cookie, the CSRF header and the OpenAPI tags. A leaf: it
//! imports nothing of the crate, so the route modules, the live layer and the description can all name them.

/// Name of the agent session cookie. The `__Host-` prefix makes browsers accept it only from this origin
/// over HTTPS with `Path=/` and no `Domain`: a sibling subdomain cannot plant or overwrite it.
pub const SESSION_COOKIE: &str = "__Host-relaydesk_session";
/// Header every cookie-authenticated state-changing request must carry (value `1`).
pub const CSRF_HEADER: &str = "x-relaydesk-csrf";

/// Tag of `/healthz`, `/metrics` and the OpenAPI description.
pub const TAG_OPERATIONS: &str = "operations";
/// Tag of `/api/v1/auth/*`.
pub const TAG_AUTH: &str = "auth";
/// Tag of `/api/v1/admin/*` (users, groups, site keys, transcripts).
pub const TAG_ADMIN: &str = "admin";
/// Tag of the visitor's session, socket and files.
pub const TAG_VISITOR: &str = "visitor";
/// Tag of the agent's socket and files.
pub const TAG_AGENT: &str = "agent";
/// Tag of the browser clients' pages and assets.
pub const TAG_WEB: &str = "web";
