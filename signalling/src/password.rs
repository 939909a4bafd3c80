//! Password hashing with argon2id at the OWASP minimum parameters (m = 19 MiB, t = 2, p = 1).
//!
//! Hashing costs tens of milliseconds and 19 MiB of memory: call these functions on a blocking thread
//! (`tokio::task::spawn_blocking`), never on the async runtime, and bound how many run at once.

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};

/// Shortest password accepted when one is set.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted (bytes); longer input is refused before hashing.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A password as received from a client: `Debug` never shows it, so logging a request body that holds
/// one cannot leak it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password text, for hashing or verification only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Unwraps the password text.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Errors from hashing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The password is shorter or longer than allowed.
    #[error("password must be between {MIN_PASSWORD_LEN} and {MAX_PASSWORD_LEN} bytes")]
    Length,
    /// The hashing library failed (bad parameters or no randomness).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn hasher() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Checks the length policy of a new password.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    if (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
        Ok(())
    } else {
        Err(PasswordError::Length)
    }
}

/// Hashes a new password (policy checked) into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    check_policy(password)?;
    let salt = crate::token::random_bytes::<16>().map_err(|e| PasswordError::Hash(e.to_string()))?;
    let hash = hasher()?
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Verifies `password` against a stored PHC string. Any malformed hash or oversized password is `false`;
/// an oversized password is still hashed against the stored parameters' cost by the caller's dummy path.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(argon) = hasher() else { return false };
    // Hash a bounded prefix for oversized input so the time stays similar; it can never match anyway
    // because stored passwords obey MAX_PASSWORD_LEN.
    let too_long = password.len() > MAX_PASSWORD_LEN;
    let input = if too_long {
        &password.as_bytes()[..MAX_PASSWORD_LEN]
    } else {
        password.as_bytes()
    };
    let ok = argon.verify_password(input, phc).is_ok();
    ok && !too_long
}

/// A hash of a random password, used to spend the same time on unknown usernames as on known ones.
pub fn dummy_hash() -> Result<String, PasswordError> {
    let pw = crate::token::new_password().map_err(|e| PasswordError::Hash(e.to_string()))?;
    hash_password(&pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert!(matches!(hash_password("short"), Err(PasswordError::Length)));
        let p: Password = serde_json::from_str("\"hunter2-secret\"").unwrap();
        assert_eq!(p.expose(), "hunter2-secret");
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
