//! Exit codes, one per kind of outcome a script may want to tell apart.

use barge::client::echo::EchoClientError;
use barge::client::udp::UdpClientError;
use barge::client::upload::ClientError;

/// Everything worked.
pub const SUCCESS: u8 = 0;
/// Any failure without a more specific code (I/O error, connection lost, refused upload).
pub const FAILURE: u8 = 1;
/// Bad arguments (clap uses 2 as well), or a request that can never be sent (UDP payload too large).
pub const USAGE: u8 = 2;
/// The server could not be reached (TCP connect failed; UDP: no request was answered at all).
pub const UNREACHABLE: u8 = 3;
/// Some of several requests were not answered (UDP loss).
pub const PARTIAL: u8 = 6;
/// Interrupted by Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

/// The code for an error, from the most specific cause in its chain.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(ClientError::Connect { .. }) = cause.downcast_ref() {
            return UNREACHABLE;
        }
        if let Some(EchoClientError::Connect { .. }) = cause.downcast_ref() {
            return UNREACHABLE;
        }
        if let Some(UdpClientError::TooLarge(_)) = cause.downcast_ref() {
            return USAGE;
        }
        if cause.is::<barge_proto::datagram::TooLarge>() {
            return USAGE;
        }
    }
    FAILURE
}
