//! Driver egress on loopback: the SFU driver's send path beside plain sends of the same packets to the
//! same destinations (the per-datagram floors: one `send_to` per packet, and one `sendmmsg` per batch).
//!
//! Two shapes of traffic, as the forwarding core produces them after draining one receive batch
//! (packets interleaved across subscribers):
//! - `audio_fanout`: 32 small packets to 32 different peers. No two share a destination, so the driver
//!   cannot coalesce per peer; it batches them in one `sendmmsg` and should stay close to that floor.
//! - `video_frames`: 4 peers each receiving an 8-packet frame of 1200-byte packets. The driver groups by
//!   destination and sends each frame as one GSO send, so it should beat the per-datagram floors.
//!
//! Run: `cargo bench --bench sfu_driver`. The sink sockets are drained by a second thread, so the kernel's
//! receive path is as it is in production (on loopback the sender's CPU also pays for delivery).
//! `cargo test --benches` runs each benchmark once and first checks that one batch of each shape leaves
//! the driver whole, in the sends described above, and reaches its sinks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, sendmmsg};
use relaydesk_sfu::Outgoing;
use relaydesk_sfu::bench_support::SendBench;
use relaydesk_sfu::core::Transport;

/// CPU time of the calling thread: what the sender spends, kernel path included, steadier than wall time
/// on a busy host.
fn cpu_now() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Measures `send` for `iters` batches, counting only the sender thread's CPU time.
fn cpu_iter(iters: u64, mut prepare: impl FnMut() -> Vec<Outgoing>, mut send: impl FnMut(Vec<Outgoing>)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let batch = prepare();
        let t0 = cpu_now();
        send(batch);
        total += cpu_now() - t0;
    }
    total
}

struct Sinks {
    addrs: Vec<SocketAddr>,
    /// Bytes received so far, over all sinks.
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sinks {
    fn new(n: usize) -> Self {
        let sockets: Vec<UdpSocket> = (0..n)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let addrs = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&received));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65_536];
            while !flag.load(Ordering::Relaxed) {
                let mut idle = true;
                for s in &sockets {
                    while let Ok(n) = s.recv(&mut buf) {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                        idle = false;
                    }
                }
                if idle {
                    std::thread::yield_now();
                }
            }
        });
        Self {
            addrs,
            received,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The packets of one batch, interleaved across peers as the core emits them.
fn batch(peers: &[SocketAddr], per_peer: usize, size: usize) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(peers.len() * per_peer);
    for seq in 0..per_peer {
        for (p, &destination) in peers.iter().enumerate() {
            let mut contents = vec![0x80u8; size];
            contents[1] = seq as u8;
            contents[2] = p as u8;
            out.push(Outgoing {
                proto: Transport::Udp,
                destination,
                contents,
            });
        }
    }
    out
}

/// The check run before measuring (also in `cargo test --benches`): one batch through a fresh driver leaves
/// whole (nothing left queued), a frame per peer in one GSO send where the socket offers GSO, and every byte
/// reaches the sinks (waited for with a bound).
fn check_driver_delivers(sinks: &Sinks, per_peer: usize, size: usize) {
    let peers = sinks.addrs.len();
    let packets = peers * per_peer;
    let mut driver = SendBench::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let before = sinks.received.load(Ordering::Relaxed);
    assert!(
        driver.send(batch(&sinks.addrs, per_peer, size)),
        "the driver left packets queued"
    );
    let stats = driver.stats();
    assert_eq!(stats.packets_out, packets as u64, "{stats:?}");
    if per_peer > 1 && driver.gso_segments() >= per_peer {
        assert_eq!(
            stats.gso_sends, peers as u64,
            "one GSO send per peer's frame: {stats:?}"
        );
    }
    let expected = before + (packets * size) as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sinks.received.load(Ordering::Relaxed) < expected {
        assert!(Instant::now() < deadline, "the sinks did not receive the whole batch");
        std::thread::yield_now();
    }
    assert_eq!(
        sinks.received.load(Ordering::Relaxed),
        expected,
        "more than the batch arrived"
    );
}

fn egress(c: &mut Criterion) {
    let shapes: [(&str, usize, usize, usize); 2] = [("audio_fanout", 32, 1, 160), ("video_frames", 4, 8, 1200)];
    for (name, peers, per_peer, size) in shapes {
        let sinks = Sinks::new(peers);
        check_driver_delivers(&sinks, per_peer, size);
        let packets = peers * per_peer;
        let mut group = c.benchmark_group(format!("driver_egress/{name}"));
        group.throughput(Throughput::Elements(packets as u64));

        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let template = batch(&sinks.addrs, per_peer, size);
        group.bench_function("floor_send_to", |b| {
            b.iter_custom(|iters| {
                cpu_iter(iters, Vec::new, |_| {
                    for out in &template {
                        // A full receive buffer on loopback drops silently; the send itself succeeds.
                        let _ = plain.send_to(&out.contents, out.destination);
                    }
                })
            })
        });

        let fd = plain.as_raw_fd();
        let addrs: Vec<Option<SockaddrIn>> = template
            .iter()
            .map(|o| match o.destination {
                SocketAddr::V4(v4) => Some(SockaddrIn::from(v4)),
                SocketAddr::V6(_) => None,
            })
            .collect();
        let mut headers = MultiHeaders::<SockaddrIn>::preallocate(template.len(), None);
        let slices: Vec<[IoSlice<'_>; 1]> = template.iter().map(|o| [IoSlice::new(&o.contents)]).collect();
        group.bench_function("floor_sendmmsg", |b| {
            b.iter_custom(|iters| {
                cpu_iter(iters, Vec::new, |_| {
                    let sent = sendmmsg(fd, &mut headers, &slices, &addrs, [], MsgFlags::empty()).unwrap();
                    assert_eq!(sent.count(), template.len());
                })
            })
        });

        let mut driver = SendBench::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        group.bench_function("driver", |b| {
            b.iter_custom(|iters| {
                cpu_iter(
                    iters,
                    || batch(&sinks.addrs, per_peer, size),
                    |packets| {
                        driver.send(packets);
                    },
                )
            })
        });
        group.finish();
        let stats = driver.stats();
        println!(
            "{name}: driver sent {} packets in {} GSO sends and {} sendmmsg calls (GSO segments available: {})",
            stats.packets_out,
            stats.gso_sends,
            stats.mmsg_sends,
            driver.gso_segments()
        );
    }
}

criterion_group!(benches, egress);
criterion_main!(benches);
