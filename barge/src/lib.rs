//! barge: move big files over the network, fast and without losing a byte — the IO half.
//!
//! The wire formats live in `barge-proto` (pure, no IO); this crate drives them over tokio.
//!
//! # Layout (front ends → transfer core → store; `docs/ARCHITECTURE.md` is the map)
//! - [`server`]: the server framework (socketserver's `TCPServer` + `BaseRequestHandler` split):
//!   accept loop, connection cap, timeouts, back-off, graceful shutdown; and its datagram
//!   counterpart for UDP. Knows nothing of files.
//! - [`service`]: the front ends on the file port ([`service::files`] sniffs, [`service::v1`] and
//!   [`service::lesson`] decode and encode), and the echo and UDP services.
//! - [`transfer`]: the transfer core: admission (tokens, rights, roots, names, limits), BLAKE3
//!   verification, publish under the conflict policy, reading for downloads.
//! - [`store`]: the `Store` trait and its backends (local folder, memory).
//! - [`client`]: the v1, lesson, echo and UDP clients, reporting progress as events (the binary
//!   renders them); [`chunks`] is the client's file side.
//! - [`pick`]: the lesson's numbered menu.
//! - [`lan`]: LAN discovery over UDP multicast (the server's beacon, `barge discover`).
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
pub mod lan;
pub mod net;
pub mod pick;
pub mod server;
pub mod service;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod transfer;
