//! Operating it the way operators really do: a cloned host with the same node name, a second
//! daemon started by mistake, another overlay on the VXLAN port, an underlay address that
//! moves, a container that vanishes without a DEL, an MTU above the maximum. Each of these
//! broke traffic silently before; each must now be loud and safe.

use std::{
    net::{IpAddr, Ipv4Addr},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use overlay_tests::{traffic, Topology, TopologySpec};
use serde_json::Value;

const TTL: u32 = 3;

fn cluster(hosts: usize) -> Topology {
    let mut t = Topology::new(
        TopologySpec::new(hosts)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd(TTL),
    );
    for h in 0..hosts {
        t.start_daemon(h, &[]);
    }
    for h in 0..hosts {
        t.wait_registered(h);
    }
    t
}

fn nodes(t: &Topology) -> Vec<Value> {
    serde_json::from_str(&t.overlayctl_ok(0, &["node", "ls", "-o", "json"])).expect("json")
}

fn node_vtep(t: &Topology, name: &str) -> Option<String> {
    nodes(t)
        .into_iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["vtep_ip"].as_str().map(str::to_owned))
}

fn endpoint_ips(t: &Topology) -> Vec<String> {
    let out = t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"]);
    serde_json::from_str::<Vec<Value>>(&out)
        .expect("json")
        .iter()
        .map(|e| e["ip"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The last line of a daemon's output: the one-line reason it gave up.
fn last_line(out: &str) -> &str {
    out.lines().last().unwrap_or_default()
}

/// Two hosts, a pod on each, converged: (topology, pod on h1, pod on h2).
fn two_pods() -> (Topology, usize, usize) {
    let mut t = cluster(2);
    let a = t.add_pod(0, "a", "red");
    let b = t.add_pod(1, "b", "red");
    for h in 0..2 {
        t.wait_converged(h);
    }
    (t, a, b)
}

/// Another overlayd named h1 on host `host`, with a run dir and pins of its own (`tag`):
/// its exit code and output, and its pins.
fn duplicate_h1(
    t: &Topology,
    host: usize,
    tag: &str,
) -> (Option<i32>, String, overlay_daemon::datapath::PinLayout) {
    let pins = t.extra_pins(tag);
    let run_dir = t.dir.join(format!("{tag}-run"));
    let (code, out) = t.run_extra_daemon(
        host,
        &[
            "--node-name",
            "h1",
            "--underlay",
            "ul0",
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--bpffs",
            pins.root().to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    (code, out, pins)
}

/// A cloned VM keeps its hostname: a second host registering h1's name is refused (once the
/// name's lease proves alive) and leaves nothing attached; h1 keeps its record and traffic.
#[test]
fn a_cloned_host_with_the_same_node_name_is_refused() {
    let (t, a, b) = two_pods();
    let (code, out, clone) = duplicate_h1(&t, 1, "clone");
    assert_eq!(code, Some(1), "the clone must exit by itself:\n{out}");
    let line = last_line(&out);
    assert!(
        line.contains("node name \"h1\" is in use by another overlayd (VTEP 198.18.0.1)"),
        "{line}"
    );
    assert!(
        !clone.root().exists() || std::fs::read_dir(clone.root()).unwrap().count() == 0,
        "the refused clone left its datapath attached"
    );
    assert_eq!(node_vtep(&t, "h1").as_deref(), Some("198.18.0.1"));
    let b_ip = t.containers[b].ip;
    assert!(
        traffic::ping(&t.containers[a].ns, b_ip, 3),
        "h1's pod still reaches h2's"
    );
}

/// A second daemon with h1's name on h1 itself (another run dir and pins) is refused too, so
/// it never holds the record and cannot delete it when it stops. And when the record goes
/// anyway (an operator's etcdctl del), the running daemon writes it again.
#[test]
fn the_node_record_belongs_to_its_daemon() {
    let (mut t, a, b) = two_pods();
    let (code, out, _) = duplicate_h1(&t, 0, "second");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        last_line(&out).contains("is in use by another overlayd"),
        "{out}"
    );
    // The second one is gone; the first still holds the name.
    thread::sleep(Duration::from_secs(TTL as u64 + 1));
    assert_eq!(node_vtep(&t, "h1").as_deref(), Some("198.18.0.1"));

    t.etcd
        .as_ref()
        .unwrap()
        .ctl_ok(&["del", "/overlay/v1/nodes/h1"]);
    wait_for("h1 registered again", Duration::from_secs(10), || {
        node_vtep(&t, "h1").is_some()
    });
    assert!(
        t.daemon_log(0)
            .contains("record was removed from etcd; registering again"),
        "{}",
        t.daemon_log(0)
    );
    t.wait_status(1, "h1's VTEP back on h2", |s| s["vteps"] == 1);
    let c = t.add_pod(0, "c", "red");
    t.wait_converged(1);
    let (b_ip, c_ip) = (t.containers[b].ip, t.containers[c].ip);
    assert!(traffic::ping(&t.containers[a].ns, b_ip, 3));
    assert!(
        traffic::ping(&t.containers[b].ns, c_ip, 3),
        "a new pod on h1 is reachable"
    );
}

/// One daemon per run directory and per pinned datapath: a second is refused at once with
/// one line, and `overlayd cleanup` is refused while the daemon runs. The first keeps its
/// socket and its datapath.
#[test]
fn a_second_daemon_on_the_same_run_dir_or_pins_is_refused() {
    let (t, a, b) = two_pods();
    let (run_dir, pins) = (
        t.hosts[0].run_dir.to_str().unwrap().to_owned(),
        t.hosts[0].pins.root().to_str().unwrap().to_owned(),
    );
    let other_run = t.dir.join("other-run");
    for (args, expect) in [
        (
            vec![
                "--node-name",
                "h1",
                "--underlay",
                "ul0",
                "--run-dir",
                &run_dir,
                "--bpffs",
                "/sys/fs/bpf/unused-by-test",
            ],
            "runs with --run-dir",
        ),
        (
            vec![
                "--node-name",
                "h1",
                "--underlay",
                "ul0",
                "--run-dir",
                other_run.to_str().unwrap(),
                "--bpffs",
                &pins,
            ],
            "holds the datapath pinned at",
        ),
    ] {
        let started = Instant::now();
        let (code, out) = t.run_extra_daemon(0, &args, Duration::from_secs(10));
        assert_eq!(code, Some(1), "{out}");
        assert!(last_line(&out).contains(expect), "{out}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused at once"
        );
    }
    assert!(!std::path::Path::new("/sys/fs/bpf/unused-by-test").exists());
    let cleanup = t.hosts[0].ns.output(
        overlay_tests::topology::overlayd_bin().to_str().unwrap(),
        &["cleanup", "--bpffs", &pins],
    );
    assert!(!cleanup.status.success());
    let err = String::from_utf8_lossy(&cleanup.stderr);
    assert!(err.contains("holds the datapath pinned at"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    assert!(
        t.client(0).status().is_ok(),
        "the first daemon's socket still answers"
    );
    let b_ip = t.containers[b].ip;
    assert!(
        traffic::ping(&t.containers[a].ns, b_ip, 2),
        "and its datapath forwards"
    );
}

/// Adds a kernel vxlan device (VNI 4242, the overlay's port) to host `i` of two, with
/// address 198.19.200.<i+1> and a static flood entry towards the other host.
fn kernel_vxlan(t: &Topology, i: usize) {
    let ns = &t.hosts[i].ns;
    let (me, other) = (t.hosts[i].vtep_ip, t.hosts[1 - i].vtep_ip);
    ns.ip(&[
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "4242",
        "dstport",
        "4789",
        "local",
        &me.to_string(),
        "dev",
        "ul0",
        "nolearning",
    ]);
    ns.ip(&[
        "addr",
        "add",
        &format!("198.19.200.{}/24", i + 1),
        "dev",
        "vx0",
    ]);
    ns.ip(&["link", "set", "vx0", "up"]);
    ns.run(
        "bridge",
        &[
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx0",
            "dst",
            &other.to_string(),
        ],
    );
}

/// flannel, Docker swarm or another overlay already on UDP 4789: its VXLAN keeps working
/// beside the overlay (and after the overlay's daemons stop), the device is named in the log,
/// and an overlay network using the device's VNI is refused on those nodes.
#[test]
fn a_kernel_vxlan_device_on_the_same_port_keeps_working() {
    let mut t = Topology::new(
        TopologySpec::new(2)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd(TTL),
    );
    kernel_vxlan(&t, 0); // before the daemon: found at start
    for h in 0..2 {
        t.start_daemon(h, &[]);
        t.wait_registered(h);
    }
    kernel_vxlan(&t, 1); // after it: found through the link event
    let a = t.add_pod(0, "a", "red");
    let b = t.add_pod(1, "b", "red");
    for h in 0..2 {
        t.wait_converged(h);
    }
    let kernel_ping =
        |t: &Topology| traffic::ping(&t.hosts[0].ns, Ipv4Addr::new(198, 19, 200, 2), 3);
    wait_for(
        "kernel vxlan traffic beside the overlay",
        Duration::from_secs(10),
        || kernel_ping(&t),
    );
    let b_ip = t.containers[b].ip;
    assert!(
        traffic::ping(&t.containers[a].ns, b_ip, 2),
        "the overlay too"
    );
    for h in 0..2 {
        assert!(
            t.daemon_log(h).contains("vx0 (VNI 4242)"),
            "h{} names the device:\n{}",
            h + 1,
            t.daemon_log(h)
        );
    }
    t.overlayctl_ok(
        0,
        &[
            "network",
            "create",
            "clash",
            "--vni",
            "4242",
            "--subnet",
            "198.19.3.0/24",
        ],
    );
    for h in 0..2 {
        t.wait_status(h, "the clashing network refused", |s| {
            s["rejected"].as_array().is_some_and(|r| {
                r.iter().any(|x| {
                    x.as_str()
                        .is_some_and(|x| x.contains("kernel vxlan device vx0"))
                })
            })
        });
    }
    assert!(kernel_ping(&t), "the device keeps its VNI");
    t.stop_daemon(0, Signal::SIGKILL);
    t.stop_daemon(1, Signal::SIGKILL);
    assert!(
        kernel_ping(&t),
        "and keeps working after the overlay's daemons stop"
    );
}

/// DHCP moves the underlay address: the daemon follows it, republishes its VTEP, and peers
/// switch over (their neighbour entries for the old address flushed, so nothing old helps).
#[test]
fn the_vtep_follows_a_moved_underlay_address() {
    let (t, a, b) = two_pods();
    let (a_ip, b_ip) = (t.containers[a].ip, t.containers[b].ip);
    assert!(traffic::ping(&t.containers[a].ns, b_ip, 2));
    let lease = t.client(0).status().expect("status").lease;
    let moved = Ipv4Addr::new(198, 18, 0, 11);
    t.hosts[0]
        .ns
        .ip(&["addr", "del", "198.18.0.1/24", "dev", "ul0"]);
    t.hosts[0]
        .ns
        .ip(&["addr", "add", "198.18.0.11/24", "dev", "ul0"]);
    t.hosts[1].ns.ip(&["neigh", "flush", "dev", "ul0"]);
    wait_for("h1's new VTEP in etcd", Duration::from_secs(15), || {
        node_vtep(&t, "h1").as_deref() == Some("198.18.0.11")
    });
    wait_for(
        "h2 encapsulating to the new VTEP",
        Duration::from_secs(10),
        || t.vteps(1).iter().any(|(ip, _, _)| *ip == IpAddr::V4(moved)),
    );
    assert!(
        !t.vteps(1)
            .iter()
            .any(|(ip, _, _)| *ip == IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
        "the old VTEP is gone from h2"
    );
    wait_for(
        "h2 reaching h1 after the move",
        Duration::from_secs(10),
        || traffic::ping(&t.containers[b].ns, a_ip, 1),
    );
    assert!(
        traffic::ping(&t.containers[b].ns, a_ip, 3),
        "h2 -> h1 after the move"
    );
    assert_eq!(
        t.client(0).status().expect("status").lease,
        lease,
        "h1 kept its lease: it never left the cluster"
    );
    assert!(
        traffic::ping(&t.containers[a].ns, b_ip, 3),
        "h1 -> h2 after the move"
    );
    assert!(t
        .daemon_log(0)
        .contains("the underlay address moved; the VTEP follows"));
}

/// A runtime that crashes (or `ip netns del`) without CNI DEL: the veth vanishes with the
/// namespace, and after the grace period the endpoint leaves etcd and every node's tables,
/// and its address can be given out again.
#[test]
fn a_container_that_vanishes_without_del_is_released() {
    let (mut t, a, _) = two_pods();
    let gone_ip = t.containers[a].ip;
    let host_ifname = t.containers[a].host_ifname.clone();
    let started = Instant::now();
    drop(t.containers.remove(a)); // its namespace goes: ip netns del
    for h in 0..2 {
        t.wait_status(h, "the vanished endpoint gone", |s| s["endpoints"] == 1);
    }
    let took = started.elapsed();
    assert!(
        took < overlay_daemon::cluster::VANISHED_GRACE + Duration::from_secs(10),
        "released after {took:?}"
    );
    assert!(!endpoint_ips(&t).contains(&gone_ip.to_string()));
    let state = std::fs::read_dir(t.hosts[0].run_dir.join("endpoints"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(state, 0, "no local state left");
    let links = t.hosts[0].ns.run("ip", &["-o", "link", "show"]);
    assert!(!links.contains(&host_ifname), "{links}");
    assert!(t
        .daemon_log(0)
        .contains("vanished without a DEL; endpoint released"));
    let c = t.add_pod(0, "c", "red");
    assert_eq!(
        t.containers[c].ip, gone_ip,
        "the address is given out again"
    );
}

/// An MTU above what the underlay allows is refused with the maximum, not clamped.
#[test]
fn an_mtu_above_the_maximum_is_refused_with_the_maximum() {
    let t = cluster(1);
    let out = t.overlayctl(
        0,
        &[
            "network",
            "create",
            "big",
            "--vni",
            "7",
            "--subnet",
            "198.19.7.0/24",
            "--mtu",
            "1500",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("maximum 1450"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    t.overlayctl_ok(
        0,
        &[
            "network",
            "create",
            "fits",
            "--vni",
            "8",
            "--subnet",
            "198.19.8.0/24",
            "--mtu",
            "1400",
        ],
    );

    let ns = overlay_tests::Netns::create(&format!("ovt{}-m", t.id));
    let socket = overlay_daemon::api::socket_path(&t.hosts[0].run_dir);
    let err = t
        .client(0)
        .create_endpoint(overlay_api::EndpointRequest {
            network: "red".into(),
            container_id: format!("{}-m", t.id),
            netns: ns.path().into(),
            ifname: "eth0".into(),
            mtu: Some(1500),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.kind(), overlay_api::ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("maximum 1450"), "{err}");
    let _ = socket;
    assert!(endpoint_ips(&t).is_empty(), "nothing allocated");
}

/// Values at etcd's size limit and JSON nested far beyond any decoder's depth, under the
/// prefix before the daemons start (so one listing page is several megabytes) and while they
/// run: each is skipped with one short log line; the rest of the cluster works.
#[test]
fn oversized_and_deeply_nested_etcd_values_are_skipped() {
    let mut t = Topology::new(
        TopologySpec::new(2)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd(TTL),
    );
    let etcd = t.etcd.as_ref().unwrap();
    let huge_mac = format!(
        r#"{{"version":1,"mac":"{}","node":"h1","container_id":"x","host_ifname":"ovlx"}}"#,
        "a".repeat(1 << 20)
    );
    for i in 0..5 {
        etcd.put_large(
            &format!("/overlay/v1/endpoints/red/198.19.1.{}", 200 + i),
            huge_mac.as_bytes(),
        );
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    etcd.put_large("/overlay/v1/nodes/deep", deep.as_bytes());
    for h in 0..2 {
        t.start_daemon(h, &[]);
    }
    for h in 0..2 {
        t.wait_registered(h);
    }
    t.etcd
        .as_ref()
        .unwrap()
        .put_large("/overlay/v1/networks/late", huge_mac.as_bytes());
    // Before its first listing a daemon says "try again", not "no such network".
    for h in 0..2 {
        t.wait_status(h, "listed", |s| s["networks"] == 1);
    }
    let a = t.add_pod(0, "a", "red");
    let b = t.add_pod(1, "b", "red");
    for h in 0..2 {
        t.wait_converged(h);
    }
    let b_ip = t.containers[b].ip;
    assert!(
        traffic::ping(&t.containers[a].ns, b_ip, 2),
        "the cluster works"
    );
    for h in 0..2 {
        t.wait_status(h, "the oversized entries skipped", |s| {
            s["rejected"].is_array()
        });
        let log = t.daemon_log(h);
        let skipped: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("skipping etcd entry"))
            .collect();
        assert!(
            skipped.len() >= 7,
            "{} skipped lines:\n{}",
            skipped.len(),
            skipped.join("\n")
        );
        assert!(
            skipped.iter().all(|l| l.len() < 600),
            "one short line each, not the value"
        );
        assert!(
            log.len() < 200_000,
            "h{}'s log is {} bytes",
            h + 1,
            log.len()
        );
        let status = t.client(h).status().expect("status");
        assert!(status.rejected_entries >= 7, "{status:?}");
    }
}
