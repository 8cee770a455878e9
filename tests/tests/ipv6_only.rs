//! IPv6-only networks (no IPv4 subnet) across three namespace hosts with real etcd and real
//! daemons: containers get an IPv6 address only (from per-node blocks, named by it in etcd),
//! talk across hosts (ping6, 128 MiB both ways with equal SHA-256) without neighbour
//! discovery on the underlay, stay apart from other networks, and can send no IPv4: a
//! container's IPv4 and ARP, and VXLAN carrying IPv4 in its name, are dropped as
//! `ipv4_disabled`. The real CNI plugin answers IPv6 only; many endpoints get distinct
//! addresses and MACs, and their keys go with them.

use std::{
    collections::BTreeSet,
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use ipnet::Ipv6Net;
use overlay_common::DropReason;
use overlay_tests::{
    cni::{self, conf},
    frames6, lb,
    services::tcp_identity_server6,
    traffic, Netns, Topology, TopologySpec,
};

const SIX: &str = "2001:2:0:1090::/64";
const BLUE6: &str = "2001:2:0:1091::/64";

fn cluster() -> Topology {
    let spec = TopologySpec::new(3)
        .with_etcd(10)
        .network6_only("six", 300, SIX)
        .network6("blue", 200, "198.19.91.0/24", BLUE6);
    let mut t = Topology::new(spec);
    t.start_all(&[]);
    t.add_pod(0, "a", "six");
    t.add_pod(1, "b", "six");
    t.add_pod(2, "c", "six");
    t.add_pod(1, "d", "blue");
    for host in 0..3 {
        t.wait_converged(host);
    }
    t
}

fn endpoint_keys(t: &Topology, network: &str) -> Vec<String> {
    let etcd = t.etcd.as_ref().expect("etcd topology");
    etcd.keys(&format!("/overlay/v1/endpoints/{network}/"))
}

#[test]
fn ipv6_only_containers_talk_across_hosts_and_send_no_ipv4() {
    let t = cluster();
    let (a, b, c, d) = (
        t.container("a"),
        t.container("b"),
        t.container("c"),
        t.container("d"),
    );
    // IPv6 only, from the network's subnet, one block per node, one MAC each.
    let six: Ipv6Net = SIX.parse().unwrap();
    for x in [a, b, c] {
        let ep = t
            .client(x.host)
            .get_endpoint(&format!("{}-{}", t.id, x.name), "eth0")
            .unwrap();
        assert_eq!(ep.ipv4, None, "{}: {ep:?}", x.name);
        let v6 = ep.ipv6.expect("an IPv6 address");
        assert!(six.contains(&v6.ip), "{} not in {six}", v6.ip);
        assert_eq!(v6.gateway, "2001:2:0:1090::1".parse::<Ipv6Addr>().unwrap());
        assert!(
            ep.mac.is_unicast() && ep.mac.0[..2] == [0x0e, 0x58],
            "{}",
            ep.mac
        );
        let v4 = x.ns.output("ip", &["-4", "addr", "show", "dev", "eth0"]);
        assert!(
            !String::from_utf8_lossy(&v4.stdout).contains("inet "),
            "{} has an IPv4 address",
            x.name
        );
        let routes = x.ns.output("ip", &["-4", "route", "show"]);
        assert!(routes.stdout.is_empty(), "{}: IPv4 routes", x.name);
    }
    let blocks: BTreeSet<_> = [a, b, c]
        .iter()
        .map(|x| Ipv6Net::new(x.ip6(), 96).unwrap().trunc())
        .collect();
    assert_eq!(blocks.len(), 3, "each node allocates from its own block");
    let macs: BTreeSet<_> = [a, b, c].iter().map(|x| x.mac).collect();
    assert_eq!(macs.len(), 3);
    // Named by their IPv6 address in etcd; no separate IPv6 claim.
    let keys = endpoint_keys(&t, "six");
    for x in [a, b, c] {
        assert!(
            keys.contains(&format!("/overlay/v1/endpoints/six/{}", x.ip6())),
            "{keys:?}"
        );
    }
    let etcd = t.etcd.as_ref().unwrap();
    assert!(etcd.keys("/overlay/v1/endpoints6/six/").is_empty());
    let listed = t.overlayctl_ok(0, &["network", "ls"]);
    let row = listed.lines().find(|l| l.starts_with("six")).unwrap();
    assert!(row.contains(SIX) && !row.contains('.'), "{row}");
    let eps = t.overlayctl_ok(0, &["endpoint", "ls", "--network", "six"]);
    assert!(eps.contains(&a.ip6().to_string()), "{eps}");

    let capture = traffic::capture(&t.hosts[0].ns, "ul0", Duration::from_secs(12));
    assert!(traffic::ping(&a.ns, b.ip6(), 3), "ping6 a -> b");
    assert!(traffic::ping(&a.ns, c.ip6(), 3), "ping6 a -> c");
    assert!(traffic::ping(&c.ns, a.ip6(), 3), "ping6 c -> a");
    for (from, to) in [(a, b), (b, a)] {
        let (sent, received) = traffic::tcp_transfer(&to.ns, &from.ns, to.ip6(), 5201, 128 << 20);
        assert_eq!(sent, received, "128 MiB {} -> {}", from.name, to.name);
        assert_eq!(sent.bytes, 128 << 20);
    }
    let frames = capture.join().unwrap();
    let (ipv6, ndp) = frames6::inner_ipv6(&frames);
    assert!(ipv6 > 1000, "IPv6 crossed the underlay ({ipv6} frames)");
    assert_eq!(ndp, 0, "neighbour discovery crossed the underlay");
    assert!(!traffic::ping(&a.ns, d.ip6(), 2), "six reached blue");

    // An IPv6 service on the IPv6-only network, backed by b and c on two other hosts; an
    // IPv4 VIP there is refused.
    let _servers: Vec<_> = [b, c]
        .iter()
        .map(|x| tcp_identity_server6(&x.ns, 8080, &x.name))
        .collect();
    let vip: Ipv6Addr = "2001:2:0:1290::80".parse().unwrap();
    let backends = [format!("[{}]:8080", b.ip6()), format!("[{}]:8080", c.ip6())];
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "web6",
            "--network",
            "six",
            "--vip",
            &format!("[{vip}]:80"),
            "--proto",
            "tcp",
            "--backend",
            &backends[0],
            "--backend",
            &backends[1],
        ],
    );
    let refused = t.overlayctl(
        0,
        &[
            "service",
            "add",
            "web4",
            "--network",
            "six",
            "--vip",
            "198.19.250.9:80",
            "--proto",
            "tcp",
        ],
    );
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("IPv6-only"),
        "{why}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lb::table_of(&t, 0, 300, vip.into(), 80, lb::TCP).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "web6 not installed on h1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = lb::spread(&t, "a", SocketAddr::new(vip.into(), 80), 200);
    assert_eq!(counts.values().sum::<usize>(), 200, "{counts:?}");
    assert!(
        counts.get("b") > Some(&40) && counts.get("c") > Some(&40),
        "{counts:?}"
    );

    // IPv4 from a container without an IPv4 address: it makes one up and tries. Its ARP
    // and its IPv4 (a static neighbour entry skips ARP) are dropped.
    let before = t.counters(0);
    a.ns.ip(&["addr", "add", "198.19.90.5/24", "dev", "eth0"]);
    a.ns.ip(&[
        "neigh",
        "add",
        "198.19.90.6",
        "lladdr",
        &b.mac.to_string(),
        "dev",
        "eth0",
    ]);
    assert!(!traffic::ping(
        &a.ns,
        "198.19.90.6".parse::<std::net::Ipv4Addr>().unwrap(),
        2
    ));
    let dropped = t.counters(0).drops(DropReason::Ipv4Disabled).packets
        - before.drops(DropReason::Ipv4Disabled).packets;
    assert!(dropped >= 2, "the pings: ipv4_disabled {dropped}");
    // An address probe (sender 0.0.0.0, which passes the ARP responder's checks otherwise).
    let before = t.counters(0);
    traffic::send_frame(
        &a.ns,
        "eth0",
        traffic::arp_request(
            a.mac.0,
            std::net::Ipv4Addr::UNSPECIFIED,
            "198.19.90.7".parse().unwrap(),
        ),
    );
    std::thread::sleep(Duration::from_millis(200));
    let dropped = t.counters(0).drops(DropReason::Ipv4Disabled).packets
        - before.drops(DropReason::Ipv4Disabled).packets;
    assert_eq!(dropped, 1, "the ARP probe");

    // VXLAN from a real VTEP carrying IPv4 in b's name (b has no IPv4 address; 0.0.0.0 is
    // what its entry holds): it reaches nobody.
    let sniff = traffic::capture(&c.ns, "eth0", Duration::from_secs(3));
    let h2_before = t.counters(2);
    for src in ["0.0.0.0", "198.19.90.6"] {
        let inner = traffic::inner_udp_frame(
            b.mac.0,
            c.mac.0,
            src.parse().unwrap(),
            "198.19.90.8".parse().unwrap(),
            7001,
            b"forged",
        );
        traffic::udp_send(
            &t.hosts[1].ns,
            t.hosts[2].vtep_ip,
            4789,
            traffic::vxlan_payload(300, 0x08, &inner),
        );
    }
    let got = sniff.join().unwrap();
    assert!(
        !got.iter().any(|f| f.windows(6).any(|w| w == b"forged")),
        "forged VXLAN reached c"
    );
    let dropped = t.counters(2).drops(DropReason::Ipv4Disabled).packets
        - h2_before.drops(DropReason::Ipv4Disabled).packets;
    assert_eq!(
        dropped, 2,
        "forged inner IPv4 in an IPv6-only endpoint's name"
    );
    assert!(traffic::ping(&c.ns, b.ip6(), 1), "c still reaches b");
}

#[test]
fn cni_answers_ipv6_only_and_many_endpoints_come_and_go_cleanly() {
    let mut t = Topology::new(
        TopologySpec::new(2)
            .with_etcd(10)
            .network6_only("six", 300, SIX),
    );
    t.start_all(&[]);
    t.add_pod(1, "peer", "six");
    t.wait_converged(0);
    let peer6 = t.container("peer").ip6();
    let socket = overlay_daemon::api::socket_path(&t.hosts[0].run_dir);

    for version in ["0.4.0", "1.0.0"] {
        let id = format!("{}-cni-{version}", t.id);
        let ns = Netns::create(&format!("ovt{}-c{}", t.id, version.replace('.', "")));
        let config = conf(version, "six", &socket);
        let (ok, result) = cni::run("ADD", &id, &ns, &config);
        assert!(ok, "{version} ADD: {result}");
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "{version}: IPv6 only: {result}");
        assert!(
            ips[0]["address"].as_str().unwrap().contains(':'),
            "{result}"
        );
        let routes: Vec<&str> = result["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dst"].as_str().unwrap())
            .collect();
        assert_eq!(routes, ["::/0"], "{version}");
        assert!(traffic::ping(&ns, peer6, 2), "{version}: ping6 the peer");
        let mut check = config.clone();
        check.insert_str(check.len() - 1, &format!(r#","prevResult":{result}"#));
        let (ok, out) = cni::run("CHECK", &id, &ns, &check);
        assert!(ok, "{version} CHECK: {out}");
        let (ok, out) = cni::run("DEL", &id, &ns, &config);
        assert!(ok, "{version} DEL: {out}");
    }
    assert_eq!(
        endpoint_keys(&t, "six").len(),
        1,
        "only the peer's key is left"
    );

    // Many endpoints on one network: distinct addresses and MACs, all reachable, and each
    // delete takes its key and its datapath entries with it.
    let names: Vec<String> = (0..24).map(|i| format!("m{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        t.add_pod(i % 2, name, "six");
    }
    t.wait_converged(0);
    t.wait_converged(1);
    let all: Vec<_> = names.iter().map(|n| t.container(n)).collect();
    let addrs: BTreeSet<_> = all.iter().map(|c| c.ip6()).collect();
    let macs: BTreeSet<_> = all.iter().map(|c| c.mac).collect();
    assert_eq!((addrs.len(), macs.len()), (24, 24));
    for far in all.iter().filter(|c| c.host == 1).take(4) {
        assert!(
            traffic::ping(&all[0].ns, far.ip6(), 1),
            "ping6 {}",
            far.name
        );
    }
    assert_eq!(endpoint_keys(&t, "six").len(), 25);
    for name in &names[..12] {
        let host = t.container(name).host;
        t.client(host)
            .delete_endpoint(&format!("{}-{name}", t.id), "eth0")
            .unwrap();
    }
    assert_eq!(endpoint_keys(&t, "six").len(), 13);
    for host in 0..2 {
        t.wait_status(host, "13 endpoints installed", |s| s["endpoints"] == 13);
    }
    let kept = t.container(&names[12]);
    assert!(traffic::ping(&t.container(&names[13]).ns, kept.ip6(), 1));
}
