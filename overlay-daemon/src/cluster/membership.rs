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
    Cluster, ClusterError, FailureLog, Fatal,
};
use crate::{
    ipam, netlink,
    store::{
        client::{Change, Kv},
        keys::Key,
        records::{self, BlockRecord, NodeRecord, RECORD_VERSION},
        Refused, Store,
    },
};

/// Who holds the node's name.
enum Holder {
    Free,
    /// This daemon (its lease or its instance).
    Ours,
    /// Another daemon, under its own lease.
    Other {
        record: NodeRecord,
        lease: i64,
    },
}

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
    /// The node's name is this daemon's only while the record says so: a name held by another
    /// live daemon is waited for (a reboot's earlier incarnation expires) and then refused;
    /// a record that vanishes is written again; one another daemon took over ends this one.
    pub(super) async fn membership_loop(self: Arc<Self>) {
        let ttl = self.cfg.lease_ttl.max(2);
        let mut lease: Option<i64> = std::fs::read_to_string(self.lease_file())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let mut last_ok = Instant::now();
        let mut published = false;
        let mut failures = FailureLog::default();
        let mut vtep = self.vtep.subscribe();
        // While another daemon holds the name: until when it is waited for.
        let mut held_until: Option<Instant> = None;
        loop {
            // The current connection (it is replaced when the underlay address moves).
            let store = self.store().await;
            // Reuse the lease of a previous incarnation if it is still alive.
            if let Some(id) = lease {
                match store.keep_alive_once(id).await {
                    Ok(left) if left > 0 => {
                        last_ok = Instant::now();
                        self.metrics.lease_renewed(true);
                    }
                    Ok(_) => {
                        warn!(lease = id, "lease expired; registering again");
                        self.metrics.lease_renewed(false);
                        lease = None;
                        published = false;
                        self.registered.send_replace(false);
                    }
                    Err(e) => {
                        failures.failed("renewing lease", &e);
                        self.metrics.lease_renewed(false);
                        if last_ok.elapsed() > Duration::from_secs(ttl as u64) {
                            lease = None;
                            published = false;
                            self.registered.send_replace(false);
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
            let holder = match self.holder(&store, id).await {
                Ok(h) => h,
                Err(e) => {
                    failures.failed("reading the node record", &e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match (published, holder) {
                (_, Holder::Ours) | (false, Holder::Free) => {}
                (true, Holder::Free) => {
                    warn!(node = %self.cfg.node_name, "this node's record was removed from etcd; registering again");
                    published = false;
                    self.registered.send_replace(false);
                }
                (true, Holder::Other { record, .. }) => {
                    self.fail(Fatal::NameTakenOver {
                        node: self.cfg.node_name.clone(),
                        vtep: vteps_of(&record),
                    });
                    return;
                }
                (
                    false,
                    Holder::Other {
                        record,
                        lease: other,
                    },
                ) => {
                    let left = store.lease_time_left(other).await.unwrap_or(0);
                    if left > 0 {
                        let until = *held_until.get_or_insert_with(|| {
                            warn!(node = %self.cfg.node_name, vtep = %vteps_of(&record), "the node name is held by another overlayd; waiting up to {left} s for its lease to expire (a restart of this host) before refusing");
                            Instant::now() + Duration::from_secs(left as u64 + 2)
                        });
                        if Instant::now() > until {
                            self.fail(Fatal::NameInUse {
                                node: self.cfg.node_name.clone(),
                                vtep: vteps_of(&record),
                            });
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if !published {
                match self.publish(&store, id).await {
                    Ok(()) => {
                        published = true;
                        held_until = None;
                        self.lease.send_replace(Some(id));
                        self.registered.send_replace(true);
                        info!(node = %self.cfg.node_name, lease = id, ttl, vtep = %*self.vtep.borrow(), "registered in etcd");
                    }
                    Err(e) => {
                        failures.failed("registering", &e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            failures.recovered("etcd membership");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs((ttl / 3).max(1) as u64)) => {}
                // The VTEP moved: publish the node again at once.
                _ = vtep.changed() => published = false,
            }
        }
    }

    /// Who holds this node's name in etcd.
    async fn holder(&self, store: &Store, lease: i64) -> Result<Holder, ClusterError> {
        let key = store.layout.key(&Key::Node(self.cfg.node_name.clone()));
        let Some(kv) = store.get(&key).await? else {
            return Ok(Holder::Free);
        };
        if kv.lease == lease {
            return Ok(Holder::Ours);
        }
        let Ok(record) = records::decode::<NodeRecord>(&kv.value) else {
            return Ok(Holder::Free); // garbage: ours to overwrite
        };
        if record.instance.as_deref() == Some(self.instance.as_str()) || kv.lease == 0 {
            return Ok(Holder::Ours);
        }
        Ok(Holder::Other {
            record,
            lease: kv.lease,
        })
    }

    /// Writes the node record and everything the node owns under `lease`; drops local
    /// endpoints whose container is gone or whose address another node holds now.
    async fn publish(&self, store: &Store, lease: i64) -> Result<(), ClusterError> {
        let layout = &store.layout;
        let node = NodeRecord {
            version: RECORD_VERSION,
            vtep_ip: self.vtep.borrow().v4,
            vtep_ip6: self.vtep.borrow().v6,
            vtep_prefer: self.vtep.borrow().prefer,
            vtep_mac: self.cfg.vtep_mac,
            registered_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            instance: Some(self.instance.clone()),
            container_mtu: Some(self.cfg.mtu),
            release: Some(crate::RELEASE.to_owned()),
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
        let mut needed: BTreeSet<(String, ipnet::IpNet)> = blocks.into_iter().collect();
        for ep in self.local.all() {
            if let Some(net) = self.view.lock().await.network(&ep.network) {
                if let (Some(subnet), Some(ip)) = (net.subnet, ep.ip()) {
                    if let Ok(all) = ipam::blocks(subnet, net.block_len) {
                        if let Some(b) = all.into_iter().find(|b| b.contains(&ip)) {
                            needed.insert((ep.network.clone(), b.into()));
                        }
                    }
                }
                let v6 = net.ipv6().zip(ep.ipv6);
                if let Some(b) = v6.and_then(|(n, a)| ipam::block6_of(a.ip, n.block_len)) {
                    needed.insert((ep.network.clone(), b.into()));
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
            // Created only while the network exists (it may have been removed meanwhile).
            let created = match self
                .claim(store, lease, network, key.clone(), block_value.clone())
                .await
            {
                Ok(created) => created,
                Err(ClusterError::NoSuchNetwork(_)) => continue,
                Err(e) => return Err(e),
            };
            if !created
                && !store
                    .replace(&key, block_value.clone(), block_value.clone(), Some(lease))
                    .await?
            {
                warn!(%key, "block now held by another node");
            }
        }
        // Endpoint requests change the local state and etcd under the same lock: without
        // it a DEL racing this loop sees its record published again after deleting it. None
        // may be in flight either: one being made has no interface yet and would look gone.
        let _guard = self.alloc_idle().await;
        for ep in self.local.all() {
            let (key, value) = self.endpoint_kv(store, &ep);
            match presence(&ep).await {
                Presence::Present => {}
                Presence::Unknown(e) => {
                    warn!(container = %ep.container_id, ip = %ep.key_ip(), "cannot tell whether the container is still there ({e}); keeping its endpoint");
                }
                Presence::Gone => {
                    info!(container = %ep.container_id, ip = %ep.key_ip(), "container gone while away; releasing its address");
                    delete_host_veth(&ep).await;
                    self.local.remove(&ep.container_id, &ep.ifname);
                    let _ = self.delete_endpoint_keys(store, &ep).await;
                    continue;
                }
            }
            // Created only while its network exists: one removed while this node was away
            // (its keys gone with its lease) takes the endpoint along.
            let guard = layout.key(&Key::Network(ep.network.clone()));
            let created = match store
                .create_all(&[(key.clone(), value.clone())], Some(lease), &guard)
                .await?
            {
                Ok(()) => true,
                Err(Refused::Taken(_)) => false,
                Err(Refused::GuardGone) => {
                    warn!(container = %ep.container_id, network = %ep.network, "network removed while this node was away; removing the local endpoint");
                    delete_host_veth(&ep).await;
                    self.local.remove(&ep.container_id, &ep.ifname);
                    continue;
                }
            };
            if !created
                && !store
                    .replace(&key, value.clone(), value.clone(), Some(lease))
                    .await?
            {
                warn!(%key, "address taken by another node while this one was away; removing the local endpoint");
                delete_host_veth(&ep).await;
                self.local.remove(&ep.container_id, &ep.ifname);
                continue;
            }
            if let Err(e) = self.put_endpoint_info(store, lease, &ep).await {
                warn!(container = %ep.container_id, "writing whom the endpoint belongs to: {e}");
            }
            // The IPv6 claim moves to the new lease the same way.
            if let Some((key6, value6)) = self.endpoint6_kv(store, &ep) {
                if !store.create(&key6, value6.clone(), Some(lease)).await?
                    && !store
                        .replace(&key6, value6.clone(), value6.clone(), Some(lease))
                        .await?
                {
                    warn!(key = %key6, "IPv6 address taken by another endpoint while this node was away; the container keeps it but other nodes do not reach it: re-create the container");
                }
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

/// Another holder's VTEP addresses, for the errors that name it.
fn vteps_of(record: &NodeRecord) -> String {
    record
        .vteps()
        .map_or_else(|| "none".to_owned(), |v| v.to_string())
}
