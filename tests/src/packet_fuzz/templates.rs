//! Valid frames to start from: what containers send (ARP, IPv4 TCP/UDP/ICMP to local and
//! remote endpoints, the gateway, services; other ethertypes) and what arrives on the
//! underlay (VXLAN from known and unknown VTEPs with inner frames for known and unknown
//! endpoints, owned and spoofed sources; other underlay traffic), and packets of service
//! conversations (clients, backends' replies, direct flows). The fixed set cut at every
//! length is in `fixed`.

use std::net::Ipv4Addr;

use overlay_api::MacAddr;

use super::{
    frames::{
        arp, eth, icmp_echo, ipv4, tcp, udp, vxlan, Mac, BROADCAST, ETH_P_ARP, ETH_P_IP,
        ETH_P_IPV6, ETH_P_QINQ, ETH_P_VLAN, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    },
    rng::Rng,
    world::{
        Endpoint, Identity, Loc, World, LOCAL_VTEP, LOOPBACK, UNKNOWN_VTEP, VTEP_B, VTEP_C,
        VXLAN_PORT,
    },
};

pub const TCP_FLAGS: [u8; 8] = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01];

/// An address that is in no table.
pub const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 200);

pub(super) fn gateway(w: &World, vni: u32) -> (Ipv4Addr, Mac) {
    match w.network(vni) {
        Some(n) => (n.gw_ip, n.gw_mac),
        None => (Ipv4Addr::new(10, 4, 0, 1), MacAddr::gateway(vni).0),
    }
}

/// A payload length: mostly small, some medium, some around the size where a frame stops
/// fitting the underlay once encapsulated, some larger.
pub fn payload_len(rng: &mut Rng, headers: usize) -> usize {
    match rng.below(100) {
        0..=49 => rng.below(64),
        50..=74 => rng.range(64, 600),
        75..=89 => rng.range(1440, 1490).saturating_sub(headers),
        _ => rng.range(1490, 2900).saturating_sub(headers),
    }
}

/// An IPv4 packet with a TCP, UDP, ICMP or other payload.
pub fn l4_packet(rng: &mut Rng, src: Ipv4Addr, dst: Ipv4Addr, dport: Option<u16>) -> Vec<u8> {
    let sport = rng.range(1024, 65535) as u16;
    let dport = dport.unwrap_or_else(|| one_of!(rng, 80, 53, 5353, 8080, 443, 9000, rng.u16()));
    match rng.below(100) {
        0..=39 => {
            let data = {
                let n = payload_len(rng, 54);
                rng.bytes(n)
            };
            let flags = *rng.pick(&TCP_FLAGS);
            ipv4(
                src,
                dst,
                PROTO_TCP,
                &tcp(src, dst, sport, dport, flags, &data),
            )
        }
        40..=74 => {
            let data = {
                let n = payload_len(rng, 42);
                rng.bytes(n)
            };
            let csum = rng.chance(50);
            ipv4(
                src,
                dst,
                PROTO_UDP,
                &udp(src, dst, sport, dport, &data, csum),
            )
        }
        75..=89 => {
            let data = {
                let n = payload_len(rng, 42);
                rng.bytes(n)
            };
            ipv4(src, dst, PROTO_ICMP, &icmp_echo(8, rng.u16(), 1, &data))
        }
        _ => {
            let proto = *rng.pick(&[0, 2, 47, 50, 132, 255]);
            let data = {
                let n = payload_len(rng, 34);
                rng.bytes(n)
            };
            ipv4(src, dst, proto, &data)
        }
    }
}

pub(super) fn other_ethertype_frame(rng: &mut Rng, dst: Mac, src: Mac, ip: Vec<u8>) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
            v6.extend({
                let n = 32 + rng.below(64);
                rng.bytes(n)
            });
            eth(dst, src, ETH_P_IPV6, &v6)
        }
        1 | 2 => {
            // A VLAN (or QinQ) tag in front of the IPv4 packet.
            let tpid = if rng.chance(70) {
                ETH_P_VLAN
            } else {
                ETH_P_QINQ
            };
            let mut tagged = vec![0, rng.u8()];
            tagged.extend_from_slice(&ETH_P_IP.to_be_bytes());
            tagged.extend(ip);
            eth(dst, src, tpid, &tagged)
        }
        _ => {
            let et = one_of!(rng, 0x88cc, 0x0000, 0x05dc, 0x8847, 0x88e5, rng.u16());
            eth(dst, src, et, &{
                let n = 28 + rng.below(100);
                rng.bytes(n)
            })
        }
    }
}

/// A frame a container could send: (frame, ingress ifindex, template name).
pub fn container(w: &World, rng: &mut Rng) -> (Vec<u8>, u32, &'static str) {
    let me: Identity = *rng.pick(&w.identities);
    let ifindex = if rng.chance(3) { LOOPBACK } else { me.ifindex };
    let (gw_ip, gw_mac) = gateway(w, me.vni);
    let same_vni: Vec<&Endpoint> = w.endpoints.iter().filter(|e| e.vni == me.vni).collect();
    let pick_ep = |rng: &mut Rng| -> Endpoint {
        if rng.chance(70) && !same_vni.is_empty() {
            *same_vni[rng.below(same_vni.len())]
        } else {
            *rng.pick(&w.endpoints)
        }
    };
    let (frame, name) = match rng.below(100) {
        0..=14 => {
            let tpa = match rng.below(6) {
                0 => gw_ip,
                1 => me.ip,
                2 => STRANGER,
                _ => pick_ep(rng).ip,
            };
            let spa = match rng.below(20) {
                0 | 1 => Ipv4Addr::UNSPECIFIED,
                2 => pick_ep(rng).ip,
                _ => me.ip,
            };
            let oper = *rng.pick(&[1, 1, 1, 1, 1, 1, 2, 3, 0]);
            let mut f = eth(
                BROADCAST,
                me.mac,
                ETH_P_ARP,
                &arp(oper, me.mac, spa, [0; 6], tpa),
            );
            if rng.chance(30) {
                f.resize(60, 0); // Ethernet minimum, padded
            }
            (f, "arp")
        }
        15..=79 => {
            let ep = pick_ep(rng);
            let via_gateway = rng.chance(45);
            let dst_mac = if via_gateway { gw_mac } else { ep.mac };
            let dst_ip = if via_gateway || rng.chance(90) {
                ep.ip
            } else {
                *rng.pick(&[gw_ip, STRANGER, Ipv4Addr::new(8, 8, 8, 8)])
            };
            let name = match (via_gateway, ep.loc) {
                (true, Loc::Local(_)) => "ipv4-gateway-local",
                (true, Loc::Remote(_)) => "ipv4-gateway-remote",
                (false, Loc::Local(_)) => "ipv4-local",
                (false, Loc::Remote(_)) => "ipv4-remote",
            };
            (
                eth(
                    dst_mac,
                    me.mac,
                    ETH_P_IP,
                    &l4_packet(rng, me.ip, dst_ip, None),
                ),
                name,
            )
        }
        80..=89 if rng.chance(50) => (service_flow_container(w, rng), "service-flow"),
        80..=89 => {
            let svc = rng.pick(&w.services).clone();
            let port = if rng.chance(80) { svc.port } else { rng.u16() };
            let sport = rng.range(1024, 65535) as u16;
            let data = {
                let n = payload_len(rng, 54);
                rng.bytes(n)
            };
            let l4 = if svc.proto == PROTO_TCP {
                let flags = *rng.pick(&TCP_FLAGS);
                tcp(me.ip, svc.vip, sport, port, flags, &data)
            } else {
                udp(me.ip, svc.vip, sport, port, &data, rng.chance(50))
            };
            (
                eth(
                    gw_mac,
                    me.mac,
                    ETH_P_IP,
                    &ipv4(me.ip, svc.vip, svc.proto, &l4),
                ),
                "service",
            )
        }
        90..=94 => {
            let ep = pick_ep(rng);
            let ip = l4_packet(rng, me.ip, ep.ip, None);
            (
                other_ethertype_frame(rng, ep.mac, me.mac, ip),
                "other-ethertype",
            )
        }
        _ => {
            let dst = *rng.pick(&[
                BROADCAST,
                [0x01, 0, 0x5e, 0, 0, 1],
                [0x33, 0x33, 0, 0, 0, 1],
            ]);
            let ip = l4_packet(rng, me.ip, Ipv4Addr::new(10, 1, 255, 255), None);
            (eth(dst, me.mac, ETH_P_IP, &ip), "ipv4-broadcast")
        }
    };
    (frame, ifindex, name)
}

/// Client ports of service flows: few, so that replies, direct flows and new flows meet the
/// flows the balancer recorded (and its tuple conflicts).
fn flow_port(rng: &mut Rng) -> u16 {
    40000 + rng.below(8) as u16
}

/// One packet of a service conversation between local containers: a client to a VIP, a
/// local backend's reply to its client (or, hairpinned, to the VIP), or a client straight to
/// a backend's address (a direct flow).
fn service_flow_container(w: &World, rng: &mut Rng) -> Vec<u8> {
    let svc = rng.pick(&w.services).clone();
    let ids: Vec<Identity> = w
        .identities
        .iter()
        .filter(|i| i.vni == svc.vni)
        .copied()
        .collect();
    let client = *rng.pick(&ids);
    let (_, gw_mac) = gateway(w, svc.vni);
    let flags = *rng.pick(&TCP_FLAGS);
    let data = {
        let n = rng.below(32);
        rng.bytes(n)
    };
    let packet = |src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16| {
        let l4 = if svc.proto == PROTO_TCP {
            tcp(src, dst, sport, dport, flags, &data)
        } else {
            udp(src, dst, sport, dport, &data, true)
        };
        ipv4(src, dst, svc.proto, &l4)
    };
    let local_backend = svc
        .backends
        .iter()
        .find_map(|(a, p)| w.identities.iter().find(|i| i.ip == *a).map(|i| (*i, *p)));
    match (rng.below(4), local_backend) {
        (1, Some((b, port))) => {
            // The backend's reply: to the client, or to the VIP when the client was itself.
            let (dst_mac, dst) = if rng.chance(70) {
                (client.mac, client.ip)
            } else {
                (gw_mac, svc.vip)
            };
            eth(
                dst_mac,
                b.mac,
                ETH_P_IP,
                &packet(b.ip, dst, port, flow_port(rng)),
            )
        }
        (2, _) if !svc.backends.is_empty() => {
            let (a, port) = *rng.pick(&svc.backends);
            let mac =
                w.by_ip(svc.vni, a)
                    .map_or(gw_mac, |e| if rng.chance(50) { e.mac } else { gw_mac });
            eth(
                mac,
                client.mac,
                ETH_P_IP,
                &packet(client.ip, a, flow_port(rng), port),
            )
        }
        _ => eth(
            gw_mac,
            client.mac,
            ETH_P_IP,
            &packet(client.ip, svc.vip, flow_port(rng), svc.port),
        ),
    }
}

/// A remote backend's reply to a local client of a service, through VXLAN.
fn service_flow_underlay(w: &World, rng: &mut Rng) -> Vec<u8> {
    let svc = rng.pick(&w.services).clone();
    let remote: Vec<(Endpoint, u16)> = svc
        .backends
        .iter()
        .filter_map(|(a, p)| {
            w.by_ip(svc.vni, *a)
                .filter(|e| !e.is_local())
                .map(|e| (*e, *p))
        })
        .collect();
    let Some(&(b, port)) = (!remote.is_empty()).then(|| rng.pick(&remote)) else {
        return underlay(w, rng).0;
    };
    let Loc::Remote(vtep) = b.loc else {
        unreachable!()
    };
    let ids: Vec<Identity> = w
        .identities
        .iter()
        .filter(|i| i.vni == svc.vni)
        .copied()
        .collect();
    let client = *rng.pick(&ids);
    let data = {
        let n = rng.below(32);
        rng.bytes(n)
    };
    let l4 = if svc.proto == PROTO_TCP {
        tcp(
            b.ip,
            client.ip,
            port,
            flow_port(rng),
            *rng.pick(&TCP_FLAGS),
            &data,
        )
    } else {
        udp(b.ip, client.ip, port, flow_port(rng), &data, rng.chance(50))
    };
    let inner = eth(
        client.mac,
        b.mac,
        ETH_P_IP,
        &ipv4(b.ip, client.ip, svc.proto, &l4),
    );
    underlay_udp(
        vtep,
        LOCAL_VTEP,
        50000,
        VXLAN_PORT,
        &vxlan(0x08, svc.vni, &inner),
    )
}

/// An Ethernet/IPv4/UDP frame on the underlay.
pub fn underlay_udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let dgram = udp(src, dst, sport, dport, payload, false);
    eth(
        [0x02, 0, 0, 0, 0, 1],
        [0x02, 0, 0, 0, 0, 2],
        ETH_P_IP,
        &ipv4(src, dst, PROTO_UDP, &dgram),
    )
}

/// The inner frame of a VXLAN packet: IPv4 mostly, sometimes ARP, IPv6 or garbage.
fn inner_frame(rng: &mut Rng, src_mac: Mac, dst_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    match rng.below(100) {
        0..=84 => {
            let mut f = eth(dst_mac, src_mac, ETH_P_IP, &l4_packet(rng, src, dst, None));
            if rng.chance(10) {
                // Trailing bytes after the inner packet (Ethernet padding, or a GRO aggregate).
                let extra = rng.range(1, 64);
                f.extend(rng.bytes(extra));
            }
            f
        }
        85..=89 => eth(
            dst_mac,
            src_mac,
            ETH_P_ARP,
            &arp(1, src_mac, src, [0; 6], dst),
        ),
        90..=94 => {
            let ip = l4_packet(rng, src, dst, None);
            other_ethertype_frame(rng, dst_mac, src_mac, ip)
        }
        _ => {
            let n = rng.below(80);
            rng.bytes(n)
        }
    }
}

/// A frame arriving on the underlay: (frame, template name).
pub fn underlay(w: &World, rng: &mut Rng) -> (Vec<u8>, &'static str) {
    if rng.chance(25) {
        return foreign_underlay(rng);
    }
    if rng.chance(8) {
        return (service_flow_underlay(w, rng), "service-flow");
    }
    let sport = rng.range(49152, 65535) as u16;
    let remotes: Vec<&Endpoint> = w
        .endpoints
        .iter()
        .filter(|e| matches!(e.loc, Loc::Remote(v) if w.vtep_known(v)))
        .collect();
    let (vtep, vni, src, dst, name) = if rng.chance(45) {
        let src = *remotes[rng.below(remotes.len())];
        let locals: Vec<&Endpoint> = w
            .endpoints
            .iter()
            .filter(|e| e.vni == src.vni && e.is_local())
            .collect();
        let Loc::Remote(vtep) = src.loc else {
            unreachable!()
        };
        (
            vtep,
            src.vni,
            src,
            *locals[rng.below(locals.len())],
            "vxlan-valid",
        )
    } else {
        let vtep = one_of!(
            rng,
            VTEP_B,
            VTEP_C,
            UNKNOWN_VTEP,
            LOCAL_VTEP,
            Ipv4Addr::from(rng.u32())
        );
        let vni = one_of!(rng, 100, 200, 0xff_ffff, 300, 0, rng.u32() & 0xff_ffff);
        let mut src = *rng.pick(&w.endpoints);
        if rng.chance(10) {
            src.mac = [0x0a, 0x58, rng.u8(), rng.u8(), rng.u8(), rng.u8()];
        }
        let mut dst = *rng.pick(&w.endpoints);
        if rng.chance(10) {
            dst.mac = *rng.pick(&[BROADCAST, gateway(w, vni).1, [0x0a, 0x58, 1, 2, 3, 4]]);
        }
        if rng.chance(20) {
            src.ip = one_of!(rng, STRANGER, dst.ip, Ipv4Addr::from(rng.u32()));
        }
        (vtep, vni, src, dst, "vxlan-mixed")
    };
    let inner = inner_frame(rng, src.mac, dst.mac, src.ip, dst.ip);
    let flags = if rng.chance(90) { 0x08 } else { rng.u8() };
    (
        underlay_udp(
            vtep,
            LOCAL_VTEP,
            sport,
            VXLAN_PORT,
            &vxlan(flags, vni, &inner),
        ),
        name,
    )
}

/// Underlay traffic that is not VXLAN for this node (or almost).
fn foreign_underlay(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let peer = *rng.pick(&[VTEP_B, VTEP_C, UNKNOWN_VTEP]);
    let inner = eth(
        [0x0a, 0x58, 10, 1, 0, 11],
        [0x0a, 0x58, 10, 1, 0, 21],
        ETH_P_IP,
        &l4_packet(
            rng,
            Ipv4Addr::new(10, 1, 0, 21),
            Ipv4Addr::new(10, 1, 0, 11),
            None,
        ),
    );
    let vx = vxlan(0x08, 100, &inner);
    match rng.below(7) {
        0 => {
            let port = one_of!(rng, 53, 4790, 8472, 6081, rng.u16());
            (
                underlay_udp(peer, LOCAL_VTEP, 40000, port, &vx),
                "underlay-udp-other-port",
            )
        }
        1 => {
            let other = *rng.pick(&[VTEP_B, Ipv4Addr::new(198, 18, 0, 77)]);
            (
                underlay_udp(peer, other, 50000, VXLAN_PORT, &vx),
                "vxlan-other-vtep",
            )
        }
        2 => {
            let l4 = l4_packet(rng, peer, LOCAL_VTEP, Some(22));
            (
                eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], ETH_P_IP, &l4),
                "underlay-ipv4",
            )
        }
        3 => {
            let a = arp(1, [2, 0, 0, 0, 0, 2], peer, [0; 6], LOCAL_VTEP);
            (
                eth(BROADCAST, [2, 0, 0, 0, 0, 2], ETH_P_ARP, &a),
                "underlay-arp",
            )
        }
        4 => {
            // A fragment of a VXLAN packet (MF set, or a non-zero offset).
            let mut f = underlay_udp(peer, LOCAL_VTEP, 50000, VXLAN_PORT, &vx);
            let frag: u16 = *rng.pick(&[0x2000, 0x0001, 0x2010, 0x1fff]);
            f[20..22].copy_from_slice(&frag.to_be_bytes());
            super::frames::fix_ipv4_checksum(&mut f, 14);
            (f, "vxlan-fragment")
        }
        5 => {
            // VXLAN behind IPv4 options: never sent by a VTEP of ours, left to the stack.
            let mut f = underlay_udp(peer, LOCAL_VTEP, 50000, VXLAN_PORT, &vx);
            let words = rng.range(1, 10);
            let opts: Vec<u8> = (0..words * 4).map(|_| 1).collect();
            f.splice(34..34, opts);
            f[14] = 0x40 | (5 + words as u8);
            let tot = super::frames::be16(&f, 16) + (words * 4) as u16;
            f[16..18].copy_from_slice(&tot.to_be_bytes());
            super::frames::fix_ipv4_checksum(&mut f, 14);
            (f, "vxlan-ip-options")
        }
        _ => {
            let mut v6 = vec![0x60, 0, 0, 0, 0, 16, 17, 64];
            v6.extend(rng.bytes(48));
            (
                eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], ETH_P_IPV6, &v6),
                "underlay-ipv6",
            )
        }
    }
}
