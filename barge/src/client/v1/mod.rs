//! The v1 client: verified, resumable uploads of files and folders (small files pipelined),
//! listings, and verified, resumable downloads, over barge's own protocol.
//!
//! A transfer survives a lost connection: it reconnects with back-off (a loop, [`with_retries`])
//! and asks the server what it kept (`probe`), checks that its own file still has the same prefix
//! by comparing chunk digests, and sends only the rest. Downloads keep their partial data on the
//! local side the same way, through the same transfer core a server receives with.
//!
//! Who owns what: [`link`] the connection (dial, TLS, the reader task, batching, the reply
//! screen); [`send`] the send plan (tree walk, pipelining, resume, settling replies); [`get`] the
//! getter (plan, conditional resume, verified publish); [`list`] listings and `bench`; [`manage`]
//! remove, rename and mkdir; [`stripe`] one file over several connections. This file
//! holds the shared types: options, events, the report and the one error type with its
//! `retryable()`.

mod get;
mod link;
mod list;
mod manage;
mod send;
mod stripe;

pub use get::get;
pub use link::{Dial, Dialing, Stream, Tcp};
pub use list::{bench, list, list_each};
pub use manage::{Change, Outcome, manage};
pub use send::{OnExisting, send};

use link::{Incoming, Link};

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
    /// Follow symbolic links when sending (each real folder once); without, links are skipped.
    pub follow_links: bool,
    /// What happens to a file the destination already has.
    pub on_existing: OnExisting,
    /// Compare digests even when size and modification time match (rsync's `--checksum`).
    pub checksum: bool,
    /// Which files take part (`--include`/`--exclude`).
    pub filter: Filter,
    /// Say what would be sent or fetched, and change nothing (`--dry-run`).
    pub dry_run: bool,
    /// `get`: remove local files below the folders fetched that the server does not have.
    pub delete: bool,
    /// `send`: the folder on the server to upload into (created if missing) instead of its top.
    pub dest: Option<String>,
    /// `get`: flush downloaded files to disk before publishing them (`--no-fsync` turns it off:
    /// faster; a power loss may then lose what was fetched).
    pub fsync: bool,
    /// `send`: connections one large file is striped over (1: one connection, the default). See
    /// the `stripe` module. A server without striping refuses such a put as an invalid request.
    pub streams: u32,
}

/// `--include`/`--exclude` globs over paths relative to what was named (a folder's contents):
/// a pattern without `/` matches a name at any depth (`*.tmp`), one with `/` the relative path
/// (`build/**`). Excluded folders are not walked; with includes, only matching files go (folders
/// are walked to find them). Exclusion wins.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<Arc<globset::GlobSet>>,
    exclude: Option<Arc<globset::GlobSet>>,
}

impl Filter {
    /// A filter from the patterns given.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, globset::Error> {
        let set = |patterns: &[String]| -> Result<Option<Arc<globset::GlobSet>>, globset::Error> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut b = globset::GlobSetBuilder::new();
            for p in patterns {
                let p = if p.contains('/') {
                    p.clone()
                } else {
                    format!("**/{p}")
                };
                b.add(
                    globset::GlobBuilder::new(&p)
                        .literal_separator(true)
                        .build()?,
                );
            }
            Ok(Some(Arc::new(b.build()?)))
        };
        Ok(Self {
            include: set(include)?,
            exclude: set(exclude)?,
        })
    }

    /// Whether `rel` (relative, `/`-separated) takes part.
    pub fn admits(&self, rel: &str, is_dir: bool) -> bool {
        if self.exclude.as_ref().is_some_and(|x| x.is_match(rel)) {
            return false;
        }
        is_dir || self.include.as_ref().is_none_or(|i| i.is_match(rel))
    }
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
            follow_links: false,
            on_existing: OnExisting::default(),
            checksum: false,
            filter: Filter::default(),
            dry_run: false,
            delete: false,
            dest: None,
            fsync: true,
            streams: 1,
        }
    }
}

/// What happens during a transfer, for progress display and `--json` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// What the transfer covers, once it is known (before the first file): the files and their
    /// bytes, unchanged ones included. An overall progress line is sized from it.
    Plan {
        /// Files named or found in the folders named.
        files: u64,
        /// Their bytes.
        bytes: u64,
    },
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
    /// Something named to send cannot be sent (unreadable, a name the server would refuse, a
    /// special file, a link not followed): left out, and the rest goes on.
    Skipped {
        /// The local path.
        path: String,
        /// Why.
        reason: String,
    },
    /// `get --delete`: a local file or empty folder the server does not have was removed.
    Deleted {
        /// Local path, relative to the output folder.
        path: String,
    },
    /// `--dry-run`: what would happen to this file or folder (`send`, `update`, `folder`,
    /// `delete`).
    WouldTransfer {
        /// Relative path.
        path: String,
        /// Its size (0 for a folder).
        size: u64,
        /// `send` (new at the destination), `update` (replaces another version), `folder`.
        action: String,
    },
    /// A file the destination already has with the same content: not sent again.
    Unchanged {
        /// Relative path.
        path: String,
        /// Its size.
        size: u64,
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

/// Seconds to the millisecond: what events report (`0.111`, not `0.11050700000000001`).
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
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

    /// Records a local item left out and tells the caller's event handler.
    pub(super) fn skip(
        &mut self,
        path: &Path,
        reason: String,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) {
        let shown = path.display().to_string();
        on_event(Event::Skipped {
            path: shown.clone(),
            reason: reason.clone(),
        });
        self.skipped.push((shown, reason));
    }
}

impl TransferError {
    /// Whether reconnecting and resuming may help: a lost or unreachable connection, data
    /// corrupted in transit. The one place that decides what [`with_retries`] retries.
    pub fn retryable(&self) -> bool {
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
    /// Local items left out: path, why.
    pub skipped: Vec<(String, String)>,
    /// Files the destination already had, identical: not sent (their bytes count in `bytes`).
    pub unchanged: u64,
    /// Of `files`, those that replaced another version at the destination.
    pub updated: u64,
    /// `get --delete`: local files and folders removed.
    pub deleted: u64,
    /// `--dry-run`: files that would move, and their bytes.
    pub would_transfer: (u64, u64),
    /// Reconnections made.
    pub retries: u32,
    /// Connections opened (a server never reached is not retried: it is reported at once).
    pub connections: u32,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_new_connection_can_fix_is_retried() {
        let io = || io::Error::other("x");
        let retried = [
            TransferError::Lost(io()),
            TransferError::Connect {
                addr: "a".into(),
                source: io(),
            },
            TransferError::Integrity("chunk 3".into()),
        ];
        assert!(retried.iter().all(TransferError::retryable));
        let final_ = [
            TransferError::Refused {
                status: Status::Unauthorized,
                message: "wrong token".into(),
            },
            TransferError::Protocol("x".into()),
            TransferError::Storage(StoreError::Conflict("f".into())),
            TransferError::Local {
                path: "p".into(),
                source: io(),
            },
        ];
        assert!(!final_.iter().any(TransferError::retryable));
    }
}
