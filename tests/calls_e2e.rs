//! Calls through the whole server: a visitor and an agent (real WebSocket clients over TLS) negotiate a call
//! through signalling with the real SFU driver behind the media seam, then exchange audio and video over
//! real UDP with str0m peers. Hang-up and the end of the conversation stop media.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use live_common::{Live, Ws};
use relaydesk::media::SfuMedia;
use relaydesk_loadtest::media::{MediaConfig, MediaEngine, MediaSnapshot, Peer};
use relaydesk_sfu::DriverConfig;
use relaydesk_signalling::live::{LiveParts, MediaWiring};
use relaydesk_signalling::masking::Masker;
use serde_json::{Value, json};
use str0m::media::Direction;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Waits (bounded) until the media engine's figures satisfy `cond`.
async fn wait_media(engine: &MediaEngine, what: &str, cond: impl Fn(&MediaSnapshot) -> bool) -> MediaSnapshot {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snap = engine.snapshot();
        if cond(&snap) {
            return snap;
        }
        assert!(Instant::now() < deadline, "{what} within 20 s: {snap:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a call offer from `ws` and applies the SDP answer the server relays back.
async fn call(ws: &mut Ws, conversation: Option<&str>, peer: &mut Peer) {
    let (sdp, pending) = peer.offer(true, true, Direction::SendRecv).unwrap();
    let mut frame = json!({"type": "call_offer", "sdp": sdp});
    if let Some(c) = conversation {
        frame["conversation"] = Value::from(c);
    }
    ws.send(frame).await;
    let answer = ws.expect("call_answer").await;
    let sdp = answer["sdp"].as_str().unwrap();
    assert!(sdp.contains("127.0.0.1"), "the answer carries the SFU's own candidate");
    peer.accept_answer(pending, sdp).unwrap();
}

/// Waits for a `call_state` frame with the given state.
async fn call_state(ws: &mut Ws, state: &str) -> Value {
    ws.expect_where(|v| v["type"] == "call_state" && v["state"] == state)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_and_agent_call_through_the_sfu() {
    let driver = DriverConfig::new(LOCALHOST, 2);
    let (sfu, events) = SfuMedia::start(&driver, &Masker::default(), false).unwrap();
    let parts = LiveParts {
        media: Some(MediaWiring {
            control: sfu.clone(),
            events,
        }),
        sink: None,
    };
    let live = Live::start(|_| {}, parts).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut agent = live.agent(&alice).await;
    let (mut visitor, welcome) = live.visitor().await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    agent.expect("offered").await;
    agent.send(json!({"type": "accept", "conversation": conv})).await;
    agent.expect("assigned").await;
    visitor.expect("assigned").await;

    // Both parties offer audio and video; the SFU answers each through the server.
    let engine = MediaEngine::start(
        1,
        MediaConfig {
            video_kbps: 300,
            ..MediaConfig::default()
        },
    )
    .unwrap();
    let mut visitor_peer = Peer::new(LOCALHOST).unwrap();
    let mut agent_peer = Peer::new(LOCALHOST).unwrap();
    call(&mut visitor, None, &mut visitor_peer).await;
    call(&mut agent, Some(&conv), &mut agent_peer).await;
    engine.add(visitor_peer).unwrap();
    engine.add(agent_peer).unwrap();

    // ICE and DTLS complete for both legs, and each side is told the other is connected.
    call_state(&mut visitor, "connected").await;
    call_state(&mut agent, "connected").await;
    let snap = wait_media(&engine, "media both ways", |s| {
        s.connected == 2 && s.receiving == 2 && s.packets_received > 200
    })
    .await;
    assert_eq!(snap.failed, 0);
    assert!(!snap.latency.is_empty(), "latency measured from the stamped payloads");
    let stats = sfu.handle().stats();
    let forwarded: u64 = stats.iter().map(|s| s.packets_out).sum();
    assert!(forwarded > 200, "the SFU forwarded: {stats:?}");

    // The SFU's figures reach /metrics (shards publish them about once a second; participants' figures every
    // five seconds).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = live.admin.get("/metrics").await.text();
        let forwarded_metric = text.lines().any(|l| {
            l.starts_with("relaydesk_sfu_rtp_forwarded_total")
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
        });
        // Participants' periodic figures (every 5 s) become histograms.
        if forwarded_metric
            && text.contains("relaydesk_sfu_participants{")
            && text.contains("relaydesk_sfu_drops_total{")
            && text.contains("relaydesk_media_loss_ratio")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SFU metrics in /metrics within 10 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The visitor hangs up: both sides hear that its leg left.
    visitor.send(json!({"type": "call_end"})).await;
    call_state(&mut visitor, "left").await;
    call_state(&mut agent, "left").await;

    // The conversation ends: the room closes and the agent's leg ends too.
    agent.send(json!({"type": "end", "conversation": conv})).await;
    visitor.expect("ended").await;
    engine.stop();
    sfu.shutdown(Duration::from_secs(5)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_media_capacity_is_refused_and_the_call_in_progress_goes_on() {
    let driver = DriverConfig::new(LOCALHOST, 1);
    let (sfu, events) = SfuMedia::start(&driver, &Masker::default(), false).unwrap();
    let parts = LiveParts {
        media: Some(MediaWiring {
            control: sfu.clone(),
            events,
        }),
        sink: None,
    };
    // Room for one call (its two legs).
    let live = Live::start(|c| c.media.max_participants = 2, parts).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let (_, bob) = live.user("bob", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (mut v1, conv1) = live_common::assigned_pair(&live, &mut a).await;
    a.send(json!({"type": "set_presence", "presence": "away"})).await;
    a.expect("presence_changed").await;
    let mut b = live.agent(&bob).await;
    let (mut v2, conv2) = live_common::assigned_pair(&live, &mut b).await;

    // The first call takes the whole capacity and carries media.
    let engine = MediaEngine::start(
        1,
        MediaConfig {
            video_kbps: 200,
            ..MediaConfig::default()
        },
    )
    .unwrap();
    let mut p1 = Peer::new(LOCALHOST).unwrap();
    let mut p2 = Peer::new(LOCALHOST).unwrap();
    call(&mut v1, None, &mut p1).await;
    call(&mut a, Some(&conv1), &mut p2).await;
    engine.add(p1).unwrap();
    engine.add(p2).unwrap();
    call_state(&mut v1, "connected").await;
    call_state(&mut a, "connected").await;
    wait_media(&engine, "media in the first call", |s| {
        s.receiving == 2 && s.packets_received > 100
    })
    .await;

    // A second call is refused with a clear reason, to whoever offers it, and nothing else changes.
    let (sdp, _) = Peer::new(LOCALHOST)
        .unwrap()
        .offer(true, true, Direction::SendRecv)
        .unwrap();
    v2.send(json!({"type": "call_offer", "sdp": sdp})).await;
    let refused = v2.expect("error").await;
    assert_eq!(refused["code"], "media_busy", "{refused}");
    let (sdp, _) = Peer::new(LOCALHOST)
        .unwrap()
        .offer(true, true, Direction::SendRecv)
        .unwrap();
    b.send(json!({"type": "call_offer", "conversation": conv2, "sdp": sdp}))
        .await;
    let refused = b.expect("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["conversation"].as_str()),
        (Some("media_busy"), Some(conv2.as_str())),
        "{refused}"
    );
    // The call in progress goes on: media keeps flowing both ways, no leg was touched.
    let before = engine.snapshot();
    let after = wait_media(&engine, "media after the refusals", |s| {
        s.packets_received > before.packets_received + 200
    })
    .await;
    assert_eq!(after.failed, 0);
    // And the chat of the refused conversation goes on.
    v2.send(json!({"type": "message", "client_id": "c1", "body": "no call then"}))
        .await;
    assert_eq!(b.expect_where(|f| f["type"] == "message").await["body"], "no call then");

    // Once the first call ends, the second is admitted.
    v1.send(json!({"type": "call_end"})).await;
    call_state(&mut a, "left").await;
    a.send(json!({"type": "call_end", "conversation": conv1})).await;
    // The agent's leg is gone (v1 also hears of its own leg leaving: wait for the agent's).
    v1.expect_where(|v| v["type"] == "call_state" && v["state"] == "left" && v["party"] == "agent")
        .await;
    let mut p3 = Peer::new(LOCALHOST).unwrap();
    call(&mut v2, None, &mut p3).await;
    let metrics = live.admin.get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("relaydesk_calls_refused_total{reason=\"media_capacity\"} ") && l.ends_with(" 2")),
        "{metrics}"
    );
    engine.stop();
    sfu.shutdown(Duration::from_secs(5)).unwrap();
}

/// A server with the SFU behind it and a short handshake timeout (1 s), an agent and a visitor in one
/// conversation.
async fn call_setup() -> (Live, std::sync::Arc<SfuMedia>, Ws, Ws, String) {
    let driver = DriverConfig::new(LOCALHOST, 2);
    let (sfu, events) = SfuMedia::start(&driver, &Masker::default(), false).unwrap();
    let parts = LiveParts {
        media: Some(MediaWiring {
            control: sfu.clone(),
            events,
        }),
        sink: None,
    };
    let live = Live::start(|c| c.http.handshake_timeout_secs = 1, parts).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut agent = live.agent(&alice).await;
    let (mut visitor, welcome) = live.visitor().await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    agent.expect("offered").await;
    agent.send(json!({"type": "accept", "conversation": conv})).await;
    agent.expect("assigned").await;
    visitor.expect("assigned").await;
    (live, sfu, agent, visitor, conv)
}

/// A STUN Binding request with USERNAME `user`, framed as RFC 4571.
fn framed_stun(user: &[u8]) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
    attr.extend_from_slice(user);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&[3; 12]);
    m.extend_from_slice(&attr);
    let mut f = (m.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(&m);
    f
}

/// The first bytes of a TLS 1.3 ClientHello record announcing 512 bytes, cut after its header.
const HALF_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03];

/// Sends `bytes` on a new connection to the server's port and waits (at most 15 s) for the server to close
/// it; then checks HTTPS still answers and the refusal was counted with `reason`.
async fn closed_and_counted(live: &Live, bytes: &[u8], reason: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(live.running().local_addr())
        .await
        .unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server closes a connection sending {bytes:?}");
    // HTTPS on the same port still works, and the refusal is on /metrics.
    let needle = format!("relaydesk_connections_refused_total{{reason=\"{reason}\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = live.admin.get("/metrics").await;
        assert_eq!(resp.status, 200);
        if resp.text().contains(&needle) {
            break;
        }
        assert!(Instant::now() < deadline, "{needle} on /metrics");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_only_call_runs_through_the_https_port_beside_bad_connections() {
    let (live, sfu, mut agent, mut visitor, conv) = call_setup().await;
    let port = live.running().local_addr().port();
    let engine = MediaEngine::start(
        1,
        MediaConfig {
            video_kbps: 300,
            ..MediaConfig::default()
        },
    )
    .unwrap();
    // Both peers offer only an active TCP candidate: the only path is the passive TCP candidate of the
    // answer, on the HTTPS port.
    let mut visitor_peer = Peer::new_tcp(LOCALHOST).unwrap();
    let mut agent_peer = Peer::new_tcp(LOCALHOST).unwrap();
    for (ws, conv, peer) in [
        (&mut visitor, None, &mut visitor_peer),
        (&mut agent, Some(conv.as_str()), &mut agent_peer),
    ] {
        let (sdp, pending) = peer.offer(true, true, Direction::SendRecv).unwrap();
        let mut frame = json!({"type": "call_offer", "sdp": sdp});
        if let Some(c) = conv {
            frame["conversation"] = Value::from(c);
        }
        ws.send(frame).await;
        let answer = ws.expect("call_answer").await;
        let sdp = answer["sdp"].as_str().unwrap();
        let tcp_line = sdp
            .lines()
            .find(|l| l.contains(" tcp ") || l.contains(" TCP "))
            .unwrap_or_else(|| panic!("a TCP candidate in the answer:\n{sdp}"));
        assert!(tcp_line.contains(&format!("127.0.0.1 {port} typ host")), "{tcp_line}");
        assert!(tcp_line.contains("tcptype passive"), "{tcp_line}");
        let udp_at = sdp
            .find(" udp ")
            .or_else(|| sdp.find(" UDP "))
            .expect("a UDP candidate");
        assert!(udp_at < sdp.find(tcp_line).unwrap(), "UDP candidate first");
        peer.accept_answer(pending, sdp).unwrap();
    }
    engine.add(visitor_peer).unwrap();
    engine.add(agent_peer).unwrap();
    call_state(&mut visitor, "connected").await;
    call_state(&mut agent, "connected").await;
    let snap = wait_media(&engine, "media both ways over TCP", |s| {
        s.connected == 2 && s.receiving == 2 && s.packets_received > 200
    })
    .await;
    assert_eq!(snap.failed, 0);
    let stats = sfu.handle().stats();
    let tcp_in: u64 = stats.iter().map(|s| s.tcp_packets_in).sum();
    let tcp_out: u64 = stats.iter().map(|s| s.tcp_packets_out).sum();
    let udp_in: u64 = stats.iter().map(|s| s.packets_in).sum();
    assert!(
        tcp_in > 200 && tcp_out > 200,
        "the SFU received and forwarded over TCP: {stats:?}"
    );
    assert_eq!(udp_in, 0, "nothing came over UDP: {stats:?}");

    // Bad connections on the same port meanwhile close alone; the call goes on.
    closed_and_counted(
        &live,
        b"\x00\x01junk that is neither TLS nor STUN",
        "first_frame_undersized",
    )
    .await;
    closed_and_counted(&live, &framed_stun(b"nobody:x"), "ice_tcp_unknown_user").await;
    let before = engine.snapshot().packets_received;
    wait_media(&engine, "media still flowing", |s| s.packets_received > before + 100).await;
    assert_eq!(engine.snapshot().failed, 0);
    engine.stop();
    sfu.shutdown(Duration::from_secs(5)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_the_shared_port_is_closed_and_counted() {
    let (live, sfu, ..) = call_setup().await;
    closed_and_counted(&live, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "first_frame_oversized").await;
    let mut junk = vec![0x00, 0x30];
    junk.extend_from_slice(&[0xAB; 0x30]);
    closed_and_counted(&live, &junk, "not_tls_or_stun").await;
    sfu.shutdown(Duration::from_secs(5)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_client_hello_is_cut_at_the_handshake_timeout() {
    let (live, sfu, ..) = call_setup().await;
    closed_and_counted(&live, HALF_CLIENT_HELLO, "tls_handshake_timeout").await;
    sfu.shutdown(Duration::from_secs(5)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stun_with_an_unknown_username_is_closed_and_counted() {
    let (live, sfu, ..) = call_setup().await;
    closed_and_counted(&live, &framed_stun(b"nobody:x"), "ice_tcp_unknown_user").await;
    // A half frame and then silence: cut at the same timeout.
    closed_and_counted(&live, &framed_stun(b"nobody:x")[..10], "first_bytes_timeout").await;
    sfu.shutdown(Duration::from_secs(5)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_first_frame_is_closed_and_counted() {
    let (live, sfu, ..) = call_setup().await;
    let mut big = vec![0x10, 0x00];
    big.extend_from_slice(&[0u8; 200]);
    closed_and_counted(&live, &big, "first_frame_oversized").await;
    sfu.shutdown(Duration::from_secs(5)).unwrap();
}
