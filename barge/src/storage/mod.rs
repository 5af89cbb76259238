//! Where received files go: validated names, a hidden temporary file that becomes visible under its
//! final name only after the last byte, conflict policy, and size, quota and free-space checks.
//! The store owns its invariants here, not its callers: one writer per partial file across
//! processes (an OS lock), partials counted against the quota, one sweep for every token root.
//!
//! Layout of a storage directory:
//! ```text
//! DIR/                      published files, each complete
//! DIR/.barge/               barge's own state; never a published name, never listed
//! DIR/.barge/.upload-XXXX   a file being received (removed if the transfer does not finish)
//! DIR/.barge/partial/       resumable transfers, for DIR and every token root below it
//! ```
//! A token root is a view of the same storage ([`Storage::subfolder`]): it publishes below its
//! folder but shares the state folder, the quota and the sweep.
//! Publishing is a `rename` inside one file system: atomic, so a reader of `DIR` never sees a
//! partial file. Without overwrite it is `renameat2(RENAME_NOREPLACE)` (via `tempfile`), so two
//! uploads of the same name at once cannot both take it. A symlink in `DIR` is never followed:
//! rename replaces or skips the link itself.

mod quota;
mod resume;

pub use quota::{Quota, Reservation, bytes_stored};

pub use resume::{Listing, ProbeResult, Upload, VerifiedBytes, digest_of, wait_for_writers};

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use barge_proto::name::{NameError, validate_file_name};
use bytes::Bytes;
use tempfile::TempPath;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Name of barge's state folder inside the storage directory.
pub const STATE_DIR: &str = ".barge";
const TEMP_PREFIX: &str = ".upload-";
/// How many `name (n).ext` candidates to try before giving up on a name.
const MAX_RENAME_ATTEMPTS: u32 = 10_000;

/// What to do when a file with the received name already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Keep both: store as `name (1).ext`, `name (2).ext`, ...
    #[default]
    Rename,
    /// Replace the existing file (atomically; a symlink is replaced, not followed).
    Overwrite,
    /// Refuse the upload.
    Fail,
}

/// How a storage directory behaves.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Where published files go.
    pub dir: PathBuf,
    /// Policy for a name that is already taken.
    pub on_conflict: OnConflict,
    /// Largest file accepted, checked against the declared size before any byte is written.
    pub max_file_size: Option<u64>,
    /// Flush file data and the directory entry to disk before reporting a file as stored, so a
    /// power loss cannot leave a published name with missing content.
    pub fsync: bool,
    /// How long an interrupted resumable upload is kept for its sender to come back.
    pub partial_ttl: Duration,
    /// Verified bytes between two checkpoints of a resumable transfer: bounds what a crash costs.
    pub checkpoint_bytes: u64,
    /// A cap on the bytes stored, shared with every other storage of the server.
    pub quota: Option<Arc<Quota>>,
    /// Interrupted transfers kept per client (address or token); beyond it the client's oldest
    /// is removed, so one client cannot pile up partials.
    pub max_partials_per_client: usize,
    /// Walk the whole folder for small uploads' temporaries left by a crash (at open, and with
    /// each sweep of expired partials). A server does; a client downloading into a folder
    /// (perhaps a home folder) does not.
    pub sweep_tree: bool,
}

impl StorageConfig {
    /// Defaults for `dir`: rename on conflict, no size cap, fsync on.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            on_conflict: OnConflict::default(),
            max_file_size: None,
            fsync: true,
            partial_ttl: Duration::from_secs(24 * 3600),
            checkpoint_bytes: 64 << 20,
            quota: None,
            max_partials_per_client: 64,
            sweep_tree: true,
        }
    }
}

/// Why a file cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The peer's name is not one safe path component.
    #[error("name rejected: {0}")]
    Name(#[from] NameError),
    /// The declared size is over [`StorageConfig::max_file_size`].
    #[error("{size} bytes is over the limit of {max} bytes per file")]
    TooLarge {
        /// Declared size.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// The file system does not have room for the declared size.
    #[error("{size} bytes do not fit: {available} bytes free")]
    NoSpace {
        /// Declared size.
        size: u64,
        /// Free bytes seen when checking.
        available: u64,
    },
    /// The name is taken and the policy is [`OnConflict::Fail`] (or no free variant was found).
    #[error("{0:?} already exists")]
    Conflict(String),
    /// The bytes written do not match the declared size.
    #[error("{written} bytes written but {expected} declared")]
    SizeMismatch {
        /// Bytes actually written.
        written: u64,
        /// Bytes declared.
        expected: u64,
    },
    /// The storage directory is not usable (e.g. its state folder is a symlink).
    #[error("storage directory unusable: {0}")]
    BadDirectory(String),
    /// Data did not match its digest.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// A request that does not fit the transfer's state (wrong offset, chunk out of order).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The same resumable transfer is in progress elsewhere.
    #[error("{0:?} is being transferred by another connection")]
    Busy(String),
    /// No such file or folder.
    #[error("{0:?} not found")]
    NotFound(String),
    /// A path component exists but is not a real folder (a file, or a symlink).
    #[error("{0:?} is not a folder")]
    NotAFolder(String),
    /// Storing the file would take the server over its quota.
    #[error("{size} bytes would exceed the storage quota ({used} of {limit} bytes used)")]
    QuotaExceeded {
        /// Declared size.
        size: u64,
        /// Bytes stored or reserved now.
        used: u64,
        /// The quota.
        limit: u64,
    },
    /// Any other file-system failure.
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A storage directory, or a token root's view of one. Cheap to clone; clones share the
/// directory and its state.
#[derive(Debug, Clone)]
pub struct Storage {
    inner: Arc<Inner>,
    /// The folder this view publishes into: the storage directory or a root below it.
    dir: PathBuf,
    /// `dir` relative to the storage directory, with a trailing `/` (empty for the top): keys of
    /// partials are made from the full relative path, so every view shares one partial folder.
    prefix: String,
}

#[derive(Debug)]
struct Inner {
    config: StorageConfig,
    /// `dir/.barge`, where temporary files live until published.
    temp_dir: PathBuf,
    /// `dir/.barge/partial`, where resumable uploads keep their data and verified chunk list.
    partial_dir: PathBuf,
    /// Keys of resumable transfers in progress in this process (the file lock covers others).
    busy: Mutex<HashSet<String>>,
    /// Woken when a key leaves `busy`: a probe right after a disconnect waits for the old writer.
    freed: tokio::sync::Notify,
    /// Interrupted transfers: what each holds of the quota, and whose they are.
    partials: Mutex<resume::PartialBook>,
    /// Bytes promised to transfers in progress and not yet written: the free-space check counts
    /// them, since blocks are allocated only as data arrives.
    promised: std::sync::atomic::AtomicU64,
}

/// A file published under its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The final name (differs from the requested one after a conflict rename).
    pub name: String,
    /// Full path of the published file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its BLAKE3 digest, when the transfer computed one.
    pub digest: Option<barge_proto::tree::Cv>,
}

impl Storage {
    /// Opens (creating if needed) the storage directory and its state folder, and removes
    /// temporary files a crashed earlier run left behind.
    pub fn open(config: StorageConfig) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&config.dir)?;
        let temp_dir = config.dir.join(STATE_DIR);
        real_dir(&temp_dir)?;
        let partial_dir = temp_dir.join("partial");
        real_dir(&partial_dir)?;
        let mut stale = 0;
        for entry in std::fs::read_dir(&temp_dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                std::fs::remove_file(entry.path())?;
                stale += 1;
            }
        }
        if stale > 0 {
            info!(
                count = stale,
                "removed unfinished uploads left by an earlier run"
            );
        }
        let dir = config.dir.clone();
        let storage = Self {
            inner: Arc::new(Inner {
                config,
                temp_dir,
                partial_dir,
                busy: Mutex::new(HashSet::new()),
                freed: tokio::sync::Notify::new(),
                partials: Mutex::new(resume::PartialBook::default()),
                promised: std::sync::atomic::AtomicU64::new(0),
            }),
            dir,
            prefix: String::new(),
        };
        storage.expire_partials()?;
        if storage.inner.config.sweep_tree {
            storage.sweep_orphans(Duration::ZERO);
        }
        storage.count_partials()?;
        Ok(storage)
    }

    /// The directory files are published in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A view of the folder `rel` (safe names joined by `/`) below this one, with the same
    /// rules, quota, partial folder and sweep: a token's root.
    pub fn subfolder(&self, rel: &str) -> Result<Storage, StorageError> {
        let mut dir = self.dir.clone();
        let mut prefix = self.prefix.clone();
        for part in rel.split('/') {
            let part = validate_file_name(part)?;
            dir.push(part);
            real_dir(&dir)?;
            prefix.push_str(part);
            prefix.push('/');
        }
        Ok(Storage {
            inner: self.inner.clone(),
            dir,
            prefix,
        })
    }

    /// Holds `size` bytes of the quota (if any) for a file being received.
    fn reserve(&self, size: u64) -> Result<Reservation, StorageError> {
        Reservation::take(self.inner.config.quota.as_ref(), size)
    }

    /// Checks `name` and `size` against the rules and opens a temporary file for the upload.
    /// Nothing is written and no space is reserved if this fails.
    pub async fn begin(&self, name: &str, size: u64) -> Result<PartialFile, StorageError> {
        let name = validate_file_name(name)?.to_owned();
        let config = &self.inner.config;
        if let Some(max) = config.max_file_size
            && size > max
        {
            return Err(StorageError::TooLarge { size, max });
        }
        if config.on_conflict == OnConflict::Fail {
            // Early refusal saves receiving the body; the final rename re-checks without races.
            let target = self.dir.join(&name);
            if std::fs::symlink_metadata(&target).is_ok() {
                return Err(StorageError::Conflict(name));
            }
        }
        let reservation = self.reserve(size)?;
        let temp_dir = self.inner.temp_dir.clone();
        let (file, temp) = blocking(move || create_temp(&temp_dir, size)).await??;
        Ok(PartialFile {
            reservation,
            storage: self.clone(),
            name,
            expected: size,
            written: 0,
            file: Some(file),
            pending: None,
            temp,
        })
    }
}

/// Creates `path` if missing and checks it is a real folder: a planted symlink here would send
/// every upload somewhere else.
fn real_dir(path: &Path) -> Result<(), StorageError> {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    if !std::fs::symlink_metadata(path)?.is_dir() {
        return Err(StorageError::BadDirectory(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    Ok(())
}

/// Creates the temporary file and reserves `size` bytes for it, refusing sizes the file system
/// cannot hold before a byte is written.
fn create_temp(temp_dir: &Path, size: u64) -> Result<(File, TempPath), StorageError> {
    let stat = rustix::fs::statvfs(temp_dir).map_err(io::Error::from)?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    if size > available {
        return Err(StorageError::NoSpace { size, available });
    }
    // 0o666 filtered by the umask, like any newly created file: a published upload should be as
    // readable as one the user copied in by hand (tempfile's own default is 0o600).
    let named = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(temp_dir)?;
    let (file, temp) = named.into_parts();
    if size > 0 {
        // Reserving the blocks makes concurrent uploads unable to overcommit the disk together,
        // and keeps the file contiguous. File systems without fallocate fall back to the check above.
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, size) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOSPC) | Err(rustix::io::Errno::FBIG) => {
                return Err(StorageError::NoSpace { size, available });
            }
            Err(e) => warn!(error = %e, "cannot preallocate; continuing without"),
        }
    }
    Ok((file, temp))
}

/// A file being received. Dropping it without [`PartialFile::commit`] removes the temporary file,
/// so a failed or cancelled transfer publishes nothing.
#[derive(Debug)]
pub struct PartialFile {
    /// Quota held for the file; given back if it is never published.
    reservation: Reservation,
    storage: Storage,
    name: String,
    expected: u64,
    written: u64,
    /// The open temporary file; `None` while a write holds it on a blocking thread.
    file: Option<File>,
    /// The write in flight: it overlaps with receiving the next chunk from the network.
    pending: Option<JoinHandle<(File, io::Result<()>)>>,
    /// Removes the temporary file on drop unless persisted.
    temp: TempPath,
}

impl PartialFile {
    /// The validated name the upload asked for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes handed to [`PartialFile::write`] so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `chunk`. Returns once the previous chunk is on its way to disk, so one write
    /// overlaps with the caller receiving the next chunk.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let new_total = self.written + chunk.len() as u64;
        if new_total > self.expected {
            return Err(StorageError::SizeMismatch {
                written: new_total,
                expected: self.expected,
            });
        }
        let mut file = self.settle().await?;
        self.written = new_total;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let result = file.write_all(&chunk);
            (file, result)
        }));
        Ok(())
    }

    /// Waits for the write in flight and takes the file back.
    async fn settle(&mut self) -> Result<File, StorageError> {
        if let Some(pending) = self.pending.take() {
            let (file, result) = pending.await.map_err(join_error)?;
            self.file = Some(file);
            result?;
        }
        self.file
            .take()
            .ok_or_else(|| io::Error::other("file lost by an earlier failed write").into())
    }

    /// Finishes the file and publishes it under its final name, following the conflict policy.
    pub async fn commit(mut self) -> Result<Stored, StorageError> {
        let file = self.settle().await?;
        if self.written != self.expected {
            return Err(StorageError::SizeMismatch {
                written: self.written,
                expected: self.expected,
            });
        }
        let config = self.storage.inner.config.clone();
        let dir = self.storage.dir.clone();
        let (name, size, temp) = (self.name, self.written, self.temp);
        let stored = blocking(move || {
            if config.fsync {
                file.sync_all()?;
            }
            drop(file);
            publish(&config, &dir, temp, name, size)
        })
        .await??;
        self.reservation.keep();
        Ok(stored)
    }
}

/// Renames a finished (and, if configured, already synced) temporary file to `name` in `dir`,
/// following the conflict policy.
fn publish(
    config: &StorageConfig,
    dir: &Path,
    temp: TempPath,
    name: String,
    size: u64,
) -> Result<Stored, StorageError> {
    let stored = |name, path| Stored {
        name,
        path,
        size,
        digest: None,
    };
    let stored = match config.on_conflict {
        OnConflict::Overwrite => {
            let path = dir.join(&name);
            // The replaced file's bytes leave the quota (a symlink or folder held none).
            let replaced = std::fs::symlink_metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .map_or(0, |m| m.len());
            temp.persist(&path).map_err(|e| e.error)?;
            if let Some(q) = &config.quota {
                q.release(replaced);
            }
            stored(name, path)
        }
        OnConflict::Fail => {
            let path = dir.join(&name);
            match temp.persist_noclobber(&path) {
                Ok(()) => stored(name, path),
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StorageError::Conflict(name));
                }
                Err(e) => return Err(e.error.into()),
            }
        }
        OnConflict::Rename => {
            let mut temp = temp;
            let mut n = 0;
            loop {
                let candidate = if n == 0 {
                    name.clone()
                } else {
                    numbered(&name, n)
                };
                if n > MAX_RENAME_ATTEMPTS || validate_file_name(&candidate).is_err() {
                    return Err(StorageError::Conflict(name));
                }
                let path = dir.join(&candidate);
                match temp.persist_noclobber(&path) {
                    Ok(()) => break stored(candidate, path),
                    Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => temp = e.path,
                    Err(e) => return Err(e.error.into()),
                }
                n += 1;
            }
        }
    };
    if config.fsync {
        // The rename itself is only durable once the directory is.
        File::open(dir)?.sync_all()?;
    }
    Ok(stored)
}

/// `movie.mp4` -> `movie (n).mp4`; names without an extension (or dot-files) get the suffix at
/// the end. The stem is shortened (whole characters) so the result stays within the name rule's
/// 255 bytes; an extension too long to leave room is treated as part of the stem.
pub fn numbered(name: &str, n: u32) -> String {
    const MAX: usize = barge_proto::name::MAX_NAME_BYTES;
    let suffix = format!(" ({n})");
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot + suffix.len() < MAX => name.split_at(dot),
        _ => (name, ""),
    };
    let room = MAX.saturating_sub(suffix.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}{ext}", &stem[..cut])
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(join_error)
}

fn join_error(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("storage task failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_puts_counter_before_extension() {
        assert_eq!(numbered("movie.mp4", 1), "movie (1).mp4");
        assert_eq!(numbered("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(numbered("README", 3), "README (3)");
        assert_eq!(numbered(".hidden", 1), ".hidden (1)");
        assert_eq!(
            numbered("性感荷官在线发牌.,mp4", 1),
            "性感荷官在线发牌 (1).,mp4"
        );
    }

    #[test]
    fn numbered_names_of_255_bytes_still_fit() {
        // Regression (D12): names of 252..255 bytes could not be renamed.
        let long = format!("{}.bin", "n".repeat(251));
        let renamed = numbered(&long, 1);
        assert_eq!(renamed.len(), 255);
        assert!(renamed.ends_with(" (1).bin"));
        assert!(validate_file_name(&renamed).is_ok());
        let wide = "é".repeat(127); // 254 bytes, two bytes a character
        let renamed = numbered(&wide, 12);
        assert!(renamed.len() <= 255 && renamed.ends_with(" (12)"));
        assert!(validate_file_name(&renamed).is_ok());
        let dotted = format!(".{}", "x".repeat(254)); // the "extension" is the whole name
        assert!(validate_file_name(&numbered(&dotted, 3)).is_ok());
    }

    #[tokio::test]
    async fn rename_makes_room_for_the_counter_in_a_long_name() {
        let d = tempfile::tempdir().unwrap();
        let s = storage(d.path(), OnConflict::Rename);
        let long = format!("{}.bin", "n".repeat(251));
        assert_eq!(put(&s, &long, b"1").await.unwrap().name, long);
        let second = put(&s, &long, b"2").await.unwrap().name;
        assert_eq!(second, numbered(&long, 1));
    }

    #[tokio::test]
    async fn overwrite_gives_the_replaced_bytes_back_to_the_quota() {
        // Regression (D8): every overwrite used to keep the old file's bytes counted.
        let d = tempfile::tempdir().unwrap();
        let quota = Quota::new(20, 0);
        let s = Storage::open(StorageConfig {
            on_conflict: OnConflict::Overwrite,
            quota: Some(quota.clone()),
            ..StorageConfig::new(d.path())
        })
        .unwrap();
        for _ in 0..4 {
            put(&s, "six", b"123456").await.unwrap();
        }
        assert_eq!(quota.used(), 6);
    }

    fn storage(dir: &Path, on_conflict: OnConflict) -> Storage {
        Storage::open(StorageConfig {
            on_conflict,
            ..StorageConfig::new(dir)
        })
        .unwrap()
    }

    async fn put(s: &Storage, name: &str, body: &[u8]) -> Result<Stored, StorageError> {
        let mut p = s.begin(name, body.len() as u64).await?;
        for chunk in body.chunks(3) {
            p.write(Bytes::copy_from_slice(chunk)).await?;
        }
        p.commit().await
    }

    fn temp_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(STATE_DIR))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(TEMP_PREFIX)
            })
            .count()
    }

    #[tokio::test]
    async fn commit_publishes_only_complete_files() {
        let d = tempfile::tempdir().unwrap();
        let s = storage(d.path(), OnConflict::Rename);
        let stored = put(&s, "a.bin", b"hello world").await.unwrap();
        assert_eq!(stored.name, "a.bin");
        assert_eq!(
            std::fs::read(d.path().join("a.bin")).unwrap(),
            b"hello world"
        );

        let mut p = s.begin("b.bin", 10).await.unwrap();
        p.write(Bytes::from_static(b"12345")).await.unwrap();
        assert_eq!(temp_files(d.path()), 1);
        assert!(matches!(
            p.commit().await,
            Err(StorageError::SizeMismatch {
                written: 5,
                expected: 10
            })
        ));
        assert!(!d.path().join("b.bin").exists());
        assert_eq!(temp_files(d.path()), 0);
    }

    #[tokio::test]
    async fn dropped_partial_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = storage(d.path(), OnConflict::Rename);
        let mut p = s.begin("x", 4).await.unwrap();
        p.write(Bytes::from_static(b"ab")).await.unwrap();
        drop(p);
        assert_eq!(temp_files(d.path()), 0);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1); // only .barge
    }

    #[tokio::test]
    async fn write_past_declared_size_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = storage(d.path(), OnConflict::Rename);
        let mut p = s.begin("x", 2).await.unwrap();
        assert!(matches!(
            p.write(Bytes::from_static(b"abc")).await,
            Err(StorageError::SizeMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn conflict_policies() {
        let d = tempfile::tempdir().unwrap();
        let rename = storage(d.path(), OnConflict::Rename);
        put(&rename, "m.mp4", b"one").await.unwrap();
        assert_eq!(
            put(&rename, "m.mp4", b"two").await.unwrap().name,
            "m (1).mp4"
        );
        assert_eq!(
            put(&rename, "m.mp4", b"three").await.unwrap().name,
            "m (2).mp4"
        );
        assert_eq!(std::fs::read(d.path().join("m.mp4")).unwrap(), b"one");
        assert_eq!(std::fs::read(d.path().join("m (2).mp4")).unwrap(), b"three");

        let fail = storage(d.path(), OnConflict::Fail);
        assert!(matches!(
            put(&fail, "m.mp4", b"x").await,
            Err(StorageError::Conflict(_))
        ));
        // The race the early check cannot see: the name appears while the body is in flight.
        let mut p = fail.begin("late.txt", 1).await.unwrap();
        std::fs::write(d.path().join("late.txt"), b"first").unwrap();
        p.write(Bytes::from_static(b"2")).await.unwrap();
        assert!(matches!(p.commit().await, Err(StorageError::Conflict(_))));
        assert_eq!(std::fs::read(d.path().join("late.txt")).unwrap(), b"first");

        let over = storage(d.path(), OnConflict::Overwrite);
        put(&over, "m.mp4", b"new").await.unwrap();
        assert_eq!(std::fs::read(d.path().join("m.mp4")).unwrap(), b"new");
    }

    #[tokio::test]
    async fn symlink_in_dir_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("link.txt")).unwrap();

        let rename = storage(d.path(), OnConflict::Rename);
        assert_eq!(
            put(&rename, "link.txt", b"evil").await.unwrap().name,
            "link (1).txt"
        );
        let over = storage(d.path(), OnConflict::Overwrite);
        put(&over, "link.txt", b"evil").await.unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            !std::fs::symlink_metadata(d.path().join("link.txt"))
                .unwrap()
                .is_symlink()
        );
    }

    #[tokio::test]
    async fn state_dir_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join(STATE_DIR)).unwrap();
        assert!(matches!(
            Storage::open(StorageConfig::new(d.path())),
            Err(StorageError::BadDirectory(_))
        ));
    }

    #[tokio::test]
    async fn size_limits_refuse_before_creating_anything() {
        let d = tempfile::tempdir().unwrap();
        let s = Storage::open(StorageConfig {
            max_file_size: Some(10),
            ..StorageConfig::new(d.path())
        })
        .unwrap();
        assert!(matches!(
            s.begin("big", 11).await,
            Err(StorageError::TooLarge { size: 11, max: 10 })
        ));
        let s = storage(d.path(), OnConflict::Rename);
        assert!(matches!(
            s.begin("petabyte", 1 << 50).await,
            Err(StorageError::NoSpace { .. })
        ));
        assert_eq!(temp_files(d.path()), 0);
    }

    #[tokio::test]
    async fn open_removes_stale_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let s = storage(d.path(), OnConflict::Rename);
        let p = s.begin("x", 1).await.unwrap();
        std::mem::forget(p); // as if the process had died
        assert_eq!(temp_files(d.path()), 1);
        storage(d.path(), OnConflict::Rename);
        assert_eq!(temp_files(d.path()), 0);
    }
}
