//! The hub as a state machine: the flows of the end-to-end tests, without sockets, TLS or a runtime. Each
//! test feeds inputs with a virtual clock and reads the output in order.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;
use crate::store::Role as UserRole;

const GROUP: &str = "support";
const VISITOR: SocketId = SocketId(1);
const AGENT: SocketId = SocketId(10);
const AGENT2: SocketId = SocketId(11);
const SUPERVISOR: SocketId = SocketId(20);
const ALICE: AgentId = AgentId(1);
const BOB: AgentId = AgentId(2);

/// One output, in a form tests can compare.
#[derive(Debug)]
enum Out {
    /// The kinds of the writes committed.
    Commit(Vec<String>),
    Frame(SocketId, Value),
    Batch(SocketId, Vec<Value>),
    Close(SocketId, u16),
    Reply,
    Ended(ConversationId, EndReason),
    Media(MediaRequest),
    RemoveFiles(Vec<String>),
}

struct Harness {
    hub: Hub,
    now: Now,
    out: Vec<Out>,
    /// Every write committed, in order (what the store would hold).
    writes: Vec<LiveWrite>,
}

fn config(media: bool) -> HubConfig {
    HubConfig {
        live: LiveConfig::default(),
        max_media_participants: 200,
        media,
        turn: None,
        hand_over: false,
    }
}

fn user(id: AgentId, name: &str, role: UserRole) -> User {
    User {
        id: id.0,
        username: name.to_lowercase(),
        display_name: name.into(),
        role,
        groups: vec![GROUP.into()],
        max_conversations: 3,
        disabled: false,
        created_at: 0,
    }
}

impl Harness {
    fn new(media: bool) -> Self {
        let now = Now {
            at: Instant::now(),
            unix_ms: 1_700_000_000_000,
        };
        Self {
            hub: Hub::new(config(media), SharedOccupancy::default(), now),
            now,
            out: Vec::new(),
            writes: Vec::new(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now.at += by;
        self.now.unix_ms += u64::try_from(by.as_millis()).unwrap();
    }

    /// Feeds one input and collects its output.
    fn input(&mut self, input: Input) -> &[Out] {
        self.hub.handle(input, self.now);
        self.drain()
    }

    fn timeout(&mut self) -> &[Out] {
        self.hub.handle_timeout(self.now);
        self.drain()
    }

    fn drain(&mut self) -> &[Out] {
        let start = self.out.len();
        while let Some(o) = self.hub.poll_output() {
            let o = match o {
                Output::Commit(writes) => {
                    let kinds = writes
                        .iter()
                        .map(|w| {
                            format!("{w:?}")
                                .chars()
                                .take_while(char::is_ascii_alphanumeric)
                                .collect()
                        })
                        .collect();
                    self.writes.extend(writes);
                    Out::Commit(kinds)
                }
                Output::Text(s, text) => Out::Frame(s, serde_json::from_str(&text).unwrap()),
                Output::Batch(s, frames, _) => {
                    Out::Batch(s, frames.iter().map(|f| serde_json::from_str(f).unwrap()).collect())
                }
                Output::Close(s, code, _) => Out::Close(s, code),
                Output::Reply(reply) => {
                    reply();
                    Out::Reply
                }
                Output::Ended(e) => Out::Ended(e.id, e.reason),
                Output::Media(m) => Out::Media(m),
                Output::RemoveFiles(f) => Out::RemoveFiles(f),
            };
            self.out.push(o);
        }
        &self.out[start..]
    }

    fn visitor_join(&mut self, socket: SocketId) -> ConversationId {
        let grant = TokenGrant {
            visitor_id: "v-1".into(),
            origin: "https://shop.example".into(),
            site_key: "key-1".into(),
            group: GROUP.into(),
            expires_at: self.now.at + Duration::from_secs(60),
        };
        self.input(Input::VisitorJoin { socket, grant });
        let welcome = self.frame(socket, "welcome");
        serde_json::from_value(welcome["conversation"].clone()).unwrap()
    }

    fn visitor(&mut self, socket: SocketId, frame: Value) -> &[Out] {
        let frame = serde_json::from_value(frame).unwrap();
        self.input(Input::VisitorFrame { socket, frame })
    }

    fn agent(&mut self, socket: SocketId, frame: Value) -> &[Out] {
        let frame = serde_json::from_value(frame).unwrap();
        self.input(Input::AgentFrame { socket, frame })
    }

    /// An agent socket opened, said hello and is available.
    fn agent_online(&mut self, socket: SocketId, id: AgentId, name: &str, role: UserRole) {
        self.input(Input::AgentOpen {
            socket,
            user: user(id, name, role),
        });
        self.agent(socket, json!({"type": "hello"}));
        if role == UserRole::Agent {
            self.agent(socket, json!({"type": "set_presence", "presence": "available"}));
        }
    }

    /// A visitor joined and Alice accepted the offer.
    fn assigned(&mut self) -> ConversationId {
        self.agent_online(AGENT, ALICE, "Alice", UserRole::Agent);
        let conv = self.visitor_join(VISITOR);
        self.frame(AGENT, "offered");
        self.agent(AGENT, json!({"type": "accept", "conversation": conv}));
        self.frame(AGENT, "assigned");
        conv
    }

    /// The frames of type `kind` sent to `socket` so far (replays included).
    fn frames(&self, socket: SocketId, kind: &str) -> Vec<Value> {
        self.out
            .iter()
            .flat_map(|o| match o {
                Out::Frame(s, f) if *s == socket => vec![f.clone()],
                Out::Batch(s, fs) if *s == socket => fs.clone(),
                _ => Vec::new(),
            })
            .filter(|f| f["type"] == kind)
            .collect()
    }

    /// The last frame of type `kind` sent to `socket`.
    fn frame(&self, socket: SocketId, kind: &str) -> Value {
        match self.frames(socket, kind).pop() {
            Some(f) => f,
            None => panic!("no {kind} frame to {socket:?} in {:#?}", self.out),
        }
    }

    fn closes(&self, socket: SocketId) -> Vec<u16> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Out::Close(s, code) if *s == socket => Some(*code),
                _ => None,
            })
            .collect()
    }

    fn ended(&self) -> Vec<(ConversationId, EndReason)> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Out::Ended(id, reason) => Some((*id, *reason)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_visitor_is_queued_offered_and_accepted() {
    let mut h = Harness::new(false);
    h.agent_online(AGENT, ALICE, "Alice", UserRole::Agent);
    let out = h.input(Input::VisitorJoin {
        socket: VISITOR,
        grant: TokenGrant {
            visitor_id: "v-1".into(),
            origin: "https://shop.example".into(),
            site_key: "key-1".into(),
            group: GROUP.into(),
            expires_at: Instant::now(),
        },
    });
    // The conversation is created at rest before the visitor hears of it.
    assert!(matches!(&out[0], Out::Commit(w) if w.iter().any(|k| k == "Create")));
    let conv: ConversationId = serde_json::from_value(h.frame(VISITOR, "welcome")["conversation"].clone()).unwrap();
    assert_eq!(h.frame(AGENT, "offered")["conversation"], json!(conv));
    h.agent(AGENT, json!({"type": "accept", "conversation": conv}));
    assert_eq!(h.frame(AGENT, "assigned")["group"], GROUP);
    assert_eq!(h.frame(VISITOR, "assigned")["agent_name"], "Alice");
    assert!(h.hub.ix.assigned.contains(&conv));
}

#[test]
fn chat_flows_both_ways_masked_and_echoed_after_its_commit() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    let out = h.visitor(
        VISITOR,
        json!({"type": "message", "client_id": "c1", "body": "my card 4111 1111 1111 1111"}),
    );
    // The write comes first: nothing of the message is sent before it is durable.
    assert!(matches!(&out[0], Out::Commit(w) if w == &["Message"]));
    let echo = h.frame(VISITOR, "message");
    assert_eq!(echo["client_id"], "c1");
    assert_eq!(echo["seq"], 1);
    let seen = h.frame(AGENT, "message");
    assert_eq!(seen["conversation"], json!(conv));
    assert!(
        seen["client_id"].is_null(),
        "the agent does not see the visitor's client id"
    );
    let body = seen["body"].as_str().unwrap();
    assert!(!body.contains("4111 1111 1111 1111"), "unmasked: {body}");
    assert_eq!(echo["body"], seen["body"]);

    h.agent(
        AGENT,
        json!({"type": "message", "conversation": conv, "client_id": "a1", "body": "thanks"}),
    );
    assert_eq!(h.frame(VISITOR, "message")["body"], "thanks");
    assert_eq!(h.frame(VISITOR, "message")["seq"], 2);
    assert_eq!(h.frame(AGENT, "message")["client_id"], "a1");
}

#[test]
fn a_split_card_number_amends_the_earlier_message() {
    let mut h = Harness::new(false);
    h.assigned();
    h.visitor(
        VISITOR,
        json!({"type": "message", "client_id": "c1", "body": "4111 1111"}),
    );
    let out = h.visitor(
        VISITOR,
        json!({"type": "message", "client_id": "c2", "body": "1111 1111"}),
    );
    // Both the new message and the amended one are written before the frames go out.
    assert!(matches!(&out[0], Out::Commit(w) if w.len() == 2));
    let amended = h.frame(VISITOR, "message_amended");
    assert_eq!(amended["seq"], 1);
    assert!(!amended["body"].as_str().unwrap().contains("4111"));
    assert_eq!(h.frame(AGENT, "message_amended")["seq"], 1);
}

#[test]
fn an_agent_hello_replays_the_history_after_its_resume_point() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    for n in 1..=3 {
        h.visitor(
            VISITOR,
            json!({"type": "message", "client_id": format!("c{n}"), "body": format!("m{n}")}),
        );
    }
    // A second tab of Alice's, which has seen up to seq 1.
    h.input(Input::AgentOpen {
        socket: AGENT2,
        user: user(ALICE, "Alice", UserRole::Agent),
    });
    h.agent(
        AGENT2,
        json!({"type": "hello", "resume": [{"conversation": conv, "last_seq": 1}]}),
    );
    let welcome = h.frame(AGENT2, "welcome");
    assert_eq!(welcome["conversations"], json!([conv]));
    let replayed: Vec<Value> = h.frames(AGENT2, "message").iter().map(|m| m["seq"].clone()).collect();
    assert_eq!(replayed, vec![json!(2), json!(3)]);
}

#[test]
fn a_visitor_resumes_within_the_grace_and_hears_what_it_missed() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    let token = h.frame(VISITOR, "welcome")["resume_token"].as_str().unwrap().to_owned();
    h.visitor(VISITOR, json!({"type": "message", "client_id": "c1", "body": "one"}));
    h.input(Input::VisitorClosed { socket: VISITOR });
    h.agent(
        AGENT,
        json!({"type": "message", "conversation": conv, "client_id": "a1", "body": "still there?"}),
    );
    h.advance(Duration::from_secs(30));
    let back = SocketId(2);
    h.input(Input::VisitorResume {
        socket: back,
        origin: "https://shop.example".into(),
        resume_token: token.clone(),
        last_seq: 1,
    });
    assert_eq!(h.frame(back, "welcome")["conversation"], json!(conv));
    assert_ne!(h.frame(back, "welcome")["resume_token"], json!(token));
    let missed: Vec<Value> = h.frames(back, "message").iter().map(|m| m["body"].clone()).collect();
    assert_eq!(missed, vec![json!("still there?")]);
    assert_eq!(h.frame(back, "assigned")["agent_name"], "Alice");
    // The grace deadline of the closed socket no longer ends the conversation.
    h.advance(Duration::from_secs(60));
    h.timeout();
    assert!(h.ended().is_empty());
    // The used token is refused.
    h.input(Input::VisitorResume {
        socket: SocketId(3),
        origin: "https://shop.example".into(),
        resume_token: token,
        last_seq: 0,
    });
    assert_eq!(h.closes(SocketId(3)), vec![close::RESUME_REFUSED]);
}

#[test]
fn the_grace_running_out_ends_the_conversation_as_visitor_lost() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    h.input(Input::VisitorClosed { socket: VISITOR });
    let due = h.hub.poll_timeout().unwrap();
    assert!(due <= h.now.at + Duration::from_millis(LiveConfig::default().resume_grace_ms));
    h.advance(Duration::from_millis(LiveConfig::default().resume_grace_ms));
    let out = h.timeout();
    // The end is written before anyone hears of it, and the archive gets it after.
    assert!(matches!(&out[0], Out::Commit(w) if w.iter().any(|k| k == "Ended")));
    assert_eq!(h.frame(AGENT, "ended")["reason"], "visitor_lost");
    assert_eq!(h.ended(), vec![(conv, EndReason::VisitorLost)]);
    assert!(h.hub.convs.is_empty());
}

#[test]
fn a_transfer_moves_the_conversation_to_another_agent() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    h.agent_online(AGENT2, BOB, "Bob", UserRole::Agent);
    h.agent(
        AGENT,
        json!({"type": "transfer", "conversation": conv, "to": {"kind": "agent", "agent": BOB}}),
    );
    let offered = h.frame(AGENT2, "offered");
    assert_eq!(offered["transfer_from"], json!(ALICE));
    h.agent(AGENT2, json!({"type": "accept", "conversation": conv}));
    assert_eq!(h.frame(AGENT, "unassigned")["reason"], "transferred");
    assert_eq!(h.frame(AGENT2, "assigned")["conversation"], json!(conv));
    assert_eq!(h.frame(VISITOR, "assigned")["agent_name"], "Bob");
}

#[test]
fn the_agent_ends_the_conversation() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    h.agent(AGENT, json!({"type": "end", "conversation": conv}));
    assert_eq!(h.frame(VISITOR, "ended")["reason"], "agent_ended");
    assert_eq!(h.frame(AGENT, "ended")["reason"], "agent_ended");
    assert_eq!(h.closes(VISITOR), vec![1000]);
    assert_eq!(h.ended(), vec![(conv, EndReason::AgentEnded)]);
    // Every index forgot it.
    assert!(
        h.hub.ix.visitor_sockets.is_empty() && h.hub.ix.resume_index.is_empty() && !h.hub.ix.assigned.contains(&conv)
    );
}

#[test]
fn a_supervisor_watches_but_hears_no_whisper_without_monitoring() {
    let mut h = Harness::new(true);
    let conv = h.assigned();
    h.visitor(VISITOR, json!({"type": "message", "client_id": "c1", "body": "hello"}));
    h.agent_online(SUPERVISOR, AgentId(3), "Sam", UserRole::Supervisor);
    let list = h.frame(SUPERVISOR, "live_list");
    assert_eq!(list["conversations"][0]["conversation"], json!(conv));
    h.agent(SUPERVISOR, json!({"type": "watch", "conversation": conv}));
    assert_eq!(h.frame(SUPERVISOR, "message")["body"], "hello");
    h.visitor(VISITOR, json!({"type": "message", "client_id": "c2", "body": "again"}));
    assert_eq!(h.frame(SUPERVISOR, "message")["body"], "again");
    // The agent never hears of a watcher; a whisper needs a monitoring leg.
    h.agent(
        SUPERVISOR,
        json!({"type": "whisper", "conversation": conv, "active": true}),
    );
    assert_eq!(h.frame(SUPERVISOR, "error")["code"], "conflict");
    assert!(h.frames(AGENT, "whisper").is_empty());
    // Another agent of the group may not watch.
    h.agent_online(AGENT2, BOB, "Bob", UserRole::Agent);
    h.agent(AGENT2, json!({"type": "watch", "conversation": conv}));
    assert_eq!(h.frame(AGENT2, "error")["code"], "forbidden");
    assert!(h.frames(AGENT2, "message").is_empty());
}

#[test]
fn a_call_is_invited_accepted_and_joined_through_media_requests() {
    let mut h = Harness::new(true);
    let conv = h.assigned();
    h.visitor(VISITOR, json!({"type": "call_invite", "video": true}));
    assert_eq!(h.frame(AGENT, "call_invitation")["from"], "visitor");
    h.agent(AGENT, json!({"type": "call_accept", "conversation": conv}));
    assert_eq!(h.frame(VISITOR, "call_invitation_ended")["outcome"], "accepted");
    let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
    let out = h.visitor(VISITOR, json!({"type": "call_offer", "sdp": sdp}));
    let join = out.iter().find_map(|o| match o {
        Out::Media(MediaRequest::Join { leg, .. }) => Some(*leg),
        _ => None,
    });
    let leg = join.unwrap();
    let participant = leg.participant;
    assert_eq!(
        (leg.party, leg.socket, leg.renegotiate),
        (Party::Visitor, VISITOR, false)
    );
    h.input(Input::CallAnswered {
        leg,
        result: Ok("v=0 answer".into()),
    });
    assert_eq!(h.frame(VISITOR, "call_answer")["sdp"], "v=0 answer");
    h.input(Input::Media(MediaEvent::Connected {
        room: MediaRoomId(conv.0),
        participant,
    }));
    assert_eq!(h.frame(AGENT, "call_state")["state"], "connected");
    // The visitor hangs up: its leg leaves the room.
    let out = h.visitor(VISITOR, json!({"type": "call_end"}));
    assert!(
        out.iter()
            .any(|o| matches!(o, Out::Media(MediaRequest::Leave { participant: p, .. }) if *p == participant))
    );
    assert_eq!(h.frame(AGENT, "call_state")["state"], "left");
}

#[test]
fn a_failed_join_forgets_the_leg_and_tells_its_socket() {
    let mut h = Harness::new(true);
    let conv = h.assigned();
    h.visitor(VISITOR, json!({"type": "call_offer", "sdp": "v=0\r\n"}));
    let participant = *h.hub.ix.legs.keys().next().unwrap();
    h.input(Input::CallAnswered {
        leg: LegOffer {
            conversation: conv,
            participant,
            party: Party::Visitor,
            socket: VISITOR,
            renegotiate: false,
        },
        result: Err(MediaError::Capacity),
    });
    assert_eq!(h.frame(VISITOR, "error")["code"], "media_busy");
    assert!(h.hub.ix.legs.is_empty());
}

#[test]
fn call_invitations_are_declined_or_expire() {
    let mut h = Harness::new(true);
    let conv = h.assigned();
    h.agent(
        AGENT,
        json!({"type": "call_invite", "conversation": conv, "video": false}),
    );
    h.visitor(VISITOR, json!({"type": "call_decline"}));
    assert_eq!(h.frame(AGENT, "call_invitation_ended")["outcome"], "declined");
    h.agent(
        AGENT,
        json!({"type": "call_invite", "conversation": conv, "video": false}),
    );
    h.advance(Duration::from_millis(LiveConfig::default().call_invite_timeout_ms));
    h.timeout();
    assert_eq!(h.frame(VISITOR, "call_invitation_ended")["outcome"], "expired");
}

#[test]
fn calls_are_refused_without_a_media_side() {
    let mut h = Harness::new(false);
    h.assigned();
    let out = h.visitor(VISITOR, json!({"type": "call_invite", "video": true}));
    assert!(!out.iter().any(|o| matches!(o, Out::Media(_))));
    assert_eq!(h.frame(VISITOR, "error")["code"], "media_unavailable");
}

#[test]
fn file_slots_are_taken_released_and_bounded() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    let max = LiveConfig::default().files.max_per_conversation;
    let ask = |h: &mut Harness| {
        let (reply, mut rx) = oneshot::channel();
        h.input(Input::FileUpload {
            caller: FileCaller::Agent(ALICE),
            conversation: Some(conv),
            reply,
        });
        rx.try_recv().unwrap()
    };
    for _ in 0..max {
        assert_eq!(ask(&mut h), Ok(conv));
    }
    assert_eq!(ask(&mut h).unwrap_err().0, ErrorCode::TooLarge);
    h.input(Input::FileSlotReleased { conversation: conv });
    assert_eq!(ask(&mut h), Ok(conv));
    // Someone else's agent is not told the conversation exists.
    h.agent_online(AGENT2, BOB, "Bob", UserRole::Agent);
    let (reply, mut rx) = oneshot::channel();
    h.input(Input::FileUpload {
        caller: FileCaller::Agent(BOB),
        conversation: Some(conv),
        reply,
    });
    assert!(rx.try_recv().unwrap().is_err());
}

#[test]
fn a_shared_file_is_posted_masked_and_answered_after_its_commit() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    let (reply, _rx) = oneshot::channel();
    h.input(Input::FileUpload {
        caller: FileCaller::Agent(ALICE),
        conversation: Some(conv),
        reply,
    });
    let key = Arc::new(DataKey::generate().unwrap());
    let file = StoredFile {
        id: "f1".into(),
        cipher: Arc::new(ConversationCipher::new(&key, "f1")),
        key,
        raw_name: "invoice 4111 1111 1111 1111.pdf".into(),
        size: 10,
        mime: "application/pdf".into(),
        sha256: "00".into(),
    };
    let (reply, mut rx) = oneshot::channel();
    let out = h.input(Input::FileShared {
        caller: FileCaller::Agent(ALICE),
        conversation: conv,
        file,
        reply,
    });
    assert!(matches!(&out[0], Out::Commit(w) if w.iter().any(|k| k == "File")));
    assert!(matches!(out.last(), Some(Out::Reply)));
    let shared = rx.try_recv().unwrap().unwrap();
    assert!(!shared.name.contains("4111 1111 1111 1111"));
    assert_eq!(h.frame(VISITOR, "message")["file"]["id"], "f1");
    // Its conversation's end removes it from disk.
    h.agent(AGENT, json!({"type": "end", "conversation": conv}));
    assert!(h.out.iter().any(|o| matches!(o, Out::RemoveFiles(f) if f == &["f1"])));
}

#[test]
fn a_user_whose_sessions_ended_is_closed_with_4401() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    let (reply, mut rx) = oneshot::channel();
    let mut changed = user(ALICE, "Alice", UserRole::Agent);
    changed.display_name = "Alice B".into();
    h.input(Input::UserChanged {
        user: changed.clone(),
        sessions_ended: false,
        reply: Some(reply),
    });
    // A new name only: the socket stays.
    assert!(h.closes(AGENT).is_empty());
    assert_eq!(rx.try_recv(), Ok(()));
    h.input(Input::UserChanged {
        user: changed,
        sessions_ended: true,
        reply: None,
    });
    assert_eq!(h.closes(AGENT), vec![close::RESUME_REFUSED]);
    // The socket counts as closed: its frames are not served.
    h.agent(AGENT, json!({"type": "end", "conversation": conv}));
    assert!(h.ended().is_empty());
}

#[test]
fn a_role_change_closes_the_sockets_and_a_group_change_too() {
    let mut h = Harness::new(false);
    h.agent_online(AGENT, ALICE, "Alice", UserRole::Agent);
    h.input(Input::UserChanged {
        user: user(ALICE, "Alice", UserRole::Supervisor),
        sessions_ended: false,
        reply: None,
    });
    assert_eq!(h.closes(AGENT), vec![close::RESUME_REFUSED]);
    h.agent_online(AGENT2, BOB, "Bob", UserRole::Agent);
    let mut moved = user(BOB, "Bob", UserRole::Agent);
    moved.groups = vec!["sales".into()];
    h.input(Input::UserChanged {
        user: moved,
        sessions_ended: false,
        reply: None,
    });
    assert_eq!(h.closes(AGENT2), vec![close::RIGHTS_CHANGED]);
}

#[test]
fn an_overflowed_agent_socket_counts_as_closed() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    h.input(Input::Overflowed { socket: AGENT });
    assert!(!h.hub.sockets.contains(&AGENT));
    h.visitor(
        VISITOR,
        json!({"type": "message", "client_id": "c1", "body": "anyone?"}),
    );
    assert!(h.frames(AGENT, "message").is_empty());
    assert!(h.hub.convs.contains_key(&conv));
}

#[test]
fn shutdown_ends_every_conversation_as_closed_and_closes_every_socket() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    let other = h.visitor_join(SocketId(5));
    h.hub.shutdown(h.now);
    h.drain();
    assert_eq!(h.frame(VISITOR, "ended")["reason"], "closed");
    assert_eq!(h.frame(AGENT, "ended")["reason"], "closed");
    let mut ended = h.ended();
    ended.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(ended, vec![(conv, EndReason::Closed), (other, EndReason::Closed)]);
    for s in [VISITOR, SocketId(5), AGENT] {
        assert_eq!(h.closes(s), vec![1001], "{s:?}");
    }
    assert!(h.hub.poll_output().is_none());
}

#[test]
fn in_a_cluster_shutdown_hands_over_ending_nothing_and_closes_with_1012() {
    let mut h = Harness::new(false);
    h.hub.config.hand_over = true;
    let conv = h.assigned();
    let other = h.visitor_join(SocketId(5));
    h.hub.shutdown(h.now);
    h.drain();
    assert!(h.frames(VISITOR, "ended").is_empty());
    assert!(h.frames(AGENT, "ended").is_empty());
    assert!(
        h.ended().is_empty(),
        "nothing is archived: the next leader restores both"
    );
    assert!(
        !h.writes.iter().any(|w| matches!(w, LiveWrite::Ended { .. })),
        "{:?}",
        h.writes
    );
    for s in [VISITOR, SocketId(5), AGENT] {
        assert_eq!(h.closes(s), vec![1012], "{s:?}");
    }
    assert!(h.hub.convs.contains_key(&conv) && h.hub.convs.contains_key(&other));
    assert!(h.hub.poll_output().is_none());
}

impl Harness {
    /// The visitor and Alice both offer and connect their call legs; returns their participants.
    fn in_call(&mut self, conv: ConversationId) -> (MediaParticipantId, MediaParticipantId) {
        self.visitor(VISITOR, json!({"type": "call_offer", "sdp": "v=0\r\n"}));
        self.agent(
            AGENT,
            json!({"type": "call_offer", "conversation": conv, "sdp": "v=0\r\n"}),
        );
        let visitor = self.leg(conv, Party::Visitor);
        let agent = self.leg(conv, Party::Agent(ALICE));
        for participant in [visitor, agent] {
            self.input(Input::Media(MediaEvent::Connected {
                room: MediaRoomId(conv.0),
                participant,
            }));
        }
        (visitor, agent)
    }

    fn leg(&self, conv: ConversationId, party: Party) -> MediaParticipantId {
        self.hub.convs[&conv].calls[&party].participant
    }
}

#[test]
fn a_supervisor_monitors_and_whispers_to_the_agent_only() {
    let mut h = Harness::new(true);
    let conv = h.assigned();
    h.in_call(conv);
    let sam = AgentId(3);
    h.agent_online(SUPERVISOR, sam, "Sam", UserRole::Supervisor);
    let out = h.agent(
        SUPERVISOR,
        json!({"type": "monitor_offer", "conversation": conv, "sdp": "v=0\r\n"}),
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Out::Media(MediaRequest::Join {
            leg: LegOffer {
                party: Party::Supervisor(_),
                ..
            },
            role: MediaRole::Supervisor { whisper: false },
            ..
        })
    )));
    let out = h.agent(
        SUPERVISOR,
        json!({"type": "whisper", "conversation": conv, "active": true}),
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Out::Media(MediaRequest::SetRole {
            role: MediaRole::Supervisor { whisper: true },
            ..
        })
    )));
    let whisper = h.frame(AGENT, "whisper");
    assert_eq!(
        (whisper["supervisor"].as_str(), whisper["active"].as_bool()),
        (Some("Sam"), Some(true))
    );
    assert!(h.frames(VISITOR, "whisper").is_empty());
    // The monitoring leg's state is the supervisor's alone.
    let calls_seen = h.frames(VISITOR, "call_state").len();
    let leg = h.leg(conv, Party::Supervisor(sam));
    h.input(Input::Media(MediaEvent::Connected {
        room: MediaRoomId(conv.0),
        participant: leg,
    }));
    assert_eq!(h.frame(SUPERVISOR, "call_state")["party"], "supervisor");
    assert_eq!(h.frames(VISITOR, "call_state").len(), calls_seen);
    // A whisper change the media side refused is reported to the supervisor.
    h.input(Input::WhisperFailed {
        conversation: conv,
        socket: SUPERVISOR,
        error: MediaError::Unavailable,
    });
    assert_eq!(h.frame(SUPERVISOR, "error")["code"], "media_unavailable");
    // Hanging up ends the whisper for the agent.
    h.agent(SUPERVISOR, json!({"type": "monitor_end", "conversation": conv}));
    assert_eq!(h.frame(AGENT, "whisper")["active"], false);
}

#[test]
fn an_always_recorded_call_is_recorded_from_its_first_leg_to_its_end() {
    let mut h = Harness::new(true);
    h.hub
        .set_recording_policy(GroupId::from_name(GROUP), crate::store::RecordingPolicy::Always);
    let conv = h.assigned();
    h.visitor(VISITOR, json!({"type": "call_prepare"}));
    // The visitor hears that the call is recorded before it gets its ICE servers.
    let kinds: Vec<Value> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Out::Frame(s, f) if *s == VISITOR => Some(f["type"].clone()),
            _ => None,
        })
        .collect();
    let at = |k: &str| kinds.iter().position(|t| t == k).unwrap();
    assert!(at("recording") < at("ice_servers"));
    assert_eq!(h.frame(VISITOR, "recording")["policy"], "always");
    h.in_call(conv);
    let asked = h.out.iter().any(|o| {
        matches!(
            o,
            Out::Media(MediaRequest::RecordingChange {
                action: RecordingAction::Start,
                ..
            })
        )
    });
    assert!(asked);
    h.input(Input::Recording(RecordingOutcome {
        conversation: conv,
        result: Ok((crate::chat_protocol::RecordingState::On, Some("r1".into()))),
        by: None,
        action: RecordingAction::Start,
    }));
    assert_eq!(h.frame(VISITOR, "recording")["state"], "on");
    assert_eq!(h.frame(AGENT, "recording")["state"], "on");
    assert_eq!(h.frame(VISITOR, "message")["body"], "Recording started");
    // Both parties leave: the recording stops.
    h.visitor(VISITOR, json!({"type": "call_end"}));
    h.agent(AGENT, json!({"type": "call_end", "conversation": conv}));
    let stopped = h
        .out
        .iter()
        .any(|o| matches!(o, Out::Media(MediaRequest::RecordingStop { id, .. }) if id == "r1"));
    assert!(stopped);
    assert_eq!(h.frame(VISITOR, "recording")["state"], "off");
    assert_eq!(h.frame(AGENT, "message")["body"], "Recording stopped");
}

impl Harness {
    /// `conv` as the store would give it back after a crash: its committed writes, applied in order.
    fn at_rest(&self, conv: ConversationId) -> crate::live_store::StoredLiveConversation {
        let master = crate::archive_crypto::MasterKey::generate().unwrap();
        let mut stored = None;
        for w in &self.writes {
            if let LiveWrite::Create(c) = w
                && c.id == conv.0
            {
                let key = c.key.wrap(&master, "k").unwrap().unwrap_key(&master, "k").unwrap();
                stored = Some(crate::live_store::StoredLiveConversation {
                    id: c.id,
                    group: c.group.clone(),
                    site_key: c.site_key.clone(),
                    origin: c.origin.clone(),
                    started_at_ms: c.started_at_ms,
                    agent: None,
                    resume_hash: c.resume_hash,
                    files_hash: c.files_hash,
                    key: Ok(key),
                    state: c.state.clone(),
                    ended: None,
                    messages: Vec::new(),
                    files: Vec::new(),
                });
            }
            let Some(s) = stored.as_mut() else { continue };
            match w {
                LiveWrite::Tokens {
                    id,
                    resume_hash,
                    files_hash,
                } if *id == conv.0 => {
                    s.resume_hash = *resume_hash;
                    s.files_hash = *files_hash;
                }
                LiveWrite::Routing { id, agent, .. } if *id == conv.0 => s.agent = *agent,
                LiveWrite::State { id, state } if *id == conv.0 => s.state.clone_from(state),
                LiveWrite::Message { id, seq, body } if *id == conv.0 => {
                    s.messages.retain(|(n, _)| n != seq);
                    s.messages.push((*seq, body.clone()));
                    s.messages.sort_unstable_by_key(|(n, _)| *n);
                }
                LiveWrite::Ended { id, at_ms, reason } if *id == conv.0 => s.ended = Some((*at_ms, reason.clone())),
                _ => {}
            }
        }
        stored.unwrap()
    }
}

#[test]
fn a_restart_brings_back_the_conversation_its_history_and_its_agent() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    h.visitor(
        VISITOR,
        json!({"type": "message", "client_id": "c1", "body": "card 4111 1111 1111 1111"}),
    );
    let masked = h.frame(VISITOR, "message")["body"].clone();
    let token = h.frame(VISITOR, "welcome")["resume_token"].as_str().unwrap().to_owned();
    let stored = h.at_rest(conv);

    let mut r = Harness::new(false);
    let users = HashMap::from([(ALICE.0, user(ALICE, "Alice", UserRole::Agent))]);
    let keep = r.hub.restore(vec![stored], users, r.now);
    r.drain();
    assert!(keep.is_empty());
    assert!(r.hub.ix.assigned.contains(&conv));
    // Alice comes back within her grace: the conversation is still hers, with its history.
    r.input(Input::AgentOpen {
        socket: AGENT,
        user: user(ALICE, "Alice", UserRole::Agent),
    });
    r.agent(AGENT, json!({"type": "hello"}));
    assert_eq!(r.frame(AGENT, "welcome")["conversations"], json!([conv]));
    assert_eq!(r.frame(AGENT, "message")["body"], masked);
    // The visitor resumes with the last token it had.
    r.input(Input::VisitorResume {
        socket: VISITOR,
        origin: "https://shop.example".into(),
        resume_token: token,
        last_seq: 0,
    });
    assert_eq!(r.frame(VISITOR, "message")["body"], masked);
    assert_eq!(r.frame(VISITOR, "assigned")["agent_name"], "Alice");
    r.visitor(VISITOR, json!({"type": "message", "client_id": "c2", "body": "after"}));
    assert_eq!(r.frame(VISITOR, "message")["seq"], 2);
}

#[test]
fn a_conversation_that_ended_before_the_archive_had_it_is_archived_at_restart() {
    let mut h = Harness::new(false);
    let conv = h.assigned();
    h.visitor(VISITOR, json!({"type": "message", "client_id": "c1", "body": "bye"}));
    h.agent(AGENT, json!({"type": "end", "conversation": conv}));
    let stored = h.at_rest(conv);
    let mut r = Harness::new(false);
    r.hub.restore(vec![stored], HashMap::new(), r.now);
    r.drain();
    assert_eq!(r.ended(), vec![(conv, EndReason::AgentEnded)]);
    assert!(r.hub.convs.is_empty());
}
