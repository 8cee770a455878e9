//! A client that uses a service and its backend directly, with socket-level balancing (the
//! default) and with the per-packet path only (`--socket-lb off`): both kinds of connection
//! work side by side, alternating and at once, and a translated tuple is never shared with a
//! direct one. Plus the VIPs no service may have.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use overlay_common::{Direction, DropReason};
use overlay_tests::{
    lb::{add_service, cluster, mode, pods},
    services::{
        connect_from, read_name, tcp_ask, tcp_identity_server, udp_ask, udp_identity_server,
        Session,
    },
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 20);

fn vip_and_direct(socket_lb: bool) {
    let mut t = cluster(2, 3, mode(socket_lb));
    pods(&mut t, &[(0, "b1"), (1, "client")]);
    let b1 = t.container("b1").ip;
    let _servers = [
        tcp_identity_server(&t.container("b1").ns, 8080, "b1"),
        udp_identity_server(&t.container("b1").ns, 5353, "b1"),
    ];
    add_service(
        &t,
        "web",
        "198.19.250.20:80",
        "tcp",
        &[format!("{b1}:8080")],
    );
    add_service(
        &t,
        "dns",
        "198.19.250.20:53",
        "udp",
        &[format!("{b1}:5353")],
    );
    t.wait_status(1, "services installed", |s| s["services"] == 2);
    let vip = Target {
        tcp: SocketAddrV4::new(VIP, 80),
        udp: SocketAddrV4::new(VIP, 53),
    };
    let direct = Target {
        tcp: SocketAddrV4::new(b1, 8080),
        udp: SocketAddrV4::new(b1, 5353),
    };
    let before = t.counters(1);

    // Rounds of 3 s through the VIP and straight to the backend, then (socket path) both at
    // once from two threads, the kernel choosing source ports; a VIP session held open all
    // along. The per-packet path keeps no state for direct flows, so "at once" is not part of
    // its promise: a VIP flow can take the tuple of a direct one it cannot see
    // (docs/services.md); alternating is.
    let c = t.container("client");
    let session = c.ns.enter(move || Session::open(vip.tcp)).expect("session");
    let mut session = Some(session);
    let mut done = Vec::new();
    let at_once: &[&[Target]] = if socket_lb { &[&[vip, direct]] } else { &[] };
    let alternating: [&[Target]; 4] = [&[vip], &[direct], &[vip], &[direct]];
    for round in alternating.iter().chain(at_once) {
        let threads: Vec<_> = round
            .iter()
            .map(|to| {
                let to = *to;
                c.ns.spawn(move || hammer(to, Duration::from_secs(3)))
            })
            .collect();
        for (to, th) in round.iter().zip(threads) {
            let n = th
                .join()
                .expect("client")
                .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", t.counters(1), t.daemon_log(1)));
            done.push(format!("{}:{n}", to.tcp));
        }
        let mut s = session.take().expect("session");
        let peer = s.peer().expect("getpeername");
        session = Some(c.ns.enter(move || {
            s.roundtrip(b"between rounds\n")
                .unwrap_or_else(|e| panic!("the VIP session broke: {e}"));
            s
        }));
        if socket_lb {
            assert_eq!(peer, vip.tcp, "getpeername shows the VIP");
        }
    }
    eprintln!("socket_lb={socket_lb}: exchanges per round {done:?}");

    // The same source port for both: the VIP connection first, then the direct one. The
    // socket path sees the same 4-tuple and refuses at connect; the per-packet path refuses
    // the direct SYN (counted), and the VIP connection goes on either way.
    let result = c.ns.spawn(move || -> Result<String, String> {
        let mut first = connect_from(20_000, vip.tcp, Duration::from_secs(3))
            .map_err(|e| format!("VIP from port 20000: {e}"))?;
        read_name(&mut first).map_err(|e| format!("VIP name: {e}"))?;
        let second = connect_from(20_000, direct.tcp, Duration::from_secs(2));
        let outcome = match second {
            Ok(mut s) => match read_name(&mut s) {
                Ok(n) => format!("connected ({n})"),
                Err(e) => format!("connected, then {:?}", e.kind()),
            },
            Err(e) => format!("{:?}", e.kind()),
        };
        use std::io::Write;
        first
            .write_all(b"x")
            .map_err(|e| format!("VIP after: {e}"))?;
        let mut b = [0u8; 1];
        use std::io::Read;
        first
            .read_exact(&mut b)
            .map_err(|e| format!("VIP echo after: {e}"))?;
        Ok(outcome)
    });
    let outcome = result
        .join()
        .expect("client")
        .unwrap_or_else(|e| panic!("{e}"));
    let after = t.counters(1);
    let delta = |d: Direction| after.traffic(d).packets - before.traffic(d).packets;
    let conflicts = after.drops(DropReason::LbTupleConflict).packets
        - before.drops(DropReason::LbTupleConflict).packets;
    eprintln!(
        "socket_lb={socket_lb}: same-port direct connection: {outcome}; sock_lb_connect {}, lb_dnat {}, conflicts {conflicts}, direct UDP remapped {}",
        delta(Direction::SockLbConnect),
        delta(Direction::LbDnat),
        delta(Direction::LbDirectRemap)
    );
    if socket_lb {
        assert_eq!(
            outcome, "AddrNotAvailable",
            "the kernel refuses the duplicate tuple"
        );
        assert!(
            delta(Direction::SockLbConnect) >= 100,
            "VIP connections balanced at connect"
        );
        assert_eq!(delta(Direction::LbDnat), 0, "no packet needed translating");
    } else {
        assert!(
            outcome != "connected (b1)",
            "a duplicate tuple was merged: {outcome}"
        );
        assert!(conflicts >= 1, "the direct SYN refused and counted");
        assert!(delta(Direction::LbDnat) > 0);
        // Direct queries from ports a VIP flow had used (within its 60 s) got ports of their
        // own: with thousands of each in the rounds, some always do.
        assert!(
            delta(Direction::LbDirectRemap) > 0,
            "direct UDP flows remapped"
        );
    }
}

/// A service's TCP and UDP addresses, or a backend's.
#[derive(Clone, Copy)]
struct Target {
    tcp: SocketAddrV4,
    udp: SocketAddrV4,
}

/// Short TCP connections and UDP queries to `to` for `time`, alternating; every one must be
/// answered by b1, and every UDP reply come from the address it was sent to. The number of
/// exchanges, or the first that failed.
fn hammer(to: Target, time: Duration) -> Result<usize, String> {
    let deadline = std::time::Instant::now() + time;
    let mut n = 0;
    while std::time::Instant::now() < deadline {
        let name = tcp_ask(to.tcp, &format!("token-{n}"))
            .map_err(|e| format!("TCP {n} to {}: {e}", to.tcp))?;
        if name != "b1" {
            return Err(format!("{} answered as {name}", to.tcp));
        }
        let (from, reply) =
            udp_ask(to.udp, &format!("q{n}")).map_err(|e| format!("UDP {n} to {}: {e}", to.udp))?;
        if from != to.udp || reply != format!("b1:q{n}") {
            return Err(format!("UDP {n} to {}: {reply:?} from {from}", to.udp));
        }
        n += 1;
    }
    Ok(n)
}

#[test]
fn a_service_and_its_backend_used_directly_with_socket_balancing() {
    vip_and_direct(true);
}

#[test]
fn a_service_and_its_backend_used_directly_per_packet() {
    vip_and_direct(false);
}

/// Addresses that cannot be a VIP, and backends without a port, are refused at once with
/// what to change.
#[test]
fn nonsense_services_are_refused() {
    let mut t = cluster(2, 3, &[]);
    t.add_pod(0, "b1", "red");
    t.wait_converged(0);
    let b1 = t.container("b1").ip;
    let vtep = t.hosts[1].vtep_ip.to_string();
    let backend = format!("{b1}:8080");
    let refused = |vip: &str, backend: &str, want: &str| {
        let out = t.overlayctl(
            0,
            &[
                "service",
                "add",
                "bad",
                "--network",
                "red",
                "--vip",
                vip,
                "--backend",
                backend,
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{vip} with {backend} accepted");
        assert!(err.contains(want), "{vip} with {backend}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    };
    for (vip, want) in [
        ("127.0.0.1:80", "loopback"),
        ("0.0.0.0:80", "unspecified"),
        ("255.255.255.255:80", "broadcast"),
        ("224.0.0.5:80", "multicast"),
        ("169.254.1.1:80", "link-local"),
        (&format!("{vtep}:80") as &str, "VTEP address"),
    ] {
        refused(vip, &backend, want);
    }
    refused("198.19.250.30:80", &format!("{b1}:0"), "give the port");
    let ls = t.overlayctl_ok(0, &["service", "ls"]);
    assert!(!ls.contains("bad"), "nothing was stored: {ls}");
}
