//! The cluster as this node last saw it in etcd: filled by a listing, kept current by watch
//! events, turned into the tables the reconciler installs. Entries that do not decode are
//! skipped and logged once, and never reach the datapath.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use tracing::warn;

use super::{
    claims6::{carries_ipv6, Claims6},
    limits::Limits,
    names::Names,
};
pub use dns::DnsDirty;

#[path = "view_dns.rs"]
mod dns;

use super::{
    client::{Change, Kv},
    keys::{Key, Layout},
    records::{
        self, BlockRecord, Endpoint6Record, EndpointInfoRecord, EndpointRecord, NetworkRecord,
        NodeRecord, ServiceRecord,
    },
};
use crate::tables::{
    ClusterTables, EndpointIface, EndpointSpec, NetworkSpec, NodeSpec, ServiceSpec, ValidTables,
};

/// Longest reason (or key) kept and logged for a skipped entry.
const MAX_REASON: usize = 200;

fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Network(NetworkRecord),
    Node { record: NodeRecord, lease: i64 },
    Block(BlockRecord),
    Endpoint(ViewEndpoint),
    Endpoint6(Endpoint6Record),
    Service(ServiceRecord),
}

/// What the view keeps of an endpoint record: only what the tables need, with the node name
/// shared. Every node holds every endpoint of the cluster, so this is most of a daemon's
/// memory at 100k endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewEndpoint {
    pub mac: crate::tables::MacAddr,
    pub node: Arc<str>,
    pub attachment: overlay_api::Attachment,
    pub services: Box<[String]>,
    /// Its container, as a tag (`names::container_tag`): whose name it answers to.
    pub container: u64,
}

/// What changed since the reconciler last took the changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Networks, nodes, services or service backends changed: every table must be rebuilt.
    pub full: bool,
    /// Endpoints put or deleted that are nobody's service backend: only their own entries
    /// change.
    pub endpoints: BTreeSet<(String, IpAddr)>,
    /// Nodes that joined, left or changed while holding no endpoints: only their VTEP
    /// changes.
    pub nodes: BTreeSet<String>,
}

#[derive(Clone, Debug)]
pub struct ClusterView {
    layout: Layout,
    entries: BTreeMap<Key, Entry>,
    /// Keys under the prefix that were skipped, with the reason.
    pub rejected: BTreeMap<String, String>,
    dirty: Dirty,
    /// (network, IP) of every backend a service names explicitly, so an endpoint change can
    /// tell whether it touches a service without scanning all entries.
    service_backends: BTreeSet<(String, IpAddr)>,
    /// Networks where a service names an IPv6 backend: any endpoint change there (its IPv6
    /// claim names it by its IPv4 address) recomputes the services.
    v6_backend_networks: BTreeSet<String>,
    /// Inside `reset`: everything is dirty anyway.
    bulk: bool,
    /// The etcd revision the view is current to.
    pub revision: i64,
    /// Endpoints per node; its keys are the node names the endpoints share.
    per_node: HashMap<Arc<str>, usize>,
    /// The `endpoints6` keys by the endpoint they name.
    ip6_of: Claims6,
    /// The names runtimes gave endpoints: what DNS serves.
    names: Names,
    /// Endpoints' bandwidth limits.
    limits: Limits,
    /// What changed for DNS, once DNS follows the view (`follow_dns`).
    dns_dirty: Option<DnsDirty>,
}

impl ClusterView {
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            entries: BTreeMap::new(),
            rejected: BTreeMap::new(),
            dirty: Dirty::default(),
            service_backends: BTreeSet::new(),
            v6_backend_networks: BTreeSet::new(),
            bulk: false,
            revision: 0,
            per_node: HashMap::new(),
            ip6_of: Claims6::default(),
            names: Names::default(),
            limits: Limits::default(),
            dns_dirty: None,
        }
    }

    /// Replaces everything with a fresh listing.
    pub fn reset(&mut self, kvs: Vec<Kv>) {
        self.begin_listing();
        self.add_listed(kvs);
        self.end_listing();
    }

    /// Empties the view to be filled page by page (`add_listed`, then `end_listing`).
    pub fn begin_listing(&mut self) {
        self.entries.clear();
        self.rejected.clear();
        self.per_node.clear();
        self.ip6_of.clear();
        self.names.clear();
        self.limits.clear();
        self.bulk = true;
    }

    pub fn add_listed(&mut self, kvs: Vec<Kv>) {
        for kv in kvs {
            self.put(kv);
        }
    }

    pub fn end_listing(&mut self) {
        self.bulk = false;
        self.refresh_service_backends();
        self.dirty = Dirty {
            full: true,
            ..Dirty::default()
        };
        if let Some(d) = &mut self.dns_dirty {
            d.full = true;
        }
    }

    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Put(kv) => self.put(kv),
            Change::Delete(key) => {
                self.rejected.remove(&key);
                if let Some(k) = self.layout.parse(&key) {
                    if let Key::EndpointInfo { network, ip } = &k {
                        self.names.remove(network, *ip);
                        if self.limits.remove(network, *ip) {
                            self.dirty.endpoints.insert((network.clone(), *ip));
                        }
                        self.dns_touch(network, *ip);
                    }
                    let old = self.entries.remove(&k);
                    self.mark(&k, old.as_ref(), None);
                }
            }
        }
    }

    /// The changes since the last call. A changed node that holds endpoints now makes it a
    /// full rebuild (decided here, after a whole watch response: a departing node's
    /// endpoints go in the same revision as its record, in any order).
    pub fn take_dirty(&mut self) -> Dirty {
        let mut dirty = std::mem::take(&mut self.dirty);
        if dirty
            .nodes
            .iter()
            .any(|n| self.per_node.get(n.as_str()).is_some_and(|c| *c > 0))
        {
            dirty.full = true;
        }
        dirty
    }

    /// Records what a change of `key` from `old` to `new` means for the tables.
    fn mark(&mut self, key: &Key, old: Option<&Entry>, new: Option<&Entry>) {
        if let Key::Endpoint6 { network, ip6 } = key {
            self.mark6(network, *ip6, old, new);
            return;
        }
        if let Some(Entry::Endpoint(ep)) = new {
            *self.per_node.entry(ep.node.clone()).or_default() += 1;
        }
        if let Some(Entry::Endpoint(ep)) = old {
            if let Some(c) = self.per_node.get_mut(&ep.node) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.per_node.remove(&ep.node);
                }
            }
        }
        // Re-puts of the same value (a node re-publishing, the watch echo of a local
        // install) change nothing.
        if self.bulk || old == new {
            return;
        }
        self.mark_dns(key, old, new);
        let labelled =
            |e: Option<&Entry>| matches!(e, Some(Entry::Endpoint(ep)) if !ep.services.is_empty());
        match key {
            Key::Vni(_)
            | Key::ServiceVip(_)
            | Key::Block { .. }
            | Key::Endpoint6 { .. }
            | Key::EndpointInfo { .. } => {}
            Key::Endpoint { network, ip } => {
                let id = (network.clone(), *ip);
                if labelled(old)
                    || labelled(new)
                    || self.service_backends.contains(&id)
                    || self.v6_backend_networks.contains(network)
                {
                    self.dirty.full = true;
                } else if old != new {
                    self.dirty.endpoints.insert(id);
                }
            }
            Key::Service(_) => {
                self.refresh_service_backends();
                self.dirty.full = true;
            }
            // Only what the tables use counts: a node's VTEP (not its registration time or
            // lease), a network's VNI, subnet and gateway (not its MTU or block size).
            Key::Node(name) => {
                let vtep = |e: Option<&Entry>| match e {
                    Some(Entry::Node { record, .. }) => record.vteps(),
                    _ => None,
                };
                if vtep(old) != vtep(new) {
                    self.dirty.nodes.insert(name.clone());
                }
                // A node's IPv6 claims count only once it runs a release that carries IPv6.
                let ipv6 = |e: Option<&Entry>| match e {
                    Some(Entry::Node { record, .. }) => carries_ipv6(record),
                    _ => false,
                };
                if ipv6(old) != ipv6(new) {
                    self.dirty.full = true;
                }
            }
            Key::Network(_) => {
                let used = |e: Option<&Entry>| match e {
                    Some(Entry::Network(n)) => Some((n.vni, n.subnet, n.gateway, n.ipv6())),
                    _ => None,
                };
                if used(old) != used(new) {
                    self.dirty.full = true;
                }
            }
        }
    }

    /// An endpoint's IPv6 address came or went: the index follows, and so does the endpoint.
    fn mark6(
        &mut self,
        network: &str,
        ip6: std::net::Ipv6Addr,
        old: Option<&Entry>,
        new: Option<&Entry>,
    ) {
        let owner = |e: Option<&Entry>| match e {
            Some(Entry::Endpoint6(r)) => Some((r.ip, r.node.clone())),
            _ => None,
        };
        let (old, new) = (owner(old), owner(new));
        if let Some((ip, _)) = &old {
            self.ip6_of.remove(network, *ip, ip6);
        }
        if let Some((ip, node)) = &new {
            self.ip6_of.add(network, *ip, ip6, node);
        }
        if self.bulk || old == new {
            return;
        }
        let owners: Vec<Ipv4Addr> = old.iter().chain(&new).map(|(ip, _)| *ip).collect();
        self.dns_touch6(network, owners.into_iter());
        // A service backend by IPv6 address or by label may have come or gone.
        let labelled = |ip: &Ipv4Addr| {
            let key = Key::Endpoint {
                network: network.to_owned(),
                ip: IpAddr::V4(*ip),
            };
            matches!(self.entries.get(&key), Some(Entry::Endpoint(ep)) if !ep.services.is_empty())
        };
        if self.v6_backend_networks.contains(network)
            || old.iter().chain(&new).any(|(ip, _)| labelled(ip))
        {
            self.dirty.full = true;
        }
        for (ip, _) in old.into_iter().chain(new) {
            self.dirty
                .endpoints
                .insert((network.to_owned(), IpAddr::V4(ip)));
        }
    }

    fn refresh_service_backends(&mut self) {
        let mut v4 = BTreeSet::new();
        let mut v6 = BTreeSet::new();
        for (_, s) in self.services() {
            for b in &s.backends {
                match b.ip {
                    IpAddr::V4(_) => {
                        v4.insert((s.network.clone(), b.ip));
                    }
                    IpAddr::V6(_) => {
                        v6.insert(s.network.clone());
                    }
                }
            }
        }
        self.service_backends = v4;
        self.v6_backend_networks = v6;
    }

    /// One endpoint as the tables describe it, if the view holds it.
    pub fn endpoint(&self, network: &str, ip: IpAddr) -> Option<EndpointSpec> {
        match self.entries.get(&Key::Endpoint {
            network: network.to_owned(),
            ip,
        }) {
            Some(Entry::Endpoint(ep)) if self.deliverable(ip, ep) => {
                Some(self.endpoint_spec(network, ip, ep))
            }
            _ => None,
        }
    }

    fn put(&mut self, kv: Kv) {
        let Some(key) = self.layout.parse(&kv.key) else {
            self.reject(kv.key, "not a key of this layout".into());
            return;
        };
        let decoded = match &key {
            // What DNS names the endpoint; otherwise only there to tell operators whom an
            // endpoint belongs to (the tables never use it).
            Key::EndpointInfo { network, ip } => {
                let info = records::decode::<EndpointInfoRecord>(&kv.value);
                if self.limits.put(network, *ip, info.as_ref().ok()) {
                    // Its node delivers to it through a qdisc or not.
                    self.dirty.endpoints.insert((network.clone(), *ip));
                }
                if let Err(reason) = self.names.put(network, *ip, info) {
                    self.reject(kv.key, reason);
                }
                self.dns_touch(network, *ip);
                return;
            }
            // Only there to keep VNIs unique (the network record carries the VNI) and VIPs
            // unique.
            Key::Vni(_) | Key::ServiceVip(_) => return,
            Key::Service(_) => records::decode(&kv.value).map(Entry::Service),
            Key::Network(_) => records::decode::<NetworkRecord>(&kv.value).map(|mut n| {
                if let Err(e) = n.check_ipv6() {
                    warn!(key = %kv.key, "network without IPv6: {e}");
                    (n.subnet6, n.gateway6, n.block_len6) = (None, None, None);
                }
                Entry::Network(n)
            }),
            Key::Node(_) => records::decode::<NodeRecord>(&kv.value)
                .and_then(NodeRecord::checked)
                .map(|record| Entry::Node {
                    record,
                    lease: kv.lease,
                }),
            Key::Block { .. } => records::decode(&kv.value).map(Entry::Block),
            Key::Endpoint { .. } => records::decode::<EndpointRecord>(&kv.value)
                .map(|r| Entry::Endpoint(self.compact(r))),
            Key::Endpoint6 { .. } => records::decode(&kv.value).map(Entry::Endpoint6),
        };
        match decoded {
            Ok(entry) => {
                self.rejected.remove(&kv.key);
                let old = self.entries.remove(&key);
                self.mark(&key, old.as_ref(), Some(&entry));
                self.entries.insert(key, entry);
            }
            Err(reason) => {
                // A bad value replaces a good one: the entry is gone, not stale.
                let old = self.entries.remove(&key);
                self.mark(&key, old.as_ref(), None);
                self.reject(kv.key, reason);
            }
        }
    }

    fn compact(&mut self, r: EndpointRecord) -> ViewEndpoint {
        // Share the name the node's other endpoints already hold.
        let node = match self.per_node.get_key_value(r.node.as_str()) {
            Some((n, _)) => n.clone(),
            None => r.node.into(),
        };
        ViewEndpoint {
            container: super::names::container_tag(&r.container_id),
            mac: r.mac,
            node,
            attachment: r.attachment,
            services: r.services.into(),
        }
    }

    fn reject(&mut self, key: String, reason: String) {
        // A decoder's message may quote the value, which can be a megabyte: one short line.
        let reason = bounded(reason, MAX_REASON);
        if self.rejected.get(&key) != Some(&reason) {
            warn!(key = %bounded(key.clone(), MAX_REASON), "skipping etcd entry: {reason}");
            self.rejected.insert(key, reason);
        }
    }

    /// The entries of one kind, in key order. Keys sort by kind first, so this is a range of
    /// the map, not a scan of all of it (100k endpoints sit between the kinds).
    fn of_kind(&self, first: Key) -> impl Iterator<Item = (&Key, &Entry)> {
        let kind = std::mem::discriminant(&first);
        self.entries
            .range(first..)
            .take_while(move |(k, _)| std::mem::discriminant(*k) == kind)
    }

    pub fn networks(&self) -> impl Iterator<Item = (&str, &NetworkRecord)> {
        self.of_kind(Key::Network(String::new()))
            .filter_map(|(k, e)| match (k, e) {
                (Key::Network(name), Entry::Network(n)) => Some((name.as_str(), n)),
                _ => None,
            })
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        match self.entries.get(&Key::Node(name.to_owned())) {
            Some(Entry::Node { record, .. }) => Some(record),
            _ => None,
        }
    }

    pub fn network(&self, name: &str) -> Option<&NetworkRecord> {
        match self.entries.get(&Key::Network(name.to_owned())) {
            Some(Entry::Network(n)) => Some(n),
            _ => None,
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&str, &NodeRecord, i64)> {
        self.of_kind(Key::Node(String::new()))
            .filter_map(|(k, e)| match (k, e) {
                (Key::Node(name), Entry::Node { record, lease }) => {
                    Some((name.as_str(), record, *lease))
                }
                _ => None,
            })
    }

    pub fn blocks(&self) -> impl Iterator<Item = (&str, ipnet::IpNet, &BlockRecord)> {
        self.of_kind(Key::Block {
            network: String::new(),
            block: ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
        })
        .filter_map(|(k, e)| match (k, e) {
            (Key::Block { network, block }, Entry::Block(b)) => Some((network.as_str(), *block, b)),
            _ => None,
        })
    }

    pub fn endpoints(&self) -> impl Iterator<Item = (&str, IpAddr, &ViewEndpoint)> {
        self.of_kind(Key::Endpoint {
            network: String::new(),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        })
        .filter_map(|(k, e)| match (k, e) {
            (Key::Endpoint { network, ip }, Entry::Endpoint(ep)) => {
                Some((network.as_str(), *ip, ep))
            }
            _ => None,
        })
    }

    pub fn services(&self) -> impl Iterator<Item = (&str, &ServiceRecord)> {
        self.of_kind(Key::Service(String::new()))
            .filter_map(|(k, e)| match (k, e) {
                (Key::Service(name), Entry::Service(s)) => Some((name.as_str(), s)),
                _ => None,
            })
    }

    /// Not an IPv6-only endpoint of a node downgraded to a release without IPv6, which
    /// cannot deliver it any more.
    fn deliverable(&self, ip: IpAddr, ep: &ViewEndpoint) -> bool {
        ip.is_ipv4() || self.node(&ep.node).is_some_and(carries_ipv6)
    }

    fn endpoint_spec(&self, network: &str, key: IpAddr, ep: &ViewEndpoint) -> EndpointSpec {
        let (ip, ip6) = match key {
            IpAddr::V4(ip) => (Some(ip), self.ip6_for(network, ip, ep)),
            // An IPv6-only network's endpoint: its key is its address.
            IpAddr::V6(ip6) => (None, Some(ip6)),
        };
        EndpointSpec {
            network: network.into(),
            ip,
            mac: Some(ep.mac),
            node: ep.node.to_string(),
            iface: EndpointIface::from(&ep.attachment),
            services: ep.services.to_vec(),
            ip6,
            bandwidth: self.limits.get(network, key, ep.container),
        }
    }

    /// The endpoint's IPv6 address: the one claim naming it that its own node made, if that
    /// node runs a release that carries IPv6 (a node downgraded to 0.2 neither uses nor
    /// deletes its claims).
    fn ip6_for(
        &self,
        network: &str,
        ip: Ipv4Addr,
        ep: &ViewEndpoint,
    ) -> Option<std::net::Ipv6Addr> {
        if !self.node(&ep.node).is_some_and(carries_ipv6) {
            return None;
        }
        self.ip6_of.own(network, ip, &ep.node)
    }

    /// Every IPv6 address claimed in `network`: dual-stack claims and the keys of
    /// IPv6-only endpoints (allocation skips them).
    pub fn ipv6_in<'a>(&'a self, network: &'a str) -> impl Iterator<Item = Ipv6Addr> + 'a {
        let keys = self.endpoints().filter_map(move |(n, ip, _)| match ip {
            IpAddr::V6(ip6) if n == network => Some(ip6),
            _ => None,
        });
        self.endpoints6()
            .filter(move |(n, _, _)| *n == network)
            .map(|(_, ip6, _)| ip6)
            .chain(keys)
    }

    /// Every claimed IPv6 address: (network, address, record).
    pub fn endpoints6(&self) -> impl Iterator<Item = (&str, std::net::Ipv6Addr, &Endpoint6Record)> {
        self.of_kind(Key::Endpoint6 {
            network: String::new(),
            ip6: std::net::Ipv6Addr::UNSPECIFIED,
        })
        .filter_map(|(k, e)| match (k, e) {
            (Key::Endpoint6 { network, ip6 }, Entry::Endpoint6(r)) => {
                Some((network.as_str(), *ip6, r))
            }
            _ => None,
        })
    }

    /// The tables the datapath should hold: networks, live nodes, and the endpoints of live
    /// nodes (an endpoint whose node is gone is not installed, even before its lease expires).
    pub fn tables(&self) -> ValidTables {
        self.cluster_tables().validate()
    }

    /// The view as unvalidated tables: a copy, so validation can run without the view.
    pub fn cluster_tables(&self) -> ClusterTables {
        let mut t = self.base_tables();
        for (network, ip, ep) in self.endpoints() {
            if self.deliverable(ip, ep) {
                t.endpoints.push(self.endpoint_spec(network, ip, ep));
            }
        }
        t
    }

    /// Networks, nodes and services (no endpoints): a few entries, however many endpoints.
    pub fn base_tables(&self) -> ClusterTables {
        let mut t = ClusterTables::default();
        for (name, n) in self.networks() {
            t.networks.push(NetworkSpec {
                name: name.into(),
                vni: n.vni,
                subnet: n.subnet,
                gateway: n.gateway,
                subnet6: n.subnet6,
                gateway6: n.ipv6().map(|v6| v6.gateway),
            });
        }
        for (name, n, _) in self.nodes() {
            // A record with no VTEP address was skipped as bad data when it was read.
            if let Some(vteps) = n.vteps() {
                t.nodes.push(NodeSpec::new(name, vteps));
            }
        }
        for (name, s) in self.services() {
            t.services.push(ServiceSpec {
                name: name.into(),
                network: s.network.clone(),
                vip: s.vip,
                port: s.port,
                proto: s.proto,
                backends: s.backends.clone(),
            });
        }
        t
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
