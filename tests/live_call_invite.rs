//! Call invitations on the live sockets (docs/protocol.md, Calls): either party invites, both hear it ring,
//! and every way it ends (accepted, declined, cancelled, expired, crossing invitations, an offer without
//! `call_accept`) is told to both; wrong states and other people's conversations get their error and change
//! nothing. The media server is a fake that takes every call (the hub's rules are under test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use live_common::{Live, Ws, answer_all, assigned_pair, site_key};
use serde_json::{Value, json};

async fn live_with_media(tweak: impl FnOnce(&mut relaydesk_signalling::config::Config)) -> Live {
    Live::start(tweak, answer_all()).await
}

/// Who sends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Visitor,
    Agent,
}

impl Side {
    fn wire(self) -> &'static str {
        match self {
            Side::Visitor => "visitor",
            Side::Agent => "agent",
        }
    }
}

/// A frame of `kind` from `side` in conversation `conv`.
fn frame(side: Side, conv: &str, kind: &str, extra: Value) -> Value {
    let mut f = json!({"type": kind});
    if side == Side::Agent {
        f["conversation"] = json!(conv);
    }
    if let (Some(o), Some(e)) = (f.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    f
}

struct Pair {
    v: Ws,
    a: Ws,
    conv: String,
}

impl Pair {
    async fn send(&mut self, side: Side, kind: &str, extra: Value) {
        let f = frame(side, &self.conv, kind, extra);
        match side {
            Side::Visitor => self.v.send(f).await,
            Side::Agent => self.a.send(f).await,
        }
    }

    /// Both sockets' next frame of `kind` (the agent's names the conversation).
    async fn both(&mut self, kind: &str) -> (Value, Value) {
        let v = self.v.expect(kind).await;
        let a = self.a.expect(kind).await;
        assert_eq!(a["conversation"], self.conv.as_str(), "{a}");
        assert!(v.get("conversation").is_none(), "{v}");
        (v, a)
    }

    /// Both hear `from`'s invitation ring.
    async fn rings(&mut self, from: Side, video: bool) {
        let (v, a) = self.both("call_invitation").await;
        for f in [&v, &a] {
            assert_eq!(
                (f["from"].as_str(), f["video"].as_bool()),
                (Some(from.wire()), Some(video)),
                "{f}"
            );
            assert!(f["expires_in_ms"].as_u64().unwrap() > 0, "{f}");
        }
    }

    /// Both hear `from`'s invitation end with `outcome`.
    async fn ended(&mut self, from: Side, outcome: &str) {
        let (v, a) = self.both("call_invitation_ended").await;
        for f in [&v, &a] {
            assert_eq!(
                (f["from"].as_str(), f["outcome"].as_str()),
                (Some(from.wire()), Some(outcome)),
                "{f}"
            );
        }
    }

    /// `side`'s next error (skipping other frames), with its code.
    async fn error(&mut self, side: Side) -> String {
        let e = match side {
            Side::Visitor => self.v.expect("error").await,
            Side::Agent => self.a.expect("error").await,
        };
        if side == Side::Agent {
            assert_eq!(e["conversation"], self.conv.as_str(), "{e}");
        }
        e["code"].as_str().unwrap().to_owned()
    }
}

async fn pair(live: &Live) -> Pair {
    let (_, alice) = live.user("alice", "agent", &["sales"]).await;
    let mut a = live.agent(&alice).await;
    let (v, conv) = assigned_pair(live, &mut a).await;
    Pair { v, a, conv }
}

#[tokio::test]
async fn every_way_an_invitation_ends_is_told_to_both_parties() {
    let live = live_with_media(|_| {}).await;
    let mut p = pair(&live).await;
    use Side::{Agent, Visitor};
    // (inviter, video, who answers, with what, outcome)
    let rows: [(Side, bool, Side, &str, &str); 7] = [
        (Visitor, true, Agent, "call_accept", "accepted"),
        (Visitor, false, Agent, "call_decline", "declined"),
        (Visitor, true, Visitor, "call_cancel", "cancelled"),
        (Agent, true, Visitor, "call_accept", "accepted"),
        (Agent, false, Visitor, "call_decline", "declined"),
        (Agent, true, Agent, "call_cancel", "cancelled"),
        // Hanging up withdraws one's own invitation.
        (Agent, false, Agent, "call_end", "cancelled"),
    ];
    for (from, video, answerer, answer, outcome) in rows {
        p.send(from, "call_invite", json!({"video": video})).await;
        p.rings(from, video).await;
        p.send(answerer, answer, json!({})).await;
        p.ended(from, outcome).await;
    }
    // Crossing invitations accept each other: the second inviter hears no error.
    p.send(Visitor, "call_invite", json!({"video": true})).await;
    p.send(Agent, "call_invite", json!({"video": false})).await;
    p.rings(Visitor, true).await;
    p.ended(Visitor, "accepted").await;
    // A first `call_offer` from the invited party answers the invitation too (a client without `call_accept`).
    p.send(Agent, "call_invite", json!({"video": true})).await;
    p.rings(Agent, true).await;
    p.send(
        Visitor,
        "call_offer",
        json!({"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}),
    )
    .await;
    // The answer comes from the media task, the invitation's end from the hub: in either order.
    p.ended(Agent, "accepted").await;
    if !p.v.log.iter().any(|f| f.contains("\"type\":\"call_answer\"")) {
        p.v.expect("call_answer").await;
    }
    // Now a call is in progress: nobody can invite until it is over.
    p.send(Agent, "call_invite", json!({"video": true})).await;
    assert_eq!(p.error(Agent).await, "conflict");
    // Screen sharing is asked for within the call: both legs must be there.
    p.send(Agent, "call_screen_request", json!({})).await;
    assert_eq!(p.error(Agent).await, "conflict");
    p.send(Agent, "call_offer", json!({"sdp": "v=0\r\n"})).await;
    p.a.expect("call_answer").await;
    p.send(Agent, "call_screen_request", json!({})).await;
    p.v.expect("call_screen_request").await;
    p.send(Visitor, "call_screen_reply", json!({"share": false})).await;
    let r = p.a.expect("call_screen_reply").await;
    assert_eq!(
        (r["conversation"].as_str(), r["share"].as_bool()),
        (Some(p.conv.as_str()), Some(false))
    );
    p.send(Agent, "call_end", json!({})).await;
    p.send(Visitor, "call_end", json!({})).await;
    p.a.expect_where(|f| f["type"] == "call_state" && f["state"] == "left" && f["reason"] == "hung_up")
        .await;
    p.send(Agent, "call_invite", json!({"video": true})).await;
    p.rings(Agent, true).await;
    for log in [&p.v.log, &p.a.log] {
        assert!(
            log.iter().all(|f| !f.contains("\"type\":\"error\"")
                || f.contains("a call is already")
                || f.contains("must both be in the call")),
            "{log:?}"
        );
    }
}

#[tokio::test]
async fn an_unanswered_invitation_expires_for_both_and_a_failed_leg_is_reported_as_failed() {
    let live = live_with_media(|c| c.live.call_invite_timeout_ms = 300).await;
    let mut p = pair(&live).await;
    p.send(Side::Visitor, "call_invite", json!({"video": false})).await;
    let (v, _) = p.both("call_invitation").await;
    assert_eq!(v["expires_in_ms"], 300);
    p.ended(Side::Visitor, "expired").await;
    // After it expired there is nothing to accept.
    p.send(Side::Agent, "call_accept", json!({})).await;
    assert_eq!(p.error(Side::Agent).await, "conflict");

    // A leg whose media could not connect hangs up as `failed`; the other party hears why.
    p.send(Side::Agent, "call_offer", json!({"sdp": "v=0\r\n"})).await;
    p.a.expect("call_answer").await;
    p.send(
        Side::Agent,
        "call_media_state",
        json!({"audio": false, "video": true, "reconnecting": true}),
    )
    .await;
    let m = p.v.expect("call_media_state").await;
    assert_eq!(
        (
            m["party"].as_str(),
            m["audio"].as_bool(),
            m["video"].as_bool(),
            m["screen"].as_bool(),
            m["reconnecting"].as_bool()
        ),
        (Some("agent"), Some(false), Some(true), Some(false), Some(true)),
        "{m}"
    );
    p.send(Side::Agent, "call_end", json!({"reason": "failed"})).await;
    let left = p.v.expect("call_state").await;
    assert_eq!(
        (left["party"].as_str(), left["state"].as_str(), left["reason"].as_str()),
        (Some("agent"), Some("left"), Some("failed"))
    );
    // The chat goes on.
    p.send(
        Side::Visitor,
        "message",
        json!({"client_id": "after-1", "body": "still here"}),
    )
    .await;
    p.a.expect_where(|f| f["type"] == "message" && f["body"] == "still here")
        .await;
}

#[tokio::test]
async fn wrong_states_and_other_peoples_conversations_are_refused_and_change_nothing() {
    let live = live_with_media(|_| {}).await;
    let mut p = pair(&live).await;
    let (_, bob) = live.user("bob", "agent", &["sales"]).await;
    let (_, carol) = live.user("carol", "agent", &["billing"]).await;
    site_key(&live.admin, "billing", "billing").await;
    let mut b = live.agent(&bob).await;
    let mut c = live.agent(&carol).await;
    use Side::{Agent, Visitor};

    // Nothing rings: nothing to answer or withdraw.
    for (side, kind) in [
        (Visitor, "call_accept"),
        (Visitor, "call_decline"),
        (Visitor, "call_cancel"),
        (Agent, "call_accept"),
        (Agent, "call_decline"),
        (Agent, "call_cancel"),
    ] {
        p.send(side, kind, json!({})).await;
        assert_eq!(p.error(side).await, "conflict", "{kind} from {side:?}");
    }
    // The visitor's invitation rings: the visitor cannot answer it, nor invite twice; the agent cannot
    // withdraw it.
    p.send(Visitor, "call_invite", json!({"video": true})).await;
    p.rings(Visitor, true).await;
    for (side, kind, extra) in [
        (Visitor, "call_invite", json!({"video": false})),
        (Visitor, "call_accept", json!({})),
        (Visitor, "call_decline", json!({})),
        (Agent, "call_cancel", json!({})),
        (Visitor, "call_media_state", json!({"audio": true, "video": true})),
    ] {
        p.send(side, kind, extra).await;
        assert_eq!(p.error(side).await, "conflict", "{kind} from {side:?}");
    }
    // A colleague of the same group, and an agent of another group, cannot touch it.
    for (ws, code) in [(&mut b, "forbidden"), (&mut c, "not_found")] {
        for kind in ["call_accept", "call_decline", "call_cancel", "call_invite"] {
            let mut f = json!({"type": kind, "conversation": p.conv});
            if kind == "call_invite" {
                f["video"] = json!(true);
            }
            ws.send(f).await;
            let e = ws.expect("error").await;
            assert_eq!(
                (e["code"].as_str(), e["conversation"].as_str()),
                (Some(code), Some(p.conv.as_str())),
                "{kind}: {e}"
            );
        }
    }
    // Still ringing, and still the visitor's: the agent's answer is the first ending.
    p.send(Agent, "call_decline", json!({})).await;
    p.ended(Visitor, "declined").await;
    for log in [&b.log, &c.log] {
        assert!(log.iter().all(|f| !f.contains("call_invitation")), "{log:?}");
    }
}

#[tokio::test]
async fn an_invitation_past_the_media_capacity_is_refused_as_busy() {
    // Room for one call: the first conversation's call takes it.
    let live = live_with_media(|c| c.media.max_participants = 2).await;
    let mut p = pair(&live).await;
    let (mut v2, conv2) = assigned_pair(&live, &mut p.a).await;
    p.send(Side::Visitor, "call_offer", json!({"sdp": "v=0\r\n"})).await;
    p.v.expect("call_answer").await;
    for frame in [
        json!({"type": "call_invite", "conversation": conv2, "video": true}),
        json!({"type": "call_invite", "conversation": p.conv, "video": true}),
    ] {
        p.a.send(frame.clone()).await;
        let e = p.a.expect("error").await;
        assert_eq!(e["conversation"], frame["conversation"], "{e}");
        // The full node refuses a new call; the conversation in a call refuses a second one.
        let want = if frame["conversation"] == conv2.as_str() {
            "media_busy"
        } else {
            "conflict"
        };
        assert_eq!(e["code"], want, "{e}");
    }
    v2.send(json!({"type": "call_invite", "video": false})).await;
    assert_eq!(v2.expect("error").await["code"], "media_busy");
    assert!(v2.log.iter().all(|f| !f.contains("call_invitation")), "{:?}", v2.log);
}
