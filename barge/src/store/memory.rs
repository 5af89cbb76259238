//! An in-memory [`Store`]: the transfer core's test double, and the proof that the trait is not
//! the file system in disguise (no paths, no renames, no positioned writes). It keeps the same
//! contract as the local store (`store/contract.rs` runs the same tests on both): atomic publish
//! under the conflict policy, one writer per partial, verified-only resume state, a quota.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use barge_proto::name::NameError;
use barge_proto::tree::{CHUNK, Cv, chunk_count, chunk_len, hex};
use barge_proto::wire::{Entry, split_path};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    Begin, BoxFuture, Listing, Meta, OnConflict, Partial, Reading, Store, StoreError, Stored,
    Version, local::numbered,
};

/// A store held in memory. Clones and scoped views share one state.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    /// The folder this view publishes into, with a trailing `/` (empty for the top).
    prefix: String,
}

#[derive(Debug)]
struct State {
    files: BTreeMap<String, StoredFile>,
    folders: BTreeSet<String>,
    notes: HashMap<String, Bytes>,
    partials: HashMap<String, Kept>,
    busy: BTreeSet<String>,
    quota: Option<u64>,
    /// Bytes of files plus bytes held by partials (kept or being written).
    used: u64,
    ttl: Duration,
    mtime: i64,
}

#[derive(Debug)]
struct StoredFile {
    data: Bytes,
    digest: Cv,
    mtime: i64,
}

#[derive(Debug)]
struct Kept {
    data: Vec<u8>,
    cvs: Vec<Cv>,
    touched: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(None, Duration::from_secs(24 * 3600))
    }
}

impl MemoryStore {
    /// An empty store with an optional quota (bytes) and an expiry for abandoned partials.
    pub fn new(quota: Option<u64>, ttl: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                files: BTreeMap::new(),
                folders: BTreeSet::new(),
                notes: HashMap::new(),
                partials: HashMap::new(),
                busy: BTreeSet::new(),
                quota,
                used: 0,
                ttl,
                mtime: 1_700_000_000,
            })),
            prefix: String::new(),
        }
    }

    /// The bytes of a published file (tests look at what was stored).
    pub fn contents(&self, path: &str) -> Option<Bytes> {
        let full = self.full(path).ok()?;
        self.lock().files.get(&full).map(|f| f.data.clone())
    }

    /// Bytes counted against the quota now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Partials kept for a resume.
    pub fn partials(&self) -> usize {
        self.lock().partials.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The full key of `path` below this view, checked by the name rule.
    fn full(&self, path: &str) -> Result<String, StoreError> {
        let parts = split_path(path)?;
        if parts.is_empty() {
            return Err(NameError::Empty.into());
        }
        Ok(format!("{}{}", self.prefix, parts.join("/")))
    }

    fn key(full: &str, size: u64, version: Version) -> String {
        match version {
            Version::Any => format!("{full}\0{size}"),
            Version::Digest(d) => format!("{full}\0{size}\0{}", hex(&d)),
            Version::Upload(u) => format!("{full}\0{size}\0u{}", hex(&u)),
        }
    }
}

impl State {
    /// Checks that every folder above `full` is a folder (or missing), and creates the missing
    /// ones if `create`.
    fn parents(&mut self, full: &str, create: bool) -> Result<(), StoreError> {
        let mut at = 0;
        while let Some(slash) = full[at..].find('/') {
            let folder = &full[..at + slash];
            if self.files.contains_key(folder) {
                return Err(StoreError::NotAFolder(folder.to_owned()));
            }
            if !self.folders.contains(folder) {
                if !create {
                    return Err(StoreError::NotFound(folder.to_owned()));
                }
                self.folders.insert(folder.to_owned());
            }
            at += slash + 1;
        }
        Ok(())
    }

    fn charge(&mut self, bytes: u64, size: u64) -> Result<(), StoreError> {
        if let Some(limit) = self.quota
            && self.used + bytes > limit
        {
            return Err(StoreError::QuotaExceeded {
                size,
                used: self.used,
                limit,
            });
        }
        self.used += bytes;
        Ok(())
    }

    /// Publishes `data` at `full` under the policy; returns the final name's last component.
    fn publish(
        &mut self,
        full: &str,
        data: Bytes,
        digest: Cv,
        on_conflict: OnConflict,
        mtime: Option<i64>,
    ) -> Result<String, StoreError> {
        self.parents(full, true)?;
        let (dir, name) = match full.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), full),
        };
        let taken = |s: &State, n: &str| {
            let k = format!("{dir}{n}");
            s.files.contains_key(&k) || s.folders.contains(&k)
        };
        let chosen = match on_conflict {
            OnConflict::Overwrite => {
                if self.folders.contains(full) {
                    return Err(StoreError::Conflict(name.to_owned()));
                }
                if let Some(old) = self.files.remove(full) {
                    self.used -= old.data.len() as u64;
                }
                name.to_owned()
            }
            OnConflict::Fail if taken(self, name) => {
                return Err(StoreError::Conflict(name.to_owned()));
            }
            OnConflict::Fail => name.to_owned(),
            OnConflict::Rename => {
                let mut n = 0;
                loop {
                    let candidate = if n == 0 {
                        name.to_owned()
                    } else {
                        numbered(name, n)
                    };
                    if !taken(self, &candidate) {
                        break candidate;
                    }
                    n += 1;
                }
            }
        };
        self.mtime += 1;
        let mtime = mtime.unwrap_or(self.mtime);
        self.files.insert(
            format!("{dir}{chosen}"),
            StoredFile {
                data,
                digest,
                mtime,
            },
        );
        Ok(chosen)
    }
}

/// A transfer into memory. Dropped without publishing, it keeps its verified chunks (if it is
/// resumable and more than one chunk, as the local store does).
#[derive(Debug)]
pub struct MemoryPartial {
    store: MemoryStore,
    key: String,
    full: String,
    size: u64,
    data: Vec<u8>,
    cvs: Vec<Cv>,
    resumable: bool,
    /// Quota charged for this partial (its size), given back unless published.
    charged: u64,
    finished: bool,
    mtime: Option<i64>,
}

impl MemoryPartial {
    fn verified_len(&self) -> u64 {
        (self.cvs.len() as u64 * CHUNK).min(self.size)
    }
}

impl Drop for MemoryPartial {
    fn drop(&mut self) {
        let mut state = self.store.lock();
        state.busy.remove(&self.key);
        state.used -= self.charged;
        if self.finished || !self.resumable || self.size <= CHUNK {
            return;
        }
        let kept = self.verified_len();
        self.data.truncate(kept as usize);
        // What is kept stays counted, as on disk.
        state.used += kept;
        state.partials.insert(
            self.key.clone(),
            Kept {
                data: std::mem::take(&mut self.data),
                cvs: std::mem::take(&mut self.cvs),
                touched: Instant::now(),
            },
        );
    }
}

impl Partial for MemoryPartial {
    fn verified_bytes(&self) -> u64 {
        self.verified_len()
    }

    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let end = self.data.len() as u64 + bytes.len() as u64;
            if end > self.size {
                return Err(StoreError::SizeMismatch {
                    written: end,
                    expected: self.size,
                });
            }
            self.data.extend_from_slice(&bytes);
            Ok(())
        })
    }

    fn verified(&mut self, cv: Cv) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let index = self.cvs.len() as u64;
            let end = index * CHUNK + chunk_len(self.size, index);
            if index >= chunk_count(self.size) || (self.data.len() as u64) < end {
                return Err(StoreError::BadRequest(format!(
                    "chunk {index} confirmed before its bytes were written"
                )));
            }
            self.cvs.push(cv);
            Ok(())
        })
    }

    fn failure(&self) -> BoxFuture<'_, StoreError> {
        Box::pin(std::future::pending())
    }

    fn publish(
        mut self: Box<Self>,
        digest: Cv,
        on_conflict: OnConflict,
    ) -> BoxFuture<'static, Result<Stored, StoreError>> {
        Box::pin(async move {
            let chunks = chunk_count(self.size);
            if self.cvs.len() as u64 != chunks {
                return Err(StoreError::BadRequest(format!(
                    "end after {} of {chunks} chunks",
                    self.cvs.len()
                )));
            }
            let data = Bytes::from(std::mem::take(&mut self.data));
            let store = self.store.clone();
            let mut state = store.lock();
            let name = state.publish(&self.full, data, digest, on_conflict, self.mtime)?;
            // The charge now belongs to the published file.
            self.charged = 0;
            self.finished = true;
            Ok(Stored {
                name,
                size: self.size,
                digest: Some(digest),
            })
        })
    }

    fn suspend(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { drop(self) })
    }

    fn discard(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        self.finished = true;
        Box::pin(async move { drop(self) })
    }
}

impl Store for MemoryStore {
    fn scoped(&self, rel: &str) -> Result<Arc<dyn Store>, StoreError> {
        let full = self.full(rel)?;
        let mut state = self.lock();
        state.parents(&format!("{full}/"), true)?;
        Ok(Arc::new(MemoryStore {
            state: self.state.clone(),
            prefix: format!("{full}/"),
        }))
    }

    fn kept(
        &self,
        path: &str,
        size: u64,
        version: Version,
    ) -> BoxFuture<'_, Result<Vec<Cv>, StoreError>> {
        let full = self.full(path);
        Box::pin(async move {
            let key = Self::key(&full?, size, version);
            let state = self.lock();
            if state.busy.contains(&key) {
                return Ok(Vec::new());
            }
            Ok(state
                .partials
                .get(&key)
                .map(|k| k.cvs.clone())
                .unwrap_or_default())
        })
    }

    fn begin(&self, begin: Begin) -> BoxFuture<'_, Result<crate::store::Begun, StoreError>> {
        Box::pin(async move {
            let full = self.full(&begin.path)?;
            let mut key = Self::key(&full, begin.size, begin.version);
            let mut state = self.lock();
            state.parents(&full, false).or_else(|e| match e {
                StoreError::NotFound(_) => Ok(()),
                e => Err(e),
            })?;
            if begin.on_conflict == OnConflict::Fail
                && (state.files.contains_key(&full) || state.folders.contains(&full))
            {
                return Err(StoreError::Conflict(begin.path));
            }
            let mut resumable = begin.resumable;
            if state.busy.contains(&key) || !resumable {
                if begin.from > 0 {
                    return Err(StoreError::Busy(begin.path));
                }
                // A partial of its own, which nobody else can find.
                resumable = false;
                let mut n = 0;
                while state.busy.contains(&format!("{key}\0{n}")) {
                    n += 1;
                }
                key = format!("{key}\0{n}");
            }
            let kept = if resumable {
                state.partials.remove(&key)
            } else {
                None
            };
            let (mut data, mut cvs, held) = match kept {
                Some(k) => {
                    let held = k.data.len() as u64;
                    (k.data, k.cvs, held)
                }
                None => (Vec::new(), Vec::new(), 0),
            };
            let kept_bytes = (cvs.len() as u64 * CHUNK).min(begin.size);
            if begin.from != 0 && begin.from != kept_bytes {
                if held > 0 {
                    state.partials.insert(
                        key,
                        Kept {
                            data,
                            cvs,
                            touched: Instant::now(),
                        },
                    );
                }
                return Err(StoreError::BadRequest(format!(
                    "resume from byte {}, but {kept_bytes} are kept",
                    begin.from
                )));
            }
            // The partial's bytes are charged as its size; what it held is part of that.
            state.used -= held;
            if let Err(e) = state.charge(begin.size, begin.size) {
                state.used += held;
                if held > 0 {
                    state.partials.insert(
                        key,
                        Kept {
                            data,
                            cvs,
                            touched: Instant::now(),
                        },
                    );
                }
                return Err(e);
            }
            cvs.truncate((begin.from / CHUNK) as usize);
            data.truncate(begin.from as usize);
            state.busy.insert(key.clone());
            drop(state);
            let partial = MemoryPartial {
                store: self.clone(),
                key,
                full,
                size: begin.size,
                data,
                cvs: cvs.clone(),
                resumable,
                charged: begin.size,
                finished: false,
                mtime: begin.mtime,
            };
            Ok((Box::new(partial) as Box<dyn Partial>, cvs))
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
        let full = self.full(path);
        Box::pin(async move {
            let full = full?;
            let size = data.len() as u64;
            let mut state = self.lock();
            state.charge(size, size)?;
            match state.publish(&full, data, digest, on_conflict, mtime) {
                Ok(name) => Ok(Stored {
                    name,
                    size,
                    digest: Some(digest),
                }),
                Err(e) => {
                    state.used -= size;
                    Err(e)
                }
            }
        })
    }

    fn stat(&self, path: &str) -> BoxFuture<'_, Result<Option<Meta>, StoreError>> {
        let full = self.full(path);
        Box::pin(async move {
            let full = full?;
            Ok(self.lock().files.get(&full).map(|f| Meta {
                size: f.data.len() as u64,
                mtime: f.mtime,
                digest: f.digest,
            }))
        })
    }

    fn exists(&self, path: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let full = self.full(path);
        Box::pin(async move {
            let full = full?;
            let state = self.lock();
            Ok(state.files.contains_key(&full) || state.folders.contains(&full))
        })
    }

    fn mkdir(&self, path: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let full = self.full(path);
        Box::pin(async move {
            let full = full?;
            let mut state = self.lock();
            state.parents(&full, true)?;
            if state.files.contains_key(&full) {
                return Err(StoreError::NotAFolder(path_of(&full)));
            }
            state.folders.insert(full);
            Ok(())
        })
    }

    fn remove(&self, path: &str, recursive: bool) -> BoxFuture<'_, Result<u64, StoreError>> {
        let full = self.full(path);
        Box::pin(async move {
            let full = full?;
            let mut state = self.lock();
            if let Some(f) = state.files.remove(&full) {
                let size = f.data.len() as u64;
                state.used = state.used.saturating_sub(size);
                return Ok(size);
            }
            if !state.folders.contains(&full) {
                return Err(StoreError::NotFound(path_of(&full)));
            }
            let below = format!("{full}/");
            let inside = |k: &String| k.starts_with(&below);
            let has_any = state.files.keys().any(inside) || state.folders.iter().any(&inside);
            if has_any && !recursive {
                return Err(StoreError::NotEmpty(path_of(&full)));
            }
            let doomed: Vec<String> = state.files.keys().filter(|k| inside(k)).cloned().collect();
            let mut freed = 0;
            for k in doomed {
                if let Some(f) = state.files.remove(&k) {
                    freed += f.data.len() as u64;
                }
            }
            state.used = state.used.saturating_sub(freed);
            state
                .folders
                .retain(|k| *k != full && !k.starts_with(&below));
            Ok(freed)
        })
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let (src, dst) = (self.full(from), self.full(to));
        Box::pin(async move {
            let (src, dst) = (src?, dst?);
            let mut state = self.lock();
            let is_file = state.files.contains_key(&src);
            if !is_file && !state.folders.contains(&src) {
                return Err(StoreError::NotFound(path_of(&src)));
            }
            let below = format!("{src}/");
            if dst.starts_with(&below) {
                return Err(StoreError::IntoItself(path_of(&src)));
            }
            if state.files.contains_key(&dst) || state.folders.contains(&dst) {
                return Err(StoreError::Conflict(path_of(&dst)));
            }
            state.parents(&dst, true)?;
            if let Some(f) = state.files.remove(&src) {
                state.files.insert(dst, f);
                return Ok(());
            }
            let moved = |k: &String| format!("{dst}{}", &k[src.len()..]);
            let files: Vec<String> = state
                .files
                .keys()
                .filter(|k| k.starts_with(&below))
                .cloned()
                .collect();
            for k in files {
                if let Some(f) = state.files.remove(&k) {
                    state.files.insert(moved(&k), f);
                }
            }
            let folders: Vec<String> = state
                .folders
                .iter()
                .filter(|k| **k == src || k.starts_with(&below))
                .cloned()
                .collect();
            for k in folders {
                state.folders.remove(&k);
                state.folders.insert(moved(&k));
            }
            Ok(())
        })
    }

    fn put_note(&self, name: &str, value: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = name.to_owned();
        Box::pin(async move {
            super::check_note_name(&name)?;
            self.lock().notes.insert(name, value);
            Ok(())
        })
    }

    fn get_note(&self, name: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let name = name.to_owned();
        Box::pin(async move {
            super::check_note_name(&name)?;
            Ok(self.lock().notes.get(&name).cloned())
        })
    }

    fn delete_note(&self, name: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = name.to_owned();
        Box::pin(async move {
            super::check_note_name(&name)?;
            self.lock().notes.remove(&name);
            Ok(())
        })
    }

    fn list(&self, path: &str, recursive: bool) -> BoxFuture<'_, Result<Listing, StoreError>> {
        let target = if path.is_empty() {
            Ok(self.prefix.trim_end_matches('/').to_owned())
        } else {
            self.full(path)
        };
        Box::pin(async move {
            let target = target?;
            let state = self.lock();
            if let Some(f) = state.files.get(&target) {
                let name = target.rsplit('/').next().unwrap_or_default().to_owned();
                return Ok(vec![file_entry(name, f)]);
            }
            if !target.is_empty() && !state.folders.contains(&target) {
                return Err(StoreError::NotFound(path_of(&target)));
            }
            let base = if target.is_empty() {
                String::new()
            } else {
                format!("{target}/")
            };
            let below = |k: &String| -> Option<String> {
                let rel = k.strip_prefix(&base)?;
                (recursive || !rel.contains('/')).then(|| rel.to_owned())
            };
            let mut out: Vec<Entry> = state
                .folders
                .iter()
                .filter_map(|k| {
                    below(k).map(|rel| Entry {
                        path: rel,
                        dir: true,
                        size: 0,
                        mtime: 0,
                        digest: None,
                    })
                })
                .chain(
                    state
                        .files
                        .iter()
                        .filter_map(|(k, f)| below(k).map(|rel| file_entry(rel, f))),
                )
                .collect();
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
    }

    fn read(&self, path: &str, from: u64) -> BoxFuture<'_, Result<Reading, StoreError>> {
        let full = self.full(path);
        Box::pin(async move {
            let full = full?;
            let (data, meta) = {
                let state = self.lock();
                let f = state
                    .files
                    .get(&full)
                    .ok_or_else(|| StoreError::NotFound(path_of(&full)))?;
                let meta = Meta {
                    size: f.data.len() as u64,
                    mtime: f.mtime,
                    digest: f.digest,
                };
                (f.data.clone(), meta)
            };
            let size = meta.size;
            let first = from.min(size) / CHUNK;
            let count = chunk_count(size) - first;
            let (tx, chunks) = mpsc::channel(count.max(1) as usize);
            for index in first..chunk_count(size) {
                let start = (index * CHUNK) as usize;
                let end = start + chunk_len(size, index) as usize;
                let _ = tx.try_send(Ok(data.slice(start..end)));
            }
            Ok(Reading { meta, chunks })
        })
    }

    fn read_kept(
        &self,
        path: &str,
        size: u64,
        version: Version,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<std::io::Result<Bytes>>, StoreError>> {
        let full = self.full(path);
        let path = path.to_owned();
        Box::pin(async move {
            let key = Self::key(&full?, size, version);
            let data = {
                let state = self.lock();
                if state.busy.contains(&key) {
                    return Err(StoreError::Busy(path));
                }
                match state.partials.get(&key) {
                    Some(k) if k.cvs.len() as u64 == chunk_count(size) => {
                        Bytes::from(k.data.clone())
                    }
                    _ if size == 0 => Bytes::new(),
                    _ => return Err(StoreError::NotFound(format!("{path} (kept whole)"))),
                }
            };
            let (tx, chunks) = mpsc::channel(chunk_count(size).max(1) as usize);
            for index in 0..chunk_count(size) {
                let start = (index * CHUNK) as usize;
                let end = start + chunk_len(size, index) as usize;
                let _ = tx.try_send(Ok(data.slice(start..end)));
            }
            Ok(chunks)
        })
    }

    fn expire(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let ttl = state.ttl;
            let old: Vec<String> = state
                .partials
                .iter()
                .filter(|(_, k)| k.touched.elapsed() > ttl)
                .map(|(key, _)| key.clone())
                .collect();
            for key in &old {
                if let Some(k) = state.partials.remove(key) {
                    state.used -= k.data.len() as u64;
                }
            }
            Ok(old.len())
        })
    }
}

fn file_entry(path: String, f: &StoredFile) -> Entry {
    Entry {
        path,
        dir: false,
        size: f.data.len() as u64,
        mtime: f.mtime,
        digest: Some(hex(&f.digest)),
    }
}

/// A full key as a path to show (the view's prefix is part of it: the store has no root to hide).
fn path_of(full: &str) -> String {
    full.to_owned()
}
