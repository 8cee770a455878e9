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
    maps::NodeDatapathConfig,
    netif::{self, Interface, NetifError},
    reconcile::{self, NodeIdentity, Report},
    store::EtcdConfig,
    tables::MacAddr,
    tables::{ClusterTables, ValidTables},
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
    let underlay = Interface::lookup(&cfg.underlay)?;
    let vtep_ip = underlay.vtep_ip(cfg.vtep_ip)?;
    std::fs::create_dir_all(&cfg.run_dir).map_err(|source| DaemonError::Io {
        path: cfg.run_dir.clone(),
        source,
    })?;

    let pins = PinLayout::new(&cfg.bpffs);
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
    info!(
        node = %cfg.node_name, underlay = %underlay.name, %vtep_ip, mtu = underlay.mtu,
        container_mtu = underlay.mtu - overlay_common::wire::VXLAN_MTU_OVERHEAD,
        vxlan_port = cfg.vxlan_port, "overlayd running"
    );
    let log_task = datapath
        .take_logger()
        .map(|l| tokio::spawn(forward_ebpf_logs(l)));

    let me = NodeIdentity {
        name: cfg.node_name.clone(),
        vtep_ip,
    };
    let mut hangup =
        tokio::signal::unix::signal(SignalKind::hangup()).map_err(|source| DaemonError::Io {
            path: "SIGHUP".into(),
            source,
        })?;
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    let mut unresolved = 0;
    // Returns how many local endpoints could not be installed yet.
    let reconcile = |datapath: &mut Datapath, tables: &ValidTables| -> usize {
        let plan = reconcile::plan(tables, &me, netif::ifindex);
        match reconcile::apply(datapath, &plan, vtep_ip) {
            Ok(mut report) => {
                report.rejected = tables.rejected.clone();
                write_status(&cfg.run_dir, &report);
                report.unresolved.len()
            }
            Err(e) => {
                error!("reconciling: {e}");
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
                };
                // Re-plan when the tables changed, when asked to, or while local interfaces
                // are still missing (a runtime may create them after the tables name them).
                if let Some(tables) = source.poll(forced || unresolved > 0) {
                    unresolved = reconcile(&mut datapath, &tables);
                }
            }
        }
        TablesFrom::Etcd(etcd) => {
            let (c, handles) = Cluster::start(ClusterConfig {
                etcd: etcd.clone(),
                node_name: cfg.node_name.clone(),
                vtep_ip,
                vtep_mac: MacAddr(underlay.mac.unwrap_or([0; 6])),
                lease_ttl: cfg.lease_ttl,
                run_dir: cfg.run_dir.clone(),
                mtu: underlay.mtu - overlay_common::wire::VXLAN_MTU_OVERHEAD,
            });
            tasks = handles;
            let maps_dir = pins.maps();
            let api_cluster = c.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = api::serve(api_cluster, maps_dir).await {
                    error!("API socket: {e}");
                }
            }));
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
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = hangup.recv() => {},
                    r = generation.changed() => if r.is_err() { break },
                    _ = tick.tick() => if unresolved == 0 { continue },
                }
                let seen = *generation.borrow_and_update();
                let tables = c.view.lock().await.tables();
                unresolved = reconcile(&mut datapath, &tables);
                c.applied.send_replace(seen);
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
        drop(datapath);
        let errors = datapath::remove(&pins, Some(&underlay.name));
        for e in &errors {
            warn!("cleanup: {e}");
        }
        info!("datapath detached and pins removed");
    } else {
        info!(bpffs = %pins.root().display(), "stopping; the datapath stays attached (overlayd cleanup removes it)");
    }
    Ok(())
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
