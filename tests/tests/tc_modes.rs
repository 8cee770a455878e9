//! How TC programs are attached (`--tc-mode`): clsact filters (what kernels before 6.6 get,
//! and container veths everywhere by default), TCX links, and a daemon restarted in another
//! mode. Each forwards, survives a restart, leaves exactly one program on every container
//! veth, and `overlayd cleanup` takes them all away.

use aya::programs::tc::{SchedClassifier, TcAttachType};
use nix::sys::signal::Signal;
use overlay_tests::{traffic, Netns, Topology, TopologySpec};

/// The TC attachments on `dev` in host `h`'s namespace: "clsact/ingress" per filter (from
/// bpftool), "tcx/ingress" per TCX program (bpftool 7.1 does not list those: queried).
fn tc_kinds(t: &Topology, h: usize, dev: &str) -> Vec<String> {
    let out = t.hosts[h]
        .ns
        .run("bpftool", &["-j", "net", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut kinds: Vec<String> = v
        .as_array()
        .and_then(|a| a.first())
        .and_then(|o| o["tc"].as_array())
        .map(|tc| {
            tc.iter()
                .filter_map(|p| p["kind"].as_str().map(str::to_owned))
                .filter(|k| k.starts_with("clsact"))
                .collect()
        })
        .unwrap_or_default();
    let dev = dev.to_owned();
    let tcx = Netns::open(t.hosts[h].ns.name()).enter(move || {
        SchedClassifier::query_tcx(&dev, TcAttachType::Ingress).map_or(0, |(_, p)| p.len())
    });
    kinds.extend(std::iter::repeat_n("tcx/ingress".to_owned(), tcx));
    kinds
}

fn two_hosts(args: &[&str]) -> Topology {
    let mut t = Topology::new(
        TopologySpec::new(2)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd(10),
    );
    t.start_daemon(0, args);
    t.start_daemon(1, args);
    t.wait_converged(0);
    t.wait_converged(1);
    t.add_pod(0, "a", "red");
    t.add_pod(1, "b", "red");
    // Each host has the other's endpoint before the first ping.
    t.wait_converged(0);
    t.wait_converged(1);
    t
}

fn restart(t: &mut Topology, h: usize, args: &[&str]) {
    assert!(t.stop_daemon(h, Signal::SIGTERM), "{}", t.daemon_log(h));
    // The old daemon's status would pass for the new one's.
    std::fs::remove_file(t.hosts[h].run_dir.join("status.json")).unwrap();
    t.start_daemon(h, args);
    t.wait_converged(h);
}

fn pings(t: &Topology) -> bool {
    let (a, b) = (&t.containers[0], &t.containers[1]);
    traffic::ping(&a.ns, b.ip, 2) && traffic::ping(&b.ns, a.ip, 2)
}

#[test]
fn clsact_mode_forwards_survives_a_restart_and_is_cleaned_up() {
    // Before 6.6 `auto` is clsact everywhere: its pins on bpffs must work (they once were
    // regular files, which bpffs refuses, and the daemon could not start).
    let mut t = two_hosts(&["--tc-mode", "clsact"]);
    assert!(pings(&t), "{}\n{}", t.daemon_log(0), t.daemon_log(1));
    let veth = t.containers[0].host_ifname.clone();
    assert_eq!(tc_kinds(&t, 0, &veth), ["clsact/ingress"]);
    assert_eq!(tc_kinds(&t, 0, "ul0"), ["clsact/ingress"]);
    restart(&mut t, 0, &["--tc-mode", "clsact"]);
    assert!(pings(&t), "after a restart: {}", t.daemon_log(0));
    assert_eq!(
        tc_kinds(&t, 0, &veth),
        ["clsact/ingress"],
        "replaced, not added"
    );

    assert!(t.stop_daemon(0, Signal::SIGTERM));
    let cleanup = t.cleanup(0);
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(
        tc_kinds(&t, 0, &veth).is_empty(),
        "{:?}",
        tc_kinds(&t, 0, &veth)
    );
    assert!(tc_kinds(&t, 0, "ul0").is_empty());
}

/// The default on 6.6+: TCX on the underlay, clsact filters on container veths (a TCX
/// attach waits a grace period under the RTNL lock; see docs/benchmarks.md). Restarted with
/// `--tc-mode tcx` and back, every veth keeps exactly one program and traffic flows.
#[test]
fn switching_tc_modes_leaves_one_program_per_veth() {
    let mut t = two_hosts(&[]);
    let veth = t.containers[0].host_ifname.clone();
    assert_eq!(tc_kinds(&t, 0, &veth), ["clsact/ingress"]);
    assert_eq!(tc_kinds(&t, 0, "ul0"), ["tcx/ingress"]);
    assert!(pings(&t));
    restart(&mut t, 0, &["--tc-mode", "tcx"]);
    assert_eq!(
        tc_kinds(&t, 0, &veth),
        ["tcx/ingress"],
        "the filter went: {}",
        t.daemon_log(0)
    );
    assert!(pings(&t), "{}", t.daemon_log(0));
    restart(&mut t, 0, &[]);
    assert_eq!(tc_kinds(&t, 0, &veth), ["clsact/ingress"], "the link went");
    assert!(pings(&t), "{}", t.daemon_log(0));

    // A container deleted takes its pin along (a clsact marker is a dangling symlink).
    let id = format!("{}-a", t.id);
    t.client(0).delete_endpoint(&id, "eth0").unwrap();
    let pins: Vec<_> = std::fs::read_dir(t.hosts[0].pins.links())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ep-"))
        .collect();
    assert!(pins.is_empty(), "{pins:?}");
}
