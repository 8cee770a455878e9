//! Background work a fault test keeps running while it breaks things: pings between
//! containers, checksummed TCP streams, and containers added through the real CNI plugin the
//! way a runtime does (retrying an ADD that answered "try again later").

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    cni,
    netns::unique_id,
    traffic::{self, Limit, Transfer},
    Netns, Topology,
};

/// Pings from each (namespace, address) pair, one echo every 200 ms, until stopped.
pub struct Pinger {
    stop: Arc<AtomicBool>,
    threads: Vec<(String, JoinHandle<(u32, u32)>)>,
}

/// Echoes sent and lost on one path.
#[derive(Debug)]
pub struct PingCount {
    pub path: String,
    pub sent: u32,
    pub lost: u32,
}

impl Pinger {
    pub fn start<A: Into<std::net::IpAddr>>(paths: Vec<(String, Netns, A)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = paths
            .into_iter()
            .map(|(name, ns, ip)| {
                let ip: std::net::IpAddr = ip.into();
                let stop = stop.clone();
                let handle = std::thread::spawn(move || {
                    let (mut sent, mut lost) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        sent += 5;
                        lost += 5 - traffic::ping_received(&ns, ip, 5);
                    }
                    (sent, lost)
                });
                (name, handle)
            })
            .collect();
        Self { stop, threads }
    }

    pub fn stop(self) -> Vec<PingCount> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|(path, h)| {
                let (sent, lost) = h.join().expect("pinger");
                PingCount { path, sent, lost }
            })
            .collect()
    }
}

/// A checksummed TCP stream from `from` to `to` (containers of `t`) for `duration`.
pub fn stream(
    t: &Topology,
    from: usize,
    to: usize,
    port: u16,
    duration: Duration,
) -> JoinHandle<(Transfer, Transfer)> {
    let server = Netns::open(t.containers[to].ns.name());
    let client = Netns::open(t.containers[from].ns.name());
    let ip = t.containers[to].ip;
    std::thread::spawn(move || {
        traffic::tcp_stream_seeded(
            &server,
            &client,
            ip,
            port,
            Limit::Duration(duration),
            port as u64,
        )
    })
}

/// One container added through the real plugin.
#[derive(Debug)]
pub struct Added {
    pub id: String,
    pub host: usize,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// ADDs answered with code 11 before one succeeded.
    pub retries: u32,
}

/// What the runtime saw: containers added, and ADDs that failed with a code other than 11
/// (or kept failing past the retry budget).
#[derive(Debug, Default)]
pub struct AddReport {
    pub added: Vec<Added>,
    pub failed: Vec<String>,
}

/// Adds containers on `hosts` (round robin) one after another until stopped. An ADD that
/// answers code 11 is followed by a DEL and retried every 250 ms, for at most `budget`, as
/// containerd and podman do.
pub struct Adder {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<AddReport>>,
    thread: Option<JoinHandle<()>>,
}

impl Adder {
    pub fn start(t: &Topology, hosts: &[usize], network: &str, budget: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(AddReport::default()));
        let targets: Vec<(usize, PathBuf)> = hosts
            .iter()
            .map(|&h| (h, overlay_daemon::api::socket_path(&t.hosts[h].run_dir)))
            .collect();
        let (network, prefix) = (network.to_owned(), format!("ovt{}", t.id));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let (host, socket) = &targets[n % targets.len()];
                    n += 1;
                    let id = format!("{prefix}-add{n}-{}", unique_id());
                    let ns = Netns::create(&format!("{prefix}-a{}", unique_id()));
                    let started = Instant::now();
                    let mut retries = 0;
                    let result = loop {
                        match cni::add(socket, &network, &id, &ns.path()) {
                            Err((11, _)) if started.elapsed() < budget => {
                                retries += 1;
                                let _ = cni::del(socket, &network, &id, &ns.path());
                                std::thread::sleep(Duration::from_millis(250));
                            }
                            other => break other,
                        }
                    };
                    let mut r = report.lock().expect("report");
                    match result {
                        Ok(ip) => r.added.push(Added {
                            id,
                            host: *host,
                            ns,
                            ip,
                            retries,
                        }),
                        Err((code, msg)) => r.failed.push(format!(
                            "ADD {id} on host {host}: code {code}: {msg} (after {retries} retries)"
                        )),
                    }
                    drop(r);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            stop,
            report,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> AddReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("adder");
        }
        std::mem::take(&mut *self.report.lock().expect("report"))
    }
}

/// What differs from a cluster that holds exactly `want` (host, address) endpoints, checked
/// on `hosts`: etcd's endpoint records, each host's veths, container link pins and local
/// state files, and every host's endpoint table (all equal, one entry per endpoint).
pub fn end_state_problems(
    t: &Topology,
    hosts: &[usize],
    want: &[(usize, Ipv4Addr)],
) -> Vec<String> {
    use std::collections::BTreeSet;

    use overlay_daemon::maps::{EndpointMaps, Location};

    let mut problems = Vec::new();
    let out = t.overlayctl(hosts[0], &["endpoint", "ls", "-o", "json"]);
    let records: BTreeSet<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["ip"].as_str().map(str::to_owned))
        .collect();
    let want_ips: BTreeSet<String> = want.iter().map(|(_, ip)| ip.to_string()).collect();
    if records != want_ips {
        problems.push(format!(
            "etcd endpoint records {records:?}, want {want_ips:?} ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut tables = Vec::new();
    for &h in hosts {
        let host = &t.hosts[h];
        let local = want.iter().filter(|(wh, _)| *wh == h).count();
        let links = host.ns.run("ip", &["-o", "link", "show"]);
        let veths = links.matches(": ovl").count();
        if veths != local {
            problems.push(format!("{}: {veths} ovl veths, want {local}", host.name));
        }
        let pins = std::fs::read_dir(host.pins.links())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("ep-"))
                    .count()
            })
            .unwrap_or(0);
        if pins != local {
            problems.push(format!(
                "{}: {pins} container link pins, want {local}",
                host.name
            ));
        }
        let state = std::fs::read_dir(host.run_dir.join("endpoints"))
            .map(|d| d.count())
            .unwrap_or(0);
        if state != local {
            problems.push(format!(
                "{}: {state} local endpoint files, want {local}",
                host.name
            ));
        }
        // A host of the previous release keeps its endpoints in the shape it knows.
        if host.overlayd.is_some() {
            match previous_release_view(&host.pins.maps(), host.underlay_ip) {
                Ok(view) => tables.push((host.name.clone(), view)),
                Err(e) => problems.push(format!("{}: endpoint maps: {e}", host.name)),
            }
            continue;
        }
        match EndpointMaps::open_pinned(&host.pins.maps()) {
            Ok(maps) => {
                // Every node's view of every endpoint: (VNI, IP, MAC, the VTEP it is behind).
                let view: Vec<EndpointView> = maps
                    .entries()
                    .into_iter()
                    .map(|e| {
                        let vtep = match e.location {
                            Location::Local { .. } => host.underlay_ip,
                            Location::Remote { vtep } => vtep,
                        };
                        (e.vni, e.key_ip(), e.mac, vtep)
                    })
                    .collect();
                tables.push((host.name.clone(), view));
            }
            Err(e) => problems.push(format!("{}: endpoint maps: {e}", host.name)),
        }
    }
    if let Some((first, t0)) = tables.first() {
        for (name, other) in &tables[1..] {
            if other != t0 {
                problems.push(format!(
                    "{name}'s endpoint table differs from {first}'s: {other:?} vs {t0:?}"
                ));
            }
        }
        if t0.len() != want.len() {
            problems.push(format!(
                "{first} holds {} endpoints, want {}",
                t0.len(),
                want.len()
            ));
        }
    }
    problems
}

/// Waits up to `timeout` for `end_state_problems` to come back empty; the last problems
/// otherwise.
pub fn wait_end_state(
    t: &Topology,
    hosts: &[usize],
    want: &[(usize, Ipv4Addr)],
    timeout: Duration,
) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let problems = end_state_problems(t, hosts, want);
        if problems.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(problems);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A Docker container and a CNI container on one overlay network, the two front ends side by
/// side: dockerd on `docker_host` (network `red` through the driver and the cluster IPAM)
/// runs `web`; the real plugin adds `cni` on `cni_host`. Made by `docker_and_cni`, which
/// checks they reach each other both ways.
pub struct FrontEnds {
    pub docker: crate::docker::Docker,
    pub web: Ipv4Addr,
    pub cni_ns: Netns,
    pub cni_id: String,
    pub cni_ip: Ipv4Addr,
    /// The CNI host's daemon API.
    pub socket: PathBuf,
}

pub fn docker_and_cni(t: &Topology, docker_host: usize, cni_host: usize) -> FrontEnds {
    let docker = crate::docker::Docker::start(t, docker_host);
    docker.create_red();
    let web: Ipv4Addr = docker
        .start_container("web", "red")
        .parse()
        .expect("address");
    let cni_ns = Netns::create(&format!("ovt{}-cni", t.id));
    let socket = overlay_daemon::api::socket_path(&t.hosts[cni_host].run_dir);
    let cni_id = format!("{}-cni", t.id);
    let cni_ip = cni::add(&socket, "red", &cni_id, &cni_ns.path())
        .unwrap_or_else(|e| panic!("CNI ADD: {e:?}"));
    let ping = docker.exec("web", &["ping", "-c", "3", "-W", "2", &cni_ip.to_string()]);
    assert!(
        ping.status.success(),
        "Docker container {web} -> CNI container {cni_ip}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(
        traffic::ping(&cni_ns, web, 3),
        "CNI container {cni_ip} -> Docker container {web}"
    );
    FrontEnds {
        docker,
        web,
        cni_ns,
        cni_id,
        cni_ip,
        socket,
    }
}

impl FrontEnds {
    /// CNI DEL and `docker rm -f`.
    pub fn remove(self) {
        cni::del(&self.socket, "red", &self.cni_id, &self.cni_ns.path()).expect("CNI DEL");
        self.docker.run_ok(&["rm", "-f", "web"]);
    }
}

/// A node's view of an endpoint: (VNI, IP, MAC, the VTEP it is behind).
type EndpointView = (u32, IpAddr, [u8; 6], IpAddr);

/// The endpoint value of the previous release (layout 2: an IPv4 VTEP, 20 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct PreviousEndpointInfo {
    vtep_ip: u32,
    ifindex: u32,
    mac: [u8; 6],
    flags: u16,
    ip: u32,
}
unsafe impl aya::Pod for PreviousEndpointInfo {}

/// A previous-release node's endpoints by IPv4 address, as `wait_end_state` compares them:
/// (VNI, IP, MAC, the VTEP it is behind; `local` for its own).
fn previous_release_view(
    maps: &std::path::Path,
    local: IpAddr,
) -> Result<Vec<EndpointView>, String> {
    use aya::maps::{HashMap, Map, MapData};
    use overlay_common::{maps::names, EndpointIpKey, ENDPOINT_F_LOCAL};
    let data = MapData::from_pin(maps.join(names::ENDPOINTS_BY_IP)).map_err(|e| e.to_string())?;
    let map: HashMap<MapData, EndpointIpKey, PreviousEndpointInfo> =
        HashMap::try_from(Map::HashMap(data)).map_err(|e| e.to_string())?;
    let mut view = Vec::new();
    for entry in map.iter() {
        let (k, v) = entry.map_err(|e| e.to_string())?;
        let vtep = match v.flags & ENDPOINT_F_LOCAL {
            0 => IpAddr::V4(Ipv4Addr::from(v.vtep_ip.to_ne_bytes())),
            _ => local,
        };
        let ip = IpAddr::V4(Ipv4Addr::from(k.ip.to_ne_bytes()));
        view.push((k.vni, ip, v.mac, vtep));
    }
    view.sort_by_key(|e| (e.0, e.1));
    Ok(view)
}
