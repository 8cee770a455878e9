//! Events for `overlayctl monitor`: while the daemon has set `MONITOR`'s flags, each dropped
//! packet (and a sample of forwarded ones) sends an event (hook, reason or verdict,
//! interfaces, its first bytes) through the `EVENTS` ring buffer, within a per-CPU token
//! bucket per kind; what does not fit is counted in `MONITOR_LOST`. Without a monitor: one
//! array lookup and a flag test.

use aya_ebpf::{
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    },
    maps::ring_buf::RingBufEntry,
    programs::{TcContext, XdpContext},
    EbpfContext as _,
};
use overlay_common::{
    monitor::{
        take_token, MonitorEvent, TraceVerdict, EVENT_DROP, EVENT_HEAD, EVENT_TRACE,
        MONITOR_F_DROP, MONITOR_F_TRACE,
    },
    DropReason,
};

use crate::maps::{EVENTS, MONITOR, MONITOR_BUCKET, MONITOR_LOST};

#[inline(always)]
fn lost(kind: u8) {
    if let Some(n) = MONITOR_LOST.get_ptr_mut(kind as u32) {
        unsafe { *n += 1 };
    }
}

/// Whether a trace monitor is attached: the one check forwarded packets pay.
#[inline(always)]
pub fn tracing() -> bool {
    MONITOR
        .get(0)
        .is_some_and(|cfg| cfg.flags & MONITOR_F_TRACE != 0)
}

/// A reserved event of `kind`, if a monitor wants one (and, for a trace, the sample falls on
/// this packet) and the kind's bucket allows it.
#[inline(always)]
fn reserve(kind: u8) -> Option<RingBufEntry<MonitorEvent>> {
    let cfg = MONITOR.get(0)?;
    let flag = if kind == EVENT_DROP {
        MONITOR_F_DROP
    } else {
        MONITOR_F_TRACE
    };
    if cfg.flags & flag == 0 {
        return None;
    }
    if kind == EVENT_TRACE && cfg.sample > 1 && unsafe { bpf_get_prandom_u32() } % cfg.sample != 0 {
        return None;
    }
    let bucket = MONITOR_BUCKET.get_ptr_mut(kind as u32)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let (ok, next) = take_token(unsafe { *bucket }, now, cfg.rate, cfg.burst);
    unsafe { *bucket = next };
    if !ok {
        lost(kind);
        return None;
    }
    let entry = EVENTS.reserve::<MonitorEvent>(0);
    if entry.is_none() {
        lost(kind);
    }
    entry
}

/// How many bytes of a `len`-byte packet an event holds (1..=EVENT_HEAD).
#[inline(always)]
fn caplen(len: u32) -> u32 {
    let n = if len as usize > EVENT_HEAD {
        EVENT_HEAD as u32
    } else {
        len
    };
    if n == 0 {
        1
    } else {
        n
    }
}

/// `n` (1..=EVENT_HEAD) as the verifier must see a load size: masked into that range after a
/// volatile read, so the compiler cannot fold the mask away with what it knows of `n`.
#[inline(always)]
fn load_size(n: u32) -> u32 {
    const _: () = assert!(EVENT_HEAD.is_power_of_two());
    let n = unsafe { core::ptr::read_volatile(&n) };
    (n.wrapping_sub(1) & (EVENT_HEAD as u32 - 1)) + 1
}

/// The fields every event has; the trace fields zeroed (a reserved entry holds old bytes).
#[inline(always)]
fn fill(e: &mut MonitorEvent, kind: u8, hook: u8, code: u16, ifindex: u32, len: u32) -> u32 {
    e.time_ns = unsafe { bpf_ktime_get_ns() };
    e.hook = hook;
    e.kind = kind;
    e.code = code;
    e.ifindex = ifindex;
    e.len = len;
    e.caplen = caplen(len);
    e.out_ifindex = 0;
    e.vni = 0;
    e.vtep_node = 0;
    e.family = 0;
    e.proto = 0;
    e.vip_port = 0;
    e.backend_port = 0;
    e._pad = [0; 6];
    e.vip = [0; 16];
    e.backend = [0; 16];
    e.caplen
}

/// Copies the packet's first bytes into the event.
#[inline(always)]
fn copy_head_tc(ctx: &TcContext, e: &mut MonitorEvent, n: u32) {
    let rc =
        unsafe { bpf_skb_load_bytes(ctx.as_ptr(), 0, e.head.as_mut_ptr().cast(), load_size(n)) };
    if rc != 0 {
        e.caplen = 0;
    }
}

/// A drop in a TC program. Not inlined: its keys would take stack from the entry point's
/// frame, which the IPv4 forwarding path needs.
#[inline(never)]
pub fn drop_tc(ctx: &TcContext, hook: u8, reason: DropReason) {
    let Some(mut entry) = reserve(EVENT_DROP) else {
        return;
    };
    let e = unsafe { &mut *entry.as_mut_ptr() };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let n = fill(e, EVENT_DROP, hook, reason as u16, ifindex, ctx.len());
    copy_head_tc(ctx, e, n);
    entry.submit(0);
}

/// A drop in the XDP program.
#[inline(always)]
pub fn drop_xdp(ctx: &XdpContext, hook: u8, reason: DropReason) {
    let Some(mut entry) = reserve(EVENT_DROP) else {
        return;
    };
    let e = unsafe { &mut *entry.as_mut_ptr() };
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let len = (ctx.data_end() - ctx.data()) as u32;
    let n = fill(e, EVENT_DROP, hook, reason as u16, ifindex, len);
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.as_ptr().cast(),
            0,
            e.head.as_mut_ptr().cast(),
            load_size(n),
        )
    };
    if rc != 0 {
        e.caplen = 0;
    }
    entry.submit(0);
}

/// Where a forwarded packet went.
#[derive(Clone, Copy)]
pub struct Trace {
    pub verdict: TraceVerdict,
    pub out_ifindex: u32,
    pub vni: u32,
    /// The peer VTEP's node id, 0 for none.
    pub vtep_node: u32,
}

/// Notes a forwarding decision (no service: only the IPv4 path translates, `note4`) in the
/// packet's control block, for `trace_noted` once the forwarding path has returned: the
/// IPv4 path's stack has no room for the event work, and the control block takes none.
#[inline(always)]
pub fn note(ctx: &TcContext, t: &Trace) {
    let skb = ctx.skb.skb;
    unsafe {
        (*skb).cb[0] = t.verdict as u32;
        (*skb).cb[1] = t.out_ifindex;
        (*skb).cb[2] = t.vni;
        (*skb).cb[3] = t.vtep_node;
        (*skb).cb[4] = 0;
    }
}

/// The IPv4 path's notes, written whether or not anyone traces (a few stores into the control
/// block; a flag kept for them would take stack the path does not have). A translation
/// first notes the service it was for (a hairpin reply, also translated, notes port 0), then
/// `note4` the decision, with the service if the packet was translated for one.
#[inline(always)]
pub fn note_service(ctx: &TcContext, vip: u32, vip_port: u16) {
    unsafe {
        (*ctx.skb.skb).cb[0] = (vip_port as u32) << 16;
        (*ctx.skb.skb).cb[4] = vip;
    }
}

#[inline(always)]
pub fn note4(
    ctx: &TcContext,
    verdict: TraceVerdict,
    out_ifindex: u32,
    vni: u32,
    vtep_node: u32,
    translated: bool,
) {
    let skb = ctx.skb.skb;
    unsafe {
        let port = if translated { (*skb).cb[0] >> 16 } else { 0 };
        (*skb).cb[0] = verdict as u32 | port << 16;
        (*skb).cb[1] = out_ifindex;
        (*skb).cb[2] = vni;
        (*skb).cb[3] = vtep_node;
        if port == 0 {
            (*skb).cb[4] = 0;
        }
    }
}

/// Forgets any note (the control block comes with whatever an earlier layer left).
#[inline(always)]
pub fn clear_note(ctx: &TcContext) {
    unsafe { (*ctx.skb.skb).cb[0] = 0 };
}

/// The event for the decision `note` left, as the packet now is (after encapsulation, the
/// outer headers; after decapsulation, the inner frame). Nothing if no decision was noted.
#[inline(never)]
pub fn trace_noted(ctx: &TcContext, hook: u8) {
    let skb = ctx.skb.skb;
    let first = unsafe { (*skb).cb[0] };
    if first & 0xffff == 0 {
        return;
    }
    let Some(mut entry) = reserve(EVENT_TRACE) else {
        return;
    };
    let e = unsafe { &mut *entry.as_mut_ptr() };
    let ifindex = unsafe { (*skb).ifindex };
    let n = fill(e, EVENT_TRACE, hook, first as u16, ifindex, ctx.len());
    unsafe {
        e.out_ifindex = (*skb).cb[1];
        e.vni = (*skb).cb[2];
        e.vtep_node = (*skb).cb[3];
        let vip = (*skb).cb[4];
        if vip != 0 {
            e.family = 4;
            e.vip[..4].copy_from_slice(&vip.to_ne_bytes());
            e.vip_port = (first >> 16) as u16;
        }
    }
    copy_head_tc(ctx, e, n);
    entry.submit(0);
}

/// A socket's service balanced at connect or send: no packet, the VIP and the backend.
#[inline(always)]
pub fn trace_socket(
    family: u8,
    proto: u8,
    vip: [u8; 16],
    vip_port: u16,
    backend: [u8; 16],
    backend_port: u16,
) {
    let Some(mut entry) = reserve(EVENT_TRACE) else {
        return;
    };
    let e = unsafe { &mut *entry.as_mut_ptr() };
    fill(
        e,
        EVENT_TRACE,
        overlay_common::monitor::HOOK_SOCKET,
        TraceVerdict::SocketLb as u16,
        0,
        0,
    );
    e.caplen = 0;
    e.family = family;
    e.proto = proto;
    e.vip = vip;
    e.vip_port = vip_port;
    e.backend = backend;
    e.backend_port = backend_port;
    entry.submit(0);
}
