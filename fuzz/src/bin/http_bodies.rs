//! JSON bodies of every HTTP route that takes one, parsed exactly as the routes' extractor does
//! (`ApiJson` is `axum::Json::from_bytes` after the content-type check), then the checks the handlers
//! apply to parsed values: the origins of a site key (`origin::normalize_origin`) and the page URL of a
//! visitor session (`live::url_origin`).
//!
//! Routes: `POST /api/v1/login` (`LoginRequest`), `POST /api/v1/admin/users` (`CreateUser`),
//! `PATCH /api/v1/admin/users/{id}` (`UpdateUser`), `POST /api/v1/admin/groups` (`CreateGroup`),
//! `POST /api/v1/admin/keys` (`CreateKey`), `POST /api/v1/visitor/session` (`SessionRequest`). The other
//! routes take no JSON body (GET, DELETE, file uploads as raw bytes).
//!
//! Properties: no panic; a normalised origin is a fixed point of `normalize_origin`; the origin of a URL
//! is a normalised origin.
#![no_main]

use axum::Json;
use libfuzzer_sys::fuzz_target;
use relaydesk_signalling::http::admin::{CreateGroup, CreateKey, CreateUser, UpdateUser};
use relaydesk_signalling::http::auth::LoginRequest;
use relaydesk_signalling::live::{SessionRequest, url_origin};
use relaydesk_signalling::origin::normalize_origin;

fn origin(raw: &str) {
    if let Ok(n) = normalize_origin(raw) {
        assert_eq!(
            normalize_origin(&n).as_deref(),
            Ok(n.as_str()),
            "origin not a fixed point"
        );
    }
}

fn page_url(raw: &str) {
    if let Some(o) = url_origin(raw) {
        assert_eq!(
            normalize_origin(&o).as_deref(),
            Ok(o.as_str()),
            "url origin not normalised"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = Json::<LoginRequest>::from_bytes(data);
    let _ = Json::<CreateUser>::from_bytes(data);
    let _ = Json::<UpdateUser>::from_bytes(data);
    let _ = Json::<CreateGroup>::from_bytes(data);
    if let Ok(Json(key)) = Json::<CreateKey>::from_bytes(data) {
        key.origins.iter().for_each(|o| origin(o));
    }
    if let Ok(Json(session)) = Json::<SessionRequest>::from_bytes(data) {
        page_url(&session.page_url);
    }
    // The same checks on the raw text, which reaches them far more often than a well-formed body does.
    if let Some(raw) = relaydesk_fuzz::text(data) {
        origin(raw);
        page_url(raw);
    }
});
