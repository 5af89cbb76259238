//! The lesson's upload format — `[i32 LE length][JSON header][file_size raw bytes]`, repeated — as an
//! incremental decoder and an encoder, with every length bounded before anything is allocated.
//!
//! ```text
//! +----------------------+------------------------------------------+------------------+
//! | 4 bytes: JSON length | JSON header, UTF-8, 1..=65536 bytes       | file_size bytes  |
//! | int32, little-endian | {"file_name": "...", "file_size": N,     | raw file content |
//! | struct.pack('i', n)  |  "msg": <any JSON, optional>}             |                  |
//! +----------------------+------------------------------------------+------------------+
//! ```
//!
//! The lesson's server assumed `recv(4)` returns four bytes and that a `recv` never runs past the
//! body into the next header. [`Decoder`] makes neither assumption: bytes are fed in as they arrive,
//! `Ok(None)` means "need more", and it never takes a byte beyond the current body.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

/// Size of the length prefix (`struct.pack('i', n)`).
pub const LEN_PREFIX: usize = 4;
/// Largest JSON header accepted or produced. The lesson's headers are ~100 bytes; 64 KiB leaves room
/// for a long `msg` while keeping a hostile prefix from making us buffer more than that.
pub const MAX_HEADER_LEN: usize = 65536;

/// One upload's header as the lesson defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The name the sender proposes. Not validated here: the receiver decides what is safe to store
    /// (see [`crate::name`]).
    pub file_name: String,
    /// Exact number of body bytes that follow the header.
    pub file_size: u64,
    /// Free-form note the lesson's client sends along; any JSON value, kept for logging.
    pub msg: Option<Value>,
}

/// Why a byte stream is not a valid sequence of lesson uploads. Any of these means the connection
/// is corrupt from this point on and should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix is zero or negative (it is a signed int32 on the wire).
    #[error("header length {0} is not positive")]
    NonPositiveLength(i32),
    /// The length prefix is larger than [`MAX_HEADER_LEN`].
    #[error("header length {0} exceeds the limit of {MAX_HEADER_LEN} bytes")]
    HeaderTooLong(i32),
    /// The header bytes are not UTF-8 JSON.
    #[error("header is not valid JSON: {0}")]
    InvalidJson(String),
    /// The header is JSON but not an object.
    #[error("header is not a JSON object")]
    NotAnObject,
    /// `file_name` is missing, not a string, or empty.
    #[error("header field \"file_name\" is missing, empty or not a string")]
    BadFileName,
    /// `file_size` is missing or not a non-negative integer.
    #[error("header field \"file_size\" is missing or not a non-negative integer")]
    BadFileSize,
}

/// Why a header cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The JSON would exceed [`MAX_HEADER_LEN`] (a very long name or `msg`).
    #[error("encoded header is {0} bytes, over the limit of {MAX_HEADER_LEN}")]
    HeaderTooLong(usize),
}

/// What the decoder found next in the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A complete header; its body follows.
    Header(Header),
    /// Part of the current body, never extending past it.
    Body(Bytes),
    /// The current body is complete; the next bytes (if any) start a new header.
    End,
}

/// Incremental decoder for a stream of lesson uploads.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Body bytes of the current upload not yet handed out; `None` between uploads.
    body_remaining: Option<u64>,
}

impl Decoder {
    /// A decoder positioned before the first header.
    pub fn new() -> Self {
        Self::default()
    }

    /// True between uploads, where an end of stream is a clean close rather than a truncation.
    pub fn is_idle(&self) -> bool {
        self.body_remaining.is_none()
    }

    /// Body bytes still owed by the current upload, if one is in progress.
    pub fn body_remaining(&self) -> Option<u64> {
        self.body_remaining
    }

    /// Takes the next frame off the front of `buf`. `Ok(None)`: `buf` holds no complete frame yet
    /// and nothing was consumed. Body bytes are handed out as soon as any are available.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match self.body_remaining {
            None => {
                let Some((header, used)) = parse_header(buf)? else {
                    return Ok(None);
                };
                buf.advance(used);
                self.body_remaining = Some(header.file_size);
                Ok(Some(Frame::Header(header)))
            }
            Some(0) => {
                self.body_remaining = None;
                Ok(Some(Frame::End))
            }
            Some(remaining) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                self.body_remaining = Some(remaining - take as u64);
                Ok(Some(Frame::Body(buf.split_to(take).freeze())))
            }
        }
    }

    /// Tells the decoder that `n` body bytes were consumed outside of [`Decoder::decode`] (read
    /// straight from the socket into the file). `n` must not exceed [`Decoder::body_remaining`].
    pub fn skip_body(&mut self, n: u64) {
        if let Some(remaining) = self.body_remaining.as_mut() {
            debug_assert!(n <= *remaining, "skipped past the body");
            *remaining = remaining.saturating_sub(n);
        }
    }
}

/// Parses a length prefix and header from the front of `buf` without consuming anything.
/// Returns the header and how many bytes it occupies, or `Ok(None)` if `buf` is too short.
pub fn parse_header(buf: &[u8]) -> Result<Option<(Header, usize)>, DecodeError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = i32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len <= 0 {
        return Err(DecodeError::NonPositiveLength(len));
    }
    // Bound the length before waiting for (and so buffering) that many bytes.
    let json_len = len as usize;
    if json_len > MAX_HEADER_LEN {
        return Err(DecodeError::HeaderTooLong(len));
    }
    let Some(json) = buf.get(LEN_PREFIX..LEN_PREFIX + json_len) else {
        return Ok(None);
    };
    Ok(Some((header_from_json(json)?, LEN_PREFIX + json_len)))
}

fn header_from_json(json: &[u8]) -> Result<Header, DecodeError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let file_name = match map.remove("file_name") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(DecodeError::BadFileName),
    };
    let file_size = map
        .get("file_size")
        .and_then(Value::as_u64)
        .ok_or(DecodeError::BadFileSize)?;
    Ok(Header {
        file_name,
        file_size,
        msg: map.remove("msg"),
    })
}

impl Header {
    /// A header with the lesson's fields and no `msg`.
    pub fn new(file_name: impl Into<String>, file_size: u64) -> Self {
        Self {
            file_name: file_name.into(),
            file_size,
            msg: None,
        }
    }

    /// Appends the length prefix and JSON to `dst`, exactly as the lesson's client frames them.
    pub fn encode(&self, dst: &mut impl BufMut) -> Result<(), EncodeError> {
        let mut map = Map::new();
        map.insert("file_name".into(), Value::String(self.file_name.clone()));
        map.insert("file_size".into(), Value::from(self.file_size));
        if let Some(msg) = &self.msg {
            map.insert("msg".into(), msg.clone());
        }
        let json = Value::Object(map).to_string();
        if json.len() > MAX_HEADER_LEN {
            return Err(EncodeError::HeaderTooLong(json.len()));
        }
        // Lossless: json.len() <= 65536 fits an i32.
        dst.put_i32_le(json.len() as i32);
        dst.put_slice(json.as_bytes());
        Ok(())
    }

    /// [`Header::encode`] into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(LEN_PREFIX + 64 + self.file_name.len());
        self.encode(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(json: &str) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32_le(json.len() as i32);
        b.put_slice(json.as_bytes());
        b
    }

    #[test]
    fn parse_header_accepts_the_lessons_own_header() {
        let json = r#"{"file_name": "性感荷官在线发牌.,mp4", "file_size": 12, "msg": "注意身体,多喝营养快线"}"#;
        let (h, used) = parse_header(&framed(json)).unwrap().unwrap();
        assert_eq!(h.file_name, "性感荷官在线发牌.,mp4");
        assert_eq!(h.file_size, 12);
        assert_eq!(h.msg, Some(Value::String("注意身体,多喝营养快线".into())));
        assert_eq!(used, 4 + json.len());
    }

    #[test]
    fn parse_header_ignores_unknown_keys_and_takes_any_msg() {
        let json = r#"{"x": [1,2], "file_size": 0, "file_name": "a", "msg": {"k": null}}"#;
        let (h, _) = parse_header(&framed(json)).unwrap().unwrap();
        assert_eq!(h.file_size, 0);
        assert_eq!(h.msg, Some(serde_json::json!({"k": null})));
    }

    #[test]
    fn parse_header_rejects_bad_lengths_before_buffering() {
        for (len, err) in [
            (-1, DecodeError::NonPositiveLength(-1)),
            (0, DecodeError::NonPositiveLength(0)),
            (65537, DecodeError::HeaderTooLong(65537)),
            (i32::MAX, DecodeError::HeaderTooLong(i32::MAX)),
        ] {
            assert_eq!(parse_header(&len.to_le_bytes()), Err(err));
        }
    }

    #[test]
    fn parse_header_accepts_exactly_max_len() {
        let pad = MAX_HEADER_LEN - r#"{"file_name":"a","file_size":1,"msg":""}"#.len();
        let json = format!(
            r#"{{"file_name":"a","file_size":1,"msg":"{}"}}"#,
            "x".repeat(pad)
        );
        assert_eq!(json.len(), MAX_HEADER_LEN);
        let buf = framed(&json);
        assert!(parse_header(&buf[..buf.len() - 1]).unwrap().is_none());
        assert!(parse_header(&buf).unwrap().is_some());
    }

    #[test]
    fn parse_header_rejects_bad_fields() {
        let cases = [
            ("{", DecodeError::InvalidJson(String::new())),
            ("[1]", DecodeError::NotAnObject),
            ("\"s\"", DecodeError::NotAnObject),
            (r#"{"file_size": 1}"#, DecodeError::BadFileName),
            (
                r#"{"file_name": "", "file_size": 1}"#,
                DecodeError::BadFileName,
            ),
            (
                r#"{"file_name": 7, "file_size": 1}"#,
                DecodeError::BadFileName,
            ),
            (r#"{"file_name": "a"}"#, DecodeError::BadFileSize),
            (
                r#"{"file_name": "a", "file_size": -1}"#,
                DecodeError::BadFileSize,
            ),
            (
                r#"{"file_name": "a", "file_size": "1"}"#,
                DecodeError::BadFileSize,
            ),
            (
                r#"{"file_name": "a", "file_size": 1.5}"#,
                DecodeError::BadFileSize,
            ),
            (
                r#"{"file_name": "a", "file_size": null}"#,
                DecodeError::BadFileSize,
            ),
        ];
        for (json, want) in cases {
            let got = parse_header(&framed(json)).unwrap_err();
            match want {
                DecodeError::InvalidJson(_) => assert!(matches!(got, DecodeError::InvalidJson(_))),
                want => assert_eq!(got, want, "for {json}"),
            }
        }
        let mut not_utf8 = BytesMut::new();
        not_utf8.put_i32_le(3);
        not_utf8.put_slice(b"\xff\xfe{");
        assert!(matches!(
            parse_header(&not_utf8),
            Err(DecodeError::InvalidJson(_))
        ));
    }

    #[test]
    fn decoder_hands_out_zero_size_body_as_end() {
        let mut buf = BytesMut::from(&Header::new("empty", 0).to_bytes().unwrap()[..]);
        let mut d = Decoder::new();
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Header(_)))));
        assert!(!d.is_idle());
        assert_eq!(d.decode(&mut buf), Ok(Some(Frame::End)));
        assert!(d.is_idle());
        assert_eq!(d.decode(&mut buf), Ok(None));
    }

    #[test]
    fn decoder_never_takes_past_the_body() {
        let mut buf = BytesMut::new();
        Header::new("a", 3).encode(&mut buf).unwrap();
        buf.put_slice(b"abc");
        Header::new("b", 1).encode(&mut buf).unwrap();
        buf.put_slice(b"Z");
        let mut d = Decoder::new();
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Header(h))) if h.file_name == "a"));
        assert_eq!(
            d.decode(&mut buf),
            Ok(Some(Frame::Body(Bytes::from_static(b"abc"))))
        );
        assert_eq!(d.decode(&mut buf), Ok(Some(Frame::End)));
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Header(h))) if h.file_name == "b"));
        assert_eq!(
            d.decode(&mut buf),
            Ok(Some(Frame::Body(Bytes::from_static(b"Z"))))
        );
        assert_eq!(d.decode(&mut buf), Ok(Some(Frame::End)));
        assert!(buf.is_empty());
    }

    #[test]
    fn encode_refuses_oversized_header() {
        let h = Header {
            msg: Some(Value::String("x".repeat(MAX_HEADER_LEN))),
            ..Header::new("a", 1)
        };
        assert!(matches!(h.to_bytes(), Err(EncodeError::HeaderTooLong(_))));
    }
}
