//! One upload fed by several connections at once (`send --streams N`): each connection — a lane —
//! carries every Nth chunk, and the stripe hands whole chunks to the transfer's one [`Receiver`] in
//! file order, so verification, the resume state and publishing are exactly a single connection's.
//!
//! A lane holds at most one chunk while it waits for its turn, and reads nothing more meanwhile:
//! TCP holds its sender back, so a striped upload costs at most `streams` chunks of memory here. A
//! lane that goes away before its last chunk fails the whole stripe (the chunks after the gap could
//! never be written); what was verified before stays kept for a resume. Every wait is bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use barge_proto::tree::{CHUNK, Cv, chunk_count, chunk_len};
use bytes::Bytes;
use tokio::sync::watch;

use super::Receiver;
use crate::store::{StoreError, Stored};

/// How long a lane waits for the chunks before its own, and the put's `end` for the last ones:
/// the other lanes' bytes arrive under their own connections' timeouts, this bounds the rest.
pub const TURN_WAIT: Duration = Duration::from_secs(60);

/// The turn value once the stripe has failed: no chunk has this index.
const FAILED: u64 = u64::MAX;

/// A striped upload (see the module documentation).
pub struct Stripe {
    streams: u64,
    /// The first chunk sent (the put's `from`, in chunks).
    first: u64,
    count: u64,
    size: u64,
    /// The token root of the session that started it: a join must come from the same root.
    root: Option<String>,
    upload: tokio::sync::Mutex<Option<Box<Receiver>>>,
    /// The next chunk the receiver takes, or [`FAILED`].
    turn: watch::Sender<u64>,
    failure: Mutex<Option<StoreError>>,
    /// Which streams have their lane (stream 0 is the put's own).
    taken: Mutex<Vec<bool>>,
    wait: Duration,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("streams", &self.streams)
            .field("first", &self.first)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// The same failure again, for the other lanes (a `StoreError` is not `Clone`: it may hold an
/// `io::Error`). Integrity and request errors keep their kind, which sets the reply's status.
fn echo(e: &StoreError) -> StoreError {
    match e {
        StoreError::Integrity(m) => StoreError::Integrity(m.clone()),
        StoreError::BadRequest(m) => StoreError::BadRequest(m.clone()),
        other => StoreError::Io(std::io::Error::other(other.to_string())),
    }
}

impl Stripe {
    /// Stripes `upload` over `streams` connections; returns it and stream 0's lane.
    pub fn new(
        upload: Receiver,
        streams: u32,
        root: Option<String>,
        wait: Duration,
    ) -> (Arc<Self>, Lane) {
        let size = upload.size();
        let first = upload.from() / CHUNK;
        let streams = u64::from(streams.max(1));
        let mut taken = vec![false; streams as usize];
        taken[0] = true;
        let stripe = Arc::new(Self {
            streams,
            first,
            count: chunk_count(size),
            size,
            root,
            upload: tokio::sync::Mutex::new(Some(Box::new(upload))),
            turn: watch::Sender::new(first),
            failure: Mutex::new(None),
            taken: Mutex::new(taken),
            wait,
        });
        // A stream that never joins would hold the upload (and its partial, which a retry then
        // cannot resume) until some lane's turn wait ran out: the joins get the join wait.
        let join_wait = JOIN_WAIT.min(wait);
        let watched = Arc::downgrade(&stripe);
        tokio::spawn(async move {
            tokio::time::sleep(join_wait).await;
            if let Some(stripe) = watched.upgrade() {
                stripe.check_joined(join_wait);
            }
        });
        let lane = Lane::new(&stripe, 0);
        (stripe, lane)
    }

    /// Fails the stripe if a stream that has chunks to carry has not joined.
    fn check_joined(&self, waited: Duration) {
        if *self.turn.borrow() >= self.count {
            return;
        }
        let missing = self.taken.lock().ok().and_then(|taken| {
            (0..self.streams).find(|&s| !taken[s as usize] && self.first + s < self.count)
        });
        if let Some(stream) = missing {
            self.fail(&StoreError::BadRequest(format!(
                "stream {stream} did not join within {} s",
                waited.as_secs()
            )));
        }
    }

    /// The lane of `stream` (1 ..= streams - 1), for a connection that joins. Each is given once.
    pub fn join(self: &Arc<Self>, stream: u32, root: Option<&str>) -> Result<Lane, StoreError> {
        if root != self.root.as_deref() {
            return Err(StoreError::BadRequest(
                "this stripe belongs to another token's folder".into(),
            ));
        }
        let stream = u64::from(stream);
        if stream == 0 || stream >= self.streams {
            return Err(StoreError::BadRequest(format!(
                "stream {stream} is not one of this stripe's (1 to {})",
                self.streams - 1
            )));
        }
        if self.failed().is_some() {
            return Err(self.failure_again());
        }
        let mut taken = self
            .taken
            .lock()
            .map_err(|_| StoreError::BadRequest("stripe unusable".into()))?;
        if std::mem::replace(&mut taken[stream as usize], true) {
            return Err(StoreError::BadRequest(format!(
                "stream {stream} has joined already"
            )));
        }
        Ok(Lane::new(self, stream))
    }

    fn failed(&self) -> Option<()> {
        (*self.turn.borrow() == FAILED).then_some(())
    }

    fn failure_again(&self) -> StoreError {
        match self.failure.lock().ok().as_deref().and_then(Option::as_ref) {
            Some(e) => echo(e),
            None => StoreError::BadRequest("the striped upload failed".into()),
        }
    }

    /// Fails the stripe (the first failure is the one every lane reports).
    pub fn fail(&self, e: &StoreError) {
        if let Ok(mut slot) = self.failure.lock()
            && slot.is_none()
        {
            *slot = Some(echo(e));
        }
        self.turn.send_replace(FAILED);
    }

    /// Resolves with the stripe's failure, once it has failed (another lane's chunk did not
    /// verify, or a lane went away): a connection reading its own chunks answers it at once.
    pub async fn failure(&self) -> StoreError {
        let mut turn = self.turn.subscribe();
        let _ = turn.wait_for(|&n| n == FAILED).await;
        self.failure_again()
    }

    /// Waits until the receiver takes chunk `index` next (or the stripe fails).
    async fn wait_turn(&self, index: u64) -> Result<(), StoreError> {
        let mut turn = self.turn.subscribe();
        let reached =
            tokio::time::timeout(self.wait, turn.wait_for(|&n| n == index || n == FAILED))
                .await
                .map(|r| r.map(|n| *n));
        match reached {
            Ok(Ok(n)) if n == index => Ok(()),
            Ok(_) => Err(self.failure_again()),
            Err(_) => {
                let e = StoreError::BadRequest(format!(
                    "chunk {index} waited {} s for the chunks before it",
                    self.wait.as_secs()
                ));
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Hands chunk `index` to the receiver in its turn.
    async fn deliver(&self, index: u64, chunk: Pending) -> Result<(), StoreError> {
        self.wait_turn(index).await?;
        let mut upload = self.upload.lock().await;
        let Some(receiver) = upload.as_mut() else {
            return Err(self.failure_again());
        };
        let written = async {
            receiver.begin_chunk(chunk.cv, chunk.len).await?;
            for piece in chunk.pieces {
                receiver.write(piece).await?;
            }
            Ok(())
        }
        .await;
        drop(upload);
        match written {
            Ok(()) => {
                self.turn.send_if_modified(|n| {
                    let ours = *n == index;
                    if ours {
                        *n = index + 1;
                    }
                    ours
                });
                Ok(())
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Bytes verified so far.
    pub async fn verified(&self) -> u64 {
        match self.upload.lock().await.as_ref() {
            Some(r) => r.verified(),
            None => 0,
        }
    }

    /// Where the upload started.
    pub fn from(&self) -> u64 {
        self.first * CHUNK
    }

    /// Waits for every lane's chunks, then finishes the upload (see [`Receiver::finish`]). On a
    /// failure the verified chunks are kept for a resume.
    pub async fn finish(&self, declared: Option<Cv>) -> Result<Stored, StoreError> {
        let done = self.wait_turn(self.count).await;
        let Some(receiver) = self.upload.lock().await.take() else {
            return Err(self.failure_again());
        };
        match done {
            Ok(()) => receiver.finish(declared).await,
            Err(e) => {
                receiver.suspend().await;
                Err(e)
            }
        }
    }

    /// Gives the upload up and keeps its verified chunks (the put's connection is gone).
    pub async fn suspend(&self, why: &str) {
        self.fail(&StoreError::BadRequest(why.into()));
        if let Some(receiver) = self.upload.lock().await.take() {
            receiver.suspend().await;
        }
    }
}

/// A chunk read whole, waiting for its turn.
struct Pending {
    cv: Cv,
    len: u64,
    filled: u64,
    pieces: Vec<Bytes>,
}

/// One connection's share of a stripe: chunks `first + stream`, then every `streams`th.
pub struct Lane {
    stripe: Arc<Stripe>,
    stream: u64,
    /// This lane's next chunk.
    next: u64,
    pending: Option<Pending>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("stream", &self.stream)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Lane {
    fn new(stripe: &Arc<Stripe>, stream: u64) -> Self {
        Self {
            stripe: stripe.clone(),
            stream,
            next: stripe.first + stream,
            pending: None,
        }
    }

    /// The stripe this lane feeds.
    pub fn stripe(&self) -> &Arc<Stripe> {
        &self.stripe
    }

    /// Whether every chunk of this lane has been handed over.
    pub fn done(&self) -> bool {
        self.next >= self.stripe.count
    }

    /// Starts this lane's next chunk, which must be `len` bytes and hash to `cv`.
    pub fn begin_chunk(&mut self, cv: Cv, len: u64) -> Result<(), StoreError> {
        let e = if self.pending.is_some() {
            StoreError::BadRequest("a data frame inside another".into())
        } else if self.done() {
            StoreError::BadRequest(format!(
                "more data frames than stream {} has chunks",
                self.stream
            ))
        } else if len != chunk_len(self.stripe.size, self.next) {
            StoreError::BadRequest(format!(
                "chunk {} is {} bytes, not {len}",
                self.next,
                chunk_len(self.stripe.size, self.next)
            ))
        } else {
            self.pending = Some(Pending {
                cv,
                len,
                filled: 0,
                pieces: Vec::new(),
            });
            return Ok(());
        };
        self.stripe.fail(&e);
        Err(e)
    }

    /// The next bytes of the chunk begun last; the chunk's last byte waits for its turn.
    pub async fn write(&mut self, piece: Bytes) -> Result<(), StoreError> {
        let Some(chunk) = self.pending.as_mut() else {
            let e = StoreError::BadRequest("chunk bytes outside a data frame".into());
            self.stripe.fail(&e);
            return Err(e);
        };
        chunk.filled += piece.len() as u64;
        if chunk.filled > chunk.len {
            let e = StoreError::BadRequest("more bytes than the chunk's length".into());
            self.stripe.fail(&e);
            return Err(e);
        }
        chunk.pieces.push(piece);
        if chunk.filled < chunk.len {
            return Ok(());
        }
        let Some(chunk) = self.pending.take() else {
            return Ok(());
        };
        let index = self.next;
        // Counted as handed over even if it fails: the stripe has failed then, and a lane that
        // failed must not also report itself as gone early.
        self.next += self.stripe.streams;
        self.stripe.deliver(index, chunk).await
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if !self.done() {
            self.stripe.fail(&StoreError::BadRequest(format!(
                "stream {} ended before its last chunk",
                self.stream
            )));
        }
    }
}

/// How long a `join` waits for its put to be set up: the put arrives on another connection, and
/// may be admitted a moment after the joins that were sent right behind it.
pub const JOIN_WAIT: Duration = Duration::from_secs(10);

/// The stripes a server has open, by key: where a `join` finds its upload.
#[derive(Debug, Default)]
pub struct Stripes {
    open: Mutex<HashMap<String, Weak<Stripe>>>,
    added: tokio::sync::Notify,
}

impl Stripes {
    /// Records `stripe` under `key`, unless a live stripe has it already.
    pub fn insert(&self, key: &str, stripe: &Arc<Stripe>) -> Result<(), StoreError> {
        let mut map = self
            .open
            .lock()
            .map_err(|_| StoreError::BadRequest("stripes unusable".into()))?;
        map.retain(|_, s| s.strong_count() > 0);
        if map.contains_key(key) {
            return Err(StoreError::BadRequest("stripe key in use".into()));
        }
        map.insert(key.to_owned(), Arc::downgrade(stripe));
        drop(map);
        self.added.notify_waiters();
        Ok(())
    }

    /// The live stripe of `key`, waiting up to `wait` for it to be opened.
    pub async fn find(&self, key: &str, wait: Duration) -> Option<Arc<Stripe>> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let added = self.added.notified();
            if let Some(found) = self.open.lock().ok()?.get(key).and_then(Weak::upgrade) {
                return Some(found);
            }
            tokio::time::timeout_at(until, added).await.ok()?;
        }
    }
}
