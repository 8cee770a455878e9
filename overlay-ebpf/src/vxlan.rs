//! Checks shared by XDP and TC on received VXLAN: is this packet ours, and may it be delivered?
//! Both hooks parse with their own context type and call `classify` on the headers.

use crate::{
    headers::{EthHdr, Ipv4Hdr, UdpHdr, VxlanHdr},
    maps::{ENDPOINTS_BY_MAC, NETWORKS, VTEPS},
};
use overlay_common::{
    wire::{ETH_P_IP, IPPROTO_UDP, VXLAN_FLAG_VNI},
    Config, DropReason, EndpointMacKey,
};

/// Is this outer IPv4/UDP packet VXLAN addressed to this node? Anything else is not ours
/// and passes untouched.
#[inline(always)]
pub fn is_ours(cfg: &Config, eth: &EthHdr, ip: &Ipv4Hdr) -> bool {
    eth.ether_type() == ETH_P_IP
        && ip.proto == IPPROTO_UDP
        && ip.dst_key() == cfg.vtep_ip
        && !ip.is_fragment()
}

#[inline(always)]
pub fn is_vxlan_port(cfg: &Config, udp: &UdpHdr) -> bool {
    u16::from_be_bytes(udp.dst_port) == cfg.vxlan_port
}

/// Where a valid VXLAN frame goes.
pub struct Delivery {
    /// Host-side veth of the local destination endpoint.
    pub ifindex: u32,
}

/// Validates the VXLAN header, the sending VTEP, the VNI and the inner addresses.
#[inline(always)]
pub fn classify(
    outer: &Ipv4Hdr,
    vxlan: &VxlanHdr,
    inner_eth: &EthHdr,
    inner_ip: &Ipv4Hdr,
) -> Result<Delivery, DropReason> {
    if vxlan.flags & VXLAN_FLAG_VNI == 0 {
        return Err(DropReason::VxlanMalformed);
    }
    let vtep = outer.src_key();
    if unsafe { VTEPS.get(vtep) }.is_none() {
        return Err(DropReason::UnknownVtep);
    }
    let vni = vxlan.vni();
    if unsafe { NETWORKS.get(vni) }.is_none() {
        return Err(DropReason::UnknownVni);
    }
    if inner_eth.ether_type() != ETH_P_IP {
        return Err(DropReason::UnsupportedEthertype);
    }
    if inner_ip.ihl_bytes() < 20 {
        return Err(DropReason::Malformed);
    }
    let dst = unsafe { ENDPOINTS_BY_MAC.get(EndpointMacKey::new(vni, inner_eth.dst)) };
    let ifindex = match dst {
        Some(ep) if ep.is_local() => ep.ifindex,
        _ => return Err(DropReason::DecapNotLocal),
    };
    // The inner source must be an endpoint of this VNI that lives behind the sending VTEP.
    match unsafe { ENDPOINTS_BY_MAC.get(EndpointMacKey::new(vni, inner_eth.src)) } {
        Some(src) if !src.is_local() && src.vtep_ip == vtep && src.ip == inner_ip.src_key() => {}
        _ => return Err(DropReason::DecapSpoofedSource),
    }
    Ok(Delivery { ifindex })
}
