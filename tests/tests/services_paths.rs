//! Which path balances what: a backend reaching its own service (hairpin) through either
//! path, and one container whose socket traffic takes the socket path while its raw traffic
//! to the same VIP takes the per-packet path, with the same spread by weight.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use overlay_common::Direction;
use overlay_tests::{
    lb::{add_service, assert_shares, cluster, mode, pods, wait_table, Svc},
    services::{raw_udp_ask, tcp_identity_server, udp_ask, udp_identity_server, Session},
    Topology,
};

const VNI: u32 = 100;
/// Answers per backend name.
type Counts = BTreeMap<String, usize>;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 40);

/// Backend b1 uses the service it serves, TCP and UDP, until it has been given both itself
/// and the other backend: every reply comes from the VIP, the peer it connected to.
fn hairpin(socket_lb: bool) {
    let mut t = cluster(2, 3, mode(socket_lb));
    pods(&mut t, &[(0, "b1"), (1, "b2")]);
    let (b1, b2) = (t.container("b1").ip, t.container("b2").ip);
    let _servers: Vec<_> = ["b1", "b2"]
        .iter()
        .flat_map(|n| {
            let ns = &t.container(n).ns;
            [
                tcp_identity_server(ns, 8080, n),
                udp_identity_server(ns, 5353, n),
            ]
        })
        .collect();
    add_service(
        &t,
        "web",
        "198.19.250.40:80",
        "tcp",
        &[format!("{b1}:8080"), format!("{b2}:8080")],
    );
    add_service(
        &t,
        "dns",
        "198.19.250.40:53",
        "udp",
        &[format!("{b1}:5353"), format!("{b2}:5353")],
    );
    wait_table(&t, 0, Svc::tcp(VNI, VIP, 80), &[b1, b2]);
    wait_table(&t, 0, Svc::udp(VNI, VIP, 53), &[b1, b2]);

    let (web, dns) = (SocketAddrV4::new(VIP, 80), SocketAddrV4::new(VIP, 53));
    let result = t
        .container("b1")
        .ns
        .spawn(move || -> Result<(Counts, Counts), String> {
            let mut tcp = BTreeMap::new();
            for i in 0..60 {
                let mut s = Session::open(web).map_err(|e| format!("TCP {i} to the VIP: {e}"))?;
                let peer = s.peer().map_err(|e| format!("getpeername: {e}"))?;
                if peer != web {
                    return Err(format!("TCP {i}: peer {peer}, not the VIP {web}"));
                }
                s.roundtrip(format!("hairpin {i}\n").as_bytes())
                    .map_err(|e| format!("TCP {i} via {}: {e}", s.backend))?;
                *tcp.entry(s.backend.clone()).or_insert(0) += 1;
            }
            let mut udp = BTreeMap::new();
            for i in 0..60 {
                let msg = format!("q{i}");
                let (from, reply) = udp_ask(dns, &msg).map_err(|e| format!("UDP {i}: {e}"))?;
                if from != dns {
                    return Err(format!("UDP {i}: reply from {from}, not the VIP {dns}"));
                }
                let (name, echoed) = reply.split_once(':').ok_or(format!("reply {reply:?}"))?;
                if echoed != msg {
                    return Err(format!("UDP {i}: {name} echoed {echoed:?}"));
                }
                *udp.entry(name.to_owned()).or_insert(0) += 1;
            }
            Ok((tcp, udp))
        });
    let (tcp, udp) = result
        .join()
        .expect("client")
        .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", t.counters(0), t.daemon_log(0)));
    eprintln!("socket_lb={socket_lb}: TCP {tcp:?}, UDP {udp:?}");
    assert_eq!(
        tcp.len(),
        2,
        "TCP reached itself and the other backend: {tcp:?}"
    );
    assert_eq!(
        udp.len(),
        2,
        "UDP reached itself and the other backend: {udp:?}"
    );
    if !socket_lb {
        let c = t.counters(0);
        assert!(
            c.traffic(Direction::LbHairpin).packets > 0,
            "hairpin SNAT counted"
        );
    }
}

#[test]
fn a_backend_reaches_its_own_service_with_socket_balancing() {
    hairpin(true);
}

#[test]
fn a_backend_reaches_its_own_service_per_packet() {
    hairpin(false);
}

/// One container, one UDP service weighted 1:2:3: datagrams from UDP sockets are balanced at
/// connect/sendmsg, the same datagrams sent on a raw socket by the per-packet path, and both
/// spread by weight with every reply from the VIP. A backend that comes moves neither kind.
#[test]
fn socket_and_raw_traffic_from_one_container_take_their_own_paths_alike() {
    let mut t = cluster(2, 3, &[]);
    pods(
        &mut t,
        &[(0, "b1"), (0, "b2"), (1, "b3"), (0, "b4"), (1, "client")],
    );
    let ip = |n: &str| t.container(n).ip;
    let (b1, b2, b3, b4, client) = (ip("b1"), ip("b2"), ip("b3"), ip("b4"), ip("client"));
    let _servers: Vec<_> = ["b1", "b2", "b3", "b4"]
        .iter()
        .map(|n| udp_identity_server(&t.container(n).ns, 5353, n))
        .collect();
    let weighted = |list: &[(Ipv4Addr, u32)]| -> Vec<String> {
        list.iter()
            .map(|(ip, w)| format!("{ip}:5353@{w}"))
            .collect()
    };
    add_service(
        &t,
        "dns",
        "198.19.250.40:53",
        "udp",
        &weighted(&[(b1, 1), (b2, 2), (b3, 3)]),
    );
    let svc = Svc::udp(VNI, VIP, 53);
    wait_table(&t, 1, svc, &[b1, b2, b3]);
    let dns = svc.addr();
    let weights = [("b1", 1), ("b2", 2), ("b3", 3)];
    let count =
        |t: &Topology,
         f: fn(usize, SocketAddrV4, Ipv4Addr) -> std::io::Result<(SocketAddrV4, String)>| {
            let result = t.container("client").ns.spawn(
                move || -> Result<BTreeMap<String, usize>, String> {
                    let mut seen = BTreeMap::new();
                    for i in 0..3000 {
                        let (from, reply) =
                            f(i, dns, client).map_err(|e| format!("datagram {i}: {e}"))?;
                        if from != dns {
                            return Err(format!("datagram {i}: reply from {from}, not {dns}"));
                        }
                        let name = reply.split(':').next().unwrap_or_default().to_owned();
                        *seen.entry(name).or_insert(0) += 1;
                    }
                    Ok(seen)
                },
            );
            result
                .join()
                .expect("client")
                .unwrap_or_else(|e| panic!("{e}\n{:?}", t.counters(1)))
        };
    let delta = |before: &overlay_daemon::maps::CounterSnapshot, t: &Topology, d: Direction| {
        t.counters(1).traffic(d).packets - before.traffic(d).packets
    };

    // From sockets: each a fresh connected UDP socket, balanced at connect.
    let before = t.counters(1);
    let by_socket = count(&t, |i, dns, _| udp_ask(dns, &format!("s{i}")));
    assert_shares(&by_socket, &weights);
    assert!(delta(&before, &t, Direction::SockLbConnect) >= 3000);
    assert_eq!(
        delta(&before, &t, Direction::LbDnat),
        0,
        "nothing translated in TC"
    );

    // An unconnected socket: its first sendto picks a backend that the socket then keeps
    // (request/response protocols keep one server); every reply shown from the VIP.
    let before = t.counters(1);
    let names = t.container("client").ns.enter(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        let mut names = BTreeMap::new();
        for i in 0..100 {
            sock.send_to(format!("u{i}").as_bytes(), dns)
                .expect("sendto");
            let (n, from) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("reply {i}: {e}"));
            assert_eq!(from, dns.into(), "recvfrom shows the VIP");
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            *names
                .entry(reply.split(':').next().unwrap_or_default().to_owned())
                .or_insert(0) += 1;
        }
        names
    });
    assert_eq!(names.len(), 1, "one backend for the socket: {names:?}");
    assert_eq!(
        delta(&before, &t, Direction::SockLbSendmsg),
        1,
        "one selection"
    );
    assert_eq!(delta(&before, &t, Direction::LbDnat), 0);

    // From a raw socket (source ports 20000..23000, below the ephemeral range): no socket
    // hook sees these, TC does.
    let before = t.counters(1);
    let by_packet = count(&t, |i, dns, client| {
        let src = SocketAddrV4::new(client, 20_000 + i as u16);
        raw_udp_ask(src, dns, &format!("r{i}"))
    });
    assert_shares(&by_packet, &weights);
    assert!(
        delta(&before, &t, Direction::LbDnat) >= 3000,
        "translated in TC"
    );
    assert_eq!(delta(&before, &t, Direction::SockLbConnect), 0);
    assert_eq!(delta(&before, &t, Direction::SockLbSendmsg), 0);
    eprintln!("socket path {by_socket:?}, per-packet path {by_packet:?}");

    // Flows of both kinds open when b4 comes keep their backend.
    let (sockets, raw) = t.container("client").ns.enter(move || {
        let sockets: Vec<(UdpSocket, String)> = (0..30)
            .map(|i| {
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                s.connect(dns).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let name = ask_on(&s, &format!("k{i}")).expect("first answer");
                (s, name)
            })
            .collect();
        let raw: Vec<(u16, String)> = (0..30u16)
            .map(|i| {
                let src = SocketAddrV4::new(client, 24_000 + i);
                let (_, reply) = raw_udp_ask(src, dns, "first").expect("raw first answer");
                (
                    src.port(),
                    reply.split(':').next().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        (sockets, raw)
    });
    t.overlayctl_ok(
        0,
        &{
            let list = weighted(&[(b1, 1), (b2, 2), (b3, 3), (b4, 3)]);
            let mut args: Vec<String> = ["service", "set-backends", "dns"]
                .map(String::from)
                .to_vec();
            for b in list {
                args.extend(["--backend".to_owned(), b]);
            }
            args
        }
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    wait_table(&t, 1, svc, &[b1, b2, b3, b4]);
    t.container("client").ns.enter(move || {
        for (i, (s, name)) in sockets.iter().enumerate() {
            let now = ask_on(s, &format!("again{i}")).expect("answer after b4 came");
            assert_eq!(&now, name, "connected socket {i} moved");
        }
        for (port, name) in &raw {
            let src = SocketAddrV4::new(client, *port);
            let (_, reply) = raw_udp_ask(src, dns, "again").expect("raw answer after b4 came");
            assert!(
                reply.starts_with(&format!("{name}:")),
                "raw flow from {port} moved: {reply}"
            );
        }
    });
    let counts = spread_udp(&t, dns);
    assert!(counts.contains_key("b4"), "b4 gets new flows: {counts:?}");
}

/// One request on a connected UDP socket; the answering backend's name.
fn ask_on(s: &UdpSocket, msg: &str) -> std::io::Result<String> {
    s.send(msg.as_bytes())?;
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]);
    Ok(reply.split(':').next().unwrap_or_default().to_owned())
}

/// 300 fresh UDP sockets' answers, counted per backend.
fn spread_udp(t: &Topology, dns: SocketAddrV4) -> BTreeMap<String, usize> {
    t.container("client").ns.enter(move || {
        let mut seen = BTreeMap::new();
        for i in 0..300 {
            let (_, reply) = udp_ask(dns, &format!("n{i}")).expect("answer");
            *seen
                .entry(reply.split(':').next().unwrap_or_default().to_owned())
                .or_insert(0) += 1;
        }
        seen
    })
}
