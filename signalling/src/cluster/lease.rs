//! The leader lease: one key, `{prefix}:leader`, held by the node that owns every live conversation and
//! every group's routing. It names its holder (id, process) and, once that node serves, where the other
//! nodes forward their clients (its address and certificate fingerprint).
//!
//! - Taken with `SET NX PX ttl`: by one node only.
//! - Renewed every heartbeat by a compare-and-set on the holder's process token. A renewal that finds the
//!   key gone (Redis restarted empty, or flushed) writes it again: the holder keeps its place. A renewal
//!   that finds another holder means this node lost the lease ([`LeaseEnd::Lost`]).
//! - Released on an orderly stop; a killed holder's lease expires after `ttl_ms`.
//!
//! A standby takes an absent lease only after seeing it absent twice, one heartbeat apart, and after a
//! Redis outage only once it stayed absent for a whole `ttl_ms` (see `standby`), so after a Redis restart
//! the running leader, which reconnects and renews within a heartbeat, writes it back first. The lease is not the only fence: the new leader's store must also be free (PostgreSQL's session
//! lock, `Storage::claim_node`), which a live process of the old leader still holds.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{ClusterConfig, ClusterError};
use crate::shutdown::ShutdownHandle;
use crate::time::unix_ms;

/// What the lease key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The holder's node id.
    pub id: String,
    /// The holder's process token.
    pub instance: String,
    /// Where the other nodes reach its HTTPS listener; None while it is starting.
    pub listen: Option<String>,
    /// The SHA-256 fingerprint (`AB:CD:…`) of its TLS certificate, pinned by the nodes forwarding to it.
    pub fingerprint: Option<String>,
    /// Unix milliseconds when it took the lease.
    pub since_ms: u64,
}

impl LeaderRecord {
    /// Where to forward, once the holder serves.
    pub fn target(&self) -> Option<(&str, &str)> {
        Some((self.listen.as_deref()?, self.fingerprint.as_deref()?))
    }
}

/// How holding a lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEnd {
    /// Released on shutdown.
    Released,
    /// Another node holds it now: this node must stop serving its conversations at once.
    Lost {
        /// The node that holds it.
        holder: String,
    },
}

/// The key of the lease.
pub(crate) fn key(config: &ClusterConfig) -> String {
    format!("{}:leader", config.key_prefix)
}

/// The lease as Redis has it now (None: nobody holds it).
///
/// # Errors
/// Redis unreachable.
pub async fn current(
    conn: &mut redis::aio::ConnectionManager,
    config: &ClusterConfig,
) -> Result<Option<LeaderRecord>, ClusterError> {
    let v: Option<String> = redis::cmd("GET").arg(key(config)).query_async(conn).await?;
    // A value that does not parse is somebody else's key, or another version's: nobody we can forward to.
    Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
}

/// A lease held by this process.
pub struct Lease {
    config: ClusterConfig,
    conn: redis::aio::ConnectionManager,
    record: LeaderRecord,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

fn json(record: &LeaderRecord) -> Result<String, ClusterError> {
    serde_json::to_string(record).map_err(|e| ClusterError::Redis(e.to_string()))
}

impl Lease {
    /// Takes the lease for node `id` if nobody holds it.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn try_acquire(
        config: &ClusterConfig,
        mut conn: redis::aio::ConnectionManager,
        id: &str,
    ) -> Result<Option<Lease>, ClusterError> {
        let record = LeaderRecord {
            id: id.to_owned(),
            instance: super::new_instance(),
            listen: None,
            fingerprint: None,
            since_ms: unix_ms(),
        };
        let set: Option<String> = redis::cmd("SET")
            .arg(key(config))
            .arg(json(&record)?)
            .arg("NX")
            .arg("PX")
            .arg(config.ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(set.map(|_| Lease {
            config: config.clone(),
            conn,
            record,
        }))
    }

    /// The lease as this process holds it.
    pub fn record(&self) -> &LeaderRecord {
        &self.record
    }

    /// Keeps the lease from now on: renewed every heartbeat by a task of its own, until the returned
    /// [`HeldLease`] is released or another node holds the lease.
    pub fn hold(self) -> HeldLease {
        let (publish, targets) = watch::channel(None);
        let stop = ShutdownHandle::new();
        let task = tokio::spawn(self.renew_until(targets, stop.clone()));
        HeldLease {
            publish,
            stop,
            task: Some(task),
        }
    }

    /// Writes the lease again if it is absent or this process's; Some(holder) if another holds it.
    async fn renew(&mut self) -> Result<Option<String>, ClusterError> {
        let value = json(&self.record)?;
        let result: String = redis::Script::new(RENEW)
            .key(key(&self.config))
            .arg(&self.record.instance)
            .arg(value)
            .arg(self.config.ttl_ms)
            .invoke_async(&mut self.conn)
            .await?;
        Ok((!result.is_empty()).then_some(result))
    }

    /// Renews the lease every heartbeat (and at once when a target is published) until `shutdown` (then
    /// releases it) or until another node holds it. A renewal Redis does not answer is counted
    /// (`relaydesk_cluster_lease_failures_total`) and tried again at the next heartbeat: while Redis is
    /// away no other node can take the lease either.
    async fn renew_until(
        mut self,
        mut targets: watch::Receiver<Option<(String, String)>>,
        shutdown: ShutdownHandle,
    ) -> LeaseEnd {
        let mut stop = shutdown.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.heartbeat_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        metrics::gauge!("relaydesk_cluster_leader").set(1.0);
        let mut publishing = true;
        loop {
            tokio::select! {
                () = crate::shutdown::stopped(&mut stop) => break,
                _ = tick.tick() => {}
                changed = targets.changed(), if publishing => {
                    if changed.is_err() {
                        publishing = false;
                        continue;
                    }
                    if let Some((listen, fingerprint)) = targets.borrow_and_update().clone() {
                        self.record.listen = Some(listen);
                        self.record.fingerprint = Some(fingerprint);
                    }
                }
            }
            match self.renew().await {
                Ok(None) => {}
                Ok(Some(holder)) => {
                    metrics::gauge!("relaydesk_cluster_leader").set(0.0);
                    tracing::error!(%holder, "the leader lease is held by another node");
                    return LeaseEnd::Lost { holder };
                }
                Err(e) => {
                    metrics::counter!("relaydesk_cluster_lease_failures_total").increment(1);
                    tracing::warn!(error = %e, "leader lease not renewed; trying again at the next heartbeat");
                }
            }
        }
        metrics::gauge!("relaydesk_cluster_leader").set(0.0);
        let released: Result<i64, _> = redis::Script::new(super::DELETE_IF_OURS)
            .key(key(&self.config))
            .arg(&self.record.instance)
            .invoke_async(&mut self.conn)
            .await;
        match released {
            Ok(_) => tracing::info!("leader lease released"),
            Err(e) => tracing::warn!(error = %e, "leader lease not released; it expires by itself"),
        }
        LeaseEnd::Released
    }
}

/// A lease this process holds, renewed by a task of its own.
#[derive(Debug)]
pub struct HeldLease {
    publish: watch::Sender<Option<(String, String)>>,
    stop: ShutdownHandle,
    /// None once [`HeldLease::ended`] saw it end.
    task: Option<tokio::task::JoinHandle<LeaseEnd>>,
}

impl HeldLease {
    /// Publishes where this node serves (`listen`, its certificate's `fingerprint`): from the next renewal
    /// on, which is at once, the other nodes forward their clients here.
    pub fn publish(&self, listen: String, fingerprint: String) {
        let _ = self.publish.send(Some((listen, fingerprint)));
    }

    /// Resolves when the lease is lost (another node holds it) or released.
    pub async fn ended(&mut self) -> LeaseEnd {
        let Some(task) = self.task.as_mut() else {
            return LeaseEnd::Released;
        };
        let end = task.await.unwrap_or(LeaseEnd::Released);
        self.task = None;
        end
    }

    /// Releases the lease (when still held) and waits for it.
    pub async fn release(self) -> LeaseEnd {
        self.stop.shutdown();
        match self.task {
            Some(task) => task.await.unwrap_or(LeaseEnd::Released),
            None => LeaseEnd::Released,
        }
    }
}

/// SET the lease if absent or this instance's (returns ""), else return the holder's id.
const RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if not ok then return '?' end
  if rec.instance ~= ARGV[1] then return tostring(rec.id) end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return ''
";
