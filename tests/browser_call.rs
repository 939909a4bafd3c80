//! A video call between the customer widget and the agent console in real Chromium, through the real SFU
//! (UDP on loopback): each page decodes the other's video and receives its audio; a 1 MiB file shared in the
//! chat reaches the agent's browser intact; a supervisor finds the call in the live list, listens in silently (both
//! videos decoded, both voices received) and whispers to the agent, whom the whisper reaches while the
//! visitor's connection never changes; hanging up ends media on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use browser::{Browser, HostPage, WAIT, add_user, console_login, screenshot_path, site_key};
use relaydesk::media::SfuMedia;
use relaydesk_sfu::DriverConfig;
use relaydesk_signalling::Server;
use relaydesk_signalling::live::{LiveParts, MediaWiring};
use relaydesk_signalling::masking::Masker;
use relaydesk_signalling::server::AdminBootstrap;
use serde_json::{Value, json};

/// Inbound video frames decoded and audio packets received by a page's call (`pc` is the script that finds
/// the RTCPeerConnection), the number of inbound video streams decoding and audio streams receiving, those
/// counters per inbound stream (`frames`, `packets`: by stats id), and the number of transceivers; or null
/// when there is no call.
const STATS: &str = r#"
const done = arguments[arguments.length - 1];
const pc = (PC);
if (!pc) { done(null); return; }
pc.getStats().then((r) => {
  let video = 0, audio = 0, videos = 0, audios = 0;
  const frames = {}, packets = {};
  r.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') { video = Math.max(video, s.framesDecoded || 0); if (s.framesDecoded > 0) videos += 1; frames[s.id] = s.framesDecoded || 0; }
    if (s.type === 'inbound-rtp' && s.kind === 'audio') { audio = Math.max(audio, s.packetsReceived || 0); if (s.packetsReceived > 0) audios += 1; packets[s.id] = s.packetsReceived || 0; }
  });
  done({ video, audio, videos, audios, frames, packets, transceivers: pc.getTransceivers().length, state: pc.connectionState });
}, (e) => done({ error: String(e) }));
"#;

/// Frames a video stream, and packets an audio stream, must gain after the first reading for `wait_streams` to
/// count it as flowing: a stream frozen after its first frames (a single `> 0` reading would pass it) fails.
const VIDEO_PROGRESS: u64 = 10;
const AUDIO_PROGRESS: u64 = 25;

/// Inbound streams of `now[key]` whose counter grew by at least `by` over `first[key]` (a stream first seen
/// after the first reading counts from zero).
fn progressed(first: &Value, now: &Value, key: &str, by: u64) -> u64 {
    let Some(streams) = now[key].as_object() else {
        return 0;
    };
    streams
        .iter()
        .filter(|(id, n)| n.as_u64().unwrap_or(0) >= first[key][id.as_str()].as_u64().unwrap_or(0) + by)
        .count() as u64
}

/// Waits (bounded) until the page's call decodes `videos` video streams and receives `audios` audio streams,
/// each progressing: its frames decoded (packets received) grow by [`VIDEO_PROGRESS`] ([`AUDIO_PROGRESS`])
/// after a first reading that already counts the streams as live.
async fn wait_streams(b: &Browser, who: &str, pc: &str, videos: u64, audios: u64) -> Value {
    let script = STATS.replace("(PC)", pc);
    let deadline = Instant::now() + WAIT;
    let mut first: Option<Value> = None;
    loop {
        let v = b.exec_async(&script, json!([])).await;
        let live = v["videos"].as_u64().unwrap_or(0) >= videos && v["audios"].as_u64().unwrap_or(0) >= audios;
        match &first {
            None if live => first = Some(v.clone()),
            Some(f)
                if progressed(f, &v, "frames", VIDEO_PROGRESS) >= videos
                    && progressed(f, &v, "packets", AUDIO_PROGRESS) >= audios =>
            {
                return v;
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{who}: not {videos} videos and {audios} voices progressing within {WAIT:?}: first {} now {v}",
            first.as_ref().unwrap_or(&Value::Null)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_between_widget_and_console_through_the_sfu() {
    let driver = DriverConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1);
    let (sfu, events) = SfuMedia::start(&driver, &Masker::default(), false).unwrap();
    let parts = LiveParts {
        media: Some(MediaWiring {
            control: sfu.clone(),
            events,
        }),
        sink: None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with_parts(common::test_config(tmp.path()), parts, |_| axum::Router::new())
        .await
        .unwrap();
    let password = match server.admin_bootstrap() {
        Some(AdminBootstrap::Generated(p)) => p.clone(),
        other => panic!("expected a generated admin password, got {other:?}"),
    };
    let admin = common::Client::new(server.local_addr(), &tmp.path().join("tls/cert.pem"));
    assert_eq!(admin.login("admin", &password).await.status, 200);
    let origin = format!("https://{}", server.local_addr());
    let host = HostPage::start(&format!("{origin}/widget.js")).await;
    let key = site_key(&admin, "sales", &[&host.origin]).await;
    add_user(&admin, "alice", "Alice", "agent", "sales").await;

    // Agent available, visitor connected and accepted.
    let agent = Browser::start().await;
    console_login(&agent, &origin, "alice", "alice-password").await;
    agent
        .click(&agent.find("#presence option[value=available]").await)
        .await;
    let visitor = Browser::start().await;
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

    // Both start video; each page decodes the other's video and receives its audio.
    visitor.click(&visitor.find("#start-video").await).await;
    agent
        .click(&agent.find(".pane:not([hidden]) .actions button:nth-child(2)").await)
        .await;
    let agent_pc =
        format!("window.relaydeskCalls && window.relaydeskCalls['{conv}'] && window.relaydeskCalls['{conv}'].pc");
    let visitor_pc = "window.relaydeskCall && window.relaydeskCall.pc";
    let v = wait_streams(&visitor, "visitor", visitor_pc, 1, 1).await;
    let a = wait_streams(&agent, "agent", &agent_pc, 1, 1).await;
    assert_eq!(v["state"], "connected", "{v}");
    assert_eq!(a["state"], "connected", "{a}");
    assert_eq!(
        visitor
            .exec("return document.getElementById('status').textContent", json!([]))
            .await,
        json!("In a call with Alice")
    );
    // Let the video elements paint a decoded frame before the screenshots.
    visitor
        .wait_for(
            "the agent's picture",
            "const v = document.getElementById('remote-video'); return v.videoWidth > 0 && v.currentTime > 0",
        )
        .await;
    agent
        .wait_for("the visitor's picture", "const v = document.querySelector('.pane:not([hidden]) video.remote'); return v.videoWidth > 0 && v.currentTime > 0")
        .await;
    visitor.frame(None).await;
    visitor.screenshot(&screenshot_path("widget-call.png")).await;
    agent.screenshot(&screenshot_path("agent-call.png")).await;

    // A 1 MiB file from the visitor to the agent, shared in the chat during the call: the server's hash, and
    // the bytes the agent's browser downloads, match the original's SHA-256.
    // A PDF by its signature and name (the server's default policy takes PDF, not arbitrary binaries).
    let file = tmp.path().join("statement.pdf");
    let mut x: u32 = 0x1234_5678;
    let mut bytes = b"%PDF-1.7\n".to_vec();
    bytes.extend((0..1024 * 1024).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x >> 24) as u8
    }));
    std::fs::write(&file, &bytes).unwrap();
    let out = std::process::Command::new("sha256sum").arg(&file).output().unwrap();
    let expected = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    visitor.frame(Some(&visitor.find("#relaydesk-frame").await)).await;
    visitor
        .type_text(&visitor.find("#file-input").await, file.to_str().unwrap())
        .await;
    let sent = visitor
        .wait_for(
            "the visitor's upload to be verified by the server",
            "const s = document.getElementById('file-status'); return s.textContent.startsWith('Sent') && s.dataset.sha256",
        )
        .await;
    assert_eq!(sent, json!(expected));
    let got = agent
        .wait_for(
            "the file in the console",
            "const f = document.querySelector('.pane:not([hidden]) li.file'); return f && [f.dataset.sha256, f.dataset.size]",
        )
        .await;
    assert_eq!(got, json!([expected, bytes.len().to_string()]));
    agent
        .click(&agent.find(".pane:not([hidden]) li.file button.download").await)
        .await;
    let verified = agent
        .wait_for(
            "the agent's download, hashed in the browser",
            "const f = document.querySelector('.pane:not([hidden]) li.file'); return f.dataset.verified",
        )
        .await;
    assert_eq!(verified, json!(expected));

    // A supervisor of the group finds the call in the live list and listens in: both videos and both
    // voices reach the supervisor; nothing changes for the visitor.
    add_user(&admin, "sam", "Sam", "supervisor", "sales").await;
    let visitor_before = visitor.exec_async(&STATS.replace("(PC)", visitor_pc), json!([])).await;
    let supervisor = Browser::start().await;
    console_login(&supervisor, &origin, "sam", "sam-password").await;
    let row = format!("#live li[data-conversation=\"{conv}\"]");
    supervisor
        .wait_for(
            "the call in the live list",
            &format!("const r = document.querySelector('{row}'); return r && r.dataset.inCall === 'true'"),
        )
        .await;
    supervisor
        .click(&supervisor.find(&format!("{row} button.monitor")).await)
        .await;
    supervisor
        .click(&supervisor.find(".pane:not([hidden]) button.listen").await)
        .await;
    let s = wait_streams(&supervisor, "supervisor", &agent_pc, 2, 2).await;
    assert_eq!(s["state"], "connected", "{s}");
    supervisor
        .wait_for(
            "both pictures in the monitor",
            "const v = [...document.querySelectorAll('.pane:not([hidden]) .monitor video')]; \
             return v.length === 2 && v.every((e) => e.videoWidth > 0 && e.currentTime > 0)",
        )
        .await;

    // Whisper: the agent's console says so and receives a second voice; the visitor's call is untouched.
    supervisor
        .click(&supervisor.find(".pane:not([hidden]) button.whisper").await)
        .await;
    let note = agent
        .wait_for(
            "the whisper notice",
            "const n = document.querySelector('.pane:not([hidden]) .whisper-note'); return n && !n.hidden && n.textContent",
        )
        .await;
    assert!(note.as_str().unwrap().starts_with("Sam is whispering"), "{note}");
    let a = wait_streams(&agent, "agent", &agent_pc, 1, 2).await;
    assert_eq!(a["state"], "connected", "{a}");
    supervisor.screenshot(&screenshot_path("supervisor-monitor.png")).await;
    let visitor_after = visitor.exec_async(&STATS.replace("(PC)", visitor_pc), json!([])).await;
    assert_eq!(
        (visitor_after["audios"].as_u64(), visitor_after["transceivers"].as_u64()),
        (
            visitor_before["audios"].as_u64(),
            visitor_before["transceivers"].as_u64()
        ),
        "the visitor hears one voice and was never renegotiated: {visitor_before} → {visitor_after}"
    );
    assert_eq!(visitor_after["audios"], 1);
    supervisor.quit().await;

    // The visitor hangs up: media ends on both sides (connections closed, cameras and microphones off).
    visitor.click(&visitor.find("#hangup").await).await;
    visitor
        .wait_for(
            "the visitor's call to end",
            "return window.relaydeskCall.pc === null && document.getElementById('call').hidden && document.getElementById('status').textContent === 'Chatting with Alice'",
        )
        .await;
    agent
        .wait_for(
            "the agent's call to end",
            &format!("const c = window.relaydeskCalls['{conv}']; return c.pc === null && c.stream === null"),
        )
        .await;
    visitor.quit().await;
    agent.quit().await;
    server.shutdown().await.unwrap();
    sfu.shutdown(Duration::from_secs(5)).unwrap();
}
