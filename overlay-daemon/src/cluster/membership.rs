//! Membership: the node record under a lease, renewed every TTL/3; on a new lease the node
//! publishes itself, its blocks and its endpoints again.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use overlay_api::Endpoint;
use tracing::{info, warn};

use super::{
    local::{presence, Presence},
    Cluster, ClusterError, FailureLog,
};
use crate::{
    ipam, netlink,
    store::{
        client::{Change, Kv},
        keys::Key,
        records::{self, BlockRecord, NodeRecord, RECORD_VERSION},
        Store,
    },
};

/// Removes an endpoint's veth pair, if it has one (best effort: it is being dropped).
pub(crate) async fn delete_host_veth(ep: &Endpoint) {
    if let Some(name) = ep.host_ifname() {
        let _ = netlink::delete_veth(name).await;
    }
}

impl Cluster {
    fn lease_file(&self) -> PathBuf {
        self.cfg.run_dir.join("lease")
    }

    /// Registers the node under a lease and keeps it alive. A lease that expired (etcd away
    /// for longer than the TTL) is replaced, and everything this node owns is published again.
    pub(super) async fn membership_loop(self: Arc<Self>) {
        let store = self.store().await;
        let ttl = self.cfg.lease_ttl.max(2);
        let mut lease: Option<i64> = std::fs::read_to_string(self.lease_file())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let mut last_ok = Instant::now();
        let mut published = false;
        let mut failures = FailureLog::default();
        loop {
            // Reuse the lease of a previous incarnation if it is still alive.
            if let Some(id) = lease {
                match store.keep_alive_once(id).await {
                    Ok(left) if left > 0 => last_ok = Instant::now(),
                    Ok(_) => {
                        warn!(lease = id, "lease expired; registering again");
                        lease = None;
                        published = false;
                    }
                    Err(e) => {
                        failures.failed("renewing lease", &e);
                        if last_ok.elapsed() > Duration::from_secs(ttl as u64) {
                            lease = None;
                            published = false;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if lease.is_none() {
                match store.grant_lease(ttl).await {
                    Ok(id) => {
                        lease = Some(id);
                        last_ok = Instant::now();
                        let _ = std::fs::write(self.lease_file(), id.to_string());
                    }
                    Err(e) => {
                        failures.failed("granting lease", &e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let id = lease.expect("set above");
            if !published {
                match self.publish(&store, id).await {
                    Ok(()) => {
                        published = true;
                        self.lease.send_replace(Some(id));
                        info!(node = %self.cfg.node_name, lease = id, ttl, "registered in etcd");
                    }
                    Err(e) => {
                        failures.failed("registering", &e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            failures.recovered("etcd membership");
            tokio::time::sleep(Duration::from_secs((ttl / 3).max(1) as u64)).await;
        }
    }

    /// Writes the node record and everything the node owns under `lease`; drops local
    /// endpoints whose container is gone or whose address another node holds now.
    async fn publish(&self, store: &Store, lease: i64) -> Result<(), ClusterError> {
        let layout = &store.layout;
        let node = NodeRecord {
            version: RECORD_VERSION,
            vtep_ip: self.cfg.vtep_ip,
            vtep_mac: self.cfg.vtep_mac,
            registered_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let key = layout.key(&Key::Node(self.cfg.node_name.clone()));
        let value = records::encode(&node);
        store.put(&key, value.clone(), Some(lease)).await?;
        // Into our own view now, not when the watch echoes it: an endpoint request allowed
        // in once the lease is published must find its own node there.
        self.view
            .lock()
            .await
            .apply(Change::Put(Kv { key, value, lease }));
        self.applied.bump();
        let me = &self.cfg.node_name;
        // Blocks this node holds (from any earlier lease): move them to the new lease.
        let blocks: Vec<_> = self
            .view
            .lock()
            .await
            .blocks()
            .filter(|(_, _, b)| &b.node == me)
            .map(|(net, block, _)| (net.to_owned(), block))
            .collect();
        let mut needed: BTreeSet<(String, ipnet::Ipv4Net)> = blocks.into_iter().collect();
        for ep in self.local.all() {
            if let Some(net) = self.view.lock().await.network(&ep.network) {
                if let Ok(all) = ipam::blocks(net.subnet, net.block_len) {
                    if let Some(b) = all.into_iter().find(|b| b.contains(&ep.ip)) {
                        needed.insert((ep.network.clone(), b));
                    }
                }
            }
        }
        let block_value = records::encode(&BlockRecord {
            version: RECORD_VERSION,
            node: me.clone(),
        });
        for (network, block) in &needed {
            let key = layout.key(&Key::Block {
                network: network.clone(),
                block: *block,
            });
            if !store.create(&key, block_value.clone(), Some(lease)).await?
                && !store
                    .replace(&key, block_value.clone(), block_value.clone(), Some(lease))
                    .await?
            {
                warn!(%key, "block now held by another node");
            }
        }
        // Endpoint requests change the local state and etcd under the same lock: without
        // it a DEL racing this loop sees its record published again after deleting it.
        let _guard = self.alloc.lock().await;
        for ep in self.local.all() {
            let (key, value) = self.endpoint_kv(store, &ep);
            match presence(&ep).await {
                Presence::Present => {}
                Presence::Unknown(e) => {
                    warn!(container = %ep.container_id, ip = %ep.ip, "cannot tell whether the container is still there ({e}); keeping its endpoint");
                }
                Presence::Gone => {
                    info!(container = %ep.container_id, ip = %ep.ip, "container gone while away; releasing its address");
                    delete_host_veth(&ep).await;
                    self.local.remove(&ep.container_id, &ep.ifname);
                    let _ = store.delete_if(&key, value).await;
                    continue;
                }
            }
            if !store.create(&key, value.clone(), Some(lease)).await?
                && !store
                    .replace(&key, value.clone(), value.clone(), Some(lease))
                    .await?
            {
                warn!(%key, "address taken by another node while this one was away; removing the local endpoint");
                delete_host_veth(&ep).await;
                self.local.remove(&ep.container_id, &ep.ifname);
            }
        }
        Ok(())
    }

    /// Leaves the cluster at once: revokes the lease, which deletes the node, its blocks and
    /// its endpoints everywhere.
    pub async fn leave(&self) {
        let (Some(store), Some(lease)) = (self.store.borrow().clone(), self.lease()) else {
            return;
        };
        match store.revoke_lease(lease).await {
            Ok(()) => info!(lease, "left the cluster (lease revoked)"),
            Err(e) => warn!("revoking lease: {e}"),
        }
        let _ = std::fs::remove_file(self.lease_file());
    }
}
