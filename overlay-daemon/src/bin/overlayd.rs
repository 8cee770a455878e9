//! overlayd: the per-host daemon of the eBPF VXLAN overlay.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use overlay_daemon::{
    cli::EtcdArgs,
    daemon::{self, DaemonConfig, DatapathMode, NodeMode, TablesFrom},
    datapath::{self, PinLayout, SocketLb, TcMode, XdpSetting},
    maps::CounterMap,
    vtep::Prefer,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "overlayd",
    version,
    about = "eBPF VXLAN overlay daemon: loads the datapath and keeps its tables in sync",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Detach the datapath from every interface and remove its pins.
    Cleanup {
        #[command(flatten)]
        pins: PinArgs,
        /// Underlay interface (to remove clsact filters from, if any were used).
        #[arg(long, value_name = "IFACE")]
        underlay: Option<String>,
    },
    /// Print the datapath's traffic and drop counters.
    Stats {
        #[command(flatten)]
        pins: PinArgs,
        /// Print JSON (as `overlayctl stats -o json`) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where a node's datapath is pinned.
#[derive(Args)]
struct PinArgs {
    /// Node name (selects the default bpffs directory).
    #[arg(long, env = "OVERLAY_NODE_NAME")]
    node_name: Option<String>,
    /// bpffs directory of the node's pins [default: /sys/fs/bpf/overlay/<node-name>]
    #[arg(long)]
    bpffs: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Name of this node in the cluster [default: the hostname]
    #[arg(long, env = "OVERLAY_NODE_NAME")]
    node_name: Option<String>,
    /// Underlay interface VXLAN leaves and arrives on.
    #[arg(
        long,
        value_name = "IFACE",
        required_unless_present = "control_plane_only"
    )]
    underlay: Option<String>,
    /// VTEP address, IPv4 or IPv6; give it twice for one of each family [default: the
    /// underlay's first IPv4 address, else its first global IPv6 one; both with
    /// --vtep-prefer ipv6]
    #[arg(long, value_name = "IP")]
    vtep_ip: Vec<IpAddr>,
    /// The underlay family to use with peers that have VTEPs of both: IPv6 is used between
    /// two such nodes only when both prefer it (docs/operations.md "IPv6 underlay").
    #[arg(long, value_enum, default_value_t = Prefer::Ipv4)]
    vtep_prefer: Prefer,
    /// VXLAN UDP port.
    #[arg(long, default_value_t = overlay_common::wire::VXLAN_DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    vxlan_port: u16,
    /// Directory for the daemon's socket and status.
    #[arg(long, default_value = "/run/overlay")]
    run_dir: PathBuf,
    /// bpffs directory for this node's pins [default: /sys/fs/bpf/overlay/<node-name>]
    #[arg(long)]
    bpffs: Option<PathBuf>,
    /// XDP mode on the underlay (auto: native, but none on veth).
    #[arg(long, value_enum, default_value_t = XdpSetting::Auto)]
    xdp: XdpSetting,
    /// How TC programs are attached.
    #[arg(long, value_enum, default_value_t = TcMode::Auto)]
    tc_mode: TcMode,
    /// Size of the endpoint tables (every endpoint of the cluster takes one entry; entries
    /// are allocated on demand). Applies when the tables are created: pinned tables keep
    /// their size until `overlayd cleanup`.
    #[arg(long, value_name = "N", default_value_t = datapath::DEFAULT_MAX_ENDPOINTS,
          value_parser = clap::value_parser!(u32).range(1..=(1 << 24)))]
    max_endpoints: u32,
    /// Balance service connections when a container's socket connects (cgroup hooks), so
    /// their packets need no per-packet translation. auto: where the hooks can be attached.
    #[arg(long, value_enum, default_value_t = SocketLb::Auto)]
    socket_lb: SocketLb,
    /// cgroup v2 directory the socket hooks are attached to [default: the hierarchy's root,
    /// which covers every container of the host]
    #[arg(long, value_name = "DIR")]
    socket_lb_cgroup: Option<PathBuf>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// TTL of this node's etcd lease: how long after it dies a node leaves the others' tables.
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(i64).range(2..=3600))]
    lease_ttl: i64,
    /// Static cluster tables (JSON) instead of etcd; re-read when it changes and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    tables: Option<PathBuf>,
    /// On exit, leave the cluster at once and remove the datapath (default: keep both, so a
    /// restarted daemon takes over without interrupting traffic).
    #[arg(long)]
    detach_on_exit: bool,
    /// Serve the Docker network and IPAM driver `overlay-ebpf` on this socket (normally
    /// /run/docker/plugins/overlay-ebpf.sock). Needs etcd (not --tables).
    #[arg(long, value_name = "PATH", conflicts_with = "tables")]
    docker_plugin: Option<PathBuf>,
    /// Serve Prometheus metrics (`/metrics`) and health checks (`/healthz`, `/readyz`) over
    /// HTTP on this address, e.g. 0.0.0.0:9462 (default: not served).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Serve DNS to the containers on each network's gateway address (needs etcd): names of
    /// services and containers under --dns-domain, anything else asked of --dns-upstream.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    dns: Switch,
    /// The domain of the cluster's names: <service>.<network>.<domain>.
    #[arg(long, value_name = "DOMAIN", default_value = overlay_daemon::dns::DEFAULT_DOMAIN)]
    dns_domain: String,
    /// A resolver other names are asked of (repeat for more) [default: the nameservers of
    /// /etc/resolv.conf]
    #[arg(long, value_name = "IP")]
    dns_upstream: Vec<std::net::IpAddr>,
    /// Run without a datapath: register, sync and reconcile the tables in memory only (no
    /// underlay, no containers). For simulating many nodes on one machine; needs --vtep-ip.
    #[arg(long, requires = "vtep_ip", conflicts_with_all = ["docker_plugin", "underlay", "tables"])]
    control_plane_only: bool,
}

fn node_name(explicit: Option<String>) -> anyhow::Result<String> {
    match explicit {
        Some(name) if !name.is_empty() => Ok(name),
        Some(_) => anyhow::bail!("--node-name must not be empty"),
        None => Ok(nix::unistd::gethostname()
            .context("reading the hostname: pass --node-name")?
            .to_string_lossy()
            .into_owned()),
    }
}

fn default_bpffs(node: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/overlay").join(node)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line that names the problem, instead of clap's usage block.
            eprintln!("overlayd: {}", overlay_daemon::cli::one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlayd: {}", overlay_daemon::cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Cleanup { pins, underlay }) => {
            let node = node_name(pins.node_name)?;
            let pins = PinLayout::new(pins.bpffs.unwrap_or_else(|| default_bpffs(&node)));
            // Refused while a daemon runs on these pins: it would lose its datapath silently.
            let _lock = match overlay_daemon::locks::HostLock::bpffs(pins.root()) {
                Ok(lock) => Some(lock),
                Err(overlay_daemon::locks::LockError::Io { .. }) => None, // nothing pinned
                Err(e) => anyhow::bail!("{e}"),
            };
            let mut errors = datapath::remove(&pins, underlay.as_deref());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            if let Err(e) = rt.block_on(overlay_daemon::host_route::remove_rules()) {
                errors.push(e.to_string());
            }
            if let Err(e) = rt.block_on(overlay_daemon::dns::route::remove()) {
                errors.push(e.to_string());
            }
            if !errors.is_empty() {
                anyhow::bail!(
                    "cleanup left {} problem(s): {}",
                    errors.len(),
                    errors.join("; ")
                );
            }
            Ok(())
        }
        Some(Command::Stats { pins, json }) => {
            let node = node_name(pins.node_name)?;
            let pins = PinLayout::new(pins.bpffs.unwrap_or_else(|| default_bpffs(&node)));
            let counters = CounterMap::open_pinned(&pins.maps())
                .with_context(|| format!("no datapath pinned at {}", pins.root().display()))?;
            let counters = overlay_daemon::cli::Counters::from(counters.snapshot()?);
            if json {
                println!("{}", serde_json::to_string_pretty(&counters)?);
            } else {
                let rows = counters.rows();
                println!("{:<24} {:>14} {:>16}", "COUNTER", "PACKETS", "BYTES");
                for r in rows {
                    println!("{:<24} {:>14} {:>16}", r[0], r[1], r[2]);
                }
            }
            Ok(())
        }
        None => {
            let args = cli.run;
            let node = node_name(args.node_name)?;
            let mode = match (args.control_plane_only, args.underlay, &args.vtep_ip[..]) {
                (true, _, [IpAddr::V4(vtep_ip)]) => {
                    if let Some(why) = overlay_daemon::vtep::unusable(IpAddr::V4(*vtep_ip)) {
                        anyhow::bail!("--vtep-ip {vtep_ip} cannot be a VTEP address: it is {why}");
                    }
                    NodeMode::ControlPlaneOnly { vtep_ip: *vtep_ip }
                }
                (true, _, _) => anyhow::bail!(
                    "--control-plane-only needs one IPv4 --vtep-ip (there is no underlay to take it from)"
                ),
                (false, Some(underlay), _) => NodeMode::Datapath(DatapathMode {
                    underlay,
                    vtep_ips: args.vtep_ip,
                    vtep_prefer: args.vtep_prefer,
                    xdp: args.xdp,
                    tc_mode: args.tc_mode,
                    max_endpoints: Some(args.max_endpoints),
                    socket_lb: args.socket_lb,
                    socket_lb_cgroup: args.socket_lb_cgroup,
                }),
                (false, None, _) => anyhow::bail!("--underlay IFACE is required"),
            };
            // Served with etcd only: a tables file names no containers.
            let dns = match (args.dns, args.tables.is_some()) {
                (Switch::On, false) => Some(overlay_daemon::dns::DnsConfig::new(
                    &args.dns_domain,
                    args.dns_upstream,
                    std::fs::read_to_string("/etc/resolv.conf").ok().as_deref(),
                )?),
                _ => None,
            };
            let cfg = DaemonConfig {
                bpffs: args.bpffs.unwrap_or_else(|| default_bpffs(&node)),
                node_name: node,
                mode,
                vxlan_port: args.vxlan_port,
                run_dir: args.run_dir,
                source: match args.tables {
                    Some(path) => TablesFrom::File(path),
                    None => TablesFrom::Etcd(args.etcd.config()),
                },
                lease_ttl: args.lease_ttl,
                detach_on_exit: args.detach_on_exit,
                docker_plugin: args.docker_plugin,
                metrics_listen: args.metrics_listen,
                dns,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(cfg, shutdown_signal()))?;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// A feature on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}
