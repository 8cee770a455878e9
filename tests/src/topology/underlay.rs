//! The underlay between hosts: plugging namespaces into its switch, its addresses in either
//! family, and extra namespaces on it (routers, strangers).
//!
//! An IPv4 underlay (the default) is 198.18.0.0/24: host `i` at 198.18.0.<i>, etcd at
//! 198.18.0.254. An IPv6-only underlay (`TopologySpec::with_ipv6_underlay`) is
//! 2001:2:0:ff00::/64: host `i` at 2001:2:0:ff00::<i>, etcd at 2001:2:0:ff00::fe, and no
//! IPv4 address anywhere on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use overlay_common::wire::{ETH_HLEN, IPV6_HLEN, UDP_HLEN, VXLAN_HLEN};

use super::{Topology, CONTAINER_MTU, UNDERLAY_MTU};
use crate::Netns;

/// The IPv6 underlay's prefix length (2001:2:0:ff00::/64).
pub const UNDERLAY6_PREFIX_LEN: u8 = 64;

/// Where etcd listens in etcd topologies with an IPv6 underlay.
pub const ETCD_IP6: Ipv6Addr = underlay_ip6(0xfe);

/// Container MTU on a host whose VTEP is IPv6: the outer IPv6 header is 20 bytes longer than
/// IPv4's (outer IPv6 + UDP + VXLAN + inner Ethernet = 70 bytes).
pub const CONTAINER_MTU6: u32 =
    UNDERLAY_MTU - (IPV6_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN) as u32;

/// Address `i` of the IPv6 underlay, 2001:2:0:ff00::<i> (hosts are 1, 2, ...; etcd is 0xfe;
/// tests pick others for routers and strangers).
pub const fn underlay_ip6(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0xff00, 0, 0, 0, i)
}

/// A veth from `ns` (named `ifname`) to the underlay switch (port `peer`), with `ip` on it:
/// 198.18.0.x/24, or 2001:2:0:ff00::x/64 without duplicate address detection (usable at
/// once). For an IPv6 address, IPv6 is turned on for `ifname` and the loopback even where the
/// namespace has it off elsewhere, and the link gets no IPv4 address.
pub(super) fn plug_into_underlay(
    underlay: &Netns,
    ns: &Netns,
    ifname: &str,
    peer: &str,
    ip: IpAddr,
) {
    let mtu = UNDERLAY_MTU.to_string();
    ns.add_veth(ifname, &mtu, peer, underlay.name());
    match ip {
        IpAddr::V4(ip) => {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname]);
        }
        IpAddr::V6(ip) => {
            for dev in [ifname, "lo"] {
                ns.sysctl(&format!("net/ipv6/conf/{dev}/disable_ipv6"), "0");
            }
            let addr = format!("{ip}/{UNDERLAY6_PREFIX_LEN}");
            ns.ip(&["-6", "addr", "add", &addr, "dev", ifname, "nodad"]);
            let v4 = ns.ip(&["-4", "-o", "addr", "show", "dev", ifname]);
            assert!(v4.trim().is_empty(), "IPv4 on an IPv6 underlay link: {v4}");
        }
    }
    ns.ip(&["link", "set", ifname, "up"]);
    underlay.ip(&["link", "set", peer, "master", "br0", "mtu", &mtu, "up"]);
}

/// Host `i`'s (1-based) underlay address in the given family.
pub(super) fn host_underlay_ip(i: usize, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(underlay_ip6(i as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, i as u8))
    }
}

/// Readies the underlay switch of an IPv6 underlay: multicast snooping off, so neighbour
/// solicitations always reach every port (as on a switch without MLD snooping), whatever
/// reports the switch happened to see.
pub fn ready_switch6(underlay: &Netns) {
    underlay.ip(&[
        "link",
        "set",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ]);
}

impl Topology {
    /// Whether the hosts' underlay is IPv6 only (`TopologySpec::with_ipv6_underlay`).
    pub fn ipv6_underlay(&self) -> bool {
        self.ipv6_underlay
    }

    /// The MTU containers get on this topology's hosts (underlay MTU less the VXLAN overhead
    /// of the underlay's family).
    pub fn container_mtu(&self) -> u32 {
        if self.ipv6_underlay {
            CONTAINER_MTU6
        } else {
            CONTAINER_MTU
        }
    }

    /// A new namespace `ovt<id>-<name>` on the underlay switch (port `x<name>`), its link
    /// `ul0` at `ip` (an address of the underlay: 198.18.0.x, or 2001:2:0:ff00::x from
    /// `underlay_ip6`): a router or a stranger on the underlay. An IPv4 one has IPv6 off, so
    /// it sends nothing of IPv6. Deleted (with its switch port) when the handle drops.
    pub fn underlay_node(&self, name: &str, ip: IpAddr) -> Netns {
        let ns = Netns::create(&format!("ovt{}-{name}", self.id));
        if ip.is_ipv4() {
            ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        }
        plug_into_underlay(&self.underlay, &ns, "ul0", &format!("x{name}"), ip);
        ns
    }
}
