//! barge: move big files over the network, fast and without losing a byte — the IO half.
//!
//! The wire formats live in `barge-proto` (pure, no IO); this crate drives them over tokio.
//!
//! # Layout
//! - [`server`]: the server framework (socketserver's `TCPServer` + `BaseRequestHandler` split):
//!   accept loop, connection cap, idle timeout, back-off, graceful shutdown; and its datagram
//!   counterpart for UDP. Knows nothing of files.
//! - [`service`]: one handler per service: [`service::upload`] (the lesson's upload format),
//!   [`service::echo`] (upper-case echo), [`service::udp`] (datagram request/reply).
//! - [`storage`]: safe names, temporary file then atomic rename, conflicts, space checks.
//! - [`client`]: upload, echo and UDP clients, reporting progress as events (the binary renders them).
//! - [`pick`]: the lesson's numbered menu.
//! - [`net`]: listeners, connecting with a deadline, the idle-timeout stream wrapper.
//! - [`tls`], [`auth`], [`throttle`]: what makes a server safe on a network — TLS identities and
//!   trust, tokens and their rights, bandwidth limits.
//!
//! # The lesson's wire format (one upload; several may follow on one connection)
//! ```text
//! [i32 little-endian JSON length][JSON {"file_name", "file_size", "msg"}][file_size raw bytes]
//! ```

pub mod auth;
pub mod chunks;
pub mod client;
pub mod net;
pub mod pick;
pub mod server;
pub mod service;
pub mod storage;
pub mod throttle;
pub mod tls;
