//! TURN over TLS through RelayDesk's one port, against a real coturn.
//!
//! The test starts coturn itself on loopback (REST-API secret, a self-signed certificate for its TLS
//! port, relaying to loopback only), and RelayDesk with `[turn]` pointing at it. A visitor asks for TURN
//! servers over its WebSocket (`call_prepare`); a TLS client then connects to RelayDesk's HTTPS port with
//! the TURN host name as SNI, meets coturn's certificate (RelayDesk passed the bytes through untouched)
//! and sends TURN Allocate requests: with the issued credentials it gets a relayed address; with a wrong
//! password, or with credentials that expired, coturn refuses. A connection with any other name still
//! reaches RelayDesk's own HTTPS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use live_common::{Live, answer_all, assigned_pair};
use md5::Digest as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TURN_HOST: &str = "turn.relaydesk.test";
const REALM: &str = "relaydesk.test";
const SECRET: &str = "a-test-secret-shared-with-coturn";
const IO: Duration = Duration::from_secs(10);

/// coturn, killed when dropped.
struct Coturn {
    child: Child,
    tls_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on 127.0.0.1 now (for coturn, which takes ports from its configuration).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The coturn configuration this test runs (and `docs/deploy.md` shows for production, with public
/// addresses): REST-API credentials, TLS, relaying to loopback only.
fn coturn_config(dir: &Path, port: u16, tls_port: u16) -> String {
    format!(
        "listening-ip=127.0.0.1\n\
         relay-ip=127.0.0.1\n\
         listening-port={port}\n\
         tls-listening-port={tls_port}\n\
         min-port=49152\n\
         max-port=65535\n\
         realm={REALM}\n\
         use-auth-secret\n\
         static-auth-secret={SECRET}\n\
         cert={dir}/turn-cert.pem\n\
         pkey={dir}/turn-key.pem\n\
         no-tlsv1\n\
         no-tlsv1_1\n\
         no-dtls\n\
         no-cli\n\
         no-multicast-peers\n\
         allow-loopback-peers\n\
         denied-peer-ip=0.0.0.0-255.255.255.255\n\
         allowed-peer-ip=127.0.0.1\n\
         fingerprint\n\
         no-software-attribute\n\
         userdb={dir}/turndb\n\
         pidfile={dir}/turnserver.pid\n\
         log-file=stdout\n\
         simple-log\n",
        dir = dir.display()
    )
}

/// Starts coturn with a fresh certificate for [`TURN_HOST`]; returns it once its TLS port accepts.
async fn start_coturn() -> (Coturn, CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec![TURN_HOST.to_owned()]).unwrap();
    std::fs::write(dir.path().join("turn-cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("turn-key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let (port, tls_port) = (free_port(), free_port());
    let conf = dir.path().join("turnserver.conf");
    std::fs::write(&conf, coturn_config(dir.path(), port, tls_port)).unwrap();
    let child = Command::new("turnserver")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnserver (Debian package coturn) is installed; `cargo xtask install-deps`");
    let coturn = Coturn {
        child,
        tls_port,
        _dir: dir,
    };
    // Ready when its TLS port accepts connections (bounded).
    let deadline = Instant::now() + IO;
    while tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, tls_port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "coturn listens on its TLS port within {IO:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (coturn, CertificateDer::from(ck.cert.der().to_vec()))
}

/// A TLS connection to `addr` naming `sni`, trusting only `root`.
async fn tls_to(
    addr: SocketAddr,
    sni: &str,
    root: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio::time::timeout(
        IO,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
}

// ----- a minimal STUN/TURN client (RFC 8489, RFC 8656): Allocate with long-term credentials -----

const ALLOCATE_REQUEST: u16 = 0x0003;
const ALLOCATE_SUCCESS: u16 = 0x0103;
const ALLOCATE_ERROR: u16 = 0x0113;
const MAGIC: u32 = 0x2112_A442;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;

/// An Allocate request for a UDP relay; with `auth` = (username, password, realm, nonce) it carries the
/// long-term credential attributes and MESSAGE-INTEGRITY (key MD5(username:realm:password)).
fn allocate(tid: [u8; 12], auth: Option<(&str, &str, &str, &[u8])>) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut attr = |kind: u16, value: &[u8]| {
        attrs.extend_from_slice(&kind.to_be_bytes());
        attrs.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        attrs.extend_from_slice(value);
        attrs.resize(attrs.len().next_multiple_of(4), 0);
    };
    attr(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    if let Some((user, _, realm, nonce)) = auth {
        attr(ATTR_USERNAME, user.as_bytes());
        attr(ATTR_REALM, realm.as_bytes());
        attr(ATTR_NONCE, nonce);
    }
    let header = |len: usize| {
        let mut h = ALLOCATE_REQUEST.to_be_bytes().to_vec();
        h.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        h.extend_from_slice(&MAGIC.to_be_bytes());
        h.extend_from_slice(&tid);
        h
    };
    let Some((user, password, realm, _)) = auth else {
        let mut m = header(attrs.len());
        m.extend_from_slice(&attrs);
        return m;
    };
    // MESSAGE-INTEGRITY covers the message with a length that already counts its own 24 bytes.
    let mut m = header(attrs.len() + 24);
    m.extend_from_slice(&attrs);
    let key = md5::Md5::digest(format!("{user}:{realm}:{password}").as_bytes());
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key);
    let tag = aws_lc_rs::hmac::sign(&key, &m);
    m.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    m.extend_from_slice(&20u16.to_be_bytes());
    m.extend_from_slice(tag.as_ref());
    m
}

/// A STUN response: its type and attributes.
#[derive(Debug)]
struct Response {
    kind: u16,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Response {
    fn attr(&self, kind: u16) -> Option<&[u8]> {
        self.attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.as_slice())
    }

    fn error_code(&self) -> Option<u16> {
        self.attr(ATTR_ERROR_CODE)
            .filter(|v| v.len() >= 4)
            .map(|v| u16::from(v[2] & 7) * 100 + u16::from(v[3]))
    }
}

/// Reads one STUN message (TCP framing: the header's length).
async fn read_stun(s: &mut (impl tokio::io::AsyncRead + Unpin), tid: [u8; 12]) -> Response {
    let mut head = [0u8; 20];
    tokio::time::timeout(IO, s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    let kind = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    assert_eq!(head[4..8], MAGIC.to_be_bytes());
    assert_eq!(head[8..20], tid, "the answer to our transaction");
    let mut body = vec![0u8; len];
    tokio::time::timeout(IO, s.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    let mut attrs = Vec::new();
    let mut rest = body.as_slice();
    while rest.len() >= 4 {
        let k = u16::from_be_bytes([rest[0], rest[1]]);
        let n = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let padded = (4 + n).next_multiple_of(4).min(rest.len());
        attrs.push((k, rest[4..4 + n].to_vec()));
        rest = &rest[padded..];
    }
    Response { kind, attrs }
}

/// Runs Allocate as a browser does: unauthenticated first (401 with realm and nonce), then with the
/// credentials. Returns the final response.
async fn allocate_with(
    s: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    user: &str,
    password: &str,
) -> Response {
    let tid = *b"relaydesk-01";
    s.write_all(&allocate(tid, None)).await.unwrap();
    let challenge = read_stun(s, tid).await;
    assert_eq!(challenge.kind, ALLOCATE_ERROR, "{challenge:?}");
    assert_eq!(challenge.error_code(), Some(401), "{challenge:?}");
    let realm = String::from_utf8(challenge.attr(ATTR_REALM).unwrap().to_vec()).unwrap();
    assert_eq!(realm, REALM);
    let nonce = challenge.attr(ATTR_NONCE).unwrap().to_vec();
    let tid = *b"relaydesk-02";
    s.write_all(&allocate(tid, Some((user, password, &realm, &nonce))))
        .await
        .unwrap();
    read_stun(s, tid).await
}

/// The IPv4 address of an XOR-RELAYED-ADDRESS value.
fn xor_address(v: &[u8]) -> SocketAddr {
    assert_eq!(v[1], 1, "IPv4");
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC;
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

fn ice_server(frame: &Value) -> (String, String) {
    let ice = &frame["ice_servers"][0];
    (
        ice["username"].as_str().unwrap().to_owned(),
        ice["credential"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tls_through_the_https_port_reaches_coturn_with_the_issued_credentials() {
    let (coturn, turn_cert) = start_coturn().await;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("turn-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    // This test needs calls to be available, not media.
    let parts = answer_all();
    let tls_upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, coturn.tls_port));
    let live = Live::start(
        |c| {
            c.turn.urls = vec![
                format!("turns:{TURN_HOST}:443?transport=tcp"),
                format!("turn:{TURN_HOST}:3478"),
            ];
            c.turn.secret_file = Some(secret_file.clone());
            c.turn.credential_lifetime_secs = 600;
            c.turn.tls_host = Some(TURN_HOST.to_owned());
            c.turn.tls_upstream = Some(tls_upstream);
            c.http.handshake_timeout_secs = 2;
        },
        parts,
    )
    .await;
    let addr = live.running().local_addr();

    // The call set-up hands both parties fresh credentials in RTCIceServer form.
    let (alice_id, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut agent = live.agent(&alice).await;
    let (mut visitor, conv) = assigned_pair(&live, &mut agent).await;
    visitor.send(json!({"type": "call_prepare"})).await;
    let offered = visitor.expect("ice_servers").await;
    assert_eq!(
        offered["ice_servers"][0]["urls"],
        json!([
            format!("turns:{TURN_HOST}:443?transport=tcp"),
            format!("turn:{TURN_HOST}:3478")
        ])
    );
    let (user, password) = ice_server(&offered);
    let (expiry, leg) = user.split_once(':').unwrap();
    assert_eq!(leg, format!("{conv}-visitor"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "lifetime 600 s: {expiry} at {now}"
    );
    assert_eq!(offered["expires_at_ms"], expiry * 1000);
    agent.send(json!({"type": "call_prepare", "conversation": conv})).await;
    let agent_offer = agent.expect("ice_servers").await;
    assert_eq!(agent_offer["conversation"], conv.as_str());
    let (agent_user, _) = ice_server(&agent_offer);
    assert!(
        agent_user.ends_with(&format!(":{conv}-agent-{alice_id}")),
        "{agent_user}"
    );

    // TLS with the TURN name on RelayDesk's port meets coturn's certificate (only it is trusted here), and
    // an Allocate with the issued credentials gets a relayed address on loopback.
    let mut tls = tls_to(addr, TURN_HOST, &turn_cert)
        .await
        .expect("TLS to coturn through RelayDesk");
    let ok = allocate_with(&mut tls, &user, &password).await;
    assert_eq!(ok.kind, ALLOCATE_SUCCESS, "{ok:?}");
    let relayed = xor_address(ok.attr(ATTR_XOR_RELAYED_ADDRESS).unwrap());
    assert_eq!(relayed.ip(), Ipv4Addr::LOCALHOST);
    drop(tls);

    // The agent's credentials work too.
    let (agent_user, agent_password) = ice_server(&agent_offer);
    let mut tls = tls_to(addr, TURN_HOST, &turn_cert).await.unwrap();
    assert_eq!(
        allocate_with(&mut tls, &agent_user, &agent_password).await.kind,
        ALLOCATE_SUCCESS
    );
    drop(tls);

    // A wrong password is refused by coturn.
    let mut tls = tls_to(addr, TURN_HOST, &turn_cert).await.unwrap();
    let refused = allocate_with(&mut tls, &user, "d3JvbmcgcGFzc3dvcmQgaGVyZQ==").await;
    assert_eq!(refused.kind, ALLOCATE_ERROR, "{refused:?}");
    assert_eq!(refused.error_code(), Some(401));
    drop(tls);

    // Credentials that expired are refused although their HMAC is right.
    let stale_user = format!("{}:{conv}-visitor", now - 60);
    let stale_password = relaydesk_signalling::turn::rest_api_password(SECRET.as_bytes(), &stale_user);
    let mut tls = tls_to(addr, TURN_HOST, &turn_cert).await.unwrap();
    let stale = allocate_with(&mut tls, &stale_user, &stale_password).await;
    assert_eq!(stale.kind, ALLOCATE_ERROR, "{stale:?}");
    assert_eq!(stale.error_code(), Some(401));
    drop(tls);

    // Any other name (and no name) is RelayDesk's own HTTPS: coturn's certificate is not offered there.
    assert!(tls_to(addr, "desk.relaydesk.test", &turn_cert).await.is_err());
    let r = live.client().get("/healthz").await;
    assert_eq!(r.status, 200);

    // The pass-through is counted.
    let passed = passed_count(&live).await;
    assert!(passed >= 4.0, "{passed}");

    // Half a ClientHello naming the TURN host, then silence: closed after the handshake time (2 s here),
    // never passed to coturn.
    let hello = client_hello(TURN_HOST);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(IO, tcp.read(&mut buf))
        .await
        .expect("closed within the bound");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer: {read:?}");
    assert_eq!(passed_count(&live).await, passed, "not passed to coturn");
}

/// `relaydesk_turn_tls_connections_total` now (this test binary's process-wide metrics).
async fn passed_count(live: &Live) -> f64 {
    let metrics = live.client().get("/metrics").await.text();
    assert!(metrics.contains("relaydesk_turn_credentials_issued_total"), "{metrics}");
    metrics
        .lines()
        .find(|l| l.starts_with("relaydesk_turn_tls_connections_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// The first flight of a TLS client connecting to `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}
