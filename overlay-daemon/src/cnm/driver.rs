//! The libnetwork remote NetworkDriver and IpamDriver protocols, over the cluster.
//!
//! Docker asks IPAM for an address (RequestAddress) before the endpoint exists, so an address
//! is first reserved in etcd under this node's lease, then CreateEndpoint gives it a veth pair
//! whose far side Join hands to Docker to move into the container. DeleteEndpoint removes the
//! veth; ReleaseAddress frees the address.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
};

use ipnet::IpNet;

use serde_json::{json, Value};
use tracing::{debug, warn};

use super::protocol::*;
use super::state::{EndpointBinding, JsonDir, NetworkBinding};
use super::{docker_address_id, endpoints::DockerAttach, DOCKER_IFNAME};
use overlay_api::Attachment;

use crate::{
    cluster::{host_ifname, Cluster, ClusterError},
    store::records::{NetworkRecord, RECORD_VERSION},
    tables::{default_gateway, default_gateway6},
};

pub struct Driver {
    cluster: Arc<Cluster>,
    networks: JsonDir,
    endpoints: JsonDir,
}

impl Driver {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        let dir = cluster.run_dir().join("docker");
        Self {
            networks: JsonDir::open(&dir.join("networks")),
            endpoints: JsonDir::open(&dir.join("endpoints")),
            cluster,
        }
    }

    /// Handles one plugin call: `method` is the request path, e.g. `/NetworkDriver.Join`.
    pub async fn call(&self, method: &str, body: &[u8]) -> Reply {
        let call = match decode(method, body) {
            Ok(call) => call,
            Err(reply) => {
                debug!(method, status = reply.status, body = %reply.body, "refused");
                return reply;
            }
        };
        debug!(method, ?call, "Docker plugin call");
        let outcome = match call {
            Call::Constant(v) => Ok(v),
            Call::RequestPool(r) => self.request_pool(r).await,
            Call::ReleasePool => Ok(json!({})),
            Call::RequestAddress(r) => self.request_address(r).await,
            Call::ReleaseAddress { pool, ip } => self.release_address(pool, ip).await,
            Call::CreateNetwork(r) => self.create_network(r).await,
            Call::DeleteNetwork { network_id } => {
                // The overlay network stays: other hosts and runtimes may use it.
                self.networks.remove(&network_id);
                Ok(json!({}))
            }
            Call::CreateEndpoint(r) => self.create_endpoint(r).await,
            Call::EndpointOperInfo { endpoint_id } => Ok(self.endpoint_info(&endpoint_id)),
            Call::DeleteEndpoint { endpoint_id } => self.delete_endpoint(&endpoint_id).await,
            Call::Join {
                network_id,
                endpoint_id,
                sandbox,
            } => self.join(&network_id, &endpoint_id, sandbox).await,
            Call::Leave { endpoint_id } => self.leave(&endpoint_id),
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
    async fn pool_network(&self, pool: &PoolId) -> Result<(String, NetworkRecord), Failure> {
        if let Some(name) = &pool.network {
            let net = self.cluster.network(name).await.ok_or_else(|| {
                bad(format!(
                    "overlay network {name:?} does not exist: create it with `overlayctl network create`"
                ))
            })?;
            return Ok((name.clone(), net));
        }
        let subnet = pool.subnet;
        let mut found: Vec<_> = self
            .cluster
            .networks()
            .await
            .into_iter()
            .filter(|(_, n)| pool_of(n, matches!(subnet, IpNet::V6(_))) == Some(subnet))
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

    async fn request_pool(&self, req: PoolRequest) -> Outcome {
        let subnet = match (&req.network, req.subnet) {
            (Some(name), requested) => {
                let net = self.cluster.network(name).await.ok_or_else(|| {
                    bad(format!(
                        "overlay network {name:?} does not exist: create it with `overlayctl network create` or drop --ipam-opt network"
                    ))
                })?;
                let ours = pool_of(&net, req.v6).ok_or_else(|| {
                    bad(if req.v6 {
                        format!(
                            "overlay network {name:?} has no IPv6 subnet: drop --ipv6, or use a dual-stack network (`overlayctl network create --subnet <IPv4> --subnet <IPv6>`)"
                        )
                    } else {
                        format!(
                            "overlay network {name:?} is IPv6-only: Docker's driver needs an IPv4 subnet (libnetwork asks for an IPv4 address first); attach containers through CNI, or use a dual-stack network"
                        )
                    })
                })?;
                if requested.is_some_and(|r| r != ours) {
                    return Err(bad(format!(
                        "overlay network {name:?} has subnet {ours}: pass --subnet {ours}"
                    )));
                }
                ours
            }
            (None, Some(subnet)) => subnet,
            (None, None) => {
                return Err(bad(
                    "pass --subnet (the overlay network's subnet) or --ipam-opt network=NAME",
                ))
            }
        };
        let pool = PoolId {
            network: req.network,
            subnet,
        };
        Ok(json!({"PoolID": pool.to_string(), "Pool": subnet.to_string(), "Data": {}}))
    }

    async fn request_address(&self, req: AddressRequest) -> Outcome {
        if req.gateway {
            return self.gateway_address(&req).await;
        }
        if let IpNet::V6(_) = req.pool.subnet {
            return self.request_address6(req).await;
        }
        let requested = match req.address {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        };
        let (network, _) = self.pool_network(&req.pool).await?;
        let ep = self
            .cluster
            .reserve_address(&network, requested, req.mac)
            .await?;
        // `reserve_address` refuses IPv6-only networks: a Docker endpoint has IPv4.
        let v4 = ep
            .ipv4
            .ok_or_else(|| bad(format!("network {network} is IPv6-only")))?;
        Ok(json!({"Address": format!("{}/{}", v4.ip, v4.prefix_len), "Data": {}}))
    }

    /// The gateway of the pool's family, which Docker asks for when it creates the network.
    /// The network may not exist yet (`-o vni=N` creates it after IPAM is asked).
    async fn gateway_address(&self, req: &AddressRequest) -> Outcome {
        let net = match &req.pool.network {
            Some(n) => self.cluster.network(n).await,
            None => self.pool_network(&req.pool).await.ok().map(|(_, n)| n),
        };
        let gateway = match req.pool.subnet {
            IpNet::V4(s) => IpAddr::V4(
                net.and_then(|n| n.gateway_ip())
                    .unwrap_or_else(|| default_gateway(s)),
            ),
            IpNet::V6(s) => IpAddr::V6(
                net.and_then(|n| n.ipv6())
                    .map_or(default_gateway6(s), |v6| v6.gateway),
            ),
        };
        if req.address.is_some_and(|r| r != gateway) {
            return Err(bad(format!(
                "the overlay network's gateway is {gateway}: drop --gateway or pass --gateway {gateway}"
            )));
        }
        let len = req.pool.subnet.prefix_len();
        Ok(json!({"Address": format!("{gateway}/{len}"), "Data": {}}))
    }

    /// An IPv6 address is reserved with the endpoint's IPv4 one, which Docker asks for
    /// first: this hands it out, found by the MAC both requests carry.
    async fn request_address6(&self, req: AddressRequest) -> Outcome {
        let (network, _) = self.pool_network(&req.pool).await?;
        let Some(mac) = req.mac else {
            return Err(bad(format!(
                "the request has no {MAC_OPTION}, which ties an IPv6 address to its endpoint: restart dockerd (it reads a driver's capabilities once, when it first loads it)"
            )));
        };
        let mut mine: Vec<_> = self
            .cluster
            .local_endpoints()
            .into_iter()
            .filter(|e| e.ifname == DOCKER_IFNAME && e.network == network && e.mac == mac)
            .collect();
        let ep = match mine.len() {
            1 => mine.remove(0),
            0 => {
                return Err(bad(format!(
                    "no IPv4 address of {network} was reserved for MAC {mac}: endpoints need an IPv4 address too (IPv6-only Docker networks are not supported)"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "several endpoints of {network} have MAC {mac}: give each container its own --mac-address"
                )))
            }
        };
        let refused = match ep.ipv6 {
            None => Some(format!(
                "overlay network {network:?} has no IPv6 subnet: drop --ipv6"
            )),
            Some(v6) if req.address.is_some_and(|a| a != IpAddr::V6(v6.ip)) => Some(format!(
                "an IPv6 address cannot be chosen (--ip6): the cluster IPAM reserved {} with {}; drop --ip6",
                v6.ip,
                ep.key_ip()
            )),
            Some(_) => None,
        };
        if let Some(msg) = refused {
            // Docker releases nothing when its second address request fails: the IPv4
            // reservation goes now, not when the reaper finds it unused.
            if let (Attachment::Reserved, Some(ip)) = (&ep.attachment, ep.ip()) {
                let id = docker_address_id(&network, ip);
                if let Err(e) = self.cluster.delete_endpoint(&id, DOCKER_IFNAME).await {
                    warn!(%ip, network, "releasing a refused endpoint's IPv4 address: {e}");
                }
            }
            return Err(bad(msg));
        }
        let v6 = ep.ipv6.expect("checked above");
        Ok(json!({"Address": format!("{}/{}", v6.ip, v6.prefix_len), "Data": {}}))
    }

    async fn release_address(&self, pool: PoolId, ip: IpAddr) -> Outcome {
        let ip = match ip {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip6) => {
                // Normally released with its IPv4 address (already gone by now); alone, for a
                // reservation whose container will not have it. An attached endpoint keeps
                // its claim until its IPv4 address goes: never handed out twice.
                let holders: Vec<_> = self
                    .cluster
                    .local_endpoints()
                    .into_iter()
                    .filter(|e| e.ifname == DOCKER_IFNAME && e.ipv6.is_some_and(|v| v.ip == ip6))
                    .collect();
                for e in holders {
                    if let Some(ip) = e.ip() {
                        self.cluster.drop_docker_ipv6(&e.network, ip).await?;
                    }
                }
                return Ok(json!({}));
            }
        };
        // Whatever the pool's network is called now, the reservation says which it was.
        let candidates: Vec<String> = self
            .cluster
            .local_endpoints()
            .into_iter()
            .filter(|e| e.ifname == DOCKER_IFNAME && e.ip() == Some(ip))
            .filter(|_| pool.subnet.contains(&IpAddr::V4(ip)))
            .filter(|e| pool.network.as_ref().is_none_or(|n| *n == e.network))
            .map(|e| e.network)
            .collect();
        for network in candidates {
            let id = docker_address_id(&network, ip);
            self.cluster.delete_endpoint(&id, DOCKER_IFNAME).await?;
        }
        Ok(json!({}))
    }

    async fn create_network(&self, req: NetworkCreate) -> Outcome {
        let NetworkCreate {
            network_id,
            pool,
            pool6,
            network,
            vni,
            mtu,
        } = req;
        let name = match (network, vni) {
            (Some(n), _) => n,
            (None, Some(vni)) => format!("docker-vni-{vni}"),
            (None, None) => {
                let by_subnet = PoolId {
                    network: None,
                    subnet: pool.into(),
                };
                self.pool_network(&by_subnet).await.map_err(|_| {
                    bad("pass -o network=NAME (an existing overlay network) or -o vni=N to create one")
                })?.0
            }
        };
        let existing = self.cluster.network(&name).await;
        // Checked before anything is made: a refused option leaves no network behind.
        if let Some(mtu) = mtu {
            self.check_mtu(mtu, existing.as_ref(), pool6.is_some())?;
        }
        match existing {
            Some(net) => {
                if vni.is_some_and(|v| v != net.vni) {
                    return Err(bad(format!(
                        "overlay network {name:?} has VNI {}: drop -o vni or use -o vni={}",
                        net.vni, net.vni
                    )));
                }
                match net.subnet {
                    Some(s) if s == pool => {}
                    Some(s) => {
                        return Err(bad(format!(
                            "overlay network {name:?} has subnet {s}: pass --subnet {s}"
                        )))
                    }
                    None => {
                        return Err(bad(format!(
                            "overlay network {name:?} is IPv6-only: Docker's driver needs a network with an IPv4 subnet (attach containers through CNI, or use another network)"
                        )))
                    }
                }
                let ours6 = net.ipv6().map(|v6| v6.subnet);
                if pool6.is_some_and(|p| Some(p) != ours6) {
                    return Err(bad(match ours6 {
                        Some(s) => format!(
                            "overlay network {name:?} has IPv6 subnet {s}: pass --subnet {s}"
                        ),
                        None => format!("overlay network {name:?} has no IPv6 subnet: drop --ipv6"),
                    }));
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
                    subnet: Some(pool),
                    block_len: pool.prefix_len().max(26),
                    gateway: None,
                    mtu: None,
                    subnet6: pool6,
                    gateway6: None,
                    block_len6: pool6.map(|p| p.prefix_len().max(96)),
                    service_range: None,
                    service_range6: None,
                };
                record.check(&name).map_err(bad)?;
                if !self.cluster.create_network(&name, record).await? {
                    // Someone else may have created the same network meanwhile.
                    let same = self.cluster.network(&name).await.is_some_and(|n| {
                        n.vni == vni && n.subnet == Some(pool) && n.subnet6 == pool6
                    });
                    if !same {
                        return Err(bad(format!(
                            "network {name:?} or VNI {vni} is already in use: pick another"
                        )));
                    }
                }
            }
        }
        self.networks
            .save(&network_id, &NetworkBinding { network: name, mtu })
            .map_err(|e| Failure::Internal(format!("saving network {network_id}: {e}")))?;
        Ok(json!({}))
    }

    /// Docker's MTU option, against what the overlay can carry here and what the network
    /// needs: refused with the bounds rather than accepted and not applied.
    /// `ipv6`: the Docker network asks for IPv6 (a network it creates has it).
    fn check_mtu(&self, mtu: u32, net: Option<&NetworkRecord>, ipv6: bool) -> Result<(), Failure> {
        let max = self.cluster.max_mtu(net);
        let min = if ipv6 || net.is_some_and(|n| n.ipv6().is_some()) {
            overlay_common::wire::IPV6_MIN_MTU as u32
        } else {
            overlay_common::wire::IPV4_MIN_MTU as u32
        };
        if mtu > max {
            return Err(bad(format!(
                "-o {MTU_OPTION}={mtu}: above the largest MTU this overlay gives containers on this node, {max} (the underlay's minus VXLAN's 50 bytes, 70 over IPv6, or the network's): pass {max} or less"
            )));
        }
        if mtu < min {
            return Err(bad(format!(
                "-o {MTU_OPTION}={mtu}: below {min}, the least this network's address families work with: pass {min} or more"
            )));
        }
        Ok(())
    }

    fn binding(&self, id: &str) -> Result<NetworkBinding, Failure> {
        self.networks.load(id).ok_or_else(|| {
            bad(format!(
                "network {id} is unknown to overlay-ebpf on this host: create it with `docker network create -d overlay-ebpf`"
            ))
        })
    }

    async fn create_endpoint(&self, req: EndpointCreate) -> Outcome {
        let net = self.binding(&req.network_id)?;
        let ip = req.ip;
        if req.ip6.is_none() {
            // A Docker network without --ipv6 (or IPv6 off in the container).
            self.cluster.drop_docker_ipv6(&net.network, ip).await?;
        }
        let peer = peer_ifname(&net.network, ip);
        let ep = self
            .cluster
            .attach_docker(
                &net.network,
                ip,
                DockerAttach {
                    endpoint_id: &req.endpoint_id,
                    peer: &peer,
                    mac: req.mac,
                    services: req.services,
                    name: req.name,
                    mtu: net.mtu,
                },
            )
            .await
            .map_err(|e| match e {
                ClusterError::NotFound(_) => bad(format!(
                    "address {ip} was not handed out by the overlay-ebpf IPAM: create the network with --ipam-driver overlay-ebpf"
                )),
                e => e.into(),
            })?;
        let ours6 = ep.ipv6.map(|v6| v6.ip);
        if req.ip6.is_some_and(|a| Some(a) != ours6) {
            return Err(bad(format!(
                "IPv6 address {} was not handed out by the overlay-ebpf IPAM for {ip}: create the network with --ipam-driver overlay-ebpf",
                req.ip6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED)
            )));
        }
        let binding = EndpointBinding {
            network_id: req.network_id,
            network: net.network,
            ip,
            ip6: req.ip6,
            peer,
            sandbox: None,
        };
        let endpoint_id = &req.endpoint_id;
        self.endpoints
            .save(endpoint_id, &binding)
            .map_err(|e| Failure::Internal(format!("saving endpoint {endpoint_id}: {e}")))?;
        Ok(match req.mac {
            // Docker chose the MAC: the reply must not set one.
            Some(_) => json!({}),
            None => json!({"Interface": {"MacAddress": ep.mac.to_string()}}),
        })
    }

    fn endpoint_info(&self, id: &str) -> Value {
        let value = match self.endpoints.load::<EndpointBinding>(id) {
            Some(b) => json!({
                "network": b.network,
                "ip": b.ip.to_string(),
                "ip6": b.ip6.map(|a| a.to_string()),
                "interface": b.peer,
            }),
            None => json!({}),
        };
        json!({"Value": value})
    }

    async fn delete_endpoint(&self, id: &str) -> Outcome {
        // Repeated or unknown: nothing left to do.
        let Some(b) = self.endpoints.load::<EndpointBinding>(id) else {
            return Ok(json!({}));
        };
        self.cluster.detach_docker(&b.network, b.ip).await?;
        self.endpoints.remove(id);
        Ok(json!({}))
    }

    /// The endpoint leaves its sandbox: its sockets are no longer this network's to balance.
    fn leave(&self, id: &str) -> Outcome {
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

    async fn join(&self, network_id: &str, id: &str, sandbox: Option<PathBuf>) -> Outcome {
        let net = self.binding(network_id)?;
        let b: EndpointBinding = self.endpoints.load(id).ok_or_else(|| {
            bad(format!(
                "endpoint {id} does not exist on this host: CreateEndpoint first"
            ))
        })?;
        let overlay = self
            .cluster
            .network(&net.network)
            .await
            .ok_or_else(|| bad(format!("overlay network {:?} is gone", net.network)))?;
        if sandbox != b.sandbox {
            let b = EndpointBinding {
                sandbox,
                ..b.clone()
            };
            self.endpoints
                .save(id, &b)
                .map_err(|e| Failure::Internal(format!("saving endpoint {id}: {e}")))?;
        }
        let mut reply = json!({
            "InterfaceName": {"SrcName": b.peer, "DstPrefix": "eth"},
            "Gateway": overlay.gateway_ip().map(|g| g.to_string()).unwrap_or_default(),
            "StaticRoutes": [],
            "DisableGatewayService": true,
        });
        // Only with an IPv6 address in the container: the route needs one on the link.
        if let (Some(_), Some(v6)) = (b.ip6, overlay.ipv6()) {
            reply["GatewayIPv6"] = json!(v6.gateway.to_string());
        }
        Ok(reply)
    }
}

/// The network's pool of one family.
fn pool_of(net: &NetworkRecord, v6: bool) -> Option<IpNet> {
    if v6 {
        net.ipv6().map(|v6| IpNet::V6(v6.subnet))
    } else {
        net.subnet.map(IpNet::V4)
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
    fn peer_names_fit_an_interface_name() {
        let p = peer_ifname("red", "198.19.1.2".parse().unwrap());
        assert!(p.starts_with("ovc") && p.len() <= 15, "{p}");
        assert_ne!(p, peer_ifname("red", "198.19.1.3".parse().unwrap()));
    }
}
