//! The upload handler and the client driven in memory over `tokio::io::duplex`: no sockets, tiny
//! pipe buffers that force every read to be partial, and a paused clock for timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use barge::client::lesson::{Event, Outgoing, send_files};
use barge::net::IdleTimeout;
use barge::server::{Connection, Handler};
use barge::service::files::{FileError, FileService};
use barge::store::{LocalConfig, LocalStore};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use crate::support::*;

fn connection(stream: DuplexStream, timeout: Duration) -> Connection<DuplexStream> {
    Connection {
        stream: IdleTimeout::new(stream, timeout),
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        shutdown: CancellationToken::new(),
        secure: false,
        header_timeout: timeout,
        first_request_by: None,
        address_slot: barge::server::AddressSlot::none(),
        pressure: None,
        opened: tokio::time::Instant::now(),
    }
}

fn service(dir: &std::path::Path) -> FileService {
    FileService::local(
        LocalStore::open(LocalConfig {
            fsync: false,
            ..LocalConfig::new(dir)
        })
        .expect("storage"),
        Default::default(),
    )
}

#[tokio::test]
async fn client_and_handler_round_trip_through_a_small_pipe() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let names = ["one.bin", "two.bin", "zero"];
    let sizes = [300_001, 65_536, 0];
    for (i, (n, size)) in names.iter().zip(sizes).enumerate() {
        std::fs::write(src.path().join(n), content(i as u64, size)).unwrap();
    }
    // A 61-byte pipe: headers and bodies arrive split at arbitrary places.
    let (client_end, server_end) = tokio::io::duplex(61);
    let handler = service(dst.path());
    let server = tokio::spawn(async move {
        handler
            .handle(connection(server_end, Duration::from_secs(5)))
            .await
    });
    let files = names
        .iter()
        .map(|n| Outgoing::open(&src.path().join(n)).unwrap())
        .collect();
    let mut events = Vec::new();
    within(
        "send",
        send_files(client_end, files, |e| {
            if !matches!(e, Event::Progress { .. }) {
                events.push(e)
            }
        }),
    )
    .await
    .unwrap();
    within("handler", server).await.unwrap().unwrap();
    for (i, (n, size)) in names.iter().zip(sizes).enumerate() {
        assert_eq!(
            std::fs::read(dst.path().join(n)).unwrap(),
            content(i as u64, size)
        );
    }
    let starts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Start { name, size } => Some((name.as_str(), *size)),
            _ => None,
        })
        .collect();
    assert_eq!(
        starts,
        [("one.bin", 300_001), ("two.bin", 65_536), ("zero", 0)]
    );
    assert_eq!(events.len(), 6);
}

// Real time, not a paused clock: the handler ends only once the upload's writer thread has
// removed its file, and a paused clock would jump past every deadline while it does.
#[tokio::test]
async fn handler_times_out_a_stalled_body_and_publishes_nothing() {
    let dst = tempfile::tempdir().unwrap();
    let (mut client_end, server_end) = tokio::io::duplex(1024);
    let handler = service(dst.path());
    let server = tokio::spawn(async move {
        handler
            .handle(connection(server_end, Duration::from_millis(300)))
            .await
    });
    let started = tokio::time::Instant::now();
    client_end
        .write_all(&lesson_upload("stalled", &content(1, 100))[..50])
        .await
        .unwrap();
    let result = within("handler", server).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "timed out early"
    );
    assert!(
        matches!(result, Err(FileError::Io(ref e)) if e.kind() == std::io::ErrorKind::TimedOut),
        "{result:?}"
    );
    assert_eq!(published(dst.path()), Vec::<String>::new());
    drop(client_end);
}

#[tokio::test]
async fn handler_stops_between_uploads_on_shutdown() {
    let dst = tempfile::tempdir().unwrap();
    let (mut client_end, server_end) = tokio::io::duplex(1024);
    let handler = service(dst.path());
    let conn = connection(server_end, Duration::from_secs(300));
    let shutdown = conn.shutdown.clone();
    let server = tokio::spawn(async move { handler.handle(conn).await });
    client_end
        .write_all(&lesson_upload("done", b"complete"))
        .await
        .unwrap();
    // The client stays connected; shutdown alone must end the conversation after the upload.
    wait_until("the upload", || dst.path().join("done").exists()).await;
    shutdown.cancel();
    within("handler", server).await.unwrap().unwrap();
    assert_eq!(std::fs::read(dst.path().join("done")).unwrap(), b"complete");
}
