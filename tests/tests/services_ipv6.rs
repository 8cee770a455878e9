//! IPv6 services on a dual-stack network: the socket hooks (connect6/sendmsg6/recvmsg6/
//! getpeername6) balance an IPv6 VIP by weight across hosts, applications see the VIP, a
//! backend that leaves has its connections closed, a labelled container joins with its IPv6
//! address, and a service without backends refuses at once. A node without socket hooks
//! balances them per packet (weights, checksums both ways, hairpin, refusal, a restart);
//! bad IPv6 services are refused at `service add`.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use overlay_common::{Direction, DropReason};
use overlay_tests::{
    frames6,
    lb::{self, TCP, UDP},
    services::{same_port, tcp_ask, tcp_identity_server6, udp_ask6, udp_identity_server6, Session},
    traffic, Topology, TopologySpec,
};

const VIP: &str = "2001:2:0:1200::80";

fn vip() -> Ipv6Addr {
    VIP.parse().unwrap()
}

/// `hosts` nodes sharing dual-stack network "red" (VNI 100), daemons with `extra` flags.
fn dual_stack_cluster(hosts: usize, extra: &[&str]) -> Topology {
    let mut t = Topology::new(
        TopologySpec::new(hosts)
            .network6("red", 100, "198.19.1.0/24", "2001:2:0:1001::/64")
            .with_etcd(3),
    );
    for h in 0..hosts {
        t.start_daemon(h, extra);
    }
    for h in 0..hosts {
        t.wait_status(h, "network installed", |s| {
            s["networks"] == 1 && s["vteps"] == hosts as u64 - 1
        });
    }
    t
}

/// The UDP service "dns" at the VIP's port 53 over `b1` and `b3` (port 5353), installed on
/// host 1.
fn add_dns6(t: &Topology, b1: Ipv6Addr, b3: Ipv6Addr) {
    let backends = [format!("[{b1}]:5353"), format!("[{b3}]:5353")];
    lb::add_service(t, "dns", &format!("[{VIP}]:53"), "udp", &backends);
    wait_table6(t, 1, 53, UDP, &[b1, b3], 5353);
}

/// TCP (port 8080) and UDP (5353) identity servers on IPv6 in each of `names`.
fn identity_servers6(t: &Topology, names: &[&str]) -> Vec<overlay_tests::services::Server> {
    names
        .iter()
        .flat_map(|n| {
            let ns = &t.container(n).ns;
            [
                tcp_identity_server6(ns, 8080, n),
                udp_identity_server6(ns, 5353, n),
            ]
        })
        .collect()
}

/// Waits until `host`'s table for the IPv6 service on `port`/`proto` is made of `want`, each
/// on backend port `to`.
fn wait_table6(t: &Topology, host: usize, port: u16, proto: u8, want: &[Ipv6Addr], to: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut want: Vec<(IpAddr, u16)> = want.iter().map(|ip| ((*ip).into(), to)).collect();
    want.sort();
    loop {
        let mut have = lb::table_of(t, host, 100, vip().into(), port, proto);
        have.sort();
        have.dedup();
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "IPv6 table on {} has {have:?}, want {want:?}\n{}",
            t.hosts[host].name,
            t.daemon_log(host)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Each backend's share of `counts` within 5 points of its weight's share (and within ±15 %
/// of it, as the IPv4 tests ask): 3000 connections put one standard deviation of a share
/// under 0.7 points, so the bound holds with room while still catching a skewed table.
fn assert_weighted(counts: &BTreeMap<String, usize>, weights: &[(&str, u32)]) {
    let total: usize = counts.values().sum();
    let sum: u32 = weights.iter().map(|w| w.1).sum();
    for (name, w) in weights {
        let want = *w as f64 / sum as f64 * 100.0;
        let got = *counts.get(*name).unwrap_or(&0) as f64 / total as f64 * 100.0;
        eprintln!("{name}: {got:.1}% of {total} connections, weight share {want:.1}%");
        assert!(
            (got - want).abs() <= 5.0,
            "{name}: {got:.1}% of {total}, expected {want:.1}% ±5 points: {counts:?}"
        );
    }
    lb::assert_shares(counts, weights);
}

#[test]
fn an_ipv6_vip_is_balanced_by_weight_across_hosts_and_shows_itself() {
    let mut t = dual_stack_cluster(2, &[]);
    lb::pods(&mut t, &[(0, "b1"), (0, "b2"), (1, "b3"), (1, "client")]);
    let ip6 = |name: &str| t.container(name).ip6();
    let (b1, b2, b3) = (ip6("b1"), ip6("b2"), ip6("b3"));
    let _servers = identity_servers6(&t, &["b1", "b2", "b3"]);
    let vip_port = format!("[{VIP}]:80");
    lb::add_service(
        &t,
        "web",
        &vip_port,
        "tcp",
        &[
            format!("[{b1}]:8080@1"),
            format!("[{b2}]:8080@2"),
            format!("[{b3}]:8080@3"),
        ],
    );
    wait_table6(&t, 1, 80, TCP, &[b1, b2, b3], 8080);

    // 3000 connections spread by weight (backends on both hosts).
    let addr = SocketAddr::new(vip().into(), 80);
    let counts = lb::spread(&t, "client", addr, 3000);
    assert_weighted(&counts, &[("b1", 1), ("b2", 2), ("b3", 3)]);
    let c = t.counters(1);
    assert!(c.traffic(Direction::SockLbConnect).packets >= 3000, "{c:?}");

    // The application sees the VIP as its peer, and a backend that leaves has its
    // connections closed at once (ECONNABORTED) while the others carry on.
    let mut sessions = t.container("client").ns.enter(move || {
        let mut sessions = Vec::new();
        while sessions.len() < 12 {
            let s = Session::open(addr).expect("session to the IPv6 VIP");
            assert_eq!(s.peer_addr().expect("getpeername"), addr);
            sessions.push(s);
        }
        sessions
    });
    assert!(
        sessions.iter().any(|s| s.backend == "b3"),
        "no session reached b3"
    );
    t.overlayctl_ok(
        0,
        &[
            "service",
            "set-backends",
            "web",
            "--backend",
            &format!("[{b1}]:8080@1"),
            "--backend",
            &format!("[{b2}]:8080@2"),
        ],
    );
    wait_table6(&t, 1, 80, TCP, &[b1, b2], 8080);
    sessions = t.container("client").ns.enter(move || {
        for s in sessions.iter_mut() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match s.roundtrip(b"ping\n") {
                    Ok(()) if s.backend != "b3" => break,
                    Err(e) if s.backend == "b3" && e.kind() == ErrorKind::ConnectionAborted => {
                        break
                    }
                    Ok(()) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(100))
                    }
                    other => panic!("session to {}: {other:?}", s.backend),
                }
            }
        }
        sessions
    });
    drop(sessions);

    // A container labelled web:8080 joins with its IPv6 address.
    t.add_labelled_pod(1, "b4", "red", &["web:8080"]);
    let b4 = t.container("b4").ip6();
    let _b4 = tcp_identity_server6(&t.container("b4").ns, 8080, "b4");
    wait_table6(&t, 1, 80, TCP, &[b1, b2, b4], 8080);
    let counts = lb::spread(&t, "client", addr, 600);
    assert!(counts.get("b4").is_some_and(|n| *n > 0), "{counts:?}");

    // A restart of the client's daemon (SIGKILL: no graceful anything) keeps the service:
    // an open connection still works and still shows the VIP, the table is the same, and
    // new connections are balanced as before.
    let mut session = t
        .container("client")
        .ns
        .enter(move || Session::open(addr).expect("session before the restart"));
    t.stop_daemon(1, nix::sys::signal::Signal::SIGKILL);
    t.start_daemon(1, &[]);
    t.wait_converged(1);
    wait_table6(&t, 1, 80, TCP, &[b1, b2, b4], 8080);
    t.container("client").ns.enter(move || {
        session
            .roundtrip(b"after the restart\n")
            .expect("session after the restart");
        assert_eq!(session.peer_addr().expect("getpeername"), addr);
    });
    let counts = lb::spread(&t, "client", addr, 300);
    assert_eq!(counts.len(), 3, "{counts:?}");

    // Unconnected UDP: sendto the VIP reaches a backend, and recvfrom shows the VIP.
    add_dns6(&t, b1, b3);
    let udp = SocketAddr::new(vip().into(), 53);
    let replies = t.container("client").ns.enter(move || {
        (0..20)
            .map(|i| udp_ask6(udp, &format!("q{i}")).expect("UDP to the IPv6 VIP"))
            .collect::<Vec<_>>()
    });
    for (from, text) in &replies {
        assert_eq!(*from, udp, "reply from {from}, not the VIP: {text}");
        assert!(text.starts_with("b1:") || text.starts_with("b3:"), "{text}");
    }

    // An IPv6 socket reaches an IPv4 VIP by its IPv4-mapped address, balanced at connect
    // (the kernel runs only the IPv6 hook for it) and shown as the mapped VIP.
    let b1_v4 = t.container("b1").ip;
    lb::add_service(
        &t,
        "web4",
        "198.19.200.1:80",
        "tcp",
        &[format!("{b1_v4}:8080")],
    );
    t.wait_status(1, "IPv4 service installed", |s| s["services"] == 3);
    let mapped: SocketAddr = "[::ffff:198.19.200.1]:80".parse().unwrap();
    let names = t.container("client").ns.enter(move || {
        (0..20)
            .map(|i| tcp_ask(mapped, &format!("mapped-{i}")).expect("IPv4-mapped VIP"))
            .collect::<Vec<_>>()
    });
    assert!(names.iter().all(|n| n == "b1"), "{names:?}");
    let peer = t.container("client").ns.enter(move || {
        Session::open(mapped)
            .and_then(|s| s.peer_addr())
            .expect("session to the IPv4-mapped VIP")
    });
    assert_eq!(peer, mapped);
    // ... and so does unconnected UDP from an IPv6 socket, whose replies show the mapped VIP.
    let b1_ns = &t.container("b1").ns;
    let _dns4 = overlay_tests::services::udp_identity_server(b1_ns, 5354, "b1");
    lb::add_service(
        &t,
        "dns4",
        "198.19.200.1:53",
        "udp",
        &[format!("{b1_v4}:5354")],
    );
    t.wait_status(1, "IPv4 UDP service installed", |s| s["services"] == 4);
    let mapped_dns: SocketAddr = "[::ffff:198.19.200.1]:53".parse().unwrap();
    let (from, text) = t
        .container("client")
        .ns
        .enter(move || udp_ask6(mapped_dns, "mapped").expect("IPv4-mapped UDP VIP"));
    assert_eq!((from, text.as_str()), (mapped_dns, "b1:mapped"));

    // Without backends: refused at once (TCP and UDP), nothing hangs.
    t.overlayctl_ok(0, &["service", "set-backends", "dns"]);
    lb::add_service(&t, "empty", &format!("[{VIP}]:81"), "tcp", &[]);
    wait_table6(&t, 1, 53, UDP, &[], 5353);
    t.wait_status(1, "services installed", |s| s["services"] == 5);
    let (tcp_err, udp_err) = t.container("client").ns.enter(move || {
        let started = Instant::now();
        let tcp = tcp_ask(SocketAddr::new(vip().into(), 81), "x").unwrap_err();
        let udp = udp_ask6(udp, "x").unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused quickly"
        );
        (tcp, udp)
    });
    assert_eq!(tcp_err.kind(), ErrorKind::ConnectionRefused, "{tcp_err}");
    assert_eq!(udp_err.kind(), ErrorKind::ConnectionRefused, "{udp_err}");
    // Every etcd key the services wrote is one the daemons read (an IPv6 VIP's uniqueness
    // key once held ':', which key names do not, and every view skipped it).
    for h in 0..2 {
        let log = t.daemon_log(h);
        assert!(!log.contains("skipping etcd entry"), "{log}");
    }
}

/// Every IPv6 TCP, UDP and ICMPv6 frame in `frames` carries a valid checksum; how many did
/// (`from`: also how many came from that address).
fn checked_frames(frames: &[Vec<u8>], from: Ipv6Addr) -> (usize, usize) {
    let (mut checked, mut from_it) = (0, 0);
    for f in frames
        .iter()
        .filter(|f| f.len() >= 54 && f[12..14] == [0x86, 0xdd])
    {
        let next = f[20];
        if ![TCP, UDP, 58].contains(&next) {
            continue;
        }
        let len = u16::from_be_bytes([f[18], f[19]]) as usize;
        let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap());
        let (src, dst) = (addr(22), addr(38));
        let body = &f[54..54 + len];
        assert_eq!(
            frames6::checksum6(src, dst, next, body),
            0,
            "bad checksum, protocol {next}, {src} -> {dst}: {f:02x?}"
        );
        checked += 1;
        from_it += usize::from(src == from);
    }
    (checked, from_it)
}

#[test]
fn an_ipv6_vip_is_balanced_per_packet_where_the_socket_hooks_are_off() {
    let mut t = dual_stack_cluster(2, &["--socket-lb", "off"]);
    lb::pods(&mut t, &[(0, "b1"), (0, "b2"), (1, "b3"), (1, "client")]);
    let ip6 = |name: &str| t.container(name).ip6();
    let (b1, b2, b3) = (ip6("b1"), ip6("b2"), ip6("b3"));
    // Checksums computed in full by the senders, not left to offload: the captures below
    // then show what the rewriting made of them.
    for n in ["b1", "b2", "b3", "client"] {
        t.container(n)
            .ns
            .run("ethtool", &["-K", "eth0", "tx", "off"]);
    }
    let _servers = identity_servers6(&t, &["b1", "b2", "b3"]);
    let backends = [
        format!("[{b1}]:8080@1"),
        format!("[{b2}]:8080@2"),
        format!("[{b3}]:8080@3"),
    ];
    lb::add_service(&t, "web", &format!("[{VIP}]:80"), "tcp", &backends);
    wait_table6(&t, 1, 80, TCP, &[b1, b2, b3], 8080);
    t.wait_status(1, "IPv6 service installed", |s| {
        s["services"] == 1 && s["rejected"].as_array().is_some_and(|r| r.is_empty())
    });

    // 3000 connections spread by weight, every one translated in the datapath.
    let addr = SocketAddr::new(vip().into(), 80);
    let counts = lb::spread(&t, "client", addr, 3000);
    assert_weighted(&counts, &[("b1", 1), ("b2", 2), ("b3", 3)]);
    let c = t.counters(1);
    assert_eq!(c.traffic(Direction::SockLbConnect).packets, 0, "{c:?}");
    assert!(c.traffic(Direction::LbNewFlow).packets >= 3000, "{c:?}");
    assert!(c.traffic(Direction::LbRevNat).packets >= 3000, "{c:?}");

    // TCP and UDP both ways, to a remote (b1) and a local (b3) backend: every frame the
    // client and the backends see has a valid checksum, and the replies come from the VIP.
    add_dns6(&t, b1, b3);
    let window = Duration::from_secs(4);
    let caps: Vec<_> = ["client", "b1", "b3"]
        .iter()
        .map(|n| traffic::capture(&t.container(n).ns, "eth0", window))
        .collect();
    let udp = SocketAddr::new(vip().into(), 53);
    let answers = t.container("client").ns.enter(move || {
        let mut answers = Vec::new();
        for i in 0..20 {
            answers.push(tcp_ask(addr, &format!("t{i}")).expect("TCP to the VIP"));
            let (from, text) = udp_ask6(udp, &format!("u{i}")).expect("UDP to the VIP");
            assert_eq!(from, udp, "UDP reply from {from}, not the VIP: {text}");
            answers.push(text);
        }
        answers
    });
    assert!(answers.iter().any(|a| a.starts_with("b1")), "{answers:?}");
    assert!(answers.iter().any(|a| a.starts_with("b3")), "{answers:?}");
    let frames: Vec<Vec<Vec<u8>>> = caps.into_iter().map(|c| c.join().unwrap()).collect();
    let (seen, from_vip) = checked_frames(&frames[0], vip());
    assert!(
        seen >= 200 && from_vip >= 80,
        "client: {seen} frames, {from_vip} from the VIP"
    );
    for (name, f) in [("b1", &frames[1]), ("b3", &frames[2])] {
        let (seen, _) = checked_frames(f, vip());
        assert!(seen >= 20, "{name}: {seen} frames checked");
    }

    // Hairpin: a backend reaching the VIP gets answers from every backend, itself included,
    // and sees the VIP as its peer.
    let counts = lb::spread(&t, "b3", addr, 300);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(t.counters(1).traffic(Direction::LbHairpin).packets > 0);

    // A restart of the client's daemon (SIGKILL) keeps an open connection translated.
    let mut session = t
        .container("client")
        .ns
        .enter(move || Session::open(addr).expect("session before the restart"));
    t.stop_daemon(1, nix::sys::signal::Signal::SIGKILL);
    t.start_daemon(1, &["--socket-lb", "off"]);
    t.wait_converged(1);
    t.container("client").ns.enter(move || {
        session
            .roundtrip(b"after the restart\n")
            .expect("session after the restart");
        assert_eq!(session.peer_addr().expect("getpeername"), addr);
    });

    // Without backends: a TCP reset and an ICMPv6 port unreachable from the VIP, at once.
    t.overlayctl_ok(0, &["service", "set-backends", "dns"]);
    lb::add_service(&t, "empty", &format!("[{VIP}]:81"), "tcp", &[]);
    wait_table6(&t, 1, 53, UDP, &[], 5353);
    t.wait_status(1, "services installed", |s| s["services"] == 3);
    let cap = traffic::capture(&t.container("client").ns, "eth0", Duration::from_secs(2));
    let (tcp_err, udp_err) = t.container("client").ns.enter(move || {
        let started = Instant::now();
        let tcp = tcp_ask(SocketAddr::new(vip().into(), 81), "x").unwrap_err();
        let sock = std::net::UdpSocket::bind("[::]:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.connect(udp).unwrap();
        sock.send(b"x").unwrap();
        let udp = sock.recv(&mut [0u8; 64]).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused quickly"
        );
        (tcp, udp)
    });
    assert_eq!(tcp_err.kind(), ErrorKind::ConnectionRefused, "{tcp_err}");
    assert_eq!(udp_err.kind(), ErrorKind::ConnectionRefused, "{udp_err}");
    let (_, from_vip) = checked_frames(&cap.join().unwrap(), vip());
    assert!(
        from_vip >= 2,
        "the reset and the unreachable come from the VIP"
    );
    assert!(t.counters(1).traffic(Direction::LbRejected).packets >= 2);
}

/// A client that uses an IPv6 service and its backend directly from one source port, on
/// a node without socket hooks (every flow per packet, direct flows to backends recorded):
/// the later connection gets a source port of its own, both are answered, the first goes
/// on. (Before IPv6 direct flows were followed, the two shared one tuple.)
#[test]
fn an_ipv6_vip_and_its_backend_used_from_one_source_port_stay_apart() {
    let mut t = dual_stack_cluster(2, &["--socket-lb", "off"]);
    lb::pods(&mut t, &[(0, "b1"), (1, "client")]);
    let b1 = t.container("b1").ip6();
    let _servers = identity_servers6(&t, &["b1"]);
    let backend = [format!("[{b1}]:8080")];
    lb::add_service(&t, "web", &format!("[{VIP}]:80"), "tcp", &backend);
    wait_table6(&t, 1, 80, TCP, &[b1], 8080);
    let vip = SocketAddr::new(vip().into(), 80);
    let direct = SocketAddr::new(b1.into(), 8080);
    let before = t.counters(1);
    let ns = &t.container("client").ns;
    for (port, first, second) in [(20_100, vip, direct), (20_101, direct, vip)] {
        let outcome = same_port(ns, port, first, second);
        assert_eq!(
            outcome, "connected (b1)",
            "{first}, then {second}, from port {port}"
        );
    }
    let after = t.counters(1);
    let conflict = DropReason::LbTupleConflict;
    let refused = after.drops(conflict).packets - before.drops(conflict).packets;
    assert_eq!(refused, 0, "no flow refused");
    let remap = Direction::LbDirectRemap;
    let remapped = after.traffic(remap).packets - before.traffic(remap).packets;
    assert!(remapped > 0, "the direct flow remapped");
}

#[test]
fn bad_ipv6_services_are_refused_with_a_reason() {
    let mut t = dual_stack_cluster(2, &["--socket-lb", "off"]);
    t.overlayctl_ok(
        0,
        &[
            "network",
            "create",
            "blue",
            "--vni",
            "200",
            "--subnet",
            "198.19.2.0/24",
        ],
    );
    let refused = |args: &[&str], why: &str| {
        let out = t.overlayctl(0, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    let add = |network: &'static str, vip: &'static str, backend: Option<&'static str>| {
        let mut args = vec!["service", "add", "s", "--network", network, "--vip", vip];
        if let Some(b) = backend {
            args.extend(["--backend", b]);
        }
        args
    };
    refused(
        &add("blue", "[2001:2:0:1200::1]:80", None),
        "has no IPv6 subnet",
    );
    refused(
        &add("red", "[2001:2:0:1001::99]:80", None),
        "inside network \"red\"'s subnet",
    );
    refused(&add("red", "[::ffff:198.19.200.1]:80", None), "IPv4-mapped");
    refused(&add("red", "[fe80::1]:80", None), "link-local");
    refused(
        &add("red", "[2001:2:0:1200::1]:80", Some("198.19.1.20:80")),
        "address family",
    );
    refused(
        &add("red", "198.19.200.1:80", Some("[2001:2:0:1001::20]:80")),
        "address family",
    );

    // A service of each family on a node without socket hooks; backends of the other family
    // are refused at `set-backends`.
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "v6",
            "--network",
            "red",
            "--vip",
            &format!("[{VIP}]:80"),
        ],
    );
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "v4",
            "--network",
            "red",
            "--vip",
            "198.19.200.1:80",
        ],
    );
    refused(
        &[
            "service",
            "set-backends",
            "v6",
            "--backend",
            "198.19.1.20:80",
        ],
        "give IPv6 backends",
    );
    // A node without socket hooks balances it per packet, next to the IPv4 one.
    t.wait_status(0, "IPv6 service installed", |s| {
        s["services"] == 2 && s["rejected"].as_array().is_some_and(|r| r.is_empty())
    });
    let ls = t.overlayctl_ok(0, &["service", "ls"]);
    assert!(!ls.contains("rejected"), "{ls}");
    assert!(ls.contains(&format!("[{VIP}]:80/tcp")), "{ls}");
}
