//! Recording seen from the core, on the simulated network: a recorded room hands every packet its visitor
//! and agent publish to the tap (audio and video, with their codec), starting asks the video publishers for a
//! keyframe, stopping hands nothing more, and a room not recorded hands nothing at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use relaydesk_sfu_core::{Command, MediaKind, MediaTap, ParticipantId, Role, RoomId, TapCodec, TappedPacket};

const ROOM: RoomId = RoomId(1);
const VISITOR: ParticipantId = ParticipantId(1);
const AGENT: ParticipantId = ParticipantId(2);

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<TappedPacket>>>);

impl MediaTap for Collect {
    fn packet(&mut self, packet: TappedPacket) {
        self.0.lock().unwrap().push(packet);
    }
}

fn set(w: &mut World, recording: bool) {
    w.sfu
        .handle_command(w.now, Command::SetRecording { room: ROOM, recording })
        .unwrap();
    w.drain_sfu();
}

#[test]
fn a_recorded_room_taps_both_parties_and_stops_when_told() {
    let mut w = World::new(World::default_config(), None);
    let tap = Collect::default();
    w.sfu.set_tap(Box::new(tap.clone()));
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
    w.join(ROOM, AGENT, Role::Agent, Offer::av());
    w.connect_all();
    let mut c = Sender::new(VISITOR, w.now, 100, 0xC1);
    let mut a = Sender::new(AGENT, w.now, 200, 0xA9);

    // Not recorded: nothing tapped.
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(1));
    assert!(tap.0.lock().unwrap().is_empty());
    assert_eq!(w.sfu.stats().rtp_tapped, 0);

    // Recorded: both parties, both kinds, with their codec; a keyframe is asked of each video publisher.
    let kf = (w.client(VISITOR).keyframe_requests, w.client(AGENT).keyframe_requests);
    set(&mut w, true);
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(2));
    assert!(
        w.client(VISITOR).keyframe_requests > kf.0,
        "visitor asked for a keyframe"
    );
    assert!(w.client(AGENT).keyframe_requests > kf.1, "agent asked for a keyframe");
    let got = std::mem::take(&mut *tap.0.lock().unwrap());
    for (who, role) in [(VISITOR, Role::Visitor), (AGENT, Role::Agent)] {
        let audio = got
            .iter()
            .filter(|p| p.participant == who && p.kind == MediaKind::Audio)
            .count();
        let video: Vec<_> = got
            .iter()
            .filter(|p| p.participant == who && p.kind == MediaKind::Video)
            .collect();
        assert!(audio > 50, "{who}: {audio} audio packets tapped");
        assert!(video.len() > 30, "{who}: {} video packets tapped", video.len());
        assert!(
            got.iter()
                .filter(|p| p.participant == who)
                .all(|p| p.role == role && p.room == ROOM)
        );
        assert!(video.iter().all(|p| p.codec == TapCodec::Vp8));
        // Sequence numbers as they arrived (no rewriting): increasing.
        assert!(video.windows(2).all(|p| p[1].seq > p[0].seq));
    }
    assert!(
        got.iter()
            .filter(|p| p.kind == MediaKind::Audio)
            .all(|p| p.codec == TapCodec::Opus)
    );
    assert_eq!(w.sfu.stats().rtp_tapped, got.len() as u64);

    // Stopped: nothing more, and forwarding went on all along.
    set(&mut w, false);
    let forwarded = w.sfu.stats().rtp_forwarded;
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(1));
    assert!(tap.0.lock().unwrap().is_empty());
    assert!(w.sfu.stats().rtp_forwarded > forwarded + 100);
}
