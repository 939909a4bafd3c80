//! The driver running the real forwarding core on real UDP sockets (loopback), with real str0m clients:
//! two rooms on two shards, audio forwarded within each room and never across rooms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relaydesk_sfu::core::{Command, ParticipantId, Reply, Role, RoomId, Sfu, SfuConfig};
use relaydesk_sfu::{CoreHandle, Driver, DriverConfig};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};

struct Client {
    socket: UdpSocket,
    addr: SocketAddr,
    rtc: Rtc,
    mid: Mid,
    timeout: Instant,
    connected: bool,
    received: Vec<u8>,
    seq: u64,
    tag: u8,
}

impl Client {
    /// Offers one send-receive audio m-line to the SFU on `shard`.
    fn join(handle: &CoreHandle, shard: usize, room: RoomId, id: u64, role: Role, tag: u8) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let now = Instant::now();
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let reply = handle
            .command_blocking(
                shard,
                Command::AddParticipant {
                    room,
                    participant: ParticipantId(id),
                    role,
                    offer: offer.to_sdp_string(),
                },
            )
            .unwrap();
        let Reply::Answer(answer) = reply else {
            panic!("expected an answer, got {reply:?}")
        };
        let announced = handle.announced_addr(shard).unwrap();
        assert!(
            answer.contains(&announced.port().to_string()),
            "the answer names the shard's port"
        );
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        Client {
            socket,
            addr,
            rtc,
            mid,
            timeout: now,
            connected: false,
            received: Vec::new(),
            seq: 1,
            tag,
        }
    }

    /// Drives the client: reads its socket, fires its timers, sends what str0m wants sent.
    fn step(&mut self, now: Instant) {
        let mut buf = [0u8; 2048];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let receive = Receive {
                        proto: Protocol::Udp,
                        source: from,
                        destination: self.addr,
                        contents: buf[..n].try_into().unwrap(),
                    };
                    self.rtc.handle_input(Input::Receive(now, receive)).unwrap();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client recv: {e}"),
            }
        }
        if self.timeout <= now {
            self.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Transmit(t) => {
                    self.socket.send_to(&t.contents, t.destination).unwrap();
                }
                Output::Timeout(t) => {
                    self.timeout = t;
                    break;
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::RtpPacket(p)) => self.received.push(p.payload[0]),
                Output::Event(_) => {}
            }
        }
    }

    fn send_audio(&mut self, now: Instant) {
        let pt = *self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(self.mid, None).unwrap();
        let payload = vec![self.tag; 80];
        let ts = (self.seq as u32).wrapping_mul(960);
        tx.write_rtp(RtpWrite::new(pt.into(), self.seq.into(), ts, now, payload).nackable(true));
        self.seq += 1;
    }
}

fn run_until(clients: &mut [Client], limit: Duration, mut done: impl FnMut(&mut [Client], Instant) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let now = Instant::now();
        for c in clients.iter_mut() {
            c.step(now);
        }
        if done(clients, now) {
            return;
        }
        assert!(now < deadline, "condition not met within {limit:?}");
        // Pace the single-threaded client loop; correctness never depends on this pause.
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn rooms_on_two_shards_forward_audio_within_each_room() {
    let config = DriverConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2);
    let (handle, _events) = Driver::start(&config, |_, addr| Sfu::new(SfuConfig::new(vec![addr]))).unwrap();
    let rooms = [(RoomId(1), 0usize), (RoomId(2), 1usize)];
    let mut clients = Vec::new();
    for (i, (room, shard)) in rooms.iter().enumerate() {
        handle
            .command_blocking(*shard, Command::CreateRoom { room: *room })
            .unwrap();
        let base = (i as u64) * 10;
        clients.push(Client::join(
            &handle,
            *shard,
            *room,
            base + 1,
            Role::Visitor,
            0xC0 + i as u8,
        ));
        clients.push(Client::join(
            &handle,
            *shard,
            *room,
            base + 2,
            Role::Agent,
            0xA0 + i as u8,
        ));
    }
    run_until(&mut clients, Duration::from_secs(10), |cs, _| {
        cs.iter().all(|c| c.connected)
    });

    let mut next_send = Instant::now();
    run_until(&mut clients, Duration::from_secs(10), |cs, now| {
        if now >= next_send {
            for c in cs.iter_mut() {
                c.send_audio(now);
            }
            next_send = now + Duration::from_millis(20);
        }
        cs.iter().all(|c| c.received.len() >= 25)
    });

    // In each room, each party hears only the other party of that room.
    for (i, pair) in clients.chunks(2).enumerate() {
        let (visitor, agent) = (&pair[0], &pair[1]);
        assert!(
            visitor.received.iter().all(|&t| t == 0xA0 + i as u8),
            "room {i}: visitor hears its agent only"
        );
        assert!(
            agent.received.iter().all(|&t| t == 0xC0 + i as u8),
            "room {i}: agent hears its visitor only"
        );
    }
    for (shard, stats) in handle.stats().iter().enumerate() {
        assert!(stats.packets_in > 50, "shard {shard} received: {stats:?}");
        assert!(stats.packets_out > 50, "shard {shard} sent: {stats:?}");
    }
    handle.shutdown(Duration::from_secs(5)).unwrap();
}
