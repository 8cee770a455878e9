//! Pod network setup cost: CNI ADD and DEL through overlay-cni (and overlayd, etcd, the
//! datapath) against the reference `bridge` + `host-local` plugins on the same host, both
//! exec'd the way a runtime does; and RunPodSandbox-to-ready through containerd's CRI with
//! each. Modes alternate every round; release builds (`cargo xtask bench` builds them).

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Barrier},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use overlay_tests::{
    containerd::{shipped_conflist, Containerd},
    cri::PodSpec,
    netns::unique_id,
    topology::overlayd_bin,
    Netns, Topology, TopologySpec,
};

use crate::report::{median, percentile};

const NETWORK: &str = "pods";
const VNI: u32 = 4300;
/// The bridges and their addresses (plugin calls, CRI pods): apart from each other, the
/// overlay's (198.19.0.0/16) and the underlay's.
const BRIDGES: [(&str, &str); 2] = [
    ("cnibench0", "198.18.64.0/20"),
    ("cnibench1", "198.18.80.0/20"),
];

/// Sequential ADDs (then DELs) per round and mode.
const SEQUENTIAL: usize = 40;
/// ADDs started together per round and mode.
const PARALLEL: usize = 20;
/// Pods run through the CRI per round and mode.
const PODS: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plugin {
    Overlay,
    Bridge,
}

impl Plugin {
    fn label(self) -> &'static str {
        match self {
            Plugin::Overlay => "overlay-cni",
            Plugin::Bridge => "bridge + host-local",
        }
    }
}

/// What a run measured, per plugin: milliseconds.
#[derive(Default)]
struct Figures {
    add: Vec<f64>,
    del: Vec<f64>,
    parallel_add: Vec<f64>,
    parallel_del: Vec<f64>,
    pod_ready: Vec<f64>,
    pod_removed: Vec<f64>,
}

/// The host both plugins run on, and how each is invoked there.
struct Bench {
    host: Netns,
    overlay_conf: String,
    bridge_conf: String,
    overlay_bin: PathBuf,
}

impl Bench {
    fn conf(&self, plugin: Plugin) -> (&Path, &str) {
        match plugin {
            Plugin::Overlay => (&self.overlay_bin, &self.overlay_conf),
            Plugin::Bridge => (Path::new("/usr/lib/cni/bridge"), &self.bridge_conf),
        }
    }

    /// One plugin call as a runtime makes it (a clean environment, the config on stdin, in
    /// the host's network namespace); the elapsed milliseconds.
    fn call(&self, plugin: Plugin, command: &str, id: &str, netns: &str) -> Result<f64> {
        let (bin, conf) = self.conf(plugin);
        let start = Instant::now();
        let mut child = self
            .host
            .command(bin.to_str().context("plugin path")?)
            .env_clear()
            .env("CNI_PATH", "/usr/lib/cni")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{}", bin.display()))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(conf.as_bytes())?;
        let out = child.wait_with_output()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!(
                "{} {command} {id}: {}{}",
                plugin.label(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(ms)
    }

    /// `n` container namespaces (made before the clock starts).
    fn namespaces(n: usize) -> Vec<Netns> {
        (0..n)
            .map(|_| Netns::create(&format!("cb{}", unique_id())))
            .collect()
    }

    /// 40 ADDs one after the other, then their DELs, timed one by one.
    fn sequential(&self, plugin: Plugin, f: &mut Figures) -> Result<()> {
        let ns = Self::namespaces(SEQUENTIAL);
        let ids: Vec<String> = ns.iter().map(|n| format!("seq-{}", n.name())).collect();
        for (n, id) in ns.iter().zip(&ids) {
            f.add.push(self.call(plugin, "ADD", id, &n.path())?);
        }
        for (n, id) in ns.iter().zip(&ids) {
            f.del.push(self.call(plugin, "DEL", id, &n.path())?);
        }
        Ok(())
    }

    /// 20 ADDs started together, then 20 DELs: the wall time of each batch.
    fn parallel(self: &Arc<Self>, plugin: Plugin, f: &mut Figures) -> Result<()> {
        let ns = Self::namespaces(PARALLEL);
        let jobs: Vec<(String, String)> = ns
            .iter()
            .map(|n| (format!("par-{}", n.name()), n.path()))
            .collect();
        for (command, into) in [("ADD", &mut f.parallel_add), ("DEL", &mut f.parallel_del)] {
            let barrier = Arc::new(Barrier::new(jobs.len() + 1));
            let threads: Vec<_> = jobs
                .iter()
                .cloned()
                .map(|(id, path)| {
                    let (bench, barrier) = (Arc::clone(self), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        bench.call(plugin, command, &id, &path)
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for t in threads {
                t.join().expect("a plugin thread panicked")?;
            }
            into.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    }
}

/// RunPodSandbox (which returns once the sandbox is ready, its network set up) of 10 pods
/// one after the other, then StopPodSandbox + RemovePodSandbox of each, timed.
fn pods(c: &mut Containerd, round: usize, f: &mut Figures) -> Result<()> {
    let mut made = Vec::new();
    for i in 0..PODS {
        let spec = PodSpec::new("bench", &format!("p{round}-{i}"));
        let start = Instant::now();
        let pod = c
            .run_pod(&spec)
            .map_err(|e| anyhow::anyhow!("RunPodSandbox: {e}\n{}", c.log()))?;
        f.pod_ready.push(start.elapsed().as_secs_f64() * 1e3);
        let status = c.cri.pod_status(&pod.id)?;
        anyhow::ensure!(
            status.status.is_some_and(|s| s.state == 0),
            "pod {} is not ready after RunPodSandbox",
            pod.id
        );
        made.push(pod);
    }
    for pod in made {
        let start = Instant::now();
        c.delete_pod(&pod);
        f.pod_removed.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

fn bridge_conflist(data_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bridgenet",
        "plugins": [
            bridge_plugin(data_dir, BRIDGES[1]),
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

/// The reference plugins as their docs configure them, without IP masquerading (which would
/// add iptables work to every call: the faster baseline).
fn bridge_plugin(data_dir: &Path, (bridge, subnet): (&str, &str)) -> serde_json::Value {
    serde_json::json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": subnet }]],
            "dataDir": data_dir.display().to_string(),
        }
    })
}

pub fn run(rounds: usize) -> Result<String> {
    let mut t = Topology::new(
        TopologySpec::new(1)
            .network(NETWORK, VNI, "198.19.0.0/16")
            .with_etcd(15),
    );
    t.start_daemon(0, &[]);
    t.wait_status(0, "registered", |s| s["networks"] == 1);
    let socket = overlay_daemon::api::socket_path(&t.hosts[0].run_dir);
    let mut plugin_conf: serde_json::Value = shipped_conflist()["plugins"][0].clone();
    plugin_conf["socket"] = socket.display().to_string().into();
    plugin_conf["cniVersion"] = "1.0.0".into();
    plugin_conf["name"] = "overlay".into();
    let mut bridge_conf = bridge_plugin(&t.dir.join("host-local"), BRIDGES[0]);
    bridge_conf["cniVersion"] = "1.0.0".into();
    bridge_conf["name"] = "bridgenet".into();
    let bench = Arc::new(Bench {
        host: Netns::open(t.hosts[0].ns.name()),
        overlay_conf: plugin_conf.to_string(),
        bridge_conf: bridge_conf.to_string(),
        overlay_bin: overlayd_bin().with_file_name("overlay-cni"),
    });
    let mut overlay_cri = Containerd::start(&t, 0);
    let mut bridge_cri = Containerd::start_with(
        &t,
        0,
        "bridge",
        bridge_conflist(&t.dir.join("host-local-cri")),
    );
    let (mut overlay, mut bridge) = (Figures::default(), Figures::default());
    // One unmeasured pass of each warms caches (binaries, etcd, the bridge's creation).
    for plugin in [Plugin::Overlay, Plugin::Bridge] {
        bench.sequential(plugin, &mut Figures::default())?;
    }
    for round in 0..rounds {
        let order = match round % 2 {
            0 => [Plugin::Overlay, Plugin::Bridge],
            _ => [Plugin::Bridge, Plugin::Overlay],
        };
        for plugin in order {
            eprintln!("cni round {}/{rounds}: {}", round + 1, plugin.label());
            let (f, cri) = match plugin {
                Plugin::Overlay => (&mut overlay, &mut overlay_cri),
                Plugin::Bridge => (&mut bridge, &mut bridge_cri),
            };
            bench.sequential(plugin, f)?;
            bench.parallel(plugin, f)?;
            pods(cri, round, f)?;
        }
    }
    Ok(markdown(rounds, &overlay, &bridge))
}

fn markdown(rounds: usize, o: &Figures, b: &Figures) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Pod network setup cost\n");
    let _ = writeln!(
        s,
        "One host with overlayd and a real etcd in network namespaces. Each round (modes \
         alternated, {rounds} rounds, after one unmeasured pass) runs, for overlay-cni and for \
         the reference `bridge` + `host-local` plugins: {SEQUENTIAL} sequential CNI ADDs and \
         then their DELs, each exec'd as a runtime does and timed; {PARALLEL} ADDs started \
         together and then their DELs (wall time of the batch); and {PODS} pods run through \
         containerd's CRI (RunPodSandbox, which returns when the sandbox and its network are \
         ready; then StopPodSandbox + RemovePodSandbox), each conflist chaining `portmap`. \
         Milliseconds; ratio = overlay-cni / reference (below 1 is faster).\n"
    );
    let _ = writeln!(
        s,
        "| step | overlay-cni p50 | p99 | reference p50 | p99 | ratio (p50) |\n|---|---|---|---|---|---|"
    );
    for (what, ov, rv) in [
        ("ADD (sequential)", &o.add, &b.add),
        ("DEL (sequential)", &o.del, &b.del),
        ("RunPodSandbox to ready", &o.pod_ready, &b.pod_ready),
        (
            "StopPodSandbox + RemovePodSandbox",
            &o.pod_removed,
            &b.pod_removed,
        ),
    ] {
        let _ = writeln!(
            s,
            "| {what} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            median(ov),
            percentile(ov, 99.0),
            median(rv),
            percentile(rv, 99.0),
            median(ov) / median(rv)
        );
    }
    let _ = writeln!(
        s,
        "\n| batch | overlay-cni median (min–max) | reference median (min–max) | ratio |\n|---|---|---|---|"
    );
    for (what, ov, rv) in [
        (
            format!("{PARALLEL} parallel ADDs"),
            &o.parallel_add,
            &b.parallel_add,
        ),
        (
            format!("{PARALLEL} parallel DELs"),
            &o.parallel_del,
            &b.parallel_del,
        ),
    ] {
        let _ = writeln!(
            s,
            "| {what} | {} | {} | {:.2} |",
            spread(ov),
            spread(rv),
            median(ov) / median(rv)
        );
    }
    s
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} ({min:.0}–{max:.0})", median(v))
}
