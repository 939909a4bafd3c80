//! The per-socket task: moves frames between a WebSocket and the hub, with keepalive, limits and shutdown.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, watch};

use crate::chat_protocol::{ErrorCode, MAX_FRAME_BYTES, check_chat_message, parse_frame};
use crate::shutdown::ShutdownHandle;

/// What the hub sends to a socket.
#[derive(Debug)]
pub(crate) enum Out {
    /// One JSON text frame.
    Text(String),
    /// JSON text frames written in order (a history replay). It takes one slot of the queue however many
    /// frames it holds; its frames count in the socket's replay backlog until written.
    Batch(Vec<String>),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// A close code and reason.
type CloseWith = Option<(u16, &'static str)>;

/// What both ends of a socket's queue share.
#[derive(Debug)]
struct Shared {
    /// Frames of queued batches not yet written.
    backlog: AtomicUsize,
    /// Bytes of queued single frames (`Out::Text`) not yet written.
    queued_bytes: AtomicUsize,
    /// Set once to make the socket task close the socket at once (its queue may be full).
    kill: watch::Sender<CloseWith>,
}

/// The sending side of a socket's queue. The hub never waits on it: a full queue (a client that does not
/// read fast enough) closes the socket with 4429, whoever else holds a clone.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Out>,
    shared: Arc<Shared>,
}

/// The receiving side of a socket's queue, read by [`pump`].
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
    kill: watch::Receiver<CloseWith>,
}

/// A socket's queue: [`OUTBOX_CAPACITY`] entries.
pub(crate) fn outbox() -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
    let (kill_tx, kill) = watch::channel(None);
    let shared = Arc::new(Shared {
        backlog: AtomicUsize::new(0),
        queued_bytes: AtomicUsize::new(0),
        kill: kill_tx,
    });
    (
        Outbox {
            tx,
            shared: Arc::clone(&shared),
        },
        Inbox { rx, shared, kill },
    )
}

impl Outbox {
    /// Queues `out` if there is room (best effort: a full queue drops it).
    pub(crate) fn try_send(&self, out: Out) -> Result<(), mpsc::error::TrySendError<Out>> {
        // Counted like every single frame (the socket task takes it off when it writes it).
        let n = match &out {
            Out::Text(text) => text.len(),
            Out::Batch(_) | Out::Close(..) => 0,
        };
        self.shared.queued_bytes.fetch_add(n, Ordering::Relaxed);
        let sent = self.tx.try_send(out);
        if sent.is_err() {
            self.shared.queued_bytes.fetch_sub(n, Ordering::Relaxed);
        }
        sent
    }

    /// Queues one frame; when the queue is full (frames or bytes) or gone the socket is closed with 4429 and
    /// this is `false`.
    pub(crate) fn send_text(&self, text: String) -> bool {
        let n = text.len();
        let before = self.shared.queued_bytes.fetch_add(n, Ordering::Relaxed);
        if before + n > OUTBOX_MAX_BYTES {
            self.shared.queued_bytes.fetch_sub(n, Ordering::Relaxed);
            self.slow_consumer();
            return false;
        }
        if self.queue(Out::Text(text)) {
            true
        } else {
            self.shared.queued_bytes.fetch_sub(n, Ordering::Relaxed);
            false
        }
    }

    /// Queues a replay as one entry, written in order before anything queued after it. Refused (the socket
    /// is closed with 4429, `false`) when more than `backlog` frames of earlier replays are still unwritten
    /// (so one replay of any length is always taken by a socket that keeps up), or the queue is full.
    pub(crate) fn send_batch(&self, frames: Vec<String>, backlog: usize) -> bool {
        if frames.is_empty() {
            return true;
        }
        let n = frames.len();
        let before = self.shared.backlog.fetch_add(n, Ordering::Relaxed);
        if before > backlog {
            self.shared.backlog.fetch_sub(n, Ordering::Relaxed);
            self.slow_consumer();
            return false;
        }
        if self.queue(Out::Batch(frames)) {
            true
        } else {
            self.shared.backlog.fetch_sub(n, Ordering::Relaxed);
            false
        }
    }

    /// `false` when the frame was not queued: the queue is full (the socket is then closed with 4429) or
    /// the socket task is gone.
    fn queue(&self, out: Out) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow_consumer();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn slow_consumer(&self) {
        metrics::counter!("relaydesk_ws_slow_consumers_total").increment(1);
        self.kill(super::close::SLOW_CONSUMER, "too slow to read");
    }

    /// Closes the socket after the frames already queued; at once when the queue is full.
    pub(crate) fn close(&self, code: u16, reason: &'static str) {
        if self.tx.try_send(Out::Close(code, reason)).is_err() {
            self.kill(code, reason);
        }
    }

    /// Closes the socket at once with `code`, dropping what is queued (the first call wins).
    pub(crate) fn kill(&self, code: u16, reason: &'static str) {
        self.shared.kill.send_if_modified(|v| {
            if v.is_none() {
                *v = Some((code, reason));
                true
            } else {
                false
            }
        });
    }

    /// Completes when the socket task is gone.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// Frames queued per socket before it counts as a slow consumer.
pub(crate) const OUTBOX_CAPACITY: usize = 1024;
/// Bytes of single frames queued per socket before it counts as a slow consumer (whichever of this and
/// [`OUTBOX_CAPACITY`] comes first). With the replay bound this bounds what one socket that stopped reading
/// makes the server hold.
pub(crate) const OUTBOX_MAX_BYTES: usize = 1024 * 1024;
/// Largest WebSocket message the library accepts at all (bigger: close 1009). Frames between
/// [`MAX_FRAME_BYTES`](crate::chat_protocol::MAX_FRAME_BYTES) and this get a `too_large` error frame.
pub(crate) const HARD_MESSAGE_LIMIT: usize = 64 * 1024;
/// Time allowed for one write to the client.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the close frame and the close of a socket that is being dropped as a slow consumer
/// (its buffers are full: waiting longer would not get the frame through).
pub(crate) const SLOW_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a socket waits, once the server stops, for the hub's last frames and close.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);
/// Time allowed for the first frame (`hello` or `resume`).
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The gate every text frame of a visitor or agent socket passes before it reaches the hub: the frame rate
/// (ten times the message rate), the frame's size and its parse; for a chat message also its client id and
/// body, then the message rate. A refusal is the code and text of the `error` frame the client gets; the
/// socket stays open.
#[derive(Debug)]
pub(crate) struct FrameGate {
    frames: Bucket,
    messages: Bucket,
    max_body: usize,
}

impl FrameGate {
    /// The gate of one socket, by the `[live]` rates and body limit.
    pub(crate) fn new(cfg: &crate::live_config::LiveConfig, now: Instant) -> Self {
        Self {
            frames: Bucket::new(
                cfg.messages_per_second.saturating_mul(10),
                cfg.message_burst.saturating_mul(10),
                now,
            ),
            messages: Bucket::new(cfg.messages_per_second, cfg.message_burst, now),
            max_body: cfg.max_message_bytes,
        }
    }

    /// Takes a frame: the frame rate, then the size and the parse.
    pub(crate) fn frame<T: serde::de::DeserializeOwned>(&mut self, text: &str, now: Instant) -> Result<T, Refused> {
        if !self.frames.take(now) {
            return Err((ErrorCode::RateLimited, "too many frames; slow down".into()));
        }
        parse_frame(text, MAX_FRAME_BYTES).map_err(|e| (e.code(), e.to_string()))
    }

    /// Takes a chat message of a parsed frame: its client id and body, then the message rate.
    pub(crate) fn message(&mut self, client_id: &str, body: &str, now: Instant) -> Result<(), Refused> {
        check_chat_message(client_id, body, self.max_body).map_err(|e| (e.code(), e.to_string()))?;
        if !self.messages.take(now) {
            return Err((ErrorCode::RateLimited, "too many messages per second; slow down".into()));
        }
        Ok(())
    }
}

/// Why [`FrameGate`] refused a frame: the code and text of the `error` frame.
pub(crate) type Refused = (ErrorCode, String);

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
    crate::http::plumbing::ApiError::new(
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
) -> Result<tokio::sync::OwnedSemaphorePermit, crate::http::plumbing::ApiError> {
    std::sync::Arc::clone(pool).try_acquire_owned().map_err(|_| {
        crate::http::plumbing::ApiError::new(
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

/// Waits for the first text frame (bounded). `None`: closed, timed out, not text, or the server stops.
pub(crate) async fn first_text(ws: &mut WebSocket, shutdown: &ShutdownHandle) -> Option<String> {
    let stop = shutdown.stopped();
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

/// How a write to the client ended.
enum Wrote {
    /// Written.
    Done,
    /// The connection failed.
    Gone,
    /// Not written within [`WRITE_TIMEOUT`], or the socket was killed meanwhile (its queue overflowed):
    /// close at once with this code, without waiting on the full buffers.
    Stuck(u16, &'static str),
}

/// Writes one message, giving up after [`WRITE_TIMEOUT`] or as soon as the socket is killed.
async fn write<S>(sink: &mut S, msg: Message, kill: &mut watch::Receiver<CloseWith>) -> Wrote
where
    S: futures_util::Sink<Message> + Unpin,
{
    let slow = (super::close::SLOW_CONSUMER, "too slow to read");
    tokio::select! {
        r = tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)) => match r {
            Ok(Ok(())) => Wrote::Done,
            Ok(Err(_)) => Wrote::Gone,
            Err(_) => Wrote::Stuck(slow.0, slow.1),
        },
        changed = kill.changed() => {
            let (code, reason) = if changed.is_ok() { (*kill.borrow()).unwrap_or(slow) } else { slow };
            Wrote::Stuck(code, reason)
        }
    }
}

/// Runs a socket until it closes, the hub closes it (in order, or at once when its queue overflowed),
/// keepalive fails, a write times out (4429), or the server shuts down. `on_text` gets every text frame
/// received. A replay batch is written one frame per turn, so reading, pings and shutdown are not held up.
///
/// A client that stops reading is dropped within a bound: once its connection's buffers are full a write
/// blocks, and after [`WRITE_TIMEOUT`] (or at once, when the hub overflows its queue meanwhile:
/// [`OUTBOX_CAPACITY`] frames or [`OUTBOX_MAX_BYTES`]) the socket is closed, spending at most
/// [`SLOW_CLOSE_TIMEOUT`] each on the close frame and the close.
/// Pings go every `ping_interval`; `shutdown` ends the socket.
pub(crate) async fn pump<F>(
    ws: WebSocket,
    inbox: Inbox,
    ping_interval: Duration,
    shutdown: &ShutdownHandle,
    mut on_text: F,
) where
    F: FnMut(&str),
{
    let Inbox {
        rx: mut outbox,
        shared,
        mut kill,
    } = inbox;
    let (mut sink, mut stream) = ws.split();
    let interval = ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let stop = shutdown.stopped();
    tokio::pin!(stop);
    let close = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))
    };
    // Once the server stops, the hub's last frames (`ended` with reason `closed`) and its close are still
    // written, for at most this long.
    let drain = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(drain);
    let mut stopping = false;
    let mut pending: VecDeque<String> = VecDeque::new();
    // The final frame, and whether the connection is stuck (its close gets the short timeout).
    let (final_frame, stuck) = loop {
        if let Some((code, reason)) = *kill.borrow() {
            break (Some(close(code, reason)), true);
        }
        let wrote = tokio::select! {
            // On shutdown the socket keeps writing what the hub queues (the conversation ended on the way
            // down, `closed`) until the hub closes it (1001), bounded by SHUTDOWN_DRAIN.
            biased;
            _ = &mut stop, if !stopping => {
                stopping = true;
                drain.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_DRAIN);
                Wrote::Done
            }
            _ = &mut drain, if stopping => break (Some(close(1001, "server shutting down")), false),
            changed = kill.changed() => if changed.is_err() { break (None, false) } else { continue },
            out = outbox.recv(), if pending.is_empty() => match out {
                Some(Out::Text(text)) => {
                    let n = text.len();
                    let _ = shared
                        .queued_bytes
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(n)));
                    write(&mut sink, Message::Text(text.into()), &mut kill).await
                }
                Some(Out::Batch(frames)) => {
                    pending = frames.into();
                    Wrote::Done
                }
                Some(Out::Close(code, reason)) => break (Some(close(code, reason)), false),
                None => break (Some(close(super::close::SLOW_CONSUMER, "too slow to read")), true),
            },
            msg = stream.next() => {
                last_seen = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => on_text(t.as_str()),
                    Some(Ok(Message::Binary(_))) => on_text("\u{0}binary"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break (None, false),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "socket read failed");
                        break (None, false);
                    }
                }
                Wrote::Done
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > interval * 2 {
                    break (Some(close(super::close::KEEPALIVE, "keepalive timeout")), false);
                }
                write(&mut sink, Message::Ping(Default::default()), &mut kill).await
            }
            // Last: a replay being written never holds up reading, pings or the shutdown.
            _ = std::future::ready(()), if !pending.is_empty() => {
                match pending.pop_front() {
                    Some(text) => {
                        shared.backlog.fetch_sub(1, Ordering::Relaxed);
                        write(&mut sink, Message::Text(text.into()), &mut kill).await
                    }
                    None => Wrote::Done,
                }
            }
        };
        match wrote {
            Wrote::Done => {}
            Wrote::Gone => break (None, false),
            Wrote::Stuck(code, reason) => break (Some(close(code, reason)), true),
        }
    };
    // Frames never written are not counted any more (the hub may still hold the sending side).
    shared.backlog.fetch_sub(pending.len(), Ordering::Relaxed);
    let limit = if stuck { SLOW_CLOSE_TIMEOUT } else { WRITE_TIMEOUT };
    if let Some(frame) = final_frame {
        let _ = tokio::time::timeout(limit, sink.send(frame)).await;
    }
    let _ = tokio::time::timeout(limit, sink.close()).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn killed(inbox: &Inbox) -> CloseWith {
        *inbox.kill.borrow()
    }

    #[test]
    fn a_full_queue_closes_the_socket_with_4429() {
        let (tx, inbox) = outbox();
        let clone = tx.clone();
        for i in 0..OUTBOX_CAPACITY {
            assert!(tx.send_text(format!("{i}")), "frame {i}");
        }
        assert_eq!(killed(&inbox), None);
        assert!(!tx.send_text("one too many".into()));
        // Whoever else holds a sender, the socket task is told to close.
        drop(clone);
        assert_eq!(
            killed(&inbox).map(|(code, _)| code),
            Some(super::super::close::SLOW_CONSUMER)
        );
    }

    #[test]
    fn queued_bytes_are_capped_too() {
        let (tx, mut inbox) = outbox();
        let frame = "x".repeat(64 * 1024);
        let fits = OUTBOX_MAX_BYTES / frame.len();
        for i in 0..fits {
            assert!(tx.send_text(frame.clone()), "frame {i}");
        }
        assert_eq!(killed(&inbox), None);
        assert_eq!(inbox.shared.queued_bytes.load(Ordering::Relaxed), fits * frame.len());
        // Far fewer frames than OUTBOX_CAPACITY, but one more byte than allowed: a slow consumer.
        assert!(!tx.send_text("y".into()));
        assert_eq!(
            killed(&inbox).map(|(code, _)| code),
            Some(super::super::close::SLOW_CONSUMER)
        );
        assert_eq!(inbox.shared.queued_bytes.load(Ordering::Relaxed), fits * frame.len());
        assert!(matches!(inbox.rx.try_recv().unwrap(), Out::Text(t) if t.len() == frame.len()));
    }

    #[test]
    fn best_effort_frames_count_in_the_bytes_too() {
        let (tx, inbox) = outbox();
        assert!(tx.try_send(Out::Text("welcome".into())).is_ok());
        assert!(tx.try_send(Out::Close(1000, "bye")).is_ok());
        assert_eq!(inbox.shared.queued_bytes.load(Ordering::Relaxed), "welcome".len());
    }

    #[test]
    fn a_close_follows_the_queued_frames_or_happens_at_once_when_full() {
        let (tx, mut inbox) = outbox();
        assert!(tx.send_text("a".into()));
        tx.close(1000, "done");
        assert!(matches!(inbox.rx.try_recv().unwrap(), Out::Text(t) if t == "a"));
        assert!(matches!(inbox.rx.try_recv().unwrap(), Out::Close(1000, _)));
        assert_eq!(killed(&inbox), None);

        let (tx, inbox) = outbox();
        while tx.try_send(Out::Text(String::new())).is_ok() {}
        tx.close(4401, "session ended");
        // The first close wins.
        tx.kill(4429, "too slow to read");
        assert_eq!(killed(&inbox).map(|(code, _)| code), Some(4401));
    }

    #[test]
    fn a_replay_takes_one_slot_and_the_unwritten_backlog_is_bounded() {
        let (tx, mut inbox) = outbox();
        let frames: Vec<String> = (0..3 * OUTBOX_CAPACITY).map(|i| i.to_string()).collect();
        assert!(tx.send_batch(frames, 10));
        assert!(tx.send_batch(Vec::new(), 10));
        assert!(tx.send_text("after".into()));
        assert!(matches!(inbox.rx.try_recv().unwrap(), Out::Batch(v) if v.len() == 3 * OUTBOX_CAPACITY));
        assert!(matches!(inbox.rx.try_recv().unwrap(), Out::Text(t) if t == "after"));
        assert_eq!(inbox.shared.backlog.load(Ordering::Relaxed), 3 * OUTBOX_CAPACITY);
        // More than `backlog` frames of earlier replays still unwritten: the next replay is refused.
        assert!(!tx.send_batch(vec!["x".into()], 10));
        assert_eq!(
            killed(&inbox).map(|(code, _)| code),
            Some(super::super::close::SLOW_CONSUMER)
        );
        assert_eq!(inbox.shared.backlog.load(Ordering::Relaxed), 3 * OUTBOX_CAPACITY);
    }
}
