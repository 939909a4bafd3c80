//! Recording through the whole server with WebSocket clients and str0m peers (no browser): policy
//! `on_request`, where the agent starts recording during the call; the `recording` frames both parties get
//! (before `ice_servers`, then on every change); refusals in the wrong state; the host page's payment step
//! pausing and resuming; the transcript's notes; the recording closed when the call ends; the download for
//! admins only (a supervisor's attempt refused and audited) and the command-line export, both audited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use live_common::{Live, Ws};
use relaydesk_loadtest::media::{MediaConfig, MediaEngine, Peer};
use serde_json::{Value, json};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The next `recording` frame of `ws`: (state, policy).
async fn recording(ws: &mut Ws) -> (String, String) {
    let f = ws.expect("recording").await;
    (
        f["state"].as_str().unwrap().into(),
        f["policy"].as_str().unwrap().into(),
    )
}

fn pair(state: &str) -> (String, String) {
    (state.into(), "on_request".into())
}

/// The agent asks for `action`; both parties hear the new state.
async fn change(agent: &mut Ws, visitor: &mut Ws, conv: &str, action: &str, state: &str) {
    agent
        .send(json!({"type": "recording", "conversation": conv, "action": action}))
        .await;
    assert_eq!(recording(agent).await, pair(state), "{action}");
    assert_eq!(recording(visitor).await, pair(state), "{action}");
}

/// Waits until the engine's peers received `n` more packets (media flowed meanwhile).
async fn media_for(engine: &MediaEngine, n: u64) {
    let start = engine.snapshot().packets_received;
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.snapshot().packets_received < start + n {
        assert!(Instant::now() < deadline, "media stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_request_recording_started_paused_resumed_and_exported() {
    let (sfu, parts) = live_common::sfu_parts(1);
    let mut live = Live::start(|_| {}, parts).await;
    let r = live
        .admin
        .send_json(
            "PATCH",
            "/api/v1/admin/groups/sales",
            &json!({"recording": "on_request"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (_, sam) = live.user("sam", "supervisor", &["sales"]).await;
    let mut agent = live.agent(&alice).await;
    let (mut visitor, conv) = live_common::assigned_pair(&live, &mut agent).await;

    // No call yet: nothing to start.
    agent
        .send(json!({"type": "recording", "conversation": conv, "action": "start"}))
        .await;
    let e = agent.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["message"].as_str()),
        (Some("conflict"), Some("no call in progress"))
    );

    // Preparing a call tells both parties the policy, before the ICE servers.
    visitor.send(json!({"type": "call_prepare"})).await;
    assert_eq!(recording(&mut visitor).await, pair("off"));
    visitor.expect("ice_servers").await;
    assert_eq!(recording(&mut agent).await, pair("off"));

    let engine = MediaEngine::start(1, MediaConfig::default()).unwrap();
    let mut visitor_peer = Peer::new(LOCALHOST).unwrap();
    let mut agent_peer = Peer::new(LOCALHOST).unwrap();
    live_common::call_offer(&mut visitor, None, &mut visitor_peer).await;
    live_common::call_offer(&mut agent, Some(&conv), &mut agent_peer).await;
    engine.add(visitor_peer).unwrap();
    engine.add(agent_peer).unwrap();
    media_for(&engine, 100).await;
    // Not recorded before the agent asks.
    let r = live
        .admin
        .get(&format!("/api/v1/admin/conversations/{conv}/recordings"))
        .await;
    assert_eq!(r.json()["recordings"], json!([]));

    change(&mut agent, &mut visitor, &conv, "start", "on").await;
    media_for(&engine, 200).await;
    change(&mut agent, &mut visitor, &conv, "pause", "paused").await;
    // Pausing twice, or resuming what runs, is refused.
    agent
        .send(json!({"type": "recording", "conversation": conv, "action": "pause"}))
        .await;
    assert_eq!(agent.expect("error").await["code"], "conflict");
    change(&mut agent, &mut visitor, &conv, "resume", "on").await;
    agent
        .send(json!({"type": "recording", "conversation": conv, "action": "resume"}))
        .await;
    assert_eq!(agent.expect("error").await["code"], "conflict");

    // The host page's payment step.
    visitor.send(json!({"type": "payment", "active": true})).await;
    assert_eq!(recording(&mut visitor).await, pair("paused"));
    visitor.send(json!({"type": "payment", "active": false})).await;
    assert_eq!(recording(&mut visitor).await, pair("on"));
    media_for(&engine, 200).await;

    // Both hang up: the recording closes.
    visitor.send(json!({"type": "call_end"})).await;
    agent.send(json!({"type": "call_end", "conversation": conv})).await;
    assert_eq!(recording(&mut visitor).await, pair("off"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let v = live
            .admin
            .get(&format!("/api/v1/admin/conversations/{conv}/recordings"))
            .await
            .json();
        if v["recordings"][0]["state"] == "complete" {
            break v;
        }
        assert!(Instant::now() < deadline, "not closed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(listed["recordings"][0]["chunks"].as_u64().unwrap() >= 3, "{listed}");

    // The transcript's notes, as the visitor saw them.
    let notes: Vec<String> = visitor
        .log
        .iter()
        .map(|t| serde_json::from_str::<Value>(t).unwrap())
        .filter(|v| v["type"] == "message" && v["from"]["role"] == "system")
        .map(|v| v["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        notes,
        [
            "Recording started by alice",
            "Recording paused by alice",
            "Recording resumed by alice",
            "Recording paused by the payment page",
            "Recording resumed by the payment page",
            "Recording stopped"
        ]
    );

    // Downloads: a supervisor is refused; the admin gets the WebM.
    let r = sam.get(&format!("/api/v1/admin/conversations/{conv}/recording")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = live
        .admin
        .get(&format!("/api/v1/admin/conversations/{conv}/recording"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-recording-complete").as_deref(), Some("true"));
    let webm = r.body.clone();
    assert_eq!(&webm[..4], &[0x1A, 0x45, 0xDF, 0xA3]);
    let r = live.admin.get("/api/v1/admin/conversations/no-such/recording").await;
    assert_eq!(r.status, 404);

    // The command line, while the server runs, writes the same file (never over an existing one).
    let out = live.dir.join("cli.webm");
    let cli = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"))
            .arg("--data-dir")
            .arg(&live.dir)
            .args(["archive", "export", "--conversation", &conv, "--recording"])
            .arg(path)
            .output()
            .unwrap()
    };
    let o = cli(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == webm, "the CLI's export is the API's");
    assert!(!cli(&out).status.success(), "an existing file is not overwritten");

    agent.send(json!({"type": "end", "conversation": conv})).await;
    visitor.expect("ended").await;
    live.next_ended().await;
    let server = live.server.take().unwrap();
    server.shutdown().await.unwrap();
    sfu.shutdown(Duration::from_secs(5)).unwrap();

    let db = rusqlite::Connection::open(live.dir.join("relaydesk.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT action, actor FROM audit_log WHERE action LIKE 'recording.%' ORDER BY id")
        .unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let actions: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("recording.start", "alice"),
            ("recording.pause", "alice"),
            ("recording.resume", "alice"),
            ("recording.pause", "the payment page"),
            ("recording.resume", "the payment page"),
            ("recording.stop", "policy"),
            ("recording.export_denied", "sam"),
            ("recording.export", "admin"),
            ("recording.export", "cli"),
        ]
    );
}
