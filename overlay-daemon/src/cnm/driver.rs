//! The libnetwork remote NetworkDriver and IpamDriver protocols, over the cluster.
//!
//! Docker asks IPAM for an address (RequestAddress) before the endpoint exists, so an address
//! is first reserved in etcd under this node's lease, then CreateEndpoint gives it a veth pair
//! whose far side Join hands to Docker to move into the container. DeleteEndpoint removes the
//! veth; ReleaseAddress frees the address.

use std::{net::Ipv4Addr, path::PathBuf, sync::Arc};

use serde_json::{json, Value};
use tracing::{debug, warn};

use super::protocol::*;
use super::state::{EndpointBinding, JsonDir, NetworkBinding};
use super::{docker_address_id, DOCKER_IFNAME};
use crate::{
    cluster::{host_ifname, Cluster, ClusterError},
    store::records::{NetworkRecord, RECORD_VERSION},
    tables::default_gateway,
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
            networks: JsonDir::new(&dir.join("networks")),
            endpoints: JsonDir::new(&dir.join("endpoints")),
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

    async fn request_pool(&self, req: PoolRequest) -> Outcome {
        let subnet = match (&req.network, req.subnet) {
            (Some(name), requested) => {
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
        let pool = PoolId {
            network: req.network,
            subnet,
        };
        Ok(json!({"PoolID": pool.to_string(), "Pool": subnet.to_string(), "Data": {}}))
    }

    async fn request_address(&self, req: AddressRequest) -> Outcome {
        let len = req.pool.subnet.prefix_len();
        if req.gateway {
            // The network may not exist yet (`-o vni=N` creates it after IPAM is asked).
            let net = match &req.pool.network {
                Some(n) => self.cluster.network(n).await,
                None => self.pool_network(&req.pool).await.ok().map(|(_, n)| n),
            };
            let gateway = net.map_or(default_gateway(req.pool.subnet), |n| n.gateway_ip());
            if req.address.is_some_and(|r| r != gateway) {
                return Err(bad(format!(
                    "the overlay network's gateway is {gateway}: drop --gateway or pass --gateway {gateway}"
                )));
            }
            return Ok(json!({"Address": format!("{gateway}/{len}"), "Data": {}}));
        }
        let (network, _) = self.pool_network(&req.pool).await?;
        let ep = self
            .cluster
            .reserve_address(&network, req.address, None)
            .await?;
        Ok(json!({"Address": format!("{}/{}", ep.ip, ep.prefix_len), "Data": {}}))
    }

    async fn release_address(&self, pool: PoolId, ip: Ipv4Addr) -> Outcome {
        // Whatever the pool's network is called now, the reservation says which it was.
        let candidates: Vec<String> = self
            .cluster
            .local_endpoints()
            .into_iter()
            .filter(|e| e.ifname == DOCKER_IFNAME && e.ip == ip && pool.subnet.contains(&e.ip))
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
            network,
            vni,
        } = req;
        let name = match (network, vni) {
            (Some(n), _) => n,
            (None, Some(vni)) => format!("docker-vni-{vni}"),
            (None, None) => {
                let by_subnet = PoolId {
                    network: None,
                    subnet: pool,
                };
                self.pool_network(&by_subnet).await.map_err(|_| {
                    bad("pass -o network=NAME (an existing overlay network) or -o vni=N to create one")
                })?.0
            }
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
                    subnet6: None,
                    gateway6: None,
                    block_len6: None,
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
            .save(&network_id, &NetworkBinding { network: name })
            .map_err(|e| Failure::Internal(format!("saving network {network_id}: {e}")))?;
        Ok(json!({}))
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
        let peer = peer_ifname(&net.network, ip);
        let ep = self
            .cluster
            .attach_docker(&net.network, ip, &peer, req.mac, req.services)
            .await
            .map_err(|e| match e {
                ClusterError::NotFound(_) => bad(format!(
                    "address {ip} was not handed out by the overlay-ebpf IPAM: create the network with --ipam-driver overlay-ebpf"
                )),
                e => e.into(),
            })?;
        let binding = EndpointBinding {
            network_id: req.network_id,
            network: net.network,
            ip,
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
            Some(b) => json!({"network": b.network, "ip": b.ip.to_string(), "interface": b.peer}),
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
        let gateway = self
            .cluster
            .network(&net.network)
            .await
            .map(|n| n.gateway_ip())
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
        Ok(json!({
            "InterfaceName": {"SrcName": b.peer, "DstPrefix": "eth"},
            "Gateway": gateway.to_string(),
            "StaticRoutes": [],
            "DisableGatewayService": true,
        }))
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
