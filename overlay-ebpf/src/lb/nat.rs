//! Address and port rewriting with incremental checksum updates (the IPv4 header's, and the
//! L4 checksum with its pseudo-header), for either family. A UDP checksum of 0 stays 0.

use aya_ebpf::{bindings::BPF_F_MARK_MANGLED_0, programs::TcContext};
use overlay_common::{wire::IPPROTO_TCP, DropReason};

use super::family::Family;

/// Destination address and port.
#[inline(always)]
pub fn rewrite_dst<F: Family>(
    ctx: &TcContext,
    proto: u8,
    old_ip: &F::Ip,
    new_ip: &F::Ip,
    old_port: u16,
    new_port: u16,
) -> Result<(), DropReason> {
    rewrite::<F>(ctx, proto, true, old_ip, new_ip, old_port, new_port)
}

/// Source address and port.
#[inline(always)]
pub fn rewrite_src<F: Family>(
    ctx: &TcContext,
    proto: u8,
    old_ip: &F::Ip,
    new_ip: &F::Ip,
    old_port: u16,
    new_port: u16,
) -> Result<(), DropReason> {
    rewrite::<F>(ctx, proto, false, old_ip, new_ip, old_port, new_port)
}

/// Replaces one address and one port (both of the destination, or of the source), each
/// only if it changes.
#[inline(always)]
fn rewrite<F: Family>(
    ctx: &TcContext,
    proto: u8,
    dst: bool,
    old_ip: &F::Ip,
    new_ip: &F::Ip,
    old_port: u16,
    new_port: u16,
) -> Result<(), DropReason> {
    let (csum_off, mangled) = if proto == IPPROTO_TCP {
        (F::L4_OFF + 16, 0)
    } else {
        (F::L4_OFF + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    if old_ip != new_ip {
        F::replace_addr(ctx, csum_off, mangled, dst, old_ip, new_ip)?;
    }
    if old_port != new_port {
        let fail = |_| DropReason::LbNatFailed;
        ctx.l4_csum_replace(
            csum_off,
            old_port.to_be() as u64,
            new_port.to_be() as u64,
            mangled | 2,
        )
        .map_err(fail)?;
        let port_off = F::L4_OFF + if dst { 2 } else { 0 };
        ctx.store(port_off, &new_port.to_be(), 0).map_err(fail)?;
    }
    Ok(())
}
