//! Data-channel scenarios: in-call text through the filter hook, file transfer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use relaydesk_sfu_core::wire::{FileMessage, TextMessage};
use relaydesk_sfu_core::{Event as SfuEvent, ParticipantId, Role, RoomId, TextFilter};
use sha2::{Digest, Sha256};
use str0m::Event;

const ROOM: RoomId = RoomId(9);
const CUSTOMER: ParticipantId = ParticipantId(1);
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
    w.join(ROOM, CUSTOMER, Role::Customer, Offer::audio_only());
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
    let ch = w.client(CUSTOMER).text.unwrap();
    let ok = w
        .client(CUSTOMER)
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
    assert_eq!(msg.from, CUSTOMER.0);
    assert_eq!(msg.role, "customer");
    assert!(!texts[0].contains("4111"));
    assert_eq!(
        w.count_events(|e| matches!(e, SfuEvent::TextRelayed { text, .. } if text == "my card is #### #### #### ####")),
        1
    );
    // Nothing echoes back to the author.
    let customer = w.client(CUSTOMER);
    assert!(customer.channel_texts(customer.text.unwrap()).is_empty());
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
    let ch = w.client(CUSTOMER).file.unwrap();
    assert!(
        w.client(CUSTOMER)
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
        let c = w.client(CUSTOMER);
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
    assert_eq!(from, Some(CUSTOMER.0));
    assert_eq!(name, "invoice ####-####.pdf", "the file name passes the filter");
    assert_eq!(size, file.len() as u64);
    assert_eq!(mime, "application/pdf");
    assert_eq!(ctrl.last(), Some(&FileMessage::End));
    assert_eq!(bytes.len(), file.len());
    // The receiver verifies the hash it was announced.
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha256);
    let (sender_ctrl, _) = file_messages(w.client(CUSTOMER));
    assert_eq!(sender_ctrl, vec![FileMessage::Accepted, FileMessage::Done]);
}

#[test]
fn file_policy_refuses_type_and_size() {
    let mut w = call();
    let ch = w.client(CUSTOMER).file.unwrap();
    for (mime, size) in [("application/x-msdownload", 10u64), ("image/png", 1 << 40)] {
        let header = FileMessage::Header {
            from: None,
            name: "x".into(),
            size,
            mime: mime.into(),
            sha256: "0".repeat(64),
        };
        assert!(
            w.client(CUSTOMER)
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
        w.client(CUSTOMER)
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
    let mut chan = w.client(CUSTOMER).rtc.channel(ch).unwrap();
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
