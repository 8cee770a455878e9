//! Packets a container sends through its gateway to an address outside the overlay. The host
//! the container runs on gets those for its own addresses (replies to the kubelet's probes
//! and to hostPort connections made on the node, host-network services): the daemon keeps
//! them in `HOST_ADDRS` (its interfaces' addresses, never loopback or link-local ones, so a
//! container never reaches what the host serves on 127.0.0.1). The overlay routes nothing
//! beyond its hosts, so anything else is dropped as an unknown destination, as before.
//! A FIB lookup cannot tell: it answers "not forwarded" for a destination without a route as
//! for a local one.

use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_skb_change_type, programs::TcContext};
use overlay_common::{wire::ETH_HLEN, Direction, DropReason};

use crate::{
    counters::count,
    headers::{Ipv4Hdr, Ipv6Hdr, Packet as _},
    kernel::pack,
    maps::HOST_ADDRS,
};

/// `skb->pkt_type` for a frame addressed to this host: the frame carries the virtual gateway's
/// MAC, which the stack would otherwise drop as another host's.
const PACKET_HOST: u32 = 0;

/// An IPv4 packet to an address outside the overlay (see the module docs).
#[inline(never)]
pub fn deliver4(ctx: &TcContext) -> i64 {
    pack(try_deliver4(ctx))
}

#[inline(always)]
fn try_deliver4(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip = ctx
        .header::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    let mut key = [0u8; 16];
    key[10] = 0xff;
    key[11] = 0xff;
    key[12..].copy_from_slice(&ip.dst);
    to_stack(ctx, &key)
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
    to_stack(ctx, &ip.dst)
}

#[inline(always)]
fn to_stack(ctx: &TcContext, dst: &[u8; 16]) -> Result<i32, DropReason> {
    if unsafe { HOST_ADDRS.get(dst) }.is_none() {
        return Err(DropReason::UnknownDestination);
    }
    if unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) } != 0 {
        return Err(DropReason::RedirectFailed);
    }
    count(Direction::ToHost, ctx.len());
    Ok(TC_ACT_OK)
}
