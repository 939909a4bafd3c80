//! One shard: a thread with its own UDP socket, its own engine and its own rooms. The packet path takes
//! no lock: datagrams are read in batches (`recvmmsg`, GRO), fed to the engine, and the engine's transmits
//! are written in batches, coalescing runs of same-sized datagrams to one destination into one GSO send.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::sync::{mpsc, oneshot};

use relaydesk_sfu_core::Transport;

use crate::engine::{Engine, EngineOutput, Outgoing};
use crate::stats::ShardCounters;
use crate::tcp::{AdoptError, FIRST_TCP_TOKEN, Queued, ReadOutcome, TcpAdoption, TcpConns};

pub(crate) const SOCKET: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);

/// Largest datagram the SFU accepts or sends; anything longer is truncated by the kernel and dropped.
const MAX_DATAGRAM: usize = 2048;
/// Largest GSO super-datagram we build (the kernel's limit is 64 KiB of UDP payload).
const MAX_GSO_BYTES: usize = 60_000;
/// How often a shard publishes its figures to the `metrics` recorder.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// Datagrams to different peers sent by one `sendmmsg`.
const MAX_MMSG: usize = 32;
/// Receive batches read before commands and timers get a turn.
const MAX_BATCHES_PER_WAKE: usize = 16;

/// A message from the handle to a shard.
/// Where a shard sends the engine's answer to one command.
pub(crate) type ReplyTx<E> = oneshot::Sender<Result<<E as Engine>::Reply, <E as Engine>::Error>>;
/// Where the caller waits for it.
pub(crate) type ReplyRx<E> = oneshot::Receiver<Result<<E as Engine>::Reply, <E as Engine>::Error>>;

pub(crate) enum ShardMsg<E: Engine> {
    Command(E::Command, ReplyTx<E>),
    /// Does a participant with this ICE ufrag live here?
    OwnsUfrag(String, oneshot::Sender<bool>),
    /// Take over this ICE-TCP connection.
    AdoptTcp(TcpAdoption, oneshot::Sender<Result<(), AdoptError>>),
    Shutdown,
}

/// An engine event tagged with the shard it came from.
#[derive(Debug)]
pub struct ShardEvent<Ev> {
    /// Index of the shard.
    pub shard: usize,
    /// The engine's event.
    pub event: Ev,
}

pub(crate) struct Shard<E: Engine> {
    pub(crate) index: usize,
    pub(crate) engine: E,
    pub(crate) socket: UdpSocket,
    pub(crate) state: UdpSocketState,
    pub(crate) poll: Poll,
    pub(crate) commands: Receiver<ShardMsg<E>>,
    pub(crate) events: mpsc::UnboundedSender<ShardEvent<E::Event>>,
    /// The address the engine knows this socket by (the announced address).
    pub(crate) local: SocketAddr,
    pub(crate) counters: Arc<ShardCounters>,
    pub(crate) recv_batch: usize,
    pub(crate) max_pending: usize,
    pub(crate) tcp: TcpConns,
}

struct Io {
    bufs: Vec<Box<[u8]>>,
    metas: Vec<RecvMeta>,
    send: SendPath,
    want_writable: bool,
}

/// Whether a flush sent everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// The queue is empty.
    All,
    /// The socket's buffer is full; the rest waits for writability.
    WouldBlock,
}

/// The send half of the packet path: a bounded queue of datagrams and the GSO coalescing that empties it.
pub(crate) struct SendPath {
    pending: VecDeque<Outgoing>,
    gso_buf: Vec<u8>,
    max_segments: usize,
    max_pending: usize,
    /// Headers for `sendmmsg`, made on first use (they hold raw pointers, so they live on the shard's
    /// own thread only).
    mmsg: Option<MultiHeaders<SockaddrStorage>>,
    mmsg_addrs: Vec<Option<SockaddrStorage>>,
}

impl SendPath {
    pub(crate) fn new(max_segments: usize, max_pending: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            gso_buf: Vec::with_capacity(MAX_GSO_BYTES + MAX_DATAGRAM),
            max_segments: max_segments.max(1),
            max_pending: max_pending.max(1),
            mmsg: None,
            mmsg_addrs: Vec::with_capacity(MAX_MMSG),
        }
    }

    /// Queues a datagram; false (and nothing queued) when the queue is full.
    pub(crate) fn push(&mut self, out: Outgoing) -> bool {
        if self.pending.len() >= self.max_pending {
            return false;
        }
        self.pending.push_back(out);
        true
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends the queue. Datagrams are first grouped by destination (a stable sort keeps each destination's
    /// order; order across destinations carries no meaning), so that the packets of one batch to one peer
    /// (a video frame, say) leave as one GSO send when their sizes allow.
    pub(crate) fn flush(&mut self, socket: &UdpSocket, state: &UdpSocketState, counters: &ShardCounters) -> Flushed {
        if self.max_segments > 1 && self.pending.len() > 2 {
            self.pending.make_contiguous().sort_by_key(|o| o.destination);
        }
        while !self.pending.is_empty() {
            let (count, total) = self.gso_run(0);
            let result = if count > 1 {
                self.send_gso(socket, state, count)
            } else {
                // A datagram that cannot coalesce: batch it with the following ones that cannot either,
                // in one sendmmsg.
                let mut singles = 1;
                while singles < MAX_MMSG && singles < self.pending.len() && self.gso_run(singles).0 == 1 {
                    singles += 1;
                }
                if singles > 1 {
                    self.send_mmsg(socket, singles)
                } else {
                    self.send_gso(socket, state, 1)
                }
            };
            match result {
                Ok(sent) => {
                    let bytes = if sent == count {
                        total
                    } else {
                        self.pending.iter().take(sent).map(|o| o.contents.len()).sum()
                    };
                    counters.packets_out.add(sent as u64);
                    counters.bytes_out.add(bytes as u64);
                    if count > 1 {
                        counters.gso_sends.inc();
                    } else if sent > 1 {
                        counters.mmsg_sends.inc();
                    }
                    self.pending.drain(..sent);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Flushed::WouldBlock,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // One peer's address failing (unreachable, EPERM from a firewall) must not stop the
                    // others: drop the datagrams of this send (the first of a batch), count them, go on.
                    let destination = self.pending.front().map(|o| o.destination);
                    counters.send_errors.add(count as u64);
                    tracing::debug!(%err, ?destination, "send failed");
                    self.pending.drain(..count);
                }
            }
        }
        Flushed::All
    }

    /// Length and bytes of the GSO run starting at `start`: same destination, same size, except that the
    /// last one may be shorter.
    fn gso_run(&self, start: usize) -> (usize, usize) {
        let Some(first) = self.pending.get(start) else {
            return (0, 0);
        };
        let segment = first.contents.len();
        let (mut count, mut total) = (1, segment);
        if self.max_segments > 1 && segment > 0 {
            while count < self.max_segments {
                let Some(next) = self.pending.get(start + count) else {
                    break;
                };
                let len = next.contents.len();
                if next.destination != first.destination || len > segment || len == 0 || total + len > MAX_GSO_BYTES {
                    break;
                }
                count += 1;
                total += len;
                if len < segment {
                    break;
                }
            }
        }
        (count, total)
    }

    /// Sends the first `count` queued datagrams as one send (GSO when `count > 1`).
    fn send_gso(&mut self, socket: &UdpSocket, state: &UdpSocketState, count: usize) -> io::Result<usize> {
        let Some(first) = self.pending.front() else {
            return Ok(0);
        };
        let contents: &[u8] = if count == 1 {
            &first.contents
        } else {
            self.gso_buf.clear();
            for out in self.pending.iter().take(count) {
                self.gso_buf.extend_from_slice(&out.contents);
            }
            &self.gso_buf
        };
        let transmit = Transmit {
            destination: first.destination,
            ecn: None,
            contents,
            segment_size: (count > 1).then_some(first.contents.len()),
            src_ip: None,
        };
        state.try_send(UdpSockRef::from(socket), &transmit).map(|()| count)
    }

    /// Sends the first `count` queued datagrams (to different peers) with one `sendmmsg`; returns how many
    /// the kernel took (at least one, or an error for the first).
    fn send_mmsg(&mut self, socket: &UdpSocket, count: usize) -> io::Result<usize> {
        let count = count.min(MAX_MMSG);
        self.mmsg_addrs.clear();
        self.mmsg_addrs.extend(
            self.pending
                .iter()
                .take(count)
                .map(|o| Some(SockaddrStorage::from(o.destination))),
        );
        let slices: Vec<[IoSlice<'_>; 1]> = self
            .pending
            .iter()
            .take(count)
            .map(|o| [IoSlice::new(&o.contents)])
            .collect();
        let mmsg = self
            .mmsg
            .get_or_insert_with(|| MultiHeaders::preallocate(MAX_MMSG, None));
        match sendmmsg(
            socket.as_raw_fd(),
            mmsg,
            &slices,
            &self.mmsg_addrs,
            [],
            MsgFlags::empty(),
        ) {
            Ok(results) => Ok(results.count().max(1)),
            Err(errno) => Err(io::Error::from(errno)),
        }
    }
}

impl<E: Engine> Shard<E> {
    /// Runs until a shutdown message arrives or every handle is gone.
    pub(crate) fn run(mut self) {
        let span = tracing::info_span!("sfu_shard", shard = self.index, addr = %self.local);
        let _enter = span.enter();
        let gro = self.state.gro_segments().max(1);
        // Room for the largest UDP datagram, so nothing is silently truncated, and for GRO batches.
        let buf_len = (MAX_DATAGRAM * gro).max(65_536);
        let batch = self.recv_batch.max(1);
        let mut io = Io {
            bufs: (0..batch).map(|_| vec![0u8; buf_len].into_boxed_slice()).collect(),
            metas: vec![RecvMeta::default(); batch],
            send: SendPath::new(self.state.max_gso_segments(), self.max_pending),
            want_writable: false,
        };
        let mut events = Events::with_capacity(16);
        let mut next_timeout: Option<Instant> = None;
        let mut more_to_read = false;
        // TCP connections to read (readable, or left with bytes at the end of their budget).
        let mut tcp_more: Vec<Token> = Vec::new();
        let mut next_export = Instant::now();
        tracing::info!(gro, gso = self.state.max_gso_segments(), "shard started");

        loop {
            let wait = if more_to_read || !tcp_more.is_empty() {
                Some(Duration::ZERO)
            } else {
                let until = next_timeout.map_or(next_export, |t| t.min(next_export));
                Some(until.saturating_duration_since(Instant::now()))
            };
            if let Err(err) = self.poll.poll(&mut events, wait)
                && err.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(%err, "poll failed; shard stops");
                return;
            }
            let mut readable = false;
            let mut writable = false;
            let mut tcp_writable = Vec::new();
            for ev in events.iter() {
                if ev.token() == SOCKET {
                    readable |= ev.is_readable();
                    writable |= ev.is_writable();
                } else if ev.token().0 >= FIRST_TCP_TOKEN {
                    // Errors and hang-ups surface as a read that ends the connection.
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        tcp_more.push(ev.token());
                    }
                    if ev.is_writable() {
                        tcp_writable.push(ev.token());
                    }
                }
            }

            let now = Instant::now();
            // Commands first: a participant must be registered before its first STUN is read.
            loop {
                match self.commands.try_recv() {
                    Ok(ShardMsg::Command(cmd, reply)) => {
                        let result = self.engine.handle_command(now, cmd);
                        // The caller may have given up waiting; that is not the shard's concern.
                        let _ = reply.send(result);
                        next_timeout = self.drain(&mut io);
                    }
                    Ok(ShardMsg::OwnsUfrag(ufrag, reply)) => {
                        let _ = reply.send(self.engine.owns_ufrag(&ufrag));
                    }
                    Ok(ShardMsg::AdoptTcp(conn, reply)) => {
                        let result = self.adopt_tcp(conn, now, &mut tcp_more);
                        if result.is_ok() {
                            next_timeout = self.drain(&mut io);
                        }
                        let _ = reply.send(result);
                    }
                    Ok(ShardMsg::Shutdown) | Err(TryRecvError::Disconnected) => {
                        self.flush(&mut io);
                        tracing::info!("shard stopped");
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            if readable || more_to_read {
                let (more, timeout) = self.receive(&mut io, now);
                more_to_read = more;
                if let Some(timeout) = timeout {
                    next_timeout = timeout;
                }
            }
            for token in tcp_writable {
                self.tcp.writable(self.poll.registry(), token, &self.counters);
            }
            if !tcp_more.is_empty() {
                let tokens = std::mem::take(&mut tcp_more);
                for token in tokens {
                    if let Some(timeout) = self.receive_tcp(&mut io, token, now, &mut tcp_more) {
                        next_timeout = timeout;
                    }
                }
            }
            if next_timeout.is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
                next_timeout = self.drain(&mut io);
            }
            if writable || !io.send.is_empty() {
                self.flush(&mut io);
            }
            if now >= next_export {
                let idle = self.tcp.close_idle(self.poll.registry(), now);
                if idle > 0 {
                    self.counters.tcp_closed.add(idle as u64);
                    tracing::debug!(idle, "idle ICE-TCP connections closed");
                }
                metrics::gauge!("relaydesk_sfu_tcp_connections", "shard" => self.index.to_string())
                    .set(self.tcp.len() as f64);
                self.counters.snapshot().export(self.index);
                self.engine.export_metrics(self.index);
                next_export = now + METRICS_INTERVAL;
            }
        }
    }

    /// Reads datagrams until the socket would block (returns false) or a fair share of batches was read
    /// (returns true: more may wait; commands and timers get their turn first), handing each to the engine.
    /// The engine is drained after every batch; the last timeout it named is returned (outer `None`: no
    /// datagram was read, so the timeout is unchanged).
    fn receive(&mut self, io: &mut Io, now: Instant) -> (bool, Option<Option<Instant>>) {
        let mut timeout = None;
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let mut slices: Vec<IoSliceMut<'_>> = io.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let n = match self
                .state
                .recv(UdpSockRef::from(&self.socket), &mut slices, &mut io.metas)
            {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return (false, timeout),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // ICMP errors (e.g. port unreachable) surface here; they concern one peer only.
                    self.counters.recv_errors.inc();
                    tracing::debug!(%err, "recv error");
                    continue;
                }
            };
            drop(slices);
            for (meta, buf) in io.metas.iter().zip(io.bufs.iter()).take(n) {
                let len = meta.len.min(buf.len());
                let stride = if meta.stride == 0 { len.max(1) } else { meta.stride };
                for segment in buf[..len].chunks(stride) {
                    self.counters.packets_in.inc();
                    self.counters.bytes_in.add(segment.len() as u64);
                    self.engine
                        .handle_datagram(now, Transport::Udp, meta.addr, self.local, segment);
                }
            }
            timeout = Some(self.drain(io));
        }
        (true, timeout)
    }

    /// Polls the engine until it names its next timeout; queues transmits and forwards events.
    fn drain(&mut self, io: &mut Io) -> Option<Instant> {
        loop {
            match self.engine.poll_output() {
                EngineOutput::Transmit(out) => match out.proto {
                    Transport::Udp => {
                        if !io.send.push(out) {
                            self.counters.send_dropped.inc();
                        }
                    }
                    Transport::Tcp => match self.tcp.queue(out.destination, &out.contents) {
                        Queued::Yes => self.counters.tcp_packets_out.inc(),
                        Queued::BacklogFull | Queued::NoConnection => self.counters.tcp_send_dropped.inc(),
                    },
                },
                EngineOutput::Event(event) => {
                    // Events are low-rate control notices; if nobody listens any more, they are moot.
                    let _ = self.events.send(ShardEvent {
                        shard: self.index,
                        event,
                    });
                }
                EngineOutput::Timeout(t) => {
                    self.flush(io);
                    return t;
                }
            }
        }
    }

    /// Registers a TCP connection handed over by the listener and feeds its first frame to the engine.
    fn adopt_tcp(&mut self, conn: TcpAdoption, now: Instant, tcp_more: &mut Vec<Token>) -> Result<(), AdoptError> {
        let token = match self
            .tcp
            .adopt(self.poll.registry(), conn.stream, conn.peer, conn.local, now)
        {
            Ok(t) => t,
            Err(e) => {
                self.counters.tcp_refused.inc();
                return Err(e);
            }
        };
        self.counters.tcp_opened.inc();
        tracing::debug!(peer = %conn.peer, "ICE-TCP connection taken over");
        self.counters.tcp_packets_in.inc();
        self.engine
            .handle_datagram(now, Transport::Tcp, conn.peer, conn.local, &conn.first_frame);
        // Frames sent right behind the first may already wait in the socket.
        tcp_more.push(token);
        Ok(())
    }

    /// Reads one TCP connection (up to its budget) and feeds each complete frame to the engine, draining it
    /// after each; a frame over the limit or the end of the stream closes the connection. Returns the
    /// engine's last timeout when frames were fed; a connection left with unread bytes goes to `tcp_more`.
    fn receive_tcp(
        &mut self,
        io: &mut Io,
        token: Token,
        now: Instant,
        tcp_more: &mut Vec<Token>,
    ) -> Option<Option<Instant>> {
        let outcome = self.tcp.read(token, now, &self.counters);
        let (mut reader, peer, local) = self.tcp.take_reader(token)?;
        let mut timeout = None;
        let mut bad = false;
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    self.counters.tcp_packets_in.inc();
                    self.engine.handle_datagram(now, Transport::Tcp, peer, local, frame);
                    timeout = Some(self.drain(io));
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(%peer, %err, "bad ICE-TCP frame; closing the connection");
                    self.counters.tcp_bad_frames.inc();
                    bad = true;
                    break;
                }
            }
        }
        self.tcp.put_reader(token, reader);
        match outcome {
            ReadOutcome::Open { more } if !bad => {
                if more {
                    tcp_more.push(token);
                }
            }
            _ => {
                self.counters.tcp_closed.inc();
                self.tcp.close(self.poll.registry(), token);
            }
        }
        timeout
    }

    /// Sends queued datagrams, coalescing runs to one destination into GSO sends, and writes the TCP
    /// connections' new frames.
    fn flush(&mut self, io: &mut Io) {
        self.tcp.flush(self.poll.registry(), &self.counters);
        match io.send.flush(&self.socket, &self.state, &self.counters) {
            Flushed::All => self.set_writable_interest(io, false),
            Flushed::WouldBlock => self.set_writable_interest(io, true),
        }
    }

    fn set_writable_interest(&mut self, io: &mut Io, on: bool) {
        if io.want_writable == on {
            return;
        }
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match self.poll.registry().reregister(&mut self.socket, SOCKET, interest) {
            Ok(()) => io.want_writable = on,
            Err(err) => tracing::warn!(%err, "could not change socket interest"),
        }
    }
}

/// Creates the socket and poll of one shard.
pub(crate) fn open_socket(
    bind: SocketAddr,
    buffer_bytes: usize,
) -> io::Result<(UdpSocket, UdpSocketState, Poll, Waker)> {
    let std_socket = std::net::UdpSocket::bind(bind)?;
    std_socket.set_nonblocking(true)?;
    let mut socket = UdpSocket::from_std(std_socket);
    let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
    // Larger kernel buffers absorb bursts (a keyframe to many subscribers); failure only costs headroom.
    if let Err(err) = state.set_send_buffer_size(UdpSockRef::from(&socket), buffer_bytes) {
        tracing::debug!(%err, "could not set send buffer size");
    }
    if let Err(err) = state.set_recv_buffer_size(UdpSockRef::from(&socket), buffer_bytes) {
        tracing::debug!(%err, "could not set receive buffer size");
    }
    let poll = Poll::new()?;
    poll.registry().register(&mut socket, SOCKET, Interest::READABLE)?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    Ok((socket, state, poll, waker))
}

/// How long a shutdown waits for shards by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
