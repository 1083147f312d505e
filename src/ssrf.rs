//! The SSRF guard: which addresses chatgate may fetch on a user's behalf (media URLs).
//!
//! An address is public when it is in no range of the IANA special-purpose address registries that is not
//! globally reachable ("IANA IPv4 Special-Purpose Address Registry", "IANA IPv6 Special-Purpose Address
//! Registry", RFC 6890), and not multicast. IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:0:0/96`,
//! NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that IPv4 address; the deprecated or tunnelled forms
//! (IPv4-compatible `::/96`, Teredo `2001::/32` inside `2001::/23`, local-use NAT64 `64:ff9b:1::/48`) are
//! refused outright. IPv6 outside global unicast (`2000::/3`) is refused too, whatever a future registry
//! assigns there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 ranges that are not globally reachable: `(network, prefix length, registry name)`.
pub const IPV4_REFUSED: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "this network (RFC 791)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private use (RFC 1918)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (RFC 6598)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (RFC 1122)"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link local (RFC 3927)"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private use (RFC 1918)"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments (RFC 6890)",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation TEST-NET-1 (RFC 5737)",
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "deprecated 6to4 relay anycast (RFC 7526)",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private use (RFC 1918)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (RFC 2544)"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation TEST-NET-2 (RFC 5737)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation TEST-NET-3 (RFC 5737)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (RFC 5771)"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved (RFC 1112), broadcast included",
    ),
];

/// How an IPv6 range is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V6Rule {
    /// Never fetched.
    Refuse,
    /// Judged by the IPv4 address it carries.
    Embedded,
}

/// IPv6 ranges with a rule of their own: `(network, prefix length, rule, registry name)`. The first match wins,
/// so the narrower ranges come first.
pub const IPV6_RULES: &[(Ipv6Addr, u8, V6Rule, &str)] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        V6Rule::Embedded,
        "IPv4-mapped (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        V6Rule::Refuse,
        "IPv4-compatible, loopback and unspecified (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        V6Rule::Refuse,
        "local-use IPv4/IPv6 translation (RFC 8215)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        V6Rule::Embedded,
        "NAT64 well-known prefix (RFC 6052)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        V6Rule::Refuse,
        "discard-only (RFC 6666)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        V6Rule::Refuse,
        "dummy IPv6 prefix (RFC 9780)",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        V6Rule::Refuse,
        "IETF protocol assignments, Teredo (RFC 2928, RFC 4380)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        V6Rule::Refuse,
        "documentation (RFC 3849)",
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        V6Rule::Embedded,
        "6to4 (RFC 3056)",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        V6Rule::Refuse,
        "documentation (RFC 9637)",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        V6Rule::Refuse,
        "segment routing SIDs (RFC 9602)",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        V6Rule::Refuse,
        "unique local (RFC 4193)",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        V6Rule::Refuse,
        "link-local unicast (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        V6Rule::Refuse,
        "site-local, deprecated (RFC 3879)",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        V6Rule::Refuse,
        "multicast (RFC 4291)",
    ),
];

/// Whether chatgate may connect to `ip` for a user: see the module's rules.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !IPV4_REFUSED
        .iter()
        .any(|&(net, len, _)| prefix_matches_v4(bits, u32::from(net), len))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let rule = IPV6_RULES
        .iter()
        .find(|&&(net, len, _, _)| prefix_matches_v6(bits, u128::from(net), len));
    match rule {
        Some((_, _, V6Rule::Refuse, _)) => false,
        Some((_, _, V6Rule::Embedded, _)) => embedded_v4(ip).is_some_and(is_public_v4),
        // Global unicast is 2000::/3; everything else is unassigned or special.
        None => bits >> 125 == 0b001,
    }
}

/// The IPv4 address an IPv4-mapped, NAT64 (RFC 6052, /96) or 6to4 (RFC 3056) address carries.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let segments = ip.segments();
    if segments[0] == 0x2002 {
        // 2002:AABB:CCDD::/48 carries AA.BB.CC.DD in bits 16..48.
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    if prefix_matches_v6(
        bits,
        u128::from(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)),
        96,
    ) || prefix_matches_v6(
        bits,
        u128::from(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)),
        96,
    ) {
        return Some(Ipv4Addr::from(bits as u32));
    }
    None
}

fn prefix_matches_v4(ip: u32, net: u32, len: u8) -> bool {
    len == 0 || (ip ^ net) >> (32 - u32::from(len)) == 0
}

fn prefix_matches_v6(ip: u128, net: u128, len: u8) -> bool {
    len == 0 || (ip ^ net) >> (128 - u32::from(len)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first and last address of a v4 range, and one in the middle.
    fn v4_samples(net: Ipv4Addr, len: u8) -> [Ipv4Addr; 3] {
        let first = u32::from(net);
        let size = if len == 0 {
            u32::MAX
        } else {
            (1u64 << (32 - len)) as u32 - 1
        };
        [first, first + size / 2, first + size].map(Ipv4Addr::from)
    }

    fn v6_samples(net: Ipv6Addr, len: u8) -> [Ipv6Addr; 3] {
        let first = u128::from(net);
        let size = if len == 0 {
            u128::MAX
        } else {
            (1u128 << (128 - len)) - 1
        };
        [first, first + size / 2 + 1, first + size].map(Ipv6Addr::from)
    }

    /// Every IPv4 range of the IANA special-purpose registry that is not globally reachable, at its edges, as
    /// itself and inside each IPv6 form that carries an IPv4 address.
    #[test]
    fn every_special_purpose_ipv4_range_is_refused_in_every_form() {
        for &(net, len, name) in IPV4_REFUSED {
            for v4 in v4_samples(net, len) {
                let [a, b, c, d] = v4.octets();
                let forms: [IpAddr; 4] = [
                    IpAddr::V4(v4),
                    IpAddr::V6(v4.to_ipv6_mapped()),
                    IpAddr::V6(Ipv6Addr::new(
                        0x64,
                        0xff9b,
                        0,
                        0,
                        0,
                        0,
                        u16::from_be_bytes([a, b]),
                        u16::from_be_bytes([c, d]),
                    )),
                    IpAddr::V6(Ipv6Addr::new(
                        0x2002,
                        u16::from_be_bytes([a, b]),
                        u16::from_be_bytes([c, d]),
                        0,
                        0,
                        0,
                        0,
                        1,
                    )),
                ];
                for ip in forms {
                    assert!(!is_public(ip), "{ip} ({name}) must be refused");
                }
            }
        }
    }

    #[test]
    fn every_special_purpose_ipv6_range_is_refused() {
        for &(net, len, rule, name) in IPV6_RULES {
            if rule == V6Rule::Refuse {
                for ip in v6_samples(net, len) {
                    assert!(!is_public(IpAddr::V6(ip)), "{ip} ({name}) must be refused");
                }
            }
        }
        // Teredo embeds a server and a client IPv4 (the latter inverted): refused whatever they are.
        for teredo in [
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:0:0808:0808::f7f7:f7f7",
        ] {
            assert!(!is_public(teredo.parse().unwrap()), "{teredo}");
        }
        for outside in ["4000::1", "8000::1", "e000::1", "1::1"] {
            assert!(
                !is_public(outside.parse().unwrap()),
                "{outside} is not global unicast"
            );
        }
    }

    #[test]
    fn public_addresses_pass_in_every_form() {
        for v4 in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "192.0.3.1",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "223.255.255.255",
        ] {
            let v4: Ipv4Addr = v4.parse().unwrap();
            let [a, b, c, d] = v4.octets();
            assert!(is_public(IpAddr::V4(v4)), "{v4}");
            assert!(is_public(IpAddr::V6(v4.to_ipv6_mapped())), "mapped {v4}");
            let nat64 = Ipv6Addr::new(
                0x64,
                0xff9b,
                0,
                0,
                0,
                0,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
            );
            assert!(is_public(IpAddr::V6(nat64)), "{nat64}");
            let six_to_four = Ipv6Addr::new(
                0x2002,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
                0,
                0,
                0,
                0,
                1,
            );
            assert!(is_public(IpAddr::V6(six_to_four)), "{six_to_four}");
        }
        for v6 in [
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
        ] {
            assert!(is_public(v6.parse().unwrap()), "{v6}");
        }
    }

    #[test]
    fn the_issue_s_examples() {
        for refused in [
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001::1",
            "::127.0.0.1",
            "::10.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused}");
        }
    }
}
