//! End-to-end chat between the customer widget (on a host page of another origin) and the agent console,
//! in real Chromium: masking as both parties see it, no unmasked card number in any frame the agent's
//! browser received, the host-page API, and the visitor's reload resuming the conversation with its history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use browser::{Browser, HostPage, add_user, console_login, screenshot_path, site_key};
use common::TestServer;
use serde_json::json;
use sha2::Digest as _;

/// The raw card number the visitor types; it must never reach the agent's browser.
const CARD: &str = "4111 1111 1111 1111";

/// In the visitor's browser: switches into the widget frame.
async fn into_widget(b: &Browser) {
    b.frame(None).await;
    let frame = b.find("#relaydesk-frame").await;
    b.frame(Some(&frame)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_and_console_chat_with_masking_and_the_visitor_resumes_after_a_reload() {
    let ts = TestServer::start().await;
    let admin = ts.admin().await;
    let server = format!("https://{}", ts.addr());
    let host = HostPage::start(&format!("{server}/widget.js")).await;
    let key = site_key(&admin, "sales", &[&host.origin]).await;
    add_user(&admin, "alice", "Alice", "agent", "sales").await;

    let agent = Browser::start().await;
    agent.capture_websockets().await;
    console_login(&agent, &server, "alice", "alice-password").await;
    agent
        .click(&agent.find("#presence option[value=available]").await)
        .await;
    agent
        .wait_for(
            "the server's confirmation of the presence",
            "return document.getElementById('load').dataset.status === 'available'",
        )
        .await;

    let visitor = Browser::start().await;
    visitor.window_size(1000, 780).await;
    visitor.goto(&host.url(&key)).await;
    visitor
        .exec(
            "window.__states = []; window.__msgs = []; \
             RelayDesk.on('state', s => __states.push(s.state)); RelayDesk.on('message', m => __msgs.push(m));",
            json!([]),
        )
        .await;
    visitor.click(&visitor.find("#relaydesk-launcher").await).await;

    visitor
        .wait_for(
            "the visitor in the queue",
            "return RelayDesk.state.state !== 'connecting' && RelayDesk.state.state !== 'idle'",
        )
        .await;
    let state = visitor.exec("return JSON.stringify(RelayDesk.state)", json!([])).await;
    assert!(
        state.as_str().unwrap().contains("\"waiting\""),
        "{state}\n{}",
        visitor.console_log().await
    );
    // The agent is offered the conversation and accepts it.
    let accept = agent.find("#offers li.offer button.accept").await;
    agent.click(&accept).await;
    agent
        .wait_for(
            "the conversation pane",
            "return document.querySelector('.pane:not([hidden]) textarea')",
        )
        .await;

    into_widget(&visitor).await;
    let status = visitor
        .wait_for(
            "the agent's name in the widget",
            "const s = document.getElementById('status').textContent; return s.includes('Alice') && s",
        )
        .await;
    assert_eq!(status, json!("Chatting with Alice"));

    // Visitor → agent, with a card number: masked for both, never raw in the agent's browser.
    let input = visitor.find("#input").await;
    visitor.type_text(&input, &format!("Hello, my card is {CARD}\n")).await;
    let own = visitor
        .wait_for(
            "the visitor's own masked message",
            "const b = document.querySelector('.msg.me:not(.pending) .body'); return b && b.textContent",
        )
        .await;
    let own = own.as_str().unwrap().to_string();
    assert!(
        own.starts_with("Hello, my card is ") && own.ends_with("1111") && !own.contains(CARD),
        "{own}"
    );
    let seen = agent
        .wait_for(
            "the visitor's message in the console",
            "const b = document.querySelector('.pane:not([hidden]) .msg.visitor .body'); return b && b.textContent",
        )
        .await;
    assert_eq!(seen.as_str().unwrap(), own, "the agent sees exactly the masked text");
    let frames = agent.exec("return window.__rdFrames", json!([])).await;
    let frames: Vec<String> = serde_json::from_value(frames).unwrap();
    assert!(
        frames.iter().any(|f| f.contains("Hello, my card is")),
        "the capture saw the message: {frames:?}"
    );
    for f in &frames {
        let digits: String = f.chars().filter(char::is_ascii_digit).collect();
        assert!(
            !f.contains(CARD) && !digits.contains("4111111111111111"),
            "a frame holds the card: {f}"
        );
    }

    // Typing indicator visitor → agent, then agent → visitor.
    visitor.type_text(&input, "one more").await;
    agent
        .wait_for(
            "the typing indicator",
            "return document.querySelector('.pane:not([hidden]) .typing').textContent.includes('typing')",
        )
        .await;
    visitor
        .exec("document.getElementById('input').value = ''", json!([]))
        .await;
    let reply = agent.find(".pane:not([hidden]) textarea").await;
    agent.type_text(&reply, "Thanks! Let me check that for you.\n").await;
    visitor
        .wait_for(
            "the agent's reply in the widget",
            "return [...document.querySelectorAll('.msg.agent .body')].some(b => b.textContent === 'Thanks! Let me check that for you.')",
        )
        .await;
    visitor.frame(None).await;
    let host_saw = visitor
        .exec("return [window.__states, window.__msgs.map(m => m.body)]", json!([]))
        .await;
    assert!(
        host_saw[0].as_array().unwrap().contains(&json!("chatting")),
        "{host_saw}"
    );
    assert!(
        !host_saw.to_string().contains(CARD),
        "the host page never sees the raw number"
    );
    visitor.screenshot(&screenshot_path("widget-chat.png")).await;
    agent.screenshot(&screenshot_path("agent-console.png")).await;

    // The visitor reloads the page (now on a phone-sized screen): the conversation resumes with its history.
    visitor.window_size(400, 800).await;
    visitor.goto(&host.url(&key)).await;
    into_widget(&visitor).await;
    let history = visitor
        .wait_for(
            "the resumed conversation",
            "const s = document.getElementById('status').textContent; \
             const m = [...document.querySelectorAll('.msg .body')].map(b => b.textContent); \
             return s === 'Chatting with Alice' && m.length >= 2 && m",
        )
        .await;
    let history: Vec<String> = serde_json::from_value(history).unwrap();
    assert_eq!(
        history,
        vec![own.clone(), "Thanks! Let me check that for you.".to_string()]
    );
    // On a phone the panel fills the screen.
    visitor.frame(None).await;
    let fills = visitor
        .exec(
            "const r = document.getElementById('relaydesk-panel').getBoundingClientRect(); \
             return r.left === 0 && r.width === window.innerWidth && r.height === window.innerHeight",
            json!([]),
        )
        .await;
    assert_eq!(fills, json!(true), "the panel fills a phone's screen");
    visitor.screenshot(&screenshot_path("widget-phone.png")).await;
    into_widget(&visitor).await;
    let input = visitor.find("#input").await;
    visitor.type_text(&input, "Back after a reload\n").await;
    agent
        .wait_for(
            "the message sent after the reload, in the same conversation",
            "return [...document.querySelectorAll('.pane:not([hidden]) .msg.visitor .body')].map(b => b.textContent).join('|') \
             .endsWith('|Back after a reload')",
        )
        .await;

    // The agent sends a file; the resumed widget (its files token replaced by the resume) downloads it and
    // checks its SHA-256 before saving it.
    let files = tempfile::tempdir().unwrap();
    let note = files.path().join("opening-hours.txt");
    std::fs::write(&note, "Mon-Fri 9:00-17:00\n").unwrap();
    agent
        .type_text(
            &agent.find(".pane:not([hidden]) input[type=file]").await,
            note.to_str().unwrap(),
        )
        .await;
    visitor.click(&visitor.find("li.file button.download").await).await;
    let verified = visitor
        .wait_for(
            "the visitor's verified download",
            "const f = document.querySelector('li.file'); return f && f.dataset.verified",
        )
        .await;
    let expected: String = sha2::Sha256::digest(std::fs::read(&note).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(verified, json!(expected));
    assert_eq!(
        visitor
            .exec(
                "return document.querySelector('li.file button.download').textContent",
                json!([])
            )
            .await,
        json!("opening-hours.txt")
    );
    assert_eq!(
        agent
            .exec(
                "return document.querySelectorAll('#conversations li').length",
                json!([])
            )
            .await,
        json!(1),
        "still one conversation"
    );

    // A supervisor of the group monitors the conversation: read only, masked text only.
    add_user(&admin, "sam", "Sam", "supervisor", "sales").await;
    let conv = agent
        .exec(
            "return document.querySelector('.pane:not([hidden])').dataset.conversation",
            json!([]),
        )
        .await;
    let supervisor = Browser::start().await;
    supervisor.capture_websockets().await;
    console_login(&supervisor, &server, "sam", "sam-password").await;
    // The live list shows the conversation with its agent; "Monitor" opens it read-only.
    let row = format!("#live li[data-conversation=\"{}\"]", conv.as_str().unwrap());
    let listed = supervisor
        .wait_for(
            "the conversation in the live list",
            &format!(
                "const r = document.querySelector('{row}'); return r && r.dataset.state === 'assigned' && r.textContent"
            ),
        )
        .await;
    assert!(listed.as_str().unwrap().contains("Alice"), "{listed}");
    supervisor
        .click(&supervisor.find(&format!("{row} button.monitor")).await)
        .await;
    let watched = supervisor
        .wait_for(
            "the monitored conversation",
            "const m = [...document.querySelectorAll('.pane:not([hidden]) .msg .body')].map(b => b.textContent); \
             return m.length >= 3 && m",
        )
        .await;
    assert_eq!(watched[0], json!(own));
    assert_eq!(
        supervisor
            .exec(
                "return document.querySelector('.pane:not([hidden]) textarea')",
                json!([])
            )
            .await,
        json!(null),
        "monitoring is read only"
    );
    let frames: Vec<String> =
        serde_json::from_value(supervisor.exec("return window.__rdFrames", json!([])).await).unwrap();
    assert!(
        frames.iter().all(|f| !f.contains(CARD)),
        "no raw card reaches the supervisor either"
    );
    supervisor.quit().await;
    assert_eq!(
        agent.exec("return window.__rdCsp", json!([])).await,
        json!([]),
        "no CSP violation in the console"
    );

    // The agent ends the conversation; the visitor sees it ended and may start a new one.
    agent
        .click(&agent.find(".pane:not([hidden]) .actions button.danger").await)
        .await;
    visitor
        .wait_for(
            "the end in the widget",
            "return document.body.dataset.state === 'ended' && document.getElementById('end').textContent === 'New chat'",
        )
        .await;
    agent
        .wait_for(
            "the end in the console",
            "return document.querySelector('.pane:not([hidden]) .conv-status').textContent.startsWith('Ended')",
        )
        .await;
    visitor.quit().await;
    agent.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_transfers_a_conversation_to_another_group_from_the_console() {
    let ts = TestServer::start().await;
    let admin = ts.admin().await;
    let server = format!("https://{}", ts.addr());
    let host = HostPage::start(&format!("{server}/widget.js")).await;
    let key = site_key(&admin, "sales", &[&host.origin]).await;
    assert_eq!(
        admin
            .post_json("/api/v1/admin/groups", &json!({"name": "billing"}))
            .await
            .status,
        201
    );
    for (user, name, group) in [("alice", "Alice", "sales"), ("bob", "Bob", "billing")] {
        add_user(&admin, user, name, "agent", group).await;
    }
    let alice = Browser::start().await;
    console_login(&alice, &server, "alice", "alice-password").await;
    alice
        .click(&alice.find("#presence option[value=available]").await)
        .await;
    let bob = Browser::start().await;
    console_login(&bob, &server, "bob", "bob-password").await;
    bob.click(&bob.find("#presence option[value=available]").await).await;
    bob.wait_for(
        "Bob available",
        "return document.getElementById('load').dataset.status === 'available'",
    )
    .await;

    let visitor = Browser::start().await;
    visitor.goto(&host.url(&key)).await;
    visitor.click(&visitor.find("#relaydesk-launcher").await).await;
    alice.click(&alice.find("#offers li.offer button.accept").await).await;
    into_widget(&visitor).await;
    visitor
        .wait_for(
            "Alice",
            "return document.getElementById('status').textContent === 'Chatting with Alice'",
        )
        .await;
    visitor
        .type_text(&visitor.find("#input").await, "I have a billing question\n")
        .await;
    alice
        .wait_for(
            "the question",
            "return document.querySelector('.pane:not([hidden]) .msg.visitor')",
        )
        .await;

    // Alice transfers to the billing group; Bob is offered it, accepts, and sees the history.
    alice
        .click(
            &alice
                .find(".pane:not([hidden]) .actions select option[value=group]")
                .await,
        )
        .await;
    alice
        .type_text(&alice.find(".pane:not([hidden]) .actions input").await, "billing")
        .await;
    alice
        .click(&alice.find(".pane:not([hidden]) .actions form button").await)
        .await;
    bob.click(&bob.find("#offers li.offer button.accept").await).await;
    let history = bob
        .wait_for(
            "the history at Bob's",
            "const b = document.querySelector('.pane:not([hidden]) .msg.visitor .body'); return b && b.textContent",
        )
        .await;
    assert_eq!(history, json!("I have a billing question"));
    visitor
        .wait_for(
            "Bob",
            "return document.getElementById('status').textContent === 'Chatting with Bob'",
        )
        .await;
    alice
        .wait_for(
            "the conversation to leave Alice's console",
            "return document.querySelectorAll('#conversations li').length === 0",
        )
        .await;
    visitor.quit().await;
    bob.quit().await;
    alice.quit().await;
}
