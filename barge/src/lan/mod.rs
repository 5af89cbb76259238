//! Finding each other on the LAN over UDP multicast: the server's beacon ([`beacon`], `serve
//! --announce`), the client's discovery ([`discover`], `barge discover` and `--to NAME`), and the
//! multicast plumbing both share with the LocalSend front end (group sockets on every interface,
//! subnets, an answer rate limit).

pub mod beacon;
pub mod discover;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

pub use barge_proto::lan::PORT;

/// barge's IPv4 group.
pub fn group_v4() -> Ipv4Addr {
    Ipv4Addr::from(barge_proto::lan::GROUP_V4)
}

/// barge's IPv6 group (link-local scope).
pub fn group_v6() -> Ipv6Addr {
    let g = barge_proto::lan::GROUP_V6;
    Ipv6Addr::new(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7])
}

/// This machine's interfaces that can carry multicast to others: not loopback.
#[derive(Debug, Clone, Default)]
pub struct Interfaces {
    /// Address and netmask of each IPv4 interface.
    pub v4: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Index of each interface with an IPv6 address (each once).
    pub v6: Vec<u32>,
    /// Address and prefix mask of each IPv6 address.
    pub v6_nets: Vec<(Ipv6Addr, Ipv6Addr)>,
}

impl Interfaces {
    /// The interfaces now (an empty list if the system cannot say).
    pub fn now() -> Self {
        let mut out = Self::default();
        for iface in if_addrs::get_if_addrs().unwrap_or_default() {
            if iface.is_loopback() {
                continue;
            }
            match iface.addr {
                if_addrs::IfAddr::V4(a) => out.v4.push((a.ip, a.netmask)),
                if_addrs::IfAddr::V6(a) => {
                    out.v6_nets.push((a.ip, a.netmask));
                    if let Some(index) = iface.index
                        && !out.v6.contains(&index)
                    {
                        out.v6.push(index);
                    }
                }
            }
        }
        out
    }

    /// Whether `ip` is this machine or on one of its subnets: a sender that is, as far as this
    /// machine can tell, on the same network.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) if ip.is_loopback() => true,
            IpAddr::V6(ip) if ip.is_loopback() => true,
            IpAddr::V4(ip) => self
                .v4
                .iter()
                .any(|(a, m)| (u32::from(*a) & u32::from(*m)) == (u32::from(ip) & u32::from(*m))),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => self.is_local(IpAddr::V4(v4)),
                None => self.v6_nets.iter().any(|(a, m)| {
                    (u128::from(*a) & u128::from(*m)) == (u128::from(ip) & u128::from(*m))
                }),
            },
        }
    }
}

/// A UDP socket bound to `port` on every address, sharing the port with other listeners
/// (`SO_REUSEADDR`/`SO_REUSEPORT`), member of `group` on every interface, sending with TTL 1.
pub fn group_socket_v4(group: Ipv4Addr, port: u16, ifaces: &Interfaces) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    let mut joined = 0;
    for (ip, _) in &ifaces.v4 {
        if s.join_multicast_v4(&group, ip).is_ok() {
            joined += 1;
        }
    }
    if joined == 0 {
        s.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)?;
    }
    sending_v4(s)
}

/// An IPv4 UDP socket on an ephemeral port, for sending queries and hearing answers.
pub fn query_socket_v4() -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
    sending_v4(s)
}

fn sending_v4(s: Socket) -> io::Result<UdpSocket> {
    s.set_multicast_ttl_v4(1)?;
    s.set_multicast_loop_v4(true)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// The IPv6 counterpart of [`group_socket_v4`] (IPv6 only; hop limit 1).
pub fn group_socket_v6(group: Ipv6Addr, port: u16, ifaces: &Interfaces) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    let mut joined = 0;
    for index in &ifaces.v6 {
        if s.join_multicast_v6(&group, *index).is_ok() {
            joined += 1;
        }
    }
    if joined == 0 {
        return Err(io::Error::other("no IPv6 interface joined the group"));
    }
    sending_v6(s)
}

/// An IPv6 UDP socket on an ephemeral port.
pub fn query_socket_v6() -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
    sending_v6(s)
}

fn sending_v6(s: Socket) -> io::Result<UdpSocket> {
    s.set_multicast_hops_v6(1)?;
    s.set_multicast_loop_v6(true)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Sends `datagram` to `group:port` out of every IPv4 interface (the default one if there are
/// none): a host on several networks is found on each. Returns how many sends succeeded.
pub async fn send_to_group_v4(
    socket: &UdpSocket,
    group: Ipv4Addr,
    port: u16,
    ifaces: &Interfaces,
    datagram: &[u8],
) -> usize {
    let to = SocketAddr::from((group, port));
    let mut sent = 0;
    let sock = socket2::SockRef::from(socket);
    for (ip, _) in &ifaces.v4 {
        if sock.set_multicast_if_v4(ip).is_ok() && socket.send_to(datagram, to).await.is_ok() {
            sent += 1;
        }
    }
    if ifaces.v4.is_empty() && socket.send_to(datagram, to).await.is_ok() {
        sent += 1;
    }
    sent
}

/// Sends `datagram` to `group:port` on every IPv6 interface (the scope is the interface).
pub async fn send_to_group_v6(
    socket: &UdpSocket,
    group: Ipv6Addr,
    port: u16,
    ifaces: &Interfaces,
    datagram: &[u8],
) -> usize {
    let mut sent = 0;
    for index in &ifaces.v6 {
        let to = std::net::SocketAddrV6::new(group, port, 0, *index);
        if socket.send_to(datagram, to).await.is_ok() {
            sent += 1;
        }
    }
    sent
}

/// Answers at most `per_second` datagrams in all and `per_source` from one address each second:
/// a flood of queries costs the server a counter, not a flood of answers.
#[derive(Debug)]
pub struct AnswerLimit {
    per_second: u32,
    per_source: u32,
    window: Instant,
    total: u32,
    sources: HashMap<IpAddr, u32>,
}

/// Sources remembered per second at most; beyond, new sources wait for the next second.
const MAX_SOURCES: usize = 4096;

impl AnswerLimit {
    pub fn new(per_second: u32, per_source: u32) -> Self {
        Self {
            per_second,
            per_source,
            window: Instant::now(),
            total: 0,
            sources: HashMap::new(),
        }
    }

    /// Whether one more answer to `ip` is allowed now.
    pub fn allow(&mut self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&mut self, ip: IpAddr, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.total = 0;
            self.sources.clear();
        }
        if self.total >= self.per_second {
            return false;
        }
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_SOURCES {
            return false;
        }
        let n = self.sources.entry(ip).or_default();
        if *n >= self.per_source {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }
}

/// A random u64 (for ids and nonces) from the system's generator.
pub fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // The system generator does not fail on Linux; a clock-derived value would do if it did.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(b)
}

/// This machine's name (the default server name), cut to a valid discovery name.
pub fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut name: String = raw
        .trim()
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, ':' | '/' | '\\'))
        .collect();
    while name.len() > barge_proto::lan::MAX_NAME {
        name.pop();
    }
    if barge_proto::lan::check_name(&name).is_err() {
        return "barge".into();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_limit_holds_per_second_and_per_source() {
        let mut l = AnswerLimit::new(5, 2);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.allow_at(a, t));
        assert!(l.allow_at(a, t));
        assert!(
            !l.allow_at(a, t),
            "a third answer to one source in a second"
        );
        let others = (2..10)
            .filter(|i| l.allow_at(IpAddr::from([10, 0, 0, *i]), t))
            .count();
        assert_eq!(others, 3, "five in all per second");
        assert!(l.allow_at(a, t + Duration::from_secs(1)), "a new second");
    }

    #[test]
    fn local_means_loopback_or_a_subnet_of_ours() {
        let ifaces = Interfaces {
            v4: vec![(
                Ipv4Addr::new(192, 168, 1, 10),
                Ipv4Addr::new(255, 255, 255, 0),
            )],
            v6: vec![],
            v6_nets: vec![],
        };
        assert!(ifaces.is_local("127.0.0.1".parse().unwrap()));
        assert!(ifaces.is_local("::1".parse().unwrap()));
        assert!(ifaces.is_local("192.168.1.77".parse().unwrap()));
        assert!(ifaces.is_local("::ffff:192.168.1.77".parse().unwrap()));
        assert!(!ifaces.is_local("192.168.2.77".parse().unwrap()));
        assert!(!ifaces.is_local("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn the_host_name_is_a_valid_discovery_name() {
        assert!(barge_proto::lan::check_name(&host_name()).is_ok());
    }
}
