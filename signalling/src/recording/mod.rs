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

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::archive::{ArchiveError, ArchiveKeys};
use crate::archive_crypto::DataKey;
use crate::store::{AuditEvent, Db, write_audit};

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

impl From<rusqlite::Error> for RecordingError {
    fn from(e: rusqlite::Error) -> Self {
        RecordingError::Archive(e.into())
    }
}

type Result<T, E = RecordingError> = std::result::Result<T, E>;

/// Where a recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Being written now.
    Recording,
    /// Closed properly: every chunk, the final one included, is on disk.
    Complete,
    /// The server stopped while writing it (crash): it exports up to the last sealed chunk.
    Interrupted,
}

impl RecordingState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recording => "recording",
            Self::Complete => "complete",
            Self::Interrupted => "interrupted",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "complete" => Self::Complete,
            "recording" => Self::Recording,
            _ => Self::Interrupted,
        }
    }
}

/// A recording as listed (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RecordingInfo {
    /// `{conversation}-{n}`.
    pub id: String,
    /// The conversation.
    pub conversation_id: String,
    /// Start, unix ms.
    pub started_at: i64,
    /// End, unix ms (none while recording or after a crash).
    pub ended_at: Option<i64>,
    /// Where it stands.
    pub state: RecordingState,
    /// Sealed chunks written (known once complete).
    pub chunks: u32,
}

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
pub fn dir(db: &Db) -> Result<PathBuf> {
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
    db: &mut Db,
    keys: &ArchiveKeys,
    conversation: &str,
    started_at_ms: i64,
    audit: &AuditEvent,
) -> Result<NewRecording> {
    let dir = dir(db)?;
    let tx = db
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM recordings WHERE conversation_id = ?1",
        params![conversation],
        |r| r.get(0),
    )?;
    let id = format!("{conversation}-{}", n + 1);
    let file = format!("{id}.{EXT}");
    let key = DataKey::generate().map_err(ArchiveError::from)?;
    let wrapped = keys.wrap_live_key(&tx, &key, &id)?;
    tx.execute(
        "INSERT INTO recordings (id, conversation_id, file, started_at, state, master_key_id, wrapped_key)
         VALUES (?1, ?2, ?3, ?4, 'recording', ?5, ?6)",
        params![
            id,
            conversation,
            file,
            started_at_ms,
            wrapped.master_key_id().to_string(),
            wrapped.to_bytes()
        ],
    )?;
    write_audit(&tx, audit)?;
    tx.commit()?;
    Ok(NewRecording {
        path: dir.join(file),
        id,
        key,
    })
}

/// Records that recording `id` was closed properly with `chunks` chunks, audited as given.
///
/// # Errors
/// Database errors.
pub fn finish(db: &mut Db, id: &str, chunks: u32, ended_at_ms: i64, audit: &AuditEvent) -> Result<()> {
    let tx = db
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "UPDATE recordings SET state = 'complete', chunks = ?1, ended_at = ?2 WHERE id = ?3",
        params![chunks, ended_at_ms, id],
    )?;
    write_audit(&tx, audit)?;
    tx.commit()?;
    Ok(())
}

/// Marks every recording still `recording` as `interrupted` (call at start, before any call is recorded).
/// Returns how many.
///
/// # Errors
/// Database errors.
pub fn mark_interrupted(db: &mut Db) -> Result<usize> {
    Ok(db.conn_mut().execute(
        "UPDATE recordings SET state = 'interrupted' WHERE state = 'recording'",
        [],
    )?)
}

fn info_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordingInfo> {
    let state: String = r.get(4)?;
    Ok(RecordingInfo {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        started_at: r.get(2)?,
        ended_at: r.get(3)?,
        state: RecordingState::parse(&state),
        chunks: r.get(5)?,
    })
}

/// The recordings of a conversation, oldest first.
///
/// # Errors
/// Database errors.
pub fn list(db: &mut Db, conversation: &str) -> Result<Vec<RecordingInfo>> {
    let conn = db.conn_mut();
    let mut stmt = conn.prepare(
        "SELECT id, conversation_id, started_at, ended_at, state, chunks FROM recordings
         WHERE conversation_id = ?1 ORDER BY started_at, id",
    )?;
    let rows = stmt.query_map(params![conversation], info_of)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
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
/// `recording.export`) in the same transaction that reads its key, so no export goes unrecorded.
///
/// # Errors
/// [`RecordingError::NotFound`], [`RecordingError::Sealed`] (tampered, wrong key),
/// [`RecordingError::Truncated`], key, file or database errors.
pub fn export(
    db: &mut Db,
    keys: &ArchiveKeys,
    conversation: &str,
    which: Option<&str>,
    audit: &AuditEvent,
) -> Result<Exported> {
    let dir = db.data_dir().ok_or(RecordingError::NoDataDir)?.join(DIR);
    let tx = db
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row = tx
        .query_row(
            "SELECT id, conversation_id, started_at, ended_at, state, chunks, file, wrapped_key FROM recordings
             WHERE conversation_id = ?1 AND (?2 IS NULL OR id = ?2) ORDER BY started_at DESC, id DESC LIMIT 1",
            params![conversation, which],
            |r| Ok((info_of(r)?, r.get::<_, String>(6)?, r.get::<_, Vec<u8>>(7)?)),
        )
        .optional()?;
    let Some((info, file, wrapped)) = row else {
        return Err(RecordingError::NotFound(conversation.chars().take(128).collect()));
    };
    let key = keys.unwrap_stored(&tx, &wrapped, &info.id)?;
    let mut audit = audit.clone();
    audit.detail = Some(format!("recording {}", info.id));
    write_audit(&tx, &audit)?;
    tx.commit()?;
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
        F: FnOnce(&mut Db, &ArchiveKeys) -> Result<R> + Send + 'static,
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
