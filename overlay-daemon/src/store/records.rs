//! Values stored in etcd: JSON, each with `"version": 1`. Anything else under the prefix
//! (garbage, another version, a record that does not validate) is skipped with a reason.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use overlay_api::{Attachment, Endpoint};

use crate::{
    tables::MacAddr,
    vtep::{Prefer, Vteps},
};

pub const RECORD_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub version: u32,
    pub vni: u32,
    /// The IPv4 subnet; absent on IPv6-only networks (0.3 and later: earlier releases skip
    /// such a record as unreadable, so they install nothing of the network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// Prefix length of the address blocks nodes claim (default 26: 64 addresses).
    #[serde(default = "default_block_len")]
    pub block_len: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The IPv6 subnet of a dual-stack network. Absent before 0.3 and on IPv4 networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// Prefix length of the IPv6 blocks nodes claim (default 96).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_len6: Option<u8>,
    /// Where `service add` without `--vip` takes a service's VIP from, per family (0.3 and
    /// later; earlier releases ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_range: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_range6: Option<Ipv6Net>,
}

impl NetworkRecord {
    /// What every front end checks before writing a network, as a one-line error: the same
    /// rules the daemons validate against, so a network they would reject is never created.
    pub fn check(&self, name: &str) -> Result<(), String> {
        use overlay_common::wire::VNI_MAX;
        if !super::keys::valid_name(name) {
            return Err(format!(
                "network name {name:?}: use letters, digits, '.', '_' and '-'"
            ));
        }
        if !(1..=VNI_MAX).contains(&self.vni) {
            return Err(format!("VNI {} is outside 1..={VNI_MAX}", self.vni));
        }
        match self.subnet {
            Some(subnet) => {
                crate::ipam::check_blocks(subnet, self.block_len).map_err(|e| e.to_string())?;
                let gateway = crate::tables::default_gateway(subnet);
                let gateway = self.gateway.unwrap_or(gateway);
                if !subnet.contains(&gateway) {
                    return Err(format!("gateway {gateway} is outside {subnet}"));
                }
                if subnet.contains(&Ipv4Addr::UNSPECIFIED) {
                    return Err(format!(
                        "subnet {subnet} holds 0.0.0.0, which means \"no address\": pick another"
                    ));
                }
            }
            None if self.subnet6.is_none() => {
                return Err("a network needs an IPv4 subnet, an IPv6 one, or both".into())
            }
            None if self.gateway.is_some() => {
                return Err("an IPv4 gateway needs an IPv4 subnet".into())
            }
            None => {}
        }
        self.check_ipv6()?;
        self.check_service_ranges()
    }

    /// A service range holds VIPs, which must be outside the subnet of their family.
    pub fn check_service_ranges(&self) -> Result<(), String> {
        if let Some(range) = self.service_range {
            if let Some(subnet) = self.subnet {
                if subnet.contains(&range.network()) || range.contains(&subnet.network()) {
                    return Err(format!(
                        "service range {range} overlaps the subnet {subnet}: VIPs are outside it"
                    ));
                }
            }
            if range.prefix_len() > 30 {
                return Err(format!(
                    "service range {range} holds no VIPs: give /30 or larger"
                ));
            }
        }
        if let Some(range) = self.service_range6 {
            match self.subnet6 {
                None => return Err("an IPv6 service range needs an IPv6 subnet".into()),
                Some(subnet)
                    if subnet.contains(&range.network()) || range.contains(&subnet.network()) =>
                {
                    return Err(format!(
                        "service range {range} overlaps the subnet {subnet}: VIPs are outside it"
                    ));
                }
                Some(_) => {}
            }
            if range.prefix_len() > 126 {
                return Err(format!(
                    "service range {range} holds no VIPs: give /126 or larger"
                ));
            }
        }
        Ok(())
    }

    /// The IPv6 side alone (daemons reading a record whose IPv6 side is wrong keep the
    /// network as IPv4 only).
    pub fn check_ipv6(&self) -> Result<(), String> {
        if let Some(v6) = self.ipv6() {
            // IPv4-mapped addresses name IPv4 hosts; an endpoint key of one is not parsed.
            let mapped: Ipv6Net = "::ffff:0:0/96".parse().expect("a prefix");
            if v6.subnet.contains(&mapped.network()) || mapped.contains(&v6.subnet.network()) {
                return Err(format!(
                    "IPv6 subnet {} overlaps ::ffff:0:0/96 (IPv4-mapped addresses): pick another",
                    v6.subnet
                ));
            }
            crate::ipam::check_blocks6(v6.subnet, v6.block_len).map_err(|e| e.to_string())?;
            if !v6.subnet.contains(&v6.gateway) || v6.gateway == v6.subnet.network() {
                return Err(format!(
                    "IPv6 gateway {} is not a host address of {}",
                    v6.gateway, v6.subnet
                ));
            }
        } else if self.gateway6.is_some() || self.block_len6.is_some() {
            return Err("an IPv6 gateway or block length needs an IPv6 subnet".into());
        }
        Ok(())
    }

    /// The network's IPv6 side, if it is dual-stack.
    pub fn ipv6(&self) -> Option<Net6> {
        let subnet = self.subnet6?;
        Some(Net6 {
            subnet,
            gateway: self
                .gateway6
                .unwrap_or_else(|| crate::tables::default_gateway6(subnet)),
            block_len: self.block_len6.unwrap_or(DEFAULT_BLOCK_LEN6),
        })
    }

    /// The IPv4 gateway containers route through: configured, or the subnet's first host
    /// (none on an IPv6-only network).
    pub fn gateway_ip(&self) -> Option<Ipv4Addr> {
        let subnet = self.subnet?;
        Some(
            self.gateway
                .unwrap_or_else(|| crate::tables::default_gateway(subnet)),
        )
    }
}

fn default_block_len() -> u8 {
    26
}

/// IPv6 blocks a node claims: a /96 holds 2^32 addresses, and a /64 has 2^32 of them.
pub const DEFAULT_BLOCK_LEN6: u8 = 96;

/// A dual-stack network's IPv6 subnet, gateway and block length, defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net6 {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
    pub block_len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub version: u32,
    /// The node's IPv4 VTEP. Absent on a node with an IPv6-only underlay, whose record
    /// releases before 0.3 cannot read (they skip it: they could not reach it anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip: Option<Ipv4Addr>,
    /// The node's IPv6 VTEP, if it has one. Absent from records of releases before 0.3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip6: Option<Ipv6Addr>,
    /// The family the node would rather use with peers that have both (`vtep::Vteps::toward`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub vtep_prefer: Prefer,
    pub vtep_mac: MacAddr,
    /// Seconds since the epoch when this incarnation registered.
    pub registered_at: u64,
    /// Which daemon holds the name: random, kept in its run directory across restarts.
    /// Absent from first-release records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The largest MTU containers can have on this node (underlay - 50, or - 70 with an IPv6 VTEP). Absent from
    /// first-release records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_mtu: Option<u32>,
    /// The release of the daemon that wrote it (so a rollout shows which nodes run which).
    /// Absent from records of releases before 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

impl NodeRecord {
    /// The record if its VTEP addresses can be used: at least one, none that no peer can
    /// send to or that aliases another's key (`vtep::unusable`). Else why not.
    pub fn checked(self) -> Result<Self, String> {
        let Some(vteps) = self.vteps() else {
            return Err("the node has no VTEP address (vtep_ip or vtep_ip6)".into());
        };
        match vteps
            .addrs()
            .find_map(|ip| crate::vtep::unusable(ip).map(|why| (ip, why)))
        {
            Some((ip, why)) => Err(format!("VTEP {ip} cannot be a VTEP address: it is {why}")),
            None => Ok(self),
        }
    }

    /// The node's VTEP addresses; `None` for a record with neither (skipped as bad data).
    pub fn vteps(&self) -> Option<Vteps> {
        (self.vtep_ip.is_some() || self.vtep_ip6.is_some()).then_some(Vteps {
            v4: self.vtep_ip,
            v6: self.vtep_ip6,
            prefer: self.vtep_prefer,
        })
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub version: u32,
    pub node: String,
}

/// An endpoint (the key names its network and address). On the wire `host_ifname` is empty
/// for a reserved address, as the first release wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EndpointRecordWire", into = "EndpointRecordWire")]
pub struct EndpointRecord {
    pub version: u32,
    pub mac: MacAddr,
    pub node: String,
    pub container_id: String,
    pub attachment: Attachment,
    /// Interface name inside the container.
    pub ifname: String,
    /// `NAME:PORT` labels: the endpoint is a backend of these services while it exists.
    pub services: Vec<String>,
}

/// Who an endpoint belongs to (`endpointinfo/<network>/<ip>`, 0.3 and later), written with
/// the endpoint's record under the same lease when there is something to say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfoRecord {
    pub version: u32,
    /// The endpoint's container: an info key a previous endpoint of the address left
    /// behind (a 0.2 node deletes only the record) names another.
    pub container_id: String,
    /// The Kubernetes pod it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<overlay_api::Pod>,
    /// The Docker endpoint id, once Docker created the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_endpoint: Option<String>,
    /// The container's name as its runtime gave it, outside Kubernetes (podman's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its bandwidth limits, which its own node enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<overlay_api::Bandwidth>,
}

impl EndpointInfoRecord {
    /// What there is to say of a local endpoint, if anything.
    pub fn of(ep: &Endpoint) -> Option<Self> {
        let something = ep.pod.is_some()
            || ep.docker_endpoint.is_some()
            || ep.name.is_some()
            || ep.bandwidth.is_some();
        something.then(|| Self {
            version: RECORD_VERSION,
            container_id: ep.container_id.clone(),
            pod: ep.pod.clone(),
            docker_endpoint: ep.docker_endpoint.clone(),
            name: ep.name.clone(),
            bandwidth: ep.bandwidth,
        })
    }

    /// The endpoint's DNS name relative to its network: `<pod>.<namespace>` for a pod, the
    /// runtime's name for a container (podman's), none for what does not make DNS labels.
    pub fn dns_name(&self) -> Option<String> {
        let name = match (&self.pod, &self.name) {
            (Some(pod), _) => format!("{}.{}", pod.name, pod.namespace),
            // One label: a dotted name could pass for a pod's.
            (None, Some(name)) if !name.contains('.') => name.clone(),
            (None, _) => return None,
        };
        crate::dns::zone::valid_labels(&name).then(|| name.to_ascii_lowercase())
    }
}

/// An endpoint's IPv6 address (the key names it and the network): which endpoint holds it.
/// The value never changes while the endpoint lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint6Record {
    pub version: u32,
    /// The endpoint's IPv4 address: the key of its endpoint record.
    pub ip: Ipv4Addr,
    pub node: String,
}

impl EndpointRecord {
    /// The record of a local endpoint owned by `node`.
    pub fn of(ep: &Endpoint, node: &str) -> Self {
        Self {
            version: RECORD_VERSION,
            mac: ep.mac,
            node: node.to_owned(),
            container_id: ep.container_id.clone(),
            attachment: ep.attachment.clone(),
            ifname: ep.ifname.clone(),
            services: ep.services.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct EndpointRecordWire {
    version: u32,
    mac: MacAddr,
    node: String,
    container_id: String,
    host_ifname: String,
    #[serde(default)]
    ifname: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
}

impl From<EndpointRecordWire> for EndpointRecord {
    fn from(w: EndpointRecordWire) -> Self {
        Self {
            version: w.version,
            mac: w.mac,
            node: w.node,
            container_id: w.container_id,
            attachment: Attachment::from_wire(w.host_ifname),
            ifname: w.ifname,
            services: w.services,
        }
    }
}

impl From<EndpointRecord> for EndpointRecordWire {
    fn from(r: EndpointRecord) -> Self {
        Self {
            host_ifname: r.attachment.to_wire(),
            version: r.version,
            mac: r.mac,
            node: r.node,
            container_id: r.container_id,
            ifname: r.ifname,
            services: r.services,
        }
    }
}

/// A service: VIP:port/proto in a network, with explicitly configured backends (endpoints
/// labelled `overlay.service=NAME:PORT` join it too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub version: u32,
    pub network: String,
    pub vip: std::net::IpAddr,
    pub port: u16,
    pub proto: crate::tables::Proto,
    #[serde(default)]
    pub backends: Vec<crate::tables::BackendSpec>,
    /// The VIP was taken from the network's service range (its address is claimed for this
    /// service alone, `vips/<network>_<vip>`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allocated: bool,
}

impl ServiceRecord {
    /// The key that claims an allocated VIP's address for one service.
    pub fn vip_address_id(&self) -> String {
        let vip = self.vip.to_string().replace(':', "-");
        format!("{}_{vip}", self.network)
    }

    /// The key that keeps VIP:port/proto unique within a network (an IPv6 VIP with `-` for
    /// `:`, which key names do not hold; IPv6 addresses have no `-`, so it stays unique).
    pub fn vip_id(&self) -> String {
        let vip = self.vip.to_string().replace(':', "-");
        format!("{}_{vip}_{}_{}", self.network, self.port, self.proto)
    }
}

/// Decodes a record and checks its version, with a reason on failure.
pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, String> {
    let record: T = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a valid record: {}", overlay_api::error::one_line(e)))?;
    if record.version() != RECORD_VERSION {
        return Err(format!(
            "record version {} (this daemon reads {RECORD_VERSION})",
            record.version()
        ));
    }
    Ok(record)
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

pub trait Versioned {
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => { $(impl Versioned for $t { fn version(&self) -> u32 { self.version } })* };
}
versioned!(
    NetworkRecord,
    NodeRecord,
    BlockRecord,
    EndpointRecord,
    Endpoint6Record,
    EndpointInfoRecord,
    ServiceRecord
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_other_versions_are_refused_with_a_reason() {
        assert!(decode::<NodeRecord>(b"{not json")
            .unwrap_err()
            .contains("not a valid record"));
        let v2 = br#"{"version":2,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:01","registered_at":1}"#;
        assert!(decode::<NodeRecord>(v2).unwrap_err().contains("version 2"));
        let v1 = br#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:01","registered_at":1}"#;
        assert_eq!(
            decode::<NodeRecord>(v1).unwrap().vtep_ip,
            Some(Ipv4Addr::new(198, 18, 0, 1))
        );
    }

    /// An IPv4 node's record is written as releases before IPv6 underlays wrote it (they
    /// read it unchanged); an IPv6-only node's has no `vtep_ip`, which they refuse.
    #[test]
    fn node_records_carry_the_vtep_families_they_have() {
        let v4 = NodeRecord {
            version: 1,
            vtep_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            vtep_ip6: None,
            vtep_prefer: Prefer::Ipv4,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            registered_at: 1,
            instance: None,
            container_mtu: None,
            release: None,
        };
        assert_eq!(
            String::from_utf8(encode(&v4)).unwrap(),
            r#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:01","registered_at":1}"#
        );
        let v6 = NodeRecord {
            vtep_ip: None,
            vtep_ip6: Some("2001:2:0:ff00::1".parse().unwrap()),
            vtep_prefer: Prefer::Ipv6,
            ..v4.clone()
        };
        let text = String::from_utf8(encode(&v6)).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"vtep_ip6":"2001:2:0:ff00::1","vtep_prefer":"ipv6","vtep_mac":"02:00:00:00:00:01","registered_at":1}"#
        );
        assert_eq!(decode::<NodeRecord>(text.as_bytes()).unwrap(), v6);
        let none = NodeRecord {
            vtep_ip: None,
            ..v4.clone()
        };
        assert_eq!(none.vteps(), None);
        assert!(none.checked().unwrap_err().contains("no VTEP address"));
        let mapped = NodeRecord {
            vtep_ip6: Some("::ffff:198.18.0.9".parse().unwrap()),
            ..v4
        };
        assert!(mapped.checked().unwrap_err().contains("IPv4-mapped"));
    }

    /// Endpoint records as the first release wrote them load unchanged, and are written back
    /// byte for byte, so both releases read each other's.
    #[test]
    fn first_release_endpoint_records_round_trip() {
        let attached = r#"{"version":1,"mac":"0a:58:c6:13:01:02","node":"h1","container_id":"c1","host_ifname":"ovl0123456789","ifname":"eth0","services":["web:80"]}"#;
        let reserved = r#"{"version":1,"mac":"0a:58:c6:13:01:03","node":"h1","container_id":"docker:red:198.19.1.3","host_ifname":"","ifname":"eth"}"#;
        let a: EndpointRecord = decode(attached.as_bytes()).unwrap();
        assert_eq!(a.attachment.host_ifname(), Some("ovl0123456789"));
        let r: EndpointRecord = decode(reserved.as_bytes()).unwrap();
        assert_eq!(r.attachment, Attachment::Reserved);
        assert_eq!(String::from_utf8(encode(&a)).unwrap(), attached);
        assert_eq!(String::from_utf8(encode(&r)).unwrap(), reserved);
        let oldest = r#"{"version":1,"mac":"0a:58:c6:13:01:02","node":"h1","container_id":"c1","host_ifname":"v"}"#;
        let o: EndpointRecord = decode(oldest.as_bytes()).unwrap();
        assert_eq!((o.ifname.as_str(), o.services.len()), ("", 0));
    }

    #[test]
    fn a_network_needs_a_subnet_and_ipv6_only_ones_have_no_ipv4_side() {
        let net = |text: &str| decode::<NetworkRecord>(text.as_bytes()).unwrap().check("n");
        assert_eq!(
            net(r#"{"version":1,"vni":300,"subnet6":"2001:2:0:1090::/64"}"#),
            Ok(())
        );
        for (text, why) in [
            (
                r#"{"version":1,"vni":300}"#,
                "needs an IPv4 subnet, an IPv6 one",
            ),
            (
                r#"{"version":1,"vni":300,"subnet6":"2001:2:0:1090::/64","gateway":"198.19.1.1"}"#,
                "IPv4 gateway needs an IPv4 subnet",
            ),
            (
                r#"{"version":1,"vni":300,"subnet":"0.0.0.0/24"}"#,
                "holds 0.0.0.0",
            ),
            (
                r#"{"version":1,"vni":300,"subnet6":"::/64"}"#,
                "IPv4-mapped",
            ),
        ] {
            let e = net(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn networks_default_their_block_size() {
        let n: NetworkRecord =
            decode(br#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#).unwrap();
        assert_eq!(n.block_len, 26);
    }
}
