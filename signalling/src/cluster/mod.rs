//! Several nodes, the first part: the node registry in Redis (`[cluster]`, `--cluster`,
//! `RELAYDESK_CLUSTER_URL`).
//!
//! Each node writes a record of itself ([`NodeRecord`]: its id, where it listens, the origin browsers use, its
//! media address, its load) under `{prefix}:node:{id}` with a short time to live, and writes it again every
//! heartbeat. A node that stops deregisters at once; a node that dies (kill -9, a lost machine) drops out of
//! the registry when its record expires. `relaydesk cluster status` lists the records.
//!
//! Why plain keys with a TTL rather than a set or a stream: expiry is Redis's own, so a dead node needs no
//! other node to clean up after it, and a listing is a bounded `SCAN` of one key pattern.
//!
//! A node refuses to start while a live record holds its id (two nodes with one id would hide each other).

use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::shutdown::ShutdownHandle;
use crate::time::{unix_ms, unix_now};

mod lease;
mod proxy;
pub mod standby;
#[cfg(test)]
mod tests;

pub use lease::{HeldLease, LeaderRecord, Lease, LeaseEnd};

/// Most records a listing reads (a guard against a key pattern shared with something else).
pub const MAX_NODES_LISTED: usize = 1_000;

/// The `[cluster]` section.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// None: a single node, no registry. `redis://[user:password@]host[:port][/db]`: the Redis that
    /// holds the registry. Shown with its password hidden.
    #[serde(serialize_with = "serialize_redacted")]
    pub redis_url: Option<String>,
    /// This node's id in the registry (letters, digits, `.`, `_`, `-`; at most 64). None: the host name.
    pub node_id: Option<String>,
    /// The prefix of the registry's keys, so several clusters can share one Redis.
    pub key_prefix: String,
    /// Milliseconds between two writes of this node's record.
    pub heartbeat_ms: u64,
    /// Milliseconds a record lives without a heartbeat: how soon a dead node leaves the registry, and how
    /// soon a standby takes over from a leader that died.
    pub ttl_ms: u64,
    /// `host:port` at which the other nodes reach this node's HTTPS listener. None: the listen address
    /// (with `127.0.0.1` for an unspecified one, so only right for nodes on one machine).
    pub advertise: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            node_id: None,
            key_prefix: "relaydesk".into(),
            heartbeat_ms: 500,
            ttl_ms: 3_000,
            advertise: None,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &self.redis_url.as_deref().map(crate::store::redact_url))
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("ttl_ms", &self.ttl_ms)
            .field("advertise", &self.advertise)
            .finish()
    }
}

fn serialize_redacted<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    url.as_deref().map(crate::store::redact_url).serialize(s)
}

/// Whether `id` is a valid node id (also used for the key prefix).
fn valid_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ClusterConfig {
    /// Checks the section.
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.redis_url {
            let scheme = url.split_once("://").map(|(s, _)| s);
            match scheme {
                Some("redis") => {}
                Some("rediss") => {
                    return Err(
                        "cluster.redis_url: TLS to Redis (rediss://) is not supported; reach Redis over a \
                                private network or a local tunnel"
                            .into(),
                    );
                }
                _ => {
                    return Err(format!(
                        "cluster.redis_url must be redis://host[:port][/db], not {}",
                        crate::store::redact_url(url)
                    ));
                }
            }
            if url.len() > 2_048 {
                return Err("cluster.redis_url is longer than 2048 bytes".into());
            }
            redis::Client::open(url.as_str())
                .map_err(|e| format!("cluster.redis_url {}: {}", crate::store::redact_url(url), e.category()))?;
        }
        if let Some(id) = &self.node_id
            && !valid_name(id)
        {
            return Err("cluster.node_id: 1 to 64 letters, digits, '.', '_' or '-'".into());
        }
        if !valid_name(&self.key_prefix) {
            return Err("cluster.key_prefix: 1 to 64 letters, digits, '.', '_' or '-'".into());
        }
        if !(100..=60_000).contains(&self.heartbeat_ms) {
            return Err("cluster.heartbeat_ms must be between 100 and 60000".into());
        }
        if self.ttl_ms < 2 * self.heartbeat_ms || self.ttl_ms > 600_000 {
            return Err("cluster.ttl_ms must be at least twice cluster.heartbeat_ms and at most 600000".into());
        }
        if let Some(a) = &self.advertise
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            return Err("cluster.advertise must be an IP address and port, such as 10.0.0.5:8443".into());
        }
        Ok(())
    }

    /// This node's id: the configured one, else the host name (made valid), else `node`.
    pub fn resolved_node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let id: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        if id.is_empty() { "node".into() } else { id }
    }

    fn key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.key_prefix)
    }

    /// The address the other nodes reach a node listening on `local` at: `advertise`, else `local` with
    /// `127.0.0.1` (or `::1`) for an unspecified IP.
    pub fn advertised(&self, local: std::net::SocketAddr) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        let mut addr = local;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        addr.to_string()
    }
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis could not be reached or refused a command (the URL is never part of the message).
    #[error("cluster registry (Redis): {0}")]
    Redis(String),
    /// A live node already holds this id.
    #[error(
        "node id {id:?} is held by a running node (its last heartbeat {age_ms} ms ago); stop it, or give this node another cluster.node_id"
    )]
    IdInUse {
        /// The id.
        id: String,
        /// Milliseconds since the other node's heartbeat.
        age_ms: u64,
    },
    /// No `[cluster] redis_url` was given.
    #[error("no cluster configured: give --cluster redis://… (or [cluster] redis_url, RELAYDESK_CLUSTER_URL)")]
    NotConfigured,
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        // The error's Display may name the address but never the password; keep the kind and its detail.
        Self::Redis(match e.detail() {
            Some(d) => format!("{}: {d}", e.category()),
            None => e.category().to_owned(),
        })
    }
}

/// A node's part in the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Holds the leader lease: every live conversation and group, and their calls, are on this node.
    #[default]
    Leader,
    /// Serves its clients by forwarding them to the leader; takes the lease when the leader is gone.
    Standby,
}

impl NodeRole {
    /// `leader` or `standby`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Standby => "standby",
        }
    }
}

/// One node as the registry shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id.
    pub id: String,
    /// A random token of this process, so a restarted node is told apart from the one before.
    pub instance: String,
    /// The server's version.
    pub version: String,
    /// What it does: `leader` (holds every live conversation and group, runs their calls) or `standby`
    /// (forwards its clients to the leader, takes over when the leader is gone).
    #[serde(default)]
    pub role: NodeRole,
    /// The address the other nodes reach its HTTPS listener at (`[cluster] advertise`).
    pub listen: String,
    /// The origin browsers use (`[server] public_origin`), if configured.
    pub public_origin: Option<String>,
    /// The address its SFU announces to browsers (`[media] announce_ip`, else its bind address), if calls
    /// are enabled.
    pub media_address: Option<String>,
    /// Unix seconds when the node started.
    pub started_at: i64,
    /// Unix milliseconds of the record's last write.
    pub heartbeat_at_ms: u64,
    /// Open conversations: with an agent, being offered, or queued.
    pub conversations: u64,
    /// Of those, the ones waiting in a queue.
    pub queued: u64,
}

impl NodeRecord {
    /// A record of this process, its load zero.
    pub fn new(id: String, listen: String, public_origin: Option<String>, media_address: Option<String>) -> Self {
        Self {
            id,
            instance: new_instance(),
            role: NodeRole::Leader,
            version: env!("CARGO_PKG_VERSION").into(),
            listen,
            public_origin,
            media_address,
            started_at: unix_now(),
            heartbeat_at_ms: unix_ms(),
            conversations: 0,
            queued: 0,
        }
    }

    /// Milliseconds since its last heartbeat.
    pub fn age_ms(&self) -> u64 {
        unix_ms().saturating_sub(self.heartbeat_at_ms)
    }
}

/// A random token naming this process (told apart from an earlier process with the same node id).
pub(crate) fn new_instance() -> String {
    crate::token::new_password().unwrap_or_else(|_| format!("{}-{}", std::process::id(), unix_ms()))
}

/// The load figures a heartbeat carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Open conversations (queued ones included).
    pub conversations: u64,
    /// Queued conversations.
    pub queued: u64,
}

/// This node's registration: connected, its record claimed.
pub struct Registration {
    config: ClusterConfig,
    conn: redis::aio::ConnectionManager,
    record: NodeRecord,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("node", &self.record.id)
            .finish_non_exhaustive()
    }
}

fn client(config: &ClusterConfig) -> Result<redis::Client, ClusterError> {
    let url = config.redis_url.as_deref().ok_or(ClusterError::NotConfigured)?;
    Ok(redis::Client::open(url)?)
}

fn timeout(config: &ClusterConfig) -> Duration {
    Duration::from_millis(config.heartbeat_ms.max(1_000))
}

/// A connection to the cluster's Redis that reconnects by itself; every command is bounded.
pub(crate) async fn connect(config: &ClusterConfig) -> Result<redis::aio::ConnectionManager, ClusterError> {
    // Reconnection attempts at most a heartbeat apart: after a Redis restart the leader must renew its lease
    // before a standby, which also gives it a whole time to live (see `standby`), decides it is gone.
    let manager = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout(config)))
        .set_response_timeout(Some(timeout(config)))
        .set_max_delay(Duration::from_millis(config.heartbeat_ms))
        .set_number_of_retries(2);
    Ok(client(config)?.get_connection_manager_with_config(manager).await?)
}

impl Registration {
    /// Connects to Redis and claims `record`'s id: refused while a live record of another process holds it.
    ///
    /// # Errors
    /// Redis unreachable, or the id in use.
    pub async fn claim(config: &ClusterConfig, record: NodeRecord) -> Result<Self, ClusterError> {
        let mut conn = connect(config).await?;
        let key = config.key(&record.id);
        let json = serde_json::to_string(&record).map_err(|e| ClusterError::Redis(e.to_string()))?;
        // A node restarted right after a crash finds its old record still there: it waits for it to expire
        // (one time to live and a heartbeat at most). A record that is still being renewed means a running
        // node holds the id.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(config.ttl_ms + config.heartbeat_ms);
        loop {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("NX")
                .arg("PX")
                .arg(config.ttl_ms)
                .query_async(&mut conn)
                .await?;
            if set.is_some() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let held: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                let age_ms = held
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<NodeRecord>(s).ok())
                    .map_or(0, |r| r.age_ms());
                return Err(ClusterError::IdInUse { id: record.id, age_ms });
            }
            tokio::time::sleep(Duration::from_millis(config.heartbeat_ms)).await;
        }
        tracing::info!(node = %record.id, "registered in the cluster");
        Ok(Self {
            config: config.clone(),
            conn,
            record,
        })
    }

    /// This node's record as last written.
    pub fn record(&self) -> &NodeRecord {
        &self.record
    }

    /// Writes the record with `load`, if the key is still this process's (a record taken over by another
    /// process after an expiry is left alone).
    async fn beat(&mut self, load: Load) -> Result<(), ClusterError> {
        self.record.conversations = load.conversations;
        self.record.queued = load.queued;
        self.record.heartbeat_at_ms = unix_ms();
        let json = serde_json::to_string(&self.record).map_err(|e| ClusterError::Redis(e.to_string()))?;
        // Written only when absent or ours: compare the instance inside the stored record.
        let written: i64 = redis::Script::new(HEARTBEAT)
            .key(self.config.key(&self.record.id))
            .arg(&self.record.instance)
            .arg(json)
            .arg(self.config.ttl_ms)
            .invoke_async(&mut self.conn)
            .await?;
        if written == 0 {
            return Err(ClusterError::IdInUse {
                id: self.record.id.clone(),
                age_ms: 0,
            });
        }
        Ok(())
    }

    /// Removes the record if it is still this process's.
    async fn deregister(&mut self) -> Result<(), ClusterError> {
        let _: i64 = redis::Script::new(DELETE_IF_OURS)
            .key(self.config.key(&self.record.id))
            .arg(&self.record.instance)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Writes the record every heartbeat with the load `load` gives, until `shutdown`; then removes it. A
    /// heartbeat that fails (Redis away) is counted (`relaydesk_cluster_heartbeat_failures_total`) and
    /// logged, and the next one tries again: the connection reconnects by itself.
    pub async fn run(self, load: impl Fn() -> Load + Send + 'static, shutdown: ShutdownHandle) {
        let mut this = self.beat_until(load, shutdown).await;
        match this.deregister().await {
            Ok(()) => tracing::info!(node = %this.record.id, "left the cluster"),
            Err(e) => tracing::warn!(error = %e, "could not leave the cluster; the record expires by itself"),
        }
    }

    /// Like [`Registration::run`], but keeps the record on `shutdown` and gives the registration back (a
    /// standby that becomes the leader hands it to the server: the id is never free in between).
    pub async fn beat_until(mut self, load: impl Fn() -> Load + Send + 'static, shutdown: ShutdownHandle) -> Self {
        let mut stop = shutdown.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.heartbeat_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = crate::shutdown::stopped(&mut stop) => break,
                _ = tick.tick() => {}
            }
            match self.beat(load()).await {
                Ok(()) => metrics::gauge!("relaydesk_cluster_registered").set(1.0),
                Err(e) => {
                    metrics::gauge!("relaydesk_cluster_registered").set(0.0);
                    metrics::counter!("relaydesk_cluster_heartbeat_failures_total").increment(1);
                    tracing::warn!(error = %e, "cluster heartbeat failed; trying again at the next one");
                }
            }
        }
        self
    }

    /// Makes this registration the leader's, listening at `listen` with its media at `media_address`
    /// (written at the next heartbeat).
    pub fn lead(&mut self, listen: String, media_address: Option<String>) {
        self.record.role = NodeRole::Leader;
        self.record.listen = listen;
        self.record.media_address = media_address;
    }
}

/// SET the record if the key is absent or holds this instance's record.
const HEARTBEAT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if not ok or rec.instance ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// DEL the key if it holds this instance's record (a node's record, or the leader lease).
pub(crate) const DELETE_IF_OURS: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local ok, rec = pcall(cjson.decode, cur)
if ok and rec.instance == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The nodes in the registry (live records only), sorted by id; records that do not parse are skipped
/// and counted in the second value. Blocking (the offline CLI).
///
/// # Errors
/// Redis unreachable or refusing.
pub fn list_blocking(config: &ClusterConfig) -> Result<(Vec<NodeRecord>, usize), ClusterError> {
    let mut conn = client(config)?.get_connection_with_timeout(timeout(config))?;
    conn.set_read_timeout(Some(timeout(config)))?;
    conn.set_write_timeout(Some(timeout(config)))?;
    let pattern = format!("{}:node:*", config.key_prefix);
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    // Bounded: at most MAX_NODES_LISTED keys, at most that many SCAN rounds.
    for _ in 0..MAX_NODES_LISTED {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(100)
            .query(&mut conn)?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 || keys.len() >= MAX_NODES_LISTED {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    keys.truncate(MAX_NODES_LISTED);
    if keys.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut conn)?;
    let mut nodes = Vec::new();
    let mut unreadable = 0;
    for v in values.into_iter().flatten() {
        match serde_json::from_str::<NodeRecord>(&v) {
            Ok(r) => nodes.push(r),
            Err(_) => unreadable += 1,
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((nodes, unreadable))
}
