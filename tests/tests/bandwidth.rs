//! Bandwidth limits (CNI's `bandwidth` capability, what a CRI runtime fills from a pod's
//! `kubernetes.io/ingress-bandwidth` and `egress-bandwidth` annotations): token buckets on
//! the container's interface (egress) and on its host-side veth, through which the datapath
//! then delivers to it (ingress). Measured with real iperf3 across two namespace hosts: a
//! limited container gets its rates each way while its neighbour on the same host does
//! not; the limits survive a restart of the daemon and go with the container; bad limits
//! are refused with one line.

use std::{process::Stdio, time::Duration};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::maps::names;
use overlay_daemon::{api, maps::open_pinned};
use overlay_tests::{cni, process::ChildGuard, Netns, Topology, TopologySpec};

const EGRESS_BPS: u64 = 20_000_000;
const INGRESS_BPS: u64 = 10_000_000;

fn conf(t: &Topology, host: usize, runtime_config: &str) -> String {
    let socket = api::socket_path(&t.hosts[host].run_dir);
    format!(
        r#"{{"cniVersion":"1.0.0","name":"red","type":"overlay-cni","socket":"{}","capabilities":{{"bandwidth":true}},"runtimeConfig":{runtime_config}}}"#,
        socket.display()
    )
}

/// Mbit/s received in an iperf3 TCP run of `secs` (the first second left out: slow start)
/// from `client` to the server at `server_ip` in `server` (`reverse`: the server sends).
fn iperf(client: &Netns, server: &Netns, server_ip: &str, reverse: bool, secs: u32) -> f64 {
    let port = "5301";
    let _server = ChildGuard::new(
        server
            .command("iperf3")
            .args(["-s", "-1", "-p", port, "-B", server_ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
        "iperf3 server",
    );
    let t = secs.to_string();
    let mut args = vec!["-c", server_ip, "-p", port, "-t", &t, "-O", "1", "-J"];
    if reverse {
        args.push("-R");
    }
    for _ in 0..50 {
        let out = client.output("iperf3", &args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps / 1e6;
        }
        // The server was not listening yet.
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("iperf3 to {server_ip} never ran");
}

/// Interfaces the datapath delivers to through their qdisc.
fn shaped_entries(t: &Topology, host: usize) -> usize {
    let data: MapData = open_pinned(&t.hosts[host].pins.maps(), names::SHAPED).unwrap();
    let map: HashMap<_, u32, u32> = HashMap::try_from(Map::HashMap(data)).unwrap();
    map.keys().count()
}

fn qdisc(ns: &Netns, dev: &str) -> String {
    ns.run("tc", &["qdisc", "show", "dev", dev])
}

#[test]
fn a_limited_container_gets_its_rates_each_way_and_its_neighbour_does_not() {
    let spec = TopologySpec::new(2)
        .with_etcd(10)
        .network("red", 100, "198.19.1.0/24");
    let mut t = Topology::new(spec);
    t.start_all(&[]);
    t.add_pod(0, "free", "red");
    t.add_pod(1, "peer", "red");
    for h in 0..2 {
        t.wait_converged(h);
    }

    // Bad limits: refused with one line, nothing made.
    let id = format!("{}-lim", t.id);
    let ns = Netns::create(&format!("ovt{}-lim", t.id));
    for (bad, says) in [
        (
            r#"{"bandwidth":{"ingressBurst":1000}}"#,
            "ingressBurst without ingressRate",
        ),
        (
            r#"{"bandwidth":{"egressRate":10}}"#,
            "egress rate 10 bit/s is outside",
        ),
    ] {
        let (ok, err) = cni::run("ADD", &id, &ns, &conf(&t, 0, bad));
        assert!(!ok, "{bad} was accepted");
        assert_eq!(err["code"], 7, "{err}");
        let msg = err["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(says) && !msg.contains('\n'), "{msg}");
    }
    assert_eq!(shaped_entries(&t, 0), 0);

    let limits =
        format!(r#"{{"bandwidth":{{"ingressRate":{INGRESS_BPS},"egressRate":{EGRESS_BPS}}}}}"#);
    let (ok, added) = cni::run("ADD", &id, &ns, &conf(&t, 0, &limits));
    assert!(ok, "ADD with limits: {added}\n{}", t.daemon_log(0));
    let ep = t.client(0).get_endpoint(&id, "eth0").unwrap();
    let host_veth = ep.host_ifname().unwrap().to_owned();
    let tbf = |q: String, rate: &str| q.contains("qdisc tbf ") && q.contains(rate);
    assert!(
        tbf(qdisc(&ns, "eth0"), "rate 20Mbit"),
        "{}",
        qdisc(&ns, "eth0")
    );
    let host_side = qdisc(&t.hosts[0].ns, &host_veth);
    assert!(tbf(host_side.clone(), "rate 10Mbit"), "{host_side}");
    assert!(
        !qdisc(&t.hosts[0].ns, "ul0").contains("tbf"),
        "the underlay is left alone"
    );
    assert_eq!(shaped_entries(&t, 0), 1);
    let shown = t.overlayctl_ok(0, &["endpoint", "inspect", &format!("{id}/eth0")]);
    assert!(
        shown.contains("in 10M out 20M"),
        "overlayctl shows the limits:\n{shown}"
    );

    let peer = Netns::open(t.container("peer").ns.name());
    let peer_ip = t.container("peer").ip.to_string();
    let within = |mbit: f64, bps: u64| {
        let limit = bps as f64 / 1e6;
        (0.7 * limit..=1.1 * limit).contains(&mbit)
    };
    let egress = iperf(&ns, &peer, &peer_ip, false, 4);
    let ingress = iperf(&ns, &peer, &peer_ip, true, 4);
    let free_ns = Netns::open(t.container("free").ns.name());
    let free = iperf(&free_ns, &peer, &peer_ip, false, 3);
    // From a container on the same node: delivered by the container's own datapath path
    // (not decapsulated), through the limited container's veth all the same.
    let lim_ip = ep.key_ip().to_string();
    let local = iperf(&free_ns, &ns, &lim_ip, false, 3);
    eprintln!(
        "limited: egress {egress:.1} Mbit/s, ingress {ingress:.1} (from the same node \
         {local:.1}); neighbour {free:.1}"
    );
    assert!(within(egress, EGRESS_BPS), "egress {egress:.1} Mbit/s");
    assert!(within(ingress, INGRESS_BPS), "ingress {ingress:.1} Mbit/s");
    assert!(
        within(local, INGRESS_BPS),
        "ingress from the same node {local:.1} Mbit/s"
    );
    assert!(
        free > 5.0 * egress,
        "the neighbour is not limited: {free:.1} Mbit/s"
    );

    // The limits outlive the daemon: its ingress limit is the datapath's part.
    t.stop_daemon(0, nix::sys::signal::Signal::SIGTERM);
    t.start_daemon(0, &[]);
    t.wait_status(0, "the limited container installed again", |s| {
        s["local_endpoints"] == 2 && s["endpoints"] == 3
    });
    assert_eq!(shaped_entries(&t, 0), 1);
    let again = iperf(&ns, &peer, &peer_ip, true, 3);
    assert!(
        within(again, INGRESS_BPS),
        "ingress after a restart {again:.1} Mbit/s"
    );

    // They go with the container.
    let (ok, out) = cni::run("DEL", &id, &ns, &conf(&t, 0, &limits));
    assert!(ok, "DEL: {out}");
    t.wait_status(0, "the limited container gone", |s| s["endpoints"] == 2);
    assert_eq!(shaped_entries(&t, 0), 0, "no limit left behind");
}
