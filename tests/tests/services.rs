//! Service load balancing in the datapath (Minuteman-style), against real daemons, real etcd
//! and real TCP/UDP traffic: three backends on two hosts and a client on a third.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use overlay_common::Direction;
use overlay_tests::{
    lb::{self, assert_shares, spread, table, wait_table, Svc},
    services::{tcp_ask, tcp_identity_server, udp_ask, udp_identity_server, Session},
    Topology,
};

const TTL: u32 = 3;
const VNI: u32 = 100;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 10);

fn cluster() -> Topology {
    cluster_with(&[])
}

/// Three nodes with `extra` daemon flags (e.g. `--socket-lb off` for the per-packet path).
fn cluster_with(extra: &[&str]) -> Topology {
    lb::cluster(3, TTL, extra)
}

/// Through the socket path (the default): connections are balanced at connect, by weight;
/// the application sees the VIP as its peer; a backend that comes moves no connection and a
/// backend that goes closes exactly its own (ECONNABORTED), by Maglev moving only its share.
#[test]
fn tcp_spreads_by_weight_and_a_removed_backend_moves_only_its_share() {
    let mut t = cluster();
    t.add_pod(0, "b1", "red");
    t.add_pod(0, "b2", "red");
    t.add_pod(1, "b3", "red");
    t.add_pod(1, "b4", "red");
    t.add_pod(2, "client", "red");
    for h in 0..3 {
        t.wait_converged(h);
    }
    let ip = |t: &Topology, n: &str| t.container(n).ip;
    let (b1, b2, b3, b4) = (ip(&t, "b1"), ip(&t, "b2"), ip(&t, "b3"), ip(&t, "b4"));
    let _servers: Vec<_> = ["b1", "b2", "b3", "b4"]
        .iter()
        .map(|n| tcp_identity_server(&t.container(n).ns, 8080, n))
        .collect();

    let backend = |ip: Ipv4Addr, w: u32| format!("{ip}:8080@{w}");
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
            "--proto",
            "tcp",
            "--backend",
            &backend(b1, 1),
            "--backend",
            &backend(b2, 2),
            "--backend",
            &backend(b3, 3),
        ],
    );
    for h in 0..3 {
        wait_table(&t, h, Svc::tcp(VNI, VIP, 80), &[b1, b2, b3]);
    }
    let ls = t.overlayctl_ok(0, &["service", "ls"]);
    assert!(
        ls.contains("198.19.250.10:80/tcp") && ls.contains(&format!("{b3}:8080@3")),
        "{ls}"
    );

    // 3000 short connections, each echoing its own token: spread by weight 1:2:3.
    // Every one balanced by the client's connect, none by translating packets.
    let vip = SocketAddrV4::new(VIP, 80);
    let before = t.counters(2);
    let counts = spread(&t, "client", vip, 3000);
    assert_shares(&counts, &[("b1", 1), ("b2", 2), ("b3", 3)]);
    let after = t.counters(2);
    let delta = |d: Direction| after.traffic(d).packets - before.traffic(d).packets;
    assert!(
        delta(Direction::SockLbConnect) >= 3000,
        "socket-path selections: {}",
        delta(Direction::SockLbConnect)
    );
    assert_eq!(delta(Direction::LbDnat), 0, "no packet translated in TC");
    // Closed sockets forget their VIP (the release hook), so the table holds live ones only.
    let held =
        overlay_daemon::maps::SockMaps::balanced_count(&t.hosts[2].pins.maps()).expect("SOCK_REV");
    assert!(held <= 10, "{held} closed sockets still in SOCK_REV");

    // Long-lived connections, opened until every backend has some.
    let mut sessions: Vec<Session> = Vec::new();
    let opened = t.container("client").ns.enter(move || {
        let mut s = Vec::new();
        for _ in 0..60 {
            s.push(Session::open(vip).expect("open long-lived connection"));
        }
        s
    });
    sessions.extend(opened);
    let on = |n: &str| sessions.iter().filter(|s| s.backend == n).count();
    assert!(
        on("b1") > 0 && on("b2") > 0 && on("b3") > 0,
        "sessions on every backend"
    );
    for s in &sessions {
        assert_eq!(s.peer().expect("getpeername"), vip, "the peer is the VIP");
    }

    // b4 comes: every open connection stays on its backend; new ones reach b4 too.
    let set_backends = |t: &Topology, backends: &[(Ipv4Addr, u32)]| {
        let mut args = vec!["service".to_owned(), "set-backends".into(), "web".into()];
        for (ip, w) in backends {
            args.extend(["--backend".to_owned(), backend(*ip, *w)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        t.overlayctl_ok(0, &args);
    };
    set_backends(&t, &[(b1, 1), (b2, 2), (b3, 3), (b4, 3)]);
    for h in 0..3 {
        wait_table(&t, h, Svc::tcp(VNI, VIP, 80), &[b1, b2, b3, b4]);
    }
    let mut sessions = t.container("client").ns.enter(move || {
        for s in sessions.iter_mut() {
            let msg = format!("after b4 came, via {}\n", s.backend);
            s.roundtrip(msg.as_bytes())
                .unwrap_or_else(|e| panic!("connection to {} broke when b4 came: {e}", s.backend));
        }
        sessions
    });
    let counts = spread(&t, "client", vip, 300);
    assert!(
        counts.contains_key("b4"),
        "b4 gets new connections: {counts:?}"
    );

    // b3 leaves the configured backends: Maglev moves its slots and (almost) nothing else.
    let before = table(&t, 2, Svc::tcp(VNI, VIP, 80));
    set_backends(&t, &[(b1, 1), (b2, 2), (b4, 3)]);
    for h in 0..3 {
        wait_table(&t, h, Svc::tcp(VNI, VIP, 80), &[b1, b2, b4]);
    }
    let after = table(&t, 2, Svc::tcp(VNI, VIP, 80));
    assert_eq!(before.len(), after.len());
    let of_b3 = before.iter().filter(|b| b.0 == b3).count();
    let moved_others = before
        .iter()
        .zip(&after)
        .filter(|(old, new)| old.0 != b3 && old != new)
        .count();
    let share = |n: usize| n as f64 / before.len() as f64 * 100.0;
    eprintln!(
        "Maglev disruption: b3 owned {:.1}% of slots; {:.2}% of the other slots moved",
        share(of_b3),
        share(moved_others)
    );
    assert!(
        share(moved_others) < 5.0,
        "removing b3 moved {:.2}% of the others' slots",
        share(moved_others)
    );

    // Connections to b3 are closed at once (not left to hang until TCP gives up); those on
    // the remaining backends carry on.
    let sessions = t.container("client").ns.enter(move || {
        for s in sessions.iter_mut().filter(|s| s.backend == "b3") {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match s.roundtrip(b"to b3\n") {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => break,
                    Err(e) => panic!("connection to b3: {e:?}, not ECONNABORTED"),
                    Ok(()) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(100))
                    }
                    Ok(()) => panic!("a connection to b3 still works 10 s after b3 left"),
                }
            }
        }
        for s in sessions.iter_mut().filter(|s| s.backend != "b3") {
            for round in 0..3 {
                let msg = format!("still there {round} via {}", s.backend);
                s.roundtrip(msg.as_bytes()).unwrap_or_else(|e| {
                    panic!("connection to {} broke after b3 left: {e}", s.backend)
                });
            }
        }
        sessions
    });
    drop(sessions);

    // New connections now split 1:2:3 between b1, b2 and b4 (3000 of them: with 600, b1's
    // expected 100 is only 1.6 standard deviations from the ±15 % bound).
    let counts = spread(&t, "client", vip, 3000);
    assert_shares(&counts, &[("b1", 1), ("b2", 2), ("b4", 3)]);

    t.overlayctl_ok(0, &["service", "rm", "web"]);
    for h in 0..3 {
        t.wait_status(h, "service removed", |s| s["services"] == 0);
    }
}

#[test]
fn udp_labels_empty_services_and_dead_nodes() {
    let mut t = cluster();
    t.add_labelled_pod(0, "l1", "red", &["echo:7000", "dns:5353"]);
    t.add_labelled_pod(1, "l2", "red", &["echo:7000", "dns:5353"]);
    t.add_pod(0, "local-client", "red");
    t.add_pod(2, "client", "red");
    for h in 0..3 {
        t.wait_converged(h);
    }
    let (l1, l2) = (t.container("l1").ip, t.container("l2").ip);
    let _tcp: Vec<_> = ["l1", "l2"]
        .iter()
        .map(|n| tcp_identity_server(&t.container(n).ns, 7000, n))
        .collect();
    let _udp: Vec<_> = ["l1", "l2"]
        .iter()
        .map(|n| udp_identity_server(&t.container(n).ns, 5353, n))
        .collect();

    // Backends by label only: the services name none.
    let echo_vip = Ipv4Addr::new(198, 19, 250, 20);
    let dns_vip = Ipv4Addr::new(198, 19, 250, 53);
    let empty_vip = Ipv4Addr::new(198, 19, 250, 99);
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "echo",
            "--network",
            "red",
            "--vip",
            "198.19.250.20:7",
            "--proto",
            "tcp",
        ],
    );
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "dns",
            "--network",
            "red",
            "--vip",
            "198.19.250.53:53",
            "--proto",
            "udp",
        ],
    );
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "empty-tcp",
            "--network",
            "red",
            "--vip",
            "198.19.250.99:80",
        ],
    );
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "empty-udp",
            "--network",
            "red",
            "--vip",
            "198.19.250.99:53",
            "--proto",
            "udp",
        ],
    );
    for h in 0..3 {
        wait_table(&t, h, Svc::tcp(VNI, echo_vip, 7), &[l1, l2]);
        wait_table(&t, h, Svc::udp(VNI, dns_vip, 53), &[l1, l2]);
        t.wait_status(h, "services installed", |s| s["services"] == 4);
    }

    // Bad input is refused with a one-line reason.
    for (args, needle) in [
        (
            vec![
                "service",
                "add",
                "x",
                "--network",
                "red",
                "--vip",
                "198.19.1.77:80",
            ],
            "inside",
        ),
        (
            vec![
                "service",
                "add",
                "x",
                "--network",
                "red",
                "--vip",
                "198.19.250.20:7",
            ],
            "is taken by service",
        ),
        (
            vec![
                "service",
                "add",
                "x",
                "--network",
                "nope",
                "--vip",
                "198.19.250.1:80",
            ],
            "does not exist",
        ),
        (
            vec![
                "service",
                "add",
                "x",
                "--network",
                "red",
                "--vip",
                "198.19.250.1:80",
                "--backend",
                "198.19.1.5:80@0",
            ],
            "weight",
        ),
        (vec!["service", "rm", "ghost"], "does not exist"),
    ] {
        let out = t.overlayctl(0, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle) && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
    }

    // UDP through the VIP: replies come from the VIP (the socket is connected to it).
    let dns = SocketAddrV4::new(dns_vip, 53);
    let seen = t.container("client").ns.enter(move || {
        let mut seen = BTreeMap::new();
        for i in 0..200 {
            let msg = format!("q{i}");
            let (from, reply) = udp_ask(dns, &msg).unwrap_or_else(|e| panic!("UDP query {i}: {e}"));
            assert_eq!(from, dns, "reply source");
            let (name, echoed) = reply.split_once(':').expect("name:payload");
            assert_eq!(echoed, msg);
            *seen.entry(name.to_owned()).or_insert(0) += 1;
        }
        seen
    });
    assert_eq!(seen.len(), 2, "both UDP backends answer: {seen:?}");

    // TCP from a client on the same host as one backend, and from another host.
    let echo = SocketAddrV4::new(echo_vip, 7);
    for client in ["local-client", "client"] {
        let counts = spread(&t, client, echo, 200);
        assert_eq!(counts.len(), 2, "{client}: {counts:?}");
    }

    // No backends: TCP is reset at once, UDP gets port unreachable; nothing hangs.
    let (tcp_err, udp_err) = t.container("client").ns.enter(move || {
        let started = Instant::now();
        let tcp = tcp_ask(SocketAddrV4::new(empty_vip, 80), "x").unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "TCP answered quickly"
        );
        let udp = udp_ask(SocketAddrV4::new(empty_vip, 53), "x").unwrap_err();
        (tcp, udp)
    });
    assert_eq!(
        tcp_err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{tcp_err}"
    );
    assert_eq!(
        udp_err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{udp_err}"
    );
    let c = t.counters(2);
    assert!(
        c.traffic(Direction::LbRejected).packets >= 2,
        "rejections counted"
    );

    // The node of l2 dies: after its lease expires l2 leaves every table, by itself.
    t.stop_daemon(1, Signal::SIGKILL);
    for h in [0, 2] {
        wait_table(&t, h, Svc::tcp(VNI, echo_vip, 7), &[l1]);
        wait_table(&t, h, Svc::udp(VNI, dns_vip, 53), &[l1]);
    }
    let counts = spread(&t, "client", echo, 100);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["l1"], "{counts:?}");
    // It comes back with its endpoint and label.
    t.start_daemon(1, &[]);
    for h in 0..3 {
        wait_table(&t, h, Svc::tcp(VNI, echo_vip, 7), &[l1, l2]);
    }
    let counts = spread(&t, "client", echo, 200);
    assert_eq!(counts.len(), 2, "{counts:?}");
}

/// A flood of new flows (more than the conntrack table holds) while an established
/// connection runs, and then a backend added: the established connection keeps its backend
/// and its data (its conntrack and reverse entries stay, being in use), the table overflowed.
#[test]
fn a_flood_of_new_flows_never_moves_an_established_one() {
    // The per-packet path's conntrack is what is flooded: sockets do not use it.
    let mut t = cluster_with(&["--socket-lb", "off"]);
    t.add_pod(0, "b1", "red");
    t.add_pod(1, "b2", "red");
    t.add_pod(0, "b3", "red");
    t.add_pod(2, "client", "red");
    for h in 0..3 {
        t.wait_converged(h);
    }
    let ip = |t: &Topology, n: &str| t.container(n).ip;
    let (b1, b2, b3) = (ip(&t, "b1"), ip(&t, "b2"), ip(&t, "b3"));
    let _servers: Vec<_> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| tcp_identity_server(&t.container(n).ns, 8080, n))
        .collect();
    let add = |t: &Topology, args: &[&str]| {
        let mut full = vec!["service", "add"];
        full.extend_from_slice(args);
        t.overlayctl_ok(0, &full);
    };
    add(
        &t,
        &[
            "web",
            "--network",
            "red",
            "--vip",
            "198.19.250.10:80",
            "--backend",
            &format!("{b1}:8080"),
            "--backend",
            &format!("{b2}:8080"),
        ],
    );
    // Four UDP ports of another VIP, each to its own backend port (translated tuples are
    // unique, so one backend port holds at most one flow per client source port): 4 x 64512
    // source ports make 258k distinct flows.
    for p in 0..4u16 {
        add(
            &t,
            &[
                &format!("flood{p}"),
                "--network",
                "red",
                "--vip",
                &format!("198.19.250.11:{}", 5000 + p),
                "--proto",
                "udp",
                "--backend",
                &format!("{b2}:{}", 9 + p),
            ],
        );
    }
    wait_table(&t, 2, Svc::tcp(VNI, VIP, 80), &[b1, b2]);
    for p in 0..4u16 {
        wait_table(
            &t,
            2,
            Svc::udp(VNI, Ipv4Addr::new(198, 19, 250, 11), 5000 + p),
            &[b2],
        );
    }

    let vip = SocketAddrV4::new(VIP, 80);
    let mut session = t
        .container("client")
        .ns
        .enter(move || Session::open(vip).expect("open the established connection"));
    let backend = session.backend.clone();
    // The session talks all along: a message every 20 ms from its own thread.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                session
                    .roundtrip(format!("message {n}\n").as_bytes())
                    .unwrap_or_else(|e| {
                        panic!("the established connection broke after {n} messages: {e}")
                    });
                n += 1;
                thread::sleep(Duration::from_millis(20));
            }
            (session, n)
        })
    };

    let c = t.container("client");
    let gw = overlay_daemon::tables::MacAddr::gateway(VNI);
    let frames: Vec<String> = (0..4)
        .map(|p| {
            format!(
                "{{ eth(da={gw}, sa={}, type=0x0800), ipv4(saddr={}, daddr=198.19.250.11, ttl=64, df), udp(sp=dinc(1024, 65535), dp={}), fill(0x41, 18) }}",
                c.mac, c.ip, 5000 + p
            )
        })
        .collect();
    let out = c.ns.output(
        "trafgen",
        &[
            "-o",
            "eth0",
            "-n",
            "258048",
            "-P",
            "1",
            "--no-sock-mem",
            "-q",
            "-C",
            &frames.join(" "),
        ],
    );
    assert!(
        out.status.success(),
        "trafgen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows = overlay_daemon::maps::LbMaps::flow_count(&t.hosts[2].pins.maps()).expect("LB_CT");
    assert!(
        flows > 100_000,
        "the flood filled the conntrack table: {flows} flows"
    );

    // A backend comes: Maglev moves a third of the slots; established flows keep theirs.
    t.overlayctl_ok(
        0,
        &[
            "service",
            "set-backends",
            "web",
            "--backend",
            &format!("{b1}:8080"),
            "--backend",
            &format!("{b2}:8080"),
            "--backend",
            &format!("{b3}:8080"),
        ],
    );
    wait_table(&t, 2, Svc::tcp(VNI, VIP, 80), &[b1, b2, b3]);
    thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut session, n) = talker.join().expect("the established connection survived");
    assert!(n > 50, "{n} messages");
    assert_eq!(session.backend, backend);
    t.container("client")
        .ns
        .enter(move || session.roundtrip(b"after the flood\n").map(|_| session))
        .expect("still talking to the same backend");
}
