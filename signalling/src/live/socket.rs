//! The per-socket task: moves frames between a WebSocket and the hub, with keepalive, limits and shutdown.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;

use crate::http::SharedState;

/// What the hub sends to a socket.
#[derive(Debug)]
pub(crate) enum Out {
    /// One JSON text frame.
    Text(String),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// The sending side of a socket's queue. The hub never waits on it: a full outbox drops the socket.
pub(crate) type Outbox = mpsc::Sender<Out>;

/// Frames queued per socket before it counts as a slow consumer.
pub(crate) const OUTBOX_CAPACITY: usize = 1024;
/// Largest WebSocket message the library accepts at all (bigger: close 1009). Frames between
/// [`MAX_FRAME_BYTES`](crate::chat_protocol::MAX_FRAME_BYTES) and this get a `too_large` error frame.
pub(crate) const HARD_MESSAGE_LIMIT: usize = 64 * 1024;
/// Time allowed for one write to the client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the first frame (`hello` or `resume`).
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A token bucket: `rate` per second, at most `burst` at once.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The answer to a plain HTTP request on a WebSocket route: 426 with the reason in the logged detail.
pub(crate) fn upgrade_required(
    e: &axum::extract::ws::rejection::WebSocketUpgradeRejection,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    crate::http::ApiError::new(
        axum::http::StatusCode::UPGRADE_REQUIRED,
        "websocket_required",
        "a WebSocket upgrade is required",
    )
    .with_detail(e.body_text())
    .into_response()
}

/// One slot of a socket pool (`live.max_sockets` for visitors, `live.limits.max_agent_sockets` for agents);
/// the error is the 503 to answer when all are taken.
pub(crate) fn acquire_slot(
    pool: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<tokio::sync::OwnedSemaphorePermit, crate::http::ApiError> {
    std::sync::Arc::clone(pool).try_acquire_owned().map_err(|_| {
        crate::http::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sockets",
            "too many open sockets; retry later",
        )
    })
}

/// Sends a close frame (best effort, bounded).
pub(crate) async fn close_ws(ws: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
}

/// Waits for the first text frame (bounded). `None`: closed, timed out, or not text.
pub(crate) async fn first_text(ws: &mut WebSocket, state: &SharedState) -> Option<String> {
    let stop = state.shutdown.stopped();
    tokio::select! {
        _ = stop => None,
        r = tokio::time::timeout(FIRST_FRAME_TIMEOUT, async {
            loop {
                match ws.recv().await {
                    Some(Ok(Message::Text(t))) => return Some(t.as_str().to_owned()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return None,
                }
            }
        }) => r.ok().flatten(),
    }
}

/// Runs a socket until it closes, the hub drops or closes it, keepalive fails, or the server shuts down.
/// `on_text` gets every text frame received.
pub(crate) async fn pump<F>(ws: WebSocket, mut outbox: mpsc::Receiver<Out>, state: &SharedState, mut on_text: F)
where
    F: FnMut(&str),
{
    let (mut sink, mut stream) = ws.split();
    let interval = Duration::from_secs(state.config.live.ping_interval_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let stop = state.shutdown.stopped();
    tokio::pin!(stop);
    let close = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))
    };
    let final_frame = loop {
        tokio::select! {
            // The shutdown signal first: when the hub's own frames for the stop (a conversation ended on the
            // way down) are ready in the same wake-up, the socket still says why it closes (1001).
            biased;
            _ = &mut stop => break Some(close(1001, "server shutting down")),
            out = outbox.recv() => match out {
                Some(Out::Text(text)) => {
                    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Text(text.into()))).await {
                        Ok(Ok(())) => {}
                        _ => break None,
                    }
                }
                Some(Out::Close(code, reason)) => break Some(close(code, reason)),
                None => break Some(close(super::close::SLOW_CONSUMER, "too slow to read")),
            },
            msg = stream.next() => {
                last_seen = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => on_text(t.as_str()),
                    Some(Ok(Message::Binary(_))) => on_text("\u{0}binary"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "socket read failed");
                        break None;
                    }
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > interval * 2 {
                    break Some(close(super::close::KEEPALIVE, "keepalive timeout"));
                }
                if tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Default::default()))).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some(frame) = final_frame {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(frame)).await;
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
}
