//! The real `overlay-cni` on a dual-stack network, for cniVersion 0.4.0 and 1.0.0: results
//! with both families, both addresses usable in the container at once (no DAD delay) with a
//! default route per family, CHECK of both, DEL freeing both (no IPv6 claim left in etcd).

use overlay_tests::{
    cni::{self, conf},
    traffic, Netns, Topology, TopologySpec,
};
use serde_json::Value;

const RED6: &str = "2001:2:0:1080::/64";
const GATEWAY6: &str = "2001:2:0:1080::1";

fn endpoints6(t: &Topology) -> String {
    let etcd = t.etcd.as_ref().expect("etcd topology");
    etcd.keys("/overlay/v1/endpoints6/").join("\n")
}

#[test]
fn cni_results_checks_and_deletes_carry_both_families() {
    let mut t = Topology::new(TopologySpec::new(2).with_etcd(10).network6(
        "red",
        100,
        "198.19.80.0/24",
        RED6,
    ));
    t.start_all(&[]);
    let socket = overlay_daemon::api::socket_path(&t.hosts[0].run_dir);
    // A peer on the other host to reach over IPv6.
    t.add_pod(1, "peer", "red");
    t.wait_converged(0);
    let peer6 = t.container("peer").ip6();

    for version in ["0.4.0", "1.0.0"] {
        let id = format!("{}-cni-{version}", t.id);
        let ns = Netns::create(&format!("ovt{}-c{}", t.id, version.replace('.', "")));
        let config = conf(version, "red", &socket);
        let (ok, result) = cni::run("ADD", &id, &ns, &config);
        assert!(ok, "{version} ADD: {result}");
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{version}: one address per family: {result}");
        let v6 = ips
            .iter()
            .find(|i| i["address"].as_str().unwrap().contains(':'))
            .expect("an IPv6 entry");
        assert_eq!(v6["gateway"], GATEWAY6);
        assert_eq!(v6["interface"], 1);
        let old = version.starts_with("0.");
        assert_eq!(v6.get("version").is_some(), old, "{version}: {v6}");
        if old {
            assert_eq!(v6["version"], "6");
        }
        let routes: Vec<&str> = result["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dst"].as_str().unwrap())
            .collect();
        assert_eq!(routes, ["0.0.0.0/0", "::/0"], "{version}");

        // Usable at once: not tentative, a default route via the gateway, a peer reached.
        let address = v6["address"].as_str().unwrap();
        let shown = ns.output("ip", &["-6", "addr", "show", "dev", "eth0"]);
        let shown = String::from_utf8_lossy(&shown.stdout);
        let line = shown
            .lines()
            .find(|l| l.contains(address))
            .unwrap_or_else(|| panic!("{version}: {address} not configured: {shown}"));
        assert!(!line.contains("tentative"), "{version}: DAD ran: {line}");
        let route = ns.output("ip", &["-6", "route", "show", "default"]);
        assert!(
            String::from_utf8_lossy(&route.stdout).contains(GATEWAY6),
            "{version}: {}",
            String::from_utf8_lossy(&route.stdout)
        );
        assert!(traffic::ping(&ns, peer6, 2), "{version}: ping6 to the peer");
        assert!(endpoints6(&t).contains(address.split('/').next().unwrap()));

        // CHECK with the recorded result passes; with the IPv6 address gone it fails.
        let mut checked: Value = serde_json::from_str(&config).unwrap();
        checked["prevResult"] = result.clone();
        let checked = checked.to_string();
        let (ok, out) = cni::run("CHECK", &id, &ns, &checked);
        assert!(ok, "{version} CHECK: {out}");
        ns.ip(&["-6", "addr", "del", address, "dev", "eth0"]);
        let (ok, out) = cni::run("CHECK", &id, &ns, &checked);
        assert!(!ok, "{version}: CHECK passed without the IPv6 address");
        assert!(
            out["msg"].as_str().unwrap_or_default().contains(address),
            "{version}: the error names the missing address: {out}"
        );

        // DEL frees both families.
        let (ok, out) = cni::run("DEL", &id, &ns, &config);
        assert!(ok, "{version} DEL: {out}");
        let left = endpoints6(&t);
        assert!(
            !left.contains(address.split('/').next().unwrap()),
            "{version}: IPv6 claim left after DEL: {left}"
        );
    }
    // Only the peer's claim is left.
    assert_eq!(endpoints6(&t).lines().count(), 1);
}
