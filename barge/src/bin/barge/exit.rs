//! Exit codes, one per kind of outcome a script may want to tell apart.

use barge::client::echo::EchoClientError;
use barge::client::lesson::ClientError;
use barge::client::udp::UdpClientError;
use barge::client::v1::TransferError;
use barge::store::StoreError;

/// Everything worked.
pub const SUCCESS: u8 = 0;
/// Any failure without a more specific code (I/O error, connection lost, refused upload).
pub const FAILURE: u8 = 1;
/// Bad arguments (clap uses 2 as well), or a request that can never be sent (UDP payload too large).
pub const USAGE: u8 = 2;
/// The server could not be reached (TCP connect failed; UDP: no request was answered at all).
pub const UNREACHABLE: u8 = 3;
/// The server refused the request (its reason is printed).
pub const REFUSED: u8 = 4;
/// Data failed verification and retries did not fix it.
pub const INTEGRITY: u8 = 5;
/// Some of several files or requests failed while others succeeded.
pub const PARTIAL: u8 = 6;
/// Interrupted by Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

/// The code for a finished multi-file transfer: 6 when some things went and others did not, 1
/// when nothing could even be read locally.
pub fn for_report(report: &barge::client::v1::Report) -> u8 {
    use barge_proto::wire::Status;
    if report.failed.is_empty() && report.skipped.is_empty() {
        SUCCESS
    } else if report.files + report.folders + report.unchanged > 0 {
        PARTIAL
    } else if report.failed.is_empty() {
        FAILURE
    } else if report
        .failed
        .iter()
        .any(|(_, s, _)| *s == Status::Integrity)
    {
        INTEGRITY
    } else {
        REFUSED
    }
}

/// The code for an error, from the most specific cause in its chain.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(ClientError::Connect { .. }) = cause.downcast_ref() {
            return UNREACHABLE;
        }
        if let Some(EchoClientError::Connect { .. }) = cause.downcast_ref() {
            return UNREACHABLE;
        }
        if let Some(TransferError::Connect { .. }) = cause.downcast_ref() {
            return UNREACHABLE;
        }
        if let Some(TransferError::Refused { .. }) = cause.downcast_ref() {
            return REFUSED;
        }
        if let Some(
            TransferError::Storage(StoreError::Integrity(_)) | TransferError::Integrity(_),
        ) = cause.downcast_ref()
        {
            return INTEGRITY;
        }
        if let Some(UdpClientError::TooLarge(_)) = cause.downcast_ref() {
            return USAGE;
        }
        if cause.is::<barge_proto::datagram::TooLarge>() {
            return USAGE;
        }
        if cause.is::<crate::config::UsageError>() {
            return USAGE;
        }
        if let Some(barge::tls::TlsError::BadFingerprint(_)) = cause.downcast_ref() {
            return USAGE; // a malformed --fingerprint is a bad argument
        }
    }
    FAILURE
}
