//! barge's clients, one module per service. They report what happens as values or events and
//! never print: the binary decides how things look.

pub mod echo;
pub mod transfer;
pub mod udp;
pub mod upload;
