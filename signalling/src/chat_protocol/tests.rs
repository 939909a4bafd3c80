//! Wire-format tests: every variant round-trips, unknown types and fields are refused, errors never quote
//! the frame, and every JSON example in `docs/ws-messages.md` is a valid message of its direction.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;

const DOC: &str = include_str!("../../../docs/ws-messages.md");

fn conv() -> ConversationId {
    ConversationId(42)
}

fn agent_author() -> Author {
    Author::Agent {
        id: AgentId(7),
        name: "Alice".into(),
    }
}

fn visitor_samples() -> Vec<VisitorToServer> {
    vec![
        VisitorToServer::Hello {
            client: Some("widget/1.0".into()),
        },
        VisitorToServer::Hello { client: None },
        VisitorToServer::Resume {
            resume_token: "rt_abc".into(),
            last_seq: 12,
        },
        VisitorToServer::Message {
            client_id: "c-1".into(),
            body: "Hello, my card is 4111 1111 1111 1111".into(),
        },
        VisitorToServer::Typing { active: true },
        VisitorToServer::Delivered { up_to_seq: 3 },
        VisitorToServer::Read { up_to_seq: 3 },
        VisitorToServer::End {},
        VisitorToServer::CallOffer { sdp: "v=0\r\n".into() },
        VisitorToServer::CallEnd { reason: None },
        VisitorToServer::CallEnd {
            reason: Some(CallEndReason::Failed),
        },
        VisitorToServer::CallInvite { video: true },
        VisitorToServer::CallAccept {},
        VisitorToServer::CallDecline {},
        VisitorToServer::CallCancel {},
        VisitorToServer::CallScreenReply { share: true },
        VisitorToServer::CallMediaState {
            audio: true,
            video: false,
            screen: false,
            reconnecting: false,
        },
        VisitorToServer::CallPrepare {},
        VisitorToServer::Payment { active: true },
    ]
}

fn server_visitor_samples() -> Vec<ServerToVisitor> {
    vec![
        ServerToVisitor::Welcome {
            conversation: conv(),
            resume_token: "rt_def".into(),
            resume_within_secs: 60,
            files_token: Some("ft_abc".into()),
        },
        ServerToVisitor::QueuePosition { position: 3 },
        ServerToVisitor::Assigned {
            agent_name: "Alice".into(),
        },
        ServerToVisitor::Transferred {},
        ServerToVisitor::Message {
            id: "m_9".into(),
            seq: 5,
            ts: 1_763_700_000_000,
            from: Author::Visitor {},
            client_id: Some("c-1".into()),
            body: "Hello, my card is **** **** **** 1111".into(),
            file: None,
        },
        ServerToVisitor::Message {
            id: "m_10".into(),
            seq: 6,
            ts: 1_763_700_001_000,
            from: agent_author(),
            client_id: None,
            body: "Thanks!".into(),
            file: None,
        },
        ServerToVisitor::MessageAmended {
            id: "m_9".into(),
            seq: 5,
            body: "my card is **** ****".into(),
        },
        ServerToVisitor::Typing {
            from: agent_author(),
            active: false,
        },
        ServerToVisitor::Delivered { up_to_seq: 5 },
        ServerToVisitor::Read { up_to_seq: 5 },
        ServerToVisitor::Ended {
            reason: EndReason::AgentEnded,
        },
        ServerToVisitor::CallInvitation {
            from: CallParty::Agent,
            video: true,
            expires_in_ms: 45_000,
        },
        ServerToVisitor::CallInvitationEnded {
            from: CallParty::Visitor,
            outcome: InvitationOutcome::Declined,
        },
        ServerToVisitor::CallScreenRequest {},
        ServerToVisitor::CallMediaState {
            party: CallParty::Agent,
            audio: false,
            video: true,
            screen: true,
            reconnecting: false,
        },
        ServerToVisitor::CallAnswer { sdp: "v=0\r\n".into() },
        ServerToVisitor::CallEnd {},
        ServerToVisitor::CallState {
            party: CallParty::Agent,
            state: CallLegState::Left,
            reason: Some("hung_up".into()),
        },
        ServerToVisitor::CallRenegotiate { audio: 1, video: 1 },
        ServerToVisitor::IceServers {
            ice_servers: vec![ice_server()],
            expires_at_ms: Some(1_764_691_200_000),
        },
        ServerToVisitor::IceServers {
            ice_servers: vec![],
            expires_at_ms: None,
        },
        ServerToVisitor::error(ErrorCode::TooLarge, "message longer than 4096 bytes"),
        ServerToVisitor::Message {
            id: "m_1".into(),
            seq: 1,
            ts: 1,
            from: Author::System {},
            client_id: None,
            body: "You are connected".into(),
            file: None,
        },
        ServerToVisitor::Recording {
            state: RecordingState::On,
            policy: crate::store::RecordingPolicy::Always,
        },
    ]
}

fn ice_server() -> IceServer {
    IceServer {
        urls: vec![
            "turns:turn.example.com:443?transport=tcp".into(),
            "turn:turn.example.com:3478".into(),
        ],
        username: "1764691200:42-visitor".into(),
        credential: "VjiBjK4RnhOgJGICCg25dVgnr18=".into(),
    }
}

fn agent_samples() -> Vec<AgentToServer> {
    vec![
        AgentToServer::Hello {
            resume: vec![ResumePoint {
                conversation: conv(),
                last_seq: 4,
            }],
        },
        AgentToServer::Hello { resume: vec![] },
        AgentToServer::SetPresence {
            presence: Presence::Available,
        },
        AgentToServer::SetPresence {
            presence: Presence::Away,
        },
        AgentToServer::Accept { conversation: conv() },
        AgentToServer::Decline { conversation: conv() },
        AgentToServer::Message {
            conversation: conv(),
            client_id: "a-1".into(),
            body: "How can I help?".into(),
        },
        AgentToServer::Typing {
            conversation: conv(),
            active: true,
        },
        AgentToServer::Delivered {
            conversation: conv(),
            up_to_seq: 9,
        },
        AgentToServer::Read {
            conversation: conv(),
            up_to_seq: 9,
        },
        AgentToServer::Transfer {
            conversation: conv(),
            to: TransferTarget::Agent { agent: AgentId(8) },
        },
        AgentToServer::Transfer {
            conversation: conv(),
            to: TransferTarget::Group {
                group: GroupId::new("billing"),
            },
        },
        AgentToServer::End { conversation: conv() },
        AgentToServer::Watch { conversation: conv() },
        AgentToServer::Unwatch { conversation: conv() },
        AgentToServer::CallOffer {
            conversation: conv(),
            sdp: "v=0\r\n".into(),
        },
        AgentToServer::CallEnd {
            conversation: conv(),
            reason: None,
        },
        AgentToServer::CallEnd {
            conversation: conv(),
            reason: Some(CallEndReason::HungUp),
        },
        AgentToServer::CallInvite {
            conversation: conv(),
            video: false,
        },
        AgentToServer::CallAccept { conversation: conv() },
        AgentToServer::CallDecline { conversation: conv() },
        AgentToServer::CallCancel { conversation: conv() },
        AgentToServer::CallScreenRequest { conversation: conv() },
        AgentToServer::CallMediaState {
            conversation: conv(),
            audio: true,
            video: true,
            screen: false,
            reconnecting: true,
        },
        AgentToServer::MonitorOffer {
            conversation: conv(),
            sdp: "v=0\r\n".into(),
        },
        AgentToServer::Whisper {
            conversation: conv(),
            active: true,
        },
        AgentToServer::MonitorEnd { conversation: conv() },
        AgentToServer::CallPrepare { conversation: conv() },
        AgentToServer::Recording {
            conversation: conv(),
            action: RecordingAction::Pause,
        },
    ]
}

fn file_ref() -> FileRef {
    FileRef {
        id: "0123456789abcdef0123456789abcdef".into(),
        name: "statement-****1111.pdf".into(),
        size: 48_213,
        mime: "application/pdf".into(),
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
    }
}

fn server_agent_samples() -> Vec<ServerToAgent> {
    vec![
        ServerToAgent::Message {
            conversation: conv(),
            id: "m_11".into(),
            seq: 7,
            ts: 1_763_700_002_000,
            from: Author::Visitor {},
            client_id: None,
            body: "statement-****1111.pdf".into(),
            file: Some(file_ref()),
        },
        ServerToAgent::Welcome {
            agent: AgentId(7),
            name: "Alice".into(),
            presence: Presence::Available,
            capacity: 4,
            conversations: vec![conv()],
        },
        ServerToAgent::Offered {
            conversation: conv(),
            group: GroupId::new("sales"),
            expires_in_ms: 20_000,
            transfer_from: None,
        },
        ServerToAgent::Offered {
            conversation: conv(),
            group: GroupId::new("sales"),
            expires_in_ms: 20_000,
            transfer_from: Some(AgentId(8)),
        },
        ServerToAgent::OfferWithdrawn {
            conversation: conv(),
            reason: WithdrawnReason::Timeout,
        },
        ServerToAgent::Assigned {
            conversation: conv(),
            group: GroupId::new("sales"),
        },
        ServerToAgent::Unassigned {
            conversation: conv(),
            reason: UnassignedReason::ConnectionLost,
        },
        ServerToAgent::Message {
            conversation: conv(),
            id: "m_9".into(),
            seq: 5,
            ts: 1_763_700_000_000,
            from: Author::Visitor {},
            client_id: None,
            body: "Hello, my card is **** **** **** 1111".into(),
            file: None,
        },
        ServerToAgent::MessageAmended {
            conversation: conv(),
            id: "m_9".into(),
            seq: 5,
            body: "**** ****".into(),
        },
        ServerToAgent::Typing {
            conversation: conv(),
            from: Author::Visitor {},
            active: true,
        },
        ServerToAgent::Delivered {
            conversation: conv(),
            up_to_seq: 6,
        },
        ServerToAgent::Read {
            conversation: conv(),
            up_to_seq: 6,
        },
        ServerToAgent::PresenceChanged {
            agent: AgentId(7),
            status: AgentStatus::Busy,
        },
        ServerToAgent::TransferFailed {
            conversation: conv(),
            to: AgentId(8),
            reason: TransferFailedReason::Declined,
        },
        ServerToAgent::Ended {
            conversation: conv(),
            reason: EndReason::VisitorLeft,
        },
        ServerToAgent::CallInvitation {
            conversation: conv(),
            from: CallParty::Visitor,
            video: false,
            expires_in_ms: 45_000,
        },
        ServerToAgent::CallInvitationEnded {
            conversation: conv(),
            from: CallParty::Agent,
            outcome: InvitationOutcome::Expired,
        },
        ServerToAgent::CallScreenReply {
            conversation: conv(),
            share: false,
        },
        ServerToAgent::CallMediaState {
            conversation: conv(),
            party: CallParty::Visitor,
            audio: true,
            video: false,
            screen: false,
            reconnecting: true,
        },
        ServerToAgent::CallAnswer {
            conversation: conv(),
            sdp: "v=0\r\n".into(),
        },
        ServerToAgent::CallEnd { conversation: conv() },
        ServerToAgent::CallState {
            conversation: conv(),
            party: CallParty::Visitor,
            state: CallLegState::Connected,
            reason: None,
        },
        ServerToAgent::CallRenegotiate {
            conversation: conv(),
            audio: 1,
            video: 2,
        },
        ServerToAgent::IceServers {
            conversation: conv(),
            ice_servers: vec![ice_server()],
            expires_at_ms: Some(1_764_691_200_000),
        },
        ServerToAgent::Whisper {
            conversation: conv(),
            supervisor: "Sam".into(),
            active: true,
        },
        ServerToAgent::LiveList {
            conversations: vec![LiveConversation {
                conversation: conv(),
                group: GroupId::new("sales"),
                state: LiveState::Assigned,
                agent: Some(AgentId(7)),
                agent_name: Some("Alice".into()),
                started_at_ms: 1_763_700_000_000,
                in_call: true,
            }],
        },
        ServerToAgent::LiveUpdate {
            summary: LiveConversation {
                conversation: conv(),
                group: GroupId::new("sales"),
                state: LiveState::Queued,
                agent: None,
                agent_name: None,
                started_at_ms: 1_763_700_000_000,
                in_call: false,
            },
        },
        ServerToAgent::CallState {
            conversation: conv(),
            party: CallParty::Supervisor,
            state: CallLegState::Left,
            reason: Some("hung_up".into()),
        },
        ServerToAgent::error(ErrorCode::Forbidden, "not assigned to you", Some(conv())),
        ServerToAgent::error(ErrorCode::BadMessage, "unknown field at line 1 column 30", None),
        ServerToAgent::Recording {
            conversation: conv(),
            state: RecordingState::Paused,
            policy: crate::store::RecordingPolicy::OnRequest,
        },
    ]
}

/// Serialises, checks the tag, parses back (also through [`parse_frame`]) and compares.
fn roundtrip<T>(samples: &[T]) -> BTreeSet<&'static str>
where
    T: Serialize + DeserializeOwned + MessageType + PartialEq + std::fmt::Debug,
{
    let mut names = BTreeSet::new();
    for sample in samples {
        let text = serde_json::to_string(sample).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], json!(sample.type_name()), "{text}");
        let back: T = parse_frame(&text, MAX_FRAME_BYTES).unwrap();
        assert_eq!(&back, sample, "{text}");
        names.insert(sample.type_name());
    }
    names
}

/// Every sample with an extra field, and with its type renamed, must be refused.
fn refuses_unknown<T: Serialize + DeserializeOwned + std::fmt::Debug>(samples: &[T]) {
    for sample in samples {
        let mut value = serde_json::to_value(sample).unwrap();
        let obj = value.as_object_mut().unwrap();
        obj.insert("surprise".into(), json!(1));
        let text = value.to_string();
        let err = parse_frame::<T>(&text, MAX_FRAME_BYTES).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadMessage, "{text}");
        assert!(err.to_string().contains("unknown field"), "{err} for {text}");

        let mut value = serde_json::to_value(sample).unwrap();
        value["type"] = json!("no_such_type");
        assert!(parse_frame::<T>(&value.to_string(), MAX_FRAME_BYTES).is_err());
        let mut value = serde_json::to_value(sample).unwrap();
        value.as_object_mut().unwrap().remove("type");
        assert!(parse_frame::<T>(&value.to_string(), MAX_FRAME_BYTES).is_err());
    }
}

#[test]
fn visitor_to_server_roundtrip_and_strictness() {
    let names = roundtrip(&visitor_samples());
    assert_eq!(names.len(), 17);
    refuses_unknown(&visitor_samples());
}

#[test]
fn server_to_visitor_roundtrip_and_strictness() {
    let names = roundtrip(&server_visitor_samples());
    assert_eq!(names.len(), 21);
    refuses_unknown(&server_visitor_samples());
}

#[test]
fn agent_to_server_roundtrip_and_strictness() {
    let names = roundtrip(&agent_samples());
    assert_eq!(names.len(), 25);
    refuses_unknown(&agent_samples());
}

#[test]
fn server_to_agent_roundtrip_and_strictness() {
    let names = roundtrip(&server_agent_samples());
    assert_eq!(names.len(), 27);
    refuses_unknown(&server_agent_samples());
}

#[test]
fn exact_wire_shapes() {
    assert_eq!(
        serde_json::to_value(VisitorToServer::Message {
            client_id: "c1".into(),
            body: "hi".into()
        })
        .unwrap(),
        json!({"type": "message", "client_id": "c1", "body": "hi"})
    );
    assert_eq!(
        serde_json::to_value(VisitorToServer::End {}).unwrap(),
        json!({"type": "end"})
    );
    assert_eq!(
        serde_json::to_value(ServerToAgent::Offered {
            conversation: ConversationId(u64::MAX),
            group: GroupId::new("sales"),
            expires_in_ms: 20_000,
            transfer_from: None
        })
        .unwrap(),
        json!({"type": "offered", "conversation": "18446744073709551615", "group": "sales", "expires_in_ms": 20000})
    );
    assert_eq!(
        serde_json::to_value(AgentToServer::Transfer {
            conversation: conv(),
            to: TransferTarget::Agent { agent: AgentId(8) }
        })
        .unwrap(),
        json!({"type": "transfer", "conversation": "42", "to": {"kind": "agent", "agent": 8}})
    );
    assert_eq!(
        serde_json::to_value(ServerToVisitor::Typing {
            from: Author::Visitor {},
            active: true
        })
        .unwrap(),
        json!({"type": "typing", "from": {"role": "visitor"}, "active": true})
    );
}

#[test]
fn nested_objects_are_strict_too() {
    let bad = [
        r#"{"type":"transfer","conversation":"42","to":{"kind":"agent","agent":8,"x":1}}"#,
        r#"{"type":"transfer","conversation":"42","to":{"kind":"planet","name":"mars"}}"#,
        r#"{"type":"hello","resume":[{"conversation":"42","last_seq":1,"x":true}]}"#,
        r#"{"type":"set_presence","presence":"busy"}"#,
        r#"{"type":"accept","conversation":42}"#,
        r#"{"type":"accept","conversation":"-1"}"#,
        r#"{"type":"accept","conversation":"042"}"#,
        r#"{"type":"accept","conversation":""}"#,
        r#"{"type":"accept","conversation":"18446744073709551616"}"#,
        r#"{"type":"read","conversation":"42","up_to_seq":-1}"#,
        r#"{"type":"accept"}"#,
        r#"[{"type":"accept","conversation":"42"}]"#,
        r#"{"type":"accept","conversation":"42"} trailing"#,
        "",
        "null",
        r#"{"type":"accept","conversation":"42","#,
    ];
    for text in bad {
        let err = parse_frame::<AgentToServer>(text, MAX_FRAME_BYTES).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadMessage, "{text}");
    }
    let ok: AgentToServer = parse_frame(r#"{"type":"accept","conversation":"0"}"#, MAX_FRAME_BYTES).unwrap();
    assert_eq!(
        ok,
        AgentToServer::Accept {
            conversation: ConversationId(0)
        }
    );
    // Server frames are strict as well (a client library built on these types notices drift).
    let err = parse_frame::<ServerToVisitor>(
        r#"{"type":"message","id":"m","seq":1,"ts":1,"from":{"role":"agent","id":1},"body":"x"}"#,
        MAX_FRAME_BYTES,
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing field `name`"), "{err}");
}

#[test]
fn oversize_frames_are_refused_before_parsing() {
    let body = "a".repeat(MAX_FRAME_BYTES);
    let text = serde_json::to_string(&VisitorToServer::Message {
        client_id: "c".into(),
        body,
    })
    .unwrap();
    let err = parse_frame::<VisitorToServer>(&text, MAX_FRAME_BYTES).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::TooLarge {
            max: MAX_FRAME_BYTES,
            ..
        }
    ));
    assert_eq!(err.code(), ErrorCode::TooLarge);
    // Not even valid JSON: the length check comes first.
    let junk = "{".repeat(MAX_FRAME_BYTES + 1);
    assert!(matches!(
        parse_frame::<VisitorToServer>(&junk, MAX_FRAME_BYTES),
        Err(ProtocolError::TooLarge { .. })
    ));
    // A frame of exactly the limit is parsed.
    let exact = format!(r#"{{"type":"hello","client":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES - 28));
    assert_eq!(exact.len(), MAX_FRAME_BYTES);
    assert!(parse_frame::<VisitorToServer>(&exact, MAX_FRAME_BYTES).is_ok());
    // Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
    let deep = format!(
        r#"{{"type":"hello","client":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert!(parse_frame::<VisitorToServer>(&deep, usize::MAX).is_err());
}

#[test]
fn errors_never_quote_the_frame() {
    let card = "4111111111111111";
    let frames = [
        format!(r#"{{"type":"read","up_to_seq":"{card}"}}"#),
        format!(r#"{{"type":"{card}"}}"#),
        format!(r#"{{"type":"typing","active":true,"{card}":1}}"#),
        format!(r#"{{"type":"message","client_id":"c","body":"{card}","#),
        format!(r#"{{"type":"message","client_id":"c","body":{card}}}"#),
        format!(r#"{{"type":"typing","active":"{card}"}}"#),
        format!(r#"{{"type":"typing","active":true}}{card}"#),
    ];
    for frame in &frames {
        let err = parse_frame::<VisitorToServer>(frame, MAX_FRAME_BYTES).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains(card), "{text}");
        assert!(!text.contains("4111"), "{text}");
        assert!(text.starts_with("bad message: "), "{text}");
    }
}

#[test]
fn message_types_are_snake_case_and_unique_per_direction() {
    fn check<T: Serialize + MessageType>(samples: &[T]) {
        for s in samples {
            let name = s.type_name();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
        }
    }
    check(&visitor_samples());
    check(&server_visitor_samples());
    check(&agent_samples());
    check(&server_agent_samples());
}

/// The ```json blocks of the document, with their info string's direction.
fn doc_examples() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut lines = DOC.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.trim().strip_prefix("```json") else {
            continue;
        };
        let direction = info.trim().to_owned();
        let mut block = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            block.push_str(l);
            block.push('\n');
        }
        let value: Value =
            serde_json::from_str(&block).unwrap_or_else(|e| panic!("doc line {}: bad JSON: {e}\n{block}", n + 1));
        out.push((direction, value));
    }
    out
}

fn check_doc<T>(direction: &str, samples: &[T])
where
    T: Serialize + DeserializeOwned + MessageType + std::fmt::Debug,
{
    let examples: Vec<Value> = doc_examples()
        .into_iter()
        .filter(|(d, _)| d == direction)
        .map(|(_, v)| v)
        .collect();
    assert!(!examples.is_empty(), "no examples for {direction}");
    let mut documented = BTreeSet::new();
    for example in examples {
        let parsed: T = serde_json::from_value(example.clone())
            .unwrap_or_else(|e| panic!("{direction}: doc example does not parse: {e}\n{example}"));
        // Re-serialising gives back exactly the example: no field in the doc that the type ignores or
        // renames, no optional field shown with a value the server would omit.
        assert_eq!(serde_json::to_value(&parsed).unwrap(), example, "{direction}");
        documented.insert(parsed.type_name());
    }
    let all: BTreeSet<&str> = samples.iter().map(MessageType::type_name).collect();
    assert_eq!(
        documented, all,
        "{direction}: the document must show every message type, and only those"
    );
}

#[test]
fn every_doc_example_is_a_valid_message() {
    let directions: BTreeSet<String> = doc_examples().into_iter().map(|(d, _)| d).collect();
    let expected: BTreeSet<String> = [
        "visitor-to-server",
        "server-to-visitor",
        "agent-to-server",
        "server-to-agent",
    ]
    .map(String::from)
    .into();
    assert_eq!(directions, expected, "every ```json block names its direction");
    check_doc("visitor-to-server", &visitor_samples());
    check_doc("server-to-visitor", &server_visitor_samples());
    check_doc("agent-to-server", &agent_samples());
    check_doc("server-to-agent", &server_agent_samples());
}

#[test]
fn doc_lists_every_error_code() {
    for code in [
        ErrorCode::BadMessage,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::NotReady,
        ErrorCode::Internal,
        ErrorCode::MediaUnavailable,
        ErrorCode::MediaBusy,
        ErrorCode::Busy,
    ] {
        let name = serde_json::to_value(code).unwrap();
        let name = name.as_str().unwrap();
        assert!(DOC.contains(&format!("`{name}`")), "error code {name} not documented");
    }
}

#[test]
fn chat_message_limits() {
    assert!(check_chat_message("c-1", "hello", MAX_BODY_BYTES).is_ok());
    assert!(check_chat_message("a.b:c_d-9", &"x".repeat(MAX_BODY_BYTES), MAX_BODY_BYTES).is_ok());
    let err = check_chat_message("c", &"x".repeat(MAX_BODY_BYTES + 1), MAX_BODY_BYTES).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::BodyTooLong {
            len: 4097,
            max: MAX_BODY_BYTES
        }
    ));
    assert_eq!(err.code(), ErrorCode::TooLarge);
    // The limit counts bytes of UTF-8, not characters.
    let wide = "é".repeat(MAX_BODY_BYTES / 2 + 1);
    assert!(check_chat_message("c", &wide, MAX_BODY_BYTES).is_err());
    for body in ["", "   ", "\n\t"] {
        let err = check_chat_message("c", body, MAX_BODY_BYTES).unwrap_err();
        assert!(matches!(err, ProtocolError::EmptyBody), "{body:?}");
        assert_eq!(err.code(), ErrorCode::BadMessage);
    }
    let long_id = "x".repeat(MAX_CLIENT_ID_BYTES + 1);
    for id in ["", "has space", "new\nline", "ünï", long_id.as_str()] {
        assert!(
            matches!(
                check_chat_message(id, "hi", MAX_BODY_BYTES),
                Err(ProtocolError::BadClientId)
            ),
            "{id:?}"
        );
    }
    assert!(check_chat_message(&"x".repeat(MAX_CLIENT_ID_BYTES), "hi", MAX_BODY_BYTES).is_ok());
}

#[test]
fn router_reasons_map_to_wire_reasons() {
    use crate::routing::{RequeueReason, TransferFailure, WithdrawReason};
    fn wire<T: Serialize>(value: &T) -> Value {
        serde_json::to_value(value).unwrap()
    }
    assert_eq!(wire(&WithdrawnReason::from(WithdrawReason::Timeout)), json!("timeout"));
    assert_eq!(
        wire(&WithdrawnReason::from(WithdrawReason::AgentUnavailable)),
        json!("unavailable")
    );
    assert_eq!(
        wire(&WithdrawnReason::from(WithdrawReason::ConversationEnded)),
        json!("conversation_ended")
    );
    assert_eq!(
        wire(&WithdrawnReason::from(WithdrawReason::CapacityFull)),
        json!("capacity_full")
    );
    assert_eq!(
        wire(&WithdrawnReason::from(WithdrawReason::Cancelled)),
        json!("cancelled")
    );
    assert_eq!(
        wire(&TransferFailedReason::from(TransferFailure::Declined)),
        json!("declined")
    );
    assert_eq!(
        wire(&TransferFailedReason::from(TransferFailure::Timeout)),
        json!("timeout")
    );
    assert_eq!(
        wire(&TransferFailedReason::from(TransferFailure::TargetUnavailable)),
        json!("unavailable")
    );
    assert_eq!(
        wire(&UnassignedReason::from(RequeueReason::Transferred)),
        json!("transferred")
    );
    assert_eq!(
        wire(&UnassignedReason::from(RequeueReason::AgentLost)),
        json!("connection_lost")
    );
    assert_eq!(
        wire(&UnassignedReason::from(RequeueReason::AgentRemoved)),
        json!("removed")
    );
}

/// Seeded garbage and mutated valid frames: parsing never panics, and whatever parses re-serialises.
#[test]
fn hostile_frames_never_panic() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds: Vec<String> = agent_samples()
        .iter()
        .map(|m| serde_json::to_string(m).unwrap())
        .chain(visitor_samples().iter().map(|m| serde_json::to_string(m).unwrap()))
        .collect();
    let alphabet = b"{}[]\":,0123456789-+.eE tfnrua_\\\x00\xff";
    let mut parsed = 0;
    for i in 0..20_000 {
        let mut bytes = seeds[i % seeds.len()].clone().into_bytes();
        let edits = 1 + next() % 4;
        for _ in 0..edits {
            let pos = usize::try_from(next() % (bytes.len() as u64 + 1)).unwrap();
            let byte = alphabet[usize::try_from(next() % alphabet.len() as u64).unwrap()];
            match next() % 3 {
                0 if pos < bytes.len() => bytes[pos] = byte,
                1 => bytes.insert(pos, byte),
                _ if pos < bytes.len() => {
                    bytes.remove(pos);
                }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(m) = parse_frame::<AgentToServer>(&text, MAX_FRAME_BYTES) {
            parsed += 1;
            let again: AgentToServer = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
            assert_eq!(again, m);
        }
        if let Ok(m) = parse_frame::<VisitorToServer>(&text, MAX_FRAME_BYTES) {
            parsed += 1;
            let again: VisitorToServer = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
            assert_eq!(again, m);
        }
    }
    // Some mutations stay valid (e.g. a digit changed), most do not: both paths were exercised.
    assert!(parsed > 100 && parsed < 20_000, "{parsed}");
}

/// The documents with JSON examples, and the ```json blocks in each: (document, info string, JSON text).
fn all_doc_blocks() -> Vec<(&'static str, String, String)> {
    let docs = [
        ("docs/ws-messages.md", DOC),
        ("docs/protocol.md", include_str!("../../../docs/protocol.md")),
    ];
    let mut out = Vec::new();
    for (name, text) in docs {
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(info) = line.trim().strip_prefix("```json") else {
                continue;
            };
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push((name, info.trim().to_owned(), block.join("\n")));
        }
    }
    out
}

#[test]
fn every_json_block_of_the_docs_is_checked_by_a_test() {
    // The four directions are parsed above; `data-channel-*` by the SFU core's data tests; `transcript` by
    // the archive's tests; a block without an info string is an HTTP body and must not look like a frame.
    let directions = [
        "visitor-to-server",
        "server-to-visitor",
        "agent-to-server",
        "server-to-agent",
    ];
    let elsewhere = [
        "data-channel-text",
        "data-channel-error",
        "data-channel-file",
        "transcript",
    ];
    let blocks = all_doc_blocks();
    assert!(blocks.len() > 100, "{}", blocks.len());
    for (doc, info, block) in blocks {
        let value: Value = serde_json::from_str(&block).unwrap_or_else(|e| panic!("{doc}: bad JSON: {e}\n{block}"));
        match info.as_str() {
            "" => assert!(
                value.get("type").is_none(),
                "{doc}: a message example needs its direction or channel after ```json\n{block}"
            ),
            d if directions.contains(&d) => assert_eq!(doc, "docs/ws-messages.md", "{d} examples live there"),
            d => assert!(elsewhere.contains(&d), "{doc}: no test reads ```json {d}"),
        }
        // Masked text in examples is what the masker writes: bullets, never asterisks or Xs.
        for fake in ["****", "XXXX", "xxxx"] {
            assert!(!block.contains(fake), "{doc}: masked example with {fake}\n{block}");
        }
    }
}

#[test]
fn doc_lists_every_reason() {
    use EndReason as E;
    use TransferFailedReason as T;
    use UnassignedReason as U;
    use WithdrawnReason as W;
    let reasons = [
        serde_json::to_value([
            E::VisitorLeft,
            E::AgentEnded,
            E::VisitorLost,
            E::QueueTimeout,
            E::Closed,
        ]),
        serde_json::to_value([
            W::Timeout,
            W::Unavailable,
            W::ConversationEnded,
            W::CapacityFull,
            W::Cancelled,
        ]),
        serde_json::to_value([T::Declined, T::Timeout, T::Unavailable]),
        serde_json::to_value([U::Transferred, U::ConnectionLost, U::Removed]),
    ];
    for names in reasons {
        for name in names.unwrap().as_array().unwrap() {
            let name = name.as_str().unwrap();
            assert!(DOC.contains(&format!("`{name}`")), "reason {name} not documented");
        }
    }
}
