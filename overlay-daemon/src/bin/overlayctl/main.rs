//! overlayctl: manage the overlay's networks in etcd and look at nodes, endpoints and a
//! daemon's status.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use overlay_api::{Client, EventType, MonitorRequest};
use overlay_daemon::{
    admin::{self, records_under},
    cli::EtcdArgs,
    store::{
        keys::Key,
        records::{Endpoint6Record, EndpointRecord, NetworkRecord, NodeRecord, RECORD_VERSION},
        Store,
    },
    tables::{BackendSpec, Proto},
};
use serde_json::json;

mod service;
use service::service;

#[derive(Parser)]
#[command(name = "overlayctl", version, about = "Manage the eBPF VXLAN overlay")]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Output for people (table) or scripts (json).
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// overlayd's API socket (for status and stats).
    #[arg(long, default_value = "/run/overlay/overlayd.sock", global = true)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Overlay networks (one VNI and subnet each).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Nodes registered in etcd.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Endpoints (container interfaces) of the cluster.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Services: a VIP:port balanced over backends by every node's datapath.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// One daemon's status (through --socket).
    Status,
    /// One daemon's datapath counters (through --socket).
    Stats,
    /// Stream one daemon's datapath events until interrupted (through --socket): every
    /// dropped packet with its reason, hook, interface and addresses, and (--type trace) a
    /// sample of forwarded packets with the decision taken. Rate-limited per CPU; what was
    /// not sent is reported as lost.
    Monitor {
        /// Which events (repeat for both).
        #[arg(long = "type", value_enum, default_values_t = [MonitorType::Drop])]
        kinds: Vec<MonitorType>,
        /// Traces: show one forwarded packet in N.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        sample: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MonitorType {
    /// Dropped packets, with the reason.
    Drop,
    /// Forwarded packets (sampled), with the decision: local, encap to a VTEP, decap, ARP
    /// answered, service backend chosen.
    Trace,
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Create a network.
    Create {
        name: String,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=0xff_ffff))]
        vni: u32,
        /// The network's subnet: IPv4, IPv6 (an IPv6-only network), or one of each (a
        /// dual-stack network); at most one per family.
        #[arg(long, required = true)]
        subnet: Vec<IpNet>,
        /// MTU for containers (at most the underlay's minus 50).
        #[arg(long)]
        mtu: Option<u32>,
        /// Prefix length of the IPv4 address blocks nodes claim.
        #[arg(long, default_value_t = 26)]
        block_len: u8,
        /// Prefix length of the IPv6 address blocks nodes claim (default 96).
        #[arg(long)]
        block_len6: Option<u8>,
        /// Gateway address per family (default: each subnet's first address).
        #[arg(long)]
        gateway: Vec<IpAddr>,
    },
    /// List networks.
    Ls,
    /// Remove a network (refused while it has endpoints).
    Rm { name: String },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// List nodes with their lease.
    Ls,
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// List endpoints.
    Ls {
        #[arg(long)]
        network: Option<String>,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Create a service.
    Add {
        name: String,
        #[arg(long)]
        network: String,
        /// Virtual IP and port, outside the network's subnet: 198.19.200.1:80, or
        /// [2001:2:0:1200::1]:80 on a network with IPv6.
        #[arg(long)]
        vip: SocketAddr,
        #[arg(long, default_value = "tcp")]
        proto: Proto,
        /// A backend IP:PORT[@WEIGHT] ([IPv6]:PORT[@WEIGHT]), of the VIP's family (repeat);
        /// endpoints labelled overlay.service=NAME:PORT join as well, by their address of the
        /// VIP's family.
        #[arg(long = "backend")]
        backends: Vec<BackendSpec>,
    },
    /// List services with their live backends.
    Ls {
        #[arg(long)]
        network: Option<String>,
    },
    /// Remove a service.
    Rm { name: String },
    /// Replace a service's configured backends (none: only labelled endpoints remain).
    SetBackends {
        name: String,
        #[arg(long = "backend")]
        backends: Vec<BackendSpec>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("overlayctl: {}", overlay_daemon::cli::one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overlayctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlayctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints rows as an aligned table.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Status | Command::Stats => {
            let client = Client::new(&cli.socket);
            let v = if matches!(cli.command, Command::Status) {
                client
                    .status()
                    .map(|s| serde_json::to_value(s).unwrap_or_default())
            } else {
                client
                    .stats()
                    .map(|s| serde_json::to_value(s).unwrap_or_default())
            }
            .with_context(|| {
                format!(
                    "is overlayd running with --run-dir {}?",
                    run_dir_of(&cli.socket)
                )
            })?;
            if cli.output == Output::Json {
                print_json(&v);
            } else if matches!(cli.command, Command::Status) {
                let mut rows: Vec<Vec<String>> = v
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, _)| k.as_str() != "rejected")
                            .map(|(k, v)| {
                                vec![k.clone(), v.to_string().trim_matches('"').to_owned()]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                // One row per thing this node left out, with why.
                for r in v["rejected"].as_array().into_iter().flatten() {
                    rows.push(vec!["rejected".into(), r.as_str().unwrap_or("").to_owned()]);
                }
                table(&["FIELD", "VALUE"], &rows);
            } else {
                let mut rows = Vec::new();
                for (section, prefix) in [("traffic", ""), ("drops", "drop:")] {
                    for pair in v[section].as_array().into_iter().flatten() {
                        rows.push(vec![
                            format!("{prefix}{}", pair[0].as_str().unwrap_or("")),
                            pair[1]["packets"].to_string(),
                            pair[1]["bytes"].to_string(),
                        ]);
                    }
                }
                table(&["COUNTER", "PACKETS", "BYTES"], &rows);
            }
            Ok(())
        }
        Command::Monitor { kinds, sample } => {
            let mut events = Vec::new();
            for k in kinds {
                let kind = match k {
                    MonitorType::Drop => EventType::Drop,
                    MonitorType::Trace => EventType::Trace,
                };
                if !events.contains(&kind) {
                    events.push(kind);
                }
            }
            let req = MonitorRequest { events, sample };
            overlay_daemon::monitor::client::watch(&cli.socket, req, cli.output == Output::Json)
                .with_context(|| {
                    format!(
                        "is overlayd running with --run-dir {}?",
                        run_dir_of(&cli.socket)
                    )
                })
        }
        Command::Network(cmd) => network(cli.etcd, cli.output, cmd).await,
        Command::Service(cmd) => service(cli.etcd, &cli.socket, cli.output, cmd).await,
        Command::Node(NodeCmd::Ls) => {
            let store = Store::connect(&cli.etcd.config()).await?;
            let nodes = records_under::<NodeRecord>(&store, &store.layout.nodes()).await?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut out = Vec::new();
            for (key, n, lease) in nodes {
                let Key::Node(name) = key else { continue };
                let ttl = store.lease_time_left(lease).await.unwrap_or(-1);
                out.push(json!({"name": name, "vtep_ip": n.vtep_ip, "vtep_mac": n.vtep_mac.to_string(),
                    "registered_secs_ago": now.saturating_sub(n.registered_at), "lease": format!("{lease:x}"), "lease_ttl_left": ttl,
                    "release": n.release}));
            }
            if cli.output == Output::Json {
                print_json(&json!(out));
            } else {
                let rows: Vec<Vec<String>> = out
                    .iter()
                    .map(|n| {
                        vec![
                            n["name"].as_str().unwrap_or("").into(),
                            n["vtep_ip"].as_str().unwrap_or("").into(),
                            n["vtep_mac"].as_str().unwrap_or("").into(),
                            format!("{}s", n["registered_secs_ago"]),
                            format!("{}s", n["lease_ttl_left"]),
                            // Releases before 0.2 did not say.
                            n["release"].as_str().unwrap_or("<0.2").into(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME",
                        "VTEP",
                        "VTEP MAC",
                        "REGISTERED",
                        "LEASE LEFT",
                        "RELEASE",
                    ],
                    &rows,
                );
            }
            Ok(())
        }
        Command::Endpoint(EndpointCmd::Ls { network }) => {
            let store = Store::connect(&cli.etcd.config()).await?;
            let prefix = match &network {
                Some(n) => store.layout.endpoints(n),
                None => store.layout.all_endpoints(),
            };
            // IPv6 claims name their endpoint by network and IPv4 address.
            let mut ip6_of = std::collections::BTreeMap::new();
            let all6 = store.layout.root().to_owned() + "endpoints6/";
            for (key, r, _) in records_under::<Endpoint6Record>(&store, &all6).await? {
                if let Key::Endpoint6 { network, ip6 } = key {
                    ip6_of.insert((network, r.ip), ip6);
                }
            }
            let mut out = Vec::new();
            for (key, ep, _) in records_under::<EndpointRecord>(&store, &prefix).await? {
                let Key::Endpoint { network, ip } = key else {
                    continue;
                };
                let ip6 = match ip {
                    std::net::IpAddr::V4(ip) => ip6_of.get(&(network.clone(), ip)).copied(),
                    // An IPv6-only network's endpoint: named by its IPv6 address.
                    std::net::IpAddr::V6(ip6) => Some(ip6),
                };
                let ip = match ip {
                    std::net::IpAddr::V4(ip) => Some(ip),
                    std::net::IpAddr::V6(_) => None,
                };
                let mut row = json!({"network": network, "ip": ip, "mac": ep.mac.to_string(), "node": ep.node,
                    "container_id": ep.container_id, "ifname": ep.ifname, "host_ifname": ep.attachment.to_wire()});
                if let Some(ip6) = ip6 {
                    row["ip6"] = json!(ip6);
                }
                if let Some(pod) = &ep.pod {
                    row["pod"] = json!(pod);
                }
                out.push(row);
            }
            if cli.output == Output::Json {
                print_json(&json!(out));
            } else {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
                let rows: Vec<Vec<String>> = out
                    .iter()
                    .map(|e| {
                        vec![
                            s(&e["network"]),
                            [&e["ip"], &e["ip6"]]
                                .iter()
                                .filter_map(|a| a.as_str())
                                .collect::<Vec<_>>()
                                .join(" "),
                            s(&e["mac"]),
                            s(&e["node"]),
                            s(&e["container_id"]),
                            match (e["pod"]["namespace"].as_str(), e["pod"]["name"].as_str()) {
                                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                                _ => "-".into(),
                            },
                        ]
                    })
                    .collect();
                table(&["NETWORK", "IP", "MAC", "NODE", "CONTAINER", "POD"], &rows);
            }
            Ok(())
        }
    }
}

/// The run directory a socket path belongs to, for error messages.
fn run_dir_of(socket: &std::path::Path) -> String {
    socket
        .parent()
        .map_or_else(|| ".".into(), |p| p.display().to_string())
}

async fn network(etcd: EtcdArgs, output: Output, cmd: NetworkCmd) -> anyhow::Result<()> {
    let store = Store::connect(&etcd.config()).await?;
    match cmd {
        NetworkCmd::Create {
            name,
            vni,
            subnet,
            mtu,
            block_len,
            block_len6,
            gateway,
        } => {
            let (subnet, subnet6) = admin::one_per_family("--subnet", &subnet)?;
            let (gateway, gateway6) = admin::one_per_family("--gateway", &gateway)?;
            let subnet = subnet.map(|s| s.trunc());
            let subnet6 = subnet6.map(|s| s.trunc());
            let record = NetworkRecord {
                version: RECORD_VERSION,
                vni,
                subnet,
                block_len,
                gateway,
                mtu,
                subnet6,
                gateway6,
                block_len6,
            };
            admin::create_network(&store, &name, &record).await?;
            let subnets: Vec<String> = subnet
                .map(|s| s.to_string())
                .into_iter()
                .chain(subnet6.map(|s| s.to_string()))
                .collect();
            if output == Output::Json {
                print_json(
                    &json!({"name": name, "vni": vni, "subnet": subnet, "subnet6": subnet6}),
                );
            } else {
                println!(
                    "network {name} created: VNI {vni}, subnet {}",
                    subnets.join(" ")
                );
            }
            Ok(())
        }
        NetworkCmd::Ls => {
            let (eps, _) = store.list(&store.layout.all_endpoints()).await?;
            let mut out = Vec::new();
            for (key, n, _) in
                records_under::<NetworkRecord>(&store, &store.layout.networks()).await?
            {
                let Key::Network(name) = key else { continue };
                let count = eps
                    .iter()
                    .filter(|e| matches!(store.layout.parse(&e.key), Some(Key::Endpoint { network, .. }) if network == name))
                    .count();
                out.push(json!({"name": name, "vni": n.vni, "subnet": n.subnet.map(|s| s.to_string()), "block_len": n.subnet.map(|_| n.block_len),
                    "subnet6": n.subnet6.map(|s| s.to_string()), "block_len6": n.ipv6().map(|v| v.block_len),
                    "mtu": n.mtu, "endpoints": count}));
            }
            if output == Output::Json {
                print_json(&json!(out));
            } else {
                let rows: Vec<Vec<String>> = out
                    .iter()
                    .map(|n| {
                        vec![
                            n["name"].as_str().unwrap_or("").into(),
                            n["vni"].to_string(),
                            [&n["subnet"], &n["subnet6"]]
                                .iter()
                                .filter_map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(" "),
                            [&n["block_len"], &n["block_len6"]]
                                .iter()
                                .filter_map(|b| b.as_u64())
                                .map(|b| format!("/{b}"))
                                .collect::<Vec<_>>()
                                .join(" "),
                            n["endpoints"].to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "VNI", "SUBNET", "BLOCKS", "ENDPOINTS"], &rows);
            }
            Ok(())
        }
        NetworkCmd::Rm { name } => {
            admin::remove_network(&store, &name).await?;
            if output == Output::Table {
                println!("network {name} removed");
            }
            Ok(())
        }
    }
}
