//! The application's state: the composition of everything the routes share. It sits above both the HTTP
//! plumbing ([`crate::http::plumbing`]) and the live layer ([`crate::live`]), which never name it: each takes
//! only its part, the extractors an [`AuthState`] through [`FromRef`], the live routes a [`SharedLive`].

use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::http::plumbing::AuthState;
use crate::live::SharedLive;
use crate::shutdown::ShutdownHandle;
use crate::store::Store;
use crate::throttle::LoginThrottle;

/// State shared by every request of the HTTP API's own routes (auth, admin, transcripts, recordings,
/// health and metrics).
#[derive(Debug)]
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The store.
    pub store: Store,
    /// Failed-login throttle.
    pub throttle: LoginThrottle,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The fixed pool that hashes and verifies passwords (each argon2 run takes 19 MiB and a core for
    /// tens of milliseconds).
    pub hash_pool: Arc<crate::hash_pool::HashPool>,
    /// Hash verified for unknown usernames, so they cost as much as known ones.
    pub dummy_hash: String,
    /// The server's shutdown signal. Long-lived tasks that outlive their HTTP request (WebSocket
    /// sessions) must end when [`ShutdownHandle::stopped`] resolves; the server does not track them.
    pub shutdown: ShutdownHandle,
    /// The encrypted transcript archive; the live layer stores ended conversations here.
    pub archive: Arc<crate::archive::Archive>,
    /// The live layer's state (visitor tokens, the hub's command channel, media and archive seams, TURN);
    /// the state of the live routes and the web clients' routes.
    pub live: SharedLive,
}

impl AppState {
    /// The state over the live layer's `live` (whose configuration, store, archive and shutdown signal it
    /// shares); `dummy_hash` is a hash of a random password made by `hash_pool`.
    pub fn new(
        live: SharedLive,
        metrics: PrometheusHandle,
        (hash_pool, dummy_hash): (Arc<crate::hash_pool::HashPool>, String),
    ) -> Self {
        Self {
            throttle: LoginThrottle::new(live.config.login_throttle.clone()),
            config: Arc::clone(&live.config),
            store: live.store.clone(),
            metrics,
            hash_pool,
            dummy_hash,
            shutdown: live.shutdown.clone(),
            archive: Arc::clone(&live.archive),
            live,
        }
    }
}

/// Shared state handle.
pub type SharedState = Arc<AppState>;

impl FromRef<SharedState> for AuthState {
    fn from_ref(state: &SharedState) -> Self {
        AuthState::from_ref(&state.live)
    }
}
