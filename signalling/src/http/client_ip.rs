//! The client's address: the TCP peer, or — only when the peer is a configured trusted proxy — the right-most
//! address of `X-Forwarded-For` that is not itself a trusted proxy; and the grouping of addresses that
//! per-address limits count by (IPv4 address, IPv6 /64).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// An address block, `192.0.2.0/24`, `2001:db8::/32`, or a single address (`203.0.113.7`, taken as /32 or
/// /128). Written and read as that text in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why an address block did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// The address part is not an IP address.
    #[error("{0:?} is not an IP address or ADDRESS/PREFIX block")]
    Address(String),
    /// The prefix is not a number within the family's length (32 or 128).
    #[error("{0:?} has a bad prefix length")]
    Prefix(String),
}

impl Cidr {
    /// The block `addr/prefix`; the host bits of `addr` are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let addr = canonical(addr);
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(CidrError::Prefix(format!("{addr}/{prefix}")));
        }
        Ok(Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` lies in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address(s.to_owned()))?;
        let addr = canonical(addr);
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| CidrError::Prefix(s.to_owned()))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, prefix).map_err(|_| CidrError::Prefix(s.to_owned()))
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> Self {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`) as the IPv4 address it is; anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

/// What per-address limits count by: an IPv4 address itself, an IPv6 address's /64 (one subscriber's
/// network: a host there may pick any of its 2^64 addresses).
pub fn address_group(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        v4 @ IpAddr::V4(_) => v4,
        v6 => mask(v6, 64),
    }
}

/// The client's address for a request from `peer` carrying the `X-Forwarded-For` header values
/// `forwarded_for` (in order), given the trusted proxies.
///
/// Only a trusted peer's header is read. It is read from the right (each proxy appends the address it
/// received from): trusted entries are skipped, and the first untrusted one is the client. An entry that
/// is not an IP address ends the walk at the last trusted hop (nothing left of it can be believed); when
/// every entry is trusted, the left-most is taken.
pub fn client_ip<'a>(peer: IpAddr, forwarded_for: impl IntoIterator<Item = &'a str>, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for.into_iter().flat_map(|v| v.split(',')).collect();
    let mut hop = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_entry(entry) else {
            return hop;
        };
        hop = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    hop
}

/// One `X-Forwarded-For` entry: an address, optionally `[v6]:port` or `v4:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    e.parse::<std::net::SocketAddr>().ok().map(|s| canonical(s.ip()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn blocks_parse_and_match() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.200.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped counts as IPv4");
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::a00:1")));
        let one: Cidr = "203.0.113.7".parse().unwrap();
        assert!(one.contains(ip("203.0.113.7")) && !one.contains(ip("203.0.113.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("198.51.100.1")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", "", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let back: Vec<Cidr> = toml::from_str::<toml::Table>("l = [\"192.0.2.0/24\", \"::1\"]").unwrap()["l"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(back, cidrs(&["192.0.2.0/24", "::1/128"]));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("198.51.100.9"), ["1.2.3.4"], &trusted), ip("198.51.100.9"));
        assert_eq!(
            client_ip(ip("198.51.100.9"), ["10.0.0.1"], &trusted),
            ip("198.51.100.9")
        );
        // Without trusted proxies nobody's header counts.
        assert_eq!(client_ip(ip("10.0.0.1"), ["1.2.3.4"], &[]), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_proxy_is_believed_from_the_right() {
        let trusted = cidrs(&["10.0.0.0/8", "2001:db8:aaaa::/48"]);
        // The client prepended a spoofed entry; the proxy appended the real peer.
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["6.6.6.6, 198.51.100.7"], &trusted),
            ip("198.51.100.7")
        );
        // Two trusted hops, two headers.
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["6.6.6.6, 203.0.113.5", "10.9.9.9"], &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(ip("2001:db8:aaaa::1"), ["[2001:db8:1::5]:443"], &trusted),
            ip("2001:db8:1::5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["198.51.100.7:5000"], &trusted),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at the last trusted hop; all trusted: the left-most.
        assert_eq!(client_ip(ip("10.0.0.1"), ["1.2.3.4, junk"], &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["1.2.3.4, junk, 10.0.0.2"], &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["10.0.0.3, 10.0.0.2"], &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), std::iter::empty(), &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), ["198.51.100.7"], &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ipv6_addresses_group_by_64() {
        assert_eq!(address_group(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            address_group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            address_group(ip("2001:db8:1:2::7"))
        );
        assert_ne!(
            address_group(ip("2001:db8:1:2::1")),
            address_group(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_group(ip("198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(address_group(ip("::ffff:198.51.100.7")), ip("198.51.100.7"));
        assert_ne!(address_group(ip("198.51.100.7")), address_group(ip("198.51.100.8")));
    }
}
