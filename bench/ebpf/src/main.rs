//! The benchmark's `kernel-vxlan-bpf` datapath, built the way Cilium's tunnel mode is: TC
//! programs choose the tunnel and the kernel's collect_md vxlan device does the encapsulation.
//!
//! - `tmd_from_container`: TC ingress on a container's host-side veth. Looks the destination
//!   up, sets the tunnel key (remote VTEP, VNI) and redirects to the vxlan device.
//! - `tmd_from_tunnel`: TC ingress on the vxlan device, after the kernel decapsulated. Checks
//!   the VNI, addresses the frame to the container and hands it to the veth peer.
//!
//! Anything not in the tables (ARP to the host, other traffic) goes on to the stack.
#![no_std]
#![no_main]

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{bpf_tunnel_key, BPF_F_ZERO_CSUM_TX, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_peer, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use overlay_bench_common::{TunnelLocal, TunnelRemote};

#[map(name = "TMD_REMOTE")]
static REMOTE: HashMap<u32, TunnelRemote> = HashMap::with_max_entries(1024, 0);

#[map(name = "TMD_LOCAL")]
static LOCAL: HashMap<u32, TunnelLocal> = HashMap::with_max_entries(1024, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const TUNNEL_TTL: u8 = 64;
/// `skb->pkt_type` for a frame addressed to this host (linux/if_packet.h).
const PACKET_HOST: u32 = 0;

#[repr(C)]
#[derive(Clone, Copy)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ether_type: [u8; 2],
}

/// The IPv4 header up to the destination address.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Prefix {
    _before_addrs: [u8; 12],
    src: [u8; 4],
    dst: [u8; 4],
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The IPv4 destination of an Ethernet/IPv4 frame (network order), pulling the headers into
/// the linear area if they are not there yet.
#[inline(always)]
fn ipv4_dst(ctx: &TcContext) -> Option<u32> {
    let want = ETH_HLEN + size_of::<Ipv4Prefix>();
    if ptr_at::<Ipv4Prefix>(ctx, ETH_HLEN).is_none() {
        ctx.pull_data(want as u32).ok()?;
    }
    let eth = unsafe { *ptr_at::<EthHdr>(ctx, 0)? };
    if eth.ether_type != ETH_P_IP {
        return None;
    }
    let ip = unsafe { *ptr_at::<Ipv4Prefix>(ctx, ETH_HLEN)? };
    Some(u32::from_ne_bytes(ip.dst))
}

#[classifier]
pub fn tmd_from_container(ctx: TcContext) -> i32 {
    let Some(dst) = ipv4_dst(&ctx) else {
        return TC_ACT_OK;
    };
    let Some(remote) = (unsafe { REMOTE.get(dst) }) else {
        return TC_ACT_OK;
    };
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    key.tunnel_id = remote.vni;
    key.__bindgen_anon_1.remote_ipv4 = remote.vtep_ip;
    key.tunnel_ttl = TUNNEL_TTL;
    // As Cilium does (and the kernel vxlan device by default for IPv4): no outer UDP checksum.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            size_of::<bpf_tunnel_key>() as u32,
            BPF_F_ZERO_CSUM_TX as u64,
        )
    };
    if ret < 0 {
        return TC_ACT_SHOT;
    }
    unsafe { bpf_redirect(remote.vxlan_ifindex, 0) as i32 }
}

#[classifier]
pub fn tmd_from_tunnel(ctx: TcContext) -> i32 {
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    let ret = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if ret < 0 {
        return TC_ACT_SHOT;
    }
    let Some(dst) = ipv4_dst(&ctx) else {
        return TC_ACT_OK;
    };
    let Some(local) = (unsafe { LOCAL.get(dst) }) else {
        return TC_ACT_OK;
    };
    if key.tunnel_id != local.vni {
        return TC_ACT_SHOT;
    }
    // The device classified the inner frame by the gateway MAC it carried (PACKET_OTHERHOST);
    // it is now addressed to the container, so say so rather than rely on the redirect
    // scrubbing it.
    if ctx.change_type(PACKET_HOST).is_err() {
        return TC_ACT_SHOT;
    }
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return TC_ACT_SHOT;
    };
    unsafe {
        (*eth).dst = local.mac;
        (*eth).src = local.gateway_mac;
        bpf_redirect_peer(local.ifindex, 0) as i32
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
