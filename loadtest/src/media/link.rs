//! How a driven peer reaches the server: its UDP socket, or its ICE-TCP connection with RFC 4571 framing.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Token};
use relaydesk_sfu::core::framing::{self, FrameReader};

/// How a driven peer reaches the server.
pub(super) enum Link {
    Udp(UdpSocket),
    Tcp(TcpLink),
}

impl Link {
    /// Stops polling this peer's socket (the peer is gone).
    pub(super) fn deregister(&mut self, registry: &mio::Registry) {
        let _ = match self {
            Link::Udp(s) => registry.deregister(s),
            Link::Tcp(TcpLink { stream: Some(s), .. }) => registry.deregister(s),
            Link::Tcp(_) => Ok(()),
        };
    }

    /// Polls this peer's socket under a new token (the peer moved to another index).
    pub(super) fn reregister(&mut self, registry: &mio::Registry, token: Token) -> std::io::Result<()> {
        match self {
            Link::Udp(s) => registry.reregister(s, token, Interest::READABLE),
            Link::Tcp(TcpLink { stream: Some(s), .. }) => {
                registry.reregister(s, token, Interest::READABLE | Interest::WRITABLE)
            }
            Link::Tcp(_) => Ok(()),
        }
    }
}

/// An ICE-TCP peer's connection: opened on the first transmit, RFC 4571 frames both ways.
#[derive(Default)]
pub(super) struct TcpLink {
    stream: Option<TcpStream>,
    /// The server's passive candidate, once connected.
    pub(super) remote: Option<SocketAddr>,
    reader: FrameReader,
    /// Framed bytes not yet taken by the socket.
    out: Vec<u8>,
    broken: bool,
}

/// Bytes an ICE-TCP peer queues while its socket is full; beyond that it drops (as the server does).
const TCP_BACKLOG: usize = 1 << 20;

impl TcpLink {
    /// Frames `packet` to `to`, connecting first if this is the first transmit. False: not sent.
    pub(super) fn send(&mut self, registry: &mio::Registry, token: Token, to: SocketAddr, packet: &[u8]) -> bool {
        if self.broken {
            return false;
        }
        if self.remote.is_some_and(|r| r != to) {
            // One passive candidate per server: a second destination is not one we connect to.
            return false;
        }
        if self.stream.is_none() {
            let stream = match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, %to, "ICE-TCP connect failed");
                    self.broken = true;
                    return false;
                }
            };
            let _ = stream.set_nodelay(true);
            if stream.set_nonblocking(true).is_err() {
                self.broken = true;
                return false;
            }
            let mut stream = TcpStream::from_std(stream);
            if registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                self.broken = true;
                return false;
            }
            self.stream = Some(stream);
            self.remote = Some(to);
        }
        if self.out.len() + packet.len() + 2 > TCP_BACKLOG || framing::encode_frame(packet, &mut self.out).is_err() {
            return false;
        }
        self.write();
        true
    }

    /// Writes what the socket takes.
    pub(super) fn write(&mut self) {
        let Some(stream) = self.stream.as_mut() else { return };
        let mut sent = 0;
        while sent < self.out.len() {
            match std::io::Write::write(stream, &self.out[sent..]) {
                Ok(0) => {
                    self.broken = true;
                    break;
                }
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
        self.out.drain(..sent);
    }

    /// Reads what arrived; returns the complete frames.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let Some(stream) = self.stream.as_mut() else {
            return frames;
        };
        loop {
            match std::io::Read::read(stream, buf) {
                Ok(0) => {
                    self.broken = true;
                    break;
                }
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
        loop {
            match self.reader.next_frame() {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
        frames
    }
}
