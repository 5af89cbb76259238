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
//! The framework also owns what protects a server on a network, since every service needs it the
//! same way: TLS termination (a TLS client is recognised by its first byte, so one port serves
//! both), connections per address, bandwidth limits, and the header timeout services apply.
//!
//! [`datagram`] is the same split for UDP: the framework receives and sends, a handler computes
//! replies.

pub mod datagram;

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::net::IdleTimeout;
use crate::throttle::{Bucket, Throttled};

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Policy the framework applies to every connection, whatever the service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; further clients wait in the listen backlog, not refused.
    pub max_connections: usize,
    /// How long a peer may leave a read or write waiting before its connection is closed.
    pub idle_timeout: Duration,
    /// After shutdown is requested, how long handlers may take to finish before they are dropped.
    pub shutdown_grace: Duration,
    /// Once a request header (or a TLS handshake) has begun, how long the peer has to finish it:
    /// a slow-loris client dribbling a byte at a time is cut off after this.
    pub header_timeout: Duration,
    /// Connections served at once from one IP address; more are closed at once (and logged).
    pub max_connections_per_ip: Option<usize>,
    /// TLS: connections whose first byte starts a TLS handshake are decrypted with this.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Bytes per second, all connections together.
    pub bwlimit: Option<u64>,
    /// Bytes per second, per connection.
    pub bwlimit_per_connection: Option<u64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 512,
            idle_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections_per_ip: None,
            tls: None,
            bwlimit: None,
            bwlimit_per_connection: None,
        }
    }
}

/// One accepted connection as a handler sees it.
#[derive(Debug)]
pub struct Connection<S> {
    /// This connection's place among its address's connections. Declared first, so dropped
    /// first: the place is free again before the peer can see the connection close, and a client
    /// that reconnects at once is not refused by the per-address limit.
    pub address_slot: AddressSlot,
    /// The byte stream, with the server's idle timeout on every read and write.
    pub stream: IdleTimeout<S>,
    /// Who connected.
    pub peer: SocketAddr,
    /// Cancelled when the server is shutting down: finish the current request, start no new one.
    pub shutdown: CancellationToken,
    /// Whether the connection is TLS.
    pub secure: bool,
    /// How long a header may take once its first byte has arrived ([`ServerConfig::header_timeout`]).
    pub header_timeout: Duration,
    /// The first request must be complete by then (accept + header timeout): a connection that
    /// says nothing cannot hold a slot for the whole idle timeout. Cleared by
    /// [`Connection::request_done`].
    pub first_request_by: Option<tokio::time::Instant>,
    /// Signalled while every slot is taken and a client may be waiting for one: a connection that
    /// has sent nothing for [`EVICT_SILENT_AFTER`] then gives its slot up.
    pub pressure: Option<Arc<Notify>>,
    /// When the connection was accepted.
    pub opened: tokio::time::Instant,
}

/// Under pressure (every slot taken), a connection that has sent nothing for this long since it
/// was accepted is closed to make room: silent connections cannot keep a waiting client out for
/// the header timeout. Short, because a client queued in the backlog has usually sent its first
/// bytes before it is accepted (and a barge client that is closed early reconnects), and because
/// clients behind N slots' worth of silent connections wait about this long per N.
pub const EVICT_SILENT_AFTER: Duration = Duration::from_millis(250);

impl<S> Connection<S> {
    fn new(
        stream: S,
        peer: SocketAddr,
        secure: bool,
        ctx: &ConnContext,
        address_slot: AddressSlot,
    ) -> Self {
        Self {
            address_slot,
            stream: IdleTimeout::new(stream, ctx.config.idle_timeout),
            peer,
            shutdown: ctx.shutdown.clone(),
            secure,
            header_timeout: ctx.config.header_timeout,
            first_request_by: Some(ctx.opened + ctx.config.header_timeout),
            pressure: Some(ctx.pressure.clone()),
            opened: ctx.opened,
        }
    }

    /// The service read a whole request: from now on only the header timeout of each request and
    /// the idle timeout apply.
    pub fn request_done(&mut self) {
        self.first_request_by = None;
    }
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

    /// [`Connection::read_more`] for a header: once its first bytes have arrived (`started` is
    /// set by the first read that returns some), the rest must arrive within the header timeout,
    /// however slowly they trickle in. Reset `started` to `None` when a header is complete.
    pub async fn read_header(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
        started: &mut Option<tokio::time::Instant>,
    ) -> io::Result<Option<usize>> {
        let limit = self.header_timeout;
        let deadline = match (*started, self.first_request_by) {
            (Some(t), Some(first)) => Some((t + limit).min(first)),
            (Some(t), None) => Some(t + limit),
            (None, first) => first,
        };
        let silent = started.is_none() && buf.is_empty() && self.first_request_by.is_some();
        let n = match deadline {
            None => self.read_more_or_evicted(buf, reserve, silent).await?,
            Some(deadline) => {
                let read = self.read_more_or_evicted(buf, reserve, silent);
                tokio::time::timeout_at(deadline, read)
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("header not complete within {limit:?}"),
                        )
                    })??
            }
        };
        if started.is_none() && n.is_some_and(|n| n > 0) {
            *started = Some(tokio::time::Instant::now());
        }
        Ok(n)
    }
}

impl<S: AsyncRead + Unpin> Connection<S> {
    /// [`Connection::read_more`] for a connection that has sent nothing yet (`silent`): when the
    /// server is short of slots it gives its own up after [`EVICT_SILENT_AFTER`].
    async fn read_more_or_evicted(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
        silent: bool,
    ) -> io::Result<Option<usize>> {
        let Some(pressure) = self.pressure.clone().filter(|_| silent) else {
            return self.read_more(buf, reserve).await;
        };
        loop {
            tokio::select! {
                n = self.read_more(buf, reserve) => return n,
                () = pressure.notified() => {
                    if self.opened.elapsed() >= EVICT_SILENT_AFTER {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "silent while other clients waited for a slot",
                        ));
                    }
                }
            }
        }
    }
}

/// What every connection of a server shares, and when this one was accepted.
struct ConnContext {
    config: ServerConfig,
    shutdown: CancellationToken,
    pressure: Arc<Notify>,
    opened: tokio::time::Instant,
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
    let per_ip = PerIp::new(
        config.max_connections_per_ip,
        default_per_remote_ip(config.max_connections),
    );
    let global = config.bwlimit.map(Bucket::new);
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut backoff = ACCEPT_BACKOFF.0;
    tokio::pin!(shutdown);

    let pressure = Arc::new(Notify::new());
    'accepting: loop {
        // Take a slot before accepting, so excess clients queue in the kernel's backlog. While
        // none is free, connections that have sent nothing are told to make room (see
        // `EVICT_SILENT_AFTER`), again every quarter of that while the wait lasts.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => loop {
                pressure.notify_waiters();
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => break permit,
                        Err(_) => break 'accepting, // never closed; treat it as shutdown
                    },
                    () = tokio::time::sleep(EVICT_SILENT_AFTER / 4) => {}
                    () = &mut shutdown => break 'accepting,
                }
            },
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break 'accepting,
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
                    () = &mut shutdown => break 'accepting,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let Some(ip_slot) = per_ip.take(peer.ip()) else {
            warn!(%peer, "too many connections from this address: closed");
            drop(stream);
            continue;
        };
        let mut buckets = global.iter().cloned().collect::<Vec<_>>();
        buckets.extend(config.bwlimit_per_connection.map(Bucket::new));
        let stream = Throttled::new(prepare(stream), buckets);
        let accepted = Accepted {
            stream,
            peer,
            tls: tls.clone(),
            ctx: ConnContext {
                config: config.clone(),
                shutdown: stop_requested.child_token(),
                pressure: pressure.clone(),
                opened: tokio::time::Instant::now(),
            },
            slot: AddressSlot {
                _held: Some(ip_slot),
            },
        };
        let handler = handler.clone();
        let abort = abort.clone();
        let span = info_span!("conn", %peer);
        tracker.spawn(
            async move {
                debug!("connected");
                tokio::select! {
                    result = accepted.run(&*handler) => match result {
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

/// A connection between accept and its handler: TLS is detected and terminated here.
struct Accepted {
    stream: Throttled<TcpStream>,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: ConnContext,
    /// Moved into the connection, so it is freed before the stream closes.
    slot: AddressSlot,
}

/// Why a connection ended before its handler ran, or the handler's own error.
enum Ended<E> {
    Tls(io::Error),
    Handler(E),
}

impl<E: Display> Display for Ended<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            Ended::Handler(e) => e.fmt(f),
        }
    }
}

impl Accepted {
    async fn run<H: Handler>(self, handler: &H) -> Result<(), Ended<H::Error>> {
        let Accepted {
            stream,
            peer,
            tls,
            ctx,
            slot,
        } = self;
        let (config, shutdown) = (&ctx.config, &ctx.shutdown);
        let connection = |stream, secure, slot| Connection::new(stream, peer, secure, &ctx, slot);
        let Some(acceptor) = tls else {
            return handler
                .handle(connection(stream, false, slot))
                .await
                .map_err(Ended::Handler);
        };
        // Peek at the first byte (waiting like for any request) to tell TLS from plain text.
        let mut first = [0u8; 1];
        let by = ctx.opened + config.header_timeout;
        let peeked = loop {
            tokio::select! {
                r = tokio::time::timeout_at(by, stream.get_ref().peek(&mut first)) => break r,
                () = shutdown.cancelled() => return Ok(()),
                // Silent while the server is short of slots: make room (see EVICT_SILENT_AFTER).
                () = ctx.pressure.notified() => {
                    if ctx.opened.elapsed() >= EVICT_SILENT_AFTER {
                        return Ok(());
                    }
                }
            }
        };
        match peeked {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
            Ok(Ok(0)) => return Ok(()), // closed without a word
            Ok(Ok(_)) => {
                return handler
                    .handle(connection(stream, false, slot))
                    .await
                    .map_err(Ended::Handler);
            }
            Ok(Err(e)) => return Err(Ended::Tls(e)),
            Err(_) => return Ok(()), // silent for the header timeout: nothing to serve
        }
        let secured = tokio::time::timeout(config.header_timeout, acceptor.accept(stream))
            .await
            .map_err(|_| {
                Ended::Tls(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "not finished within the header timeout",
                ))
            })?
            .map_err(Ended::Tls)?;
        handler
            .handle(Connection::new(secured, peer, true, &ctx, slot))
            .await
            .map_err(Ended::Handler)
    }
}

/// Without `--max-connections-per-ip`, one remote (non-loopback) address may hold this share of
/// the connection slots: an eighth (at least 4), so a few addresses cannot take every slot from
/// the rest. Loopback is the machine's own users, and is left to the explicit option.
fn default_per_remote_ip(max_connections: usize) -> usize {
    (max_connections / 8).max(4)
}

/// Counts connections per IP address.
#[derive(Clone)]
struct PerIp {
    /// The cap for every address, when set.
    max: Option<usize>,
    /// The cap for non-loopback addresses when `max` is not set.
    remote: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place among its address's connections (see
/// [`ServerConfig::max_connections_per_ip`]); frees it on drop.
#[derive(Debug, Default)]
pub struct AddressSlot {
    /// Held only to be dropped: that frees the place.
    _held: Option<IpSlot>,
}

impl AddressSlot {
    /// No place held (a connection made outside the accept loop, e.g. in tests).
    pub fn none() -> Self {
        Self { _held: None }
    }
}

/// One connection's place in [`PerIp`]; frees it on drop.
#[derive(Debug)]
struct IpSlot {
    ip: IpAddr,
    counts: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
}

impl PerIp {
    fn new(max: Option<usize>, remote: usize) -> Self {
        Self {
            max,
            remote,
            counts: Arc::default(),
        }
    }

    fn take(&self, ip: IpAddr) -> Option<IpSlot> {
        let max = match self.max {
            Some(max) => max,
            None if !ip.to_canonical().is_loopback() => self.remote,
            None => return Some(IpSlot { ip, counts: None }),
        };
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            counts: Some(self.counts.clone()),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(counts) = &self.counts
            && let Ok(mut counts) = counts.lock()
            && let Some(n) = counts.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_addresses_get_a_share_of_the_slots_by_default() {
        let per_ip = PerIp::new(None, default_per_remote_ip(512));
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let slots: Vec<_> = (0..64).map(|_| per_ip.take(remote).unwrap()).collect();
        assert!(per_ip.take(remote).is_none(), "64 of 512 is the share");
        assert!(per_ip.take("192.0.2.8".parse().unwrap()).is_some());
        drop(slots);
        assert!(per_ip.take(remote).is_some());
        // The machine's own users are not capped unless asked.
        let local: Vec<_> = (0..600)
            .map(|_| per_ip.take("127.0.0.1".parse().unwrap()))
            .collect();
        assert!(local.iter().all(Option::is_some));
        assert!(per_ip.take("::ffff:127.0.0.1".parse().unwrap()).is_some());
        let explicit = PerIp::new(Some(2), 64);
        let _a = explicit.take("127.0.0.1".parse().unwrap()).unwrap();
        let _b = explicit.take("127.0.0.1".parse().unwrap()).unwrap();
        assert!(explicit.take("127.0.0.1".parse().unwrap()).is_none());
        assert_eq!(default_per_remote_ip(16), 4);
    }
}
