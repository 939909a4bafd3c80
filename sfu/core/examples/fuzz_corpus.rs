//! Writes the seed corpus of the `sfu_datagram` fuzz target: real datagrams that str0m clients send to the
//! SFU during a call (STUN binding requests, DTLS handshake and data-channel records, SRTP and SRTCP),
//! captured on the simulated network of the SFU's tests.
//!
//! `cargo run -p relaydesk-sfu-core --example fuzz_corpus -- fuzz/corpus/sfu_datagram`
//!
//! A visitor and an agent join one room with audio, video and data channels, send media for two seconds
//! and a few data-channel messages; up to four datagrams of each kind (the first ones of distinct lengths)
//! are written as `<kind>-<n>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use common::{Offer, Sender, World, run_with};
use relaydesk_sfu_core::{ParticipantId, Role, RoomId};

const PER_KIND: usize = 4;

/// The demultiplexing classes of RFC 7983, with the DTLS content type and RTP/RTCP split out.
fn kind(d: &[u8]) -> &'static str {
    match d.first() {
        Some(0..=3) => "stun",
        Some(20) => "dtls-ccs",
        Some(21) => "dtls-alert",
        Some(22) => "dtls-handshake",
        Some(23) => "dtls-data",
        Some(20..=63) => "dtls-other",
        Some(128..=191) if d.get(1).is_some_and(|b| (192..=223).contains(b)) => "rtcp",
        Some(128..=191) => "rtp",
        _ => "other",
    }
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_corpus <output directory>");
        return ExitCode::FAILURE;
    };
    let (visitor, agent) = (ParticipantId(1), ParticipantId(2));
    let mut w = World::new(World::default_config(), None);
    w.captured = Some(Vec::new());
    w.create_room(RoomId(1));
    w.join(RoomId(1), visitor, Role::Visitor, Offer::av());
    w.join(RoomId(1), agent, Role::Agent, Offer::av());
    w.connect_all();
    w.run_for(Duration::from_millis(300));
    for text in [&b"hello"[..], b"my card is 4111 1111 1111 1111"] {
        let ch = w.client(visitor).text.expect("text channel open");
        w.client(visitor)
            .rtc
            .channel(ch)
            .expect("channel")
            .write(false, text)
            .expect("write");
        w.run_for(Duration::from_millis(50));
    }
    let mut c = Sender::new(visitor, w.now, 1000, 0xC1);
    let mut a = Sender::new(agent, w.now, 2000, 0xA9);
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(2));

    let captured = w.captured.take().unwrap_or_default();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("{}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut kept: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for d in &captured {
        let lens = kept.entry(kind(d)).or_default();
        if lens.len() >= PER_KIND || lens.contains(&d.len()) {
            continue;
        }
        lens.push(d.len());
        let path = dir.join(format!("{}-{}", kind(d), lens.len()));
        if let Err(e) = std::fs::write(&path, d) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    for (k, lens) in &kept {
        println!("{k}: {} datagram(s), lengths {lens:?}", lens.len());
    }
    println!("{} datagrams captured, written to {}", captured.len(), dir.display());
    ExitCode::SUCCESS
}
