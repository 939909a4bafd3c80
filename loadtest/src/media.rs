//! The target-independent media engine: many str0m clients (RTP mode) sharded over a few threads.
//!
//! Each [`Peer`] is one peer connection with its own UDP socket (a forwarder answers every client from
//! one address, so the local port is what tells clients apart), or, made with [`Peer::new_tcp`], with
//! only an active ICE-TCP candidate: it connects to the server's passive TCP candidate on its first
//! transmit and frames every packet as RFC 4571 on that one connection. A target negotiates the peer (offer or
//! answer through its own signalling) and hands it to [`MediaEngine::add`]; from then on a shard thread
//! drives it: reads its socket, fires its timers, sends audio (20 ms Opus-sized packets) and video
//! (VP8-sized frames at a target bitrate, keyframes on interval and on request) with a [`Stamp`] in every
//! payload, and measures what it receives: latency, loss from sequence gaps, jitter, NACK and keyframe
//! request counts, time to first media.
//!
//! Call order: [`MediaEngine::start`], then [`MediaEngine::add`] for each negotiated peer (any time) and
//! [`MediaEngine::remove`] for a peer whose conversation ended,
//! [`MediaEngine::snapshot`] as often as wanted, and [`MediaEngine::stop`] once.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use relaydesk_sfu::core::framing::{self, FrameReader};
use sha2::{Digest, Sha256};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::stats::{Stamp, StreamKind, StreamStats, epoch, micros_since_epoch, new_histogram, record_clamped};

/// Errors of the media engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// A socket could not be created or registered.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// str0m refused an SDP or an operation.
    #[error("WebRTC: {0}")]
    Rtc(String),
    /// A shard thread is gone.
    #[error("a media shard thread stopped")]
    ShardGone,
}

/// What every sending peer sends.
#[derive(Debug, Clone, Copy)]
pub struct MediaConfig {
    /// Send audio (Opus-sized, 20 ms).
    pub audio: bool,
    /// Send video (VP8-sized frames).
    pub video: bool,
    /// Video bitrate target in kbit/s.
    pub video_kbps: u32,
    /// Frames per second.
    pub fps: u32,
    /// A keyframe at least this often.
    pub keyframe_interval: Duration,
    /// Audio payload bytes per 20 ms packet.
    pub audio_bytes: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            audio: true,
            video: true,
            video_kbps: 500,
            fps: 30,
            keyframe_interval: Duration::from_secs(2),
            audio_bytes: 100,
        }
    }
}

/// Largest RTP payload of a video packet.
const VIDEO_MTU_PAYLOAD: usize = 1100;

/// One peer connection of a simulated participant, before it is handed to the engine.
pub struct Peer {
    rtc: Rtc,
    /// The UDP socket; `None` for an ICE-TCP peer (its connection opens on the first transmit).
    socket: Option<std::net::UdpSocket>,
    local: SocketAddr,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    sends: bool,
    created: Instant,
    file_channel: bool,
    file_send: Option<u64>,
}

impl Peer {
    /// A peer with a fresh UDP socket on `ip` (port chosen by the system), offering only Opus and VP8.
    pub fn new(ip: IpAddr) -> Result<Peer, MediaError> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let cand = Candidate::host(local, "udp").map_err(|e| MediaError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(cand);
        Ok(Peer {
            rtc,
            socket: Some(socket),
            local,
            audio_mid: None,
            video_mid: None,
            sends: false,
            created: now,
            file_channel: false,
            file_send: None,
        })
    }

    /// A peer that uses only TCP (ICE-TCP, RFC 6544): its one local candidate is an active TCP host candidate
    /// on `ip` (port 9, the discard port, as browsers announce active candidates), so it pairs only with a
    /// server's passive TCP candidate. Offers only Opus and VP8.
    pub fn new_tcp(ip: IpAddr) -> Result<Peer, MediaError> {
        let local = SocketAddr::new(ip, 9);
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let cand = Candidate::builder()
            .tcp()
            .host(local)
            .tcptype(TcpType::Active)
            .build()
            .map_err(|e| MediaError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(cand);
        Ok(Peer {
            rtc,
            socket: None,
            local,
            audio_mid: None,
            video_mid: None,
            sends: false,
            created: now,
            file_channel: false,
            file_send: None,
        })
    }

    /// Opens the RelayDesk SFU's `file` data channel with the next [`Peer::offer`]; with `send`, this peer
    /// sends one file of that many bytes once the channel is open (header, 16 KiB chunks with backpressure,
    /// end). Every file received on the channel is checked against the SHA-256 of its header.
    pub fn with_file_channel(&mut self, send: Option<u64>) {
        self.file_channel = true;
        self.file_send = send;
    }

    /// Creates an offer with an audio and/or a video m-line in `dir` (`SendRecv` for a RelayDesk
    /// participant, `SendOnly` for a Janus publisher). The peer sends media on them when `dir` sends.
    pub fn offer(&mut self, audio: bool, video: bool, dir: Direction) -> Result<(String, SdpPendingOffer), MediaError> {
        let mut api = self.rtc.sdp_api();
        if audio {
            self.audio_mid = Some(api.add_media(MediaKind::Audio, dir, None, None, None));
        }
        if video {
            self.video_mid = Some(api.add_media(MediaKind::Video, dir, None, None, None));
        }
        if self.file_channel {
            api.add_channel(FILE_LABEL.to_string());
        }
        self.sends = matches!(dir, Direction::SendRecv | Direction::SendOnly);
        let (offer, pending) = api.apply().ok_or_else(|| MediaError::Rtc("nothing to offer".into()))?;
        Ok((offer.to_sdp_string(), pending))
    }

    /// Applies the answer to [`Peer::offer`].
    pub fn accept_answer(&mut self, pending: SdpPendingOffer, answer: &str) -> Result<(), MediaError> {
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| MediaError::Rtc(e.to_string()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| MediaError::Rtc(e.to_string()))
    }

    /// Answers a remote offer (a Janus subscriber: receive only). Returns the SDP answer.
    pub fn accept_offer(&mut self, offer: &str) -> Result<String, MediaError> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| MediaError::Rtc(e.to_string()))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| MediaError::Rtc(e.to_string()))?;
        Ok(answer.to_sdp_string())
    }

    /// The local address of this peer's socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

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
    fn empty() -> Self {
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

    fn merge(&mut self, o: &MediaSnapshot) {
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

/// What a shard publishes for the controller.
struct Shared {
    totals: MediaSnapshot,
    streams: u64,
    jitter_sum_ms: f64,
}

enum ShardCommand {
    Add(Box<Peer>),
    /// Drop the peer whose socket has this address (its figures stay counted).
    Remove(SocketAddr),
    Stop,
}

struct ShardHandle {
    tx: Sender<ShardCommand>,
    waker: Arc<Waker>,
    shared: Arc<Mutex<Shared>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The running engine; see the module docs for the call order.
pub struct MediaEngine {
    shards: Vec<ShardHandle>,
    next: AtomicUsize,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panicked shard leaves figures that are still meaningful: read them anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MediaEngine {
    /// Starts `shards` shard threads (at least one) sending what `config` says.
    pub fn start(shards: usize, config: MediaConfig) -> Result<MediaEngine, MediaError> {
        let _ = epoch();
        let mut out = Vec::new();
        for i in 0..shards.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = crossbeam_channel::unbounded();
            let shared = Arc::new(Mutex::new(Shared {
                totals: MediaSnapshot::empty(),
                streams: 0,
                jitter_sum_ms: 0.0,
            }));
            let shard = Shard::new(poll, rx, shared.clone(), config);
            let thread = std::thread::Builder::new()
                .name(format!("media-shard-{i}"))
                .spawn(move || shard.run())?;
            out.push(ShardHandle {
                tx,
                waker,
                shared,
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(MediaEngine {
            shards: out,
            next: AtomicUsize::new(0),
        })
    }

    /// Hands a negotiated peer to a shard (round robin).
    pub fn add(&self, peer: Peer) -> Result<(), MediaError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let shard = &self.shards[i];
        shard
            .tx
            .send(ShardCommand::Add(Box::new(peer)))
            .map_err(|_| MediaError::ShardGone)?;
        shard.waker.wake()?;
        Ok(())
    }

    /// Drops the peer whose local address is `addr` (a conversation that ended: churn). Its figures stay
    /// in the totals; a peer that is not (or no longer) there is ignored.
    pub fn remove(&self, addr: SocketAddr) {
        for shard in &self.shards {
            if shard.tx.send(ShardCommand::Remove(addr)).is_ok() {
                let _ = shard.waker.wake();
            }
        }
    }

    /// Cumulative figures of all shards (as of their last flush, at most 50 ms old).
    pub fn snapshot(&self) -> MediaSnapshot {
        let mut s = MediaSnapshot::empty();
        let mut streams = 0u64;
        let mut jitter = 0.0f64;
        for shard in &self.shards {
            let g = lock(&shard.shared);
            s.merge(&g.totals);
            streams += g.streams;
            jitter += g.jitter_sum_ms;
        }
        s.jitter_ms = if streams == 0 { 0.0 } else { jitter / streams as f64 };
        s
    }

    /// Stops every shard (they flush first) and returns the final figures.
    pub fn stop(&self) -> MediaSnapshot {
        for shard in &self.shards {
            let _ = shard.tx.send(ShardCommand::Stop);
            let _ = shard.waker.wake();
        }
        for shard in &self.shards {
            let t = shard.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(t) = t {
                let _ = t.join();
            }
        }
        self.snapshot()
    }
}

impl Drop for MediaEngine {
    fn drop(&mut self) {
        for shard in &self.shards {
            let _ = shard.tx.send(ShardCommand::Stop);
            let _ = shard.waker.wake();
        }
    }
}

const WAKER: Token = Token(usize::MAX);

/// How a driven peer reaches the server.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpLink),
}

impl Link {
    /// Stops polling this peer's socket (the peer is gone).
    fn deregister(&mut self, registry: &mio::Registry) {
        let _ = match self {
            Link::Udp(s) => registry.deregister(s),
            Link::Tcp(TcpLink { stream: Some(s), .. }) => registry.deregister(s),
            Link::Tcp(_) => Ok(()),
        };
    }

    /// Polls this peer's socket under a new token (the peer moved to another index).
    fn reregister(&mut self, registry: &mio::Registry, token: Token) -> std::io::Result<()> {
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
struct TcpLink {
    stream: Option<TcpStream>,
    remote: Option<SocketAddr>,
    reader: FrameReader,
    /// Framed bytes not yet taken by the socket.
    out: Vec<u8>,
    broken: bool,
}

/// Bytes an ICE-TCP peer queues while its socket is full; beyond that it drops (as the server does).
const TCP_BACKLOG: usize = 1 << 20;

impl TcpLink {
    /// Frames `packet` to `to`, connecting first if this is the first transmit. False: not sent.
    fn send(&mut self, registry: &mio::Registry, token: Token, to: SocketAddr, packet: &[u8]) -> bool {
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
    fn write(&mut self) {
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
    fn read(&mut self, buf: &mut [u8]) -> Vec<Vec<u8>> {
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
const FLUSH_EVERY: Duration = Duration::from_millis(50);
const TICK: Duration = Duration::from_millis(1);

/// One peer as a shard drives it.
struct Driven {
    rtc: Rtc,
    link: Link,
    local: SocketAddr,
    audio: Option<(Mid, u8)>,
    video: Option<(Mid, u8)>,
    sends: bool,
    created: Instant,
    timeout: Instant,
    next_audio: Instant,
    next_video: Instant,
    last_key: Instant,
    force_key: bool,
    audio_seq: u64,
    video_seq: u64,
    frame: u32,
    connected: bool,
    failed: bool,
    first_media: bool,
    rx: HashMap<StreamKind, StreamStats>,
    nacks_sent: HashMap<Mid, u64>,
    nacks_received: HashMap<Mid, u64>,
    file_send: Option<u64>,
    file_chan: Option<ChannelId>,
    file_out: Option<FileOut>,
    file_in: Option<FileIn>,
}

/// A file being sent: its bytes and how far the channel has taken them.
struct FileOut {
    data: Vec<u8>,
    offset: usize,
    /// The header, until written.
    header: Option<String>,
    start_at: Instant,
    done: bool,
}

/// How long after its file channel opens a peer waits before sending its file.
const FILE_START_DELAY: Duration = Duration::from_secs(1);

/// A file being received: what its header promised and the hash so far.
struct FileIn {
    size: u64,
    sha256: String,
    got: u64,
    hasher: Sha256,
}

/// Label of the RelayDesk SFU's file-transfer data channel (see `relaydesk_sfu::core::wire`).
pub const FILE_LABEL: &str = "file";
/// Bytes per binary message of a file (the SFU's default chunk limit).
const FILE_CHUNK: usize = 16 * 1024;

/// Deterministic file content of `size` bytes.
fn file_bytes(size: u64, seed: u64) -> Vec<u8> {
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

struct Shard {
    poll: Poll,
    rx: Receiver<ShardCommand>,
    shared: Arc<Mutex<Shared>>,
    config: MediaConfig,
    peers: Vec<Driven>,
    local: MediaSnapshot,
    /// Figures of the peers removed so far (their streams are gone, their counts are not).
    retired: Retired,
    buf: Vec<u8>,
}

/// Cumulative figures of removed peers.
#[derive(Default)]
struct Retired {
    expected: u64,
    lost: u64,
    nacks_sent: u64,
    nacks_received: u64,
}

fn pt_of(rtc: &Rtc, codec: Codec) -> Option<u8> {
    rtc.codec_config().find(|p| p.spec().codec == codec).map(|p| *p.pt())
}

impl Shard {
    fn new(poll: Poll, rx: Receiver<ShardCommand>, shared: Arc<Mutex<Shared>>, config: MediaConfig) -> Shard {
        Shard {
            poll,
            rx,
            shared,
            config,
            peers: Vec::new(),
            local: MediaSnapshot::empty(),
            retired: Retired::default(),
            buf: vec![0u8; 2048],
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        loop {
            let mut stop = false;
            while let Ok(cmd) = self.rx.try_recv() {
                match cmd {
                    ShardCommand::Add(p) => self.add(*p),
                    ShardCommand::Remove(addr) => self.remove(addr),
                    ShardCommand::Stop => stop = true,
                }
            }
            if stop {
                self.flush();
                return;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(TICK))
                && e.kind() != ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "media shard poll failed");
                self.flush();
                return;
            }
            let now = Instant::now();
            for ev in events.iter() {
                let t = ev.token();
                if t != WAKER && t.0 < self.peers.len() {
                    self.read(t.0, now);
                }
            }
            let now = Instant::now();
            for i in 0..self.peers.len() {
                self.tick(i, now);
            }
            if now >= next_flush {
                self.flush();
                next_flush = now + FLUSH_EVERY;
            }
        }
    }

    fn add(&mut self, p: Peer) {
        let idx = self.peers.len();
        let link = match p.socket {
            Some(socket) => {
                let mut socket = UdpSocket::from_std(socket);
                if let Err(e) = self
                    .poll
                    .registry()
                    .register(&mut socket, Token(idx), Interest::READABLE)
                {
                    tracing::warn!(error = %e, "could not register a peer socket");
                    self.local.failed += 1;
                    return;
                }
                Link::Udp(socket)
            }
            None => Link::Tcp(TcpLink {
                stream: None,
                remote: None,
                reader: FrameReader::default(),
                out: Vec::new(),
                broken: false,
            }),
        };
        let now = Instant::now();
        let audio = p.audio_mid.and_then(|m| pt_of(&p.rtc, Codec::Opus).map(|pt| (m, pt)));
        let video = p.video_mid.and_then(|m| pt_of(&p.rtc, Codec::Vp8).map(|pt| (m, pt)));
        self.local.peers += 1;
        self.peers.push(Driven {
            rtc: p.rtc,
            link,
            local: p.local,
            audio,
            video,
            sends: p.sends,
            created: p.created,
            timeout: now,
            next_audio: now,
            next_video: now,
            last_key: now,
            force_key: true,
            audio_seq: 1,
            video_seq: 1,
            frame: 0,
            connected: false,
            failed: false,
            first_media: false,
            rx: HashMap::new(),
            nacks_sent: HashMap::new(),
            nacks_received: HashMap::new(),
            file_send: p.file_send,
            file_chan: None,
            file_out: None,
            file_in: None,
        });
        self.drain(idx, now);
    }

    fn remove(&mut self, addr: SocketAddr) {
        let Some(i) = self.peers.iter().position(|p| p.local == addr) else {
            return;
        };
        let mut p = self.peers.swap_remove(i);
        p.link.deregister(self.poll.registry());
        for st in p.rx.values() {
            self.retired.expected += st.seq.expected();
            self.retired.lost += st.seq.lost();
        }
        self.retired.nacks_sent += p.nacks_sent.values().sum::<u64>();
        self.retired.nacks_received += p.nacks_received.values().sum::<u64>();
        // The peer that took its place answers to its new index.
        if let Some(moved) = self.peers.get_mut(i)
            && let Err(e) = moved.link.reregister(self.poll.registry(), Token(i))
        {
            tracing::warn!(error = %e, "could not re-register a peer socket");
        }
    }

    fn read(&mut self, i: usize, now: Instant) {
        if let Some(Driven {
            link: Link::Tcp(link),
            rtc,
            local,
            failed: false,
            ..
        }) = self.peers.get_mut(i)
        {
            link.write();
            let frames = link.read(&mut self.buf);
            let (Some(source), destination) = (link.remote, *local) else {
                return;
            };
            for frame in frames {
                let Ok(contents) = frame.as_slice().try_into() else {
                    continue;
                };
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Tcp,
                        source,
                        destination,
                        contents,
                    },
                );
                if let Err(e) = rtc.handle_input(input) {
                    tracing::debug!(error = %e, "peer input failed");
                }
            }
            self.drain(i, now);
            return;
        }
        loop {
            let Some(p) = self.peers.get_mut(i) else { return };
            if p.failed {
                return;
            }
            let Link::Udp(socket) = &p.link else { return };
            match socket.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let Ok(contents) = self.buf[..n].try_into() else {
                        continue;
                    };
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: from,
                            destination: p.local,
                            contents,
                        },
                    );
                    if p.rtc.accepts(&input) {
                        if let Err(e) = p.rtc.handle_input(input) {
                            tracing::debug!(error = %e, "peer input failed");
                        }
                        self.drain(i, now);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP port unreachable and the like: the server is gone or not there yet.
                Err(_) => return,
            }
        }
    }

    fn tick(&mut self, i: usize, now: Instant) {
        let config = self.config;
        let Some(p) = self.peers.get_mut(i) else { return };
        if p.failed {
            return;
        }
        let mut wrote = false;
        if p.connected && p.sends {
            if config.audio
                && let Some((mid, pt)) = p.audio
                && now >= p.next_audio
            {
                record_clamped(&mut self.local.send_lateness, (now - p.next_audio).as_micros() as u64);
                send_audio(p, mid, pt, now, config.audio_bytes);
                self.local.packets_sent += 1;
                wrote = true;
                p.next_audio += Duration::from_millis(20);
                if p.next_audio < now {
                    // More than a whole period late: skip rather than burst.
                    p.next_audio = now + Duration::from_millis(20);
                }
            }
            if config.video
                && let Some((mid, pt)) = p.video
                && now >= p.next_video
            {
                record_clamped(&mut self.local.send_lateness, (now - p.next_video).as_micros() as u64);
                let period = Duration::from_micros(1_000_000 / u64::from(config.fps.max(1)));
                let n = send_video(p, mid, pt, now, &config);
                self.local.packets_sent += n;
                wrote |= n > 0;
                p.next_video += period;
                if p.next_video < now {
                    p.next_video = now + period;
                }
            }
        }
        if p.file_out.as_ref().is_some_and(|f| !f.done) {
            pump_file(p, &mut self.local, now);
        }
        // str0m sends what was just written only after a timeout has seen it queued: handled now, not at the
        // next tick, so a packet leaves when its stamp says.
        if (now >= p.timeout || wrote)
            && let Err(e) = p.rtc.handle_input(Input::Timeout(now))
        {
            tracing::debug!(error = %e, "peer timeout failed");
        }
        self.drain(i, now);
    }

    fn drain(&mut self, i: usize, now: Instant) {
        let Some(p) = self.peers.get_mut(i) else { return };
        loop {
            if !p.rtc.is_alive() {
                if !p.failed {
                    p.failed = true;
                    self.local.failed += 1;
                }
                return;
            }
            let out = match p.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(error = %e, "peer failed");
                    if !p.failed {
                        p.failed = true;
                        self.local.failed += 1;
                    }
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    p.timeout = t;
                    return;
                }
                Output::Transmit(t) => match &mut p.link {
                    Link::Udp(socket) => match socket.send_to(&t.contents, t.destination) {
                        Ok(_) => {}
                        Err(_) => self.local.send_drops += 1,
                    },
                    Link::Tcp(link) => {
                        if !link.send(self.poll.registry(), Token(i), t.destination, &t.contents) {
                            self.local.send_drops += 1;
                        }
                    }
                },
                Output::Event(ev) => match ev {
                    Event::Connected if !p.connected => {
                        p.connected = true;
                        self.local.connected += 1;
                        record_clamped(&mut self.local.connect_time, (now - p.created).as_micros() as u64);
                        p.next_audio = now;
                        p.next_video = now;
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) if !p.failed => {
                        p.failed = true;
                        self.local.failed += 1;
                    }
                    Event::RtpPacket(pkt) => {
                        if let Some(stamp) = Stamp::find(&pkt.payload) {
                            let recv_us = micros_since_epoch(now);
                            let st = p.rx.entry(stamp.kind).or_default();
                            let lat = st.record(&stamp, recv_us, pkt.payload.len());
                            record_clamped(&mut self.local.latency, lat.max(1));
                            self.local.packets_received += 1;
                            self.local.bytes_received += pkt.payload.len() as u64;
                            if !p.first_media {
                                p.first_media = true;
                                self.local.receiving += 1;
                                record_clamped(&mut self.local.first_media, (now - p.created).as_micros() as u64);
                            }
                        }
                    }
                    Event::KeyframeRequest(_) => {
                        p.force_key = true;
                        self.local.keyframe_requests += 1;
                    }
                    Event::ChannelOpen(id, label) if label == FILE_LABEL => {
                        p.file_chan = Some(id);
                        if let Some(ch) = p.rtc.channel(id).as_mut() {
                            ch.set_buffered_amount_low_threshold(4 * FILE_CHUNK);
                        }
                        if let Some(size) = p.file_send.take() {
                            let data = file_bytes(size, p.local.port().into());
                            let sha = hex::encode(Sha256::digest(&data));
                            let header = serde_json::json!({"type": "header", "name": "loadtest.bin", "size": size,
                                "mime": "application/octet-stream", "sha256": sha});
                            // The server relays a file only to members whose file channel is open: give the
                            // other party's call a moment to come up first.
                            p.file_out = Some(FileOut {
                                data,
                                offset: 0,
                                header: Some(header.to_string()),
                                start_at: now + FILE_START_DELAY,
                                done: false,
                            });
                        }
                    }
                    Event::ChannelBufferedAmountLow(id) if Some(id) == p.file_chan => {
                        pump_file(p, &mut self.local, now)
                    }
                    Event::ChannelData(cd) if Some(cd.id) == p.file_chan => {
                        if cd.binary {
                            if let Some(f) = p.file_in.as_mut() {
                                f.hasher.update(&cd.data);
                                f.got += cd.data.len() as u64;
                            }
                        } else {
                            let v: serde_json::Value = serde_json::from_slice(&cd.data).unwrap_or_default();
                            match v["type"].as_str() {
                                Some("header") => {
                                    p.file_in = Some(FileIn {
                                        size: v["size"].as_u64().unwrap_or(u64::MAX),
                                        sha256: v["sha256"].as_str().unwrap_or("").to_string(),
                                        got: 0,
                                        hasher: Sha256::new(),
                                    });
                                }
                                Some("end") => {
                                    let ok = p.file_in.take().is_some_and(|f| {
                                        f.got == f.size && hex::encode(f.hasher.finalize()) == f.sha256
                                    });
                                    if ok {
                                        self.local.files_ok += 1;
                                    } else {
                                        self.local.file_failures += 1;
                                    }
                                }
                                Some("abort") | Some("error") => {
                                    p.file_in = None;
                                    self.local.file_failures += 1;
                                }
                                _ => {}
                            }
                        }
                    }
                    Event::MediaIngressStats(s) => {
                        p.nacks_sent.insert(s.mid, s.nacks);
                    }
                    Event::MediaEgressStats(s) => {
                        p.nacks_received.insert(s.mid, s.nacks);
                    }
                    _ => {}
                },
            }
        }
    }

    fn flush(&mut self) {
        let mut expected = self.retired.expected;
        let mut lost = self.retired.lost;
        let mut streams = 0;
        let mut jitter = 0.0;
        let mut nacks_sent = self.retired.nacks_sent;
        let mut nacks_received = self.retired.nacks_received;
        for p in &self.peers {
            for st in p.rx.values() {
                expected += st.seq.expected();
                lost += st.seq.lost();
                streams += 1;
                jitter += st.jitter.micros() / 1000.0;
            }
            nacks_sent += p.nacks_sent.values().sum::<u64>();
            nacks_received += p.nacks_received.values().sum::<u64>();
        }
        self.local.expected = expected;
        self.local.lost = lost;
        self.local.nacks_sent = nacks_sent;
        self.local.nacks_received = nacks_received;
        let mut g = lock(&self.shared);
        g.totals = self.local.clone();
        g.streams = streams;
        g.jitter_sum_ms = jitter;
    }
}

/// Writes as much of the file being sent as the channel takes; then the end marker.
fn pump_file(p: &mut Driven, stats: &mut MediaSnapshot, now: Instant) {
    let (Some(id), Some(f)) = (p.file_chan, p.file_out.as_mut()) else {
        return;
    };
    if f.done || now < f.start_at {
        return;
    }
    let Some(mut ch) = p.rtc.channel(id) else { return };
    if let Some(h) = f.header.take() {
        match ch.write(false, h.as_bytes()) {
            Ok(true) => {}
            Ok(false) => {
                f.header = Some(h);
                return;
            }
            Err(_) => {
                f.done = true;
                stats.file_failures += 1;
                return;
            }
        }
    }
    while f.offset < f.data.len() {
        let end = (f.offset + FILE_CHUNK).min(f.data.len());
        match ch.write(true, &f.data[f.offset..end]) {
            Ok(true) => f.offset = end,
            Ok(false) => return,
            Err(_) => {
                f.done = true;
                stats.file_failures += 1;
                return;
            }
        }
    }
    match ch.write(false, br#"{"type":"end"}"#) {
        Ok(true) => f.done = true,
        Ok(false) => {}
        Err(_) => {
            f.done = true;
            stats.file_failures += 1;
        }
    }
}

fn send_audio(p: &mut Driven, mid: Mid, pt: u8, now: Instant, bytes: usize) {
    let seq = p.audio_seq;
    let mut payload = vec![0u8; bytes.max(crate::stats::STAMP_LEN)];
    Stamp {
        kind: StreamKind::Audio,
        seq: seq as u16,
        sent_us: micros_since_epoch(now),
    }
    .write(&mut payload);
    let ts = (seq as u32).wrapping_mul(960);
    if let Some(tx) = p.rtc.direct_api().stream_tx_by_mid(mid, None) {
        tx.write_rtp(RtpWrite::new(pt.into(), seq.into(), ts, now, payload).nackable(false));
        p.audio_seq += 1;
    }
}

/// Sends one VP8-sized frame split into packets; returns the number of packets written.
fn send_video(p: &mut Driven, mid: Mid, pt: u8, now: Instant, c: &MediaConfig) -> u64 {
    let key = p.force_key || now.duration_since(p.last_key) >= c.keyframe_interval;
    if key {
        p.force_key = false;
        p.last_key = now;
    }
    let per_frame = (u64::from(c.video_kbps) * 1000 / 8 / u64::from(c.fps.max(1))) as usize;
    let size = if key { per_frame * 4 } else { per_frame }.max(64);
    let packets = size.div_ceil(VIDEO_MTU_PAYLOAD);
    let ts = p.frame.wrapping_mul(90_000 / c.fps.max(1));
    p.frame = p.frame.wrapping_add(1);
    let sent_us = micros_since_epoch(now);
    let mut api = p.rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return 0;
    };
    for k in 0..packets {
        let len = if k + 1 == packets {
            size - k * VIDEO_MTU_PAYLOAD
        } else {
            VIDEO_MTU_PAYLOAD
        }
        .max(24);
        let mut payload = vec![0u8; len];
        let off = if k == 0 {
            // RFC 7741 descriptor with S=1, then the frame tag (P bit 0 on a keyframe) and start code.
            payload[0] = 0x10;
            payload[1] = if key { 0x00 } else { 0x01 };
            payload[4] = 0x9d;
            payload[5] = 0x01;
            payload[6] = 0x2a;
            7
        } else {
            payload[0] = 0x00;
            1
        };
        let seq = p.video_seq;
        Stamp {
            kind: StreamKind::Video,
            seq: seq as u16,
            sent_us,
        }
        .write(&mut payload[off..]);
        tx.write_rtp(
            RtpWrite::new(pt.into(), seq.into(), ts, now, payload)
                .marker(k + 1 == packets)
                .nackable(true),
        );
        p.video_seq += 1;
    }
    packets as u64
}
