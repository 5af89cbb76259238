//! The server's beacon (`barge serve --announce`): announces the server to barge's multicast
//! group at start and every few seconds (with jitter), and answers queries — rate-limited, never
//! with more bytes than the query unless it came from one of this machine's subnets, garbage
//! ignored and counted.

use std::net::SocketAddr;
use std::time::Duration;

use barge_proto::lan::{Announcement, Message, decode, encode_announcement};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::{AnswerLimit, Interfaces, group_v4, group_v6};

/// What the beacon says and how often.
#[derive(Debug, Clone)]
pub struct BeaconConfig {
    /// The announcement (its `nonce` is set per answer).
    pub announcement: Announcement,
    /// The group's UDP port.
    pub port: u16,
    /// Answers per second at most, in all.
    pub answers_per_second: u32,
    /// Whether the server is reachable over IPv4 and over IPv6 (announced only where it is).
    pub ipv4: bool,
    pub ipv6: bool,
}

impl BeaconConfig {
    /// The families a server listening on `addr` serves: `0.0.0.0` IPv4 only, `[::]` both
    /// (Linux listens dual-stack), a given address its own family.
    pub fn families(addr: std::net::IpAddr) -> (bool, bool) {
        match addr {
            std::net::IpAddr::V4(_) => (true, false),
            std::net::IpAddr::V6(a) if a.is_unspecified() => (true, true),
            std::net::IpAddr::V6(_) => (false, true),
        }
    }
}

/// Answers to one address per second at most.
pub const ANSWERS_PER_SOURCE: u32 = 8;

/// What the beacon ignored: kept for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub answered: u64,
    pub garbage: u64,
    pub limited: u64,
    pub too_small: u64,
}

/// Announces and answers until dropped (spawn it). Fails only if no group socket can be made.
pub async fn run(config: BeaconConfig) -> std::io::Result<()> {
    let mut ifaces = Interfaces::now();
    let v4 = if config.ipv4 {
        Some(super::group_socket_v4(group_v4(), config.port, &ifaces)?)
    } else {
        None
    };
    let v6 = match config
        .ipv6
        .then(|| super::group_socket_v6(group_v6(), config.port, &ifaces))
    {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) if v4.is_none() => return Err(e),
        Some(Err(e)) => {
            debug!(error = %e, "no IPv6 discovery");
            None
        }
        None => None,
    };
    let mut every = config.announcement.every.max(1);
    if every == u32::MAX {
        every = 30;
    }
    let mut limit = AnswerLimit::new(config.answers_per_second, ANSWERS_PER_SOURCE);
    let mut counts = Counts::default();
    let mut logged = counts;
    let mut log_tick = tokio::time::interval(Duration::from_secs(60));
    let announce = |a: &Announcement| encode_announcement(a).ok();
    let Some(unsolicited) = announce(&config.announcement) else {
        return Err(std::io::Error::other(
            "the announcement does not fit a datagram",
        ));
    };
    let mut next = tokio::time::Instant::now();
    let mut buf = vec![0u8; barge_proto::lan::MAX_DATAGRAM + 1];
    let mut buf6 = vec![0u8; barge_proto::lan::MAX_DATAGRAM + 1];
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                // Interfaces come and go (a laptop joins Wi-Fi): looked up at each announcement.
                ifaces = Interfaces::now();
                let mut sent = 0;
                if let Some(v4) = &v4 {
                    sent += super::send_to_group_v4(v4, group_v4(), config.port, &ifaces, &unsolicited).await;
                }
                if let Some(v6) = &v6 {
                    sent += super::send_to_group_v6(v6, group_v6(), config.port, &ifaces, &unsolicited).await;
                }
                if sent == 0 {
                    debug!("announcement not sent on any interface");
                }
                next = tokio::time::Instant::now() + jittered(every);
            }
            r = recv_maybe(v4.as_ref(), &mut buf) => {
                if let (Some(v4), Ok((n, from))) = (&v4, r) {
                    answer(v4, &buf[..n], from, &config, &ifaces, &mut limit, &mut counts).await;
                }
            }
            r = recv_maybe(v6.as_ref(), &mut buf6) => {
                if let (Some(v6), Ok((n, from))) = (&v6, r) {
                    answer(v6, &buf6[..n], from, &config, &ifaces, &mut limit, &mut counts).await;
                }
            }
            _ = log_tick.tick() => {
                if counts != logged {
                    info!(
                        answered = counts.answered,
                        ignored = counts.garbage,
                        rate_limited = counts.limited,
                        smaller_than_answer = counts.too_small,
                        "LAN discovery since start"
                    );
                    logged = counts;
                }
            }
        }
    }
}

async fn recv_maybe(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// `every` seconds, ±20 %: servers started together do not announce in lockstep.
fn jittered(every: u32) -> Duration {
    let base = Duration::from_secs(u64::from(every));
    let spread = base.as_millis() as u64 * 2 / 5;
    let offset = super::random_u64() % spread.max(1);
    base - base / 5 + Duration::from_millis(offset)
}

async fn answer(
    socket: &UdpSocket,
    datagram: &[u8],
    from: SocketAddr,
    config: &BeaconConfig,
    ifaces: &Interfaces,
    limit: &mut AnswerLimit,
    counts: &mut Counts,
) {
    let query = match decode(datagram) {
        Ok(Message::Query(q)) => q,
        Ok(Message::Announcement(_)) => return, // another server's: for listeners
        Err(_) => {
            counts.garbage += 1;
            return;
        }
    };
    let ours = &config.announcement.name;
    if query
        .name
        .as_ref()
        .is_some_and(|n| !n.eq_ignore_ascii_case(ours))
    {
        return;
    }
    let mut a = config.announcement.clone();
    a.nonce = Some(query.nonce);
    let Ok(reply) = encode_announcement(&a) else {
        return;
    };
    // No amplification: an answer larger than its query only to a neighbour.
    if reply.len() > datagram.len() && !ifaces.is_local(from.ip()) {
        counts.too_small += 1;
        return;
    }
    if !limit.allow(from.ip()) {
        counts.limited += 1;
        return;
    }
    match socket.send_to(&reply, from).await {
        Ok(_) => counts.answered += 1,
        Err(e) => warn!(%from, error = %e, "cannot answer a discovery query"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(10);
            assert!(
                d >= Duration::from_secs(8) && d < Duration::from_secs(12),
                "{d:?}"
            );
        }
    }
}
