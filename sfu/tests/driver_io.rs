//! The driver's IO on real UDP sockets on loopback, with a small engine of the test's own: echo, bursts
//! (the GSO path), timers, commands, several shards, bounded shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use relaydesk_sfu::core::Transport;
use relaydesk_sfu::{
    AdoptError, CommandError, Driver, DriverConfig, Engine, EngineOutput, Outgoing, SfuHandle, TcpAdoption,
};

#[derive(Debug)]
enum Cmd {
    /// Send `count` datagrams of `size` bytes to `to`, the last one `last` bytes long.
    Burst {
        to: SocketAddr,
        count: usize,
        size: usize,
        last: usize,
    },
    /// Send one 160-byte datagram to each address (audio fan-out: nothing to coalesce).
    Fanout(Vec<SocketAddr>),
    /// Emit `Ev::Tick` once `after` has passed.
    TickAfter(Duration),
    /// Send `count` frames of `size` bytes over the ICE-TCP connection to `to`.
    TcpFlood { to: SocketAddr, count: usize, size: usize },
    /// Refused with an error.
    Refuse,
}

#[derive(Debug, PartialEq)]
enum Ev {
    Echoed(usize),
    Tick,
}

/// Echoes each datagram back to its sender, prefixed with the shard index.
struct Echo {
    shard: u8,
    out: Vec<Outgoing>,
    events: Vec<Ev>,
    tick_at: Option<Instant>,
}

impl Engine for Echo {
    type Command = Cmd;
    type Reply = usize;
    type Error = &'static str;
    type Event = Ev;

    fn handle_datagram(&mut self, _now: Instant, proto: Transport, from: SocketAddr, _to: SocketAddr, data: &[u8]) {
        let mut contents = vec![self.shard];
        contents.extend_from_slice(data);
        self.out.push(Outgoing {
            proto,
            destination: from,
            contents,
        });
        self.events.push(Ev::Echoed(data.len()));
    }

    fn handle_command(&mut self, now: Instant, command: Cmd) -> Result<usize, &'static str> {
        match command {
            Cmd::Burst { to, count, size, last } => {
                for i in 0..count {
                    let len = if i + 1 == count { last } else { size };
                    let mut contents = vec![(i % 251) as u8; len];
                    contents[0] = i as u8;
                    self.out.push(Outgoing {
                        proto: Transport::Udp,
                        destination: to,
                        contents,
                    });
                }
                Ok(count)
            }
            Cmd::Fanout(to) => {
                for (i, destination) in to.iter().enumerate() {
                    self.out.push(Outgoing {
                        proto: Transport::Udp,
                        destination: *destination,
                        contents: vec![i as u8; 160],
                    });
                }
                Ok(to.len())
            }
            Cmd::TcpFlood { to, count, size } => {
                for i in 0..count {
                    self.out.push(Outgoing {
                        proto: Transport::Tcp,
                        destination: to,
                        contents: vec![i as u8; size],
                    });
                }
                Ok(count)
            }
            Cmd::TickAfter(d) => {
                self.tick_at = Some(now + d);
                Ok(0)
            }
            Cmd::Refuse => Err("refused"),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.tick_at.is_some_and(|t| t <= now) {
            self.tick_at = None;
            self.events.push(Ev::Tick);
        }
    }

    /// Shard `i` owns the ICE ufrag `srv<i>`.
    fn owns_ufrag(&self, ufrag: &str) -> bool {
        ufrag == format!("srv{}", self.shard)
    }

    fn poll_output(&mut self) -> EngineOutput<Ev> {
        if !self.out.is_empty() {
            return EngineOutput::Transmit(self.out.remove(0));
        }
        if let Some(ev) = self.events.pop() {
            return EngineOutput::Event(ev);
        }
        EngineOutput::Timeout(self.tick_at)
    }
}

fn start(shards: usize) -> (SfuHandle<Echo>, relaydesk_sfu::EventReceiver<Ev>) {
    let config = DriverConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), shards);
    Driver::start(&config, |i, _addr| Echo {
        shard: i as u8,
        out: Vec::new(),
        events: Vec::new(),
        tick_at: None,
    })
    .unwrap()
}

/// Waits for the next event, at most 10 s.
fn next_event(rx: &mut relaydesk_sfu::EventReceiver<Ev>) -> relaydesk_sfu::ShardEvent<Ev> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
        .expect("event within 10 s")
        .expect("event channel open")
}

/// Waits (bounded) until the shards' counters satisfy `cond`: the counters are updated after the kernel
/// accepted a send, which can be a moment after the peer already read the datagram.
fn wait_stats(
    handle: &SfuHandle<Echo>,
    cond: impl Fn(&[relaydesk_sfu::ShardStats]) -> bool,
) -> Vec<relaydesk_sfu::ShardStats> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = handle.stats();
        if cond(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::yield_now();
    }
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn echoes_on_every_shard() {
    let (handle, mut events) = start(3);
    assert_eq!(handle.shard_count(), 3);
    let sock = client();
    for shard in 0..3 {
        let addr = handle.local_addr(shard).unwrap();
        assert_eq!(handle.announced_addr(shard), Some(addr));
        for i in 0..50u8 {
            sock.send_to(&[i, 1, 2, 3], addr).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(from, addr);
            assert_eq!(&buf[..n], &[shard as u8, i, 1, 2, 3]);
        }
    }
    let mut echoed = 0;
    while echoed < 150 {
        let ev = next_event(&mut events);
        assert_eq!(ev.event, Ev::Echoed(4));
        echoed += 1;
    }
    let stats = wait_stats(&handle, |st| st.iter().all(|s| s.packets_out == 50));
    for s in &stats {
        assert_eq!(s.packets_in, 50);
        assert_eq!(s.packets_out, 50);
        assert_eq!(s.bytes_in, 200);
        assert_eq!(s.bytes_out, 250);
    }
    handle.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn bursts_arrive_whole_and_in_order() {
    let (handle, _events) = start(1);
    let sock = client();
    let to = sock.local_addr().unwrap();
    // A video frame: 20 packets of 1200 bytes and a short last one, all to one destination.
    let sent = handle
        .command_blocking(
            0,
            Cmd::Burst {
                to,
                count: 21,
                size: 1200,
                last: 300,
            },
        )
        .unwrap();
    assert_eq!(sent, 21);
    for i in 0..21usize {
        let mut buf = [0u8; 2048];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(n, if i == 20 { 300 } else { 1200 }, "datagram {i}");
        assert_eq!(buf[0], i as u8, "datagram order");
    }
    let stats = wait_stats(&handle, |st| st[0].packets_out == 21)[0];
    assert_eq!(stats.packets_out, 21);
    assert_eq!(stats.bytes_out, 20 * 1200 + 300);
    if handle.gso_segments(0).unwrap() > 1 {
        assert!(
            stats.gso_sends >= 1,
            "a frame to one destination leaves as GSO sends: {stats:?}"
        );
        assert!(stats.gso_sends < 21);
    }
    handle.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn fanout_to_many_peers_arrives_everywhere() {
    let (handle, _events) = start(1);
    let peers: Vec<UdpSocket> = (0..40).map(|_| client()).collect();
    let to: Vec<SocketAddr> = peers.iter().map(|p| p.local_addr().unwrap()).collect();
    assert_eq!(handle.command_blocking(0, Cmd::Fanout(to.clone())).unwrap(), 40);
    for (i, peer) in peers.iter().enumerate() {
        let mut buf = [0u8; 512];
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(n, 160);
        // Sorted by destination before sending: the payload says which entry of the command it was.
        let entry = to.iter().position(|a| *a == peer.local_addr().unwrap()).unwrap();
        assert_eq!(buf[0], entry as u8, "peer {i} got its own datagram");
    }
    let stats = wait_stats(&handle, |st| st[0].packets_out == 40)[0];
    assert_eq!(stats.packets_out, 40);
    assert!(
        stats.mmsg_sends >= 2,
        "40 datagrams to 40 peers leave in sendmmsg batches: {stats:?}"
    );
    assert_eq!(stats.gso_sends, 0);
    handle.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn timers_fire_and_commands_report_errors() {
    let (handle, mut events) = start(2);
    handle
        .command_blocking(1, Cmd::TickAfter(Duration::from_millis(20)))
        .unwrap();
    let ev = next_event(&mut events);
    assert_eq!((ev.shard, ev.event), (1, Ev::Tick));
    assert!(matches!(
        handle.command_blocking(0, Cmd::Refuse),
        Err(CommandError::Engine("refused"))
    ));
    assert!(matches!(
        handle.command_blocking(7, Cmd::Refuse),
        Err(CommandError::NoSuchShard(7))
    ));
    handle.shutdown(Duration::from_secs(5)).unwrap();
    // After shutdown, commands fail cleanly and a second shutdown is harmless.
    assert!(matches!(
        handle.command_blocking(0, Cmd::Refuse),
        Err(CommandError::ShardStopped)
    ));
    handle.shutdown(Duration::from_secs(1)).unwrap();
}

#[test]
fn garbage_and_oversized_datagrams_are_survived() {
    let (handle, _events) = start(1);
    let addr = handle.local_addr(0).unwrap();
    let sock = client();
    // Oversized (beyond MTU) and empty datagrams must not stop the shard; empty ones are ignored.
    sock.send_to(&vec![0xAB; 9000], addr).unwrap();
    sock.send_to(&[], addr).unwrap();
    sock.send_to(&[9, 9], addr).unwrap();
    let mut buf = [0u8; 16_384];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(n, 9001, "the large datagram comes back whole, not truncated");
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0, 9, 9]);
    handle.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn shard_for_is_stable_and_in_range() {
    let (handle, _events) = start(3);
    for key in 0..1000u64 {
        let s = handle.shard_for(key);
        assert!(s < 3);
        assert_eq!(s, handle.shard_for(key));
    }
    let used: std::collections::HashSet<usize> = (0..100u64).map(|k| handle.shard_for(k)).collect();
    assert_eq!(used.len(), 3, "keys spread over every shard");
    handle.shutdown(Duration::from_secs(5)).unwrap();
}

/// A STUN Binding request whose USERNAME is `user`.
fn stun_request(user: &[u8]) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
    attr.extend_from_slice(user);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&[9; 12]);
    m.extend_from_slice(&attr);
    m
}

/// A connected pair on loopback: (the client's end, the server's end as a listener would hand it over).
fn tcp_pair() -> (TcpStream, TcpAdoption) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (server, peer) = listener.accept().unwrap();
    let local = server.local_addr().unwrap();
    let adoption = TcpAdoption {
        stream: server,
        peer,
        local,
        first_frame: Vec::new(),
    };
    (client, adoption)
}

fn adopt(handle: &SfuHandle<Echo>, adoption: TcpAdoption) -> Result<usize, AdoptError> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(handle.adopt_tcp(adoption))
}

fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

#[test]
fn tcp_connections_go_to_the_shard_owning_the_ufrag_and_echo_framed() {
    let (handle, _events) = start(3);
    // The request names shard 2's ufrag: it is served there (the echo carries the shard index).
    let (mut client, mut adoption) = tcp_pair();
    adoption.first_frame = stun_request(b"srv2:cli");
    let first = adoption.first_frame.clone();
    assert_eq!(adopt(&handle, adoption).unwrap(), 2);
    let echo = read_frame(&mut client);
    assert_eq!(echo[0], 2);
    assert_eq!(&echo[1..], &first[..]);

    // Frames split anywhere (a header across two writes, two frames in one) come back whole and in order.
    let mut wire = Vec::new();
    for i in 1..=3u8 {
        wire.extend_from_slice(&frame(&vec![i; 100 * usize::from(i)]));
    }
    for piece in [&wire[..1], &wire[1..150], &wire[150..]] {
        client.write_all(piece).unwrap();
        client.flush().unwrap();
    }
    for i in 1..=3u8 {
        let echo = read_frame(&mut client);
        assert_eq!(echo.len(), 1 + 100 * usize::from(i));
        assert!(echo[1..].iter().all(|b| *b == i));
    }
    // Zero-length frames are skipped, not echoed; the next real frame still is.
    client.write_all(&[0, 0, 0, 0]).unwrap();
    client.write_all(&frame(b"after")).unwrap();
    assert_eq!(&read_frame(&mut client)[1..], b"after");
    let stats = wait_stats(&handle, |st| st[2].tcp_packets_out == 5);
    assert_eq!(stats[2].tcp_opened, 1);
    assert_eq!(stats[2].tcp_packets_in, 5);
    assert_eq!(stats[2].packets_in, 0, "TCP frames are not counted as UDP datagrams");

    // Nobody owns this ufrag, and a frame without a username names nobody: both refused.
    let (_c, mut adoption) = tcp_pair();
    adoption.first_frame = stun_request(b"nobody:cli");
    assert!(matches!(adopt(&handle, adoption), Err(AdoptError::UnknownUser)));
    let (_c, mut adoption) = tcp_pair();
    adoption.first_frame = vec![0x80; 40];
    assert!(matches!(adopt(&handle, adoption), Err(AdoptError::NoUsername)));
    handle.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_slow_tcp_reader_loses_its_own_frames_and_bad_frames_close_only_their_connection() {
    let mut config = DriverConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1);
    config.tcp_backlog_bytes = 64 * 1024;
    config.tcp_send_buffer_bytes = 16 * 1024;
    let (handle, _events) = Driver::start(&config, |i, _addr| Echo {
        shard: i as u8,
        out: Vec::new(),
        events: Vec::new(),
        tick_at: None,
    })
    .unwrap();
    let (mut fast, mut a) = tcp_pair();
    a.first_frame = stun_request(b"srv0:a");
    adopt(&handle, a).unwrap();
    read_frame(&mut fast);
    let (slow, mut b) = tcp_pair();
    let slow_peer = b.peer;
    b.first_frame = stun_request(b"srv0:b");
    adopt(&handle, b).unwrap();

    // 2 MB towards a peer that never reads: the kernel buffers (~150 KB here: the peer's receive window does
    // not grow while it reads nothing) fill, then the 64 KiB backlog, then frames drop.
    let sent = handle
        .command_blocking(
            0,
            Cmd::TcpFlood {
                to: slow_peer,
                count: 2_000,
                size: 1000,
            },
        )
        .unwrap();
    assert_eq!(sent, 2_000);
    // Every frame of the flood (and the two first echoes) is either queued or dropped once the shard is done.
    let stats = wait_stats(&handle, |st| st[0].tcp_packets_out + st[0].tcp_send_dropped >= 2_002);
    assert!(
        stats[0].tcp_send_dropped > 1_000,
        "most of the flood dropped: {stats:?}"
    );
    // The shard is not stuck behind the slow reader: the other connection and UDP are served at once.
    fast.write_all(&frame(b"still here")).unwrap();
    assert_eq!(&read_frame(&mut fast)[1..], b"still here");
    let sock = client();
    sock.send_to(b"udp", handle.local_addr(0).unwrap()).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0, b'u', b'd', b'p']);

    // A frame over the limit closes that connection (the peer reads EOF) and no other.
    fast.write_all(&[0xFF, 0xFF, 1, 2, 3]).unwrap();
    let mut rest = Vec::new();
    let _ = fast.read_to_end(&mut rest);
    let stats = wait_stats(&handle, |st| st[0].tcp_bad_frames == 1 && st[0].tcp_closed == 1);
    assert_eq!(stats[0].tcp_bad_frames, 1);
    assert_eq!(stats[0].tcp_closed, 1);
    sock.send_to(b"udp", handle.local_addr(0).unwrap()).unwrap();
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(n, 4);
    drop(slow);
    handle.shutdown(Duration::from_secs(5)).unwrap();
}
