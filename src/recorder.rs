//! Call recording on the media side: the SFU core's [`MediaTap`] hands each packet of a recorded room to
//! this module's writer thread over a bounded channel (never blocking forwarding: when the writer falls
//! behind, packets are dropped and counted in `relaydesk_recording_packets_dropped_total`); the writer
//! depacketises ([`track`]), muxes into WebM without transcoding (Opus and VP8;
//! [`relaydesk_signalling::recording::webm`]) and seals the stream in chunks
//! ([`relaydesk_signalling::recording::sealed`]) once a second, so a crash loses at most the last second.
//!
//! One file per call with a track each for the visitor's and the agent's audio and video: one file to
//! export, hand over and erase; the tracks share one timeline, so a player plays the call as it was. H.264
//! (and any other codec) is not recorded: its packets are counted in
//! `relaydesk_recording_packets_unsupported_total` and dropped (browsers offer VP8 first, and the SFU's
//! answer keeps that order).

pub mod track;

use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use relaydesk_sfu::core::{MediaKind, MediaTap, Role, RoomId, TapCodec, TappedPacket};
use relaydesk_signalling::archive_crypto::DataKey;
use relaydesk_signalling::recording::sealed::{SealError, SealedWriter};
use relaydesk_signalling::recording::webm::{self, ClusterWriter, TrackCodec, TrackSpec};
use tokio::sync::oneshot;

use track::{Kind, Track};

/// Packets waiting for the writer (about 10 s of a video call).
pub const QUEUE: usize = 8192;
/// How often buffered media is sealed as a chunk.
pub const SEAL_EVERY: Duration = Duration::from_secs(1);

/// The forwarding side's end: a [`MediaTap`] for each shard.
#[derive(Clone)]
pub struct TapSink {
    tx: SyncSender<TappedPacket>,
}

impl MediaTap for TapSink {
    fn packet(&mut self, packet: TappedPacket) {
        match self.tx.try_send(packet) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("relaydesk_recording_packets_dropped_total").increment(1);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// A request to the writer.
pub enum Control {
    /// Open a recording of `room`.
    Start {
        /// The room.
        room: RoomId,
        /// The recording id.
        id: String,
        /// The file to create.
        path: std::path::PathBuf,
        /// Its key.
        key: DataKey,
        /// Chunks written so far, or why not.
        reply: oneshot::Sender<Result<u32, SealError>>,
    },
    /// Pause, resume or stop `room`'s recording; replies with the chunks written (final on stop).
    Change {
        /// The room.
        room: RoomId,
        /// What to do.
        change: Change,
        /// Chunks written, or why not.
        reply: oneshot::Sender<Result<u32, SealError>>,
    },
}

/// A change of a recording in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Paused.
    Pause,
    /// Resumed.
    Resume,
    /// Stopped and closed.
    Stop,
}

/// Starts the writer thread; returns the tap for the shards and the control channel.
pub fn spawn() -> std::io::Result<(TapSink, std::sync::mpsc::Sender<Control>)> {
    let (tx, rx) = sync_channel(QUEUE);
    let (ctl_tx, ctl_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || Writer::default().run(&rx, &ctl_rx))?;
    Ok((TapSink { tx }, ctl_tx))
}

/// The recording's tracks: each party's audio, its first video track (camera) and its second (a shared
/// screen). A track that never carries a frame stays empty.
const TRACKS: [(u8, TrackCodec, &str); 6] = [
    (1, TrackCodec::Opus, "visitor audio"),
    (2, TrackCodec::Vp8, "visitor video"),
    (3, TrackCodec::Opus, "agent audio"),
    (4, TrackCodec::Vp8, "agent video"),
    (5, TrackCodec::Vp8, "visitor screen"),
    (6, TrackCodec::Vp8, "agent screen"),
];

/// The recording track of a publisher's track: `index` is its place among the publisher's tracks of that
/// kind (see [`TappedPacket::track`]). Audio beyond the first and video beyond the second are not recorded.
fn track_number(role: Role, kind: MediaKind, index: u8) -> Option<u8> {
    match (role, kind, index) {
        (Role::Visitor, MediaKind::Audio, 0) => Some(1),
        (Role::Visitor, MediaKind::Video, 0) => Some(2),
        (Role::Agent, MediaKind::Audio, 0) => Some(3),
        (Role::Agent, MediaKind::Video, 0) => Some(4),
        (Role::Visitor, MediaKind::Video, 1) => Some(5),
        (Role::Agent, MediaKind::Video, 1) => Some(6),
        _ => None,
    }
}

fn tracks() -> Vec<TrackSpec> {
    TRACKS
        .into_iter()
        .map(|(number, codec, name)| TrackSpec {
            number,
            codec,
            name: name.into(),
        })
        .collect()
}

#[cfg(test)]
mod track_tests {
    use super::*;

    #[test]
    fn a_camera_and_a_shared_screen_are_two_tracks_and_every_number_is_declared() {
        assert_eq!(track_number(Role::Visitor, MediaKind::Video, 0), Some(2));
        assert_eq!(track_number(Role::Visitor, MediaKind::Video, 1), Some(5));
        assert_eq!(track_number(Role::Agent, MediaKind::Video, 1), Some(6));
        assert_eq!(track_number(Role::Agent, MediaKind::Audio, 1), None);
        assert_eq!(track_number(Role::Visitor, MediaKind::Video, 2), None);
        assert_eq!(
            track_number(Role::Supervisor { whisper: false }, MediaKind::Audio, 0),
            None
        );
        let declared: Vec<u8> = tracks().iter().map(|t| t.number).collect();
        for role in [Role::Visitor, Role::Agent] {
            for kind in [MediaKind::Audio, MediaKind::Video] {
                for i in 0..2 {
                    if let Some(n) = track_number(role, kind, i) {
                        assert!(declared.contains(&n), "track {n} is not in the header");
                    }
                }
            }
        }
    }
}

struct Recording {
    id: String,
    sealed: SealedWriter<File>,
    clusters: ClusterWriter,
    tracks: HashMap<u8, Track>,
    started: Instant,
    paused_total: Duration,
    paused_since: Option<Instant>,
    last_seal: Instant,
    buf: Vec<u8>,
    /// A write failed: the recording stops taking media (what was sealed stays).
    failed: bool,
}

impl Recording {
    /// Recording time of an arrival: time since the start, paused spans excluded.
    fn file_time(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
            .saturating_sub(self.paused_total)
    }

    fn seal(&mut self) -> Result<(), SealError> {
        self.sealed.write(&self.buf)?;
        self.buf.clear();
        self.sealed.seal_chunk()?;
        self.sealed.get_mut().sync_data()?;
        Ok(())
    }
}

#[derive(Default)]
struct Writer {
    rooms: HashMap<RoomId, Recording>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<TappedPacket>, ctl: &Receiver<Control>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(p) => self.packet(p),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Controls apply after the packets that arrived before them.
            if let Ok(c) = ctl.try_recv() {
                while let Ok(p) = rx.try_recv() {
                    self.packet(p);
                }
                self.control(c);
                while let Ok(c) = ctl.try_recv() {
                    self.control(c);
                }
            }
            self.seal_due(Instant::now());
        }
        // The shards are gone (shutdown): close what is open.
        for (_, r) in self.rooms.drain() {
            close_logged(r);
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Start {
                room,
                id,
                path,
                key,
                reply,
            } => {
                let result = open(&id, &path, &key).map(|r| {
                    let chunks = r.sealed.chunks();
                    if let Some(old) = self.rooms.insert(room, r) {
                        close_logged(old);
                    }
                    chunks
                });
                let _ = reply.send(result);
            }
            Control::Change { room, change, reply } => {
                let now = Instant::now();
                let result = match change {
                    Change::Stop => match self.rooms.remove(&room) {
                        Some(r) => close(r),
                        None => Ok(0),
                    },
                    Change::Pause | Change::Resume => match self.rooms.get_mut(&room) {
                        Some(r) => {
                            if change == Change::Pause && r.paused_since.is_none() {
                                r.paused_since = Some(now);
                            } else if change == Change::Resume
                                && let Some(since) = r.paused_since.take()
                            {
                                r.paused_total += now.saturating_duration_since(since);
                                r.tracks.values_mut().for_each(Track::reset);
                            }
                            // What was recorded before the pause is sealed now.
                            let sealed = if r.buf.is_empty() { Ok(()) } else { r.seal() };
                            sealed.map(|()| r.sealed.chunks())
                        }
                        None => Ok(0),
                    },
                };
                let _ = reply.send(result);
            }
        }
    }

    fn packet(&mut self, p: TappedPacket) {
        let Some(r) = self.rooms.get_mut(&p.room) else { return };
        if r.paused_since.is_some() || r.failed {
            return;
        }
        let kind = match p.codec {
            TapCodec::Opus => Kind::Opus,
            TapCodec::Vp8 => Kind::Vp8,
            _ => {
                metrics::counter!("relaydesk_recording_packets_unsupported_total").increment(1);
                return;
            }
        };
        let Some(number) = track_number(p.role, p.kind, p.track) else {
            return;
        };
        let now = r.file_time(p.arrived);
        let track = r.tracks.entry(number).or_insert_with(|| Track::new(kind));
        if let Some(frame) = track.packet(p.rtp_time, p.seq, p.marker, &p.payload, now) {
            let video = kind == Kind::Vp8;
            r.clusters
                .block(number, frame.ms, frame.keyframe, video, &frame.data, &mut r.buf);
            metrics::counter!("relaydesk_recording_frames_total").increment(1);
        }
    }

    fn seal_due(&mut self, now: Instant) {
        for r in self.rooms.values_mut() {
            if r.failed || r.buf.is_empty() || now.saturating_duration_since(r.last_seal) < SEAL_EVERY {
                continue;
            }
            r.last_seal = now;
            if let Err(e) = r.seal() {
                tracing::error!(recording = %r.id, error = %e, "recording write failed; it stops here");
                r.failed = true;
            }
        }
    }
}

fn open(id: &str, path: &std::path::Path, key: &DataKey) -> Result<Recording, SealError> {
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    let mut sealed = SealedWriter::new(key, id, file)?;
    // The header is the first chunk: with it on disk, a crash at any later point leaves a file that exports.
    sealed.write(&webm::header(&tracks()))?;
    sealed.seal_chunk()?;
    sealed.get_mut().sync_data()?;
    let now = Instant::now();
    tracing::info!(recording = %id, "recording started");
    Ok(Recording {
        id: id.to_owned(),
        sealed,
        clusters: ClusterWriter::default(),
        tracks: HashMap::new(),
        started: now,
        paused_total: Duration::ZERO,
        paused_since: None,
        last_seal: now,
        buf: Vec::new(),
        failed: false,
    })
}

/// Closes a recording nobody waits for (shutdown, replaced); a failure is logged (the row stays
/// `recording` and is marked interrupted at the next start).
fn close_logged(r: Recording) {
    let id = r.id.clone();
    if let Err(e) = close(r) {
        tracing::error!(recording = %id, error = %e, "recording could not be closed");
    }
}

/// Seals what is buffered and the final chunk; returns the chunk count.
fn close(mut r: Recording) -> Result<u32, SealError> {
    r.sealed.write(&r.buf)?;
    let dropped: u64 = r.tracks.values().map(|t| t.dropped).sum();
    let (file, chunks) = r.sealed.finish()?;
    file.sync_all()?;
    tracing::info!(recording = %r.id, chunks, dropped_frames = dropped, "recording closed");
    Ok(chunks)
}
