//! Envelope encryption of archived transcripts (bodies at rest).
//!
//! - A [`MasterKey`] (32 random bytes, identified by a [`MasterKeyId`]) lives in a file created `0600` in the
//!   data directory on first start ([`MasterKey::load_or_create`]), or is given by the operator as base64
//!   ([`MasterKey::from_base64`], e.g. from an environment variable).
//! - Each conversation gets its own random [`DataKey`]. Message bodies are sealed with XChaCha20-Poly1305
//!   under that key, with a fresh random 24-byte nonce per message and associated data binding the
//!   conversation id and the message sequence number, so a sealed body copied to another row (another
//!   conversation or another position) fails to open.
//! - The data key is stored only wrapped (encrypted) under the master key as a [`WrappedKey`], which records
//!   the master key id; the wrap is bound to the conversation id too. [`rewrap`] moves a wrapped key to a new
//!   master key (`relaydesk keys rotate`) without touching the message rows.
//! - A [`Keyring`] holds the current master key and earlier ones and opens any wrapped key by its id. A safe
//!   rotation: [`MasterKey::save_new`] the next key beside the current file (`master.key.next`), re-wrap
//!   every conversation key under it in one database transaction ([`Keyring::rewrap_to_current`] with the
//!   next key as current and the old one as previous), then rename the new file over the old. A start
//!   between those steps loads both files into the keyring, so nothing becomes unreadable.
//!
//! Key material is overwritten on drop (the cipher instances of `chacha20poly1305` zeroise themselves; our
//! own byte arrays are overwritten by hand) and no `Debug` impl prints key bytes.
//!
//! # Formats (stable: they are stored in the database)
//! - Master key file / env value: the standard base64 of the 32 key bytes, optionally followed by a newline.
//! - [`MasterKeyId`]: 16 lowercase hex characters, the first 8 bytes of
//!   `SHA-256("relaydesk/master-key-id/v1" || key)` (a fingerprint; it reveals nothing usable about the key).
//! - [`WrappedKey::to_bytes`]: `0x01 || key_id (8) || nonce (24) || ciphertext+tag (48)`.
//! - [`ConversationCipher::seal`] output: `0x01 || nonce (24) || ciphertext+tag`.
//!
//! Associated data: `"relaydesk/wrap/v1" || len(conversation) as u32 BE || conversation` for wrapped keys,
//! `"relaydesk/msg/v1" || len(conversation) as u32 BE || conversation || seq as u64 BE` for messages.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// `Debug` for a type that holds key material: the named fields only, the rest elided.
macro_rules! debug_without_secrets {
    ($ty:ident { $($field:ident),* }) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))*
                    .finish_non_exhaustive()
            }
        }
    };
}

/// Length of every key (master and data keys), in bytes.
pub const KEY_LEN: usize = 32;
/// Length of an XChaCha20-Poly1305 nonce, in bytes.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 authentication tag, in bytes.
pub const TAG_LEN: usize = 16;
/// Length of a [`MasterKeyId`] in bytes (it is printed as twice as many hex characters).
pub const KEY_ID_LEN: usize = 8;

const FORMAT_V1: u8 = 1;
/// A master key file larger than this is malformed (the real content is 44 or 45 bytes).
const MAX_KEY_FILE_LEN: u64 = 256;
const WRAPPED_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN + KEY_LEN + TAG_LEN;

/// Errors of the archive encryption.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveCryptoError {
    /// Reading, creating or inspecting the master key file failed.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The existing master key file can be read by others than its owner; fix it with `chmod 600`.
    #[error("master key file {path} has mode {mode:o}; refusing to use it until it is 0600 or stricter")]
    PermissionsTooWide {
        /// The file concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The master key (file content or given value) is not the base64 of exactly 32 bytes.
    #[error("malformed master key: {0}")]
    MalformedKey(&'static str),
    /// The operating system's random generator failed.
    #[error("random generator failed: {0}")]
    Random(getrandom::Error),
    /// A wrapped key was wrapped under another master key than the one given.
    #[error("wrapped key belongs to master key {expected}, but master key {given} was given")]
    WrongMasterKey {
        /// The key id recorded in the wrapped key.
        expected: MasterKeyId,
        /// The id of the key that was given.
        given: MasterKeyId,
    },
    /// A wrapped key names a master key that is not available (lost key file, or rotation not finished).
    #[error("master key {0} is not available")]
    UnknownMasterKey(MasterKeyId),
    /// Stored bytes (a wrapped key or a sealed message) do not have the expected layout or version.
    #[error("malformed ciphertext: {0}")]
    MalformedCiphertext(&'static str),
    /// Authentication failed: wrong key, tampered bytes, or a row moved to another conversation or position.
    #[error("decryption failed (wrong key, tampered data or mismatched conversation/sequence)")]
    Decrypt,
    /// Encryption failed (only for absurdly long inputs).
    #[error("encryption failed")]
    Encrypt,
    /// A decrypted body is not UTF-8.
    #[error("decrypted body is not UTF-8")]
    NotUtf8,
}

type Result<T, E = ArchiveCryptoError> = std::result::Result<T, E>;

/// 32 secret bytes, overwritten on drop, never printed.
struct SecretBytes([u8; KEY_LEN]);

impl SecretBytes {
    fn random() -> Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(ArchiveCryptoError::Random)?;
        Ok(Self(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        // The cipher holds its own copy of the key and zeroises it on drop (feature `zeroize`).
        XChaCha20Poly1305::new(&Key::from(self.0))
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keep the overwrite from being optimised away as a dead store.
        std::hint::black_box(&self.0);
    }
}

fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(ArchiveCryptoError::Random)?;
    Ok(nonce)
}

/// Encrypts `msg` bound to `aad` under a fresh random nonce: (nonce, ciphertext with its tag).
fn encrypt_fresh(cipher: &XChaCha20Poly1305, msg: &[u8], aad: &[u8]) -> Result<([u8; NONCE_LEN], Vec<u8>)> {
    let nonce = random_nonce()?;
    let ciphertext = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg, aad })
        .map_err(|_| ArchiveCryptoError::Encrypt)?;
    Ok((nonce, ciphertext))
}

/// `msg` sealed as `FORMAT_V1 || nonce || ciphertext` (the layout of message bodies and file keys).
fn seal_v1(cipher: &XChaCha20Poly1305, msg: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let (nonce, ciphertext) = encrypt_fresh(cipher, msg, aad)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// The identifier of a master key, stored next to every wrapped key so rotation knows what to re-wrap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MasterKeyId([u8; KEY_ID_LEN]);

impl MasterKeyId {
    fn of(key: &[u8; KEY_LEN]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"relaydesk/master-key-id/v1");
        hasher.update(key);
        let digest = hasher.finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self(id)
    }

    /// The raw id bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for MasterKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MasterKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKeyId({self})")
    }
}

impl FromStr for MasterKeyId {
    type Err = ArchiveCryptoError;

    /// Parses the 16-hex-character form printed by `Display`.
    fn from_str(s: &str) -> Result<Self> {
        let mut id = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(s, &mut id)
            .map_err(|_| ArchiveCryptoError::MalformedKey("key id is not 16 hex digits"))?;
        Ok(Self(id))
    }
}

/// The master key that wraps every conversation's data key.
pub struct MasterKey {
    id: MasterKeyId,
    secret: SecretBytes,
}

debug_without_secrets!(MasterKey { id });

impl MasterKey {
    /// A new random master key.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::Random`] if the OS random generator fails.
    pub fn generate() -> Result<Self> {
        Ok(Self::from_secret(SecretBytes::random()?))
    }

    fn from_secret(secret: SecretBytes) -> Self {
        Self {
            id: MasterKeyId::of(&secret.0),
            secret,
        }
    }

    /// The key's id (a fingerprint, safe to log and store).
    pub fn id(&self) -> MasterKeyId {
        self.id
    }

    /// Parses a master key given as standard base64 of 32 bytes (surrounding whitespace ignored), e.g. the
    /// value of an environment variable or the content of an operator-supplied file.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::MalformedKey`] if it is not base64 or not exactly 32 bytes. The message never
    /// contains the input.
    pub fn from_base64(text: &str) -> Result<Self> {
        let mut decoded = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| ArchiveCryptoError::MalformedKey("not valid base64"))?;
        let result = if decoded.len() == KEY_LEN {
            let mut secret = SecretBytes([0u8; KEY_LEN]);
            secret.0.copy_from_slice(&decoded);
            Ok(Self::from_secret(secret))
        } else {
            Err(ArchiveCryptoError::MalformedKey("expected exactly 32 bytes"))
        };
        decoded.fill(0);
        std::hint::black_box(&decoded);
        result
    }

    /// The key as standard base64 (the file format). Handle the result as a secret.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.secret.0)
    }

    /// Loads the master key from an operator-supplied file (no creation). The same checks as
    /// [`load_or_create`](Self::load_or_create) apply.
    ///
    /// # Errors
    /// See [`load_or_create`](Self::load_or_create).
    pub fn load(path: &Path) -> Result<Self> {
        let io = |source| ArchiveCryptoError::Io {
            path: path.to_owned(),
            source,
        };
        // Check the type before opening: opening a FIFO would block until a writer appears.
        if !fs::metadata(path).map_err(io)?.is_file() {
            return Err(ArchiveCryptoError::MalformedKey("not a regular file"));
        }
        let file = fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(ArchiveCryptoError::MalformedKey("not a regular file"));
        }
        check_permissions(path, &meta)?;
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(ArchiveCryptoError::MalformedKey("file too large"));
        }
        let mut text = String::new();
        // Bounded read: the file could grow between metadata() and read.
        let read = (&file).take(MAX_KEY_FILE_LEN + 1).read_to_string(&mut text);
        let result = match read {
            Ok(_) if text.len() as u64 > MAX_KEY_FILE_LEN => Err(ArchiveCryptoError::MalformedKey("file too large")),
            Ok(_) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(ArchiveCryptoError::MalformedKey("file is not UTF-8 text"))
            }
            Err(e) => Err(io(e)),
        };
        // Wipe the text copy of the key.
        let mut bytes = text.into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
        result
    }

    /// Loads the master key at `path`, creating it (mode `0600`, atomically: a complete file appears or none)
    /// on first start.
    ///
    /// Creation writes a temporary file in the same directory, syncs it and hard-links it into place, so a
    /// crash never leaves a half-written key and two processes starting at once end up with the same key.
    /// An existing file must be a regular file readable only by its owner (no group/other bits) and contain
    /// exactly one base64 key.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::Io`] on IO failure, [`ArchiveCryptoError::PermissionsTooWide`] if the existing
    /// file is group- or world-accessible, [`ArchiveCryptoError::MalformedKey`] if its content is not a key.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match fs::symlink_metadata(path) {
            Ok(_) => return Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ArchiveCryptoError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let key = Self::generate()?;
        match key.create_file(path) {
            Ok(()) => {
                tracing::info!(key_id = %key.id, path = %path.display(), "created archive master key");
                Ok(key)
            }
            // Someone else created it between our check and our link: use theirs.
            Err(ArchiveCryptoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes this key to a new file at `path` (mode `0600`, atomically), refusing to replace an existing
    /// file. For `relaydesk keys rotate`: write the next key beside the current one, re-wrap every
    /// conversation key in one transaction, then rename the new file over the old one (see [`Keyring`] for
    /// starting up between those steps).
    ///
    /// # Errors
    /// [`ArchiveCryptoError::Io`] (kind `AlreadyExists` if the file exists).
    pub fn save_new(&self, path: &Path) -> Result<()> {
        self.create_file(path)
    }

    fn create_file(&self, path: &Path) -> Result<()> {
        let io = |source| ArchiveCryptoError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(ArchiveCryptoError::Random)?;
        let tmp = dir.join(format!(".{file_name}.{}.tmp", hex::encode(suffix)));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let tmp_io = |source| ArchiveCryptoError::Io {
            path: tmp.clone(),
            source,
        };
        let written = (|| {
            let mut file = options.open(&tmp)?;
            let mut line = self.to_base64();
            line.push('\n');
            let res = file.write_all(line.as_bytes()).and_then(|()| file.sync_all());
            let mut bytes = line.into_bytes();
            bytes.fill(0);
            std::hint::black_box(&bytes);
            res
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(tmp_io(e));
        }
        // hard_link fails with AlreadyExists instead of replacing: creation is atomic and never clobbers.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        linked.map_err(io)?;
        // Make the new directory entry durable; failure to sync a directory is not fatal on every platform.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ArchiveCryptoError::PermissionsTooWide {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _meta: &fs::Metadata) -> Result<()> {
    Ok(())
}

fn bound_aad(label: &[u8], conversation: &str, seq: Option<u64>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(label.len() + 4 + conversation.len() + 8);
    aad.extend_from_slice(label);
    // Lengths of ids are far below 4 GiB; saturate rather than truncate just in case.
    let len = u32::try_from(conversation.len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(conversation.as_bytes());
    if let Some(seq) = seq {
        aad.extend_from_slice(&seq.to_be_bytes());
    }
    aad
}

/// A conversation's data key (plaintext form; exists only in memory).
pub struct DataKey {
    secret: SecretBytes,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A new random data key.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::Random`] if the OS random generator fails.
    pub fn generate() -> Result<Self> {
        Ok(Self {
            secret: SecretBytes::random()?,
        })
    }

    /// The AEAD of this key (for the sealed streams of [`crate::recording`]).
    pub(crate) fn cipher(&self) -> XChaCha20Poly1305 {
        self.secret.cipher()
    }

    /// Encrypts this key under `master`, bound to `conversation`.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::Random`] or [`ArchiveCryptoError::Encrypt`].
    pub fn wrap(&self, master: &MasterKey, conversation: &str) -> Result<WrappedKey> {
        let aad = bound_aad(b"relaydesk/wrap/v1", conversation, None);
        let (nonce, ciphertext) = encrypt_fresh(&master.secret.cipher(), &self.secret.0, &aad)?;
        Ok(WrappedKey {
            master_key_id: master.id,
            nonce,
            ciphertext,
        })
    }
}

/// A data key encrypted under a master key, as stored with the conversation.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    master_key_id: MasterKeyId,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

debug_without_secrets!(WrappedKey { master_key_id });

impl WrappedKey {
    /// The id of the master key this was wrapped under (store it in its own column to find keys to rotate).
    pub fn master_key_id(&self) -> MasterKeyId {
        self.master_key_id
    }

    /// The stored form (see the module docs for the layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.master_key_id.0);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses the stored form.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::MalformedCiphertext`] on a wrong length or version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != WRAPPED_LEN {
            return Err(ArchiveCryptoError::MalformedCiphertext(
                "wrapped key has the wrong length",
            ));
        }
        if bytes[0] != FORMAT_V1 {
            return Err(ArchiveCryptoError::MalformedCiphertext("unknown wrapped key version"));
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&bytes[1..1 + KEY_ID_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[1 + KEY_ID_LEN..1 + KEY_ID_LEN + NONCE_LEN]);
        Ok(Self {
            master_key_id: MasterKeyId(id),
            nonce,
            ciphertext: bytes[1 + KEY_ID_LEN + NONCE_LEN..].to_vec(),
        })
    }

    /// Decrypts the data key with `master`, checking it belongs to `conversation`.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::WrongMasterKey`] if the ids differ, [`ArchiveCryptoError::Decrypt`] if
    /// authentication fails (tampered, or wrapped for another conversation).
    pub fn unwrap_key(&self, master: &MasterKey, conversation: &str) -> Result<DataKey> {
        if self.master_key_id != master.id {
            return Err(ArchiveCryptoError::WrongMasterKey {
                expected: self.master_key_id,
                given: master.id,
            });
        }
        let aad = bound_aad(b"relaydesk/wrap/v1", conversation, None);
        let mut plain = master
            .secret
            .cipher()
            .decrypt(
                &XNonce::from(self.nonce),
                Payload {
                    msg: &self.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| ArchiveCryptoError::Decrypt)?;
        let result = if plain.len() == KEY_LEN {
            let mut secret = SecretBytes([0u8; KEY_LEN]);
            secret.0.copy_from_slice(&plain);
            Ok(DataKey { secret })
        } else {
            Err(ArchiveCryptoError::MalformedCiphertext(
                "wrapped key has the wrong length",
            ))
        };
        plain.fill(0);
        std::hint::black_box(&plain);
        result
    }
}

/// Re-wraps a conversation's data key from `old_master` to `new_master` (`relaydesk keys rotate`). The
/// message rows stay as they are.
///
/// # Errors
/// As [`WrappedKey::unwrap_key`] and [`DataKey::wrap`].
pub fn rewrap(
    wrapped: &WrappedKey,
    conversation: &str,
    old_master: &MasterKey,
    new_master: &MasterKey,
) -> Result<WrappedKey> {
    wrapped
        .unwrap_key(old_master, conversation)?
        .wrap(new_master, conversation)
}

/// The master keys the server can open archives with: the current one (which wraps new conversation keys)
/// and any earlier ones still referenced by wrapped keys (e.g. while a rotation is under way).
#[derive(Debug)]
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl Keyring {
    /// A keyring with only `current`.
    pub fn new(current: MasterKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }

    /// Adds an earlier key, used only to open keys wrapped under it. A key with the current id is ignored.
    pub fn add_previous(&mut self, key: MasterKey) {
        if key.id != self.current.id && !self.previous.iter().any(|k| k.id == key.id) {
            self.previous.push(key);
        }
    }

    /// The key that wraps new conversation keys.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// The key with this id, if held.
    pub fn get(&self, id: MasterKeyId) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    /// Opens `wrapped` with whichever held key it names.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::UnknownMasterKey`] if no held key has its id; otherwise as
    /// [`WrappedKey::unwrap_key`].
    pub fn unwrap_key(&self, wrapped: &WrappedKey, conversation: &str) -> Result<DataKey> {
        let key = self
            .get(wrapped.master_key_id)
            .ok_or(ArchiveCryptoError::UnknownMasterKey(wrapped.master_key_id))?;
        wrapped.unwrap_key(key, conversation)
    }

    /// Re-wraps `wrapped` under the current key if it is under another one; `None` if it already is.
    ///
    /// # Errors
    /// As [`unwrap_key`](Self::unwrap_key) and [`DataKey::wrap`].
    pub fn rewrap_to_current(&self, wrapped: &WrappedKey, conversation: &str) -> Result<Option<WrappedKey>> {
        if wrapped.master_key_id == self.current.id {
            return Ok(None);
        }
        Ok(Some(
            self.unwrap_key(wrapped, conversation)?
                .wrap(&self.current, conversation)?,
        ))
    }
}

/// Seals and opens the message bodies of one conversation.
pub struct ConversationCipher {
    cipher: XChaCha20Poly1305,
    conversation: String,
}

debug_without_secrets!(ConversationCipher { conversation });

impl ConversationCipher {
    /// A cipher for `conversation` (its stable id, in the same string form used when wrapping) with its key.
    pub fn new(key: &DataKey, conversation: impl Into<String>) -> Self {
        Self {
            cipher: key.secret.cipher(),
            conversation: conversation.into(),
        }
    }

    /// Seals the body of message number `seq` (see the module docs for the layout). A fresh random nonce is
    /// drawn for every call, so sealing the same body twice gives different bytes.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::Random`] or [`ArchiveCryptoError::Encrypt`].
    pub fn seal(&self, seq: u64, body: &[u8]) -> Result<Vec<u8>> {
        let aad = bound_aad(b"relaydesk/msg/v1", &self.conversation, Some(seq));
        seal_v1(&self.cipher, body, &aad)
    }

    /// Opens a body sealed by [`seal`](Self::seal) for the same conversation and `seq`.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::MalformedCiphertext`] on a bad layout, [`ArchiveCryptoError::Decrypt`] if the key,
    /// the conversation or the sequence number differ or a byte was changed.
    pub fn open(&self, seq: u64, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN {
            return Err(ArchiveCryptoError::MalformedCiphertext("sealed message too short"));
        }
        if sealed[0] != FORMAT_V1 {
            return Err(ArchiveCryptoError::MalformedCiphertext(
                "unknown sealed message version",
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let aad = bound_aad(b"relaydesk/msg/v1", &self.conversation, Some(seq));
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| ArchiveCryptoError::Decrypt)
    }

    /// Seals a text body (the masked text of a message).
    ///
    /// # Errors
    /// As [`seal`](Self::seal).
    pub fn seal_text(&self, seq: u64, body: &str) -> Result<Vec<u8>> {
        self.seal(seq, body.as_bytes())
    }

    /// Seals another data key (a shared file's) under this conversation's key, bound to the conversation
    /// and `label` (the file id): the only stored copy of a live conversation's file keys.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::Random`] or [`ArchiveCryptoError::Encrypt`].
    pub fn seal_key(&self, key: &DataKey, label: &str) -> Result<Vec<u8>> {
        let aad = bound_aad(b"relaydesk/filekey/v1", &format!("{}/{label}", self.conversation), None);
        seal_v1(&self.cipher, &key.secret.0, &aad)
    }

    /// Opens a key sealed by [`seal_key`](Self::seal_key) with the same `label`.
    ///
    /// # Errors
    /// [`ArchiveCryptoError::MalformedCiphertext`] on a bad layout or length, [`ArchiveCryptoError::Decrypt`]
    /// if anything differs.
    pub fn open_key(&self, sealed: &[u8], label: &str) -> Result<DataKey> {
        if sealed.len() != 1 + NONCE_LEN + KEY_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
            return Err(ArchiveCryptoError::MalformedCiphertext(
                "sealed key of a wrong size or version",
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let aad = bound_aad(b"relaydesk/filekey/v1", &format!("{}/{label}", self.conversation), None);
        let mut plain = self
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| ArchiveCryptoError::Decrypt)?;
        let mut bytes = [0u8; KEY_LEN];
        if plain.len() != KEY_LEN {
            plain.fill(0);
            return Err(ArchiveCryptoError::MalformedCiphertext("sealed key of a wrong size"));
        }
        bytes.copy_from_slice(&plain);
        plain.fill(0);
        std::hint::black_box(&plain);
        Ok(DataKey {
            secret: SecretBytes(bytes),
        })
    }

    /// Opens a text body sealed by [`seal_text`](Self::seal_text).
    ///
    /// # Errors
    /// As [`open`](Self::open), plus [`ArchiveCryptoError::NotUtf8`].
    pub fn open_text(&self, seq: u64, sealed: &[u8]) -> Result<String> {
        String::from_utf8(self.open(seq, sealed)?).map_err(|_| ArchiveCryptoError::NotUtf8)
    }
}

#[cfg(test)]
mod tests;
