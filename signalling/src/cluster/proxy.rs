//! A standby's forwarding: every request its clients send (WebSockets included) goes to the leader, over
//! TLS pinned to the certificate fingerprint the leader published with its lease. `/metrics` stays the
//! node's own.
//!
//! Why forward whole HTTP requests and sockets, not frames over Redis: the leader already checks every
//! input of a client (origin, tokens, cookies, rate limits, frame sizes) on the connection it sees, and a
//! byte stream keeps each socket's order and backpressure end to end; Redis pub/sub drops what a slow
//! subscriber misses, and streams would have to be trimmed and acknowledged per socket. Redis carries what
//! must be shared and short-lived: who leads, where it listens, which nodes are up.
//!
//! The client's address reaches the leader in `X-Forwarded-For` (appended to what the client sent); the
//! leader believes it only from addresses in its `http.trusted_proxies`, so the nodes' own addresses belong
//! there. One upstream connection per request: simple, and a WebSocket keeps its connection anyway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use super::ClusterConfig;
use crate::http::ApiError;

/// Bound of reaching the leader (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What every forwarded request shares.
pub(crate) struct Forwarder {
    pub(crate) config: ClusterConfig,
    pub(crate) redis: redis::aio::ConnectionManager,
    pub(crate) metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Tunnels (upgraded sockets) end when this turns true.
    pub(crate) stop: watch::Receiver<bool>,
    /// The TLS client configuration pinned to the leader's fingerprint, built once per fingerprint rather
    /// than for every forwarded request.
    pub(crate) pinned: std::sync::Mutex<Option<(String, Arc<rustls::ClientConfig>)>>,
}

fn unavailable(message: &str) -> Response<Body> {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        .with_retry_after(Duration::from_secs(1))
        .into_response()
}

fn count(outcome: &'static str) {
    metrics::counter!("relaydesk_cluster_forwarded_total", "outcome" => outcome).increment(1);
}

impl Forwarder {
    /// Answers one request of a client at `peer`.
    pub(crate) async fn handle(self: Arc<Self>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if req.uri().path() == "/metrics" {
            let mut resp = Response::new(Body::from(self.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return resp;
        }
        let leader = match super::lease::current(&mut self.redis.clone(), &self.config).await {
            Ok(l) => l,
            Err(e) => {
                count("no_registry");
                tracing::warn!(error = %e, "cannot read the leader lease");
                return unavailable("the cluster's registry is unreachable; try again shortly");
            }
        };
        let Some((listen, fingerprint)) = leader.as_ref().and_then(|l| l.target()) else {
            count("no_leader");
            return unavailable("no node serves conversations yet; try again shortly");
        };
        let upstream = match self.connect(listen, fingerprint).await {
            Ok(s) => s,
            Err(e) => {
                count("leader_unreachable");
                tracing::warn!(leader = %listen, error = %e, "cannot reach the leader");
                return unavailable("the serving node is unreachable; try again shortly");
            }
        };
        let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(pair) => pair,
            Err(e) => {
                count("leader_unreachable");
                tracing::warn!(error = %e, "HTTP with the leader failed");
                return unavailable("the serving node is unreachable; try again shortly");
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "connection to the leader ended with an error");
            }
        });
        // The client's side of an upgrade, taken before the request goes on.
        let downstream = req
            .headers()
            .contains_key(header::UPGRADE)
            .then(|| hyper::upgrade::on(&mut req));
        let forwarded = match req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(before) => format!("{before}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        match HeaderValue::from_str(&forwarded) {
            Ok(v) => {
                req.headers_mut().insert("x-forwarded-for", v);
            }
            Err(_) => {
                count("bad_request");
                return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "malformed X-Forwarded-For")
                    .into_response();
            }
        }
        let mut resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                count("leader_failed");
                tracing::warn!(error = %e, "the leader did not answer");
                return unavailable("the serving node did not answer; try again shortly");
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(downstream) = downstream
        {
            let upstream = hyper::upgrade::on(&mut resp);
            let mut stop = self.stop.clone();
            tokio::spawn(async move {
                let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
                    return;
                };
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                    () = crate::shutdown::stopped(&mut stop) => {}
                }
            });
            count("upgraded");
        } else {
            count("forwarded");
        }
        resp.map(Body::new)
    }
}

impl Forwarder {
    /// The TLS client configuration trusting exactly `fingerprint` (cached for the current leader).
    fn pinned(&self, fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, std::io::Error> {
        let mut cached = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((fp, config)) = cached.as_ref()
            && fp == fingerprint
        {
            return Ok(Arc::clone(config));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprint: fingerprint.to_owned(),
                provider,
            }))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        *cached = Some((fingerprint.to_owned(), Arc::clone(&config)));
        Ok(config)
    }

    /// TCP and TLS to `listen`, the certificate pinned to `fingerprint`.
    async fn connect(
        &self,
        listen: &str,
        fingerprint: &str,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
        let connector = tokio_rustls::TlsConnector::from(self.pinned(fingerprint)?);
        // The name is not checked (the fingerprint is); it only has to be well-formed.
        let name = ServerName::try_from("relaydesk-leader").map_err(std::io::Error::other)?;
        let connecting = async {
            let tcp = tokio::net::TcpStream::connect(listen).await?;
            let _ = tcp.set_nodelay(true);
            connector.connect(name, tcp).await
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// Trusts exactly one certificate: the one whose SHA-256 fingerprint the leader published.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = crate::cert_fingerprint::fingerprint(end_entity.as_ref());
        if bool::from(subtle::ConstantTimeEq::ct_eq(
            seen.as_bytes(),
            self.fingerprint.as_bytes(),
        )) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
