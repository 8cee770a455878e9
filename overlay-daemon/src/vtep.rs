//! A node's VTEP addresses (one per underlay family at most) and the rule that picks the
//! family two nodes use between them. The rule is symmetric, so both ends of a pair agree
//! without asking each other: each receives from the address the other sends from.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use overlay_common::{
    maps::VtepKey,
    wire::{VXLAN6_OVERHEAD, VXLAN_OVERHEAD},
};
use serde::{Deserialize, Serialize};

/// Which underlay family a node would rather use with peers that have both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    #[default]
    Ipv4,
    Ipv6,
}

/// A node's VTEP addresses: at least one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vteps {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub prefer: Prefer,
}

impl Vteps {
    /// An IPv4-only node (the only kind before IPv6 underlays).
    pub const fn v4(ip: Ipv4Addr) -> Self {
        Self {
            v4: Some(ip),
            v6: None,
            prefer: Prefer::Ipv4,
        }
    }

    /// The address this node reaches `peer` at: IPv6 when both have an IPv6 VTEP and either
    /// has no IPv4 one or both prefer IPv6; else IPv4 when both have one; else none (the two
    /// share no underlay family).
    pub fn toward(&self, peer: &Vteps) -> Option<IpAddr> {
        let both6 = self.v6.is_some() && peer.v6.is_some();
        let both4 = self.v4.is_some() && peer.v4.is_some();
        let six = both6 && (!both4 || (self.prefer == Prefer::Ipv6 && peer.prefer == Prefer::Ipv6));
        if six {
            peer.v6.map(IpAddr::V6)
        } else if both4 {
            peer.v4.map(IpAddr::V4)
        } else {
            None
        }
    }

    /// What encapsulation adds on this node: with an IPv6 VTEP some peers may be reached
    /// over IPv6, and every container gets the MTU that fits that.
    pub fn overhead(&self) -> u32 {
        if self.v6.is_some() {
            VXLAN6_OVERHEAD
        } else {
            VXLAN_OVERHEAD
        }
    }

    /// The address local endpoints are recorded with (the datapath does not read it): the
    /// IPv4 one if there is one.
    pub fn own(&self) -> IpAddr {
        match (self.v4, self.v6) {
            (Some(v4), _) => IpAddr::V4(v4),
            (None, Some(v6)) => IpAddr::V6(v6),
            (None, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// Both addresses, for logs.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> {
        let v4 = self.v4.map(IpAddr::V4);
        v4.into_iter().chain(self.v6.map(IpAddr::V6))
    }

    /// Whether `ip` is one of them.
    pub fn has(&self, ip: IpAddr) -> bool {
        self.addrs().any(|a| a == ip)
    }
}

impl fmt::Display for Vteps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a} and {b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => f.write_str("none"),
        }
    }
}

/// Why `ip` cannot be a VTEP address, if it cannot: peers must be able to send to it, and
/// its datapath key must be its own (an IPv4-mapped IPv6 address would be keyed, and
/// encapsulated to, as the IPv4 address it maps).
pub fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Some("an unspecified, loopback or multicast address");
    }
    // (IPv4 link-local stays allowed: a flat underlay may run on 169.254/16, as earlier
    // releases allowed.)
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => {
            Some("a link-local address (a VTEP must be reachable through routers)")
        }
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() || v6.to_ipv4().is_some() => {
            Some("an IPv4-mapped or -compatible IPv6 address: give the IPv4 address itself")
        }
        _ => None,
    }
}

/// The datapath's key of a VTEP address (IPv4 mapped into IPv6).
pub fn key(ip: IpAddr) -> VtepKey {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address of a datapath VTEP key.
pub fn from_key(key: VtepKey) -> IpAddr {
    Ipv6Addr::from(key).to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v4: Option<&str>, v6: Option<&str>, prefer: Prefer) -> Vteps {
        Vteps {
            v4: v4.map(|a| a.parse().unwrap()),
            v6: v6.map(|a| a.parse().unwrap()),
            prefer,
        }
    }

    #[test]
    fn the_family_between_two_nodes_is_agreed_from_either_end() {
        use Prefer::*;
        let four = node(Some("198.18.0.1"), None, Ipv4);
        let six = node(None, Some("2001:2:0:ff00::2"), Ipv4);
        let both = node(Some("198.18.0.3"), Some("2001:2:0:ff00::3"), Ipv4);
        let both6 = node(Some("198.18.0.4"), Some("2001:2:0:ff00::4"), Ipv6);
        let both6b = node(Some("198.18.0.5"), Some("2001:2:0:ff00::5"), Ipv6);
        let cases = [
            (four, six, None),
            (four, both, Some("198.18.0.3")),
            (six, both, Some("2001:2:0:ff00::3")),
            (both, both6, Some("198.18.0.4")),
            (both6, both6b, Some("2001:2:0:ff00::5")),
            (six, both6, Some("2001:2:0:ff00::4")),
        ];
        for (a, b, want) in cases {
            let want: Option<IpAddr> = want.map(|w| w.parse().unwrap());
            assert_eq!(a.toward(&b), want, "{a} -> {b}");
            // The other end uses the same family.
            let back = b.toward(&a);
            assert_eq!(
                back.map(|x| x.is_ipv6()),
                want.map(|x| x.is_ipv6()),
                "{b} -> {a}"
            );
        }
    }

    #[test]
    fn keys_round_trip_in_both_families() {
        for ip in ["198.18.0.1", "2001:2:0:ff00::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(from_key(key(ip)), ip);
        }
        assert_eq!(
            key("198.18.0.1".parse().unwrap()),
            overlay_common::wire::vtep_v4(overlay_common::wire::ipv4_key([198, 18, 0, 1]))
        );
    }

    #[test]
    fn addresses_no_peer_can_send_to_or_that_alias_another_key_are_refused() {
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:198.18.0.1",
            "::198.18.0.1",
        ] {
            assert!(unusable(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in ["198.18.0.1", "169.254.1.1", "2001:2:0:ff00::1", "fd00::1"] {
            assert_eq!(unusable(good.parse().unwrap()), None, "{good}");
        }
    }

    #[test]
    fn an_ipv6_vtep_costs_every_container_twenty_bytes_of_mtu() {
        let four = node(Some("198.18.0.1"), None, Prefer::Ipv4);
        let both = node(Some("198.18.0.1"), Some("2001:2:0:ff00::1"), Prefer::Ipv4);
        assert_eq!(four.overhead(), 50);
        assert_eq!(both.overhead(), 70);
    }
}
