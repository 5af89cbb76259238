//! The HTTP face: tus 1.0 resumable uploads at `/uploads/` ([`tus`]), downloads at
//! `/files/PATH` (ranges, ETag = the BLAKE3 digest), listings at `/api/ls`, and a browser page at
//! `/` (`page.html`, embedded) that uses them — one more front end
//! over the same transfer core, store, tokens (`Authorization: Bearer`) and TLS. HTTP/1.1 and
//! h2 (hyper's automatic builder; h2 over TLS by ALPN).

// A refusal is a ready axum `Response`, returned at once up the handler: boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod tus;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use barge_proto::tree::{CHUNK, hex};
use futures::StreamExt;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::store::StoreError;
use crate::transfer::{Action, Core, Denied, SendError, Session};

/// The HTTP front end's configuration and the core it serves.
#[derive(Debug, Clone)]
pub struct HttpFace {
    core: Core,
    /// `--http-cors ORIGIN`: the one origin whose pages may call this server.
    cors: Option<HeaderValue>,
    /// How long an unfinished tus upload waits for its client.
    expiry: std::time::Duration,
    /// tus uploads a request of this server is writing: a second PATCH at the same time is
    /// refused (423) instead of starting a copy of its own.
    writing: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl HttpFace {
    /// A face over `core`, CORS off.
    pub fn new(core: Core) -> Self {
        Self {
            core,
            cors: None,
            expiry: std::time::Duration::from_secs(24 * 3600),
            writing: Arc::default(),
        }
    }

    /// How long an unfinished upload waits for its client (the store's partial TTL).
    pub fn with_expiry(mut self, expiry: std::time::Duration) -> Self {
        self.expiry = expiry;
        self
    }

    /// Allows pages from `origin` (e.g. `https://files.example.org`) to call this server.
    pub fn with_cors(mut self, origin: Option<HeaderValue>) -> Self {
        self.cors = origin;
        self
    }
}

/// A face served by [`serve`]: its routes for a connection from `peer`.
pub trait Routes: Send + Sync + 'static {
    fn router(self: &Arc<Self>, peer: SocketAddr) -> Router;

    /// The protocols offered by ALPN over TLS, preferred first.
    fn alpn(&self) -> Vec<Vec<u8>> {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    }
}

impl Routes for HttpFace {
    fn router(self: &Arc<Self>, peer: SocketAddr) -> Router {
        Router::new()
            .route("/uploads", any(tus::collection))
            .route("/uploads/", any(tus::collection))
            .route("/uploads/{id}", any(tus::upload))
            .route("/files/{*path}", any(download))
            .route("/api/ls", get(listing))
            .route("/", get(page))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(self.clone(), cors))
            .layer(Extension(Peer(peer)))
            .with_state(self.clone())
    }
}

/// The client's address (per connection).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// Serves HTTP (and HTTPS with `config.tls`) on `listener` until `shutdown` resolves, under the
/// framework's limits: at most `max_connections` at once (and `max_connections_per_ip` from one
/// address), a request header (or TLS handshake) within `header_timeout`, and a connection that
/// moves no byte for `idle_timeout` closed.
pub async fn serve<F: Routes>(
    listener: TcpListener,
    face: Arc<F>,
    config: crate::server::ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let tls = config.tls.clone().map(|tls| {
        let mut tls = (*tls).clone();
        tls.alpn_protocols = face.alpn();
        tokio_rustls::TlsAcceptor::from(Arc::new(tls))
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    let per_ip: Arc<PerIp> = Arc::default();
    tokio::pin!(shutdown);
    loop {
        // A free slot first: beyond the cap, clients wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = &mut shutdown => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let ip = peer.ip();
        // Answers are small writes after a request: without this, Nagle holds each one until
        // the client's delayed ACK (tens of ms per request for a client sending many PATCHes).
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        if let Some(cap) = config.max_connections_per_ip {
            let mut counts = per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(ip).or_default();
            if *n >= cap {
                debug!(%peer, "too many HTTP connections from this address: closed");
                continue;
            }
            *n += 1;
        }
        let service = hyper_util::service::TowerToHyperService::new(face.router(peer));
        let tls = tls.clone();
        let (header_timeout, idle) = (config.header_timeout, config.idle_timeout);
        let per_ip = per_ip.clone();
        let counted = config.max_connections_per_ip.is_some();
        tokio::spawn(async move {
            let _permit = permit;
            // A client must start its request (or TLS handshake) within the header timeout:
            // hyper's own timeout starts only once bytes arrive, and a connection that never
            // says a word would hold a slot until the idle timeout.
            let mut first = [0u8; 1];
            let spoke = tokio::time::timeout(header_timeout, stream.peek(&mut first)).await;
            if !matches!(spoke, Ok(Ok(n)) if n > 0) {
                debug!(%peer, "no request within the header timeout: closed");
                release(&per_ip, ip, counted);
                return;
            }
            let stream = crate::net::IdleTimeout::new(stream, idle);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_header_list_size(64 * 1024);
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            builder
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await
                        }
                        _ => Ok(()),
                    }
                }
                None => {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
            release(&per_ip, ip, counted);
        });
    }
}

type PerIp = std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>;

/// One connection from `ip` ended (when connections per address are counted).
fn release(per_ip: &PerIp, ip: std::net::IpAddr, counted: bool) {
    if !counted {
        return;
    }
    let mut counts = per_ip.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = counts.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&ip);
        }
    }
}

/// A short refusal: a status and a one-line body (for people; clients read the status).
pub(crate) fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// The status for a store refusal.
fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Name(_) | StoreError::BadRequest(_) | StoreError::SizeMismatch { .. } => {
            StatusCode::BAD_REQUEST
        }
        StoreError::IntoItself(_) => StatusCode::BAD_REQUEST,
        StoreError::TooLarge { .. } | StoreError::QuotaExceeded { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        StoreError::NoSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::Conflict(_) | StoreError::NotAFolder(_) | StoreError::NotEmpty(_) => {
            StatusCode::CONFLICT
        }
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Busy(_) => StatusCode::LOCKED,
        StoreError::Integrity(_) => tus::CHECKSUM_MISMATCH,
        StoreError::BadDirectory(_) | StoreError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        StoreError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
    }
}

pub(crate) fn store_refusal(e: &StoreError) -> Response {
    refuse(store_status(e), e)
}

pub(crate) fn denied(d: &Denied) -> Response {
    let status = match d {
        Denied::NoToken | Denied::WrongToken => StatusCode::UNAUTHORIZED,
        Denied::LockedOut { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::FORBIDDEN,
    };
    let mut r = refuse(status, d);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"barge\""),
        );
    }
    r
}

/// The request's session: authenticated by its bearer token, checked for `action`.
fn session(
    face: &HttpFace,
    peer: SocketAddr,
    headers: &HeaderMap,
    action: Action,
) -> Result<Session, Response> {
    let mut session = face.core.session(peer);
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "expected Authorization: Bearer TOKEN",
                )
            })?;
        session.authenticate(token).map_err(|d| denied(&d))?;
    }
    session.check(action).map_err(|d| denied(&d))?;
    Ok(session)
}

/// The browser page: written for barge, embedded in the binary, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Only this server: the page's own inline script and style, requests to itself.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

async fn not_found() -> Response {
    refuse(StatusCode::NOT_FOUND, "no such page")
}

/// CORS: only for the configured origin; preflights answered here.
async fn cors(
    State(face): State<Arc<HttpFace>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(allowed) = face.cors.clone() else {
        return next.run(request).await;
    };
    let same = request.headers().get(header::ORIGIN) == Some(&allowed);
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight && same {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    if same {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "Authorization, Content-Type, Range, If-None-Match, Tus-Resumable, Upload-Length, \
                 Upload-Offset, Upload-Metadata, Upload-Checksum, Upload-Defer-Length, \
                 Upload-Concat, X-HTTP-Method-Override",
            ),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "Location, ETag, Content-Range, Tus-Resumable, Tus-Version, Tus-Extension, \
                 Tus-Max-Size, Tus-Checksum-Algorithm, Upload-Offset, Upload-Length, \
                 Upload-Metadata, Upload-Expires",
            ),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
    }
    response
}

/// `GET|HEAD /files/PATH`: the file, whole or one byte range, with its BLAKE3 digest as ETag.
async fn download(
    State(face): State<Arc<HttpFace>>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD");
    }
    let session = match session(&face, peer, &headers, Action::Download) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let meta = match session.store().stat(&path).await {
        Ok(Some(m)) => m,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, format!("{path:?} not found")),
        Err(e) => return store_refusal(&e),
    };
    let etag = format!("\"{}\"", hex(&meta.digest));
    let modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(meta.mtime.max(0) as u64);
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, header_value(&etag));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::LAST_MODIFIED,
        header_value(&httpdate::fmt_http_date(modified)),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    let size = meta.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => match parse_range(spec, size) {
            Some(r) => Some(r),
            None => {
                h.insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{size}")),
                );
                return (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response();
            }
        },
    };
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { end - start + 1 };
    h.insert(header::CONTENT_LENGTH, header_value(&len.to_string()));
    let status = if range.is_some() {
        h.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {start}-{end}/{size}")),
        );
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    if method == Method::HEAD || len == 0 {
        return (status, h).into_response();
    }
    // Read from the chunk holding `start`, of exactly the version whose ETag was sent.
    let first = start - start % CHUNK;
    let outgoing = match session.send(&path, first, Some(&hex(&meta.digest))).await {
        Ok(o) => o,
        Err(SendError::Store(e)) => return store_refusal(&e),
        Err(SendError::Changed(_)) => {
            return refuse(StatusCode::CONFLICT, "the file changed: ask again");
        }
    };
    info!(%peer, path, start, len, "download over HTTP");
    let mut skip = start - first;
    let mut left = len;
    let stream =
        futures::stream::unfold(
            outgoing,
            |mut o| async move { o.next().await.map(|c| (c, o)) },
        )
        .map(move |chunk| {
            let mut data = chunk?.data;
            let cut = (skip as usize).min(data.len());
            let _ = data.split_to(cut);
            skip -= cut as u64;
            let take = (left as usize).min(data.len());
            left -= take as u64;
            Ok::<_, std::io::Error>(data.split_to(take))
        })
        .take_while(|r| std::future::ready(r.as_ref().map_or(true, |b| !b.is_empty())));
    (status, h, Body::from_stream(stream)).into_response()
}

/// A header value from text barge made (always visible ASCII).
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// One byte range of a `size`-byte file: `bytes=A-B`, `bytes=A-`, `bytes=-N`; `None` if it cannot
/// be served (several ranges are served as the first).
fn parse_range(spec: &str, size: u64) -> Option<(u64, u64)> {
    let first = spec.strip_prefix("bytes=")?.split(',').next()?.trim();
    let (a, b) = first.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 {
                return None;
            }
            (size.saturating_sub(n), size.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, size.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(size.checked_sub(1)?),
        ),
    };
    (start <= end && start < size).then_some((start, end))
}

#[derive(Debug, serde::Deserialize)]
struct LsQuery {
    #[serde(default)]
    path: String,
    #[serde(default)]
    recursive: Option<String>,
}

/// `GET /api/ls?path=..&recursive=1`: the entries as `barge ls --json` prints them, as a JSON
/// array.
async fn listing(
    State(face): State<Arc<HttpFace>>,
    Extension(Peer(peer)): Extension<Peer>,
    Query(q): Query<LsQuery>,
    headers: HeaderMap,
) -> Response {
    let session = match session(&face, peer, &headers, Action::List) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let recursive = q
        .recursive
        .as_deref()
        .is_some_and(|r| matches!(r, "1" | "true" | "yes"));
    match session.list(q.path.trim_matches('/'), recursive).await {
        Ok(Ok(entries)) => {
            let body: Vec<serde_json::Value> = entries
                .into_iter()
                .map(|e| {
                    let mut v = serde_json::to_value(&e).unwrap_or_default();
                    v["event"] = serde_json::json!("entry");
                    v
                })
                .collect();
            axum::Json(body).into_response()
        }
        Ok(Err(e)) => store_refusal(&e),
        Err(d) => denied(&d),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-5000", 1000), Some((0, 999)));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some((990, 999)));
        assert_eq!(parse_range("bytes=0-0,5-9", 1000), Some((0, 0)));
        for bad in [
            "bytes=1000-",
            "bytes=5-2",
            "bytes=-0",
            "items=0-1",
            "bytes=x-1",
            "bytes=0-1",
        ] {
            let size = if bad == "bytes=0-1" { 0 } else { 1000 };
            assert_eq!(parse_range(bad, size), None, "{bad}");
        }
    }
}
