//! Protocol constants shared by the datapath, the daemon and the tests: header lengths,
//! offsets in a VXLAN packet, ethertypes and IP protocols. The one place they are defined.

/// IANA port for VXLAN (RFC 7348).
pub const VXLAN_DEFAULT_PORT: u16 = 4789;
/// The VXLAN "I" flag: the VNI field is valid.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

pub const ETH_HLEN: usize = 14;
/// An IPv4 header without options (the only kind the overlay sends).
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const VXLAN_HLEN: usize = 8;
pub const TCP_HLEN: usize = 20;
pub const ICMP_HLEN: usize = 8;
pub const ARP_HLEN: usize = 28;

/// What encapsulation adds to an inner Ethernet frame, and what the container MTU loses to
/// it: outer IPv4 + UDP + VXLAN + the inner Ethernet header (the outer Ethernet header
/// replaces the inner one at the front). Underlay MTU 1500 gives containers 1450.
pub const VXLAN_OVERHEAD: u32 = (IPV4_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN) as u32;
/// The same over an IPv6 underlay: the outer IPv6 header is 20 bytes longer. Underlay MTU
/// 1500 gives containers 1430.
pub const VXLAN6_OVERHEAD: u32 = (IPV6_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN) as u32;
/// Offset of the VXLAN header in a packet with an option-less outer IPv4 header.
pub const VXLAN_OFF: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;
/// Offset of the inner Ethernet header.
pub const INNER_ETH_OFF: usize = VXLAN_OFF + VXLAN_HLEN;
/// Offset of the inner IP header (IPv4 or IPv6).
pub const INNER_IP_OFF: usize = INNER_ETH_OFF + ETH_HLEN;

/// Offsets of IPv4 header fields, from the start of the IPv4 header.
pub const IPV4_CHECK_OFF: usize = 10;
pub const IPV4_SRC_OFF: usize = 12;
pub const IPV4_DST_OFF: usize = 16;
/// IPv4 "don't fragment".
pub const IP_DF: u16 = 0x4000;

/// TCP flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// An IPv6 header (extension headers follow it, each with its own length).
pub const IPV6_HLEN: usize = 40;
/// ICMPv6 neighbour solicitation / advertisement body: type, code, checksum, flags and the
/// target address (RFC 4861 4.3, 4.4), before options.
pub const NDP_HLEN: usize = 24;
/// ICMPv6 message types.
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
pub const ICMPV6_NEIGH_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGH_ADVERT: u8 = 136;
pub const ICMPV6_REDIRECT: u8 = 137;
/// The smallest MTU IPv6 allows: an ICMPv6 error never makes a packet larger (RFC 4443).
pub const IPV6_MIN_MTU: usize = 1280;
/// The least MTU IPv4 works with (RFC 791).
pub const IPV4_MIN_MTU: usize = 68;

/// Source ports for the outer UDP header come from this range (RFC 7348 section 5).
pub const VXLAN_SRC_PORT_MIN: u16 = 49152;
pub const VXLAN_SRC_PORT_MAX: u16 = 65535;

/// The IPv4-mapped IPv6 prefix (`::ffff:0:0/96`) VTEP keys of IPv4 VTEPs carry.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// The VTEP key (`maps::VtepKey`) of an IPv4 VTEP, from its network order key.
#[inline(always)]
pub const fn vtep_v4(key: u32) -> [u8; 16] {
    let o = key.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
    ]
}

/// The network order key of an IPv4 VTEP's key; `None` for an IPv6 VTEP.
#[inline(always)]
pub fn vtep_v4_key(vtep: &[u8; 16]) -> Option<u32> {
    let prefix = u64::from_ne_bytes([
        vtep[0], vtep[1], vtep[2], vtep[3], vtep[4], vtep[5], vtep[6], vtep[7],
    ]) == 0
        && u32::from_ne_bytes([vtep[8], vtep[9], vtep[10], vtep[11]])
            == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    prefix.then(|| u32::from_ne_bytes([vtep[12], vtep[13], vtep[14], vtep[15]]))
}

/// Converts IPv4 octets to the datapath's key representation.
#[inline(always)]
pub const fn ipv4_key(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Converts the datapath's key representation back to octets.
#[inline(always)]
pub const fn ipv4_octets(key: u32) -> [u8; 4] {
    key.to_ne_bytes()
}

const _: () = assert!(VXLAN_OVERHEAD == 50);
const _: () = assert!(VXLAN6_OVERHEAD == 70);
const _: () = assert!(INNER_ETH_OFF == 50);
