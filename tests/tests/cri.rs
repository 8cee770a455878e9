//! Kubernetes' path to the plugin: pods run through containerd's CRI plugin (a real
//! containerd 1.6 per namespace host, driven over gRPC as the kubelet drives it) with the
//! conflist this repository ships, against real overlayd and etcd.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use overlay_tests::{
    containerd::{daemonset_conflist, shipped_conflist, Containerd},
    cri::PodSpec,
    traffic, Topology, TopologySpec,
};

const SUBNET: &str = "198.19.64.0/20";
const VIP: &str = "198.19.96.10";

fn two_hosts() -> (Topology, Containerd, Containerd) {
    let network = shipped_conflist()["plugins"][0]["network"]
        .as_str()
        .unwrap()
        .to_owned();
    let spec = TopologySpec::new(2)
        .with_etcd(10)
        .network(&network, 100, SUBNET);
    let mut t = Topology::new(spec);
    t.start_all(&[]);
    let c0 = Containerd::start(&t, 0);
    let c1 = Containerd::start(&t, 1);
    (t, c0, c1)
}

/// The pod's overlay address, as PodSandboxStatus reports it.
fn pod_ip(c: &mut Containerd, id: &str) -> IpAddr {
    let ips = c.cri.pod_ips(id);
    assert_eq!(ips.len(), 1, "one address on an IPv4 network: {ips:?}");
    ips[0]
}

/// `sh -c script` in `container` through ExecSync.
fn sh(c: &mut Containerd, container: &str, script: &str) -> overlay_tests::cri::Exec {
    c.cri
        .exec(container, &["sh", "-c", script], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"))
}

/// The first word of what `cmd` printed in `container` (a checksum).
fn first_word(c: &mut Containerd, container: &str, cmd: &str) -> String {
    let out = sh(c, container, cmd);
    assert_eq!(out.exit_code, 0, "{cmd}: {}", out.stderr);
    out.stdout
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// `mib` MiB from `from` to a server `to` starts on `listen`, sent to `dst:port` (the
/// server's address or a VIP): the SHA-256 must be the same on both sides. Returns the
/// seconds from the first connection attempt until the receiver had it all.
#[allow(clippy::too_many_arguments)]
fn transfer_mib(
    (cf, from): (&mut Containerd, &str),
    (ct, to): (&mut Containerd, &str),
    listen: u16,
    dst: IpAddr,
    port: u16,
    mib: u32,
) -> f64 {
    sh(
        cf,
        from,
        &format!("dd if=/dev/urandom of=/tmp/data bs=1M count={mib} 2>/dev/null"),
    );
    let sent = first_word(cf, from, "sha256sum /tmp/data");
    // busybox nc exits on the peer's EOF: its stdin stays open until then. The receiver
    // writes its checksum once the sender has closed the connection.
    sh(
        ct,
        to,
        &format!(
            "rm -f /tmp/sum; (sleep 60 | {{ nc -l -p {listen} > /tmp/got; sha256sum /tmp/got > /tmp/sum.part; \
             mv /tmp/sum.part /tmp/sum; }}) > /dev/null 2>&1 &"
        ),
    );
    // Until the listener is up (a refused connection sends nothing).
    let start = Instant::now();
    let send = sh(
        cf,
        from,
        &format!(
            "i=0; while [ $i -lt 100 ]; do nc {dst} {port} < /tmp/data && exit 0; \
             i=$((i+1)); sleep 0.1; done; exit 1"
        ),
    );
    assert_eq!(send.exit_code, 0, "nc {dst} {port}: {}", send.stderr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let out = sh(ct, to, "cat /tmp/sum 2>/dev/null");
        if out.exit_code == 0 {
            break out
                .stdout
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned();
        }
        assert!(Instant::now() < deadline, "the receiver never finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !sent.is_empty() && sent == got,
        "{dst}:{port}: sent {sent}, got {got}"
    );
    start.elapsed().as_secs_f64()
}

/// `transfer_mib` of 16 MiB.
fn transfer(
    from: (&mut Containerd, &str),
    to: (&mut Containerd, &str),
    listen: u16,
    dst: IpAddr,
    port: u16,
) {
    transfer_mib(from, to, listen, dst, port, 16);
}

/// Every local endpoint record and veth of host `host` is gone, and the daemon's maps hold
/// only `remote` endpoints of other hosts.
fn nothing_left(t: &mut Topology, host: usize, remote: u64) {
    t.wait_status(host, "no local endpoints installed", |s| {
        s["local_endpoints"].as_u64() == Some(0) && s["endpoints"].as_u64() == Some(remote)
    });
    let links = t.hosts[host].ns.ip(&["-o", "link", "show"]);
    assert!(
        !links.contains(": ovl"),
        "veths left on host {host}: {links}"
    );
    let routes = t.hosts[host].ns.ip(&["route", "show", "table", "4789"]);
    assert!(routes.trim().is_empty(), "host routes left: {routes}");
    let node = &t.hosts[host].name;
    let ls: serde_json::Value =
        serde_json::from_str(&t.overlayctl_ok(host, &["-o", "json", "endpoint", "ls"])).unwrap();
    let mine: Vec<_> = ls
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"] == node.as_str())
        .collect();
    assert!(
        mine.is_empty(),
        "endpoint records left for {node}: {mine:?}"
    );
}

#[test]
fn pods_on_two_hosts_get_overlay_addresses_and_reach_each_other_and_services() {
    let (mut t, mut c0, mut c1) = two_hosts();
    let a = c0
        .run_pod(&PodSpec::new("default", "web-a"))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c0.log()));
    let b = c1
        .run_pod(&PodSpec::new("shop", "web-b"))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c1.log()));
    let (ip_a, ip_b) = (pod_ip(&mut c0, &a.id), pod_ip(&mut c1, &b.id));
    let subnet: ipnet::IpNet = SUBNET.parse().unwrap();
    assert!(
        subnet.contains(&ip_a) && subnet.contains(&ip_b),
        "{ip_a} {ip_b}"
    );

    // The endpoint records name the pods (from K8S_POD_* in CNI_ARGS), not only the sandbox.
    let ls: serde_json::Value =
        serde_json::from_str(&t.overlayctl_ok(0, &["-o", "json", "endpoint", "ls"])).unwrap();
    let of = |ip: IpAddr| {
        ls.as_array()
            .unwrap()
            .iter()
            .find(|e| e["ip"] == ip.to_string())
            .unwrap_or_else(|| panic!("{ip} in {ls}"))
            .clone()
    };
    assert_eq!(of(ip_a)["pod"]["namespace"], "default");
    assert_eq!(of(ip_a)["pod"]["name"], "web-a");
    assert_eq!(of(ip_a)["pod"]["uid"], "uid-default-web-a");
    assert_eq!(of(ip_a)["container_id"], a.id.as_str(), "the sandbox id");
    assert_eq!(of(ip_b)["pod"]["name"], "web-b");
    let table = t.overlayctl_ok(1, &["endpoint", "ls"]);
    assert!(
        table.lines().next().unwrap().ends_with("POD")
            && table
                .lines()
                .any(|l| l.contains(&ip_b.to_string()) && l.ends_with("shop/web-b")),
        "{table}"
    );

    let ca = c0.start_sleeper(&a, "app");
    let cb = c1.start_sleeper(&b, "app");
    let ping = sh(&mut c0, &ca, &format!("ping -c 3 -W 2 {ip_b}"));
    assert_eq!(ping.exit_code, 0, "a -> b: {}{}", ping.stdout, ping.stderr);
    let ping = sh(&mut c1, &cb, &format!("ping -c 3 -W 2 {ip_a}"));
    assert_eq!(ping.exit_code, 0, "b -> a: {}{}", ping.stdout, ping.stderr);
    transfer((&mut c0, &ca), (&mut c1, &cb), 5000, ip_b, 5000);

    // A service whose backend is pod b, reached from pod a by its VIP.
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "web",
            "--network",
            &c0.network,
            "--vip",
            &format!("{VIP}:80"),
            "--proto",
            "tcp",
            "--backend",
            &format!("{ip_b}:8080"),
        ],
    );
    let vip: IpAddr = VIP.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t
        .overlayctl_ok(0, &["service", "ls"])
        .contains(&format!("{ip_b}:8080"))
    {
        assert!(
            Instant::now() < deadline,
            "the service never listed its backend"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    transfer((&mut c0, &ca), (&mut c1, &cb), 8080, vip, 80);

    // The kubelet stops a pod more than once, then removes it: the address and the veth go.
    c0.cri.stop_pod(&a.id).expect("StopPodSandbox");
    c0.delete_pod(&a);
    nothing_left(&mut t, 0, 1);
    c1.delete_pod(&b);
    nothing_left(&mut t, 1, 0);
    let cache = std::fs::read_dir("/var/lib/cni/results")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_else(|_| Vec::new());
    assert!(
        !cache.iter().any(|f| f.contains(&a.id) || f.contains(&b.id)),
        "CNI cache files left: {cache:?}"
    );
}

/// A pod's `kubernetes.io/*-bandwidth` annotations reach the plugin through containerd's
/// CRI (the shipped conflist declares the capability) and hold each way: 4 MiB at 8 Mbit/s
/// take over 2 s even with containerd's burst (a second of the rate), against well under a
/// second for the same pod without limits.
#[test]
fn a_pods_bandwidth_annotations_limit_it_each_way() {
    let (mut t, mut c0, mut c1) = two_hosts();
    let mut spec = PodSpec::new("default", "slow");
    spec.annotations = vec![
        ("kubernetes.io/ingress-bandwidth".into(), "8M".into()),
        ("kubernetes.io/egress-bandwidth".into(), "8M".into()),
    ];
    let a = c0
        .run_pod(&spec)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c0.log()));
    let b = c1.run_pod(&PodSpec::new("default", "peer")).unwrap();
    let shown = t.overlayctl_ok(0, &["endpoint", "inspect", &a.id]);
    assert!(shown.contains("in 8M out 8M"), "{shown}");
    let (ip_a, ip_b) = (pod_ip(&mut c0, &a.id), pod_ip(&mut c1, &b.id));
    let ca = c0.start_sleeper(&a, "app");
    let cb = c1.start_sleeper(&b, "app");
    let out = transfer_mib((&mut c0, &ca), (&mut c1, &cb), 6000, ip_b, 6000, 4);
    let back = transfer_mib((&mut c1, &cb), (&mut c0, &ca), 6001, ip_a, 6001, 4);
    eprintln!("4 MiB at 8 Mbit/s: out of the pod {out:.2} s, into it {back:.2} s");
    assert!(
        out > 2.0 && back > 2.0,
        "limits not held: {out:.2} s, {back:.2} s"
    );

    c0.delete_pod(&a);
    let free = c0.run_pod(&PodSpec::new("default", "fast")).unwrap();
    let cf = c0.start_sleeper(&free, "app");
    let ip_f = pod_ip(&mut c0, &free.id);
    let unlimited = transfer_mib((&mut c0, &cf), (&mut c1, &cb), 6002, ip_b, 6002, 4);
    let unlimited_back = transfer_mib((&mut c1, &cb), (&mut c0, &cf), 6003, ip_f, 6003, 4);
    eprintln!("without limits: out {unlimited:.2} s, in {unlimited_back:.2} s");
    assert!(
        unlimited < out / 2.0 && unlimited_back < back / 2.0,
        "a pod without annotations is as slow: {unlimited:.2} s, {unlimited_back:.2} s"
    );
    c0.delete_pod(&free);
    c1.delete_pod(&b);
    nothing_left(&mut t, 0, 0);
}

/// What a TCP client in host `host`'s namespace reads from `dst:port`.
fn read_from_host(t: &Topology, host: usize, dst: IpAddr, port: u16) -> std::io::Result<String> {
    t.hosts[host].ns.enter(move || {
        use std::io::Read as _;
        let addr = std::net::SocketAddr::new(dst, port);
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok(got)
    })
}

#[test]
fn port_mappings_daemon_restarts_and_lost_namespaces() {
    let (mut t, mut c0, mut c1) = two_hosts();
    // A hostPort through the chained reference portmap plugin (capabilities.portMappings).
    let mut spec = PodSpec::new("default", "mapped");
    spec.port_mappings = vec![(8080, 30080)];
    let m = c0
        .run_pod(&spec)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c0.log()));
    let cm = c0.start_sleeper(&m, "app");
    sh(
        &mut c0,
        &cm,
        "(while true; do echo pod-mapped | nc -l -p 8080; done) > /dev/null 2>&1 &",
    );
    let client = c1.run_pod(&PodSpec::new("default", "client")).unwrap();
    let cc = c1.start_sleeper(&client, "app");
    let ip_m = pod_ip(&mut c0, &m.id);
    let node0 = IpAddr::V4(t.hosts[0].vtep_ip);
    // The pod's own host reaches it: by its address (the kubelet's probes) and by the
    // hostPort on the node's address (portmap's DNAT of what the host itself sends).
    let reachable = |t: &Topology| {
        let localhost = IpAddr::from([127, 0, 0, 1]);
        for (dst, port) in [(ip_m, 8080), (node0, 30080), (localhost, 30080)] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match read_from_host(t, 0, dst, port) {
                    Ok(got) if got.trim() == "pod-mapped" => break,
                    other => assert!(
                        Instant::now() < deadline,
                        "host 0 -> {dst}:{port}: {other:?}"
                    ),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    reachable(&t);
    let to_host = t
        .counters(0)
        .traffic(overlay_common::Direction::ToHost)
        .packets;
    assert!(to_host > 0, "the replies went to the host's stack, counted");

    // A pod reaches its host's own addresses through its gateway, never its loopback (which
    // portmap opened with route_localnet on the pod's veth, CVE-2020-8558's way): frames
    // forged in the pod's namespace to 127.0.0.1 and to the node's address.
    let pod_ns = overlay_tests::Netns::open(
        &c0.netns_path(&m)
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy(),
    );
    let ip_m4 = match ip_m {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!(),
    };
    let mac_m: [u8; 6] = {
        let link = pod_ns.ip(&["-o", "link", "show", "eth0"]);
        let mac = link
            .split("link/ether ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let mac: Vec<u8> = mac
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        mac.try_into().unwrap()
    };
    let gateway = overlay_api::MacAddr::gateway(100).0;
    let node0_v4 = t.hosts[0].vtep_ip;
    for (dst, port, reached) in [
        (std::net::Ipv4Addr::LOCALHOST, 9901, false),
        (node0_v4, 9902, true),
    ] {
        let bind = match reached {
            false => dst,
            true => std::net::Ipv4Addr::UNSPECIFIED,
        };
        let listener = t.hosts[0].ns.spawn(move || {
            let sock = std::net::UdpSocket::bind((bind, port)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            sock.recv(&mut buf).is_ok()
        });
        std::thread::sleep(Duration::from_millis(200));
        let frame = traffic::inner_udp_frame(mac_m, gateway, ip_m4, dst, port, b"x");
        traffic::send_frame(&pod_ns, "eth0", frame);
        assert_eq!(
            listener.join().unwrap(),
            reached,
            "pod -> host {dst}:{port}"
        );
    }

    // The host's routes to its pods serve only what the host itself sends: a host that
    // forwards does not route underlay traffic into a pod past the VTEP's checks.
    t.hosts[0]
        .ns
        .run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    t.hosts[1]
        .ns
        .ip(&["route", "add", SUBNET, "via", &node0.to_string()]);
    let rx = |c: &mut Containerd| -> u64 {
        let out = sh(c, &cm, "cat /sys/class/net/eth0/statistics/rx_packets");
        out.stdout.trim().parse().unwrap()
    };
    let before = rx(&mut c0);
    let ping = t.hosts[1].ns.output(
        "ping",
        &["-c", "5", "-i", "0.2", "-W", "1", &ip_m.to_string()],
    );
    assert!(
        !ping.status.success(),
        "host 1 reached the pod through host 0's stack"
    );
    assert_eq!(
        rx(&mut c0),
        before,
        "plain IP from the underlay reached the pod"
    );
    t.hosts[1].ns.ip(&["route", "del", SUBNET]);

    // A pod connecting to its own node's hostPort is DNATed back to a pod address in the
    // host's stack, which does not forward what came from a pod's veth: refused, and nothing
    // leaves unencapsulated on the underlay (with forwarding on, as on a Kubernetes node).
    let capture = traffic::capture(&t.hosts[0].ns, "ul0", Duration::from_secs(4));
    let hairpin = sh(&mut c0, &cm, &format!("nc -w 2 {node0} 30080 < /dev/null"));
    assert!(
        !hairpin.stdout.contains("pod-mapped"),
        "hairpin hostPort: {hairpin:?}"
    );
    let leaked: Vec<_> = capture
        .join()
        .unwrap()
        .into_iter()
        .filter(|f| f.len() > 34 && f[12..14] == [0x08, 0x00] && f[26..30] == ip_m4.octets())
        .collect();
    assert!(
        leaked.is_empty(),
        "the pod's packets left on the underlay: {leaked:?}"
    );

    // overlayd restarts under a running pod: the pod keeps its connectivity (the datapath
    // stays pinned while it is down), and new pods are served after.
    // Its routes are put back at start (a release before 0.3 made none).
    t.hosts[0].ns.ip(&["route", "flush", "table", "4789"]);
    t.stop_daemon(0, nix::sys::signal::Signal::SIGTERM);
    let ping = sh(&mut c1, &cc, &format!("ping -c 2 -W 2 {ip_m}"));
    assert_eq!(ping.exit_code, 0, "while overlayd is down: {}", ping.stdout);
    t.start_daemon(0, &[]);
    t.wait_registered(0);
    let ping = sh(&mut c1, &cc, &format!("ping -c 2 -W 2 {ip_m}"));
    assert_eq!(ping.exit_code, 0, "after the restart: {}", ping.stdout);
    reachable(&t);
    let late = c0.run_pod(&PodSpec::new("default", "late")).unwrap();
    let ip_late = pod_ip(&mut c0, &late.id);
    let ping = sh(&mut c1, &cc, &format!("ping -c 2 -W 2 {ip_late}"));
    assert_eq!(
        ping.exit_code, 0,
        "a pod made after the restart: {}",
        ping.stdout
    );
    c0.delete_pod(&late);

    // The pod's network namespace vanishes under the runtime (a node reboot, a crashed
    // runtime's cleanup): containerd then calls DEL without a namespace, and the address,
    // the veth and the hostPort rules must go all the same.
    let netns = c0.netns_path(&m).expect("the sandbox's netns path");
    let out = std::process::Command::new("umount")
        .arg(&netns)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umount {}: {:?}",
        netns.display(),
        out
    );
    std::fs::remove_file(&netns).unwrap();
    c0.delete_pod(&m);
    c1.delete_pod(&client);
    nothing_left(&mut t, 0, 0);
    nothing_left(&mut t, 1, 0);
    let nat = t.hosts[0].ns.run("iptables-save", &["-t", "nat"]);
    assert!(!nat.contains("30080"), "hostPort rules left: {nat}");

    // `overlayd cleanup` takes the rules to the containers' table away with the datapath.
    let host0 = overlay_tests::Netns::open(t.hosts[0].ns.name());
    let rules = || host0.ip(&["rule"]) + &host0.ip(&["-6", "rule"]);
    assert!(rules().contains("lookup 4789"), "{}", rules());
    // And DNS's rules and tables (docs/dns.md).
    assert!(
        rules().contains("lookup 4790") && rules().contains("lookup 4791"),
        "{}",
        rules()
    );
    let dns_routes = || host0.ip(&["route", "show", "table", "4790"]);
    assert!(
        dns_routes().contains("unreachable default"),
        "{}",
        dns_routes()
    );
    t.stop_daemon(0, nix::sys::signal::Signal::SIGTERM);
    let cleanup = t.cleanup(0);
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(
        !rules().contains("4789") && !rules().contains("479"),
        "{}",
        rules()
    );
    assert!(dns_routes().trim().is_empty(), "{}", dns_routes());
}

#[test]
fn thirty_pods_created_and_removed_leave_nothing_behind() {
    let (mut t, mut c0, mut c1) = two_hosts();
    for round in 0..3 {
        let mut pods = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..10 {
            let (c, host) = if i % 2 == 0 {
                (&mut c0, 0)
            } else {
                (&mut c1, 1)
            };
            let pod = c
                .run_pod(&PodSpec::new("loop", &format!("p{round}-{i}")))
                .unwrap_or_else(|e| panic!("RunPodSandbox {round}/{i}: {e}\n{}", c.log()));
            let ip = pod_ip(c, &pod.id);
            assert!(seen.insert(ip), "{ip} handed out twice");
            pods.push((host, pod));
        }
        for h in 0..2 {
            t.wait_status(h, "10 endpoints installed", |s| {
                s["endpoints"].as_u64() == Some(10)
            });
        }
        for (host, pod) in &pods {
            if *host == 0 {
                c0.delete_pod(pod)
            } else {
                c1.delete_pod(pod)
            }
        }
    }
    nothing_left(&mut t, 0, 0);
    nothing_left(&mut t, 1, 0);
    assert!(c0.cri.pods().unwrap().is_empty() && c1.cri.pods().unwrap().is_empty());
    for c in [&c0, &c1] {
        for ns in c.netns_made() {
            assert!(!ns.exists(), "{} left", ns.display());
        }
    }
}

/// The DaemonSet's ConfigMap installs exactly the conflist these tests run containerd with.
#[test]
fn the_daemonset_installs_the_conflist_the_tests_use() {
    let block = daemonset_conflist();
    let installed: serde_json::Value = serde_json::from_str(&block)
        .unwrap_or_else(|e| panic!("the ConfigMap's conflist is not JSON: {e}\n{block}"));
    assert_eq!(installed, shipped_conflist());
}
