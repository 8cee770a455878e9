//! A real three-member etcd cluster (each member in its own namespace on the underlay
//! switch) under faults, with real traffic, the real CNI plugin and a real dockerd: a member
//! down from the start, the leader SIGKILLed during ADDs, a member partitioned and one
//! restarted on its data, and quorum lost for longer than the lease TTL.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use overlay_tests::{
    cni,
    docker::plugin_socket,
    traffic,
    workload::{self, Adder, Pinger},
    Netns, Topology, TopologySpec,
};
use serde_json::Value;

const LEASE_TTL: u32 = 5;

fn cluster(hosts: usize) -> Topology {
    Topology::new(
        TopologySpec::new(hosts)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd_cluster(LEASE_TTL),
    )
}

fn start_all(t: &mut Topology, extra: &[&str]) {
    for h in 0..t.hosts.len() {
        t.start_daemon(h, extra);
    }
    for h in 0..t.hosts.len() {
        t.wait_registered(h);
    }
}

/// Lines of a daemon's log a user would read as trouble with etcd.
fn etcd_trouble(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("etcd"))
        .collect()
}

fn ping_paths(t: &Topology, pairs: &[(usize, usize)]) -> Vec<(String, Netns, Ipv4Addr)> {
    pairs
        .iter()
        .map(|&(a, b)| {
            (
                format!("{} -> {}", t.containers[a].name, t.containers[b].name),
                Netns::open(t.containers[a].ns.name()),
                t.containers[b].ip,
            )
        })
        .collect()
}

/// At most `max` echoes lost on every path.
fn assert_pings(pings: &[workload::PingCount], max: u32, during: &str) {
    for p in pings {
        assert!(
            p.lost <= max,
            "{}: {} of {} pings lost {during}",
            p.path,
            p.lost,
            p.sent
        );
    }
}

fn assert_intact(
    name: &str,
    handle: std::thread::JoinHandle<(traffic::Transfer, traffic::Transfer)>,
) {
    let (sent, received) = handle
        .join()
        .unwrap_or_else(|_| panic!("stream {name} broke"));
    assert!(sent.bytes > 0, "stream {name} sent nothing");
    assert_eq!(sent, received, "stream {name}: bytes or checksum differ");
}

/// Member 1 of 3 (the first of every client's endpoints, so every first attempt meets it)
/// is down before anything starts: overlayctl, daemons starting, the CNI plugin and the
/// Docker driver all work, and nobody logs or prints an etcd error.
#[test]
fn every_client_works_with_one_member_down_from_the_start() {
    let mut t = cluster(2);
    t.etcd_cluster.as_mut().unwrap().members[0].kill();

    for round in 0..10 {
        for args in [
            &["network", "ls"][..],
            &["node", "ls"],
            &["endpoint", "ls"],
            &["network", "ls", "-o", "json"],
        ] {
            let out = t.overlayctl(0, args);
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "round {round}: overlayctl {args:?}: rc {:?}, stderr {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    t.overlayctl_ok(
        0,
        &[
            "network",
            "create",
            "blue",
            "--vni",
            "101",
            "--subnet",
            "198.19.2.0/24",
        ],
    );
    t.overlayctl_ok(0, &["network", "rm", "blue"]);
    // Credentials for a cluster without authentication: refused with what to drop.
    let mut with_user = t.etcd_args();
    with_user.extend(["--etcd-user", "ovl", "--etcd-password", "pw"].map(String::from));
    let out = t.overlayctl_with(0, &with_user, &["network", "ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("authentication is not enabled")
            && err.trim().lines().count() == 1,
        "credentials without auth: {err}"
    );

    let socket = plugin_socket(&t, 0);
    t.start_daemon(0, &["--docker-plugin", socket.to_str().unwrap()]);
    t.start_daemon(1, &[]);
    t.wait_registered(0);
    t.wait_registered(1);

    // CNM on host 1, CNI on host 2, reaching each other.
    workload::docker_and_cni(&t, 0, 1).remove();

    for h in 0..2 {
        let log = t.daemon_log(h);
        let trouble = etcd_trouble(&log);
        assert!(
            trouble.is_empty(),
            "{} logged etcd trouble with one member down: {trouble:#?}",
            t.hosts[h].name
        );
    }
}

/// The leader is SIGKILLed while containers are added through the real plugin on every
/// host and streams and pings cross the overlay: streams lose nothing, pings at most a few,
/// every ADD succeeds (at once or after code 11), addresses stay unique, nothing leaks.
#[test]
fn a_killed_leader_loses_no_flow_and_no_address() {
    let mut t = cluster(3);
    start_all(&mut t, &[]);
    let pods: Vec<usize> = (0..3)
        .map(|h| t.add_pod(h, &format!("p{h}"), "red"))
        .collect();
    for h in 0..3 {
        t.wait_converged(h);
    }
    let streams: Vec<_> = (0..3)
        .map(|i| {
            let (from, to) = (pods[i], pods[(i + 1) % 3]);
            (
                format!("p{i} -> p{}", (i + 1) % 3),
                workload::stream(&t, from, to, 7100 + i as u16, Duration::from_secs(16)),
            )
        })
        .collect();
    let pinger = Pinger::start(ping_paths(
        &t,
        &[(pods[0], pods[1]), (pods[1], pods[2]), (pods[2], pods[0])],
    ));
    let adder = Adder::start(&t, &[0, 1, 2], "red", Duration::from_secs(30));

    std::thread::sleep(Duration::from_secs(3));
    let cluster = t.etcd_cluster.as_mut().unwrap();
    // The member every client uses (the first of their endpoints) is made the leader, so
    // its death is both an election and a failover.
    cluster.move_leader(0);
    let leader = 0;
    cluster.members[leader].kill();
    let killed_at = Instant::now();
    // A new leader is elected among the two others.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.leader().is_none_or(|l| l == leader) {
        assert!(Instant::now() < deadline, "no new leader");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("new leader after {:?}", killed_at.elapsed());
    std::thread::sleep(Duration::from_secs(5));
    cluster.restart(leader);
    std::thread::sleep(Duration::from_secs(3));

    let report = adder.stop();
    for (name, handle) in streams {
        assert_intact(&name, handle);
    }
    let pings = pinger.stop();
    assert_pings(&pings, 3, "with the leader killed");
    assert!(
        report.failed.is_empty(),
        "ADDs failed: {:#?}",
        report.failed
    );
    assert!(
        report.added.len() >= 5,
        "only {} ADDs in 11 s",
        report.added.len()
    );
    let retried = report.added.iter().filter(|a| a.retries > 0).count();
    eprintln!(
        "{} ADDs, {retried} after code 11; pings {pings:?}",
        report.added.len()
    );
    let ips: BTreeSet<Ipv4Addr> = report.added.iter().map(|a| a.ip).collect();
    assert_eq!(
        ips.len(),
        report.added.len(),
        "an address was handed out twice"
    );

    // Every container is where it was added, and nothing else is anywhere.
    let mut want: Vec<(usize, Ipv4Addr)> = pods
        .iter()
        .map(|&p| (t.containers[p].host, t.containers[p].ip))
        .collect();
    want.extend(report.added.iter().map(|a| (a.host, a.ip)));
    let all: Vec<usize> = (0..3).collect();
    if let Err(problems) = workload::wait_end_state(&t, &all, &want, Duration::from_secs(30)) {
        panic!("after the leader's death: {problems:#?}");
    }
    for a in &report.added {
        let socket = overlay_daemon::api::socket_path(&t.hosts[a.host].run_dir);
        cni::del(&socket, "red", &a.id, &a.ns.path()).expect("CNI DEL");
        assert!(traffic::ping(
            &t.containers[pods[a.host]].ns,
            t.containers[pods[(a.host + 1) % 3]].ip,
            1
        ));
    }
    want.truncate(pods.len());
    if let Err(problems) = workload::wait_end_state(&t, &all, &want, Duration::from_secs(30)) {
        panic!("after deleting the added containers: {problems:#?}");
    }
}

/// Every member agrees on the store's revision (a member that was away has caught up).
fn wait_members_agree(t: &mut Topology, what: &str) {
    let cluster = t.etcd_cluster.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Vec<_> = (0..cluster.members.len())
            .map(|i| cluster.member_status(i))
            .collect();
        let revisions: BTreeSet<i64> = status.iter().filter_map(|s| s.map(|s| s.0)).collect();
        if status.iter().all(Option::is_some) && revisions.len() == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: members disagree: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One member cut off the underlay for 30 s (its link down) while containers come and go
/// and traffic flows, then back; then another member SIGKILLed and restarted on its data.
/// Each catches up with the cluster, and the nodes converge with nothing lost.
#[test]
fn a_partitioned_member_and_a_restarted_member_catch_up() {
    let mut t = cluster(2);
    start_all(&mut t, &[]);
    let a = t.add_pod(0, "a", "red");
    let b = t.add_pod(1, "b", "red");
    t.wait_converged(0);
    t.wait_converged(1);
    let pinger = Pinger::start(ping_paths(&t, &[(a, b), (b, a)]));
    let stream = workload::stream(&t, a, b, 7200, Duration::from_secs(40));

    // The member the daemons use, made the leader: a failover from a member that never
    // answers again (no reset: its link is down) and an election.
    let cut = 0;
    t.etcd_cluster.as_mut().unwrap().move_leader(cut);
    t.etcd_cluster.as_ref().unwrap().set_link(cut, false);
    let adder = Adder::start(&t, &[0, 1], "red", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(30));
    let during = adder.stop();
    t.etcd_cluster.as_ref().unwrap().set_link(cut, true);
    wait_members_agree(&mut t, "after the partition");

    let restarted = (cut + 1) % 3;
    t.etcd_cluster.as_mut().unwrap().members[restarted].kill();
    let adder = Adder::start(&t, &[0, 1], "red", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    t.etcd_cluster.as_mut().unwrap().restart(restarted);
    std::thread::sleep(Duration::from_secs(2));
    let after = adder.stop();
    wait_members_agree(&mut t, "after the restart");

    assert_intact("a -> b", stream);
    let pings = pinger.stop();
    assert_pings(&pings, 3, "with a member partitioned and one restarted");
    eprintln!(
        "partition: {} ADDs ({} after code 11); restart: {} ADDs ({} after code 11); pings {pings:?}",
        during.added.len(),
        during.added.iter().filter(|a| a.retries > 0).count(),
        after.added.len(),
        after.added.iter().filter(|a| a.retries > 0).count()
    );
    for r in [&during, &after] {
        assert!(r.failed.is_empty(), "ADDs failed: {:#?}", r.failed);
    }
    assert!(
        during.added.len() >= 5,
        "only {} ADDs during the partition",
        during.added.len()
    );
    let mut want = vec![(0, t.containers[a].ip), (1, t.containers[b].ip)];
    want.extend(
        during
            .added
            .iter()
            .chain(&after.added)
            .map(|x| (x.host, x.ip)),
    );
    let ips: BTreeSet<Ipv4Addr> = want.iter().map(|w| w.1).collect();
    assert_eq!(ips.len(), want.len(), "an address was handed out twice");
    if let Err(problems) = workload::wait_end_state(&t, &[0, 1], &want, Duration::from_secs(30)) {
        panic!("{problems:#?}");
    }
    // The member that was cut off serves the same records as the others.
    let cluster = t.etcd_cluster.as_mut().unwrap();
    let keys = |out: std::process::Output| String::from_utf8_lossy(&out.stdout).lines().count();
    let all = keys(cluster.ctl(&["get", "/overlay/", "--prefix", "--keys-only"]));
    let alone = keys(cluster.members[cut].ctl(&["get", "/overlay/", "--prefix", "--keys-only"]));
    assert_eq!(all, alone, "the partitioned member's keys");
}

/// Two of three members down for three lease TTLs: the datapath keeps forwarding, an ADD
/// fails cleanly with code 11, a DEL is refused (retried later); a node whose daemon died
/// meanwhile leaves after recovery; the others keep their containers and addresses, and
/// nothing is duplicated or left behind.
#[test]
fn quorum_lost_for_longer_than_the_lease_ttl() {
    let mut t = cluster(3);
    start_all(&mut t, &[]);
    let a = t.add_pod(0, "a", "red");
    let b = t.add_pod(1, "b", "red");
    let c = t.add_pod(2, "c", "red");
    for h in 0..3 {
        t.wait_converged(h);
    }
    // A container added through the plugin, deleted while quorum is lost.
    let socket0 = overlay_daemon::api::socket_path(&t.hosts[0].run_dir);
    let gone_ns = Netns::create(&format!("ovt{}-gone", t.id));
    let gone_id = format!("{}-gone", t.id);
    cni::add(&socket0, "red", &gone_id, &gone_ns.path()).expect("ADD before the outage");
    let ips_before: Vec<Ipv4Addr> = [a, b, c].iter().map(|&i| t.containers[i].ip).collect();

    let pinger = Pinger::start(ping_paths(&t, &[(a, b), (b, a)]));
    let stream = workload::stream(&t, a, b, 7300, Duration::from_secs(30));
    {
        let cluster = t.etcd_cluster.as_mut().unwrap();
        cluster.members[1].kill();
        cluster.members[2].kill();
    }
    let lost_at = Instant::now();
    // Host 3's daemon dies during the outage and does not come back.
    t.stop_daemon(2, Signal::SIGKILL);

    let ns = Netns::create(&format!("ovt{}-late", t.id));
    let started = Instant::now();
    match cni::add(&socket0, "red", &format!("{}-late", t.id), &ns.path()) {
        Err((11, msg)) => eprintln!("ADD without quorum, after {:?}: {msg}", started.elapsed()),
        other => panic!("ADD without quorum: {other:?}"),
    }
    let links = ns.run("ip", &["-o", "link", "show"]);
    assert!(!links.contains("eth0"), "a refused ADD left eth0: {links}");
    match cni::del(&socket0, "red", &gone_id, &gone_ns.path()) {
        Err((11, msg)) => eprintln!("DEL without quorum: {msg}"),
        other => panic!("DEL without quorum: {other:?}"),
    }

    let outage = Duration::from_secs(3 * LEASE_TTL as u64);
    std::thread::sleep(outage.saturating_sub(lost_at.elapsed()));
    {
        let cluster = t.etcd_cluster.as_mut().unwrap();
        cluster.restart(1);
        cluster.restart(2);
    }
    // The runtime retries the DEL it could not finish (CNI requires DEL to be idempotent).
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = cni::del(&socket0, "red", &gone_id, &gone_ns.path()) {
        assert!(Instant::now() < deadline, "DEL after recovery: {e:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_intact("a -> b", stream);
    let pings = pinger.stop();
    assert_pings(&pings, 3, "with quorum lost");
    eprintln!("quorum lost for {outage:?}: pings {pings:?}");
    // Host 3's node and container leave with its lease; the others keep theirs.
    let want = vec![(0, ips_before[0]), (1, ips_before[1])];
    if let Err(problems) = workload::wait_end_state(&t, &[0, 1], &want, Duration::from_secs(30)) {
        panic!("after recovery: {problems:#?}");
    }
    let nodes: Vec<Value> =
        serde_json::from_str(&t.overlayctl_ok(0, &["node", "ls", "-o", "json"])).unwrap();
    let names: BTreeSet<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["h1", "h2"]), "nodes after recovery");
    // A new ADD works and gets an address nobody has.
    let ip = cni::add(&socket0, "red", &format!("{}-late", t.id), &ns.path())
        .expect("ADD after recovery");
    assert!(!ips_before.contains(&ip), "{ip} handed out twice");
    assert!(traffic::ping(&ns, ips_before[1], 3));
}
