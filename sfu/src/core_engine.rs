//! The production engine: the sans-IO forwarding core on a shard.

use std::net::SocketAddr;
use std::time::Instant;

use relaydesk_sfu_core::{Command, Event, Output, Reply, Sfu, SfuError, Transport};

use crate::engine::{Engine, EngineOutput, Outgoing};

impl Engine for Sfu {
    type Command = Command;
    type Reply = Reply;
    type Error = SfuError;
    type Event = Event;

    fn handle_datagram(&mut self, now: Instant, proto: Transport, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        Sfu::handle_receive(self, now, proto, from, to, data);
    }

    fn owns_ufrag(&self, ufrag: &str) -> bool {
        Sfu::owns_ufrag(self, ufrag)
    }

    fn handle_command(&mut self, now: Instant, command: Command) -> Result<Reply, SfuError> {
        Sfu::handle_command(self, now, command)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Sfu::handle_timeout(self, now);
    }

    fn poll_output(&mut self) -> EngineOutput<Event> {
        match Sfu::poll_output(self) {
            // The source is this shard's own socket (UDP), or the connection to the destination (TCP).
            Output::Transmit(t) => EngineOutput::Transmit(Outgoing {
                proto: t.proto,
                destination: t.destination,
                contents: t.contents,
            }),
            Output::Event(e) => EngineOutput::Event(e),
            Output::Timeout(t) => EngineOutput::Timeout(t),
        }
    }

    fn export_metrics(&self, shard: usize) {
        let st = self.stats();
        let label = shard.to_string();
        let gauges: [(&'static str, usize); 2] = [
            ("relaydesk_sfu_rooms", st.rooms),
            ("relaydesk_sfu_participants", st.participants),
        ];
        for (name, value) in gauges {
            metrics::gauge!(name, "shard" => label.clone()).set(value as f64);
        }
        let counters: [(&'static str, u64); 3] = [
            ("relaydesk_sfu_rtp_forwarded_total", st.rtp_forwarded),
            ("relaydesk_sfu_keyframe_requests_total", st.keyframe_requests),
            ("relaydesk_sfu_participant_panics_total", st.panics),
        ];
        for (name, value) in counters {
            metrics::counter!(name, "shard" => label.clone()).absolute(value);
        }
        let d = st.drops;
        let drops: [(&'static str, u64); 7] = [
            ("oversized", d.oversized),
            ("malformed", d.malformed),
            ("unknown_address", d.unknown_address),
            ("stun_unknown_user", d.stun_unknown_user),
            ("rejected", d.rejected),
            ("not_forwarded", d.not_forwarded),
            ("data_refused", d.data_refused),
        ];
        for (reason, value) in drops {
            metrics::counter!("relaydesk_sfu_drops_total", "shard" => label.clone(), "reason" => reason)
                .absolute(value);
        }
    }
}

/// The driver running the forwarding core: what the binary holds.
pub type CoreHandle = crate::SfuHandle<Sfu>;
