//! Crash safety (docs/RELIABILITY.md, "Crash safety"): acknowledged means durable, live conversations come
//! back after a SIGKILL, and an orderly stop tells everyone.
//!
//! `kill_nine_rounds_lose_and_duplicate_nothing_acknowledged` drives the real `relaydesk` binary: five
//! conversations chat (visitor and agent messages, visitor files) while the server is killed with SIGKILL
//! at a random moment (seeded; `RELAYDESK_CRASH_SEED` overrides the seed), restarted and resumed, for
//! [`ROUNDS`] rounds. After every restart each visitor resumes with its last token and must get every
//! acknowledged message back exactly once, in order (the whole conversation every [`FULL_REPLAY_EVERY`]
//! rounds and at the end, with every acknowledged file once; in between, from the last message checked);
//! the agent's console must find its five conversations; at the end every file downloads intact.
//! At the end the agent closes them, the server stops, and the archive (opened offline with the master key)
//! must hold every acknowledged message exactly once and decrypt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;
mod rounds;

use relaydesk_signalling::store::prelude::*;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use relaydesk_signalling::store::{AuditEvent, Db};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use live_common::{Closed, Live, SHOP};
use rounds::*;

/// Kill-and-restart rounds.
const ROUNDS: usize = 20;
/// Conversations chatting at once.
const CONVERSATIONS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_rounds_lose_and_duplicate_nothing_acknowledged() {
    kill_nine_rounds(ROUNDS, None).await;
}

/// The same on PostgreSQL (`[database] url`): an acknowledged message is committed there before its
/// echo, and a restarted node finds every live conversation in it. Fewer rounds: the schema, not the
/// timing, is what differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_rounds_on_postgres_lose_and_duplicate_nothing_acknowledged() {
    let schema = common::pg::PgSchema::create();
    kill_nine_rounds(PG_ROUNDS, Some(schema.url())).await;
}

/// Rounds of the PostgreSQL run.
const PG_ROUNDS: usize = 6;

/// [`ROUNDS`]-style kill-and-restart rounds; `database`: a PostgreSQL URL, or SQLite in the data directory.
async fn kill_nine_rounds(rounds: usize, database: Option<String>) {
    let seed: u64 = std::env::var("RELAYDESK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de_2026);
    eprintln!("seed {seed} (RELAYDESK_CRASH_SEED)");
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("admin.pw");
    std::fs::write(&password_file, "a-crash-test-admin-password\n").unwrap();
    let config = dir.path().join("config.toml");
    // Visitors get a minute to resume; one address opens every session here.
    std::fs::write(
        &config,
        format!(
            "[live]\nsessions_per_minute_per_address = 10000\nresume_grace_ms = 60000\nmessages_per_second = 1000\n\
         message_burst = 1000\nmax_messages_per_conversation = 100000\n\
         [live.limits]\nmax_text_bytes_per_conversation = 16777216\n\
         [live.files]\nmax_per_conversation = 100\n{}",
            database
                .as_deref()
                .map(|url| format!("[database]\nurl = {url:?}\npool_size = 4\n"))
                .unwrap_or_default()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");

    // Setup: a group, a site key, an agent who takes the five conversations.
    let mut server = start(&data, &config, &password_file);
    let admin = server.client();
    assert_eq!(admin.login("admin", "a-crash-test-admin-password").await.status, 200);
    assert_eq!(
        admin
            .post_json("/api/v1/admin/groups", &json!({"name": "sales"}))
            .await
            .status,
        201
    );
    let key = live_common::site_key(&admin, "sales", "shop").await;
    let r = admin
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "alice", "display_name": "Alice", "role": "agent", "groups": ["sales"],
                    "password": "correct horse battery", "max_conversations": 10}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let alice = server.client();
    assert_eq!(alice.login("alice", "correct horse battery").await.status, 200);
    let cookie = alice.cookie.lock().unwrap().clone().unwrap();
    let (mut agent, listed) = console(&server, &cookie).await;
    assert!(listed.is_empty());
    let mut convs: Vec<Conv> = Vec::new();
    let mut visitors: Vec<Stream> = Vec::new();
    for _ in 0..CONVERSATIONS {
        let (ws, id, welcome) = join_accepted(&server, &key, &mut agent).await;
        convs.push(Conv {
            id,
            resume_token: welcome["resume_token"].as_str().unwrap().to_owned(),
            files_token: welcome["files_token"].as_str().unwrap().to_owned(),
            ..Conv::default()
        });
        visitors.push(ws);
    }
    let ids: Vec<String> = convs.iter().map(|c| c.id.clone()).collect();

    let mut replayed_total = 0usize;
    let mut first_agent = Some(agent);
    for round in 0..rounds {
        let agent = if let Some(a) = first_agent.take() {
            a
        } else {
            server = start(&data, &config, &password_file);
            let (a, mut listed) = console(&server, &cookie).await;
            listed.sort();
            let mut want = ids.clone();
            want.sort();
            assert_eq!(
                listed, want,
                "round {round}: the agent does not find their conversations"
            );
            visitors.clear();
            for c in convs.iter_mut() {
                let (ws, n) = resume_and_check(&server, c, round % FULL_REPLAY_EVERY == 0).await;
                replayed_total += n;
                visitors.push(ws);
            }
            a
        };
        eprintln!("round {round}: chatting");
        // Chat until the kill.
        let mut tasks = Vec::new();
        for (i, ws) in visitors.drain(..).enumerate() {
            let (token, addr, client) = (convs[i].files_token.clone(), server.addr, server.client());
            tasks.push(tokio::spawn(visitor_chat(ws, i, round, token, addr, client)));
        }
        let agent_task = tokio::spawn(agent_chat(agent, ids.clone(), round));
        // The kill moment of this round (the stimulus, not a synchronisation).
        tokio::time::sleep(Duration::from_millis(rng.between(150, 1200))).await;
        server.process.child.kill().unwrap();
        server.process.child.wait().unwrap();
        collect_round(tasks, agent_task, &mut convs).await;
    }

    // Last start: everything is back once more; files download intact; the agent closes the conversations.
    // The console keeps reading (as the real one does) while the visitors are checked: its `hello` without
    // resume points replays every conversation in full, and a console that stops reading is cut off as a
    // slow reader, which would send its conversations back to the queue after the reconnect grace.
    server = start(&data, &config, &password_file);
    let (agent, _) = console(&server, &cookie).await;
    let (mut agent_tx, mut agent_rx) = agent.split();
    let (frames_tx, mut agent_frames) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let agent_reader = tokio::spawn(async move {
        while let Some(Ok(m)) = agent_rx.next().await {
            match m {
                Message::Text(t) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                        && frames_tx.send(v).is_err()
                    {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let mut visitors = Vec::new();
    for c in convs.iter_mut() {
        let (ws, n) = resume_and_check(&server, c, true).await;
        replayed_total += n;
        visitors.push(ws);
    }
    check_downloads(&server, &convs).await;
    // The agent, still connected and still holding every conversation, ends them.
    assert!(
        !agent_reader.is_finished(),
        "the console's socket closed during the checks"
    );
    for (c, ws) in convs.iter().zip(visitors.iter_mut()) {
        let end = json!({"type": "end", "conversation": c.id}).to_string();
        let sent = tokio::time::timeout(STEP, agent_tx.send(Message::Text(end.into()))).await;
        assert!(matches!(sent, Ok(Ok(()))), "the agent's `end` was not sent");
        let mut frames = 0;
        loop {
            let v = next_json(ws).await.expect("ended");
            if v["type"] == "ended" {
                assert_eq!(v["reason"], "agent_ended", "conversation {}", c.id);
                break;
            }
            assert_ne!(v["type"], "transferred", "conversation {} went back to the queue", c.id);
            frames += 1;
            assert!(frames < 1000, "no `ended` among 1000 frames");
        }
    }
    // The console heard of each end too.
    let mut ended: Vec<String> = Vec::new();
    while ended.len() < convs.len() {
        let v = tokio::time::timeout(STEP, agent_frames.recv())
            .await
            .expect("the console heard every end in time")
            .expect("the console's socket stayed open");
        if v["type"] == "ended" {
            ended.push(v["conversation"].as_str().unwrap_or_default().to_owned());
        }
    }
    ended.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(ended, want);
    // An orderly stop: the archive gets everything before the process exits.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.process.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = common::process::wait_within(&mut server.process.child);
    assert!(exit.success(), "{exit:?}");

    // Offline: the database opens, is intact, holds no live conversation, and every transcript decrypts
    // with every acknowledged message exactly once.
    // The offline checks use the blocking store: off the async runtime's thread.
    tokio::task::block_in_place(|| {
        let store = relaydesk_signalling::store::open(
            &relaydesk_signalling::store::DatabaseConfig {
                url: database.clone(),
                ..Default::default()
            },
            &data,
        )
        .unwrap();
        let db = store.as_ref();
        if database.is_none() {
            let ok: String = rusqlite::Connection::open(data.join("relaydesk.db"))
                .unwrap()
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok");
        }
        let (checked, files_checked) = check_transcripts(db, &data.join("master.key"), &convs);
        assert_eq!(db.live_count().unwrap(), 0);
        eprintln!(
            "{rounds} SIGKILL rounds ({}), {CONVERSATIONS} conversations: {checked} acknowledged messages and \
         {files_checked} acknowledged files checked (resume replays: {replayed_total} messages) in {:.1} s",
            if database.is_some() { "PostgreSQL" } else { "SQLite" },
            started.elapsed().as_secs_f64()
        );
        assert!(
            checked >= rounds * CONVERSATIONS,
            "too little traffic to prove anything: {checked}"
        );
        assert!(files_checked > 0);
    });
}

/// The orderly stop (SIGTERM, or the shutdown handle): five visitors and their agent are each told that
/// every conversation ended (`closed`) before their sockets close with 1001, and every conversation is
/// archived.
#[tokio::test]
async fn an_orderly_stop_tells_every_visitor_and_the_agent_before_closing() {
    let mut live = Live::quick().await;
    let r = live
        .admin
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "alice", "display_name": "Alice", "role": "agent", "groups": ["sales"],
                    "password": "correct horse battery", "max_conversations": 10}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let alice = live.client();
    assert_eq!(alice.login("alice", "correct horse battery").await.status, 200);
    let mut agent = live.agent(&alice).await;
    let mut visitors = Vec::new();
    for _ in 0..5 {
        visitors.push(live_common::assigned_pair(&live, &mut agent).await);
    }
    // A sixth visitor still waiting in the queue is told too.
    let (mut queued, _) = live.visitor().await;
    let server = live.server.take().unwrap();
    let stop = tokio::spawn(server.shutdown());
    for (v, conv) in visitors.iter_mut() {
        let ended = v.expect("ended").await;
        assert_eq!(ended["reason"], "closed", "conversation {conv}");
        assert_eq!(v.closed().await, Closed::Code(1001), "conversation {conv}");
    }
    assert_eq!(queued.expect("ended").await["reason"], "closed");
    assert_eq!(queued.closed().await, Closed::Code(1001));
    let mut told: Vec<String> = Vec::new();
    while told.len() < visitors.len() {
        let f = agent.expect("ended").await;
        assert_eq!(f["reason"], "closed");
        told.push(f["conversation"].as_str().unwrap().to_owned());
    }
    told.sort();
    let mut want: Vec<String> = visitors.iter().map(|(_, c)| c.clone()).collect();
    want.sort();
    assert_eq!(told, want, "the agent hears of each of their conversations");
    assert_eq!(agent.closed().await, Closed::Code(1001));
    tokio::time::timeout(common::IO_TIMEOUT, stop)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    for _ in 0..6 {
        let ended = live.next_ended().await;
        assert_eq!(ended.reason, relaydesk_signalling::chat_protocol::EndReason::Closed);
    }
}

/// The restart's other paths, through the real binary: after a SIGKILL, the conversation of an agent
/// disabled meanwhile (offline, as the command line does) is queued again and offered to another agent,
/// its messages intact; a conversation that had ended but was not archived yet (the crash came between the
/// two) is archived at the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_a_disabled_agents_conversation_is_requeued_and_an_ended_one_archived() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("admin.pw");
    std::fs::write(&password_file, "a-crash-test-admin-password\n").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[live]\nresume_grace_ms = 60000\n").unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data, &config, &password_file);
    let admin = server.client();
    assert_eq!(admin.login("admin", "a-crash-test-admin-password").await.status, 200);
    assert_eq!(
        admin
            .post_json("/api/v1/admin/groups", &json!({"name": "sales"}))
            .await
            .status,
        201
    );
    let key = live_common::site_key(&admin, "sales", "shop").await;
    let mut cookies = Vec::new();
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let r = admin
            .post_json(
                "/api/v1/admin/users",
                &json!({"username": name, "display_name": name, "role": "agent", "groups": ["sales"],
                        "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["user"]["id"].as_i64().unwrap());
        let c = server.client();
        assert_eq!(c.login(name, "correct horse battery").await.status, 200);
        cookies.push(c.cookie.lock().unwrap().clone().unwrap());
    }
    let (mut alice, _) = console(&server, &cookies[0]).await;
    let (mut va, conv_a, welcome_a) = join_accepted(&server, &key, &mut alice).await;
    let token_a = welcome_a["resume_token"].as_str().unwrap().to_owned();
    let (mut vb, conv_b, _) = join_accepted(&server, &key, &mut alice).await;
    for (ws, text) in [
        (&mut va, "kept across the crash"),
        (&mut vb, "archived after the crash"),
    ] {
        assert!(send(ws, json!({"type": "message", "client_id": "m1", "body": text})).await);
        loop {
            let v = next_json(ws).await.unwrap();
            if v["type"] == "message" && v["client_id"] == "m1" {
                break;
            }
        }
    }
    server.process.child.kill().unwrap();
    server.process.child.wait().unwrap();

    // Offline, while the server is down: alice is disabled; B is as if its end had been committed and the
    // crash had come before the archive had it.
    let update = relaydesk_signalling::store::UserUpdate {
        disabled: Some(true),
        ..Default::default()
    };
    Db::open(&data)
        .unwrap()
        .update_user(ids[0], update, AuditEvent::default())
        .unwrap();
    let changed = rusqlite::Connection::open(data.join("relaydesk.db"))
        .unwrap()
        .execute(
            "UPDATE live_conversations SET ended_at = started_at + 1, ended_reason = 'agent_ended' WHERE id = ?1",
            [conv_b.parse::<i64>().unwrap()],
        )
        .unwrap();
    assert_eq!(changed, 1);

    let server = start(&data, &config, &password_file);
    let (mut bob, listed) = console(&server, &cookies[1]).await;
    assert!(listed.is_empty());
    // A waits in the queue again, with its message, and bob is offered it.
    let mut ws = server.ws("/api/v1/visitor/ws", SHOP, None).await.unwrap();
    assert!(
        send(
            &mut ws,
            json!({"type": "resume", "resume_token": token_a, "last_seq": 0})
        )
        .await
    );
    let mut replay = Vec::new();
    loop {
        let v = next_json(&mut ws).await.expect("resumed");
        match v["type"].as_str().unwrap() {
            "message" => replay.push(v["body"].as_str().unwrap().to_owned()),
            "queue_position" => break,
            "assigned" => panic!("still assigned to a disabled agent"),
            _ => {}
        }
    }
    assert_eq!(replay, vec!["kept across the crash".to_string()]);
    loop {
        let v = next_json(&mut bob).await.expect("offer");
        if v["type"] == "offered" {
            assert_eq!(v["conversation"], conv_a.as_str());
            break;
        }
    }
    // B is in the archive, with its message.
    let path = format!("/api/v1/admin/conversations/{conv_b}/transcript");
    let admin = server.client();
    assert_eq!(admin.login("admin", "a-crash-test-admin-password").await.status, 200);
    assert!(live_common::until_status(|| admin.get(&path), 200, 404).await);
    let t = admin.get(&path).await.json();
    assert_eq!(t["messages"][0]["body"], "archived after the crash");
}

/// A call recorded by the real binary when it is killed (SIGKILL): after the restart the recording is
/// marked interrupted, and the command line exports it up to its last sealed chunk (a WebM with the media of
/// the seconds before the kill), saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_killed_mid_call_exports_up_to_its_last_sealed_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("admin.pw");
    std::fs::write(&password_file, "a-crash-test-admin-password\n").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[live]\nresume_grace_ms = 60000\n").unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data, &config, &password_file);
    let admin = server.client();
    assert_eq!(admin.login("admin", "a-crash-test-admin-password").await.status, 200);
    let r = admin
        .post_json("/api/v1/admin/groups", &json!({"name": "sales", "recording": "always"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = live_common::site_key(&admin, "sales", "shop").await;
    let r = admin
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "alice", "display_name": "alice", "role": "agent", "groups": ["sales"],
                    "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let c = server.client();
    assert_eq!(c.login("alice", "correct horse battery").await.status, 200);
    let cookie = c.cookie.lock().unwrap().clone().unwrap();
    let (mut agent, _) = console(&server, &cookie).await;
    let (mut visitor, conv, _) = join_accepted(&server, &key, &mut agent).await;

    let engine =
        relaydesk_loadtest::media::MediaEngine::start(1, relaydesk_loadtest::media::MediaConfig::default()).unwrap();
    let local = std::net::Ipv4Addr::LOCALHOST.into();
    let mut vp = relaydesk_loadtest::media::Peer::new(local).unwrap();
    let mut ap = relaydesk_loadtest::media::Peer::new(local).unwrap();
    offer_call(&mut visitor, None, &mut vp, true).await;
    offer_call(&mut agent, Some(&conv), &mut ap, true).await;
    engine.add(vp).unwrap();
    engine.add(ap).unwrap();
    loop {
        let v = next_json(&mut visitor).await.expect("recording starts");
        if v["type"] == "recording" && v["state"] == "on" {
            break;
        }
    }
    // Recorded until two chunks of media are sealed after the header, then killed.
    let file = data.join("recordings").join(format!("{conv}-1.rdrec"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&file)
        .map(|b| relaydesk_signalling::recording::sealed::count_chunks(&b))
        .unwrap_or(0)
        < 3
    {
        assert!(Instant::now() < deadline, "no media sealed within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.process.child.kill().unwrap();
    server.process.child.wait().unwrap();
    drop(engine);
    let on_disk = std::fs::read(&file).unwrap();
    assert!(
        !on_disk.windows(4).any(|w| w == [0x1A, 0x45, 0xDF, 0xA3]),
        "no WebM in the clear"
    );

    // The restart marks it interrupted; the command line exports what was sealed.
    let server = start(&data, &config, &password_file);
    let admin = server.client();
    assert_eq!(admin.login("admin", "a-crash-test-admin-password").await.status, 200);
    let listed = admin
        .get(&format!("/api/v1/admin/conversations/{conv}/recordings"))
        .await
        .json();
    assert_eq!(listed["recordings"][0]["state"], "interrupted", "{listed}");
    let out = dir.path().join("export.webm");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"))
        .arg("--data-dir")
        .arg(&data)
        .args(["archive", "export", "--conversation", &conv, "--recording"])
        .arg(&out)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(said.contains("interrupted: up to its last sealed chunk"), "{said}");
    let webm = std::fs::read(&out).unwrap();
    assert_eq!(&webm[..4], &[0x1A, 0x45, 0xDF, 0xA3]);
    let clusters = webm.windows(4).filter(|w| *w == [0x1F, 0x43, 0xB6, 0x75]).count();
    assert!(clusters >= 1, "media clusters in the export");
    // At least the sealed media (two chunks) came out: more than the header alone.
    assert!(webm.len() > 4096, "{} bytes exported", webm.len());
}
