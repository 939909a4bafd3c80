//! TURN beside RelayDesk: the `[turn]` settings, per-call TURN credentials, and the pass-through of TURN
//! over TLS from the HTTPS port to coturn.
//!
//! RelayDesk does not relay media itself for clients that need a relay; coturn does. This module:
//! - validates `[turn]` ([`TurnConfig::validate`]);
//! - issues short-lived credentials in coturn's REST-API scheme (`use-auth-secret` with
//!   `static-auth-secret`): username `EXPIRY:ID` (EXPIRY in Unix seconds), password
//!   base64(HMAC-SHA1(secret, username)) ([`TurnService::credentials`], [`rest_api_password`]);
//! - recognises, on the shared HTTPS port, a TLS ClientHello naming the TURN host ([`TurnService::claims`],
//!   using [`crate::sni`]) and copies that connection, bytes untouched, to coturn's TLS port on loopback
//!   ([`TurnService::pass_through`]).
//!
//! Call order: [`TurnService::load`] once at start (reads the secret file); then, per call,
//! [`TurnService::credentials`]; per accepted connection, [`TurnService::claims`] and, if it answers
//! true, [`TurnService::pass_through`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::chat_protocol::IceServer;

/// The longest credential lifetime accepted (one hour).
pub const MAX_CREDENTIAL_LIFETIME_SECS: u64 = 3600;
/// The shortest credential lifetime accepted.
pub const MIN_CREDENTIAL_LIFETIME_SECS: u64 = 60;
/// The most TURN URLs handed out.
pub const MAX_URLS: usize = 8;
/// Shortest and longest shared secret accepted (bytes, after trailing line ends are removed).
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=1024;
/// After one direction of a passed-through connection ends, how long the other may still flush.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Buffer of each direction of a passed-through connection.
const PASS_BUFFER: usize = 16 * 1024;

/// `[turn]`: the TURN servers handed to browsers with each call, and the TURN-over-TLS pass-through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// TURN URLs given to browsers (`turns:turn.example.com:443?transport=tcp`,
    /// `turn:turn.example.com:3478`). Empty (default): no TURN; calls need UDP or ICE-TCP to the SFU.
    pub urls: Vec<String>,
    /// File holding the secret shared with coturn (`static-auth-secret`), 16 to 1024 bytes; one trailing
    /// line end is ignored. Required with `urls`.
    pub secret_file: Option<PathBuf>,
    /// Lifetime of each issued credential, in seconds (60 to 3600). coturn refuses a credential for a new
    /// TURN session after its expiry.
    pub credential_lifetime_secs: u64,
    /// The TURN host name (SNI) whose TLS connections the HTTPS listener passes to coturn untouched. Needs
    /// `tls_upstream`, and a `turns:` URL with this host.
    pub tls_host: Option<String>,
    /// coturn's TLS listener (`tls-listening-port`), on a loopback address.
    pub tls_upstream: Option<SocketAddr>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret_file: None,
            credential_lifetime_secs: MAX_CREDENTIAL_LIFETIME_SECS,
            tls_host: None,
            tls_upstream: None,
        }
    }
}

impl TurnConfig {
    /// True when credentials are handed out.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Checks the section; `listen` is the HTTPS listener (the pass-through must not point at it).
    /// Normalises `tls_host` to lower case without a trailing dot.
    ///
    /// # Errors
    /// A message naming the key and what is wrong.
    pub fn validate(&mut self, listen: SocketAddr) -> Result<(), String> {
        if self.urls.len() > MAX_URLS {
            return Err(format!("turn.urls: at most {MAX_URLS} URLs"));
        }
        let mut hosts = Vec::new();
        for url in &self.urls {
            hosts.push(parse_turn_url(url).map_err(|e| format!("turn.urls: `{}`: {e}", printable(url)))?);
        }
        if self.enabled() && self.secret_file.is_none() {
            return Err("turn.secret_file is required with turn.urls".into());
        }
        if !self.enabled() && self.secret_file.is_some() {
            return Err("turn.secret_file is set but turn.urls is empty".into());
        }
        if !(MIN_CREDENTIAL_LIFETIME_SECS..=MAX_CREDENTIAL_LIFETIME_SECS).contains(&self.credential_lifetime_secs) {
            return Err(format!(
                "turn.credential_lifetime_secs must be from {MIN_CREDENTIAL_LIFETIME_SECS} to {MAX_CREDENTIAL_LIFETIME_SECS}"
            ));
        }
        match (&self.tls_host, self.tls_upstream) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err("turn.tls_host and turn.tls_upstream must be given together".into());
            }
            (Some(host), Some(upstream)) => {
                let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                if !is_dns_name(&host) {
                    return Err(format!("turn.tls_host: `{}` is not a DNS host name", printable(&host)));
                }
                if !upstream.ip().is_loopback() || upstream.port() == 0 {
                    return Err(
                        "turn.tls_upstream must be a loopback address with a port (coturn on this host)".into(),
                    );
                }
                if upstream == listen {
                    return Err("turn.tls_upstream must not be RelayDesk's own listen address".into());
                }
                if !hosts.iter().any(|h| h.tls && h.host.eq_ignore_ascii_case(&host)) {
                    return Err(format!(
                        "turn.tls_host `{host}` is not the host of any `turns:` URL in turn.urls"
                    ));
                }
                self.tls_host = Some(host);
            }
        }
        Ok(())
    }
}

/// What [`parse_turn_url`] learns from a URL.
#[derive(Debug, PartialEq, Eq)]
struct TurnUrl {
    /// `turns:` (TLS).
    tls: bool,
    host: String,
}

/// Checks a `turn:`/`turns:` URL (RFC 7065): `SCHEME:HOST[:PORT][?transport=udp|tcp]`, HOST a DNS name, an
/// IPv4 address or a bracketed IPv6 address.
fn parse_turn_url(url: &str) -> Result<TurnUrl, &'static str> {
    if url.len() > 512 {
        return Err("longer than 512 bytes");
    }
    let (tls, rest) = if let Some(r) = url.strip_prefix("turns:") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("turn:") {
        (false, r)
    } else {
        return Err("must start with `turn:` or `turns:`");
    };
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    match query {
        None | Some("transport=udp" | "transport=tcp") => {}
        Some(_) => return Err("the only query allowed is `?transport=udp` or `?transport=tcp`"),
    }
    if tls && query == Some("transport=udp") {
        return Err("`turns:` runs over TCP, not UDP");
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unclosed `[`")?;
        addr.parse::<std::net::Ipv6Addr>().map_err(|_| "invalid IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the address")?),
        };
        (addr.to_owned(), port)
    } else {
        let (h, p) = match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        let h = h.strip_suffix('.').unwrap_or(h);
        if h.parse::<std::net::Ipv4Addr>().is_err() && !is_dns_name(h) {
            return Err("the host is not a DNS name or an IP address");
        }
        (h.to_ascii_lowercase(), p)
    };
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
    {
        return Err("the port must be from 1 to 65535");
    }
    Ok(TurnUrl { tls, host })
}

/// A DNS host name: labels of ASCII letters, digits and `-` (not at either end), 1 to 63 bytes each, 253
/// bytes in all, at least one letter somewhere (so an IPv4 address is not mistaken for one).
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A configuration value for an error message: control characters replaced, at most 80 characters.
fn printable(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Errors loading the TURN secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// The secret file could not be read.
    #[error("turn.secret_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The secret file's content is unusable.
    #[error("turn.secret_file {path}: {message}")]
    BadSecret {
        /// The file.
        path: PathBuf,
        /// Why (never the content).
        message: &'static str,
    },
}

/// The shared secret; never printed.
#[derive(Clone)]
struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The password coturn expects for `username` under the REST-API scheme: base64 (standard alphabet, with
/// padding) of HMAC-SHA1(secret, username).
pub fn rest_api_password(secret: &[u8], username: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = aws_lc_rs::hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// A call's TURN credentials, as sent to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCredentials {
    /// The `ice_servers` list (one entry holding every configured URL).
    pub ice_servers: Vec<IceServer>,
    /// When they stop working, Unix milliseconds.
    pub expires_at_ms: u64,
}

/// What [`TurnService::claims`] decided about a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// TLS for the TURN host: pass it to coturn.
    Turn,
    /// Anything else: serve it as usual (nothing was read).
    Other,
    /// Its first bytes did not decide within the handshake time (a half ClientHello): close it.
    Stalled,
}

/// Where TURN-over-TLS connections go.
#[derive(Debug, Clone)]
struct PassThrough {
    host: String,
    upstream: SocketAddr,
}

/// The loaded TURN settings: credentials and pass-through. Built once at start by [`TurnService::load`].
#[derive(Debug, Clone)]
pub struct TurnService {
    urls: Vec<String>,
    secret: Secret,
    lifetime: u64,
    pass: Option<PassThrough>,
}

impl TurnService {
    /// Reads the secret file of a validated, enabled `[turn]`; `Ok(None)` when TURN is off.
    ///
    /// # Errors
    /// The file cannot be read, or its content is shorter than 16 or longer than 1024 bytes, or holds a
    /// line end or NUL inside.
    pub async fn load(config: &TurnConfig) -> Result<Option<Self>, TurnError> {
        let (true, Some(path)) = (config.enabled(), config.secret_file.as_ref()) else {
            return Ok(None);
        };
        let bad = |message| TurnError::BadSecret {
            path: path.clone(),
            message,
        };
        let meta = tokio::fs::metadata(path).await.map_err(|source| TurnError::Read {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() || meta.len() > 4096 {
            return Err(bad("not a regular file of at most 4096 bytes"));
        }
        let raw = tokio::fs::read(path).await.map_err(|source| TurnError::Read {
            path: path.clone(),
            source,
        })?;
        let mut secret: &[u8] = &raw;
        for end in [&b"\n"[..], b"\r"] {
            secret = secret.strip_suffix(end).unwrap_or(secret);
        }
        if !SECRET_LEN.contains(&secret.len()) {
            return Err(bad("the secret must be 16 to 1024 bytes"));
        }
        if secret.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
            return Err(bad("the secret must be one line without NUL bytes"));
        }
        Ok(Some(Self {
            urls: config.urls.clone(),
            secret: Secret(Arc::from(secret)),
            lifetime: config.credential_lifetime_secs,
            pass: config
                .tls_host
                .clone()
                .zip(config.tls_upstream)
                .map(|(host, upstream)| PassThrough { host, upstream }),
        }))
    }

    /// Credentials for one call leg, valid from `now_unix_secs` for the configured lifetime. `id` names the
    /// leg in coturn's logs (e.g. `42-visitor`); characters other than ASCII letters, digits, `-` and `_` are
    /// dropped (a `:` would break coturn's `EXPIRY:ID` parsing).
    pub fn credentials(&self, now_unix_secs: u64, id: &str) -> IssuedCredentials {
        let expiry = now_unix_secs.saturating_add(self.lifetime);
        let id: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .take(64)
            .collect();
        let username = format!("{expiry}:{id}");
        let credential = rest_api_password(&self.secret.0, &username);
        IssuedCredentials {
            ice_servers: vec![IceServer {
                urls: self.urls.clone(),
                username,
                credential,
            }],
            expires_at_ms: expiry.saturating_mul(1000),
        }
    }

    /// True when the pass-through is configured.
    pub fn passes_tls(&self) -> bool {
        self.pass.is_some()
    }

    /// Peeks (without consuming) at the first bytes of `tcp`, for at most `wait`: [`Claim::Turn`] if they
    /// are a TLS ClientHello whose SNI is the TURN host (and that is no ACME TLS-ALPN-01 validation, which
    /// the listener answers itself); [`Claim::Other`] for everything else that was decided (other names,
    /// no name, not TLS, closed): the caller goes on as for any connection, with every byte still unread;
    /// [`Claim::Stalled`] when no decision came within `wait` (a half ClientHello): close it.
    pub async fn claims(&self, tcp: &TcpStream, wait: Duration) -> Claim {
        let Some(pass) = &self.pass else {
            return Claim::Other;
        };
        let decide = async {
            let mut buf = vec![0u8; crate::sni::MAX_PEEK];
            let mut seen = 0;
            // Peeking returns at once while unread bytes wait; when the hello is incomplete and nothing new
            // came, back off briefly (a hello normally arrives in one piece, so this is rare).
            let mut pause = Duration::from_millis(1);
            loop {
                let n = match tcp.peek(&mut buf).await {
                    Ok(0) | Err(_) => return Claim::Other,
                    Ok(n) => n,
                };
                match crate::sni::peek_client_hello(&buf[..n]) {
                    crate::sni::Peek::Incomplete if n < buf.len() => {}
                    crate::sni::Peek::ClientHello(info)
                        if !info.offers_acme_tls
                            && info.server_name.is_some_and(|s| crate::sni::names_host(s, &pass.host)) =>
                    {
                        return Claim::Turn;
                    }
                    _ => return Claim::Other,
                }
                if n == seen {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                } else {
                    seen = n;
                }
            }
        };
        tokio::time::timeout(wait, decide).await.unwrap_or(Claim::Stalled)
    }

    /// Connects to coturn's TLS port (within `connect_timeout`) and copies bytes both ways until either side
    /// closes (the other then gets [`CLOSE_GRACE`] to flush) or `stop` resolves. Nothing is read or changed
    /// on the way: the ClientHello [`TurnService::claims`] peeked at is still unread and goes first.
    pub async fn pass_through(
        &self,
        client: TcpStream,
        peer: SocketAddr,
        connect_timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let Some(pass) = &self.pass else { return };
        metrics::counter!("relaydesk_turn_tls_connections_total").increment(1);
        let upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(pass.upstream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                metrics::counter!("relaydesk_turn_tls_failed_total", "reason" => "upstream_refused").increment(1);
                tracing::warn!(%peer, upstream = %pass.upstream, error = %e, "TURN over TLS: coturn unreachable");
                return;
            }
            Err(_) => {
                metrics::counter!("relaydesk_turn_tls_failed_total", "reason" => "upstream_timeout").increment(1);
                tracing::warn!(%peer, upstream = %pass.upstream, "TURN over TLS: connecting to coturn timed out");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let open = metrics::gauge!("relaydesk_turn_tls_open");
        open.increment(1.0);
        tracing::debug!(%peer, "TURN over TLS: passing to coturn");
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        let to_turn = pump(cr, uw, "to_turn");
        let from_turn = pump(ur, cw, "from_turn");
        tokio::pin!(to_turn, from_turn, stop);
        tokio::select! {
            _ = &mut to_turn => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut from_turn).await; }
            _ = &mut from_turn => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut to_turn).await; }
            _ = &mut stop => {}
        }
        open.decrement(1.0);
        tracing::debug!(%peer, "TURN over TLS: closed");
    }
}

/// Copies `r` to `w` until EOF or an error, counting bytes; shuts `w` down at EOF.
async fn pump(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf, direction: &'static str) {
    let bytes = metrics::counter!("relaydesk_turn_tls_bytes_total", "direction" => direction);
    let mut buf = vec![0u8; PASS_BUFFER];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                bytes.increment(n as u64);
            }
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests;
