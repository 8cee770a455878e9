//! The cluster as this node last saw it in etcd: filled by a listing, kept current by watch
//! events, turned into the tables the reconciler installs. Entries that do not decode are
//! skipped and logged once, and never reach the datapath.

use std::collections::BTreeMap;

use tracing::warn;

use super::{
    client::{Change, Kv},
    keys::{Key, Layout},
    records::{self, BlockRecord, EndpointRecord, NetworkRecord, NodeRecord, ServiceRecord},
};
use crate::tables::{ClusterTables, EndpointSpec, NetworkSpec, NodeSpec, ServiceSpec, ValidTables};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Network(NetworkRecord),
    Node { record: NodeRecord, lease: i64 },
    Block(BlockRecord),
    Endpoint(EndpointRecord),
    Service(ServiceRecord),
}

#[derive(Clone, Debug)]
pub struct ClusterView {
    layout: Layout,
    entries: BTreeMap<Key, Entry>,
    /// Keys under the prefix that were skipped, with the reason.
    pub rejected: BTreeMap<String, String>,
}

impl ClusterView {
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            entries: BTreeMap::new(),
            rejected: BTreeMap::new(),
        }
    }

    /// Replaces everything with a fresh listing.
    pub fn reset(&mut self, kvs: Vec<Kv>) {
        self.entries.clear();
        self.rejected.clear();
        for kv in kvs {
            self.put(kv);
        }
    }

    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Put(kv) => self.put(kv),
            Change::Delete(key) => {
                self.rejected.remove(&key);
                if let Some(k) = self.layout.parse(&key) {
                    self.entries.remove(&k);
                }
            }
        }
    }

    fn put(&mut self, kv: Kv) {
        let Some(key) = self.layout.parse(&kv.key) else {
            self.reject(kv.key, "not a key of this layout".into());
            return;
        };
        let decoded = match &key {
            // Only there to keep VNIs unique; the network record carries the VNI.
            Key::Vni(_) | Key::ServiceVip(_) => return,
            Key::Service(_) => records::decode(&kv.value).map(Entry::Service),
            Key::Network(_) => records::decode(&kv.value).map(Entry::Network),
            Key::Node(_) => records::decode(&kv.value).map(|record| Entry::Node {
                record,
                lease: kv.lease,
            }),
            Key::Block { .. } => records::decode(&kv.value).map(Entry::Block),
            Key::Endpoint { .. } => records::decode(&kv.value).map(Entry::Endpoint),
        };
        match decoded {
            Ok(entry) => {
                self.rejected.remove(&kv.key);
                self.entries.insert(key, entry);
            }
            Err(reason) => {
                // A bad value replaces a good one: the entry is gone, not stale.
                self.entries.remove(&key);
                self.reject(kv.key, reason);
            }
        }
    }

    fn reject(&mut self, key: String, reason: String) {
        if self.rejected.get(&key) != Some(&reason) {
            warn!(%key, "skipping etcd entry: {reason}");
            self.rejected.insert(key, reason);
        }
    }

    pub fn networks(&self) -> impl Iterator<Item = (&str, &NetworkRecord)> {
        self.entries.iter().filter_map(|(k, e)| match (k, e) {
            (Key::Network(name), Entry::Network(n)) => Some((name.as_str(), n)),
            _ => None,
        })
    }

    pub fn network(&self, name: &str) -> Option<&NetworkRecord> {
        match self.entries.get(&Key::Network(name.to_owned())) {
            Some(Entry::Network(n)) => Some(n),
            _ => None,
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&str, &NodeRecord, i64)> {
        self.entries.iter().filter_map(|(k, e)| match (k, e) {
            (Key::Node(name), Entry::Node { record, lease }) => {
                Some((name.as_str(), record, *lease))
            }
            _ => None,
        })
    }

    pub fn blocks(&self) -> impl Iterator<Item = (&str, ipnet::Ipv4Net, &BlockRecord)> {
        self.entries.iter().filter_map(|(k, e)| match (k, e) {
            (Key::Block { network, block }, Entry::Block(b)) => Some((network.as_str(), *block, b)),
            _ => None,
        })
    }

    pub fn endpoints(&self) -> impl Iterator<Item = (&str, std::net::Ipv4Addr, &EndpointRecord)> {
        self.entries.iter().filter_map(|(k, e)| match (k, e) {
            (Key::Endpoint { network, ip }, Entry::Endpoint(ep)) => {
                Some((network.as_str(), *ip, ep))
            }
            _ => None,
        })
    }

    pub fn services(&self) -> impl Iterator<Item = (&str, &ServiceRecord)> {
        self.entries.iter().filter_map(|(k, e)| match (k, e) {
            (Key::Service(name), Entry::Service(s)) => Some((name.as_str(), s)),
            _ => None,
        })
    }

    /// The tables the datapath should hold: networks, live nodes, and the endpoints of live
    /// nodes (an endpoint whose node is gone is not installed, even before its lease expires).
    pub fn tables(&self) -> ValidTables {
        let mut t = ClusterTables::default();
        for (name, n) in self.networks() {
            t.networks.push(NetworkSpec {
                name: name.into(),
                vni: n.vni,
                subnet: n.subnet,
                gateway: n.gateway,
            });
        }
        for (name, n, _) in self.nodes() {
            t.nodes.push(NodeSpec {
                name: name.into(),
                vtep_ip: n.vtep_ip,
            });
        }
        for (network, ip, ep) in self.endpoints() {
            t.endpoints.push(EndpointSpec {
                network: network.into(),
                ip,
                mac: Some(ep.mac),
                node: ep.node.clone(),
                host_ifname: (!ep.host_ifname.is_empty()).then(|| ep.host_ifname.clone()),
                services: ep.services.clone(),
                reserved: ep.host_ifname.is_empty(),
            });
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
        t.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::MacAddr;

    fn kv(key: &str, value: &str) -> Kv {
        Kv {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            lease: 7,
        }
    }

    #[test]
    fn garbage_is_skipped_and_good_entries_kept() {
        let mut v = ClusterView::new(Layout::new("/overlay"));
        v.reset(vec![
            kv("/overlay/v1/networks/red", r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#),
            kv("/overlay/v1/networks/bad", "garbage"),
            kv("/overlay/v1/nodes/a", r#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:01","registered_at":0}"#),
            kv("/overlay/v1/nodes/b", r#"{"version":9,"vtep_ip":"198.18.0.2"}"#),
            kv("/overlay/v1/endpoints/red/198.19.1.2", r#"{"version":1,"mac":"0a:58:c6:13:01:02","node":"a","container_id":"c1","host_ifname":"ovl1"}"#),
            kv("/overlay/v1/endpoints/red/198.19.1.3", r#"{"version":1,"mac":"0a:58:c6:13:01:03","node":"b","container_id":"c2","host_ifname":"ovl2"}"#),
            kv("/overlay/v1/whatever", "x"),
        ]);
        assert_eq!(v.rejected.len(), 3, "{:?}", v.rejected);
        let t = v.tables();
        assert_eq!(t.networks.len(), 1);
        assert_eq!(t.nodes.len(), 1);
        // The endpoint of node b (whose record was unreadable) is not installed.
        assert_eq!(t.endpoints.len(), 1);
        assert_eq!(
            t.endpoints[0].mac,
            Some(MacAddr([0x0a, 0x58, 198, 19, 1, 2]))
        );
    }

    #[test]
    fn watch_events_update_and_remove() {
        let mut v = ClusterView::new(Layout::new("/overlay"));
        v.apply(Change::Put(kv(
            "/overlay/v1/networks/red",
            r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#,
        )));
        assert_eq!(v.tables().networks.len(), 1);
        v.apply(Change::Put(kv("/overlay/v1/networks/red", "oops")));
        assert_eq!(
            v.tables().networks.len(),
            0,
            "a bad value replaces the good one"
        );
        v.apply(Change::Delete("/overlay/v1/networks/red".into()));
        assert!(v.rejected.is_empty());
    }
}
