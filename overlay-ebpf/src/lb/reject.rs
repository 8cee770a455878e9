//! Answers for a service without backends: a TCP reset or an ICMP port unreachable from
//! the VIP, sent back into the container that asked, so clients fail fast instead of
//! waiting for a blackhole.

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use overlay_common::{
    wire::{
        ETH_HLEN, ETH_P_IP, ICMP_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPV4_HLEN, IP_DF, TCP_ACK,
        TCP_FIN, TCP_HLEN, TCP_RST, TCP_SYN,
    },
    DropReason,
};

use super::L4_OFF;
use crate::{
    headers::{
        csum_add, csum_finish, ipv4_checksum, EthHdr, IcmpHdr, Ipv4Hdr, Packet as _, TcpHdr,
    },
    kernel::redirected,
};

/// What an ICMP error quotes of the packet it answers: its IP header and first 8 bytes.
const ICMP_QUOTE: usize = IPV4_HLEN + 8;

/// An IPv4 header of a reply from the VIP to the client.
#[inline(always)]
fn reply_ip(request: &Ipv4Hdr, proto: u8, tot_len: u16) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: tot_len.to_be_bytes(),
        id: [0; 2],
        frag_off: IP_DF.to_be_bytes(),
        ttl: 64,
        proto,
        check: [0; 2],
        src: request.dst,
        dst: request.src,
    };
    ip.check = ipv4_checksum(&ip);
    ip
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ResetFrame {
    eth: EthHdr,
    ip: Ipv4Hdr,
    tcp: TcpHdr,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UnreachableFrame {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp: IcmpHdr,
    /// The offending packet's IPv4 header and first 8 bytes (RFC 792).
    quoted: [u8; ICMP_QUOTE],
}

/// Turns the packet into a TCP reset or an ICMP port unreachable from the VIP and sends it
/// back into the container it came from.
#[inline(always)]
pub fn reject(
    ctx: &TcContext,
    ifindex: u32,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    sport: u16,
    dport: u16,
) -> Result<i32, DropReason> {
    let reply_eth = EthHdr {
        dst: eth.src,
        src: eth.dst,
        ether_type: ETH_P_IP.to_be_bytes(),
    };
    if ip.proto == IPPROTO_TCP {
        let tcp = ctx.header::<TcpHdr>(L4_OFF).ok_or(DropReason::Malformed)?;
        // Never answer a reset (RFC 793); drop it, counted like any other.
        if tcp.flags & TCP_RST != 0 {
            return Err(DropReason::LbNoBackend);
        }
        let doff = ((tcp.doff >> 4) as u32) * 4;
        let payload = (ip.tot_len() as u32).saturating_sub(IPV4_HLEN as u32 + doff);
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
        let mut frame = ResetFrame {
            eth: reply_eth,
            ip: reply_ip(ip, IPPROTO_TCP, (IPV4_HLEN + TCP_HLEN) as u16),
            tcp: TcpHdr {
                src_port: dport.to_be_bytes(),
                dst_port: sport.to_be_bytes(),
                seq,
                ack,
                doff: 5 << 4,
                flags,
                window: [0; 2],
                check: [0; 2],
                urg: [0; 2],
            },
        };
        let mut sum = csum_add(0, &frame.ip.src);
        sum = csum_add(sum, &frame.ip.dst);
        sum += IPPROTO_TCP as u32 + TCP_HLEN as u32;
        sum = csum_add(sum, unsafe {
            &*(&frame.tcp as *const TcpHdr as *const [u8; TCP_HLEN])
        });
        frame.tcp.check = csum_finish(sum);
        replace_packet(ctx, &frame)?;
    } else {
        let quoted = ctx
            .header::<[u8; ICMP_QUOTE]>(ETH_HLEN)
            .ok_or(DropReason::Malformed)?;
        let mut frame = UnreachableFrame {
            eth: reply_eth,
            ip: reply_ip(
                ip,
                IPPROTO_ICMP,
                (IPV4_HLEN + ICMP_HLEN + ICMP_QUOTE) as u16,
            ),
            // Destination unreachable, port unreachable.
            icmp: IcmpHdr {
                kind: 3,
                code: 3,
                check: [0; 2],
                rest: [0; 4],
            },
            quoted,
        };
        let mut sum = csum_add(0, unsafe {
            &*(&frame.icmp as *const IcmpHdr as *const [u8; ICMP_HLEN])
        });
        sum = csum_add(sum, &frame.quoted);
        frame.icmp.check = csum_finish(sum);
        replace_packet(ctx, &frame)?;
    }
    redirected(unsafe { bpf_redirect(ifindex, 0) })
}

/// Resizes the packet to `T` and writes `frame` over it.
#[inline(always)]
fn replace_packet<T>(ctx: &TcContext, frame: &T) -> Result<(), DropReason> {
    let len = core::mem::size_of::<T>() as u32;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) } != 0 {
        return Err(DropReason::LbNatFailed);
    }
    ctx.store(0, frame, 0).map_err(|_| DropReason::LbNatFailed)
}
