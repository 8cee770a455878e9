//! The chaos soak: three hosts on a three-member etcd, long-lived containers with checksummed
//! TCP streams and pings between them, and meanwhile random churn (CNI ADD/DEL through the
//! real plugin, Docker run/rm through the real dockerd), containers vanishing without a DEL,
//! SIGKILLed and restarted daemons, SIGKILLed and restarted etcd members, underlay link
//! flaps. At the end everything is put back and checked: the streams lost no byte and
//! carried no foreign one, nothing leaked (addresses, veths, pins, local state, etcd
//! records), and every node holds the same tables.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::{
    cni,
    docker::{plugin_socket, Docker},
    traffic::{self, Limit},
    Netns, Topology, TopologySpec,
};

const HOSTS: usize = 3;
const LEASE_TTL: u32 = 5;
/// Docker churn runs on this host.
const DOCKER_HOST: usize = 0;
/// Churn containers alive at once, at most.
const MAX_CHURN: usize = 8;

#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub duration: Duration,
    pub seed: u64,
    /// Docker run/rm in the churn (a dockerd on the first host).
    pub docker: bool,
}

/// What happened, and what was found at the end.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    pub seconds: f64,
    pub seed: u64,
    pub ops: BTreeMap<&'static str, u64>,
    pub refused: BTreeMap<&'static str, u64>,
    pub faults: BTreeMap<&'static str, u64>,
    pub streams: Vec<Value>,
    pub pings_sent: u64,
    pub pings_lost: u64,
    /// Every problem found by the final checks (empty: the soak passed).
    pub problems: Vec<String>,
}

impl SoakReport {
    pub fn to_json(&self) -> Value {
        json!({
            "seconds": self.seconds, "seed": self.seed, "ops": self.ops,
            "refused": self.refused, "faults": self.faults, "streams": self.streams,
            "pings_sent": self.pings_sent, "pings_lost": self.pings_lost,
            "problems": self.problems,
        })
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Chaos soak\n\n{:.0} s, seed {}. Result: {}.\n",
            self.seconds,
            self.seed,
            if self.problems.is_empty() {
                "passed".to_owned()
            } else {
                format!("{} problem(s)", self.problems.len())
            }
        );
        let _ = writeln!(s, "| what | count |\n|---|---|");
        for (k, v) in &self.ops {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        for (k, v) in &self.refused {
            let _ = writeln!(s, "| {k} refused (retried later) | {v} |");
        }
        for (k, v) in &self.faults {
            let _ = writeln!(s, "| fault: {k} | {v} |");
        }
        let _ = writeln!(
            s,
            "| pings sent / lost | {} / {} |",
            self.pings_sent, self.pings_lost
        );
        let _ = writeln!(
            s,
            "\n| stream | sent (bytes) | received (bytes) | intact |\n|---|---|---|---|"
        );
        for st in &self.streams {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                st["flow"], st["sent"], st["received"], st["intact"]
            );
        }
        for p in &self.problems {
            let _ = writeln!(s, "\n- problem: {p}");
        }
        s
    }
}

/// xorshift64: the soak's choices, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A churn container made through the CNI plugin.
struct Churned {
    host: usize,
    id: String,
    ns: Netns,
}

struct Soak {
    t: Topology,
    rng: Rng,
    report: SoakReport,
    churn: Vec<Churned>,
    docker: Option<Docker>,
    docker_names: Vec<String>,
    /// Hosts whose daemon is down, with when it comes back.
    daemon_down: BTreeMap<usize, Instant>,
    /// The etcd member that is down, with when it comes back.
    member_down: Option<(usize, Instant)>,
    counter: u64,
}

/// Runs the soak and returns its report; `report.problems` lists every failed check.
pub fn run(cfg: &SoakConfig) -> SoakReport {
    let started = Instant::now();
    let mut t = Topology::new(
        TopologySpec::new(HOSTS)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd_cluster(LEASE_TTL),
    );
    for h in 0..HOSTS {
        let extra = daemon_args(&t, h, cfg.docker);
        t.start_daemon(h, &extra.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for h in 0..HOSTS {
        t.wait_registered(h);
    }
    let long: Vec<usize> = (0..HOSTS)
        .map(|h| t.add_pod(h, &format!("long{h}"), "red"))
        .collect();
    for h in 0..HOSTS {
        t.wait_converged(h);
    }
    let docker = cfg.docker.then(|| {
        let d = Docker::start(&t, DOCKER_HOST);
        d.create_red();
        d
    });

    // Long-lived streams long0 -> long1 -> long2 -> long0, each with its own pattern.
    let stream_time = cfg.duration;
    let mut streams = Vec::new();
    for i in 0..HOSTS {
        let (from, to) = (long[i], long[(i + 1) % HOSTS]);
        let (server, client) = (
            Netns::open(t.containers[to].ns.name()),
            Netns::open(t.containers[from].ns.name()),
        );
        let ip = t.containers[to].ip;
        let port = 7000 + i as u16;
        let flow = format!("long{i} -> long{}", (i + 1) % HOSTS);
        streams.push((
            flow,
            thread::spawn(move || {
                traffic::tcp_stream_seeded(
                    &server,
                    &client,
                    ip,
                    port,
                    Limit::Duration(stream_time),
                    0xc0ffee + i as u64,
                )
            }),
        ));
    }
    // Pings around the ring, one a second each.
    let stop_pings = Arc::new(AtomicBool::new(false));
    let (sent, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let pinger = {
        let targets: Vec<(String, Ipv4Addr)> = (0..HOSTS)
            .map(|i| {
                (
                    t.containers[long[i]].ns.name().to_owned(),
                    t.containers[long[(i + 1) % HOSTS]].ip,
                )
            })
            .collect();
        let (stop, sent, lost) = (stop_pings.clone(), sent.clone(), lost.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (ns, ip) in &targets {
                    sent.fetch_add(1, Ordering::Relaxed);
                    if traffic::ping_received(&Netns::open(ns), *ip, 1) == 0 {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(500));
            }
        })
    };

    let mut soak = Soak {
        t,
        rng: Rng(cfg.seed | 1),
        report: SoakReport {
            seed: cfg.seed,
            ..Default::default()
        },
        churn: Vec::new(),
        docker,
        docker_names: Vec::new(),
        daemon_down: BTreeMap::new(),
        member_down: None,
        counter: 0,
    };
    // Churn and faults until shortly before the streams end.
    let deadline = Instant::now() + cfg.duration.saturating_sub(Duration::from_secs(8));
    while Instant::now() < deadline {
        soak.restore_due(cfg);
        soak.step(cfg);
        thread::sleep(Duration::from_millis(150 + soak.rng.below(350)));
    }
    soak.restore_all(cfg);

    for (flow, handle) in streams {
        let entry = match handle.join() {
            Ok((sent, received)) => {
                let intact = sent.bytes == received.bytes && sent.sha256 == received.sha256;
                if !intact {
                    soak.report.problems.push(format!(
                        "stream {flow}: sent {} bytes, received {} (checksums {})",
                        sent.bytes,
                        received.bytes,
                        if sent.sha256 == received.sha256 {
                            "equal"
                        } else {
                            "differ"
                        }
                    ));
                }
                json!({"flow": flow, "sent": sent.bytes, "received": received.bytes, "intact": intact})
            }
            Err(p) => {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                soak.report
                    .problems
                    .push(format!("stream {flow} broke: {why}"));
                json!({"flow": flow, "sent": 0, "received": 0, "intact": false})
            }
        };
        soak.report.streams.push(entry);
    }
    stop_pings.store(true, Ordering::Relaxed);
    let _ = pinger.join();
    soak.report.pings_sent = sent.load(Ordering::Relaxed);
    soak.report.pings_lost = lost.load(Ordering::Relaxed);

    soak.clean_up_churn();
    soak.check_end_state(&long);
    soak.report.seconds = started.elapsed().as_secs_f64();
    soak.report
}

fn daemon_args(t: &Topology, host: usize, docker: bool) -> Vec<String> {
    if docker && host == DOCKER_HOST {
        vec![
            "--docker-plugin".into(),
            plugin_socket(t, host).display().to_string(),
        ]
    } else {
        Vec::new()
    }
}

impl Soak {
    fn count(&mut self, what: &'static str) {
        *self.report.ops.entry(what).or_default() += 1;
    }
    fn refused(&mut self, what: &'static str) {
        *self.report.refused.entry(what).or_default() += 1;
    }
    fn fault(&mut self, what: &'static str) {
        *self.report.faults.entry(what).or_default() += 1;
    }

    fn live_hosts(&self) -> Vec<usize> {
        (0..HOSTS)
            .filter(|h| !self.daemon_down.contains_key(h))
            .collect()
    }

    fn step(&mut self, cfg: &SoakConfig) {
        match self.rng.below(100) {
            0..=34 => self.cni_add(),
            35..=59 => self.cni_del(),
            60..=64 => self.vanish(),
            65..=74 if cfg.docker => self.docker_run(),
            75..=84 if cfg.docker => self.docker_rm(),
            85..=89 => self.kill_daemon(),
            90..=94 => self.kill_member(),
            95..=99 => self.flap_link(),
            _ => self.cni_add(),
        }
    }

    fn cni_add(&mut self) {
        if self.churn.len() >= MAX_CHURN {
            return self.cni_del();
        }
        let live = self.live_hosts();
        if live.is_empty() {
            return;
        }
        let host = live[self.rng.below(live.len() as u64) as usize];
        self.counter += 1;
        let id = format!("{}-churn{}", self.t.id, self.counter);
        let ns = Netns::create(&format!("ovt{}-c{}", self.t.id, self.counter));
        let socket = overlay_daemon::api::socket_path(&self.t.hosts[host].run_dir);
        match cni::add(&socket, "red", &id, &ns.path()) {
            Ok(_) => {
                self.count("cni add");
                self.churn.push(Churned { host, id, ns });
            }
            Err((code, msg)) => {
                // Refused during a fault (daemon restarting, etcd electing): the runtime's
                // answer is to retry later, and nothing may be left behind.
                self.refused("cni add");
                let inside = ns.run("ip", &["-o", "link", "show"]);
                if inside.contains("eth0") {
                    self.report.problems.push(format!(
                        "a refused ADD left eth0 in {}: code {code}: {msg}",
                        ns.name()
                    ));
                }
            }
        }
    }

    fn cni_del(&mut self) {
        if self.churn.is_empty() {
            return;
        }
        let i = self.rng.below(self.churn.len() as u64) as usize;
        let host = self.churn[i].host;
        if self.daemon_down.contains_key(&host) {
            return; // DEL with the daemon down is best effort; do it once it is back
        }
        let c = &self.churn[i];
        let socket = overlay_daemon::api::socket_path(&self.t.hosts[host].run_dir);
        if cni::del(&socket, "red", &c.id, &c.ns.path()).is_ok() {
            self.count("cni del");
            self.churn.swap_remove(i);
        } else {
            self.refused("cni del");
        }
    }

    /// A runtime crash: the container's namespace goes without a DEL.
    fn vanish(&mut self) {
        if self.churn.is_empty() {
            return;
        }
        let i = self.rng.below(self.churn.len() as u64) as usize;
        drop(self.churn.swap_remove(i));
        self.fault("container vanished without DEL");
    }

    fn docker_run(&mut self) {
        if self.daemon_down.contains_key(&DOCKER_HOST) || self.docker_names.len() >= 4 {
            return;
        }
        let Some(d) = &self.docker else { return };
        self.counter += 1;
        let name = format!("d{}", self.counter);
        let out = d.run(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "red",
            "bbox:latest",
            "sleep",
            "600",
        ]);
        if out.status.success() {
            self.docker_names.push(name);
            self.count("docker run");
        } else {
            let _ = d.run(&["rm", "-f", &name]);
            self.refused("docker run");
        }
    }

    fn docker_rm(&mut self) {
        if self.docker_names.is_empty() || self.daemon_down.contains_key(&DOCKER_HOST) {
            return;
        }
        let Some(d) = &self.docker else { return };
        let i = self.rng.below(self.docker_names.len() as u64) as usize;
        if d.run(&["rm", "-f", &self.docker_names[i]]).status.success() {
            self.docker_names.swap_remove(i);
            self.count("docker rm");
        } else {
            self.refused("docker rm");
        }
    }

    fn kill_daemon(&mut self) {
        let live = self.live_hosts();
        if live.len() < 2 {
            return;
        }
        let host = live[self.rng.below(live.len() as u64) as usize];
        self.t.stop_daemon(host, Signal::SIGKILL);
        let back = Instant::now() + Duration::from_millis(1000 + self.rng.below(2000));
        self.daemon_down.insert(host, back);
        self.fault("daemon SIGKILLed and restarted");
    }

    fn kill_member(&mut self) {
        if self.member_down.is_some() {
            return;
        }
        let i = self.rng.below(3) as usize;
        if let Some(c) = self.t.etcd_cluster.as_mut() {
            c.members[i].kill();
            let back = Instant::now() + Duration::from_millis(2000 + self.rng.below(2000));
            self.member_down = Some((i, back));
            self.fault("etcd member SIGKILLed and restarted");
        }
    }

    fn flap_link(&mut self) {
        let host = self.rng.below(HOSTS as u64) as usize;
        let ns = &self.t.hosts[host].ns;
        ns.ip(&["link", "set", "ul0", "down"]);
        thread::sleep(Duration::from_millis(300 + self.rng.below(700)));
        ns.ip(&["link", "set", "ul0", "up"]);
        self.fault("underlay link flapped");
    }

    fn restore_due(&mut self, cfg: &SoakConfig) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .daemon_down
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(h, _)| *h)
            .collect();
        for h in due {
            self.start(h, cfg);
        }
        if let Some((i, at)) = self.member_down {
            if at <= now {
                if let Some(c) = self.t.etcd_cluster.as_mut() {
                    c.restart(i);
                }
                self.member_down = None;
            }
        }
    }

    fn start(&mut self, h: usize, cfg: &SoakConfig) {
        let extra = daemon_args(&self.t, h, cfg.docker);
        self.t
            .start_daemon(h, &extra.iter().map(String::as_str).collect::<Vec<_>>());
        self.daemon_down.remove(&h);
    }

    fn restore_all(&mut self, cfg: &SoakConfig) {
        for h in self.daemon_down.keys().copied().collect::<Vec<_>>() {
            self.start(h, cfg);
        }
        if let Some((i, _)) = self.member_down.take() {
            if let Some(c) = self.t.etcd_cluster.as_mut() {
                c.restart(i);
            }
        }
        for h in 0..HOSTS {
            self.t.wait_registered(h);
        }
    }

    /// Everything the churn made goes the way runtimes remove it.
    fn clean_up_churn(&mut self) {
        for c in std::mem::take(&mut self.churn) {
            let socket = overlay_daemon::api::socket_path(&self.t.hosts[c.host].run_dir);
            if let Err((code, msg)) = cni::del(&socket, "red", &c.id, &c.ns.path()) {
                self.report
                    .problems
                    .push(format!("DEL of {} at the end: code {code}: {msg}", c.id));
            }
        }
        if let Some(d) = &self.docker {
            for name in std::mem::take(&mut self.docker_names) {
                let _ = d.run(&["rm", "-f", &name]);
            }
        }
    }

    /// No leak anywhere, the same tables on every node. Waits for the reaper and leases.
    fn check_end_state(&mut self, long: &[usize]) {
        let want: Vec<(usize, Ipv4Addr)> = long
            .iter()
            .map(|&i| (self.t.containers[i].host, self.t.containers[i].ip))
            .collect();
        let hosts: Vec<usize> = (0..HOSTS).collect();
        let wait = Duration::from_secs(40);
        if let Err(problems) = crate::workload::wait_end_state(&self.t, &hosts, &want, wait) {
            self.report.problems.extend(problems);
            let ips = want.iter().map(|(_, ip)| ip.to_string()).collect();
            self.report.problems.push(self.evidence(&ips));
        }
    }

    /// What the daemons logged about every address that should not be there any more.
    fn evidence(&self, want: &BTreeSet<String>) -> String {
        let out = self.t.overlayctl(0, &["endpoint", "ls", "-o", "json"]);
        let extra: Vec<String> = serde_json::from_slice::<Vec<Value>>(&out.stdout)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["ip"].as_str().map(str::to_owned))
            .filter(|ip| !want.contains(ip))
            .collect();
        let mut text = format!("daemon log lines about {extra:?}:");
        for h in 0..HOSTS {
            let log = self.t.daemon_log(h);
            for line in log
                .lines()
                .filter(|l| {
                    extra.iter().any(|ip| {
                        l.contains(&format!("{ip} "))
                            || l.contains(&format!("{ip}:"))
                            || l.ends_with(ip.as_str())
                    })
                })
                .filter(|l| !l.contains("DEBUG"))
                .take(40)
            {
                let _ = write!(text, "\n  {}: {line}", self.t.hosts[h].name);
            }
        }
        text
    }
}
