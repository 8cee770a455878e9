//! Validation of the tables entry by entry: a bad entry is skipped with a typed reason,
//! never allowed to poison the rest.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use overlay_api::labels::parse_service_label;
use overlay_common::wire::VNI_MAX;
use serde::Serialize;

use super::MacAddr;
use super::{
    BackendSpec, ClusterTables, EndpointIface, EndpointSpec, NetworkSpec, NodeSpec, ValidService,
    ValidTables, MAX_WEIGHT,
};

/// What a rejection is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Network(String),
    Node(String),
    /// Named by its key address (IPv4, or IPv6 on an IPv6-only network).
    Endpoint {
        network: String,
        ip: IpAddr,
    },
    Service(String),
}

/// An entry that was left out, and why (one line, saying what to fix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub subject: Subject,
    pub reason: String,
}

impl Rejection {
    pub fn new(subject: Subject, reason: impl Into<String>) -> Self {
        Self {
            subject,
            reason: reason.into(),
        }
    }

    /// Whether the rejection is about an endpoint or a node: a delta pass cannot decide
    /// those the way a full pass would, so while one stands every pass is full.
    pub fn blocks_delta(&self) -> bool {
        matches!(self.subject, Subject::Endpoint { .. } | Subject::Node(_))
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Network(n) => write!(f, "network {n:?}: {}", self.reason),
            Subject::Node(n) => write!(f, "node {n:?}: {}", self.reason),
            Subject::Endpoint { network, ip } => {
                write!(f, "endpoint {ip} in {network:?}: {}", self.reason)
            }
            Subject::Service(n) => write!(f, "service {n:?}: {}", self.reason),
        }
    }
}

/// Rejections are one line each in status.json.
impl Serialize for Rejection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
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
    } else if let Some(p) = ipv4_problem(ep, net) {
        Some(p)
    } else if !ep.mac().is_unicast() || ep.mac() == MacAddr::gateway(net.vni) {
        Some(format!("MAC {} is not a usable unicast address", ep.mac()))
    } else {
        // A full pass keeps a dual-stack endpoint without the address (see `validate`); an
        // IPv6-only one has nothing else.
        ipv6_problem(ep, net).map(|p| match ep.ip {
            Some(_) => "its IPv6 address is not usable".to_owned(),
            None => p,
        })
    }
}

/// What is wrong with an endpoint's IPv4 address, if anything: a network with an IPv4
/// subnet names its endpoints by their IPv4 address, an IPv6-only one has none.
fn ipv4_problem(ep: &EndpointSpec, net: &NetworkSpec) -> Option<String> {
    match (ep.ip, net.subnet.zip(net.gateway_ip())) {
        (Some(ip), Some((subnet, gateway))) => (!subnet.contains(&ip) || ip == gateway)
            .then(|| format!("{ip} is not a host address of {subnet} other than the gateway")),
        (None, Some((subnet, _))) => Some(format!(
            "the network has IPv4 subnet {subnet}: its endpoints need an IPv4 address"
        )),
        (Some(ip), None) => Some(format!("{ip}: the network is IPv6-only")),
        (None, None) => None,
    }
}

/// What is wrong with an endpoint's IPv6 address, if anything: it must be a host address of
/// the network's IPv6 subnet other than the gateway, and only a dual-stack network has one.
pub fn ipv6_problem(ep: &EndpointSpec, net: &NetworkSpec) -> Option<String> {
    let ip6 = ep.ip6?;
    let (Some(subnet), Some(gateway)) = (net.subnet6, net.gateway_ip6()) else {
        return Some(format!("{ip6}: the network has no IPv6 subnet"));
    };
    (!subnet.contains(&ip6) || ip6 == gateway || ip6 == subnet.network())
        .then(|| format!("{ip6} is not a host address of {subnet} other than the gateway"))
}

impl ClusterTables {
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
            } else if n.subnet.is_none() && n.subnet6.is_none() {
                Some("a network needs an IPv4 subnet, an IPv6 one, or both".to_owned())
            } else if n.subnet.is_none() && n.gateway.is_some() {
                Some("an IPv4 gateway needs an IPv4 subnet".to_owned())
            } else if let Some((subnet, gw)) =
                n.subnet.zip(n.gateway_ip()).filter(|(s, g)| !s.contains(g))
            {
                Some(format!("gateway {gw} is outside {subnet}"))
            } else if n.subnet6.is_none() && n.gateway6.is_some() {
                Some("an IPv6 gateway needs an IPv6 subnet (subnet6)".to_owned())
            } else if let Some((s6, g6)) = n
                .subnet6
                .zip(n.gateway_ip6())
                .filter(|(s6, g6)| !s6.contains(g6) || *g6 == s6.network())
            {
                Some(format!("IPv6 gateway {g6} is not a host address of {s6}"))
            } else {
                None
            };
            match problem {
                Some(p) => out
                    .rejected
                    .push(Rejection::new(Subject::Network(n.name.clone()), p)),
                None => {
                    out.networks.insert(n.name.clone(), n.clone());
                }
            }
        }
        let mut vteps = BTreeSet::new();
        for n in &self.nodes {
            let node = || Subject::Node(n.name.clone());
            if out.nodes.contains_key(&n.name) {
                out.rejected
                    .push(Rejection::new(node(), "the name is already used"));
            } else if n.vtep_ip.is_none() && n.vtep_ip6.is_none() {
                out.rejected.push(Rejection::new(
                    node(),
                    "it has no VTEP address (vtep_ip or vtep_ip6)",
                ));
            } else if let Some((ip, why)) = n
                .vteps()
                .addrs()
                .find_map(|ip| crate::vtep::unusable(ip).map(|why| (ip, why)))
            {
                out.rejected.push(Rejection::new(
                    node(),
                    format!("VTEP {ip} cannot be a VTEP address: it is {why}"),
                ));
            } else if let Some(ip) = n
                .vteps()
                .addrs()
                .find(|ip| vteps.contains(&crate::vtep::key(*ip)))
            {
                out.rejected.push(Rejection::new(
                    node(),
                    format!("VTEP {ip} is already used by another node"),
                ));
            } else {
                vteps.extend(n.vteps().addrs().map(crate::vtep::key));
                out.nodes.insert(n.name.clone(), n.clone());
            }
        }
        let mut ips = BTreeSet::new();
        let mut ip6s = BTreeSet::new();
        let mut macs = BTreeSet::new();
        // Moved, not cloned: at 100k endpoints a second copy is tens of MB.
        for mut ep in std::mem::take(&mut self.endpoints) {
            let (network, key_ip) = (ep.network.clone(), ep.key_ip());
            let subject = || Subject::Endpoint {
                network: network.clone(),
                ip: key_ip,
            };
            let Some(net) = out.networks.get(&ep.network) else {
                out.rejected
                    .push(Rejection::new(subject(), "no such network"));
                continue;
            };
            // A bad IPv6 claim (its network lost its IPv6 subnet, say) costs a dual-stack
            // endpoint its IPv6 address, never its IPv4 traffic.
            if let Some(p) = ipv6_problem(&ep, net).filter(|_| ep.ip.is_some()) {
                out.rejected
                    .push(Rejection::new(subject(), format!("IPv6 left out: {p}")));
                ep.ip6 = None;
            }
            let problem = if let Some(p) = endpoint_problem(&ep, net, &out.nodes) {
                Some(p)
            } else if ep.ip.is_some_and(|ip| !ips.insert((net.vni, ip))) {
                Some("the IP is already used in this network".to_owned())
            } else if ep.ip6.is_some_and(|ip6| !ip6s.insert((net.vni, ip6))) {
                Some("the IPv6 address is already used in this network".to_owned())
            } else if !macs.insert((net.vni, ep.mac())) {
                Some(format!("MAC {} is already used in this network", ep.mac()))
            } else {
                None
            };
            match problem {
                Some(p) => out.rejected.push(Rejection::new(subject(), p)),
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
            let subject = || Subject::Service(svc.name.clone());
            let Some(net) = out.networks.get(&svc.network) else {
                out.rejected.push(Rejection::new(
                    subject(),
                    format!("network {:?} does not exist", svc.network),
                ));
                continue;
            };
            let problem = if !names.insert(svc.name.clone()) {
                Some("the name is already used".to_owned())
            } else if let Some(p) = vip_in_network(svc.vip, &net.name, net.subnet, net.subnet6) {
                Some(p)
            } else if let Some(p) = vip_problem(svc.vip) {
                Some(p)
            } else if let Some(node) = out.nodes.values().find(|n| n.vteps().has(svc.vip)) {
                Some(format!(
                    "VIP {} is node {:?}'s VTEP address: pick an address no host has",
                    svc.vip, node.name
                ))
            } else if svc.port == 0 {
                Some("port 0 is not a service port".to_owned())
            } else if let Some(b) = svc.backends.iter().find(|b| b.port == 0) {
                Some(format!(
                    "backend {} has no port",
                    std::net::SocketAddr::new(b.ip, 0)
                ))
            } else if let Some(b) = svc
                .backends
                .iter()
                .find(|b| b.ip.is_ipv6() != svc.vip.is_ipv6())
            {
                Some(format!(
                    "backend {} is not of VIP {}'s address family: give {} backends",
                    b.ip,
                    svc.vip,
                    if svc.vip.is_ipv6() { "IPv6" } else { "IPv4" }
                ))
            } else if !vips.insert((net.vni, svc.vip, svc.port, svc.proto)) {
                Some(format!(
                    "{}/{} is already used by another service",
                    std::net::SocketAddr::new(svc.vip, svc.port),
                    svc.proto
                ))
            } else {
                None
            };
            if let Some(p) = problem {
                out.rejected.push(Rejection::new(subject(), p));
                continue;
            }
            // Running endpoints of the network (reserved addresses have no interface yet), by
            // their address of the VIP's family.
            let running: BTreeMap<IpAddr, &EndpointSpec> = out
                .endpoints
                .iter()
                .filter(|e| e.network == svc.network && e.iface != EndpointIface::Reserved)
                .filter_map(|e| match svc.vip {
                    IpAddr::V4(_) => e.ip.map(|ip| (IpAddr::V4(ip), e)),
                    IpAddr::V6(_) => e.ip6.map(|ip6| (IpAddr::V6(ip6), e)),
                })
                .collect();
            let mut backends: BTreeMap<(IpAddr, u16), u32> = BTreeMap::new();
            for b in &svc.backends {
                if b.weight > 0 && running.contains_key(&b.ip) {
                    backends.insert((b.ip, b.port), b.weight.min(MAX_WEIGHT));
                }
            }
            for (ip, ep) in &running {
                for label in &ep.services {
                    if let Ok((name, port)) = parse_service_label(label) {
                        if name == svc.name {
                            backends.entry((*ip, port)).or_insert(1);
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

/// Why `vip` cannot be a VIP of `net`, if it cannot: inside the network's subnet of its
/// family, or IPv6 on a network without IPv6.
pub fn vip_in_network(
    vip: IpAddr,
    network: &str,
    subnet: Option<ipnet::Ipv4Net>,
    subnet6: Option<ipnet::Ipv6Net>,
) -> Option<String> {
    let inside = |s: &dyn std::fmt::Display| {
        Some(format!(
            "VIP {vip} is inside network {network:?}'s subnet {s}: pick an address outside it"
        ))
    };
    match (vip, subnet, subnet6) {
        (IpAddr::V4(_), None, _) => Some(format!(
            "VIP {vip} is IPv4 but network {network:?} is IPv6-only: use an IPv6 VIP"
        )),
        (IpAddr::V4(ip), Some(s), _) if s.contains(&ip) => inside(&s),
        (IpAddr::V6(_), _, None) => Some(format!(
            "VIP {vip} is IPv6 but network {network:?} has no IPv6 subnet: add one or use an IPv4 VIP"
        )),
        (IpAddr::V6(ip), _, Some(s)) if s.contains(&ip) => inside(&s),
        _ => None,
    }
}

/// Why `vip` cannot be a service address, if it cannot: addresses a host treats as its own or
/// as not one host's (loopback, unspecified, broadcast, multicast, link-local) would never
/// reach the balancer, or would reach something else.
pub fn vip_problem(vip: IpAddr) -> Option<String> {
    let what = match vip {
        _ if vip.is_unspecified() => "the unspecified address",
        _ if vip.is_loopback() => "a loopback address",
        _ if vip.is_multicast() => "a multicast address",
        IpAddr::V4(ip) if ip.is_broadcast() => "the broadcast address",
        IpAddr::V4(ip) if ip.is_link_local() => "a link-local address",
        IpAddr::V6(ip) if ip.is_unicast_link_local() => "a link-local address",
        IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some() => {
            "an IPv4-mapped address (give the IPv4 address itself)"
        }
        _ => return None,
    };
    Some(format!(
        "VIP {vip} is {what}: pick a unicast address outside every network's subnet"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(valid: &ValidTables, text: &str) -> bool {
        valid.rejected.iter().any(|r| r.to_string().contains(text))
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
        assert!(has(&valid, "already used by another network"));
        assert!(has(&valid, "MAC 0a:58:c6:13:01:02 is already used"));
        assert_eq!(
            valid
                .rejected
                .iter()
                .filter(|r| matches!(r.subject, Subject::Endpoint { .. }))
                .count(),
            7
        );
        assert!(valid.rejected.iter().filter(|r| r.blocks_delta()).count() == 8);
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
        assert!(has(&valid, "inside network \"red\"'s subnet"));
        assert!(has(&valid, "already used by another service"));
        assert!(has(&valid, "\"blue\" does not exist"));
    }

    /// An IPv6-only network's endpoints have an IPv6 address and no IPv4 one; an endpoint
    /// of the other kind on either kind of network is refused, as is an endpoint without
    /// any address.
    #[test]
    fn ipv6_only_networks_take_ipv6_only_endpoints() {
        let tables = ClusterTables::from_json(
            r#"{
              "networks": [
                {"name": "six", "vni": 300, "subnet6": "2001:2:0:1090::/64"},
                {"name": "red", "vni": 100, "subnet": "198.19.1.0/24", "subnet6": "2001:2:0:1001::/64"},
                {"name": "none", "vni": 7}
              ],
              "nodes": [{"name": "a", "vtep_ip": "198.18.0.1"}],
              "endpoints": [
                {"network": "six", "ip6": "2001:2:0:1090::2", "node": "a"},
                {"network": "six", "ip6": "2001:2:0:1090::3", "node": "a", "mac": "0e:58:00:00:00:01"},
                {"network": "six", "ip6": "2001:2:0:1090::4", "node": "a", "mac": "0e:58:00:00:00:01"},
                {"network": "six", "ip6": "2001:2:0:1090::1", "node": "a"},
                {"network": "six", "ip": "198.19.1.9", "ip6": "2001:2:0:1090::5", "node": "a"},
                {"network": "red", "ip6": "2001:2:0:1001::6", "node": "a"}
              ]
            }"#,
        )
        .unwrap();
        let valid = tables.validate();
        assert_eq!(valid.networks.keys().collect::<Vec<_>>(), ["red", "six"]);
        let kept: Vec<_> = valid
            .endpoints
            .iter()
            .map(|e| e.key_ip().to_string())
            .collect();
        assert_eq!(
            kept,
            ["2001:2:0:1090::2", "2001:2:0:1090::3"],
            "{:#?}",
            valid.rejected
        );
        assert_eq!(
            valid.endpoints[0].mac(),
            MacAddr::from_ip6("2001:2:0:1090::2".parse().unwrap(), 0)
        );
        assert!(has(&valid, "needs an IPv4 subnet, an IPv6 one, or both"));
        assert!(has(&valid, "MAC 0e:58:00:00:00:01 is already used"));
        assert!(has(&valid, "2001:2:0:1090::1 is not a host address"));
        assert!(has(&valid, "198.19.1.9: the network is IPv6-only"));
        assert!(has(&valid, "its endpoints need an IPv4 address"));
        let none = ClusterTables::from_json(r#"{"endpoints": [{"network": "six", "node": "a"}]}"#);
        assert!(none.unwrap_err().contains("needs an address"));
    }

    /// An IPv6 service's backends are the endpoints' IPv6 addresses (by label too); an IPv6
    /// VIP needs a network with IPv6, and backends of its own family.
    #[test]
    fn ipv6_services_take_ipv6_backends() {
        let tables = ClusterTables::from_json(
            r#"{
              "networks": [
                {"name": "red", "vni": 100, "subnet": "198.19.1.0/24", "subnet6": "2001:2:0:1001::/64"},
                {"name": "blue", "vni": 200, "subnet": "198.19.2.0/24"}
              ],
              "nodes": [{"name": "a", "vtep_ip": "198.18.0.1"}],
              "endpoints": [
                {"network": "red", "ip": "198.19.1.2", "ip6": "2001:2:0:1001::2", "node": "a", "host_ifname": "v2"},
                {"network": "red", "ip": "198.19.1.3", "ip6": "2001:2:0:1001::3", "node": "a", "host_ifname": "v3", "services": ["web6:8080", "web4:8080"]},
                {"network": "red", "ip": "198.19.1.4", "node": "a", "host_ifname": "v4", "services": ["web6:8080"]}
              ],
              "services": [
                {"name": "web6", "network": "red", "vip": "2001:2:0:1200::1", "port": 80, "proto": "tcp",
                 "backends": [{"ip": "2001:2:0:1001::2", "port": 8080, "weight": 2}]},
                {"name": "web4", "network": "red", "vip": "198.19.250.1", "port": 80, "proto": "tcp"},
                {"name": "no-v6", "network": "blue", "vip": "2001:2:0:1200::2", "port": 80, "proto": "tcp"},
                {"name": "mixed", "network": "red", "vip": "2001:2:0:1200::3", "port": 80, "proto": "tcp",
                 "backends": [{"ip": "198.19.1.2", "port": 8080}]},
                {"name": "inside6", "network": "red", "vip": "2001:2:0:1001::99", "port": 80, "proto": "tcp"}
              ]
            }"#,
        )
        .unwrap();
        let valid = tables.validate();
        let names: Vec<_> = valid.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web6", "web4"], "{:#?}", valid.rejected);
        // .4 has no IPv6 address: labelled, but not a backend of an IPv6 service.
        assert_eq!(
            valid.services[0].backends,
            vec![
                "[2001:2:0:1001::2]:8080@2".parse::<BackendSpec>().unwrap(),
                "[2001:2:0:1001::3]:8080".parse().unwrap()
            ]
        );
        assert_eq!(
            valid.services[1].backends,
            vec!["198.19.1.3:8080".parse::<BackendSpec>().unwrap()]
        );
        assert!(has(&valid, "network \"blue\" has no IPv6 subnet"));
        assert!(has(&valid, "not of VIP 2001:2:0:1200::3's address family"));
        assert!(has(
            &valid,
            "inside network \"red\"'s subnet 2001:2:0:1001::/64"
        ));
    }
}
