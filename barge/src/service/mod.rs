//! barge's services, each a handler on the shared server framework: [`upload`] and [`echo`] on
//! [`crate::server::Handler`] (TCP), [`udp`] on [`crate::server::datagram::DatagramHandler`].

pub mod echo;
pub mod transfer;
pub mod udp;
pub mod upload;
