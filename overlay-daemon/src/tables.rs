//! The cluster's tables as the daemon wants them: networks, nodes (VTEPs) and endpoints.
//! They come from a source (a JSON file for now) and are validated entry by entry: a bad
//! entry is skipped with a reason, never allowed to poison the rest.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    str::FromStr,
};

use ipnet::Ipv4Net;
use overlay_common::wire::VNI_MAX;
use serde::{Deserialize, Serialize};

/// A MAC address, written `02:42:c6:13:01:02`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The virtual gateway MAC of a network: locally administered, derived from the VNI.
    pub fn gateway(vni: u32) -> Self {
        let v = vni.to_be_bytes();
        Self([0x02, 0x6f, 0x76, v[1], v[2], v[3]])
    }

    /// A locally administered MAC derived from an IPv4 address (like Kubernetes' 0a:58).
    pub fn from_ip(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        Self([0x0a, 0x58, o[0], o[1], o[2], o[3]])
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| format!("MAC {s:?}: expected 6 octets"))?;
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("MAC {s:?}: {part:?} is not a hex octet"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC {s:?}: expected 6 octets"));
        }
        Ok(Self(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    /// Virtual gateway address; defaults to the subnet's first host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

impl NetworkSpec {
    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| default_gateway(self.subnet))
    }
}

/// The gateway of a network that names none: its subnet's first host address.
pub fn default_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.hosts().next().unwrap_or(subnet.network())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub vtep_ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub network: String,
    pub ip: Ipv4Addr,
    /// Defaults to a MAC derived from the IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    pub node: String,
    /// Host-side veth of the endpoint (needed on its own node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    /// Services this endpoint serves, as `NAME:PORT` labels (`overlay.service`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// An address reserved for a runtime that has not made the endpoint yet (Docker's IPAM
    /// asks first): in the tables, but not a service backend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reserved: bool,
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => overlay_common::wire::IPPROTO_TCP,
            Proto::Udp => overlay_common::wire::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("protocol {s:?}: use tcp or udp")),
        }
    }
}

/// A service backend: an endpoint address and port, with a relative weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub ip: Ipv4Addr,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Largest backend weight (keeps Maglev's turn arithmetic and shares sensible).
pub const MAX_WEIGHT: u32 = 1000;

impl FromStr for BackendSpec {
    type Err = String;
    /// `IP:PORT` or `IP:PORT@WEIGHT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("backend {s:?}: write IP:PORT or IP:PORT@WEIGHT");
        let (addr, weight) = match s.split_once('@') {
            Some((a, w)) => (a, w.parse::<u32>().map_err(|_| bad())?),
            None => (s, 1),
        };
        let addr: std::net::SocketAddrV4 = addr.parse().map_err(|_| bad())?;
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(format!("backend {s:?}: weight must be 1..={MAX_WEIGHT}"));
        }
        Ok(Self {
            ip: *addr.ip(),
            port: addr.port(),
            weight,
        })
    }
}

/// A label `NAME:PORT` that makes an endpoint a backend of service NAME on PORT.
pub fn parse_service_label(label: &str) -> Result<(String, u16), String> {
    let bad = || format!("service label {label:?}: write NAME:PORT, e.g. web:8080");
    let (name, port) = label.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || !crate::store::keys::valid_name(name) {
        return Err(bad());
    }
    Ok((name.to_owned(), port))
}

/// Labels from a runtime option: `NAME:PORT[,NAME:PORT...]`, each checked, duplicates
/// dropped. The error names the bad label and the syntax.
pub fn parse_service_labels<'a>(
    raw: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, String> {
    let mut labels: Vec<String> = Vec::new();
    for label in raw
        .into_iter()
        .flat_map(|r| r.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        parse_service_label(label)?;
        if !labels.iter().any(|l| l == label) {
            labels.push(label.to_owned());
        }
    }
    Ok(labels)
}

/// A service: a VIP:port in one network balanced over backends (Minuteman-style).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub network: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
}

/// A service ready for the datapath: its VNI and the backends that are alive now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidService {
    pub name: String,
    pub vni: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    /// Live backends, sorted; configured ones and those joined by label.
    pub backends: Vec<BackendSpec>,
}

impl EndpointSpec {
    pub fn mac(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| MacAddr::from_ip(self.ip))
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

/// Tables that passed validation, indexed for the reconciler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidTables {
    pub networks: BTreeMap<String, NetworkSpec>,
    pub nodes: BTreeMap<String, NodeSpec>,
    pub endpoints: Vec<EndpointSpec>,
    pub services: Vec<ValidService>,
    /// One line per skipped entry: what is wrong and what to fix.
    pub rejected: Vec<String>,
}

/// What is wrong with one endpoint on its own (uniqueness within the network aside), if
/// anything.
pub fn endpoint_problem(
    ep: &EndpointSpec,
    net: &NetworkSpec,
    nodes: &BTreeMap<String, NodeSpec>,
) -> Option<String> {
    if !nodes.contains_key(&ep.node) {
        Some(format!("node {:?} is not known", ep.node))
    } else if !net.subnet.contains(&ep.ip) || ep.ip == net.gateway_ip() {
        Some(format!(
            "{} is not a host address of {} other than the gateway",
            ep.ip, net.subnet
        ))
    } else if !ep.mac().is_unicast() || ep.mac() == MacAddr::gateway(net.vni) {
        Some(format!("MAC {} is not a usable unicast address", ep.mac()))
    } else {
        None
    }
}

impl ClusterTables {
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Checks every entry; the valid ones are kept, the others reported in `rejected`.
    pub fn validate(mut self) -> ValidTables {
        let mut out = ValidTables::default();
        let mut vnis = BTreeSet::new();
        for n in &self.networks {
            let problem = if !(1..=VNI_MAX).contains(&n.vni) {
                Some(format!("VNI {} is outside 1..={VNI_MAX}", n.vni))
            } else if !vnis.insert(n.vni) {
                Some(format!("VNI {} is already used by another network", n.vni))
            } else if out.networks.contains_key(&n.name) {
                Some("the name is already used".to_owned())
            } else if !n.subnet.contains(&n.gateway_ip()) {
                Some(format!(
                    "gateway {} is outside {}",
                    n.gateway_ip(),
                    n.subnet
                ))
            } else {
                None
            };
            match problem {
                Some(p) => out.rejected.push(format!("network {:?}: {p}", n.name)),
                None => {
                    out.networks.insert(n.name.clone(), n.clone());
                }
            }
        }
        let mut vteps = BTreeSet::new();
        for n in &self.nodes {
            if out.nodes.contains_key(&n.name) {
                out.rejected
                    .push(format!("node {:?}: the name is already used", n.name));
            } else if !vteps.insert(n.vtep_ip) {
                out.rejected.push(format!(
                    "node {:?}: VTEP {} is already used by another node",
                    n.name, n.vtep_ip
                ));
            } else {
                out.nodes.insert(n.name.clone(), n.clone());
            }
        }
        let mut ips = BTreeSet::new();
        let mut macs = BTreeSet::new();
        // Moved, not cloned: at 100k endpoints a second copy is tens of MB.
        for ep in std::mem::take(&mut self.endpoints) {
            let what = || format!("endpoint {} in {:?}", ep.ip, ep.network);
            let Some(net) = out.networks.get(&ep.network) else {
                out.rejected.push(format!("{}: no such network", what()));
                continue;
            };
            let problem = if let Some(p) = endpoint_problem(&ep, net, &out.nodes) {
                Some(p)
            } else if !ips.insert((net.vni, ep.ip)) {
                Some("the IP is already used in this network".to_owned())
            } else if !macs.insert((net.vni, ep.mac())) {
                Some(format!("MAC {} is already used in this network", ep.mac()))
            } else {
                None
            };
            match problem {
                Some(p) => out.rejected.push(format!("{}: {p}", what())),
                None => out.endpoints.push(ep),
            }
        }
        self.validate_services(&mut out);
        out
    }

    /// Services whose network exists, with the backends that are running endpoints of it
    /// now: a backend whose endpoint is gone (its node's lease expired, its container
    /// deleted) leaves the table; an endpoint labelled `NAME:PORT` joins service NAME.
    fn validate_services(&self, out: &mut ValidTables) {
        let mut names = BTreeSet::new();
        let mut vips = BTreeSet::new();
        for svc in &self.services {
            let what = format!("service {:?}", svc.name);
            let Some(net) = out.networks.get(&svc.network) else {
                out.rejected
                    .push(format!("{what}: network {:?} does not exist", svc.network));
                continue;
            };
            let problem = if !names.insert(svc.name.clone()) {
                Some("the name is already used".to_owned())
            } else if net.subnet.contains(&svc.vip) {
                Some(format!(
                    "VIP {} is inside the network's subnet {}: pick an address outside it",
                    svc.vip, net.subnet
                ))
            } else if svc.port == 0 {
                Some("port 0 is not a service port".to_owned())
            } else if !vips.insert((net.vni, svc.vip, svc.port, svc.proto)) {
                Some(format!(
                    "{}:{}/{} is already used by another service",
                    svc.vip, svc.port, svc.proto
                ))
            } else {
                None
            };
            if let Some(p) = problem {
                out.rejected.push(format!("{what}: {p}"));
                continue;
            }
            // Running endpoints of the network (reserved addresses have no interface yet).
            let running: BTreeMap<Ipv4Addr, &EndpointSpec> = out
                .endpoints
                .iter()
                .filter(|e| e.network == svc.network && !e.reserved)
                .map(|e| (e.ip, e))
                .collect();
            let mut backends: BTreeMap<(Ipv4Addr, u16), u32> = BTreeMap::new();
            for b in &svc.backends {
                if b.weight > 0 && running.contains_key(&b.ip) {
                    backends.insert((b.ip, b.port), b.weight.min(MAX_WEIGHT));
                }
            }
            for ep in running.values() {
                for label in &ep.services {
                    if let Ok((name, port)) = parse_service_label(label) {
                        if name == svc.name {
                            backends.entry((ep.ip, port)).or_insert(1);
                        }
                    }
                }
            }
            out.services.push(ValidService {
                name: svc.name.clone(),
                vni: net.vni,
                vip: svc.vip,
                port: svc.port,
                proto: svc.proto,
                backends: backends
                    .into_iter()
                    .map(|((ip, port), weight)| BackendSpec { ip, port, weight })
                    .collect(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_errors() {
        let mac: MacAddr = "0a:58:c6:13:01:0b".parse().unwrap();
        assert_eq!(mac.to_string(), "0a:58:c6:13:01:0b");
        assert!("0a:58:c6:13:01".parse::<MacAddr>().is_err());
        assert!("0a:58:c6:13:01:zz".parse::<MacAddr>().is_err());
        assert!("0a:58:c6:13:01:0b:00".parse::<MacAddr>().is_err());
        assert!(!MacAddr([1, 0, 0, 0, 0, 1]).is_unicast());
    }

    #[test]
    fn bad_entries_are_skipped_with_a_reason() {
        let tables = ClusterTables::from_json(
            r#"{
              "networks": [
                {"name": "red", "vni": 100, "subnet": "198.19.1.0/24"},
                {"name": "dup-vni", "vni": 100, "subnet": "198.19.9.0/24"},
                {"name": "huge", "vni": 16777216, "subnet": "198.19.8.0/24"},
                {"name": "bad-gw", "vni": 7, "subnet": "198.19.7.0/24", "gateway": "198.19.6.1"}
              ],
              "nodes": [{"name": "a", "vtep_ip": "198.18.0.1"}, {"name": "b", "vtep_ip": "198.18.0.1"}],
              "endpoints": [
                {"network": "red", "ip": "198.19.1.2", "node": "a"},
                {"network": "red", "ip": "198.19.1.2", "node": "a", "mac": "02:00:00:00:00:09"},
                {"network": "red", "ip": "198.19.1.3", "node": "a", "mac": "0a:58:c6:13:01:02"},
                {"network": "red", "ip": "198.19.2.3", "node": "a"},
                {"network": "red", "ip": "198.19.1.1", "node": "a"},
                {"network": "red", "ip": "198.19.1.4", "node": "ghost"},
                {"network": "blue", "ip": "198.19.1.5", "node": "a"},
                {"network": "red", "ip": "198.19.1.6", "node": "a", "mac": "ff:ff:ff:ff:ff:ff"}
              ]
            }"#,
        )
        .unwrap();
        let valid = tables.validate();
        assert_eq!(valid.networks.keys().collect::<Vec<_>>(), ["red"]);
        assert_eq!(valid.nodes.len(), 1);
        assert_eq!(valid.endpoints.len(), 1);
        assert_eq!(valid.rejected.len(), 3 + 1 + 7, "{:#?}", valid.rejected);
        assert!(valid
            .rejected
            .iter()
            .any(|r| r.contains("already used by another network")));
        assert!(valid
            .rejected
            .iter()
            .any(|r| r.contains("MAC 0a:58:c6:13:01:02 is already used")));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../deploy/tables.example.json");
        let valid = ClusterTables::from_json(text).unwrap().validate();
        assert!(valid.rejected.is_empty(), "{:?}", valid.rejected);
        assert_eq!(valid.endpoints.len(), 2);
    }

    #[test]
    fn services_keep_live_backends_and_labelled_endpoints() {
        let tables = ClusterTables::from_json(
            r#"{
              "networks": [{"name": "red", "vni": 100, "subnet": "198.19.1.0/24"}],
              "nodes": [{"name": "a", "vtep_ip": "198.18.0.1"}],
              "endpoints": [
                {"network": "red", "ip": "198.19.1.2", "node": "a", "host_ifname": "v2"},
                {"network": "red", "ip": "198.19.1.3", "node": "a", "host_ifname": "v3", "services": ["web:8080"]},
                {"network": "red", "ip": "198.19.1.4", "node": "a", "reserved": true, "services": ["web:8080"]},
                {"network": "red", "ip": "198.19.1.5", "node": "ghost", "host_ifname": "v5"}
              ],
              "services": [
                {"name": "web", "network": "red", "vip": "198.19.250.1", "port": 80, "proto": "tcp",
                 "backends": [{"ip": "198.19.1.2", "port": 8080, "weight": 3}, {"ip": "198.19.1.5", "port": 8080}]},
                {"name": "inside", "network": "red", "vip": "198.19.1.200", "port": 80, "proto": "tcp"},
                {"name": "dup", "network": "red", "vip": "198.19.250.1", "port": 80, "proto": "tcp"},
                {"name": "udp-same-vip", "network": "red", "vip": "198.19.250.1", "port": 80, "proto": "udp"},
                {"name": "lost", "network": "blue", "vip": "198.19.250.2", "port": 80, "proto": "tcp"}
              ]
            }"#,
        )
        .unwrap();
        let valid = tables.validate();
        let names: Vec<_> = valid.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "udp-same-vip"], "{:#?}", valid.rejected);
        let web = &valid.services[0];
        // 198.19.1.5's node is unknown (dead), .4 is only reserved: neither is a backend.
        assert_eq!(
            web.backends,
            vec![
                "198.19.1.2:8080@3".parse::<BackendSpec>().unwrap(),
                "198.19.1.3:8080".parse().unwrap()
            ]
        );
        assert!(valid
            .rejected
            .iter()
            .any(|r| r.contains("inside the network's subnet")));
        assert!(valid
            .rejected
            .iter()
            .any(|r| r.contains("already used by another service")));
        assert!(valid
            .rejected
            .iter()
            .any(|r| r.contains("\"blue\" does not exist")));
    }

    #[test]
    fn backend_and_label_syntax() {
        let b: BackendSpec = "198.19.1.2:80@5".parse().unwrap();
        assert_eq!((b.port, b.weight), (80, 5));
        assert_eq!("198.19.1.2:80".parse::<BackendSpec>().unwrap().weight, 1);
        for bad in [
            "198.19.1.2",
            "198.19.1.2:80@0",
            "198.19.1.2:80@x",
            "host:80",
            "198.19.1.2:80@1001",
        ] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad}");
        }
        assert_eq!(
            parse_service_label("web:8080").unwrap(),
            ("web".into(), 8080)
        );
        for bad in ["web", "web:0", ":80", "w b:80", "web:99999"] {
            assert!(parse_service_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = ClusterTables::from_json(r#"{"networks": [], "nodez": []}"#).unwrap_err();
        assert!(err.to_string().contains("nodez"), "{err}");
    }
}
