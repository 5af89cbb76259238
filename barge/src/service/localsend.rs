//! The LocalSend v2 front end (`barge serve --localsend`): the upload API over HTTPS
//! (`/api/localsend/v2/prepare-upload`, `/upload`, `/cancel`, `/info`, `/register`), decoded
//! here and handed to the same transfer core as every other front end (name rule, limits,
//! quota, BLAKE3 computed by the server, temp + publish); and the multicast presence on
//! 224.0.0.167:53317 that lets LocalSend apps list barge as a `server` device.

#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use barge_proto::localsend::{
    DeviceInfo, MAX_INFO, MAX_PREPARE, PrepareAnswer, parse_info, parse_prepare,
};
use barge_proto::tree::hex;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::http::{Peer, Routes, denied, refuse, store_refusal};
use crate::auth::FailureBrake;
use crate::lan::{AnswerLimit, Interfaces};
use crate::store::{StoreError, Version};
use crate::transfer::{Action, Core, Put, Session};

/// Sessions open at once at most (each may hold up to 10,000 files).
const MAX_SESSIONS: usize = 16;
/// Sessions one address may hold open: a sender cannot take every slot.
const MAX_SESSIONS_PER_ADDRESS: usize = 4;
/// A session nobody uploads to for this long is forgotten.
const SESSION_IDLE: Duration = Duration::from_secs(600);

/// Who may send.
#[derive(Debug, Clone)]
pub enum Admission {
    /// `--localsend-pin`: the sender must give this PIN.
    Pin(String),
    /// The server has a token file: the PIN field carries a token with the upload right.
    Tokens,
    /// Neither: senders on this machine or its subnets only, each session logged.
    Neighbours,
}

/// The LocalSend front end: the core it feeds and the sessions under way.
#[derive(Debug)]
pub struct LocalSendFace {
    core: Core,
    me: DeviceInfo,
    admission: Admission,
    brake: FailureBrake,
    sessions: Mutex<HashMap<String, Arc<Transfer>>>,
}

/// One `prepare-upload` accepted: its files, who may upload them, and how to stop it.
#[derive(Debug)]
struct Transfer {
    peer: IpAddr,
    alias: String,
    session: Session,
    files: Mutex<HashMap<String, Slot>>,
    cancel: CancellationToken,
    touched: Mutex<Instant>,
}

#[derive(Debug, Clone)]
struct Slot {
    token: String,
    path: String,
    size: u64,
    sha256: Option<String>,
    state: SlotState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Waiting,
    Receiving,
    Done,
}

impl LocalSendFace {
    /// A face over `core` answering as `me` (alias, fingerprint, port), admitting as told.
    pub fn new(core: Core, me: DeviceInfo, admission: Admission) -> Self {
        Self {
            core,
            me,
            admission,
            brake: FailureBrake::new(5, Duration::from_secs(60)),
            sessions: Mutex::default(),
        }
    }

    /// Our device info, as answered to `/info` and `/register` and multicast.
    pub fn me(&self) -> &DeviceInfo {
        &self.me
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Transfer>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets sessions left idle (their sender went away without cancelling); a session with
    /// a file being received is not idle, however long that file takes.
    fn sweep(&self) {
        self.sessions().retain(|_, t| {
            let idle = t.touched.lock().map(|t| t.elapsed()).unwrap_or_default();
            let receiving = t
                .files
                .lock()
                .map(|f| f.values().any(|s| s.state == SlotState::Receiving))
                .unwrap_or(true);
            let keep = receiving || idle < SESSION_IDLE;
            if !keep {
                t.cancel.cancel();
            }
            keep
        });
    }

    /// The session for a `prepare-upload` from `peer` with `pin`, or the refusal.
    fn admit(&self, peer: SocketAddr, pin: Option<&str>) -> Result<Session, Response> {
        if let Some(wait) = self.brake.locked_out(peer.ip()) {
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many wrong PINs: wait {} s", wait.as_secs().max(1)),
            ));
        }
        match &self.admission {
            Admission::Pin(want) => match pin {
                None => Err(refuse(StatusCode::UNAUTHORIZED, "PIN required")),
                Some(p) if same_secret(p, want) => Ok(self.core.unauthenticated(peer)),
                Some(_) => {
                    self.brake.failed(peer.ip());
                    warn!(%peer, "LocalSend: wrong PIN");
                    Err(refuse(StatusCode::UNAUTHORIZED, "Invalid PIN"))
                }
            },
            Admission::Tokens => {
                let Some(token) = pin else {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "PIN required (a token with the upload right)",
                    ));
                };
                let mut session = self.core.session(peer);
                session.authenticate(token).map_err(|d| {
                    let mut r = denied(&d);
                    if r.status() == StatusCode::UNAUTHORIZED {
                        r = refuse(StatusCode::UNAUTHORIZED, "Invalid PIN");
                    }
                    r
                })?;
                session.check(Action::Upload).map_err(|d| denied(&d))?;
                Ok(session)
            }
            Admission::Neighbours => {
                if Interfaces::now().is_local(peer.ip()) {
                    Ok(self.core.session(peer))
                } else {
                    warn!(%peer, "LocalSend: refused a sender from outside this machine's subnets");
                    Err(refuse(
                        StatusCode::FORBIDDEN,
                        "this receiver takes files from its own network only (or with a PIN)",
                    ))
                }
            }
        }
    }
}

impl Routes for LocalSendFace {
    fn router(self: &Arc<Self>, peer: SocketAddr) -> Router {
        Router::new()
            .route("/api/localsend/v2/info", get(info_route))
            .route("/api/localsend/v2/register", post(register))
            .route("/api/localsend/v2/prepare-upload", post(prepare))
            .route("/api/localsend/v2/upload", post(upload))
            .route("/api/localsend/v2/cancel", post(cancel))
            .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such route") })
            .layer(Extension(Peer(peer)))
            .with_state(self.clone())
    }

    /// HTTP/1.1 only, as LocalSend apps speak it: an early refusal (a wrong PIN, a cancelled
    /// session) then ends the connection, where h2 would reset a stream some clients take for
    /// a protocol error.
    fn alpn(&self) -> Vec<Vec<u8>> {
        vec![b"http/1.1".to_vec()]
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn info_route(State(face): State<Arc<LocalSendFace>>) -> Response {
    json(StatusCode::OK, face.me())
}

/// Whether a request declares a body over `max` bytes: refused before a byte of it is read, so
/// a client waiting for `100 Continue` gets the refusal rather than a connection cut mid-body.
fn declared_over(headers: &HeaderMap, max: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
}

async fn register(
    State(face): State<Arc<LocalSendFace>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if declared_over(&headers, MAX_INFO) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "device info too long");
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_INFO).await else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "device info too long");
    };
    match parse_info(&bytes) {
        Ok(other) => {
            debug!(%peer, alias = %other.alias, "LocalSend device registered");
            json(StatusCode::OK, face.me())
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

/// Compares two secrets in time independent of where they differ (BLAKE3 digests compare in
/// constant time).
fn same_secret(given: &str, want: &str) -> bool {
    blake3::hash(given.as_bytes()) == blake3::hash(want.as_bytes())
}

fn random_hex() -> String {
    format!(
        "{:016x}{:016x}",
        crate::lan::random_u64(),
        crate::lan::random_u64()
    )
}

async fn prepare(
    State(face): State<Arc<LocalSendFace>>,
    Extension(Peer(peer)): Extension<Peer>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    face.sweep();
    let session = match face.admit(peer, q.get("pin").map(String::as_str)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(bytes) = (if declared_over(&headers, MAX_PREPARE) {
        Err(())
    } else {
        axum::body::to_bytes(body, MAX_PREPARE)
            .await
            .map_err(|_| ())
    }) else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("prepare-upload body over {MAX_PREPARE} bytes"),
        );
    };
    let p = match parse_prepare(&bytes) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    {
        let sessions = face.sessions();
        let mine = sessions.values().filter(|t| t.peer == peer.ip()).count();
        if sessions.len() >= MAX_SESSIONS || mine >= MAX_SESSIONS_PER_ADDRESS {
            return refuse(StatusCode::TOO_MANY_REQUESTS, "too many transfers at once");
        }
    }
    let mut slots = HashMap::new();
    let mut paths = std::collections::HashSet::new();
    let mut bytes_total: u64 = 0;
    for (id, f) in &p.files {
        // A shared folder arrives as `folder/name`: kept as a path, each part by the name rule.
        let path = f.file_name.trim_matches('/').to_owned();
        if let Err(e) = session.admit(&path, f.size, 0) {
            return store_refusal(&e);
        }
        if !paths.insert(path.clone()) {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("{path:?} is offered twice"),
            );
        }
        bytes_total = bytes_total.saturating_add(f.size);
        slots.insert(
            id.clone(),
            Slot {
                token: random_hex(),
                path,
                size: f.size,
                sha256: f.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
                state: SlotState::Waiting,
            },
        );
    }
    let session_id = random_hex();
    let answer = PrepareAnswer {
        session_id: session_id.clone(),
        files: slots
            .iter()
            .map(|(id, s)| (id.clone(), s.token.clone()))
            .collect(),
    };
    let alias = p.info.alias.clone();
    let files = slots.len();
    let transfer = Arc::new(Transfer {
        peer: peer.ip(),
        alias: alias.clone(),
        session,
        files: Mutex::new(slots),
        cancel: CancellationToken::new(),
        touched: Mutex::new(Instant::now()),
    });
    face.sessions().insert(session_id.clone(), transfer);
    if matches!(face.admission, Admission::Neighbours) {
        warn!(
            %peer, alias, files, bytes = bytes_total,
            "LocalSend: accepting files from a sender on this network without a PIN \
             (--localsend-pin requires one)"
        );
    } else {
        info!(%peer, alias, files, bytes = bytes_total, "LocalSend: transfer accepted");
    }
    json(StatusCode::OK, &answer)
}

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    q.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

async fn upload(
    State(face): State<Arc<LocalSendFace>>,
    Extension(Peer(peer)): Extension<Peer>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (Some(sid), Some(fid), Some(token)) = (
        param(&q, "sessionId"),
        param(&q, "fileId"),
        param(&q, "token"),
    ) else {
        return refuse(StatusCode::BAD_REQUEST, "Missing parameters");
    };
    let Some(transfer) = face.sessions().get(sid).cloned() else {
        return refuse(StatusCode::FORBIDDEN, "no such session");
    };
    if transfer.peer != peer.ip() {
        return refuse(StatusCode::FORBIDDEN, "Invalid token or IP address");
    }
    let slot = {
        let mut files = transfer.files.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = files.get_mut(fid) else {
            return refuse(StatusCode::FORBIDDEN, "Invalid token or IP address");
        };
        if !same_secret(&slot.token, token) {
            return refuse(StatusCode::FORBIDDEN, "Invalid token or IP address");
        }
        match slot.state {
            SlotState::Waiting => {}
            SlotState::Receiving => {
                return refuse(StatusCode::CONFLICT, "this file is being received");
            }
            SlotState::Done => return refuse(StatusCode::CONFLICT, "this file was received"),
        }
        slot.state = SlotState::Receiving;
        slot.clone()
    };
    *transfer.touched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    let result = receive(&transfer, sid, fid, &slot, &headers, body).await;
    *transfer.touched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    let mut files = transfer.files.lock().unwrap_or_else(|p| p.into_inner());
    let state = if result.is_ok() {
        SlotState::Done
    } else {
        SlotState::Waiting // the sender may try this file again
    };
    if let Some(s) = files.get_mut(fid) {
        s.state = state;
    }
    let all_done = files.values().all(|s| s.state == SlotState::Done);
    drop(files);
    if all_done {
        face.sessions().remove(sid);
    }
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(r) => r,
    }
}

/// Streams one file's body into the core; publishes it only whole, matching its SHA-256 (when
/// the sender gave one) and before the session is cancelled. Anything else leaves nothing.
async fn receive(
    transfer: &Transfer,
    sid: &str,
    fid: &str,
    slot: &Slot,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), Response> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len != slot.size
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("a body of {len} bytes for a file of {}", slot.size),
        ));
    }
    let put = Put {
        resumable: false,
        version: Version::Upload(
            *blake3::hash(format!("localsend {sid} {fid}").as_bytes()).as_bytes(),
        ),
        ..Put::new(&slot.path, slot.size)
    };
    let mut receiver = transfer
        .session
        .receive(put)
        .await
        .map_err(|e| store_refusal(&e))?;
    let mut sha = slot
        .sha256
        .as_ref()
        .map(|_| ring::digest::Context::new(&ring::digest::SHA256));
    let mut stream = body.into_data_stream();
    let failure: Option<Response> = loop {
        let piece = tokio::select! {
            p = stream.next() => p,
            () = transfer.cancel.cancelled() => {
                break Some(refuse(StatusCode::CONFLICT, "the session was cancelled"));
            }
        };
        match piece {
            None => break None,
            Some(Err(e)) => {
                break Some(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("the body broke off: {e}"),
                ));
            }
            Some(Ok(bytes)) => {
                if let Some(ctx) = &mut sha {
                    ctx.update(&bytes);
                }
                if let Err(e) = receiver.write(bytes).await {
                    break Some(store_refusal(&e));
                }
            }
        }
    };
    if let Some(r) = failure {
        receiver.discard().await;
        info!(peer = %transfer.peer, path = %slot.path, "LocalSend: upload not finished, nothing stored");
        return Err(r);
    }
    if receiver.received() != slot.size {
        let got = receiver.received();
        receiver.discard().await;
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "the body ended after {got} of {} bytes: nothing stored",
                slot.size
            ),
        ));
    }
    let sha = sha.map(|ctx| {
        ctx.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    if sha.is_some() && sha != slot.sha256 {
        receiver.discard().await;
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the content does not match its sha256: nothing stored",
        ));
    }
    if transfer.cancel.is_cancelled() {
        receiver.discard().await;
        return Err(refuse(StatusCode::CONFLICT, "the session was cancelled"));
    }
    let stored = receiver.finish(None).await.map_err(|e| match e {
        StoreError::Integrity(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
        e => store_refusal(&e),
    })?;
    info!(
        peer = %transfer.peer, alias = %transfer.alias, path = %slot.path, stored = %stored.name,
        size = stored.size, digest = %stored.digest.as_ref().map(hex).unwrap_or_default(),
        "LocalSend: file stored"
    );
    Ok(())
}

async fn cancel(
    State(face): State<Arc<LocalSendFace>>,
    Extension(Peer(peer)): Extension<Peer>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(sid) = param(&q, "sessionId") else {
        return refuse(StatusCode::BAD_REQUEST, "Missing parameters");
    };
    let mut sessions = face.sessions();
    match sessions.get(sid) {
        Some(t) if t.peer != peer.ip() => {
            refuse(StatusCode::FORBIDDEN, "Invalid token or IP address")
        }
        Some(_) => {
            if let Some(t) = sessions.remove(sid) {
                t.cancel.cancel();
                info!(%peer, alias = %t.alias, "LocalSend: the sender cancelled");
            }
            StatusCode::OK.into_response()
        }
        None => StatusCode::OK.into_response(),
    }
}

/// LocalSend's multicast presence: announces `me` to the group at start and answers other
/// devices' announcements (the protocol's UDP answer, `announce: false`), at most a few answers
/// a second; datagrams that are not device infos are ignored and counted. Runs until dropped.
pub async fn multicast(
    me: DeviceInfo,
    group: std::net::Ipv4Addr,
    port: u16,
) -> std::io::Result<()> {
    let ifaces = Interfaces::now();
    let socket = crate::lan::group_socket_v4(group, port, &ifaces)?;
    let mut hello = me.clone();
    hello.announce = Some(true);
    let mut answer = me.clone();
    answer.announce = Some(false);
    let (hello, answer) = (
        serde_json::to_vec(&hello).map_err(std::io::Error::other)?,
        serde_json::to_vec(&answer).map_err(std::io::Error::other)?,
    );
    crate::lan::send_to_group_v4(&socket, group, port, &ifaces, &hello).await;
    let mut limit = AnswerLimit::new(5, 1);
    let (mut ignored, mut answered) = (0u64, 0u64);
    let mut logged = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut buf = vec![0u8; MAX_INFO + 1];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Ok(other) = parse_info(&buf[..n]) else {
                    ignored += 1;
                    continue;
                };
                if other.fingerprint == me.fingerprint || other.announce != Some(true) {
                    continue;
                }
                if !limit.allow(from.ip()) {
                    ignored += 1;
                    continue;
                }
                debug!(%from, alias = %other.alias, "LocalSend device announced itself");
                let ifaces = Interfaces::now();
                crate::lan::send_to_group_v4(&socket, group, port, &ifaces, &answer).await;
                answered += 1;
            }
            _ = tick.tick() => {
                if (ignored, answered) != logged {
                    info!(answered, ignored, "LocalSend multicast since start");
                    logged = (ignored, answered);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(face: &LocalSendFace, idle: Duration, state: SlotState) -> Arc<Transfer> {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let slot = Slot {
            token: "t".into(),
            path: "a.bin".into(),
            size: 1,
            sha256: None,
            state,
        };
        Arc::new(Transfer {
            peer: peer.ip(),
            alias: "test".into(),
            session: face.core.session(peer),
            files: Mutex::new(HashMap::from([("1".to_owned(), slot)])),
            cancel: CancellationToken::new(),
            touched: Mutex::new(
                Instant::now()
                    .checked_sub(idle)
                    .unwrap_or_else(Instant::now),
            ),
        })
    }

    #[test]
    fn idle_sessions_are_swept_but_never_one_receiving_a_file() {
        let core = Core::new(
            Arc::new(crate::store::MemoryStore::default()),
            crate::transfer::Policy::default(),
        );
        let me = parse_info(br#"{"alias":"b","version":"2.1","fingerprint":"f"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let face = LocalSendFace::new(core, me, Admission::Neighbours);
        let long = SESSION_IDLE + Duration::from_secs(60);
        let idle = transfer(&face, long, SlotState::Waiting);
        let busy = transfer(&face, long, SlotState::Receiving);
        let fresh = transfer(&face, Duration::ZERO, SlotState::Waiting);
        for (id, t) in [("idle", &idle), ("busy", &busy), ("fresh", &fresh)] {
            face.sessions().insert(id.into(), t.clone());
        }
        face.sweep();
        let mut left: Vec<String> = face.sessions().keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["busy", "fresh"]);
        assert!(
            idle.cancel.is_cancelled(),
            "the idle session's uploads are stopped"
        );
        assert!(!busy.cancel.is_cancelled());
    }
}
