//! The framework's datagram side: one UDP socket, every datagram answered on its own.
//!
//! UDP has no connections, so there is no per-connection task, cap or idle timeout; what carries
//! over from the TCP side is the handler split (the framework receives and sends, the handler only
//! computes a reply), the shutdown contract (a future passed in), and logging. Every datagram is
//! received into a buffer that holds the largest legal one, so nothing is silently truncated.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use barge_proto::datagram::RECV_BUFFER;
use tokio::net::UdpSocket;
use tracing::{Instrument, debug, info, info_span, warn};

/// Computes the reply to one datagram. One value serves every peer, from several workers at once.
pub trait DatagramHandler: Send + Sync + 'static {
    /// Writes the reply to `request` (from `peer`) into `reply`, which arrives empty. Returns
    /// `false` to send nothing.
    fn respond(&self, request: &[u8], peer: SocketAddr, reply: &mut Vec<u8>) -> bool;
}

/// What a datagram server did, reported when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DatagramStats {
    /// Datagrams received.
    pub received: u64,
    /// Replies sent.
    pub replied: u64,
    /// Receive or send calls that failed (the server carries on).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    replied: AtomicU64,
    errors: AtomicU64,
}

/// Pause after a failed receive, so a persistent error (out of memory, say) does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Answers datagrams on `socket` with `handler` until `shutdown` completes. `workers` tasks share
/// the socket so that replies are computed on every core.
pub async fn serve_datagrams<H: DatagramHandler>(
    socket: UdpSocket,
    handler: Arc<H>,
    workers: usize,
    shutdown: impl Future<Output = ()>,
) -> DatagramStats {
    let socket = Arc::new(socket);
    let counters = Arc::new(Counters::default());
    let span = info_span!("udp", local = %socket.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        tasks.spawn(
            worker(socket.clone(), handler.clone(), counters.clone()).instrument(span.clone()),
        );
    }
    shutdown.await;
    tasks.shutdown().await;
    let stats = DatagramStats {
        received: counters.received.load(Ordering::Relaxed),
        replied: counters.replied.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
    };
    span.in_scope(|| {
        info!(
            received = stats.received,
            replied = stats.replied,
            errors = stats.errors,
            "stopped"
        )
    });
    stats
}

async fn worker<H: DatagramHandler>(
    socket: Arc<UdpSocket>,
    handler: Arc<H>,
    counters: Arc<Counters>,
) {
    let mut request = vec![0u8; RECV_BUFFER];
    let mut reply = Vec::with_capacity(RECV_BUFFER);
    loop {
        let (len, peer) = match socket.recv_from(&mut request).await {
            Ok(r) => r,
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "receive failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        counters.received.fetch_add(1, Ordering::Relaxed);
        reply.clear();
        if !handler.respond(&request[..len], peer, &mut reply) {
            debug!(%peer, len, "no reply");
            continue;
        }
        match socket.send_to(&reply, peer).await {
            Ok(_) => {
                counters.replied.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, len, reply_len = reply.len(), "answered");
            }
            Err(e) => {
                // One peer's unreachable address must not stop the others being served.
                counters.errors.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, error = %e, "reply failed");
            }
        }
    }
}
