//! Call recordings at rest: one sealed file per recorded call, its data key wrapped under the master key in
//! the `recordings` table (migration 5 of [`crate::store::MIGRATIONS`]), export (decrypt, audited), and the
//! hooks by which retention, erasure and master-key rotation cover recordings as they cover transcripts.
//!
//! # Why a data key per recording
//! A conversation's archive row, and with it its archive key, exists only once the conversation has ended;
//! a recording is written while the call runs and must be readable after a crash that happens before. So each
//! recording gets its own random data key, wrapped under the master key exactly as a conversation's key is
//! (envelope encryption, [`crate::archive_crypto`]) and bound to the recording id (`{conversation}-{n}`).
//!
//! # Life of a recording
//! [`begin`] inserts the row (state `recording`) and returns the file path and the key; the media side
//! writes the file with [`sealed::SealedWriter`]; [`finish`] records the chunk count and state `complete`.
//! At start, [`mark_interrupted`] turns every row still `recording` (a crash) into `interrupted`: its file
//! exports up to the last sealed chunk. A `complete` row whose file lacks its final chunk is refused as
//! truncated.
//!
//! Files live in `<data_dir>/recordings/`, named after the recording id; the directory is 0700.

pub mod sealed;
pub mod webm;

use std::path::{Path, PathBuf};

use crate::archive::{ArchiveError, ArchiveKeys};
use crate::archive_crypto::DataKey;
use crate::store::{AuditEvent, NewRecordingRow, Storage, StoreError};
pub use crate::store::{RecordingInfo, RecordingState};

/// Directory of the recording files, under the data directory.
pub const DIR: &str = crate::archive::RECORDINGS_DIR;
/// Extension of a sealed recording file.
pub const EXT: &str = "rdrec";
/// Largest recording file read for export (16 GiB is hours of HD video).
pub const MAX_FILE_BYTES: u64 = 16 << 30;

/// Errors of recordings at rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    /// Keys or database.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The sealed file is unreadable (tampered, wrong key, or cut).
    #[error("recording {id}: {source}")]
    Sealed {
        /// The recording.
        id: String,
        /// Why.
        source: sealed::SealError,
    },
    /// No recording matches.
    #[error("no recording of conversation {0:?}")]
    NotFound(String),
    /// A recording that was closed properly lacks chunks: the file was cut.
    #[error("recording {0} is truncated (its final chunk is missing)")]
    Truncated(String),
    /// The recording file could not be read or created.
    #[error("recording file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database has no data directory (in memory).
    #[error("recordings need a data directory")]
    NoDataDir,
}

impl From<crate::store::StoreError> for RecordingError {
    fn from(e: crate::store::StoreError) -> Self {
        RecordingError::Archive(e.into())
    }
}

type Result<T, E = RecordingError> = std::result::Result<T, E>;

/// A recording just begun: where to write it and with which key.
pub struct NewRecording {
    /// Its id.
    pub id: String,
    /// The file to create.
    pub path: PathBuf,
    /// Its data key (exists only in memory; wrapped in the database).
    pub key: DataKey,
}

impl std::fmt::Debug for NewRecording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRecording")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The directory of recording files for `db` (created 0700 if missing).
///
/// # Errors
/// [`RecordingError::NoDataDir`], [`RecordingError::Io`].
pub fn dir(db: &dyn Storage) -> Result<PathBuf> {
    let dir = db.data_dir().ok_or(RecordingError::NoDataDir)?.join(DIR);
    if !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            b.mode(0o700);
        }
        b.create(&dir).map_err(|source| RecordingError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(dir)
}

/// Starts a recording of `conversation`: a new data key wrapped under the current master key, a row in state
/// `recording`, audited as `recording.start`.
///
/// # Errors
/// Key, database or directory errors.
pub fn begin(
    db: &dyn Storage,
    keys: &ArchiveKeys,
    conversation: &str,
    started_at_ms: i64,
    audit: &AuditEvent,
) -> Result<NewRecording> {
    let dir = dir(db)?;
    let key = DataKey::generate().map_err(ArchiveError::from)?;
    // Another recording of the conversation begun meanwhile takes the number (`Duplicate`), a rotation
    // changes the master key (`MasterKeyChanged`): number and wrap again.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let n = db.recording_count(conversation)?;
        let id = format!("{conversation}-{}", n + 1);
        let file = format!("{id}.{EXT}");
        let wrapped = keys.wrap_current(db, &key, &id)?;
        let row = NewRecordingRow {
            id: id.clone(),
            conversation_id: conversation.to_owned(),
            file: file.clone(),
            started_at: started_at_ms,
            master_key_id: wrapped.master_key_id().to_string(),
            wrapped_key: wrapped.to_bytes(),
        };
        match db.insert_recording(&row, audit) {
            Ok(()) => {
                return Ok(NewRecording {
                    path: dir.join(file),
                    id,
                    key,
                });
            }
            Err(StoreError::Duplicate { .. } | StoreError::MasterKeyChanged) if attempt < 4 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Records that recording `id` was closed properly with `chunks` chunks, audited as given.
///
/// # Errors
/// Database errors.
pub fn finish(db: &dyn Storage, id: &str, chunks: u32, ended_at_ms: i64, audit: &AuditEvent) -> Result<()> {
    Ok(db.finish_recording(id, chunks, ended_at_ms, audit)?)
}

/// Marks every recording still `recording` as `interrupted` (call at start, before any call is recorded).
/// Returns how many.
///
/// # Errors
/// Database errors.
pub fn mark_interrupted(db: &dyn Storage) -> Result<usize> {
    Ok(db.mark_recordings_interrupted()?)
}

/// The recordings of a conversation, oldest first.
///
/// # Errors
/// Database errors.
pub fn list(db: &dyn Storage, conversation: &str) -> Result<Vec<RecordingInfo>> {
    Ok(db.list_recordings(conversation)?)
}

/// A decrypted recording.
#[derive(Debug)]
pub struct Exported {
    /// Which recording.
    pub info: RecordingInfo,
    /// The WebM file.
    pub webm: Vec<u8>,
    /// Whether it was closed properly (`false`: interrupted by a crash, cut after its last sealed chunk).
    pub complete: bool,
}

/// Decrypts a recording of `conversation` (`which`: its id; `None`: the latest) and writes `audit` (action
/// `recording.export`) once its key is open and before its file is read, so no export goes unrecorded.
///
/// # Errors
/// [`RecordingError::NotFound`], [`RecordingError::Sealed`] (tampered, wrong key),
/// [`RecordingError::Truncated`], key, file or database errors.
pub fn export(
    db: &dyn Storage,
    keys: &ArchiveKeys,
    conversation: &str,
    which: Option<&str>,
    audit: &AuditEvent,
) -> Result<Exported> {
    let dir = db.data_dir().ok_or(RecordingError::NoDataDir)?.join(DIR);
    let Some(row) = db.recording(conversation, which)? else {
        return Err(RecordingError::NotFound(conversation.chars().take(128).collect()));
    };
    let (info, file) = (row.info, row.file);
    let key = keys.unwrap_stored(db, &row.wrapped_key, &info.id)?;
    let mut audit = audit.clone();
    audit.detail = Some(format!("recording {}", info.id));
    db.audit(audit)?;
    let path = dir.join(&file);
    let bytes = read_bounded(&path)?;
    let opened = sealed::open(&key, &info.id, &bytes).map_err(|source| RecordingError::Sealed {
        id: info.id.clone(),
        source,
    })?;
    if info.state == RecordingState::Complete && (!opened.complete || opened.chunks != info.chunks) {
        return Err(RecordingError::Truncated(info.id));
    }
    let mut webm = opened.data;
    // The writer streams without knowing the end; the export states the duration.
    webm::fix_duration(&mut webm);
    Ok(Exported {
        info,
        webm,
        complete: opened.complete,
    })
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let io = |source| RecordingError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(io(std::io::Error::other("file too large")));
    }
    std::fs::read(path).map_err(io)
}

/// The async face of this module over the server's [`crate::archive::Archive`] (each call on a blocking
/// thread of the store).
impl crate::archive::Archive {
    async fn recording_call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&dyn Storage, &ArchiveKeys) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (store, keys) = self.parts();
        store.call(move |db| Ok(f(db, &keys))).await?
    }

    /// [`begin`].
    ///
    /// # Errors
    /// As [`begin`].
    pub async fn recording_begin(
        &self,
        conversation: String,
        started_at_ms: i64,
        audit: AuditEvent,
    ) -> Result<NewRecording> {
        self.recording_call(move |db, keys| begin(db, keys, &conversation, started_at_ms, &audit))
            .await
    }

    /// [`finish`].
    ///
    /// # Errors
    /// As [`finish`].
    pub async fn recording_finish(&self, id: String, chunks: u32, ended_at_ms: i64, audit: AuditEvent) -> Result<()> {
        self.recording_call(move |db, _| finish(db, &id, chunks, ended_at_ms, &audit))
            .await
    }

    /// Writes one audit record (a pause or a resume).
    ///
    /// # Errors
    /// Database errors.
    pub async fn recording_audit(&self, audit: AuditEvent) -> Result<()> {
        self.recording_call(move |db, _| Ok(db.audit(audit)?)).await
    }

    /// [`mark_interrupted`].
    ///
    /// # Errors
    /// Database errors.
    pub async fn recording_mark_interrupted(&self) -> Result<usize> {
        self.recording_call(|db, _| mark_interrupted(db)).await
    }

    /// [`export`].
    ///
    /// # Errors
    /// As [`export`].
    pub async fn recording_export(
        &self,
        conversation: String,
        which: Option<String>,
        audit: AuditEvent,
    ) -> Result<Exported> {
        self.recording_call(move |db, keys| export(db, keys, &conversation, which.as_deref(), &audit))
            .await
    }
}

#[cfg(test)]
mod tests;
