//! A server on a network: tokens and rights, the brake on guessing, TLS (pinned, trusted on first
//! use, CA-signed) against a proxy in the middle, slow-loris and per-address limits, quota and
//! bandwidth limits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use barge::auth::{FailureBrake, Tokens};
use barge::client::v1::{self, Options, Report, Tcp, TransferError};
use barge::server::ServerConfig;
use barge::service::files::FileService;
use barge::store::{LocalConfig, LocalStore, Quota};
use barge::throttle::Bucket;
use barge::tls::{Fingerprint, Trust};
use barge_proto::wire::Status;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::proxy::{Dir, Fault, Proxy};
use crate::support::*;

const TOKEN_ALL: &str = "all-rights-token-0123456789";
const TOKEN_UPLOAD: &str = "upload-only-token-0123456789";
const TOKEN_ALICE: &str = "alice-token-0123456789abcdef";
const TOKEN_DOWNLOAD: &str = "download-only-token-01234567";

fn tokens() -> Tokens {
    Tokens::parse(&format!(
        "{TOKEN_ALL} all\n{TOKEN_UPLOAD} upload\n{TOKEN_ALICE} all alice\n{TOKEN_DOWNLOAD} download\n"
    ))
    .unwrap()
}

fn opts(token: Option<&str>) -> Options {
    Options {
        connect_timeout: WAIT,
        io_timeout: WAIT,
        retries: 1,
        backoff: Duration::from_millis(20),
        token: token.map(str::to_owned),
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

/// A server on 127.0.0.1:0 whose service and framework policy the test chooses.
fn server(
    service: impl FnOnce(FileService) -> FileService,
    storage: impl FnOnce(LocalConfig) -> LocalConfig,
    config: ServerConfig,
) -> TestServer {
    server_at("127.0.0.1:0", service, storage, config)
}

fn server_at(
    addr: &str,
    service: impl FnOnce(FileService) -> FileService,
    storage: impl FnOnce(LocalConfig) -> LocalConfig,
    config: ServerConfig,
) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStore::open(storage(LocalConfig {
        fsync: false,
        ..LocalConfig::new(dir.path())
    }))
    .unwrap();
    TestServer::start_service(
        service(FileService::local(storage, Default::default())),
        config,
        addr,
        dir,
    )
}

fn with_tokens(s: FileService) -> FileService {
    s.with_tokens(tokens(), FailureBrake::default()).unwrap()
}

fn tcp(addr: impl ToString) -> Tcp {
    Tcp::new(addr.to_string(), WAIT)
}

/// A file of `len` bytes in a fresh folder.
fn source(name: &str, data: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, data).unwrap();
    (dir, path)
}

async fn send(dial: &Tcp, path: &Path, token: Option<&str>) -> Result<Report, TransferError> {
    within(
        "send",
        v1::send(dial, &[path.to_owned()], &opts(token), &mut ignore),
    )
    .await
}

fn ignore(_: v1::Event) {}

fn refused_with(result: Result<Report, TransferError>, status: Status) -> String {
    match result {
        Err(TransferError::Refused { status: s, message }) if s == status => message,
        other => panic!("expected a refusal with {status:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_refused_and_a_right_one_works() {
    let mut server = server(with_tokens, |c| c, ServerConfig::default());
    let (_src, file) = source("report.pdf", &content(1, 5000));
    let dial = tcp(server.addr);

    let message = refused_with(send(&dial, &file, None).await, Status::Unauthorized);
    assert!(message.contains("token"), "{message}");
    assert!(
        server
            .next_end()
            .await
            .unwrap_err()
            .contains("without a token")
    );

    let message = refused_with(
        send(&dial, &file, Some("not-the-token-0123456789")).await,
        Status::Unauthorized,
    );
    assert!(message.contains("wrong token"), "{message}");
    assert!(
        server
            .next_end()
            .await
            .unwrap_err()
            .contains("authentication")
    );
    assert_eq!(
        server.published(),
        ["alice"],
        "only the token's root folder"
    );

    let report = send(&dial, &file, Some(TOKEN_ALL)).await.unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(server.read("report.pdf"), content(1, 5000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_only_token_gets_files_by_name_but_cannot_list_folders() {
    // Regression (D10): `get` lists first, and listing needed the `list` right.
    let server = server(with_tokens, |c| c, ServerConfig::default());
    let dial = tcp(server.addr);
    let (_src, file) = source("h.txt", b"hi");
    assert_eq!(
        send(&dial, &file, Some(TOKEN_UPLOAD)).await.unwrap().files,
        1
    );
    std::fs::create_dir(server.dir.path().join("folder")).unwrap();
    std::fs::write(server.dir.path().join("folder/in.txt"), b"in").unwrap();
    let out = tempfile::tempdir().unwrap();
    let get = |names: &[&str]| {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let out = out.path().to_owned();
        let dial = dial.clone();
        async move {
            v1::get(
                &dial,
                &names,
                &out,
                &opts(Some(TOKEN_DOWNLOAD)),
                &mut |_| {},
            )
            .await
            .unwrap()
        }
    };
    let report = get(&["h.txt"]).await;
    assert_eq!((report.files, report.failed.len()), (1, 0));
    assert_eq!(std::fs::read(out.path().join("h.txt")).unwrap(), b"hi");
    let report = get(&["folder/in.txt"]).await;
    assert_eq!(report.files, 1);
    // Folders need the `list` right.
    let report = get(&["folder"]).await;
    assert_eq!(report.failed[0].1, Status::Forbidden);
    let listed = v1::list(&dial, "", true, &opts(Some(TOKEN_DOWNLOAD)))
        .await
        .unwrap();
    assert!(matches!(listed, Err((Status::Forbidden, _))), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_auth_replaces_the_first_tokens_root_and_rights() {
    use barge_proto::wire::{self, Frame, Request};
    use bytes::BytesMut;
    use tokio::io::AsyncReadExt;
    let server = server(with_tokens, |c| c, ServerConfig::default());
    std::fs::write(server.dir.path().join("top.txt"), b"top").unwrap();
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut out = BytesMut::new();
    out.extend_from_slice(&wire::preface(wire::VERSION));
    for (id, token) in [(1, TOKEN_ALICE), (2, TOKEN_ALL)] {
        let token = token.to_owned();
        wire::encode_request(&Request::Auth { id, token }, &mut out);
    }
    let (path, recursive) = (String::new(), false);
    wire::encode_request(
        &Request::List {
            id: 3,
            path,
            recursive,
        },
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    while buf.len() < wire::PREFACE_LEN {
        assert!(within("the preface", s.read_buf(&mut buf)).await.unwrap() > 0);
    }
    let _ = buf.split_to(wire::PREFACE_LEN);
    let mut replies = Vec::new();
    while replies.len() < 3 {
        if let Some(Frame::Reply(r)) = wire::decode_frame(&mut buf).unwrap() {
            replies.push(r);
            continue;
        }
        assert!(within("a reply", s.read_buf(&mut buf)).await.unwrap() > 0);
    }
    let names: Vec<String> = replies[2]
        .entries
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(names.contains(&"top.txt".to_owned()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_and_root_folders_follow_the_token() {
    let server = server(with_tokens, |c| c, ServerConfig::default());
    let dial = tcp(server.addr);
    let (_src, file) = source("a.txt", b"from the uploader");
    // Upload-only: may send, may not list or download.
    assert_eq!(
        send(&dial, &file, Some(TOKEN_UPLOAD)).await.unwrap().files,
        1
    );
    let listed = v1::list(&dial, "", false, &opts(Some(TOKEN_UPLOAD)))
        .await
        .unwrap();
    assert!(matches!(listed, Err((Status::Forbidden, _))), "{listed:?}");
    let out = tempfile::tempdir().unwrap();
    let report = v1::get(
        &dial,
        &["a.txt".to_owned()],
        out.path(),
        &opts(Some(TOKEN_UPLOAD)),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].1, Status::Forbidden);
    assert!(!out.path().join("a.txt").exists());

    // Alice is confined to alice/: her upload lands there and she sees only her folder.
    let (_src2, hers) = source("b.txt", b"alice's");
    assert_eq!(
        send(&dial, &hers, Some(TOKEN_ALICE)).await.unwrap().files,
        1
    );
    assert_eq!(
        std::fs::read(server.dir.path().join("alice/b.txt")).unwrap(),
        b"alice's"
    );
    assert!(!server.dir.path().join("b.txt").exists());
    let names = |entries: Vec<barge_proto::wire::Entry>| {
        entries.into_iter().map(|e| e.path).collect::<Vec<_>>()
    };
    let alice_sees = v1::list(&dial, "", false, &opts(Some(TOKEN_ALICE)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(alice_sees), ["b.txt"]);
    // She cannot climb out.
    let report = v1::get(
        &dial,
        &["../a.txt".to_owned()],
        out.path(),
        &opts(Some(TOKEN_ALICE)),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.files, 0);
    assert_eq!(report.failed.len(), 1);
    let admin_sees = v1::list(&dial, "", false, &opts(Some(TOKEN_ALL)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(admin_sees), ["a.txt", "alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_lock_the_address_out() {
    let server = server(
        |s| {
            s.with_tokens(tokens(), FailureBrake::new(3, Duration::from_secs(600)))
                .unwrap()
        },
        |c| c,
        ServerConfig::default(),
    );
    let dial = tcp(server.addr);
    let (_src, file) = source("x", b"x");
    for i in 0..3 {
        let guess = format!("guess-number-{i}-0123456789");
        refused_with(send(&dial, &file, Some(&guess)).await, Status::Unauthorized);
    }
    // Locked out: even the right token is not checked now.
    let message = refused_with(
        send(&dial, &file, Some(TOKEN_ALL)).await,
        Status::RateLimited,
    );
    assert!(message.contains("too many failed attempts"), "{message}");
    assert_eq!(
        server.published(),
        ["alice"],
        "only the token's root folder"
    );
}

/// A TLS-only server with a new self-signed identity.
fn tls_server(addr: &str) -> (TestServer, Fingerprint) {
    let identity = barge::tls::self_signed().unwrap();
    let fingerprint = identity.fingerprint;
    (tls_server_with(identity, addr), fingerprint)
}

fn tls_server_with(identity: barge::tls::ServerIdentity, addr: &str) -> TestServer {
    let config = ServerConfig {
        tls: Some(identity.config),
        ..ServerConfig::default()
    };
    server_at(addr, |s| s.with_tls_required(true), |c| c, config)
}

fn tls_dial(addr: impl ToString, trust: Trust) -> Tcp {
    let addr = addr.to_string();
    let mut dial = Tcp::new(addr.clone(), WAIT);
    dial.tls = Some(barge::tls::client_config(&trust, &addr).unwrap());
    dial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_fingerprint_connects_and_another_is_refused() {
    let (server, fingerprint) = tls_server("127.0.0.1:0");
    let (_src, file) = source("secret.bin", &content(2, 3_000_000));
    let good = tls_dial(server.addr, Trust::Pinned(fingerprint));
    assert_eq!(send(&good, &file, None).await.unwrap().files, 1);
    assert_eq!(server.read("secret.bin"), content(2, 3_000_000));

    let other = Fingerprint::of(b"some other certificate");
    let bad = tls_dial(server.addr, Trust::Pinned(other));
    match send(&bad, &file, None).await {
        Err(TransferError::Connect { source, .. }) => {
            assert!(source.to_string().contains("not the pinned"), "{source}")
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    // A plain-text client is told that TLS is required.
    let message = refused_with(
        send(&tcp(server.addr), &file, None).await,
        Status::Forbidden,
    );
    assert!(message.contains("TLS"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_records_the_certificate_and_refuses_a_change() {
    let known = tempfile::tempdir().unwrap();
    let trust = Trust::KnownHosts {
        file: known.path().join("known_hosts"),
    };
    let (_src, file) = source("f", b"data");
    let (mut first, fingerprint) = tls_server("127.0.0.1:0");
    let addr = first.addr;
    assert_eq!(
        send(&tls_dial(addr, trust.clone()), &file, None)
            .await
            .unwrap()
            .files,
        1
    );
    let recorded = std::fs::read_to_string(known.path().join("known_hosts")).unwrap();
    assert_eq!(recorded.trim(), format!("{addr} {fingerprint}"));
    // Same server again: still trusted.
    assert!(
        send(&tls_dial(addr, trust.clone()), &file, None)
            .await
            .is_ok()
    );
    first.stop().await;

    // Another certificate on the same address: refused loudly, nothing sent.
    let (second, _) = tls_server(&addr.to_string());
    match send(&tls_dial(addr, trust), &file, None).await {
        Err(TransferError::Connect { source, .. }) => {
            assert!(source.to_string().contains("HAS CHANGED"), "{source}")
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    assert!(second.published().is_empty());
}

/// A CA and a server certificate it signed for 127.0.0.1, as PEM files in `dir`.
fn ca_certs(file: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    barge::tls::certs_from_pem(&std::fs::read(file).unwrap(), "ca").unwrap()
}

fn ca_signed(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_signed_certificate_is_verified() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_signed(pki.path());
    let identity = barge::tls::identity_from_pem(
        &std::fs::read(&cert).unwrap(),
        &std::fs::read(&key).unwrap(),
        "leaf",
    )
    .unwrap();
    let server = tls_server_with(identity, "127.0.0.1:0");
    let (_src, file) = source("signed", b"trusted via the CA");
    assert_eq!(
        send(
            &tls_dial(server.addr, Trust::Ca(ca_certs(&ca))),
            &file,
            None
        )
        .await
        .unwrap()
        .files,
        1
    );
    // Another CA does not vouch for it.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = ca_signed(other.path());
    assert!(matches!(
        send(
            &tls_dial(server.addr, Trust::Ca(ca_certs(&other_ca))),
            &file,
            None
        )
        .await,
        Err(TransferError::Connect { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_in_the_middle_sees_no_plaintext_and_cannot_alter_data() {
    let (server, fingerprint) = tls_server("127.0.0.1:0");
    let marker = b"PLAINTEXT-MARKER-".repeat(60_000); // ~1 MiB of a recognisable pattern
    let (_src, file) = source("confidential-name.txt", &marker);
    let proxy = Proxy::start(server.addr, Fault::None, None).await;
    let dial = tls_dial(proxy.addr, Trust::Pinned(fingerprint));
    assert_eq!(send(&dial, &file, None).await.unwrap().files, 1);
    assert_eq!(server.read("confidential-name.txt"), marker);
    let seen = proxy.captured();
    assert!(seen.len() > marker.len(), "the proxy carried the file");
    let contains = |needle: &[u8]| seen.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"PLAINTEXT-MARKER"));
    assert!(!contains(b"confidential-name"));
    // Regression (D14): "BRG" anywhere in ~1 MB of ciphertext occurs by chance about once in
    // 15 runs; what matters is where the plaintext preface would be: the first bytes each way.
    for c in proxy.counts() {
        for head in [c.up_head, c.down_head] {
            assert_eq!(head[0], 0x16, "a TLS handshake record, not {head:?}");
            assert_ne!(&head[..3], b"BRG", "barge's preface travels encrypted too");
        }
    }

    // Flipping bits in transit breaks the TLS record authentication: the transfer fails and
    // nothing new is published.
    let tamper = Proxy::start(
        server.addr,
        Fault::FlipEvery {
            dir: Dir::Up,
            period: 50_000,
        },
        None,
    )
    .await;
    let (_src2, other) = source("tampered.txt", &marker);
    let dial = tls_dial(tamper.addr, Trust::Pinned(fingerprint));
    assert!(send(&dial, &other, None).await.is_err());
    assert_eq!(server.published(), ["confidential-name.txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_client_is_cut_off_while_others_proceed() {
    let mut server = server(
        |s| s,
        |c| c,
        ServerConfig {
            header_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        },
    );
    let addr = server.addr;
    // One byte of a lesson header every 100 ms: never idle, never finished.
    let loris = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let header = lesson_upload("never.bin", b"x");
        for byte in header.iter().cycle().take(200) {
            if s.write_all(&[*byte]).await.is_err() {
                return true; // cut off
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    let (_src, file) = source("meanwhile.bin", &content(3, 200_000));
    assert_eq!(send(&tcp(addr), &file, None).await.unwrap().files, 1);
    let mut ends = [server.next_end().await, server.next_end().await];
    ends.sort();
    assert_eq!(ends[0], Ok(()));
    let reason = ends[1].clone().unwrap_err();
    assert!(reason.contains("header not complete"), "{reason}");
    assert!(within("the slow client to notice", loris).await.unwrap());
    assert_eq!(server.published(), ["meanwhile.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_a_request_do_not_lock_others_out() {
    // Regression (D6): connections that sent nothing held their slots for the idle timeout
    // (300 s), so 520 of them locked every other client out.
    let mut server = server(
        |s| s,
        |c| c,
        ServerConfig {
            // Slots to spare: the first-request deadline alone closes the silent ones (under
            // pressure they make room sooner: the next test).
            max_connections: 64,
            header_timeout: Duration::from_millis(800),
            ..ServerConfig::default()
        },
    );
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let started = Instant::now();
    let (_src, file) = source("through.bin", &content(4, 100_000));
    assert_eq!(send(&tcp(server.addr), &file, None).await.unwrap().files, 1);
    // Served at once, though 20 connections sit silent.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    for mut s in idle {
        within("a silent connection to be closed", drain(&mut s)).await;
    }
    assert_eq!(server.published(), ["through.bin"]);
    let mut reasons = Vec::new();
    for _ in 0..21 {
        if let Err(e) = server.next_end().await {
            reasons.push(e);
        }
    }
    assert_eq!(reasons.len(), 20);
    assert!(
        reasons.iter().all(|r| r.contains("header not complete")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_make_room_when_every_slot_is_taken() {
    // Regression (D6): with 1,000 silent connections a client waited behind each round of them
    // for the whole header timeout. Now silent ones give their slot up under pressure.
    let server = server(
        |s| s,
        |c| c,
        ServerConfig {
            max_connections: 16,
            header_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        },
    );
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let started = Instant::now();
    let (_src, file) = source("room.bin", &content(6, 50_000));
    assert_eq!(send(&tcp(server.addr), &file, None).await.unwrap().files, 1);
    // About EVICT_SILENT_AFTER per round of 16, not the 60 s header timeout.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.published(), ["room.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited() {
    let mut server = server(
        |s| s,
        |c| c,
        ServerConfig {
            max_connections_per_ip: Some(2),
            // The first connection stays silent for the whole test, however slow the machine.
            header_timeout: Duration::from_secs(300),
            ..ServerConfig::default()
        },
    );
    let a = TcpStream::connect(server.addr).await.unwrap();
    let mut b = TcpStream::connect(server.addr).await.unwrap();
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    // The third is closed at once.
    drain(&mut c).await;
    // The first two are served: one finishes an upload.
    b.write_all(&lesson_upload("b.txt", b"bee")).await.unwrap();
    b.shutdown().await.unwrap();
    drain(&mut b).await;
    assert_eq!(server.next_end().await, Ok(()));
    // b's slot is free again.
    send_raw(server.addr, &lesson_upload("d.txt", b"dee")).await;
    assert_eq!(server.next_end().await, Ok(()));
    assert_eq!(server.published(), ["b.txt", "d.txt"]);
    drop(a);
    assert_eq!(server.next_end().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_holds_for_both_formats() {
    let quota = Quota::new(100_000, 0);
    let q = quota.clone();
    let mut server = server(
        |s| s,
        move |c| LocalConfig {
            quota: Some(q),
            ..c
        },
        ServerConfig::default(),
    );
    let (_src, first) = source("first.bin", &content(4, 60_000));
    assert_eq!(
        send(&tcp(server.addr), &first, None).await.unwrap().files,
        1
    );
    assert_eq!(quota.used(), 60_000);
    let (_src2, second) = source("second.bin", &content(5, 60_000));
    let report = send(&tcp(server.addr), &second, None).await.unwrap();
    assert_eq!(report.files, 0);
    assert_eq!(report.failed[0].1, Status::QuotaExceeded);
    send_raw(
        server.addr,
        &lesson_upload("third.bin", &content(6, 60_000)),
    )
    .await;
    let mut reasons = Vec::new();
    for _ in 0..3 {
        if let Err(r) = server.next_end().await {
            reasons.push(r);
        }
    }
    assert!(reasons.iter().any(|r| r.contains("quota")), "{reasons:?}");
    assert_eq!(server.published(), ["first.bin"]);
    assert_eq!(
        quota.used(),
        60_000,
        "refused uploads give their reservation back"
    );
    // What still fits is accepted.
    let (_src3, small) = source("small.bin", &content(7, 40_000));
    assert_eq!(
        send(&tcp(server.addr), &small, None).await.unwrap().files,
        1
    );
    assert_eq!(quota.used(), 100_000);
}

/// Seconds that concurrent uploads of `size` bytes, one per dialer (one or two), take together.
/// (They run as futures of this task: `send`'s future is not `Send`-general enough to spawn.)
async fn timed_uploads(dials: Vec<Tcp>, size: usize) -> f64 {
    let sources: Vec<_> = (0..dials.len())
        .map(|i| source(&format!("bw{i}.bin"), &content(i as u64, size)))
        .collect();
    let one = |i: usize| send(&dials[i], &sources[i].1, None);
    let started = Instant::now();
    let reports = match dials.len() {
        1 => vec![one(0).await],
        2 => {
            let (a, b) = tokio::join!(one(0), one(1));
            vec![a, b]
        }
        n => panic!("{n} dialers"),
    };
    let secs = started.elapsed().as_secs_f64();
    for r in reports {
        assert_eq!(r.unwrap().files, 1);
    }
    secs
}

fn assert_rate(bytes: usize, secs: f64, rate: u64) {
    let measured = bytes as f64 / secs;
    let error = (measured - rate as f64).abs() / rate as f64;
    eprintln!(
        "bandwidth: {measured:.0} B/s against a limit of {rate} B/s ({:+.1}%)",
        (measured / rate as f64 - 1.0) * 100.0
    );
    assert!(
        error <= 0.10,
        "{bytes} bytes in {secs:.3} s = {measured:.0} B/s, limit {rate} B/s ({:.1}% off)",
        error * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_hold_overall_per_connection_and_on_the_client() {
    const RATE: u64 = 2 << 20;
    const SIZE: usize = 3 << 20;
    // Server, all connections together: two uploads share the rate.
    let overall = server(
        |s| s,
        |c| c,
        ServerConfig {
            bwlimit: Some(RATE),
            ..ServerConfig::default()
        },
    );
    let secs = timed_uploads(vec![tcp(overall.addr), tcp(overall.addr)], SIZE).await;
    assert_rate(2 * SIZE, secs, RATE);
    // Server, per connection: two uploads each get the rate.
    let per_conn = server(
        |s| s,
        |c| c,
        ServerConfig {
            bwlimit_per_connection: Some(RATE),
            ..ServerConfig::default()
        },
    );
    let secs = timed_uploads(vec![tcp(per_conn.addr), tcp(per_conn.addr)], SIZE).await;
    assert_rate(SIZE, secs, RATE);
    // Client: its own limit, against an unlimited server.
    let open = server(|s| s, |c| c, ServerConfig::default());
    let mut dial = tcp(open.addr);
    dial.bwlimit = Some(Bucket::new(RATE));
    let secs = timed_uploads(vec![dial], SIZE).await;
    assert_rate(SIZE, secs, RATE);
}

/// The binary as an operator runs it on a network.
mod cli {
    use std::io::{Read, Write};
    use std::path::Path;
    use std::process::{Command, Output, Stdio};

    use barge_proto::wire::{self, Entry, Reply};

    use super::TOKEN_ALL;
    use crate::support::*;

    struct Served {
        guard: ChildGuard,
        addr: String,
        line: String,
        log: tempfile::NamedTempFile,
    }

    impl Served {
        /// Stops the server (SIGTERM) and returns what it logged.
        fn log(mut self) -> String {
            let pid = self.guard.0.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            self.guard.0.wait().unwrap();
            std::fs::read_to_string(self.log.path()).unwrap()
        }
    }

    fn serve(dir: &Path, extra: &[&str]) -> Served {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = barge();
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--no-fsync", "--dir"])
            .arg(dir)
            .args(extra)
            .stderr(log.reopen().unwrap());
        let (guard, addr, line) = spawn_announced_line(cmd);
        Served {
            guard,
            addr: addr.to_string(),
            line,
            log,
        }
    }

    fn run(cmd: &mut Command) -> Output {
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    /// The client, unaffected by the environment of whoever runs the tests.
    fn client() -> Command {
        let mut cmd = barge();
        cmd.env_remove("BARGE_TOKEN")
            .env("BARGE_KNOWN_HOSTS", "/nonexistent/known_hosts");
        cmd
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn tokens_are_required_refusals_are_logged_and_the_lesson_format_is_off() {
        let inbox = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let tokens = src.path().join("tokens");
        std::fs::write(&tokens, format!("{TOKEN_ALL} all\n")).unwrap();
        let file = src.path().join("doc.txt");
        std::fs::write(&file, b"hello").unwrap();
        let server = serve(inbox.path(), &["--token-file", tokens.to_str().unwrap()]);
        let out = run(client().arg("send").arg(&file).args(["--to", &server.addr]));
        assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("requires a token"));
        let out = run(client()
            .arg("send")
            .arg(&file)
            .args(["--to", &server.addr])
            .env("BARGE_TOKEN", "wrong-token-0123456789"));
        assert_eq!(out.status.code(), Some(4));
        assert!(
            text(&out.stderr).contains("wrong token"),
            "{}",
            text(&out.stderr)
        );
        let token_file = src.path().join("mytoken");
        std::fs::write(&token_file, format!("{TOKEN_ALL}\n")).unwrap();
        let out = run(client()
            .arg("send")
            .arg(&file)
            .args(["--to", &server.addr, "--token-file"])
            .arg(&token_file));
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The lesson's format carries no token: refused here.
        let lesson = src.path().join("lesson.txt");
        std::fs::write(&lesson, b"no auth").unwrap();
        let _ = run(client()
            .args(["send", "--legacy"])
            .arg(&lesson)
            .args(["--to", &server.addr]));
        let log = server.log();
        assert!(log.contains("authentication failed"), "{log}");
        assert!(
            log.contains("lesson's upload format is turned off"),
            "{log}"
        );
        assert_eq!(published(inbox.path()), ["doc.txt"]);
    }

    #[test]
    fn legacy_turns_the_lesson_format_back_on_and_says_so() {
        let inbox = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let tokens = src.path().join("tokens");
        std::fs::write(&tokens, format!("{TOKEN_ALL} all\n")).unwrap();
        let server = serve(
            inbox.path(),
            &["--token-file", tokens.to_str().unwrap(), "--legacy"],
        );
        let lesson = src.path().join("lesson.txt");
        std::fs::write(&lesson, b"no auth").unwrap();
        let out = run(client()
            .args(["send", "--legacy"])
            .arg(&lesson)
            .args(["--to", &server.addr]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        wait_until_published(inbox.path(), "lesson.txt");
        let log = server.log();
        assert!(log.contains("--legacy"), "{log}");
    }

    fn wait_until_published(dir: &Path, name: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        while !published(dir).iter().any(|n| n == name) {
            assert!(std::time::Instant::now() < deadline, "{name} never arrived");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn serve_tls_prints_its_fingerprint_and_clients_pin_it() {
        let inbox = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("over-tls.bin");
        std::fs::write(&file, content(8, 100_000)).unwrap();
        let server = serve(inbox.path(), &["--tls"]);
        let fingerprint = server
            .line
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .unwrap_or_else(|| panic!("no fingerprint in {:?}", server.line))
            .to_owned();
        let out = run(client().arg("send").arg(&file).args([
            "--to",
            &server.addr,
            "--fingerprint",
            &fingerprint,
        ]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let wrong = format!("SHA256:{}", "0".repeat(64));
        let out = run(client()
            .arg("ls")
            .arg(&server.addr)
            .args(["--fingerprint", &wrong]));
        assert_eq!(out.status.code(), Some(3));
        assert!(
            text(&out.stderr).contains("not the pinned"),
            "{}",
            text(&out.stderr)
        );
        // Trust on first use with a known-hosts file.
        let known = src.path().join("kh");
        let out = run(client()
            .arg("ls")
            .arg(&server.addr)
            .arg("--tls")
            .arg("--known-hosts")
            .arg(&known));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("over-tls.bin"));
        assert!(
            std::fs::read_to_string(&known)
                .unwrap()
                .contains(&fingerprint)
        );
        let _ = server.log();
    }

    #[test]
    fn names_and_messages_from_a_server_cannot_drive_the_terminal() {
        // A hostile server answering a listing with escape sequences in a name and a digest.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut preface = [0u8; 8];
            s.read_exact(&mut preface).unwrap();
            s.write_all(&wire::preface(wire::VERSION)).unwrap();
            let mut head = [0u8; 5];
            s.read_exact(&mut head).unwrap();
            let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
            let mut req = vec![0u8; len];
            s.read_exact(&mut req).unwrap();
            let id = serde_json::from_slice::<serde_json::Value>(&req).unwrap()["id"]
                .as_u64()
                .unwrap();
            let mut out = bytes::BytesMut::new();
            let reply = Reply {
                entries: Some(vec![Entry {
                    path: "evil\u{1b}]0;owned\u{7}\u{1b}[2J.txt".into(),
                    dir: false,
                    size: 1,
                    mtime: 0,
                    digest: Some("\u{1b}[31mred".into()),
                }]),
                more: Some(false),
                ..Reply::ok(id)
            };
            wire::encode_reply(&reply, &mut out);
            s.write_all(&out).unwrap();
        });
        let out = run(client().arg("ls").arg(&addr));
        fake.join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
            "{stdout:?}"
        );
        assert!(stdout.contains("evil\\u{1b}]0;owned"), "{stdout}");
    }
}
