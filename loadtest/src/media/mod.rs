//! The target-independent media engine: many str0m clients (RTP mode) sharded over a few threads.
//!
//! Each [`Peer`] is one peer connection with its own UDP socket (a forwarder answers every client from
//! one address, so the local port is what tells clients apart), or, made with [`Peer::new_tcp`], with
//! only an active ICE-TCP candidate: it connects to the server's passive TCP candidate on its first
//! transmit and frames every packet as RFC 4571 on that one connection. A target negotiates the peer (offer or
//! answer through its own signalling) and hands it to [`MediaEngine::add`]; from then on a shard thread
//! drives it: reads its socket, fires its timers, sends audio (20 ms Opus-sized packets) and video
//! (VP8-sized frames at a target bitrate, keyframes on interval and on request) with a [`Stamp`](crate::stats::Stamp) in every
//! payload, and measures what it receives: latency, loss from sequence gaps, jitter, NACK and keyframe
//! request counts, time to first media.
//!
//! Call order: [`MediaEngine::start`], then [`MediaEngine::add`] for each negotiated peer (any time) and
//! [`MediaEngine::remove`] for a peer whose conversation ended,
//! [`MediaEngine::snapshot`] as often as wanted, and [`MediaEngine::stop`] once.
//!
//! This file holds the public API: the [`Peer`] before it is handed over, the [`MediaEngine`] and what it
//! shares with its shard threads. The rest is one job a file, each importing from this one and only from
//! the files listed before it: `snapshot` (the figures), `link` (UDP, or RFC 4571-framed TCP, to the
//! server), `files` (the file-channel transfer in flight and its content), `driven` (a peer as a shard
//! drives it, and what it sends), `shard` (the thread that drives its peers).

mod driven;
mod files;
mod link;
mod shard;
mod snapshot;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::{Poll, Token, Waker};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::TcpType;
use str0m::{Candidate, Rtc};

use crate::stats::epoch;
use shard::Shard;

pub use files::FILE_LABEL;
pub use snapshot::MediaSnapshot;

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
