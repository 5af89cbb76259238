//! barge's own protocol end to end: in memory, over sockets through a misbehaving proxy, and with
//! client and server processes killed mid-transfer.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use barge::client::v1::{self, Dial, Dialing, Event, Options, Stream, Tcp};
use barge::net::IdleTimeout;
use barge::server::{Connection, Handler, ServerConfig};
use barge::service::files::FileService;
use barge::store::{Begin, LocalConfig, LocalStore, OnConflict};
use barge::transfer::{Mode, Policy};
use barge_proto::wire::Status;
use tokio_util::sync::CancellationToken;

use crate::proxy::{Dir, Fault, Proxy};
use crate::support::*;

fn opts() -> Options {
    Options {
        connect_timeout: WAIT,
        io_timeout: WAIT,
        retries: 5,
        backoff: Duration::from_millis(50),
        token: None,
        max_listed: v1::MAX_LISTED,
        writers: Default::default(),
        follow_links: false,
        on_existing: Default::default(),
        checksum: false,
        filter: Default::default(),
        dry_run: false,
        delete: false,
        dest: None,
        fsync: true,
        streams: 1,
    }
}

fn tcp(addr: std::net::SocketAddr) -> Tcp {
    Tcp::new(addr.to_string(), WAIT)
}

/// Dials an in-memory pipe served by `service` directly: no sockets at all.
struct Memory(FileService);

impl Dial for Memory {
    fn dial(&self) -> Dialing<'_> {
        let service = self.0.clone();
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let conn = Connection {
                    stream: IdleTimeout::new(server, WAIT),
                    peer: ([127, 0, 0, 1], 1).into(),
                    shutdown: CancellationToken::new(),
                    secure: false,
                    header_timeout: WAIT,
                    first_request_by: None,
                    address_slot: barge::server::AddressSlot::none(),
                    pressure: None,
                    opened: tokio::time::Instant::now(),
                };
                let _ = service.handle(conn).await;
            });
            Ok(Box::new(client) as Box<dyn Stream>)
        })
    }

    fn name(&self) -> String {
        "memory".into()
    }
}

/// Writes a tree of `files` files (sizes varying, a few spanning several chunks when `big`)
/// spread over nested folders, plus two empty folders.
fn make_tree(root: &Path, files: usize, big: bool) {
    std::fs::create_dir_all(root.join("empty/deeper")).unwrap();
    for i in 0..files {
        let dir = root.join(format!("d{}/e{}", i % 10, i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let size = if big && i % 50 == 0 {
            2_500_000 + i
        } else {
            (i * 37) % 700
        };
        std::fs::write(dir.join(format!("f{i}.bin")), content(i as u64, size)).unwrap();
    }
}

/// Relative paths and contents of a tree (folders as `None`), `.barge` excluded.
fn snapshot(root: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".barge" {
                continue;
            }
            if p.is_dir() {
                out.push((rel, None));
                stack.push(p);
            } else {
                out.push((rel, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

fn memory_service(dir: &Path) -> FileService {
    FileService::local(
        LocalStore::open(LocalConfig {
            fsync: false,
            ..LocalConfig::new(dir)
        })
        .unwrap(),
        Default::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_send_list_get_round_trip() {
    let src = tempfile::tempdir().unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    make_tree(&src.path().join("tree"), 60, true);
    let single = src.path().join("one.bin");
    std::fs::write(&single, content(99, 1_048_576)).unwrap(); // exactly one chunk
    let dial = Memory(memory_service(server_dir.path()));
    let mut events = Vec::new();
    let report = within(
        "send",
        v1::send(
            &dial,
            &[src.path().join("tree"), single],
            &opts(),
            &mut |e| events.push(e),
        ),
    )
    .await
    .unwrap();
    assert_eq!(report.files, 61);
    assert!(report.failed.is_empty());
    assert_eq!(
        snapshot(&server_dir.path().join("tree")),
        snapshot(&src.path().join("tree"))
    );
    let listed = v1::list(&dial, "tree", true, &opts())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed.iter().filter(|e| !e.dir).count(), 60);
    // Each listed digest is the BLAKE3 of the file.
    for e in listed.iter().filter(|e| !e.dir) {
        let bytes = std::fs::read(src.path().join("tree").join(&e.path)).unwrap();
        assert_eq!(
            e.digest.as_deref(),
            Some(blake3::hash(&bytes).to_hex().as_str())
        );
    }
    let report = v1::get(
        &dial,
        &["tree".into(), "one.bin".into()],
        out.path(),
        &opts(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.files, 61);
    assert_eq!(
        snapshot(&out.path().join("tree")),
        snapshot(&src.path().join("tree"))
    );
    assert_eq!(
        std::fs::read(out.path().join("one.bin")).unwrap(),
        content(99, 1_048_576)
    );
    // Done events carry the digest that was checked end to end.
    let done = events
        .iter()
        .find_map(|e| match e {
            Event::Done { path, digest, .. } if path == "one.bin" => Some(digest.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        done,
        blake3::hash(&content(99, 1_048_576)).to_hex().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_files_send_ls_get_over_sockets() {
    let mut server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    make_tree(&src.path().join("many"), 5000, false);
    let report = within(
        "send 5000 files",
        v1::send(
            &tcp(server.addr),
            &[src.path().join("many")],
            &opts(),
            &mut |_| {},
        ),
    )
    .await
    .unwrap();
    assert_eq!((report.files, report.failed.len()), (5000, 0));
    assert_eq!(server.next_end().await, Ok(()));
    let listed = v1::list(&tcp(server.addr), "many", true, &opts())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed.iter().filter(|e| !e.dir).count(), 5000);
    let report = within(
        "get 5000 files",
        v1::get(
            &tcp(server.addr),
            &["many".into()],
            out.path(),
            &opts(),
            &mut |_| {},
        ),
    )
    .await
    .unwrap();
    assert_eq!(report.files, 5000);
    assert_eq!(
        snapshot(&out.path().join("many")),
        snapshot(&src.path().join("many"))
    );
    assert_eq!(server.partial_files(), 0);
}

/// A file big enough to span several chunks and checkpoints.
/// Sends `paths` to `addr`, returning the report and every event.
async fn send_recording(addr: std::net::SocketAddr, paths: &[PathBuf]) -> (v1::Report, Vec<Event>) {
    let mut events = Vec::new();
    let report = within(
        "send",
        v1::send(&tcp(addr), paths, &opts(), &mut |e| events.push(e)),
    )
    .await
    .unwrap();
    (report, events)
}

fn big_file(dir: &Path, name: &str, size: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content(7, size)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_transit_heals_and_never_stores_corrupt_data() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let file = big_file(src.path(), "movie.bin", 5 << 20);
    // One byte of the second chunk's data is flipped, on the first connection only.
    let proxy = Proxy::start(
        server.addr,
        Fault::Flip {
            dir: Dir::Up,
            at: (3 << 19),
            connections: 1,
        },
        None,
    )
    .await;
    let mut events = Vec::new();
    let report = within(
        "send",
        v1::send(&tcp(proxy.addr), &[file], &opts(), &mut |e| events.push(e)),
    )
    .await
    .unwrap();
    assert_eq!(report.files, 1);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Retry { reason, .. } if reason.contains("does not match"))),
        "{events:?}"
    );
    // The retry resumed from the verified part instead of starting over.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Start { offset, .. } if *offset > 0)),
        "{events:?}"
    );
    assert_eq!(server.read("movie.bin"), content(7, 5 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_corruption_fails_with_an_integrity_error_and_stores_nothing() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let file = big_file(src.path(), "movie.bin", 3 << 20);
    // Every chunk is damaged on every connection: retries cannot help.
    let proxy = Proxy::start(
        server.addr,
        Fault::FlipEvery {
            dir: Dir::Up,
            period: 300_000,
        },
        None,
    )
    .await;
    let report = within(
        "send",
        v1::send(&tcp(proxy.addr), &[file], &opts(), &mut |_| {}),
    )
    .await
    .unwrap();
    assert_eq!(report.files, 0);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].1, Status::Integrity);
    assert!(server.published().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_reconnects_and_sends_only_the_rest() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let size = 12 << 20;
    let file = big_file(src.path(), "cut.bin", size);
    let proxy = Proxy::start(
        server.addr,
        Fault::Cut {
            dir: Dir::Up,
            after: 7 << 20,
            connections: 1,
        },
        None,
    )
    .await;
    let mut events = Vec::new();
    let report = within(
        "send",
        v1::send(&tcp(proxy.addr), &[file], &opts(), &mut |e| events.push(e)),
    )
    .await
    .unwrap();
    assert_eq!(report.files, 1);
    assert!(report.retries >= 1);
    let resumed = events
        .iter()
        .filter_map(|e| match e {
            Event::Start { offset, .. } => Some(*offset),
            _ => None,
        })
        .max()
        .unwrap();
    // Everything verified before the cut (whole chunks) was kept.
    assert!(resumed >= 5 << 20, "resumed at {resumed}");
    assert_eq!(report.transferred, size as u64 - resumed);
    // What crossed the second connection is about what was missing (plus framing).
    let after = proxy.counts().iter().skip(1).map(|c| c.up).sum::<u64>();
    let missing = size as u64 - resumed;
    assert!(
        after >= missing && after < missing + 64 * 1024,
        "sent {after} for {missing} missing"
    );
    assert_eq!(server.read("cut.bin"), content(7, size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_local_file_is_sent_whole_again() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let size = 6 << 20;
    let file = big_file(src.path(), "v.bin", size);
    // Leave a partial of the old content on the server: cut after 4 MiB, no retries.
    let proxy = Proxy::start(
        server.addr,
        Fault::Cut {
            dir: Dir::Up,
            after: 4 << 20,
            connections: 1,
        },
        None,
    )
    .await;
    let no_retry = Options {
        retries: 0,
        ..opts()
    };
    assert!(
        v1::send(
            &tcp(proxy.addr),
            std::slice::from_ref(&file),
            &no_retry,
            &mut |_| {}
        )
        .await
        .is_err()
    );
    wait_until("the partial to be kept", || server.partial_files() > 0).await;
    // Same size, different first byte: the kept prefix no longer matches.
    let mut changed = content(7, size);
    changed[0] ^= 0xff;
    std::fs::write(&file, &changed).unwrap();
    let mut events = Vec::new();
    v1::send(&tcp(server.addr), &[file], &opts(), &mut |e| events.push(e))
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Start { offset: 0, .. })),
        "{events:?}"
    );
    assert_eq!(server.read("v.bin"), changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_from_the_local_partial() {
    let server = TestServer::start().await;
    let size = 9 << 20;
    std::fs::write(server.dir.path().join("film.bin"), content(3, size)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        server.addr,
        Fault::Cut {
            dir: Dir::Down,
            after: 5 << 20,
            connections: 1,
        },
        None,
    )
    .await;
    let mut events = Vec::new();
    let report = within(
        "get",
        v1::get(
            &tcp(proxy.addr),
            &["film.bin".into()],
            out.path(),
            &opts(),
            &mut |e| events.push(e),
        ),
    )
    .await
    .unwrap();
    assert_eq!(report.files, 1);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Start { offset, .. } if *offset >= 3 << 20)),
        "{events:?}"
    );
    assert!(report.transferred < size as u64);
    assert_eq!(
        std::fs::read(out.path().join("film.bin")).unwrap(),
        content(3, size)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_download_heals() {
    let server = TestServer::start().await;
    let size = 4 << 20;
    std::fs::write(server.dir.path().join("f.bin"), content(4, size)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        server.addr,
        Fault::Flip {
            dir: Dir::Down,
            at: 2 << 20,
            connections: 1,
        },
        None,
    )
    .await;
    let report = within(
        "get",
        v1::get(
            &tcp(proxy.addr),
            &["f.bin".into()],
            out.path(),
            &opts(),
            &mut |_| {},
        ),
    )
    .await
    .unwrap();
    assert_eq!(report.files, 1);
    assert!(report.retries >= 1);
    assert_eq!(
        std::fs::read(out.path().join("f.bin")).unwrap(),
        content(4, size)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_can_be_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let service = memory_service(dir.path()).with_downloads(false);
    let server = TestServer::start_service(
        service,
        ServerConfig::default(),
        "127.0.0.1:0",
        tempfile::tempdir().unwrap(),
    );
    let listed = v1::list(&tcp(server.addr), "", false, &opts())
        .await
        .unwrap();
    assert_eq!(listed.unwrap_err().0, Status::Forbidden);
    let out = tempfile::tempdir().unwrap();
    let report = v1::get(
        &tcp(server.addr),
        &["x".into()],
        out.path(),
        &opts(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.failed[0].1, Status::Forbidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_names_and_conflicts_get_typed_replies_and_later_files_still_go() {
    let server = TestServer::start_with_policy(
        Policy {
            on_conflict: OnConflict::Fail,
            ..Policy::default()
        },
        ServerConfig::default(),
        "127.0.0.1:0",
    )
    .await;
    std::fs::write(server.dir.path().join("taken.txt"), b"mine").unwrap();
    let src = tempfile::tempdir().unwrap();
    for (n, body) in [("taken.txt", &b"theirs"[..]), ("free.txt", b"ok")] {
        std::fs::write(src.path().join(n), body).unwrap();
    }
    let report = v1::send(
        &tcp(server.addr),
        &[src.path().join("taken.txt"), src.path().join("free.txt")],
        &opts(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(report.failed[0].0, "taken.txt");
    assert_eq!(report.failed[0].1, Status::Conflict);
    assert_eq!(server.read("taken.txt"), b"mine");
    assert_eq!(server.read("free.txt"), b"ok");
}

/// A server holding `bad.bin` (2 MiB of `content(seed)`) behind a proxy that flips a byte of
/// every 300,000 it sends down: every download of it fails verification.
async fn corrupted_on_the_way_down(seed: u64) -> (TestServer, Proxy) {
    let server = TestServer::start().await;
    std::fs::write(server.dir.path().join("bad.bin"), content(seed, 2 << 20)).unwrap();
    let proxy = Proxy::start(
        server.addr,
        Fault::FlipEvery {
            dir: Dir::Down,
            period: 300_000,
        },
        None,
    )
    .await;
    (server, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_get_exits_5_when_downloaded_data_keeps_failing_verification() {
    // A retry was signalled as a lost connection, so a get that never verified exited 1.
    let (_server, proxy) = corrupted_on_the_way_down(8).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = run_blocking(
        barge()
            .args([
                "get",
                &proxy.addr.to_string(),
                "bad.bin",
                "--retries",
                "2",
                "-o",
            ])
            .arg(out_dir.path()),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out_dir.path().join("bad.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_stops_sending_at_once_and_later_files_still_go() {
    // Regression (D7): the client streamed a whole 1 GiB file after the server refused it.
    let server = TestServer::start_with_policy(
        Policy {
            max_file_size: Some(1 << 20),
            ..Policy::default()
        },
        ServerConfig::default(),
        "127.0.0.1:0",
    )
    .await;
    let proxy = Proxy::start(server.addr, Fault::None, Some(100 << 20)).await;
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let small = src.path().join("small.bin");
    std::fs::write(&small, content(5, 3 << 10)).unwrap();
    let report = within(
        "send",
        v1::send(&tcp(proxy.addr), &[big, small], &opts(), &mut |_| {}),
    )
    .await
    .unwrap();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].1, Status::TooLarge);
    assert_eq!(report.files, 1);
    assert_eq!(server.read("small.bin"), content(5, 3 << 10));
    let up: u64 = proxy.counts().iter().map(|c| c.up).sum();
    assert!(
        up < 32 << 20,
        "{up} bytes were sent for a refused 300 MiB file"
    );
}

#[test]
fn partials_expire_after_their_time() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStore::open(LocalConfig {
        fsync: false,
        ..LocalConfig::new(dir.path())
    })
    .unwrap();
    rt.block_on(async {
        let begin = Begin::new("old.bin", 3 << 20);
        let mut up = barge::transfer::receive(&storage, &Policy::default(), begin, Mode::Check)
            .await
            .unwrap();
        let chunk = bytes::Bytes::from(vec![1u8; 1 << 20]);
        up.begin_chunk(barge_proto::tree::chunk_cv(0, &chunk), 1 << 20)
            .await
            .unwrap();
        up.write(chunk).await.unwrap();
        up.suspend().await;
    });
    let partial = dir.path().join(".barge/partial");
    let files: Vec<_> = std::fs::read_dir(&partial)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 3);
    // Kept while young...
    drop(
        LocalStore::open(LocalConfig {
            fsync: false,
            ..LocalConfig::new(dir.path())
        })
        .unwrap(),
    );
    assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 3);
    // ...removed once older than the configured time.
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86400);
    for f in &files {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
    }
    drop(
        LocalStore::open(LocalConfig {
            fsync: false,
            ..LocalConfig::new(dir.path())
        })
        .unwrap(),
    );
    assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 0);
}

/// Bytes kept by the server for a partial upload (its data file's size).
fn kept_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join(".barge/partial"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn done_event(stdout: &[u8]) -> serde_json::Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no done event in {}", String::from_utf8_lossy(stdout)))
}

/// Runs a command to completion without blocking the runtime that serves it.
async fn run_blocking(cmd: &mut std::process::Command) -> std::process::Output {
    let mut cmd = std::mem::replace(cmd, std::process::Command::new("true"));
    within(
        "the command",
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap()
    .unwrap()
}

fn kill(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_resumes_where_it_stopped() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let size = 24usize << 20;
    let file = big_file(src.path(), "k.bin", size);
    // Throttled so that the client can be killed mid-file.
    let proxy = Proxy::start(server.addr, Fault::None, Some(16 << 20)).await;
    let child = barge()
        .arg("send")
        .arg(&file)
        .args(["--to", &proxy.addr.to_string(), "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    wait_until("the upload to get going", || {
        kept_bytes(server.dir.path()) >= 6 << 20
    })
    .await;
    kill(child.0.id(), "-KILL");
    let _ = child.0.wait();
    // The server notices the dead connection and keeps what it verified.
    wait_until("the server to suspend the upload", || {
        server.partial_files() == 3 && kept_bytes(server.dir.path()) >= 6 << 20
    })
    .await;
    let out = run_blocking(barge().arg("send").arg(&file).args([
        "--to",
        &server.addr.to_string(),
        "--json",
        "--retries",
        "10",
    ]))
    .await;
    succeeded(&out);
    let done = done_event(&out.stdout);
    let transferred = done["transferred"].as_u64().unwrap();
    assert!(
        transferred <= (size as u64) - (5 << 20),
        "resent {transferred} bytes"
    );
    assert_eq!(server.read("k.bin"), content(7, size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_leaves_a_resumable_partial_and_exits_130() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let size = 24usize << 20;
    let file = big_file(src.path(), "i.bin", size);
    let proxy = Proxy::start(server.addr, Fault::None, Some(16 << 20)).await;
    let child = barge()
        .arg("send")
        .arg(&file)
        .args(["--to", &proxy.addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    wait_until("the upload to get going", || {
        kept_bytes(server.dir.path()) >= 4 << 20
    })
    .await;
    kill(child.0.id(), "-INT");
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut said).unwrap();
    assert!(
        said.contains("run the same command again to resume"),
        "{said}"
    );
    assert!(
        server.published().is_empty(),
        "nothing published by an interrupted send"
    );
    wait_until("the server to keep the partial", || {
        server.partial_files() == 3
    })
    .await;
    let out = run_blocking(barge().arg("send").arg(&file).args([
        "--to",
        &server.addr.to_string(),
        "--json",
        "--retries",
        "10",
    ]))
    .await;
    assert!(out.status.success());
    assert!(done_event(&out.stdout)["transferred"].as_u64().unwrap() < size as u64);
    assert_eq!(server.read("i.bin"), content(7, size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_sigkill_and_restarted_resumes_the_upload() {
    let inbox = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let size = 32usize << 20;
    let file = big_file(src.path(), "s.bin", size);
    let serve = |addr: &str| {
        let mut cmd = barge();
        cmd.args(["serve", "--addr", addr, "--checkpoint", "2M", "--dir"])
            .arg(inbox.path())
            .stderr(Stdio::null());
        spawn_announced(cmd)
    };
    let (mut server, addr) = serve("127.0.0.1:0");
    let proxy = Proxy::start(addr, Fault::None, Some(16 << 20)).await;
    let child = barge()
        .arg("send")
        .arg(&file)
        .args(["--to", &proxy.addr.to_string(), "--json", "--retries", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = ChildGuard(child);
    // Wait for a durable checkpoint (chunk digests on disk), then kill the server outright.
    let cvs_len = || {
        std::fs::read_dir(inbox.path().join(".barge/partial"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "cvs"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    wait_until("a checkpoint", || cvs_len() >= 4 * 32).await;
    kill(server.0.id(), "-KILL");
    server.0.wait().unwrap();
    let kept = cvs_len() / 32 * (1 << 20);
    let (_restarted, _) = serve(&addr.to_string());
    let out = tokio::task::spawn_blocking(move || {
        let mut client = client;
        let out = std::mem::replace(
            &mut client.0,
            std::process::Command::new("true").spawn().unwrap(),
        );
        out.wait_with_output()
    });
    let out = within("the client to finish", out).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "client failed after the server restart"
    );
    let done = done_event(&out.stdout);
    let transferred = done["transferred"].as_u64().unwrap();
    assert!(
        transferred <= size as u64 - kept + (1 << 20),
        "resent {transferred}, {kept} were kept"
    );
    assert_eq!(
        std::fs::read(inbox.path().join("s.bin")).unwrap(),
        content(7, size)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_skipped_and_reported_unless_followed_and_a_loop_is_cut() {
    let src = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/real.txt"), b"inside").unwrap();
    std::fs::write(outside.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(tree.join("sub/real.txt"), tree.join("inner-link")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), tree.join("escape")).unwrap();
    std::os::unix::fs::symlink(&tree, tree.join("sub/loop")).unwrap();

    // By default a link is never followed: each is reported, the rest is sent.
    let server_dir = tempfile::tempdir().unwrap();
    let dial = Memory(memory_service(server_dir.path()));
    let mut skipped = Vec::new();
    let report = v1::send(&dial, std::slice::from_ref(&tree), &opts(), &mut |e| {
        if let Event::Skipped { path, .. } = e {
            skipped.push(path);
        }
    })
    .await
    .unwrap();
    assert_eq!((report.files, report.skipped.len()), (1, 3), "{report:?}");
    assert_eq!(skipped.len(), 3);
    let stored = server_dir.path().join("tree");
    assert!(!stored.join("inner-link").exists() && !stored.join("escape").exists());

    // --follow-links: links to files are sent as files, and the loop back up is cut.
    let server_dir = tempfile::tempdir().unwrap();
    let dial = Memory(memory_service(server_dir.path()));
    let follow = v1::Options {
        follow_links: true,
        ..opts()
    };
    let report = v1::send(&dial, &[tree], &follow, &mut |_| {})
        .await
        .unwrap();
    assert_eq!((report.files, report.skipped.len()), (3, 1), "{report:?}");
    let stored = server_dir.path().join("tree");
    assert_eq!(std::fs::read(stored.join("inner-link")).unwrap(), b"inside");
    assert_eq!(std::fs::read(stored.join("escape")).unwrap(), b"outside");
    assert!(!stored.join("sub/loop").exists(), "a loop was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_with_bad_entries_sends_the_rest_and_exits_6() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("share");
    std::fs::create_dir_all(tree.join("locked")).unwrap();
    std::fs::create_dir_all(tree.join(".barge/partial")).unwrap();
    std::fs::write(tree.join(".barge/partial/x.part"), b"state").unwrap();
    std::fs::write(tree.join("good.txt"), b"fine").unwrap();
    std::fs::write(tree.join("back\\slash.txt"), b"bad name").unwrap();
    std::fs::write(tree.join("locked/hidden.txt"), b"cannot read").unwrap();
    std::fs::set_permissions(
        tree.join("locked"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let root_can_read_anything = std::fs::read_dir(tree.join("locked")).is_ok();
    let out = run_blocking(barge().arg("send").arg(&tree).args([
        "--to",
        &server.addr.to_string(),
        "--json",
    ]))
    .await;
    std::fs::set_permissions(
        tree.join("locked"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let skipped: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "skipped")
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        skipped.iter().any(|p| p.ends_with("back\\slash.txt")),
        "{skipped:?}"
    );
    if !root_can_read_anything {
        assert!(skipped.iter().any(|p| p.ends_with("locked")), "{skipped:?}");
    }
    assert!(
        !skipped.iter().any(|p| p.contains(".barge")),
        "state is left out silently"
    );
    assert_eq!(server.read("share/good.txt"), b"fine");
    assert!(
        !server
            .dir
            .path()
            .join("share/.barge/partial/x.part")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_code_5_when_corruption_persists() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let file = big_file(src.path(), "bad.bin", 2 << 20);
    let proxy = Proxy::start(
        server.addr,
        Fault::FlipEvery {
            dir: Dir::Up,
            period: 300_000,
        },
        None,
    )
    .await;
    let out = run_blocking(barge().arg("send").arg(&file).args([
        "--to",
        &proxy.addr.to_string(),
        "--retries",
        "2",
        "--json",
    ]))
    .await;
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "failed")
        .unwrap();
    assert_eq!(failed["status"], "integrity");
    assert!(server.published().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_get_keeps_a_resumable_local_partial() {
    let server = TestServer::start().await;
    let size = 24usize << 20;
    std::fs::write(server.dir.path().join("dl.bin"), content(8, size)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(server.addr, Fault::None, Some(16 << 20)).await;
    let child = barge()
        .args(["get", &proxy.addr.to_string(), "dl.bin", "-o"])
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    wait_until("the download to get going", || {
        kept_bytes(out.path()) >= 4 << 20
    })
    .await;
    kill(child.0.id(), "-INT");
    assert_eq!(child.0.wait().unwrap().code(), Some(130));
    assert!(
        !out.path().join("dl.bin").exists(),
        "nothing published by an interrupted get"
    );
    let out_dir = out.path().to_owned();
    let again = run_blocking(
        barge()
            .args(["get", &server.addr.to_string(), "dl.bin", "--json", "-o"])
            .arg(&out_dir),
    )
    .await;
    assert!(again.status.success());
    let done = done_event(&again.stdout);
    assert!(
        done["transferred"].as_u64().unwrap() <= (size as u64) - (4 << 20),
        "{done}"
    );
    assert_eq!(
        std::fs::read(out.path().join("dl.bin")).unwrap(),
        content(8, size)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_counts_bytes_memory_to_memory_and_stores_nothing() {
    let server = TestServer::start().await;
    let elapsed = v1::bench(&tcp(server.addr), (5 << 20) + 123, &opts())
        .await
        .unwrap();
    assert!(elapsed > Duration::ZERO);
    assert!(server.published().is_empty());
    assert_eq!(server.partial_files(), 0);
    // The connection is usable afterwards: an upload on a new one works, and so does the CLI.
    let out =
        run_blocking(barge().args(["bench", &server.addr.to_string(), "--size", "8M", "--json"]))
            .await;
    succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bytes"], 8 << 20);
    assert!(v["bits_per_second"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_after_the_file_was_stored_does_not_store_it_twice() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let small = src.path().join("once.txt");
    std::fs::write(&small, b"stored exactly once").unwrap();
    let big = big_file(src.path(), "once.bin", 3 << 20);
    // The client first lists what the server has of it (nothing yet: the reply is not_found),
    // then a large file is probed: its put's reply comes after those.
    let encoded = |reply: barge_proto::wire::Reply| {
        let mut b = bytes::BytesMut::new();
        barge_proto::wire::encode_reply(&reply, &mut b);
        b.len() as u64
    };
    let not_listed = |name: &str| {
        let why = format!("{name:?} not found");
        encoded(barge_proto::wire::Reply::error(2, Status::NotFound, why))
    };
    let probe_reply = encoded(barge_proto::wire::Reply {
        offset: Some(0),
        prefix: Some(barge_proto::tree::hex(&barge_proto::tree::prefix_digest(
            &[],
        ))),
        ..barge_proto::wire::Reply::ok(3)
    });
    let cuts = [
        (small, 8 + not_listed("once.txt")),
        (big, 8 + not_listed("once.bin") + probe_reply),
    ];
    for (file, before_put_reply) in cuts {
        // Everything up to the put's reply gets through; that reply (sent once the file was
        // stored) does not.
        let proxy = Proxy::start(
            server.addr,
            Fault::Cut {
                dir: Dir::Down,
                after: before_put_reply + 1,
                connections: 1,
            },
            None,
        )
        .await;
        let (report, events) = send_recording(proxy.addr, std::slice::from_ref(&file)).await;
        assert_eq!((report.files, report.retries), (1, 1), "{events:?}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Done { transferred: 0, .. })),
            "the retry recognised the stored file: {events:?}"
        );
    }
    assert_eq!(server.published(), ["once.bin", "once.txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_are_off_when_piped_unless_forced() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let file = big_file(src.path(), "bar.bin", 4 << 20);
    // Slow enough (about half a second) for a bar to be drawn.
    let proxy = Proxy::start(server.addr, Fault::None, Some(8 << 20)).await;
    let to = proxy.addr.to_string();
    let piped = run_blocking(barge().arg("send").arg(&file).args(["--to", &to])).await;
    assert!(piped.status.success());
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("ETA"));
    let forced = run_blocking(barge().arg("send").arg(&file).args([
        "--to",
        &to,
        "--progress",
        "always",
        "--on-conflict",
        "overwrite",
    ]))
    .await;
    assert!(forced.status.success());
    let err = String::from_utf8_lossy(&forced.stderr);
    // One overall line (a file this small gets no bar of its own), then the summary.
    assert!(err.contains("1 files") && err.contains("ETA"), "{err:?}");
    assert!(err.contains("1 file sent (1 updated)"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_corrupted_in_transit_are_sent_again_and_replies_stay_in_order() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    // Small files (stored in parallel, replies batched) around a folder and a multi-chunk file,
    // so replies of every kind interleave.
    let tree = src.path().join("mix");
    for i in 0..300 {
        let dir = tree.join(format!("d{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("s{i}")), content(i, 100 + i as usize * 13)).unwrap();
    }
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::write(tree.join("d1/big.bin"), content(9, 2_200_000)).unwrap();
    // One flipped byte somewhere in the small files' data on the first connection.
    let proxy = Proxy::start(
        server.addr,
        Fault::Flip {
            dir: Dir::Up,
            at: 20_000,
            connections: 1,
        },
        None,
    )
    .await;
    let (report, events) = send_recording(proxy.addr, std::slice::from_ref(&tree)).await;
    assert!(
        events.iter().any(|e| matches!(e, Event::Retry { .. })),
        "the flipped byte went unnoticed: {events:?}"
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.files, 301);
    assert_eq!(snapshot(&server.dir.path().join("mix")), snapshot(&tree));
    // Nothing of barge's own is left in the folders, and none of it is listed.
    let listed = v1::list(&tcp(server.addr), "mix", true, &opts())
        .await
        .unwrap()
        .unwrap();
    assert!(listed.iter().all(|e| !e.path.contains(".barge")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_starting_with_barges_prefix_are_reserved() {
    // The client leaves one named by hand out, and says so...
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join(".barge-evil.part"), b"x").unwrap();
    let server = TestServer::start().await;
    let refused = v1::send(
        &tcp(server.addr),
        &[src.path().join(".barge-evil.part")],
        &opts(),
        &mut |_| {},
    )
    .await;
    let report = refused.unwrap();
    assert_eq!((report.files, report.skipped.len()), (0, 1), "{report:?}");
    assert!(report.skipped[0].1.contains("cannot be sent"), "{report:?}");
    // ...and the server refuses one sent by hand, then serves the next request.
    use barge_proto::wire::{self, Frame, Reply, Request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&wire::preface(wire::VERSION));
    for (id, path) in [(2, "sub/.barge-x.part"), (3, "fine.txt")] {
        wire::encode_request(
            &Request::Put {
                id,
                path: path.into(),
                size: 1,
                from: 0,
                replaces: None,
                reuse: None,
                mtime: None,
                stripe: None,
            },
            &mut out,
        );
        let cv = barge_proto::tree::chunk_cv(0, b"x");
        wire::encode_data_header(&cv, 1, &mut out);
        out.extend_from_slice(b"x");
        let digest = barge_proto::tree::hex(blake3::hash(b"x").as_bytes());
        wire::encode_request(&Request::End { id, digest }, &mut out);
    }
    s.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut replies: Vec<Reply> = Vec::new();
    within("replies", async {
        while replies.len() < 2 {
            if buf.len() >= wire::PREFACE_LEN && buf.starts_with(&wire::MAGIC) {
                let _ = buf.split_to(wire::PREFACE_LEN);
            }
            while let Some(Frame::Reply(r)) = wire::decode_frame(&mut buf).unwrap() {
                replies.push(r);
            }
            if replies.len() < 2 {
                assert!(s.read_buf(&mut buf).await.unwrap() > 0, "closed early");
            }
        }
    })
    .await;
    assert_eq!(replies[0].id, 2);
    assert_eq!(replies[0].status, Status::NameRejected);
    assert_eq!(replies[1].id, 3);
    assert_eq!(replies[1].status, Status::Ok);
    assert_eq!(server.published(), ["fine.txt"]);
}

/// A hostile server that answers the first `list` with pages made by `page` forever.
async fn endless_lister(page: fn(u64) -> Vec<barge_proto::wire::Entry>) -> std::net::SocketAddr {
    use barge_proto::wire::{self, Frame, Reply, Request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = bytes::BytesMut::new();
        while buf.len() < wire::PREFACE_LEN {
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        }
        let _ = buf.split_to(wire::PREFACE_LEN);
        let _ = s.write_all(&wire::preface(wire::VERSION)).await;
        let id = loop {
            if let Ok(Some(Frame::Request(Request::List { id, .. }))) = wire::decode_frame(&mut buf)
            {
                break id;
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        };
        // Bounded: stops by itself after a few seconds' worth of pages.
        for n in 0..200_000u64 {
            let reply = Reply {
                entries: Some(page(n)),
                more: Some(true),
                ..Reply::ok(id)
            };
            let mut out = bytes::BytesMut::new();
            wire::encode_reply(&reply, &mut out);
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sending_endless_listing_pages_is_not_followed() {
    // Regression (D13): `barge ls` kept every page of a server that never stopped sending them.
    fn page(n: u64) -> Vec<barge_proto::wire::Entry> {
        (0..150)
            .map(|i| barge_proto::wire::Entry {
                path: format!("{}{n}-{i}", "x".repeat(200)),
                dir: false,
                size: 1,
                mtime: 0,
                digest: Some("00".repeat(32)),
            })
            .collect()
    }
    fn empty(_: u64) -> Vec<barge_proto::wire::Entry> {
        Vec::new()
    }
    let limited = Options {
        max_listed: 10_000,
        ..opts()
    };
    let addr = endless_lister(page).await;
    let listed = within("list", v1::list(&tcp(addr), "", true, &limited)).await;
    assert!(
        matches!(&listed, Err(v1::TransferError::Protocol(m)) if m.contains("10000")),
        "{listed:?}"
    );
    // Streamed (as `ls` does): entries are handed on as they come, and the bound holds too.
    let addr = endless_lister(page).await;
    let mut seen = 0u64;
    let streamed = within(
        "list_each",
        v1::list_each(&tcp(addr), "", true, &limited, &mut |_| {
            seen += 1;
            Ok(())
        }),
    )
    .await;
    assert!(streamed.is_err(), "{streamed:?}");
    assert!((9_900..=10_000).contains(&seen), "{seen}");
    let addr = endless_lister(empty).await;
    let listed = within("list", v1::list(&tcp(addr), "", true, &opts())).await;
    assert!(
        matches!(&listed, Err(v1::TransferError::Protocol(m)) if m.contains("empty")),
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exit_code_in_the_readme_table_is_reachable() {
    // Table-driven, through the binary as a user runs it. 130 (Ctrl-C) needs a signal mid-transfer:
    // `ctrl_c_leaves_a_resumable_partial_and_exits_130` covers it.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table = readme.split("## Exit codes").nth(1).unwrap();
    let documented: Vec<i32> = table
        .lines()
        .skip_while(|l| !l.starts_with("| 0 "))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(documented, [0, 1, 2, 3, 4, 5, 6, 130]);

    let dir = tempfile::tempdir().unwrap();
    let (_limited, limited) = spawn_announced({
        let mut cmd = barge();
        cmd.args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--max-file-size",
            "1000",
            "--dir",
        ])
        .arg(dir.path().join("limited"))
        .stderr(Stdio::null());
        cmd
    });
    let (_server, corrupting) = corrupted_on_the_way_down(9).await;
    let src = tempfile::tempdir().unwrap();
    let small = src.path().join("small.txt");
    let big = src.path().join("big.bin");
    std::fs::write(&small, b"ten bytes!").unwrap();
    std::fs::write(&big, content(10, 5000)).unwrap();
    let (small, big) = (small.to_str().unwrap(), big.to_str().unwrap());
    let missing = src.path().join("missing.txt");
    let missing = missing.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let (limited, corrupting) = (limited.to_string(), corrupting.addr.to_string());
    let unreachable = format!("127.0.0.1:{}", free_port());
    let by_name = limited.replace("127.0.0.1", "localhost");
    let rows: Vec<(&str, Vec<&str>, i32)> = vec![
        ("success", vec!["send", small, "--to", &limited], 0),
        (
            "failure: an unreadable file",
            vec!["send", missing, "--to", &limited],
            1,
        ),
        (
            "usage: an unknown option",
            vec!["send", small, "--to", &limited, "--frobnicate"],
            2,
        ),
        (
            "usage: a malformed fingerprint",
            vec!["ls", &limited, "--fingerprint", "SHA256:00"],
            2,
        ),
        (
            "usage: a zero --partial-ttl",
            vec![
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--dir",
                out,
                "--partial-ttl",
                "0",
            ],
            2,
        ),
        (
            "usage: a zero --timeout",
            vec!["ls", &limited, "--timeout", "0"],
            2,
        ),
        (
            "usage: an address without a port",
            vec!["send", small, "--to", "127.0.0.1"],
            2,
        ),
        (
            "usage: a port out of range",
            vec!["send", small, "--to", "127.0.0.1:99999"],
            2,
        ),
        ("usage: a bad port first", vec!["ls", "localhost:99999"], 2),
        ("success: a host name", vec!["ls", &by_name], 0),
        ("unreachable", vec!["send", small, "--to", &unreachable], 3),
        ("refused", vec!["send", big, "--to", &limited], 4),
        (
            "refused: ls of a missing path",
            vec!["ls", &limited, "nope"],
            4,
        ),
        (
            "integrity",
            vec!["get", &corrupting, "bad.bin", "--retries", "1", "-o", out],
            5,
        ),
        ("partial", vec!["send", small, big, "--to", &limited], 6),
    ];
    for (what, args, code) in rows {
        let got = run_blocking(barge().args(&args)).await;
        assert_eq!(
            got.status.code(),
            Some(code),
            "{what}: barge {args:?}\n{}",
            String::from_utf8_lossy(&got.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_the_token_forbids_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "download-only-token-01234567 download\n").unwrap();
    let (_server, addr) = spawn_announced({
        let mut cmd = barge();
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--token-file"])
            .arg(&tokens)
            .arg("--dir")
            .arg(dir.path().join("files"))
            .stderr(Stdio::null());
        cmd
    });
    let addr = addr.to_string();
    let got = run_blocking(
        barge()
            .args(["ls", &addr])
            .env("BARGE_TOKEN", "download-only-token-01234567"),
    )
    .await;
    assert_eq!(
        got.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let without = run_blocking(barge().args(["ls", &addr]).env_remove("BARGE_TOKEN")).await;
    assert_eq!(
        without.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
}

/// Files below `dir`, relative, sorted (the state folder left out).
fn names_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if rel.starts_with(".barge") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_a_folder_again_sends_only_what_changed_and_replaces_it_in_place() {
    let src = tempfile::tempdir().unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let tree = src.path().join("share");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 0..20u64 {
        std::fs::write(
            tree.join(format!("sub/f{i}.txt")),
            content(i, 3000 + i as usize),
        )
        .unwrap();
    }
    std::fs::write(tree.join("big.bin"), content(99, 3 << 20)).unwrap();
    let dial = Memory(memory_service(server_dir.path()));
    let first = v1::send(&dial, std::slice::from_ref(&tree), &opts(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!((first.files, first.unchanged), (21, 0));

    // Unchanged: nothing moves, nothing is stored twice.
    let again = v1::send(&dial, std::slice::from_ref(&tree), &opts(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        (again.files, again.unchanged, again.transferred),
        (0, 21, 0),
        "{again:?}"
    );
    let before = names_below(&server_dir.path().join("share"));
    assert_eq!(before.len(), 21);

    // Two files changed (one in place, one in size): they replace the old versions. (Edited
    // later than they were sent: the quick check compares size and modification time.)
    std::fs::write(tree.join("sub/f3.txt"), content(200, 3003)).unwrap();
    std::fs::write(tree.join("big.bin"), content(98, (3 << 20) + 7)).unwrap();
    later(&tree.join("sub/f3.txt"));
    let update = v1::send(&dial, std::slice::from_ref(&tree), &opts(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        (update.files, update.updated, update.unchanged),
        (2, 2, 19),
        "{update:?}"
    );
    assert_eq!(
        names_below(&server_dir.path().join("share")),
        before,
        "no (1) copies"
    );
    assert_eq!(
        std::fs::read(server_dir.path().join("share/sub/f3.txt")).unwrap(),
        content(200, 3003)
    );
    assert_eq!(
        std::fs::read(server_dir.path().join("share/big.bin")).unwrap(),
        content(98, (3 << 20) + 7)
    );

    // --on-conflict rename keeps both; skip and fail leave the server's version.
    std::fs::write(tree.join("sub/f4.txt"), content(201, 10)).unwrap();
    later(&tree.join("sub/f4.txt"));
    let with = |on_existing| v1::Options {
        on_existing,
        ..opts()
    };
    let skip = v1::send(
        &dial,
        std::slice::from_ref(&tree),
        &with(v1::OnExisting::Skip),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!((skip.files, skip.skipped.len()), (0, 1));
    let fail = v1::send(
        &dial,
        std::slice::from_ref(&tree),
        &with(v1::OnExisting::Fail),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(fail.failed[0].1, Status::Conflict);
    let rename = v1::send(
        &dial,
        std::slice::from_ref(&tree),
        &with(v1::OnExisting::Rename),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(rename.files, 1);
    assert_eq!(
        std::fs::read(server_dir.path().join("share/sub/f4 (1).txt")).unwrap(),
        content(201, 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getting_a_folder_again_fetches_only_what_changed_and_replaces_it_in_place() {
    let server_dir = tempfile::tempdir().unwrap();
    let tree = server_dir.path().join("share");
    std::fs::create_dir_all(&tree).unwrap();
    for i in 0..10u64 {
        std::fs::write(tree.join(format!("f{i}.txt")), content(i, 5000)).unwrap();
    }
    std::fs::write(tree.join("big.bin"), content(50, 2 << 20)).unwrap();
    let dial = Memory(memory_service(server_dir.path()));
    let out = tempfile::tempdir().unwrap();
    let get = async || {
        v1::get(&dial, &["share".into()], out.path(), &opts(), &mut |_| {})
            .await
            .unwrap()
    };
    let first = get().await;
    assert_eq!((first.files, first.unchanged), (11, 0));
    let again = get().await;
    assert_eq!(
        (again.files, again.unchanged, again.transferred),
        (0, 11, 0),
        "{again:?}"
    );
    std::fs::write(tree.join("f2.txt"), content(77, 5000)).unwrap();
    let update = get().await;
    assert_eq!(
        (update.files, update.updated, update.unchanged),
        (1, 1, 10),
        "{update:?}"
    );
    assert_eq!(
        names_below(&out.path().join("share")).len(),
        11,
        "no (1) copies"
    );
    assert_eq!(
        std::fs::read(out.path().join("share/f2.txt")).unwrap(),
        content(77, 5000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_in_three_places_sends_only_those_chunks() {
    let src = tempfile::tempdir().unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let file = src.path().join("disk.img");
    let mut data = content(3, 12 << 20);
    std::fs::write(&file, &data).unwrap();
    let dial = Memory(memory_service(server_dir.path()));
    let first = v1::send(&dial, std::slice::from_ref(&file), &opts(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(first.transferred, 12 << 20);
    for at in [1usize << 20, (5 << 20) + 7, (11 << 20) + 99] {
        data[at] ^= 0x5a;
    }
    std::fs::write(&file, &data).unwrap();
    later(&file);
    let update = v1::send(&dial, std::slice::from_ref(&file), &opts(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!((update.files, update.updated), (1, 1), "{update:?}");
    assert_eq!(
        update.transferred,
        3 << 20,
        "only the three changed chunks moved"
    );
    assert_eq!(
        std::fs::read(server_dir.path().join("disk.img")).unwrap(),
        data
    );
    assert_eq!(names_below(server_dir.path()), ["disk.img"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_check_trusts_size_and_time_and_checksum_reads_the_bytes() {
    use std::os::unix::fs::MetadataExt;
    let src = tempfile::tempdir().unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let file = src.path().join("notes.txt");
    std::fs::write(&file, b"version one").unwrap();
    let old_time = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(old_time)
        .unwrap();
    let dial = Memory(memory_service(server_dir.path()));
    v1::send(&dial, std::slice::from_ref(&file), &opts(), &mut |_| {})
        .await
        .unwrap();
    // The stored file has the sender's modification time.
    let stored = server_dir.path().join("notes.txt");
    assert_eq!(std::fs::metadata(&stored).unwrap().mtime(), 1_600_000_000);
    // Same size, same time, other bytes: the quick check takes it as unchanged...
    std::fs::write(&file, b"version two").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(old_time)
        .unwrap();
    let quick = v1::send(&dial, std::slice::from_ref(&file), &opts(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!((quick.files, quick.unchanged), (0, 1));
    // ...and --checksum reads it and sends the change.
    let checked = v1::Options {
        checksum: true,
        ..opts()
    };
    let report = v1::send(&dial, std::slice::from_ref(&file), &checked, &mut |_| {})
        .await
        .unwrap();
    assert_eq!((report.files, report.updated), (1, 1));
    assert_eq!(std::fs::read(&stored).unwrap(), b"version two");
}

/// Moves a file's modification time a minute ahead, as an edit made later would.
fn later(path: &Path) {
    let now = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(now + Duration::from_secs(60))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_line_has_an_event_and_failures_carry_their_exit_code() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("a.txt");
    std::fs::write(&file, b"json").unwrap();
    let addr = server.addr.to_string();
    let sent = run_blocking(
        barge()
            .arg("send")
            .arg(&file)
            .args(["--to", &addr, "--json"]),
    )
    .await;
    assert!(sent.status.success());
    let listed = run_blocking(barge().args(["ls", &addr, "--json"])).await;
    let missing = run_blocking(barge().args(["ls", &addr, "nope", "--json"])).await;
    let unreachable = format!("127.0.0.1:{}", free_port());
    let lost = run_blocking(
        barge()
            .arg("send")
            .arg(&file)
            .args(["--to", &unreachable, "--json"]),
    )
    .await;
    for out in [&sent, &listed, &missing, &lost] {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["event"].is_string(), "{line}");
            if let Some(secs) = v["secs"].as_f64() {
                assert_eq!(secs, (secs * 1000.0).round() / 1000.0, "{line}");
            }
        }
    }
    let entry: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (entry["event"].as_str(), entry["path"].as_str()),
        (Some("entry"), Some("a.txt"))
    );
    for (out, code) in [(&missing, 4i64), (&lost, 3)] {
        assert_eq!(out.status.code().map(i64::from), Some(code));
        let last: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        assert_eq!(
            (last["event"].as_str(), last["code"].as_i64()),
            (Some("error"), Some(code)),
            "{last}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_and_exclude_choose_what_goes_both_ways() {
    let src = tempfile::tempdir().unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let tree = src.path().join("proj");
    for (p, body) in [
        ("src/main.rs", "fn main() {}"),
        ("src/lib.rs", "pub fn f() {}"),
        ("notes.tmp", "scratch"),
        ("build/out.o", "object"),
        ("README.md", "hello"),
    ] {
        std::fs::create_dir_all(tree.join(p).parent().unwrap()).unwrap();
        std::fs::write(tree.join(p), body).unwrap();
    }
    let dial = Memory(memory_service(server_dir.path()));
    let filtered = |include: &[&str], exclude: &[&str]| v1::Options {
        filter: v1::Filter::new(
            &include.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &exclude.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap(),
        ..opts()
    };
    v1::send(
        &dial,
        std::slice::from_ref(&tree),
        &filtered(&[], &["*.tmp", "build"]),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        names_below(&server_dir.path().join("proj")),
        ["README.md", "src/lib.rs", "src/main.rs"]
    );
    // Fetching back only the Rust files.
    let out = tempfile::tempdir().unwrap();
    v1::get(
        &dial,
        &["proj".into()],
        out.path(),
        &filtered(&["*.rs"], &[]),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        names_below(&out.path().join("proj")),
        ["src/lib.rs", "src/main.rs"]
    );
    assert!(
        v1::Filter::new(&["a[".into()], &[]).is_err(),
        "a bad glob is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_says_what_would_move_and_moves_nothing() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("d");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("same.txt"), b"same").unwrap();
    let addr = server.addr.to_string();
    let first = run_blocking(barge().arg("send").arg(&tree).args(["--to", &addr])).await;
    assert!(first.status.success());
    std::fs::write(tree.join("new.txt"), b"new").unwrap();
    let dry =
        run_blocking(
            barge()
                .arg("send")
                .arg(&tree)
                .args(["--to", &addr, "--dry-run", "--json"]),
        )
        .await;
    succeeded(&dry);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let would: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "would_transfer" && e["action"] == "send")
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(would, ["d/new.txt"]);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "unchanged" && e["path"] == "d/same.txt")
    );
    assert!(
        !server.dir.path().join("d/new.txt").exists(),
        "a dry run sent a file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_get_changes_nothing_here_not_even_barges_state_folder() {
    let server_dir = tempfile::tempdir().unwrap();
    let tree = server_dir.path().join("share");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("same.txt"), b"same").unwrap();
    std::fs::write(tree.join("sub/new.txt"), b"new!").unwrap();
    let dial = Memory(memory_service(server_dir.path()));
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(out.path().join("share")).unwrap();
    std::fs::write(out.path().join("share/same.txt"), b"same").unwrap();
    let before = std::fs::read_dir(out.path().join("share")).unwrap().count();
    let dry = v1::Options {
        dry_run: true,
        ..opts()
    };
    let report = v1::get(&dial, &["share".into()], out.path(), &dry, &mut |_| {})
        .await
        .unwrap();
    assert_eq!((report.would_transfer, report.unchanged), ((1, 4), 1));
    assert!(
        !out.path().join(".barge").exists(),
        "a dry run made barge's state folder"
    );
    assert_eq!(
        std::fs::read_dir(out.path().join("share")).unwrap().count(),
        before,
        "a dry run changed the folder"
    );
    // Into a folder that is not there: told what would move, and the folder is still not there.
    let missing = out.path().join("not/yet");
    let report = v1::get(&dial, &["share".into()], &missing, &dry, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.would_transfer, (2, 8));
    assert!(!out.path().join("not").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_delete_removes_what_the_server_no_longer_has_and_only_that() {
    let server_dir = tempfile::tempdir().unwrap();
    let tree = server_dir.path().join("share");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("keep.txt"), b"keep").unwrap();
    std::fs::write(tree.join("sub/also.txt"), b"also").unwrap();
    let dial = Memory(memory_service(server_dir.path()));
    let out = tempfile::tempdir().unwrap();
    v1::get(&dial, &["share".into()], out.path(), &opts(), &mut |_| {})
        .await
        .unwrap();
    let mine = out.path().join("share");
    std::fs::write(mine.join("extra.txt"), b"gone on the server").unwrap();
    std::fs::create_dir_all(mine.join("old/empty")).unwrap();
    std::fs::write(mine.join("local.tmp"), b"left out by the filter").unwrap();
    let by_default = v1::get(&dial, &["share".into()], out.path(), &opts(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(by_default.deleted, 0);
    assert!(
        mine.join("extra.txt").exists(),
        "never deleted unless asked"
    );
    let delete = v1::Options {
        delete: true,
        filter: v1::Filter::new(&[], &["*.tmp".into()]).unwrap(),
        ..opts()
    };
    let dry = v1::Options {
        dry_run: true,
        ..delete.clone()
    };
    v1::get(&dial, &["share".into()], out.path(), &dry, &mut |_| {})
        .await
        .unwrap();
    assert!(mine.join("extra.txt").exists(), "a dry run deleted a file");
    let report = v1::get(&dial, &["share".into()], out.path(), &delete, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.deleted, 3, "extra.txt, old/empty, old");
    assert_eq!(
        names_below(&mine),
        ["keep.txt", "local.tmp", "sub/also.txt"]
    );
}
