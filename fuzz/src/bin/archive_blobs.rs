//! The archive's decryption of damaged stored bytes (`signalling/src/archive_crypto.rs`): wrapped
//! conversation keys (`WrappedKey::from_bytes`, `Keyring::unwrap_key`), sealed message bodies
//! (`ConversationCipher::open_text`) and master keys given as text (`MasterKey::from_base64`).
//!
//! The first byte picks what the rest is: 0, a wrapped key as stored; 1, a sealed body as stored; 2 and 3,
//! damage to a valid wrapped key or sealed body made in this process (an optional cut, then byte pairs
//! `(position, xor)`, a position past the end appending the byte); 4, a master key file's text.
//!
//! Properties: no panic; stored bytes open only when they are exactly what was sealed, to exactly what was
//! sealed (a damaged blob is refused with an error, never opened to other content).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relaydesk_signalling::archive_crypto::{ConversationCipher, DataKey, Keyring, MasterKey, WrappedKey};

const CONVERSATION: &str = "c-42";
const SEQ: u64 = 7;
const BODY: &str = "card •••• •••• •••• 1111, thanks";
/// A fixed master key (base64 of 32 bytes) so that stored forms in the corpus keep meaning the same.
const MASTER: &str = "cmVsYXlkZXNrLWZ1enotbWFzdGVyLWtleS0zMi1ieXQ=";

struct Fixture {
    keyring: Keyring,
    cipher: ConversationCipher,
    wrapped: Vec<u8>,
    sealed: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let master = MasterKey::from_base64(MASTER).expect("fixed master key");
        let data = DataKey::generate().expect("random data key");
        let wrapped = data.wrap(&master, CONVERSATION).expect("wrap").to_bytes();
        let cipher = ConversationCipher::new(&data, CONVERSATION);
        let sealed = cipher.seal_text(SEQ, BODY).expect("seal");
        let mut keyring = Keyring::new(master);
        keyring.add_previous(MasterKey::generate().expect("random master key"));
        Fixture {
            keyring,
            cipher,
            wrapped,
            sealed,
        }
    })
}

fn damaged(valid: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut blob = valid.to_vec();
    let Some((&cut, pairs)) = edits.split_first() else {
        return blob;
    };
    if cut & 1 == 1 {
        blob.truncate(usize::from(cut >> 1) % (valid.len() + 1));
    }
    for pair in pairs.chunks_exact(2) {
        let pos = usize::from(pair[0]) % (blob.len() + 1);
        match blob.get_mut(pos) {
            Some(b) => *b ^= pair[1],
            None => blob.push(pair[1]),
        }
    }
    blob
}

fn open_wrapped(f: &Fixture, bytes: &[u8]) {
    let Ok(wrapped) = WrappedKey::from_bytes(bytes) else {
        assert_ne!(bytes, f.wrapped.as_slice(), "the valid wrapped key does not parse");
        return;
    };
    match f.keyring.unwrap_key(&wrapped, CONVERSATION) {
        Ok(key) => {
            assert_eq!(bytes, f.wrapped.as_slice(), "a damaged wrapped key opened");
            let body = ConversationCipher::new(&key, CONVERSATION).open_text(SEQ, &f.sealed);
            assert_eq!(
                body.ok().as_deref(),
                Some(BODY),
                "the unwrapped key does not open the body"
            );
        }
        Err(_) => assert_ne!(bytes, f.wrapped.as_slice(), "the valid wrapped key does not open"),
    }
}

fn open_sealed(f: &Fixture, bytes: &[u8]) {
    match f.cipher.open_text(SEQ, bytes) {
        Ok(body) => {
            assert_eq!(bytes, f.sealed.as_slice(), "a damaged sealed body opened");
            assert_eq!(body, BODY);
        }
        Err(_) => assert_ne!(bytes, f.sealed.as_slice(), "the valid sealed body does not open"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match mode % 5 {
        0 => open_wrapped(f, rest),
        1 => open_sealed(f, rest),
        2 => open_wrapped(f, &damaged(&f.wrapped, rest)),
        3 => open_sealed(f, &damaged(&f.sealed, rest)),
        _ => {
            if let Some(text) = relaydesk_fuzz::text(rest)
                && let Ok(key) = MasterKey::from_base64(text)
            {
                // A key that parses is 32 bytes and prints back as the same key.
                let again = MasterKey::from_base64(&key.to_base64()).expect("re-parse");
                assert_eq!(again.id(), key.id());
            }
        }
    }
});
