//! Helpers shared by the fuzz targets in `src/bin/` (one file per target; see docs/RELIABILITY.md).
//!
//! A target panics only when it finds a bug: a panic in the code under test, or a property of its output
//! that does not hold. Every input that made one panic is replayed by a `#[test]` in the crate it concerns.

/// The input as text, as a WebSocket text frame or a UTF-8 file would be; `None` for invalid UTF-8, which
/// the layers before the parsers already refuse (tungstenite for frames, `read_to_string` for files).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The longest run of ASCII digits in `s`.
pub fn longest_digit_run(s: &str) -> usize {
    let mut best = 0;
    let mut run = 0;
    for b in s.bytes() {
        if b.is_ascii_digit() {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}
