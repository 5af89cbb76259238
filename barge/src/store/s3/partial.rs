//! An upload into the bucket: a multipart upload whose parts stream to S3 as their bytes arrive
//! (a few pieces queued, whatever the part size), with its resume state — upload id, the parts'
//! ETags, the verified chunks' CVs, a lease — in a small JSON object beside it, so that any barge
//! server on the bucket can continue it.
//!
//! A part enters the resume state only when it was uploaded *and* every chunk it covers was
//! verified: a resume starts at a part boundary (a part cannot be appended to), and never claims
//! bytes that were not checked. What a killed server loses is bounded by `parts_in_flight` parts
//! and a chunk or two: with 1, a new part takes no byte until the one before is in the state in
//! the bucket (one part, and what the front end had read of the next chunk: the bound);
//! with more, a new part may take its first chunk while older ones complete (faster: garage's
//! answers and the state saves overlap the bytes), no more until all but the
//! `parts_in_flight - 1` last are in the state (N parts, that chunk and the next read). State
//! saves run beside the bytes, one at a time.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use barge_proto::tree::{CHUNK, Cv, chunk_count, chunk_len, hex, parse_hex};
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{DIGEST_META, MTIME_META, S3Store, STATE, io_error, now_secs, rand_bytes};
use crate::store::{
    Begin, Begun, BoxFuture, OnConflict, Partial, Reservation, StoreError, Stored, Version,
};

/// Bytes per part unless configured: big enough for throughput, small enough to resume cheaply.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;

/// Files up to this size are held whole and stored with one put (no multipart upload, no state:
/// too small to be worth resuming).
const WHOLE_MAX: u64 = 4 << 20;

/// Parts of one upload the bucket takes at once unless configured.
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 2;

/// Bytes queued for the bucket by all uploads together unless configured.
pub const DEFAULT_MEMORY: u64 = 24 << 20;

/// The largest piece queued for a part's request.
const QUEUE_PIECE: usize = 256 << 10;

/// How long the bucket may take to accept a queued piece, or to answer a part sent whole.
const BUCKET_WAIT: Duration = Duration::from_secs(120);

/// How long a writer holds a partial without renewing: another server may take it over after
/// this (a killed server renews nothing).
const LEASE: Duration = Duration::from_secs(10);

/// A partial's resume state, kept in the bucket as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The key the file is published under (before a conflict rename).
    target: String,
    size: u64,
    /// The content's digest (hex) for a download's partial; empty for an upload.
    version: String,
    upload_id: String,
    part_size: u64,
    /// ETags of parts 1..=n, each uploaded and fully verified.
    parts: Vec<String>,
    /// Hex CVs of the chunks those parts cover, concatenated.
    cvs: String,
    /// Who writes it, and until when (ms since the epoch) without renewing.
    owner: String,
    lease_until_ms: u64,
    /// Last write, seconds since the epoch (for expiry).
    touched: i64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl State {
    fn held_by_other(&self, me: &str) -> bool {
        self.owner != me && self.lease_until_ms > now_ms()
    }

    fn kept_cvs(&self) -> Vec<Cv> {
        let mut out = Vec::new();
        let text = self.cvs.as_bytes();
        for piece in text.chunks(64) {
            match std::str::from_utf8(piece).ok().and_then(parse_hex) {
                Some(cv) => out.push(cv),
                None => return Vec::new(),
            }
        }
        // Exactly the chunks of the recorded parts, or nothing: a state that disagrees with
        // itself is not trusted.
        let want = self.parts.len() as u64 * self.part_size / CHUNK;
        if out.len() as u64 != want || !self.part_size.is_multiple_of(CHUNK) {
            return Vec::new();
        }
        out
    }
}

fn partial_key(store: &S3Store, key: &str, size: u64, version: Version) -> String {
    let mut h = blake3::Hasher::new();
    h.update(store.rel(key).as_bytes());
    h.update(&[0]);
    h.update(&size.to_le_bytes());
    match version {
        Version::Any => {}
        Version::Digest(d) => {
            h.update(&d);
        }
        Version::Upload(u) => {
            h.update(b"u");
            h.update(&u);
        }
    }
    hex(h.finalize().as_bytes())[..32].to_owned()
}

fn state_key(store: &S3Store, k: &str) -> String {
    format!("{}{STATE}/partial/{k}.json", store.inner.base)
}

fn data_key(store: &S3Store, k: &str) -> String {
    format!("{}{STATE}/partial/{k}.data", store.inner.base)
}

async fn load(store: &S3Store, k: &str) -> Result<Option<State>, StoreError> {
    match store.inner.s3.get(&Key::from(state_key(store, k))).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(io_error)?;
            Ok(serde_json::from_slice(&bytes).ok())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

async fn save(store: &S3Store, k: &str, state: &State) -> Result<(), StoreError> {
    let json = serde_json::to_vec(state).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
    store
        .inner
        .s3
        .put(&Key::from(state_key(store, k)), PutPayload::from(json))
        .await
        .map_err(io_error)?;
    Ok(())
}

/// Throws a partial away in the bucket: its upload aborted, its objects deleted (best effort:
/// what is left is aborted by a later expiry).
async fn forget(store: &S3Store, k: &str, upload_id: &str) {
    let data = Key::from(data_key(store, k));
    if !upload_id.is_empty()
        && let Err(e) = store
            .inner
            .s3
            .abort_multipart(&data, &upload_id.to_owned())
            .await
    {
        debug!(error = %e, "abort of a multipart upload");
    }
    for key in [state_key(store, k), data_key(store, k)] {
        let _ = store.inner.s3.delete(&Key::from(key)).await;
    }
}

/// See [`crate::store::Store::kept`].
pub(super) async fn kept(
    store: &S3Store,
    key: &str,
    size: u64,
    version: Version,
) -> Result<Vec<Cv>, StoreError> {
    let k = partial_key(store, key, size, version);
    if store
        .inner
        .busy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&k)
    {
        return Ok(Vec::new());
    }
    Ok(match load(store, &k).await? {
        // Another server holds it (or held it and was killed, until its lease runs out): busy,
        // so the client backs off and resumes then, rather than sending everything again.
        Some(state) if state.held_by_other(&store.inner.owner) => {
            return Err(StoreError::Busy(store.shown(key)));
        }
        Some(state) if state.size == size => state.kept_cvs(),
        _ => Vec::new(),
    })
}

/// See [`crate::store::Store::begin`].
pub(super) async fn begin(store: &S3Store, begin: Begin) -> Result<Begun, StoreError> {
    let key = store.key(&begin.path)?;
    if begin.on_conflict == OnConflict::Fail && store.taken(&key).await? {
        return Err(StoreError::Conflict(begin.path));
    }
    let reservation = Reservation::take(store.inner.config.quota.as_ref(), begin.size)?;
    let mut k = partial_key(store, &key, begin.size, begin.version);
    let mut resumable = begin.resumable;
    let busy_here = |k: &str| {
        store
            .inner
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(k)
    };
    let mut state = if resumable && !busy_here(&k) {
        load(store, &k).await?
    } else {
        None
    };
    let taken = busy_here(&k)
        || !resumable
        || state
            .as_ref()
            .is_some_and(|s| s.held_by_other(&store.inner.owner));
    if taken {
        if begin.from > 0 {
            return Err(StoreError::Busy(begin.path));
        }
        // A partial of its own, which nobody else can find.
        resumable = false;
        state = None;
        k = format!("{k}-{}", &hex(&rand_bytes())[..8]);
    }
    if !store
        .inner
        .busy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(k.clone())
    {
        return Err(StoreError::Busy(begin.path));
    }
    let started = start(store, begin, key, &k, state, resumable, reservation).await;
    if started.is_err() {
        store
            .inner
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&k);
    }
    started
}

async fn start(
    store: &S3Store,
    begin: Begin,
    key: String,
    k: &str,
    state: Option<State>,
    resumable: bool,
    reservation: Reservation,
) -> Result<Begun, StoreError> {
    let kept = state.as_ref().map_or_else(Vec::new, State::kept_cvs);
    let kept_bytes = (kept.len() as u64 * CHUNK).min(begin.size);
    if begin.from != 0 && begin.from != kept_bytes {
        return Err(StoreError::BadRequest(format!(
            "resume from byte {}, but {kept_bytes} are kept",
            begin.from
        )));
    }
    let config = &store.inner.config;
    let state = match state {
        Some(mut s) if begin.from > 0 => {
            s.owner = store.inner.owner.clone();
            s.lease_until_ms = now_ms() + LEASE.as_millis() as u64;
            s.touched = now_secs();
            save(store, k, &s).await?;
            info!(path = %begin.path, from = begin.from, "resuming an upload kept in the bucket");
            s
        }
        old => {
            if let Some(old) = old {
                forget(store, k, &old.upload_id).await;
            }
            let upload_id = if begin.size <= WHOLE_MAX {
                String::new()
            } else {
                store
                    .inner
                    .s3
                    .create_multipart(&Key::from(data_key(store, k)))
                    .await
                    .map_err(io_error)?
            };
            let s = State {
                target: key,
                size: begin.size,
                version: match begin.version {
                    Version::Any => String::new(),
                    Version::Digest(d) => hex(&d),
                    Version::Upload(u) => format!("u{}", hex(&u)),
                },
                upload_id,
                part_size: config.part_size,
                parts: Vec::new(),
                cvs: String::new(),
                owner: store.inner.owner.clone(),
                lease_until_ms: now_ms() + LEASE.as_millis() as u64,
                touched: now_secs(),
            };
            // Saved before any part: a crash leaves a state that expiry can abort.
            if resumable && !s.upload_id.is_empty() {
                save(store, k, &s).await?;
            }
            s
        }
    };
    let whole = state.upload_id.is_empty();
    let cvs = if begin.from > 0 { kept } else { Vec::new() };
    let state_parts = state.parts.len();
    let partial = S3Partial {
        store: store.clone(),
        k: k.to_owned(),
        next_part: state.parts.len(),
        state,
        resumable: resumable && !whole,
        size: begin.size,
        written: begin.from,
        whole: whole.then(|| BytesMut::with_capacity(begin.size as usize)),
        cvs: cvs.clone(),
        filling: None,
        completing: VecDeque::new(),
        done: BTreeMap::new(),
        failed: None,
        saving: None,
        durable_parts: state_parts,
        mtime: begin.mtime,
        reservation: Some(reservation),
        finished: false,
    };
    Ok((Box::new(partial), cvs))
}

/// See [`crate::store::Store::expire`]: aborts partials nobody wrote to within the TTL.
pub(super) async fn expire(store: &S3Store) -> Result<usize, StoreError> {
    let dir = format!("{}{STATE}/partial", store.inner.base);
    let ttl = store.inner.config.partial_ttl.as_secs() as i64;
    let mut names = Vec::new();
    let mut list = store.inner.s3.list(Some(&Key::from(dir)));
    while let Some(meta) = list.try_next().await.map_err(io_error)? {
        if let Some(k) = meta
            .location
            .filename()
            .and_then(|f| f.strip_suffix(".json"))
        {
            names.push(k.to_owned());
        }
    }
    let mut expired = 0;
    for k in names {
        if let Some(state) = load(store, &k).await?
            && state.touched + ttl <= now_secs()
            && !state.held_by_other(&store.inner.owner)
        {
            forget(store, &k, &state.upload_id).await;
            info!(target = %state.target, "an abandoned upload expired");
            expired += 1;
        }
    }
    Ok(expired)
}

/// One upload being written.
#[derive(Debug)]
struct S3Partial {
    store: S3Store,
    k: String,
    state: State,
    resumable: bool,
    size: u64,
    /// Bytes written from the start of the file.
    written: u64,
    /// A small file's bytes, stored with one put at the end (`None` for a multipart upload).
    whole: Option<BytesMut>,
    /// CVs of the verified chunks, from the first.
    cvs: Vec<Cv>,
    /// The index of the next part to open.
    next_part: usize,
    /// The part whose bytes are streaming to the bucket.
    filling: Option<Filling>,
    /// Parts whose bytes are all sent, waiting for the bucket's answer (index, request).
    completing: VecDeque<(usize, JoinHandle<Result<String, String>>)>,
    /// Parts uploaded but not yet in the state (their chunks not all verified, or an earlier part
    /// still in flight).
    done: BTreeMap<usize, PartId>,
    failed: Option<String>,
    /// The state save under way, and how many parts it records.
    saving: Option<(usize, JoinHandle<Result<(), StoreError>>)>,
    /// Parts the state in the bucket records (as far as this process knows).
    durable_parts: usize,
    mtime: Option<i64>,
    reservation: Option<Reservation>,
    finished: bool,
}

/// A part being streamed: its request runs in a task that takes the queued pieces as its body.
#[derive(Debug)]
struct Filling {
    index: usize,
    len: u64,
    sent: u64,
    /// Each piece with its share of the memory every upload draws on (given back once the
    /// request took the piece).
    queue: mpsc::UnboundedSender<(Bytes, OwnedSemaphorePermit)>,
    request: JoinHandle<Result<String, String>>,
}

fn failed(message: &str) -> StoreError {
    StoreError::Io(std::io::Error::other(message.to_owned()))
}

impl S3Partial {
    fn data_key(&self) -> Key {
        Key::from(data_key(&self.store, &self.k))
    }

    fn take_result(&mut self, index: usize, result: Result<String, String>) {
        match result {
            Ok(etag) => {
                self.done.insert(index, PartId { content_id: etag });
            }
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
    }

    /// Collects the answers to parts sent whole: those already here, then waiting while more
    /// than `keep` are outstanding.
    async fn collect(&mut self, keep: usize) -> Result<(), StoreError> {
        let mut i = 0;
        while i < self.completing.len() {
            if self.completing[i].1.is_finished() || self.completing.len() > keep {
                if let Some((index, request)) = self.completing.remove(i) {
                    let result = match tokio::time::timeout(BUCKET_WAIT, request).await {
                        Ok(Ok(result)) => result,
                        Ok(Err(e)) if e.is_cancelled() => continue,
                        Ok(Err(e)) => Err(format!("part {}: {e}", index + 1)),
                        Err(_) => Err(format!(
                            "part {}: the bucket did not answer within {} s",
                            index + 1,
                            BUCKET_WAIT.as_secs()
                        )),
                    };
                    self.take_result(index, result);
                }
            } else {
                i += 1;
            }
        }
        match &self.failed {
            Some(e) => Err(failed(e)),
            None => Ok(()),
        }
    }

    /// Starts the next part's request; its body is what [`S3Partial::send`] queues.
    fn open_part(&mut self) {
        let index = self.next_part;
        self.next_part += 1;
        let len = self
            .state
            .part_size
            .min(self.size - index as u64 * self.state.part_size);
        // Unbounded: what bounds it is the permits each piece holds.
        let (queue, rx) = mpsc::unbounded_channel::<(Bytes, OwnedSemaphorePermit)>();
        let body = futures::stream::unfold(rx, |mut rx| async move {
            let (piece, _permit) = rx.recv().await?;
            Some((Ok::<_, std::io::Error>(piece), rx))
        });
        let store = self.store.clone();
        let key = data_key(&self.store, &self.k);
        let upload_id = self.state.upload_id.clone();
        let request = tokio::spawn(async move {
            store
                .inner
                .raw
                .upload_part(&key, &upload_id, index + 1, len, body)
                .await
        });
        self.filling = Some(Filling {
            index,
            len,
            sent: 0,
            queue,
            request,
        });
    }

    /// Queues one piece (at most [`QUEUE_PIECE`]) of the part being filled; a part whose last
    /// byte is queued moves on to wait for the bucket's answer.
    async fn send(&mut self, piece: Bytes) -> Result<(), StoreError> {
        let Some(f) = self.filling.as_mut() else {
            return Err(failed("no part is open"));
        };
        let n = piece.len() as u64;
        let permits = n.div_ceil(1024).max(1) as u32;
        let permit = self.store.inner.queued.clone().acquire_many_owned(permits);
        let sent = match tokio::time::timeout(BUCKET_WAIT, permit).await {
            // A copy of exactly its size: a piece cut from a front end's read buffer would keep
            // the whole buffer alive while it waits, more memory than its permits say.
            Ok(Ok(permit)) => Ok(f
                .queue
                .send((Bytes::copy_from_slice(&piece), permit))
                .is_ok()),
            Ok(Err(_)) => Ok(false),
            Err(e) => Err(e),
        };
        match sent {
            Ok(true) => {}
            Ok(false) => {
                // The request ended before its body: its answer says why.
                let f = self.filling.take().map(|f| (f.index, f.request));
                if let Some((index, request)) = f {
                    let why = match request.await {
                        Ok(Err(e)) => e,
                        Ok(Ok(_)) => format!("part {}: answered before its body", index + 1),
                        Err(e) => format!("part {}: {e}", index + 1),
                    };
                    self.failed.get_or_insert(why);
                }
                return Err(failed(self.failed.as_deref().unwrap_or("part failed")));
            }
            Err(_) => {
                let why = format!(
                    "part {}: the bucket took no bytes for {} s",
                    f.index + 1,
                    BUCKET_WAIT.as_secs()
                );
                self.failed.get_or_insert(why.clone());
                return Err(failed(&why));
            }
        }
        f.sent += n;
        self.written += n;
        if f.sent == f.len
            && let Some(f) = self.filling.take()
        {
            drop(f.queue);
            self.completing.push_back((f.index, f.request));
        }
        Ok(())
    }

    /// Waits until the parts before `index`, but for the `parts_in_flight - 1` last, are
    /// answered and, verified, saved in the state: what a killed server loses stays within
    /// `parts_in_flight` parts.
    async fn settle(&mut self, index: usize) -> Result<(), StoreError> {
        let need = (index + 1).saturating_sub(self.store.inner.config.parts_in_flight.max(1));
        if self.durable_parts >= need {
            return Ok(());
        }
        while self.state.parts.len() < need && !self.completing.is_empty() {
            // The oldest part's answer.
            self.collect(self.completing.len() - 1).await?;
            if self.record_parts() {
                self.save_state(true, false).await?;
            }
        }
        // What the answers added must be in the bucket before more bytes come in.
        self.saved().await
    }

    fn abort_requests(&mut self) {
        if let Some((_, saving)) = self.saving.take() {
            saving.abort();
        }
        if let Some(f) = self.filling.take() {
            f.request.abort();
        }
        for (_, request) in &self.completing {
            request.abort();
        }
    }

    /// Moves uploaded parts whose chunks are all verified into the state, in order.
    fn record_parts(&mut self) -> bool {
        let mut moved = false;
        loop {
            let index = self.state.parts.len();
            let covered = (index as u64 + 1) * self.state.part_size;
            if covered > self.size || (self.cvs.len() as u64) * CHUNK < covered {
                break;
            }
            let Some(id) = self.done.remove(&index) else {
                break;
            };
            self.state.parts.push(id.content_id);
            moved = true;
        }
        moved
    }

    /// Waits for the state save under way, if any.
    async fn saved(&mut self) -> Result<(), StoreError> {
        let Some((parts, saving)) = self.saving.take() else {
            return Ok(());
        };
        let result = match saving.await {
            Ok(result) => result,
            Err(e) => Err(failed(&format!("state save: {e}"))),
        };
        match &result {
            Ok(()) => self.durable_parts = parts,
            Err(e) => {
                self.failed.get_or_insert_with(|| e.to_string());
            }
        }
        result
    }

    /// Saves the state: the recorded parts, their chunks' CVs, and the lease (held for another
    /// [`LEASE`], or given up). One save at a time, in order; with `wait` false this one goes on
    /// while bytes keep flowing ([`S3Partial::saved`] waits for it).
    async fn save_state(&mut self, hold: bool, wait: bool) -> Result<(), StoreError> {
        self.saved().await?;
        // Taken over by another server (this one stalled past its lease): stop writing. Nobody
        // can have while more than half the lease this process saved last is left, so the
        // state is read back only then, not once a part.
        let held = self.state.lease_until_ms > now_ms() + LEASE.as_millis() as u64 / 2;
        if !held
            && let Some(now) = load(&self.store, &self.k).await?
            && now.owner != self.state.owner
        {
            self.failed = Some("another server took this upload over".into());
            return Err(StoreError::Busy(self.store.shown(&self.state.target)));
        }
        let chunks = (self.state.parts.len() as u64 * self.state.part_size / CHUNK) as usize;
        self.state.cvs = self.cvs[..chunks.min(self.cvs.len())]
            .iter()
            .map(hex)
            .collect();
        self.state.touched = now_secs();
        self.state.lease_until_ms = if hold {
            now_ms() + LEASE.as_millis() as u64
        } else {
            0
        };
        let parts = self.state.parts.len();
        if wait {
            save(&self.store, &self.k, &self.state).await?;
            self.durable_parts = parts;
            return Ok(());
        }
        let (store, k, state) = (self.store.clone(), self.k.clone(), self.state.clone());
        let saving = tokio::spawn(async move { save(&store, &k, &state).await });
        self.saving = Some((parts, saving));
        Ok(())
    }

    /// Records finished parts and saves the state when they moved (or the lease needs renewing).
    async fn advance(&mut self) -> Result<(), StoreError> {
        let moved = self.record_parts();
        let renew = self.state.lease_until_ms < now_ms() + LEASE.as_millis() as u64 / 2;
        if self.resumable && (moved || renew) {
            self.save_state(true, false).await?;
        }
        Ok(())
    }

    async fn put_final(
        &mut self,
        target: &str,
        data: Bytes,
        meta: &[(&str, String)],
    ) -> Result<(), StoreError> {
        let mut attributes = object_store::Attributes::new();
        for (name, value) in meta {
            attributes.insert(
                object_store::Attribute::Metadata((*name).to_owned().into()),
                value.clone().into(),
            );
        }
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .inner
            .s3
            .put_opts(&Key::from(target), PutPayload::from(data), opts)
            .await
            .map_err(io_error)?;
        Ok(())
    }

    async fn finish(&mut self, digest: Cv, on_conflict: OnConflict) -> Result<Stored, StoreError> {
        let chunks = chunk_count(self.size);
        if self.cvs.len() as u64 != chunks || self.written != self.size {
            return Err(StoreError::BadRequest(format!(
                "end after {} of {chunks} chunks",
                self.cvs.len()
            )));
        }
        let store = self.store.clone();
        let target = store.publish_key(&self.state.target, on_conflict).await?;
        let replaced = if on_conflict == OnConflict::Overwrite {
            store.head(&target).await?.map_or(0, |(s, _, _)| s)
        } else {
            0
        };
        let meta = [
            (DIGEST_META, hex(&digest)),
            (MTIME_META, self.mtime.unwrap_or_else(now_secs).to_string()),
        ];
        if let Some(whole) = self.whole.take() {
            // A small file, here whole: one put, no multipart and no copy.
            self.put_final(&target, whole.freeze(), &meta).await?;
        } else {
            if self.filling.is_some() {
                return Err(failed("a part is still open at the end"));
            }
            // No save may land after the state is deleted below.
            self.saved().await?;
            self.collect(0).await?;
            let mut parts = Vec::with_capacity(self.next_part);
            for etag in &self.state.parts {
                parts.push(PartId {
                    content_id: etag.clone(),
                });
            }
            for index in self.state.parts.len()..self.next_part {
                match self.done.remove(&index) {
                    Some(id) => parts.push(id),
                    None => return Err(failed(&format!("part {} is missing", index + 1))),
                }
            }
            let data = self.data_key();
            store
                .inner
                .s3
                .complete_multipart(&data, &self.state.upload_id, parts)
                .await
                .map_err(io_error)?;
            store
                .inner
                .raw
                .copy_with_metadata(data.as_ref(), &target, &meta)
                .await?;
            for key in [state_key(&store, &self.k), data_key(&store, &self.k)] {
                if let Err(e) = store.inner.s3.delete(&Key::from(key)).await {
                    warn!(error = %e, "cannot delete a finished upload's state");
                }
            }
        }
        if let Some(r) = self.reservation.take() {
            r.keep();
        }
        if let Some(q) = &store.inner.config.quota {
            q.release(replaced);
        }
        self.finished = true;
        Ok(Stored {
            name: S3Store::stored_name(&target),
            size: self.size,
            digest: Some(digest),
        })
    }

    /// Keeps what is verified for a resume and gives up the lease (or, if not resumable,
    /// throws everything away).
    async fn keep(&mut self) {
        self.finished = true;
        // The part being filled cannot be finished: a part is stored whole or not at all.
        if let Some(f) = self.filling.take() {
            f.request.abort();
        }
        if !self.resumable {
            self.abort_requests();
            forget(&self.store, &self.k, &self.state.upload_id).await;
            return;
        }
        let _ = self.collect(0).await;
        // Parts that arrived but whose chunks were not all verified stay out of the state.
        self.record_parts();
        if let Err(e) = self.save_state(false, true).await {
            warn!(error = %e, "cannot save an interrupted upload's state in the bucket");
        }
    }
}

impl Drop for S3Partial {
    fn drop(&mut self) {
        self.abort_requests();
        self.store
            .inner
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.k);
        if self.finished {
            return;
        }
        // Dropped without suspend: keep what the state already records, without the lease.
        let (store, k, mut state, resumable) = (
            self.store.clone(),
            self.k.clone(),
            self.state.clone(),
            self.resumable,
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if resumable {
                    state.lease_until_ms = 0;
                    let _ = save(&store, &k, &state).await;
                } else {
                    forget(&store, &k, &state.upload_id).await;
                }
            });
        }
    }
}

impl Partial for S3Partial {
    fn verified_bytes(&self) -> u64 {
        (self.cvs.len() as u64 * CHUNK).min(self.size)
    }

    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if let Some(e) = &self.failed {
                return Err(failed(e));
            }
            let end = self.written + bytes.len() as u64;
            if end > self.size {
                return Err(StoreError::SizeMismatch {
                    written: end,
                    expected: self.size,
                });
            }
            if let Some(whole) = self.whole.as_mut() {
                whole.extend_from_slice(&bytes);
                self.written = end;
                return Ok(());
            }
            let mut bytes = bytes;
            while !bytes.is_empty() {
                if self.filling.is_none() {
                    self.open_part();
                }
                let (index, room, sent) = match &self.filling {
                    Some(f) => (f.index, f.len - f.sent, f.sent),
                    None => return Err(failed("no part is open")),
                };
                let n = (bytes.len() as u64).min(room).min(QUEUE_PIECE as u64);
                // With one part in flight a new part waits for the one before from its first
                // byte (letting its first chunk in lost a part, a chunk and the next read: 9.27 MiB
                // with 8 MiB parts in a CI run); with more, from its second chunk (13 % faster
                // on garage with two).
                let overlap = if self.store.inner.config.parts_in_flight > 1 {
                    CHUNK
                } else {
                    0
                };
                if self.resumable && sent + n > overlap {
                    self.settle(index).await?;
                }
                self.send(bytes.split_to(n as usize)).await?;
            }
            self.collect(usize::MAX).await?;
            self.advance().await
        })
    }

    fn verified(&mut self, cv: Cv) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let index = self.cvs.len() as u64;
            let end = index * CHUNK + chunk_len(self.size, index);
            if index >= chunk_count(self.size) || self.written < end {
                return Err(StoreError::BadRequest(format!(
                    "chunk {index} confirmed before its bytes were written"
                )));
            }
            self.cvs.push(cv);
            if (self.cvs.len() as u64 * CHUNK).is_multiple_of(self.state.part_size) {
                self.collect(usize::MAX).await?;
                self.advance().await?;
            }
            Ok(())
        })
    }

    fn failure(&self) -> BoxFuture<'_, StoreError> {
        // Part uploads report their failures through the next write.
        Box::pin(std::future::pending())
    }

    fn publish(
        mut self: Box<Self>,
        digest: Cv,
        on_conflict: OnConflict,
    ) -> BoxFuture<'static, Result<Stored, StoreError>> {
        Box::pin(async move {
            let result = self.finish(digest, on_conflict).await;
            if result.is_err() && !self.finished {
                // A verified file that could not be published (a conflict, the bucket failing):
                // keep it for a retry rather than lose the bytes.
                self.keep().await;
            }
            result
        })
    }

    fn suspend(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.keep().await })
    }

    fn discard(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.finished = true;
            self.abort_requests();
            forget(&self.store, &self.k, &self.state.upload_id).await;
        })
    }
}
