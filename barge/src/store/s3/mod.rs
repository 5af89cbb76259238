//! The S3 store: files as objects in a bucket (garage, or any S3 service), through the
//! `object_store` crate, so several stateless barge servers can share one replicated store.
//!
//! Layout under `PREFIX/` (the bucket's top when there is no prefix):
//! ```text
//! PREFIX/photos/a.jpg                 a published file, under its name; metadata:
//!                                     x-amz-meta-blake3 (hex digest), x-amz-meta-mtime (secs)
//! PREFIX/photos/.barge-folder         an empty object: a folder made by mkdir (S3 has none;
//!                                     the usual `photos/` marker is not a name object_store
//!                                     can make, and `.barge-` names are never users' files)
//! PREFIX/.barge/partial/KEY.json      an upload's resume state: upload id, part ETags, the
//!                                     verified chunks' CVs, who holds it and until when
//! PREFIX/.barge/partial/KEY.data      its multipart upload's target (never a published name)
//! PREFIX/.barge/notes/NAME            a front end's small state (a tus upload's description)
//! ```
//! Why uploads go to a staging key and are then copied: S3 sets an object's metadata when the
//! upload is created, but barge knows the digest only at the end; and the final name under the
//! rename policy is known only at publish. The copy is server-side (garage copies block
//! references, not bytes) and sets the metadata, so the published object appears complete,
//! verified and labelled in one step.
//!
//! What the local store does with the kernel, this one does with the bucket: resume state lives
//! in the bucket (another server continues an upload after the first is killed); one writer per
//! partial is a lease in the state object, renewed as parts land and given up on suspend (S3 and
//! garage have no locks, and garage ignores conditional writes, so two servers racing for one
//! partial within a lease are told apart by the lease, not by the store); names are checked by
//! the same rule. The partial's own module is `partial.rs`; the one request `object_store` does
//! not make (a copy that replaces metadata) is `raw.rs`.

mod partial;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use barge_proto::name::NameError;
use barge_proto::tree::{CHUNK, Cv, hex, parse_hex};
use barge_proto::wire::{Entry, split_path};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt,
    PutMode, PutOptions, PutPayload, RetryConfig,
};
use tokio::sync::mpsc;

use super::local::numbered;
use super::{
    Begin, Begun, BoxFuture, Listing, Meta, OnConflict, Quota, Reading, Store, StoreError, Stored,
    Version,
};

pub use partial::{DEFAULT_MEMORY, DEFAULT_PART_SIZE, DEFAULT_PARTS_IN_FLIGHT};

/// Object metadata holding a file's BLAKE3 digest (hex): `x-amz-meta-blake3`.
pub const DIGEST_META: &str = "blake3";
/// Object metadata holding the sender's modification time: `x-amz-meta-mtime`.
pub const MTIME_META: &str = "mtime";
/// The state folder under the prefix; never a published name (the name rule refuses `.barge`).
const STATE: &str = ".barge";
/// The empty object that makes a folder exist (the name rule refuses `.barge-` names).
const FOLDER_MARKER: &str = ".barge-folder";

/// An access key, its secret and an optional session token (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// `AWS_ACCESS_KEY_ID`.
    pub key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_key: String,
    /// `AWS_SESSION_TOKEN`.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// How to reach the bucket and what to do there.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// A folder in the bucket that barge owns (no leading or trailing `/`); empty for the top.
    pub prefix: String,
    /// The service's URL (`http://127.0.0.1:3900`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The region (`garage` for garage).
    pub region: String,
    /// Allow plain HTTP (only when asked: credentials and data then cross the network in clear).
    pub allow_http: bool,
    /// Access key, secret and optional session token.
    pub credential: Credential,
    /// Bytes per uploaded part: a multiple of the 1 MiB chunk, at least 5 MiB (S3's minimum).
    pub part_size: u64,
    /// Parts of one upload the bucket may be taking at once: a cluster takes several faster
    /// than one, but a server killed mid-upload loses up to this many parts (and a chunk).
    pub parts_in_flight: usize,
    /// Bytes all uploads together may hold queued for the bucket: what lets parts overlap.
    pub memory: u64,
    /// Abandoned partials (no write for this long) are aborted by [`Store::expire`].
    pub partial_ttl: Duration,
    /// The quota, counted by this process (see the README: servers sharing a bucket each count
    /// what they store).
    pub quota: Option<Arc<Quota>>,
}

impl S3Config {
    /// A bucket with barge's defaults (16 MiB parts, 2 at once, 24 MiB queued, 24 h TTL).
    pub fn new(bucket: impl Into<String>, credential: Credential) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: "us-east-1".into(),
            allow_http: false,
            credential,
            part_size: DEFAULT_PART_SIZE,
            parts_in_flight: DEFAULT_PARTS_IN_FLIGHT,
            memory: DEFAULT_MEMORY,
            partial_ttl: Duration::from_secs(24 * 3600),
            quota: None,
        }
    }
}

/// A bucket (or a folder of one) as a [`Store`]. Clones and scoped views share one client.
#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
    /// This view's folder below the prefix, with a trailing `/` (empty for the top).
    view: String,
}

#[derive(Debug)]
struct Inner {
    s3: AmazonS3,
    raw: raw::Raw,
    config: S3Config,
    /// The prefix with a trailing `/` (empty for the bucket's top).
    base: String,
    /// Who this process is, in leases.
    owner: String,
    /// Partials this process is writing (a second local writer is refused without a round trip).
    busy: Mutex<BTreeSet<String>>,
    /// [`S3Config::memory`] in KiB permits, shared by every upload.
    queued: Arc<tokio::sync::Semaphore>,
}

/// How many of the objects under a folder a non-recursive listing keeps to ask whether the
/// folder is still there (see `list_tree`).
const ASKED_PER_FOLDER: usize = 8;

fn io_error(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { path, .. } => StoreError::NotFound(path),
        other => StoreError::Io(std::io::Error::other(other.to_string())),
    }
}

impl S3Store {
    /// Connects to the bucket (no request is made until the first use; see [`S3Store::check`]).
    pub fn open(config: S3Config) -> Result<Self, StoreError> {
        let part = config.part_size;
        if part < 5 << 20 || !part.is_multiple_of(CHUNK) {
            return Err(StoreError::BadDirectory(format!(
                "part size {part} must be a multiple of 1 MiB and at least 5 MiB"
            )));
        }
        let options = ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(120));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.credential.key_id)
            .with_secret_access_key(&config.credential.secret_key)
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(false)
            .with_client_options(options.clone())
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            });
        if let Some(token) = &config.credential.token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let s3 = builder
            .build()
            .map_err(|e| StoreError::BadDirectory(format!("S3 bucket {}: {e}", config.bucket)))?;
        let raw = raw::Raw::new(&config, &options)?;
        let queued = Arc::new(tokio::sync::Semaphore::new(
            (config.memory >> 10).clamp(1 << 10, 1 << 24) as usize,
        ));
        let prefix = config.prefix.trim_matches('/');
        let base = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let owner = format!(
            "{}-{}",
            std::process::id(),
            hex(&rand_bytes())[..16].to_owned()
        );
        Ok(Self {
            inner: Arc::new(Inner {
                s3,
                raw,
                config,
                base,
                owner,
                busy: Mutex::new(BTreeSet::new()),
                queued,
            }),
            view: String::new(),
        })
    }

    /// Makes one request, so a wrong endpoint, bucket or key is reported at start.
    pub async fn check(&self) -> Result<(), StoreError> {
        let prefix = Key::from(self.inner.base.trim_end_matches('/'));
        let mut list = self.inner.s3.list(Some(&prefix));
        match list.next().await {
            Some(Err(e)) => Err(StoreError::BadDirectory(format!(
                "S3 bucket {}: {e}",
                self.inner.config.bucket
            ))),
            _ => Ok(()),
        }
    }

    /// Bytes of the published objects under the prefix (the quota's starting point).
    pub async fn bytes_stored(&self) -> Result<u64, StoreError> {
        let prefix = Key::from(self.inner.base.trim_end_matches('/'));
        let state = format!("{}{STATE}/", self.inner.base);
        let mut total = 0;
        let mut list = self.inner.s3.list(Some(&prefix));
        while let Some(meta) = list.try_next().await.map_err(io_error)? {
            if !meta.location.as_ref().starts_with(&state) {
                total += meta.size;
            }
        }
        Ok(total)
    }

    /// The object key of `path` (checked by the name rule) in this view.
    fn key(&self, path: &str) -> Result<String, StoreError> {
        let parts = split_path(path)?;
        if parts.is_empty() {
            return Err(NameError::Empty.into());
        }
        Ok(format!(
            "{}{}{}",
            self.inner.base,
            self.view,
            parts.join("/")
        ))
    }

    /// The key of the folder `path` in this view, with a trailing `/` (the view itself for "").
    fn folder_key(&self, path: &str) -> Result<String, StoreError> {
        let parts = split_path(path)?;
        let mut key = format!("{}{}", self.inner.base, self.view);
        for p in parts {
            key.push_str(p);
            key.push('/');
        }
        Ok(key)
    }

    /// The path below the prefix, as users name it (what a partial is keyed by).
    fn rel<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(&self.inner.base).unwrap_or(key)
    }

    /// The facts of the object at `key`, with barge's metadata; `None` if there is none.
    async fn head(&self, key: &str) -> Result<Option<(u64, i64, Option<Cv>)>, StoreError> {
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.inner.s3.get_opts(&Key::from(key), opts).await {
            Ok(got) => {
                let digest = meta_value(&got.attributes, DIGEST_META).and_then(|d| parse_hex(&d));
                let mtime = meta_value(&got.attributes, MTIME_META)
                    .and_then(|m| m.parse().ok())
                    .unwrap_or_else(|| got.meta.last_modified.timestamp());
                Ok(Some((got.meta.size, mtime, digest)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    /// Whether an object or a folder has this name.
    async fn taken(&self, key: &str) -> Result<bool, StoreError> {
        if self.head(key).await?.is_some() {
            return Ok(true);
        }
        // A folder: something below it that is still there (a listing may lag behind deletes,
        // so what it names is asked for; the first that answers settles it).
        let below = Key::from(key);
        let mut list = self.inner.s3.list(Some(&below));
        while let Some(meta) = list.try_next().await.map_err(io_error)? {
            if self.head(meta.location.as_ref()).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The digest of an object without barge's metadata (put there by another S3 tool): read
    /// and hashed (not cached: S3 metadata cannot change without rewriting the object).
    async fn hash_object(&self, key: &str) -> Result<Cv, StoreError> {
        let got = self.inner.s3.get(&Key::from(key)).await.map_err(io_error)?;
        let mut stream = got.into_stream();
        let mut hasher = blake3::Hasher::new();
        while let Some(piece) = stream.try_next().await.map_err(io_error)? {
            hasher.update(&piece);
        }
        Ok(*hasher.finalize().as_bytes())
    }

    /// The final key under `on_conflict` for the requested `key`.
    async fn publish_key(&self, key: &str, on_conflict: OnConflict) -> Result<String, StoreError> {
        match on_conflict {
            OnConflict::Overwrite => Ok(key.to_owned()),
            OnConflict::Fail => {
                if self.taken(key).await? {
                    Err(StoreError::Conflict(self.shown(key)))
                } else {
                    Ok(key.to_owned())
                }
            }
            OnConflict::Rename => {
                let (dir, name) = key.rsplit_once('/').map_or(("", key), |(d, n)| (d, n));
                for n in 0..=1000u32 {
                    let candidate = if n == 0 {
                        name.to_owned()
                    } else {
                        numbered(name, n)
                    };
                    let full = if dir.is_empty() {
                        candidate
                    } else {
                        format!("{dir}/{candidate}")
                    };
                    if !self.taken(&full).await? {
                        return Ok(full);
                    }
                }
                Err(StoreError::Conflict(self.shown(key)))
            }
        }
    }

    /// A key as the client named it: relative to this view.
    fn shown(&self, key: &str) -> String {
        let rel = self.rel(key);
        rel.strip_prefix(&self.view).unwrap_or(rel).to_owned()
    }

    /// The stored name of a published key: its last component, as the local store reports it.
    fn stored_name(key: &str) -> String {
        key.rsplit('/').next().unwrap_or(key).to_owned()
    }

    fn attributes(digest: &Cv, mtime: i64) -> Attributes {
        let mut a = Attributes::new();
        a.insert(Attribute::Metadata(DIGEST_META.into()), hex(digest).into());
        a.insert(
            Attribute::Metadata(MTIME_META.into()),
            mtime.to_string().into(),
        );
        a
    }

    async fn put_whole(
        &self,
        path: &str,
        data: Bytes,
        digest: Cv,
        on_conflict: OnConflict,
        mtime: Option<i64>,
    ) -> Result<Stored, StoreError> {
        let key = self.key(path)?;
        let size = data.len() as u64;
        let reservation = super::Reservation::take(self.inner.config.quota.as_ref(), size)?;
        let target = self.publish_key(&key, on_conflict).await?;
        let opts = PutOptions {
            // Create where the policy refuses to replace: S3 services that enforce it then
            // close the race between the check above and this put (garage does not).
            mode: if on_conflict == OnConflict::Overwrite {
                PutMode::Overwrite
            } else {
                PutMode::Create
            },
            attributes: Self::attributes(&digest, mtime.unwrap_or_else(now_secs)),
            ..PutOptions::default()
        };
        let replaced = if on_conflict == OnConflict::Overwrite {
            self.head(&target).await?.map_or(0, |(s, _, _)| s)
        } else {
            0
        };
        match self
            .inner
            .s3
            .put_opts(&Key::from(target.as_str()), PutPayload::from(data), opts)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(StoreError::Conflict(self.shown(&target)));
            }
            Err(object_store::Error::NotImplemented { .. }) => {
                // A service without conditional puts: the check above is what there is.
                let opts = PutOptions {
                    attributes: Self::attributes(&digest, mtime.unwrap_or_else(now_secs)),
                    ..PutOptions::default()
                };
                self.inner
                    .s3
                    .put_opts(&Key::from(target.as_str()), PutPayload::new(), opts)
                    .await
                    .map_err(io_error)?;
            }
            Err(e) => return Err(io_error(e)),
        }
        reservation.keep();
        if let Some(q) = &self.inner.config.quota {
            q.release(replaced);
        }
        Ok(Stored {
            name: Self::stored_name(&target),
            size,
            digest: Some(digest),
        })
    }

    async fn list_tree(&self, path: &str, recursive: bool) -> Result<Listing, StoreError> {
        let path = path.trim_matches('/');
        if !path.is_empty() {
            let key = self.key(path)?;
            if let Some((size, mtime, digest)) = self.head(&key).await? {
                let digest = match digest {
                    Some(d) => d,
                    None => self.hash_object(&key).await?,
                };
                let name = key.rsplit('/').next().unwrap_or_default().to_owned();
                return Ok(vec![Entry {
                    path: name,
                    dir: false,
                    size,
                    mtime,
                    digest: Some(hex(&digest)),
                }]);
            }
        }
        let folder = self.folder_key(path)?;
        let state = format!("{}{STATE}/", self.inner.base);
        // A listing may still show what was just deleted (S3 allows it; garage was seen listing
        // a key its HEAD already called gone), so every file and folder marker about to be shown
        // is asked for, and one that is gone is left out with the folders only it made. Deeper
        // names of a non-recursive listing only name their top folder: it is shown when the
        // first of them that is asked for is there (one request per folder, as a rule). Only the
        // first few are kept (memory stays small under a huge folder); past them it is shown.
        let mut asked = Vec::new();
        let mut below: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        let list_prefix = Key::from(folder.trim_end_matches('/'));
        let mut found = false;
        let mut list = self.inner.s3.list(Some(&list_prefix));
        while let Some(meta) = list.try_next().await.map_err(io_error)? {
            let key = meta.location.as_ref().to_owned();
            let Some(rel) = key.strip_prefix(&folder) else {
                continue;
            };
            found = true;
            if key.starts_with(&state) || rel.is_empty() {
                continue;
            }
            // Every folder on the way is an entry; `recursive` decides how deep.
            if rel == FOLDER_MARKER {
                continue; // the listed folder's own marker
            }
            let (folders, is_file): (Vec<&str>, bool) = match rel.strip_suffix(FOLDER_MARKER) {
                Some(marker) => (marker.trim_end_matches('/').split('/').collect(), false),
                None => {
                    let mut parts: Vec<&str> = rel.split('/').collect();
                    parts.pop();
                    (parts, true)
                }
            };
            let shown = recursive || folders.len() <= usize::from(!is_file);
            if !shown {
                let (keys, more) = below.entry(folders[0].to_owned()).or_default();
                if keys.len() < ASKED_PER_FOLDER {
                    keys.push(key);
                } else {
                    *more = true;
                }
                continue;
            }
            let made: Vec<String> = (1..=folders.len())
                .map(|depth| folders[..depth].join("/"))
                .collect();
            asked.push((rel.to_owned(), key, made, is_file));
        }
        if !found && !path.is_empty() {
            return Err(StoreError::NotFound(path.to_owned()));
        }
        // Digests come from each object's metadata (a listing has none): asked 16 at a time.
        let this = self.clone();
        let found: Vec<Option<(Option<Entry>, Vec<String>)>> = futures::stream::iter(asked)
            .map(|(rel, key, made, is_file)| {
                let this = this.clone();
                async move {
                    let Some((size, mtime, digest)) = this.head(&key).await? else {
                        return Ok(None);
                    };
                    if !is_file {
                        return Ok(Some((None, made)));
                    }
                    let digest = match digest {
                        Some(d) => d,
                        None => match this.hash_object(&key).await {
                            Err(StoreError::NotFound(_)) => return Ok(None),
                            other => other?,
                        },
                    };
                    let entry = Entry {
                        path: rel,
                        dir: false,
                        size,
                        mtime,
                        digest: Some(hex(&digest)),
                    };
                    Ok::<_, StoreError>(Some((Some(entry), made)))
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut entries = Vec::new();
        for (entry, made) in found.into_iter().flatten() {
            entries.extend(entry);
            dirs.extend(made);
        }
        below.retain(|dir, _| !dirs.contains(dir));
        let shown: Vec<Option<String>> = futures::stream::iter(below)
            .map(|(dir, (keys, more))| {
                let this = this.clone();
                async move {
                    for key in keys {
                        if this.head(&key).await?.is_some() {
                            return Ok::<_, StoreError>(Some(dir));
                        }
                    }
                    Ok(more.then_some(dir))
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        dirs.extend(shown.into_iter().flatten());
        entries.extend(dirs.into_iter().map(|d| Entry {
            path: d,
            dir: true,
            size: 0,
            mtime: 0,
            digest: None,
        }));
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    async fn read_from(&self, path: &str, from: u64) -> Result<Reading, StoreError> {
        let key = self.key(path)?;
        let Some((size, mtime, digest)) = self.head(&key).await? else {
            return Err(StoreError::NotFound(path.to_owned()));
        };
        let digest = match digest {
            Some(d) => d,
            None => self.hash_object(&key).await?,
        };
        let start = from - from % CHUNK;
        let (tx, rx) = mpsc::channel(4);
        let s3 = self.inner.clone();
        tokio::spawn(async move {
            let mut at = start;
            let mut carry = bytes::BytesMut::new();
            if at < size {
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(at..size)),
                    ..GetOptions::default()
                };
                let got = match s3.s3.get_opts(&Key::from(key.as_str()), opts).await {
                    Ok(g) => g,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                let mut stream = got.into_stream();
                loop {
                    let want = (size - at).min(CHUNK) as usize;
                    if carry.len() >= want {
                        let chunk = carry.split_to(want).freeze();
                        at += want as u64;
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                        if at >= size {
                            break;
                        }
                        continue;
                    }
                    match stream.next().await {
                        Some(Ok(piece)) => carry.extend_from_slice(&piece),
                        Some(Err(e)) => {
                            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                            return;
                        }
                        None => {
                            let _ = tx
                                .send(Err(std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    "the object ended early",
                                )))
                                .await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Reading {
            meta: Meta {
                size,
                mtime,
                digest,
            },
            chunks: rx,
        })
    }

    /// Every object key at or below `key` (the object itself, and a folder's contents).
    async fn keys_at(&self, key: &str) -> Result<(bool, Vec<(String, u64)>), StoreError> {
        let file = self.head(key).await?;
        let folder = format!("{key}/");
        let mut below = Vec::new();
        let mut list = self.inner.s3.list(Some(&Key::from(key)));
        while let Some(meta) = list.try_next().await.map_err(io_error)? {
            if meta.location.as_ref().starts_with(&folder) {
                below.push((meta.location.as_ref().to_owned(), meta.size));
            }
        }
        match file {
            Some((size, _, _)) => Ok((true, vec![(key.to_owned(), size)])),
            None => Ok((false, below)),
        }
    }

    async fn remove_path(&self, path: &str, recursive: bool) -> Result<u64, StoreError> {
        let key = self.key(path)?;
        let (is_file, keys) = self.keys_at(&key).await?;
        if keys.is_empty() {
            return Err(StoreError::NotFound(path.to_owned()));
        }
        let marker = format!("{key}/{FOLDER_MARKER}");
        if !is_file && !recursive {
            // Anything else listed makes the folder not empty, if it is still there.
            for (k, _) in keys.iter().filter(|(k, _)| *k != marker) {
                if self.head(k).await?.is_some() {
                    return Err(StoreError::NotEmpty(path.to_owned()));
                }
            }
        }
        // Under a quota a listed key is asked for first: a listing may still name what was just
        // deleted, whose bytes were given back then (a file's own key came from a HEAD already).
        let asked = !is_file && self.inner.config.quota.is_some();
        let mut freed = 0;
        let mut gone = Vec::with_capacity(keys.len());
        for (k, size) in keys {
            if asked && self.head(&k).await?.is_none() {
                continue;
            }
            freed += size;
            gone.push(k);
        }
        self.delete_all(gone).await?;
        if let Some(q) = &self.inner.config.quota {
            q.release(freed);
        }
        Ok(freed)
    }

    async fn rename_path(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let (src, dst) = (self.key(from)?, self.key(to)?);
        if dst.starts_with(&format!("{src}/")) {
            return Err(StoreError::IntoItself(from.to_owned()));
        }
        let (_, keys) = self.keys_at(&src).await?;
        if keys.is_empty() {
            return Err(StoreError::NotFound(from.to_owned()));
        }
        if self.taken(&dst).await? {
            return Err(StoreError::Conflict(to.to_owned()));
        }
        // Copy everything, then delete the originals: an interruption leaves both, never
        // neither (S3 has no rename). A listed key that is gone by its copy was deleted just
        // before (listings lag): it is not part of what moves.
        let mut moved = Vec::new();
        for (k, _) in keys {
            let target = format!("{dst}{}", &k[src.len()..]);
            match self
                .inner
                .s3
                .copy(&Key::from(k.as_str()), &Key::from(target.as_str()))
                .await
            {
                Ok(()) => moved.push(k),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        if moved.is_empty() {
            return Err(StoreError::NotFound(from.to_owned()));
        }
        self.delete_all(moved).await
    }

    /// Deletes `keys`, a thousand per request (S3's DeleteObjects, batched by object_store): a
    /// folder of many files goes in a few round trips, not one each. A key already gone is fine.
    async fn delete_all(&self, keys: Vec<String>) -> Result<(), StoreError> {
        let keys = futures::stream::iter(keys.into_iter().map(|k| Ok(Key::from(k)))).boxed();
        let mut deleted = self.inner.s3.delete_stream(keys);
        while let Some(done) = deleted.next().await {
            match done {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }

    async fn make_dir(&self, path: &str) -> Result<(), StoreError> {
        let key = self.key(path)?;
        if self.head(&key).await?.is_some() {
            return Err(StoreError::NotAFolder(path.to_owned()));
        }
        // Any parent that is a file makes this a file's child: refused like the local store.
        let mut at = self.inner.base.len() + self.view.len();
        while let Some(slash) = key[at..].find('/') {
            let parent = &key[..at + slash];
            if self.head(parent).await?.is_some() {
                return Err(StoreError::NotAFolder(self.shown(parent)));
            }
            at += slash + 1;
        }
        let marker = format!("{key}/{FOLDER_MARKER}");
        self.inner
            .s3
            .put(&Key::from(marker.as_str()), PutPayload::new())
            .await
            .map_err(io_error)?;
        Ok(())
    }
}

/// One user metadata value of an object, if set.
fn meta_value(attributes: &Attributes, name: &str) -> Option<String> {
    attributes
        .get(&Attribute::Metadata(name.to_owned().into()))
        .map(|v| v.as_ref().to_owned())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rand_bytes() -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&format!("{:?}", std::time::SystemTime::now()).into_bytes());
    h.update(&format!("{:?}", std::thread::current().id()).into_bytes());
    *h.finalize().as_bytes()
}

impl Store for S3Store {
    fn scoped(&self, rel: &str) -> Result<Arc<dyn Store>, StoreError> {
        let parts = split_path(rel)?;
        let mut view = self.view.clone();
        for p in parts {
            view.push_str(p);
            view.push('/');
        }
        Ok(Arc::new(S3Store {
            inner: self.inner.clone(),
            view,
        }))
    }

    fn kept(
        &self,
        path: &str,
        size: u64,
        version: Version,
    ) -> BoxFuture<'_, Result<Vec<Cv>, StoreError>> {
        let path = path.to_owned();
        Box::pin(async move {
            let key = self.key(&path)?;
            partial::kept(self, &key, size, version).await
        })
    }

    fn begin(&self, begin: Begin) -> BoxFuture<'_, Result<Begun, StoreError>> {
        Box::pin(async move { partial::begin(self, begin).await })
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
        let path = path.to_owned();
        Box::pin(async move {
            let key = self.key(&path)?;
            match self.head(&key).await? {
                None => Ok(None),
                Some((size, mtime, digest)) => {
                    let digest = match digest {
                        Some(d) => d,
                        None => self.hash_object(&key).await?,
                    };
                    Ok(Some(Meta {
                        size,
                        mtime,
                        digest,
                    }))
                }
            }
        })
    }

    fn exists(&self, path: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let path = path.to_owned();
        Box::pin(async move {
            let key = self.key(&path)?;
            self.taken(&key).await
        })
    }

    fn mkdir(&self, path: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let path = path.to_owned();
        Box::pin(async move { self.make_dir(&path).await })
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

    fn read(&self, path: &str, from: u64) -> BoxFuture<'_, Result<Reading, StoreError>> {
        let path = path.to_owned();
        Box::pin(async move { self.read_from(&path, from).await })
    }

    fn reads_kept(&self) -> bool {
        false
    }

    fn read_kept(
        &self,
        _path: &str,
        _size: u64,
        _version: Version,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<std::io::Result<Bytes>>, StoreError>> {
        // The parts of a multipart upload cannot be read before it is completed.
        Box::pin(async {
            Err(StoreError::Unsupported(
                "reading an unfinished multipart upload back".into(),
            ))
        })
    }

    fn expire(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move { partial::expire(self).await })
    }

    fn put_note(&self, name: &str, value: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let key = self.note_key(&name)?;
            self.inner
                .s3
                .put(&Key::from(key), PutPayload::from(value))
                .await
                .map_err(io_error)?;
            Ok(())
        })
    }

    fn get_note(&self, name: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let key = self.note_key(&name)?;
            match self.inner.s3.get(&Key::from(key)).await {
                Ok(got) => Ok(Some(got.bytes().await.map_err(io_error)?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io_error(e)),
            }
        })
    }

    fn delete_note(&self, name: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let key = self.note_key(&name)?;
            match self.inner.s3.delete(&Key::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(io_error(e)),
            }
        })
    }
}

impl S3Store {
    fn note_key(&self, name: &str) -> Result<String, StoreError> {
        super::check_note_name(name)?;
        Ok(format!("{}{STATE}/notes/{name}", self.inner.base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{s3_config, s3s_config, s3s_lagging_config};
    use barge_proto::tree::chunk_cv;

    /// A listing that still shows deleted keys (S3 allows it; a CI run on garage saw a recursive
    /// remove followed by a listing fail with 404 on a key the listing had just named): the
    /// store shows only what is there, renames only what is there, and a folder of ghosts is
    /// not found.
    #[tokio::test]
    async fn keys_a_listing_shows_after_their_delete_are_left_out() {
        let (config, _dir) = s3s_lagging_config();
        let store = S3Store::open(config).unwrap();
        three_files(&store).await;
        store.mkdir("m/n").await.unwrap();
        assert_eq!(store.remove("a/one.txt", false).await.unwrap(), 3);
        assert_eq!(store.remove("m", true).await.unwrap(), 0);
        assert_eq!(store.remove("x.txt", false).await.unwrap(), 1);
        let listed = store
            .inner
            .s3
            .list(None)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        assert!(
            listed
                .iter()
                .any(|m| m.location.as_ref().ends_with("a/one.txt")),
            "the double lags: the deleted key is still listed"
        );
        // A folder only ghosts are left in is free for a new folder or file of its name.
        assert!(!store.exists("m").await.unwrap() && store.exists("a").await.unwrap());
        store.mkdir("m").await.unwrap();
        assert!(store.exists("m").await.unwrap());
        store.remove("m", false).await.unwrap();
        let names = |listing: Listing| {
            listing
                .into_iter()
                .map(|e| (e.path, e.dir))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(store.list("", true).await.unwrap()),
            [("a".to_owned(), true), ("a/two.txt".to_owned(), false)]
        );
        assert_eq!(
            names(store.list("", false).await.unwrap()),
            [("a".to_owned(), true)]
        );
        assert_eq!(
            names(store.list("a", false).await.unwrap()),
            [("two.txt".to_owned(), false)]
        );
        store.rename("a", "b").await.unwrap();
        assert_eq!(
            names(store.list("", true).await.unwrap()),
            [("b".to_owned(), true), ("b/two.txt".to_owned(), false)]
        );
        assert!(matches!(
            store.rename("a", "c").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.remove("b", true).await.unwrap(), 4);
        assert!(store.list("", true).await.unwrap().is_empty());
    }

    /// Under a quota, removing a folder whose listing still names deleted keys gives back only
    /// the bytes that were there (the deleted ones were given back when they went).
    #[tokio::test]
    async fn a_quota_gets_back_only_what_a_remove_found() {
        let (mut config, _dir) = s3s_lagging_config();
        let quota = crate::store::Quota::new(1 << 20, 0);
        config.quota = Some(quota.clone());
        let store = S3Store::open(config).unwrap();
        three_files(&store).await;
        assert_eq!(quota.used(), 8);
        assert_eq!(store.remove("a/one.txt", false).await.unwrap(), 3);
        assert_eq!(quota.used(), 5);
        assert_eq!(store.remove("a", true).await.unwrap(), 4);
        assert_eq!(quota.used(), 1, "x.txt is all that is stored");
    }

    /// A folder of more objects than one DeleteObjects request takes goes whole, and a rename of
    /// it deletes every original.
    #[tokio::test]
    async fn folders_of_more_than_a_thousand_objects_move_and_go_whole() {
        let (config, _dir) = s3s_config();
        let store = S3Store::open(config).unwrap();
        let n = 1_100u64;
        futures::stream::iter(0..n)
            .map(|i| {
                let store = store.clone();
                async move {
                    let data = Bytes::from(format!("{i}"));
                    let digest = blake3::hash(&data).into();
                    let path = format!("big/f{i:04}");
                    store
                        .put_small(&path, data, digest, OnConflict::Fail, None)
                        .await
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        let bytes: u64 = (0..n).map(|i| format!("{i}").len() as u64).sum();
        store.rename("big", "moved").await.unwrap();
        assert!(!store.exists("big").await.unwrap());
        let started = std::time::Instant::now();
        assert_eq!(store.remove("moved", true).await.unwrap(), bytes);
        eprintln!("removed {n} objects in {:?}", started.elapsed());
        assert!(store.list("", true).await.unwrap().is_empty());
    }

    /// Stores `a/one.txt` (3 bytes), `a/two.txt` (4) and `x.txt` (1).
    async fn three_files(store: &S3Store) {
        for (path, data) in [
            ("a/one.txt", &b"one"[..]),
            ("a/two.txt", b"two!"),
            ("x.txt", b"x"),
        ] {
            let data = Bytes::copy_from_slice(data);
            let digest = blake3::hash(&data).into();
            store
                .put_small(path, data, digest, OnConflict::Fail, None)
                .await
                .unwrap();
        }
    }

    /// An upload nobody continues within the TTL is aborted: its multipart upload, its staging
    /// object and its state leave the bucket. On garage where `BARGE_TEST_S3` names a bucket,
    /// else on the in-process s3s-fs.
    #[tokio::test]
    async fn abandoned_uploads_are_aborted_after_the_ttl() {
        let (fallback, _dir) = s3s_config();
        let mut config = s3_config().unwrap_or(fallback);
        config.partial_ttl = Duration::ZERO;
        let store = S3Store::open(config).unwrap();
        let data = vec![7u8; (6 << 20) as usize];
        let (mut p, _) = store
            .begin(Begin::new("gone.bin", data.len() as u64))
            .await
            .unwrap();
        for i in 0..5u64 {
            let piece = &data[(i * CHUNK) as usize..((i + 1) * CHUNK) as usize];
            p.write(Bytes::copy_from_slice(piece)).await.unwrap();
            p.verified(chunk_cv(i, piece)).await.unwrap();
        }
        p.suspend().await;
        let state_dir = Key::from(format!("{}{STATE}/partial", store.inner.base));
        let count = || async {
            store
                .inner
                .s3
                .list(Some(&state_dir))
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .len()
        };
        assert!(count().await > 0, "the state is in the bucket");
        assert_eq!(store.expire().await.unwrap(), 1);
        assert_eq!(count().await, 0, "state and staging object are gone");
        assert!(
            store
                .kept("gone.bin", data.len() as u64, Version::Any)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
