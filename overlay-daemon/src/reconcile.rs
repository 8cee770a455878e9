//! Turns the desired cluster tables into the datapath's map contents and container
//! attachments. `plan` is pure (what should be), `apply` makes the kernel match it.

use std::{collections::BTreeSet, net::Ipv4Addr};

use serde::Serialize;
use tracing::{info, warn};

use crate::{
    datapath::{Datapath, DatapathError},
    maps::{EndpointEntry, LocalIdentity, Location, NetworkEntry, ServiceEntry},
    tables::{MacAddr, ValidTables},
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

/// Makes the maps and container attachments equal to `plan`. Additions go in before the
/// endpoints that need them; removals are done by the same per-map sync.
pub fn apply(
    datapath: &mut Datapath,
    plan: &Plan,
    vtep_ip: Ipv4Addr,
) -> Result<Report, DatapathError> {
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
    let maps = &mut datapath.maps;
    tally(maps.networks.sync(&plan.networks)?);
    tally(maps.vteps.sync(plan.vteps.iter().copied())?);
    tally(maps.local_ifaces.sync(&plan.local)?);
    tally(maps.endpoints.sync(&plan.endpoints, vtep_ip)?);
    // Services after endpoints: a backend's endpoint is reachable before traffic goes to it.
    let lb = maps.lb.sync(&plan.services)?;
    tally((lb.written, lb.removed));
    report.maglev_slots_changed = lb.slots_changed;
    for r in lb.rejected {
        warn!("{r}");
        report.unresolved.push(r);
    }
    maps.config.set_services(!plan.services.is_empty())?;

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

    #[test]
    fn node_ids_are_stable() {
        assert_eq!(node_id("a"), node_id("a"));
        assert_ne!(node_id("host-1"), node_id("host-2"));
    }
}
