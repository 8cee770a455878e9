//! `overlayctl service`: services in etcd, and what the daemons made of them.

use std::net::SocketAddr;

use clap::Subcommand;
use overlay_api::Client;
use overlay_daemon::{
    admin::{self, ServiceView, Snapshot},
    store::Store,
    tables::{BackendSpec, Proto},
};

use crate::print::{emit, fields, host_port, or_dash, table, Output};

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Create a service.
    Add {
        /// The service's name: letters, digits, '.', '_' and '-'.
        name: String,
        /// The network whose containers reach the VIP and hold the backends.
        #[arg(long)]
        network: String,
        /// Virtual IP and port, outside the network's subnet: 198.19.200.1:80, or
        /// [2001:2:0:1200::1]:80 on a network with IPv6 [default: a VIP from the network's
        /// service range, with --port]
        #[arg(long, value_name = "IP:PORT", required_unless_present = "port")]
        vip: Option<SocketAddr>,
        /// The service port, for a VIP taken from the network's service range (no --vip).
        #[arg(long, conflicts_with = "vip", value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// The family of a VIP taken from the service range [default: IPv4 where the
        /// network has an IPv4 range]
        #[arg(long, value_enum, conflicts_with = "vip")]
        family: Option<FamilyArg>,
        /// The transport protocol balanced.
        #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
        proto: ProtoArg,
        /// A backend IP:PORT[@WEIGHT] ([IPv6]:PORT[@WEIGHT]), of the VIP's family, weight
        /// 1 by default (repeat); endpoints labelled overlay.service=NAME:PORT join as well.
        #[arg(long = "backend", value_name = "IP:PORT[@WEIGHT]")]
        backends: Vec<BackendSpec>,
    },
    /// List services with their live and configured backends.
    Ls {
        /// Only this network's services.
        #[arg(long)]
        network: Option<String>,
    },
    /// Show one service: VIP, each configured backend and why it is not live, the backends
    /// balanced now.
    Inspect {
        /// The service's name.
        name: String,
    },
    /// Remove a service.
    Rm {
        /// The service's name.
        name: String,
    },
    /// Replace a service's configured backends (none: only labelled endpoints remain).
    SetBackends {
        /// The service's name.
        name: String,
        /// A backend IP:PORT[@WEIGHT] (repeat); none removes every configured backend.
        #[arg(long = "backend", value_name = "IP:PORT[@WEIGHT]")]
        backends: Vec<BackendSpec>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

impl From<ProtoArg> for Proto {
    fn from(p: ProtoArg) -> Self {
        match p {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
        }
    }
}

pub async fn run(
    store: &Store,
    socket: &std::path::Path,
    output: Output,
    cmd: ServiceCmd,
) -> anyhow::Result<()> {
    // Services this host's daemon refused (no room in its tables), when it answers.
    let local = || -> Vec<String> {
        Client::new(socket)
            .status()
            .map(|s| s.rejected)
            .unwrap_or_default()
    };
    match cmd {
        ServiceCmd::Add {
            name,
            network,
            vip,
            port,
            family,
            proto,
            backends,
        } => {
            match (vip, port) {
                (Some(vip), _) => {
                    let record = admin::service_record(network, vip, proto.into(), backends);
                    admin::add_service(store, &name, &record).await?;
                }
                (None, port) => {
                    let port =
                        port.ok_or_else(|| anyhow::anyhow!("give --vip IP:PORT, or --port PORT"))?;
                    let req = admin::AllocatedService {
                        network,
                        port,
                        proto: proto.into(),
                        backends,
                        family: family.map(|f| match f {
                            FamilyArg::Ipv4 => admin::Family::Ipv4,
                            FamilyArg::Ipv6 => admin::Family::Ipv6,
                        }),
                    };
                    admin::add_allocated(store, &name, req).await?;
                }
            }
            let view = Snapshot::load(store).await?.service(&name, &local())?;
            emit(output, &view, |s| {
                println!("service {name} created");
                inspect_table(s);
            });
        }
        ServiceCmd::Ls { network } => {
            let views = Snapshot::load(store)
                .await?
                .services(network.as_deref(), &local())?;
            emit(output, &views, |v| ls_table(v));
        }
        ServiceCmd::Inspect { name } => {
            let view = Snapshot::load(store).await?.service(&name, &local())?;
            emit(output, &view, inspect_table);
        }
        ServiceCmd::Rm { name } => {
            let view = Snapshot::load(store).await?.service(&name, &[]).ok();
            admin::remove_service(store, &name).await?;
            match view {
                Some(view) => emit(output, &view, |s| println!("service {} removed", s.name)),
                None => emit(output, &crate::network::Unreadable::of(&name), |_| {
                    println!("service {name} removed (its record was not readable)")
                }),
            }
        }
        ServiceCmd::SetBackends { name, backends } => {
            admin::set_backends(store, &name, backends).await?;
            let view = Snapshot::load(store).await?.service(&name, &local())?;
            emit(output, &view, |s| {
                println!(
                    "service {name}: {} configured backend(s)",
                    s.configured.len()
                );
                inspect_table(s);
            });
        }
    }
    Ok(())
}

fn vip(s: &ServiceView) -> String {
    format!("{}/{}", host_port(s.vip, s.port), s.proto)
}

fn vip_source(s: &ServiceView) -> String {
    let from = if s.allocated {
        " (from the service range)"
    } else {
        ""
    };
    format!("{}{from}", vip(s))
}

fn state(s: &ServiceView) -> String {
    match &s.rejected {
        Some(why) => format!("rejected: {why}"),
        None => "ok".into(),
    }
}

fn ls_table(views: &[ServiceView]) {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|s| {
            let live: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{}@{}", host_port(b.ip, b.port), b.weight))
                .collect();
            let down: Vec<String> = s
                .configured
                .iter()
                .filter(|b| !b.live)
                .map(|b| host_port(b.ip, b.port))
                .collect();
            vec![
                s.name.clone(),
                s.network.clone(),
                vip(s),
                or_dash((!live.is_empty()).then(|| live.join(","))),
                or_dash((!down.is_empty()).then(|| down.join(","))),
                state(s),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "NETWORK",
            "VIP",
            "LIVE BACKENDS",
            "NOT LIVE",
            "STATE",
        ],
        &rows,
    );
}

fn inspect_table(s: &ServiceView) {
    fields(&[
        ("name", s.name.clone()),
        ("network", s.network.clone()),
        ("vip", vip_source(s)),
        ("state", state(s)),
        ("balanced over", s.backends.len().to_string()),
    ]);
    let mut rows: Vec<Vec<String>> = s
        .configured
        .iter()
        .map(|b| {
            vec![
                host_port(b.ip, b.port),
                b.weight.to_string(),
                "configured".into(),
                match &b.reason {
                    None => "live".into(),
                    Some(why) => format!("not live: {why}"),
                },
            ]
        })
        .collect();
    rows.extend(
        s.backends
            .iter()
            .filter(|b| {
                !s.configured
                    .iter()
                    .any(|c| c.ip == b.ip && c.port == b.port)
            })
            .map(|b| {
                vec![
                    host_port(b.ip, b.port),
                    b.weight.to_string(),
                    "label".into(),
                    "live".into(),
                ]
            }),
    );
    if !rows.is_empty() {
        println!();
        table(&["BACKEND", "WEIGHT", "FROM", "STATE"], &rows);
    }
}
