use super::*;
use crate::config::MediaConfig;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn ice_tcp_candidate_follows_announce_listener_and_bind_addresses() {
    let mut media = MediaConfig::default();
    // The HTTPS listener's own address and port.
    assert_eq!(
        ice_tcp_candidate(&media, addr("192.0.2.1:443"), None),
        Some(addr("192.0.2.1:443"))
    );
    // A wildcard listener: the media bind address, else nothing (UDP only).
    media.bind_ip = "192.0.2.7".parse().expect("ip");
    assert_eq!(
        ice_tcp_candidate(&media, addr("0.0.0.0:443"), None),
        Some(addr("192.0.2.7:443"))
    );
    media.bind_ip = "0.0.0.0".parse().expect("ip");
    assert_eq!(ice_tcp_candidate(&media, addr("0.0.0.0:443"), None), None);
    // The announced address wins; a dedicated port replaces the HTTPS port.
    media.announce_ip = Some("203.0.113.10".parse().expect("ip"));
    assert_eq!(
        ice_tcp_candidate(&media, addr("0.0.0.0:443"), None),
        Some(addr("203.0.113.10:443"))
    );
    assert_eq!(
        ice_tcp_candidate(&media, addr("0.0.0.0:443"), Some(addr("0.0.0.0:3478"))),
        Some(addr("203.0.113.10:3478"))
    );
    // Off, or no media at all: no candidate.
    media.ice_tcp = false;
    assert_eq!(ice_tcp_candidate(&media, addr("192.0.2.1:443"), None), None);
    media.ice_tcp = true;
    media.enabled = false;
    assert_eq!(ice_tcp_candidate(&media, addr("192.0.2.1:443"), None), None);
}
