//! Drop events for `overlayctl monitor`: while the daemon has set `MONITOR`'s flag, each
//! dropped packet sends an event (hook, reason, interface, its first bytes) through the
//! `EVENTS` ring buffer, within a per-CPU token bucket; what does not fit is counted in
//! `MONITOR_LOST`. Without a monitor: one array lookup and a flag test.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    },
    programs::{TcContext, XdpContext},
    EbpfContext as _,
};
use overlay_common::{
    monitor::{take_token, MonitorEvent, EVENT_HEAD, MONITOR_F_DROP},
    DropReason,
};

use crate::maps::{EVENTS, MONITOR, MONITOR_BUCKET, MONITOR_LOST};

#[inline(always)]
fn lost() {
    if let Some(n) = MONITOR_LOST.get_ptr_mut(0) {
        unsafe { *n += 1 };
    }
}

/// A reserved event for a drop, if a monitor wants one and the bucket allows it.
#[inline(always)]
fn reserve() -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<MonitorEvent>> {
    let cfg = MONITOR.get(0)?;
    if cfg.flags & MONITOR_F_DROP == 0 {
        return None;
    }
    let bucket = MONITOR_BUCKET.get_ptr_mut(0)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let (ok, next) = take_token(unsafe { *bucket }, now, cfg.rate, cfg.burst);
    unsafe { *bucket = next };
    if !ok {
        lost();
        return None;
    }
    let entry = EVENTS.reserve::<MonitorEvent>(0);
    if entry.is_none() {
        lost();
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

#[inline(always)]
fn fill(e: &mut MonitorEvent, hook: u8, reason: DropReason, ifindex: u32, len: u32) -> u32 {
    e.time_ns = unsafe { bpf_ktime_get_ns() };
    e.hook = hook;
    e._pad = 0;
    e.reason = reason as u16;
    e.ifindex = ifindex;
    e.len = len;
    e.caplen = caplen(len);
    e.caplen
}

/// A drop in a TC program.
#[inline(always)]
pub fn drop_tc(ctx: &TcContext, hook: u8, reason: DropReason) {
    let Some(mut entry) = reserve() else {
        return;
    };
    let e = unsafe { &mut *entry.as_mut_ptr() };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let n = fill(e, hook, reason, ifindex, ctx.len());
    let rc =
        unsafe { bpf_skb_load_bytes(ctx.as_ptr(), 0, e.head.as_mut_ptr().cast(), load_size(n)) };
    if rc != 0 {
        e.caplen = 0;
    }
    entry.submit(0);
}

/// A drop in the XDP program.
#[inline(always)]
pub fn drop_xdp(ctx: &XdpContext, hook: u8, reason: DropReason) {
    let Some(mut entry) = reserve() else {
        return;
    };
    let e = unsafe { &mut *entry.as_mut_ptr() };
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let len = (ctx.data_end() - ctx.data()) as u32;
    let n = fill(e, hook, reason, ifindex, len);
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
