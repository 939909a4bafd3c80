//! The file transfer on the RelayDesk SFU's `file` data channel: what is in flight each way and the content sent.

use std::time::{Duration, Instant};

use sha2::Sha256;

/// A file being sent: its bytes and how far the channel has taken them.
pub(super) struct FileOut {
    pub(super) data: Vec<u8>,
    pub(super) offset: usize,
    /// The header, until written.
    pub(super) header: Option<String>,
    pub(super) start_at: Instant,
    pub(super) done: bool,
}

/// How long after its file channel opens a peer waits before sending its file.
pub(super) const FILE_START_DELAY: Duration = Duration::from_secs(1);

/// A file being received: what its header promised and the hash so far.
pub(super) struct FileIn {
    pub(super) size: u64,
    pub(super) sha256: String,
    pub(super) got: u64,
    pub(super) hasher: Sha256,
}

/// Label of the RelayDesk SFU's file-transfer data channel (see `relaydesk_sfu::core::wire`).
pub const FILE_LABEL: &str = "file";
/// Bytes per binary message of a file (the SFU's default chunk limit).
pub(super) const FILE_CHUNK: usize = 16 * 1024;

/// Deterministic file content of `size` bytes.
pub(super) fn file_bytes(size: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
