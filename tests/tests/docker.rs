//! A real Docker: two dockerd 20.10 in two namespace hosts, each with its own overlayd serving
//! the `overlay-ebpf` network and IPAM driver, and a real podman (CNI) on the same overlay.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use overlay_tests::{
    docker::{plugin_socket, Docker},
    podman::Podman,
    Topology, TopologySpec,
};
use serde_json::Value;

fn topology() -> Topology {
    topology_of(TopologySpec::new(2).network("red", 100, "198.19.1.0/24"))
}

fn topology_of(spec: TopologySpec) -> Topology {
    let mut t = Topology::new(spec.with_etcd(5));
    for h in 0..2 {
        let socket = plugin_socket(&t, h);
        t.start_daemon(h, &["--docker-plugin", socket.to_str().unwrap()]);
    }
    for h in 0..2 {
        t.wait_status(h, "ready", |s| s["networks"] == 1 && s["vteps"] == 1);
    }
    t
}

fn pings(out: std::process::Output) -> bool {
    out.status.success()
}

/// The overlay's endpoints, as `overlayctl endpoint ls -o json` lists them.
fn endpoints(t: &Topology) -> Vec<Value> {
    serde_json::from_str(&t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"])).unwrap()
}

fn wait_endpoints(t: &Topology, want: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let eps = endpoints(t);
        if eps.len() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} endpoints, expected {want}: {eps:?}",
            eps.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// md5 of what `from` sends to `to_ip`:5000, as received by `to`.
fn transfer(from: &Docker, from_c: &str, to: &Docker, to_c: &str, to_ip: &str) -> (String, String) {
    from.exec(
        from_c,
        &["dd", "if=/dev/urandom", "of=/tmp/data", "bs=1M", "count=20"],
    );
    let sent = String::from_utf8_lossy(&from.exec(from_c, &["md5sum", "/tmp/data"]).stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    // busybox nc exits on the peer's EOF; its stdin must stay open until then.
    to.run_ok(&[
        "exec",
        "-d",
        to_c,
        "sh",
        "-c",
        "sleep 60 | { nc -l -p 5000 > /tmp/got; md5sum /tmp/got > /tmp/sum.part; mv /tmp/sum.part /tmp/sum; }",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let send = from.exec(
        from_c,
        &["sh", "-c", &format!("nc {to_ip} 5000 < /tmp/data")],
    );
    assert!(
        send.status.success(),
        "nc: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = to.exec(to_c, &["cat", "/tmp/sum"]);
        if out.status.success() {
            let got = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            return (sent, got);
        }
        assert!(Instant::now() < deadline, "receiver never finished");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn docker_containers_on_two_hosts_talk_and_other_networks_cannot() {
    let t = topology();
    let d1 = Docker::start(&t, 0);
    let d2 = Docker::start(&t, 1);
    d1.create_red();
    d2.create_red();
    let ip1 = d1.start_container("web1", "red");
    let ip2 = d2.start_container("web2", "red");
    assert!(
        ip1.starts_with("198.19.1.") && ip2.starts_with("198.19.1."),
        "{ip1} {ip2}"
    );
    assert_ne!(
        ip1, ip2,
        "the cluster IPAM never hands out an address twice"
    );

    // docker network inspect shows the address Docker got from our IPAM.
    let inspect: Value = serde_json::from_str(&d1.run_ok(&["network", "inspect", "red"])).unwrap();
    let containers = inspect[0]["Containers"].as_object().unwrap();
    assert!(
        containers
            .values()
            .any(|c| c["IPv4Address"] == format!("{ip1}/24")),
        "{inspect}"
    );
    assert_eq!(inspect[0]["IPAM"]["Driver"], "overlay-ebpf");
    // overlayctl names the endpoint as Docker does: by its endpoint id.
    let docker_ep = containers
        .values()
        .find(|c| c["IPv4Address"] == format!("{ip1}/24"))
        .and_then(|c| c["EndpointID"].as_str())
        .unwrap()
        .to_owned();
    let ours: Value =
        serde_json::from_str(&t.overlayctl_ok(0, &["endpoint", "inspect", &ip1, "-o", "json"]))
            .unwrap();
    assert_eq!(ours["docker_endpoint"], docker_ep.as_str(), "{ours}");
    let listed = t.overlayctl_ok(0, &["endpoint", "ls", "--network", "red"]);
    assert!(
        listed.contains(&format!("docker:{}", &docker_ep[..12])),
        "{listed}"
    );

    assert!(
        pings(d1.exec("web1", &["ping", "-c", "3", "-W", "2", &ip2])),
        "web1 -> web2"
    );
    assert!(
        pings(d2.exec("web2", &["ping", "-c", "3", "-W", "2", &ip1])),
        "web2 -> web1"
    );
    let (sent, got) = transfer(&d1, "web1", &d2, "web2", &ip2);
    assert!(
        !sent.is_empty() && sent == got,
        "data intact: {sent} vs {got}"
    );

    // Names: a container told to use the network's gateway (`--dns`, as docs/docker.md
    // says) resolves a service through Docker's embedded resolver and overlayd.
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "web",
            "--network",
            "red",
            "--vip",
            "198.18.250.1:80",
            "--backend",
            &format!("{ip2}:80"),
        ],
    );
    d1.run_ok(&[
        "run",
        "-d",
        "--name",
        "dnsc",
        "--network",
        "red",
        "--dns",
        "198.19.1.1",
        "--dns-search",
        "red.overlay.internal",
        "bbox:latest",
        "sleep",
        "600",
    ]);
    let resolves = |name: &str, want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = d1.exec("dnsc", &["busybox", "nslookup", name]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains(want) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never resolved to {want} in Docker: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    resolves("web.red.overlay.internal", "198.18.250.1");
    // A container on the other host named by its endpoint's driver option.
    d2.run_ok(&[
        "create",
        "--name",
        "db2",
        "--network",
        "red",
        "bbox:latest",
        "sleep",
        "600",
    ]);
    // Docker creates the endpoint when the container starts: a name that is no DNS label
    // fails the start with the driver's one line (and leaks nothing: see the count below).
    let connect = |name: &str| {
        d2.run_ok(&["network", "disconnect", "red", "db2"]);
        d2.run_ok(&[
            "network",
            "connect",
            "--driver-opt",
            &format!("overlay.name={name}"),
            "red",
            "db2",
        ]);
    };
    connect("db.2");
    let refused = d2.run(&["start", "db2"]);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success() && said.contains("overlay.name \"db.2\" is not a DNS label"),
        "{said}"
    );
    connect("db2");
    d2.run_ok(&["start", "db2"]);
    let db2: Value = serde_json::from_str(&d2.run_ok(&["inspect", "db2"])).unwrap();
    let db2_ip = db2[0]["NetworkSettings"]["Networks"]["red"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    resolves("db2.red.overlay.internal", &db2_ip);
    d2.run_ok(&["rm", "-f", "db2"]);
    // Its name goes with it (not kept by the address Docker may still hold).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = d1.exec("dnsc", &["busybox", "nslookup", "db2.red.overlay.internal"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !text.contains(&db2_ip) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "db2 still resolves after its removal: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    d1.run_ok(&["rm", "-f", "dnsc"]);
    wait_endpoints(&t, 2, "the DNS client and db2 removed");

    // A second Docker network with another VNI (created in etcd by the driver) is isolated.
    d1.create_network("blue", "198.19.2.0/24", &["network=blue", "vni=200"]);
    let nets = t.overlayctl_ok(0, &["network", "ls"]);
    assert!(nets.contains("blue") && nets.contains("200"), "{nets}");
    let ip3 = d1.start_container("other", "blue");
    assert!(ip3.starts_with("198.19.2."), "{ip3}");
    assert!(
        !pings(d1.exec("other", &["ping", "-c", "2", "-W", "1", &ip1])),
        "blue reached red on the same host"
    );
    assert!(
        !pings(d1.exec("other", &["ping", "-c", "2", "-W", "1", &ip2])),
        "blue reached red across hosts"
    );
    wait_endpoints(&t, 3, "three containers");

    // docker rm -f releases the addresses and the veths.
    for (d, c) in [(&d1, "web1"), (&d2, "web2"), (&d1, "other")] {
        d.run_ok(&["rm", "-f", c]);
    }
    wait_endpoints(&t, 0, "after docker rm -f");
    for h in &t.hosts {
        let links = h.ns.run("ip", &["-br", "link"]);
        assert!(
            !links.contains("ovl") && !links.contains("ovc"),
            "veths left on {}: {links}",
            h.name
        );
    }
}

#[test]
fn sigkilled_containers_and_a_dockerd_restart_leave_nothing_behind() {
    let t = topology();
    let mut d1 = Docker::start(&t, 0);
    d1.create_red();
    d1.start_container("ca", "red");
    d1.start_container("cb", "red");
    wait_endpoints(&t, 2, "two containers");

    // The container's process is SIGKILLed: Docker tears its network down, we release.
    d1.run_ok(&["kill", "-s", "KILL", "ca"]);
    wait_endpoints(&t, 1, "after SIGKILL of a container");

    // dockerd is restarted (SIGTERM, as `systemctl restart docker` does) while cb runs:
    // without live-restore it stops cb, and nothing of cb may stay behind.
    d1.restart(Signal::SIGTERM);
    assert!(
        d1.run_ok(&["ps", "-q"]).trim().is_empty(),
        "dockerd stopped its containers on the way down"
    );
    wait_endpoints(&t, 0, "after a dockerd restart");
    let links = t.hosts[0].ns.run("ip", &["-br", "link"]);
    assert!(
        !links.contains("ovl") && !links.contains("ovc"),
        "veths left: {links}"
    );
    // The network still works for new containers.
    let ip_c = d1.start_container("cc", "red");
    assert!(ip_c.starts_with("198.19.1."), "{ip_c}");
}

#[test]
fn a_podman_container_and_a_docker_container_share_a_network() {
    let t = topology();
    let mut p = Podman::new(&t, 0, "red");
    let d = Docker::start(&t, 1);
    d.create_red();
    let ip_p = p.start("pod", "red");
    let ip_d = d.start_container("ctr", "red");
    assert_ne!(ip_p, ip_d);
    assert!(
        pings(p.exec("pod", &["ping", "-c", "3", "-W", "2", &ip_d])),
        "podman -> docker"
    );
    assert!(
        pings(d.exec("ctr", &["ping", "-c", "3", "-W", "2", &ip_p])),
        "docker -> podman"
    );
    p.remove("pod");
    d.run_ok(&["rm", "-f", "ctr"]);
    wait_endpoints(&t, 0, "after removing both");
}

#[test]
fn docker_and_podman_containers_on_a_dual_stack_network_talk_over_ipv6() {
    let t = topology_of(TopologySpec::new(2).network6(
        "red",
        100,
        "198.19.1.0/24",
        "2001:2:0:1001::/64",
    ));
    let d1 = Docker::start(&t, 0);
    let d2 = Docker::start(&t, 1);
    for d in [&d1, &d2] {
        d.create_dual_stack("red", "198.19.1.0/24", "2001:2:0:1001::/64");
    }
    d1.start_container("web1", "red");
    d2.start_container("web2", "red");
    // An IPv6 address cannot be chosen: Docker shows the driver's one-line reason.
    let chosen = d1.run(&[
        "run",
        "-d",
        "--name",
        "fixed6",
        "--network",
        "red",
        "--ip6",
        "2001:2:0:1001::99",
        "bbox:latest",
        "sleep",
        "600",
    ]);
    let err = String::from_utf8_lossy(&chosen.stderr);
    assert!(
        !chosen.status.success() && err.contains("drop --ip6"),
        "docker run --ip6: {err}"
    );
    let _ = d1.run(&["rm", "-f", "fixed6"]);
    // Docker releases nothing when its IPv6 request fails: the driver did.
    let deadline = Instant::now() + Duration::from_secs(3);
    while endpoints(&t).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the refused --ip6 container's reservation: {:?}",
            endpoints(&t)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (a6, b6) = (d1.ipv6_of("web1", "red"), d2.ipv6_of("web2", "red"));
    assert!(
        a6.starts_with("2001:2:0:1001:") && b6.starts_with("2001:2:0:1001:") && a6 != b6,
        "Docker took the IPv6 addresses from our IPAM: {a6:?} {b6:?}"
    );
    // The default IPv6 route Docker set from Join's GatewayIPv6.
    let routes = d1.exec("web1", &["ip", "-6", "route"]);
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("default via 2001:2:0:1001::1"),
        "IPv6 default route: {routes}"
    );
    for (d, c, dst) in [(&d1, "web1", &b6), (&d2, "web2", &a6)] {
        assert!(
            pings(d.exec(c, &["ping", "-6", "-c", "3", "-W", "2", dst])),
            "{c} -> {dst} over IPv6"
        );
    }
    let (sent, got) = transfer(&d1, "web1", &d2, "web2", &b6);
    assert!(
        !sent.is_empty() && sent == got,
        "data over IPv6 intact: {sent} vs {got}"
    );

    // A podman (CNI) container on the same network, on the first host, and the Docker
    // container on the other host reach each other over IPv6.
    let mut p = Podman::new(&t, 0, "red");
    p.start("pod", "red");
    let p6 = p
        .run_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.red.GlobalIPv6Address}}",
            "pod",
        ])
        .trim()
        .to_owned();
    assert!(p6.starts_with("2001:2:0:1001:"), "{p6:?}");
    assert!(
        pings(p.exec("pod", &["ping", "-6", "-c", "3", "-W", "2", &b6])),
        "podman -> docker over IPv6"
    );
    assert!(
        pings(d2.exec("web2", &["ping", "-6", "-c", "3", "-W", "2", &p6])),
        "docker -> podman over IPv6"
    );
    let eps = t.overlayctl_ok(0, &["endpoint", "ls"]);
    assert!(
        [&a6, &b6, &p6].iter().all(|a| eps.contains(a.as_str())),
        "{eps}"
    );

    p.remove("pod");
    d1.run_ok(&["rm", "-f", "web1"]);
    d2.run_ok(&["rm", "-f", "web2"]);
    wait_endpoints(&t, 0, "after removing all three");
    let claims = t.etcd.as_ref().unwrap().keys("/overlay/v1/endpoints6/");
    assert!(claims.is_empty(), "IPv6 claims released: {claims:?}");
}
