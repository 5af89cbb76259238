//! barge's services, each a handler on the shared server framework. The file port ([`files`])
//! sniffs a connection's first bytes and hands it to a front end: [`v1`] (barge's protocol) or
//! [`lesson`] (the lesson's upload format); both only decode and encode around the transfer core
//! ([`crate::transfer`]), as does [`http`] (tus uploads, downloads, listings) on its own port. [`echo`] is the socketserver example on [`crate::server::Handler`],
//! [`udp`] the datagram service on [`crate::server::datagram::DatagramHandler`].

pub mod echo;
pub mod files;
pub mod http;
pub mod lesson;
pub mod localsend;
pub mod udp;
pub mod v1;
