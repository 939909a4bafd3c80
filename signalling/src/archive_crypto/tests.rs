//! Tests of the archive's key handling: wrapping, rotation, sealing and the key file.

use super::*;

fn setup(conv: &str) -> (MasterKey, WrappedKey, ConversationCipher) {
    let master = MasterKey::generate().unwrap();
    let key = DataKey::generate().unwrap();
    let wrapped = key.wrap(&master, conv).unwrap();
    let cipher = ConversationCipher::new(&key, conv);
    (master, wrapped, cipher)
}

#[test]
fn roundtrip_through_wrapped_key() {
    let (master, wrapped, cipher) = setup("conv-1");
    let sealed = cipher.seal_text(7, "hello **** **** **** 4242").unwrap();
    let stored = WrappedKey::from_bytes(&wrapped.to_bytes()).unwrap();
    assert_eq!(stored, wrapped);
    assert_eq!(stored.master_key_id(), master.id());
    let key = stored.unwrap_key(&master, "conv-1").unwrap();
    let cipher2 = ConversationCipher::new(&key, "conv-1");
    assert_eq!(cipher2.open_text(7, &sealed).unwrap(), "hello **** **** **** 4242");
    assert_eq!(cipher.open(7, &cipher.seal(7, b"").unwrap()).unwrap(), b"");
}

#[test]
fn same_body_seals_differently() {
    let (_, _, cipher) = setup("c");
    let a = cipher.seal(1, b"same").unwrap();
    let b = cipher.seal(1, b"same").unwrap();
    assert_ne!(a, b, "nonces must be fresh per message");
    assert_eq!(a.len(), 1 + NONCE_LEN + 4 + TAG_LEN);
}

#[test]
fn wrong_master_key_fails() {
    let (_, wrapped, _) = setup("c");
    let other = MasterKey::generate().unwrap();
    assert!(matches!(
        wrapped.unwrap_key(&other, "c"),
        Err(ArchiveCryptoError::WrongMasterKey { .. })
    ));
}

#[test]
fn wrong_data_key_fails() {
    let (_, _, cipher) = setup("c");
    let sealed = cipher.seal(1, b"secret").unwrap();
    let other = ConversationCipher::new(&DataKey::generate().unwrap(), "c");
    assert!(matches!(other.open(1, &sealed), Err(ArchiveCryptoError::Decrypt)));
}

#[test]
fn tampered_ciphertext_fails_at_every_byte() {
    let (_, _, cipher) = setup("c");
    let sealed = cipher.seal(3, b"body text").unwrap();
    for i in 1..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(cipher.open(3, &bad), Err(ArchiveCryptoError::Decrypt)),
            "byte {i}"
        );
    }
    let mut bad = sealed.clone();
    bad[0] = 2;
    assert!(matches!(
        cipher.open(3, &bad),
        Err(ArchiveCryptoError::MalformedCiphertext(_))
    ));
    assert!(matches!(
        cipher.open(3, &sealed[..20]),
        Err(ArchiveCryptoError::MalformedCiphertext(_))
    ));
    assert!(matches!(
        cipher.open(3, &sealed[..sealed.len() - 1]),
        Err(ArchiveCryptoError::Decrypt)
    ));
}

#[test]
fn swapped_rows_fail() {
    let key = DataKey::generate().unwrap();
    let a = ConversationCipher::new(&key, "conv-a");
    let b = ConversationCipher::new(&key, "conv-b");
    let row1 = a.seal(1, b"first").unwrap();
    let row2 = a.seal(2, b"second").unwrap();
    // Another position in the same conversation.
    assert!(matches!(a.open(2, &row1), Err(ArchiveCryptoError::Decrypt)));
    assert!(matches!(a.open(1, &row2), Err(ArchiveCryptoError::Decrypt)));
    // Same position, another conversation (even with the same key).
    assert!(matches!(b.open(1, &row1), Err(ArchiveCryptoError::Decrypt)));
    // A conversation id that differs only in where the boundary to the sequence number falls.
    let c1 = ConversationCipher::new(&key, "x");
    let c2 = ConversationCipher::new(&key, "x\0");
    assert!(c2.open(1, &c1.seal(1, b"m").unwrap()).is_err());
}

#[test]
fn wrapped_key_is_bound_to_conversation_and_tamper_evident() {
    let (master, wrapped, _) = setup("conv-a");
    assert!(matches!(
        wrapped.unwrap_key(&master, "conv-b"),
        Err(ArchiveCryptoError::Decrypt)
    ));
    let bytes = wrapped.to_bytes();
    for i in 1 + KEY_ID_LEN..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x80;
        let parsed = WrappedKey::from_bytes(&bad).unwrap();
        assert!(
            matches!(parsed.unwrap_key(&master, "conv-a"), Err(ArchiveCryptoError::Decrypt)),
            "byte {i}"
        );
    }
    assert!(WrappedKey::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut bad = bytes.clone();
    bad[0] = 9;
    assert!(WrappedKey::from_bytes(&bad).is_err());
}

#[test]
fn rewrap_then_decrypt_with_new_key() {
    let (old, wrapped, cipher) = setup("conv-r");
    let sealed = cipher.seal_text(1, "kept across rotation").unwrap();
    let new = MasterKey::generate().unwrap();
    assert_ne!(old.id(), new.id());
    let rewrapped = rewrap(&wrapped, "conv-r", &old, &new).unwrap();
    assert_eq!(rewrapped.master_key_id(), new.id());
    let key = rewrapped.unwrap_key(&new, "conv-r").unwrap();
    assert_eq!(
        ConversationCipher::new(&key, "conv-r").open_text(1, &sealed).unwrap(),
        "kept across rotation"
    );
    assert!(rewrapped.unwrap_key(&old, "conv-r").is_err());
    // Rotating with the wrong old key is refused.
    assert!(matches!(
        rewrap(&wrapped, "conv-r", &new, &old),
        Err(ArchiveCryptoError::WrongMasterKey { .. })
    ));
}

#[test]
fn keyring_opens_old_and_new_and_rotates() {
    let old = MasterKey::generate().unwrap();
    let old_b64 = old.to_base64();
    let key = DataKey::generate().unwrap();
    let wrapped_old = key.wrap(&old, "c1").unwrap();
    let new = MasterKey::generate().unwrap();
    let new_id = new.id();
    let mut ring = Keyring::new(new);
    // Without the old key: a clear error naming the missing key.
    match ring.unwrap_key(&wrapped_old, "c1") {
        Err(ArchiveCryptoError::UnknownMasterKey(id)) => assert_eq!(id, wrapped_old.master_key_id()),
        other => panic!("{other:?}"),
    }
    ring.add_previous(MasterKey::from_base64(&old_b64).unwrap());
    ring.add_previous(MasterKey::from_base64(&old_b64).unwrap()); // duplicates ignored
    assert_eq!(ring.previous.len(), 1);
    let sealed = ConversationCipher::new(&key, "c1").seal(1, b"body").unwrap();
    let opened = ring.unwrap_key(&wrapped_old, "c1").unwrap();
    assert_eq!(
        ConversationCipher::new(&opened, "c1").open(1, &sealed).unwrap(),
        b"body"
    );
    let rotated = ring.rewrap_to_current(&wrapped_old, "c1").unwrap().unwrap();
    assert_eq!(rotated.master_key_id(), new_id);
    assert!(
        ring.rewrap_to_current(&rotated, "c1").unwrap().is_none(),
        "already current"
    );
    // After rotation the old key is not needed.
    let only_new = Keyring::new(MasterKey::from_base64(&ring.current().to_base64()).unwrap());
    let reopened = only_new.unwrap_key(&rotated, "c1").unwrap();
    assert_eq!(
        ConversationCipher::new(&reopened, "c1").open(1, &sealed).unwrap(),
        b"body"
    );
}

#[cfg(unix)]
#[test]
fn save_new_never_replaces_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let first = MasterKey::load_or_create(&path).unwrap();
    let next = MasterKey::generate().unwrap();
    match next.save_new(&path) {
        Err(ArchiveCryptoError::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists),
        other => panic!("{other:?}"),
    }
    assert_eq!(MasterKey::load(&path).unwrap().id(), first.id());
    let next_path = dir.path().join("master.key.next");
    next.save_new(&next_path).unwrap();
    assert_eq!(mode_of(&next_path), 0o600);
    assert_eq!(MasterKey::load(&next_path).unwrap().id(), next.id());
}

#[test]
fn marker_word_not_in_ciphertext() {
    let (_, wrapped, cipher) = setup("c");
    let marker = b"ZEBRAMARKER-1d4f";
    let sealed = cipher.seal(1, marker).unwrap();
    assert!(!sealed.windows(marker.len()).any(|w| w == marker));
    assert!(!wrapped.to_bytes().windows(4).any(|w| w == b"ZEBR"));
}

#[test]
fn debug_never_prints_key_bytes() {
    let master = MasterKey::generate().unwrap();
    let b64 = master.to_base64();
    let key = DataKey::generate().unwrap();
    let wrapped = key.wrap(&master, "c").unwrap();
    let cipher = ConversationCipher::new(&key, "c");
    let all = format!("{master:?} {key:?} {wrapped:?} {cipher:?}");
    assert!(!all.contains(&b64));
    assert!(!all.contains(&b64[..10]));
    assert!(all.contains(&master.id().to_string()));
    assert!(!all.contains(&hex::encode(&wrapped.to_bytes()[1 + KEY_ID_LEN..])));
}

#[test]
fn key_id_is_stable_and_parses() {
    let master = MasterKey::generate().unwrap();
    let again = MasterKey::from_base64(&format!("  {}\n", master.to_base64())).unwrap();
    assert_eq!(master.id(), again.id());
    let text = master.id().to_string();
    assert_eq!(text.len(), 16);
    assert_eq!(text.parse::<MasterKeyId>().unwrap(), master.id());
    assert!("xyz".parse::<MasterKeyId>().is_err());
}

#[test]
fn from_base64_rejects_bad_values() {
    for bad in [
        "",
        "not base64!",
        "AAAA",
        &base64::engine::general_purpose::STANDARD.encode([1u8; 33]),
    ] {
        assert!(
            matches!(MasterKey::from_base64(bad), Err(ArchiveCryptoError::MalformedKey(_))),
            "{bad:?}"
        );
    }
    let err = MasterKey::from_base64("c2VjcmV0LXNlY3JldA==").unwrap_err().to_string();
    assert!(!err.contains("c2VjcmV0"), "error must not echo the input: {err}");
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn file_created_0600_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let created = MasterKey::load_or_create(&path).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    let loaded = MasterKey::load_or_create(&path).unwrap();
    assert_eq!(created.id(), loaded.id());
    assert_eq!(created.to_base64(), loaded.to_base64());
    // No temporary file is left behind.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("master.key")]);
    // Data wrapped under the created key opens with the reloaded one.
    let key = DataKey::generate().unwrap();
    let wrapped = key.wrap(&created, "c").unwrap();
    assert!(wrapped.unwrap_key(&loaded, "c").is_ok());
}

#[cfg(unix)]
#[test]
fn wide_permissions_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    MasterKey::load_or_create(&path).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        match MasterKey::load_or_create(&path) {
            Err(ArchiveCryptoError::PermissionsTooWide { mode: m, .. }) => assert_eq!(m, mode),
            other => panic!("mode {mode:o}: expected refusal, got {other:?}"),
        }
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(MasterKey::load_or_create(&path).is_ok(), "read-only for owner is fine");
}

#[cfg(unix)]
#[test]
fn malformed_file_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let big = "A".repeat(1000);
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
    let cases: [&[u8]; 5] = [b"", b"garbage\n", short.as_bytes(), big.as_bytes(), &[0xff, 0xfe, 0x00]];
    for content in cases {
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let res = MasterKey::load_or_create(&path);
        assert!(
            matches!(res, Err(ArchiveCryptoError::MalformedKey(_))),
            "{content:?}: {res:?}"
        );
        // The file is left untouched for the operator to inspect.
        assert_eq!(fs::read(&path).unwrap(), content);
    }
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert!(MasterKey::load_or_create(&path).is_err(), "a directory is not a key");
    // A FIFO is refused without blocking on open.
    let fifo = dir.path().join("fifo.key");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    assert!(matches!(
        MasterKey::load_or_create(&fifo),
        Err(ArchiveCryptoError::MalformedKey(_))
    ));
}

#[test]
fn missing_parent_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("master.key");
    assert!(matches!(
        MasterKey::load_or_create(&path),
        Err(ArchiveCryptoError::Io { .. })
    ));
    assert!(matches!(MasterKey::load(&path), Err(ArchiveCryptoError::Io { .. })));
}

#[test]
fn concurrent_creation_yields_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let ids: Vec<MasterKeyId> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| MasterKey::load_or_create(&path).unwrap().id()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
}
