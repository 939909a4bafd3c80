//! The engine's figures: [`MediaSnapshot`], what one shard counted or all of them together.

use hdrhistogram::Histogram;

use crate::stats::new_histogram;

/// Figures of the whole engine at one moment (cumulative unless said otherwise).
#[derive(Debug, Clone)]
pub struct MediaSnapshot {
    /// Peers handed to the engine.
    pub peers: u64,
    /// Peers whose ICE and DTLS completed.
    pub connected: u64,
    /// Peers that disconnected or failed after being added.
    pub failed: u64,
    /// Peers that received at least one stamped packet.
    pub receiving: u64,
    /// RTP packets written by our senders.
    pub packets_sent: u64,
    /// Stamped RTP packets received.
    pub packets_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Packets expected from sequence ranges, summed over streams.
    pub expected: u64,
    /// Packets lost (gaps), summed over streams.
    pub lost: u64,
    /// Mean RFC 3550 jitter over streams, in ms.
    pub jitter_ms: f64,
    /// NACKs our receivers sent.
    pub nacks_sent: u64,
    /// NACKs our senders received.
    pub nacks_received: u64,
    /// Keyframe requests (PLI/FIR) our senders received.
    pub keyframe_requests: u64,
    /// Datagrams the kernel refused to send (buffer full).
    pub send_drops: u64,
    /// Files received whole with the SHA-256 of their header.
    pub files_ok: u64,
    /// Files that arrived damaged, were aborted, or were refused (must be 0).
    pub file_failures: u64,
    /// End-to-end latency of every received packet (µs).
    pub latency: Histogram<u64>,
    /// Time from a peer's creation to its first received packet (µs).
    pub first_media: Histogram<u64>,
    /// Time from a peer's creation to connected (µs).
    pub connect_time: Histogram<u64>,
    /// How late scheduled sends were (µs): the generator's own bottleneck indicator.
    pub send_lateness: Histogram<u64>,
}

impl MediaSnapshot {
    pub(super) fn empty() -> Self {
        MediaSnapshot {
            peers: 0,
            connected: 0,
            failed: 0,
            receiving: 0,
            packets_sent: 0,
            packets_received: 0,
            bytes_received: 0,
            expected: 0,
            lost: 0,
            jitter_ms: 0.0,
            nacks_sent: 0,
            nacks_received: 0,
            keyframe_requests: 0,
            send_drops: 0,
            files_ok: 0,
            file_failures: 0,
            latency: new_histogram(),
            first_media: new_histogram(),
            connect_time: new_histogram(),
            send_lateness: new_histogram(),
        }
    }

    pub(super) fn merge(&mut self, o: &MediaSnapshot) {
        self.peers += o.peers;
        self.connected += o.connected;
        self.failed += o.failed;
        self.receiving += o.receiving;
        self.packets_sent += o.packets_sent;
        self.packets_received += o.packets_received;
        self.bytes_received += o.bytes_received;
        self.expected += o.expected;
        self.lost += o.lost;
        self.nacks_sent += o.nacks_sent;
        self.nacks_received += o.nacks_received;
        self.keyframe_requests += o.keyframe_requests;
        self.send_drops += o.send_drops;
        self.files_ok += o.files_ok;
        self.file_failures += o.file_failures;
        let _ = self.latency.add(&o.latency);
        let _ = self.first_media.add(&o.first_media);
        let _ = self.connect_time.add(&o.connect_time);
        let _ = self.send_lateness.add(&o.send_lateness);
    }

    /// Loss as a fraction of expected packets (0 when nothing was expected).
    pub fn loss_fraction(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}
