//! The file port: a connection's first four bytes tell which front end it speaks, barge's own
//! preface ([`super::v1`]) or the lesson's format ([`super::lesson`]). Also the service's
//! configuration (which front ends are on, TLS required) and its per-server state.

use std::sync::Arc;

use barge_proto::legacy::DecodeError;
use barge_proto::wire::MAGIC;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::server::{Connection, Handler};
use crate::store::StoreError;
use crate::transfer::Core;

/// Socket reads are sized to this: large enough that per-read overhead vanishes next to the copy,
/// small enough that hundreds of concurrent uploads stay within a modest memory budget.
pub const READ_CHUNK: usize = 256 * 1024;

/// Why a connection on the file port was closed early.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The bytes are not a valid lesson upload.
    #[error("bad upload header: {0}")]
    Decode(#[from] DecodeError),
    /// An upload was refused or could not be stored.
    #[error("upload of {name:?} ({size} bytes) not stored: {source}")]
    Storage {
        /// Name the peer asked for (printed escaped).
        name: String,
        /// Size the peer declared.
        size: u64,
        /// Why.
        source: StoreError,
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

/// The file port's service: uploads (barge's protocol or the lesson's), listings and downloads,
/// all through one transfer [`Core`].
#[derive(Debug, Clone)]
pub struct FileService {
    core: Core,
    legacy: bool,
    require_tls: bool,
    /// Connections of this server in the middle of a data frame: they share its read budget.
    /// Per server, not per process, so two servers in one process do not squeeze each other.
    receiving: Arc<std::sync::atomic::AtomicUsize>,
    /// Striped uploads in progress, for the connections that join them.
    stripes: Arc<crate::transfer::stripe::Stripes>,
    /// How long a striped upload's lanes wait for each other ([`crate::transfer::stripe::TURN_WAIT`]).
    stripe_wait: std::time::Duration,
}

/// Whether the lesson's format is on when the operator has not said: it cannot authenticate or
/// encrypt, so only on a loopback address of a server without tokens.
pub fn lesson_format_by_default(addr: std::net::IpAddr, has_tokens: bool) -> bool {
    addr.is_loopback() && !has_tokens
}

impl FileService {
    /// A service over `core`, with the lesson's format accepted and no TLS required.
    pub fn new(core: Core) -> Self {
        Self {
            core,
            legacy: true,
            require_tls: false,
            receiving: Arc::default(),
            stripes: Default::default(),
            stripe_wait: crate::transfer::stripe::TURN_WAIT,
        }
    }

    /// A service over a local folder: the common case.
    pub fn local(store: crate::store::LocalStore, policy: crate::transfer::Policy) -> Self {
        Self::new(Core::new(Arc::new(store), policy))
    }

    /// Requires one of `tokens` on every barge connection (see [`Core::with_tokens`]).
    pub fn with_tokens(
        mut self,
        tokens: crate::auth::Tokens,
        brake: crate::auth::FailureBrake,
    ) -> Result<Self, StoreError> {
        self.core = self.core.with_tokens(tokens, brake)?;
        Ok(self)
    }

    /// Allows or forbids listing and downloading.
    pub fn with_downloads(mut self, allowed: bool) -> Self {
        self.core = self.core.with_downloads(allowed);
        self
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

    /// The transfer core.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Whether barge's protocol needs TLS.
    pub fn tls_required(&self) -> bool {
        self.require_tls
    }

    /// How long the connections of a striped upload wait for each other's chunks (and a join
    /// for its put) before the upload fails: [`crate::transfer::stripe::TURN_WAIT`] by default.
    pub fn with_stripe_wait(mut self, wait: std::time::Duration) -> Self {
        self.stripe_wait = wait;
        self
    }

    /// How long a striped upload's connections wait for each other.
    pub(crate) fn stripe_wait(&self) -> std::time::Duration {
        self.stripe_wait
    }

    /// This server's striped uploads in progress.
    pub(crate) fn stripes(&self) -> &crate::transfer::stripe::Stripes {
        &self.stripes
    }

    /// This server's count of connections receiving file data.
    pub(crate) fn receiving(&self) -> &Arc<std::sync::atomic::AtomicUsize> {
        &self.receiving
    }
}

impl Handler for FileService {
    type Error = FileError;

    async fn handle<S>(&self, mut conn: Connection<S>) -> Result<(), FileError>
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
                Some(0) => return Err(FileError::TruncatedHeader(buf.len())),
                Some(_) => {}
            }
        }
        if buf[..MAGIC.len()] == MAGIC {
            return super::v1::serve(self, conn, buf).await;
        }
        if !self.legacy {
            return Err(FileError::Protocol(
                "the lesson's upload format is turned off on this server (it has no \
                 authentication; `serve --legacy` turns it on)"
                    .into(),
            ));
        }
        super::lesson::serve(&self.core, conn, buf, started).await
    }
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
