//! RelayDesk SFU driver: runs sans-IO forwarding engines on shard threads with real UDP sockets.
//!
//! Media over TCP (ICE-TCP): a connection accepted elsewhere (the HTTPS listener) is handed over with
//! [`SfuHandle::adopt_tcp`] and lives on the shard that owns its participant, on the same poll as the UDP
//! socket, RFC 4571 framing both ways and a bounded write backlog per connection.
//!
//! Each shard is one thread with its own socket (`port_base + index`, or an ephemeral port when the base is
//! 0), its own engine and therefore its own rooms: the packet path takes no lock. Datagrams are read in
//! batches (`recvmmsg`, with GRO where the kernel has it) and written in batches, runs of same-sized
//! datagrams to one destination leaving as one GSO send. Commands reach a shard over a channel plus a
//! `mio` waker; engine events come back on one channel for the whole driver.
//!
//! Use: [`Driver::start`] with a config and a factory that builds each shard's engine; keep the
//! [`SfuHandle`] (cheap to clone) to send commands ([`SfuHandle::command`], awaitable, or
//! [`SfuHandle::command_blocking`]) and to shut down ([`SfuHandle::shutdown`], bounded); read events from
//! the returned [`EventReceiver`].

#[doc(hidden)]
pub mod bench_support;
mod core_engine;
mod engine;
mod shard;
mod stats;
mod tcp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::Waker;
use tokio::sync::{mpsc, oneshot};

pub use core_engine::CoreHandle;
pub use engine::{Engine, EngineOutput, Outgoing};
pub use relaydesk_sfu_core as core;
pub use shard::{DEFAULT_SHUTDOWN_TIMEOUT, ShardEvent};
pub use stats::ShardStats;
pub use tcp::{AdoptError, TcpAdoption};

use shard::{ReplyRx, Shard, ShardMsg};
use stats::ShardCounters;

/// Where and how the driver runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DriverConfig {
    /// Number of shard threads; 0 means one per available core.
    pub shards: usize,
    /// Address the UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// Port of shard 0; shard `i` uses `port_base + i`. 0 lets the kernel choose a port per shard.
    pub port_base: u16,
    /// Address announced to peers (in ICE candidates) when it differs from `bind_ip` (NAT, containers).
    pub announce_ip: Option<IpAddr>,
    /// Datagrams read per `recvmmsg` call.
    pub recv_batch: usize,
    /// Kernel send and receive buffer size asked for each socket.
    pub socket_buffer_bytes: usize,
    /// Datagrams a shard queues while its socket cannot send; beyond that new ones are dropped and counted.
    pub max_pending_sends: usize,
    /// ICE-TCP connections one shard holds at most; more are refused.
    pub max_tcp_connections: usize,
    /// Bytes of frames one ICE-TCP connection may have waiting to be written; beyond that its new frames are
    /// dropped (a slow reader loses its own media; the shard never waits for it).
    pub tcp_backlog_bytes: usize,
    /// Kernel send buffer asked for each ICE-TCP connection (small: latency stays low on a slow path).
    pub tcp_send_buffer_bytes: usize,
    /// An ICE-TCP connection silent this long is closed (live peers send consent checks every few seconds).
    pub tcp_idle_timeout: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_base: 0,
            announce_ip: None,
            recv_batch: 32,
            socket_buffer_bytes: 4 << 20,
            max_pending_sends: 16_384,
            max_tcp_connections: 4096,
            tcp_backlog_bytes: 256 * 1024,
            tcp_send_buffer_bytes: 128 * 1024,
            tcp_idle_timeout: Duration::from_secs(30),
        }
    }
}

impl DriverConfig {
    /// A config binding `bind_ip` with `shards` shards and ephemeral ports; other fields default.
    pub fn new(bind_ip: IpAddr, shards: usize) -> Self {
        Self {
            bind_ip,
            shards,
            ..Self::default()
        }
    }
}

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// A shard's socket could not be opened.
    #[error("cannot open the SFU socket on {addr}: {source}")]
    Socket {
        /// The address it tried.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The port range does not fit (port_base + shards > 65535).
    #[error("SFU port range starting at {port_base} does not fit {shards} shards")]
    PortRange {
        /// First port.
        port_base: u16,
        /// Shards asked for.
        shards: usize,
    },
    /// A shard thread could not be spawned.
    #[error("cannot start SFU shard thread: {0}")]
    Thread(std::io::Error),
    /// Not every shard stopped within the shutdown bound.
    #[error("{0} SFU shard(s) did not stop in time")]
    ShutdownTimeout(usize),
}

/// Why a command got no reply from the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// No shard with that index.
    #[error("no SFU shard {0}")]
    NoSuchShard(usize),
    /// The shard has stopped (shutdown or a fatal error).
    #[error("the SFU shard has stopped")]
    ShardStopped,
    /// The engine refused the command.
    #[error("SFU refused the command")]
    Engine(E),
}

/// The receiving end of all shards' events.
pub type EventReceiver<Ev> = mpsc::UnboundedReceiver<ShardEvent<Ev>>;

struct ShardLink<E: Engine> {
    commands: Sender<ShardMsg<E>>,
    waker: Waker,
    local_addr: SocketAddr,
    announced_addr: SocketAddr,
    counters: Arc<ShardCounters>,
    gso_segments: usize,
}

struct Inner<E: Engine> {
    shards: Vec<ShardLink<E>>,
    threads: Mutex<Vec<(JoinHandle<()>, crossbeam_channel::Receiver<()>)>>,
}

/// A cloneable handle on the running driver.
pub struct SfuHandle<E: Engine> {
    inner: Arc<Inner<E>>,
}

impl<E: Engine> Clone for SfuHandle<E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Starts the driver.
pub struct Driver;

impl Driver {
    /// Opens one socket per shard, builds each shard's engine with `make_engine(index, announced_addr)`,
    /// and starts the shard threads.
    pub fn start<E, F>(
        config: &DriverConfig,
        mut make_engine: F,
    ) -> Result<(SfuHandle<E>, EventReceiver<E::Event>), DriverError>
    where
        E: Engine,
        F: FnMut(usize, SocketAddr) -> E,
    {
        let shards = if config.shards == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            config.shards
        };
        if config.port_base != 0 && usize::from(config.port_base) + shards > 65_536 {
            return Err(DriverError::PortRange {
                port_base: config.port_base,
                shards,
            });
        }
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let mut links = Vec::with_capacity(shards);
        let mut threads = Vec::with_capacity(shards);
        for index in 0..shards {
            // Checked above: port_base + index <= 65535 when port_base != 0.
            let port = if config.port_base == 0 {
                0
            } else {
                config.port_base.saturating_add(index as u16)
            };
            let bind = SocketAddr::new(config.bind_ip, port);
            let (socket, state, poll, waker) = shard::open_socket(bind, config.socket_buffer_bytes)
                .map_err(|source| DriverError::Socket { addr: bind, source })?;
            let local_addr = socket
                .local_addr()
                .map_err(|source| DriverError::Socket { addr: bind, source })?;
            let announced_addr = SocketAddr::new(config.announce_ip.unwrap_or(local_addr.ip()), local_addr.port());
            let gso_segments = state.max_gso_segments();
            let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
            let counters = Arc::new(ShardCounters::default());
            let shard = Shard {
                index,
                engine: make_engine(index, announced_addr),
                socket,
                state,
                poll,
                commands: cmd_rx,
                events: event_tx.clone(),
                local: announced_addr,
                counters: Arc::clone(&counters),
                recv_batch: config.recv_batch,
                max_pending: config.max_pending_sends.max(1),
                tcp: tcp::TcpConns::new(tcp::TcpLimits {
                    max_connections: config.max_tcp_connections,
                    max_backlog: config.tcp_backlog_bytes.max(4096),
                    idle_timeout: config.tcp_idle_timeout,
                    send_buffer: config.tcp_send_buffer_bytes,
                }),
            };
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            let thread = std::thread::Builder::new()
                .name(format!("sfu-shard-{index}"))
                .spawn(move || {
                    shard.run();
                    let _ = done_tx.send(());
                })
                .map_err(DriverError::Thread)?;
            threads.push((thread, done_rx));
            links.push(ShardLink {
                commands: cmd_tx,
                waker,
                local_addr,
                announced_addr,
                counters,
                gso_segments,
            });
        }
        let handle = SfuHandle {
            inner: Arc::new(Inner {
                shards: links,
                threads: Mutex::new(threads),
            }),
        };
        Ok((handle, event_rx))
    }
}

impl<E: Engine> SfuHandle<E> {
    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The shard a key (e.g. a room id) lives on: a stable hash of the key.
    pub fn shard_for(&self, key: u64) -> usize {
        // Fibonacci hashing spreads sequential ids; shard_count is at least 1.
        let n = self.inner.shards.len().max(1) as u64;
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32).wrapping_rem(n) as usize
    }

    /// The local address the socket of `shard` is bound to.
    pub fn local_addr(&self, shard: usize) -> Option<SocketAddr> {
        self.inner.shards.get(shard).map(|s| s.local_addr)
    }

    /// The address of `shard` that peers are told about.
    pub fn announced_addr(&self, shard: usize) -> Option<SocketAddr> {
        self.inner.shards.get(shard).map(|s| s.announced_addr)
    }

    /// How many datagrams one send of `shard` may carry (1 when the kernel has no UDP GSO).
    pub fn gso_segments(&self, shard: usize) -> Option<usize> {
        self.inner.shards.get(shard).map(|s| s.gso_segments)
    }

    /// IO counters of every shard.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.inner.shards.iter().map(|s| s.counters.snapshot()).collect()
    }

    /// Publishes the IO counters to the `metrics` recorder.
    pub fn export_metrics(&self) {
        for (i, stats) in self.stats().iter().enumerate() {
            stats.export(i);
        }
    }

    fn send(&self, shard: usize, command: E::Command) -> Result<ReplyRx<E>, CommandError<E::Error>> {
        let link = self.inner.shards.get(shard).ok_or(CommandError::NoSuchShard(shard))?;
        let (tx, rx) = oneshot::channel();
        link.commands
            .send(ShardMsg::Command(command, tx))
            .map_err(|_| CommandError::ShardStopped)?;
        link.waker.wake().map_err(|_| CommandError::ShardStopped)?;
        Ok(rx)
    }

    /// Hands a new ICE-TCP connection (its first frame read: a STUN Binding request) to the shard whose
    /// engine has a participant with the local ICE username fragment the request names; returns that
    /// shard. The connection is dropped (closed) on error.
    pub async fn adopt_tcp(&self, conn: TcpAdoption) -> Result<usize, AdoptError> {
        let ufrag = relaydesk_sfu_core::stun_local_ufrag(&conn.first_frame)
            .ok_or(AdoptError::NoUsername)?
            .to_owned();
        for (index, link) in self.inner.shards.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            if link.commands.send(ShardMsg::OwnsUfrag(ufrag.clone(), tx)).is_err() || link.waker.wake().is_err() {
                continue;
            }
            if rx.await != Ok(true) {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            link.commands
                .send(ShardMsg::AdoptTcp(conn, tx))
                .map_err(|_| AdoptError::ShardStopped)?;
            link.waker.wake().map_err(|_| AdoptError::ShardStopped)?;
            return rx.await.map_err(|_| AdoptError::ShardStopped)?.map(|()| index);
        }
        Err(AdoptError::UnknownUser)
    }

    /// Sends a command to a shard and awaits the engine's reply (works on any async runtime).
    pub async fn command(&self, shard: usize, command: E::Command) -> Result<E::Reply, CommandError<E::Error>> {
        let rx = self.send(shard, command)?;
        rx.await
            .map_err(|_| CommandError::ShardStopped)?
            .map_err(CommandError::Engine)
    }

    /// Sends a command to a shard and blocks the calling thread until the reply (not for async code).
    pub fn command_blocking(&self, shard: usize, command: E::Command) -> Result<E::Reply, CommandError<E::Error>> {
        let rx = self.send(shard, command)?;
        rx.blocking_recv()
            .map_err(|_| CommandError::ShardStopped)?
            .map_err(CommandError::Engine)
    }

    /// Asks every shard to stop and waits up to `timeout` for them. Idempotent.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), DriverError> {
        for link in &self.inner.shards {
            // A shard that already stopped has dropped its receiver; nothing to do for it.
            if link.commands.send(ShardMsg::Shutdown).is_ok() {
                let _ = link.waker.wake();
            }
        }
        let deadline = Instant::now() + timeout;
        let threads = {
            let mut guard = match self.inner.threads.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::take(&mut *guard)
        };
        let mut stuck = 0;
        for (thread, done) in threads {
            let left = deadline.saturating_duration_since(Instant::now());
            if done.recv_timeout(left).is_ok() || thread.is_finished() {
                if thread.join().is_err() {
                    tracing::error!("an SFU shard thread panicked");
                }
            } else {
                stuck += 1;
            }
        }
        if stuck == 0 {
            Ok(())
        } else {
            Err(DriverError::ShutdownTimeout(stuck))
        }
    }
}
