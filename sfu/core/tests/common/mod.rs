//! Simulated network, virtual clock and real str0m clients around one `Sfu`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use relaydesk_sfu_core::{
    Command, Event as SfuEvent, Output as SfuOutput, ParticipantId, Reply, Role, RoomId, Sfu, SfuConfig, TextFilter,
};
use str0m::change::{SdpAnswer, SdpApi};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// The one place a test reads the real clock: the virtual clock's origin.
#[allow(clippy::disallowed_methods)]
pub fn start_instant() -> Instant {
    Instant::now()
}

/// Deterministic xorshift64* generator (seeded; no external RNG needed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: f64) -> bool {
        (self.next_u64() % 1_000_000) as f64 / 10_000.0 < percent
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

pub const SERVER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 3478);

pub fn client_addr(n: u64) -> SocketAddr {
    SocketAddr::new(
        std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 1, (n % 250) as u8 + 1)),
        40000 + (n as u16),
    )
}

struct InFlight {
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// Conditions of the link towards one address, on top of the network-wide latency and loss.
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    /// Random loss on this link only (percent).
    pub loss_percent: f64,
    /// A bottleneck (bits per second): datagrams leave one after another at this rate…
    pub rate_bps: Option<u64>,
    /// …and one that would wait longer than this behind the others is dropped (a tail-drop queue).
    pub max_queue: Duration,
}

/// The SSRC and sequence number of an RTP datagram (SRTP leaves the header in the clear); `None` for RTCP,
/// STUN, DTLS.
pub fn rtp_header(data: &[u8]) -> Option<(u32, u16)> {
    if data.len() < 12 || data[0] >> 6 != 2 || (192..=223).contains(&data[1]) {
        return None;
    }
    let seq = u16::from_be_bytes([data[2], data[3]]);
    let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    Some((ssrc, seq))
}

/// A network with one-way latency and random loss, delivering in send order per latency.
pub struct Net {
    pub latency: Duration,
    pub loss_percent: f64,
    /// Per-destination conditions (loss, bottleneck).
    pub links: std::collections::HashMap<SocketAddr, Link>,
    /// Addresses whose path is cut: every datagram from or to them is lost (an outage).
    pub cut: std::collections::HashSet<SocketAddr>,
    /// When each bottlenecked link has sent everything queued on it.
    busy_until: std::collections::HashMap<SocketAddr, Instant>,
    rng: Rng,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: std::collections::HashMap<u64, InFlight>,
    pub sent: u64,
    pub lost: u64,
    /// RTP datagrams dropped on their way to an address: (destination, SSRC, sequence number).
    pub dropped_rtp: Vec<(SocketAddr, u32, u16)>,
    /// RTP datagrams put on the network (lost or not) by (destination, SSRC).
    pub rtp_sent: std::collections::HashMap<(SocketAddr, u32), u64>,
}

impl Net {
    fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.sent += 1;
        let rtp = rtp_header(&data);
        if let Some((ssrc, _)) = rtp {
            *self.rtp_sent.entry((to, ssrc)).or_default() += 1;
        }
        let link = self.links.get(&to).copied().unwrap_or_default();
        let lost = self.cut.contains(&from)
            || self.cut.contains(&to)
            || (self.loss_percent > 0.0 && self.rng.chance(self.loss_percent))
            || (link.loss_percent > 0.0 && self.rng.chance(link.loss_percent));
        let mut leaves = now;
        let mut queue_full = false;
        if let Some(bps) = link.rate_bps.filter(|b| *b > 0) {
            let start = self.busy_until.get(&to).copied().unwrap_or(now).max(now);
            queue_full = start - now > link.max_queue;
            if !lost && !queue_full {
                leaves = start + Duration::from_nanos(data.len() as u64 * 8 * 1_000_000_000 / bps);
                self.busy_until.insert(to, leaves);
            }
        }
        if lost || queue_full {
            self.lost += 1;
            if let Some((ssrc, seq)) = rtp {
                self.dropped_rtp.push((to, ssrc, seq));
            }
            return;
        }
        self.seq += 1;
        self.queue.push(Reverse((leaves + self.latency, self.seq)));
        self.packets.insert(self.seq, InFlight { from, to, data });
    }
    fn next_time(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }
}

/// A str0m client (RTP mode) standing in for a browser.
pub struct Client {
    pub id: ParticipantId,
    pub role: Role,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    pub timeout: Instant,
    pub events: Vec<Event>,
    pub rtp: Vec<(Mid, RtpPacket)>,
    pub audio_mid: Option<Mid>,
    pub video_mid: Option<Mid>,
    pub text: Option<ChannelId>,
    pub file: Option<ChannelId>,
    pub connected: bool,
    pub keyframe_requests: usize,
    /// The SFU's ICE ufrag, from the answer.
    pub server_ufrag: String,
}

impl Client {
    pub fn pt(&self, codec: Codec) -> u8 {
        *self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .expect("codec")
            .pt()
    }

    /// Write one RTP packet on a sending m-line.
    pub fn write(&mut self, mid: Mid, pt: u8, seq: u64, ts: u32, now: Instant, payload: Vec<u8>, marker: bool) {
        let ext = ExtensionValues {
            audio_level: Some(-30),
            voice_activity: Some(true),
            ..Default::default()
        };
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("tx stream");
        tx.write_rtp(
            RtpWrite::new(pt.into(), seq.into(), ts, now, payload)
                .marker(marker)
                .ext_vals(ext)
                .nackable(true),
        );
    }

    /// Write one RTP packet on a simulcast layer.
    pub fn write_rid(&mut self, mid: Mid, rid: &str, pt: u8, seq: u64, ts: u32, now: Instant, payload: Vec<u8>) {
        let mut api = self.rtc.direct_api();
        let tx = api
            .stream_tx_by_mid(mid, Some(rid.into()))
            .expect("simulcast tx stream");
        tx.write_rtp(
            RtpWrite::new(pt.into(), seq.into(), ts, now, payload)
                .marker(true)
                .nackable(true),
        );
    }

    /// RTP received on `mid`.
    pub fn received_on(&self, mid: Mid) -> Vec<&RtpPacket> {
        self.rtp.iter().filter(|(m, _)| *m == mid).map(|(_, p)| p).collect()
    }

    pub fn channel_texts(&self, ch: ChannelId) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelData(d) if d.id == ch && !d.binary => Some(String::from_utf8_lossy(&d.data).into_owned()),
                _ => None,
            })
            .collect()
    }
}

/// The SFU, its clients, the network and the clock.
pub struct World {
    pub now: Instant,
    pub start: Instant,
    pub sfu: Sfu,
    pub sfu_timeout: Option<Instant>,
    pub sfu_events: Vec<SfuEvent>,
    pub clients: Vec<Client>,
    pub net: Net,
    /// Bandwidth estimation for new clients (off by default, as in a plain str0m `Rtc`).
    pub client_bwe_bps: Option<u64>,
    /// Statistics events (`MediaIngressStats`…, in `Client::events`) of new clients (off by default).
    pub client_stats_interval: Option<Duration>,
    /// The local address the SFU is told datagrams arrived on (default: `SERVER`, the announced address).
    pub server_bound_as: SocketAddr,
    /// When set, a copy of every datagram delivered to the SFU (examples/fuzz_corpus.rs).
    pub captured: Option<Vec<Vec<u8>>>,
}

/// What a client puts in its offer.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    pub audio: Option<Direction>,
    pub video: Option<Direction>,
    pub extra_recv_audio: usize,
    pub extra_recv_video: usize,
    pub channels: bool,
    /// Send video as simulcast with these rids (lowest first).
    pub simulcast: &'static [&'static str],
}

impl Offer {
    pub fn av() -> Self {
        Offer {
            audio: Some(Direction::SendRecv),
            video: Some(Direction::SendRecv),
            extra_recv_audio: 0,
            extra_recv_video: 0,
            channels: true,
            simulcast: &[],
        }
    }
    pub fn audio_only() -> Self {
        Offer {
            video: None,
            ..Self::av()
        }
    }
}

impl World {
    pub fn new(config: SfuConfig, filter: Option<Box<dyn TextFilter>>) -> Self {
        let start = start_instant();
        let sfu = match filter {
            Some(f) => Sfu::with_filter(config, f),
            None => Sfu::new(config),
        };
        World {
            now: start,
            start,
            sfu,
            sfu_timeout: None,
            sfu_events: Vec::new(),
            clients: Vec::new(),
            client_bwe_bps: None,
            client_stats_interval: None,
            server_bound_as: SERVER,
            captured: None,
            net: Net {
                latency: Duration::from_millis(10),
                loss_percent: 0.0,
                links: Default::default(),
                cut: Default::default(),
                busy_until: Default::default(),
                dropped_rtp: Vec::new(),
                rtp_sent: Default::default(),
                rng: Rng::new(7),
                seq: 0,
                queue: BinaryHeap::new(),
                packets: Default::default(),
                sent: 0,
                lost: 0,
            },
        }
    }

    pub fn default_config() -> SfuConfig {
        SfuConfig::new(vec![SERVER])
    }

    pub fn client(&mut self, id: ParticipantId) -> &mut Client {
        self.clients.iter_mut().find(|c| c.id == id).expect("client")
    }

    pub fn create_room(&mut self, room: RoomId) {
        self.sfu.handle_command(self.now, Command::CreateRoom { room }).unwrap();
        self.drain_sfu();
    }

    /// Create a client, negotiate it into `room`; returns its index.
    pub fn join(&mut self, room: RoomId, id: ParticipantId, role: Role, offer: Offer) -> usize {
        let addr = client_addr(id.0);
        let mut builder = Rtc::builder().set_rtp_mode(true);
        if let Some(bps) = self.client_bwe_bps {
            builder = builder.enable_bwe(Some(str0m::bwe::Bitrate::bps(bps)));
        }
        let mut rtc = builder.set_stats_interval(self.client_stats_interval).build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut client = Client {
            id,
            role,
            addr,
            rtc,
            timeout: self.now,
            events: Vec::new(),
            rtp: Vec::new(),
            audio_mid: None,
            video_mid: None,
            text: None,
            file: None,
            connected: false,
            keyframe_requests: 0,
            server_ufrag: String::new(),
        };
        let mut api = client.rtc.sdp_api();
        if let Some(d) = offer.audio {
            client.audio_mid = Some(api.add_media(MediaKind::Audio, d, None, None, None));
        }
        if let Some(d) = offer.video {
            let sim = (!offer.simulcast.is_empty()).then(|| {
                let mut s = str0m::media::Simulcast::new();
                for rid in offer.simulcast {
                    s.add_send_layer(str0m::media::SimulcastLayer::new(rid));
                }
                s
            });
            client.video_mid = Some(api.add_media(MediaKind::Video, d, None, None, sim));
        }
        add_recv(&mut api, offer);
        if offer.channels {
            client.text = Some(api.add_channel("text".into()));
            client.file = Some(api.add_channel("file".into()));
        }
        let (sdp, pending) = api.apply().expect("changes");
        let reply = self
            .sfu
            .handle_command(
                self.now,
                Command::AddParticipant {
                    room,
                    participant: id,
                    role,
                    offer: sdp.to_sdp_string(),
                },
            )
            .expect("add participant");
        let Reply::Answer(answer) = reply else {
            panic!("no answer")
        };
        client.server_ufrag = answer
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
            .expect("ufrag in answer")
            .to_string();
        client
            .rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        self.clients.push(client);
        self.drain_sfu();
        let i = self.clients.len() - 1;
        self.drain_client(i);
        i
    }

    /// Re-offer from an existing client with extra receive-only m-lines.
    pub fn reoffer(&mut self, id: ParticipantId, extra_audio: usize, extra_video: usize) {
        self.reoffer_with(
            id,
            Offer {
                audio: None,
                video: None,
                extra_recv_audio: extra_audio,
                extra_recv_video: extra_video,
                channels: false,
                simulcast: &[],
            },
        );
    }

    /// Re-offer from an existing client adding the m-lines described by `offer` (audio/video: new m-lines
    /// with that direction; they become the client's `audio_mid`/`video_mid`).
    pub fn reoffer_with(&mut self, id: ParticipantId, offer: Offer) {
        let now = self.now;
        let c = self.client(id);
        let mut api = c.rtc.sdp_api();
        let mut new_audio = None;
        let mut new_video = None;
        if let Some(d) = offer.audio {
            new_audio = Some(api.add_media(MediaKind::Audio, d, None, None, None));
        }
        if let Some(d) = offer.video {
            new_video = Some(api.add_media(MediaKind::Video, d, None, None, None));
        }
        add_recv(&mut api, offer);
        let (sdp, pending) = api.apply().expect("changes");
        if new_audio.is_some() {
            c.audio_mid = new_audio;
        }
        if new_video.is_some() {
            c.video_mid = new_video;
        }
        let reply = self
            .sfu
            .handle_command(
                now,
                Command::Renegotiate {
                    participant: id,
                    offer: sdp.to_sdp_string(),
                },
            )
            .expect("renegotiate");
        let Reply::Answer(answer) = reply else {
            panic!("no answer")
        };
        let c = self.client(id);
        c.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        self.drain_sfu();
        let i = self.clients.iter().position(|c| c.id == id).unwrap();
        self.drain_client(i);
    }

    pub fn leave(&mut self, id: ParticipantId) {
        self.sfu
            .handle_command(self.now, Command::RemoveParticipant { participant: id })
            .unwrap();
        self.clients.retain(|c| c.id != id);
        self.drain_sfu();
    }

    pub fn drain_sfu(&mut self) {
        for _ in 0..1_000_000 {
            match self.sfu.poll_output() {
                SfuOutput::Transmit(t) => self.net.send(self.now, t.source, t.destination, t.contents),
                SfuOutput::Event(e) => self.sfu_events.push(e),
                SfuOutput::Timeout(t) => {
                    self.sfu_timeout = t;
                    return;
                }
            }
        }
        panic!("sfu never returned a timeout");
    }

    /// Put a datagram on the network now (benchmarks that poll the SFU themselves).
    pub fn net_send(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.net.send(self.now, from, to, data);
    }

    /// Poll a client and return its datagrams instead of putting them on the network (benchmarks).
    pub fn take_client_transmits(&mut self, i: usize, out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
        let c = &mut self.clients[i];
        for _ in 0..1_000_000 {
            match c.rtc.poll_output().expect("client poll") {
                Output::Transmit(t) => out.push((t.source, t.destination, t.contents.into())),
                Output::Timeout(t) => {
                    c.timeout = t;
                    return;
                }
                Output::Event(_) => {}
            }
        }
    }

    pub fn drain_client(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.clients[i];
        for _ in 0..1_000_000 {
            match c.rtc.poll_output().expect("client poll") {
                Output::Transmit(t) => {
                    self.net.send(now, t.source, t.destination, t.contents.into());
                }
                Output::Timeout(t) => {
                    c.timeout = t;
                    return;
                }
                Output::Event(e) => match e {
                    Event::Connected => c.connected = true,
                    Event::RtpPacket(p) => {
                        let mid = c.rtc.direct_api().stream_rx(&p.header.ssrc).map(|s| s.mid());
                        if let Some(mid) = mid {
                            c.rtp.push((mid, p));
                        }
                    }
                    Event::KeyframeRequest(_) => c.keyframe_requests += 1,
                    Event::ChannelOpen(id, label) => {
                        if label == "text" {
                            c.text = Some(id);
                        } else if label == "file" {
                            c.file = Some(id);
                        }
                        c.events.push(Event::ChannelOpen(id, label));
                    }
                    other => c.events.push(other),
                },
            }
        }
        panic!("client never returned a timeout");
    }

    fn drain_all(&mut self) {
        self.drain_sfu();
        for i in 0..self.clients.len() {
            self.drain_client(i);
        }
    }

    /// Advance the virtual clock by `d`, delivering packets and firing timers in time order.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.drain_all();
        let mut same = 0u32;
        for _ in 0..10_000_000 {
            let mut next = end;
            if let Some(t) = self.sfu_timeout {
                next = next.min(t);
            }
            for c in &self.clients {
                next = next.min(c.timeout);
            }
            if let Some(t) = self.net.next_time() {
                next = next.min(t);
            }
            if next <= self.now {
                same += 1;
                if same > 1000 {
                    // A timer stuck at "now": nudge the clock as str0m's own test harness does.
                    next = self.now + Duration::from_millis(1);
                    same = 0;
                }
            } else {
                same = 0;
            }
            self.now = self.now.max(next);
            // Deliver due packets.
            while let Some(Reverse((t, seq))) = self.net.queue.peek().copied() {
                if t > self.now {
                    break;
                }
                self.net.queue.pop();
                let Some(p) = self.net.packets.remove(&seq) else {
                    continue;
                };
                if p.to == SERVER {
                    if let Some(c) = self.captured.as_mut() {
                        c.push(p.data.clone());
                    }
                    self.sfu
                        .handle_datagram(self.now, p.from, self.server_bound_as, &p.data);
                    self.drain_sfu();
                } else if let Some(i) = self.clients.iter().position(|c| c.addr == p.to) {
                    let c = &mut self.clients[i];
                    let input = Input::Receive(
                        self.now,
                        Receive {
                            proto: Protocol::Udp,
                            source: p.from,
                            destination: p.to,
                            contents: p.data.as_slice().try_into().unwrap(),
                        },
                    );
                    let _ = c.rtc.handle_input(input);
                    self.drain_client(i);
                }
            }
            if self.sfu_timeout.is_some_and(|t| t <= self.now) {
                self.sfu.handle_timeout(self.now);
                self.drain_sfu();
            }
            for i in 0..self.clients.len() {
                if self.clients[i].timeout <= self.now {
                    let now = self.now;
                    self.clients[i].rtc.handle_input(Input::Timeout(now)).unwrap();
                    self.drain_client(i);
                }
            }
            if self.now >= end {
                return;
            }
        }
        panic!("run_for did not reach its end");
    }

    /// Run until all clients are connected (bounded).
    pub fn connect_all(&mut self) {
        for _ in 0..500 {
            if self.clients.iter().all(|c| c.connected) {
                return;
            }
            self.run_for(Duration::from_millis(10));
        }
        panic!("clients did not connect within 5 s of virtual time");
    }

    pub fn count_events(&self, f: impl Fn(&SfuEvent) -> bool) -> usize {
        self.sfu_events.iter().filter(|e| f(e)).count()
    }
}

fn add_recv(api: &mut SdpApi, offer: Offer) {
    for _ in 0..offer.extra_recv_audio {
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    }
    for _ in 0..offer.extra_recv_video {
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    }
}

/// A VP8 payload: descriptor with S=1, PID=0, then a frame header whose P bit says key or delta.
pub fn vp8_payload(key: bool, frame: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.max(8)];
    v[0] = 0x10;
    v[1] = if key { 0x00 } else { 0x01 };
    v[2..6].copy_from_slice(&frame.to_be_bytes());
    v
}

/// An H.264 payload: one NAL unit, IDR (type 5) for a keyframe, non-IDR slice (type 1) otherwise.
pub fn h264_payload(key: bool, frame: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.max(8)];
    v[0] = if key { 0x65 } else { 0x41 };
    v[2..6].copy_from_slice(&frame.to_be_bytes());
    v
}

/// Sends audio (every 20 ms) and video (every 33 ms) from a client; answers keyframe requests.
pub struct Sender {
    pub id: ParticipantId,
    pub audio_seq: u64,
    pub audio_ts: u32,
    pub video_seq: u64,
    pub video_ts: u32,
    pub frame: u32,
    pub next_audio: Instant,
    pub next_video: Instant,
    pub keyframe_every: u32,
    seen_requests: usize,
    pub audio: bool,
    pub video: bool,
    pub tag: u8,
    /// VP8 (default) or H.264.
    pub video_codec: Codec,
}

impl Sender {
    pub fn new(id: ParticipantId, now: Instant, seq_base: u64, tag: u8) -> Self {
        Sender {
            id,
            audio_seq: seq_base,
            audio_ts: 1_000_000,
            video_seq: seq_base,
            video_ts: 2_000_000,
            frame: 0,
            next_audio: now,
            next_video: now,
            keyframe_every: 60,
            seen_requests: 0,
            audio: true,
            video: true,
            tag,
            video_codec: Codec::Vp8,
        }
    }

    /// Write what is due at `w.now`.
    pub fn pump(&mut self, w: &mut World) {
        let now = w.now;
        let Some(i) = w.clients.iter().position(|c| c.id == self.id) else {
            return;
        };
        let c = &mut w.clients[i];
        if self.audio
            && let Some(mid) = c.audio_mid
        {
            let pt = c.pt(Codec::Opus);
            while self.next_audio <= now {
                let mut payload = vec![self.tag; 80];
                payload[1..9].copy_from_slice(&self.audio_seq.to_be_bytes());
                c.write(mid, pt, self.audio_seq, self.audio_ts, now, payload, false);
                self.audio_seq += 1;
                self.audio_ts = self.audio_ts.wrapping_add(960);
                self.next_audio += Duration::from_millis(20);
            }
        }
        if self.video
            && let Some(mid) = c.video_mid
        {
            let pt = c.pt(self.video_codec);
            while self.next_video <= now {
                let requested = c.keyframe_requests > self.seen_requests;
                self.seen_requests = c.keyframe_requests;
                let key = self.frame == 0
                    || requested
                    || (self.keyframe_every > 0 && self.frame.is_multiple_of(self.keyframe_every));
                let mut payload = match self.video_codec {
                    Codec::H264 => h264_payload(key, self.frame, 600),
                    _ => vp8_payload(key, self.frame, 600),
                };
                payload[7] = self.tag;
                c.write(mid, pt, self.video_seq, self.video_ts, now, payload, true);
                self.video_seq += 1;
                self.video_ts = self.video_ts.wrapping_add(3000);
                self.frame += 1;
                self.next_video += Duration::from_millis(33);
            }
        }
        w.drain_client(i);
    }
}

/// Run `d` of virtual time, pumping the senders every 5 ms.
pub fn run_with(w: &mut World, senders: &mut [&mut Sender], d: Duration) {
    let end = w.now + d;
    while w.now < end {
        for s in senders.iter_mut() {
            s.pump(w);
        }
        w.run_for(Duration::from_millis(5));
    }
}
