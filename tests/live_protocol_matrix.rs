//! Every client→server WebSocket message type, sent in the wrong state or about somebody else's conversation:
//! the exact `error` frame of `docs/ws-messages.md` / `docs/protocol.md`, and a socket that keeps working.
//!
//! The tables are exhaustive by construction: the expectations are `match`es over `AgentToServer` and
//! `VisitorToServer` without a wildcard (a new message type does not compile until it has its row), and the
//! message types the rows send are compared with the types `docs/ws-messages.md` documents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use std::collections::BTreeSet;

use live_common::{Closed, Live, SHOP, Ws, answer_all, assigned_pair, site_key};
use relaydesk_signalling::chat_protocol::{AgentToServer, VisitorToServer};
use relaydesk_signalling::live::LiveParts;
use serde_json::{Value, json};

/// A conversation id no conversation has.
const UNKNOWN: &str = "987654321";

/// What a refused or ignored frame must be answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// An `error` frame with this code.
    Error(&'static str),
    /// A frame of this type (not an error).
    Answer(&'static str),
    /// Nothing: the next frame the socket gets is the answer to the probe that follows.
    Silent,
}

/// Whose conversation an agent-socket frame names.
#[derive(Debug, Clone, Copy)]
enum Whose {
    /// No conversation has this id.
    Unknown,
    /// A conversation of a group the sender is not in.
    OtherGroup,
    /// A colleague's conversation in the sender's own group, the sender a plain agent.
    Colleague,
}

/// The `error` code a plain agent gets for `frame` about a conversation `whose`; `None` for the frames that
/// name no conversation (they have rows of their own in [`agent_state_rows`]).
fn agent_expected(whose: Whose, frame: &AgentToServer) -> Option<&'static str> {
    use AgentToServer as A;
    let hidden = matches!(whose, Whose::Unknown | Whose::OtherGroup);
    Some(match frame {
        A::Hello { .. } | A::SetPresence { .. } => return None,
        // An unknown conversation and one of another group are answered alike.
        _ if hidden => "not_found",
        // No offer of it is held by the sender.
        A::Accept { .. } | A::Decline { .. } => "conflict",
        // Write, manage, read and monitor rights: none on a colleague's conversation.
        A::Message { .. }
        | A::Typing { .. }
        | A::Delivered { .. }
        | A::Read { .. }
        | A::CallOffer { .. }
        | A::CallEnd { .. }
        | A::CallInvite { .. }
        | A::CallAccept { .. }
        | A::CallDecline { .. }
        | A::CallCancel { .. }
        | A::CallMediaState { .. }
        | A::CallScreenRequest { .. }
        | A::CallPrepare { .. }
        | A::Transfer { .. }
        | A::End { .. }
        | A::Watch { .. }
        | A::Unwatch { .. }
        | A::MonitorOffer { .. }
        | A::Whisper { .. }
        | A::MonitorEnd { .. }
        | A::Recording { .. } => "forbidden",
    })
}

/// One frame of every agent→server type that names a conversation, about `conv`.
fn agent_conversation_frames(conv: &str) -> Vec<Value> {
    vec![
        json!({"type": "accept", "conversation": conv}),
        json!({"type": "decline", "conversation": conv}),
        json!({"type": "message", "conversation": conv, "client_id": "x-1", "body": "matrix"}),
        json!({"type": "typing", "conversation": conv, "active": true}),
        json!({"type": "delivered", "conversation": conv, "up_to_seq": 1}),
        json!({"type": "read", "conversation": conv, "up_to_seq": 1}),
        json!({"type": "transfer", "conversation": conv, "to": {"kind": "group", "group": "sales"}}),
        json!({"type": "end", "conversation": conv}),
        json!({"type": "watch", "conversation": conv}),
        json!({"type": "unwatch", "conversation": conv}),
        json!({"type": "call_offer", "conversation": conv, "sdp": "v=0\r\n"}),
        json!({"type": "call_end", "conversation": conv}),
        json!({"type": "call_invite", "conversation": conv, "video": true}),
        json!({"type": "call_accept", "conversation": conv}),
        json!({"type": "call_decline", "conversation": conv}),
        json!({"type": "call_cancel", "conversation": conv}),
        json!({"type": "call_media_state", "conversation": conv, "audio": true, "video": true}),
        json!({"type": "call_screen_request", "conversation": conv}),
        json!({"type": "monitor_offer", "conversation": conv, "sdp": "v=0\r\n"}),
        json!({"type": "whisper", "conversation": conv, "active": true}),
        json!({"type": "monitor_end", "conversation": conv}),
        json!({"type": "call_prepare", "conversation": conv}),
        json!({"type": "recording", "conversation": conv, "action": "pause"}),
    ]
}

/// Wrong-state rows of the agent socket (no media server is configured): (sender is the supervisor, frame,
/// outcome). `own` is the plain agent's own assigned conversation, `colleague`'s is a colleague's in the
/// supervisor's group; `me` is the plain agent's id.
fn agent_state_rows(own: &str, colleague: &str, me: i64) -> Vec<(bool, Value, Outcome)> {
    use Outcome::{Answer, Error, Silent};
    vec![
        // A second `hello` is answered like the first.
        (false, json!({"type": "hello"}), Answer("welcome")),
        // `busy` is derived, never set.
        (
            false,
            json!({"type": "set_presence", "presence": "busy"}),
            Error("bad_message"),
        ),
        // Already assigned to the sender: no offer to answer.
        (false, json!({"type": "accept", "conversation": own}), Error("conflict")),
        (
            false,
            json!({"type": "decline", "conversation": own}),
            Error("conflict"),
        ),
        (
            false,
            json!({"type": "transfer", "conversation": own, "to": {"kind": "agent", "agent": me}}),
            Error("conflict"),
        ),
        (
            false,
            json!({"type": "call_offer", "conversation": own, "sdp": "v=0\r\n"}),
            Error("media_unavailable"),
        ),
        // No calls without a media server; no invitation to answer or withdraw; no call to report on.
        (
            false,
            json!({"type": "call_invite", "conversation": own, "video": true}),
            Error("media_unavailable"),
        ),
        (
            false,
            json!({"type": "call_accept", "conversation": own}),
            Error("conflict"),
        ),
        (
            false,
            json!({"type": "call_decline", "conversation": own}),
            Error("conflict"),
        ),
        (
            false,
            json!({"type": "call_cancel", "conversation": own}),
            Error("conflict"),
        ),
        (
            false,
            json!({"type": "call_media_state", "conversation": own, "audio": false, "video": false}),
            Error("conflict"),
        ),
        (
            false,
            json!({"type": "call_screen_request", "conversation": own}),
            Error("conflict"),
        ),
        // Allowed to ask for TURN servers, but no calls without a media server.
        (
            false,
            json!({"type": "call_prepare", "conversation": own}),
            Error("media_unavailable"),
        ),
        // The group's recording policy is `off`: nothing to start, pause or resume.
        (
            false,
            json!({"type": "recording", "conversation": own, "action": "pause"}),
            Error("forbidden"),
        ),
        // Hanging up without a call, and unwatching what one does not watch, change nothing.
        (false, json!({"type": "call_end", "conversation": own}), Silent),
        (false, json!({"type": "unwatch", "conversation": own}), Silent),
        // Never the conversation's own agent.
        (
            false,
            json!({"type": "monitor_offer", "conversation": own, "sdp": "v=0\r\n"}),
            Error("forbidden"),
        ),
        (
            false,
            json!({"type": "whisper", "conversation": own, "active": true}),
            Error("forbidden"),
        ),
        (
            false,
            json!({"type": "monitor_end", "conversation": own}),
            Error("forbidden"),
        ),
        // The supervisor of the group, on a colleague's conversation.
        (true, json!({"type": "hello"}), Answer("welcome")),
        (
            true,
            json!({"type": "whisper", "conversation": colleague, "active": true}),
            Error("conflict"),
        ),
        (
            true,
            json!({"type": "monitor_offer", "conversation": colleague, "sdp": "v=0\r\n"}),
            Error("media_unavailable"),
        ),
        (true, json!({"type": "monitor_end", "conversation": colleague}), Silent),
        (
            true,
            json!({"type": "call_prepare", "conversation": colleague}),
            Error("media_unavailable"),
        ),
        (
            true,
            json!({"type": "accept", "conversation": colleague}),
            Error("conflict"),
        ),
        (
            true,
            json!({"type": "message", "conversation": colleague, "client_id": "s-1", "body": "matrix"}),
            Error("forbidden"),
        ),
        (
            true,
            json!({"type": "call_offer", "conversation": colleague, "sdp": "v=0\r\n"}),
            Error("forbidden"),
        ),
        // A supervisor never invites to, nor answers, a call of the conversation.
        (
            true,
            json!({"type": "call_invite", "conversation": colleague, "video": false}),
            Error("forbidden"),
        ),
        (
            true,
            json!({"type": "call_accept", "conversation": colleague}),
            Error("forbidden"),
        ),
    ]
}

/// What a visitor's `frame` after `welcome` is answered with (no media server; whether an agent has joined
/// or not).
fn visitor_expected(frame: &VisitorToServer) -> Outcome {
    use VisitorToServer as V;
    match frame {
        V::Hello { .. } | V::Resume { .. } => Outcome::Error("conflict"),
        V::CallOffer { .. } | V::CallPrepare {} => Outcome::Error("media_unavailable"),
        V::CallInvite { .. } => Outcome::Error("media_unavailable"),
        V::CallAccept {}
        | V::CallDecline {}
        | V::CallCancel {}
        | V::CallMediaState { .. }
        | V::CallScreenReply { .. } => Outcome::Error("conflict"),
        V::CallEnd { .. } | V::Typing { .. } | V::Delivered { .. } | V::Read { .. } | V::Payment { .. } => {
            Outcome::Silent
        }
        V::Message { .. } => Outcome::Answer("message"),
        // Ends the conversation and the socket (its own rows below).
        V::End {} => Outcome::Answer("ended"),
    }
}

/// The close code of a visitor socket whose first frame is `frame`, opened with a session token or for a
/// resume; `None` when it is let in.
fn visitor_first_frame_close(with_token: bool, frame: &VisitorToServer) -> Option<u16> {
    use VisitorToServer as V;
    match frame {
        V::Hello { .. } if with_token => None,
        // Hello with no token to join with; resume with an unknown token.
        V::Hello { .. } => Some(4400),
        V::Resume { .. } if with_token => Some(4400),
        V::Resume { .. } => Some(4401),
        V::Message { .. }
        | V::Typing { .. }
        | V::Delivered { .. }
        | V::Read { .. }
        | V::End {}
        | V::CallOffer { .. }
        | V::CallEnd { .. }
        | V::CallPrepare {}
        | V::CallInvite { .. }
        | V::CallAccept {}
        | V::CallDecline {}
        | V::CallCancel {}
        | V::CallMediaState { .. }
        | V::CallScreenReply { .. }
        | V::Payment { .. } => Some(4400),
    }
}

/// One frame of every visitor→server type, `end` last.
fn visitor_frames() -> Vec<Value> {
    vec![
        json!({"type": "hello", "client": "matrix"}),
        json!({"type": "resume", "resume_token": "rt_forged", "last_seq": 0}),
        json!({"type": "message", "client_id": "row", "body": "matrix"}),
        json!({"type": "typing", "active": true}),
        json!({"type": "delivered", "up_to_seq": 1}),
        json!({"type": "read", "up_to_seq": 1}),
        json!({"type": "call_offer", "sdp": "v=0\r\n"}),
        json!({"type": "call_end"}),
        json!({"type": "call_prepare"}),
        json!({"type": "call_invite", "video": false}),
        json!({"type": "call_accept"}),
        json!({"type": "call_decline"}),
        json!({"type": "call_cancel"}),
        json!({"type": "call_media_state", "audio": true, "video": false}),
        json!({"type": "call_screen_reply", "share": false}),
        json!({"type": "payment", "active": true}),
        json!({"type": "end"}),
    ]
}

/// The message types of one direction (`agent-to-server`, `visitor-to-server`) in `docs/ws-messages.md`.
fn documented_types(direction: &str) -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ws-messages.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let fence = format!("```json {direction}");
    let mut types = BTreeSet::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() == fence {
            let example: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
            types.insert(example["type"].as_str().unwrap().to_owned());
        }
    }
    assert!(!types.is_empty(), "no {direction} examples in {path}");
    types
}

fn type_of(frame: &Value) -> String {
    frame["type"].as_str().unwrap().to_owned()
}

/// A socket under test with its probe: a harmless round trip whose answer proves the socket still serves
/// frames and that the row before it was answered with nothing more.
struct Probed {
    ws: Ws,
    kind: ProbeKind,
    /// Probes sent.
    count: u32,
    /// Rows answered with an `error`.
    errors: usize,
}

enum ProbeKind {
    /// `set_presence`, flipping between `away` and `offline` (never `available`: no offers come), answered by
    /// this agent's `presence_changed`; the first is `away` if the flag is set (the agent is not away now).
    Agent(i64, bool),
    /// A chat `message`, answered by its own echo.
    Visitor,
}

impl ProbeKind {
    fn presence(away_first: bool, count: u32) -> &'static str {
        if (count % 2 == 1) == away_first {
            "away"
        } else {
            "offline"
        }
    }

    /// The `count`-th probe frame.
    fn frame(&self, count: u32) -> Value {
        match self {
            ProbeKind::Agent(_, away_first) => {
                json!({"type": "set_presence", "presence": Self::presence(*away_first, count)})
            }
            ProbeKind::Visitor => {
                json!({"type": "message", "client_id": format!("probe-{count}"), "body": "still here"})
            }
        }
    }

    /// Whether `f` answers the `count`-th probe.
    fn answers(&self, f: &Value, count: u32) -> bool {
        match self {
            ProbeKind::Agent(me, away_first) => {
                f["type"] == "presence_changed"
                    && f["agent"] == *me
                    && f["status"] == Self::presence(*away_first, count)
            }
            ProbeKind::Visitor => f["type"] == "message" && f["client_id"] == format!("probe-{count}"),
        }
    }
}

impl Probed {
    fn new(ws: Ws, kind: ProbeKind) -> Self {
        Self {
            ws,
            kind,
            count: 0,
            errors: 0,
        }
    }

    /// Every `error` the socket received answered a row that expected one.
    fn only_the_rows_errors(&self) {
        let errors = self.ws.log.iter().filter(|f| f.contains("\"type\":\"error\"")).count();
        assert_eq!(errors, self.errors, "{:?}", self.ws.log);
    }

    /// Sends `frame`, then the probe: `frame` must get `want` (an `error` echoing the frame's conversation,
    /// if it named one, and only then), and the probe its answer, with no other `error` in between.
    async fn row(&mut self, frame: &Value, want: Outcome) {
        let conversation = frame.get("conversation").cloned();
        self.ws.send(frame.clone()).await;
        self.count += 1;
        let count = self.count;
        self.ws.send(self.kind.frame(count)).await;
        if want != Outcome::Silent {
            // The row's answer comes before the probe's (one socket, one order).
            let got = self
                .ws
                .expect_where(|f| {
                    f["type"] == "error"
                        || self.kind.answers(f, count)
                        || matches!(want, Outcome::Answer(t) if f["type"] == t
                            && (frame.get("client_id").is_none() || f["client_id"] == frame["client_id"]))
                })
                .await;
            match want {
                Outcome::Error(code) => {
                    self.errors += 1;
                    assert_eq!(got["type"], "error", "{frame} → {got}");
                    assert_eq!(got["code"], code, "{frame} → {got}");
                    assert_eq!(got.get("conversation"), conversation.as_ref(), "{frame} → {got}");
                    // A reason, never the refused frame's text.
                    assert!(
                        got["message"]
                            .as_str()
                            .is_some_and(|m| !m.is_empty() && !m.contains("matrix")),
                        "{got}"
                    );
                }
                Outcome::Answer(t) => assert_eq!(got["type"], t, "{frame} → {got}"),
                Outcome::Silent => {}
            }
        }
        let got = self
            .ws
            .expect_where(|f| f["type"] == "error" || self.kind.answers(f, count))
            .await;
        assert_ne!(got["type"], "error", "after {frame}: {got}");
    }
}

/// Limits high enough that the rows and probes are never rate limited (the limits have tests of their own).
async fn live() -> Live {
    Live::start(
        |c| {
            c.live.messages_per_second = 1000;
            c.live.message_burst = 1000;
        },
        LiveParts::default(),
    )
    .await
}

#[tokio::test]
async fn agent_socket_refuses_every_type_for_others_and_in_the_wrong_state_and_stays_open() {
    let live = live().await;
    let (alice_id, alice) = live.user("alice", "agent", &["sales"]).await;
    let (_, bob) = live.user("bob", "agent", &["sales"]).await;
    let (_, carol) = live.user("carol", "agent", &["billing"]).await;
    let (sue_id, sue) = live.user("sue", "supervisor", &["sales"]).await;
    let billing_key = site_key(&live.admin, "billing", "billing").await;

    // Alice holds `own`; then Bob, less loaded, gets `colleague`; Carol holds `other` in billing.
    let mut a = live.agent(&alice).await;
    let (_v_own, own) = assigned_pair(&live, &mut a).await;
    let mut b = live.agent(&bob).await;
    let (_v_colleague, colleague) = assigned_pair(&live, &mut b).await;
    let mut c = live.agent(&carol).await;
    let (_v_other, welcome) = live.visitor_for(&billing_key).await;
    let other = welcome["conversation"].as_str().unwrap().to_string();
    c.expect_where(|f| f["type"] == "offered" && f["conversation"] == other.as_str())
        .await;
    c.send(json!({"type": "accept", "conversation": other})).await;
    c.expect("assigned").await;
    let s = live.console(&sue).await;

    // Every type the rows send is documented, and every documented type has rows.
    let samples = agent_conversation_frames(UNKNOWN);
    let state_rows = agent_state_rows(&own, &colleague, alice_id);
    let sent: BTreeSet<String> = samples
        .iter()
        .chain(state_rows.iter().map(|(_, f, _)| f))
        .map(type_of)
        .collect();
    assert_eq!(sent, documented_types("agent-to-server"));
    for frame in &samples {
        let typed: AgentToServer = serde_json::from_value(frame.clone()).unwrap();
        assert!(
            agent_expected(Whose::Unknown, &typed).is_some(),
            "{frame} names a conversation"
        );
    }

    let mut alice = Probed::new(a, ProbeKind::Agent(alice_id, true));
    for (whose, conv) in [
        (Whose::Unknown, UNKNOWN),
        (Whose::OtherGroup, other.as_str()),
        (Whose::Colleague, colleague.as_str()),
    ] {
        for frame in agent_conversation_frames(conv) {
            let typed: AgentToServer = serde_json::from_value(frame.clone()).unwrap();
            let code = agent_expected(whose, &typed).unwrap();
            alice.row(&frame, Outcome::Error(code)).await;
        }
    }
    let mut sue = Probed::new(s, ProbeKind::Agent(sue_id, true));
    for (as_supervisor, frame, want) in &state_rows {
        let probed = if *as_supervisor { &mut sue } else { &mut alice };
        probed.row(frame, *want).await;
    }

    // Nothing was changed by the refused frames: the conversations are where they were, and none ended.
    b.send(json!({"type": "message", "conversation": colleague, "client_id": "b-1", "body": "mine"}))
        .await;
    b.expect_where(|f| f["type"] == "message" && f["client_id"] == "b-1")
        .await;
    c.send(json!({"type": "message", "conversation": other, "client_id": "c-1", "body": "mine"}))
        .await;
    c.expect_where(|f| f["type"] == "message" && f["client_id"] == "c-1")
        .await;
    alice.only_the_rows_errors();
    sue.only_the_rows_errors();
    for log in [&alice.ws.log, &b.log, &c.log, &sue.ws.log] {
        assert!(log.iter().all(|f| !f.contains("\"type\":\"ended\"")), "{log:?}");
    }
    // Alice saw nothing of the others' conversations.
    for conv in [&colleague, &other] {
        let named = format!("\"conversation\":\"{conv}\"");
        assert!(
            alice
                .ws
                .log
                .iter()
                .all(|f| !f.contains(&named) || f.contains("\"type\":\"error\"")),
            "{:?}",
            alice.ws.log
        );
    }
}

#[tokio::test]
async fn visitor_socket_refuses_every_type_in_the_wrong_state_and_stays_open() {
    let live = live().await;
    let samples = visitor_frames();
    let sent: BTreeSet<String> = samples.iter().map(type_of).collect();
    assert_eq!(sent, documented_types("visitor-to-server"));
    let typed: Vec<VisitorToServer> = samples
        .iter()
        .map(|f| serde_json::from_value(f.clone()).unwrap())
        .collect();

    // Before `hello`/`resume`: a socket whose first frame is the wrong one is closed with the documented code.
    for (frame, t) in samples.iter().zip(&typed) {
        for with_token in [true, false] {
            let Some(code) = visitor_first_frame_close(with_token, t) else {
                continue;
            };
            let path = if with_token {
                format!("/api/v1/visitor/ws?token={}", live.token().await)
            } else {
                "/api/v1/visitor/ws".to_owned()
            };
            let mut ws = live.ws(&path, Some(SHOP), None).await.unwrap();
            ws.send(frame.clone()).await;
            assert_eq!(ws.closed().await, Closed::Code(code), "{frame} (token: {with_token})");
            assert!(ws.log.is_empty(), "{frame}: {:?}", ws.log);
        }
    }

    // After `welcome`, queued and then with an agent: every type gets its documented answer, the socket stays.
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (assigned, _) = assigned_pair(&live, &mut a).await;
    a.send(json!({"type": "set_presence", "presence": "away"})).await;
    a.expect_where(|f| f["type"] == "presence_changed" && f["status"] == "away")
        .await;
    let (queued, _) = live.visitor().await;
    for ws in [queued, assigned] {
        let mut v = Probed::new(ws, ProbeKind::Visitor);
        for (frame, t) in samples.iter().zip(&typed) {
            match visitor_expected(t) {
                // `end` (last): the conversation ends and the server closes the socket normally.
                Outcome::Answer(ended) if matches!(t, VisitorToServer::End {}) => {
                    v.ws.send(frame.clone()).await;
                    assert_eq!(v.ws.expect(ended).await["reason"], "visitor_left");
                    assert_eq!(v.ws.closed().await, Closed::Code(1000));
                }
                want => v.row(frame, want).await,
            }
        }
        v.only_the_rows_errors();
    }
    // Alice's conversation ended by the visitor's `end` alone.
    assert_eq!(a.expect("ended").await["reason"], "visitor_left");
    assert!(a.log.iter().all(|f| !f.contains("\"type\":\"error\"")), "{:?}", a.log);
}

#[tokio::test]
async fn with_media_call_frames_in_the_wrong_state_get_their_code_and_the_sockets_stay_open() {
    let live = Live::start(|_| {}, answer_all()).await;
    let (alice_id, alice) = live.user("alice", "agent", &["sales"]).await;
    let (sue_id, sue) = live.user("sue", "supervisor", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (v, conv) = assigned_pair(&live, &mut a).await;
    // Alice away (the probes keep her away or offline): the next visitor stays queued.
    a.send(json!({"type": "set_presence", "presence": "away"})).await;
    a.expect_where(|f| f["type"] == "presence_changed" && f["status"] == "away")
        .await;
    let s = live.console(&sue).await;
    let mut sockets = [
        Probed::new(live.visitor().await.0, ProbeKind::Visitor),
        Probed::new(v, ProbeKind::Visitor),
        Probed::new(a, ProbeKind::Agent(alice_id, false)),
        Probed::new(s, ProbeKind::Agent(sue_id, true)),
    ];
    let (queued, visitor, agent, supervisor) = (0, 1, 2, 3);
    let sdp = "v=0\r\n";
    let (v_offer, v_accept, v_end) = (
        json!({"type": "call_offer", "sdp": sdp}),
        json!({"type": "call_accept"}),
        json!({"type": "call_end"}),
    );
    let a_accept = json!({"type": "call_accept", "conversation": conv});
    let (v_invite, a_invite) = (
        json!({"type": "call_invite", "video": true}),
        json!({"type": "call_invite", "conversation": conv, "video": true}),
    );
    let a_end = json!({"type": "call_end", "conversation": conv});
    let monitor = json!({"type": "monitor_offer", "conversation": conv, "sdp": sdp});
    let whisper = json!({"type": "whisper", "conversation": conv, "active": true});
    let monitor_end = json!({"type": "monitor_end", "conversation": conv});
    let (v_prepare, a_prepare) = (
        json!({"type": "call_prepare"}),
        json!({"type": "call_prepare", "conversation": conv}),
    );
    use Outcome::{Answer, Error, Silent};
    let rows = [
        // No agent yet.
        (queued, &v_prepare, Error("conflict")),
        (queued, &v_offer, Error("conflict")),
        (queued, &v_accept, Error("conflict")),
        (queued, &v_invite, Error("conflict")),
        (queued, &v_end, Silent),
        // An agent, no call: TURN servers (an empty list here) for the visitor, the agent and a supervisor.
        (visitor, &v_prepare, Answer("ice_servers")),
        (agent, &a_prepare, Answer("ice_servers")),
        (supervisor, &a_prepare, Answer("ice_servers")),
        (visitor, &v_accept, Error("conflict")),
        (visitor, &v_end, Silent),
        (agent, &a_accept, Error("conflict")),
        (agent, &a_end, Silent),
        (supervisor, &monitor, Error("conflict")),
        (supervisor, &whisper, Error("conflict")),
        (supervisor, &monitor_end, Silent),
        // The visitor's call starts.
        (visitor, &v_offer, Answer("call_answer")),
        (visitor, &v_accept, Error("conflict")),
        (visitor, &v_invite, Error("conflict")),
        (agent, &a_invite, Error("conflict")),
        (agent, &monitor, Error("forbidden")),
        (agent, &whisper, Error("forbidden")),
        (supervisor, &whisper, Error("conflict")),
        (supervisor, &monitor_end, Silent),
        // The supervisor monitors: now a whisper is accepted; answering is still not theirs.
        (supervisor, &monitor, Answer("call_answer")),
        (supervisor, &whisper, Silent),
        (supervisor, &a_accept, Error("forbidden")),
        (agent, &a_accept, Error("conflict")),
    ];
    for (who, frame, want) in &rows {
        sockets[*who].row(frame, *want).await;
    }
    for s in &sockets {
        s.only_the_rows_errors();
    }
    // The accepted whisper reached the agent (before her last row's answer, in one socket's order).
    let whispers: Vec<Value> = sockets[agent]
        .ws
        .log
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .filter(|f| f["type"] == "whisper")
        .collect();
    assert_eq!(whispers.len(), 1, "{whispers:?}");
    assert_eq!(whispers[0]["active"], true);
}
