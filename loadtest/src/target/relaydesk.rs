//! The full RelayDesk flow, with the server's own wire types (`relaydesk_signalling::chat_protocol`), so the
//! tool and the server never drift.
//!
//! Preflight: `/healthz`; with `--setup`, admin login and creation of a group, a site key (allowing the
//! simulated widget's origin) and enough agents (4 conversations each); then every agent logs in. The agent
//! sockets start with the first conversation: each agent says `hello`, goes `available`, accepts every
//! offer, starts a call on assignment (when media is on: `call_offer` → `call_answer`) and checks every
//! chat message it receives for an unmasked card number (a **masking violation**).
//!
//! Per conversation (the visitor): `POST /api/v1/visitor/session` (stage `token`) → visitor socket
//! (`socket`) → `hello`/`welcome` (`welcome`) → `queue_position` (`queued`) → `assigned` (`assigned`) →
//! call offer/answer (`call`; with `--file-size`, a file sent to the agent over the call's `file` data
//! channel and checked by SHA-256 on arrival) → chat at `--chat-rate`, a fraction of messages carrying a card number, with
//! the round trip measured on the server's echo, until the run stops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use relaydesk_signalling::chat_protocol::{
    AgentToServer, ConversationId, Presence, ServerToAgent, ServerToVisitor, VisitorToServer,
};
use serde_json::json;
use str0m::change::SdpPendingOffer;
use str0m::media::Direction;
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{Ctx, StageFailure, Target};
use crate::cli::RunArgs;
use crate::http::Client;
use crate::media::Peer;
use crate::stats::{new_histogram, record_clamped};

/// Conversations each created agent takes at once.
const AGENT_CAPACITY: u32 = 4;

/// Options of the RelayDesk target taken from the command line.
#[derive(Debug, Clone)]
pub struct RelayDeskOptions {
    /// Create group, key and agents first (admin credentials below).
    pub setup: bool,
    /// Admin user name.
    pub admin_user: String,
    /// Admin password (read from its file).
    admin_password: Option<String>,
    /// Existing site key.
    pub site_key: Option<String>,
    /// Existing agents.
    pub agents: Vec<String>,
    /// Their password (read from its file).
    agent_password: Option<String>,
    /// The widget's origin.
    pub origin: String,
    /// Conversations (to size the agents).
    pub conversations: u32,
    /// Chat messages per second per conversation.
    pub chat_rate: f64,
    /// Fraction of messages with a card number.
    pub card_fraction: f64,
    /// Size of the file each visitor sends to its agent over the call's file channel (0: none).
    pub file_size: u64,
    /// Clients carry media over TCP only (ICE-TCP) instead of UDP.
    pub tcp: bool,
    /// The test group's calls are recorded (`--record`).
    pub record: bool,
}

fn read_secret(path: &std::path::Path, what: &str) -> Result<String, String> {
    let s =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))?;
    let line = s.lines().next().unwrap_or("").trim_end_matches('\r').to_string();
    if line.is_empty() {
        return Err(format!("the {what} file {} is empty", path.display()));
    }
    Ok(line)
}

impl RelayDeskOptions {
    /// From the command line (reads the password files).
    pub fn from_args(args: &RunArgs) -> Result<Self, String> {
        let admin_password = match &args.admin_password_file {
            Some(p) if args.setup => Some(read_secret(p, "admin password")?),
            _ => None,
        };
        let agent_password = match &args.agent_password_file {
            Some(p) if !args.setup => Some(read_secret(p, "agent password")?),
            _ => None,
        };
        Ok(RelayDeskOptions {
            setup: args.setup,
            admin_user: args.admin_user.clone(),
            admin_password,
            site_key: args.site_key.clone(),
            agents: args.agents.clone(),
            agent_password,
            origin: args.origin.trim_end_matches('/').to_string(),
            conversations: args.conversations,
            chat_rate: args.chat_rate,
            card_fraction: args.card_fraction,
            file_size: args.file_size,
            tcp: args.transport == crate::cli::MediaTransport::Tcp,
            record: args.record,
        })
    }
}

/// A client peer on UDP, or on TCP only.
fn new_peer(ip: IpAddr, tcp: bool) -> Result<Peer, crate::media::MediaError> {
    if tcp { Peer::new_tcp(ip) } else { Peer::new(ip) }
}

struct Prepared {
    site_key: String,
    /// (user name, session cookie `__Host-relaydesk_session=…`)
    agents: Vec<(String, String)>,
}

/// What one node (one `--url`) carried in a run.
#[derive(Default)]
struct NodeCounters {
    started: AtomicU64,
    assigned: AtomicU64,
    failed: AtomicU64,
    /// Time from the session request to `assigned`, in µs.
    to_assigned: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

/// The RelayDesk target.
pub struct RelayDeskTarget {
    /// The first node: setup, preflight, liveness.
    http: Client,
    /// Every node (`--url`s, the first one included): conversation `i` goes to node `i % n`, agent `j` to
    /// node `(j + 1) % n`, so with several nodes a visitor and its agent usually use different ones.
    nodes: Vec<Client>,
    per_node: Vec<NodeCounters>,
    tls: Arc<rustls::ClientConfig>,
    media_ip: IpAddr,
    opts: RelayDeskOptions,
    prepared: Mutex<Option<Arc<Prepared>>>,
    agents_started: OnceCell<()>,
}

impl RelayDeskTarget {
    /// A target for the server behind `http`.
    pub fn new(http: Client, tls: Arc<rustls::ClientConfig>, media_ip: IpAddr, opts: RelayDeskOptions) -> Self {
        Self::with_nodes(vec![http], tls, media_ip, opts)
    }

    /// A target for the nodes behind `nodes` (at least one; the first one is used for the setup).
    pub fn with_nodes(
        nodes: Vec<Client>,
        tls: Arc<rustls::ClientConfig>,
        media_ip: IpAddr,
        opts: RelayDeskOptions,
    ) -> Self {
        let http = nodes[0].clone();
        RelayDeskTarget {
            per_node: nodes.iter().map(|_| NodeCounters::default()).collect(),
            nodes,
            http,
            tls,
            media_ip,
            opts,
            prepared: Mutex::new(None),
            agents_started: OnceCell::new(),
        }
    }

    /// What each node carried so far, in `--url` order.
    pub fn node_figures(&self) -> Vec<crate::report::NodeFigures> {
        self.nodes
            .iter()
            .zip(&self.per_node)
            .map(|(http, c)| crate::report::NodeFigures {
                url: origin_of(http),
                started: c.started.load(Ordering::Relaxed),
                assigned: c.assigned.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                to_assigned: c
                    .to_assigned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(crate::report::Percentiles::of),
                metrics: std::collections::BTreeMap::new(),
            })
            .collect()
    }

    /// [`RelayDeskTarget::node_figures`] with each node's own `/metrics` read now (the end of a run).
    pub async fn node_report(&self) -> Vec<crate::report::NodeFigures> {
        let mut figures = self.node_figures();
        for (f, http) in figures.iter_mut().zip(&self.nodes) {
            if let Ok(r) = http.request("GET", "/metrics", &[], None).await
                && r.status == 200
            {
                f.metrics = crate::report::parse_metrics(&String::from_utf8_lossy(&r.body));
            }
        }
        figures
    }
}

/// `https://host:port` of a client's server.
fn origin_of(http: &Client) -> String {
    let b = http.base();
    format!("{}://{}", if b.tls { "https" } else { "http" }, b.authority())
}

impl RelayDeskTarget {
    async fn login(&self, user: &str, password: &str) -> Result<String, String> {
        let r = self
            .http
            .request(
                "POST",
                "/api/v1/auth/login",
                &[("X-RelayDesk-CSRF", "1")],
                Some(&json!({"username": user, "password": password})),
            )
            .await
            .map_err(|e| format!("login of `{user}`: {e}"))?;
        match r.status {
            200 => {}
            401 => return Err(format!("login of `{user}` refused: wrong user name or password")),
            429 => return Err(format!("login of `{user}` throttled by the server (429); retry later")),
            s => return Err(format!("login of `{user}`: HTTP {s} {}", r.json()["error"]["code"])),
        }
        let cookie = r
            .headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .find_map(|(_, v)| {
                v.split(';')
                    .next()
                    .filter(|c| c.starts_with("__Host-relaydesk_session="))
            })
            .ok_or_else(|| format!("login of `{user}`: no session cookie in the answer"))?;
        Ok(cookie.to_string())
    }

    async fn admin(
        &self,
        cookie: &str,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let r = self
            .http
            .request(
                method,
                path,
                &[("X-RelayDesk-CSRF", "1"), ("Cookie", cookie)],
                Some(&body),
            )
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        if !(200..300).contains(&r.status) {
            return Err(format!(
                "{method} {path}: HTTP {} {}",
                r.status,
                r.json()["error"]["code"]
            ));
        }
        Ok(r.json())
    }

    async fn setup(&self) -> Result<Prepared, String> {
        let password = self
            .opts
            .admin_password
            .clone()
            .ok_or("--setup needs the admin password")?;
        let admin = self.login(&self.opts.admin_user, &password).await?;
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let tag = hex::encode(r);
        let group = format!("loadtest-{tag}");
        let recording = if self.opts.record { "always" } else { "off" };
        self.admin(
            &admin,
            "POST",
            "/api/v1/admin/groups",
            json!({"name": group, "recording": recording}),
        )
        .await?;
        let key = self
            .admin(
                &admin,
                "POST",
                "/api/v1/admin/keys",
                json!({"group": group, "origins": [self.opts.origin], "label": "loadtest"}),
            )
            .await?;
        let site_key = key["key"]["key"]
            .as_str()
            .ok_or("no site key in the answer")?
            .to_string();
        let n = self.opts.conversations.div_ceil(AGENT_CAPACITY);
        let mut pw = [0u8; 16];
        getrandom::fill(&mut pw).map_err(|e| format!("no randomness: {e}"))?;
        let agent_password = hex::encode(pw);
        let mut agents = Vec::new();
        for i in 0..n {
            let name = format!("lt-{tag}-{i}");
            self.admin(
                &admin,
                "POST",
                "/api/v1/admin/users",
                json!({"username": name, "role": "agent", "groups": [group], "max_conversations": AGENT_CAPACITY, "password": agent_password}),
            )
            .await?;
            agents.push(name);
        }
        let mut out = Vec::new();
        for a in agents {
            let c = self.login(&a, &agent_password).await?;
            out.push((a, c));
        }
        Ok(Prepared { site_key, agents: out })
    }

    async fn start_agents(&self, ctx: &Ctx, prepared: Arc<Prepared>) {
        for (j, (name, cookie)) in prepared.agents.iter().enumerate() {
            let (name, cookie) = (name.clone(), cookie.clone());
            let node = &self.nodes[(j + 1) % self.nodes.len()];
            let ws_url = node.base().ws_url("/api/v1/agent/ws");
            let tls = self.tls.clone();
            let origin = origin_of(node);
            let ctx = ctx.for_the_whole_run();
            let media_ip = self.media_ip;
            let files = self.opts.file_size > 0;
            let tcp = self.opts.tcp;
            tokio::spawn(async move {
                if let Err(e) = agent_loop(&ws_url, tls, &origin, &cookie, &ctx, media_ip, files, tcp).await {
                    tracing::warn!(agent = %name, error = %e, "agent socket ended");
                }
            });
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    origin: &str,
    cookie: Option<&str>,
) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut()
        .insert("Origin", HeaderValue::from_str(origin).map_err(|e| e.to_string())?);
    if let Some(c) = cookie {
        req.headers_mut()
            .insert("Cookie", HeaderValue::from_str(c).map_err(|e| e.to_string())?);
    }
    let connector = tokio_tungstenite::Connector::Rustls(tls);
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => format!("HTTP {}", r.status()),
            e => e.to_string(),
        })?;
    Ok(ws)
}

async fn send_json<T: serde::Serialize>(ws: &mut Ws, msg: &T) -> Result<(), String> {
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    ws.send(Message::text(text)).await.map_err(|e| e.to_string())
}

/// The next text frame parsed as `T` (pings answered by tungstenite; other frames skipped).
async fn next_msg<T: serde::de::DeserializeOwned>(ws: &mut Ws) -> Result<T, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).map_err(|e| format!("unexpected frame: {e}"));
            }
            Some(Ok(Message::Close(c))) => return Err(format!("socket closed by the server: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket closed".into()),
        }
    }
}

#[allow(clippy::too_many_arguments)] // one loop per agent socket; its settings are plain values
async fn agent_loop(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    origin: &str,
    cookie: &str,
    ctx: &Ctx,
    media_ip: IpAddr,
    files: bool,
    tcp: bool,
) -> Result<(), String> {
    let mut ws = ws_connect(url, tls, origin, Some(cookie)).await?;
    send_json(&mut ws, &AgentToServer::Hello { resume: Vec::new() }).await?;
    send_json(
        &mut ws,
        &AgentToServer::SetPresence {
            presence: Presence::Available,
        },
    )
    .await?;
    let mut calls: HashMap<ConversationId, (Peer, SdpPendingOffer)> = HashMap::new();
    // Peers handed to the engine, by conversation: removed when the conversation ends (churn).
    let mut running: HashMap<ConversationId, std::net::SocketAddr> = HashMap::new();
    loop {
        let msg = tokio::select! {
            m = next_msg::<ServerToAgent>(&mut ws) => m?,
            _ = ctx.until_stopped() => return Ok(()),
        };
        match msg {
            ServerToAgent::Offered { conversation, .. } => {
                send_json(&mut ws, &AgentToServer::Accept { conversation }).await?;
            }
            ServerToAgent::Assigned { conversation, .. } if ctx.audio || ctx.video || files => {
                let mut peer = new_peer(media_ip, tcp).map_err(|e| e.to_string())?;
                if files {
                    // Receives the visitor's file on the SFU's file channel and checks its SHA-256.
                    peer.with_file_channel(None);
                }
                let (sdp, pending) = peer
                    .offer(ctx.audio, ctx.video, Direction::SendRecv)
                    .map_err(|e| e.to_string())?;
                calls.insert(conversation, (peer, pending));
                send_json(&mut ws, &AgentToServer::CallOffer { conversation, sdp }).await?;
            }
            ServerToAgent::CallAnswer { conversation, sdp } => {
                if let Some((mut peer, pending)) = calls.remove(&conversation) {
                    peer.accept_answer(pending, &sdp).map_err(|e| e.to_string())?;
                    running.insert(conversation, peer.local_addr());
                    ctx.engine.add(peer).map_err(|e| e.to_string())?;
                }
            }
            ServerToAgent::Ended { conversation, .. } => {
                calls.remove(&conversation);
                if let Some(addr) = running.remove(&conversation) {
                    ctx.engine.remove(addr);
                }
            }
            ServerToAgent::Message {
                body, client_id: None, ..
            }
            | ServerToAgent::MessageAmended { body, .. } => {
                let mut s = ctx.signalling.lock().unwrap_or_else(|p| p.into_inner());
                s.chat_received += 1;
                if has_card_number(&body) {
                    s.masking_violations += 1;
                    // Never log the body: it holds the number.
                    tracing::error!("masking violation: an agent received an unmasked card number");
                }
            }
            _ => {}
        }
    }
}

/// Whether `text` holds a card number in the clear: 13 to 19 digits (spaces or dashes between them
/// allowed) that pass the Luhn check and start like a card (2–6).
pub fn has_card_number(text: &str) -> bool {
    let mut digits: Vec<u8> = Vec::new();
    let mut runs: Vec<Vec<u8>> = Vec::new();
    let mut last_sep = false;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            digits.push(d as u8);
            last_sep = false;
        } else if (c == ' ' || c == '-') && !digits.is_empty() && !last_sep {
            last_sep = true;
        } else {
            runs.push(std::mem::take(&mut digits));
            last_sep = false;
        }
    }
    runs.push(digits);
    runs.iter()
        .any(|run| (13..=19).any(|len| run.windows(len).any(|w| (2..=6).contains(&w[0]) && luhn(w))))
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A Luhn-valid 16-digit Visa-like test number, grouped by four.
pub fn card_number(seed: u64) -> String {
    let mut d: Vec<u8> = vec![4];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for _ in 0..14 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        d.push(((x >> 33) % 10) as u8);
    }
    let check = (0..10u8).find(|c| {
        let mut t = d.clone();
        t.push(*c);
        luhn(&t)
    });
    d.push(check.unwrap_or(0));
    d.chunks(4)
        .map(|c| c.iter().map(|x| char::from(b'0' + x)).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes a peer from the media engine when dropped.
struct LeaveEngine {
    engine: Arc<crate::media::MediaEngine>,
    addr: Option<std::net::SocketAddr>,
}

impl Drop for LeaveEngine {
    fn drop(&mut self) {
        if let Some(addr) = self.addr.take() {
            self.engine.remove(addr);
        }
    }
}

static CLIENT_IDS: AtomicU64 = AtomicU64::new(1);

impl Target for RelayDeskTarget {
    fn name(&self) -> &'static str {
        "relaydesk"
    }

    async fn preflight(&self) -> Result<(), String> {
        let r = self
            .http
            .request("GET", "/healthz", &[], None)
            .await
            .map_err(|e| format!("RelayDesk unreachable: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "{} answered /healthz with HTTP {}",
                self.http.base().authority(),
                r.status
            ));
        }
        let prepared = if self.opts.setup {
            self.setup().await?
        } else {
            let password = self
                .opts
                .agent_password
                .clone()
                .ok_or("the agents' password is needed")?;
            let mut agents = Vec::new();
            for a in &self.opts.agents {
                agents.push((a.clone(), self.login(a, &password).await?));
            }
            Prepared {
                site_key: self.opts.site_key.clone().ok_or("--site-key is needed")?,
                agents,
            }
        };
        *self.prepared.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(prepared));
        Ok(())
    }

    async fn alive(&self) -> bool {
        self.http
            .request_timeout("GET", "/healthz", &[], None, Duration::from_secs(3))
            .await
            .is_ok_and(|r| r.status == 200)
    }

    async fn conversation(&self, index: u64, ctx: &Ctx) -> Result<(), StageFailure> {
        let node = usize::try_from(index % self.nodes.len() as u64).unwrap_or(0);
        let counters = &self.per_node[node];
        counters.started.fetch_add(1, Ordering::Relaxed);
        let result = self.conversation_on(node, index, ctx).await;
        if result.is_err() {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl RelayDeskTarget {
    /// One conversation whose visitor uses node `node`.
    async fn conversation_on(&self, node: usize, index: u64, ctx: &Ctx) -> Result<(), StageFailure> {
        let t0 = Instant::now();
        let http = &self.nodes[node];
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StageFailure::new("setup", "preflight did not run"))?;
        self.agents_started
            .get_or_init(|| self.start_agents(ctx, prepared.clone()))
            .await;

        // 1. Session token.
        let r = http
            .request(
                "POST",
                "/api/v1/visitor/session",
                &[("Origin", &self.opts.origin)],
                Some(&json!({"site_key": prepared.site_key, "page_url": format!("{}/checkout", self.opts.origin)})),
            )
            .await
            .map_err(|e| StageFailure::new("token", e))?;
        if r.status == 404 {
            return Err(StageFailure::new(
                "token",
                "POST /api/v1/visitor/session does not exist on this server",
            ));
        }
        if !(200..300).contains(&r.status) {
            return Err(StageFailure::new(
                "token",
                format!("HTTP {} {}", r.status, r.json()["error"]["code"]),
            ));
        }
        let token = r.json()["session_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| StageFailure::new("token", "no session_token"))?;
        ctx.stage("token", t0);

        // 2. Visitor socket.
        let url = http.base().ws_url(&format!("/api/v1/visitor/ws?token={token}"));
        let mut ws = ws_connect(&url, self.tls.clone(), &self.opts.origin, None)
            .await
            .map_err(|e| StageFailure::new("socket", e))?;
        ctx.stage("socket", t0);
        send_json(
            &mut ws,
            &VisitorToServer::Hello {
                client: Some("relaydesk-loadtest".into()),
            },
        )
        .await
        .map_err(|e| StageFailure::new("socket", e))?;

        // 3. Welcome, queue, assignment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut queued = false;
        loop {
            let m = tokio::time::timeout_at(deadline, next_msg::<ServerToVisitor>(&mut ws))
                .await
                .map_err(|_| StageFailure::new(if queued { "assigned" } else { "welcome" }, "no answer within 60 s"))?
                .map_err(|e| StageFailure::new(if queued { "assigned" } else { "welcome" }, e))?;
            match m {
                ServerToVisitor::Welcome { .. } => ctx.stage("welcome", t0),
                ServerToVisitor::QueuePosition { .. } if !queued => {
                    queued = true;
                    ctx.stage("queued", t0);
                }
                ServerToVisitor::Assigned { .. } => {
                    ctx.stage("assigned", t0);
                    let counters = &self.per_node[node];
                    counters.assigned.fetch_add(1, Ordering::Relaxed);
                    let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let mut h = counters.to_assigned.lock().unwrap_or_else(|p| p.into_inner());
                    record_clamped(h.get_or_insert_with(new_histogram), us);
                    break;
                }
                ServerToVisitor::Ended { reason } => {
                    return Err(StageFailure::new("assigned", format!("ended: {reason:?}")));
                }
                ServerToVisitor::Error { code, .. } => {
                    return Err(StageFailure::new("assigned", format!("error {code:?}")));
                }
                _ => {}
            }
        }

        // 4. Call.
        let mut pending_call = None;
        if ctx.audio || ctx.video || self.opts.file_size > 0 {
            let mut peer = new_peer(self.media_ip, self.opts.tcp).map_err(|e| StageFailure::new("call", e))?;
            if self.opts.file_size > 0 {
                // One file per conversation, visitor to agent, once the call's file channel is open.
                peer.with_file_channel(Some(self.opts.file_size));
            }
            let (sdp, pending) = peer
                .offer(ctx.audio, ctx.video, Direction::SendRecv)
                .map_err(|e| StageFailure::new("call", e))?;
            send_json(&mut ws, &VisitorToServer::CallOffer { sdp })
                .await
                .map_err(|e| StageFailure::new("call", e))?;
            pending_call = Some((peer, pending, Instant::now()));
        } else {
            ctx.ready();
        }

        // 5. Chat until the run stops.
        let period = if self.opts.chat_rate > 0.0 {
            Duration::from_secs_f64(1.0 / self.opts.chat_rate)
        } else {
            Duration::from_secs(3600)
        };
        let mut next_chat = tokio::time::Instant::now() + period;
        let mut sent: HashMap<String, Instant> = HashMap::new();
        let mut n = 0u64;
        // The visitor's peer leaves the engine when the conversation ends, however it ends.
        let mut engine_peer = LeaveEngine {
            engine: ctx.engine.clone(),
            addr: None,
        };
        loop {
            tokio::select! {
                _ = ctx.until_stopped() => break,
                _ = tokio::time::sleep_until(next_chat) => {
                    next_chat += period;
                    n += 1;
                    let client_id = format!("lt-{index}-{}", CLIENT_IDS.fetch_add(1, Ordering::Relaxed));
                    let with_card = (n as f64 * self.opts.card_fraction).floor() != ((n - 1) as f64 * self.opts.card_fraction).floor();
                    let body = if with_card {
                        format!("my card is {} thanks", card_number(index * 1000 + n))
                    } else {
                        format!("hello, message {n} of conversation {index}")
                    };
                    send_json(&mut ws, &VisitorToServer::Message { client_id: client_id.clone(), body }).await.map_err(|e| StageFailure::new("chat", e))?;
                    sent.insert(client_id, Instant::now());
                    ctx.signalling.lock().unwrap_or_else(|p| p.into_inner()).chat_sent += 1;
                }
                m = next_msg::<ServerToVisitor>(&mut ws) => {
                    match m.map_err(|e| StageFailure::new("chat", e))? {
                        ServerToVisitor::Message { client_id: Some(id), .. } => {
                            if let Some(t) = sent.remove(&id) {
                                let mut s = ctx.signalling.lock().unwrap_or_else(|p| p.into_inner());
                                let h = s.chat_rtt.get_or_insert_with(new_histogram);
                                record_clamped(h, t.elapsed().as_micros() as u64);
                            }
                        }
                        ServerToVisitor::CallAnswer { sdp } => {
                            if let Some((mut peer, pending, t)) = pending_call.take() {
                                peer.accept_answer(pending, &sdp).map_err(|e| StageFailure::new("call", e))?;
                                engine_peer.addr = Some(peer.local_addr());
                                ctx.engine.add(peer).map_err(|e| StageFailure::new("call", e))?;
                                let _ = t;
                                ctx.stage("call", t0);
                                ctx.ready();
                            }
                        }
                        ServerToVisitor::Ended { reason } => return Err(StageFailure::new("chat", format!("ended by the server: {reason:?}"))),
                        ServerToVisitor::Error { code, .. } => {
                            if pending_call.is_some() {
                                return Err(StageFailure::new("call", format!("error {code:?}")));
                            }
                            return Err(StageFailure::new("chat", format!("error {code:?}")));
                        }
                        _ => {}
                    }
                }
            }
        }
        let _ = send_json(&mut ws, &VisitorToServer::End {}).await;
        let _ = ws.close(None).await;
        drop(engine_peer);
        if pending_call.is_some() {
            return Err(StageFailure::new("call", "no call_answer before the end of the run"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_found_and_masked_ones_are_not() {
        for seed in 0..50 {
            let c = card_number(seed);
            assert!(has_card_number(&format!("my card is {c} thanks")), "{c}");
            assert!(has_card_number(&c.replace(' ', "")));
            assert!(has_card_number(&c.replace(' ', "-")));
        }
        assert!(has_card_number("4111 1111 1111 1111"));
        assert!(!has_card_number("4111 1111 1111 1112"), "fails Luhn");
        assert!(!has_card_number("my card is **** **** **** 1111"));
        assert!(!has_card_number("order 12345, call 555-0100"));
        assert!(!has_card_number("4111  1111 1111 1111"), "two separators break the run");
    }
}
