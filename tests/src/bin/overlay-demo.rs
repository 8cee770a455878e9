//! `cargo xtask demo`: a real overlay across three namespace hosts, with traffic crossing it.
//! Everything it creates is removed when it ends (also on failure or Ctrl-C of a step).
//!
//! `overlay-demo --ipv6-underlay`: the same over an IPv6-only underlay (hosts at
//! 2001:2:0:ff00::<i>, etcd at [2001:2:0:ff00::fe]:2379), VXLAN over IPv6 between the hosts;
//! the containers stay IPv4.

use std::{process::Stdio, time::Duration};

use overlay_tests::{services, traffic, ChildGuard, Topology, TopologySpec};

const USAGE: &str = "usage: overlay-demo [--ipv6-underlay]\n\n  \
    --ipv6-underlay  hosts on an IPv6-only underlay (2001:2:0:ff00::/64): VXLAN over IPv6";

fn step(title: &str) {
    println!("\n== {title}");
}

/// Whether `--ipv6-underlay` was given; exits with the usage on `--help` or anything else.
fn ipv6_underlay_arg() -> bool {
    let mut ipv6 = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--ipv6-underlay" => ipv6 = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    ipv6
}

fn main() {
    let ipv6_underlay = ipv6_underlay_arg();
    let spec = TopologySpec::new(3)
        .network("red", 100, "198.19.1.0/24")
        .network("blue", 200, "198.19.2.0/24")
        .with_etcd(5);
    let spec = if ipv6_underlay {
        step("Three hosts (network namespaces) on one IPv6-only underlay bridge, 2001:2:0:ff00::/64, and a real etcd on it");
        spec.with_ipv6_underlay()
    } else {
        step("Three hosts (network namespaces) on one underlay bridge, 198.18.0.0/24, and a real etcd on it");
        spec
    };
    let mut t = Topology::new(spec);
    for h in &t.hosts {
        println!("  {}: ul0 {}", h.name, h.underlay_ip);
    }
    println!(
        "  etcd at {}; networks created with overlayctl:",
        t.etcd.as_ref().map(|e| e.endpoint()).unwrap_or_default()
    );
    for l in t.overlayctl_ok(0, &["network", "ls"]).lines() {
        println!("    {l}");
    }

    step("Starting overlayd on every host (eBPF programs on the underlay; membership under an etcd lease)");
    for h in 0..3 {
        t.start_daemon(h, &[]);
    }
    for h in 0..3 {
        t.wait_status(h, "registered", |s| s["vteps"] == 2);
    }
    let nodes = t.overlayctl_ok(0, &["node", "ls"]);
    if ipv6_underlay {
        // Nothing but an IPv6 address on ul0: each daemon's VTEP is its host's.
        for h in &t.hosts {
            let vtep = h.underlay_ip.to_string();
            assert!(
                nodes.contains(&vtep),
                "{vtep} not in the nodes' VTEPs:\n{nodes}"
            );
        }
        println!("  every daemon registered its host's IPv6 underlay address as its VTEP:");
    }
    for l in nodes.lines() {
        println!("    {l}");
    }

    step("Containers get endpoints from the daemons (cluster IPAM, veth, eBPF attach), as a CNI plugin would ask");
    let placement = [
        (0, "web1", "red"),
        (0, "db1", "blue"),
        (1, "web2", "red"),
        (1, "db2", "blue"),
        (2, "web3", "red"),
    ];
    for (host, name, net) in placement {
        t.add_pod(host, name, net);
    }
    for h in 0..3 {
        t.wait_converged(h);
    }
    for l in t.overlayctl_ok(0, &["endpoint", "ls"]).lines() {
        println!("    {l}");
    }
    // The MTU the daemon gave the containers: the underlay's 1500 less what encapsulation
    // adds (50 bytes over IPv4, 70 over IPv6).
    let link = t
        .container("web1")
        .ns
        .run("ip", &["-o", "link", "show", "dev", "eth0"]);
    if let Some(mtu) = link.split_whitespace().skip_while(|w| *w != "mtu").nth(1) {
        println!(
            "  container MTU {mtu} (underlay 1500 less the {} bytes of VXLAN over IPv{})",
            if ipv6_underlay { 70 } else { 50 },
            if ipv6_underlay { 6 } else { 4 }
        );
    }

    let (web1, web2, web3, db2) = (
        t.container("web1"),
        t.container("web2"),
        t.container("web3"),
        t.container("db2"),
    );
    step("ping across hosts through the overlay (VXLAN VNI 100)");
    for dst in [web2, web3] {
        let out = web1
            .ns
            .output("ping", &["-c", "3", "-i", "0.2", "-q", &dst.ip.to_string()]);
        let text = String::from_utf8_lossy(&out.stdout);
        let summary = text
            .lines()
            .filter(|l| l.contains("received") || l.contains("rtt"))
            .collect::<Vec<_>>()
            .join("\n    ");
        println!("  web1 -> {} ({}):\n    {summary}", dst.name, dst.ip);
        assert!(out.status.success(), "ping web1 -> {} failed", dst.name);
    }
    let neigh = web1.ns.run("ip", &["neigh", "show", "dev", "eth0"]);
    println!("  web1's ARP table (answered by the eBPF ARP responder):");
    for l in neigh.lines() {
        println!("    {l}");
    }

    if ipv6_underlay {
        step("What crosses the underlay: one captured VXLAN-over-IPv6 frame");
    } else {
        step("What crosses the underlay: one captured VXLAN frame");
    }
    let cap = traffic::capture(&t.hosts[0].ns, "ul0", Duration::from_millis(1500));
    traffic::ping(&web1.ns, web2.ip, 1);
    let frames = cap.join().unwrap();
    if ipv6_underlay {
        match frames.iter().find_map(|f| traffic::parse_vxlan6(f, 4789)) {
            Some(v) => println!(
                "  outer IPv6 {} -> {}  hop limit {}  UDP {} -> {}  checksum {:#06x}{}  flags {:#04x}  VNI {}  inner frame {} bytes",
                v.outer_src,
                v.outer_dst,
                v.hop_limit,
                v.udp_src,
                v.udp_dst,
                v.udp_checksum,
                if v.udp_checksum == 0 {
                    " (zero: allowed for tunnels over IPv6, RFC 6935)"
                } else {
                    ""
                },
                v.flags,
                v.vni,
                v.inner.len()
            ),
            None => println!("  no VXLAN-over-IPv6 frame captured on h1's ul0"),
        }
    } else if let Some(v) = frames.iter().find_map(|f| traffic::parse_vxlan(f, 4789)) {
        println!(
            "  outer {} -> {}  UDP {} -> {}  checksum {}  flags {:#04x}  VNI {}  inner frame {} bytes",
            v.outer_src, v.outer_dst, v.udp_src, v.udp_dst, v.udp_checksum, v.flags, v.vni, v.inner.len()
        );
    }

    step("TCP throughput web2 -> web1 across the overlay (iperf3, 3 s)");
    let server = web1
        .ns
        .command("iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 (cargo xtask setup installs it)");
    let _server = ChildGuard::new(server, "iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let out = web2.ns.output(
        "iperf3",
        &["-c", &web1.ip.to_string(), "-p", "5201", "-t", "3", "-J"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    println!("  {:.2} Gbit/s received", bps / 1e9);

    step("Isolation: red cannot reach blue");
    let blocked = !traffic::ping(&web1.ns, db2.ip, 2);
    println!(
        "  web1 (red) -> db2 (blue) {}: {}",
        db2.ip,
        if blocked { "blocked" } else { "REACHED (bug)" }
    );
    assert!(blocked);

    step("A service VIP balanced by every host's datapath (Maglev + conntrack, Minuteman-style)");
    let _backends: Vec<_> = ["web1", "web2"]
        .iter()
        .map(|n| services::tcp_identity_server(&t.container(n).ns, 8080, n))
        .collect();
    let (ip1, ip2) = (t.container("web1").ip, t.container("web2").ip);
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "web",
            "--network",
            "red",
            "--vip",
            "198.19.250.10:80",
            "--backend",
            &format!("{ip1}:8080@1"),
            "--backend",
            &format!("{ip2}:8080@3"),
        ],
    );
    for l in t.overlayctl_ok(0, &["service", "ls"]).lines() {
        println!("    {l}");
    }
    let vip = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 19, 250, 10), 80);
    let counts = t.container("web3").ns.enter(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while services::tcp_ask(vip, "hello").is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..400 {
            let name =
                services::tcp_ask(vip, &format!("request {i}")).expect("connection to the VIP");
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    });
    println!("  400 connections from web3 to {vip} (weights 1:3): {counts:?}");
    t.overlayctl_ok(0, &["service", "rm", "web"]);

    step("Datapath counters on h1 (overlayctl stats, through the daemon's API socket)");
    for l in t.overlayctl_ok(0, &["stats"]).lines() {
        let zero = l.split_whitespace().nth(1) == Some("0");
        if !(l.starts_with("drop:") && zero) {
            println!("    {l}");
        }
    }

    step("Removing the containers releases their addresses");
    for c in ["web1", "db1", "web2", "db2", "web3"] {
        let host = t.container(c).host;
        let id = format!("{}-{c}", t.id);
        let resp = t.api(
            host,
            &overlay_api::Request::DeleteEndpoint {
                container_id: id,
                ifname: "eth0".into(),
            },
        );
        assert!(resp.is_ok(), "{resp:?}");
    }
    println!(
        "  endpoints left in etcd: {}",
        t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"]).trim()
    );

    step("Tearing everything down");
    drop(t);
    println!("  done: namespaces, veths, pins and daemons removed");
}
