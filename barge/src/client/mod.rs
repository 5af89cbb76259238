//! barge's clients, one module per front end: [`v1`] (send, get, ls, bench over barge's
//! protocol), [`lesson`] (the lesson's upload format), [`echo`], [`udp`]. They report what happens
//! as values or events and never print; [`known_hosts`] is the trust-on-first-use file: the binary decides how things look.

pub mod echo;
pub mod known_hosts;
pub mod lesson;
pub mod udp;
pub mod v1;
