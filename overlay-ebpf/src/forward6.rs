//! A container's IPv6 packets, after the checks every frame gets (`forward`): neighbour
//! discovery answered locally, then the IPv6 source checked, a packet to a service VIP
//! balanced (`lb::to_service6`), and the packet delivered to a local endpoint or
//! encapsulated towards the destination's VTEP, as for IPv4. Extension
//! headers and fragments are carried as they are (switching never reads past the IPv6
//! header; only the MTU check of a GSO packet looks for its TCP header), except that
//! neighbour discovery behind them is dropped (`hides_ndp`).

use aya_ebpf::programs::TcContext;
use overlay_common::{
    maps::CONFIG_F_LB,
    monitor::TraceVerdict,
    wire::{
        ETH_HLEN, ICMPV6_REDIRECT, ICMPV6_ROUTER_SOLICIT, INNER_IP_OFF, IPPROTO_ICMPV6, IPV6_HLEN,
    },
    Config, Direction, DropReason, EndpointInfo, EndpointIp6Key, EndpointMacKey, LocalIface,
    NetworkInfo,
};

use crate::{
    counters::count,
    encap,
    headers::{is_multicast, load, EthHdr, Ipv6Hdr, Packet as _},
    host, icmp,
    kernel::unpack,
    lb,
    maps::{ENDPOINTS_BY_IP6, ENDPOINTS_BY_MAC, NETWORKS, VTEPS},
    monitor::{self, Trace},
    ndp, shaped,
};

/// What the forwarding path decided, for what it leaves to its caller.
enum Forwarded {
    Verdict(i32),
    /// For a local endpoint behind this host interface: delivered by the caller.
    Local(u32),
    /// Too big for the underlay: answered by the caller (`icmp::packet_too_big6`).
    TooBig,
    /// Sent to the gateway for an address outside the network: perhaps the host's own.
    Host,
}

/// A container's IPv6 frame. The rare answers (neighbour discovery, packet too big), the
/// service path and the reply translation are subprograms called from here, not from the
/// forwarding path: BPF allows 512 bytes of stack for a whole call chain, and each of these
/// paths needs much of that on its own.
#[inline(always)]
pub fn from_container6(ctx: &TcContext, cfg: &Config, me: &LocalIface) -> Result<i32, DropReason> {
    let next_header = ctx
        .header::<u8>(ETH_HLEN + IPV6_NEXT_HEADER_OFF)
        .ok_or(DropReason::Malformed)?;
    if next_header == IPPROTO_ICMPV6 {
        let kind = ctx
            .header::<u8>(ETH_HLEN + IPV6_HLEN)
            .ok_or(DropReason::Malformed)?;
        if (ICMPV6_ROUTER_SOLICIT..=ICMPV6_REDIRECT).contains(&kind) {
            return ndp::handle(ctx, me, kind);
        }
    }
    let to_gateway = check_ipv6(ctx, me)?;
    let balancing = cfg.flags & CONFIG_F_LB != 0;
    let mut translated = false;
    if to_gateway && balancing {
        // VIPs are outside the network's subnet: reached via the gateway. A translated
        // packet names its backend now.
        match lb::to_service6(ctx, me)? {
            lb::Verdict::NotService => {}
            lb::Verdict::Translated => translated = true,
            lb::Verdict::Reject => return lb::reject6(ctx),
        }
    }
    if balancing && !translated {
        lb::check_direct6(ctx, cfg, me.vni)?;
    }
    match forward_ipv6(ctx, cfg, me.vni, translated)? {
        Forwarded::Verdict(verdict) => Ok(verdict),
        Forwarded::Local(ifindex) => {
            if !translated && balancing {
                lb::to_client6(ctx, me.vni)?;
            }
            let len = ctx.len();
            let verdict = shaped::deliver(cfg.flags, ifindex)?;
            count(Direction::LocalDelivery, len);
            if monitor::tracing() {
                note6(ctx, TraceVerdict::Local, ifindex, me.vni, 0);
            }
            Ok(verdict)
        }
        Forwarded::Host => unpack(host::deliver6(ctx, me.vni, cfg.flags)),
        Forwarded::TooBig => {
            let len = ctx.len();
            let verdict = icmp::packet_too_big6(ctx, me)?;
            count(Direction::Icmp6TooBig, len);
            Ok(verdict)
        }
    }
}

/// Offset of the next header field in the IPv6 header.
const IPV6_NEXT_HEADER_OFF: usize = 6;

/// Extension headers the walk in `hides_ndp` steps over.
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_DEST_OPTS: u8 = 60;
/// Longer chains are dropped (`ipv6_hidden_ndp`): real traffic carries one or two.
const MAX_EXT_HEADERS: usize = 4;

#[inline(always)]
fn is_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        EXT_HOP_BY_HOP | EXT_ROUTING | EXT_FRAGMENT | EXT_DEST_OPTS
    )
}

/// Whether neighbour discovery (or a redirect) hides behind the extension headers starting
/// with `first`, or the chain is too long to tell. A receiving kernel processes discovery
/// behind hop-by-hop or destination options (it refuses only fragmented discovery), so such
/// a message must never be forwarded: an advertisement from the container's own address
/// naming another endpoint would pass every source check and poison the receiver's
/// neighbour cache. Not inlined: walked only for packets with extension headers.
#[inline(never)]
fn hides_ndp(ctx: &TcContext, l3_off: usize, first: u8) -> Result<bool, DropReason> {
    let mut next = first;
    let mut off = l3_off + IPV6_HLEN;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        // The first bytes of any extension header: next header, then its length (in 8-byte
        // units beyond the first 8) or, in a fragment header, the offset at bytes 2-3.
        let mut hdr = [0u8; 4];
        load(ctx, off, &mut hdr, DropReason::Malformed)?;
        match next {
            EXT_FRAGMENT => {
                // Only a first fragment carries the upper-layer header.
                if u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 != 0 {
                    return Ok(false);
                }
                off += 8;
            }
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => off += (hdr[1] as usize + 1) * 8,
            _ => return Ok(false),
        }
        next = hdr[0];
        if next == IPPROTO_ICMPV6 {
            let mut kind = [0u8; 1];
            load(ctx, off, &mut kind, DropReason::Malformed)?;
            return Ok((ICMPV6_ROUTER_SOLICIT..=ICMPV6_REDIRECT).contains(&kind[0]));
        }
        if !is_extension(next) {
            return Ok(false);
        }
        i += 1;
    }
    Ok(true)
}

/// Neighbour discovery (or a redirect) inside VXLAN, plainly or behind extension headers:
/// never sent across the underlay (each node answers its own containers'), so it is forged.
/// Delivered, an advertisement naming another endpoint would pass the source checks and
/// poison the container's neighbour cache.
#[inline(never)]
pub fn check_inner_ndp(ctx: &TcContext) -> Result<(), DropReason> {
    let next = ctx
        .header::<u8>(INNER_IP_OFF + IPV6_NEXT_HEADER_OFF)
        .ok_or(DropReason::Malformed)?;
    if next == IPPROTO_ICMPV6 {
        let kind = ctx
            .header::<u8>(INNER_IP_OFF + IPV6_HLEN)
            .ok_or(DropReason::Malformed)?;
        if (ICMPV6_ROUTER_SOLICIT..=ICMPV6_REDIRECT).contains(&kind) {
            return Err(DropReason::SpoofedNdp);
        }
    } else if is_extension(next) && hides_ndp(ctx, INNER_IP_OFF, next)? {
        return Err(DropReason::Ipv6HiddenNdp);
    }
    Ok(())
}

/// The network of `me`, if it carries IPv6 and `me` has an IPv6 address.
#[inline(always)]
pub fn network6(me: &LocalIface) -> Result<&'static NetworkInfo, DropReason> {
    let net = unsafe { NETWORKS.get(me.vni) }.ok_or(DropReason::UnknownNetwork)?;
    if me.ip6 == [0; 16] || net.gateway_ip6 == [0; 16] {
        return Err(DropReason::Ipv6Disabled);
    }
    Ok(net)
}

/// The checks every IPv6 packet of a container passes before it is balanced or forwarded
/// (hidden discovery, multicast, the source address); whether it is sent to the gateway.
#[inline(never)]
fn check_ipv6(ctx: &TcContext, me: &LocalIface) -> Result<bool, DropReason> {
    let eth = ctx.header::<EthHdr>(0).ok_or(DropReason::Malformed)?;
    let ip = ctx
        .header::<Ipv6Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    if ip.version() != 6 {
        return Err(DropReason::Malformed);
    }
    let net = network6(me)?;
    if is_extension(ip.next_header) && hides_ndp(ctx, ETH_HLEN, ip.next_header)? {
        return Err(DropReason::Ipv6HiddenNdp);
    }
    // Multicast first: a container's MLD reports (sent from :: or its link-local address)
    // are flooding that never happens here, not spoofing.
    if is_multicast(&eth.dst) {
        return Err(DropReason::Broadcast);
    }
    if ip.src != me.ip6 {
        return Err(DropReason::SpoofedIp6);
    }
    Ok(eth.dst == net.gateway_mac)
}

/// Not inlined: a stack frame of its own, apart from IPv4's (see `forward::forward_ipv4`).
/// The packet passed `check_ipv6`; `translated`: balanced to a backend.
#[inline(never)]
fn forward_ipv6(
    ctx: &TcContext,
    cfg: &Config,
    vni: u32,
    translated: bool,
) -> Result<Forwarded, DropReason> {
    let mut eth = ctx.header::<EthHdr>(0).ok_or(DropReason::Malformed)?;
    let ip = ctx
        .header::<Ipv6Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    let net = unsafe { NETWORKS.get(vni) }.ok_or(DropReason::UnknownNetwork)?;
    let target: &EndpointInfo = if eth.dst == net.gateway_mac {
        let key = EndpointIp6Key { vni, ip6: ip.dst };
        let Some(ep) = (unsafe { ENDPOINTS_BY_IP6.get(key) }) else {
            return match translated {
                true => Err(DropReason::UnknownDestination),
                false => Ok(Forwarded::Host),
            };
        };
        eth.dst = ep.mac;
        ctx.store(0, &eth, 0).map_err(|_| DropReason::Malformed)?;
        ep
    } else {
        let key = EndpointMacKey::new(vni, eth.dst);
        unsafe { ENDPOINTS_BY_MAC.get(key) }.ok_or(DropReason::UnknownDestination)?
    };

    if target.is_local() {
        return Ok(Forwarded::Local(target.ifindex));
    }
    if icmp::too_big(
        ctx,
        cfg,
        encap::overhead(&target.vtep),
        IPV6_HLEN,
        ip.next_header,
    )? {
        // Only an untranslated packet can be quoted back: its sender knows these addresses.
        // By reference: the key is read from the endpoint's entry, not copied to the stack.
        let vtep = &target.vtep;
        if translated || unsafe { VTEPS.get(vtep) }.is_none() {
            return Err(DropReason::TooBig);
        }
        return Ok(Forwarded::TooBig);
    }
    let sent = encap::to_vtep(ctx, cfg, vni, &target.vtep, &eth, ip.traffic_class())?;
    // Checked again rather than passed: BPF passes at most five arguments in registers.
    if monitor::tracing() {
        let out = cfg.underlay_ifindex;
        note6(ctx, TraceVerdict::Encap, out, vni, sent.vtep_node);
    }
    Ok(Forwarded::Verdict(sent.verdict))
}

#[inline(always)]
fn note6(ctx: &TcContext, verdict: TraceVerdict, out_ifindex: u32, vni: u32, vtep_node: u32) {
    let t = Trace {
        verdict,
        out_ifindex,
        vni,
        vtep_node,
    };
    monitor::note(ctx, &t);
}
