//! Service load balancing on the from-container path (DC/OS Minuteman's idea, in the
//! datapath): a TCP/UDP packet to a service VIP:port gets a backend from the service's Maglev
//! table, the flow is pinned in `LB_CT` so it keeps its backend while the backend lives, and
//! the destination is rewritten before delivery or encapsulation. Replies are translated
//! back to the VIP on the client's host (`LB_REVNAT`). A service without backends answers
//! TCP with a reset and UDP with ICMP port unreachable instead of blackholing.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use overlay_common::{
    lb::{flow_hash, CtEntry, FlowKey, RevNatEntry, ServiceInfo, ServiceKey, MAGLEV_TABLE_SIZE},
    wire::{
        ETH_HLEN, ETH_P_IP, ICMP_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_CHECK_OFF,
        IPV4_DST_OFF, IPV4_HLEN, IPV4_SRC_OFF, IP_DF, TCP_ACK, TCP_FIN, TCP_HLEN, TCP_RST, TCP_SYN,
    },
    Direction, DropReason, LocalIface,
};

use crate::{
    counters::count,
    headers::{
        csum_add, csum_finish, ipv4_checksum, EthHdr, IcmpHdr, Ipv4Hdr, Packet as _, TcpHdr,
    },
    kernel::redirected,
    maps::{LB_BACKENDS, LB_CT, LB_MAGLEV, LB_REVNAT, LB_SERVICES},
};

const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;
const IP_CHECK_OFF: usize = ETH_HLEN + IPV4_CHECK_OFF;
const IP_SRC_OFF: usize = ETH_HLEN + IPV4_SRC_OFF;
const IP_DST_OFF: usize = ETH_HLEN + IPV4_DST_OFF;
/// What an ICMP error quotes of the packet it answers: its IP header and first 8 bytes.
const ICMP_QUOTE: usize = IPV4_HLEN + 8;

pub enum Verdict {
    /// Not addressed to a service: forward as usual.
    NotService,
    /// Rewritten to this backend address (network order key).
    Translated(u32),
    /// Answered in place (reset / unreachable); return this verdict.
    Answered(i32),
}

/// Source and destination ports of an unfragmented TCP/UDP packet with a plain IPv4 header.
/// Anything else (options, fragments, other protocols) is never balanced.
#[inline(always)]
fn ports(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<(u16, u16)> {
    if !ip.is_plain_v4() || ip.is_fragment() || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP)
    {
        return None;
    }
    let p = ctx.header::<[u8; 4]>(L4_OFF)?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// A packet a local container sent to the virtual gateway: balanced if it is for a service.
#[inline(always)]
pub fn to_service(
    ctx: &TcContext,
    me: &LocalIface,
    ifindex: u32,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
) -> Result<Verdict, DropReason> {
    let Some((sport, dport)) = ports(ctx, ip) else {
        return Ok(Verdict::NotService);
    };
    let vip = ip.dst_key();
    let key = ServiceKey {
        vni: me.vni,
        vip,
        port: dport,
        proto: ip.proto,
        _pad: 0,
    };
    let Some(svc) = (unsafe { LB_SERVICES.get(key) }) else {
        return Ok(Verdict::NotService);
    };
    if svc.backends == 0 {
        count(Direction::LbRejected, ctx.len());
        return reject(ctx, ifindex, eth, ip, sport, dport).map(Verdict::Answered);
    }
    let flow = FlowKey {
        vni: me.vni,
        src_ip: ip.src_key(),
        dst_ip: vip,
        src_port: sport,
        dst_port: dport,
        proto: ip.proto,
        _pad: [0; 3],
    };
    let ct = match unsafe { LB_CT.get(flow) } {
        Some(ct) if backend_alive(ct) => *ct,
        // New flow, or its backend left: pick (again) from the current table, and record how
        // replies are translated back: the reverse entry first, so a flow entry never exists
        // without one.
        _ => {
            let ct = select(svc, &flow)?;
            let reply = FlowKey {
                vni: me.vni,
                src_ip: ct.backend.ip,
                dst_ip: flow.src_ip,
                src_port: ct.backend.port,
                dst_port: sport,
                proto: ip.proto,
                _pad: [0; 3],
            };
            let rev = RevNatEntry {
                vip,
                port: dport,
                _pad: 0,
            };
            LB_REVNAT
                .insert(reply, rev, 0)
                .map_err(|_| DropReason::LbNatFailed)?;
            LB_CT
                .insert(flow, ct, 0)
                .map_err(|_| DropReason::LbNatFailed)?;
            count(Direction::LbNewFlow, ctx.len());
            ct
        }
    };
    rewrite(
        ctx,
        ip.proto,
        IP_DST_OFF,
        vip,
        ct.backend.ip,
        L4_OFF + 2,
        dport,
        ct.backend.port,
    )?;
    count(Direction::LbDnat, ctx.len());
    Ok(Verdict::Translated(ct.backend.ip))
}

/// A packet about to be delivered to a local container: a reply from a backend goes back to
/// the client with the VIP:port the client used as its source.
#[inline(always)]
pub fn to_client(ctx: &TcContext, vni: u32, ip: &Ipv4Hdr) -> Result<(), DropReason> {
    let Some((sport, dport)) = ports(ctx, ip) else {
        return Ok(());
    };
    let key = FlowKey {
        vni,
        src_ip: ip.src_key(),
        dst_ip: ip.dst_key(),
        src_port: sport,
        dst_port: dport,
        proto: ip.proto,
        _pad: [0; 3],
    };
    let Some(rev) = (unsafe { LB_REVNAT.get(key) }) else {
        return Ok(());
    };
    let rev = *rev;
    rewrite(
        ctx,
        ip.proto,
        IP_SRC_OFF,
        ip.src_key(),
        rev.vip,
        L4_OFF,
        sport,
        rev.port,
    )?;
    count(Direction::LbRevNat, ctx.len());
    Ok(())
}

/// The flow's backend is still in the table with the same address (ids are never reused
/// while referenced, the address check catches a recycled one).
#[inline(always)]
fn backend_alive(ct: &CtEntry) -> bool {
    match unsafe { LB_BACKENDS.get(ct.backend_id) } {
        Some(b) => b.ip == ct.backend.ip && b.port == ct.backend.port,
        None => false,
    }
}

#[inline(always)]
fn select(svc: &ServiceInfo, flow: &FlowKey) -> Result<CtEntry, DropReason> {
    let hash = flow_hash(
        flow.src_ip,
        flow.dst_ip,
        flow.src_port,
        flow.dst_port,
        flow.proto,
    );
    let index = svc
        .slot
        .wrapping_mul(MAGLEV_TABLE_SIZE)
        .wrapping_add(hash % MAGLEV_TABLE_SIZE);
    let id = LB_MAGLEV
        .get(index)
        .ok_or(DropReason::LbNoBackend)?
        .backend_id;
    let backend = unsafe { LB_BACKENDS.get(id) }.ok_or(DropReason::LbNoBackend)?;
    Ok(CtEntry {
        backend_id: id,
        backend: *backend,
    })
}

/// Replaces one address (at `ip_off`) and one port (at `port_off`) with incremental updates
/// of the IPv4 and L4 checksums (pseudo-header included). A UDP checksum of 0 stays 0.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    proto: u8,
    ip_off: usize,
    old_ip: u32,
    new_ip: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), DropReason> {
    let (csum_off, mangled) = if proto == IPPROTO_TCP {
        (L4_OFF + 16, 0)
    } else {
        (L4_OFF + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    let fail = |_| DropReason::LbNatFailed;
    ctx.l4_csum_replace(
        csum_off,
        old_ip as u64,
        new_ip as u64,
        BPF_F_PSEUDO_HDR as u64 | mangled | 4,
    )
    .map_err(fail)?;
    ctx.l3_csum_replace(IP_CHECK_OFF, old_ip as u64, new_ip as u64, 4)
        .map_err(fail)?;
    ctx.store(ip_off, &new_ip, 0).map_err(fail)?;
    if old_port != new_port {
        ctx.l4_csum_replace(
            csum_off,
            old_port.to_be() as u64,
            new_port.to_be() as u64,
            mangled | 2,
        )
        .map_err(fail)?;
        ctx.store(port_off, &new_port.to_be(), 0).map_err(fail)?;
    }
    Ok(())
}

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
fn reject(
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
