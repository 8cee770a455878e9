//! IPv6 addresses of dual-stack networks: from IPv6 blocks this node claims, exactly as
//! IPv4 blocks are claimed (one etcd transaction each, so no two nodes hold a block). The
//! address is claimed with a key of its own (`endpoints6/`), created only if absent in the
//! same transaction as the endpoint's record (`Cluster::create_endpoint_keys`).

use std::{collections::BTreeSet, net::Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};
use overlay_api::{Endpoint, Ipv6Assignment, MacAddr};
use tracing::info;

use super::{Cluster, ClusterError};
use crate::{
    ipam::{self, IpamError},
    store::{
        keys::Key,
        records::{self, BlockRecord, Net6, RECORD_VERSION},
        Refused, Store,
    },
};

impl Cluster {
    /// Picks a free IPv6 address of `network` in a block this node holds, claiming one
    /// when needed. The caller holds `alloc` and writes the address in the endpoint record.
    pub(crate) async fn allocate6(
        &self,
        store: &Store,
        lease: i64,
        network: &str,
        v6: Net6,
        also_taken: &BTreeSet<Ipv6Addr>,
    ) -> Result<Ipv6Assignment, ClusterError> {
        let me = self.cfg.node_name.clone();
        let (mut mine, mut others, taken) = {
            let view = self.view.lock().await;
            let mut mine = Vec::new();
            let mut others = BTreeSet::new();
            for (n, block, b) in view.blocks() {
                let IpNet::V6(block) = block else { continue };
                if n != network || block.prefix_len() != v6.block_len {
                    continue;
                }
                if b.node == me {
                    mine.push(block);
                } else {
                    others.insert(block);
                }
            }
            let mut taken: BTreeSet<Ipv6Addr> = view.ipv6_in(network).collect();
            taken.extend(also_taken);
            // This node's own, whether or not the view has them yet.
            taken.extend(
                self.local
                    .all()
                    .into_iter()
                    .filter(|e| e.network == network)
                    .filter_map(|e| e.ipv6.map(|a| a.ip)),
            );
            (mine, others, taken)
        };
        let assignment = |ip| Ipv6Assignment {
            ip,
            prefix_len: v6.subnet.prefix_len(),
            gateway: v6.gateway,
        };
        for block in &mine {
            if let Some(ip) = ipam::first_free6(*block, v6.subnet, v6.gateway, &taken) {
                return Ok(assignment(ip));
            }
        }
        let block = self
            .claim_block6(store, lease, network, v6, &mine, &mut others)
            .await?;
        mine.push(block);
        ipam::first_free6(block, v6.subnet, v6.gateway, &taken)
            .map(assignment)
            .ok_or_else(|| IpamError::Exhausted(network.to_owned()).into())
    }

    /// Creates an address block's key under `lease` if nobody holds it, while `network`
    /// exists (a block claimed after `network rm` would outlive the network).
    pub(crate) async fn claim(
        &self,
        store: &Store,
        lease: i64,
        network: &str,
        key: String,
        value: Vec<u8>,
    ) -> Result<bool, ClusterError> {
        let guard = store.layout.key(&Key::Network(network.to_owned()));
        match store
            .create_all(&[(key, value)], Some(lease), &guard)
            .await?
        {
            Ok(()) => Ok(true),
            Err(Refused::Taken(_)) => Ok(false),
            Err(Refused::GuardGone) => Err(ClusterError::NoSuchNetwork(network.to_owned())),
        }
    }

    /// Creates the endpoint's record and, on a dual-stack network, its IPv6 claim, in one
    /// transaction. An IPv6 address someone holds (the view did not show it yet) is
    /// replaced by the next free one; false: the IPv4 address is taken.
    pub(crate) async fn create_endpoint_keys(
        &self,
        store: &Store,
        lease: i64,
        ep: &mut Endpoint,
        v6: Option<Net6>,
    ) -> Result<bool, ClusterError> {
        let mut skip = BTreeSet::new();
        loop {
            let kvs = self.endpoint_kvs(store, ep);
            let network = store.layout.key(&Key::Network(ep.network.clone()));
            match store.create_all(&kvs, Some(lease), &network).await? {
                Ok(()) => {
                    self.put_endpoint_info(store, lease, ep).await?;
                    return Ok(true);
                }
                Err(Refused::GuardGone) => {
                    return Err(ClusterError::NoSuchNetwork(ep.network.clone()))
                }
                Err(Refused::Taken(taken)) if taken.contains(&0) => return Ok(false),
                Err(Refused::Taken(_)) => {
                    let (Some(v6), Some(held)) = (v6, ep.ipv6) else {
                        return Ok(false);
                    };
                    skip.insert(held.ip);
                    ep.ipv6 = Some(self.allocate6(store, lease, &ep.network, v6, &skip).await?);
                }
            }
        }
    }

    /// Creates the key of an endpoint of an IPv6-only network, named by its IPv6 address
    /// (created only if absent: an address someone holds is replaced by the next free one).
    /// Its MAC is `mac`, or derived from the address, another derivation tried while an
    /// endpoint of the network has it.
    pub(crate) async fn create_v6_only(
        &self,
        store: &Store,
        lease: i64,
        ep: &mut Endpoint,
        v6: Net6,
        mac: Option<MacAddr>,
    ) -> Result<(), ClusterError> {
        let mut macs: BTreeSet<MacAddr> = {
            let view = self.view.lock().await;
            view.endpoints()
                .filter(|(n, _, _)| *n == ep.network)
                .map(|(_, _, e)| e.mac)
                .collect()
        };
        macs.extend(
            self.local
                .all()
                .into_iter()
                .filter(|e| e.network == ep.network)
                .map(|e| e.mac),
        );
        macs.insert(MacAddr::gateway(ep.vni));
        if let Some(m) = mac.filter(|m| macs.contains(m)) {
            return Err(ClusterError::Invalid(format!(
                "MAC {m} is taken in network {}: give another, or none (one is derived)",
                ep.network
            )));
        }
        let mut skip = BTreeSet::new();
        loop {
            let Some(held) = ep.ipv6 else {
                return Err(IpamError::Exhausted(ep.network.clone()).into());
            };
            ep.mac = match mac {
                Some(m) => m,
                None => (0..=u8::MAX)
                    .map(|attempt| MacAddr::from_ip6(held.ip, attempt))
                    .find(|m| !macs.contains(m))
                    .ok_or_else(|| IpamError::Exhausted(ep.network.clone()))?,
            };
            let kvs = self.endpoint_kvs(store, ep);
            let network = store.layout.key(&Key::Network(ep.network.clone()));
            match store.create_all(&kvs, Some(lease), &network).await? {
                Ok(()) => return self.put_endpoint_info(store, lease, ep).await,
                Err(Refused::GuardGone) => {
                    return Err(ClusterError::NoSuchNetwork(ep.network.clone()))
                }
                Err(Refused::Taken(_)) => {}
            }
            skip.insert(held.ip);
            ep.ipv6 = Some(self.allocate6(store, lease, &ep.network, v6, &skip).await?);
        }
    }

    /// Claims the first IPv6 block nobody holds.
    async fn claim_block6(
        &self,
        store: &Store,
        lease: i64,
        network: &str,
        v6: Net6,
        mine: &[Ipv6Net],
        others: &mut BTreeSet<Ipv6Net>,
    ) -> Result<Ipv6Net, ClusterError> {
        let value = records::encode(&BlockRecord {
            version: RECORD_VERSION,
            node: self.cfg.node_name.clone(),
        });
        let mut index = 0u128;
        while let Some(block) = ipam::block6(v6.subnet, v6.block_len, index) {
            index += 1;
            if mine.contains(&block) || others.contains(&block) {
                continue;
            }
            let key = store.layout.key(&Key::Block {
                network: network.to_owned(),
                block: IpNet::V6(block),
            });
            if self
                .claim(store, lease, network, key, value.clone())
                .await?
            {
                info!(%block, network, "claimed IPv6 address block");
                return Ok(block);
            }
            others.insert(block);
        }
        Err(IpamError::Exhausted(network.to_owned()).into())
    }
}
