//! The local folder store: published files in a folder, barge's own state in `.barge/` inside it.
//! Today's behaviour, byte for byte: a file is written beside its final name or in the state
//! folder and becomes visible under its name only after the last byte, by `rename` inside one
//! file system (atomic, so a reader never sees a partial file); without overwrite it is
//! `renameat2(RENAME_NOREPLACE)` (via `tempfile`), so two publishes of one name cannot both take
//! it. A one-chunk file is written unnamed (`O_TMPFILE`) where the file system allows and linked
//! in under its name when whole (`linkat` never replaces: the same guarantee, one directory
//! operation instead of two). A symlink in the folder is never followed: rename and link replace
//! or skip the link itself.
//!
//! Layout of a storage directory:
//! ```text
//! DIR/                      published files, each complete
//! DIR/.barge/               barge's own state; never a published name, never listed
//! DIR/.barge/partial/       resumable transfers, for DIR and every token root below it
//! DIR/**/.barge-KEY.part    a one-chunk file being received next to its final name (where it
//!                           cannot be unnamed, or replaces a file)
//! ```
//! A token root is a view of the same store ([`LocalStore::subfolder`]): it publishes below its
//! folder but shares the state folder, the quota and the sweep. The partials, their lock, the
//! quota's book and the read side are in `partial.rs`; the quota counter in `quota.rs`; removing
//! and renaming in `manage.rs`.

mod manage;
mod partial;
mod quota;

pub use quota::{Quota, Reservation, bytes_stored};

pub use partial::{Writers, digest_of};

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use barge_proto::name::validate_file_name;
use tempfile::TempPath;
use tracing::info;

use super::{OnConflict, StoreError, Stored};

/// Name of barge's state folder inside the storage directory.
pub const STATE_DIR: &str = ".barge";
/// Temporary files of barge versions before 0.3 (removed at start if a crash left any).
const OLD_TEMP_PREFIX: &str = ".upload-";
/// How many `name (n).ext` candidates to try before giving up on a name.
const MAX_RENAME_ATTEMPTS: u32 = 10_000;

/// How a storage directory behaves.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where published files go.
    pub dir: PathBuf,
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
    /// The writer threads of this store, so that whoever owns it can wait for them to save
    /// their resume points before the process exits (see [`Writers::wait`]).
    pub writers: Writers,
    /// Open for looking only (a dry run): nothing is created, cleaned or swept, and a folder
    /// that is not there simply holds nothing. Writing through such a store is a mistake. (A
    /// digest computed while looking is still cached in the file's extended attribute, as any
    /// listing does: the file's bytes and times stay as they are.)
    pub look_only: bool,
}

impl LocalConfig {
    /// Defaults for `dir`: fsync on, partials kept a day.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fsync: true,
            partial_ttl: Duration::from_secs(24 * 3600),
            checkpoint_bytes: 64 << 20,
            quota: None,
            max_partials_per_client: 64,
            sweep_tree: true,
            writers: Writers::default(),
            look_only: false,
        }
    }
}

/// A storage directory, or a token root's view of one. Cheap to clone; clones share the
/// directory and its state.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
    /// The folder this view publishes into: the storage directory or a root below it.
    dir: PathBuf,
    /// `dir` relative to the storage directory, with a trailing `/` (empty for the top): keys of
    /// partials are made from the full relative path, so every view shares one partial folder.
    prefix: String,
}

#[derive(Debug)]
struct Inner {
    config: LocalConfig,
    /// `dir/.barge/partial`, where resumable uploads keep their data and verified chunk list.
    partial_dir: PathBuf,
    /// Keys of resumable transfers in progress in this process (the file lock covers others).
    busy: Mutex<HashSet<String>>,
    /// Woken when a key leaves `busy`: a probe right after a disconnect waits for the old writer.
    freed: tokio::sync::Notify,
    /// Interrupted transfers: what each holds of the quota, and whose they are.
    partials: Mutex<partial::PartialBook>,
    /// Bytes promised to transfers in progress and not yet written: the free-space check counts
    /// them, since blocks are allocated only as data arrives.
    promised: std::sync::atomic::AtomicU64,
}

impl LocalStore {
    /// Opens (creating if needed) the storage directory and its state folder, and removes
    /// temporary files a crashed earlier run left behind.
    pub fn open(config: LocalConfig) -> Result<Self, StoreError> {
        let state_dir = config.dir.join(STATE_DIR);
        let partial_dir = state_dir.join("partial");
        let look_only = config.look_only;
        if !look_only {
            std::fs::create_dir_all(&config.dir)?;
            real_dir(&state_dir)?;
            real_dir(&partial_dir)?;
        }
        let dir = config.dir.clone();
        let storage = Self {
            inner: Arc::new(Inner {
                config,
                partial_dir,
                busy: Mutex::new(HashSet::new()),
                freed: tokio::sync::Notify::new(),
                partials: Mutex::new(partial::PartialBook::default()),
                promised: std::sync::atomic::AtomicU64::new(0),
            }),
            dir,
            prefix: String::new(),
        };
        if look_only {
            return Ok(storage);
        }
        let mut stale = 0;
        for entry in std::fs::read_dir(&state_dir)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(OLD_TEMP_PREFIX)
            {
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

    /// The store's configuration.
    pub fn config(&self) -> &LocalConfig {
        &self.inner.config
    }

    /// A view of the folder `rel` (safe names joined by `/`) below this one, with the same
    /// rules, quota, partial folder and sweep: a token's root.
    pub fn subfolder(&self, rel: &str) -> Result<LocalStore, StoreError> {
        let mut dir = self.dir.clone();
        let mut prefix = self.prefix.clone();
        for part in rel.split('/') {
            let part = validate_file_name(part)?;
            dir.push(part);
            real_dir(&dir)?;
            prefix.push_str(part);
            prefix.push('/');
        }
        Ok(LocalStore {
            inner: self.inner.clone(),
            dir,
            prefix,
        })
    }

    /// Holds `size` bytes of the quota (if any) for a file being received.
    fn reserve(&self, size: u64) -> Result<Reservation, StoreError> {
        Reservation::take(self.inner.config.quota.as_ref(), size)
    }
}

/// Creates `path` if missing and checks it is a real folder: a planted symlink here would send
/// every upload somewhere else.
fn real_dir(path: &Path) -> Result<(), StoreError> {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    if !std::fs::symlink_metadata(path)?.is_dir() {
        return Err(StoreError::BadDirectory(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    Ok(())
}

/// Renames a finished (and, if configured, already synced) temporary file to `name` in `dir`,
/// following the conflict policy.
fn publish(
    config: &LocalConfig,
    on_conflict: OnConflict,
    dir: &Path,
    temp: TempPath,
    name: String,
    size: u64,
) -> Result<Stored, StoreError> {
    let stored = |name| Stored {
        name,
        size,
        digest: None,
    };
    let stored = match on_conflict {
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
            stored(name)
        }
        OnConflict::Fail => {
            let path = dir.join(&name);
            match temp.persist_noclobber(&path) {
                Ok(()) => stored(name),
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::Conflict(name));
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
                    return Err(StoreError::Conflict(name));
                }
                let path = dir.join(&candidate);
                match temp.persist_noclobber(&path) {
                    Ok(()) => break stored(candidate),
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

/// Opens an unnamed file in `dir` (`O_TMPFILE`), for [`link_unnamed`]; `None` where the file
/// system has no unnamed files.
fn open_unnamed(dir: &Path) -> Result<Option<File>, StoreError> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags, Mode::from_bits_truncate(0o666)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
            Ok(None)
        }
        Err(e) => Err(io::Error::from(e).into()),
    }
}

/// Gives an unnamed file (see [`open_unnamed`]) its name in `dir`, never replacing anything:
/// one directory insert, where a temporary name costs a create, then a rename's lookups, removal
/// and insert (those were 40 % of a server's time storing 100,000 small files). `Ok(None)` when
/// the link cannot be made here (no `CAP_DAC_READ_SEARCH` and no `/proc`): the caller stores the
/// file the usual way. [`OnConflict::Overwrite`] is not for this path (a link never replaces).
fn link_unnamed(
    config: &LocalConfig,
    on_conflict: OnConflict,
    dir: &Path,
    file: &File,
    name: &str,
    size: u64,
) -> Result<Option<Stored>, StoreError> {
    use rustix::fs::{AtFlags, CWD, linkat};
    use rustix::io::Errno;
    let link = |candidate: &str| {
        let target = dir.join(candidate);
        match linkat(file, "", CWD, &target, AtFlags::EMPTY_PATH) {
            // Linking by descriptor needs CAP_DAC_READ_SEARCH; /proc's link to it does not.
            Err(Errno::NOENT | Errno::PERM) => {
                let own = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
                linkat(CWD, own.as_str(), CWD, &target, AtFlags::SYMLINK_FOLLOW)
            }
            other => other,
        }
    };
    let mut n = 0;
    let stored = loop {
        let candidate = if n == 0 {
            name.to_owned()
        } else {
            numbered(name, n)
        };
        if n > MAX_RENAME_ATTEMPTS || validate_file_name(&candidate).is_err() {
            return Err(StoreError::Conflict(name.to_owned()));
        }
        match link(&candidate) {
            Ok(()) => {
                break Stored {
                    name: candidate,
                    size,
                    digest: None,
                };
            }
            Err(Errno::EXIST) if on_conflict == OnConflict::Rename => n += 1,
            Err(Errno::EXIST) => return Err(StoreError::Conflict(name.to_owned())),
            Err(_) if n == 0 => return Ok(None),
            Err(e) => return Err(io::Error::from(e).into()),
        }
    };
    if config.fsync {
        File::open(dir)?.sync_all()?;
    }
    Ok(Some(stored))
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
    //! The local store through the transfer core, as the lesson's front end uses it (CVs
    //! computed, nothing kept when interrupted). The resumable side is tested in `partial.rs`.
    use super::*;
    use crate::store::Begin;
    use crate::transfer::{Mode, Policy, Receiver};
    use bytes::Bytes;

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
        let s = Lesson {
            store: LocalStore::open(LocalConfig {
                quota: Some(quota.clone()),
                ..LocalConfig::new(d.path())
            })
            .unwrap(),
            policy: Policy {
                on_conflict: OnConflict::Overwrite,
                ..Policy::default()
            },
        };
        for _ in 0..4 {
            put(&s, "six", b"123456").await.unwrap();
        }
        assert_eq!(quota.used(), 6);
    }

    /// A local store and the policy a lesson upload is admitted under.
    struct Lesson {
        store: LocalStore,
        policy: Policy,
    }

    impl Lesson {
        async fn begin(&self, name: &str, size: u64) -> Result<Receiver, StoreError> {
            let begin = Begin {
                resumable: false,
                on_conflict: self.policy.on_conflict,
                ..Begin::new(name, size)
            };
            crate::transfer::receive(&self.store, &self.policy, begin, Mode::Compute).await
        }
    }

    fn storage(dir: &Path, on_conflict: OnConflict) -> Lesson {
        Lesson {
            store: LocalStore::open(LocalConfig::new(dir)).unwrap(),
            policy: Policy {
                on_conflict,
                ..Policy::default()
            },
        }
    }

    async fn put(s: &Lesson, name: &str, body: &[u8]) -> Result<Stored, StoreError> {
        let mut p = s.begin(name, body.len() as u64).await?;
        for chunk in body.chunks(3) {
            p.write(Bytes::copy_from_slice(chunk)).await?;
        }
        p.finish(None).await
    }

    /// Files of uploads in progress: small ones beside their final name, others in the state
    /// folder.
    fn temp_files(dir: &Path) -> usize {
        let beside = std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with(".barge-") && name.ends_with(".part")
            })
            .count();
        beside
            + std::fs::read_dir(dir.join(STATE_DIR).join("partial"))
                .unwrap()
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
            p.finish(None).await,
            Err(StoreError::BadRequest(_))
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
        p.suspend().await; // what a front end does when its connection goes
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
            Err(StoreError::BadRequest(_))
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
            Err(StoreError::Conflict(_))
        ));
        // The race the early check cannot see: the name appears while the body is in flight.
        let mut p = fail.begin("late.txt", 1).await.unwrap();
        std::fs::write(d.path().join("late.txt"), b"first").unwrap();
        p.write(Bytes::from_static(b"2")).await.unwrap();
        assert!(matches!(p.finish(None).await, Err(StoreError::Conflict(_))));
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
            LocalStore::open(LocalConfig::new(d.path())),
            Err(StoreError::BadDirectory(_))
        ));
    }

    #[tokio::test]
    async fn size_limits_refuse_before_creating_anything() {
        let d = tempfile::tempdir().unwrap();
        let s = Lesson {
            store: LocalStore::open(LocalConfig::new(d.path())).unwrap(),
            policy: Policy {
                max_file_size: Some(10),
                ..Policy::default()
            },
        };
        assert!(matches!(
            s.begin("big", 11).await,
            Err(StoreError::TooLarge { size: 11, max: 10 })
        ));
        let s = storage(d.path(), OnConflict::Rename);
        assert!(matches!(
            s.begin("petabyte", 1 << 50).await,
            Err(StoreError::NoSpace { .. })
        ));
        assert_eq!(temp_files(d.path()), 0);
    }

    #[tokio::test]
    async fn open_removes_stale_temp_files() {
        // Temporaries of versions before the transfer core, left by a crash.
        let d = tempfile::tempdir().unwrap();
        storage(d.path(), OnConflict::Rename);
        let stale = d.path().join(STATE_DIR).join(".upload-x1y2");
        std::fs::write(&stale, b"half").unwrap();
        storage(d.path(), OnConflict::Rename);
        assert!(!stale.exists());
    }
}
