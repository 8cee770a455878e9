//! Control-plane scale: a real etcd and N overlayd processes in control-plane-only mode (they
//! register, list, watch and reconcile exactly as on a real host, into in-memory tables) with
//! M endpoints in the cluster. Measures full-sync time of a joining node, endpoint-add
//! propagation to every node, and the daemons' memory and CPU, as N and M grow.

use std::{
    fs::File,
    net::Ipv4Addr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;
use overlay_daemon::{
    store::{
        keys::Key,
        records::{self, EndpointInfoRecord, EndpointRecord, NetworkRecord, RECORD_VERSION},
        EtcdConfig, Store,
    },
    tables::MacAddr,
};
use overlay_tests::{
    etcd::{EtcdCluster, EtcdTls, OVERLAY_USER, STRANGER_USER},
    netns::unique_id,
    pki::Pki,
    topology::overlayd_bin,
    ChildGuard, Etcd, Netns,
};

use crate::report::{median, percentile};

mod report;
mod sim;
pub use report::{json, markdown};
use sim::{Sim, Status};

const NETWORK: &str = "scale";
const VNI: u32 = 4242;
/// Room for 100k endpoints plus the probes.
const SUBNET: &str = "198.18.0.0/15";
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);

/// The etcd the daemons use: one member, or a cluster (with members down, with TLS and
/// roles), to show the control plane works the same against what operators run.
#[derive(Clone, Debug)]
pub struct EtcdSetup {
    pub members: usize,
    pub down: usize,
    pub secure: bool,
}

/// One cell of the grid.
#[derive(Clone, Debug)]
pub struct Cell {
    pub nodes: usize,
    pub endpoints: usize,
    /// Time for all N nodes to apply the bulk load of endpoints, seconds.
    pub load_s: f64,
    /// Joining node: process start to tables complete, seconds.
    pub full_sync_s: f64,
    /// Joining node: process start to every name in its DNS zone, seconds (NaN: no DNS).
    pub name_sync_s: f64,
    pub full_sync_rss_mb: f64,
    pub full_sync_peak_mb: f64,
    /// Endpoint add: etcd write to applied, over every node and sample, ms.
    pub prop_p50_ms: f64,
    pub prop_p99_ms: f64,
    pub prop_max_ms: f64,
    /// The same adds (each endpoint named) until every node's DNS answers the name, ms.
    pub name_p50_ms: f64,
    pub name_p99_ms: f64,
    pub name_max_ms: f64,
    pub rss_median_mb: f64,
    pub rss_max_mb: f64,
    /// CPU of all daemons per endpoint change, divided by N: ms per node per change.
    pub cpu_ms_per_change: f64,
    /// Propagation samples (each measured on every node).
    pub samples: usize,
    /// The joined node's `GET /metrics`, request to last byte: median and max (ms), and the
    /// body's size (bytes).
    pub scrape_p50_ms: f64,
    pub scrape_max_ms: f64,
    pub scrape_bytes: usize,
}

fn endpoint_ip(i: usize) -> Ipv4Addr {
    // Skip the network address and the gateway (.0.1).
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 2));
    Ipv4Addr::from(base + i as u32)
}

/// An endpoint and (`named`) its name as podman names containers: written together.
fn endpoint_kvs(store: &Store, i: usize, node: &str, named: bool) -> Vec<(String, Vec<u8>)> {
    let ip = endpoint_ip(i);
    let key = |k| store.layout.key(&k);
    let endpoint = Key::Endpoint {
        network: NETWORK.into(),
        ip: std::net::IpAddr::V4(ip),
    };
    let info = Key::EndpointInfo {
        network: NETWORK.into(),
        ip: std::net::IpAddr::V4(ip),
    };
    let record = EndpointRecord {
        version: RECORD_VERSION,
        mac: MacAddr::from_ip(ip),
        node: node.into(),
        container_id: format!("sim-container-{i}"),
        attachment: overlay_api::Attachment::Veth {
            host_ifname: format!("ovl{i:08x}"),
        },
        ifname: "eth0".into(),
        services: Vec::new(),
    };
    let name = EndpointInfoRecord {
        version: RECORD_VERSION,
        container_id: record.container_id.clone(),
        pod: None,
        docker_endpoint: None,
        name: Some(format!("sim-{i}")),
        bandwidth: None,
    };
    let mut kvs = vec![(key(endpoint), records::encode(&record))];
    if named {
        kvs.push((key(info), records::encode(&name)));
    }
    kvs
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A `/proc/<pid>/status` field in MiB (VmRSS, VmHWM).
fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// (RSS in MiB, user+system CPU seconds) of a process.
fn proc_usage(pid: u32) -> (f64, f64) {
    let rss_mb = status_mb(pid, "VmRSS:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (rss_mb, (ticks(11) + ticks(12)) / hz)
}

/// A DNS status whose zone holds `want` names.
fn names_are(want: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |s| s["names"].as_u64() == Some(want)
}

fn revision_at_least(rev: i64) -> impl Fn(&serde_json::Value) -> bool {
    move |s| s["revision"].as_i64().unwrap_or(0) >= rev
}

/// Runs the grid: for every node count, a fresh etcd and N daemons, then the endpoint counts
/// in increasing order (each load adds to the previous one).
pub fn run(
    node_counts: &[usize],
    endpoint_counts: &[usize],
    samples: usize,
    etcd: &EtcdSetup,
    dns: bool,
) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for &n in node_counts {
        let mut sim = Sim::new(etcd, dns)?;
        let net = NetworkRecord {
            subnet6: None,
            gateway6: None,
            block_len6: None,
            service_range: None,
            service_range6: None,
            version: RECORD_VERSION,
            vni: VNI,
            subnet: Some(SUBNET.parse()?),
            block_len: 26,
            gateway: None,
            mtu: None,
        };
        sim.with_store(move |rt, store| {
            rt.block_on(store.create_network(NETWORK, VNI, records::encode(&net)))?;
            Ok(())
        })?;
        eprintln!("scale: starting {n} control-plane-only daemons");
        for i in 0..n {
            let d = sim.spawn(i)?;
            sim.daemons.push(d);
        }
        let names: Vec<String> = sim.daemons.iter().map(|(n, _)| n.clone()).collect();
        let peers = n as u64 - 1;
        sim.wait_all(
            &names,
            Status::Tables,
            "all nodes registered",
            Duration::from_secs(120),
            move |s| s["vteps"].as_u64() == Some(peers) && s["networks"].as_u64() == Some(1),
        )?;
        let mut loaded = 0;
        let mut probe = 0;
        for (step, &m) in endpoint_counts.iter().enumerate() {
            // Bulk load up to m endpoints, spread over the nodes.
            let (from, names_c) = (loaded, names.clone());
            let start = Instant::now();
            let rev = sim.with_store(move |rt, store| {
                let kvs = (from..m)
                    .flat_map(|i| endpoint_kvs(store, i, &names_c[i % names_c.len()], dns))
                    .collect();
                Ok(rt.block_on(store.put_many(kvs))?)
            })?;
            loaded = m;
            eprintln!(
                "scale: N={n} M={m}: loaded into etcd in {:.1?}",
                start.elapsed()
            );
            sim.wait_all(
                &names,
                Status::Tables,
                "bulk load applied",
                Duration::from_secs(900),
                revision_at_least(rev),
            )?;
            let load_s = start.elapsed().as_secs_f64();
            eprintln!("scale: N={n} M={m}: applied on every node after {load_s:.1} s");
            let want = (m + probe) as u64;
            if dns {
                sim.wait_all(
                    &names,
                    Status::Dns,
                    "bulk load named",
                    Duration::from_secs(900),
                    names_are(want),
                )?;
            }

            // Propagation of single adds, one at a time.
            let pids: Vec<u32> = sim.daemons.iter().map(|(_, c)| c.pid()).collect();
            let cpu_before: f64 = pids.iter().map(|p| proc_usage(*p).1).sum();
            let (mut latencies, mut name_latencies) = (Vec::new(), Vec::new());
            for _ in 0..samples {
                let index = 120_000 + probe;
                probe += 1;
                let owner = names[probe % names.len()].clone();
                // Timed from just before the put: not the client's connection set-up.
                let (rev, t0) = sim.with_store(move |rt, store| {
                    let kvs = endpoint_kvs(store, index, &owner, dns);
                    let t0 = unix_us();
                    Ok((rt.block_on(store.put_many(kvs))?, t0))
                })?;
                let statuses = sim.wait_all(
                    &names,
                    Status::Tables,
                    "endpoint add applied",
                    Duration::from_secs(60),
                    revision_at_least(rev),
                )?;
                for s in statuses {
                    let at = s["applied_at_us"].as_u64().unwrap_or(0);
                    latencies.push(at.saturating_sub(t0) as f64 / 1e3);
                }
                // Every node's zone holds the new name (every endpoint is named).
                if !dns {
                    continue;
                }
                let want = (m + probe) as u64;
                let statuses = sim.wait_all(
                    &names,
                    Status::Dns,
                    "endpoint name served",
                    Duration::from_secs(60),
                    move |s| revision_at_least(rev)(s) && names_are(want)(s),
                )?;
                for s in statuses {
                    let at = s["applied_at_us"].as_u64().unwrap_or(0);
                    name_latencies.push(at.saturating_sub(t0) as f64 / 1e3);
                }
            }
            let cpu_after: f64 = pids.iter().map(|p| proc_usage(*p).1).sum();
            let rss: Vec<f64> = pids.iter().map(|p| proc_usage(*p).0).collect();

            // A node joining now: start to complete tables.
            let rev = sim.with_store(|rt, store| {
                let (_, rev) = rt.block_on(store.list("/overlay/v1/networks/"))?;
                Ok(rev)
            })?;
            let t0 = unix_us();
            // Each step's joiner is a new node with a run directory of its own (no status
            // left from an earlier one), watched for crashes like the others.
            let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], 9462));
            let joiner = sim.spawn_with(
                900 + n + step,
                &["--metrics-listen".into(), metrics.to_string()],
            )?;
            let late_name = joiner.0.clone();
            sim.daemons.push(joiner);
            let want = (m + probe) as u64;
            let late_status = sim.wait_all(
                std::slice::from_ref(&late_name),
                Status::Tables,
                "joining node synced",
                Duration::from_secs(300),
                move |s| {
                    s["revision"].as_i64().unwrap_or(0) >= rev
                        && s["endpoints"].as_u64() == Some(want)
                },
            )?;
            let full_sync_s = late_status[0]["applied_at_us"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(t0) as f64
                / 1e6;
            // Its zone too, before its memory is read: start to every name served.
            let name_sync_s = match dns {
                true => {
                    let late_dns = sim.wait_all(
                        std::slice::from_ref(&late_name),
                        Status::Dns,
                        "joining node named",
                        Duration::from_secs(300),
                        names_are(want),
                    )?;
                    let at = late_dns[0]["applied_at_us"].as_u64().unwrap_or(0);
                    at.saturating_sub(t0) as f64 / 1e6
                }
                false => f64::NAN,
            };
            // Steady state after the sync (the pass's temporaries released), and the peak.
            std::thread::sleep(Duration::from_millis(500));
            let (scrape_p50_ms, scrape_max_ms, scrape_bytes) =
                sim.ns.enter(move || crate::scrape::time(metrics, 20))?;
            let (_, mut late) = sim.daemons.pop().expect("the joiner");
            let (late_rss, _) = proc_usage(late.pid());
            let late_peak = status_mb(late.pid(), "VmHWM:");
            late.stop(Signal::SIGTERM, Duration::from_secs(10));
            // Its departure is a structural change for everyone: let it settle.
            let peers = n as u64 - 1;
            sim.wait_all(
                &names,
                Status::Tables,
                "joining node left",
                Duration::from_secs(300),
                move |s| s["vteps"].as_u64() == Some(peers),
            )?;

            let cell = Cell {
                nodes: n,
                endpoints: m,
                load_s,
                full_sync_s,
                name_sync_s,
                full_sync_rss_mb: late_rss,
                full_sync_peak_mb: late_peak,
                prop_p50_ms: median(&latencies),
                prop_p99_ms: percentile(&latencies, 99.0),
                prop_max_ms: latencies.iter().copied().fold(0.0, f64::max),
                name_p50_ms: median(&name_latencies),
                name_p99_ms: percentile(&name_latencies, 99.0),
                name_max_ms: match name_latencies.is_empty() {
                    true => f64::NAN,
                    false => name_latencies.iter().copied().fold(0.0, f64::max),
                },
                rss_median_mb: median(&rss),
                rss_max_mb: rss.iter().copied().fold(0.0, f64::max),
                cpu_ms_per_change: (cpu_after - cpu_before) * 1e3 / samples as f64 / n as f64,
                samples,
                scrape_p50_ms,
                scrape_max_ms,
                scrape_bytes,
            };
            eprintln!("scale: {cell:?}");
            cells.push(cell);
        }
        let trouble = sim.etcd_trouble();
        if !trouble.is_empty() {
            bail!(
                "daemons logged etcd trouble ({etcd:?}):\n{}",
                trouble.join("\n")
            );
        }
        drop(sim);
    }
    Ok(cells)
}
