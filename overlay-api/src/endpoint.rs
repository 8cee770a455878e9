//! The endpoint model: a container interface on the overlay, who made it, where its
//! container side lives and how it is attached to the host.
//!
//! The JSON form is the flat one every earlier release wrote and read (local state files,
//! API results): `netns` empty for an interface the runtime moves itself, `host_ifname`
//! empty for a reserved address, `owner` `"cni"`, `"cnm"` or absent. Those encodings stay
//! on the wire only; in Rust each state is a variant.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::MacAddr;

/// A local endpoint's identity: the runtime's container id and the interface name in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointId {
    pub container_id: String,
    pub ifname: String,
}

/// Which front end made an endpoint. Garbage collection only ever touches its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The CNI plugin (Kubernetes, containerd, podman, Mesos).
    Cni,
    /// The Docker (libnetwork) driver.
    Docker,
    /// A direct API user (tests, the demo, tools).
    #[default]
    Api,
}

impl Owner {
    /// The wire name (`"cnm"` for Docker: what the first release wrote).
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Cni => "cni",
            Owner::Docker => "cnm",
            Owner::Api => "api",
        }
    }
}

impl Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The first release took any owner string over the API: an endpoint it wrote must
        // still load (GC only ever touches `cni`).
        Ok(match Option::<String>::deserialize(d)?.as_deref() {
            Some("cni") => Owner::Cni,
            Some("cnm" | "docker") => Owner::Docker,
            _ => Owner::Api,
        })
    }
}

/// Where the container side of an endpoint lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Sandbox {
    /// A network namespace the daemon configures the interface in (CNI, the API).
    Netns(PathBuf),
    /// The runtime moves the interface into the container itself (Docker's Join).
    Runtime,
}

/// How an endpoint is attached to its node: the same in the daemon's local state, the
/// cluster view and the etcd record.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attachment {
    /// An address handed out before its interface exists (Docker's IPAM asks first). Other
    /// nodes already route it to its node; that node installs nothing for it.
    Reserved,
    /// A veth pair whose host side (`host_ifname`, on the endpoint's node) carries the
    /// datapath.
    Veth { host_ifname: String },
}

impl Attachment {
    /// The host-side interface, if there is one.
    pub fn host_ifname(&self) -> Option<&str> {
        match self {
            Attachment::Reserved => None,
            Attachment::Veth { host_ifname } => Some(host_ifname),
        }
    }

    /// The wire form of earlier releases: the interface name, empty when reserved.
    pub fn from_wire(host_ifname: String) -> Self {
        if host_ifname.is_empty() {
            Attachment::Reserved
        } else {
            Attachment::Veth { host_ifname }
        }
    }

    pub fn to_wire(&self) -> String {
        self.host_ifname().unwrap_or_default().to_owned()
    }
}

/// An endpoint's IPv4 address, with what the container routes by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv4Assignment {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// An endpoint's IPv6 address, with what the container routes by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv6Assignment {
    pub ip: Ipv6Addr,
    pub prefix_len: u8,
    pub gateway: Ipv6Addr,
}

/// A local endpoint as the daemon keeps it and answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EndpointWire", into = "EndpointWire")]
pub struct Endpoint {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub sandbox: Sandbox,
    /// The IPv4 address, on a network with an IPv4 subnet (all but IPv6-only ones).
    pub ipv4: Option<Ipv4Assignment>,
    /// The IPv6 address, on a network with an IPv6 subnet.
    pub ipv6: Option<Ipv6Assignment>,
    pub mac: MacAddr,
    pub mtu: u32,
    pub vni: u32,
    pub attachment: Attachment,
    /// MAC of the host side of the veth, when it has one (reported in CNI results).
    pub host_mac: Option<MacAddr>,
    pub owner: Owner,
    /// `NAME:PORT` service labels: the endpoint is a backend of these services.
    pub services: Vec<String>,
    /// The container's default routes this interface holds.
    pub default_routes: DefaultRoutes,
    /// The Kubernetes pod it belongs to, when the runtime said (CRI runtimes do).
    pub pod: Option<Pod>,
    /// The Docker endpoint id (what `docker network inspect` lists by container), once
    /// Docker created the endpoint.
    pub docker_endpoint: Option<String>,
    /// The container's name, where the runtime gave one outside Kubernetes (podman's
    /// `K8S_POD_NAME` without a namespace): its DNS name in the network.
    pub name: Option<String>,
    /// The resolver the container should use, when overlayd serves DNS.
    pub dns: Option<EndpointDns>,
    /// Its bandwidth limits, if it has any.
    pub bandwidth: Option<crate::Bandwidth>,
}

/// The resolver settings a runtime writes into the container's resolv.conf (the CNI
/// result's `dns`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDns {
    pub nameservers: Vec<std::net::IpAddr>,
    pub search: Vec<String>,
}

/// The Kubernetes pod an endpoint belongs to, from the `K8S_POD_*` CNI_ARGS a CRI runtime
/// passes: how operators find a pod's endpoint, rather than by its sandbox id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// Absent when the runtime passed none (older CRI runtimes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl std::fmt::Display for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which of the container's default routes (one per family) go through an interface: a
/// container on several networks has them on one interface only (the first by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultRoutes {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl DefaultRoutes {
    /// Those of the families an interface has addresses of.
    pub fn of(ipv4: bool, ipv6: bool) -> Self {
        Self { ipv4, ipv6 }
    }
}

/// What an endpoint request asks of the container's default routes (CNI `defaultRoute`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultRoute {
    /// Via this network's gateways for each family the container has no default route of
    /// yet: the first attachment gets them.
    #[default]
    IfNone,
    /// None through this interface: the network's subnet is reached on-link, nothing else.
    Never,
    /// Through this interface, for each of its families; refused if the container has one
    /// of them already on another interface.
    Required,
}

impl DefaultRoute {
    fn is_if_none(&self) -> bool {
        *self == DefaultRoute::IfNone
    }
}

impl Endpoint {
    pub fn id(&self) -> EndpointId {
        EndpointId {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    pub fn host_ifname(&self) -> Option<&str> {
        self.attachment.host_ifname()
    }

    /// Its IPv4 address, if it has one.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ipv4.map(|a| a.ip)
    }

    /// The address that names it in its network (its etcd key): the IPv4 one when it has
    /// one, else the IPv6 one. Every endpoint has at least one.
    pub fn key_ip(&self) -> IpAddr {
        key_address(self.ip(), self.ipv6.map(|a| a.ip))
    }
}

/// The address that names an endpoint with these addresses in its network (its etcd key):
/// the IPv4 one when it has one, else the IPv6 one. Every endpoint has at least one (their
/// constructors see to it); 0.0.0.0 only for one whose addresses are not picked yet.
pub fn key_address(ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>) -> IpAddr {
    match (ip, ip6) {
        (Some(ip), _) => IpAddr::V4(ip),
        (None, Some(ip6)) => IpAddr::V6(ip6),
        (None, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// The flat JSON form (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct EndpointWire {
    network: String,
    container_id: String,
    ifname: String,
    #[serde(default)]
    netns: PathBuf,
    /// The three absent on IPv6-only networks (0.3 and later); all or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix_len: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<Ipv4Addr>,
    /// Absent before 0.3 and on networks without IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipv6: Option<Ipv6Assignment>,
    mac: MacAddr,
    mtu: u32,
    vni: u32,
    #[serde(default)]
    host_ifname: String,
    #[serde(default)]
    host_mac: Option<MacAddr>,
    #[serde(default)]
    owner: Owner,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
    /// Absent before 0.3, when every interface was given the default routes of its
    /// families, and written only when they differ from that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_routes: Option<DefaultRoutes>,
    /// Absent before 0.3 and for endpoints of no pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<Pod>,
    /// Absent before 0.3 and for endpoints Docker did not make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    docker_endpoint: Option<String>,
    /// Absent before 0.3 and for containers the runtime did not name (outside pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Absent before 0.3 and where overlayd serves no DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<EndpointDns>,
    /// Absent from earlier releases' endpoints and for endpoints without limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bandwidth: Option<crate::Bandwidth>,
}

impl TryFrom<EndpointWire> for Endpoint {
    type Error = &'static str;

    fn try_from(w: EndpointWire) -> Result<Self, Self::Error> {
        let ipv4 = match (w.ip, w.prefix_len, w.gateway) {
            (Some(ip), Some(prefix_len), Some(gateway)) => Some(Ipv4Assignment {
                ip,
                prefix_len,
                gateway,
            }),
            (None, None, None) => None,
            _ => {
                return Err("an endpoint's IPv4 address needs ip, prefix_len and gateway together")
            }
        };
        if ipv4.is_none() && w.ipv6.is_none() {
            return Err("an endpoint needs an IPv4 address (ip, prefix_len, gateway) or ipv6");
        }
        let default_routes = w
            .default_routes
            .unwrap_or_else(|| DefaultRoutes::of(ipv4.is_some(), w.ipv6.is_some()));
        Ok(Self {
            default_routes,
            sandbox: if w.netns.as_os_str().is_empty() {
                Sandbox::Runtime
            } else {
                Sandbox::Netns(w.netns)
            },
            attachment: Attachment::from_wire(w.host_ifname),
            host_mac: w.host_mac,
            network: w.network,
            container_id: w.container_id,
            ifname: w.ifname,
            ipv4,
            ipv6: w.ipv6,
            mac: w.mac,
            mtu: w.mtu,
            vni: w.vni,
            owner: w.owner,
            services: w.services,
            pod: w.pod,
            docker_endpoint: w.docker_endpoint,
            name: w.name,
            dns: w.dns,
            bandwidth: w.bandwidth,
        })
    }
}

impl From<Endpoint> for EndpointWire {
    fn from(e: Endpoint) -> Self {
        let usual = DefaultRoutes::of(e.ipv4.is_some(), e.ipv6.is_some());
        Self {
            default_routes: (e.default_routes != usual).then_some(e.default_routes),
            host_ifname: e.attachment.to_wire(),
            host_mac: e.host_mac,
            netns: match e.sandbox {
                Sandbox::Netns(p) => p,
                Sandbox::Runtime => PathBuf::new(),
            },
            network: e.network,
            container_id: e.container_id,
            ifname: e.ifname,
            ip: e.ipv4.map(|a| a.ip),
            prefix_len: e.ipv4.map(|a| a.prefix_len),
            gateway: e.ipv4.map(|a| a.gateway),
            ipv6: e.ipv6,
            mac: e.mac,
            mtu: e.mtu,
            vni: e.vni,
            owner: e.owner,
            services: e.services,
            pod: e.pod,
            docker_endpoint: e.docker_endpoint,
            name: e.name,
            dns: e.dns,
            bandwidth: e.bandwidth,
        }
    }
}

/// What a runtime asks for: an interface `ifname` in the namespace `netns` on `network`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRequest {
    pub network: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// A smaller MTU than the overlay's (underlay - 50), if wanted.
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub owner: Owner,
    /// `overlay.service` labels (`NAME:PORT`): make the endpoint a service backend.
    #[serde(default)]
    pub services: Vec<String>,
    /// Sent only when not the default (API version 4): an older daemon would ignore it.
    #[serde(default, skip_serializing_if = "DefaultRoute::is_if_none")]
    pub default_route: DefaultRoute,
    /// The pod the container is (API version 5; an older daemon ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// The container's name outside a pod (podman's), its DNS name (API version 6; an
    /// older daemon ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bandwidth limits (API version 7; an older daemon would ignore them, so the plugin
    /// refuses to send them to one). Boxed: few requests have them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Box<crate::Bandwidth>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the first release wrote to `<run-dir>/endpoints/` and answered on the API.
    const CNI_V1: &str = r#"{"network":"red","container_id":"c1","ifname":"eth0","netns":"/run/netns/c1","ip":"198.19.1.2","prefix_len":24,"gateway":"198.19.1.1","mac":"0a:58:c6:13:01:02","mtu":1450,"vni":100,"host_ifname":"ovl0123456789","host_mac":"02:00:00:00:00:01","owner":"cni"}"#;
    const DOCKER_RESERVED_V1: &str = r#"{"network":"red","container_id":"docker:red:198.19.1.3","ifname":"eth","netns":"","ip":"198.19.1.3","prefix_len":24,"gateway":"198.19.1.1","mac":"0a:58:c6:13:01:03","mtu":1450,"vni":100,"host_ifname":"","host_mac":null,"owner":"cnm"}"#;
    const API_V1: &str = r#"{"network":"red","container_id":"t","ifname":"eth0","netns":"/run/netns/t","ip":"198.19.1.4","prefix_len":24,"gateway":"198.19.1.1","mac":"0a:58:c6:13:01:04","mtu":1450,"vni":100,"host_ifname":"ovlx","services":["web:80"]}"#;

    #[test]
    fn first_release_records_load_into_the_model() {
        let cni: Endpoint = serde_json::from_str(CNI_V1).unwrap();
        assert_eq!(cni.owner, Owner::Cni);
        assert_eq!(cni.sandbox, Sandbox::Netns("/run/netns/c1".into()));
        assert_eq!(cni.host_ifname(), Some("ovl0123456789"));
        let docker: Endpoint = serde_json::from_str(DOCKER_RESERVED_V1).unwrap();
        assert_eq!(docker.owner, Owner::Docker);
        assert_eq!(docker.sandbox, Sandbox::Runtime);
        assert_eq!(docker.attachment, Attachment::Reserved);
        let api: Endpoint = serde_json::from_str(API_V1).unwrap();
        assert_eq!(api.owner, Owner::Api);
        assert_eq!(api.services, vec!["web:80".to_owned()]);
    }

    #[test]
    fn the_wire_form_is_what_the_first_release_reads() {
        for text in [CNI_V1, DOCKER_RESERVED_V1] {
            let ep: Endpoint = serde_json::from_str(text).unwrap();
            let again: serde_json::Value = serde_json::to_value(&ep).unwrap();
            assert_eq!(
                again,
                serde_json::from_str::<serde_json::Value>(text).unwrap()
            );
        }
    }

    /// An IPv6-only network's endpoint has no IPv4 fields on the wire; one with no address
    /// of either family does not load.
    #[test]
    fn ipv6_only_endpoints_carry_no_ipv4_fields() {
        let v6 = r#"{"network":"six","container_id":"c","ifname":"eth0","netns":"/run/netns/c","ipv6":{"ip":"2001:2:0:1090::2","prefix_len":64,"gateway":"2001:2:0:1090::1"},"mac":"0e:58:01:02:03:04","mtu":1450,"vni":300,"host_ifname":"ovlx","host_mac":null,"owner":"cni"}"#;
        let ep: Endpoint = serde_json::from_str(v6).unwrap();
        assert_eq!(ep.ipv4, None);
        assert_eq!(ep.key_ip(), "2001:2:0:1090::2".parse::<IpAddr>().unwrap());
        assert_eq!(
            serde_json::to_value(&ep).unwrap(),
            serde_json::from_str::<serde_json::Value>(v6).unwrap()
        );
        let none = v6.replace(
            r#""ipv6":{"ip":"2001:2:0:1090::2","prefix_len":64,"gateway":"2001:2:0:1090::1"},"#,
            "",
        );
        let e = serde_json::from_str::<Endpoint>(&none).unwrap_err();
        assert!(e.to_string().contains("needs an IPv4 address"), "{e}");
        let partial = v6.replace(r#""netns""#, r#""ip":"198.19.1.2","netns""#);
        let e = serde_json::from_str::<Endpoint>(&partial).unwrap_err();
        assert!(e.to_string().contains("together"), "{e}");
    }

    /// A pod's endpoint carries it; others carry no `pod` field, so they are written as
    /// before and a daemon before 0.3 reads both (it ignores the field).
    #[test]
    fn pods_round_trip_and_others_carry_no_pod_field() {
        let mut ep: Endpoint = serde_json::from_str(CNI_V1).unwrap();
        assert_eq!(ep.pod, None);
        assert!(!serde_json::to_string(&ep).unwrap().contains("pod"));
        ep.pod = Some(Pod {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: None,
        });
        let text = serde_json::to_string(&ep).unwrap();
        assert!(
            text.contains(r#""pod":{"namespace":"default","name":"web-0"}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Endpoint>(&text).unwrap(), ep);
        let req: EndpointRequest = serde_json::from_str(
            r#"{"network":"red","container_id":"c","netns":"/n","ifname":"eth0","pod":{"namespace":"a","name":"b","uid":"u"}}"#,
        )
        .unwrap();
        assert_eq!(req.pod.unwrap().to_string(), "a/b");
    }

    #[test]
    fn unknown_owners_load_as_api_users() {
        let other = CNI_V1.replace(r#""owner":"cni""#, r#""owner":"frob""#);
        let ep: Endpoint = serde_json::from_str(&other).unwrap();
        assert_eq!(ep.owner, Owner::Api);
    }
}
