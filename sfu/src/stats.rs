//! Per-shard IO counters: plain atomics on the packet path, read as a snapshot or exported to `metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing counter.
#[derive(Debug, Default)]
pub(crate) struct Count(AtomicU64);

impl Count {
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    pub(crate) fn add(&self, n: u64) {
        // Relaxed: each counter is independent and only ever read as an approximate snapshot.
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters one shard keeps.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    pub(crate) packets_in: Count,
    pub(crate) bytes_in: Count,
    pub(crate) packets_out: Count,
    pub(crate) bytes_out: Count,
    pub(crate) gso_sends: Count,
    pub(crate) mmsg_sends: Count,
    pub(crate) recv_errors: Count,
    pub(crate) send_errors: Count,
    pub(crate) send_dropped: Count,
    pub(crate) tcp_opened: Count,
    pub(crate) tcp_closed: Count,
    pub(crate) tcp_refused: Count,
    pub(crate) tcp_bad_frames: Count,
    pub(crate) tcp_packets_in: Count,
    pub(crate) tcp_bytes_in: Count,
    pub(crate) tcp_packets_out: Count,
    pub(crate) tcp_bytes_out: Count,
    pub(crate) tcp_send_dropped: Count,
}

/// A snapshot of one shard's IO counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStats {
    /// Datagrams received.
    pub packets_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Sends that carried several datagrams to one peer at once (GSO).
    pub gso_sends: u64,
    /// `sendmmsg` calls that carried datagrams to several peers at once.
    pub mmsg_sends: u64,
    /// Receive errors (e.g. ICMP unreachable reported on the socket).
    pub recv_errors: u64,
    /// Datagrams that failed to send.
    pub send_errors: u64,
    /// Datagrams dropped because the send queue was full.
    pub send_dropped: u64,
    /// ICE-TCP connections taken over.
    pub tcp_opened: u64,
    /// ICE-TCP connections closed (peer closed, failed, bad frame, idle).
    pub tcp_closed: u64,
    /// ICE-TCP connections refused (connection limit).
    pub tcp_refused: u64,
    /// ICE-TCP connections closed for a frame over the limit.
    pub tcp_bad_frames: u64,
    /// Frames received over ICE-TCP (not in `packets_in`).
    pub tcp_packets_in: u64,
    /// Bytes received over ICE-TCP, framing included.
    pub tcp_bytes_in: u64,
    /// Frames queued for ICE-TCP connections (not in `packets_out`).
    pub tcp_packets_out: u64,
    /// Bytes written to ICE-TCP connections, framing included.
    pub tcp_bytes_out: u64,
    /// Frames dropped because their connection's write backlog was full (a slow reader).
    pub tcp_send_dropped: u64,
}

impl ShardCounters {
    pub(crate) fn snapshot(&self) -> ShardStats {
        ShardStats {
            packets_in: self.packets_in.get(),
            bytes_in: self.bytes_in.get(),
            packets_out: self.packets_out.get(),
            bytes_out: self.bytes_out.get(),
            gso_sends: self.gso_sends.get(),
            mmsg_sends: self.mmsg_sends.get(),
            recv_errors: self.recv_errors.get(),
            send_errors: self.send_errors.get(),
            send_dropped: self.send_dropped.get(),
            tcp_opened: self.tcp_opened.get(),
            tcp_closed: self.tcp_closed.get(),
            tcp_refused: self.tcp_refused.get(),
            tcp_bad_frames: self.tcp_bad_frames.get(),
            tcp_packets_in: self.tcp_packets_in.get(),
            tcp_bytes_in: self.tcp_bytes_in.get(),
            tcp_packets_out: self.tcp_packets_out.get(),
            tcp_bytes_out: self.tcp_bytes_out.get(),
            tcp_send_dropped: self.tcp_send_dropped.get(),
        }
    }
}

impl ShardStats {
    /// Publishes the snapshot as `metrics` counters labelled with the shard index.
    pub fn export(&self, shard: usize) {
        let label = shard.to_string();
        let pairs: [(&'static str, u64); 18] = [
            ("relaydesk_sfu_packets_in_total", self.packets_in),
            ("relaydesk_sfu_bytes_in_total", self.bytes_in),
            ("relaydesk_sfu_packets_out_total", self.packets_out),
            ("relaydesk_sfu_bytes_out_total", self.bytes_out),
            ("relaydesk_sfu_gso_sends_total", self.gso_sends),
            ("relaydesk_sfu_mmsg_sends_total", self.mmsg_sends),
            ("relaydesk_sfu_recv_errors_total", self.recv_errors),
            ("relaydesk_sfu_send_errors_total", self.send_errors),
            ("relaydesk_sfu_send_dropped_total", self.send_dropped),
            ("relaydesk_sfu_tcp_opened_total", self.tcp_opened),
            ("relaydesk_sfu_tcp_closed_total", self.tcp_closed),
            ("relaydesk_sfu_tcp_refused_total", self.tcp_refused),
            ("relaydesk_sfu_tcp_bad_frames_total", self.tcp_bad_frames),
            ("relaydesk_sfu_tcp_packets_in_total", self.tcp_packets_in),
            ("relaydesk_sfu_tcp_bytes_in_total", self.tcp_bytes_in),
            ("relaydesk_sfu_tcp_packets_out_total", self.tcp_packets_out),
            ("relaydesk_sfu_tcp_bytes_out_total", self.tcp_bytes_out),
            ("relaydesk_sfu_tcp_send_dropped_total", self.tcp_send_dropped),
        ];
        for (name, value) in pairs {
            metrics::counter!(name, "shard" => label.clone()).absolute(value);
        }
    }
}
