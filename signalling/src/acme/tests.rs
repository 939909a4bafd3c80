//! Tests of the ACME side: stored certificates and their renewal schedule, retry delays, the challenge certificate.

use super::*;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn config(domains: &[&str]) -> AcmeConfig {
    AcmeConfig {
        domains: domains.iter().map(|d| d.to_string()).collect(),
        contact: None,
        directory: "https://127.0.0.1:1/dir".into(),
        directory_ca: None,
    }
}

/// A certificate for `names`, valid from `from` for `secs` seconds, with its key, as stored.
fn stored_pem(names: &[&str], from: i64, secs: i64) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = time_from_unix(from);
    params.not_after = time_from_unix(from + secs);
    let cert = params.self_signed(&key).unwrap();
    format!("{}{}", cert.pem(), key.serialize_pem())
}

fn time_from_unix(t: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t).unwrap()
}

#[test]
fn stored_certificate_is_parsed_and_scheduled() {
    let now = unix_now();
    let pem = stored_pem(&["desk.example.com", "chat.example.com"], now - 100, 900);
    let issued = Issued::from_pem(pem.as_bytes(), &provider()).unwrap();
    assert_eq!(issued.names, ["desk.example.com", "chat.example.com"]);
    assert_eq!(issued.renew_at(), now - 100 + 600);
    assert!(issued.covers(&["desk.example.com".into()]));
    assert!(!issued.covers(&["other.example.com".into()]));
    // A key that does not belong to the certificate is refused.
    let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let cert_only = pem.split("-----BEGIN PRIVATE KEY-----").next().unwrap().to_string();
    assert!(Issued::from_pem(format!("{cert_only}{other}").as_bytes(), &provider()).is_err());
    assert!(Issued::from_pem(b"junk", &provider()).is_err());
    assert!(Issued::from_pem(cert_only.as_bytes(), &provider()).is_err());
    // Backdated by the authority: the life counts from when it was obtained.
    let mut backdated = Issued::from_pem(stored_pem(&["a.example"], now - 3600, 3615).as_bytes(), &provider()).unwrap();
    assert!(backdated.renew_at() < now);
    backdated.obtained = Some(now);
    assert_eq!(backdated.renew_at(), now + 10);
}

#[test]
fn prepare_serves_stored_or_temporary_and_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&["desk.example.com"]);
    // Nothing stored: a temporary certificate for the names, an order due now, nothing written.
    let p = prepare(&cfg, dir.path(), provider()).unwrap();
    assert!(p.manager.until_due().is_zero());
    assert!(!p.cert_path.exists());
    let served = p.resolver.current();
    let (_, leaf) = x509_parser::parse_x509_certificate(served.cert[0].as_ref()).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(format!("{:?}", san.value.general_names).contains("desk.example.com"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(ACME_DIR))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    // A stored, fresh certificate is served and renewed two thirds into its life.
    let now = unix_now();
    write_private(
        &dir.path().join(CERT_FILE),
        stored_pem(&["desk.example.com"], now - 10, 3000).as_bytes(),
    )
    .unwrap();
    let p = prepare(&cfg, dir.path(), provider()).unwrap();
    let due = p.manager.until_due().as_secs();
    assert!((1980..=1990).contains(&due), "{due}");
    assert_eq!(
        p.fingerprint,
        crate::cert_fingerprint::fingerprint(p.resolver.current().cert[0].as_ref())
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p.cert_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Configured names it does not cover: still served, but an order is due now.
    let p = prepare(
        &config(&["desk.example.com", "new.example.com"]),
        dir.path(),
        provider(),
    )
    .unwrap();
    assert!(p.manager.until_due().is_zero());
    assert!(p.manager.current.is_some());
    // An expired one is served too (better than nothing) and due now.
    write_private(
        &dir.path().join(CERT_FILE),
        stored_pem(&["desk.example.com"], now - 100, 50).as_bytes(),
    )
    .unwrap();
    let p = prepare(&cfg, dir.path(), provider()).unwrap();
    assert!(p.manager.until_due().is_zero());
    assert!(p.manager.current.is_some());
    // A damaged file: the temporary certificate and an order.
    std::fs::write(dir.path().join(CERT_FILE), "-----BEGIN CERTIFICATE-----\nxx\n").unwrap();
    let p = prepare(&cfg, dir.path(), provider()).unwrap();
    assert!(p.manager.current.is_none());
    // An unusable CA bundle is an error at start.
    let junk = dir.path().join("ca.pem");
    std::fs::write(&junk, "no pem here").unwrap();
    let mut bad = cfg.clone();
    bad.directory_ca = Some(junk);
    assert!(matches!(
        prepare(&bad, dir.path(), provider()),
        Err(AcmeError::CaBundle { .. })
    ));
    bad.directory_ca = Some(dir.path().join("missing.pem"));
    assert!(matches!(
        prepare(&bad, dir.path(), provider()),
        Err(AcmeError::CaBundle { .. })
    ));
}

#[test]
fn retry_delay_grows_and_is_capped() {
    assert_eq!(retry_delay(1), RETRY_FIRST);
    assert_eq!(retry_delay(2), RETRY_FIRST * 2);
    assert_eq!(retry_delay(3), RETRY_FIRST * 4);
    assert_eq!(retry_delay(100), RETRY_MAX);
    assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
}

#[test]
fn challenge_certificate_carries_the_digest() {
    let digest = [7u8; 32];
    let key = challenge_key("desk.example.com", &digest, &provider()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .unwrap();
    assert!(ext.critical);
    // DER OCTET STRING of the 32-byte digest.
    assert_eq!(&ext.value[..2], &[0x04, 32]);
    assert_eq!(&ext.value[2..], &digest);
}
