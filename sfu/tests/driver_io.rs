//! The driver's IO on real UDP sockets on loopback, with a small engine of the test's own: echo, bursts
//! (the GSO path), timers, commands, several shards, bounded shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relaydesk_sfu::{CommandError, Driver, DriverConfig, Engine, EngineOutput, Outgoing, SfuHandle};

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

    fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, _to: SocketAddr, data: &[u8]) {
        let mut contents = vec![self.shard];
        contents.extend_from_slice(data);
        self.out.push(Outgoing {
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
                        destination: to,
                        contents,
                    });
                }
                Ok(count)
            }
            Cmd::Fanout(to) => {
                for (i, destination) in to.iter().enumerate() {
                    self.out.push(Outgoing {
                        destination: *destination,
                        contents: vec![i as u8; 160],
                    });
                }
                Ok(to.len())
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
