//! The v1 front end: barge's own protocol on the file port (verified, resumable uploads, folders,
//! listings, downloads). It decodes frames, calls the transfer core's session and encodes
//! replies: the request id rule, reply batching and the skip-to-`end` of a refused upload live
//! here; admission, verification and storage do not. Every request gets a reply; a refused
//! upload's data frames are skipped up to its `end`, so a pipelining client's later files are
//! still served.

use std::time::Instant;

use std::sync::atomic::{AtomicUsize, Ordering};

use barge_proto::tree::{Cv, hex, parse_hex};
use barge_proto::wire::{
    self, Frame, Item, MAX_JSON, PREFACE_LEN, Reply, Request, Status, VERSION, WireError,
};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use super::files::{FileError, FileService, READ_CHUNK};
use crate::server::Connection;
use crate::store::{StoreError, Stored};
use crate::transfer::stripe::{JOIN_WAIT, Lane, Stripe};
use crate::transfer::{Action, Denied, Mode, Put, Receiver, SendError, Session};

/// Files up to this size are received into memory and stored in one step at their `end`: for
/// thousands of small files, a writer thread and its hand-offs per file would cost more than the
/// data. Small enough that hundreds of connections doing it at once stay within the memory budget.
const WHOLE_MAX: u64 = 64 << 10;

/// Socket reads are this large or smaller while file data streams in, whatever the number of
/// uploads: together they are the bulk of a server's memory.
const DATA_BUDGET: usize = 4 << 20;
/// Reads of bench data, which is dropped as soon as it is counted.
const BENCH_READ: usize = 1 << 20;
/// Smallest read while data streams in: below this, per-read costs would dominate.
const MIN_DATA_READ: usize = 64 << 10;

/// This connection's place among its server's connections receiving a data frame.
struct Receiving(std::sync::Arc<AtomicUsize>);

impl Receiving {
    fn start(count: &std::sync::Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Receiving(count.clone())
    }

    /// Reads share [`DATA_BUDGET`]: up to [`READ_CHUNK`] each for a few uploads, less for many.
    fn read_size(&self) -> usize {
        let n = self.0.load(Ordering::Relaxed).max(1);
        (DATA_BUDGET / n).clamp(MIN_DATA_READ, READ_CHUNK)
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Listing entries are sent in pages whose JSON stays well inside [`MAX_JSON`].
const PAGE_BUDGET: usize = MAX_JSON / 2;

/// Where the conversation is between frames.
enum State {
    /// Between requests.
    Idle,
    /// Receiving the data of put `id`.
    Receiving {
        id: u64,
        path: String,
        upload: Box<Receiver>,
        started: Instant,
    },
    /// Receiving small put `id` whole into memory (see [`WHOLE_MAX`]).
    Whole {
        id: u64,
        path: String,
        size: u64,
        data: BytesMut,
        cv: Option<Cv>,
        started: Instant,
        /// The digest of the stored version this put replaces (an update).
        replaces: Option<Cv>,
        /// The sender's modification time.
        mtime: Option<i64>,
    },
    /// Receiving put `id`'s own share of a striped upload (stream 0).
    Striped {
        id: u64,
        path: String,
        lane: Box<Lane>,
        started: Instant,
    },
    /// Receiving join `id`'s share of a striped upload; answered after its last chunk.
    Joined { id: u64, lane: Box<Lane> },
    /// Put `id` was refused or failed (and its reply sent): its frames are dropped up to `end`.
    Skipping { id: u64 },
    /// Counting and dropping the data of bench `id`.
    Benching { id: u64, left: u64, size: u64 },
}

/// The reply status for a storage error.
pub fn status_of(e: &StoreError) -> Status {
    match e {
        StoreError::Name(_) => Status::NameRejected,
        StoreError::TooLarge { .. } => Status::TooLarge,
        StoreError::NoSpace { .. } => Status::NoSpace,
        StoreError::Conflict(_) | StoreError::NotAFolder(_) | StoreError::NotEmpty(_) => {
            Status::Conflict
        }
        StoreError::SizeMismatch { .. } | StoreError::BadRequest(_) | StoreError::IntoItself(_) => {
            Status::BadRequest
        }
        StoreError::Integrity(_) => Status::Integrity,
        StoreError::Busy(_) => Status::Busy,
        StoreError::NotFound(_) => Status::NotFound,
        StoreError::QuotaExceeded { .. } => Status::QuotaExceeded,
        StoreError::BadDirectory(_) | StoreError::Io(_) | StoreError::Unsupported(_) => {
            Status::Internal
        }
    }
}

fn refusal(id: u64, e: &StoreError) -> Reply {
    Reply::error(id, status_of(e), e.to_string())
}

/// Serves a connection that began with barge's preface; `buf` holds what was read so far.
pub async fn serve<S>(
    service: &FileService,
    mut conn: Connection<S>,
    mut buf: BytesMut,
) -> Result<(), FileError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut started = Some(tokio::time::Instant::now());
    while buf.len() < PREFACE_LEN {
        if read(&mut conn, &mut buf, false, &mut started).await? == 0 {
            return Err(FileError::TruncatedHeader(buf.len()));
        }
    }
    let version = wire::parse_preface(&buf)?.unwrap_or(0);
    buf.advance(PREFACE_LEN);
    conn.stream.write_all(&wire::preface(VERSION)).await?;
    if service.tls_required() && !conn.secure {
        send_now(
            &mut conn,
            &Reply::error(
                0,
                Status::Forbidden,
                "this server only speaks barge's protocol over TLS (connect with --tls)",
            ),
        )
        .await?;
        return Err(FileError::Protocol(
            "plain-text barge connection refused: TLS is required".into(),
        ));
    }
    if version < 1 {
        send_now(
            &mut conn,
            &Reply::error(0, Status::BadRequest, "unsupported protocol version"),
        )
        .await?;
        return Err(FileError::Protocol(format!(
            "client speaks version {version}"
        )));
    }
    let mut state = State::Idle;
    let result = converse(service, &mut conn, &mut buf, &mut state).await;
    match state {
        State::Receiving { upload, path, .. } => {
            // Connection lost mid-file: keep the verified part for a resume.
            let kept = upload.verified();
            upload.suspend().await;
            info!(path = ?path, kept, "upload interrupted; resumable");
        }
        State::Striped { lane, path, .. } => {
            let stripe = lane.stripe().clone();
            drop(lane);
            let kept = stripe.verified().await;
            stripe.suspend("the put's connection ended").await;
            info!(path = ?path, kept, "striped upload interrupted; resumable");
        }
        _ => {}
    }
    result
}

/// Reads more bytes; between requests a shutdown request ends the conversation (`Ok(0)` is then
/// reported as a clean end by the caller's state).
/// Between requests, and inside a request frame (`started` set), the header timeout applies.
async fn read<S: AsyncRead + Unpin>(
    conn: &mut Connection<S>,
    buf: &mut BytesMut,
    idle: bool,
    started: &mut Option<tokio::time::Instant>,
) -> Result<usize, FileError> {
    if idle || started.is_some() {
        Ok(conn
            .read_header(buf, READ_CHUNK, started)
            .await?
            .unwrap_or(0))
    } else {
        buf.reserve(READ_CHUNK);
        Ok(conn.stream.read_buf(buf).await?)
    }
}

/// Reads up to `size` more bytes of a data frame (never more: what sits in `buf` is memory held).
async fn read_data<S: AsyncRead + Unpin>(
    conn: &mut Connection<S>,
    buf: &mut BytesMut,
    size: usize,
) -> Result<usize, FileError> {
    if buf.capacity() - buf.len() < size {
        if buf.is_empty() {
            // Reuse the buffer once every piece cut from it is gone (written, or dropped by a
            // bench); else a fresh one of exactly this size, as pieces in flight keep the old alive.
            if !buf.try_reclaim(size) {
                *buf = BytesMut::with_capacity(size);
            }
        } else {
            buf.reserve(size);
        }
    }
    let mut limited = (&mut conn.stream).take(size as u64);
    Ok(limited.read_buf(buf).await?)
}

/// An upload failed (refused chunk, bad digest, disk error): reply now, then skip its data.
async fn upload_failed<S: AsyncWrite + Unpin>(
    conn: &mut Conv<'_, S>,
    state: &mut State,
    e: StoreError,
) -> Result<(), FileError> {
    let (id, verified) = match state {
        State::Receiving { upload, id, .. } => (*id, upload.verified()),
        State::Whole { id, .. } => (*id, 0),
        State::Striped { id, lane, .. } => {
            lane.stripe().fail(&e);
            (*id, lane.stripe().verified().await)
        }
        State::Joined { id, .. } => {
            // A join has no end to skip to: its connection goes, after the answer.
            let reply = refusal(*id, &e);
            warn!(error = %e, "striped upload failed");
            send(conn, &reply).await?;
            conn.flush().await?;
            let _ = conn.stream.shutdown().await;
            return Err(FileError::Protocol(format!("join failed: {e}")));
        }
        _ => return Ok(()),
    };
    let mut reply = refusal(id, &e);
    reply.offset = Some(verified);
    warn!(error = %e, "upload failed; skipping its remaining data");
    send(conn, &reply).await?;
    match std::mem::replace(state, State::Skipping { id }) {
        State::Receiving { upload, .. } => upload.suspend().await,
        State::Striped { lane, .. } => {
            let stripe = lane.stripe().clone();
            drop(lane);
            stripe.suspend("the put failed").await;
        }
        _ => {}
    }
    Ok(())
}

/// Refuses the whole connection: a reply with id 0 (never a client's), then the connection closes.
async fn refuse_connection<S: AsyncWrite + Unpin>(
    conn: &mut Conv<'_, S>,
    status: Status,
    why: impl Into<String>,
) -> Result<(), FileError> {
    let why = why.into();
    send(conn, &Reply::error(0, status, why.clone())).await?;
    conn.flush().await?;
    let _ = conn.stream.shutdown().await;
    Err(FileError::Protocol(why))
}

/// Sends a reply at once (outside the conversation loop).
async fn send_now<S: AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    reply: &Reply,
) -> Result<(), FileError> {
    let mut out = BytesMut::with_capacity(256);
    wire::encode_reply(reply, &mut out);
    conn.stream.write_all(&out).await?;
    Ok(())
}

/// Replies gathered up to this many bytes go out in one write.
const REPLY_BATCH: usize = 64 * 1024;

/// A connection whose replies are gathered and written when the client has nothing more to say
/// for now (before any read that would wait), or when a batch is full: a client pipelining
/// thousands of small files then gets a few hundred writes back instead of one per file.
struct Conv<'a, S> {
    conn: &'a mut Connection<S>,
    out: BytesMut,
    /// Replies that must wait for a small file being stored before them; in request order.
    queue: std::collections::VecDeque<Pending>,
    /// Bytes of the small files being stored.
    storing: u64,
}

impl<S> std::ops::Deref for Conv<'_, S> {
    type Target = Connection<S>;
    fn deref(&self) -> &Connection<S> {
        self.conn
    }
}

impl<S> std::ops::DerefMut for Conv<'_, S> {
    fn deref_mut(&mut self) -> &mut Connection<S> {
        self.conn
    }
}

impl<S: AsyncWrite + Unpin> Conv<'_, S> {
    /// Waits for the small files being stored and queues every pending reply, in order.
    async fn settle(&mut self) -> Result<(), FileError> {
        while let Some(pending) = self.queue.pop_front() {
            let reply = match pending {
                Pending::Ready(reply) => reply,
                Pending::Store(store) => {
                    self.storing -= store.size;
                    store.reply().await
                }
            };
            wire::encode_reply(&reply, &mut self.out);
        }
        Ok(())
    }

    /// Settles, then writes everything queued.
    async fn flush(&mut self) -> Result<(), FileError> {
        self.settle().await?;
        if !self.out.is_empty() {
            let result = self.conn.stream.write_all_buf(&mut self.out).await;
            self.out.clear();
            result?;
        }
        Ok(())
    }
}

async fn send<S: AsyncWrite + Unpin>(
    conn: &mut Conv<'_, S>,
    reply: &Reply,
) -> Result<(), FileError> {
    if !conn.queue.is_empty() {
        conn.queue.push_back(Pending::Ready(reply.clone()));
        return Ok(());
    }
    wire::encode_reply(reply, &mut conn.out);
    if conn.out.len() >= REPLY_BATCH {
        conn.flush().await?;
    }
    Ok(())
}

async fn converse<S>(
    service: &FileService,
    conn: &mut Connection<S>,
    buf: &mut BytesMut,
    state: &mut State,
) -> Result<(), FileError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let conn = &mut Conv {
        conn,
        out: BytesMut::new(),
        queue: std::collections::VecDeque::new(),
        storing: 0,
    };
    let result = talk(service, conn, buf, state).await;
    // What was answered reaches the client even when the conversation ends on an error.
    let flushed = conn.flush().await;
    result.and(flushed)
}

async fn talk<S>(
    service: &FileService,
    conn: &mut Conv<'_, S>,
    buf: &mut BytesMut,
    state: &mut State,
) -> Result<(), FileError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Without tokens every connection has every right the server allows.
    let mut session = service.core().session(conn.peer);
    let mut started = None;
    // The highest request id so far (see the id rule where requests are read).
    let mut last_id = 0u64;
    // Frames whole, data frames as pieces; and this connection's place among receivers while a
    // data frame streams in.
    let mut decoder = wire::StreamDecoder::new();
    let mut receiving: Option<Receiving> = None;
    loop {
        let step = loop {
            let decoded = match decoder.decode(buf) {
                Ok(decoded) => decoded,
                // The stream is out of step (unknown kind, bad length): nothing more can be read
                // from it, so the refusal concerns the whole connection.
                Err(e) => return refuse_connection(conn, Status::BadRequest, e.to_string()).await,
            };
            if let Some(item) = decoded {
                match &item {
                    Item::Piece(_) => {}
                    Item::Data { len, .. } if *len > 0 => {
                        receiving = Some(Receiving::start(service.receiving()));
                    }
                    _ => {}
                }
                if decoder.data_left() == 0 {
                    receiving = None;
                }
                if !matches!(item, Item::Piece(_)) {
                    started = None;
                    conn.request_done();
                }
                break item;
            }
            let data_left = decoder.data_left();
            let idle = matches!(state, State::Idle) && data_left == 0;
            conn.flush().await?;
            let outcome = {
                let reading = async {
                    if data_left > 0 {
                        // Chunk bytes go to the writer as read: the read size bounds this
                        // upload's memory.
                        let size = match state {
                            // Nothing is kept of bench data: read as much as the socket holds.
                            State::Benching { .. } => BENCH_READ,
                            _ => receiving.as_ref().map_or(READ_CHUNK, Receiving::read_size),
                        };
                        read_data(conn, buf, size.min(data_left)).await
                    } else {
                        read(conn, buf, idle, &mut started).await
                    }
                };
                // A chunk that fails verification is answered at once, not when the next frame
                // of its put arrives (reads are cancel-safe: nothing read is lost).
                let failed = async {
                    match &*state {
                        State::Receiving { upload, .. } => upload.failure().await,
                        State::Striped { lane, .. } | State::Joined { lane, .. } => {
                            lane.stripe().failure().await
                        }
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    n = reading => Ok(n),
                    e = failed => Err(e),
                }
            };
            let n = match outcome {
                Ok(n) => n?,
                Err(e) => {
                    upload_failed(conn, state, e).await?;
                    continue;
                }
            };
            if n == 0 {
                return if idle && buf.is_empty() {
                    Ok(())
                } else {
                    Err(FileError::Protocol(
                        "connection closed inside a request".into(),
                    ))
                };
            }
        };
        let frame = match step {
            Item::Data { cv, len } => {
                match state {
                    State::Receiving { upload, .. } => {
                        if let Err(e) = upload.begin_chunk(cv, len as u64).await {
                            upload_failed(conn, state, e).await?;
                        }
                    }
                    State::Whole { size, cv: slot, .. } => {
                        if slot.is_some() || len as u64 != *size {
                            let e = StoreError::BadRequest(format!(
                                "a {len}-byte chunk does not fit this file"
                            ));
                            upload_failed(conn, state, e).await?;
                        } else {
                            *slot = Some(cv);
                        }
                    }
                    State::Striped { lane, .. } | State::Joined { lane, .. } => {
                        if let Err(e) = lane.begin_chunk(cv, len as u64) {
                            upload_failed(conn, state, e).await?;
                        }
                    }
                    State::Skipping { .. } => {}
                    State::Benching { left, .. } => {
                        if len as u64 > *left {
                            let why = "more bench data than announced";
                            return refuse_connection(conn, Status::BadRequest, why).await;
                        }
                    }
                    State::Idle => {
                        // Data no put or bench announced: whose it is cannot be known.
                        let why = "a data frame outside a put";
                        return refuse_connection(conn, Status::BadRequest, why).await;
                    }
                }
                continue;
            }
            Item::Invalid { id, error } => {
                // The frame was whole, so the stream is still in step: the request is answered
                // when it has a usable id, else the connection is refused.
                match id {
                    Some(id) if id > last_id => {
                        last_id = id;
                        warn!(id, error = %error, "invalid request");
                        let message = format!("invalid request: {error}");
                        send(conn, &Reply::error(id, Status::BadRequest, message)).await?;
                    }
                    _ => {
                        let why = format!("invalid request without a usable id: {error}");
                        return refuse_connection(conn, Status::BadRequest, why).await;
                    }
                }
                continue;
            }
            Item::Piece(piece) => {
                match state {
                    State::Receiving { upload, .. } => {
                        if let Err(e) = upload.write(piece).await {
                            upload_failed(conn, state, e).await?;
                        }
                    }
                    State::Whole { data, .. } => data.extend_from_slice(&piece),
                    State::Striped { lane, .. } => {
                        if let Err(e) = lane.write(piece).await {
                            upload_failed(conn, state, e).await?;
                        }
                    }
                    State::Joined { id, lane } => {
                        if let Err(e) = lane.write(piece).await {
                            upload_failed(conn, state, e).await?;
                        } else if lane.done() {
                            let reply = Reply::ok(*id);
                            *state = State::Idle;
                            send(conn, &reply).await?;
                        }
                    }
                    State::Benching { id, left, size } => {
                        *left -= piece.len() as u64;
                        if *left == 0 {
                            let reply = Reply {
                                size: Some(*size),
                                ..Reply::ok(*id)
                            };
                            *state = State::Idle;
                            send(conn, &reply).await?;
                        }
                    }
                    State::Skipping { .. } | State::Idle => {}
                }
                continue;
            }
            Item::Frame(frame) => frame,
        };
        if let Frame::Request(req) = &frame
            && !matches!(req, Request::End { .. })
        {
            // Ids are positive and increase on a connection, so a reply always names one request
            // and id 0 stays the server's, for refusing the connection.
            let id = req.id();
            if id <= last_id {
                let why = format!("request ids must increase: {id} after {last_id}");
                return refuse_connection(conn, Status::BadRequest, why).await;
            }
            last_id = id;
        }
        match frame {
            Frame::Data { .. } => {
                return Err(FileError::Protocol("unexpected whole data frame".into()));
            }
            Frame::Reply(_) => {
                return refuse_connection(conn, Status::BadRequest, "a client sent a reply").await;
            }
            Frame::Request(Request::End { id, digest }) => {
                match std::mem::replace(state, State::Idle) {
                    State::Receiving {
                        id: put_id,
                        path,
                        upload,
                        started,
                    } if put_id == id => {
                        let Some(digest) = parse_hex(&digest) else {
                            send(
                                conn,
                                &Reply::error(
                                    id,
                                    Status::BadRequest,
                                    "digest is not 64 hex digits",
                                ),
                            )
                            .await?;
                            upload.suspend().await;
                            continue;
                        };
                        let verified = upload.verified();
                        let from = upload.from();
                        let reply = match upload.finish(Some(digest)).await {
                            Ok(stored) => completed(id, &path, &stored, from, started),
                            Err(e) => {
                                warn!(path = ?path, error = %e, "upload not stored");
                                let mut reply = refusal(id, &e);
                                // What is kept for a resume: the verified chunks after an early
                                // end; nothing after a whole-file digest mismatch.
                                reply.offset = match e {
                                    StoreError::BadRequest(_) => Some(verified),
                                    StoreError::Integrity(_) => Some(0),
                                    _ => None,
                                };
                                reply
                            }
                        };
                        send(conn, &reply).await?;
                    }
                    State::Whole {
                        id: put_id,
                        path,
                        data,
                        cv,
                        started,
                        replaces,
                        mtime,
                        ..
                    } if put_id == id => {
                        let Some(digest) = parse_hex(&digest) else {
                            let reply =
                                Reply::error(id, Status::BadRequest, "digest is not 64 hex digits");
                            send(conn, &reply).await?;
                            continue;
                        };
                        let data = data.freeze();
                        let size = data.len() as u64;
                        if conn.storing + size > STORES_MAX_BYTES {
                            conn.settle().await?;
                        }
                        let target = path.clone();
                        let st = session.clone();
                        let task = tokio::spawn(async move {
                            st.store_small(&target, data, cv, digest, replaces, mtime)
                                .await
                        });
                        conn.storing += size;
                        conn.queue.push_back(Pending::Store(Store {
                            id,
                            path,
                            started,
                            size,
                            task,
                        }));
                    }
                    State::Striped {
                        id: put_id,
                        path,
                        lane,
                        started,
                    } if put_id == id => {
                        let stripe = lane.stripe().clone();
                        let own_done = lane.done();
                        drop(lane);
                        let from = stripe.from();
                        let result = match parse_hex(&digest) {
                            _ if !own_done => Err(StoreError::BadRequest(
                                "end before this connection's last chunk".into(),
                            )),
                            None => {
                                Err(StoreError::BadRequest("digest is not 64 hex digits".into()))
                            }
                            Some(digest) => stripe.finish(Some(digest)).await,
                        };
                        let reply = match result {
                            Ok(stored) => completed(id, &path, &stored, from, started),
                            Err(e) => {
                                stripe.suspend("the put failed").await;
                                warn!(path = ?path, error = %e, "striped upload not stored");
                                let mut reply = refusal(id, &e);
                                reply.offset = match e {
                                    StoreError::Integrity(_) if stripe.verified().await == 0 => {
                                        Some(0)
                                    }
                                    _ => Some(stripe.verified().await),
                                };
                                reply
                            }
                        };
                        send(conn, &reply).await?;
                    }
                    State::Skipping { id: skip_id } if skip_id == id => {}
                    other => {
                        *state = other;
                        send(
                            conn,
                            &Reply::error(id, Status::BadRequest, "end without a matching put"),
                        )
                        .await?;
                    }
                }
            }
            Frame::Request(req) if !matches!(state, State::Idle) => {
                // The put (or bench) in progress goes on; this request is answered and ignored.
                let message = format!("{} inside a put or bench: send its end first", req.op());
                send(conn, &Reply::error(req.id(), Status::BadRequest, message)).await?;
            }
            Frame::Request(Request::Auth { id, token }) => {
                // A second `auth` replaces the first entirely (see `Session::authenticate`).
                match session.authenticate(&token) {
                    Ok(()) => send(conn, &Reply::ok(id)).await?,
                    Err(denied) => {
                        // A connection-level refusal (id 0), as PROTOCOL.md specifies.
                        let why = format!("authentication refused: {denied}");
                        refuse_connection(conn, denied_status(&denied), why).await?;
                    }
                }
            }
            Frame::Request(req) if refused(&req, &session).is_some() => {
                let Some(reply) = refused(&req, &session) else {
                    continue;
                };
                warn!(request = req.op(), status = ?reply.status, "request refused");
                if session.rights().is_none() {
                    // Refuses the connection (id 0): nothing will work without a token.
                    send(conn, &Reply { id: 0, ..reply }).await?;
                    conn.flush().await?;
                    conn.stream.shutdown().await?;
                    return Err(FileError::Protocol("request without a token".into()));
                }
                send(conn, &reply).await?;
                match req {
                    Request::Put { id, .. } => *state = State::Skipping { id },
                    // Its data follows and has no end marker to skip to.
                    Request::Bench { .. } | Request::Join { .. } => {
                        return Err(FileError::Protocol("bench refused".into()));
                    }
                    _ => {}
                }
            }
            Frame::Request(Request::Probe { id, path, size }) => {
                let reply = match session.probe(&path, size).await {
                    Ok(p) => Reply {
                        offset: Some(p.offset),
                        prefix: Some(hex(&p.prefix)),
                        // A file already stored there, of that size: the client may be retrying
                        // an upload whose reply it lost.
                        digest: p.stored.map(|d| hex(&d)),
                        ..Reply::ok(id)
                    },
                    Err(e) => refusal(id, &e),
                };
                send(conn, &reply).await?;
            }
            Frame::Request(Request::Put {
                id,
                path,
                size,
                from,
                replaces,
                reuse,
                mtime,
                stripe,
            }) => {
                if let Some(spec) = &stripe
                    && let Err(why) = spec.check().and_then(|()| {
                        if reuse.is_some() {
                            Err("a striped put cannot reuse chunks".into())
                        } else {
                            Ok(())
                        }
                    })
                {
                    send(conn, &Reply::error(id, Status::BadRequest, why)).await?;
                    *state = State::Skipping { id };
                    continue;
                }
                let reuse = match reuse
                    .map(|r| wire::parse_chunk_set(&r, barge_proto::tree::chunk_count(size)))
                {
                    None => None,
                    Some(Ok(flags)) => Some(flags),
                    Some(Err(why)) => {
                        let why = format!("reuse: {why}");
                        send(conn, &Reply::error(id, Status::BadRequest, why)).await?;
                        *state = State::Skipping { id };
                        continue;
                    }
                };
                let replaces = match replaces.as_deref().map(parse_hex) {
                    None => None,
                    Some(Some(digest)) => Some(digest),
                    Some(None) => {
                        let why = "replaces is not 64 hex digits";
                        send(conn, &Reply::error(id, Status::BadRequest, why)).await?;
                        *state = State::Skipping { id };
                        continue;
                    }
                };
                if from == 0 && size <= WHOLE_MAX && reuse.is_none() && stripe.is_none() {
                    match session.admit(&path, size, 0) {
                        Ok(()) => {
                            *state = State::Whole {
                                id,
                                path,
                                size,
                                data: BytesMut::with_capacity(size as usize),
                                cv: None,
                                started: Instant::now(),
                                replaces,
                                mtime,
                            };
                        }
                        Err(e) => {
                            warn!(path = ?path, size, error = %e, "upload refused");
                            send(conn, &refusal(id, &e)).await?;
                            *state = State::Skipping { id };
                        }
                    }
                    continue;
                }
                let put = Put {
                    from,
                    mode: Mode::Check,
                    replaces,
                    reuse,
                    mtime,
                    ..Put::new(&path, size)
                };
                match session.receive(put).await {
                    Ok(upload) if stripe.is_some() => {
                        let spec = stripe.unwrap_or_else(|| unreachable!());
                        let root = session.root().map(str::to_owned);
                        let (shared, lane) =
                            Stripe::new(upload, spec.streams, root, service.stripe_wait());
                        if let Err(e) = service.stripes().insert(&spec.key, &shared) {
                            drop(lane);
                            shared.suspend("stripe key in use").await;
                            send(conn, &refusal(id, &e)).await?;
                            *state = State::Skipping { id };
                            continue;
                        }
                        *state = State::Striped {
                            id,
                            path,
                            lane: Box::new(lane),
                            started: Instant::now(),
                        };
                    }
                    Ok(upload) => {
                        *state = State::Receiving {
                            id,
                            path,
                            upload: Box::new(upload),
                            started: Instant::now(),
                        };
                    }
                    Err(e) => {
                        warn!(path = ?path, size, error = %e, "upload refused");
                        send(conn, &refusal(id, &e)).await?;
                        *state = State::Skipping { id };
                    }
                }
            }
            Frame::Request(Request::Join { id, key, stream }) => {
                let wait = JOIN_WAIT.min(service.stripe_wait());
                let joined = match service.stripes().find(&key, wait).await {
                    Some(stripe) => stripe.join(stream, session.root()),
                    None => Err(StoreError::BadRequest(
                        "no striped upload has this key".into(),
                    )),
                };
                match joined {
                    Ok(lane) if lane.done() => send(conn, &Reply::ok(id)).await?,
                    Ok(lane) => {
                        *state = State::Joined {
                            id,
                            lane: Box::new(lane),
                        }
                    }
                    Err(e) => {
                        // Its data follows and has no end marker to skip to.
                        warn!(error = %e, "join refused");
                        send(conn, &refusal(id, &e)).await?;
                        conn.flush().await?;
                        let _ = conn.stream.shutdown().await;
                        return Err(FileError::Protocol(format!("join refused: {e}")));
                    }
                }
            }
            Frame::Request(Request::Bench { id, size }) => {
                if size == 0 {
                    send(
                        conn,
                        &Reply {
                            size: Some(0),
                            ..Reply::ok(id)
                        },
                    )
                    .await?;
                } else {
                    *state = State::Benching {
                        id,
                        left: size,
                        size,
                    };
                }
            }
            Frame::Request(Request::Mkdir { id, path }) => {
                let reply = match session.mkdir(&path).await {
                    Ok(()) => Reply::ok(id),
                    Err(e) => refusal(id, &e),
                };
                send(conn, &reply).await?;
            }
            Frame::Request(Request::Delete {
                id,
                path,
                recursive,
            }) => {
                let reply = match session.remove(&path, recursive).await {
                    Ok(freed) => Reply {
                        size: Some(freed),
                        ..Reply::ok(id)
                    },
                    Err(e) => refusal(id, &e),
                };
                send(conn, &reply).await?;
            }
            Frame::Request(Request::Move { id, from, to }) => {
                let reply = match session.rename(&from, &to).await {
                    Ok(()) => Reply::ok(id),
                    Err(e) => refusal(id, &e),
                };
                send(conn, &reply).await?;
            }
            Frame::Request(Request::List {
                id,
                path,
                recursive,
            }) => match session.list(&path, recursive).await {
                Ok(Ok(entries)) => send_listing(conn, id, entries).await?,
                Ok(Err(e)) => send(conn, &refusal(id, &e)).await?,
                Err(denied) => {
                    let reply = Reply::error(id, denied_status(&denied), denied.to_string());
                    send(conn, &reply).await?;
                }
            },
            Frame::Request(Request::Cvs { id, path }) => match session.chunk_cvs(&path).await {
                Ok((meta, cvs)) => send_cvs(conn, id, meta, &cvs).await?,
                Err(e) => send(conn, &refusal(id, &e)).await?,
            },
            Frame::Request(Request::Get {
                id,
                path,
                from,
                digest,
            }) => {
                send_file(conn, &session, id, &path, from, digest.as_deref()).await?;
            }
        }
    }
}

/// A small file being stored on a blocking thread while the next requests are read.
struct Store {
    id: u64,
    path: String,
    started: Instant,
    size: u64,
    task: tokio::task::JoinHandle<Result<Stored, StoreError>>,
}

/// A reply not sent yet: ready, or waiting for its store to finish.
enum Pending {
    Ready(Reply),
    Store(Store),
}

impl Store {
    async fn reply(self) -> Reply {
        let result = match self.task.await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Io(std::io::Error::other(format!(
                "storing failed: {e}"
            )))),
        };
        match result {
            Ok(stored) => completed(self.id, &self.path, &stored, 0, self.started),
            Err(e) => {
                warn!(path = ?self.path, error = %e, "upload not stored");
                refusal(self.id, &e)
            }
        }
    }
}

/// Bytes of small files a connection may have in flight to storage at once.
const STORES_MAX_BYTES: u64 = 256 << 10;

/// The reply to a stored upload, logged.
fn completed(id: u64, path: &str, stored: &Stored, from: u64, started: Instant) -> Reply {
    let digest = stored.digest.map(|d| hex(&d)).unwrap_or_default();
    let secs = started.elapsed().as_secs_f64();
    let final_path = match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{}", stored.name),
        None => stored.name.clone(),
    };
    info!(
        path = ?final_path,
        bytes = stored.size,
        resumed_from = from,
        secs = format_args!("{secs:.3}"),
        mb_per_s = format_args!("{:.1}", (stored.size - from) as f64 / secs.max(1e-9) / 1e6),
        digest = %digest,
        "upload complete"
    );
    Reply {
        path: Some(final_path),
        size: Some(stored.size),
        digest: Some(digest),
        ..Reply::ok(id)
    }
}

/// The reply status for a refusal by the core.
fn denied_status(denied: &Denied) -> Status {
    match denied {
        Denied::NoToken | Denied::WrongToken => Status::Unauthorized,
        Denied::LockedOut { .. } => Status::RateLimited,
        Denied::Forbidden(_) | Denied::Disabled(_) => Status::Forbidden,
    }
}

/// The refusal of `req` for this session, if it may not make it.
fn refused(req: &Request, session: &Session) -> Option<Reply> {
    let action = match req {
        Request::Probe { .. }
        | Request::Put { .. }
        | Request::Join { .. }
        | Request::Mkdir { .. }
        | Request::Cvs { .. } => Action::Upload,
        Request::List { .. } => Action::List,
        Request::Get { .. } => Action::Download,
        Request::Delete { .. } | Request::Move { .. } => Action::Delete,
        Request::Auth { .. } | Request::End { .. } | Request::Bench { .. } => return None,
    };
    let denied = session.check(action).err()?;
    Some(Reply::error(
        req.id(),
        denied_status(&denied),
        denied.to_string(),
    ))
}

async fn send_listing<S: AsyncWrite + Unpin>(
    conn: &mut Conv<'_, S>,
    id: u64,
    entries: Vec<wire::Entry>,
) -> Result<(), FileError> {
    let mut rest = entries.into_iter().peekable();
    // Always at least one page, so an empty folder gets its reply too.
    loop {
        let mut page = Vec::new();
        let mut page_bytes = 0;
        while let Some(e) = rest.next_if(|_| page_bytes < PAGE_BUDGET) {
            page_bytes += e.path.len() * 6 + 160; // worst case: every byte escaped as \uXXXX
            page.push(e);
        }
        let more = rest.peek().is_some();
        let reply = Reply {
            entries: Some(page),
            more: Some(more),
            ..Reply::ok(id)
        };
        send(conn, &reply).await?;
        if !more {
            return Ok(());
        }
    }
}

/// The CVs of a stored file, in pages that stay well inside [`MAX_JSON`] (64 hex digits each).
async fn send_cvs<S: AsyncWrite + Unpin>(
    conn: &mut Conv<'_, S>,
    id: u64,
    meta: crate::store::Meta,
    cvs: &[Cv],
) -> Result<(), FileError> {
    const PER_PAGE: usize = PAGE_BUDGET / 64;
    let mut pages = cvs.chunks(PER_PAGE).peekable();
    loop {
        let page = pages.next().unwrap_or_default();
        let more = pages.peek().is_some();
        let reply = Reply {
            size: Some(meta.size),
            digest: Some(hex(&meta.digest)),
            cvs: Some(page.iter().map(hex).collect()),
            more: Some(more),
            ..Reply::ok(id)
        };
        send(conn, &reply).await?;
        if !more {
            return Ok(());
        }
    }
}

async fn send_file<S: AsyncWrite + Unpin>(
    conn: &mut Conv<'_, S>,
    session: &Session,
    id: u64,
    path: &str,
    from: u64,
    if_digest: Option<&str>,
) -> Result<(), FileError> {
    let mut chunks = match session.send(path, from, if_digest).await {
        Ok(outgoing) => outgoing,
        Err(SendError::Changed(meta)) => {
            // The client's kept chunks belong to other content: it must start again from 0.
            let reply = Reply {
                size: Some(meta.size),
                digest: Some(hex(&meta.digest)),
                mtime: Some(meta.mtime),
                ..Reply::error(id, Status::Conflict, "the file changed: its digest differs")
            };
            return send(conn, &reply).await;
        }
        Err(SendError::Store(e)) => return send(conn, &refusal(id, &e)).await,
    };
    let meta = chunks.meta;
    let size = meta.size;
    let reply = Reply {
        size: Some(size),
        digest: Some(hex(&meta.digest)),
        mtime: Some(meta.mtime),
        offset: Some(from),
        ..Reply::ok(id)
    };
    // Data goes straight into the output: every earlier reply must be in it first.
    conn.settle().await?;
    send(conn, &reply).await?;
    let started = Instant::now();
    let mut head = BytesMut::with_capacity(64);
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // Mid-stream the only honest thing left is to stop: the client sees a short file.
                return Err(FileError::Io(e));
            }
        };
        if chunk.data.len() < REPLY_BATCH {
            // Small files' data joins the batch after its reply.
            wire::encode_data_header(&chunk.cv, chunk.data.len(), &mut conn.out);
            conn.out.extend_from_slice(&chunk.data);
            if conn.out.len() >= REPLY_BATCH {
                conn.flush().await?;
            }
            continue;
        }
        conn.flush().await?;
        head.clear();
        wire::encode_data_header(&chunk.cv, chunk.data.len(), &mut head);
        let mut data = chunk.data;
        conn.stream
            .write_all_buf(&mut (&mut head).chain(&mut data))
            .await?;
    }
    let secs = started.elapsed().as_secs_f64();
    info!(path = ?path, bytes = size - from, from, secs = format_args!("{secs:.3}"), "download complete");
    Ok(())
}

impl From<WireError> for FileError {
    fn from(e: WireError) -> Self {
        FileError::Protocol(e.to_string())
    }
}
