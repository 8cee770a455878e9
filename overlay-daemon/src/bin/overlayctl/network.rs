//! `overlayctl network`.

use std::net::IpAddr;

use clap::Subcommand;
use ipnet::IpNet;
use overlay_daemon::{
    admin::{self, NetworkView, Snapshot},
    store::{
        records::{NetworkRecord, RECORD_VERSION},
        Store,
    },
};

use crate::print::{both, emit, fields, table, Output};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a network.
    Create {
        /// The network's name: letters, digits, '.', '_' and '-'.
        name: String,
        /// Its VXLAN network identifier, unique in the cluster.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=0xff_ffff))]
        vni: u32,
        /// The network's subnet: IPv4, IPv6 (an IPv6-only network), or one of each (a
        /// dual-stack network); at most one per family.
        #[arg(long, required = true, value_name = "CIDR")]
        subnet: Vec<IpNet>,
        /// MTU for containers (at most the underlay's minus 50) [default: each node's
        /// maximum]
        #[arg(long)]
        mtu: Option<u32>,
        /// Prefix length of the IPv4 address blocks nodes claim.
        #[arg(long, default_value_t = 26)]
        block_len: u8,
        /// Prefix length of the IPv6 address blocks nodes claim [default: 96]
        #[arg(long)]
        block_len6: Option<u8>,
        /// Gateway address per family [default: each subnet's first address]
        #[arg(long, value_name = "IP")]
        gateway: Vec<IpAddr>,
        /// Where services without --vip get their VIP, per family (outside the subnet).
        #[arg(long, value_name = "CIDR")]
        service_range: Vec<IpNet>,
    },
    /// Change a network: its service ranges (the rest is fixed while it has endpoints).
    Set {
        /// The network's name.
        name: String,
        /// Where services without --vip get their VIP, per family (outside the subnet).
        #[arg(long, value_name = "CIDR", required = true)]
        service_range: Vec<IpNet>,
    },
    /// List networks.
    Ls,
    /// Show one network: subnets, gateways, MTU, blocks and their nodes, endpoints.
    Inspect {
        /// The network's name.
        name: String,
    },
    /// Remove a network (refused while it has endpoints).
    Rm {
        /// The network's name.
        name: String,
    },
}

pub async fn run(store: &Store, output: Output, cmd: NetworkCmd) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::Create {
            name,
            vni,
            subnet,
            mtu,
            block_len,
            block_len6,
            gateway,
            service_range,
        } => {
            let (subnet, subnet6) = admin::one_per_family("--subnet", &subnet)?;
            let (gateway, gateway6) = admin::one_per_family("--gateway", &gateway)?;
            let (service_range, service_range6) =
                admin::one_per_family("--service-range", &service_range)?;
            let record = NetworkRecord {
                version: RECORD_VERSION,
                vni,
                subnet: subnet.map(|s| s.trunc()),
                block_len,
                gateway,
                mtu,
                subnet6: subnet6.map(|s| s.trunc()),
                gateway6,
                block_len6,
                service_range: service_range.map(|r| r.trunc()),
                service_range6: service_range6.map(|r| r.trunc()),
            };
            admin::create_network(store, &name, &record).await?;
            let view = Snapshot::load(store).await?.network(&name)?;
            emit(output, &view, |n| {
                println!("network {name} created");
                inspect_table(n);
            });
        }
        NetworkCmd::Set {
            name,
            service_range,
        } => {
            admin::set_service_ranges(store, &name, &service_range).await?;
            let view = Snapshot::load(store).await?.network(&name)?;
            emit(output, &view, |n| {
                println!("network {name} changed");
                inspect_table(n);
            });
        }
        NetworkCmd::Ls => {
            let views = Snapshot::load(store).await?.networks();
            emit(output, &views, |views| ls_table(views));
        }
        NetworkCmd::Inspect { name } => {
            let view = Snapshot::load(store).await?.network(&name)?;
            emit(output, &view, inspect_table);
        }
        NetworkCmd::Rm { name } => {
            // What it was (a record the daemons skip as unreadable has no view).
            let view = Snapshot::load(store).await?.network(&name).ok();
            admin::remove_network(store, &name).await?;
            match view {
                Some(mut view) => {
                    view.blocks.clear(); // they went with it
                    emit(output, &view, |n| println!("network {} removed", n.name));
                }
                None => emit(output, &Unreadable::of(&name), |_| {
                    println!("network {name} removed (its record was not readable)")
                }),
            }
        }
    }
    Ok(())
}

/// What `rm` prints of an object whose record was not readable.
#[derive(serde::Serialize)]
pub struct Unreadable<'a> {
    pub name: &'a str,
    /// Always true: the record did not decode.
    pub unreadable: bool,
}

impl<'a> Unreadable<'a> {
    pub fn of(name: &'a str) -> Self {
        Self {
            name,
            unreadable: true,
        }
    }
}

/// No MTU set: each node gives its containers its maximum (underlay - 50).
fn mtu(n: &NetworkView) -> String {
    n.mtu.map_or_else(|| "node max".into(), |m| m.to_string())
}

fn ls_table(views: &[NetworkView]) {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.vni.to_string(),
                both(n.subnet, n.subnet6),
                both(n.gateway, n.gateway6),
                mtu(n),
                both(
                    n.block_len.map(|b| format!("/{b}")),
                    n.block_len6.map(|b| format!("/{b}")),
                ),
                n.endpoints.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "VNI",
            "SUBNET",
            "GATEWAY",
            "MTU",
            "BLOCKS",
            "ENDPOINTS",
        ],
        &rows,
    );
}

fn inspect_table(n: &NetworkView) {
    fields(&[
        ("name", n.name.clone()),
        ("vni", n.vni.to_string()),
        ("subnet", both(n.subnet, n.subnet6)),
        ("gateway", both(n.gateway, n.gateway6)),
        ("mtu", mtu(n)),
        (
            "block length",
            both(
                n.block_len.map(|b| format!("/{b}")),
                n.block_len6.map(|b| format!("/{b}")),
            ),
        ),
        ("service range", both(n.service_range, n.service_range6)),
        ("endpoints", n.endpoints.to_string()),
    ]);
    if !n.blocks.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = n
            .blocks
            .iter()
            .map(|b| vec![b.block.to_string(), b.node.clone()])
            .collect();
        table(&["BLOCK", "NODE"], &rows);
    }
}
