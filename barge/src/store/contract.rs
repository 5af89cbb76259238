//! The `Store` contract, run against every backend (the local folder and memory): what the
//! transfer core relies on, stated once as tests. A new backend adds one line to `backends()`.

use std::sync::Arc;

use barge_proto::tree::{CHUNK, Cv, chunk_cv};
use bytes::Bytes;

use super::{Begin, LocalConfig, LocalStore, MemoryStore, OnConflict, Store, StoreError, Version};

/// A backend: its name, the store, the folder it lives in (if any), its resume unit in bytes.
type Backend = (&'static str, Arc<dyn Store>, Option<tempfile::TempDir>, u64);

/// Every backend, each in a fresh place (the temporary folder lives as long as the store).
fn backends() -> Vec<(&'static str, Arc<dyn Store>, Option<tempfile::TempDir>)> {
    backends_with_units()
        .into_iter()
        .map(|(n, s, d, _)| (n, s, d))
        .collect()
}

/// Every backend with its resume unit: the local and memory stores keep every verified chunk;
/// the S3 store keeps whole parts (a part cannot be appended to), each fully verified.
fn backends_with_units() -> Vec<Backend> {
    let d = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(d.path());
    config.fsync = false;
    let local = LocalStore::open(config).unwrap();
    let mut all: Vec<Backend> = vec![
        ("local", Arc::new(local), Some(d), CHUNK),
        ("memory", Arc::new(MemoryStore::default()), None, CHUNK),
    ];
    let (s3s, dir) = s3s_backend();
    all.push(("s3 (in-process s3s-fs)", Arc::new(s3s), Some(dir), S3_PART));
    if let Some(s3) = s3_backend() {
        all.push(("s3 (garage)", Arc::new(s3), None, S3_PART));
    }
    all
}

/// `s3s-fs` keeps objects as files, so a key whose path is a folder there (`d` when `d/f`
/// exists), or runs through a file (`f/g`), fails with 500 where S3 answers 404. The store asks
/// exactly that (is this name free?), so those answers are mapped to what S3 says; every other
/// operation is `s3s-fs`'s own.
///
/// With `ghosts`, listings lag behind deletes the way S3 allows (and garage was seen doing): a
/// deleted key stays listed, with its size, until it is written again, while HEAD and GET
/// already answer 404.
struct FsAsS3 {
    fs: s3s_fs::FileSystem,
    /// The folder `s3s-fs` serves: an object is the file `root/bucket/key`.
    root: std::path::PathBuf,
    ghosts: Option<std::sync::Mutex<std::collections::BTreeMap<String, i64>>>,
}

/// An internal error of the file system double, for a read of a key: S3's "no such key".
fn as_s3<T>(r: s3s::S3Result<T>) -> s3s::S3Result<T> {
    r.map_err(|e| {
        if e.status_code() == Some(http::StatusCode::INTERNAL_SERVER_ERROR) {
            s3s::s3_error!(NoSuchKey)
        } else {
            e
        }
    })
}

impl FsAsS3 {
    /// Keeps a key about to be deleted in later listings, with its size (lagging only).
    fn haunt(&self, bucket: &str, key: &str) {
        if let Some(ghosts) = &self.ghosts
            && let Ok(meta) = std::fs::metadata(self.root.join(bucket).join(key))
        {
            let size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
            ghosts.lock().unwrap().insert(key.to_owned(), size);
        }
    }
}

#[async_trait::async_trait]
impl s3s::S3 for FsAsS3 {
    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        as_s3(self.fs.head_object(req).await)
    }
    async fn get_object(
        &self,
        req: s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
        as_s3(self.fs.get_object(req).await)
    }
    async fn put_object(
        &self,
        req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        if let Some(ghosts) = &self.ghosts {
            ghosts.lock().unwrap().remove(&req.input.key);
        }
        self.fs.put_object(req).await
    }
    async fn delete_object(
        &self,
        req: s3s::S3Request<s3s::dto::DeleteObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectOutput>> {
        self.haunt(&req.input.bucket, &req.input.key);
        self.fs.delete_object(req).await
    }
    async fn delete_objects(
        &self,
        req: s3s::S3Request<s3s::dto::DeleteObjectsInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectsOutput>> {
        for object in &req.input.delete.objects {
            self.haunt(&req.input.bucket, &object.key);
        }
        self.fs.delete_objects(req).await
    }
    async fn copy_object(
        &self,
        req: s3s::S3Request<s3s::dto::CopyObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CopyObjectOutput>> {
        self.fs.copy_object(req).await
    }
    async fn list_objects_v2(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let mut listed = self.fs.list_objects_v2(req).await?;
        if let Some(ghosts) = &self.ghosts {
            let contents = listed.output.contents.get_or_insert_with(Vec::new);
            for (key, size) in ghosts.lock().unwrap().iter() {
                if key.starts_with(&prefix) {
                    contents.push(s3s::dto::Object {
                        key: Some(key.clone()),
                        size: Some(*size),
                        last_modified: Some(std::time::SystemTime::now().into()),
                        ..Default::default()
                    });
                }
            }
            contents.sort_by(|a, b| a.key.cmp(&b.key));
            listed.output.key_count = Some(contents.len() as i32);
        }
        Ok(listed)
    }
    async fn create_multipart_upload(
        &self,
        req: s3s::S3Request<s3s::dto::CreateMultipartUploadInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CreateMultipartUploadOutput>> {
        self.fs.create_multipart_upload(req).await
    }
    async fn upload_part(
        &self,
        req: s3s::S3Request<s3s::dto::UploadPartInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::UploadPartOutput>> {
        self.fs.upload_part(req).await
    }
    async fn complete_multipart_upload(
        &self,
        req: s3s::S3Request<s3s::dto::CompleteMultipartUploadInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CompleteMultipartUploadOutput>> {
        self.fs.complete_multipart_upload(req).await
    }
    async fn abort_multipart_upload(
        &self,
        req: s3s::S3Request<s3s::dto::AbortMultipartUploadInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::AbortMultipartUploadOutput>> {
        self.fs.abort_multipart_upload(req).await
    }
}

/// The S3 store on an in-process S3 server (`s3s-fs` over a temporary folder, served by hyper on
/// 127.0.0.1): the fast, always-on check of the S3 backend. Call inside a tokio runtime.
fn s3s_backend() -> (super::S3Store, tempfile::TempDir) {
    let (config, dir) = s3s_config();
    (super::S3Store::open(config).unwrap(), dir)
}

/// The configuration of [`s3s_backend`], its server started; the folder lives as long as it.
pub(crate) fn s3s_config() -> (super::S3Config, tempfile::TempDir) {
    s3s_serve(false)
}

/// [`s3s_config`] on a server whose listings keep showing deleted keys (see [`FsAsS3`]).
pub(crate) fn s3s_lagging_config() -> (super::S3Config, tempfile::TempDir) {
    s3s_serve(true)
}

fn s3s_serve(lagging: bool) -> (super::S3Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bucket")).unwrap();
    let fs = s3s_fs::FileSystem::new(dir.path()).unwrap();
    let ghosts = lagging.then(Default::default);
    let mut builder = s3s::service::S3ServiceBuilder::new(FsAsS3 {
        fs,
        root: dir.path().to_owned(),
        ghosts,
    });
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        "AKIDBARGETEST",
        "barge-test-secret",
    ));
    let service = builder.build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let credential = super::Credential {
        key_id: "AKIDBARGETEST".into(),
        secret_key: "barge-test-secret".into(),
        token: None,
    };
    let mut config = super::S3Config::new("bucket", credential);
    config.endpoint = Some(format!("http://{addr}"));
    config.allow_http = true;
    config.part_size = S3_PART;
    (config, dir)
}

/// The S3 store's part size in these tests (S3's smallest).
const S3_PART: u64 = 5 << 20;

/// The S3 store on the bucket named by `BARGE_TEST_S3` (`http://HOST:PORT/BUCKET`, with the
/// `AWS_*` keys in the environment): a real garage cluster (`scripts/garage.sh up`) in CI's
/// cluster stage, each test in a fresh prefix.
pub(crate) fn s3_backend() -> Option<super::S3Store> {
    super::S3Store::open(s3_config()?).ok()
}

/// The configuration [`s3_backend`] opens: a fresh prefix on the test bucket.
pub(crate) fn s3_config() -> Option<super::S3Config> {
    let url = std::env::var("BARGE_TEST_S3").ok()?;
    let (endpoint, bucket) = url.rsplit_once('/')?;
    let credential = super::Credential {
        key_id: std::env::var("AWS_ACCESS_KEY_ID").ok()?,
        secret_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok()?,
        token: None,
    };
    let mut config = super::S3Config::new(bucket, credential);
    config.endpoint = Some(endpoint.to_owned());
    config.region = std::env::var("AWS_REGION").unwrap_or_else(|_| "garage".into());
    config.allow_http = true;
    config.part_size = S3_PART;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = blake3::hash(
        format!(
            "{:?} {} {}",
            std::time::SystemTime::now(),
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
        .as_bytes(),
    );
    config.prefix = format!("t-{}", &unique.to_hex()[..12]);
    Some(config)
}

fn body(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

fn begin(path: &str, size: u64, from: u64, on_conflict: OnConflict) -> Begin {
    Begin {
        from,
        on_conflict,
        ..Begin::new(path, size)
    }
}

/// Writes and confirms chunks `range` of `data` (the core's part, done by hand).
async fn chunks(
    p: &mut Box<dyn super::Partial>,
    data: &[u8],
    range: std::ops::Range<u64>,
) -> Vec<Cv> {
    let mut cvs = Vec::new();
    for i in range {
        let start = (i * CHUNK) as usize;
        let end = (start + CHUNK as usize).min(data.len());
        let piece = &data[start..end];
        // Two writes per chunk: writes need not follow chunk boundaries.
        let half = piece.len() / 2;
        p.write(Bytes::copy_from_slice(&piece[..half]))
            .await
            .unwrap();
        p.write(Bytes::copy_from_slice(&piece[half..]))
            .await
            .unwrap();
        let cv = chunk_cv(i, piece);
        p.verified(cv).await.unwrap();
        cvs.push(cv);
    }
    cvs
}

fn digest(data: &[u8]) -> Cv {
    *blake3::hash(data).as_bytes()
}

async fn read_all(store: &dyn Store, path: &str, from: u64) -> Vec<u8> {
    let mut reading = store.read(path, from).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = reading.chunks.recv().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn a_file_appears_only_when_published_and_reads_back_by_range() {
    for (name, store, _dir) in backends() {
        let data = body(1, 2 * CHUNK + CHUNK / 2);
        let size = data.len() as u64;
        let (mut p, kept) = store
            .begin(begin("d/f.bin", size, 0, OnConflict::Rename))
            .await
            .unwrap();
        assert!(kept.is_empty(), "{name}");
        chunks(&mut p, &data, 0..3).await;
        assert_eq!(
            store.stat("d/f.bin").await.unwrap(),
            None,
            "{name}: visible before publish"
        );
        assert!(
            store
                .list("", true)
                .await
                .unwrap()
                .iter()
                .all(|e| e.path != "d/f.bin"),
            "{name}"
        );
        let stored = p.publish(digest(&data), OnConflict::Rename).await.unwrap();
        assert_eq!(
            (stored.name.as_str(), stored.size),
            ("f.bin", size),
            "{name}"
        );
        let meta = store.stat("d/f.bin").await.unwrap().unwrap();
        assert_eq!((meta.size, meta.digest), (size, digest(&data)), "{name}");
        assert_eq!(read_all(store.as_ref(), "d/f.bin", 0).await, data, "{name}");
        // From a chunk boundary: the chunks from there on.
        assert_eq!(
            read_all(store.as_ref(), "d/f.bin", CHUNK).await,
            data[CHUNK as usize..],
            "{name}"
        );
        let listed = store.list("d", false).await.unwrap();
        assert_eq!(listed.len(), 1, "{name}");
        assert_eq!(
            listed[0].digest.as_deref(),
            Some(barge_proto::tree::hex(&digest(&data)).as_str())
        );
        assert!(
            matches!(store.read("d/none", 0).await, Err(StoreError::NotFound(_))),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_conflict_policy_is_applied_at_publish() {
    for (name, store, _dir) in backends() {
        let put = async |data: &[u8], on: OnConflict| {
            let (mut p, _) = store
                .begin(begin("a.txt", data.len() as u64, 0, OnConflict::Rename))
                .await?;
            chunks(&mut p, data, 0..1).await;
            p.publish(digest(data), on).await
        };
        assert_eq!(
            put(b"one", OnConflict::Rename).await.unwrap().name,
            "a.txt",
            "{name}"
        );
        assert_eq!(
            put(b"two", OnConflict::Rename).await.unwrap().name,
            "a (1).txt",
            "{name}"
        );
        assert!(
            matches!(
                put(b"three", OnConflict::Fail).await,
                Err(StoreError::Conflict(_))
            ),
            "{name}"
        );
        assert_eq!(
            put(b"four", OnConflict::Overwrite).await.unwrap().name,
            "a.txt",
            "{name}"
        );
        assert_eq!(
            read_all(store.as_ref(), "a.txt", 0).await,
            b"four",
            "{name}"
        );
        assert_eq!(
            read_all(store.as_ref(), "a (1).txt", 0).await,
            b"two",
            "{name}"
        );
        // The early refusal under `Fail`, before any byte.
        assert!(
            matches!(
                store.begin(begin("a.txt", 3, 0, OnConflict::Fail)).await,
                Err(StoreError::Conflict(_))
            ),
            "{name}"
        );
        // Small files in one step follow the same policy.
        let small = store
            .put_small(
                "a.txt",
                Bytes::from_static(b"5"),
                digest(b"5"),
                OnConflict::Rename,
                None,
            )
            .await;
        assert_eq!(small.unwrap().name, "a (2).txt", "{name}");
    }
}

#[tokio::test]
async fn only_confirmed_chunks_are_kept_and_a_resume_continues_from_them() {
    for (name, store, _dir, unit) in backends_with_units() {
        let n = unit / CHUNK; // chunks per resume unit
        let data = body(2, 3 * unit + 5);
        let size = data.len() as u64;
        let (mut p, _) = store
            .begin(begin("r.bin", size, 0, OnConflict::Rename))
            .await
            .unwrap();
        let first = chunks(&mut p, &data, 0..n).await;
        // Half a chunk more, never confirmed: it must not be counted.
        p.write(Bytes::copy_from_slice(
            &data[unit as usize..unit as usize + 1000],
        ))
        .await
        .unwrap();
        p.suspend().await;
        let kept = store.kept("r.bin", size, Version::Any).await.unwrap();
        assert_eq!(kept, first, "{name}");
        // Another version of the same path and size keeps nothing.
        let other = Version::Digest([7; 32]);
        assert!(
            store.kept("r.bin", size, other).await.unwrap().is_empty(),
            "{name}"
        );
        // Only the kept offset (or 0) may be resumed from.
        assert!(
            matches!(
                store
                    .begin(begin("r.bin", size, 2 * unit, OnConflict::Rename))
                    .await,
                Err(StoreError::BadRequest(_))
            ),
            "{name}"
        );
        let (mut p, kept) = store
            .begin(begin("r.bin", size, unit, OnConflict::Rename))
            .await
            .unwrap();
        assert_eq!(kept, first, "{name}");
        assert_eq!(p.verified_bytes(), unit, "{name}");
        chunks(&mut p, &data, n..3 * n + 1).await;
        p.publish(digest(&data), OnConflict::Rename).await.unwrap();
        assert_eq!(read_all(store.as_ref(), "r.bin", 0).await, data, "{name}");
        assert!(
            store
                .kept("r.bin", size, Version::Any)
                .await
                .unwrap()
                .is_empty(),
            "{name}: published partials are gone"
        );
    }
}

/// An upload kept whole (every chunk verified, never published) reads back exactly, only when
/// whole; a bucket says it cannot (a multipart upload is unreadable before it is completed).
#[tokio::test]
async fn an_upload_kept_whole_reads_back_before_it_is_published() {
    for (name, store, _dir) in backends() {
        let data = body(5, 2 * CHUNK + 77);
        let size = data.len() as u64;
        let v = Version::Upload([9; 32]);
        let (mut p, _) = store
            .begin(Begin {
                version: v,
                ..begin("piece", size, 0, OnConflict::Rename)
            })
            .await
            .unwrap();
        chunks(&mut p, &data, 0..2).await;
        p.suspend().await;
        let not_whole = store.read_kept("piece", size, v).await;
        if name.starts_with("s3") {
            assert!(
                matches!(not_whole, Err(StoreError::Unsupported(_))),
                "{name}"
            );
            continue;
        }
        assert!(matches!(not_whole, Err(StoreError::NotFound(_))), "{name}");
        let (mut p, _) = store
            .begin(Begin {
                version: v,
                ..begin("piece", size, 2 * CHUNK, OnConflict::Rename)
            })
            .await
            .unwrap();
        chunks(&mut p, &data, 2..3).await;
        p.suspend().await;
        let mut read = store.read_kept("piece", size, v).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = read.recv().await {
            out.extend_from_slice(&c.unwrap());
        }
        assert_eq!(out, data, "{name}");
        assert!(
            store.list("", true).await.unwrap().is_empty(),
            "{name}: published"
        );
        assert!(
            store.read_kept("piece", size, Version::Any).await.is_err(),
            "{name}: another version"
        );
    }
}

#[tokio::test]
async fn one_writer_per_partial_and_a_second_fresh_upload_gets_its_own() {
    for (name, store, _dir, unit) in backends_with_units() {
        let n = unit / CHUNK;
        let (x, y) = (body(3, 2 * unit + 1), body(4, 2 * unit + 1));
        let size = x.len() as u64;
        let (mut p, _) = store
            .begin(begin("s.bin", size, 0, OnConflict::Rename))
            .await
            .unwrap();
        chunks(&mut p, &x, 0..n).await;
        p.suspend().await;
        let (mut a, _) = store
            .begin(begin("s.bin", size, unit, OnConflict::Rename))
            .await
            .unwrap();
        // The same partial, resumed elsewhere at once: busy.
        assert!(
            matches!(
                store
                    .begin(begin("s.bin", size, unit, OnConflict::Rename))
                    .await,
                Err(StoreError::Busy(_))
            ),
            "{name}"
        );
        // A fresh upload of the same name: a partial of its own, both stored.
        let (mut b, kept) = store
            .begin(begin("s.bin", size, 0, OnConflict::Rename))
            .await
            .unwrap();
        assert!(kept.is_empty(), "{name}");
        chunks(&mut b, &y, 0..2 * n + 1).await;
        chunks(&mut a, &x, n..2 * n + 1).await;
        let sb = b.publish(digest(&y), OnConflict::Rename).await.unwrap();
        let sa = a.publish(digest(&x), OnConflict::Rename).await.unwrap();
        let mut names = vec![sa.name.clone(), sb.name.clone()];
        names.sort();
        assert_eq!(names, ["s (1).bin", "s.bin"], "{name}");
        assert_eq!(read_all(store.as_ref(), &sa.name, 0).await, x, "{name}");
        assert_eq!(read_all(store.as_ref(), &sb.name, 0).await, y, "{name}");
    }
}

#[tokio::test]
async fn a_chunk_confirmed_before_its_bytes_is_never_published() {
    for (name, store, _dir) in backends() {
        let data = body(5, CHUNK + 10);
        let (mut p, _) = store
            .begin(begin("c.bin", data.len() as u64, 0, OnConflict::Rename))
            .await
            .unwrap();
        p.write(Bytes::copy_from_slice(&data[..100])).await.unwrap();
        let confirmed = p.verified(chunk_cv(0, &data[..CHUNK as usize])).await;
        if confirmed.is_ok() {
            // Reported one call later at most.
            assert!(
                p.publish(digest(&data), OnConflict::Rename).await.is_err(),
                "{name}"
            );
        }
        assert_eq!(store.stat("c.bin").await.unwrap(), None, "{name}");
    }
}

#[tokio::test]
async fn names_are_checked_and_views_are_confined() {
    for (name, store, _dir) in backends() {
        for bad in ["../x", "a/../../x", "", "/etc/passwd", "a\\b"] {
            assert!(
                store
                    .begin(begin(bad, 1, 0, OnConflict::Rename))
                    .await
                    .is_err(),
                "{name}: {bad:?}"
            );
            assert!(
                store.stat(bad).await.is_err() || store.stat(bad).await.unwrap().is_none(),
                "{name}"
            );
        }
        let alice = store.scoped("alice").unwrap();
        alice
            .put_small(
                "f",
                Bytes::from_static(b"hi"),
                digest(b"hi"),
                OnConflict::Rename,
                None,
            )
            .await
            .unwrap();
        let top: Vec<String> = store
            .list("", true)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(top, ["alice", "alice/f"], "{name}: state is never listed");
        let mine: Vec<String> = alice
            .list("", true)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(mine, ["f"], "{name}");
        assert_eq!(alice.stat("../f").await.ok().flatten(), None, "{name}");
        // A file in the way of a folder.
        assert!(
            matches!(
                store.mkdir("alice/f/g").await,
                Err(StoreError::NotAFolder(_))
            ),
            "{name}"
        );
        store.mkdir("x/y").await.unwrap();
        assert!(
            store.exists("x/y").await.unwrap() && !store.exists("x/z").await.unwrap(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn remove_and_rename_never_replace_and_keep_to_the_view() {
    for (name, store, _dir) in backends() {
        let put = |path: &'static str, data: &'static [u8]| {
            let store = store.clone();
            async move {
                store
                    .put_small(
                        path,
                        Bytes::from_static(data),
                        digest(data),
                        OnConflict::Fail,
                        None,
                    )
                    .await
                    .unwrap();
            }
        };
        put("a/one.txt", b"one").await;
        put("a/b/two.txt", b"two!").await;
        put("other.txt", b"x").await;
        // Rename: parents made, nothing replaced, never below itself.
        store.rename("a/one.txt", "c/d/uno.txt").await.unwrap();
        assert_eq!(
            read_all(store.as_ref(), "c/d/uno.txt", 0).await,
            b"one",
            "{name}"
        );
        assert!(!store.exists("a/one.txt").await.unwrap(), "{name}");
        assert!(
            matches!(
                store.rename("other.txt", "c/d/uno.txt").await,
                Err(StoreError::Conflict(_))
            ),
            "{name}: rename replaced a file"
        );
        assert!(
            matches!(
                store.rename("a", "a/b/inner").await,
                Err(StoreError::IntoItself(_))
            ),
            "{name}"
        );
        assert!(
            matches!(
                store.rename("missing", "x").await,
                Err(StoreError::NotFound(_))
            ),
            "{name}"
        );
        store.rename("a", "z").await.unwrap();
        assert_eq!(
            read_all(store.as_ref(), "z/b/two.txt", 0).await,
            b"two!",
            "{name}"
        );
        // Remove: a file, a folder only when empty or asked to be recursive; never the top or
        // barge's own state.
        assert!(
            matches!(store.remove("z", false).await, Err(StoreError::NotEmpty(_))),
            "{name}"
        );
        assert_eq!(store.remove("z", true).await.unwrap(), 4, "{name}");
        assert!(!store.exists("z/b/two.txt").await.unwrap(), "{name}");
        assert_eq!(store.remove("other.txt", false).await.unwrap(), 1, "{name}");
        assert!(
            matches!(
                store.remove("other.txt", false).await,
                Err(StoreError::NotFound(_))
            ),
            "{name}"
        );
        for hostile in ["", "..", "../x", ".barge", "c/../../x"] {
            assert!(
                store.remove(hostile, true).await.is_err(),
                "{name}: {hostile:?}"
            );
            assert!(
                store.rename("c", hostile).await.is_err(),
                "{name}: {hostile:?}"
            );
        }
        // A scoped view cannot reach out of its folder, and its names are its own.
        store.mkdir("c/e").await.unwrap();
        let scoped = store.scoped("c").unwrap();
        scoped.rename("d/uno.txt", "e/uno.txt").await.unwrap();
        assert!(store.exists("c/e/uno.txt").await.unwrap(), "{name}");
        assert!(
            scoped.remove("../other.txt", false).await.is_err(),
            "{name}"
        );
        store.remove("c", true).await.unwrap();
        assert!(store.list("", true).await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn notes_are_kept_shared_by_views_and_never_listed() {
    for (name, store, _dir) in backends() {
        assert_eq!(store.get_note("tus-1").await.unwrap(), None, "{name}");
        store
            .put_note("tus-1", Bytes::from_static(b"{\"a\":1}"))
            .await
            .unwrap();
        store
            .put_note("tus-1", Bytes::from_static(b"{\"a\":2}"))
            .await
            .unwrap();
        let view = store.scoped("alice").unwrap();
        assert_eq!(
            view.get_note("tus-1").await.unwrap().as_deref(),
            Some(&b"{\"a\":2}"[..]),
            "{name}: one store, one set of notes"
        );
        for bad in ["", "../x", "a/b", "UP", ".barge"] {
            assert!(
                store.put_note(bad, Bytes::new()).await.is_err(),
                "{name}: {bad:?}"
            );
        }
        assert!(
            store
                .list("", true)
                .await
                .unwrap()
                .iter()
                .all(|e| !e.path.contains("tus")),
            "{name}: notes are state, never listed"
        );
        store.delete_note("tus-1").await.unwrap();
        store.delete_note("tus-1").await.unwrap();
        assert_eq!(store.get_note("tus-1").await.unwrap(), None, "{name}");
    }
}
