//! barge's integration tests, one binary layered by cost: in-memory, real sockets, the CLI, and the
//! lesson's Python peers.

mod cli;
mod interop;
mod memory;
mod support;
mod upload;
