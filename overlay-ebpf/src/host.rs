//! Packets a container sends through its gateway to an address outside the overlay. The host
//! the container runs on gets those it would deliver to itself (its own addresses: replies to
//! the kubelet's probes and to hostPort connections made on the node, host-network services);
//! the overlay routes nothing beyond its hosts, so anything else is dropped as an unknown
//! destination, as before. The kernel's FIB decides what is local: a lookup answering
//! "not forwarded" (local or broadcast; the daemon turns forwarding on for the host side of
//! each veth, without which every lookup answers "forwarding disabled").

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NOT_FWDED, TC_ACT_OK},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_skb_change_type},
    programs::TcContext,
};
use overlay_common::{wire::ETH_HLEN, Direction, DropReason};

use crate::{
    counters::count,
    headers::{Ipv4Hdr, Ipv6Hdr, Packet as _},
    kernel::pack,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `skb->pkt_type` for a frame addressed to this host: the frame carries the virtual gateway's
/// MAC, which the stack would otherwise drop as another host's.
const PACKET_HOST: u32 = 0;

/// An IPv4 packet to an address outside the overlay (see the module docs). Not inlined: the
/// lookup's parameters get a frame of their own, off the forwarding path.
#[inline(never)]
pub fn deliver4(ctx: &TcContext) -> i64 {
    pack(try_deliver4(ctx))
}

#[inline(always)]
fn try_deliver4(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip = ctx
        .header::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    // Multicast and the limited broadcast are flooding, which never happens here.
    if ip.dst[0] >= 224 {
        return Err(DropReason::UnknownDestination);
    }
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
    p.__bindgen_anon_2.tos = ip.tos;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    to_stack(ctx, &mut p)
}

/// The same for IPv6.
#[inline(never)]
pub fn deliver6(ctx: &TcContext) -> i64 {
    pack(try_deliver6(ctx))
}

#[inline(always)]
fn try_deliver6(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip = ctx
        .header::<Ipv6Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    if ip.dst[0] == 0xff {
        return Err(DropReason::UnknownDestination);
    }
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET6;
    p.l4_protocol = ip.next_header;
    p.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.payload_len);
    p.__bindgen_anon_3.ipv6_src = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(ip.src) };
    p.__bindgen_anon_4.ipv6_dst = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(ip.dst) };
    to_stack(ctx, &mut p)
}

#[inline(always)]
fn to_stack(ctx: &TcContext, p: &mut bpf_fib_lookup) -> Result<i32, DropReason> {
    let skb = ctx.skb.skb;
    p.ifindex = unsafe { (*skb).ifindex };
    let rc = unsafe {
        fib_lookup(
            skb as *mut _,
            p as *mut _,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_NOT_FWDED as i64 {
        return Err(DropReason::UnknownDestination);
    }
    if unsafe { bpf_skb_change_type(skb, PACKET_HOST) } != 0 {
        return Err(DropReason::UnknownDestination);
    }
    count(Direction::ToHost, ctx.len());
    Ok(TC_ACT_OK)
}
