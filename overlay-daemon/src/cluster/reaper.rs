//! Endpoints whose container went away without a CNI DEL or Docker DeleteEndpoint (a
//! runtime that crashed, `ip netns del`): the host-side veth vanishes with the namespace.
//! The daemon sees that (link events, and a sweep in case one was missed) and, after a grace
//! period for a runtime that re-creates the interface, releases the endpoint: a CNI or API
//! endpoint entirely (its address becomes reusable), a Docker one back to its reservation
//! (Docker releases the address itself, and would otherwise release a reused one).

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::store::keys::Key;
use overlay_api::{EndpointId, Owner};
use tracing::{info, warn};

use super::{
    local::{presence, Presence},
    Cluster,
};

/// How long an endpoint whose interface vanished is kept before it is released.
pub const VANISHED_GRACE: Duration = Duration::from_secs(5);
/// How long a Docker address reservation may stand without its endpoint.
pub const STALE_RESERVATION: Duration = Duration::from_secs(30);
/// How often every local endpoint's interface is checked besides the link events.
const SWEEP: Duration = Duration::from_secs(10);

impl Cluster {
    /// Host interfaces that went away: marks the local endpoints they belonged to. True if
    /// any was one of ours (the datapath then re-plans, reporting it unresolved).
    pub async fn interfaces_vanished(&self, names: &BTreeSet<String>) -> bool {
        let now = Instant::now();
        let mut any = false;
        for ep in self.local.all() {
            if ep.host_ifname().is_some_and(|h| names.contains(h)) {
                self.vanished
                    .lock()
                    .expect("not poisoned")
                    .entry(ep.id())
                    .or_insert(now);
                any = true;
            }
        }
        any
    }

    /// Forgets that an endpoint's interface vanished (it was released another way).
    pub(super) fn forget_vanished(&self, id: &EndpointId) {
        self.vanished.lock().expect("not poisoned").remove(id);
    }

    pub(super) async fn reaper_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_sweep = Instant::now();
        loop {
            tick.tick().await;
            if last_sweep.elapsed() >= SWEEP {
                last_sweep = Instant::now();
                self.sweep();
                self.release_orphans().await;
                self.release_stale_reservations().await;
            }
            let due: Vec<EndpointId> = {
                let pending = self.vanished.lock().expect("not poisoned");
                pending
                    .iter()
                    .filter(|(_, since)| since.elapsed() >= VANISHED_GRACE)
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            for id in due {
                self.reap(&id).await;
            }
        }
    }

    /// Marks every local endpoint whose host interface is missing.
    fn sweep(&self) {
        let now = Instant::now();
        for ep in self.local.all() {
            if ep
                .host_ifname()
                .is_some_and(|h| crate::netif::ifindex(h).is_none())
            {
                self.vanished
                    .lock()
                    .expect("not poisoned")
                    .entry(ep.id())
                    .or_insert(now);
            }
        }
    }

    /// Docker reservations that never got their endpoint, or kept none: Docker asks for an
    /// address and creates the endpoint in one go, and releases the address right after
    /// deleting the endpoint, so a reservation alone for long is one whose ReleaseAddress
    /// was lost (overlayd down at that moment). Released, so the address is not lost.
    async fn release_stale_reservations(&self) {
        for ep in self.local.all() {
            if ep.owner != Owner::Docker || ep.attachment != overlay_api::Attachment::Reserved {
                continue;
            }
            let stale = self
                .local
                .age(&ep.container_id, &ep.ifname)
                .is_some_and(|age| age >= STALE_RESERVATION);
            if !stale {
                continue;
            }
            match self.delete_endpoint(&ep.container_id, &ep.ifname).await {
                Ok(_) => {
                    info!(ip = %ep.key_ip(), network = %ep.network, "released a Docker address reservation no endpoint used for {STALE_RESERVATION:?}")
                }
                Err(e) => warn!(ip = %ep.key_ip(), "releasing a stale Docker reservation: {e}"),
            }
        }
    }

    /// Records of this node, under its lease, that no local endpoint stands for (a crash
    /// between the etcd write and the local state, a release etcd did not take): deleted, so
    /// no address leaks while the node lives.
    async fn release_orphans(&self) {
        let (Some(lease), Ok(store)) = (self.lease(), self.try_store()) else {
            return;
        };
        let _guard = self.alloc.lock().await;
        let all = self.local.all();
        let local: BTreeSet<(String, std::net::IpAddr)> = all
            .iter()
            .map(|e| (e.network.clone(), e.key_ip()))
            .collect();
        let local6: BTreeSet<(String, std::net::Ipv6Addr)> = all
            .iter()
            .filter_map(|e| Some((e.network.clone(), e.ipv6?.ip)))
            .collect();
        let orphans: Vec<Key> = {
            let view = self.view.lock().await;
            if view.revision == 0 {
                return; // not listed yet
            }
            let me = &*self.cfg.node_name;
            let v4 = view
                .endpoints()
                .filter(|(_, _, ep)| *ep.node == *me)
                .map(|(n, ip, _)| (n.to_owned(), ip))
                .filter(|id| !local.contains(id))
                .map(|(network, ip)| Key::Endpoint { network, ip });
            let v6 = view
                .endpoints6()
                .filter(|(_, _, r)| r.node == me)
                .map(|(n, ip6, _)| (n.to_owned(), ip6))
                .filter(|id| !local6.contains(id))
                .map(|(network, ip6)| Key::Endpoint6 { network, ip6 });
            v4.chain(v6).collect()
        };
        for orphan in orphans {
            let key = store.layout.key(&orphan);
            match store.delete_if_lease(&key, lease).await {
                Ok(true) => info!(%key, "released an address no local endpoint holds"),
                Ok(false) => {}
                Err(e) => warn!(%key, "releasing an orphaned address: {e}"),
            }
        }
    }

    async fn reap(&self, id: &EndpointId) {
        let forget = || {
            self.vanished.lock().expect("not poisoned").remove(id);
        };
        // An ADD or DEL of it in flight decides for itself (and a new one has no interface
        // yet); the next tick looks again.
        let Some(_held) = self.busy.try_hold(id) else {
            return;
        };
        let Some(ep) = self.local.load(&id.container_id, &id.ifname) else {
            return forget(); // deleted meanwhile
        };
        match presence(&ep).await {
            Presence::Present => return forget(), // re-created
            Presence::Unknown(e) => {
                warn!(container = %id.container_id, "cannot tell whether the container is still there ({e}); checking again");
                return;
            }
            Presence::Gone => {}
        }
        let released = match (ep.owner, ep.ip()) {
            // Docker's endpoints always have an IPv4 address (its reservation's name).
            (Owner::Docker, Some(ip)) => self.detach_docker(&ep.network, ip).await.map(|_| ()),
            _ => self
                .delete_held(&id.container_id, &id.ifname)
                .await
                .map(|_| ()),
        };
        match released {
            Ok(()) => {
                info!(container = %id.container_id, ip = %ep.key_ip(), network = %ep.network, "the container's interface vanished without a DEL; endpoint released");
                forget();
            }
            Err(e) => {
                warn!(container = %id.container_id, "releasing the endpoint of a vanished container: {e}; retrying")
            }
        }
    }
}
