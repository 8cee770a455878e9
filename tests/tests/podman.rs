//! A real runtime: podman 4.3 with its CNI backend runs containers on two namespace hosts
//! through overlay-cni (chained with the reference tuning plugin).

use overlay_tests::{podman::Podman, Topology, TopologySpec};

/// Two hosts with etcd and their daemons, each with its network and the other's VTEP.
fn two_hosts(spec: TopologySpec) -> Topology {
    let mut t = Topology::new(spec.with_etcd(5));
    t.start_daemon(0, &[]);
    t.start_daemon(1, &[]);
    for h in 0..2 {
        t.wait_status(h, "ready", |s| s["networks"] == 1 && s["vteps"] == 1);
    }
    t
}

#[test]
fn podman_containers_on_two_hosts_talk_over_the_overlay() {
    let t = two_hosts(TopologySpec::new(2).network("red", 100, "198.19.1.0/24"));
    let mut p1 = Podman::new(&t, 0, "red");
    let mut p2 = Podman::new(&t, 1, "red");
    let ip1 = p1.start("web1", "red");
    let ip2 = p2.start("web2", "red");
    assert!(
        ip1.starts_with("198.19.1.") && ip2.starts_with("198.19.1."),
        "{ip1} {ip2}"
    );
    assert_ne!(ip1, ip2);

    let ping = p1.exec("web1", &["ping", "-c", "3", "-W", "2", &ip2]);
    assert!(
        ping.status.success(),
        "web1 -> web2: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let ping = p2.exec("web2", &["ping", "-c", "3", "-W", "2", &ip1]);
    assert!(ping.status.success(), "web2 -> web1");

    // The CNI result's resolver: podman writes it into the container's resolv.conf, and the
    // containers find each other by their names (podman's K8S_POD_NAME) across hosts.
    let resolv = p1.exec("web1", &["cat", "/etc/resolv.conf"]);
    let resolv = String::from_utf8_lossy(&resolv.stdout);
    assert!(
        resolv.contains("nameserver 198.19.1.1") && resolv.contains("red.overlay.internal"),
        "{resolv}"
    );
    let ping = p1.exec("web1", &["ping", "-c", "1", "-W", "2", "web2"]);
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success() && out.contains(&ip2),
        "web1 -> web2 by name: {out}"
    );

    // 20 MB from web1 to web2 with busybox nc, checked with md5sum on both sides.
    p1.exec(
        "web1",
        &["dd", "if=/dev/urandom", "of=/tmp/data", "bs=1M", "count=20"],
    );
    let sum1 = String::from_utf8_lossy(&p1.exec("web1", &["md5sum", "/tmp/data"]).stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    // The receiver writes its checksum once the sender has closed the connection.
    p2.run_ok(&[
        "exec",
        "-d",
        "web2",
        "sh",
        "-c",
        "sleep 60 | { nc -l -p 5000 > /tmp/got; md5sum /tmp/got > /tmp/sum.part; mv /tmp/sum.part /tmp/sum; }",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let send = p1.exec("web1", &["sh", "-c", &format!("nc {ip2} 5000 < /tmp/data")]);
    assert!(
        send.status.success(),
        "nc: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let sum2 = loop {
        let out = p2.exec("web2", &["cat", "/tmp/sum"]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "receiver never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let size = p2.exec("web2", &["wc", "-c", "/tmp/got"]);
    assert!(
        !sum1.is_empty() && sum1 == sum2,
        "data intact across the overlay: {sum1} vs {sum2} ({})",
        String::from_utf8_lossy(&size.stdout)
    );

    // The chained tuning plugin set its sysctl inside the container.
    let sysctl = p1.exec("web1", &["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]);
    assert_eq!(
        String::from_utf8_lossy(&sysctl.stdout).trim(),
        "1",
        "tuning plugin applied"
    );

    // podman rm releases the addresses.
    p1.remove("web1");
    p2.remove("web2");
    let eps = t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"]);
    assert_eq!(eps.trim(), "[]", "addresses released");
}

#[test]
fn podman_containers_on_a_dual_stack_network_talk_over_ipv6() {
    let t =
        two_hosts(TopologySpec::new(2).network6("red", 100, "198.19.1.0/24", "2001:2:0:1001::/64"));
    let mut p1 = Podman::new(&t, 0, "red");
    let mut p2 = Podman::new(&t, 1, "red");
    p1.start("web1", "red");
    p2.start("web2", "red");
    // podman takes both addresses from the plugin's result.
    let ip6 = |p: &Podman, name: &str| {
        p.run_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.red.GlobalIPv6Address}}",
            name,
        ])
        .trim()
        .to_owned()
    };
    let (a6, b6) = (ip6(&p1, "web1"), ip6(&p2, "web2"));
    assert!(
        a6.starts_with("2001:2:0:1001:") && b6.starts_with("2001:2:0:1001:"),
        "{a6:?} {b6:?}"
    );
    ping6_both_ways(&p1, &a6, &p2, &b6);
    let eps = t.overlayctl_ok(0, &["endpoint", "ls"]);
    assert!(eps.contains(&a6) && eps.contains(&b6), "{eps}");
    p1.remove("web1");
    p2.remove("web2");
    let eps = t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"]);
    assert_eq!(eps.trim(), "[]", "addresses released");
    let claims = t.etcd.as_ref().unwrap().keys("/overlay/v1/endpoints6/");
    assert!(claims.is_empty(), "IPv6 claims released: {claims:?}");
}

/// An IPv6-only network: podman gets an IPv6 address and route only from the plugin, and
/// its containers on two hosts talk over IPv6.
#[test]
fn podman_containers_on_an_ipv6_only_network_talk() {
    let t = two_hosts(TopologySpec::new(2).network6_only("six", 100, "2001:2:0:1002::/64"));
    let mut p1 = Podman::new(&t, 0, "six");
    let mut p2 = Podman::new(&t, 1, "six");
    p1.start("web1", "six");
    p2.start("web2", "six");
    let addr = |p: &Podman, name: &str, field: &str| {
        p.run_ok(&[
            "inspect",
            "-f",
            &format!("{{{{.NetworkSettings.Networks.six.{field}}}}}"),
            name,
        ])
        .trim()
        .to_owned()
    };
    let (a6, b6) = (
        addr(&p1, "web1", "GlobalIPv6Address"),
        addr(&p2, "web2", "GlobalIPv6Address"),
    );
    assert!(
        a6.starts_with("2001:2:0:1002:") && b6.starts_with("2001:2:0:1002:"),
        "{a6:?} {b6:?}"
    );
    assert_eq!(addr(&p1, "web1", "IPAddress"), "", "no IPv4 address");
    let v4 = p1.exec("web1", &["ip", "addr", "show", "dev", "eth0"]);
    assert!(
        v4.status.success(),
        "{}",
        String::from_utf8_lossy(&v4.stderr)
    );
    let shown = String::from_utf8_lossy(&v4.stdout);
    assert!(
        shown.contains("inet6 2001:2:0:1002:") && !shown.contains("inet "),
        "{}",
        String::from_utf8_lossy(&v4.stdout)
    );
    ping6_both_ways(&p1, &a6, &p2, &b6);
    p1.remove("web1");
    p2.remove("web2");
    let eps = t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"]);
    assert_eq!(eps.trim(), "[]", "addresses released");
    let keys = t.etcd.as_ref().unwrap().keys("/overlay/v1/endpoints/");
    assert!(keys.is_empty(), "endpoint keys released: {keys:?}");
}

/// web1 (on `p1`, address `a6`) and web2 (on `p2`, `b6`) ping each other over IPv6.
fn ping6_both_ways(p1: &Podman, a6: &str, p2: &Podman, b6: &str) {
    for (p, name, dst) in [(p1, "web1", b6), (p2, "web2", a6)] {
        let ping = p.exec(name, &["ping", "-6", "-c", "3", "-W", "2", dst]);
        assert!(
            ping.status.success(),
            "{name} -> {dst}: {}{}",
            String::from_utf8_lossy(&ping.stdout),
            String::from_utf8_lossy(&ping.stderr)
        );
    }
}
