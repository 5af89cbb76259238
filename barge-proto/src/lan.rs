//! barge's LAN discovery datagrams: a query (`barge discover`) and an announcement (`barge serve
//! --announce`), each a 6-byte head and a JSON body in one bounded UDP datagram.
//!
//! ```text
//! "BRGD" | version (1 byte, 1) | kind (1 byte: 'Q' query, 'A' announcement) | JSON object | spaces
//! ```
//!
//! A query is padded with spaces to [`QUERY_LEN`] so that an answer, which is never larger than
//! [`MAX_ANNOUNCEMENT`], is never larger than the query that asked for it: answering cannot
//! amplify a spoofed query. Everything is bounded: a datagram longer than [`MAX_DATAGRAM`], a
//! name longer than [`MAX_NAME`], or a field of the wrong type is refused whole.

use serde::{Deserialize, Serialize};

/// The multicast group (IPv4, administratively scoped; sent with TTL 1).
pub const GROUP_V4: [u8; 4] = [239, 255, 66, 71];
/// The multicast group (IPv6, link-local scope): `ff02::6261:7267` ("barg").
pub const GROUP_V6: [u16; 8] = [0xff02, 0, 0, 0, 0, 0, 0x6261, 0x7267];
/// The UDP port of the group (queries and announcements).
pub const PORT: u16 = 47471;
/// No discovery datagram is longer (fits one IPv6 packet on any link).
pub const MAX_DATAGRAM: usize = 1200;
/// The length `barge discover` pads its queries to.
pub const QUERY_LEN: usize = 512;
/// An announcement never encodes longer than this (checked when it is made).
pub const MAX_ANNOUNCEMENT: usize = QUERY_LEN;
/// Longest server name, in bytes of UTF-8.
pub const MAX_NAME: usize = 63;

const MAGIC: &[u8; 4] = b"BRGD";
const VERSION: u8 = 1;
const HEAD: usize = 6;

/// Why a datagram was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LanError {
    #[error("datagram of {0} bytes (at most {MAX_DATAGRAM})")]
    TooLong(usize),
    #[error("not a barge discovery datagram")]
    NotOurs,
    #[error("discovery version {0} (this barge speaks 1)")]
    Version(u8),
    #[error("unknown kind {0:#04x}")]
    Kind(u8),
    #[error("bad body: {0}")]
    Body(String),
    #[error("bad name: {0}")]
    Name(String),
}

/// `barge discover` asking who is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Echoed by answers, so that a querier tells its answers from other traffic.
    pub nonce: u64,
    /// Only the server of this name should answer (`barge send --to NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A server saying where it is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// What users type after `--to` (the host name by default).
    pub name: String,
    /// Random per start: tells two servers of the same name apart.
    pub id: u64,
    /// The TCP port of barge's protocol (and the lesson's format).
    pub port: u16,
    /// The TCP port of the HTTP face, if it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<u16>,
    /// The versions of barge's protocol served.
    pub versions: Vec<u16>,
    /// `SHA256:...` of the TLS certificate when barge's protocol is served over TLS only: a hint
    /// to show the user, never trust (trust is decided by pinning or trust on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// Whether a token is required.
    pub tokens: bool,
    /// Seconds between unsolicited announcements: a listener forgets a server after three.
    pub every: u32,
    /// The query's nonce, when this answers one; absent in unsolicited announcements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<u64>,
}

/// A decoded discovery datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Query(Query),
    Announcement(Announcement),
}

/// Checks a server name: 1..=[`MAX_NAME`] bytes, no control characters, no `:` or `/` (so it
/// never reads as an address or a path), not only dots or spaces.
pub fn check_name(name: &str) -> Result<(), LanError> {
    let bad = |why: &str| Err(LanError::Name(format!("{name:?}: {why}")));
    if name.is_empty() || name.len() > MAX_NAME {
        return bad("1 to 63 bytes");
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, ':' | '/' | '\\'))
    {
        return bad("no control characters, ':', '/' or '\\'");
    }
    if name.chars().all(|c| c == '.' || c.is_whitespace()) {
        return bad("not only dots and spaces");
    }
    Ok(())
}

fn head(kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(QUERY_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out
}

/// Encodes a query, padded to [`QUERY_LEN`].
pub fn encode_query(q: &Query) -> Result<Vec<u8>, LanError> {
    if let Some(name) = &q.name {
        check_name(name)?;
    }
    let mut out = head(b'Q');
    serde_json::to_writer(&mut out, q).map_err(|e| LanError::Body(e.to_string()))?;
    if out.len() < QUERY_LEN {
        out.resize(QUERY_LEN, b' ');
    }
    Ok(out)
}

/// Encodes an announcement; refuses one longer than [`MAX_ANNOUNCEMENT`] or with a bad name.
pub fn encode_announcement(a: &Announcement) -> Result<Vec<u8>, LanError> {
    check_name(&a.name)?;
    let mut out = head(b'A');
    serde_json::to_writer(&mut out, a).map_err(|e| LanError::Body(e.to_string()))?;
    if out.len() > MAX_ANNOUNCEMENT {
        return Err(LanError::TooLong(out.len()));
    }
    Ok(out)
}

/// Decodes one datagram.
pub fn decode(datagram: &[u8]) -> Result<Message, LanError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(LanError::TooLong(datagram.len()));
    }
    if datagram.len() < HEAD || &datagram[..4] != MAGIC {
        return Err(LanError::NotOurs);
    }
    if datagram[4] != VERSION {
        return Err(LanError::Version(datagram[4]));
    }
    let body = &datagram[HEAD..];
    let bad = |e: serde_json::Error| LanError::Body(e.to_string());
    match datagram[5] {
        b'Q' => {
            let q: Query = serde_json::from_slice(body).map_err(bad)?;
            if let Some(name) = &q.name {
                check_name(name)?;
            }
            Ok(Message::Query(q))
        }
        b'A' => {
            let a: Announcement = serde_json::from_slice(body).map_err(bad)?;
            check_name(&a.name)?;
            if a.versions.len() > 16 {
                return Err(LanError::Body("more than 16 versions".into()));
            }
            if a.tls.as_ref().is_some_and(|t| t.len() > 100) {
                return Err(LanError::Body("tls fingerprint too long".into()));
            }
            Ok(Message::Announcement(a))
        }
        k => Err(LanError::Kind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn longest() -> Announcement {
        Announcement {
            name: "\u{1F4E6}".repeat(MAX_NAME / 4), // 4-byte characters, escaped by nobody
            id: u64::MAX,
            port: u16::MAX,
            http: Some(u16::MAX),
            versions: vec![u16::MAX; 16],
            tls: Some(format!("SHA256:{}", "f".repeat(64))),
            tokens: true,
            every: u32::MAX,
            nonce: Some(u64::MAX),
        }
    }

    #[test]
    fn the_documented_vectors() {
        let q = encode_query(&Query {
            nonce: 7,
            name: None,
        })
        .unwrap();
        assert_eq!(q.len(), QUERY_LEN);
        assert_eq!(&q[..17], b"BRGD\x01Q{\"nonce\":7}");
        assert!(q[17..].iter().all(|&b| b == b' '));
        let a = Announcement {
            name: "studio".into(),
            id: 42,
            port: 8080,
            http: None,
            versions: vec![1],
            tls: None,
            tokens: false,
            every: 30,
            nonce: Some(7),
        };
        let bytes = encode_announcement(&a).unwrap();
        assert_eq!(
            bytes,
            b"BRGD\x01A{\"name\":\"studio\",\"id\":42,\"port\":8080,\"versions\":[1],\
              \"tokens\":false,\"every\":30,\"nonce\":7}"
        );
        assert_eq!(decode(&bytes), Ok(Message::Announcement(a)));
    }

    #[test]
    fn an_answer_is_never_larger_than_a_padded_query() {
        let a = encode_announcement(&longest()).unwrap();
        let q = encode_query(&Query {
            nonce: 0,
            name: None,
        })
        .unwrap();
        assert!(a.len() <= q.len(), "{} > {}", a.len(), q.len());
    }

    #[test]
    fn hostile_datagrams_are_refused() {
        assert_eq!(decode(b""), Err(LanError::NotOurs));
        assert_eq!(decode(b"BRGD"), Err(LanError::NotOurs));
        assert_eq!(decode(b"hello"), Err(LanError::NotOurs));
        assert_eq!(decode(b"BRGD\x02Q{}"), Err(LanError::Version(2)));
        assert_eq!(decode(b"BRGD\x01Z{}"), Err(LanError::Kind(b'Z')));
        assert!(matches!(
            decode(b"BRGD\x01Q{\"nonce\":-1}"),
            Err(LanError::Body(_))
        ));
        assert!(matches!(
            decode(b"BRGD\x01Q{\"nonce\":1,\"more\":2}"),
            Err(LanError::Body(_))
        ));
        let mut long = b"BRGD\x01Q{\"nonce\":1}".to_vec();
        long.resize(MAX_DATAGRAM + 1, b' ');
        assert_eq!(decode(&long), Err(LanError::TooLong(MAX_DATAGRAM + 1)));
        for name in ["", "a:b", "../x", "\u{7}", "...", &"x".repeat(64)] {
            let json = serde_json::to_string(name).unwrap();
            let q = format!("BRGD\x01Q{{\"nonce\":1,\"name\":{json}}}");
            assert!(
                matches!(decode(q.as_bytes()), Err(LanError::Name(_))),
                "{name:?}"
            );
        }
        let mut a = longest();
        a.name = "n".repeat(MAX_NAME + 1);
        assert!(encode_announcement(&a).is_err());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn announcements_round_trip(
            name in "[a-zA-Z0-9 ._-]{0,40}[a-z]",
            id: u64, port: u16, http: Option<u16>, tokens: bool, every: u32, nonce: Option<u64>,
        ) {
            let a = Announcement {
                name, id, port, http, versions: vec![1], tls: None, tokens, every, nonce,
            };
            let bytes = encode_announcement(&a).unwrap();
            prop_assert_eq!(decode(&bytes), Ok(Message::Announcement(a)));
        }
    }
}
