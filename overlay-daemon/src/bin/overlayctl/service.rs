//! `overlayctl service`: services in etcd, and what the daemons made of them.

use std::net::SocketAddr;

use overlay_api::Client;
use overlay_daemon::{admin, store::ClusterView, store::Store};
use serde_json::json;

use super::{print_json, table, EtcdArgs, Output, ServiceCmd};

pub(super) async fn service(
    etcd: EtcdArgs,
    socket: &std::path::Path,
    output: Output,
    cmd: ServiceCmd,
) -> anyhow::Result<()> {
    let store = Store::connect(&etcd.config()).await?;
    match cmd {
        ServiceCmd::Add {
            name,
            network,
            vip,
            proto,
            backends,
        } => {
            let record = admin::service_record(network, vip, proto, backends);
            admin::add_service(&store, &name, &record).await?;
            if output == Output::Json {
                print_json(
                    &json!({"name": name, "network": record.network, "vip": record.vip,
                    "port": record.port, "proto": record.proto, "backends": record.backends}),
                );
            } else {
                println!(
                    "service {name} created: {}/{} in {} with {} configured backend(s)",
                    SocketAddr::new(record.vip, record.port),
                    record.proto,
                    record.network,
                    record.backends.len()
                );
            }
            Ok(())
        }
        ServiceCmd::Ls { network } => {
            // The same view the daemons build: live backends are those whose endpoint runs.
            let (kvs, _) = store.list(store.layout.root()).await?;
            let mut view = ClusterView::new(store.layout.clone());
            view.reset(kvs);
            let tables = view.tables();
            // Refused cluster-wide (bad record), or by this node's datapath (no room), when
            // its daemon answers.
            let local: Vec<String> = Client::new(socket)
                .status()
                .map(|s| s.rejected)
                .unwrap_or_default();
            let why = |name: &str| -> Option<String> {
                let subject = format!("service {name:?}: ");
                tables
                    .rejected
                    .iter()
                    .map(|r| r.to_string())
                    .chain(local.iter().cloned())
                    .find_map(|r| r.strip_prefix(&subject).map(str::to_owned))
            };
            let mut out = Vec::new();
            for (name, rec) in view.services() {
                if network.as_ref().is_some_and(|n| n != &rec.network) {
                    continue;
                }
                let live = tables
                    .services
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.backends.clone())
                    .unwrap_or_default();
                out.push(
                    json!({"name": name, "network": rec.network, "vip": rec.vip, "port": rec.port,
                    "proto": rec.proto, "configured": rec.backends, "backends": live,
                    "rejected": why(name)}),
                );
            }
            if output == Output::Json {
                print_json(&json!(out));
            } else {
                let rows: Vec<Vec<String>> = out
                    .iter()
                    .map(|s| {
                        let backends: Vec<String> = s["backends"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|b| {
                                format!(
                                    "{}@{}",
                                    host_port(b["ip"].as_str().unwrap_or(""), &b["port"]),
                                    b["weight"]
                                )
                            })
                            .collect();
                        vec![
                            s["name"].as_str().unwrap_or("").into(),
                            s["network"].as_str().unwrap_or("").into(),
                            format!(
                                "{}/{}",
                                host_port(s["vip"].as_str().unwrap_or(""), &s["port"]),
                                s["proto"].as_str().unwrap_or("")
                            ),
                            if backends.is_empty() {
                                "-".into()
                            } else {
                                backends.join(",")
                            },
                            match s["rejected"].as_str() {
                                Some(why) => format!("rejected: {why}"),
                                None => "ok".into(),
                            },
                        ]
                    })
                    .collect();
                table(&["NAME", "NETWORK", "VIP", "LIVE BACKENDS", "STATE"], &rows);
            }
            Ok(())
        }
        ServiceCmd::Rm { name } => {
            admin::remove_service(&store, &name).await?;
            if output == Output::Table {
                println!("service {name} removed");
            }
            Ok(())
        }
        ServiceCmd::SetBackends { name, backends } => {
            let record = admin::set_backends(&store, &name, backends).await?;
            if output == Output::Table {
                println!(
                    "service {name}: {} configured backend(s)",
                    record.backends.len()
                );
            }
            Ok(())
        }
    }
}

/// `IP:PORT`, with an IPv6 address in brackets.
fn host_port(ip: &str, port: &serde_json::Value) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}
