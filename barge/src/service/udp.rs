//! The lesson's UDP server: every datagram gets a reply (`hi` by default), empty ones included.

use std::net::SocketAddr;

use barge_proto::line::upper_in_place;

use crate::server::datagram::DatagramHandler;

/// What the UDP service answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpReply {
    /// `hi`, as the lesson does.
    Hi,
    /// The datagram itself.
    Echo,
    /// The datagram upper-cased (ASCII, like Python's `bytes.upper()`).
    Upper,
    /// Fixed bytes.
    Text(Vec<u8>),
}

/// The UDP request/reply service.
#[derive(Debug, Clone)]
pub struct UdpService {
    reply: UdpReply,
}

impl UdpService {
    /// A service answering with `reply`.
    pub fn new(reply: UdpReply) -> Self {
        Self { reply }
    }
}

impl DatagramHandler for UdpService {
    fn respond(&self, request: &[u8], _peer: SocketAddr, reply: &mut Vec<u8>) -> bool {
        match &self.reply {
            UdpReply::Hi => reply.extend_from_slice(b"hi"),
            UdpReply::Echo => reply.extend_from_slice(request),
            UdpReply::Upper => {
                reply.extend_from_slice(request);
                upper_in_place(reply);
            }
            UdpReply::Text(text) => reply.extend_from_slice(text),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(reply: UdpReply, request: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(UdpService::new(reply).respond(
            request,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            &mut out
        ));
        out
    }

    #[test]
    fn respond_in_every_mode() {
        assert_eq!(answer(UdpReply::Hi, b"hello"), b"hi");
        assert_eq!(answer(UdpReply::Hi, b""), b"hi");
        assert_eq!(answer(UdpReply::Echo, b"\xff\x00x"), b"\xff\x00x");
        assert_eq!(answer(UdpReply::Echo, b""), b"");
        assert_eq!(
            answer(UdpReply::Upper, "héllo".as_bytes()),
            "HéLLO".as_bytes()
        );
        assert_eq!(answer(UdpReply::Text(b"pong".to_vec()), b"ping"), b"pong");
    }
}
