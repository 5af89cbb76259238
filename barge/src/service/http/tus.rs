//! tus 1.0.0 at `/uploads/`: the core protocol (HEAD, PATCH, OPTIONS) and the extensions
//! creation, creation-with-upload, creation-defer-length, termination, expiration, checksum
//! (sha1, as the spec requires, and blake3) and concatenation.
//!
//! Concatenation and a deferred length both build one file from pieces kept whole but not
//! published: a partial upload (`Upload-Concat: partial`) is a piece of its own; a PATCH of an
//! upload whose length is not known yet is kept as a segment (its `Content-Length` bytes). The
//! final upload (or the PATCH that makes the length known and complete) reads the pieces back in
//! order ([`crate::store::Store::read_kept`]) through the core into the file — BLAKE3 computed
//! again over the whole — and then throws the pieces away.
//!
//! An upload's description (its path, size, token root, expiry, and once done its stored name and
//! digest) is a store note `tus-ID`, so it survives a restart and another server on the same
//! store finds it. Its bytes go through the transfer core like any upload — the name rule, size
//! limit, quota, conflict policy, BLAKE3 chunk tree computed by the server — into a partial of its
//! own ([`Version::Upload`]). A resume point is a chunk boundary: bytes of a chunk left unfinished
//! when a PATCH ends are not kept, and `Upload-Offset` says so (clients send from there).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use barge_proto::tree::{CHUNK, hex};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{HttpFace, Peer, header_value, refuse, session, store_refusal};
use crate::store::{StoreError, Version};
use crate::transfer::{Action, Put, Session};

/// tus's status for a checksum that does not match (not in the HTTP registry).
pub(super) const CHECKSUM_MISMATCH: StatusCode = match StatusCode::from_u16(460) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};
const RESUMABLE: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration,checksum";
/// Where the store can read pieces back (not on a bucket).
const EXTENSIONS_WITH_PIECES: &str = "creation,creation-with-upload,creation-defer-length,\
     termination,expiration,checksum,concatenation";
/// A PATCH with `Upload-Checksum` is checked before a byte is stored, so it is held in memory:
/// at most this much.
const MAX_CHECKED_PATCH: usize = 64 << 20;
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

/// An upload's description, kept as a store note.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Upload {
    /// Where it will be stored (in the root of the token that created it).
    path: String,
    size: u64,
    /// That token's root: another token cannot see or continue it.
    root: Option<String>,
    /// `Upload-Metadata` as sent, echoed by HEAD.
    metadata: String,
    /// Milliseconds since the epoch after which it is gone.
    expires_ms: u64,
    /// Once stored: its final name (after a conflict rename) and digest.
    stored: Option<String>,
    digest: Option<String>,
    /// `Upload-Concat`: a piece of a file to come, or the file made of pieces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    concat: Option<Concat>,
    /// Created with `Upload-Defer-Length`: the bytes are kept as segments; `size` is known once
    /// `deferred` is false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    segmented: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deferred: bool,
    /// The segments kept so far, in order: their ids and sizes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    segments: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Concat {
    Partial,
    /// The pieces' upload ids, in order.
    Final(Vec<String>),
}

/// The store path of a piece (a partial upload or a segment): never published, so any valid
/// name unique to it will do.
fn piece_path(id: &str) -> String {
    format!("tus-piece-{id}")
}

/// A piece of at most one chunk is kept as a store note (under the same name as its path): the
/// store keeps no partial of a one-chunk file (there is nothing to resume from in it).
fn small_piece(size: u64) -> bool {
    size <= CHUNK
}

/// Keeps a small piece received whole.
async fn keep_small_piece(session: &Session, id: &str, bytes: Bytes) -> Result<(), StoreError> {
    session.store().put_note(&piece_path(id), bytes).await
}

/// A piece's bytes, in order: a small one from its note, a larger one from the store's partial.
async fn read_piece(
    session: &Session,
    id: &str,
    size: u64,
) -> Result<tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>, StoreError> {
    if !small_piece(size) {
        return session
            .store()
            .read_kept(&piece_path(id), size, version(id))
            .await;
    }
    let bytes = session
        .store()
        .get_note(&piece_path(id))
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("piece {id}")))?;
    if bytes.len() as u64 != size {
        return Err(StoreError::Integrity(format!("piece {id} changed size")));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.try_send(Ok(bytes));
    Ok(rx)
}

/// Whether a small piece is kept (whole).
async fn small_piece_kept(session: &Session, id: &str) -> Result<bool, StoreError> {
    Ok(session.store().get_note(&piece_path(id)).await?.is_some())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn note_name(id: &str) -> String {
    format!("tus-{id}")
}

/// The partial of upload `id`: its own, whatever else is uploaded under its name.
fn version(id: &str) -> Version {
    Version::Upload(*blake3::hash(id.as_bytes()).as_bytes())
}

fn new_id(peer: std::net::SocketAddr) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(format!("{:?}", SystemTime::now()).as_bytes());
    h.update(peer.to_string().as_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    h.update(format!("{:?}", std::thread::current().id()).as_bytes());
    hex(h.finalize().as_bytes())[..32].to_owned()
}

/// Adds `Tus-Resumable` to every answer.
fn tus(mut r: Response) -> Response {
    r.headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(RESUMABLE));
    r
}

fn method_of(method: &Method, headers: &HeaderMap) -> Method {
    // tus-js-client's overridePatchMethod, for proxies that drop PATCH.
    headers
        .get("x-http-method-override")
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or_else(|| method.clone())
}

/// `Tus-Resumable: 1.0.0` on everything but OPTIONS, else 412.
fn version_check(headers: &HeaderMap) -> Result<(), Response> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(RESUMABLE) => Ok(()),
        _ => {
            let mut r = refuse(
                StatusCode::PRECONDITION_FAILED,
                "this server speaks tus 1.0.0 (Tus-Resumable: 1.0.0)",
            );
            r.headers_mut()
                .insert("tus-version", HeaderValue::from_static(RESUMABLE));
            Err(r)
        }
    }
}

fn options(face: &HttpFace) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(RESUMABLE));
    let extensions = if face.core.store().reads_kept() {
        EXTENSIONS_WITH_PIECES
    } else {
        EXTENSIONS
    };
    h.insert("tus-extension", HeaderValue::from_static(extensions));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static("sha1,blake3"),
    );
    if let Some(max) = face.core.policy().max_file_size {
        h.insert("tus-max-size", header_value(&max.to_string()));
    }
    tus(r)
}

/// The mark of a PATCH in progress on an upload, removed when the PATCH ends.
struct Writing {
    face: Arc<HttpFace>,
    id: String,
}

impl Writing {
    fn take(face: &Arc<HttpFace>, id: &str) -> Option<Self> {
        let mut writing = face.writing.lock().unwrap_or_else(|p| p.into_inner());
        writing.insert(id.to_owned()).then(|| Self {
            face: face.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.face
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// What every tus route does first: the method (after an override), OPTIONS answered, and the
/// protocol version checked. `Err` is the finished answer.
fn prelude(face: &HttpFace, method: &Method, headers: &HeaderMap) -> Result<Method, Response> {
    let method = method_of(method, headers);
    if method == Method::OPTIONS {
        return Err(options(face));
    }
    version_check(headers).map_err(tus)?;
    Ok(method)
}

/// `/uploads/`: OPTIONS, and POST to create an upload.
pub(super) async fn collection(
    State(face): State<Arc<HttpFace>>,
    Extension(Peer(peer)): Extension<Peer>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let method = match prelude(&face, &method, &headers) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if method != Method::POST {
        return tus(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST creates an upload",
        ));
    }
    tus(create(&face, peer, &headers, body).await)
}

/// `/uploads/ID`: HEAD, PATCH, DELETE, OPTIONS.
pub(super) async fn upload(
    State(face): State<Arc<HttpFace>>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let method = match prelude(&face, &method, &headers) {
        Ok(m) => m,
        Err(r) => return r,
    };
    // Asking where to resume, sending, and giving up are all an uploader's.
    let session = match session(&face, peer, &headers, Action::Upload) {
        Ok(s) => s,
        Err(r) => return tus(r),
    };
    if id.len() != 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return tus(refuse(StatusCode::NOT_FOUND, "no such upload"));
    }
    let upload = match load(&session, &id).await {
        Ok(u) => u,
        Err(r) => return tus(r),
    };
    let r = match method {
        Method::HEAD => head(&session, &id, &upload).await,
        Method::PATCH => {
            let Some(_writing) = Writing::take(&face, &id) else {
                return tus(refuse(
                    StatusCode::LOCKED,
                    "this upload is being written by another request",
                ));
            };
            patch(&session, &id, upload, &headers, body).await
        }
        Method::DELETE => terminate(&session, &id, &upload).await,
        _ => refuse(StatusCode::METHOD_NOT_ALLOWED, "HEAD, PATCH or DELETE"),
    };
    tus(r)
}

/// The upload `id` as this session may see it: 404 if it is unknown or another root's, 410 once
/// expired (and then it is thrown away).
async fn load(session: &Session, id: &str) -> Result<Upload, Response> {
    let note = session
        .store()
        .get_note(&note_name(id))
        .await
        .map_err(|e| store_refusal(&e))?;
    let upload: Upload = note
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "no such upload"))?;
    if upload.root.as_deref() != session.root() {
        return Err(refuse(StatusCode::NOT_FOUND, "no such upload"));
    }
    if upload.stored.is_none() && upload.expires_ms <= now_ms() {
        drop_upload(session, id, &upload).await;
        return Err(refuse(StatusCode::GONE, "this upload expired"));
    }
    Ok(upload)
}

async fn save(session: &Session, id: &str, upload: &Upload) -> Result<(), Response> {
    let json =
        serde_json::to_vec(upload).map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    session
        .store()
        .put_note(&note_name(id), Bytes::from(json))
        .await
        .map_err(|e| store_refusal(&e))
}

/// Parses `Upload-Metadata`: `key base64value` pairs, comma-separated (a value may be absent).
fn metadata(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = STANDARD
            .decode(value.trim())
            .map_err(|_| format!("Upload-Metadata: {key} is not base64"))?;
        let value =
            String::from_utf8(value).map_err(|_| format!("Upload-Metadata: {key} is not UTF-8"))?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn expires_header(upload: &Upload) -> HeaderValue {
    header_value(&httpdate::fmt_http_date(
        UNIX_EPOCH + Duration::from_millis(upload.expires_ms),
    ))
}

async fn create(
    face: &HttpFace,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let session = match session(face, peer, headers, Action::Upload) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let pieces = session.store().reads_kept();
    let concat = match headers.get("upload-concat").map(|v| v.to_str()) {
        None => None,
        Some(Ok("partial")) => Some(Concat::Partial),
        Some(Ok(v)) if v.starts_with("final;") => match final_ids(&v["final;".len()..]) {
            Some(ids) => Some(Concat::Final(ids)),
            None => return refuse(StatusCode::BAD_REQUEST, "Upload-Concat: final;URL URL ..."),
        },
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Upload-Concat: partial, or final;URL URL ...",
            );
        }
    };
    let defer = match headers.get("upload-defer-length").map(|v| v.as_bytes()) {
        None => false,
        Some(b"1") => true,
        Some(_) => return refuse(StatusCode::BAD_REQUEST, "Upload-Defer-Length: 1"),
    };
    if (concat.is_some() || defer) && !pieces {
        return refuse(
            StatusCode::NOT_IMPLEMENTED,
            "concatenation and deferred lengths need a store that reads pieces back (not a bucket)",
        );
    }
    let length = header_u64(headers, "upload-length");
    let size = match (length, defer, &concat) {
        (Some(_), _, Some(Concat::Final(_))) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "a final upload takes no Upload-Length",
            );
        }
        (None, false, Some(Concat::Final(_))) => 0,
        (Some(_), true, _) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Upload-Length or Upload-Defer-Length, not both",
            );
        }
        (None, true, Some(Concat::Partial)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "a partial upload needs Upload-Length",
            );
        }
        (Some(n), false, _) => n,
        (None, true, _) => 0,
        (None, false, _) => return refuse(StatusCode::BAD_REQUEST, "Upload-Length is required"),
    };
    let raw = headers
        .get("upload-metadata")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let meta = match metadata(&raw) {
        Ok(m) => m,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let id = new_id(peer);
    // Uppy sends `relativePath` (the path in a dropped folder, name included); others only a name.
    let path = get("relativePath")
        .filter(|p| !p.trim_matches('/').is_empty())
        .or_else(|| get("filename"))
        .unwrap_or_else(|| format!("upload-{id}"));
    let path = match concat {
        Some(Concat::Partial) => piece_path(&id),
        _ => path.trim_matches('/').to_owned(),
    };
    if let Err(e) = session.admit(&path, size, 0) {
        return store_refusal(&e);
    }
    let mut upload = Upload {
        path,
        size,
        root: session.root().map(str::to_owned),
        metadata: raw,
        expires_ms: now_ms() + face.expiry.as_millis() as u64,
        stored: None,
        digest: None,
        concat,
        segmented: defer,
        deferred: defer,
        segments: Vec::new(),
    };
    let location = format!("/uploads/{id}");
    if let Some(Concat::Final(ids)) = upload.concat.clone() {
        return match create_final(&session, &id, &mut upload, &ids).await {
            Ok(()) => {
                let mut r = StatusCode::CREATED.into_response();
                r.headers_mut()
                    .insert(header::LOCATION, header_value(&location));
                r.headers_mut()
                    .insert("upload-offset", header_value(&upload.size.to_string()));
                r
            }
            Err(r) => r,
        };
    }
    if let Err(r) = save(&session, &id, &upload).await {
        return r;
    }
    info!(%peer, id, path = %upload.path, size, deferred = defer, "tus upload created");
    let with_data = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == OFFSET_OCTET_STREAM.as_bytes());
    let mut r = if with_data || (size == 0 && !defer) {
        // creation-with-upload (and an empty file, which is complete at once).
        let mut headers = headers.clone();
        headers.insert("upload-offset", HeaderValue::from_static("0"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(OFFSET_OCTET_STREAM),
        );
        let written = patch(&session, &id, upload.clone(), &headers, body).await;
        if !written.status().is_success() {
            return written;
        }
        let mut r = StatusCode::CREATED.into_response();
        for name in ["upload-offset", "barge-path", "barge-digest"] {
            if let Some(v) = written.headers().get(name) {
                r.headers_mut().insert(name, v.clone());
            }
        }
        r
    } else {
        StatusCode::CREATED.into_response()
    };
    r.headers_mut()
        .insert(header::LOCATION, header_value(&location));
    r.headers_mut()
        .insert("upload-expires", expires_header(&upload));
    r
}

/// A header holding a byte count: a non-negative integer that fits u64 (else `None`).
fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The upload ids of `Upload-Concat: final;URL URL ...` (URLs or paths ending in `/uploads/ID`).
fn final_ids(list: &str) -> Option<Vec<String>> {
    let ids: Vec<String> = list
        .split_whitespace()
        .map(|u| {
            u.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let valid = |id: &String| {
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    (!ids.is_empty() && ids.len() <= 10_000 && ids.iter().all(valid)).then_some(ids)
}

/// The final upload of a concatenation: every partial upload named must be this root's, a
/// partial one, and complete; the file is assembled from them at once and they are dropped.
async fn create_final(
    session: &Session,
    id: &str,
    upload: &mut Upload,
    ids: &[String],
) -> Result<(), Response> {
    let mut pieces = Vec::with_capacity(ids.len());
    let mut parts = Vec::with_capacity(ids.len());
    let mut total: u64 = 0;
    for pid in ids {
        let part = load(session, pid).await?;
        if part.concat != Some(Concat::Partial) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("/uploads/{pid} is not a partial upload"),
            ));
        }
        let at = offset(session, pid, &part)
            .await
            .map_err(|e| store_refusal(&e))?;
        if at != part.size {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "/uploads/{pid} is not complete ({at} of {} bytes)",
                    part.size
                ),
            ));
        }
        total = total
            .checked_add(part.size)
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "the pieces overflow a length"))?;
        pieces.push((pid.clone(), part.size));
        parts.push((pid.clone(), part));
    }
    upload.size = total;
    session
        .admit(&upload.path, total, 0)
        .map_err(|e| store_refusal(&e))?;
    let stored = assemble(session, id, upload, &pieces)
        .await
        .map_err(|e| store_refusal(&e))?;
    mark_stored(upload, &stored);
    save(session, id, upload).await?;
    for (pid, part) in &parts {
        drop_upload(session, pid, part).await;
    }
    info!(peer = %session.peer(), id, pieces = ids.len(), stored = ?upload.stored, "tus concatenation stored");
    Ok(())
}

/// Writes the pieces, in order, through the core into upload `id`'s file and publishes it.
async fn assemble(
    session: &Session,
    id: &str,
    upload: &Upload,
    pieces: &[(String, u64)],
) -> Result<crate::store::Stored, StoreError> {
    let put = Put {
        version: version(id),
        ..Put::new(&upload.path, upload.size)
    };
    let mut receiver = session.receive(put).await?;
    for (piece, size) in pieces {
        let mut chunks = match read_piece(session, piece, *size).await {
            Ok(c) => c,
            Err(e) => {
                receiver.discard().await;
                return Err(e);
            }
        };
        while let Some(chunk) = chunks.recv().await {
            let written = match chunk {
                Ok(bytes) => receiver.write(bytes).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = written {
                receiver.discard().await;
                return Err(e);
            }
        }
    }
    receiver.finish(None).await
}

/// Records where a finished upload went (its folder kept, the name after a conflict rename).
fn mark_stored(upload: &mut Upload, stored: &crate::store::Stored) {
    let folder = upload.path.rsplit_once('/').map(|(d, _)| d);
    upload.stored = Some(match folder {
        Some(d) => format!("{d}/{}", stored.name),
        None => stored.name.clone(),
    });
    upload.digest = stored.digest.as_ref().map(hex);
}

/// Throws a piece (a partial upload's or a segment's kept bytes) away.
async fn discard_piece(session: &Session, id: &str, size: u64) {
    if small_piece(size) {
        let _ = session.store().delete_note(&piece_path(id)).await;
        return;
    }
    let path = piece_path(id);
    let put = Put {
        version: version(id),
        ..Put::new(&path, size)
    };
    if let Ok(r) = session.receive(put).await {
        r.discard().await;
    }
}

/// Where upload `id` continues from: its size once stored, else the verified bytes kept.
async fn offset(session: &Session, id: &str, upload: &Upload) -> Result<u64, StoreError> {
    if upload.stored.is_some() {
        return Ok(upload.size);
    }
    if upload.segmented {
        return Ok(upload.segments.iter().map(|(_, n)| n).sum());
    }
    if upload.concat == Some(Concat::Partial) && small_piece(upload.size) {
        let kept = small_piece_kept(session, id).await?;
        return Ok(if kept { upload.size } else { 0 });
    }
    let (kept, _) = crate::transfer::kept(
        session.store().as_ref(),
        &upload.path,
        upload.size,
        version(id),
    )
    .await?;
    Ok(kept)
}

async fn head(session: &Session, id: &str, upload: &Upload) -> Response {
    let at = match offset(session, id, upload).await {
        Ok(o) => o,
        Err(e) => return store_refusal(&e),
    };
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    h.insert("upload-offset", header_value(&at.to_string()));
    if upload.deferred {
        h.insert("upload-defer-length", HeaderValue::from_static("1"));
    } else {
        h.insert("upload-length", header_value(&upload.size.to_string()));
    }
    match &upload.concat {
        Some(Concat::Partial) => {
            h.insert("upload-concat", HeaderValue::from_static("partial"));
        }
        Some(Concat::Final(ids)) => {
            let urls: Vec<String> = ids.iter().map(|i| format!("/uploads/{i}")).collect();
            h.insert(
                "upload-concat",
                header_value(&format!("final;{}", urls.join(" "))),
            );
        }
        None => {}
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !upload.metadata.is_empty()
        && let Ok(v) = HeaderValue::from_str(&upload.metadata)
    {
        h.insert("upload-metadata", v);
    }
    if upload.stored.is_none() {
        h.insert("upload-expires", expires_header(upload));
    }
    r
}

/// Checks `Upload-Checksum: ALGORITHM BASE64` of a PATCH body.
fn checksum_matches(spec: &str, body: &[u8]) -> Result<bool, Response> {
    let (algo, value) = spec
        .split_once(' ')
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "Upload-Checksum: ALGORITHM BASE64"))?;
    let want = STANDARD
        .decode(value.trim())
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "Upload-Checksum is not base64"))?;
    let got = match algo {
        "sha1" => ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body)
            .as_ref()
            .to_vec(),
        "blake3" => blake3::hash(body).as_bytes().to_vec(),
        other => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("checksum algorithm {other:?} is not supported (sha1, blake3)"),
            ));
        }
    };
    Ok(got == want)
}

async fn patch(
    session: &Session,
    id: &str,
    mut upload: Upload,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    if headers
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes() != OFFSET_OCTET_STREAM.as_bytes())
    {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/offset+octet-stream",
        );
    }
    if matches!(upload.concat, Some(Concat::Final(_))) {
        return refuse(StatusCode::FORBIDDEN, "a final upload takes no PATCH");
    }
    let Some(claimed) = header_u64(headers, "upload-offset") else {
        return refuse(StatusCode::BAD_REQUEST, "Upload-Offset is required");
    };
    if upload.segmented && upload.stored.is_none() {
        return patch_segment(session, id, upload, claimed, headers, body).await;
    }
    let at = match offset(session, id, &upload).await {
        Ok(o) => o,
        Err(e) => return store_refusal(&e),
    };
    if claimed != at {
        return offset_conflict(claimed, at);
    }
    if upload.stored.is_some() {
        return done(&upload);
    }
    if upload.concat == Some(Concat::Partial) && small_piece(upload.size) {
        // A small piece comes whole in one PATCH (there is no resume point inside a chunk).
        if let Err(r) = receive_piece(session, id, upload.size, headers, body).await {
            return r;
        }
        return offset_answer(upload.size);
    }
    // With a checksum, the body is checked before a byte of it is stored.
    let mut body = Some(body);
    let checked = match headers.get("upload-checksum").and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => {
            let Some(body) = body.take() else {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, "no body");
            };
            let limited = http_body_limit(body, MAX_CHECKED_PATCH).await;
            let Ok(bytes) = limited else {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "a PATCH with Upload-Checksum carries at most {MAX_CHECKED_PATCH} bytes"
                    ),
                );
            };
            match checksum_matches(spec, &bytes) {
                Ok(true) => Some(bytes),
                Ok(false) => {
                    return refuse(CHECKSUM_MISMATCH, "checksum mismatch: nothing stored");
                }
                Err(r) => return r,
            }
        }
    };
    let put = Put {
        from: at,
        version: version(id),
        ..Put::new(&upload.path, upload.size)
    };
    let mut receiver = match session.receive(put).await {
        Ok(r) => r,
        Err(e) => return store_refusal(&e),
    };
    let mut failed: Option<StoreError> = None;
    match checked {
        Some(bytes) => {
            if let Err(e) = receiver.write(bytes).await {
                failed = Some(e);
            }
        }
        None => {
            let Some(body) = body.take() else {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, "no body");
            };
            let mut stream = body.into_data_stream();
            while let Some(piece) = stream.next().await {
                let Ok(piece) = piece else {
                    break; // the client went away: keep what was verified
                };
                if let Err(e) = receiver.write(piece).await {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    if let Some(e) = failed {
        receiver.suspend().await;
        return store_refusal(&e);
    }
    // A partial upload complete is kept whole, for the final upload to read.
    if receiver.received() < upload.size || upload.concat == Some(Concat::Partial) {
        let kept = receiver.verified();
        receiver.suspend().await;
        return offset_answer(kept);
    }
    match receiver.finish(None).await {
        Ok(stored) => {
            mark_stored(&mut upload, &stored);
            info!(peer = %session.peer(), id, stored = ?upload.stored, "tus upload stored");
            if let Err(r) = save(session, id, &upload).await {
                return r;
            }
            done(&upload)
        }
        Err(e) => store_refusal(&e),
    }
}

/// The answer to the PATCH that completed an upload: where it went and its digest.
fn done(upload: &Upload) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert("upload-offset", header_value(&upload.size.to_string()));
    if let Some(p) = &upload.stored {
        h.insert("barge-path", header_value(&percent(p)));
    }
    if let Some(d) = &upload.digest {
        h.insert("barge-digest", header_value(d));
    }
    r
}

/// A path as a header value: non-ASCII and controls percent-encoded.
fn percent(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads a whole body, refusing one longer than `max`.
async fn http_body_limit(body: Body, max: usize) -> Result<Bytes, ()> {
    let mut out = BytesMut::new();
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|_| ())?;
        if out.len() + piece.len() > max {
            return Err(());
        }
        out.extend_from_slice(&piece);
    }
    Ok(out.freeze())
}

/// A PATCH of an upload created with a deferred length: the body (its `Content-Length` bytes) is
/// kept whole as one more segment; once `Upload-Length` is known and every byte is here, the file
/// is assembled from the segments. A body cut short keeps nothing of itself (the offset stays).
async fn patch_segment(
    session: &Session,
    id: &str,
    mut upload: Upload,
    claimed: u64,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let at: u64 = upload.segments.iter().map(|(_, n)| n).sum();
    if claimed != at {
        return offset_conflict(claimed, at);
    }
    let length = header_u64(headers, "upload-length");
    if headers.contains_key("upload-length") && length.is_none() {
        return refuse(StatusCode::BAD_REQUEST, "Upload-Length: a byte count");
    }
    if let Some(len) = length {
        if !upload.deferred && len != upload.size {
            return refuse(StatusCode::BAD_REQUEST, "Upload-Length cannot change");
        }
        if len < at {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("Upload-Length {len} is less than the {at} bytes already sent"),
            );
        }
        if let Err(e) = session.admit(&upload.path, len, 0) {
            return store_refusal(&e);
        }
    }
    let Some(n) = header_u64(headers, header::CONTENT_LENGTH.as_str()) else {
        return refuse(
            StatusCode::LENGTH_REQUIRED,
            "a PATCH of an upload of deferred length needs Content-Length",
        );
    };
    let total = length.or((!upload.deferred).then_some(upload.size));
    if total.is_some_and(|t| at.saturating_add(n) > t) {
        return refuse(StatusCode::BAD_REQUEST, "more bytes than Upload-Length");
    }
    if n > 0 {
        let seg = new_id(session.peer());
        if let Err(r) = receive_piece(session, &seg, n, headers, body).await {
            return r;
        }
        upload.segments.push((seg, n));
    }
    if let Some(len) = length {
        upload.size = len;
        upload.deferred = false;
    }
    let now = at + n;
    if !upload.deferred && now == upload.size {
        let pieces = upload.segments.clone();
        return match assemble(session, id, &upload, &pieces).await {
            Ok(stored) => {
                mark_stored(&mut upload, &stored);
                if let Err(r) = save(session, id, &upload).await {
                    return r;
                }
                for (seg, len) in &pieces {
                    discard_piece(session, seg, *len).await;
                }
                info!(peer = %session.peer(), id, stored = ?upload.stored, "tus upload stored");
                done(&upload)
            }
            Err(e) => {
                let _ = save(session, id, &upload).await;
                store_refusal(&e)
            }
        };
    }
    if let Err(r) = save(session, id, &upload).await {
        return r;
    }
    offset_answer(now)
}

/// 409: the client's `Upload-Offset` is not where the upload continues (which it is told).
fn offset_conflict(claimed: u64, at: u64) -> Response {
    let mut r = refuse(
        StatusCode::CONFLICT,
        format!("Upload-Offset is {claimed}, but the upload continues at {at}"),
    );
    r.headers_mut()
        .insert("upload-offset", header_value(&at.to_string()));
    r
}

/// 204 with the new `Upload-Offset`.
fn offset_answer(at: u64) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert("upload-offset", header_value(&at.to_string()));
    r
}

/// Receives one piece (`n` bytes, `Upload-Checksum` checked if given) and keeps it whole, not
/// published: in a note if it is small, else as the store's partial. A body cut short keeps
/// nothing.
async fn receive_piece(
    session: &Session,
    seg: &str,
    n: u64,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), Response> {
    let path = piece_path(seg);
    session.admit(&path, n, 0).map_err(|e| store_refusal(&e))?;
    let spec = headers.get("upload-checksum").and_then(|v| v.to_str().ok());
    // A checked body is checked before a byte of it is kept; a small one is kept in one piece.
    if spec.is_some() || small_piece(n) {
        let max = if small_piece(n) {
            n as usize
        } else {
            MAX_CHECKED_PATCH
        };
        let Ok(bytes) = http_body_limit(body, max).await else {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {max} bytes in this PATCH"),
            ));
        };
        if let Some(spec) = spec
            && !checksum_matches(spec, &bytes)?
        {
            return Err(refuse(
                CHECKSUM_MISMATCH,
                "checksum mismatch: nothing stored",
            ));
        }
        if bytes.len() as u64 != n {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body ended after {} of {n} bytes: this PATCH kept nothing",
                    bytes.len()
                ),
            ));
        }
        if small_piece(n) {
            return keep_small_piece(session, seg, bytes)
                .await
                .map_err(|e| store_refusal(&e));
        }
        return write_piece(
            session,
            seg,
            n,
            futures::stream::iter([Ok::<Bytes, std::convert::Infallible>(bytes)]),
        )
        .await;
    }
    write_piece(session, seg, n, body.into_data_stream()).await
}

/// Writes a piece of more than one chunk through the core into its own partial and keeps it.
async fn write_piece<E>(
    session: &Session,
    seg: &str,
    n: u64,
    mut stream: impl futures::Stream<Item = Result<Bytes, E>> + Unpin,
) -> Result<(), Response> {
    let path = piece_path(seg);
    let put = Put {
        version: version(seg),
        ..Put::new(&path, n)
    };
    let mut receiver = session.receive(put).await.map_err(|e| store_refusal(&e))?;
    let mut failed = None;
    while let Some(piece) = stream.next().await {
        let Ok(piece) = piece else { break }; // the client went away
        if let Err(e) = receiver.write(piece).await {
            failed = Some(e);
            break;
        }
    }
    let got = receiver.received();
    if failed.is_some() || got != n {
        receiver.discard().await;
        return Err(match failed {
            Some(e) => store_refusal(&e),
            None => refuse(
                StatusCode::BAD_REQUEST,
                format!("the body ended after {got} of {n} bytes: this PATCH kept nothing"),
            ),
        });
    }
    receiver.suspend().await;
    Ok(())
}

/// Throws an unfinished upload away: its kept bytes (and segments) and its description.
async fn drop_upload(session: &Session, id: &str, upload: &Upload) {
    if upload.stored.is_none() {
        for (seg, len) in &upload.segments {
            discard_piece(session, seg, *len).await;
        }
        if upload.concat == Some(Concat::Partial) && small_piece(upload.size) {
            discard_piece(session, id, upload.size).await;
        }
    }
    if upload.stored.is_none() {
        let put = Put {
            version: version(id),
            ..Put::new(&upload.path, upload.size)
        };
        if let Ok(r) = session.receive(put).await {
            r.discard().await;
        }
    }
    let _ = session.store().delete_note(&note_name(id)).await;
}

async fn terminate(session: &Session, id: &str, upload: &Upload) -> Response {
    drop_upload(session, id, upload).await;
    info!(peer = %session.peer(), id, "tus upload terminated");
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_base64_pairs() {
        let m = super::metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .unwrap();
        assert_eq!(
            m,
            vec![
                ("filename".into(), "world_domination_plan.pdf".into()),
                ("is_confidential".into(), String::new())
            ]
        );
        assert!(super::metadata("filename !!!").is_err());
    }

    #[test]
    fn checksums_are_sha1_or_blake3() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let sha1 = b64(&[
            0x2a, 0xae, 0x6c, 0x35, 0xc9, 0x4f, 0xcf, 0xb4, 0x15, 0xdb, 0xe9, 0x5f, 0x40, 0x8b,
            0x9c, 0xe9, 0x1e, 0xe8, 0x46, 0xed,
        ]); // sha1("hello world")
        assert_eq!(
            super::checksum_matches(&format!("sha1 {sha1}"), b"hello world").ok(),
            Some(true)
        );
        assert_eq!(
            super::checksum_matches(&format!("sha1 {sha1}"), b"hello World").ok(),
            Some(false)
        );
        let b3 = b64(blake3::hash(b"x").as_bytes());
        assert_eq!(
            super::checksum_matches(&format!("blake3 {b3}"), b"x").ok(),
            Some(true)
        );
        assert!(super::checksum_matches("md5 AAAA", b"x").is_err());
    }
}
