//! The client side of barge's own protocol: verified, resumable uploads of files and folders
//! (small files pipelined), listings, and verified, resumable downloads.
//!
//! A transfer survives a lost connection: it reconnects with back-off and asks the server what it
//! kept (`probe`), checks that its own file still has the same prefix by comparing chunk digests,
//! and sends only the rest. Downloads keep their partial data on the local side the same way.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use barge_proto::name::NameError;
use barge_proto::tree::{CHUNK, Cv, chunk_count, file_digest, hex, parse_hex, prefix_digest};
use barge_proto::wire::{self, Entry, Frame, PREFACE_LEN, Reply, Request, Status, VERSION};
use bytes::{Buf, BytesMut};
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::chunks::{prefix_cvs, read_chunks};
use crate::net::IdleTimeout;
use crate::store::{
    Begin, LocalConfig, LocalStore, OnConflict, Store, StoreError, Version, Writers,
};
use crate::throttle::{Bucket, Throttled};
use crate::transfer::{Mode, Policy};

/// How a client behaves on the network.
#[derive(Debug, Clone)]
pub struct Options {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time the server may leave a write or an expected reply waiting.
    pub io_timeout: Duration,
    /// Reconnections after a lost connection, and retries of a file that failed verification.
    pub retries: u32,
    /// First pause before reconnecting; doubles each time.
    pub backoff: Duration,
    /// The token sent first on every connection, for servers that require one.
    pub token: Option<String>,
    /// Most listing entries accepted from a server: a hostile one could send pages forever.
    pub max_listed: u64,
    /// The writer threads of downloads: the caller waits on them before exiting, so that an
    /// interrupted download saves its resume point.
    pub writers: Writers,
}

/// Default of [`Options::max_listed`]: ten million entries (a listing kept in memory for `get`
/// stays around a few GB at worst; `ls` prints as pages arrive and keeps none).
pub const MAX_LISTED: u64 = 10_000_000;

impl Default for Options {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(300),
            retries: 3,
            backoff: Duration::from_millis(500),
            token: None,
            max_listed: MAX_LISTED,
            writers: Writers::default(),
        }
    }
}

/// What happens during a transfer, for progress display and `--json` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A file transfer begins; `offset` > 0 when it resumes.
    Start {
        /// Relative path.
        path: String,
        /// Size in bytes.
        size: u64,
        /// First byte transferred now.
        offset: u64,
    },
    /// Bytes of the current file done (reported a few times a second at most).
    Progress {
        /// Relative path.
        path: String,
        /// Bytes of the file now on the other side.
        done: u64,
        /// Its size.
        size: u64,
    },
    /// A file arrived and was verified.
    Done {
        /// Relative path as asked.
        path: String,
        /// Where it was stored (differs after a conflict rename).
        stored: String,
        /// Size in bytes.
        size: u64,
        /// Bytes that crossed the network for it in this run.
        transferred: u64,
        /// BLAKE3 hex digest, checked end to end.
        digest: String,
        /// Seconds from start to verified.
        secs: f64,
    },
    /// A folder was created.
    Folder {
        /// Relative path.
        path: String,
    },
    /// The connection was lost (or a file failed verification) and will be retried.
    Retry {
        /// Which retry this is.
        attempt: u32,
        /// Retries allowed.
        of: u32,
        /// Pause before it.
        wait_ms: u64,
        /// What went wrong.
        reason: String,
    },
    /// A file or folder was refused or failed for good.
    Failed {
        /// Relative path.
        path: String,
        /// The server's (or local) status.
        status: Status,
        /// Why.
        message: String,
    },
}

/// Why a transfer as a whole stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A local file or folder cannot be read or written.
    #[error("{}: {source}", path.display())]
    Local {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A local name cannot be sent as a safe name.
    #[error("{}: {source}", path.display())]
    Name {
        /// The path.
        path: PathBuf,
        /// Why.
        source: NameError,
    },
    /// The server cannot be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The server refused the connection itself: a missing or wrong token, too many failed
    /// attempts, or plain text where it requires TLS.
    #[error("refused by the server ({status:?}): {message}")]
    Refused {
        /// Its status.
        status: Status,
        /// Its reason.
        message: String,
    },
    /// The peer is not a barge server, or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection was lost and retries are used up.
    #[error("connection lost: {0}")]
    Lost(io::Error),
    /// Received data did not match its digest (corrupted in transit); retried like a lost
    /// connection, from the verified part, and reported as this once retries are used up.
    #[error("data failed verification: {0}")]
    Integrity(String),
    /// Local storage refused a download.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl Report {
    /// Records an item that failed for good and tells the caller's event handler.
    fn fail(
        &mut self,
        path: &str,
        status: Status,
        message: String,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) {
        on_event(Event::Failed {
            path: path.to_owned(),
            status,
            message: message.clone(),
        });
        self.failed.push((path.to_owned(), status, message));
    }
}

impl TransferError {
    fn retryable(&self) -> bool {
        matches!(
            self,
            TransferError::Lost(_) | TransferError::Connect { .. } | TransferError::Integrity(_)
        )
    }
}

/// The outcome of a multi-file transfer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Files transferred and verified.
    pub files: u64,
    /// Folders created.
    pub folders: u64,
    /// Their total size.
    pub bytes: u64,
    /// Bytes that crossed the network (less than `bytes` after a resume).
    pub transferred: u64,
    /// Items that failed: path, status, message.
    pub failed: Vec<(String, Status, String)>,
    /// Reconnections made.
    pub retries: u32,
    /// Connections opened (a server never reached is not retried: it is reported at once).
    pub connections: u32,
}

/// A byte stream a client can speak barge over.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A connection being opened.
pub type Dialing<'a> = Pin<Box<dyn Future<Output = io::Result<Box<dyn Stream>>> + Send + 'a>>;

/// Opens connections to a server: TCP normally ([`Tcp`]); tests dial in-memory pipes.
pub trait Dial: Send + Sync {
    /// A fresh connection.
    fn dial(&self) -> Dialing<'_>;
    /// The server's address, for messages.
    fn name(&self) -> String;
}

/// Dials `host:port` over TCP (and TLS, when configured) with a connect timeout, optionally paced
/// by a bandwidth limit shared by every connection it opens.
#[derive(Debug, Clone)]
pub struct Tcp {
    /// `host:port`.
    pub addr: String,
    /// Time allowed to connect (and finish the TLS handshake).
    pub timeout: Duration,
    /// TLS configuration; `None` for plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bandwidth limit.
    pub bwlimit: Option<Arc<Bucket>>,
}

impl Tcp {
    /// Plain TCP to `addr`.
    pub fn new(addr: impl Into<String>, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            timeout,
            tls: None,
            bwlimit: None,
        }
    }
}

impl Dial for Tcp {
    fn dial(&self) -> Dialing<'_> {
        Box::pin(async move {
            let tcp = crate::net::connect(&self.addr, self.timeout).await?;
            let stream = Throttled::new(tcp, self.bwlimit.iter().cloned().collect());
            let Some(config) = &self.tls else {
                return Ok(Box::new(stream) as Box<dyn Stream>);
            };
            let name = crate::tls::server_name(&self.addr)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = tokio::time::timeout(self.timeout, connector.connect(name, stream))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(Box::new(tls) as Box<dyn Stream>)
        })
    }

    fn name(&self) -> String {
        self.addr.clone()
    }
}

/// What the reader task passes on: requests and replies whole, data frames piece by piece as they
/// arrive, so a downloaded chunk is hashed and written without ever being buffered whole.
#[derive(Debug)]
enum Incoming {
    Frame(Frame),
    /// A data frame begins: its CV and the length of the data that follows in pieces.
    Data {
        cv: Cv,
        len: usize,
    },
    Piece(bytes::Bytes),
}

type Reader = mpsc::Receiver<io::Result<Incoming>>;
type Writer = IdleTimeout<WriteHalf<Box<dyn Stream>>>;

/// An open connection: frames arrive from a reader task; the write half has the idle timeout.
/// (The read side has none of its own: a server legitimately stays silent while a large file
/// streams to it; every wait for an expected reply has the timeout instead.)
struct Link {
    frames: Reader,
    out: Writer,
    io_timeout: Duration,
    next_id: u64,
    /// The task reading frames; it holds the read half, so it must end for the socket to close.
    reader: tokio::task::JoinHandle<()>,
    /// Small frames waiting to go out together (see [`BATCH`]).
    pending: BytesMut,
    /// Replies taken off the connection early (while a file was still being sent), in order.
    early: VecDeque<Reply>,
}

/// Small frames (requests, small files' data) are gathered up to this many bytes and sent in one
/// write, which is flushed before waiting for anything: thousands of small files then cost a few
/// hundred writes instead of three per file, and the server wakes up once per batch.
const BATCH: usize = 64 * 1024;

/// Files up to this size are read on the sending task itself (see `upload_file`).
const SMALL_INLINE: u64 = 64 * 1024;

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Link {
    async fn open(dial: &dyn Dial, opts: &Options) -> Result<Self, TransferError> {
        let stream = dial.dial().await.map_err(|source| TransferError::Connect {
            addr: dial.name(),
            source,
        })?;
        let (read, write) = tokio::io::split(stream);
        let mut out = IdleTimeout::new(write, opts.io_timeout);
        out.write_all(&wire::preface(VERSION))
            .await
            .map_err(TransferError::Lost)?;
        let mut read = read;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let preface = tokio::time::timeout(opts.io_timeout, async {
            while buf.len() < PREFACE_LEN {
                if read.read_buf(&mut buf).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed before its preface",
                    ));
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| TransferError::Lost(io::Error::new(io::ErrorKind::TimedOut, "no preface")))?;
        preface.map_err(TransferError::Lost)?;
        match wire::parse_preface(&buf) {
            Ok(Some(VERSION)) => {}
            Ok(Some(v)) => {
                return Err(TransferError::Protocol(format!(
                    "server speaks protocol version {v}"
                )));
            }
            _ => return Err(TransferError::Protocol("not a barge server".into())),
        }
        buf.advance(PREFACE_LEN);
        let (tx, frames) = mpsc::channel(8);
        let reader = tokio::spawn(read_frames(read, buf, tx));
        let mut link = Self {
            frames,
            out,
            io_timeout: opts.io_timeout,
            next_id: 1,
            reader,
            pending: BytesMut::with_capacity(BATCH),
            early: VecDeque::new(),
        };
        if let Some(token) = &opts.token {
            let id = link.id();
            link.request(&Request::Auth {
                id,
                token: token.clone(),
            })
            .await?;
            let reply = link.reply().await?;
            if reply.status != Status::Ok {
                return Err(TransferError::Refused {
                    status: reply.status,
                    message: reply.message.unwrap_or_default(),
                });
            }
        }
        Ok(link)
    }

    /// Ends the conversation cleanly: the server sees the end of the stream between requests.
    async fn close(mut self) {
        let _ = self.flush().await;
        let _ = self.out.shutdown().await;
    }

    /// Sends the gathered small frames.
    async fn flush(&mut self) -> Result<(), TransferError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.out.write_all_buf(&mut self.pending).await;
        self.pending.clear();
        written.map_err(|e| self.lost(e))
    }

    /// Sends a data frame: a small one joins the batch, a large one goes straight out after it.
    async fn data(&mut self, cv: &Cv, data: bytes::Bytes) -> Result<(), TransferError> {
        if data.len() < BATCH {
            wire::encode_data_header(cv, data.len(), &mut self.pending);
            self.pending.extend_from_slice(&data);
            if self.pending.len() >= BATCH {
                self.flush().await?;
            }
            return Ok(());
        }
        self.flush().await?;
        let mut head = BytesMut::with_capacity(wire::FRAME_HEADER + 32);
        wire::encode_data_header(cv, data.len(), &mut head);
        let mut data = data;
        let written = self
            .out
            .write_all_buf(&mut (&mut head).chain(&mut data))
            .await;
        written.map_err(|e| self.lost(e))
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn request(&mut self, req: &Request) -> Result<(), TransferError> {
        wire::encode_request(req, &mut self.pending);
        if self.pending.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// The next frame or piece of one, waiting at most the I/O timeout.
    async fn next(&mut self) -> Result<Incoming, TransferError> {
        self.flush().await?;
        match tokio::time::timeout(self.io_timeout, self.frames.recv()).await {
            Err(_) => Err(TransferError::Lost(io::Error::new(
                io::ErrorKind::TimedOut,
                "no reply from the server",
            ))),
            Ok(None) => Err(TransferError::Lost(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed",
            ))),
            Ok(Some(Err(e))) => Err(self.lost(e)),
            Ok(Some(Ok(Incoming::Frame(f)))) => screen(f).map(Incoming::Frame),
            Ok(Some(Ok(other))) => Ok(other),
        }
    }

    /// The next whole frame (a data frame's pieces put back together).
    async fn frame(&mut self) -> Result<Frame, TransferError> {
        match self.next().await? {
            Incoming::Frame(f) => Ok(f),
            Incoming::Data { cv, len } => {
                let mut data = BytesMut::with_capacity(len);
                while data.len() < len {
                    match self.next().await? {
                        Incoming::Piece(p) => data.extend_from_slice(&p),
                        other => {
                            return Err(TransferError::Protocol(format!(
                                "data frame interrupted by {other:?}"
                            )));
                        }
                    }
                }
                Ok(Frame::Data {
                    cv,
                    data: data.freeze(),
                })
            }
            Incoming::Piece(_) => Err(TransferError::Protocol("data outside a frame".into())),
        }
    }

    /// The error for a failed connection: the server's refusal if it sent one before closing
    /// (it may have arrived while we were writing), else the I/O error.
    fn lost(&mut self, e: io::Error) -> TransferError {
        while let Ok(Ok(incoming)) = self.frames.try_recv() {
            if let Incoming::Frame(frame) = incoming
                && let Err(refusal) = screen(frame)
            {
                return refusal;
            }
        }
        TransferError::Lost(e)
    }

    async fn reply(&mut self) -> Result<Reply, TransferError> {
        if let Some(r) = self.early.pop_front() {
            return Ok(r);
        }
        match self.frame().await? {
            Frame::Reply(r) => Ok(r),
            other => Err(TransferError::Protocol(format!(
                "expected a reply, got {other:?}"
            ))),
        }
    }

    /// A reply if one has already arrived.
    fn ready_reply(&mut self) -> Result<Option<Reply>, TransferError> {
        if let Some(r) = self.early.pop_front() {
            return Ok(Some(r));
        }
        self.arrived_reply()
    }

    /// Whether request `id` has already been refused (replies that arrived meanwhile are kept, in
    /// order, for [`Link::reply`]): a refused upload stops sending at once.
    fn refused_already(&mut self, id: u64) -> Result<bool, TransferError> {
        while let Some(r) = self.arrived_reply()? {
            self.early.push_back(r);
        }
        Ok(self
            .early
            .iter()
            .any(|r| r.id == id && r.status != Status::Ok))
    }

    /// A reply that has arrived on the connection, if any.
    fn arrived_reply(&mut self) -> Result<Option<Reply>, TransferError> {
        match self.frames.try_recv() {
            Ok(Ok(Incoming::Frame(Frame::Reply(r)))) => match screen(Frame::Reply(r))? {
                Frame::Reply(r) => Ok(Some(r)),
                _ => Err(TransferError::Protocol("unexpected data frame".into())),
            },
            Ok(Ok(_)) => Err(TransferError::Protocol("unexpected data frame".into())),
            Ok(Err(e)) => Err(TransferError::Lost(e)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(TransferError::Lost(
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed"),
            )),
        }
    }
}

/// A reply with id 0 refuses the connection itself (ids the client uses start at 2).
fn screen(frame: Frame) -> Result<Frame, TransferError> {
    match frame {
        Frame::Reply(r) if r.id == 0 && r.status != Status::Ok => Err(TransferError::Refused {
            status: r.status,
            message: r.message.unwrap_or_default(),
        }),
        other => Ok(other),
    }
}

/// Largest read of data-frame bytes (each read becomes one piece for the writer).
const PIECE: usize = 256 * 1024;

async fn read_frames(
    mut read: ReadHalf<Box<dyn Stream>>,
    mut buf: BytesMut,
    tx: mpsc::Sender<io::Result<Incoming>>,
) {
    let mut decoder = wire::StreamDecoder::new();
    loop {
        let item = match decoder.decode(&mut buf) {
            Ok(Some(wire::Item::Frame(frame))) => Some(Ok(Incoming::Frame(frame))),
            Ok(Some(wire::Item::Data { cv, len })) => Some(Ok(Incoming::Data { cv, len })),
            Ok(Some(wire::Item::Piece(piece))) => Some(Ok(Incoming::Piece(piece))),
            Ok(Some(wire::Item::Invalid { error, .. })) => Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server sent a request: {error}"),
            ))),
            Ok(None) => None,
            Err(e) => Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
        };
        if let Some(item) = item {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
            continue;
        }
        let data_left = decoder.data_left();
        if data_left > 0 {
            // Reuse the buffer once the writer has let go of every piece cut from it.
            let size = data_left.min(PIECE);
            if buf.capacity() < size && !buf.try_reclaim(size) {
                buf = BytesMut::with_capacity(size);
            }
        } else {
            buf.reserve(PIECE);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )))
                    .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Emits progress at most this often per file.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Reports a file's progress a few times a second at most, however fast chunks go by.
struct Throttle {
    last: Instant,
}

impl Throttle {
    fn new() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    fn tick(&mut self, path: &str, done: u64, size: u64, on_event: &mut (dyn FnMut(Event) + Send)) {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            on_event(Event::Progress {
                path: path.to_owned(),
                done,
                size,
            });
        }
    }
}

/// One thing to upload.
#[derive(Debug, Clone)]
enum Job {
    Folder {
        remote: String,
    },
    File {
        local: PathBuf,
        remote: String,
        size: u64,
    },
}

/// Walks what the user named into folders and files with their remote paths. Symlinks are
/// followed only to files inside the tree being sent; empty folders are kept.
fn plan(roots: &[PathBuf]) -> Result<Vec<Job>, TransferError> {
    let local = |path: &Path, source| TransferError::Local {
        path: path.to_owned(),
        source,
    };
    let mut jobs = Vec::new();
    for root in roots {
        let meta = std::fs::metadata(root).map_err(|e| local(root, e))?;
        let name = root
            .canonicalize()
            .map_err(|e| local(root, e))?
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| local(root, io::Error::other("has no UTF-8 file name")))?;
        check_name(root, &name)?;
        if meta.is_file() {
            jobs.push(Job::File {
                local: root.clone(),
                remote: name,
                size: meta.len(),
            });
            continue;
        }
        let top = root.canonicalize().map_err(|e| local(root, e))?;
        jobs.push(Job::Folder {
            remote: name.clone(),
        });
        let mut stack = vec![(root.clone(), name)];
        while let Some((dir, remote)) = stack.pop() {
            let mut items: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| local(&dir, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| local(&dir, e))?;
            items.sort_by_key(|e| e.file_name());
            for item in items {
                let path = item.path();
                let name = item
                    .file_name()
                    .into_string()
                    .map_err(|_| local(&path, io::Error::other("name is not valid UTF-8")))?;
                check_name(&path, &name)?;
                let child = format!("{remote}/{name}");
                let lmeta = std::fs::symlink_metadata(&path).map_err(|e| local(&path, e))?;
                if lmeta.is_symlink() {
                    // Follow a link only to a file inside the tree: never out of it, never a loop.
                    let target = path.canonicalize().ok();
                    match target {
                        Some(t) if t.starts_with(&top) && t.is_file() => {
                            let size = std::fs::metadata(&t).map_err(|e| local(&path, e))?.len();
                            jobs.push(Job::File {
                                local: path,
                                remote: child,
                                size,
                            });
                        }
                        _ => tracing::warn!(path = %path.display(), "symlink not followed"),
                    }
                } else if lmeta.is_dir() {
                    jobs.push(Job::Folder {
                        remote: child.clone(),
                    });
                    stack.push((path, child));
                } else if lmeta.is_file() {
                    jobs.push(Job::File {
                        local: path,
                        remote: child,
                        size: lmeta.len(),
                    });
                }
            }
        }
    }
    Ok(jobs)
}

fn check_name(path: &Path, name: &str) -> Result<(), TransferError> {
    barge_proto::name::validate_file_name(name)
        .map(|_| ())
        .map_err(|source| TransferError::Name {
            path: path.to_owned(),
            source,
        })
}

/// Where one job stands across reconnections.
#[derive(Debug, Clone, Default)]
struct Progress {
    finished: bool,
    tries: u32,
    /// Its `end` was sent but no reply came before the connection died: it may be stored already.
    unanswered: bool,
}

/// Uploads files and folders (each named root keeps its name on the server, folders their tree).
pub async fn send(
    dial: &dyn Dial,
    roots: &[PathBuf],
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Report, TransferError> {
    let jobs = plan(roots)?;
    let mut progress = vec![Progress::default(); jobs.len()];
    let mut report = Report::default();
    with_retries(opts, &mut report, on_event, async |report, on_event| {
        let mut link = Link::open(dial, opts).await?;
        report.connections += 1;
        send_pass(&mut link, &jobs, &mut progress, report, opts, on_event).await?;
        link.close().await;
        Ok(())
    })
    .await?;
    Ok(report)
}

/// Runs `pass` until it succeeds, reconnecting with back-off after a lost connection.
async fn with_retries(
    opts: &Options,
    report: &mut Report,
    on_event: &mut (dyn FnMut(Event) + Send),
    mut pass: impl AsyncFnMut(&mut Report, &mut (dyn FnMut(Event) + Send)) -> Result<(), TransferError>,
) -> Result<(), TransferError> {
    let mut attempt = 0;
    loop {
        match pass(report, on_event).await {
            Ok(()) => return Ok(()),
            // A server never reached is reported at once; a lost one is waited for.
            Err(e) if e.retryable() && report.connections > 0 && attempt < opts.retries => {
                attempt += 1;
                report.retries = attempt;
                let wait = opts.backoff * 2u32.pow(attempt - 1);
                on_event(Event::Retry {
                    attempt,
                    of: opts.retries,
                    wait_ms: wait.as_millis() as u64,
                    reason: e.to_string(),
                });
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a sent request still owes us.
#[derive(Debug)]
struct Owed {
    id: u64,
    job: usize,
    digest: Option<Cv>,
    transferred: u64,
    started: Instant,
}

async fn send_pass(
    link: &mut Link,
    jobs: &[Job],
    progress: &mut [Progress],
    report: &mut Report,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<(), TransferError> {
    // Files that failed verification are put back; each round sends them again, until every job
    // is finished (done, or failed too often: `settle` counts the tries).
    while progress.iter().any(|p| !p.finished) {
        send_round(link, jobs, progress, report, opts, on_event).await?;
    }
    Ok(())
}

/// Visits every unfinished job once, in order, pipelining requests, and settles every reply.
async fn send_round(
    link: &mut Link,
    jobs: &[Job],
    progress: &mut [Progress],
    report: &mut Report,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<(), TransferError> {
    let mut owed: VecDeque<Owed> = VecDeque::new();
    for index in 0..jobs.len() {
        if progress[index].finished {
            continue;
        }
        match &jobs[index] {
            Job::Folder { remote } => {
                let id = link.id();
                link.request(&Request::Mkdir {
                    id,
                    path: remote.clone(),
                })
                .await?;
                owed.push_back(Owed {
                    id,
                    job: index,
                    digest: None,
                    transferred: 0,
                    started: Instant::now(),
                });
            }
            Job::File {
                local,
                remote,
                size,
            } => {
                let file = File::open(local).map_err(|source| TransferError::Local {
                    path: local.clone(),
                    source,
                })?;
                // Small files are pipelined without asking; larger ones may resume, and one whose
                // reply was lost may be stored already, so for those ask first.
                let from = if *size > CHUNK || progress[index].unanswered {
                    settle_all(link, &mut owed, jobs, progress, report, opts, on_event).await?;
                    let resume = resume_point(link, remote, *size, &file).await?;
                    if progress[index].unanswered
                        && let Some(theirs) = resume.stored
                        && theirs == whole_digest(&file).await?
                    {
                        progress[index].finished = true;
                        report.files += 1;
                        report.bytes += size;
                        on_event(Event::Done {
                            path: remote.clone(),
                            stored: remote.clone(),
                            size: *size,
                            transferred: 0,
                            digest: hex(&theirs),
                            secs: 0.0,
                        });
                        continue;
                    }
                    resume.from
                } else {
                    0
                };
                let owed_entry =
                    upload_file(link, index, remote, *size, file, from, on_event).await?;
                owed.push_back(owed_entry);
                progress[index].unanswered = true;
            }
        }
        // Take whatever replies have arrived, so events flow while the pipeline stays full.
        while let Some(reply) = link.ready_reply()? {
            settle(reply, &mut owed, jobs, progress, report, opts, on_event)?;
        }
    }
    settle_all(link, &mut owed, jobs, progress, report, opts, on_event).await
}

/// Where to start an upload, and what the server already stores at its path.
struct Resume {
    /// First byte to send.
    from: u64,
    /// Digest of a file of the same size already stored at the path.
    stored: Option<Cv>,
}

/// The BLAKE3 digest of a whole local file (read on a blocking thread).
async fn whole_digest(file: &File) -> Result<Cv, TransferError> {
    let mut cloned = file.try_clone().map_err(TransferError::Lost)?;
    tokio::task::spawn_blocking(move || {
        let mut h = blake3::Hasher::new();
        h.update_reader(&mut cloned)
            .map(|h| *h.finalize().as_bytes())
    })
    .await
    .map_err(|e| TransferError::Lost(io::Error::other(e)))?
    .map_err(TransferError::Lost)
}

/// Asks the server what it kept of `remote` and checks that our file still starts the same way;
/// returns where to start. A refusal is left for the `put` to report, in order.
async fn resume_point(
    link: &mut Link,
    remote: &str,
    size: u64,
    file: &File,
) -> Result<Resume, TransferError> {
    let id = link.id();
    link.request(&Request::Probe {
        id,
        path: remote.to_owned(),
        size,
    })
    .await?;
    let reply = link.reply().await?;
    if reply.status == Status::Busy {
        // Usually our own previous connection, not yet noticed as gone by the server.
        return Err(TransferError::Lost(io::Error::other(
            reply.message.unwrap_or_default(),
        )));
    }
    let offset = reply.offset.unwrap_or(0);
    let stored = reply.digest.as_deref().and_then(parse_hex);
    if reply.status != Status::Ok || offset == 0 {
        return Ok(Resume { from: 0, stored });
    }
    let theirs = reply.prefix.as_deref().and_then(parse_hex);
    let cloned = file.try_clone().map_err(TransferError::Lost)?;
    let ours = tokio::task::spawn_blocking(move || prefix_cvs(&cloned, offset))
        .await
        .map_err(|e| TransferError::Lost(io::Error::other(e)))?
        .map_err(TransferError::Lost)?;
    let from = if theirs == Some(prefix_digest(&ours)) {
        offset
    } else {
        0
    };
    Ok(Resume { from, stored })
}

/// Sends one file from `from`: put, data, end. Returns what the server owes for it.
async fn upload_file(
    link: &mut Link,
    job: usize,
    remote: &str,
    size: u64,
    file: File,
    from: u64,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Owed, TransferError> {
    let id = link.id();
    let started = Instant::now();
    on_event(Event::Start {
        path: remote.to_owned(),
        size,
        offset: from,
    });
    link.request(&Request::Put {
        id,
        path: remote.to_owned(),
        size,
        from,
    })
    .await?;
    let cloned = file.try_clone().map_err(TransferError::Lost)?;
    let mut cvs = if from > 0 {
        tokio::task::spawn_blocking(move || prefix_cvs(&cloned, from))
            .await
            .map_err(|e| TransferError::Lost(io::Error::other(e)))?
            .map_err(TransferError::Lost)?
    } else {
        Vec::new()
    };
    let mut single = None;
    if size <= CHUNK && from == size && size > 0 {
        // The server kept the whole (single-chunk) file; its root is a plain hash of its bytes.
        let mut bytes = vec![0u8; size as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).map_err(|source| {
            TransferError::Local {
                path: remote.into(),
                source,
            }
        })?;
        single = Some(bytes::Bytes::from(bytes));
    }
    if from == 0 && size > 0 && size <= SMALL_INLINE {
        // A small file is read right here: a page-cache read costs less than handing it to a
        // blocking thread and back, which dominated sending thousands of small files.
        let data = crate::chunks::read_next(&file, size)
            .map(bytes::Bytes::from)
            .map_err(|source| TransferError::Local {
                path: remote.into(),
                source,
            })?;
        let cv = barge_proto::tree::chunk_cv(0, &data);
        cvs.push(cv);
        single = Some(data.clone());
        link.data(&cv, data).await?;
    } else {
        let mut chunks = read_chunks(file, size, from);
        let mut done = from;
        let mut throttle = Throttle::new();
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.map_err(|source| TransferError::Local {
                path: remote.into(),
                source,
            })?;
            cvs.push(chunk.cv);
            if size <= CHUNK {
                single = Some(chunk.data.clone());
            }
            done += chunk.data.len() as u64;
            link.data(&chunk.cv, chunk.data).await?;
            throttle.tick(remote, done, size, on_event);
            if link.refused_already(id)? {
                // The server refused the file (too large, no space, ...): the rest would only be
                // skipped there. `end` closes the put; the refusal is settled in order.
                link.request(&Request::End {
                    id,
                    digest: hex(&[0; 32]),
                })
                .await?;
                return Ok(Owed {
                    id,
                    job,
                    digest: None,
                    transferred: done - from,
                    started,
                });
            }
        }
    }
    if size == 0 {
        single = Some(bytes::Bytes::new());
    }
    let digest = file_digest(&cvs, size, single.as_deref())
        .ok_or_else(|| TransferError::Protocol("cannot compute the file digest".into()))?;
    link.request(&Request::End {
        id,
        digest: hex(&digest),
    })
    .await?;
    Ok(Owed {
        id,
        job,
        digest: Some(digest),
        transferred: size - from,
        started,
    })
}

async fn settle_all(
    link: &mut Link,
    owed: &mut VecDeque<Owed>,
    jobs: &[Job],
    progress: &mut [Progress],
    report: &mut Report,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<(), TransferError> {
    while !owed.is_empty() {
        let reply = link.reply().await?;
        settle(reply, owed, jobs, progress, report, opts, on_event)?;
    }
    Ok(())
}

/// Applies one reply to what it answers.
fn settle(
    reply: Reply,
    owed: &mut VecDeque<Owed>,
    jobs: &[Job],
    progress: &mut [Progress],
    report: &mut Report,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<(), TransferError> {
    let Some(pos) = owed.iter().position(|o| o.id == reply.id) else {
        return Err(TransferError::Protocol(format!(
            "reply to unknown request {}",
            reply.id
        )));
    };
    let Some(o) = owed.remove(pos) else {
        return Ok(());
    };
    let (remote, size) = match &jobs[o.job] {
        Job::Folder { remote } => (remote.clone(), 0),
        Job::File { remote, size, .. } => (remote.clone(), *size),
    };
    let p = &mut progress[o.job];
    p.unanswered = false;
    match reply.status {
        Status::Ok => {
            p.finished = true;
            match &jobs[o.job] {
                Job::Folder { .. } => {
                    report.folders += 1;
                    on_event(Event::Folder { path: remote });
                }
                Job::File { .. } => {
                    let theirs = reply.digest.as_deref().and_then(parse_hex);
                    if theirs != o.digest {
                        return Err(TransferError::Protocol(
                            "the server confirmed a different digest".into(),
                        ));
                    }
                    report.files += 1;
                    report.bytes += size;
                    report.transferred += o.transferred;
                    on_event(Event::Done {
                        path: remote.clone(),
                        stored: reply.path.unwrap_or(remote),
                        size,
                        transferred: o.transferred,
                        digest: reply.digest.unwrap_or_default(),
                        secs: o.started.elapsed().as_secs_f64(),
                    });
                }
            }
        }
        Status::Integrity if p.tries < opts.retries => {
            // Corrupted in transit: the server kept the verified part; send the rest again.
            p.tries += 1;
            on_event(Event::Retry {
                attempt: p.tries,
                of: opts.retries,
                wait_ms: 0,
                reason: format!("{remote}: {}", reply.message.unwrap_or_default()),
            });
        }
        status => {
            p.finished = true;
            let message = reply.message.unwrap_or_default();
            report.fail(&remote, status, message, on_event);
        }
    }
    Ok(())
}

/// Lists `path` on the server (everything below it when `recursive`).
pub async fn list(
    dial: &dyn Dial,
    path: &str,
    recursive: bool,
    opts: &Options,
) -> Result<Result<Vec<Entry>, (Status, String)>, TransferError> {
    let mut link = Link::open(dial, opts).await?;
    let entries = list_on(&mut link, path, recursive, opts.max_listed).await;
    link.close().await;
    entries
}

/// Lists `path` like [`list`], handing each entry to `each` as its page arrives instead of
/// keeping them: memory stays flat whatever the listing's size. Returns how many there were.
pub async fn list_each(
    dial: &dyn Dial,
    path: &str,
    recursive: bool,
    opts: &Options,
    each: &mut (dyn FnMut(Entry) -> io::Result<()> + Send),
) -> Result<Result<u64, (Status, String)>, TransferError> {
    let mut link = Link::open(dial, opts).await?;
    let mut sink = |e: Entry| each(e).map_err(TransferError::Lost);
    let counted = list_pages(&mut link, path, recursive, opts.max_listed, &mut sink).await;
    link.close().await;
    counted
}

async fn list_on(
    link: &mut Link,
    path: &str,
    recursive: bool,
    limit: u64,
) -> Result<Result<Vec<Entry>, (Status, String)>, TransferError> {
    let mut entries = Vec::new();
    let mut keep = |e| {
        entries.push(e);
        Ok(())
    };
    Ok(list_pages(link, path, recursive, limit, &mut keep)
        .await?
        .map(|_| entries))
}

/// Asks for a listing and passes its entries on page by page. A server that sends more than
/// `limit` entries, or an empty page that promises more, is not followed any further.
async fn list_pages(
    link: &mut Link,
    path: &str,
    recursive: bool,
    limit: u64,
    each: &mut (dyn FnMut(Entry) -> Result<(), TransferError> + Send),
) -> Result<Result<u64, (Status, String)>, TransferError> {
    let id = link.id();
    link.request(&Request::List {
        id,
        path: path.to_owned(),
        recursive,
    })
    .await?;
    let mut count = 0u64;
    loop {
        let reply = link.reply().await?;
        if reply.id != id {
            return Err(TransferError::Protocol("reply to another request".into()));
        }
        if reply.status != Status::Ok {
            return Ok(Err((reply.status, reply.message.unwrap_or_default())));
        }
        let page = reply.entries.unwrap_or_default();
        let more = reply.more.unwrap_or(false);
        if more && page.is_empty() {
            return Err(TransferError::Protocol(
                "the server sent an empty listing page that promised more".into(),
            ));
        }
        count += page.len() as u64;
        if count > limit {
            return Err(TransferError::Protocol(format!(
                "the server's listing goes on past {limit} entries: not followed"
            )));
        }
        for e in page {
            each(e)?;
        }
        if !more {
            return Ok(Ok(count));
        }
    }
}

/// Measures what the link carries with barge's framing, memory to memory: sends `size` bytes of
/// data frames that the server counts and drops (no disk, no hashing on either side). Returns the
/// time from the first byte sent to the server's reply after the last.
pub async fn bench(dial: &dyn Dial, size: u64, opts: &Options) -> Result<Duration, TransferError> {
    let mut link = Link::open(dial, opts).await?;
    let id = link.id();
    link.request(&Request::Bench { id, size }).await?;
    let payload = bytes::Bytes::from(vec![0u8; CHUNK as usize]);
    let started = Instant::now();
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK) as usize;
        link.data(&[0; 32], payload.slice(..n)).await?;
        left -= n as u64;
    }
    let reply = link.reply().await?;
    let elapsed = started.elapsed();
    link.close().await;
    if reply.status != Status::Ok || reply.size != Some(size) {
        return Err(TransferError::Protocol(format!(
            "bench not confirmed: {}",
            reply.message.unwrap_or_default()
        )));
    }
    Ok(elapsed)
}

/// One thing to download.
#[derive(Debug, Clone)]
enum GetJob {
    Folder { local: String },
    File(RemoteFile),
}

/// A file to fetch, as listed.
#[derive(Debug, Clone)]
struct RemoteFile {
    remote: String,
    local: String,
    size: u64,
    digest: String,
}

/// Downloads files or folders into `out`, verified and resumable; never overwrites unless
/// `on_conflict` says so.
pub async fn get(
    dial: &dyn Dial,
    names: &[String],
    out: &Path,
    on_conflict: OnConflict,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Report, TransferError> {
    let store = LocalStore::open(LocalConfig {
        // `-o` may be a large folder of the user's: only barge's own state is looked at.
        sweep_tree: false,
        writers: opts.writers.clone(),
        ..LocalConfig::new(out)
    })?;
    let getter = Getter {
        store,
        policy: Policy {
            on_conflict,
            ..Policy::default()
        },
    };
    let mut jobs: Option<Vec<GetJob>> = None;
    let mut finished: Vec<bool> = Vec::new();
    let mut report = Report::default();
    with_retries(opts, &mut report, on_event, async |report, on_event| {
        let mut link = Link::open(dial, opts).await?;
        report.connections += 1;
        if jobs.is_none() {
            let planned = plan_get(&mut link, names, opts.max_listed, report, on_event).await?;
            finished = vec![false; planned.len()];
            jobs = Some(planned);
        }
        let Some(jobs) = jobs.as_ref() else {
            return Ok(());
        };
        for (i, job) in jobs.iter().enumerate() {
            if finished[i] {
                continue;
            }
            match job {
                GetJob::Folder { local } => {
                    getter.store.mkdir(local).await?;
                    report.folders += 1;
                    on_event(Event::Folder {
                        path: local.clone(),
                    });
                }
                GetJob::File(file) => getter.download(&mut link, file, report, on_event).await?,
            }
            finished[i] = true;
        }
        link.close().await;
        Ok(())
    })
    .await?;
    Ok(report)
}

async fn plan_get(
    link: &mut Link,
    names: &[String],
    max_listed: u64,
    report: &mut Report,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Vec<GetJob>, TransferError> {
    let mut jobs = Vec::new();
    for name in names {
        let name = name.trim_matches('/');
        let base = name.rsplit('/').next().unwrap_or(name).to_owned();
        match list_on(link, name, true, max_listed).await? {
            Err((status, message)) => {
                report.fail(name, status, message, on_event);
            }
            Ok(entries) => {
                let single_file = entries.len() == 1 && !entries[0].dir && entries[0].path == base;
                if single_file {
                    let e = &entries[0];
                    jobs.push(GetJob::File(RemoteFile {
                        remote: name.to_owned(),
                        local: base,
                        size: e.size,
                        digest: e.digest.clone().unwrap_or_default(),
                    }));
                    continue;
                }
                jobs.push(GetJob::Folder {
                    local: base.clone(),
                });
                for e in entries {
                    let local = format!("{base}/{}", e.path);
                    if e.dir {
                        jobs.push(GetJob::Folder { local });
                    } else {
                        jobs.push(GetJob::File(RemoteFile {
                            remote: format!("{name}/{}", e.path),
                            local,
                            size: e.size,
                            digest: e.digest.unwrap_or_default(),
                        }));
                    }
                }
            }
        }
    }
    Ok(jobs)
}

/// Where downloads go: the output folder's store (resume state, verified publish) and the
/// conflict policy, through the same transfer core a server receives with.
struct Getter {
    store: LocalStore,
    policy: Policy,
}

/// What one `get` of a file found on the server.
enum Fetched {
    Stored,
    /// Refused by the server (reported).
    Refused,
    /// The file is not the one listed: its new size and digest.
    Changed(u64, String),
}

impl Getter {
    /// Downloads one file. A file that changed since it was listed is fetched anew, once; one that
    /// keeps changing is reported rather than chased.
    async fn download(
        &self,
        link: &mut Link,
        file: &RemoteFile,
        report: &mut Report,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), TransferError> {
        let mut want = (file.size, file.digest.clone());
        for _ in 0..2 {
            match self
                .fetch(link, file, want.0, &want.1, report, on_event)
                .await?
            {
                Fetched::Stored | Fetched::Refused => return Ok(()),
                Fetched::Changed(size, digest) => want = (size, digest),
            }
        }
        let message = "the file changed on the server while being fetched".to_owned();
        report.fail(&file.remote, Status::Integrity, message, on_event);
        Ok(())
    }

    /// One attempt at `file`, expected to be `size` bytes with `digest`.
    async fn fetch(
        &self,
        link: &mut Link,
        file: &RemoteFile,
        size: u64,
        digest: &str,
        report: &mut Report,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<Fetched, TransferError> {
        let (remote, local) = (&file.remote[..], &file.local[..]);
        let started = Instant::now();
        let Some(expected) = parse_hex(digest) else {
            return Err(TransferError::Protocol(
                "server sent a malformed digest".into(),
            ));
        };
        // A partial from an earlier run is keyed by the digest: it resumes only the same content.
        let version = Version::Digest(expected);
        let from = crate::transfer::kept(&self.store, local, size, version)
            .await
            .map_or(0, |(offset, _)| offset);
        let id = link.id();
        link.request(&Request::Get {
            id,
            path: remote.to_owned(),
            from,
            // Resuming: only if the file is still the one our kept chunks belong to.
            digest: (from > 0).then(|| digest.to_owned()),
        })
        .await?;
        let reply = link.reply().await?;
        // A conditional get refused: the file changed, and no data follows.
        let changed = reply.status == Status::Conflict && from > 0 && reply.digest.is_some();
        if reply.status != Status::Ok && !changed {
            let message = reply.message.unwrap_or_default();
            report.fail(remote, reply.status, message, on_event);
            return Ok(Fetched::Refused);
        }
        let their_size = reply.size.unwrap_or(0);
        let their_digest = reply.digest.clone().unwrap_or_default();
        if changed || their_size != size || their_digest != digest {
            if !changed {
                // Read past what was sent.
                for _ in from / CHUNK..chunk_count(their_size) {
                    link.frame().await?;
                }
            }
            return Ok(Fetched::Changed(their_size, their_digest));
        }
        on_event(Event::Start {
            path: remote.to_owned(),
            size,
            offset: from,
        });
        let begin = Begin {
            path: local.to_owned(),
            size,
            version,
            from,
            owner: String::new(),
            resumable: true,
            on_conflict: self.policy.on_conflict,
        };
        let mut upload =
            crate::transfer::receive(&self.store, &self.policy, begin, Mode::Check).await?;
        let mut done = from;
        let mut throttle = Throttle::new();
        for _ in from / CHUNK..chunk_count(size) {
            let (cv, len) = match link.next().await? {
                Incoming::Data { cv, len } => (cv, len),
                Incoming::Frame(Frame::Reply(r)) => {
                    upload.suspend().await;
                    return Err(TransferError::Lost(io::Error::other(
                        r.message.unwrap_or_else(|| "download stopped".into()),
                    )));
                }
                other => {
                    return Err(TransferError::Protocol(format!(
                        "expected file data, got {other:?}"
                    )));
                }
            };
            // Each piece is hashed and written as it arrives; the chunk is checked at its end.
            let mut written = upload.begin_chunk(cv, len as u64).await;
            let mut left = len;
            while left > 0 && written.is_ok() {
                let piece = match link.next().await? {
                    Incoming::Piece(p) => p,
                    other => {
                        return Err(TransferError::Protocol(format!(
                            "data frame interrupted by {other:?}"
                        )));
                    }
                };
                left -= piece.len().min(left);
                done += piece.len() as u64;
                written = upload.write(piece).await;
            }
            if let Err(e) = written {
                upload.suspend().await;
                // Corrupted in transit: reconnect and resume from the verified part.
                return Err(match e {
                    StoreError::Integrity(m) => TransferError::Integrity(m),
                    other => TransferError::Lost(io::Error::other(other.to_string())),
                });
            }
            throttle.tick(remote, done, size, on_event);
        }
        let stored = match upload.finish(Some(expected)).await {
            Ok(stored) => stored,
            // A digest mismatch: retrying starts over (nothing can be trusted).
            Err(StoreError::Integrity(m)) => return Err(TransferError::Integrity(m)),
            Err(e) => return Err(e.into()),
        };
        report.files += 1;
        report.bytes += size;
        report.transferred += size - from;
        let stored_rel = match local.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{}", stored.name),
            None => stored.name,
        };
        on_event(Event::Done {
            path: remote.to_owned(),
            stored: stored_rel,
            size,
            transferred: size - from,
            digest: digest.to_owned(),
            secs: started.elapsed().as_secs_f64(),
        });
        Ok(Fetched::Stored)
    }
}
