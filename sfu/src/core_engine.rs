//! The production engine: the sans-IO forwarding core on a shard.

use std::net::SocketAddr;
use std::time::Instant;

use relaydesk_sfu_core::{Command, Event, Output, Reply, Sfu, SfuError};

use crate::engine::{Engine, EngineOutput, Outgoing};

impl Engine for Sfu {
    type Command = Command;
    type Reply = Reply;
    type Error = SfuError;
    type Event = Event;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        Sfu::handle_datagram(self, now, from, to, data);
    }

    fn handle_command(&mut self, now: Instant, command: Command) -> Result<Reply, SfuError> {
        Sfu::handle_command(self, now, command)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Sfu::handle_timeout(self, now);
    }

    fn poll_output(&mut self) -> EngineOutput<Event> {
        match Sfu::poll_output(self) {
            // The source is always this shard's own socket: one socket per shard.
            Output::Transmit(t) => EngineOutput::Transmit(Outgoing {
                destination: t.destination,
                contents: t.contents,
            }),
            Output::Event(e) => EngineOutput::Event(e),
            Output::Timeout(t) => EngineOutput::Timeout(t),
        }
    }
}

/// The driver running the forwarding core: what the binary holds.
pub type CoreHandle = crate::SfuHandle<Sfu>;
