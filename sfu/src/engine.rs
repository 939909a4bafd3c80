//! The seam between the driver and the sans-IO forwarding core.
//!
//! The driver owns threads, sockets and the clock; an [`Engine`] owns all media state and never blocks. The
//! production engine is `relaydesk_sfu_core::Sfu` (see `crate::core_engine`); tests of the driver's IO use a
//! small engine of their own.

use std::net::SocketAddr;
use std::time::Instant;

use relaydesk_sfu_core::Transport;

/// One datagram the engine wants sent from this shard: on its UDP socket, or framed (RFC 4571) on the
/// ICE-TCP connection whose remote address is `destination`.
#[derive(Debug)]
pub struct Outgoing {
    /// UDP or TCP.
    pub proto: Transport,
    /// Where to send it.
    pub destination: SocketAddr,
    /// The bytes of one UDP datagram.
    pub contents: Vec<u8>,
}

/// What [`Engine::poll_output`] yields.
#[derive(Debug)]
pub enum EngineOutput<Ev> {
    /// A datagram (or TCP frame) to send.
    Transmit(Outgoing),
    /// Something the rest of the program should hear about.
    Event(Ev),
    /// Nothing more to do until this instant (or until the next input); `None`: no timer armed, wait for
    /// input. Ends a drain.
    Timeout(Option<Instant>),
}

/// A sans-IO state machine the driver can run on a shard.
///
/// Call order, on one thread: after any `handle_*` call, call [`Engine::poll_output`] until it returns
/// [`EngineOutput::Timeout`]; call [`Engine::handle_timeout`] once that instant has passed.
pub trait Engine: Send + 'static {
    /// A request from the rest of the program (create a room, add a participant, ...).
    type Command: Send + 'static;
    /// The engine's answer to a command.
    type Reply: Send + 'static;
    /// The engine's error for a command.
    type Error: Send + 'static;
    /// A notification for the rest of the program.
    type Event: Send + 'static;

    /// A datagram (UDP), or one RFC 4571 frame's payload (TCP), arrived from `from` on the local address
    /// `to`.
    fn handle_datagram(&mut self, now: Instant, proto: Transport, from: SocketAddr, to: SocketAddr, data: &[u8]);
    /// A command from the program; answered at once.
    fn handle_command(&mut self, now: Instant, command: Self::Command) -> Result<Self::Reply, Self::Error>;
    /// Time has advanced to `now`.
    fn handle_timeout(&mut self, now: Instant);
    /// The next output; see the call order above.
    fn poll_output(&mut self) -> EngineOutput<Self::Event>;

    /// Whether a participant with this local ICE username fragment lives in this engine: the driver asks
    /// when a new ICE-TCP connection names it. Engines without ICE-TCP keep the default (none).
    fn owns_ufrag(&self, _ufrag: &str) -> bool {
        false
    }

    /// Publishes the engine's own figures to the `metrics` recorder, labelled with the shard index. The
    /// driver calls it about once a second (and never on the packet path).
    fn export_metrics(&self, _shard: usize) {}
}
