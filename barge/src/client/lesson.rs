//! Uploading files in the lesson's format: header then body, file after file on one connection.
//! Reports progress as [`Event`]s and never prints; the binary decides how to show them.
//!
//! The file is read on a blocking thread in large chunks (the lesson read it line by line: ~4 M
//! sends per GiB of binary data) while the previous chunk is being sent, with a bounded number of
//! chunks in flight so memory stays flat whatever the file size.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use barge_proto::legacy::Header;
use barge_proto::name::{NameError, validate_file_name};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Size of each read from the file and write to the socket.
pub const SEND_CHUNK: usize = 1024 * 1024;
/// Chunks read ahead of the socket: enough to keep the disk and the network busy at once.
const CHUNKS_IN_FLIGHT: usize = 4;
/// What the lesson's client puts in `msg`; kept so a lesson server logs something familiar.
pub const LESSON_MSG: &str = "注意身体,多喝营养快线";

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A local file cannot be sent (missing, not a regular file, unreadable).
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A local file's name cannot be sent as one safe name.
    #[error("{}: {source}", path.display())]
    Name {
        /// The file.
        path: PathBuf,
        /// Why.
        source: NameError,
    },
    /// The server cannot be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The connection failed mid-transfer (reset, closed, timed out).
    #[error("connection lost while sending {name:?} after {sent} of {size} bytes: {source}")]
    ConnectionLost {
        /// File being sent.
        name: String,
        /// Bytes of it already sent.
        sent: u64,
        /// Its size.
        size: u64,
        /// Why.
        source: io::Error,
    },
    /// The connection failed after everything was sent, before the server confirmed by closing.
    #[error("connection failed after sending everything: {0}")]
    Closing(io::Error),
}

/// Progress of a send, reported as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A file is about to be sent.
    Start {
        /// The name the server is asked to store it under.
        name: String,
        /// Its size.
        size: u64,
    },
    /// More of the current file went out.
    Progress {
        /// Bytes of the current file sent so far.
        sent: u64,
    },
    /// The current file went out completely.
    Done {
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
        /// Time from its header to its last byte.
        elapsed: Duration,
    },
}

/// A file checked and ready to send.
#[derive(Debug)]
pub struct Outgoing {
    path: PathBuf,
    name: String,
    size: u64,
    file: File,
}

impl Outgoing {
    /// Opens `path` and checks that it is a regular file whose name the server will accept.
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let file_err = |source| ClientError::File {
            path: path.to_owned(),
            source,
        };
        let name = path
            .file_name()
            .ok_or_else(|| file_err(io::Error::other("has no file name")))?
            .to_str()
            .ok_or_else(|| file_err(io::Error::other("name is not valid UTF-8")))?;
        validate_file_name(name).map_err(|source| ClientError::Name {
            path: path.to_owned(),
            source,
        })?;
        let file = File::open(path).map_err(file_err)?;
        let meta = file.metadata().map_err(file_err)?;
        if !meta.is_file() {
            return Err(file_err(io::Error::other("not a regular file")));
        }
        Ok(Self {
            path: path.to_owned(),
            name: name.to_owned(),
            size: meta.len(),
            file,
        })
    }

    /// The name the file is sent under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its size as declared in the header.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Sends uploads in the lesson's format over one connection.
#[derive(Debug)]
pub struct LegacySender<S> {
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LegacySender<S> {
    /// Starts a conversation on `stream` (already connected).
    pub fn new(stream: S) -> Self {
        Self { stream }
    }

    /// Sends one file: header, then exactly `size` bytes.
    pub async fn send(
        &mut self,
        file: Outgoing,
        on_event: &mut (impl FnMut(Event) + Send),
    ) -> Result<(), ClientError> {
        let Outgoing {
            path,
            name,
            size,
            file,
        } = file;
        let header = Header {
            msg: Some(LESSON_MSG.into()),
            ..Header::new(name.clone(), size)
        };
        let header = header.to_bytes().map_err(|e| ClientError::File {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let started = Instant::now();
        on_event(Event::Start {
            name: name.clone(),
            size,
        });
        let lost = |sent, source| ClientError::ConnectionLost {
            name: name.clone(),
            sent,
            size,
            source,
        };
        self.stream
            .write_all(&header)
            .await
            .map_err(|e| lost(0, e))?;
        let mut chunks = read_chunks(file, size);
        let mut sent = 0u64;
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.map_err(|source| ClientError::File {
                path: path.clone(),
                source,
            })?;
            self.stream
                .write_all(&chunk)
                .await
                .map_err(|e| lost(sent, e))?;
            sent += chunk.len() as u64;
            on_event(Event::Progress { sent });
        }
        self.stream.flush().await.map_err(|e| lost(sent, e))?;
        on_event(Event::Done {
            name: name.clone(),
            size,
            elapsed: started.elapsed(),
        });
        Ok(())
    }

    /// Ends the conversation: closes our side, then waits for the server to close its side, which
    /// it does only after it has read (and stored) everything we sent.
    pub async fn finish(mut self) -> Result<(), ClientError> {
        self.stream.shutdown().await.map_err(ClientError::Closing)?;
        let mut sink = [0u8; 512];
        // The lesson's server never replies; anything it does send is drained and ignored.
        while self
            .stream
            .read(&mut sink)
            .await
            .map_err(ClientError::Closing)?
            > 0
        {}
        Ok(())
    }
}

/// Reads exactly `size` bytes of `file` on a blocking thread, in [`SEND_CHUNK`] pieces. A file
/// that shrank since it was measured is an error: the header already promised `size` bytes.
fn read_chunks(mut file: File, size: u64) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).map_or(SEND_CHUNK, |l| l.min(SEND_CHUNK));
            let mut chunk = BytesMut::zeroed(want);
            let result = file.read_exact(&mut chunk).map(|()| chunk.freeze());
            let failed = result.is_err();
            let result = result.map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent")
                }
                _ => e,
            });
            if tx.blocking_send(result).is_err() || failed {
                return; // receiver gone (send aborted) or error delivered
            }
            left -= want as u64;
        }
    });
    rx
}

/// Sends `files` on `stream` one after another, then waits for the server to close.
pub async fn send_files<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    files: Vec<Outgoing>,
    mut on_event: impl FnMut(Event) + Send,
) -> Result<(), ClientError> {
    let mut sender = LegacySender::new(stream);
    for file in files {
        sender.send(file, &mut on_event).await?;
    }
    sender.finish().await
}
