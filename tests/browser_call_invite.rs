//! Calls as people see them, in real Chromium through the real SFU: the agent calls, the widget asks (Accept /
//! Decline, nothing captured before Accept), the visitor declines and then accepts with the keyboard alone (at
//! phone width), mutes and hangs up; the visitor calls, the console rings with a banner and a highlighted
//! conversation, the agent accepts, hangs up, declines a later call; the visitor cancels one. Every state is
//! told in words on both sides, and the chat goes on. Screenshots of the states for the README.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use browser::{Browser, CallSite, VISITOR_PC, screenshot_path, wait_streams};
use serde_json::{Value, json};

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// The text of an element of the current frame (waits until it is shown and non-empty).
async fn shown(b: &Browser, what: &str, css: &str) -> String {
    let script = format!(
        "const e = document.querySelector({css:?}); return e && !e.closest('[hidden]') && e.textContent.trim()"
    );
    b.wait_for(what, &script).await.as_str().unwrap().to_string()
}

/// Waits until an element's text is exactly `text`.
async fn says(b: &Browser, what: &str, css: &str, text: &str) {
    let script = format!(
        "const e = document.querySelector({css:?}); return e && !e.closest('[hidden]') && e.textContent.trim() === {text:?}"
    );
    b.wait_for(what, &script).await;
}

const AGENT_LINE: &str = ".pane:not([hidden]) .call-status";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringing_accepting_declining_and_cancelling_calls_in_words_on_both_sides() {
    let site = CallSite::start().await;
    let (agent, visitor) = (&site.agent, &site.visitor);
    // Record the console's frames from here on (its conversation comes back after the reload).
    agent.capture_websockets().await;
    agent.goto(&format!("{}/agent", site.origin)).await;
    agent
        .wait_for(
            "the console back with the conversation",
            "const p = document.querySelector('.pane:not([hidden])'); return document.getElementById('conn').textContent === 'Connected.' && p",
        )
        .await;
    let agent_video_call = ".pane:not([hidden]) .actions button:nth-child(2)";

    // The visitor's page at a phone's width: the prompt must fit.
    visitor.frame(None).await;
    visitor
        .cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 320, "height": 640, "deviceScaleFactor": 1, "mobile": true}),
        )
        .await;
    visitor.frame(Some(&visitor.find("#relaydesk-frame").await)).await;

    // Before any call the visitor picks a microphone from the list and sees the camera's preview.
    visitor.click(&visitor.find("#devices summary").await).await;
    visitor
        .wait_for(
            "the preview and the device lists",
            "const v = document.getElementById('device-preview'); \
             return v.videoWidth > 0 && document.querySelectorAll('#mic-select option').length > 0 \
                 && document.querySelectorAll('#cam-select option').length > 0",
        )
        .await;
    visitor
        .click(&visitor.find("#mic-select option:last-child").await)
        .await;
    let mic = visitor
        .wait_for(
            "the chosen microphone in the preview",
            "const s = document.getElementById('device-preview').srcObject; const m = document.getElementById('mic-select').value; \
             return s && s.getAudioTracks()[0].getSettings().deviceId === m && m",
        )
        .await;

    // The agent calls: the widget asks, with the focus on Accept; nothing is captured for the call yet.
    agent.click(&agent.find(agent_video_call).await).await;
    let ringing = shown(agent, "the agent's ringing line", AGENT_LINE).await;
    assert_eq!(ringing, "Calling the visitor… (video call)");
    let prompt = shown(visitor, "the widget's prompt", "#call-prompt-text").await;
    assert_eq!(prompt, "Alice would like to start a video call with you.");
    says(visitor, "the widget's status", "#status", "Alice is calling you").await;
    visitor
        .wait_for(
            "the focus on Accept",
            "return document.activeElement.id === 'call-accept'",
        )
        .await;
    let layout = visitor
        .exec(
            "const r = document.getElementById('call-decline').getBoundingClientRect(); \
             return [innerWidth, document.documentElement.scrollWidth <= innerWidth, r.right <= innerWidth && r.width > 0, !!window.relaydeskCall]",
            json!([]),
        )
        .await;
    assert_eq!(
        layout.as_array().unwrap()[1..],
        [json!(true), json!(true), json!(false)],
        "at {} px: {layout}",
        layout[0]
    );
    visitor.frame(None).await;
    visitor.screenshot(&screenshot_path("widget-call-incoming.png")).await;
    visitor.frame(Some(&visitor.find("#relaydesk-frame").await)).await;
    agent.screenshot(&screenshot_path("agent-call-ringing.png")).await;

    // Declined with the keyboard: Tab to Decline, Enter.
    visitor.press_keys(TAB).await;
    let focus = visitor
        .exec(
            "const e = document.activeElement; return [e.id, e.matches(':focus-visible'), getComputedStyle(e).outlineStyle]",
            json!([]),
        )
        .await;
    assert_eq!(focus[0], "call-decline", "{focus}");
    assert_eq!(focus[1], true, "visible focus: {focus}");
    assert_ne!(focus[2], "none", "visible focus: {focus}");
    visitor.press_keys(ENTER).await;
    says(
        agent,
        "the decline in the console",
        AGENT_LINE,
        "The visitor declined the call. You can keep chatting.",
    )
    .await;
    says(
        visitor,
        "the decline in the widget",
        "#call-notice",
        "You declined the call.",
    )
    .await;
    let prompt_hidden = visitor
        .exec(
            "return document.getElementById('call-prompt').hidden && !window.relaydeskCall",
            json!([]),
        )
        .await;
    assert_eq!(prompt_hidden, json!(true));

    // The agent calls again; the visitor accepts with Enter: both connect and say so.
    agent.click(&agent.find(agent_video_call).await).await;
    // The decline gave the focus back to the message box; a ringing call does not take it from there (a key
    // meant for the chat must not answer), so the visitor goes back to Accept with Shift+Tab.
    visitor
        .wait_for(
            "the prompt, the focus still in the message box",
            "return !document.getElementById('call-prompt').hidden && document.activeElement.id === 'input'",
        )
        .await;
    visitor.shift_tab_to("#call-accept").await;
    visitor.press_keys(ENTER).await;
    let agent_pc = site.agent_pc();
    wait_streams(visitor, "visitor", VISITOR_PC, 1, 1).await;
    wait_streams(agent, "agent", &agent_pc, 1, 1).await;
    says(visitor, "the widget in the call", "#status", "In a call with Alice").await;
    let used = visitor
        .exec(
            "return [window.relaydeskCall.stream.getAudioTracks()[0].getSettings().deviceId, document.getElementById('device-preview').srcObject]",
            json!([]),
        )
        .await;
    assert_eq!(
        used,
        json!([mic, null]),
        "the call uses the chosen microphone; the preview is closed"
    );
    says(
        agent,
        "the console in the call",
        AGENT_LINE,
        "In a call with the visitor",
    )
    .await;
    shown(visitor, "the quality indicator", "#call-quality").await;
    let quality = shown(
        agent,
        "the console's quality indicator",
        ".pane:not([hidden]) .call-quality",
    )
    .await;
    assert!(quality.starts_with("Connection: "), "{quality}");

    // A call of two parties whose offers carry their slots is never asked to renegotiate.
    let renegotiations = agent
        .exec(
            "return window.__rdFrames.filter((f) => f.includes('\"call_renegotiate\"'))",
            json!([]),
        )
        .await;
    assert_eq!(renegotiations, json!([]));

    // A lost connection (as the browser reports it) is restored by an ICE restart through the server: new
    // credentials both ways, the new ICE session connected, media flowing; the agent sees "reconnecting" meanwhile.
    let ufrags = "const u = (d) => d.sdp.match(/a=ice-ufrag:(\\S+)/)[1]; const pc = window.relaydeskCall.pc; \
                  return [u(pc.localDescription), u(pc.remoteDescription)]";
    let before = visitor.exec(ufrags, json!([])).await;
    visitor
        .exec("window.relaydeskCall.lost(); return true", json!([]))
        .await;
    says(
        visitor,
        "the widget reconnecting",
        "#status",
        "Connection lost — reconnecting the call with Alice…",
    )
    .await;
    says(
        agent,
        "the console told",
        ".pane:not([hidden]) .peer-media",
        "The visitor's connection was lost — reconnecting…",
    )
    .await;
    says(visitor, "the widget reconnected", "#status", "In a call with Alice").await;
    let after = visitor.exec(ufrags, json!([])).await;
    assert_ne!(after[0], before[0], "new local credentials: {before} → {after}");
    assert_ne!(
        after[1], before[1],
        "the server answered with new credentials: {before} → {after}"
    );
    let transport = visitor
        .exec_async(
            "const done = arguments[arguments.length - 1]; window.relaydeskCall.pc.getStats().then((r) => { \
             let t = null; r.forEach((s) => { if (s.type === 'transport') t = [s.iceLocalUsernameFragment, s.iceState]; }); done(t); })",
            json!([]),
        )
        .await;
    assert_eq!(
        transport,
        json!([after[0], "connected"]),
        "the new ICE session carries the call"
    );
    agent
        .wait_for(
            "the console's reconnecting line gone",
            "return document.querySelector('.pane:not([hidden]) .peer-media').textContent === ''",
        )
        .await;
    wait_streams(agent, "agent", &agent_pc, 1, 1).await;
    wait_streams(visitor, "visitor", VISITOR_PC, 1, 1).await;

    // The agent asks to see the visitor's screen; the visitor agrees and picks it: a second picture decodes in
    // the console, frames progressing.
    agent
        .click(&agent.find(".pane:not([hidden]) button.ask-screen").await)
        .await;
    let ask = shown(visitor, "the screen prompt", "#screen-prompt-text").await;
    assert!(ask.starts_with("Alice asks to see your screen"), "{ask}");
    visitor.click(&visitor.find("#screen-share").await).await;
    let a = wait_streams(agent, "agent", &agent_pc, 2, 1).await;
    assert_eq!(a["videos"], 2, "{a}");
    says(
        agent,
        "the sharing note",
        ".pane:not([hidden]) .peer-media",
        "The visitor is sharing their screen.",
    )
    .await;
    agent
        .wait_for(
            "the screen beside the camera",
            "const v = document.querySelector('.pane:not([hidden]) video.screen'); return !v.hidden && v.videoWidth > 0 && v.currentTime > 0",
        )
        .await;
    agent.screenshot(&screenshot_path("agent-call-screen.png")).await;
    visitor.click(&visitor.find("#screen-stop").await).await;
    agent
        .wait_for(
            "the screen gone",
            "return document.querySelector('.pane:not([hidden]) video.screen').hidden",
        )
        .await;

    // The agent shares their own screen: the widget shows it beside the agent's camera.
    agent
        .click(&agent.find(".pane:not([hidden]) button.share-screen").await)
        .await;
    let v = wait_streams(visitor, "visitor", VISITOR_PC, 2, 1).await;
    assert_eq!(v["videos"], 2, "{v}");
    visitor
        .wait_for(
            "the agent's screen in the widget",
            "const v = document.getElementById('screen-video'); return !v.hidden && v.videoWidth > 0 && v.currentTime > 0",
        )
        .await;
    says(
        visitor,
        "the widget's sharing note",
        "#peer-media",
        "Alice is sharing their screen.",
    )
    .await;
    agent
        .click(&agent.find(".pane:not([hidden]) button.share-screen").await)
        .await;
    visitor
        .wait_for(
            "the agent's screen gone",
            "return document.getElementById('screen-video').hidden",
        )
        .await;

    // Keyboard only in the call: Tab to Mute, Enter; the agent is told. Then Tab to Hang up, Enter.
    visitor.tab_to("#mute").await;
    visitor.press_keys(ENTER).await;
    says(visitor, "the pressed mute button", "#mute", "Unmute").await;
    says(
        agent,
        "the visitor's microphone state",
        ".pane:not([hidden]) .peer-media",
        "The visitor's microphone is off.",
    )
    .await;
    visitor.frame(None).await;
    visitor.screenshot(&screenshot_path("widget-call-connected.png")).await;
    visitor.frame(Some(&visitor.find("#relaydesk-frame").await)).await;
    visitor.tab_to("#hangup").await;
    visitor.press_keys(ENTER).await;
    says(visitor, "the widget's end line", "#call-notice", "You ended the call.").await;
    says(
        agent,
        "the console's end line",
        AGENT_LINE,
        "The visitor ended the call.",
    )
    .await;
    says(visitor, "the widget back in chat", "#status", "Chatting with Alice").await;
    agent
        .wait_for(
            "the agent's camera and microphone off",
            &format!(
                "const c = window.relaydeskCalls['{}']; return c.pc === null && c.stream === null",
                site.conv
            ),
        )
        .await;
    visitor.cdp("Emulation.clearDeviceMetricsOverride", json!({})).await;

    // The visitor calls: the console rings (banner, sound, highlighted conversation) and the agent accepts
    // from the banner.
    visitor.click(&visitor.find("#start-voice").await).await;
    says(
        visitor,
        "the widget's ringing line",
        "#call-status",
        "Calling Alice… (voice call)",
    )
    .await;
    let banner = shown(agent, "the console's banner", "#call-banner li").await;
    assert!(
        banner.starts_with(&format!(
            "Visitor of conversation #{} is calling you (voice call)",
            site.conv
        )),
        "{banner}"
    );
    let ring = agent
        .exec(
            "return [document.body.dataset.ringing, document.querySelector('#conversations .tab').classList.contains('ringing')]",
            json!([]),
        )
        .await;
    assert_eq!(ring, json!(["true", true]));
    visitor.frame(None).await;
    visitor.screenshot(&screenshot_path("widget-call-ringing.png")).await;
    visitor.frame(Some(&visitor.find("#relaydesk-frame").await)).await;
    agent.screenshot(&screenshot_path("agent-call-incoming.png")).await;
    agent.click(&agent.find("#call-banner button.accept").await).await;
    says(
        visitor,
        "the widget in the voice call",
        "#status",
        "In a call with Alice",
    )
    .await;
    says(
        agent,
        "the console in the voice call",
        AGENT_LINE,
        "In a call with the visitor",
    )
    .await;
    let quiet = agent
        .exec(
            "return [document.getElementById('call-banner').hidden, document.body.dataset.ringing]",
            json!([]),
        )
        .await;
    assert_eq!(quiet, json!([true, "false"]));
    // The agent hangs up.
    agent
        .click(&agent.find(".pane:not([hidden]) button.hangup").await)
        .await;
    says(agent, "the console's end line", AGENT_LINE, "You ended the call.").await;
    says(
        visitor,
        "the widget's end line",
        "#call-notice",
        "Alice ended the call.",
    )
    .await;

    // The visitor calls, the agent declines from the banner; then the visitor calls and cancels.
    visitor.click(&visitor.find("#start-video").await).await;
    agent.click(&agent.find("#call-banner button.decline").await).await;
    says(
        visitor,
        "the widget's decline line",
        "#call-notice",
        "Alice declined the call. You can keep chatting.",
    )
    .await;
    says(
        agent,
        "the console's decline line",
        AGENT_LINE,
        "You declined the call.",
    )
    .await;
    visitor.click(&visitor.find("#start-video").await).await;
    shown(agent, "the console's banner", "#call-banner li").await;
    visitor.click(&visitor.find("#call-cancel").await).await;
    says(
        agent,
        "the console's cancel line",
        AGENT_LINE,
        "The visitor cancelled the call.",
    )
    .await;
    says(
        visitor,
        "the widget's cancel line",
        "#call-notice",
        "You cancelled the call.",
    )
    .await;
    agent
        .wait_for(
            "the banner gone",
            "return document.getElementById('call-banner').hidden && document.body.dataset.ringing === 'false'",
        )
        .await;

    // The chat goes on.
    visitor
        .type_text(&visitor.find("#input").await, "Thanks, chat is fine\n")
        .await;
    agent
        .wait_for(
            "the visitor's message",
            "return [...document.querySelectorAll('.pane:not([hidden]) .msg.visitor .body')].some(b => b.textContent === 'Thanks, chat is fine')",
        )
        .await;
    let frames: Value = visitor
        .exec("return !!window.relaydeskCall && window.relaydeskCall.pc", json!([]))
        .await;
    assert_eq!(frames, json!(null), "no call left open");

    // When the browser refuses the camera and microphone (here: the host page no longer delegates them to the
    // widget's frame, which reloads and resumes), the visitor is told what to do.
    visitor.frame(None).await;
    visitor
        .exec(
            "const f = document.getElementById('relaydesk-frame'); f.setAttribute('allow', ''); f.src = f.src; return true",
            json!([]),
        )
        .await;
    visitor.frame(Some(&visitor.find("#relaydesk-frame").await)).await;
    says(visitor, "the resumed widget", "#status", "Chatting with Alice").await;
    visitor.click(&visitor.find("#devices summary").await).await;
    let refused = shown(visitor, "the refusal", "#device-message").await;
    assert!(
        refused.starts_with("The browser blocked the camera and microphone for this site."),
        "{refused}"
    );
    site.stop().await;
}
