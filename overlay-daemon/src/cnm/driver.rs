//! The libnetwork remote NetworkDriver and IpamDriver protocols, over the cluster.
//!
//! Docker asks IPAM for an address (RequestAddress) before the endpoint exists, so an address
//! is first reserved in etcd under this node's lease, then CreateEndpoint gives it a veth pair
//! whose far side Join hands to Docker to move into the container. DeleteEndpoint removes the
//! veth; ReleaseAddress frees the address.

use std::{net::Ipv4Addr, sync::Arc};

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::state::{valid_id, EndpointBinding, JsonDir, NetworkBinding};
use super::{docker_address_id, DOCKER_IFNAME};
use crate::{
    cluster::{host_ifname, Cluster, ClusterError},
    store::records::{NetworkRecord, RECORD_VERSION},
    tables::{default_gateway, MacAddr},
};
use overlay_api::ErrorKind;

/// Our address spaces: one for both scopes, named so a request from Docker's default IPAM
/// is recognisable.
const ADDRESS_SPACE: &str = "overlay-ebpf";
/// Docker's option marking the gateway's address request.
const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
/// Where `docker network create -o k=v` options arrive.
const GENERIC_OPTIONS: &str = "com.docker.network.generic";

/// The endpoint driver option (`docker network connect --driver-opt overlay.service=web:80`)
/// that makes the container a service backend.
pub const SERVICE_OPTION: &str = overlay_api::labels::SERVICE_LABEL;

/// `NAME:PORT[,NAME:PORT...]` labels from an endpoint's options.
fn service_labels(options: &Value) -> Result<Vec<String>, Failure> {
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
    fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }
    /// libnetwork reads `Err` from a non-200 reply; its IPAM client also checks `Error`.
    fn error(status: u16, msg: String) -> Self {
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
enum Failure {
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

type Outcome = Result<Value, Failure>;

fn bad(msg: impl Into<String>) -> Failure {
    Failure::Bad(msg.into())
}

pub struct Driver {
    cluster: Arc<Cluster>,
    networks: JsonDir,
    endpoints: JsonDir,
}

/// A string field of a request body ("" when absent).
fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn id_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, Failure> {
    let id = field(body, name);
    if valid_id(id) {
        Ok(id)
    } else {
        Err(bad(format!("{name} {id:?} is missing or not a Docker id")))
    }
}

/// `ADDR/LEN` or a bare address.
fn parse_address(s: &str) -> Result<Ipv4Addr, Failure> {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.parse()
        .map_err(|_| bad(format!("{s:?} is not an IPv4 address")))
}

/// The pool id: the overlay network's name when known, and the subnet.
fn pool_id(network: Option<&str>, subnet: Ipv4Net) -> String {
    format!("{}@{subnet}", network.unwrap_or_default())
}

fn parse_pool_id(id: &str) -> Result<(Option<&str>, Ipv4Net), Failure> {
    let (name, subnet) = id
        .split_once('@')
        .ok_or_else(|| bad(format!("PoolID {id:?} was not issued by overlay-ebpf")))?;
    let subnet = subnet
        .parse()
        .map_err(|_| bad(format!("PoolID {id:?} was not issued by overlay-ebpf")))?;
    Ok(((!name.is_empty()).then_some(name), subnet))
}

impl Driver {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        let dir = cluster.run_dir().join("docker");
        Self {
            networks: JsonDir::new(&dir.join("networks")),
            endpoints: JsonDir::new(&dir.join("endpoints")),
            cluster,
        }
    }

    /// Handles one plugin call: `method` is the request path, e.g. `/NetworkDriver.Join`.
    pub async fn call(&self, method: &str, body: &[u8]) -> Reply {
        let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    return Reply::bad_request(format!("{method}: the body must be a JSON object"))
                }
                Err(e) => {
                    return Reply::bad_request(format!("{method}: the body is not valid JSON: {e}"))
                }
            }
        };
        debug!(method, %req, "Docker plugin call");
        let outcome = match method {
            "/Plugin.Activate" => Ok(json!({"Implements": ["NetworkDriver", "IpamDriver"]})),
            "/NetworkDriver.GetCapabilities" => {
                Ok(json!({"Scope": "local", "ConnectivityScope": "global"}))
            }
            "/NetworkDriver.CreateNetwork" => self.create_network(&req).await,
            "/NetworkDriver.DeleteNetwork" => self.delete_network(&req),
            "/NetworkDriver.CreateEndpoint" => self.create_endpoint(&req).await,
            "/NetworkDriver.EndpointOperInfo" => self.endpoint_info(&req),
            "/NetworkDriver.DeleteEndpoint" => self.delete_endpoint(&req).await,
            "/NetworkDriver.Join" => self.join(&req).await,
            "/NetworkDriver.Leave" => self.leave(&req),
            "/NetworkDriver.DiscoverNew"
            | "/NetworkDriver.DiscoverDelete"
            | "/NetworkDriver.ProgramExternalConnectivity"
            | "/NetworkDriver.RevokeExternalConnectivity" => Ok(json!({})),
            "/IpamDriver.GetCapabilities" => {
                Ok(json!({"RequiresMACAddress": false, "RequiresRequestReplay": false}))
            }
            "/IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
                "LocalDefaultAddressSpace": ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": ADDRESS_SPACE,
            })),
            "/IpamDriver.RequestPool" => self.request_pool(&req).await,
            "/IpamDriver.ReleasePool" => id_field_any(&req, "PoolID").map(|_| json!({})),
            "/IpamDriver.RequestAddress" => self.request_address(&req).await,
            "/IpamDriver.ReleaseAddress" => self.release_address(&req).await,
            _ => {
                return Reply::error(
                    404,
                    format!("{method} is not implemented by the overlay-ebpf plugin"),
                )
            }
        };
        match outcome {
            Ok(v) => Reply::ok(v),
            Err(Failure::Bad(msg)) => {
                debug!(method, "refused: {msg}");
                Reply::error(400, msg)
            }
            Err(Failure::Internal(msg)) => {
                warn!(method, "failed: {msg}");
                Reply::error(500, msg)
            }
        }
    }

    /// The overlay network a pool stands for, which must exist by now.
    async fn pool_network(&self, pool: &str) -> Result<(String, NetworkRecord), Failure> {
        let (name, subnet) = parse_pool_id(pool)?;
        if let Some(name) = name {
            let net = self.cluster.network(name).await.ok_or_else(|| {
                bad(format!(
                    "overlay network {name:?} does not exist: create it with `overlayctl network create`"
                ))
            })?;
            return Ok((name.to_owned(), net));
        }
        let mut found: Vec<_> = self
            .cluster
            .networks()
            .await
            .into_iter()
            .filter(|(_, n)| n.subnet == subnet)
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(bad(format!(
                "no overlay network has subnet {subnet}: create one with `-o vni=N` or `overlayctl network create`"
            ))),
            _ => Err(bad(format!(
                "several overlay networks use {subnet}: pass --ipam-opt network=NAME"
            ))),
        }
    }

    async fn request_pool(&self, req: &Value) -> Outcome {
        if req["V6"].as_bool() == Some(true) {
            return Err(bad(
                "IPv6 is not supported: create the network without --ipv6",
            ));
        }
        if !field(req, "SubPool").is_empty() {
            return Err(bad(
                "--ip-range is not supported: the cluster IPAM hands out addresses from the whole subnet",
            ));
        }
        let name = req["Options"]["network"].as_str().filter(|s| !s.is_empty());
        let requested: Option<Ipv4Net> = match field(req, "Pool") {
            "" => None,
            p => Some(
                p.parse::<Ipv4Net>()
                    .map_err(|_| bad(format!("pool {p:?} is not an IPv4 CIDR")))?
                    .trunc(),
            ),
        };
        let subnet = match (name, requested) {
            (Some(name), _) => {
                let net = self.cluster.network(name).await.ok_or_else(|| {
                    bad(format!(
                        "overlay network {name:?} does not exist: create it with `overlayctl network create` or drop --ipam-opt network"
                    ))
                })?;
                if requested.is_some_and(|r| r != net.subnet) {
                    return Err(bad(format!(
                        "overlay network {name:?} has subnet {}: pass --subnet {}",
                        net.subnet, net.subnet
                    )));
                }
                net.subnet
            }
            (None, Some(subnet)) => subnet,
            (None, None) => {
                return Err(bad(
                    "pass --subnet (the overlay network's subnet) or --ipam-opt network=NAME",
                ))
            }
        };
        Ok(json!({"PoolID": pool_id(name, subnet), "Pool": subnet.to_string(), "Data": {}}))
    }

    async fn request_address(&self, req: &Value) -> Outcome {
        let pool = field(req, "PoolID");
        let (name, subnet) = parse_pool_id(pool)?;
        let requested = match field(req, "Address") {
            "" => None,
            a => Some(parse_address(a)?),
        };
        let len = subnet.prefix_len();
        if req["Options"]["RequestAddressType"].as_str() == Some(GATEWAY_REQUEST) {
            // The network may not exist yet (`-o vni=N` creates it after IPAM is asked).
            let net = match name {
                Some(n) => self.cluster.network(n).await,
                None => self.pool_network(pool).await.ok().map(|(_, n)| n),
            };
            let gateway = net.map_or(default_gateway(subnet), |n| n.gateway_ip());
            if requested.is_some_and(|r| r != gateway) {
                return Err(bad(format!(
                    "the overlay network's gateway is {gateway}: drop --gateway or pass --gateway {gateway}"
                )));
            }
            return Ok(json!({"Address": format!("{gateway}/{len}"), "Data": {}}));
        }
        let (network, _) = self.pool_network(pool).await?;
        let ep = self
            .cluster
            .reserve_address(&network, requested, None)
            .await?;
        Ok(json!({"Address": format!("{}/{}", ep.ip, ep.prefix_len), "Data": {}}))
    }

    async fn release_address(&self, req: &Value) -> Outcome {
        let (name, subnet) = parse_pool_id(field(req, "PoolID"))?;
        let ip = parse_address(field(req, "Address"))?;
        // Whatever the pool's network is called now, the reservation says which it was.
        let candidates: Vec<String> = self
            .cluster
            .local_endpoints()
            .into_iter()
            .filter(|e| e.ifname == DOCKER_IFNAME && e.ip == ip && subnet.contains(&e.ip))
            .filter(|e| name.is_none_or(|n| n == e.network))
            .map(|e| e.network)
            .collect();
        for network in candidates {
            let id = docker_address_id(&network, ip);
            self.cluster.delete_endpoint(&id, DOCKER_IFNAME).await?;
        }
        Ok(json!({}))
    }

    async fn create_network(&self, req: &Value) -> Outcome {
        let id = id_field(req, "NetworkID")?;
        if req["IPv6Data"].as_array().is_some_and(|a| !a.is_empty()) {
            return Err(bad(
                "IPv6 is not supported: create the network without --ipv6",
            ));
        }
        let v4 = req["IPv4Data"].get(0).cloned().unwrap_or_default();
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
                    .map_err(|_| bad(format!("-o vni={v}: the VNI must be a number")))
            })
            .transpose()?;
        let name = match (opt("network"), vni) {
            (Some(n), _) => n.to_owned(),
            (None, Some(vni)) => format!("docker-vni-{vni}"),
            (None, None) => self.pool_network(&pool_id(None, pool)).await.map_err(|_| {
                bad("pass -o network=NAME (an existing overlay network) or -o vni=N to create one")
            })?.0,
        };
        match self.cluster.network(&name).await {
            Some(net) => {
                if vni.is_some_and(|v| v != net.vni) {
                    return Err(bad(format!(
                        "overlay network {name:?} has VNI {}: drop -o vni or use -o vni={}",
                        net.vni, net.vni
                    )));
                }
                if net.subnet != pool {
                    return Err(bad(format!(
                        "overlay network {name:?} has subnet {}: pass --subnet {}",
                        net.subnet, net.subnet
                    )));
                }
            }
            None => {
                let Some(vni) = vni else {
                    return Err(bad(format!(
                        "overlay network {name:?} does not exist: create it with `overlayctl network create` or pass -o vni=N"
                    )));
                };
                let record = NetworkRecord {
                    version: RECORD_VERSION,
                    vni,
                    subnet: pool,
                    block_len: pool.prefix_len().max(26),
                    gateway: None,
                    mtu: None,
                };
                record.check(&name).map_err(bad)?;
                if !self.cluster.create_network(&name, record).await? {
                    // Someone else may have created the same network meanwhile.
                    let same = self
                        .cluster
                        .network(&name)
                        .await
                        .is_some_and(|n| n.vni == vni && n.subnet == pool);
                    if !same {
                        return Err(bad(format!(
                            "network {name:?} or VNI {vni} is already in use: pick another"
                        )));
                    }
                }
            }
        }
        self.networks
            .save(id, &NetworkBinding { network: name })
            .map_err(|e| Failure::Internal(format!("saving network {id}: {e}")))?;
        Ok(json!({}))
    }

    fn delete_network(&self, req: &Value) -> Outcome {
        // The overlay network stays: other hosts and runtimes may use it.
        self.networks.remove(id_field(req, "NetworkID")?);
        Ok(json!({}))
    }

    fn binding(&self, req: &Value) -> Result<(String, NetworkBinding), Failure> {
        let id = id_field(req, "NetworkID")?;
        self.networks
            .load(id)
            .map(|b| (id.to_owned(), b))
            .ok_or_else(|| {
                bad(format!(
                    "network {id} is unknown to overlay-ebpf on this host: create it with `docker network create -d overlay-ebpf`"
                ))
            })
    }

    async fn create_endpoint(&self, req: &Value) -> Outcome {
        let (network_id, net) = self.binding(req)?;
        let endpoint_id = id_field(req, "EndpointID")?;
        let iface = &req["Interface"];
        let address = field(iface, "Address");
        if address.is_empty() {
            return Err(bad(
                "the endpoint has no IPv4 address: create the network with --ipam-driver overlay-ebpf",
            ));
        }
        let ip = parse_address(address)?;
        let mac = match field(iface, "MacAddress") {
            "" => None,
            m => Some(
                m.parse::<MacAddr>()
                    .map_err(|_| bad(format!("MacAddress {m:?} is not a MAC address")))?,
            ),
        };
        let services = service_labels(&req["Options"])?;
        let peer = peer_ifname(&net.network, ip);
        let ep = self
            .cluster
            .attach_docker(&net.network, ip, &peer, mac, services)
            .await
            .map_err(|e| match e {
                ClusterError::NotFound(_) => bad(format!(
                    "address {ip} was not handed out by the overlay-ebpf IPAM: create the network with --ipam-driver overlay-ebpf"
                )),
                e => e.into(),
            })?;
        let binding = EndpointBinding {
            network_id,
            network: net.network,
            ip,
            peer,
            sandbox: None,
        };
        self.endpoints
            .save(endpoint_id, &binding)
            .map_err(|e| Failure::Internal(format!("saving endpoint {endpoint_id}: {e}")))?;
        Ok(match mac {
            // Docker chose the MAC: the reply must not set one.
            Some(_) => json!({}),
            None => json!({"Interface": {"MacAddress": ep.mac.to_string()}}),
        })
    }

    fn endpoint_info(&self, req: &Value) -> Outcome {
        let id = id_field(req, "EndpointID")?;
        let value = match self.endpoints.load::<EndpointBinding>(id) {
            Some(b) => json!({"network": b.network, "ip": b.ip.to_string(), "interface": b.peer}),
            None => json!({}),
        };
        Ok(json!({"Value": value}))
    }

    async fn delete_endpoint(&self, req: &Value) -> Outcome {
        let id = id_field(req, "EndpointID")?;
        // Repeated or unknown: nothing left to do.
        let Some(b) = self.endpoints.load::<EndpointBinding>(id) else {
            return Ok(json!({}));
        };
        self.cluster.detach_docker(&b.network, b.ip).await?;
        self.endpoints.remove(id);
        Ok(json!({}))
    }

    /// The endpoint leaves its sandbox: its sockets are no longer this network's to balance.
    fn leave(&self, req: &Value) -> Outcome {
        let id = id_field(req, "EndpointID")?;
        if let Some(b) = self.endpoints.load::<EndpointBinding>(id) {
            if b.sandbox.is_some() {
                let b = EndpointBinding { sandbox: None, ..b };
                self.endpoints
                    .save(id, &b)
                    .map_err(|e| Failure::Internal(format!("saving endpoint {id}: {e}")))?;
            }
        }
        Ok(json!({}))
    }

    /// (overlay network, namespace) of every joined Docker endpoint on this host.
    pub fn sandboxes(&self) -> Vec<(String, std::path::PathBuf)> {
        self.endpoints
            .all::<EndpointBinding>()
            .into_iter()
            .filter_map(|b| Some((b.network, b.sandbox?)))
            .collect()
    }

    async fn join(&self, req: &Value) -> Outcome {
        let (_, net) = self.binding(req)?;
        let id = id_field(req, "EndpointID")?;
        let b: EndpointBinding = self.endpoints.load(id).ok_or_else(|| {
            bad(format!(
                "endpoint {id} does not exist on this host: CreateEndpoint first"
            ))
        })?;
        let gateway = self
            .cluster
            .network(&net.network)
            .await
            .map(|n| n.gateway_ip())
            .ok_or_else(|| bad(format!("overlay network {:?} is gone", net.network)))?;
        // Where the container's sockets live, for connect-time balancing.
        let sandbox = match field(req, "SandboxKey") {
            "" => None,
            key => Some(std::path::PathBuf::from(key)),
        };
        if sandbox != b.sandbox {
            let b = EndpointBinding {
                sandbox,
                ..b.clone()
            };
            self.endpoints
                .save(id, &b)
                .map_err(|e| Failure::Internal(format!("saving endpoint {id}: {e}")))?;
        }
        Ok(json!({
            "InterfaceName": {"SrcName": b.peer, "DstPrefix": "eth"},
            "Gateway": gateway.to_string(),
            "StaticRoutes": [],
            "DisableGatewayService": true,
        }))
    }
}

/// ReleasePool carries only a pool id, which may be anything we issued.
fn id_field_any<'a>(body: &'a Value, name: &str) -> Result<&'a str, Failure> {
    match field(body, name) {
        "" => Err(bad(format!("{name} is missing"))),
        v => Ok(v),
    }
}

/// The veth side Docker moves into the container: named after the host side.
fn peer_ifname(network: &str, ip: Ipv4Addr) -> String {
    let host = host_ifname(&docker_address_id(network, ip), DOCKER_IFNAME);
    format!("ovc{}", &host[3..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ids_round_trip() {
        let subnet: Ipv4Net = "198.19.1.0/24".parse().unwrap();
        let id = pool_id(Some("red"), subnet);
        assert!(matches!(parse_pool_id(&id), Ok((Some("red"), s)) if s == subnet));
        assert!(matches!(parse_pool_id(&pool_id(None, subnet)), Ok((None, s)) if s == subnet));
        assert!(parse_pool_id("LocalDefault/198.19.200.0/24").is_err());
    }

    #[test]
    fn peer_names_fit_an_interface_name() {
        let p = peer_ifname("red", "198.19.1.2".parse().unwrap());
        assert!(p.starts_with("ovc") && p.len() <= 15, "{p}");
        assert_ne!(p, peer_ifname("red", "198.19.1.3".parse().unwrap()));
    }
}
