//! Media forwarding scenarios on the simulated network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use relaydesk_sfu_core::{Command, Event as SfuEvent, ParticipantId, Role, RoomId, SfuConfig};
use str0m::format::Codec;

const ROOM: RoomId = RoomId(1);
const VISITOR: ParticipantId = ParticipantId(1);
const AGENT: ParticipantId = ParticipantId(2);

fn call() -> World {
    call_with(World::default_config())
}

/// A visitor and an agent, both audio and video, connected, on an SFU with `config`.
fn call_with(config: SfuConfig) -> World {
    let mut w = World::new(config, None);
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
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
    let mut c = Sender::new(VISITOR, w.now, 65_000, 0xC1);
    let mut a = Sender::new(AGENT, w.now, 10, 0xA9);
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(3));

    for (rx, tag) in [(AGENT, 0xC1u8), (VISITOR, 0xA9u8)] {
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
        // Rebased per subscriber: starts low whatever the publisher's base (65_000 wraps for the visitor).
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

#[test]
fn a_speaker_who_falls_silent_is_announced_silent_once() {
    let mut w = call();
    let mut c = Sender::new(VISITOR, w.now, 100, 0xC1);
    run_with(&mut w, &mut [&mut c], Duration::from_secs(1));
    let speaking = |w: &World, on: bool| {
        w.count_events(|e| matches!(e, SfuEvent::Speaking { participant, speaking, .. } if *participant == VISITOR && *speaking == on))
    };
    assert_eq!(speaking(&w, true), 1, "loud audio starts speech once");
    assert_eq!(speaking(&w, false), 0);
    // The visitor stops sending: after the hold time the SFU says so, once, by its own timer.
    w.run_for(Duration::from_secs(2));
    assert_eq!(speaking(&w, false), 1, "silence is announced");
    assert_eq!(speaking(&w, true), 1);
}

#[test]
fn continuity_across_publisher_restart() {
    let mut w = call();
    let mut c = Sender::new(VISITOR, w.now, 100, 0xC1);
    run_with(&mut w, &mut [&mut c], Duration::from_secs(1));
    // The visitor's browser reloads: a new peer connection (new SSRC, new sequence and timestamp bases).
    w.leave(VISITOR);
    w.run_for(Duration::from_millis(300));
    let again = ParticipantId(11);
    w.join(ROOM, again, Role::Visitor, Offer::av());
    w.connect_all();
    let mut c2 = Sender::new(again, w.now, 40_000, 0xC2);
    c2.audio_ts = 7;
    c2.video_ts = 3_000_000_000;
    run_with(&mut w, &mut [&mut c2], Duration::from_secs(1));

    let agent = w.client(AGENT);
    for mid in [agent.audio_mid.unwrap(), agent.video_mid.unwrap()] {
        let pkts = agent.received_on(mid);
        assert!(pkts.iter().any(|p| p.payload[0] == 0xC1 || p.payload[7] == 0xC1));
        assert!(pkts.iter().any(|p| p.payload[0] == 0xC2 || p.payload[7] == 0xC2));
        assert_continuous(&pkts);
    }
}

#[test]
fn late_joiner_gets_a_keyframe() {
    let mut w = World::new(World::default_config(), None);
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
    w.connect_all();
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    c.keyframe_every = 0; // only the first frame and requested ones
    run_with(&mut w, &mut [&mut c], Duration::from_secs(2));
    let kf_before = w.client(VISITOR).keyframe_requests;

    w.join(ROOM, AGENT, Role::Agent, Offer::av());
    w.connect_all();
    run_with(&mut w, &mut [&mut c], Duration::from_secs(1));

    assert!(
        w.client(VISITOR).keyframe_requests > kf_before,
        "a PLI reached the publisher"
    );
    assert!(
        w.count_events(|e| matches!(e, SfuEvent::KeyframeRequested { publisher, .. } if *publisher == VISITOR)) >= 1
    );
    let agent = w.client(AGENT);
    let video = agent.received_on(agent.video_mid.unwrap());
    assert!(video.len() > 10, "video flows to the late joiner: {}", video.len());
    assert_eq!(
        video[0].payload[1] & 1,
        0,
        "the first frame the late joiner sees is a keyframe"
    );
    assert_continuous(&video);
}

#[test]
fn video_restarts_on_keyframes_when_a_cut_path_comes_back() {
    let mut w = call();
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    let mut a = Sender::new(AGENT, w.now, 10, 0xA9);
    c.keyframe_every = 0; // only the first frame and requested ones
    a.keyframe_every = 0;
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_secs(2));
    // The visitor's path is cut both ways for 1.5 s (what was sent meanwhile is lost for good).
    let visitor = w.client(VISITOR).addr;
    w.net.cut.insert(visitor);
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_millis(1500));
    let before = (w.client(VISITOR).keyframe_requests, w.client(AGENT).keyframe_requests);
    let kf_events = w.count_events(|e| matches!(e, SfuEvent::KeyframeRequested { .. }));
    let agent_video_mid = w.client(AGENT).video_mid.unwrap();
    let before_cut_ends = w.client(AGENT).received_on(agent_video_mid).len();
    let visitor_video_mid = w.client(VISITOR).video_mid.unwrap();
    let visitor_before = w.client(VISITOR).received_on(visitor_video_mid).len();
    // The agent's video the SFU sent into the cut, by sequence number on the visitor's leg.
    let sent_into_cut: std::collections::HashSet<(u32, u16)> = w
        .net
        .dropped_rtp
        .iter()
        .filter(|(to, _, _)| *to == visitor)
        .map(|(_, ssrc, seq)| (*ssrc, *seq))
        .collect();
    assert!(!sent_into_cut.is_empty());
    w.net.cut.clear();
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_millis(300));
    assert!(
        w.client(VISITOR).keyframe_requests > before.0,
        "the visitor, whose uplink was cut, is asked for a keyframe as soon as it is heard again"
    );
    assert!(
        w.client(AGENT).keyframe_requests > before.1,
        "the agent is asked for a keyframe for the visitor, whose downlink was cut"
    );
    assert!(w.count_events(|e| matches!(e, SfuEvent::KeyframeRequested { .. })) >= kf_events + 2);
    // And the visitor's video reaches the agent again, starting with a keyframe.
    let agent = w.client(AGENT);
    let video = agent.received_on(agent.video_mid.unwrap());
    let last_key = video.iter().rposition(|p| p.payload[1] & 1 == 0).expect("a keyframe");
    assert!(video.len() > last_key + 1, "frames follow the keyframe");
    // What the cut lost can never be repaired: the agent's stream goes on at the keyframe with the next
    // sequence number (no gap to NACK, nothing to wait for).
    let (last_before, first_after) = (video[before_cut_ends - 1], video[before_cut_ends]);
    assert_eq!(
        *first_after.seq_no,
        *last_before.seq_no + 1,
        "no sequence gap across the cut"
    );
    assert_eq!(first_after.payload[1] & 1, 0, "the stream resumes on a keyframe");
    // Nor is what the visitor missed during the cut resent to it: it would arrive seconds late and
    // hold up everything decoded after it. It restarts at a keyframe instead.
    let visitor = w.client(VISITOR);
    let after = &visitor.received_on(visitor_video_mid)[visitor_before..];
    // (Before the SFU hears the visitor again it cannot know: a packet may still be resent then.)
    let restart = after
        .iter()
        .position(|p| p.payload[1] & 1 == 0)
        .expect("the visitor's video restarts on a keyframe");
    assert!(after.len() > restart + 1, "frames follow the keyframe");
    let resent = after[restart..]
        .iter()
        .filter(|p| sent_into_cut.contains(&(*p.header.ssrc, *p.seq_no as u16)))
        .count();
    assert_eq!(resent, 0, "packets lost in the cut were resent after the restart");
}

#[test]
fn video_keeps_flowing_at_ten_percent_loss() {
    let mut w = call();
    w.net.loss_percent = 10.0;
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    let secs = 6;
    run_with(&mut w, &mut [&mut c], Duration::from_secs(secs));
    let sent_frames = c.frame;
    // Let retransmissions finish (nothing new is sent: `run_for` does not pump the sender).
    w.run_for(Duration::from_secs(1));

    let agent = w.client(AGENT);
    let video = agent.received_on(agent.video_mid.unwrap());
    let mut frames: Vec<u32> = video
        .iter()
        .map(|p| u32::from_be_bytes([p.payload[2], p.payload[3], p.payload[4], p.payload[5]]))
        .collect();
    frames.sort_unstable();
    frames.dedup();
    let ratio = frames.len() as f64 / sent_frames as f64;
    // Two lossy legs without repair would deliver about 81%; NACK/RTX on each leg recovers most of the rest.
    assert!(w.net.lost > 50, "the network did drop packets: {}", w.net.lost);
    assert!(
        ratio > 0.93,
        "frames delivered {}/{} ({ratio:.3})",
        frames.len(),
        sent_frames
    );
}

#[test]
fn whisper_reaches_the_agent_only_after_renegotiation() {
    let mut w = call();
    let sup = ParticipantId(3);
    let mut offer = Offer::audio_only();
    offer.extra_recv_audio = 1;
    offer.extra_recv_video = 2;
    offer.channels = false;
    w.join(ROOM, sup, Role::Supervisor { whisper: true }, offer);
    w.connect_all();
    // The agent has one audio slot (the visitor's); the supervisor's audio needs a second one.
    let needed = w.sfu_events.iter().rev().find_map(|e| match e {
        SfuEvent::RenegotiationNeeded { participant, audio, .. } if *participant == AGENT => Some(*audio),
        _ => None,
    });
    assert_eq!(needed, Some(2));
    w.reoffer(AGENT, 1, 0);
    w.run_for(Duration::from_millis(200));

    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    let mut a = Sender::new(AGENT, w.now, 1, 0xA9);
    let mut s = Sender::new(sup, w.now, 1, 0x55);
    run_with(&mut w, &mut [&mut c, &mut a, &mut s], Duration::from_secs(2));

    let tags = |w: &mut World, id: ParticipantId| -> Vec<u8> {
        let client = w.client(id);
        let mut t: Vec<u8> = client
            .rtp
            .iter()
            .filter(|(_, p)| p.payload.len() == 80)
            .map(|(_, p)| p.payload[0])
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    assert_eq!(
        tags(&mut w, AGENT),
        vec![0x55, 0xC1],
        "agent hears visitor and supervisor"
    );
    assert_eq!(tags(&mut w, VISITOR), vec![0xA9], "visitor hears the agent only");
    assert_eq!(tags(&mut w, sup), vec![0xA9, 0xC1], "supervisor hears both");
    let sv = w.client(sup);
    let video_tags: Vec<u8> = sv
        .rtp
        .iter()
        .filter(|(_, p)| p.payload.len() == 600)
        .map(|(_, p)| p.payload[7])
        .collect();
    assert!(
        video_tags.contains(&0xC1) && video_tags.contains(&0xA9),
        "supervisor sees both videos"
    );
}

/// Audio payload tags (first byte of the 80-byte test frames) a client received after packet `from`.
fn audio_tags_since(w: &mut World, id: ParticipantId, from: usize) -> Vec<u8> {
    let client = w.client(id);
    let mut t: Vec<u8> = client
        .rtp
        .iter()
        .skip(from)
        .filter(|(_, p)| p.payload.len() == 80)
        .map(|(_, p)| p.payload[0])
        .collect();
    t.sort_unstable();
    t.dedup();
    t
}

/// Switches a supervisor's whisper and lets the world run for `ms`.
fn set_whisper(w: &mut World, sup: ParticipantId, whisper: bool, ms: u64) {
    let role = Role::Supervisor { whisper };
    w.sfu
        .handle_command(w.now, Command::SetRole { participant: sup, role })
        .unwrap();
    w.run_for(Duration::from_millis(ms));
}

#[test]
fn a_silent_monitor_starts_and_stops_whispering_without_the_visitor_noticing() {
    let mut w = call();
    // Joining in turn may have asked for a renegotiation already (a slot before the other's media): a base.
    let base = w.sfu_events.len();
    let sup = ParticipantId(3);
    let mut offer = Offer::audio_only();
    offer.extra_recv_audio = 1;
    offer.extra_recv_video = 2;
    offer.channels = false;
    w.join(ROOM, sup, Role::Supervisor { whisper: false }, offer);
    w.connect_all();
    let renegotiations = |w: &World, who: ParticipantId| {
        w.sfu_events
            .iter()
            .skip(base)
            .filter(|e| matches!(e, SfuEvent::RenegotiationNeeded { participant, .. } if *participant == who))
            .count()
    };
    assert_eq!(
        renegotiations(&w, AGENT),
        0,
        "a silent monitor changes nothing for the agent"
    );
    assert_eq!(renegotiations(&w, VISITOR), 0);

    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    let mut a = Sender::new(AGENT, w.now, 1, 0xA9);
    let mut s = Sender::new(sup, w.now, 1, 0x55);
    run_with(&mut w, &mut [&mut c, &mut a, &mut s], Duration::from_secs(1));
    assert_eq!(
        audio_tags_since(&mut w, AGENT, 0),
        vec![0xC1],
        "silent: the agent hears the visitor only"
    );
    assert_eq!(
        audio_tags_since(&mut w, sup, 0),
        vec![0xA9, 0xC1],
        "the monitor hears both"
    );

    // Whisper on: the agent (only) needs a second audio slot, then hears the supervisor.
    set_whisper(&mut w, sup, true, 20);
    let needed = w.sfu_events.iter().rev().find_map(|e| match e {
        SfuEvent::RenegotiationNeeded { participant, audio, .. } if *participant == AGENT => Some(*audio),
        _ => None,
    });
    assert_eq!(needed, Some(2));
    assert_eq!(
        renegotiations(&w, VISITOR),
        0,
        "the visitor is never asked to renegotiate"
    );
    w.reoffer(AGENT, 1, 0);
    w.run_for(Duration::from_millis(200));
    let (agent_mark, visitor_mark) = (w.client(AGENT).rtp.len(), w.client(VISITOR).rtp.len());
    run_with(&mut w, &mut [&mut c, &mut a, &mut s], Duration::from_secs(1));
    assert_eq!(
        audio_tags_since(&mut w, AGENT, agent_mark),
        vec![0x55, 0xC1],
        "whisper reaches the agent"
    );
    assert_eq!(
        audio_tags_since(&mut w, VISITOR, visitor_mark),
        vec![0xA9],
        "and never the visitor"
    );

    // Whisper off: the supervisor's audio stops at once; the slot stays for the next whisper.
    set_whisper(&mut w, sup, false, 100);
    let agent_mark = w.client(AGENT).rtp.len();
    run_with(&mut w, &mut [&mut c, &mut a, &mut s], Duration::from_secs(1));
    assert_eq!(
        audio_tags_since(&mut w, AGENT, agent_mark),
        vec![0xC1],
        "whisper stopped"
    );
    let before = renegotiations(&w, AGENT);
    set_whisper(&mut w, sup, true, 100);
    assert_eq!(
        renegotiations(&w, AGENT),
        before,
        "the freed slot is reused: no second renegotiation"
    );
    let agent_mark = w.client(AGENT).rtp.len();
    run_with(&mut w, &mut [&mut c, &mut a, &mut s], Duration::from_secs(1));
    assert_eq!(
        audio_tags_since(&mut w, AGENT, agent_mark),
        vec![0x55, 0xC1],
        "whisper again"
    );
    assert!(
        w.sfu
            .handle_command(
                w.now,
                Command::SetRole {
                    participant: ParticipantId(99),
                    role: Role::Agent
                }
            )
            .is_err(),
        "an unknown participant is an error"
    );
}

/// A visitor publishing video only, as simulcast layers q, h, f, and an agent subscribing to it.
fn simulcast_call() -> World {
    let mut w = World::new(World::default_config(), None);
    w.create_room(ROOM);
    let mut offer = Offer::av();
    offer.audio = None;
    offer.video = Some(str0m::media::Direction::SendOnly);
    offer.simulcast = &["q", "h", "f"];
    w.join(ROOM, VISITOR, Role::Visitor, offer);
    w.join(ROOM, AGENT, Role::Agent, Offer::av());
    w.connect_all();
    w
}

/// Simulcast layer tags (payload byte 7) of the test frames: q, h, f.
const LAYER_Q: u8 = 0x01;
const LAYER_F: u8 = 0x03;

/// The visitor's simulcast publisher: every 33 ms one frame per layer, the layers other than the lowest
/// from frame 10 on (as a browser starts), a keyframe on all layers when the SFU asks for one.
#[derive(Debug, Default)]
struct SimulcastPublisher {
    seqs: [u64; 3],
    frame: u32,
    seen_requests: usize,
}

impl SimulcastPublisher {
    /// Layer sizes per frame: q 1×200 B, h 2×600 B, f 6×1100 B (about 50 kbps, 290 kbps, 1.6 Mbps at 30 fps).
    const LAYERS: [(&str, usize, usize, u8); 3] =
        [("q", 1, 200, LAYER_Q), ("h", 2, 600, 0x02), ("f", 6, 1100, LAYER_F)];

    /// Publish frames for `d` of virtual time.
    fn run(&mut self, w: &mut World, d: Duration) {
        let end = w.now + d;
        while w.now < end {
            let now = w.now;
            let c = w.client(VISITOR);
            let mid = c.video_mid.unwrap();
            let pt = c.pt(str0m::format::Codec::Vp8);
            let key = self.frame == 0 || c.keyframe_requests > self.seen_requests;
            self.seen_requests = c.keyframe_requests;
            for (i, (rid, packets, size, tag)) in Self::LAYERS.iter().enumerate() {
                if self.frame < 10 && i > 0 {
                    continue;
                }
                for k in 0..*packets {
                    let mut p = vp8_payload(key && k == 0, self.frame, *size);
                    if k > 0 {
                        p[0] = 0x00; // continuation packet: not a partition start
                    }
                    p[7] = *tag;
                    c.write_rid(mid, rid, pt, self.seqs[i] + 1, self.frame * 3000, now, p);
                    self.seqs[i] += 1;
                }
            }
            self.frame += 1;
            w.run_for(Duration::from_millis(33));
        }
    }
}

/// Layer switches in `video` (consecutive packets of different layers): each must land on the first packet
/// of a keyframe. Returns (from, to) layer tags and the index of the first packet of the new layer.
fn layer_switches(video: &[&str0m::rtp::RtpPacket]) -> Vec<(u8, u8, usize)> {
    let mut switches = Vec::new();
    for (i, pair) in video.windows(2).enumerate() {
        if pair[1].payload[7] != pair[0].payload[7] {
            assert_eq!(pair[1].payload[1] & 1, 0, "a layer switch happens on a keyframe");
            assert_ne!(pair[1].payload[0] & 0x10, 0, "at the start of a frame");
            switches.push((pair[0].payload[7], pair[1].payload[7], i + 1));
        }
    }
    switches
}

#[test]
fn simulcast_layers_switch_on_keyframes_only() {
    // The browser starts with its lowest layer (the others from frame 10), so the subscriber is first fed
    // that layer whatever order the client's pacer releases the layers in; the loss-free simulated network
    // gives an estimate of several Mbit/s at once, so it must be moved up, on a keyframe.
    let mut w = simulcast_call();
    SimulcastPublisher::default().run(&mut w, Duration::from_secs(4));

    let agent = w.client(AGENT);
    let video = agent.received_on(agent.video_mid.unwrap());
    let tagseq: Vec<(u8, u8)> = video.iter().map(|p| (p.payload[7], p.payload[1] & 1)).collect();
    assert!(
        video.len() > 50,
        "video received: {} {:?} {:?} {tagseq:?}",
        video.len(),
        w.sfu.stats(),
        w.client(VISITOR).keyframe_requests
    );
    assert_continuous(&video);
    let switches = layer_switches(&video);
    let tags: std::collections::BTreeSet<u8> = video.iter().map(|p| p.payload[7]).collect();
    eprintln!("layers seen {tags:?}, switches {switches:?}");
    assert!(
        tags.len() >= 2,
        "the subscriber was moved to the layer its estimate allows: {tags:?}"
    );
    assert_eq!(
        video[0].payload[7], LAYER_Q,
        "first fed the lowest layer, the only one at first"
    );
}

/// The video a client received, in its sequence order: arrival order is not sequence order once a link drops
/// packets and their retransmissions arrive late.
fn video_in_seq_order(c: &Client) -> Vec<&str0m::rtp::RtpPacket> {
    let mut video = c.received_on(c.video_mid.unwrap());
    video.sort_by_key(|p| *p.seq_no);
    video.dedup_by_key(|p| *p.seq_no);
    video
}

#[test]
fn simulcast_subscriber_whose_bandwidth_drops_is_switched_down_on_a_keyframe() {
    let mut w = simulcast_call();
    let mut publisher = SimulcastPublisher::default();
    // Up to the full layer on the loss-free network (bounded: 10 s of virtual time).
    let on_top = |w: &mut World| {
        let agent = w.client(AGENT);
        let video = agent.received_on(agent.video_mid.unwrap());
        video.last().is_some_and(|p| p.payload[7] == LAYER_F)
    };
    for _ in 0..20 {
        if on_top(&mut w) {
            break;
        }
        publisher.run(&mut w, Duration::from_millis(500));
    }
    assert!(on_top(&mut w), "the subscriber reached the full layer first");
    let mark = video_in_seq_order(w.client(AGENT)).last().map(|p| *p.seq_no).unwrap();

    // The agent's downlink drops to 600 kbit/s (a 100 ms queue, tail drop): the full layer (1.6 Mbit/s) no
    // longer fits; the SFU's estimate falls with the delay and the loss, and a lower layer must follow.
    let agent_addr = w.client(AGENT).addr;
    w.net.links.insert(
        agent_addr,
        Link {
            rate_bps: Some(600_000),
            max_queue: Duration::from_millis(100),
            ..Link::default()
        },
    );
    publisher.run(&mut w, Duration::from_secs(6));
    let dropped = w.net.dropped_rtp.iter().filter(|(to, ..)| *to == agent_addr).count();

    let video = video_in_seq_order(w.client(AGENT));
    let after: Vec<&str0m::rtp::RtpPacket> = video.into_iter().filter(|p| *p.seq_no >= mark).collect();
    let switches = layer_switches(&after);
    eprintln!("after the cut: switches {switches:?}, RTP dropped at the bottleneck {dropped}");
    let &(from, to, at) = switches.first().expect("a layer switch after the bandwidth cut");
    assert_eq!(from, LAYER_F, "switched away from the full layer");
    assert!(to < LAYER_F, "switched down, to layer {to:#x}");
    // The first packet of the new layer the subscriber gets is the start of a keyframe (also checked for
    // every switch by `layer_switches`).
    assert_eq!(after[at].payload[1] & 1, 0, "the new layer starts on a keyframe");
    assert_ne!(after[at].payload[0] & 0x10, 0, "at the start of the frame");
    // And it stays below the full layer: the last 30 packets (half a second or more of a lower layer) too.
    let last: Vec<u8> = after.iter().rev().take(30).map(|p| p.payload[7]).collect();
    assert!(
        last.iter().all(|t| *t < LAYER_F),
        "still below the full layer at the end: {last:?}"
    );
}

/// How many of the video packets a subscriber's link dropped the subscriber got anyway (only a
/// retransmission can bring them: the network never duplicates), out of how many dropped.
fn repaired_video(w: &mut World, subscriber: ParticipantId) -> (usize, usize) {
    let addr = w.client(subscriber).addr;
    let agent = w.client(subscriber);
    let video = agent.received_on(agent.video_mid.unwrap());
    let ssrc = *video[0].header.ssrc;
    let got: std::collections::HashSet<u16> = video.iter().map(|p| *p.seq_no as u16).collect();
    let dropped: std::collections::HashSet<u16> = w
        .net
        .dropped_rtp
        .iter()
        .filter(|(to, s, _)| *to == addr && *s == ssrc)
        .map(|(_, _, seq)| *seq)
        .collect();
    (dropped.iter().filter(|s| got.contains(s)).count(), dropped.len())
}

#[test]
fn video_lost_on_the_way_to_a_subscriber_is_nacked_and_retransmitted() {
    let mut w = World::new(World::default_config(), None);
    w.client_stats_interval = Some(Duration::from_secs(1));
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
    w.join(ROOM, AGENT, Role::Agent, Offer::av());
    w.connect_all();
    // Loss on the agent's downlink only: what the agent misses, the SFU must resend.
    let agent_addr = w.client(AGENT).addr;
    w.net.links.insert(
        agent_addr,
        Link {
            loss_percent: LOSS_PERCENT,
            ..Link::default()
        },
    );
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    c.audio = false;
    run_with(&mut w, &mut [&mut c], Duration::from_secs(10));
    // Let retransmissions finish (nothing new is sent: `run_for` does not pump the sender).
    w.run_for(Duration::from_secs(2));

    let (repaired, dropped) = repaired_video(&mut w, AGENT);
    let agent = w.client(AGENT);
    let vmid = agent.video_mid.unwrap();
    let video = agent.received_on(vmid);
    let ssrc = video[0].header.ssrc;
    let mut seqs: Vec<u64> = video.iter().map(|p| *p.seq_no).collect();
    let rtx_ssrc = agent
        .rtc
        .direct_api()
        .stream_rx(&ssrc)
        .and_then(|s| s.rtx())
        .expect("an RTX stream was negotiated");
    let nacks = agent
        .events
        .iter()
        .filter_map(|e| match e {
            str0m::Event::MediaIngressStats(s) if s.mid == vmid => Some(s.nacks),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    seqs.sort_unstable();
    seqs.dedup();
    let expected = seqs.last().unwrap() - seqs[0] + 1;
    let missing = expected - seqs.len() as u64;
    let rtx_sent = w.net.rtp_sent.get(&(agent_addr, *rtx_ssrc)).copied().unwrap_or(0);
    eprintln!(
        "loss {LOSS_PERCENT}% on the agent's link: video dropped {dropped}, repaired {repaired}, NACKs sent {nacks}, \
         datagrams on the RTX SSRC {rtx_sent} (resends and bandwidth probes), sequence numbers {} of {expected} (missing {missing})",
        seqs.len()
    );
    assert!(dropped >= 20, "the link did drop video: {dropped}");
    assert!(nacks > 0, "the agent asked for the lost packets");
    // A resend crosses the same lossy link; one lost again is NACKed again (up to five times). What stays
    // missing is what the SFU's str0m declines to resend: it drops its queued resends while retransmissions
    // exceed 15% of the stream's bytes over the last second, which a burst of loss reaches. Observed at 10%:
    // 2 of 35 unrepaired; at most one in ten may be, and at most 1% of the sequence numbers may be missing.
    assert!(
        repaired * 10 >= dropped * 9,
        "retransmission repaired only {repaired} of {dropped} dropped packets"
    );
    assert!(
        missing * 100 <= expected,
        "the agent lacks {missing} of {expected} sequence numbers"
    );
}

/// Loss on the subscriber's link in `video_lost_on_the_way_to_a_subscriber_is_nacked_and_retransmitted`.
const LOSS_PERCENT: f64 = 10.0;

#[test]
fn mute_and_pause_stop_forwarding() {
    use relaydesk_sfu_core::{Command, MediaKind};
    let mut w = call();
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    run_with(&mut w, &mut [&mut c], Duration::from_millis(500));
    let count = |w: &mut World, video: bool| {
        let a = w.client(AGENT);
        let mid = if video {
            a.video_mid.unwrap()
        } else {
            a.audio_mid.unwrap()
        };
        a.received_on(mid).len()
    };
    let now = w.now;
    w.sfu
        .handle_command(
            now,
            Command::SetPublishMuted {
                participant: VISITOR,
                kind: MediaKind::Audio,
                muted: true,
            },
        )
        .unwrap();
    w.sfu
        .handle_command(
            now,
            Command::SetReceivePaused {
                participant: AGENT,
                kind: MediaKind::Video,
                paused: true,
            },
        )
        .unwrap();
    w.drain_sfu();
    w.run_for(Duration::from_millis(100)); // packets in flight land
    let (a0, v0) = (count(&mut w, false), count(&mut w, true));
    run_with(&mut w, &mut [&mut c], Duration::from_secs(1));
    assert_eq!(count(&mut w, false), a0, "muted audio is not forwarded");
    assert_eq!(count(&mut w, true), v0, "paused video is not sent");

    let now = w.now;
    w.sfu
        .handle_command(
            now,
            Command::SetPublishMuted {
                participant: VISITOR,
                kind: MediaKind::Audio,
                muted: false,
            },
        )
        .unwrap();
    w.sfu
        .handle_command(
            now,
            Command::SetReceivePaused {
                participant: AGENT,
                kind: MediaKind::Video,
                paused: false,
            },
        )
        .unwrap();
    run_with(&mut w, &mut [&mut c], Duration::from_secs(1));
    assert!(count(&mut w, false) > a0 + 30);
    let agent = w.client(AGENT);
    let video = agent.received_on(agent.video_mid.unwrap());
    assert!(video.len() > v0 + 10);
    assert_eq!(video[v0].payload[1] & 1, 0, "video resumes on a keyframe");
    assert_continuous(&video);
}

#[test]
fn h264_is_forwarded_with_the_subscribers_payload_type() {
    let mut w = call();
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    c.audio = false;
    c.video_codec = str0m::format::Codec::H264;
    c.keyframe_every = 0;
    run_with(&mut w, &mut [&mut c], Duration::from_secs(2));
    let agent = w.client(AGENT);
    let h264_pts: Vec<u8> = agent
        .rtc
        .codec_config()
        .params()
        .iter()
        .filter(|p| p.spec().codec == str0m::format::Codec::H264)
        .map(|p| *p.pt())
        .collect();
    let video = agent.received_on(agent.video_mid.unwrap());
    assert!(video.len() > 40, "{}", video.len());
    assert!(
        video.iter().all(|p| h264_pts.contains(&*p.header.payload_type)),
        "H.264 payload type of the subscriber"
    );
    assert_eq!(video[0].payload[0] & 0x1f, 5, "starts on an IDR");
    assert!(video.iter().all(|p| p.payload[7] == 0xC1));
    assert_continuous(&video);
}

#[test]
fn video_added_mid_call_reaches_the_other_party_after_its_reoffer() {
    let mut w = World::new(World::default_config(), None);
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::audio_only());
    w.join(ROOM, AGENT, Role::Agent, Offer::audio_only());
    w.connect_all();
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    run_with(&mut w, &mut [&mut c], Duration::from_millis(500));

    // The visitor turns the camera on: a re-offer with a sendrecv video m-line.
    let mut add_video = Offer::audio_only();
    add_video.audio = None;
    add_video.video = Some(str0m::media::Direction::SendRecv);
    add_video.channels = false;
    w.reoffer_with(VISITOR, add_video);
    w.run_for(Duration::from_millis(100));
    assert!(w.count_events(|e| matches!(e, SfuEvent::MediaAdded { participant, kind: relaydesk_sfu_core::MediaKind::Video, .. } if *participant == VISITOR)) == 1);
    // The agent has no video m-line yet: the SFU asks it to re-offer with one.
    let asked = w.sfu_events.iter().rev().find_map(|e| match e {
        SfuEvent::RenegotiationNeeded { participant, video, .. } if *participant == AGENT => Some(*video),
        _ => None,
    });
    assert_eq!(asked, Some(1));
    w.reoffer(AGENT, 0, 1);
    run_with(&mut w, &mut [&mut c], Duration::from_secs(1));

    let agent = w.client(AGENT);
    let video: Vec<_> = agent
        .rtp
        .iter()
        .filter(|(_, p)| p.payload.len() == 600)
        .map(|(_, p)| p)
        .collect();
    assert!(video.len() > 20, "agent receives the new video: {}", video.len());
    assert_eq!(video[0].payload[1] & 1, 0, "starting on a keyframe");
    assert!(video.iter().all(|p| p.payload[7] == 0xC1));
    // Audio kept flowing through the renegotiations.
    let audio = agent.received_on(agent.audio_mid.unwrap());
    assert!(audio.len() > 60);
    assert_continuous(&audio);
}

#[test]
fn keyframe_requests_from_many_subscribers_are_coalesced() {
    let mut cfg = World::default_config();
    cfg.max_participants_per_room = 5;
    let mut w = World::new(cfg, None);
    w.create_room(ROOM);
    w.join(ROOM, VISITOR, Role::Visitor, Offer::av());
    let subs: Vec<ParticipantId> = (0..4).map(|i| ParticipantId(100 + i)).collect();
    for s in &subs {
        w.join(ROOM, *s, Role::Agent, Offer::av());
    }
    w.connect_all();
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    c.audio = false;
    c.keyframe_every = 0;
    run_with(&mut w, &mut [&mut c], Duration::from_secs(1));
    let before = w.client(VISITOR).keyframe_requests;

    // Every subscriber sends a PLI every 50 ms for one second: 80 requests.
    let mut sent = 0;
    for _ in 0..20 {
        for s in &subs {
            let client = w.client(*s);
            let mid = client.video_mid.unwrap();
            if let Some(rx) = client.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
                sent += 1;
            }
        }
        run_with(&mut w, &mut [&mut c], Duration::from_millis(50));
    }
    run_with(&mut w, &mut [&mut c], Duration::from_millis(400));
    let upstream = w.client(VISITOR).keyframe_requests - before;
    assert_eq!(sent, 80);
    // Throttle 300 ms over ~1.4 s: a handful reach the publisher, not 80.
    assert!((1..=6).contains(&upstream), "keyframe requests upstream: {upstream}");
}

#[test]
fn participants_report_their_connection_figures_periodically() {
    let mut config = World::default_config();
    config.stats_interval = Some(Duration::from_secs(1));
    let mut w = call_with(config);
    let mut c = Sender::new(VISITOR, w.now, 1, 0xC1);
    let mut a = Sender::new(AGENT, w.now, 1, 0xA9);
    run_with(&mut w, &mut [&mut c, &mut a], Duration::from_millis(3500));
    for who in [VISITOR, AGENT] {
        let reports: Vec<_> = w
            .sfu_events
            .iter()
            .filter_map(|e| match e {
                SfuEvent::ParticipantStats { participant, stats, .. } if *participant == who => Some(*stats),
                _ => None,
            })
            .collect();
        assert!(
            reports.len() >= 2,
            "{who}: {} reports in 3.5 s at 1 s intervals",
            reports.len()
        );
        assert!(
            reports.len() <= 4,
            "{who}: {} reports in 3.5 s at 1 s intervals",
            reports.len()
        );
        let last = reports.last().unwrap();
        assert!(
            last.bytes_in > 0 && last.bytes_out > 0,
            "{who}: media both ways: {last:?}"
        );
        assert!(
            reports
                .windows(2)
                .all(|p| p[1].bytes_in >= p[0].bytes_in && p[1].bytes_out >= p[0].bytes_out),
            "{who}: counters only grow"
        );
        assert!(last.egress_loss_ppm.unwrap_or(0) <= 1_000_000);
    }
}

/// Packets in the frame of `frame_spread`: 120 kB, a large keyframe.
const FRAME_PACKETS: u64 = 100;

/// How many packets of a `FRAME_PACKETS` video frame the visitor sends at one instant reach the agent, and
/// over how long, on an SFU that paces forwarded video or not.
fn frame_spread(pace_video: bool) -> (usize, Duration) {
    let mut cfg = World::default_config();
    cfg.pace_video = pace_video;
    let mut w = call_with(cfg);
    let mut c = Sender::new(VISITOR, w.now, 100, 0xC1);
    c.audio = false;
    run_with(&mut w, &mut [&mut c], Duration::from_millis(500));

    // One big frame, written at one instant (the publisher's own sending is not paced in this harness).
    let i = w.clients.iter().position(|cl| cl.id == VISITOR).unwrap();
    let (mid, pt, now) = (w.clients[i].video_mid.unwrap(), w.clients[i].pt(Codec::Vp8), w.now);
    for k in 0..FRAME_PACKETS {
        let payload = vp8_payload(false, c.frame, 1200);
        w.clients[i].write(
            mid,
            pt,
            c.video_seq + k,
            c.video_ts,
            now,
            payload,
            k == FRAME_PACKETS - 1,
        );
    }
    w.drain_client(i);
    w.run_for(Duration::from_millis(500));

    let agent = w.client(AGENT);
    let times: Vec<_> = agent
        .received_on(agent.video_mid.unwrap())
        .iter()
        .filter(|p| p.payload.len() == 1200)
        .map(|p| p.timestamp)
        .collect();
    let (first, last) = (times.iter().min().copied(), times.iter().max().copied());
    (times.len(), last.zip(first).map_or(Duration::MAX, |(l, f)| l - f))
}

#[test]
fn forwarded_video_leaves_as_it_came_unless_paced() {
    let (n, spread) = frame_spread(false);
    assert_eq!(n, FRAME_PACKETS as usize, "the whole frame is forwarded");
    // The network adds the same latency to each packet: any spread is the SFU's.
    assert!(
        spread < Duration::from_millis(1),
        "unpaced frame spread over {spread:?}"
    );

    // Paced at the estimate, whatever str0m's pacer lets out in one burst (40 ms at the pacing rate), the rest
    // of the frame follows over tens of milliseconds.
    let (n, spread) = frame_spread(true);
    assert_eq!(n, FRAME_PACKETS as usize, "the whole frame is forwarded when paced too");
    assert!(
        spread > Duration::from_millis(10),
        "paced frame spread over only {spread:?}"
    );
}
