//! ARP responder: answers a container's ARP requests from the network's tables, so ARP never
//! leaves the host and nothing is flooded. Unknown targets get no answer.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use overlay_common::{
    wire::{ETH_HLEN, ETH_P_ARP, ETH_P_IP},
    Direction, DropReason, EndpointIpKey, LocalIface,
};

use crate::{
    counters::count,
    headers::{ArpHdr, EthHdr, Packet as _},
    kernel::redirected,
    maps::{ENDPOINTS_BY_IP, NETWORKS},
};

const ARP_HTYPE_ETHER: [u8; 2] = 1u16.to_be_bytes();
const ARP_PTYPE_IPV4: [u8; 2] = ETH_P_IP.to_be_bytes();
const ARP_OP_REQUEST: [u8; 2] = 1u16.to_be_bytes();
const ARP_OP_REPLY: [u8; 2] = 2u16.to_be_bytes();

/// An ARP reply frame, written over the request in one store.
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpFrame {
    eth: EthHdr,
    arp: ArpHdr,
}

/// Not inlined: kept out of `from_container`'s stack frame, which every call chain shares.
#[inline(never)]
pub fn respond(ctx: &TcContext, me: &LocalIface, ifindex: u32) -> Result<i32, DropReason> {
    let req = ctx
        .header::<ArpHdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    if req.htype != ARP_HTYPE_ETHER
        || req.ptype != ARP_PTYPE_IPV4
        || req.hlen != 6
        || req.plen != 4
        || req.oper != ARP_OP_REQUEST
    {
        return Err(DropReason::ArpUnsupported);
    }
    // 0.0.0.0 is an address probe (RFC 5227); anything else must be the container's own.
    let spa = u32::from_ne_bytes(req.spa);
    if req.sha != me.mac || (spa != 0 && spa != me.ip) {
        return Err(DropReason::SpoofedArp);
    }

    let tpa = u32::from_ne_bytes(req.tpa);
    let net = unsafe { NETWORKS.get(me.vni) }.ok_or(DropReason::UnknownNetwork)?;
    let answer = if tpa == net.gateway_ip {
        net.gateway_mac
    } else {
        let key = EndpointIpKey {
            vni: me.vni,
            ip: tpa,
        };
        match unsafe { ENDPOINTS_BY_IP.get(key) } {
            // A container asking for its own address is probing for conflicts: none here.
            Some(ep) if tpa != me.ip => ep.mac,
            _ => return Err(DropReason::ArpUnknownTarget),
        }
    };

    let reply = ArpFrame {
        eth: EthHdr {
            dst: req.sha,
            src: answer,
            ether_type: ETH_P_ARP.to_be_bytes(),
        },
        arp: ArpHdr {
            htype: ARP_HTYPE_ETHER,
            ptype: ARP_PTYPE_IPV4,
            hlen: 6,
            plen: 4,
            oper: ARP_OP_REPLY,
            sha: answer,
            spa: req.tpa,
            tha: req.sha,
            tpa: req.spa,
        },
    };
    ctx.store(0, &reply, 0).map_err(|_| DropReason::Malformed)?;
    // Back out of the same veth: the container receives the reply.
    let len = ctx.len();
    let verdict = redirected(unsafe { bpf_redirect(ifindex, 0) })?;
    count(Direction::ArpReply, len);
    Ok(verdict)
}
