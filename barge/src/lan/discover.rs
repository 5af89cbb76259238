//! The client's side of discovery: one query to the group (or to one address), the answers
//! gathered for a while ([`discover`]); a server looked up by name ([`find`]); and a watch that
//! also hears unsolicited announcements and notices servers that stop ([`Watch`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use barge_proto::lan::{Announcement, Message, Query, decode, encode_query};
use tokio::net::UdpSocket;

use super::{Interfaces, group_v4, group_v6};

/// A server that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where barge's protocol is served: the answer's source address, the announced port.
    pub addr: SocketAddr,
    /// What it announced.
    pub announcement: Announcement,
    /// When it was last heard.
    pub heard: Instant,
}

impl Found {
    /// The HTTP face's address, if it runs.
    pub fn http(&self) -> Option<SocketAddr> {
        self.announcement
            .http
            .map(|p| SocketAddr::new(self.addr.ip(), p))
    }
}

/// Where and how long to ask.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The group's port.
    pub port: u16,
    /// Ask this address only (unicast), not the group.
    pub at: Option<SocketAddr>,
    /// Only this server (by name) should answer; the first answer ends the wait.
    pub name: Option<String>,
    /// How long to wait for answers.
    pub timeout: Duration,
}

impl Default for Ask {
    fn default() -> Self {
        Self {
            port: super::PORT,
            at: None,
            name: None,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Sockets that send queries and hear the answers.
struct Querier {
    v4: UdpSocket,
    v6: Option<UdpSocket>,
    nonce: u64,
    datagram: Vec<u8>,
}

impl Querier {
    fn new(name: Option<String>) -> std::io::Result<Self> {
        let nonce = super::random_u64();
        let datagram = encode_query(&Query { nonce, name })
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(Self {
            v4: super::query_socket_v4()?,
            v6: super::query_socket_v6().ok(),
            nonce,
            datagram,
        })
    }

    async fn send(&self, ask: &Ask) {
        match ask.at {
            Some(at) if at.is_ipv4() => {
                let _ = self.v4.send_to(&self.datagram, at).await;
            }
            Some(at) => {
                if let Some(v6) = &self.v6 {
                    let _ = v6.send_to(&self.datagram, at).await;
                }
            }
            None => {
                let ifaces = Interfaces::now();
                super::send_to_group_v4(&self.v4, group_v4(), ask.port, &ifaces, &self.datagram)
                    .await;
                if let Some(v6) = &self.v6 {
                    super::send_to_group_v6(v6, group_v6(), ask.port, &ifaces, &self.datagram)
                        .await;
                }
            }
        }
    }

    /// The next answer to this querier's nonce.
    async fn answer(&self, buf: &mut [u8], buf6: &mut [u8]) -> Option<Found> {
        let (n, from, b) = tokio::select! {
            r = self.v4.recv_from(buf) => { let (n, from) = r.ok()?; (n, from, &*buf) }
            r = recv6(self.v6.as_ref(), buf6) => { let (n, from) = r.ok()?; (n, from, &*buf6) }
        };
        match decode(&b[..n]) {
            Ok(Message::Announcement(a)) if a.nonce == Some(self.nonce) => Some(Found {
                addr: with_port(from, a.port),
                announcement: a,
                heard: Instant::now(),
            }),
            _ => None,
        }
    }
}

/// The answer's source address with the announced port (an IPv6 scope kept: link-local
/// addresses mean nothing without their interface).
fn with_port(from: SocketAddr, port: u16) -> SocketAddr {
    match from {
        SocketAddr::V4(a) => SocketAddr::new((*a.ip()).into(), port),
        SocketAddr::V6(a) => std::net::SocketAddrV6::new(*a.ip(), port, 0, a.scope_id()).into(),
    }
}

fn preference(addr: SocketAddr) -> u8 {
    match addr {
        SocketAddr::V4(_) => 0,
        SocketAddr::V6(a) if a.ip().is_unicast_link_local() => 2,
        SocketAddr::V6(_) => 1,
    }
}

async fn recv6(socket: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// When to repeat the query within the wait (datagrams get lost).
const RESEND: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(1000)];

/// Asks who is there and gathers answers until `ask.timeout` (or the first, with a name). Each
/// server once (by its id; the first address it answered from).
pub async fn discover(ask: &Ask) -> std::io::Result<Vec<Found>> {
    let querier = Querier::new(ask.name.clone())?;
    let start = tokio::time::Instant::now();
    let deadline = start + ask.timeout;
    let mut found: Vec<Found> = Vec::new();
    let mut buf = vec![0u8; barge_proto::lan::MAX_DATAGRAM + 1];
    let mut buf6 = vec![0u8; barge_proto::lan::MAX_DATAGRAM + 1];
    querier.send(ask).await;
    let mut resends = RESEND.iter().map(|d| start + *d).filter(|t| *t < deadline);
    let mut next_resend = resends.next();
    loop {
        let wake = next_resend.map_or(deadline, |t| t.min(deadline));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                querier.send(ask).await;
                next_resend = resends.next();
            }
            a = querier.answer(&mut buf, &mut buf6) => {
                let Some(a) = a else { continue };
                match found.iter_mut().find(|f| f.announcement.id == a.announcement.id) {
                    None => found.push(a),
                    // The same server over IPv4 and IPv6: IPv4 first, then an IPv6 address
                    // usable without a scope (the order a user would type them in).
                    Some(f) if preference(a.addr) < preference(f.addr) => *f = a,
                    Some(_) => {}
                }
                // A name is looked up to connect: the first answer will do, unless it is a
                // link-local IPv6 address (unusable without its interface) and another may come.
                if ask.name.is_some() && found.iter().any(|f| preference(f.addr) < 2) {
                    break;
                }
            }
        }
    }
    Ok(found)
}

/// The server named `name` (case-insensitive), asked for by name.
pub async fn find(name: &str, ask: &Ask) -> std::io::Result<Option<Found>> {
    let ask = Ask {
        name: Some(name.to_owned()),
        ..ask.clone()
    };
    Ok(discover(&ask)
        .await?
        .into_iter()
        .find(|f| f.announcement.name.eq_ignore_ascii_case(name)))
}

/// A change seen by [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A server answered or announced itself for the first time.
    Found(Found),
    /// A server not heard for three of its announcement intervals.
    Lost(Found),
}

/// Servers heard over time: asks at start, then listens to the group for announcements.
#[derive(Debug)]
pub struct Watch {
    group: UdpSocket,
    querier_v4: UdpSocket,
    nonce: u64,
    known: HashMap<u64, Found>,
    buf: Vec<u8>,
    qbuf: Vec<u8>,
}

impl Watch {
    /// Joins the group on `port` and sends one query.
    pub async fn start(port: u16) -> std::io::Result<Self> {
        let ifaces = Interfaces::now();
        let group = super::group_socket_v4(group_v4(), port, &ifaces)?;
        let querier = Querier::new(None)?;
        querier
            .send(&Ask {
                port,
                ..Ask::default()
            })
            .await;
        Ok(Self {
            group,
            querier_v4: querier.v4,
            nonce: querier.nonce,
            known: HashMap::new(),
            buf: vec![0u8; barge_proto::lan::MAX_DATAGRAM + 1],
            qbuf: vec![0u8; barge_proto::lan::MAX_DATAGRAM + 1],
        })
    }

    /// The servers known now.
    pub fn known(&self) -> impl Iterator<Item = &Found> {
        self.known.values()
    }

    /// Waits for the next change.
    pub async fn next(&mut self) -> Change {
        loop {
            if let Some(lost) = self.expired() {
                return Change::Lost(lost);
            }
            let wake = self.next_expiry();
            let heard = tokio::select! {
                r = self.group.recv_from(&mut self.buf) => r.ok().map(|(n, from)| (self.buf[..n].to_vec(), from)),
                r = self.querier_v4.recv_from(&mut self.qbuf) => r.ok().map(|(n, from)| (self.qbuf[..n].to_vec(), from)),
                () = sleep_until_opt(wake) => None,
            };
            let Some((bytes, from)) = heard else { continue };
            let Ok(Message::Announcement(a)) = decode(&bytes) else {
                continue;
            };
            if a.nonce.is_some_and(|n| n != self.nonce) {
                continue; // an answer to someone else's query
            }
            let found = Found {
                addr: with_port(from, a.port),
                announcement: a,
                heard: Instant::now(),
            };
            let id = found.announcement.id;
            if self.known.insert(id, found.clone()).is_none() {
                return Change::Found(found);
            }
        }
    }

    fn lifetime(f: &Found) -> Duration {
        Duration::from_secs(u64::from(f.announcement.every.clamp(1, 3600)) * 3)
    }

    fn expired(&mut self) -> Option<Found> {
        let now = Instant::now();
        let id = self
            .known
            .iter()
            .find(|(_, f)| now.saturating_duration_since(f.heard) >= Self::lifetime(f))
            .map(|(id, _)| *id)?;
        self.known.remove(&id)
    }

    fn next_expiry(&self) -> Option<tokio::time::Instant> {
        self.known
            .values()
            .map(|f| tokio::time::Instant::from_std(f.heard + Self::lifetime(f)))
            .min()
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
