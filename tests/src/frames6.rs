//! Hand-built IPv6 frames for BPF_PROG_TEST_RUN tests: Ethernet/IPv6 with any next header,
//! UDP, neighbour discovery, and the ICMPv6 checksum to check what the datapath builds.

use std::net::Ipv6Addr;

pub const NH_HOP_BY_HOP: u8 = 0;
pub const NH_UDP: u8 = 17;
pub const NH_FRAGMENT: u8 = 44;
pub const NH_ICMPV6: u8 = 58;
pub const ND_ROUTER_SOLICIT: u8 = 133;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;

/// The Ethernet multicast address of an IPv6 multicast address (RFC 2464).
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast address of `target` (RFC 4291 2.7.1).
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let o = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The EUI-64 link-local address of `mac`.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8..11].copy_from_slice(&[mac[0] ^ 2, mac[1], mac[2]]);
    o[11..13].copy_from_slice(&[0xff, 0xfe]);
    o[13..16].copy_from_slice(&mac[3..6]);
    Ipv6Addr::from(o)
}

/// Ethernet + IPv6 header + `payload` (which starts with the `next_header` protocol).
#[allow(clippy::too_many_arguments)]
pub fn ipv6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next_header, hop_limit]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

/// The ICMPv6/UDP checksum of `body` over IPv6 from `src` to `dst` (RFC 8200 8.1), with the
/// checksum field as it is in `body`: 0 when `body` carries a valid checksum.
pub fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, body: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + body.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    pseudo.extend_from_slice(body);
    crate::traffic::checksum(&pseudo)
}

/// An ICMPv6 message with its checksum filled in.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(rest);
    let c = checksum6(src, dst, NH_ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A neighbour solicitation for `target` from (`mac`, `src`), to the target's solicited-node
/// group, with a source link-layer option carrying `option_mac` if given.
pub fn neighbour_solicit(
    mac: [u8; 6],
    src: Ipv6Addr,
    target: Ipv6Addr,
    option_mac: Option<[u8; 6]>,
) -> Vec<u8> {
    let group = solicited_node(target);
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&target.octets());
    if let Some(m) = option_mac {
        rest.extend_from_slice(&[1, 1]);
        rest.extend_from_slice(&m);
    }
    let msg = icmp6(src, group, ND_NEIGHBOR_SOLICIT, 0, &rest);
    ipv6_frame(mac, multicast_mac(group), src, group, NH_ICMPV6, 255, &msg)
}

/// The neighbour advertisement a responder sends for `target` at `target_mac` to
/// (`to_mac`, `to`), with `flags` (R 0x80, S 0x40, O 0x20) and a target link-layer option.
pub fn neighbour_advert(
    target_mac: [u8; 6],
    target: Ipv6Addr,
    to_mac: [u8; 6],
    to: Ipv6Addr,
    flags: u8,
) -> Vec<u8> {
    let mut rest = vec![flags, 0, 0, 0];
    rest.extend_from_slice(&target.octets());
    rest.extend_from_slice(&[2, 1]);
    rest.extend_from_slice(&target_mac);
    let msg = icmp6(target, to, ND_NEIGHBOR_ADVERT, 0, &rest);
    ipv6_frame(target_mac, to_mac, target, to, NH_ICMPV6, 255, &msg)
}

/// An Ethernet/IPv6/UDP frame (checksum valid) with `payload`.
pub fn udp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    ipv6_frame(
        src_mac,
        dst_mac,
        src,
        dst,
        NH_UDP,
        64,
        &udp6(src, dst, dport, payload),
    )
}

/// A UDP datagram over IPv6 from port 40000 (checksum valid: it is mandatory over IPv6).
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = checksum6(src, dst, NH_UDP, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// Of captured underlay frames: the VXLAN ones whose inner frame is IPv6, and those of them
/// that are neighbour discovery (which must never cross the underlay).
pub fn inner_ipv6(frames: &[Vec<u8>]) -> (usize, usize) {
    let mut ipv6 = 0;
    let mut ndp = 0;
    for f in frames {
        let Some(vx) = crate::traffic::parse_vxlan(f, 4789) else {
            continue;
        };
        let inner = &vx.inner;
        if inner.len() < 55 || inner[12..14] != [0x86, 0xdd] {
            continue;
        }
        ipv6 += 1;
        if inner[20] == NH_ICMPV6 && (133..=137).contains(&inner[54]) {
            ndp += 1;
        }
    }
    (ipv6, ndp)
}
