//! `overlayctl status`, `stats`, `monitor`: one daemon, through its API socket.

use std::path::Path;

use anyhow::Context as _;
use overlay_api::{Client, EventType, MonitorRequest};
use overlay_daemon::cli::Counters;

use crate::print::{emit, table, Output};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MonitorType {
    /// Dropped packets, with the reason.
    Drop,
    /// Forwarded packets (sampled), with the decision: local, encap to a VTEP, decap, ARP
    /// answered, service backend chosen.
    Trace,
}

fn unreachable(socket: &Path) -> String {
    let run_dir = socket
        .parent()
        .map_or_else(|| ".".into(), |p| p.display().to_string());
    format!("is overlayd running with --run-dir {run_dir}?")
}

pub fn status(socket: &Path, output: Output) -> anyhow::Result<()> {
    let status = Client::new(socket)
        .status()
        .with_context(|| unreachable(socket))?;
    let mut v = serde_json::to_value(&status)?;
    // Lease ids in hex everywhere, as `node ls` and etcdctl print them.
    v["lease"] = match status.lease {
        Some(l) => format!("{l:x}").into(),
        None => serde_json::Value::Null,
    };
    emit(output, &v, |v| {
        let mut rows: Vec<Vec<String>> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "rejected")
            .map(|(k, v)| vec![k.clone(), v.to_string().trim_matches('"').to_owned()])
            .collect();
        // One row per thing this node left out, with why.
        for r in v["rejected"].as_array().into_iter().flatten() {
            rows.push(vec!["rejected".into(), r.as_str().unwrap_or("").to_owned()]);
        }
        table(&["FIELD", "VALUE"], &rows);
    });
    Ok(())
}

pub fn stats(socket: &Path, output: Output) -> anyhow::Result<()> {
    let stats = Client::new(socket)
        .stats()
        .with_context(|| unreachable(socket))?;
    let counters = Counters::from(stats);
    emit(output, &counters, |c| {
        table(&["COUNTER", "PACKETS", "BYTES"], &c.rows())
    });
    Ok(())
}

pub fn monitor(
    socket: &Path,
    output: Output,
    kinds: Vec<MonitorType>,
    sample: u32,
) -> anyhow::Result<()> {
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
    if output == Output::Yaml {
        anyhow::bail!("monitor streams one event per line: use -o table or -o json");
    }
    let req = MonitorRequest { events, sample };
    overlay_daemon::monitor::client::watch(socket, req, output == Output::Json)
        .with_context(|| unreachable(socket))
}
