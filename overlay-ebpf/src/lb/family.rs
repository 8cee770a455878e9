//! The two address families per-packet balancing works on: their maps, where their headers
//! keep the addresses, and how an address is replaced with its checksums. The balancing
//! itself (`super`) is written once over `Family`.

use aya_ebpf::{
    bindings::BPF_F_PSEUDO_HDR,
    helpers::{bpf_csum_diff, bpf_csum_update},
    maps::LruHashMap,
    programs::TcContext,
};
use overlay_common::{
    lb::{fold6, BackendOf, CtEntry, FlowKey, RevNatEntry},
    wire::{ETH_HLEN, IPV4_CHECK_OFF, IPV4_DST_OFF, IPV4_HLEN, IPV4_SRC_OFF, IPV6_HLEN},
    DropReason, EndpointInfo, EndpointIp6Key, EndpointIpKey,
};

use crate::headers::Packet as _;
use crate::maps::{
    ENDPOINTS_BY_IP, ENDPOINTS_BY_IP6, LB6_BACKENDS, LB6_BACKEND_ADDRS, LB6_CT, LB6_REVNAT,
    LB_BACKENDS, LB_BACKEND_ADDRS, LB_CT, LB_REVNAT,
};

/// A family's connection tracking (`LB_CT`, `LB6_CT`) and reverse NAT maps.
pub type CtMap<F> =
    LruHashMap<FlowKey<<F as Family>::Ip>, CtEntry<<F as Family>::Ip, <F as Family>::Pad>>;
pub type RevNatMap<F> = LruHashMap<FlowKey<<F as Family>::Ip>, RevNatEntry<<F as Family>::Ip>>;

pub trait Family: Sized {
    /// An address as the maps key it (network-order words).
    type Ip: Copy + PartialEq + 'static;
    /// `CtEntry`'s padding (see there).
    type Pad: Copy + Default + 'static;
    /// Offset of the TCP/UDP header (balanced packets have no IP options or extension
    /// headers).
    const L4_OFF: usize;
    fn ct() -> &'static CtMap<Self>;
    fn revnat() -> &'static RevNatMap<Self>;
    fn backend(id: u32) -> Option<&'static BackendOf<Self::Ip>>;
    /// Whether `ip:port` is a backend of some service (a flow to it directly is recorded
    /// on nodes that track direct flows).
    fn is_backend(ip: &Self::Ip, port: u16) -> bool;
    /// The endpoint of network `vni` the packet is addressed to.
    fn dst_endpoint(ctx: &TcContext, vni: u32)
        -> Result<Option<&'static EndpointInfo>, DropReason>;
    /// The address folded into 32 bits for `flow_hash`.
    fn fold(ip: &Self::Ip) -> u32;
    /// Replaces the source (or, with `dst`, destination) address `old` by `new`, fixing the
    /// L4 checksum at `csum_off` (its pseudo-header; `flags` for a UDP zero checksum) and
    /// any IP header checksum.
    fn replace_addr(
        ctx: &TcContext,
        csum_off: usize,
        flags: u64,
        dst: bool,
        old: &Self::Ip,
        new: &Self::Ip,
    ) -> Result<(), DropReason>;
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    type Ip = u32;
    type Pad = [u8; 0];
    const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;

    #[inline(always)]
    fn ct() -> &'static CtMap<V4> {
        &LB_CT
    }
    #[inline(always)]
    fn revnat() -> &'static RevNatMap<V4> {
        &LB_REVNAT
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<&'static BackendOf<u32>> {
        unsafe { LB_BACKENDS.get(id) }
    }
    #[inline(always)]
    fn is_backend(ip: &u32, port: u16) -> bool {
        let addr = BackendOf {
            ip: *ip,
            port,
            _pad: 0,
        };
        unsafe { LB_BACKEND_ADDRS.get(addr) }.is_some()
    }
    #[inline(always)]
    fn dst_endpoint(
        ctx: &TcContext,
        vni: u32,
    ) -> Result<Option<&'static EndpointInfo>, DropReason> {
        let ip = ctx
            .header::<u32>(ETH_HLEN + IPV4_DST_OFF)
            .ok_or(DropReason::Malformed)?;
        Ok(unsafe { ENDPOINTS_BY_IP.get(EndpointIpKey { vni, ip }) })
    }
    #[inline(always)]
    fn fold(ip: &u32) -> u32 {
        *ip
    }
    #[inline(always)]
    fn replace_addr(
        ctx: &TcContext,
        csum_off: usize,
        flags: u64,
        dst: bool,
        old: &u32,
        new: &u32,
    ) -> Result<(), DropReason> {
        let fail = |_| DropReason::LbNatFailed;
        let (old, new) = (*old as u64, *new as u64);
        ctx.l4_csum_replace(csum_off, old, new, BPF_F_PSEUDO_HDR as u64 | flags | 4)
            .map_err(fail)?;
        ctx.l3_csum_replace(ETH_HLEN + IPV4_CHECK_OFF, old, new, 4)
            .map_err(fail)?;
        let off = if dst { IPV4_DST_OFF } else { IPV4_SRC_OFF };
        ctx.store(ETH_HLEN + off, &(new as u32), 0).map_err(fail)
    }
}

/// `bpf_l4_csum_replace`'s flag (kernel 6.16) for an IPv6 header: a pseudo-header change
/// then leaves a CHECKSUM_COMPLETE `skb->csum` alone (the address and the checksum field
/// change by opposite amounts) instead of adjusting it as for IPv4, where the IP header
/// checksum absorbs the change.
const BPF_F_IPV6: u64 = 1 << 7;

/// Offsets of the addresses in the IPv6 header.
const IPV6_SRC_OFF: usize = 8;
const IPV6_DST_OFF: usize = 24;

impl Family for V6 {
    type Ip = [u32; 4];
    type Pad = [u8; 4];
    const L4_OFF: usize = ETH_HLEN + IPV6_HLEN;

    #[inline(always)]
    fn ct() -> &'static CtMap<V6> {
        &LB6_CT
    }
    #[inline(always)]
    fn revnat() -> &'static RevNatMap<V6> {
        &LB6_REVNAT
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<&'static BackendOf<[u32; 4]>> {
        unsafe { LB6_BACKENDS.get(id) }
    }
    #[inline(always)]
    fn is_backend(ip: &[u32; 4], port: u16) -> bool {
        let addr = BackendOf {
            ip: *ip,
            port,
            _pad: 0,
        };
        unsafe { LB6_BACKEND_ADDRS.get(addr) }.is_some()
    }
    #[inline(always)]
    fn dst_endpoint(
        ctx: &TcContext,
        vni: u32,
    ) -> Result<Option<&'static EndpointInfo>, DropReason> {
        let ip6 = ctx
            .header::<[u8; 16]>(ETH_HLEN + IPV6_DST_OFF)
            .ok_or(DropReason::Malformed)?;
        Ok(unsafe { ENDPOINTS_BY_IP6.get(EndpointIp6Key { vni, ip6 }) })
    }
    #[inline(always)]
    fn fold(ip: &[u32; 4]) -> u32 {
        fold6(ip)
    }
    /// IPv6 has no header checksum; the 16-byte change goes into the L4 checksum as one
    /// difference.
    #[inline(always)]
    fn replace_addr(
        ctx: &TcContext,
        csum_off: usize,
        flags: u64,
        dst: bool,
        old: &[u32; 4],
        new: &[u32; 4],
    ) -> Result<(), DropReason> {
        let fail = |_| DropReason::LbNatFailed;
        // Straight from where the addresses are (the helper only reads them): copies would
        // take stack the reply path does not have.
        let diff = unsafe {
            bpf_csum_diff(
                old.as_ptr() as *mut u32,
                16,
                new.as_ptr() as *mut u32,
                16,
                0,
            )
        };
        if diff < 0 {
            return Err(DropReason::LbNatFailed);
        }
        let diff = diff as u64;
        let pseudo = BPF_F_PSEUDO_HDR as u64 | flags;
        if ctx
            .l4_csum_replace(csum_off, 0, diff, pseudo | BPF_F_IPV6)
            .is_err()
        {
            // An older kernel refuses the flag and takes `diff` off a CHECKSUM_COMPLETE
            // `skb->csum` (after decapsulation behind a NIC that sums): added back (a no-op
            // for any other skb), or the receiving stack reports a hardware checksum fault.
            ctx.l4_csum_replace(csum_off, 0, diff, pseudo)
                .map_err(fail)?;
            unsafe { bpf_csum_update(ctx.skb.skb, diff as u32) };
        }
        let off = if dst { IPV6_DST_OFF } else { IPV6_SRC_OFF };
        ctx.store(ETH_HLEN + off, new, 0).map_err(fail)
    }
}

/// An IPv6 address as the maps key it: its bytes, in memory order, as four words.
#[inline(always)]
pub fn key6(ip: [u8; 16]) -> [u32; 4] {
    unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(ip) }
}
