//! barge's integration tests, one binary layered by cost: in-memory, real sockets, the CLI, and the
//! lesson's Python peers.

// A failed step in a test helper should fail the test on the spot.
#![allow(clippy::unwrap_used)]

mod cli;
mod cluster;
mod conformance;
mod echo;
mod http;
mod interop;
mod lan;
mod lesson;
mod localsend;
mod memory;
mod proxy;
mod security;
mod stripe;
mod support;
mod udp;
mod v1;
