//! IP address ranges in CIDR notation, parsed strictly.
//!
//! Tenants name their upstream ranges as CIDRs and the operator derives
//! NetworkPolicy `except` lists from them, so both sides need one parser that
//! refuses anything ambiguous: a range must be written in its canonical form
//! (no host bits set), exactly as a NetworkPolicy `ipBlock` states it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Ranges closed to upstream traffic unless a Tenant names them exactly:
/// private networks, link-local (cloud metadata at 169.254.169.254),
/// loopback, "this network", shared address space (CGNAT; some clouds put
/// pods or their metadata service there, e.g. 100.100.100.200), and the
/// NAT64 prefixes through which an IPv6 pod reaches private IPv4 ranges.
/// The operator's NetworkPolicy excepts each from a wider range a Tenant
/// names.
pub const CLOSED_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
];

/// The link-local ranges, `169.254.0.0/16` (RFC 3927) and `fe80::/10`
/// (RFC 4291 section 2.5.6). Cloud metadata endpoints live in the IPv4 one;
/// the server never connects to either.
pub const LINK_LOCAL_RANGES: [Cidr; 2] = [
    Cidr {
        network: IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)),
        prefix_len: 16,
    },
    Cidr {
        network: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        prefix_len: 10,
    },
];

/// Cloud metadata and credential endpoints. Each hands out instance or
/// workload credentials to whoever asks from inside, so the server never
/// connects to them (connectors and issuer alike) and an issuer range must
/// not contain them:
///
/// - `169.254.169.254`: instance metadata of AWS, Google Cloud, Azure,
///   OpenStack and others (link-local, listed for clarity).
/// - `169.254.170.2`: Amazon ECS task metadata and task-role credentials
///   (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`).
/// - `169.254.170.23` and `fd00:ec2::23`: Amazon EKS Pod Identity agent
///   (the AWS SDKs' container credential provider).
/// - `fd00:ec2::254`: AWS instance metadata over IPv6 (Nitro instances;
///   "IPv6 on AWS", Supporting Amazon VPC services). A unique-local address,
///   so `allowPrivateTargets` alone would open it.
/// - `100.100.100.200`: Alibaba Cloud ECS instance metadata (inside the
///   shared range 100.64.0.0/10).
/// - `168.63.129.16`: Azure WireServer ("What is IP address 168.63.129.16?",
///   Azure Virtual Network docs): a public address that reaches the host's
///   platform agent.
pub const METADATA_ADDRESSES: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
];

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

    /// True when `ip` is of the same family and lies inside this range.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.contains(&Cidr {
            network: ip,
            prefix_len: width(ip),
        })
    }

    /// Why an issuer may not be reached in this range, if it may not: the
    /// NetworkPolicy would open through it a link-local range of
    /// [`LINK_LOCAL_RANGES`] or a cloud metadata address of
    /// [`METADATA_ADDRESSES`]. A wider range does not: the NetworkPolicy
    /// excepts each of [`CLOSED_RANGES`] from it, so only a range inside a
    /// closed range opens what that holds.
    pub fn metadata_reach(&self) -> Option<String> {
        if let Some(range) = LINK_LOCAL_RANGES.iter().find(|r| r.contains(self)) {
            return Some(format!("lies inside the link-local range {range}"));
        }
        let inside_closed = closed_ranges().any(|k| k.contains(self));
        METADATA_ADDRESSES
            .iter()
            .find(|ip| inside_closed && self.contains_ip(**ip))
            .map(|ip| format!("contains the cloud metadata address {ip}"))
    }

    /// True when the two ranges share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }
}

/// [`CLOSED_RANGES`], parsed.
pub fn closed_ranges() -> impl Iterator<Item = Cidr> {
    CLOSED_RANGES.iter().filter_map(|c| c.parse().ok())
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
    fn metadata_reach_names_what_a_range_would_open() {
        for (range, reason) in [
            (
                "169.254.0.0/16",
                "lies inside the link-local range 169.254.0.0/16",
            ),
            (
                "169.254.169.254/32",
                "lies inside the link-local range 169.254.0.0/16",
            ),
            ("fe80::1/128", "lies inside the link-local range fe80::/10"),
            (
                "fc00::/7",
                "contains the cloud metadata address fd00:ec2::254",
            ),
            (
                "fd00::/8",
                "contains the cloud metadata address fd00:ec2::254",
            ),
            (
                "fd00:ec2::254/128",
                "contains the cloud metadata address fd00:ec2::254",
            ),
            (
                "fd00:ec2::/120",
                "contains the cloud metadata address fd00:ec2::23",
            ),
            (
                "100.64.0.0/10",
                "contains the cloud metadata address 100.100.100.200",
            ),
        ] {
            assert_eq!(
                cidr(range).metadata_reach().as_deref(),
                Some(reason),
                "{range}"
            );
        }
        // Wider ranges keep the closed ranges inside them closed.
        for range in [
            "0.0.0.0/0",
            "169.0.0.0/8",
            "::/0",
            "fc00::/6",
            "100.0.0.0/8",
            "203.0.113.10/32",
            "169.255.0.0/16",
            "fec0::/10",
            "fd00:ec2::300/120",
            "2001:db8::/32",
        ] {
            assert_eq!(cidr(range).metadata_reach(), None, "{range}");
        }
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
