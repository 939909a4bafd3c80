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
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, sendmmsg};
use relaydesk_sfu::Outgoing;
use relaydesk_sfu::bench_support::SendBench;

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
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
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
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65_536];
            let mut received = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let mut idle = true;
                for s in &sockets {
                    while let Ok(n) = s.recv(&mut buf) {
                        received += n as u64;
                        idle = false;
                    }
                }
                if idle {
                    std::thread::yield_now();
                }
            }
            received
        });
        Self {
            addrs,
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
            out.push(Outgoing { destination, contents });
        }
    }
    out
}

fn egress(c: &mut Criterion) {
    let shapes: [(&str, usize, usize, usize); 2] = [("audio_fanout", 32, 1, 160), ("video_frames", 4, 8, 1200)];
    for (name, peers, per_peer, size) in shapes {
        let sinks = Sinks::new(peers);
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
