//! ICE-TCP on the shared port: the classifier of a connection's first bytes
//! (`signalling/src/first_bytes.rs`, `classify`) and the RFC 4571 frame reader of the SFU driver
//! (`sfu/core/src/framing.rs`, `FrameReader`).
//!
//! The first byte sets the sizes of the pieces the rest arrives in (as TCP may cut a stream anywhere); the
//! rest is the byte stream of one connection.
//!
//! Properties:
//! - `classify` never asks for fewer bytes than it has, and its verdict, once given for a prefix, is the
//!   verdict for every longer input (the listener decides on what it has read so far); an `IceTcp` verdict
//!   names a frame inside the bytes;
//! - the frame reader yields the same frames (and the same error) whatever the pieces, never holds more than
//!   one incomplete frame plus the last piece, and what it yields re-encodes to the bytes it consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaydesk_sfu_core::framing::{FrameError, FrameReader, HEADER_LEN, encode_frame};
use relaydesk_signalling::first_bytes::{Verdict, classify};

/// A small limit so that oversized frames are reached by short inputs too.
const MAX_FRAME: usize = 512;

fn check_classify(bytes: &[u8]) {
    let mut decided: Option<(usize, Verdict)> = None;
    for n in 0..=bytes.len().min(2 + 2048) {
        let v = classify(&bytes[..n]);
        match (v, decided) {
            (Verdict::NeedMore { total }, None) => assert!(total > n, "NeedMore {total} with {n} bytes in"),
            (Verdict::NeedMore { .. }, Some((at, d))) => panic!("{d:?} at {at} bytes, then NeedMore at {n}"),
            (v, None) => {
                if let Verdict::IceTcp { len } = v {
                    assert!(2 + len <= n, "IceTcp frame of {len} with {n} bytes");
                }
                decided = Some((n, v));
            }
            (v, Some((at, d))) => assert_eq!(v, d, "verdict changed from {at} to {n} bytes"),
        }
    }
}

/// All frames of `stream` pushed in pieces of the given sizes (cycled), with the error that ended it.
fn frames(stream: &[u8], sizes: &[usize]) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut reader = FrameReader::new(MAX_FRAME);
    let mut out = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < stream.len() {
        let size = sizes
            .get(k % sizes.len().max(1))
            .copied()
            .unwrap_or(stream.len())
            .max(1);
        k += 1;
        let piece = &stream[at..(at + size).min(stream.len())];
        at += piece.len();
        reader.push(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => {
                    assert!(!f.is_empty() && f.len() <= MAX_FRAME);
                    out.push(f.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        assert!(
            reader.buffered() < HEADER_LEN + MAX_FRAME + piece.len(),
            "reader holds {} bytes",
            reader.buffered()
        );
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, stream)) = data.split_first() else {
        return;
    };
    check_classify(stream);
    let whole = frames(stream, &[]);
    let sizes: Vec<usize> = [1, 2, 3, 7, 64, 1500, 5, 4096]
        .iter()
        .enumerate()
        .filter(|(i, _)| shape & (1 << i) != 0)
        .map(|(_, &s)| s)
        .collect();
    let pieces = frames(stream, &sizes);
    assert_eq!(whole, pieces, "frames depend on how the stream was cut");
    // Re-encoded, the frames are the stream's prefix up to the last complete frame, zero-length frames aside.
    let mut encoded = Vec::new();
    for f in &whole.0 {
        encode_frame(f, &mut encoded).expect("a frame read fits a frame");
    }
    let mut stripped = Vec::new();
    let mut at = 0;
    while at + HEADER_LEN <= stream.len() {
        let len = usize::from(u16::from_be_bytes([stream[at], stream[at + 1]]));
        if len > MAX_FRAME || at + HEADER_LEN + len > stream.len() {
            break;
        }
        if len > 0 {
            stripped.extend_from_slice(&stream[at..at + HEADER_LEN + len]);
        }
        at += HEADER_LEN + len;
    }
    assert_eq!(encoded, stripped, "frames do not re-encode to the stream");
});
