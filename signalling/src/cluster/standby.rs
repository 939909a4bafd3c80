//! A node of a cluster that does not hold the leader lease: a standby.
//!
//! It listens where the leader would (`listen`, the same TLS certificate it will serve with) and forwards
//! every client to the leader (`proxy`), so a load balancer may send anyone to any node. It is in the
//! registry as `standby`. Every heartbeat it reads the lease; when the lease has been absent at two reads
//! in a row (the leader died and its lease expired, or it stopped), it takes it, stops forwarding (the
//! sockets it carried to the dead leader are gone anyway; their clients reconnect) and hands the lease to
//! the caller, which then starts the full server on the same port and publishes it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::lease::{self, HeldLease, Lease};
use super::proxy::Forwarder;
use super::{ClusterError, Load, NodeRecord, NodeRole, Registration};
use crate::config::Config;
use crate::shutdown::{ShutdownHandle, stopped};

/// Errors of the standby phase.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StandbyError {
    /// Redis could not be reached, or this node's id is taken.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The TLS certificate could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A task failed.
    #[error("standby task failed: {0}")]
    Task(String),
}

/// How the standby phase ended.
#[derive(Debug)]
pub enum StandbyEnd {
    /// This node holds the leader lease now (renewed by a task of its own): start serving on `local` (the
    /// address the standby had, free again), then publish.
    Leader {
        /// The lease.
        lease: HeldLease,
        /// The address the standby listened on.
        local: SocketAddr,
        /// This node's registry record, kept: give it to the server ([`crate::StartOptions`]).
        registration: Box<Registration>,
    },
    /// `stop` resolved first.
    Stopped,
}

/// Runs this node as a standby until it takes the leader lease or `stop` resolves. With nobody holding
/// the lease at all (the first node of a cluster), it takes it at the second read, one heartbeat after
/// the start.
///
/// # Errors
/// Redis unreachable at the start, the node id taken, the certificate or the listen address unusable.
pub async fn run(
    config: &Config,
    on_listening: impl FnOnce(SocketAddr, &str),
    stop: impl Future<Output = ()>,
) -> Result<StandbyEnd, StandbyError> {
    let cluster = &config.cluster;
    let redis = super::connect(cluster).await?;
    let id = cluster.resolved_node_id();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StandbyError::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| StandbyError::Bind {
        addr: config.listen,
        source,
    })?;
    let tls_config = config.clone();
    let mut tls = tokio::task::spawn_blocking(move || crate::tls::load(&tls_config))
        .await
        .map_err(|e| StandbyError::Task(e.to_string()))??;
    let mut record = NodeRecord::new(
        id.clone(),
        cluster.advertised(local),
        config.public_origin.clone(),
        None,
    );
    record.role = NodeRole::Standby;
    let registration = Registration::claim(cluster, record).await?;
    let registered = ShutdownHandle::new();
    let heartbeat = tokio::spawn(registration.beat_until(Load::default, registered.clone()));

    let forwarding = ShutdownHandle::new();
    let forwarder = Arc::new(Forwarder {
        config: cluster.clone(),
        redis: redis.clone(),
        metrics: crate::http::metrics_handle(),
        stop: forwarding.subscribe(),
        pinned: std::sync::Mutex::new(None),
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server_config));
    let serving = tokio::spawn(serve(listener, acceptor, forwarder, config.clone(), forwarding.clone()));
    if let Some(acme) = tls.acme.take() {
        tokio::spawn(acme.run(forwarding.stopped()));
    }
    tracing::info!(node = %id, addr = %local, "standby: forwarding clients to the leader");
    on_listening(local, &tls.fingerprint);
    metrics::gauge!("relaydesk_cluster_leader").set(0.0);

    let lease = watch_lease(config, redis, &id, stop).await;
    forwarding.shutdown();
    let _ = serving.await;
    registered.shutdown();
    let registration = heartbeat.await.map_err(|e| StandbyError::Task(e.to_string()))?;
    match lease {
        Some(lease) => Ok(StandbyEnd::Leader {
            lease,
            local,
            registration: Box::new(registration),
        }),
        None => {
            registration.run(Load::default, stopped_handle()).await;
            Ok(StandbyEnd::Stopped)
        }
    }
}

/// A handle already triggered: [`Registration::run`] then only deregisters.
fn stopped_handle() -> ShutdownHandle {
    let h = ShutdownHandle::new();
    h.shutdown();
    h
}

/// Reads the lease every heartbeat; takes it once it was absent at two reads in a row (for `ttl_ms` after
/// a read failed).
async fn watch_lease(
    config: &Config,
    mut redis: redis::aio::ConnectionManager,
    id: &str,
    stop: impl Future<Output = ()>,
) -> Option<HeldLease> {
    let cluster = &config.cluster;
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(cluster.heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when the lease has been absent at every read (None: present at the last one).
    let mut absent_since: Option<tokio::time::Instant> = None;
    // After Redis was unreachable, it may have come back empty with the leader alive: the lease must then
    // stay absent for a whole time to live (the leader renews it within a heartbeat of reconnecting).
    let mut after_outage = false;
    loop {
        tokio::select! {
            () = &mut stop => return None,
            _ = tick.tick() => {}
        }
        match lease::current(&mut redis, cluster).await {
            Ok(Some(_)) => {
                absent_since = None;
                after_outage = false;
            }
            Ok(None) => {
                let now = tokio::time::Instant::now();
                let since = *absent_since.get_or_insert(now);
                let wait = if after_outage {
                    Duration::from_millis(cluster.ttl_ms)
                } else {
                    // Two reads in a row.
                    Duration::from_millis(1)
                };
                if since == now || now.duration_since(since) < wait {
                    continue;
                }
                match Lease::try_acquire(cluster, redis.clone(), id).await {
                    Ok(Some(lease)) => {
                        tracing::info!(node = %id, "took the leader lease");
                        return Some(lease.hold());
                    }
                    Ok(None) => absent_since = None,
                    Err(e) => tracing::warn!(error = %e, "could not take the leader lease"),
                }
            }
            Err(e) => {
                absent_since = None;
                after_outage = true;
                tracing::warn!(error = %e, "cannot read the leader lease");
            }
        }
    }
}

/// Accepts clients and forwards them until `shutdown`; then closes every connection at once (what they
/// were forwarded to is gone or about to be replaced).
async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    forwarder: Arc<Forwarder>,
    config: Config,
    shutdown: ShutdownHandle,
) {
    let http = &config.http;
    let handshake_timeout = Duration::from_secs(http.handshake_timeout_secs);
    let header_timeout = Duration::from_secs(http.header_timeout_secs);
    let gate = crate::live::limits::ConnectionGate::new(http);
    let mut stop = shutdown.subscribe();
    let mut conns = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The same limits as the server's listener: forwarded connections reach the leader from this node's
        // address, which the leader trusts, so per-client limits must hold here.
        let Some(admitted) = gate.admit(peer) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let forwarder = Arc::clone(&forwarder);
        conns.spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await else {
                metrics::counter!("relaydesk_connections_refused_total", "reason" => "tls_handshake_failed")
                    .increment(1);
                return;
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let forwarder = Arc::clone(&forwarder);
                async move { Ok::<_, std::convert::Infallible>(forwarder.handle(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "forwarded connection ended with an error");
            }
            drop(admitted);
        });
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}
