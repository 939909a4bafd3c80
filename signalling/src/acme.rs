//! Certificates from an ACME authority (RFC 8555), proved with the TLS-ALPN-01 challenge (RFC 8737) on the
//! HTTPS listener itself, so that a public deployment needs no certificate work and no second port.
//!
//! - [`CertResolver`] is the listener's rustls certificate resolver: a ClientHello that offers the
//!   `acme-tls/1` protocol gets the challenge certificate of its server name (none pending: the handshake
//!   fails); every other ClientHello gets the current certificate.
//! - [`prepare`] runs at start: it loads the last issued certificate from `<data-dir>/acme/` (served even
//!   when expired, rather than nothing) or, before the first issuance, a temporary self-signed certificate
//!   for the configured names, kept in memory only.
//! - [`AcmeManager::run`] is the background task: it orders a certificate when none is stored, when the
//!   stored one does not cover the configured names, and when two thirds of its lifetime have passed; it
//!   swaps the new certificate into the resolver (no restart, open connections keep theirs). When the
//!   authority cannot be reached or refuses, the current certificate stays and the order is retried with
//!   a growing delay (logged, counted in `relaydesk_acme_orders_total{result="failed"}`).
//!
//! Files (directory mode 0700, files 0600, each replaced atomically): `acme/account-<id>.json`, the
//! account's key and URL for one directory (`<id>` is derived from the directory URL), and
//! `acme/certificate.pem`, the issued chain followed by its private key.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};

use crate::config::AcmeConfig;
use crate::time::unix_now;

/// The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Directory of the ACME files inside the data directory.
pub const ACME_DIR: &str = "acme";
/// The issued certificate chain and its private key (PEM, mode 0600), inside the data directory.
pub const CERT_FILE: &str = "acme/certificate.pem";

/// First retry delay after a failed order; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(60);
/// Longest delay between two orders while the authority fails.
pub const RETRY_MAX: Duration = Duration::from_secs(3600);
/// Time allowed for one HTTP request to the authority.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a whole order (account, challenges, validation, issuance).
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest response accepted from the authority (a certificate chain is a few kB).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// The longest single sleep of the renewal task; it then recomputes (clock changes, suspend).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Errors of the ACME client and its stored files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The authority answered with an error, or could not be reached.
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stored file is unusable.
    #[error("{path}: {message}")]
    Stored {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The directory's CA bundle is unusable.
    #[error("ACME directory CA bundle {path}: {message}")]
    CaBundle {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The authority refused the order or an authorization.
    #[error("the ACME authority refused: {0}")]
    Refused(String),
    /// A certificate or key could not be made or used.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The whole order took too long.
    #[error("the ACME order did not finish within {0:?}")]
    Timeout(Duration),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(e: impl std::fmt::Display) -> AcmeError {
    AcmeError::Certificate(e.to_string())
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The listener's certificate resolver: the current certificate, and the TLS-ALPN-01 challenge
/// certificates while an order is being validated.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertResolver {
    /// A resolver serving `current`.
    pub fn new(current: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(current),
            challenges: RwLock::new(HashMap::new()),
        }
    }

    /// The certificate served to ordinary clients.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&read_lock(&self.current))
    }

    /// Serves `key` to every new connection from now on.
    pub fn set_current(&self, key: Arc<CertifiedKey>) {
        *write_lock(&self.current) = key;
    }

    /// Answers `acme-tls/1` ClientHellos for `name` with `key` until cleared.
    pub fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        write_lock(&self.challenges).insert(name.to_ascii_lowercase(), key);
    }

    /// Forgets every challenge certificate.
    pub fn clear_challenges(&self) {
        write_lock(&self.challenges).clear();
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validation {
            // RFC 8737: only the challenge certificate of the named domain, never the real one.
            let name = hello.server_name()?.to_ascii_lowercase();
            let key = read_lock(&self.challenges).get(&name).cloned();
            let outcome = if key.is_some() { "answered" } else { "unknown" };
            metrics::counter!("relaydesk_acme_validations_total", "result" => outcome).increment(1);
            return key;
        }
        Some(self.current())
    }
}

/// An issued (or stored) certificate with the facts the renewal needs.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Chain and key, as served.
    pub key: Arc<CertifiedKey>,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// The DNS names of the leaf, lower case.
    pub names: Vec<String>,
    /// When this process obtained it from the authority (Unix seconds), if it did: the renewal counts
    /// the lifetime from then when the authority backdated `notBefore`, so that a short-lived
    /// certificate is not ordered again at once.
    pub obtained: Option<i64>,
}

impl Issued {
    /// Parses a PEM chain followed (anywhere) by its private key.
    pub fn from_pem(pem: &[u8], provider: &CryptoProvider) -> Result<Issued, String> {
        let chain = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let leaf = chain.first().ok_or("no certificate found")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
        let validity = parsed.validity();
        let names = match parsed.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("private key: {e}"))?;
        let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| e.to_string())?;
        Ok(Issued {
            key: Arc::new(key),
            not_before,
            not_after,
            names,
            obtained: None,
        })
    }

    /// True if every name in `domains` is one of the certificate's names.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.names.contains(d))
    }

    /// When to order the successor: two thirds into the validity period (Unix seconds).
    pub fn renew_at(&self) -> i64 {
        let from = self.not_before.max(self.obtained.unwrap_or(i64::MIN));
        let life = self.not_after.saturating_sub(from).max(0);
        from.saturating_add(life / 3 * 2)
    }

    /// SHA-256 fingerprint of the leaf (`AB:CD:…`).
    pub fn fingerprint(&self) -> String {
        self.key
            .cert
            .first()
            .map(|c| crate::cert_fingerprint::fingerprint(c.as_ref()))
            .unwrap_or_default()
    }
}

/// What [`prepare`] hands to the TLS setup.
#[derive(Debug)]
pub struct Prepared {
    /// The resolver for the listener's `ServerConfig`.
    pub resolver: Arc<CertResolver>,
    /// The renewal task, to be run once the listener accepts connections.
    pub manager: AcmeManager,
    /// Fingerprint of the certificate served at start.
    pub fingerprint: String,
    /// `<data-dir>/acme/certificate.pem` (it may not exist yet).
    pub cert_path: PathBuf,
}

/// Loads the stored certificate (or makes a temporary self-signed one) and the directory's trust
/// anchors; no network. Errors only for an unusable CA bundle or an unwritable data directory.
pub fn prepare(config: &AcmeConfig, data_dir: &Path, provider: Arc<CryptoProvider>) -> Result<Prepared, AcmeError> {
    let dir = data_dir.join(ACME_DIR);
    create_private_dir(&dir)?;
    let roots = directory_roots(config.directory_ca.as_deref())?;
    let client_tls = client_tls(roots, Arc::clone(&provider))?;
    let cert_path = data_dir.join(CERT_FILE);
    let stored = match std::fs::read(&cert_path) {
        Ok(pem) => match Issued::from_pem(&pem, &provider) {
            Ok(issued) => Some(issued),
            Err(message) => {
                // Not fatal: a new certificate is ordered; the broken file is replaced then.
                tracing::warn!(path = %cert_path.display(), error = %message, "stored ACME certificate unusable; ordering a new one");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&cert_path)(e)),
    };
    let (served, fingerprint) = match &stored {
        Some(issued) => {
            let now = unix_now();
            if issued.not_after <= now {
                tracing::error!(
                    not_after = issued.not_after,
                    "the stored ACME certificate has expired; serving it until a new one is issued"
                );
            } else {
                tracing::info!(not_after = issued.not_after, names = ?issued.names, "serving the stored ACME certificate");
            }
            metrics::gauge!("relaydesk_tls_certificate_expiry_timestamp_seconds").set(issued.not_after as f64);
            (Arc::clone(&issued.key), issued.fingerprint())
        }
        None => {
            let ck = rcgen::generate_simple_self_signed(config.domains.clone()).map_err(cert_err)?;
            let der = ck.cert.der().clone();
            let fingerprint = crate::cert_fingerprint::fingerprint(der.as_ref());
            let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            let key = CertifiedKey::from_der(vec![der], key, &provider).map_err(cert_err)?;
            tracing::info!(names = ?config.domains, "no ACME certificate yet: serving a temporary self-signed one until it is issued");
            (Arc::new(key), fingerprint)
        }
    };
    let resolver = Arc::new(CertResolver::new(served));
    let manager = AcmeManager {
        config: config.clone(),
        dir,
        cert_path: cert_path.clone(),
        resolver: Arc::clone(&resolver),
        current: stored,
        provider,
        client_tls,
        account: None,
    };
    Ok(Prepared {
        resolver,
        manager,
        fingerprint,
        cert_path,
    })
}

fn directory_roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = ca else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let bad = |message: String| AcmeError::CaBundle {
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(roots)
}

/// The background task that orders and renews the certificate.
pub struct AcmeManager {
    config: AcmeConfig,
    dir: PathBuf,
    cert_path: PathBuf,
    resolver: Arc<CertResolver>,
    current: Option<Issued>,
    provider: Arc<CryptoProvider>,
    client_tls: tokio_rustls::TlsConnector,
    account: Option<Account>,
}

impl std::fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeManager")
            .field("domains", &self.config.domains)
            .field("directory", &self.config.directory)
            .field("current", &self.current.as_ref().map(|c| c.not_after))
            .finish_non_exhaustive()
    }
}

/// The delay after the `failures`-th failed order in a row (1 for the first).
pub fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    RETRY_FIRST.saturating_mul(factor).min(RETRY_MAX)
}

impl AcmeManager {
    /// How long until the next order is due (zero: now).
    fn until_due(&self) -> Duration {
        match &self.current {
            Some(c) if c.covers(&self.config.domains) => {
                let wait = c.renew_at().saturating_sub(unix_now());
                Duration::from_secs(u64::try_from(wait).unwrap_or(0))
            }
            _ => Duration::ZERO,
        }
    }

    /// Orders and renews until `stop` resolves. Never returns an error: failures are logged, counted and
    /// retried, and the last good certificate stays in service.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut failures = 0u32;
        loop {
            let wait = self.until_due();
            if !wait.is_zero() {
                tracing::debug!(in_secs = wait.as_secs(), "next ACME renewal");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => continue,
                }
            }
            tracing::info!(names = ?self.config.domains, directory = %self.config.directory, "ordering a certificate by ACME");
            let result = tokio::select! {
                _ = &mut stop => return,
                r = tokio::time::timeout(ORDER_TIMEOUT, self.order()) => r.unwrap_or(Err(AcmeError::Timeout(ORDER_TIMEOUT))),
            };
            // Whatever happened, no challenge certificate stays behind.
            self.resolver.clear_challenges();
            match result {
                Ok(issued) => {
                    failures = 0;
                    metrics::counter!("relaydesk_acme_orders_total", "result" => "issued").increment(1);
                    metrics::gauge!("relaydesk_tls_certificate_expiry_timestamp_seconds").set(issued.not_after as f64);
                    tracing::info!(fingerprint = %issued.fingerprint(), not_after = issued.not_after, "ACME certificate issued and in service");
                    self.resolver.set_current(Arc::clone(&issued.key));
                    self.current = Some(issued);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures);
                    metrics::counter!("relaydesk_acme_orders_total", "result" => "failed").increment(1);
                    tracing::warn!(error = %e, failures, retry_in_secs = delay.as_secs(), "ACME order failed; the current certificate stays in service");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn http(&self) -> Box<dyn HttpClient> {
        Box::new(HttpsClient {
            tls: self.client_tls.clone(),
        })
    }

    fn account_path(&self) -> PathBuf {
        let id = hex::encode(&Sha256::digest(self.config.directory.as_bytes())[..8]);
        self.dir.join(format!("account-{id}.json"))
    }

    async fn account(&mut self) -> Result<Account, AcmeError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let path = self.account_path();
        let account = match std::fs::read(&path) {
            Ok(json) => {
                let credentials: AccountCredentials = serde_json::from_slice(&json).map_err(|e| AcmeError::Stored {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                Account::builder_with_http(self.http())
                    .from_credentials(credentials)
                    .await?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let contact = self.config.contact.as_ref().map(|c| format!("mailto:{c}"));
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = Account::builder_with_http(self.http())
                    .create(&new, self.config.directory.clone(), None)
                    .await?;
                let json = serde_json::to_vec(&credentials).map_err(instant_acme::Error::from)?;
                write_private(&path, &json)?;
                tracing::info!(path = %path.display(), "ACME account created");
                account
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// One order: challenges answered through the resolver, a new key, the chain; stored, not yet served.
    async fn order(&mut self) -> Result<Issued, AcmeError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self.config.domains.iter().cloned().map(Identifier::Dns).collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(AcmeError::Refused(format!("an authorization is {other:?}"))),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::Refused("the authority offers no tls-alpn-01 challenge".into()))?;
            let name = challenge.identifier().to_string();
            let key = challenge_key(&name, challenge.key_authorization().digest().as_ref(), &self.provider)?;
            self.resolver.set_challenge(&name, key);
            challenge.set_ready().await?;
        }
        let poll = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(120));
        let status = order.poll_ready(&poll).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Refused(format!(
                "the order is {status:?}: {}",
                challenge_errors(&mut order).await
            )));
        }
        let key = rcgen::KeyPair::generate().map_err(cert_err)?;
        let mut params = rcgen::CertificateParams::new(self.config.domains.clone()).map_err(cert_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(cert_err)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&poll).await?;
        let mut pem = chain;
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&key.serialize_pem());
        let mut issued = Issued::from_pem(pem.as_bytes(), &self.provider).map_err(AcmeError::Certificate)?;
        issued.obtained = Some(unix_now());
        if !issued.covers(&self.config.domains) {
            return Err(AcmeError::Refused(format!(
                "the issued certificate names {:?}, not every configured name",
                issued.names
            )));
        }
        write_private(&self.cert_path, pem.as_bytes())?;
        Ok(issued)
    }
}

/// The challenges' error details, for the log when an order went invalid.
async fn challenge_errors(order: &mut instant_acme::Order) -> String {
    let mut details = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        if let Ok(state) = authorization.refresh().await {
            for c in &state.challenges {
                if let Some(e) = &c.error {
                    details.push(format!("{}: {e}", state.identifier()));
                }
            }
        }
    }
    if details.is_empty() {
        "no details".into()
    } else {
        details.join("; ")
    }
}

/// The TLS-ALPN-01 certificate for `name`: self-signed, the name as its only SAN, and the critical
/// acmeIdentifier extension holding the SHA-256 of the key authorization (RFC 8737, section 3).
pub fn challenge_key(name: &str, digest: &[u8], provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(cert_err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(cert_err)?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which refuses the
    // critical acmeIdentifier extension; the pair is ours and matches by construction.
    let signing = provider.key_provider.load_private_key(key).map_err(cert_err)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

fn create_private_dir(dir: &Path) -> Result<(), AcmeError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a rename, so that a crash leaves
/// either the old or the new content.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The HTTP client of the ACME protocol: one HTTP/1.1 connection per request over rustls, trusting the
/// configured roots only, `https` URLs only, bounded in time and response size.
struct HttpsClient {
    tls: tokio_rustls::TlsConnector,
}

/// The TLS client configuration of the requests to the authority: `roots` only, HTTP/1.1.
fn client_tls(
    roots: rustls::RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<tokio_rustls::TlsConnector, AcmeError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cert_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

type ResponseFuture = Pin<Box<dyn std::future::Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>>;

impl HttpClient for HttpsClient {
    fn request(&self, req: hyper::Request<BodyWrapper<Bytes>>) -> ResponseFuture {
        let tls = self.tls.clone();
        Box::pin(async move {
            tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req))
                .await
                .map_err(|_| instant_acme::Error::Str("the ACME authority did not answer in time"))?
        })
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(e))
}

async fn send(
    tls: tokio_rustls::TlsConnector,
    req: hyper::Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, instant_acme::Error> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.scheme_str() != Some("https") {
        return Err(instant_acme::Error::Str("an ACME URL that is not https"));
    }
    let authority = parts
        .uri
        .authority()
        .cloned()
        .ok_or(instant_acme::Error::Str("an ACME URL without a host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone()).map_err(other)?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(other)?;
    let stream = tls.connect(server_name, tcp).await.map_err(other)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(other)?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "ACME connection ended with an error");
        }
    });
    // Origin form on the request line, the authority in Host.
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = path.parse().map_err(instant_acme::Error::from)?;
    let host_header = hyper::header::HeaderValue::from_str(authority.as_str()).map_err(other)?;
    parts.headers.insert(hyper::header::HOST, host_header);
    let result = async {
        let rsp = sender
            .send_request(hyper::Request::from_parts(parts, body))
            .await
            .map_err(other)?;
        let (parts, body) = rsp.into_parts();
        let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(instant_acme::Error::Other)?
            .to_bytes();
        Ok(BytesResponse::from(hyper::Response::from_parts(
            parts,
            BodyWrapper::from(body.to_vec()),
        )))
    }
    .await;
    drop(sender);
    driver.abort();
    result
}

#[cfg(test)]
mod tests;
