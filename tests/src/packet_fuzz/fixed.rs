//! The fixed templates the run starts with, each cut at every length: one of every kind of
//! frame the programs handle differently (ARP for the gateway, a remote endpoint and a probe;
//! TCP/UDP/ICMP to local and remote endpoints, through the gateway, to a VTEP nobody knows,
//! to services with and without backends, in every network; VXLAN for every network, with a
//! shared MAC, from an unknown VTEP, from the wrong VTEP, with an unknown VNI, carrying ARP;
//! underlay traffic that is not ours).

use std::net::Ipv4Addr;

use super::{
    frames::{
        arp, eth, icmp_echo, ipv4, tcp, udp, vxlan, BROADCAST, ETH_P_ARP, ETH_P_IP, ETH_P_VLAN,
        PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    },
    rng::Rng,
    templates::{gateway, l4_packet, other_ethertype_frame, underlay_udp},
    world::{Endpoint, World, LOCAL_VTEP, UNKNOWN_VTEP, VTEP_B, VTEP_C, VXLAN_PORT},
};

/// A container frame, the ifindex it enters on, its name.
pub type ContainerTemplate = (Vec<u8>, u32, String);
/// An underlay frame and its name.
pub type UnderlayTemplate = (Vec<u8>, String);

/// The fixed templates cut at every length: (frame, ifindex, name), container frames first
/// (ifindex of their sender), then underlay frames (ifindex 0).
pub fn fixed(w: &World) -> (Vec<ContainerTemplate>, Vec<UnderlayTemplate>) {
    let mut rng = Rng::new(0x5eed);
    let ep = |vni: u32, a: [u8; 4]| *w.by_ip(vni, Ipv4Addr::from(a)).expect("fixture endpoint");
    let me = |ifindex| *w.identity(ifindex).expect("fixture identity");
    let (l1, l3, l4, l6) = (me(2), me(4), me(5), me(6));
    let (gw_ip, gw_mac) = gateway(w, 100);
    let vip = w.services[0].vip;
    let mut c = Vec::new();
    let mut add = |f: Vec<u8>, ifindex: u32, name: &str| c.push((f, ifindex, name.to_string()));
    add(
        eth(
            BROADCAST,
            l1.mac,
            ETH_P_ARP,
            &arp(1, l1.mac, l1.ip, [0; 6], gw_ip),
        ),
        2,
        "arp-gateway",
    );
    let r1 = ep(100, [10, 1, 0, 21]);
    add(
        eth(
            BROADCAST,
            l1.mac,
            ETH_P_ARP,
            &arp(1, l1.mac, l1.ip, [0; 6], r1.ip),
        ),
        2,
        "arp-remote",
    );
    let l2 = ep(100, [10, 1, 0, 12]);
    let probe = arp(1, l1.mac, Ipv4Addr::UNSPECIFIED, [0; 6], l2.ip);
    add(eth(BROADCAST, l1.mac, ETH_P_ARP, &probe), 2, "arp-probe");
    let seg = tcp(l1.ip, l2.ip, 40000, 80, 0x02, b"syn");
    add(
        eth(
            l2.mac,
            l1.mac,
            ETH_P_IP,
            &ipv4(l1.ip, l2.ip, PROTO_TCP, &seg),
        ),
        2,
        "tcp-local",
    );
    let d = udp(l1.ip, r1.ip, 40000, 9000, b"to remote", true);
    add(
        eth(gw_mac, l1.mac, ETH_P_IP, &ipv4(l1.ip, r1.ip, PROTO_UDP, &d)),
        2,
        "udp-gateway-remote",
    );
    let r2 = ep(100, [10, 1, 0, 22]);
    let echo = icmp_echo(8, 7, 1, b"ping");
    add(
        eth(
            r2.mac,
            l1.mac,
            ETH_P_IP,
            &ipv4(l1.ip, r2.ip, PROTO_ICMP, &echo),
        ),
        2,
        "icmp-remote",
    );
    let r3 = ep(100, [10, 1, 0, 29]);
    add(
        eth(
            r3.mac,
            l1.mac,
            ETH_P_IP,
            &ipv4(l1.ip, r3.ip, PROTO_ICMP, &echo),
        ),
        2,
        "icmp-unknown-vtep",
    );
    let seg = tcp(l1.ip, vip, 40001, 80, 0x02, b"");
    add(
        eth(gw_mac, l1.mac, ETH_P_IP, &ipv4(l1.ip, vip, PROTO_TCP, &seg)),
        2,
        "tcp-service",
    );
    let d = udp(l1.ip, vip, 40002, 53, b"query", true);
    add(
        eth(gw_mac, l1.mac, ETH_P_IP, &ipv4(l1.ip, vip, PROTO_UDP, &d)),
        2,
        "udp-service-no-backend",
    );
    let r4 = ep(200, [10, 2, 0, 21]);
    let d = udp(l3.ip, r4.ip, 1, 2, b"vni 200", false);
    add(
        eth(r4.mac, l3.mac, ETH_P_IP, &ipv4(l3.ip, r4.ip, PROTO_UDP, &d)),
        4,
        "udp-vni200",
    );
    let r5 = ep(0xff_ffff, [10, 3, 0, 21]);
    let seg = tcp(l4.ip, r5.ip, 1, 2, 0x18, b"max vni");
    add(
        eth(
            r5.mac,
            l4.mac,
            ETH_P_IP,
            &ipv4(l4.ip, r5.ip, PROTO_TCP, &seg),
        ),
        5,
        "tcp-max-vni",
    );
    let d = udp(l6.ip, l6.ip, 1, 2, b"", false);
    add(
        eth(l6.mac, l6.mac, ETH_P_IP, &ipv4(l6.ip, l6.ip, PROTO_UDP, &d)),
        6,
        "no-network",
    );
    let ip = l4_packet(&mut rng, l1.ip, r1.ip, Some(80));
    add(
        other_ethertype_frame(&mut rng, r1.mac, l1.mac, ip.clone()),
        2,
        "other-ethertype",
    );
    let mut tagged = vec![0, 5, 0x08, 0x00];
    tagged.extend(ip);
    add(eth(r1.mac, l1.mac, ETH_P_VLAN, &tagged), 2, "vlan");

    let mut u = Vec::new();
    let mut vx = |vtep, vni, src: &Endpoint, dst: &Endpoint, l4: Vec<u8>, name: &str| {
        let inner = eth(dst.mac, src.mac, ETH_P_IP, &l4);
        let f = underlay_udp(
            vtep,
            LOCAL_VTEP,
            50000,
            VXLAN_PORT,
            &vxlan(0x08, vni, &inner),
        );
        u.push((f, name.to_string()));
    };
    let l1e = ep(100, [10, 1, 0, 11]);
    let seg = tcp(r1.ip, l1e.ip, 80, 40000, 0x12, b"syn-ack");
    vx(
        VTEP_B,
        100,
        &r1,
        &l1e,
        ipv4(r1.ip, l1e.ip, PROTO_TCP, &seg),
        "vxlan-tcp",
    );
    let l3e = ep(200, [10, 2, 0, 11]);
    let d = udp(r4.ip, l3e.ip, 53, 40000, b"answer", true);
    vx(
        VTEP_B,
        200,
        &r4,
        &l3e,
        ipv4(r4.ip, l3e.ip, PROTO_UDP, &d),
        "vxlan-udp-vni200",
    );
    let l4e = ep(0xff_ffff, [10, 3, 0, 11]);
    vx(
        VTEP_C,
        0xff_ffff,
        &r5,
        &l4e,
        ipv4(r5.ip, l4e.ip, PROTO_ICMP, &icmp_echo(0, 7, 1, b"pong")),
        "vxlan-icmp-max-vni",
    );
    let s1 = ep(200, [10, 1, 0, 21]);
    vx(
        VTEP_C,
        200,
        &s1,
        &l3e,
        ipv4(s1.ip, l3e.ip, PROTO_ICMP, &icmp_echo(0, 1, 1, b"x")),
        "vxlan-shared-mac",
    );
    vx(
        UNKNOWN_VTEP,
        100,
        &r3,
        &l1e,
        ipv4(r3.ip, l1e.ip, PROTO_ICMP, &icmp_echo(0, 1, 1, b"x")),
        "vxlan-unknown-vtep",
    );
    // R1 lives behind B: from C it is spoofed.
    vx(
        VTEP_C,
        100,
        &r1,
        &l1e,
        ipv4(r1.ip, l1e.ip, PROTO_ICMP, &icmp_echo(0, 1, 1, b"x")),
        "vxlan-source-behind-other-vtep",
    );
    vx(
        VTEP_B,
        4242,
        &r1,
        &l1e,
        ipv4(r1.ip, l1e.ip, PROTO_ICMP, &icmp_echo(0, 1, 1, b"x")),
        "vxlan-unknown-vni",
    );
    let a = eth(
        l1e.mac,
        r1.mac,
        ETH_P_ARP,
        &arp(1, r1.mac, r1.ip, [0; 6], l1e.ip),
    );
    u.push((
        underlay_udp(VTEP_B, LOCAL_VTEP, 50000, VXLAN_PORT, &vxlan(0x08, 100, &a)),
        "vxlan-inner-arp".into(),
    ));
    u.push((
        underlay_udp(VTEP_B, LOCAL_VTEP, 40000, 53, b"dns"),
        "underlay-dns".into(),
    ));
    let (f, name) = foreign_underlay_fixed(&mut rng);
    u.push((f, name.into()));
    (c, u)
}

fn foreign_underlay_fixed(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    // VXLAN with IPv4 options: the stack's business.
    let inner = eth(
        [0x0a, 0x58, 10, 1, 0, 11],
        [0x0a, 0x58, 10, 1, 0, 21],
        ETH_P_IP,
        &ipv4(
            Ipv4Addr::new(10, 1, 0, 21),
            Ipv4Addr::new(10, 1, 0, 11),
            PROTO_UDP,
            &rng.bytes(8),
        ),
    );
    let mut f = underlay_udp(
        VTEP_B,
        LOCAL_VTEP,
        50000,
        VXLAN_PORT,
        &vxlan(0x08, 100, &inner),
    );
    f.splice(34..34, [1, 1, 1, 0]);
    f[14] = 0x46;
    let tot = super::frames::be16(&f, 16) + 4;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    super::frames::fix_ipv4_checksum(&mut f, 14);
    (f, "vxlan-ip-options")
}
