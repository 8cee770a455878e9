//! ICMP errors the datapath sends back into a container: "port unreachable" from a service
//! without backends, "fragmentation needed" from the gateway when a packet with DF set would
//! not fit the underlay once encapsulated (so path-MTU discovery works instead of a
//! blackhole when a container's MTU is above what the overlay offers), and its IPv6 twin
//! "packet too big".

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use overlay_common::{
    wire::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ICMPV6_PKT_TOOBIG, ICMP_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, IP_DF,
    },
    Config, DropReason, LocalIface,
};

use crate::{
    headers::{
        csum_add, csum_finish, ipv4_checksum, load, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, Packet as _,
        TcpHdr,
    },
    kernel::redirected,
};

/// What an ICMP error quotes of the packet it answers: its IP header and first 8 bytes.
const ICMP_QUOTE: usize = IPV4_HLEN + 8;
/// Destination unreachable (RFC 792) and the codes used here.
const ICMP_DEST_UNREACH: u8 = 3;
pub const CODE_PORT_UNREACH: u8 = 3;
const CODE_FRAG_NEEDED: u8 = 4;

/// An IPv4 header of a reply from `src` to the sender of `request`.
#[inline(always)]
pub fn reply_ip(src: [u8; 4], request: &Ipv4Hdr, proto: u8, tot_len: u16) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: tot_len.to_be_bytes(),
        id: [0; 2],
        frag_off: IP_DF.to_be_bytes(),
        ttl: 64,
        proto,
        check: [0; 2],
        src,
        dst: request.src,
    };
    ip.check = ipv4_checksum(&ip);
    ip
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ErrorFrame {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp: IcmpHdr,
    /// The offending packet's IPv4 header and first 8 bytes (RFC 792).
    quoted: [u8; ICMP_QUOTE],
}

/// A destination unreachable (RFC 792) with `code` and the rest of the header.
#[inline(always)]
pub fn dest_unreachable(code: u8, rest: [u8; 4]) -> IcmpHdr {
    IcmpHdr {
        kind: ICMP_DEST_UNREACH,
        code,
        check: [0; 2],
        rest,
    }
}

/// Turns the packet (IPv4 at `ETH_HLEN`) into the ICMP error `icmp` from `src`, framed by
/// `eth`, sent back out of `ifindex` (into the container).
#[inline(always)]
pub fn send_error(
    ctx: &TcContext,
    ifindex: u32,
    eth: EthHdr,
    src: [u8; 4],
    request: &Ipv4Hdr,
    icmp: IcmpHdr,
    fail: DropReason,
) -> Result<i32, DropReason> {
    let quoted = ctx
        .header::<[u8; ICMP_QUOTE]>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    let mut frame = ErrorFrame {
        eth,
        ip: reply_ip(
            src,
            request,
            IPPROTO_ICMP,
            (IPV4_HLEN + ICMP_HLEN + ICMP_QUOTE) as u16,
        ),
        icmp,
        quoted,
    };
    let mut sum = csum_add(0, unsafe {
        &*(&frame.icmp as *const IcmpHdr as *const [u8; ICMP_HLEN])
    });
    sum = csum_add(sum, &frame.quoted);
    frame.icmp.check = csum_finish(sum);
    replace_packet(ctx, &frame, fail)?;
    redirected(unsafe { bpf_redirect(ifindex, 0) })
}

/// Resizes the packet to `T` and writes `frame` over it (a GSO packet loses its offloads).
#[inline(always)]
pub fn replace_packet<T>(ctx: &TcContext, frame: &T, fail: DropReason) -> Result<(), DropReason> {
    let len = core::mem::size_of::<T>() as u32;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) } != 0 {
        return Err(fail);
    }
    ctx.store(0, frame, 0).map_err(|_| fail)
}

/// Whether the packet, or each segment of a GSO packet, is too big for the underlay once
/// encapsulated with `overhead` bytes (`encap::overhead`: the family the destination's VTEP
/// is reached in). `l3` is the length of its IP header, `proto` the protocol after it.
#[inline(always)]
pub fn too_big(
    ctx: &TcContext,
    cfg: &Config,
    overhead: u32,
    l3: usize,
    proto: u8,
) -> Result<bool, DropReason> {
    let skb = ctx.skb.skb;
    let (gso_segs, gso_size) = unsafe { ((*skb).gso_segs, (*skb).gso_size) };
    if gso_segs <= 1 || gso_size == 0 {
        return Ok(ctx.len() - ETH_HLEN as u32 + overhead > cfg.underlay_mtu);
    }
    // Segments are this packet's headers and `gso_size` bytes of payload each.
    let l4 = match proto {
        IPPROTO_TCP => {
            let tcp = ctx
                .header::<TcpHdr>(ETH_HLEN + l3)
                .ok_or(DropReason::Malformed)?;
            ((tcp.doff >> 4) as u32) * 4
        }
        IPPROTO_UDP => 8,
        _ => 0,
    };
    Ok(l3 as u32 + l4 + gso_size + overhead > cfg.underlay_mtu)
}

/// Answers a packet too big for the underlay: with DF set, "fragmentation needed" from the
/// network's gateway advertising the largest MTU that fits (the container's kernel lowers
/// its path MTU and resends); without DF it is dropped (`too_big`): the datapath does not
/// fragment.
#[inline(always)]
pub fn frag_needed(
    ctx: &TcContext,
    cfg: &Config,
    ifindex: u32,
    container_mac: [u8; 6],
    gateway_mac: [u8; 6],
    gateway_ip: u32,
    ip: &Ipv4Hdr,
) -> Result<i32, DropReason> {
    // Only a plain header is quoted whole in 28 bytes, as the sender needs to match it.
    if u16::from_be_bytes(ip.frag_off) & IP_DF == 0 || !ip.is_plain_v4() {
        return Err(DropReason::TooBig);
    }
    // The node's largest overhead: an MTU that fits whichever family the peer is reached in.
    let mtu = cfg.underlay_mtu.saturating_sub(cfg.overhead) as u16;
    let [hi, lo] = mtu.to_be_bytes();
    let eth = EthHdr {
        dst: container_mac,
        src: gateway_mac,
        ether_type: ETH_P_IP.to_be_bytes(),
    };
    send_error(
        ctx,
        ifindex,
        eth,
        gateway_ip.to_ne_bytes(),
        ip,
        dest_unreachable(CODE_FRAG_NEEDED, [0, 0, hi, lo]),
        DropReason::TooBig,
    )
}

/// What an ICMPv6 "packet too big" quotes of the packet it answers: its IPv6 header and the
/// first 64 bytes after it, enough for the sender to find the flow (RFC 4443 asks for as
/// much as fits in 1280 bytes; the receiver needs the headers).
const ICMP6_QUOTE: usize = IPV6_HLEN + 64;
/// What a "port unreachable" quotes: the IPv6 header and the UDP header, all a datagram to
/// a VIP is sure to have.
const ICMP6_UNREACH_QUOTE: usize = IPV6_HLEN + 8;
/// Destination unreachable (RFC 4443) and its port unreachable code.
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
/// Offset of the source address in the IPv6 header.
const IPV6_SRC_OFF: usize = 8;

#[repr(C)]
#[derive(Clone, Copy)]
struct Error6Frame<const Q: usize> {
    eth: EthHdr,
    ip: Ipv6Hdr,
    icmp: IcmpHdr,
    quoted: [u8; Q],
}

/// Answers an IPv6 packet too big for the underlay with an ICMPv6 "packet too big" from
/// the network's gateway advertising the largest MTU that fits (IPv6 routers never
/// fragment, so every such packet is answered).
/// Not inlined: a rare path, kept out of the forwarding path's stack frame.
#[inline(never)]
pub fn packet_too_big6(ctx: &TcContext, me: &LocalIface) -> Result<i32, DropReason> {
    let cfg = crate::maps::config().ok_or(DropReason::NotConfigured)?;
    let net = crate::forward6::network6(me)?;
    let mtu = cfg.underlay_mtu.saturating_sub(cfg.overhead);
    let eth = EthHdr {
        dst: me.mac,
        src: net.gateway_mac,
        ether_type: ETH_P_IPV6.to_be_bytes(),
    };
    let icmp = IcmpHdr {
        kind: ICMPV6_PKT_TOOBIG,
        code: 0,
        check: [0; 2],
        rest: mtu.to_be_bytes(),
    };
    send_error6::<ICMP6_QUOTE>(ctx, eth, net.gateway_ip6, icmp, DropReason::TooBig)
}

/// Answers an IPv6 datagram to a service without backends with an ICMPv6 port unreachable
/// from the VIP, framed by `eth`.
#[inline(always)]
pub fn port_unreachable6(ctx: &TcContext, eth: &EthHdr, vip: [u8; 16]) -> Result<i32, DropReason> {
    let icmp = IcmpHdr {
        kind: ICMPV6_DEST_UNREACH,
        code: ICMPV6_PORT_UNREACH,
        check: [0; 2],
        rest: [0; 4],
    };
    send_error6::<ICMP6_UNREACH_QUOTE>(ctx, *eth, vip, icmp, DropReason::LbNatFailed)
}

/// Turns the packet (IPv6 at `ETH_HLEN`, at least `Q` bytes of it) into the ICMPv6 error
/// `icmp` from `src` quoting it, framed by `eth`, and sends it back into the container.
#[inline(always)]
fn send_error6<const Q: usize>(
    ctx: &TcContext,
    eth: EthHdr,
    src: [u8; 16],
    icmp: IcmpHdr,
    fail: DropReason,
) -> Result<i32, DropReason> {
    let sender = ctx
        .header::<[u8; 16]>(ETH_HLEN + IPV6_SRC_OFF)
        .ok_or(DropReason::Malformed)?;
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut frame = Error6Frame::<Q> {
        eth,
        ip: Ipv6Hdr {
            vtc_flow: [0x60, 0, 0, 0],
            payload_len: ((ICMP_HLEN + Q) as u16).to_be_bytes(),
            next_header: IPPROTO_ICMPV6,
            hop_limit: 64,
            src,
            dst: sender,
        },
        icmp,
        quoted: [0; Q],
    };
    // Straight into the frame: a copy on the way would not fit the stack.
    load(ctx, ETH_HLEN, &mut frame.quoted, fail)?;
    // The pseudo-header, then the message (RFC 4443 2.3), in two parts.
    let mut sum = csum_add(0, &frame.ip.src);
    sum = csum_add(sum, &frame.ip.dst);
    sum += (ICMP_HLEN + Q) as u32 + IPPROTO_ICMPV6 as u32;
    sum = csum_add(sum, unsafe {
        &*(&frame.icmp as *const IcmpHdr as *const [u8; ICMP_HLEN])
    });
    sum = csum_add(sum, &frame.quoted);
    frame.icmp.check = csum_finish(sum);
    replace_packet(ctx, &frame, fail)?;
    redirected(unsafe { bpf_redirect(ifindex, 0) })
}
