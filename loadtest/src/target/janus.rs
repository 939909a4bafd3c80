//! Janus VideoRoom over its HTTP API (long poll), per `JANUS.md`: a room of two per conversation; each
//! side creates a session, publishes audio and video on one peer connection (`joinandconfigure` with a
//! non-trickle offer) and subscribes to the other side's feed on a second one (Janus offers, we answer,
//! then `start`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use str0m::media::Direction;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Ctx, StageFailure, Target};
use crate::http::Client;
use crate::media::Peer;

/// The Janus target.
pub struct JanusTarget {
    http: Client,
    media_ip: std::net::IpAddr,
    room_base: u64,
}

impl JanusTarget {
    /// A target talking to Janus's HTTP transport at `http` (e.g. `http://127.0.0.1:8088/janus`); media
    /// sockets bind to `media_ip`.
    pub fn new(http: Client, media_ip: std::net::IpAddr) -> JanusTarget {
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let room_base = 1_000_000 + u64::from(u32::from_le_bytes(r) % 1_000_000) * 1000;
        JanusTarget {
            http,
            media_ip,
            room_base,
        }
    }
}

static TX: AtomicU64 = AtomicU64::new(1);

fn transaction() -> String {
    format!("t{}", TX.fetch_add(1, Ordering::Relaxed))
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// One Janus session with its long-poll task.
struct Session {
    http: Client,
    id: u64,
    pending: Pending,
    poller: JoinHandle<()>,
}

fn janus_error(v: &Value) -> Option<String> {
    if v["janus"] == "error" {
        return Some(format!(
            "janus error {}: {}",
            v["error"]["code"],
            v["error"]["reason"].as_str().unwrap_or("?")
        ));
    }
    let data = &v["plugindata"]["data"];
    if let Some(e) = data.get("error") {
        return Some(format!(
            "videoroom error {}: {}",
            data["error_code"],
            e.as_str().unwrap_or("?")
        ));
    }
    None
}

impl Session {
    async fn create(http: &Client) -> Result<Session, String> {
        let r = http
            .request(
                "POST",
                "",
                &[],
                Some(&json!({"janus": "create", "transaction": transaction()})),
            )
            .await
            .map_err(|e| e.to_string())?;
        let v = r.json();
        if let Some(e) = janus_error(&v) {
            return Err(e);
        }
        let id = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| format!("no session id (HTTP {})", r.status))?;
        let pending: Pending = Arc::default();
        let poller = tokio::spawn(poll_loop(http.clone(), id, pending.clone()));
        Ok(Session {
            http: http.clone(),
            id,
            pending,
            poller,
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let r = self
            .http
            .request("POST", path, &[], Some(&body))
            .await
            .map_err(|e| e.to_string())?;
        let v = r.json();
        if let Some(e) = janus_error(&v) {
            return Err(e);
        }
        if r.status != 200 {
            return Err(format!("HTTP {}", r.status));
        }
        Ok(v)
    }

    async fn attach(&self) -> Result<u64, String> {
        let v = self
            .post(
                &format!("/{}", self.id),
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": transaction()}),
            )
            .await?;
        v["data"]["id"].as_u64().ok_or_else(|| "no handle id".to_string())
    }

    /// A plugin request answered synchronously (`create`).
    async fn sync_message(&self, handle: u64, body: Value) -> Result<Value, String> {
        let v = self
            .post(
                &format!("/{}/{handle}", self.id),
                json!({"janus": "message", "transaction": transaction(), "body": body}),
            )
            .await?;
        Ok(v["plugindata"]["data"].clone())
    }

    /// A plugin request answered by an event on the long poll (`join`, `joinandconfigure`, `start`).
    async fn async_message(&self, handle: u64, body: Value, jsep: Option<Value>) -> Result<Value, String> {
        let tx = transaction();
        let (send, recv) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tx.clone(), send);
        let mut msg = json!({"janus": "message", "transaction": tx, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let ack = self.post(&format!("/{}/{handle}", self.id), msg).await;
        if let Err(e) = ack {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&tx);
            return Err(e);
        }
        match tokio::time::timeout(Duration::from_secs(20), recv).await {
            Ok(Ok(ev)) => match janus_error(&ev) {
                Some(e) => Err(e),
                None => Ok(ev),
            },
            Ok(Err(_)) => Err("session poller ended".into()),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&tx);
                Err("no event within 20 s".into())
            }
        }
    }

    async fn destroy(self) {
        self.poller.abort();
        let _ = self
            .http
            .request_timeout(
                "POST",
                &format!("/{}", self.id),
                &[],
                Some(&json!({"janus": "destroy", "transaction": transaction()})),
                Duration::from_secs(3),
            )
            .await;
    }
}

async fn poll_loop(http: Client, session: u64, pending: Pending) {
    let mut failures = 0u32;
    loop {
        match http
            .request_timeout(
                "GET",
                &format!("/{session}?maxev=10"),
                &[],
                None,
                Duration::from_secs(65),
            )
            .await
        {
            Ok(r) => {
                failures = 0;
                let events = match r.json() {
                    Value::Array(a) => a,
                    v => vec![v],
                };
                for ev in events {
                    if let Some(tx) = ev["transaction"].as_str()
                        && ev["janus"] != "ack"
                        && let Some(s) = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(tx)
                    {
                        let _ = s.send(ev);
                    }
                }
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, session, "janus long poll failed");
                if failures > 5 {
                    // Dropping the pending senders wakes the waiters with an error.
                    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            }
        }
    }
}

struct Side {
    session: Session,
    publisher: u64,
    feed: u64,
}

impl JanusTarget {
    async fn publish(
        &self,
        ctx: &Ctx,
        room: u64,
        name: &str,
        create_room: bool,
        t0: Instant,
    ) -> Result<Side, StageFailure> {
        let session = Session::create(&self.http)
            .await
            .map_err(|e| StageFailure::new("session", e))?;
        ctx.stage("session", t0);
        let publisher = session.attach().await.map_err(|e| StageFailure::new("attach", e))?;
        if create_room {
            let r = session
                .sync_message(
                    publisher,
                    json!({"request": "create", "room": room, "publishers": 2, "bitrate": 2_000_000,
                           "audiocodec": "opus", "videocodec": "vp8", "is_private": true}),
                )
                .await
                .map_err(|e| StageFailure::new("room", e))?;
            if r["videoroom"] != "created" {
                return Err(StageFailure::new("room", format!("unexpected answer {r}")));
            }
            ctx.stage("room", t0);
        }
        let mut peer = Peer::new(self.media_ip).map_err(|e| StageFailure::new("publish", e))?;
        let (offer, pending) = peer
            .offer(ctx.audio, ctx.video, Direction::SendOnly)
            .map_err(|e| StageFailure::new("publish", e))?;
        let ev = session
            .async_message(
                publisher,
                json!({"request": "joinandconfigure", "room": room, "ptype": "publisher", "display": name,
                       "audio": ctx.audio, "video": ctx.video}),
                Some(json!({"type": "offer", "sdp": offer, "trickle": false})),
            )
            .await
            .map_err(|e| StageFailure::new("publish", e))?;
        let feed = ev["plugindata"]["data"]["id"]
            .as_u64()
            .ok_or_else(|| StageFailure::new("publish", "no feed id"))?;
        let answer = ev["jsep"]["sdp"]
            .as_str()
            .ok_or_else(|| StageFailure::new("publish", "no SDP answer"))?;
        tracing::trace!(%answer, "janus publisher answer");
        peer.accept_answer(pending, answer)
            .map_err(|e| StageFailure::new("publish", e))?;
        ctx.engine.add(peer).map_err(|e| StageFailure::new("publish", e))?;
        ctx.stage("published", t0);
        Ok(Side {
            session,
            publisher,
            feed,
        })
    }

    async fn subscribe(&self, ctx: &Ctx, side: &Side, room: u64, feed: u64, t0: Instant) -> Result<(), StageFailure> {
        let handle = side
            .session
            .attach()
            .await
            .map_err(|e| StageFailure::new("subscribe", e))?;
        // The feed is live only once the publisher's peer connection is up: until then Janus answers
        // 428 "No such feed". Retry for a bounded time.
        let deadline = Instant::now() + Duration::from_secs(15);
        let ev = loop {
            let join = json!({"request": "join", "room": room, "ptype": "subscriber", "streams": [{"feed": feed}]});
            match side.session.async_message(handle, join, None).await {
                Ok(ev) => break ev,
                Err(e) if e.contains("428") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(StageFailure::new("subscribe", e)),
            }
        };
        let offer = ev["jsep"]["sdp"]
            .as_str()
            .ok_or_else(|| StageFailure::new("subscribe", "no SDP offer"))?;
        let mut peer = Peer::new(self.media_ip).map_err(|e| StageFailure::new("subscribe", e))?;
        let answer = peer
            .accept_offer(offer)
            .map_err(|e| StageFailure::new("subscribe", e))?;
        side.session
            .async_message(
                handle,
                json!({"request": "start", "room": room}),
                Some(json!({"type": "answer", "sdp": answer, "trickle": false})),
            )
            .await
            .map_err(|e| StageFailure::new("subscribe", e))?;
        ctx.engine.add(peer).map_err(|e| StageFailure::new("subscribe", e))?;
        ctx.stage("subscribed", t0);
        Ok(())
    }
}

impl Target for JanusTarget {
    fn name(&self) -> &'static str {
        "janus"
    }

    async fn preflight(&self) -> Result<(), String> {
        let r = self
            .http
            .request("GET", "/info", &[], None)
            .await
            .map_err(|e| format!("Janus unreachable: {e}"))?;
        let v = r.json();
        if v["janus"] != "server_info" {
            return Err(format!(
                "{} does not look like Janus (HTTP {})",
                self.http.base().authority(),
                r.status
            ));
        }
        if v["plugins"].get("janus.plugin.videoroom").is_none() {
            return Err("Janus has no VideoRoom plugin loaded".into());
        }
        Ok(())
    }

    async fn alive(&self) -> bool {
        self.http
            .request_timeout("GET", "/info", &[], None, Duration::from_secs(3))
            .await
            .is_ok_and(|r| r.status == 200)
    }

    async fn conversation(&self, index: u64, ctx: &Ctx) -> Result<(), StageFailure> {
        let t0 = Instant::now();
        let room = self.room_base + index;
        let a = self.publish(ctx, room, "visitor", true, t0).await?;
        let b = match self.publish(ctx, room, "agent", false, t0).await {
            Ok(b) => b,
            Err(e) => {
                a.session.destroy().await;
                return Err(e);
            }
        };
        let subscribed = async {
            self.subscribe(ctx, &a, room, b.feed, t0).await?;
            self.subscribe(ctx, &b, room, a.feed, t0).await
        }
        .await;
        if subscribed.is_ok() {
            ctx.ready();
            ctx.until_stopped().await;
        }
        let _ = a
            .session
            .sync_message(a.publisher, json!({"request": "destroy", "room": room}))
            .await;
        let _ = b.publisher;
        a.session.destroy().await;
        b.session.destroy().await;
        subscribed
    }
}
