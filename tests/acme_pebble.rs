//! ACME end to end against Pebble, Let's Encrypt's test authority (Debian package `pebble`), with real
//! TLS-ALPN-01 validation: Pebble resolves the certificate's name through its own test DNS server
//! (`pebble-challtestsrv`, answering 127.0.0.1) and connects to RelayDesk's HTTPS listener (its `tlsPort`
//! is the listener's port) to check the challenge certificate there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::process::{line_reader, next_line};
use http_body_util::BodyExt as _;
use relaydesk_signalling::Server;
use relaydesk_signalling::config::{AcmeConfig, Config};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

const DOMAIN: &str = "desk.relaydesk.test";
/// Bound for an issuance (account, order, validation, certificate) on a busy two-core host.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause between two looks at the served certificate while waiting for a change.
const POLL: Duration = Duration::from_millis(200);

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both UDP and TCP (the test DNS server listens on both).
fn free_dns_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// A child process killed when dropped, its output lines collected.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install the Debian package `pebble`: cargo xtask install-deps)"));
        let lines = line_reader(child.stdout.take().unwrap());
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for an output line containing `want` (one already seen counts).
    fn wait_for(&mut self, want: &str) {
        if self.seen.iter().any(|l| l.contains(want)) {
            return;
        }
        loop {
            match next_line(&self.lines) {
                Some(line) => {
                    let found = line.contains(want);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                None => panic!("exited before printing {want:?}:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Everything printed so far (for failure messages).
    fn log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pebble and its DNS server on free loopback ports, with a fresh HTTPS certificate of its own.
struct Pebble {
    dns: Proc,
    pebble: Proc,
    dir: tempfile::TempDir,
    listen: SocketAddr,
    management: SocketAddr,
}

impl Pebble {
    /// Starts Pebble validating TLS-ALPN-01 on `tls_port`; `validity_secs` sets its certificates' lifetime.
    fn start(tls_port: u16, validity_secs: Option<u64>) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS: a test CA and a certificate for 127.0.0.1 (RelayDesk trusts this CA through
        // `acme_directory_ca`).
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test https ca");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("https-ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("https-cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("https-key.pem"), key.serialize_pem()).unwrap();

        let listen: SocketAddr = ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), free_tcp_port()).into();
        let management: SocketAddr = ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), free_tcp_port()).into();
        let mut settings = serde_json::json!({
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.path().join("https-cert.pem"),
            "privateKey": dir.path().join("https-key.pem"),
            "httpPort": free_tcp_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(v) = validity_secs {
            settings["certificateValidityPeriod"] = v.into();
        }
        let config = dir.path().join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": settings }).to_string()).unwrap();

        let dns_port = free_dns_port();
        let mut dns = Proc::spawn(Command::new("pebble-challtestsrv").args([
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_tcp_port()),
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ]));
        dns.wait_for("Starting challenge servers");
        let mut pebble = Proc::spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config)
                .arg("-dnsserver")
                .arg(format!("127.0.0.1:{dns_port}"))
                // No random sleeps before validation, no refused nonces, every order validated anew.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
        );
        pebble.wait_for("ACME directory available");
        pebble.wait_for("Root CA certificate available");
        Pebble {
            dns,
            pebble,
            dir,
            listen,
            management,
        }
    }

    fn directory(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    fn https_ca(&self) -> PathBuf {
        self.dir.path().join("https-ca.pem")
    }

    /// A certificate from the management interface (`/roots/0`, `/intermediates/0`).
    async fn management_cert(&self, path: &str) -> CertificateDer<'static> {
        let pem = https_get(self.management, &self.https_ca(), path).await;
        CertificateDer::from_pem_slice(&pem).unwrap()
    }

    fn stop(self) -> String {
        let Pebble {
            mut dns, mut pebble, ..
        } = self;
        let log = pebble.log();
        drop(pebble);
        drop(dns.log());
        log
    }
}

/// GET over HTTPS trusting the PEM CA `ca`.
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let rsp = sender.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), 200, "GET {path}");
        rsp.into_body().collect().await.unwrap().to_bytes().to_vec()
    };
    tokio::time::timeout(common::IO_TIMEOUT, fetch)
        .await
        .expect("management request timed out")
}

/// Accepts any server certificate: the test looks at what is served and verifies it itself.
#[derive(Debug)]
struct Inspect(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Inspect {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The chain RelayDesk serves to an ordinary browser-like client (ALPN `http/1.1`, SNI [`DOMAIN`]), and
/// the protocol it chose.
async fn served_chain(addr: SocketAddr) -> (Vec<CertificateDer<'static>>, Option<Vec<u8>>) {
    served_chain_offering(addr, vec![b"http/1.1".to_vec()]).await.unwrap()
}

async fn served_chain_offering(
    addr: SocketAddr,
    alpn: Vec<Vec<u8>>,
) -> std::io::Result<(Vec<CertificateDer<'static>>, Option<Vec<u8>>)> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Inspect(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
            .await?;
        let conn = tls.get_ref().1;
        Ok((
            conn.peer_certificates().unwrap_or_default().to_vec(),
            conn.alpn_protocol().map(<[u8]>::to_vec),
        ))
    };
    tokio::time::timeout(common::IO_TIMEOUT, connect)
        .await
        .expect("TLS handshake timed out")
}

/// Verifies `chain` for [`DOMAIN`] with webpki against `root` (Pebble's), at `now`.
fn verify(chain: &[CertificateDer<'static>], root: &CertificateDer<'static>) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    let (leaf, rest) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
    verifier
        .verify_server_cert(leaf, rest, &ServerName::try_from(DOMAIN).unwrap(), &[], UnixTime::now())
        .map(|_| ())
}

fn fingerprint(chain: &[CertificateDer<'static>]) -> String {
    relaydesk_signalling::tls::fingerprint(chain[0].as_ref())
}

/// Waits (bounded) until the served chain is one that Pebble issued: it verifies against Pebble's root and
/// its second certificate is Pebble's intermediate. `except`: a fingerprint that does not count.
async fn wait_for_pebble_certificate(
    addr: SocketAddr,
    pebble: &mut Pebble,
    except: Option<&str>,
) -> Vec<CertificateDer<'static>> {
    let root = pebble.management_cert("/roots/0").await;
    let intermediate = pebble.management_cert("/intermediates/0").await;
    let deadline = Instant::now() + ISSUE_TIMEOUT;
    loop {
        let (chain, _) = served_chain(addr).await;
        let issued = verify(&chain, &root).is_ok() && chain.get(1) == Some(&intermediate);
        if issued && except != Some(fingerprint(&chain).as_str()) {
            return chain;
        }
        assert!(
            Instant::now() < deadline,
            "no Pebble-issued certificate served within {ISSUE_TIMEOUT:?}; pebble said:\n{}",
            pebble.pebble.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

fn acme_config(dir: &Path, port: u16, pebble: &Pebble) -> Config {
    let mut c = common::test_config(dir);
    c.listen = SocketAddr::from(([127, 0, 0, 1], port));
    // A copy that outlives Pebble's directory (the restart without Pebble reads it too).
    let ca = dir.join("pebble-https-ca.pem");
    std::fs::copy(pebble.https_ca(), &ca).unwrap();
    c.acme = Some(AcmeConfig {
        domains: vec![DOMAIN.to_string()],
        contact: Some("ops@relaydesk.example".into()),
        directory: pebble.directory(),
        directory_ca: Some(ca),
    });
    c.validate().unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn counter(name_and_labels: &str) -> u64 {
    let text = relaydesk_signalling::http::metrics_handle().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_by_tls_alpn_and_serves_the_stored_certificate_without_the_authority() {
    let data = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let mut pebble = Pebble::start(port, None);
    let config = acme_config(data.path(), port, &pebble);
    let server = Server::start(config.clone()).await.unwrap();
    assert_eq!(server.local_addr().port(), port);

    let answered_before = counter("relaydesk_acme_validations_total{result=\"answered\"}");
    let issued = wait_for_pebble_certificate(server.local_addr(), &mut pebble, None).await;
    // Pebble's validation connected to the listener and got the challenge certificate.
    assert!(counter("relaydesk_acme_validations_total{result=\"answered\"}") > answered_before);
    // Ordinary clients still get HTTP on the same listener.
    let (_, alpn) = served_chain(server.local_addr()).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    // A validation-style ClientHello (only `acme-tls/1`) with no order under way gets no certificate at all.
    assert!(
        served_chain_offering(server.local_addr(), vec![b"acme-tls/1".to_vec()])
            .await
            .is_err()
    );
    // The account key and the certificate with its key are kept private in the data directory.
    let acme_dir = data.path().join("acme");
    assert_eq!(mode(&acme_dir), 0o700);
    assert_eq!(mode(&acme_dir.join("certificate.pem")), 0o600);
    let accounts: Vec<_> = std::fs::read_dir(&acme_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("account-"))
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(mode(&accounts[0]), 0o600);
    server.shutdown().await.unwrap();

    // The authority is gone: a restart serves the last good certificate from the data directory.
    let root = pebble.management_cert("/roots/0").await;
    let _ = pebble.stop();
    let server = Server::start(config).await.unwrap();
    assert_eq!(server.fingerprint(), fingerprint(&issued));
    let (chain, _) = served_chain(server.local_addr()).await;
    assert_eq!(fingerprint(&chain), fingerprint(&issued));
    verify(&chain, &root).expect("the stored chain still verifies");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_without_restart_and_keeps_the_certificate_when_the_authority_is_gone() {
    let data = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    // Certificates that live 15 s: renewal is due 10 s after each issuance.
    let mut pebble = Pebble::start(port, Some(15));
    let server = Server::start(acme_config(data.path(), port, &pebble)).await.unwrap();
    let addr = server.local_addr();

    let first = wait_for_pebble_certificate(addr, &mut pebble, None).await;
    let second = wait_for_pebble_certificate(addr, &mut pebble, Some(&fingerprint(&first))).await;
    assert_ne!(fingerprint(&first), fingerprint(&second));
    let stored = std::fs::read(data.path().join("acme/certificate.pem")).unwrap();
    assert_eq!(
        CertificateDer::from_pem_slice(&stored).unwrap(),
        second[0],
        "the renewal was stored"
    );

    // Pebble stops: the next renewal fails, is counted, and the renewed certificate stays in service.
    let failed_before = counter("relaydesk_acme_orders_total{result=\"failed\"}");
    let _ = pebble.stop();
    let deadline = Instant::now() + ISSUE_TIMEOUT;
    while counter("relaydesk_acme_orders_total{result=\"failed\"}") == failed_before {
        assert!(Instant::now() < deadline, "no failed renewal counted");
        tokio::time::sleep(POLL).await;
    }
    let (chain, _) = served_chain(addr).await;
    assert_eq!(fingerprint(&chain), fingerprint(&second));
    server.shutdown().await.unwrap();
}
