//! VXLAN encapsulation done in the program (RFC 7348): room is made with bpf_skb_adjust_room
//! so GSO packets stay GSO (the kernel segments them as UDP tunnel packets later), the outer
//! headers are written in one store, and the packet is handed to the underlay's neighbour
//! layer (bpf_redirect_neigh) with the next hop the daemon pinned for the VTEP, so no route
//! lookup runs per packet; without one the kernel routes the packet.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect_neigh},
    programs::TcContext,
};
use overlay_common::{
    wire::{
        ETH_HLEN, ETH_P_IP, IPPROTO_UDP, IPV4_HLEN, IP_DF, UDP_HLEN, VXLAN_FLAG_VNI, VXLAN_HLEN,
        VXLAN_OVERHEAD, VXLAN_SRC_PORT_MAX, VXLAN_SRC_PORT_MIN,
    },
    Config, Direction, DropReason,
};

use crate::{
    counters::count,
    headers::{ipv4_checksum, EthHdr, Ipv4Hdr, UdpHdr, VxlanHdr},
    kernel::{redirected, AF_INET},
    maps::VTEPS,
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

/// Inner L2 length in the top byte of the flags (BPF_F_ADJ_ROOM_ENCAP_L2(len)).
const ENCAP_L2_ETH_LEN: u64 = (ETH_HLEN as u64) << 56;
const ENCAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
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

#[inline(always)]
pub fn to_vtep(
    ctx: &TcContext,
    cfg: &Config,
    vni: u32,
    vtep_ip: u32,
    inner_eth: &EthHdr,
    // The inner packet's TOS (IPv4) or traffic class (IPv6): DSCP and ECN go outside too.
    tos: u8,
) -> Result<i32, DropReason> {
    let nexthop = unsafe { VTEPS.get(vtep_ip) }
        .ok_or(DropReason::UnknownVtep)?
        .nexthop;
    let inner_len = ctx.len();
    let outer_ip_len = inner_len + (IPV4_HLEN + UDP_HLEN + VXLAN_HLEN) as u32;
    // What does not fit the underlay was answered before (icmp::too_big); a GSO packet's
    // outer length must still fit its 16-bit field.
    if outer_ip_len > u16::MAX as u32 {
        return Err(DropReason::TooBig);
    }
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };

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
        vxlan: VxlanHdr {
            flags: VXLAN_FLAG_VNI,
            reserved1: [0; 3],
            vni: [(vni >> 16) as u8, (vni >> 8) as u8, vni as u8],
            reserved2: 0,
        },
        inner_eth: *inner_eth,
    };
    hdr.ip.check = ipv4_checksum(&hdr.ip);

    ctx.adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .map_err(|_| DropReason::EncapFailed)?;
    ctx.store(0, &hdr, 0).map_err(|_| DropReason::EncapFailed)?;

    let len = ctx.len();
    let ret = if nexthop != 0 {
        let mut nh = bpf_redir_neigh {
            nh_family: AF_INET,
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: nexthop },
        };
        let len = core::mem::size_of::<bpf_redir_neigh>() as i32;
        unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, &mut nh, len, 0) }
    } else {
        unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) }
    };
    let verdict = redirected(ret)?;
    count(Direction::EncapTx, len);
    Ok(verdict)
}
