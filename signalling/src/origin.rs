//! Web origins (`scheme://host[:port]`) as site keys list them and browsers send them.
//!
//! [`normalize_origin`] accepts exactly a scheme (`http` or `https`), a host (DNS name, IPv4 or bracketed
//! IPv6) and an optional port; it refuses paths, queries, fragments and user info, lowercases the scheme
//! and host, and drops a default port (80 for http, 443 for https), so two spellings of one origin compare
//! equal as strings. A single trailing `/` (an empty path) is tolerated. Internationalised host names must
//! be given in their ASCII (punycode) form, as browsers send them.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Why an origin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// The text is not `scheme://host[:port]`.
    #[error("origin must look like https://host[:port], got {0:?}")]
    Malformed(String),
    /// The scheme is not http or https.
    #[error("origin scheme must be http or https")]
    Scheme,
    /// A path, query, fragment or user info is present.
    #[error("origin must not contain a path, query, fragment or user info")]
    Extra,
    /// The host is not a valid DNS name or IP address.
    #[error("origin host is not a valid DNS name or IP address")]
    Host,
    /// The port is not a number from 1 to 65535.
    #[error("origin port must be a number from 1 to 65535")]
    Port,
}

/// Longest origin text considered.
const MAX_ORIGIN_LEN: usize = 300;

/// Validates and normalises an origin; see the module documentation for the rules.
pub fn normalize_origin(input: &str) -> Result<String, OriginError> {
    let shown: String = input.chars().take(80).collect();
    if input.len() > MAX_ORIGIN_LEN {
        return Err(OriginError::Malformed(shown));
    }
    let (scheme, rest) = input
        .split_once("://")
        .ok_or_else(|| OriginError::Malformed(shown.clone()))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return Err(OriginError::Scheme),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@', '\\']) {
        return Err(OriginError::Extra);
    }
    if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(OriginError::Malformed(shown));
    }
    let (host, port) = if let Some(after) = rest.strip_prefix('[') {
        let (v6, tail) = after.split_once(']').ok_or(OriginError::Host)?;
        let addr: Ipv6Addr = v6.parse().map_err(|_| OriginError::Host)?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':').ok_or(OriginError::Host)?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        (normalize_host(host)?, port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OriginError::Port);
            }
            let n: u32 = p.parse().map_err(|_| OriginError::Port)?;
            if n == 0 || n > 65535 {
                return Err(OriginError::Port);
            }
            Some(n)
        }
    };
    Ok(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

fn normalize_host(host: &str) -> Result<String, OriginError> {
    let host = host.to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 {
        return Err(OriginError::Host);
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Looks numeric: must be a dotted-quad IPv4 address.
        let addr: Ipv4Addr = host.parse().map_err(|_| OriginError::Host)?;
        return Ok(addr.to_string());
    }
    let host_trimmed = host.strip_suffix('.').unwrap_or(&host);
    for label in host_trimmed.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(OriginError::Host);
        }
    }
    Ok(host_trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        let cases = [
            ("https://shop.example", "https://shop.example"),
            ("HTTPS://Shop.Example", "https://shop.example"),
            ("https://shop.example:443", "https://shop.example"),
            ("http://shop.example:80", "http://shop.example"),
            ("https://shop.example:8443", "https://shop.example:8443"),
            ("http://shop.example:443", "http://shop.example:443"),
            ("https://shop.example/", "https://shop.example"),
            ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
            ("https://[::1]:8443", "https://[::1]:8443"),
            ("https://[0:0:0:0:0:0:0:1]", "https://[::1]"),
            ("https://localhost", "https://localhost"),
            ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_origin(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("shop.example", OriginError::Malformed("shop.example".into())),
            ("ftp://shop.example", OriginError::Scheme),
            ("javascript://x", OriginError::Scheme),
            ("https://shop.example/path", OriginError::Extra),
            ("https://shop.example?q=1", OriginError::Extra),
            ("https://shop.example#f", OriginError::Extra),
            ("https://user@shop.example", OriginError::Extra),
            ("https://shop.example:", OriginError::Port),
            ("https://shop.example:0", OriginError::Port),
            ("https://shop.example:65536", OriginError::Port),
            ("https://shop.example:+80", OriginError::Port),
            ("https://-bad.example", OriginError::Host),
            ("https://bad_.example", OriginError::Host),
            ("https://bücher.example", OriginError::Host),
            ("https://300.1.1.1", OriginError::Host),
            ("https://[::1", OriginError::Host),
            ("https://a..b", OriginError::Host),
            (
                "https:// shop.example",
                OriginError::Malformed("https:// shop.example".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_origin(input), Err(want), "{input}");
        }
        assert!(normalize_origin(&format!("https://{}", "a".repeat(400))).is_err());
        assert!(normalize_origin("https://").is_err());
        assert!(normalize_origin("null").is_err());
    }
}
