//! The transfer core against the in-memory store: admission, rights and roots, verification
//! (checked and computed), resume, publish, and reading for downloads. No sockets, no disk.

use std::sync::Arc;

use barge_proto::tree::{CHUNK, chunk_cv, hex};
use bytes::Bytes;

use super::*;
use crate::auth::{FailureBrake, Tokens};
use crate::store::MemoryStore;

const ALL: &str = "all-rights-token-0123456789";
const ALICE: &str = "alice-token-0123456789abcdef";
const DOWN: &str = "download-only-token-01234567";

fn body(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29) ^ seed)
        .collect()
}

fn digest(data: &[u8]) -> Cv {
    *blake3::hash(data).as_bytes()
}

fn peer() -> SocketAddr {
    "192.0.2.7:4000".parse().unwrap()
}

/// The `Put` of the tests: all its fields, in order.
fn put(
    path: &str,
    size: u64,
    from: u64,
    mode: Mode,
    resumable: bool,
    replaces: Option<Cv>,
) -> Put<'_> {
    Put {
        from,
        mode,
        resumable,
        replaces,
        ..Put::new(path, size)
    }
}

fn core(policy: Policy) -> (Core, MemoryStore) {
    let store = MemoryStore::default();
    (Core::new(Arc::new(store.clone()), policy), store)
}

/// Sends chunks `range` of `data` as barge v1 does: each chunk's CV first, then its bytes in
/// pieces of `piece` bytes.
async fn send_checked(
    r: &mut Receiver,
    data: &[u8],
    range: std::ops::Range<u64>,
    piece: usize,
) -> Result<(), StoreError> {
    for i in range {
        let start = (i * CHUNK) as usize;
        let chunk = &data[start..(start + CHUNK as usize).min(data.len())];
        r.begin_chunk(chunk_cv(i, chunk), chunk.len() as u64)
            .await?;
        for p in chunk.chunks(piece) {
            r.write(Bytes::copy_from_slice(p)).await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_checked_upload_is_stored_with_the_b3sum_digest() {
    let (core, store) = core(Policy::default());
    let s = core.session(peer());
    let data = body(1, 3 * CHUNK + 17);
    let mut r = s
        .receive(put(
            "a/b.bin",
            data.len() as u64,
            0,
            Mode::Check,
            true,
            None,
        ))
        .await
        .unwrap();
    send_checked(&mut r, &data, 0..4, 100_000).await.unwrap();
    let stored = r.finish(Some(digest(&data))).await.unwrap();
    assert_eq!(stored.digest, Some(digest(&data)));
    assert_eq!(store.contents("a/b.bin").unwrap(), data);
}

#[tokio::test]
async fn computed_cvs_take_any_split_of_the_bytes() {
    // The lesson's format and HTTP send bytes without CVs: the core computes them.
    let (core, store) = core(Policy::default());
    let s = core.session(peer());
    let data = body(2, 2 * CHUNK + 3);
    let mut r = s
        .receive(put(
            "c.bin",
            data.len() as u64,
            0,
            Mode::Compute,
            false,
            None,
        ))
        .await
        .unwrap();
    for p in data.chunks(333_333) {
        r.write(Bytes::copy_from_slice(p)).await.unwrap();
    }
    assert_eq!(r.finish(None).await.unwrap().digest, Some(digest(&data)));
    assert_eq!(store.contents("c.bin").unwrap(), data);
}

#[tokio::test]
async fn a_corrupted_chunk_is_refused_at_its_end_and_the_upload_resumes_after_the_good_ones() {
    let (core, store) = core(Policy::default());
    let s = core.session(peer());
    let data = body(3, 3 * CHUNK);
    let size = data.len() as u64;
    let mut r = s
        .receive(put("r.bin", size, 0, Mode::Check, true, None))
        .await
        .unwrap();
    send_checked(&mut r, &data, 0..1, 1 << 16).await.unwrap();
    // Chunk 1 declared with its true CV but one byte changed in transit.
    let mut bad = data[CHUNK as usize..2 * CHUNK as usize].to_vec();
    r.begin_chunk(chunk_cv(1, &bad), CHUNK).await.unwrap();
    bad[77] ^= 0x40;
    let e = r.write(Bytes::from(bad)).await.unwrap_err();
    assert!(matches!(e, StoreError::Integrity(_)), "{e}");
    assert_eq!(r.verified(), CHUNK);
    r.suspend().await;
    assert_eq!(store.partials(), 1);
    // The client comes back: the probe says what is kept, the upload continues from there.
    let probe = s.probe("r.bin", size).await.unwrap();
    assert_eq!(probe.offset, CHUNK);
    assert_eq!(
        probe.prefix,
        prefix_digest(&[chunk_cv(0, &data[..CHUNK as usize])])
    );
    let mut r = s
        .receive(put("r.bin", size, probe.offset, Mode::Check, true, None))
        .await
        .unwrap();
    send_checked(&mut r, &data, 1..3, 1 << 20).await.unwrap();
    r.finish(Some(digest(&data))).await.unwrap();
    assert_eq!(store.contents("r.bin").unwrap(), data);
    assert_eq!(
        s.probe("r.bin", size).await.unwrap().stored,
        Some(digest(&data))
    );
}

#[tokio::test]
async fn a_wrong_whole_digest_publishes_nothing_and_keeps_nothing() {
    let (core, store) = core(Policy::default());
    let s = core.session(peer());
    let data = body(4, 2 * CHUNK + 1);
    let mut r = s
        .receive(put("w.bin", data.len() as u64, 0, Mode::Check, true, None))
        .await
        .unwrap();
    send_checked(&mut r, &data, 0..3, 1 << 20).await.unwrap();
    let e = r.finish(Some([9; 32])).await.unwrap_err();
    assert!(matches!(e, StoreError::Integrity(_)));
    assert_eq!(store.contents("w.bin"), None);
    assert_eq!(store.partials(), 0);
    assert_eq!(store.used(), 0, "the quota charge is given back");
}

#[tokio::test]
async fn an_early_end_keeps_the_verified_chunks() {
    let (core, store) = core(Policy::default());
    let s = core.session(peer());
    let data = body(5, 3 * CHUNK);
    let mut r = s
        .receive(put("e.bin", data.len() as u64, 0, Mode::Check, true, None))
        .await
        .unwrap();
    send_checked(&mut r, &data, 0..2, 1 << 20).await.unwrap();
    let e = r.finish(Some(digest(&data))).await.unwrap_err();
    assert!(
        matches!(e, StoreError::BadRequest(ref m) if m.contains("2 of 3")),
        "{e}"
    );
    assert_eq!(store.partials(), 1);
    assert_eq!(
        s.probe("e.bin", data.len() as u64).await.unwrap().offset,
        2 * CHUNK
    );
}

#[tokio::test]
async fn admission_refuses_before_the_store_is_asked() {
    let (core, store) = core(Policy {
        max_file_size: Some(10 * CHUNK),
        on_conflict: OnConflict::Fail,
        ..Policy::default()
    });
    let s = core.session(peer());
    let refuse = async |path: &str, size, from| {
        s.receive(put(path, size, from, Mode::Check, true, None))
            .await
            .unwrap_err()
    };
    assert!(matches!(refuse("../x", 1, 0).await, StoreError::Name(_)));
    assert!(matches!(refuse("", 1, 0).await, StoreError::Name(_)));
    assert!(matches!(
        refuse("big", 10 * CHUNK + 1, 0).await,
        StoreError::TooLarge { .. }
    ));
    assert!(matches!(
        refuse("odd", 3 * CHUNK, 5).await,
        StoreError::BadRequest(_)
    ));
    assert!(matches!(
        refuse("past", 3 * CHUNK, 4 * CHUNK).await,
        StoreError::BadRequest(_)
    ));
    s.store_small(
        "taken",
        Bytes::from_static(b"x"),
        Some(chunk_cv(0, b"x")),
        digest(b"x"),
        None,
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        refuse("taken", 2 * CHUNK, 0).await,
        StoreError::Conflict(_)
    ));
    assert_eq!(store.partials(), 0);
    assert_eq!(store.used(), 1);
}

#[tokio::test]
async fn small_files_are_checked_before_they_are_stored() {
    let (core, store) = core(Policy::default());
    let s = core.session(peer());
    let e = s
        .store_small(
            "s",
            Bytes::from_static(b"abc"),
            Some(chunk_cv(0, b"abd")),
            digest(b"abc"),
            None,
            None,
        )
        .await;
    assert!(matches!(e, Err(StoreError::Integrity(_))));
    let e = s
        .store_small(
            "s",
            Bytes::from_static(b"abc"),
            Some(chunk_cv(0, b"abc")),
            digest(b"abd"),
            None,
            None,
        )
        .await;
    assert!(matches!(e, Err(StoreError::Integrity(_))));
    assert_eq!(store.contents("s"), None);
    s.store_small("empty", Bytes::new(), None, digest(b""), None, None)
        .await
        .unwrap();
    assert_eq!(store.contents("empty").unwrap().len(), 0);
}

fn tokens() -> Tokens {
    Tokens::parse(&format!("{ALL} all\n{ALICE} all alice\n{DOWN} download\n")).unwrap()
}

#[tokio::test]
async fn rights_and_roots_follow_the_token() {
    let (core, store) = core(Policy::default());
    let core = core
        .with_tokens(
            tokens(),
            FailureBrake::new(3, std::time::Duration::from_secs(60)),
        )
        .unwrap();
    let mut s = core.session(peer());
    assert_eq!(s.check(Action::Upload), Err(Denied::NoToken));
    assert_eq!(s.authenticate("nope"), Err(Denied::WrongToken));
    s.authenticate(ALICE).unwrap();
    s.check(Action::Upload).unwrap();
    s.store_small(
        "mine",
        Bytes::from_static(b"a"),
        Some(chunk_cv(0, b"a")),
        digest(b"a"),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(store.contents("alice/mine").unwrap(), b"a"[..]);
    // A second token replaces the first entirely: its rights and its (absent) root.
    s.authenticate(DOWN).unwrap();
    assert_eq!(s.check(Action::Upload), Err(Denied::Forbidden("uploading")));
    s.check(Action::Download).unwrap();
    // It may list one file (what `get` asks first) but not a folder.
    assert!(s.list("alice/mine", false).await.unwrap().is_ok());
    assert!(s.list("alice", false).await.is_err());
    // Wrong tokens lock the address out.
    let mut t = core.session(peer());
    for _ in 0..3 {
        let _ = t.authenticate("wrong");
    }
    assert!(matches!(t.authenticate(ALL), Err(Denied::LockedOut { .. })));
}

#[tokio::test]
async fn downloads_are_read_with_each_chunks_cv_and_can_be_conditional() {
    let (core, _store) = core(Policy::default());
    let s = core.session(peer());
    let data = body(6, 2 * CHUNK + 9);
    let mut r = s
        .receive(put(
            "d.bin",
            data.len() as u64,
            0,
            Mode::Compute,
            false,
            None,
        ))
        .await
        .unwrap();
    r.write(Bytes::from(data.clone())).await.unwrap();
    r.finish(None).await.unwrap();
    let mut out = s.send("d.bin", CHUNK, None).await.unwrap();
    assert_eq!(out.meta.digest, digest(&data));
    let mut got = Vec::new();
    while let Some(chunk) = out.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.cv, chunk_cv(chunk.index, &chunk.data));
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(got, data[CHUNK as usize..]);
    let hexd = hex(&digest(&data));
    assert!(
        s.send("d.bin", CHUNK, Some(&hexd.to_uppercase()))
            .await
            .is_ok()
    );
    assert!(matches!(
        s.send("d.bin", CHUNK, Some(&"0".repeat(64))).await,
        Err(SendError::Changed(_))
    ));
    assert!(matches!(
        s.send("d.bin", 5, None).await,
        Err(SendError::Store(StoreError::BadRequest(_)))
    ));
    let no_downloads = core.with_downloads(false).session(peer());
    assert_eq!(
        no_downloads.check(Action::Download),
        Err(Denied::Disabled("downloads are"))
    );
}

#[tokio::test]
async fn an_update_replaces_only_the_version_it_names() {
    let (core, store) = core(Policy::default());
    let s = core.session(peer());
    let small = async |data: &'static [u8], replaces| {
        let cv = Some(chunk_cv(0, data));
        s.store_small(
            "n.txt",
            Bytes::from_static(data),
            cv,
            digest(data),
            replaces,
            None,
        )
        .await
    };
    small(b"one", None).await.unwrap();
    // Without `replaces` the server's policy (rename) applies.
    assert_eq!(small(b"two", None).await.unwrap().name, "n (1).txt");
    // With it, the named version is replaced in place...
    assert_eq!(
        small(b"three", Some(digest(b"one"))).await.unwrap().name,
        "n.txt"
    );
    assert_eq!(store.contents("n.txt").unwrap(), b"three"[..]);
    // ...and a version that is no longer there is not.
    assert!(matches!(
        small(b"four", Some(digest(b"one"))).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.contents("n.txt").unwrap(), b"three"[..]);
    // Big files too, through a receiver.
    let data = body(8, CHUNK + 5);
    let mut r = s
        .receive(put(
            "n.txt",
            data.len() as u64,
            0,
            Mode::Compute,
            true,
            Some(digest(b"three")),
        ))
        .await
        .unwrap();
    r.write(Bytes::from(data.clone())).await.unwrap();
    assert_eq!(r.finish(None).await.unwrap().name, "n.txt");
    assert_eq!(store.contents("n.txt").unwrap(), data);
    assert_eq!(
        store.used(),
        data.len() as u64 + 3,
        "the replaced bytes left the quota count"
    );
    // A server that never replaces files refuses updates.
    let (strict, _) = super::tests::core(Policy {
        on_conflict: OnConflict::Fail,
        ..Policy::default()
    });
    let t = strict.session(peer());
    t.store_small(
        "x",
        Bytes::from_static(b"1"),
        Some(chunk_cv(0, b"1")),
        digest(b"1"),
        None,
        None,
    )
    .await
    .unwrap();
    let e = t
        .store_small(
            "x",
            Bytes::from_static(b"2"),
            Some(chunk_cv(0, b"2")),
            digest(b"2"),
            Some(digest(b"1")),
            None,
        )
        .await;
    assert!(matches!(e, Err(StoreError::Conflict(_))));
}

#[tokio::test]
async fn an_update_takes_the_unchanged_chunks_from_the_version_it_replaces() {
    let (core, store) = core(Policy::default());
    let s = core.session(peer());
    let old = body(9, 5 * CHUNK + 100);
    let mut r = s
        .receive(Put::new("v.bin", old.len() as u64))
        .await
        .unwrap();
    r.write(Bytes::from(old.clone())).await.unwrap();
    r.finish(None).await.unwrap();
    // Chunks 1 and 4 changed (4 is also longer); 0, 2, 3 are the same.
    let mut new = old.clone();
    new[(CHUNK + 10) as usize] ^= 1;
    new.extend_from_slice(b"more");
    new[(4 * CHUNK + 3) as usize] ^= 1;
    let reuse = vec![true, false, true, true, false, false];
    let update = |reuse: Vec<bool>| Put {
        mode: Mode::Check,
        replaces: Some(digest(&old)),
        reuse: Some(reuse),
        ..Put::new("v.bin", new.len() as u64)
    };
    let mut r = s.receive(update(reuse)).await.unwrap();
    send_checked(&mut r, &new, 1..2, 1 << 20).await.unwrap();
    send_checked(&mut r, &new, 4..6, 1 << 20).await.unwrap();
    assert_eq!(r.finish(Some(digest(&new))).await.unwrap().name, "v.bin");
    assert_eq!(store.contents("v.bin").unwrap(), new);

    // A client that claims a chunk the server does not have the same: the whole digest catches
    // it, nothing is published, the stored version stays.
    let mut newer = new.clone();
    newer[5] ^= 1; // chunk 0 changed, but claimed reusable
    let lying = Put {
        mode: Mode::Check,
        replaces: Some(digest(&new)),
        reuse: Some(vec![true, true, true, true, true, false]),
        ..Put::new("v.bin", newer.len() as u64)
    };
    let mut r = s.receive(lying).await.unwrap();
    send_checked(&mut r, &newer, 5..6, 1 << 20).await.unwrap();
    let e = r.finish(Some(digest(&newer))).await.unwrap_err();
    assert!(matches!(e, StoreError::Integrity(_)), "{e}");
    assert_eq!(store.contents("v.bin").unwrap(), new);
    // Reuse without the version it comes from, or for another size, is refused.
    let bare = Put {
        mode: Mode::Check,
        reuse: Some(vec![true; 6]),
        ..Put::new("v.bin", new.len() as u64)
    };
    assert!(matches!(
        s.receive(bare).await,
        Err(StoreError::BadRequest(_))
    ));
    let sized = Put {
        mode: Mode::Check,
        replaces: Some(digest(&new)),
        reuse: Some(vec![true; 2]),
        ..Put::new("v.bin", new.len() as u64)
    };
    assert!(matches!(
        s.receive(sized).await,
        Err(StoreError::BadRequest(_))
    ));
}
