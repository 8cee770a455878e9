//! The cluster's tables as the daemon wants them: networks, nodes (VTEPs), endpoints and
//! services. They come from a source (etcd, or a static JSON file) and are validated entry
//! by entry (`validate`): a bad entry is skipped with a reason, never allowed to poison the
//! rest.

mod service;
mod validate;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub use overlay_api::{
    labels::{parse_service_label, parse_service_labels},
    Attachment, MacAddr,
};
pub use service::{BackendSpec, Proto, ServiceSpec, ValidService, MAX_WEIGHT};
pub use validate::{
    endpoint_problem, ipv6_problem, vip_in_network, vip_problem, Rejection, Subject,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    pub vni: u32,
    /// The IPv4 subnet; absent on an IPv6-only network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// Virtual gateway address; defaults to the subnet's first host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 subnet of a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// Virtual IPv6 gateway; defaults to the IPv6 subnet's first address after the
    /// network's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

impl NetworkSpec {
    /// The IPv4 gateway, on a network with IPv4.
    pub fn gateway_ip(&self) -> Option<Ipv4Addr> {
        let subnet = self.subnet?;
        Some(self.gateway.unwrap_or_else(|| default_gateway(subnet)))
    }

    /// The IPv6 gateway of a dual-stack network.
    pub fn gateway_ip6(&self) -> Option<Ipv6Addr> {
        let subnet = self.subnet6?;
        Some(self.gateway6.unwrap_or_else(|| default_gateway6(subnet)))
    }
}

/// The gateway of a network that names none: its subnet's first host address.
pub fn default_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.hosts().next().unwrap_or(subnet.network())
}

/// The IPv6 gateway of a network that names none: the subnet's `::1`.
pub fn default_gateway6(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) | 1)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// At least one of the two VTEP addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip6: Option<Ipv6Addr>,
    #[serde(default)]
    pub vtep_prefer: crate::vtep::Prefer,
}

impl NodeSpec {
    pub fn new(name: impl Into<String>, vteps: crate::vtep::Vteps) -> Self {
        Self {
            name: name.into(),
            vtep_ip: vteps.v4,
            vtep_ip6: vteps.v6,
            vtep_prefer: vteps.prefer,
        }
    }

    pub fn vteps(&self) -> crate::vtep::Vteps {
        crate::vtep::Vteps {
            v4: self.vtep_ip,
            v6: self.vtep_ip6,
            prefer: self.vtep_prefer,
        }
    }
}

/// An endpoint's interface as the tables know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointIface {
    /// An address reserved for a runtime that has not made the endpoint yet (Docker's IPAM
    /// asks first): in the tables, not installed on its node, not a service backend.
    Reserved,
    /// Attached through this host-side interface (what its own node attaches to).
    Veth(String),
    /// Attached on its node, the interface not named: a tables-file entry for another node.
    Unnamed,
}

impl From<&Attachment> for EndpointIface {
    fn from(a: &Attachment) -> Self {
        match a {
            Attachment::Reserved => EndpointIface::Reserved,
            Attachment::Veth { host_ifname } => EndpointIface::Veth(host_ifname.clone()),
        }
    }
}

/// An endpoint: at least one of `ip` and `ip6` (its constructors see to it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EndpointSpecFile", into = "EndpointSpecFile")]
pub struct EndpointSpec {
    pub network: String,
    /// Its IPv4 address; absent on an IPv6-only network.
    pub ip: Option<Ipv4Addr>,
    /// Defaults to a MAC derived from the IP.
    pub mac: Option<MacAddr>,
    pub node: String,
    pub iface: EndpointIface,
    /// Services this endpoint serves, as `NAME:PORT` labels (`overlay.service`).
    pub services: Vec<String>,
    /// Its IPv6 address, on a network with IPv6.
    pub ip6: Option<Ipv6Addr>,
    /// Its bandwidth limits, enforced on its own node.
    pub bandwidth: Option<overlay_api::Bandwidth>,
}

impl EndpointSpec {
    pub fn mac(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| match (self.ip, self.ip6) {
            (Some(ip), _) => MacAddr::from_ip(ip),
            (None, Some(ip6)) => MacAddr::from_ip6(ip6, 0),
            (None, None) => MacAddr([0; 6]),
        })
    }

    /// The address that names it in its network (its etcd key): IPv4 when it has one.
    pub fn key_ip(&self) -> IpAddr {
        overlay_api::endpoint::key_address(self.ip, self.ip6)
    }
}

/// An endpoint as the tables file writes it: `host_ifname` (needed on the endpoint's own
/// node), `reserved: true` for an address without an interface yet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointSpecFile {
    network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<MacAddr>,
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_ifname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    reserved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<Ipv6Addr>,
}

impl TryFrom<EndpointSpecFile> for EndpointSpec {
    type Error = &'static str;

    fn try_from(f: EndpointSpecFile) -> Result<Self, Self::Error> {
        if f.ip.is_none() && f.ip6.is_none() {
            return Err("an endpoint needs an address: give ip, ip6 or both");
        }
        Ok(Self {
            iface: match (f.reserved, f.host_ifname) {
                (true, _) => EndpointIface::Reserved,
                (false, Some(name)) => EndpointIface::Veth(name),
                (false, None) => EndpointIface::Unnamed,
            },
            network: f.network,
            ip: f.ip,
            mac: f.mac,
            node: f.node,
            services: f.services,
            ip6: f.ip6,
            // Limits come from the endpoint's runtime (CNI): a static file has none.
            bandwidth: None,
        })
    }
}

impl From<EndpointSpec> for EndpointSpecFile {
    fn from(e: EndpointSpec) -> Self {
        let (reserved, host_ifname) = match e.iface {
            EndpointIface::Reserved => (true, None),
            EndpointIface::Veth(name) => (false, Some(name)),
            EndpointIface::Unnamed => (false, None),
        };
        Self {
            network: e.network,
            ip: e.ip,
            mac: e.mac,
            node: e.node,
            host_ifname,
            services: e.services,
            reserved,
            ip6: e.ip6,
        }
    }
}

/// The whole cluster as one document (the static tables file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTables {
    #[serde(default)]
    pub networks: Vec<NetworkSpec>,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

impl ClusterTables {
    /// Parses the tables file; the reason it does not parse is one line (an unknown field
    /// is quoted with its control characters escaped).
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(overlay_api::error::one_line)
    }
}

/// Tables that passed validation, indexed for the reconciler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidTables {
    pub networks: BTreeMap<String, NetworkSpec>,
    pub nodes: BTreeMap<String, NodeSpec>,
    pub endpoints: Vec<EndpointSpec>,
    pub services: Vec<ValidService>,
    /// Every skipped entry: what is wrong and what to fix.
    pub rejected: Vec<Rejection>,
}

impl ValidTables {
    /// The name of the network with this VNI.
    pub fn network_of_vni(&self, vni: u32) -> Option<String> {
        self.networks
            .values()
            .find(|n| n.vni == vni)
            .map(|n| n.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../../deploy/tables.example.json");
        let valid = ClusterTables::from_json(text).unwrap().validate();
        assert!(valid.rejected.is_empty(), "{:?}", valid.rejected);
        assert_eq!(valid.endpoints.len(), 2);
    }

    #[test]
    fn endpoint_interfaces_round_trip_through_the_file_form() {
        let text = r#"{"endpoints": [
            {"network": "red", "ip": "198.19.1.2", "node": "a", "host_ifname": "v2"},
            {"network": "red", "ip": "198.19.1.3", "node": "b"},
            {"network": "red", "ip": "198.19.1.4", "node": "a", "reserved": true}
        ]}"#;
        let t = ClusterTables::from_json(text).unwrap();
        let ifaces: Vec<_> = t.endpoints.iter().map(|e| e.iface.clone()).collect();
        assert_eq!(
            ifaces,
            [
                EndpointIface::Veth("v2".into()),
                EndpointIface::Unnamed,
                EndpointIface::Reserved
            ]
        );
        let again = ClusterTables::from_json(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(again, t);
    }

    #[test]
    fn a_bad_ipv6_address_costs_the_endpoint_its_ipv6_only() {
        let text = r#"{"networks": [
            {"name": "red", "vni": 100, "subnet": "198.19.1.0/24", "subnet6": "2001:2:0:1080::/64"},
            {"name": "blue", "vni": 200, "subnet": "198.19.2.0/24"}
        ], "nodes": [{"name": "a", "vtep_ip": "198.18.0.1"}],
        "endpoints": [
            {"network": "red", "ip": "198.19.1.2", "node": "a", "ip6": "2001:2:0:1080::2"},
            {"network": "red", "ip": "198.19.1.3", "node": "a", "ip6": "2001:2:0:9999::3"},
            {"network": "red", "ip": "198.19.1.4", "node": "a", "ip6": "2001:2:0:1080::1"},
            {"network": "blue", "ip": "198.19.2.2", "node": "a", "ip6": "2001:2:0:1080::5"}
        ]}"#;
        let valid = ClusterTables::from_json(text).unwrap().validate();
        let ip6: Vec<_> = valid.endpoints.iter().map(|e| e.ip6).collect();
        assert_eq!(
            ip6,
            [Some("2001:2:0:1080::2".parse().unwrap()), None, None, None],
            "every endpoint kept, the unusable IPv6 addresses left out"
        );
        assert_eq!(valid.rejected.len(), 3, "{:?}", valid.rejected);
        assert!(valid
            .rejected
            .iter()
            .all(|r| r.reason.starts_with("IPv6 left out")));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = ClusterTables::from_json(r#"{"networks": [], "nodez": []}"#).unwrap_err();
        assert!(err.to_string().contains("nodez"), "{err}");
        let err = ClusterTables::from_json(
            r#"{"endpoints": [{"network": "r", "ip": "198.19.1.2", "node": "a", "hostifname": "x"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("hostifname"), "{err}");
    }
}
