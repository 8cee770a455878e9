//! Turns the desired cluster tables into the datapath's map contents and container
//! attachments. `plan` is pure (what should be), `apply` makes the kernel match it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use overlay_common::maps::ENDPOINT_F_LOCAL;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::{
    datapath::{Datapath, DatapathError},
    maps::{EndpointEntry, EndpointMaps, LocalIdentity, Location, NetworkEntry, ServiceEntry},
    store::{view::Dirty, ClusterView},
    tables::{endpoint_problem, MacAddr, NetworkSpec, NodeSpec, ValidTables},
};

/// This node as the reconciler sees it.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub vtep_ip: Ipv4Addr,
}

/// What the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub networks: Vec<NetworkEntry>,
    /// Remote VTEPs with their stable node ids.
    pub vteps: Vec<(Ipv4Addr, u32)>,
    pub endpoints: Vec<EndpointEntry>,
    pub local: Vec<LocalIdentity>,
    /// Every service of every network: each node balances for its own clients.
    pub services: Vec<ServiceEntry>,
    /// Local endpoints that cannot be installed yet (interface missing), with the reason.
    pub unresolved: Vec<String>,
}

/// A stable 32-bit id for a node name (FNV-1a), the same on every host and across restarts.
pub fn node_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

pub fn plan(
    tables: &ValidTables,
    me: &NodeIdentity,
    resolve: impl Fn(&str) -> Option<u32>,
) -> Plan {
    let mut plan = Plan::default();
    for net in tables.networks.values() {
        plan.networks.push(NetworkEntry {
            vni: net.vni,
            gateway_ip: net.gateway_ip(),
            gateway_mac: MacAddr::gateway(net.vni).0,
        });
    }
    for node in tables.nodes.values() {
        if node.name != me.name {
            plan.vteps.push((node.vtep_ip, node_id(&node.name)));
        }
    }
    for svc in &tables.services {
        plan.services.push(ServiceEntry {
            vni: svc.vni,
            vip: svc.vip,
            port: svc.port,
            proto: svc.proto.number(),
            backends: svc
                .backends
                .iter()
                .map(|b| (b.ip, b.port, b.weight))
                .collect(),
        });
    }
    for ep in &tables.endpoints {
        let (Some(net), Some(node)) =
            (tables.networks.get(&ep.network), tables.nodes.get(&ep.node))
        else {
            continue;
        };
        let location = if node.name == me.name {
            // No interface yet: an address reserved for a runtime that has not made its
            // endpoint (Docker's IPAM asks first); nothing to install here until it does.
            let Some(ifname) = ep.host_ifname.as_deref() else {
                continue;
            };
            let Some(ifindex) = resolve(ifname) else {
                plan.unresolved.push(format!(
                    "local endpoint {}: interface {ifname} not found",
                    ep.ip
                ));
                continue;
            };
            plan.local.push(LocalIdentity {
                ifindex,
                vni: net.vni,
                ip: ep.ip,
                mac: ep.mac().0,
            });
            Location::Local { ifindex }
        } else {
            Location::Remote { vtep: node.vtep_ip }
        };
        plan.endpoints.push(EndpointEntry {
            vni: net.vni,
            ip: ep.ip,
            mac: ep.mac().0,
            location,
        });
    }
    plan
}

/// What one reconciliation changed and what the tables now hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The etcd revision the tables were built from (0 without etcd).
    pub revision: i64,
    /// When this reconciliation finished, microseconds since the Unix epoch.
    pub applied_at_us: u64,
    /// Whether only changed endpoints were written (true) or every table was rebuilt.
    pub incremental: bool,
    pub networks: usize,
    pub vteps: usize,
    pub endpoints: usize,
    pub local_endpoints: usize,
    pub services: usize,
    /// Maglev slots rewritten by the last reconciliation that changed any.
    pub maglev_slots_changed: usize,
    pub written: usize,
    pub removed: usize,
    pub attached: usize,
    pub detached: usize,
    pub rejected: Vec<String>,
    pub unresolved: Vec<String>,
}

/// Where the tables go: the kernel's maps, or (control-plane-only mode) memory.
pub enum Target {
    Kernel(Box<Datapath>),
    Memory(Box<EndpointMaps>),
}

impl Target {
    fn endpoints(&mut self) -> &mut EndpointMaps {
        match self {
            Target::Kernel(dp) => &mut dp.maps.endpoints,
            Target::Memory(eps) => eps,
        }
    }

    /// Replaces a remote node's VTEP entry (`old` removed, `new` added).
    fn set_vtep(
        &mut self,
        old: Option<Ipv4Addr>,
        new: Option<Ipv4Addr>,
        node_id: u32,
    ) -> Result<(), DatapathError> {
        let Target::Kernel(dp) = self else {
            return Ok(());
        };
        if let Some(ip) = old {
            dp.remove_vtep(ip)?;
        }
        if let Some(ip) = new {
            dp.insert_vtep(ip, node_id)?;
        }
        Ok(())
    }

    /// Installs a container's identity and attaches to its veth. Returns 1 if it attached.
    fn set_local(&mut self, id: &LocalIdentity) -> Result<usize, DatapathError> {
        let Target::Kernel(dp) = self else {
            return Ok(0);
        };
        dp.maps.local_ifaces.insert(id)?;
        if dp.is_attached(id.ifindex) {
            return Ok(0);
        }
        dp.attach_container(id.ifindex)?;
        Ok(1)
    }

    /// Removes a container's identity and detaches from its veth. Returns 1 if it detached.
    fn clear_local(&mut self, ifindex: u32) -> Result<usize, DatapathError> {
        let Target::Kernel(dp) = self else {
            return Ok(0);
        };
        dp.maps.local_ifaces.remove(ifindex)?;
        if !dp.is_attached(ifindex) {
            return Ok(0);
        }
        dp.detach_container(ifindex);
        Ok(1)
    }
}

/// Keeps a target equal to the cluster: a full pass (tables, plan, every map) when anything
/// structural changed, and otherwise a delta pass that writes only the endpoints that came,
/// changed or went. The delta pass is what keeps a change O(1) with 100k endpoints; it gives
/// up (and a full pass runs) whenever its result could differ from a full pass.
pub struct Reconciler {
    pub me: NodeIdentity,
    last: Option<LastFull>,
}

/// What a delta pass needs from the last full pass.
struct LastFull {
    networks: BTreeMap<String, NetworkSpec>,
    nodes: BTreeMap<String, NodeSpec>,
    /// This node's reserved addresses (no interface yet): valid, not installed, but holding
    /// their MAC, so a clash with them is a clash all the same.
    reserved: BTreeMap<(u32, Ipv4Addr), [u8; 6]>,
    report: Report,
}

impl Reconciler {
    pub fn new(me: NodeIdentity) -> Self {
        Self { me, last: None }
    }

    /// Rebuilds every table from `tables`.
    pub fn full(
        &mut self,
        target: &mut Target,
        tables: &ValidTables,
        resolve: impl Fn(&str) -> Option<u32>,
    ) -> Result<Report, DatapathError> {
        self.last = None;
        let plan = plan(tables, &self.me, resolve);
        let mut report = apply(target, &plan, self.me.vtep_ip)?;
        report
            .rejected
            .splice(0..0, tables.rejected.iter().cloned());
        let reserved = tables
            .endpoints
            .iter()
            .filter(|ep| ep.node == self.me.name && ep.host_ifname.is_none())
            .filter_map(|ep| Some(((tables.networks.get(&ep.network)?.vni, ep.ip), ep.mac().0)))
            .collect();
        self.last = Some(LastFull {
            networks: tables.networks.clone(),
            nodes: tables.nodes.clone(),
            reserved,
            report: report.clone(),
        });
        Ok(report)
    }

    /// Writes just the endpoints in `changed`, as `view` has them now, local ones with their
    /// container identity and attachment. `None`: a full pass is needed (no full pass yet,
    /// an invalid entry, a MAC conflict, a local interface not found, or entries rejected
    /// before that this change may make valid).
    pub fn delta(
        &mut self,
        target: &mut Target,
        view: &ClusterView,
        dirty: &Dirty,
        resolve: impl Fn(&str) -> Option<u32>,
    ) -> Result<Option<Report>, DatapathError> {
        if dirty.full {
            return Ok(None);
        }
        let Some(last) = &mut self.last else {
            return Ok(None);
        };
        if last
            .report
            .rejected
            .iter()
            .any(|r| r.starts_with("endpoint ") || r.starts_with("node "))
            || !last.report.unresolved.is_empty()
        {
            return Ok(None);
        }
        // Nodes without endpoints that joined, left or moved: only their VTEP changes.
        for name in &dirty.nodes {
            if *name == self.me.name {
                return Ok(None);
            }
            let new = view.node(name).map(|r| r.vtep_ip);
            if let Some(vtep) = new {
                if last
                    .nodes
                    .values()
                    .any(|n| n.name != *name && n.vtep_ip == vtep)
                {
                    return Ok(None); // a VTEP clash: a full pass rejects one of them
                }
            }
            let old = last.nodes.get(name).map(|n| n.vtep_ip);
            if old == new {
                continue;
            }
            target.set_vtep(old, new, node_id(name))?;
            match new {
                Some(vtep_ip) => {
                    last.nodes.insert(
                        name.clone(),
                        NodeSpec {
                            name: name.clone(),
                            vtep_ip,
                        },
                    );
                }
                None => {
                    last.nodes.remove(name);
                }
            }
            last.report.vteps = last.nodes.keys().filter(|n| **n != self.me.name).count();
        }
        let changed = &dirty.endpoints;

        let vtep_ip = self.me.vtep_ip;
        let mut report = Report {
            attached: 0,
            detached: 0,
            ..last.report.clone()
        };
        let (mut written, mut removed) = (0, 0);
        for (network, ip) in changed {
            let Some(net) = last.networks.get(network) else {
                if view.endpoint(network, *ip).is_some() {
                    return Ok(None); // rejected: no such network
                }
                continue;
            };
            let spec = view.endpoint(network, *ip);
            // What the entry should be now, as a full pass would place it.
            let desired = match &spec {
                None => None,
                Some(ep) => {
                    if endpoint_problem(ep, net, &last.nodes).is_some() {
                        return Ok(None);
                    }
                    let mac = ep.mac().0;
                    let held_by_reserved = last
                        .reserved
                        .iter()
                        .any(|(&(vni, other), m)| vni == net.vni && *m == mac && other != *ip);
                    if held_by_reserved
                        || target
                            .endpoints()
                            .ip_of_mac(net.vni, mac)
                            .is_some_and(|other| other != *ip)
                    {
                        return Ok(None);
                    }
                    let location = if ep.node == self.me.name {
                        match ep.host_ifname.as_deref() {
                            None => None, // reserved: nothing to install on its own node
                            Some(ifname) => match resolve(ifname) {
                                Some(ifindex) => Some(Location::Local { ifindex }),
                                None => return Ok(None), // a full pass reports it
                            },
                        }
                    } else {
                        Some(Location::Remote {
                            vtep: last.nodes[&ep.node].vtep_ip,
                        })
                    };
                    location.map(|location| EndpointEntry {
                        vni: net.vni,
                        ip: *ip,
                        mac,
                        location,
                    })
                }
            };
            match &spec {
                Some(ep) if ep.node == self.me.name && ep.host_ifname.is_none() => {
                    last.reserved.insert((net.vni, *ip), ep.mac().0);
                }
                _ => {
                    last.reserved.remove(&(net.vni, *ip));
                }
            }
            let installed = target.endpoints().installed(net.vni, *ip);
            // A local endpoint that goes or changes: its container identity goes first.
            if let Some(old) = installed.filter(|e| e.flags & ENDPOINT_F_LOCAL != 0) {
                let same = desired.is_some_and(|d| {
                    d.location
                        == Location::Local {
                            ifindex: old.ifindex,
                        }
                        && d.mac == old.mac
                });
                if !same {
                    report.detached += target.clear_local(old.ifindex)?;
                    report.local_endpoints = report.local_endpoints.saturating_sub(1);
                }
            }
            match desired {
                None => {
                    removed += target
                        .endpoints()
                        .remove(net.vni, *ip)
                        .map_err(DatapathError::from)?;
                }
                Some(entry) => {
                    if let Location::Local { ifindex } = entry.location {
                        let fresh = installed.is_none_or(|old| {
                            old.flags & ENDPOINT_F_LOCAL == 0
                                || old.ifindex != ifindex
                                || old.mac != entry.mac
                        });
                        if fresh {
                            report.attached += target.set_local(&LocalIdentity {
                                ifindex,
                                vni: net.vni,
                                ip: *ip,
                                mac: entry.mac,
                            })?;
                            report.local_endpoints += 1;
                        }
                    }
                    let (w, r) = target
                        .endpoints()
                        .upsert(&entry, vtep_ip)
                        .map_err(DatapathError::from)?;
                    written += w;
                    removed += r;
                }
            }
        }
        report.endpoints = target.endpoints().len_installed();
        report.written = written;
        report.removed = removed;
        report.maglev_slots_changed = 0;
        report.incremental = true;
        if let Some(last) = &mut self.last {
            last.report.endpoints = report.endpoints;
            last.report.local_endpoints = report.local_endpoints;
        }

        debug!(
            written,
            removed,
            changed = changed.len(),
            "endpoint changes written"
        );
        Ok(Some(report))
    }

    /// Forget the last full pass (after a failure), so the next pass is a full one.
    pub fn invalidate(&mut self) {
        self.last = None;
    }
}

/// Makes the maps and container attachments equal to `plan`. Additions go in before the
/// endpoints that need them; removals are done by the same per-map sync.
pub fn apply(target: &mut Target, plan: &Plan, vtep_ip: Ipv4Addr) -> Result<Report, DatapathError> {
    let mut report = Report {
        networks: plan.networks.len(),
        vteps: plan.vteps.len(),
        endpoints: plan.endpoints.len(),
        local_endpoints: plan.local.len(),
        services: plan.services.len(),
        unresolved: plan.unresolved.clone(),
        ..Default::default()
    };
    let mut tally = |(w, r): (usize, usize)| {
        report.written += w;
        report.removed += r;
    };
    let datapath = match target {
        Target::Kernel(dp) => dp,
        Target::Memory(eps) => {
            tally(eps.sync(&plan.endpoints, vtep_ip)?);
            return Ok(report);
        }
    };
    tally(datapath.maps.networks.sync(&plan.networks)?);
    tally(datapath.sync_vteps(&plan.vteps)?);
    let maps = &mut datapath.maps;
    tally(maps.local_ifaces.sync(&plan.local)?);
    tally(maps.endpoints.sync(&plan.endpoints, vtep_ip)?);
    // Services after endpoints: a backend's endpoint is reachable before traffic goes to it.
    // The reply-side translation is on before the first service exists, off after the last
    // is gone, so no reply of a new flow misses it.
    if !plan.services.is_empty() {
        maps.config.set_services(true)?;
    }
    let lb = maps.lb.sync(&plan.services)?;
    tally((lb.written, lb.removed));
    report.maglev_slots_changed = lb.slots_changed;
    // Rejected for good (table full), not to retry: `rejected`, not `unresolved`.
    for r in lb.rejected {
        warn!("{r}");
        report.rejected.push(r);
    }
    if plan.services.is_empty() {
        maps.config.set_services(false)?;
    }

    let wanted: BTreeSet<u32> = plan.local.iter().map(|l| l.ifindex).collect();
    let attached: BTreeSet<u32> = datapath.attached_containers().into_iter().collect();
    for &ifindex in wanted.difference(&attached) {
        match datapath.attach_container(ifindex) {
            Ok(()) => report.attached += 1,
            Err(e) => warn!(ifindex, "attaching to container interface: {e}"),
        }
    }
    for &ifindex in attached.difference(&wanted) {
        datapath.detach_container(ifindex);
        report.detached += 1;
    }
    if report.written + report.removed + report.attached + report.detached > 0 {
        info!(
            written = report.written,
            removed = report.removed,
            attached = report.attached,
            detached = report.detached,
            endpoints = report.endpoints,
            vteps = report.vteps,
            "reconciled datapath tables"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::ClusterTables;

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
            vtep_ip: "198.18.0.1".parse().unwrap(),
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
            "198.19.1.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    /// A delta pass must leave exactly what a full pass would, whatever the changes.
    #[test]
    fn delta_passes_equal_full_passes() {
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
                r#"{{"version":1,"vtep_ip":"198.18.0.{i}","vtep_mac":"02:00:00:00:00:0{i}","registered_at":0}}"#
            )
        };
        let reserved = |node: &str, mac: u8| {
            format!(
                r#"{{"version":1,"mac":"0a:58:c6:13:01:{mac:02x}","node":"{node}","container_id":"c","host_ifname":""}}"#
            )
        };
        let ep = |node: &str, mac: u8, labels: &str| {
            format!(
                r#"{{"version":1,"mac":"0a:58:c6:13:01:{mac:02x}","node":"{node}","container_id":"c","host_ifname":"ovlx","services":[{labels}]}}"#
            )
        };
        let me = NodeIdentity {
            name: "a".into(),
            vtep_ip: "198.18.0.1".parse().unwrap(),
        };
        let mut view = ClusterView::new(Layout::new("/overlay"));
        view.reset(Vec::new());
        view.apply(kv(
            "networks/red",
            r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#.into(),
        ));
        for (name, i) in [("a", 1), ("b", 2), ("c", 3)] {
            view.apply(kv(&format!("nodes/{name}"), node(i)));
        }
        let mut incremental = Target::Memory(Box::new(EndpointMaps::in_memory()));
        let mut reconciler = Reconciler::new(me.clone());
        let mut deltas = 0;
        // A deterministic mix: puts, moves between nodes, MAC changes and clashes,
        // deletes, a labelled endpoint, an endpoint of an unknown node, garbage.
        let mut x: u32 = 12345;
        for step in 0..400 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let host = 2 + (x >> 8) % 20;
            let key = format!("endpoints/red/198.19.1.{host}");
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
            let report = reconciler
                .delta(&mut incremental, &view, &dirty, |_| Some(9))
                .unwrap();
            let report = match report {
                Some(r) => {
                    deltas += 1;
                    r
                }
                None => reconciler
                    .full(&mut incremental, &view.tables(), |_| Some(9))
                    .unwrap(),
            };
            let mut fresh = Target::Memory(Box::new(EndpointMaps::in_memory()));
            let expected = Reconciler::new(me.clone())
                .full(&mut fresh, &view.tables(), |_| Some(9))
                .unwrap();
            assert_eq!(report.vteps, expected.vteps, "step {step}");
            assert_eq!(report.endpoints, expected.endpoints, "step {step}");
            assert_eq!(
                incremental.endpoints().snapshot(),
                fresh.endpoints().snapshot(),
                "step {step}"
            );
        }
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
        view.apply(put("nodes/a", r#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:01","registered_at":0}"#));
        view.apply(put("nodes/b", r#"{"version":1,"vtep_ip":"198.18.0.2","vtep_mac":"02:00:00:00:00:02","registered_at":0}"#));
        view.apply(put("endpoints/red/198.19.1.5", r#"{"version":1,"mac":"0a:58:00:00:00:05","node":"a","container_id":"c","host_ifname":""}"#));
        let me = NodeIdentity {
            name: "a".into(),
            vtep_ip: "198.18.0.1".parse().unwrap(),
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
}
