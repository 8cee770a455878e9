//! What DNS takes from the view: the networks and services whole (few), and the endpoints
//! whose addresses or names changed since DNS last looked, one by one (many).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use super::{carries_ipv6, ClusterView, Entry, Key};
use crate::{
    dns::zone::EndpointDns,
    tables::{endpoint_problem, ipv6_problem, ValidTables},
};

/// What changed for DNS since it last took the changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsDirty {
    /// Networks changed, a node holding endpoints came or went, or a listing replaced
    /// everything: the zone is rebuilt.
    pub full: bool,
    /// Services changed: the zone's services are replaced.
    pub services: bool,
    /// Endpoints whose addresses or name may have changed, by (network, key address).
    pub endpoints: BTreeSet<(String, IpAddr)>,
}

impl ClusterView {
    /// From now on the view notes what changes for DNS (nobody else pays for it).
    pub fn follow_dns(&mut self) {
        self.dns_dirty.get_or_insert(DnsDirty {
            full: true,
            ..DnsDirty::default()
        });
    }

    /// Becomes `fresh` (a new listing), still followed by DNS if it was: DNS then looks at
    /// everything again.
    pub fn replace(&mut self, fresh: ClusterView) {
        let followed = self.dns_dirty.is_some();
        *self = fresh;
        if followed {
            self.follow_dns();
        }
    }

    /// The changes since the last call (everything, the first time).
    pub fn take_dns_dirty(&mut self) -> DnsDirty {
        match &mut self.dns_dirty {
            Some(d) => std::mem::take(d),
            None => DnsDirty {
                full: true,
                ..DnsDirty::default()
            },
        }
    }

    /// Networks, nodes and services, validated.
    pub fn dns_base(&self) -> ValidTables {
        self.base_tables().validate()
    }

    /// The endpoint (`network`, `ip`) as DNS on node `local` serves it, if the tables would
    /// hold it (`base`: from `dns_base`).
    pub fn dns_endpoint(
        &self,
        base: &ValidTables,
        network: &str,
        ip: IpAddr,
        local: &str,
    ) -> Option<EndpointDns> {
        let key = Key::Endpoint {
            network: network.to_owned(),
            ip,
        };
        match self.entries.get(&key) {
            Some(Entry::Endpoint(ep)) => self.endpoint_dns(base, network, ip, ep, local),
            _ => None,
        }
    }

    /// Every endpoint as DNS on node `local` serves it.
    pub fn dns_endpoints(
        &self,
        base: &ValidTables,
        local: &str,
    ) -> Vec<((String, IpAddr), EndpointDns)> {
        self.endpoints()
            .filter_map(|(network, ip, ep)| {
                let dns = self.endpoint_dns(base, network, ip, ep, local)?;
                Some(((network.to_owned(), ip), dns))
            })
            .collect()
    }

    /// As validation judges an endpoint on its own (uniqueness of addresses within the
    /// network is not checked one endpoint at a time).
    fn endpoint_dns(
        &self,
        base: &ValidTables,
        network: &str,
        ip: IpAddr,
        ep: &super::ViewEndpoint,
        local: &str,
    ) -> Option<EndpointDns> {
        let net = base.networks.get(network)?;
        if !self.deliverable(ip, ep) {
            return None;
        }
        let mut spec = self.endpoint_spec(network, ip, ep);
        if spec.ip.is_some() && ipv6_problem(&spec, net).is_some() {
            spec.ip6 = None;
        }
        if endpoint_problem(&spec, net, &base.nodes).is_some() {
            return None;
        }
        Some(EndpointDns {
            addrs: spec
                .ip
                .map(IpAddr::V4)
                .into_iter()
                .chain(spec.ip6.map(IpAddr::V6))
                .collect(),
            name: self.names.get(network, ip, ep.container).map(str::to_owned),
            local: &*ep.node == local,
        })
    }

    /// Notes an endpoint whose name or addresses may have changed.
    pub(super) fn dns_touch(&mut self, network: &str, ip: IpAddr) {
        if let (Some(d), false) = (&mut self.dns_dirty, self.bulk) {
            d.endpoints.insert((network.to_owned(), ip));
        }
    }

    /// An endpoint's IPv6 claim (owned by its IPv4 key) came or went.
    pub(super) fn dns_touch6(&mut self, network: &str, owners: impl Iterator<Item = Ipv4Addr>) {
        for ip in owners {
            self.dns_touch(network, IpAddr::V4(ip));
        }
    }

    /// What a change of `key` from `old` to `new` means for DNS (after a listing, or for
    /// an unchanged value, nothing: the caller does not call).
    pub(super) fn mark_dns(&mut self, key: &Key, old: Option<&Entry>, new: Option<&Entry>) {
        let Some(d) = &mut self.dns_dirty else {
            return;
        };
        match key {
            Key::Endpoint { network, ip } => {
                d.endpoints.insert((network.clone(), *ip));
            }
            Key::Service(_) => d.services = true,
            Key::Network(_) => d.full = true,
            // Endpoints are served only while their node is there and valid (its VTEP its
            // own), their IPv6 address only while it carries IPv6.
            Key::Node(name) => {
                let state = |e: Option<&Entry>| match e {
                    Some(Entry::Node { record, .. }) => {
                        Some((carries_ipv6(record), record.vtep_ip))
                    }
                    _ => None,
                };
                let holds = self.per_node.get(name.as_str()).is_some_and(|c| *c > 0);
                if holds && state(old) != state(new) {
                    d.full = true;
                }
                // Its VTEP may be a service's VIP: services are checked against nodes.
                d.services = true;
            }
            Key::Vni(_)
            | Key::ServiceVip(_)
            | Key::Block { .. }
            | Key::Endpoint6 { .. }
            | Key::EndpointInfo { .. } => {}
        }
    }
}
