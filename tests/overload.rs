//! The server under overload, through its real TLS listener: at its connection cap it refuses new
//! connections at once and takes them again when one ends; a TLS handshake, a request's headers or an idle
//! connection that take too long are cut at their timeouts; and a WebSocket client that stops reading is
//! dropped within a stated bound while the other conversations' chat goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use live_common::{Live, SHOP, Ws};
use relaydesk_signalling::live::LiveParts;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Reads until the peer closes (EOF, an error, or a TLS close); returns what arrived and when it ended.
/// Bounded by [`common::IO_TIMEOUT`].
async fn until_closed<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> (Vec<u8>, Instant) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(common::IO_TIMEOUT, async {
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server closed the connection");
    (buf, Instant::now())
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_are_refused_at_once_and_taken_again_later() {
    let live = Live::start(|c| c.http.max_connections = 3, LiveParts::default()).await;
    let c = live.client();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(c.try_connect_tls().await.expect("under the cap"));
    }
    // The fourth is closed before its TLS handshake completes: refused at once, not left in the listen queue
    // until a place frees.
    let over = tokio::time::timeout(common::IO_TIMEOUT, c.try_connect_tls())
        .await
        .expect("refused at once, not left hanging");
    assert!(over.is_err(), "a fourth connection at a cap of three");
    // The connections already in serve requests as usual.
    let tls = held.last_mut().unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = until_closed(tls).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // That connection ended: its place is free again (the server notices the end by itself).
    held.pop();
    let again = tokio::time::timeout(live_common::FRAME_TIMEOUT, async {
        loop {
            if let Ok(tls) = c.try_connect_tls().await {
                return tls;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(again.is_ok(), "a connection that ended gave its place back");
    // All gone: the server is back to normal (the refusals are counted).
    drop(again);
    drop(held);
    let mut probes = tokio::time::timeout(live_common::FRAME_TIMEOUT, async {
        loop {
            let probes: Vec<_> = futures_util::future::join_all((0..3).map(|_| c.try_connect_tls())).await;
            if probes.iter().all(Result::is_ok) {
                return probes;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every place came back");
    let probe = probes.pop().unwrap().unwrap();
    let mut probe = probe;
    probe
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (metrics, _) = until_closed(&mut probe).await;
    let refused = String::from_utf8_lossy(&metrics).to_string();
    assert!(
        refused
            .lines()
            .any(|l| l.starts_with("relaydesk_connections_refused_total{reason=\"server_full\"}")),
        "{refused}"
    );
}

#[tokio::test]
async fn a_tls_handshake_that_stalls_is_cut_at_the_handshake_timeout() {
    let live = Live::start(|c| c.http.handshake_timeout_secs = 1, LiveParts::default()).await;
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(live.running().local_addr())
        .await
        .unwrap();
    // The header of a TLS handshake record promising 512 bytes, then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
    let (got, ended) = until_closed(&mut tcp).await;
    assert!(got.is_empty(), "nothing is answered to half a handshake: {got:?}");
    let waited = ended - started;
    assert!(
        waited >= Duration::from_millis(900),
        "cut before its timeout: {waited:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_after_tls_is_cut_at_the_header_timeout() {
    let live = Live::start(|c| c.http.header_timeout_secs = 1, LiveParts::default()).await;
    let c = live.client();
    // Nothing at all after the handshake.
    let started = Instant::now();
    let mut tls = c.connect_tls().await;
    let (got, ended) = until_closed(&mut tls).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(ended - started >= Duration::from_millis(900), "{:?}", ended - started);
    // Idle between two requests of a kept-alive connection: the same timeout.
    let mut tls = c.connect_tls().await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let idle_from = Instant::now();
    let (_, ended) = until_closed(&mut tls).await;
    assert!(
        ended - idle_from >= Duration::from_millis(800),
        "{:?}",
        ended - idle_from
    );
}

#[tokio::test]
async fn headers_trickled_byte_by_byte_are_cut_at_the_header_timeout() {
    let live = Live::start(|c| c.http.header_timeout_secs = 1, LiveParts::default()).await;
    let mut tls = live.client().connect_tls().await;
    let started = Instant::now();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    // One header byte every 100 ms: each byte is progress, but the headers as a whole take too long. The
    // server closes the connection while the writes go on (a write then fails).
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut writes = 0;
    let cut = loop {
        tick.tick().await;
        writes += 1;
        assert!(writes < 200, "still open after 20 s of trickled headers");
        if tls.write_all(b"x").await.is_err() || tls.flush().await.is_err() {
            break Instant::now();
        }
        // Is the connection closed? (A timed-out header read gets at most an error response.)
        let mut b = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), tls.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Instant::now(),
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&b[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 4"), "{text}");
            }
            Err(_) => {}
        }
    };
    let waited = cut - started;
    assert!(
        waited >= Duration::from_millis(900),
        "cut before its timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "cut well after its timeout: {waited:?}"
    );
}

/// A visitor WebSocket over a TCP socket with a fixed receive buffer (so that a client that stops reading
/// backs the server up after a known amount of data; not smaller than two loopback segments, below which
/// the kernel stops sending window updates), after `hello` → `welcome`. Returns the socket and the size of
/// its receive buffer.
async fn small_buffer_visitor(live: &Live, token: &str) -> (Ws, u64) {
    let addr = live.running().local_addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(256 * 1024).unwrap();
    let rcvbuf = u64::from(socket.recv_buffer_size().unwrap());
    let tcp = socket.connect(addr).await.unwrap();
    let tls = live.client().tls_over(tcp).await.unwrap();
    let mut req = format!("wss://{addr}/api/v1/visitor/ws?token={token}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", SHOP.parse().unwrap());
    let (stream, _) = tokio::time::timeout(common::IO_TIMEOUT, tokio_tungstenite::client_async(req, tls))
        .await
        .unwrap()
        .unwrap();
    let mut ws = Ws {
        stream,
        log: Vec::new(),
    };
    ws.send(json!({"type": "hello"})).await;
    ws.expect("welcome").await;
    (ws, rcvbuf)
}

/// `st` of /proc/net/tcp for an established connection.
const TCP_ESTABLISHED: u8 = 0x01;

/// The state (`st` of /proc/net/tcp) of the IPv4 TCP socket whose local port is `local` and remote port
/// `remote`, if the kernel has one.
fn tcp_state(local: u16, remote: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
        (port(f.get(1)?)? == local && port(f.get(2)?)? == remote)
            .then(|| u8::from_str_radix(f.get(3)?, 16).ok())
            .flatten()
    })
}

/// Latency figures of a list of durations: (count, p50, p99, max) in ms.
fn figures(v: &mut [Duration]) -> (usize, f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]);
    (v.len(), at(0.5), at(0.99), ms(*v.last().unwrap()))
}

/// One round of chat in each of the `visitors`' conversations with the agent `agent`: each visitor sends a
/// message and the agent must receive it; the time from send to receipt is recorded.
async fn chat_round(visitors: &mut [Ws], agent: &mut Ws, round: usize, out: &mut Vec<Duration>) {
    for (i, v) in visitors.iter_mut().enumerate() {
        let body = format!("round {round} from visitor {i}");
        let sent = Instant::now();
        v.send(json!({"type": "message", "client_id": format!("r{round}"), "body": body}))
            .await;
        agent
            .expect_where(|f| f["type"] == "message" && f["body"] == body.as_str())
            .await;
        out.push(sent.elapsed());
        // The visitor's own copy, so its socket never backs up.
        v.expect("message").await;
    }
}

/// The agent `a` writes 4 KB messages into `conv` (reading its own copies) until `stop` is set or `limit`
/// bytes went out; `sent` counts the bytes. Returns the agent's socket.
fn flood(
    mut a: Ws,
    conv: String,
    limit: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Ws> {
    tokio::spawn(async move {
        let body = "z".repeat(4000);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < limit {
            for _ in 0..20 {
                n += 1;
                a.send(json!({"type": "message", "conversation": conv, "client_id": format!("f{n}"), "body": body}))
                    .await;
            }
            for _ in 0..20 {
                a.expect_where(|f| f["type"] == "message" && f["body"].as_str().is_some_and(|b| b.len() == 4000))
                    .await;
            }
            sent.fetch_add(20 * 4000, Ordering::Relaxed);
        }
        a
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_dropped_within_its_bound_while_the_other_conversations_chat_on() {
    // Five visitor sockets: the stalled one, one that reads, and three chatting. The sixth opens only once
    // the server has let the stalled one go: that is how the test sees the server drop it, whatever sits in
    // the buffers.
    let live = Live::start(
        |c| {
            c.live.max_sockets = 5;
            c.live.messages_per_second = 100_000;
            c.live.message_burst = 100_000;
            c.live.limits.max_text_bytes_per_conversation = 256 << 20;
            c.live.max_messages_per_conversation = 100_000;
        },
        LiveParts::default(),
    )
    .await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (_, bob) = live.user("bob", "agent", &["sales"]).await;

    // Alice takes the visitor that will stop reading, then goes away so that Bob gets the others.
    let mut a = live.agent(&alice).await;
    let stalled_token = live.token().await;
    let (mut stalled, rcvbuf) = small_buffer_visitor(&live, &stalled_token).await;
    let offer = a.expect("offered").await;
    let conv = offer["conversation"].as_str().unwrap().to_string();
    a.send(json!({"type": "accept", "conversation": conv})).await;
    a.expect("assigned").await;
    stalled.expect("assigned").await;
    // And a visitor that reads everything, for the comparison (same flood, a reader that keeps up).
    let (reader, reader_conv) = live_common::assigned_pair(&live, &mut a).await;
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader_task = {
        let stop = reader_stop.clone();
        let mut reader = reader;
        tokio::spawn(async move {
            let mut frames = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(100), reader.stream.next()).await {
                    Ok(Some(Ok(_))) => frames += 1,
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            // The socket stays open (it holds one of the places the test counts on).
            (frames, reader)
        })
    };
    a.send(json!({"type": "set_presence", "presence": "away"})).await;
    a.expect("presence_changed").await;
    let mut b = live.agent(&bob).await;
    let mut visitors = Vec::new();
    for _ in 0..3 {
        let (v, _) = live_common::assigned_pair(&live, &mut b).await;
        visitors.push(v);
    }

    // The chat latency of the three conversations with nothing else going on.
    let mut quiet = Vec::new();
    for round in 0..40 {
        chat_round(&mut visitors, &mut b, round, &mut quiet).await;
    }
    // From here the stalled visitor never reads again. Alice writes 4 KB messages into its conversation
    // (reading her own copies): once more bytes went to it than every buffer between could hold — the
    // server's socket send buffer at its largest, the client's receive buffer, the socket's queue
    // (1 MiB) and a margin for TLS and WebSocket framing in flight — either the queue overflowed (the
    // socket is closed at once) or a write has been blocked: the socket must be gone within the write
    // timeout (10 s) and twice the close timeout (1 s) of that moment.
    let wmem_max: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let must_overflow = wmem_max + rcvbuf + (1 << 20) + (256 << 10);
    let bound = Duration::from_secs(10 + 2) + Duration::from_secs(3);
    // Side by side: first the same flood into the conversation whose visitor reads, as much as must
    // overflow the stalled one, while the others chat (their latency beside a busy reader) ...
    let reader_sent = Arc::new(AtomicU64::new(0));
    let reader_flood = flood(
        a,
        reader_conv,
        must_overflow,
        Arc::new(AtomicBool::new(false)),
        reader_sent.clone(),
    );
    let mut beside_reader = Vec::new();
    let mut round = 100;
    while !reader_flood.is_finished() {
        chat_round(&mut visitors, &mut b, round, &mut beside_reader).await;
        round += 1;
        assert!(round < 100_000);
    }
    let a = reader_flood.await.unwrap();
    assert_eq!(
        reader_sent.load(Ordering::Relaxed) / 80_000,
        must_overflow.div_ceil(80_000)
    );
    reader_stop.store(true, Ordering::Relaxed);
    let (read, _reader) = reader_task.await.unwrap();
    assert!(read > 1000, "the reading visitor got the flood: {read} frames");
    // ... then into the stalled one.
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let released = Arc::new(AtomicBool::new(false));
    let flood = flood(a, conv.clone(), 4 * must_overflow, released.clone(), sent_bytes.clone());
    let watcher = {
        let sent_bytes = sent_bytes.clone();
        let released = released.clone();
        tokio::spawn(async move {
            let mut overflowed_at = None;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for _ in 0..2400 {
                tick.tick().await;
                if overflowed_at.is_none() && sent_bytes.load(Ordering::Relaxed) >= must_overflow {
                    overflowed_at = Some(Instant::now());
                }
                if released.load(Ordering::Relaxed) {
                    break;
                }
            }
            overflowed_at
        })
    };
    // Meanwhile: the others chat (their latency while a reader is stalled), and the test polls for the
    // stalled socket's place.
    let mut fifth_path = format!("/api/v1/visitor/ws?token={}", live.token().await);
    let mut fresh_tokens = 0;
    let mut during = Vec::new();
    let mut fifth = None;
    let started = Instant::now();
    let mut round = 100_000;
    while fifth.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the stalled socket was never dropped"
        );
        chat_round(&mut visitors, &mut b, round, &mut during).await;
        round += 1;
        match live.ws(&fifth_path, Some(SHOP), None).await {
            Ok(ws) => fifth = Some(ws),
            Err(503) => {}
            // The token outlived its minute: a new one (a few at most).
            Err(other) => {
                fresh_tokens += 1;
                assert!(fresh_tokens <= 5, "upgrade refused with {other}");
                fifth_path = format!("/api/v1/visitor/ws?token={}", live.token().await);
            }
        }
    }
    let dropped_at = Instant::now();
    released.store(true, Ordering::Relaxed);
    let overflowed_at = watcher.await.unwrap();
    let mut a = flood.await.unwrap();
    if let Some(t) = overflowed_at {
        assert!(
            dropped_at.saturating_duration_since(t) <= bound,
            "dropped {:?} after the buffers had to be full (bound {bound:?})",
            dropped_at - t
        );
    }
    let sent = sent_bytes.load(Ordering::Relaxed);
    assert!(sent <= 4 * must_overflow, "the server never let the stalled socket go");

    // The other conversations chatted all along, and still do; Alice's own socket was never at risk.
    let mut after = Vec::new();
    for round in 5000..5010 {
        chat_round(&mut visitors, &mut b, round, &mut after).await;
    }
    a.send(json!({"type": "message", "conversation": conv, "client_id": "last", "body": "still here"}))
        .await;
    a.expect_where(|f| f["type"] == "message" && f["body"] == "still here")
        .await;
    // The server closed its end of the stalled connection (its side left ESTABLISHED: FIN_WAIT1 with the
    // unread bytes still queued in the kernel, or gone), although the client never read a byte of it.
    let client_port = stalled.stream.get_ref().get_ref().0.local_addr().unwrap().port();
    let server_port = live.running().local_addr().port();
    let server_side = tcp_state(server_port, client_port);
    assert!(
        server_side != Some(TCP_ESTABLISHED),
        "the server still holds the connection: {server_side:?}"
    );
    assert_eq!(
        tcp_state(client_port, server_port),
        Some(TCP_ESTABLISHED),
        "the client end is open and has never read"
    );
    let show = |name: &str, v: &mut Vec<Duration>| {
        let (n, p50, p99, max) = figures(v);
        println!("  {name:<44} n={n:<4} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  max {max:>7.2} ms");
    };
    println!("chat latency of 3 other conversations (visitor → agent):");
    show("quiet", &mut quiet);
    show("beside a flood into a visitor that reads", &mut beside_reader);
    show("beside the same flood into a stalled reader", &mut during);
    show("after the stalled reader was dropped", &mut after);
    println!(
        "stalled reader: {:.1} MB sent to it; dropped {:?} after its buffers had to be full ({:.1} MB)",
        sent as f64 / 1e6,
        overflowed_at.map(|t| dropped_at.saturating_duration_since(t)),
        must_overflow as f64 / 1e6
    );
    drop(fifth);
    drop(stalled);
}
