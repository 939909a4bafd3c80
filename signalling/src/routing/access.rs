//! The authorisation matrix for conversations: who may read, write, monitor or manage one.

use super::{AgentId, GroupId, Role};

/// What the authorisation functions need to know about a conversation (from [`Router::access`] while it is
/// live, or from the archive once it ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationAccess {
    /// The group it belongs to.
    pub group: GroupId,
    /// The agent handling it (the last one, for an archived conversation); `None` while it waits.
    pub agent: Option<AgentId>,
}

/// May `user` (with `role` and member of `groups`) read `conversation` (live messages or its transcript)?
///
/// | role | reads |
/// |---|---|
/// | agent | only conversations assigned to them (not ones merely offered, not colleagues') |
/// | supervisor | the ones assigned to them, and every conversation of their groups |
/// | admin | every conversation |
pub fn can_read(user: AgentId, role: Role, groups: &[GroupId], conversation: &ConversationAccess) -> bool {
    let own = conversation.agent == Some(user);
    match role {
        Role::Agent => own,
        Role::Supervisor => own || groups.contains(&conversation.group),
        Role::Admin => true,
    }
}

/// May `user` write into `conversation` (send messages, typing, call signalling)? Only the agent it is
/// assigned to, whatever their role: supervisors watch read-only, admins do not talk to visitors.
pub fn can_write(user: AgentId, _role: Role, _groups: &[GroupId], conversation: &ConversationAccess) -> bool {
    conversation.agent == Some(user)
}

/// May `user` monitor `conversation`'s call (silent media, whisper)? Supervisors of its group and admins,
/// but never its own agent (who is a party to the call).
pub fn can_monitor(user: AgentId, role: Role, groups: &[GroupId], conversation: &ConversationAccess) -> bool {
    if conversation.agent == Some(user) {
        return false;
    }
    match role {
        Role::Agent => false,
        Role::Supervisor => groups.contains(&conversation.group),
        Role::Admin => true,
    }
}

/// May `user` manage `conversation` (transfer or end it)? Its agent, supervisors of its group, and admins.
pub fn can_manage(user: AgentId, role: Role, groups: &[GroupId], conversation: &ConversationAccess) -> bool {
    let own = conversation.agent == Some(user);
    match role {
        Role::Agent => own,
        Role::Supervisor => own || groups.contains(&conversation.group),
        Role::Admin => true,
    }
}
