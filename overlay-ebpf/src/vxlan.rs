//! Received VXLAN, parsed and checked once for XDP and TC: is this packet ours, and may it be
//! delivered? Both hooks call `receive` on their own context type.

use crate::{
    headers::{EthHdr, Ipv4Hdr, Packet, UdpHdr, VxlanHdr},
    maps::{ENDPOINTS_BY_MAC, NETWORKS, VTEPS},
};
use overlay_common::{
    maps::CONFIG_F_FOREIGN_VNI_PASS,
    wire::{
        ETH_HLEN, ETH_P_IP, INNER_ETH_OFF, INNER_IP_OFF, IPPROTO_UDP, IPV4_HLEN, VXLAN_FLAG_VNI,
        VXLAN_OFF,
    },
    Config, DropReason, EndpointMacKey,
};

/// A VXLAN packet for a local endpoint that passed every check.
pub struct Received {
    pub vxlan: VxlanHdr,
    pub inner_eth: EthHdr,
    pub inner_ip: Ipv4Hdr,
    /// Host-side veth of the local destination endpoint.
    pub ifindex: u32,
}

/// Parses an underlay packet. `Ok(None)`: not VXLAN for this node (or not parseable as
/// such): it passes untouched. `Err`: VXLAN for us that must be dropped, with the reason.
#[inline(always)]
pub fn receive<C: Packet>(ctx: &C, cfg: &Config) -> Result<Option<Received>, DropReason> {
    // One header at a time: a pair of Options confuses the verifier (an unread register).
    let Some(eth) = ctx.header::<EthHdr>(0) else {
        return Ok(None);
    };
    let Some(ip) = ctx.header::<Ipv4Hdr>(ETH_HLEN) else {
        return Ok(None);
    };
    // We never send IPv4 options or fragments; leave such packets to the stack.
    if eth.ether_type() != ETH_P_IP
        || ip.proto != IPPROTO_UDP
        || ip.dst_key() != cfg.vtep_ip
        || ip.is_fragment()
        || !ip.is_plain_v4()
    {
        return Ok(None);
    }
    let Some(udp) = ctx.header::<UdpHdr>(ETH_HLEN + IPV4_HLEN) else {
        return Ok(None);
    };
    if u16::from_be_bytes(udp.dst_port) != cfg.vxlan_port {
        return Ok(None);
    }
    let vxlan = ctx
        .header::<VxlanHdr>(VXLAN_OFF)
        .ok_or(DropReason::VxlanMalformed)?;
    // Another user of the port (a kernel vxlan device) owns the VNIs we do not.
    if cfg.flags & CONFIG_F_FOREIGN_VNI_PASS != 0 && unsafe { NETWORKS.get(vxlan.vni()) }.is_none()
    {
        return Ok(None);
    }
    let inner_eth = ctx
        .header::<EthHdr>(INNER_ETH_OFF)
        .ok_or(DropReason::Malformed)?;
    let inner_ip = ctx
        .header::<Ipv4Hdr>(INNER_IP_OFF)
        .ok_or(DropReason::Malformed)?;
    let ifindex = classify(&ip, &vxlan, &inner_eth, &inner_ip)?;
    Ok(Some(Received {
        vxlan,
        inner_eth,
        inner_ip,
        ifindex,
    }))
}

/// Validates the VXLAN header, the sending VTEP, the VNI and the inner addresses; returns
/// the local destination's host-side veth.
#[inline(always)]
fn classify(
    outer: &Ipv4Hdr,
    vxlan: &VxlanHdr,
    inner_eth: &EthHdr,
    inner_ip: &Ipv4Hdr,
) -> Result<u32, DropReason> {
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
    if inner_ip.ihl_bytes() < IPV4_HLEN {
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
    Ok(ifindex)
}
