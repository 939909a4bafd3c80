//! The network-namespace fixture (tests/common/netns.rs) does what the bad-network tests rely on: the veth pair
//! carries TCP and UDP between the two namespaces; nftables in the browser's namespace drops UDP, all but one TCP
//! port, a random share of packets, or everything during an outage (each drop counted); `tc` installs a token
//! bucket that throttles; and the namespaces and every process inside them are gone after a drop, also when a
//! test panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::netns::{NetnsPair, Policy, SERVER_IP, namespaces};

/// Bound for one blocking socket operation.
const IO: Duration = Duration::from_secs(10);
/// How long a connection attempt that the rules drop is given before it counts as blocked.
const BLOCKED: Duration = Duration::from_millis(700);

fn server_udp(pair: &NetnsPair) -> UdpSocket {
    pair.server.run(|| UdpSocket::bind((SERVER_IP, 0)).unwrap())
}

fn browser_udp(pair: &NetnsPair) -> UdpSocket {
    pair.browser
        .run(|| UdpSocket::bind((common::netns::BROWSER_IP, 0)).unwrap())
}

fn server_tcp(pair: &NetnsPair) -> TcpListener {
    pair.server.run(|| TcpListener::bind((SERVER_IP, 0)).unwrap())
}

fn browser_connect(pair: &NetnsPair, to: SocketAddr, within: Duration) -> std::io::Result<TcpStream> {
    pair.browser.run(move || TcpStream::connect_timeout(&to, within))
}

/// Sends one datagram; a drop in the sender's own output hook (nftables) fails the send with EPERM, which
/// counts as sent (and dropped).
fn send(from: &UdpSocket, buf: &[u8], to: SocketAddr) {
    match from.send_to(buf, to) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
        Err(e) => panic!("send_to {to}: {e}"),
    }
}

/// Sends `n` datagrams (a multiple of 200) from `from` to `to` in batches, reading each batch at `to` until every
/// datagram is either received or counted as dropped by `dropped()`; returns the number received.
fn send_and_count(from: &UdpSocket, to: &UdpSocket, n: u32, dropped: impl Fn() -> u64) -> u64 {
    // A short read timeout: when it passes, the drop count is read again (reading it runs `nft`, too slow to
    // do per datagram); the whole wait is bounded by IO.
    to.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let dest = to.local_addr().unwrap();
    let before = dropped();
    let (mut received, mut lost) = (0u64, 0u64);
    let mut buf = [0u8; 64];
    for batch in 0..n / 200 {
        for i in 0..200 {
            send(from, &(batch * 200 + i).to_be_bytes(), dest);
        }
        let sent = u64::from((batch + 1) * 200);
        let deadline = std::time::Instant::now() + IO;
        while received + lost < sent {
            match to.recv_from(&mut buf) {
                Ok(_) => received += 1,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    lost = dropped() - before;
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{sent} sent, {received} received, {lost} dropped"
                    );
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    received
}

#[test]
fn the_pair_carries_tcp_and_udp_and_is_removed_with_its_processes() {
    let pair = NetnsPair::new();
    let names = [pair.browser.name.clone(), pair.server.name.clone()];
    assert!(names.iter().all(|n| namespaces().contains(n)), "{names:?}");

    // TCP both ways across the veth.
    let listener = server_tcp(&pair);
    let to = listener.local_addr().unwrap();
    let mut c = browser_connect(&pair, to, IO).unwrap();
    let (mut s, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), pair.browser.ip);
    c.write_all(b"ping").unwrap();
    s.set_read_timeout(Some(IO)).unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // UDP: every datagram arrives when nothing is imposed.
    let (b, srv) = (browser_udp(&pair), server_udp(&pair));
    assert_eq!(send_and_count(&b, &srv, 200, || 0), 200);

    // A process inside the server's namespace is killed with it.
    let mut sleeper = pair.server.command("sleep").arg("600").spawn().unwrap();
    drop(pair);
    let status = common::process::wait_within(&mut sleeper);
    assert!(!status.success(), "the process inside was killed: {status}");
    let left = namespaces();
    assert!(names.iter().all(|n| !left.contains(n)), "left behind: {left:?}");

    // A test that panics with a pair alive leaves nothing behind either.
    let names = std::panic::catch_unwind(|| {
        let pair = NetnsPair::new();
        let names = [pair.browser.name.clone(), pair.server.name.clone()];
        std::panic::panic_any(names)
    })
    .expect_err("the closure panics")
    .downcast::<[String; 2]>()
    .unwrap();
    let left = namespaces();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "left behind after a panic: {left:?}"
    );
}

#[test]
fn policies_drop_udp_or_all_but_one_tcp_port() {
    let pair = NetnsPair::new();
    let (b, srv) = (browser_udp(&pair), server_udp(&pair));
    let allowed = server_tcp(&pair);
    let other = server_tcp(&pair);

    pair.set_policy(Policy::DropUdp);
    for i in 0..10u8 {
        send(&b, &[i], srv.local_addr().unwrap());
    }
    // The output hook drops during send_to: the count is final when it returns.
    assert_eq!(pair.drops().policy, 10);
    srv.set_nonblocking(true).unwrap();
    assert_eq!(srv.recv_from(&mut [0u8; 8]).unwrap_err().kind(), ErrorKind::WouldBlock);
    browser_connect(&pair, other.local_addr().unwrap(), IO).expect("TCP passes when only UDP is dropped");

    pair.set_policy(Policy::OnlyTcpTo(allowed.local_addr().unwrap().port()));
    browser_connect(&pair, allowed.local_addr().unwrap(), IO).expect("the allowed port");
    let before = pair.drops().policy;
    assert!(browser_connect(&pair, other.local_addr().unwrap(), BLOCKED).is_err());
    assert!(
        pair.drops().policy > before,
        "the SYN to another port was dropped by the policy"
    );
    send(&b, b"x", srv.local_addr().unwrap());
    assert!(pair.drops().policy > before + 1, "and UDP too");

    // No media path: UDP and STUN inside TCP (ICE-TCP's RFC 4571 frame) are dropped, other TCP passes.
    pair.set_policy(Policy::NoMedia);
    // A fresh listener: `other` holds the earlier connections in its backlog.
    let other = server_tcp(&pair);
    let mut c = browser_connect(&pair, other.local_addr().unwrap(), IO).expect("TCP connects");
    let (s, _) = other.accept().unwrap();
    s.set_read_timeout(Some(IO)).unwrap();
    let before = pair.drops().policy;
    // A framed STUN Binding request: length, type 0x0001, length 0, the magic cookie, a transaction id.
    let mut stun = vec![0x00, 0x14, 0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend([7u8; 12]);
    c.write_all(&stun).unwrap();
    assert!(pair.drops().policy > before, "the framed STUN segment was dropped");
    send(&b, b"x", srv.local_addr().unwrap());
    assert!(pair.drops().policy > before + 1, "and UDP");
    let mut c2 = browser_connect(&pair, other.local_addr().unwrap(), IO).expect("TCP connects");
    let (mut s2, _) = other.accept().unwrap();
    s2.set_read_timeout(Some(IO)).unwrap();
    c2.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).unwrap();
    let mut got = [0u8; 10];
    s2.read_exact(&mut got).unwrap();
    assert_eq!(got[0], 0x16, "a TLS record passes");
    drop((c, s));

    pair.set_policy(Policy::AllowAll);
    browser_connect(&pair, other.local_addr().unwrap(), IO).expect("everything passes again");
}

#[test]
fn loss_drops_its_share_in_each_direction() {
    let pair = NetnsPair::new();
    let (b, srv) = (browser_udp(&pair), server_udp(&pair));
    pair.set_loss(10);
    // 2000 datagrams each way at 10 %: 200 expected, σ ≈ 13.4; the range is ±7σ, so a failure means a wrong rule.
    for (from, to) in [(&b, &srv), (&srv, &b)] {
        let received = send_and_count(from, to, 2000, || pair.drops().loss);
        let lost = 2000 - received;
        assert!((106..=294).contains(&lost), "{lost} of 2000 lost at 10 %");
    }
    pair.set_loss(0);
    assert_eq!(
        send_and_count(&b, &srv, 400, || pair.drops().loss),
        400,
        "no loss once ended"
    );
}

#[test]
fn an_outage_drops_everything_and_connections_survive_it() {
    let pair = NetnsPair::new();
    let listener = server_tcp(&pair);
    let mut c = browser_connect(&pair, listener.local_addr().unwrap(), IO).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    let (b, srv) = (browser_udp(&pair), server_udp(&pair));

    pair.start_outage();
    send(&b, b"lost", srv.local_addr().unwrap());
    assert_eq!(pair.drops().outage, 1);
    assert!(browser_connect(&pair, listener.local_addr().unwrap(), BLOCKED).is_err());
    // Written during the outage: held by TCP, delivered after it.
    c.write_all(b"held").unwrap();
    let dropped = pair.drops().outage;
    assert!(
        dropped >= 3,
        "the datagram, the SYN and the data segment were dropped: {dropped}"
    );
    pair.end_outage();
    s.set_read_timeout(Some(IO)).unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"held");
    assert_eq!(send_and_count(&b, &srv, 200, || pair.drops().outage), 200);
}

#[test]
fn a_rate_cap_is_a_token_bucket_that_throttles() {
    let pair = NetnsPair::new();
    pair.set_rate(1000);
    for ns in [&pair.browser, &pair.server] {
        let stats = pair.qdisc_stats(ns);
        assert!(stats.contains("qdisc tbf") && stats.contains("rate 1Mbit"), "{stats}");
    }
    // 300 kB offered at once from the server: far beyond the bucket, so the bucket throttles (and its queue drops).
    let (b, srv) = (browser_udp(&pair), server_udp(&pair));
    let to = b.local_addr().unwrap();
    for _ in 0..300 {
        send(&srv, &[0u8; 1000], to);
    }
    let stats = pair.qdisc_stats(&pair.server);
    let field = |name: &str| -> u64 {
        stats
            .split([' ', ','])
            .skip_while(|w| *w != name)
            .nth(1)
            .and_then(|n| n.trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert!(field("overlimits") > 0 || field("dropped") > 0, "{stats}");
    pair.clear_rate();
    assert!(!pair.qdisc_stats(&pair.server).contains("tbf"));
}
