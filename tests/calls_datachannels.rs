//! In-call data channels through the whole server: a visitor and an agent (real WebSocket clients over TLS)
//! set up a call with str0m peers that open the `text` and `file` data channels (docs/protocol.md, "In-call
//! data channels"). In-call text with card numbers (one split over two messages) reaches the agent masked, a
//! file reaches it whole, a channel with an unknown label is refused with the documented error, and the
//! archived transcript lists the in-call text (masked) and the file (name, size, type, SHA-256) in order
//! with the chat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use live_common::{Live, Ws, assigned_pair, until_status};
use relaydesk::media::SfuMedia;
use relaydesk_sfu::DriverConfig;
use relaydesk_signalling::Server;
use relaydesk_signalling::archive::{ArchiveKeys, KeySource, MASTER_KEY_FILE, MessageKind, Transcript};
use relaydesk_signalling::live::{LiveParts, MediaWiring};
use relaydesk_signalling::masking::Masker;
use relaydesk_signalling::store::{AuditEvent, DB_FILE, Db};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Bound of every wait on the peers.
const PEER_DEADLINE: Duration = Duration::from_secs(20);

/// A str0m peer on its own UDP socket, driven by the test (audio m-line, `text` and `file` channels).
struct DcPeer {
    rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    events: Vec<Event>,
    /// Open channels by label.
    open: HashMap<String, ChannelId>,
}

impl DcPeer {
    fn new() -> DcPeer {
        let sock = UdpSocket::bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
        let local = sock.local_addr().unwrap();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        DcPeer {
            rtc,
            sock,
            local,
            events: Vec::new(),
            open: HashMap::new(),
        }
    }

    fn offer(&mut self) -> (String, SdpPendingOffer) {
        let mut api = self.rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        api.add_channel("text".into());
        api.add_channel("file".into());
        let (offer, pending) = api.apply().unwrap();
        (offer.to_sdp_string(), pending)
    }

    /// Drives the peer (timers, sockets) for about `slice`.
    fn pump(&mut self, slice: Duration) {
        let end = Instant::now() + slice;
        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = match self.rtc.poll_output().unwrap() {
                Output::Timeout(t) => t,
                Output::Transmit(t) => {
                    let _ = self.sock.send_to(&t.contents, t.destination);
                    continue;
                }
                Output::Event(e) => {
                    if let Event::ChannelOpen(id, label) = &e {
                        self.open.insert(label.clone(), *id);
                    }
                    self.events.push(e);
                    continue;
                }
            };
            let now = Instant::now();
            if now >= end {
                return;
            }
            let wait = timeout
                .min(end)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.sock.set_read_timeout(Some(wait)).unwrap();
            let input = match self.sock.recv_from(&mut buf) {
                Ok((n, source)) => Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents: buf[..n].try_into().unwrap(),
                    },
                ),
                Err(_) => Input::Timeout(Instant::now()),
            };
            self.rtc.handle_input(input).unwrap();
        }
    }

    fn write(&mut self, label: &str, binary: bool, data: &[u8]) {
        let id = self.open[label];
        assert!(
            self.rtc.channel(id).unwrap().write(binary, data).unwrap(),
            "{label}: buffer full"
        );
    }

    /// String messages received on the channel `label`.
    fn texts(&self, label: &str) -> Vec<String> {
        let Some(id) = self.open.get(label) else {
            return Vec::new();
        };
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelData(d) if d.id == *id && !d.binary => Some(String::from_utf8_lossy(&d.data).into()),
                _ => None,
            })
            .collect()
    }

    fn json(&self, label: &str) -> Vec<Value> {
        self.texts(label)
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect()
    }

    fn binary(&self, label: &str) -> Vec<u8> {
        let id = self.open[label];
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelData(d) if d.id == id && d.binary => Some(d.data.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// Drives both peers in turn until `done` holds (bounded by [`PEER_DEADLINE`]).
fn pump_until(a: &mut DcPeer, b: &mut DcPeer, what: &str, done: impl Fn(&DcPeer, &DcPeer) -> bool) {
    let deadline = Instant::now() + PEER_DEADLINE;
    tokio::task::block_in_place(|| {
        while !done(a, b) {
            assert!(Instant::now() < deadline, "{what} within {PEER_DEADLINE:?}");
            a.pump(Duration::from_millis(5));
            b.pump(Duration::from_millis(5));
        }
    });
}

async fn call(ws: &mut Ws, conversation: Option<&str>, peer: &mut DcPeer) {
    let (sdp, pending) = peer.offer();
    let mut frame = json!({"type": "call_offer", "sdp": sdp});
    if let Some(c) = conversation {
        frame["conversation"] = Value::from(c);
    }
    ws.send(frame).await;
    let answer = ws.expect("call_answer").await;
    let answer = SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap()).unwrap();
    peer.rtc.sdp_api().accept_answer(pending, answer).unwrap();
}

/// The value of a counter in `/metrics` (0 when absent).
async fn counter(live: &Live, name: &str) -> f64 {
    let text = live.admin.get("/metrics").await.text();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits (bounded) until the hub has recorded `texts` in-call texts and `files` in-call files.
async fn recorded(live: &Live, texts: f64, files: f64) {
    let deadline = Instant::now() + PEER_DEADLINE;
    while counter(live, "relaydesk_call_texts_total").await < texts
        || counter(live, "relaydesk_call_files_total").await < files
    {
        assert!(Instant::now() < deadline, "in-call entries recorded in time");
        tokio::task::yield_now().await;
    }
}

/// The transcript of `conv` as a server started on a copy of `live`'s data directory taken now (as after a
/// crash) archives it: the copy's conversation is marked ended, so the start restores it and archives it.
async fn restored_transcript(live: &Live, conv: &str) -> Transcript {
    let copy = tempfile::tempdir().unwrap();
    let db = copy.path().join(DB_FILE);
    tokio::task::block_in_place(|| {
        let c = rusqlite::Connection::open(live.dir.join(DB_FILE)).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.execute("VACUUM INTO ?1", [db.to_str().unwrap()]).unwrap();
        std::fs::copy(live.dir.join(MASTER_KEY_FILE), copy.path().join(MASTER_KEY_FILE)).unwrap();
        let changed = rusqlite::Connection::open(&db)
            .unwrap()
            .execute(
                "UPDATE live_conversations SET ended_at = started_at + 1, ended_reason = 'agent_ended' WHERE id = ?1",
                [conv.parse::<i64>().unwrap()],
            )
            .unwrap();
        assert_eq!(changed, 1);
    });
    let server = Server::start(common::test_config(copy.path())).await.unwrap();
    let deadline = Instant::now() + PEER_DEADLINE;
    while tokio::task::block_in_place(|| {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM archive_conversations WHERE id = ?1",
                [conv],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
    }) == 0
    {
        assert!(Instant::now() < deadline, "archived at the start");
        tokio::task::yield_now().await;
    }
    server.shutdown().await.unwrap();
    let db = Db::open(copy.path()).unwrap();
    let keys = ArchiveKeys::open(KeySource::File(copy.path().join(MASTER_KEY_FILE)), &db).unwrap();
    keys.export(&db, conv, &AuditEvent::default()).unwrap()
}

/// Waits (bounded) until `conv` has `n` messages at rest, and checks that the database and its WAL hold
/// none of the in-call bodies in the clear.
async fn at_rest(live: &Live, conv: &str, n: i64) {
    let db = live.dir.join(DB_FILE);
    let deadline = Instant::now() + PEER_DEADLINE;
    loop {
        let count: i64 = tokio::task::block_in_place(|| {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            c.query_row(
                "SELECT COUNT(*) FROM live_messages WHERE conversation_id = ?1",
                [conv.parse::<i64>().unwrap()],
                |r| r.get(0),
            )
            .unwrap()
        });
        if count == n {
            break;
        }
        assert!(
            count < n && Instant::now() < deadline,
            "{count} of {n} messages at rest"
        );
        tokio::task::yield_now().await;
    }
    for file in [db.clone(), db.with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for clear in ["4444 ok", "the other card", "application/pdf"] {
            assert!(
                !bytes.windows(clear.len()).any(|w| w == clear.as_bytes()),
                "{clear:?} in {file:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_call_text_and_files_are_masked_relayed_and_archived_in_order() {
    let driver = DriverConfig::new(LOCALHOST, 1);
    let (sfu, events) = SfuMedia::start(&driver, &Masker::default(), false).unwrap();
    let parts = LiveParts {
        media: Some(MediaWiring { control: sfu, events }),
        sink: None,
    };
    let mut live = Live::start(|_| {}, parts).await;
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut agent = live.agent(&alice).await;
    let (mut visitor, conv) = assigned_pair(&live, &mut agent).await;

    // Chat before the call.
    visitor
        .send(json!({"type": "message", "client_id": "c1", "body": "hello before the call"}))
        .await;
    agent.expect("message").await;

    let mut vp = DcPeer::new();
    let mut ap = DcPeer::new();
    call(&mut visitor, None, &mut vp).await;
    call(&mut agent, Some(&conv), &mut ap).await;
    pump_until(&mut vp, &mut ap, "both channels open on both peers", |a, b| {
        a.open.len() == 2 && b.open.len() == 2
    });

    // In-call text: a whole card number, then one split over two messages.
    for t in [
        "my card is 4111 1111 1111 1111",
        "the other card 5555 5555",
        "5555 4444 ok",
    ] {
        vp.write("text", false, t.as_bytes());
    }
    pump_until(&mut vp, &mut ap, "three texts at the agent", |_, b| {
        b.texts("text").len() == 3
    });
    let got = ap.json("text");
    assert_eq!(got[0]["text"], "my card is •••• •••• •••• 1111");
    assert_eq!(got[0]["role"], "visitor", "the same role name as everywhere");
    // The first part was relayed before the number was complete; the part that completes it is masked.
    assert_eq!(got[2]["text"], "•••• 4444 ok");
    recorded(&live, 3.0, 0.0).await;

    // A file over the `file` channel.
    let content: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha: String = Sha256::digest(&content).iter().map(|b| format!("{b:02x}")).collect();
    let header = json!({"type": "header", "name": "card 4111 1111 1111 1111.pdf", "size": content.len(),
        "mime": "application/pdf", "sha256": sha});
    vp.write("file", false, header.to_string().as_bytes());
    for chunk in content.chunks(16 * 1024) {
        vp.write("file", true, chunk);
    }
    vp.write("file", false, br#"{"type":"end"}"#);
    pump_until(&mut vp, &mut ap, "the file relayed and confirmed", |a, b| {
        a.json("file").iter().any(|m| m["type"] == "done") && b.json("file").iter().any(|m| m["type"] == "end")
    });
    assert_eq!(ap.binary("file"), content);
    let relayed_header = &ap.json("file")[0];
    assert_eq!(
        (relayed_header["type"].as_str(), relayed_header["sha256"].as_str()),
        (Some("header"), Some(sha.as_str()))
    );
    recorded(&live, 3.0, 1.0).await;
    // Durable like chat: the entries are sealed at rest before the next batch, and a server started on a
    // copy of the database taken now (as after a crash) brings them back with their kinds.
    at_rest(&live, &conv, 5).await;
    let restored = restored_transcript(&live, &conv).await;
    let kinds: Vec<(MessageKind, &str)> = restored.messages.iter().map(|m| (m.kind, m.body.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (MessageKind::Chat, "hello before the call"),
            (MessageKind::CallText, "my card is •••• •••• •••• 1111"),
            (MessageKind::CallText, "the other card •••• ••••"),
            (MessageKind::CallText, "•••• 4444 ok"),
            (MessageKind::CallFile, "card •••• •••• •••• 1111.pdf"),
        ]
    );
    assert_eq!(
        restored.messages[4].file.as_ref().map(|f| f.sha256.as_str()),
        Some(sha.as_str())
    );

    // A channel with an unknown label: the documented error on it, then it is closed; and an error frame
    // on the visitor's WebSocket.
    let mut api = vp.rtc.sdp_api();
    let chat = api.add_channel("chat".into());
    assert!(api.apply().is_none(), "opened in band");
    pump_until(&mut vp, &mut ap, "the unknown channel closed", |a, _| {
        a.events
            .iter()
            .any(|e| matches!(e, Event::ChannelClose(id) if *id == chat))
    });
    let errors = vp.json("chat");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["type"], "error");
    assert_eq!(errors[0]["code"], "unknown_data_channel");
    assert!(errors[0]["reason"].as_str().unwrap().contains("\"chat\""));
    let frame = visitor.expect("error").await;
    assert_eq!(frame["code"], "bad_message");
    assert!(frame["message"].as_str().unwrap().contains("unknown label"), "{frame}");

    // Chat after the call's entries, then the end.
    agent
        .send(json!({"type": "message", "conversation": conv, "client_id": "a1", "body": "thanks, noted"}))
        .await;
    visitor.expect("message").await;
    visitor.send(json!({"type": "end"})).await;
    live.next_ended().await;

    let path = format!("/api/v1/admin/conversations/{conv}/transcript");
    assert!(
        until_status(|| live.admin.get(&path), 200, 404).await,
        "archived in time"
    );
    let t = live.admin.get(&path).await.json();
    let entries: Vec<(String, String)> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["author"]["kind"] != "system")
        .map(|m| {
            (
                m["kind"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |k: &str, b: &str| (k.to_owned(), b.to_owned());
    assert_eq!(
        entries,
        vec![
            expect("chat", "hello before the call"),
            expect("call_text", "my card is •••• •••• •••• 1111"),
            // Amended in the transcript once the second part completed the number.
            expect("call_text", "the other card •••• ••••"),
            expect("call_text", "•••• 4444 ok"),
            expect("call_file", "card •••• •••• •••• 1111.pdf"),
            expect("chat", "thanks, noted"),
        ]
    );
    let file = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "call_file")
        .unwrap();
    assert_eq!(
        file["file"],
        json!({"size": content.len(), "mime": "application/pdf", "sha256": sha})
    );
    assert_eq!(file["author"]["kind"], "visitor");
    let seqs: Vec<u64> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let text = live.admin.get(&format!("{path}?format=text")).await.text();
    assert!(
        text.contains(&format!(
            "visitor (in call, file): card •••• •••• •••• 1111.pdf (application/pdf, 40000 bytes, sha256 {sha})"
        )),
        "{text}"
    );
    for digits in ["4111", "5555 5555"] {
        assert!(!t.to_string().contains(digits), "{digits} in the transcript: {t}");
    }
}
