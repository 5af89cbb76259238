//! barge against the lesson's own Python programs (`../shared/seed/`), in both directions.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::support::*;

#[tokio::test]
async fn seed_client_uploads_several_files_to_barge() {
    let mut server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let files = [
        ("movie.bin", content(7, 3 << 20)),
        ("性感荷官在线发牌.,mp4", content(8, 4321)),
        ("empty.txt", Vec::new()),
        ("lines.txt", b"one\ntwo\n\nthree".to_vec()),
    ];
    let mut cmd = python_seed("seed_client.py");
    for (name, body) in &files {
        let p = src.path().join(name);
        std::fs::write(&p, body).unwrap();
        cmd.arg(p);
    }
    cmd.args(["--port", &server.addr.port().to_string()]);
    let status = within(
        "seed_client.py",
        tokio::task::spawn_blocking(move || cmd.status()),
    )
    .await
    .unwrap()
    .expect("python3 runs");
    assert!(status.success());
    // The seed client closes after its last byte; the connection ends cleanly once all is stored.
    assert_eq!(server.next_end().await, Ok(()));
    for (name, body) in &files {
        assert_eq!(&server.read(name), body, "{name}");
    }
    assert_eq!(server.published().len(), files.len());
}

#[test]
fn barge_send_uploads_several_files_to_seed_server() {
    let src = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let files = [
        ("movie.bin", content(5, 3 << 20)),
        ("性感荷官在线发牌.,mp4", content(6, 999)),
        ("empty", Vec::new()),
    ];
    for (name, body) in &files {
        std::fs::write(src.path().join(name), body).unwrap();
    }
    let port = free_port();
    let mut child = python_seed("seed_server.py")
        .arg(out_dir.path())
        .args(["--port", &port.to_string(), "--max-conns", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().unwrap();
    let mut server = ChildGuard(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("seed server output").unwrap();
    assert!(first.starts_with("listening on"), "{first}");

    let out = barge()
        .args(["send", "--legacy"])
        .args(files.iter().map(|(n, _)| src.path().join(n)))
        .args(["--to", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    succeeded(&out);
    // barge send returns once the server closed the connection, after reading everything;
    // the seed server exits after that one connection.
    let status = server.0.wait().unwrap();
    assert!(status.success());
    let done: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(done.len(), files.len(), "{done:?}");
    for (name, body) in &files {
        assert_eq!(&std::fs::read(out_dir.path().join(name)).unwrap(), body);
    }
}
