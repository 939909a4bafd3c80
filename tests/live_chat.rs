//! The live layer end to end: real server, real TLS, real WebSocket clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use std::sync::Arc;

use live_common::{Closed, Live, SHOP, Ws, assigned_pair};
use relaydesk_signalling::live::LiveParts;
use serde_json::{Value, json};

const CARD: &str = "4111 1111 1111 1111";
const CARD_DIGITS: &str = "4111111111111111";

fn no_card(frames: &[String]) {
    for f in frames {
        let digits: String = f.chars().filter(char::is_ascii_digit).collect();
        assert!(!f.contains(CARD), "unmasked card in {f}");
        assert!(!digits.contains(CARD_DIGITS), "card digits in {f}");
        assert!(!f.contains("4111 1111"), "card prefix in {f}");
    }
}

#[tokio::test]
async fn whole_flow_queue_offer_chat_end_archive() {
    let mut live = Live::quick().await;
    let (alice_id, alice) = live.user("alice", "agent", &["sales"]).await;

    // The visitor comes first and waits at position 1.
    let (mut v, welcome) = live.visitor().await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    assert!(welcome["resume_token"].as_str().unwrap().len() >= 22);
    assert_eq!(v.expect("queue_position").await["position"], 1);
    v.send(json!({"type": "message", "client_id": "c1", "body": format!("my card is {CARD} thanks")}))
        .await;
    let echo = v.expect("message").await;
    assert_eq!(echo["seq"], 1);
    assert_eq!(echo["client_id"], "c1");
    assert!(echo["body"].as_str().unwrap().ends_with("1111 thanks"));

    // An agent comes, is offered the conversation, accepts, and gets the history masked.
    let mut a = live.agent(&alice).await;
    // The offer may come right after the presence change (the helper read past it): look in the log.
    let offer = match a.log.iter().find(|f| f.contains("\"type\":\"offered\"")) {
        Some(f) => serde_json::from_str::<Value>(f).unwrap(),
        None => a.expect("offered").await,
    };
    assert_eq!(offer["conversation"], conv.as_str());
    assert_eq!(offer["group"], "sales");
    assert!(offer["expires_in_ms"].as_u64().unwrap() > 0);
    a.send(json!({"type": "accept", "conversation": conv})).await;
    let assigned = a.expect("assigned").await;
    assert_eq!(assigned["conversation"], conv.as_str());
    let first = a.expect("message").await;
    assert_eq!(first["seq"], 1);
    assert_eq!(first["from"]["role"], "visitor");
    assert!(first.get("client_id").is_none(), "client ids go to their sender only");
    assert_eq!(v.expect("assigned").await["agent_name"], "alice");

    // Chat both ways, with typing and receipts.
    a.send(json!({"type": "typing", "conversation": conv, "active": true}))
        .await;
    let typing = v.expect("typing").await;
    assert_eq!(typing["from"]["role"], "agent");
    a.send(json!({"type": "message", "conversation": conv, "client_id": "a1", "body": "Hello! How can I help?"}))
        .await;
    let own = a.expect("message").await;
    assert_eq!((own["seq"].as_u64(), own["client_id"].as_str()), (Some(2), Some("a1")));
    let got = v.expect("message").await;
    assert_eq!(got["seq"], 2);
    assert_eq!(got["body"], "Hello! How can I help?");
    assert_eq!(got["from"]["id"], alice_id);
    v.send(json!({"type": "read", "up_to_seq": 2})).await;
    assert_eq!(a.expect("read").await["up_to_seq"], 2);
    v.send(json!({"type": "message", "client_id": "c2", "body": "exp 12/29 cvv 123, also 5500-0000-0000-0004"}))
        .await;
    let third = a.expect("message").await;
    assert_eq!(third["seq"], 3);
    assert!(!third["body"].as_str().unwrap().contains("5500"));

    // The agent ends it: both sides hear it, the visitor socket closes, the archive hook gets masked text.
    a.send(json!({"type": "end", "conversation": conv})).await;
    assert_eq!(a.expect("ended").await["reason"], "agent_ended");
    assert_eq!(v.expect("ended").await["reason"], "agent_ended");
    assert_eq!(v.closed().await, Closed::Code(1000));
    let ended = live.next_ended().await;
    assert_eq!(ended.id.0.to_string(), conv);
    assert_eq!(ended.group.as_str(), "sales");
    assert_eq!(ended.site_key, live.key);
    assert_eq!(ended.participants.len(), 1);
    assert_eq!(ended.participants[0].agent.0, alice_id);
    assert_eq!(ended.messages.len(), 3);
    let seqs: Vec<u64> = ended.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    for m in &ended.messages {
        assert!(!m.body.as_str().contains("4111 1111"), "archived unmasked");
        assert!(!m.body.as_str().contains("5500"), "archived unmasked");
    }
    no_card(&a.log);
    no_card(&v.log);

    // The archive (the server's own sink) has it too: the admin export shows masked text only.
    let path = format!("/api/v1/admin/conversations/{conv}/transcript");
    let export = live.admin.get(&path).await;
    assert_eq!(export.status, 200, "{}", export.text());
    no_card(&[export.text()]);
    assert!(export.text().contains("How can I help"));
    assert!(
        export.text().contains("1111 thanks"),
        "masked, keeping the last four digits"
    );
}

#[tokio::test]
async fn card_split_across_messages_is_amended_everywhere() {
    let mut live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, conv) = assigned_pair(&live, &mut a).await;
    v.send(json!({"type": "message", "client_id": "s1", "body": "4111 1111"}))
        .await;
    let first = a.expect("message").await;
    v.send(json!({"type": "message", "client_id": "s2", "body": "1111 1111"}))
        .await;
    let second = a.expect("message").await;
    assert!(second["body"].as_str().unwrap().ends_with("1111"));
    let amended = a.expect("message_amended").await;
    assert_eq!(amended["id"], first["id"]);
    assert_eq!(amended["conversation"], conv.as_str());
    assert!(!amended["body"].as_str().unwrap().contains("4111"));
    let v_amended = v.expect("message_amended").await;
    assert_eq!(v_amended["seq"], 1);
    a.send(json!({"type": "end", "conversation": conv})).await;
    let ended = live.next_ended().await;
    let all: String = ended.messages.iter().map(|m| m.body.as_str()).collect();
    let digits: String = all.chars().filter(char::is_ascii_digit).collect();
    assert!(!digits.contains("41111111"), "stored copy replaced: {all}");
    // The agent never saw the whole number in one frame: each half alone, then the first half masked.
    for f in &a.log {
        let digits: String = f.chars().filter(char::is_ascii_digit).collect();
        assert!(!digits.contains("41111111111"), "{f}");
    }
}

#[tokio::test]
async fn visitor_tokens_are_single_use_and_origin_bound() {
    let live = Live::quick().await;
    // Unknown and revoked keys: 401. Missing, foreign or mismatching origins: 403.
    let r = live
        .session(
            "pk_00000000000000000000000000000000",
            Some(SHOP),
            "https://shop.example/",
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_site_key"));
    let r = live.session(&live.key, None, "https://shop.example/").await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "origin_required"));
    let r = live
        .session(&live.key, Some("https://evil.example"), "https://evil.example/")
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "origin_not_allowed"));
    assert!(r.header("access-control-allow-origin").is_none());
    let r = live.session(&live.key, Some(SHOP), "https://other.example/page").await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "origin_mismatch"));
    let r = live.session(&live.key, Some(SHOP), "https://shop.example/p").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some(SHOP));
    let body = r.json();
    assert!(body["expires_in"].as_u64().unwrap() <= 60);
    assert!(body["visitor_id"].as_str().unwrap().starts_with("v_"));
    let token = body["session_token"].as_str().unwrap().to_string();

    // Preflight: allowed origin gets CORS headers, others 403 without them.
    let c = live.client();
    let pre = c
        .raw(
            "OPTIONS",
            "/api/v1/visitor/session",
            &[("origin", SHOP), ("access-control-request-method", "POST")],
            Vec::new(),
        )
        .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin").as_deref(), Some(SHOP));
    let pre = c
        .raw(
            "OPTIONS",
            "/api/v1/visitor/session",
            &[("origin", "https://evil.example")],
            Vec::new(),
        )
        .await;
    assert_eq!(pre.status, 403);
    assert!(pre.header("access-control-allow-origin").is_none());

    // A foreign origin on the upgrade is refused (and burns the token); forged tokens are 401.
    let path = format!("/api/v1/visitor/ws?token={token}");
    assert_eq!(
        live.ws(&path, Some("https://evil.example"), None).await.err(),
        Some(403)
    );
    assert_eq!(live.ws(&path, Some(SHOP), None).await.err(), Some(401));
    assert_eq!(
        live.ws("/api/v1/visitor/ws?token=forged", Some(SHOP), None).await.err(),
        Some(401)
    );
    let token = live.token().await;
    let path = format!("/api/v1/visitor/ws?token={token}");
    assert_eq!(live.ws(&path, None, None).await.err(), Some(403));

    // Used once, then replayed: the replay is refused.
    let token = live.token().await;
    let path = format!("/api/v1/visitor/ws?token={token}");
    let ok = live.ws(&path, Some(SHOP), None).await;
    assert!(ok.is_ok());
    assert_eq!(live.ws(&path, Some(SHOP), None).await.err(), Some(401));

    // Concurrent uses: exactly one wins.
    for _ in 0..3 {
        let token = live.token().await;
        let path = format!("/api/v1/visitor/ws?token={token}");
        let attempts = (0..4).map(|_| live.ws(&path, Some(SHOP), None));
        let results = futures_util::future::join_all(attempts).await;
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1);
        assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|s| *s == 401));
    }

    // A socket opened with a token must start with hello.
    let token = live.token().await;
    let mut ws = live
        .ws(&format!("/api/v1/visitor/ws?token={token}"), Some(SHOP), None)
        .await
        .unwrap();
    ws.send(json!({"type": "resume", "resume_token": "x", "last_seq": 0}))
        .await;
    assert_eq!(ws.closed().await, Closed::Code(4400));
}

#[tokio::test]
async fn session_rate_limit_answers_429_with_retry_after() {
    let live = Live::start(|c| c.live.sessions_per_minute_per_address = 3, LiveParts::default()).await;
    for _ in 0..3 {
        let r = live.session(&live.key, Some(SHOP), "https://shop.example/").await;
        assert_eq!(r.status, 201);
    }
    let r = live.session(&live.key, Some(SHOP), "https://shop.example/").await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
}

#[tokio::test]
async fn offer_timeout_reroutes_to_the_next_agent() {
    let live = Live::start(|c| c.live.offer_timeout_ms = 300, LiveParts::default()).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (bob_id, bob) = live.user("bob", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let mut b = live.agent(&bob).await;
    let (_v, welcome) = live.visitor().await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    // Alice (longest idle) is offered first; nobody answers; the offer lapses and goes to Bob.
    let first = a.expect("offered").await;
    assert_eq!(first["conversation"], conv.as_str());
    let withdrawn = a.expect("offer_withdrawn").await;
    assert_eq!(withdrawn["reason"], "timeout");
    let second = b.expect("offered").await;
    assert_eq!(second["conversation"], conv.as_str());
    // Alice's late accept is refused; Bob's works.
    a.send(json!({"type": "accept", "conversation": conv})).await;
    assert_eq!(a.expect("error").await["code"], "conflict");
    b.send(json!({"type": "accept", "conversation": conv})).await;
    b.expect("assigned").await;
    let _ = bob_id;
}

#[tokio::test]
async fn dropped_agent_requeues_after_grace() {
    let live = Live::start(|c| c.live.agent_reconnect_grace_ms = 200, LiveParts::default()).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (_, bob) = live.user("bob", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, conv) = assigned_pair(&live, &mut a).await;
    let mut b = live.agent(&bob).await;
    v.send(json!({"type": "message", "client_id": "m1", "body": "still there?"}))
        .await;
    a.expect("message").await;
    a.close().await;
    // After the grace period the conversation goes back to the queue and to Bob, with its history.
    v.expect("transferred").await;
    let offer = b.expect("offered").await;
    assert_eq!(offer["conversation"], conv.as_str());
    b.send(json!({"type": "accept", "conversation": conv})).await;
    b.expect("assigned").await;
    let history = b.expect("message").await;
    assert_eq!(history["body"], "still there?");
    assert_eq!(v.expect("assigned").await["agent_name"], "bob");
}

#[tokio::test]
async fn visitor_resume_loses_nothing_and_duplicates_nothing() {
    let live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, conv) = assigned_pair(&live, &mut a).await;
    // Welcome of this socket (the first frame logged) carries the resume token.
    let welcome: Value = serde_json::from_str(&v.log[0]).unwrap();
    let resume_token = welcome["resume_token"].as_str().unwrap().to_string();
    for i in 1..=2 {
        a.send(
            json!({"type": "message", "conversation": conv, "client_id": format!("a{i}"), "body": format!("msg {i}")}),
        )
        .await;
        v.expect("message").await;
    }
    v.close().await;
    for i in 3..=5 {
        a.send(
            json!({"type": "message", "conversation": conv, "client_id": format!("a{i}"), "body": format!("msg {i}")}),
        )
        .await;
        a.expect("message").await;
    }
    // Resume with the last seq received (2): exactly 3, 4, 5 follow, in order.
    let mut r = live.ws("/api/v1/visitor/ws", Some(SHOP), None).await.unwrap();
    r.send(json!({"type": "resume", "resume_token": resume_token, "last_seq": 2}))
        .await;
    let w = r.expect("welcome").await;
    assert_eq!(w["conversation"], conv.as_str());
    let next_token = w["resume_token"].as_str().unwrap().to_string();
    assert_ne!(next_token, resume_token);
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let m = r.expect("message").await;
        seqs.push(m["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(r.expect("assigned").await["agent_name"], "alice");
    // Live again: a new message arrives once, with the next seq.
    a.send(json!({"type": "message", "conversation": conv, "client_id": "a6", "body": "msg 6"}))
        .await;
    assert_eq!(r.expect("message").await["seq"], 6);
    let messages = r.log.iter().filter(|f| f.contains("\"type\":\"message\"")).count();
    assert_eq!(messages, 4, "no duplicates: {:?}", r.log);
    // The old token is spent; a foreign origin cannot use the new one.
    let mut replay = live.ws("/api/v1/visitor/ws", Some(SHOP), None).await.unwrap();
    replay
        .send(json!({"type": "resume", "resume_token": resume_token, "last_seq": 0}))
        .await;
    assert_eq!(replay.closed().await, Closed::Code(4401));
    // An origin of no site key cannot even open a socket without a token...
    assert_eq!(
        live.ws("/api/v1/visitor/ws", Some("https://evil.example"), None)
            .await
            .err(),
        Some(403)
    );
    // ...and another site's origin cannot resume this conversation.
    let r = live
        .admin
        .post_json(
            "/api/v1/admin/keys",
            &json!({"group": "sales", "origins": ["https://other.example"], "label": "other"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let mut foreign = live
        .ws("/api/v1/visitor/ws", Some("https://other.example"), None)
        .await
        .unwrap();
    foreign
        .send(json!({"type": "resume", "resume_token": next_token, "last_seq": 0}))
        .await;
    assert_eq!(foreign.closed().await, Closed::Code(4403));
}

#[tokio::test]
async fn visitor_lost_after_resume_grace_ends_the_conversation() {
    let mut live = Live::start(|c| c.live.resume_grace_ms = 200, LiveParts::default()).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (v, conv) = assigned_pair(&live, &mut a).await;
    v.close().await;
    let ended = a.expect("ended").await;
    assert_eq!(
        (ended["conversation"].as_str(), ended["reason"].as_str()),
        (Some(conv.as_str()), Some("visitor_lost"))
    );
    assert_eq!(live.next_ended().await.id.0.to_string(), conv);
}

#[tokio::test]
async fn transfers_to_an_agent_and_to_a_group() {
    let live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (bob_id, bob) = live.user("bob", "agent", &["sales"]).await;
    let (_, carol) = live.user("carol", "agent", &["billing"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, conv) = assigned_pair(&live, &mut a).await;
    let mut b = live.agent(&bob).await;
    let mut c = live.agent(&carol).await;
    v.send(json!({"type": "message", "client_id": "m1", "body": "I need billing"}))
        .await;
    a.expect("message").await;

    // To Bob: offered as a transfer; on accept Alice loses it and Bob gets the history.
    a.send(json!({"type": "transfer", "conversation": conv, "to": {"kind": "agent", "agent": bob_id}}))
        .await;
    let offer = b.expect("offered").await;
    assert_eq!(offer["transfer_from"].as_i64(), a_id(&a));
    b.send(json!({"type": "accept", "conversation": conv})).await;
    b.expect("assigned").await;
    assert_eq!(b.expect("message").await["body"], "I need billing");
    assert_eq!(a.expect("unassigned").await["reason"], "transferred");
    assert_eq!(v.expect("assigned").await["agent_name"], "bob");
    // Alice can no longer write.
    a.send(json!({"type": "message", "conversation": conv, "client_id": "x", "body": "hi"}))
        .await;
    assert_eq!(a.expect("error").await["code"], "forbidden");

    // To the billing group: requeued there and offered to Carol.
    b.send(json!({"type": "transfer", "conversation": conv, "to": {"kind": "group", "group": "billing"}}))
        .await;
    assert_eq!(b.expect("unassigned").await["reason"], "transferred");
    v.expect("transferred").await;
    let offer = c.expect("offered").await;
    assert_eq!(
        (offer["conversation"].as_str(), offer["group"].as_str()),
        (Some(conv.as_str()), Some("billing"))
    );
    c.send(json!({"type": "accept", "conversation": conv})).await;
    c.expect("assigned").await;
    assert_eq!(v.expect("assigned").await["agent_name"], "carol");
}

fn a_id(ws: &Ws) -> Option<i64> {
    ws.log
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .find(|v| v["type"] == "welcome")
        .and_then(|v| v["agent"].as_i64())
}

#[tokio::test]
async fn supervisor_watches_read_only_and_the_authorisation_matrix_holds() {
    let live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (_, bob) = live.user("bob", "agent", &["sales"]).await;
    let (_, sue) = live.user("sue", "supervisor", &["sales"]).await;
    let (_, otto) = live.user("otto", "supervisor", &["billing"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, conv) = assigned_pair(&live, &mut a).await;
    v.send(json!({"type": "message", "client_id": "m1", "body": format!("card {CARD}")}))
        .await;
    a.expect("message").await;

    // Bob (same group, not assigned) can neither read nor write nor manage it.
    let mut b = live.agent(&bob).await;
    for frame in [
        json!({"type": "watch", "conversation": conv}),
        json!({"type": "message", "conversation": conv, "client_id": "b1", "body": "hi"}),
        json!({"type": "typing", "conversation": conv, "active": true}),
        json!({"type": "end", "conversation": conv}),
        json!({"type": "transfer", "conversation": conv, "to": {"kind": "group", "group": "billing"}}),
        json!({"type": "call_offer", "conversation": conv, "sdp": "v=0"}),
    ] {
        b.send(frame.clone()).await;
        let e = b.expect("error").await;
        assert_eq!(e["code"], "forbidden", "{frame}");
        assert_eq!(e["conversation"], conv.as_str());
    }
    // Otto supervises another group: no watch, and the conversation is as unknown to him as a missing one.
    let mut o = live.agent(&otto).await;
    o.send(json!({"type": "watch", "conversation": conv})).await;
    assert_eq!(o.expect("error").await["code"], "not_found");

    // Sue supervises sales: she watches (history, then live), masked; she cannot write.
    let mut s = live.agent(&sue).await;
    s.send(json!({"type": "watch", "conversation": conv})).await;
    let hist = s.expect("message").await;
    assert_eq!(hist["seq"], 1);
    s.send(json!({"type": "message", "conversation": conv, "client_id": "s1", "body": "psst"}))
        .await;
    assert_eq!(s.expect("error").await["code"], "forbidden");
    a.send(json!({"type": "message", "conversation": conv, "client_id": "a1", "body": "ok"}))
        .await;
    assert_eq!(s.expect("message").await["body"], "ok");
    v.send(json!({"type": "typing", "active": true})).await;
    s.expect("typing").await;
    // Nothing Bob or Otto received carried the conversation's messages.
    for log in [&b.log, &o.log] {
        assert!(log.iter().all(|f| !f.contains("\"type\":\"message\"")), "{log:?}");
    }
    // The admin may watch any conversation; an unknown one is not_found.
    let mut adm = live.agent(&live.admin).await;
    adm.send(json!({"type": "watch", "conversation": conv})).await;
    adm.expect("message").await;
    adm.send(json!({"type": "watch", "conversation": "1"})).await;
    assert_eq!(adm.expect("error").await["code"], "not_found");
    // Supervisors may manage (end) conversations of their groups.
    s.send(json!({"type": "end", "conversation": conv})).await;
    s.expect("ended").await;
    assert_eq!(v.expect("ended").await["reason"], "agent_ended");
    no_card(&s.log);
    no_card(&a.log);
}

#[tokio::test]
async fn limits_give_error_frames_and_keep_the_connection() {
    let live = Live::start(
        |c| {
            c.live.messages_per_second = 1;
            c.live.message_burst = 3;
        },
        LiveParts::default(),
    )
    .await;
    let (mut v, _) = live.visitor().await;
    v.send(json!({"type": "message", "client_id": "big", "body": "x".repeat(4097)}))
        .await;
    assert_eq!(v.expect("error").await["code"], "too_large");
    v.send_text("x".repeat(20_000)).await;
    assert_eq!(v.expect("error").await["code"], "too_large");
    v.send_text("{not json".into()).await;
    assert_eq!(v.expect("error").await["code"], "bad_message");
    v.send(json!({"type": "message", "client_id": "bad id!", "body": "hi"}))
        .await;
    assert_eq!(v.expect("error").await["code"], "bad_message");
    v.send(json!({"type": "call_offer", "sdp": "v=0"})).await;
    assert_eq!(v.expect("error").await["code"], "media_unavailable");
    let mut limited = false;
    for i in 0..6 {
        v.send(json!({"type": "message", "client_id": format!("r{i}"), "body": "hello"}))
            .await;
    }
    for _ in 0..6 {
        let f = v.expect_where(|f| f["type"] == "message" || f["type"] == "error").await;
        if f["type"] == "error" {
            assert_eq!(f["code"], "rate_limited");
            limited = true;
        }
    }
    assert!(limited, "6 messages at once exceed a burst of 3");
    // Still connected: typing reaches nobody but the socket answers later frames.
    v.send(json!({"type": "hello"})).await;
    assert_eq!(v.expect("error").await["code"], "conflict");
}

#[tokio::test]
async fn agent_socket_needs_session_and_own_origin_and_shutdown_closes_sockets() {
    let mut live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let origin = live.own_origin();
    assert_eq!(live.ws("/api/v1/agent/ws", Some(&origin), None).await.err(), Some(401));
    assert_eq!(
        live.ws("/api/v1/agent/ws", Some("https://evil.example"), Some(&alice))
            .await
            .err(),
        Some(403)
    );
    assert_eq!(live.ws("/api/v1/agent/ws", None, Some(&alice)).await.err(), Some(403));
    let mut a = live.agent(&alice).await;
    let (mut v, _) = live.visitor().await;
    a.expect("offered").await;
    let server = live.server.take().unwrap();
    let stop = tokio::spawn(server.shutdown());
    assert_eq!(a.closed().await, Closed::Code(1001));
    assert_eq!(v.closed().await, Closed::Code(1001));
    tokio::time::timeout(common::IO_TIMEOUT, stop)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The queued conversation was ended and archived on the way down.
    let ended = live.next_ended().await;
    assert_eq!(ended.reason, relaydesk_signalling::chat_protocol::EndReason::Closed);
}

mod calls {

    use relaydesk_signalling::live::MediaWiring;
    use relaydesk_signalling::media::*;
    use tokio::sync::mpsc;

    use super::*;

    /// A fake SFU: records every call and answers offers with a recognisable SDP.
    struct FakeMedia {
        calls: mpsc::UnboundedSender<String>,
    }

    impl FakeMedia {
        fn log(&self, s: String) {
            let _ = self.calls.send(s);
        }
    }

    impl MediaControl for FakeMedia {
        fn open_room(&self, room: MediaRoomId) -> MediaFuture<'_, ()> {
            self.log(format!("open {room}"));
            Box::pin(async { Ok(()) })
        }
        fn join(
            &self,
            room: MediaRoomId,
            p: MediaParticipantId,
            role: MediaRole,
            offer: String,
        ) -> MediaFuture<'_, String> {
            self.log(format!("join {room} {p} {role:?}"));
            Box::pin(async move {
                if offer == "bad" {
                    Err(MediaError::BadOffer("no media".into()))
                } else {
                    Ok(format!("answer {} to {offer}", p.0))
                }
            })
        }
        fn renegotiate(&self, room: MediaRoomId, p: MediaParticipantId, offer: String) -> MediaFuture<'_, String> {
            self.log(format!("renegotiate {room} {p}"));
            Box::pin(async move { Ok(format!("reanswer {} to {offer}", p.0)) })
        }
        fn set_role(&self, room: MediaRoomId, p: MediaParticipantId, role: MediaRole) -> MediaFuture<'_, ()> {
            self.log(format!("role {room} {p} {role:?}"));
            Box::pin(async { Ok(()) })
        }
        fn leave(&self, room: MediaRoomId, p: MediaParticipantId) -> MediaFuture<'_, ()> {
            self.log(format!("leave {room} {p}"));
            Box::pin(async { Ok(()) })
        }
        fn close_room(&self, room: MediaRoomId) -> MediaFuture<'_, ()> {
            self.log(format!("close {room}"));
            Box::pin(async { Ok(()) })
        }
    }

    async fn wait_call(rx: &mut mpsc::UnboundedReceiver<String>, prefix: &str) -> String {
        loop {
            let s = tokio::time::timeout(live_common::FRAME_TIMEOUT, rx.recv())
                .await
                .expect("media call in time")
                .unwrap();
            if s.starts_with(prefix) {
                return s;
            }
        }
    }

    /// A live server whose media side is a [`FakeMedia`]: its call log and the sender of its events.
    async fn with_fake_media() -> (Live, mpsc::UnboundedReceiver<String>, mpsc::Sender<MediaEvent>) {
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::channel(16);
        let media = Arc::new(FakeMedia { calls: calls_tx });
        let parts = LiveParts {
            media: Some(MediaWiring { control: media, events }),
            sink: None,
        };
        (Live::start(|_| {}, parts).await, calls, events_tx)
    }

    fn participant(answer: &Value) -> MediaParticipantId {
        let sdp = answer["sdp"].as_str().unwrap();
        MediaParticipantId(sdp.split(' ').nth(1).unwrap().parse().unwrap())
    }

    #[tokio::test]
    async fn call_signalling_goes_through_media_control() {
        let (live, mut calls, events_tx) = with_fake_media().await;
        let (_, alice) = live.user("alice", "agent", &["sales"]).await;
        let mut a = live.agent(&alice).await;

        // No agent yet: a call is refused clearly.
        let (mut v0, _) = live.visitor().await;
        v0.send(json!({"type": "call_offer", "sdp": "v=0 early"})).await;
        assert_eq!(v0.expect("error").await["code"], "conflict");
        a.expect("offered").await;
        a.send(json!({"type": "decline", "conversation": v0.log.iter().find_map(|f| serde_json::from_str::<Value>(f).ok().filter(|v| v["type"] == "welcome")).unwrap()["conversation"]}))
            .await;

        let (mut v, conv) = assigned_pair(&live, &mut a).await;
        let room = format!("room-{conv}");

        // Visitor offers: the room opens, the visitor joins as visitor, the answer goes to the visitor only.
        v.send(json!({"type": "call_offer", "sdp": "visitor-offer"})).await;
        assert_eq!(wait_call(&mut calls, "open").await, format!("open {room}"));
        assert!(wait_call(&mut calls, "join").await.ends_with("Visitor"));
        let v_answer = v.expect("call_answer").await;
        assert!(v_answer["sdp"].as_str().unwrap().ends_with("to visitor-offer"));
        let vp = participant(&v_answer);

        // Agent offers: joins as agent; its answer carries the conversation.
        a.send(json!({"type": "call_offer", "conversation": conv, "sdp": "agent-offer"}))
            .await;
        assert!(wait_call(&mut calls, "join").await.ends_with("Agent"));
        let a_answer = a.expect("call_answer").await;
        assert_eq!(a_answer["conversation"], conv.as_str());
        assert!(a_answer["sdp"].as_str().unwrap().ends_with("to agent-offer"));
        let ap = participant(&a_answer);
        assert_ne!(vp, ap);
        assert!(
            !v.log.iter().any(|f| f.contains("agent-offer")),
            "answers go to their socket only"
        );

        // Connected events reach both parties; renegotiation only the one concerned.
        let room_id = MediaRoomId(conv.parse().unwrap());
        events_tx
            .send(MediaEvent::Connected {
                room: room_id,
                participant: vp,
            })
            .await
            .unwrap();
        let s = a.expect("call_state").await;
        assert_eq!(
            (s["party"].as_str(), s["state"].as_str()),
            (Some("visitor"), Some("connected"))
        );
        assert_eq!(v.expect("call_state").await["party"], "visitor");
        events_tx
            .send(MediaEvent::RenegotiationNeeded {
                room: room_id,
                participant: ap,
                audio: 1,
                video: 1,
            })
            .await
            .unwrap();
        let r = a.expect("call_renegotiate").await;
        assert_eq!((r["audio"].as_u64(), r["video"].as_u64()), (Some(1), Some(1)));
        a.send(json!({"type": "call_offer", "conversation": conv, "sdp": "agent-reoffer"}))
            .await;
        assert_eq!(
            wait_call(&mut calls, "renegotiate").await,
            format!("renegotiate {room} mp-{}", ap.0)
        );
        assert!(
            a.expect("call_answer").await["sdp"]
                .as_str()
                .unwrap()
                .starts_with("reanswer")
        );

        // A bad offer is an error frame; the visitor hangs up: leave, and the agent hears it.
        v.send(json!({"type": "call_end"})).await;
        assert_eq!(
            wait_call(&mut calls, "leave").await,
            format!("leave {room} mp-{}", vp.0)
        );
        let left = a
            .expect_where(|f| f["type"] == "call_state" && f["state"] == "left")
            .await;
        assert_eq!(
            (left["party"].as_str(), left["reason"].as_str()),
            (Some("visitor"), Some("hung_up"))
        );
        v.send(json!({"type": "call_offer", "sdp": "bad"})).await;
        assert_eq!(v.expect("error").await["code"], "bad_message");

        // Ending the conversation closes the room.
        a.send(json!({"type": "end", "conversation": conv})).await;
        assert_eq!(wait_call(&mut calls, "close").await, format!("close {room}"));
        assert!(!v.log.iter().any(|f| f.contains("reanswer")));
        assert!(!v.log.iter().any(|f| f.contains("call_renegotiate")));
    }

    /// A supervisor's console: hello without going available (it only supervises here).
    async fn supervisor(live: &Live, client: &crate::common::Client) -> (Ws, Value) {
        let mut ws = live
            .ws("/api/v1/agent/ws", Some(&live.own_origin()), Some(client))
            .await
            .unwrap();
        ws.send(json!({"type": "hello"})).await;
        ws.expect("welcome").await;
        let list = ws.expect("live_list").await;
        (ws, list)
    }

    #[tokio::test]
    async fn supervisors_see_the_live_list_monitor_silently_and_whisper_to_the_agent_only() {
        let (live, mut calls, events_tx) = with_fake_media().await;
        let (_, alice) = live.user("alice", "agent", &["sales"]).await;
        let (_, bob) = live.user("bob", "agent", &["sales"]).await;
        let (_, sam) = live.user("sam", "supervisor", &["sales"]).await;
        let (_, other) = live.user("olga", "supervisor", &["billing"]).await;
        let mut a = live.agent(&alice).await;
        let (mut s, list) = supervisor(&live, &sam).await;
        assert_eq!(list["conversations"], json!([]));
        let (mut o, _) = supervisor(&live, &other).await;

        // The live list follows the conversation: queued, then assigned to Alice.
        let (mut v, conv) = assigned_pair(&live, &mut a).await;
        let queued = s.expect("live_update").await;
        assert_eq!(
            (
                queued["summary"]["conversation"].as_str(),
                queued["summary"]["state"].as_str()
            ),
            (Some(conv.as_str()), Some("queued"))
        );
        let assigned = s
            .expect_where(|f| f["type"] == "live_update" && f["summary"]["state"] == "assigned")
            .await;
        assert_eq!(assigned["summary"]["agent_name"], "alice");
        assert_eq!(assigned["summary"]["in_call"], false);
        // A supervisor who reconnects gets the list as it stands.
        let (mut s2, list) = supervisor(&live, &sam).await;
        assert_eq!(list["conversations"][0]["conversation"], conv.as_str());
        assert_eq!(list["conversations"][0]["state"], "assigned");

        // No call yet: nothing to monitor. Not Sam's group, or not a supervisor: forbidden.
        s.send(json!({"type": "monitor_offer", "conversation": conv, "sdp": "sup-offer"}))
            .await;
        let e = s.expect("error").await;
        assert_eq!(
            (e["code"].as_str(), e["message"].as_str()),
            (Some("conflict"), Some("no call in progress"))
        );
        o.send(json!({"type": "monitor_offer", "conversation": conv, "sdp": "x"}))
            .await;
        assert_eq!(o.expect("error").await["code"], "not_found");
        let mut b = live.agent(&bob).await;
        b.send(json!({"type": "monitor_offer", "conversation": conv, "sdp": "x"}))
            .await;
        assert_eq!(b.expect("error").await["code"], "forbidden");
        a.send(json!({"type": "monitor_offer", "conversation": conv, "sdp": "x"}))
            .await;
        assert_eq!(
            a.expect("error").await["code"],
            "forbidden",
            "the agent is a party, not a monitor"
        );
        s.send(json!({"type": "whisper", "conversation": conv, "active": true}))
            .await;
        assert_eq!(s.expect("error").await["code"], "conflict");

        // The visitor starts a call: the list says so; the supervisor joins silently.
        v.send(json!({"type": "call_offer", "sdp": "visitor-offer"})).await;
        assert!(wait_call(&mut calls, "join").await.ends_with("Visitor"));
        v.expect("call_answer").await;
        let in_call = s
            .expect_where(|f| f["type"] == "live_update" && f["summary"]["in_call"] == true)
            .await;
        assert_eq!(in_call["summary"]["conversation"], conv.as_str());
        s.send(json!({"type": "monitor_offer", "conversation": conv, "sdp": "sup-offer"}))
            .await;
        assert!(
            wait_call(&mut calls, "join")
                .await
                .ends_with("Supervisor { whisper: false }"),
            "a monitor joins silent"
        );
        let answer = s.expect("call_answer").await;
        assert_eq!(answer["conversation"], conv.as_str());
        let sp = participant(&answer);
        let room_id = MediaRoomId(conv.parse().unwrap());
        events_tx
            .send(MediaEvent::Connected {
                room: room_id,
                participant: sp,
            })
            .await
            .unwrap();
        let st = s.expect("call_state").await;
        assert_eq!(
            (st["party"].as_str(), st["state"].as_str()),
            (Some("supervisor"), Some("connected"))
        );

        // Whisper: the SFU role changes, Alice is told, the visitor hears of nothing.
        s.send(json!({"type": "whisper", "conversation": conv, "active": true}))
            .await;
        assert_eq!(
            wait_call(&mut calls, "role").await,
            format!("role room-{conv} mp-{} Supervisor {{ whisper: true }}", sp.0)
        );
        let w = a.expect("whisper").await;
        assert_eq!(
            (w["supervisor"].as_str(), w["active"].as_bool()),
            (Some("sam"), Some(true))
        );
        s.send(json!({"type": "whisper", "conversation": conv, "active": false}))
            .await;
        assert!(
            wait_call(&mut calls, "role")
                .await
                .ends_with("Supervisor { whisper: false }")
        );
        assert_eq!(a.expect("whisper").await["active"], false);

        // Whispering again, then the supervisor's socket drops: its leg leaves and the whisper ends.
        s.send(json!({"type": "whisper", "conversation": conv, "active": true}))
            .await;
        assert_eq!(a.expect("whisper").await["active"], true);
        s.close().await;
        assert_eq!(
            wait_call(&mut calls, "leave").await,
            format!("leave room-{conv} mp-{}", sp.0)
        );
        assert_eq!(a.expect("whisper").await["active"], false);

        // The visitor's socket never carried a trace of the supervisor.
        v.send(json!({"type": "message", "client_id": "m1", "body": "still there?"}))
            .await;
        v.expect("message").await;
        for f in &v.log {
            assert!(
                !f.contains("supervisor") && !f.contains("whisper") && !f.contains("sup-offer"),
                "{f}"
            );
        }
        // Alice never saw the monitoring leg's state either.
        assert!(!a.log.iter().any(|f| f.contains("\"party\":\"supervisor\"")));

        // The end is the last live update.
        a.send(json!({"type": "end", "conversation": conv})).await;
        let last = s2
            .expect_where(|f| f["type"] == "live_update" && f["summary"]["state"] == "ended")
            .await;
        assert_eq!(
            (
                last["summary"]["conversation"].as_str(),
                last["summary"]["in_call"].as_bool()
            ),
            (Some(conv.as_str()), Some(false))
        );
        // A supervisor of another group heard nothing of it (frames are ordered: the error comes after).
        o.send(json!({"type": "watch", "conversation": conv})).await;
        assert_eq!(o.expect("error").await["code"], "not_found");
        assert!(!o.log.iter().any(|f| f.contains("live_update")));
        let (_, list) = supervisor(&live, &sam).await;
        assert_eq!(list["conversations"], json!([]));
    }

    #[tokio::test]
    async fn a_transfer_to_another_group_moves_the_conversation_between_supervisors() {
        let (live, mut calls, _events) = with_fake_media().await;
        let (_, alice) = live.user("alice", "agent", &["sales"]).await;
        let (_, sam) = live.user("sam", "supervisor", &["sales"]).await;
        let (_, olga) = live.user("olga", "supervisor", &["billing"]).await;
        let mut a = live.agent(&alice).await;
        let (mut v, conv) = assigned_pair(&live, &mut a).await;
        let (mut s, list) = supervisor(&live, &sam).await;
        assert_eq!(list["conversations"][0]["conversation"], conv.as_str());
        let (mut o, list) = supervisor(&live, &olga).await;
        assert_eq!(list["conversations"], json!([]));
        v.send(json!({"type": "call_offer", "sdp": "visitor-offer"})).await;
        wait_call(&mut calls, "join").await;
        s.send(json!({"type": "watch", "conversation": conv})).await;
        s.send(json!({"type": "monitor_offer", "conversation": conv, "sdp": "sup-offer"}))
            .await;
        assert!(
            wait_call(&mut calls, "join")
                .await
                .ends_with("Supervisor { whisper: false }")
        );
        let sp = participant(&s.expect("call_answer").await);

        // To billing: Sam's list loses it (the update names billing), his leg and his watch end; Olga gets it.
        a.send(json!({"type": "transfer", "conversation": conv, "to": {"kind": "group", "group": "billing"}}))
            .await;
        let moved = s
            .expect_where(|f| f["type"] == "live_update" && f["summary"]["group"] == "billing")
            .await;
        assert_eq!(moved["summary"]["conversation"], conv.as_str());
        assert_eq!(
            wait_call(&mut calls, "leave").await,
            format!("leave room-{conv} mp-{}", sp.0)
        );
        let left = s.expect("call_state").await;
        assert_eq!(
            (left["party"].as_str(), left["reason"].as_str()),
            (Some("supervisor"), Some("not_permitted"))
        );
        assert_eq!(s.expect("error").await["code"], "forbidden");
        let arrived = o.expect("live_update").await;
        assert_eq!(
            (
                arrived["summary"]["group"].as_str(),
                arrived["summary"]["state"].as_str()
            ),
            (Some("billing"), Some("queued"))
        );
        // Sam no longer receives its chat.
        v.send(json!({"type": "message", "client_id": "m1", "body": "hello billing"}))
            .await;
        v.expect("message").await;
        s.send(json!({"type": "watch", "conversation": conv})).await;
        assert_eq!(s.expect("error").await["code"], "not_found");
        assert!(!s.log.iter().any(|f| f.contains("hello billing")));
    }
}

#[tokio::test]
async fn agent_reconnecting_within_grace_keeps_conversations_and_gets_what_it_missed() {
    let live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, conv) = assigned_pair(&live, &mut a).await;
    v.send(json!({"type": "message", "client_id": "m1", "body": "first"}))
        .await;
    assert_eq!(a.expect("message").await["seq"], 1);
    a.close().await;
    v.send(json!({"type": "message", "client_id": "m2", "body": "second"}))
        .await;
    v.expect_where(|f| f["type"] == "message" && f["seq"] == 2).await;
    // Back within the grace period: the conversation is still Alice's; only seq 2 is resent.
    let mut a2 = live
        .ws("/api/v1/agent/ws", Some(&live.own_origin()), Some(&alice))
        .await
        .unwrap();
    a2.send(json!({"type": "hello", "resume": [{"conversation": conv, "last_seq": 1}]}))
        .await;
    let welcome = a2.expect("welcome").await;
    assert_eq!(welcome["conversations"], json!([conv]));
    let missed = a2.expect("message").await;
    assert_eq!(
        (missed["seq"].as_u64(), missed["body"].as_str()),
        (Some(2), Some("second"))
    );
    a2.send(json!({"type": "message", "conversation": conv, "client_id": "a1", "body": "back"}))
        .await;
    assert_eq!(v.expect("message").await["body"], "back");
    let resent = a2
        .log
        .iter()
        .filter(|f| f.contains("\"type\":\"message\"") && f.contains("\"seq\":1,"))
        .count();
    assert_eq!(resent, 0, "nothing the agent had is sent again");
    assert!(!v.log.iter().any(|f| f.contains("\"type\":\"transferred\"")));
}

#[tokio::test]
async fn disabled_agent_loses_the_socket() {
    // The session is re-checked every ping interval; two intervals of silence would be a keepalive close.
    let live = Live::start(|c| c.live.ping_interval_secs = 2, LiveParts::default()).await;
    let (alice_id, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let r = live
        .admin
        .send_json(
            "PATCH",
            &format!("/api/v1/admin/users/{alice_id}"),
            &json!({"disabled": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.closed().await, Closed::Code(4401));
    let origin = live.own_origin();
    assert_eq!(
        live.ws("/api/v1/agent/ws", Some(&origin), Some(&alice)).await.err(),
        Some(401)
    );
}

#[tokio::test]
async fn operator_patterns_global_and_per_group_apply_to_chat() {
    let live = Live::start(
        |c| {
            c.live.masking.extra =
                vec![serde_json::from_value(json!({"name": "ticket", "regex": "\\bTCK-[0-9]{8}\\b"})).unwrap()];
            c.live.masking_groups.insert(
                "sales".into(),
                vec![
                    serde_json::from_value(
                        json!({"name": "order", "regex": "\\bORD-[0-9]{6}\\b", "replacement": "[order]"}),
                    )
                    .unwrap(),
                ],
            );
        },
        LiveParts::default(),
    )
    .await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, _conv) = assigned_pair(&live, &mut a).await;
    v.send(json!({"type": "message", "client_id": "m1", "body": "order ORD-123456, ticket TCK-12345678, call +44 20 7946 0958"}))
        .await;
    let got = a.expect("message").await;
    assert_eq!(got["body"], "order [order], ticket [ticket], call +44 20 7946 0958");
    assert_eq!(
        v.expect("message").await["body"],
        got["body"],
        "the visitor sees the masked form too"
    );
}

/// Many visitors write at once: every conversation keeps one gap-free order on the agent's socket. Prints the
/// throughput seen (a figure, not an assertion).
#[tokio::test]
async fn many_visitors_chat_concurrently_in_order() {
    const VISITORS: usize = 20;
    const MESSAGES: usize = 25;
    let live = Live::start(
        |c| {
            c.live.messages_per_second = 10_000;
            c.live.message_burst = 10_000;
        },
        LiveParts::default(),
    )
    .await;
    let r = live
        .admin
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "max", "role": "agent", "groups": ["sales"], "max_conversations": VISITORS, "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let max = live.client();
    assert_eq!(max.login("max", "correct horse battery").await.status, 200);
    let mut a = live.agent(&max).await;
    let mut visitors = Vec::new();
    for _ in 0..VISITORS {
        let (v, conv) = assigned_pair(&live, &mut a).await;
        visitors.push((v, conv));
    }
    let start = std::time::Instant::now();
    let writers: Vec<_> = visitors
        .into_iter()
        .map(|(mut v, _conv)| {
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    v.send(json!({"type": "message", "client_id": format!("c{i}"), "body": format!("hello {i}")}))
                        .await;
                }
                for _ in 0..MESSAGES {
                    v.expect("message").await;
                }
                v
            })
        })
        .collect();
    let mut last_seq = std::collections::HashMap::<String, u64>::new();
    for _ in 0..VISITORS * MESSAGES {
        let m = a.expect("message").await;
        let conv = m["conversation"].as_str().unwrap().to_string();
        let seq = m["seq"].as_u64().unwrap();
        let prev = last_seq.insert(conv.clone(), seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "gap-free order in {conv}");
        assert_eq!(m["body"], format!("hello {}", seq - 1));
    }
    let elapsed = start.elapsed();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(last_seq.len(), VISITORS);
    println!(
        "{} messages from {VISITORS} visitors to one agent in {elapsed:?}: {:.0} messages/s (debug build)",
        VISITORS * MESSAGES,
        (VISITORS * MESSAGES) as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn socket_cap_refuses_upgrades_with_503() {
    let live = Live::start(|c| c.live.max_sockets = 1, LiveParts::default()).await;
    let (_v, _) = live.visitor().await;
    let token = live.token().await;
    let path = format!("/api/v1/visitor/ws?token={token}");
    assert_eq!(live.ws(&path, Some(SHOP), None).await.err(), Some(503));
    // Agents have a pool of their own: a full visitor pool does not keep them out.
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let _a = live.agent(&alice).await;
    // The refused upgrade did not spend the token (it is used only once a slot is taken).
    drop(_v);
    let reopened = tokio::time::timeout(live_common::FRAME_TIMEOUT, async {
        loop {
            match live.ws(&path, Some(SHOP), None).await {
                Ok(ws) => return ws,
                Err(503) => tokio::task::yield_now().await,
                Err(other) => panic!("unexpected {other}"),
            }
        }
    })
    .await
    .expect("the slot is released when the socket ends");
    drop(reopened);
}

#[tokio::test]
async fn a_visitor_resuming_after_the_agent_ended_hears_ended() {
    let live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (v, conv) = assigned_pair(&live, &mut a).await;
    let welcome: Value = serde_json::from_str(&v.log[0]).unwrap();
    let token = welcome["resume_token"].as_str().unwrap().to_string();
    v.close().await;
    a.send(json!({"type": "end", "conversation": conv})).await;
    a.expect("ended").await;
    let mut r = live.ws("/api/v1/visitor/ws", Some(SHOP), None).await.unwrap();
    r.send(json!({"type": "resume", "resume_token": token, "last_seq": 0}))
        .await;
    assert_eq!(r.expect("ended").await["reason"], "agent_ended");
    assert_eq!(r.closed().await, Closed::Code(1000));
}

/// Messages in one replay test: more than a socket's 1024-frame queue.
const LONG: usize = 1100;

/// A server whose chat rate limits do not slow the tests' bulk senders.
async fn chatty() -> Live {
    Live::start(unthrottled, LiveParts::default()).await
}

/// No chat rate limit to speak of.
fn unthrottled(c: &mut relaydesk_signalling::config::Config) {
    c.live.messages_per_second = 100_000;
    c.live.message_burst = 100_000;
}

/// The visitor sends `n` messages, `body(i)` for the i-th (seq `first + i`), reading its own copies as it
/// goes so that its socket never backs up.
async fn send_many(v: &mut Ws, first: usize, n: usize, body: impl Fn(usize) -> String) {
    let mut i = 1;
    while i <= n {
        let end = (i + 99).min(n);
        for k in i..=end {
            v.send(json!({"type": "message", "client_id": format!("m{k}"), "body": body(k)}))
                .await;
        }
        for k in i..=end {
            assert_eq!(v.expect("message").await["seq"], first + k);
        }
        i = end + 1;
    }
}

/// The body of the history line `i`. Numbers in consecutive messages with only a few words between them are
/// read as the parts of one number (see `masking::MAX_JOIN_WORDS`): numbered lines that close together
/// could add up to something card-shaped and be masked, so each line has enough words after its number.
fn line(i: usize) -> String {
    format!("line {i} of a long history, as ordinary chat")
}

/// The next `n` messages on `ws` are seq `1..=n` with the bodies `line(seq)`.
async fn expect_history(ws: &mut Ws, n: usize) {
    for seq in 1..=n {
        let m = ws.expect("message").await;
        assert_eq!(m["seq"], seq, "{m}");
        assert_eq!(m["body"], line(seq));
    }
}

#[tokio::test]
async fn a_long_history_reaches_the_agent_on_accept_and_later_messages_follow() {
    let live = chatty().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    // A queued visitor writes more than a socket queues.
    let (mut v, welcome) = live.visitor().await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    send_many(&mut v, 0, LONG, line).await;
    let mut a = live.agent(&alice).await;
    // The offer may have come before the answer to `set_presence`.
    if !a.log.iter().any(|f| f.contains("\"offered\"")) {
        a.expect("offered").await;
    }
    assert!(a.log.iter().any(|f| f.contains("\"offered\"") && f.contains(&conv)));
    a.send(json!({"type": "accept", "conversation": conv})).await;
    a.expect("assigned").await;
    expect_history(&mut a, LONG).await;
    v.send(json!({"type": "message", "client_id": "late", "body": "still there?"}))
        .await;
    let m = a.expect("message").await;
    assert_eq!(
        (m["seq"].as_u64(), m["body"].as_str()),
        (Some(LONG as u64 + 1), Some("still there?"))
    );
    // A second visitor is still offered to her.
    let (_v2, w2) = live.visitor().await;
    assert_eq!(a.expect("offered").await["conversation"], w2["conversation"]);
    // A second console of hers that resumes from the start gets it all again, then what follows.
    let mut a2 = live
        .ws("/api/v1/agent/ws", Some(&live.own_origin()), Some(&alice))
        .await
        .unwrap();
    a2.send(json!({"type": "hello", "resume": [{"conversation": conv, "last_seq": 0}]}))
        .await;
    a2.expect("welcome").await;
    expect_history(&mut a2, LONG).await;
    assert_eq!(a2.expect("message").await["body"], "still there?");
    v.send(json!({"type": "message", "client_id": "later", "body": "and again"}))
        .await;
    assert_eq!(a2.expect("message").await["body"], "and again");
}

#[tokio::test]
async fn a_long_history_reaches_a_supervisor_on_watch_and_a_visitor_on_resume() {
    let live = chatty().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (_, sue) = live.user("sue", "supervisor", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, conv) = assigned_pair(&live, &mut a).await;
    send_many(&mut v, 0, LONG, line).await;
    expect_history(&mut a, LONG).await;

    let mut s = live.agent(&sue).await;
    s.send(json!({"type": "watch", "conversation": conv})).await;
    expect_history(&mut s, LONG).await;
    a.send(json!({"type": "message", "conversation": conv, "client_id": "a1", "body": "after"}))
        .await;
    let m = s.expect("message").await;
    assert_eq!(
        (m["seq"].as_u64(), m["body"].as_str()),
        (Some(LONG as u64 + 1), Some("after"))
    );

    // The visitor's socket drops; a resume from nothing replays everything, then the conversation goes on.
    let welcome: Value = v
        .log
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .find(|f| f["type"] == "welcome")
        .unwrap();
    let resume_token = welcome["resume_token"].as_str().unwrap().to_string();
    v.close().await;
    let mut r = live.ws("/api/v1/visitor/ws", Some(SHOP), None).await.unwrap();
    r.send(json!({"type": "resume", "resume_token": resume_token, "last_seq": 0}))
        .await;
    r.expect("welcome").await;
    expect_history(&mut r, LONG).await;
    assert_eq!(r.expect("message").await["body"], "after");
    a.send(json!({"type": "message", "conversation": conv, "client_id": "a2", "body": "and more"}))
        .await;
    assert_eq!(r.expect("message").await["body"], "and more");
}

#[tokio::test]
async fn an_agent_socket_that_stops_reading_is_closed_with_4429_and_counts_as_dropped() {
    // Room for the megabytes of text that fill a connection (the text budget is not under test here).
    let live = Live::start(
        |c| {
            unthrottled(c);
            c.live.limits.max_text_bytes_per_conversation = 64 << 20;
        },
        LiveParts::default(),
    )
    .await;
    let (alice_id, alice) = live.user("alice", "agent", &["sales"]).await;
    let (_, sue) = live.user("sue", "supervisor", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, _conv) = assigned_pair(&live, &mut a).await;
    let mut s = live.agent(&sue).await;
    // Alice stops reading. The visitor writes until her connection and then her queue fill (a few MB fill
    // the TCP buffers, then 1024 frames the queue), and stops once she is dropped: the router drops her as
    // on a lost socket, and her supervisor sees her go offline.
    let offline = |f: &Value| f["type"] == "presence_changed" && f["agent"] == alice_id && f["status"] == "offline";
    let body = "x".repeat(4000);
    let mut sent = 0;
    while sent < 4500 && !s.log.iter().any(|f| offline(&serde_json::from_str(f).unwrap())) {
        send_many(&mut v, sent, 100, |_| body.clone()).await;
        sent += 100;
        s.read_ready().await;
    }
    if !s.log.iter().any(|f| offline(&serde_json::from_str(f).unwrap())) {
        s.expect_where(offline).await;
    }
    // A new visitor is offered to the one console still connected (Sue's), not to the silenced socket.
    let (_v2, w2) = live.visitor().await;
    let conv2 = w2["conversation"].as_str().unwrap().to_string();
    s.expect_where(|f| f["type"] == "offered" && f["conversation"] == conv2.as_str())
        .await;
    // When Alice reads again she finds the close, 4429, after what was already on its way.
    assert_eq!(a.closed().await, Closed::Code(4429));
    assert!(
        !a.log.iter().any(|f| f.contains("\"offered\"") && f.contains(&conv2)),
        "offered to a closed socket"
    );
}

/// Alice chats with a visitor; Sue, a supervisor of sales, has her console open; then the admin applies
/// `change` to Sue. Sue's next frame, a `watch` of the conversation, must not be served: her socket is
/// closed with `code` before the admin's answer, and no message reached it. Returns the server, Sue's
/// client and the conversation.
async fn supervisor_changed_while_connected(change: Value, code: u16) -> (Live, common::Client, String) {
    let live = Live::quick().await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (sue_id, sue) = live.user("sue", "supervisor", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, conv) = assigned_pair(&live, &mut a).await;
    v.send(json!({"type": "message", "client_id": "m1", "body": "before"}))
        .await;
    a.expect("message").await;
    let mut s = live.agent(&sue).await;
    let r = live
        .admin
        .send_json("PATCH", &format!("/api/v1/admin/users/{sue_id}"), &change)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The frame may meet a socket the server closed already (errors ignored).
    let watch = json!({"type": "watch", "conversation": conv}).to_string();
    let _ = tokio::time::timeout(
        live_common::FRAME_TIMEOUT,
        futures_util::SinkExt::send(
            &mut s.stream,
            tokio_tungstenite::tungstenite::Message::Text(watch.into()),
        ),
    )
    .await;
    v.send(json!({"type": "message", "client_id": "m2", "body": "after"}))
        .await;
    assert_eq!(s.closed().await, Closed::Code(code));
    assert!(!s.log.iter().any(|f| f.contains("\"type\":\"message\"")), "{:?}", s.log);
    (live, sue, conv)
}

#[tokio::test]
async fn leaving_a_group_takes_effect_on_the_open_console_at_once() {
    // 4410: reconnect to get the new groups.
    let (live, sue, conv) = supervisor_changed_while_connected(json!({"groups": ["billing"]}), 4410).await;
    // Reconnected, she has her new groups: the sales conversation is neither listed nor watchable (another
    // group's conversation is `not_found` to her).
    let mut s2 = live.console(&sue).await;
    assert_eq!(s2.expect("live_list").await["conversations"], json!([]));
    s2.send(json!({"type": "watch", "conversation": conv})).await;
    assert_eq!(s2.expect("error").await["code"], "not_found");
}

/// A change that ends Sue's login session closes her open console with 4401, and she must log in again.
async fn session_ends_while_connected(change: Value) {
    let (live, sue, _) = supervisor_changed_while_connected(change, 4401).await;
    assert_eq!(
        live.ws("/api/v1/agent/ws", Some(&live.own_origin()), Some(&sue))
            .await
            .err(),
        Some(401)
    );
}

#[tokio::test]
async fn a_role_change_takes_effect_on_the_open_console_at_once() {
    session_ends_while_connected(json!({"role": "agent"})).await;
}

#[tokio::test]
async fn a_new_password_ends_the_open_console_at_once() {
    session_ends_while_connected(json!({"password": "another horse battery staple"})).await;
}

#[tokio::test]
async fn a_change_made_in_the_store_alone_reaches_the_open_console_within_a_ping_interval() {
    // As the offline command line or another node would change it: no admin API call.
    let live = Live::start(|c| c.live.ping_interval_secs = 1, LiveParts::default()).await;
    let (sue_id, sue) = live.user("sue", "supervisor", &["sales"]).await;
    let mut s = live.agent(&sue).await;
    live.store_update(sue_id, |u| u.groups = Some(vec!["billing".into()]));
    assert_eq!(s.closed().await, Closed::Code(4410));
    let mut s2 = live.console(&sue).await;
    s2.expect("live_list").await;
}

#[tokio::test]
async fn deleting_a_group_takes_effect_on_its_members_open_consoles_at_once() {
    let live = Live::quick().await;
    let (_, sue) = live.user("sue", "supervisor", &["sales", "billing"]).await;
    let (otto_id, otto) = live.user("otto", "supervisor", &["sales"]).await;
    let mut s = live.agent(&sue).await;
    let mut o = live.agent(&otto).await;
    let r = live
        .admin
        .send_json("DELETE", "/api/v1/admin/groups/billing", &json!({}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    // Sue lost a group: her console must reconnect to get the new list. Otto's did not change.
    assert_eq!(s.closed().await, Closed::Code(4410));
    o.send(json!({"type": "set_presence", "presence": "away"})).await;
    o.expect_where(|f| f["type"] == "presence_changed" && f["agent"] == otto_id && f["status"] == "away")
        .await;
}

/// One case-folding rule for group names, the store's: ASCII letters without case, every other character
/// exactly. `KEY` is the group `key`; `\u{212A}EY` (a Kelvin sign, which Unicode lowercases to `k`) is a
/// group of its own in the store, so its members are never offered the visitors of `key`.
#[tokio::test]
async fn group_names_fold_case_by_the_stores_rule_alone() {
    let live = Live::quick().await;
    for g in ["key", "\u{212A}EY"] {
        let r = live
            .admin
            .post_json("/api/v1/admin/groups", &json!({ "name": g }))
            .await;
        assert_eq!(r.status, 201, "{g}: {}", r.text());
    }
    let r = live
        .admin
        .post_json(
            "/api/v1/admin/keys",
            &json!({"group": "key", "origins": [SHOP], "label": "key shop"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"]["key"].as_str().unwrap().to_string();
    // Kelvin connects first: the longest idle, so the one offered if the groups were confused.
    let (_, kelvin) = live.user("kelvin", "agent", &["\u{212A}EY"]).await;
    let mut k = live.agent(&kelvin).await;
    let (_, kim) = live.user("kim", "agent", &["KEY"]).await;
    let mut m = live.agent(&kim).await;

    let r = live.session(&key, Some(SHOP), "https://shop.example/").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["session_token"].as_str().unwrap().to_string();
    let mut v = live
        .ws(&format!("/api/v1/visitor/ws?token={token}"), Some(SHOP), None)
        .await
        .unwrap();
    v.send(json!({"type": "hello"})).await;
    let conv = v.expect("welcome").await["conversation"].as_str().unwrap().to_string();
    assert_eq!(m.expect("offered").await["conversation"], conv.as_str());
    // A round trip through the hub after the offer: Kelvin was offered nothing before it.
    k.send(json!({"type": "set_presence", "presence": "away"})).await;
    k.expect("presence_changed").await;
    assert!(!k.log.iter().any(|f| f.contains("offered")), "{:?}", k.log);
}

/// A visitor socket for `token` with `X-Forwarded-For: forwarded_for` (as a proxy on 127.0.0.1 sends it),
/// after `hello`.
async fn visitor_via_proxy(live: &Live, token: &str, forwarded_for: &str) -> Result<Ws, u16> {
    let path = format!("/api/v1/visitor/ws?token={token}");
    let mut ws = live
        .ws_with(&path, Some(SHOP), None, &[("x-forwarded-for", forwarded_for)])
        .await?;
    ws.send(json!({"type": "hello"})).await;
    ws.expect("welcome").await;
    Ok(ws)
}

fn token_of(r: &common::Resp) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["session_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_visitor_nobody_takes_hears_queue_timeout_and_is_archived() {
    let mut live = Live::start(|c| c.live.limits.queue_timeout_ms = 300, LiveParts::default()).await;
    let (mut v, welcome) = live.visitor().await;
    assert_eq!(v.expect("queue_position").await["position"], 1);
    assert_eq!(v.expect("ended").await["reason"], "queue_timeout");
    assert_eq!(v.closed().await, Closed::Code(1000));
    let ended = live.next_ended().await;
    assert_eq!(ended.id.0.to_string(), welcome["conversation"].as_str().unwrap());
    assert_eq!(
        ended.reason,
        relaydesk_signalling::chat_protocol::EndReason::QueueTimeout
    );
    assert!(ended.participants.is_empty());
}

#[tokio::test]
async fn conversation_caps_refuse_with_busy_never_silently() {
    let live = Live::start(
        |c| {
            c.live.limits.max_queued_conversations = 1;
            c.live.sessions_per_minute_per_address = 10_000;
            c.live.sessions_per_minute_per_key = 10_000;
        },
        LiveParts::default(),
    )
    .await;
    // A token issued before the cap is reached still meets it when the socket joins.
    let early = live.token().await;
    let (mut first, _) = live.visitor().await;
    first.expect("queue_position").await;
    let r = live.session(&live.key, Some(SHOP), "https://shop.example/").await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "busy"), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some(SHOP));
    let mut late = live
        .ws(&format!("/api/v1/visitor/ws?token={early}"), Some(SHOP), None)
        .await
        .unwrap();
    late.send(json!({"type": "hello"})).await;
    assert_eq!(late.expect("error").await["code"], "busy");
    assert_eq!(late.closed().await, Closed::Code(4503));
    // Once the queue has room again, visitors get in.
    first.send(json!({"type": "end"})).await;
    first.expect("ended").await;
    let session = || live.session(&live.key, Some(SHOP), "https://shop.example/");
    let admitted = live_common::until_status(session, 201, 503).await;
    assert!(admitted, "the ended conversation freed its place");
}

#[tokio::test]
async fn a_conversation_over_its_text_budget_refuses_more_messages() {
    let live = Live::start(
        |c| c.live.limits.max_text_bytes_per_conversation = 100,
        LiveParts::default(),
    )
    .await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v, conv) = assigned_pair(&live, &mut a).await;
    let body = "x".repeat(40);
    v.send(json!({"type": "message", "client_id": "c1", "body": body}))
        .await;
    assert_eq!(v.expect("message").await["seq"], 1);
    a.send(json!({"type": "message", "conversation": conv, "client_id": "a1", "body": body}))
        .await;
    assert_eq!(
        a.expect_where(|f| f["type"] == "message" && f["seq"] == 2).await["seq"],
        2
    );
    v.send(json!({"type": "message", "client_id": "c2", "body": body}))
        .await;
    let e = v.expect("error").await;
    assert_eq!(e["code"], "too_large", "{e}");
    // The connection stays; a short message still fits.
    v.send(json!({"type": "message", "client_id": "c3", "body": "ok"}))
        .await;
    assert_eq!(v.expect("message").await["seq"], 3);
}

#[tokio::test]
async fn tokenless_sockets_from_a_foreign_origin_never_keep_an_agent_out() {
    let live = Live::start(|c| c.live.max_sockets = 5, LiveParts::default()).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        match live.ws("/api/v1/visitor/ws", Some("https://evil.example"), None).await {
            Ok(ws) => held.push(ws),
            Err(status) => assert_eq!(status, 403),
        }
    }
    assert!(held.is_empty(), "a foreign origin opened {} sockets", held.len());
    // Even the site's own origin filling the visitor pool leaves the agents' pool alone.
    for _ in 0..20 {
        if let Ok(ws) = live.ws("/api/v1/visitor/ws", Some(SHOP), None).await {
            held.push(ws);
        }
    }
    assert_eq!(held.len(), 5, "the visitor pool is capped");
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    a.send(json!({"type": "set_presence", "presence": "away"})).await;
    assert_eq!(a.expect("presence_changed").await["status"], "away");
}

#[tokio::test]
async fn a_flood_of_visitors_from_one_address_stops_at_its_cap() {
    let live = Live::start(
        |c| {
            c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            c.live.limits.max_visitor_sockets_per_address = 3;
            // The per-minute limiter is not what this test is about (it polls below).
            c.live.sessions_per_minute_per_address = 10_000;
        },
        LiveParts::default(),
    )
    .await;
    let flood = "198.51.100.7";
    // Four tokens while nothing is open yet; the fourth socket is over the cap.
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(token_of(&live.session_via_proxy(flood).await));
    }
    let mut open = Vec::new();
    for t in &tokens[..3] {
        open.push(visitor_via_proxy(&live, t, flood).await.unwrap());
    }
    assert_eq!(visitor_via_proxy(&live, &tokens[3], flood).await.err(), Some(429));
    let r = live.session_via_proxy(flood).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "too_many_connections"));
    assert!(r.header("retry-after").is_some());
    // A spoofed header on the client's side changes nothing: the proxy appends the real address.
    let r = live.session_via_proxy(&format!("203.0.113.1, {flood}")).await;
    assert_eq!(r.status, 429);
    // Another address still gets in.
    let other = "198.51.100.8";
    let t = token_of(&live.session_via_proxy(other).await);
    let _other = visitor_via_proxy(&live, &t, other).await.unwrap();
    // IPv6 counts by /64: other hosts of a full /64 are refused, the next /64 is not.
    for host in 1..=3 {
        let a = format!("2001:db8:1:2::{host}");
        let t = token_of(&live.session_via_proxy(&a).await);
        open.push(visitor_via_proxy(&live, &t, &a).await.unwrap());
    }
    assert_eq!(live.session_via_proxy("2001:db8:1:2:ffff::9").await.status, 429);
    assert_eq!(live.session_via_proxy("2001:db8:1:3::1").await.status, 201);
    // Closing a socket frees its place.
    open.remove(0).close().await;
    let freed = live_common::until_status(|| live.session_via_proxy(flood), 201, 429).await;
    assert!(freed, "the closed socket released its address slot");
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    // No trusted proxies: the TCP peer (127.0.0.1) is the client whatever the header says.
    let live = Live::start(
        |c| c.live.limits.max_visitor_sockets_per_address = 1,
        LiveParts::default(),
    )
    .await;
    let t = token_of(&live.session_via_proxy("198.51.100.1").await);
    let _v = visitor_via_proxy(&live, &t, "198.51.100.1").await.unwrap();
    let r = live.session_via_proxy("198.51.100.2").await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "too_many_connections"));
}

#[tokio::test]
async fn connections_from_one_address_are_capped_but_not_a_trusted_proxys() {
    let live = Live::start(|c| c.http.max_connections_per_address = 3, LiveParts::default()).await;
    let c = live.client();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(c.try_connect_tls().await.expect("under the cap"));
    }
    // The fourth connection from 127.0.0.1 is closed before its TLS handshake completes.
    let over = tokio::time::timeout(common::IO_TIMEOUT, c.try_connect_tls())
        .await
        .expect("refused at once, not left hanging");
    assert!(over.is_err(), "a fourth connection from one address");
    // A closed connection frees its place.
    drop(held.pop());
    let again = tokio::time::timeout(live_common::FRAME_TIMEOUT, async {
        loop {
            if let Ok(tls) = c.try_connect_tls().await {
                return tls;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(again.is_ok(), "the closed connection released its place");
    drop(again);
    drop(held);

    // Behind a trusted proxy, the proxy's connections are not counted (it carries many clients).
    let proxied = Live::start(
        |c| {
            c.http.max_connections_per_address = 1;
            c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        },
        LiveParts::default(),
    )
    .await;
    let c = proxied.client();
    let _first = c.try_connect_tls().await.unwrap();
    let _second = c.try_connect_tls().await.expect("a trusted proxy is not capped");
    assert_eq!(proxied.session_via_proxy("198.51.100.7").await.status, 201);
}
