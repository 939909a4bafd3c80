//! Rooms, limits, leaving, hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use relaydesk_sfu_core::{
    Command, Event as SfuEvent, LeaveReason, Output, ParticipantId, Role, RoomId, Sfu, SfuConfig, SfuError,
};

const ROOM: RoomId = RoomId(5);
const VISITOR: ParticipantId = ParticipantId(1);
const AGENT: ParticipantId = ParticipantId(2);

fn call() -> World {
    let mut w = World::new(World::default_config(), None);
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
    w.join(ROOM, AGENT, Role::Agent, Offer::av());
    w.connect_all();
    w
}

#[test]
fn leaving_frees_everything() {
    let mut w = call();
    let mut c = Sender::new(VISITOR, w.now, 1, 1);
    let mut a = Sender::new(AGENT, w.now, 1, 2);
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(1));
    let st = w.sfu.stats();
    assert_eq!((st.rooms, st.participants, st.addresses, st.ufrags), (1, 2, 2, 2));
    assert!(st.timers >= 2);

    w.leave(VISITOR);
    let st = w.sfu.stats();
    assert_eq!((st.participants, st.addresses, st.ufrags), (1, 1, 1));
    w.sfu.handle_command(w.now, Command::CloseRoom { room: ROOM }).unwrap();
    w.clients.clear();
    w.drain_sfu();
    w.run_for(Duration::from_secs(1));
    let st = w.sfu.stats();
    assert_eq!(
        (st.rooms, st.participants, st.addresses, st.ufrags, st.timers),
        (0, 0, 0, 0, 0),
        "{st:?}"
    );
    assert!(w.sfu.room_members(ROOM).is_empty());
    assert_eq!(w.sfu_timeout, None, "no timer left armed");
    assert_eq!(
        w.count_events(|e| matches!(
            e,
            SfuEvent::ParticipantLeft {
                reason: LeaveReason::Removed,
                ..
            }
        )),
        2
    );
}

#[test]
fn a_vanished_peer_is_removed_after_ice_timeout() {
    let mut w = call();
    // The visitor's browser disappears without a word.
    w.clients.retain(|c| c.id != VISITOR);
    w.run_for(Duration::from_secs(60));
    assert_eq!(w.sfu.stats().participants, 1);
    assert!(
        w.count_events(|e| matches!(
            e,
            SfuEvent::ParticipantLeft { participant, reason: LeaveReason::Disconnected, .. } if *participant == VISITOR
        )) == 1
    );
}

#[test]
fn limits_and_errors() {
    let mut cfg = World::default_config();
    cfg.max_rooms = 1;
    cfg.max_participants_per_room = 2;
    let mut w = World::new(cfg, None);
    w.create_room(ROOM);
    let now = w.now;
    assert!(matches!(
        w.sfu.handle_command(now, Command::CreateRoom { room: ROOM }),
        Err(SfuError::RoomExists(_))
    ));
    assert!(matches!(
        w.sfu.handle_command(now, Command::CreateRoom { room: RoomId(77) }),
        Err(SfuError::TooManyRooms)
    ));
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
    w.join(ROOM, AGENT, Role::Agent, Offer::av());
    let offer = "v=0\r\n".to_string();
    assert!(matches!(
        w.sfu.handle_command(
            now,
            Command::AddParticipant {
                room: ROOM,
                participant: ParticipantId(3),
                role: Role::Visitor,
                offer: offer.clone()
            }
        ),
        Err(SfuError::RoomFull(_))
    ));
    assert!(matches!(
        w.sfu.handle_command(
            now,
            Command::AddParticipant {
                room: RoomId(8),
                participant: ParticipantId(3),
                role: Role::Visitor,
                offer: offer.clone()
            }
        ),
        Err(SfuError::NoSuchRoom(_))
    ));
    assert!(matches!(
        w.sfu.handle_command(
            now,
            Command::Renegotiate {
                participant: VISITOR,
                offer: "garbage".into()
            }
        ),
        Err(SfuError::BadSdp(_))
    ));
    assert!(matches!(
        w.sfu.handle_command(
            now,
            Command::RemoveParticipant {
                participant: ParticipantId(99)
            }
        ),
        Err(SfuError::NoSuchParticipant(_))
    ));
    w.sfu.handle_command(now, Command::CloseRoom { room: ROOM }).unwrap();
    w.sfu
        .handle_command(now, Command::CreateRoom { room: RoomId(2) })
        .unwrap();
    assert!(matches!(
        w.sfu.handle_command(
            now,
            Command::AddParticipant {
                room: RoomId(2),
                participant: ParticipantId(3),
                role: Role::Agent,
                offer
            }
        ),
        Err(SfuError::BadSdp(_))
    ));
}

fn stun_request(username: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(u) = username {
        body.extend_from_slice(&6u16.to_be_bytes());
        body.extend_from_slice(&(u.len() as u16).to_be_bytes());
        body.extend_from_slice(u);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&[3; 12]);
    m.extend_from_slice(&body);
    m
}

#[test]
fn unknown_stun_users_and_addresses_are_dropped_and_counted() {
    let mut sfu = Sfu::new(SfuConfig::new(vec![SERVER]));
    let now = start_instant();
    let from: SocketAddr = "10.9.9.9:5000".parse().unwrap();
    sfu.handle_datagram(now, from, SERVER, &stun_request(Some(b"nobody:x")));
    sfu.handle_datagram(now, from, SERVER, &stun_request(None));
    sfu.handle_datagram(now, from, SERVER, &[0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 2, 3]);
    sfu.handle_datagram(now, from, SERVER, &[]);
    sfu.handle_datagram(now, from, SERVER, &vec![0x80; 70_000]);
    let d = sfu.stats().drops;
    assert_eq!(d.stun_unknown_user, 2);
    assert_eq!(d.unknown_address, 1);
    assert_eq!(d.malformed, 1);
    assert_eq!(d.oversized, 1);
    assert_eq!(sfu.stats().addresses, 0, "nothing learnt from them");
    assert!(matches!(sfu.poll_output(), Output::Timeout(None)));
}

#[test]
fn random_garbage_never_panics_and_the_call_survives() {
    let mut w = call();
    let mut rng = Rng::new(0x5eed);
    let known = [client_addr(VISITOR.0), client_addr(AGENT.0)];
    let agent_ufrag_guess = b"abcd:efgh".to_vec();
    let mut buf = vec![0u8; 3000];
    for i in 0..20_000u32 {
        let len = rng.below(1600) as usize;
        rng.fill(&mut buf[..len]);
        let data = &mut buf[..len];
        // Shape some of it like the protocols we demultiplex.
        match i % 5 {
            0 if len >= 20 => {
                data[0] = 0;
                data[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
                if len >= 20 + 4 + agent_ufrag_guess.len() {
                    data[20..22].copy_from_slice(&6u16.to_be_bytes());
                    data[22..24].copy_from_slice(&(agent_ufrag_guess.len() as u16).to_be_bytes());
                }
            }
            1 if len >= 12 => data[0] = 0x80 | (data[0] & 0x3f),
            2 if len >= 13 => data[0] = 20 + (data[0] % 44), // DTLS range
            _ => {}
        }
        // Half from the participants' real addresses (straight into their str0m instances).
        let from = if i % 2 == 0 {
            known[(i as usize / 2) % 2]
        } else {
            client_addr(100 + rng.below(50))
        };
        w.sfu.handle_datagram(w.now, from, SERVER, data);
        if i % 100 == 0 {
            w.drain_sfu();
            w.run_for(Duration::from_millis(1));
        }
    }
    w.drain_sfu();
    let st = w.sfu.stats();
    assert_eq!(st.panics, 0);
    let d = st.drops;
    assert!(
        d.unknown_address + d.stun_unknown_user + d.malformed + d.rejected > 5_000,
        "{d:?}"
    );
    // The call still works.
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    run_with(&mut w, &mut [&mut c], Duration::from_secs(1));
    let agent = w.client(AGENT);
    assert!(
        agent
            .received_on(agent.audio_mid.unwrap())
            .iter()
            .filter(|p| p.payload[0] == 0xC1)
            .count()
            > 30
    );
    assert_eq!(w.sfu.stats().participants, 2);
}

#[test]
fn a_panicking_participant_ends_alone() {
    let mut w = World::new(World::default_config(), None);
    w.create_room(ROOM);
    w.create_room(RoomId(6));
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
    w.join(ROOM, AGENT, Role::Agent, Offer::av());
    w.join(RoomId(6), ParticipantId(3), Role::Visitor, Offer::av());
    w.connect_all();
    let now = w.now;
    w.sfu.inject_participant_panic(now, VISITOR);
    w.clients.retain(|c| c.id != VISITOR);
    w.drain_sfu();
    w.run_for(Duration::from_secs(1));
    let st = w.sfu.stats();
    assert_eq!(st.panics, 1);
    assert_eq!(st.participants, 2);
    assert_eq!(
        w.count_events(|e| matches!(e, SfuEvent::ParticipantLeft { reason: LeaveReason::Panicked, participant, .. } if *participant == VISITOR)),
        1
    );
    assert_eq!(w.sfu.room_members(ROOM), vec![AGENT]);
}

#[test]
fn the_sfu_can_move_to_a_shard_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Sfu>();
    assert_send::<Command>();
    assert_send::<SfuEvent>();
}

#[test]
fn a_forged_stun_request_naming_a_ufrag_does_not_claim_an_address() {
    let mut w = call();
    let ufrag = w.client(AGENT).server_ufrag.clone();
    let attacker: SocketAddr = "10.66.6.6:6666".parse().unwrap();
    // Right username, no valid MESSAGE-INTEGRITY: str0m does not answer it, so the address is not learnt.
    let forged = stun_request(Some(format!("{ufrag}:evil").as_bytes()));
    let before = w.sfu.stats();
    w.sfu.handle_datagram(w.now, attacker, SERVER, &forged);
    w.drain_sfu();
    assert_eq!(
        w.sfu.stats().addresses,
        before.addresses,
        "no address learnt from a forged request"
    );
    // Traffic from that address is still unknown.
    w.sfu.handle_datagram(
        w.now,
        attacker,
        SERVER,
        &[0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 2, 3],
    );
    assert_eq!(w.sfu.stats().drops.unknown_address, before.drops.unknown_address + 1);
    // And the agent's call is untouched.
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    run_with(&mut w, &mut [&mut c], Duration::from_millis(500));
    let agent = w.client(AGENT);
    assert!(agent.received_on(agent.audio_mid.unwrap()).len() > 15);
}

#[test]
fn a_socket_bound_to_the_unspecified_address_still_connects() {
    let mut w = World::new(World::default_config(), None);
    // The driver reports the bound address (0.0.0.0:3478), not the announced one.
    w.server_bound_as = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), SERVER.port());
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::audio_only());
    w.join(ROOM, AGENT, Role::Agent, Offer::audio_only());
    w.connect_all();
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    run_with(&mut w, &mut [&mut c], Duration::from_millis(500));
    let agent = w.client(AGENT);
    assert!(agent.received_on(agent.audio_mid.unwrap()).len() > 15);
}

#[test]
fn an_abandoned_offer_is_removed_after_the_connect_timeout() {
    // str0m alone gives up on an ICE-lite peer that never checks in after about 15 s; the SFU's own
    // deadline (here 5 s) is the bound the operator configures.
    let mut cfg = World::default_config();
    cfg.connect_timeout = Duration::from_secs(5);
    let mut w = World::new(cfg, None);
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
    // The browser never sends a single packet.
    w.clients.clear();
    w.run_for(Duration::from_secs(4));
    assert_eq!(w.sfu.stats().participants, 1, "still within the connect timeout");
    w.run_for(Duration::from_secs(2));
    let st = w.sfu.stats();
    assert_eq!((st.participants, st.ufrags, st.timers), (0, 0, 0), "{st:?}");
    assert_eq!(
        w.count_events(|e| matches!(
            e,
            SfuEvent::ParticipantLeft {
                reason: LeaveReason::Disconnected,
                ..
            }
        )),
        1
    );
}
