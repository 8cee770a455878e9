//! Connection tracking of balanced flows, once for both families (`Family`): a flow keeps
//! its backend in `LB_CT`/`LB6_CT` while the backend lives, its translated tuple is claimed
//! in `LB_REVNAT`/`LB6_REVNAT` (remapping the source port when another live flow holds it),
//! and replies are turned back to the VIP.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_loop},
    programs::TcContext,
};
use overlay_common::{
    lb::{
        ct_expired, flow_hash, rev_close_flags, BackendOf, CtEntry, FlowKey, RevNatEntry,
        ServiceInfo, CT_F_CLOSING, CT_F_DIRECT, CT_F_FIN_CLIENT, CT_F_FIN_SERVER, CT_F_HAIRPIN,
    },
    Direction, DropReason,
};

use super::{
    closes, direct,
    family::Family,
    is_syn,
    nat::{rewrite_dst, rewrite_src},
    pick_id, REMAP_TRIES,
};
use crate::{
    counters::count,
    kernel::{BPF_NOEXIST, EEXIST},
    maps::LB_DIRECT,
};

pub type Key<F> = FlowKey<<F as Family>::Ip>;
pub type Ct<F> = CtEntry<<F as Family>::Ip, <F as Family>::Pad>;
pub type Rev<F> = RevNatEntry<<F as Family>::Ip>;

#[inline(always)]
pub fn flow<A>(vni: u32, src: A, dst: A, sport: u16, dport: u16, proto: u8) -> FlowKey<A> {
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

/// A packet of `key`'s flow to a service with backends: given the flow's backend (a new one
/// for a new flow), its destination and maybe source rewritten. The backend's address.
#[inline(always)]
pub fn translate<F: Family>(
    ctx: &TcContext,
    svc: &ServiceInfo,
    key: &Key<F>,
    flags: u8,
) -> Result<F::Ip, DropReason> {
    let now = unsafe { bpf_ktime_get_ns() };
    let ct = match F::ct().get_ptr_mut(key) {
        Some(p) if current::<F>(unsafe { &*p }, key.proto, flags, now) => {
            let ct = unsafe { &mut *p };
            ct.last_seen = now;
            if closes(flags) && close_reply::<F>(key.vni, key, ct, flags) {
                ct.flags |= CT_F_CLOSING;
            }
            ct
        }
        // New flow, its backend left, or its entry is over (expired, or closed and this is a
        // new SYN): pick from the current table. Used where it was stored, not as a copy:
        // the IPv6 path has no stack for one (another CPU's flows could only evict it at
        // once from a table of 128k flows if they all began in the same instant).
        _ => {
            new_flow::<F>(svc, key, flags, now)?;
            let p = F::ct().get_ptr_mut(key).ok_or(DropReason::LbNatFailed)?;
            unsafe { &mut *p }
        }
    };
    let hairpin = ct.flags & CT_F_HAIRPIN != 0;
    let proto = key.proto;
    rewrite_dst::<F>(
        ctx,
        proto,
        &key.dst_ip,
        &ct.backend.ip,
        key.dst_port,
        ct.backend.port,
    )?;
    // Chosen by value: a pointer to one of two places would split the verifier's states.
    let src = if hairpin { key.dst_ip } else { key.src_ip };
    rewrite_src::<F>(ctx, proto, &key.src_ip, &src, key.src_port, ct.src_port)?;
    count(Direction::LbDnat, ctx.len());
    Ok(ct.backend.ip)
}

/// Whether a flow's entry still applies to a packet with `flags`.
#[inline(always)]
fn current<F: Family>(ct: &Ct<F>, proto: u8, flags: u8, now: u64) -> bool {
    backend_alive::<F>(ct)
        && !ct_expired(ct.last_seen, ct.flags, proto, now)
        && !(is_syn(flags) && ct.flags & CT_F_CLOSING != 0)
}

/// Records the client's FIN or RST on the reverse entry: once the connection is closed both
/// ways (or reset) a direct flow may take its tuple. Whether the flow is closed now (its
/// flow entry then closes too; without a reverse entry of its own, at this packet).
#[inline(always)]
pub fn close_reply<F: Family>(vni: u32, key: &Key<F>, ct: &Ct<F>, tcp_flags: u8) -> bool {
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
    match F::revnat().get_ptr_mut(reply) {
        // Only this flow's own: a retransmitted FIN of a finished flow must not close the
        // flow that holds the tuple now.
        Some(r) if owned_by::<F>(unsafe { &*r }, key) => {
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
fn close_flow<F: Family>(vni: u32, rev: &Rev<F>, proto: u8, now: u64) {
    let key = flow(
        vni,
        rev.client_ip,
        rev.vip,
        rev.client_port,
        rev.port,
        proto,
    );
    let Some(p) = F::ct().get_ptr_mut(key) else {
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
fn new_flow<F: Family>(
    svc: &ServiceInfo,
    key: &Key<F>,
    flags: u8,
    now: u64,
) -> Result<(), DropReason> {
    let (backend_id, backend) = select::<F>(svc, key)?;
    let hairpin = backend.ip == key.src_ip;
    let dst = if hairpin { key.dst_ip } else { key.src_ip };
    let mut entry_flags = if hairpin { CT_F_HAIRPIN } else { 0 };
    let rev_flags = rev_close_flags(entry_flags, flags, CT_F_FIN_CLIENT);
    let (port, written) = find_port::<F>(key, &backend, &dst, rev_flags, flags, now)?;
    entry_flags |= written & CT_F_CLOSING;
    let ct = CtEntry {
        backend_id,
        backend,
        src_port: port,
        flags: entry_flags,
        _pad: Default::default(),
        last_seen: now,
    };
    F::ct()
        .insert(key, ct, 0)
        .map_err(|_| DropReason::LbNatFailed)?;
    if hairpin {
        count(Direction::LbHairpin, 0);
    }
    count(Direction::LbNewFlow, 0);
    Ok(())
}

/// Where a search through `bpf_loop` stands.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Search {
    Going,
    Found,
    Failed,
}

/// `find_port`'s state, shared with `try_port` through `bpf_loop`.
#[repr(C)]
struct PortSearch<F: Family> {
    key: Key<F>,
    backend: BackendOf<F::Ip>,
    now: u64,
    rev_flags: u16,
    tcp_flags: u8,
    /// Replies go to the VIP (the client is the backend), not to the client.
    hairpin: bool,
    state: Search,
    port: u16,
    written: u16,
}

/// The source port a new flow leaves with and the reverse entry flags written: its own
/// port, or the first of `REMAP_TRIES` others whose translated tuple (to `backend`, replies
/// to `dst`) no live flow holds. Through `bpf_loop`: the verifier checks one try, not each
/// of them (a plain loop took it near its limit of a million instructions).
#[inline(always)]
fn find_port<F: Family>(
    key: &Key<F>,
    backend: &BackendOf<F::Ip>,
    dst: &F::Ip,
    rev_flags: u16,
    tcp_flags: u8,
    now: u64,
) -> Result<(u16, u16), DropReason> {
    let mut s = PortSearch::<F> {
        key: *key,
        backend: *backend,
        now,
        rev_flags,
        tcp_flags,
        hairpin: *dst == key.dst_ip,
        state: Search::Going,
        port: 0,
        written: 0,
    };
    let try_port = try_port::<F> as *mut c_void;
    let ctx = &mut s as *mut PortSearch<F> as *mut c_void;
    if unsafe { bpf_loop(REMAP_TRIES + 1, try_port, ctx, 0) } < 0 {
        return Err(DropReason::LbNatFailed);
    }
    match s.state {
        Search::Found => Ok((s.port, s.written)),
        Search::Failed => Err(DropReason::LbNatFailed),
        Search::Going => Err(DropReason::LbTupleConflict),
    }
}

/// The `i`th try of `find_port_looped`: 1 ends the loop.
extern "C" fn try_port<F: Family>(i: u64, ctx: *mut c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut PortSearch<F>) };
    let (backend, key) = (&s.backend, &s.key);
    let port = if i == 0 {
        key.src_port
    } else {
        remap_port::<F>(key, i as u32)
    };
    let dst = if s.hairpin { key.dst_ip } else { key.src_ip };
    let reply = flow(key.vni, backend.ip, dst, backend.port, port, key.proto);
    match claim::<F>(key, &reply, s.rev_flags, s.tcp_flags, s.now) {
        Ok(Some(written)) => {
            s.port = port;
            s.written = written;
            s.state = Search::Found;
            1
        }
        Ok(None) => 0,
        Err(_) => {
            s.state = Search::Failed;
            1
        }
    }
}

/// Claims the translated tuple `reply` for `key`'s flow: its reverse entry (back to `key`'s
/// destination and source port). False if another live flow holds it. A tuple without an
/// entry is claimed only if still free when the entry goes in (`BPF_NOEXIST`): the program
/// may run on several CPUs at once, and a flow that looked a moment ago may be claiming the
/// same tuple now. A stale entry (a closed or expired flow's, or this flow's own) is replaced;
/// this flow's own open one keeps the FINs it saw (the flow entry expired or was evicted
/// while the connection was half-closed). The flags written, or None if the tuple is held.
#[inline(always)]
pub fn claim<F: Family>(
    key: &Key<F>,
    reply: &Key<F>,
    flags: u16,
    tcp_flags: u8,
    now: u64,
) -> Result<Option<u16>, DropReason> {
    let (free, flags) = match unsafe { F::revnat().get(reply) } {
        Some(r) if held_by_another::<F>(r, key, now) => return Ok(None),
        Some(r) if owned_by::<F>(r, key) && r.flags & CT_F_CLOSING == 0 && !is_syn(tcp_flags) => {
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
    match F::revnat().insert(reply, rev, if free { BPF_NOEXIST } else { 0 }) {
        Ok(()) => Ok(Some(flags)),
        Err(e) if free && e == -EEXIST => Ok(None),
        Err(_) => Err(DropReason::LbNatFailed),
    }
}

/// The `i`th source port a remapped flow tries: spread by the flow's hash over the kernel's
/// default ephemeral range.
#[inline(always)]
pub fn remap_port<F: Family>(key: &Key<F>, i: u32) -> u16 {
    let (src, dst) = (F::fold(&key.src_ip), F::fold(&key.dst_ip));
    let h = flow_hash(src, dst, key.src_port, key.dst_port, i as u8);
    32768 + (h % 28232) as u16
}

/// Whether a reverse entry belongs to a live flow other than `key`'s own.
#[inline(always)]
fn held_by_another<F: Family>(r: &Rev<F>, key: &Key<F>, now: u64) -> bool {
    !owned_by::<F>(r, key)
        && r.flags & CT_F_CLOSING == 0
        && !ct_expired(r.last_seen, r.flags, key.proto, now)
}

/// Whether a reverse entry is the one of `key`'s own flow.
#[inline(always)]
pub fn owned_by<F: Family>(r: &Rev<F>, key: &Key<F>) -> bool {
    r.client_ip == key.src_ip
        && r.client_port == key.src_port
        && r.vip == key.dst_ip
        && r.port == key.dst_port
}

/// A packet `key` (with TCP `flags`) about to be delivered to a local container: the reply
/// of a translated flow goes back to the client with the VIP:port the client used as its
/// source.
#[inline(always)]
pub fn to_client<F: Family>(ctx: &TcContext, key: &Key<F>, flags: u8) -> Result<(), DropReason> {
    let Some(p) = F::revnat().get_ptr_mut(key) else {
        return Ok(());
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // Read and written in place, not copied: the decapsulation path has little stack left.
    let rev = unsafe { &mut *p };
    let proto = key.proto;
    if ct_expired(rev.last_seen, rev.flags, proto, now) {
        // Over: the packet is not a reply of that flow (any more).
        let _ = F::revnat().remove(key);
        return Ok(());
    }
    rev.last_seen = now;
    // A reset ends the flow; a FIN alone does not: the other side may go on sending (half
    // close), so the tuple stays held until the client's FIN too (`close_reply`).
    let was_open = rev.flags & CT_F_CLOSING == 0;
    // Decided on one reading of the flags: each read of map memory is a new unknown to the
    // verifier, whose paths would multiply.
    let rev_flags = rev_close_flags(rev.flags, flags, CT_F_FIN_SERVER);
    rev.flags = rev_flags;
    if was_open && rev_flags & CT_F_CLOSING != 0 {
        close_flow::<F>(key.vni, rev, proto, now);
    }
    let (dst, dport) = (&key.dst_ip, key.dst_port);
    if rev_flags & CT_F_DIRECT != 0 {
        // A direct flow: only a remapped port goes back to the client's own.
        if rev.client_port != dport {
            rewrite_dst::<F>(ctx, proto, dst, dst, dport, rev.client_port)?;
        }
        return Ok(());
    }
    rewrite_src::<F>(ctx, proto, &key.src_ip, &rev.vip, key.src_port, rev.port)?;
    let client = if rev_flags & CT_F_HAIRPIN != 0 {
        rev.client_ip
    } else {
        *dst
    };
    rewrite_dst::<F>(ctx, proto, dst, &client, dport, rev.client_port)?;
    count(Direction::LbRevNat, ctx.len());
    Ok(())
}

/// Whether `key` is a backend's reply to a hairpin flow: sent to the VIP, it is translated
/// back (source the VIP, destination the client, which is the sender itself) by `to_client`
/// and delivered locally.
#[inline(always)]
pub fn is_hairpin_reply<F: Family>(key: &Key<F>) -> bool {
    matches!(unsafe { F::revnat().get(key) }, Some(r) if r.flags & CT_F_HAIRPIN != 0)
}

/// The flow's backend is still in the table with the same address (ids are never reused
/// while referenced, the address check catches a recycled one).
#[inline(always)]
fn backend_alive<F: Family>(ct: &Ct<F>) -> bool {
    match F::backend(ct.backend_id) {
        Some(b) => b.ip == ct.backend.ip && b.port == ct.backend.port,
        None => false,
    }
}

#[inline(always)]
fn select<F: Family>(
    svc: &ServiceInfo,
    key: &Key<F>,
) -> Result<(u32, BackendOf<F::Ip>), DropReason> {
    let hash = flow_hash(
        F::fold(&key.src_ip),
        F::fold(&key.dst_ip),
        key.src_port,
        key.dst_port,
        key.proto,
    );
    let id = pick_id(svc, hash)?;
    let backend = F::backend(id).ok_or(DropReason::LbNoBackend)?;
    Ok((id, *backend))
}
