//! Received VXLAN, parsed and checked once for XDP and TC: is this packet ours, and may it be
//! delivered? Both hooks call `receive` on their own context type.

use crate::{
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, UdpHdr, VxlanHdr},
    maps::{ENDPOINTS_BY_IP6, ENDPOINTS_BY_MAC, NETWORKS, VTEPS},
};
use overlay_common::{
    maps::{VtepKey, CONFIG_F_FOREIGN_VNI_PASS},
    wire::{
        vtep_v4, vtep_v4_key, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN,
        UDP_HLEN, VXLAN_FLAG_VNI, VXLAN_HLEN,
    },
    Config, DropReason, EndpointIp6Key, EndpointMacKey,
};

/// Offsets of the addresses in an IPv6 header.
const IPV6_SRC_OFF: usize = 8;
const IPV6_DST_OFF: usize = 24;

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
    /// The sending VTEP's node id (`VtepInfo.node_id`).
    pub vtep_node: u32,
    /// What decapsulation removes: the outer IP, UDP and VXLAN headers and the inner
    /// Ethernet header, which is written over the outer one (`wire::VXLAN_OVERHEAD` or
    /// `VXLAN6_OVERHEAD`); also the offset of the inner Ethernet header.
    pub overhead: usize,
}

/// Parses an underlay packet. `Ok(None)`: not VXLAN for this node (or not parseable as
/// such): it passes untouched. `Err`: VXLAN for us that must be dropped, with the reason.
/// The outer header is IPv4 or IPv6; everything after it is checked alike (`inner`, made
/// once per outer header length so every offset stays a constant for the verifier).
#[inline(always)]
pub fn receive<C: Packet>(ctx: &C, cfg: &Config) -> Result<Option<Received>, DropReason> {
    let Some(eth) = ctx.header::<EthHdr>(0) else {
        return Ok(None);
    };
    match eth.ether_type() {
        ETH_P_IP => receive4(ctx, cfg),
        ETH_P_IPV6 => receive6(ctx, cfg),
        _ => Ok(None),
    }
}

#[inline(always)]
pub fn receive4<C: Packet>(ctx: &C, cfg: &Config) -> Result<Option<Received>, DropReason> {
    // ARP, VLANs, anything not IPv4 is no VXLAN for this node.
    let Some(eth) = ctx.header::<EthHdr>(0) else {
        return Ok(None);
    };
    if eth.ether_type() != ETH_P_IP {
        return Ok(None);
    }
    let Some(ip) = ctx.header::<Ipv4Hdr>(ETH_HLEN) else {
        return Ok(None);
    };
    // We never send IPv4 options or fragments; leave such packets to the stack.
    if ip.proto != IPPROTO_UDP
        || ip.dst_key() != cfg.vtep_ip
        || cfg.vtep_ip == 0
        || ip.is_fragment()
        || !ip.is_plain_v4()
    {
        return Ok(None);
    }
    inner::<C, { ETH_HLEN + IPV4_HLEN }>(ctx, cfg, &vtep_v4(ip.src_key()))
}

/// VXLAN in IPv6. The overlay sends no extension headers (nor fragments, which take one):
/// a packet with any is left to the stack, where no VXLAN socket takes it unless a kernel
/// vxlan device shares the port. The UDP checksum is not checked here (senders of this
/// datapath leave it zero, RFC 6935; the inner packet carries its own).
#[inline(always)]
pub fn receive6<C: Packet>(ctx: &C, cfg: &Config) -> Result<Option<Received>, DropReason> {
    // Only what is checked is copied out of the header: the whole of it would stay on the
    // stack through `inner`, which the delivery path has no room for.
    let Some(fixed) = ctx.header::<[u8; 8]>(ETH_HLEN) else {
        return Ok(None);
    };
    let Some(dst) = ctx.header::<[u8; 16]>(ETH_HLEN + IPV6_DST_OFF) else {
        return Ok(None);
    };
    if fixed[6] != IPPROTO_UDP
        || fixed[0] >> 4 != 6
        || !key_eq(&dst, &cfg.vtep_ip6)
        || key_eq(&cfg.vtep_ip6, &[0; 16])
    {
        return Ok(None);
    }
    let Some(src) = ctx.header::<[u8; 16]>(ETH_HLEN + IPV6_SRC_OFF) else {
        return Ok(None);
    };
    inner::<C, { ETH_HLEN + IPV6_HLEN }>(ctx, cfg, &src)
}

/// Whether two VTEP keys (or IPv6 addresses) are equal, a word at a time (an array
/// comparison may become a call to `bcmp`, which BPF has not).
#[inline(always)]
pub fn key_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |k: &[u8; 16], i: usize| u32::from_ne_bytes([k[i], k[i + 1], k[i + 2], k[i + 3]]);
    (w(a, 0) ^ w(b, 0)) | (w(a, 4) ^ w(b, 4)) | (w(a, 8) ^ w(b, 8)) | (w(a, 12) ^ w(b, 12)) == 0
}

/// Everything after the outer IP header (`L4` bytes from the start: the UDP header), for
/// a packet to one of this node's VTEP addresses from `src`.
#[inline(always)]
fn inner<C: Packet, const L4: usize>(
    ctx: &C,
    cfg: &Config,
    src: &VtepKey,
) -> Result<Option<Received>, DropReason> {
    let Some(udp) = ctx.header::<UdpHdr>(L4) else {
        return Ok(None);
    };
    if u16::from_be_bytes(udp.dst_port) != cfg.vxlan_port {
        return Ok(None);
    }
    let vxlan = ctx
        .header::<VxlanHdr>(L4 + UDP_HLEN)
        .ok_or(DropReason::VxlanMalformed)?;
    // Another user of the port (a kernel vxlan device) owns the VNIs we do not.
    if cfg.flags & CONFIG_F_FOREIGN_VNI_PASS != 0 && unsafe { NETWORKS.get(vxlan.vni()) }.is_none()
    {
        return Ok(None);
    }
    let inner_eth_off = L4 + UDP_HLEN + VXLAN_HLEN;
    let inner_eth = ctx
        .header::<EthHdr>(inner_eth_off)
        .ok_or(DropReason::Malformed)?;
    // The inner header is read before anything is looked up: a frame cut short is
    // malformed whoever sent it.
    let inner = if inner_eth.ether_type() == ETH_P_IPV6 {
        Inner::V6(
            ctx.header::<Ipv6Hdr>(inner_eth_off + ETH_HLEN)
                .ok_or(DropReason::Malformed)?,
        )
    } else {
        Inner::V4(
            ctx.header::<Ipv4Hdr>(inner_eth_off + ETH_HLEN)
                .ok_or(DropReason::Malformed)?,
        )
    };
    // An IPv4-mapped source is no address an IPv6 packet comes from (RFC 4291 2.5.5.2),
    // and it is how an IPv4 VTEP is keyed: VXLAN in IPv6 must not pass as that VTEP's.
    if L4 == ETH_HLEN + IPV6_HLEN && vtep_v4_key(src).is_some() {
        return Err(DropReason::UnknownVtep);
    }
    let (vni, vtep_node) = check_sender(src, &vxlan)?;
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
    let src_ip = sender_endpoint(vni, src, &inner_eth)?;
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
        vtep_node,
        overhead: inner_eth_off,
    }))
}

/// Validates the VXLAN header, the sending VTEP and the VNI; returns the VNI and the
/// VTEP's node id.
#[inline(always)]
fn check_sender(src: &VtepKey, vxlan: &VxlanHdr) -> Result<(u32, u32), DropReason> {
    if vxlan.flags & VXLAN_FLAG_VNI == 0 {
        return Err(DropReason::VxlanMalformed);
    }
    let Some(vtep) = (unsafe { VTEPS.get(src) }) else {
        return Err(DropReason::UnknownVtep);
    };
    let node = vtep.node_id;
    let vni = vxlan.vni();
    if unsafe { NETWORKS.get(vni) }.is_none() {
        return Err(DropReason::UnknownVni);
    }
    Ok((vni, node))
}

/// The inner source must be an endpoint of this VNI that lives behind the sending VTEP:
/// returns its IPv4 address. (A value, not a reference into the map: the compiler would
/// move the pointer through shifts, which the verifier refuses.)
#[inline(always)]
fn sender_endpoint(vni: u32, vtep: &VtepKey, inner_eth: &EthHdr) -> Result<u32, DropReason> {
    match unsafe { ENDPOINTS_BY_MAC.get(EndpointMacKey::new(vni, inner_eth.src)) } {
        Some(src) if !src.is_local() && key_eq(&src.vtep, vtep) => Ok(src.ip),
        _ => Err(DropReason::DecapSpoofedSource),
    }
}
