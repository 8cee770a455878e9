//! Service load balancing on the from-container path, per packet (DC/OS Minuteman's idea, in
//! the datapath), for traffic that does not come from a local socket (sockets are balanced at
//! connect time, `sock_lb`): a TCP/UDP packet to a service VIP:port gets a backend from the
//! service's Maglev table, the flow is pinned in `LB_CT` so it keeps its backend while the
//! backend lives, and the destination is rewritten before delivery or encapsulation.
//! Replies are translated back on the client's host (`LB_REVNAT`).
//!
//! Flows have a life: a FIN or RST closes them (a new SYN on the tuple starts afresh), idle
//! ones expire, and expired entries are never used. A translated tuple is unique: one a live
//! flow holds gets the new flow's source port remapped, and a direct flow is never merged
//! with a translated one (`direct`). A client that is its own backend (hairpin) is
//! translated at both ends, so it sees the VIP.

mod direct;
mod nat;
mod reject;

pub use direct::check_direct;

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use overlay_common::{
    lb::{
        ct_expired, flow_hash, rev_close_flags, CtEntry, FlowKey, RevNatEntry, ServiceInfo,
        ServiceKey, CT_F_CLOSING, CT_F_DIRECT, CT_F_FIN_CLIENT, CT_F_FIN_SERVER, CT_F_HAIRPIN,
    },
    wire::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    Direction, DropReason, LocalIface,
};

use crate::{
    counters::count,
    headers::{EthHdr, Ipv4Hdr, Packet as _, TcpHdr},
    kernel::{BPF_NOEXIST, EEXIST},
    maps::{LB_BACKENDS, LB_CT, LB_DIRECT, LB_MAGLEV, LB_REVNAT, LB_SERVICES},
};
use nat::{rewrite_dst, rewrite_src};

pub(crate) const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;
/// Source ports a remapped flow tries in turn, spread over the kernel's default ephemeral
/// range. UDP flows hold their tuples for a minute, so a busy client can have a good part of
/// the range held towards one backend: with 16 tries, 40 % held still fails one flow in
/// ten million.
const REMAP_TRIES: u32 = 16;

pub enum Verdict {
    /// Not addressed to a service: forward as usual.
    NotService,
    /// Rewritten: deliver to `to` (network order key); `vip_port` is the service port the
    /// client addressed (0: a hairpin reply translated back, not a service).
    Translated { to: u32, vip_port: u16 },
    /// Answered in place (reset / unreachable); return this verdict.
    Answered(i32),
}

/// Ports, and TCP flags (0 for UDP), of an unfragmented TCP/UDP packet with a plain IPv4
/// header. Anything else (options, fragments, other protocols) is never balanced.
#[inline(always)]
fn ports(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<(u16, u16, u8)> {
    if !ip.is_plain_v4() || ip.is_fragment() || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP)
    {
        return None;
    }
    let p = ctx.header::<[u8; 4]>(L4_OFF)?;
    let flags = if ip.proto == IPPROTO_TCP {
        ctx.header::<TcpHdr>(L4_OFF)?.flags
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

#[inline(always)]
fn flow(vni: u32, src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        vni,
        src_ip: src,
        dst_ip: dst,
        src_port: sport,
        dst_port: dport,
        proto,
        _pad: [0; 3],
    }
}

/// A packet a local container sent to the virtual gateway: balanced if it is for a service.
#[inline(always)]
pub fn to_service(
    ctx: &TcContext,
    me: &LocalIface,
    ifindex: u32,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
) -> Result<Verdict, DropReason> {
    let Some((sport, dport, flags)) = ports(ctx, ip) else {
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
    let Some(svc) = (unsafe { LB_SERVICES.get(key) }) else {
        // The reply of a hairpin flow goes to the VIP too.
        return hairpin_reply(ctx, me, ip, sport, dport);
    };
    if svc.backends == 0 {
        count(Direction::LbRejected, ctx.len());
        return reject::reject(ctx, ifindex, eth, ip, sport, dport).map(Verdict::Answered);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let key = flow(me.vni, ip.src_key(), vip, sport, dport, ip.proto);
    let ct = match LB_CT.get_ptr_mut(key) {
        Some(p) if current(unsafe { &*p }, ip.proto, flags, now) => {
            let ct = unsafe { &mut *p };
            ct.last_seen = now;
            if closes(flags) && close_reply(me.vni, &key, ct, flags) {
                ct.flags |= CT_F_CLOSING;
            }
            *ct
        }
        // New flow, its backend left, or its entry is over (expired, or closed and this is a
        // new SYN): pick from the current table.
        _ => new_flow(svc, &key, flags, now)?,
    };
    let hairpin = ct.flags & CT_F_HAIRPIN != 0;
    rewrite_dst(ctx, ip.proto, vip, ct.backend.ip, dport, ct.backend.port)?;
    let src = if hairpin { vip } else { key.src_ip };
    rewrite_src(ctx, ip.proto, key.src_ip, src, sport, ct.src_port)?;
    count(Direction::LbDnat, ctx.len());
    Ok(Verdict::Translated {
        to: ct.backend.ip,
        vip_port: dport,
    })
}

/// Whether a flow's entry still applies to a packet with `flags`.
#[inline(always)]
fn current(ct: &CtEntry, proto: u8, flags: u8, now: u64) -> bool {
    backend_alive(ct)
        && !ct_expired(ct.last_seen, ct.flags, proto, now)
        && !(is_syn(flags) && ct.flags & CT_F_CLOSING != 0)
}

/// Records the client's FIN or RST on the reverse entry: once the connection is closed both
/// ways (or reset) a direct flow may take its tuple. Whether the flow is closed now (its
/// flow entry then closes too; without a reverse entry of its own, at this packet).
#[inline(always)]
fn close_reply(vni: u32, key: &FlowKey, ct: &CtEntry, tcp_flags: u8) -> bool {
    let dst = if ct.flags & CT_F_HAIRPIN != 0 {
        key.dst_ip
    } else {
        key.src_ip
    };
    let reply = flow(
        vni,
        ct.backend.ip,
        dst,
        ct.backend.port,
        ct.src_port,
        key.proto,
    );
    match LB_REVNAT.get_ptr_mut(reply) {
        // Only this flow's own: a retransmitted FIN of a finished flow must not close the
        // flow that holds the tuple now.
        Some(r) if owned_by(unsafe { &*r }, key) => {
            let flags = rev_close_flags(unsafe { (*r).flags }, tcp_flags, CT_F_FIN_CLIENT);
            unsafe { (*r).flags = flags };
            flags & CT_F_CLOSING != 0
        }
        _ => true,
    }
}

/// The server's FIN (or RST) closed a flow: its flow entry closes too (and a remapped direct
/// flow stops counting as open).
#[inline(always)]
fn close_flow(vni: u32, rev: &RevNatEntry, proto: u8, now: u64) {
    let key = flow(
        vni,
        rev.client_ip,
        rev.vip,
        rev.client_port,
        rev.port,
        proto,
    );
    let Some(p) = LB_CT.get_ptr_mut(key) else {
        return;
    };
    let ct = unsafe { &mut *p };
    if ct.flags & CT_F_CLOSING != 0 {
        return;
    }
    ct.flags |= CT_F_CLOSING;
    if ct.flags & CT_F_DIRECT != 0 && ct.src_port != rev.client_port {
        if let Some(d) = LB_DIRECT.get_ptr_mut(0) {
            direct::add_open(d, u64::MAX);
            unsafe { (*d).tcp_closed = now };
        }
    }
}

/// Picks a backend for a new flow and records it: the reverse entry first, so a flow entry
/// never exists without one. The translated tuple is made unique by remapping the source
/// port when another flow holds it, or claims it on another CPU at the same instant.
#[inline(always)]
fn new_flow(svc: &ServiceInfo, key: &FlowKey, flags: u8, now: u64) -> Result<CtEntry, DropReason> {
    let (backend_id, backend) = select(svc, key)?;
    let hairpin = backend.ip == key.src_ip;
    let dst = if hairpin { key.dst_ip } else { key.src_ip };
    let mut entry_flags = if hairpin { CT_F_HAIRPIN } else { 0 };
    let rev_flags = rev_close_flags(entry_flags, flags, CT_F_FIN_CLIENT);
    let mut port = key.src_port;
    let mut i = 0;
    loop {
        let reply = flow(key.vni, backend.ip, dst, backend.port, port, key.proto);
        if let Some(written) = claim(key, &reply, rev_flags, flags, now)? {
            entry_flags |= written & CT_F_CLOSING;
            break;
        }
        if i == REMAP_TRIES {
            return Err(DropReason::LbTupleConflict);
        }
        i += 1;
        port = remap_port(key, i);
    }
    let ct = CtEntry {
        backend_id,
        backend,
        src_port: port,
        flags: entry_flags,
        last_seen: now,
    };
    LB_CT
        .insert(key, ct, 0)
        .map_err(|_| DropReason::LbNatFailed)?;
    if hairpin {
        count(Direction::LbHairpin, 0);
    }
    count(Direction::LbNewFlow, 0);
    Ok(ct)
}

/// Claims the translated tuple `reply` for `key`'s flow: its reverse entry (back to `key`'s
/// destination and source port). False if another live flow holds it. A tuple without an
/// entry is claimed only if still free when the entry goes in (`BPF_NOEXIST`): the program
/// may run on several CPUs at once, and a flow that looked a moment ago may be claiming the
/// same tuple now. A stale entry (a closed or expired flow's, or this flow's own) is replaced;
/// this flow's own open one keeps the FINs it saw (the flow entry expired or was evicted
/// while the connection was half-closed). The flags written, or None if the tuple is held.
#[inline(always)]
fn claim(
    key: &FlowKey,
    reply: &FlowKey,
    flags: u16,
    tcp_flags: u8,
    now: u64,
) -> Result<Option<u16>, DropReason> {
    let (free, flags) = match unsafe { LB_REVNAT.get(reply) } {
        Some(r) if held_by_another(r, key, now) => return Ok(None),
        Some(r) if owned_by(r, key) && r.flags & CT_F_CLOSING == 0 && !is_syn(tcp_flags) => {
            let fins = r.flags & (CT_F_FIN_CLIENT | CT_F_FIN_SERVER);
            let both = if fins == CT_F_FIN_CLIENT | CT_F_FIN_SERVER {
                CT_F_CLOSING
            } else {
                0
            };
            (false, flags | fins | both)
        }
        Some(_) => (false, flags),
        None => (true, flags),
    };
    let rev = RevNatEntry {
        vip: key.dst_ip,
        port: key.dst_port,
        flags,
        client_ip: key.src_ip,
        client_port: key.src_port,
        _pad: 0,
        last_seen: now,
    };
    match LB_REVNAT.insert(reply, rev, if free { BPF_NOEXIST } else { 0 }) {
        Ok(()) => Ok(Some(flags)),
        Err(e) if free && e == -EEXIST => Ok(None),
        Err(_) => Err(DropReason::LbNatFailed),
    }
}

/// The `i`th source port a remapped flow tries: spread by the flow's hash over the kernel's
/// default ephemeral range.
#[inline(always)]
fn remap_port(key: &FlowKey, i: u32) -> u16 {
    let h = flow_hash(key.src_ip, key.dst_ip, key.src_port, key.dst_port, i as u8);
    32768 + (h % 28232) as u16
}

/// Whether a reverse entry belongs to a live flow other than `key`'s own.
#[inline(always)]
fn held_by_another(r: &RevNatEntry, key: &FlowKey, now: u64) -> bool {
    !owned_by(r, key)
        && r.flags & CT_F_CLOSING == 0
        && !ct_expired(r.last_seen, r.flags, key.proto, now)
}

/// Whether a reverse entry is the one of `key`'s own flow.
#[inline(always)]
fn owned_by(r: &RevNatEntry, key: &FlowKey) -> bool {
    r.client_ip == key.src_ip
        && r.client_port == key.src_port
        && r.vip == key.dst_ip
        && r.port == key.dst_port
}

/// A packet about to be delivered to a local container: the reply of a translated flow goes
/// back to the client with the VIP:port the client used as its source.
#[inline(always)]
pub fn to_client(ctx: &TcContext, vni: u32, ip: &Ipv4Hdr) -> Result<(), DropReason> {
    let Some((sport, dport, flags)) = ports(ctx, ip) else {
        return Ok(());
    };
    let key = flow(vni, ip.src_key(), ip.dst_key(), sport, dport, ip.proto);
    let Some(p) = LB_REVNAT.get_ptr_mut(key) else {
        return Ok(());
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let rev = unsafe { &mut *p };
    if ct_expired(rev.last_seen, rev.flags, ip.proto, now) {
        // Over: the packet is not a reply of that flow (any more).
        let _ = LB_REVNAT.remove(key);
        return Ok(());
    }
    rev.last_seen = now;
    // A reset ends the flow; a FIN alone does not: the other side may go on sending (half
    // close), so the tuple stays held until the client's FIN too (`close_reply`).
    let was_open = rev.flags & CT_F_CLOSING == 0;
    rev.flags = rev_close_flags(rev.flags, flags, CT_F_FIN_SERVER);
    let rev = *rev;
    if was_open && rev.flags & CT_F_CLOSING != 0 {
        close_flow(vni, &rev, ip.proto, now);
    }
    if rev.flags & CT_F_DIRECT != 0 {
        // A direct flow: only a remapped port goes back to the client's own.
        if rev.client_port != dport {
            rewrite_dst(
                ctx,
                ip.proto,
                ip.dst_key(),
                ip.dst_key(),
                dport,
                rev.client_port,
            )?;
        }
        return Ok(());
    }
    rewrite_src(ctx, ip.proto, ip.src_key(), rev.vip, sport, rev.port)?;
    let dst = if rev.flags & CT_F_HAIRPIN != 0 {
        rev.client_ip
    } else {
        ip.dst_key()
    };
    rewrite_dst(ctx, ip.proto, ip.dst_key(), dst, dport, rev.client_port)?;
    count(Direction::LbRevNat, ctx.len());
    Ok(())
}

/// A backend replying to a hairpin flow sends to the VIP: translated back here (source the
/// VIP, destination the client, which is the sender itself) and delivered locally.
#[inline(always)]
fn hairpin_reply(
    ctx: &TcContext,
    me: &LocalIface,
    ip: &Ipv4Hdr,
    sport: u16,
    dport: u16,
) -> Result<Verdict, DropReason> {
    let key = flow(me.vni, ip.src_key(), ip.dst_key(), sport, dport, ip.proto);
    let is_hairpin =
        matches!(unsafe { LB_REVNAT.get(key) }, Some(r) if r.flags & CT_F_HAIRPIN != 0);
    if !is_hairpin {
        return Ok(Verdict::NotService);
    }
    to_client(ctx, me.vni, ip)?;
    Ok(Verdict::Translated {
        to: me.ip,
        vip_port: 0,
    })
}

/// The flow's backend is still in the table with the same address (ids are never reused
/// while referenced, the address check catches a recycled one).
#[inline(always)]
fn backend_alive(ct: &CtEntry) -> bool {
    match unsafe { LB_BACKENDS.get(ct.backend_id) } {
        Some(b) => b.ip == ct.backend.ip && b.port == ct.backend.port,
        None => false,
    }
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

#[inline(always)]
fn select(
    svc: &ServiceInfo,
    key: &FlowKey,
) -> Result<(u32, overlay_common::lb::BackendInfo), DropReason> {
    let hash = flow_hash(
        key.src_ip,
        key.dst_ip,
        key.src_port,
        key.dst_port,
        key.proto,
    );
    pick(svc, hash)
}
