//! The lifecycle of local endpoints made in a container's namespace (CNI, the API): the
//! address from the cluster IPAM, the veth pair, and the datapath entries, which a request
//! waits for. A request that fails part-way leaves nothing behind.

use std::path::Path;

use overlay_api::{Attachment, Endpoint, EndpointId, EndpointRequest, Sandbox};
use tracing::{info, warn};

use super::{
    alloc::Claim,
    host_ifname,
    local::{presence, Presence},
    membership::delete_host_veth,
    Cluster, ClusterError,
};
use crate::{
    netlink::{self, ContainerIface},
    store::Store,
    tables::MacAddr,
};

impl Cluster {
    /// Creates a local endpoint: an address from the cluster IPAM (published in etcd under
    /// this node's lease), the veth pair, and the datapath entries (waited for).
    pub async fn create_endpoint(&self, req: EndpointRequest) -> Result<Endpoint, ClusterError> {
        if req.netns.as_os_str().is_empty() {
            return Err(ClusterError::Invalid(
                "netns is required: the path of the container's network namespace".into(),
            ));
        }
        // The endpoint is held throughout; `alloc` only while etcd and the local state change,
        // so the interfaces and datapath entries of concurrent ADDs are made side by side.
        let _held = self
            .busy
            .hold(EndpointId {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
            })
            .await;
        let host = host_ifname(&req.container_id, &req.ifname);
        let (store, lease, mut ep) = {
            let _guard = self.alloc.lock().await;
            self.release_leftover(&req).await?;
            self.reserve_locked(
                &req,
                Claim::Interface,
                Sandbox::Netns(req.netns.clone()),
                Attachment::Veth {
                    host_ifname: host.clone(),
                },
            )
            .await?
        };
        let iface = ContainerIface {
            netns: req.netns.clone(),
            ifname: ep.ifname.clone(),
            mac: ep.mac.0,
            ipv4: ep.ipv4,
            ipv6: ep.ipv6,
            mtu: ep.mtu,
            default_route: req.default_route,
            bandwidth: ep.bandwidth,
        };
        let made = match netlink::create_veth(&host, &iface).await {
            Ok(made) => made,
            Err(e) => {
                let _guard = self.alloc.lock().await;
                self.release(&store, &ep).await;
                return Err(e.into());
            }
        };
        ep.host_mac = made.host_mac.map(MacAddr);
        ep.default_routes = made.default_routes;
        let done = match self.local.save(&ep) {
            Ok(()) => self.install(&store, lease, &ep).await,
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            warn!(container = %ep.container_id, ip = %ep.key_ip(), "endpoint not created, rolled back: {e}");
            self.roll_back(&store, &ep).await;
            return Err(e);
        }
        info!(container = %ep.container_id, ip = %ep.key_ip(), network = %ep.network, "endpoint created");
        Ok(ep)
    }

    /// `alloc`, taken when no endpoint is held in `busy` (no ADD or DEL is half-way).
    pub(super) async fn alloc_idle(&self) -> tokio::sync::MutexGuard<'_, ()> {
        loop {
            self.busy.idle().await;
            let guard = self.alloc.lock().await;
            // Holds are taken outside `alloc`: one may have come in between.
            if self.busy.is_idle() {
                return guard;
            }
        }
    }

    /// A runtime retries an ADD that answered "try again later" with the same container and
    /// interface. If that ADD was rolled back while etcd could not be told, its local state
    /// is still here (the reaper would release it later); with its interface gone from the
    /// container, it is released now, so the retry is not refused as a duplicate. The
    /// caller holds `alloc`.
    async fn release_leftover(&self, req: &EndpointRequest) -> Result<(), ClusterError> {
        let Some(old) = self.local.load(&req.container_id, &req.ifname) else {
            return Ok(());
        };
        if presence(&old).await != Presence::Gone {
            return Ok(()); // a live endpoint: reserve_locked refuses the duplicate
        }
        let store = self.try_store()?;
        delete_host_veth(&old).await;
        // False: the key is not this endpoint's any more (another node's now): only the
        // local leftover goes.
        if self.delete_endpoint_keys(&store, &old).await? {
            self.forget_in_view(&store, &old).await;
            self.applied.bump();
        }
        self.local.remove(&old.container_id, &old.ifname);
        self.forget_vanished(&old.id());
        info!(container = %old.container_id, ip = %old.key_ip(), "released the leftover of an earlier ADD of this container");
        Ok(())
    }

    /// Undoes a half-made endpoint: veth, address, local state, view entry. The datapath
    /// follows on its next pass (not waited for: it may be what failed). Takes `alloc`.
    pub(crate) async fn roll_back(&self, store: &Store, ep: &Endpoint) {
        delete_host_veth(ep).await;
        let _guard = self.alloc.lock().await;
        self.release(store, ep).await;
        self.forget_in_view(store, ep).await;
        self.applied.bump();
    }

    /// Frees an endpoint's address in etcd (if it is still ours) and forgets it locally.
    /// If etcd cannot be told, the local state stays: the endpoint has no interface any more,
    /// so the reaper releases it once etcd answers.
    pub(crate) async fn release(&self, store: &Store, ep: &Endpoint) {
        match self.delete_endpoint_keys(store, ep).await {
            Ok(_) => self.local.remove(&ep.container_id, &ep.ifname),
            Err(e) => warn!(ip = %ep.key_ip(), "releasing address: {e}; retried by the reaper"),
        }
    }

    /// Deletes a local endpoint: veth, address, datapath entries. Idempotent.
    pub async fn delete_endpoint(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Endpoint>, ClusterError> {
        let id = EndpointId {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        };
        let _held = self.busy.hold(id).await;
        self.delete_held(container_id, ifname).await
    }

    /// `delete_endpoint` for a caller that holds the endpoint in `busy`.
    pub(super) async fn delete_held(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Endpoint>, ClusterError> {
        let Some(ep) = self.local.load(container_id, ifname) else {
            return Ok(None);
        };
        let store = self.try_store()?;
        // The veth goes first (the slow part, outside `alloc`): the address is not free for
        // another endpoint before the host route through this veth is gone with it.
        if let Some(name) = ep.host_ifname() {
            netlink::delete_veth(name).await?;
        }
        {
            let _guard = self.alloc.lock().await;
            self.delete_endpoint_keys(&store, &ep).await?;
            self.local.remove(container_id, ifname);
        }
        self.uninstall(&store, &ep).await?;
        info!(container = %container_id, ip = %ep.key_ip(), "endpoint deleted");
        Ok(Some(ep))
    }

    /// Checks that the container still has the endpoint's interface with its address (CNI
    /// CHECK).
    pub async fn check_endpoint(
        &self,
        container_id: &str,
        ifname: &str,
        netns: &Path,
    ) -> Result<Endpoint, ClusterError> {
        let ep = self
            .local
            .load(container_id, ifname)
            .ok_or_else(|| ClusterError::NotFound(format!("{container_id}/{ifname}")))?;
        let Some(found) = netlink::container_addresses(netns, ifname).await? else {
            return Err(ClusterError::Invalid(format!(
                "{ifname} is missing from {}",
                netns.display()
            )));
        };
        let mut expected = Vec::new();
        if let Some(v4) = ep.ipv4 {
            expected.push((std::net::IpAddr::V4(v4.ip), v4.prefix_len));
        }
        if let Some(v6) = ep.ipv6 {
            expected.push((v6.ip.into(), v6.prefix_len));
        }
        match expected.iter().find(|want| !found.contains(want)) {
            None => Ok(ep),
            Some((ip, len)) => {
                let has: Vec<String> = found
                    .iter()
                    .filter(|(a, _)| a.is_ipv4() == ip.is_ipv4() && !is_link_local(a))
                    .map(|(a, l)| format!("{a}/{l}"))
                    .collect();
                Err(ClusterError::Invalid(format!(
                    "{ifname} lacks {ip}/{len} (has {})",
                    if has.is_empty() {
                        "none".into()
                    } else {
                        has.join(", ")
                    }
                )))
            }
        }
    }
}

fn is_link_local(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        std::net::IpAddr::V4(_) => false,
    }
}
