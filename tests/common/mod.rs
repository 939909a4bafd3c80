//! Shared helpers for the integration tests: an in-process server on 127.0.0.1:0 with a temporary data
//! directory, and a small HTTPS client (hyper over rustls) that trusts exactly the server's certificate.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use hyper::http::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use relaydesk_signalling::config::Config;
use relaydesk_signalling::server::AdminBootstrap;
use relaydesk_signalling::{RunningServer, Server};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

pub mod netns;
pub mod pg;
pub mod process;
pub mod redis;

/// Upper bound for any single network operation in tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A test server with its data directory.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub admin_password: String,
}

/// Config for a test server in `dir` on an ephemeral port.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    c.http.shutdown_grace_secs = 5;
    c
}

impl TestServer {
    /// Starts a fresh server in a new temporary directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a fresh server whose test config `change` adjusts first.
    pub async fn start_with(change: impl FnOnce(&mut Config)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut config = test_config(&dir);
        change(&mut config);
        let server = Server::start(config).await.unwrap();
        let admin_password = match server.admin_bootstrap() {
            Some(AdminBootstrap::Generated(p)) => p.clone(),
            other => panic!("expected a generated admin password, got {other:?}"),
        };
        TestServer {
            server: Some(server),
            dir,
            _tmp: Some(tmp),
            admin_password,
        }
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.running().local_addr()
    }

    /// A new client (own cookie jar) for this server.
    pub fn client(&self) -> Client {
        Client::new(self.addr(), &self.dir.join("tls/cert.pem"))
    }

    /// A client logged in as the bootstrap admin.
    pub async fn admin(&self) -> Client {
        let c = self.client();
        let r = c.login("admin", &self.admin_password).await;
        assert_eq!(r.status, 200, "{}", r.text());
        c
    }

    /// Stops the server (bounded) and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = Server::start(test_config(&self.dir)).await.unwrap();
        assert!(server.admin_bootstrap().is_none(), "the admin exists already");
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            tokio::time::timeout(IO_TIMEOUT, s.shutdown())
                .await
                .expect("shutdown within bound")
                .unwrap();
        }
    }

    /// Creates a user through the admin API and returns its id.
    pub async fn create_user(&self, admin: &Client, name: &str, role: &str, groups: &[&str], password: &str) -> i64 {
        let r = admin
            .post_json(
                "/api/v1/admin/users",
                &serde_json::json!({"username": name, "role": role, "groups": groups, "password": password}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["user"]["id"].as_i64().unwrap()
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }

    /// The `error.code` of a JSON error body (asserts the body has the documented shape).
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "error body shape: {v}");
        v["error"]["code"].as_str().unwrap().to_string()
    }
}

/// An HTTPS client with one cookie (the session), one connection per request.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    pub cookie: Arc<Mutex<Option<String>>>,
    /// The local address to connect from (any 127/8 address reaches a loopback server).
    pub source: Option<std::net::IpAddr>,
}

impl Client {
    pub fn new(addr: SocketAddr, cert: &Path) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            cookie: Arc::new(Mutex::new(None)),
            source: None,
        }
    }

    /// This client connecting from `source` (e.g. 127.0.0.2: the server sees another client address).
    pub fn connecting_from(mut self, source: std::net::IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// `https://ADDR`, the server's own origin.
    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Sends one request exactly as given (plus Host and, if set, the session cookie).
    pub async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        tokio::time::timeout(IO_TIMEOUT, self.raw_inner(method, path, headers, body))
            .await
            .expect("request timed out")
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS handshake over a TCP connection the caller opened (e.g. with its own socket options).
    pub async fn tls_over(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = ServerName::IpAddress(self.addr.ip().into());
        self.tls.connect(name, tcp).await
    }

    /// A TLS connection to the server, or the error of the TCP connect or the handshake.
    pub async fn try_connect_tls(&self) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        self.tls.connect(name, tcp).await
    }

    /// A TLS connection to the server, for tests that write raw HTTP.
    /// A TCP connection and TLS handshake to the server, within [`IO_TIMEOUT`].
    pub async fn connect_tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let connect = async {
            let tcp = match self.source {
                None => tokio::net::TcpStream::connect(self.addr).await.unwrap(),
                Some(ip) => {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(SocketAddr::new(ip, 0)).unwrap();
                    socket.connect(self.addr).await.unwrap()
                }
            };
            let name = ServerName::IpAddress(self.addr.ip().into());
            self.tls.connect(name, tcp).await.unwrap()
        };
        tokio::time::timeout(IO_TIMEOUT, connect)
            .await
            .expect("TCP and TLS handshake in time")
    }

    async fn raw_inner(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        let tls = self.connect_tls().await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        req = req.header("host", self.addr.to_string());
        if let Some(c) = self.cookie.lock().unwrap().as_ref() {
            req = req.header("cookie", format!("__Host-relaydesk_session={c}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender.send_request(req.body(Body::from(body)).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(Body::new(body), 16 * 1024 * 1024)
            .await
            .unwrap()
            .to_vec();
        for v in parts.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            if let Some(rest) = v.strip_prefix("__Host-relaydesk_session=") {
                let value = rest.split(';').next().unwrap().to_string();
                *self.cookie.lock().unwrap() = if value.is_empty() { None } else { Some(value) };
            }
        }
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.raw("GET", path, &[], Vec::new()).await
    }

    /// A state-changing JSON request with the CSRF header.
    pub async fn send_json(&self, method: &str, path: &str, body: &Value) -> Resp {
        let headers = [("content-type", "application/json"), ("x-relaydesk-csrf", "1")];
        self.raw(method, path, &headers, serde_json::to_vec(body).unwrap())
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.send_json("POST", path, body).await
    }

    /// A state-changing request with the CSRF header and raw body bytes.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Resp {
        let headers = [("content-type", "application/json"), ("x-relaydesk-csrf", "1")];
        self.raw("POST", path, &headers, body).await
    }

    pub async fn login(&self, username: &str, password: &str) -> Resp {
        self.post_json(
            "/api/v1/auth/login",
            &serde_json::json!({"username": username, "password": password}),
        )
        .await
    }
}

/// A connection to `c`'s server with its TLS and HTTP handshakes done, ready to send one request at once
/// (for bursts where every request must arrive together).
pub async fn connected(c: &Client) -> hyper::client::conn::http1::SendRequest<Body> {
    let tls = c.connect_tls().await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends a login on a ready connection: its status and `Retry-After` (`None` for the status when no
/// answer came within `timeout`).
pub async fn send_login_within(
    mut sender: hyper::client::conn::http1::SendRequest<Body>,
    host: String,
    username: &str,
    password: &str,
    timeout: Duration,
) -> (Option<u16>, Option<u64>) {
    let body = serde_json::json!({"username": username, "password": password}).to_string();
    let req = Request::post("/api/v1/auth/login")
        .header("host", host)
        .header("content-type", "application/json")
        .header("x-relaydesk-csrf", "1")
        .body(Body::from(body))
        .unwrap();
    let Ok(resp) = tokio::time::timeout(timeout, sender.send_request(req)).await else {
        return (None, None);
    };
    let resp = resp.unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (Some(resp.status().as_u16()), retry)
}

/// [`send_login_within`] that must be answered within [`IO_TIMEOUT`].
pub async fn send_login(
    sender: hyper::client::conn::http1::SendRequest<Body>,
    host: String,
    username: &str,
    password: &str,
) -> (u16, Option<u64>) {
    let (status, retry) = send_login_within(sender, host, username, password, IO_TIMEOUT).await;
    (status.expect("answered in time"), retry)
}

/// The real `relaydesk` binary, serving; killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    /// The URL it printed (`listening on URL`).
    pub url: String,
}

impl ServerProcess {
    /// Runs `relaydesk --data-dir DATA --config CONFIG serve --listen 127.0.0.1:0` with `serve_args`
    /// after that, and waits for the line naming the URL it listens on.
    pub fn serve(data: &Path, config: &Path, serve_args: &[&std::ffi::OsStr]) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"))
            .arg("--data-dir")
            .arg(data)
            .arg("--config")
            .arg(config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(serve_args)
            .stdout(std::process::Stdio::piped())
            // RELAYDESK_TEST_SERVER_LOGS=1 shows the servers' logs (to debug a failing test).
            .stderr(if std::env::var_os("RELAYDESK_TEST_SERVER_LOGS").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .spawn()
            .unwrap();
        let lines = process::line_reader(child.stdout.take().unwrap());
        let mut server = ServerProcess {
            child,
            url: String::new(),
        };
        // A few startup lines, each within a bound, then the URL.
        server.url = (0..100)
            .map_while(|_| process::next_line(&lines))
            .find_map(|line| line.strip_prefix("listening on ").map(|u| u.trim().to_string()))
            .expect("the server prints the URL it listens on");
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}
