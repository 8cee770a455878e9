//! TC ingress on the underlay: decapsulates VXLAN for local endpoints and hands the inner
//! frame straight to the container's veth peer. Traffic that is not ours passes untouched.

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_SHOT},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use overlay_common::{
    maps::CONFIG_F_LB,
    monitor::{TraceVerdict, HOOK_FROM_UNDERLAY},
    wire::{ETH_HLEN, ETH_P_IPV6},
    Direction, DropReason,
};

use crate::{
    counters::{count, count_drop},
    headers::{EthHdr, Packet as _},
    kernel::{pack, unpack, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_DECAP_L3_IPV6, TC_NEXT},
    lb, maps,
    monitor::{self, Trace},
    shaped,
    vxlan::{self, InnerIp},
};

pub fn from_underlay(ctx: &TcContext) -> i32 {
    // Everything but IPv6 goes to `decap4`, which passes what is not IPv4 (counting it
    // there: this frame has no stack to spare for a counter's key).
    let outer6 = ctx
        .header::<EthHdr>(0)
        .is_some_and(|eth| eth.ether_type() == ETH_P_IPV6);
    let r = if outer6 { decap6(ctx) } else { decap4(ctx) };
    match unpack(r) {
        Ok(verdict) => verdict,
        Err(reason) => dropped(ctx, reason),
    }
}

/// VXLAN in IPv4 (and the rest, which passes). Each outer family is a subprogram of its
/// own: inlined together, both parses and the delivery would not fit one stack frame.
#[inline(never)]
fn decap4(ctx: &TcContext) -> i64 {
    pack(try_decap::<false>(ctx))
}

/// VXLAN in IPv6.
#[inline(never)]
fn decap6(ctx: &TcContext) -> i64 {
    pack(try_decap::<true>(ctx))
}

/// Not inlined: the log record would take stack the delivery path needs.
#[inline(never)]
fn dropped(ctx: &TcContext, reason: DropReason) -> i32 {
    count_drop(reason, ctx.len());
    monitor::drop_tc(ctx, HOOK_FROM_UNDERLAY, reason);
    debug!(ctx, "decap drop: {}", reason.label());
    TC_ACT_SHOT
}

#[inline(always)]
fn try_decap<const OUTER6: bool>(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = maps::config() else {
        return Ok(TC_NEXT);
    };
    let rx = if OUTER6 {
        vxlan::receive6(ctx, cfg)?
    } else {
        vxlan::receive4(ctx, cfg)?
    };
    let Some(rx) = rx else {
        count(Direction::UnderlayPass, ctx.len());
        return Ok(TC_NEXT);
    };

    if let InnerIp::V6 = rx.inner_ip {
        crate::forward6::check_inner_ndp(ctx)?;
    }

    // The skb must hold exactly one inner packet: a GSO super-packet built by a VXLAN sender
    // carries the full length in its inner header, while a UDP GRO aggregate of several VXLAN
    // datagrams does not, and stripping only its first outer header would corrupt the rest.
    let inner_room = ctx.len() as usize - rx.overhead - ETH_HLEN;
    let inner_len = rx.inner_len;
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs };
    if inner_len > inner_room || (gso_segs > 1 && inner_len != inner_room) {
        return Err(DropReason::DecapFailed);
    }

    // Removes outer IP + UDP + VXLAN + inner Ethernet after the outer Ethernet header; the
    // inner Ethernet header is then written over the outer one. FIXED_GSO: the inner MSS of
    // a GSO packet does not change when outer headers go.
    let inner_l3 = match rx.inner_ip {
        InnerIp::V4 => BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        InnerIp::V6 => BPF_F_ADJ_ROOM_DECAP_L3_IPV6,
    };
    ctx.adjust_room(
        -(rx.overhead as i32),
        BPF_ADJ_ROOM_MAC,
        (BPF_F_ADJ_ROOM_FIXED_GSO as u64) | inner_l3,
    )
    .map_err(|_| DropReason::DecapFailed)?;
    ctx.store(0, &rx.inner_eth, 0)
        .map_err(|_| DropReason::DecapFailed)?;
    if cfg.flags & CONFIG_F_LB != 0 {
        match &rx.inner_ip {
            InnerIp::V4 => lb::to_client_here(ctx, rx.vxlan.vni())?,
            InnerIp::V6 => lb::to_client6(ctx, rx.vxlan.vni())?,
        }
    }

    // Counted once the redirect is taken: a refused one is a redirect_failed drop instead.
    let len = ctx.len();
    let verdict = shaped::deliver(cfg.flags, rx.ifindex)?;
    count(Direction::DecapRx, len);
    if monitor::tracing() {
        let t = Trace {
            verdict: TraceVerdict::Decap,
            out_ifindex: rx.ifindex,
            vni: rx.vxlan.vni(),
            vtep_node: rx.vtep_node,
        };
        monitor::note(ctx, &t);
        monitor::trace_noted(ctx, HOOK_FROM_UNDERLAY);
    }
    Ok(verdict)
}
