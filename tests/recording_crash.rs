//! A crash during a recording, at the level of the media side's writer: while the writer thread records a
//! room (real sealed files, real keys in a real database), the file on disk is taken as a kill -9 would leave
//! it (every write is a whole sealed chunk, synced; a snapshot mid-run is exactly the state of a killed
//! process, a partly written chunk included). After the "restart" the recording is marked interrupted and
//! exports up to its last sealed chunk; ffprobe reads the export without an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use relaydesk::recorder::{self, Change, Control};
use relaydesk_sfu::core::{MediaKind, MediaTap, ParticipantId, Role, RoomId, TapCodec, TappedPacket};
use relaydesk_signalling::archive::{ArchiveKeys, KeySource};
use relaydesk_signalling::recording::{self, RecordingState};
use relaydesk_signalling::store::{AuditEvent, Db};
use tokio::sync::oneshot;

/// An Opus packet of 20 ms of silence (CELT, fullband): what browsers send in DTX.
const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];

fn reply<T>(rx: oneshot::Receiver<T>) -> T {
    rx.blocking_recv().expect("the writer answers")
}

#[test]
fn a_recording_cut_by_a_crash_exports_up_to_its_last_sealed_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    let keys = ArchiveKeys::open(KeySource::File(tmp.path().join("master.key")), &db).unwrap();
    let new = recording::begin(&db, &keys, "77", 0, &AuditEvent::default()).unwrap();
    let path = new.path.clone();
    let (mut tap, ctl) = recorder::spawn().unwrap();
    let room = RoomId(77);
    let (tx, rx) = oneshot::channel();
    ctl.send(Control::Start {
        room,
        id: new.id.clone(),
        path: path.clone(),
        key: new.key,
        reply: tx,
    })
    .unwrap();
    assert_eq!(reply(rx).unwrap(), 1, "the header is sealed at once");
    let header_len = std::fs::metadata(&path).unwrap().len();

    // Audio for as long as it takes the writer to seal two more chunks (once a second): the snapshot then
    // holds sealed media, and whatever was buffered after it is what the crash loses.
    let start = Instant::now();
    let deadline = start + Duration::from_secs(20);
    let mut seq = 0u64;
    let snapshot = loop {
        seq += 1;
        tap.packet(TappedPacket {
            room,
            participant: ParticipantId(1),
            role: Role::Visitor,
            kind: MediaKind::Audio,
            track: 0,
            codec: TapCodec::Opus,
            arrived: start + Duration::from_millis(20 * seq),
            rtp_time: (960 * seq) as u32,
            seq,
            marker: false,
            payload: OPUS_SILENCE.to_vec().into(),
        });
        // Paced like a sender: one 20 ms packet per 20 ms of wall time.
        let due = start + Duration::from_millis(20 * seq);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let bytes = std::fs::read(&path).unwrap();
        // Header chunk plus two media chunks.
        if recording::sealed::count_chunks(&bytes) >= 3 && bytes.len() as u64 > header_len {
            break bytes;
        }
        assert!(Instant::now() < deadline, "no media chunk sealed within 20 s");
    };
    // Stop the writer (its proper close is not what a crash leaves), then put the crash state back.
    let (tx, rx) = oneshot::channel();
    ctl.send(Control::Change {
        room,
        change: Change::Stop,
        reply: tx,
    })
    .unwrap();
    reply(rx).unwrap();
    std::fs::write(&path, &snapshot).unwrap();
    drop(db);

    // The restart.
    let db = Db::open(tmp.path()).unwrap();
    let keys = ArchiveKeys::open(KeySource::File(tmp.path().join("master.key")), &db).unwrap();
    assert_eq!(recording::mark_interrupted(&db).unwrap(), 1);
    assert_eq!(
        recording::list(&db, "77").unwrap()[0].state,
        RecordingState::Interrupted
    );
    let out = recording::export(&db, &keys, "77", None, &AuditEvent::default()).unwrap();
    assert!(!out.complete);
    let file = tmp.path().join("crashed.webm");
    std::fs::write(&file, &out.webm).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(&file)
        .output()
        .expect("ffprobe (cargo xtask test installs the Debian package ffmpeg)");
    let err = String::from_utf8_lossy(&probe.stderr);
    assert!(probe.status.success() && err.trim().is_empty(), "ffprobe: {err}");
    let duration: f64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap();
    // At least the second of audio of the first sealed media chunk; never more than was sent.
    let sent = (20 * seq) as f64 / 1000.0;
    assert!(
        duration >= 0.9 && duration <= sent + 0.1,
        "duration {duration} s of {sent} s sent"
    );
}
