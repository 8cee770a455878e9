//! Cluster-wide address allocation: addresses come from blocks of the network's subnet that
//! this node claims; each block claim and each address is one etcd transaction, so no
//! address is ever handed out twice, whatever other nodes do concurrently.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use overlay_api::{
    labels::parse_service_label, Attachment, Endpoint, EndpointRequest, Ipv4Assignment, Sandbox,
};
use tracing::info;

use super::{Cluster, ClusterError};
use crate::{
    ipam::{self, IpamError},
    store::{
        keys::{valid_name, Key},
        records::{self, BlockRecord, NetworkRecord, RECORD_VERSION},
        Store,
    },
    tables::MacAddr,
};

/// How an endpoint's address is chosen and what the endpoint is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Any free address, for an interface made now (CNI, the API).
    Interface,
    /// A Docker reservation: the requested address or any free one, named by its address
    /// until Docker names the endpoint (`cnm::docker_address_id`).
    Docker { requested: Option<Ipv4Addr> },
}

impl Cluster {
    /// Validates the request and allocates its address (one etcd transaction), remembering
    /// the endpoint locally before anything touches the host, so a crash from then on is
    /// cleaned up. The caller holds `alloc`.
    pub(crate) async fn reserve_locked(
        &self,
        req: &EndpointRequest,
        claim: Claim,
        sandbox: Sandbox,
        attachment: Attachment,
    ) -> Result<(Store, i64, Endpoint), ClusterError> {
        if !valid_name(&req.network) {
            return Err(ClusterError::Invalid(format!(
                "network name {:?}",
                req.network
            )));
        }
        if req.container_id.is_empty() || req.ifname.is_empty() || req.ifname.len() > 15 {
            return Err(ClusterError::Invalid(
                "container_id and ifname (at most 15 characters) are required".into(),
            ));
        }
        for label in &req.services {
            parse_service_label(label).map_err(ClusterError::Invalid)?;
        }
        if let Some(bw) = &req.bandwidth {
            bw.check().map_err(ClusterError::Invalid)?;
        }
        if claim == Claim::Interface && self.local.load(&req.container_id, &req.ifname).is_some() {
            return Err(ClusterError::Exists {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
            });
        }
        let lease = self.lease().ok_or(ClusterError::NotRegistered)?;
        let store = self.try_store()?;
        let net = {
            let view = self.view.lock().await;
            // Before the first listing every network looks missing: not a reason to refuse.
            if view.revision == 0 {
                return Err(ClusterError::NotSynced);
            }
            view.network(&req.network)
                .cloned()
                .ok_or_else(|| ClusterError::NoSuchNetwork(req.network.clone()))?
        };
        let v4 = net.subnet.zip(net.gateway_ip());
        let max = self.cfg.mtu;
        if let Some(mtu) = req.mtu.filter(|m| *m > max) {
            return Err(ClusterError::Invalid(format!(
                "mtu {mtu} is above this node's maximum {max} (underlay MTU {} - {} for VXLAN): ask for {max} or less",
                max + self.cfg.vteps.overhead(),
                self.cfg.vteps.overhead()
            )));
        }
        if let Some(mtu) = net.mtu.filter(|m| *m > max) {
            tracing::warn!(network = %req.network, mtu, max, "the network's MTU is above this node's maximum; its containers here get {max}");
        }
        let mut ep = Endpoint {
            network: req.network.clone(),
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            sandbox,
            ipv4: None,
            ipv6: None,
            mac: MacAddr([0; 6]),
            mtu: [Some(self.cfg.mtu), net.mtu, req.mtu]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(self.cfg.mtu),
            vni: net.vni,
            attachment,
            host_mac: None,
            owner: req.owner,
            services: req.services.clone(),
            pod: req.pod.clone(),
            docker_endpoint: None,
            name: req.name.clone(),
            bandwidth: req.bandwidth.as_deref().copied(),
            // The network's gateways answer DNS (docs/dns.md).
            dns: self
                .cfg
                .dns_domain
                .as_ref()
                .map(|domain| overlay_api::EndpointDns {
                    nameservers: net
                        .gateway_ip()
                        .map(std::net::IpAddr::V4)
                        .into_iter()
                        .chain(net.ipv6().map(|n| std::net::IpAddr::V6(n.gateway)))
                        .collect(),
                    search: vec![format!("{}.{domain}", req.network), domain.clone()],
                }),
            // Set once the interface is configured (the runtime's own for Docker).
            default_routes: overlay_api::DefaultRoutes::default(),
        };
        // IPv6 needs 1280 bytes (RFC 8200): below that the kernel turns it off on the
        // interface, and the address could not be configured.
        let min6 = overlay_common::wire::IPV6_MIN_MTU as u32;
        if net.ipv6().is_some() && ep.mtu < min6 {
            return Err(ClusterError::Invalid(format!(
                "network {} has IPv6, which needs an MTU of at least {min6}, this endpoint would get {}: ask for a larger mtu, or raise the network's or the underlay's",
                req.network, ep.mtu
            )));
        }
        if v4.is_none() && matches!(claim, Claim::Docker { .. }) {
            return Err(ClusterError::Invalid(format!(
                "network {} is IPv6-only: Docker's driver needs an IPv4 subnet (libnetwork asks for an IPv4 address first); attach containers through CNI (podman, containerd), or add an IPv4 subnet",
                req.network
            )));
        }
        // Decided before the keys are written: both go in one transaction.
        if let Some(v6) = net.ipv6() {
            let none = BTreeSet::new();
            ep.ipv6 = Some(
                self.allocate6(&store, lease, &req.network, v6, &none)
                    .await?,
            );
        }
        match (claim, v4, net.ipv6()) {
            (_, None, Some(v6)) => {
                self.create_v6_only(&store, lease, &mut ep, v6, req.mac)
                    .await?;
            }
            (_, None, None) => {
                return Err(ClusterError::Invalid(format!(
                    "network {} has no subnet",
                    req.network
                )))
            }
            (
                Claim::Docker {
                    requested: Some(ip),
                },
                Some((subnet, gateway)),
                _,
            ) => {
                let usable = subnet.contains(&ip)
                    && ip != subnet.network()
                    && ip != subnet.broadcast()
                    && ip != gateway;
                // One this node holds already is taken, even before etcd's echo reaches the
                // view: its record would equal the new one, which a repeated write would
                // take for its own.
                if self.holds_locally(&req.network, ip) {
                    return Err(ClusterError::AddressTaken(ip));
                }
                if !usable {
                    return Err(ClusterError::Invalid(format!(
                        "address {ip} is not a usable host address of {subnet} (gateway {gateway})"
                    )));
                }
                ep.ipv4 = Some(Ipv4Assignment {
                    ip,
                    prefix_len: subnet.prefix_len(),
                    gateway,
                });
                ep.mac = req.mac.unwrap_or_else(|| MacAddr::from_ip(ip));
                ep.container_id = crate::cnm::docker_address_id(&req.network, ip);
                if !self
                    .create_endpoint_keys(&store, lease, &mut ep, net.ipv6())
                    .await?
                {
                    return Err(ClusterError::AddressTaken(ip));
                }
            }
            (_, Some(v4), _) => {
                self.allocate(&store, lease, &net, &mut ep, v4, req.mac, claim)
                    .await?;
            }
        }
        self.local.save(&ep)?;
        Ok((store, lease, ep))
    }

    /// Whether this node has an endpoint (or reservation) with `ip` in `network`.
    fn holds_locally(&self, network: &str, ip: Ipv4Addr) -> bool {
        self.local
            .all()
            .iter()
            .any(|e| e.network == network && e.ip() == Some(ip))
    }

    /// Finds a free IPv4 address of `subnet` in a block this node holds, claiming a new
    /// block when needed, and gives it to `ep`. The endpoint key is created in the same
    /// step, in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn allocate(
        &self,
        store: &Store,
        lease: i64,
        net: &NetworkRecord,
        ep: &mut Endpoint,
        (subnet, gateway): (ipnet::Ipv4Net, Ipv4Addr),
        mac: Option<MacAddr>,
        claim: Claim,
    ) -> Result<(), ClusterError> {
        let me = self.cfg.node_name.clone();
        let network = ep.network.clone();
        let all_blocks = ipam::blocks(subnet, net.block_len)?;
        let (mut mine, mut others_blocks, mut taken) = {
            let view = self.view.lock().await;
            let mine: Vec<_> = view
                .blocks()
                .filter(|(n, _, b)| *n == network && b.node == me)
                .filter_map(|(_, b, _)| v4_block(b))
                .collect();
            let others: BTreeSet<_> = view
                .blocks()
                .filter(|(n, _, b)| *n == network && b.node != me)
                .filter_map(|(_, b, _)| v4_block(b))
                .collect();
            let mut taken: BTreeSet<_> = view
                .endpoints()
                .filter_map(|(n, ip, _)| match ip {
                    IpAddr::V4(ip) if n == network => Some(ip),
                    _ => None,
                })
                .collect();
            // This node's own, whether or not the view has them yet (see `holds_locally`).
            taken.extend(
                self.local
                    .all()
                    .into_iter()
                    .filter(|e| e.network == network)
                    .filter_map(|e| e.ip()),
            );
            (mine, others, taken)
        };
        let block_value = records::encode(&BlockRecord {
            version: RECORD_VERSION,
            node: me.clone(),
        });
        loop {
            for block in &mine {
                while let Some(ip) = ipam::first_free(*block, subnet, gateway, &taken) {
                    ep.ipv4 = Some(Ipv4Assignment {
                        ip,
                        prefix_len: subnet.prefix_len(),
                        gateway,
                    });
                    ep.mac = mac.unwrap_or_else(|| MacAddr::from_ip(ip));
                    if let Claim::Docker { .. } = claim {
                        ep.container_id = crate::cnm::docker_address_id(&network, ip);
                    }
                    if self
                        .create_endpoint_keys(store, lease, ep, net.ipv6())
                        .await?
                    {
                        return Ok(());
                    }
                    taken.insert(ip);
                }
            }
            // Claim the first block nobody holds.
            let mut claimed = None;
            let candidates: Vec<_> = all_blocks
                .iter()
                .filter(|b| !mine.contains(b) && !others_blocks.contains(b))
                .copied()
                .collect();
            for block in candidates {
                let key = store.layout.key(&Key::Block {
                    network: network.clone(),
                    block: block.into(),
                });
                if self
                    .claim(store, lease, &network, key, block_value.clone())
                    .await?
                {
                    info!(%block, network, "claimed address block");
                    claimed = Some(block);
                    break;
                }
                others_blocks.insert(block);
            }
            match claimed {
                Some(b) => mine = vec![b],
                None => return Err(IpamError::Exhausted(network).into()),
            }
        }
    }
}

fn v4_block(b: ipnet::IpNet) -> Option<ipnet::Ipv4Net> {
    match b {
        ipnet::IpNet::V4(b) => Some(b),
        ipnet::IpNet::V6(_) => None,
    }
}
