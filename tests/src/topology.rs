//! Hosts, an underlay bridge and containers, all in namespaces, plus the overlayd on each host.
//!
//! ```text
//!   [container ns] eth0 --veth-- v<name> [host ns h<i>] ul0 --veth-- p<i> [underlay ns] br0
//! ```
//! Underlay addresses are 198.18.0.<i>/24; overlay subnets come from 198.19.0.0/16.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use overlay_api::{CallError, Client, EndpointRequest, Request};
use overlay_daemon::{
    api,
    datapath::{self, PinLayout},
    maps::{CounterMap, CounterSnapshot, VtepMap},
    tables::{ClusterTables, EndpointIface, EndpointSpec, MacAddr, NetworkSpec, NodeSpec},
};

use crate::{
    etcd::{Etcd, EtcdCluster},
    netns::unique_id,
    ChildGuard, Netns,
};

pub const UNDERLAY_MTU: u32 = 1500;

/// A veth from `ns` (named `ifname`, address `ip`/24) to the underlay switch (port `peer`).
fn plug_into_underlay(underlay: &Netns, ns: &Netns, ifname: &str, peer: &str, ip: Ipv4Addr) {
    let mtu = UNDERLAY_MTU.to_string();
    ns.ip(&[
        "link",
        "add",
        ifname,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        underlay.name(),
    ]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname]);
    ns.ip(&["link", "set", ifname, "up"]);
    underlay.ip(&["link", "set", peer, "master", "br0", "mtu", &mtu, "up"]);
}
pub const CONTAINER_MTU: u32 = UNDERLAY_MTU - overlay_common::wire::VXLAN_OVERHEAD;

/// The overlayd binary under test: `OVERLAYD` (set by `cargo xtask test`), else the workspace's
/// debug build.
pub fn overlayd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OVERLAYD") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/overlayd");
    assert!(
        p.exists(),
        "overlayd binary not found at {}: run the tests with `cargo xtask test` or set OVERLAYD",
        p.display()
    );
    p
}

#[derive(Clone, Debug)]
pub struct TopologySpec {
    pub hosts: usize,
    pub networks: Vec<NetworkSpec>,
    /// Run a real etcd (in the underlay namespace, 198.18.0.254) and have the daemons use it
    /// instead of a tables file; this is the lease TTL they get.
    pub etcd_lease_ttl: Option<u32>,
    /// Members of the etcd cluster: 1 (in the underlay namespace) or more (each in its own
    /// namespace on the underlay switch, 198.18.0.251 and up).
    pub etcd_members: usize,
}

/// Where etcd listens in etcd topologies.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

impl TopologySpec {
    pub fn new(hosts: usize) -> Self {
        Self {
            hosts,
            networks: Vec::new(),
            etcd_lease_ttl: None,
            etcd_members: 1,
        }
    }

    /// A three-member etcd cluster instead of one server.
    pub fn with_etcd_cluster(mut self, lease_ttl: u32) -> Self {
        self.etcd_lease_ttl = Some(lease_ttl);
        self.etcd_members = 3;
        self
    }

    pub fn with_etcd(mut self, lease_ttl: u32) -> Self {
        self.etcd_lease_ttl = Some(lease_ttl);
        self
    }

    pub fn network(mut self, name: &str, vni: u32, subnet: &str) -> Self {
        self.networks.push(NetworkSpec {
            name: name.to_owned(),
            vni,
            subnet: subnet.parse().expect("subnet"),
            gateway: None,
        });
        self
    }
}

pub struct Host {
    pub name: String,
    pub ns: Netns,
    pub vtep_ip: Ipv4Addr,
    pub pins: PinLayout,
    pub run_dir: PathBuf,
    pub log: PathBuf,
    daemon: Option<ChildGuard>,
}

impl Host {
    pub fn daemon_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|d| d.is_running())
    }
}

pub struct Container {
    pub name: String,
    pub ns: Netns,
    pub host: usize,
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub host_ifname: String,
    pub gateway: Ipv4Addr,
}

pub struct Topology {
    pub id: String,
    pub dir: PathBuf,
    pins_root: PathBuf,
    pub tables: ClusterTables,
    pub containers: Vec<Container>,
    pub hosts: Vec<Host>,
    lease_ttl: Option<u32>,
    /// Dropped before the underlay namespace it runs in.
    pub etcd: Option<Etcd>,
    /// The multi-member cluster, when the spec asked for one (then `etcd` is `None`).
    pub etcd_cluster: Option<EtcdCluster>,
    pub underlay: Netns,
}

impl Topology {
    pub fn new(spec: TopologySpec) -> Self {
        let id = unique_id();
        let dir = std::env::temp_dir().join(format!("ovt-{id}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let underlay = Netns::create(&format!("ovt{id}-ul"));
        underlay.add_switch();
        let pins_root = PathBuf::from(format!("/sys/fs/bpf/ovt-{id}"));
        let mut topo = Self {
            id: id.clone(),
            dir: dir.clone(),
            pins_root: pins_root.clone(),
            tables: ClusterTables {
                networks: spec.networks.clone(),
                ..Default::default()
            },
            containers: Vec::new(),
            hosts: Vec::new(),
            lease_ttl: spec.etcd_lease_ttl,
            etcd: None,
            etcd_cluster: None,
            underlay,
        };
        if spec.etcd_lease_ttl.is_some() && spec.etcd_members > 1 {
            let mut namespaces = Vec::new();
            let mut ips = Vec::new();
            for i in 1..=spec.etcd_members {
                let ns = Netns::create(&format!("ovt{id}-e{i}"));
                let ip = Ipv4Addr::new(198, 18, 0, 250 + i as u8);
                plug_into_underlay(&topo.underlay, &ns, "eth0", &format!("e{i}"), ip);
                ns.ip(&["link", "set", "lo", "up"]);
                namespaces.push(ns);
                ips.push(ip);
            }
            topo.etcd_cluster = Some(EtcdCluster::start(namespaces, &ips));
        } else if spec.etcd_lease_ttl.is_some() {
            topo.underlay
                .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
            topo.etcd = Some(Etcd::start(&topo.underlay, ETCD_IP));
        }
        for i in 1..=spec.hosts {
            let name = format!("h{i}");
            let ns = Netns::create(&format!("ovt{id}-{name}"));
            ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
            let vtep_ip = Ipv4Addr::new(198, 18, 0, i as u8);
            plug_into_underlay(&topo.underlay, &ns, "ul0", &format!("p{i}"), vtep_ip);
            topo.tables.nodes.push(NodeSpec {
                name: name.clone(),
                vtep_ip,
            });
            let run_dir = dir.join(&name);
            std::fs::create_dir_all(&run_dir).expect("run dir");
            topo.hosts.push(Host {
                log: dir.join(format!("{name}.log")),
                pins: PinLayout::new(pins_root.join(&name)),
                name,
                ns,
                vtep_ip,
                run_dir,
                daemon: None,
            });
        }
        if topo.has_etcd() {
            for n in spec.networks.clone() {
                topo.overlayctl_ok(
                    0,
                    &[
                        "network",
                        "create",
                        &n.name,
                        "--vni",
                        &n.vni.to_string(),
                        "--subnet",
                        &n.subnet.to_string(),
                    ],
                );
            }
        } else {
            topo.write_tables();
        }
        topo
    }

    fn has_etcd(&self) -> bool {
        self.etcd.is_some() || self.etcd_cluster.is_some()
    }

    /// The etcd client URLs the daemons and overlayctl are given.
    pub fn etcd_endpoint(&self) -> String {
        match (&self.etcd, &self.etcd_cluster) {
            (Some(e), _) => e.endpoint(),
            (None, Some(c)) => c.endpoints(),
            (None, None) => panic!("not an etcd topology"),
        }
    }

    /// Runs overlayctl on host `host` against the topology's etcd.
    pub fn overlayctl(&self, host: usize, args: &[&str]) -> std::process::Output {
        let bin = overlayd_bin().with_file_name("overlayctl");
        self.hosts[host]
            .ns
            .command(bin.to_str().expect("path"))
            .args(["--etcd-endpoints", &self.etcd_endpoint()])
            .arg("--socket")
            .arg(api::socket_path(&self.hosts[host].run_dir))
            .args(args)
            .output()
            .expect("run overlayctl")
    }

    pub fn overlayctl_ok(&self, host: usize, args: &[&str]) -> String {
        let out = self.overlayctl(host, args);
        assert!(
            out.status.success(),
            "overlayctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A client of host `host`'s daemon API.
    pub fn client(&self, host: usize) -> Client {
        Client::new(api::socket_path(&self.hosts[host].run_dir))
    }

    /// Waits until host `host`'s daemon answers on its API and holds its etcd lease.
    pub fn wait_registered(&mut self, host: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.client(host).status().is_ok_and(|s| s.lease.is_some()) {
                return;
            }
            if !self.hosts[host].daemon_running() || Instant::now() > deadline {
                panic!(
                    "overlayd on {} did not register:\n{}",
                    self.hosts[host].name,
                    self.daemon_log(host)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Calls host `host`'s daemon API.
    pub fn api(&self, host: usize, req: &Request) -> Result<serde_json::Value, CallError> {
        self.client(host).call(req)
    }

    /// Creates an empty container namespace and asks host `host`'s daemon for an endpoint in
    /// `network` (the daemon allocates the address and makes the veth).
    pub fn add_pod(&mut self, host: usize, name: &str, network: &str) -> usize {
        self.add_labelled_pod(host, name, network, &[])
    }

    /// `add_pod` for a container labelled `overlay.service=NAME:PORT` for each of `services`.
    pub fn add_labelled_pod(
        &mut self,
        host: usize,
        name: &str,
        network: &str,
        services: &[&str],
    ) -> usize {
        let ns = Netns::create(&format!("ovt{}-{name}", self.id));
        ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        let req = EndpointRequest {
            network: network.to_owned(),
            container_id: format!("{}-{name}", self.id),
            netns: PathBuf::from(ns.path()),
            ifname: "eth0".into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let ep = self.client(host).create_endpoint(req).unwrap_or_else(|e| {
            panic!(
                "creating endpoint {name} on {}: {e}\n{}",
                self.hosts[host].name,
                self.daemon_log(host)
            )
        });
        self.containers.push(Container {
            name: name.to_owned(),
            ns,
            host,
            network: network.to_owned(),
            ip: ep.ip,
            mac: ep.mac,
            host_ifname: ep.host_ifname().unwrap_or_default().to_owned(),
            gateway: ep.gateway,
        });
        self.containers.len() - 1
    }

    /// Waits until `check` holds for host `host`'s status report.
    pub fn wait_status(
        &mut self,
        host: usize,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(host);
            if status.as_ref().is_some_and(&check) {
                return;
            }
            if !self.hosts[host].daemon_running() {
                panic!(
                    "overlayd on {} exited:\n{}",
                    self.hosts[host].name,
                    self.daemon_log(host)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} on {}: status {status:?}\n{}",
                    what,
                    self.hosts[host].name,
                    self.daemon_log(host)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn tables_path(&self) -> PathBuf {
        self.dir.join("tables.json")
    }

    /// Writes the tables file every daemon reads (atomically).
    pub fn write_tables(&self) {
        let tmp = self.dir.join(".tables.json.tmp");
        let text = serde_json::to_string_pretty(&self.tables).expect("tables json");
        std::fs::write(&tmp, text).expect("write tables");
        std::fs::rename(&tmp, self.tables_path()).expect("rename tables");
    }

    /// Adds a container on host `host` (0-based) in `network`, with the `index`-th address
    /// of that host's range in the subnet (.<10*(host+1)+index>).
    pub fn add_container(&mut self, host: usize, name: &str, network: &str, index: u8) -> usize {
        let net = self
            .tables
            .networks
            .iter()
            .find(|n| n.name == network)
            .unwrap_or_else(|| panic!("no network {network}"))
            .clone();
        let base = u32::from(net.subnet.network());
        let ip = Ipv4Addr::from(base + 10 * (host as u32 + 1) + index as u32);
        let mac = MacAddr::from_ip(ip);
        let ns = Netns::create(&format!("ovt{}-{name}", self.id));
        ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        let host_ifname = format!("v{name}");
        let mtu = CONTAINER_MTU.to_string();
        let h = &self.hosts[host];
        h.ns.ip(&[
            "link",
            "add",
            &host_ifname,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        h.ns.ip(&["link", "set", &host_ifname, "up"]);
        let prefix = Ipv4Net::new(ip, net.subnet.prefix_len()).expect("prefix");
        ns.ip(&[
            "link",
            "set",
            "eth0",
            "address",
            &mac.to_string(),
            "mtu",
            &mtu,
            "up",
        ]);
        ns.ip(&["addr", "add", &prefix.to_string(), "dev", "eth0"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &net.gateway_ip().to_string(),
            "dev",
            "eth0",
        ]);
        self.tables.endpoints.push(EndpointSpec {
            network: network.to_owned(),
            ip,
            mac: Some(mac),
            node: h.name.clone(),
            iface: EndpointIface::Veth(host_ifname.clone()),
            services: Vec::new(),
        });
        self.containers.push(Container {
            name: name.to_owned(),
            ns,
            host,
            network: network.to_owned(),
            ip,
            mac,
            host_ifname,
            gateway: net.gateway_ip(),
        });
        self.containers.len() - 1
    }

    pub fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    /// Starts overlayd on host `host` with the topology's tables and any extra flags.
    pub fn start_daemon(&mut self, host: usize, extra: &[&str]) {
        let tables = self.tables_path();
        let etcd = self.has_etcd().then(|| self.etcd_endpoint());
        let h = &mut self.hosts[host];
        assert!(h.daemon.is_none(), "daemon on {} already started", h.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .expect("daemon log");
        let mut cmd: Command = h.ns.command(overlayd_bin().to_str().expect("path"));
        cmd.args(["--node-name", &h.name, "--underlay", "ul0"])
            .arg("--run-dir")
            .arg(&h.run_dir)
            .arg("--bpffs")
            .arg(h.pins.root());
        match (etcd, self.lease_ttl) {
            (Some(etcd), Some(ttl)) => {
                cmd.args(["--etcd-endpoints", &etcd, "--lease-ttl", &ttl.to_string()]);
            }
            _ => {
                cmd.arg("--tables").arg(&tables);
            }
        }
        cmd.args(extra)
            .env("RUST_LOG", "info,overlay=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn overlayd");
        h.daemon = Some(ChildGuard::new(child, format!("overlayd on {}", h.name)));
    }

    /// Runs another overlayd in host `host`'s namespace with the topology's etcd flags and
    /// `args` (nothing else), until it exits or `timeout` passes (then it is killed).
    /// Returns its exit code (None if it had to be killed) and its output.
    pub fn run_extra_daemon(
        &self,
        host: usize,
        args: &[&str],
        timeout: Duration,
    ) -> (Option<i32>, String) {
        let h = &self.hosts[host];
        let mut cmd: Command = h.ns.command(overlayd_bin().to_str().expect("path"));
        if let (true, Some(ttl)) = (self.has_etcd(), self.lease_ttl) {
            cmd.args([
                "--etcd-endpoints",
                &self.etcd_endpoint(),
                "--lease-ttl",
                &ttl.to_string(),
            ]);
        }
        let out = self.dir.join(format!("extra-{}.log", unique_id()));
        let log = std::fs::File::create(&out).expect("extra daemon log");
        let child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn overlayd");
        let mut guard = ChildGuard::new(child, format!("extra overlayd on {}", h.name));
        let deadline = Instant::now() + timeout;
        let mut code = None;
        while Instant::now() < deadline {
            if !guard.is_running() {
                code = guard.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(1));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(guard);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        (code.and_then(|s| s.code()), text)
    }

    /// Where an extra daemon's pins go: inside the topology's bpffs root (removed with it).
    pub fn extra_pins(&self, name: &str) -> PinLayout {
        PinLayout::new(self.pins_root.join(name))
    }

    /// Stops the daemon on `host` with `signal`; returns whether it exited by itself.
    pub fn stop_daemon(&mut self, host: usize, signal: nix::sys::signal::Signal) -> bool {
        let h = &mut self.hosts[host];
        let mut d = h.daemon.take().expect("daemon not running");
        d.stop(signal, Duration::from_secs(10)).is_some()
    }

    /// Starts overlayd everywhere and waits until every host has installed the tables.
    pub fn start_all(&mut self, extra: &[&str]) {
        for i in 0..self.hosts.len() {
            self.start_daemon(i, extra);
        }
        for i in 0..self.hosts.len() {
            self.wait_converged(i);
        }
    }

    /// Waits until host `host` reports every endpoint installed (those of the tables file,
    /// or in etcd topologies every container of the topology).
    pub fn wait_converged(&mut self, host: usize) {
        let (want, want_local) = if self.has_etcd() {
            let all = self.containers.len() as u64;
            (
                all,
                self.containers.iter().filter(|c| c.host == host).count() as u64,
            )
        } else {
            let me = &self.hosts[host].name;
            let local = self
                .tables
                .endpoints
                .iter()
                .filter(|e| &e.node == me)
                .count();
            (self.tables.endpoints.len() as u64, local as u64)
        };
        self.wait_status(
            host,
            &format!("{want} endpoints ({want_local} local) installed"),
            |s| {
                s["endpoints"].as_u64() == Some(want)
                    && s["local_endpoints"].as_u64() == Some(want_local)
            },
        );
    }

    /// The daemon's last status report, if it wrote one.
    pub fn status(&self, host: usize) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.hosts[host].run_dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn daemon_log(&self, host: usize) -> String {
        std::fs::read_to_string(&self.hosts[host].log).unwrap_or_default()
    }

    /// Counters of host `host`'s datapath, read from its pinned maps.
    /// Host `host`'s VTEP table: (address, node id, pinned underlay next hop).
    pub fn vteps(&self, host: usize) -> Vec<(Ipv4Addr, u32, Option<Ipv4Addr>)> {
        VtepMap::open_pinned(&self.hosts[host].pins.maps())
            .and_then(|v| v.entries())
            .unwrap_or_else(|e| panic!("VTEPs of {}: {e}", self.hosts[host].name))
    }

    pub fn counters(&self, host: usize) -> CounterSnapshot {
        CounterMap::open_pinned(&self.hosts[host].pins.maps())
            .and_then(|c| c.snapshot())
            .unwrap_or_else(|e| panic!("counters of {}: {e}", self.hosts[host].name))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut d) = h.daemon.take() {
                d.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
            }
        }
        // Containers and hosts go with their namespaces (fields drop after this); pins and
        // files have to be removed explicitly.
        for h in &self.hosts {
            for e in datapath::remove(&h.pins, None) {
                eprintln!("cleanup of {}: {e}", h.name);
            }
        }
        // Pins of extra daemons (tests of duplicates).
        if let Ok(dir) = std::fs::read_dir(&self.pins_root) {
            for entry in dir.filter_map(Result::ok) {
                for e in datapath::remove(&PinLayout::new(entry.path()), None) {
                    eprintln!("cleanup of {}: {e}", entry.path().display());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.pins_root);
        if std::env::var_os("OVT_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
