//! What a new TCP connection on the public port is, from its first bytes: a TLS ClientHello (HTTPS and
//! WebSockets), or an ICE-TCP connection of a call (RFC 6544: RFC 4571 frames, the first one a STUN Binding
//! request), or neither (closed and counted).
//!
//! [`classify`] is pure: it looks at the bytes received so far and either decides or says how many bytes in
//! total it needs to decide. It never asks for more than [`MAX_FIRST_FRAME`] + 2 bytes, so a caller reading
//! exactly what it asks for holds a bounded buffer and never reads past the first frame.

/// The largest first frame accepted: a STUN Binding request of a browser is ~100–200 bytes (USERNAME,
/// PRIORITY, ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY, FINGERPRINT, maybe GOOG attributes).
pub const MAX_FIRST_FRAME: usize = 1024;

/// The RFC 4571 length header.
const FRAME_HEADER: usize = 2;
/// A STUN header: type, length, magic cookie, transaction id.
const STUN_HEADER: usize = 20;
/// TLS record type "handshake": the first byte of every ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;
/// STUN magic cookie (RFC 5389).
const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// STUN message type of a Binding request.
const STUN_BINDING_REQUEST: [u8; 2] = [0x00, 0x01];

/// The verdict on the first bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough bytes yet: decide again once `total` bytes (from the start) are in.
    NeedMore {
        /// Bytes needed in total.
        total: usize,
    },
    /// A TLS handshake record: HTTPS or WebSockets (the bytes are untouched; the TLS side reads them).
    Tls,
    /// An RFC 4571 frame of `len` bytes holding a STUN Binding request: an ICE-TCP connection. The frame
    /// payload is `bytes[2..2 + len]`.
    IceTcp {
        /// Length of the first frame's payload.
        len: usize,
    },
    /// Neither: close the connection and count it.
    Reject(Rejection),
}

/// Why a connection's first bytes were refused (the `reason` label of
/// `relaydesk_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A first frame longer than [`MAX_FIRST_FRAME`] (also what plain HTTP or most junk looks like).
    Oversized,
    /// A frame too short to hold a STUN message.
    Undersized,
    /// The frame is not a STUN Binding request (wrong type, cookie or length).
    NotStun,
}

impl Rejection {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Oversized => "first_frame_oversized",
            Rejection::Undersized => "first_frame_undersized",
            Rejection::NotStun => "not_tls_or_stun",
        }
    }
}

/// Classifies the first bytes of a connection (all bytes received so far, from the start). See the module
/// documentation; never panics, and looks at no byte past the first frame.
pub fn classify(bytes: &[u8]) -> Verdict {
    let Some(&first) = bytes.first() else {
        return Verdict::NeedMore { total: 1 };
    };
    if first == TLS_HANDSHAKE {
        // A STUN frame starting with 0x16 would announce more than 5 KiB: no ambiguity with the limit below.
        return Verdict::Tls;
    }
    let Some(header) = bytes.get(..FRAME_HEADER) else {
        return Verdict::NeedMore { total: FRAME_HEADER };
    };
    let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    if len > MAX_FIRST_FRAME {
        return Verdict::Reject(Rejection::Oversized);
    }
    if len < STUN_HEADER {
        return Verdict::Reject(Rejection::Undersized);
    }
    let Some(stun) = bytes.get(FRAME_HEADER..FRAME_HEADER + STUN_HEADER) else {
        return Verdict::NeedMore {
            total: FRAME_HEADER + STUN_HEADER,
        };
    };
    let declared = usize::from(u16::from_be_bytes([stun[2], stun[3]]));
    if stun[..2] != STUN_BINDING_REQUEST || stun[4..8] != STUN_MAGIC || declared + STUN_HEADER != len {
        return Verdict::Reject(Rejection::NotStun);
    }
    if bytes.len() < FRAME_HEADER + len {
        return Verdict::NeedMore {
            total: FRAME_HEADER + len,
        };
    }
    Verdict::IceTcp { len }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A framed STUN Binding request with a USERNAME attribute.
    fn framed_binding(username: &[u8]) -> Vec<u8> {
        let mut attrs = vec![0x00, 0x06];
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut stun = vec![0x00, 0x01];
        stun.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        stun.extend_from_slice(&STUN_MAGIC);
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&attrs);
        let mut frame = (stun.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&stun);
        frame
    }

    /// Feeds `bytes` as a caller would (exactly what is asked for) and returns the final verdict and how
    /// many bytes it read.
    fn drive(bytes: &[u8]) -> (Verdict, usize) {
        let mut have = 0;
        loop {
            match classify(&bytes[..have]) {
                Verdict::NeedMore { total } => {
                    assert!(total > have, "progress");
                    assert!(total <= FRAME_HEADER + MAX_FIRST_FRAME, "bounded");
                    if total > bytes.len() {
                        return (Verdict::NeedMore { total }, have);
                    }
                    have = total;
                }
                v => return (v, have),
            }
        }
    }

    #[test]
    fn tls_client_hello_is_decided_on_one_byte() {
        assert_eq!(classify(&[]), Verdict::NeedMore { total: 1 });
        assert_eq!(classify(&[0x16]), Verdict::Tls);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Verdict::Tls);
    }

    #[test]
    fn framed_stun_binding_request_is_ice_tcp() {
        let frame = framed_binding(b"srvufrag:cliufrag");
        let (v, read) = drive(&frame);
        assert_eq!(v, Verdict::IceTcp { len: frame.len() - 2 });
        assert_eq!(read, frame.len(), "reads exactly the first frame");
        // Bytes of a second frame behind it are not looked at.
        let mut two = frame.clone();
        two.extend_from_slice(&[0xFF; 40]);
        assert_eq!(classify(&two), Verdict::IceTcp { len: frame.len() - 2 });
    }

    #[test]
    fn half_a_frame_needs_more() {
        let frame = framed_binding(b"a:b");
        for cut in 0..frame.len() {
            match classify(&frame[..cut]) {
                Verdict::NeedMore { total } => assert!(total > cut && total <= frame.len()),
                v => panic!("cut {cut}: {v:?}"),
            }
        }
    }

    #[test]
    fn junk_is_rejected_early() {
        // Plain HTTP: "GE" reads as a 18245-byte frame.
        assert_eq!(
            drive(b"GET / HTTP/1.1\r\n\r\n").0,
            Verdict::Reject(Rejection::Oversized)
        );
        assert_eq!(
            drive(b"SSH-2.0-OpenSSH_9.6\r\n").0,
            Verdict::Reject(Rejection::Oversized)
        );
        assert_eq!(drive(&[0, 0]).0, Verdict::Reject(Rejection::Undersized));
        assert_eq!(drive(&[0, 19]).0, Verdict::Reject(Rejection::Undersized));
        assert_eq!(drive(&[0x04, 0x01]).0, Verdict::Reject(Rejection::Oversized));
        // A plausible length but no STUN inside.
        let mut junk = vec![0, 40];
        junk.extend_from_slice(&[0xAB; 40]);
        assert_eq!(drive(&junk), (Verdict::Reject(Rejection::NotStun), 22));
    }

    #[test]
    fn stun_that_is_not_a_binding_request_or_lies_about_its_length_is_rejected() {
        let good = framed_binding(b"x:y");
        let mut response = good.clone();
        response[3] = 0x01; // 0x0101: Binding success response
        response[2] = 0x01;
        assert_eq!(classify(&response), Verdict::Reject(Rejection::NotStun));
        let mut cookie = good.clone();
        cookie[6] ^= 0xFF;
        assert_eq!(classify(&cookie), Verdict::Reject(Rejection::NotStun));
        let mut length = good.clone();
        length[5] = length[5].wrapping_add(4);
        assert_eq!(classify(&length), Verdict::Reject(Rejection::NotStun));
    }

    #[test]
    fn no_input_panics_or_asks_beyond_the_bound() {
        // Every 2-byte length prefix, with a valid STUN header or junk behind it.
        for len in 0..=u16::MAX {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
            bytes.extend_from_slice(&STUN_MAGIC);
            bytes.resize(FRAME_HEADER + MAX_FIRST_FRAME + 8, 0x5A);
            let (v, read) = drive(&bytes);
            assert!(read <= FRAME_HEADER + MAX_FIRST_FRAME, "{len}: read {read}");
            assert!(!matches!(v, Verdict::NeedMore { .. }), "{len}: {v:?}");
        }
    }
}
