//! Calls in real Chromium across a bad network (tests/common/netns.rs): the server and its SFU in the server's
//! namespace, the visitor's browser in the browser's namespace behind nftables and a token bucket, the agent's
//! browser in the server's namespace.
//!
//! Why the agent is on the server's side: a contact centre's agents sit on its own network, near the server,
//! while a visitor calls from wherever they are. Impairing one leg also makes every figure attributable: the
//! visitor's inbound streams cross the bad link downstream (SFU to visitor), the agent's inbound streams carry
//! what crossed it upstream (visitor to SFU, then a clean hop).
//!
//! - 5 % loss each way and a 1 Mbit/s cap together, for a 20 s window: video keeps decoding on both sides
//!   (frames per 20 s above [`MIN_FRAMES_PER_20S`]), freezes bounded, audio keeps playing with bounded
//!   concealment, and losses are repaired (NACKs and retransmissions counted).
//! - A 3 s total outage: media is back on both sides within [`RECOVERY`] of its end, without any action.
//! - All UDP dropped: the call connects over ICE-TCP on the HTTPS port (443) and both sides decode video;
//!   the time to the first decoded frame is reported.
//! - No media path at all (no UDP, no STUN inside TCP), both browsers behind it: the console and the widget say
//!   so within 15 s and the chat goes on.
//!
//! Tests in this file run one at a time: each drives two Chromiums, and figures taken while another test's
//! browsers share the CPU would measure the host, not the network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use browser::{Browser, HostPage, WAIT, add_user, console_login, screenshot_path, site_key};
use common::netns::{NetnsPair, Policy, SERVER_IP, SERVER_PUBLIC_IP};
use relaydesk::media::SfuMedia;
use relaydesk_sfu::DriverConfig;
use relaydesk_signalling::live::{LiveParts, MediaWiring};
use relaydesk_signalling::masking::Masker;
use relaydesk_signalling::server::AdminBootstrap;
use relaydesk_signalling::{RunningServer, Server, StartOptions};
use serde_json::{Value, json};

/// Frames a page must decode per 20 s of the impaired window: 10 frames per second, the rate below which
/// motion stops reading as motion (a face talking becomes a slide show); a third of the fake camera's 30.
const MIN_FRAMES_PER_20S: u64 = 200;
/// Freezes (WebRTC's `freezeCount`: a frame later than max(3 × the mean interval, mean + 150 ms)) allowed per
/// 20 s of the impaired window, and their total duration: a stream that stalls more is not a usable call.
const MAX_FREEZES_PER_20S: u64 = 10;
const MAX_FREEZE_SECS_PER_20S: f64 = 4.0;
/// Audio packets a page must receive per 20 s (20 ms frames: 1000 sent): 5 % loss, not more than twice over.
const MIN_AUDIO_PACKETS_PER_20S: u64 = 900;
/// Share of the audio played out that may be concealment (samples invented by the jitter buffer) under 5 %
/// loss: twice the loss rate.
const MAX_CONCEALED_SHARE: f64 = 0.10;
/// Media must be back on both sides this long after an outage ends.
const RECOVERY: Duration = Duration::from_secs(2);
/// The clients' promise when no media path works: a clear message within this.
const NO_MEDIA_MESSAGE: Duration = Duration::from_secs(15);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The detailed `getStats()` figures of a page's call (`pc` is the script finding its RTCPeerConnection).
const STATS: &str = r#"
const done = arguments[arguments.length - 1];
const pc = (PC);
if (!pc) { done(null); return; }
pc.getStats().then((r) => {
  const out = { state: pc.connectionState, ice: pc.iceConnectionState, inVideo: null, inAudio: null, outVideo: null, outAudio: null, pair: null };
  const pick = (s, keys) => Object.fromEntries(keys.map((k) => [k, s[k] ?? 0]));
  r.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video' && (!out.inVideo || s.framesDecoded > out.inVideo.framesDecoded))
      out.inVideo = pick(s, ['framesDecoded', 'keyFramesDecoded', 'freezeCount', 'totalFreezesDuration', 'nackCount', 'pliCount', 'firCount', 'packetsReceived', 'packetsLost', 'retransmittedPacketsReceived', 'frameWidth', 'frameHeight', 'framesPerSecond', 'bytesReceived']);
    if (s.type === 'inbound-rtp' && s.kind === 'audio' && (!out.inAudio || s.packetsReceived > out.inAudio.packetsReceived))
      out.inAudio = pick(s, ['packetsReceived', 'packetsLost', 'totalSamplesReceived', 'concealedSamples', 'silentConcealedSamples', 'concealmentEvents', 'nackCount']);
    if (s.type === 'outbound-rtp' && s.kind === 'video' && (!out.outVideo || s.packetsSent > out.outVideo.packetsSent))
      out.outVideo = pick(s, ['packetsSent', 'framesEncoded', 'keyFramesEncoded', 'nackCount', 'pliCount', 'firCount', 'retransmittedPacketsSent', 'frameWidth', 'frameHeight', 'qualityLimitationReason', 'targetBitrate']);
    if (s.type === 'outbound-rtp' && s.kind === 'audio' && (!out.outAudio || s.packetsSent > out.outAudio.packetsSent))
      out.outAudio = pick(s, ['packetsSent', 'nackCount', 'retransmittedPacketsSent']);
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded')
      out.pair = pick(s, ['currentRoundTripTime', 'availableOutgoingBitrate']);
  });
  done(out);
}, (e) => done({ error: String(e) }));
"#;

const VISITOR_PC: &str = "window.relaydeskCall && window.relaydeskCall.pc";

fn agent_pc(conv: &str) -> String {
    format!("window.relaydeskCalls && window.relaydeskCalls['{conv}'] && window.relaydeskCalls['{conv}'].pc")
}

async fn stats(b: &Browser, pc: &str) -> Value {
    b.exec_async(&STATS.replace("(PC)", pc), json!([])).await
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or(0.0)
}

/// `later - earlier` of one counter.
fn delta(earlier: &Value, later: &Value, path: &[&str]) -> f64 {
    num(later, path) - num(earlier, path)
}

/// The server and its SFU, running in the server's namespace on a runtime of their own.
struct Site {
    /// `None` once dropped (see the `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    server: Option<RunningServer>,
    sfu: std::sync::Arc<SfuMedia>,
    admin: common::Client,
    _tmp: tempfile::TempDir,
    /// `https://10.231.0.2`: the server as both browsers reach it.
    origin: String,
}

impl Site {
    /// Starts the server on port 443 of the server's namespace (all its addresses: its loopback for the
    /// test's admin client, the veth for the browsers) and the SFU on the veth's address.
    async fn start(pair: &NetnsPair) -> Site {
        Site::start_with(pair, |_| {}).await
    }

    /// [`Site::start`] with a change to the server's configuration.
    async fn start_with(pair: &NetnsPair, change: impl FnOnce(&mut relaydesk_signalling::Config)) -> Site {
        let rt = pair.server.runtime();
        let tmp = tempfile::tempdir().unwrap();
        let mut config = common::test_config(tmp.path());
        config.listen = "0.0.0.0:443".parse().unwrap();
        change(&mut config);
        let (server, sfu, password) = rt
            .spawn(async move {
                let driver = DriverConfig::new(SERVER_IP, 1);
                let (sfu, events) = SfuMedia::start(&driver, &Masker::default(), false).unwrap();
                let parts = LiveParts {
                    media: Some(MediaWiring {
                        control: sfu.clone(),
                        events,
                    }),
                    sink: None,
                };
                let server = Server::start_with(config, StartOptions::default().live(parts))
                    .await
                    .unwrap();
                let password = match server.admin_bootstrap() {
                    Some(AdminBootstrap::Generated(p)) => p.clone(),
                    other => panic!("expected a generated admin password, got {other:?}"),
                };
                (server, sfu, password)
            })
            .await
            .unwrap();
        let local: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let admin = common::Client::new(local, &tmp.path().join("tls/cert.pem"));
        let a = admin.clone();
        let status = rt
            .spawn(async move { a.login("admin", &password).await.status })
            .await
            .unwrap();
        assert_eq!(status, 200);
        Site {
            rt: Some(rt),
            server: Some(server),
            sfu,
            admin,
            _tmp: tmp,
            origin: format!("https://{SERVER_IP}"),
        }
    }

    /// Runs an admin step on the server's runtime (its sockets must be made in the server's namespace).
    async fn admin<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: impl FnOnce(common::Client) -> F,
    ) -> T {
        self.rt.as_ref().unwrap().spawn(f(self.admin.clone())).await.unwrap()
    }

    async fn stop(mut self) {
        if let (Some(s), Some(rt)) = (self.server.take(), &self.rt) {
            rt.spawn(s.shutdown()).await.unwrap().unwrap();
        }
        self.sfu.shutdown(Duration::from_secs(5)).unwrap();
    }
}

impl Drop for Site {
    /// Also after a failed assertion: a runtime dropped inside the test's runtime would panic again (and abort
    /// before the namespaces are removed); `shutdown_background` does not block.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A conversation between a visitor (in the browser's namespace) and agent Alice, with the widget's frame
/// selected in the visitor's browser.
struct Conversation {
    visitor: Browser,
    agent: Browser,
    conv: String,
    _host: HostPage,
}

/// Sets up the conversation: Alice available in the console, the visitor opens the widget, Alice accepts.
async fn converse(site: &Site, visitor_ns: &common::netns::Ns, agent_ns: &common::netns::Ns) -> Conversation {
    let host = HostPage::start_in(Some(visitor_ns), &format!("{}/widget.js", site.origin)).await;
    let host_origin = host.origin.clone();
    let key = site
        .admin(move |a| async move {
            let key = site_key(&a, "sales", &[&host_origin]).await;
            add_user(&a, "alice", "Alice", "agent", "sales").await;
            key
        })
        .await;
    let agent = Browser::start_in(Some(agent_ns)).await;
    console_login(&agent, &site.origin, "alice", "alice-password").await;
    agent
        .click(&agent.find("#presence option[value=available]").await)
        .await;
    let visitor = Browser::start_in(Some(visitor_ns)).await;
    visitor.goto(&host.url(&key)).await;
    visitor.click(&visitor.find("#relaydesk-launcher").await).await;
    agent.click(&agent.find("#offers li.offer button.accept").await).await;
    let conv = agent
        .wait_for(
            "the conversation",
            "const p = document.querySelector('.pane:not([hidden])'); return p && p.dataset.conversation",
        )
        .await;
    visitor.frame(Some(&visitor.find("#relaydesk-frame").await)).await;
    visitor
        .wait_for(
            "the agent's name",
            "return document.getElementById('status').textContent === 'Chatting with Alice'",
        )
        .await;
    Conversation {
        visitor,
        agent,
        conv: conv.as_str().unwrap().to_string(),
        _host: host,
    }
}

/// Both start video.
async fn start_video(c: &Conversation) {
    c.visitor.click(&c.visitor.find("#start-video").await).await;
    c.agent
        .click(&c.agent.find(".pane:not([hidden]) .actions button:nth-child(2)").await)
        .await;
}

/// Waits (bounded) until both pages decode video and receive audio, each growing between two readings.
async fn wait_flowing(c: &Conversation) -> (Value, Value) {
    let agent_pc = agent_pc(&c.conv);
    let deadline = Instant::now() + WAIT;
    let mut first: Option<(Value, Value)> = None;
    loop {
        let v = stats(&c.visitor, VISITOR_PC).await;
        let a = stats(&c.agent, &agent_pc).await;
        let live =
            |s: &Value| num(s, &["inVideo", "framesDecoded"]) > 0.0 && num(s, &["inAudio", "packetsReceived"]) > 0.0;
        match &first {
            None if live(&v) && live(&a) => first = Some((v.clone(), a.clone())),
            Some((v0, a0))
                if delta(v0, &v, &["inVideo", "framesDecoded"]) >= 10.0
                    && delta(a0, &a, &["inVideo", "framesDecoded"]) >= 10.0
                    && delta(v0, &v, &["inAudio", "packetsReceived"]) >= 25.0
                    && delta(a0, &a, &["inAudio", "packetsReceived"]) >= 25.0 =>
            {
                return (v, a);
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "media not flowing both ways within {WAIT:?}: visitor {v}, agent {a}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The figures of one page over a window, as a line for the report.
fn window_line(who: &str, s0: &Value, s1: &Value, secs: f64) -> String {
    let d = |p: &[&str]| delta(s0, s1, p);
    let samples = d(&["inAudio", "totalSamplesReceived"]);
    format!(
        "{who}: {:.0} frames decoded in {secs:.1} s ({:.1} fps, last {}x{}, {:.0} kbit/s), {:.0} freezes ({:.2} s), \
         {:.0} key frames decoded; video in: {:.0} packets, {:.0} lost, {:.0} NACKs sent, {:.0} PLIs, {:.0} FIRs sent, \
         {:.0} retransmissions received; video out: {:.0} NACKs received, {:.0} retransmissions sent, {:.0} PLIs, \
         {:.0} FIRs received, {:.0} key frames encoded, limited by {}; audio in: {:.0} packets, {:.0} lost, \
         {:.2} % of {:.0} samples concealed",
        d(&["inVideo", "framesDecoded"]),
        d(&["inVideo", "framesDecoded"]) / secs,
        num(s1, &["inVideo", "frameWidth"]),
        num(s1, &["inVideo", "frameHeight"]),
        d(&["inVideo", "bytesReceived"]) * 8.0 / 1000.0 / secs,
        d(&["inVideo", "freezeCount"]),
        d(&["inVideo", "totalFreezesDuration"]),
        d(&["inVideo", "keyFramesDecoded"]),
        d(&["inVideo", "packetsReceived"]),
        d(&["inVideo", "packetsLost"]),
        d(&["inVideo", "nackCount"]),
        d(&["inVideo", "pliCount"]),
        d(&["inVideo", "firCount"]),
        d(&["inVideo", "retransmittedPacketsReceived"]),
        d(&["outVideo", "nackCount"]),
        d(&["outVideo", "retransmittedPacketsSent"]),
        d(&["outVideo", "pliCount"]),
        d(&["outVideo", "firCount"]),
        d(&["outVideo", "keyFramesEncoded"]),
        s1["outVideo"]["qualityLimitationReason"],
        d(&["inAudio", "packetsReceived"]),
        d(&["inAudio", "packetsLost"]),
        100.0 * d(&["inAudio", "concealedSamples"]) / samples.max(1.0),
        samples,
    )
}

/// The assertions of an impaired window for one page.
fn assert_window(who: &str, s0: &Value, s1: &Value) {
    let d = |p: &[&str]| delta(s0, s1, p);
    let line = window_line(who, s0, s1, 20.0);
    assert_eq!(s1["state"], "connected", "{who}: {line}");
    assert!(d(&["inVideo", "framesDecoded"]) >= MIN_FRAMES_PER_20S as f64, "{line}");
    assert!(d(&["inVideo", "freezeCount"]) <= MAX_FREEZES_PER_20S as f64, "{line}");
    assert!(
        d(&["inVideo", "totalFreezesDuration"]) <= MAX_FREEZE_SECS_PER_20S,
        "{line}"
    );
    assert!(
        d(&["inAudio", "packetsReceived"]) >= MIN_AUDIO_PACKETS_PER_20S as f64,
        "{line}"
    );
    let samples = d(&["inAudio", "totalSamplesReceived"]);
    assert!(samples > 0.0, "{line}");
    assert!(
        d(&["inAudio", "concealedSamples"]) / samples <= MAX_CONCEALED_SHARE,
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_keeps_its_video_and_audio_under_loss_and_a_rate_cap() {
    let _serial = SERIAL.lock().await;
    let pair = NetnsPair::new();
    let site = Site::start(&pair).await;
    let c = converse(&site, &pair.browser, &pair.server).await;
    start_video(&c).await;
    wait_flowing(&c).await;

    // 5 % loss each way and 1 Mbit/s each way, for a 20 s window (the window is the measurement, not a wait
    // for anything).
    pair.set_loss(5);
    pair.set_rate(1000);
    let agent_pc = agent_pc(&c.conv);
    let (v0, a0) = (stats(&c.visitor, VISITOR_PC).await, stats(&c.agent, &agent_pc).await);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (v1, a1) = (stats(&c.visitor, VISITOR_PC).await, stats(&c.agent, &agent_pc).await);
    let secs = start.elapsed().as_secs_f64();
    let drops = pair.drops();
    println!("impaired window: {drops:?}");
    println!("{}", window_line("visitor (downlink)", &v0, &v1, secs));
    println!("{}", window_line("agent (visitor's uplink)", &a0, &a1, secs));
    println!("visitor path: {}", v1["pair"]);
    for ns in [&pair.browser, &pair.server] {
        let tbf = pair.qdisc_stats(ns);
        println!(
            "token bucket on {}: {}",
            ns.interface,
            tbf.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        assert!(tbf.contains("rate 1Mbit"), "{tbf}");
    }
    assert!(drops.loss > 0, "{drops:?}");
    assert_window("visitor", &v0, &v1);
    assert_window("agent", &a0, &a1);
    // Losses are repaired: the visitor asks for retransmissions of what it lost downstream, and retransmits
    // what the SFU lost upstream.
    assert!(delta(&v0, &v1, &["inVideo", "nackCount"]) > 0.0, "visitor sent no NACK");
    assert!(
        delta(&v0, &v1, &["outVideo", "retransmittedPacketsSent"]) > 0.0,
        "visitor retransmitted nothing"
    );

    drop(c);
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_comes_back_by_itself_after_a_three_second_outage() {
    let _serial = SERIAL.lock().await;
    let pair = NetnsPair::new();
    let site = Site::start(&pair).await;
    let c = converse(&site, &pair.browser, &pair.server).await;
    start_video(&c).await;
    wait_flowing(&c).await;
    let agent_pc = agent_pc(&c.conv);

    // A 3 s outage (its length is the stimulus, timed; nothing waits on it).
    pair.start_outage();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (v0, a0) = (stats(&c.visitor, VISITOR_PC).await, stats(&c.agent, &agent_pc).await);
    let dropped = pair.drops().outage;
    pair.end_outage();
    let ended = Instant::now();
    // Back: each page decodes new frames and receives new audio packets (a few of each, not a single stray).
    let back = |s0: &Value, s: &Value| {
        delta(s0, s, &["inVideo", "framesDecoded"]) >= 3.0 && delta(s0, s, &["inAudio", "packetsReceived"]) >= 5.0
    };
    let (mut visitor_back, mut agent_back) = (None, None);
    let (mut v, mut a) = (v0.clone(), a0.clone());
    while visitor_back.is_none() || agent_back.is_none() {
        assert!(
            ended.elapsed() < WAIT,
            "media not back within {WAIT:?} of the outage's end: visitor {v}, agent {a}"
        );
        if visitor_back.is_none() {
            v = stats(&c.visitor, VISITOR_PC).await;
            if back(&v0, &v) {
                visitor_back = Some(ended.elapsed());
            }
        }
        if agent_back.is_none() {
            a = stats(&c.agent, &agent_pc).await;
            if back(&a0, &a) {
                agent_back = Some(ended.elapsed());
            }
        }
    }
    let (visitor_back, agent_back) = (visitor_back.unwrap(), agent_back.unwrap());
    println!(
        "outage: {dropped} packets dropped in 3 s; media back after {visitor_back:?} at the visitor, {agent_back:?} at the agent"
    );
    println!("after: {}", window_line("visitor", &v0, &v, visitor_back.as_secs_f64()));
    println!("after: {}", window_line("agent", &a0, &a, agent_back.as_secs_f64()));
    assert!(dropped > 0);
    assert!(visitor_back <= RECOVERY, "visitor's media back after {visitor_back:?}");
    assert!(agent_back <= RECOVERY, "agent's media back after {agent_back:?}");
    assert_eq!(v["state"], "connected", "{v}");
    assert_eq!(a["state"], "connected", "{a}");

    drop(c);
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_media_path_both_sides_say_so_and_the_chat_goes_on() {
    let _serial = SERIAL.lock().await;
    let pair = NetnsPair::new();
    let site = Site::start(&pair).await;
    // Both browsers behind the same wall: no UDP, no STUN inside TCP; TLS to the server (the chat) passes.
    let c = converse(&site, &pair.browser, &pair.browser).await;
    pair.set_policy(Policy::NoMedia);
    start_video(&c).await;
    let started = Instant::now();
    let notice = c
        .visitor
        .wait_for(
            "the widget's message",
            "const n = document.getElementById('call-notice'); return !n.hidden && document.getElementById('call').hidden && window.relaydeskCall.pc === null && n.textContent",
        )
        .await;
    let visitor_after = started.elapsed();
    // Each side gives up on its own deadline, or hears first that the other's failed (`call_end` with reason
    // `failed`): either way the console says the call could not connect, naming whose network blocks it.
    let status = c
        .agent
        .wait_for(
            "the console's message",
            &format!(
                "const s = document.querySelector('.pane:not([hidden]) .call-status'); const call = window.relaydeskCalls['{}']; \
                 return call && call.pc === null && s.textContent",
                c.conv
            ),
        )
        .await;
    let agent_after = started.elapsed();
    println!("no media path: the widget said so after {visitor_after:?}, the console after {agent_after:?}");
    assert!(
        notice.as_str().unwrap().starts_with("The call could not connect"),
        "{notice}"
    );
    assert!(
        status.as_str().unwrap().starts_with("The call could not connect"),
        "{status}"
    );
    assert!(visitor_after <= NO_MEDIA_MESSAGE, "{visitor_after:?}");
    assert!(agent_after <= NO_MEDIA_MESSAGE, "{agent_after:?}");
    c.visitor.frame(None).await;
    c.visitor.screenshot(&screenshot_path("widget-call-failed.png")).await;
    c.visitor.frame(Some(&c.visitor.find("#relaydesk-frame").await)).await;
    c.agent.screenshot(&screenshot_path("agent-call-failed.png")).await;
    assert!(
        pair.drops().policy > 0,
        "media was tried and dropped: {:?}",
        pair.drops()
    );

    // The chat goes on, both ways.
    c.visitor
        .type_text(&c.visitor.find("#input").await, "Can you hear me?\n")
        .await;
    c.agent
        .wait_for(
            "the visitor's message in the console",
            "return [...document.querySelectorAll('.pane:not([hidden]) .msg.visitor .body')].some(b => b.textContent === 'Can you hear me?')",
        )
        .await;
    c.agent
        .type_text(
            &c.agent.find(".pane:not([hidden]) textarea").await,
            "No, let us keep chatting.\n",
        )
        .await;
    c.visitor
        .wait_for(
            "the agent's reply in the widget",
            "return [...document.querySelectorAll('.msg.agent .body')].some(b => b.textContent === 'No, let us keep chatting.')",
        )
        .await;
    // And the widget offers a new call.
    let can_call = c
        .visitor
        .exec("return !document.getElementById('start-video').disabled", json!([]))
        .await;
    assert_eq!(can_call, json!(true));

    drop(c);
    site.stop().await;
}

/// The visitor's selected path: local candidate protocol and type, remote port.
const SELECTED: &str = r#"
const done = arguments[arguments.length - 1];
const pc = (PC);
if (!pc) { done(null); return; }
pc.getStats().then((r) => {
  let pair = null;
  r.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = r.get(s.selectedCandidatePairId); });
  const local = pair ? r.get(pair.localCandidateId) : null;
  const remote = pair ? r.get(pair.remoteCandidateId) : null;
  done({ protocol: local && local.protocol, remoteProtocol: remote && remote.protocol, remotePort: remote && remote.port });
}, (e) => done({ error: String(e) }));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_all_udp_dropped_the_call_connects_over_ice_tcp_on_the_https_port() {
    let _serial = SERIAL.lock().await;
    let pair = NetnsPair::new();
    pair.set_policy(Policy::DropUdp);
    // Chromium pairs with ICE-TCP candidates on public addresses only: the server announces one (its veth
    // carries it, the browser's namespace routes it over the veth).
    pair.add_public_server_address();
    let site = Site::start_with(&pair, |c| c.media.announce_ip = Some(SERVER_PUBLIC_IP)).await;
    let c = converse(&site, &pair.browser, &pair.server).await;
    let started = Instant::now();
    start_video(&c).await;
    // Time to the first decoded frame on the visitor's side (the side whose UDP is blocked).
    let deadline = Instant::now() + WAIT;
    loop {
        let v = stats(&c.visitor, VISITOR_PC).await;
        if num(&v, &["inVideo", "framesDecoded"]) > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no video frame within {WAIT:?}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_frame = started.elapsed();
    let (v, a) = wait_flowing(&c).await;
    let path = c
        .visitor
        .exec_async(&SELECTED.replace("(PC)", VISITOR_PC), json!([]))
        .await;
    println!(
        "ICE-TCP: first video frame at the visitor {first_frame:?} after the call started; path {path}; \
         drops {:?}",
        pair.drops()
    );
    // The visitor's media runs over TCP to the HTTPS port; its UDP attempts were dropped.
    assert_eq!(path["protocol"], "tcp", "{path}");
    assert_eq!(path["remoteProtocol"], "tcp", "{path}");
    assert_eq!(path["remotePort"], 443, "{path}");
    assert!(pair.drops().policy > 0, "{:?}", pair.drops());
    assert_eq!(v["state"], "connected", "{v}");
    assert_eq!(a["state"], "connected", "{a}");
    drop(c);
    site.stop().await;
}
