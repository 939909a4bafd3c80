//! The seam between the driver and the sans-IO forwarding core.
//!
//! The driver owns threads, sockets and the clock; an [`Engine`] owns all media state and never blocks. The
//! production engine is `relaydesk_sfu_core::Sfu` (see `crate::core_engine`); tests of the driver's IO use a
//! small engine of their own.

use std::net::SocketAddr;
use std::time::Instant;

/// One datagram the engine wants sent from this shard's socket.
#[derive(Debug)]
pub struct Outgoing {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The bytes of one UDP datagram.
    pub contents: Vec<u8>,
}

/// What [`Engine::poll_output`] yields.
#[derive(Debug)]
pub enum EngineOutput<Ev> {
    /// A datagram to send.
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

    /// A datagram arrived from `from` on the local address `to`.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]);
    /// A command from the program; answered at once.
    fn handle_command(&mut self, now: Instant, command: Self::Command) -> Result<Self::Reply, Self::Error>;
    /// Time has advanced to `now`.
    fn handle_timeout(&mut self, now: Instant);
    /// The next output; see the call order above.
    fn poll_output(&mut self) -> EngineOutput<Self::Event>;

    /// Publishes the engine's own figures to the `metrics` recorder, labelled with the shard index. The
    /// driver calls it about once a second (and never on the packet path).
    fn export_metrics(&self, _shard: usize) {}
}
