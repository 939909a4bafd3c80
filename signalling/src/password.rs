//! Password hashing with argon2id at the OWASP minimum parameters (m = 19 MiB, t = 2, p = 1).
//!
//! Hashing costs tens of milliseconds and 19 MiB of memory: the server hashes only on its fixed pool of
//! hashing threads ([`crate::hash_pool`]), each reusing one [`Hasher`]'s memory.

use argon2::password_hash::phc::{Output, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use subtle::ConstantTimeEq as _;

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

/// argon2id memory cost in KiB (19 MiB), the OWASP minimum.
pub const M_COST_KIB: u32 = 19 * 1024;

/// Blocks (1 KiB each) reserved for a [`Hasher`]'s memory: 34 MiB of address space of which only the
/// first 19 MiB are ever touched (resident). Above 32 MiB on purpose: glibc serves it with `mmap` and,
/// when it is freed, unmaps it and leaves its dynamic mmap threshold alone (freeing a 19 MiB block would
/// raise that threshold to 19 MiB, after which every allocation below it comes from, and stays in, the
/// per-thread heaps).
const RESERVED_BLOCKS: usize = 34 * 1024;

fn params() -> Result<Params, PasswordError> {
    Params::new(M_COST_KIB, 2, 1, None).map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Checks the length policy of a new password.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    if (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
        Ok(())
    } else {
        Err(PasswordError::Length)
    }
}

/// Hashes and verifies passwords in one reused block of memory (19 MiB, allocated on first use), so a
/// thread that hashes many passwords does not allocate and free 19 MiB each time. One per hashing
/// thread ([`crate::hash_pool`]).
#[derive(Default)]
pub struct Hasher {
    blocks: Vec<Block>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("blocks", &self.blocks.len()).finish()
    }
}

impl Hasher {
    /// A hasher; its memory is allocated on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The memory for `params`. Never more than our own cost: a stored hash asking for more is refused
    /// rather than allowed to grow the buffer.
    fn blocks(&mut self, params: &Params) -> Option<&mut [Block]> {
        let ours = Params::new(M_COST_KIB, 2, 1, None).ok()?.block_count();
        let n = params.block_count();
        if n > ours {
            return None;
        }
        if self.blocks.len() < ours {
            let mut blocks = Vec::with_capacity(RESERVED_BLOCKS.max(ours));
            blocks.resize(ours, Block::default());
            self.blocks = blocks;
        }
        self.blocks.get_mut(..n)
    }

    /// Whether the memory is allocated now.
    pub fn holds_memory(&self) -> bool {
        self.blocks.capacity() > 0
    }

    /// Frees the memory (it is allocated again on next use).
    pub fn release(&mut self) {
        self.blocks = Vec::new();
    }

    /// Hashes a new password (policy checked) into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub fn hash(&mut self, password: &str) -> Result<String, PasswordError> {
        check_policy(password)?;
        let err = |e: &dyn std::fmt::Display| PasswordError::Hash(e.to_string());
        let salt = crate::token::random_bytes::<16>().map_err(|e| err(&e))?;
        let params = params()?;
        let mut out = [0u8; 32];
        let blocks = self
            .blocks(&params)
            .ok_or_else(|| PasswordError::Hash("memory".into()))?;
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
            .map_err(|e| err(&e))?;
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: (&params).try_into().map_err(|e| err(&e))?,
            salt: Some(Salt::new(&salt).map_err(|e| err(&e))?),
            hash: Some(Output::new(&out).map_err(|e| err(&e))?),
        };
        Ok(phc.to_string())
    }

    /// Verifies `password` against a stored PHC string. Any malformed hash, one costing more memory than
    /// ours, or an oversized password is `false`; an oversized password is still hashed (a bounded
    /// prefix) so the time stays similar.
    pub fn verify(&mut self, password: &str, phc: &str) -> bool {
        let too_long = password.len() > MAX_PASSWORD_LEN;
        let input = password
            .as_bytes()
            .get(..MAX_PASSWORD_LEN)
            .unwrap_or(password.as_bytes());
        let ok = self.verify_bytes(input, phc).unwrap_or(false);
        ok && !too_long
    }

    fn verify_bytes(&mut self, password: &[u8], phc: &str) -> Option<bool> {
        let hash = PasswordHash::new(phc).ok()?;
        let algorithm = Algorithm::try_from(hash.algorithm.as_str()).ok()?;
        let version = hash
            .version
            .map_or(Some(Version::V0x13), |v| Version::try_from(v).ok())?;
        let params = Params::try_from(&hash).ok()?;
        let (salt, expected) = (hash.salt?, hash.hash?);
        let mut out = vec![0u8; expected.len()];
        let blocks = self.blocks(&params)?;
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, &salt, &mut out, blocks)
            .ok()?;
        Some(out.ct_eq(expected.as_bytes()).into())
    }
}

/// Hashes a new password with a one-off [`Hasher`] (the offline commands; the server uses its pool).
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    Hasher::new().hash(password)
}

/// Verifies a password with a one-off [`Hasher`] (see [`Hasher::verify`]).
pub fn verify_password(password: &str, phc: &str) -> bool {
    Hasher::new().verify(password, phc)
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

    #[test]
    fn one_hasher_reuses_its_memory_and_reads_hashes_of_the_library() {
        use argon2::PasswordHasher as _;
        let mut h = Hasher::new();
        let a = h.hash("first password").unwrap();
        let ptr = h.blocks.as_ptr();
        let b = h.hash("second password").unwrap();
        assert_eq!(h.blocks.as_ptr(), ptr, "the memory is reused");
        assert!(
            h.blocks.capacity() * std::mem::size_of::<Block>() > 32 << 20,
            "unmapped when freed"
        );
        assert!(h.verify("first password", &a) && h.verify("second password", &b));
        assert!(!h.verify("second password", &a));
        // A hash written by the library's own API verifies, and ours verifies with the library.
        let params = params().unwrap();
        let lib = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_with_salt(b"library password", b"0123456789abcdef")
            .unwrap()
            .to_string();
        assert!(h.verify("library password", &lib));
        use argon2::PasswordVerifier as _;
        let parsed = PasswordHash::new(&a).unwrap();
        assert!(Argon2::default().verify_password(b"first password", &parsed).is_ok());
        // A stored hash asking for more memory than ours is refused without allocating it.
        let big = lib.replace("m=19456", "m=65536");
        assert!(!h.verify("library password", &big));
        assert_eq!(h.blocks.len(), 19 * 1024);
        // Oversized input never matches.
        assert!(!h.verify(&"x".repeat(MAX_PASSWORD_LEN + 1), &a));
        h.release();
        assert!(!h.holds_memory());
        assert!(h.verify("first password", &a) && h.holds_memory());
    }
}
