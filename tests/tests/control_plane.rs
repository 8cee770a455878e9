//! The control plane against a real etcd: three daemons converge, leases expire, etcd goes
//! away and comes back, compaction, concurrent IPAM, and garbage under the prefix.

use std::{collections::BTreeSet, net::Ipv4Addr, thread, time::Duration};

use nix::sys::signal::Signal;
use overlay_api::{EndpointRequest, Request};
use overlay_tests::{traffic, Topology, TopologySpec};

const TTL: u32 = 3;

fn cluster() -> Topology {
    let mut t = Topology::new(
        TopologySpec::new(3)
            .network("red", 100, "198.19.1.0/24")
            .network("blue", 200, "198.19.2.0/24")
            .with_etcd(TTL),
    );
    t.start_daemon(0, &[]);
    t.start_daemon(1, &[]);
    t.start_daemon(2, &[]);
    for h in 0..3 {
        t.wait_status(h, "networks installed", |s| {
            s["networks"] == 2 && s["vteps"] == 2
        });
    }
    t
}

fn endpoints_json(t: &Topology) -> Vec<serde_json::Value> {
    let out = t.overlayctl_ok(0, &["endpoint", "ls", "--output", "json"]);
    serde_json::from_str(&out).expect("json")
}

#[test]
fn daemons_converge_and_dead_nodes_leave() {
    let mut t = cluster();
    t.add_pod(0, "a", "red");
    t.add_pod(1, "b", "red");
    t.add_pod(2, "c", "red");
    for h in 0..3 {
        t.wait_converged(h);
    }
    let (a, b, c) = (
        t.container("a").ip,
        t.container("b").ip,
        t.container("c").ip,
    );
    assert_eq!(BTreeSet::from([a, b, c]).len(), 3, "distinct addresses");
    assert!(traffic::ping(&t.container("a").ns, b, 2), "a -> b");
    assert!(traffic::ping(&t.container("b").ns, c, 2), "b -> c");
    assert!(traffic::ping(&t.container("c").ns, a, 2), "c -> a");

    let nodes = t.overlayctl_ok(0, &["node", "ls"]);
    for h in ["h1", "h2", "h3"] {
        assert!(nodes.contains(h), "{nodes}");
    }
    assert_eq!(endpoints_json(&t).len(), 3);

    // A daemon killed outright: after the lease TTL its node and endpoints leave the others.
    t.stop_daemon(2, Signal::SIGKILL);
    for h in 0..2 {
        t.wait_status(h, "h3 gone", |s| s["vteps"] == 1 && s["endpoints"] == 2);
    }
    assert!(
        !traffic::ping(&t.container("a").ns, c, 1),
        "h3's endpoint is gone from the tables"
    );
    // Restarted, it publishes its endpoint again with the same address.
    t.start_daemon(2, &[]);
    for h in 0..3 {
        t.wait_converged(h);
    }
    let eps = endpoints_json(&t);
    let ips: Vec<_> = eps
        .iter()
        .map(|e| e["ip"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ips.len(), 3, "{eps:?}");
    assert!(ips.contains(&c.to_string()), "c kept {c}: {ips:?}");
    assert!(
        traffic::ping(&t.container("a").ns, c, 2),
        "a -> c after h3's restart"
    );
}

#[test]
fn etcd_outage_keeps_flows_and_reconciles_afterwards() {
    let mut t = cluster();
    t.add_pod(0, "a", "red");
    t.add_pod(1, "b", "red");
    t.add_pod(1, "gone", "red");
    for h in 0..3 {
        t.wait_converged(h);
    }
    let (a_ip, b_ip, gone_ip) = (
        t.container("a").ip,
        t.container("b").ip,
        t.container("gone").ip,
    );

    // etcd down for 30 s: the datapath keeps forwarding with the last tables.
    t.etcd.as_mut().unwrap().pause();
    let flow = {
        let (a, b) = (
            t.container("a").ns.name().to_owned(),
            t.container("b").ns.name().to_owned(),
        );
        thread::spawn(move || {
            let (server, client) = (
                overlay_tests::Netns::open(&b),
                overlay_tests::Netns::open(&a),
            );
            traffic::tcp_stream(
                &server,
                &client,
                b_ip,
                5100,
                traffic::Limit::Duration(Duration::from_secs(30)),
            )
        })
    };
    let (sent, got) = flow.join().expect("flow during the outage");
    assert_eq!(sent, got);
    t.etcd.as_mut().unwrap().resume();

    // h1 cut off from etcd (its underlay still works): meanwhile h2 deletes an endpoint and
    // etcd compacts its history past h1's watch.
    t.hosts[0]
        .ns
        .ip(&["route", "add", "blackhole", "198.18.0.254/32"]);
    thread::sleep(Duration::from_secs(1));
    let resp = t.api(
        1,
        &Request::DeleteEndpoint {
            container_id: format!("{}-gone", t.id),
            ifname: "eth0".into(),
        },
    );
    assert!(resp.is_ok(), "{resp:?}");
    let etcd = t.etcd.as_ref().unwrap();
    let rev = etcd.revision();
    etcd.ctl_ok(&["compaction", &rev.to_string()]);
    assert!(
        traffic::ping(&t.container("a").ns, b_ip, 2),
        "flows keep working while h1 is cut off"
    );
    t.hosts[0]
        .ns
        .ip(&["route", "del", "blackhole", "198.18.0.254/32"]);

    // h1 re-lists and drops the deleted endpoint.
    t.wait_status(0, "deleted endpoint reconciled", |s| s["endpoints"] == 2);
    assert!(!traffic::ping(&t.container("a").ns, gone_ip, 1));
    assert!(traffic::ping(&t.container("a").ns, b_ip, 2));
    assert!(
        t.daemon_log(0).contains("re-listing") || t.daemon_log(0).contains("listing cluster state")
    );
    let _ = a_ip;
}

#[test]
fn concurrent_endpoint_creation_never_duplicates_an_address() {
    let mut t = cluster();
    let sockets: Vec<_> = (0..3)
        .map(|h| overlay_daemon::api::socket_path(&t.hosts[h].run_dir))
        .collect();
    let namespaces: Vec<_> = (0..50)
        .map(|i| overlay_tests::Netns::create(&format!("ovt{}-p{i}", t.id)))
        .collect();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let socket = sockets[i % 3].clone();
            let netns = namespaces[i].path();
            let id = format!("{}-p{i}", t.id);
            thread::spawn(move || {
                let req = EndpointRequest {
                    network: "blue".into(),
                    container_id: id,
                    netns: netns.into(),
                    ifname: "eth0".into(),
                    ..Default::default()
                };
                overlay_api::Client::new(socket)
                    .create_endpoint(req)
                    .map(|e| e.ip().expect("an IPv4 network"))
            })
        })
        .collect();
    let ips: Vec<Ipv4Addr> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("endpoint created"))
        .collect();
    assert_eq!(
        ips.iter().collect::<BTreeSet<_>>().len(),
        50,
        "all 50 addresses distinct: {ips:?}"
    );
    assert_eq!(endpoints_json(&t).len(), 50);
    for h in 0..3 {
        t.wait_status(h, "50 endpoints installed", |s| s["endpoints"] == 50);
    }

    for i in 0..50 {
        let resp = t.api(
            i % 3,
            &Request::DeleteEndpoint {
                container_id: format!("{}-p{i}", t.id),
                ifname: "eth0".into(),
            },
        );
        assert!(resp.is_ok(), "{resp:?}");
    }
    assert!(endpoints_json(&t).is_empty(), "no address leaked");
    for h in 0..3 {
        let dir = t.hosts[h].run_dir.join("endpoints");
        let left = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "local state left on h{}", h + 1);
        let links = t.hosts[h].ns.run("ip", &["-o", "link", "show"]);
        assert!(!links.contains("ovl"), "veth left on h{}: {links}", h + 1);
    }
    // Deleting again is fine.
    let resp = t.api(
        0,
        &Request::DeleteEndpoint {
            container_id: format!("{}-p0", t.id),
            ifname: "eth0".into(),
        },
    );
    assert!(resp.is_ok(), "{resp:?}");
}

#[test]
fn garbage_under_the_prefix_is_skipped() {
    let mut t = cluster();
    let etcd = t.etcd.as_ref().unwrap();
    etcd.ctl_ok(&["put", "/overlay/v1/endpoints/red/198.19.1.200", "{not json"]);
    etcd.ctl_ok(&[
        "put",
        "/overlay/v1/nodes/evil",
        r#"{"version":7,"vtep_ip":"198.18.0.99"}"#,
    ]);
    etcd.ctl_ok(&[
        "put",
        "/overlay/v1/networks/strange",
        r#"{"version":1,"vni":99999999,"subnet":"198.19.9.0/24"}"#,
    ]);
    etcd.ctl_ok(&["put", "/overlay/v1/unknown/thing", "x"]);
    t.add_pod(0, "a", "red");
    t.add_pod(1, "b", "red");
    t.wait_converged(0);
    t.wait_converged(1);
    assert!(
        traffic::ping(&t.container("a").ns, t.container("b").ip, 2),
        "still serving"
    );
    let log = t.daemon_log(0);
    assert!(log.contains("skipping etcd entry"), "{log}");
    let status = t.overlayctl_ok(0, &["status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["rejected_entries"], 3, "{v}");
    assert_eq!(v["nodes"], 3);
    // An unreadable network or service record can still be removed by name.
    let etcd = t.etcd.as_ref().unwrap();
    etcd.ctl_ok(&["put", "/overlay/v1/networks/junk", "{not json"]);
    etcd.ctl_ok(&["put", "/overlay/v1/services/junk", "x"]);
    for kind in ["network", "service"] {
        let out = t.overlayctl_ok(0, &[kind, "rm", "junk", "-o", "json"]);
        assert!(out.contains(r#""unreadable": true"#), "{kind}: {out}");
        let key = format!("/overlay/v1/{kind}s/junk");
        let left = etcd.ctl_ok(&["get", &key]);
        assert!(left.trim().is_empty(), "{key} left: {left}");
    }
}

#[test]
fn overlayctl_manages_networks() {
    let t = cluster();
    let ls = t.overlayctl_ok(0, &["network", "ls"]);
    assert!(ls.contains("red") && ls.contains("198.19.1.0/24"), "{ls}");
    let dup = t.overlayctl(
        0,
        &[
            "network",
            "create",
            "green",
            "--vni",
            "100",
            "--subnet",
            "198.19.3.0/24",
        ],
    );
    assert!(!dup.status.success());
    assert_eq!(
        String::from_utf8_lossy(&dup.stderr).trim().lines().count(),
        1
    );
    t.overlayctl_ok(
        0,
        &[
            "network",
            "create",
            "green",
            "--vni",
            "300",
            "--subnet",
            "198.19.3.0/24",
        ],
    );
    let json: serde_json::Value =
        serde_json::from_str(&t.overlayctl_ok(0, &["network", "ls", "-o", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    t.overlayctl_ok(0, &["network", "rm", "green"]);
    let bad = t.overlayctl(
        0,
        &[
            "network",
            "create",
            "x",
            "--vni",
            "0",
            "--subnet",
            "198.19.4.0/24",
        ],
    );
    assert!(!bad.status.success());
    // Dual-stack and IPv6-only networks, and an operator's mistakes with them: one line each, naming what
    // to change, and nothing created.
    let create = |extra: &[&str]| {
        let mut args = vec!["network", "create", "ds", "--vni", "400"];
        args.extend_from_slice(extra);
        t.overlayctl(0, &args)
    };
    for (extra, needle) in [
        (
            &["--subnet", "2001:2:0:1090::/64", "--gateway", "198.19.5.1"][..],
            "IPv4 gateway needs an IPv4 subnet",
        ),
        (
            &["--subnet", "198.19.5.0/24", "--subnet", "198.19.6.0/24"][..],
            "at most one IPv4 and one IPv6",
        ),
        (
            &[
                "--subnet",
                "198.19.5.0/24",
                "--subnet",
                "2001:2:0:1090::/64",
                "--gateway",
                "2001:2:0:1091::1",
            ][..],
            "2001:2:0:1091::1",
        ),
        (
            &[
                "--subnet",
                "198.19.5.0/24",
                "--subnet",
                "2001:2:0:1090::/64",
                "--block-len6",
                "40",
            ][..],
            "IPv6 block length",
        ),
        (
            &["--subnet", "198.19.5.0/24", "--gateway", "2001:2:0:1090::1"][..],
            "IPv6 subnet",
        ),
    ] {
        let out = create(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    let made = create(&[
        "--subnet",
        "198.19.5.0/24",
        "--subnet",
        "2001:2:0:1090::/64",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let ls = t.overlayctl_ok(0, &["network", "ls"]);
    assert!(
        ls.contains("2001:2:0:1090::/64") && ls.contains("/96"),
        "{ls}"
    );
    t.overlayctl_ok(0, &["network", "rm", "ds"]);
    let stats = t.overlayctl_ok(0, &["stats"]);
    assert!(stats.contains("drop:spoofed_ip"), "{stats}");
}

#[test]
fn clean_shutdown_leaves_at_once_and_busy_networks_stay() {
    // A long TTL, so leaving "at once" cannot be mistaken for an expired lease.
    let mut t = Topology::new(
        TopologySpec::new(2)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd(60),
    );
    t.start_daemon(0, &[]);
    t.start_daemon(1, &["--detach-on-exit"]);
    t.wait_status(0, "h2 registered", |s| s["vteps"] == 1);
    t.add_pod(0, "a", "red");
    t.add_pod(1, "b", "red");
    t.wait_converged(0);

    let busy = t.overlayctl(0, &["network", "rm", "red"]);
    assert!(
        !busy.status.success(),
        "a network with endpoints must not be removed"
    );
    assert!(String::from_utf8_lossy(&busy.stderr).contains("still has 2 endpoint(s)"));

    let start = std::time::Instant::now();
    assert!(t.stop_daemon(1, Signal::SIGTERM), "h2 exits cleanly");
    t.wait_status(0, "h2 gone", |s| s["vteps"] == 0 && s["endpoints"] == 1);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "left at once, not after the 60 s lease"
    );
    let nodes = t.overlayctl_ok(0, &["node", "ls", "-o", "json"]);
    assert!(!nodes.contains("\"h2\""), "{nodes}");
    // Its datapath is gone too.
    assert!(
        !t.hosts[1].pins.root().exists(),
        "pins removed on a clean shutdown"
    );
}

/// The sync loop re-lists when a watch reports a compaction; this checks that etcd (3.4)
/// reports it the way the loop expects, through the same client code.
#[test]
fn a_watch_behind_a_compaction_is_reported_as_compacted() {
    let t = Topology::new(
        TopologySpec::new(1)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd(5),
    );
    let etcd = t.etcd.as_ref().unwrap();
    for i in 0..5 {
        etcd.ctl_ok(&["put", &format!("/overlay/v1/nodes/n{i}"), "{}"]);
    }
    let rev = etcd.revision();
    etcd.ctl_ok(&["compaction", &rev.to_string()]);
    let cfg = overlay_daemon::store::EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        ..overlay_daemon::store::EtcdConfig::local("/overlay")
    };
    let compacted = overlay_tests::Netns::open(t.underlay.name()).enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = overlay_daemon::store::Store::connect(&cfg).await.unwrap();
            let (_w, mut stream) = store.watch("/overlay/v1/", 2).await.unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            (resp.compact_revision(), resp.canceled())
        })
    });
    assert!(
        compacted.0 >= rev,
        "compact revision reported: {compacted:?}"
    );
}
