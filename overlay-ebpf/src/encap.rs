//! VXLAN encapsulation done in the program (RFC 7348): room is made with bpf_skb_adjust_room
//! so GSO packets stay GSO (the kernel segments them as UDP tunnel packets later), the outer
//! headers are written in one store, and the packet is handed to the underlay's neighbour
//! layer (bpf_redirect_neigh) with the next hop the daemon pinned for the VTEP, so no route
//! lookup runs per packet; without one the kernel routes the packet.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect_neigh},
    programs::TcContext,
};
use overlay_common::{
    maps::VtepKey,
    wire::{
        vtep_v4_key, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, IPV4_HLEN, IP_DF, UDP_HLEN,
        VXLAN6_OVERHEAD, VXLAN_FLAG_VNI, VXLAN_HLEN, VXLAN_OVERHEAD, VXLAN_SRC_PORT_MAX,
        VXLAN_SRC_PORT_MIN,
    },
    Config, Direction, DropReason,
};

use crate::{
    counters::count,
    headers::{ipv4_checksum, EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, VxlanHdr},
    kernel::{redirected, AF_INET, AF_INET6},
    maps::VTEPS,
    vxlan::key_eq,
};

/// Everything in front of the inner IPv4 header after encapsulation.
#[repr(C)]
#[derive(Clone, Copy)]
struct EncapHeader {
    outer_eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner_eth: EthHdr,
}
const _: () = assert!(core::mem::size_of::<EncapHeader>() == ETH_HLEN + VXLAN_OVERHEAD as usize);

/// The same with an outer IPv6 header.
#[repr(C)]
#[derive(Clone, Copy)]
struct EncapHeader6 {
    outer_eth: EthHdr,
    ip: Ipv6Hdr,
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner_eth: EthHdr,
}
const _: () = assert!(core::mem::size_of::<EncapHeader6>() == ETH_HLEN + VXLAN6_OVERHEAD as usize);

/// Inner L2 length in the top byte of the flags (BPF_F_ADJ_ROOM_ENCAP_L2(len)).
const ENCAP_L2_ETH_LEN: u64 = (ETH_HLEN as u64) << 56;
const ENCAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
    | ENCAP_L2_ETH_LEN;
const ENCAP6_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 as u64
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
    | ENCAP_L2_ETH_LEN;
const OUTER_TTL: u8 = 64;

/// Maps a flow hash onto the VXLAN source port range, so the underlay's ECMP and RSS spread
/// flows while each flow keeps one path.
#[inline(always)]
fn source_port(hash: u32) -> u16 {
    let span = (VXLAN_SRC_PORT_MAX - VXLAN_SRC_PORT_MIN) as u32 + 1;
    VXLAN_SRC_PORT_MIN + (((hash as u64 * span as u64) >> 32) as u16)
}

/// What encapsulation towards `vtep` adds: the family of its key decides the outer header.
#[inline(always)]
pub fn overhead(vtep: &VtepKey) -> u32 {
    match vtep_v4_key(vtep) {
        Some(_) => VXLAN_OVERHEAD,
        None => VXLAN6_OVERHEAD,
    }
}

/// A packet handed to the underlay: the verdict, and the node id of the VTEP it went to.
pub struct Sent {
    pub verdict: i32,
    pub vtep_node: u32,
}

/// Encapsulates the packet for `vtep` (the endpoint's `VtepKey`: its family is the outer
/// header's) and redirects it to the underlay.
#[inline(always)]
pub fn to_vtep(
    ctx: &TcContext,
    cfg: &Config,
    vni: u32,
    vtep: &VtepKey,
    inner_eth: &EthHdr,
    // The inner packet's TOS (IPv4) or traffic class (IPv6): DSCP and ECN go outside too.
    tos: u8,
) -> Result<Sent, DropReason> {
    let info = unsafe { VTEPS.get(vtep) }.ok_or(DropReason::UnknownVtep)?;
    let vtep_node = info.node_id;
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let verdict = match vtep_v4_key(vtep) {
        Some(dst) => {
            let nexthop = vtep_v4_key(&info.nexthop).unwrap_or(0);
            encap4(ctx, cfg, vni, dst, nexthop, inner_eth, tos, hash)?
        }
        None => {
            let nexthop = info.nexthop;
            encap6(ctx, cfg, vni, vtep, &nexthop, inner_eth, tos, hash)?
        }
    };
    Ok(Sent { verdict, vtep_node })
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn encap4(
    ctx: &TcContext,
    cfg: &Config,
    vni: u32,
    vtep_ip: u32,
    nexthop: u32,
    inner_eth: &EthHdr,
    tos: u8,
    hash: u32,
) -> Result<i32, DropReason> {
    let inner_len = ctx.len();
    let outer_ip_len = inner_len + (IPV4_HLEN + UDP_HLEN + VXLAN_HLEN) as u32;
    // What does not fit the underlay was answered before (icmp::too_big); a GSO packet's
    // outer length must still fit its 16-bit field.
    if outer_ip_len > u16::MAX as u32 {
        return Err(DropReason::TooBig);
    }

    let mut hdr = EncapHeader {
        outer_eth: EthHdr {
            // Filled in by the neighbour layer on redirect.
            dst: [0; 6],
            src: [0; 6],
            ether_type: ETH_P_IP.to_be_bytes(),
        },
        ip: Ipv4Hdr {
            version_ihl: 0x45,
            tos,
            tot_len: (outer_ip_len as u16).to_be_bytes(),
            id: [0; 2],
            frag_off: IP_DF.to_be_bytes(),
            ttl: OUTER_TTL,
            proto: IPPROTO_UDP,
            check: [0; 2],
            src: cfg.vtep_ip.to_ne_bytes(),
            dst: vtep_ip.to_ne_bytes(),
        },
        udp: UdpHdr {
            src_port: source_port(hash).to_be_bytes(),
            dst_port: cfg.vxlan_port.to_be_bytes(),
            len: ((outer_ip_len - IPV4_HLEN as u32) as u16).to_be_bytes(),
            // Zero is allowed for IPv4 and is all a GSO packet can carry per segment.
            check: [0; 2],
        },
        vxlan: vxlan_header(vni),
        inner_eth: *inner_eth,
    };
    hdr.ip.check = ipv4_checksum(&hdr.ip);

    ctx.adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .map_err(|_| DropReason::EncapFailed)?;
    ctx.store(0, &hdr, 0).map_err(|_| DropReason::EncapFailed)?;

    let nh = (nexthop != 0).then_some(bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: nexthop },
    });
    to_underlay(ctx, cfg, nh)
}

/// The same with an outer IPv6 header. The outer UDP checksum is zero (RFC 6935, under
/// RFC 6936's conditions: the VXLAN payload is an Ethernet frame whose IP packet carries its
/// own checksums, and receivers are configured for it; this datapath accepts it): with GSO
/// the kernel copies the outer UDP header into every segment without recomputing a
/// checksum (`bpf_skb_adjust_room` marks `SKB_GSO_UDP_TUNNEL`, not `_CSUM`), so zero is the
/// only value correct for every segment. A kernel vxlan peer needs `udp6zerocsumrx`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn encap6(
    ctx: &TcContext,
    cfg: &Config,
    vni: u32,
    vtep: &VtepKey,
    nexthop: &VtepKey,
    inner_eth: &EthHdr,
    tos: u8,
    hash: u32,
) -> Result<i32, DropReason> {
    let udp_len = ctx.len() + (UDP_HLEN + VXLAN_HLEN) as u32;
    if udp_len > u16::MAX as u32 {
        return Err(DropReason::TooBig);
    }
    // Version 6, the inner traffic class, and the flow hash as flow label (RFC 6438).
    let label = hash & 0x000f_ffff;
    let vtc_flow = (6u32 << 28) | ((tos as u32) << 20) | label;
    let hdr = EncapHeader6 {
        outer_eth: EthHdr {
            dst: [0; 6],
            src: [0; 6],
            ether_type: ETH_P_IPV6.to_be_bytes(),
        },
        ip: Ipv6Hdr {
            vtc_flow: vtc_flow.to_be_bytes(),
            payload_len: (udp_len as u16).to_be_bytes(),
            next_header: IPPROTO_UDP,
            hop_limit: OUTER_TTL,
            src: cfg.vtep_ip6,
            dst: *vtep,
        },
        udp: UdpHdr {
            src_port: source_port(hash).to_be_bytes(),
            dst_port: cfg.vxlan_port.to_be_bytes(),
            len: (udp_len as u16).to_be_bytes(),
            check: [0; 2],
        },
        vxlan: vxlan_header(vni),
        inner_eth: *inner_eth,
    };

    ctx.adjust_room(VXLAN6_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, ENCAP6_FLAGS)
        .map_err(|_| DropReason::EncapFailed)?;
    ctx.store(0, &hdr, 0).map_err(|_| DropReason::EncapFailed)?;

    let word =
        |i: usize| u32::from_ne_bytes([nexthop[i], nexthop[i + 1], nexthop[i + 2], nexthop[i + 3]]);
    let nh = (!key_eq(nexthop, &[0; 16])).then(|| bpf_redir_neigh {
        nh_family: AF_INET6,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            ipv6_nh: [word(0), word(4), word(8), word(12)],
        },
    });
    to_underlay(ctx, cfg, nh)
}

/// Hands the encapsulated packet to the underlay's neighbour layer, with the pinned next
/// hop if there is one (else the kernel routes it), and counts it once the redirect is
/// taken.
#[inline(always)]
fn to_underlay(
    ctx: &TcContext,
    cfg: &Config,
    nexthop: Option<bpf_redir_neigh>,
) -> Result<i32, DropReason> {
    let len = ctx.len();
    let ret = match nexthop {
        Some(mut nh) => {
            let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
            unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, &mut nh, size, 0) }
        }
        None => unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) },
    };
    let verdict = redirected(ret)?;
    count(Direction::EncapTx, len);
    Ok(verdict)
}

#[inline(always)]
fn vxlan_header(vni: u32) -> VxlanHdr {
    VxlanHdr {
        flags: VXLAN_FLAG_VNI,
        reserved1: [0; 3],
        vni: [(vni >> 16) as u8, (vni >> 8) as u8, vni as u8],
        reserved2: 0,
    }
}
