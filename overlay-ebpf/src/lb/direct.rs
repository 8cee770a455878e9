//! Direct flows: packets from a container to an address that is not a service VIP (a
//! backend used directly, or anything else) on a node with services. A direct flow must never
//! share its tuple with a translated one:
//! - one whose tuple a live translated flow holds gets a source port of its own
//!   (`lb_direct_remap`, as netfilter's NAT does for a clashing flow) and is followed per
//!   packet; `LB_DIRECT` says whether such flows may be live, so others skip the lookup;
//! - on nodes without socket hooks (`CONFIG_F_TRACK_DIRECT`) every direct flow to a backend
//!   is recorded, so a later VIP flow sees its tuple held and remaps instead.
//!
//! Replies are turned back to the client's own port by `to_client`, like translated ones.
//! Both families, over `Family` (`check_direct`, `check_direct6`).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_loop},
    programs::TcContext,
};
use overlay_common::{
    lb::{
        ct_expired, rev_close_flags, BackendOf, CtEntry, DirectRemaps, CT_CLOSE_TIMEOUT_NS,
        CT_F_CLOSING, CT_F_DIRECT, CT_F_FIN_CLIENT, CT_UDP_TIMEOUT_NS,
    },
    maps::CONFIG_F_TRACK_DIRECT,
    wire::{ETH_HLEN, IPPROTO_TCP},
    Config, Direction, DropReason, EndpointInfo, EndpointMacKey,
};

use super::{
    closes,
    family::{Family, V4, V6},
    flow6,
    flows::{claim, close_reply, flow, owned_by, remap_port, Ct, Key, Search},
    is_syn,
    nat::rewrite_src,
    ports, IPV6_NEXT_HEADER_OFF, REMAP_TRIES,
};
use crate::{
    counters::count,
    headers::{EthHdr, Ipv4Hdr, Packet as _},
    icmp,
    maps::{ENDPOINTS_BY_MAC, LB_DIRECT, NETWORKS},
};

/// A container's IPv4 packet not translated to a backend: kept apart from translated flows
/// (see above). Not inlined: a stack frame of its own, apart from the forwarding path's.
#[inline(never)]
pub fn check_direct(ctx: &TcContext, cfg: &Config, vni: u32) -> Result<(), DropReason> {
    let ip = ctx
        .header::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    let Some((sport, dport, flags)) = ports(ctx, &ip) else {
        return Ok(());
    };
    if stays::<V4>(ctx, cfg, vni, ip.proto)? {
        return Ok(());
    }
    let key = flow(vni, ip.src_key(), ip.dst_key(), sport, dport, ip.proto);
    direct::<V4>(ctx, cfg, &key, flags)
}

/// The same for a container's IPv6 packet.
#[inline(never)]
pub fn check_direct6(ctx: &TcContext, cfg: &Config, vni: u32) -> Result<(), DropReason> {
    let proto = ctx
        .header::<u8>(ETH_HLEN + IPV6_NEXT_HEADER_OFF)
        .ok_or(DropReason::Malformed)?;
    if stays::<V6>(ctx, cfg, vni, proto)? {
        return Ok(());
    }
    let mut key = Key::<V6>::default();
    match flow6(ctx, vni, &mut key)? {
        Some(flags) => direct::<V6>(ctx, cfg, &key, flags),
        None => Ok(()),
    }
}

/// Whether the packet never leaves this host as it is: too big for the underlay and not for
/// a local endpoint (or for none), the forwarding path answers it with an ICMP error or
/// drops it. Such a packet is neither remapped nor recorded: the error must quote it as its
/// sender sent it (a remapped port names no socket there), and a dropped packet starts no
/// flow. The destination is looked up here (as `forward` does) only for such packets,
/// which are rare. Not inlined: the IPv6 path's frame has no room for the lookup keys.
#[inline(never)]
fn stays<F: Family>(
    ctx: &TcContext,
    cfg: &Config,
    vni: u32,
    proto: u8,
) -> Result<bool, DropReason> {
    // What fits the node's largest encapsulation fits any (the target is looked up only
    // for what may not).
    let l3 = F::L4_OFF - ETH_HLEN;
    if !icmp::too_big(ctx, cfg, cfg.overhead, l3, proto)? {
        return Ok(false);
    }
    match target::<F>(ctx, vni)? {
        None => Ok(true),
        Some(t) if t.is_local() => Ok(false),
        Some(t) => icmp::too_big(ctx, cfg, crate::encap::overhead(&t.vtep), l3, proto),
    }
}

/// Whether the packet is for an endpoint of the network. Only such a flow can share its
/// tuple with a translated one (backends are endpoints); a packet for none is handed to the
/// host or dropped by the forwarding path (`unknown_destination`), and a port given to it or
/// a flow recorded for it would be for a packet that never reached a backend. Asked only
/// where a flow would be remapped or recorded, which is rare.
#[inline(never)]
fn for_endpoint<F: Family>(ctx: &TcContext, vni: u32) -> Result<bool, DropReason> {
    Ok(target::<F>(ctx, vni)?.is_some())
}

/// The endpoint the forwarding path will send the packet to, found as it finds it: by
/// address when it is sent to the gateway, else by MAC.
#[inline(always)]
fn target<F: Family>(
    ctx: &TcContext,
    vni: u32,
) -> Result<Option<&'static EndpointInfo>, DropReason> {
    let eth = ctx.header::<EthHdr>(0).ok_or(DropReason::Malformed)?;
    let net = unsafe { NETWORKS.get(vni) }.ok_or(DropReason::UnknownNetwork)?;
    if eth.dst == net.gateway_mac {
        F::dst_endpoint(ctx, vni)
    } else {
        Ok(unsafe { ENDPOINTS_BY_MAC.get(EndpointMacKey::new(vni, eth.dst)) })
    }
}

#[inline(always)]
fn direct<F: Family>(
    ctx: &TcContext,
    cfg: &Config,
    key: &Key<F>,
    flags: u8,
) -> Result<(), DropReason> {
    let (vni, sport, dport, proto) = (key.vni, key.src_port, key.dst_port, key.proto);
    let now = unsafe { bpf_ktime_get_ns() };
    let track = cfg.flags & CONFIG_F_TRACK_DIRECT != 0 && F::is_backend(&key.dst_ip, dport);
    if track || remaps_live(proto, now) {
        if let Some(port) = follow::<F>(key, flags, now) {
            return with_port::<F>(ctx, key, port);
        }
    }
    // A TCP flow is given its port at the SYN. One not recorded was checked then, unless it
    // began before its destination was a backend: a tracking node records it now.
    let starts = proto != IPPROTO_TCP || is_syn(flags);
    if !starts && !track {
        return Ok(());
    }
    let reply = flow(vni, key.dst_ip, key.src_ip, dport, sport, proto);
    if let Some(r) = unsafe { F::revnat().get(reply) } {
        if !owned_by::<F>(r, key) {
            if r.flags & CT_F_CLOSING == 0 && !ct_expired(r.last_seen, r.flags, proto, now) {
                if !starts || !for_endpoint::<F>(ctx, vni)? {
                    // Too late to move it to a port of its own, or a packet that never
                    // reaches a backend.
                    return Ok(());
                }
                let port = remap::<F>(key, flags, now)?;
                return with_port::<F>(ctx, key, port);
            }
            // Its holder is over: cleared away, or this flow's replies would be taken for it.
            let holder = flow(vni, r.client_ip, r.vip, r.client_port, r.port, proto);
            let _ = F::ct().remove(holder);
            let _ = F::revnat().remove(reply);
        }
    }
    if track
        && for_endpoint::<F>(ctx, vni)?
        && !record_direct::<F>(key, reply, sport, flags, now)?
        && starts
    {
        // A translated flow claimed the tuple on another CPU at this very moment.
        let port = remap::<F>(key, flags, now)?;
        return with_port::<F>(ctx, key, port);
    }
    Ok(())
}

/// Whether remapped direct flows of `proto` may be live.
#[inline(always)]
fn remaps_live(proto: u8, now: u64) -> bool {
    match LB_DIRECT.get(0) {
        Some(d) if proto == IPPROTO_TCP => {
            d.tcp_open != 0 || now.saturating_sub(d.tcp_closed) <= CT_CLOSE_TIMEOUT_NS
        }
        Some(d) => now.saturating_sub(d.udp_last) <= CT_UDP_TIMEOUT_NS,
        None => true,
    }
}

/// The source port of a recorded direct flow this packet belongs to. An entry that is over
/// goes, so it never catches a later flow; so does one a new SYN finds whose reply tuple is
/// no longer its own live one (the connection on that port ended), while a retransmitted SYN
/// keeps its port.
#[inline(always)]
fn follow<F: Family>(key: &Key<F>, flags: u8, now: u64) -> Option<u16> {
    let p = F::ct().get_ptr_mut(key)?;
    let ct = unsafe { &mut *p };
    if ct.flags & CT_F_DIRECT == 0 {
        return None;
    }
    let over = ct_expired(ct.last_seen, ct.flags, key.proto, now)
        || (is_syn(flags) && (ct.flags & CT_F_CLOSING != 0 || !reply_live::<F>(key, ct, now)));
    if over {
        let _ = F::ct().remove(key);
        return None;
    }
    ct.last_seen = now;
    let remapped = ct.src_port != key.src_port;
    if remapped && key.proto != IPPROTO_TCP {
        // A remapped UDP flow keeps the lookups on while it lives.
        if let Some(d) = LB_DIRECT.get_ptr_mut(0) {
            unsafe { (*d).udp_last = now };
        }
    }
    if closes(flags) && ct.flags & CT_F_CLOSING == 0 && close_reply::<F>(key.vni, key, ct, flags) {
        ct.flags |= CT_F_CLOSING;
        if remapped {
            if let Some(d) = LB_DIRECT.get_ptr_mut(0) {
                add_open(d, u64::MAX);
            }
        }
    }
    if remapped && ct.flags & CT_F_CLOSING != 0 {
        // A closed flow's entry translates until 10 s after its last packet (a half-closed
        // one may send for long): the lookups stay on as long.
        if let Some(d) = LB_DIRECT.get_ptr_mut(0) {
            unsafe { (*d).tcp_closed = now };
        }
    }
    Some(ct.src_port)
}

/// Whether the reverse entry of a recorded direct flow is still its own and live.
#[inline(always)]
fn reply_live<F: Family>(key: &Key<F>, ct: &Ct<F>, now: u64) -> bool {
    let reply = flow(
        key.vni,
        key.dst_ip,
        key.src_ip,
        key.dst_port,
        ct.src_port,
        key.proto,
    );
    match unsafe { F::revnat().get(reply) } {
        Some(r) => {
            owned_by::<F>(r, key)
                && r.flags & CT_F_CLOSING == 0
                && !ct_expired(r.last_seen, r.flags, key.proto, now)
        }
        None => false,
    }
}

/// Gives a direct flow a source port no live flow holds, and records it.
#[inline(always)]
fn remap<F: Family>(key: &Key<F>, flags: u8, now: u64) -> Result<u16, DropReason> {
    let mut s = DirectSearch::<F> {
        key: *key,
        now,
        tcp_flags: flags,
        state: Search::Going,
        port: 0,
    };
    let try_port = try_direct_port::<F> as *mut c_void;
    let ctx = &mut s as *mut DirectSearch<F> as *mut c_void;
    // Through `bpf_loop`: the verifier checks one try, not each of them.
    if unsafe { bpf_loop(REMAP_TRIES, try_port, ctx, 0) } < 0 {
        return Err(DropReason::LbNatFailed);
    }
    let port = match s.state {
        Search::Found => s.port,
        Search::Failed => return Err(DropReason::LbNatFailed),
        Search::Going => return Err(DropReason::LbTupleConflict),
    };
    if let Some(d) = LB_DIRECT.get_ptr_mut(0) {
        if key.proto == IPPROTO_TCP {
            add_open(d, 1);
        } else {
            unsafe { (*d).udp_last = now };
        }
    }
    count(Direction::LbDirectRemap, 0);
    Ok(port)
}

/// `remap`'s state, shared with `try_direct_port` through `bpf_loop`.
#[repr(C)]
struct DirectSearch<F: Family> {
    key: Key<F>,
    now: u64,
    tcp_flags: u8,
    state: Search,
    port: u16,
}

/// The `i`th try of `remap` (the first remapped port is the flow's `remap_port(1)`): 1 ends
/// the loop.
extern "C" fn try_direct_port<F: Family>(i: u64, ctx: *mut c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut DirectSearch<F>) };
    let key = &s.key;
    let port = remap_port::<F>(key, i as u32 + 1);
    if port == key.src_port {
        return 0;
    }
    let reply = flow(
        key.vni,
        key.dst_ip,
        key.src_ip,
        key.dst_port,
        port,
        key.proto,
    );
    match record_direct::<F>(key, reply, port, s.tcp_flags, s.now) {
        Ok(true) => {
            s.port = port;
            s.state = Search::Found;
            1
        }
        Ok(false) => 0,
        Err(_) => {
            s.state = Search::Failed;
            1
        }
    }
}

/// Records a direct flow leaving with source port `port` (its own or a remapped one): its
/// replies come back through `to_client` (the "VIP" being the destination itself). False if
/// another live flow holds the tuple, or claimed it at the same instant (`claim`).
#[inline(always)]
fn record_direct<F: Family>(
    key: &Key<F>,
    reply: Key<F>,
    port: u16,
    flags: u8,
    now: u64,
) -> Result<bool, DropReason> {
    let rev_flags = rev_close_flags(CT_F_DIRECT, flags, CT_F_FIN_CLIENT);
    let Some(written) = claim::<F>(key, &reply, rev_flags, flags, now)? else {
        return Ok(false);
    };
    let flags = CT_F_DIRECT | (written & CT_F_CLOSING);
    let ct = CtEntry {
        backend_id: 0,
        backend: BackendOf {
            ip: key.dst_ip,
            port: key.dst_port,
            _pad: 0,
        },
        src_port: port,
        flags,
        _pad: Default::default(),
        last_seen: now,
    };
    F::ct()
        .insert(key, ct, 0)
        .map_err(|_| DropReason::LbNatFailed)?;
    Ok(true)
}

/// Adds `n` (wrapping: `u64::MAX` takes one away) to the open remapped TCP flows, atomically
/// (several CPUs remap and close at once).
#[inline(always)]
pub(super) fn add_open(d: *mut DirectRemaps, n: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*d).tcp_open, n) };
}

#[inline(always)]
fn with_port<F: Family>(ctx: &TcContext, key: &Key<F>, port: u16) -> Result<(), DropReason> {
    if port == key.src_port {
        return Ok(());
    }
    rewrite_src::<F>(ctx, key.proto, &key.src_ip, &key.src_ip, key.src_port, port)
}
