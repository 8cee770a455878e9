//! Answers for a service without backends: a TCP reset or an ICMP port unreachable from
//! the VIP, sent back into the container that asked, so clients fail fast instead of
//! waiting for a blackhole.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use overlay_common::{
    wire::{ETH_P_IP, IPPROTO_TCP, IPV4_HLEN, TCP_ACK, TCP_FIN, TCP_HLEN, TCP_RST, TCP_SYN},
    DropReason,
};

use super::L4_OFF;
use crate::{
    headers::{csum_add, csum_finish, EthHdr, Ipv4Hdr, Packet as _, TcpHdr},
    icmp::{self, replace_packet, reply_ip},
    kernel::redirected,
};

#[repr(C)]
#[derive(Clone, Copy)]
struct ResetFrame {
    eth: EthHdr,
    ip: Ipv4Hdr,
    tcp: TcpHdr,
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
            ip: reply_ip(ip.dst, ip, IPPROTO_TCP, (IPV4_HLEN + TCP_HLEN) as u16),
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
        replace_packet(ctx, &frame, DropReason::LbNatFailed)?;
    } else {
        return icmp::send_error(
            ctx,
            ifindex,
            reply_eth,
            ip.dst,
            ip,
            icmp::dest_unreachable(icmp::CODE_PORT_UNREACH, [0; 4]),
            DropReason::LbNatFailed,
        );
    }
    redirected(unsafe { bpf_redirect(ifindex, 0) })
}
