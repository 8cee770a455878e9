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
    services::{connect_from, read_name, tcp_ask, tcp_identity_server, Session},
    Topology, TopologySpec,
};

const VNI: u32 = 100;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 20);

fn cluster(extra: &[&str]) -> Topology {
    let mut t = Topology::new(
        TopologySpec::new(2)
            .network("red", VNI, "198.19.1.0/24")
            .with_etcd(3),
    );
    for h in 0..2 {
        t.start_daemon(h, extra);
    }
    for h in 0..2 {
        t.wait_status(h, "network installed", |s| {
            s["networks"] == 1 && s["vteps"] == 1
        });
    }
    t
}

fn vip_and_direct(socket_lb: bool) {
    let mut t = cluster(if socket_lb {
        &[]
    } else {
        &["--socket-lb", "off"]
    });
    t.add_pod(0, "b1", "red");
    t.add_pod(1, "client", "red");
    for h in 0..2 {
        t.wait_converged(h);
    }
    let b1 = t.container("b1").ip;
    let _server = tcp_identity_server(&t.container("b1").ns, 8080, "b1");
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "web",
            "--network",
            "red",
            "--vip",
            "198.19.250.20:80",
            "--backend",
            &format!("{b1}:8080"),
        ],
    );
    t.wait_status(1, "service installed", |s| s["services"] == 1);
    let vip = SocketAddrV4::new(VIP, 80);
    let direct = SocketAddrV4::new(b1, 8080);
    let before = t.counters(1);

    // Alternating, the kernel choosing source ports; and a VIP session held open meanwhile.
    let c = t.container("client");
    let result = c.ns.spawn(move || -> Result<(), String> {
        let mut session = Session::open(vip).map_err(|e| format!("session: {e}"))?;
        let peer = session_peer(vip)?;
        if socket_lb && peer != vip {
            return Err(format!("getpeername shows {peer}, not the VIP {vip}"));
        }
        for i in 0..150 {
            let to = if i % 2 == 0 { vip } else { direct };
            let name =
                tcp_ask(to, &format!("token-{i}")).map_err(|e| format!("{i} to {to}: {e}"))?;
            if name != "b1" {
                return Err(format!("{to} answered as {name}"));
            }
            session
                .roundtrip(format!("during {i}\n").as_bytes())
                .map_err(|e| format!("the session broke at {i}: {e}"))?;
        }
        Ok(())
    });
    result
        .join()
        .expect("client")
        .unwrap_or_else(|e| panic!("{e}\n{}", t.daemon_log(1)));

    // The same source port for both: the VIP connection first, then the direct one. The
    // socket path sees the same 4-tuple and refuses at connect; the per-packet path refuses
    // the direct SYN (counted), and the VIP connection goes on either way.
    let result = c.ns.spawn(move || -> Result<String, String> {
        let mut first = connect_from(40_000, vip, Duration::from_secs(3))
            .map_err(|e| format!("VIP from 40000: {e}"))?;
        read_name(&mut first).map_err(|e| format!("VIP name: {e}"))?;
        let second = connect_from(40_000, direct, Duration::from_secs(2));
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
        "socket_lb={socket_lb}: same-port direct connection: {outcome}; sock_lb_connect {}, lb_dnat {}, conflicts {conflicts}",
        delta(Direction::SockLbConnect),
        delta(Direction::LbDnat)
    );
    if socket_lb {
        assert_eq!(
            outcome, "AddrNotAvailable",
            "the kernel refuses the duplicate tuple"
        );
        assert!(
            delta(Direction::SockLbConnect) >= 76,
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
    }
}

/// The peer the kernel reports for a fresh connection to `addr`.
fn session_peer(addr: SocketAddrV4) -> Result<SocketAddrV4, String> {
    let conn = std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    match conn.peer_addr().map_err(|e| e.to_string())? {
        std::net::SocketAddr::V4(a) => Ok(a),
        other => Err(format!("peer {other}")),
    }
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
    let mut t = cluster(&[]);
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
