//! The driver's send path on its own, for benchmarks that set it beside plain sends of the same packets.
//! Not a stable API.

use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;
use quinn_udp::{UdpSockRef, UdpSocketState};

use crate::engine::Outgoing;
use crate::shard::{Flushed, SendPath};
use crate::stats::{ShardCounters, ShardStats};

/// A socket with the driver's send path (destination grouping and GSO coalescing).
pub struct SendBench {
    socket: UdpSocket,
    state: UdpSocketState,
    path: SendPath,
    counters: ShardCounters,
}

impl SendBench {
    /// Binds a socket as a shard does.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let std_socket = std::net::UdpSocket::bind(addr)?;
        std_socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std_socket);
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let path = SendPath::new(state.max_gso_segments(), usize::MAX);
        Ok(Self {
            socket,
            state,
            path,
            counters: ShardCounters::default(),
        })
    }

    /// Datagrams one send may carry.
    pub fn gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Queues and sends `batch` the way a shard does after draining its engine; returns false if the
    /// socket's buffer filled up before everything left (the rest stays queued).
    pub fn send(&mut self, batch: impl IntoIterator<Item = Outgoing>) -> bool {
        for out in batch {
            self.path.push(out);
        }
        self.path.flush(&self.socket, &self.state, &self.counters) == Flushed::All
    }

    /// Counters so far.
    pub fn stats(&self) -> ShardStats {
        self.counters.snapshot()
    }
}
