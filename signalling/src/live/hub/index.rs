//! The hub's indexes: what leads to a conversation or an agent from a socket, a token, a file or a media
//! leg. A conversation's and a socket's entries are added and removed here, in one place, so they stay in
//! step with the conversations themselves.

use super::*;

/// Every index of the hub but the conversations themselves (`Hub::convs`) and the agents (`Hub::agents`).
#[derive(Default)]
pub(super) struct Indexes {
    /// Conversations that have an agent.
    pub(super) assigned: BTreeSet<ConversationId>,
    /// Each visitor socket's conversation.
    pub(super) visitor_sockets: HashMap<SocketId, ConversationId>,
    /// Each agent-side socket's user.
    pub(super) agent_sockets: HashMap<SocketId, AgentId>,
    /// The conversations each agent-side socket watches (the other side of `Conv::watchers`).
    pub(super) watching: HashMap<SocketId, BTreeSet<ConversationId>>,
    /// Visitors' resume token hashes.
    pub(super) resume_index: HashMap<[u8; 32], ConversationId>,
    /// Visitors' `files_token` hashes.
    pub(super) files_index: HashMap<[u8; 32], ConversationId>,
    /// The conversation of every shared file.
    pub(super) file_convs: HashMap<String, ConversationId>,
    /// Each media participant's conversation and party.
    pub(super) legs: HashMap<MediaParticipantId, (ConversationId, Party)>,
}

impl Indexes {
    /// Indexes a conversation brought back from rest: its resume token, its files token (when files are
    /// enabled), its files.
    pub(super) fn add_restored(&mut self, id: ConversationId, c: &Conv, files_enabled: bool) {
        self.resume_index.insert(c.resume_hash, id);
        if files_enabled && c.files_hash != [0; 32] {
            self.files_index.insert(c.files_hash, id);
        }
        for f in c.files.keys() {
            self.file_convs.insert(f.clone(), id);
        }
    }

    /// Forgets every entry of a conversation that ended.
    pub(super) fn forget_conversation(&mut self, id: ConversationId, c: &Conv) {
        self.assigned.remove(&id);
        if let Some(s) = c.visitor_socket {
            self.visitor_sockets.remove(&s);
        }
        for w in &c.watchers {
            if let Some(set) = self.watching.get_mut(w) {
                set.remove(&id);
            }
        }
        self.resume_index.remove(&c.resume_hash);
        self.files_index.remove(&c.files_hash);
        for f in c.files.keys() {
            self.file_convs.remove(f);
        }
        for leg in c.calls.values() {
            self.legs.remove(&leg.participant);
        }
    }
}

impl Hub {
    /// `socket` watches `conv` (both sides of the relation).
    pub(super) fn watch(&mut self, socket: SocketId, conv: ConversationId) {
        if let Some(c) = self.convs.get_mut(&conv) {
            c.watchers.insert(socket);
        }
        self.ix.watching.entry(socket).or_default().insert(conv);
    }

    /// `socket` stops watching `conv`.
    pub(super) fn unwatch(&mut self, socket: SocketId, conv: ConversationId) {
        if let Some(c) = self.convs.get_mut(&conv) {
            c.watchers.remove(&socket);
        }
        if let Some(set) = self.ix.watching.get_mut(&socket) {
            set.remove(&conv);
        }
    }

    /// An agent-side socket is gone: it watches nothing more and leaves its user's sockets. Returns the user.
    pub(super) fn forget_agent_socket(&mut self, socket: SocketId) -> Option<AgentId> {
        if let Some(convs) = self.ix.watching.remove(&socket) {
            for c in convs {
                if let Some(conv) = self.convs.get_mut(&c) {
                    conv.watchers.remove(&socket);
                }
            }
        }
        let agent = self.ix.agent_sockets.remove(&socket)?;
        if let Some(entry) = self.agents.get_mut(&agent) {
            entry.sockets.remove(&socket);
        }
        Some(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_conversation_leaves_no_entry_behind() {
        let mut ix = Indexes::default();
        let id = ConversationId(7);
        let c = Conv::for_tests(id);
        ix.assigned.insert(id);
        ix.add_restored(id, &c, true);
        ix.visitor_sockets.insert(SocketId(1), id);
        ix.watching.entry(SocketId(2)).or_default().insert(id);
        ix.legs.insert(MediaParticipantId(3), (id, Party::Visitor));
        assert_eq!(ix.file_convs.get("f1"), Some(&id));
        ix.forget_conversation(id, &c);
        assert!(ix.assigned.is_empty());
        assert!(ix.visitor_sockets.is_empty());
        assert!(ix.watching.values().all(BTreeSet::is_empty));
        assert!(ix.resume_index.is_empty() && ix.files_index.is_empty() && ix.file_convs.is_empty());
        assert!(ix.legs.is_empty());
    }
}
