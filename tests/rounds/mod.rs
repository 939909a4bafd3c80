//! Chat rounds against the real `relaydesk` binary, shared by the crash tests (`crash_safety`) and the
//! cluster's failover test (`cluster_failover`): a server process and its clients, visitors and an agent
//! chatting until their sockets die, resumes that check every acknowledged message comes back exactly once.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use hyper::http::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::common::{Client, ServerProcess};
use crate::live_common::SHOP;

/// Bound of one frame or request (generous: a debug build restoring thousands of messages on a busy
/// 2-core machine).
pub const STEP: Duration = Duration::from_secs(30);
/// Every this many rounds (and at the end) a resume replays the whole conversation; in between, from the
/// last message checked.
pub const FULL_REPLAY_EVERY: usize = 5;

pub type Stream = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A small seeded generator (xorshift64*), so a failing run can be repeated.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// A message the server acknowledged (echoed with `id` and `seq` to its sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub id: String,
    pub body: String,
    pub file: Option<String>,
}

/// What the test knows of one conversation.
#[derive(Debug, Default)]
pub struct Conv {
    pub id: String,
    pub resume_token: String,
    pub files_token: String,
    /// Acknowledged messages by seq.
    pub acked: BTreeMap<u64, Acked>,
    /// Acknowledged files: id → SHA-256 of the content.
    pub files: BTreeMap<String, String>,
    /// Messages up to this seq were checked in an earlier replay.
    pub checked_upto: u64,
}

pub struct Server {
    pub process: ServerProcess,
    pub addr: SocketAddr,
    pub cert: PathBuf,
}

pub fn start(data: &Path, config: &Path, password_file: &Path) -> Server {
    start_with(data, config, password_file, &[])
}

/// [`start`] with more `serve` arguments.
pub fn start_with(data: &Path, config: &Path, password_file: &Path, more: &[&OsStr]) -> Server {
    let mut args: Vec<&OsStr> = vec!["--admin-password-file".as_ref(), password_file.as_os_str()];
    args.extend_from_slice(more);
    let process = ServerProcess::serve(data, config, &args);
    let addr: SocketAddr = process.url.trim_start_matches("https://").parse().unwrap();
    Server {
        process,
        addr,
        cert: data.join("tls/cert.pem"),
    }
}

impl Server {
    pub fn client(&self) -> Client {
        Client::new(self.addr, &self.cert)
    }

    /// A WebSocket to `path`; `None` if the server is gone.
    pub async fn ws(&self, path: &str, origin: &str, cookie: Option<&str>) -> Option<Stream> {
        let mut req = format!("wss://{}{path}", self.addr).into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        if let Some(c) = cookie {
            req.headers_mut()
                .insert("cookie", format!("__Host-relaydesk_session={c}").parse().unwrap());
        }
        let tls = tokio::time::timeout(STEP, self.client().try_connect_tls())
            .await
            .ok()?
            .ok()?;
        let (stream, _) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(req, tls))
            .await
            .ok()?
            .ok()?;
        Some(stream)
    }
}

/// The next JSON text frame; `None` when the socket closed, failed or stayed silent for [`STEP`].
pub async fn next_json(s: &mut Stream) -> Option<Value> {
    loop {
        match tokio::time::timeout(STEP, s.next()).await.ok()?? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

pub async fn send(s: &mut Stream, v: Value) -> bool {
    matches!(
        tokio::time::timeout(STEP, s.send(Message::Text(v.to_string().into()))).await,
        Ok(Ok(()))
    )
}

/// One HTTP request that reports a dead server as `None` instead of failing the test.
pub async fn try_request(
    server_addr: SocketAddr,
    client: &Client,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Option<(u16, Vec<u8>)> {
    let go = async {
        let tls = client.try_connect_tls().await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.ok()?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .header("host", server_addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let resp = sender
            .send_request(req.body(axum::body::Body::from(body)).ok()?)
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 1 << 20)
            .await
            .ok()?;
        Some((status, bytes.to_vec()))
    };
    tokio::time::timeout(STEP, go).await.ok()?
}

/// The agent's console after `hello` (and `set_presence available`); returns the socket and the
/// conversations its `welcome` lists.
pub async fn console(server: &Server, cookie: &str) -> (Stream, Vec<String>) {
    let origin = format!("https://{}", server.addr);
    let ws = server
        .ws("/api/v1/agent/ws", &origin, Some(cookie))
        .await
        .expect("console socket");
    console_after(ws).await
}

/// The console's `hello` (and `set_presence available`) on an open agent socket; returns the socket and
/// the conversations its `welcome` lists.
pub async fn console_after(mut ws: Stream) -> (Stream, Vec<String>) {
    assert!(send(&mut ws, json!({"type": "hello", "resume": []})).await);
    let welcome = loop {
        let v = next_json(&mut ws).await.expect("agent welcome");
        if v["type"] == "welcome" {
            break v;
        }
    };
    let convs = welcome["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert!(send(&mut ws, json!({"type": "set_presence", "presence": "available"})).await);
    (ws, convs)
}

/// Resumes `conv` (from seq 0 when `full`, else after the last message checked) and checks the replay:
/// the following seqs without a gap or a repeat, every acknowledged message among them unchanged, every
/// acknowledged file once (when `full`). Returns the socket and how many messages were replayed.
pub async fn resume_and_check(server: &Server, conv: &mut Conv, full: bool) -> (Stream, usize) {
    let from = if full { 0 } else { conv.checked_upto };
    let mut ws = server
        .ws("/api/v1/visitor/ws", SHOP, None)
        .await
        .expect("visitor socket");
    assert!(
        send(
            &mut ws,
            json!({"type": "resume", "resume_token": conv.resume_token, "last_seq": from})
        )
        .await
    );
    let mut replay: BTreeMap<u64, Acked> = BTreeMap::new();
    let mut count = 0usize;
    loop {
        let v = next_json(&mut ws)
            .await
            .unwrap_or_else(|| panic!("conversation {}: resume refused or cut", conv.id));
        match v["type"].as_str().unwrap() {
            "welcome" => {
                assert_eq!(v["conversation"], conv.id.as_str());
                conv.resume_token = v["resume_token"].as_str().unwrap().to_owned();
                conv.files_token = v["files_token"].as_str().unwrap().to_owned();
            }
            "message" => {
                let seq = v["seq"].as_u64().unwrap();
                assert_eq!(
                    seq,
                    from + count as u64 + 1,
                    "conversation {}: replay out of order or repeated",
                    conv.id
                );
                count += 1;
                replay.insert(
                    seq,
                    Acked {
                        id: v["id"].as_str().unwrap().to_owned(),
                        body: v["body"].as_str().unwrap().to_owned(),
                        file: v["file"]["id"].as_str().map(str::to_owned),
                    },
                );
            }
            "assigned" => break,
            "queue_position" => panic!("conversation {} lost its agent: {v}", conv.id),
            "ended" => panic!("conversation {} ended: {v}", conv.id),
            _ => {}
        }
    }
    for (seq, acked) in conv.acked.range(from + 1..) {
        assert_eq!(
            replay.get(seq),
            Some(acked),
            "conversation {}: acknowledged message {seq} missing or changed after the restart",
            conv.id
        );
    }
    for f in conv.files.keys().filter(|_| full) {
        assert_eq!(
            replay
                .values()
                .filter(|m| m.file.as_deref() == Some(f.as_str()))
                .count(),
            1,
            "conversation {}: acknowledged file {f} not back exactly once",
            conv.id
        );
    }
    conv.checked_upto = from + count as u64;
    (ws, count)
}

/// A visitor chatting until its socket dies: each message waits for its echo; its seventh turn uploads a
/// small text file. Returns what was acknowledged.
pub async fn visitor_chat(
    mut ws: Stream,
    index: usize,
    round: usize,
    files_token: String,
    server_addr: SocketAddr,
    client: Client,
) -> VisitorAcks {
    let mut acked = Vec::new();
    let mut files = Vec::new();
    for n in 0..10_000usize {
        // One file per round, early (before most kill moments).
        if n == 6 {
            let content = format!("file of c{index} r{round} n{n}\n").into_bytes();
            let sha = sha256_hex(&content);
            let path = format!("/api/v1/visitor/files?name=c{index}-r{round}-n{n}.txt");
            let headers = [
                ("authorization", format!("Bearer {files_token}")),
                ("content-type", "text/plain".to_owned()),
            ];
            match try_request(server_addr, &client, "POST", &path, &headers, content).await {
                Some((201, body)) => {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(v["sha256"], sha.as_str());
                    files.push((v["id"].as_str().unwrap().to_owned(), sha));
                }
                Some((status, body)) => panic!("upload refused: {status} {}", String::from_utf8_lossy(&body)),
                None => break,
            }
            continue;
        }
        let client_id = format!("r{round}n{n}");
        let body = format!("c{index} r{round} n{n}");
        if !send(
            &mut ws,
            json!({"type": "message", "client_id": client_id, "body": body}),
        )
        .await
        {
            break;
        }
        let echo = loop {
            match next_json(&mut ws).await {
                None => break None,
                Some(v) if v["type"] == "message" && v["client_id"] == client_id.as_str() => break Some(v),
                Some(v) if v["type"] == "error" => panic!("message refused: {v}"),
                Some(_) => {}
            }
        };
        let Some(v) = echo else { break };
        assert_eq!(v["body"], body.as_str());
        acked.push((
            v["seq"].as_u64().unwrap(),
            Acked {
                id: v["id"].as_str().unwrap().to_owned(),
                body,
                file: None,
            },
        ));
    }
    (acked, files)
}

/// The agent writing to each conversation in turn until its socket dies. Returns (conversation, seq,
/// message) of what was acknowledged.
pub async fn agent_chat(mut ws: Stream, convs: Vec<String>, round: usize) -> Vec<(String, u64, Acked)> {
    let mut acked = Vec::new();
    for n in 0..10_000usize {
        let conv = &convs[n % convs.len()];
        let client_id = format!("a-r{round}n{n}");
        let body = format!("agent r{round} n{n}");
        let frame = json!({"type": "message", "conversation": conv, "client_id": client_id, "body": body});
        if !send(&mut ws, frame).await {
            break;
        }
        let echo = loop {
            match next_json(&mut ws).await {
                None => break None,
                Some(v) if v["type"] == "message" && v["client_id"] == client_id.as_str() => break Some(v),
                Some(v) if v["type"] == "error" => panic!("agent message refused: {v}"),
                Some(_) => {}
            }
        };
        let Some(v) = echo else { break };
        assert_eq!(v["conversation"], conv.as_str());
        acked.push((
            conv.clone(),
            v["seq"].as_u64().unwrap(),
            Acked {
                id: v["id"].as_str().unwrap().to_owned(),
                body,
                file: None,
            },
        ));
    }
    acked
}

/// What a visitor's chat task returns: its acknowledged messages by seq, and its acknowledged files.
pub type VisitorAcks = (Vec<(u64, Acked)>, Vec<(String, String)>);

/// Waits for a round's chat tasks (which end when their sockets die) and records what they had
/// acknowledged: each visitor's (in `convs` order) and the agent's.
pub async fn collect_round(
    visitors: Vec<tokio::task::JoinHandle<VisitorAcks>>,
    agent: tokio::task::JoinHandle<Vec<(String, u64, Acked)>>,
    convs: &mut [Conv],
) {
    for (i, t) in visitors.into_iter().enumerate() {
        let (acked, files) = t.await.unwrap();
        let id = convs[i].id.clone();
        convs[i].files.extend(files);
        for (seq, m) in acked {
            record(convs, &id, seq, m);
        }
    }
    for (conv, seq, m) in agent.await.unwrap() {
        record(convs, &conv, seq, m);
    }
}

pub fn record(convs: &mut [Conv], conv: &str, seq: u64, m: Acked) {
    let c = convs.iter_mut().find(|c| c.id == conv).unwrap();
    if let Some(file) = &m.file {
        assert!(c.files.contains_key(file));
    }
    let before = c.acked.insert(seq, m.clone());
    assert!(
        before.is_none() || before.as_ref() == Some(&m),
        "conversation {conv}: seq {seq} acknowledged twice for different messages"
    );
}

/// A visitor of `key` joins and is accepted by the agent on `agent`; returns its socket, conversation id and
/// `welcome` (with its resume and files tokens).
pub async fn join_accepted(server: &Server, key: &str, agent: &mut Stream) -> (Stream, String, Value) {
    let body = serde_json::to_vec(&json!({"site_key": key, "page_url": "https://shop.example/"})).unwrap();
    let r = server
        .client()
        .raw(
            "POST",
            "/api/v1/visitor/session",
            &[("content-type", "application/json"), ("origin", SHOP)],
            body,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["session_token"].as_str().unwrap().to_owned();
    let mut ws = server
        .ws(&format!("/api/v1/visitor/ws?token={token}"), SHOP, None)
        .await
        .unwrap();
    assert!(send(&mut ws, json!({"type": "hello"})).await);
    let welcome = loop {
        let v = next_json(&mut ws).await.unwrap();
        if v["type"] == "welcome" {
            break v;
        }
    };
    let id = welcome["conversation"].as_str().unwrap().to_owned();
    loop {
        let v = next_json(agent).await.unwrap();
        if v["type"] == "offered" && v["conversation"] == id.as_str() {
            break;
        }
    }
    assert!(send(agent, json!({"type": "accept", "conversation": id})).await);
    loop {
        if next_json(&mut ws).await.unwrap()["type"] == "assigned" {
            break;
        }
    }
    (ws, id, welcome)
}

/// Sends `peer`'s offer (audio, and video if `video`) on `ws` (with `conversation` on the agent's socket)
/// and applies the server's answer.
pub async fn offer_call(
    ws: &mut Stream,
    conversation: Option<&str>,
    peer: &mut relaydesk_loadtest::media::Peer,
    video: bool,
) {
    let (sdp, pending) = peer.offer(true, video, str0m::media::Direction::SendRecv).unwrap();
    let mut frame = json!({"type": "call_offer", "sdp": sdp});
    if let Some(c) = conversation {
        frame["conversation"] = Value::from(c);
    }
    assert!(send(ws, frame).await);
    let answer = loop {
        let v = next_json(ws).await.expect("call answer");
        if v["type"] == "call_answer" {
            break v;
        }
        assert_ne!(v["type"], "error", "call refused: {v}");
    };
    peer.accept_answer(pending, answer["sdp"].as_str().unwrap()).unwrap();
}

/// Every acknowledged file of `convs` downloads through `server` with the SHA-256 it was uploaded with.
pub async fn check_downloads(server: &Server, convs: &[Conv]) {
    let client = server.client();
    for c in convs {
        for (file, sha) in &c.files {
            let (status, body) = try_request(
                server.addr,
                &client,
                "GET",
                &format!("/api/v1/visitor/files/{file}"),
                &[("authorization", format!("Bearer {}", c.files_token))],
                Vec::new(),
            )
            .await
            .expect("download answered");
            assert_eq!(status, 200);
            assert_eq!(&sha256_hex(&body), sha, "file {file} changed");
        }
    }
}

/// Every transcript of `convs` in the archive of `db` (opened with the master key at `master_key`) decrypts
/// and holds every acknowledged message exactly once, at its seq, and no body twice. Returns how many
/// acknowledged messages and files were checked.
pub fn check_transcripts(
    db: &dyn relaydesk_signalling::store::Storage,
    master_key: &Path,
    convs: &[Conv],
) -> (usize, usize) {
    use std::collections::HashMap;
    let keys = relaydesk_signalling::archive::ArchiveKeys::open(
        relaydesk_signalling::archive::KeySource::File(master_key.to_path_buf()),
        db,
    )
    .unwrap();
    let audit = relaydesk_signalling::store::AuditEvent {
        actor: Some("test".into()),
        action: "archive.export".into(),
        ..relaydesk_signalling::store::AuditEvent::default()
    };
    let mut checked = 0usize;
    let mut files_checked = 0usize;
    for c in convs {
        let t = keys.export(db, &c.id, &audit).unwrap();
        let by_seq: HashMap<u64, &str> = t.messages.iter().map(|m| (m.seq, m.body.as_str())).collect();
        assert_eq!(by_seq.len(), t.messages.len(), "a seq twice in the transcript");
        let mut bodies: HashMap<&str, usize> = HashMap::new();
        for m in &t.messages {
            *bodies.entry(m.body.as_str()).or_default() += 1;
        }
        for (seq, m) in &c.acked {
            let expected = if m.file.is_some() { None } else { Some(m.body.as_str()) };
            if let Some(body) = expected {
                assert_eq!(
                    by_seq.get(seq).copied(),
                    Some(body),
                    "conversation {}: message {seq}",
                    c.id
                );
                assert_eq!(
                    bodies.get(body),
                    Some(&1),
                    "conversation {}: {body:?} not exactly once",
                    c.id
                );
                checked += 1;
            }
        }
        for n in c.files.keys() {
            assert!(!n.is_empty());
            files_checked += 1;
        }
        for (body, n) in &bodies {
            assert_eq!(*n, 1, "conversation {}: {body:?} archived {n} times", c.id);
        }
    }
    (checked, files_checked)
}

/// The SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
