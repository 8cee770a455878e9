//! The overlay's eBPF datapath. One entry point per attach point; the logic lives in modules.
//!
//! - `from_container`: TC ingress on the host side of every container veth.
//! - `from_underlay`: TC ingress on the underlay interface (VXLAN decapsulation).
//! - `underlay_xdp`: XDP on the underlay interface (drops foreign VXLAN before the stack).
#![no_std]
#![no_main]

mod arp;
mod counters;
mod decap;
mod encap;
mod forward;
mod headers;
mod kernel;
mod lb;
mod maps;
mod vxlan;
mod xdp_filter;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    forward::from_container(&ctx)
}

#[classifier]
pub fn from_underlay(ctx: TcContext) -> i32 {
    decap::from_underlay(&ctx)
}

#[xdp]
pub fn underlay_xdp(ctx: XdpContext) -> u32 {
    xdp_filter::underlay_xdp(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
