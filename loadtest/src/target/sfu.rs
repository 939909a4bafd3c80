//! The RelayDesk SFU on its own (`--target relaydesk-sfu`), for the SFU-level comparison with Janus while
//! the full RelayDesk WebSocket call flow is not available: [`serve`] runs the production SFU driver and
//! forwarding core (`relaydesk-sfu`) in a process of its own behind a minimal plain-HTTP offer/answer
//! endpoint, and [`SfuTarget`] drives it with the same str0m clients and the same media as the Janus
//! target. Each side offers `sendrecv` audio and video on one peer connection (the RelayDesk way; see the
//! SFU core's docs).
//!
//! Endpoint: `POST /rooms/{room}/{participant}/{role}` with the SDP offer as the body → the SDP answer
//! (`role`: `visitor` or `agent`); `DELETE /rooms/{room}` closes a room; `GET /stats` → shard counters.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use relaydesk_sfu::core::{Command, ParticipantId, Reply, Role, RoomId, Sfu, SfuConfig};
use relaydesk_sfu::{CoreHandle, Driver, DriverConfig};
use str0m::media::Direction;

use super::{Ctx, StageFailure, Target};
use crate::http::Client;
use crate::media::Peer;

/// Errors of `serve-sfu`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The SFU driver could not start.
    #[error("SFU driver: {0}")]
    Driver(String),
    /// The HTTP listener failed.
    #[error("HTTP listener: {0}")]
    Io(#[from] std::io::Error),
}

struct ServerState {
    handle: CoreHandle,
    shards: usize,
}

/// Runs the RelayDesk SFU with its HTTP offer/answer endpoint on `http` until SIGINT/SIGTERM.
pub async fn serve(http: SocketAddr, media_ip: IpAddr, shards: usize) -> Result<(), ServeError> {
    let config = DriverConfig::new(media_ip, shards);
    let (handle, mut events) = Driver::start(&config, |_, addr| {
        let mut c = SfuConfig::new(vec![addr]);
        c.max_rooms = 100_000;
        Sfu::new(c)
    })
    .map_err(|e| ServeError::Driver(e.to_string()))?;
    // Events are not needed here; drain them so they never pile up.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let shards = handle.shard_count();
    let state = Arc::new(ServerState {
        handle: handle.clone(),
        shards,
    });
    let app = Router::new()
        .route("/rooms/{room}/{participant}/{role}", post(join))
        .route("/rooms/{room}", delete(close))
        .route("/stats", get(stats))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(http).await?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, shards, "serve-sfu listening");
    // The one line on stdout: scripts and tests read the bound address (port 0 picks a free one).
    println!("listening on http://{bound}");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    let _ = handle.shutdown(Duration::from_secs(5));
    Ok(())
}

async fn join(
    State(s): State<Arc<ServerState>>,
    Path((room, participant, role)): Path<(u64, u64, String)>,
    offer: String,
) -> Result<String, (StatusCode, String)> {
    let role = match role.as_str() {
        "visitor" => Role::Visitor,
        "agent" => Role::Agent,
        _ => return Err((StatusCode::BAD_REQUEST, "role must be visitor or agent".into())),
    };
    let shard = (room % s.shards as u64) as usize;
    // The room may exist already (the second side): that error is expected and ignored.
    let _ = s
        .handle
        .command(shard, Command::CreateRoom { room: RoomId(room) })
        .await;
    let reply = s
        .handle
        .command(
            shard,
            Command::AddParticipant {
                room: RoomId(room),
                participant: ParticipantId(participant),
                role,
                offer,
            },
        )
        .await
        .map_err(|e| (StatusCode::CONFLICT, format!("{e:?}")))?;
    match reply {
        Reply::Answer(a) => Ok(a),
        other => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected reply {other:?}"))),
    }
}

async fn close(State(s): State<Arc<ServerState>>, Path(room): Path<u64>) -> StatusCode {
    let shard = (room % s.shards as u64) as usize;
    match s.handle.command(shard, Command::CloseRoom { room: RoomId(room) }).await {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::NOT_FOUND,
    }
}

async fn stats(State(s): State<Arc<ServerState>>) -> axum::Json<serde_json::Value> {
    let st = s.handle.stats();
    let sum = |f: fn(&relaydesk_sfu::ShardStats) -> u64| st.iter().map(f).sum::<u64>();
    axum::Json(serde_json::json!({
        "packets_in": sum(|s| s.packets_in),
        "packets_out": sum(|s| s.packets_out),
        "bytes_in": sum(|s| s.bytes_in),
        "bytes_out": sum(|s| s.bytes_out),
        "send_dropped": sum(|s| s.send_dropped),
    }))
}

/// The client side: rooms of two on a `serve-sfu` process.
pub struct SfuTarget {
    http: Client,
    media_ip: IpAddr,
}

impl SfuTarget {
    /// A target for the `serve-sfu` endpoint behind `http`; media sockets bind to `media_ip`.
    pub fn new(http: Client, media_ip: IpAddr) -> SfuTarget {
        SfuTarget { http, media_ip }
    }

    async fn join(&self, ctx: &Ctx, room: u64, pid: u64, role: &str) -> Result<(), StageFailure> {
        let mut peer = Peer::new(self.media_ip).map_err(|e| StageFailure::new("join", e))?;
        let (offer, pending) = peer
            .offer(ctx.audio, ctx.video, Direction::SendRecv)
            .map_err(|e| StageFailure::new("join", e))?;
        let r = self
            .http
            .request_raw("POST", &format!("/rooms/{room}/{pid}/{role}"), offer.into_bytes())
            .await
            .map_err(|e| StageFailure::new("join", e))?;
        if r.status != 200 {
            return Err(StageFailure::new(
                "join",
                format!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body)),
            ));
        }
        let answer = String::from_utf8(r.body).map_err(|_| StageFailure::new("join", "answer not UTF-8"))?;
        peer.accept_answer(pending, &answer)
            .map_err(|e| StageFailure::new("join", e))?;
        ctx.engine.add(peer).map_err(|e| StageFailure::new("join", e))
    }
}

impl Target for SfuTarget {
    fn name(&self) -> &'static str {
        "relaydesk-sfu"
    }

    async fn preflight(&self) -> Result<(), String> {
        let r = self
            .http
            .request("GET", "/stats", &[], None)
            .await
            .map_err(|e| format!("serve-sfu unreachable: {e}"))?;
        if r.status != 200 || r.json()["packets_out"].is_null() {
            return Err(format!(
                "{} is not a `relaydesk-loadtest serve-sfu` endpoint (HTTP {})",
                self.http.base().authority(),
                r.status
            ));
        }
        Ok(())
    }

    async fn alive(&self) -> bool {
        self.http
            .request_timeout("GET", "/stats", &[], None, Duration::from_secs(3))
            .await
            .is_ok_and(|r| r.status == 200)
    }

    async fn conversation(&self, index: u64, ctx: &Ctx) -> Result<(), StageFailure> {
        let t0 = Instant::now();
        let room = index + 1;
        self.join(ctx, room, room * 2, "visitor").await?;
        ctx.stage("visitor_joined", t0);
        self.join(ctx, room, room * 2 + 1, "agent").await?;
        ctx.stage("agent_joined", t0);
        ctx.ready();
        ctx.until_stopped().await;
        let _ = self
            .http
            .request_raw("DELETE", &format!("/rooms/{room}"), Vec::new())
            .await;
        Ok(())
    }
}
