//! What the maps should hold, from validated tables: pure, no kernel involved.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use serde::Serialize;

use crate::{
    maps::{EndpointEntry, LocalIdentity, Location, NetworkEntry, ServiceEntry},
    tables::{EndpointIface, MacAddr, Rejection, Subject, ValidTables},
    vtep::Vteps,
};

/// This node as the reconciler sees it.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub vteps: Vteps,
}

/// A local endpoint that is not installed yet, retried on every tick: its interface is not
/// there (a runtime may create it after the tables name it), or attaching to it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub network: String,
    /// The endpoint's key address.
    pub ip: IpAddr,
    pub why: Why,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// No interface of this name on the host.
    NoInterface(String),
    /// The tables name no host interface for it.
    Unnamed,
    /// The from-container program could not be attached.
    AttachFailed(String),
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.ip;
        match &self.why {
            Why::NoInterface(name) => write!(f, "local endpoint {ip}: interface {name} not found"),
            Why::Unnamed => write!(
                f,
                "local endpoint {ip}: the tables name no host_ifname for it"
            ),
            Why::AttachFailed(e) => write!(
                f,
                "local endpoint {ip}: attaching the datapath to its interface failed: {e}"
            ),
        }
    }
}

impl Serialize for Unresolved {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub networks: Vec<NetworkEntry>,
    /// Remote VTEPs (each at the address this node reaches it by) with their stable node ids.
    pub vteps: Vec<(IpAddr, u32)>,
    /// Nodes this one shares no underlay family with (an IPv6-only node and an IPv4-only
    /// one): neither their VTEP nor their endpoints are installed.
    pub unreachable: Vec<String>,
    pub endpoints: Vec<EndpointEntry>,
    pub local: Vec<LocalIdentity>,
    /// Every service of every network: each node balances for its own clients.
    pub services: Vec<ServiceEntry>,
    /// Local endpoints that cannot be installed yet.
    pub unresolved: Vec<Unresolved>,
    /// Endpoints left out because the endpoint table is full.
    pub rejected: Vec<Rejection>,
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
            gateway_ip6: net.gateway_ip6(),
        });
    }
    for node in tables.nodes.values() {
        if node.name != me.name {
            match me.vteps.toward(&node.vteps()) {
                Some(ip) => plan.vteps.push((ip, node_id(&node.name))),
                None => plan.unreachable.push(node.name.clone()),
            }
        }
    }
    for svc in &tables.services {
        plan.services.push(ServiceEntry {
            name: svc.name.clone(),
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
            let ifname = match &ep.iface {
                // Reserved for a runtime that has not made its endpoint (Docker's IPAM asks
                // first): nothing to install here until it does.
                EndpointIface::Reserved => continue,
                EndpointIface::Veth(name) => name,
                EndpointIface::Unnamed => {
                    plan.unresolved.push(Unresolved {
                        network: ep.network.clone(),
                        ip: ep.key_ip(),
                        why: Why::Unnamed,
                    });
                    continue;
                }
            };
            let Some(ifindex) = resolve(ifname) else {
                plan.unresolved.push(Unresolved {
                    network: ep.network.clone(),
                    ip: ep.key_ip(),
                    why: Why::NoInterface(ifname.clone()),
                });
                continue;
            };
            plan.local.push(LocalIdentity {
                ifindex,
                vni: net.vni,
                ip: ep.ip,
                mac: ep.mac().0,
                ip6: ep.ip6,
                bandwidth: ep.bandwidth,
            });
            Location::Local { ifindex }
        } else {
            let Some(vtep) = me.vteps.toward(&node.vteps()) else {
                continue;
            };
            Location::Remote { vtep }
        };
        plan.endpoints.push(EndpointEntry {
            vni: net.vni,
            ip: ep.ip,
            mac: ep.mac().0,
            location,
            ip6: ep.ip6,
        });
    }
    plan
}

/// The reason an endpoint that does not fit is left out.
pub fn table_full(capacity: usize) -> String {
    format!(
        "the datapath's endpoint table is full ({capacity} entries): remove endpoints, or \
         restart overlayd with a larger --max-endpoints after `overlayd cleanup`"
    )
}

impl Plan {
    /// Leaves out the endpoints beyond `capacity`: those already installed keep their place,
    /// new ones get what is left in table order, the rest are rejected (and their local
    /// identity is not installed either).
    pub fn fit(
        &mut self,
        capacity: usize,
        installed: impl Fn(u32, IpAddr) -> bool,
        tables: &ValidTables,
    ) {
        if self.endpoints.len() <= capacity {
            return;
        }
        let kept_old = self
            .endpoints
            .iter()
            .filter(|e| installed(e.vni, e.key_ip()))
            .count();
        let mut room = capacity.saturating_sub(kept_old);
        let mut dropped = BTreeSet::new();
        self.endpoints.retain(|e| {
            if installed(e.vni, e.key_ip()) {
                return true;
            }
            if room > 0 {
                room -= 1;
                return true;
            }
            dropped.insert((e.vni, e.key_ip()));
            false
        });
        self.local
            .retain(|l| !dropped.contains(&(l.vni, l.key_ip())));
        let reason = table_full(capacity);
        for (vni, ip) in dropped {
            let network = tables.network_of_vni(vni).unwrap_or_default();
            self.rejected.push(Rejection::new(
                Subject::Endpoint { network, ip },
                reason.clone(),
            ));
        }
    }
}
