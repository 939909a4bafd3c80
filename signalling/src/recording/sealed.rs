//! The sealed stream a recording is written as: a streaming AEAD in the manner of the STREAM construction
//! (Hoang, Reyhanitabar, Rogaway, Vizár 2015), XChaCha20-Poly1305 under the recording's data key.
//!
//! ```text
//! file   = header chunk*
//! header = "RDSEAL01" (8 bytes) | nonce prefix (19 random bytes)
//! chunk  = length (u32 big-endian, of the ciphertext with its 16-byte tag) | ciphertext
//! nonce  = nonce prefix (19) | chunk index (u32 big-endian) | last flag (1 byte: 0, or 1 on the final chunk)
//! aad    = "relaydesk/recording/v1" | u32 length | recording id | header
//! ```
//!
//! Each chunk is authenticated on its own and bound to its position (index in the nonce) and to the
//! recording (id and header in the associated data): a chunk moved, swapped, dropped, or copied from another
//! recording fails to open; a stream cut at a chunk boundary lacks the chunk with the last flag and is
//! reported as incomplete. A writer that dies loses at most the chunk it was filling: every chunk before it is
//! on disk, sealed. Nothing in the file is readable without the key: no container signature, no codec header.

use std::io::Write;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};

use crate::archive_crypto::{DataKey, TAG_LEN};

/// The first bytes of a sealed recording.
pub const MAGIC: &[u8; 8] = b"RDSEAL01";
/// Length of the random nonce prefix.
pub const PREFIX_LEN: usize = 19;
/// Length of the header (magic and nonce prefix).
pub const HEADER_LEN: usize = MAGIC.len() + PREFIX_LEN;
/// Largest plaintext of one chunk.
pub const MAX_CHUNK: usize = 1 << 20;

/// What can go wrong with a sealed stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Writing the file failed.
    #[error("writing the recording failed: {0}")]
    Io(#[from] std::io::Error),
    /// The random generator failed.
    #[error("random generator failed")]
    Random,
    /// The file does not start with a sealed-recording header.
    #[error("not a sealed recording (bad header)")]
    BadHeader,
    /// A chunk failed authentication: wrong key, tampered, reordered or from another recording.
    #[error("chunk {0} failed authentication (tampered, reordered, or another recording's)")]
    Tampered(u32),
    /// A chunk declares a length beyond [`MAX_CHUNK`].
    #[error("chunk {0} has an impossible length")]
    BadLength(u32),
    /// Bytes follow the final chunk.
    #[error("data after the final chunk")]
    TrailingData,
    /// More chunks than a 32-bit index counts.
    #[error("too many chunks")]
    TooManyChunks,
    /// Encryption failed.
    #[error("encryption failed")]
    Encrypt,
}

fn aad(id: &str, header: &[u8]) -> Vec<u8> {
    let label = b"relaydesk/recording/v1";
    let mut aad = Vec::with_capacity(label.len() + 4 + id.len() + header.len());
    aad.extend_from_slice(label);
    aad.extend_from_slice(&u32::try_from(id.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(id.as_bytes());
    aad.extend_from_slice(header);
    aad
}

fn nonce(prefix: &[u8; PREFIX_LEN], index: u32, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..PREFIX_LEN].copy_from_slice(prefix);
    n[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&index.to_be_bytes());
    n[23] = u8::from(last);
    XNonce::from(n)
}

/// Writes a sealed stream: buffer plaintext with [`SealedWriter::write`], seal it as one chunk with
/// [`SealedWriter::seal_chunk`] (e.g. once a second), end with [`SealedWriter::finish`].
pub struct SealedWriter<W: Write> {
    cipher: XChaCha20Poly1305,
    prefix: [u8; PREFIX_LEN],
    aad: Vec<u8>,
    index: u32,
    buf: Vec<u8>,
    out: W,
}

impl<W: Write> std::fmt::Debug for SealedWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedWriter")
            .field("chunks", &self.index)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl<W: Write> SealedWriter<W> {
    /// Writes the header to `out` and returns the writer of recording `id` under `key`.
    ///
    /// # Errors
    /// [`SealError::Random`], [`SealError::Io`].
    pub fn new(key: &DataKey, id: &str, mut out: W) -> Result<Self, SealError> {
        let mut prefix = [0u8; PREFIX_LEN];
        getrandom::fill(&mut prefix).map_err(|_| SealError::Random)?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&prefix);
        out.write_all(&header)?;
        Ok(Self {
            cipher: key.cipher(),
            prefix,
            aad: aad(id, &header),
            index: 0,
            buf: Vec::new(),
            out,
        })
    }

    /// Buffers plaintext for the next chunk; a full chunk ([`MAX_CHUNK`]) is sealed at once.
    ///
    /// # Errors
    /// As [`SealedWriter::seal_chunk`].
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), SealError> {
        while !data.is_empty() {
            let room = MAX_CHUNK - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == MAX_CHUNK {
                self.seal_chunk()?;
            }
        }
        Ok(())
    }

    /// Bytes waiting for the next chunk.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Chunks written so far.
    pub fn chunks(&self) -> u32 {
        self.index
    }

    /// The underlying writer (to sync a file).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    fn emit(&mut self, last: bool) -> Result<(), SealError> {
        let n = nonce(&self.prefix, self.index, last);
        let sealed = self
            .cipher
            .encrypt(
                &n,
                Payload {
                    msg: &self.buf,
                    aad: &self.aad,
                },
            )
            .map_err(|_| SealError::Encrypt)?;
        let len = u32::try_from(sealed.len()).map_err(|_| SealError::Encrypt)?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&sealed)?;
        self.out.flush()?;
        self.buf.clear();
        self.index = self.index.checked_add(1).ok_or(SealError::TooManyChunks)?;
        Ok(())
    }

    /// Seals what is buffered as one chunk (nothing when the buffer is empty).
    ///
    /// # Errors
    /// [`SealError::Io`], [`SealError::TooManyChunks`], [`SealError::Encrypt`].
    pub fn seal_chunk(&mut self) -> Result<(), SealError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.emit(false)
    }

    /// Seals what is buffered as the final chunk (possibly empty) and returns the writer and the number of
    /// chunks written.
    ///
    /// # Errors
    /// As [`SealedWriter::seal_chunk`].
    pub fn finish(mut self) -> Result<(W, u32), SealError> {
        self.emit(true)?;
        Ok((self.out, self.index))
    }
}

/// Whole chunks in the sealed file `bytes` (without opening them): how far a writer got, e.g. in a file a
/// crash left.
pub fn count_chunks(bytes: &[u8]) -> usize {
    let mut at = HEADER_LEN;
    let mut n = 0;
    while let Some(len) = bytes.get(at..at + 4) {
        at += 4 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if at > bytes.len() {
            break;
        }
        n += 1;
    }
    n
}

/// A sealed stream opened.
#[derive(Debug)]
pub struct Opened {
    /// The plaintext of every chunk that opened, in order.
    pub data: Vec<u8>,
    /// Chunks opened.
    pub chunks: u32,
    /// Whether the final chunk was there. `false`: the writer stopped (a crash) or the file was cut.
    pub complete: bool,
}

/// Opens the sealed stream `bytes` of recording `id`. A cut tail (a partly written chunk, or no final chunk)
/// is not an error: what opened is returned with `complete: false`, and the caller decides (see
/// [`super::RecordingState`]).
///
/// # Errors
/// [`SealError::BadHeader`], [`SealError::Tampered`], [`SealError::BadLength`], [`SealError::TrailingData`].
pub fn open(key: &DataKey, id: &str, bytes: &[u8]) -> Result<Opened, SealError> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SealError::BadHeader);
    }
    let header = &bytes[..HEADER_LEN];
    let mut prefix = [0u8; PREFIX_LEN];
    prefix.copy_from_slice(&header[MAGIC.len()..]);
    let aad = aad(id, header);
    let cipher = key.cipher();
    let mut rest = &bytes[HEADER_LEN..];
    let mut out = Opened {
        data: Vec::new(),
        chunks: 0,
        complete: false,
    };
    while rest.len() >= 4 {
        let index = out.chunks;
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if !(TAG_LEN..=MAX_CHUNK + TAG_LEN).contains(&len) {
            return Err(SealError::BadLength(index));
        }
        let Some(sealed) = rest.get(4..4 + len) else {
            // A chunk cut by a crash mid-write.
            break;
        };
        let payload = |msg| Payload { msg, aad: &aad };
        let (plain, last) = match cipher.decrypt(&nonce(&prefix, index, false), payload(sealed)) {
            Ok(p) => (p, false),
            Err(_) => match cipher.decrypt(&nonce(&prefix, index, true), payload(sealed)) {
                Ok(p) => (p, true),
                Err(_) => return Err(SealError::Tampered(index)),
            },
        };
        out.data.extend_from_slice(&plain);
        out.chunks = index.checked_add(1).ok_or(SealError::TooManyChunks)?;
        rest = &rest[4 + len..];
        if last {
            if !rest.is_empty() {
                return Err(SealError::TrailingData);
            }
            out.complete = true;
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(chunks: &[&[u8]]) -> (DataKey, Vec<u8>) {
        let key = DataKey::generate().unwrap();
        let mut w = SealedWriter::new(&key, "7-1", Vec::new()).unwrap();
        for c in chunks {
            w.write(c).unwrap();
            w.seal_chunk().unwrap();
        }
        let (bytes, n) = w.finish().unwrap();
        assert_eq!(n as usize, chunks.len() + 1);
        (key, bytes)
    }

    /// Offsets of each chunk (its length prefix) in a sealed file.
    fn offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut at = HEADER_LEN;
        let mut v = Vec::new();
        while at < bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            v.push((at, 4 + len));
            at += 4 + len;
        }
        v
    }

    #[test]
    fn round_trip_and_no_plaintext() {
        let (key, bytes) = sealed(&[b"OpusHead one", b"two", b"\x1a\x45\xdf\xa3 webm"]);
        assert!(!bytes.windows(8).any(|w| w == b"OpusHead"));
        assert!(!bytes.windows(4).any(|w| w == b"\x1a\x45\xdf\xa3"));
        let o = open(&key, "7-1", &bytes).unwrap();
        assert_eq!(o.data, b"OpusHead onetwo\x1a\x45\xdf\xa3 webm");
        assert!(o.complete);
        assert_eq!(o.chunks, 4);
    }

    #[test]
    fn swapped_chunks_fail() {
        let (key, mut bytes) = sealed(&[b"aaaa", b"bbbb"]);
        let o = offsets(&bytes);
        // Both chunks have the same length: swap them.
        let (a, b) = (o[0], o[1]);
        assert_eq!(a.1, b.1);
        let first = bytes[a.0..a.0 + a.1].to_vec();
        let second = bytes[b.0..b.0 + b.1].to_vec();
        bytes[a.0..a.0 + a.1].copy_from_slice(&second);
        bytes[b.0..b.0 + b.1].copy_from_slice(&first);
        assert!(matches!(open(&key, "7-1", &bytes), Err(SealError::Tampered(0))));
    }

    #[test]
    fn dropped_chunk_fails() {
        let (key, bytes) = sealed(&[b"aaaa", b"bbbb", b"cccc"]);
        let o = offsets(&bytes);
        let mut cut = bytes[..o[1].0].to_vec();
        cut.extend_from_slice(&bytes[o[2].0..]);
        assert!(matches!(open(&key, "7-1", &cut), Err(SealError::Tampered(1))));
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let (key, bytes) = sealed(&[b"hello", b"world"]);
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            // A flip either fails, or (in the length of the final chunk) makes the stream look cut: never a
            // complete stream with other bytes.
            match open(&key, "7-1", &t) {
                Err(_) => {}
                Ok(o) => assert!(!o.complete, "flip at {i} opened as complete"),
            }
        }
    }

    #[test]
    fn truncation_keeps_sealed_chunks_and_says_incomplete() {
        let (key, bytes) = sealed(&[b"aaaa", b"bbbb"]);
        let o = offsets(&bytes);
        // Cut at a chunk boundary (the final chunk missing), and inside a chunk.
        for cut in [o[2].0, o[2].0 + 3, o[1].0 + 10] {
            let opened = open(&key, "7-1", &bytes[..cut]).unwrap();
            assert!(!opened.complete, "cut at {cut}");
            let want: &[u8] = if cut > o[2].0 - 1 { b"aaaabbbb" } else { b"aaaa" };
            assert_eq!(opened.data, want, "cut at {cut}");
        }
    }

    #[test]
    fn other_recording_or_key_fails_and_trailing_data_is_refused() {
        let (key, bytes) = sealed(&[b"aaaa"]);
        assert!(matches!(open(&key, "7-2", &bytes), Err(SealError::Tampered(0))));
        let other = DataKey::generate().unwrap();
        assert!(matches!(open(&other, "7-1", &bytes), Err(SealError::Tampered(0))));
        let mut extra = bytes.clone();
        extra.extend_from_slice(&bytes[HEADER_LEN..]);
        assert!(matches!(open(&key, "7-1", &extra), Err(SealError::TrailingData)));
        assert!(matches!(open(&key, "7-1", b"RDSEAL0"), Err(SealError::BadHeader)));
    }
}
