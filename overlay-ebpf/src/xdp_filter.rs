//! XDP on the underlay: drops VXLAN from unknown VTEPs, with unknown VNIs, or for no local
//! endpoint before the stack allocates an skb for it. Everything else passes to TC.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::debug;
use overlay_common::Direction;

use crate::{
    counters::{count, count_drop},
    headers::Packet as _,
    maps, vxlan,
};

pub fn underlay_xdp(ctx: &XdpContext) -> u32 {
    let Some(cfg) = maps::config() else {
        return xdp_action::XDP_PASS;
    };
    let len = ctx.len();
    match vxlan::receive(ctx, cfg) {
        Ok(Some(_)) => {
            count(Direction::XdpVxlanPass, len);
            xdp_action::XDP_PASS
        }
        Ok(None) => xdp_action::XDP_PASS,
        Err(reason) => {
            count_drop(reason, len);
            crate::monitor::drop_xdp(ctx, overlay_common::monitor::HOOK_UNDERLAY_XDP, reason);
            debug!(ctx, "xdp drop: {}", reason.label());
            xdp_action::XDP_DROP
        }
    }
}
