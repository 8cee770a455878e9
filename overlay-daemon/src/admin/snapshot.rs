//! What an operator sees of each object: one read of the overlay's keys (one revision), and
//! a view per network, node, endpoint and service with everything known about it. `ls`
//! prints the same objects as `inspect`, so a script reads either.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use overlay_api::{Attachment, Pod};
use serde::Serialize;

use super::AdminError;
use crate::{
    store::{
        keys::Key,
        records::{
            self, BlockRecord, Endpoint6Record, EndpointInfoRecord, EndpointRecord, NetworkRecord,
            NodeRecord, ServiceRecord,
        },
        ClusterView, Store,
    },
    tables::{BackendSpec, EndpointIface, Proto, Subject, ValidTables},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkView {
    pub name: String,
    pub vni: u32,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub block_len: Option<u8>,
    pub block_len6: Option<u8>,
    /// The MTU its containers get; null: each node's maximum (its underlay MTU - 50).
    pub mtu: Option<u32>,
    /// Where services without an explicit VIP get theirs, per family.
    pub service_range: Option<Ipv4Net>,
    pub service_range6: Option<Ipv6Net>,
    pub endpoints: usize,
    /// The address blocks nodes hold, and which node holds each.
    pub blocks: Vec<BlockView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockView {
    pub block: IpNet,
    pub node: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtep_ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtep_ip6: Option<std::net::Ipv6Addr>,
    pub vtep_mac: String,
    /// The release of its daemon; null: before 0.2, which did not say.
    pub release: Option<String>,
    /// Seconds since the epoch when its daemon registered.
    pub registered_at: u64,
    /// Its etcd lease, in hex as etcdctl prints lease ids.
    pub lease: String,
    /// Seconds left on the lease; null: the lease is gone (or could not be read).
    pub lease_ttl: Option<i64>,
    /// The largest MTU its containers can have.
    pub container_mtu: Option<u32>,
    pub endpoints: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    pub network: String,
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    pub mac: String,
    pub node: String,
    pub container_id: String,
    pub ifname: String,
    /// The host side of its veth; null while the address is only reserved (Docker's IPAM
    /// asks before the endpoint exists).
    pub host_ifname: Option<String>,
    pub pod: Option<Pod>,
    /// The Docker endpoint id of a Docker container's endpoint (`docker network inspect`
    /// lists it by container).
    pub docker_endpoint: Option<String>,
    /// Services it is a backend of by label (`NAME:PORT`).
    pub services: Vec<String>,
    /// Its bandwidth limits, if it has any.
    pub bandwidth: Option<overlay_api::Bandwidth>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub network: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    /// The VIP was taken from the network's service range.
    pub allocated: bool,
    /// Why the daemons leave it out; null: it is balanced.
    pub rejected: Option<String>,
    /// The backends given by `--backend`, each with whether it takes connections now.
    pub configured: Vec<BackendState>,
    /// What the datapath balances over now: live configured backends and labelled
    /// endpoints.
    pub backends: Vec<BackendSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendState {
    pub ip: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub live: bool,
    /// Why it is not live; null when it is.
    pub reason: Option<String>,
}

/// Which endpoints `endpoint ls` shows.
#[derive(Clone, Debug, Default)]
pub struct EndpointFilter {
    pub network: Option<String>,
    pub node: Option<String>,
}

/// Every record of the overlay, read at one revision.
pub struct Snapshot {
    networks: BTreeMap<String, NetworkRecord>,
    nodes: BTreeMap<String, (NodeRecord, i64)>,
    blocks: Vec<(String, IpNet, String)>,
    endpoints: Vec<(String, IpAddr, EndpointRecord)>,
    info: BTreeMap<(String, IpAddr), EndpointInfoRecord>,
    ip6_of: BTreeMap<(String, Ipv4Addr), Ipv6Addr>,
    services: BTreeMap<String, ServiceRecord>,
    /// What the daemons make of the records (the same validation).
    tables: ValidTables,
    ttl: BTreeMap<i64, i64>,
}

impl Snapshot {
    pub async fn load(store: &Store) -> Result<Self, AdminError> {
        let (kvs, _) = store.list(store.layout.root()).await?;
        let mut view = ClusterView::new(store.layout.clone());
        view.reset(kvs.clone());
        let mut this = Self::from_parts(
            &store.layout,
            kvs.iter().map(|kv| (&kv.key, &kv.value[..], kv.lease)),
            view.tables(),
        );
        for (_, lease) in this.nodes.values() {
            if let Ok(ttl @ 0..) = store.lease_time_left(*lease).await {
                this.ttl.insert(*lease, ttl);
            }
        }
        Ok(this)
    }

    /// The snapshot of these keys (undecodable records are left out, as the daemons skip
    /// them).
    pub fn from_parts<'a>(
        layout: &crate::store::Layout,
        kvs: impl Iterator<Item = (&'a String, &'a [u8], i64)>,
        tables: ValidTables,
    ) -> Self {
        let mut this = Self {
            networks: BTreeMap::new(),
            nodes: BTreeMap::new(),
            blocks: Vec::new(),
            endpoints: Vec::new(),
            info: BTreeMap::new(),
            ip6_of: BTreeMap::new(),
            services: BTreeMap::new(),
            tables,
            ttl: BTreeMap::new(),
        };
        for (key, value, lease) in kvs {
            match layout.parse(key) {
                Some(Key::Network(n)) => {
                    if let Ok(r) = records::decode(value) {
                        this.networks.insert(n, r);
                    }
                }
                Some(Key::Node(n)) => {
                    if let Ok(r) = records::decode(value) {
                        this.nodes.insert(n, (r, lease));
                    }
                }
                Some(Key::Block { network, block }) => {
                    if let Ok(r) = records::decode::<BlockRecord>(value) {
                        this.blocks.push((network, block, r.node));
                    }
                }
                Some(Key::Endpoint { network, ip }) => {
                    if let Ok(r) = records::decode(value) {
                        this.endpoints.push((network, ip, r));
                    }
                }
                Some(Key::EndpointInfo { network, ip }) => {
                    if let Ok(r) = records::decode(value) {
                        this.info.insert((network, ip), r);
                    }
                }
                Some(Key::Endpoint6 { network, ip6 }) => {
                    if let Ok(r) = records::decode::<Endpoint6Record>(value) {
                        this.ip6_of.insert((network, r.ip), ip6);
                    }
                }
                Some(Key::Service(n)) => {
                    if let Ok(r) = records::decode(value) {
                        this.services.insert(n, r);
                    }
                }
                _ => {}
            }
        }
        this
    }

    pub fn networks(&self) -> Vec<NetworkView> {
        self.networks
            .iter()
            .map(|(name, n)| NetworkView {
                name: name.clone(),
                vni: n.vni,
                subnet: n.subnet,
                gateway: n.gateway_ip(),
                subnet6: n.ipv6().map(|v| v.subnet),
                gateway6: n.ipv6().map(|v| v.gateway),
                block_len: n.subnet.map(|_| n.block_len),
                block_len6: n.ipv6().map(|v| v.block_len),
                mtu: n.mtu,
                service_range: n.service_range,
                service_range6: n.service_range6,
                endpoints: self
                    .endpoints
                    .iter()
                    .filter(|(net, _, _)| net == name)
                    .count(),
                blocks: self
                    .blocks
                    .iter()
                    .filter(|(net, _, _)| net == name)
                    .map(|(_, block, node)| BlockView {
                        block: *block,
                        node: node.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    pub fn network(&self, name: &str) -> Result<NetworkView, AdminError> {
        self.networks()
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| AdminError::NoSuchNetwork(name.to_owned()))
    }

    pub fn nodes(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(name, (n, lease))| NodeView {
                name: name.clone(),
                vtep_ip: n.vtep_ip,
                vtep_ip6: n.vtep_ip6,
                vtep_mac: n.vtep_mac.to_string(),
                release: n.release.clone(),
                registered_at: n.registered_at,
                lease: format!("{lease:x}"),
                lease_ttl: self.ttl.get(lease).copied(),
                container_mtu: n.container_mtu,
                endpoints: self
                    .endpoints
                    .iter()
                    .filter(|(_, _, e)| &e.node == name)
                    .count(),
            })
            .collect()
    }

    pub fn node(&self, name: &str) -> Result<NodeView, AdminError> {
        self.nodes()
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| AdminError::NoSuchNode(name.to_owned()))
    }

    /// The endpoints the filter selects; a filter naming no network or node is an error, not
    /// an empty list.
    pub fn endpoints(&self, filter: &EndpointFilter) -> Result<Vec<EndpointView>, AdminError> {
        if let Some(n) = &filter.network {
            if !self.networks.contains_key(n) {
                return Err(AdminError::NoSuchNetwork(n.clone()));
            }
        }
        if let Some(n) = &filter.node {
            let known =
                self.nodes.contains_key(n) || self.endpoints.iter().any(|(_, _, e)| &e.node == n);
            if !known {
                return Err(AdminError::NoSuchNode(n.clone()));
            }
        }
        Ok(self
            .endpoints
            .iter()
            .filter(|(net, _, e)| {
                filter.network.as_ref().is_none_or(|n| n == net)
                    && filter.node.as_ref().is_none_or(|n| n == &e.node)
            })
            .map(|(network, ip, e)| {
                // What an earlier endpoint of the address left is not this one's.
                let info = self
                    .info
                    .get(&(network.clone(), *ip))
                    .filter(|i| i.container_id == e.container_id);
                let (ip, ip6) = match ip {
                    IpAddr::V4(ip) => {
                        (Some(*ip), self.ip6_of.get(&(network.clone(), *ip)).copied())
                    }
                    // An IPv6-only network's endpoint: named by its IPv6 address.
                    IpAddr::V6(ip6) => (None, Some(*ip6)),
                };
                EndpointView {
                    network: network.clone(),
                    ip,
                    ip6,
                    mac: e.mac.to_string(),
                    node: e.node.clone(),
                    container_id: e.container_id.clone(),
                    ifname: e.ifname.clone(),
                    host_ifname: match &e.attachment {
                        Attachment::Reserved => None,
                        Attachment::Veth { host_ifname } => Some(host_ifname.clone()),
                    },
                    pod: info.and_then(|i| i.pod.clone()),
                    docker_endpoint: info.and_then(|i| i.docker_endpoint.clone()),
                    services: e.services.clone(),
                    bandwidth: info.and_then(|i| i.bandwidth),
                }
            })
            .collect())
    }

    /// One endpoint: by address, container id, `CONTAINER/IFNAME`, or Docker endpoint id
    /// (its first 12 characters or more), within `network` if given. Several matches are an error that says how to pick one.
    pub fn endpoint(&self, id: &str, network: Option<&str>) -> Result<EndpointView, AdminError> {
        let filter = EndpointFilter {
            network: network.map(str::to_owned),
            node: None,
        };
        let ip: Option<IpAddr> = id.parse().ok();
        let mut found: Vec<EndpointView> = self
            .endpoints(&filter)?
            .into_iter()
            .filter(|e| match ip {
                Some(IpAddr::V4(ip)) => e.ip == Some(ip),
                Some(IpAddr::V6(ip6)) => e.ip6 == Some(ip6),
                None => {
                    e.container_id == id
                        || format!("{}/{}", e.container_id, e.ifname) == id
                        || e.docker_endpoint.as_ref().is_some_and(|d| {
                            // As `endpoint ls` shows it (`docker:<id>`) or as Docker does.
                            let id = id.strip_prefix("docker:").unwrap_or(id);
                            d.starts_with(id) && id.len() >= 12
                        })
                }
            })
            .collect();
        match found.len() {
            0 => Err(AdminError::NoSuchEndpoint(match network {
                Some(n) => format!("{id:?} in network {n:?}"),
                None => format!("{id:?}"),
            })),
            1 => Ok(found.remove(0)),
            n => Err(super::invalid(format!(
                "{id:?} matches {n} endpoints ({}): give --network, or CONTAINER/IFNAME",
                found
                    .iter()
                    .map(|e| format!("{}/{} in {}", e.container_id, e.ifname, e.network))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The services (of `network`, if given), with why each one or each configured backend
    /// is left out. `local` are the refusals of this host's daemon (`service "NAME": why`).
    pub fn services(
        &self,
        network: Option<&str>,
        local: &[String],
    ) -> Result<Vec<ServiceView>, AdminError> {
        if let Some(n) = network {
            if !self.networks.contains_key(n) {
                return Err(AdminError::NoSuchNetwork(n.to_owned()));
            }
        }
        Ok(self
            .services
            .iter()
            .filter(|(_, s)| network.is_none_or(|n| n == s.network))
            .map(|(name, s)| self.service_view(name, s, local))
            .collect())
    }

    pub fn service(&self, name: &str, local: &[String]) -> Result<ServiceView, AdminError> {
        let s = self
            .services
            .get(name)
            .ok_or_else(|| AdminError::NoSuchService(name.to_owned()))?;
        Ok(self.service_view(name, s, local))
    }

    fn service_view(&self, name: &str, s: &ServiceRecord, local: &[String]) -> ServiceView {
        // Refused cluster-wide (the record), else by this host's daemon, whose API says it
        // in the one-line form `service "NAME": why`.
        let subject = format!("service {name:?}: ");
        let rejected = self
            .tables
            .rejected
            .iter()
            .find(|r| matches!(&r.subject, Subject::Service(n) if n == name))
            .map(|r| r.reason.clone())
            .or_else(|| {
                local
                    .iter()
                    .find_map(|r| r.strip_prefix(&subject).map(str::to_owned))
            });
        let backends = self
            .tables
            .services
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.backends.clone())
            .unwrap_or_default();
        let configured = s
            .backends
            .iter()
            .map(|b| {
                let reason = self.not_live(s, b, &backends);
                BackendState {
                    ip: b.ip,
                    port: b.port,
                    weight: b.weight,
                    live: reason.is_none(),
                    reason,
                }
            })
            .collect();
        ServiceView {
            name: name.to_owned(),
            network: s.network.clone(),
            vip: s.vip,
            port: s.port,
            proto: s.proto,
            allocated: s.allocated,
            rejected,
            configured,
            backends,
        }
    }

    /// Why a configured backend takes no connections, in the order the daemons decide it.
    fn not_live(&self, s: &ServiceRecord, b: &BackendSpec, live: &[BackendSpec]) -> Option<String> {
        if live.iter().any(|l| l.ip == b.ip && l.port == b.port) {
            return None;
        }
        if b.weight == 0 {
            return Some("weight 0: drained".into());
        }
        let has = |ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>| match b.ip {
            IpAddr::V4(v4) => ip == Some(v4),
            IpAddr::V6(v6) => ip6 == Some(v6),
        };
        let valid = self
            .tables
            .endpoints
            .iter()
            .find(|e| e.network == s.network && has(e.ip, e.ip6));
        if let Some(e) = valid {
            return Some(match e.iface {
                EndpointIface::Reserved => {
                    "its address is reserved, but no container has it yet".into()
                }
                _ => "the service is not balanced (see rejected)".into(),
            });
        }
        // The raw records (no views built: this runs per configured backend).
        let recorded = self.endpoints.iter().find(|(net, ip, _)| {
            *net == s.network
                && match *ip {
                    IpAddr::V4(v4) => has(Some(v4), self.ip6_of.get(&(net.clone(), v4)).copied()),
                    IpAddr::V6(v6) => has(None, Some(v6)),
                }
        });
        Some(match recorded {
            Some((_, _, e)) if !self.nodes.contains_key(&e.node) => {
                format!("its endpoint's node {:?} is not registered (down?)", e.node)
            }
            Some(_) => "its endpoint is refused by the daemons (see `overlayctl status`)".into(),
            None => format!("no endpoint of network {:?} has this address", s.network),
        })
    }
}

#[cfg(test)]
mod tests;
