//! Wiring of the SFU into the server: signalling's [`MediaControl`] implemented on the SFU driver's
//! handle, the SFU's in-call text filter implemented with signalling's masker, and the bridge that turns
//! SFU events into [`MediaEvent`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaydesk_sfu::core::{
    Command, Event, FilteredText, LeaveReason, ParticipantId, Reply, Role, RoomId, Sfu, SfuConfig, SfuError,
    TextAmendment, TextFilter,
};
use relaydesk_sfu::{
    AdoptError, CommandError, CoreHandle, Driver, DriverConfig, DriverError, EventReceiver, TcpAdoption,
};
use relaydesk_signalling::masking::{ConversationMasker, Masker, SenderKey};
use relaydesk_signalling::media::{
    IceTcpConnection, MediaControl, MediaError, MediaEvent, MediaFuture, MediaParticipantId, MediaRole, MediaRoomId,
    RecordingControl,
};

use crate::recorder::{self, Change, Control};
use tokio::sync::{mpsc, oneshot};

/// Media events waiting for the hub.
const EVENT_QUEUE: usize = 1024;

/// The SFU as the server sees it.
pub struct SfuMedia {
    handle: CoreHandle,
    /// The recording writer thread (see [`crate::recorder`]).
    recorder: std::sync::mpsc::Sender<Control>,
    /// Which shard each open room lives on.
    rooms: Mutex<HashMap<MediaRoomId, usize>>,
}

/// In-call text and file names pass the same masker as chat (the same normalising detector), with
/// per-room, per-sender state so a number split across messages (a few words in between) is caught. Runs
/// on the shard thread that owns the room, apart from the hub: it does not share the chat's state, and a
/// relayed data-channel message cannot be amended, so only the part that completes a split number is
/// masked on the wire; the amendments of the earlier texts go with the event to the transcript. File
/// names keep a state of their own (so that the amendments of texts count texts only).
struct MaskingFilter {
    masker: Masker,
    rooms: HashMap<RoomId, ConversationMasker>,
}

/// The masker's sender key of a participant's file names (apart from its texts).
const NAME_KEY: u64 = 1 << 63;

impl MaskingFilter {
    fn state(&mut self, room: RoomId) -> &mut ConversationMasker {
        let masker = &self.masker;
        self.rooms
            .entry(room)
            .or_insert_with(|| ConversationMasker::new(masker.clone()))
    }
}

impl TextFilter for MaskingFilter {
    fn filter(&mut self, room: RoomId, from: ParticipantId, text: &str) -> String {
        self.filter_text(room, from, text).text
    }

    // A data channel message cannot be amended after delivery; the split-number rule still masks the part
    // that completes a card, and the amendments of the earlier parts are reported for the transcript.
    fn filter_text(&mut self, room: RoomId, from: ParticipantId, text: &str) -> FilteredText {
        let outcome = self.state(room).mask(SenderKey(from.0 & !NAME_KEY), text);
        FilteredText {
            amended: outcome
                .amendments()
                .map(|a| TextAmendment {
                    back: a.back,
                    text: a.text.into_string(),
                })
                .collect(),
            text: outcome.text.into_string(),
        }
    }

    /// A file name is cleaned as chat file names are (last path component, no control, format or
    /// bidirectional characters, bounded length), then masked like text.
    fn filter_name(&mut self, room: RoomId, from: ParticipantId, name: &str) -> String {
        let clean = relaydesk_signalling::live::files::clean_name(name);
        self.state(room)
            .mask(SenderKey(from.0 | NAME_KEY), &clean)
            .text
            .into_string()
    }

    fn room_closed(&mut self, room: RoomId) {
        self.rooms.remove(&room);
    }
}

impl SfuMedia {
    /// Starts the SFU driver; returns the media control and the SFU's events for the server. `pace_video`:
    /// see `SfuConfig::pace_video` (`[media] pace_video`).
    pub fn start(
        driver: &DriverConfig,
        masker: &Masker,
        pace_video: bool,
    ) -> Result<(Arc<Self>, mpsc::Receiver<MediaEvent>), DriverError> {
        let (tap, recorder) = recorder::spawn().map_err(DriverError::Thread)?;
        let (handle, events) = Driver::start(driver, |_, addr: SocketAddr| {
            let filter = MaskingFilter {
                masker: masker.clone(),
                rooms: HashMap::new(),
            };
            let mut config = SfuConfig::new(vec![addr]);
            config.pace_video = pace_video;
            let mut sfu = Sfu::with_filter(config, Box::new(filter));
            sfu.set_tap(Box::new(tap.clone()));
            sfu
        })?;
        let media = Arc::new(Self {
            handle,
            recorder,
            rooms: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(bridge_events(events, tx));
        Ok((media, rx))
    }

    /// The driver's handle (stats, shutdown).
    pub fn handle(&self) -> &CoreHandle {
        &self.handle
    }

    /// Stops every shard within `timeout`.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), DriverError> {
        self.handle.shutdown(timeout)
    }

    fn shard_of(&self, room: MediaRoomId) -> Option<usize> {
        self.rooms
            .lock()
            .map(|r| r.get(&room).copied())
            .unwrap_or_else(|p| p.into_inner().get(&room).copied())
    }

    fn set_shard(&self, room: MediaRoomId, shard: Option<usize>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        match shard {
            Some(s) => rooms.insert(room, s),
            None => rooms.remove(&room),
        };
    }
}

fn map_err(err: CommandError<SfuError>) -> MediaError {
    match err {
        CommandError::Engine(e) => match e {
            SfuError::BadSdp(m) | SfuError::Negotiation(m) => MediaError::BadOffer(m),
            SfuError::NoSuchRoom(_) | SfuError::NoSuchParticipant(_) => MediaError::NotFound,
            SfuError::TooManyRooms | SfuError::RoomFull(_) => MediaError::Capacity,
            other => MediaError::Other(other.to_string()),
        },
        CommandError::NoSuchShard(_) | CommandError::ShardStopped => MediaError::Unavailable,
        other => MediaError::Other(other.to_string()),
    }
}

fn core_role(role: MediaRole) -> Role {
    match role {
        MediaRole::Visitor => Role::Visitor,
        MediaRole::Agent => Role::Agent,
        MediaRole::Supervisor { whisper } => Role::Supervisor { whisper },
        // MediaRole is non_exhaustive: an unknown future role gets the least privilege.
        _ => Role::Supervisor { whisper: false },
    }
}

fn answer(reply: Reply) -> Result<String, MediaError> {
    match reply {
        Reply::Answer(sdp) => Ok(sdp),
        other => Err(MediaError::Other(format!("unexpected SFU reply {other:?}"))),
    }
}

impl MediaControl for SfuMedia {
    fn open_room(&self, room: MediaRoomId) -> MediaFuture<'_, ()> {
        Box::pin(async move {
            if self.shard_of(room).is_some() {
                return Ok(());
            }
            let shard = self.handle.shard_for(room.0);
            match self
                .handle
                .command(shard, Command::CreateRoom { room: RoomId(room.0) })
                .await
            {
                Ok(_) | Err(CommandError::Engine(SfuError::RoomExists(_))) => {
                    self.set_shard(room, Some(shard));
                    Ok(())
                }
                Err(e) => Err(map_err(e)),
            }
        })
    }

    fn join(
        &self,
        room: MediaRoomId,
        participant: MediaParticipantId,
        role: MediaRole,
        offer: String,
    ) -> MediaFuture<'_, String> {
        Box::pin(async move {
            let shard = self.shard_of(room).ok_or(MediaError::NotFound)?;
            let cmd = Command::AddParticipant {
                room: RoomId(room.0),
                participant: ParticipantId(participant.0),
                role: core_role(role),
                offer,
            };
            answer(self.handle.command(shard, cmd).await.map_err(map_err)?)
        })
    }

    fn renegotiate(
        &self,
        room: MediaRoomId,
        participant: MediaParticipantId,
        offer: String,
    ) -> MediaFuture<'_, String> {
        Box::pin(async move {
            let shard = self.shard_of(room).ok_or(MediaError::NotFound)?;
            let cmd = Command::Renegotiate {
                participant: ParticipantId(participant.0),
                offer,
            };
            answer(self.handle.command(shard, cmd).await.map_err(map_err)?)
        })
    }

    fn set_role(&self, room: MediaRoomId, participant: MediaParticipantId, role: MediaRole) -> MediaFuture<'_, ()> {
        Box::pin(async move {
            let shard = self.shard_of(room).ok_or(MediaError::NotFound)?;
            let cmd = Command::SetRole {
                participant: ParticipantId(participant.0),
                role: core_role(role),
            };
            self.handle.command(shard, cmd).await.map_err(map_err)?;
            Ok(())
        })
    }

    fn leave(&self, room: MediaRoomId, participant: MediaParticipantId) -> MediaFuture<'_, ()> {
        Box::pin(async move {
            let Some(shard) = self.shard_of(room) else {
                return Ok(());
            };
            let cmd = Command::RemoveParticipant {
                participant: ParticipantId(participant.0),
            };
            match self.handle.command(shard, cmd).await {
                Ok(_) | Err(CommandError::Engine(SfuError::NoSuchParticipant(_))) => Ok(()),
                Err(e) => Err(map_err(e)),
            }
        })
    }

    fn set_tcp_candidate(&self, addr: Option<SocketAddr>) -> MediaFuture<'_, ()> {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = addr.into_iter().collect();
            for shard in 0..self.handle.shard_count() {
                let cmd = Command::SetTcpCandidates { addrs: addrs.clone() };
                self.handle.command(shard, cmd).await.map_err(map_err)?;
            }
            Ok(())
        })
    }

    fn accept_ice_tcp(&self, conn: IceTcpConnection) -> MediaFuture<'_, ()> {
        Box::pin(async move {
            let adoption = TcpAdoption {
                stream: conn.stream,
                peer: conn.peer,
                local: conn.local,
                first_frame: conn.first_frame,
            };
            match self.handle.adopt_tcp(adoption).await {
                Ok(_) => Ok(()),
                Err(AdoptError::NoUsername | AdoptError::UnknownUser) => Err(MediaError::NotFound),
                Err(AdoptError::TooMany) => Err(MediaError::Capacity),
                Err(AdoptError::ShardStopped) => Err(MediaError::Unavailable),
                Err(e) => Err(MediaError::Other(e.to_string())),
            }
        })
    }

    fn set_recording(&self, room: MediaRoomId, control: RecordingControl) -> MediaFuture<'_, u32> {
        Box::pin(async move {
            let shard = self.shard_of(room);
            let core = |recording| async move {
                let shard = shard.ok_or(MediaError::NotFound)?;
                let cmd = Command::SetRecording {
                    room: RoomId(room.0),
                    recording,
                };
                match self.handle.command(shard, cmd).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(map_err(e)),
                }
            };
            let writer = |make: Box<dyn FnOnce(oneshot::Sender<_>) -> Control + Send>| async move {
                let (tx, rx) = oneshot::channel();
                self.recorder.send(make(tx)).map_err(|_| MediaError::Unavailable)?;
                match rx.await {
                    Ok(Ok(chunks)) => Ok(chunks),
                    Ok(Err(e)) => Err(MediaError::Other(format!("recording: {e}"))),
                    Err(_) => Err(MediaError::Unavailable),
                }
            };
            let r = RoomId(room.0);
            let change = |change| -> Box<dyn FnOnce(oneshot::Sender<_>) -> Control + Send> {
                Box::new(move |reply| Control::Change { room: r, change, reply })
            };
            match control {
                RecordingControl::Start { id, path, key } => {
                    if shard.is_none() {
                        return Err(MediaError::NotFound);
                    }
                    let chunks = writer(Box::new(move |reply| Control::Start {
                        room: r,
                        id,
                        path,
                        key,
                        reply,
                    }))
                    .await?;
                    core(true).await?;
                    Ok(chunks)
                }
                // Off in the core first, so that nothing of the paused span reaches the writer.
                RecordingControl::Pause => {
                    core(false).await?;
                    writer(change(Change::Pause)).await
                }
                RecordingControl::Resume => {
                    let chunks = writer(change(Change::Resume)).await?;
                    core(true).await?;
                    Ok(chunks)
                }
                RecordingControl::Stop => {
                    // The room may be closed already; the file is closed all the same.
                    let _ = core(false).await;
                    writer(change(Change::Stop)).await
                }
                _ => Err(MediaError::Unavailable),
            }
        })
    }

    fn close_room(&self, room: MediaRoomId) -> MediaFuture<'_, ()> {
        Box::pin(async move {
            let Some(shard) = self.shard_of(room) else {
                return Ok(());
            };
            self.set_shard(room, None);
            match self
                .handle
                .command(shard, Command::CloseRoom { room: RoomId(room.0) })
                .await
            {
                Ok(_) | Err(CommandError::Engine(SfuError::NoSuchRoom(_))) => Ok(()),
                Err(e) => Err(map_err(e)),
            }
        })
    }
}

/// Maps one SFU event to what signalling needs to hear; participants' periodic figures become `/metrics`
/// histograms; the other notices stay in the SFU.
fn media_event(event: Event) -> Option<MediaEvent> {
    Some(match event {
        Event::ParticipantConnected { room, participant } => MediaEvent::Connected {
            room: MediaRoomId(room.0),
            participant: MediaParticipantId(participant.0),
        },
        Event::ParticipantLeft {
            room,
            participant,
            reason,
        } => MediaEvent::Left {
            room: MediaRoomId(room.0),
            participant: MediaParticipantId(participant.0),
            reason: match reason {
                LeaveReason::Removed => "removed",
                LeaveReason::Disconnected => "disconnected",
                _ => "failed",
            }
            .to_string(),
        },
        Event::RenegotiationNeeded {
            room,
            participant,
            audio,
            video,
        } => MediaEvent::RenegotiationNeeded {
            room: MediaRoomId(room.0),
            participant: MediaParticipantId(participant.0),
            audio,
            video,
        },
        Event::TextRelayed {
            room,
            from,
            text,
            amended,
        } => MediaEvent::CallText {
            room: MediaRoomId(room.0),
            participant: MediaParticipantId(from.0),
            text,
            amended: amended.into_iter().map(|a| (a.back, a.text)).collect(),
        },
        Event::FileTransferred {
            room,
            from,
            name,
            size,
            mime,
            sha256,
        } => MediaEvent::CallFile {
            room: MediaRoomId(room.0),
            participant: MediaParticipantId(from.0),
            name,
            size,
            mime,
            sha256,
        },
        Event::DataChannelRefused {
            room,
            participant,
            label,
        } => MediaEvent::DataChannelRefused {
            room: MediaRoomId(room.0),
            participant: MediaParticipantId(participant.0),
            label,
        },
        Event::Speaking {
            room,
            participant,
            speaking,
        } => MediaEvent::Speaking {
            room: MediaRoomId(room.0),
            participant: MediaParticipantId(participant.0),
            speaking,
        },
        Event::ParticipantStats { stats, .. } => {
            // Distributions over all participants (no per-participant labels: unbounded cardinality).
            if let Some(rtt) = stats.rtt {
                metrics::histogram!("relaydesk_media_rtt_seconds").record(rtt.as_secs_f64());
            }
            if let Some(ppm) = stats.egress_loss_ppm {
                metrics::histogram!("relaydesk_media_loss_ratio", "direction" => "egress").record(f64::from(ppm) / 1e6);
            }
            if let Some(ppm) = stats.ingress_loss_ppm {
                metrics::histogram!("relaydesk_media_loss_ratio", "direction" => "ingress")
                    .record(f64::from(ppm) / 1e6);
            }
            return None;
        }
        _ => return None,
    })
}

/// Carries the SFU's events to the hub; waits (never drops) when the hub is behind.
async fn bridge_events(mut events: EventReceiver<Event>, tx: mpsc::Sender<MediaEvent>) {
    while let Some(ev) = events.recv().await {
        if let Some(m) = media_event(ev.event)
            && tx.send(m).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> MaskingFilter {
        MaskingFilter {
            masker: Masker::default(),
            rooms: HashMap::new(),
        }
    }

    /// The ASCII digits a reader gets from `text`.
    fn readable_digits(text: &str) -> String {
        text.chars().filter(char::is_ascii_digit).collect()
    }

    #[test]
    fn in_call_text_is_normalised_like_chat() {
        let mut f = filter();
        let (room, from) = (RoomId(1), ParticipantId(2));
        for text in [
            "4111\u{200B}1111\u{200B}1111\u{200B}1111",
            "4111 - 1111 - 1111 - 1111",
            "4111/1111/1111/1111",
            "4111\t1111\n1111_1111",
            "⁴¹¹¹ ¹¹¹¹ ¹¹¹¹ 1111",
        ] {
            let out = f.filter(room, from, text);
            assert_eq!(readable_digits(&out), "1111", "{text:?} -> {out:?}");
            assert!(!out.contains('¹'), "{text:?} -> {out:?}");
        }
    }

    #[test]
    fn in_call_text_keeps_split_number_state_over_a_few_words() {
        let mut f = filter();
        let (room, from) = (RoomId(1), ParticipantId(2));
        // A data-channel message cannot be amended once relayed: the part that completes the number is
        // masked, and another participant's text does not break the sender's state.
        assert_eq!(f.filter(room, from, "first 5555 5555"), "first 5555 5555");
        assert_eq!(f.filter(room, ParticipantId(3), "go on"), "go on");
        assert_eq!(f.filter(room, from, "then 5555 4444"), "then •••• 4444");
        f.room_closed(room);
        assert_eq!(f.filter(room, from, "5555 4444"), "5555 4444");
    }

    #[test]
    fn in_call_text_reports_the_amendment_of_the_first_part_of_a_split_number() {
        let mut f = filter();
        let (room, from) = (RoomId(1), ParticipantId(2));
        let first = f.filter_text(room, from, "card 4111 1111");
        assert_eq!((first.text.as_str(), first.amended.len()), ("card 4111 1111", 0));
        // A file name in between does not count as a text (nor break the number).
        assert_eq!(f.filter_name(room, from, "notes.txt"), "notes.txt");
        let second = f.filter_text(room, from, "1111 1111");
        assert_eq!(second.text, "•••• 1111");
        let amended: Vec<(usize, String)> = second.amended.into_iter().map(|a| (a.back, a.text)).collect();
        assert_eq!(amended, vec![(1, "card •••• ••••".to_owned())]);
    }

    #[test]
    fn in_call_file_names_are_cleaned_like_chat_file_names_then_masked() {
        let mut f = filter();
        let (room, from) = (RoomId(1), ParticipantId(7));
        // A bidi override would show `card\u{202E}fdp.exe` as `cardexe.pdf`; a path would escape.
        let name = f.filter_name(room, from, "..\\..\\card 4111 1111 1111 1111\u{202E}\u{200B}fdp.exe");
        assert_eq!(name, "card •••• •••• •••• 1111fdp.exe");
        assert_eq!(f.filter_name(room, from, "\u{2066}\u{2069}"), "file");
    }
}
