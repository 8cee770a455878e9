//! `overlayctl monitor --type drop --output json` against a running node: forged VXLAN from
//! an underlay address that is no VTEP shows as `unknown_vtep` with the forged source, a
//! spoofed container source as `spoofed_ip` on the container's interface; under a flood of
//! a million bad packets the monitor reports lost events, the daemon's memory stays bounded
//! and good traffic keeps flowing.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddrV4, UdpSocket},
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use overlay_daemon::api;
use overlay_tests::{lb, topology::overlayd_bin, traffic, ChildGuard, Topology};
use serde_json::Value;

/// `overlayctl monitor` on host `h`, its JSON lines arriving on the channel.
fn monitor(t: &Topology, h: usize) -> (ChildGuard, mpsc::Receiver<Value>) {
    let bin = overlayd_bin().with_file_name("overlayctl");
    let mut child = std::process::Command::new(bin)
        .arg("--socket")
        .arg(api::socket_path(&t.hosts[h].run_dir))
        .args(["monitor", "--type", "drop", "--output", "json"])
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
            .and_then(|m| m.lost())
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
