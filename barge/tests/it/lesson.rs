//! The upload server over real sockets on 127.0.0.1:0: good uploads, every bad input the lesson's
//! server would choke on, concurrency, limits and storage rules.

use std::collections::BTreeSet;
use std::time::Duration;

use barge::server::ServerConfig;
use barge::store::OnConflict;
use barge::transfer::Policy;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn upload_several_files_on_one_connection() {
    let mut server = TestServer::start().await;
    let files = [
        ("a.bin", content(1, 3 << 20)),
        ("性感荷官在线发牌.,mp4", content(2, 1000)),
        ("empty", Vec::new()),
        (".hidden ok", content(3, 17)),
    ];
    let wire: Vec<u8> = files
        .iter()
        .flat_map(|(n, b)| lesson_upload(n, b))
        .collect();
    send_raw(server.addr, &wire).await;
    assert_eq!(server.next_end().await, Ok(()));
    for (name, body) in &files {
        assert_eq!(&server.read(name), body, "{name}");
    }
    assert_eq!(server.published().len(), files.len());
    assert_eq!(server.temp_files(), 0);
}

/// Each case: what a client sends before closing, and words the server's reason must contain.
fn bad_inputs() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut cases: Vec<(&'static str, Vec<u8>, &'static str)> = vec![
        ("length -1", (-1i32).to_le_bytes().to_vec(), "not positive"),
        ("length 0", 0i32.to_le_bytes().to_vec(), "not positive"),
        ("length 65537", 65537i32.to_le_bytes().to_vec(), "exceeds"),
        (
            "header longer than sent",
            [&100i32.to_le_bytes()[..], b"{\"file_name\""].concat(),
            "closed after 16 bytes of a header",
        ),
        ("half a length prefix", vec![7, 0], "closed after 2 bytes"),
        ("invalid JSON", raw_header("{not json"), "not valid JSON"),
        ("JSON array", raw_header("[1, 2]"), "not a JSON object"),
        ("JSON string", raw_header("\"movie\""), "not a JSON object"),
        (
            "file_size missing",
            raw_header(r#"{"file_name": "a"}"#),
            "file_size",
        ),
        (
            "file_size negative",
            raw_header(r#"{"file_name": "a", "file_size": -1}"#),
            "file_size",
        ),
        (
            "file_size string",
            raw_header(r#"{"file_name": "a", "file_size": "10"}"#),
            "file_size",
        ),
        (
            "file_size 1 PB",
            raw_header(r#"{"file_name": "a", "file_size": 1000000000000000}"#),
            "do not fit",
        ),
        (
            "file_name empty",
            raw_header(r#"{"file_name": "", "file_size": 1}"#),
            "file_name",
        ),
        (
            "disconnect mid-body",
            [lesson_upload("cut.bin", &content(9, 1000))[..700].to_vec()].concat(),
            "of 1000 bytes",
        ),
    ];
    let non_utf8 = {
        let mut w = 3i32.to_le_bytes().to_vec();
        w.extend_from_slice(b"\xff\xfe{");
        w
    };
    cases.push(("header not UTF-8", non_utf8, "not valid JSON"));
    for (label, name, why) in [
        ("name with slash", "a/b", "path separator"),
        ("name ../", "../escape", "path separator"),
        ("absolute name", "/etc/passwd", "path separator"),
        ("name with backslash", "..\\..\\x", "path separator"),
        ("name with NUL", "a\0b", "control character"),
        ("name with newline", "a\nb", "control character"),
        ("name with escape", "\u{1b}[2Jboom", "control character"),
        ("name .", ".", "refers to a directory"),
        ("name ..", "..", "refers to a directory"),
        ("name reserved", ".barge", "reserved"),
    ] {
        cases.push((label, lesson_upload(name, b"payload"), why));
    }
    cases.push((
        "name of 256 bytes",
        lesson_upload(&"x".repeat(256), b"p"),
        "over the limit",
    ));
    cases
}

#[tokio::test]
async fn bad_input_closes_only_that_connection_and_server_keeps_serving() {
    let mut server = TestServer::start().await;
    for (i, (label, bytes, why)) in bad_inputs().into_iter().enumerate() {
        send_raw(server.addr, &bytes).await;
        let reason = server.next_end().await.expect_err(label);
        assert!(reason.contains(why), "{label}: {reason:?} lacks {why:?}");
        // A good upload right after is served.
        let good = format!("good-{i}");
        send_raw(server.addr, &lesson_upload(&good, &content(i as u64, 100))).await;
        assert_eq!(server.next_end().await, Ok(()), "after {label}");
        assert_eq!(server.read(&good), content(i as u64, 100), "after {label}");
        assert_eq!(server.temp_files(), 0, "temp left after {label}");
    }
    let names = server.published();
    assert!(names.iter().all(|n| n.starts_with("good-")), "{names:?}");
}

#[tokio::test]
async fn silent_client_closes_cleanly_and_blocks_nobody() {
    let mut server = TestServer::start().await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    send_raw(server.addr, &lesson_upload("x", b"meanwhile")).await;
    assert_eq!(server.next_end().await, Ok(()));
    assert_eq!(server.read("x"), b"meanwhile");
    silent.shutdown().await.unwrap();
    drain(&mut silent).await;
    assert_eq!(server.next_end().await, Ok(()));
}

#[tokio::test]
async fn reset_mid_body_publishes_nothing() {
    let mut server = TestServer::start().await;
    let s = TcpStream::connect(server.addr).await.unwrap();
    let mut s = s;
    s.write_all(&lesson_upload("reset.bin", &content(5, 1 << 20))[..300_000])
        .await
        .unwrap();
    // SO_LINGER 0: close sends RST instead of FIN.
    s.set_zero_linger().unwrap();
    drop(s);
    assert!(server.next_end().await.is_err());
    assert_eq!(server.temp_files(), 0);
    assert!(server.published().is_empty());
    send_raw(server.addr, &lesson_upload("after", b"ok")).await;
    assert_eq!(server.next_end().await, Ok(()));
    assert_eq!(server.published(), ["after"]);
}

#[tokio::test]
async fn idle_client_is_cut_off_while_others_proceed() {
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let mut server = TestServer::start_with(|s| s, config, "127.0.0.1:0").await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    // Stalls inside a body: the worst place, holding a temporary file.
    idle.write_all(&lesson_upload("stall", &content(1, 1000))[..500])
        .await
        .unwrap();
    send_raw(server.addr, &lesson_upload("busy", b"fine")).await;
    assert_eq!(server.next_end().await, Ok(()));
    let reason = server.next_end().await.expect_err("idle connection");
    assert!(reason.contains("idle"), "{reason}");
    drain(&mut idle).await;
    assert_eq!(server.published(), ["busy"]);
    assert_eq!(server.temp_files(), 0);
}

#[tokio::test]
async fn excess_connections_wait_instead_of_being_dropped() {
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let mut server = TestServer::start_with(|s| s, config, "127.0.0.1:0").await;
    let first = lesson_upload("first", &content(1, 10_000));
    let mut a = TcpStream::connect(server.addr).await.unwrap();
    a.write_all(&first[..5000]).await.unwrap();
    // The second client queues in the backlog while the first holds the only slot.
    let addr = server.addr;
    let b = tokio::spawn(async move { send_raw(addr, &lesson_upload("second", b"queued")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "second client was served beyond the cap");
    assert!(server.published().is_empty());
    a.write_all(&first[5000..]).await.unwrap();
    a.shutdown().await.unwrap();
    drain(&mut a).await;
    within("second client", b).await.unwrap();
    assert_eq!(server.next_end().await, Ok(()));
    assert_eq!(server.next_end().await, Ok(()));
    assert_eq!(server.published(), ["first", "second"]);
}

#[tokio::test]
async fn same_name_at_once_never_overwrites() {
    let mut server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..8u64 {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            send_raw(addr, &lesson_upload("same.txt", &content(i, 50_000))).await
        }));
    }
    for c in clients {
        within("client", c).await.unwrap();
    }
    for _ in 0..8 {
        assert_eq!(server.next_end().await, Ok(()));
    }
    let names = server.published();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.contains(&"same.txt".to_string()));
    let stored: BTreeSet<Vec<u8>> = names.iter().map(|n| server.read(n)).collect();
    let sent: BTreeSet<Vec<u8>> = (0..8).map(|i| content(i, 50_000)).collect();
    assert_eq!(stored, sent);
}

#[tokio::test]
async fn two_hundred_concurrent_uploads_are_byte_identical() {
    let mut server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..200u64 {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            let body = content(i, 20_000 + i as usize * 97);
            send_raw(addr, &lesson_upload(&format!("file-{i:03}"), &body)).await
        }));
    }
    for c in clients {
        within("client", c).await.unwrap();
    }
    for _ in 0..200 {
        assert_eq!(server.next_end().await, Ok(()));
    }
    assert_eq!(server.published().len(), 200);
    for i in 0..200u64 {
        assert_eq!(
            server.read(&format!("file-{i:03}")),
            content(i, 20_000 + i as usize * 97)
        );
    }
}

#[tokio::test]
async fn over_max_file_size_is_refused_before_any_byte_is_written() {
    let mut server = TestServer::start_with_policy(
        Policy {
            max_file_size: Some(1000),
            ..Policy::default()
        },
        ServerConfig::default(),
        "127.0.0.1:0",
    )
    .await;
    send_raw(server.addr, &lesson_upload("big", &content(1, 1001))).await;
    let reason = server.next_end().await.expect_err("too large");
    assert!(reason.contains("over the limit of 1000"), "{reason}");
    send_raw(server.addr, &lesson_upload("fits", &content(1, 1000))).await;
    assert_eq!(server.next_end().await, Ok(()));
    assert_eq!(server.published(), ["fits"]);
}

#[tokio::test]
async fn on_conflict_fail_refuses_and_keeps_the_original() {
    let mut server = TestServer::start_with_policy(
        Policy {
            on_conflict: OnConflict::Fail,
            ..Policy::default()
        },
        ServerConfig::default(),
        "127.0.0.1:0",
    )
    .await;
    send_raw(server.addr, &lesson_upload("m.mp4", b"original")).await;
    assert_eq!(server.next_end().await, Ok(()));
    send_raw(server.addr, &lesson_upload("m.mp4", b"intruder")).await;
    let reason = server.next_end().await.expect_err("conflict");
    assert!(reason.contains("already exists"), "{reason}");
    assert_eq!(server.read("m.mp4"), b"original");
    assert_eq!(server.temp_files(), 0);
}

#[tokio::test]
async fn ipv6_loopback_works() {
    let mut server = TestServer::start_with(|s| s, ServerConfig::default(), "[::1]:0").await;
    assert!(server.addr.is_ipv6());
    send_raw(server.addr, &lesson_upload("v6", b"over ::1")).await;
    assert_eq!(server.next_end().await, Ok(()));
    assert_eq!(server.read("v6"), b"over ::1");
}

#[tokio::test]
async fn shutdown_lets_a_transfer_in_flight_finish() {
    // A grace period longer than any test wait: if shutdown waited on the idle connection instead
    // of closing it, `stop` would time out.
    let config = ServerConfig {
        shutdown_grace: Duration::from_secs(120),
        ..ServerConfig::default()
    };
    let mut server = TestServer::start_with(|s| s, config, "127.0.0.1:0").await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let wire = lesson_upload("inflight", &content(4, 200_000));
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&wire[..100_000]).await.unwrap();
    // Once the body has started, both connections (accepted in order) are in the server's hands.
    wait_until("the upload to start", || server.temp_files() == 1).await;
    server.request_stop();
    s.write_all(&wire[100_000..]).await.unwrap();
    s.shutdown().await.unwrap();
    drain(&mut s).await;
    drain(&mut idle).await;
    server.stop().await;
    assert_eq!(server.read("inflight"), content(4, 200_000));
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn shutdown_past_grace_cancels_and_removes_temp_files() {
    let config = ServerConfig {
        shutdown_grace: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let mut server = TestServer::start_with(|s| s, config, "127.0.0.1:0").await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&lesson_upload("never", &content(4, 200_000))[..100_000])
        .await
        .unwrap();
    // The temporary file exists once the server has started the body.
    wait_until("the upload to start", || server.temp_files() == 1).await;
    server.stop().await;
    assert_eq!(server.temp_files(), 0);
    assert!(server.published().is_empty());
    drain(&mut s).await;
}
