//! Call invitations: one party asks, the other accepts or declines, the inviter may cancel, and an
//! unanswered invitation expires. Also the small in-call relays that go with them (`call_media_state`)
//! and the guard against renegotiations a leg's own offer already satisfies.
//!
//! Call order (per conversation): `call_invite` → `call_invitation` to both parties → one of `call_accept`
//! (or the other party's own `call_invite`: crossing invitations accept each other), `call_decline`,
//! `call_cancel` (or the inviter's `call_end`), or the deadline ([`Invitations::next_deadline`], then
//! [`Hub::expire_invitations`]) → `call_invitation_ended` to both. After `accepted` both clients start their
//! legs with `call_prepare` and `call_offer` as before; a client may still `call_offer` without an
//! invitation (older clients, the load tester).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Hub, Party, Refusal, media_load};
use crate::chat_protocol::{
    AgentId, CallEndReason, ConversationId, ErrorCode, InvitationOutcome, ServerToAgent, ServerToVisitor,
};
use crate::live::SocketId;

/// A pending invitation of one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Invitation {
    /// Who invited (the visitor or the conversation's agent).
    pub(super) from: Party,
    pub(super) video: bool,
    pub(super) expires: Instant,
}

/// The pending invitations, at most one per conversation.
#[derive(Debug, Default)]
pub(super) struct Invitations {
    pending: HashMap<ConversationId, Invitation>,
}

impl Invitations {
    /// The earliest expiry, if any.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|i| i.expires).min()
    }

    /// Removes and returns the invitations due at `now`.
    fn take_expired(&mut self, now: Instant) -> Vec<(ConversationId, Invitation)> {
        let due: Vec<ConversationId> = self
            .pending
            .iter()
            .filter(|(_, i)| i.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        due.into_iter()
            .filter_map(|c| self.pending.remove(&c).map(|i| (c, i)))
            .collect()
    }

    /// Forgets a conversation's invitation without telling anyone (the conversation ended).
    pub(super) fn forget(&mut self, conv: ConversationId) {
        self.pending.remove(&conv);
    }
}

/// The message of a call refused because one is in progress.
const IN_CALL: Refusal = (ErrorCode::Conflict, "a call is already in progress");
const NO_AGENT: Refusal = (ErrorCode::Conflict, "no agent has joined the conversation yet");
const NO_INVITATION: Refusal = (ErrorCode::Conflict, "no invitation to answer");

/// Audio and video m-lines of an SDP offer that can receive (receive slots): not `sendonly` (a shared
/// screen) nor `inactive`.
pub(super) fn offered_lines(sdp: &str) -> (usize, usize) {
    let mut counts = (0, 0);
    // The kind of the current m-section, and whether it receives so far.
    let mut section: Option<(bool, bool)> = None;
    fn close(section: Option<(bool, bool)>, counts: &mut (usize, usize)) {
        match section {
            Some((true, true)) => counts.0 += 1,
            Some((false, true)) => counts.1 += 1,
            _ => {}
        }
    }
    for l in sdp.lines() {
        if l.starts_with("m=") {
            close(section, &mut counts);
            section = if l.starts_with("m=audio") {
                Some((true, true))
            } else if l.starts_with("m=video") {
                Some((false, true))
            } else {
                None
            };
        } else if l == "a=sendonly" || l == "a=inactive" {
            section = section.map(|(audio, _)| (audio, false));
        }
    }
    close(section, &mut counts);
    counts
}

impl Hub {
    /// The agent that holds the conversation now.
    fn conversation_agent(&self, conv: ConversationId) -> Option<AgentId> {
        self.router.access(conv).and_then(|a| a.agent)
    }

    fn refuse(&mut self, conv: ConversationId, party: Party, socket: SocketId, r: Refusal) {
        match party {
            Party::Visitor => self.visitor_error(socket, r),
            Party::Agent(_) | Party::Supervisor(_) => self.agent_error(socket, Some(conv), r),
        }
    }

    /// `call_invite` from `party` (the visitor, or the conversation's agent: checked by the caller).
    pub(super) fn call_invite(&mut self, conv: ConversationId, party: Party, socket: SocketId, video: bool) {
        if let Err(r) = self.may_invite(conv, party) {
            self.refuse(conv, party, socket, r);
            return;
        }
        match self.invites.pending.get(&conv).copied() {
            Some(i) if i.from == party => {
                self.refuse(
                    conv,
                    party,
                    socket,
                    (ErrorCode::Conflict, "your invitation is already ringing"),
                );
            }
            // Crossing invitations: the other party asked first, so this one accepts.
            Some(i) => self.end_invitation(conv, i, InvitationOutcome::Accepted),
            None => {
                let timeout = Duration::from_millis(self.config.live.call_invite_timeout_ms);
                let invitation = Invitation {
                    from: party,
                    video,
                    expires: self.now.at + timeout,
                };
                self.invites.pending.insert(conv, invitation);
                metrics::counter!("relaydesk_call_invitations_total").increment(1);
                // Whether the call would be recorded is told before anyone is asked to join it.
                self.recording_notice(conv, party, socket);
                let expires_in_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                self.send_visitor(
                    conv,
                    &ServerToVisitor::CallInvitation {
                        from: party.wire(),
                        video,
                        expires_in_ms,
                    },
                );
                self.send_agent_viewers(
                    conv,
                    &ServerToAgent::CallInvitation {
                        conversation: conv,
                        from: party.wire(),
                        video,
                        expires_in_ms,
                    },
                );
            }
        }
    }

    /// Whether `party` may start a call now: media on, an agent in the conversation, no call in progress,
    /// and room on the media server for the call's two legs.
    fn may_invite(&self, conv: ConversationId, party: Party) -> Result<(), Refusal> {
        if !self.config.media {
            return Err((ErrorCode::MediaUnavailable, "calls are not available on this server"));
        }
        let agent = self.conversation_agent(conv).ok_or(NO_AGENT)?;
        if matches!(party, Party::Agent(a) if a != agent) {
            return Err((ErrorCode::Forbidden, "not assigned to you"));
        }
        let c = self
            .convs
            .get(&conv)
            .ok_or((ErrorCode::NotFound, "no such conversation"))?;
        if c.calls.keys().any(|p| p.is_party_to_call()) {
            return Err(IN_CALL);
        }
        if media_load(&self.ix.legs) + 2 > self.config.max_media_participants {
            metrics::counter!("relaydesk_calls_refused_total", "reason" => "media_capacity").increment(1);
            return Err((ErrorCode::MediaBusy, super::MEDIA_BUSY));
        }
        Ok(())
    }

    /// `call_accept` (`accept`) or `call_decline` from `party`: answers the other party's invitation.
    pub(super) fn call_reply(&mut self, conv: ConversationId, party: Party, socket: SocketId, accept: bool) {
        let Some(i) = self.invites.pending.get(&conv).copied().filter(|i| i.from != party) else {
            self.refuse(conv, party, socket, NO_INVITATION);
            return;
        };
        // An agent's invitation stands only while that agent holds the conversation.
        if let Party::Agent(a) = i.from
            && self.conversation_agent(conv) != Some(a)
        {
            self.end_invitation(conv, i, InvitationOutcome::Cancelled);
            self.refuse(conv, party, socket, NO_INVITATION);
            return;
        }
        if accept && let Err(r) = self.may_invite(conv, party) {
            // The call cannot start after all (a call began meanwhile, or the media server filled up).
            self.end_invitation(conv, i, InvitationOutcome::Cancelled);
            self.refuse(conv, party, socket, r);
            return;
        }
        let outcome = if accept {
            InvitationOutcome::Accepted
        } else {
            InvitationOutcome::Declined
        };
        self.end_invitation(conv, i, outcome);
    }

    /// `call_cancel` from `party`: withdraws its own invitation.
    pub(super) fn call_cancel(&mut self, conv: ConversationId, party: Party, socket: SocketId) {
        if !self.cancel_own_invitation(conv, party) {
            self.refuse(
                conv,
                party,
                socket,
                (ErrorCode::Conflict, "you have no invitation ringing"),
            );
        }
    }

    /// Cancels `party`'s own pending invitation, if it has one (also on its `call_end`).
    pub(super) fn cancel_own_invitation(&mut self, conv: ConversationId, party: Party) -> bool {
        match self.invites.pending.get(&conv).copied() {
            Some(i) if i.from == party => {
                self.end_invitation(conv, i, InvitationOutcome::Cancelled);
                true
            }
            _ => false,
        }
    }

    /// A party's first `call_offer` while the other party's invitation rings answers it (a client that
    /// offers without `call_accept`).
    pub(super) fn offer_settles_invitation(&mut self, conv: ConversationId, party: Party) {
        if let Some(i) = self.invites.pending.get(&conv).copied().filter(|i| i.from != party) {
            self.end_invitation(conv, i, InvitationOutcome::Accepted);
        }
    }

    /// Ends the invitations whose time is up (the hub's timer).
    pub(super) fn expire_invitations(&mut self, now: Instant) {
        for (conv, i) in self.invites.take_expired(now) {
            if self.convs.contains_key(&conv) {
                self.tell_invitation_ended(conv, i, InvitationOutcome::Expired);
            }
        }
    }

    fn end_invitation(&mut self, conv: ConversationId, i: Invitation, outcome: InvitationOutcome) {
        self.invites.pending.remove(&conv);
        self.tell_invitation_ended(conv, i, outcome);
    }

    fn tell_invitation_ended(&mut self, conv: ConversationId, i: Invitation, outcome: InvitationOutcome) {
        let label = match outcome {
            InvitationOutcome::Accepted => "accepted",
            InvitationOutcome::Declined => "declined",
            InvitationOutcome::Cancelled => "cancelled",
            InvitationOutcome::Expired => "expired",
        };
        metrics::counter!("relaydesk_call_invitations_ended_total", "outcome" => label).increment(1);
        tracing::info!(conversation = %conv, video = i.video, outcome = label, "call invitation ended");
        self.send_visitor(
            conv,
            &ServerToVisitor::CallInvitationEnded {
                from: i.from.wire(),
                outcome,
            },
        );
        self.send_agent_viewers(
            conv,
            &ServerToAgent::CallInvitationEnded {
                conversation: conv,
                from: i.from.wire(),
                outcome,
            },
        );
    }

    /// `call_end` with its reason: a failed leg is reported as `failed` to the other party; a hang-up also
    /// withdraws the party's own ringing invitation.
    pub(super) fn call_end_with(&mut self, conv: ConversationId, party: Party, reason: Option<CallEndReason>) {
        self.cancel_own_invitation(conv, party);
        let reason = match reason {
            Some(CallEndReason::Failed) => "failed",
            Some(CallEndReason::HungUp) | None => "hung_up",
        };
        self.drop_leg(conv, party, reason);
    }

    /// `call_media_state` from `party`, relayed to the other side of the call.
    pub(super) fn call_media_state(&mut self, conv: ConversationId, party: Party, socket: SocketId, state: [bool; 4]) {
        let in_call = self.convs.get(&conv).is_some_and(|c| c.calls.contains_key(&party));
        if !in_call {
            self.refuse(conv, party, socket, (ErrorCode::Conflict, "no call in progress"));
            return;
        }
        let [audio, video, screen, reconnecting] = state;
        let to_agents = ServerToAgent::CallMediaState {
            conversation: conv,
            party: party.wire(),
            audio,
            video,
            screen,
            reconnecting,
        };
        match party {
            Party::Visitor => self.send_agent_viewers(conv, &to_agents),
            Party::Agent(_) => {
                self.send_visitor(
                    conv,
                    &ServerToVisitor::CallMediaState {
                        party: party.wire(),
                        audio,
                        video,
                        screen,
                        reconnecting,
                    },
                );
                // The agent's other tabs and watchers see it too (the sender ignores its own).
                self.send_agent_viewers(conv, &to_agents);
            }
            Party::Supervisor(_) => {}
        }
    }
}

impl Hub {
    /// `call_screen_request` from the agent: asks the visitor to share a screen. Both must be in the call.
    pub(super) fn call_screen_request(&mut self, conv: ConversationId, party: Party, socket: SocketId) {
        let both = self
            .convs
            .get(&conv)
            .is_some_and(|c| c.calls.contains_key(&party) && c.calls.contains_key(&Party::Visitor));
        if !both {
            self.refuse(
                conv,
                party,
                socket,
                (ErrorCode::Conflict, "the visitor and you must both be in the call"),
            );
            return;
        }
        self.send_visitor(conv, &ServerToVisitor::CallScreenRequest {});
    }

    /// `call_screen_reply` from the visitor, relayed to the agent side.
    pub(super) fn call_screen_reply(&mut self, conv: ConversationId, socket: SocketId, share: bool) {
        let in_call = self
            .convs
            .get(&conv)
            .is_some_and(|c| c.calls.contains_key(&Party::Visitor));
        if !in_call {
            self.refuse(
                conv,
                Party::Visitor,
                socket,
                (ErrorCode::Conflict, "no call in progress"),
            );
            return;
        }
        self.send_agent_viewers(
            conv,
            &ServerToAgent::CallScreenReply {
                conversation: conv,
                share,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_lines_counts_audio_and_video_m_lines() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(offered_lines(sdp), (1, 2));
        // A shared screen's send-only m-line and an inactive one are no receive slots.
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=sendrecv\r\nm=video 9 X 96\r\na=recvonly\r\n\
                   m=video 9 X 96\r\na=sendonly\r\nm=audio 9 X 111\r\na=inactive\r\n";
        assert_eq!(offered_lines(sdp), (1, 1));
        assert_eq!(offered_lines(""), (0, 0));
    }

    #[test]
    fn invitations_expire_in_deadline_order() {
        let t0 = Instant::now();
        let mut inv = Invitations::default();
        for (n, secs) in [(1, 45), (2, 10)] {
            inv.pending.insert(
                ConversationId(n),
                Invitation {
                    from: Party::Visitor,
                    video: true,
                    expires: t0 + Duration::from_secs(secs),
                },
            );
        }
        assert_eq!(inv.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert!(inv.take_expired(t0 + Duration::from_secs(9)).is_empty());
        let due = inv.take_expired(t0 + Duration::from_secs(10));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, ConversationId(2));
        assert_eq!(inv.next_deadline(), Some(t0 + Duration::from_secs(45)));
        inv.forget(ConversationId(1));
        assert_eq!(inv.next_deadline(), None);
    }
}
