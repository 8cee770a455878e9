//! Packets a container sends through its gateway to an address outside the overlay. The host
//! the container runs on gets those for its own addresses (replies to the kubelet's probes
//! and to hostPort connections made on the node, host-network services): the daemon keeps
//! them in `HOST_ADDRS` (its interfaces' addresses, never loopback or link-local ones, so a
//! container never reaches what the host serves on 127.0.0.1). The overlay routes nothing
//! beyond its hosts, so anything else is dropped as an unknown destination, as before.
//! A FIB lookup cannot tell: it answers "not forwarded" for a destination without a route as
//! for a local one.
//!
//! DNS: when the daemon serves it (`CONFIG_F_DNS`), a container's UDP or TCP to its own
//! network's gateway address, port 53, goes to the host's stack too, marked `DNS_MARK`: the
//! daemon routes that mark to a table delivering locally, to its sockets bound to the
//! gateway addresses. Another network's gateway is not reached (isolation), nor any other
//! port of the gateway.

use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_skb_change_type, programs::TcContext};
use overlay_common::{
    maps::{CONFIG_F_DNS, DNS_MARK, DNS_PORT},
    wire::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN},
    Direction, DropReason,
};

use crate::{
    counters::count,
    headers::{Ipv4Hdr, Ipv6Hdr, Packet as _},
    kernel::pack,
    maps::{HOST_ADDRS, NETWORKS},
};

/// `skb->pkt_type` for a frame addressed to this host: the frame carries the virtual gateway's
/// MAC, which the stack would otherwise drop as another host's.
const PACKET_HOST: u32 = 0;

/// An IPv4 packet to an address outside the overlay (see the module docs), sent by an
/// endpoint of network `vni`; `flags`: the configuration's.
#[inline(never)]
pub fn deliver4(ctx: &TcContext, vni: u32, flags: u16) -> i64 {
    pack(try_deliver4(ctx, vni, flags))
}

#[inline(always)]
fn try_deliver4(ctx: &TcContext, vni: u32, flags: u16) -> Result<i32, DropReason> {
    let ip = ctx
        .header::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    if flags & CONFIG_F_DNS != 0 && (ip.proto == IPPROTO_UDP || ip.proto == IPPROTO_TCP) {
        let net = unsafe { NETWORKS.get(vni) }.ok_or(DropReason::UnknownNetwork)?;
        // Fragments are not handed over (a query fits one packet; a first fragment alone
        // would only wait in the host's reassembly queue).
        if ip.dst_key() == net.gateway_ip {
            if ip.is_fragment() {
                return Err(DropReason::UnknownDestination);
            }
            let dport = ctx
                .header::<[u8; 2]>(ETH_HLEN + ip.ihl_bytes() + 2)
                .ok_or(DropReason::Malformed)?;
            return to_resolver(ctx, dport);
        }
    }
    let mut key = [0u8; 16];
    key[10] = 0xff;
    key[11] = 0xff;
    key[12..].copy_from_slice(&ip.dst);
    to_stack(ctx, &key)
}

/// The same for IPv6 (a DNS query must be UDP or TCP right after the IPv6 header).
#[inline(never)]
pub fn deliver6(ctx: &TcContext, vni: u32, flags: u16) -> i64 {
    pack(try_deliver6(ctx, vni, flags))
}

#[inline(always)]
fn try_deliver6(ctx: &TcContext, vni: u32, flags: u16) -> Result<i32, DropReason> {
    let ip = ctx
        .header::<Ipv6Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    if flags & CONFIG_F_DNS != 0 && (ip.next_header == IPPROTO_UDP || ip.next_header == IPPROTO_TCP)
    {
        let net = unsafe { NETWORKS.get(vni) }.ok_or(DropReason::UnknownNetwork)?;
        if ip.dst == net.gateway_ip6 {
            let dport = ctx
                .header::<[u8; 2]>(ETH_HLEN + IPV6_HLEN + 2)
                .ok_or(DropReason::Malformed)?;
            return to_resolver(ctx, dport);
        }
    }
    to_stack(ctx, &ip.dst)
}

/// A packet to the container's own gateway: to the daemon's resolver if it is for port 53,
/// dropped otherwise (the gateway serves nothing else).
#[inline(always)]
fn to_resolver(ctx: &TcContext, dport: [u8; 2]) -> Result<i32, DropReason> {
    if u16::from_be_bytes(dport) != DNS_PORT {
        return Err(DropReason::UnknownDestination);
    }
    if unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) } != 0 {
        return Err(DropReason::RedirectFailed);
    }
    ctx.set_mark(DNS_MARK);
    count(Direction::ToDns, ctx.len());
    Ok(TC_ACT_OK)
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
