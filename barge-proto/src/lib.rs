//! barge's wire formats as pure code: bytes in, frames out; no sockets, no files, no clock.
//!
//! The IO crate (`barge`) owns every socket and file and drives these types. Keeping them free of
//! IO means every split and merge of reads can be tested exhaustively, and fuzzed, in memory.
//!
//! # Modules
//! - [`legacy`]: the lesson's upload format, `[i32 LE length][JSON header][raw body]`, repeated.
//! - [`name`]: the rule that turns a peer-supplied file name into one safe path component.
//! - [`line`]: newline-delimited messages with a length cap (the echo service).
//! - [`datagram`]: UDP payload limits and fragmentation.
//! - [`wire`]: barge's own protocol (v1): preface, frames, requests and replies.
//! - [`tree`]: BLAKE3 over 1 MiB chunks: per-chunk chaining values and the file digest.
//! - [`lan`]: barge's LAN discovery datagrams (query and announcement).
//! - [`localsend`]: LocalSend protocol v2 messages (device info, `prepare-upload`).
//!
//! # Limits
//! | what | limit | why |
//! |---|---|---|
//! | lesson header length | 1..=65536 bytes | checked before buffering the header |
//! | `file_size` | a JSON integer in 0..=2^64-1 | the receiver applies its own size policy |
//! | stored file name | 1..=255 bytes, one component | see [`name::validate_file_name`] |
//! | echo line | configurable cap, checked as bytes arrive | see [`line::LineDecoder`] |
//! | UDP payload | 65,507 (IPv4) / 65,527 (IPv6) bytes | see [`datagram::check_payload`] |
//! | v1 request/reply JSON | 1..=65536 bytes ([`wire::MAX_JSON`]) | checked from the frame head, before buffering |
//! | v1 data frame | 32-byte CV + at most one chunk, 1 MiB ([`wire::MAX_DATA`]) | streamed as pieces, never buffered whole |
//! | v1 path | `/`-separated names, each by the name rule, none `.barge` | see [`wire::split_path`] |
//! | chunk | 1 MiB ([`tree::CHUNK`]); a file's last chunk may be shorter | the unit of verification and resume |
//! | discovery datagram | at most 1,200 bytes ([`lan::MAX_DATAGRAM`]); name 1..=63 bytes | one packet; answers never larger than queries |
//! | LocalSend `prepare-upload` | 4 MiB body, 10,000 files, 1 KiB per string ([`localsend`]) | checked before a session is made |

#[doc(hidden)]
pub mod check;
pub mod datagram;
pub mod lan;
pub mod legacy;
pub mod line;
pub mod localsend;
pub mod name;
pub mod tree;
pub mod wire;
