//! Server configuration.
//!
//! Precedence, highest first: command-line flags, environment variables `RELAYDESK_*`, the TOML file given
//! by `--config` (or `RELAYDESK_CONFIG`), built-in defaults. Each layer that sets a value overrides the
//! layers below it; [`Overrides`] carries the flag and environment layers, [`FileConfig`] the file.
//! Unknown keys in the file are an error, so a typo never silently falls back to a default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::throttle::ThrottleConfig;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys included).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An environment variable has an invalid value.
    #[error("invalid value for {name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Why.
        message: String,
    },
    /// The merged configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The effective server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Directory for the database, the generated certificate and other state.
    pub data_dir: PathBuf,
    /// Address of the HTTPS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`. None: a self-signed certificate in the data directory.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key; with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Obtain and renew the certificate from an ACME authority (`[tls] acme_*`); excludes `tls_cert`.
    pub acme: Option<AcmeConfig>,
    /// The origin browsers use to reach this server (`https://desk.example`), checked against the `Origin`
    /// of state-changing requests. None: `https://` + the request's `Host` header.
    pub public_origin: Option<String>,
    /// A file holding the first admin's password (used only when no admin exists).
    pub admin_password_file: Option<PathBuf>,
    /// Log filter (`tracing` env-filter syntax).
    pub log: String,
    /// HTTP limits and timeouts.
    pub http: HttpConfig,
    /// Agent session lifetimes.
    pub sessions: SessionConfig,
    /// Failed-login throttling.
    pub login_throttle: ThrottleConfig,
    /// The live conversation layer (`[live]`): visitor tokens, sockets, routing timers, chat limits.
    pub live: crate::live_config::LiveConfig,
    /// The transcript archive (`[archive]`): master key file and retention.
    pub archive: ArchiveConfig,
    /// The SFU (calls): where its UDP sockets listen and what address browsers are told.
    pub media: MediaConfig,
    /// TURN beside RelayDesk (`[turn]`): servers and credentials handed out with calls, TURN over TLS by SNI.
    pub turn: crate::turn::TurnConfig,
    /// Where the store lives (`[database]`): SQLite in the data directory, or PostgreSQL.
    pub database: crate::store::DatabaseConfig,
    /// The cluster's node registry (`[cluster]`): none for a single node.
    pub cluster: crate::cluster::ClusterConfig,
}

/// The SFU's network settings (`[media]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Run the SFU; false disables calls (call requests get a clear error).
    pub enabled: bool,
    /// Address the SFU's UDP sockets bind to.
    pub bind_ip: std::net::IpAddr,
    /// UDP port of the first shard; shard `i` uses `port_base + i`. 0: the system picks free ports.
    pub port_base: u16,
    /// Address given to browsers in ICE candidates when it differs from `bind_ip` (NAT, `0.0.0.0` binds).
    pub announce_ip: Option<std::net::IpAddr>,
    /// Shard threads; 0: one per core.
    pub shards: usize,
    /// Pace forwarded video at each subscriber's bandwidth estimate. Off: a frame leaves as it arrived.
    pub pace_video: bool,
    /// Most media participants (peer connections: a visitor's, an agent's or a supervisor's leg) this
    /// node's SFU carries. A new call is admitted only when both its legs fit (it reserves two), a
    /// supervisor's monitoring leg when one more fits; beyond it the offer is refused with `media_busy`
    /// and the calls in progress are not touched.
    pub max_participants: usize,
    /// Media over TCP (ICE-TCP, RFC 6544): answers carry a passive TCP candidate (after the UDP one, at a
    /// lower priority) on the HTTPS port, or on `tcp_listen` when set; the listener hands connections whose
    /// first RFC 4571 frame is a STUN Binding request to the SFU. Off: UDP only.
    pub ice_tcp: bool,
    /// A dedicated TCP port for ICE-TCP (for operators who keep the HTTPS port behind a proxy that cannot
    /// pass raw TCP through). When set, the TCP candidate names this port (with `announce_ip`, else this
    /// address) instead of the HTTPS port, and the HTTPS listener still recognises ICE-TCP too.
    pub tcp_listen: Option<std::net::SocketAddr>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port_base: 0,
            announce_ip: None,
            shards: 0,
            pace_video: false,
            max_participants: 200,
            ice_tcp: true,
            tcp_listen: None,
        }
    }
}

/// The transcript archive's settings (`[archive]`). The master key itself is never part of the
/// configuration: it lives in its file, or in env `RELAYDESK_MASTER_KEY` (see [`crate::archive::KeySource`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Master key file (base64, mode 0600). None: `<data-dir>/master.key`, created on first start. Env
    /// `RELAYDESK_MASTER_KEY_FILE` overrides it.
    pub master_key_file: Option<PathBuf>,
    /// Transcripts whose conversation ended more than this many days ago are purged; 0 keeps them forever.
    pub retention_days: u32,
    /// How often the retention purge runs (seconds); it also runs at start.
    pub purge_interval_secs: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            master_key_file: None,
            retention_days: 0,
            purge_interval_secs: 3600,
        }
    }
}

/// HTTP limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted (bytes); larger gives 413.
    pub max_body_bytes: usize,
    /// Time allowed for a TLS handshake (seconds).
    pub handshake_timeout_secs: u64,
    /// Time allowed to receive a request's headers (seconds), from the connection's start and from the end
    /// of each response (a silent or idle connection is closed after it).
    pub header_timeout_secs: u64,
    /// Time allowed to read a request's body and produce the response (seconds); 408 after that.
    pub request_timeout_secs: u64,
    /// On shutdown, time given to open connections to finish (seconds).
    pub shutdown_grace_secs: u64,
    /// Most simultaneous connections; a further connection is closed at once (before TLS) until one ends.
    pub max_connections: usize,
    /// `Strict-Transport-Security` max-age sent on every response (seconds); 0 sends none. Browsers ignore
    /// it for IP addresses and for certificates they do not trust, so the self-signed default is unharmed.
    pub hsts_max_age_secs: u64,
    /// Reverse proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the client; everyone
    /// else's header is ignored. Empty (default): the TCP peer is the client.
    pub trusted_proxies: Vec<crate::http::client_ip::Cidr>,
    /// Most simultaneous connections from one client address (IPv6: one /64); further connections from it
    /// are closed at once. Trusted proxies are not counted.
    pub max_connections_per_address: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            handshake_timeout_secs: 10,
            header_timeout_secs: 30,
            request_timeout_secs: 30,
            shutdown_grace_secs: 10,
            max_connections: 10_000,
            hsts_max_age_secs: 365 * 24 * 3600,
            trusted_proxies: Vec::new(),
            max_connections_per_address: 1_000,
        }
    }
}

/// Agent session lifetimes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session unused this long expires (seconds).
    pub idle_timeout_secs: u64,
    /// A session expires this long after login (seconds).
    pub absolute_timeout_secs: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 30 * 60,
            absolute_timeout_secs: 12 * 3600,
        }
    }
}

impl SessionConfig {
    /// As store limits.
    pub fn limits(&self) -> crate::store::SessionLimits {
        crate::store::SessionLimits {
            idle: Duration::from_secs(self.idle_timeout_secs),
            absolute: Duration::from_secs(self.absolute_timeout_secs),
        }
    }
}

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./relaydesk-data";
/// Default listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8443);

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: DEFAULT_LISTEN,
            tls_cert: None,
            tls_key: None,
            acme: None,
            public_origin: None,
            admin_password_file: None,
            log: "info".into(),
            http: HttpConfig::default(),
            sessions: SessionConfig::default(),
            login_throttle: ThrottleConfig::default(),
            live: crate::live_config::LiveConfig::default(),
            archive: ArchiveConfig::default(),
            media: MediaConfig::default(),
            turn: crate::turn::TurnConfig::default(),
            database: crate::store::DatabaseConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
        }
    }
}

/// The TOML file form: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Config::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`Config::listen`].
    pub listen: Option<SocketAddr>,
    /// See [`Config::public_origin`].
    pub public_origin: Option<String>,
    /// See [`Config::admin_password_file`].
    pub admin_password_file: Option<PathBuf>,
    /// See [`Config::log`].
    pub log: Option<String>,
    /// `[tls]` section.
    pub tls: Option<TlsFileConfig>,
    /// `[http]` section.
    pub http: Option<HttpConfig>,
    /// `[sessions]` section.
    pub sessions: Option<SessionConfig>,
    /// `[login_throttle]` section.
    pub login_throttle: Option<ThrottleConfig>,
    /// `[live]` section.
    pub live: Option<crate::live_config::LiveConfig>,
    /// `[archive]` section.
    pub archive: Option<ArchiveConfig>,
    /// `[media]` section.
    pub media: Option<MediaConfig>,
    /// `[turn]` section.
    pub turn: Option<crate::turn::TurnConfig>,
    /// `[database]` section.
    pub database: Option<crate::store::DatabaseConfig>,
    /// `[cluster]` section.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// `[tls]` section of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// DNS names to obtain a certificate for by ACME (TLS-ALPN-01 on the HTTPS listener). Setting it turns
    /// ACME on; the other `acme_*` keys need it.
    pub acme_domains: Option<Vec<String>>,
    /// Contact e-mail address given to the ACME authority (optional).
    pub acme_contact: Option<String>,
    /// The ACME directory URL; default: Let's Encrypt's production directory.
    pub acme_directory: Option<String>,
    /// PEM bundle of the CA certificates that the ACME directory's own HTTPS certificate chains to;
    /// default: the public web roots compiled in (Mozilla's list).
    pub acme_directory_ca: Option<PathBuf>,
}

/// Let's Encrypt's production ACME directory, the default `acme_directory`.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Most names in one ACME certificate (Let's Encrypt's limit).
pub const ACME_MAX_DOMAINS: usize = 100;

/// Certificates from an ACME authority (`[tls] acme_*`); see docs/deploy.md, "Certificates (ACME)".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcmeConfig {
    /// DNS names of the certificate, lower case, without a trailing dot, at least one.
    pub domains: Vec<String>,
    /// Contact e-mail address (without `mailto:`).
    pub contact: Option<String>,
    /// Directory URL (`https://`).
    pub directory: String,
    /// CA bundle for the directory's HTTPS; None: the compiled-in public roots.
    pub directory_ca: Option<PathBuf>,
}

impl AcmeConfig {
    /// Builds the ACME settings from the `[tls]` keys: None when ACME is off (no `acme_domains`), an
    /// error when a key is invalid or an `acme_*` key is given without `acme_domains`.
    pub fn from_file(tls: &TlsFileConfig) -> Result<Option<AcmeConfig>, ConfigError> {
        let invalid = ConfigError::Invalid;
        let Some(domains) = &tls.acme_domains else {
            if tls.acme_contact.is_some() || tls.acme_directory.is_some() || tls.acme_directory_ca.is_some() {
                return Err(invalid(
                    "tls.acme_contact, tls.acme_directory and tls.acme_directory_ca need tls.acme_domains".into(),
                ));
            }
            return Ok(None);
        };
        if domains.is_empty() {
            return Err(invalid(
                "tls.acme_domains is empty: list the DNS names of the certificate, or remove the key".into(),
            ));
        }
        if domains.len() > ACME_MAX_DOMAINS {
            return Err(invalid(format!(
                "tls.acme_domains lists {} names; at most {ACME_MAX_DOMAINS}",
                domains.len()
            )));
        }
        let mut names: Vec<String> = Vec::with_capacity(domains.len());
        for d in domains {
            let n = acme_domain(d).map_err(|m| invalid(format!("tls.acme_domains: {d:?}: {m}")))?;
            if names.contains(&n) {
                return Err(invalid(format!("tls.acme_domains: {d:?} is listed twice")));
            }
            names.push(n);
        }
        let contact = match &tls.acme_contact {
            None => None,
            Some(c) => Some(acme_contact(c).map_err(|m| invalid(format!("tls.acme_contact: {c:?}: {m}")))?),
        };
        let directory = tls
            .acme_directory
            .clone()
            .unwrap_or_else(|| LETS_ENCRYPT_DIRECTORY.to_string());
        acme_directory(&directory).map_err(|m| invalid(format!("tls.acme_directory: {directory:?}: {m}")))?;
        Ok(Some(AcmeConfig {
            domains: names,
            contact,
            directory,
            directory_ca: tls.acme_directory_ca.clone(),
        }))
    }
}

/// A DNS name an ACME authority can validate by TLS-ALPN-01: normalised to lower case without the
/// trailing dot. IP addresses and wildcards are refused (TLS-ALPN-01 cannot prove a wildcard).
fn acme_domain(d: &str) -> Result<String, &'static str> {
    let n = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
    if n.is_empty() {
        return Err("empty name");
    }
    if n.len() > 253 {
        return Err("longer than 253 characters");
    }
    if n.starts_with("*.") {
        return Err("wildcard names cannot be validated by TLS-ALPN-01; list each name");
    }
    if n.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address; give a DNS name");
    }
    let labels: Vec<&str> = n.split('.').collect();
    if labels.len() < 2 {
        return Err("a single label; give a fully qualified name such as desk.example.com");
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err("each label must have 1 to 63 characters");
        }
        if !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("only letters, digits, '-' and '.' are allowed (use the xn-- form for other scripts)");
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
    }
    if labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err("the last label is numeric");
    }
    Ok(n)
}

/// A plain e-mail address (`user@host.example`), without `mailto:`.
fn acme_contact(c: &str) -> Result<String, &'static str> {
    let c = c.strip_prefix("mailto:").unwrap_or(c);
    let (local, host) = c.rsplit_once('@').ok_or("not an e-mail address (no '@')")?;
    if local.is_empty() || local.len() > 64 {
        return Err("not an e-mail address (the part before '@' is empty or too long)");
    }
    if local
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'@' || b == b',' || b == b'<' || b == b'>' || !b.is_ascii())
    {
        return Err("the part before '@' holds a character not allowed in an address");
    }
    acme_domain(host).map_err(|_| "the part after '@' is not a valid host name")?;
    Ok(c.to_string())
}

/// An `https://` URL with a host.
fn acme_directory(u: &str) -> Result<(), &'static str> {
    let rest = u.strip_prefix("https://").ok_or("must start with https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err("no host");
    }
    if u.bytes().any(|b| b.is_ascii_control() || b == b' ') || u.parse::<hyper::Uri>().is_err() {
        return Err("not a valid URL");
    }
    Ok(())
}

impl FileConfig {
    /// Parses TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// The values a higher layer (flags or environment) may set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Config file to read (`--config`, `RELAYDESK_CONFIG`).
    pub config_file: Option<PathBuf>,
    /// `--data-dir`, `RELAYDESK_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`, `RELAYDESK_LISTEN`.
    pub listen: Option<SocketAddr>,
    /// `--tls-cert`, `RELAYDESK_TLS_CERT`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`, `RELAYDESK_TLS_KEY`.
    pub tls_key: Option<PathBuf>,
    /// `--public-origin`, `RELAYDESK_PUBLIC_ORIGIN`.
    pub public_origin: Option<String>,
    /// `--admin-password-file`, `RELAYDESK_ADMIN_PASSWORD_FILE`.
    pub admin_password_file: Option<PathBuf>,
    /// `--log`, `RELAYDESK_LOG`.
    pub log: Option<String>,
    /// `--media-bind`, `RELAYDESK_MEDIA_BIND`.
    pub media_bind: Option<std::net::IpAddr>,
    /// `--media-announce`, `RELAYDESK_MEDIA_ANNOUNCE`.
    pub media_announce: Option<std::net::IpAddr>,
    /// `--database`, `RELAYDESK_DATABASE_URL`: a PostgreSQL URL (never logged with its password).
    pub database_url: Option<String>,
    /// `--cluster`, `RELAYDESK_CLUSTER_URL`: the Redis of the node registry (never logged with its password).
    pub cluster_url: Option<String>,
    /// `--node-id`, `RELAYDESK_NODE_ID`: this node's id in the registry.
    pub node_id: Option<String>,
}

impl Overrides {
    /// Reads the `RELAYDESK_*` variables through `get` (pass `|k| std::env::var(k).ok()`; tests pass a
    /// map). Empty values count as unset.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let listen = match var("RELAYDESK_LISTEN") {
            None => None,
            Some(v) => Some(v.parse().map_err(|e: std::net::AddrParseError| ConfigError::Env {
                name: "RELAYDESK_LISTEN",
                message: format!("{e} (expected ADDRESS:PORT)"),
            })?),
        };
        let ip = |name: &'static str| -> Result<Option<std::net::IpAddr>, ConfigError> {
            var(name)
                .map(|v| {
                    v.parse().map_err(|e: std::net::AddrParseError| ConfigError::Env {
                        name,
                        message: format!("{e} (expected an IP address)"),
                    })
                })
                .transpose()
        };
        Ok(Self {
            media_bind: ip("RELAYDESK_MEDIA_BIND")?,
            media_announce: ip("RELAYDESK_MEDIA_ANNOUNCE")?,
            config_file: var("RELAYDESK_CONFIG").map(PathBuf::from),
            data_dir: var("RELAYDESK_DATA_DIR").map(PathBuf::from),
            listen,
            tls_cert: var("RELAYDESK_TLS_CERT").map(PathBuf::from),
            tls_key: var("RELAYDESK_TLS_KEY").map(PathBuf::from),
            public_origin: var("RELAYDESK_PUBLIC_ORIGIN"),
            admin_password_file: var("RELAYDESK_ADMIN_PASSWORD_FILE").map(PathBuf::from),
            log: var("RELAYDESK_LOG"),
            database_url: var("RELAYDESK_DATABASE_URL"),
            cluster_url: var("RELAYDESK_CLUSTER_URL"),
            node_id: var("RELAYDESK_NODE_ID"),
        })
    }

    /// `self` over `lower`: each value set here wins.
    pub fn over(self, lower: Overrides) -> Overrides {
        Overrides {
            config_file: self.config_file.or(lower.config_file),
            data_dir: self.data_dir.or(lower.data_dir),
            listen: self.listen.or(lower.listen),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            public_origin: self.public_origin.or(lower.public_origin),
            admin_password_file: self.admin_password_file.or(lower.admin_password_file),
            log: self.log.or(lower.log),
            media_bind: self.media_bind.or(lower.media_bind),
            media_announce: self.media_announce.or(lower.media_announce),
            database_url: self.database_url.or(lower.database_url),
            cluster_url: self.cluster_url.or(lower.cluster_url),
            node_id: self.node_id.or(lower.node_id),
        }
    }
}

impl Config {
    /// Merges `overrides` (flags already merged over the environment) over `file` over the defaults, and
    /// validates the result.
    pub fn merge(overrides: Overrides, file: FileConfig) -> Result<Config, ConfigError> {
        let d = Config::default();
        let tls = file.tls.unwrap_or_default();
        let config = Config {
            data_dir: overrides.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            listen: overrides.listen.or(file.listen).unwrap_or(d.listen),
            tls_cert: overrides.tls_cert.or(tls.cert.clone()),
            tls_key: overrides.tls_key.or(tls.key.clone()),
            acme: AcmeConfig::from_file(&tls)?,
            public_origin: overrides.public_origin.or(file.public_origin),
            admin_password_file: overrides.admin_password_file.or(file.admin_password_file),
            log: overrides.log.or(file.log).unwrap_or(d.log),
            http: file.http.unwrap_or(d.http),
            sessions: file.sessions.unwrap_or(d.sessions),
            login_throttle: file.login_throttle.unwrap_or(d.login_throttle),
            live: file.live.unwrap_or(d.live),
            archive: file.archive.unwrap_or(d.archive),
            media: {
                let mut m = file.media.unwrap_or(d.media);
                m.bind_ip = overrides.media_bind.unwrap_or(m.bind_ip);
                m.announce_ip = overrides.media_announce.or(m.announce_ip);
                m
            },
            turn: file.turn.unwrap_or(d.turn),
            database: {
                let mut db = file.database.unwrap_or(d.database);
                db.url = overrides.database_url.or(db.url);
                db
            },
            cluster: {
                let mut c = file.cluster.unwrap_or(d.cluster);
                c.redis_url = overrides.cluster_url.or(c.redis_url);
                c.node_id = overrides.node_id.or(c.node_id);
                c
            },
        };
        config.validate()
    }

    /// Loads the file named in `overrides` (if any) and merges.
    pub fn resolve(overrides: Overrides) -> Result<Config, ConfigError> {
        let file = match &overrides.config_file {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::merge(overrides, file)
    }

    /// Checks cross-field rules and normalises `public_origin`.
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls cert and tls key must be given together".into(),
            ));
        }
        if self.acme.is_some() && self.tls_cert.is_some() {
            return Err(ConfigError::Invalid(
                "tls.acme_domains and a certificate file (tls cert/key) exclude each other: choose one".into(),
            ));
        }
        if let Some(o) = &self.public_origin {
            let n =
                crate::origin::normalize_origin(o).map_err(|e| ConfigError::Invalid(format!("public_origin: {e}")))?;
            self.public_origin = Some(n);
        }
        if self.http.max_body_bytes == 0 || self.http.max_body_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "http.max_body_bytes must be from 1 to 16777216".into(),
            ));
        }
        if self.http.request_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "http.request_timeout_secs must be positive".into(),
            ));
        }
        if self.http.max_connections == 0 || self.http.max_connections_per_address == 0 {
            return Err(ConfigError::Invalid(
                "http.max_connections and http.max_connections_per_address must be positive".into(),
            ));
        }
        if self.media.shards > 256 {
            return Err(ConfigError::Invalid("media.shards must be at most 256".into()));
        }
        if self.media.max_participants < 2 {
            return Err(ConfigError::Invalid(
                "media.max_participants must be at least 2 (one call)".into(),
            ));
        }
        if self.media.bind_ip.is_unspecified() && self.media.announce_ip.is_none() {
            return Err(ConfigError::Invalid(
                "media.announce_ip is required when media.bind_ip is a wildcard address".into(),
            ));
        }
        if let Some(t) = self.media.tcp_listen
            && t.ip().is_unspecified()
            && self.media.announce_ip.is_none()
        {
            return Err(ConfigError::Invalid(
                "media.announce_ip is required when media.tcp_listen is a wildcard address".into(),
            ));
        }
        if self.media.announce_ip.is_some_and(|ip| ip.is_unspecified()) {
            return Err(ConfigError::Invalid(
                "media.announce_ip must be an address browsers can reach".into(),
            ));
        }
        if self.archive.purge_interval_secs == 0 || self.archive.retention_days > 36_500 {
            return Err(ConfigError::Invalid(
                "archive.purge_interval_secs must be positive and archive.retention_days at most 36500".into(),
            ));
        }
        self.live.validate().map_err(ConfigError::Invalid)?;
        self.turn.validate(self.listen).map_err(ConfigError::Invalid)?;
        self.database.validate().map_err(ConfigError::Invalid)?;
        self.cluster.validate().map_err(ConfigError::Invalid)?;
        if self.sessions.idle_timeout_secs == 0 || self.sessions.absolute_timeout_secs == 0 {
            return Err(ConfigError::Invalid("session timeouts must be positive".into()));
        }
        Ok(self)
    }
}

/// A fake environment for tests and tools: a map lookup.
pub fn env_from_map(map: &HashMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
    move |k| map.get(k).cloned()
}

#[cfg(test)]
mod tests;
