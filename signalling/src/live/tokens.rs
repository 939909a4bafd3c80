//! Visitor session tokens and the session endpoint's rate limiter.
//!
//! A token is 256 random bits (base64url), handed to the visitor once; the server keeps only its SHA-256
//! hash, with the visitor, origin and site key it is bound to and its expiry. [`VisitorTokens::consume`]
//! removes the entry in one map operation, so of two concurrent uses exactly one gets the grant.

use std::hash::Hash;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::token::{RandomError, hash_token};

/// What a valid session token grants.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The visitor's pseudonymous id.
    pub visitor_id: String,
    /// The normalised origin of the page that asked for it.
    pub origin: String,
    /// The site key.
    pub site_key: String,
    /// The group the key routes to.
    pub group: String,
    /// When it stops being valid.
    pub expires_at: Instant,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("origin", &self.origin)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRefusal {
    /// Never issued, already used, or forged.
    #[error("unknown or already used token")]
    Unknown,
    /// Issued but expired.
    #[error("token expired")]
    Expired,
}

/// The pending visitor session tokens (hashes only).
#[derive(Debug)]
pub struct VisitorTokens {
    ttl: Duration,
    pending: DashMap<[u8; 32], TokenGrant>,
}

/// Pending tokens above which issuing a token first purges expired ones.
const PURGE_ABOVE: usize = 1024;

impl VisitorTokens {
    /// An empty store issuing tokens valid for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            pending: DashMap::new(),
        }
    }

    /// The lifetime of new tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Number of tokens stored.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when none is stored.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Issues a token bound to `visitor_id`, `origin`, `site_key` and `group`, valid from `now` for the
    /// configured lifetime. Returns the token text (shown once) and the grant.
    pub fn issue(
        &self,
        now: Instant,
        visitor_id: String,
        origin: String,
        site_key: String,
        group: String,
    ) -> Result<(String, TokenGrant), RandomError> {
        if self.pending.len() > PURGE_ABOVE {
            self.purge(now);
        }
        let token = crate::token::new_session_token()?;
        let grant = TokenGrant {
            visitor_id,
            origin,
            site_key,
            group,
            expires_at: now + self.ttl,
        };
        self.pending.insert(hash_token(&token), grant.clone());
        Ok((token, grant))
    }

    /// Uses a token: removes it atomically (a second use, concurrent or later, finds nothing) and returns its
    /// grant if it had not expired at `now`.
    pub fn consume(&self, now: Instant, token: &str) -> Result<TokenGrant, TokenRefusal> {
        if token.is_empty() || token.len() > 128 {
            return Err(TokenRefusal::Unknown);
        }
        let (_, grant) = self.pending.remove(&hash_token(token)).ok_or(TokenRefusal::Unknown)?;
        if now >= grant.expires_at {
            return Err(TokenRefusal::Expired);
        }
        Ok(grant)
    }

    /// The grant of a token without using it (it stays valid for [`consume`](Self::consume)): lets a caller
    /// check a token before it spends anything on the request.
    pub fn peek(&self, now: Instant, token: &str) -> Result<TokenGrant, TokenRefusal> {
        if token.is_empty() || token.len() > 128 {
            return Err(TokenRefusal::Unknown);
        }
        let grant = self
            .pending
            .get(&hash_token(token))
            .map(|g| g.value().clone())
            .ok_or(TokenRefusal::Unknown)?;
        if now >= grant.expires_at {
            return Err(TokenRefusal::Expired);
        }
        Ok(grant)
    }

    /// Drops expired tokens.
    pub fn purge(&self, now: Instant) {
        self.pending.retain(|_, g| g.expires_at > now);
    }
}

/// A fixed-window counter per key: at most `limit` hits per `window`.
#[derive(Debug)]
pub struct WindowLimiter<K: Eq + Hash> {
    limit: u32,
    window: Duration,
    windows: DashMap<K, (Instant, u32)>,
}

impl<K: Eq + Hash + Clone> WindowLimiter<K> {
    /// A limiter of `limit` hits per `window` per key.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            windows: DashMap::new(),
        }
    }

    /// Counts a hit of `key` at `now`. `Err(wait)` when over the limit: retry after `wait`.
    pub fn hit(&self, now: Instant, key: &K) -> Result<(), Duration> {
        if self.windows.len() > 100_000 {
            let window = self.window;
            self.windows
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
        }
        let mut entry = self.windows.entry(key.clone()).or_insert((now, 0));
        let (start, count) = entry.value_mut();
        if now.saturating_duration_since(*start) >= self.window {
            *start = now;
            *count = 0;
        }
        if *count >= self.limit {
            return Err(self.window.saturating_sub(now.saturating_duration_since(*start)));
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn issue(t: &VisitorTokens, now: Instant) -> String {
        t.issue(now, "v1".into(), "https://a.example".into(), "pk".into(), "g".into())
            .unwrap()
            .0
    }

    #[test]
    fn a_token_is_used_once_and_expires() {
        let t0 = Instant::now();
        let tokens = VisitorTokens::new(Duration::from_secs(60));
        let tok = issue(&tokens, t0);
        assert!(tok.len() >= 22, "at least 128 bits");
        assert_eq!(tokens.consume(t0, &tok).unwrap().visitor_id, "v1");
        assert_eq!(tokens.consume(t0, &tok), Err(TokenRefusal::Unknown));
        let late = issue(&tokens, t0);
        assert_eq!(
            tokens.consume(t0 + Duration::from_secs(60), &late),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(tokens.consume(t0, "forged"), Err(TokenRefusal::Unknown));
        assert!(tokens.is_empty());
        let peeked = issue(&tokens, t0);
        assert_eq!(tokens.peek(t0, &peeked).unwrap().visitor_id, "v1");
        assert_eq!(
            tokens.consume(t0, &peeked).unwrap().visitor_id,
            "v1",
            "peeking does not use it"
        );
        assert_eq!(tokens.peek(t0, &peeked), Err(TokenRefusal::Unknown));
    }

    #[test]
    fn concurrent_uses_have_one_winner() {
        let t0 = Instant::now();
        let tokens = std::sync::Arc::new(VisitorTokens::new(Duration::from_secs(60)));
        for _ in 0..50 {
            let tok = issue(&tokens, t0);
            let wins: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4).map(|_| s.spawn(|| tokens.consume(t0, &tok).is_ok())).collect();
                handles.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
            });
            assert_eq!(wins, 1);
        }
    }

    #[test]
    fn limiter_counts_per_key_and_window() {
        let t0 = Instant::now();
        let l = WindowLimiter::new(2, Duration::from_secs(60));
        assert!(l.hit(t0, &1).is_ok());
        assert!(l.hit(t0, &1).is_ok());
        let wait = l.hit(t0 + Duration::from_secs(10), &1).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.hit(t0, &2).is_ok());
        assert!(l.hit(t0 + Duration::from_secs(60), &1).is_ok());
    }
}
