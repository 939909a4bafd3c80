//! A call whose agent sits on a network that lets through nothing but TCP to port 443, with the browser
//! forced to relay (`iceTransportPolicy: "relay"`): the console's call connects through coturn over TLS,
//! reached through RelayDesk's own HTTPS port by SNI, and both pages decode each other's video.
//!
//! Two network namespaces joined by a veth pair (tests/common/netns.rs): the server's holds RelayDesk on
//! 10.231.0.2:443, its SFU, coturn (TLS on loopback only, relaying to the SFU's address only) and the
//! visitor's Chromium; the agent's Chromium is in the browser's namespace, whose nftables allow only TCP to
//! port 443 of the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::{Browser, HostPage, WAIT, add_user, console_login, site_key};
use common::netns::{NetnsPair, Policy, SERVER_IP};
use relaydesk::media::SfuMedia;
use relaydesk_sfu::DriverConfig;
use relaydesk_signalling::live::{LiveParts, MediaWiring};
use relaydesk_signalling::masking::Masker;
use relaydesk_signalling::server::AdminBootstrap;
use relaydesk_signalling::{Server, StartOptions};
use serde_json::{Value, json};

const TURN_HOST: &str = "turn.relaydesk.test";
const SECRET: &str = "a-test-secret-shared-with-coturn";

/// The selected candidate pair of a page's call: local candidate type and relay protocol, inbound video
/// frames decoded and the connection state.
const PATH: &str = r#"
const done = arguments[arguments.length - 1];
const pc = (PC);
if (!pc) { done(null); return; }
pc.getStats().then((r) => {
  let pair = null, frames = 0;
  r.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = r.get(s.selectedCandidatePairId);
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames = Math.max(frames, s.framesDecoded || 0);
  });
  const local = pair ? r.get(pair.localCandidateId) : null;
  done({ type: local && local.candidateType, relay: local && local.relayProtocol, frames, state: pc.connectionState });
}, (e) => done({ error: String(e) }));
"#;

/// Waits (bounded) until a page's call decodes video, and returns its path.
async fn wait_video(b: &Browser, who: &str, pc: &str) -> Value {
    let script = PATH.replace("(PC)", pc);
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let v = b.exec_async(&script, json!([])).await;
        if v["frames"].as_u64().unwrap_or(0) > 10 {
            return v;
        }
        assert!(Instant::now() < deadline, "{who}: no video within {:?}: {v}", WAIT * 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// coturn in the server's namespace, killed when dropped.
struct Coturn(std::process::Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server namespace's runtime, shut down in the background when dropped: dropping a runtime inside the
/// test's own (also while a failed assertion unwinds) would abort the process and leave the namespaces.
struct NsRuntime(Option<tokio::runtime::Runtime>);

impl NsRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().unwrap()
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// `/etc/netns/NAME/hosts` (bind-mounted over `/etc/hosts` for programs `ip netns exec` starts there),
/// removed when dropped.
struct NetnsHosts(std::path::PathBuf);

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_allowed_only_tls_on_443_calls_through_coturn_reached_by_sni() {
    let pair = NetnsPair::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();

    // coturn: TLS on the server namespace's loopback (RelayDesk passes to it), relaying to the SFU only.
    let ck = rcgen::generate_simple_self_signed(vec![TURN_HOST.to_owned()]).unwrap();
    std::fs::write(dir.join("turn-cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("turn-key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let conf = dir.join("turnserver.conf");
    std::fs::write(
        &conf,
        format!(
            "listening-ip=127.0.0.1\nrelay-ip={SERVER_IP}\nlistening-port=3478\ntls-listening-port=5349\n\
             min-port=49152\nmax-port=65535\nrealm=relaydesk.test\nuse-auth-secret\nstatic-auth-secret={SECRET}\n\
             cert={d}/turn-cert.pem\npkey={d}/turn-key.pem\nno-tlsv1\nno-tlsv1_1\nno-dtls\nno-cli\n\
             no-multicast-peers\ndenied-peer-ip=0.0.0.0-255.255.255.255\nallowed-peer-ip={SERVER_IP}\n\
             fingerprint\nno-software-attribute\nuserdb={d}/turndb\npidfile={d}/turnserver.pid\n\
             log-file=stdout\nsimple-log\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let _coturn = Coturn(
        pair.server
            .command("turnserver")
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(dir.join("turn-secret"), SECRET).unwrap();

    // RelayDesk and its SFU in the server's namespace, on 443; admin set-up from there too.
    let rt = NsRuntime(Some(pair.server.runtime()));
    let server_dir = dir.clone();
    let (server, origin, key, host) = rt
        .get()
        .spawn(async move {
            // coturn's TLS port accepts before RelayDesk hands it anything (bounded).
            let deadline = Instant::now() + WAIT;
            while tokio::net::TcpStream::connect("127.0.0.1:5349").await.is_err() {
                assert!(Instant::now() < deadline, "coturn listens within {WAIT:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let driver = DriverConfig::new(SERVER_IP, 1);
            let (sfu, events) = SfuMedia::start(&driver, &Masker::default(), false).unwrap();
            let parts = LiveParts {
                media: Some(MediaWiring { control: sfu, events }),
                sink: None,
            };
            let mut config = common::test_config(&server_dir);
            config.listen = (SERVER_IP, 443).into();
            config.media.bind_ip = SERVER_IP;
            config.turn.urls = vec![format!("turns:{TURN_HOST}:443?transport=tcp")];
            config.turn.secret_file = Some(server_dir.join("turn-secret"));
            config.turn.tls_host = Some(TURN_HOST.to_owned());
            config.turn.tls_upstream = Some("127.0.0.1:5349".parse().unwrap());
            let server = Server::start_with(config, StartOptions::default().live(parts))
                .await
                .unwrap();
            let password = match server.admin_bootstrap() {
                Some(AdminBootstrap::Generated(p)) => p.clone(),
                other => panic!("expected a generated admin password, got {other:?}"),
            };
            let admin = common::Client::new(server.local_addr(), &server_dir.join("tls/cert.pem"));
            assert_eq!(admin.login("admin", &password).await.status, 200);
            let origin = format!("https://{}", server.local_addr());
            let host = HostPage::start(&format!("{origin}/widget.js")).await;
            let key = site_key(&admin, "sales", &[&host.origin]).await;
            add_user(&admin, "alice", "Alice", "agent", "sales").await;
            (server, origin, key, host)
        })
        .await
        .unwrap();

    // The agent's namespace: the TURN name resolves to the server; only TCP to its port 443 passes.
    let hosts_dir = std::path::PathBuf::from(format!("/etc/netns/{}", pair.browser.name));
    std::fs::create_dir_all(&hosts_dir).unwrap();
    let _hosts = NetnsHosts(hosts_dir.clone());
    std::fs::write(
        hosts_dir.join("hosts"),
        format!("127.0.0.1 localhost\n{SERVER_IP} {TURN_HOST}\n"),
    )
    .unwrap();
    pair.set_policy(Policy::OnlyTcpTo(443));

    // The agent's console, forced to relay (every peer connection of its pages).
    let agent = Browser::start_in(Some(&pair.browser)).await;
    agent
        .cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": "const P = window.RTCPeerConnection; window.RTCPeerConnection = function (c) { return new P({ ...(c || {}), iceTransportPolicy: 'relay' }); }; window.RTCPeerConnection.prototype = P.prototype;"}),
        )
        .await;
    console_login(&agent, &origin, "alice", "alice-password").await;
    agent
        .click(&agent.find("#presence option[value=available]").await)
        .await;

    // The visitor, unrestricted, in the server's namespace.
    let visitor = Browser::start_in(Some(&pair.server)).await;
    visitor.goto(&host.url(&key)).await;
    visitor.click(&visitor.find("#relaydesk-launcher").await).await;
    agent.click(&agent.find("#offers li.offer button.accept").await).await;
    let conv = agent
        .wait_for(
            "the conversation",
            "const p = document.querySelector('.pane:not([hidden])'); return p && p.dataset.conversation",
        )
        .await;
    let conv = conv.as_str().unwrap().to_string();
    visitor.frame(Some(&visitor.find("#relaydesk-frame").await)).await;
    visitor
        .wait_for(
            "the agent's name",
            "return document.getElementById('status').textContent === 'Chatting with Alice'",
        )
        .await;

    // Both start video.
    let started = Instant::now();
    visitor.click(&visitor.find("#start-video").await).await;
    agent
        .click(&agent.find(".pane:not([hidden]) .actions button:nth-child(2)").await)
        .await;
    let agent_pc =
        format!("window.relaydeskCalls && window.relaydeskCalls['{conv}'] && window.relaydeskCalls['{conv}'].pc");
    let a = wait_video(&agent, "agent", &agent_pc).await;
    eprintln!(
        "relayed agent: 10 video frames decoded {:?} after starting the call",
        started.elapsed()
    );
    let v = wait_video(&visitor, "visitor", "window.relaydeskCall && window.relaydeskCall.pc").await;
    // The agent's media goes through coturn, over TLS (through RelayDesk's port 443: nothing else passes).
    assert_eq!(a["type"], "relay", "{a}");
    assert_eq!(a["relay"], "tls", "{a}");
    assert_eq!(a["state"], "connected", "{a}");
    assert_eq!(v["state"], "connected", "{v}");
    // The policy was in force: the browser tried other paths and they were dropped.
    assert!(pair.drops().policy > 0, "{:?}", pair.drops());

    drop(agent);
    drop(visitor);
    let cert = dir.join("tls/cert.pem");
    let passed = rt
        .get()
        .spawn(async move {
            let metrics = common::Client::new(server.local_addr(), &cert)
                .get("/metrics")
                .await
                .text();
            let _ = server.shutdown().await;
            drop(host);
            metrics
                .lines()
                .find(|l| l.starts_with("relaydesk_turn_tls_connections_total"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .await
        .unwrap();
    // RelayDesk passed the agent's TURN connection(s) to coturn.
    assert!(passed >= 1.0, "{passed}");
    drop(rt);
}
