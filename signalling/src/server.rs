//! The server: opens the store, bootstraps the first admin, loads TLS, binds and serves.
//!
//! Call order: [`Server::start`] returns a [`RunningServer`] once the listener is bound (so its
//! [`local_addr`](RunningServer::local_addr) is known, also with port 0). Stop it with
//! [`RunningServer::shutdown`], or trigger a [`ShutdownHandle`] from elsewhere (a signal handler) and
//! await [`RunningServer::wait`]. Shutdown stops accepting, asks every connection to finish its current
//! request, and closes whatever is still open after `http.shutdown_grace_secs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::app::{AppState, SharedState};
use crate::config::{Config, ConfigError};
use crate::hash_pool::HashPool;
use crate::live::LiveState;
use crate::password::PasswordError;
pub use crate::shutdown::ShutdownHandle;
use crate::shutdown::stopped;
use crate::store::{AuditEvent, NewUser, Role, Storage, Store, StoreError, UserUpdate};
use crate::tls::TlsError;

mod classify;

pub use classify::ice_tcp_candidate;
use classify::{FirstBytes, Refusal, first_bytes, hand_over_ice_tcp, refuse, serve_ice_tcp};

/// How often ended login lockouts are written to the audit log (one record per key and lockout).
const REFUSAL_AUDIT_INTERVAL: Duration = Duration::from_secs(5);

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS material could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin password file is unusable.
    #[error("admin password file {path}: {message}")]
    AdminPasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Password hashing failed.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The transcript archive (master key) could not be opened.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// The cluster registry could not be joined.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A background task failed.
    #[error("server task failed: {0}")]
    Task(String),
    /// The password-hashing pool could not be started.
    #[error(transparent)]
    HashPool(#[from] crate::hash_pool::HashPoolError),
    /// The TURN shared secret could not be loaded.
    #[error(transparent)]
    Turn(#[from] crate::turn::TurnError),
}

/// How the first admin was created at this start.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminBootstrap {
    /// User `admin` was created with this generated password; show it once, never log it.
    Generated(String),
    /// User `admin` was created with the password from the configured file.
    FromFile,
}

impl std::fmt::Debug for AdminBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminBootstrap::Generated(_) => f.write_str("Generated(<redacted>)"),
            AdminBootstrap::FromFile => f.write_str("FromFile"),
        }
    }
}

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    fingerprint: String,
    cert_path: PathBuf,
    admin_bootstrap: Option<AdminBootstrap>,
    state: SharedState,
    shutdown: ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `https://ADDR` of the listener.
    pub fn url(&self) -> String {
        format!("https://{}", self.local_addr)
    }

    /// SHA-256 fingerprint of the TLS certificate (`AB:CD:…`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The PEM certificate file in use (the generated one, or the operator's).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Set if this start created the first admin.
    pub fn admin_bootstrap(&self) -> Option<&AdminBootstrap> {
        self.admin_bootstrap.as_ref()
    }

    /// The shared state (store, config, throttle).
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped (after a shutdown was triggered).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await.map_err(|e| ServerError::Task(e.to_string()))
    }

    /// Triggers a shutdown and waits for it (bounded by the shutdown grace period).
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.shutdown.shutdown();
        self.wait().await
    }
}

/// Extra routes built from the shared state and merged into the router (see [`crate::http::router_with`]).
pub type ExtraRoutes = Box<dyn FnOnce(&SharedState) -> axum::Router<SharedState> + Send>;

/// What [`Server::start_with`] is given besides the configuration. The default: no media side (calls get
/// `media_unavailable`), ended conversations go to the archive only, no extra routes.
#[derive(Default)]
pub struct StartOptions {
    /// The live layer's parts: the media side with its events, an extra sink of ended conversations.
    pub live: crate::live::LiveParts,
    /// Extra routes; their paths must not collide with the built-in ones.
    pub routes: Option<ExtraRoutes>,
    /// In a cluster: the registration this node already holds (a standby that took the leader lease);
    /// without one, the server claims its id itself.
    pub registration: Option<crate::cluster::Registration>,
}

impl StartOptions {
    /// With the live layer's `parts`.
    pub fn live(mut self, parts: crate::live::LiveParts) -> Self {
        self.live = parts;
        self
    }

    /// With extra routes built by `f` from the shared state.
    pub fn routes<F>(mut self, f: F) -> Self
    where
        F: FnOnce(&SharedState) -> axum::Router<SharedState> + Send + 'static,
    {
        self.routes = Some(Box::new(f));
        self
    }
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("live", &self.live)
            .field("routes", &self.routes.is_some())
            .field("registration", &self.registration)
            .finish()
    }
}

/// Entry point; see the module documentation.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Opens the store in `config.data_dir` (migrating it), creates the first admin if none exists,
    /// loads or generates the TLS certificate, binds `config.listen` and starts serving.
    pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
        Self::start_with(config, StartOptions::default()).await
    }

    /// Like [`Server::start`], with `options`: the live layer's parts (the media side with its events, an
    /// extra sink of ended conversations) and extra routes. The binary's wiring and tests use this.
    pub async fn start_with(config: Config, options: StartOptions) -> Result<RunningServer, ServerError> {
        let StartOptions {
            live: parts,
            routes: extra,
            registration: held,
        } = options;
        let config = config.validate()?;
        let setup_config = config.clone();
        let t = &config.login_throttle;
        let hash_pool = Arc::new(HashPool::start(t.hash_threads, t.hash_queue)?);
        let pool = Arc::clone(&hash_pool);
        let (db, bootstrap, mut tls, dummy_hash) = tokio::task::spawn_blocking(move || {
            let c = setup_config;
            let db = crate::store::open(&c.database, &c.data_dir)?;
            db.claim_node()?;
            let bootstrap = bootstrap_admin(db.as_ref(), c.admin_password_file.as_deref(), &pool)?;
            let tls = crate::tls::load(&c)?;
            let random = crate::token::new_password().map_err(|e| ServerError::Task(e.to_string()))?;
            let dummy = pool.hash_blocking(random)?;
            Ok::<_, ServerError>((db, bootstrap, tls, dummy))
        })
        .await
        .map_err(|e| ServerError::Task(e.to_string()))??;

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        // The dedicated ICE-TCP port, when configured: bound now so a bad address fails the start.
        let media_listener = match config
            .media
            .tcp_listen
            .filter(|_| config.media.enabled && config.media.ice_tcp)
        {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?;
                let bound = l.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
                Some((l, bound))
            }
            None => None,
        };
        // Joins the cluster's registry, if configured, before anything is served: a node whose id is taken
        // does not start.
        let media_address = config
            .media
            .enabled
            .then(|| config.media.announce_ip.unwrap_or(config.media.bind_ip).to_string());
        let registration = match (held, &config.cluster.redis_url) {
            (Some(mut r), _) => {
                r.lead(config.cluster.advertised(local_addr), media_address);
                Some(r)
            }
            (None, Some(_)) => {
                let record = crate::cluster::NodeRecord::new(
                    config.cluster.resolved_node_id(),
                    config.cluster.advertised(local_addr),
                    config.public_origin.clone(),
                    media_address,
                );
                Some(crate::cluster::Registration::claim(&config.cluster, record).await?)
            }
            (None, None) => None,
        };
        let shutdown = ShutdownHandle::new();
        let store = Store::from_arc(db);
        let key_source =
            crate::archive::KeySource::resolve(config.archive.master_key_file.as_deref(), &config.data_dir, |k| {
                std::env::var(k).ok()
            });
        let archive = Arc::new(crate::archive::Archive::open(store.clone(), key_source).await?);
        let turn = crate::turn::TurnService::load(&config.turn).await?.map(Arc::new);
        let live = LiveState::new(Arc::new(config), store, Arc::clone(&archive), shutdown.clone(), turn);
        let state = Arc::new(AppState::new(
            Arc::new(live),
            crate::http::metrics_handle(),
            (hash_pool, dummy_hash),
        ));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server_config));
        let extra = extra.map_or_else(axum::Router::new, |f| f(&state));
        let router = crate::http::router_with(Arc::clone(&state), extra);
        let media_events = state.live.live.install(
            parts,
            Arc::clone(&state.archive) as Arc<dyn crate::live::ConversationSink>,
        );
        let hub = crate::live::spawn_hub(&state.live, media_events);
        // Answers name the TCP candidate from the first call on: set before anything is accepted.
        if let Some(media) = state.live.live.media() {
            let candidate = ice_tcp_candidate(&state.config.media, local_addr, media_listener.as_ref().map(|m| m.1));
            match media.set_tcp_candidate(candidate).await {
                Ok(()) => tracing::info!(candidate = ?candidate, "ICE-TCP candidate"),
                Err(e) => tracing::warn!(error = %e, "ICE-TCP candidate not set; media over UDP only"),
            }
        }
        if let Some((l, bound)) = media_listener {
            tracing::info!(addr = %bound, "listening for ICE-TCP");
            tokio::spawn(serve_ice_tcp(l, Arc::clone(&state.live), shutdown.clone()));
        }
        let heartbeat = registration.map(|r| {
            let live = Arc::clone(&state.live);
            tokio::spawn(r.run(
                move || {
                    let (open, queued) = live.live.conversation_counts();
                    crate::cluster::Load {
                        conversations: open as u64,
                        queued: queued as u64,
                    }
                },
                shutdown.clone(),
            ))
        });
        let serving = serve(listener, acceptor, router, Arc::clone(&state), shutdown.clone());
        let flush_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            serving.await;
            // Throttled logins still counted (running lockouts) reach the audit log before the end.
            if let Err(e) = crate::http::auth::audit_refusals(&flush_state, None).await {
                tracing::warn!(code = e.code(), "throttled logins not audited at shutdown");
            }
            // The hub ends every live conversation (and hands it to the archive) on shutdown.
            if let Some(hub) = hub {
                let _ = hub.await;
            }
            // Leaves the registry last: the node counted until its conversations were handed over.
            if let Some(heartbeat) = heartbeat {
                let _ = heartbeat.await;
            }
        });
        if let Some(acme) = tls.acme.take() {
            // After the bind: the authority's validation connects to this listener.
            tokio::spawn(acme.run(shutdown.stopped()));
        }
        tokio::spawn(purge_sessions(Arc::clone(&state), shutdown.clone()));
        tokio::spawn(crate::http::auth::run_refusal_audit(
            Arc::clone(&state),
            REFUSAL_AUDIT_INTERVAL,
        ));
        tokio::spawn(archive.as_ref().clone().run_retention(
            state.config.archive.retention_days,
            Duration::from_secs(state.config.archive.purge_interval_secs),
            shutdown.clone(),
        ));
        tracing::info!(addr = %local_addr, fingerprint = %tls.fingerprint, "listening");
        Ok(RunningServer {
            local_addr,
            fingerprint: tls.fingerprint,
            cert_path: tls.cert_path,
            admin_bootstrap: bootstrap,
            state,
            shutdown,
            task,
        })
    }
}

/// Creates (or repairs) user `admin` when no enabled admin exists, hashing its password on `pool`.
pub fn bootstrap_admin(
    db: &dyn Storage,
    password_file: Option<&Path>,
    pool: &HashPool,
) -> Result<Option<AdminBootstrap>, ServerError> {
    if db.has_admin()? {
        return Ok(None);
    }
    let (password, how) = match password_file {
        Some(path) => {
            let err = |message: String| ServerError::AdminPasswordFile {
                path: path.to_path_buf(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let pw = text.trim_end_matches(['\n', '\r']).to_string();
            crate::password::check_policy(&pw).map_err(|e| err(e.to_string()))?;
            (pw, AdminBootstrap::FromFile)
        }
        None => {
            let pw = crate::token::new_password().map_err(|e| ServerError::Task(e.to_string()))?;
            (pw.clone(), AdminBootstrap::Generated(pw))
        }
    };
    let password_hash = pool.hash_blocking(password.clone())?;
    let audit = AuditEvent {
        actor: Some("system".into()),
        action: "admin.bootstrap".into(),
        target: Some("admin".into()),
        ..Default::default()
    };
    if db.user_exists("admin")? {
        let id = db.user_by_name("admin")?.id;
        let update = UserUpdate {
            role: Some(Role::Admin),
            disabled: Some(false),
            password_hash: Some(password_hash),
            ..Default::default()
        };
        db.update_user(id, update, audit)?;
    } else {
        let new = NewUser {
            username: "admin".into(),
            display_name: "Administrator".into(),
            role: Role::Admin,
            groups: Vec::new(),
            max_conversations: 4,
            password_hash,
        };
        match db.create_user(new, audit) {
            Ok(_) => {}
            // Another node sharing the database created it meanwhile (and printed its password).
            Err(StoreError::Duplicate { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!("created the first admin user `admin`");
    Ok(Some(how))
}

async fn purge_sessions(state: SharedState, shutdown: ShutdownHandle) {
    let mut rx = shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = stopped(&mut rx) => return,
            _ = tick.tick() => {
                let limits = state.config.sessions.limits();
                match state.store.call(move |db| db.purge_sessions(crate::time::unix_now(), limits)).await {
                    Ok(n) if n > 0 => tracing::debug!(purged = n, "expired sessions removed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "session purge failed"),
                }
            }
        }
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    state: SharedState,
    shutdown: ShutdownHandle,
) {
    let http = &state.config.http;
    let handshake_timeout = Duration::from_secs(http.handshake_timeout_secs);
    let header_timeout = Duration::from_secs(http.header_timeout_secs);
    let grace = Duration::from_secs(http.shutdown_grace_secs);
    let mut stop = shutdown.subscribe();
    let mut conns = JoinSet::new();
    // At most `max_connections`, and per client address (IPv6: per /64) so that one address cannot take every
    // slot; trusted proxies (which carry many clients) are not counted per address.
    let gate = crate::live::limits::ConnectionGate::new(http);
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            // Reap finished connections while waiting.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // At a limit a new connection is closed at once (before TLS), not left waiting in the listen
                // queue: the client learns straight away, and the server takes connections again as soon as
                // one ends.
                let Some(admitted) = gate.admit(peer) else {
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let conn = connection(
                    tcp,
                    peer,
                    acceptor.clone(),
                    router.clone(),
                    Arc::clone(&state),
                    shutdown.subscribe(),
                    handshake_timeout,
                    header_timeout,
                );
                conns.spawn(async move {
                    conn.await;
                    drop(admitted);
                });
            }
            Err(e) => {
                // Typically EMFILE; back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracing::info!(open = conns.len(), "shutting down: draining connections");
    let drained = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "shutdown grace period over; closing remaining connections"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    tracing::info!("server stopped");
}

/// One connection on the public port: its first bytes decide what it is ([`first_bytes`]); a TLS
/// ClientHello goes on to HTTPS and WebSockets ([`serve_tls`]), an ICE-TCP connection to the media side
/// ([`hand_over_ice_tcp`]), anything else is closed and counted.
#[allow(clippy::too_many_arguments)]
async fn connection(
    mut tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    state: SharedState,
    mut stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
    header_timeout: Duration,
) {
    // One bound covers the first bytes and the TLS handshake: a half ClientHello is cut at the same time as
    // silence.
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    let kind = tokio::select! {
        _ = stopped(&mut stop) => return,
        r = tokio::time::timeout_at(deadline, first_bytes(&mut tcp)) => match r {
            Ok(r) => r,
            Err(_) => Err(Refusal::FirstBytesTimeout),
        },
    };
    match kind {
        Ok(FirstBytes::Tls) => {
            let Some(tcp) = unless_turn(tcp, peer, state.live.turn.clone(), deadline, &mut stop).await else {
                return;
            };
            serve_tls(tcp, peer, acceptor, router, stop, deadline, header_timeout).await
        }
        Ok(FirstBytes::IceTcp(frame)) => hand_over_ice_tcp(tcp, peer, frame, &state.live).await,
        Err(refusal) => refuse(peer, refusal),
    }
}

/// TURN over TLS shares this port: a ClientHello naming `[turn] tls_host` goes to coturn, bytes untouched,
/// and a ClientHello that never completes is closed (`None` for both: the connection is done); anything
/// else is given back, nothing consumed, for HTTPS.
async fn unless_turn(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    turn: Option<Arc<crate::turn::TurnService>>,
    deadline: tokio::time::Instant,
    stop: &mut watch::Receiver<bool>,
) -> Option<tokio::net::TcpStream> {
    let Some(turn) = turn.filter(|t| t.passes_tls()) else {
        return Some(tcp);
    };
    let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
    match turn.claims(&tcp, wait).await {
        crate::turn::Claim::Turn => {
            // Reaching coturn (on loopback) is bounded by what is left of the handshake time, at least 1 s.
            let connect = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_secs(1));
            turn.pass_through(tcp, peer, connect, stopped(stop)).await;
            None
        }
        crate::turn::Claim::Stalled => {
            metrics::counter!("relaydesk_connections_refused_total", "reason" => "tls_handshake_timeout").increment(1);
            tracing::debug!(%peer, "TLS handshake timed out (no complete ClientHello)");
            None
        }
        crate::turn::Claim::Other => Some(tcp),
    }
}

/// HTTPS and WebSockets on a connection that starts with a TLS ClientHello; the handshake must end by
/// `deadline`.
async fn serve_tls(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
    header_timeout: Duration,
) {
    let tls = tokio::select! {
        _ = stopped(&mut stop) => return,
        r = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                metrics::counter!("relaydesk_connections_refused_total", "reason" => "tls_handshake_failed").increment(1);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics::counter!("relaydesk_connections_refused_total", "reason" => "tls_handshake_timeout").increment(1);
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    if tls.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was the answer (RFC 8737); nothing is served on it.
        return;
    }
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(Body::new))
    });
    // HTTP/1.1 only (the TLS configuration offers only `http/1.1` by ALPN). The header timeout runs from the
    // connection's start and again whenever it waits for a next request, so a connection that completed TLS
    // and sends nothing, or sits idle between requests, is closed after `header_timeout`. (The
    // version-detecting builder would first wait for a preface without any timeout.)
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
