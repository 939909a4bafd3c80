//! Data-channel scenarios: in-call text through the filter hook, file transfer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use relaydesk_sfu_core::wire::{ChannelError, FileMessage, TextMessage};
use relaydesk_sfu_core::{Event as SfuEvent, ParticipantId, Role, RoomId, TextFilter};
use sha2::{Digest, Sha256};
use str0m::Event;

const ROOM: RoomId = RoomId(9);
const VISITOR: ParticipantId = ParticipantId(1);
const AGENT: ParticipantId = ParticipantId(2);

/// Replaces every digit by '#', standing in for the signalling masker.
struct DigitMask;

impl TextFilter for DigitMask {
    fn filter(&mut self, _room: RoomId, _from: ParticipantId, text: &str) -> String {
        text.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect()
    }
}

fn call() -> World {
    let mut w = World::new(World::default_config(), Some(Box::new(DigitMask)));
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::audio_only());
    w.join(ROOM, AGENT, Role::Agent, Offer::audio_only());
    w.connect_all();
    // Channels open after SCTP is up.
    for _ in 0..200 {
        if w.clients
            .iter()
            .all(|c| c.events.iter().filter(|e| matches!(e, Event::ChannelOpen(..))).count() == 2)
        {
            break;
        }
        w.run_for(Duration::from_millis(10));
    }
    w.run_for(Duration::from_millis(200));
    w
}

#[test]
fn in_call_text_is_masked_through_the_hook() {
    let mut w = call();
    let ch = w.client(VISITOR).text.unwrap();
    let ok = w
        .client(VISITOR)
        .rtc
        .channel(ch)
        .unwrap()
        .write(false, b"my card is 4111 1111 1111 1111")
        .unwrap();
    assert!(ok);
    w.run_for(Duration::from_millis(300));

    let agent = w.client(AGENT);
    let texts = agent.channel_texts(agent.text.unwrap());
    assert_eq!(texts.len(), 1, "{texts:?}");
    let msg: TextMessage = serde_json::from_str(&texts[0]).unwrap();
    assert_eq!(msg.text, "my card is #### #### #### ####");
    assert_eq!(msg.from, VISITOR.0);
    assert_eq!(msg.role, "visitor");
    assert!(!texts[0].contains("4111"));
    assert_eq!(
        w.count_events(|e| matches!(e, SfuEvent::TextRelayed { text, .. } if text == "my card is #### #### #### ####")),
        1
    );
    // Nothing echoes back to the author.
    let visitor = w.client(VISITOR);
    assert!(visitor.channel_texts(visitor.text.unwrap()).is_empty());
}

fn file_messages(c: &Client) -> (Vec<FileMessage>, Vec<u8>) {
    let ch = c.file.unwrap();
    let mut ctrl = Vec::new();
    let mut bytes = Vec::new();
    for e in &c.events {
        if let Event::ChannelData(d) = e
            && d.id == ch
        {
            if d.binary {
                bytes.extend_from_slice(&d.data);
            } else {
                ctrl.push(serde_json::from_slice(&d.data).unwrap());
            }
        }
    }
    (ctrl, bytes)
}

#[test]
fn five_mib_file_arrives_with_the_right_hash() {
    let mut w = call();
    let mut rng = Rng::new(42);
    let mut file = vec![0u8; 5 * 1024 * 1024];
    rng.fill(&mut file);
    let sha = hex::encode(Sha256::digest(&file));
    let header = FileMessage::Header {
        from: None,
        name: "invoice 2024-0042.pdf".into(),
        size: file.len() as u64,
        mime: "application/pdf".into(),
        sha256: sha.clone(),
    };
    let ch = w.client(VISITOR).file.unwrap();
    assert!(
        w.client(VISITOR)
            .rtc
            .channel(ch)
            .unwrap()
            .write(false, &serde_json::to_vec(&header).unwrap())
            .unwrap()
    );

    // Send 16 KiB chunks as the sender's own buffer allows (bounded: 5 MiB in at most 60 s of virtual time).
    let mut at = 0usize;
    let mut ended = false;
    for _ in 0..6000 {
        let c = w.client(VISITOR);
        let mut chan = c.rtc.channel(ch).unwrap();
        while at < file.len() {
            let end = (at + 16 * 1024).min(file.len());
            if !chan.write(true, &file[at..end]).unwrap() {
                break;
            }
            at = end;
        }
        if at == file.len() && !ended {
            ended = chan
                .write(false, &serde_json::to_vec(&FileMessage::End).unwrap())
                .unwrap();
        }
        w.run_for(Duration::from_millis(10));
        if ended && w.count_events(|e| matches!(e, SfuEvent::FileTransferred { .. })) == 1 {
            let (ctrl, _) = file_messages(w.client(AGENT));
            if ctrl.contains(&FileMessage::End) {
                break;
            }
        }
    }
    let (ctrl, bytes) = file_messages(w.client(AGENT));
    let Some(FileMessage::Header {
        from,
        name,
        size,
        sha256,
        mime,
    }) = ctrl.first().cloned()
    else {
        panic!("no header: {ctrl:?}")
    };
    assert_eq!(from, Some(VISITOR.0));
    assert_eq!(name, "invoice ####-####.pdf", "the file name passes the filter");
    assert_eq!(size, file.len() as u64);
    assert_eq!(mime, "application/pdf");
    assert_eq!(ctrl.last(), Some(&FileMessage::End));
    assert_eq!(bytes.len(), file.len());
    // The receiver verifies the hash it was announced.
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha256);
    // The embedder hears of the file with the hash the SFU computed while relaying.
    assert_eq!(
        w.count_events(|e| matches!(e, SfuEvent::FileTransferred { sha256, size, name, .. }
            if *sha256 == sha && *size == file.len() as u64 && name == "invoice ####-####.pdf")),
        1
    );
    let (sender_ctrl, _) = file_messages(w.client(VISITOR));
    assert_eq!(sender_ctrl, vec![FileMessage::Accepted, FileMessage::Done]);
}

#[test]
fn file_policy_refuses_type_and_size() {
    let mut w = call();
    let ch = w.client(VISITOR).file.unwrap();
    for (mime, size) in [("application/x-msdownload", 10u64), ("image/png", 1 << 40)] {
        let header = FileMessage::Header {
            from: None,
            name: "x".into(),
            size,
            mime: mime.into(),
            sha256: "0".repeat(64),
        };
        assert!(
            w.client(VISITOR)
                .rtc
                .channel(ch)
                .unwrap()
                .write(false, &serde_json::to_vec(&header).unwrap())
                .unwrap()
        );
        w.run_for(Duration::from_millis(100));
    }
    // A chunk after a refused header is ignored; a wrong hash is caught by the server.
    assert!(
        w.client(VISITOR)
            .rtc
            .channel(ch)
            .unwrap()
            .write(true, &[1, 2, 3])
            .unwrap()
    );
    let header = FileMessage::Header {
        from: None,
        name: "a.txt".into(),
        size: 3,
        mime: "text/plain".into(),
        sha256: "0".repeat(64),
    };
    let mut chan = w.client(VISITOR).rtc.channel(ch).unwrap();
    assert!(chan.write(false, &serde_json::to_vec(&header).unwrap()).unwrap());
    assert!(chan.write(true, &[1, 2, 3]).unwrap());
    assert!(
        chan.write(false, &serde_json::to_vec(&FileMessage::End).unwrap())
            .unwrap()
    );
    w.run_for(Duration::from_millis(300));

    assert_eq!(w.count_events(|e| matches!(e, SfuEvent::FileRejected { .. })), 3);
    assert_eq!(w.count_events(|e| matches!(e, SfuEvent::FileTransferred { .. })), 0);
    let (agent_ctrl, agent_bytes) = file_messages(w.client(AGENT));
    assert_eq!(agent_bytes, vec![1, 2, 3], "only the accepted file's chunk was relayed");
    assert!(
        matches!(agent_ctrl.last(), Some(FileMessage::Abort { .. })),
        "{agent_ctrl:?}"
    );
}

/// Runs until `done` holds, at most 5 s of virtual time.
fn run_until(w: &mut World, mut done: impl FnMut(&mut World) -> bool) {
    for _ in 0..500 {
        if done(w) {
            return;
        }
        w.run_for(Duration::from_millis(10));
    }
    panic!("condition not reached within 5 s of virtual time");
}

#[test]
fn a_channel_with_an_unknown_label_gets_an_error_then_is_closed() {
    let mut w = call();
    let mut api = w.client(VISITOR).rtc.sdp_api();
    let chat = api.add_channel("chat".into());
    assert!(api.apply().is_none(), "SCTP is up: the channel opens in band");
    run_until(&mut w, |w| {
        w.client(VISITOR)
            .events
            .iter()
            .any(|e| matches!(e, Event::ChannelClose(id) if *id == chat))
    });
    let texts = w.client(VISITOR).channel_texts(chat);
    assert_eq!(texts.len(), 1, "{texts:?}");
    let err: ChannelError = serde_json::from_str(&texts[0]).unwrap();
    assert_eq!(
        (err.kind.as_str(), err.code.as_str()),
        ("error", "unknown_data_channel")
    );
    assert!(err.reason.contains("\"chat\""), "{}", err.reason);
    // Exactly the documented error.
    let documented = doc_blocks("data-channel-error");
    assert!(
        documented.contains(&serde_json::from_str(&texts[0]).unwrap()),
        "{}",
        texts[0]
    );
    assert_eq!(
        w.count_events(|e| matches!(e, SfuEvent::DataChannelRefused { participant, label, .. }
            if *participant == VISITOR && label == "chat")),
        1
    );
    // The known channels still work.
    let ch = w.client(VISITOR).text.unwrap();
    assert!(
        w.client(VISITOR)
            .rtc
            .channel(ch)
            .unwrap()
            .write(false, b"still here")
            .unwrap()
    );
    w.run_for(Duration::from_millis(300));
    let agent = w.client(AGENT);
    let texts = agent.channel_texts(agent.text.unwrap());
    assert_eq!(texts.len(), 1, "{texts:?}");
}

#[test]
fn refused_text_gets_an_error_on_the_text_channel() {
    let mut w = call();
    let ch = w.client(VISITOR).text.unwrap();
    let long = vec![b'a'; World::default_config().max_text_len + 1];
    for (binary, data) in [(true, b"bin".to_vec()), (false, long), (false, vec![0xff, 0xfe])] {
        assert!(w.client(VISITOR).rtc.channel(ch).unwrap().write(binary, &data).unwrap());
    }
    w.run_for(Duration::from_millis(300));
    let visitor = w.client(VISITOR);
    let codes: Vec<String> = visitor
        .channel_texts(ch)
        .iter()
        .map(|t| serde_json::from_str::<ChannelError>(t).unwrap().code)
        .collect();
    assert_eq!(codes, ["not_text", "too_long", "not_text"]);
    let agent = w.client(AGENT);
    assert!(
        agent.channel_texts(agent.text.unwrap()).is_empty(),
        "nothing refused is relayed"
    );
}

/// Masks a number split over two messages: the second amends the first (like the signalling masker).
struct SplitMask(Vec<String>);

impl TextFilter for SplitMask {
    fn filter(&mut self, _room: RoomId, _from: ParticipantId, text: &str) -> String {
        text.to_owned()
    }

    fn filter_text(&mut self, _room: RoomId, _from: ParticipantId, text: &str) -> relaydesk_sfu_core::FilteredText {
        let amended = if text == "5555 4444" && self.0.last().is_some_and(|t| t == "5555 5555") {
            vec![relaydesk_sfu_core::TextAmendment {
                back: 1,
                text: "•••• ••••".into(),
            }]
        } else {
            Vec::new()
        };
        self.0.push(text.to_owned());
        let text = if amended.is_empty() {
            text.to_owned()
        } else {
            "•••• 4444".to_owned()
        };
        relaydesk_sfu_core::FilteredText { text, amended }
    }
}

#[test]
fn amendments_of_earlier_texts_reach_the_embedder() {
    let mut w = World::new(World::default_config(), Some(Box::new(SplitMask(Vec::new()))));
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::audio_only());
    w.join(ROOM, AGENT, Role::Agent, Offer::audio_only());
    w.connect_all();
    run_until(&mut w, |w| {
        w.clients
            .iter()
            .all(|c| c.events.iter().filter(|e| matches!(e, Event::ChannelOpen(..))).count() == 2)
    });
    let ch = w.client(VISITOR).text.unwrap();
    for t in ["5555 5555", "5555 4444"] {
        assert!(
            w.client(VISITOR)
                .rtc
                .channel(ch)
                .unwrap()
                .write(false, t.as_bytes())
                .unwrap()
        );
        w.run_for(Duration::from_millis(100));
    }
    let relayed: Vec<(String, Vec<(usize, String)>)> = w
        .sfu_events
        .iter()
        .filter_map(|e| match e {
            SfuEvent::TextRelayed { text, amended, .. } => {
                Some((text.clone(), amended.iter().map(|a| (a.back, a.text.clone())).collect()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        relayed,
        vec![
            ("5555 5555".to_owned(), vec![]),
            ("•••• 4444".to_owned(), vec![(1, "•••• ••••".to_owned())]),
        ]
    );
}

/// The ```json blocks of `docs/protocol.md` whose info string is `info`.
fn doc_blocks(info: &str) -> Vec<serde_json::Value> {
    const DOC: &str = include_str!("../../../docs/protocol.md");
    let mut out = Vec::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        if line.trim().strip_prefix("```json").map(str::trim) != Some(info) {
            continue;
        }
        let block: String = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .collect::<Vec<_>>()
            .join("\n");
        out.push(serde_json::from_str(&block).unwrap_or_else(|e| panic!("{info}: bad JSON: {e}\n{block}")));
    }
    out
}

/// Parses every example of `info` as `T` and checks that it serialises back to exactly the example.
fn check_doc<T: serde::Serialize + serde::de::DeserializeOwned>(info: &str) -> Vec<T> {
    let blocks = doc_blocks(info);
    assert!(!blocks.is_empty(), "no {info} examples in docs/protocol.md");
    blocks
        .into_iter()
        .map(|v| {
            let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{info}: {e}: {v}"));
            assert_eq!(
                serde_json::to_value(&t).unwrap(),
                v,
                "{info}: the example has fields the type drops"
            );
            t
        })
        .collect()
}

#[test]
fn the_documented_data_channel_messages_are_the_real_ones() {
    let texts: Vec<TextMessage> = check_doc("data-channel-text");
    assert!(
        texts
            .iter()
            .all(|t| ["visitor", "agent", "supervisor"].contains(&t.role.as_str()))
    );
    let errors: Vec<ChannelError> = check_doc("data-channel-error");
    let codes: Vec<&str> = errors.iter().map(|e| e.code.as_str()).collect();
    assert!(codes.contains(&"unknown_data_channel"), "{codes:?}");
    assert!(errors.iter().all(|e| e.kind == "error"));
    let files: Vec<FileMessage> = check_doc("data-channel-file");
    // Every control message type is shown.
    let mut shown: Vec<String> = files
        .iter()
        .map(|f| serde_json::to_value(f).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    shown.sort();
    shown.dedup();
    assert_eq!(shown, ["abort", "accepted", "done", "end", "error", "header"]);
}
