//! `[turn]` validation and the REST-API credentials against vectors computed independently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8443);
const SECRET: &str = "north-wind-blows-0123456789";

fn config() -> TurnConfig {
    TurnConfig {
        urls: vec![
            "turns:turn.example.com:443?transport=tcp".into(),
            "turn:turn.example.com:3478".into(),
        ],
        secret_file: Some("/etc/relaydesk/turn-secret".into()),
        credential_lifetime_secs: 600,
        tls_host: Some("Turn.Example.com.".into()),
        tls_upstream: Some("127.0.0.1:5349".parse().unwrap()),
    }
}

fn service(secret: &str, lifetime: u64) -> TurnService {
    TurnService {
        urls: config().urls,
        secret: Secret(Arc::from(secret.as_bytes())),
        lifetime,
        pass: None,
    }
}

/// The vectors were computed with OpenSSL, not with this code:
/// `printf '%s' '1764691200:42-visitor' | openssl dgst -sha1 -hmac 'north-wind-blows-0123456789' -binary | base64`
/// and likewise for `1764694800:7-agent-3`. The third is RFC 2202's HMAC-SHA1 test case 2
/// (`effcdf6ae5eb2fa2d27416d5f184df9c259a7c79`, here in base64).
#[test]
fn rest_api_password_matches_openssl() {
    assert_eq!(
        rest_api_password(SECRET.as_bytes(), "1764691200:42-visitor"),
        "VjiBjK4RnhOgJGICCg25dVgnr18="
    );
    assert_eq!(
        rest_api_password(SECRET.as_bytes(), "1764694800:7-agent-3"),
        "KAfPg9VXelSt4bUoSZojPYafqQM="
    );
    assert_eq!(
        rest_api_password(b"Jefe", "what do ya want for nothing?"),
        "7/zfauXrL6LSdBbV8YTfnCWafHk="
    );
}

#[test]
fn credentials_name_the_expiry_and_the_leg() {
    let s = service(SECRET, 3600);
    let c = s.credentials(1_764_687_600, "42-visitor");
    assert_eq!(c.expires_at_ms, 1_764_691_200_000);
    assert_eq!(c.ice_servers.len(), 1);
    let ice = &c.ice_servers[0];
    assert_eq!(ice.urls, config().urls);
    assert_eq!(ice.username, "1764691200:42-visitor");
    assert_eq!(ice.credential, "VjiBjK4RnhOgJGICCg25dVgnr18=");
    // A separator or other junk in the id cannot reach coturn's `EXPIRY:ID` parsing.
    let c = s.credentials(1_764_687_600, "42:vis itor\n");
    assert_eq!(c.ice_servers[0].username, "1764691200:42visitor");
    // The secret never shows in Debug output.
    assert!(!format!("{s:?}").contains(SECRET));
}

#[test]
fn a_valid_section_is_normalised() {
    let mut c = config();
    c.validate(LISTEN).unwrap();
    assert_eq!(c.tls_host.as_deref(), Some("turn.example.com"));
    let mut off = TurnConfig::default();
    off.validate(LISTEN).unwrap();
    assert!(!off.enabled());
    // IP hosts and bracketed IPv6 are fine in URLs.
    let mut ip = TurnConfig {
        urls: vec![
            "turn:192.0.2.7:3478?transport=udp".into(),
            "turn:[2001:db8::1]:3478".into(),
        ],
        secret_file: Some("/s".into()),
        ..TurnConfig::default()
    };
    ip.validate(LISTEN).unwrap();
}

/// A change to a valid section.
type Change = Box<dyn Fn(&mut TurnConfig)>;

#[test]
fn hostile_sections_are_refused_with_the_key_named() {
    let cases: Vec<(&str, Change)> = vec![
        (
            "turn.credential_lifetime_secs",
            Box::new(|c| c.credential_lifetime_secs = 3601),
        ),
        (
            "turn.credential_lifetime_secs",
            Box::new(|c| c.credential_lifetime_secs = 0),
        ),
        ("turn.secret_file", Box::new(|c| c.secret_file = None)),
        ("together", Box::new(|c| c.tls_upstream = None)),
        ("together", Box::new(|c| c.tls_host = None)),
        (
            "loopback",
            Box::new(|c| c.tls_upstream = Some("192.0.2.1:5349".parse().unwrap())),
        ),
        (
            "loopback",
            Box::new(|c| c.tls_upstream = Some("127.0.0.1:0".parse().unwrap())),
        ),
        ("own listen", Box::new(|c| c.tls_upstream = Some(LISTEN))),
        (
            "not the host of any",
            Box::new(|c| c.tls_host = Some("other.example.com".into())),
        ),
        (
            "not a DNS host name",
            Box::new(|c| c.tls_host = Some("turn example".into())),
        ),
        (
            "not a DNS host name",
            Box::new(|c| c.tls_host = Some("-turn.example".into())),
        ),
        (
            "turn:` or `turns:",
            Box::new(|c| c.urls.push("stun:turn.example.com".into())),
        ),
        (
            "turn:` or `turns:",
            Box::new(|c| c.urls.push("https://turn.example.com".into())),
        ),
        (
            "transport",
            Box::new(|c| c.urls.push("turn:turn.example.com?transport=sctp".into())),
        ),
        (
            "not UDP",
            Box::new(|c| c.urls.push("turns:turn.example.com?transport=udp".into())),
        ),
        ("port", Box::new(|c| c.urls.push("turn:turn.example.com:0".into()))),
        ("port", Box::new(|c| c.urls.push("turn:turn.example.com:99999".into()))),
        ("port", Box::new(|c| c.urls.push("turn:turn.example.com:".into()))),
        ("host", Box::new(|c| c.urls.push("turn:".into()))),
        ("host", Box::new(|c| c.urls.push("turn:evil\r\nhost".into()))),
        ("host", Box::new(|c| c.urls.push("turn:user@turn.example.com".into()))),
        ("IPv6", Box::new(|c| c.urls.push("turn:[zz::1]:3478".into()))),
        ("`[`", Box::new(|c| c.urls.push("turn:[::1".into()))),
        ("512", Box::new(|c| c.urls.push(format!("turn:{}", "a".repeat(600))))),
        (
            "at most 8",
            Box::new(|c| c.urls = vec!["turn:turn.example.com".into(); 9]),
        ),
    ];
    for (needle, change) in cases {
        let mut c = config();
        change(&mut c);
        let e = c.validate(LISTEN).unwrap_err();
        assert!(e.contains(needle), "`{e}` should mention `{needle}`");
        assert!(
            !e.contains('\r') && !e.contains('\n'),
            "control characters echoed: {e:?}"
        );
    }
    // A secret file without URLs is a mistake too.
    let mut c = TurnConfig {
        secret_file: Some("/s".into()),
        ..TurnConfig::default()
    };
    assert!(c.validate(LISTEN).unwrap_err().contains("turn.urls is empty"));
}

#[tokio::test]
async fn the_secret_file_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    let mut c = config();
    c.secret_file = Some(path.clone());
    c.validate(LISTEN).unwrap();

    assert!(matches!(TurnService::load(&c).await, Err(TurnError::Read { .. })));
    std::fs::write(&path, "short\n").unwrap();
    assert!(matches!(TurnService::load(&c).await, Err(TurnError::BadSecret { .. })));
    std::fs::write(&path, "two-lines-0123456789\nsecond-line-0123\n").unwrap();
    assert!(matches!(TurnService::load(&c).await, Err(TurnError::BadSecret { .. })));
    std::fs::write(&path, vec![b'x'; 5000]).unwrap();
    assert!(matches!(TurnService::load(&c).await, Err(TurnError::BadSecret { .. })));
    std::fs::write(&path, format!("{SECRET}\r\n")).unwrap();
    let s = TurnService::load(&c).await.unwrap().unwrap();
    assert!(s.passes_tls());
    // The trailing line end is not part of the secret.
    assert_eq!(
        s.credentials(1_764_690_600, "42-visitor").ice_servers[0].credential,
        "VjiBjK4RnhOgJGICCg25dVgnr18="
    );
    // A directory is not a secret file; TURN off loads nothing.
    c.secret_file = Some(dir.path().to_path_buf());
    assert!(matches!(TurnService::load(&c).await, Err(TurnError::BadSecret { .. })));
    assert!(TurnService::load(&TurnConfig::default()).await.unwrap().is_none());
}
