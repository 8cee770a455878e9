//! Dual-stack networks across three namespace hosts with real etcd and real daemons: every
//! container gets an IPv4 and an IPv6 address from per-node blocks, IPv6 crosses hosts
//! (ping6, 128 MiB both ways with equal SHA-256), neighbour discovery never leaves a host,
//! networks stay apart, forged sources and advertisements are dropped with their reasons,
//! forged VXLAN carrying IPv6 reaches nobody, and path-MTU discovery works over IPv6.

use std::{collections::BTreeSet, net::Ipv6Addr, time::Duration};

use ipnet::Ipv6Net;
use overlay_common::{Direction, DropReason};
use overlay_tests::{frames6, traffic, workload::Pinger, Netns, Topology, TopologySpec};

const RED6: &str = "2001:2:0:1080::/64";
const BLUE6: &str = "2001:2:0:1081::/64";

fn dual_stack_cluster() -> Topology {
    let spec = TopologySpec::new(3)
        .with_etcd(10)
        .network6("red", 100, "198.19.80.0/24", RED6)
        .network6("blue", 200, "198.19.81.0/24", BLUE6);
    let mut t = Topology::new(spec);
    t.start_all(&[]);
    t.add_pod(0, "a", "red");
    t.add_pod(1, "b", "red");
    t.add_pod(2, "c", "red");
    t.add_pod(1, "d", "blue");
    for host in 0..3 {
        t.wait_converged(host);
    }
    t
}

#[test]
fn dual_stack_containers_talk_over_ipv6_across_hosts() {
    let t = dual_stack_cluster();
    let (a, b, c, d) = (
        t.container("a"),
        t.container("b"),
        t.container("c"),
        t.container("d"),
    );
    // Both families, from the network's subnets, one IPv6 block per node.
    let red: Ipv6Net = RED6.parse().unwrap();
    for x in [a, b, c] {
        let v6 = x.ipv6.expect("a dual-stack endpoint has an IPv6 address");
        assert!(red.contains(&v6.ip), "{} not in {red}", v6.ip);
        assert_eq!(v6.gateway, "2001:2:0:1080::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.prefix_len, 64);
    }
    let blocks: BTreeSet<_> = [a, b, c]
        .iter()
        .map(|x| Ipv6Net::new(x.ip6(), 96).unwrap().trunc())
        .collect();
    assert_eq!(blocks.len(), 3, "each node allocates from its own block");
    let listed = t.overlayctl_ok(0, &["network", "ls"]);
    assert!(listed.contains(RED6), "{listed}");

    let capture = traffic::capture(&t.hosts[0].ns, "ul0", Duration::from_secs(12));
    assert!(traffic::ping(&a.ns, b.ip6(), 3), "ping6 a -> b");
    assert!(traffic::ping(&a.ns, c.ip6(), 3), "ping6 a -> c");
    assert!(traffic::ping(&c.ns, a.ip6(), 3), "ping6 c -> a");
    // IPv4 still works beside it.
    assert!(traffic::ping(&a.ns, b.ip, 2), "ping a -> b over IPv4");
    for (from, to) in [(a, b), (b, a)] {
        let (sent, received) = traffic::tcp_transfer(&to.ns, &from.ns, to.ip6(), 5201, 128 << 20);
        assert_eq!(
            sent, received,
            "128 MiB over IPv6 {} -> {}",
            from.name, to.name
        );
        assert_eq!(sent.bytes, 128 << 20);
    }
    let frames = capture.join().unwrap();
    let (ipv6, ndp) = frames6::inner_ipv6(&frames);
    assert!(
        ipv6 > 1000,
        "IPv6 crossed the underlay in VXLAN ({ipv6} frames)"
    );
    assert_eq!(ndp, 0, "neighbour discovery crossed the underlay");
    assert!(t.counters(0).traffic(Direction::NdpReply).packets > 0);

    // Networks stay apart: red's a cannot reach blue's d, over either family.
    assert!(
        !traffic::ping(&a.ns, d.ip6(), 2),
        "red reached blue over IPv6"
    );
    assert!(!traffic::ping(&a.ns, d.ip, 1), "red reached blue over IPv4");
}

#[test]
fn forged_ipv6_sources_advertisements_and_vxlan_are_dropped() {
    let t = dual_stack_cluster();
    let (a, b) = (t.container("a"), t.container("b"));
    let before = t.counters(0);

    // The container takes another address and sends from it (b's neighbour entry learnt
    // first: a solicitation from that address would itself be dropped as spoofed_ndp).
    assert!(traffic::ping(&a.ns, b.ip6(), 1));
    let forged: Ipv6Addr = "2001:2:0:1080::dead".parse().unwrap();
    a.ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{forged}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    let out = a.ns.output(
        "ping",
        &[
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            &forged.to_string(),
            &b.ip6().to_string(),
        ],
    );
    assert!(!out.status.success(), "a spoofed IPv6 source got through");
    a.ns.ip(&["-6", "addr", "del", &format!("{forged}/64"), "dev", "eth0"]);
    let spoofed_ip6 = t.counters(0).drops(DropReason::SpoofedIp6).packets
        - before.drops(DropReason::SpoofedIp6).packets;
    // (Its solicitations from that address were dropped as spoofed_ndp too.)
    let before = t.counters(0);
    // A hijack attempt: advertisements naming b's address with a's MAC, sent to c (on
    // another host) from a's own address, plainly and hidden behind a hop-by-hop header
    // (which c's kernel would process). c keeps b's real MAC.
    let c = t.container("c");
    assert!(traffic::ping(&c.ns, b.ip6(), 1), "c learns b");
    let mut rest = vec![0x20, 0, 0, 0];
    rest.extend_from_slice(&b.ip6().octets());
    rest.extend_from_slice(&[2, 1]);
    rest.extend_from_slice(&a.mac.0);
    let na = frames6::icmp6(a.ip6(), c.ip6(), frames6::ND_NEIGHBOR_ADVERT, 0, &rest);
    let plain = frames6::ipv6_frame(
        a.mac.0,
        c.mac.0,
        a.ip6(),
        c.ip6(),
        frames6::NH_ICMPV6,
        255,
        &na,
    );
    let mut hidden = vec![frames6::NH_ICMPV6, 0, 1, 4, 0, 0, 0, 0];
    hidden.extend_from_slice(&na);
    let hidden = frames6::ipv6_frame(
        a.mac.0,
        c.mac.0,
        a.ip6(),
        c.ip6(),
        frames6::NH_HOP_BY_HOP,
        255,
        &hidden,
    );
    traffic::send_frame(&a.ns, "eth0", plain);
    traffic::send_frame(&a.ns, "eth0", hidden);
    std::thread::sleep(Duration::from_millis(300));
    let neigh =
        c.ns.output("ip", &["-6", "neigh", "show", &b.ip6().to_string()]);
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_lowercase();
    assert!(
        neigh.contains(&b.mac.to_string().to_lowercase()),
        "c's neighbour entry for b: {neigh}"
    );
    assert!(traffic::ping(&c.ns, b.ip6(), 2), "c still reaches b");
    let after = t.counters(0);
    let delta = |r: DropReason| after.drops(r).packets - before.drops(r).packets;
    assert!(spoofed_ip6 >= 2, "spoofed_ip6 {spoofed_ip6}");
    assert_eq!(delta(DropReason::SpoofedNdp), 1, "the plain advertisement");
    assert_eq!(delta(DropReason::Ipv6HiddenNdp), 1, "the hidden one");

    // VXLAN carrying IPv6 from an underlay address that is no VTEP, and from a real VTEP
    // with a source that is not the endpoint's: nothing reaches b.
    let sniff = traffic::capture(&b.ns, "eth0", Duration::from_secs(3));
    let h2_before = t.counters(1);
    let inner = frames6::udp6_frame(a.mac.0, b.mac.0, a.ip6(), b.ip6(), 7001, b"forged");
    let spoofed = frames6::udp6_frame(a.mac.0, b.mac.0, forged, b.ip6(), 7001, b"forged");
    t.underlay
        .run("ip", &["addr", "add", "198.18.0.250/24", "dev", "br0"]);
    traffic::udp_send(
        &t.underlay,
        t.hosts[1].vtep_ip,
        4789,
        traffic::vxlan_payload(100, 0x08, &inner),
    );
    traffic::udp_send(
        &t.hosts[0].ns,
        t.hosts[1].vtep_ip,
        4789,
        traffic::vxlan_payload(100, 0x08, &spoofed),
    );
    let got = sniff.join().unwrap();
    assert!(
        !got.iter().any(|f| f.windows(6).any(|w| w == b"forged")),
        "forged VXLAN reached b"
    );
    let h2_after = t.counters(1);
    let delta = |r: DropReason| h2_after.drops(r).packets - h2_before.drops(r).packets;
    assert_eq!(delta(DropReason::UnknownVtep), 1);
    assert_eq!(delta(DropReason::DecapSpoofedSource), 1);

    // The hijack over the underlay: from a real VTEP, in a's name (its address and MAC, so
    // every source check passes), an advertisement telling b that c is at a's MAC, plainly
    // and behind a hop-by-hop header. Discovery never crosses the underlay: both dropped.
    let mut rest = vec![0x20, 0, 0, 0];
    rest.extend_from_slice(&c.ip6().octets());
    rest.extend_from_slice(&[2, 1]);
    rest.extend_from_slice(&a.mac.0);
    let na = frames6::icmp6(a.ip6(), b.ip6(), frames6::ND_NEIGHBOR_ADVERT, 0, &rest);
    let mut hidden = vec![frames6::NH_ICMPV6, 0, 1, 4, 0, 0, 0, 0];
    hidden.extend_from_slice(&na);
    let h2_before = t.counters(1);
    for (next, body) in [(frames6::NH_ICMPV6, &na), (frames6::NH_HOP_BY_HOP, &hidden)] {
        let inner = frames6::ipv6_frame(a.mac.0, b.mac.0, a.ip6(), b.ip6(), next, 255, body);
        traffic::udp_send(
            &t.hosts[0].ns,
            t.hosts[1].vtep_ip,
            4789,
            traffic::vxlan_payload(100, 0x08, &inner),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let h2_after = t.counters(1);
    let delta = |r: DropReason| h2_after.drops(r).packets - h2_before.drops(r).packets;
    assert_eq!(
        delta(DropReason::SpoofedNdp),
        1,
        "the plain advertisement in VXLAN"
    );
    assert_eq!(
        delta(DropReason::Ipv6HiddenNdp),
        1,
        "the hidden one in VXLAN"
    );
    let neigh =
        b.ns.output("ip", &["-6", "neigh", "show", &c.ip6().to_string()]);
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_lowercase();
    assert!(
        !neigh.contains(&a.mac.to_string().to_lowercase()),
        "b's neighbour entry for c: {neigh}"
    );
}

#[test]
fn a_packet_too_big_gets_packet_too_big_and_the_ipv6_transfer_completes() {
    let t = dual_stack_cluster();
    let (a, b) = (t.container("a"), t.container("b"));
    // The containers' MTUs are raised above what the overlay carries (1450 on a 1500
    // underlay), at both ends, so TCP's MSS does not keep segments small.
    for x in [a, b] {
        x.ns.ip(&["link", "set", "eth0", "mtu", "1500"]);
        t.hosts[x.host]
            .ns
            .ip(&["link", "set", &x.host_ifname, "mtu", "1500"]);
    }
    let before = t.counters(0).traffic(Direction::Icmp6TooBig).packets;
    let (sent, received) = traffic::tcp_transfer(&b.ns, &a.ns, b.ip6(), 5202, 16 << 20);
    assert_eq!(
        sent, received,
        "16 MiB over IPv6 with the container MTU too large"
    );
    assert!(
        t.counters(0).traffic(Direction::Icmp6TooBig).packets > before,
        "the transfer never met the overlay's MTU"
    );
    let route =
        a.ns.output("ip", &["-6", "route", "get", &b.ip6().to_string()]);
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("mtu 1450"), "path MTU not learnt: {route}");
}

#[test]
fn ipv6_keeps_flowing_across_daemon_restarts_and_the_claims_stay() {
    let mut t = dual_stack_cluster();
    let (a, b, c) = (t.container("a"), t.container("b"), t.container("c"));
    let paths = vec![
        ("a -> b".to_owned(), Netns::open(a.ns.name()), b.ip6()),
        ("c -> a".to_owned(), Netns::open(c.ns.name()), a.ip6()),
    ];
    let claims = |t: &Topology| {
        t.etcd
            .as_ref()
            .unwrap()
            .keys("/overlay/v1/endpoints6/")
            .len()
    };
    assert_eq!(claims(&t), 4);
    let pinger = Pinger::start(paths);
    for host in [0, 2] {
        assert!(t.stop_daemon(host, nix::sys::signal::Signal::SIGTERM));
        std::thread::sleep(Duration::from_secs(1));
        t.start_daemon(host, &[]);
        t.wait_converged(host);
    }
    std::thread::sleep(Duration::from_secs(1));
    for p in pinger.stop() {
        assert!(p.sent >= 10, "{p:?}");
        assert_eq!(p.lost, 0, "IPv6 lost across restarts: {p:?}");
    }
    assert_eq!(claims(&t), 4, "the IPv6 claims stay with their endpoints");
    let (a, b) = (t.container("a"), t.container("b"));
    let (sent, received) = traffic::tcp_transfer(&b.ns, &a.ns, b.ip6(), 5203, 8 << 20);
    assert_eq!(sent, received);
}

/// A node whose etcd lease is revoked (as when etcd expired it during an outage) registers
/// again and publishes its endpoints with their IPv6 claims under the new lease: the same
/// addresses, no claim lost or doubled, and IPv6 reaches its container again.
#[test]
fn ipv6_claims_come_back_under_a_new_lease() {
    let t = dual_stack_cluster();
    let etcd = t.etcd.as_ref().unwrap();
    let (a, b) = (t.container("a"), t.container("b"));
    let b6 = b.ip6();
    let key = format!("/overlay/v1/endpoints6/red/{b6}");
    let lease_of = |key: &str| -> Option<i64> {
        let out = etcd.ctl_ok(&["get", key, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        v["kvs"][0]["lease"].as_i64()
    };
    let old = lease_of(&key).expect("b's IPv6 claim has a lease");
    let before = etcd.keys("/overlay/v1/endpoints6/");
    assert_eq!(before.len(), 4, "{before:?}");
    etcd.ctl_ok(&["lease", "revoke", &format!("{old:x}")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = lease_of(&key);
        if now.is_some_and(|l| l != old) && etcd.keys("/overlay/v1/endpoints6/") == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "claims after the revoke: {:?}, lease {now:?}\n{}",
            etcd.keys("/overlay/v1/endpoints6/"),
            t.daemon_log(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let eps = t.overlayctl_ok(0, &["endpoint", "ls"]);
    assert!(eps.contains(&b6.to_string()), "{eps}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !traffic::ping(&a.ns, b6, 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "a cannot reach b over IPv6 after b's node registered again"
        );
    }
}

/// A container on two networks (a dual-stack one and an IPv4-only one): both interfaces
/// come up, each family reaches its peers, and the second network's default route does not
/// fail the ADD.
#[test]
fn a_container_on_a_dual_stack_and_an_ipv4_network() {
    let spec = TopologySpec::new(2)
        .with_etcd(10)
        .network6("red", 100, "198.19.80.0/24", RED6)
        .network("green", 300, "198.19.82.0/24");
    let mut t = Topology::new(spec);
    t.start_all(&[]);
    t.add_pod(1, "peer6", "red");
    t.add_pod(1, "peer4", "green");
    let ns = Netns::create(&format!("ovt{}-multi", t.id));
    let mut ips = Vec::new();
    for (network, ifname) in [("red", "eth0"), ("green", "eth1")] {
        let req = overlay_api::EndpointRequest {
            network: network.into(),
            container_id: format!("{}-multi", t.id),
            netns: ns.path().into(),
            ifname: ifname.into(),
            ..Default::default()
        };
        let ep = t
            .client(0)
            .create_endpoint(req)
            .unwrap_or_else(|e| panic!("{network}/{ifname}: {e}\n{}", t.daemon_log(0)));
        assert_eq!(ep.ipv6.is_some(), network == "red", "{ep:?}");
        ips.push(ep);
    }
    for host in 0..2 {
        t.wait_status(host, "4 endpoints", |s| s["endpoints"] == 4);
    }
    let (peer6, peer4) = (t.container("peer6"), t.container("peer4"));
    assert!(traffic::ping(&ns, peer6.ip6(), 2), "IPv6 over eth0");
    assert!(traffic::ping(&ns, peer6.ip, 2), "IPv4 over eth0");
    assert!(traffic::ping(&ns, peer4.ip, 2), "IPv4 over eth1");
    for ep in &ips {
        t.client(0)
            .delete_endpoint(&ep.container_id, &ep.ifname)
            .expect("delete");
    }
}

/// The host reaches its own containers by their addresses, both families (what the
/// kubelet's probes and host-network processes do); the replies, sent through the gateway to
/// the host's addresses, are handed to the host's stack and counted.
#[test]
fn the_host_reaches_its_own_containers_over_both_families() {
    let mut t = dual_stack_cluster();
    // The test hosts run with IPv6 off (`a` was made so: its host has no IPv6 route to it,
    // and it was made all the same); a host with IPv6 and an address of its own:
    let host = t.hosts[0].ns.name().to_owned();
    for conf in ["all", "default"] {
        t.hosts[0]
            .ns
            .sysctl(&format!("net/ipv6/conf/{conf}/disable_ipv6"), "0");
    }
    t.hosts[0]
        .ns
        .ip(&["-6", "addr", "add", "2001:2:0:10ff::1/128", "dev", "lo"]);
    t.add_pod(0, "e", "red");
    for h in 0..3 {
        t.wait_converged(h);
    }
    let (host, a) = (&Netns::open(&host), t.container("e"));
    let before = t.counters(0).traffic(Direction::ToHost).packets;
    assert!(traffic::ping(host, a.ip, 3), "host -> a over IPv4");
    assert!(traffic::ping(host, a.ip6(), 3), "host -> a over IPv6");
    let to_host = t.counters(0).traffic(Direction::ToHost).packets - before;
    assert!(
        to_host >= 6,
        "the replies went to the host's stack: {to_host}"
    );
}
