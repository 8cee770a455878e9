//! The daemon: loads the datapath, then keeps its tables equal to the cluster's until told to
//! stop. `run` is a library function so tests can drive the real daemon in-process.
//!
//! One loop serves every configuration: a table source (etcd or a file, `source`) feeds a
//! target (the kernel's maps, or memory in control-plane-only mode, `node`). On shutdown
//! the front ends stop accepting and finish the requests in flight while the loop still
//! installs what they wait for; then the background tasks stop and the daemon exits.

mod node;
mod source;
pub(crate) mod status;

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::{signal::unix::SignalKind, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use source::load_tables;
use source::{TableSource, TablesFile};

use crate::{
    api,
    cluster::{Cluster, ClusterConfig},
    cnm,
    datapath::{self, DatapathError, PinLayout, SocketLb, TcMode, XdpSetting},
    metrics::{self, Metrics},
    netif::{self, NetifError},
    reconcile::{NodeIdentity, Reconciler, Target},
    store::EtcdConfig,
    vtep::{Prefer, Vteps},
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
    #[error(transparent)]
    Locked(#[from] crate::locks::LockError),
    #[error(transparent)]
    Fatal(#[from] crate::cluster::Fatal),
}

/// Everything `overlayd` is told on its command line.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub node_name: String,
    pub mode: NodeMode,
    pub vxlan_port: u16,
    pub run_dir: PathBuf,
    pub bpffs: PathBuf,
    /// Where the cluster's tables come from.
    pub source: TablesFrom,
    /// TTL of this node's etcd lease, seconds.
    pub lease_ttl: i64,
    /// Leave the cluster (revoke the lease) and remove programs and pins on exit, instead of
    /// leaving the datapath forwarding for the next daemon.
    pub detach_on_exit: bool,
    /// Where to serve the Docker (CNM) driver, if at all.
    pub docker_plugin: Option<PathBuf>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, if at all.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// DNS for the containers (etcd and a datapath only), if served.
    pub dns: Option<crate::dns::DnsConfig>,
}

/// What the node runs.
#[derive(Clone, Debug)]
pub enum NodeMode {
    /// The kernel datapath on an underlay interface.
    Datapath(DatapathMode),
    /// No datapath: register, sync and reconcile the tables in memory, for simulating many
    /// nodes on one machine.
    ControlPlaneOnly { vtep_ip: Ipv4Addr },
}

#[derive(Clone, Debug)]
pub struct DatapathMode {
    pub underlay: String,
    /// The VTEP addresses given (one per family at most). Default: the underlay's first
    /// IPv4 address, else its first global IPv6 one (both when IPv6 is preferred).
    pub vtep_ips: Vec<IpAddr>,
    /// The underlay family this node would rather use with peers that have both.
    pub vtep_prefer: Prefer,
    pub xdp: XdpSetting,
    pub tc_mode: TcMode,
    /// Size of the endpoint tables (default: 1M entries, allocated on demand).
    pub max_endpoints: Option<u32>,
    pub socket_lb: SocketLb,
    /// Default: the root of the cgroup v2 hierarchy.
    pub socket_lb_cgroup: Option<PathBuf>,
}

/// The source of the cluster's tables.
#[derive(Clone, Debug)]
pub enum TablesFrom {
    /// etcd (the normal case).
    Etcd(EtcdConfig),
    /// A static JSON file, re-read when it changes and on SIGHUP.
    File(PathBuf),
}

/// How often a pass is retried while local endpoints are not installed yet (and how often
/// a tables file is polled).
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How long the loop keeps running for front-end requests in flight after a stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn run(cfg: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&cfg.run_dir).map_err(|source| DaemonError::Io {
        path: cfg.run_dir.clone(),
        source,
    })?;
    let _run_dir_lock = crate::locks::HostLock::run_dir(&cfg.run_dir)?;
    // A status from an earlier run would pass for this one's until its first pass.
    let _ = std::fs::remove_file(cfg.run_dir.join("status.json"));
    let _ = std::fs::remove_file(cfg.run_dir.join("dns.json"));
    // Bound before the datapath is touched, so a taken port stops the daemon at once.
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(|source| DaemonError::Io {
                    path: format!("--metrics-listen {addr}").into(),
                    source,
                })?,
        ),
        None => None,
    };
    let pins = PinLayout::new(&cfg.bpffs);
    let node = match &cfg.mode {
        NodeMode::Datapath(opts) => node::datapath_node(&cfg, opts, &pins)?,
        NodeMode::ControlPlaneOnly { vtep_ip } => node::control_plane_node(Vteps::v4(*vtep_ip)),
    };
    let node::LocalNode {
        mut target,
        underlay,
        vteps,
        vtep_mac,
        mtu,
        mut host,
    } = node;
    let mut vteps = vteps;
    if let Target::Kernel(dp) = &mut target {
        crate::host_route::follow_addresses(&mut dp.maps.host_addrs).await;
    }
    let control_plane_only = matches!(cfg.mode, NodeMode::ControlPlaneOnly { .. });
    let maps_dir = (!control_plane_only).then(|| pins.maps());
    if let Some(dir) = &maps_dir {
        crate::monitor::reset(dir);
    }
    let metrics = Arc::new(Metrics::new(maps_dir.clone()));

    let log_task = match &mut target {
        Target::Kernel(dp) => dp
            .take_logger()
            .map(|l| tokio::spawn(status::forward_ebpf_logs(l))),
        Target::Memory(_) => None,
    };
    info!(
        node = %cfg.node_name, underlay = %underlay.as_ref().map_or("-", |u| u.name.as_str()),
        %vteps, container_mtu = mtu, vxlan_port = cfg.vxlan_port,
        control_plane_only, "overlayd running"
    );

    // Background tasks (etcd) end on `stop_tasks`; the front ends stop accepting on
    // `stop_front`, and the loop runs until they have drained.
    let stop_tasks = CancellationToken::new();
    let stop_front = CancellationToken::new();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut front: Vec<JoinHandle<()>> = Vec::new();
    let mut cluster = None;
    let mut docker: Option<Arc<cnm::Driver>> = None;
    // DNS only where queries can reach it: a datapath, etcd, and the host's rule and table.
    // A control-plane-only node keeps the zone without serving it.
    let dns = match (&cfg.dns, &target, &cfg.source) {
        (Some(dns), Target::Kernel(_), TablesFrom::Etcd(_)) => match crate::dns::prepare().await {
            Ok(()) => Some((dns.clone(), crate::dns::Serve::Gateways)),
            Err(e) => {
                error!("DNS not served: {e}");
                None
            }
        },
        (Some(dns), Target::Memory(_), TablesFrom::Etcd(_)) => {
            Some((dns.clone(), crate::dns::Serve::ZoneOnly))
        }
        _ => None,
    };
    if let Target::Kernel(dp) = &mut target {
        // Set only with the rules and tables in place (until the sockets are bound again,
        // queries are unreachable, never delivered elsewhere).
        if let Err(e) = dp.maps.config.set_dns(dns.is_some()) {
            error!("DNS: telling the datapath: {e}");
        }
    }
    let mut source = match &cfg.source {
        TablesFrom::File(path) => TableSource::File(TablesFile::new(path.clone())),
        TablesFrom::Etcd(etcd) => {
            let (c, handles) = Cluster::start(
                ClusterConfig {
                    etcd: etcd.clone(),
                    node_name: cfg.node_name.clone(),
                    vteps,
                    vtep_mac,
                    lease_ttl: cfg.lease_ttl,
                    run_dir: cfg.run_dir.clone(),
                    mtu,
                    dns_domain: dns.as_ref().map(|(d, _)| d.domain_text()),
                },
                metrics.clone(),
                &stop_tasks,
            );
            tasks = handles;
            // Runtimes (API, CNI, Docker) need a datapath to attach containers to.
            if !control_plane_only {
                crate::host_route::restore(&c.local_endpoints()).await;
                let listener = match api::bind(&cfg.run_dir) {
                    Ok(l) => l,
                    Err(source) => {
                        stop_tasks.cancel();
                        return Err(DaemonError::Io {
                            path: api::socket_path(&cfg.run_dir),
                            source,
                        });
                    }
                };
                let monitor = crate::monitor::Hub::new(pins.maps(), cfg.vxlan_port);
                front.push(tokio::spawn(api::serve(
                    listener,
                    c.clone(),
                    pins.maps(),
                    Some(monitor),
                    stop_front.clone(),
                )));
            }
            if let Some((dns, serve)) = dns.clone() {
                tasks.push(tokio::spawn(crate::dns::run(
                    dns,
                    c.clone(),
                    serve,
                    stop_tasks.clone(),
                )));
            }
            if let Some(path) = cfg.docker_plugin.clone() {
                let driver = Arc::new(cnm::Driver::new(c.clone()));
                docker = Some(driver.clone());
                let stop = stop_front.clone();
                front.push(tokio::spawn(async move {
                    if let Err(e) = cnm::serve(&path, driver, stop).await {
                        error!("Docker plugin socket {}: {e}", path.display());
                    }
                }));
            }
            cluster = Some(c.clone());
            // The cluster's first listing may already have been announced: a receiver made
            // now would take it as seen, and the node would make no pass until the next
            // change in etcd (on a quiet cluster, never). The first pass is always made.
            let mut changes = c.applied.subscribe();
            changes.mark_changed();
            TableSource::Etcd {
                changes,
                cluster: c,
            }
        }
    };

    if let Some(listener) = metrics_listener {
        let health = metrics::Health {
            cluster: cluster.clone(),
            underlay_link: maps_dir.as_ref().map(|_| pins.underlay_tc()),
            maps_dir: maps_dir.clone(),
            run_dir: cfg.run_dir.clone(),
        };
        tasks.push(tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            health,
            stop_tasks.clone(),
        )));
    }

    // Without a datapath there are no container interfaces to find: this node's endpoints
    // count as attached, as they would be on a real host.
    let resolve: fn(&str) -> Option<u32> = if control_plane_only {
        |_| Some(0)
    } else {
        netif::ifindex
    };
    let mut reconciler = Reconciler::new(NodeIdentity {
        name: cfg.node_name.clone(),
        vteps,
    });
    if let Some(h) = host.as_mut() {
        h.scan_devices(vteps).await;
        reconciler.set_foreign_vnis(h.apply_devices(&mut target));
    }
    let mut hangup =
        tokio::signal::unix::signal(SignalKind::hangup()).map_err(|source| DaemonError::Io {
            path: "SIGHUP".into(),
            source,
        })?;
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    let is_file = matches!(source, TableSource::File(_));
    let mut unresolved = 0;
    tokio::pin!(shutdown);
    let mut stopping: Option<tokio::time::Instant> = None;
    let mut drained = std::pin::pin!(futures::future::join_all(std::mem::take(&mut front)));
    let mut fatal = None;
    loop {
        let retry = tokio::select! {
            why = cluster_fatal(&cluster), if fatal.is_none() => {
                fatal = Some(why);
                stop_front.cancel();
                stopping.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_TIMEOUT);
                continue;
            }
            _ = &mut shutdown, if stopping.is_none() => {
                info!("stopping: finishing requests in flight");
                stop_front.cancel();
                stopping = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                continue;
            }
            _ = &mut drained, if stopping.is_some() => break,
            _ = tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)), if stopping.is_some() => {
                warn!("front ends did not drain in {DRAIN_TIMEOUT:?}");
                break;
            }
            _ = hangup.recv() => true,
            changed = source.changed() => if changed { false } else { break },
            _ = tick.tick() => {
                // A file is polled; etcd changes come by themselves, so a tick only retries
                // endpoints still missing.
                if !is_file && unresolved == 0 {
                    continue;
                }
                unresolved > 0
            }
            changes = node::HostWatch::next(&mut host) => {
                let Some(h) = host.as_mut() else { continue };
                let actions = h.apply(&mut target, changes, vteps).await;
                let mut replan = false;
                if let Some(new) = actions.vtep_moved {
                    h.move_vtep(&mut target, new);
                    vteps = new;
                    reconciler.me.vteps = new;
                    reconciler.invalidate();
                    if let Some(c) = &cluster {
                        c.set_vtep(new);
                    }
                    replan = true;
                }
                if actions.devices_changed {
                    reconciler.set_foreign_vnis(h.apply_devices(&mut target));
                    replan = true;
                }
                if !actions.links_removed.is_empty() {
                    if let Some(c) = &cluster {
                        replan |= c.interfaces_vanished(&actions.links_removed).await;
                    }
                }
                if !replan {
                    continue;
                }
                true
            }
        };
        let woke = std::time::Instant::now();
        let Some(mut pass) = source
            .pass(&mut reconciler, &mut target, resolve, retry)
            .await
        else {
            continue;
        };
        match &pass.result {
            Ok(_) => metrics.reconciled(woke.elapsed().as_secs_f64()),
            Err(_) => metrics.reconcile_failed(),
        }
        unresolved = match &mut pass.result {
            Ok(report) => {
                report.revision = pass.revision;
                report.applied_at_us = status::unix_us();
                status::write_status(&cfg.run_dir, report);
                report.unresolved.len()
            }
            Err(e) => {
                error!("reconciling: {e}");
                reconciler.invalidate();
                1
            }
        };
        source.finished(&pass);
        if pass.result.is_ok() {
            sync_sandboxes(&mut target, &cluster, &docker).await;
        }
        if pass.result.as_ref().is_ok_and(|r| !r.incremental) {
            crate::memory::release_freed();
        }
    }

    stop_tasks.cancel();
    for task in tasks {
        let _ = task.await;
    }
    if let Some(task) = log_task {
        task.abort();
    }
    // Refused before it ever held the name: the datapath it attached is its own to remove.
    let refused = matches!(fatal, Some(crate::cluster::Fatal::NameInUse { .. }));
    if cfg.detach_on_exit || refused {
        if let (Some(c), false) = (&cluster, refused) {
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
    } else if !control_plane_only {
        info!(bpffs = %pins.root().display(), "stopping; the datapath stays attached (overlayd cleanup removes it)");
    }
    match fatal {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}

/// Resolves when the cluster side cannot go on; never without etcd.
async fn cluster_fatal(cluster: &Option<Arc<Cluster>>) -> crate::cluster::Fatal {
    match cluster {
        Some(c) => c.fatal().await,
        None => std::future::pending().await,
    }
}

/// Tells the socket hooks which namespaces are this node's containers' (after each pass, so
/// a container attached by it is balanced from its first connect).
async fn sync_sandboxes(
    target: &mut Target,
    cluster: &Option<Arc<Cluster>>,
    docker: &Option<Arc<cnm::Driver>>,
) {
    let (Target::Kernel(dp), Some(c)) = (target, cluster) else {
        return;
    };
    if !dp.socket_lb() {
        return;
    }
    let runtime = docker.as_ref().map(|d| d.sandboxes()).unwrap_or_default();
    let sandboxes = c.sandboxes(runtime).await;
    let dp = &mut **dp;
    if let Err(e) = dp.sockets.sync(&mut dp.maps.sock, &sandboxes) {
        warn!("socket balancing namespaces: {e}");
    }
}
