//! TC ingress on the host side of a container veth: everything a container sends enters here.
//! Anti-spoofing first, then ARP (and IPv6 neighbour discovery, `forward6`) answered
//! locally, then delivery to a local endpoint or
//! encapsulation towards the destination's VTEP. Nothing is ever flooded.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use aya_log_ebpf::debug;
use overlay_common::{
    maps::CONFIG_F_LB,
    monitor::{TraceVerdict, HOOK_FROM_CONTAINER},
    wire::{ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN},
    Config, Direction, DropReason, EndpointInfo, EndpointIpKey, EndpointMacKey, LocalIface,
};

use crate::{
    arp,
    counters::{count, count_drop},
    encap, forward6,
    headers::{is_multicast, EthHdr, Ipv4Hdr, Packet as _},
    host, icmp,
    kernel::unpack,
    lb,
    maps::{self, ENDPOINTS_BY_IP, ENDPOINTS_BY_MAC, LOCAL_IFACES, NETWORKS, VTEPS},
    monitor::{self, Trace},
    shaped,
};

pub fn from_container(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    let tracing = monitor::tracing();
    if tracing {
        monitor::clear_note(ctx);
    }
    match try_forward(ctx, tracing) {
        Ok(verdict) => {
            if tracing {
                monitor::trace_noted(ctx, HOOK_FROM_CONTAINER);
            }
            verdict
        }
        Err(reason) => {
            count_drop(reason, len);
            monitor::drop_tc(ctx, HOOK_FROM_CONTAINER, reason);
            debug!(ctx, "container drop: {}", reason.label());
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_forward(ctx: &TcContext, tracing: bool) -> Result<i32, DropReason> {
    let cfg = maps::config().ok_or(DropReason::NotConfigured)?;
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let me = unsafe { LOCAL_IFACES.get(ifindex) }.ok_or(DropReason::UnknownInterface)?;
    count(Direction::FromContainer, ctx.len());

    let eth = ctx.header::<EthHdr>(0).ok_or(DropReason::Malformed)?;
    if eth.src != me.mac {
        return Err(DropReason::SpoofedMac);
    }
    // An endpoint of an IPv6-only network has no IPv4 address (0 in its identity): its
    // IPv4 and ARP would otherwise pass as an address probe's 0.0.0.0.
    if me.ip == 0 && matches!(eth.ether_type(), ETH_P_ARP | ETH_P_IP) {
        return Err(DropReason::Ipv4Disabled);
    }
    match eth.ether_type() {
        ETH_P_ARP => {
            let verdict = arp::respond(ctx, me, ifindex)?;
            if tracing {
                let t = Trace {
                    verdict: TraceVerdict::Answered,
                    out_ifindex: ifindex,
                    vni: me.vni,
                    vtep_node: 0,
                };
                monitor::note(ctx, &t);
            }
            Ok(verdict)
        }
        ETH_P_IP => from_container4(ctx, cfg, me),
        ETH_P_IPV6 => forward6::from_container6(ctx, cfg, me),
        _ => Err(DropReason::UnsupportedEthertype),
    }
}

/// What the forwarding path decided, for what it leaves to its caller.
enum Forwarded {
    Verdict(i32),
    /// For a local endpoint behind this host interface: delivered by the caller.
    Local(u32),
    /// Sent to the gateway for an address outside the network: perhaps the host's own.
    Host,
}

/// A container's IPv4 packet: checked, balanced if it is for a service, kept apart from
/// balanced flows if not (`lb`), then forwarded. Each step is a subprogram of its own, called
/// from here: BPF allows 512 bytes of stack for a whole call chain, and the service path
/// needs much of that on its own.
#[inline(always)]
fn from_container4(ctx: &TcContext, cfg: &Config, me: &LocalIface) -> Result<i32, DropReason> {
    let to_gateway = check_ipv4(ctx, me)?;
    let balancing = cfg.flags & CONFIG_F_LB != 0;
    let mut translated = false;
    if balancing {
        // Service VIPs live outside the network's subnet, so they are reached via the
        // gateway. Without services on this node, not even the lookup.
        if to_gateway {
            match lb::to_service(ctx, me)? {
                lb::Verdict::NotService => {}
                // Rewritten in place: the packet names where it goes now.
                lb::Verdict::Translated => translated = true,
                lb::Verdict::Reject => return lb::reject(ctx),
            }
        }
        if !translated {
            lb::check_direct(ctx, cfg, me.vni)?;
        }
    }
    match forward_ipv4(ctx, cfg, me, translated)? {
        Forwarded::Verdict(verdict) => Ok(verdict),
        Forwarded::Host => unpack(host::deliver4(ctx, me.vni, cfg.flags)),
        Forwarded::Local(ifindex) => {
            if !translated && balancing {
                lb::to_client_here(ctx, me.vni)?;
            }
            let len = ctx.len();
            let verdict = shaped::deliver(cfg.flags, ifindex)?;
            count(Direction::LocalDelivery, len);
            monitor::note4(ctx, TraceVerdict::Local, ifindex, me.vni, 0, translated);
            Ok(verdict)
        }
    }
}

/// The checks every IPv4 packet of a container passes before it is balanced or forwarded;
/// whether it is sent to the gateway.
#[inline(never)]
fn check_ipv4(ctx: &TcContext, me: &LocalIface) -> Result<bool, DropReason> {
    let eth = ctx.header::<EthHdr>(0).ok_or(DropReason::Malformed)?;
    let ip = ctx
        .header::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    if ip.ihl_bytes() < IPV4_HLEN {
        return Err(DropReason::Malformed);
    }
    if ip.src_key() != me.ip {
        return Err(DropReason::SpoofedIp);
    }
    if is_multicast(&eth.dst) {
        return Err(DropReason::Broadcast);
    }
    let net = unsafe { NETWORKS.get(me.vni) }.ok_or(DropReason::UnknownNetwork)?;
    Ok(eth.dst == net.gateway_mac)
}

/// Not inlined, nor is `forward_ipv6`: each family's path gets a stack frame of its own.
/// The packet passed `check_ipv4`; `translated`: balanced to a backend (or a hairpin
/// reply turned back), so it is never quoted in an ICMP error. BPF passes at most five
/// arguments in registers, so the Ethernet header and the interface are read again.
#[inline(never)]
fn forward_ipv4(
    ctx: &TcContext,
    cfg: &Config,
    me: &LocalIface,
    translated: bool,
) -> Result<Forwarded, DropReason> {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut eth = ctx.header::<EthHdr>(0).ok_or(DropReason::Malformed)?;
    let ip = ctx
        .header::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    let net = unsafe { NETWORKS.get(me.vni) }.ok_or(DropReason::UnknownNetwork)?;
    let target: &EndpointInfo = if eth.dst == net.gateway_mac {
        // Sent to the virtual gateway: find the endpoint by IP and address it directly. The
        // source MAC stays the sender's, which the receiving VTEP checks against its tables.
        let key = EndpointIpKey {
            vni: me.vni,
            ip: ip.dst_key(),
        };
        let Some(ep) = (unsafe { ENDPOINTS_BY_IP.get(key) }) else {
            return match translated {
                true => Err(DropReason::UnknownDestination),
                false => Ok(Forwarded::Host),
            };
        };
        eth.dst = ep.mac;
        ctx.store(0, &eth, 0).map_err(|_| DropReason::Malformed)?;
        ep
    } else {
        let key = EndpointMacKey::new(me.vni, eth.dst);
        unsafe { ENDPOINTS_BY_MAC.get(key) }.ok_or(DropReason::UnknownDestination)?
    };

    if target.is_local() {
        return Ok(Forwarded::Local(target.ifindex));
    }
    if icmp::too_big(
        ctx,
        cfg,
        encap::overhead(&target.vtep),
        ip.ihl_bytes(),
        ip.proto,
    )? {
        // Only an untranslated packet can be quoted back: its sender knows these addresses.
        // By reference: the key is read from the endpoint's entry, not copied to the stack.
        let vtep = &target.vtep;
        if translated || unsafe { VTEPS.get(vtep) }.is_none() {
            return Err(DropReason::TooBig);
        }
        let len = ctx.len();
        let verdict = icmp::frag_needed(
            ctx,
            cfg,
            ifindex,
            me.mac,
            net.gateway_mac,
            net.gateway_ip,
            &ip,
        )?;
        count(Direction::IcmpFragNeeded, len);
        return Ok(Forwarded::Verdict(verdict));
    }
    let sent = encap::to_vtep(ctx, cfg, me.vni, &target.vtep, &eth, ip.tos)?;
    let out = cfg.underlay_ifindex;
    monitor::note4(
        ctx,
        TraceVerdict::Encap,
        out,
        me.vni,
        sent.vtep_node,
        translated,
    );
    Ok(Forwarded::Verdict(sent.verdict))
}
