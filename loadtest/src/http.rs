//! A small HTTP/1.1 client (one connection per request, `Connection: close`) over TCP or TLS, enough for
//! the JSON APIs of RelayDesk and Janus. Also the TLS configuration shared with the WebSocket client.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Errors of an HTTP exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not `http://host[:port][/path]` or `https://…`.
    #[error("bad URL `{0}`: expected http://host[:port] or https://host[:port]")]
    BadUrl(String),
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// host:port
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS failed (certificate not trusted, handshake error).
    #[error("TLS with {addr}: {source}")]
    Tls {
        /// host:port
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP/1.x.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    /// No complete answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The CA certificate file could not be used.
    #[error("CA certificate: {0}")]
    Ca(String),
}

/// A parsed base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `https` or not.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix without a trailing slash (often empty).
    pub prefix: String,
}

impl BaseUrl {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<BaseUrl, HttpError> {
        let bad = || HttpError::BadUrl(url.to_string());
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h.to_string(), p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(BaseUrl {
            tls,
            host,
            port,
            prefix: prefix.to_string(),
        })
    }

    /// `host:port`.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The WebSocket URL of `path` on this server.
    pub fn ws_url(&self, path: &str) -> String {
        format!(
            "{}://{}{}{}",
            if self.tls { "wss" } else { "ws" },
            self.authority(),
            self.prefix,
            path
        )
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Accepts any server certificate (`--insecure`): for self-signed test deployments only.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration: trust `ca_pem` (a PEM file's contents), or anything when `insecure`.
pub fn tls_config(ca_pem: Option<&[u8]>, insecure: bool) -> Result<Arc<ClientConfig>, HttpError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Ca(e.to_string()))?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = ca_pem {
            let mut rd = pem;
            for cert in rustls_pemfile::certs(&mut rd) {
                let cert = cert.map_err(|e| HttpError::Ca(e.to_string()))?;
                roots.add(cert).map_err(|e| HttpError::Ca(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(HttpError::Ca("no certificate in the file".into()));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// An HTTP client for one server.
#[derive(Clone)]
pub struct Client {
    base: BaseUrl,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

impl Client {
    /// A client of `base`; `tls` is needed for `https`.
    pub fn new(base: BaseUrl, tls: Option<Arc<ClientConfig>>, timeout: Duration) -> Client {
        Client { base, tls, timeout }
    }

    /// The server's base URL.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// One request; `body` is sent as JSON when given.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Response, HttpError> {
        self.request_timeout(method, path, headers, body, self.timeout).await
    }

    /// One request with a raw (`application/sdp`) body.
    pub async fn request_raw(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Response, HttpError> {
        let fut = self.exchange_bytes(method, path, &[], Some((body, "application/sdp")));
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(self.timeout)),
        }
    }

    /// One request with its own timeout (long polls).
    pub async fn request_timeout(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        match tokio::time::timeout(timeout, self.exchange(method, path, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(timeout)),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Response, HttpError> {
        let body = body.map(|b| (b.to_string().into_bytes(), "application/json"));
        self.exchange_bytes(method, path, headers, body).await
    }

    async fn exchange_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Response, HttpError> {
        let addr = self.base.authority();
        let tcp = TcpStream::connect(&addr).await.map_err(|source| HttpError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
            self.base.prefix
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some((b, ty)) = &body {
            req.push_str(&format!("Content-Type: {ty}\r\nContent-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some((b, _)) = body {
            bytes.extend_from_slice(&b);
        }
        if self.base.tls {
            let config = match &self.tls {
                Some(c) => c.clone(),
                None => tls_config(None, false)?,
            };
            let name =
                ServerName::try_from(self.base.host.clone()).map_err(|_| HttpError::BadUrl(self.base.host.clone()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| HttpError::Tls {
                    addr: addr.clone(),
                    source,
                })?;
            send_and_read(tls, &bytes).await
        } else {
            send_and_read(tcp, &bytes).await
        }
    }
}

async fn send_and_read<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &[u8]) -> Result<Response, HttpError> {
    s.write_all(req).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(r) = parse_complete(&buf, false)? {
            return Ok(r);
        }
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS peer closing without close_notify: what we have may still be complete.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return parse_complete(&buf, true)?.ok_or(HttpError::Malformed("connection closed mid-response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses a response if `buf` holds all of it (`eof`: the connection is closed).
pub fn parse_complete(buf: &[u8], eof: bool) -> Result<Option<Response>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof {
            Err(HttpError::Malformed("no header end"))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("header not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::Malformed("empty"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed("bad status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        match dechunk(rest)? {
            Some(b) => b,
            None if eof => return Err(HttpError::Malformed("truncated chunked body")),
            None => return Ok(None),
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| HttpError::Malformed("bad content-length"))?;
        if rest.len() < len {
            return if eof {
                Err(HttpError::Malformed("truncated body"))
            } else {
                Ok(None)
            };
        }
        rest[..len].to_vec()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response { status, headers, body }))
}

fn dechunk(mut b: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_str = std::str::from_utf8(&b[..eol]).map_err(|_| HttpError::Malformed("chunk size"))?;
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| HttpError::Malformed("chunk size"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if b.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        let u = BaseUrl::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.prefix.as_str()),
            (true, "127.0.0.1", 8443, "")
        );
        let u = BaseUrl::parse("http://localhost:8088/janus/").unwrap();
        assert_eq!((u.tls, u.port, u.prefix.as_str()), (false, 8088, "/janus"));
        assert_eq!(BaseUrl::parse("http://h").unwrap().port, 80);
        assert_eq!(u.ws_url("/x"), "ws://localhost:8088/janus/x");
        for bad in ["ftp://x", "https://", "http://h:notaport", "localhost:80"] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses() {
        let r = parse_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=b\r\n\r\n{}",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("set-cookie")),
            (200, &b"{}"[..], Some("a=b"))
        );
        assert!(
            parse_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", false)
                .unwrap()
                .is_none()
        );
        assert!(parse_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", true).is_err());
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_complete(c, false).unwrap().unwrap().body, b"abcde");
        assert!(parse_complete(&c[..c.len() - 7], false).unwrap().is_none());
        let eof = b"HTTP/1.0 200 OK\r\n\r\nhello";
        assert!(parse_complete(eof, false).unwrap().is_none());
        assert_eq!(parse_complete(eof, true).unwrap().unwrap().body, b"hello");
        assert!(parse_complete(b"SSH-2.0\r\n\r\n", true).is_err());
    }
}
