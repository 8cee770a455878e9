//! Service discovery: every overlayd answers its containers' DNS on their network's
//! gateway. Three hosts, two networks, real resolvers in the containers (busybox nslookup)
//! and raw queries for what nslookup cannot send (TCP, malformed, from the underlay).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use overlay_tests::{ChildGuard, Netns, Topology, TopologySpec};

const VIP_WEB: &str = "198.18.250.1";
const VIP_DB: &str = "198.18.251.1";
const UPSTREAM_NAME: &str = "upstream.example.test";
const UPSTREAM_ADDR: &str = "198.18.77.7";

/// One query over UDP from inside `ns`; `None` if nothing came back in `wait`.
fn udp_query(ns: &Netns, server: Ipv4Addr, bytes: Vec<u8>, wait: Duration) -> Option<Vec<u8>> {
    ns.enter(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(wait)).unwrap();
        sock.send_to(&bytes, SocketAddr::new(server.into(), 53))
            .ok()?;
        let mut buf = vec![0u8; 65535];
        let n = sock.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    })
}

/// One query over TCP from inside `ns`; `None` if no connection or no answer.
fn tcp_query(ns: &Netns, server: Ipv4Addr, name: &str) -> Option<Vec<u8>> {
    let q = query_bytes(name, RecordType::A);
    ns.enter(move || {
        use std::io::{Read, Write};
        let addr = SocketAddr::new(server.into(), 53);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(&(q.len() as u16).to_be_bytes()).ok()?;
        s.write_all(&q).ok()?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).ok()?;
        let mut reply = vec![0u8; u16::from_be_bytes(len).into()];
        s.read_exact(&mut reply).ok()?;
        Some(reply)
    })
}

fn query_bytes(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn ask(ns: &Netns, server: Ipv4Addr, name: &str, qtype: RecordType) -> Message {
    let reply = udp_query(ns, server, query_bytes(name, qtype), Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no answer to {name} from {server}"));
    Message::from_vec(&reply).unwrap()
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// busybox nslookup in the container, against its gateway: (succeeded, output).
fn nslookup(t: &Topology, container: &str, args: &[&str]) -> (bool, String) {
    let c = t.container(container);
    let gw = c.gateway.to_string();
    let mut full = vec!["nslookup"];
    full.extend_from_slice(args);
    full.push(&gw);
    let out = c.ns.output("busybox", &full);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn containers_resolve_services_containers_and_the_world_by_name() {
    let mut t = Topology::new(
        TopologySpec::new(3)
            .network("red", 100, "198.19.1.0/24")
            .network("green", 200, "198.19.2.0/24")
            .with_etcd(5),
    );
    // The upstream: dnsmasq on host 2's underlay address, serving one name of its own. Host
    // 2's overlayd serves its gateways on port 53 beside it.
    let upstream_ip = t.hosts[2].vtep_ip.to_string();
    let mut dnsmasq = t.hosts[2]
        .ns
        .command("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            &format!("--listen-address={upstream_ip}"),
            &format!("--address=/{UPSTREAM_NAME}/{UPSTREAM_ADDR}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|c| ChildGuard::new(c, "dnsmasq"))
        .expect("dnsmasq (cargo xtask setup installs dnsmasq-base)");
    // Host 1 runs a resolver of its own on port 53 of every address (dnsmasq's default:
    // the wildcard address) before overlayd starts: the containers still get overlayd.
    let mut host_resolver = t.hosts[1]
        .ns
        .command("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--pid-file=",
            "--address=/web.red.overlay.internal/198.18.66.6",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|c| ChildGuard::new(c, "dnsmasq on the wildcard address"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for h in 0..3 {
        t.start_daemon(h, &["--dns-upstream", &upstream_ip]);
    }
    for h in 0..3 {
        t.wait_status(h, "networks installed", |s| {
            s["networks"] == 2 && s["vteps"] == 2
        });
    }
    t.add_named_pod(0, "a", "red");
    t.add_k8s_pod(1, "b", "red", "shop");
    t.add_named_pod(2, "c", "red");
    t.add_named_pod(1, "g", "green");
    t.add_pod(0, "anon", "red");
    for h in 0..3 {
        t.wait_converged(h);
    }
    let a_ip = t.container("a").ip.to_string();
    let g_ip = t.container("g").ip.to_string();
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "web",
            "--network",
            "red",
            "--vip",
            &format!("{VIP_WEB}:80"),
            "--backend",
            &format!("{a_ip}:8080"),
        ],
    );
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "db",
            "--network",
            "green",
            "--vip",
            &format!("{VIP_DB}:5432"),
            "--backend",
            &format!("{g_ip}:5432"),
        ],
    );
    let red_gw = t.container("c").gateway;

    // Names appear on every host as their records do.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !addresses(&ask(
        &t.container("c").ns,
        red_gw,
        "web.red.overlay.internal",
        RecordType::A,
    ))
    .contains(&VIP_WEB.parse().unwrap())
    {
        assert!(Instant::now() < deadline, "web never resolved");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A real resolver in the containers: services, containers by their runtime's name and by
    // pod, SRV per port, PTR.
    let (ok, out) = nslookup(&t, "c", &["web.red.overlay.internal"]);
    assert!(ok && out.contains(VIP_WEB), "{out}");
    let (ok, out) = nslookup(&t, "a", &["c.red.overlay.internal"]);
    assert!(
        ok && out.contains(&t.container("c").ip.to_string()),
        "{out}"
    );
    let (ok, out) = nslookup(&t, "b", &["web.red.overlay.internal"]);
    assert!(
        ok && out.contains(VIP_WEB),
        "beside the host's own resolver: {out}"
    );
    let (ok, out) = nslookup(&t, "c", &["b.shop.red.overlay.internal"]);
    assert!(
        ok && out.contains(&t.container("b").ip.to_string()),
        "{out}"
    );
    let (ok, out) = nslookup(&t, "b", &["-type=srv", "_80._tcp.web.red.overlay.internal"]);
    assert!(ok && out.contains("80 web.red.overlay.internal"), "{out}");
    let (ok, out) = nslookup(&t, "c", &[&a_ip]);
    assert!(ok && out.contains("a.red.overlay.internal"), "{out}");
    // Unknown names under the domain, other networks' names, unnamed containers: NXDOMAIN.
    for name in [
        "nosuch.red.overlay.internal",
        "db.green.overlay.internal",
        "g.green.overlay.internal",
        "anon.red.overlay.internal",
    ] {
        let (ok, out) = nslookup(&t, "c", &[name]);
        assert!(!ok && out.contains("NXDOMAIN"), "{name}: {out}");
    }
    // Green's container sees green's names, not red's.
    let (ok, out) = nslookup(&t, "g", &["db.green.overlay.internal"]);
    assert!(ok && out.contains(VIP_DB), "{out}");
    let (ok, out) = nslookup(&t, "g", &["web.red.overlay.internal"]);
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");
    let (ok, out) = nslookup(&t, "g", &[&a_ip]);
    assert!(
        !ok && out.contains("NXDOMAIN"),
        "green learnt red's PTR: {out}"
    );
    // Nor does it reach red's gateway at all (the datapath drops it).
    let g_ns = &t.container("g").ns;
    assert!(
        udp_query(
            g_ns,
            red_gw,
            query_bytes("web.red.overlay.internal", RecordType::A),
            Duration::from_millis(700)
        )
        .is_none(),
        "green's container got an answer from red's gateway"
    );

    // Other names go upstream (dnsmasq on host 2), from a host without it too.
    let (ok, out) = nslookup(&t, "a", &["-type=a", UPSTREAM_NAME]);
    assert!(ok && out.contains(UPSTREAM_ADDR), "{out}");
    // Answers of the domain carry a short TTL.
    let m = ask(
        &t.container("a").ns,
        red_gw,
        "web.red.overlay.internal",
        RecordType::A,
    );
    assert!(
        m.metadata.authoritative && m.answers.iter().all(|r| r.ttl <= 5),
        "{m:?}"
    );

    // TCP (what a client falls back to after a truncated answer).
    let c_ns = &t.container("c").ns;
    let tcp_answer =
        tcp_query(c_ns, red_gw, "web.red.overlay.internal").expect("an answer over TCP");
    let m = Message::from_vec(&tcp_answer).unwrap();
    assert_eq!(addresses(&m), vec![VIP_WEB.parse::<IpAddr>().unwrap()]);
    // On host 1 the host's resolver holds TCP port 53 on the wildcard address, so overlayd
    // has no TCP listener there: a container's TCP query gets nothing rather than reach
    // the host's resolver (which would answer 198.18.66.6).
    if let Some(reply) = tcp_query(&t.container("b").ns, red_gw, "web.red.overlay.internal") {
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(
            addresses(&m),
            vec![VIP_WEB.parse::<IpAddr>().unwrap()],
            "{m:?}"
        );
    }

    // Malformed and oversized queries: FORMERR or nothing, and the server goes on.
    let garbage = vec![
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
    ];
    let reply = udp_query(c_ns, red_gw, garbage, Duration::from_secs(2)).expect("FORMERR");
    assert_eq!(reply[3] & 0x0f, ResponseCode::FormErr.low(), "{reply:?}");
    assert_eq!(&reply[..2], &[0x12, 0x34]);
    let mut big = query_bytes("web.red.overlay.internal", RecordType::A);
    big.resize(8000, 0xab);
    let _ = udp_query(c_ns, red_gw, big, Duration::from_millis(300));
    for n in [0, 1, 11] {
        let _ = udp_query(c_ns, red_gw, vec![0; n], Duration::from_millis(100));
    }
    let m = ask(c_ns, red_gw, "web.red.overlay.internal", RecordType::A);
    assert_eq!(addresses(&m), vec![VIP_WEB.parse::<IpAddr>().unwrap()]);

    // From the underlay (host 1 routing red's gateway to host 0): nothing answers.
    let h0 = t.hosts[0].vtep_ip.to_string();
    t.hosts[1]
        .ns
        .ip(&["route", "add", &format!("{red_gw}/32"), "via", &h0]);
    assert!(
        udp_query(
            &t.hosts[1].ns,
            red_gw,
            query_bytes("web.red.overlay.internal", RecordType::A),
            Duration::from_millis(700)
        )
        .is_none(),
        "the underlay got an answer from a gateway"
    );
    assert!(
        udp_query(
            &t.hosts[1].ns,
            t.hosts[0].vtep_ip,
            query_bytes("web.red.overlay.internal", RecordType::A),
            Duration::from_millis(700)
        )
        .is_none(),
        "the underlay got an answer from a host's address"
    );

    // A service removed is NXDOMAIN on every host within a second.
    t.overlayctl_ok(0, &["service", "rm", "web"]);
    let removed = Instant::now();
    for probe in ["a", "b", "c"] {
        let ns = &t.container(probe).ns;
        loop {
            let m = ask(ns, red_gw, "web.red.overlay.internal", RecordType::A);
            if m.metadata.response_code == ResponseCode::NXDomain {
                break;
            }
            assert!(
                removed.elapsed() < Duration::from_secs(1),
                "{probe}'s host still answers web after {:?}",
                removed.elapsed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    eprintln!(
        "web gone from every host's DNS {:?} after service rm returned",
        removed.elapsed()
    );

    // What the runtimes are told to put in resolv.conf.
    let ep = t
        .client(0)
        .get_endpoint(&format!("{}-a", t.id), "eth0")
        .unwrap();
    let dns = ep.dns.expect("the endpoint's resolver");
    assert_eq!(dns.nameservers, vec![IpAddr::V4(red_gw)]);
    assert_eq!(
        dns.search,
        vec![
            "red.overlay.internal".to_owned(),
            "overlay.internal".to_owned()
        ]
    );
    let counted = t
        .counters(2)
        .traffic(overlay_common::Direction::ToDns)
        .packets;
    assert!(counted > 0, "no to_dns count on host 2");
    let _ = dnsmasq.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(2));
    let _ = host_resolver.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(2));
}
