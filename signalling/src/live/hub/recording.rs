//! The hub's part of call recording (a child module of `hub`): each group's policy, each conversation's
//! recording state, the agent's start/pause/resume, the `recording` frames to both parties, the audit
//! records and the transcript notes. The media side records ([`MediaControl::set_recording`]); the archive
//! keeps the key and the row ([`crate::recording`]).
//!
//! Rules:
//! - The policy of a conversation is its group's when its first call is prepared; a later change of the
//!   group's policy applies to later conversations.
//! - Both parties hear `recording` before `ice_servers` (so before any media) and on every change; the
//!   transcript gets a system note on every change, and the audit log a `recording.*` record.
//! - `always`: recording starts when the first party's leg connects. `on_request`: when the agent sends
//!   `recording` `start`. Either way it stops when the last party leaves the call or the conversation ends.
//! - Pause: the SFU stops handing media to the writer first, then the writer notes the pause; nothing of the
//!   paused span is written. One change at a time: a request while one is under way is refused (`conflict`).

use std::collections::HashMap;

use super::{Hub, MediaRequest, Output, Party, to_json};
use crate::chat_protocol::{
    AgentId, Author, ConversationId, ErrorCode, GroupId, RecordingAction, RecordingState, ServerToAgent,
    ServerToVisitor,
};
use crate::store::RecordingPolicy;

use super::Refusal;

/// The recording of one conversation's calls.
#[derive(Debug, Clone)]
pub(super) struct ConvRecording {
    policy: RecordingPolicy,
    state: RecordingState,
    /// The recording being written (its id).
    id: Option<String>,
    /// A change is under way.
    busy: bool,
    /// The host page's payment step paused it (so its end resumes it).
    paused_for_payment: bool,
}

/// The hub's recording state.
#[derive(Debug, Default)]
pub(super) struct Recordings {
    /// Each group's policy (loaded at start, updated by the admin API).
    policies: HashMap<GroupId, RecordingPolicy>,
    convs: HashMap<ConversationId, ConvRecording>,
}

/// A finished change, reported back to the hub by the driver.
#[derive(Debug)]
pub(crate) struct RecordingOutcome {
    pub(crate) conversation: ConversationId,
    /// The new state and the recording's id, or why the change failed.
    pub(crate) result: Result<(RecordingState, Option<String>), String>,
    /// Who asked (for the note), `None` for the policy.
    pub(crate) by: Option<String>,
    /// What was asked.
    pub(crate) action: RecordingAction,
}

impl Recordings {
    /// Sets a group's policy.
    pub(super) fn set_policy(&mut self, group: GroupId, policy: RecordingPolicy) {
        self.policies.insert(group, policy);
    }
}

/// The transcript's note of a change: `None` is the stop.
fn note(action: Option<RecordingAction>, by: Option<&str>) -> String {
    let what = match action {
        Some(RecordingAction::Start) => "Recording started",
        Some(RecordingAction::Pause) => "Recording paused",
        Some(RecordingAction::Resume) => "Recording resumed",
        None => "Recording stopped",
    };
    match by {
        Some(name) => format!("{what} by {name}"),
        None => what.to_owned(),
    }
}

impl Hub {
    /// The conversation's recording state, created with its group's policy on first use.
    fn conv_recording(&mut self, conv: ConversationId) -> Option<&mut ConvRecording> {
        let group = self.convs.get(&conv)?.group.clone();
        let policy = self.rec.policies.get(&group).copied().unwrap_or_default();
        Some(self.rec.convs.entry(conv).or_insert(ConvRecording {
            policy,
            state: RecordingState::Off,
            id: None,
            busy: false,
            paused_for_payment: false,
        }))
    }

    /// A call leg is being prepared (before `ice_servers`): the visitor's or the agent's tells both parties,
    /// so the visitor hears that the call is recorded before answering the agent's call too; a supervisor's
    /// tells that socket only.
    pub(super) fn recording_notice(&mut self, conv: ConversationId, party: Party, socket: super::SocketId) {
        let Some(r) = self.conv_recording(conv) else { return };
        let (state, policy) = (r.state, r.policy);
        if party.is_party_to_call() {
            self.recording_broadcast(conv);
            return;
        }
        let text = to_json(&ServerToAgent::Recording {
            conversation: conv,
            state,
            policy,
        });
        if let Some(text) = text {
            self.send_text(socket, text);
        }
    }

    /// Both parties (and the watchers) hear the state.
    fn recording_broadcast(&mut self, conv: ConversationId) {
        let Some(r) = self.rec.convs.get(&conv) else { return };
        let (state, policy) = (r.state, r.policy);
        self.send_visitor(conv, &ServerToVisitor::Recording { state, policy });
        self.send_agent_viewers(
            conv,
            &ServerToAgent::Recording {
                conversation: conv,
                state,
                policy,
            },
        );
    }

    /// A party's leg connected: policy `always` starts the recording.
    pub(super) fn recording_leg_connected(&mut self, conv: ConversationId) {
        let Some(r) = self.conv_recording(conv) else { return };
        if r.policy == RecordingPolicy::Always && r.state == RecordingState::Off && !r.busy && r.id.is_none() {
            self.recording_change(conv, RecordingAction::Start, None);
        }
    }

    /// A party's leg ended: when no party is left in the call, the recording stops.
    pub(super) fn recording_leg_gone(&mut self, conv: ConversationId) {
        let in_call = self
            .convs
            .get(&conv)
            .is_some_and(|c| c.calls.keys().any(|p| p.is_party_to_call()));
        if !in_call {
            self.recording_stop(conv);
        }
    }

    /// The agent's `recording` frame.
    pub(super) fn recording_request(
        &mut self,
        conv: ConversationId,
        agent: AgentId,
        action: RecordingAction,
    ) -> Result<(), Refusal> {
        let in_call = self
            .convs
            .get(&conv)
            .is_some_and(|c| c.calls.keys().any(|p| p.is_party_to_call()));
        let r = self
            .conv_recording(conv)
            .ok_or((ErrorCode::NotFound, "no such conversation"))?;
        if r.policy == RecordingPolicy::Off {
            return Err((ErrorCode::Forbidden, "calls of this group are not recorded"));
        }
        if r.busy {
            return Err((ErrorCode::Conflict, "a recording change is under way"));
        }
        let allowed = match action {
            RecordingAction::Start => r.state == RecordingState::Off && in_call,
            RecordingAction::Pause => r.state == RecordingState::On,
            RecordingAction::Resume => r.state == RecordingState::Paused,
        };
        if !allowed {
            return Err((
                ErrorCode::Conflict,
                match action {
                    RecordingAction::Start if !in_call => "no call in progress",
                    RecordingAction::Start => "the call is already recorded",
                    RecordingAction::Pause => "the call is not being recorded",
                    RecordingAction::Resume => "the recording is not paused",
                },
            ));
        }
        if action == RecordingAction::Resume
            && let Some(r) = self.rec.convs.get_mut(&conv)
        {
            // The agent resumed: the end of the payment step has nothing left to resume.
            r.paused_for_payment = false;
        }
        let name = self.agents.get(&agent).map(|e| e.name.clone());
        self.recording_change(conv, action, name);
        Ok(())
    }

    /// The host page's payment step (the visitor's `payment` frame): a recording that is on pauses; the end
    /// of the step resumes it only if the step paused it (an agent's own pause stays). Nothing else changes,
    /// and nothing is answered (a change under way is left as it is).
    pub(super) fn recording_payment(&mut self, conv: ConversationId, active: bool) {
        let Some(r) = self.rec.convs.get_mut(&conv) else { return };
        if r.busy {
            return;
        }
        let action = match (active, r.state) {
            (true, RecordingState::On) => {
                r.paused_for_payment = true;
                RecordingAction::Pause
            }
            (false, RecordingState::Paused) if r.paused_for_payment => {
                r.paused_for_payment = false;
                RecordingAction::Resume
            }
            _ => return,
        };
        self.recording_change(conv, action, Some("the payment page".into()));
    }

    /// Asks the driver to make a change (start, pause, resume); it reports back with [`Input::Recording`].
    fn recording_change(&mut self, conv: ConversationId, action: RecordingAction, by: Option<String>) {
        if !self.config.media {
            return;
        }
        let Some(r) = self.rec.convs.get_mut(&conv) else { return };
        r.busy = true;
        let id = r.id.clone();
        self.out.push_back(Output::Media(MediaRequest::RecordingChange {
            conversation: conv,
            action,
            by,
            id,
        }));
    }

    /// Stops the recording of `conv` (call over, or conversation ended): the note now, the file closed and the
    /// row finished by the driver.
    pub(super) fn recording_stop(&mut self, conv: ConversationId) {
        let Some(r) = self.rec.convs.get_mut(&conv) else { return };
        let Some(id) = r.id.take() else { return };
        r.state = RecordingState::Off;
        r.busy = false;
        self.recording_note(conv, None, None);
        self.recording_broadcast(conv);
        if self.config.media {
            self.out
                .push_back(Output::Media(MediaRequest::RecordingStop { conversation: conv, id }));
        }
    }

    /// The conversation ended: stop, and forget its state.
    pub(super) fn recording_ended(&mut self, conv: ConversationId) {
        self.recording_stop(conv);
        self.rec.convs.remove(&conv);
    }

    /// A change finished.
    pub(super) fn recording_outcome(&mut self, o: RecordingOutcome) {
        let conv = o.conversation;
        let in_call = self
            .convs
            .get(&conv)
            .is_some_and(|c| c.calls.keys().any(|p| p.is_party_to_call()));
        let Some(r) = self.rec.convs.get_mut(&conv) else {
            // The conversation ended meanwhile: close what was started.
            if let Ok((_, Some(id))) = o.result {
                self.rec.convs.insert(
                    conv,
                    ConvRecording {
                        policy: RecordingPolicy::Off,
                        state: RecordingState::On,
                        id: Some(id),
                        busy: false,
                        paused_for_payment: false,
                    },
                );
                self.recording_ended(conv);
            }
            return;
        };
        r.busy = false;
        match o.result {
            Ok((state, id)) => {
                r.state = state;
                r.id = id;
                tracing::info!(conversation = %conv, state = ?state, "recording changed");
                self.recording_note(conv, Some(o.action), o.by.as_deref());
                self.recording_broadcast(conv);
                // The call ended while the change was under way.
                if !in_call {
                    self.recording_stop(conv);
                }
            }
            Err(e) => {
                tracing::error!(conversation = %conv, error = %e, "recording change failed");
                if let Some(agent) = self.router.access(conv).and_then(|a| a.agent) {
                    self.send_agent(
                        agent,
                        &ServerToAgent::error(ErrorCode::Internal, "the recording could not be changed", Some(conv)),
                    );
                }
            }
        }
    }

    /// A system note in the transcript ("Recording paused by Alice"), sent to both parties like a message.
    fn recording_note(&mut self, conv: ConversationId, action: Option<RecordingAction>, by: Option<&str>) {
        let body = self.masker.mask(&note(action, by));
        let ts = self.now.unix_ms;
        let Some(c) = self.convs.get_mut(&conv) else { return };
        c.push(ts, Author::System {}, Party::Visitor, None, body, None);
        let seq = c.messages.len() as u64;
        self.persist_messages(conv, std::iter::once(seq));
        self.deliver_last(conv);
    }
}
