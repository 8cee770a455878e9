//! `overlayctl node` and `overlayctl endpoint`: what the cluster registered.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use overlay_daemon::{
    admin::{EndpointFilter, EndpointView, NodeView, Snapshot},
    store::Store,
};

use crate::print::{both, emit, fields, or_dash, table, Output};

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List nodes with their VTEP and lease.
    Ls,
    /// Show one node: VTEP, lease, release, MTU, endpoints.
    Inspect {
        /// The node's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// List endpoints.
    Ls {
        /// Only this network's endpoints.
        #[arg(long)]
        network: Option<String>,
        /// Only this node's endpoints.
        #[arg(long)]
        node: Option<String>,
    },
    /// Show one endpoint.
    Inspect {
        /// Its address (IPv4 or IPv6), container id, CONTAINER/IFNAME, or Docker endpoint id.
        id: String,
        /// Look only in this network (when an id is in several).
        #[arg(long)]
        network: Option<String>,
    },
}

pub async fn node(store: &Store, output: Output, cmd: NodeCmd) -> anyhow::Result<()> {
    let snapshot = Snapshot::load(store).await?;
    match cmd {
        NodeCmd::Ls => emit(output, &snapshot.nodes(), |nodes| {
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        vteps(n),
                        n.vtep_mac.clone(),
                        n.lease.clone(),
                        ttl(n),
                        release(n),
                        n.endpoints.to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "VTEP",
                    "VTEP MAC",
                    "LEASE",
                    "LEASE LEFT",
                    "RELEASE",
                    "ENDPOINTS",
                ],
                &rows,
            );
        }),
        NodeCmd::Inspect { name } => emit(output, &snapshot.node(&name)?, |n| {
            let ago = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs().saturating_sub(n.registered_at))
                .unwrap_or(0);
            fields(&[
                ("name", n.name.clone()),
                ("vtep", vteps(n)),
                ("vtep mac", n.vtep_mac.clone()),
                ("release", release(n)),
                ("registered", format!("{ago}s ago")),
                ("lease", format!("{} ({} left)", n.lease, ttl(n))),
                ("container mtu", or_dash(n.container_mtu)),
                ("endpoints", n.endpoints.to_string()),
            ]);
        }),
    }
    Ok(())
}

fn ttl(n: &NodeView) -> String {
    n.lease_ttl
        .map_or_else(|| "gone".into(), |t| format!("{t}s"))
}

/// Releases before 0.2 did not say.
fn release(n: &NodeView) -> String {
    n.release.clone().unwrap_or_else(|| "<0.2".into())
}

pub async fn endpoint(store: &Store, output: Output, cmd: EndpointCmd) -> anyhow::Result<()> {
    let snapshot = Snapshot::load(store).await?;
    match cmd {
        EndpointCmd::Ls { network, node } => {
            let views = snapshot.endpoints(&EndpointFilter { network, node })?;
            emit(output, &views, |v| ls_table(v));
        }
        EndpointCmd::Inspect { id, network } => {
            let view = snapshot.endpoint(&id, network.as_deref())?;
            emit(output, &view, |e| {
                fields(&[
                    ("network", e.network.clone()),
                    ("ip", both(e.ip, e.ip6)),
                    ("mac", e.mac.clone()),
                    ("node", e.node.clone()),
                    ("container", e.container_id.clone()),
                    ("docker endpoint", or_dash(e.docker_endpoint.clone())),
                    ("ifname", e.ifname.clone()),
                    (
                        "host ifname",
                        e.host_ifname
                            .clone()
                            .unwrap_or_else(|| "- (address reserved)".into()),
                    ),
                    ("pod", pod(e)),
                    (
                        "services",
                        or_dash((!e.services.is_empty()).then(|| e.services.join(","))),
                    ),
                    ("bandwidth", or_dash(e.bandwidth.map(|b| b.to_string()))),
                ]);
            });
        }
    }
    Ok(())
}

fn pod(e: &EndpointView) -> String {
    or_dash(
        e.pod
            .as_ref()
            .map(|p| format!("{}/{}", p.namespace, p.name)),
    )
}

/// Docker's endpoint id (12 characters, as Docker abbreviates ids) where Docker made it:
/// what `docker network inspect` lists by container.
fn container(e: &EndpointView) -> String {
    match &e.docker_endpoint {
        Some(id) => format!("docker:{}", &id[..id.len().min(12)]),
        None => e.container_id.clone(),
    }
}

fn ls_table(views: &[EndpointView]) {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|e| {
            vec![
                e.network.clone(),
                both(e.ip, e.ip6),
                e.mac.clone(),
                e.node.clone(),
                container(e),
                e.ifname.clone(),
                pod(e),
            ]
        })
        .collect();
    table(
        &["NETWORK", "IP", "MAC", "NODE", "CONTAINER", "IFNAME", "POD"],
        &rows,
    );
}

/// A node's VTEP addresses (one of each family at most), as the tables show them.
fn vteps(n: &NodeView) -> String {
    let addrs: Vec<String> = n
        .vtep_ip
        .map(|a| a.to_string())
        .into_iter()
        .chain(n.vtep_ip6.map(|a| a.to_string()))
        .collect();
    match addrs.is_empty() {
        true => "-".to_owned(),
        false => addrs.join(","),
    }
}
