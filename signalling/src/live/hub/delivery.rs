//! Delivery: frames, replays and closes queued for sockets (sent by the driver after the batch's commit).

use super::*;

impl Hub {
    /// Queues a frame for `socket`: it goes out with the current batch's output, after its writes are
    /// committed.
    pub(super) fn send_text(&mut self, socket: SocketId, text: String) {
        if self.sockets.contains(&socket) {
            self.out.push_back(Output::Text(socket, text));
        }
    }

    /// Sends a history replay: one queue entry, written in order before anything sent after it.
    pub(super) fn send_batch(&mut self, socket: SocketId, frames: Vec<String>) {
        if !self.sockets.contains(&socket) {
            return;
        }
        // Four full conversations may wait unwritten; beyond, the client counts as a slow consumer.
        let backlog = self.config.live.max_messages_per_conversation.saturating_mul(4);
        self.out.push_back(Output::Batch(socket, frames, backlog));
    }

    /// The socket's queue was full (a slow consumer) or gone: its task closes it with 4429, and the hub
    /// treats it as closed (an agent goes offline as on a dropped socket, a visitor may resume).
    pub(super) fn overflowed(&mut self, socket: SocketId) {
        tracing::info!(socket = socket.0, "outbox full or closed; closing the socket");
        self.sockets.remove(&socket);
        if self.ix.agent_sockets.contains_key(&socket) {
            self.agent_closed(socket);
        } else {
            self.visitor_closed(socket);
        }
    }

    pub(super) fn close_socket(&mut self, socket: SocketId, code: u16, reason: &'static str) {
        if self.sockets.remove(&socket) {
            self.out.push_back(Output::Close(socket, code, reason));
        }
    }

    pub(super) fn send_visitor(&mut self, conv: ConversationId, frame: &ServerToVisitor) {
        let Some(socket) = self.convs.get(&conv).and_then(|c| c.visitor_socket) else {
            return;
        };
        if let Some(text) = to_json(frame) {
            self.send_text(socket, text);
        }
    }

    pub(super) fn send_agent(&mut self, agent: AgentId, frame: &ServerToAgent) {
        let sockets: Vec<SocketId> = self
            .agents
            .get(&agent)
            .map(|a| a.sockets.iter().copied().collect())
            .unwrap_or_default();
        if sockets.is_empty() {
            return;
        }
        if let Some(text) = to_json(frame) {
            for s in sockets {
                self.send_text(s, text.clone());
            }
        }
    }

    pub(super) fn send_agent_socket(&mut self, socket: SocketId, frame: &ServerToAgent) {
        if let Some(text) = to_json(frame) {
            self.send_text(socket, text);
        }
    }

    /// The sockets that see a conversation on the agent side: its agent's, and its watchers'.
    pub(super) fn agent_viewers(&self, conv: ConversationId) -> Vec<(SocketId, AgentId)> {
        let mut out = Vec::new();
        if let Some(agent) = self.router.access(conv).and_then(|a| a.agent)
            && let Some(entry) = self.agents.get(&agent)
        {
            out.extend(entry.sockets.iter().map(|s| (*s, agent)));
        }
        if let Some(c) = self.convs.get(&conv) {
            for w in &c.watchers {
                if let Some(a) = self.ix.agent_sockets.get(w)
                    && !out.iter().any(|(s, _)| s == w)
                {
                    out.push((*w, *a));
                }
            }
        }
        out
    }

    pub(super) fn send_agent_viewers(&mut self, conv: ConversationId, frame: &ServerToAgent) {
        let viewers = self.agent_viewers(conv);
        if let Some(text) = to_json(frame) {
            for (s, _) in viewers {
                self.send_text(s, text.clone());
            }
        }
    }

    pub(super) fn visitor_error(&mut self, socket: SocketId, (code, msg): Refusal) {
        if let Some(text) = to_json(&ServerToVisitor::error(code, msg)) {
            self.send_text(socket, text);
        }
    }

    pub(super) fn agent_error(&mut self, socket: SocketId, conv: Option<ConversationId>, (code, msg): Refusal) {
        if let Some(text) = to_json(&ServerToAgent::error(code, msg, conv)) {
            self.send_text(socket, text);
        }
    }

    pub(super) fn agent_message_frame(conv: ConversationId, m: &Stored, viewer: Option<AgentId>) -> ServerToAgent {
        let own = matches!((m.party, viewer), (Party::Agent(a), Some(v)) if a == v);
        ServerToAgent::Message {
            conversation: conv,
            id: m.id.clone(),
            seq: m.seq,
            ts: m.ts,
            from: m.from.clone(),
            client_id: if own { m.client_id.clone() } else { None },
            body: m.body.as_str().to_owned(),
            file: m.file.clone(),
        }
    }

    pub(super) fn visitor_message_frame(m: &Stored) -> ServerToVisitor {
        ServerToVisitor::Message {
            id: m.id.clone(),
            seq: m.seq,
            ts: m.ts,
            from: m.from.clone(),
            client_id: if m.party == Party::Visitor {
                m.client_id.clone()
            } else {
                None
            },
            body: m.body.as_str().to_owned(),
            file: m.file.clone(),
        }
    }

    /// Sends the messages after `after` to one agent-side socket.
    pub(super) fn replay_to_agent_socket(
        &mut self,
        socket: SocketId,
        conv: ConversationId,
        after: u64,
        viewer: AgentId,
    ) {
        let mut frames = Vec::new();
        self.agent_replay(&mut frames, conv, after, viewer);
        self.send_batch(socket, frames);
    }

    /// Appends the agent-side frames of the messages of `conv` after `after` to `frames`.
    pub(super) fn agent_replay(&self, frames: &mut Vec<String>, conv: ConversationId, after: u64, viewer: AgentId) {
        if let Some(c) = self.convs.get(&conv) {
            frames.extend(
                c.messages
                    .iter()
                    .filter(|m| m.seq > after && m.is_chat())
                    .filter_map(|m| to_json(&Self::agent_message_frame(conv, m, Some(viewer)))),
            );
        }
    }
}
