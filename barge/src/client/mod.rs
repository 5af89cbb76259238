//! barge's clients, one module per front end: [`v1`] (send, get, ls, bench over barge's
//! protocol), [`lesson`] (the lesson's upload format), [`echo`], [`udp`]. They report what happens
//! as values or events and never print: the binary decides how things look.

pub mod echo;
pub mod lesson;
pub mod udp;
pub mod v1;
