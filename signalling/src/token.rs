//! Opaque random tokens (session cookies, site keys, generated passwords) and their storage form.
//!
//! A token is at least 128 bits from the operating system's CSPRNG. Only its SHA-256 hash is stored, so a
//! copy of the database does not let anyone impersonate a session.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Randomness was unavailable from the operating system.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

/// Fills `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| RandomError(e.to_string()))?;
    Ok(buf)
}

/// A new session token: 256 random bits, base64url without padding (43 characters).
pub fn new_session_token() -> Result<String, RandomError> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// A new public site key: `pk_` followed by 128 random bits in lowercase hex.
pub fn new_site_key() -> Result<String, RandomError> {
    Ok(format!("pk_{}", hex::encode(random_bytes::<16>()?)))
}

/// A new human-typable password: 20 characters from an unambiguous alphabet (about 113 bits).
pub fn new_password() -> Result<String, RandomError> {
    // 50 symbols: no 0/O, 1/l/I. Rejection sampling keeps the distribution uniform.
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let limit = 256 - (256 % ALPHABET.len());
    let mut out = String::with_capacity(20);
    while out.len() < 20 {
        for b in random_bytes::<32>()? {
            let b = usize::from(b);
            if b < limit && out.len() < 20 {
                out.push(char::from(ALPHABET[b % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

/// The storage form of a token: its SHA-256 digest.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_well_formed() {
        let a = new_session_token().unwrap();
        let b = new_session_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let k = new_site_key().unwrap();
        assert!(k.starts_with("pk_") && k.len() == 35, "{k}");
        let p = new_password().unwrap();
        assert_eq!(p.chars().count(), 20);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
