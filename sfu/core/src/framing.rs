//! RFC 4571 framing of ICE-TCP connections (RFC 6544): each packet (STUN, DTLS, SRTP, SRTCP) travels as a
//! 2-byte big-endian length followed by that many bytes. Sans-IO: the embedder reads bytes into a
//! [`FrameReader`] and writes what [`encode_frame`] appends.
//!
//! Hostile input is bounded: a frame longer than the reader's limit is an error (the embedder closes the
//! connection), the reader never holds more than one incomplete frame plus what was pushed in one call, and a
//! zero-length frame (meaningless: no packet is empty) is skipped and counted.

/// Length of the RFC 4571 header.
pub const HEADER_LEN: usize = 2;

/// The largest frame this side accepts by default: the core drops any packet longer than this anyway.
pub const DEFAULT_MAX_FRAME: usize = 2048;

/// Why a byte stream is not a valid RFC 4571 stream for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced more bytes than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A packet to send does not fit the 16-bit length.
    #[error("packet of {0} bytes does not fit an RFC 4571 frame")]
    TooLong(usize),
}

/// Appends `packet` to `out` as one RFC 4571 frame.
pub fn encode_frame(packet: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u16::try_from(packet.len()).map_err(|_| FrameError::TooLong(packet.len()))?;
    out.reserve(HEADER_LEN + packet.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

/// Reassembles frames from the bytes of one TCP connection, in whatever pieces they arrive.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    max_frame: usize,
    zero_length: u64,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameReader {
    /// A reader refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame,
            zero_length: 0,
        }
    }

    /// Appends bytes read from the connection. Consumed bytes are dropped first, so the buffer stays within
    /// one incomplete frame plus `data`.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame's payload, `Ok(None)` when more bytes are needed, or an error for a frame
    /// longer than the limit (the stream cannot be resynchronised: close the connection). Zero-length frames
    /// are skipped.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        loop {
            let rest = &self.buf[self.start..];
            let Some(header) = rest.get(..HEADER_LEN) else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
            if len > self.max_frame {
                return Err(FrameError::Oversized {
                    len,
                    max: self.max_frame,
                });
            }
            if len == 0 {
                self.start += HEADER_LEN;
                self.zero_length += 1;
                continue;
            }
            if rest.len() < HEADER_LEN + len {
                return Ok(None);
            }
            let from = self.start + HEADER_LEN;
            self.start = from + len;
            return Ok(self.buf.get(from..from + len));
        }
    }

    /// Bytes held that do not yet form a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Zero-length frames skipped so far.
    pub fn zero_length_frames(&self) -> u64 {
        self.zero_length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(r: &mut FrameReader) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = r.next_frame()? {
            out.push(f.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn round_trip_in_every_split() {
        let packets: Vec<Vec<u8>> = vec![vec![1; 20], vec![2; 1], vec![3; 300], vec![4; 2048]];
        let mut wire = Vec::new();
        for p in &packets {
            encode_frame(p, &mut wire).expect("fits");
        }
        // Every cut point, and byte-by-byte: the same frames come out.
        for cut in 0..=wire.len() {
            let mut r = FrameReader::default();
            r.push(&wire[..cut]);
            let mut got = frames(&mut r).expect("valid");
            r.push(&wire[cut..]);
            got.extend(frames(&mut r).expect("valid"));
            assert_eq!(got, packets, "cut at {cut}");
            assert_eq!(r.buffered(), 0);
        }
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        for b in &wire {
            r.push(std::slice::from_ref(b));
            got.extend(frames(&mut r).expect("valid"));
            assert!(r.buffered() <= HEADER_LEN + 2048);
        }
        assert_eq!(got, packets);
    }

    #[test]
    fn partial_frame_waits() {
        let mut r = FrameReader::default();
        r.push(&[0x00]);
        assert_eq!(r.next_frame(), Ok(None));
        r.push(&[0x03, 9, 9]);
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.buffered(), 4);
        r.push(&[9, 7]);
        assert_eq!(r.next_frame(), Ok(Some(&[9u8, 9, 9][..])));
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.buffered(), 1);
    }

    #[test]
    fn oversized_frame_is_an_error_before_its_body_arrives() {
        let mut r = FrameReader::new(100);
        r.push(&[0x00, 101]);
        assert_eq!(r.next_frame(), Err(FrameError::Oversized { len: 101, max: 100 }));
        // Plain HTTP on the port reads as an absurd length ("GE" = 0x4745).
        let mut r = FrameReader::default();
        r.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(r.next_frame(), Err(FrameError::Oversized { len: 0x4745, .. })));
        // Exactly the limit is fine.
        let mut r = FrameReader::new(3);
        r.push(&[0, 3, 1, 2, 3]);
        assert_eq!(r.next_frame(), Ok(Some(&[1u8, 2, 3][..])));
    }

    #[test]
    fn zero_length_frames_are_skipped_and_counted() {
        let mut r = FrameReader::default();
        r.push(&[0, 0, 0, 0, 0, 1, 42, 0, 0]);
        assert_eq!(r.next_frame(), Ok(Some(&[42u8][..])));
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.zero_length_frames(), 3);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let mut out = Vec::new();
        assert_eq!(
            encode_frame(&vec![0; 65_536], &mut out),
            Err(FrameError::TooLong(65_536))
        );
        assert!(out.is_empty());
        encode_frame(&vec![5; 65_535], &mut out).expect("fits");
        assert_eq!(&out[..2], &[0xFF, 0xFF]);
    }
}
