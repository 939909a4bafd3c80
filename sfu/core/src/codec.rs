//! Keyframe detection on RTP payloads, for the codecs we switch on (VP8, VP9, H.264).

use str0m::format::Codec;

/// Whether this RTP payload starts a keyframe. `None` when the codec is not inspected (then the
/// forwarder does not wait for keyframes on it).
pub(crate) fn is_keyframe_start(codec: Codec, payload: &[u8]) -> Option<bool> {
    match codec {
        Codec::Vp8 => Some(vp8(payload)),
        Codec::Vp9 => Some(vp9(payload)),
        Codec::H264 => Some(h264(payload)),
        _ => None,
    }
}

/// RFC 7741: payload descriptor, then (at partition start) the VP8 frame header whose P bit is 0 on a key frame.
fn vp8(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    if !start || pid != 0 {
        return false;
    }
    let mut at = 1usize;
    if b0 & 0x80 != 0 {
        // X: extension byte.
        let Some(&x) = p.get(at) else { return false };
        at += 1;
        if x & 0x80 != 0 {
            // I: picture id, 7 or 15 bits.
            let Some(&pid) = p.get(at) else { return false };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // T/K
        }
    }
    p.get(at).is_some_and(|h| h & 0x01 == 0)
}

/// VP9 payload descriptor (draft-ietf-payload-vp9): P (inter-predicted) clear and B (begin of frame) set.
fn vp9(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let inter = b0 & 0x40 != 0;
    let begin = b0 & 0x08 != 0;
    !inter && begin
}

/// RFC 6184: an IDR or SPS NAL unit, alone, in a STAP-A, or starting a FU-A.
fn h264(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let is_key = |t: u8| t == 5 || t == 7;
    match b0 & 0x1f {
        24 => {
            // STAP-A: 16-bit size, NAL unit, repeated.
            let mut at = 1usize;
            while at + 2 < p.len() {
                let size = u16::from_be_bytes([p[at], p[at + 1]]) as usize;
                if size == 0 {
                    return false;
                }
                if is_key(p[at + 2] & 0x1f) {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        28 => p.get(1).is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_and_delta() {
        assert!(vp8(&[0x10, 0x00, 0x9d]));
        assert!(!vp8(&[0x10, 0x01, 0x9d]));
        assert!(!vp8(&[0x00, 0x00]));
        // With extension and a 15-bit picture id.
        assert!(vp8(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        assert!(!vp8(&[0x90, 0x80, 0x81]));
        assert!(!vp8(&[]));
    }

    #[test]
    fn h264_forms() {
        assert!(h264(&[0x65]));
        assert!(h264(&[0x67, 0x42]));
        assert!(!h264(&[0x41]));
        assert!(h264(&[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]));
        assert!(h264(&[0x7c, 0x85]));
        assert!(!h264(&[0x7c, 0x05]));
        assert!(!h264(&[0x78, 0x00]));
    }
}
