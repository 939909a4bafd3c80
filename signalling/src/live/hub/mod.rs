//! The live hub: every live conversation, its sockets, calls and files, as one sans-IO state machine.
//!
//! [`Hub`] holds no shared state, runs no task and reads no clock: it is built from a [`HubConfig`] and
//! driven by [`driver`], its tokio task. Call order:
//! 1. [`Hub::new`], then [`Hub::restore`] with the conversations at rest (and [`Hub::set_recording_policy`]
//!    for every group), before any input.
//! 2. [`Hub::handle`] for each [`Input`] (commands from the sockets, the media side's events and answers,
//!    recording outcomes), [`Hub::handle_timeout`] when [`Hub::poll_timeout`]'s instant has come; each with
//!    `now` ([`Now`]).
//! 3. After a batch of inputs (at most [`driver::MAX_BATCH`]), [`Hub::poll_output`] until `None`.
//! 4. [`Hub::shutdown`] once, then drain the output again.
//!
//! Inside, after every input and timer the router's actions are drained and delivered in order, and the
//! next wake-up is the earliest of the router's `poll_timeout`, the first visitor resume deadline and the
//! first call invitation's expiry.
//!
//! Durability: nothing is sent while handling an input. Its writes at rest ([`LiveWrite`]: a new
//! conversation, messages new or amended, token hashes, assignments, an end) and its output (frames, closes,
//! replies, media requests, ended conversations), in order, wait for [`Hub::poll_output`]. It yields the
//! batch's writes first, as one [`Output::Commit`]; the driver commits them in one transaction on a
//! blocking thread and only then performs the rest: an echo (`id`, `seq`) always follows the commit of its
//! message, and every socket sees frames in the order the hub produced them.
//!
//! The hub knows sockets by [`SocketId`] only; the driver maps ids to outboxes. A socket whose outbox
//! overflowed is reported back with [`Input::Overflowed`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use super::limits::{Occupancy, SharedOccupancy};
use super::persist::{self, MessageAtRest, PartyAtRest};
use super::socket::Outbox;
use super::tokens::TokenGrant;
use super::{ArchivedMessage, EndedConversation, LiveConfig, SocketId, close};
use crate::archive::{CallFile, MessageKind};
use crate::archive_crypto::{ConversationCipher, DataKey};
use crate::chat_protocol::{
    AgentId, AgentToServer, Author, CallLegState, CallParty, ConversationId, EndReason, ErrorCode, FileRef, GroupId,
    LiveConversation, LiveState, RecordingAction, ServerToAgent, ServerToVisitor, VisitorToServer,
};
use crate::live_store::{LiveWrite, NewLiveConversation};
use crate::masking::{ConversationMasker, MaskOutcome, MaskedText, Masker, SenderKey};
use crate::media::{MediaError, MediaEvent, MediaParticipantId, MediaRole, MediaRoomId};
use crate::routing::{Action, ConversationAccess, Role, Router, RoutingError};
use crate::store::User;
use crate::turn::TurnService;

mod agents;
mod assignment;
mod calls;
mod chat;
mod conversation;
mod delivery;
pub(crate) mod driver;
mod files;
mod incall;
mod index;
mod invite;
mod io;
mod recording;
mod restore;
mod supervision;
#[cfg(test)]
mod tests;
mod visitors;

use conversation::{CallLeg, Conv, Stored};
pub(crate) use driver::spawn;
pub(crate) use files::StoredFile;
pub(crate) use io::{Command, FileCaller, HubConfig, Input, LegOffer, MediaRequest, Now, Output};
pub(crate) use recording::RecordingOutcome;

/// Who takes part in a conversation, inside the hub (the wire's [`CallParty`] and the store's
/// [`PartyAtRest`] are converted at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Party {
    Visitor,
    Agent(AgentId),
    /// A supervisor's (or admin's) silent monitoring leg; never writes chat.
    Supervisor(AgentId),
}

impl Party {
    fn sender_key(self) -> SenderKey {
        match self {
            Party::Visitor => SenderKey(0),
            Party::Agent(a) | Party::Supervisor(a) => SenderKey(u64::try_from(a.0).unwrap_or(0).wrapping_add(1)),
        }
    }

    fn wire(self) -> CallParty {
        match self {
            Party::Visitor => CallParty::Visitor,
            Party::Agent(_) => CallParty::Agent,
            Party::Supervisor(_) => CallParty::Supervisor,
        }
    }

    fn at_rest(self) -> PartyAtRest {
        match self {
            Party::Visitor => PartyAtRest::Visitor,
            Party::Agent(a) => PartyAtRest::Agent { id: a.0 },
            Party::Supervisor(a) => PartyAtRest::Supervisor { id: a.0 },
        }
    }

    fn from_rest(p: PartyAtRest) -> Self {
        match p {
            PartyAtRest::Visitor => Party::Visitor,
            PartyAtRest::Agent { id } => Party::Agent(AgentId(id)),
            PartyAtRest::Supervisor { id } => Party::Supervisor(AgentId(id)),
        }
    }

    /// The `from` label of the chat counters.
    fn metric_label(self) -> &'static str {
        match self {
            Party::Visitor => "visitor",
            Party::Agent(_) | Party::Supervisor(_) => "agent",
        }
    }

    /// The visitor's or the agent's leg (what makes a conversation "in a call").
    fn is_party_to_call(self) -> bool {
        matches!(self, Party::Visitor | Party::Agent(_))
    }
}

struct AgentEntry {
    name: String,
    role: Role,
    groups: Vec<GroupId>,
    capacity: u32,
    sockets: BTreeSet<SocketId>,
}

/// The live hub (see the module's doc for its call order).
pub(crate) struct Hub {
    config: HubConfig,
    occupancy: SharedOccupancy,
    /// The time of the input being handled.
    now: Now,
    /// Call recording: policies and each conversation's state (the `recording` module).
    rec: recording::Recordings,
    router: Router,
    masker: Masker,
    group_maskers: HashMap<GroupId, Masker>,
    convs: HashMap<ConversationId, Conv>,
    /// What leads to a conversation or an agent (see [`index`]).
    ix: index::Indexes,
    /// The sockets open as far as the hub knows (their outboxes are the driver's).
    sockets: BTreeSet<SocketId>,
    agents: HashMap<AgentId, AgentEntry>,
    /// Resume tokens of conversations that ended while their visitor was away: a resume within the grace
    /// period hears `ended` (with the reason) instead of a bare refusal.
    ended_while_away: HashMap<[u8; 32], (EndReason, Instant)>,
    deadlines: BinaryHeap<Reverse<(Instant, ConversationId, u64)>>,
    /// Pending call invitations (see [`invite`]).
    invites: invite::Invitations,
    /// Conversations whose live-list summary changed since the last flush.
    live_dirty: BTreeSet<ConversationId>,
    /// Final summaries of conversations that ended since the last flush.
    live_ended: Vec<LiveConversation>,
    next_conversation: u64,
    next_participant: u64,
    /// Set once the server stops: sockets close with 1001.
    stopping: bool,
    /// Writes of the current batch of inputs, yielded (as one [`Output::Commit`]) before [`Hub::out`].
    writes: Vec<LiveWrite>,
    /// What the current batch of inputs sends (frames, closes, replies, requests), in order, held until its
    /// writes are committed.
    out: std::collections::VecDeque<Output>,
}

/// Why a request was refused: the error frame's code and message.
pub(crate) type Refusal = (ErrorCode, &'static str);

fn to_json<T: Serialize>(value: &T) -> Option<String> {
    match serde_json::to_string(value) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "frame serialisation failed");
            None
        }
    }
}

/// The wire name of an end reason (as stored at rest).
fn reason_name(reason: EndReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "closed".to_owned())
}

fn reason_from_name(name: &str) -> EndReason {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).unwrap_or(EndReason::Closed)
}

fn routing_refusal(e: &RoutingError) -> Refusal {
    match e {
        RoutingError::UnknownConversation(_) => (ErrorCode::NotFound, "no such conversation"),
        RoutingError::UnknownAgent(_) => (ErrorCode::NotFound, "no such agent"),
        RoutingError::NotOfferedToYou { .. } => (ErrorCode::Conflict, "not offered to you (withdrawn or expired)"),
        RoutingError::NotAssignedToYou { .. } => (ErrorCode::Forbidden, "not assigned to you"),
        RoutingError::CapacityFull(_) => (ErrorCode::Conflict, "at capacity"),
        RoutingError::TargetUnavailable { .. } => (ErrorCode::Conflict, "the target agent cannot take it now"),
        RoutingError::TransferToSelf(_) => (ErrorCode::Conflict, "cannot transfer to yourself"),
        RoutingError::TransferPending(_) => (ErrorCode::Conflict, "a transfer is already pending"),
        _ => (ErrorCode::Internal, "routing failed"),
    }
}

/// The message of a call refused at the media capacity.
const MEDIA_BUSY: &str = "the media server is at capacity; calls in progress go on, try again later";

fn media_refusal(e: &MediaError) -> Refusal {
    match e {
        MediaError::BadOffer(_) => (ErrorCode::BadMessage, "the SDP offer was refused"),
        MediaError::NotFound => (ErrorCode::NotFound, "no such call"),
        MediaError::Capacity => (ErrorCode::MediaBusy, MEDIA_BUSY),
        MediaError::Unavailable => (ErrorCode::MediaUnavailable, "calls are not available now"),
        _ => (ErrorCode::Internal, "the media server failed"),
    }
}

fn call_frame(party: Party, conversation: ConversationId, answer: Result<String, Refusal>) -> Option<String> {
    match (party, answer) {
        (Party::Visitor, Ok(sdp)) => to_json(&ServerToVisitor::CallAnswer { sdp }),
        (Party::Visitor, Err((code, msg))) => to_json(&ServerToVisitor::error(code, msg)),
        (Party::Agent(_) | Party::Supervisor(_), Ok(sdp)) => to_json(&ServerToAgent::CallAnswer { conversation, sdp }),
        (Party::Agent(_) | Party::Supervisor(_), Err((code, msg))) => {
            to_json(&ServerToAgent::error(code, msg, Some(conversation)))
        }
    }
}

/// Media participants this node carries or has reserved, counted in the unit of `[media]
/// max_participants`: two per call in progress (its visitor's and agent's legs, whether or not both have
/// joined yet) and one per supervisor's leg. Legs being set up count (they are in `legs` from the offer on).
fn media_load(legs: &HashMap<MediaParticipantId, (ConversationId, Party)>) -> usize {
    let mut calls = HashSet::new();
    let mut supervisors = 0;
    for (conv, party) in legs.values() {
        if party.is_party_to_call() {
            calls.insert(*conv);
        } else {
            supervisors += 1;
        }
    }
    calls.len() * 2 + supervisors
}

impl Hub {
    /// A hub with no conversation yet.
    pub(crate) fn new(config: HubConfig, occupancy: SharedOccupancy, now: Now) -> Self {
        let router = Router::new(config.live.router_config());
        // Validated with the configuration; the built-in policy is the fallback.
        let masker = config.live.masking.compile().unwrap_or_else(|e| {
            tracing::error!(error = %e, "masking policy invalid; using the built-in policy");
            Masker::default()
        });
        Self {
            config,
            occupancy,
            now,
            rec: recording::Recordings::default(),
            router,
            masker,
            group_maskers: HashMap::new(),
            convs: HashMap::new(),
            ix: index::Indexes::default(),
            sockets: BTreeSet::new(),
            agents: HashMap::new(),
            ended_while_away: HashMap::new(),
            deadlines: BinaryHeap::new(),
            live_dirty: BTreeSet::new(),
            live_ended: Vec::new(),
            // Ids stay unique across restarts (the archive keys transcripts by id).
            next_conversation: now.unix_ms.saturating_mul(1000),
            next_participant: 1,
            invites: invite::Invitations::default(),
            stopping: false,
            writes: Vec::new(),
            out: std::collections::VecDeque::new(),
        }
    }

    /// Sets a group's recording policy (at start for every group; later through [`Input::GroupRecording`]).
    pub(crate) fn set_recording_policy(&mut self, group: GroupId, policy: crate::store::RecordingPolicy) {
        self.rec.set_policy(group, policy);
    }

    /// The masker of `group`: the global policy plus the group's own patterns.
    fn masker_for(&mut self, group: &GroupId) -> Masker {
        if let Some(m) = self.group_maskers.get(group) {
            return m.clone();
        }
        let patterns = self
            .config
            .live
            .masking_groups
            .iter()
            .find(|(name, _)| GroupId::from_name(name) == *group)
            .map(|(_, p)| p.as_slice())
            .unwrap_or_default();
        let masker = self.masker.with_extra(patterns).unwrap_or_else(|e| {
            tracing::error!(error = %e, "group masking patterns invalid; using the global policy");
            self.masker.clone()
        });
        self.group_maskers.insert(group.clone(), masker.clone());
        masker
    }

    /// Publishes the conversation gauges and the occupancy totals (after every batch).
    pub(crate) fn gauges(&self) {
        let active = self.ix.assigned.len();
        metrics::gauge!("relaydesk_conversations_active").set(active as f64);
        let queued = self.convs.len().saturating_sub(active);
        metrics::gauge!("relaydesk_conversations_queued").set(queued as f64);
        let live = self.convs.len();
        self.with_occupancy(|o| o.set_totals(live, queued));
    }

    fn with_occupancy<R>(&self, f: impl FnOnce(&mut Occupancy) -> R) -> R {
        super::limits::with_occupancy(&self.occupancy, f)
    }

    /// When [`Hub::handle_timeout`] is due next, if ever.
    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        // Drop stale deadlines (resumed or ended conversations) at the top.
        while let Some(Reverse((_, id, epoch))) = self.deadlines.peek() {
            let live = self
                .convs
                .get(id)
                .is_some_and(|c| c.epoch == *epoch && c.visitor_socket.is_none());
            if live {
                break;
            }
            self.deadlines.pop();
        }
        let ours = self.deadlines.peek().map(|Reverse((t, _, _))| *t);
        [ours, self.router.poll_timeout(), self.invites.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Expires what is due at `now`: the router's offers and graces, call invitations, visitors' resume
    /// graces (the conversation ends with `visitor_lost`).
    pub(crate) fn handle_timeout(&mut self, now: Now) {
        self.now = now;
        let now = now.at;
        self.router.handle_timeout(now);
        self.drain();
        self.expire_invitations(now);
        while let Some(Reverse((t, id, epoch))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let lost = self
                .convs
                .get(&id)
                .is_some_and(|c| c.epoch == epoch && c.visitor_socket.is_none());
            if lost {
                self.end_conversation(id, EndReason::VisitorLost);
            }
        }
    }

    /// Handles one input.
    pub(crate) fn handle(&mut self, input: Input, now: Now) {
        self.now = now;
        match input {
            Input::VisitorJoin { socket, grant } => self.visitor_join(socket, grant),
            Input::VisitorResume {
                socket,
                origin,
                resume_token,
                last_seq,
            } => self.visitor_resume(socket, &origin, &resume_token, last_seq),
            Input::VisitorFrame { socket, frame } => self.visitor_frame(socket, frame),
            Input::VisitorClosed { socket } => self.visitor_closed(socket),
            Input::AgentOpen { socket, user } => self.agent_open(socket, user),
            Input::AgentFrame { socket, frame } => self.agent_frame(socket, frame),
            Input::AgentClosed { socket } => self.agent_closed(socket),
            Input::Media(event) => self.media_event(event),
            Input::Recording(outcome) => self.recording_outcome(outcome),
            Input::GroupRecording { group, policy } => self.rec.set_policy(group, policy),
            Input::CallAnswered { leg, result } => self.call_answered(leg, result),
            Input::WhisperFailed {
                conversation,
                socket,
                error,
            } => self.agent_error(
                socket,
                Some(conversation),
                (media_refusal(&error).0, "the whisper could not be changed"),
            ),
            Input::FileUpload {
                caller,
                conversation,
                reply,
            } => {
                let result = self
                    .file_writer(caller, conversation)
                    .and_then(|(conv, _)| self.take_file_slot(conv));
                let _ = reply.send(result);
            }
            Input::FileShared {
                caller,
                conversation,
                file,
                reply,
            } => {
                // Answered once the file's message is committed.
                let result = self.share_file(caller, conversation, file);
                self.out.push_back(Output::Reply(Box::new(move || {
                    let _ = reply.send(result);
                })));
            }
            Input::FileSlotReleased { conversation } => {
                if let Some(c) = self.convs.get_mut(&conversation) {
                    c.files_pending = c.files_pending.saturating_sub(1);
                }
            }
            Input::FileFetch { caller, id, reply } => {
                let _ = reply.send(self.file_reader(caller, &id));
            }
            Input::UserChanged {
                user,
                sessions_ended,
                reply,
            } => {
                self.user_changed(user, sessions_ended);
                if let Some(reply) = reply {
                    // After the sockets it closed are told.
                    self.out.push_back(Output::Reply(Box::new(move || {
                        let _ = reply.send(());
                    })));
                }
            }
            Input::Overflowed { socket } => {
                self.overflowed(socket);
                self.flush_live();
            }
        }
    }

    /// The next output: the batch's writes first (one [`Output::Commit`]), then frames, closes, replies and
    /// requests in the order they were made. Changes of the supervisors' live list are coalesced per batch.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.flush_live();
        if !self.writes.is_empty() {
            return Some(Output::Commit(std::mem::take(&mut self.writes)));
        }
        self.out.pop_front()
    }

    /// The orderly stop: every conversation ends (`ended` with reason `closed` to its visitor and its
    /// agent-side viewers, then archived), then every socket still open hears why it closes (1001).
    pub(crate) fn shutdown(&mut self, now: Now) {
        self.now = now;
        self.stopping = true;
        if self.config.hand_over {
            // A cluster's leader stops: the conversations stay live at rest and the node that takes the
            // lease restores them; every client reconnects (through any node) and resumes there.
            self.flush_live();
            let sockets: Vec<SocketId> = self.sockets.iter().copied().collect();
            for s in sockets {
                self.close_socket(
                    s,
                    close::SERVICE_RESTART,
                    "the conversation moves to another node; reconnect",
                );
            }
            return;
        }
        let mut ids: Vec<ConversationId> = self.convs.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.end_conversation(id, EndReason::Closed);
        }
        self.flush_live();
        let sockets: Vec<SocketId> = self.sockets.iter().copied().collect();
        for s in sockets {
            self.close_socket(s, 1001, "server shutting down");
        }
    }
}
