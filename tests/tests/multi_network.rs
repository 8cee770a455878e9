//! A container on several overlay networks through the real CNI plugin, as runtimes attach
//! one (`CNI_IFNAME` eth0, eth1, ...) per network: each interface reaches its own network
//! only, with its own identity; one of them holds the default route (the first, unless the
//! configuration's `defaultRoute` says otherwise); removing one leaves the others working.
//! And the same through podman, which attaches a container to two networks itself.

use std::net::Ipv4Addr;

use overlay_common::DropReason;
use overlay_daemon::api;
use overlay_tests::{cni, podman::Podman, traffic, Netns, Topology, TopologySpec};

fn three_networks() -> Topology {
    let spec = TopologySpec::new(2)
        .with_etcd(10)
        .network("red", 100, "198.19.1.0/24")
        .network("green", 200, "198.19.2.0/24")
        .network("blue", 300, "198.19.3.0/24");
    let mut t = Topology::new(spec);
    t.start_all(&[]);
    t
}

/// A plugin configuration for `network` on host `host`, with `extra` JSON members.
fn conf(t: &Topology, host: usize, network: &str, extra: &str) -> String {
    let socket = api::socket_path(&t.hosts[host].run_dir);
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{network}","type":"overlay-cni","socket":"{}"{extra}}}"#,
        socket.display()
    )
}

/// The address of an ADD result's first entry.
fn address(result: &serde_json::Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
}

/// The destinations of an ADD result's routes.
fn routes(result: &serde_json::Value) -> Vec<String> {
    result["routes"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["dst"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn spoof_drops(t: &Topology, host: usize) -> u64 {
    let c = t.counters(host);
    c.drops(DropReason::SpoofedIp).packets + c.drops(DropReason::SpoofedArp).packets
}

#[test]
fn a_container_on_two_networks_uses_each_through_its_own_interface() {
    let mut t = three_networks();
    t.add_pod(1, "red-peer", "red");
    t.add_pod(1, "green-peer", "green");
    t.add_pod(0, "red-only", "red");
    for h in 0..2 {
        t.wait_converged(h);
    }
    let id = format!("{}-two", t.id);
    let ns = Netns::create(&format!("ovt{}-two", t.id));
    let (ok, red) = cni::run_on("ADD", &id, &ns, "eth0", &conf(&t, 0, "red", ""));
    assert!(ok, "ADD red eth0: {red}");
    let (ok, green) = cni::run_on("ADD", &id, &ns, "eth1", &conf(&t, 0, "green", ""));
    assert!(ok, "ADD green eth1: {green}\n{}", t.daemon_log(0));
    assert_eq!(routes(&red), ["0.0.0.0/0"], "the first attachment holds it");
    assert!(
        routes(&green).is_empty(),
        "the second attachment reports no default route: {green}"
    );
    let table = ns.ip(&["-4", "route", "show", "default"]);
    assert_eq!(
        table.lines().count(),
        1,
        "one default route, via red: {table}"
    );
    assert!(table.contains("via 198.19.1.1 dev eth0"), "{table}");
    for h in 0..2 {
        t.wait_status(h, "both interfaces installed", |s| s["endpoints"] == 5);
    }

    // Each network through its own interface.
    let (red_peer, green_peer) = (t.container("red-peer").ip, t.container("green-peer").ip);
    assert!(traffic::ping(&ns, red_peer, 2), "red over eth0");
    assert!(traffic::ping(&ns, green_peer, 2), "green over eth1");
    let via = ns.ip(&["route", "get", &green_peer.to_string()]);
    assert!(via.contains("dev eth1"), "{via}");
    // Only this container is on both: a red-only one does not reach green.
    assert!(!traffic::ping(&t.container("red-only").ns, green_peer, 1));

    // Each interface has its own identity: green's address sent out of eth0 is spoofed.
    let before = spoof_drops(&t, 0);
    let spoofed = ns.output(
        "ping",
        &[
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            &address(&green).to_string(),
            &red_peer.to_string(),
        ],
    );
    assert!(!spoofed.status.success(), "a spoofed source got through");
    assert!(spoof_drops(&t, 0) > before, "{:?}", t.counters(0));

    // Asking for the default route on a third network while eth0 holds it: refused with
    // what to change, and nothing left behind.
    let endpoints = t.client(0).status().expect("status").local_endpoints;
    let (ok, err) = cni::run_on(
        "ADD",
        &id,
        &ns,
        "eth2",
        &conf(&t, 0, "blue", r#","defaultRoute":true"#),
    );
    assert!(!ok, "{err}");
    assert_eq!(err["code"], 7, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("defaultRoute false"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert_eq!(
        t.client(0).status().expect("status").local_endpoints,
        endpoints
    );
    assert!(!ns.ip(&["link"]).contains("eth2"), "eth2 left behind");

    // DEL of eth1 leaves eth0 as it was.
    let (ok, out) = cni::run_on("DEL", &id, &ns, "eth1", &conf(&t, 0, "green", ""));
    assert!(ok, "DEL eth1: {out}");
    assert!(!ns.ip(&["link"]).contains("eth1"));
    assert!(traffic::ping(&ns, red_peer, 2), "red after eth1 went");
    assert!(!traffic::ping(&ns, green_peer, 1), "green after eth1 went");
    let (ok, out) = cni::run_on("DEL", &id, &ns, "eth0", &conf(&t, 0, "red", ""));
    assert!(ok, "DEL eth0: {out}");
}

/// `defaultRoute: false` on the first attachment and `true` on the second: the second holds
/// the default route, the first reaches its own subnet only.
#[test]
fn the_configuration_says_which_attachment_holds_the_default_route() {
    let mut t = three_networks();
    t.add_pod(1, "red-peer", "red");
    t.add_pod(1, "green-peer", "green");
    for h in 0..2 {
        t.wait_converged(h);
    }
    let id = format!("{}-chosen", t.id);
    let ns = Netns::create(&format!("ovt{}-chosen", t.id));
    let (ok, green) = cni::run_on(
        "ADD",
        &id,
        &ns,
        "eth0",
        &conf(&t, 0, "green", r#","defaultRoute":false"#),
    );
    assert!(ok, "ADD green eth0: {green}");
    assert!(routes(&green).is_empty(), "{green}");
    assert_eq!(ns.ip(&["-4", "route", "show", "default"]).trim(), "");
    let (ok, red) = cni::run_on(
        "ADD",
        &id,
        &ns,
        "eth1",
        &conf(&t, 0, "red", r#","defaultRoute":true"#),
    );
    assert!(ok, "ADD red eth1: {red}\n{}", t.daemon_log(0));
    assert_eq!(routes(&red), ["0.0.0.0/0"]);
    let table = ns.ip(&["-4", "route", "show", "default"]);
    assert!(table.contains("via 198.19.1.1 dev eth1"), "{table}");
    for h in 0..2 {
        t.wait_status(h, "both interfaces installed", |s| s["endpoints"] == 4);
    }
    assert!(traffic::ping(&ns, t.container("red-peer").ip, 2));
    assert!(traffic::ping(&ns, t.container("green-peer").ip, 2));
    for (ifname, network) in [("eth1", "red"), ("eth0", "green")] {
        let (ok, out) = cni::run_on("DEL", &id, &ns, ifname, &conf(&t, 0, network, ""));
        assert!(ok, "DEL {ifname}: {out}");
    }
}

/// podman attaches a container to two networks itself (eth0, eth1): both work, one default
/// route, and removing the container frees both addresses.
#[test]
fn a_podman_container_on_two_networks() {
    let mut t = three_networks();
    t.add_pod(1, "red-peer", "red");
    t.add_pod(1, "green-peer", "green");
    let mut podman = Podman::new(&t, 0, "red");
    podman.add_network(&t, 0, "green");
    for h in 0..2 {
        t.wait_converged(h);
    }
    let before = t.client(0).status().expect("status").local_endpoints;
    podman.start_on("both", &["red", "green"]);
    let routes = podman.exec("both", &["ip", "-4", "route", "show", "default"]);
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert_eq!(routes.lines().count(), 1, "one default route: {routes}");
    for peer in ["red-peer", "green-peer"] {
        let ip = t.container(peer).ip.to_string();
        let out = podman.exec("both", &["ping", "-c", "2", "-W", "2", &ip]);
        assert!(
            out.status.success(),
            "{peer}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        t.client(0).status().expect("status").local_endpoints,
        before + 2,
        "one endpoint per network"
    );
    podman.remove("both");
    assert_eq!(
        t.client(0).status().expect("status").local_endpoints,
        before
    );
}
