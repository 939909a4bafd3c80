//! The SFU's datagram entry, `Sfu::handle_datagram` (`sfu/core/src/sfu.rs`), with arbitrary bytes.
//!
//! Each input is one UDP datagram. For every input a fresh `Sfu` gets a room and a participant whose offer
//! comes from a real str0m client (audio, video, data channels); the client's STUN checks are delivered
//! until the SFU has learnt its address (ICE done, DTLS not started). The datagram is then delivered from
//! an unknown address (the demultiplexer: `stun::is_stun`, `stun::local_ufrag`) and from the participant's
//! address (its str0m instance: STUN, DTLS, SRTP/SRTCP), and the SFU's timers run for a second.
//!
//! The seed corpus holds real datagrams of a call (written by `sfu/core/examples/fuzz_corpus.rs`).
//!
//! Properties: no panic (a panic inside a participant's str0m is caught by the SFU, which drops the
//! participant; libFuzzer's panic hook still reports it); a datagram from an unknown address neither
//! removes the participant nor makes the SFU learn that address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relaydesk_sfu_core::{Command, Output as SfuOutput, ParticipantId, Reply, Role, RoomId, Sfu, SfuConfig};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc};

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 3478);
const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), 40001);
const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 9)), 50000);
const ROOM: RoomId = RoomId(1);
const ME: ParticipantId = ParticipantId(1);

/// Everything the SFU sends now; what goes to the client is kept in `to_client`.
fn drain_sfu(sfu: &mut Sfu, to_client: &mut Vec<Vec<u8>>) {
    for _ in 0..10_000 {
        match sfu.poll_output() {
            SfuOutput::Transmit(t) if t.destination == CLIENT => to_client.push(t.contents),
            SfuOutput::Transmit(_) | SfuOutput::Event(_) => {}
            SfuOutput::Timeout(_) => return,
        }
    }
    panic!("the SFU never returned a timeout");
}

/// The client's datagrams now (only STUN is kept: DTLS is left for the fuzzed datagram).
fn drain_client(rtc: &mut Rtc) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match rtc.poll_output() {
            Ok(Output::Transmit(t)) => {
                if t.contents.first().is_some_and(|b| *b < 4) {
                    out.push(t.contents.to_vec());
                }
            }
            Ok(Output::Event(_)) => {}
            Ok(Output::Timeout(_)) | Err(_) => return out,
        }
    }
    panic!("the client never returned a timeout");
}

/// A fresh SFU with one participant whose address it has learnt.
fn connected(start: Instant) -> (Sfu, Instant) {
    let mut now = start;
    let mut sfu = Sfu::new(SfuConfig::new(vec![SERVER]));
    sfu.handle_command(now, Command::CreateRoom { room: ROOM })
        .expect("room");
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
    rtc.add_local_candidate(Candidate::host(CLIENT, "udp").expect("candidate"));
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    api.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
    api.add_channel("text".into());
    let (offer, pending) = api.apply().expect("offer");
    let reply = sfu
        .handle_command(
            now,
            Command::AddParticipant {
                room: ROOM,
                participant: ME,
                role: Role::Visitor,
                offer: offer.to_sdp_string(),
            },
        )
        .expect("participant");
    let Reply::Answer(answer) = reply else {
        panic!("no answer")
    };
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).expect("answer parses"))
        .expect("answer accepted");
    let mut to_client = Vec::new();
    for _ in 0..200 {
        if sfu.stats().addresses > 0 {
            return (sfu, now);
        }
        let _ = rtc.handle_input(Input::Timeout(now));
        for d in drain_client(&mut rtc) {
            sfu.handle_datagram(now, CLIENT, SERVER, &d);
        }
        sfu.handle_timeout(now);
        drain_sfu(&mut sfu, &mut to_client);
        for d in to_client.drain(..) {
            let Ok(contents) = d.as_slice().try_into() else {
                continue;
            };
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source: SERVER,
                    destination: CLIENT,
                    contents,
                },
            );
            let _ = rtc.handle_input(input);
        }
        now += Duration::from_millis(10);
    }
    panic!("ICE did not complete in 2 s of virtual time");
}

fuzz_target!(|data: &[u8]| {
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let (mut sfu, mut now) = connected(start);
    let mut sink = Vec::new();
    sfu.handle_datagram(now, STRANGER, SERVER, data);
    drain_sfu(&mut sfu, &mut sink);
    // A datagram from an address nobody proved with ICE changes nothing.
    assert_eq!(
        sfu.room_members(ROOM),
        vec![ME],
        "a stranger's datagram removed the participant"
    );
    assert_eq!(sfu.stats().addresses, 1, "a stranger's address was learnt");
    sfu.handle_datagram(now, CLIENT, SERVER, data);
    drain_sfu(&mut sfu, &mut sink);
    for _ in 0..10 {
        now += Duration::from_millis(100);
        sfu.handle_timeout(now);
        drain_sfu(&mut sfu, &mut sink);
    }
});
