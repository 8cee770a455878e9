//! XDP on the underlay: drops VXLAN from unknown VTEPs, with unknown VNIs, or for no local
//! endpoint before the stack allocates an skb for it. Everything else passes to TC.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::debug;
use overlay_common::{Direction, DropReason};

use crate::{
    counters::{count, count_drop},
    headers::{xdp_header, EthHdr, Ipv4Hdr, UdpHdr, VxlanHdr, ETH_HLEN, INNER_ETH_OFF, IPV4_HLEN},
    maps, vxlan,
};

pub fn underlay_xdp(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u32;
    match check(ctx) {
        Ok(true) => {
            count(Direction::XdpVxlanPass, len);
            xdp_action::XDP_PASS
        }
        Ok(false) => xdp_action::XDP_PASS,
        Err(reason) => {
            count_drop(reason, len);
            debug!(ctx, "xdp drop: reason {}", reason as u32);
            xdp_action::XDP_DROP
        }
    }
}

/// Ok(true): valid VXLAN for us; Ok(false): not ours; Err: drop.
#[inline(always)]
fn check(ctx: &XdpContext) -> Result<bool, DropReason> {
    let Some(cfg) = maps::config() else {
        return Ok(false);
    };
    let Some(eth) = xdp_header::<EthHdr>(ctx, 0) else {
        return Ok(false);
    };
    let Some(ip) = xdp_header::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Ok(false);
    };
    if !vxlan::is_ours(cfg, &eth, &ip) {
        return Ok(false);
    }
    if !ip.is_plain_v4() {
        // We never send IPv4 options; leave such packets to the stack.
        return Ok(false);
    }
    let Some(udp) = xdp_header::<UdpHdr>(ctx, ETH_HLEN + IPV4_HLEN) else {
        return Ok(false);
    };
    if !vxlan::is_vxlan_port(cfg, &udp) {
        return Ok(false);
    }
    let hdr = xdp_header::<VxlanHdr>(ctx, INNER_ETH_OFF - 8).ok_or(DropReason::VxlanMalformed)?;
    let inner_eth = xdp_header::<EthHdr>(ctx, INNER_ETH_OFF).ok_or(DropReason::Malformed)?;
    let inner_ip =
        xdp_header::<Ipv4Hdr>(ctx, INNER_ETH_OFF + ETH_HLEN).ok_or(DropReason::Malformed)?;
    vxlan::classify(&ip, &hdr, &inner_eth, &inner_ip)?;
    Ok(true)
}
