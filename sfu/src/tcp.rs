//! The ICE-TCP connections of one shard (RFC 6544, framed as RFC 4571): non-blocking streams on the shard's
//! own `mio` poll, each with a frame reader and a bounded write backlog.
//!
//! A connection only ever concerns its own participant: a peer that reads slowly fills its own backlog, and
//! what does not fit is dropped (counted), so the shard never waits on it; a peer that sends a frame over
//! the limit, closes, or stays silent longer than the idle timeout is closed without touching the others.

use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use relaydesk_sfu_core::framing::{self, FrameReader};

use crate::stats::ShardCounters;

/// Tokens from here on are TCP connections (0 and 1 are the UDP socket and the waker).
pub(crate) const FIRST_TCP_TOKEN: usize = 2;
/// Bytes read from one connection per readiness before the others get their turn.
const READ_BUDGET: usize = 64 * 1024;
/// A backlog whose sent prefix grows past this is compacted.
const COMPACT_AT: usize = 64 * 1024;

/// A TCP connection handed to the driver (by the HTTPS listener, after its first frame).
#[derive(Debug)]
pub struct TcpAdoption {
    /// The connection; it is put in non-blocking mode.
    pub stream: std::net::TcpStream,
    /// The browser's address (the participant's remote address on TCP).
    pub peer: SocketAddr,
    /// Our address it connected to.
    pub local: SocketAddr,
    /// The payload of the first RFC 4571 frame, already read from the stream (a STUN Binding request).
    pub first_frame: Vec<u8>,
}

/// Why the driver did not take a TCP connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    /// The first frame is not a STUN message with a USERNAME.
    #[error("the first frame carries no ICE username")]
    NoUsername,
    /// No shard has a participant with that ICE username fragment.
    #[error("no participant has this ICE username fragment")]
    UnknownUser,
    /// The owning shard holds its maximum of TCP connections.
    #[error("too many ICE-TCP connections")]
    TooMany,
    /// The shard has stopped.
    #[error("the SFU shard has stopped")]
    ShardStopped,
    /// The stream could not be set up (non-blocking mode, registration).
    #[error("cannot set up the TCP connection: {0}")]
    Io(#[from] io::Error),
}

/// Limits of a shard's TCP connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpLimits {
    pub(crate) max_connections: usize,
    pub(crate) max_backlog: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) send_buffer: usize,
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    reader: FrameReader,
    /// Framed bytes waiting for the socket; `out[sent..]` is still to go.
    out: Vec<u8>,
    sent: usize,
    /// Listed in `to_flush`.
    flush_listed: bool,
    last_read: Instant,
}

impl Conn {
    fn backlog(&self) -> usize {
        self.out.len() - self.sent
    }
}

/// What happened to a transmit handed to [`TcpConns::queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    Yes,
    /// The connection's backlog is full (a slow reader): dropped.
    BacklogFull,
    /// No connection to that address (closed meanwhile).
    NoConnection,
}

/// The outcome of reading one connection.
pub(crate) enum ReadOutcome {
    /// Bytes were read (maybe none); `more`: the budget ran out, read it again soon.
    Open { more: bool },
    /// The peer closed, or the connection failed: it is gone.
    Closed,
}

/// All TCP connections of one shard.
pub(crate) struct TcpConns {
    conns: HashMap<Token, Conn>,
    by_peer: HashMap<SocketAddr, Token>,
    next: usize,
    limits: TcpLimits,
    to_flush: Vec<Token>,
    scratch: Box<[u8]>,
}

impl TcpConns {
    pub(crate) fn new(limits: TcpLimits) -> Self {
        Self {
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            next: FIRST_TCP_TOKEN,
            limits,
            to_flush: Vec::new(),
            scratch: vec![0u8; READ_BUDGET].into_boxed_slice(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Registers a new connection; its token.
    pub(crate) fn adopt(
        &mut self,
        registry: &Registry,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        now: Instant,
    ) -> Result<Token, AdoptError> {
        if self.conns.len() >= self.limits.max_connections {
            return Err(AdoptError::TooMany);
        }
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        // A small kernel send buffer keeps the latency of a slow path low: what does not fit waits in our
        // bounded backlog, where the newest packets are dropped rather than queued for seconds.
        let size = self.limits.send_buffer;
        if let Err(err) = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::SndBuf, &size) {
            tracing::debug!(%err, "could not set TCP send buffer size");
        }
        let mut stream = TcpStream::from_std(stream);
        // Tokens are never reused while the shard lives (a u64-sized counter does not wrap in practice).
        let token = Token(self.next);
        self.next = self.next.wrapping_add(1).max(FIRST_TCP_TOKEN);
        // Edge-triggered readable and writable: a writable edge tells when a full backlog can move again.
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        if let Some(old) = self.by_peer.insert(peer, token) {
            // The same remote address twice cannot happen on one live TCP connection; the old one is stale.
            self.close(registry, old);
            self.by_peer.insert(peer, token);
        }
        self.conns.insert(
            token,
            Conn {
                stream,
                peer,
                local,
                reader: FrameReader::new(framing::DEFAULT_MAX_FRAME),
                out: Vec::new(),
                sent: 0,
                flush_listed: false,
                last_read: now,
            },
        );
        Ok(token)
    }

    /// Closes a connection (deregistering it); no-op if gone.
    pub(crate) fn close(&mut self, registry: &Registry, token: Token) {
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = registry.deregister(&mut c.stream);
            if self.by_peer.get(&c.peer) == Some(&token) {
                self.by_peer.remove(&c.peer);
            }
        }
    }

    /// Frames `contents` onto the connection whose peer is `destination`, unless its backlog is full.
    pub(crate) fn queue(&mut self, destination: SocketAddr, contents: &[u8]) -> Queued {
        let Some(token) = self.by_peer.get(&destination).copied() else {
            return Queued::NoConnection;
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return Queued::NoConnection;
        };
        if c.backlog() + framing::HEADER_LEN + contents.len() > self.limits.max_backlog {
            return Queued::BacklogFull;
        }
        if framing::encode_frame(contents, &mut c.out).is_err() {
            return Queued::BacklogFull;
        }
        if !c.flush_listed {
            c.flush_listed = true;
            self.to_flush.push(token);
        }
        Queued::Yes
    }

    /// Writes every backlog that got new bytes; a connection whose socket is full waits for its writable
    /// edge ([`TcpConns::writable`]).
    pub(crate) fn flush(&mut self, registry: &Registry, counters: &ShardCounters) {
        while let Some(token) = self.to_flush.pop() {
            if let Some(c) = self.conns.get_mut(&token) {
                c.flush_listed = false;
            }
            self.write(registry, token, counters);
        }
    }

    /// The socket of `token` may take bytes again.
    pub(crate) fn writable(&mut self, registry: &Registry, token: Token, counters: &ShardCounters) {
        self.write(registry, token, counters);
    }

    fn write(&mut self, registry: &Registry, token: Token, counters: &ShardCounters) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let mut failed = false;
        while c.sent < c.out.len() {
            match c.stream.write(&c.out[c.sent..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.sent += n;
                    counters.tcp_bytes_out.add(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(peer = %c.peer, error = %e, "ICE-TCP write failed");
                    failed = true;
                    break;
                }
            }
        }
        if c.sent == c.out.len() {
            c.out.clear();
            c.sent = 0;
        } else if c.sent >= COMPACT_AT {
            c.out.drain(..c.sent);
            c.sent = 0;
        }
        if failed {
            counters.tcp_closed.inc();
            self.close(registry, token);
        }
    }

    /// Reads what `token` has (up to the budget) into its frame reader.
    /// A [`ReadOutcome::Closed`] connection is still registered: the caller feeds the frames read before
    /// the end, then closes it.
    pub(crate) fn read(&mut self, token: Token, now: Instant, counters: &ShardCounters) -> ReadOutcome {
        let Some(c) = self.conns.get_mut(&token) else {
            return ReadOutcome::Closed;
        };
        let mut total = 0;
        let outcome = loop {
            let room = READ_BUDGET - total;
            if room == 0 {
                break ReadOutcome::Open { more: true };
            }
            match c.stream.read(&mut self.scratch[..room]) {
                Ok(0) => break ReadOutcome::Closed,
                Ok(n) => {
                    total += n;
                    c.reader.push(&self.scratch[..n]);
                    c.last_read = now;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break ReadOutcome::Open { more: false },
                Err(e) => {
                    tracing::debug!(peer = %c.peer, error = %e, "ICE-TCP read failed");
                    break ReadOutcome::Closed;
                }
            }
        };
        counters.tcp_bytes_in.add(total as u64);
        outcome
    }

    /// Takes the frame reader of `token` out (with the connection's addresses), so frames can be fed to the
    /// engine while transmits are queued here; give it back with [`TcpConns::put_reader`].
    pub(crate) fn take_reader(&mut self, token: Token) -> Option<(FrameReader, SocketAddr, SocketAddr)> {
        let c = self.conns.get_mut(&token)?;
        Some((std::mem::take(&mut c.reader), c.peer, c.local))
    }

    /// Gives a reader back (dropped if the connection closed meanwhile).
    pub(crate) fn put_reader(&mut self, token: Token, reader: FrameReader) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.reader = reader;
        }
    }

    /// Closes connections silent for longer than the idle timeout (a live ICE-TCP peer sends consent
    /// checks every few seconds); returns how many.
    pub(crate) fn close_idle(&mut self, registry: &Registry, now: Instant) -> usize {
        let timeout = self.limits.idle_timeout;
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_read) > timeout)
            .map(|(t, _)| *t)
            .collect();
        for t in &idle {
            self.close(registry, *t);
        }
        idle.len()
    }
}
