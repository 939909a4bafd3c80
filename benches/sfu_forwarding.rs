//! SFU core forwarding cost per egress packet, 1 publisher → N subscribers, beside two floors measured in
//! the same run:
//! - `floor/aes128gcm_seal_1200`: str0m's own SRTP cipher (aws-lc AES-128-GCM, as negotiated between str0m
//!   peers) sealing one 1200-byte payload: the pure crypto cost of one egress packet;
//! - `floor/str0m_leg_write_rtp`: one connected str0m `Rtc` (RTP mode, BWE on, like our legs) writing the same
//!   RTP packet with `write_rtp` and draining its transmit: what any str0m-based forwarder pays per egress.
//!
//! All figures are thread CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time.
//!
//! `forward/N` feeds one SRTP datagram from the publisher into the `Sfu` and drains its N transmits;
//! criterion's throughput is per egress packet (elements = N). Setup and the publisher's own encryption are
//! outside the timed region. See docs/PERFORMANCE.md for figures.
//!
//! `cargo test --benches` runs each benchmark once (too few packets for the ratios checked after a real
//! run), and first checks that the SFU forwards each of [`SANITY_MIN`] ingress packets to every subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "../sfu/core/tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Offer, SERVER, World};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relaydesk_sfu_core::{Output, ParticipantId, Role, RoomId, Transmit};
use str0m::Input;
use str0m::format::Codec;

const PAYLOAD: usize = 1200;
const ROOM: RoomId = RoomId(1);
const BATCH: u64 = 256;

/// CPU time of this thread: the measure of every benchmark here. Unlike wall time it does not count the
/// time the thread waits for a core, so figures stay comparable on a shared, busy build host.
fn cpu_now() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

fn payload(key: bool, n: u32) -> Vec<u8> {
    common::vp8_payload(key, n, PAYLOAD)
}

/// A room with one publisher and `n` subscribers, connected, video flowing.
fn room(n: usize) -> World {
    let mut cfg = World::default_config();
    cfg.max_participants_per_room = n + 1;
    cfg.initial_bitrate_bps = 200_000_000;
    let mut w = World::new(cfg, None);
    w.create_room(ROOM);
    w.join(ROOM, ParticipantId(1), Role::Visitor, Offer::av());
    for i in 0..n {
        w.join(ROOM, ParticipantId(100 + i as u64), Role::Agent, Offer::av());
    }
    w.connect_all();
    let mut s = common::Sender::new(ParticipantId(1), w.now, 1, 7);
    s.audio = false;
    common::run_with(&mut w, &mut [&mut s], Duration::from_millis(500));
    w
}

struct Feed {
    seq: u64,
    ts: u32,
    frame: u32,
    dgrams: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

/// Have the publisher (client 0) write `count` video packets 1 ms apart; returns (time, datagram) to feed.
fn publish(w: &mut World, f: &mut Feed, count: u64) -> Vec<(Instant, SocketAddr, Vec<u8>)> {
    let mut out = Vec::with_capacity(count as usize);
    let mid = w.clients[0].video_mid.unwrap();
    let pt = w.clients[0].pt(Codec::Vp8);
    for _ in 0..count {
        w.now += Duration::from_millis(1);
        let now = w.now;
        let c = &mut w.clients[0];
        c.rtc.handle_input(Input::Timeout(now)).unwrap();
        c.write(mid, pt, f.seq, f.ts, now, payload(false, f.frame), true);
        f.seq += 1;
        f.ts = f.ts.wrapping_add(90);
        f.frame += 1;
        f.dgrams.clear();
        let mut d = std::mem::take(&mut f.dgrams);
        w.take_client_transmits(0, &mut d);
        for (from, to, data) in d.drain(..) {
            if to == SERVER {
                out.push((now, from, data));
            }
        }
        f.dgrams = d;
    }
    out
}

/// Feeds `batch` into the SFU, collecting its transmits in `outs`; returns how many ingress RTP datagrams it
/// held (counted by size: RTCP is small).
fn feed(w: &mut World, batch: &[(Instant, SocketAddr, Vec<u8>)], outs: &mut Vec<Transmit>) -> u64 {
    let mut ingress = 0;
    for (t, from, data) in batch {
        w.sfu.handle_timeout(*t);
        w.sfu.handle_datagram(*t, *from, SERVER, data);
        if data.len() >= PAYLOAD {
            ingress += 1;
        }
        loop {
            match w.sfu.poll_output() {
                Output::Transmit(tx) => outs.push(tx),
                Output::Event(e) => {
                    black_box(e);
                }
                Output::Timeout(_) => break,
            }
        }
    }
    ingress
}

/// Delivers `outs` to the subscribers and lets them answer (RTCP, ICE consent); returns how many egress RTP
/// datagrams there were.
fn deliver(w: &mut World, outs: &mut Vec<Transmit>) -> u64 {
    let mut egress = 0;
    for tx in outs.drain(..) {
        if tx.contents.len() >= PAYLOAD {
            egress += 1;
        }
        w.net_send(tx.source, tx.destination, tx.contents);
    }
    w.run_for(Duration::from_millis(20));
    egress
}

fn new_feed() -> Feed {
    Feed {
        seq: 10_000,
        ts: 5_000_000,
        frame: 1000,
        dgrams: Vec::new(),
    }
}

/// The check run before measuring (also in `cargo test --benches`): [`SANITY_MIN`] packets from the
/// publisher, fed as the benchmark feeds them, each reach all `n` subscribers (within the ratio the benchmark
/// checks after a real run).
fn check_forwarding(n: usize) {
    let mut w = room(n);
    let mut feed_state = new_feed();
    let mut outs = Vec::new();
    let batch = publish(&mut w, &mut feed_state, SANITY_MIN);
    let ingress = feed(&mut w, &batch, &mut outs);
    let egress = deliver(&mut w, &mut outs);
    // The publisher's pacer may still hold its last packet or two.
    assert!(
        ingress >= SANITY_MIN * 9 / 10,
        "the publisher sent {ingress} RTP datagrams"
    );
    let ratio = egress as f64 / ingress as f64;
    assert!(
        ratio >= n as f64 * 0.85,
        "forward/{n}: {ingress} ingress, {egress} egress RTP datagrams ({ratio:.2} per ingress)"
    );
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sfu_forwarding");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);

    // Floor 1: str0m's SRTP cipher on the same payload.
    g.throughput(Throughput::Elements(1));
    let provider = str0m::crypto::from_feature_flags();
    let mut cipher = provider.srtp_provider.aead_aes_128_gcm().create_cipher([7; 16], true);
    let input = payload(false, 1);
    let mut output = vec![0u8; PAYLOAD + 16];
    let aad = [0x80u8, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
    let mut iv = [0u8; 12];
    g.bench_function("floor/aes128gcm_seal_1200", |b| {
        b.iter_custom(|iters| {
            let t0 = cpu_now();
            for _ in 0..iters {
                iv[11] = iv[11].wrapping_add(1);
                cipher.encrypt(&iv, &aad, black_box(&input), &mut output).unwrap();
                black_box(&output);
            }
            cpu_now() - t0
        })
    });

    // Floor 2: one connected str0m leg writing the packet and draining the transmit, once per packet (as a
    // forwarder fed one datagram at a time does); then in bursts of 8 (a video frame) written at one instant
    // with the payloads built beforehand, unpaced (paced, the frame would leave over the next milliseconds),
    // and drained the way str0m must be driven: it releases one packet per `handle_timeout`, asking for an
    // immediate timeout before the next.
    leg_floor(&mut g, "floor/str0m_leg_write_rtp", 1);
    leg_floor(&mut g, "floor/str0m_leg_burst8", 8);

    // The SFU: one ingress packet, N egress packets.
    for n in [1usize, 4, 16] {
        check_forwarding(n);
        let mut w = room(n);
        let mut feed_state = new_feed();
        let (mut ingress, mut egress) = (0u64, 0u64);
        let mut outs = Vec::with_capacity(BATCH as usize * (n + 2) * 2);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("forward", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let count = BATCH.min(iters - done);
                    let batch = publish(&mut w, &mut feed_state, count);
                    let t0 = cpu_now();
                    ingress += feed(&mut w, &batch, &mut outs);
                    total += cpu_now() - t0;
                    done += count;
                    // Deliver to the subscribers and let them answer, untimed.
                    egress += deliver(&mut w, &mut outs);
                }
                total
            })
        });
        // Sanity: every ingress packet produced N egress RTP datagrams (counted by size: RTCP is small).
        let ratio = egress as f64 / ingress.max(1) as f64;
        eprintln!("forward/{n}: {ingress} ingress, {egress} egress RTP datagrams ({ratio:.2} per ingress)");
        // Per-egress cost is the time per ingress divided by this ratio (below N if any packet left after the
        // timed region, as a few percent did when forwarded video was paced).
        assert!(
            ingress < SANITY_MIN || ratio >= n as f64 * 0.85,
            "the SFU did not forward to every subscriber: {ratio:.2}"
        );
    }
    g.finish();
}

/// One connected str0m leg (RTP mode, BWE on, as our legs are) writing `burst` 1200-byte packets per timeout
/// and draining its transmits (immediate timeouts handled at once; unpaced when `burst` > 1); criterion's figure
/// is per packet written.
fn leg_floor(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, burst: u64) {
    let mut w = World::new(World::default_config(), None);
    w.client_bwe_bps = Some(200_000_000);
    w.create_room(ROOM);
    w.join(ROOM, ParticipantId(1), Role::Visitor, Offer::av());
    w.join(ROOM, ParticipantId(2), Role::Agent, Offer::av());
    w.connect_all();
    let mid = w.clients[0].video_mid.unwrap();
    let pt = w.clients[0].pt(Codec::Vp8);
    if burst > 1 {
        w.clients[0]
            .rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .unwrap()
            .set_unpaced(true);
    }
    let mut seq = 1u64;
    let mut sink = Vec::with_capacity(BATCH as usize * 4);
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(burst as usize);
    let (mut writes, mut rtp_out) = (0u64, 0u64);
    g.throughput(Throughput::Elements(burst));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let count = BATCH.min(iters - done);
                let mut now = w.now;
                let c = &mut w.clients[0];
                for _ in 0..count {
                    now += Duration::from_millis(burst);
                    let mut spins = 0;
                    // One payload per packet is part of the per-packet cost when writing one at a time (the
                    // forwarder gets a fresh buffer per datagram); in bursts it is built outside the timing.
                    if burst > 1 {
                        payloads.extend((0..burst).map(|i| payload(false, (seq + i) as u32)));
                    }
                    let t0 = cpu_now();
                    c.rtc.handle_input(Input::Timeout(now)).unwrap();
                    if burst == 1 {
                        c.write(mid, pt, seq, (seq * 90) as u32, now, payload(false, seq as u32), true);
                        seq += 1;
                    } else {
                        for p in payloads.drain(..) {
                            c.write(mid, pt, seq, (seq * 90) as u32, now, p, true);
                            seq += 1;
                        }
                    }
                    loop {
                        match c.rtc.poll_output().unwrap() {
                            str0m::Output::Transmit(t) => sink.push(t),
                            // The gate: one packet per timeout, the next asked for 1 µs later (bounded: a burst
                            // needs `burst` of them). A single write leaves at once; its follow-up timeout is
                            // folded into the next write's, as the SFU benches below fold theirs.
                            str0m::Output::Timeout(t)
                                if burst > 1 && t <= now + Duration::from_micros(100) && spins < 4 * burst =>
                            {
                                spins += 1;
                                now = now.max(t);
                                c.rtc.handle_input(Input::Timeout(now)).unwrap();
                            }
                            str0m::Output::Timeout(_) => break,
                            str0m::Output::Event(e) => {
                                black_box(e);
                            }
                        }
                    }
                    total += cpu_now() - t0;
                }
                writes += count * burst;
                done += count;
                // Keep the leg alive (ICE consent, RTCP feedback): deliver and run the world, untimed.
                w.now = now;
                for t in sink.drain(..) {
                    if t.contents.len() >= PAYLOAD {
                        rtp_out += 1;
                    }
                    w.net_send(t.source, t.destination, t.contents.into());
                }
                w.run_for(Duration::from_millis(20));
            }
            total
        })
    });
    let ratio = rtp_out as f64 / writes.max(1) as f64;
    eprintln!("{name}: {writes} writes, {rtp_out} RTP datagrams ({ratio:.2} per write)");
    // Checked over a real run only: in `cargo test` mode a bench runs once, and the pacer may hold that one
    // packet past the timed region.
    assert!(
        writes < SANITY_MIN || ratio > 0.95,
        "the floor leg stopped sending: {ratio:.2}"
    );
}

/// Fewest packets over which the benches' sanity ratios are checked.
const SANITY_MIN: u64 = 100;

criterion_group!(benches, bench);
criterion_main!(benches);
