//! `overlayctl monitor --output json` against running nodes. Drops: forged VXLAN from an
//! underlay address that is no VTEP shows as `unknown_vtep` with the forged source, a spoofed
//! container source as `spoofed_ip` on the container's interface; under a flood of a million
//! bad packets the monitor reports lost events, the daemon's memory stays bounded and good
//! traffic keeps flowing. Traces: each forwarding decision (ARP answered, local delivery,
//! encapsulation to the peer's VTEP, decapsulation, the backend a service got, per socket
//! and per packet) with where the packet went, sampled as asked.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddrV4, UdpSocket},
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use overlay_daemon::api;
use overlay_tests::{lb, services, topology::overlayd_bin, traffic, ChildGuard, Topology};
use serde_json::Value;

/// `overlayctl monitor --type drop` on host `h`, its JSON lines arriving on the channel.
fn monitor(t: &Topology, h: usize) -> (ChildGuard, mpsc::Receiver<Value>) {
    monitor_with(t, h, &["--type", "drop"])
}

/// `overlayctl monitor ARGS` on host `h`.
fn monitor_with(t: &Topology, h: usize, args: &[&str]) -> (ChildGuard, mpsc::Receiver<Value>) {
    let bin = overlayd_bin().with_file_name("overlayctl");
    let mut child = std::process::Command::new(bin)
        .arg("--socket")
        .arg(api::socket_path(&t.hosts[h].run_dir))
        .arg("monitor")
        .args(args)
        .args(["--output", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run overlayctl monitor");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                panic!("not JSON: {line}");
            };
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let guard = ChildGuard::new(child, "overlayctl monitor");
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the monitor attaches");
    assert_eq!(first["type"], "attached", "{first}");
    (guard, rx)
}

/// Every line that arrives within `within` after `until` is satisfied (or the deadline).
fn collect(
    rx: &mpsc::Receiver<Value>,
    within: Duration,
    until: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while Instant::now() < deadline && !until(&got) {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(v);
        }
    }
    got
}

#[test]
fn drops_show_with_their_reason_source_and_interface() {
    let mut t = lb::cluster(2, 3, &[]);
    lb::pods(&mut t, &[(0, "a"), (1, "b")]);
    let (_monitor, rx) = monitor(&t, 0);

    // N forged VXLAN packets from an underlay address that is no VTEP.
    const N: usize = 5;
    t.underlay
        .run("ip", &["addr", "add", "198.18.0.250/24", "dev", "br0"]);
    let (a, b) = (t.container("a"), t.container("b"));
    let frame = traffic::inner_udp_frame(b.mac.0, a.mac.0, b.ip, a.ip, 7001, b"forged");
    let (vtep, payload) = (
        t.hosts[0].vtep_ip,
        traffic::vxlan_payload(100, 0x08, &frame),
    );
    t.underlay.enter(move || {
        let sock = UdpSocket::bind("198.18.0.250:0").expect("bind the forged source");
        for _ in 0..N {
            sock.send_to(&payload, SocketAddrV4::new(vtep, 4789))
                .expect("send");
        }
    });
    // A container sending from an address that is not its own (its neighbour entry for b
    // made first, so what leaves is IP, not ARP).
    assert!(traffic::ping(&a.ns, b.ip, 1));
    a.ns.run("ip", &["addr", "add", "198.19.1.77/24", "dev", "eth0"]);
    let _ = a.ns.output(
        "ping",
        &["-c", "2", "-W", "1", "-I", "198.19.1.77", &b.ip.to_string()],
    );
    let forged = |v: &&Value| v["reason"] == "unknown_vtep";
    let spoofed = |v: &&Value| v["reason"] == "spoofed_ip";
    let got = collect(&rx, Duration::from_secs(15), |got| {
        got.iter().filter(forged).count() >= N && got.iter().any(|v| spoofed(&v))
    });
    // Nothing else arrives that would make the count more than N.
    let got: Vec<Value> = got
        .into_iter()
        .chain(collect(&rx, Duration::from_secs(2), |_| false))
        .collect();
    let vxlan: Vec<&Value> = got.iter().filter(forged).collect();
    assert_eq!(vxlan.len(), N, "{got:#?}");
    for v in &vxlan {
        assert_eq!(v["src"], "198.18.0.250", "{v}");
        assert_eq!(v["hook"], "from_underlay", "{v}");
        assert_eq!(v["vni"], 100, "{v}");
        assert_eq!(v["inner_dst"], a.ip.to_string(), "{v}");
    }
    let spoof = got.iter().find(spoofed).expect("a spoofed_ip event");
    assert_eq!(spoof["src"], "198.19.1.77", "{spoof}");
    assert_eq!(spoof["hook"], "from_container", "{spoof}");
    assert_eq!(spoof["ifname"], a.host_ifname.as_str(), "{spoof}");
    a.ns.run("ip", &["addr", "del", "198.19.1.77/24", "dev", "eth0"]);

    // A million bad packets while the monitor is attached: events are rate-limited and the
    // rest reported lost, the daemon's memory stays bounded, and good traffic flows.
    let rss_before = t.hosts[0].daemon_rss_kib().expect("daemon RSS");
    let payload = traffic::vxlan_payload(100, 0x08, &frame);
    let flood = t.underlay.spawn(move || {
        let sock = UdpSocket::bind("198.18.0.250:0").expect("bind");
        let to = SocketAddrV4::new(vtep, 4789);
        let mut sent = 0u32;
        while sent < 1_000_000 {
            if sock.send_to(&payload, to).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let pings = traffic::ping_received(&a.ns, b.ip, 20);
    let sent = flood.join().expect("flood");
    assert_eq!(sent, 1_000_000);
    let got = collect(&rx, Duration::from_secs(5), |got| {
        got.iter().any(|v| v["type"] == "lost")
    });
    let lost: u64 = got
        .iter()
        .filter(|v| v["type"] == "lost")
        .filter_map(|v| v["count"].as_u64())
        .sum();
    let events = got.iter().filter(|v| v["type"] == "drop").count();
    eprintln!("flood: {events} events shown, {lost} reported lost, {pings}/20 pings answered");
    assert!(lost > 0, "no lost events reported: {events} events");
    assert!(
        pings >= 18,
        "good traffic during the flood: {pings}/20 pings"
    );
    let rss_after = t.hosts[0].daemon_rss_kib().expect("daemon RSS");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "daemon RSS grew from {rss_before} to {rss_after} KiB"
    );

    // Two monitors at once both see a drop; once the last is gone (killed, not closed
    // politely), the programs do no event work: bad packets no longer even count as lost.
    let (second, rx2) = monitor(&t, 0);
    // `n` forged packets, `gap` apart.
    let forge = |n: usize, gap: Duration| {
        let payload = traffic::vxlan_payload(100, 0x08, &frame);
        t.underlay.enter(move || {
            let sock = UdpSocket::bind("198.18.0.250:0").expect("bind");
            for _ in 0..n {
                let _ = sock.send_to(&payload, SocketAddrV4::new(vtep, 4789));
                thread::sleep(gap);
            }
        });
    };
    forge(1, Duration::ZERO);
    for rx in [&rx, &rx2] {
        let got = collect(rx, Duration::from_secs(5), |got| {
            got.iter().any(|v| v["reason"] == "unknown_vtep")
        });
        assert!(got.iter().any(|v| v["reason"] == "unknown_vtep"), "{got:?}");
    }
    drop((_monitor, second));
    let maps = t.hosts[0].pins.maps();
    let lost = || {
        overlay_daemon::maps::MonitorMaps::open_pinned(&maps)
            .and_then(|m| m.lost(overlay_common::monitor::EVENT_DROP))
            .expect("monitor maps")
    };
    // 5000 back to back: far over the bucket's burst, so with events on most would be lost.
    let events_off = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = lost();
            forge(5000, Duration::ZERO);
            if lost() == before {
                return;
            }
            assert!(Instant::now() < deadline, "events still on {what}");
            thread::sleep(Duration::from_millis(200));
        }
    };
    events_off("with no monitor");

    // A daemon killed while a monitor is attached leaves the pinned flag on; the next one
    // turns it off at start.
    let (attached, _rx) = monitor(&t, 0);
    let before = lost();
    forge(5000, Duration::ZERO);
    assert!(lost() > before, "events are on while attached");
    t.stop_daemon(0, nix::sys::signal::Signal::SIGKILL);
    drop(attached);
    t.start_daemon(0, &[]);
    // Until the new daemon runs (the killed one's status file would pass for its own).
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.daemon_log(0).matches("overlayd running").count() < 2 {
        assert!(Instant::now() < deadline, "{}", t.daemon_log(0));
        thread::sleep(Duration::from_millis(50));
    }
    t.wait_converged(0);
    let forge = |n: usize| {
        let payload = traffic::vxlan_payload(100, 0x08, &frame);
        t.underlay.enter(move || {
            let sock = UdpSocket::bind("198.18.0.250:0").expect("bind");
            for _ in 0..n {
                let _ = sock.send_to(&payload, SocketAddrV4::new(vtep, 4789));
            }
        });
    };
    let before = lost();
    forge(5000);
    assert_eq!(
        lost(),
        before,
        "events still on after a killed daemon's successor started"
    );
}

/// The first line `got` holds that satisfies `f`, or a failure listing them all.
fn find<'a>(got: &'a [Value], what: &str, f: impl Fn(&Value) -> bool) -> &'a Value {
    got.iter()
        .find(|v| f(v))
        .unwrap_or_else(|| panic!("no {what} among {got:#?}"))
}

/// One TCP exchange from `client` with the service at 198.19.200.1:80 (backend b1).
fn ask_vip(client: &overlay_tests::Container) {
    let vip = std::net::SocketAddrV4::new("198.19.200.1".parse().unwrap(), 80);
    let name = client
        .ns
        .enter(move || services::tcp_ask(vip, "hello"))
        .expect("the VIP answers");
    assert_eq!(name, "b1");
}

#[test]
fn traces_show_each_forwarding_decision() {
    let (mut t, b1) = lb::one_service(true, "198.19.200.1:80", "tcp", 8080);
    t.add_pod(1, "c", "red");
    for h in 0..2 {
        t.wait_converged(h);
    }
    let (client, c) = (t.container("client"), t.container("c"));
    let b1_if = t.container("b1").host_ifname.clone();
    let _server = services::tcp_identity_server(&t.container("b1").ns, 8080, "b1");
    let (_m1, rx1) = monitor_with(&t, 1, &["--type", "trace"]);
    let (_m0, rx0) = monitor_with(&t, 0, &["--type", "trace", "--type", "drop"]);
    let (_drops, rx_drops) = monitor(&t, 1);

    // ARP for the peer answered on the client's node, then the ping encapsulated to node 0's
    // VTEP and decapsulated there to b1's interface.
    client.ns.run("ip", &["neigh", "flush", "all"]);
    assert!(traffic::ping(&client.ns, b1, 3));
    // A container on the same node: delivered locally.
    assert!(traffic::ping(&client.ns, c.ip, 3));
    // A service VIP from a socket: the backend chosen at connect.
    ask_vip(client);

    let is = |verdict: &'static str| move |v: &Value| v["verdict"] == verdict;
    let got1 = collect(&rx1, Duration::from_secs(15), |got| {
        ["answered", "encap", "local", "socket_lb"]
            .iter()
            .all(|w| got.iter().any(is(w)))
    });
    let arp = find(&got1, "ARP answered", |v| {
        is("answered")(v) && v["proto"] == "arp"
    });
    assert_eq!(arp["ifname"], client.host_ifname.as_str(), "{arp}");
    let encap = find(&got1, "encapsulation of the ping", |v| {
        is("encap")(v) && v["inner_proto"] == "icmp"
    });
    assert_eq!(encap["hook"], "from_container", "{encap}");
    assert_eq!(encap["vtep"], t.hosts[0].vtep_ip.to_string(), "{encap}");
    assert_eq!(encap["dst"], t.hosts[0].vtep_ip.to_string(), "{encap}");
    assert_eq!(encap["inner_src"], client.ip.to_string(), "{encap}");
    assert_eq!(encap["inner_dst"], b1.to_string(), "{encap}");
    assert_eq!(encap["vni"], 100, "{encap}");
    assert_eq!(encap["ifname"], client.host_ifname.as_str(), "{encap}");
    let local = find(&got1, "local delivery", |v| {
        is("local")(v) && v["dst"] == c.ip.to_string()
    });
    assert_eq!(local["out_ifname"], c.host_ifname.as_str(), "{local}");
    let lb = find(&got1, "socket balancing", is("socket_lb"));
    assert_eq!(lb["hook"], "socket", "{lb}");
    assert_eq!(lb["service"]["vip"], "198.19.200.1:80", "{lb}");
    assert_eq!(lb["service"]["backend"], format!("{b1}:8080"), "{lb}");
    assert_eq!(lb["service"]["proto"], "tcp", "{lb}");

    let got0 = collect(&rx0, Duration::from_secs(10), |got| {
        got.iter().any(|v| is("decap")(v) && v["proto"] == "icmp")
    });
    let decap = find(&got0, "decapsulation of the ping", |v| {
        is("decap")(v) && v["proto"] == "icmp"
    });
    assert_eq!(decap["hook"], "from_underlay", "{decap}");
    assert_eq!(decap["vtep"], t.hosts[1].vtep_ip.to_string(), "{decap}");
    assert_eq!(decap["src"], client.ip.to_string(), "{decap}");
    assert_eq!(decap["out_ifname"], b1_if.as_str(), "{decap}");
    assert_eq!(decap["network_vni"], 100, "{decap}");

    // A monitor of drops sees none of it.
    let drops = collect(&rx_drops, Duration::from_secs(1), |_| false);
    assert!(
        drops.iter().all(|v| v["type"] != "trace"),
        "traces reached a drop monitor: {drops:#?}"
    );
    drop((_m0, _m1, _drops));
    // The last trace client gone: traces off before the sampled one attaches.
    thread::sleep(Duration::from_millis(200));

    // One packet in 100: 2000 datagrams give about 20 traces (none lost to the rate).
    let (_sampled, rx) = monitor_with(&t, 1, &["--type", "trace", "--sample", "100"]);
    let dst = b1;
    client.ns.enter(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..2000 {
            let _ = sock.send_to(b"sampled", SocketAddrV4::new(dst, 9));
            thread::sleep(Duration::from_micros(200));
        }
    });
    let got = collect(&rx, Duration::from_secs(3), |_| false);
    let traced = got
        .iter()
        .filter(|v| is("encap")(v) && v["inner_dport"] == 9)
        .count();
    assert!(
        (3..=60).contains(&traced),
        "{traced} of 2000 datagrams traced at one in 100"
    );
    assert!(got.iter().all(|v| v["type"] != "lost"), "{got:#?}");

    // Requests that ask for nothing, or for one packet in zero, are refused as invalid.
    for req in [
        r#"{"op":"monitor","events":[]}"#,
        r#"{"op":"monitor","events":["trace"],"sample":0}"#,
    ] {
        let mut conn =
            std::os::unix::net::UnixStream::connect(api::socket_path(&t.hosts[1].run_dir))
                .expect("connect to the API");
        use std::io::Write as _;
        writeln!(conn, "{req}").expect("send");
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line).expect("answer");
        let v: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(
            (v["ok"].clone(), v["kind"].clone()),
            (false.into(), "invalid".into()),
            "{req}: {v}"
        );
    }
}

#[test]
fn per_packet_translation_shows_its_service() {
    let (t, b1) = lb::one_service(false, "198.19.200.1:80", "tcp", 8080);
    let client = t.container("client");
    let _server = services::tcp_identity_server(&t.container("b1").ns, 8080, "b1");
    let (_m, rx) = monitor_with(&t, 1, &["--type", "trace"]);
    ask_vip(client);
    let got = collect(&rx, Duration::from_secs(10), |got| {
        got.iter().any(|v| !v["service"].is_null())
    });
    let v = find(&got, "a translated packet", |v| !v["service"].is_null());
    assert_eq!(v["verdict"], "encap", "{v}");
    assert_eq!(v["service"]["vip"], "198.19.200.1:80", "{v}");
    assert_eq!(v["service"]["backend"], format!("{b1}:8080"), "{v}");
    assert_eq!(v["inner_dst"], b1.to_string(), "{v}");
    assert!(
        got.iter().all(|v| v["verdict"] != "socket_lb"),
        "no socket hooks on this node: {got:#?}"
    );
}
