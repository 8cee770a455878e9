//! The overlay's eBPF datapath. One entry point per attach point; the logic lives in modules.
//!
//! - `from_container`: TC ingress on the host side of every container veth.
//! - `from_underlay`: TC ingress on the underlay interface (VXLAN decapsulation).
//! - `underlay_xdp`: XDP on the underlay interface (drops foreign VXLAN before the stack).
//! - `sock_*4`: cgroup hooks of socket-level service balancing.
#![no_std]
#![no_main]
// BPF has atomic add (the counter of remapped direct flows) but no compare-and-swap, so
// core's atomic types offer no fetch_add here: the intrinsic is what maps onto it.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod arp;
mod counters;
mod decap;
mod encap;
mod forward;
mod forward6;
mod headers;
mod host;
mod icmp;
mod kernel;
mod lb;
mod maps;
mod monitor;
mod ndp;
mod shaped;
mod sock_lb;
mod sock_lb6;
mod vxlan;
mod xdp_filter;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
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

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock_lb::connect4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_lb::sendmsg4(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_lb::recvmsg4(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock_lb::getpeername4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock_lb6::connect6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_lb6::sendmsg6(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock_lb6::recvmsg6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock_lb6::getpeername6(&ctx)
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    sock_lb::release(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
