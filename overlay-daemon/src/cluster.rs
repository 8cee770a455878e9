//! The node's part in the cluster, through etcd: membership under a lease, the cluster view
//! kept by list + watch, and the lifecycle of local endpoints with cluster-wide IPAM.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, warn};

use crate::{
    ipam::{self, IpamError},
    netlink::{self, ContainerIface, NetlinkError},
    store::{
        client::{changes, Change, Kv},
        keys::{valid_name, Key},
        records::{self, BlockRecord, EndpointRecord, NodeRecord, RECORD_VERSION},
        ClusterView, EtcdConfig, Store, StoreError,
    },
    tables::MacAddr,
};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("network {0:?} does not exist: create it with `overlayctl network create`")]
    NoSuchNetwork(String),
    #[error("not registered in etcd yet: try again")]
    NotRegistered,
    #[error("endpoint {container_id}/{ifname} already exists: delete it first")]
    Exists {
        container_id: String,
        ifname: String,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("address {0} is already in use: pick another or let the IPAM choose")]
    AddressTaken(Ipv4Addr),
    #[error("endpoint {0} is not known to this node")]
    NotFound(String),
    #[error("local state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClusterError {
    /// Whether retrying later can help (etcd unreachable, not registered yet).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClusterError::Store(StoreError::Etcd { .. }) | ClusterError::NotRegistered
        )
    }
}

/// A local endpoint as this node remembers it (in `<run-dir>/endpoints/`), so a restarted
/// daemon can publish it again and delete it idempotently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: MacAddr,
    pub mtu: u32,
    pub vni: u32,
    pub host_ifname: String,
    /// MAC of the host-side veth.
    #[serde(default)]
    pub host_mac: Option<MacAddr>,
    /// Which front end made it ("cni", "cnm"); garbage collection only touches its own.
    #[serde(default)]
    pub owner: Option<String>,
    /// `NAME:PORT` service labels: the endpoint is a backend of these services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

impl LocalEndpoint {
    /// Whether what this endpoint stands for still exists on the host. A Docker endpoint
    /// (no namespace: Docker moves the interface itself) is alive while its address is only
    /// reserved or while its host-side veth exists; a CNI one while the container has it.
    async fn still_present(&self) -> bool {
        if self.netns.as_os_str().is_empty() {
            self.host_ifname.is_empty() || crate::netif::ifindex(&self.host_ifname).is_some()
        } else {
            netlink::container_has(&self.netns, &self.ifname)
                .await
                .unwrap_or(false)
        }
    }

    fn record(&self, node: &str) -> EndpointRecord {
        EndpointRecord {
            version: RECORD_VERSION,
            mac: self.mac,
            node: node.to_owned(),
            container_id: self.container_id.clone(),
            host_ifname: self.host_ifname.clone(),
            ifname: self.ifname.clone(),
            services: self.services.clone(),
        }
    }
}

/// What a runtime asks for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointRequest {
    pub network: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// A smaller MTU than the overlay's (underlay - 50), if wanted.
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub owner: Option<String>,
    /// `overlay.service` labels (`NAME:PORT`): make the endpoint a service backend.
    #[serde(default)]
    pub services: Vec<String>,
}

/// The host-side veth name of an endpoint: stable, unique, at most 15 characters.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let h = crate::reconcile::node_id(&format!("{container_id}/{ifname}"));
    let h2 = crate::reconcile::node_id(&format!("{ifname}/{container_id}"));
    format!("ovl{h:08x}{:02x}", h2 & 0xff)
}

/// Docker endpoints are known by their address until Docker names them: IPAM hands the
/// address out before the endpoint exists.
pub fn docker_address_id(network: &str, ip: Ipv4Addr) -> String {
    format!("docker:{network}:{ip}")
}

/// The `ifname` of every Docker endpoint (Docker picks the name inside the container).
pub const DOCKER_IFNAME: &str = "eth";

/// `<run-dir>/endpoints/*.json`.
struct LocalState {
    dir: PathBuf,
}

impl LocalState {
    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", host_ifname(container_id, ifname)))
    }
    fn load(&self, container_id: &str, ifname: &str) -> Option<LocalEndpoint> {
        let text = std::fs::read(self.path(container_id, ifname)).ok()?;
        serde_json::from_slice(&text).ok()
    }
    fn all(&self) -> Vec<LocalEndpoint> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }
    fn save(&self, ep: &LocalEndpoint) -> Result<(), ClusterError> {
        let path = self.path(&ep.container_id, &ep.ifname);
        let tmp = path.with_extension("tmp");
        let err = |source| ClusterError::State {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        std::fs::write(&tmp, serde_json::to_vec_pretty(ep).expect("serializable")).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
    fn remove(&self, container_id: &str, ifname: &str) {
        let _ = std::fs::remove_file(self.path(container_id, ifname));
    }
}

/// Control-plane settings of the daemon.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub etcd: EtcdConfig,
    pub node_name: String,
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub lease_ttl: i64,
    pub run_dir: PathBuf,
    /// Container MTU (underlay - 50).
    pub mtu: u32,
}

/// Shared by the sync and membership tasks, the reconciler and the API.
pub struct Cluster {
    pub cfg: ClusterConfig,
    store: watch::Receiver<Option<Store>>,
    pub view: Mutex<ClusterView>,
    /// Bumped whenever the view changes; the reconciler follows it.
    pub generation: watch::Sender<u64>,
    /// The last generation the reconciler installed.
    pub applied: watch::Sender<u64>,
    lease: watch::Sender<Option<i64>>,
    local: LocalState,
    /// One allocation at a time on this node (etcd transactions still arbitrate between nodes).
    alloc: Mutex<()>,
    pub started: Instant,
}

const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Logs the first of a run of failures as a warning and the rest at debug level, so an etcd
/// outage does not flood the log; says once when things work again.
#[derive(Default)]
struct FailureLog(bool);

impl FailureLog {
    fn failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if std::mem::replace(&mut self.0, true) {
            debug!("{what}: {e}");
        } else {
            warn!("{what}: {e} (retrying; further failures are logged at debug level)");
        }
    }
    fn recovered(&mut self, what: &str) {
        if std::mem::take(&mut self.0) {
            info!("{what}: working again");
        }
    }
}

impl Cluster {
    /// Starts connecting (in the background: the datapath works without etcd) and returns
    /// the shared state plus the tasks' handles.
    pub fn start(cfg: ClusterConfig) -> (Arc<Self>, Vec<tokio::task::JoinHandle<()>>) {
        let (store_tx, store_rx) = watch::channel(None);
        let layout = crate::store::Layout::new(&cfg.etcd.prefix);
        let cluster = Arc::new(Self {
            local: LocalState {
                dir: cfg.run_dir.join("endpoints"),
            },
            cfg,
            store: store_rx,
            view: Mutex::new(ClusterView::new(layout)),
            generation: watch::channel(0).0,
            applied: watch::channel(0).0,
            lease: watch::channel(None).0,
            alloc: Mutex::new(()),
            started: Instant::now(),
        });
        let c = cluster.clone();
        let connect = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match Store::connect(&c.cfg.etcd).await {
                    Ok(store) => {
                        info!(endpoints = ?c.cfg.etcd.endpoints, "connected to etcd");
                        let _ = store_tx.send(Some(store));
                        return;
                    }
                    Err(e) => warn!("{e}; retrying in {backoff:?}"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        });
        let sync = tokio::spawn(cluster.clone().sync_loop());
        let membership = tokio::spawn(cluster.clone().membership_loop());
        (cluster, vec![connect, sync, membership])
    }

    async fn store(&self) -> Store {
        let mut rx = self.store.clone();
        loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                return s;
            }
            let _ = rx.changed().await;
        }
    }

    pub fn lease(&self) -> Option<i64> {
        *self.lease.borrow()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// List, then watch from the listed revision; re-list after a compaction, a cancelled
    /// watch or a lost connection, so the view always converges to etcd's state.
    async fn sync_loop(self: Arc<Self>) {
        let store = self.store().await;
        let root = store.layout.root().to_owned();
        let mut backoff = Duration::from_millis(100);
        let mut failures = FailureLog::default();
        loop {
            // Listed into a fresh view, swapped in whole: the reconciler never sees half a
            // listing, and pages are digested as they arrive.
            let mut fresh = ClusterView::new(store.layout.clone());
            fresh.begin_listing();
            let revision = match store.list_pages(&root, |page| fresh.add_listed(page)).await {
                Ok(r) => r,
                Err(e) => {
                    failures.failed("listing cluster state", &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            fresh.end_listing();
            fresh.revision = revision;
            failures.recovered("listing cluster state");
            backoff = Duration::from_millis(100);
            *self.view.lock().await = fresh;
            self.bump();
            debug!(revision, "cluster state listed");
            let (_watcher, mut stream) = match store.watch(&root, revision + 1).await {
                Ok(w) => w,
                Err(e) => {
                    warn!("watching cluster state: {e}; re-listing");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 || resp.canceled() {
                            warn!(
                                compact_revision = resp.compact_revision(),
                                reason = resp.cancel_reason(),
                                "watch cancelled; re-listing"
                            );
                            break;
                        }
                        let events = changes(&resp);
                        if events.is_empty() {
                            continue;
                        }
                        let mut view = self.view.lock().await;
                        for ev in events {
                            view.apply(ev);
                        }
                        if let Some(h) = resp.header() {
                            view.revision = view.revision.max(h.revision());
                        }
                        drop(view);
                        self.bump();
                    }
                    Ok(None) => {
                        warn!("watch stream ended; re-listing");
                        break;
                    }
                    Err(e) => {
                        warn!("watch: {e}; re-listing");
                        tokio::time::sleep(backoff).await;
                        break;
                    }
                }
            }
        }
    }

    fn lease_file(&self) -> PathBuf {
        self.cfg.run_dir.join("lease")
    }

    /// Registers the node under a lease and keeps it alive. A lease that expired (etcd away
    /// for longer than the TTL) is replaced, and everything this node owns is published again.
    async fn membership_loop(self: Arc<Self>) {
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
        store
            .put(
                &layout.key(&Key::Node(self.cfg.node_name.clone())),
                records::encode(&node),
                Some(lease),
            )
            .await?;
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
        for ep in self.local.all() {
            if !ep.still_present().await {
                info!(container = %ep.container_id, ip = %ep.ip, "container gone while away; releasing its address");
                let _ = netlink::delete_veth(&ep.host_ifname).await;
                self.local.remove(&ep.container_id, &ep.ifname);
                let key = layout.key(&Key::Endpoint {
                    network: ep.network.clone(),
                    ip: ep.ip,
                });
                let _ = store.delete_if(&key, records::encode(&ep.record(me))).await;
                continue;
            }
            let key = layout.key(&Key::Endpoint {
                network: ep.network.clone(),
                ip: ep.ip,
            });
            let value = records::encode(&ep.record(me));
            if !store.create(&key, value.clone(), Some(lease)).await?
                && !store
                    .replace(&key, value.clone(), value.clone(), Some(lease))
                    .await?
            {
                warn!(%key, "address taken by another node while this one was away; removing the local endpoint");
                let _ = netlink::delete_veth(&ep.host_ifname).await;
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

    /// Creates a local endpoint: an address from the cluster IPAM (published in etcd under
    /// this node's lease), the veth pair, and the datapath entries (waited for).
    pub async fn create_endpoint(
        &self,
        req: EndpointRequest,
    ) -> Result<LocalEndpoint, ClusterError> {
        let _guard = self.alloc.lock().await;
        let host_ifname = host_ifname(&req.container_id, &req.ifname);
        let (store, lease, mut ep) = self.reserve_locked(&req, None, host_ifname).await?;
        let iface = ContainerIface {
            netns: ep.netns.clone(),
            ifname: ep.ifname.clone(),
            mac: ep.mac.0,
            ip: ep.ip,
            prefix_len: ep.prefix_len,
            gateway: ep.gateway,
            mtu: ep.mtu,
        };
        match netlink::create_veth(&ep.host_ifname, &iface).await {
            Ok((_, host_mac)) => {
                ep.host_mac = host_mac.map(MacAddr);
                self.local.save(&ep)?;
            }
            Err(e) => {
                self.release(&store, &ep).await;
                return Err(e.into());
            }
        }
        self.install(&store, lease, &ep).await;
        info!(container = %ep.container_id, ip = %ep.ip, network = %ep.network, "endpoint created");
        Ok(ep)
    }

    /// Reserves an address for a Docker endpoint (IPAM RequestAddress): published in etcd,
    /// remembered locally as `docker_address_id(network, ip)`/`DOCKER_IFNAME`, no veth yet.
    pub async fn reserve_address(
        &self,
        network: &str,
        requested: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> Result<LocalEndpoint, ClusterError> {
        let _guard = self.alloc.lock().await;
        let req = EndpointRequest {
            network: network.to_owned(),
            container_id: docker_address_id(network, requested.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            ifname: DOCKER_IFNAME.into(),
            mac,
            owner: Some("cnm".into()),
            ..Default::default()
        };
        let (_, _, ep) = self
            .reserve_locked(&req, Some(requested), String::new())
            .await?;
        info!(ip = %ep.ip, network, "address reserved for a Docker endpoint");
        Ok(ep)
    }

    /// Validates the request and allocates its address (one etcd transaction), remembering
    /// the endpoint locally before anything touches the host, so a crash from then on is
    /// cleaned up. `docker` is `Some(requested address)` for Docker reservations, whose id
    /// derives from the address. The caller holds `alloc`.
    async fn reserve_locked(
        &self,
        req: &EndpointRequest,
        docker: Option<Option<Ipv4Addr>>,
        host_ifname: String,
    ) -> Result<(Store, i64, LocalEndpoint), ClusterError> {
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
            crate::tables::parse_service_label(label).map_err(ClusterError::Invalid)?;
        }
        if docker.is_none() && self.local.load(&req.container_id, &req.ifname).is_some() {
            return Err(ClusterError::Exists {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
            });
        }
        let store = self.store().await;
        let lease = self.lease().ok_or(ClusterError::NotRegistered)?;
        let net = self
            .view
            .lock()
            .await
            .network(&req.network)
            .cloned()
            .ok_or_else(|| ClusterError::NoSuchNetwork(req.network.clone()))?;
        let gateway = net.gateway_ip();
        let mut ep = LocalEndpoint {
            network: req.network.clone(),
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            ip: Ipv4Addr::UNSPECIFIED,
            prefix_len: net.subnet.prefix_len(),
            gateway,
            mac: MacAddr([0; 6]),
            mtu: [Some(self.cfg.mtu), net.mtu, req.mtu]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(self.cfg.mtu),
            vni: net.vni,
            host_ifname,
            host_mac: None,
            owner: req.owner.clone(),
            services: req.services.clone(),
        };
        match docker {
            Some(Some(ip)) => {
                let usable = net.subnet.contains(&ip)
                    && ip != net.subnet.network()
                    && ip != net.subnet.broadcast()
                    && ip != gateway;
                if !usable {
                    return Err(ClusterError::Invalid(format!(
                        "address {ip} is not a usable host address of {} (gateway {gateway})",
                        net.subnet
                    )));
                }
                ep.ip = ip;
                ep.mac = req.mac.unwrap_or_else(|| MacAddr::from_ip(ip));
                let key = store.layout.key(&Key::Endpoint {
                    network: req.network.clone(),
                    ip,
                });
                if !store
                    .create(
                        &key,
                        records::encode(&ep.record(&self.cfg.node_name)),
                        Some(lease),
                    )
                    .await?
                {
                    return Err(ClusterError::AddressTaken(ip));
                }
            }
            _ => {
                ep.ip = self
                    .allocate(
                        &store,
                        lease,
                        &net,
                        &req.network,
                        gateway,
                        &mut ep,
                        req.mac,
                        docker.is_some(),
                    )
                    .await?;
            }
        }
        self.local.save(&ep)?;
        Ok((store, lease, ep))
    }

    /// Installs a local endpoint in the view now rather than waiting for our own watch event
    /// to come back, and waits for the datapath to have it.
    async fn install(&self, store: &Store, lease: i64, ep: &LocalEndpoint) {
        let key = store.layout.key(&Key::Endpoint {
            network: ep.network.clone(),
            ip: ep.ip,
        });
        self.view.lock().await.apply(Change::Put(Kv {
            key,
            value: records::encode(&ep.record(&self.cfg.node_name)),
            lease,
        }));
        self.bump();
        self.wait_applied().await;
    }

    /// Gives a reserved Docker address its veth pair: the host side gets the datapath, the
    /// other side (`peer`, left in this namespace with MAC and MTU set) is for Docker to move
    /// into the container. Idempotent.
    pub async fn attach_docker(
        &self,
        network: &str,
        ip: Ipv4Addr,
        peer: &str,
        mac: Option<MacAddr>,
        services: Vec<String>,
    ) -> Result<LocalEndpoint, ClusterError> {
        let _guard = self.alloc.lock().await;
        let id = docker_address_id(network, ip);
        let mut ep = self
            .local
            .load(&id, DOCKER_IFNAME)
            .ok_or_else(|| ClusterError::NotFound(format!("{network}/{ip}")))?;
        if !ep.host_ifname.is_empty() && crate::netif::ifindex(&ep.host_ifname).is_some() {
            return Ok(ep);
        }
        let store = self.store().await;
        let lease = self.lease().ok_or(ClusterError::NotRegistered)?;
        let before = ep.record(&self.cfg.node_name);
        ep.host_ifname = host_ifname(&id, DOCKER_IFNAME);
        ep.services = services;
        if let Some(mac) = mac {
            ep.mac = mac;
        }
        ep.host_mac = netlink::create_veth_here(&ep.host_ifname, peer, ep.mac.0, ep.mtu)
            .await?
            .map(MacAddr);
        let key = store.layout.key(&Key::Endpoint {
            network: ep.network.clone(),
            ip,
        });
        let after = records::encode(&ep.record(&self.cfg.node_name));
        match store
            .replace(&key, records::encode(&before), after, Some(lease))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let _ = netlink::delete_veth(&ep.host_ifname).await;
                return Err(ClusterError::NotFound(format!(
                    "{network}/{ip} (its address record changed in etcd)"
                )));
            }
            Err(e) => {
                let _ = netlink::delete_veth(&ep.host_ifname).await;
                return Err(e.into());
            }
        }
        self.local.save(&ep)?;
        self.install(&store, lease, &ep).await;
        info!(ip = %ep.ip, network, host = %ep.host_ifname, "Docker endpoint attached");
        Ok(ep)
    }

    /// Removes a Docker endpoint's veth pair but keeps its address reserved (Docker releases
    /// it separately). Idempotent.
    pub async fn detach_docker(&self, network: &str, ip: Ipv4Addr) -> Result<(), ClusterError> {
        let _guard = self.alloc.lock().await;
        let id = docker_address_id(network, ip);
        let Some(mut ep) = self.local.load(&id, DOCKER_IFNAME) else {
            return Ok(());
        };
        if ep.host_ifname.is_empty() {
            return Ok(());
        }
        netlink::delete_veth(&ep.host_ifname).await?;
        let store = self.store().await;
        let lease = self.lease().ok_or(ClusterError::NotRegistered)?;
        let before = records::encode(&ep.record(&self.cfg.node_name));
        ep.host_ifname.clear();
        ep.host_mac = None;
        let key = store.layout.key(&Key::Endpoint {
            network: ep.network.clone(),
            ip,
        });
        store
            .replace(
                &key,
                before,
                records::encode(&ep.record(&self.cfg.node_name)),
                Some(lease),
            )
            .await?;
        self.local.save(&ep)?;
        self.install(&store, lease, &ep).await;
        info!(%ip, network, "Docker endpoint detached");
        Ok(())
    }

    /// Creates an overlay network in etcd (the Docker driver's `-o vni=N`) and waits until
    /// this node's view has it. Returns false if the name or VNI is taken.
    pub async fn create_network(
        &self,
        name: &str,
        record: records::NetworkRecord,
    ) -> Result<bool, ClusterError> {
        let store = self.store().await;
        let vni = record.vni;
        if !store
            .create_network(name, vni, records::encode(&record))
            .await?
        {
            return Ok(false);
        }
        for _ in 0..100 {
            if self.network(name).await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(true)
    }

    pub async fn network(&self, name: &str) -> Option<records::NetworkRecord> {
        self.view.lock().await.network(name).cloned()
    }

    pub async fn networks(&self) -> Vec<(String, records::NetworkRecord)> {
        self.view
            .lock()
            .await
            .networks()
            .map(|(n, r)| (n.to_owned(), r.clone()))
            .collect()
    }

    /// Finds a free address in a block this node holds, claiming a new block when needed.
    /// The endpoint key is created in the same step, in one transaction: an address is never
    /// handed out twice, whatever other nodes do concurrently.
    #[allow(clippy::too_many_arguments)]
    async fn allocate(
        &self,
        store: &Store,
        lease: i64,
        net: &records::NetworkRecord,
        network: &str,
        gateway: Ipv4Addr,
        ep: &mut LocalEndpoint,
        mac: Option<MacAddr>,
        docker: bool,
    ) -> Result<Ipv4Addr, ClusterError> {
        let me = self.cfg.node_name.clone();
        let all_blocks = ipam::blocks(net.subnet, net.block_len)?;
        let (mut mine, mut others_blocks, mut taken) = {
            let view = self.view.lock().await;
            let mine: Vec<_> = view
                .blocks()
                .filter(|(n, _, b)| *n == network && b.node == me)
                .map(|(_, b, _)| b)
                .collect();
            let others: BTreeSet<_> = view
                .blocks()
                .filter(|(n, _, b)| *n == network && b.node != me)
                .map(|(_, b, _)| b)
                .collect();
            let taken: BTreeSet<_> = view
                .endpoints()
                .filter(|(n, _, _)| *n == network)
                .map(|(_, ip, _)| ip)
                .collect();
            (mine, others, taken)
        };
        let block_value = records::encode(&BlockRecord {
            version: RECORD_VERSION,
            node: me.clone(),
        });
        loop {
            for block in &mine {
                while let Some(ip) = ipam::first_free(*block, net.subnet, gateway, &taken) {
                    ep.ip = ip;
                    ep.mac = mac.unwrap_or_else(|| MacAddr::from_ip(ip));
                    if docker {
                        ep.container_id = docker_address_id(network, ip);
                    }
                    let key = store.layout.key(&Key::Endpoint {
                        network: network.to_owned(),
                        ip,
                    });
                    if store
                        .create(&key, records::encode(&ep.record(&me)), Some(lease))
                        .await?
                    {
                        return Ok(ip);
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
                    network: network.to_owned(),
                    block,
                });
                if store.create(&key, block_value.clone(), Some(lease)).await? {
                    info!(%block, network, "claimed address block");
                    claimed = Some(block);
                    break;
                }
                others_blocks.insert(block);
            }
            match claimed {
                Some(b) => mine = vec![b],
                None => return Err(IpamError::Exhausted(network.to_owned()).into()),
            }
        }
    }

    async fn release(&self, store: &Store, ep: &LocalEndpoint) {
        let key = store.layout.key(&Key::Endpoint {
            network: ep.network.clone(),
            ip: ep.ip,
        });
        if let Err(e) = store
            .delete_if(&key, records::encode(&ep.record(&self.cfg.node_name)))
            .await
        {
            warn!(%key, "releasing address: {e}");
        }
        self.local.remove(&ep.container_id, &ep.ifname);
    }

    /// Deletes a local endpoint: veth, address, datapath entries. Idempotent.
    pub async fn delete_endpoint(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<LocalEndpoint>, ClusterError> {
        let _guard = self.alloc.lock().await;
        let Some(ep) = self.local.load(container_id, ifname) else {
            return Ok(None);
        };
        netlink::delete_veth(&ep.host_ifname).await?;
        let store = self.store().await;
        let key = store.layout.key(&Key::Endpoint {
            network: ep.network.clone(),
            ip: ep.ip,
        });
        store
            .delete_if(&key, records::encode(&ep.record(&self.cfg.node_name)))
            .await?;
        self.local.remove(container_id, ifname);
        self.view.lock().await.apply(Change::Delete(key));
        self.bump();
        self.wait_applied().await;
        info!(container = %container_id, ip = %ep.ip, "endpoint deleted");
        Ok(Some(ep))
    }

    pub fn local_endpoints(&self) -> Vec<LocalEndpoint> {
        self.local.all()
    }

    pub fn local_endpoint(&self, container_id: &str, ifname: &str) -> Option<LocalEndpoint> {
        self.local.load(container_id, ifname)
    }

    /// Waits (bounded) until the reconciler has installed the current generation.
    async fn wait_applied(&self) {
        let want = *self.generation.borrow();
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|g| *g >= want)).await;
    }

    pub fn run_dir(&self) -> &Path {
        &self.cfg.run_dir
    }
}
