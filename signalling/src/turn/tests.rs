//! `[turn]` validation and the REST-API credentials against vectors computed independently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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

/// The first flight of a rustls client connecting to `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

const IO: Duration = Duration::from_secs(10);

/// A service passing `turn.example.com` to `upstream`, and a listener for the "HTTPS port".
async fn passing_to(upstream: SocketAddr) -> (TurnService, tokio::net::TcpListener) {
    let mut s = service(SECRET, 600);
    s.pass = Some(PassThrough {
        host: "turn.example.com".into(),
        upstream,
    });
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (s, front)
}

#[tokio::test]
async fn claims_only_the_turn_host_and_reads_nothing() {
    let (s, front) = passing_to("127.0.0.1:9".parse().unwrap()).await;
    let addr = front.local_addr().unwrap();
    for (sent, want) in [
        (client_hello("TURN.example.com"), Claim::Turn),
        (client_hello("desk.example.com"), Claim::Other),
        (client_hello("127.0.0.1"), Claim::Other),
        (b"\x00\x64\x00\x01 STUN in RFC 4571".to_vec(), Claim::Other),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), Claim::Other),
    ] {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(&sent).await.unwrap();
        let (mut conn, _) = front.accept().await.unwrap();
        assert_eq!(s.claims(&conn, IO).await, want);
        // Every byte is still there for whoever serves the connection next.
        let mut got = vec![0u8; sent.len()];
        tokio::time::timeout(IO, conn.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, sent);
    }
    // Half a hello and silence: no decision within the wait.
    let hello = client_hello("turn.example.com");
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let (conn, _) = front.accept().await.unwrap();
    assert_eq!(s.claims(&conn, Duration::from_millis(300)).await, Claim::Stalled);
    // A hello that arrives in two pieces is read whole.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(&hello[..10]).await.unwrap();
    let (conn, _) = front.accept().await.unwrap();
    let (claim, ()) = tokio::join!(s.claims(&conn, IO), async {
        // The rest follows once the first piece has been seen (it is readable at the server).
        conn.readable().await.unwrap();
        client.write_all(&hello[10..]).await.unwrap();
    });
    assert_eq!(claim, Claim::Turn);
}

#[tokio::test]
async fn passes_bytes_untouched_both_ways_and_closes_both_together() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (s, front) = passing_to(upstream.local_addr().unwrap()).await;
    let addr = front.local_addr().unwrap();
    let hello = client_hello("turn.example.com");

    // The client closes: the upstream sees every byte, the hello first, then the end.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(&hello).await.unwrap();
    client.write_all(b"after the hello").await.unwrap();
    let (conn, peer) = front.accept().await.unwrap();
    assert_eq!(s.claims(&conn, IO).await, Claim::Turn);
    let pass = tokio::spawn({
        let s = s.clone();
        async move { s.pass_through(conn, peer, IO, std::future::pending()).await }
    });
    let (mut up, _) = tokio::time::timeout(IO, upstream.accept()).await.unwrap().unwrap();
    up.write_all(b"from coturn").await.unwrap();
    let mut got = vec![0u8; 11];
    tokio::time::timeout(IO, client.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"from coturn");
    drop(client);
    let mut all = Vec::new();
    tokio::time::timeout(IO, up.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all, [hello.as_slice(), b"after the hello"].concat());
    drop(up);
    tokio::time::timeout(IO, pass).await.unwrap().unwrap();

    // coturn closes: the client sees the end, and the pass-through ends.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(&hello).await.unwrap();
    let (conn, peer) = front.accept().await.unwrap();
    assert_eq!(s.claims(&conn, IO).await, Claim::Turn);
    let pass = tokio::spawn({
        let s = s.clone();
        async move { s.pass_through(conn, peer, IO, std::future::pending()).await }
    });
    let (up, _) = tokio::time::timeout(IO, upstream.accept()).await.unwrap().unwrap();
    drop(up);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(IO, client.read_to_end(&mut rest)).await.unwrap();
    tokio::time::timeout(IO, pass).await.unwrap().unwrap();

    // The server stops: the pass-through ends at once, both sockets closed.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(&hello).await.unwrap();
    let (conn, peer) = front.accept().await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pass = tokio::spawn({
        let s = s.clone();
        async move {
            s.pass_through(conn, peer, IO, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let (mut up, _) = tokio::time::timeout(IO, upstream.accept()).await.unwrap().unwrap();
    let _ = stop_tx.send(());
    tokio::time::timeout(IO, pass).await.unwrap().unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(IO, up.read_to_end(&mut all)).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(IO, client.read_to_end(&mut rest)).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_coturn_closes_the_client() {
    // A port nothing listens on.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = gone.local_addr().unwrap();
    drop(gone);
    let (s, front) = passing_to(port).await;
    let mut client = tokio::net::TcpStream::connect(front.local_addr().unwrap())
        .await
        .unwrap();
    client.write_all(&client_hello("turn.example.com")).await.unwrap();
    let (conn, peer) = front.accept().await.unwrap();
    assert_eq!(s.claims(&conn, IO).await, Claim::Turn);
    tokio::time::timeout(IO, s.pass_through(conn, peer, IO, std::future::pending()))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(IO, client.read_to_end(&mut rest)).await.unwrap();
    assert!(read.is_err() || rest.is_empty(), "closed without an answer");
}
