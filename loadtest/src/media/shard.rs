//! A shard: the thread that drives its peers (sockets, timers, sending, receiving) and publishes their figures.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use sha2::{Digest, Sha256};
use str0m::format::Codec;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use super::driven::{Driven, pump_file, send_audio, send_video};
use super::files::{FILE_CHUNK, FILE_LABEL, FILE_START_DELAY, FileIn, FileOut, file_bytes};
use super::link::{Link, TcpLink};
use super::snapshot::MediaSnapshot;
use super::{MediaConfig, Peer, ShardCommand, Shared, WAKER, lock};
use crate::stats::{Stamp, micros_since_epoch, record_clamped};

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const TICK: Duration = Duration::from_millis(1);

/// One shard thread's state: its poll, its peers and their figures.
pub(super) struct Shard {
    poll: Poll,
    rx: Receiver<ShardCommand>,
    shared: Arc<Mutex<Shared>>,
    config: MediaConfig,
    peers: Vec<Driven>,
    local: MediaSnapshot,
    /// Figures of the peers removed so far (their streams are gone, their counts are not).
    retired: Retired,
    buf: Vec<u8>,
}

/// Cumulative figures of removed peers.
#[derive(Default)]
struct Retired {
    expected: u64,
    lost: u64,
    nacks_sent: u64,
    nacks_received: u64,
}

fn pt_of(rtc: &Rtc, codec: Codec) -> Option<u8> {
    rtc.codec_config().find(|p| p.spec().codec == codec).map(|p| *p.pt())
}

impl Shard {
    pub(super) fn new(
        poll: Poll,
        rx: Receiver<ShardCommand>,
        shared: Arc<Mutex<Shared>>,
        config: MediaConfig,
    ) -> Shard {
        Shard {
            poll,
            rx,
            shared,
            config,
            peers: Vec::new(),
            local: MediaSnapshot::empty(),
            retired: Retired::default(),
            buf: vec![0u8; 2048],
        }
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        loop {
            let mut stop = false;
            while let Ok(cmd) = self.rx.try_recv() {
                match cmd {
                    ShardCommand::Add(p) => self.add(*p),
                    ShardCommand::Remove(addr) => self.remove(addr),
                    ShardCommand::Stop => stop = true,
                }
            }
            if stop {
                self.flush();
                return;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(TICK))
                && e.kind() != ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "media shard poll failed");
                self.flush();
                return;
            }
            let now = Instant::now();
            for ev in events.iter() {
                let t = ev.token();
                if t != WAKER && t.0 < self.peers.len() {
                    self.read(t.0, now);
                }
            }
            let now = Instant::now();
            for i in 0..self.peers.len() {
                self.tick(i, now);
            }
            if now >= next_flush {
                self.flush();
                next_flush = now + FLUSH_EVERY;
            }
        }
    }

    fn add(&mut self, p: Peer) {
        let idx = self.peers.len();
        let link = match p.socket {
            Some(socket) => {
                let mut socket = UdpSocket::from_std(socket);
                if let Err(e) = self
                    .poll
                    .registry()
                    .register(&mut socket, Token(idx), Interest::READABLE)
                {
                    tracing::warn!(error = %e, "could not register a peer socket");
                    self.local.failed += 1;
                    return;
                }
                Link::Udp(socket)
            }
            None => Link::Tcp(TcpLink::default()),
        };
        let now = Instant::now();
        let audio = p.audio_mid.and_then(|m| pt_of(&p.rtc, Codec::Opus).map(|pt| (m, pt)));
        let video = p.video_mid.and_then(|m| pt_of(&p.rtc, Codec::Vp8).map(|pt| (m, pt)));
        self.local.peers += 1;
        self.peers.push(Driven {
            rtc: p.rtc,
            link,
            local: p.local,
            audio,
            video,
            sends: p.sends,
            created: p.created,
            timeout: now,
            next_audio: now,
            next_video: now,
            last_key: now,
            force_key: true,
            audio_seq: 1,
            video_seq: 1,
            frame: 0,
            connected: false,
            failed: false,
            first_media: false,
            rx: HashMap::new(),
            nacks_sent: HashMap::new(),
            nacks_received: HashMap::new(),
            file_send: p.file_send,
            file_chan: None,
            file_out: None,
            file_in: None,
        });
        self.drain(idx, now);
    }

    fn remove(&mut self, addr: SocketAddr) {
        let Some(i) = self.peers.iter().position(|p| p.local == addr) else {
            return;
        };
        let mut p = self.peers.swap_remove(i);
        p.link.deregister(self.poll.registry());
        for st in p.rx.values() {
            self.retired.expected += st.seq.expected();
            self.retired.lost += st.seq.lost();
        }
        self.retired.nacks_sent += p.nacks_sent.values().sum::<u64>();
        self.retired.nacks_received += p.nacks_received.values().sum::<u64>();
        // The peer that took its place answers to its new index.
        if let Some(moved) = self.peers.get_mut(i)
            && let Err(e) = moved.link.reregister(self.poll.registry(), Token(i))
        {
            tracing::warn!(error = %e, "could not re-register a peer socket");
        }
    }

    fn read(&mut self, i: usize, now: Instant) {
        if let Some(Driven {
            link: Link::Tcp(link),
            rtc,
            local,
            failed: false,
            ..
        }) = self.peers.get_mut(i)
        {
            link.write();
            let frames = link.read(&mut self.buf);
            let (Some(source), destination) = (link.remote, *local) else {
                return;
            };
            for frame in frames {
                let Ok(contents) = frame.as_slice().try_into() else {
                    continue;
                };
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Tcp,
                        source,
                        destination,
                        contents,
                    },
                );
                if let Err(e) = rtc.handle_input(input) {
                    tracing::debug!(error = %e, "peer input failed");
                }
            }
            self.drain(i, now);
            return;
        }
        loop {
            let Some(p) = self.peers.get_mut(i) else { return };
            if p.failed {
                return;
            }
            let Link::Udp(socket) = &p.link else { return };
            match socket.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let Ok(contents) = self.buf[..n].try_into() else {
                        continue;
                    };
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: from,
                            destination: p.local,
                            contents,
                        },
                    );
                    if p.rtc.accepts(&input) {
                        if let Err(e) = p.rtc.handle_input(input) {
                            tracing::debug!(error = %e, "peer input failed");
                        }
                        self.drain(i, now);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP port unreachable and the like: the server is gone or not there yet.
                Err(_) => return,
            }
        }
    }

    fn tick(&mut self, i: usize, now: Instant) {
        let config = self.config;
        let Some(p) = self.peers.get_mut(i) else { return };
        if p.failed {
            return;
        }
        let mut wrote = false;
        if p.connected && p.sends {
            if config.audio
                && let Some((mid, pt)) = p.audio
                && now >= p.next_audio
            {
                record_clamped(&mut self.local.send_lateness, (now - p.next_audio).as_micros() as u64);
                send_audio(p, mid, pt, now, config.audio_bytes);
                self.local.packets_sent += 1;
                wrote = true;
                p.next_audio += Duration::from_millis(20);
                if p.next_audio < now {
                    // More than a whole period late: skip rather than burst.
                    p.next_audio = now + Duration::from_millis(20);
                }
            }
            if config.video
                && let Some((mid, pt)) = p.video
                && now >= p.next_video
            {
                record_clamped(&mut self.local.send_lateness, (now - p.next_video).as_micros() as u64);
                let period = Duration::from_micros(1_000_000 / u64::from(config.fps.max(1)));
                let n = send_video(p, mid, pt, now, &config);
                self.local.packets_sent += n;
                wrote |= n > 0;
                p.next_video += period;
                if p.next_video < now {
                    p.next_video = now + period;
                }
            }
        }
        if p.file_out.as_ref().is_some_and(|f| !f.done) {
            pump_file(p, &mut self.local, now);
        }
        // str0m sends what was just written only after a timeout has seen it queued: handled now, not at the
        // next tick, so a packet leaves when its stamp says.
        if (now >= p.timeout || wrote)
            && let Err(e) = p.rtc.handle_input(Input::Timeout(now))
        {
            tracing::debug!(error = %e, "peer timeout failed");
        }
        self.drain(i, now);
    }

    fn drain(&mut self, i: usize, now: Instant) {
        let Some(p) = self.peers.get_mut(i) else { return };
        loop {
            if !p.rtc.is_alive() {
                if !p.failed {
                    p.failed = true;
                    self.local.failed += 1;
                }
                return;
            }
            let out = match p.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(error = %e, "peer failed");
                    if !p.failed {
                        p.failed = true;
                        self.local.failed += 1;
                    }
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    p.timeout = t;
                    return;
                }
                Output::Transmit(t) => match &mut p.link {
                    Link::Udp(socket) => match socket.send_to(&t.contents, t.destination) {
                        Ok(_) => {}
                        Err(_) => self.local.send_drops += 1,
                    },
                    Link::Tcp(link) => {
                        if !link.send(self.poll.registry(), Token(i), t.destination, &t.contents) {
                            self.local.send_drops += 1;
                        }
                    }
                },
                Output::Event(ev) => match ev {
                    Event::Connected if !p.connected => {
                        p.connected = true;
                        self.local.connected += 1;
                        record_clamped(&mut self.local.connect_time, (now - p.created).as_micros() as u64);
                        p.next_audio = now;
                        p.next_video = now;
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) if !p.failed => {
                        p.failed = true;
                        self.local.failed += 1;
                    }
                    Event::RtpPacket(pkt) => {
                        if let Some(stamp) = Stamp::find(&pkt.payload) {
                            let recv_us = micros_since_epoch(now);
                            let st = p.rx.entry(stamp.kind).or_default();
                            let lat = st.record(&stamp, recv_us, pkt.payload.len());
                            record_clamped(&mut self.local.latency, lat.max(1));
                            self.local.packets_received += 1;
                            self.local.bytes_received += pkt.payload.len() as u64;
                            if !p.first_media {
                                p.first_media = true;
                                self.local.receiving += 1;
                                record_clamped(&mut self.local.first_media, (now - p.created).as_micros() as u64);
                            }
                        }
                    }
                    Event::KeyframeRequest(_) => {
                        p.force_key = true;
                        self.local.keyframe_requests += 1;
                    }
                    Event::ChannelOpen(id, label) if label == FILE_LABEL => {
                        p.file_chan = Some(id);
                        if let Some(ch) = p.rtc.channel(id).as_mut() {
                            ch.set_buffered_amount_low_threshold(4 * FILE_CHUNK);
                        }
                        if let Some(size) = p.file_send.take() {
                            let data = file_bytes(size, p.local.port().into());
                            let sha = hex::encode(Sha256::digest(&data));
                            let header = serde_json::json!({"type": "header", "name": "loadtest.bin", "size": size,
                                "mime": "application/octet-stream", "sha256": sha});
                            // The server relays a file only to members whose file channel is open: give the
                            // other party's call a moment to come up first.
                            p.file_out = Some(FileOut {
                                data,
                                offset: 0,
                                header: Some(header.to_string()),
                                start_at: now + FILE_START_DELAY,
                                done: false,
                            });
                        }
                    }
                    Event::ChannelBufferedAmountLow(id) if Some(id) == p.file_chan => {
                        pump_file(p, &mut self.local, now)
                    }
                    Event::ChannelData(cd) if Some(cd.id) == p.file_chan => {
                        if cd.binary {
                            if let Some(f) = p.file_in.as_mut() {
                                f.hasher.update(&cd.data);
                                f.got += cd.data.len() as u64;
                            }
                        } else {
                            let v: serde_json::Value = serde_json::from_slice(&cd.data).unwrap_or_default();
                            match v["type"].as_str() {
                                Some("header") => {
                                    p.file_in = Some(FileIn {
                                        size: v["size"].as_u64().unwrap_or(u64::MAX),
                                        sha256: v["sha256"].as_str().unwrap_or("").to_string(),
                                        got: 0,
                                        hasher: Sha256::new(),
                                    });
                                }
                                Some("end") => {
                                    let ok = p.file_in.take().is_some_and(|f| {
                                        f.got == f.size && hex::encode(f.hasher.finalize()) == f.sha256
                                    });
                                    if ok {
                                        self.local.files_ok += 1;
                                    } else {
                                        self.local.file_failures += 1;
                                    }
                                }
                                Some("abort") | Some("error") => {
                                    p.file_in = None;
                                    self.local.file_failures += 1;
                                }
                                _ => {}
                            }
                        }
                    }
                    Event::MediaIngressStats(s) => {
                        p.nacks_sent.insert(s.mid, s.nacks);
                    }
                    Event::MediaEgressStats(s) => {
                        p.nacks_received.insert(s.mid, s.nacks);
                    }
                    _ => {}
                },
            }
        }
    }

    fn flush(&mut self) {
        let mut expected = self.retired.expected;
        let mut lost = self.retired.lost;
        let mut streams = 0;
        let mut jitter = 0.0;
        let mut nacks_sent = self.retired.nacks_sent;
        let mut nacks_received = self.retired.nacks_received;
        for p in &self.peers {
            for st in p.rx.values() {
                expected += st.seq.expected();
                lost += st.seq.lost();
                streams += 1;
                jitter += st.jitter.micros() / 1000.0;
            }
            nacks_sent += p.nacks_sent.values().sum::<u64>();
            nacks_received += p.nacks_received.values().sum::<u64>();
        }
        self.local.expected = expected;
        self.local.lost = lost;
        self.local.nacks_sent = nacks_sent;
        self.local.nacks_received = nacks_received;
        let mut g = lock(&self.shared);
        g.totals = self.local.clone();
        g.streams = streams;
        g.jitter_sum_ms = jitter;
    }
}
