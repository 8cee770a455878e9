//! Map types of the benchmark's comparison datapath (`bench/ebpf`): a Cilium-style
//! collect_md vxlan device fed by `bpf_skb_set_tunnel_key`. Not used by the overlay itself.
//! Both maps are keyed by a container IPv4 in network order (`u32::from_ne_bytes(octets)`).
#![no_std]

/// `TMD_REMOTE`: where a remote container lives. Read by the encapsulating program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelRemote {
    /// The remote VTEP in host byte order, as `bpf_tunnel_key.remote_ipv4` wants it.
    pub vtep_ip: u32,
    pub vni: u32,
    /// The collect_md vxlan device the packet is redirected to.
    pub vxlan_ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TunnelRemote>() == 16);

/// `TMD_LOCAL`: a container on this host. Read by the program on the vxlan device's ingress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelLocal {
    /// Host-side veth of the container (the redirect goes to its peer).
    pub ifindex: u32,
    /// The VNI the container's traffic must arrive with.
    pub vni: u32,
    pub mac: [u8; 6],
    /// Source MAC of delivered frames: the host side of the container's veth.
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<TunnelLocal>() == 24);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for TunnelRemote {}
    unsafe impl aya::Pod for TunnelLocal {}
}
