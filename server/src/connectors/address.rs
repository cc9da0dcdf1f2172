//! Which IP addresses a connector may connect to (SSRF).
//!
//! One classifier for every address a connector would dial, whether it came
//! from DNS or from an address literal in the base URL. An IPv6 address that
//! carries an IPv4 address (mapped, compatible, translated, NAT64, 6to4,
//! Teredo) is judged by that IPv4 address too, so `64:ff9b::a9fe:a9fe` is
//! what it reaches: 169.254.169.254. Cloud metadata and link-local addresses
//! are never reachable, whatever `allowPrivateTargets` says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a connector may do with an address, from most to least open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressClass {
    /// Globally reachable: every connector may connect.
    Public,
    /// Loopback, private, unique-local, shared (CGNAT), reserved or
    /// documentation ranges, and translation prefixes whose IPv4 address
    /// cannot be told: only with `allowPrivateTargets`.
    Private,
    /// Link-local (`169.254.0.0/16`, `fe80::/10`) and the cloud metadata
    /// addresses of [`METADATA_ADDRESSES`]: never.
    Forbidden,
}

/// Cloud metadata and credential endpoints, one list with the Tenant
/// validation (which refuses issuer ranges containing them).
pub use bulkhead_crds::cidr::METADATA_ADDRESSES;

/// Whether a connector may connect to `ip`: public addresses always,
/// private ones only with `allow_private` (`allowPrivateTargets`),
/// forbidden ones never.
pub fn may_connect(ip: IpAddr, allow_private: bool) -> bool {
    match classify(ip) {
        AddressClass::Public => true,
        AddressClass::Private => allow_private,
        AddressClass::Forbidden => false,
    }
}

/// The class of an address. For an IPv6 address that carries IPv4
/// addresses ([`embedded_ipv4`]) it is the most restrictive of the IPv6
/// address's own class and the class of each IPv4 address it carries.
pub fn classify(ip: IpAddr) -> AddressClass {
    if METADATA_ADDRESSES.contains(&ip) {
        return AddressClass::Forbidden;
    }
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            let embedded = embedded_ipv4(v6);
            embedded
                .addresses
                .iter()
                .map(|v4| classify_v4(*v4))
                .chain([classify_v6_prefix(v6, embedded.form)])
                .max()
                .unwrap_or(AddressClass::Forbidden)
        }
    }
}

fn classify_v4(v4: Ipv4Addr) -> AddressClass {
    if METADATA_ADDRESSES.contains(&IpAddr::V4(v4)) || v4.is_link_local() {
        return AddressClass::Forbidden;
    }
    let [a, b, ..] = v4.octets();
    let private = v4.is_loopback()
        || v4.is_private()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        // Shared address space (RFC 6598), used for carrier-grade NAT.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments and documentation (RFC 6890).
        || (a == 192 && b == 0)
        // Benchmarking (RFC 2544).
        || (a == 198 && (b == 18 || b == 19))
        // Reserved (RFC 1112) and broadcast.
        || a >= 240;
    if private {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

/// How an IPv6 address carries IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingForm {
    /// An ordinary IPv6 address.
    None,
    /// IPv4-mapped `::ffff:0:0/96` (RFC 4291 section 2.5.5.2): the socket
    /// API connects to the IPv4 address itself.
    Mapped,
    /// IPv4-compatible `::/96` (RFC 4291 section 2.5.5.1, deprecated).
    Compatible,
    /// IPv4-translated `::ffff:0:0:0/96` (RFC 2765 section 2.1, SIIT).
    Translated,
    /// NAT64 well-known prefix `64:ff9b::/96` (RFC 6052 section 2.1).
    Nat64WellKnown,
    /// NAT64 local-use prefix `64:ff9b:1::/48` (RFC 8215): the prefix length
    /// the network uses (48 to 96) is not known here, so every position RFC
    /// 6052 section 2.2 allows is taken as a candidate.
    Nat64LocalUse,
    /// 6to4 `2002::/16` (RFC 3056 section 2): the IPv4 address is bits 16-47.
    SixToFour,
    /// Teredo `2001::/32` (RFC 4380 section 4): the server's IPv4 address is
    /// bits 32-63, the client's is the last 32 bits inverted.
    Teredo,
}

/// The IPv4 addresses an IPv6 address carries, and in which form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedIpv4 {
    /// The form of the IPv6 address.
    pub form: EmbeddingForm,
    /// The IPv4 addresses it may lead to (none for [`EmbeddingForm::None`]).
    pub addresses: Vec<Ipv4Addr>,
}

/// The IPv4 addresses carried by `v6` in any standard form.
pub fn embedded_ipv4(v6: Ipv6Addr) -> EmbeddedIpv4 {
    let bits = u128::from(v6);
    let s = v6.segments();
    let v4_at = |shift: u32| Ipv4Addr::from(((bits >> shift) & 0xffff_ffff) as u32);
    let low32 = v4_at(0);
    let (form, addresses) = if s[..5] == [0; 5] && s[5] == 0xffff {
        (EmbeddingForm::Mapped, vec![low32])
    } else if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        (EmbeddingForm::Translated, vec![low32])
    } else if s[..6] == [0; 6] && !(v6.is_unspecified() || v6.is_loopback()) {
        (EmbeddingForm::Compatible, vec![low32])
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        (EmbeddingForm::Nat64WellKnown, vec![low32])
    } else if s[..3] == [0x64, 0xff9b, 1] {
        // RFC 6052 section 2.2: bits 64-71 (the "u" octet) are never part of
        // the IPv4 address; for prefixes of 48, 56 and 64 bits the address
        // is split around them, for 96 bits it is the last 32 bits.
        let split = |high_bits: u32, high_shift: u32, low_shift: u32| {
            let low_bits = 32 - high_bits;
            let high = (bits >> high_shift) & ((1u128 << high_bits) - 1);
            let low = (bits >> low_shift) & ((1u128 << low_bits) - 1);
            Ipv4Addr::from(((high << low_bits) | low) as u32)
        };
        (
            EmbeddingForm::Nat64LocalUse,
            vec![
                split(16, 64, 40), // /48: bits 48-63 and 72-87
                split(8, 64, 32),  // /56: bits 56-63 and 72-95
                v4_at(24),         // /64: bits 72-103
                low32,             // /96: bits 96-127
            ],
        )
    } else if s[0] == 0x2002 {
        (EmbeddingForm::SixToFour, vec![v4_at(80)])
    } else if s[0] == 0x2001 && s[1] == 0 {
        (EmbeddingForm::Teredo, vec![v4_at(64), !low32])
    } else {
        (EmbeddingForm::None, vec![])
    };
    EmbeddedIpv4 { form, addresses }
}

/// The class of an IPv6 address by its own prefix, before the IPv4
/// addresses it carries are considered.
fn classify_v6_prefix(v6: Ipv6Addr, form: EmbeddingForm) -> AddressClass {
    let s = v6.segments();
    match form {
        // These reach exactly the IPv4 address they carry: a NAT64 or 6to4
        // address of a public IPv4 address is public.
        EmbeddingForm::Mapped | EmbeddingForm::Nat64WellKnown | EmbeddingForm::SixToFour => {
            return AddressClass::Public;
        }
        // Deprecated or local translation mechanisms and tunnels to
        // arbitrary IPv4 addresses: private at best.
        EmbeddingForm::Compatible
        | EmbeddingForm::Translated
        | EmbeddingForm::Nat64LocalUse
        | EmbeddingForm::Teredo => return AddressClass::Private,
        EmbeddingForm::None => {}
    }
    // Link-local unicast fe80::/10 (RFC 4291).
    if (s[0] & 0xffc0) == 0xfe80 {
        return AddressClass::Forbidden;
    }
    let private = v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // Reserved by the IETF (RFC 4291), outside the forms above.
        || s[0] == 0
        // Unique local fc00::/7 (RFC 4193).
        || (s[0] & 0xfe00) == 0xfc00
        // Site-local fec0::/10 (deprecated, still routed by some stacks).
        || (s[0] & 0xffc0) == 0xfec0
        // Discard-only 100::/64 (RFC 6666).
        || s[..4] == [0x100, 0, 0, 0]
        // The rest of 64:ff9b::/32, outside the NAT64 prefixes above.
        || (s[0] == 0x64 && s[1] == 0xff9b)
        // IETF protocol assignments 2001::/23, outside Teredo (RFC 6890).
        || (s[0] == 0x2001 && s[1] < 0x200)
        // Documentation 2001:db8::/32 (RFC 3849) and 3fff::/20 (RFC 9637).
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] & 0xfff0) == 0x3ff0;
    if private {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(ip: &str) -> AddressClass {
        classify(ip.parse().unwrap())
    }

    #[test]
    fn each_embedding_form_yields_its_ipv4_address() {
        let metadata = Ipv4Addr::new(169, 254, 169, 254);
        for (address, form) in [
            ("::ffff:169.254.169.254", EmbeddingForm::Mapped),
            ("::169.254.169.254", EmbeddingForm::Compatible),
            ("::ffff:0:169.254.169.254", EmbeddingForm::Translated),
            ("64:ff9b::169.254.169.254", EmbeddingForm::Nat64WellKnown),
            ("64:ff9b:1::169.254.169.254", EmbeddingForm::Nat64LocalUse),
            ("64:ff9b:1:a9fe:a9:fe00::", EmbeddingForm::Nat64LocalUse),
            ("64:ff9b:1:a9:fe:a9fe::", EmbeddingForm::Nat64LocalUse),
            ("64:ff9b:1:0:a9:fea9:fe00:0", EmbeddingForm::Nat64LocalUse),
            ("2002:a9fe:a9fe::1", EmbeddingForm::SixToFour),
            ("2001:0:a9fe:a9fe::1", EmbeddingForm::Teredo),
            (
                "2001:0:4136:e378:8000:63bf:5601:5601",
                EmbeddingForm::Teredo,
            ),
        ] {
            let embedded = embedded_ipv4(address.parse().unwrap());
            assert_eq!(embedded.form, form, "{address}");
            assert!(
                embedded.addresses.contains(&metadata),
                "{address}: {embedded:?}"
            );
        }
        // RFC 4380 section 4's example: server 65.54.227.120, client 192.0.2.45.
        let teredo = embedded_ipv4("2001:0:4136:e378:8000:63bf:3fff:fdd2".parse().unwrap());
        assert_eq!(
            teredo.addresses,
            [
                Ipv4Addr::new(65, 54, 227, 120),
                Ipv4Addr::new(192, 0, 2, 45)
            ]
        );
        for plain in ["::", "::1", "2606:4700::1111", "fd00:ec2::254"] {
            assert_eq!(
                embedded_ipv4(plain.parse().unwrap()).form,
                EmbeddingForm::None,
                "{plain}"
            );
        }
    }

    #[test]
    fn metadata_and_link_local_are_forbidden_in_every_form() {
        for ip in [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.170.23",
            "100.100.100.200",
            "168.63.129.16",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "fe80::1",
            "::ffff:169.254.169.254",
            "::a9fe:a9fe",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::6464:64c8",
            "::ffff:168.63.129.16",
            "2002:a83f:8110::1",
            "2001:0:a9fe:a9fe::1",
        ] {
            assert_eq!(class(ip), AddressClass::Forbidden, "{ip}");
            assert!(!may_connect(ip.parse().unwrap(), true), "{ip}");
        }
    }

    #[test]
    fn private_ranges_need_allow_private_in_every_form() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::10.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::8.8.8.8",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "100::1",
            "64:ff9b:2::1",
        ] {
            assert_eq!(class(ip), AddressClass::Private, "{ip}");
            assert!(may_connect(ip.parse().unwrap(), true), "{ip}");
            assert!(!may_connect(ip.parse().unwrap(), false), "{ip}");
        }
    }

    #[test]
    fn public_addresses_stay_public_through_nat64_and_6to4() {
        for ip in [
            "140.82.112.6",
            "2606:4700::1111",
            "::ffff:140.82.112.6",
            "64:ff9b::140.82.112.6",
            "2002:8c52:7006::1",
        ] {
            assert_eq!(class(ip), AddressClass::Public, "{ip}");
            assert!(may_connect(ip.parse().unwrap(), false), "{ip}");
        }
    }
}
