//! The datapath across three namespace hosts and two networks, with real overlayd processes,
//! real kernel forwarding and real traffic.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use overlay_common::{Direction, DropReason};
use overlay_tests::{
    traffic::{self, Limit},
    Netns, Topology, TopologySpec,
};

const RED: u32 = 100;
const BLUE: u32 = 200;

/// h1: ra rb (red) ba (blue); h2: rc (red) bb (blue); h3: rd (red) bc (blue).
fn three_hosts() -> Topology {
    let mut t = Topology::new(
        TopologySpec::new(3)
            .network("red", RED, "198.19.1.0/24")
            .network("blue", BLUE, "198.19.2.0/24"),
    );
    t.add_container(0, "ra", "red", 1);
    t.add_container(0, "rb", "red", 2);
    t.add_container(0, "ba", "blue", 1);
    t.add_container(1, "rc", "red", 1);
    t.add_container(1, "bb", "blue", 1);
    t.add_container(2, "rd", "red", 1);
    t.add_container(2, "bc", "blue", 1);
    t.write_tables();
    t
}

fn drops(t: &Topology, host: usize, reason: DropReason) -> u64 {
    t.counters(host).drops(reason).packets
}

fn traffic(t: &Topology, host: usize, dir: Direction) -> u64 {
    t.counters(host).traffic(dir).packets
}

#[test]
fn cross_host_same_host_arp_and_isolation() {
    let mut t = three_hosts();
    t.start_all(&[]);
    let (ra, rb, rc, rd) = (
        t.container("ra"),
        t.container("rb"),
        t.container("rc"),
        t.container("rd"),
    );

    // Cross-host in both directions and across all three hosts.
    assert!(traffic::ping(&ra.ns, rc.ip, 3), "ra -> rc (h1 -> h2)");
    assert!(traffic::ping(&rc.ns, rd.ip, 3), "rc -> rd (h2 -> h3)");
    assert!(traffic::ping(&rd.ns, ra.ip, 3), "rd -> ra (h3 -> h1)");
    assert!(t.counters(0).traffic(Direction::EncapTx).packets >= 3);
    assert!(t.counters(1).traffic(Direction::DecapRx).packets >= 3);

    // Same host: delivered veth to veth, never encapsulated.
    let (local0, encap0) = (
        traffic(&t, 0, Direction::LocalDelivery),
        traffic(&t, 0, Direction::EncapTx),
    );
    assert!(traffic::ping(&ra.ns, rb.ip, 3), "ra -> rb (same host)");
    assert!(
        traffic(&t, 0, Direction::LocalDelivery) >= local0 + 6,
        "requests and replies delivered locally"
    );
    assert_eq!(
        traffic(&t, 0, Direction::EncapTx),
        encap0,
        "same-host traffic must not be encapsulated"
    );

    // ARP for a remote IP was answered by the program with the endpoint's real MAC.
    let neigh = ra
        .ns
        .run("ip", &["neigh", "show", &rc.ip.to_string(), "dev", "eth0"]);
    assert!(
        neigh.contains(&rc.mac.to_string()),
        "ra's neighbour entry for rc: {neigh:?}"
    );
    assert!(traffic(&t, 0, Direction::ArpReply) >= 2);
    let unknown0 = drops(&t, 0, DropReason::ArpUnknownTarget);
    assert!(
        !traffic::ping(&ra.ns, Ipv4Addr::new(198, 19, 1, 99), 1),
        "nobody has .99"
    );
    assert!(
        drops(&t, 0, DropReason::ArpUnknownTarget) > unknown0,
        "unanswered ARP is counted"
    );

    // Isolation: red cannot reach blue, routed or with a hand-made neighbour entry.
    let bb = t.container("bb");
    let listener = traffic::udp_receive(&bb.ns, 7000, Duration::from_secs(3));
    let unknown_dst0 = drops(&t, 0, DropReason::UnknownDestination);
    assert!(
        !traffic::ping(&ra.ns, bb.ip, 2),
        "red -> blue through the gateway"
    );
    ra.ns
        .run("ip", &["route", "add", "198.19.2.0/24", "dev", "eth0"]);
    ra.ns.run(
        "ip",
        &[
            "neigh",
            "replace",
            &bb.ip.to_string(),
            "lladdr",
            &bb.mac.to_string(),
            "dev",
            "eth0",
        ],
    );
    assert!(
        !traffic::ping(&ra.ns, bb.ip, 2),
        "red -> blue with blue's MAC"
    );
    traffic::udp_send(&ra.ns, bb.ip, 7000, b"leak".to_vec());
    assert!(drops(&t, 0, DropReason::UnknownDestination) >= unknown_dst0 + 5);
    assert!(
        listener.join().unwrap().is_empty(),
        "nothing from red may reach blue"
    );

    // Spoofed source IP, then spoofed MAC: dropped and counted.
    let spoof_ip0 = drops(&t, 0, DropReason::SpoofedIp);
    ra.ns
        .run("ip", &["addr", "add", "198.19.1.77/24", "dev", "eth0"]);
    let out = ra.ns.output(
        "ping",
        &[
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "198.19.1.77",
            &rc.ip.to_string(),
        ],
    );
    assert!(
        !out.status.success(),
        "a spoofed source IP must not get through"
    );
    assert!(drops(&t, 0, DropReason::SpoofedIp) >= spoof_ip0 + 2);
    ra.ns
        .run("ip", &["addr", "del", "198.19.1.77/24", "dev", "eth0"]);

    let spoof_mac0 = drops(&t, 0, DropReason::SpoofedMac);
    ra.ns.run(
        "ip",
        &["link", "set", "eth0", "address", "02:00:00:00:00:77"],
    );
    assert!(
        !traffic::ping(&ra.ns, rc.ip, 2),
        "a spoofed source MAC must not get through"
    );
    assert!(drops(&t, 0, DropReason::SpoofedMac) >= spoof_mac0 + 2);
    ra.ns.run(
        "ip",
        &["link", "set", "eth0", "address", &ra.mac.to_string()],
    );
    assert!(
        traffic::ping(&ra.ns, rc.ip, 2),
        "back to normal once the MAC is restored"
    );

    // eBPF log lines (aya-log) reach the daemon's log, naming the drop reason.
    let log = t.daemon_log(0);
    assert!(
        log.contains("container drop: spoofed_mac"),
        "no eBPF log line in:\n{log}"
    );
}

#[test]
fn forged_vxlan_never_reaches_a_container() {
    let mut t = three_hosts();
    t.start_all(&[]);
    let (ra, bb) = (t.container("ra"), t.container("bb"));
    let h1_vtep = t.hosts[0].vtep_ip;
    let (ra_ip, ra_mac, bb_ip, bb_mac) = (ra.ip, ra.mac.0, bb.ip, bb.mac.0);
    let rc = t.container("rc");
    let (rc_ip, rc_mac) = (rc.ip, rc.mac.0);

    let listener = traffic::udp_receive(&t.container("ra").ns, 7001, Duration::from_secs(3));
    let before = t.counters(0);
    let send = |ns: &overlay_tests::Netns, vni: u32, flags: u8, inner: Vec<u8>| {
        traffic::udp_send(
            ns,
            h1_vtep,
            4789,
            traffic::vxlan_payload(vni, flags, &inner),
        );
    };
    let h2 = &t.hosts[1].ns;
    // From a real VTEP (h2), blue's VNI, addressed to red's ra.
    send(
        h2,
        BLUE,
        0x08,
        traffic::inner_udp_frame(bb_mac, ra_mac, bb_ip, ra_ip, 7001, b"x"),
    );
    // Red's VNI, to ra, but from blue's bb (a source that is not red's).
    send(
        h2,
        RED,
        0x08,
        traffic::inner_udp_frame(bb_mac, ra_mac, bb_ip, ra_ip, 7001, b"x"),
    );
    // Red's VNI and a red source that lives on h2, but a forged source IP.
    send(
        h2,
        RED,
        0x08,
        traffic::inner_udp_frame(
            rc_mac,
            ra_mac,
            Ipv4Addr::new(198, 19, 1, 200),
            ra_ip,
            7001,
            b"x",
        ),
    );
    // A VNI nobody uses, and a header without the I flag.
    send(
        h2,
        999,
        0x08,
        traffic::inner_udp_frame(rc_mac, ra_mac, rc_ip, ra_ip, 7001, b"x"),
    );
    send(
        h2,
        RED,
        0x00,
        traffic::inner_udp_frame(rc_mac, ra_mac, rc_ip, ra_ip, 7001, b"x"),
    );
    // From the underlay, an address that is no VTEP.
    t.underlay
        .run("ip", &["addr", "add", "198.18.0.250/24", "dev", "br0"]);
    send(
        &t.underlay,
        RED,
        0x08,
        traffic::inner_udp_frame(rc_mac, ra_mac, rc_ip, ra_ip, 7001, b"x"),
    );

    let got = listener.join().unwrap();
    assert!(got.is_empty(), "forged VXLAN reached ra: {got:?}");
    let after = t.counters(0);
    let delta = |r: DropReason| after.drops(r).packets - before.drops(r).packets;
    assert_eq!(delta(DropReason::DecapNotLocal), 1, "blue VNI to a red MAC");
    assert_eq!(
        delta(DropReason::DecapSpoofedSource),
        2,
        "wrong network or forged source"
    );
    assert_eq!(delta(DropReason::UnknownVni), 1);
    assert_eq!(delta(DropReason::VxlanMalformed), 1);
    assert_eq!(delta(DropReason::UnknownVtep), 1);

    // The legitimate form of the same packet is delivered.
    let listener = traffic::udp_receive(&t.container("ra").ns, 7002, Duration::from_secs(2));
    send(
        &t.hosts[1].ns,
        RED,
        0x08,
        traffic::inner_udp_frame(rc_mac, ra_mac, rc_ip, ra_ip, 7002, b"hello"),
    );
    assert_eq!(listener.join().unwrap(), vec![b"hello".to_vec()]);
}

#[test]
fn underlay_carries_well_formed_vxlan() {
    let mut t = three_hosts();
    t.start_all(&[]);
    let (ra, rc) = (t.container("ra"), t.container("rc"));
    let cap = traffic::capture(&t.hosts[0].ns, "ul0", Duration::from_secs(3));
    assert!(traffic::ping(&ra.ns, rc.ip, 3));
    let frames = cap.join().unwrap();
    let vx: Vec<_> = frames
        .iter()
        .filter_map(|f| traffic::parse_vxlan(f, 4789))
        .collect();
    let out: Vec<_> = vx
        .iter()
        .filter(|v| v.outer_src == t.hosts[0].vtep_ip)
        .collect();
    let back: Vec<_> = vx
        .iter()
        .filter(|v| v.outer_src == t.hosts[1].vtep_ip)
        .collect();
    assert!(
        out.len() >= 3 && back.len() >= 3,
        "captured {} VXLAN frames of {}",
        vx.len(),
        frames.len()
    );
    for v in &out {
        assert_eq!(v.outer_dst, t.hosts[1].vtep_ip);
        assert_eq!(v.udp_dst, 4789);
        assert!(
            v.udp_src >= 49152,
            "source port {} outside the dynamic range",
            v.udp_src
        );
        assert_eq!(v.udp_checksum, 0);
        assert_eq!(v.flags, 0x08, "I flag only");
        assert_eq!(v.vni, RED);
        // Inner frame intact: Ethernet from ra to rc, IPv4 ICMP echo with valid checksums.
        let inner = &v.inner;
        assert_eq!(&inner[0..6], &rc.mac.0);
        assert_eq!(&inner[6..12], &ra.mac.0);
        assert_eq!(&inner[12..14], &[0x08, 0x00]);
        let ip = &inner[14..];
        assert_eq!(&ip[12..16], &ra.ip.octets());
        assert_eq!(&ip[16..20], &rc.ip.octets());
        assert_eq!(ip[9], 1, "ICMP");
        assert_eq!(traffic::checksum(&ip[..20]), 0, "inner IPv4 checksum");
        let len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        assert_eq!(traffic::checksum(&ip[20..len]), 0, "inner ICMP checksum");
    }
    // One flow, one outer source port (ECMP keeps it on one path).
    assert!(out.iter().all(|v| v.udp_src == out[0].udp_src));
}

#[test]
fn large_tcp_transfers_keep_their_checksum() {
    let mut t = three_hosts();
    t.start_all(&[]);
    let (ra, rc) = (t.container("ra"), t.container("rc"));
    const SIZE: u64 = 128 << 20;
    let (sent, got) = traffic::tcp_transfer(&rc.ns, &ra.ns, rc.ip, 5001, SIZE);
    assert_eq!(sent, got, "h1 -> h2");
    assert_eq!(got.bytes, SIZE);
    let (sent, got) = traffic::tcp_transfer(&ra.ns, &rc.ns, ra.ip, 5002, SIZE);
    assert_eq!(sent, got, "h2 -> h1");
    let (sent, got) = traffic::tcp_transfer(
        &t.container("rb").ns,
        &ra.ns,
        t.container("rb").ip,
        5003,
        SIZE,
    );
    assert_eq!(sent, got, "same host");
    t.assert_no_encap_failures(2);
}

#[test]
fn large_tcp_transfer_with_native_xdp_and_without() {
    // The default on veth is TC only (the other tests); native and generic XDP must work too.
    for xdp in ["native", "skb"] {
        let mut t = three_hosts();
        t.start_all(&["--xdp", xdp]);
        let (ra, rd) = (t.container("ra"), t.container("rd"));
        let (sent, got) = traffic::tcp_transfer(&rd.ns, &ra.ns, rd.ip, 5004, 100 << 20);
        assert_eq!(sent, got, "xdp {xdp}");
    }
}

#[test]
fn restarting_daemons_keeps_a_running_flow() {
    let mut t = three_hosts();
    t.start_all(&[]);
    let (ra_ns, rc_ns, rc_ip) = {
        let (ra, rc) = (t.container("ra"), t.container("rc"));
        (ra.ns.name().to_owned(), rc.ns.name().to_owned(), rc.ip)
    };
    let flow = std::thread::spawn(move || {
        // Re-open the namespaces by name: the topology stays owned by the test thread.
        let server = overlay_tests::netns::Netns::open(&rc_ns);
        let client = overlay_tests::netns::Netns::open(&ra_ns);
        traffic::tcp_stream(
            &server,
            &client,
            rc_ip,
            5005,
            Limit::Duration(Duration::from_secs(10)),
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    // Graceful restart of h1's daemon, then a crash and restart of h2's.
    t.restart_two_daemons();
    let (sent, got) = flow.join().expect("the flow survived the restarts");
    assert_eq!(sent, got);
    assert!(got.bytes > 0);
    // Restarts re-used the pins: one link per container, nothing duplicated; the socket
    // hooks' links were moved over the old ones, not added next to them.
    let mut links: Vec<String> = std::fs::read_dir(t.hosts[0].pins.links())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    links.sort();
    let (sock, tc): (Vec<&String>, Vec<&String>) =
        links.iter().partition(|l| l.starts_with("sock-"));
    assert_eq!(
        tc.len(),
        1 + 3,
        "underlay-tc and one per container (no XDP on a veth underlay by default): {links:?}"
    );
    assert_eq!(
        sock,
        [
            "sock-connect4",
            "sock-connect6",
            "sock-getpeername4",
            "sock-getpeername6",
            "sock-recvmsg4",
            "sock-recvmsg6",
            "sock-release",
            "sock-sendmsg4",
            "sock-sendmsg6"
        ],
        "{links:?}"
    );
}

/// A router on the underlay at 198.18.0.254: its own namespace, bridged like a host, forwarding
/// without ICMP redirects (which would teach the sender the direct path).
fn underlay_router(t: &Topology) -> Netns {
    let r = Netns::create(&format!("ovt{}-rt", t.id));
    r.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
    r.ip(&[
        "link",
        "add",
        "ul0",
        "type",
        "veth",
        "peer",
        "name",
        "prt",
        "netns",
        t.underlay.name(),
    ]);
    r.ip(&["addr", "add", "198.18.0.254/24", "dev", "ul0"]);
    r.ip(&["link", "set", "ul0", "up"]);
    r.sysctl("net/ipv4/ip_forward", "1");
    for dev in ["all", "default", "ul0"] {
        r.sysctl(&format!("net/ipv4/conf/{dev}/send_redirects"), "0");
    }
    t.underlay
        .ip(&["link", "set", "prt", "master", "br0", "up"]);
    r
}

/// IP datagrams a namespace has forwarded (`Ip: ForwDatagrams` of its /proc/net/snmp).
fn forwarded(ns: &Netns) -> u64 {
    ns.snmp("Ip", "ForwDatagrams").expect("Ip ForwDatagrams")
}

/// Waits until host `host`'s VTEP entry for `vtep` carries `want` as its next hop.
fn wait_next_hop(t: &Topology, host: usize, vtep: Ipv4Addr, want: Option<Ipv4Addr>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = t
            .vteps(host)
            .into_iter()
            .find(|v| v.0 == IpAddr::V4(vtep))
            .map(|v| v.2);
        if got == Some(want.map(IpAddr::V4)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "next hop of {vtep} on host {host}: {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each VTEP's underlay next hop is pinned from the host's routes, so no route lookup runs
/// per packet, and follows route changes: a host route via a router moves the traffic
/// through the router, removing it moves it back, and a multipath route is left to the
/// kernel per packet.
#[test]
fn underlay_next_hops_follow_route_changes() {
    let mut t = Topology::new(TopologySpec::new(2).network("red", RED, "198.19.1.0/24"));
    t.add_container(0, "a", "red", 1);
    t.add_container(1, "b", "red", 1);
    t.write_tables();
    t.start_all(&[]);
    let router = underlay_router(&t);
    let (h1, h2_vtep) = (&t.hosts[0].ns, t.hosts[1].vtep_ip);
    let gw = Ipv4Addr::new(198, 18, 0, 254);
    let (a, b) = (t.container("a"), t.container("b"));

    // On-link: the VTEP is its own next hop.
    wait_next_hop(&t, 0, h2_vtep, Some(h2_vtep));
    assert!(traffic::ping(&a.ns, b.ip, 3), "a -> b direct");

    // Via the router: pinned to it, and the echo requests really pass through it.
    let route = format!("{h2_vtep}/32");
    h1.ip(&["route", "add", &route, "via", "198.18.0.254", "dev", "ul0"]);
    wait_next_hop(&t, 0, h2_vtep, Some(gw));
    let before = forwarded(&router);
    assert!(traffic::ping(&a.ns, b.ip, 5), "a -> b via the router");
    assert!(
        forwarded(&router) >= before + 5,
        "the router forwarded {} of 5 echo requests",
        forwarded(&router) - before
    );

    // Route removed: back to the direct path, the router sees nothing.
    h1.ip(&["route", "del", &route]);
    wait_next_hop(&t, 0, h2_vtep, Some(h2_vtep));
    let before = forwarded(&router);
    assert!(traffic::ping(&a.ns, b.ip, 5), "a -> b direct again");
    assert_eq!(forwarded(&router), before, "the router still forwards");

    // Multipath: no single next hop stands for it; the kernel routes each packet.
    h1.ip(&[
        "route",
        "add",
        &route,
        "nexthop",
        "via",
        "198.18.0.254",
        "dev",
        "ul0",
        "nexthop",
        "via",
        &h2_vtep.to_string(),
        "dev",
        "ul0",
    ]);
    wait_next_hop(&t, 0, h2_vtep, None);
    assert!(
        traffic::ping(&a.ns, b.ip, 5),
        "a -> b over a multipath route"
    );
    h1.ip(&["route", "del", &route]);
    wait_next_hop(&t, 0, h2_vtep, Some(h2_vtep));
}
