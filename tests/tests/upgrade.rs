//! A rolling upgrade from the previous release (built from its commit by `cargo xtask test`
//! or `cargo xtask upgrade-test`, which set OVERLAYD_PREVIOUS) to this one, and a downgrade,
//! under traffic: three hosts on the previous release with checksummed TCP streams, pings
//! and a service in use; then node by node, the CNI plugin first on one node and the daemon
//! first on another, containers added and removed mid-rollout through either plugin against
//! either daemon; then one node back to the previous release. Nothing may break: no stream
//! loses a byte, pings lose at most a few, every container keeps its address, nothing leaks.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use overlay_tests::{
    cni,
    lb::add_service,
    services::{tcp_ask, tcp_identity_server, Session},
    traffic,
    workload::{self, Pinger},
    Netns, Topology, TopologySpec,
};
use serde_json::Value;

const SIX: &str = "2001:2:0:1009::/64";
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 250, 10), 80);

/// The previous release's overlayd, or `None` (with the reason printed) where xtask could
/// not build it.
fn previous() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OVERLAYD_PREVIOUS") {
        return Some(p.into());
    }
    if let Ok(why) = std::env::var("OVERLAY_UPGRADE_UNAVAILABLE") {
        eprintln!("skipped: {why}");
        return None;
    }
    panic!(
        "OVERLAYD_PREVIOUS is not set: run through `cargo xtask test` or `cargo xtask upgrade-test`, which build the previous release"
    );
}

/// Replaces host `h`'s daemon with `bin` (None: this release), the way an operator does.
fn replace_daemon(t: &mut Topology, h: usize, bin: Option<PathBuf>) {
    assert!(
        t.stop_daemon(h, Signal::SIGTERM),
        "the daemon on h{} did not stop",
        h + 1
    );
    t.hosts[h].overlayd = bin;
    t.start_daemon(h, &[]);
    t.wait_registered(h);
}

/// The releases the node records show, by node name.
fn releases(t: &Topology) -> Vec<(String, String)> {
    let nodes: Vec<Value> =
        serde_json::from_str(&t.overlayctl_ok(0, &["node", "ls", "-o", "json"])).unwrap();
    nodes
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_owned(),
                n["release"].as_str().unwrap_or("<0.2").to_owned(),
            )
        })
        .collect()
}

/// Host `h`'s daemon logs that its programs took over their filled maps.
fn migrated(t: &Topology, h: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.daemon_log(h).contains("datapath migrated") {
        assert!(
            Instant::now() < deadline,
            "h{} did not migrate its pinned maps:\n{}",
            h + 1,
            t.daemon_log(h)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `from` pings `to` (containers by name) three times, all answered.
fn reaches(t: &Topology, from: &str, to: &str) {
    let ip = t.container(to).ip;
    assert!(
        traffic::ping(&t.container(from).ns, ip, 3),
        "{from} -> {to} ({ip})"
    );
}

#[test]
fn a_rolling_upgrade_and_a_downgrade_lose_nothing() {
    let Some(old) = previous() else { return };
    let old_cni = old.with_file_name("overlay-cni");
    let new_cni = cni::plugin();
    let mut t = Topology::new(
        TopologySpec::new(3)
            .network6("red", 100, "198.19.1.0/24", "2001:2:0:1001::/64")
            .with_etcd(5),
    );
    for h in 0..3 {
        t.hosts[h].overlayd = Some(old.clone());
        t.start_daemon(h, &[]);
    }
    for h in 0..3 {
        t.wait_registered(h);
    }
    // Containers through the previous release's plugin; a service backed by one of them.
    for (h, name) in [(0, "a0"), (1, "a1"), (2, "a2"), (2, "web")] {
        t.add_cni_container(h, name, "red", &old_cni)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    for h in 0..3 {
        t.wait_converged(h);
    }
    let _server = tcp_identity_server(&t.container("web").ns, 8080, "web");
    add_service(
        &t,
        "web",
        &VIP.to_string(),
        "tcp",
        &[format!("{}:8080", t.container("web").ip)],
    );
    t.wait_status(0, "service installed", |s| s["services"] == 1);

    // Traffic all along: streams around the ring, pings, a VIP session and VIP requests.
    let a = |name: &str| t.containers.iter().position(|c| c.name == name).unwrap();
    let streams: Vec<_> = [("a0", "a1"), ("a1", "a2"), ("a2", "a0")]
        .iter()
        .enumerate()
        .map(|(i, (from, to))| {
            let handle =
                workload::stream(&t, a(from), a(to), 7400 + i as u16, Duration::from_secs(30));
            (format!("{from} -> {to}"), handle)
        })
        .collect();
    let paths = [("a0", "a1"), ("a1", "a2"), ("a2", "a0"), ("a0", "web")]
        .iter()
        .map(|(from, to)| {
            (
                format!("{from} -> {to}"),
                Netns::open(t.container(from).ns.name()),
                t.container(to).ip,
            )
        })
        .collect();
    let pinger = Pinger::start(paths);
    let client = Netns::open(t.container("a0").ns.name());
    let session = client
        .enter(|| Session::open(VIP))
        .expect("a VIP session from a0");
    // The session echoes every second (the test server drops idle ones), and new VIP
    // connections are made every 50 ms, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (asked, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let asker = {
        let (stop, asked, failed) = (stop.clone(), asked.clone(), failed.clone());
        client.spawn(move || {
            let mut session = session;
            let mut errors = Vec::new();
            let mut last_echo = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                asked.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = tcp_ask(VIP, "hello") {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(e.to_string());
                }
                if last_echo.elapsed() >= Duration::from_secs(1) {
                    last_echo = Instant::now();
                    if let Err(e) = session.roundtrip(b"still there?\n") {
                        errors.push(format!("the VIP session: {e}"));
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            errors
        })
    };
    let started = Instant::now();
    let step = |what: &str| eprintln!("{:>5.1}s {what}", started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));

    // h1: the plugin first (the new plugin against the previous daemon), then the daemon.
    step("h1: new plugin, previous daemon");
    t.add_cni_container(0, "c0", "red", &new_cni)
        .expect("the new plugin against the previous daemon");
    reaches(&t, "c0", "a1");
    step("h1: daemon upgraded");
    replace_daemon(&mut t, 0, None);
    // The previous release's maps are of another layout: migrated, filled before the
    // programs switched.
    t.wait_status(0, "the new datapath in place", |s| {
        s["local_endpoints"] == 2
    });
    migrated(&t, 0);
    reaches(&t, "c0", "a2");

    // h2: the daemon first (the previous plugin against the new daemon), then the plugin.
    step("h2: daemon upgraded");
    // What a daemon killed in the middle of a migration leaves: discarded, staged again.
    let staged = t.hosts[1].pins.staged_maps();
    std::fs::create_dir_all(staged.join("left-by-a-killed-daemon")).expect("bpffs mkdir");
    replace_daemon(&mut t, 1, None);
    t.wait_status(1, "the new datapath in place", |s| {
        s["local_endpoints"] == 1
    });
    migrated(&t, 1);
    assert!(!staged.exists(), "h2 left {}", staged.display());
    t.add_cni_container(1, "c1", "red", &old_cni)
        .expect("the previous plugin against the new daemon");
    reaches(&t, "c1", "a2");
    reaches(&t, "c1", "c0");
    t.del_cni_container("c0", &new_cni)
        .expect("DEL with the new plugin");
    t.add_cni_container(1, "c1b", "red", &new_cni)
        .expect("the new plugin against the new daemon");
    let versions = releases(&t);
    step(&format!("mid-rollout releases: {versions:?}"));
    let distinct: std::collections::BTreeSet<_> = versions.iter().map(|(_, r)| r).collect();
    assert_eq!(distinct.len(), 2, "two releases side by side: {versions:?}");
    // An IPv6-only network is refused while a node runs the previous release, which would
    // skip its record and its endpoints.
    let six = ["network", "create", "six", "--vni", "300", "--subnet", SIX];
    let refused = t.overlayctl(0, &six);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("upgrade it"),
        "an IPv6-only network mid-rollout: {why}"
    );
    // The network is dual-stack: the previous release reads its record (and the endpoint
    // records with their IPv6 addresses) as IPv4 only; this release's nodes carry IPv6.
    assert!(
        t.container("a2").ipv6.is_none(),
        "the previous release gave IPv6"
    );

    // h3: both; then back to the previous release (a downgrade by one).
    step("h3: daemon upgraded");
    replace_daemon(&mut t, 2, None);
    t.add_cni_container(2, "c2", "red", &new_cni)
        .expect("ADD on h3");
    reaches(&t, "c2", "c1");
    // A Kubernetes pod on h3 (its endpoint names the pod): it must survive the downgrade,
    // whose daemon re-publishes the endpoint without knowing the pod.
    t.add_k8s_pod(2, "k2", "red", "shop");
    let c1b = t.container("c1b").ipv6.expect("IPv6 from a new daemon").ip;
    assert!(
        traffic::ping(&t.container("c2").ns, c1b, 3),
        "c2 -> c1b over IPv6, across hosts"
    );
    // Every node carries IPv6 now: an IPv6-only network, its containers on two nodes.
    t.overlayctl_ok(0, &six);
    let mut spec = t.tables.networks[0].clone();
    (spec.name, spec.vni, spec.subnet) = ("six".into(), 300, None);
    spec.subnet6 = Some(SIX.parse().unwrap());
    t.tables.networks.push(spec);
    for (h, name) in [(0, "s0"), (2, "s2")] {
        t.add_cni_container(h, name, "six", &new_cni)
            .unwrap_or_else(|e| panic!("{name} on the IPv6-only network: {e:?}"));
    }
    let s2 = t.container("s2").ip6();
    assert!(
        traffic::ping(&t.container("s0").ns, s2, 3),
        "s0 -> s2 on the IPv6-only network"
    );
    t.del_cni_container("s2", &new_cni).expect("DEL");
    // s0 stays while h3 runs the previous release, which skips the IPv6-only network's
    // record and s0's key (named by its IPv6 address) and carries on.
    let log_before = t.daemon_log(2).len();
    step("h3: downgraded to the previous release");
    replace_daemon(&mut t, 2, Some(old.clone()));
    t.add_cni_container(2, "c3", "red", &old_cni)
        .expect("ADD on the downgraded node");
    reaches(&t, "c3", "a0");
    reaches(&t, "c1b", "c3");
    reaches(&t, "c1", "k2");
    reaches(&t, "k2", "a0");
    t.del_cni_container("c1b", &old_cni)
        .expect("DEL with the previous plugin against the new daemon");
    let skipped = t.daemon_log(2)[log_before..].to_owned();
    assert!(
        skipped.contains("endpoints/six/"),
        "the previous release did not see the IPv6-only endpoint's key"
    );
    t.del_cni_container("s0", &new_cni).expect("DEL");
    step("rollout done");

    for (name, handle) in streams {
        let (sent, received) = handle
            .join()
            .unwrap_or_else(|_| panic!("stream {name} broke"));
        eprintln!(
            "stream {name}: {} bytes, intact: {}",
            sent.bytes,
            sent == received
        );
        assert_eq!(sent, received, "stream {name}");
    }
    stop.store(true, Ordering::Relaxed);
    let errors = asker.join().expect("asker");
    let pings = pinger.stop();
    eprintln!(
        "pings {pings:?}; VIP requests {} ({} failed: {errors:?})",
        asked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    for p in &pings {
        assert!(
            p.lost <= 3,
            "{}: {} of {} pings lost",
            p.path,
            p.lost,
            p.sent
        );
    }
    assert!(
        errors.is_empty(),
        "VIP requests or the VIP session failed: {errors:?}"
    );

    // Every container is in etcd, every node's tables and its host with the address it got
    // at its ADD, and nothing else is anywhere.
    let want: Vec<(usize, Ipv4Addr)> = t.containers.iter().map(|c| (c.host, c.ip)).collect();
    if let Err(problems) = workload::wait_end_state(&t, &[0, 1, 2], &want, Duration::from_secs(30))
    {
        panic!("after the rollout: {problems:#?}");
    }
    // Every IPv6 claim names a container that is still there (DELs of either release took
    // theirs along; the downgraded node's container keeps its claim).
    let claims = t
        .etcd
        .as_ref()
        .unwrap()
        .ctl_ok(&["get", "--prefix", "/overlay/v1/endpoints6/"]);
    let live: Vec<String> = t.containers.iter().map(|c| c.ip.to_string()).collect();
    let named: Vec<String> = claims
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["ip"].as_str().map(str::to_owned))
        .collect();
    assert!(!named.is_empty(), "no IPv6 claims at all: {claims}");
    for ip in &named {
        assert!(
            live.contains(ip),
            "a claim for {ip}, which no container has: {claims}"
        );
    }
}
