//! IP address ranges in CIDR notation, parsed strictly.
//!
//! Tenants name their upstream ranges as CIDRs and the operator derives
//! NetworkPolicy `except` lists from them, so both sides need one parser that
//! refuses anything ambiguous: a range must be written in its canonical form
//! (no host bits set), exactly as a NetworkPolicy `ipBlock` states it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 address range: a network address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a string is not a canonical CIDR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/prefix` part.
    #[error("{0:?} is not in CIDR notation (address/prefix, e.g. 203.0.113.0/24)")]
    MissingPrefix(String),
    /// The address part is not an IP address.
    #[error("{0:?} does not start with an IPv4 or IPv6 address")]
    BadAddress(String),
    /// The prefix length is not a number within the address family's width,
    /// or is written with a sign or a leading zero.
    #[error(
        "{0:?} has a prefix length outside 0..=32 (IPv4) or 0..=128 (IPv6), or written with a sign or leading zero"
    )]
    BadPrefix(String),
    /// An IPv6 range whose network address is IPv4-mapped (`::ffff:0:0/96`,
    /// RFC 4291 section 2.5.5.2): Kubernetes' CIDR parsing refuses it (CEL
    /// `isCIDR`, `cidr()`), and network plugins disagree on what it means
    /// (some read `::ffff:0.0.0.0/96` as `0.0.0.0/0`). Write the IPv4 range
    /// instead.
    #[error("{0:?} is an IPv4-mapped IPv6 range; write the IPv4 range itself (e.g. 0.0.0.0/0)")]
    Ipv4Mapped(String),
    /// Bits below the prefix are set, so the range is ambiguous.
    #[error("{given:?} has host bits set; the range it denotes is written {canonical}")]
    HostBitsSet {
        /// The string as given.
        given: String,
        /// The same range in canonical form.
        canonical: String,
    },
}

impl Cidr {
    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// True when `other` is of the same family and lies inside this range
    /// (a range contains itself).
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix_len >= self.prefix_len
            && match (self.network, mask(other.network, self.prefix_len)) {
                (IpAddr::V4(a), IpAddr::V4(b)) => a == b,
                (IpAddr::V6(a), IpAddr::V6(b)) => a == b,
                _ => false,
            }
    }

    /// True when `other` lies inside this range and is smaller than it, as a
    /// NetworkPolicy `except` entry must.
    pub fn strictly_contains(&self, other: &Cidr) -> bool {
        self.contains(other) && other.prefix_len > self.prefix_len
    }

    /// True when the two ranges share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }
}

fn width(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Clears every bit of `addr` below `prefix_len`.
fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((u32::from(v4) & keep).into())
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & keep).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| CidrError::MissingPrefix(s.to_owned()))?;
        let network: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::BadAddress(s.to_owned()))?;
        if let IpAddr::V6(v6) = network
            && v6.to_ipv4_mapped().is_some()
        {
            return Err(CidrError::Ipv4Mapped(s.to_owned()));
        }
        // As Go's `netip.ParsePrefix` (behind the API server's `cidr()`):
        // decimal digits only, no leading zero.
        let prefix_len = if prefix.is_empty()
            || !prefix.bytes().all(|b| b.is_ascii_digit())
            || (prefix.len() > 1 && prefix.starts_with('0'))
        {
            None
        } else {
            prefix.parse::<u8>().ok()
        }
        .filter(|p| *p <= width(network))
        .ok_or_else(|| CidrError::BadPrefix(s.to_owned()))?;
        let masked = mask(network, prefix_len);
        if masked != network {
            return Err(CidrError::HostBitsSet {
                given: s.to_owned(),
                canonical: Cidr {
                    network: masked,
                    prefix_len,
                }
                .to_string(),
            });
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_canonical_ranges_of_both_families() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(cidr("203.0.113.7/32").to_string(), "203.0.113.7/32");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("::/0").prefix_len(), 0);
    }

    #[test]
    fn refuses_malformed_ranges() {
        for (input, expected) in [
            ("10.0.0.0", CidrError::MissingPrefix("10.0.0.0".into())),
            ("10.0.0/8", CidrError::BadAddress("10.0.0/8".into())),
            (
                "example.com/8",
                CidrError::BadAddress("example.com/8".into()),
            ),
            ("10.0.0.0/33", CidrError::BadPrefix("10.0.0.0/33".into())),
            ("10.0.0.0/", CidrError::BadPrefix("10.0.0.0/".into())),
            ("10.0.0.0/+8", CidrError::BadPrefix("10.0.0.0/+8".into())),
            ("::/129", CidrError::BadPrefix("::/129".into())),
            ("10.0.0.0/08", CidrError::BadPrefix("10.0.0.0/08".into())),
            ("0.0.0.0/00", CidrError::BadPrefix("0.0.0.0/00".into())),
            (
                "::ffff:0.0.0.0/96",
                CidrError::Ipv4Mapped("::ffff:0.0.0.0/96".into()),
            ),
            (
                "::ffff:a00:0/104",
                CidrError::Ipv4Mapped("::ffff:a00:0/104".into()),
            ),
            (
                "::ffff:10.0.0.0/104",
                CidrError::Ipv4Mapped("::ffff:10.0.0.0/104".into()),
            ),
        ] {
            assert_eq!(input.parse::<Cidr>(), Err(expected), "{input}");
        }
    }

    #[test]
    fn refuses_host_bits_and_names_the_canonical_form() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>(),
            Err(CidrError::HostBitsSet {
                given: "10.1.2.3/8".into(),
                canonical: "10.0.0.0/8".into()
            })
        );
    }

    #[test]
    fn containment_respects_prefix_and_family() {
        let all = cidr("0.0.0.0/0");
        let ten = cidr("10.0.0.0/8");
        let pods = cidr("10.244.0.0/16");
        assert!(all.strictly_contains(&ten));
        assert!(ten.strictly_contains(&pods));
        assert!(ten.contains(&ten));
        assert!(!ten.strictly_contains(&ten));
        assert!(!pods.contains(&ten));
        assert!(pods.overlaps(&ten));
        assert!(!cidr("192.168.0.0/16").overlaps(&ten));
        assert!(!cidr("::/0").contains(&ten));
        assert!(cidr("::/0").contains(&cidr("fc00::/7")));
    }
}
