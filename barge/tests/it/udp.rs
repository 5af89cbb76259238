//! UDP request/reply: barge's server and client on loopback, a misbehaving server that replies
//! late and twice, limits, the CLI, and the lesson's UDP programs in both directions.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use barge::client::udp::{UdpEvent, UdpOptions, request_reply};
use barge::server::datagram::serve_datagrams;
use barge::service::udp::{UdpReply, UdpService};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::support::*;

/// barge's UDP server on an ephemeral port; stops when the returned sender is dropped.
async fn udp_server(reply: UdpReply, addr: &str) -> (SocketAddr, oneshot::Sender<()>) {
    let socket = UdpSocket::bind(addr).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_datagrams(
        socket,
        Arc::new(UdpService::new(reply)),
        2,
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

fn options(count: u64, timeout_ms: u64, retries: u32) -> UdpOptions {
    UdpOptions {
        count,
        interval: Duration::ZERO,
        timeout: Duration::from_millis(timeout_ms),
        retries,
    }
}

async fn replies(server: SocketAddr, payload: &[u8], opts: UdpOptions) -> Vec<UdpEvent> {
    let mut events = Vec::new();
    within(
        "request/reply",
        request_reply(server, payload, &opts, |e| events.push(e)),
    )
    .await
    .unwrap();
    events
}

fn reply_bytes(e: &UdpEvent) -> Option<&[u8]> {
    match e {
        UdpEvent::Reply { reply, .. } => Some(reply),
        UdpEvent::Lost { .. } => None,
    }
}

#[tokio::test]
async fn every_legal_size_is_answered_without_truncation() {
    let (server, _stop) = udp_server(UdpReply::Echo, "127.0.0.1:0").await;
    for size in [0usize, 1, 1024, 1025, 1400, 1473, 9000, 65_507] {
        let payload = content(size as u64, size);
        let events = replies(server, &payload, options(1, 2000, 2)).await;
        assert_eq!(reply_bytes(&events[0]), Some(&payload[..]), "size {size}");
    }
}

#[tokio::test]
async fn default_reply_is_hi_even_to_empty_and_garbage() {
    let (server, _stop) = udp_server(UdpReply::Hi, "127.0.0.1:0").await;
    for payload in [&b""[..], b"hello", b"\xff\x00\xfe", &content(1, 5000)] {
        let events = replies(server, payload, options(1, 2000, 2)).await;
        assert_eq!(reply_bytes(&events[0]), Some(&b"hi"[..]));
    }
}

#[tokio::test]
async fn many_peers_at_once_each_get_their_own_reply() {
    let (server, _stop) = udp_server(UdpReply::Upper, "127.0.0.1:0").await;
    let mut peers = Vec::new();
    for i in 0..50u64 {
        peers.push(tokio::spawn(async move {
            let payload = format!("peer {i} says hello");
            let events = replies(server, payload.as_bytes(), options(20, 2000, 2)).await;
            let want = payload.to_uppercase();
            events
                .iter()
                .all(|e| reply_bytes(e) == Some(want.as_bytes()))
        }));
    }
    for p in peers {
        assert!(within("peer", p).await.unwrap());
    }
}

#[tokio::test]
async fn one_thousand_round_trips_lose_under_one_percent() {
    let (server, _stop) = udp_server(UdpReply::Hi, "127.0.0.1:0").await;
    let mut lost = 0;
    let summary = within(
        "1000 round trips",
        request_reply(server, b"hello", &options(1000, 500, 0), |e| {
            if matches!(e, UdpEvent::Lost { .. }) {
                lost += 1
            }
        }),
    )
    .await
    .unwrap();
    assert_eq!(summary.requests, 1000);
    assert_eq!(summary.transmissions, 1000);
    assert!(
        summary.loss_percent() < 1.0,
        "{}% lost",
        summary.loss_percent()
    );
    assert_eq!(summary.requests - summary.replies, lost);
    assert_eq!(summary.rtts.len() as u64, summary.replies);
}

#[tokio::test]
async fn late_and_duplicated_replies_are_never_taken_for_the_current_request() {
    // A server that ignores the 1st request, then answers the 1st late (after the client gave up
    // on it) and the 2nd twice, then the 3rd once.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let (_, first) = socket.recv_from(&mut buf).await.unwrap();
        let (_, second) = socket.recv_from(&mut buf).await.unwrap();
        socket.send_to(b"late reply to #0", first).await.unwrap();
        socket.send_to(b"reply to #1", second).await.unwrap();
        socket.send_to(b"duplicate of #1", second).await.unwrap();
        let (_, third) = socket.recv_from(&mut buf).await.unwrap();
        socket.send_to(b"reply to #2", third).await.unwrap();
    });
    let events = replies(server, b"q", options(3, 300, 0)).await;
    assert_eq!(
        events[0],
        UdpEvent::Lost {
            seq: 0,
            attempts: 1
        }
    );
    assert_eq!(reply_bytes(&events[1]), Some(&b"reply to #1"[..]));
    assert_eq!(reply_bytes(&events[2]), Some(&b"reply to #2"[..]));
}

#[tokio::test]
async fn a_retry_recovers_a_lost_datagram() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let _dropped = socket.recv_from(&mut buf).await.unwrap();
        let (_, peer) = socket.recv_from(&mut buf).await.unwrap();
        socket.send_to(b"second time lucky", peer).await.unwrap();
    });
    let events = replies(server, b"q", options(1, 300, 2)).await;
    assert!(
        matches!(&events[0], UdpEvent::Reply { attempt: 2, reply, .. } if reply == b"second time lucky"),
        "{events:?}"
    );
}

#[tokio::test]
async fn payload_over_the_limit_is_refused_before_sending() {
    let (server, _stop) = udp_server(UdpReply::Hi, "127.0.0.1:0").await;
    let err = request_reply(server, &vec![0u8; 65_508], &options(1, 100, 0), |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 65507"), "{err}");
}

#[tokio::test]
async fn ipv6_loopback_works() {
    let (server, _stop) = udp_server(UdpReply::Hi, "[::1]:0").await;
    let events = replies(server, b"hello", options(1, 2000, 2)).await;
    assert_eq!(reply_bytes(&events[0]), Some(&b"hi"[..]));
    // IPv6 allows 20 bytes more than IPv4.
    let (server, _stop) = udp_server(UdpReply::Echo, "[::1]:0").await;
    let big = content(3, 65_527);
    let events = replies(server, &big, options(1, 2000, 2)).await;
    assert_eq!(reply_bytes(&events[0]), Some(&big[..]));
}

/// A free UDP port on 127.0.0.1, for peers that cannot report the port they bound.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port()
}

fn spawn_udp_serve(extra: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut cmd = barge();
    cmd.args(["udp", "serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .stderr(Stdio::null());
    spawn_announced(cmd)
}

#[test]
fn seed_udp_client_works_against_barge() {
    let (_server, addr) = spawn_udp_serve(&[]);
    let port = addr.port().to_string();
    let out = python_seed("seed_udp_client.py")
        .args(["--port", &port])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("hi ("), "{text}");
    // The bounded loop with 1400-byte datagrams: none lost.
    let out = python_seed("seed_udp_client.py")
        .args(["--port", &port, "--count", "300", "--size", "1400"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rtts=300 lost=0"), "{text}");
}

#[test]
fn barge_udp_send_works_against_seed_server() {
    let port = free_udp_port();
    let server = python_seed("seed_udp_server.py")
        .args(["--port", &port.to_string(), "--quiet", "--max-msgs", "3"])
        .spawn()
        .unwrap();
    let mut server = ChildGuard(server);
    // The lesson's server says nothing when ready: retries cover a datagram sent before its bind.
    let out = barge()
        .args(["udp", "send", &format!("127.0.0.1:{port}"), "hello"])
        .args([
            "--count",
            "3",
            "--timeout",
            "0.3",
            "--retries",
            "10",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for l in &lines[..3] {
        assert_eq!(l["event"], "reply");
        assert_eq!(l["reply"], "hi");
    }
    assert_eq!(lines[3]["event"], "summary");
    assert_eq!(lines[3]["replies"], 3);
    assert!(server.0.wait().unwrap().success());
}

#[test]
fn cli_exit_codes_tell_success_partial_unreachable_and_too_large() {
    let (_server, addr) = spawn_udp_serve(&["--reply", "pong"]);
    let out = barge()
        .args(["udp", "send", &addr.to_string(), "ping", "--count", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(": pong").count(), 3, "{text}");
    assert!(text.contains("3 requests, 3 replies, 0.0% loss"), "{text}");

    // Half the requests answered: a server thread that answers every other datagram.
    let half = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let half_addr = half.local_addr().unwrap();
    half.set_read_timeout(Some(WAIT)).unwrap();
    let answerer = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for i in 0..4 {
            let Ok((_, peer)) = half.recv_from(&mut buf) else {
                return;
            };
            if i % 2 == 0 {
                half.send_to(b"ok", peer).unwrap();
            }
        }
    });
    let out = barge()
        .args(["udp", "send", &half_addr.to_string(), "x", "--count", "4"])
        .args(["--retries", "0", "--timeout", "0.2"])
        .output()
        .unwrap();
    answerer.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let port = free_udp_port();
    let out = barge()
        .args(["udp", "send", &format!("127.0.0.1:{port}"), "x"])
        .args(["--retries", "1", "--timeout", "0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));

    let out = barge()
        .args(["udp", "send", &addr.to_string(), "--size", "65508"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 65507"));

    let out = barge()
        .args(["udp", "send", &addr.to_string(), "--size", "1473"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 IP fragments"));
}
