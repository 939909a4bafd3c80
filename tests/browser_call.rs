//! A video call between the customer widget and the agent console in real Chromium, through the real SFU
//! (UDP on loopback): each page decodes the other's video and receives its audio; a 1 MiB file shared in the
//! chat reaches the agent's browser intact; a supervisor finds the call in the live list, listens in silently (both
//! videos decoded, both voices received) and whispers to the agent, whom the whisper reaches while the
//! visitor's connection never changes; hanging up ends media on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use browser::{Browser, CallSite, STATS, add_user, console_login, screenshot_path, wait_streams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_between_widget_and_console_through_the_sfu() {
    let site = CallSite::start().await;
    let CallSite {
        ref admin,
        ref origin,
        ref agent,
        ref visitor,
        ref conv,
        ..
    } = site;
    let tmp = site.tmp.path();

    // Both start video; each page decodes the other's video and receives its audio.
    visitor.click(&visitor.find("#start-video").await).await;
    agent
        .click(&agent.find(".pane:not([hidden]) .actions button:nth-child(2)").await)
        .await;
    let agent_pc =
        format!("window.relaydeskCalls && window.relaydeskCalls['{conv}'] && window.relaydeskCalls['{conv}'].pc");
    let visitor_pc = "window.relaydeskCall && window.relaydeskCall.pc";
    let v = wait_streams(visitor, "visitor", visitor_pc, 1, 1).await;
    let a = wait_streams(agent, "agent", &agent_pc, 1, 1).await;
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
    let file = tmp.join("statement.pdf");
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
    add_user(admin, "sam", "Sam", "supervisor", "sales").await;
    let visitor_before = visitor.exec_async(&STATS.replace("(PC)", visitor_pc), json!([])).await;
    let supervisor = Browser::start().await;
    console_login(&supervisor, origin, "sam", "sam-password").await;
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
    let a = wait_streams(agent, "agent", &agent_pc, 1, 2).await;
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
    site.stop().await;
}
