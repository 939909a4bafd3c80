//! Reads the server name (SNI) and the ACME ALPN offer out of the first bytes of a TLS connection.
//!
//! The listener peeks at a new connection's first bytes and, when they are a TLS ClientHello naming the
//! TURN host, hands the connection (bytes untouched) to coturn instead of terminating TLS itself
//! (see [`crate::turn`]). This parser is pure: it reads a byte slice, never allocates, never panics on any
//! input, and answers [`Peek::Incomplete`] while the first record has not fully arrived.
//!
//! Only a ClientHello that fits in the first TLS record is read (every browser's does: a record carries up
//! to 16 KiB). One split over several records is [`Peek::Unsupported`]: the caller treats it as an ordinary
//! HTTPS connection, which is always safe (rustls then terminates it).

/// The largest TLS record payload (RFC 8446 §5.1: 2^14 bytes; a little more is tolerated for TLS 1.2
/// compression and padding by RFC 5246 §6.2.3, but a ClientHello never needs it).
pub const MAX_RECORD_PAYLOAD: usize = 16_384;

/// Record header length: content type, version, length.
const RECORD_HEADER: usize = 5;

/// The most bytes [`peek_client_hello`] ever needs to decide.
pub const MAX_PEEK: usize = RECORD_HEADER + MAX_RECORD_PAYLOAD;

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek<'a> {
    /// They could be a ClientHello, but more bytes are needed (at most [`MAX_PEEK`] in all).
    Incomplete,
    /// Not a TLS handshake record (e.g. an RFC 4571 frame, or junk).
    NotTls,
    /// A TLS handshake record whose ClientHello is malformed, or split over several records.
    Unsupported,
    /// A complete ClientHello.
    ClientHello(ClientHelloInfo<'a>),
}

/// What a ClientHello asks for, as far as routing needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientHelloInfo<'a> {
    /// The `host_name` of the server_name extension, if it has one that is a plausible DNS name (ASCII
    /// letters, digits, `-`, `.`, `_`; 1 to 253 bytes). Case as sent.
    pub server_name: Option<&'a str>,
    /// The ALPN extension offers `acme-tls/1` (an ACME TLS-ALPN-01 validation).
    pub offers_acme_tls: bool,
}

/// Parses the start of a connection. See the module documentation.
pub fn peek_client_hello(buf: &[u8]) -> Peek<'_> {
    // Record header: handshake (22), legacy version 3.x.
    match buf.first() {
        None => return Peek::Incomplete,
        Some(22) => {}
        Some(_) => return Peek::NotTls,
    }
    match buf.get(1) {
        None => return Peek::Incomplete,
        Some(3) => {}
        Some(_) => return Peek::NotTls,
    }
    let Some(header) = buf.get(..RECORD_HEADER) else {
        return Peek::Incomplete;
    };
    let record_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if record_len == 0 || record_len > MAX_RECORD_PAYLOAD {
        return Peek::Unsupported;
    }
    let Some(record) = buf.get(RECORD_HEADER..RECORD_HEADER + record_len) else {
        return Peek::Incomplete;
    };
    match parse_handshake(record) {
        Some(info) => Peek::ClientHello(info),
        None => Peek::Unsupported,
    }
}

/// A cursor over a byte slice; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }

    /// A vector with a `len_bytes`-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The ClientHello in one record's payload (RFC 8446 §4.1.2); `None` if malformed or fragmented.
fn parse_handshake(record: &[u8]) -> Option<ClientHelloInfo<'_>> {
    let mut r = Reader(record);
    // msg_type client_hello (1), 24-bit length: the whole message must be in this record.
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let mut r = Reader(r.take(len)?);
    let _legacy_version = r.u16()?;
    let _random = r.take(32)?;
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    let compression = r.vec8()?;
    if compression.is_empty() {
        return None;
    }
    let mut info = ClientHelloInfo::default();
    if r.is_empty() {
        // No extensions at all (old clients): no SNI.
        return Some(info);
    }
    let mut exts = Reader(r.vec16()?);
    if !r.is_empty() {
        return None;
    }
    let mut seen_sni = false;
    let mut seen_alpn = false;
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let mut body = Reader(exts.vec16()?);
        match kind {
            0 => {
                // A second server_name extension is illegal (RFC 8446 §4.2).
                if seen_sni {
                    return None;
                }
                seen_sni = true;
                info.server_name = parse_server_name(&mut body)?;
            }
            16 => {
                if seen_alpn {
                    return None;
                }
                seen_alpn = true;
                let mut list = Reader(body.vec16()?);
                if !body.is_empty() {
                    return None;
                }
                while !list.is_empty() {
                    let proto = list.vec8()?;
                    if proto.is_empty() {
                        return None;
                    }
                    if proto == ACME_TLS_ALPN {
                        info.offers_acme_tls = true;
                    }
                }
            }
            _ => {}
        }
    }
    Some(info)
}

/// The host_name of a server_name extension body (RFC 6066 §3). `Some(None)`: well formed but no usable
/// host name; `None`: malformed.
fn parse_server_name<'a>(body: &mut Reader<'a>) -> Option<Option<&'a str>> {
    let mut list = Reader(body.vec16()?);
    if !body.is_empty() {
        return None;
    }
    let mut found = None;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        // Only host_name (0) is defined; one of each type at most.
        if name_type == 0 {
            if found.is_some() {
                return None;
            }
            found = Some(name);
        }
    }
    Some(found.and_then(host_name))
}

/// The name as text if it is a plausible DNS host name.
fn host_name(name: &[u8]) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        return None;
    }
    std::str::from_utf8(name).ok()
}

/// True if `sent` (an SNI value) names `host` (a lower-case DNS name): ASCII case-insensitive, a
/// trailing dot on either ignored.
pub fn names_host(sent: &str, host: &str) -> bool {
    fn trim(s: &str) -> &str {
        s.strip_suffix('.').unwrap_or(s)
    }
    let (a, b) = (trim(sent), trim(host));
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests;
