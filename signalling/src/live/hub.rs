//! The hub: one task owning the live state.
//!
//! Call order: [`spawn`] once when the server starts (it takes the command receiver out of
//! [`Live`](super::Live)); the task first restores the live conversations at rest ([`Hub::restore`], see
//! [`crate::live_store`]), then serves [`Command`]s from the sockets; it ends on shutdown, after ending every
//! live conversation (`ended` with reason `closed` to everyone who sees it, then every socket closed with
//! 1001, each conversation handed to the sink) and waiting (bounded) for the sink.
//!
//! Inside, after every command and timer the router's actions are drained and delivered in order, and the
//! next wake-up is the earlier of the router's `poll_timeout` and the first visitor resume deadline.
//!
//! Durability: nothing is sent while handling a command. Its writes at rest ([`LiveWrite`]: a new
//! conversation, messages new or amended, token hashes, assignments, an end) go to `Hub::writes` and its
//! frames, closes and replies to `Hub::out`, in order. After a batch of commands (the one that woke the hub
//! and those already waiting, at most [`MAX_BATCH`]) [`Hub::settle`] commits the writes in one transaction
//! on a blocking thread and only then sends the output: an echo (`id`, `seq`) always follows the commit of
//! its message, and every socket sees frames in the order the hub produced them.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use super::SharedLive as SharedState;
use super::files::StoredFile;
use super::persist::{self, MessageAtRest, PartyAtRest};
use super::socket::Outbox;
use super::tokens::TokenGrant;
use super::{ArchivedMessage, EndedConversation, SocketId, close, unix_ms};
use crate::archive::{CallFile, MessageKind};
use crate::archive_crypto::{ConversationCipher, DataKey};
use crate::chat_protocol::{
    AgentId, AgentToServer, Author, CallLegState, CallParty, ConversationId, EndReason, ErrorCode, FileRef, GroupId,
    LiveConversation, LiveState, ServerToAgent, ServerToVisitor, VisitorToServer,
};
use crate::live_store::{LiveWrite, NewLiveConversation};
use crate::masking::{ConversationMasker, MaskOutcome, MaskedText, Masker, SenderKey};
use crate::media::{MediaError, MediaEvent, MediaParticipantId, MediaRole, MediaRoomId};
use crate::routing::{Action, ConversationAccess, Role, Router, RoutingError};
use crate::store::User;

mod invite;
#[path = "recording.rs"]
mod recording;
pub(crate) use recording::RecordingOutcome;

/// A request to the hub.
#[derive(Debug)]
pub(crate) enum Command {
    /// A visitor socket authenticated by a session token sent `hello`.
    VisitorJoin {
        socket: SocketId,
        outbox: Outbox,
        grant: TokenGrant,
    },
    /// A socket opened without a token sent `resume`.
    VisitorResume {
        socket: SocketId,
        outbox: Outbox,
        origin: String,
        resume_token: String,
        last_seq: u64,
    },
    /// A later frame of a visitor socket (already parsed and size-checked).
    VisitorFrame { socket: SocketId, frame: VisitorToServer },
    /// A visitor socket closed.
    VisitorClosed { socket: SocketId },
    /// An agent socket opened (authenticated by its session cookie).
    AgentOpen {
        socket: SocketId,
        outbox: Outbox,
        user: User,
    },
    /// A frame of an agent socket (already parsed and size-checked).
    AgentFrame { socket: SocketId, frame: AgentToServer },
    /// An agent socket closed.
    AgentClosed { socket: SocketId },
    /// An event of the media side.
    Media(MediaEvent),
    /// A recording change finished (see the `recording` module).
    Recording(RecordingOutcome),
    /// A group's recording policy changed (admin API).
    GroupRecording {
        group: GroupId,
        policy: crate::store::RecordingPolicy,
    },
    /// A join failed; forget the leg.
    CallFailed {
        conversation: ConversationId,
        participant: MediaParticipantId,
    },
    /// May `caller` share a file in the conversation (the visitor's own, or `conversation` for an agent)?
    /// If so, takes one of the conversation's file slots and replies with the conversation. The slot is
    /// given back by [`Command::FileSlotReleased`] or taken over by [`Command::FileShared`].
    FileUpload {
        caller: FileCaller,
        conversation: Option<ConversationId>,
        reply: oneshot::Sender<Result<ConversationId, Refusal>>,
    },
    /// A file was sealed and written: post it into the chat (re-checking the caller), reply with its
    /// reference (masked name). Takes over the slot of its [`Command::FileUpload`], whatever the answer.
    FileShared {
        caller: FileCaller,
        conversation: ConversationId,
        file: StoredFile,
        reply: oneshot::Sender<Result<FileRef, Refusal>>,
    },
    /// An authorised upload failed before its file reached the hub: give its slot back.
    FileSlotReleased { conversation: ConversationId },
    /// May `caller` download file `id`? Replies with its reference and cipher.
    FileFetch {
        caller: FileCaller,
        id: String,
        reply: oneshot::Sender<Result<(FileRef, Arc<ConversationCipher>), Refusal>>,
    },
    /// A console user as the store has it now (after an admin change, or read by a session check or an
    /// authenticated request): the hub's copy of their role and groups follows it. `reply` is answered
    /// once it is applied.
    UserChanged {
        user: User,
        /// Their login sessions were ended (a new password): close their sockets with 4401.
        sessions_ended: bool,
        reply: Option<oneshot::Sender<()>>,
    },
}

/// Who calls a file route.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FileCaller {
    /// A visitor, by the hash of its `files_token`.
    Visitor([u8; 32]),
    /// A console user (agent, supervisor, admin).
    Agent(AgentId),
}

/// Starts the hub (once; later calls return `None`). `media_events` are the SFU's events, if any.
pub(crate) fn spawn(state: &SharedState, media_events: Option<mpsc::Receiver<MediaEvent>>) -> Option<JoinHandle<()>> {
    let rx = state.live.command_rx.lock().ok()?.take()?;
    if let Some(mut events) = media_events {
        let tx = state.live.commands.clone();
        let stop = state.shutdown.stopped();
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    ev = events.recv() => match ev {
                        Some(ev) => if tx.send(Command::Media(ev)).is_err() { break },
                        None => break,
                    },
                }
            }
        });
    }
    let hub = Hub::new(Arc::clone(state));
    Some(tokio::spawn(hub.run(rx)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Party {
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

struct Stored {
    id: String,
    seq: u64,
    ts: u64,
    from: Author,
    party: Party,
    client_id: Option<String>,
    body: MaskedText,
    amended: bool,
    file: Option<FileRef>,
    /// Chat, or an entry of what passed over a call's data channels (in the transcript only: the parties
    /// had it over the data channel, so it is never sent on the WebSocket).
    kind: MessageKind,
    call_file: Option<CallFile>,
}

impl Stored {
    fn is_chat(&self) -> bool {
        self.kind == MessageKind::Chat
    }
}

struct CallLeg {
    participant: MediaParticipantId,
    socket: SocketId,
    /// A supervisor's leg that is whispering to the agent.
    whisper: bool,
    /// Audio and video m-lines of the leg's last offer.
    offered: (usize, usize),
}

struct Conv {
    /// Seals the conversation's records at rest (its data key, wrapped in `live_conversations`).
    cipher: Arc<ConversationCipher>,
    group: GroupId,
    site_key: String,
    visitor_id: String,
    origin: String,
    masker: ConversationMasker,
    messages: Vec<Stored>,
    by_sender: HashMap<SenderKey, Vec<usize>>,
    visitor_socket: Option<SocketId>,
    resume_hash: [u8; 32],
    epoch: u64,
    watchers: BTreeSet<SocketId>,
    participants: Vec<super::Participant>,
    started_at_ms: u64,
    calls: HashMap<Party, CallLeg>,
    /// Hash of the visitor's current `files_token`.
    files_hash: [u8; 32],
    /// Files shared in the chat, with the only copy of their keys.
    files: HashMap<String, (FileRef, Arc<ConversationCipher>)>,
    /// File slots taken by uploads whose body is still being read.
    files_pending: usize,
    /// Bytes of text kept (bodies, client ids, file names), against `limits.max_text_bytes_per_conversation`.
    text_bytes: usize,
    /// Bytes of shared files on disk, against `limits.max_file_bytes_per_conversation`.
    file_bytes: u64,
    /// Indices in `messages` of each call participant's in-call texts (for the masker's amendments).
    call_texts: HashMap<MediaParticipantId, Vec<usize>>,
}

impl Conv {
    /// Applies the masker's amendments to `key`'s earlier messages (their text, and the name of a file
    /// they share) and counts the message about to be pushed as `key`'s. Returns `(id, seq, body)` of
    /// each amended message.
    fn amend_and_track(&mut self, key: SenderKey, outcome: &MaskOutcome) -> Vec<(String, u64, String)> {
        let mut amended = Vec::new();
        let own = self.by_sender.entry(key).or_default();
        for a in outcome.amendments() {
            if a.back == 0 || a.back > own.len() {
                continue;
            }
            let idx = own[own.len() - a.back];
            if let Some(m) = self.messages.get_mut(idx) {
                if let Some(f) = m.file.as_mut() {
                    a.text.as_str().clone_into(&mut f.name);
                    if let Some((r, _)) = self.files.get_mut(&f.id) {
                        r.name.clone_from(&f.name);
                    }
                }
                m.body = a.text;
                m.amended = true;
                amended.push(idx);
            }
        }
        own.push(self.messages.len());
        amended
            .iter()
            .filter_map(|i| self.messages.get(*i))
            .map(|m| (m.id.clone(), m.seq, m.body.as_str().to_owned()))
            .collect()
    }

    /// Stores the next message (its id and `seq` follow the last one's).
    fn push(
        &mut self,
        conv: ConversationId,
        from: Author,
        party: Party,
        client_id: Option<String>,
        body: MaskedText,
        file: Option<FileRef>,
    ) {
        let seq = self.messages.len() as u64 + 1;
        self.text_bytes = self
            .text_bytes
            .saturating_add(body.as_str().len() + client_id.as_ref().map_or(0, String::len));
        self.messages.push(Stored {
            id: format!("{}-{seq}", conv.0),
            seq,
            ts: unix_ms(),
            from,
            party,
            client_id,
            body,
            amended: false,
            file,
            kind: MessageKind::Chat,
            call_file: None,
        });
    }
}

struct AgentEntry {
    name: String,
    role: Role,
    groups: Vec<GroupId>,
    capacity: u32,
    sockets: BTreeSet<SocketId>,
}

struct Hub {
    state: SharedState,
    /// Call recording: policies and each conversation's state (the `recording` module).
    rec: recording::Recordings,
    router: Router,
    masker: Masker,
    group_maskers: HashMap<GroupId, Masker>,
    convs: HashMap<ConversationId, Conv>,
    assigned: BTreeSet<ConversationId>,
    sockets: HashMap<SocketId, Outbox>,
    visitor_sockets: HashMap<SocketId, ConversationId>,
    agent_sockets: HashMap<SocketId, AgentId>,
    watching: HashMap<SocketId, BTreeSet<ConversationId>>,
    agents: HashMap<AgentId, AgentEntry>,
    resume_index: HashMap<[u8; 32], ConversationId>,
    /// Visitors' `files_token` hashes.
    files_index: HashMap<[u8; 32], ConversationId>,
    /// The conversation of every shared file.
    file_convs: HashMap<String, ConversationId>,
    /// Resume tokens of conversations that ended while their visitor was away: a resume within the grace
    /// period hears `ended` (with the reason) instead of a bare refusal.
    ended_while_away: HashMap<[u8; 32], (EndReason, Instant)>,
    deadlines: BinaryHeap<Reverse<(Instant, ConversationId, u64)>>,
    legs: HashMap<MediaParticipantId, (ConversationId, Party)>,
    /// Pending call invitations (see [`invite`]).
    invites: invite::Invitations,
    /// Conversations whose live-list summary changed since the last flush.
    live_dirty: BTreeSet<ConversationId>,
    /// Final summaries of conversations that ended since the last flush.
    live_ended: Vec<LiveConversation>,
    next_conversation: u64,
    next_participant: u64,
    sinks: JoinSet<()>,
    /// Sockets whose outbox overflowed during the current command (closed after it).
    overflowed: Vec<SocketId>,
    /// Set once the server stops: sockets close with 1001.
    stopping: bool,
    /// Writes of the current batch of commands, committed before [`Hub::out`] is sent.
    writes: Vec<LiveWrite>,
    /// What the current batch of commands sends (frames, closes, replies), in order, held until its writes
    /// are committed.
    out: Vec<Deferred>,
}

/// Something the hub sends once the writes before it are committed.
enum Deferred {
    Text(SocketId, Outbox, String),
    Batch(SocketId, Outbox, Vec<String>, usize),
    Close(Outbox, u16, &'static str),
    /// A reply to a request (an upload's file reference, an account change applied).
    Reply(Box<dyn FnOnce() + Send>),
    /// An ended conversation for the sinks (the archive), after its last writes.
    Ended(EndedConversation),
}

/// In-call text and files: transcript entries from the SFU's data channels.
#[path = "incall.rs"]
mod incall;

/// Most commands handled in one batch (one transaction) before its frames are sent.
const MAX_BATCH: usize = 256;

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
    fn new(state: SharedState) -> Self {
        let router = Router::new(state.config.live.router_config());
        // Validated with the configuration; the built-in policy is the fallback.
        let masker = state.config.live.masking.compile().unwrap_or_else(|e| {
            tracing::error!(error = %e, "masking policy invalid; using the built-in policy");
            Masker::default()
        });
        Self {
            state,
            rec: recording::Recordings::default(),
            router,
            masker,
            group_maskers: HashMap::new(),
            convs: HashMap::new(),
            assigned: BTreeSet::new(),
            sockets: HashMap::new(),
            visitor_sockets: HashMap::new(),
            agent_sockets: HashMap::new(),
            watching: HashMap::new(),
            agents: HashMap::new(),
            resume_index: HashMap::new(),
            files_index: HashMap::new(),
            file_convs: HashMap::new(),
            ended_while_away: HashMap::new(),
            deadlines: BinaryHeap::new(),
            legs: HashMap::new(),
            live_dirty: BTreeSet::new(),
            live_ended: Vec::new(),
            // Ids stay unique across restarts (the archive keys transcripts by id).
            next_conversation: unix_ms().saturating_mul(1000),
            next_participant: 1,
            invites: invite::Invitations::default(),
            sinks: JoinSet::new(),
            overflowed: Vec::new(),
            stopping: false,
            writes: Vec::new(),
            out: Vec::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        // Commands wait in the channel until the conversations at rest are back.
        let keep = self.restore().await;
        self.load_recording().await;
        if self.state.config.live.files.enabled() {
            super::files::prune_dir(super::files::dir(&self.state), keep).await;
        }
        self.settle().await;
        self.gauges();
        let stop = self.state.shutdown.stopped();
        tokio::pin!(stop);
        loop {
            let deadline = self.next_deadline();
            let sleep = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        // Group commit: the commands already waiting join this batch (one transaction).
                        self.handle(cmd);
                        for _ in 1..MAX_BATCH {
                            match rx.try_recv() {
                                Ok(cmd) => self.handle(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = sleep => self.handle_timeout(),
                Some(_) = self.sinks.join_next(), if !self.sinks.is_empty() => {}
            }
            self.flush_live();
            self.settle().await;
            self.gauges();
        }
        // The orderly stop: every conversation ends (`ended` with reason `closed` to its visitor and its
        // agent-side viewers, then archived), then every socket still open hears why it closes.
        self.stopping = true;
        let mut ids: Vec<ConversationId> = self.convs.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.end_conversation(id, EndReason::Closed);
        }
        self.flush_live();
        let sockets: Vec<SocketId> = self.sockets.keys().copied().collect();
        for s in sockets {
            self.close_socket(s, 1001, "server shutting down");
        }
        self.settle().await;
        self.gauges();
        let sinks = std::mem::take(&mut self.sinks);
        let _ = tokio::time::timeout(Duration::from_secs(5), sinks.join_all()).await;
        tracing::debug!("live hub stopped");
    }

    /// The masker of `group`: the global policy plus the group's own patterns.
    fn masker_for(&mut self, group: &GroupId) -> Masker {
        if let Some(m) = self.group_maskers.get(group) {
            return m.clone();
        }
        let patterns = self
            .state
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

    fn gauges(&self) {
        let active = self.assigned.len();
        metrics::gauge!("relaydesk_conversations_active").set(active as f64);
        let queued = self.convs.len().saturating_sub(active);
        metrics::gauge!("relaydesk_conversations_queued").set(queued as f64);
        let live = self.convs.len();
        self.state.live.with_occupancy(|o| o.set_totals(live, queued));
    }

    fn next_deadline(&mut self) -> Option<Instant> {
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

    fn handle_timeout(&mut self) {
        let now = Instant::now();
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

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::VisitorJoin { socket, outbox, grant } => self.visitor_join(socket, outbox, grant),
            Command::VisitorResume {
                socket,
                outbox,
                origin,
                resume_token,
                last_seq,
            } => self.visitor_resume(socket, outbox, &origin, &resume_token, last_seq),
            Command::VisitorFrame { socket, frame } => self.visitor_frame(socket, frame),
            Command::VisitorClosed { socket } => self.visitor_closed(socket),
            Command::AgentOpen { socket, outbox, user } => self.agent_open(socket, outbox, user),
            Command::AgentFrame { socket, frame } => self.agent_frame(socket, frame),
            Command::AgentClosed { socket } => self.agent_closed(socket),
            Command::Media(event) => self.media_event(event),
            Command::Recording(outcome) => self.recording_outcome(outcome),
            Command::GroupRecording { group, policy } => self.rec.set_policy(group, policy),
            Command::CallFailed {
                conversation,
                participant,
            } => {
                if let Some((conv, party)) = self.legs.remove(&participant)
                    && let Some(c) = self.convs.get_mut(&conv)
                    && c.calls.get(&party).is_some_and(|l| l.participant == participant)
                {
                    c.calls.remove(&party);
                    if party.is_party_to_call() {
                        self.live_dirty.insert(conv);
                    }
                }
                let _ = conversation;
            }
            Command::FileUpload {
                caller,
                conversation,
                reply,
            } => {
                let result = self
                    .file_writer(caller, conversation)
                    .and_then(|(conv, _)| self.take_file_slot(conv));
                let _ = reply.send(result);
            }
            Command::FileShared {
                caller,
                conversation,
                file,
                reply,
            } => {
                // Answered once the file's message is committed.
                let result = self.share_file(caller, conversation, file);
                self.out.push(Deferred::Reply(Box::new(move || {
                    let _ = reply.send(result);
                })));
            }
            Command::FileSlotReleased { conversation } => {
                if let Some(c) = self.convs.get_mut(&conversation) {
                    c.files_pending = c.files_pending.saturating_sub(1);
                }
            }
            Command::FileFetch { caller, id, reply } => {
                let _ = reply.send(self.file_reader(caller, &id));
            }
            Command::UserChanged {
                user,
                sessions_ended,
                reply,
            } => {
                self.user_changed(user, sessions_ended);
                if let Some(reply) = reply {
                    // After the sockets it closed are told.
                    self.out.push(Deferred::Reply(Box::new(move || {
                        let _ = reply.send(());
                    })));
                }
            }
        }
    }

    // ----- delivery -----

    /// Queues a frame for `socket`: it goes out with the current batch's output, after its writes are
    /// committed ([`Hub::settle`]).
    fn send_text(&mut self, socket: SocketId, text: String) {
        let Some(tx) = self.sockets.get(&socket) else { return };
        self.out.push(Deferred::Text(socket, tx.clone(), text));
    }

    /// Sends a history replay: one queue entry, written in order before anything sent after it.
    fn send_batch(&mut self, socket: SocketId, frames: Vec<String>) {
        let Some(tx) = self.sockets.get(&socket) else { return };
        // Four full conversations may wait unwritten; beyond, the client counts as a slow consumer.
        let backlog = self.state.config.live.max_messages_per_conversation.saturating_mul(4);
        self.out.push(Deferred::Batch(socket, tx.clone(), frames, backlog));
    }

    /// Commits the current batch's writes, then sends its output in order; repeats while sockets that
    /// overflowed meanwhile are being closed (which produces more of both).
    async fn settle(&mut self) {
        loop {
            self.commit().await;
            self.flush_out();
            if self.overflowed.is_empty() {
                break;
            }
            self.reap();
        }
    }

    /// Commits the pending writes in one transaction. A failure (disk full, I/O error) is retried with a
    /// growing pause: nothing of the batch is sent until it is durable, so the hub waits rather than
    /// acknowledge what it could not store. While the server stops, it gives up after a few attempts.
    async fn commit(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        let writes = Arc::new(std::mem::take(&mut self.writes));
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.state.archive.live_apply(Arc::clone(&writes)).await {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!("relaydesk_live_store_failures_total").increment(1);
                    tracing::error!(error = %e, attempts, "storing live conversations failed; retrying");
                    if self.state.shutdown.is_shutting_down() && attempts >= 3 {
                        tracing::error!("giving up storing live conversations on the way down");
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
        metrics::histogram!("relaydesk_live_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("relaydesk_live_commit_writes").record(writes.len() as f64);
    }

    /// Sends the output held for the commit, in order.
    fn flush_out(&mut self) {
        for d in std::mem::take(&mut self.out) {
            match d {
                Deferred::Text(socket, tx, text) => {
                    if !self.overflowed.contains(&socket) && !tx.send_text(text) {
                        self.overflowed(socket);
                    }
                }
                Deferred::Batch(socket, tx, frames, backlog) => {
                    if !self.overflowed.contains(&socket) && !tx.send_batch(frames, backlog) {
                        self.overflowed(socket);
                    }
                }
                Deferred::Close(tx, code, reason) => tx.close(code, reason),
                Deferred::Reply(reply) => reply(),
                Deferred::Ended(record) => {
                    for sink in self.state.live.sinks() {
                        let record = record.clone();
                        self.sinks.spawn(async move { sink.conversation_ended(record).await });
                    }
                }
            }
        }
    }

    /// The socket's queue is full (a slow consumer) or gone: the outbox has told its task to close it with
    /// 4429; after the current command the socket is treated as closed (see [`Hub::reap`]).
    fn overflowed(&mut self, socket: SocketId) {
        tracing::info!(socket = socket.0, "outbox full or closed; closing the socket");
        self.sockets.remove(&socket);
        self.overflowed.push(socket);
    }

    /// Treats the sockets that overflowed as closed (an agent goes offline as on a dropped socket, a visitor
    /// may resume). Closing them may overflow others, so this runs until none is left.
    fn reap(&mut self) {
        while let Some(socket) = self.overflowed.pop() {
            if self.agent_sockets.contains_key(&socket) {
                self.agent_closed(socket);
            } else {
                self.visitor_closed(socket);
            }
            self.flush_live();
        }
    }

    fn close_socket(&mut self, socket: SocketId, code: u16, reason: &'static str) {
        if let Some(tx) = self.sockets.remove(&socket) {
            self.out.push(Deferred::Close(tx, code, reason));
        }
    }

    fn send_visitor(&mut self, conv: ConversationId, frame: &ServerToVisitor) {
        let Some(socket) = self.convs.get(&conv).and_then(|c| c.visitor_socket) else {
            return;
        };
        if let Some(text) = to_json(frame) {
            self.send_text(socket, text);
        }
    }

    fn send_agent(&mut self, agent: AgentId, frame: &ServerToAgent) {
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

    fn send_agent_socket(&mut self, socket: SocketId, frame: &ServerToAgent) {
        if let Some(text) = to_json(frame) {
            self.send_text(socket, text);
        }
    }

    /// The sockets that see a conversation on the agent side: its agent's, and its watchers'.
    fn agent_viewers(&self, conv: ConversationId) -> Vec<(SocketId, AgentId)> {
        let mut out = Vec::new();
        if let Some(agent) = self.router.access(conv).and_then(|a| a.agent)
            && let Some(entry) = self.agents.get(&agent)
        {
            out.extend(entry.sockets.iter().map(|s| (*s, agent)));
        }
        if let Some(c) = self.convs.get(&conv) {
            for w in &c.watchers {
                if let Some(a) = self.agent_sockets.get(w)
                    && !out.iter().any(|(s, _)| s == w)
                {
                    out.push((*w, *a));
                }
            }
        }
        out
    }

    fn send_agent_viewers(&mut self, conv: ConversationId, frame: &ServerToAgent) {
        let viewers = self.agent_viewers(conv);
        if let Some(text) = to_json(frame) {
            for (s, _) in viewers {
                self.send_text(s, text.clone());
            }
        }
    }

    fn visitor_error(&mut self, socket: SocketId, (code, msg): Refusal) {
        if let Some(text) = to_json(&ServerToVisitor::error(code, msg)) {
            self.send_text(socket, text);
        }
    }

    fn agent_error(&mut self, socket: SocketId, conv: Option<ConversationId>, (code, msg): Refusal) {
        if let Some(text) = to_json(&ServerToAgent::error(code, msg, conv)) {
            self.send_text(socket, text);
        }
    }

    fn agent_message_frame(conv: ConversationId, m: &Stored, viewer: Option<AgentId>) -> ServerToAgent {
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

    fn visitor_message_frame(m: &Stored) -> ServerToVisitor {
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
    fn replay_to_agent_socket(&mut self, socket: SocketId, conv: ConversationId, after: u64, viewer: AgentId) {
        let mut frames = Vec::new();
        self.agent_replay(&mut frames, conv, after, viewer);
        self.send_batch(socket, frames);
    }

    /// Appends the agent-side frames of the messages of `conv` after `after` to `frames`.
    fn agent_replay(&self, frames: &mut Vec<String>, conv: ConversationId, after: u64, viewer: AgentId) {
        if let Some(c) = self.convs.get(&conv) {
            frames.extend(
                c.messages
                    .iter()
                    .filter(|m| m.seq > after && m.is_chat())
                    .filter_map(|m| to_json(&Self::agent_message_frame(conv, m, Some(viewer)))),
            );
        }
    }

    // ----- the supervisors' live list -----

    fn live_summary(&self, conv: ConversationId, state: Option<LiveState>) -> Option<LiveConversation> {
        let c = self.convs.get(&conv)?;
        let agent = self.router.access(conv).and_then(|a| a.agent);
        let state = state.unwrap_or(if agent.is_some() {
            LiveState::Assigned
        } else {
            LiveState::Queued
        });
        Some(LiveConversation {
            conversation: conv,
            group: c.group.clone(),
            state,
            agent,
            agent_name: agent.and_then(|a| self.agents.get(&a)).map(|e| e.name.clone()),
            started_at_ms: c.started_at_ms,
            in_call: c.calls.keys().any(|p| p.is_party_to_call()),
        })
    }

    /// The sockets of supervisors of `group` and of admins.
    fn supervisor_sockets(&self, group: &GroupId) -> Vec<SocketId> {
        self.agents
            .values()
            .filter(|e| match e.role {
                Role::Admin => true,
                Role::Supervisor => e.groups.contains(group),
                Role::Agent => false,
            })
            .flat_map(|e| e.sockets.iter().copied())
            .collect()
    }

    /// Sends the summaries that changed since the last call (once per command, so changes coalesce).
    fn flush_live(&mut self) {
        if self.live_dirty.is_empty() && self.live_ended.is_empty() {
            return;
        }
        let mut summaries = std::mem::take(&mut self.live_ended);
        for conv in std::mem::take(&mut self.live_dirty) {
            summaries.extend(self.live_summary(conv, None));
        }
        for summary in summaries {
            let targets = self.supervisor_sockets(&summary.group);
            if targets.is_empty() {
                continue;
            }
            if let Some(text) = to_json(&ServerToAgent::LiveUpdate { summary }) {
                for s in targets {
                    self.send_text(s, text.clone());
                }
            }
        }
    }

    fn send_live_list(&mut self, socket: SocketId, role: Role, groups: &[GroupId]) {
        let mut ids: Vec<ConversationId> = self
            .convs
            .iter()
            .filter(|(_, c)| role == Role::Admin || groups.contains(&c.group))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        let conversations: Vec<LiveConversation> =
            ids.into_iter().filter_map(|id| self.live_summary(id, None)).collect();
        self.send_agent_socket(socket, &ServerToAgent::LiveList { conversations });
    }

    // ----- router actions -----

    fn drain(&mut self) {
        while let Some(action) = self.router.poll_action() {
            self.deliver(action);
        }
    }

    fn deliver(&mut self, action: Action) {
        match action {
            Action::Offer {
                conversation,
                agent,
                expires_at,
                transfer_from,
            } => {
                let Some(group) = self.convs.get(&conversation).map(|c| c.group.clone()) else {
                    return;
                };
                let ms = expires_at.saturating_duration_since(Instant::now()).as_millis();
                self.send_agent(
                    agent,
                    &ServerToAgent::Offered {
                        conversation,
                        group,
                        expires_in_ms: u64::try_from(ms).unwrap_or(u64::MAX),
                        transfer_from,
                    },
                );
            }
            Action::OfferWithdrawn {
                conversation,
                agent,
                reason,
            } => self.send_agent(
                agent,
                &ServerToAgent::OfferWithdrawn {
                    conversation,
                    reason: reason.into(),
                },
            ),
            Action::Assigned {
                conversation,
                agent,
                previous,
            } => self.assigned(conversation, agent, previous),
            Action::QueuePosition { conversation, position } => {
                self.send_visitor(conversation, &ServerToVisitor::QueuePosition { position });
            }
            Action::Requeued {
                conversation,
                group,
                previous_agent,
                reason,
            } => {
                self.assigned.remove(&conversation);
                self.live_dirty.insert(conversation);
                let masker = self.masker_for(&group);
                let mut old_group = None;
                if let Some(c) = self.convs.get_mut(&conversation)
                    && c.group != group
                {
                    c.masker.set_masker(masker);
                    old_group = Some(std::mem::replace(&mut c.group, group));
                }
                if let Some(old) = old_group {
                    self.moved_group(conversation, &old);
                }
                if let Some(c) = self.convs.get(&conversation) {
                    self.writes.push(LiveWrite::Routing {
                        id: conversation.0,
                        group: c.group.as_str().to_owned(),
                        agent: None,
                    });
                }
                self.drop_leg(conversation, Party::Agent(previous_agent), "transferred");
                self.send_agent(
                    previous_agent,
                    &ServerToAgent::Unassigned {
                        conversation,
                        reason: reason.into(),
                    },
                );
                self.send_visitor(conversation, &ServerToVisitor::Transferred {});
            }
            Action::TransferFailed {
                conversation,
                from,
                to,
                reason,
            } => self.send_agent(
                from,
                &ServerToAgent::TransferFailed {
                    conversation,
                    to,
                    reason: reason.into(),
                },
            ),
            Action::QueueTimedOut { conversation, .. } => {
                metrics::counter!("relaydesk_queue_timeouts_total").increment(1);
                self.end_conversation(conversation, EndReason::QueueTimeout);
            }
            Action::AgentStatusChanged { agent, status } => {
                let frame = ServerToAgent::PresenceChanged { agent, status };
                let Some(text) = to_json(&frame) else { return };
                let groups = self.agents.get(&agent).map(|a| a.groups.clone()).unwrap_or_default();
                let mut targets = Vec::new();
                for (id, entry) in &self.agents {
                    let watcher = match entry.role {
                        Role::Admin => true,
                        Role::Supervisor => entry.groups.iter().any(|g| groups.contains(g)),
                        Role::Agent => false,
                    };
                    if *id == agent || watcher {
                        targets.extend(entry.sockets.iter().copied());
                    }
                }
                for s in targets {
                    self.send_text(s, text.clone());
                }
            }
        }
    }

    /// The conversation moved to another group: the old group's supervisors see it leave their list (the
    /// update names the new group), and monitors and watchers who may no longer see it are dropped.
    fn moved_group(&mut self, conv: ConversationId, old: &GroupId) {
        if let Some(summary) = self.live_summary(conv, None)
            && let Some(text) = to_json(&ServerToAgent::LiveUpdate { summary })
        {
            for s in self.supervisor_sockets(old) {
                self.send_text(s, text.clone());
            }
        }
        let Some(c) = self.convs.get(&conv) else { return };
        let monitors: Vec<AgentId> = c
            .calls
            .keys()
            .filter_map(|p| match p {
                Party::Supervisor(a) => Some(*a),
                _ => None,
            })
            .collect();
        let watchers: Vec<SocketId> = c.watchers.iter().copied().collect();
        for a in monitors {
            if self.check(a, conv, crate::routing::can_monitor).is_err() {
                self.drop_leg(conv, Party::Supervisor(a), "not_permitted");
            }
        }
        for w in watchers {
            let Some(&a) = self.agent_sockets.get(&w) else { continue };
            if self.check(a, conv, crate::routing::can_read).is_err() {
                if let Some(c) = self.convs.get_mut(&conv) {
                    c.watchers.remove(&w);
                }
                if let Some(set) = self.watching.get_mut(&w) {
                    set.remove(&conv);
                }
                self.agent_error(
                    w,
                    Some(conv),
                    (
                        ErrorCode::Forbidden,
                        "the conversation moved to a group you do not supervise",
                    ),
                );
            }
        }
    }

    fn assigned(&mut self, conversation: ConversationId, agent: AgentId, previous: Option<AgentId>) {
        self.assigned.insert(conversation);
        self.live_dirty.insert(conversation);
        let Some(c) = self.convs.get_mut(&conversation) else {
            return;
        };
        if !c.participants.iter().any(|p| p.agent == agent) {
            let name = self.agents.get(&agent).map(|a| a.name.clone()).unwrap_or_default();
            c.participants.push(super::Participant {
                agent,
                name,
                joined_at_ms: unix_ms(),
            });
            match persist::seal_state(&c.cipher, &c.visitor_id, &c.participants) {
                Ok(state) => self.writes.push(LiveWrite::State {
                    id: conversation.0,
                    state,
                }),
                Err(e) => tracing::error!(conversation = %conversation, error = %e, "sealing a conversation failed"),
            }
        }
        let group = c.group.clone();
        self.writes.push(LiveWrite::Routing {
            id: conversation.0,
            group: group.as_str().to_owned(),
            agent: Some(agent.0),
        });
        if let Some(prev) = previous {
            self.drop_leg(conversation, Party::Agent(prev), "transferred");
            self.send_agent(
                prev,
                &ServerToAgent::Unassigned {
                    conversation,
                    reason: crate::chat_protocol::UnassignedReason::Transferred,
                },
            );
        }
        self.send_agent(agent, &ServerToAgent::Assigned { conversation, group });
        let sockets: Vec<SocketId> = self
            .agents
            .get(&agent)
            .map(|a| a.sockets.iter().copied().collect())
            .unwrap_or_default();
        for s in sockets {
            self.replay_to_agent_socket(s, conversation, 0, agent);
        }
        let agent_name = self.agents.get(&agent).map(|a| a.name.clone()).unwrap_or_default();
        self.send_visitor(conversation, &ServerToVisitor::Assigned { agent_name });
    }

    // ----- visitors -----

    /// A fresh visitor token for `conv`: its hash replaces the old one in the conversation (`slot`) and in
    /// `index`, so the previous token stops working.
    fn rotate_token(
        convs: &mut HashMap<ConversationId, Conv>,
        index: &mut HashMap<[u8; 32], ConversationId>,
        conv: ConversationId,
        slot: fn(&mut Conv) -> &mut [u8; 32],
    ) -> Option<String> {
        let token = match crate::token::new_session_token() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "no randomness for a visitor token");
                return None;
            }
        };
        let hash = crate::token::hash_token(&token);
        let old = std::mem::replace(slot(convs.get_mut(&conv)?), hash);
        index.remove(&old);
        index.insert(hash, conv);
        Some(token)
    }

    fn new_resume_token(&mut self, conv: ConversationId) -> Option<String> {
        Self::rotate_token(&mut self.convs, &mut self.resume_index, conv, |c| &mut c.resume_hash)
    }

    /// A new `files_token` for the visitor of `conv`, when files are enabled.
    fn new_files_token(&mut self, conv: ConversationId) -> Option<String> {
        if !self.state.config.live.files.enabled() {
            return None;
        }
        Self::rotate_token(&mut self.convs, &mut self.files_index, conv, |c| &mut c.files_hash)
    }

    fn welcome(&mut self, conv: ConversationId) -> bool {
        let Some(resume_token) = self.new_resume_token(conv) else {
            return false;
        };
        let files_token = self.new_files_token(conv);
        if let Some(c) = self.convs.get(&conv) {
            // A no-op for a conversation not created at rest yet (its creation carries the hashes).
            self.writes.push(LiveWrite::Tokens {
                id: conv.0,
                resume_hash: c.resume_hash,
                files_hash: c.files_hash,
            });
        }
        let secs = self.state.config.live.resume_grace_ms.div_ceil(1000);
        self.send_visitor(
            conv,
            &ServerToVisitor::Welcome {
                conversation: conv,
                resume_token,
                resume_within_secs: u32::try_from(secs).unwrap_or(u32::MAX),
                files_token,
            },
        );
        true
    }

    fn visitor_join(&mut self, socket: SocketId, outbox: Outbox, grant: TokenGrant) {
        self.sockets.insert(socket, outbox);
        if let Err(busy) = self.state.live.admits(&self.state.config.live.limits, &grant.site_key) {
            // Tokens issued before the cap was reached still meet it here.
            metrics::counter!("relaydesk_visitor_tokens_refused_total", "reason" => busy.label()).increment(1);
            tracing::info!(reason = busy.label(), "visitor refused: conversation cap");
            if let Some(text) = to_json(&ServerToVisitor::error(ErrorCode::Busy, busy.to_string())) {
                self.send_text(socket, text);
            }
            self.close_socket(socket, close::BUSY, "server busy");
            return;
        }
        self.next_conversation += 1;
        let id = ConversationId(self.next_conversation);
        let group = GroupId::from_name(&grant.group);
        self.visitor_sockets.insert(socket, id);
        let masker = ConversationMasker::new(self.masker_for(&group));
        let key = match DataKey::generate() {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::error!(error = %e, "no randomness for a conversation key");
                self.visitor_sockets.remove(&socket);
                self.close_socket(socket, 1011, "internal error");
                return;
            }
        };
        self.convs.insert(
            id,
            Conv {
                cipher: Arc::new(ConversationCipher::new(&key, id.0.to_string())),
                group: group.clone(),
                site_key: grant.site_key,
                visitor_id: grant.visitor_id,
                origin: grant.origin,
                masker,
                messages: Vec::new(),
                by_sender: HashMap::new(),
                visitor_socket: Some(socket),
                resume_hash: [0; 32],
                epoch: 0,
                watchers: BTreeSet::new(),
                participants: Vec::new(),
                started_at_ms: unix_ms(),
                calls: HashMap::new(),
                files_hash: [0; 32],
                files: HashMap::new(),
                files_pending: 0,
                text_bytes: 0,
                file_bytes: 0,
                call_texts: HashMap::new(),
            },
        );
        if !self.welcome(id) {
            self.convs.remove(&id);
            self.close_socket(socket, 1011, "internal error");
            return;
        }
        if let Some(c) = self.convs.get(&id) {
            match persist::seal_state(&c.cipher, &c.visitor_id, &c.participants) {
                Ok(state) => self.writes.push(LiveWrite::Create(Box::new(NewLiveConversation {
                    id: id.0,
                    group: c.group.as_str().to_owned(),
                    site_key: c.site_key.clone(),
                    origin: c.origin.clone(),
                    started_at_ms: c.started_at_ms,
                    resume_hash: c.resume_hash,
                    files_hash: c.files_hash,
                    key: Arc::clone(&key),
                    state,
                }))),
                Err(e) => tracing::error!(conversation = %id, error = %e, "sealing a conversation failed"),
            }
        }
        let key = self.convs.get(&id).map(|c| c.site_key.clone()).unwrap_or_default();
        self.state.live.with_occupancy(|o| o.started(&key));
        if let Err(e) = self.router.enqueue(Instant::now(), id, group) {
            tracing::error!(error = %e, "enqueue failed");
        }
        self.live_dirty.insert(id);
        self.drain();
        tracing::info!(conversation = %id, "visitor joined");
    }

    fn visitor_resume(&mut self, socket: SocketId, outbox: Outbox, origin: &str, token: &str, last_seq: u64) {
        self.sockets.insert(socket, outbox);
        let hash = crate::token::hash_token(token);
        if let Some((reason, until)) = self.ended_while_away.remove(&hash)
            && Instant::now() < until
        {
            if let Some(text) = to_json(&ServerToVisitor::Ended { reason }) {
                self.send_text(socket, text);
            }
            self.close_socket(socket, 1000, "conversation ended");
            return;
        }
        let Some(id) = self.resume_index.remove(&hash) else {
            tracing::info!("resume refused: unknown or used token");
            metrics::counter!("relaydesk_visitor_tokens_refused_total", "reason" => "resume").increment(1);
            self.close_socket(socket, close::RESUME_REFUSED, "resume token invalid");
            return;
        };
        let Some(c) = self.convs.get_mut(&id) else {
            self.close_socket(socket, close::RESUME_REFUSED, "resume token invalid");
            return;
        };
        if c.origin != origin {
            tracing::info!(conversation = %id, "resume refused: foreign origin");
            self.close_socket(socket, close::ORIGIN, "origin mismatch");
            return;
        }
        c.epoch += 1;
        let old = c.visitor_socket.replace(socket);
        if let Some(old) = old {
            self.visitor_sockets.remove(&old);
            self.close_socket(old, close::SUPERSEDED, "resumed elsewhere");
        }
        self.visitor_sockets.insert(socket, id);
        if !self.welcome(id) {
            return;
        }
        // What was missed, in order; then earlier messages that were amended (idempotent replacements).
        let frames: Vec<String> = match self.convs.get(&id) {
            Some(c) => {
                let mut v: Vec<String> = c
                    .messages
                    .iter()
                    .filter(|m| m.seq > last_seq && m.is_chat())
                    .filter_map(|m| to_json(&Self::visitor_message_frame(m)))
                    .collect();
                v.extend(
                    c.messages
                        .iter()
                        .filter(|m| m.seq <= last_seq && m.amended && m.is_chat())
                        .filter_map(|m| {
                            to_json(&ServerToVisitor::MessageAmended {
                                id: m.id.clone(),
                                seq: m.seq,
                                body: m.body.as_str().to_owned(),
                            })
                        }),
                );
                v
            }
            None => Vec::new(),
        };
        self.send_batch(socket, frames);
        match self.router.conversation_state(id) {
            Some(crate::routing::ConversationState::Queued { position, .. }) => {
                self.send_visitor(id, &ServerToVisitor::QueuePosition { position });
            }
            Some(crate::routing::ConversationState::Assigned { agent, .. }) => {
                let agent_name = self.agents.get(&agent).map(|a| a.name.clone()).unwrap_or_default();
                self.send_visitor(id, &ServerToVisitor::Assigned { agent_name });
            }
            None => {}
        }
        tracing::info!(conversation = %id, "visitor resumed");
    }

    fn visitor_closed(&mut self, socket: SocketId) {
        self.sockets.remove(&socket);
        let Some(id) = self.visitor_sockets.remove(&socket) else {
            return;
        };
        let grace = Duration::from_millis(self.state.config.live.resume_grace_ms);
        let Some(c) = self.convs.get_mut(&id) else { return };
        if c.visitor_socket != Some(socket) {
            return;
        }
        c.visitor_socket = None;
        c.epoch += 1;
        self.deadlines.push(Reverse((Instant::now() + grace, id, c.epoch)));
        self.drop_leg(id, Party::Visitor, "disconnected");
    }

    fn visitor_frame(&mut self, socket: SocketId, frame: VisitorToServer) {
        let Some(&id) = self.visitor_sockets.get(&socket) else {
            return;
        };
        match frame {
            VisitorToServer::Hello { .. } | VisitorToServer::Resume { .. } => {
                self.visitor_error(socket, (ErrorCode::Conflict, "already joined"));
            }
            VisitorToServer::Message { client_id, body } => {
                if let Err(r) = self.append_message(id, Party::Visitor, client_id, &body) {
                    self.visitor_error(socket, r);
                }
            }
            VisitorToServer::Typing { active } => self.send_agent_viewers(
                id,
                &ServerToAgent::Typing {
                    conversation: id,
                    from: Author::Visitor {},
                    active,
                },
            ),
            VisitorToServer::Delivered { up_to_seq } => self.send_agent_viewers(
                id,
                &ServerToAgent::Delivered {
                    conversation: id,
                    up_to_seq,
                },
            ),
            VisitorToServer::Read { up_to_seq } => self.send_agent_viewers(
                id,
                &ServerToAgent::Read {
                    conversation: id,
                    up_to_seq,
                },
            ),
            VisitorToServer::End {} => self.end_conversation(id, EndReason::VisitorLeft),
            VisitorToServer::CallOffer { sdp } => self.call_offer(id, Party::Visitor, socket, sdp),
            VisitorToServer::CallInvite { video } => self.call_invite(id, Party::Visitor, socket, video),
            VisitorToServer::CallAccept {} => self.call_reply(id, Party::Visitor, socket, true),
            VisitorToServer::CallDecline {} => self.call_reply(id, Party::Visitor, socket, false),
            VisitorToServer::CallCancel {} => self.call_cancel(id, Party::Visitor, socket),
            VisitorToServer::CallScreenReply { share } => self.call_screen_reply(id, socket, share),
            VisitorToServer::CallMediaState {
                audio,
                video,
                screen,
                reconnecting,
            } => self.call_media_state(id, Party::Visitor, socket, [audio, video, screen, reconnecting]),
            VisitorToServer::CallEnd { reason } => self.call_end_with(id, Party::Visitor, reason),
            VisitorToServer::CallPrepare {} => self.call_prepare(id, Party::Visitor, socket),
            VisitorToServer::Payment { active } => self.recording_payment(id, active),
        }
    }

    // ----- chat -----

    fn author_of(&self, party: Party) -> Author {
        match party {
            Party::Visitor => Author::Visitor {},
            // Supervisors never write chat (the authorisation matrix refuses it); named like an agent if so.
            Party::Agent(a) | Party::Supervisor(a) => Author::Agent {
                id: a,
                name: self.agents.get(&a).map(|e| e.name.clone()).unwrap_or_default(),
            },
        }
    }

    /// The conversation, if it may take one more message of `text` bytes.
    fn conv_with_room(&mut self, conv: ConversationId, text: usize) -> Result<&mut Conv, Refusal> {
        let max = self.state.config.live.max_messages_per_conversation;
        let max_text = self.state.config.live.limits.max_text_bytes_per_conversation;
        let c = self
            .convs
            .get_mut(&conv)
            .ok_or((ErrorCode::NotFound, "no such conversation"))?;
        if c.messages.len() >= max {
            return Err((ErrorCode::TooLarge, "the conversation has too many messages"));
        }
        if c.text_bytes.saturating_add(text) > max_text {
            return Err((ErrorCode::TooLarge, "the conversation has reached its size limit"));
        }
        Ok(c)
    }

    /// Masks, stores and delivers one message. `body` is the raw text and goes nowhere but the masker.
    fn append_message(
        &mut self,
        conv: ConversationId,
        party: Party,
        client_id: String,
        body: &str,
    ) -> Result<(), Refusal> {
        let from = self.author_of(party);
        let c = self.conv_with_room(conv, body.len() + client_id.len())?;
        let key = party.sender_key();
        let outcome = c.masker.mask(key, body);
        let amendments = c.amend_and_track(key, &outcome);
        c.push(conv, from, party, Some(client_id), outcome.text, None);
        let seq = c.messages.len() as u64;
        self.persist_messages(conv, std::iter::once(seq).chain(amendments.iter().map(|a| a.1)));
        metrics::counter!("relaydesk_chat_messages_total", "from" => party.metric_label()).increment(1);
        if !outcome.findings.is_empty() {
            metrics::counter!("relaydesk_chat_masked_messages_total").increment(1);
        }
        self.deliver_last(conv);
        self.send_amendments(conv, amendments);
        Ok(())
    }

    /// Queues the writes of messages `seqs` of `conv` (new or amended), sealed.
    fn persist_messages(&mut self, conv: ConversationId, seqs: impl Iterator<Item = u64>) {
        let Some(c) = self.convs.get(&conv) else { return };
        for seq in seqs {
            let Some(m) = usize::try_from(seq)
                .ok()
                .and_then(|s| s.checked_sub(1))
                .and_then(|i| c.messages.get(i))
            else {
                continue;
            };
            let rest = MessageAtRest {
                id: m.id.clone(),
                ts: m.ts,
                from: m.from.clone(),
                party: m.party.at_rest(),
                client_id: m.client_id.clone(),
                body: m.body.as_str().to_owned(),
                amended: m.amended,
                file: m.file.clone(),
                kind: m.kind,
                call_file: m.call_file.clone(),
            };
            match persist::seal_message(&c.cipher, m.seq, &rest) {
                Ok(body) => self.writes.push(LiveWrite::Message {
                    id: conv.0,
                    seq: m.seq,
                    body,
                }),
                Err(e) => tracing::error!(conversation = %conv, error = %e, "sealing a message failed"),
            }
        }
    }

    // ----- restart -----

    /// Brings back the live conversations at rest (after a crash or a restart), before any command is
    /// served: conversations with their messages, files and tokens; their agents, registered from the
    /// store as it is now and given the reconnect grace; the queues, in the order the conversations
    /// started. A conversation that ended before the archive had it is archived now; one whose agent is
    /// gone or disabled is requeued; one that cannot be read (a lost master key, a damaged row) stays at
    /// rest untouched and is reported. Returns the ids of the shared files to keep.
    async fn restore(&mut self) -> std::collections::HashSet<String> {
        let mut keep = std::collections::HashSet::new();
        let stored = match self.state.archive.live_load().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "the live conversations at rest could not be read; none restored");
                return keep;
            }
        };
        if stored.is_empty() {
            return keep;
        }
        let wanted: BTreeSet<i64> = stored
            .iter()
            .filter(|c| c.ended.is_none())
            .filter_map(|c| c.agent)
            .collect();
        let users = self
            .state
            .store
            .call(move |db| {
                let mut out = HashMap::new();
                for id in wanted {
                    match db.user(id) {
                        Ok(u) if !u.disabled => {
                            out.insert(id, u);
                        }
                        Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            })
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "the agents of restored conversations could not be read; requeueing");
                HashMap::new()
            });
        let now = Instant::now();
        for (id, user) in &users {
            let groups: Vec<GroupId> = user.groups.iter().map(|g| GroupId::from_name(g)).collect();
            if let Err(e) = self.router.add_agent(now, AgentId(*id), groups, user.max_conversations) {
                tracing::warn!(agent = id, error = %e, "restored agent not registered");
            }
        }
        let (mut restored, mut archived, mut failed) = (0usize, 0usize, 0usize);
        for conv in stored {
            let id = ConversationId(conv.id);
            self.next_conversation = self.next_conversation.max(conv.id);
            let ended = conv.ended.is_some();
            match self.restore_one(conv, &users, now) {
                Ok(files) => {
                    keep.extend(files);
                    if ended {
                        archived += 1;
                    } else {
                        restored += 1;
                    }
                }
                Err(e) => {
                    failed += 1;
                    tracing::error!(conversation = %id, error = %e,
                        "a live conversation at rest cannot be read; left in the database");
                }
            }
        }
        // Agents not connected yet keep their conversations for the reconnect grace, as after a dropped
        // socket; then they are requeued.
        for id in users.keys() {
            let agent = AgentId(*id);
            let connected = self.router.handle_agent_connected(now, agent);
            if let Err(e) = connected.and_then(|()| self.router.handle_agent_disconnected(now, agent)) {
                tracing::warn!(agent = id, error = %e, "restored agent has no reconnect grace");
            }
        }
        self.drain();
        metrics::counter!("relaydesk_conversations_restored_total").increment(restored as u64);
        tracing::info!(restored, archived, failed, "live conversations restored");
        keep
    }

    /// Restores one conversation (or, if it had ended, hands it to the archive). Returns its files.
    fn restore_one(
        &mut self,
        s: crate::live_store::StoredLiveConversation,
        users: &HashMap<i64, User>,
        now: Instant,
    ) -> Result<Vec<String>, String> {
        let id = ConversationId(s.id);
        let key = s.key.map_err(|e| e.to_string())?;
        let cipher = Arc::new(ConversationCipher::new(&key, s.id.to_string()));
        let (visitor_id, participants) = persist::open_state(&cipher, &s.state).map_err(|e| e.to_string())?;
        let group = GroupId::new(s.group.clone());
        let masker = self.masker_for(&group);
        let mut messages = Vec::with_capacity(s.messages.len());
        let mut by_sender: HashMap<SenderKey, Vec<usize>> = HashMap::new();
        let mut text_bytes = 0usize;
        for (seq, sealed) in &s.messages {
            if *seq != messages.len() as u64 + 1 {
                return Err(format!("message {seq} out of sequence"));
            }
            let m = persist::open_message(&cipher, *seq, sealed).map_err(|e| format!("message {seq}: {e}"))?;
            let party = Party::from_rest(m.party);
            if m.kind == MessageKind::Chat {
                by_sender.entry(party.sender_key()).or_default().push(messages.len());
            }
            // Stored bodies were masked before they were sealed; masking again (idempotent) keeps the rule
            // that only the masker makes a MaskedText.
            let body = masker.mask(&m.body);
            text_bytes = text_bytes.saturating_add(body.len() + m.client_id.as_ref().map_or(0, String::len));
            messages.push(Stored {
                id: m.id,
                seq: *seq,
                ts: m.ts,
                from: m.from,
                party,
                client_id: m.client_id,
                body,
                amended: m.amended,
                file: m.file,
                kind: m.kind,
                call_file: m.call_file,
            });
        }
        if let Some((ended_at_ms, reason)) = s.ended {
            // It ended before the archive had it: archive it now.
            self.out.push(Deferred::Ended(EndedConversation {
                id,
                group,
                site_key: s.site_key,
                visitor_id,
                participants,
                started_at_ms: s.started_at_ms,
                ended_at_ms,
                reason: reason_from_name(&reason),
                messages: messages
                    .into_iter()
                    .map(|m| ArchivedMessage {
                        seq: m.seq,
                        author: m.from,
                        sent_at_ms: m.ts,
                        body: m.body,
                        kind: m.kind,
                        file: m.call_file,
                    })
                    .collect(),
            }));
            return Ok(Vec::new());
        }
        let mut files = HashMap::new();
        let mut file_bytes = 0u64;
        for (file_id, sealed_key) in &s.files {
            let Some(file_ref) = messages
                .iter()
                .filter_map(|m| m.file.as_ref())
                .find(|f| &f.id == file_id)
            else {
                continue;
            };
            let file_cipher =
                persist::file_cipher(&cipher, file_id, sealed_key).map_err(|e| format!("file key: {e}"))?;
            file_bytes = file_bytes.saturating_add(file_ref.size);
            files.insert(file_id.clone(), (file_ref.clone(), file_cipher));
        }
        let kept: Vec<String> = files.keys().cloned().collect();
        for f in &kept {
            self.file_convs.insert(f.clone(), id);
        }
        self.resume_index.insert(s.resume_hash, id);
        if self.state.config.live.files.enabled() && s.files_hash != [0; 32] {
            self.files_index.insert(s.files_hash, id);
        }
        self.state.live.with_occupancy(|o| o.started(&s.site_key));
        // The visitor has the resume grace to come back, as after a dropped socket.
        let grace = Duration::from_millis(self.state.config.live.resume_grace_ms);
        self.deadlines.push(Reverse((now + grace, id, 0)));
        let agent = s.agent.filter(|a| users.contains_key(a)).map(AgentId);
        self.convs.insert(
            id,
            Conv {
                cipher,
                group: group.clone(),
                site_key: s.site_key,
                visitor_id,
                origin: s.origin,
                masker: ConversationMasker::new(masker),
                messages,
                by_sender,
                visitor_socket: None,
                resume_hash: s.resume_hash,
                epoch: 0,
                watchers: BTreeSet::new(),
                participants,
                started_at_ms: s.started_at_ms,
                calls: HashMap::new(),
                files_hash: s.files_hash,
                files,
                files_pending: 0,
                text_bytes,
                file_bytes,
                call_texts: HashMap::new(),
            },
        );
        let routed = match agent {
            Some(agent) => self.router.restore_assigned(now, id, group.clone(), agent).map(|()| {
                self.assigned.insert(id);
            }),
            None => {
                if s.agent.is_some() {
                    // Its agent is gone or disabled: it waits in the queue again.
                    self.writes.push(LiveWrite::Routing {
                        id: id.0,
                        group: group.as_str().to_owned(),
                        agent: None,
                    });
                }
                self.router.enqueue(now, id, group)
            }
        };
        if let Err(e) = routed {
            tracing::error!(conversation = %id, error = %e, "restored conversation not routed");
        }
        self.live_dirty.insert(id);
        Ok(kept)
    }

    /// Tells the visitor and every agent-side viewer about re-masked earlier messages.
    fn send_amendments(&mut self, conv: ConversationId, amendments: Vec<(String, u64, String)>) {
        for (id, seq, body) in amendments {
            self.send_visitor(
                conv,
                &ServerToVisitor::MessageAmended {
                    id: id.clone(),
                    seq,
                    body: body.clone(),
                },
            );
            self.send_agent_viewers(
                conv,
                &ServerToAgent::MessageAmended {
                    conversation: conv,
                    id,
                    seq,
                    body,
                },
            );
        }
    }

    fn end_conversation(&mut self, id: ConversationId, reason: EndReason) {
        // The note that the recording stopped is the transcript's last.
        self.recording_ended(id);
        let last_agent = self.router.access(id).and_then(|a| a.agent);
        self.live_dirty.remove(&id);
        if let Some(mut summary) = self.live_summary(id, Some(LiveState::Ended)) {
            summary.in_call = false;
            self.live_ended.push(summary);
        }
        let _ = self.router.end(Instant::now(), id);
        self.drain();
        self.assigned.remove(&id);
        let viewers = self.agent_viewers(id);
        if let Some(text) = to_json(&ServerToAgent::Ended {
            conversation: id,
            reason,
        }) {
            for (s, _) in &viewers {
                self.send_text(*s, text.clone());
            }
        }
        if let Some(agent) = last_agent
            && !viewers.iter().any(|(_, a)| *a == agent)
        {
            self.send_agent(
                agent,
                &ServerToAgent::Ended {
                    conversation: id,
                    reason,
                },
            );
        }
        self.send_visitor(id, &ServerToVisitor::Ended { reason });
        let Some(c) = self.convs.remove(&id) else { return };
        self.state.live.with_occupancy(|o| o.ended(&c.site_key));
        if let Some(s) = c.visitor_socket {
            self.visitor_sockets.remove(&s);
            if self.stopping {
                self.close_socket(s, 1001, "server shutting down");
            } else {
                self.close_socket(s, 1000, "conversation ended");
            }
        }
        for w in &c.watchers {
            if let Some(set) = self.watching.get_mut(w) {
                set.remove(&id);
            }
        }
        self.resume_index.remove(&c.resume_hash);
        self.files_index.remove(&c.files_hash);
        for id in c.files.keys() {
            self.file_convs.remove(id);
        }
        super::files::remove(super::files::dir(&self.state), c.files.keys().cloned().collect());
        if c.visitor_socket.is_none() && reason != EndReason::VisitorLost {
            let now = Instant::now();
            self.ended_while_away.retain(|_, (_, until)| *until > now);
            let grace = Duration::from_millis(self.state.config.live.resume_grace_ms);
            self.ended_while_away.insert(c.resume_hash, (reason, now + grace));
        }
        for leg in c.calls.values() {
            self.legs.remove(&leg.participant);
        }
        self.invites.forget(id);
        if !c.calls.is_empty()
            && let Some(media) = self.state.live.media()
        {
            tokio::spawn(async move {
                if let Err(e) = media.close_room(MediaRoomId(id.0)).await {
                    tracing::warn!(conversation = %id, error = %e, "closing the media room failed");
                }
            });
        }
        let record = EndedConversation {
            id,
            group: c.group,
            site_key: c.site_key,
            visitor_id: c.visitor_id,
            participants: c.participants,
            started_at_ms: c.started_at_ms,
            ended_at_ms: unix_ms(),
            reason,
            messages: c
                .messages
                .into_iter()
                .map(|m| ArchivedMessage {
                    seq: m.seq,
                    author: m.from,
                    sent_at_ms: m.ts,
                    body: m.body,
                    kind: m.kind,
                    file: m.call_file,
                })
                .collect(),
        };
        // At rest it stays until the archive has it (the archive's transaction deletes it): a crash before
        // then archives it at the next start.
        self.writes.push(LiveWrite::Ended {
            id: id.0,
            at_ms: record.ended_at_ms,
            reason: reason_name(reason),
        });
        self.out.push(Deferred::Ended(record));
        tracing::info!(conversation = %id, ?reason, "conversation ended");
    }

    // ----- files -----

    /// Who may write a file into which conversation: the visitor (by its token) or the conversation's agent.
    fn file_writer(
        &self,
        caller: FileCaller,
        conv: Option<ConversationId>,
    ) -> Result<(ConversationId, Party), Refusal> {
        let (id, party) = match caller {
            FileCaller::Visitor(hash) => {
                let id = self
                    .files_index
                    .get(&hash)
                    .copied()
                    .ok_or((ErrorCode::NotReady, "unknown or replaced files token"))?;
                if self.router.access(id).and_then(|a| a.agent).is_none() {
                    return Err((ErrorCode::Conflict, "no agent has joined the conversation yet"));
                }
                (id, Party::Visitor)
            }
            FileCaller::Agent(agent) => {
                let id = conv.ok_or((ErrorCode::NotFound, "no such conversation"))?;
                self.check(agent, id, crate::routing::can_write)?;
                (id, Party::Agent(agent))
            }
        };
        let max_bytes = self.state.config.live.limits.max_file_bytes_per_conversation;
        if self.convs.get(&id).is_some_and(|c| c.file_bytes >= max_bytes) {
            return Err((
                ErrorCode::TooLarge,
                "this conversation has shared its limit of file bytes",
            ));
        }
        Ok((id, party))
    }

    /// Takes a file slot of the conversation for an upload whose body is not read yet. Bounds the disk one
    /// conversation can fill (each file is at most `max_bytes`), also against uploads running in parallel.
    fn take_file_slot(&mut self, conv: ConversationId) -> Result<ConversationId, Refusal> {
        let max = self.state.config.live.files.max_per_conversation;
        let c = self
            .convs
            .get_mut(&conv)
            .ok_or((ErrorCode::NotFound, "no such conversation"))?;
        if c.files.len() + c.files_pending >= max {
            return Err((ErrorCode::TooLarge, "this conversation has shared too many files"));
        }
        c.files_pending += 1;
        Ok(conv)
    }

    fn share_file(&mut self, caller: FileCaller, conv: ConversationId, file: StoredFile) -> Result<FileRef, Refusal> {
        // The upload's slot becomes the file, or is freed if the file is refused now.
        if let Some(c) = self.convs.get_mut(&conv) {
            c.files_pending = c.files_pending.saturating_sub(1);
        }
        let (id, party) = self.file_writer(caller, Some(conv))?;
        if id != conv {
            return Err((ErrorCode::NotReady, "unknown or replaced files token"));
        }
        let from = self.author_of(party);
        let max_files = self.state.config.live.limits.max_file_bytes_per_conversation;
        let c = self.conv_with_room(conv, file.raw_name.len())?;
        if c.file_bytes.saturating_add(file.size) > max_files {
            return Err((
                ErrorCode::TooLarge,
                "this conversation has shared its limit of file bytes",
            ));
        }
        c.file_bytes = c.file_bytes.saturating_add(file.size);
        // The name is masked like a message of the same sender: a number split between messages and file
        // names is caught, and the earlier parts are amended.
        let key = party.sender_key();
        let outcome = c.masker.mask(key, &file.raw_name);
        let amendments = c.amend_and_track(key, &outcome);
        let file_ref = super::files::file_ref(&file, outcome.text.as_str().to_owned());
        c.files
            .insert(file.id.clone(), (file_ref.clone(), Arc::clone(&file.cipher)));
        c.push(conv, from, party, None, outcome.text, Some(file_ref.clone()));
        let seq = c.messages.len() as u64;
        match c.cipher.seal_key(&file.key, &file.id) {
            Ok(sealed_key) => self.writes.push(LiveWrite::File {
                id: conv.0,
                file_id: file.id.clone(),
                sealed_key,
            }),
            Err(e) => tracing::error!(conversation = %conv, error = %e, "sealing a file key failed"),
        }
        self.persist_messages(conv, std::iter::once(seq).chain(amendments.iter().map(|a| a.1)));
        self.file_convs.insert(file.id.clone(), conv);
        metrics::counter!("relaydesk_chat_files_total", "from" => party.metric_label()).increment(1);
        self.deliver_last(conv);
        self.send_amendments(conv, amendments);
        tracing::info!(conversation = %conv, size = file.size, "file shared");
        Ok(file_ref)
    }

    /// Sends the conversation's newest message to the visitor and every agent-side viewer.
    fn deliver_last(&mut self, conv: ConversationId) {
        let Some(frame) = self
            .convs
            .get(&conv)
            .and_then(|c| c.messages.last())
            .map(Self::visitor_message_frame)
        else {
            return;
        };
        self.send_visitor(conv, &frame);
        for (s, viewer) in self.agent_viewers(conv) {
            let frame = match self.convs.get(&conv).and_then(|c| c.messages.last()) {
                Some(m) => Self::agent_message_frame(conv, m, Some(viewer)),
                None => break,
            };
            self.send_agent_socket(s, &frame);
        }
    }

    fn file_reader(&self, caller: FileCaller, id: &str) -> Result<(FileRef, Arc<ConversationCipher>), Refusal> {
        const NOT_FOUND: Refusal = (ErrorCode::NotFound, "no such file");
        match caller {
            FileCaller::Visitor(hash) => {
                let conv = self
                    .files_index
                    .get(&hash)
                    .ok_or((ErrorCode::NotReady, "unknown or replaced files token"))?;
                let c = self.convs.get(conv).ok_or(NOT_FOUND)?;
                c.files
                    .get(id)
                    .map(|(r, cipher)| (r.clone(), Arc::clone(cipher)))
                    .ok_or(NOT_FOUND)
            }
            FileCaller::Agent(agent) => {
                // A file id names its conversation only through the hub: look it up, then apply `can_read`.
                let conv = *self.file_convs.get(id).ok_or(NOT_FOUND)?;
                let found = self.convs.get(&conv).and_then(|c| c.files.get(id)).ok_or(NOT_FOUND)?;
                // Someone who may not read the conversation learns nothing, not even that the file exists.
                self.check(agent, conv, crate::routing::can_read)
                    .map_err(|_| NOT_FOUND)?;
                Ok((found.0.clone(), Arc::clone(&found.1)))
            }
        }
    }

    // ----- agents -----

    fn agent_open(&mut self, socket: SocketId, outbox: Outbox, user: User) {
        let id = AgentId(user.id);
        let groups: Vec<GroupId> = user.groups.iter().map(|g| GroupId::from_name(g)).collect();
        let now = Instant::now();
        let registered = if self.router.agent_status(id).is_some() {
            self.router
                .update_agent(now, id, groups.clone(), user.max_conversations)
        } else {
            self.router.add_agent(now, id, groups.clone(), user.max_conversations)
        };
        if let Err(e) = registered.and_then(|()| self.router.handle_agent_connected(now, id)) {
            tracing::error!(error = %e, "agent registration failed");
        }
        self.sockets.insert(socket, outbox);
        self.agent_sockets.insert(socket, id);
        let entry = self.agents.entry(id).or_insert_with(|| AgentEntry {
            name: String::new(),
            role: user.role,
            groups: Vec::new(),
            capacity: 0,
            sockets: BTreeSet::new(),
        });
        entry.name = user.display_name;
        entry.role = user.role;
        entry.groups = groups;
        entry.capacity = user.max_conversations;
        entry.sockets.insert(socket);
        self.drain();
        tracing::info!(agent = id.0, "agent socket opened");
    }

    fn agent_closed(&mut self, socket: SocketId) {
        self.sockets.remove(&socket);
        if let Some(convs) = self.watching.remove(&socket) {
            for c in convs {
                if let Some(conv) = self.convs.get_mut(&c) {
                    conv.watchers.remove(&socket);
                }
            }
        }
        let Some(agent) = self.agent_sockets.remove(&socket) else {
            return;
        };
        if let Some(entry) = self.agents.get_mut(&agent) {
            entry.sockets.remove(&socket);
        }
        let monitored: Vec<ConversationId> = self
            .legs
            .values()
            .filter(|(_, p)| *p == Party::Supervisor(agent))
            .map(|(c, _)| *c)
            .collect();
        for conv in monitored {
            let owned = self
                .convs
                .get(&conv)
                .and_then(|c| c.calls.get(&Party::Supervisor(agent)))
                .is_some_and(|l| l.socket == socket);
            if owned {
                self.drop_leg(conv, Party::Supervisor(agent), "disconnected");
            }
        }
        for conv in self.router.agent_conversations(agent) {
            let owned = self
                .convs
                .get(&conv)
                .and_then(|c| c.calls.get(&Party::Agent(agent)))
                .is_some_and(|l| l.socket == socket);
            if owned {
                self.drop_leg(conv, Party::Agent(agent), "disconnected");
            }
        }
        if let Err(e) = self.router.handle_agent_disconnected(Instant::now(), agent) {
            tracing::warn!(error = %e, "agent disconnect not recorded");
        }
        self.drain();
    }

    /// Applies a user's current account to the live layer. Name and capacity change in place. When the role
    /// or the groups changed, the account is disabled, or `sessions_ended`, every socket of the user is
    /// closed at once (4401 when the login session ended: role change, disabled, new password; else 4410)
    /// and treated as closed, so nothing more of a group they left reaches them and their next frame is not
    /// served; the console reconnects with its new rights. A disabled user's conversations are requeued at
    /// once.
    fn user_changed(&mut self, user: User, sessions_ended: bool) {
        let id = AgentId(user.id);
        let mut groups: Vec<GroupId> = user.groups.iter().map(|g| GroupId::new(g.to_lowercase())).collect();
        groups.sort_unstable();
        groups.dedup();
        let Some(entry) = self.agents.get_mut(&id) else { return };
        let mut before = entry.groups.clone();
        before.sort_unstable();
        before.dedup();
        let role_changed = entry.role != user.role;
        let session_over = sessions_ended || role_changed || user.disabled;
        let rights_changed = session_over || before != groups;
        let routing_changed = rights_changed || entry.capacity != user.max_conversations;
        entry.name = user.display_name;
        entry.role = user.role;
        entry.groups = groups.clone();
        entry.capacity = user.max_conversations;
        let sockets: Vec<SocketId> = if rights_changed {
            entry.sockets.iter().copied().collect()
        } else {
            Vec::new()
        };
        let (code, reason) = if session_over {
            (close::RESUME_REFUSED, "session ended")
        } else {
            (close::RIGHTS_CHANGED, "permissions changed")
        };
        for s in sockets {
            self.close_socket(s, code, reason);
            self.agent_closed(s);
        }
        let now = Instant::now();
        if routing_changed && self.router.agent_status(id).is_some() {
            let changed = if user.disabled {
                self.router.remove_agent(now, id)
            } else {
                self.router.update_agent(now, id, groups, user.max_conversations)
            };
            if let Err(e) = changed {
                tracing::warn!(agent = id.0, error = %e, "account change not applied to routing");
            }
        }
        if rights_changed {
            tracing::info!(agent = id.0, "account rights changed; sockets closed");
        }
        self.drain();
    }

    fn check(
        &self,
        agent: AgentId,
        conv: ConversationId,
        rule: fn(AgentId, Role, &[GroupId], &ConversationAccess) -> bool,
    ) -> Result<ConversationAccess, Refusal> {
        let access = self
            .router
            .access(conv)
            .ok_or((ErrorCode::NotFound, "no such conversation"))?;
        let entry = self.agents.get(&agent).ok_or((ErrorCode::Forbidden, "unknown agent"))?;
        if rule(agent, entry.role, &entry.groups, &access) {
            Ok(access)
        } else if entry.role != Role::Admin && access.agent != Some(agent) && !entry.groups.contains(&access.group) {
            // A conversation of another group is answered as one that does not exist: nobody learns which
            // conversation ids are live elsewhere.
            Err((ErrorCode::NotFound, "no such conversation"))
        } else {
            Err((ErrorCode::Forbidden, "not permitted for this conversation"))
        }
    }

    /// The refusal of an `accept` / `decline`: an offer the agent does not hold of a conversation hidden from
    /// them (another group's) is `not_found`, like an unknown one, so the answer tells no live ids apart.
    fn offer_refusal(&self, agent: AgentId, conv: ConversationId, e: &RoutingError) -> Refusal {
        match (e, self.check(agent, conv, |_, _, _, _| false)) {
            (RoutingError::NotOfferedToYou { .. }, Err(hidden @ (ErrorCode::NotFound, _))) => hidden,
            _ => routing_refusal(e),
        }
    }

    fn agent_frame(&mut self, socket: SocketId, frame: AgentToServer) {
        let Some(&agent) = self.agent_sockets.get(&socket) else {
            return;
        };
        let now = Instant::now();
        let conv_of = |f: &AgentToServer| -> Option<ConversationId> {
            match f {
                AgentToServer::Accept { conversation }
                | AgentToServer::Decline { conversation }
                | AgentToServer::Message { conversation, .. }
                | AgentToServer::Typing { conversation, .. }
                | AgentToServer::Delivered { conversation, .. }
                | AgentToServer::Read { conversation, .. }
                | AgentToServer::Transfer { conversation, .. }
                | AgentToServer::End { conversation }
                | AgentToServer::Watch { conversation }
                | AgentToServer::Unwatch { conversation }
                | AgentToServer::CallOffer { conversation, .. }
                | AgentToServer::CallEnd { conversation, .. }
                | AgentToServer::CallInvite { conversation, .. }
                | AgentToServer::CallAccept { conversation }
                | AgentToServer::CallDecline { conversation }
                | AgentToServer::CallCancel { conversation }
                | AgentToServer::CallMediaState { conversation, .. }
                | AgentToServer::CallScreenRequest { conversation }
                | AgentToServer::MonitorOffer { conversation, .. }
                | AgentToServer::Whisper { conversation, .. }
                | AgentToServer::MonitorEnd { conversation }
                | AgentToServer::CallPrepare { conversation }
                | AgentToServer::Recording { conversation, .. } => Some(*conversation),
                _ => None,
            }
        };
        let conv = conv_of(&frame);
        let result: Result<(), Refusal> = match frame {
            AgentToServer::Hello { resume } => {
                self.agent_hello(socket, agent, &resume);
                Ok(())
            }
            AgentToServer::SetPresence { presence } => self
                .router
                .set_presence(now, agent, presence)
                .map_err(|e| routing_refusal(&e)),
            AgentToServer::Accept { conversation } => self
                .router
                .accept(now, agent, conversation)
                .map_err(|e| self.offer_refusal(agent, conversation, &e)),
            AgentToServer::Decline { conversation } => self
                .router
                .decline(now, agent, conversation)
                .map_err(|e| self.offer_refusal(agent, conversation, &e)),
            AgentToServer::Message {
                conversation,
                client_id,
                body,
            } => self
                .check(agent, conversation, crate::routing::can_write)
                .and_then(|_| self.append_message(conversation, Party::Agent(agent), client_id, &body)),
            AgentToServer::Typing { conversation, active } => {
                self.check(agent, conversation, crate::routing::can_write).map(|_| {
                    let from = self.author_of(Party::Agent(agent));
                    self.send_visitor(
                        conversation,
                        &ServerToVisitor::Typing {
                            from: from.clone(),
                            active,
                        },
                    );
                    let viewers: Vec<SocketId> = self
                        .agent_viewers(conversation)
                        .into_iter()
                        .filter(|(_, a)| *a != agent)
                        .map(|(s, _)| s)
                        .collect();
                    for s in viewers {
                        self.send_agent_socket(
                            s,
                            &ServerToAgent::Typing {
                                conversation,
                                from: from.clone(),
                                active,
                            },
                        );
                    }
                })
            }
            AgentToServer::Delivered {
                conversation,
                up_to_seq,
            } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.send_visitor(conversation, &ServerToVisitor::Delivered { up_to_seq })),
            AgentToServer::Read {
                conversation,
                up_to_seq,
            } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.send_visitor(conversation, &ServerToVisitor::Read { up_to_seq })),
            AgentToServer::Transfer { conversation, to } => self
                .check(agent, conversation, crate::routing::can_manage)
                .and_then(|access| {
                    let from = access
                        .agent
                        .ok_or((ErrorCode::Conflict, "the conversation has no agent yet"))?;
                    match to {
                        crate::chat_protocol::TransferTarget::Agent { agent: target } => {
                            self.router.transfer_to_agent(now, from, conversation, target)
                        }
                        crate::chat_protocol::TransferTarget::Group { group } => {
                            self.router
                                .transfer_to_group(now, from, conversation, GroupId::from_name(group.as_str()))
                        }
                    }
                    .map_err(|e| routing_refusal(&e))
                }),
            AgentToServer::End { conversation } => self
                .check(agent, conversation, crate::routing::can_manage)
                .map(|_| self.end_conversation(conversation, EndReason::AgentEnded)),
            AgentToServer::Watch { conversation } => {
                self.check(agent, conversation, crate::routing::can_read).map(|_| {
                    if let Some(c) = self.convs.get_mut(&conversation) {
                        c.watchers.insert(socket);
                    }
                    self.watching.entry(socket).or_default().insert(conversation);
                    self.replay_to_agent_socket(socket, conversation, 0, agent);
                })
            }
            AgentToServer::Unwatch { conversation } => {
                if let Some(c) = self.convs.get_mut(&conversation) {
                    c.watchers.remove(&socket);
                }
                if let Some(set) = self.watching.get_mut(&socket) {
                    set.remove(&conversation);
                }
                // Answered like `watch`: an unknown or hidden conversation is `not_found`.
                self.check(agent, conversation, crate::routing::can_read).map(|_| ())
            }
            AgentToServer::CallOffer { conversation, sdp } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_offer(conversation, Party::Agent(agent), socket, sdp)),
            AgentToServer::CallEnd { conversation, reason } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_end_with(conversation, Party::Agent(agent), reason)),
            AgentToServer::CallInvite { conversation, video } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_invite(conversation, Party::Agent(agent), socket, video)),
            AgentToServer::CallAccept { conversation } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_reply(conversation, Party::Agent(agent), socket, true)),
            AgentToServer::CallDecline { conversation } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_reply(conversation, Party::Agent(agent), socket, false)),
            AgentToServer::CallCancel { conversation } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_cancel(conversation, Party::Agent(agent), socket)),
            AgentToServer::CallScreenRequest { conversation } => self
                .check(agent, conversation, crate::routing::can_write)
                .map(|_| self.call_screen_request(conversation, Party::Agent(agent), socket)),
            AgentToServer::CallMediaState {
                conversation,
                audio,
                video,
                screen,
                reconnecting,
            } => self.check(agent, conversation, crate::routing::can_write).map(|_| {
                self.call_media_state(
                    conversation,
                    Party::Agent(agent),
                    socket,
                    [audio, video, screen, reconnecting],
                )
            }),
            // A call leg of the conversation's agent, or a supervisor's monitoring leg.
            AgentToServer::CallPrepare { conversation } => {
                match self.check(agent, conversation, crate::routing::can_write) {
                    Ok(_) => Ok(Party::Agent(agent)),
                    Err(refusal) => self
                        .check(agent, conversation, crate::routing::can_monitor)
                        .map(|_| Party::Supervisor(agent))
                        .map_err(|_| refusal),
                }
                .map(|party| self.call_prepare(conversation, party, socket))
            }
            AgentToServer::MonitorOffer { conversation, sdp } => self
                .check(agent, conversation, crate::routing::can_monitor)
                .map(|_| self.call_offer(conversation, Party::Supervisor(agent), socket, sdp)),
            AgentToServer::Whisper { conversation, active } => self
                .check(agent, conversation, crate::routing::can_monitor)
                .and_then(|access| self.whisper(conversation, agent, access.agent, socket, active)),
            AgentToServer::MonitorEnd { conversation } => self
                .check(agent, conversation, crate::routing::can_monitor)
                .map(|_| self.drop_leg(conversation, Party::Supervisor(agent), "hung_up")),
            AgentToServer::Recording { conversation, action } => self
                .check(agent, conversation, crate::routing::can_write)
                .and_then(|_| self.recording_request(conversation, agent, action)),
        };
        if let Err(refusal) = result {
            self.agent_error(socket, conv, refusal);
        }
        self.drain();
    }

    fn agent_hello(&mut self, socket: SocketId, agent: AgentId, resume: &[crate::chat_protocol::ResumePoint]) {
        let Some(entry) = self.agents.get(&agent) else { return };
        let conversations = self.router.agent_conversations(agent);
        let welcome = ServerToAgent::Welcome {
            agent,
            name: entry.name.clone(),
            presence: self
                .router
                .agent_presence(agent)
                .unwrap_or(crate::routing::Presence::Offline),
            capacity: entry.capacity,
            conversations: conversations.clone(),
        };
        let (role, groups) = (entry.role, entry.groups.clone());
        self.send_agent_socket(socket, &welcome);
        // One replay for all of them, so the socket's replay backlog counts it once.
        let mut frames = Vec::new();
        for conv in conversations {
            let after = resume.iter().find(|p| p.conversation == conv).map_or(0, |p| p.last_seq);
            self.agent_replay(&mut frames, conv, after, agent);
        }
        self.send_batch(socket, frames);
        if role != Role::Agent {
            self.send_live_list(socket, role, &groups);
        }
    }

    // ----- calls -----

    fn call_offer(&mut self, conv: ConversationId, party: Party, socket: SocketId, sdp: String) {
        let refuse = |hub: &mut Self, r: Refusal| match party {
            Party::Visitor => hub.visitor_error(socket, r),
            Party::Agent(_) | Party::Supervisor(_) => hub.agent_error(socket, Some(conv), r),
        };
        let Some(media) = self.state.live.media() else {
            refuse(
                self,
                (ErrorCode::MediaUnavailable, "calls are not available on this server"),
            );
            return;
        };
        if self.router.access(conv).and_then(|a| a.agent).is_none() {
            refuse(self, (ErrorCode::Conflict, "no agent has joined the conversation yet"));
            return;
        }
        let Some(outbox) = self.sockets.get(&socket).cloned() else {
            return;
        };
        let next = MediaParticipantId(self.next_participant);
        let Some(c) = self.convs.get_mut(&conv) else { return };
        if matches!(party, Party::Supervisor(_))
            && !c.calls.contains_key(&party)
            && !c.calls.keys().any(|p| p.is_party_to_call())
        {
            refuse(self, (ErrorCode::Conflict, "no call in progress"));
            return;
        }
        // A new leg must fit the node's media capacity; a leg of a call in progress (the other party joining,
        // or anyone re-offering) always does: the call reserved it.
        let in_call = c.calls.keys().any(|p| p.is_party_to_call());
        if !c.calls.contains_key(&party) {
            let needed = match party {
                Party::Supervisor(_) => 1,
                Party::Visitor | Party::Agent(_) if in_call => 0,
                Party::Visitor | Party::Agent(_) => 2,
            };
            let load = media_load(&self.legs);
            let max = self.state.config.media.max_participants;
            if needed > 0 && load + needed > max {
                metrics::counter!("relaydesk_calls_refused_total", "reason" => "media_capacity").increment(1);
                tracing::info!(conversation = %conv, load, max, "call refused: media capacity");
                refuse(self, (ErrorCode::MediaBusy, MEDIA_BUSY));
                return;
            }
        }
        let Some(c) = self.convs.get_mut(&conv) else { return };
        let offered = invite::offered_lines(&sdp);
        let (participant, renegotiate) = match c.calls.get_mut(&party) {
            Some(leg) => {
                leg.socket = socket;
                leg.offered = offered;
                (leg.participant, true)
            }
            None => {
                c.calls.insert(
                    party,
                    CallLeg {
                        participant: next,
                        socket,
                        whisper: false,
                        offered,
                    },
                );
                self.next_participant += 1;
                self.legs.insert(next, (conv, party));
                if party.is_party_to_call() {
                    self.live_dirty.insert(conv);
                    self.offer_settles_invitation(conv, party);
                }
                (next, false)
            }
        };
        let role = match party {
            Party::Visitor => MediaRole::Visitor,
            Party::Agent(_) => MediaRole::Agent,
            // Silent until `whisper`.
            Party::Supervisor(_) => MediaRole::Supervisor { whisper: false },
        };
        let room = MediaRoomId(conv.0);
        let commands = self.state.live.commands.clone();
        tokio::spawn(async move {
            let result = if renegotiate {
                media.renegotiate(room, participant, sdp).await
            } else {
                match media.open_room(room).await {
                    Ok(()) => media.join(room, participant, role, sdp).await,
                    Err(e) => Err(e),
                }
            };
            let frame = match result {
                Ok(answer) => call_frame(party, conv, Ok(answer)),
                Err(e) => {
                    tracing::info!(conversation = %conv, error = %e, "call offer refused");
                    if !renegotiate {
                        let _ = commands.send(Command::CallFailed {
                            conversation: conv,
                            participant,
                        });
                    }
                    call_frame(party, conv, Err(media_refusal(&e)))
                }
            };
            if let Some(text) = frame {
                let _ = outbox.send_text(text);
            }
        });
    }

    /// Answers `call_prepare` with the TURN servers for the coming leg: fresh credentials from `[turn]`, or an
    /// empty list without it.
    fn call_prepare(&mut self, conv: ConversationId, party: Party, socket: SocketId) {
        let refused = match party {
            _ if self.state.live.media().is_none() => {
                Some((ErrorCode::MediaUnavailable, "calls are not available on this server"))
            }
            Party::Visitor if self.router.access(conv).and_then(|a| a.agent).is_none() => {
                Some((ErrorCode::Conflict, "no agent has joined the conversation yet"))
            }
            _ => None,
        };
        if let Some(r) = refused {
            match party {
                Party::Visitor => self.visitor_error(socket, r),
                Party::Agent(_) | Party::Supervisor(_) => self.agent_error(socket, Some(conv), r),
            }
            return;
        }
        let leg = match party {
            Party::Visitor => format!("{}-visitor", conv.0),
            Party::Agent(a) => format!("{}-agent-{}", conv.0, a.0),
            Party::Supervisor(a) => format!("{}-supervisor-{}", conv.0, a.0),
        };
        let (ice_servers, expires_at_ms) = match &self.state.turn {
            Some(turn) => {
                let issued = turn.credentials(unix_ms() / 1000, &leg);
                metrics::counter!("relaydesk_turn_credentials_issued_total").increment(1);
                (issued.ice_servers, Some(issued.expires_at_ms))
            }
            None => (Vec::new(), None),
        };
        // Told before any media: the recording state comes before the ICE servers.
        self.recording_notice(conv, party, socket);
        match party {
            Party::Visitor => {
                if let Some(text) = to_json(&ServerToVisitor::IceServers {
                    ice_servers,
                    expires_at_ms,
                }) {
                    self.send_text(socket, text);
                }
            }
            Party::Agent(_) | Party::Supervisor(_) => self.send_agent_socket(
                socket,
                &ServerToAgent::IceServers {
                    conversation: conv,
                    ice_servers,
                    expires_at_ms,
                },
            ),
        }
    }

    /// Ends a party's leg (hang-up, disconnect, transfer) and tells both parties.
    fn drop_leg(&mut self, conv: ConversationId, party: Party, reason: &str) {
        let Some(leg) = self.convs.get_mut(&conv).and_then(|c| c.calls.remove(&party)) else {
            return;
        };
        self.legs.remove(&leg.participant);
        if party.is_party_to_call() {
            self.live_dirty.insert(conv);
        }
        if let Some(media) = self.state.live.media() {
            let p = leg.participant;
            tokio::spawn(async move {
                if let Err(e) = media.leave(MediaRoomId(conv.0), p).await {
                    tracing::debug!(error = %e, "media leave failed");
                }
            });
        }
        self.leg_state(
            conv,
            party,
            leg.socket,
            leg.whisper,
            CallLegState::Left,
            Some(reason.to_owned()),
        );
        self.recording_leg_gone(conv);
    }

    /// Reports a leg's new state: a supervisor's to its own socket only (and, if it was whispering, the end of
    /// the whisper to the agent); the visitor's and the agent's to both parties and the watchers.
    fn leg_state(
        &mut self,
        conv: ConversationId,
        party: Party,
        socket: SocketId,
        whispering: bool,
        state: CallLegState,
        reason: Option<String>,
    ) {
        let Party::Supervisor(supervisor) = party else {
            self.call_state(conv, party, state, reason);
            return;
        };
        self.send_agent_socket(
            socket,
            &ServerToAgent::CallState {
                conversation: conv,
                party: party.wire(),
                state,
                reason,
            },
        );
        if whispering && state == CallLegState::Left {
            self.notify_whisper(conv, supervisor, false);
        }
    }

    fn notify_whisper(&mut self, conv: ConversationId, supervisor: AgentId, active: bool) {
        let Some(agent) = self.router.access(conv).and_then(|a| a.agent) else {
            return;
        };
        let name = self.agents.get(&supervisor).map(|e| e.name.clone()).unwrap_or_default();
        self.send_agent(
            agent,
            &ServerToAgent::Whisper {
                conversation: conv,
                supervisor: name,
                active,
            },
        );
    }

    /// Starts or stops a supervisor's whisper (its audio to the agent only).
    fn whisper(
        &mut self,
        conv: ConversationId,
        supervisor: AgentId,
        agent: Option<AgentId>,
        socket: SocketId,
        active: bool,
    ) -> Result<(), Refusal> {
        if agent.is_none() {
            return Err((ErrorCode::Conflict, "the conversation has no agent"));
        }
        let leg = self
            .convs
            .get_mut(&conv)
            .and_then(|c| c.calls.get_mut(&Party::Supervisor(supervisor)))
            .ok_or((
                ErrorCode::Conflict,
                "you are not monitoring this call (monitor_offer first)",
            ))?;
        if leg.whisper == active {
            return Ok(());
        }
        leg.whisper = active;
        let participant = leg.participant;
        let media = self
            .state
            .live
            .media()
            .ok_or((ErrorCode::MediaUnavailable, "calls are not available on this server"))?;
        let outbox = self.sockets.get(&socket).cloned();
        tokio::spawn(async move {
            let role = MediaRole::Supervisor { whisper: active };
            if let Err(e) = media.set_role(MediaRoomId(conv.0), participant, role).await {
                tracing::warn!(conversation = %conv, error = %e, "whisper change failed");
                let frame = to_json(&ServerToAgent::error(
                    media_refusal(&e).0,
                    "the whisper could not be changed",
                    Some(conv),
                ));
                if let (Some(outbox), Some(text)) = (outbox, frame) {
                    let _ = outbox.send_text(text);
                }
            }
        });
        self.notify_whisper(conv, supervisor, active);
        tracing::info!(conversation = %conv, supervisor = supervisor.0, active, "whisper");
        Ok(())
    }

    fn call_state(&mut self, conv: ConversationId, party: Party, state: CallLegState, reason: Option<String>) {
        self.send_visitor(
            conv,
            &ServerToVisitor::CallState {
                party: party.wire(),
                state,
                reason: reason.clone(),
            },
        );
        self.send_agent_viewers(
            conv,
            &ServerToAgent::CallState {
                conversation: conv,
                party: party.wire(),
                state,
                reason,
            },
        );
    }

    fn media_event(&mut self, event: MediaEvent) {
        match event {
            MediaEvent::Connected { participant, .. } => {
                if let Some(&(conv, party)) = self.legs.get(&participant)
                    && let Some(leg) = self.convs.get(&conv).and_then(|c| c.calls.get(&party))
                {
                    let (socket, whisper) = (leg.socket, leg.whisper);
                    self.leg_state(conv, party, socket, whisper, CallLegState::Connected, None);
                    if party.is_party_to_call() {
                        self.recording_leg_connected(conv);
                    }
                }
            }
            MediaEvent::Left {
                participant, reason, ..
            } => {
                if let Some((conv, party)) = self.legs.remove(&participant)
                    && let Some(leg) = self.convs.get_mut(&conv).and_then(|c| c.calls.remove(&party))
                {
                    if party.is_party_to_call() {
                        self.live_dirty.insert(conv);
                    }
                    self.leg_state(conv, party, leg.socket, leg.whisper, CallLegState::Left, Some(reason));
                    self.recording_leg_gone(conv);
                }
            }
            MediaEvent::RenegotiationNeeded {
                participant,
                audio,
                video,
                ..
            } => {
                let Some(&(conv, party)) = self.legs.get(&participant) else {
                    return;
                };
                let Some((socket, offered)) = self
                    .convs
                    .get(&conv)
                    .and_then(|c| c.calls.get(&party))
                    .map(|l| (l.socket, l.offered))
                else {
                    return;
                };
                // The SFU may ask before it has read the leg's m-lines (it scans an offer's media once the
                // leg is set up): a leg whose own offer already has the slots needs no new offer.
                if audio <= offered.0 && video <= offered.1 {
                    tracing::debug!(conversation = %conv, audio, video, "renegotiation already satisfied");
                    return;
                }
                let audio = u32::try_from(audio).unwrap_or(u32::MAX);
                let video = u32::try_from(video).unwrap_or(u32::MAX);
                let text = match party {
                    Party::Visitor => to_json(&ServerToVisitor::CallRenegotiate { audio, video }),
                    Party::Agent(_) | Party::Supervisor(_) => to_json(&ServerToAgent::CallRenegotiate {
                        conversation: conv,
                        audio,
                        video,
                    }),
                };
                if let Some(text) = text {
                    self.send_text(socket, text);
                }
            }
            MediaEvent::CallText {
                participant,
                text,
                amended,
                ..
            } => self.call_text(participant, &text, amended),
            MediaEvent::CallFile {
                participant,
                name,
                size,
                mime,
                sha256,
                ..
            } => self.call_file(participant, &name, CallFile { size, mime, sha256 }),
            MediaEvent::DataChannelRefused { participant, label, .. } => {
                self.data_channel_refused(participant, &label);
            }
            _ => {}
        }
    }
}
