//! The daemon: loads the datapath, then keeps its tables equal to the cluster's until told to
//! stop. `run` is a library function so tests can drive the real daemon in-process.

use std::{
    future::Future,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{error, info, level_filters::LevelFilter, warn};

use crate::{
    api,
    cluster::{Cluster, ClusterConfig},
    cnm,
    datapath::{self, Datapath, DatapathError, DatapathOptions, PinLayout, TcMode, XdpSetting},
    maps::{EndpointMaps, NodeDatapathConfig},
    netif::{self, Interface, NetifError},
    nexthop::{NextHops, RouteChanges},
    reconcile::{NodeIdentity, Reconciler, Report, Target},
    store::EtcdConfig,
    tables::{ClusterTables, MacAddr, ValidTables},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Netif(#[from] NetifError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tables file {path}: {reason}")]
    Tables { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// Everything `overlayd` is told on its command line.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub node_name: String,
    pub underlay: String,
    pub vtep_ip: Option<Ipv4Addr>,
    pub vxlan_port: u16,
    pub run_dir: PathBuf,
    pub bpffs: PathBuf,
    pub xdp: XdpSetting,
    pub tc_mode: TcMode,
    /// Where the cluster's tables come from.
    pub source: TablesFrom,
    /// TTL of this node's etcd lease, seconds.
    pub lease_ttl: i64,
    /// Leave the cluster (revoke the lease) and remove programs and pins on exit, instead of
    /// leaving the datapath forwarding for the next daemon.
    pub detach_on_exit: bool,
    /// Where to serve the Docker (CNM) driver, if at all.
    pub docker_plugin: Option<PathBuf>,
    /// Take part in the cluster without a datapath (tables kept in memory): for running
    /// many simulated nodes on one machine.
    pub control_plane_only: bool,
}

/// The source of the cluster's tables.
#[derive(Clone, Debug)]
pub enum TablesFrom {
    /// etcd (the normal case).
    Etcd(EtcdConfig),
    /// A static JSON file, re-read when it changes and on SIGHUP.
    File(PathBuf),
}

const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(cfg: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&cfg.run_dir).map_err(|source| DaemonError::Io {
        path: cfg.run_dir.clone(),
        source,
    })?;
    let pins = PinLayout::new(&cfg.bpffs);
    let node = if cfg.control_plane_only {
        control_plane_node(&cfg)?
    } else {
        datapath_node(&cfg, &pins)?
    };
    let LocalNode {
        mut target,
        underlay,
        vtep_ip,
        vtep_mac,
        mtu,
        mut route_changes,
    } = node;
    let log_task = match &mut target {
        Target::Kernel(dp) => dp.take_logger().map(|l| tokio::spawn(forward_ebpf_logs(l))),
        Target::Memory(_) => None,
    };
    info!(
        node = %cfg.node_name, underlay = %underlay.as_ref().map_or("-", |u| u.name.as_str()),
        %vtep_ip, container_mtu = mtu, vxlan_port = cfg.vxlan_port,
        control_plane_only = cfg.control_plane_only, "overlayd running"
    );

    // Without a datapath there are no container interfaces to find: this node's endpoints
    // count as attached, as they would be on a real host.
    let resolve: fn(&str) -> Option<u32> = if cfg.control_plane_only {
        |_| Some(0)
    } else {
        netif::ifindex
    };
    let mut reconciler = Reconciler::new(NodeIdentity {
        name: cfg.node_name.clone(),
        vtep_ip,
    });
    let mut hangup =
        tokio::signal::unix::signal(SignalKind::hangup()).map_err(|source| DaemonError::Io {
            path: "SIGHUP".into(),
            source,
        })?;
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    let mut unresolved = 0;
    // Installs the outcome of one pass; returns how many local endpoints could not be
    // installed yet.
    let finish = |reconciler: &mut Reconciler,
                  result: Result<Report, DatapathError>,
                  revision: i64|
     -> usize {
        match result {
            Ok(mut report) => {
                report.revision = revision;
                report.applied_at_us = unix_us();
                write_status(&cfg.run_dir, &report);
                report.unresolved.len()
            }
            Err(e) => {
                error!("reconciling: {e}");
                reconciler.invalidate();
                1
            }
        }
    };
    tokio::pin!(shutdown);
    let mut cluster = None;
    let mut tasks = Vec::new();
    match &cfg.source {
        TablesFrom::File(path) => {
            let mut source = TablesSource::new(path.clone());
            loop {
                let forced = tokio::select! {
                    _ = &mut shutdown => break,
                    _ = hangup.recv() => true,
                    _ = tick.tick() => false,
                    seen = next_route_change(&mut route_changes) => {
                        on_route_change(&mut target, &mut route_changes, seen);
                        continue;
                    }
                };
                // Re-plan when the tables changed, when asked to, or while local interfaces
                // are still missing (a runtime may create them after the tables name them).
                if let Some(tables) = source.poll(forced || unresolved > 0) {
                    let result = reconciler.full(&mut target, &tables, resolve);
                    unresolved = finish(&mut reconciler, result, 0);
                }
            }
        }
        TablesFrom::Etcd(etcd) => {
            let (c, handles) = Cluster::start(ClusterConfig {
                etcd: etcd.clone(),
                node_name: cfg.node_name.clone(),
                vtep_ip,
                vtep_mac,
                lease_ttl: cfg.lease_ttl,
                run_dir: cfg.run_dir.clone(),
                mtu,
            });
            tasks = handles;
            // Runtimes (API, CNI, Docker) need a datapath to attach containers to.
            if !cfg.control_plane_only {
                let maps_dir = pins.maps();
                let api_cluster = c.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = api::serve(api_cluster, maps_dir).await {
                        error!("API socket: {e}");
                    }
                }));
            }
            if let Some(path) = cfg.docker_plugin.clone() {
                let driver = Arc::new(cnm::Driver::new(c.clone()));
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = cnm::serve(&path, driver).await {
                        error!("Docker plugin socket {}: {e}", path.display());
                    }
                }));
            }
            let mut generation = c.generation.subscribe();
            loop {
                let retry = tokio::select! {
                    _ = &mut shutdown => break,
                    _ = hangup.recv() => true,
                    r = generation.changed() => if r.is_err() { break } else { false },
                    _ = tick.tick() => if unresolved == 0 { continue } else { true },
                    seen = next_route_change(&mut route_changes) => {
                        on_route_change(&mut target, &mut route_changes, seen);
                        continue;
                    }
                };
                let seen = *generation.borrow_and_update();
                let mut view = c.view.lock().await;
                let dirty = view.take_dirty();
                let revision = view.revision;
                let delta = if retry {
                    Ok(None)
                } else {
                    reconciler.delta(&mut target, &view, &dirty, resolve)
                };
                let result = match delta {
                    Ok(Some(report)) => Ok(report),
                    Ok(None) => {
                        // Copy under the lock, validate and install without it.
                        let raw = view.cluster_tables();
                        drop(view);
                        reconciler.full(&mut target, &raw.validate(), resolve)
                    }
                    Err(e) => Err(e),
                };
                let full = result.as_ref().is_ok_and(|r| !r.incremental);
                unresolved = finish(&mut reconciler, result, revision);
                c.applied.send_replace(seen);
                if full {
                    release_freed_memory();
                }
            }
            cluster = Some(c);
        }
    }

    for task in &tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(api::socket_path(&cfg.run_dir));
    if let Some(path) = &cfg.docker_plugin {
        let _ = std::fs::remove_file(path);
    }
    if let Some(task) = log_task {
        task.abort();
    }
    if cfg.detach_on_exit {
        if let Some(c) = &cluster {
            c.leave().await;
        }
        if let Target::Kernel(_) = target {
            drop(target);
            let errors = datapath::remove(&pins, underlay.as_ref().map(|u| u.name.as_str()));
            for e in &errors {
                warn!("cleanup: {e}");
            }
            info!("datapath detached and pins removed");
        }
    } else if !cfg.control_plane_only {
        info!(bpffs = %pins.root().display(), "stopping; the datapath stays attached (overlayd cleanup removes it)");
    }
    Ok(())
}

/// This host as the daemon runs it.
struct LocalNode {
    target: Target,
    underlay: Option<Interface>,
    vtep_ip: Ipv4Addr,
    vtep_mac: MacAddr,
    /// Container MTU.
    mtu: u32,
    /// Present while the datapath pins underlay next hops.
    route_changes: Option<RouteChanges>,
}

/// Loads and attaches the datapath on the underlay.
fn datapath_node(cfg: &DaemonConfig, pins: &PinLayout) -> Result<LocalNode, DaemonError> {
    let underlay = Interface::lookup(&cfg.underlay)?;
    let vtep_ip = underlay.vtep_ip(cfg.vtep_ip)?;
    let mut datapath = Datapath::load(&DatapathOptions {
        pins: pins.clone(),
        underlay_ifindex: underlay.ifindex,
        xdp: cfg.xdp.resolve(underlay.driver.as_deref()),
        tc_mode: cfg.tc_mode,
        ebpf_log_level: ebpf_log_level(),
    })?;
    datapath
        .maps
        .config
        .set(&NodeDatapathConfig {
            vtep_ip,
            underlay_ifindex: underlay.ifindex,
            underlay_mtu: underlay.mtu,
            vxlan_port: cfg.vxlan_port,
        })
        .map_err(DatapathError::from)?;
    // Next hops are pinned only while route changes can be seen.
    let route_changes = match RouteChanges::subscribe()
        .and_then(|changes| Ok((changes, NextHops::new(underlay.ifindex, vtep_ip)?)))
    {
        Ok((changes, next_hops)) => {
            datapath.set_next_hops(next_hops);
            Some(changes)
        }
        Err(e) => {
            warn!("{e}; the kernel routes each encapsulated packet");
            None
        }
    };
    Ok(LocalNode {
        target: Target::Kernel(Box::new(datapath)),
        route_changes,
        vtep_ip,
        vtep_mac: MacAddr(underlay.mac.unwrap_or([0; 6])),
        mtu: underlay.mtu - overlay_common::wire::VXLAN_MTU_OVERHEAD,
        underlay: Some(underlay),
    })
}

/// No datapath: the node takes part in the cluster and keeps its tables in memory, so many
/// simulated nodes fit on one machine (control-plane scale tests).
fn control_plane_node(cfg: &DaemonConfig) -> Result<LocalNode, DaemonError> {
    let vtep_ip = cfg.vtep_ip.ok_or_else(|| {
        DaemonError::Config(
            "--control-plane-only needs --vtep-ip (there is no underlay to take it from)".into(),
        )
    })?;
    Ok(LocalNode {
        target: Target::Memory(Box::new(EndpointMaps::in_memory())),
        route_changes: None,
        underlay: None,
        vtep_ip,
        vtep_mac: MacAddr([0x02, 0, 0, 0, 0, 0]),
        mtu: 1500 - overlay_common::wire::VXLAN_MTU_OVERHEAD,
    })
}

/// A full pass frees tens of MB of temporary tables at 100k endpoints; glibc keeps freed
/// memory in its arenas unless asked to give it back.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Re-reads the tables file when its modification time changes (or when forced) and
/// validates it. A file that does not parse keeps the last good tables.
struct TablesSource {
    path: PathBuf,
    seen: Option<SystemTime>,
    current: ValidTables,
    first: bool,
}

impl TablesSource {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            seen: None,
            current: ValidTables::default(),
            first: true,
        }
    }

    fn poll(&mut self, forced: bool) -> Option<ValidTables> {
        let first = std::mem::take(&mut self.first);
        let path = self.path.clone();
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if !forced && !first && mtime == self.seen {
            return None;
        }
        self.seen = mtime;
        match load_tables(&path) {
            Ok(tables) => {
                for r in &tables.rejected {
                    warn!("tables: skipping {r}");
                }
                self.current = tables;
            }
            Err(e) => warn!("{e}; keeping the last good tables"),
        }
        Some(self.current.clone())
    }
}

pub fn load_tables(path: &Path) -> Result<ValidTables, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|e| DaemonError::Tables {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let tables = ClusterTables::from_json(&text).map_err(|e| DaemonError::Tables {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(tables.validate())
}

/// `<run-dir>/status.json`: what the datapath holds after the last reconciliation.
fn write_status(run_dir: &Path, report: &Report) {
    let path = run_dir.join("status.json");
    let tmp = run_dir.join(".status.json.tmp");
    let body = serde_json::to_vec_pretty(report).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path)) {
        warn!(path = %path.display(), "writing status: {e}");
    }
}

/// Waits for the next IPv4 route change; forever without a subscription.
async fn next_route_change(changes: &mut Option<RouteChanges>) -> bool {
    match changes {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Asks again for the VTEPs' next hops after a route change; unpins them all once changes
/// can no longer be seen (`seen` false), since a pinned next hop could then go stale.
fn on_route_change(target: &mut Target, changes: &mut Option<RouteChanges>, seen: bool) {
    let Target::Kernel(dp) = target else {
        return;
    };
    let result = if seen {
        dp.refresh_next_hops()
    } else {
        warn!("route change subscription ended; the kernel routes each encapsulated packet");
        *changes = None;
        dp.clear_next_hops()
    };
    if let Err(e) = result {
        error!("underlay next hops: {e}");
    }
}

/// aya-log's level for the eBPF side, from the most verbose level tracing will print.
fn ebpf_log_level() -> u8 {
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

async fn forward_ebpf_logs(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns the ring buffer fd and lives inside the AsyncFd, so the fd
    // stays open for as long as it is registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("eBPF log reader: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
