//! RelayDesk signalling: the HTTPS/WSS API, accounts, tokens, routing, chat with masking and the archive.
//!
//! The media side is reached only through the [`MediaControl`](media::MediaControl) trait this crate
//! defines; this crate never depends on the SFU crates.
//!
//! # Layout
//! - [`config`]: the server [`Config`], its TOML file form and the precedence rules
//!   (flags > environment > file > defaults).
//! - [`store`]: the storage traits (users, groups, sessions, site keys, audit log, archive rows, live
//!   conversations at rest, recording rows) with neutral errors; the SQLite backend [`Db`] (embedded, the
//!   default) and, with the `postgres` feature, a PostgreSQL one; the async [`Store`] for the server.
//! - [`password`], [`token`]: argon2id hashing and opaque random tokens stored as SHA-256 hashes.
//! - [`throttle`]: failed-login throttling with an explicit clock.
//! - [`hash_pool`]: the fixed pool of password-hashing threads (bounded memory and queue).
//! - [`origin`]: validation and normalisation of web origins (`scheme://host[:port]`).
//! - [`app`]: the application's state ([`AppState`](app::AppState)), the composition of everything the
//!   routes share, above both [`http`] and [`live`].
//! - [`http`]: the axum [`router`](http::router), [`ApiError`](http::ApiError) and the extractors the
//!   routes share.
//! - [`live`]: the live conversation layer (visitor and agent sockets, the hub, files in chat).
//! - [`server`]: TLS listener, connection tasks and graceful shutdown ([`Server::start`](server::Server::start)).
//! - [`tls`]: certificate loading and the self-signed default.
//! - [`turn`], [`sni`]: TURN credentials for calls, and TURN over TLS passed to coturn by SNI.

pub mod acme;
pub mod app;
pub mod archive;
pub mod archive_crypto;
pub mod cert_fingerprint;
pub mod chat_protocol;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod first_bytes;
pub mod hash_pool;
pub mod http;
pub mod live;
pub mod live_config;
pub mod live_store;
pub mod masking;
pub mod media;
pub mod origin;
pub mod password;
pub mod recording;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod sni;
pub mod store;
pub mod throttle;
pub mod time;
pub mod tls;
pub mod token;
pub mod turn;
pub mod web;

pub use config::Config;
pub use server::{RunningServer, Server, ServerError, ShutdownHandle, StartOptions};
pub use store::{Db, Store, StoreError};

/// The crate version, reported by `GET /healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
