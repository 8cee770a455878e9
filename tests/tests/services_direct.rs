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
    lb::{add_service, cluster, mode, one_service, pods},
    services::{
        connect_from, raw_udp_ask, read_name, same_port, tcp_ask, tcp_identity_server, udp_ask,
        udp_identity_server, Session,
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

    // Rounds of 3 s through the VIP and straight to the backend, then both at once from two
    // threads, the kernel choosing source ports; a VIP session held open all along (a direct
    // connection the kernel gives that session's port must not be refused or merged).
    let c = t.container("client");
    let session = c.ns.enter(move || Session::open(vip.tcp)).expect("session");
    let mut session = Some(session);
    let mut done = Vec::new();
    let rounds: [&[Target]; 5] = [&[vip], &[direct], &[vip], &[direct], &[vip, direct]];
    for (i, round) in rounds.iter().enumerate() {
        let threads: Vec<_> = round
            .iter()
            .map(|to| {
                let to = *to;
                c.ns.spawn(move || hammer(to, Duration::from_secs(3)))
            })
            .collect();
        for (to, th) in round.iter().zip(threads) {
            let n = th.join().expect("client").unwrap_or_else(|e| {
                panic!(
                    "round {i} ({} targets): {e}\nclient host {:?}\nbackend host {:?}\n{}",
                    round.len(),
                    t.counters(1),
                    t.counters(0),
                    t.daemon_log(1)
                )
            });
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

    // The same source port for both, each order, the first connection kept open. The socket
    // path sees the same 4-tuple and refuses at connect. The per-packet path gives the later
    // flow a source port of its own (a direct one remapped, counted; a VIP one remapped
    // because the direct flow was recorded), so both are answered, and the first goes on.
    let vip_first = same_port(&c.ns, 20_000, vip.tcp.into(), direct.tcp.into());
    let direct_first = same_port(&c.ns, 20_001, direct.tcp.into(), vip.tcp.into());
    let after = t.counters(1);
    let delta = |d: Direction| after.traffic(d).packets - before.traffic(d).packets;
    let conflicts = after.drops(DropReason::LbTupleConflict).packets
        - before.drops(DropReason::LbTupleConflict).packets;
    eprintln!(
        "socket_lb={socket_lb}: same port, VIP first: {vip_first}; direct first: {direct_first}; sock_lb_connect {}, lb_dnat {}, conflicts {conflicts}, direct remapped {}",
        delta(Direction::SockLbConnect),
        delta(Direction::LbDnat),
        delta(Direction::LbDirectRemap)
    );
    assert_eq!(conflicts, 0, "no flow refused");
    if socket_lb {
        for outcome in [&vip_first, &direct_first] {
            assert_eq!(
                outcome, "AddrNotAvailable",
                "the kernel refuses the duplicate tuple"
            );
        }
        assert!(
            delta(Direction::SockLbConnect) >= 100,
            "VIP connections balanced at connect"
        );
        assert_eq!(delta(Direction::LbDnat), 0, "no packet needed translating");
    } else {
        for outcome in [&vip_first, &direct_first] {
            assert_eq!(outcome, "connected (b1)", "both connections answered");
        }
        assert!(delta(Direction::LbDnat) > 0);
        assert!(
            delta(Direction::LbDirectRemap) > 0,
            "direct flows on a VIP flow's tuple remapped"
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

/// Per packet, a direct connection remapped off an open VIP connection's tuple keeps its port
/// across a daemon restart (the flow tables and the remap counter are pinned), and so does
/// the VIP connection: both go on, and new direct connections still connect.
#[test]
fn a_remapped_direct_connection_survives_a_daemon_restart() {
    use std::io::{Read, Write};
    let (mut t, b1) = one_service(false, "198.19.250.20:80", "tcp", 8080);
    let _server = tcp_identity_server(&t.container("b1").ns, 8080, "b1");
    let vip = SocketAddrV4::new(VIP, 80);
    let direct = SocketAddrV4::new(b1, 8080);
    let before = t.counters(1);
    let (mut one, n1) = open_from(&t.container("client").ns, 20_010, vip);
    let (mut two, n2) = open_from(&t.container("client").ns, 20_010, direct);
    assert_eq!((n1.as_str(), n2.as_str()), ("b1", "b1"));
    let remapped = t.counters(1).traffic(Direction::LbDirectRemap).packets
        - before.traffic(Direction::LbDirectRemap).packets;
    assert_eq!(remapped, 1, "the direct connection got a port of its own");

    assert!(t.stop_daemon(1, nix::sys::signal::Signal::SIGTERM));
    t.start_daemon(1, mode(false));
    t.wait_status(1, "service reinstalled", |s| s["services"] == 1);
    // Sockets work from any thread; only connecting needs the container's namespace.
    let echo = |s: &mut std::net::TcpStream, what: &str| {
        s.write_all(b"y")
            .and_then(|_| s.read_exact(&mut [0u8; 1]))
            .unwrap_or_else(|e| panic!("{what} after the restart: {e}"));
    };
    echo(&mut one, "the VIP connection");
    echo(&mut two, "the remapped direct connection");
    drop(two);
    let (_three, n3) = open_from(&t.container("client").ns, 20_011, direct);
    assert_eq!(n3, "b1");
    echo(&mut one, "the VIP connection, at the end");
    let after = t.counters(1);
    assert_eq!(
        after.drops(DropReason::LbTupleConflict).packets,
        before.drops(DropReason::LbTupleConflict).packets,
        "nothing refused"
    );
}

/// A direct connection remapped to a port of its own meets an underlay MTU lowered under it:
/// the "fragmentation needed" its host answers quotes the packet as the client sent it (from
/// the port its socket has, not the remapped one), so the client's kernel finds the socket,
/// lowers its path MTU and the transfer goes on instead of stalling.
#[test]
fn a_remapped_direct_connection_learns_a_lowered_path_mtu() {
    use std::io::{Read, Write};
    let (t, b1) = one_service(false, "198.19.250.20:80", "tcp", 8080);
    let _server = tcp_identity_server(&t.container("b1").ns, 8080, "b1");
    let before = t.counters(1);
    let (mut vip, _) = open_from(
        &t.container("client").ns,
        20_030,
        SocketAddrV4::new(VIP, 80),
    );
    let (mut direct, _) = open_from(
        &t.container("client").ns,
        20_030,
        SocketAddrV4::new(b1, 8080),
    );
    let remapped = t.counters(1).traffic(Direction::LbDirectRemap).packets
        - before.traffic(Direction::LbDirectRemap).packets;
    assert_eq!(remapped, 1, "the direct connection got a port of its own");

    // The operator lowers the underlay MTU of both hosts; containers keep MTU 1450.
    for h in 0..2 {
        t.hosts[h].ns.ip(&["link", "set", "ul0", "mtu", "1400"]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(0..2).all(|h| t.daemon_log(h).contains("the underlay MTU changed")) {
        assert!(
            std::time::Instant::now() < deadline,
            "a daemon missed the MTU change"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let frag_needed = t.counters(1).traffic(Direction::IcmpFragNeeded).packets;
    // 1 MiB each way in full-size segments, in 64 KiB exchanges.
    direct
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let chunk: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    for i in 0..16 {
        let mut back = vec![0u8; chunk.len()];
        direct
            .write_all(&chunk)
            .and_then(|_| direct.read_exact(&mut back))
            .unwrap_or_else(|e| {
                panic!(
                    "exchange {i} on the remapped connection: {e}\n{:?}",
                    t.counters(1)
                )
            });
        assert!(back == chunk, "exchange {i} came back changed");
    }
    assert!(
        t.counters(1).traffic(Direction::IcmpFragNeeded).packets > frag_needed,
        "the transfer never met the lower MTU"
    );
    vip.write_all(b"y")
        .and_then(|_| vip.read_exact(&mut [0u8; 1]))
        .expect("the VIP connection goes on");
}

/// With socket balancing, traffic that bypasses the sockets (a raw socket) is balanced per
/// packet: a direct UDP flow from the port such a VIP flow holds gets a port of its own at
/// its first datagram, and its later datagrams follow it (one remap, not one per datagram),
/// every reply coming from the backend's address.
#[test]
fn a_direct_flow_on_a_raw_vip_flows_tuple_keeps_its_own_port() {
    let (t, b1) = one_service(true, "198.19.250.20:53", "udp", 5353);
    let client = t.container("client").ip;
    let _server = udp_identity_server(&t.container("b1").ns, 5353, "b1");
    let before = t.counters(1);
    let direct = SocketAddrV4::new(b1, 5353);
    let replies = t
        .container("client")
        .ns
        .enter(move || -> std::io::Result<Vec<(SocketAddrV4, String)>> {
            let src = SocketAddrV4::new(client, 20_020);
            let first = raw_udp_ask(src, SocketAddrV4::new(VIP, 53), "raw")?;
            let sock = std::net::UdpSocket::bind(src)?;
            sock.connect(direct)?;
            sock.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = vec![first];
            for i in 0..3 {
                sock.send(format!("d{i}").as_bytes())?;
                let mut buf = [0u8; 256];
                let (n, from) = sock.recv_from(&mut buf)?;
                let std::net::SocketAddr::V4(from) = from else {
                    return Err(std::io::Error::other("IPv6 reply"));
                };
                out.push((from, String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
            Ok(out)
        })
        .unwrap_or_else(|e| panic!("{e}\n{:?}", t.counters(1)));
    assert_eq!(
        replies[0],
        (SocketAddrV4::new(VIP, 53), "b1:raw".to_string()),
        "the raw VIP query answered from the VIP"
    );
    for (i, r) in replies[1..].iter().enumerate() {
        assert_eq!(r, &(direct, format!("b1:d{i}")), "direct query {i}");
    }
    let after = t.counters(1);
    let delta = |d: Direction| after.traffic(d).packets - before.traffic(d).packets;
    assert_eq!(
        delta(Direction::LbDnat),
        1,
        "the raw query translated per packet"
    );
    assert_eq!(
        delta(Direction::LbDirectRemap),
        1,
        "the direct flow remapped once and followed"
    );
}

/// A connection from `port` to `to` in namespace `ns`, and the name its server sent.
fn open_from(
    ns: &overlay_tests::netns::Netns,
    port: u16,
    to: SocketAddrV4,
) -> (std::net::TcpStream, String) {
    ns.spawn(move || {
        let mut s = connect_from(port, to, Duration::from_secs(3))?;
        read_name(&mut s).map(|n| (s, n))
    })
    .join()
    .expect("client")
    .unwrap_or_else(|e| panic!("{to} from port {port}: {e}"))
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

/// Per packet, a VIP connection and a direct one to its backend opened from the same source
/// port at the same instant, from two CPUs, hundreds of times: the programs on both CPUs
/// look for the translated tuple before either has claimed it, and only one may claim it;
/// the other gets a port of its own. Both connections are answered every time (a claim
/// that overwrote the other's made the loser's replies come back from the wrong address, and
/// its connection stalled).
#[test]
fn a_vip_and_a_direct_connection_racing_for_one_tuple_both_connect() {
    use std::sync::{Arc, Barrier};
    let (t, b1) = one_service(false, "198.19.250.20:80", "tcp", 8080);
    let _server = tcp_identity_server(&t.container("b1").ns, 8080, "b1");
    let targets = [SocketAddrV4::new(VIP, 80), SocketAddrV4::new(b1, 8080)];
    const ROUNDS: u16 = 400;
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = targets
        .into_iter()
        .map(|to| {
            let barrier = barrier.clone();
            t.container("client")
                .ns
                .spawn(move || -> Result<(), String> {
                    for i in 0..ROUNDS {
                        let port = 30_000 + i;
                        barrier.wait();
                        let mut s = connect_from(port, to, Duration::from_secs(3))
                            .map_err(|e| format!("{to} from {port}: {e}"))?;
                        let name =
                            read_name(&mut s).map_err(|e| format!("{to} from {port}: {e}"))?;
                        if name != "b1" {
                            return Err(format!("{to} from {port} answered as {name}"));
                        }
                    }
                    Ok(())
                })
        })
        .collect();
    for th in threads {
        th.join()
            .expect("client")
            .unwrap_or_else(|e| panic!("{e}\n{:?}", t.counters(1)));
    }
}
