//! The local store's partials (resumable transfers), its read side (listing, reading, digests)
//! and its `Store` implementation.
//!
//! A resumable transfer lives in `.barge/partial/` under a key derived from its relative path, size
//! and version (a download's expected digest):
//! ```text
//! KEY.part   the data received so far (chunks at their offsets)
//! KEY.cvs    the 32-byte chaining values of the verified chunks, in order: the resume point
//! KEY.meta   the path and size, for people looking at the folder
//! ```
//! One writer thread per transfer writes the bytes it is given and records the CVs the core
//! confirms; at every checkpoint it makes the data durable *before* appending the CVs that vouch
//! for it, so after a crash `KEY.cvs` never claims bytes the disk does not have. A transfer that is
//! dropped without publish (disconnect, cancellation, shutdown) checkpoints and keeps its partial
//! for the sender's return; partials untouched for [`super::LocalConfig::partial_ttl`] are removed.
//!
//! Invariants this file owns:
//! - One writer per partial, across processes: the writer holds an exclusive `flock` on its data
//!   file for its whole life, taken before anything is read or truncated, and checks that the file
//!   it locked is still the one at the path (not one just published by another writer). Two
//!   uploads of one name at once do not wait for each other: the second gets a partial of its own
//!   (not resumable) and is published under the conflict policy.
//! - Space follows data: blocks are preallocated a window ahead of what was received, and an
//!   interrupted partial is cut back to its verified bytes, which stay counted against the quota
//!   until the partial is resumed, published or expired.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use barge_proto::name::{NameError, RESERVED_PREFIX};
use barge_proto::tree::{CHUNK, Cv, chunk_count, chunk_len, hex};
use barge_proto::wire::{Entry, split_path};
use bytes::Bytes;
use tempfile::TempPath;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{LocalStore, StoreError, Stored, blocking, link_unnamed, open_unnamed, publish};
use crate::store::{Begin, BoxFuture, Listing, Meta, OnConflict, Partial, Reading, Store, Version};

/// Blocks are preallocated this far ahead of the data received at first (then in windows as large
/// as what is allocated already), not for the whole declared size: an upload abandoned early holds
/// little disk.
const PREALLOC_WINDOW: u64 = 64 << 20;
/// How long a probe waits for a transfer of the same file that is still finishing (typically the
/// client's own previous connection, whose writer is saving its resume point).
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Pieces queued for a writer: enough to overlap network and disk. A chunk arrives in pieces the
/// size of a socket read, so a writer's queue holds at most this many reads' worth of memory.
const QUEUED_PIECES: usize = 3;
/// A durable transfer hands its bytes to the disk in runs of this size as they arrive
/// (`POSIX_FADV_DONTNEED` starts the writeback of dirty pages without waiting for it, and drops
/// the clean ones: a server receiving big files does not read them back soon).
const EARLY_WRITEBACK: u64 = 8 << 20;
/// Chunks a reader reads ahead of the sender.
const READ_AHEAD: usize = 3;
/// Extended attribute caching a file's digest, with the size and mtime it was computed for.
const DIGEST_XATTR: &str = "user.barge.blake3";

/// The writer threads of one store (and its views). Whoever owns the store waits on this before
/// the process exits, so that an interrupted transfer's resume point reaches the disk. One per
/// store, not per process: two servers in one process do not wait for each other.
#[derive(Debug, Clone, Default)]
pub struct Writers(Arc<(Mutex<usize>, Condvar)>);

impl Writers {
    /// Blocks until every writer has finished (saved its resume point or published its file),
    /// or `timeout` passes. Returns whether all finished.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let Ok(n) = self.0.0.lock() else {
            return false;
        };
        self.0
            .1
            .wait_timeout_while(n, timeout, |n| *n > 0)
            .map(|(n, _)| *n == 0)
            .unwrap_or(false)
    }

    /// Writers running now.
    pub fn running(&self) -> usize {
        self.0.0.lock().map_or(0, |n| *n)
    }
}

/// Counts one live writer thread for as long as it exists.
struct LiveWriter(Writers);

impl LiveWriter {
    fn start(writers: &Writers) -> Self {
        if let Ok(mut n) = writers.0.0.lock() {
            *n += 1;
        }
        LiveWriter(writers.clone())
    }
}

impl Drop for LiveWriter {
    fn drop(&mut self) {
        if let Ok(mut n) = self.0.0.0.lock() {
            *n -= 1;
        }
        self.0.0.1.notify_all();
    }
}

/// Interrupted transfers this process knows of: the quota each holds and whose they are.
#[derive(Debug, Default)]
pub(super) struct PartialBook {
    charges: HashMap<String, (super::Reservation, String)>,
    /// Per client, its partials' keys, oldest first.
    owners: HashMap<String, VecDeque<String>>,
}

impl PartialBook {
    /// Takes `key`'s charge out of the book (it is being resumed, published or removed).
    fn take(&mut self, key: &str) -> Option<(super::Reservation, String)> {
        let (r, owner) = self.charges.remove(key)?;
        if let Some(keys) = self.owners.get_mut(&owner) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.owners.remove(&owner);
            }
        }
        Some((r, owner))
    }

    /// Records an interrupted transfer; returns the keys of `owner`'s oldest partials beyond `cap`.
    fn record(
        &mut self,
        key: String,
        owner: String,
        charge: super::Reservation,
        cap: usize,
    ) -> Vec<String> {
        self.take(&key);
        self.charges.insert(key.clone(), (charge, owner.clone()));
        if owner.is_empty() {
            return Vec::new();
        }
        let keys = self.owners.entry(owner).or_default();
        keys.push_back(key);
        let excess = keys.len().saturating_sub(cap.max(1));
        keys.iter().take(excess).cloned().collect()
    }
}

/// Bytes promised to one transfer and not written yet (see `Inner::promised`).
struct SpaceHold {
    storage: LocalStore,
    left: u64,
}

impl SpaceHold {
    /// Promises `need` bytes if the file system has them beside every other promise.
    fn take(storage: &LocalStore, need: u64, size: u64) -> Result<Self, StoreError> {
        let stat = rustix::fs::statvfs(&storage.inner.partial_dir).map_err(io::Error::from)?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let before = storage.inner.promised.fetch_add(need, Ordering::AcqRel);
        let hold = Self {
            storage: storage.clone(),
            left: need,
        };
        if before.saturating_add(need) > free {
            return Err(StoreError::NoSpace {
                size,
                available: free.saturating_sub(before),
            });
        }
        Ok(hold)
    }

    /// `n` of the promised bytes were written (and so left the file system's free count).
    fn spent(&mut self, n: u64) {
        let n = n.min(self.left);
        self.left -= n;
        self.storage.inner.promised.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Drop for SpaceHold {
    fn drop(&mut self) {
        self.storage
            .inner
            .promised
            .fetch_sub(self.left, Ordering::AcqRel);
    }
}

/// Takes the exclusive lock of a partial's data file without waiting; `false` if another writer
/// (in any process) holds it, or the file at `path` is no longer the one opened (it was just
/// published, or removed, by the writer that held it).
fn lock_partial(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let ours = file.metadata()?;
    Ok(match std::fs::symlink_metadata(path) {
        Ok(now) => now.dev() == ours.dev() && now.ino() == ours.ino(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    })
}

/// The on-disk files of one partial transfer.
struct PartialPaths {
    part: PathBuf,
    cvs: PathBuf,
    meta: PathBuf,
}

impl LocalStore {
    /// The partial's key: from the path below the storage directory (whichever root's view it
    /// came through), the size and the version.
    fn partial_key(&self, path: &str, size: u64, version: Version) -> String {
        let tag = match version {
            Version::Any => String::new(),
            Version::Digest(d) => hex(&d),
            Version::Upload(u) => format!("u{}", hex(&u)),
        };
        let mut h = blake3::Hasher::new();
        h.update(self.prefix.as_bytes());
        h.update(path.as_bytes());
        h.update(&[0]);
        h.update(&size.to_le_bytes());
        h.update(tag.as_bytes());
        hex(h.finalize().as_bytes())[..32].to_owned()
    }

    fn partial_paths(&self, key: &str) -> PartialPaths {
        let d = &self.inner.partial_dir;
        PartialPaths {
            part: d.join(format!("{key}.part")),
            cvs: d.join(format!("{key}.cvs")),
            meta: d.join(format!("{key}.meta")),
        }
    }

    /// Walks `path`'s folders under the storage directory without following symlinks, creating
    /// missing ones if `create`. Returns the parent folder and the final component.
    pub(super) fn resolve(
        &self,
        path: &str,
        create: bool,
    ) -> Result<(PathBuf, String), StoreError> {
        let parts = split_path(path)?;
        let Some((name, folders)) = parts.split_last() else {
            return Err(NameError::Empty.into());
        };
        let mut dir = self.dir.clone();
        for (i, folder) in folders.iter().enumerate() {
            dir.push(folder);
            let shown = || folders[..=i].join("/");
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(StoreError::NotAFolder(shown())),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    match std::fs::create_dir(&dir) {
                        Ok(()) => {}
                        // Another connection made it meanwhile; check it is a real folder.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            if !std::fs::symlink_metadata(&dir)?.is_dir() {
                                return Err(StoreError::NotAFolder(shown()));
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(shown()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((dir, (*name).to_owned()))
    }

    /// The verified CVs an interrupted transfer of `path` left (see [`Store::kept`]).
    async fn kept_cvs(
        &self,
        path: &str,
        size: u64,
        version: Version,
    ) -> Result<Vec<Cv>, StoreError> {
        split_path(path)?;
        let key = self.partial_key(path, size, version);
        let deadline = tokio::time::Instant::now() + PROBE_WAIT;
        loop {
            let freed = self.inner.freed.notified();
            if !self.is_busy(&key) {
                break;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Ok(Vec::new());
            }
        }
        let paths = self.partial_paths(&key);
        Ok(blocking(move || load_cvs(&paths, size)).await??)
    }

    /// Stores a small file received whole into memory and verified, in one blocking step: writes
    /// it next to its final name and publishes it. For small files this replaces a writer thread
    /// and several hand-offs.
    async fn put_whole(
        &self,
        path: &str,
        data: Bytes,
        digest: Cv,
        on_conflict: OnConflict,
        mtime: Option<i64>,
    ) -> Result<Stored, StoreError> {
        let size = data.len() as u64;
        if size > CHUNK {
            return Err(StoreError::BadRequest(
                "a file received whole is at most one chunk".into(),
            ));
        }
        // No partial, so no key to hold: two small files of one name at once are simply stored
        // under the conflict policy.
        let reservation = self.reserve(size)?;
        let this = self.clone();
        let path = path.to_owned();
        let stored = blocking(move || {
            let (dir, name) = this.resolve(&path, true)?;
            let config = &this.inner.config;
            if on_conflict == OnConflict::Fail && std::fs::symlink_metadata(dir.join(&name)).is_ok()
            {
                return Err(StoreError::Conflict(path));
            }
            // Unnamed until whole: nothing to lock, nothing a crash leaves behind.
            if on_conflict != OnConflict::Overwrite
                && let Some(mut file) = open_unnamed(&dir)?
            {
                file.write_all(&data)?;
                set_mtime(&file, mtime)?;
                if config.fsync {
                    file.sync_all()?;
                }
                cache_digest(&file, &digest);
                if let Some(mut stored) =
                    link_unnamed(config, on_conflict, &dir, &file, &name, size)?
                {
                    stored.digest = Some(digest);
                    return Ok(stored);
                }
            }
            let named = tempfile::Builder::new()
                .prefix(RESERVED_PREFIX)
                .suffix(".part")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .tempfile_in(&dir)?;
            let (mut file, temp) = named.into_parts();
            // Locked like every partial, so a sweep by another process leaves it alone.
            lock_partial(&file, &temp)?;
            file.write_all(&data)?;
            set_mtime(&file, mtime)?;
            if config.fsync {
                file.sync_all()?;
            }
            cache_digest(&file, &digest);
            drop(file);
            let mut stored = publish(config, on_conflict, &dir, temp, name, size)?;
            stored.digest = Some(digest);
            Ok(stored)
        })
        .await??;
        reservation.keep();
        Ok(stored)
    }

    fn is_busy(&self, key: &str) -> bool {
        self.inner.busy.lock().map_or(true, |b| b.contains(key))
    }

    /// Starts (or resumes, when `from > 0`) a transfer (see [`Store::begin`]). `from` must be 0
    /// or exactly what [`Store::kept`] reported. A fresh start (`from == 0`) while another writer
    /// holds the same partial gets a partial of its own instead of `Busy`.
    async fn begin_partial(&self, begin: Begin) -> Result<(LocalPartial, Vec<Cv>), StoreError> {
        let key = self.partial_key(&begin.path, begin.size, begin.version);
        if !begin.resumable {
            let own = format!("{key}-{}", unique_suffix());
            return self.begin_keyed(&begin, own, false).await;
        }
        match self.begin_keyed(&begin, key.clone(), true).await {
            Err(StoreError::Busy(_)) if begin.from == 0 => {
                let own = format!("{key}-{}", unique_suffix());
                self.begin_keyed(&begin, own, false).await
            }
            other => other,
        }
    }

    async fn begin_keyed(
        &self,
        begin: &Begin,
        key: String,
        resumable: bool,
    ) -> Result<(LocalPartial, Vec<Cv>), StoreError> {
        let (path, size, from, owner) = (&begin.path[..], begin.size, begin.from, &begin.owner);
        let on_conflict = begin.on_conflict;
        let lock = KeyLock::take(self, &key).ok_or_else(|| StoreError::Busy(path.to_owned()))?;
        // What the partial already holds of the quota is this upload's, then grown to the size.
        let taken = self
            .inner
            .partials
            .lock()
            .ok()
            .and_then(|mut b| b.take(&key));
        let (mut reservation, old_owner) = taken.unwrap_or_else(|| {
            let none = super::Reservation::force(self.inner.config.quota.as_ref(), 0);
            (none, String::new())
        });
        if let Err(e) = reservation.grow_to(size) {
            if reservation.bytes() > 0
                && let Ok(mut book) = self.inner.partials.lock()
            {
                book.record(key, old_owner, reservation, usize::MAX);
            }
            return Err(e);
        }
        let space = SpaceHold::take(self, size - from.min(size), size)?;
        let this = self.clone();
        let path_owned = path.to_owned();
        let key_owned = key.clone();
        let (dir, name, file, cvs_file, kept, paths, allocated) = blocking(move || {
            let (dir, name) = this.resolve(&path_owned, true)?;
            if on_conflict == OnConflict::Fail && std::fs::symlink_metadata(dir.join(&name)).is_ok()
            {
                return Err(StoreError::Conflict(path_owned));
            }
            let mut paths = this.partial_paths(&key_owned);
            if size <= CHUNK {
                // A one-chunk file has nothing worth resuming: it is received next to its final
                // name, as rsync does, so new inodes spread over the folders' block groups instead
                // of piling into one (ext4 crawls when thousands of files are created in one
                // folder among recently deleted inodes).
                paths.part = dir.join(format!("{RESERVED_PREFIX}{key_owned}.part"));
            }
            // Lock first: nothing of the partial is read or cut before it is ours alone.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&paths.part)?;
            if !lock_partial(&file, &paths.part)? {
                return Err(StoreError::Busy(path_owned));
            }
            let mut kept = load_cvs(&paths, size)?;
            let kept_bytes = (kept.len() as u64 * CHUNK).min(size);
            if from != 0 && from != kept_bytes {
                return Err(StoreError::BadRequest(format!(
                    "resume from byte {from}, but {kept_bytes} are kept"
                )));
            }
            kept.truncate((from / CHUNK) as usize);
            file.set_len(from)?;
            let window = (size - from).min(PREALLOC_WINDOW);
            if window > 0
                && let Err(e) = rustix::fs::fallocate(
                    &file,
                    rustix::fs::FallocateFlags::KEEP_SIZE,
                    from,
                    window,
                )
            {
                if e == rustix::io::Errno::NOSPC {
                    return Err(StoreError::NoSpace { size, available: 0 });
                }
                debug!(error = %e, "cannot preallocate");
            }
            // The resume files exist only once a checkpoint is due: most small files finish
            // first, and creating and deleting two files per upload makes ext4's inode allocator
            // crawl (measured: 10,000 small files went from 2.5 s to 17 s on a reused folder).
            let cvs_file = if kept.is_empty() {
                match std::fs::remove_file(&paths.cvs) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                None
            } else {
                let f = OpenOptions::new().write(true).open(&paths.cvs)?;
                f.set_len(kept.len() as u64 * 32)?;
                Some(f)
            };
            Ok((dir, name, file, cvs_file, kept, paths, from + window))
        })
        .await??;
        let (tx, rx) = mpsc::channel(QUEUED_PIECES);
        let (done_tx, done) = oneshot::channel();
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            failed: tokio::sync::Notify::new(),
            verified: AtomicU64::new(from),
        });
        let writer = Writer {
            storage: self.clone(),
            lock,
            key,
            owner: owner.to_owned(),
            resumable,
            reservation: Some(reservation),
            space,
            written_to: from,
            flushing_from: from,
            allocated,
            paths,
            dir,
            name,
            size,
            file,
            cvs_file,
            durable: kept.len(),
            verified: kept.clone(),
            since_checkpoint: 0,
            mtime: begin.mtime,
            shared: shared.clone(),
        };
        let live = LiveWriter::start(&self.inner.config.writers);
        std::thread::Builder::new()
            .name("barge-writer".into())
            .spawn(move || {
                writer.run(rx);
                let _ = done_tx.send(());
                drop(live);
            })?;
        let partial = LocalPartial {
            tx: Some(tx),
            done,
            shared,
            written: from,
            size,
        };
        Ok((partial, kept))
    }

    /// The file at `path`, if it is a regular file (not a folder, not a symlink), opened.
    fn open_file(&self, path: &str) -> Result<Option<File>, StoreError> {
        let (dir, name) = match self.resolve(path, false) {
            Ok(found) => found,
            Err(StoreError::NotFound(_) | StoreError::NotAFolder(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let full = dir.join(name);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_file() => Ok(Some(File::open(&full)?)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether anything has the name `path` (a file, a folder, a link).
    fn name_taken(&self, path: &str) -> Result<bool, StoreError> {
        let (dir, name) = match self.resolve(path, false) {
            Ok(found) => found,
            Err(StoreError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(std::fs::symlink_metadata(dir.join(name)).is_ok())
    }

    /// Creates a folder (and missing parents) under the storage directory.
    async fn make_dir(&self, path: &str) -> Result<(), StoreError> {
        let this = self.clone();
        let path = path.to_owned();
        blocking(move || {
            let (dir, name) = this.resolve(&path, true)?;
            let full = dir.join(&name);
            match std::fs::create_dir(&full) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if std::fs::symlink_metadata(&full)?.is_dir() {
                        Ok(())
                    } else {
                        Err(StoreError::NotAFolder(path))
                    }
                }
                Err(e) => Err(e.into()),
            }
        })
        .await?
    }

    /// Lists a folder (or one file), optionally everything below it, never following symlinks.
    /// Paths are relative to the listed folder; digests come from the cache or are computed.
    async fn list_tree(&self, path: &str, recursive: bool) -> Result<Listing, StoreError> {
        let this = self.clone();
        let path = path.to_owned();
        blocking(move || {
            let target = if path.is_empty() {
                this.dir.clone()
            } else {
                let (dir, name) = this.resolve(&path, false)?;
                dir.join(name)
            };
            let meta = match std::fs::symlink_metadata(&target) {
                Ok(m) if m.is_symlink() => return Err(StoreError::NotFound(path)),
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(path));
                }
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            if meta.is_file() {
                let name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push(entry(&target, name, &meta)?);
                return Ok(out);
            }
            let mut stack = vec![(target, String::new())];
            while let Some((dir, prefix)) = stack.pop() {
                for item in std::fs::read_dir(&dir)? {
                    let item = item?;
                    let Ok(name) = item.file_name().into_string() else {
                        continue; // not UTF-8: cannot be named on the wire
                    };
                    // barge's own state, at any depth (older versions kept one in each token root).
                    if name == super::STATE_DIR || name.starts_with(RESERVED_PREFIX) {
                        continue;
                    }
                    let meta = item.path().symlink_metadata()?;
                    if meta.is_symlink() || !(meta.is_dir() || meta.is_file()) {
                        continue;
                    }
                    let rel = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}/{name}")
                    };
                    out.push(entry(&item.path(), rel.clone(), &meta)?);
                    if meta.is_dir() && recursive {
                        stack.push((item.path(), rel));
                    }
                }
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
        .await?
    }

    /// Opens a stored file for reading from the chunk holding `from`: its facts, and a blocking
    /// thread that reads whole chunks ahead of the consumer.
    async fn read_from(&self, path: &str, from: u64) -> Result<Reading, StoreError> {
        let this = self.clone();
        let path = path.to_owned();
        let (file, meta) = blocking(move || {
            let Some(file) = this.open_file(&path)? else {
                return Err(StoreError::NotFound(path));
            };
            let meta = meta_of(&file)?;
            Ok((file, meta))
        })
        .await??;
        let chunks = read_chunks(file, meta.size, from);
        Ok(Reading { meta, chunks })
    }

    /// See [`Store::read_kept`]: the `.part` file of a partial whose every chunk is verified.
    async fn read_kept_whole(
        &self,
        path: &str,
        size: u64,
        version: Version,
    ) -> Result<mpsc::Receiver<io::Result<Bytes>>, StoreError> {
        split_path(path)?;
        let key = self.partial_key(path, size, version);
        if self.is_busy(&key) {
            return Err(StoreError::Busy(path.to_owned()));
        }
        if size == 0 {
            let (_, empty) = mpsc::channel(1);
            return Ok(empty);
        }
        let paths = self.partial_paths(&key);
        let shown = path.to_owned();
        let file = blocking(move || -> Result<File, StoreError> {
            let cvs = load_cvs(&paths, size)?;
            if cvs.len() as u64 != chunk_count(size) {
                return Err(StoreError::NotFound(format!("{shown} (kept whole)")));
            }
            Ok(File::open(&paths.part)?)
        })
        .await??;
        Ok(read_chunks(file, size, 0))
    }

    /// Removes partial transfers untouched for longer than the configured time.
    pub fn expire_partials(&self) -> io::Result<usize> {
        let ttl = self.inner.config.partial_ttl;
        let now = SystemTime::now();
        let mut newest: std::collections::HashMap<String, SystemTime> = Default::default();
        for item in std::fs::read_dir(&self.inner.partial_dir)? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            let Some((key, _)) = name.split_once('.') else {
                continue;
            };
            let modified = item.metadata()?.modified()?;
            let slot = newest.entry(key.to_owned()).or_insert(modified);
            *slot = (*slot).max(modified);
        }
        let mut removed = 0;
        for (key, modified) in newest {
            let expired = now.duration_since(modified).is_ok_and(|age| age > ttl);
            if expired && self.remove_partial(&key) {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(count = removed, "expired abandoned partial transfers");
        }
        if self.inner.config.sweep_tree {
            self.sweep_orphans(ttl);
        }
        Ok(removed)
    }

    /// Runs [`LocalStore::expire_partials`] every partial TTL (at most every 10 minutes) for as long
    /// as the returned task is not aborted; needs a tokio runtime.
    pub fn sweep_regularly(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let period = this.inner.config.partial_ttl.clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(600),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let s = this.clone();
                let _ = tokio::task::spawn_blocking(move || s.expire_partials()).await;
            }
        })
    }

    /// Removes a partial's files and gives its bytes back to the quota, unless a writer (of this
    /// process or another) holds it. Returns whether it was removed.
    fn remove_partial(&self, key: &str) -> bool {
        if self.is_busy(key) {
            return false;
        }
        let p = self.partial_paths(key);
        if let Ok(file) = File::open(&p.part)
            && !matches!(lock_partial(&file, &p.part), Ok(true))
        {
            return false;
        }
        for f in [&p.part, &p.cvs, &p.meta] {
            let _ = std::fs::remove_file(f);
        }
        if let Ok(mut book) = self.inner.partials.lock() {
            book.take(key);
        }
        true
    }

    /// Removes one-chunk temporary files (`.barge-*.part` next to published files) that no writer
    /// holds and that are older than `min_age`: left by a crash (at start, any age) or abandoned.
    pub(super) fn sweep_orphans(&self, min_age: std::time::Duration) {
        let now = SystemTime::now();
        let mut removed = 0;
        let mut folders = vec![self.inner.config.dir.clone()];
        while let Some(folder) = folders.pop() {
            let Ok(items) = std::fs::read_dir(&folder) else {
                continue;
            };
            for item in items.flatten() {
                let name = item.file_name();
                let Ok(meta) = item.metadata() else { continue };
                if meta.is_dir() {
                    if name != super::STATE_DIR {
                        folders.push(item.path());
                    }
                    continue;
                }
                let name = name.to_string_lossy();
                if !(meta.is_file() && name.starts_with(RESERVED_PREFIX) && name.ends_with(".part"))
                {
                    continue;
                }
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|age| age >= min_age);
                if old
                    && let Ok(file) = File::open(item.path())
                    && matches!(lock_partial(&file, &item.path()), Ok(true))
                    && std::fs::remove_file(item.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            info!(count = removed, "removed unfinished small uploads");
        }
    }

    /// Counts the partials found at start against the quota (they are on disk).
    pub(super) fn count_partials(&self) -> io::Result<()> {
        let quota = self.inner.config.quota.as_ref();
        let Ok(mut book) = self.inner.partials.lock() else {
            return Ok(());
        };
        for item in std::fs::read_dir(&self.inner.partial_dir)? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(key) = name.strip_suffix(".part") {
                let bytes = item.metadata()?.len();
                let charge = super::Reservation::force(quota, bytes);
                book.record(key.to_owned(), String::new(), charge, usize::MAX);
            }
        }
        Ok(())
    }
}

/// A suffix that makes a partial's key its own (see [`Store::begin`]).
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.update(&nanos.to_le_bytes());
    hex(h.finalize().as_bytes())[..12].to_owned()
}

fn mtime_secs(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
}

fn entry(path: &Path, rel: String, meta: &std::fs::Metadata) -> Result<Entry, StoreError> {
    let digest = if !meta.is_file() {
        None
    } else if let Some(cv) = cached_digest_at(path, meta) {
        Some(hex(&cv))
    } else {
        Some(hex(&digest_of(&File::open(path)?)?))
    };
    Ok(Entry {
        path: rel,
        dir: meta.is_dir(),
        size: if meta.is_file() { meta.len() } else { 0 },
        mtime: mtime_secs(meta),
        digest,
    })
}

/// The size-and-mtime stamp a cached digest is valid for.
fn stamp_of(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{} {}.{}", meta.len(), meta.mtime(), meta.mtime_nsec())
}

/// The digest in a cache attribute's text, if the text is for `stamp`.
fn cached(attr: &[u8], stamp: &str) -> Option<Cv> {
    let text = std::str::from_utf8(attr).ok()?;
    let (digest, cached_stamp) = text.split_once(' ')?;
    (cached_stamp == stamp).then(|| barge_proto::tree::parse_hex(digest))?
}

/// A listing's fast path: the cached digest of the file at `path` read by name (no open), valid
/// for `meta` (its lstat). A file replaced in between carries its own stamp, which then does not
/// match, and the caller opens and hashes it instead.
fn cached_digest_at(path: &Path, meta: &std::fs::Metadata) -> Option<Cv> {
    let mut buf = [0u8; 160];
    let n = rustix::fs::lgetxattr(path, DIGEST_XATTR, &mut buf[..]).ok()?;
    cached(&buf[..n], &stamp_of(meta))
}

/// A file's BLAKE3 digest: from the cache attribute when it still matches the file's size and
/// mtime, else computed (and cached when the file system allows).
pub fn digest_of(file: &File) -> io::Result<Cv> {
    let meta = file.metadata()?;
    let stamp = stamp_of(&meta);
    let mut buf = [0u8; 160];
    if let Ok(n) = rustix::fs::fgetxattr(file, DIGEST_XATTR, &mut buf[..])
        && let Some(cv) = cached(&buf[..n], &stamp)
    {
        return Ok(cv);
    }
    let mut hasher = blake3::Hasher::new();
    let mut reader = file;
    let mut chunk = vec![0u8; CHUNK as usize];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
    }
    let cv = *hasher.finalize().as_bytes();
    cache_digest(file, &cv);
    Ok(cv)
}

fn cache_digest(file: &File, cv: &Cv) {
    let Ok(meta) = file.metadata() else { return };
    let value = format!("{} {}", hex(cv), stamp_of(&meta));
    if let Err(e) = rustix::fs::fsetxattr(
        file,
        DIGEST_XATTR,
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    ) {
        debug!(error = %e, "cannot cache the digest in an extended attribute");
    }
}

/// Reads the verified CVs of a partial, dropping any that the data file does not back (it was
/// truncated or tampered with by hand).
/// Reads `file` (`size` bytes) from the chunk holding `from` on a blocking thread, whole chunks
/// ahead of the consumer; a file shorter than `size` ends the stream with an error.
fn read_chunks(file: File, size: u64, from: u64) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, chunks) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let first = from.min(size) / CHUNK;
        let mut file = file;
        if let Err(e) = io::Seek::seek(&mut file, io::SeekFrom::Start(first * CHUNK)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        for index in first..chunk_count(size) {
            // The same read as a sending client's: into spare capacity, a short file an error.
            let item = crate::chunks::read_next(&file, chunk_len(size, index)).map(Bytes::from);
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    chunks
}

fn load_cvs(paths: &PartialPaths, size: u64) -> io::Result<Vec<Cv>> {
    let raw = match std::fs::read(&paths.cvs) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut cvs: Vec<Cv> = raw
        .chunks_exact(32)
        .map(|c| c.try_into().unwrap_or([0; 32]))
        .collect();
    cvs.truncate(chunk_count(size) as usize);
    let part_len = std::fs::metadata(&paths.part).map_or(0, |m| m.len());
    while !cvs.is_empty() && (cvs.len() as u64 * CHUNK).min(size) > part_len {
        cvs.pop();
    }
    Ok(cvs)
}

/// Holds a partial's key in the busy set while its writer runs.
struct KeyLock {
    storage: LocalStore,
    key: String,
}

impl KeyLock {
    fn take(storage: &LocalStore, key: &str) -> Option<Self> {
        let mut busy = storage.inner.busy.lock().ok()?;
        busy.insert(key.to_owned()).then(|| Self {
            storage: storage.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.storage.inner.busy.lock() {
            busy.remove(&self.key);
        }
        self.storage.inner.freed.notify_waiters();
    }
}

/// Why a writer stopped; cloneable so every later call can report it.
#[derive(Debug, Clone)]
enum Failure {
    BadRequest(String),
    Io(String),
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::BadRequest(m) => StoreError::BadRequest(m),
            Failure::Io(m) => StoreError::Io(io::Error::other(m)),
        }
    }
}

#[derive(Debug)]
struct Shared {
    failure: Mutex<Option<Failure>>,
    /// Signalled when `failure` is set, so the connection can answer at once.
    failed: tokio::sync::Notify,
    /// Bytes verified and written so far.
    verified: AtomicU64,
}

impl Shared {
    fn failure(&self) -> Option<Failure> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

enum Cmd {
    /// The next bytes of the file.
    Write(Bytes),
    /// The next chunk (all its bytes sent before this) is verified.
    Verified(Cv),
    Publish {
        digest: Cv,
        on_conflict: OnConflict,
        reply: oneshot::Sender<Result<Stored, StoreError>>,
    },
    Discard,
}

/// A transfer into the local store in progress: commands go to a writer thread that owns the
/// files; dropping this without publishing keeps the verified part for a later resume.
#[derive(Debug)]
pub struct LocalPartial {
    tx: Option<mpsc::Sender<Cmd>>,
    done: oneshot::Receiver<()>,
    shared: Arc<Shared>,
    /// Bytes handed to the writer.
    written: u64,
    size: u64,
}

impl LocalPartial {
    async fn send(&mut self, cmd: Cmd) -> Result<(), StoreError> {
        if let Some(f) = self.shared.failure() {
            return Err(f.into());
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| StoreError::BadRequest("upload closed".into()))?;
        tx.send(cmd).await.map_err(|_| self.stopped())
    }

    fn stopped(&self) -> StoreError {
        self.shared
            .failure()
            .map_or_else(|| io::Error::other("writer stopped").into(), Into::into)
    }
}

impl Partial for LocalPartial {
    fn verified_bytes(&self) -> u64 {
        self.shared.verified.load(Ordering::Acquire)
    }

    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let end = self.written + bytes.len() as u64;
            if end > self.size {
                return Err(StoreError::SizeMismatch {
                    written: end,
                    expected: self.size,
                });
            }
            self.written = end;
            self.send(Cmd::Write(bytes)).await
        })
    }

    fn verified(&mut self, cv: Cv) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.send(Cmd::Verified(cv)))
    }

    fn failure(&self) -> BoxFuture<'_, StoreError> {
        Box::pin(async move {
            loop {
                let notified = self.shared.failed.notified();
                if let Some(f) = self.shared.failure() {
                    return f.into();
                }
                notified.await;
            }
        })
    }

    fn publish(
        mut self: Box<Self>,
        digest: Cv,
        on_conflict: OnConflict,
    ) -> BoxFuture<'static, Result<Stored, StoreError>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.send(Cmd::Publish {
                digest,
                on_conflict,
                reply,
            })
            .await?;
            self.tx = None;
            answer.await.map_err(|_| self.stopped())?
        })
    }

    fn suspend(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.tx = None;
            let _ = (&mut self.done).await;
        })
    }

    fn discard(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(tx) = self.tx.take() {
                let _ = tx.send(Cmd::Discard).await;
            }
            let _ = (&mut self.done).await;
        })
    }
}

/// The thread that owns a partial transfer's files.
struct Writer {
    storage: LocalStore,
    key: String,
    /// Whose transfer this is, for the per-client cap on partials.
    owner: String,
    /// False for a partial of its own beside a busy one: nobody can find it to resume it.
    resumable: bool,
    /// Quota held for the file: kept when published, cut to the bytes kept when interrupted.
    reservation: Option<super::Reservation>,
    /// Free space promised to this transfer and not written yet.
    space: SpaceHold,
    /// Highest offset written so far.
    written_to: u64,
    /// Bytes before this have been handed to the disk (see [`EARLY_WRITEBACK`]).
    flushing_from: u64,
    /// Blocks are preallocated up to here.
    allocated: u64,
    paths: PartialPaths,
    dir: PathBuf,
    name: String,
    size: u64,
    file: File,
    /// The resume point file, created at the first checkpoint.
    cvs_file: Option<File>,
    verified: Vec<Cv>,
    /// How many of `verified` are on disk in the CV file.
    durable: usize,
    since_checkpoint: u64,
    /// The modification time to publish with.
    mtime: Option<i64>,
    shared: Arc<Shared>,
    /// Declared last, so dropped last: the key is free only once the data file (and its OS lock)
    /// is closed, or a writer let in by the key would find the file still locked.
    lock: KeyLock,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                Cmd::Write(data) => {
                    if self.shared.failure().is_some() {
                        continue; // drain what was queued after the failure
                    }
                    let written = self.write(&data);
                    self.record(written);
                }
                Cmd::Verified(cv) => {
                    if self.shared.failure().is_some() {
                        continue;
                    }
                    let confirmed = self.confirm(cv);
                    self.record(confirmed);
                }
                Cmd::Publish {
                    digest,
                    on_conflict,
                    reply,
                } => {
                    let result = self.publish(digest, on_conflict);
                    let _ = reply.send(result);
                    return;
                }
                Cmd::Discard => {
                    self.discard();
                    return;
                }
            }
        }
        // Dropped without publish: keep what is verified, durably, for a resume.
        self.keep();
        debug!(name = ?self.name, kept = self.verified.len(), "transfer suspended");
        let _ = &self.lock;
    }

    fn record(&self, result: Result<(), Failure>) {
        if let Err(f) = result {
            warn!(name = ?self.name, error = ?f, "transfer stopped");
            if let Ok(mut slot) = self.shared.failure.lock() {
                *slot = Some(f);
            }
            self.shared.failed.notify_waiters();
        }
    }

    /// Writes the next bytes (unverified bytes may reach the file: only confirmed chunks are ever
    /// counted, and a resume truncates to them).
    fn write(&mut self, data: &[u8]) -> Result<(), Failure> {
        let at = self.written_to;
        let end = at + data.len() as u64;
        if end > self.allocated && self.allocated < self.size {
            // Windows grow with the file (64 MiB, then as much as is allocated already): few
            // fallocate calls (one every 64 MiB cost a 1 GiB download 6 %), and an abandoned
            // upload still holds at most about twice what it received.
            let window = (self.size - self.allocated).min(self.allocated.max(PREALLOC_WINDOW));
            match rustix::fs::fallocate(
                &self.file,
                rustix::fs::FallocateFlags::KEEP_SIZE,
                self.allocated,
                window,
            ) {
                Err(rustix::io::Errno::NOSPC) => {
                    return Err(Failure::Io(format!(
                        "{}: no space left on the device",
                        self.name
                    )));
                }
                _ => self.allocated += window,
            }
        }
        self.file
            .write_all_at(data, at)
            .map_err(|e| Failure::Io(format!("{}: {e}", self.name)))?;
        self.space.spent(end - at);
        self.written_to = end;
        if self.storage.inner.config.fsync && end - self.flushing_from >= EARLY_WRITEBACK {
            // Start writing these bytes to disk now, without waiting: the checkpoint's and the
            // publish's fsync then find them written, and the disk works while the network does.
            // Without it a durable upload took its transfer time plus the whole flush.
            let len = std::num::NonZeroU64::new(end - self.flushing_from);
            let _ = rustix::fs::fadvise(
                &self.file,
                self.flushing_from,
                len,
                rustix::fs::Advice::DontNeed,
            );
            self.flushing_from = end;
        }
        Ok(())
    }

    /// Records the next chunk as verified; its bytes were written before.
    fn confirm(&mut self, cv: Cv) -> Result<(), Failure> {
        let index = self.verified.len() as u64;
        let end = (index * CHUNK + chunk_len(self.size, index)).min(self.size);
        if index >= chunk_count(self.size) || self.written_to < end {
            return Err(Failure::BadRequest(format!(
                "chunk {index} confirmed before its bytes were written"
            )));
        }
        self.verified.push(cv);
        self.since_checkpoint += chunk_len(self.size, index);
        self.shared.verified.store(end, Ordering::Release);
        if self.since_checkpoint >= self.storage.inner.config.checkpoint_bytes {
            self.checkpoint()
                .map_err(|e| Failure::Io(format!("{} (resume point): {e}", self.name)))?;
        }
        Ok(())
    }

    /// Makes the verified data durable, then records the CVs that vouch for it.
    fn checkpoint(&mut self) -> io::Result<()> {
        if self.durable == self.verified.len() {
            return Ok(());
        }
        let fsync = self.storage.inner.config.fsync;
        if fsync {
            self.file.sync_data()?;
        }
        let mut new = Vec::with_capacity((self.verified.len() - self.durable) * 32);
        for cv in &self.verified[self.durable..] {
            new.extend_from_slice(cv);
        }
        let cvs_file = match &mut self.cvs_file {
            Some(f) => f,
            None => {
                std::fs::write(
                    &self.paths.meta,
                    format!("{{\"path\":{:?},\"size\":{}}}\n", self.name, self.size),
                )?;
                self.cvs_file.insert(
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&self.paths.cvs)?,
                )
            }
        };
        cvs_file.write_all_at(&new, self.durable as u64 * 32)?;
        if fsync {
            cvs_file.sync_data()?;
        }
        self.durable = self.verified.len();
        self.since_checkpoint = 0;
        Ok(())
    }

    fn discard(&self) {
        for f in [&self.paths.part, &self.paths.cvs, &self.paths.meta] {
            let _ = std::fs::remove_file(f);
        }
    }

    /// Saves the resume point after a failure, so the verified chunks are not sent again (a
    /// one-chunk file, or one nobody can resume, is simply removed). The partial is cut to its
    /// verified bytes, which releases the blocks preallocated beyond them, and those bytes stay
    /// counted against the quota.
    fn keep(&mut self) {
        if self.size <= CHUNK || !self.resumable {
            self.discard();
            return;
        }
        if let Err(e) = self.checkpoint() {
            warn!(error = %e, "cannot save resume point");
        }
        let kept = (self.durable as u64 * CHUNK).min(self.size);
        if let Err(e) = self.file.set_len(kept) {
            warn!(error = %e, "cannot release the space of an interrupted transfer");
        }
        let Some(mut charge) = self.reservation.take() else {
            return;
        };
        charge.shrink_to(kept);
        let config = &self.storage.inner.config;
        let evicted = match self.storage.inner.partials.lock() {
            Ok(mut book) => book.record(
                self.key.clone(),
                self.owner.clone(),
                charge,
                config.max_partials_per_client,
            ),
            Err(_) => Vec::new(),
        };
        for key in evicted {
            if key != self.key && self.storage.remove_partial(&key) {
                info!(owner = ?self.owner, "removed the client's oldest interrupted transfer (too many kept)");
            }
        }
    }

    fn publish(mut self, digest: Cv, on_conflict: OnConflict) -> Result<Stored, StoreError> {
        if let Some(f) = self.shared.failure() {
            self.keep();
            return Err(f.into());
        }
        let chunks = chunk_count(self.size);
        if self.verified.len() as u64 != chunks {
            self.keep();
            return Err(StoreError::BadRequest(format!(
                "end after {} of {chunks} chunks",
                self.verified.len()
            )));
        }
        let config = self.storage.inner.config.clone();
        set_mtime(&self.file, self.mtime)?;
        if config.fsync {
            self.file.sync_all()?;
        }
        cache_digest(&self.file, &digest);
        if self.cvs_file.is_some() {
            let _ = std::fs::remove_file(&self.paths.cvs);
            let _ = std::fs::remove_file(&self.paths.meta);
        }
        let temp = TempPath::try_from_path(&self.paths.part)?;
        let mut stored = publish(
            &config,
            on_conflict,
            &self.dir,
            temp,
            self.name.clone(),
            self.size,
        )?;
        stored.digest = Some(digest);
        if let Some(r) = self.reservation.take() {
            r.keep();
        }
        Ok(stored) // the file closes, then the key is freed (field order)
    }
}

/// Gives a file the sender's modification time (before its digest is cached: the cache is
/// stamped with it). Times before the epoch or absurdly far ahead are left alone.
fn set_mtime(file: &File, mtime: Option<i64>) -> io::Result<()> {
    let Some(secs) = mtime.and_then(|s| u64::try_from(s).ok()) else {
        return Ok(());
    };
    match SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs)) {
        Some(t) => file.set_modified(t),
        None => Ok(()),
    }
}

/// The facts of an open file: size, mtime and digest (cached or computed).
fn meta_of(file: &File) -> Result<Meta, StoreError> {
    let meta = file.metadata()?;
    Ok(Meta {
        size: meta.len(),
        mtime: mtime_secs(&meta),
        digest: digest_of(file)?,
    })
}

impl Store for LocalStore {
    fn scoped(&self, rel: &str) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(self.subfolder(rel)?))
    }

    fn kept(
        &self,
        path: &str,
        size: u64,
        version: Version,
    ) -> BoxFuture<'_, Result<Vec<Cv>, StoreError>> {
        let path = path.to_owned();
        Box::pin(async move { self.kept_cvs(&path, size, version).await })
    }

    fn begin(&self, begin: Begin) -> BoxFuture<'_, Result<crate::store::Begun, StoreError>> {
        Box::pin(async move {
            let (partial, kept) = self.begin_partial(begin).await?;
            Ok((Box::new(partial) as Box<dyn Partial>, kept))
        })
    }

    fn put_small(
        &self,
        path: &str,
        data: Bytes,
        digest: Cv,
        on_conflict: OnConflict,
        mtime: Option<i64>,
    ) -> BoxFuture<'_, Result<Stored, StoreError>> {
        let path = path.to_owned();
        Box::pin(async move {
            self.put_whole(&path, data, digest, on_conflict, mtime)
                .await
        })
    }

    fn stat(&self, path: &str) -> BoxFuture<'_, Result<Option<Meta>, StoreError>> {
        let this = self.clone();
        let path = path.to_owned();
        Box::pin(async move {
            blocking(move || match this.open_file(&path)? {
                Some(file) => meta_of(&file).map(Some),
                None => Ok(None),
            })
            .await?
        })
    }

    fn exists(&self, path: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let this = self.clone();
        let path = path.to_owned();
        Box::pin(async move { blocking(move || this.name_taken(&path)).await? })
    }

    fn mkdir(&self, path: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let path = path.to_owned();
        Box::pin(async move { self.make_dir(&path).await })
    }

    fn put_note(&self, name: &str, value: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(async move { blocking(move || this.write_note(&name, &value)).await? })
    }

    fn get_note(&self, name: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(async move { blocking(move || this.read_note(&name)).await? })
    }

    fn delete_note(&self, name: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(async move { blocking(move || this.remove_note(&name)).await? })
    }

    fn remove(&self, path: &str, recursive: bool) -> BoxFuture<'_, Result<u64, StoreError>> {
        let path = path.to_owned();
        Box::pin(async move { self.remove_path(&path, recursive).await })
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let (from, to) = (from.to_owned(), to.to_owned());
        Box::pin(async move { self.rename_path(&from, &to).await })
    }

    fn list(&self, path: &str, recursive: bool) -> BoxFuture<'_, Result<Listing, StoreError>> {
        let path = path.to_owned();
        Box::pin(async move { self.list_tree(&path, recursive).await })
    }

    fn read_kept(
        &self,
        path: &str,
        size: u64,
        version: Version,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<io::Result<Bytes>>, StoreError>> {
        let path = path.to_owned();
        Box::pin(async move { self.read_kept_whole(&path, size, version).await })
    }

    fn read(&self, path: &str, from: u64) -> BoxFuture<'_, Result<Reading, StoreError>> {
        let path = path.to_owned();
        Box::pin(async move { self.read_from(&path, from).await })
    }

    fn expire(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        let this = self.clone();
        Box::pin(async move { Ok(blocking(move || this.expire_partials()).await??) })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::store::{LocalConfig, Quota};
    use crate::transfer::{Core, Mode, Policy, Receiver};
    use barge_proto::tree::chunk_cv;

    type Upload = Receiver;

    /// Starts an upload through the transfer core, as the v1 front end does.
    async fn begin_upload(
        s: &LocalStore,
        path: &str,
        size: u64,
        from: u64,
        owner: &str,
    ) -> Result<Receiver, StoreError> {
        let begin = Begin {
            from,
            owner: owner.to_owned(),
            ..Begin::new(path, size)
        };
        crate::transfer::receive(s, &Policy::default(), begin, Mode::Check).await
    }

    struct Probed {
        offset: u64,
    }

    async fn probe(s: &LocalStore, path: &str, size: u64) -> Result<Probed, StoreError> {
        let (offset, _) = crate::transfer::kept(s, path, size, Version::Any).await?;
        Ok(Probed { offset })
    }

    async fn store_whole(
        s: &LocalStore,
        path: &str,
        data: Bytes,
        cv: Option<Cv>,
        digest: Cv,
    ) -> Result<Stored, StoreError> {
        let core = Core::new(Arc::new(s.clone()), Policy::default());
        let session = core.unauthenticated("127.0.0.1:1".parse().unwrap());
        session
            .store_small(path, data, cv, digest, None, None)
            .await
    }

    const MIB: u64 = 1 << 20;

    /// A listing reads cached digests by name; a file changed behind barge's back (another
    /// size or time) is hashed again, never listed with its old digest.
    #[tokio::test]
    async fn a_listing_never_shows_a_stale_cached_digest() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), |_| {});
        let before = b"first version".to_vec();
        let (cv, whole) = (chunk_cv(0, &before), *blake3::hash(&before).as_bytes());
        store_whole(&s, "f.txt", Bytes::from(before.clone()), Some(cv), whole)
            .await
            .unwrap();
        let listed =
            |s: LocalStore| async move { s.list("f.txt", false).await.unwrap()[0].digest.clone() };
        assert_eq!(
            listed(s.clone()).await,
            Some(blake3::hash(&before).to_hex().to_string())
        );
        let after = b"other version".to_vec(); // same size
        let path = d.path().join("f.txt");
        std::fs::write(&path, &after).unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        file.set_modified(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_007),
        )
        .unwrap();
        drop(file);
        assert_eq!(
            listed(s.clone()).await,
            Some(blake3::hash(&after).to_hex().to_string())
        );
        // And the new digest is cached for the next listing.
        assert_eq!(
            listed(s).await,
            Some(blake3::hash(&after).to_hex().to_string())
        );
    }

    /// Small files go in unnamed and are linked in under their name: nothing else ever appears
    /// in the folder, a name taken is numbered (or refused under `Fail`), and the sender's mtime
    /// and the cached digest stay with the file.
    #[tokio::test]
    async fn a_small_file_appears_under_its_name_only_when_whole() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), |_| {});
        let body = b"small".to_vec();
        let whole = digest(&body);
        let put = |on_conflict| {
            s.put_small(
                "s.txt",
                Bytes::from(body.clone()),
                whole,
                on_conflict,
                Some(1_000_000_000),
            )
        };
        assert_eq!(put(OnConflict::Rename).await.unwrap().name, "s.txt");
        assert_eq!(put(OnConflict::Rename).await.unwrap().name, "s (1).txt");
        assert!(matches!(
            put(OnConflict::Fail).await,
            Err(StoreError::Conflict(_))
        ));
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".barge")
            .collect();
        names.sort();
        assert_eq!(names, ["s (1).txt", "s.txt"]);
        for name in &names {
            let path = d.path().join(name);
            assert_eq!(std::fs::read(&path).unwrap(), body);
            let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
            assert_eq!(
                mtime,
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000)
            );
        }
        let listed = s.list("s.txt", false).await.unwrap();
        assert_eq!(listed[0].digest.as_deref(), Some(hex(&whole).as_str()));
    }

    fn data(seed: u8, len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn open(dir: &Path, f: impl FnOnce(&mut LocalConfig)) -> LocalStore {
        let mut config = LocalConfig::new(dir);
        config.fsync = false;
        f(&mut config);
        LocalStore::open(config).unwrap()
    }

    /// Sends chunks `from..to` of `body` into `upload`.
    async fn send(upload: &mut Upload, body: &[u8], chunks: std::ops::Range<u64>) {
        for i in chunks {
            let start = (i * CHUNK) as usize;
            let end = (start + CHUNK as usize).min(body.len());
            let piece = &body[start..end];
            upload
                .begin_chunk(chunk_cv(i, piece), piece.len() as u64)
                .await
                .unwrap();
            upload.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
    }

    fn digest(body: &[u8]) -> Cv {
        *blake3::hash(body).as_bytes()
    }

    /// Waits (bounded) for the writer of a dropped upload to save its resume point.
    async fn suspended(upload: Upload) {
        tokio::time::timeout(std::time::Duration::from_secs(10), upload.suspend())
            .await
            .unwrap();
    }

    fn partial_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(".barge/partial"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn two_writers_in_two_processes_never_share_a_partial() {
        // Regression (D1): a second writer (another process: its own LocalStore) truncated the
        // first's partial, which was then published with a zeroed range.
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (open(d.path(), |_| {}), open(d.path(), |_| {}));
        let (x, y) = (data(1, 3 * MIB + 5), data(2, 3 * MIB + 5));
        let mut first = begin_upload(&a, "f.bin", x.len() as u64, 0, "")
            .await
            .unwrap();
        send(&mut first, &x, 0..2).await;
        // Resuming what the first is writing is refused while it holds the partial.
        let kept = 2 * MIB;
        assert!(matches!(
            begin_upload(&b, "f.bin", x.len() as u64, kept, "").await,
            Err(StoreError::Busy(_)) | Err(StoreError::BadRequest(_))
        ));
        // A fresh start gets a partial of its own and is published beside the first.
        let mut second = begin_upload(&b, "f.bin", y.len() as u64, 0, "")
            .await
            .unwrap();
        send(&mut second, &y, 0..4).await;
        let stored_b = second.finish(Some(digest(&y))).await.unwrap();
        send(&mut first, &x, 2..4).await;
        let stored_a = first.finish(Some(digest(&x))).await.unwrap();
        assert_eq!(std::fs::read(d.path().join(&stored_a.name)).unwrap(), x);
        assert_eq!(std::fs::read(d.path().join(&stored_b.name)).unwrap(), y);
        assert_ne!(stored_a.name, stored_b.name);
    }

    #[tokio::test]
    async fn a_locked_partial_is_refused_to_another_process_resuming_it() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (open(d.path(), |_| {}), open(d.path(), |_| {}));
        let x = data(3, 4 * MIB);
        let mut up = begin_upload(&a, "r.bin", x.len() as u64, 0, "")
            .await
            .unwrap();
        send(&mut up, &x, 0..2).await;
        suspended(up).await;
        // Another process resumes it and holds it; the first cannot take it meanwhile.
        let offset = probe(&b, "r.bin", x.len() as u64).await.unwrap().offset;
        assert_eq!(offset, 2 * MIB);
        let mut resumed = begin_upload(&b, "r.bin", x.len() as u64, offset, "")
            .await
            .unwrap();
        assert!(matches!(
            begin_upload(&a, "r.bin", x.len() as u64, offset, "").await,
            Err(StoreError::Busy(_))
        ));
        send(&mut resumed, &x, 2..4).await;
        let stored = resumed.finish(Some(digest(&x))).await.unwrap();
        assert_eq!(std::fs::read(d.path().join(&stored.name)).unwrap(), x);
    }

    #[tokio::test]
    async fn same_name_and_size_at_once_are_both_stored() {
        // Regression (D3): the second of two uploads of one name and size was refused `busy`.
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), |_| {});
        let (x, y) = (data(4, 2 * MIB), data(5, 2 * MIB));
        let mut a = begin_upload(&s, "same.bin", x.len() as u64, 0, "")
            .await
            .unwrap();
        let mut b = begin_upload(&s, "same.bin", y.len() as u64, 0, "")
            .await
            .unwrap();
        send(&mut a, &x, 0..2).await;
        send(&mut b, &y, 0..2).await;
        let (sa, sb) = (
            a.finish(Some(digest(&x))).await.unwrap(),
            b.finish(Some(digest(&y))).await.unwrap(),
        );
        assert_eq!(
            (sa.name.as_str(), sb.name.as_str()),
            ("same.bin", "same (1).bin")
        );
        assert_eq!(std::fs::read(d.path().join(&sb.name)).unwrap(), y);
        // Small files received whole take no key either.
        let (p, q) = (data(6, 1000), data(7, 1000));
        let (r1, r2) = tokio::join!(
            store_whole(
                &s,
                "small",
                Bytes::from(p.clone()),
                Some(chunk_cv(0, &p)),
                digest(&p)
            ),
            store_whole(
                &s,
                "small",
                Bytes::from(q.clone()),
                Some(chunk_cv(0, &q)),
                digest(&q)
            ),
        );
        let mut names = vec![r1.unwrap().name, r2.unwrap().name];
        names.sort();
        assert_eq!(names, ["small", "small (1)"]);
        assert!(partial_files(d.path()).is_empty());
    }

    #[tokio::test]
    async fn a_probe_waits_for_the_writer_that_is_finishing() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), |_| {});
        let x = data(8, 3 * MIB);
        let mut up = begin_upload(&s, "w.bin", x.len() as u64, 0, "")
            .await
            .unwrap();
        send(&mut up, &x, 0..2).await;
        // The old connection's writer is still saving while the client probes again.
        let (probe, ()) = tokio::join!(probe(&s, "w.bin", x.len() as u64), async {
            tokio::task::yield_now().await;
            suspended(up).await;
        });
        assert_eq!(probe.unwrap().offset, 2 * MIB);
    }

    #[tokio::test]
    async fn interrupted_uploads_hold_their_received_bytes_against_the_quota_and_no_more() {
        // Regression (D2): an interrupted upload kept its full declared size preallocated and
        // was not counted, so walking away from uploads filled the disk past the quota.
        let d = tempfile::tempdir().unwrap();
        let quota = Quota::new(20 * MIB, 0);
        let s = open(d.path(), |c| c.quota = Some(quota.clone()));
        let x = data(9, 15 * MIB);
        let mut up = begin_upload(&s, "a.bin", x.len() as u64, 0, "")
            .await
            .unwrap();
        assert_eq!(quota.used(), 15 * MIB);
        send(&mut up, &x, 0..1).await;
        suspended(up).await;
        assert_eq!(quota.used(), MIB);
        let part = partial_files(d.path())
            .into_iter()
            .find(|n| n.ends_with(".part"))
            .unwrap();
        let blocks = std::fs::metadata(d.path().join(".barge/partial").join(part))
            .unwrap()
            .blocks()
            * 512;
        assert!(blocks <= 2 * MIB, "{blocks} bytes allocated for 1 MiB kept");
        // Another upload of 15 MiB fits beside it; one of 19 MiB does not.
        let other = begin_upload(&s, "b.bin", 15 * MIB, 0, "").await.unwrap();
        assert_eq!(quota.used(), 16 * MIB);
        drop(other);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while quota.used() != MIB {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(matches!(
            begin_upload(&s, "c.bin", 19 * MIB + 1, 0, "").await,
            Err(StoreError::QuotaExceeded { .. })
        ));
        // A restart counts the partial again; resuming it grows its own charge to the size.
        drop(s);
        let quota = Quota::new(20 * MIB, 0);
        let s = open(d.path(), |c| c.quota = Some(quota.clone()));
        assert_eq!(quota.used(), MIB);
        let mut up = begin_upload(&s, "a.bin", x.len() as u64, MIB, "")
            .await
            .unwrap();
        assert_eq!(quota.used(), 15 * MIB);
        send(&mut up, &x, 1..15).await;
        up.finish(Some(digest(&x))).await.unwrap();
        assert_eq!(quota.used(), 15 * MIB);
    }

    #[tokio::test]
    async fn a_client_keeps_a_bounded_number_of_partials() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), |c| c.max_partials_per_client = 2);
        let x = data(10, 2 * MIB + 1);
        for name in ["1", "2", "3"] {
            let mut up = begin_upload(&s, name, x.len() as u64, 0, "peer")
                .await
                .unwrap();
            send(&mut up, &x, 0..1).await;
            suspended(up).await;
        }
        let size = x.len() as u64;
        assert_eq!(
            probe(&s, "1", size).await.unwrap().offset,
            0,
            "oldest removed"
        );
        assert_eq!(probe(&s, "3", size).await.unwrap().offset, MIB);
        assert_eq!(partial_files(d.path()).len(), 2 * 3); // .part, .cvs, .meta each
        // Another client's partials are its own.
        let mut up = begin_upload(&s, "4", size, 0, "other").await.unwrap();
        send(&mut up, &x, 0..1).await;
        suspended(up).await;
        assert_eq!(probe(&s, "2", size).await.unwrap().offset, MIB);
    }

    #[tokio::test]
    async fn token_roots_share_one_state_folder_and_one_sweep_and_never_list_it() {
        // Regressions (D4, D5): a root had its own `.barge` (listed, and failing `get`) that
        // the sweep never visited.
        let d = tempfile::tempdir().unwrap();
        let top = open(d.path(), |c| c.partial_ttl = std::time::Duration::ZERO);
        let alice = top.subfolder("alice").unwrap();
        let x = data(11, 2 * MIB + 3);
        let mut up = begin_upload(&alice, "f", x.len() as u64, 0, "")
            .await
            .unwrap();
        send(&mut up, &x, 0..1).await;
        suspended(up).await;
        assert!(!d.path().join("alice/.barge").exists());
        assert_eq!(partial_files(d.path()).len(), 3);
        // What an older version left in a root is never listed, at any depth.
        std::fs::create_dir_all(d.path().join("alice/.barge/partial")).unwrap();
        std::fs::write(d.path().join("alice/.barge/partial/k.part"), b"x").unwrap();
        for (view, path) in [(&top, ""), (&top, "alice"), (&alice, "")] {
            let listed = view.list(path, true).await.unwrap();
            assert!(
                listed.iter().all(|e| !e.path.contains(".barge")),
                "{listed:?}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(top.expire_partials().unwrap(), 1);
        assert!(partial_files(d.path()).is_empty());
    }

    #[tokio::test]
    async fn orphaned_small_parts_are_swept_at_start_unless_a_writer_holds_them() {
        // Regression (D11): `.barge-KEY.part` left by a crash next to published files stayed.
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), |_| {});
        let x = data(12, 500_000);
        let mut live = begin_upload(&s, "sub/k.bin", x.len() as u64, 0, "")
            .await
            .unwrap();
        send(&mut live, &x[..0], 0..0).await;
        let orphan = d.path().join("sub/.barge-0123.part");
        std::fs::write(&orphan, b"left by a crash").unwrap();
        let parts = |d: &Path| {
            std::fs::read_dir(d.join("sub"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with(".barge-")
                })
                .count()
        };
        assert_eq!(parts(d.path()), 2);
        let _restarted = open(d.path(), |_| {}); // another process starting on the same folder
        assert!(!orphan.exists());
        assert_eq!(parts(d.path()), 1, "the live writer's file stays");
        send(&mut live, &x, 0..1).await;
        let stored = live.finish(Some(digest(&x))).await.unwrap();
        assert_eq!(
            std::fs::read(d.path().join("sub").join(&stored.name)).unwrap(),
            x
        );
    }
}
