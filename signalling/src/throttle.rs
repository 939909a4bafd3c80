//! Failed-login throttling per account and per client address.
//!
//! Rules (defaults in [`ThrottleConfig`]): when a key (an account or an address) has `max_failures`
//! failures within `window`, it is locked for `base_lockout`; each further lockout while failures keep
//! coming doubles that time, up to `max_lockout`. A lockout always ends (never permanent). Independently,
//! an account never gets more than `max_failures_per_hour` attempts per hour. When a key has had no failure
//! for a whole `window`, its strike count resets. A successful login resets its account.
//!
//! Call order per login attempt: [`LoginThrottle::check`] (refuse with 429 and `Retry-After` when locked),
//! verify the password, then [`LoginThrottle::record_failure`] or [`LoginThrottle::record_success`].
//! Time is a parameter (`now`), so tests drive a virtual clock.

use std::collections::VecDeque;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// Throttle policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures of one account within `window_secs` that trigger a lockout.
    pub account_max_failures: u32,
    /// Failures from one client address within `window_secs` that trigger a lockout. Higher than the
    /// account limit by default: a contact centre's agents often share one NAT address.
    pub address_max_failures: u32,
    /// The sliding window, in seconds.
    pub window_secs: u64,
    /// First lockout, in seconds; doubled on each further lockout.
    pub base_lockout_secs: u64,
    /// Longest single lockout, in seconds.
    pub max_lockout_secs: u64,
    /// Hard cap of failures per account per hour.
    pub account_max_failures_per_hour: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            account_max_failures: 5,
            address_max_failures: 20,
            window_secs: 15 * 60,
            base_lockout_secs: 60,
            max_lockout_secs: 60 * 60,
            account_max_failures_per_hour: 100,
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);
/// Entries kept before idle ones are pruned (bounds memory under a spray of usernames).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
struct Entry {
    /// Failure times within the last hour (at most the hourly cap).
    failures: VecDeque<Instant>,
    strikes: u32,
    locked_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_failures: u32,
    per_hour: Option<u32>,
    window: Duration,
    base: Duration,
    max: Duration,
}

impl Entry {
    fn retry_after(&self, now: Instant) -> Option<Duration> {
        self.locked_until.filter(|&t| t > now).map(|t| t - now)
    }

    fn fail(&mut self, now: Instant, l: Limits) {
        let keep = l.window.max(HOUR);
        while self
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= keep)
        {
            self.failures.pop_front();
        }
        let in_window = |t: &&Instant| now.saturating_duration_since(**t) < l.window;
        if self.failures.iter().filter(in_window).count() == 0 {
            self.strikes = 0;
        }
        self.failures.push_back(now);
        let cap = l.per_hour.unwrap_or(0).max(l.max_failures) as usize;
        while self.failures.len() > cap {
            self.failures.pop_front();
        }
        let recent = self.failures.iter().filter(in_window).count();
        if recent >= l.max_failures as usize {
            let factor = 1u32.checked_shl(self.strikes.min(20)).unwrap_or(u32::MAX);
            let lock = l.base.saturating_mul(factor).min(l.max);
            self.strikes = self.strikes.saturating_add(1);
            self.locked_until = Some(now + lock);
        }
        if let Some(per_hour) = l.per_hour {
            let mut last_hour = self
                .failures
                .iter()
                .filter(|&&t| now.saturating_duration_since(t) < HOUR);
            if let Some(&oldest) = last_hour.next()
                && last_hour.count() + 1 >= per_hour as usize
            {
                let until = oldest + HOUR;
                if self.locked_until.is_none_or(|t| t < until) {
                    self.locked_until = Some(until);
                }
            }
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.retry_after(now).is_none()
            && self
                .failures
                .back()
                .is_none_or(|&t| now.saturating_duration_since(t) >= HOUR)
    }
}

fn check<K: Eq + Hash>(map: &DashMap<K, Entry>, key: &K, now: Instant) -> Option<Duration> {
    map.get(key).and_then(|e| e.retry_after(now))
}

fn fail<K: Eq + Hash + Clone>(map: &DashMap<K, Entry>, key: &K, now: Instant, l: Limits) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, e| !e.idle(now));
    }
    map.entry(key.clone()).or_default().fail(now, l);
}

/// The throttle state: one entry per account (username, case-folded) and per client address.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    accounts: DashMap<String, Entry>,
    addresses: DashMap<IpAddr, Entry>,
}

/// Normalises a username into its throttle key (case-folded, bounded length).
fn account_key(username: &str) -> String {
    username
        .chars()
        .take(crate::store::MAX_NAME_CHARS + 1)
        .collect::<String>()
        .to_lowercase()
}

impl LoginThrottle {
    /// A throttle with the given policy.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            accounts: DashMap::new(),
            addresses: DashMap::new(),
        }
    }

    fn limits(&self, account: bool) -> Limits {
        let c = &self.config;
        Limits {
            max_failures: if account {
                c.account_max_failures
            } else {
                c.address_max_failures
            }
            .max(1),
            per_hour: account.then_some(c.account_max_failures_per_hour.max(1)),
            window: Duration::from_secs(c.window_secs),
            base: Duration::from_secs(c.base_lockout_secs.max(1)),
            max: Duration::from_secs(c.max_lockout_secs.max(1)),
        }
    }

    /// If the account or the address is locked at `now`, the time until the later lock ends.
    pub fn check(&self, username: &str, addr: IpAddr, now: Instant) -> Option<Duration> {
        let a = check(&self.accounts, &account_key(username), now);
        let b = check(&self.addresses, &addr, now);
        a.max(b)
    }

    /// Records a failed attempt for both the account and the address.
    pub fn record_failure(&self, username: &str, addr: IpAddr, now: Instant) {
        fail(&self.accounts, &account_key(username), now, self.limits(true));
        fail(&self.addresses, &addr, now, self.limits(false));
    }

    /// Records a successful login: the account's failures and strikes are forgotten. The address keeps
    /// its record, so one valid account cannot be used to reset guessing against others.
    pub fn record_success(&self, username: &str) {
        self.accounts.remove(&account_key(username));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn five_failures_lock_and_the_lock_grows_then_ends() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let t0 = Instant::now();
        for i in 0..4 {
            t.record_failure("alice", A, t0 + secs(i));
            assert_eq!(t.check("alice", A, t0 + secs(i)), None, "after {} failures", i + 1);
        }
        t.record_failure("alice", A, t0 + secs(4));
        assert_eq!(t.check("alice", A, t0 + secs(4)), Some(secs(60)));
        // Case-insensitive account key, and another address is refused for this account too.
        assert_eq!(t.check("ALICE", B, t0 + secs(34)), Some(secs(30)));
        // Other accounts from another address are not affected.
        assert_eq!(t.check("bob", B, t0 + secs(5)), None);
        // The lock ends.
        assert_eq!(t.check("alice", A, t0 + secs(64)), None);
        // A further failure within the window locks again, twice as long, then four times.
        t.record_failure("alice", A, t0 + secs(70));
        assert_eq!(t.check("alice", A, t0 + secs(70)), Some(secs(120)));
        t.record_failure("alice", A, t0 + secs(200));
        assert_eq!(t.check("alice", A, t0 + secs(200)), Some(secs(240)));
        // After a quiet window the strikes reset: a single new failure does not lock.
        let later = t0 + secs(200 + 900 + 1);
        assert_eq!(t.check("alice", A, later), None);
        t.record_failure("alice", A, later);
        assert_eq!(t.check("alice", A, later), None);
    }

    #[test]
    fn lockout_is_capped() {
        let cfg = ThrottleConfig {
            window_secs: 10 * 3600,
            account_max_failures_per_hour: 1000,
            ..Default::default()
        };
        let t = LoginThrottle::new(cfg);
        let mut now = Instant::now();
        for _ in 0..30 {
            t.record_failure("carol", A, now);
            if let Some(wait) = t.check("carol", A, now) {
                assert!(wait <= secs(3600), "{wait:?}");
                now += wait;
            }
        }
        t.record_failure("carol", A, now);
        assert_eq!(t.check("carol", A, now), Some(secs(3600)));
    }

    #[test]
    fn success_resets_the_account_not_the_address() {
        let cfg = ThrottleConfig {
            address_max_failures: 6,
            ..Default::default()
        };
        let t = LoginThrottle::new(cfg);
        let t0 = Instant::now();
        for i in 0..4 {
            t.record_failure("dave", A, t0 + secs(i));
        }
        t.record_success("dave");
        t.record_failure("dave", A, t0 + secs(5));
        assert_eq!(t.check("dave", A, t0 + secs(5)), None, "account was reset");
        // The address has 5 failures now; one more locks it for every account.
        t.record_failure("erin", A, t0 + secs(6));
        assert_eq!(t.check("frank", A, t0 + secs(6)), Some(secs(60)));
        assert_eq!(t.check("frank", B, t0 + secs(6)), None);
    }

    #[test]
    fn hourly_cap_per_account() {
        // A lenient window policy so only the hourly cap can bite.
        let cfg = ThrottleConfig {
            account_max_failures: 1000,
            address_max_failures: 1000,
            account_max_failures_per_hour: 100,
            ..Default::default()
        };
        let t = LoginThrottle::new(cfg);
        let t0 = Instant::now();
        for i in 0..99 {
            t.record_failure("gina", A, t0 + secs(i));
        }
        assert_eq!(t.check("gina", A, t0 + secs(99)), None);
        t.record_failure("gina", A, t0 + secs(99));
        assert_eq!(t.check("gina", A, t0 + secs(99)), Some(secs(3600 - 99)));
        assert_eq!(t.check("gina", A, t0 + secs(3600)), None);
    }
}
