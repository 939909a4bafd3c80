//! ICE restart through the server: a client whose network changes (Wi-Fi to mobile: a new address, the old one
//! gone) re-offers with new ICE credentials; the SFU answers with new ones of its own, finds the client by its
//! new username fragment at its new address, and media flows again both ways without the participant ever
//! leaving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use relaydesk_sfu_core::{Command, Event as SfuEvent, ParticipantId, Reply, Role, RoomId};
use str0m::Candidate;
use str0m::change::SdpAnswer;

const ROOM: RoomId = RoomId(1);
const VISITOR: ParticipantId = ParticipantId(1);
const AGENT: ParticipantId = ParticipantId(2);

/// The ICE ufrag of an SDP.
fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .expect("ufrag")
        .to_string()
}

#[test]
fn a_client_that_moves_to_a_new_address_restarts_ice_through_the_server_and_media_resumes() {
    let mut w = World::new(World::default_config(), None);
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
    w.join(ROOM, AGENT, Role::Agent, Offer::av());
    w.connect_all();
    let mut c = Sender::new(VISITOR, w.now, 10, 0xC1);
    let mut a = Sender::new(AGENT, w.now, 10, 0xA9);
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(1));
    let before = |w: &mut World, id| {
        let cl = w.client(id);
        let vm = cl.video_mid.unwrap();
        cl.received_on(vm).len()
    };
    let (visitor_before, agent_before) = (before(&mut w, VISITOR), before(&mut w, AGENT));
    assert!(
        visitor_before > 10 && agent_before > 10,
        "{visitor_before} {agent_before}"
    );

    // The visitor's network changes: a new address, new ICE credentials, a new offer through signalling.
    let new_addr = client_addr(40);
    let now = w.now;
    let old_server_ufrag = w.client(VISITOR).server_ufrag.clone();
    let cl = w.client(VISITOR);
    cl.addr = new_addr;
    let mut api = cl.rtc.sdp_api();
    api.ice_restart(false);
    let (offer, pending) = api.apply().expect("an ICE restart needs an offer");
    let reply = w
        .sfu
        .handle_command(
            now,
            Command::Renegotiate {
                participant: VISITOR,
                offer: offer.to_sdp_string(),
            },
        )
        .expect("the restart offer is accepted");
    let Reply::Answer(answer) = reply else {
        panic!("no answer")
    };
    let new_server_ufrag = ufrag(&answer);
    assert_ne!(
        new_server_ufrag, old_server_ufrag,
        "the server answers with new credentials"
    );
    let cl = w.client(VISITOR);
    cl.server_ufrag = new_server_ufrag;
    cl.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    // The restart (applied with the answer) dropped the old candidates; the new network's is added now.
    cl.rtc.add_local_candidate(Candidate::host(new_addr, "udp").unwrap());
    w.drain_sfu();

    // Media flows again both ways, from and to the new address.
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(3));
    let (visitor_after, agent_after) = (before(&mut w, VISITOR), before(&mut w, AGENT));
    assert!(
        visitor_after > visitor_before + 30,
        "the visitor receives again: {visitor_before} → {visitor_after}"
    );
    assert!(
        agent_after > agent_before + 30,
        "the agent receives again: {agent_before} → {agent_after}"
    );
    assert_eq!(
        w.count_events(|e| matches!(e, SfuEvent::ParticipantLeft { .. })),
        0,
        "nobody left"
    );
    // The old username fragment no longer names anyone.
    assert_eq!(w.sfu.stats().ufrags, 2);
}
