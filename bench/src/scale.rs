//! Control-plane scale: a real etcd and N overlayd processes in control-plane-only mode (they
//! register, list, watch and reconcile exactly as on a real host, into in-memory tables) with
//! M endpoints in the cluster. Measures full-sync time of a joining node, endpoint-add
//! propagation to every node, and the daemons' memory and CPU, as N and M grow.

use std::{
    fmt::Write as _,
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
        records::{self, EndpointRecord, NetworkRecord, RECORD_VERSION},
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

enum EtcdServer {
    Single(Etcd),
    Cluster(EtcdCluster, Option<Pki>),
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
    pub full_sync_rss_mb: f64,
    pub full_sync_peak_mb: f64,
    /// Endpoint add: etcd write to applied, over every node and sample, ms.
    pub prop_p50_ms: f64,
    pub prop_p99_ms: f64,
    pub prop_max_ms: f64,
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

struct Sim {
    /// Dropped before the namespace it runs in.
    etcd: EtcdServer,
    ns: Netns,
    dir: PathBuf,
    daemons: Vec<(String, ChildGuard)>,
}

impl Sim {
    fn new(setup: &EtcdSetup) -> Result<Self> {
        let id = unique_id();
        let ns = Netns::create(&format!("ovb-cp-{id}"));
        let dir = std::env::temp_dir().join(format!("ovb-cp-{id}"));
        if setup.members <= 1 && !setup.secure {
            ns.ip(&["addr", "add", &format!("{ETCD_IP}/32"), "dev", "lo"]);
            let etcd = EtcdServer::Single(Etcd::start(&ns, ETCD_IP));
            return Ok(Self {
                etcd,
                ns,
                dir,
                daemons: Vec::new(),
            });
        }
        if setup.down * 2 >= setup.members {
            bail!(
                "{} of {} etcd members down leaves no quorum",
                setup.down,
                setup.members
            );
        }
        let ips: Vec<Ipv4Addr> = (0..setup.members)
            .map(|i| Ipv4Addr::new(198, 19, 255, 250 - i as u8))
            .collect();
        for ip in &ips {
            ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        }
        let pki = setup.secure.then(|| {
            Pki::new(
                &dir.join("pki"),
                &ips,
                &["root", OVERLAY_USER, STRANGER_USER],
            )
        });
        let namespaces = ips.iter().map(|_| Netns::open(ns.name())).collect();
        let mut cluster =
            EtcdCluster::start_with(namespaces, &ips, pki.as_ref().map(EtcdTls::from_pki));
        if pki.is_some() {
            cluster.enable_auth("/overlay/");
        }
        for m in &mut cluster.members[..setup.down] {
            m.kill();
        }
        Ok(Self {
            etcd: EtcdServer::Cluster(cluster, pki),
            ns,
            dir,
            daemons: Vec::new(),
        })
    }

    fn etcd_config(&self) -> EtcdConfig {
        match &self.etcd {
            EtcdServer::Single(e) => EtcdConfig {
                endpoints: vec![e.endpoint()],
                ..EtcdConfig::local("/overlay")
            },
            EtcdServer::Cluster(c, pki) => {
                let me = pki.as_ref().map(|p| p.client(OVERLAY_USER));
                EtcdConfig {
                    endpoints: c.endpoints().split(',').map(str::to_owned).collect(),
                    cacert: pki.as_ref().map(Pki::ca),
                    cert: me.as_ref().map(|c| c.cert.clone()),
                    key: me.map(|c| c.key),
                    ..EtcdConfig::local("/overlay")
                }
            }
        }
    }

    /// The daemons' etcd flags for `etcd_config`.
    fn etcd_args(&self) -> Vec<String> {
        let cfg = self.etcd_config();
        let mut args = vec!["--etcd-endpoints".to_owned(), cfg.endpoints.join(",")];
        for (flag, path) in [
            ("--etcd-cacert", cfg.cacert),
            ("--etcd-cert", cfg.cert),
            ("--etcd-key", cfg.key),
        ] {
            if let Some(p) = path {
                args.extend([flag.to_owned(), p.display().to_string()]);
            }
        }
        args
    }

    /// Lines of the daemons' logs about trouble with etcd (none expected, also with
    /// members down).
    fn etcd_trouble(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, _) in &self.daemons {
            let log = std::fs::read_to_string(self.dir.join(name).join("overlayd.log"))
                .unwrap_or_default();
            lines.extend(
                log.lines()
                    .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("etcd"))
                    .map(|l| format!("{name}: {l}")),
            );
        }
        lines
    }

    fn status_path(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("status.json")
    }

    fn spawn(&self, index: usize) -> Result<(String, ChildGuard)> {
        self.spawn_with(index, &[])
    }

    fn spawn_with(&self, index: usize, extra: &[String]) -> Result<(String, ChildGuard)> {
        let name = format!("sim-{index:03}");
        let run_dir = self.dir.join(&name);
        std::fs::create_dir_all(&run_dir)?;
        let log = File::create(run_dir.join("overlayd.log"))?;
        let vtep = Ipv4Addr::new(198, 18, (index / 250) as u8, (index % 250 + 1) as u8);
        let child = self
            .ns
            .command(overlayd_bin().to_str().context("overlayd path")?)
            .args(["--control-plane-only", "--node-name", &name])
            .args(["--vtep-ip", &vtep.to_string()])
            .arg("--run-dir")
            .arg(&run_dir)
            .args(self.etcd_args())
            .args(["--lease-ttl", "60", "--detach-on-exit"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting overlayd")?;
        Ok((name.clone(), ChildGuard::new(child, name)))
    }

    fn status(&self, node: &str) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.status_path(node)).ok()?).ok()
    }

    /// Waits until every named node's status satisfies `check`; returns their statuses.
    fn wait_all(
        &mut self,
        names: &[String],
        what: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        let mut done: Vec<Option<serde_json::Value>> = vec![None; names.len()];
        loop {
            for (i, name) in names.iter().enumerate() {
                if done[i].is_none() {
                    done[i] = self.status(name).filter(|s| check(s));
                }
            }
            if done.iter().all(Option::is_some) {
                return Ok(done.into_iter().flatten().collect());
            }
            for (name, child) in &mut self.daemons {
                if !child.is_running() {
                    let log = std::fs::read_to_string(self.dir.join(&*name).join("overlayd.log"))
                        .unwrap_or_default();
                    bail!("overlayd {name} exited while waiting for {what}:\n{log}");
                }
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = names
                    .iter()
                    .zip(&done)
                    .filter(|(_, d)| d.is_none())
                    .map(|(n, _)| n.as_str())
                    .take(5)
                    .collect();
                bail!("{what}: not reached within {timeout:?} by {missing:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `f` with an etcd client inside the namespace.
    fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime, &Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let cfg = self.etcd_config();
        self.ns.enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let store = rt.block_on(Store::connect(&cfg))?;
            f(&rt, &store)
        })
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        for (_, child) in &mut self.daemons {
            child.stop(Signal::SIGKILL, Duration::from_secs(2));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn endpoint_ip(i: usize) -> Ipv4Addr {
    // Skip the network address and the gateway (.0.1).
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 2));
    Ipv4Addr::from(base + i as u32)
}

fn endpoint_kv(store: &Store, i: usize, node: &str) -> (String, Vec<u8>) {
    let ip = endpoint_ip(i);
    let key = store.layout.key(&Key::Endpoint {
        network: NETWORK.into(),
        ip: std::net::IpAddr::V4(ip),
    });
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
    (key, records::encode(&record))
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
) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for &n in node_counts {
        let mut sim = Sim::new(etcd)?;
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
                    .map(|i| endpoint_kv(store, i, &names_c[i % names_c.len()]))
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
                "bulk load applied",
                Duration::from_secs(900),
                revision_at_least(rev),
            )?;
            let load_s = start.elapsed().as_secs_f64();
            eprintln!("scale: N={n} M={m}: applied on every node after {load_s:.1} s");

            // Propagation of single adds, one at a time.
            let pids: Vec<u32> = sim.daemons.iter().map(|(_, c)| c.pid()).collect();
            let cpu_before: f64 = pids.iter().map(|p| proc_usage(*p).1).sum();
            let mut latencies = Vec::new();
            for _ in 0..samples {
                let index = 120_000 + probe;
                probe += 1;
                let owner = names[probe % names.len()].clone();
                // Timed from just before the put: not the client's connection set-up.
                let (rev, t0) = sim.with_store(move |rt, store| {
                    let (k, v) = endpoint_kv(store, index, &owner);
                    let t0 = unix_us();
                    Ok((rt.block_on(store.put(&k, v, None))?, t0))
                })?;
                let statuses = sim.wait_all(
                    &names,
                    "endpoint add applied",
                    Duration::from_secs(60),
                    revision_at_least(rev),
                )?;
                for s in statuses {
                    let at = s["applied_at_us"].as_u64().unwrap_or(0);
                    latencies.push(at.saturating_sub(t0) as f64 / 1e3);
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
                "joining node left",
                Duration::from_secs(300),
                move |s| s["vteps"].as_u64() == Some(peers),
            )?;

            let cell = Cell {
                nodes: n,
                endpoints: m,
                load_s,
                full_sync_s,
                full_sync_rss_mb: late_rss,
                full_sync_peak_mb: late_peak,
                prop_p50_ms: median(&latencies),
                prop_p99_ms: percentile(&latencies, 99.0),
                prop_max_ms: latencies.iter().copied().fold(0.0, f64::max),
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

pub fn markdown(cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Control-plane scale\n");
    let _ = writeln!(
        s,
        "A real etcd and N `overlayd --control-plane-only` processes on this machine (they register, \
         list, watch and reconcile as on a real host; the tables go to memory instead of BPF maps), \
         with M endpoints in the cluster spread over the nodes. Propagation: an endpoint written to \
         etcd until every node has applied it (from each node's own timestamp), over every node and \
         sample. Full sync: a node joining the loaded cluster, from process start to complete tables; \
         its RSS half a second later and its peak RSS, and the time it then takes to serve `GET /metrics` \
         (20 scrapes, one connection each, connect to last byte). \
         CPU: all daemons' CPU time while the propagation samples ran, per change and per node. All N \
         daemons and etcd share the machine's cores.\n"
    );
    let _ = writeln!(
        s,
        "| nodes | endpoints | propagation p50 (ms) | p99 (ms) | max (ms) | full sync (s) | joiner RSS / peak (MB) | RSS median / max (MB) | CPU per change per node (ms) | bulk load applied everywhere (s) | /metrics p50 / max (ms) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for c in cells {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.3} | {:.1} | {:.2} / {:.2} |",
            c.nodes,
            c.endpoints,
            c.prop_p50_ms,
            c.prop_p99_ms,
            c.prop_max_ms,
            c.full_sync_s,
            c.full_sync_rss_mb,
            c.full_sync_peak_mb,
            c.rss_median_mb,
            c.rss_max_mb,
            c.cpu_ms_per_change,
            c.load_s,
            c.scrape_p50_ms,
            c.scrape_max_ms
        );
    }
    let _ = writeln!(
        s,
        "\nTargets: propagation p99 ≤ 100 ms at 100 nodes; full sync of 100k endpoints ≤ 2 s; RSS ≤ 50 MB \
         at 100k endpoints; /metrics ≤ 50 ms at 100k endpoints.\n\nProduced by `cargo xtask bench --scenario scale`."
    );
    s
}

pub fn json(cells: &[Cell]) -> String {
    let rows: Vec<serde_json::Value> = cells
        .iter()
        .map(|c| {
            serde_json::json!({
                "nodes": c.nodes, "endpoints": c.endpoints, "load_s": c.load_s,
                "full_sync_s": c.full_sync_s, "full_sync_rss_mb": c.full_sync_rss_mb, "full_sync_peak_mb": c.full_sync_peak_mb,
                "prop_p50_ms": c.prop_p50_ms, "prop_p99_ms": c.prop_p99_ms,
                "prop_max_ms": c.prop_max_ms, "rss_median_mb": c.rss_median_mb,
                "rss_max_mb": c.rss_max_mb, "cpu_ms_per_change": c.cpu_ms_per_change,
                "samples": c.samples, "scrape_p50_ms": c.scrape_p50_ms,
                "scrape_max_ms": c.scrape_max_ms, "scrape_bytes": c.scrape_bytes,
            })
        })
        .collect();
    serde_json::to_string_pretty(&rows).unwrap_or_default()
}
