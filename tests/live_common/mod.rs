//! Helpers of the live-layer tests: a server with live settings and parts, admin setup, WebSocket clients
//! (tokio-tungstenite over the tests' TLS stream, trusting exactly the server's certificate) that record
//! every raw frame they receive.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use relaydesk_signalling::store::prelude::*;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use relaydesk_signalling::config::Config;
use relaydesk_signalling::live::{ConversationSink, EndedConversation, LiveParts, SinkFuture};
use relaydesk_signalling::server::AdminBootstrap;
use relaydesk_signalling::{RunningServer, Server, StartOptions};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use relaydesk_signalling::media::{MediaControl, MediaFuture, MediaParticipantId, MediaRole, MediaRoomId};

use crate::common::{Client, IO_TIMEOUT, Resp, test_config};

/// The origin of the test site.
pub const SHOP: &str = "https://shop.example";
/// Bound for waiting on one frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames [`Ws::expect_where`] skips before it gives up (a server streaming unrelated frames for ever
/// fails the test instead of hanging it).
pub const MAX_SKIPPED_FRAMES: usize = 100_000;

/// A sink that forwards ended conversations to the test.
pub struct ChannelSink(pub mpsc::UnboundedSender<EndedConversation>);

impl ConversationSink for ChannelSink {
    fn conversation_ended(&self, conversation: EndedConversation) -> SinkFuture<'_> {
        let _ = self.0.send(conversation);
        Box::pin(async {})
    }
}

/// A running server with an admin client, a site key for group `sales` and the ended-conversation feed.
pub struct Live {
    pub server: Option<RunningServer>,
    pub dir: std::path::PathBuf,
    _tmp: tempfile::TempDir,
    pub admin: Client,
    pub key: String,
    pub ended: mpsc::UnboundedReceiver<EndedConversation>,
}

impl Live {
    /// Starts a server; `tweak` edits the config, `parts` may carry media.
    pub async fn start(tweak: impl FnOnce(&mut Config), mut parts: LiveParts) -> Live {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut config = test_config(&dir);
        tweak(&mut config);
        let (tx, ended) = mpsc::unbounded_channel();
        parts.sink = Some(Arc::new(ChannelSink(tx)));
        let server = Server::start_with(config, StartOptions::default().live(parts))
            .await
            .unwrap();
        let password = match server.admin_bootstrap() {
            Some(AdminBootstrap::Generated(p)) => p.clone(),
            other => panic!("expected a generated admin password, got {other:?}"),
        };
        let admin = Client::new(server.local_addr(), &dir.join("tls/cert.pem"));
        let r = admin.login("admin", &password).await;
        assert_eq!(r.status, 200, "{}", r.text());
        for g in ["sales", "billing"] {
            let r = admin.post_json("/api/v1/admin/groups", &json!({ "name": g })).await;
            assert_eq!(r.status, 201, "{}", r.text());
        }
        let key = site_key(&admin, "sales", "shop").await;
        Live {
            server: Some(server),
            dir,
            _tmp: tmp,
            admin,
            key,
            ended,
        }
    }

    /// Defaults with short timers.
    pub async fn quick() -> Live {
        Self::start(|_| {}, LiveParts::default()).await
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn client(&self) -> Client {
        Client::new(self.running().local_addr(), &self.dir.join("tls/cert.pem"))
    }

    /// The server's own origin.
    pub fn own_origin(&self) -> String {
        format!("https://{}", self.running().local_addr())
    }

    /// Creates a user and returns (id, logged-in client).
    pub async fn user(&self, name: &str, role: &str, groups: &[&str]) -> (i64, Client) {
        let password = "correct horse battery";
        let r = self
            .admin
            .post_json(
                "/api/v1/admin/users",
                &json!({"username": name, "display_name": name, "role": role, "groups": groups, "password": password}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["user"]["id"].as_i64().unwrap();
        let c = self.client();
        let r = c.login(name, password).await;
        assert_eq!(r.status, 200, "{}", r.text());
        (id, c)
    }

    /// Changes user `id` in the database alone, as the offline command line does while the server runs.
    pub fn store_update(&self, id: i64, change: impl FnOnce(&mut relaydesk_signalling::store::UserUpdate)) {
        let mut update = relaydesk_signalling::store::UserUpdate::default();
        change(&mut update);
        let audit = relaydesk_signalling::store::AuditEvent {
            actor: Some("cli".into()),
            action: "user.update".into(),
            target: Some(id.to_string()),
            client_addr: None,
            detail: None,
        };
        let db = relaydesk_signalling::store::Db::open(&self.dir).unwrap();
        db.update_user(id, update, audit).unwrap();
    }

    /// `POST /api/v1/visitor/session` from `origin` for `page_url`.
    pub async fn session(&self, key: &str, origin: Option<&str>, page_url: &str) -> Resp {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        let body = serde_json::to_vec(&json!({"site_key": key, "page_url": page_url})).unwrap();
        self.client()
            .raw("POST", "/api/v1/visitor/session", &headers, body)
            .await
    }

    /// A fresh session token for the shop.
    pub async fn token(&self) -> String {
        self.token_for(&self.key).await
    }

    /// A fresh session token for the shop's site key `key`.
    pub async fn token_for(&self, key: &str) -> String {
        let r = self.session(key, Some(SHOP), "https://shop.example/cart?x=1").await;
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["session_token"].as_str().unwrap().to_string()
    }

    /// `POST /api/v1/visitor/session` for the shop with `X-Forwarded-For: forwarded_for`, as a proxy on
    /// 127.0.0.1 would send it (believed only when the server trusts 127.0.0.1).
    pub async fn session_via_proxy(&self, forwarded_for: &str) -> Resp {
        let headers = [
            ("content-type", "application/json"),
            ("origin", SHOP),
            ("x-forwarded-for", forwarded_for),
        ];
        let body = serde_json::to_vec(&json!({"site_key": self.key, "page_url": "https://shop.example/"})).unwrap();
        self.client()
            .raw("POST", "/api/v1/visitor/session", &headers, body)
            .await
    }

    /// Opens a WebSocket; `Err(status)` when the upgrade is refused.
    pub async fn ws(&self, path: &str, origin: Option<&str>, cookie: Option<&Client>) -> Result<Ws, u16> {
        self.ws_with(path, origin, cookie, &[]).await
    }

    /// [`ws`](Self::ws) with extra request headers.
    pub async fn ws_with(
        &self,
        path: &str,
        origin: Option<&str>,
        cookie: Option<&Client>,
        extra: &[(&'static str, &str)],
    ) -> Result<Ws, u16> {
        let addr = self.running().local_addr();
        let mut req = format!("wss://{addr}{path}").into_client_request().unwrap();
        for (name, value) in extra {
            req.headers_mut().insert(*name, value.parse().unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        if let Some(c) = cookie {
            let v = c.cookie.lock().unwrap().clone().unwrap();
            req.headers_mut()
                .insert("cookie", format!("__Host-relaydesk_session={v}").parse().unwrap());
        }
        let tls = self.client().connect_tls().await;
        match tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(req, tls))
            .await
            .expect("upgrade timed out")
        {
            Ok((stream, _)) => Ok(Ws {
                stream,
                log: Vec::new(),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("websocket failed: {e}"),
        }
    }

    /// A visitor socket after `hello` → `welcome`.
    pub async fn visitor(&self) -> (Ws, Value) {
        self.visitor_for(&self.key).await
    }

    /// A visitor socket of site key `key` (origin [`SHOP`]) after `hello` → `welcome`.
    pub async fn visitor_for(&self, key: &str) -> (Ws, Value) {
        let token = self.token_for(key).await;
        let mut ws = self
            .ws(&format!("/api/v1/visitor/ws?token={token}"), Some(SHOP), None)
            .await
            .unwrap();
        ws.send(json!({"type": "hello"})).await;
        let welcome = ws.expect("welcome").await;
        (ws, welcome)
    }

    /// A console socket after `hello` → `welcome` (presence left as it is).
    pub async fn console(&self, client: &Client) -> Ws {
        let mut ws = self
            .ws("/api/v1/agent/ws", Some(&self.own_origin()), Some(client))
            .await
            .unwrap();
        ws.send(json!({"type": "hello"})).await;
        ws.expect("welcome").await;
        ws
    }

    /// An agent socket after `hello` → `welcome`, set available.
    pub async fn agent(&self, client: &Client) -> Ws {
        let mut ws = self.console(client).await;
        ws.send(json!({"type": "set_presence", "presence": "available"})).await;
        ws.expect("presence_changed").await;
        ws
    }

    /// The next ended conversation handed to the sink.
    pub async fn next_ended(&mut self) -> EndedConversation {
        tokio::time::timeout(FRAME_TIMEOUT, self.ended.recv())
            .await
            .expect("sink called in time")
            .unwrap()
    }
}

/// Creates a site key of `group` for [`SHOP`] with the admin client `admin`; returns the key.
pub async fn site_key(admin: &Client, group: &str, label: &str) -> String {
    let r = admin
        .post_json(
            "/api/v1/admin/keys",
            &json!({"group": group, "origins": [SHOP], "label": label}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["key"]["key"].as_str().unwrap().to_string()
}

/// A WebSocket client that records every text frame it receives.
pub struct Ws {
    pub stream: tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    /// Every text frame received, raw.
    pub log: Vec<String>,
}

/// How a socket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The stream ended without a close frame.
    Eof,
}

impl Ws {
    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        tokio::time::timeout(IO_TIMEOUT, self.stream.send(Message::Text(text.into())))
            .await
            .expect("send timed out")
            .unwrap();
    }

    /// The next text frame as JSON (panics on close or timeout, or after [`MAX_SKIPPED_FRAMES`] other frames).
    pub async fn recv(&mut self) -> Value {
        for _ in 0..=MAX_SKIPPED_FRAMES {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next())
                .await
                .expect("no frame in time")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                Message::Text(t) => {
                    self.log.push(t.as_str().to_owned());
                    return serde_json::from_str(t.as_str()).unwrap();
                }
                Message::Close(f) => panic!("socket closed: {f:?}"),
                _ => continue,
            }
        }
        panic!("no text frame among {MAX_SKIPPED_FRAMES} frames");
    }

    /// Frames until one of type `t` (the skipped ones stay in the log).
    pub async fn expect(&mut self, t: &str) -> Value {
        self.expect_where(|v| v["type"] == t).await
    }

    /// Frames until one matches `pred`, each within [`FRAME_TIMEOUT`], at most [`MAX_SKIPPED_FRAMES`] skipped.
    pub async fn expect_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..=MAX_SKIPPED_FRAMES {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
        panic!("no matching frame among {MAX_SKIPPED_FRAMES} frames");
    }

    /// Logs the text frames that arrive without a pause of 20 ms (at most 1000): what is already on its way.
    pub async fn read_ready(&mut self) {
        for _ in 0..1000 {
            match tokio::time::timeout(Duration::from_millis(20), self.stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => self.log.push(t.as_str().to_owned()),
                Ok(Some(Ok(_))) => {}
                _ => return,
            }
        }
    }

    /// Reads until the socket closes; returns the close code.
    /// Bounded as a whole (three frame timeouts) too, since the server's pings would keep it going.
    pub async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT * 3;
        loop {
            let wait = (tokio::time::Instant::now() + FRAME_TIMEOUT).min(deadline);
            let msg = tokio::time::timeout_at(wait, self.stream.next())
                .await
                .expect("no close in time");
            match msg {
                Some(Ok(Message::Text(t))) => self.log.push(t.as_str().to_owned()),
                Some(Ok(Message::Close(Some(f)))) => return Closed::Code(u16::from(f.code)),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::Eof,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Closes the socket from the client side.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(IO_TIMEOUT, self.stream.close(None)).await;
    }
}

/// Repeats `request` until it answers `want`, while it answers `waiting` (any other status fails the test);
/// bounded by [`FRAME_TIMEOUT`]. Whether `want` came in time.
pub async fn until_status<F, Fut>(mut request: F, want: u16, waiting: u16) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    tokio::time::timeout(FRAME_TIMEOUT, async {
        loop {
            let r = request().await;
            match r.status {
                s if s == want => return,
                s if s == waiting => tokio::task::yield_now().await,
                other => panic!("unexpected {other}: {}", r.text()),
            }
        }
    })
    .await
    .is_ok()
}

/// A visitor that joined and was accepted by the agent on `agent_ws`; returns its socket and conversation id.
pub async fn assigned_pair(live: &Live, agent_ws: &mut Ws) -> (Ws, String) {
    let (mut v, welcome) = live.visitor().await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    let offer = agent_ws.expect("offered").await;
    assert_eq!(offer["conversation"], conv.as_str());
    agent_ws.send(json!({"type": "accept", "conversation": conv})).await;
    agent_ws.expect("assigned").await;
    v.expect("assigned").await;
    (v, conv)
}

/// Live parts whose media server takes every call (and reports no events): the hub's rules are under test.
pub fn answer_all() -> LiveParts {
    let (_events_tx, events) = mpsc::channel(16);
    LiveParts {
        media: Some(relaydesk_signalling::live::MediaWiring {
            control: Arc::new(AnswerAll),
            events,
        }),
        sink: None,
    }
}

/// A media server that takes every call: wrong states are the hub's to refuse.
pub struct AnswerAll;

impl MediaControl for AnswerAll {
    fn open_room(&self, _: MediaRoomId) -> MediaFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn join(&self, _: MediaRoomId, _: MediaParticipantId, _: MediaRole, _: String) -> MediaFuture<'_, String> {
        Box::pin(async { Ok("v=0\r\n".to_owned()) })
    }
    fn renegotiate(&self, _: MediaRoomId, _: MediaParticipantId, _: String) -> MediaFuture<'_, String> {
        Box::pin(async { Ok("v=0\r\n".to_owned()) })
    }
    fn set_role(&self, _: MediaRoomId, _: MediaParticipantId, _: MediaRole) -> MediaFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn leave(&self, _: MediaRoomId, _: MediaParticipantId) -> MediaFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn close_room(&self, _: MediaRoomId) -> MediaFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// The real SFU driver (`shards` shards on loopback) as the server's media side, and the parts that wire
/// it in (pass them to [`Live::start`]).
pub fn sfu_parts(shards: usize) -> (Arc<relaydesk::media::SfuMedia>, LiveParts) {
    let driver = relaydesk_sfu::DriverConfig::new(std::net::Ipv4Addr::LOCALHOST.into(), shards);
    let (sfu, events) =
        relaydesk::media::SfuMedia::start(&driver, &relaydesk_signalling::masking::Masker::default(), false).unwrap();
    let parts = LiveParts {
        media: Some(relaydesk_signalling::live::MediaWiring {
            control: sfu.clone(),
            events,
        }),
        sink: None,
    };
    (sfu, parts)
}

/// Sends an audio and video call offer of `peer` from `ws` (with `conversation` on an agent socket) and
/// applies the SDP answer the server relays back.
pub async fn call_offer(ws: &mut Ws, conversation: Option<&str>, peer: &mut relaydesk_loadtest::media::Peer) {
    let (sdp, pending) = peer.offer(true, true, str0m::media::Direction::SendRecv).unwrap();
    let mut frame = json!({"type": "call_offer", "sdp": sdp});
    if let Some(c) = conversation {
        frame["conversation"] = Value::from(c);
    }
    ws.send(frame).await;
    let answer = ws.expect("call_answer").await;
    peer.accept_answer(pending, answer["sdp"].as_str().unwrap()).unwrap();
}
