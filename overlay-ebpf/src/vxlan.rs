//! Received VXLAN, parsed and checked once for XDP and TC: is this packet ours, and may it be
//! delivered? Both hooks call `receive` on their own context type.

use crate::{
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, UdpHdr, VxlanHdr},
    maps::{ENDPOINTS_BY_IP6, ENDPOINTS_BY_MAC, NETWORKS, VTEPS},
};
use overlay_common::{
    maps::CONFIG_F_FOREIGN_VNI_PASS,
    wire::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, INNER_ETH_OFF, INNER_IP_OFF, IPPROTO_UDP, IPV4_HLEN,
        IPV6_HLEN, VXLAN_FLAG_VNI, VXLAN_OFF,
    },
    Config, DropReason, EndpointIp6Key, EndpointMacKey,
};

/// The inner packet's IP version.
pub enum InnerIp {
    V4,
    V6,
}

/// The inner IP header as read, before it is checked.
enum Inner {
    V4(Ipv4Hdr),
    V6(Ipv6Hdr),
}

/// A VXLAN packet for a local endpoint that passed every check.
pub struct Received {
    pub vxlan: VxlanHdr,
    pub inner_eth: EthHdr,
    pub inner_ip: InnerIp,
    /// Bytes of the inner IP packet, as its header says.
    pub inner_len: usize,
    /// Host-side veth of the local destination endpoint.
    pub ifindex: u32,
    /// The sending VTEP (network order key).
    pub vtep: u32,
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
    // The inner header is read before anything is looked up: a frame cut short is
    // malformed whoever sent it.
    let inner = if inner_eth.ether_type() == ETH_P_IPV6 {
        Inner::V6(
            ctx.header::<Ipv6Hdr>(INNER_IP_OFF)
                .ok_or(DropReason::Malformed)?,
        )
    } else {
        Inner::V4(
            ctx.header::<Ipv4Hdr>(INNER_IP_OFF)
                .ok_or(DropReason::Malformed)?,
        )
    };
    let vni = check_sender(&ip, &vxlan)?;
    let ether_type = inner_eth.ether_type();
    if ether_type != ETH_P_IP && ether_type != ETH_P_IPV6 {
        return Err(DropReason::UnsupportedEthertype);
    }
    let malformed = match &inner {
        Inner::V4(h) => h.ihl_bytes() < IPV4_HLEN,
        Inner::V6(h) => h.version() != 6,
    };
    if malformed {
        return Err(DropReason::Malformed);
    }
    let dst = unsafe { ENDPOINTS_BY_MAC.get(EndpointMacKey::new(vni, inner_eth.dst)) };
    let ifindex = match dst {
        Some(ep) if ep.is_local() => ep.ifindex,
        _ => return Err(DropReason::DecapNotLocal),
    };
    let src_ip = sender_endpoint(vni, ip.src_key(), &inner_eth)?;
    let (inner_ip, inner_len) = match inner {
        Inner::V4(h) => {
            // The sender has no IPv4 address (an IPv6-only network's endpoint).
            if src_ip == 0 {
                return Err(DropReason::Ipv4Disabled);
            }
            if src_ip != h.src_key() {
                return Err(DropReason::DecapSpoofedSource);
            }
            (InnerIp::V4, h.tot_len() as usize)
        }
        Inner::V6(h) => {
            // The IPv6 source must be that endpoint's (the MAC names it).
            let key = EndpointIp6Key { vni, ip6: h.src };
            match unsafe { ENDPOINTS_BY_IP6.get(key) } {
                Some(ep) if ep.mac == inner_eth.src => {}
                _ => return Err(DropReason::DecapSpoofedSource),
            }
            (InnerIp::V6, IPV6_HLEN + h.payload_len() as usize)
        }
    };
    Ok(Some(Received {
        vxlan,
        inner_eth,
        inner_ip,
        inner_len,
        ifindex,
        vtep: ip.src_key(),
    }))
}

/// Validates the VXLAN header, the sending VTEP and the VNI; returns the VNI.
#[inline(always)]
fn check_sender(outer: &Ipv4Hdr, vxlan: &VxlanHdr) -> Result<u32, DropReason> {
    if vxlan.flags & VXLAN_FLAG_VNI == 0 {
        return Err(DropReason::VxlanMalformed);
    }
    if unsafe { VTEPS.get(outer.src_key()) }.is_none() {
        return Err(DropReason::UnknownVtep);
    }
    let vni = vxlan.vni();
    if unsafe { NETWORKS.get(vni) }.is_none() {
        return Err(DropReason::UnknownVni);
    }
    Ok(vni)
}

/// The inner source must be an endpoint of this VNI that lives behind the sending VTEP:
/// returns its IPv4 address. (A value, not a reference into the map: the compiler would
/// move the pointer through shifts, which the verifier refuses.)
#[inline(always)]
fn sender_endpoint(vni: u32, vtep: u32, inner_eth: &EthHdr) -> Result<u32, DropReason> {
    match unsafe { ENDPOINTS_BY_MAC.get(EndpointMacKey::new(vni, inner_eth.src)) } {
        Some(src) if !src.is_local() && src.vtep_ip == vtep => Ok(src.ip),
        _ => Err(DropReason::DecapSpoofedSource),
    }
}
