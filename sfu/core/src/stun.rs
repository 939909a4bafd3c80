//! Just enough STUN parsing to demultiplex a datagram from a new address: the USERNAME attribute.

/// The STUN magic cookie (RFC 5389).
const MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// USERNAME attribute type.
const ATTR_USERNAME: u16 = 0x0006;

/// Whether `data` looks like a STUN message (RFC 7983 demultiplexing: first byte 0..=3, and the cookie).
pub(crate) fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] < 4 && data[4..8] == MAGIC
}

/// The local (server-side) ufrag named by a STUN request's USERNAME `"<local>:<remote>"`, if any.
/// Bounded: walks at most the message's own length, never panics on truncated input.
pub(crate) fn local_ufrag(data: &[u8]) -> Option<&str> {
    if !is_stun(data) {
        return None;
    }
    let declared = u16::from_be_bytes([data[2], data[3]]) as usize;
    let end = 20usize.checked_add(declared)?.min(data.len());
    let mut at = 20usize;
    while at + 4 <= end {
        let ty = u16::from_be_bytes([data[at], data[at + 1]]);
        let len = u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize;
        let start = at + 4;
        let stop = start.checked_add(len)?;
        if stop > end {
            return None;
        }
        if ty == ATTR_USERNAME {
            let user = std::str::from_utf8(&data[start..stop]).ok()?;
            let local = user.split(':').next()?;
            return (!local.is_empty()).then_some(local);
        }
        // Attributes are padded to 4 bytes.
        at = start + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (ty, v) in attrs {
            body.extend_from_slice(&ty.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn finds_username_after_other_attributes() {
        let m = msg(&[(0x8029, &[1, 2, 3, 4, 5, 6, 7, 8]), (ATTR_USERNAME, b"srv1:cli")]);
        assert_eq!(local_ufrag(&m), Some("srv1"));
    }

    #[test]
    fn truncated_and_garbage_are_none() {
        let m = msg(&[(ATTR_USERNAME, b"abcdef:gh")]);
        for cut in 0..m.len() - 1 {
            let r = local_ufrag(&m[..cut]);
            assert!(r.is_none() || r == Some("abcdef"), "cut {cut}: {r:?}");
        }
        assert_eq!(local_ufrag(&[0u8; 3]), None);
        assert_eq!(local_ufrag(&msg(&[(ATTR_USERNAME, b":x")])), None);
        assert_eq!(local_ufrag(&msg(&[])), None);
    }
}
