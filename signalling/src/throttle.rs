//! Failed-login throttling per (account, client address), per client address, and per account.
//!
//! Rules (defaults in [`ThrottleConfig`]):
//! - An (account, address) pair with `pair_max_failures` failures within `window` is locked for
//!   `base_lockout`; each further lockout while failures keep coming doubles that time, up to
//!   `max_lockout`. A lockout always ends. An attacker's failures lock the attacker's own address out of
//!   that account, never the account's owner at another address.
//! - A client address with `address_max_failures` failures within `window` (any accounts) is locked the
//!   same way: one address cannot spray guesses over many accounts.
//! - An account with `account_slow_after` failures within `window` (all addresses together) is slowed, never
//!   blocked: every further attempt on it waits `account_base_delay_ms`, doubled for each further failure,
//!   up to `account_max_delay_ms`, before its password is verified.
//! - When a key has had no failure for a whole `window`, its strike count resets. A successful login resets
//!   its pair and its account; the address keeps its record.
//!
//! Attempts are counted before the password is verified, so parallel requests cannot overrun a limit:
//! [`LoginThrottle::begin`] reserves the attempt under each key's entry lock, counting it as a failure
//! until it is proved a success, and refuses it when the failures plus the attempts in flight reach a
//! limit. Call order per login attempt: `begin` (a refusal is a 429 with `Retry-After`), wait
//! [`Attempt::delay`], verify the password, then [`Attempt::succeed`], [`Attempt::fail`] or
//! [`Attempt::release`] (not verified at all). An attempt dropped unresolved counts as a failure.
//!
//! Refused attempts are counted per key and per lockout, not logged one by one:
//! [`LoginThrottle::take_refusals`] hands each lockout's count over once the lockout has ended (or
//! everything at shutdown), for one audit record per key and lockout.
//!
//! Time is a parameter (`now`), so tests drive a virtual clock.

use std::collections::VecDeque;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// Throttle policy (the `[login_throttle]` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures of one account from one client address within `window_secs` that lock that pair.
    #[serde(alias = "account_max_failures")]
    pub pair_max_failures: u32,
    /// Failures from one client address within `window_secs` (any accounts) that lock the address.
    /// Higher than the pair limit: a contact centre's agents often share one NAT address.
    pub address_max_failures: u32,
    /// The sliding window, in seconds.
    pub window_secs: u64,
    /// First lockout, in seconds; doubled on each further lockout.
    pub base_lockout_secs: u64,
    /// Longest single lockout, in seconds.
    pub max_lockout_secs: u64,
    /// Failures of one account within `window_secs`, from all addresses together, after which every
    /// attempt on the account is delayed (never refused).
    #[serde(alias = "account_max_failures_per_hour")]
    pub account_slow_after: u32,
    /// First delay of a slowed account, in milliseconds; doubled for each further failure.
    pub account_base_delay_ms: u64,
    /// Longest delay of a slowed account, in milliseconds.
    pub account_max_delay_ms: u64,
    /// Threads that hash and verify passwords (argon2id, 19 MiB each); 0: one per core, at most 4.
    pub hash_threads: u32,
    /// Password checks that may wait for a hashing thread; beyond that a login is answered 503 at once.
    pub hash_queue: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            pair_max_failures: 5,
            address_max_failures: 20,
            window_secs: 15 * 60,
            base_lockout_secs: 60,
            max_lockout_secs: 60 * 60,
            account_slow_after: 20,
            account_base_delay_ms: 500,
            account_max_delay_ms: 10_000,
            hash_threads: 0,
            hash_queue: 64,
        }
    }
}

/// Entries kept per map before idle ones are pruned (bounds memory under a spray of usernames).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
struct Entry {
    /// Failure times within the window (at most the limit).
    failures: VecDeque<Instant>,
    /// Attempts begun and not yet resolved; they count as failures until proved successes.
    in_flight: u32,
    strikes: u32,
    locked_until: Option<Instant>,
    /// Attempts refused since the count was last taken.
    refused: u32,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_failures: u32,
    window: Duration,
    base: Duration,
    max: Duration,
}

impl Entry {
    fn retry_after(&self, now: Instant) -> Option<Duration> {
        self.locked_until.filter(|&t| t > now).map(|t| t - now)
    }

    fn recent(&mut self, now: Instant, window: Duration) -> u32 {
        while self
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            self.failures.pop_front();
        }
        u32::try_from(self.failures.len()).unwrap_or(u32::MAX)
    }

    /// Reserves an attempt, or the time to wait. The attempts left before the key locks are the limit
    /// less its recent failures, at least one once a lockout has ended (a failure then locks it again,
    /// for longer); attempts in flight use them up, as they would lock the key if they fail.
    fn reserve(&mut self, now: Instant, l: Limits) -> Result<(), Duration> {
        let wait = self.retry_after(now).or_else(|| {
            let budget = l.max_failures.saturating_sub(self.recent(now, l.window)).max(1);
            (self.in_flight >= budget).then_some(l.base)
        });
        match wait {
            Some(wait) => {
                self.refused = self.refused.saturating_add(1);
                Err(wait)
            }
            None => {
                self.in_flight = self.in_flight.saturating_add(1);
                Ok(())
            }
        }
    }

    fn fail(&mut self, now: Instant, l: Limits) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.recent(now, l.window) == 0 {
            self.strikes = 0;
        }
        self.failures.push_back(now);
        while self.failures.len() > l.max_failures as usize {
            self.failures.pop_front();
        }
        if self.failures.len() >= l.max_failures as usize {
            let factor = 1u32.checked_shl(self.strikes.min(20)).unwrap_or(u32::MAX);
            let lock = l.base.saturating_mul(factor).min(l.max);
            self.strikes = self.strikes.saturating_add(1);
            self.locked_until = Some(now + lock);
        }
    }

    /// Ends an attempt that did not fail; a success also forgets the key's failures and lockout.
    fn settle(&mut self, success: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if success {
            self.failures.clear();
            self.strikes = 0;
            self.locked_until = None;
        }
    }

    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.in_flight == 0
            && self.refused == 0
            && self.retry_after(now).is_none()
            && self
                .failures
                .back()
                .is_none_or(|&t| now.saturating_duration_since(t) >= window)
    }
}

/// A key of the throttle, as handed to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// One account (case-folded username) from one client address.
    Pair(String, IpAddr),
    /// One client address, any account.
    Address(IpAddr),
}

/// Attempts refused on one key during one lockout (see [`LoginThrottle::take_refusals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusals {
    /// The refusing key.
    pub key: ThrottleKey,
    /// How many attempts it refused.
    pub count: u32,
}

/// Why [`LoginThrottle::begin`] refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// Time until an attempt may succeed (the `Retry-After`).
    pub retry_after: Duration,
}

/// The throttle state: one entry per (account, address), per address and per account.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    pairs: DashMap<(String, IpAddr), Entry>,
    addresses: DashMap<IpAddr, Entry>,
    accounts: DashMap<String, Entry>,
}

/// Normalises a username into its throttle key (case-folded, bounded length).
fn account_key(username: &str) -> String {
    username
        .chars()
        .take(crate::store::MAX_NAME_CHARS + 1)
        .collect::<String>()
        .to_lowercase()
}

fn entry<'a, K: Eq + Hash + Clone>(
    map: &'a DashMap<K, Entry>,
    key: &K,
    now: Instant,
    window: Duration,
) -> dashmap::mapref::one::RefMut<'a, K, Entry> {
    if map.len() >= MAX_ENTRIES && !map.contains_key(key) {
        map.retain(|_, e| !e.idle(now, window));
    }
    map.entry(key.clone()).or_default()
}

fn take<K: Eq + Hash + Clone>(
    map: &DashMap<K, Entry>,
    now: Option<Instant>,
    to_key: impl Fn(&K) -> ThrottleKey,
    out: &mut Vec<Refusals>,
) {
    for mut e in map.iter_mut() {
        let ended = now.is_none_or(|now| e.retry_after(now).is_none());
        if e.refused > 0 && ended {
            out.push(Refusals {
                key: to_key(e.key()),
                count: e.refused,
            });
            e.refused = 0;
        }
    }
}

impl LoginThrottle {
    /// A throttle with the given policy.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The policy.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.config.window_secs)
    }

    fn limits(&self, max_failures: u32) -> Limits {
        let c = &self.config;
        Limits {
            max_failures: max_failures.max(1),
            window: self.window(),
            base: Duration::from_secs(c.base_lockout_secs.max(1)),
            max: Duration::from_secs(c.max_lockout_secs.max(1)),
        }
    }

    fn pair_limits(&self) -> Limits {
        self.limits(self.config.pair_max_failures)
    }

    fn address_limits(&self) -> Limits {
        self.limits(self.config.address_max_failures)
    }

    /// The account's limits: it is never refused (its failures only set its delay), so the limit is how
    /// many failures are remembered: 8 beyond the slow-down point double the delay 256-fold, past any
    /// sensible cap.
    fn account_limits(&self) -> Limits {
        self.limits(self.config.account_slow_after.saturating_add(8))
    }

    /// The delay for an account with `failures` failures and attempts in flight.
    fn account_delay(&self, failures: u32) -> Duration {
        let c = &self.config;
        let Some(excess) = failures.checked_sub(c.account_slow_after.max(1)) else {
            return Duration::ZERO;
        };
        let factor = 1u64.checked_shl(excess.min(30)).unwrap_or(u64::MAX);
        Duration::from_millis(
            c.account_base_delay_ms
                .saturating_mul(factor)
                .min(c.account_max_delay_ms),
        )
    }

    /// Begins a login attempt of `username` from `addr`: counts it before the password is verified, or
    /// refuses it with the time to wait.
    pub fn begin(&self, username: &str, addr: IpAddr, now: Instant) -> Result<Attempt<'_>, Locked> {
        let account = account_key(username);
        let window = self.window();
        let pair = (account.clone(), addr);
        let refused = |retry_after| Locked { retry_after };
        entry(&self.pairs, &pair, now, window)
            .reserve(now, self.pair_limits())
            .map_err(refused)?;
        if let Err(wait) = entry(&self.addresses, &addr, now, window).reserve(now, self.address_limits()) {
            if let Some(mut e) = self.pairs.get_mut(&pair) {
                e.in_flight = e.in_flight.saturating_sub(1);
            }
            return Err(refused(wait));
        }
        let delay = {
            let mut e = entry(&self.accounts, &account, now, window);
            let counted = e.recent(now, window).saturating_add(e.in_flight);
            e.in_flight = e.in_flight.saturating_add(1);
            self.account_delay(counted)
        };
        Ok(Attempt {
            throttle: self,
            account,
            addr,
            delay,
            done: false,
        })
    }

    /// Takes the refusal counts of every lockout that has ended at `now` (every count when `now` is
    /// `None`, at shutdown), resetting them: one audit record each.
    pub fn take_refusals(&self, now: Option<Instant>) -> Vec<Refusals> {
        let mut out = Vec::new();
        take(&self.pairs, now, |(a, ip)| ThrottleKey::Pair(a.clone(), *ip), &mut out);
        take(&self.addresses, now, |ip| ThrottleKey::Address(*ip), &mut out);
        out
    }

    fn resolve(&self, account: &str, addr: IpAddr, now: Instant, outcome: Outcome) {
        let pair = (account.to_string(), addr);
        let window = self.window();
        match outcome {
            Outcome::Failure => {
                entry(&self.pairs, &pair, now, window).fail(now, self.pair_limits());
                entry(&self.addresses, &addr, now, window).fail(now, self.address_limits());
                entry(&self.accounts, &account.to_string(), now, window).fail(now, self.account_limits());
            }
            Outcome::Success | Outcome::Released => {
                let success = outcome == Outcome::Success;
                if let Some(mut e) = self.pairs.get_mut(&pair) {
                    e.settle(success);
                }
                if let Some(mut e) = self.accounts.get_mut(account) {
                    e.settle(success);
                }
                if let Some(mut e) = self.addresses.get_mut(&addr) {
                    e.settle(false);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Released,
}

/// A login attempt counted by [`LoginThrottle::begin`]. Resolve it with [`Attempt::succeed`],
/// [`Attempt::fail`] or [`Attempt::release`]; dropped unresolved, it counts as a failure.
#[derive(Debug)]
#[must_use = "an attempt dropped unresolved counts as a failure"]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    account: String,
    addr: IpAddr,
    delay: Duration,
    done: bool,
}

impl Attempt<'_> {
    /// How long to wait before verifying the password (the account's slow-down; zero mostly).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    fn resolve(mut self, now: Instant, outcome: Outcome) {
        self.done = true;
        self.throttle.resolve(&self.account, self.addr, now, outcome);
    }

    /// The password was right: the pair's and the account's failures are forgotten.
    pub fn succeed(self, now: Instant) {
        self.resolve(now, Outcome::Success);
    }

    /// The password was wrong (or the user unknown or disabled).
    pub fn fail(self, now: Instant) {
        self.resolve(now, Outcome::Failure);
    }

    /// The password was not verified at all (no hashing capacity): the attempt is not counted.
    pub fn release(self, now: Instant) {
        self.resolve(now, Outcome::Released);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.throttle
                .resolve(&self.account, self.addr, Instant::now(), Outcome::Failure);
        }
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

    /// One failed attempt at `now`; panics if it was refused.
    fn fail(t: &LoginThrottle, user: &str, addr: IpAddr, now: Instant) {
        t.begin(user, addr, now).expect("not locked").fail(now);
    }

    fn locked(t: &LoginThrottle, user: &str, addr: IpAddr, now: Instant) -> Option<Duration> {
        match t.begin(user, addr, now) {
            Ok(a) => {
                a.release(now);
                None
            }
            Err(l) => Some(l.retry_after),
        }
    }

    #[test]
    fn five_failures_lock_the_pair_and_the_lock_grows_then_ends() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let t0 = Instant::now();
        for i in 0..4 {
            fail(&t, "alice", A, t0 + secs(i));
            assert_eq!(locked(&t, "alice", A, t0 + secs(i)), None, "after {} failures", i + 1);
        }
        fail(&t, "alice", A, t0 + secs(4));
        assert_eq!(locked(&t, "alice", A, t0 + secs(4)), Some(secs(60)));
        // Case-insensitive account key.
        assert_eq!(locked(&t, "ALICE", A, t0 + secs(34)), Some(secs(30)));
        // The owner at another address is not locked out; other accounts from the address neither.
        assert_eq!(locked(&t, "alice", B, t0 + secs(5)), None);
        assert_eq!(locked(&t, "bob", A, t0 + secs(5)), None);
        // The lock ends.
        assert_eq!(locked(&t, "alice", A, t0 + secs(64)), None);
        // A further failure within the window locks again, twice as long, then four times.
        fail(&t, "alice", A, t0 + secs(70));
        assert_eq!(locked(&t, "alice", A, t0 + secs(70)), Some(secs(120)));
        fail(&t, "alice", A, t0 + secs(200));
        assert_eq!(locked(&t, "alice", A, t0 + secs(200)), Some(secs(240)));
        // After a quiet window the strikes reset: a single new failure does not lock.
        let later = t0 + secs(200 + 900 + 1);
        assert_eq!(locked(&t, "alice", A, later), None);
        fail(&t, "alice", A, later);
        assert_eq!(locked(&t, "alice", A, later), None);
    }

    #[test]
    fn attempts_in_flight_count_before_they_fail() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        // Sixty parallel attempts: only five are let through to verification.
        let mut begun = Vec::new();
        let mut refused = 0;
        for _ in 0..60 {
            match t.begin("alice", A, now) {
                Ok(a) => begun.push(a),
                Err(l) => {
                    assert_eq!(l.retry_after, secs(60));
                    refused += 1;
                }
            }
        }
        assert_eq!((begun.len(), refused), (5, 55));
        // The right password, arriving while five are in flight, is refused too.
        assert!(t.begin("alice", A, now).is_err());
        for a in begun {
            a.fail(now);
        }
        assert_eq!(locked(&t, "alice", A, now + secs(1)), Some(secs(59)));
    }

    #[test]
    fn a_success_in_flight_frees_its_slot_and_a_dropped_attempt_counts_as_failure() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        let first: Vec<_> = (0..5).map(|_| t.begin("alice", A, now).expect("free")).collect();
        assert!(t.begin("alice", A, now).is_err());
        let mut it = first.into_iter();
        it.next().expect("five").succeed(now);
        // Success clears the pair: the four still in flight hold four slots, one is free again.
        let again = t.begin("alice", A, now).expect("a slot was freed");
        again.release(now);
        drop(it); // four attempts dropped unresolved: four failures
        fail(&t, "alice", A, now);
        assert_eq!(locked(&t, "alice", A, now), Some(secs(60)));
    }

    #[test]
    fn lockout_is_capped() {
        let cfg = ThrottleConfig {
            window_secs: 10 * 3600,
            ..Default::default()
        };
        let t = LoginThrottle::new(cfg);
        let mut now = Instant::now();
        for _ in 0..30 {
            fail(&t, "carol", A, now);
            if let Some(wait) = locked(&t, "carol", A, now) {
                assert!(wait <= secs(3600), "{wait:?}");
                now += wait;
            }
        }
        fail(&t, "carol", A, now);
        assert_eq!(locked(&t, "carol", A, now), Some(secs(3600)));
    }

    #[test]
    fn the_address_limit_spans_accounts_and_success_does_not_reset_it() {
        let cfg = ThrottleConfig {
            address_max_failures: 6,
            ..Default::default()
        };
        let t = LoginThrottle::new(cfg);
        let t0 = Instant::now();
        for i in 0..4 {
            fail(&t, "dave", A, t0 + secs(i));
        }
        t.begin("dave", A, t0 + secs(4)).expect("free").succeed(t0 + secs(4));
        fail(&t, "dave", A, t0 + secs(5));
        assert_eq!(locked(&t, "dave", A, t0 + secs(5)), None, "the pair was reset");
        // The address has 5 failures now; one more locks it for every account.
        fail(&t, "erin", A, t0 + secs(6));
        assert_eq!(locked(&t, "frank", A, t0 + secs(6)), Some(secs(60)));
        assert_eq!(locked(&t, "frank", B, t0 + secs(6)), None);
    }

    #[test]
    fn many_addresses_slow_the_account_but_never_lock_it() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        // 19 failures from 19 addresses: below the ceiling of 20, no delay.
        let addr = |i: u8| IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, i));
        for i in 0..19 {
            fail(&t, "gina", addr(i), now);
        }
        let a = t.begin("gina", addr(200), now).expect("never locked");
        assert_eq!(a.delay(), Duration::ZERO);
        a.fail(now);
        // From the 20th failure on, each attempt waits, doubling per failure, capped at 10 s.
        let mut delays = Vec::new();
        for i in 20..30 {
            let a = t.begin("gina", addr(i), now).expect("never locked");
            delays.push(a.delay().as_millis());
            a.fail(now);
        }
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000, 10_000]
        );
        // The owner at yet another address is slowed, not refused, and a success ends the slow-down.
        let owner = t.begin("GINA", B, now).expect("never locked");
        assert_eq!(owner.delay(), Duration::from_secs(10));
        owner.succeed(now);
        let next = t.begin("gina", B, now).expect("free");
        assert_eq!(next.delay(), Duration::ZERO);
        next.release(now);
        // Attempts in flight count towards the delay too.
        let t = LoginThrottle::new(ThrottleConfig::default());
        let held: Vec<_> = (0..20).map(|i| t.begin("hal", addr(i), now).expect("free")).collect();
        assert_eq!(t.begin("hal", B, now).expect("free").delay().as_millis(), 500);
        drop(held);
    }

    #[test]
    fn refusals_are_counted_per_key_and_lockout() {
        let cfg = ThrottleConfig {
            address_max_failures: 1000,
            ..Default::default()
        };
        let t = LoginThrottle::new(cfg);
        let t0 = Instant::now();
        for i in 0..5 {
            fail(&t, "ivan", A, t0 + secs(i));
        }
        for i in 0..50 {
            assert!(locked(&t, "ivan", A, t0 + secs(5) + Duration::from_millis(i)).is_some());
        }
        // Nothing is handed over while the lockout lasts, except at shutdown.
        assert_eq!(t.take_refusals(Some(t0 + secs(30))), []);
        let expected = vec![Refusals {
            key: ThrottleKey::Pair("ivan".into(), A),
            count: 50,
        }];
        assert_eq!(t.take_refusals(Some(t0 + secs(64))), expected);
        assert_eq!(t.take_refusals(None), [], "taken once");
        // At shutdown, running lockouts are handed over too.
        fail(&t, "ivan", A, t0 + secs(70));
        assert!(locked(&t, "ivan", A, t0 + secs(71)).is_some());
        assert_eq!(t.take_refusals(Some(t0 + secs(72))), []);
        let once = vec![Refusals {
            key: ThrottleKey::Pair("ivan".into(), A),
            count: 1,
        }];
        assert_eq!(t.take_refusals(None), once);
    }
}
