//! Nodes whose VTEPs are of different families on one cluster, as during a move from an
//! IPv4 to an IPv6 underlay: the family each pair uses follows the symmetric rule
//! (`--vtep-prefer`), nodes sharing none are reported and leave each other alone, a node
//! switching family takes its peers along, and a container made before its node had an
//! IPv6 VTEP keeps its MTU towards IPv4 peers and learns the smaller one towards IPv6 ones.

use std::{net::IpAddr, time::Duration};

use nix::sys::signal::Signal;
use overlay_common::DropReason;
use overlay_tests::{
    topology::{ready_switch6, underlay_ip6},
    traffic::{self, Vxlan6Frame},
    Topology, TopologySpec,
};

const RED4: &str = "198.19.92.0/24";
const RED6: &str = "2001:2:0:1092::/64";

/// Gives host `host`'s underlay an IPv6 address next to its IPv4 one.
fn add_ipv6(t: &Topology, host: usize) {
    let ns = &t.hosts[host].ns;
    ns.sysctl("net/ipv6/conf/ul0/disable_ipv6", "0");
    let addr = format!("{}/64", underlay_ip6(host as u16 + 1));
    ns.ip(&["-6", "addr", "add", &addr, "dev", "ul0", "nodad"]);
}

/// VXLAN frames captured on host `host`'s switch port while `send` runs: (IPv4, IPv6).
fn vxlan_on_port(t: &Topology, host: usize, send: impl FnOnce()) -> (usize, Vec<Vxlan6Frame>) {
    let port = format!("p{}", host + 1);
    // Long enough for the pings on a loaded machine.
    let capture = traffic::capture(&t.underlay, &port, Duration::from_secs(8));
    send();
    let frames = capture.join().expect("capture");
    let v4 = frames
        .iter()
        .filter(|f| traffic::parse_vxlan(f, 4789).is_some())
        .count();
    let v6 = frames
        .iter()
        .filter_map(|f| traffic::parse_vxlan6(f, 4789))
        .collect();
    (v4, v6)
}

/// Host `host`'s VTEP table (addresses), once it is `want` (sorted).
fn wait_vteps(t: &Topology, host: usize, want: &[IpAddr]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let now = || {
        let mut v: Vec<IpAddr> = t.vteps(host).into_iter().map(|v| v.0).collect();
        v.sort();
        v
    };
    while now() != want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(now(), want, "VTEPs of host {host}");
}

/// The container MTU of `name`.
fn mtu(t: &Topology, name: &str) -> String {
    let out = t
        .container(name)
        .ns
        .ip(&["-o", "link", "show", "dev", "eth0"]);
    let mut words = out.split_whitespace().skip_while(|w| *w != "mtu");
    words.nth(1).unwrap_or_default().to_owned()
}

fn unreachable(t: &Topology, host: usize) -> Vec<String> {
    t.status(host)
        .and_then(|s| serde_json::from_value(s["unreachable"].clone()).ok())
        .unwrap_or_default()
}

#[test]
fn each_pair_uses_the_family_both_ends_have_and_switches_together() {
    let mut t = Topology::new(
        TopologySpec::new(3)
            .with_etcd(10)
            .network6("red", 100, RED4, RED6),
    );
    // Neighbour discovery between the hosts' new IPv6 addresses floods.
    ready_switch6(&t.underlay);
    for host in 0..3 {
        add_ipv6(&t, host);
    }
    let (v6_1, v6_2, v6_3) = (underlay_ip6(1), underlay_ip6(2), underlay_ip6(3));
    // h1: both, preferring IPv6; h2: IPv4 only; h3: IPv6 only (etcd stays on IPv4).
    t.start_daemon(0, &["--vtep-prefer", "ipv6"]);
    t.start_daemon(1, &["--vtep-ip", "198.18.0.2"]);
    let h3_vtep = v6_3.to_string();
    t.start_daemon(2, &["--vtep-ip", &h3_vtep]);
    for (host, name) in [(0, "a"), (1, "b"), (2, "c")] {
        t.wait_registered(host);
        t.add_pod(host, name, "red");
    }
    // h2 and h3 leave out each other's container: 2 endpoints there, 3 on h1.
    for (host, want) in [(0, 3), (1, 2), (2, 2)] {
        t.wait_status(host, &format!("{want} endpoints installed"), |s| {
            s["endpoints"].as_u64() == Some(want) && s["local_endpoints"].as_u64() == Some(1)
        });
    }
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    // h1 reaches h2 over IPv4 (h2 has no IPv6 VTEP) and h3 over IPv6; h2 and h3 share no
    // family: each reports the other and installs nothing of it.
    wait_vteps(&t, 0, &[ip("198.18.0.2"), IpAddr::V6(v6_3)]);
    wait_vteps(&t, 1, &[ip("198.18.0.1")]);
    wait_vteps(&t, 2, &[IpAddr::V6(v6_1)]);
    for (host, other) in [(1, "h3"), (2, "h2")] {
        t.wait_status(host, &format!("{other} reported unreachable"), |s| {
            s["unreachable"] == serde_json::json!([other])
        });
    }
    assert!(unreachable(&t, 0).is_empty());
    let (b_ip, c_ip, c_ip6) = (
        t.container("b").ip,
        t.container("c").ip,
        t.container("c").ip6(),
    );
    let a_ip = t.container("a").ip;
    let (v4, v6) = vxlan_on_port(&t, 0, || {
        let a = &t.container("a").ns;
        assert!(traffic::ping(a, b_ip, 3), "h1 -> h2 over IPv4");
        assert!(traffic::ping(a, c_ip, 3), "h1 -> h3 over IPv6");
        assert!(traffic::ping(a, c_ip6, 3), "h1 -> h3, IPv6 inside");
    });
    assert!(v4 >= 6, "{v4} VXLAN/IPv4 frames on h1's port");
    assert!(
        v6.iter()
            .any(|f| f.outer_src == v6_1 && f.outer_dst == v6_3)
            && v6
                .iter()
                .any(|f| f.outer_src == v6_3 && f.outer_dst == v6_1),
        "VXLAN/IPv6 between h1 and h3 both ways"
    );
    assert!(
        !traffic::ping(&t.container("b").ns, c_ip, 2),
        "h2 and h3 share no underlay family"
    );
    assert!(
        t.daemon_log(1)
            .contains("nodes with no VTEP of this node's families"),
        "h2 says why"
    );
    // Containers: 1430 where the node has an IPv6 VTEP, 1450 on the IPv4-only h2.
    assert_eq!(
        [mtu(&t, "a"), mtu(&t, "b"), mtu(&t, "c")],
        ["1430", "1450", "1430"]
    );

    // h2 restarts with an address of each family, preferring IPv4: it keeps IPv4 with h1
    // (which prefers IPv6, but both must) and reaches h3 over IPv6. Its container, made
    // with 1450, keeps 1450 towards h1 and learns 1430 towards h3.
    assert!(t.stop_daemon(1, Signal::SIGTERM), "h2 stops");
    let h2_v6 = v6_2.to_string();
    t.start_daemon(1, &["--vtep-ip", "198.18.0.2", "--vtep-ip", &h2_v6]);
    t.wait_converged(1);
    wait_vteps(&t, 0, &[ip("198.18.0.2"), IpAddr::V6(v6_3)]);
    wait_vteps(&t, 1, &[ip("198.18.0.1"), IpAddr::V6(v6_3)]);
    wait_vteps(&t, 2, &[IpAddr::V6(v6_1), IpAddr::V6(v6_2)]);
    let b = &t.container("b").ns;
    let (ok, out) = traffic::df_ping(b, a_ip, 1450 - 28, 2);
    assert!(ok, "full size towards the IPv4 peer: {out}");
    let (ok, out) = traffic::df_ping(b, c_ip, 1450 - 28, 1);
    assert!(
        !ok && out.contains("mtu = 1430"),
        "towards the IPv6 peer: {out}"
    );
    let (ok, out) = traffic::df_ping(b, c_ip, 1430 - 28, 2);
    assert!(ok, "{out}");

    // h2 restarts with both addresses, preferring IPv6: h1 and h2 move to IPv6 together.
    assert!(t.stop_daemon(1, Signal::SIGTERM), "h2 stops");
    t.start_daemon(1, &["--vtep-prefer", "ipv6"]);
    t.wait_converged(1);
    wait_vteps(&t, 0, &[IpAddr::V6(v6_2), IpAddr::V6(v6_3)]);
    wait_vteps(&t, 1, &[IpAddr::V6(v6_1), IpAddr::V6(v6_3)]);
    wait_vteps(&t, 2, &[IpAddr::V6(v6_1), IpAddr::V6(v6_2)]);
    t.wait_status(1, "h2 reaches every node", |s| {
        s.get("unreachable").is_none()
    });
    t.wait_status(2, "h3 reaches every node", |s| {
        s.get("unreachable").is_none()
    });
    let (v4, v6) = vxlan_on_port(&t, 1, || {
        let b = &t.container("b").ns;
        assert!(traffic::ping(b, a_ip, 3), "h2 -> h1");
        assert!(traffic::ping(b, c_ip, 3), "h2 -> h3");
    });
    assert_eq!(v4, 0, "no VXLAN over IPv4 left on h2's port");
    assert!(
        v6.iter()
            .any(|f| f.outer_src == v6_2 && f.outer_dst == v6_1)
            && v6
                .iter()
                .any(|f| f.outer_src == v6_2 && f.outer_dst == v6_3),
        "VXLAN/IPv6 from h2 to h1 and h3"
    );

    // b was made with MTU 1450 while h2 had IPv4 only; towards IPv6 peers 1430 fits: a
    // full-size packet with DF learns it, and the smaller one goes through.
    let b = &t.container("b").ns;
    let (ok, out) = traffic::df_ping(b, a_ip, 1450 - 28, 1);
    assert!(!ok && out.contains("mtu = 1430"), "{out}");
    let (ok, out) = traffic::df_ping(b, a_ip, 1430 - 28, 2);
    assert!(ok, "{out}");
    // Nothing is dropped as from an unknown VTEP once the pairs agree.
    let before = t.counters(0).drops(DropReason::UnknownVtep).packets;
    assert!(traffic::ping(&t.container("a").ns, b_ip, 3));
    assert_eq!(t.counters(0).drops(DropReason::UnknownVtep).packets, before);
}
