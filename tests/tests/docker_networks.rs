//! Docker networks configured as Docker users do: the standard MTU option, and a running
//! container connected to a second overlay network and disconnected again, against a real
//! dockerd and overlayd's driver.

use std::time::{Duration, Instant};

use overlay_tests::{
    docker::{plugin_socket, Docker},
    Topology, TopologySpec,
};

fn two_networks() -> Topology {
    let spec = TopologySpec::new(2)
        .network("red", 100, "198.19.1.0/24")
        .network("green", 200, "198.19.2.0/24")
        .with_etcd(5);
    let mut t = Topology::new(spec);
    for h in 0..2 {
        let socket = plugin_socket(&t, h);
        t.start_daemon(h, &["--docker-plugin", socket.to_str().unwrap()]);
    }
    for h in 0..2 {
        t.wait_status(h, "ready", |s| s["networks"] == 2 && s["vteps"] == 1);
    }
    t
}

fn text(out: std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn local_endpoints(t: &Topology) -> usize {
    t.client(0).status().expect("status").local_endpoints
}

fn wait_local_endpoints(t: &Topology, want: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while local_endpoints(t) != want {
        assert!(Instant::now() < deadline, "{what}: {}", local_endpoints(t));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn docker_mtu_option_and_a_second_network_connected_then_disconnected() {
    let mut t = two_networks();
    t.add_pod(1, "red-peer", "red");
    t.add_pod(1, "green-peer", "green");
    let (red_peer, green_peer) = (
        t.container("red-peer").ip.to_string(),
        t.container("green-peer").ip.to_string(),
    );
    let d = Docker::start(&t, 0);

    // The MTU option: above what the overlay carries, refused with the bound; within it,
    // the container gets it.
    let refused = d.try_create(
        "jumbo",
        &["--subnet", "198.19.1.0/24"],
        &["network=red", "com.docker.network.driver.mtu=9000"],
    );
    let why = text(refused.clone());
    assert!(!refused.status.success(), "MTU 9000 accepted: {why}");
    assert!(why.contains("pass 1450 or less"), "{why}");
    // Nor is an overlay network made for a refused one (`-o vni` creates it in etcd).
    let refused = d.try_create(
        "jumbo",
        &["--subnet", "198.19.5.0/24"],
        &[
            "network=extra",
            "vni=500",
            "com.docker.network.driver.mtu=9000",
        ],
    );
    assert!(!refused.status.success(), "{}", text(refused.clone()));
    let nets = t.overlayctl_ok(0, &["network", "ls"]);
    assert!(!nets.contains("extra"), "{nets}");
    d.create_network(
        "red",
        "198.19.1.0/24",
        &["network=red", "com.docker.network.driver.mtu=1400"],
    );
    // Without --subnet, from the IPAM option alone: `docker network inspect` shows the
    // subnet and the gateway the IPAM driver gave (with --subnet Docker shows only what the
    // user passed).
    let out = d.try_create(
        "green",
        &["--ipam-opt", "network=green"],
        &["network=green"],
    );
    assert!(out.status.success(), "{}", text(out.clone()));
    let inspect: serde_json::Value =
        serde_json::from_str(&d.run_ok(&["network", "inspect", "green"])).unwrap();
    let config = &inspect[0]["IPAM"]["Config"][0];
    assert_eq!(config["Subnet"], "198.19.2.0/24", "{inspect}");
    assert_eq!(config["Gateway"], "198.19.2.1", "{inspect}");
    let base = local_endpoints(&t);
    d.start_container("both", "red");
    let mtu = text(d.exec("both", &["cat", "/sys/class/net/eth0/mtu"]));
    assert_eq!(mtu.trim(), "1400", "the network's MTU option");
    let ping = |to: &str| {
        d.exec("both", &["ping", "-c", "2", "-W", "2", to])
            .status
            .success()
    };
    assert!(ping(&red_peer), "red before connect");
    assert!(!ping(&green_peer), "green before connect");

    // docker network connect: a second interface on green, reaching green; one default
    // route; red untouched.
    d.run_ok(&["network", "connect", "green", "both"]);
    wait_local_endpoints(&t, base + 2, "after connect");
    let links = text(d.exec("both", &["ip", "-o", "link"]));
    assert!(links.contains("eth1"), "{links}");
    let mtu = text(d.exec("both", &["cat", "/sys/class/net/eth1/mtu"]));
    assert_eq!(mtu.trim(), "1450", "green has no MTU option");
    assert!(ping(&green_peer), "green after connect");
    assert!(ping(&red_peer), "red after connect");
    let routes = text(d.exec("both", &["ip", "-4", "route", "show", "default"]));
    assert_eq!(
        routes.trim().lines().count(),
        1,
        "one default route: {routes}"
    );

    // docker network disconnect: green's address is released, red goes on.
    d.run_ok(&["network", "disconnect", "green", "both"]);
    wait_local_endpoints(&t, base + 1, "after disconnect");
    assert!(ping(&red_peer), "red after disconnect");
    assert!(!ping(&green_peer), "green after disconnect");
    d.run_ok(&["rm", "-f", "both"]);
    wait_local_endpoints(&t, base, "after rm");
}
