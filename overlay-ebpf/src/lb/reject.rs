//! Answers for a service without backends: a TCP reset or an ICMP (ICMPv6) port unreachable
//! from the VIP, sent back into the container that asked, so clients fail fast instead of
//! waiting for a blackhole.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use overlay_common::{
    wire::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPV4_HLEN, TCP_ACK, TCP_FIN, TCP_HLEN,
        TCP_RST, TCP_SYN,
    },
    DropReason,
};

use super::{L4_OFF, L4_OFF6};
use crate::{
    headers::{csum_add, csum_finish, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet as _, TcpHdr},
    icmp::{self, replace_packet, reply_ip},
    kernel::{pack, redirected, unpack},
};

#[repr(C)]
#[derive(Clone, Copy)]
struct ResetFrame {
    eth: EthHdr,
    ip: Ipv4Hdr,
    tcp: TcpHdr,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Reset6Frame {
    eth: EthHdr,
    ip: Ipv6Hdr,
    tcp: TcpHdr,
}

/// Turns the packet into a TCP reset or an ICMP port unreachable from the VIP and sends it
/// back into the container it came from.
#[inline(always)]
pub fn reject(ctx: &TcContext) -> Result<i32, DropReason> {
    unpack(reject4(ctx))
}

/// Not inlined: a rare path, kept out of the forwarding path's stack frame (its result as
/// one integer, `kernel::pack`).
#[inline(never)]
fn reject4(ctx: &TcContext) -> i64 {
    pack(reject4_inner(ctx))
}

#[inline(always)]
fn reject4_inner(ctx: &TcContext) -> Result<i32, DropReason> {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let eth = ctx.header::<EthHdr>(0).ok_or(DropReason::Malformed)?;
    let ip = ctx
        .header::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    let reply_eth = reply_eth(&eth, ETH_P_IP);
    if ip.proto != IPPROTO_TCP {
        return icmp::send_error(
            ctx,
            ifindex,
            reply_eth,
            ip.dst,
            &ip,
            icmp::dest_unreachable(icmp::CODE_PORT_UNREACH, [0; 4]),
            DropReason::LbNatFailed,
        );
    }
    let tcp = ctx.header::<TcpHdr>(L4_OFF).ok_or(DropReason::Malformed)?;
    let payload = (ip.tot_len() as u32).saturating_sub(IPV4_HLEN as u32);
    let mut frame = ResetFrame {
        eth: reply_eth,
        ip: reply_ip(ip.dst, &ip, IPPROTO_TCP, (IPV4_HLEN + TCP_HLEN) as u16),
        tcp: reset_for(&tcp, payload)?,
    };
    let sum = csum_add(csum_add(0, &frame.ip.src), &frame.ip.dst);
    frame.tcp.check = tcp_checksum(sum, &frame.tcp);
    replace_packet(ctx, &frame, DropReason::LbNatFailed)?;
    redirected(unsafe { bpf_redirect(ifindex, 0) })
}

/// The same for an IPv6 packet: a reset, or an ICMPv6 port unreachable. Each is a
/// subprogram of its own: together they would not fit one stack frame next to the caller's.
#[inline(always)]
pub fn reject6(ctx: &TcContext) -> Result<i32, DropReason> {
    let next_header = ctx
        .header::<u8>(ETH_HLEN + 6)
        .ok_or(DropReason::Malformed)?;
    unpack(if next_header == IPPROTO_TCP {
        reset6(ctx)
    } else {
        unreachable6(ctx)
    })
}

#[inline(never)]
fn unreachable6(ctx: &TcContext) -> i64 {
    let answer = |ctx: &TcContext| {
        let eth = ctx.header::<EthHdr>(0).ok_or(DropReason::Malformed)?;
        let vip = ctx
            .header::<[u8; 16]>(ETH_HLEN + 24)
            .ok_or(DropReason::Malformed)?;
        icmp::port_unreachable6(ctx, &reply_eth(&eth, ETH_P_IPV6), vip)
    };
    pack(answer(ctx))
}

#[inline(never)]
fn reset6(ctx: &TcContext) -> i64 {
    pack(reset6_inner(ctx))
}

#[inline(always)]
fn reset6_inner(ctx: &TcContext) -> Result<i32, DropReason> {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let eth = ctx.header::<EthHdr>(0).ok_or(DropReason::Malformed)?;
    let ip = ctx
        .header::<Ipv6Hdr>(ETH_HLEN)
        .ok_or(DropReason::Malformed)?;
    let tcp = ctx.header::<TcpHdr>(L4_OFF6).ok_or(DropReason::Malformed)?;
    let mut frame = Reset6Frame {
        eth: reply_eth(&eth, ETH_P_IPV6),
        ip: Ipv6Hdr {
            vtc_flow: [0x60, 0, 0, 0],
            payload_len: (TCP_HLEN as u16).to_be_bytes(),
            next_header: IPPROTO_TCP,
            hop_limit: 64,
            src: ip.dst,
            dst: ip.src,
        },
        tcp: reset_for(&tcp, ip.payload_len() as u32)?,
    };
    let sum = csum_add(csum_add(0, &frame.ip.src), &frame.ip.dst);
    frame.tcp.check = tcp_checksum(sum, &frame.tcp);
    replace_packet(ctx, &frame, DropReason::LbNatFailed)?;
    redirected(unsafe { bpf_redirect(ifindex, 0) })
}

#[inline(always)]
fn reply_eth(eth: &EthHdr, ether_type: u16) -> EthHdr {
    EthHdr {
        dst: eth.src,
        src: eth.dst,
        ether_type: ether_type.to_be_bytes(),
    }
}

/// The reset answering `tcp` (with `l4_len` bytes of TCP header and payload): it acknowledges
/// what `tcp` carried unless `tcp` acknowledged something (RFC 793). A reset is never
/// answered; it is dropped, counted like any other.
#[inline(always)]
fn reset_for(tcp: &TcpHdr, l4_len: u32) -> Result<TcpHdr, DropReason> {
    if tcp.flags & TCP_RST != 0 {
        return Err(DropReason::LbNoBackend);
    }
    let doff = ((tcp.doff >> 4) as u32) * 4;
    let payload = l4_len.saturating_sub(doff);
    let (seq, ack, flags) = if tcp.flags & TCP_ACK != 0 {
        (tcp.ack, [0; 4], TCP_RST)
    } else {
        let mut ack = u32::from_be_bytes(tcp.seq).wrapping_add(payload);
        if tcp.flags & TCP_SYN != 0 {
            ack = ack.wrapping_add(1);
        }
        if tcp.flags & TCP_FIN != 0 {
            ack = ack.wrapping_add(1);
        }
        ([0; 4], ack.to_be_bytes(), TCP_RST | TCP_ACK)
    };
    Ok(TcpHdr {
        src_port: tcp.dst_port,
        dst_port: tcp.src_port,
        seq,
        ack,
        doff: 5 << 4,
        flags,
        window: [0; 2],
        check: [0; 2],
        urg: [0; 2],
    })
}

/// The checksum of a header-only TCP segment, `sum` holding the pseudo-header's addresses.
#[inline(always)]
fn tcp_checksum(sum: u32, tcp: &TcpHdr) -> [u8; 2] {
    let sum = sum + IPPROTO_TCP as u32 + TCP_HLEN as u32;
    csum_finish(csum_add(sum, unsafe {
        &*(tcp as *const TcpHdr as *const [u8; TCP_HLEN])
    }))
}
