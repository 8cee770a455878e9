//! The reconciler against in-memory maps: placement, and delta passes equal to full ones.

use std::net::Ipv4Addr;

use super::*;
use crate::tables::ClusterTables;
use crate::{
    maps::{EndpointMaps, Location},
    store::ClusterView,
    tables::MacAddr,
};

fn tables() -> ValidTables {
    ClusterTables::from_json(
        r#"{
          "networks": [{"name": "red", "vni": 100, "subnet": "198.19.1.0/24"}],
          "nodes": [{"name": "a", "vtep_ip": "198.18.0.1"}, {"name": "b", "vtep_ip": "198.18.0.2"}],
          "endpoints": [
            {"network": "red", "ip": "198.19.1.2", "node": "a", "host_ifname": "veth-a"},
            {"network": "red", "ip": "198.19.1.3", "node": "b"},
            {"network": "red", "ip": "198.19.1.4", "node": "a", "host_ifname": "gone"}
          ]
        }"#,
    )
    .unwrap()
    .validate()
}

#[test]
fn local_and_remote_endpoints_are_placed() {
    let me = NodeIdentity {
        name: "a".into(),
        vteps: Vteps::v4("198.18.0.1".parse().unwrap()),
    };
    let plan = plan(&tables(), &me, |name| (name == "veth-a").then_some(7));
    assert_eq!(
        plan.vteps,
        vec![("198.18.0.2".parse().unwrap(), node_id("b"))]
    );
    assert_eq!(plan.endpoints.len(), 2);
    assert_eq!(plan.endpoints[0].location, Location::Local { ifindex: 7 });
    assert_eq!(
        plan.endpoints[1].location,
        Location::Remote {
            vtep: "198.18.0.2".parse().unwrap()
        }
    );
    assert_eq!(plan.local.len(), 1);
    assert_eq!(
        plan.local[0].mac,
        MacAddr::from_ip("198.19.1.2".parse().unwrap()).0
    );
    assert_eq!(plan.unresolved.len(), 1, "{:?}", plan.unresolved);
    assert_eq!(
        plan.networks[0].gateway_ip,
        Some("198.19.1.1".parse::<Ipv4Addr>().unwrap())
    );
}

/// Each peer's endpoints are placed at the address of the family the two nodes share
/// (`Vteps::toward`); a peer sharing none is reported, and neither it nor its endpoints are
/// installed.
#[test]
fn peers_are_reached_in_the_family_they_share_or_reported_unreachable() {
    let tables = ClusterTables::from_json(
        r#"{
          "networks": [{"name": "red", "vni": 100, "subnet": "198.19.1.0/24"}],
          "nodes": [
            {"name": "a", "vtep_ip": "198.18.0.1", "vtep_ip6": "2001:2:0:ff00::1", "vtep_prefer": "ipv6"},
            {"name": "six", "vtep_ip6": "2001:2:0:ff00::2"},
            {"name": "four", "vtep_ip": "198.18.0.3"},
            {"name": "both", "vtep_ip": "198.18.0.4", "vtep_ip6": "2001:2:0:ff00::4"},
            {"name": "both6", "vtep_ip": "198.18.0.5", "vtep_ip6": "2001:2:0:ff00::5", "vtep_prefer": "ipv6"}
          ],
          "endpoints": [
            {"network": "red", "ip": "198.19.1.2", "node": "six"},
            {"network": "red", "ip": "198.19.1.3", "node": "four"},
            {"network": "red", "ip": "198.19.1.4", "node": "both"},
            {"network": "red", "ip": "198.19.1.5", "node": "both6"}
          ]
        }"#,
    )
    .unwrap()
    .validate();
    assert!(tables.rejected.is_empty(), "{:?}", tables.rejected);
    let me = |vteps: Vteps| NodeIdentity {
        name: "a".into(),
        vteps,
    };
    let a = tables.nodes["a"].vteps();
    let plan = plan(&tables, &me(a), |_| None);
    let at = |ip: &str| {
        plan.endpoints
            .iter()
            .find(|e| e.ip == Some(ip.parse().unwrap()))
            .map(|e| e.location)
    };
    let remote = |vtep: &str| {
        Some(Location::Remote {
            vtep: vtep.parse().unwrap(),
        })
    };
    assert_eq!(at("198.19.1.2"), remote("2001:2:0:ff00::2"), "IPv6 only");
    assert_eq!(at("198.19.1.3"), remote("198.18.0.3"), "IPv4 only");
    assert_eq!(
        at("198.19.1.4"),
        remote("198.18.0.4"),
        "both, IPv4 preferred there"
    );
    assert_eq!(
        at("198.19.1.5"),
        remote("2001:2:0:ff00::5"),
        "both prefer IPv6"
    );
    assert!(plan.unreachable.is_empty());
    assert_eq!(plan.vteps.len(), 4);

    // An IPv6-only node shares nothing with an IPv4-only one.
    let six_only = Vteps { v4: None, ..a };
    let plan = plan_for(&tables, &me(six_only));
    assert_eq!(plan.unreachable, vec!["four".to_owned()]);
    assert!(plan.vteps.iter().all(|(ip, _)| ip.is_ipv6()));
    assert!(plan
        .endpoints
        .iter()
        .all(|e| e.ip != Some("198.19.1.3".parse().unwrap())));
}

fn plan_for(tables: &ValidTables, me: &NodeIdentity) -> Plan {
    plan(tables, me, |_| None)
}

/// A delta pass must leave exactly what a full pass would, whatever the changes.
#[test]
fn delta_passes_equal_full_passes() {
    delta_equals_full(
        r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#,
        |host| format!("198.19.1.{host}"),
        "0a:58:c6:13:01",
    );
}

/// The same on an IPv6-only network, whose endpoints are named by their IPv6 address and
/// identified in the MAC view by their MAC alone.
#[test]
fn delta_passes_equal_full_passes_on_an_ipv6_only_network() {
    delta_equals_full(
        r#"{"version":1,"vni":100,"subnet6":"2001:2:0:1090::/64"}"#,
        |host| format!("2001:2:0:1090::{host:x}"),
        "0e:58:c6:13:01",
    );
}

/// Applies a deterministic mix of changes to network red (`network`, endpoints keyed
/// `key(host)`, MACs `mac_prefix:xx`), each by a delta pass where it can, and compares the
/// maps with a full pass's after every change.
fn delta_equals_full(network: &str, key: fn(u32) -> String, mac_prefix: &'static str) {
    use crate::store::{
        client::{Change, Kv},
        keys::Layout,
    };
    let kv = |key: &str, value: String| {
        Change::Put(Kv {
            key: format!("/overlay/v1/{key}"),
            value: value.into_bytes(),
            lease: 1,
        })
    };
    let node = |i: u8| {
        format!(
            r#"{{"version":1,"vtep_ip":"198.18.0.{i}","vtep_mac":"02:00:00:00:00:0{i}","registered_at":0,"release":"0.3.0"}}"#
        )
    };
    let reserved = |node: &str, mac: u8| {
        format!(
            r#"{{"version":1,"mac":"{mac_prefix}:{mac:02x}","node":"{node}","container_id":"c","host_ifname":""}}"#
        )
    };
    let ep = |node: &str, mac: u8, labels: &str| {
        format!(
            r#"{{"version":1,"mac":"{mac_prefix}:{mac:02x}","node":"{node}","container_id":"c","host_ifname":"ovlx","services":[{labels}]}}"#
        )
    };
    let me = NodeIdentity {
        name: "a".into(),
        vteps: Vteps::v4("198.18.0.1".parse().unwrap()),
    };
    let mut view = ClusterView::new(Layout::new("/overlay"));
    view.reset(Vec::new());
    view.apply(kv("networks/red", network.into()));
    for (name, i) in [("a", 1), ("b", 2), ("c", 3)] {
        view.apply(kv(&format!("nodes/{name}"), node(i)));
    }
    let mut incremental = Target::Memory(Box::new(EndpointMaps::in_memory()));
    let mut reconciler = Reconciler::new(me.clone());
    let mut deltas = 0;
    let mut installed_max = 0;
    // A deterministic mix: puts, moves between nodes, MAC changes and clashes,
    // deletes, a labelled endpoint, an endpoint of an unknown node, garbage.
    let mut x: u32 = 12345;
    for step in 0..400 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let host = 2 + (x >> 8) % 20;
        let key = format!("endpoints/red/{}", key(host));
        let change = match (x >> 16) % 9 {
            0..=2 => kv(&key, ep("b", host as u8, "")),
            3 => kv(&key, ep("c", host as u8, "")),
            4 => kv(&key, ep("c", (2 + (x >> 4) % 20) as u8, "")),
            5 | 6 => Change::Delete(format!("/overlay/v1/{key}")),
            7 => kv(&key, ep(["b", "zz"][(x as usize >> 3) % 2], host as u8, "")),
            _ => match step % 6 {
                // Nodes coming and going, with and without endpoints.
                3 => kv("nodes/d", node(4)),
                4 => Change::Delete("/overlay/v1/nodes/d".into()),
                5 => kv("nodes/c", node(5 + (x % 2) as u8)),
                0 => kv(&key, ep("b", host as u8, r#""web:80""#)),
                1 => kv(&key, "garbage".into()),
                _ => match (x >> 5) % 2 {
                    0 => kv(&key, ep("a", host as u8, "")),
                    // A reserved address of this node (no interface yet), MACs clashing.
                    _ => kv(&key, reserved("a", (2 + (x >> 6) % 20) as u8)),
                },
            },
        };
        view.apply(change);
        let dirty = view.take_dirty();
        // This node's interface appears only at step 150: before, its endpoints come from
        // etcd with their interface still missing (a new container's key arrives before
        // its veth), which delta passes leave uninstalled and look at again.
        let resolve = |_: &str| (step >= 150).then_some(9);
        let report = reconciler
            .delta(&mut incremental, &view, &dirty, resolve)
            .unwrap();
        let report = match report {
            Some(r) => {
                deltas += 1;
                r
            }
            None => reconciler
                .full(&mut incremental, &view.tables(), resolve)
                .unwrap(),
        };
        let mut fresh = Target::Memory(Box::new(EndpointMaps::in_memory()));
        let expected = Reconciler::new(me.clone())
            .full(&mut fresh, &view.tables(), resolve)
            .unwrap();
        assert_eq!(report.vteps, expected.vteps, "step {step}");
        assert_eq!(report.endpoints, expected.endpoints, "step {step}");
        assert_eq!(
            report.local_endpoints, expected.local_endpoints,
            "step {step}"
        );
        let unresolved = |r: &Report| {
            let mut u: Vec<_> = r
                .unresolved
                .iter()
                .map(|u| (u.network.clone(), u.ip))
                .collect();
            u.sort();
            u
        };
        assert_eq!(unresolved(&report), unresolved(&expected), "step {step}");
        assert_eq!(
            incremental.endpoints().snapshot(),
            fresh.endpoints().snapshot(),
            "step {step}"
        );
        installed_max = installed_max.max(expected.endpoints);
    }
    assert!(
        installed_max >= 5,
        "at most {installed_max} endpoints installed"
    );
    // Rejections (clashes, unknown nodes) force full passes until they clear.
    assert!(deltas > 40, "only {deltas} delta passes");
}

/// A reserved address of this node is not installed but holds its MAC: a later
/// endpoint with the same MAC is rejected by a full pass, so a delta must not install it.
#[test]
fn delta_respects_macs_held_by_reserved_addresses() {
    use crate::store::{
        client::{Change, Kv},
        keys::Layout,
    };
    let put = |key: &str, value: &str| {
        Change::Put(Kv {
            key: format!("/overlay/v1/{key}"),
            value: value.as_bytes().to_vec(),
            lease: 1,
        })
    };
    let mut view = ClusterView::new(Layout::new("/overlay"));
    view.reset(Vec::new());
    view.apply(put(
        "networks/red",
        r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#,
    ));
    view.apply(put(
        "nodes/a",
        r#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:01","registered_at":0}"#,
    ));
    view.apply(put(
        "nodes/b",
        r#"{"version":1,"vtep_ip":"198.18.0.2","vtep_mac":"02:00:00:00:00:02","registered_at":0}"#,
    ));
    view.apply(put(
        "endpoints/red/198.19.1.5",
        r#"{"version":1,"mac":"0a:58:00:00:00:05","node":"a","container_id":"c","host_ifname":""}"#,
    ));
    let me = NodeIdentity {
        name: "a".into(),
        vteps: Vteps::v4("198.18.0.1".parse().unwrap()),
    };
    let mut target = Target::Memory(Box::new(EndpointMaps::in_memory()));
    let mut reconciler = Reconciler::new(me);
    reconciler
        .full(&mut target, &view.tables(), |_| Some(9))
        .unwrap();
    view.take_dirty();
    view.apply(put("endpoints/red/198.19.1.9", r#"{"version":1,"mac":"0a:58:00:00:00:05","node":"b","container_id":"d","host_ifname":"ovly"}"#));
    let dirty = view.take_dirty();
    let delta = reconciler
        .delta(&mut target, &view, &dirty, |_| Some(9))
        .unwrap();
    assert!(delta.is_none(), "the MAC clash needs a full pass");
    let report = reconciler
        .full(&mut target, &view.tables(), |_| Some(9))
        .unwrap();
    assert_eq!(report.endpoints, 0, "{:?}", report.rejected);
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
}

#[test]
fn node_ids_are_stable() {
    assert_eq!(node_id("a"), node_id("a"));
    assert_ne!(node_id("host-1"), node_id("host-2"));
}

/// A full table keeps what is installed and rejects what does not fit, with a reason a
/// waiting request can find; a delta pass never adds to a full table.
#[test]
fn a_full_endpoint_table_keeps_the_installed_and_rejects_the_new() {
    use crate::store::{
        client::{Change, Kv},
        keys::Layout,
    };
    let put = |key: &str, value: String| {
        Change::Put(Kv {
            key: format!("/overlay/v1/{key}"),
            value: value.into_bytes(),
            lease: 1,
        })
    };
    let ep = |i: u8| {
        format!(
            r#"{{"version":1,"mac":"0a:58:c6:13:01:{i:02x}","node":"b","container_id":"c{i}","host_ifname":"ovl{i}"}}"#
        )
    };
    let mut view = ClusterView::new(Layout::new("/overlay"));
    view.reset(Vec::new());
    view.apply(put(
        "networks/red",
        r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#.into(),
    ));
    for (name, i) in [("a", 1), ("b", 2)] {
        view.apply(put(&format!("nodes/{name}"), format!(r#"{{"version":1,"vtep_ip":"198.18.0.{i}","vtep_mac":"02:00:00:00:00:0{i}","registered_at":0,"release":"0.3.0"}}"#)));
    }
    // .9 and .8 first: installed before the table fills.
    for i in [9, 8] {
        view.apply(put(&format!("endpoints/red/198.19.1.{i}"), ep(i)));
    }
    let me = NodeIdentity {
        name: "a".into(),
        vteps: Vteps::v4("198.18.0.1".parse().unwrap()),
    };
    let mut target = Target::Memory(Box::new(EndpointMaps::in_memory_with_capacity(2)));
    let mut reconciler = Reconciler::new(me);
    let report = reconciler
        .full(&mut target, &view.tables(), |_| Some(9))
        .unwrap();
    assert_eq!(report.endpoints, 2);
    view.take_dirty();
    // .2 sorts first but came last: it is the one left out.
    view.apply(put("endpoints/red/198.19.1.2", ep(2)));
    let dirty = view.take_dirty();
    assert!(reconciler
        .delta(&mut target, &view, &dirty, |_| Some(9))
        .unwrap()
        .is_none());
    let report = reconciler
        .full(&mut target, &view.tables(), |_| Some(9))
        .unwrap();
    assert_eq!(target.endpoints().len_installed(), 2);
    let ip = |i: u8| std::net::Ipv4Addr::new(198, 19, 1, i);
    assert!(report
        .not_installed("red", ip(2).into())
        .unwrap()
        .contains("table is full"));
    assert_eq!(report.not_installed("red", ip(9).into()), None);
    assert!(target.endpoints().installed(100, ip(8)).is_some());
    // Room made: the next pass installs it.
    view.apply(Change::Delete(
        "/overlay/v1/endpoints/red/198.19.1.9".into(),
    ));
    let report = reconciler
        .full(&mut target, &view.tables(), |_| Some(9))
        .unwrap();
    assert_eq!(report.not_installed("red", ip(2).into()), None);
    assert!(target.endpoints().installed(100, ip(2)).is_some());
}
