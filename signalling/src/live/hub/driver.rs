//! The hub's driver: one tokio task that owns what the [`Hub`] does not: the command channel, the clock and
//! the timer, the live conversations at rest (restored at start, each batch's writes committed with retry),
//! the media handle, the sockets' outboxes and the sink tasks. It performs the hub's [`Output`] in order and
//! brings results back as [`Input`]s.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::{Command, Hub, HubConfig, Input, MediaRequest, Now, Output, RecordingOutcome};
use crate::chat_protocol::{ConversationId, GroupId, RecordingAction, RecordingState};
use crate::live::SharedLive as SharedState;
use crate::live::SocketId;
use crate::live::socket::Outbox;
use crate::live_store::LiveWrite;
use crate::media::{MediaControl, MediaEvent, MediaRoomId, RecordingControl};
use crate::store::AuditEvent;

/// Most commands handled in one batch (one transaction) before its frames are sent.
pub(crate) const MAX_BATCH: usize = 256;

/// Starts the hub (once; later calls return `None`). `media_events` are the SFU's events, if any.
///
/// The task first restores the live conversations at rest (see [`crate::live_store`]), then serves
/// [`Command`]s from the sockets; it ends on shutdown, after ending every live conversation (`ended` with
/// reason `closed` to everyone who sees it, then every socket closed with 1001, each conversation handed to
/// the sink) and waiting (bounded) for the sink.
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
    let driver = Driver::new(Arc::clone(state));
    Some(tokio::spawn(driver.run(rx)))
}

/// The hub's configuration, from the server's.
pub(crate) fn hub_config(state: &SharedState) -> HubConfig {
    HubConfig {
        live: state.config.live.clone(),
        max_media_participants: state.config.media.max_participants,
        media: state.live.media().is_some(),
        turn: state.turn.clone(),
        hand_over: state.config.cluster.redis_url.is_some(),
    }
}

/// The clocks now: the driver reads them, the hub is handed them.
fn now() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: crate::live::unix_ms(),
    }
}

struct Driver {
    state: SharedState,
    hub: Hub,
    media: Option<Arc<dyn MediaControl>>,
    /// The open sockets' outboxes (the hub knows their ids only).
    outboxes: HashMap<SocketId, Outbox>,
    sinks: JoinSet<()>,
    /// Results of the media and recording tasks, handed back to the hub.
    results: mpsc::UnboundedSender<Input>,
    results_rx: mpsc::UnboundedReceiver<Input>,
}

impl Driver {
    fn new(state: SharedState) -> Self {
        let hub = Hub::new(hub_config(&state), Arc::clone(&state.live.occupancy), now());
        let (results, results_rx) = mpsc::unbounded_channel();
        Self {
            media: state.live.media(),
            state,
            hub,
            outboxes: HashMap::new(),
            sinks: JoinSet::new(),
            results,
            results_rx,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        // Commands wait in the channel until the conversations at rest are back.
        let keep = self.restore().await;
        self.load_recording().await;
        if self.state.config.live.files.enabled() {
            crate::live::files::prune_dir(crate::live::files::dir(&self.state), keep).await;
        }
        self.settle().await;
        self.hub.gauges();
        let stop = self.state.shutdown.stopped();
        tokio::pin!(stop);
        loop {
            let deadline = self.hub.poll_timeout();
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
                        self.command(cmd);
                        for _ in 1..MAX_BATCH {
                            match rx.try_recv() {
                                Ok(cmd) => self.command(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                Some(input) = self.results_rx.recv() => self.hub.handle(input, now()),
                _ = sleep => self.hub.handle_timeout(now()),
                Some(_) = self.sinks.join_next(), if !self.sinks.is_empty() => {}
            }
            self.settle().await;
            self.hub.gauges();
        }
        self.hub.shutdown(now());
        self.settle().await;
        self.hub.gauges();
        let sinks = std::mem::take(&mut self.sinks);
        let _ = tokio::time::timeout(Duration::from_secs(5), sinks.join_all()).await;
        tracing::debug!("live hub stopped");
    }

    /// Hands a command to the hub, keeping a new socket's outbox and forgetting a closed one's.
    fn command(&mut self, cmd: Command) {
        let input = match cmd {
            Command::VisitorJoin { socket, outbox, grant } => {
                self.outboxes.insert(socket, outbox);
                Input::VisitorJoin { socket, grant }
            }
            Command::VisitorResume {
                socket,
                outbox,
                origin,
                resume_token,
                last_seq,
            } => {
                self.outboxes.insert(socket, outbox);
                Input::VisitorResume {
                    socket,
                    origin,
                    resume_token,
                    last_seq,
                }
            }
            Command::VisitorFrame { socket, frame } => Input::VisitorFrame { socket, frame },
            Command::VisitorClosed { socket } => {
                self.outboxes.remove(&socket);
                Input::VisitorClosed { socket }
            }
            Command::AgentOpen { socket, outbox, user } => {
                self.outboxes.insert(socket, outbox);
                Input::AgentOpen { socket, user }
            }
            Command::AgentFrame { socket, frame } => Input::AgentFrame { socket, frame },
            Command::AgentClosed { socket } => {
                self.outboxes.remove(&socket);
                Input::AgentClosed { socket }
            }
            Command::Media(event) => Input::Media(event),
            Command::GroupRecording { group, policy } => Input::GroupRecording { group, policy },
            Command::FileUpload {
                caller,
                conversation,
                reply,
            } => Input::FileUpload {
                caller,
                conversation,
                reply,
            },
            Command::FileShared {
                caller,
                conversation,
                file,
                reply,
            } => Input::FileShared {
                caller,
                conversation,
                file,
                reply,
            },
            Command::FileSlotReleased { conversation } => Input::FileSlotReleased { conversation },
            Command::FileFetch { caller, id, reply } => Input::FileFetch { caller, id, reply },
            Command::UserChanged {
                user,
                sessions_ended,
                reply,
            } => Input::UserChanged {
                user,
                sessions_ended,
                reply,
            },
        };
        self.hub.handle(input, now());
    }

    /// Performs the hub's output: its writes committed first, then the rest in order; repeats while sockets
    /// that overflowed meanwhile are being closed (which produces more of both).
    async fn settle(&mut self) {
        loop {
            let mut overflowed: Vec<SocketId> = Vec::new();
            while let Some(out) = self.hub.poll_output() {
                match out {
                    Output::Commit(writes) => self.commit(writes).await,
                    Output::Text(socket, text) => {
                        if !overflowed.contains(&socket)
                            && let Some(tx) = self.outboxes.get(&socket)
                            && !tx.send_text(text)
                        {
                            overflowed.push(socket);
                        }
                    }
                    Output::Batch(socket, frames, backlog) => {
                        if !overflowed.contains(&socket)
                            && let Some(tx) = self.outboxes.get(&socket)
                            && !tx.send_batch(frames, backlog)
                        {
                            overflowed.push(socket);
                        }
                    }
                    Output::Close(socket, code, reason) => {
                        if let Some(tx) = self.outboxes.remove(&socket) {
                            tx.close(code, reason);
                        }
                    }
                    Output::Reply(reply) => reply(),
                    Output::Ended(record) => {
                        for sink in self.state.live.sinks() {
                            let record = record.clone();
                            self.sinks.spawn(async move { sink.conversation_ended(record).await });
                        }
                    }
                    Output::Media(request) => self.media(request),
                    Output::RemoveFiles(ids) => crate::live::files::remove(crate::live::files::dir(&self.state), ids),
                }
            }
            if overflowed.is_empty() {
                break;
            }
            // The last to overflow is reaped first, as the hub always did.
            for socket in overflowed.into_iter().rev() {
                self.hub.handle(Input::Overflowed { socket }, now());
            }
        }
    }

    /// Commits the batch's writes in one transaction. A failure (disk full, I/O error) is retried with a
    /// growing pause: nothing of the batch is sent until it is durable, so the hub waits rather than
    /// acknowledge what it could not store. While the server stops, it gives up after a few attempts.
    async fn commit(&mut self, writes: Vec<LiveWrite>) {
        if writes.is_empty() {
            return;
        }
        let writes = Arc::new(writes);
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

    /// Reads the live conversations at rest and their agents' accounts, and hands them to the hub. Returns
    /// the ids of the shared files to keep.
    async fn restore(&mut self) -> HashSet<String> {
        let stored = match self.state.archive.live_load().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "the live conversations at rest could not be read; none restored");
                return HashSet::new();
            }
        };
        if stored.is_empty() {
            return HashSet::new();
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
        self.hub.restore(stored, users, now())
    }

    /// Loads every group's recording policy (at start) and marks recordings a crash left open as
    /// interrupted.
    async fn load_recording(&mut self) {
        match self.state.store.call(|db| db.list_groups()).await {
            Ok(groups) => {
                for g in groups {
                    self.hub.set_recording_policy(GroupId::from_name(&g.name), g.recording);
                }
            }
            Err(e) => tracing::error!(error = %e, "group recording policies could not be read; none recorded"),
        }
        match self.state.archive.recording_mark_interrupted().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                recordings = n,
                "recordings interrupted by the last stop kept up to their last chunk"
            ),
            Err(e) => tracing::error!(error = %e, "interrupted recordings could not be marked"),
        }
    }

    /// Starts the task that performs a media request; its result, if any, comes back as an input.
    fn media(&mut self, request: MediaRequest) {
        let Some(media) = self.media.clone() else { return };
        let results = self.results.clone();
        match request {
            MediaRequest::Join { leg, role, sdp } => {
                tokio::spawn(async move {
                    let room = MediaRoomId(leg.conversation.0);
                    let result = if leg.renegotiate {
                        media.renegotiate(room, leg.participant, sdp).await
                    } else {
                        match media.open_room(room).await {
                            Ok(()) => media.join(room, leg.participant, role, sdp).await,
                            Err(e) => Err(e),
                        }
                    };
                    let _ = results.send(Input::CallAnswered { leg, result });
                });
            }
            MediaRequest::Leave { room, participant } => {
                tokio::spawn(async move {
                    if let Err(e) = media.leave(room, participant).await {
                        tracing::debug!(error = %e, "media leave failed");
                    }
                });
            }
            MediaRequest::CloseRoom { room } => {
                tokio::spawn(async move {
                    if let Err(e) = media.close_room(room).await {
                        tracing::warn!(conversation = room.0, error = %e, "closing the media room failed");
                    }
                });
            }
            MediaRequest::SetRole {
                conversation,
                participant,
                role,
                socket,
            } => {
                tokio::spawn(async move {
                    if let Err(error) = media.set_role(MediaRoomId(conversation.0), participant, role).await {
                        tracing::warn!(conversation = %conversation, error = %error, "whisper change failed");
                        let _ = results.send(Input::WhisperFailed {
                            conversation,
                            socket,
                            error,
                        });
                    }
                });
            }
            MediaRequest::RecordingChange {
                conversation,
                action,
                by,
                id,
            } => {
                let archive = Arc::clone(&self.state.archive);
                tokio::spawn(async move {
                    let result = recording_change(media, &archive, conversation, action, by.clone(), id).await;
                    let _ = results.send(Input::Recording(RecordingOutcome {
                        conversation,
                        result,
                        by,
                        action,
                    }));
                });
            }
            MediaRequest::RecordingStop { conversation, id } => {
                let archive = Arc::clone(&self.state.archive);
                tokio::spawn(recording_stop(media, archive, conversation, id));
            }
        }
    }
}

/// Makes a recording change: the archive's row (start) or audit record (pause, resume) and the media side.
async fn recording_change(
    media: Arc<dyn MediaControl>,
    archive: &crate::archive::Archive,
    conv: ConversationId,
    action: RecordingAction,
    actor: Option<String>,
    id: Option<String>,
) -> Result<(RecordingState, Option<String>), String> {
    let room = MediaRoomId(conv.0);
    let audit = |action: &str| AuditEvent {
        actor: Some(actor.clone().unwrap_or_else(|| "policy".into())),
        action: action.into(),
        target: Some(format!("conversation:{}", conv.0)),
        ..Default::default()
    };
    match action {
        RecordingAction::Start => {
            let new = archive
                .recording_begin(
                    conv.0.to_string(),
                    crate::live::unix_ms() as i64,
                    audit("recording.start"),
                )
                .await
                .map_err(|e| e.to_string())?;
            let id = new.id.clone();
            let control = RecordingControl::Start {
                id: new.id,
                path: new.path,
                key: new.key,
            };
            media.set_recording(room, control).await.map_err(|e| e.to_string())?;
            Ok((RecordingState::On, Some(id)))
        }
        RecordingAction::Pause | RecordingAction::Resume => {
            let (control, state, name) = match action {
                RecordingAction::Pause => (RecordingControl::Pause, RecordingState::Paused, "recording.pause"),
                _ => (RecordingControl::Resume, RecordingState::On, "recording.resume"),
            };
            media.set_recording(room, control).await.map_err(|e| e.to_string())?;
            let mut ev = audit(name);
            ev.detail = id.as_ref().map(|i| format!("recording {i}"));
            archive.recording_audit(ev).await.map_err(|e| e.to_string())?;
            Ok((state, id))
        }
    }
}

/// Stops a recording: the file closed by the media side, then the row finished.
async fn recording_stop(
    media: Arc<dyn MediaControl>,
    archive: Arc<crate::archive::Archive>,
    conv: ConversationId,
    id: String,
) {
    let chunks = match media.set_recording(MediaRoomId(conv.0), RecordingControl::Stop).await {
        Ok(n) => n,
        Err(e) => {
            // Left `recording`: marked interrupted at the next start, exported up to its last chunk.
            tracing::error!(recording = %id, error = %e, "recording could not be closed");
            return;
        }
    };
    let audit = AuditEvent {
        actor: Some("policy".into()),
        action: "recording.stop".into(),
        target: Some(format!("conversation:{}", conv.0)),
        detail: Some(format!("recording {id}; {chunks} chunks")),
        ..Default::default()
    };
    if let Err(e) = archive
        .recording_finish(id.clone(), chunks, crate::live::unix_ms() as i64, audit)
        .await
    {
        tracing::error!(recording = %id, error = %e, "recording could not be recorded as complete");
    }
}
