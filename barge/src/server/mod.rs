//! The server framework every barge TCP service runs on — Python's `socketserver` done with limits:
//! an accept loop ([`serve`]) that owns policy (connection cap, idle timeout, accept back-off,
//! logging span, graceful shutdown) and a [`Handler`] that owns one connection's conversation.
//!
//! Shutdown is two steps, like mini-redis and quinn: when the `shutdown` future passed to [`serve`]
//! completes, the listener closes and every handler's [`Connection::shutdown`] token is cancelled
//! ("finish what you are doing, take nothing new"); handlers still running after
//! [`ServerConfig::shutdown_grace`] are then dropped, which runs their destructors (an unfinished
//! upload removes its temporary file).
//!
//! [`datagram`] is the same split for UDP: the framework receives and sends, a handler computes
//! replies.

pub mod datagram;

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::net::IdleTimeout;

/// Policy the framework applies to every connection, whatever the service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; further clients wait in the listen backlog, not refused.
    pub max_connections: usize,
    /// How long a peer may leave a read or write waiting before its connection is closed.
    pub idle_timeout: Duration,
    /// After shutdown is requested, how long handlers may take to finish before they are dropped.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 512,
            idle_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// One accepted connection as a handler sees it.
#[derive(Debug)]
pub struct Connection<S> {
    /// The byte stream, with the server's idle timeout on every read and write.
    pub stream: IdleTimeout<S>,
    /// Who connected.
    pub peer: SocketAddr,
    /// Cancelled when the server is shutting down: finish the current request, start no new one.
    pub shutdown: CancellationToken,
}

impl<S: AsyncRead + Unpin> Connection<S> {
    /// Reads more bytes into `buf` (reserving `reserve` first). Between requests — `buf` empty —
    /// a shutdown request ends the wait with `Ok(None)`; inside a request reading carries on, so the
    /// request can finish. `Ok(Some(0))` is the end of the stream.
    pub async fn read_more(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
    ) -> io::Result<Option<usize>> {
        buf.reserve(reserve);
        tokio::select! {
            n = self.stream.read_buf(buf) => n.map(Some),
            () = self.shutdown.cancelled(), if buf.is_empty() => Ok(None),
        }
    }
}

/// Serves one connection. One value is shared by every connection of a server.
pub trait Handler: Send + Sync + 'static {
    /// Why a connection ended badly; logged by the framework in the connection's span.
    type Error: Display + Send;

    /// Converses with one peer until it is done or the connection is unusable.
    fn handle<S>(
        &self,
        conn: Connection<S>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send;
}

/// First and last pause after a failed `accept` (typically `EMFILE`): retrying at once would spin
/// while the process is out of descriptors.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Accepts connections on `listener` and serves each with `handler` until `shutdown` completes,
/// then shuts down gracefully. Returns once every connection has ended.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let tracker = TaskTracker::new();
    let stop_requested = CancellationToken::new();
    let abort = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut backoff = ACCEPT_BACKOFF.0;
    tokio::pin!(shutdown);

    loop {
        // Take a slot before accepting, so excess clients queue in the kernel's backlog.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed; treat it as shutdown
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF.0;
                pair
            }
            Err(e) => {
                error!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let conn = Connection {
            stream: IdleTimeout::new(prepare(stream), config.idle_timeout),
            peer,
            shutdown: stop_requested.child_token(),
        };
        let handler = handler.clone();
        let abort = abort.clone();
        let span = info_span!("conn", %peer);
        tracker.spawn(
            async move {
                debug!("connected");
                tokio::select! {
                    result = handler.handle(conn) => match result {
                        Ok(()) => debug!("closed"),
                        Err(e) => warn!(error = %e, "connection closed on error"),
                    },
                    () = abort.cancelled() => warn!("cancelled by shutdown"),
                }
                drop(permit);
            }
            .instrument(span),
        );
    }

    drop(listener);
    stop_requested.cancel();
    tracker.close();
    if !tracker.is_empty() {
        info!(
            connections = tracker.len(),
            grace_secs = config.shutdown_grace.as_secs_f64(),
            "shutting down: waiting for connections to finish"
        );
    }
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tracker.len(),
            "shutdown grace period over: cancelling"
        );
        abort.cancel();
        tracker.wait().await;
    }
}

fn prepare(stream: TcpStream) -> TcpStream {
    // Replies are small and must not sit behind Nagle's algorithm; failure only costs latency.
    let _ = stream.set_nodelay(true);
    stream
}

/// Completes on Ctrl-C or SIGTERM: the usual way to ask a server to stop.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received"),
        () = term => info!("SIGTERM received"),
    }
}
