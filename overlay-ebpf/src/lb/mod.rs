//! Service load balancing on the from-container path, per packet (DC/OS Minuteman's idea, in
//! the datapath), for traffic that does not come from a local socket (sockets are balanced at
//! connect time, `sock_lb`): a TCP/UDP packet to a service VIP:port gets a backend from the
//! service's Maglev table, the flow is pinned in `LB_CT` (`LB6_CT` for IPv6) so it keeps its
//! backend while the backend lives, and the destination is rewritten before delivery or
//! encapsulation. Replies are translated back on the client's host (`LB_REVNAT`,
//! `LB6_REVNAT`). Both families share the flow logic (`flows`, over `family::Family`).
//!
//! Flows have a life: a FIN or RST closes them (a new SYN on the tuple starts afresh), idle
//! ones expire, and expired entries are never used. A translated tuple is unique: one a live
//! flow holds gets the new flow's source port remapped, and a direct flow is never merged
//! with a translated one (`direct`). A client that is its own backend (hairpin) is
//! translated at both ends, so it sees the VIP.

mod direct;
mod family;
mod flows;
mod nat;
mod reject;

pub use direct::{check_direct, check_direct6};
pub use reject::{reject, reject6};

use aya_ebpf::programs::TcContext;
use overlay_common::{
    lb::{Service6Key, ServiceInfo, ServiceKey},
    wire::{
        ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, TCP_ACK, TCP_FIN, TCP_RST,
        TCP_SYN,
    },
    Direction, DropReason, LocalIface,
};

use crate::{
    counters::count,
    headers::{Ipv4Hdr, Packet as _, TcpHdr},
    maps::{LB6_SERVICES, LB_BACKENDS, LB_MAGLEV, LB_SERVICES},
    monitor,
};
use family::{key6, V4, V6};
use flows::flow;

pub(crate) const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;
pub(crate) const L4_OFF6: usize = ETH_HLEN + IPV6_HLEN;
/// Offsets of fields in the IPv6 header.
const IPV6_NEXT_HEADER_OFF: usize = 6;
const IPV6_SRC_OFF: usize = 8;
const IPV6_DST_OFF: usize = 24;
/// Source ports a remapped flow tries in turn, spread over the kernel's default ephemeral
/// range. UDP flows hold their tuples for a minute, so a busy client can have a good part of
/// the range held towards one backend: with 16 tries, 40 % held still fails one flow in
/// ten million.
const REMAP_TRIES: u32 = 16;

/// What the service path made of a packet to the gateway. (Small enough for the return
/// register: these paths are subprograms.)
pub enum Verdict {
    /// Not addressed to a service: forward as usual.
    NotService,
    /// Rewritten in place for its backend (or, a hairpin reply, back to its client): the
    /// packet names where it goes now.
    Translated,
    /// To a service without backends: to be answered by the caller (`reject`, `reject6`: a
    /// reset or port unreachable), out of this path's stack frame.
    Reject,
}

/// Ports, and TCP flags (0 for UDP), of an unfragmented TCP/UDP packet with a plain IPv4
/// header. Anything else (options, fragments, other protocols) is never balanced.
#[inline(always)]
fn ports(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<(u16, u16, u8)> {
    if !ip.is_plain_v4() || ip.is_fragment() || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP)
    {
        return None;
    }
    l4_ports(ctx, L4_OFF, ip.proto)
}

/// The same for an IPv6 packet whose next header is `proto`: TCP or UDP right after the
/// IPv6 header (a packet with extension headers, fragments included, is never balanced).
#[inline(always)]
fn ports6(ctx: &TcContext, proto: u8) -> Option<(u16, u16, u8)> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    l4_ports(ctx, L4_OFF6, proto)
}

#[inline(always)]
fn l4_ports(ctx: &TcContext, off: usize, proto: u8) -> Option<(u16, u16, u8)> {
    let p = ctx.header::<[u8; 4]>(off)?;
    let flags = if proto == IPPROTO_TCP {
        ctx.header::<TcpHdr>(off)?.flags
    } else {
        0
    };
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
        flags,
    ))
}

#[inline(always)]
fn is_syn(flags: u8) -> bool {
    flags & TCP_SYN != 0 && flags & TCP_ACK == 0
}

#[inline(always)]
fn closes(flags: u8) -> bool {
    flags & (TCP_FIN | TCP_RST) != 0
}

/// A container's IPv4 packet to the virtual gateway: balanced if it is for a service. Not
/// inlined: a stack frame of its own, apart from the forwarding path's.
#[inline(never)]
pub fn to_service(ctx: &TcContext, me: &LocalIface) -> Result<Verdict, DropReason> {
    let ip = ctx
        .header::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    let Some((sport, dport, flags)) = ports(ctx, &ip) else {
        return Ok(Verdict::NotService);
    };
    let vip = ip.dst_key();
    let key = ServiceKey {
        vni: me.vni,
        vip,
        port: dport,
        proto: ip.proto,
        _pad: 0,
    };
    let svc = unsafe { LB_SERVICES.get(key) };
    let flow = flow(me.vni, ip.src_key(), vip, sport, dport, ip.proto);
    balance::<V4>(ctx, svc, &flow, flags, Some(vip))
}

/// The same for a container's IPv6 packet.
#[inline(never)]
pub fn to_service6(ctx: &TcContext, me: &LocalIface) -> Result<Verdict, DropReason> {
    let proto = ctx
        .header::<u8>(ETH_HLEN + IPV6_NEXT_HEADER_OFF)
        .ok_or(DropReason::Malformed)?;
    let Some((sport, dport, flags)) = ports6(ctx, proto) else {
        return Ok(Verdict::NotService);
    };
    let addr = |off| ctx.header::<[u8; 16]>(ETH_HLEN + off).map(key6);
    let key = Service6Key {
        vni: me.vni,
        vip: addr(IPV6_DST_OFF).ok_or(DropReason::Malformed)?,
        port: dport,
        proto,
        _pad: 0,
    };
    let svc = unsafe { LB6_SERVICES.get(key) };
    // Built after the lookup: the service key's stack slot is free again.
    let src = addr(IPV6_SRC_OFF).ok_or(DropReason::Malformed)?;
    let vip = addr(IPV6_DST_OFF).ok_or(DropReason::Malformed)?;
    let flow = flow(me.vni, src, vip, sport, dport, proto);
    // The monitor's note has room for an IPv4 VIP only.
    balance::<V6>(ctx, svc, &flow, flags, None)
}

/// A packet of `flow` to the gateway and the service at its destination, if any: translated
/// for one with backends, to be answered for one without, and a backend's reply to a
/// hairpin flow (sent to the VIP too) turned back to its client. `vip`, if given, is noted
/// for the monitor.
#[inline(always)]
fn balance<F: family::Family>(
    ctx: &TcContext,
    svc: Option<&ServiceInfo>,
    flow: &flows::Key<F>,
    flags: u8,
    vip: Option<u32>,
) -> Result<Verdict, DropReason> {
    let Some(svc) = svc else {
        if !flows::is_hairpin_reply::<F>(flow) {
            return Ok(Verdict::NotService);
        }
        flows::to_client::<F>(ctx, flow, flags)?;
        if let Some(vip) = vip {
            monitor::note_service(ctx, vip, 0);
        }
        return Ok(Verdict::Translated);
    };
    if svc.backends == 0 {
        count(Direction::LbRejected, ctx.len());
        return Ok(Verdict::Reject);
    }
    flows::translate::<F>(ctx, svc, flow, flags)?;
    if let Some(vip) = vip {
        monitor::note_service(ctx, vip, flow.dst_port);
    }
    Ok(Verdict::Translated)
}

/// A packet about to be delivered to a local container: the reply of a translated flow goes
/// back to the client with the VIP:port the client used as its source.
#[inline(always)]
pub fn to_client(ctx: &TcContext, vni: u32, ip: &Ipv4Hdr) -> Result<(), DropReason> {
    let Some((sport, dport, flags)) = ports(ctx, ip) else {
        return Ok(());
    };
    let key = flow(vni, ip.src_key(), ip.dst_key(), sport, dport, ip.proto);
    flows::to_client::<V4>(ctx, &key, flags)
}

/// `to_client` for the IPv4 packet in `ctx` (its header read here: the callers hold none).
/// Not inlined: the forwarding and decapsulation paths have no stack left for it.
#[inline(never)]
pub fn to_client_here(ctx: &TcContext, vni: u32) -> Result<(), DropReason> {
    let ip = ctx
        .header::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    to_client(ctx, vni, &ip)
}

/// The same for an IPv6 packet.
#[inline(never)]
pub fn to_client6(ctx: &TcContext, vni: u32) -> Result<(), DropReason> {
    let mut key = flows::Key::<V6>::default();
    match flow6(ctx, vni, &mut key)? {
        Some(flags) => flows::to_client::<V6>(ctx, &key, flags),
        None => Ok(()),
    }
}

/// Fills `key` with the flow of the IPv6 packet in `ctx` in network `vni` if it is one
/// that is balanced (`ports6`): its TCP flags. (Filled in place: a returned key would be
/// one more copy on the decapsulation path's stack.)
#[inline(always)]
fn flow6(ctx: &TcContext, vni: u32, key: &mut flows::Key<V6>) -> Result<Option<u8>, DropReason> {
    let proto = ctx
        .header::<u8>(ETH_HLEN + IPV6_NEXT_HEADER_OFF)
        .ok_or(DropReason::Malformed)?;
    let Some((sport, dport, flags)) = ports6(ctx, proto) else {
        return Ok(None);
    };
    let addr = |off| ctx.header::<[u8; 16]>(ETH_HLEN + off).map(key6);
    let src = addr(IPV6_SRC_OFF).ok_or(DropReason::Malformed)?;
    let dst = addr(IPV6_DST_OFF).ok_or(DropReason::Malformed)?;
    *key = flow(vni, src, dst, sport, dport, proto);
    Ok(Some(flags))
}

/// The backend of `hash` in a service's Maglev table.
#[inline(always)]
pub fn pick(
    svc: &ServiceInfo,
    hash: u32,
) -> Result<(u32, overlay_common::lb::BackendInfo), DropReason> {
    let id = pick_id(svc, hash)?;
    let backend = unsafe { LB_BACKENDS.get(id) }.ok_or(DropReason::LbNoBackend)?;
    Ok((id, *backend))
}

/// The backend id of `hash` in a service's Maglev table (of either family: the id names an
/// `LB_BACKENDS` entry for an IPv4 service, an `LB6_BACKENDS` one for an IPv6 service).
#[inline(always)]
pub fn pick_id(svc: &ServiceInfo, hash: u32) -> Result<u32, DropReason> {
    if svc.table_size == 0 {
        return Err(DropReason::LbNoBackend);
    }
    let index = svc.table_offset.wrapping_add(hash % svc.table_size);
    Ok(LB_MAGLEV
        .get(index)
        .ok_or(DropReason::LbNoBackend)?
        .backend_id)
}
