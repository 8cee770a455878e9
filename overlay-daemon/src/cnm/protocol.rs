//! The libnetwork remote NetworkDriver and IpamDriver protocols: each call decoded and checked
//! into a typed `Call` before anything is done (`decode`), and the replies. Executing a call
//! is the driver's (`driver.rs`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

use super::state::valid_id;
use crate::{cluster::ClusterError, tables::MacAddr};
use overlay_api::ErrorKind;

/// Our address spaces: one for both scopes, named so a request from Docker's default IPAM
/// is recognisable.
pub(super) const ADDRESS_SPACE: &str = "overlay-ebpf";
/// Docker's option marking the gateway's address request.
pub(super) const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
/// The option carrying the endpoint's MAC address in RequestAddress (sent because we require
/// it): what ties an endpoint's IPv6 request to its IPv4 one.
pub(super) const MAC_OPTION: &str = "com.docker.network.endpoint.macaddress";
/// Where `docker network create -o k=v` options arrive.
pub(super) const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// Docker's standard MTU option (`-o com.docker.network.driver.mtu=N`).
pub(super) const MTU_OPTION: &str = "com.docker.network.driver.mtu";

/// The endpoint driver option (`docker network connect --driver-opt overlay.service=web:80`)
/// that makes the container a service backend.
pub const SERVICE_OPTION: &str = overlay_api::labels::SERVICE_LABEL;

/// The endpoint driver option (`docker network connect --driver-opt overlay.name=web1`)
/// that names the container in the overlay's DNS (`web1.<network>.overlay.internal`):
/// libnetwork tells remote drivers no container name.
pub const NAME_OPTION: &str = "overlay.name";

/// The DNS name an endpoint's options give it, if any: one label.
pub(super) fn name_option(options: &Value) -> Result<Option<String>, Failure> {
    let raw = options[NAME_OPTION]
        .as_str()
        .or_else(|| options[GENERIC_OPTIONS][NAME_OPTION].as_str())
        .unwrap_or("");
    match raw {
        "" => Ok(None),
        n if !n.contains('.') && crate::dns::zone::valid_labels(n) => Ok(Some(n.to_owned())),
        n => Err(bad(format!(
            "{NAME_OPTION} {n:?} is not a DNS label: give letters, digits and hyphens, at most 63, no dots"
        ))),
    }
}

/// `NAME:PORT[,NAME:PORT...]` labels from an endpoint's options.
pub(super) fn service_labels(options: &Value) -> Result<Vec<String>, Failure> {
    let raw = options[SERVICE_OPTION]
        .as_str()
        .or_else(|| options[GENERIC_OPTIONS][SERVICE_OPTION].as_str())
        .unwrap_or("");
    overlay_api::labels::parse_service_labels([raw])
        .map_err(|e| bad(format!("{SERVICE_OPTION}: {e}")))
}

/// An HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub(super) fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }
    /// libnetwork reads `Err` from a non-200 reply; its IPAM client also checks `Error`.
    pub(super) fn error(status: u16, msg: String) -> Self {
        Self {
            status,
            body: json!({"Err": msg, "Error": msg}),
        }
    }
    pub fn bad_request(msg: String) -> Self {
        Self::error(400, msg)
    }
}

/// Why a call failed: bad input (400), unknown thing (404) or our side (500).
pub(super) enum Failure {
    Bad(String),
    Internal(String),
}

impl From<ClusterError> for Failure {
    fn from(e: ClusterError) -> Self {
        match e.kind() {
            ErrorKind::Invalid | ErrorKind::NotFound | ErrorKind::Conflict => {
                Failure::Bad(e.to_string())
            }
            _ => Failure::Internal(e.to_string()),
        }
    }
}

pub(super) type Outcome = Result<Value, Failure>;

pub(super) fn bad(msg: impl Into<String>) -> Failure {
    Failure::Bad(msg.into())
}

/// A plugin call, decoded and checked: everything that can be refused without the cluster
/// or the driver's bindings has been refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// Answered with this body and nothing else: activation, capabilities, address spaces,
    /// and the discovery and connectivity calls this driver has nothing to do for.
    Constant(Value),
    RequestPool(PoolRequest),
    /// Pools are the overlay networks': nothing to release.
    ReleasePool,
    RequestAddress(AddressRequest),
    ReleaseAddress {
        pool: PoolId,
        ip: IpAddr,
    },
    CreateNetwork(NetworkCreate),
    DeleteNetwork {
        network_id: String,
    },
    CreateEndpoint(EndpointCreate),
    EndpointOperInfo {
        endpoint_id: String,
    },
    DeleteEndpoint {
        endpoint_id: String,
    },
    Join {
        network_id: String,
        endpoint_id: String,
        /// The container's network namespace (SandboxKey), for connect-time balancing.
        sandbox: Option<PathBuf>,
    },
    Leave {
        endpoint_id: String,
    },
}

/// IPAM RequestPool: an overlay network by name (`--ipam-opt network=NAME`), a subnet
/// (`--subnet`), or both; never neither. `v6`: the network's IPv6 pool (`--ipv6`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRequest {
    pub network: Option<String>,
    pub subnet: Option<IpNet>,
    pub v6: bool,
}

/// The pool ids this driver issues: `<network>@<subnet>`, the network's name when known;
/// the subnet's family is the pool's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolId {
    pub network: Option<String>,
    pub subnet: IpNet,
}

impl PoolId {
    pub fn parse(id: &str) -> Result<Self, String> {
        let not_ours = || format!("PoolID {id:?} was not issued by overlay-ebpf");
        // The subnet never holds an '@'.
        let (name, subnet) = id.rsplit_once('@').ok_or_else(not_ours)?;
        Ok(Self {
            network: (!name.is_empty()).then(|| name.to_owned()),
            subnet: subnet.parse().map_err(|_| not_ours())?,
        })
    }
}

impl std::fmt::Display for PoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.network.as_deref().unwrap_or_default();
        write!(f, "{name}@{}", self.subnet)
    }
}

/// IPAM RequestAddress: any free address or `address`, or the network's gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressRequest {
    pub pool: PoolId,
    /// Of the pool's family.
    pub address: Option<IpAddr>,
    /// Docker asks for the gateway's address when it creates the network.
    pub gateway: bool,
    /// The endpoint's MAC (MAC_OPTION), the same in its IPv4 and IPv6 requests.
    pub mac: Option<MacAddr>,
}

/// NetworkDriver CreateNetwork: a Docker network standing for an overlay network, named
/// (`-o network=NAME`) or made from a VNI (`-o vni=N`) or found by its subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkCreate {
    pub network_id: String,
    pub pool: Ipv4Net,
    /// `--ipv6`: the IPv6 pool.
    pub pool6: Option<Ipv6Net>,
    pub network: Option<String>,
    pub vni: Option<u32>,
    /// `-o com.docker.network.driver.mtu`: its containers' MTU.
    pub mtu: Option<u32>,
}

/// NetworkDriver CreateEndpoint: the reserved address gets its interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointCreate {
    pub network_id: String,
    pub endpoint_id: String,
    pub ip: Ipv4Addr,
    /// On an `--ipv6` network.
    pub ip6: Option<Ipv6Addr>,
    /// Docker chose the MAC (`--mac-address`, or for IPAM: MAC_OPTION).
    pub mac: Option<MacAddr>,
    pub services: Vec<String>,
    /// Its name in the overlay's DNS (NAME_OPTION).
    pub name: Option<String>,
}

/// Decodes one plugin call: `method` is the request path (e.g. `/NetworkDriver.Join`),
/// `body` its JSON object. A bad body is 400 and an unknown method 404, each with a
/// one-line reason; nothing has been done.
pub fn decode(method: &str, body: &[u8]) -> Result<Call, Reply> {
    let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return Err(Reply::bad_request(format!(
                    "{method}: the body must be a JSON object"
                )))
            }
            Err(e) => {
                return Err(Reply::bad_request(format!(
                    "{method}: the body is not valid JSON: {e}"
                )))
            }
        }
    };
    let call = match method {
        "/Plugin.Activate" => Ok(Call::Constant(
            json!({"Implements": ["NetworkDriver", "IpamDriver"]}),
        )),
        "/NetworkDriver.GetCapabilities" => Ok(Call::Constant(
            json!({"Scope": "local", "ConnectivityScope": "global"}),
        )),
        "/NetworkDriver.CreateNetwork" => decode_create_network(&req),
        "/NetworkDriver.DeleteNetwork" => {
            id_field(&req, "NetworkID").map(|id| Call::DeleteNetwork {
                network_id: id.to_owned(),
            })
        }
        "/NetworkDriver.CreateEndpoint" => decode_create_endpoint(&req),
        "/NetworkDriver.EndpointOperInfo" => {
            id_field(&req, "EndpointID").map(|id| Call::EndpointOperInfo {
                endpoint_id: id.to_owned(),
            })
        }
        "/NetworkDriver.DeleteEndpoint" => {
            id_field(&req, "EndpointID").map(|id| Call::DeleteEndpoint {
                endpoint_id: id.to_owned(),
            })
        }
        "/NetworkDriver.Join" => decode_join(&req),
        "/NetworkDriver.Leave" => id_field(&req, "EndpointID").map(|id| Call::Leave {
            endpoint_id: id.to_owned(),
        }),
        "/NetworkDriver.DiscoverNew"
        | "/NetworkDriver.DiscoverDelete"
        | "/NetworkDriver.ProgramExternalConnectivity"
        | "/NetworkDriver.RevokeExternalConnectivity" => Ok(Call::Constant(json!({}))),
        "/IpamDriver.GetCapabilities" => Ok(Call::Constant(
            json!({"RequiresMACAddress": true, "RequiresRequestReplay": false}),
        )),
        "/IpamDriver.GetDefaultAddressSpaces" => Ok(Call::Constant(json!({
            "LocalDefaultAddressSpace": ADDRESS_SPACE,
            "GlobalDefaultAddressSpace": ADDRESS_SPACE,
        }))),
        "/IpamDriver.RequestPool" => decode_request_pool(&req),
        "/IpamDriver.ReleasePool" => id_field_any(&req, "PoolID").map(|_| Call::ReleasePool),
        "/IpamDriver.RequestAddress" => decode_request_address(&req),
        "/IpamDriver.ReleaseAddress" => decode_release_address(&req),
        _ => {
            return Err(Reply::error(
                404,
                format!("{method} is not implemented by the overlay-ebpf plugin"),
            ))
        }
    };
    call.map_err(|f| match f {
        Failure::Bad(msg) | Failure::Internal(msg) => Reply::error(400, msg),
    })
}

pub(super) fn decode_request_pool(req: &Value) -> Result<Call, Failure> {
    let v6 = req["V6"].as_bool() == Some(true);
    if !field(req, "SubPool").is_empty() {
        return Err(bad(
            "--ip-range is not supported: the cluster IPAM hands out addresses from the whole subnet",
        ));
    }
    let network = req["Options"]["network"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let subnet = match field(req, "Pool") {
        "" => None,
        p => {
            let family = if v6 { "IPv6" } else { "IPv4" };
            let net = p
                .parse::<IpNet>()
                .ok()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .ok_or_else(|| bad(format!("pool {p:?} is not an {family} CIDR")))?;
            Some(net.trunc())
        }
    };
    if network.is_none() && subnet.is_none() {
        return Err(bad(
            "pass --subnet (the overlay network's subnet) or --ipam-opt network=NAME",
        ));
    }
    Ok(Call::RequestPool(PoolRequest {
        network,
        subnet,
        v6,
    }))
}

pub(super) fn decode_request_address(req: &Value) -> Result<Call, Failure> {
    let pool = PoolId::parse(field(req, "PoolID")).map_err(bad)?;
    let address = match field(req, "Address") {
        "" => None,
        a => Some(parse_address_in(a, &pool)?),
    };
    let gateway = req["Options"]["RequestAddressType"].as_str() == Some(GATEWAY_REQUEST);
    let mac = match field(&req["Options"], MAC_OPTION) {
        "" => None,
        m => Some(
            m.parse::<MacAddr>()
                .map_err(|_| bad(format!("{MAC_OPTION} {m:?} is not a MAC address")))?,
        ),
    };
    Ok(Call::RequestAddress(AddressRequest {
        pool,
        address,
        gateway,
        mac,
    }))
}

pub(super) fn decode_release_address(req: &Value) -> Result<Call, Failure> {
    let pool = PoolId::parse(field(req, "PoolID")).map_err(bad)?;
    let ip = parse_address_in(field(req, "Address"), &pool)?;
    Ok(Call::ReleaseAddress { pool, ip })
}

pub(super) fn decode_create_network(req: &Value) -> Result<Call, Failure> {
    let network_id = id_field(req, "NetworkID")?.to_owned();
    let pool6 = match req["IPv6Data"].get(0) {
        None | Some(Value::Null) => None,
        Some(v6) => {
            if field(v6, "AddressSpace") != ADDRESS_SPACE {
                return Err(bad(
                    "IPv6 addresses must come from the cluster IPAM too: create the network with --ipam-driver overlay-ebpf",
                ));
            }
            let p = field(v6, "Pool");
            Some(
                p.parse::<Ipv6Net>()
                    .map_err(|_| bad(format!("IPv6Data pool {p:?} is not an IPv6 CIDR")))?,
            )
        }
    };
    let v4 = req["IPv4Data"].get(0).cloned().unwrap_or_default();
    if v4.is_null() && pool6.is_some() {
        return Err(bad(
            "IPv6-only networks are not supported: create the network with an IPv4 --subnet too (drop --ipv4=false)",
        ));
    }
    if field(&v4, "AddressSpace") != ADDRESS_SPACE {
        return Err(bad(
            "addresses must come from the cluster IPAM: create the network with --ipam-driver overlay-ebpf",
        ));
    }
    let pool: Ipv4Net = field(&v4, "Pool")
        .parse()
        .map_err(|_| bad("IPv4Data has no pool: pass --subnet"))?;
    let opts = &req["Options"][GENERIC_OPTIONS];
    let opt = |k: &str| opts[k].as_str().filter(|s| !s.is_empty());
    let vni = opt("vni")
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| bad(format!("-o vni={v:?}: the VNI must be a number")))
        })
        .transpose()?;
    let mtu = opt(MTU_OPTION)
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| bad(format!("-o {MTU_OPTION}={v:?}: the MTU must be a number")))
        })
        .transpose()?;
    Ok(Call::CreateNetwork(NetworkCreate {
        network_id,
        pool,
        pool6,
        network: opt("network").map(str::to_owned),
        vni,
        mtu,
    }))
}

pub(super) fn decode_create_endpoint(req: &Value) -> Result<Call, Failure> {
    let network_id = id_field(req, "NetworkID")?.to_owned();
    let endpoint_id = id_field(req, "EndpointID")?.to_owned();
    let iface = &req["Interface"];
    let address = field(iface, "Address");
    if address.is_empty() {
        return Err(bad(
            "the endpoint has no IPv4 address: create the network with --ipam-driver overlay-ebpf",
        ));
    }
    let ip = parse_address(address)?;
    let ip6 = match field(iface, "AddressIPv6") {
        "" => None,
        a => Some(parse_address6(a)?),
    };
    let mac = match field(iface, "MacAddress") {
        "" => None,
        m => Some(
            m.parse::<MacAddr>()
                .map_err(|_| bad(format!("MacAddress {m:?} is not a MAC address")))?,
        ),
    };
    Ok(Call::CreateEndpoint(EndpointCreate {
        network_id,
        endpoint_id,
        ip,
        ip6,
        mac,
        services: service_labels(&req["Options"])?,
        name: name_option(&req["Options"])?,
    }))
}

pub(super) fn decode_join(req: &Value) -> Result<Call, Failure> {
    Ok(Call::Join {
        network_id: id_field(req, "NetworkID")?.to_owned(),
        endpoint_id: id_field(req, "EndpointID")?.to_owned(),
        sandbox: match field(req, "SandboxKey") {
            "" => None,
            key => Some(PathBuf::from(key)),
        },
    })
}

/// A string field of a request body ("" when absent).
pub(super) fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body.get(name).and_then(Value::as_str).unwrap_or_default()
}

pub(super) fn id_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, Failure> {
    let id = field(body, name);
    if valid_id(id) {
        Ok(id)
    } else {
        Err(bad(format!("{name} {id:?} is missing or not a Docker id")))
    }
}

/// `ADDR/LEN` or a bare address.
pub(super) fn parse_address(s: &str) -> Result<Ipv4Addr, Failure> {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.parse()
        .map_err(|_| bad(format!("{s:?} is not an IPv4 address")))
}

pub(super) fn parse_address6(s: &str) -> Result<Ipv6Addr, Failure> {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.parse()
        .map_err(|_| bad(format!("{s:?} is not an IPv6 address")))
}

/// An address of the pool's family.
fn parse_address_in(s: &str, pool: &PoolId) -> Result<IpAddr, Failure> {
    Ok(match pool.subnet {
        IpNet::V4(_) => IpAddr::V4(parse_address(s)?),
        IpNet::V6(_) => IpAddr::V6(parse_address6(s)?),
    })
}

/// ReleasePool carries only a pool id, which may be anything we issued.
pub(super) fn id_field_any<'a>(body: &'a Value, name: &str) -> Result<&'a str, Failure> {
    match field(body, name) {
        "" => Err(bad(format!("{name} is missing"))),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ids_round_trip() {
        for subnet in ["198.19.1.0/24", "2001:2:0:1001::/64"] {
            let subnet: IpNet = subnet.parse().unwrap();
            for network in [Some("red".to_owned()), None] {
                let id = PoolId { network, subnet };
                assert_eq!(PoolId::parse(&id.to_string()), Ok(id));
            }
        }
        assert!(PoolId::parse("LocalDefault/198.19.200.0/24").is_err());
    }

    #[test]
    fn bad_bodies_are_refused_before_anything_runs() {
        let status = |method: &str, body: &str| match decode(method, body.as_bytes()) {
            Ok(_) => 200,
            Err(r) => r.status,
        };
        assert_eq!(status("/NetworkDriver.AllocateNetwork", "{}"), 404);
        assert_eq!(status("/IpamDriver.RequestPool", "[1]"), 400);
        assert_eq!(status("/IpamDriver.RequestPool", r#"{"Pool": ""}"#), 400);
        assert_eq!(
            status("/IpamDriver.RequestPool", r#"{"Pool": "198.19.1.0/24"}"#),
            200
        );
        assert_eq!(
            status(
                "/IpamDriver.RequestPool",
                r#"{"Pool": "198.19.1.0/24", "V6": true}"#
            ),
            400
        );
        assert_eq!(
            status(
                "/IpamDriver.RequestAddress",
                r#"{"PoolID": "red@2001:2:0:1001::/64", "Address": "198.19.1.9"}"#
            ),
            400
        );
        assert_eq!(
            status(
                "/NetworkDriver.CreateEndpoint",
                r#"{"NetworkID": "n", "EndpointID": "e", "Interface": {"Address": "198.19.1.5/24", "MacAddress": "zz"}}"#
            ),
            400
        );
        assert_eq!(
            status("/NetworkDriver.Leave", r#"{"EndpointID": "../x"}"#),
            400
        );
        assert_eq!(
            decode(
                "/NetworkDriver.Join",
                br#"{"NetworkID": "n", "EndpointID": "e"}"#
            ),
            Ok(Call::Join {
                network_id: "n".into(),
                endpoint_id: "e".into(),
                sandbox: None
            })
        );
        assert_eq!(
            decode("/Plugin.Activate", b" \n"),
            decode("/Plugin.Activate", b"{}")
        );
    }
}
