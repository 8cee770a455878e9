//! The datapath over an IPv6-only underlay (VXLAN over IPv6 between VTEPs), across three
//! namespace hosts with real etcd on the underlay's IPv6 address and real overlayd processes:
//! IPv4 and IPv6 containers talk across hosts and on one host, the underlay carries only
//! IPv6 (VXLAN to port 4789 with a zero outer UDP checksum, RFC 6935/6936), large transfers
//! keep their checksum, forged VXLAN reaches nobody, restarts keep flows, and each VTEP's
//! IPv6 next hop follows the host's routes.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use overlay_common::{Direction, DropReason};
use overlay_tests::{
    frames6,
    topology::{underlay_ip6, CONTAINER_MTU6},
    traffic::{self, Limit, Vxlan6Frame},
    Netns, Topology, TopologySpec,
};

const RED: u32 = 100;
const BLUE: u32 = 200;
const RED4: &str = "198.19.90.0/24";
const RED6: &str = "2001:2:0:1090::/64";
const BLUE4: &str = "198.19.91.0/24";

/// An IPv6-only underlay with etcd on it. h1: ra rb (red) ba (blue); h2: rc (red) bb (blue);
/// h3: rd (red) bc (blue). Red is dual-stack, blue IPv4 only.
fn three_hosts() -> Topology {
    let mut t = Topology::new(
        TopologySpec::new(3)
            .with_etcd(10)
            .with_ipv6_underlay()
            .network6("red", RED, RED4, RED6)
            .network("blue", BLUE, BLUE4),
    );
    t.start_all(&[]);
    for (host, name, network) in [
        (0, "ra", "red"),
        (0, "rb", "red"),
        (0, "ba", "blue"),
        (1, "rc", "red"),
        (1, "bb", "blue"),
        (2, "rd", "red"),
        (2, "bc", "blue"),
    ] {
        t.add_pod(host, name, network);
    }
    for host in 0..3 {
        t.wait_converged(host);
    }
    t
}

/// Host `host`'s IPv6 VTEP (its only underlay address).
fn vtep6(t: &Topology, host: usize) -> Ipv6Addr {
    match t.hosts[host].underlay_ip {
        IpAddr::V6(ip) => ip,
        ip => panic!("host {host}'s underlay address {ip} is not IPv6"),
    }
}

fn traffic(t: &Topology, host: usize, dir: Direction) -> u64 {
    t.counters(host).traffic(dir).packets
}

/// A field of `ip -o link show dev <ifname>` in `ns`: the word after `key`.
fn link_field(ns: &Netns, ifname: &str, key: &str) -> String {
    let out = ns.ip(&["-o", "link", "show", "dev", ifname]);
    let mut words = out.split_whitespace();
    words
        .find(|w| *w == key)
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
        .to_owned()
}

fn link_mac(ns: &Netns, ifname: &str) -> [u8; 6] {
    let text = link_field(ns, ifname, "link/ether");
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC byte"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

/// Waits until host `host`'s VTEP entry for `vtep` carries `want` as its next hop.
fn wait_next_hop(t: &Topology, host: usize, vtep: IpAddr, want: Option<IpAddr>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = t.vteps(host).into_iter().find(|v| v.0 == vtep).map(|v| v.2);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "next hop of {vtep} on host {host}: {got:?}, want {want:?} (VTEPs {:?})\n{}",
            t.vteps(host),
            t.daemon_log(host)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ipv4_and_ipv6_containers_talk_over_an_ipv6_underlay() {
    let t = three_hosts();
    let (ra, rb, rc, rd) = (
        t.container("ra"),
        t.container("rb"),
        t.container("rc"),
        t.container("rd"),
    );

    // Every host knows the others by their IPv6 VTEPs only, each on-link (its own next hop).
    for h in 0..3 {
        assert_eq!(
            t.hosts[h].underlay_ip,
            IpAddr::V6(underlay_ip6(h as u16 + 1))
        );
        for other in (0..3).filter(|&o| o != h) {
            let ip = t.hosts[other].underlay_ip;
            wait_next_hop(&t, h, ip, Some(ip));
        }
        let vteps = t.vteps(h);
        assert!(
            vteps.iter().all(|v| v.0.is_ipv6()),
            "an IPv4 VTEP on host {h}: {vteps:?}"
        );
    }

    // Containers get the underlay MTU less 70 (outer IPv6 + UDP + VXLAN + Ethernet).
    assert_eq!(t.container_mtu(), CONTAINER_MTU6);
    for c in [ra, rb, rc, rd] {
        let mtu: u32 = link_field(&c.ns, "eth0", "mtu").parse().expect("mtu");
        assert_eq!(mtu, CONTAINER_MTU6, "MTU of {}", c.name);
    }

    // Same host first (before anything else runs): delivered veth to veth in both families,
    // never encapsulated.
    let (local0, encap0) = (
        traffic(&t, 0, Direction::LocalDelivery),
        traffic(&t, 0, Direction::EncapTx),
    );
    assert!(traffic::ping(&ra.ns, rb.ip, 3), "ra -> rb (same host)");
    assert!(
        traffic::ping(&ra.ns, rb.ip6(), 3),
        "ra -> rb over IPv6 (same host)"
    );
    assert!(
        traffic(&t, 0, Direction::LocalDelivery) >= local0 + 12,
        "requests and replies delivered locally"
    );
    assert_eq!(
        traffic(&t, 0, Direction::EncapTx),
        encap0,
        "same-host traffic must not be encapsulated"
    );

    // Cross-host in both directions and across all three hosts, in both families.
    let (encap0, decap1) = (
        traffic(&t, 0, Direction::EncapTx),
        traffic(&t, 1, Direction::DecapRx),
    );
    for (from, to, what) in [
        (ra, rc, "h1 -> h2"),
        (rc, rd, "h2 -> h3"),
        (rd, ra, "h3 -> h1"),
    ] {
        assert!(
            traffic::ping(&from.ns, to.ip, 3),
            "{} -> {} ({what})",
            from.name,
            to.name
        );
        assert!(
            traffic::ping(&from.ns, to.ip6(), 3),
            "{} -> {} over IPv6 ({what})",
            from.name,
            to.name
        );
    }
    // h1 sent ra's 6 requests and the 6 replies to rd; h2 received ra's 6 requests.
    assert!(traffic(&t, 0, Direction::EncapTx) >= encap0 + 12);
    assert!(traffic(&t, 1, Direction::DecapRx) >= decap1 + 6);

    // Full-size packets with DF set fit: 1430 bytes inside is 1500 on the underlay.
    let (ok, out) = traffic::df_ping(&ra.ns, rc.ip, CONTAINER_MTU6 - 28, 2);
    assert!(ok, "full-size IPv4 ping with DF: {out}");
    let (ok, out) = traffic::df_ping(&ra.ns, rc.ip6(), CONTAINER_MTU6 - 48, 2);
    assert!(ok, "full-size IPv6 ping: {out}");

    // The IPv4-only network crosses too; networks stay apart.
    let (ba, bb) = (t.container("ba"), t.container("bb"));
    assert!(traffic::ping(&ba.ns, bb.ip, 3), "ba -> bb (blue, h1 -> h2)");
    assert!(
        !traffic::ping(&ra.ns, bb.ip, 2),
        "red reached blue over IPv4"
    );
}

#[test]
fn underlay_carries_vxlan_over_ipv6_with_zero_checksum_and_no_ipv4() {
    let t = three_hosts();
    let (ra, rc) = (t.container("ra"), t.container("rc"));
    let (h1, h2) = (vtep6(&t, 0), vtep6(&t, 1));
    let (mac1, mac2) = (
        link_mac(&t.hosts[0].ns, "ul0"),
        link_mac(&t.hosts[1].ns, "ul0"),
    );
    // Everything on the underlay: each host's switch port and the switch itself (etcd).
    let ports = ["p1", "p2", "p3", "br0"];
    let captures: Vec<_> = ports
        .iter()
        .map(|p| traffic::capture(&t.underlay, p, Duration::from_secs(5)))
        .collect();
    assert!(traffic::ping(&ra.ns, rc.ip, 3), "ra -> rc");
    assert!(traffic::ping(&ra.ns, rc.ip6(), 3), "ra -> rc over IPv6");
    let captured: Vec<Vec<Vec<u8>>> = captures.into_iter().map(|c| c.join().unwrap()).collect();

    // Nothing of IPv4 anywhere: no IPv4 packet, no ARP.
    for (port, frames) in ports.iter().zip(&captured) {
        let v4: Vec<_> = frames
            .iter()
            .filter(|f| f.len() >= 14 && matches!(f[12..14], [0x08, 0x00] | [0x08, 0x06]))
            .collect();
        assert!(
            v4.is_empty(),
            "{} IPv4/ARP frames of {} on {port}, first: {:02x?}",
            v4.len(),
            frames.len(),
            v4[0]
        );
    }

    // h1's port: the echo requests out, the replies back, VXLAN over IPv6.
    let frames = &captured[0];
    let vx: Vec<Vxlan6Frame> = frames
        .iter()
        .filter_map(|f| traffic::parse_vxlan6(f, 4789))
        .collect();
    let out: Vec<_> = vx.iter().filter(|v| v.outer_src == h1).collect();
    let back: Vec<_> = vx.iter().filter(|v| v.outer_src == h2).collect();
    assert!(
        out.len() >= 6 && back.len() >= 6,
        "captured {} VXLAN/IPv6 frames of {} ({} out, {} back)",
        vx.len(),
        frames.len(),
        out.len(),
        back.len()
    );
    let vni = RED.to_be_bytes();
    let header = [0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    for (v, src_mac, dst_mac, dst) in out
        .iter()
        .map(|v| (v, mac1, mac2, h2))
        .chain(back.iter().map(|v| (v, mac2, mac1, h1)))
    {
        // Outer Ethernet from the sender's ul0 to the peer's (on-link next hop).
        assert_eq!((v.src_mac, v.dst_mac), (src_mac, dst_mac), "outer MACs");
        assert_eq!(v.version_class_flow >> 28, 6, "IPv6");
        assert_eq!(v.outer_dst, dst);
        assert_eq!(
            v.payload_len as usize, v.captured_payload,
            "IPv6 payload length"
        );
        assert_eq!(v.udp_len, v.payload_len, "UDP length");
        assert_eq!(v.hop_limit, 64, "hop limit as sent (no router between)");
        assert_eq!(v.udp_dst, 4789);
        assert!(
            v.udp_src >= 49152,
            "source port {} outside the dynamic range",
            v.udp_src
        );
        assert_eq!(
            v.udp_checksum, 0,
            "outer UDP checksum over IPv6 (zero, RFC 6935)"
        );
        assert_eq!(v.header, header, "I flag only, red's VNI, reserved bytes 0");
        assert_eq!((v.flags, v.vni), (0x08, RED));
    }

    // Inner frames intact: Ethernet from ra to rc, an ICMP echo request over IPv4 or an
    // ICMPv6 one, with valid checksums.
    let (mut inner4, mut inner6) = (BTreeSet::new(), BTreeSet::new());
    for v in &out {
        let inner = &v.inner;
        assert_eq!(&inner[0..6], &rc.mac.0);
        assert_eq!(&inner[6..12], &ra.mac.0);
        let ip = &inner[14..];
        match [inner[12], inner[13]] {
            [0x08, 0x00] => {
                assert_eq!(&ip[12..16], &ra.ip.octets());
                assert_eq!(&ip[16..20], &rc.ip.octets());
                assert_eq!(ip[9], 1, "ICMP");
                assert_eq!(traffic::checksum(&ip[..20]), 0, "inner IPv4 checksum");
                let len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
                assert_eq!(traffic::checksum(&ip[20..len]), 0, "inner ICMP checksum");
                assert_eq!(inner.len(), 14 + len, "inner frame length");
                inner4.insert(v.udp_src);
            }
            [0x86, 0xdd] => {
                assert_eq!(ip[0] >> 4, 6);
                assert_eq!(&ip[8..24], &ra.ip6().octets());
                assert_eq!(&ip[24..40], &rc.ip6().octets());
                assert_eq!(ip[6], frames6::NH_ICMPV6);
                let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
                assert_eq!(inner.len(), 14 + 40 + len, "inner frame length");
                let icmp = &ip[40..40 + len];
                assert_eq!(icmp[0], 128, "ICMPv6 echo request");
                assert_eq!(
                    frames6::checksum6(ra.ip6(), rc.ip6(), frames6::NH_ICMPV6, icmp),
                    0,
                    "inner ICMPv6 checksum"
                );
                inner6.insert(v.udp_src);
            }
            other => panic!("inner ethertype {other:02x?} from ra to rc"),
        }
    }
    // Both families crossed; one flow, one outer source port (ECMP keeps it on one path).
    assert_eq!(inner4.len(), 1, "outer source ports of the IPv4 flow");
    assert_eq!(inner6.len(), 1, "outer source ports of the IPv6 flow");
}

#[test]
fn large_tcp_transfers_over_an_ipv6_underlay_keep_their_checksum() {
    let t = three_hosts();
    let (ra, rb, rc, rd) = (
        t.container("ra"),
        t.container("rb"),
        t.container("rc"),
        t.container("rd"),
    );
    const SIZE: u64 = 128 << 20;
    let encap0 = t.counters(0).traffic(Direction::EncapTx).bytes;
    // The kernel segments these GSO packets as UDP tunnel packets: the receivers take every
    // segment with its zero outer checksum.
    for (from, to, dst, port, what) in [
        (ra, rc, IpAddr::V4(rc.ip), 5001, "IPv4 h1 -> h2"),
        (rc, ra, IpAddr::V4(ra.ip), 5002, "IPv4 h2 -> h1"),
        (ra, rd, IpAddr::V6(rd.ip6()), 5003, "IPv6 h1 -> h3"),
        (rd, ra, IpAddr::V6(ra.ip6()), 5004, "IPv6 h3 -> h1"),
        (rb, ra, IpAddr::V4(ra.ip), 5005, "same host"),
    ] {
        let (sent, got) = traffic::tcp_transfer(&to.ns, &from.ns, dst, port, SIZE);
        assert_eq!(sent, got, "{what}");
        assert_eq!(got.bytes, SIZE, "{what}");
    }
    let encapsulated = t.counters(0).traffic(Direction::EncapTx).bytes - encap0;
    assert!(
        encapsulated >= 2 * SIZE,
        "h1 encapsulated {encapsulated} bytes for its two outgoing transfers"
    );
    t.assert_no_encap_failures(3);
}

#[test]
fn forged_vxlan_over_ipv6_never_reaches_a_container() {
    let t = three_hosts();
    let (ra, bb, rc) = (t.container("ra"), t.container("bb"), t.container("rc"));
    let h1_vtep = vtep6(&t, 0);
    let (ra_ip, ra_mac, bb_ip, bb_mac) = (ra.ip, ra.mac.0, bb.ip, bb.mac.0);
    let (rc_ip, rc_mac) = (rc.ip, rc.mac.0);
    // A stranger on the underlay: an address of its subnet that is no VTEP.
    let stranger = t.underlay_node("fg", IpAddr::V6(underlay_ip6(0xf0)));

    let listener = traffic::udp_receive(&ra.ns, 7001, Duration::from_secs(3));
    let before = t.counters(0);
    // A UDP socket over IPv6 to h1's VTEP (the kernel fills in the checksum, as a sender
    // that does not zero it would).
    let send = |ns: &Netns, vni: u32, flags: u8, inner: Vec<u8>| {
        traffic::udp_send(
            ns,
            h1_vtep,
            4789,
            traffic::vxlan_payload(vni, flags, &inner),
        );
    };
    let h2 = &t.hosts[1].ns;
    let frame = |src_mac: [u8; 6], src_ip: Ipv4Addr| {
        traffic::inner_udp_frame(src_mac, ra_mac, src_ip, ra_ip, 7001, b"x")
    };
    // From a real VTEP (h2), blue's VNI, addressed to red's ra.
    send(h2, BLUE, 0x08, frame(bb_mac, bb_ip));
    // Red's VNI, to ra, but from blue's bb (a source that is not red's).
    send(h2, RED, 0x08, frame(bb_mac, bb_ip));
    // Red's VNI and a red source that lives on h2, but a forged source IP.
    send(
        h2,
        RED,
        0x08,
        frame(rc_mac, "198.19.90.200".parse().unwrap()),
    );
    // A VNI nobody uses, and a header without the I flag.
    send(h2, 999, 0x08, frame(rc_mac, rc_ip));
    send(h2, RED, 0x00, frame(rc_mac, rc_ip));
    // From the stranger: a well-formed frame from rc to ra, over IPv4 and over IPv6.
    send(&stranger, RED, 0x08, frame(rc_mac, rc_ip));
    send(
        &stranger,
        RED,
        0x08,
        frames6::udp6_frame(rc_mac, ra_mac, rc.ip6(), ra.ip6(), 7001, b"x"),
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
    assert_eq!(
        delta(DropReason::UnknownVtep),
        2,
        "VXLAN from an underlay address that is no VTEP"
    );

    // The legitimate form of the same packet, from h2's VTEP, is delivered.
    let listener = traffic::udp_receive(&ra.ns, 7002, Duration::from_secs(2));
    send(
        h2,
        RED,
        0x08,
        traffic::inner_udp_frame(rc_mac, ra_mac, rc_ip, ra_ip, 7002, b"hello"),
    );
    assert_eq!(listener.join().unwrap(), vec![b"hello".to_vec()]);
}

/// The names of host `host`'s pinned links.
fn pinned_links(t: &Topology, host: usize) -> Vec<String> {
    let mut links: Vec<String> = std::fs::read_dir(t.hosts[host].pins.links())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    links.sort();
    links
}

#[test]
fn restarting_daemons_keeps_running_flows_over_an_ipv6_underlay() {
    let mut t = three_hosts();
    let links_before = [pinned_links(&t, 0), pinned_links(&t, 1)];
    assert!(
        links_before[0].iter().any(|l| !l.starts_with("sock-")),
        "no datapath links pinned on h1: {:?}",
        links_before[0]
    );
    // One flow over IPv4 (h1 -> h2) and one over IPv6 (h1 -> h3).
    let flows: Vec<_> = [("rc", false, 5005), ("rd", true, 5006)]
        .into_iter()
        .map(|(server, ipv6, port)| {
            let (ra, s) = (t.container("ra"), t.container(server));
            let (ra_ns, s_ns) = (ra.ns.name().to_owned(), s.ns.name().to_owned());
            let ip = if ipv6 {
                IpAddr::V6(s.ip6())
            } else {
                IpAddr::V4(s.ip)
            };
            std::thread::spawn(move || {
                // Re-open the namespaces by name: the topology stays owned by the test thread.
                let server = Netns::open(&s_ns);
                let client = Netns::open(&ra_ns);
                traffic::tcp_stream(
                    &server,
                    &client,
                    ip,
                    port,
                    Limit::Duration(Duration::from_secs(20)),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    // Graceful restart of h1's daemon, then a crash and restart of h2's.
    t.restart_two_daemons();
    for (flow, what) in flows.into_iter().zip(["IPv4 ra -> rc", "IPv6 ra -> rd"]) {
        let (sent, got) = flow.join().expect("the flow survived the restarts");
        assert_eq!(sent, got, "{what}");
        assert!(got.bytes > 0, "{what}");
    }
    // Restarts re-used the pins: the same links, nothing added or duplicated.
    assert_eq!(
        [pinned_links(&t, 0), pinned_links(&t, 1)],
        links_before,
        "pinned links of h1 and h2 before and after the restarts"
    );
}

/// A router on the IPv6 underlay at `ip` (its own namespace, bridged like a host),
/// forwarding IPv6.
fn underlay_router6(t: &Topology, ip: Ipv6Addr) -> Netns {
    let r = t.underlay_node("rt", IpAddr::V6(ip));
    r.sysctl("net/ipv6/conf/all/forwarding", "1");
    r
}

/// IPv6 datagrams a namespace has forwarded (`Ip6OutForwDatagrams` of its /proc/net/snmp6).
fn forwarded6(ns: &Netns) -> u64 {
    ns.snmp6("Ip6OutForwDatagrams")
        .expect("Ip6OutForwDatagrams")
}

/// Each IPv6 VTEP's underlay next hop is pinned from the host's IPv6 routes and follows
/// their changes: a /128 host route via a router moves the traffic through the router,
/// removing it moves it back, and a multipath route is left to the kernel per packet.
#[test]
fn underlay_ipv6_next_hops_follow_route_changes() {
    let mut t = Topology::new(
        TopologySpec::new(2)
            .with_etcd(10)
            .with_ipv6_underlay()
            .network6("red", RED, RED4, RED6),
    );
    t.start_all(&[]);
    t.add_pod(0, "a", "red");
    t.add_pod(1, "b", "red");
    for host in 0..2 {
        t.wait_converged(host);
    }
    // (etcd is at ::fe.)
    let gw = underlay_ip6(0xfd);
    let router = underlay_router6(&t, gw);
    let (h1, h2_vtep) = (&t.hosts[0].ns, t.hosts[1].underlay_ip);
    // h1 keeps its own routes: the router's ICMPv6 redirects (it forwards out the link it
    // received on) must not teach h1 the direct path.
    h1.sysctl("net/ipv6/conf/ul0/accept_redirects", "0");
    let (a, b) = (t.container("a"), t.container("b"));
    let ping_both = |count: u32, what: &str| {
        assert!(traffic::ping(&a.ns, b.ip, count), "a -> b {what}");
        assert!(
            traffic::ping(&a.ns, b.ip6(), count),
            "a -> b over IPv6 {what}"
        );
    };

    // On-link: the VTEP is its own next hop.
    wait_next_hop(&t, 0, h2_vtep, Some(h2_vtep));
    ping_both(3, "direct");

    // Via the router: pinned to it, and the echo requests really pass through it.
    let route = format!("{h2_vtep}/128");
    let gw_s = gw.to_string();
    h1.ip(&["-6", "route", "add", &route, "via", &gw_s, "dev", "ul0"]);
    wait_next_hop(&t, 0, h2_vtep, Some(IpAddr::V6(gw)));
    // The first packets wait for neighbour discovery of the new router (a busy machine
    // may lose one): the path works within seconds, then every packet takes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !traffic::ping(&a.ns, b.ip, 1) && Instant::now() < deadline {}
    let before = forwarded6(&router);
    ping_both(5, "via the router");
    assert!(
        forwarded6(&router) >= before + 10,
        "the router forwarded {} of 10 echo requests",
        forwarded6(&router) - before
    );

    // Route removed: back to the direct path, the router sees nothing.
    h1.ip(&["-6", "route", "del", &route]);
    wait_next_hop(&t, 0, h2_vtep, Some(h2_vtep));
    let before = forwarded6(&router);
    ping_both(5, "direct again");
    assert_eq!(forwarded6(&router), before, "the router still forwards");

    // Multipath: no single next hop stands for it; the kernel routes each packet.
    h1.ip(&[
        "-6",
        "route",
        "add",
        &route,
        "nexthop",
        "via",
        &gw_s,
        "dev",
        "ul0",
        "nexthop",
        "via",
        &h2_vtep.to_string(),
        "dev",
        "ul0",
    ]);
    wait_next_hop(&t, 0, h2_vtep, None);
    ping_both(5, "over a multipath route");
    h1.ip(&["-6", "route", "del", &route]);
    wait_next_hop(&t, 0, h2_vtep, Some(h2_vtep));
}
