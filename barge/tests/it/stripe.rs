//! Striped uploads (`send --streams N`): one file over N connections arrives byte-identical, heals
//! and resumes like one connection, and the server refuses joins that do not fit and fails a
//! stripe whose connections stop, keeping what was verified in order.

use std::time::Duration;

use barge::client::v1::{self, Event, Options, Tcp};
use barge::server::ServerConfig;
use barge::service::files::FileService;
use barge::store::{LocalConfig, LocalStore};
use barge_proto::tree::{CHUNK, chunk_count, chunk_cv, hex};
use barge_proto::wire::{self, Frame, Reply, Request, Status, Stripe};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::{Dir, Fault, Proxy};
use crate::support::*;

fn opts(streams: u32) -> Options {
    Options {
        connect_timeout: WAIT,
        io_timeout: WAIT,
        retries: 5,
        backoff: Duration::from_millis(50),
        streams,
        ..Options::default()
    }
}

fn tcp(addr: std::net::SocketAddr) -> Tcp {
    Tcp::new(addr.to_string(), WAIT)
}

/// A file server whose striped uploads give up after `wait` without progress.
fn server_waiting(wait: Duration) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(LocalConfig {
        fsync: false,
        ..LocalConfig::new(dir.path())
    })
    .unwrap();
    let service = FileService::local(store, Default::default()).with_stripe_wait(wait);
    TestServer::start_service(service, ServerConfig::default(), "127.0.0.1:0", dir)
}

/// Sends `file` through `proxy` over `streams` connections; the report and the events.
async fn send_striped(
    proxy: &Proxy,
    file: std::path::PathBuf,
    streams: u32,
) -> (v1::Report, Vec<Event>) {
    let mut events = Vec::new();
    let report = within(
        "send",
        v1::send(&tcp(proxy.addr), &[file], &opts(streams), &mut |e| {
            events.push(e)
        }),
    )
    .await
    .unwrap();
    (report, events)
}

fn source(size: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    std::fs::write(&path, content(11, size)).unwrap();
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_striped_send_is_byte_identical_and_spreads_over_its_connections() {
    let server = TestServer::start().await;
    // Not a whole number of chunks, and not a multiple of the streams: the last lane is short.
    let size = (21 << 20) + 12345;
    let (_src, file) = source(size);
    let proxy = Proxy::start(server.addr, Fault::None, None).await;
    let (report, _) = send_striped(&proxy, file, 4).await;
    assert_eq!((report.files, report.transferred), (1, size as u64));
    assert_eq!(server.read("big.bin"), content(11, size));
    // The put's connection and three joins, each carrying about a quarter of the chunks.
    let counts = proxy.counts();
    assert_eq!(counts.len(), 4, "{counts:?}");
    for c in &counts {
        assert!(c.up >= 5 << 20 && c.up <= 7 << 20, "{counts:?}");
    }
    assert_eq!(server.partial_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_is_not_striped() {
    let server = TestServer::start().await;
    // 6 chunks: fewer than four per stream for two streams or more.
    let (_src, file) = source(6 << 20);
    let proxy = Proxy::start(server.addr, Fault::None, None).await;
    let (report, _) = send_striped(&proxy, file, 4).await;
    assert_eq!(report.files, 1);
    assert_eq!(proxy.counts().len(), 1);
    assert_eq!(server.read("big.bin"), content(11, 6 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_on_a_stripe_heals_and_never_stores_corrupt_data() {
    let server = TestServer::start().await;
    let size = 16 << 20;
    let (_src, file) = source(size);
    // The first connection (the put's own) has one byte flipped in its second data frame.
    let proxy = Proxy::start(
        server.addr,
        Fault::Flip {
            dir: Dir::Up,
            at: (5 << 20) / 2,
            connections: 1,
        },
        None,
    )
    .await;
    let (report, events) = send_striped(&proxy, file, 4).await;
    assert_eq!(report.files, 1, "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e, Event::Retry { .. })),
        "{events:?}"
    );
    assert_eq!(server.read("big.bin"), content(11, size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stripe_resumes_from_the_chunks_verified_in_order() {
    // The cut may come before the other connections have joined: the put's chunk then waits for
    // chunks nobody will send, holding the partial until the wait ends. A wait shorter than the
    // retry's probe allows (2 s) lets the retry resume.
    let server = server_waiting(Duration::from_secs(1));
    let size = 32 << 20;
    let (_src, file) = source(size);
    // The put's own connection is cut once it has carried 4 MiB (its fourth chunk or so): the
    // chunks verified in order before the gap are kept, the rest is sent again.
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
    let (report, events) = send_striped(&proxy, file, 4).await;
    assert_eq!(report.files, 1, "{events:?}");
    assert!(report.retries >= 1);
    let resumed = events
        .iter()
        .filter_map(|e| match e {
            Event::Start { offset, .. } => Some(*offset),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(resumed > 0, "{events:?}");
    // The report counts what the attempt that finished sent.
    assert_eq!(report.transferred, size as u64 - resumed);
    assert_eq!(server.read("big.bin"), content(11, size));
    assert_eq!(server.partial_files(), 0);
}

/// A raw v1 connection: preface exchanged, requests and data frames written by hand.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&wire::preface(wire::VERSION)).await.unwrap();
        let mut buf = BytesMut::new();
        within("preface", async {
            while buf.len() < wire::PREFACE_LEN {
                assert!(s.read_buf(&mut buf).await.unwrap() > 0);
            }
        })
        .await;
        let _ = buf.split_to(wire::PREFACE_LEN);
        Raw { s, buf }
    }

    async fn request(&mut self, req: &Request) {
        let mut out = BytesMut::new();
        wire::encode_request(req, &mut out);
        self.s.write_all(&out).await.unwrap();
    }

    async fn chunk(&mut self, data: &[u8], index: u64) {
        let mut out = BytesMut::new();
        wire::encode_data_header(&chunk_cv(index, data), data.len(), &mut out);
        out.extend_from_slice(data);
        self.s.write_all(&out).await.unwrap();
    }

    /// The next reply, or `None` once the server closed the connection.
    async fn reply(&mut self) -> Option<Reply> {
        within("reply", async {
            loop {
                if let Some(Frame::Reply(r)) = wire::decode_frame(&mut self.buf).unwrap() {
                    return Some(r);
                }
                if self.s.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
    }
}

fn put(id: u64, size: u64, key: &str, streams: u32) -> Request {
    Request::Put {
        id,
        path: "s.bin".into(),
        size,
        from: 0,
        replaces: None,
        reuse: None,
        mtime: None,
        stripe: Some(Stripe {
            key: key.into(),
            streams,
        }),
    }
}

const KEY: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_that_do_not_fit_are_refused_and_close_their_connection() {
    let server = server_waiting(Duration::from_secs(2));
    let mut main = Raw::open(server.addr).await;
    main.request(&put(2, 8 * CHUNK, KEY, 2)).await;
    // Stream 1 joins once; a second connection for it is refused.
    let mut one = Raw::open(server.addr).await;
    one.request(&Request::Join {
        id: 2,
        key: KEY.into(),
        stream: 1,
    })
    .await;
    let mut again = Raw::open(server.addr).await;
    again
        .request(&Request::Join {
            id: 2,
            key: KEY.into(),
            stream: 1,
        })
        .await;
    // Whichever the server took second is refused; the other has the stream and waits for data.
    let reply = tokio::select! {
        r = one.reply() => r,
        r = again.reply() => r,
    };
    assert!(reply.unwrap().message.unwrap().contains("joined already"));
    // Joins that do not fit; the unknown key last: it waits as long as the stripe waits for its
    // joins, after which this stripe has failed.
    for (key, stream, why) in [
        (KEY, 0, "not one of this stripe's"),
        (KEY, 2, "not one of this stripe's"),
        ("ffffffffffffffffffffffffffffffff", 1, "no striped upload"),
    ] {
        let mut join = Raw::open(server.addr).await;
        join.request(&Request::Join {
            id: 2,
            key: key.into(),
            stream,
        })
        .await;
        let reply = join.reply().await.unwrap();
        assert_eq!(reply.status, Status::BadRequest, "{reply:?}");
        assert!(reply.message.unwrap().contains(why));
        assert!(join.reply().await.is_none(), "the connection closes");
    }
    // A key that is not 32 hex digits, and too many streams, are refused with the put.
    let mut bad = Raw::open(server.addr).await;
    bad.request(&put(2, 8 * CHUNK, "short", 2)).await;
    let digest = hex(&[0; 32]);
    bad.request(&Request::End { id: 2, digest }).await;
    bad.request(&put(3, 8 * CHUNK, KEY, wire::MAX_STREAMS + 1))
        .await;
    for id in [2, 3] {
        let reply = bad.reply().await.unwrap();
        assert_eq!((reply.id, reply.status), (id, Status::BadRequest));
    }
    drop(one);
    drop(main);
    assert!(server.published().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_whose_join_goes_away_fails_and_keeps_the_chunks_verified_in_order() {
    let server = server_waiting(Duration::from_secs(3));
    let size = 8 * CHUNK;
    let data = content(5, size as usize);
    let chunk = |i: u64| &data[(i * CHUNK) as usize..((i + 1) * CHUNK) as usize];
    let mut main = Raw::open(server.addr).await;
    main.request(&put(2, size, KEY, 2)).await;
    let mut join = Raw::open(server.addr).await;
    join.request(&Request::Join {
        id: 2,
        key: KEY.into(),
        stream: 1,
    })
    .await;
    // Chunks 0 to 3 arrive (0 and 2 on the put's connection), then the join goes away before
    // its chunk 5. Its chunk 3 is handed over before its end is read: the join's connection reads
    // nothing while its chunk waits for chunk 2.
    main.chunk(chunk(0), 0).await;
    join.chunk(chunk(1), 1).await;
    join.chunk(chunk(3), 3).await;
    main.chunk(chunk(2), 2).await;
    drop(join);
    // The put is answered at once with the failure and what is kept: chunks 0 to 3.
    let reply = main.reply().await.unwrap();
    assert_eq!(
        (reply.id, reply.status),
        (2, Status::BadRequest),
        "{reply:?}"
    );
    assert!(reply.message.unwrap().contains("stream 1 ended"));
    assert_eq!(reply.offset, Some(4 * CHUNK));
    // The rest of the put's frames are skipped up to its end; the connection still serves.
    main.chunk(chunk(6), 6).await;
    let digest = hex(blake3::hash(&data).as_bytes());
    main.request(&Request::End { id: 2, digest }).await;
    main.request(&Request::Probe {
        id: 3,
        path: "s.bin".into(),
        size,
    })
    .await;
    let probe = main.reply().await.unwrap();
    assert_eq!((probe.id, probe.offset), (3, Some(4 * CHUNK)), "{probe:?}");
    assert!(server.published().is_empty());
    assert_eq!(chunk_count(size), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_never_comes_fails_the_put_within_the_join_wait() {
    let server = server_waiting(Duration::from_secs(2));
    let size = 8 * CHUNK;
    let data = content(6, size as usize);
    let mut main = Raw::open(server.addr).await;
    main.request(&put(2, size, KEY, 2)).await;
    main.chunk(&data[..CHUNK as usize], 0).await;
    // Stream 1 never joins: the put fails when the join wait runs out, with chunk 0 kept, and
    // its partial is free at once for a retry that resumes (the next test waits on a turn).
    refused_keeping_one_chunk(&mut main, "stream 1 did not join").await;
    drop(main);
    let mut again = Raw::open(server.addr).await;
    again
        .request(&Request::Probe {
            id: 3,
            path: "s.bin".into(),
            size,
        })
        .await;
    let reply = again.reply().await.unwrap();
    assert_eq!(reply.offset, Some(CHUNK), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_never_comes_fails_the_put_within_the_turn_wait() {
    let server = server_waiting(Duration::from_secs(2));
    let size = 8 * CHUNK;
    let data = content(6, size as usize);
    let mut main = Raw::open(server.addr).await;
    main.request(&put(2, size, KEY, 2)).await;
    let mut lane = Raw::open(server.addr).await;
    lane.request(&Request::Join {
        id: 1,
        key: KEY.into(),
        stream: 1,
    })
    .await;
    main.chunk(&data[..CHUNK as usize], 0).await;
    main.chunk(&data[2 * CHUNK as usize..3 * CHUNK as usize], 2)
        .await;
    // Chunk 2 waits for chunk 1, which the joined stream never sends.
    refused_keeping_one_chunk(&mut main, "waited").await;
}

/// Put 2 is refused with a message saying `why`, and chunk 0 is kept for a resume.
async fn refused_keeping_one_chunk(main: &mut Raw, why: &str) {
    let reply = main.reply().await.unwrap();
    assert_eq!(
        (reply.id, reply.status),
        (2, Status::BadRequest),
        "{reply:?}"
    );
    let message = reply.message.unwrap();
    assert!(message.contains(why), "{message}");
    assert_eq!(reply.offset, Some(CHUNK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_striped_and_refuses_a_stream_count_out_of_range() {
    let server = TestServer::start().await;
    let size = 20 << 20;
    let (_src, file) = source(size);
    let out = barge()
        .args(["-q", "send", "--streams", "4", "--to"])
        .arg(server.addr.to_string())
        .arg(&file)
        .output()
        .unwrap();
    succeeded(&out);
    assert_eq!(server.read("big.bin"), content(11, size));
    for n in ["0", "17"] {
        let out = barge()
            .args(["send", "--streams", n, "--to"])
            .arg(server.addr.to_string())
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--streams {n}");
    }
}
