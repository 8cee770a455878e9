//! The delta pass: writes only the endpoints (and endpoint-less nodes) a change touched, as
//! a full pass would place them, or gives up so that a full pass runs.

use overlay_common::maps::ENDPOINT_F_LOCAL;
use tracing::debug;

use super::{node_id, Reconciler, Report, Target, Unresolved, Why};
use crate::{
    datapath::DatapathError,
    maps::{EndpointEntry, LocalIdentity, Location},
    store::{view::Dirty, ClusterView},
    tables::{endpoint_problem, EndpointIface, NodeSpec, Rejection},
};

impl Reconciler {
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
        // Endpoints whose interface was missing are looked at again with the changed ones
        // (a new container's key arrives from etcd before its veth exists: no full pass for
        // that). Any other unresolved endpoint needs a full pass.
        if last.report.rejected.iter().any(Rejection::blocks_delta)
            || last
                .report
                .unresolved
                .iter()
                .any(|u| !matches!(u.why, Why::NoInterface(_)))
        {
            return Ok(None);
        }
        // Nodes without endpoints that joined, left or moved: only their VTEP changes.
        for name in &dirty.nodes {
            if *name == self.me.name {
                return Ok(None);
            }
            let me = self.me.vteps;
            let new = view.node(name).and_then(|r| r.vteps());
            let old = last.nodes.get(name).map(|n| n.vteps());
            if old == new {
                continue;
            }
            if let Some(vteps) = new {
                if last
                    .nodes
                    .values()
                    .any(|n| n.name != *name && vteps.addrs().any(|ip| n.vteps().has(ip)))
                {
                    return Ok(None); // a VTEP clash: a full pass rejects one of them
                }
            }
            // A node reached in no family keeps its place in the tables, with no VTEP.
            let reach = |v: Option<crate::vtep::Vteps>| v.and_then(|v| me.toward(&v));
            target.set_vtep(reach(old), reach(new), node_id(name))?;
            match new {
                Some(vteps) => {
                    last.nodes
                        .insert(name.clone(), NodeSpec::new(name.clone(), vteps));
                }
                None => {
                    last.nodes.remove(name);
                }
            }
            let peers = last.nodes.values().filter(|n| n.name != self.me.name);
            let (reached, unreachable): (Vec<_>, Vec<_>) =
                peers.partition(|n| me.toward(&n.vteps()).is_some());
            last.report.vteps = reached.len();
            last.report.unreachable = unreachable.iter().map(|n| n.name.clone()).collect();
        }
        let mut changed = dirty.endpoints.clone();
        changed.extend(
            last.report
                .unresolved
                .iter()
                .map(|u| (u.network.clone(), u.ip)),
        );

        let local_vtep = self.me.vteps;
        let mut report = Report {
            attached: 0,
            detached: 0,
            // Every endpoint unresolved before is in `changed`: found again below if still.
            unresolved: Vec::new(),
            ..last.report.clone()
        };
        let (mut written, mut removed) = (0, 0);
        for (network, key_ip) in &changed {
            let key_ip = *key_ip;
            let Some(net) = last.networks.get(network) else {
                if view.endpoint(network, key_ip).is_some() {
                    return Ok(None); // rejected: no such network
                }
                continue;
            };
            let spec = view.endpoint(network, key_ip);
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
                        .any(|(&(vni, other), m)| vni == net.vni && *m == mac && other != key_ip);
                    let eps = target.endpoints();
                    if held_by_reserved
                        || eps.mac_held_by_other(net.vni, mac, key_ip)
                        || ep
                            .ip6
                            .is_some_and(|ip6| eps.ip6_held_by_other(net.vni, ip6, key_ip))
                    {
                        return Ok(None);
                    }
                    let location = if ep.node == self.me.name {
                        match &ep.iface {
                            // Reserved: nothing to install on its own node.
                            EndpointIface::Reserved => None,
                            EndpointIface::Veth(ifname) => match resolve(ifname) {
                                Some(ifindex) => Some(Location::Local { ifindex }),
                                // Not installed, as a full pass would leave it.
                                None => {
                                    report.unresolved.push(Unresolved {
                                        network: network.clone(),
                                        ip: key_ip,
                                        why: Why::NoInterface(ifname.clone()),
                                    });
                                    None
                                }
                            },
                            EndpointIface::Unnamed => return Ok(None),
                        }
                    } else {
                        // None: a node reached in no family, whose endpoints are left out.
                        self.me
                            .vteps
                            .toward(&last.nodes[&ep.node].vteps())
                            .map(|vtep| Location::Remote { vtep })
                    };
                    location.map(|location| EndpointEntry {
                        vni: net.vni,
                        ip: ep.ip,
                        mac,
                        location,
                        ip6: ep.ip6,
                    })
                }
            };
            match &spec {
                Some(ep) if ep.node == self.me.name && ep.iface == EndpointIface::Reserved => {
                    last.reserved.insert((net.vni, key_ip), ep.mac().0);
                }
                _ => {
                    last.reserved.remove(&(net.vni, key_ip));
                }
            }
            let (installed, installed_ip6) =
                match target.endpoints().installed_by_key(net.vni, key_ip) {
                    Some((info, ip6)) => (Some(info), ip6),
                    None => (None, None),
                };
            // A new entry in a full table: a full pass decides which endpoints stay.
            if installed.is_none()
                && desired.is_some()
                && target.endpoints().len_installed() >= target.endpoints().capacity()
            {
                return Ok(None);
            }
            // A local endpoint that goes or changes: its container identity goes first.
            if let Some(old) = installed.filter(|e| e.flags & ENDPOINT_F_LOCAL != 0) {
                let same = desired.is_some_and(|d| {
                    d.location
                        == Location::Local {
                            ifindex: old.ifindex,
                        }
                        && d.mac == old.mac
                        && d.ip6 == installed_ip6
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
                        .remove(net.vni, key_ip)
                        .map_err(DatapathError::from)?;
                }
                Some(entry) => {
                    if let Location::Local { ifindex } = entry.location {
                        let fresh = installed.is_none_or(|old| {
                            old.flags & ENDPOINT_F_LOCAL == 0
                                || old.ifindex != ifindex
                                || old.mac != entry.mac
                                || installed_ip6 != entry.ip6
                        });
                        let id = LocalIdentity {
                            ifindex,
                            vni: net.vni,
                            ip: entry.ip,
                            mac: entry.mac,
                            ip6: entry.ip6,
                            bandwidth: spec.as_ref().and_then(|s| s.bandwidth),
                        };
                        if fresh {
                            report.attached += target.set_local(&id)?;
                            report.local_endpoints += 1;
                        } else {
                            // Its limits may be what changed (they come in their own key).
                            target.set_shaped(&id)?;
                        }
                    }
                    let (w, r) = target
                        .endpoints()
                        .upsert(&entry, &local_vtep)
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
            last.report.unresolved = report.unresolved.clone();
        }

        debug!(
            written,
            removed,
            changed = changed.len(),
            "endpoint changes written"
        );
        Ok(Some(report))
    }
}
