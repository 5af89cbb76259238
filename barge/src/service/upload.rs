//! The file service on barge's upload port. A connection's first four bytes tell which protocol it
//! speaks: barge's own preface (see [`super::transfer`]), or the lesson's format,
//! `[i32 LE length][JSON header][body]` uploads one after another, handled here.
//!
//! The lesson's format has no reply, so the only thing a receiver can do with a bad upload is log
//! why and close the connection; the sender then sees its connection reset. Nothing of a refused or
//! unfinished upload is published.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use barge_proto::legacy::{DecodeError, Decoder, Frame, Header};
use barge_proto::wire::MAGIC;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::{info, warn};

use crate::auth::{FailureBrake, Tokens};
use crate::server::{Connection, Handler};
use crate::storage::{Storage, StorageError};

/// Socket reads are sized to this: large enough that per-read overhead vanishes next to the copy,
/// small enough that hundreds of concurrent uploads stay within a modest memory budget.
pub const READ_CHUNK: usize = 256 * 1024;

/// Why an upload connection was closed early.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The bytes are not a valid lesson upload.
    #[error("bad upload header: {0}")]
    Decode(#[from] DecodeError),
    /// The upload was refused or could not be stored.
    #[error("upload of {name:?} ({size} bytes) not stored: {source}")]
    Storage {
        /// Name the peer asked for (printed escaped).
        name: String,
        /// Size the peer declared.
        size: u64,
        /// Why.
        source: StorageError,
    },
    /// The peer closed the connection inside a header.
    #[error("connection closed after {0} bytes of a header")]
    TruncatedHeader(usize),
    /// The peer closed the connection inside a body.
    #[error("connection closed after {received} of {expected} bytes of {name:?}")]
    TruncatedBody {
        /// Name the peer asked for.
        name: String,
        /// Body bytes received.
        received: u64,
        /// Body bytes declared.
        expected: u64,
    },
    /// The peer broke barge's protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection failed (reset, idle timeout, ...).
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Receives uploads (barge's protocol or the lesson's) into a [`Storage`], and serves listings
/// and downloads from it over barge's protocol.
#[derive(Debug, Clone)]
pub struct UploadService {
    storage: Storage,
    downloads: bool,
    legacy: bool,
    require_tls: bool,
    access: Option<Arc<Access>>,
    /// Connections of this server in the middle of a data frame: they share its read budget.
    /// Per server, not per process, so two servers in one process do not squeeze each other.
    receiving: Arc<std::sync::atomic::AtomicUsize>,
}

/// Whether the lesson's format is on when the operator has not said: it cannot authenticate or
/// encrypt, so only on a loopback address of a server without tokens.
pub fn lesson_format_by_default(addr: std::net::IpAddr, has_tokens: bool) -> bool {
    addr.is_loopback() && !has_tokens
}

/// The tokens a server requires, the storage of each token's root, and the brake on guessing.
#[derive(Debug)]
pub struct Access {
    /// Accepted tokens.
    pub tokens: Tokens,
    /// Storage of each root folder named in the tokens.
    pub roots: HashMap<String, Storage>,
    /// Failed attempts per address.
    pub brake: FailureBrake,
}

impl UploadService {
    /// A service storing into `storage`, with listing and downloads allowed, the lesson's format
    /// accepted, no TLS required and no tokens.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            downloads: true,
            legacy: true,
            require_tls: false,
            access: None,
            receiving: Arc::default(),
        }
    }

    /// Accepts or refuses the lesson's format (which has no authentication).
    pub fn with_legacy(mut self, allowed: bool) -> Self {
        self.legacy = allowed;
        self
    }

    /// Refuses barge's protocol over a plain-text connection.
    pub fn with_tls_required(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// Requires one of `tokens` on every barge connection; rights and roots follow the token.
    /// Root folders are created now.
    pub fn with_tokens(
        mut self,
        tokens: Tokens,
        brake: FailureBrake,
    ) -> Result<Self, StorageError> {
        let mut roots = HashMap::new();
        for root in tokens.grants().filter_map(|g| g.root.clone()) {
            if let std::collections::hash_map::Entry::Vacant(slot) = roots.entry(root) {
                let storage = self.storage.subfolder(slot.key())?;
                slot.insert(storage);
            }
        }
        self.access = Some(Arc::new(Access {
            tokens,
            roots,
            brake,
        }));
        Ok(self)
    }

    /// The tokens, when the server requires them.
    pub fn access(&self) -> Option<&Access> {
        self.access.as_deref()
    }

    /// Whether barge's protocol needs TLS.
    pub fn tls_required(&self) -> bool {
        self.require_tls
    }

    /// Allows or forbids listing and downloading.
    pub fn with_downloads(mut self, allowed: bool) -> Self {
        self.downloads = allowed;
        self
    }

    /// This server's count of connections receiving file data.
    pub(crate) fn receiving(&self) -> &Arc<std::sync::atomic::AtomicUsize> {
        &self.receiving
    }

    /// The storage uploads go to.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Whether listing and downloading are allowed.
    pub fn downloads_allowed(&self) -> bool {
        self.downloads
    }
}

impl Handler for UploadService {
    type Error = UploadError;

    async fn handle<S>(&self, mut conn: Connection<S>) -> Result<(), UploadError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut started = None;
        // Four bytes decide the protocol: barge's magic is never a valid lesson length prefix.
        while buf.len() < MAGIC.len() {
            match conn.read_header(&mut buf, READ_CHUNK, &mut started).await? {
                None => return Ok(()),
                Some(0) if buf.is_empty() => return Ok(()),
                Some(0) => return Err(UploadError::TruncatedHeader(buf.len())),
                Some(_) => {}
            }
        }
        if buf[..MAGIC.len()] == MAGIC {
            return super::transfer::serve(self, conn, buf).await;
        }
        if !self.legacy {
            return Err(UploadError::Protocol(
                "the lesson's upload format is turned off on this server (it has no \
                 authentication; `serve --legacy` turns it on)"
                    .into(),
            ));
        }
        self.lesson(conn, buf, started).await
    }
}

impl UploadService {
    /// Serves the lesson's format; `buf` holds the first bytes already read.
    async fn lesson<S>(
        &self,
        mut conn: Connection<S>,
        mut buf: BytesMut,
        mut started: Option<tokio::time::Instant>,
    ) -> Result<(), UploadError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut decoder = Decoder::new();
        loop {
            // Between uploads: a clean end of stream, or shutdown, ends the conversation.
            let header = loop {
                if let Some(frame) = decoder.decode(&mut buf)? {
                    match frame {
                        Frame::Header(h) => {
                            started = None;
                            conn.request_done();
                            break h;
                        }
                        // Only headers come between uploads.
                        Frame::Body(_) | Frame::End => unreachable_frame()?,
                    }
                }
                let Some(n) = conn.read_header(&mut buf, READ_CHUNK, &mut started).await? else {
                    return Ok(()); // shutting down between uploads
                };
                if n == 0 {
                    return if buf.is_empty() {
                        Ok(())
                    } else {
                        Err(UploadError::TruncatedHeader(buf.len()))
                    };
                }
            };
            receive_body(
                &self.storage,
                &mut conn.stream,
                &mut buf,
                &mut decoder,
                header,
            )
            .await?;
        }
    }
}

/// Receives one body into storage and publishes it.
async fn receive_body<S: AsyncRead + Unpin>(
    storage: &Storage,
    stream: &mut S,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    header: Header,
) -> Result<(), UploadError> {
    let started = Instant::now();
    let storage_err = |source| UploadError::Storage {
        name: header.file_name.clone(),
        size: header.file_size,
        source,
    };
    let mut file = storage
        .begin(&header.file_name, header.file_size)
        .await
        .map_err(storage_err)?;
    loop {
        match decoder.decode(buf)? {
            Some(Frame::Body(chunk)) => file.write(chunk).await.map_err(storage_err)?,
            Some(Frame::End) => break,
            Some(Frame::Header(_)) => unreachable_frame()?,
            None => {
                buf.reserve(READ_CHUNK);
                if stream.read_buf(buf).await? == 0 {
                    return Err(UploadError::TruncatedBody {
                        name: header.file_name.clone(),
                        received: file.written(),
                        expected: header.file_size,
                    });
                }
            }
        }
    }
    let stored = file.commit().await.map_err(storage_err)?;
    let secs = started.elapsed().as_secs_f64();
    info!(
        name = ?stored.name,
        bytes = stored.size,
        secs = format_args!("{secs:.3}"),
        mb_per_s = format_args!("{:.1}", stored.size as f64 / secs.max(1e-9) / 1e6),
        msg = header.msg.as_ref().map(|m| m.to_string()).unwrap_or_default(),
        "upload complete"
    );
    if stored.name != header.file_name {
        warn!(asked = ?header.file_name, stored = ?stored.name, "name taken: stored under another");
    }
    Ok(())
}

/// The decoder only yields body frames after a header; anything else is a bug here, reported as a
/// connection error rather than a panic.
fn unreachable_frame() -> Result<(), UploadError> {
    Err(UploadError::Io(std::io::Error::other(
        "decoder produced a frame out of order",
    )))
}

#[cfg(test)]
mod tests {
    use super::lesson_format_by_default;

    #[test]
    fn the_lesson_format_is_off_on_networks_and_with_tokens() {
        let on = |a: &str, t| lesson_format_by_default(a.parse().unwrap(), t);
        assert!(on("127.0.0.1", false));
        assert!(on("::1", false));
        assert!(!on("127.0.0.1", true));
        assert!(!on("0.0.0.0", false));
        assert!(!on("::", false));
        assert!(!on("192.168.1.20", false));
    }
}
