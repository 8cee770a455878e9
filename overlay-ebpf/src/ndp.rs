//! Neighbour discovery (RFC 4861), IPv6's ARP, answered in the datapath from the network's
//! tables: a container's neighbour solicitation for the gateway or another endpoint gets an
//! advertisement built here and sent back out of the same veth, so no solicitation or
//! advertisement ever crosses the underlay. Duplicate address detection (a solicitation from
//! the unspecified address) gets no answer: no other endpoint can hold the address. Router
//! solicitations are not answered either: the default route comes with the address (the
//! daemon or the runtime configures it from the CNI/CNM result).

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use overlay_common::{
    wire::{
        ETH_HLEN, ETH_P_IPV6, ICMPV6_NEIGH_ADVERT, ICMPV6_NEIGH_SOLICIT, IPPROTO_ICMPV6, IPV6_HLEN,
        NDP_HLEN,
    },
    Direction, DropReason, EndpointIp6Key, LocalIface,
};

use crate::{
    counters::count,
    headers::{csum_add, csum_finish, load, EthHdr, Ipv6Hdr, NdpHdr, NdpLinkOpt, Packet as _},
    icmp::replace_packet,
    kernel::redirected,
    maps::ENDPOINTS_BY_IP6,
};

/// Option types: source and target link-layer address.
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// Advertisement flags (first byte): router, solicited, override.
const NA_ROUTER: u8 = 0x80;
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;
/// Options checked for a link-layer address that is not the container's (a forged one may
/// hide behind another option).
const MAX_OPTS: usize = 3;
/// Neighbour discovery is only valid from the same link (RFC 4861 7.1.1).
const NDP_HOP_LIMIT: u8 = 255;

/// An advertisement, written over the solicitation in one store.
#[repr(C)]
#[derive(Clone, Copy)]
struct NaFrame {
    eth: EthHdr,
    ip: Ipv6Hdr,
    na: NdpHdr,
    opt: NdpLinkOpt,
}
const NA_LEN: usize = NDP_HLEN + 8;

/// The EUI-64 link-local address (fe80::/64) the container's kernel derives from its MAC.
#[inline(always)]
pub fn link_local(mac: &[u8; 6]) -> [u8; 16] {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

/// Handles the container's neighbour discovery message of type `kind` (133..=137). Not
/// inlined: a rare path, kept out of the forwarding path's stack frame.
#[inline(never)]
pub fn handle(ctx: &TcContext, me: &LocalIface, kind: u8) -> Result<i32, DropReason> {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ip = ctx
        .header::<Ipv6Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    if ip.version() != 6 {
        return Err(DropReason::Malformed);
    }
    let net = crate::forward6::network6(me)?;
    if kind != ICMPV6_NEIGH_SOLICIT && kind != ICMPV6_NEIGH_ADVERT {
        return Err(DropReason::NdpUnsupported);
    }
    if ip.hop_limit != NDP_HOP_LIMIT {
        return Err(DropReason::NdpUnsupported);
    }
    let msg = ctx
        .header::<NdpHdr>(ETH_HLEN + IPV6_HLEN)
        .ok_or(DropReason::Malformed)?;
    let own_ll = link_local(&me.mac);
    let unspecified = ip.src == [0; 16];
    // Any link-local source: a kernel with stable-privacy or random addresses does not
    // derive it from the MAC, and the answer only ever goes back to this container.
    let link_local_src = ip.src[0] == 0xfe && ip.src[1] & 0xc0 == 0x80;
    if !unspecified && ip.src != me.ip6 && !link_local_src {
        return Err(DropReason::SpoofedNdp);
    }
    check_options(ctx, me, &ip)?;
    if kind == ICMPV6_NEIGH_ADVERT {
        // Nobody on the overlay asks a container: an advertisement has no one to reach. One
        // in another's name is a forgery, counted as such.
        if msg.target != me.ip6 && msg.target != own_ll {
            return Err(DropReason::SpoofedNdp);
        }
        return Err(DropReason::NdpUnsupported);
    }
    if unspecified {
        // Duplicate address detection: the address is the container's alone.
        return Err(DropReason::NdpUnknownTarget);
    }

    let (answer, flags) = if msg.target == net.gateway_ip6 {
        (net.gateway_mac, NA_ROUTER | NA_SOLICITED | NA_OVERRIDE)
    } else {
        let key = EndpointIp6Key {
            vni: me.vni,
            ip6: msg.target,
        };
        match unsafe { ENDPOINTS_BY_IP6.get(key) } {
            Some(ep) if msg.target != me.ip6 => (ep.mac, NA_SOLICITED | NA_OVERRIDE),
            _ => return Err(DropReason::NdpUnknownTarget),
        }
    };

    let mut frame = NaFrame {
        eth: EthHdr {
            dst: me.mac,
            src: answer,
            ether_type: ETH_P_IPV6.to_be_bytes(),
        },
        ip: Ipv6Hdr {
            vtc_flow: [0x60, 0, 0, 0],
            payload_len: (NA_LEN as u16).to_be_bytes(),
            next_header: IPPROTO_ICMPV6,
            hop_limit: NDP_HOP_LIMIT,
            src: msg.target,
            dst: ip.src,
        },
        na: NdpHdr {
            kind: ICMPV6_NEIGH_ADVERT,
            code: 0,
            check: [0; 2],
            flags: [flags, 0, 0, 0],
            target: msg.target,
        },
        opt: NdpLinkOpt {
            kind: OPT_TARGET_LL,
            len: 1,
            mac: answer,
        },
    };
    let body = unsafe { &*(&frame.na as *const NdpHdr as *const [u8; NA_LEN]) };
    frame.na.check = icmp6_checksum(&frame.ip, body);
    replace_packet(ctx, &frame, DropReason::Malformed)?;
    let len = ctx.len();
    let verdict = redirected(unsafe { bpf_redirect(ifindex, 0) })?;
    count(Direction::NdpReply, len);
    Ok(verdict)
}

/// Every link-layer address option in the message must be the container's MAC.
#[inline(always)]
fn check_options(ctx: &TcContext, me: &LocalIface, ip: &Ipv6Hdr) -> Result<(), DropReason> {
    let end = IPV6_HLEN + ip.payload_len() as usize;
    let mut off = IPV6_HLEN + NDP_HLEN;
    let mut i = 0;
    while i < MAX_OPTS {
        if off + 8 > end {
            return Ok(());
        }
        // Bytes: type, length (in 8-byte units), then the address.
        let mut opt = [0u8; 8];
        load(ctx, ETH_HLEN + off, &mut opt, DropReason::Malformed)?;
        let (kind, len) = (opt[0], opt[1]);
        if len == 0 {
            // RFC 4861 4.6: a zero length is invalid and must be discarded.
            return Err(DropReason::Malformed);
        }
        if (kind == OPT_SOURCE_LL || kind == OPT_TARGET_LL) && opt[2..8] != me.mac {
            return Err(DropReason::SpoofedNdp);
        }
        off += len as usize * 8;
        i += 1;
    }
    Ok(())
}

/// The ICMPv6 checksum of `body` (its checksum field zero) sent with the header `ip`: the
/// pseudo-header (addresses, length, next header) and the message (RFC 4443 2.3).
#[inline(always)]
pub fn icmp6_checksum<const N: usize>(ip: &Ipv6Hdr, body: &[u8; N]) -> [u8; 2] {
    let mut sum = csum_add(0, &ip.src);
    sum = csum_add(sum, &ip.dst);
    sum += N as u32 + IPPROTO_ICMPV6 as u32;
    sum = csum_add(sum, body);
    csum_finish(sum)
}
