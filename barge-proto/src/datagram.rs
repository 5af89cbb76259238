//! UDP datagram limits: what fits in one datagram, and when it will be fragmented.
//!
//! | | IPv4 | IPv6 |
//! |---|---|---|
//! | largest payload | 65,507 = 65,535 − 20 (IP) − 8 (UDP) | 65,527 = 65,535 − 8 (UDP; the IPv6 header is outside the payload length) |
//! | payload in one 1,500-byte Ethernet frame | 1,472 | 1,452 |
//!
//! A datagram above the frame payload is split into IP fragments; losing any one fragment loses
//! the whole datagram, so the loss rate multiplies with the fragment count.

/// Largest UDP payload over IPv4.
pub const MAX_PAYLOAD_V4: usize = 65_507;
/// Largest UDP payload over IPv6 (without jumbograms).
pub const MAX_PAYLOAD_V6: usize = 65_527;
/// Payload that fits one 1,500-byte Ethernet frame over IPv4.
pub const MTU_PAYLOAD_V4: usize = 1_472;
/// Payload that fits one 1,500-byte Ethernet frame over IPv6.
pub const MTU_PAYLOAD_V6: usize = 1_452;
/// A receive buffer that can hold any datagram: nothing is ever silently truncated (the lesson's
/// `recvfrom(1024)` cut longer datagrams without an error).
pub const RECV_BUFFER: usize = 65_536;

/// A payload too large to be sent as one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes do not fit in one UDP datagram over {family} (at most {max})")]
pub struct TooLarge {
    /// The payload's size.
    pub len: usize,
    /// The family's limit.
    pub max: usize,
    /// "IPv4" or "IPv6".
    pub family: &'static str,
}

/// What sending `len` bytes in one datagram implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Fits one Ethernet frame.
    OneFrame,
    /// Legal, but will travel as this many IP fragments on a 1,500-byte MTU path.
    Fragmented {
        /// Number of IP fragments.
        fragments: usize,
        /// The one-frame payload it exceeds.
        mtu_payload: usize,
    },
}

/// Checks a payload size for one datagram over IPv4 (`ipv6 == false`) or IPv6.
pub fn check_payload(len: usize, ipv6: bool) -> Result<Fit, TooLarge> {
    let (max, mtu_payload, family, ip_header) = if ipv6 {
        (MAX_PAYLOAD_V6, MTU_PAYLOAD_V6, "IPv6", 48)
    } else {
        (MAX_PAYLOAD_V4, MTU_PAYLOAD_V4, "IPv4", 20)
    };
    if len > max {
        return Err(TooLarge { len, max, family });
    }
    if len <= mtu_payload {
        return Ok(Fit::OneFrame);
    }
    // Each fragment carries up to 1,500 − IP header bytes of the UDP datagram, rounded down to a
    // multiple of 8 (fragment offsets count 8-byte units). The IPv6 figure includes its fragment
    // header (40 + 8).
    let per_fragment = (1500 - ip_header) / 8 * 8;
    let fragments = (len + 8).div_ceil(per_fragment);
    Ok(Fit::Fragmented {
        fragments,
        mtu_payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_payload_limits() {
        assert_eq!(check_payload(0, false), Ok(Fit::OneFrame));
        assert_eq!(check_payload(1472, false), Ok(Fit::OneFrame));
        assert_eq!(
            check_payload(1473, false),
            Ok(Fit::Fragmented {
                fragments: 2,
                mtu_payload: 1472
            })
        );
        assert!(matches!(
            check_payload(65_507, false),
            Ok(Fit::Fragmented { fragments: 45, .. })
        ));
        assert_eq!(
            check_payload(65_508, false),
            Err(TooLarge {
                len: 65_508,
                max: 65_507,
                family: "IPv4"
            })
        );
        assert_eq!(check_payload(1452, true), Ok(Fit::OneFrame));
        assert!(check_payload(65_527, true).is_ok());
        assert!(check_payload(65_528, true).is_err());
    }
}
