//! The upper-case echo service: line framing, limits, garbage, concurrency, idle timeout, the CLI,
//! and the lesson's socketserver programs in both directions.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use barge::client::echo::{EchoClientError, EchoSession};
use barge::server::ServerConfig;
use barge::service::echo::{EchoConfig, EchoService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn echo_server(config: EchoConfig, server: ServerConfig) -> TestServer {
    TestServer::start_service(
        EchoService::new(config),
        server,
        "127.0.0.1:0",
        tempfile::tempdir().unwrap(),
    )
}

fn session(addr: SocketAddr) -> EchoSession {
    EchoSession::new(&addr.to_string(), WAIT, WAIT, 8 << 20)
}

/// Sends `input`, closes the write side, returns everything the server sent back.
async fn exchange_raw(addr: SocketAddr, input: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(input).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    within("reply", s.read_to_end(&mut out)).await.unwrap();
    out
}

#[tokio::test]
async fn each_line_on_one_connection_is_answered() {
    let mut server = echo_server(EchoConfig::default(), ServerConfig::default());
    let mut s = session(server.addr);
    for m in ["hello", "", "socketserver", "Mixed Case 123"] {
        assert_eq!(
            s.ask(m.as_bytes()).await.unwrap(),
            m.to_uppercase().as_bytes()
        );
    }
    drop(s);
    // All four on one connection: exactly one connection ended.
    assert_eq!(server.next_end().await, Ok(()));
    assert_eq!(exchange_raw(server.addr, b"a\nb\nc\n").await, b"A\nB\nC\n");
}

#[tokio::test]
async fn a_last_line_without_newline_is_answered_at_end_of_input() {
    let server = echo_server(EchoConfig::default(), ServerConfig::default());
    assert_eq!(
        exchange_raw(server.addr, b"first\nlast").await,
        b"FIRST\nLAST\n"
    );
    assert_eq!(exchange_raw(server.addr, b"").await, b"");
}

#[tokio::test]
async fn one_mib_lines_work_and_the_cap_gives_a_clear_error() {
    let mut server = echo_server(EchoConfig::default(), ServerConfig::default());
    let line: Vec<u8> = (0..(1 << 20) + 1).map(|i| b'a' + (i % 26) as u8).collect();
    let reply = session(server.addr).ask(&line).await.unwrap();
    assert_eq!(reply, line.to_ascii_uppercase());
    assert_eq!(server.next_end().await, Ok(()));

    let mut capped = echo_server(
        EchoConfig {
            max_line: 1000,
            lesson: false,
        },
        ServerConfig::default(),
    );
    let out = exchange_raw(capped.addr, &[b'x'; 1001]).await;
    assert_eq!(out, b"ERROR: line longer than 1000 bytes\n");
    let reason = capped.next_end().await.expect_err("over the cap");
    assert!(reason.contains("longer than 1000"), "{reason}");
    // Exactly at the cap is fine, and the server keeps serving.
    let ok = vec![b'y'; 1000];
    assert_eq!(
        session(capped.addr).ask(&ok).await.unwrap(),
        vec![b'Y'; 1000]
    );
}

#[tokio::test]
async fn non_ascii_and_garbage_never_crash_it() {
    let server = echo_server(EchoConfig::default(), ServerConfig::default());
    let mut input = "héllo 荷官\n".as_bytes().to_vec();
    input.extend_from_slice(b"\xff\xfe\x00bin\x80\n\r\n");
    let mut want = "HéLLO 荷官\n".as_bytes().to_vec();
    want.extend_from_slice(b"\xff\xfe\x00BIN\x80\n\r\n");
    assert_eq!(exchange_raw(server.addr, &input).await, want);
    let garbage = content(42, 100_000);
    let out = exchange_raw(server.addr, &garbage).await;
    assert_eq!(
        out.len(),
        garbage.len() + usize::from(garbage.last() != Some(&b'\n'))
    );
}

#[tokio::test]
async fn a_hundred_and_twenty_concurrent_clients() {
    let mut server = echo_server(EchoConfig::default(), ServerConfig::default());
    let mut clients = Vec::new();
    for i in 0..120 {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            let mut s = session(addr);
            for j in 0..10 {
                let m = format!("client {i} message {j}");
                assert_eq!(
                    s.ask(m.as_bytes()).await.unwrap(),
                    m.to_uppercase().as_bytes()
                );
            }
        }));
    }
    for c in clients {
        within("client", c).await.unwrap();
    }
    for _ in 0..120 {
        assert_eq!(server.next_end().await, Ok(()));
    }
}

#[tokio::test]
async fn idle_clients_are_disconnected() {
    let mut server = echo_server(
        EchoConfig::default(),
        ServerConfig {
            idle_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        },
    );
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"no newline yet").await.unwrap();
    let reason = server.next_end().await.expect_err("idle");
    assert!(reason.contains("idle"), "{reason}");
    let mut rest = Vec::new();
    within("close", idle.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn lesson_mode_answers_one_message_like_the_lesson() {
    let server = echo_server(
        EchoConfig {
            lesson: true,
            ..EchoConfig::default()
        },
        ServerConfig::default(),
    );
    assert_eq!(exchange_raw(server.addr, b"  hello \n").await, b"HELLO");
    // The session reconnects for each message when the server closes after replying.
    let mut s = session(server.addr);
    assert_eq!(s.ask(b"one").await.unwrap(), b"ONE");
    assert_eq!(s.ask(b"two").await.unwrap(), b"TWO");
}

#[tokio::test]
async fn a_message_with_a_newline_is_refused_by_the_client() {
    let server = echo_server(EchoConfig::default(), ServerConfig::default());
    assert!(matches!(
        session(server.addr).ask(b"a\nb").await,
        Err(EchoClientError::Newline)
    ));
}

fn spawn_echo_serve(extra: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut cmd = barge();
    cmd.args(["echo", "serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .stderr(Stdio::null());
    spawn_announced(cmd)
}

#[test]
fn seed_echo_client_works_against_barge() {
    let (_server, addr) = spawn_echo_serve(&[]);
    let port = addr.port().to_string();
    let out = python_seed("seed_echo_client.py")
        .args(["--port", &port])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Received: HELLO"), "{text}");

    // The lesson's client checks the reply byte for byte: lesson mode matches it exactly.
    let (_lesson, addr) = spawn_echo_serve(&["--lesson"]);
    let out = python_seed("seed_echo_client.py")
        .args(["--port", &addr.port().to_string(), "--count", "200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reqs=200 bad=0"), "{text}");
}

#[test]
fn barge_echo_send_works_against_seed_server() {
    let port = free_port();
    let server = python_seed("seed_echo_server.py")
        .args([
            "--port",
            &port.to_string(),
            "--quiet",
            "--max-seconds",
            "20",
        ])
        .spawn()
        .unwrap();
    let _server = ChildGuard(server);
    // The lesson's server prints nothing when ready: wait until it accepts (bounded).
    let ready = (0..500).any(|_| {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() || {
            std::thread::sleep(Duration::from_millis(10));
            false
        }
    });
    assert!(ready, "seed echo server did not start");
    // It answers one message per connection; barge reconnects for the next.
    let out = barge()
        .args([
            "echo",
            "send",
            &format!("127.0.0.1:{port}"),
            "hello",
            "wörld",
        ])
        .output()
        .unwrap();
    succeeded(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\nWöRLD\n");
}

#[test]
fn barge_echo_send_reads_stdin_and_reports_unreachable() {
    let (_server, addr) = spawn_echo_serve(&[]);
    let mut child = barge()
        .args(["echo", "send", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\nthree")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ONE\nTWO\nTHREE\n");

    let out = barge()
        .args(["echo", "send", &addr.to_string(), "héllo", "--json"])
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["message"], "héllo");
    assert_eq!(line["reply"], "HéLLO");

    let out = barge()
        .args(["echo", "send", &format!("127.0.0.1:{}", free_port()), "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}
