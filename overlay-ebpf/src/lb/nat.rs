//! Address and port rewriting with incremental checksum updates (IPv4 header, and the L4
//! checksum with its pseudo-header). A UDP checksum of 0 stays 0.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use overlay_common::{
    wire::{ETH_HLEN, IPPROTO_TCP, IPV4_CHECK_OFF, IPV4_DST_OFF, IPV4_SRC_OFF},
    DropReason,
};

use super::L4_OFF;

const IP_CHECK_OFF: usize = ETH_HLEN + IPV4_CHECK_OFF;

/// Destination address and port.
#[inline(always)]
pub fn rewrite_dst(
    ctx: &TcContext,
    proto: u8,
    old_ip: u32,
    new_ip: u32,
    old_port: u16,
    new_port: u16,
) -> Result<(), DropReason> {
    rewrite(
        ctx,
        proto,
        ETH_HLEN + IPV4_DST_OFF,
        old_ip,
        new_ip,
        L4_OFF + 2,
        old_port,
        new_port,
    )
}

/// Source address and port.
#[inline(always)]
pub fn rewrite_src(
    ctx: &TcContext,
    proto: u8,
    old_ip: u32,
    new_ip: u32,
    old_port: u16,
    new_port: u16,
) -> Result<(), DropReason> {
    rewrite(
        ctx,
        proto,
        ETH_HLEN + IPV4_SRC_OFF,
        old_ip,
        new_ip,
        L4_OFF,
        old_port,
        new_port,
    )
}

/// Replaces one address (at `ip_off`) and one port (at `port_off`), each only if it changes.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    proto: u8,
    ip_off: usize,
    old_ip: u32,
    new_ip: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), DropReason> {
    let (csum_off, mangled) = if proto == IPPROTO_TCP {
        (L4_OFF + 16, 0)
    } else {
        (L4_OFF + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    let fail = |_| DropReason::LbNatFailed;
    if old_ip != new_ip {
        ctx.l4_csum_replace(
            csum_off,
            old_ip as u64,
            new_ip as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(fail)?;
        ctx.l3_csum_replace(IP_CHECK_OFF, old_ip as u64, new_ip as u64, 4)
            .map_err(fail)?;
        ctx.store(ip_off, &new_ip, 0).map_err(fail)?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(
            csum_off,
            old_port.to_be() as u64,
            new_port.to_be() as u64,
            mangled | 2,
        )
        .map_err(fail)?;
        ctx.store(port_off, &new_port.to_be(), 0).map_err(fail)?;
    }
    Ok(())
}
