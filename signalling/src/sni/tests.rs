//! The SNI parser against ClientHellos written by a real TLS client (rustls), every truncation of them,
//! hand-made malformed ones and arbitrary bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

/// The first flight of a rustls client connecting to `name` (a DNS name or an IP address), offering `alpn`.
fn client_hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn reads_the_name_of_a_real_client_hello() {
    let hello = client_hello("turn.example.com", &[b"h2", b"http/1.1"]);
    assert_eq!(
        peek_client_hello(&hello),
        Peek::ClientHello(ClientHelloInfo {
            server_name: Some("turn.example.com"),
            offers_acme_tls: false,
        })
    );
    // Bytes after the first record (a second record, or early data) change nothing.
    let mut more = hello.clone();
    more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
    assert_eq!(peek_client_hello(&more), peek_client_hello(&hello));
}

#[test]
fn sees_the_acme_alpn_offer() {
    let hello = client_hello("desk.example.com", &[ACME_TLS_ALPN]);
    let Peek::ClientHello(info) = peek_client_hello(&hello) else {
        panic!("not parsed")
    };
    assert_eq!(info.server_name, Some("desk.example.com"));
    assert!(info.offers_acme_tls);
}

#[test]
fn an_ip_address_sends_no_name() {
    // Clients send no SNI for an IP address (RFC 6066 §3).
    let hello = client_hello("127.0.0.1", &[]);
    assert_eq!(peek_client_hello(&hello), Peek::ClientHello(ClientHelloInfo::default()));
}

#[test]
fn every_truncation_is_incomplete() {
    let hello = client_hello("turn.example.com", &[b"h2"]);
    for n in 0..hello.len() {
        assert_eq!(peek_client_hello(&hello[..n]), Peek::Incomplete, "prefix of {n} bytes");
    }
}

#[test]
fn other_protocols_are_not_tls() {
    // An RFC 4571 frame of a STUN Binding request (length 0x0064, then 0x0001).
    assert_eq!(peek_client_hello(&[0x00, 0x64, 0x00, 0x01]), Peek::NotTls);
    assert_eq!(peek_client_hello(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
    // Another TLS record type (application data) and a non-3 major version.
    assert_eq!(peek_client_hello(&[23, 3, 3, 0, 5]), Peek::NotTls);
    assert_eq!(peek_client_hello(&[22, 2, 0, 0, 5]), Peek::NotTls);
}

/// Builds a record around a ClientHello body (version, random, session id, suites, compression) with
/// the given raw extensions block (None: no extensions field at all).
fn record_with(exts: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // empty session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
    body.extend_from_slice(&[1, 0]); // null compression
    if let Some(e) = exts {
        body.extend_from_slice(&u16::try_from(e.len()).unwrap().to_be_bytes());
        body.extend_from_slice(e);
    }
    let mut hs = vec![1];
    hs.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    entry.extend_from_slice(name);
    let mut list = u16::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
    list.extend_from_slice(&entry);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&u16::try_from(list.len()).unwrap().to_be_bytes());
    ext.extend_from_slice(&list);
    ext
}

#[test]
fn hand_made_hellos() {
    assert_eq!(
        peek_client_hello(&record_with(None)),
        Peek::ClientHello(ClientHelloInfo::default())
    );
    let ok = record_with(Some(&sni_ext(b"TURN.Example.com")));
    let Peek::ClientHello(info) = peek_client_hello(&ok) else {
        panic!("not parsed")
    };
    assert_eq!(info.server_name, Some("TURN.Example.com"));
    assert!(names_host(info.server_name.unwrap(), "turn.example.com"));

    // Names that are no DNS names are not reported (NUL, space, non-ASCII, too long, empty).
    for bad in [
        &b"turn\0.example.com"[..],
        b"turn example",
        "tûrn.example".as_bytes(),
        &[b'a'; 254],
        b"",
    ] {
        assert_eq!(
            peek_client_hello(&record_with(Some(&sni_ext(bad)))),
            Peek::ClientHello(ClientHelloInfo::default()),
            "{bad:?}"
        );
    }
    // Two server_name extensions: refused.
    let mut two = sni_ext(b"a.example");
    two.extend_from_slice(&sni_ext(b"b.example"));
    assert_eq!(peek_client_hello(&record_with(Some(&two))), Peek::Unsupported);
    // An extension whose length runs past the block.
    assert_eq!(
        peek_client_hello(&record_with(Some(&[0, 0, 0xff, 0xff, 0]))),
        Peek::Unsupported
    );
    // Bytes after the extensions block.
    let mut trailing = record_with(Some(&sni_ext(b"a.example")));
    trailing.push(0);
    let len = u16::from_be_bytes([trailing[3], trailing[4]]) + 1;
    trailing[3..5].copy_from_slice(&len.to_be_bytes());
    // The handshake message's own 24-bit length grows by the same byte.
    trailing[8] += 1;
    assert_eq!(peek_client_hello(&trailing), Peek::Unsupported);
}

#[test]
fn oversized_or_fragmented_records_are_unsupported() {
    // A record longer than TLS allows.
    assert_eq!(peek_client_hello(&[22, 3, 1, 0x40, 0x01]), Peek::Unsupported);
    assert_eq!(peek_client_hello(&[22, 3, 1, 0, 0]), Peek::Unsupported);
    // A ClientHello announcing more bytes than its record holds (split over records).
    let mut rec = record_with(Some(&sni_ext(b"a.example")));
    rec[8] = rec[8].wrapping_add(10);
    assert_eq!(peek_client_hello(&rec), Peek::Unsupported);
    // Not a ClientHello (server hello type).
    let mut sh = record_with(None);
    sh[5] = 2;
    assert_eq!(peek_client_hello(&sh), Peek::Unsupported);
}

#[test]
fn host_comparison() {
    assert!(names_host("turn.example.com.", "turn.example.com"));
    assert!(names_host("Turn.Example.COM", "turn.example.com"));
    assert!(!names_host("turn.example.com.evil", "turn.example.com"));
    assert!(!names_host("", ""));
    assert!(!names_host("xturn.example.com", "turn.example.com"));
}

proptest! {
    /// Arbitrary bytes, alone or after a valid header: an answer, never a panic, and no name that is
    /// not in the input.
    #[test]
    fn arbitrary_input_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..600), hdr in any::<bool>()) {
        let mut buf = if hdr { vec![22, 3, 1, 2, 0x40] } else { Vec::new() };
        buf.extend_from_slice(&tail);
        if let Peek::ClientHello(ClientHelloInfo { server_name: Some(n), .. }) = peek_client_hello(&buf) {
            prop_assert!(buf.windows(n.len()).any(|w| w == n.as_bytes()));
        }
    }

    /// A real ClientHello with one byte changed: still an answer, never a panic.
    #[test]
    fn mutated_hellos_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut hello = client_hello("turn.example.com", &[b"h2"]);
        let i = at.index(hello.len());
        hello[i] = byte;
        let _ = peek_client_hello(&hello);
    }
}
