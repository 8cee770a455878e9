//! The node's part in the cluster, through etcd, split by concern:
//!
//! - `membership`: the node record under a lease, kept alive, re-published on a new lease;
//! - `sync`: the cluster view, kept by list + watch;
//! - `endpoints`: the lifecycle of local endpoints (create, delete, check), each waiting for
//!   the datapath through the apply handshake (`applied`);
//! - `alloc`: cluster-wide address allocation from per-node blocks.
//!
//! Docker's extra steps (addresses reserved before the interface exists) live next to the
//! Docker driver, in `cnm::endpoints`.

mod alloc;
mod alloc6;
mod applied;
mod busy;
mod endpoints;
mod error;
mod local;
mod membership;
mod reaper;
mod sync;

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use overlay_api::Endpoint;
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub(crate) use alloc::Claim;
pub use applied::{ApplyHandshake, NotApplied};
pub use error::ClusterError;
pub use local::host_ifname;
pub(crate) use local::LocalState;
pub use reaper::VANISHED_GRACE;

use crate::{
    store::{
        client::{Change, Kv},
        keys::Key,
        records::{self, Endpoint6Record, EndpointRecord, NetworkRecord, RECORD_VERSION},
        ClusterView, EtcdConfig, Store,
    },
    tables::MacAddr,
    vtep::Vteps,
};

/// Control-plane settings of the daemon.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub etcd: EtcdConfig,
    pub node_name: String,
    pub vteps: Vteps,
    pub vtep_mac: MacAddr,
    pub lease_ttl: i64,
    pub run_dir: PathBuf,
    /// Container MTU (underlay - 50, or - 70 with an IPv6 VTEP).
    pub mtu: u32,
    /// The DNS domain when this node serves DNS: endpoints are told to use it.
    pub dns_domain: Option<String>,
}

/// Why the node cannot go on as a member of the cluster: the daemon stops with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    #[error("node name {node:?} is in use by another overlayd (VTEP {vtep}) that keeps renewing it: give this host another --node-name, or stop the other one")]
    NameInUse { node: String, vtep: String },
    #[error("node name {node:?} was taken over in etcd by another overlayd (VTEP {vtep}): two hosts share the name; give one of them another --node-name")]
    NameTakenOver { node: String, vtep: String },
}

/// How long an endpoint request waits for the datapath to install its change.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared by the sync and membership tasks, the daemon loop, the API and the Docker driver.
pub struct Cluster {
    pub cfg: ClusterConfig,
    /// The etcd connection, once made; replaced when the underlay address moves.
    store: watch::Sender<Option<Store>>,
    pub view: Mutex<ClusterView>,
    /// Changes of the view and what the datapath made of them.
    pub applied: ApplyHandshake,
    lease: watch::Sender<Option<i64>>,
    pub(crate) local: LocalState,
    /// One allocation at a time on this node (etcd transactions still arbitrate between nodes).
    pub(crate) alloc: Mutex<()>,
    /// Endpoints with an ADD or DEL in flight (see `busy`).
    pub(crate) busy: busy::Busy,
    pub started: Instant,
    /// This daemon's identity in its node record (kept in `<run-dir>/instance`).
    instance: String,
    /// The VTEP address now (it follows the underlay's address).
    vtep: watch::Sender<Vteps>,
    fatal: watch::Sender<Option<Fatal>>,
    /// Local endpoints whose host interface vanished, since when.
    vanished: std::sync::Mutex<std::collections::BTreeMap<overlay_api::EndpointId, Instant>>,
    /// Whether the node record is published under a live lease (false from when the lease
    /// is given up as lost until the node is registered again).
    registered: watch::Sender<bool>,
    pub metrics: Arc<crate::metrics::Metrics>,
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
    /// the shared state plus the tasks, which end when `stop` is cancelled.
    pub fn start(
        cfg: ClusterConfig,
        metrics: Arc<crate::metrics::Metrics>,
        stop: &CancellationToken,
    ) -> (Arc<Self>, Vec<tokio::task::JoinHandle<()>>) {
        let layout = crate::store::Layout::new(&cfg.etcd.prefix);
        let instance = instance_id(&cfg.run_dir);
        let cluster = Arc::new(Self {
            instance,
            vtep: watch::channel(cfg.vteps).0,
            fatal: watch::channel(None).0,
            vanished: Default::default(),
            registered: watch::channel(false).0,
            metrics,
            local: LocalState::open(&cfg.run_dir.join("endpoints")),
            cfg,
            store: watch::channel(None).0,
            view: Mutex::new(ClusterView::new(layout)),
            applied: ApplyHandshake::default(),
            lease: watch::channel(None).0,
            alloc: Mutex::new(()),
            busy: Default::default(),
            started: Instant::now(),
        });
        let connect = cluster.clone().connect();
        let tasks = vec![
            until(stop, connect),
            until(stop, cluster.clone().sync_loop()),
            until(stop, cluster.clone().membership_loop()),
            until(stop, cluster.clone().reaper_loop()),
        ];
        (cluster, tasks)
    }

    /// The store if connected; a request never waits for etcd to come up.
    pub(crate) fn try_store(&self) -> Result<Store, ClusterError> {
        self.store
            .borrow()
            .clone()
            .ok_or(ClusterError::NotRegistered)
    }

    /// Changes of the connection (the sync task re-lists on a new one).
    pub(crate) fn store_changes(&self) -> watch::Receiver<Option<Store>> {
        self.store.subscribe()
    }

    /// Connects to etcd (retrying) and publishes the connection. A refusal that only the
    /// operator can fix (certificates, credentials, role) is logged as an error, once per
    /// change of its text, and retried: the fix may come without a restart.
    async fn connect(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut last_refusal = None;
        loop {
            match Store::connect(&self.cfg.etcd).await {
                Ok(store) => {
                    info!(endpoints = ?self.cfg.etcd.endpoints, "connected to etcd");
                    self.store.send_replace(Some(store));
                    return;
                }
                Err(e) if e.is_transient() => warn!("{e}; retrying in {backoff:?}"),
                Err(e) => {
                    let text = e.to_string();
                    if last_refusal.as_ref() != Some(&text) {
                        tracing::error!("{text}");
                        last_refusal = Some(text);
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    pub(crate) async fn store(&self) -> Store {
        let mut rx = self.store.subscribe();
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

    /// Whether the node is registered in etcd under a live lease now.
    pub fn registered(&self) -> bool {
        *self.registered.borrow()
    }

    /// The VTEP addresses the node is registered with.
    pub fn vtep(&self) -> Vteps {
        *self.vtep.borrow()
    }

    /// The underlay address moved: publish the node with the new VTEP.
    ///
    /// It goes over a new etcd connection: the old one is bound to the address that went,
    /// and waiting for its keepalive to fail could outlast the lease.
    pub fn set_vtep(self: &Arc<Self>, vtep: Vteps) {
        if *self.vtep.borrow() == vtep {
            return;
        }
        // The new connection first: the membership task republishes over it when it sees
        // the new VTEP.
        let c = self.clone();
        tokio::spawn(async move {
            c.clone().connect().await;
            c.vtep.send_replace(vtep);
        });
    }

    fn fail(&self, why: Fatal) {
        tracing::error!("{why}");
        self.fatal.send_replace(Some(why));
    }

    /// Resolves once the node cannot go on (a duplicate name), with the reason.
    pub async fn fatal(&self) -> Fatal {
        let mut rx = self.fatal.subscribe();
        loop {
            if let Some(f) = rx.borrow_and_update().clone() {
                return f;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn node_name(&self) -> &str {
        &self.cfg.node_name
    }

    pub fn run_dir(&self) -> &Path {
        &self.cfg.run_dir
    }

    pub async fn network(&self, name: &str) -> Option<NetworkRecord> {
        self.view.lock().await.network(name).cloned()
    }

    /// The largest MTU containers of `net` get on this node: the underlay's minus VXLAN's
    /// overhead, or the network's own if lower.
    pub fn max_mtu(&self, net: Option<&NetworkRecord>) -> u32 {
        let own = net.and_then(|n| n.mtu).unwrap_or(u32::MAX);
        self.cfg.mtu.min(own)
    }

    pub async fn networks(&self) -> Vec<(String, NetworkRecord)> {
        self.view
            .lock()
            .await
            .networks()
            .map(|(n, r)| (n.to_owned(), r.clone()))
            .collect()
    }

    pub fn local_endpoints(&self) -> Vec<Endpoint> {
        self.local.all()
    }

    /// The namespaces of this node's containers with the VNI of each endpoint there: the
    /// endpoints the daemon made in a namespace, and `runtime`'s (network, namespace) pairs
    /// for interfaces a runtime moved itself (Docker's sandbox keys).
    pub async fn sandboxes(
        &self,
        runtime: Vec<(String, std::path::PathBuf)>,
    ) -> Vec<crate::sock_lb::Sandbox> {
        let mut pairs: Vec<(String, std::path::PathBuf)> = self
            .local
            .all()
            .into_iter()
            .filter(|ep| ep.host_ifname().is_some())
            .filter_map(|ep| match ep.sandbox {
                overlay_api::Sandbox::Netns(path) => Some((ep.network, path)),
                overlay_api::Sandbox::Runtime => None,
            })
            .chain(runtime)
            .collect();
        pairs.sort();
        let view = self.view.lock().await;
        pairs
            .into_iter()
            .filter_map(|(network, netns)| {
                let vni = view.network(&network)?.vni;
                Some(crate::sock_lb::Sandbox { netns, vni })
            })
            .collect()
    }

    pub fn local_endpoint(&self, container_id: &str, ifname: &str) -> Option<Endpoint> {
        self.local.load(container_id, ifname)
    }

    /// The etcd key and value of a local endpoint: the one place both are made.
    pub(crate) fn endpoint_kv(&self, store: &Store, ep: &Endpoint) -> (String, Vec<u8>) {
        let key = store.layout.key(&Key::Endpoint {
            network: ep.network.clone(),
            ip: ep.key_ip(),
        });
        let value = records::encode(&EndpointRecord::of(ep, &self.cfg.node_name));
        (key, value)
    }

    /// The etcd key and value of a dual-stack endpoint's IPv6 claim (an IPv6-only endpoint's
    /// key is its IPv6 address: it has none).
    pub(crate) fn endpoint6_kv(&self, store: &Store, ep: &Endpoint) -> Option<(String, Vec<u8>)> {
        let (v4, v6) = (ep.ipv4?, ep.ipv6?);
        let key = store.layout.key(&Key::Endpoint6 {
            network: ep.network.clone(),
            ip6: v6.ip,
        });
        let value = records::encode(&Endpoint6Record {
            version: RECORD_VERSION,
            ip: v4.ip,
            node: self.cfg.node_name.clone(),
        });
        Some((key, value))
    }

    /// Both keys of a local endpoint (the IPv6 claim only on a dual-stack network).
    pub(crate) fn endpoint_kvs(&self, store: &Store, ep: &Endpoint) -> Vec<(String, Vec<u8>)> {
        let mut kvs = vec![self.endpoint_kv(store, ep)];
        kvs.extend(self.endpoint6_kv(store, ep));
        kvs
    }

    /// The key and value saying whom a local endpoint belongs to, if there is anything to
    /// say (a pod, a Docker endpoint).
    pub(crate) fn endpoint_info_kv(
        &self,
        store: &Store,
        ep: &Endpoint,
    ) -> Option<(String, Vec<u8>)> {
        let info = records::EndpointInfoRecord::of(ep)?;
        let key = store.layout.key(&Key::EndpointInfo {
            network: ep.network.clone(),
            ip: ep.key_ip(),
        });
        Some((key, records::encode(&info)))
    }

    /// Writes whom a local endpoint belongs to beside its record, under the same lease
    /// (overwriting what an earlier endpoint of the address may have left).
    pub(crate) async fn put_endpoint_info(
        &self,
        store: &Store,
        lease: i64,
        ep: &Endpoint,
    ) -> Result<(), ClusterError> {
        if let Some((key, value)) = self.endpoint_info_kv(store, ep) {
            store.put(&key, value, Some(lease)).await?;
        }
        Ok(())
    }

    /// Deletes a local endpoint's keys in etcd, each only if it is still this endpoint's.
    /// False: the record is not this endpoint's any more (another node's now).
    pub(crate) async fn delete_endpoint_keys(
        &self,
        store: &Store,
        ep: &Endpoint,
    ) -> Result<bool, ClusterError> {
        if let Some((key, value)) = self.endpoint_info_kv(store, ep) {
            store.delete_if(&key, value).await?;
        }
        let (key, value) = self.endpoint_kv(store, ep);
        let Some((key6, value6)) = self.endpoint6_kv(store, ep) else {
            return Ok(store.delete_if(&key, value).await?);
        };
        // Both in one transaction when both are ours (a crash between two deletes would
        // leave a claim naming an address the next endpoint may get); else each on its own.
        let kvs = [(key.clone(), value.clone()), (key6.clone(), value6.clone())];
        if store.delete_all_if(&kvs).await? {
            return Ok(true);
        }
        let ours = store.delete_if(&key, value).await?;
        store.delete_if(&key6, value6).await?;
        Ok(ours)
    }

    /// Puts a local endpoint into the view now rather than waiting for our own watch event
    /// to come back, and waits until the datapath installed it.
    pub(crate) async fn install(
        &self,
        store: &Store,
        lease: i64,
        ep: &Endpoint,
    ) -> Result<(), ClusterError> {
        {
            let mut view = self.view.lock().await;
            for (key, value) in self.endpoint_kvs(store, ep) {
                view.apply(Change::Put(Kv { key, value, lease }));
            }
        }
        let generation = self.applied.bump();
        self.wait_installed(generation, Some(ep)).await
    }

    /// Takes a local endpoint out of the view and waits until the datapath removed it.
    pub(crate) async fn uninstall(&self, store: &Store, ep: &Endpoint) -> Result<(), ClusterError> {
        self.forget_in_view(store, ep).await;
        let generation = self.applied.bump();
        self.wait_installed(generation, None).await
    }

    /// Takes a local endpoint's keys out of the view (the caller bumps `applied`).
    pub(crate) async fn forget_in_view(&self, store: &Store, ep: &Endpoint) {
        let mut view = self.view.lock().await;
        for (key, _) in self.endpoint_kvs(store, ep) {
            view.apply(Change::Delete(key));
        }
    }

    /// Waits until the datapath installed everything up to `generation`.
    pub(crate) async fn wait_for(&self, generation: u64) -> Result<(), ClusterError> {
        self.wait_installed(generation, None).await
    }

    async fn wait_installed(
        &self,
        generation: u64,
        ep: Option<&Endpoint>,
    ) -> Result<(), ClusterError> {
        let target = ep.map(|e| (e.network.as_str(), e.key_ip()));
        match self.applied.wait(generation, target, APPLY_TIMEOUT).await {
            Ok(()) => Ok(()),
            Err(NotApplied::NotInstalled(reason)) => Err(ClusterError::NotInstalled {
                ip: ep.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |e| e.key_ip()),
                reason,
            }),
            Err(NotApplied::Timeout(last)) => Err(ClusterError::NotApplied(match last {
                Some(e) => format!("reconciling failed ({e})"),
                None => format!("nothing was applied within {APPLY_TIMEOUT:?}"),
            })),
        }
    }
}

/// This daemon's instance id: kept in the run directory, so a restarted daemon is the same
/// instance and a rebooted or cloned host (a fresh run directory) is another.
fn instance_id(run_dir: &Path) -> String {
    let path = run_dir.join("instance");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_owned();
        }
    }
    let mut bytes = [0u8; 8];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
    {
        warn!("reading /dev/urandom: {e}; deriving the instance id from the time and pid");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = (t ^ ((std::process::id() as u64) << 32)).to_ne_bytes();
    }
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Err(e) = std::fs::write(&path, &id) {
        warn!(path = %path.display(), "keeping the instance id: {e}");
    }
    id
}

/// Runs `task` until it ends or `stop` is cancelled.
fn until(
    stop: &CancellationToken,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = task => {}
        }
    })
}
