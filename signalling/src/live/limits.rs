//! Bounds on what visitors can make the server hold: conversation caps (global and per site key), the
//! queue timeout, the byte budgets of one conversation, the agents' own socket pool, the cap of open
//! visitor sockets per client address (IPv6 by /64), and the uploads in progress (overall and per
//! conversation).
//!
//! The hub is the authority on conversations: it refuses a join over a cap and keeps [`Occupancy`] up to
//! date; the session endpoint reads the same numbers to refuse early with 503 `busy`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

pub use crate::live_config::LimitsConfig;

/// Why a new conversation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Busy {
    /// `max_live_conversations` reached.
    #[error("the server has as many conversations as it takes; try again later")]
    Server,
    /// `max_queued_conversations` reached.
    #[error("every agent is busy and the queue is full; try again later")]
    Queue,
    /// `max_conversations_per_site_key` reached.
    #[error("this site has as many conversations as it may have; try again later")]
    SiteKey,
}

impl Busy {
    /// The label of the refusal counter.
    pub fn label(self) -> &'static str {
        match self {
            Busy::Server => "server_full",
            Busy::Queue => "queue_full",
            Busy::SiteKey => "site_key_full",
        }
    }
}

/// The occupancy the hub keeps up to date and the token route reads.
pub(crate) type SharedOccupancy = std::sync::Arc<std::sync::Mutex<Occupancy>>;

/// Runs `f` on the shared occupancy (a poisoned lock still holds valid counters).
pub(crate) fn with_occupancy<R>(occupancy: &std::sync::Mutex<Occupancy>, f: impl FnOnce(&mut Occupancy) -> R) -> R {
    match occupancy.lock() {
        Ok(mut o) => f(&mut o),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

/// The live and queued conversations, overall and per site key. Written by the hub only.
#[derive(Debug, Default)]
pub struct Occupancy {
    live: usize,
    queued: usize,
    per_key: HashMap<String, usize>,
}

impl Occupancy {
    /// Whether one more conversation through `site_key` fits the caps.
    ///
    /// # Errors
    /// The cap that is reached.
    pub fn admits(&self, limits: &LimitsConfig, site_key: &str) -> Result<(), Busy> {
        if self.live >= limits.max_live_conversations {
            return Err(Busy::Server);
        }
        if self.queued >= limits.max_queued_conversations {
            return Err(Busy::Queue);
        }
        if self.per_key.get(site_key).copied().unwrap_or(0) >= limits.max_conversations_per_site_key {
            return Err(Busy::SiteKey);
        }
        Ok(())
    }

    /// A conversation through `site_key` started.
    pub(crate) fn started(&mut self, site_key: &str) {
        *self.per_key.entry(site_key.to_owned()).or_default() += 1;
    }

    /// A conversation through `site_key` ended.
    pub(crate) fn ended(&mut self, site_key: &str) {
        if let Some(n) = self.per_key.get_mut(site_key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_key.remove(site_key);
            }
        }
    }

    /// Live and queued conversations.
    pub(crate) fn totals(&self) -> (usize, usize) {
        (self.live, self.queued)
    }

    /// The current totals.
    pub(crate) fn set_totals(&mut self, live: usize, queued: usize) {
        self.live = live;
        self.queued = queued;
    }
}

/// Slots counted per key, with a cap per key: open visitor sockets per address group
/// ([`address_group`](crate::http::client_ip::address_group)), uploads in progress per conversation.
#[derive(Debug)]
pub struct KeyedSlots<K: Eq + Hash> {
    open: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash> Default for KeyedSlots<K> {
    fn default() -> Self {
        Self {
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// One slot of a key; released when dropped.
#[derive(Debug)]
pub struct KeyedSlot<K: Eq + Hash> {
    open: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> KeyedSlots<K> {
    /// Slots taken for `key`.
    pub fn open(&self, key: &K) -> usize {
        self.open.lock().map(|m| m.get(key).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// Takes a slot of `key` if fewer than `cap` are taken.
    pub fn try_take(&self, key: K, cap: usize) -> Option<KeyedSlot<K>> {
        let mut map = self.open.lock().ok()?;
        let n = map.entry(key.clone()).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(KeyedSlot {
            open: Arc::clone(&self.open),
            key,
        })
    }
}

impl<K: Eq + Hash> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.open.lock()
            && let Some(n) = map.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn occupancy_refuses_at_each_cap() {
        let limits = LimitsConfig {
            max_live_conversations: 3,
            max_queued_conversations: 2,
            max_conversations_per_site_key: 1,
            ..LimitsConfig::default()
        };
        let mut o = Occupancy::default();
        assert_eq!(o.admits(&limits, "a"), Ok(()));
        o.started("a");
        o.set_totals(1, 1);
        assert_eq!(o.admits(&limits, "a"), Err(Busy::SiteKey));
        assert_eq!(o.admits(&limits, "b"), Ok(()));
        o.set_totals(2, 2);
        assert_eq!(o.admits(&limits, "b"), Err(Busy::Queue));
        o.set_totals(3, 0);
        assert_eq!(o.admits(&limits, "b"), Err(Busy::Server));
        o.ended("a");
        o.set_totals(0, 0);
        assert_eq!(o.admits(&limits, "a"), Ok(()));
        assert!(o.per_key.is_empty(), "no entry kept for a key without conversations");
    }

    #[test]
    fn keyed_slots_cap_and_release() {
        let slots = KeyedSlots::default();
        let a: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        let b: std::net::IpAddr = "198.51.100.8".parse().unwrap();
        let first = slots.try_take(a, 2).unwrap();
        let _second = slots.try_take(a, 2).unwrap();
        assert!(slots.try_take(a, 2).is_none());
        assert!(slots.try_take(b, 2).is_some());
        drop(first);
        assert_eq!(slots.open(&a), 1);
        assert!(slots.try_take(a, 2).is_some());
    }

    #[test]
    fn bad_limits_are_refused() {
        assert!(LimitsConfig::default().validate().is_ok());
        for bad in [
            LimitsConfig {
                queue_timeout_ms: 0,
                ..LimitsConfig::default()
            },
            LimitsConfig {
                max_visitor_sockets_per_address: 0,
                ..LimitsConfig::default()
            },
            LimitsConfig {
                max_file_bytes_per_conversation: 0,
                ..LimitsConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}

/// The connection limits of a public listener (the server's, a cluster standby's): at most
/// `http.max_connections` at once, and `http.max_connections_per_address` per client address group (trusted
/// proxies, which carry many clients, are not counted per address). Refusals are counted in
/// `relaydesk_connections_refused_total{reason}`.
#[derive(Debug)]
pub(crate) struct ConnectionGate {
    slots: Arc<tokio::sync::Semaphore>,
    per_address: KeyedSlots<std::net::IpAddr>,
    max_per_address: usize,
    trusted: Vec<crate::http::client_ip::Cidr>,
}

/// A connection admitted by a [`ConnectionGate`]; its slots are given back when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _address: Option<KeyedSlot<std::net::IpAddr>>,
}

impl ConnectionGate {
    pub(crate) fn new(http: &crate::config::HttpConfig) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(http.max_connections)),
            per_address: KeyedSlots::default(),
            max_per_address: http.max_connections_per_address,
            trusted: http.trusted_proxies.clone(),
        }
    }

    /// Admits a connection from `peer`, or None (counted) when a limit is reached.
    pub(crate) fn admit(&self, peer: std::net::SocketAddr) -> Option<Admitted> {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            metrics::counter!("relaydesk_connections_refused_total", "reason" => "server_full").increment(1);
            tracing::debug!(%peer, "connection refused: at http.max_connections");
            return None;
        };
        let ip = peer.ip();
        let address = if self.trusted.iter().any(|c| c.contains(ip)) {
            None
        } else {
            let group = crate::http::client_ip::address_group(ip);
            let Some(slot) = self.per_address.try_take(group, self.max_per_address) else {
                metrics::counter!("relaydesk_connections_refused_total", "reason" => "address_full").increment(1);
                tracing::debug!(%peer, "connection refused: too many from this address");
                return None;
            };
            Some(slot)
        };
        Some(Admitted {
            _permit: permit,
            _address: address,
        })
    }
}
