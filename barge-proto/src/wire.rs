//! barge's own protocol, version 1: a preface, then typed, length-prefixed frames; requests and
//! replies are JSON, file data travels in 1 MiB chunks each carrying its BLAKE3 chaining value.
//! `docs/PROTOCOL.md` is the byte-level specification; its test vectors are checked against this
//! module.
//!
//! ```text
//! preface (8 bytes, each side once):  "BRG" 0xFF | version u16 BE | flags u16 BE (0)
//! frame:                              kind u8 | length u32 BE | payload (length bytes)
//!   kind 1 request  payload = JSON object, 1..=65536 bytes
//!   kind 2 reply    payload = JSON object, 1..=65536 bytes
//!   kind 3 data     payload = 32-byte chunk CV | chunk bytes (0..=1 MiB)
//! ```
//!
//! The preface's first four bytes, read as the lesson's little-endian int32 length prefix, are
//! negative (0xFF in the top byte), which no valid lesson upload starts with: a server tells the two
//! formats apart from a connection's first four bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::tree::{CHUNK, Cv};

/// The first four bytes of every barge v1 connection, in both directions.
pub const MAGIC: [u8; 4] = *b"BRG\xff";
/// Length of the preface: magic, version, flags.
pub const PREFACE_LEN: usize = 8;
/// The protocol version this code speaks.
pub const VERSION: u16 = 1;
/// Largest JSON payload of a request or reply.
pub const MAX_JSON: usize = 65536;
/// Largest data payload: a CV and one chunk.
pub const MAX_DATA: usize = 32 + CHUNK as usize;
/// Frame header: kind and length.
pub const FRAME_HEADER: usize = 5;
/// Most connections one striped `put` may use (its own included): each may hold one chunk at the
/// server while it waits for its turn, so this bounds a striped upload's memory there.
pub const MAX_STREAMS: u32 = 16;

const KIND_REQUEST: u8 = 1;
const KIND_REPLY: u8 = 2;
const KIND_DATA: u8 = 3;

/// Why bytes are not valid barge v1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The preface does not start with [`MAGIC`].
    #[error("not a barge connection (bad preface)")]
    BadMagic,
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A frame longer than its kind allows.
    #[error("frame of kind {kind} is {len} bytes, over the limit of {max}")]
    TooLong {
        /// The frame kind.
        kind: u8,
        /// Its declared length.
        len: u32,
        /// The kind's limit.
        max: usize,
    },
    /// A data frame too short to hold its CV, or an empty JSON frame.
    #[error("frame of kind {kind} is too short ({len} bytes)")]
    TooShort {
        /// The frame kind.
        kind: u8,
        /// Its length.
        len: u32,
    },
    /// A request or reply that is not valid JSON for its kind.
    #[error("bad message: {0}")]
    BadJson(String),
}

/// A request from client to server. Every request gets exactly one reply (a listing may span
/// several reply frames, the last with `more: false`); `end` is part of its `put`, not a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Authenticate the connection (first request, when the server has tokens). The server's rights
    /// for the token then apply to every later request on the connection.
    Auth {
        /// Request id, echoed in the reply.
        id: u64,
        /// The secret token.
        token: String,
    },
    /// How much of `path` (of `size` bytes) is already kept from an interrupted upload.
    Probe {
        /// Request id, echoed in the reply.
        id: u64,
        /// Relative path, `/`-separated.
        path: String,
        /// The file's size.
        size: u64,
    },
    /// Upload `path`: data frames from byte `from` (a chunk boundary) follow, then `end`.
    Put {
        /// Request id, echoed in the reply.
        id: u64,
        /// Relative path, `/`-separated.
        path: String,
        /// The file's size.
        size: u64,
        /// First byte sent: 0, or the offset a `probe` returned.
        from: u64,
        /// Replace the file stored at `path`, which must have this digest (hex): an update of
        /// the version the client saw, never of one it did not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
        /// With `replaces`: the chunks (by index, e.g. `0-4,7,9-1023`, see [`parse_chunk_set`])
        /// the server takes from the version it replaces instead of receiving them; no data
        /// frame is sent for them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reuse: Option<String>,
        /// The file's modification time at the sender (seconds since the Unix epoch): the stored
        /// file gets it, so a later send can tell an unchanged file by size and time alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime: Option<i64>,
        /// Striped over several connections (see [`Stripe`]): this connection sends stream 0's
        /// chunks, others `join` with the stripe's key and send theirs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stripe: Option<Stripe>,
    },
    /// Another connection's share of a striped `put` (see [`Stripe`]): data frames for chunks
    /// `first + stream`, `first + stream + streams`, ... follow (`first` = the put's
    /// `from / 2^20`), with no `end`; the reply comes once the last of them is verified.
    Join {
        /// Request id, echoed in the reply.
        id: u64,
        /// The stripe's key, as its `put` gave it.
        key: String,
        /// Which stream this connection carries: 1 ..= streams - 1 (the put's own is 0).
        stream: u32,
    },
    /// The chunk CVs of a stored file, in pages (see [`Reply::cvs`]): what an update compares.
    Cvs {
        /// Request id.
        id: u64,
        /// Relative path.
        path: String,
    },
    /// The last frame of a `put`: the whole file's BLAKE3 digest (hex).
    End {
        /// The `put`'s id.
        id: u64,
        /// BLAKE3 of the whole file, 64 hex digits.
        digest: String,
    },
    /// Create a folder (and its parents).
    Mkdir {
        /// Request id.
        id: u64,
        /// Relative path.
        path: String,
    },
    /// Remove a file or an empty folder; with `recursive`, a folder and everything below it.
    Delete {
        /// Request id.
        id: u64,
        /// Relative path (never the top).
        path: String,
        /// Remove a folder's contents too.
        #[serde(default)]
        recursive: bool,
    },
    /// Rename a file or folder; `to`'s missing parents are created, and an existing `to` is never
    /// replaced (`conflict`).
    Move {
        /// Request id.
        id: u64,
        /// The current path.
        from: String,
        /// The new path.
        to: String,
    },
    /// List a folder (or one file).
    List {
        /// Request id.
        id: u64,
        /// Relative path; empty for the top.
        path: String,
        /// Include everything below, with relative paths.
        recursive: bool,
    },
    /// Link measurement: `size` bytes of data frames follow, which the server counts and drops
    /// (no disk, no hashing); the reply comes after the last byte.
    Bench {
        /// Request id.
        id: u64,
        /// Bytes that follow.
        size: u64,
    },
    /// Download `path` from byte `from` (a chunk boundary).
    Get {
        /// Request id.
        id: u64,
        /// Relative path.
        path: String,
        /// First byte wanted.
        from: u64,
        /// Serve the file only if its digest is this (hex): a client resuming a download sends the
        /// digest its kept chunks belong to, and gets `conflict` (no data) if the file changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
}

impl Request {
    /// The request's `op`, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Auth { .. } => "auth",
            Request::Probe { .. } => "probe",
            Request::Put { .. } => "put",
            Request::End { .. } => "end",
            Request::Join { .. } => "join",
            Request::Mkdir { .. } => "mkdir",
            Request::List { .. } => "list",
            Request::Bench { .. } => "bench",
            Request::Get { .. } => "get",
            Request::Cvs { .. } => "cvs",
            Request::Delete { .. } => "delete",
            Request::Move { .. } => "move",
        }
    }

    /// The request's id.
    pub fn id(&self) -> u64 {
        match self {
            Request::Auth { id, .. }
            | Request::Probe { id, .. }
            | Request::Put { id, .. }
            | Request::End { id, .. }
            | Request::Join { id, .. }
            | Request::Mkdir { id, .. }
            | Request::List { id, .. }
            | Request::Bench { id, .. }
            | Request::Get { id, .. }
            | Request::Cvs { id, .. }
            | Request::Delete { id, .. }
            | Request::Move { id, .. } => *id,
        }
    }
}

/// How a `put` is striped: chunk `i` (counted from the put's first chunk) travels on stream
/// `i mod streams`. The key, chosen by the client, names the upload for the other connections'
/// `join`s; it is a secret of the client's (32 hex digits, 128 random bits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stripe {
    /// The key the other connections join with.
    pub key: String,
    /// Connections in all, this one included: 2 ..= [`MAX_STREAMS`].
    pub streams: u32,
}

impl Stripe {
    /// Whether the key has the form the protocol asks for (32 lowercase hex digits) and the
    /// stream count is in range.
    pub fn check(&self) -> Result<(), String> {
        let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if self.key.len() != 32 || !self.key.bytes().all(hex) {
            return Err("stripe key is not 32 lowercase hex digits".into());
        }
        if !(2..=MAX_STREAMS).contains(&self.streams) {
            return Err(format!("streams must be 2 to {MAX_STREAMS}"));
        }
        Ok(())
    }
}

/// Outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Done.
    #[default]
    Ok,
    /// Malformed or out-of-order request.
    BadRequest,
    /// A path component is not a safe name.
    NameRejected,
    /// Over the server's size limit.
    TooLarge,
    /// Not enough free space.
    NoSpace,
    /// The name exists and the server does not overwrite.
    Conflict,
    /// No such file or folder.
    NotFound,
    /// Data did not match its digest.
    Integrity,
    /// Not allowed on this server (downloads disabled) or for this token.
    Forbidden,
    /// No token, or a wrong one, on a server that requires one.
    Unauthorized,
    /// Too many failed authentications from this address: wait before trying again.
    RateLimited,
    /// The server's storage quota would be exceeded.
    QuotaExceeded,
    /// The same upload is in progress on another connection.
    Busy,
    /// Server-side failure.
    Internal,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the listed folder, `/`-separated.
    pub path: String,
    /// True for a folder.
    pub dir: bool,
    /// Size in bytes (0 for folders).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// BLAKE3 hex digest of a file (absent for folders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A reply. Which optional fields are present depends on the request (see PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Reply {
    /// The request's id.
    pub id: u64,
    /// Outcome.
    pub status: Status,
    /// Human-readable explanation of an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// probe: bytes already kept; put error: bytes verified so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// probe: digest of the kept chunks' CVs (see `tree::prefix_digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// put: the final stored path (may differ after a conflict rename).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// put, get: size in bytes; delete: bytes of the files removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// put, get: BLAKE3 hex digest of the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// get: modification time, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// list: a page of entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<Entry>>,
    /// list, cvs: more pages follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<bool>,
    /// cvs: the next chunks' CVs, hex, concatenated (64 digits each), in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cvs: Option<String>,
}

impl Reply {
    /// A success reply for `id` with no fields yet.
    pub fn ok(id: u64) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    /// An error reply.
    pub fn error(id: u64, status: Status, message: impl Into<String>) -> Self {
        Self {
            id,
            status,
            message: Some(message.into()),
            ..Self::default()
        }
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request (client to server).
    Request(Request),
    /// A reply (server to client).
    Reply(Reply),
    /// A chunk of file data and its chaining value.
    Data {
        /// BLAKE3 chaining value of the chunk at its position.
        cv: Cv,
        /// The chunk's bytes.
        data: Bytes,
    },
}

/// The preface for `version`.
pub fn preface(version: u16) -> [u8; PREFACE_LEN] {
    let mut p = [0u8; PREFACE_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..6].copy_from_slice(&version.to_be_bytes());
    p
}

/// Parses a preface: `Ok(None)` if `buf` is shorter than [`PREFACE_LEN`], else the version.
pub fn parse_preface(buf: &[u8]) -> Result<Option<u16>, WireError> {
    if buf.len() >= MAGIC.len() && buf[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if buf.len() < PREFACE_LEN {
        return Ok(None);
    }
    Ok(Some(u16::from_be_bytes([buf[4], buf[5]])))
}

/// Appends a request frame.
pub fn encode_request(req: &Request, dst: &mut impl BufMut) {
    encode_json(KIND_REQUEST, req, dst);
}

/// Appends a reply frame.
pub fn encode_reply(reply: &Reply, dst: &mut impl BufMut) {
    encode_json(KIND_REPLY, reply, dst);
}

fn encode_json<T: Serialize>(kind: u8, msg: &T, dst: &mut impl BufMut) {
    // Serialising these plain structs cannot fail; an empty object stands in if it ever did.
    let json = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    dst.put_u8(kind);
    dst.put_u32(json.len() as u32);
    dst.put_slice(&json);
}

/// Appends a data frame's header and CV; the caller writes the `len` chunk bytes after it (so
/// they need not be copied into the same buffer).
pub fn encode_data_header(cv: &Cv, len: usize, dst: &mut impl BufMut) {
    dst.put_u8(KIND_DATA);
    dst.put_u32((32 + len) as u32);
    dst.put_slice(cv);
}

/// A frame's kind and length, checked against the kind's bounds before anything is buffered for
/// it; `None` until the header has arrived.
fn frame_head(buf: &[u8]) -> Result<Option<(u8, u32)>, WireError> {
    let Some(head) = buf.get(..FRAME_HEADER) else {
        return Ok(None);
    };
    let kind = head[0];
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let max = match kind {
        KIND_REQUEST | KIND_REPLY => MAX_JSON,
        KIND_DATA => MAX_DATA,
        other => return Err(WireError::UnknownKind(other)),
    };
    if len as usize > max {
        return Err(WireError::TooLong { kind, len, max });
    }
    let min = if kind == KIND_DATA { 32 } else { 1 };
    if (len as usize) < min {
        return Err(WireError::TooShort { kind, len });
    }
    Ok(Some((kind, len)))
}

/// Incremental frame decoder. `Ok(None)`: `buf` holds no complete frame and nothing was consumed.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    let Some((kind, len)) = frame_head(buf)? else {
        return Ok(None);
    };
    if buf.len() < FRAME_HEADER + len as usize {
        // Make room once for the whole frame rather than growing step by step.
        buf.reserve(FRAME_HEADER + len as usize - buf.len());
        return Ok(None);
    }
    buf.advance(FRAME_HEADER);
    let payload = buf.split_to(len as usize);
    let bad = |e: serde_json::Error| WireError::BadJson(e.to_string());
    Ok(Some(match kind {
        KIND_REQUEST => Frame::Request(serde_json::from_slice(&payload).map_err(bad)?),
        KIND_REPLY => Frame::Reply(serde_json::from_slice(&payload).map_err(bad)?),
        _ => {
            let mut payload = payload.freeze();
            let mut cv = [0u8; 32];
            payload.copy_to_slice(&mut cv);
            Frame::Data { cv, data: payload }
        }
    }))
}

/// Like [`decode_frame`], but a data frame is returned as soon as its header and CV have arrived
/// ([`Item::Data`]; its bytes are the caller's to take), and a well-framed request that is not
/// valid is returned as [`Item::Invalid`] (consumed), not an error. Never returns a piece.
fn decode_frame_streaming(buf: &mut BytesMut) -> Result<Option<Item>, WireError> {
    match frame_head(buf)? {
        Some((KIND_REQUEST, len)) => {
            if buf.len() < FRAME_HEADER + len as usize {
                buf.reserve(FRAME_HEADER + len as usize - buf.len());
                return Ok(None);
            }
            let payload = &buf[FRAME_HEADER..FRAME_HEADER + len as usize];
            let next = match serde_json::from_slice::<Request>(payload) {
                Ok(req) => Item::Frame(Frame::Request(req)),
                Err(e) => Item::Invalid {
                    id: request_id(payload),
                    error: e.to_string(),
                },
            };
            buf.advance(FRAME_HEADER + len as usize);
            Ok(Some(next))
        }
        None => Ok(None),
        Some((KIND_DATA, len)) => {
            if buf.len() < FRAME_HEADER + 32 {
                return Ok(None);
            }
            buf.advance(FRAME_HEADER);
            let mut cv = [0u8; 32];
            buf.copy_to_slice(&mut cv);
            Ok(Some(Item::Data {
                cv,
                len: len as usize - 32,
            }))
        }
        Some(_) => Ok(decode_frame(buf)?.map(Item::Frame)),
    }
}

/// One step of a v1 stream, as [`StreamDecoder`] hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A whole request or reply.
    Frame(Frame),
    /// A whole request frame whose JSON is not a valid request (unknown `op` or field, missing
    /// field, wrong type). The stream is still in step, so a server can answer it: with `id` when
    /// the object has a positive integer `id`, else at the connection level.
    Invalid {
        /// The `id` the object carries, if it is a positive integer.
        id: Option<u64>,
        /// What is wrong, as [`WireError::BadJson`] would say it.
        error: String,
    },
    /// A data frame begins: its CV; `len` bytes of chunk data follow as [`Item::Piece`]s.
    Data {
        /// BLAKE3 chaining value of the chunk.
        cv: Cv,
        /// Bytes of chunk data that follow.
        len: usize,
    },
    /// The next bytes of the current data frame (never more than it has left).
    Piece(Bytes),
}

/// The v1 stream decoder both ends use: requests and replies whole, data frames as their CV and
/// then their bytes in pieces as they arrive, so a receiver hashes and writes a chunk while it
/// streams in and never holds a whole one. Pure: bytes in, items out. `Ok(None)` means "read
/// more"; an error means the stream is out of step and nothing more can be decoded from it.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    /// Bytes of the current data frame not handed out yet.
    data_left: usize,
}

impl StreamDecoder {
    /// A decoder at a frame boundary (right after the preface).
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the current data frame still to come (0 between frames).
    pub fn data_left(&self) -> usize {
        self.data_left
    }

    /// The next item from `buf`, taking off exactly what it hands out.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, WireError> {
        if self.data_left > 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = self.data_left.min(buf.len());
            self.data_left -= n;
            return Ok(Some(Item::Piece(buf.split_to(n).freeze())));
        }
        let item = decode_frame_streaming(buf)?;
        if let Some(Item::Data { len, .. }) = &item {
            self.data_left = *len;
        }
        Ok(item)
    }
}

/// The `id` of a request object that is otherwise invalid, if it is a positive integer.
fn request_id(payload: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_slice::<IdOnly>(payload)
        .ok()
        .map(|o| o.id)
        .filter(|&id| id > 0)
}

/// Parses a set of chunk indices, `0-4,7,9-1023` (ascending, not overlapping, each below
/// `count`), into one flag per chunk.
pub fn parse_chunk_set(s: &str, count: u64) -> Result<Vec<bool>, String> {
    // Bounded before allocating: one flag per chunk of a declared size.
    let len = usize::try_from(count).map_err(|_| "too many chunks".to_owned())?;
    if count > (1 << 32) {
        return Err("too many chunks".into());
    }
    let mut set = vec![false; len];
    let mut next = 0u64;
    if s.is_empty() {
        return Ok(set);
    }
    for part in s.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let parse = |t: &str| {
            if t.is_empty()
                || !t.bytes().all(|c| c.is_ascii_digit())
                || (t.len() > 1 && t.starts_with('0'))
            {
                return Err(format!("{part:?} is not a chunk index or range"));
            }
            t.parse::<u64>()
                .map_err(|_| format!("{part:?} is out of range"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a < next || b < a || b >= count {
            return Err(format!("{part:?}: chunks must ascend, below {count}"));
        }
        for flag in &mut set[a as usize..=b as usize] {
            *flag = true;
        }
        next = b + 1;
    }
    Ok(set)
}

/// The chunk set [`parse_chunk_set`] reads: ascending ranges of the flagged indices.
pub fn format_chunk_set(flags: &[bool]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        if !flags[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i + 1 < flags.len() && flags[i + 1] {
            i += 1;
        }
        out.push(if start == i {
            start.to_string()
        } else {
            format!("{start}-{i}")
        });
        i += 1;
    }
    out.join(",")
}

/// Splits a `/`-separated relative path into components, each checked with
/// [`crate::name::validate_file_name`]. The empty path is the top folder (no components).
pub fn split_path(path: &str) -> Result<Vec<&str>, crate::name::NameError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    path.split('/')
        .map(crate::name::validate_file_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sets_round_trip_and_refuse_what_is_not_one() {
        let flags = parse_chunk_set("0-2,5,7-8", 10).unwrap();
        assert_eq!(
            flags,
            [
                true, true, true, false, false, true, false, true, true, false
            ]
        );
        assert_eq!(format_chunk_set(&flags), "0-2,5,7-8");
        assert_eq!(parse_chunk_set("", 3).unwrap(), [false; 3]);
        assert_eq!(format_chunk_set(&[false, false]), "");
        for bad in [
            "3-1", "1,1", "2,1", "0-10", "10", "a", "-1", "01", "1-", ",", "0,,1",
        ] {
            assert!(parse_chunk_set(bad, 10).is_err(), "{bad}");
        }
        assert!(
            parse_chunk_set("0", 1 << 40).is_err(),
            "bounded before allocating"
        );
    }

    #[test]
    fn preface_is_never_a_lesson_length() {
        let p = preface(VERSION);
        let as_lesson = i32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        assert!(as_lesson <= 0 || as_lesson > 65536);
        assert_eq!(parse_preface(&p), Ok(Some(1)));
        assert_eq!(parse_preface(&p[..5]), Ok(None));
        assert_eq!(parse_preface(b"GET / HTTP/1.1"), Err(WireError::BadMagic));
    }

    #[test]
    fn frames_round_trip_split_at_every_byte() {
        let mut wire = BytesMut::new();
        let req = Request::Put {
            id: 7,
            path: "dir/荷官.mp4".into(),
            size: 3,
            from: 0,
            replaces: None,
            reuse: None,
            mtime: None,
            stripe: None,
        };
        encode_request(&req, &mut wire);
        let cv = crate::tree::chunk_cv(0, b"abc");
        encode_data_header(&cv, 3, &mut wire);
        wire.put_slice(b"abc");
        let reply = Reply {
            offset: Some(0),
            ..Reply::ok(7)
        };
        encode_reply(&reply, &mut wire);
        let want = vec![
            Frame::Request(req),
            Frame::Data {
                cv,
                data: Bytes::from_static(b"abc"),
            },
            Frame::Reply(reply),
        ];
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in [&wire[..cut], &wire[cut..]] {
                buf.extend_from_slice(piece);
                while let Some(f) = decode_frame(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, want, "cut {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn lengths_are_bounded_before_buffering() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 1][..]);
        assert!(matches!(
            decode_frame(&mut buf),
            Err(WireError::TooLong { .. })
        ));
        let mut buf = BytesMut::from(&[3u8, 0, 0, 0, 31][..]);
        assert!(matches!(
            decode_frame(&mut buf),
            Err(WireError::TooShort { .. })
        ));
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 1][..]);
        assert_eq!(decode_frame(&mut buf), Err(WireError::UnknownKind(9)));
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 2, b'{', b'}'][..]);
        assert!(matches!(decode_frame(&mut buf), Err(WireError::BadJson(_))));
        let mut buf =
            BytesMut::from(&br#"xxxxx{"op":"get","id":1,"path":"a","from":0,"evil":1}"#[..]);
        buf[0] = 1;
        let len = (buf.len() - 5) as u32;
        buf[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode_frame(&mut buf), Err(WireError::BadJson(_))));
    }

    #[test]
    fn split_path_validates_every_component() {
        assert_eq!(split_path(""), Ok(vec![]));
        assert_eq!(split_path("a/b.txt"), Ok(vec!["a", "b.txt"]));
        for bad in ["../x", "a//b", "/abs", "a/./b", "a/", "a\\b/c"] {
            assert!(split_path(bad).is_err(), "{bad}");
        }
    }
}
