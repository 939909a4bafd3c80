//! Media forwarding scenarios on the simulated network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use relaydesk_sfu_core::{Event as SfuEvent, ParticipantId, Role, RoomId};

const ROOM: RoomId = RoomId(1);
const CUSTOMER: ParticipantId = ParticipantId(1);
const AGENT: ParticipantId = ParticipantId(2);

fn call() -> World {
    let mut w = World::new(World::default_config(), None);
    w.create_room(ROOM);
    w.join(ROOM, CUSTOMER, Role::Customer, Offer::av());
    w.join(ROOM, AGENT, Role::Agent, Offer::av());
    w.connect_all();
    w
}

/// Sequence numbers of consecutive packets differ by one; timestamps never go backwards.
fn assert_continuous(pkts: &[&str0m::rtp::RtpPacket]) {
    assert!(!pkts.is_empty());
    let ssrc = pkts[0].header.ssrc;
    for pair in pkts.windows(2) {
        assert_eq!(pair[1].header.ssrc, ssrc, "one SSRC per subscriber stream");
        assert_eq!(*pair[1].seq_no, *pair[0].seq_no + 1, "sequence gap or jump");
        let dt = pair[1].header.timestamp.wrapping_sub(pair[0].header.timestamp);
        assert!(dt < u32::MAX / 2, "timestamp went backwards");
    }
}

#[test]
fn audio_and_video_forwarded_both_ways() {
    let mut w = call();
    let mut c = Sender::new(CUSTOMER, w.now, 65_000, 0xC1);
    let mut a = Sender::new(AGENT, w.now, 10, 0xA9);
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(3));

    for (rx, tag) in [(AGENT, 0xC1u8), (CUSTOMER, 0xA9u8)] {
        let client = w.client(rx);
        let (am, vm) = (client.audio_mid.unwrap(), client.video_mid.unwrap());
        let audio = client.received_on(am);
        let video = client.received_on(vm);
        assert!(audio.len() > 100, "{rx}: audio packets {}", audio.len());
        assert!(video.len() > 60, "{rx}: video packets {}", video.len());
        assert!(
            audio.iter().all(|p| p.payload[0] == tag),
            "{rx}: audio from the other party"
        );
        assert!(
            video.iter().all(|p| p.payload[7] == tag),
            "{rx}: video from the other party"
        );
        // Rebased per subscriber: starts low whatever the publisher's base (65_000 wraps for the customer).
        assert!(*audio[0].seq_no < 1000, "{rx}: first seq {}", *audio[0].seq_no);
        assert_continuous(&audio);
        assert_continuous(&video);
        // The first video packet a subscriber sees is a keyframe.
        assert_eq!(video[0].payload[1] & 1, 0, "{rx}: first video packet is a keyframe");
    }
    let st = w.sfu.stats();
    assert!(st.rtp_forwarded > 400);
    assert_eq!(st.participants, 2);
    assert_eq!(
        w.count_events(|e| matches!(e, SfuEvent::ParticipantConnected { .. })),
        2
    );
    assert!(w.count_events(|e| matches!(e, SfuEvent::Speaking { speaking: true, .. })) >= 2);
}
