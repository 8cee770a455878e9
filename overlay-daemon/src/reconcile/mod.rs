//! Turns the desired cluster tables into the datapath's map contents and container
//! attachments. `plan` is pure (what should be), `apply` makes the kernel match it; the
//! delta pass (`delta`) writes only what a change touched.

mod delta;
mod plan;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::Serialize;
use tracing::{info, warn};

pub use plan::{node_id, plan, table_full, NodeIdentity, Plan, Unresolved, Why};

use crate::{
    datapath::{Datapath, DatapathError},
    maps::{EndpointMaps, LocalIdentity},
    tables::{EndpointIface, NetworkSpec, NodeSpec, Rejection, Subject, ValidTables},
    vtep::Vteps,
};

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
    pub rejected: Vec<Rejection>,
    pub unresolved: Vec<Unresolved>,
    /// Nodes that share no underlay family with this one (IPv4-only and IPv6-only VTEPs):
    /// neither they nor their endpoints are installed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

impl Report {
    /// Why the endpoint (`network`, `ip`) is not installed after this pass, if it is not.
    pub fn not_installed(&self, network: &str, ip: IpAddr) -> Option<String> {
        let rejected = self.rejected.iter().find(|r| {
            matches!(&r.subject, Subject::Endpoint { network: n, ip: i } if n == network && *i == ip)
        });
        if let Some(r) = rejected {
            return Some(r.reason.clone());
        }
        self.unresolved
            .iter()
            .find(|u| u.network == network && u.ip == ip)
            .map(|u| u.to_string())
    }
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
        old: Option<IpAddr>,
        new: Option<IpAddr>,
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
        self.set_shaped(id)?;
        let Target::Kernel(dp) = self else {
            return Ok(0);
        };
        if dp.is_attached(id.ifindex) {
            return Ok(0);
        }
        dp.attach_container(id.ifindex)?;
        Ok(1)
    }

    /// Whether deliveries to a container go through its host-side veth's qdisc (an ingress
    /// limit).
    fn set_shaped(&mut self, id: &LocalIdentity) -> Result<(), DatapathError> {
        let Target::Kernel(dp) = self else {
            return Ok(());
        };
        if dp.maps.shaped.set(id)? {
            dp.maps.config.set_shaped(true)?;
        }
        Ok(())
    }

    /// Removes a container's identity and detaches from its veth. Returns 1 if it detached.
    fn clear_local(&mut self, ifindex: u32) -> Result<usize, DatapathError> {
        let Target::Kernel(dp) = self else {
            return Ok(0);
        };
        dp.maps.local_ifaces.remove(ifindex)?;
        dp.maps.shaped.remove(ifindex)?;
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
    /// VNIs kernel vxlan devices on this node's VXLAN port use, with the device: networks
    /// using them are refused here.
    foreign_vnis: BTreeMap<u32, String>,
}

/// What a delta pass needs from the last full pass.
struct LastFull {
    networks: BTreeMap<String, NetworkSpec>,
    nodes: BTreeMap<String, NodeSpec>,
    /// This node's reserved addresses (no interface yet): valid, not installed, but holding
    /// their MAC, so a clash with them is a clash all the same.
    reserved: BTreeMap<(u32, IpAddr), [u8; 6]>,
    report: Report,
}

impl Reconciler {
    pub fn new(me: NodeIdentity) -> Self {
        Self {
            me,
            last: None,
            foreign_vnis: BTreeMap::new(),
        }
    }

    /// The VNIs other users of the VXLAN port hold (the next pass is a full one).
    pub fn set_foreign_vnis(&mut self, vnis: BTreeMap<u32, String>) {
        self.foreign_vnis = vnis;
        self.last = None;
    }

    /// `tables` without the networks whose VNI another user of the port holds (and their
    /// endpoints and services), each refused with the reason.
    fn without_foreign(&self, tables: &ValidTables) -> Option<ValidTables> {
        let clash = |vni: &u32| self.foreign_vnis.contains_key(vni);
        if !tables.networks.values().any(|n| clash(&n.vni)) {
            return None;
        }
        let mut t = tables.clone();
        let gone: BTreeMap<String, u32> = t
            .networks
            .iter()
            .filter(|(_, n)| clash(&n.vni))
            .map(|(name, n)| (name.clone(), n.vni))
            .collect();
        for (name, vni) in &gone {
            t.networks.remove(name);
            t.rejected.push(Rejection::new(
                Subject::Network(name.clone()),
                format!(
                    "VNI {vni} is used by the kernel vxlan device {} on this node's VXLAN port: give the network another VNI or remove the device",
                    self.foreign_vnis[vni]
                ),
            ));
        }
        t.endpoints.retain(|e| !gone.contains_key(&e.network));
        t.services.retain(|s| !clash(&s.vni));
        Some(t)
    }

    /// Rebuilds every table from `tables`.
    pub fn full(
        &mut self,
        target: &mut Target,
        tables: &ValidTables,
        resolve: impl Fn(&str) -> Option<u32>,
    ) -> Result<Report, DatapathError> {
        self.last = None;
        let filtered = self.without_foreign(tables);
        let tables = filtered.as_ref().unwrap_or(tables);
        let mut plan = plan(tables, &self.me, resolve);
        let eps = target.endpoints();
        let capacity = eps.capacity();
        plan.fit(capacity, |vni, ip| eps.is_installed(vni, ip), tables);
        let mut report = apply(target, &plan, &self.me.vteps)?;
        // A datapath migrating from another layout takes over now that its maps are full.
        if let Target::Kernel(dp) = target {
            dp.commit()?;
        }
        // Attachments that failed are retried like a missing interface.
        let failed = std::mem::take(&mut report.attach_failed);
        report
            .report
            .unresolved
            .extend(failed.into_iter().map(|(id, e)| Unresolved {
                network: tables.network_of_vni(id.vni).unwrap_or_default(),
                ip: id.key_ip(),
                why: Why::AttachFailed(e),
            }));
        let mut report = report.report;
        report
            .rejected
            .splice(0..0, tables.rejected.iter().cloned());
        report.rejected.extend(plan.rejected);
        if !plan.unreachable.is_empty() {
            warn!(nodes = ?plan.unreachable, vteps = %self.me.vteps, "nodes with no VTEP of this node's families: they and their endpoints cannot be reached; give this node a VTEP of their family (--vtep-ip)");
        }
        report.unreachable = plan.unreachable;
        let reserved = tables
            .endpoints
            .iter()
            .filter(|ep| ep.node == self.me.name && !matches!(ep.iface, EndpointIface::Veth(_)))
            .filter_map(|ep| {
                let vni = tables.networks.get(&ep.network)?.vni;
                Some(((vni, ep.key_ip()), ep.mac().0))
            })
            .collect();
        self.last = Some(LastFull {
            networks: tables.networks.clone(),
            nodes: tables.nodes.clone(),
            reserved,
            report: report.clone(),
        });
        Ok(report)
    }

    /// Forget the last full pass (after a failure), so the next pass is a full one.
    pub fn invalidate(&mut self) {
        self.last = None;
    }
}

/// A report and the container attachments that failed.
struct Applied {
    report: Report,
    attach_failed: Vec<(LocalIdentity, String)>,
}

/// Makes the maps and container attachments equal to `plan`. Additions go in before the
/// endpoints that need them; removals are done by the same per-map sync.
fn apply(target: &mut Target, plan: &Plan, vteps: &Vteps) -> Result<Applied, DatapathError> {
    let mut report = Report {
        networks: plan.networks.len(),
        vteps: plan.vteps.len(),
        endpoints: plan.endpoints.len(),
        local_endpoints: plan.local.len(),
        services: plan.services.len(),
        unresolved: plan.unresolved.clone(),
        ..Default::default()
    };
    let mut attach_failed = Vec::new();
    let mut tally = |(w, r): (usize, usize)| {
        report.written += w;
        report.removed += r;
    };
    let datapath = match target {
        Target::Kernel(dp) => dp,
        Target::Memory(eps) => {
            tally(eps.sync(&plan.endpoints, vteps)?);
            return Ok(Applied {
                report,
                attach_failed,
            });
        }
    };
    tally(datapath.maps.networks.sync(&plan.networks)?);
    tally(datapath.sync_vteps(&plan.vteps)?);
    let maps = &mut datapath.maps;
    tally(maps.local_ifaces.sync(&plan.local)?);
    let (shaped, any) = maps.shaped.sync(&plan.local)?;
    tally(shaped);
    maps.config.set_shaped(any)?;
    tally(maps.endpoints.sync(&plan.endpoints, vteps)?);
    // Services after endpoints: a backend's endpoint is reachable before traffic goes to it.
    // The reply-side translation is on before the first service exists, off after the last
    // is gone, so no reply of a new flow misses it.
    let services = &plan.services;
    let maps = &mut datapath.maps;
    let per_packet = !services.is_empty();
    if per_packet {
        maps.config.set_services(true)?;
    }
    let lb = maps.lb.sync(services)?;
    tally((lb.written, lb.removed));
    report.maglev_slots_changed = lb.slots_changed;
    report.services = services.len().saturating_sub(lb.rejected.len());
    // Rejected for good (table full), not to retry: `rejected`, not `unresolved`.
    for r in lb.rejected {
        warn!("{r}");
        report.rejected.push(r);
    }
    if !per_packet {
        maps.config.set_services(false)?;
    }
    // Sockets balanced to a backend that left are closed, not left to time out.
    if datapath.socket_lb() && !lb.ended.is_empty() {
        match datapath.maps.sock.balanced_to(&lb.ended) {
            Ok(sockets) => datapath.sockets.close(&sockets),
            Err(e) => warn!("finding sockets of removed backends: {e}"),
        }
    }

    let wanted: BTreeSet<u32> = plan.local.iter().map(|l| l.ifindex).collect();
    let attached: BTreeSet<u32> = datapath.attached_containers().into_iter().collect();
    for id in plan.local.iter().filter(|l| !attached.contains(&l.ifindex)) {
        match datapath.attach_container(id.ifindex) {
            Ok(()) => report.attached += 1,
            Err(e) => {
                warn!(
                    ifindex = id.ifindex,
                    "attaching to container interface: {e}"
                );
                attach_failed.push((*id, e.to_string()));
            }
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
    Ok(Applied {
        report,
        attach_failed,
    })
}
