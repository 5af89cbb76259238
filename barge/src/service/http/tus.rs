//! tus 1.0.0 at `/uploads/`: the core protocol (HEAD, PATCH, OPTIONS) and the extensions
//! creation, creation-with-upload, termination, expiration and checksum (sha1, as the spec
//! requires, and blake3).
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
use barge_proto::tree::hex;
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
    h.insert("tus-extension", HeaderValue::from_static(EXTENSIONS));
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
    if headers.contains_key("upload-concat") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "concatenation is not supported yet",
        );
    }
    let Some(size) = header_u64(headers, "upload-length") else {
        let why = if headers.contains_key("upload-defer-length") {
            "Upload-Defer-Length is not supported yet: send Upload-Length"
        } else {
            "Upload-Length is required"
        };
        return refuse(StatusCode::BAD_REQUEST, why);
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
    let path = path.trim_matches('/').to_owned();
    if let Err(e) = session.admit(&path, size, 0) {
        return store_refusal(&e);
    }
    let upload = Upload {
        path,
        size,
        root: session.root().map(str::to_owned),
        metadata: raw,
        expires_ms: now_ms() + face.expiry.as_millis() as u64,
        stored: None,
        digest: None,
    };
    if let Err(r) = save(&session, &id, &upload).await {
        return r;
    }
    info!(%peer, id, path = %upload.path, size, "tus upload created");
    let location = format!("/uploads/{id}");
    let with_data = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == OFFSET_OCTET_STREAM.as_bytes());
    let mut r = if with_data || size == 0 {
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

/// Where upload `id` continues from: its size once stored, else the verified bytes kept.
async fn offset(session: &Session, id: &str, upload: &Upload) -> Result<u64, StoreError> {
    if upload.stored.is_some() {
        return Ok(upload.size);
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
    h.insert("upload-length", header_value(&upload.size.to_string()));
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
    let Some(claimed) = header_u64(headers, "upload-offset") else {
        return refuse(StatusCode::BAD_REQUEST, "Upload-Offset is required");
    };
    let at = match offset(session, id, &upload).await {
        Ok(o) => o,
        Err(e) => return store_refusal(&e),
    };
    if claimed != at {
        let mut r = refuse(
            StatusCode::CONFLICT,
            format!("Upload-Offset is {claimed}, but the upload continues at {at}"),
        );
        r.headers_mut()
            .insert("upload-offset", header_value(&at.to_string()));
        return r;
    }
    if upload.stored.is_some() {
        return done(&upload);
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
    if receiver.received() < upload.size {
        let kept = receiver.verified();
        receiver.suspend().await;
        let mut r = StatusCode::NO_CONTENT.into_response();
        r.headers_mut()
            .insert("upload-offset", header_value(&kept.to_string()));
        return r;
    }
    match receiver.finish(None).await {
        Ok(stored) => {
            let folder = upload.path.rsplit_once('/').map(|(d, _)| d);
            let name = match folder {
                Some(d) => format!("{d}/{}", stored.name),
                None => stored.name.clone(),
            };
            upload.stored = Some(name);
            upload.digest = stored.digest.as_ref().map(hex);
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

/// Throws an unfinished upload away: its kept bytes and its description.
async fn drop_upload(session: &Session, id: &str, upload: &Upload) {
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
