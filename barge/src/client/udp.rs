//! UDP request/reply with a timeout, retries, and replies matched to their request; ping-style
//! statistics.
//!
//! Matching works with any server, the lesson's included (it answers `hi`, with no request id to
//! match on): each request gets its own socket, connected to the server, kept for that request's
//! retries and closed after. A late reply to an earlier request arrives at a closed socket and is
//! dropped by the kernel; duplicates of the current reply are never read. The payload goes out
//! exactly as given.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use barge_proto::datagram::{Fit, RECV_BUFFER, TooLarge, check_payload};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// How a request/reply run behaves.
#[derive(Debug, Clone)]
pub struct UdpOptions {
    /// Requests to make.
    pub count: u64,
    /// Pause between one request's end (reply or give-up) and the next request.
    pub interval: Duration,
    /// How long to wait for a reply to each transmission.
    pub timeout: Duration,
    /// Extra transmissions of a request that got no reply.
    pub retries: u32,
}

impl Default for UdpOptions {
    fn default() -> Self {
        Self {
            count: 1,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(1),
            retries: 2,
        }
    }
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UdpClientError {
    /// The payload cannot be one datagram.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// A local socket operation failed.
    #[error("UDP socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpEvent {
    /// A reply arrived.
    Reply {
        /// Request number, from 0.
        seq: u64,
        /// Transmission that was answered, from 1 (a late reply to an earlier transmission of
        /// the same request counts for the latest).
        attempt: u32,
        /// Time from the latest transmission to the reply.
        rtt: Duration,
        /// The reply's bytes.
        reply: Vec<u8>,
    },
    /// No reply after every transmission.
    Lost {
        /// Request number, from 0.
        seq: u64,
        /// Transmissions made.
        attempts: u32,
    },
}

/// Totals of a run, ping-style.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UdpSummary {
    /// Requests made.
    pub requests: u64,
    /// Requests answered.
    pub replies: u64,
    /// Datagrams sent, retries included.
    pub transmissions: u64,
    /// Round-trip time of every answered request.
    pub rtts: Vec<Duration>,
}

impl UdpSummary {
    /// Share of requests never answered, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        (self.requests - self.replies) as f64 * 100.0 / self.requests as f64
    }

    /// min, avg, max and p99 round-trip times, if any reply arrived.
    pub fn rtt_stats(&self) -> Option<[Duration; 4]> {
        let mut sorted = self.rtts.clone();
        sorted.sort_unstable();
        let (first, last) = (*sorted.first()?, *sorted.last()?);
        let avg = sorted.iter().sum::<Duration>() / sorted.len() as u32;
        // Nearest-rank percentile.
        let rank = (sorted.len() * 99).div_ceil(100).max(1);
        Some([first, avg, last, sorted[rank - 1]])
    }
}

/// Checks `payload` against the datagram limits for `server`'s family.
pub fn check(payload: &[u8], server: SocketAddr) -> Result<Fit, TooLarge> {
    check_payload(payload.len(), server.is_ipv6())
}

/// Makes `options.count` requests of `payload` to `server`, one at a time.
pub async fn request_reply(
    server: SocketAddr,
    payload: &[u8],
    options: &UdpOptions,
    mut on_event: impl FnMut(UdpEvent),
) -> Result<UdpSummary, UdpClientError> {
    check(payload, server)?;
    let local: SocketAddr = if server.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut summary = UdpSummary::default();
    let mut buf = vec![0u8; RECV_BUFFER];
    for seq in 0..options.count {
        if seq > 0 && !options.interval.is_zero() {
            tokio::time::sleep(options.interval).await;
        }
        let socket = UdpSocket::bind(local).await?;
        socket.connect(server).await?;
        summary.requests += 1;
        let mut answer = None;
        let mut attempts = 0;
        while answer.is_none() && attempts <= options.retries {
            attempts += 1;
            summary.transmissions += 1;
            let sent_at = Instant::now();
            let deadline = sent_at + options.timeout;
            socket.send(payload).await?;
            answer = await_reply(&socket, &mut buf, deadline)
                .await?
                .map(|reply| (reply, sent_at.elapsed()));
        }
        let event = match answer {
            Some((reply, rtt)) => {
                summary.replies += 1;
                summary.rtts.push(rtt);
                UdpEvent::Reply {
                    seq,
                    attempt: attempts,
                    rtt,
                    reply,
                }
            }
            None => UdpEvent::Lost { seq, attempts },
        };
        on_event(event);
    }
    Ok(summary)
}

/// Waits until `deadline` for a datagram on `socket`. "Port unreachable" (reported on a connected
/// socket after an earlier transmission) counts as no reply, not as a failure.
async fn await_reply(
    socket: &UdpSocket,
    buf: &mut [u8],
    deadline: Instant,
) -> std::io::Result<Option<Vec<u8>>> {
    match tokio::time::timeout_at(deadline, socket.recv(buf)).await {
        Err(_) => Ok(None),
        Ok(Ok(n)) => Ok(Some(buf[..n].to_vec())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Nothing listens (yet); keep the attempt's pacing instead of spinning.
            tokio::time::sleep_until(deadline).await;
            Ok(None)
        }
        Ok(Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_stats_nearest_rank() {
        let s = UdpSummary {
            requests: 101,
            replies: 100,
            transmissions: 103,
            rtts: (1..=100).map(Duration::from_millis).collect(),
        };
        let [min, avg, max, p99] = s.rtt_stats().unwrap();
        assert_eq!(min, Duration::from_millis(1));
        assert_eq!(max, Duration::from_millis(100));
        assert_eq!(p99, Duration::from_millis(99));
        assert_eq!(avg, Duration::from_micros(50_500));
        assert!((s.loss_percent() - 0.990_099).abs() < 1e-3);
        assert_eq!(UdpSummary::default().rtt_stats(), None);
        assert_eq!(UdpSummary::default().loss_percent(), 0.0);
    }
}
