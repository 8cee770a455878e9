//! Hosts, an underlay bridge and containers, all in namespaces, plus the overlayd on each host.
//!
//! ```text
//!   [container ns] eth0 --veth-- v<name> [host ns h<i>] ul0 --veth-- p<i> [underlay ns] br0
//! ```
//! Underlay addresses are 198.18.0.<i>/24, or only 2001:2:0:ff00::<i>/64 with
//! `TopologySpec::with_ipv6_underlay` (see `underlay`); overlay subnets come from
//! 198.19.0.0/16 (and 2001:2:0:1000::/52).

mod containers;
mod daemons;
mod underlay;

pub use underlay::{ready_switch6, underlay_ip6, CONTAINER_MTU6, ETCD_IP6, UNDERLAY6_PREFIX_LEN};

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use overlay_api::{CallError, Client, Request};
use overlay_daemon::{
    api,
    datapath::{self, PinLayout},
    tables::{ClusterTables, MacAddr, NetworkSpec, NodeSpec},
    vtep::Vteps,
};

use crate::{
    etcd::{Etcd, EtcdCluster, EtcdTls, OVERLAY_USER},
    netns::unique_id,
    pki::Pki,
    ChildGuard, Netns,
};

pub const UNDERLAY_MTU: u32 = 1500;

/// Container MTU on an IPv4 underlay (`CONTAINER_MTU6` on an IPv6 one;
/// `Topology::container_mtu` picks).
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
    /// TLS with client certificates and etcd authentication (multi-member clusters): the
    /// daemons and overlayctl connect as `etcd::OVERLAY_USER` by their certificate's CN.
    pub etcd_secure: bool,
    /// The hosts' underlay is IPv6 only (2001:2:0:ff00::<i>/64, etcd at `ETCD_IP6`), so
    /// their daemons pick IPv6 VTEPs. With etcd, one server only.
    pub ipv6_underlay: bool,
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
            etcd_secure: false,
            ipv6_underlay: false,
        }
    }

    /// An IPv6-only underlay: hosts at 2001:2:0:ff00::<i>/64 on `ul0` (no IPv4 address
    /// there; `Host::underlay_ip` is the VTEP their daemons pick), etcd at
    /// [2001:2:0:ff00::fe]:2379 in the underlay namespace when the spec has etcd (one
    /// server: a multi-member etcd cluster is not supported), else the tables file's nodes
    /// carry the IPv6 VTEPs.
    pub fn with_ipv6_underlay(mut self) -> Self {
        self.ipv6_underlay = true;
        self
    }

    /// A three-member etcd cluster with TLS, client certificates and roles.
    pub fn with_secure_etcd_cluster(mut self, lease_ttl: u32) -> Self {
        self = self.with_etcd_cluster(lease_ttl);
        self.etcd_secure = true;
        self
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
            subnet6: None,
            gateway6: None,
            name: name.to_owned(),
            vni,
            subnet: Some(subnet.parse().expect("subnet")),
            gateway: None,
        });
        self
    }

    /// An IPv6-only network.
    pub fn network6_only(mut self, name: &str, vni: u32, subnet6: &str) -> Self {
        self.networks.push(NetworkSpec {
            subnet6: Some(subnet6.parse().expect("IPv6 subnet")),
            gateway6: None,
            name: name.to_owned(),
            vni,
            subnet: None,
            gateway: None,
        });
        self
    }

    /// A dual-stack network: an IPv4 and an IPv6 subnet.
    pub fn network6(mut self, name: &str, vni: u32, subnet: &str, subnet6: &str) -> Self {
        self = self.network(name, vni, subnet);
        let net = self.networks.last_mut().expect("just added");
        net.subnet6 = Some(subnet6.parse().expect("IPv6 subnet"));
        self
    }
}

pub struct Host {
    pub name: String,
    pub ns: Netns,
    /// The host's IPv4 VTEP. Unspecified (0.0.0.0) on an IPv6 underlay: use `underlay_ip`.
    pub vtep_ip: Ipv4Addr,
    /// The host's address on the underlay, which its daemon picks as its VTEP: IPv4
    /// (= `vtep_ip`), or IPv6 on an IPv6 underlay.
    pub underlay_ip: IpAddr,
    pub pins: PinLayout,
    pub run_dir: PathBuf,
    pub log: PathBuf,
    /// etcd flags for this host's daemon instead of the topology's (other credentials).
    pub etcd_args: Option<Vec<String>>,
    /// The overlayd binary this host runs instead of the one under test (another release).
    pub overlayd: Option<PathBuf>,
    daemon: Option<ChildGuard>,
}

impl Host {
    pub fn daemon_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|d| d.is_running())
    }

    /// The running daemon's resident memory, KiB (from /proc).
    pub fn daemon_rss_kib(&self) -> Option<u64> {
        let pid = self.daemon.as_ref()?.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

pub struct Container {
    pub name: String,
    pub ns: Netns,
    pub host: usize,
    pub network: String,
    /// 0.0.0.0 on an IPv6-only network (its tests use `ip6()`).
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub host_ifname: String,
    /// 0.0.0.0 on an IPv6-only network.
    pub gateway: Ipv4Addr,
    /// The IPv6 address and gateway on a network with IPv6.
    pub ipv6: Option<overlay_api::Ipv6Assignment>,
}

impl Container {
    /// The container's IPv6 address (panics on an IPv4-only network).
    pub fn ip6(&self) -> std::net::Ipv6Addr {
        self.ipv6
            .unwrap_or_else(|| panic!("{} has no IPv6 address", self.name))
            .ip
    }
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
    /// The certificates of a secure cluster.
    pub pki: Option<Pki>,
    pub underlay: Netns,
    ipv6_underlay: bool,
}

impl Topology {
    pub fn new(spec: TopologySpec) -> Self {
        if spec.ipv6_underlay {
            assert!(
                spec.etcd_lease_ttl.is_none() || spec.etcd_members <= 1,
                "TopologySpec::with_ipv6_underlay supports one etcd server (with_etcd), not \
                 an etcd cluster: its members and certificates are IPv4 only"
            );
        }
        let id = unique_id();
        let dir = std::env::temp_dir().join(format!("ovt-{id}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let underlay = Netns::create(&format!("ovt{id}-ul"));
        underlay.add_switch();
        if spec.ipv6_underlay {
            underlay::ready_switch6(&underlay);
        }
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
            pki: None,
            underlay,
            ipv6_underlay: spec.ipv6_underlay,
        };
        if spec.etcd_lease_ttl.is_some() && spec.etcd_members > 1 {
            let mut namespaces = Vec::new();
            let mut ips = Vec::new();
            for i in 1..=spec.etcd_members {
                let ns = Netns::create(&format!("ovt{id}-e{i}"));
                let ip = Ipv4Addr::new(198, 18, 0, 250 + i as u8);
                underlay::plug_into_underlay(
                    &topo.underlay,
                    &ns,
                    "eth0",
                    &format!("e{i}"),
                    ip.into(),
                );
                ns.ip(&["link", "set", "lo", "up"]);
                namespaces.push(ns);
                ips.push(ip);
            }
            if spec.etcd_secure {
                let pki = Pki::new(
                    &dir.join("pki"),
                    &ips,
                    &["root", OVERLAY_USER, crate::etcd::STRANGER_USER],
                );
                let tls = EtcdTls::from_pki(&pki);
                let mut cluster = EtcdCluster::start_with(namespaces, &ips, Some(tls));
                cluster.enable_auth("/overlay/");
                topo.etcd_cluster = Some(cluster);
                topo.pki = Some(pki);
            } else {
                topo.etcd_cluster = Some(EtcdCluster::start(namespaces, &ips));
            }
        } else if spec.etcd_lease_ttl.is_some() && spec.ipv6_underlay {
            let addr = format!("{ETCD_IP6}/{UNDERLAY6_PREFIX_LEN}");
            topo.underlay
                .ip(&["-6", "addr", "add", &addr, "dev", "br0", "nodad"]);
            topo.etcd = Some(Etcd::start(&topo.underlay, ETCD_IP6));
        } else if spec.etcd_lease_ttl.is_some() {
            topo.underlay
                .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
            topo.etcd = Some(Etcd::start(&topo.underlay, ETCD_IP));
        }
        for i in 1..=spec.hosts {
            let name = format!("h{i}");
            let ns = Netns::create(&format!("ovt{id}-{name}"));
            // (Also the default for new links: the containers' host-side veths get no IPv6;
            // an IPv6 underlay turns it back on for ul0 alone.)
            ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
            let underlay_ip = underlay::host_underlay_ip(i, spec.ipv6_underlay);
            let port = format!("p{i}");
            underlay::plug_into_underlay(&topo.underlay, &ns, "ul0", &port, underlay_ip);
            let (vtep_ip, vteps) = match underlay_ip {
                IpAddr::V4(ip) => (ip, Vteps::v4(ip)),
                IpAddr::V6(ip6) => (
                    Ipv4Addr::UNSPECIFIED,
                    Vteps {
                        v4: None,
                        v6: Some(ip6),
                        prefer: Default::default(),
                    },
                ),
            };
            topo.tables.nodes.push(NodeSpec::new(name.clone(), vteps));
            let run_dir = dir.join(&name);
            std::fs::create_dir_all(&run_dir).expect("run dir");
            topo.hosts.push(Host {
                log: dir.join(format!("{name}.log")),
                pins: PinLayout::new(pins_root.join(&name)),
                name,
                ns,
                vtep_ip,
                underlay_ip,
                run_dir,
                etcd_args: None,
                overlayd: None,
                daemon: None,
            });
        }
        if topo.has_etcd() {
            for n in spec.networks.clone() {
                let (vni, subnet) = (n.vni.to_string(), n.subnet.map(|s| s.to_string()));
                let mut args = vec!["network", "create", &n.name, "--vni", &vni];
                if let Some(s) = &subnet {
                    args.extend(["--subnet", s]);
                }
                let subnet6 = n.subnet6.map(|s| s.to_string());
                if let Some(s6) = &subnet6 {
                    args.extend(["--subnet", s6]);
                }
                topo.overlayctl_ok(0, &args);
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

    /// How the daemons and overlayctl reach etcd: the endpoints and, on a secure cluster,
    /// the CA and `OVERLAY_USER`'s client certificate.
    pub fn etcd_args(&self) -> Vec<String> {
        let mut args = vec!["--etcd-endpoints".to_owned(), self.etcd_endpoint()];
        if let Some(pki) = &self.pki {
            let me = pki.client(OVERLAY_USER);
            for (flag, path) in [
                ("--etcd-cacert", pki.ca()),
                ("--etcd-cert", me.cert),
                ("--etcd-key", me.key),
            ] {
                args.push(flag.to_owned());
                args.push(path.display().to_string());
            }
        }
        args
    }

    /// Runs overlayctl on host `host` against the topology's etcd.
    pub fn overlayctl(&self, host: usize, args: &[&str]) -> std::process::Output {
        self.overlayctl_with(host, &self.etcd_args(), args)
    }

    /// Runs overlayctl on host `host` with `etcd` as its etcd flags (to try other
    /// credentials).
    pub fn overlayctl_with(
        &self,
        host: usize,
        etcd: &[String],
        args: &[&str],
    ) -> std::process::Output {
        self.overlayctl_command_with(host, etcd)
            .args(args)
            .output()
            .expect("run overlayctl")
    }

    /// overlayctl on host `host` with the topology's etcd and the host's socket, to add
    /// arguments to and run (several at once, say).
    pub fn overlayctl_command(&self, host: usize) -> std::process::Command {
        self.overlayctl_command_with(host, &self.etcd_args())
    }

    fn overlayctl_command_with(&self, host: usize, etcd: &[String]) -> std::process::Command {
        let bin = overlayd_bin().with_file_name("overlayctl");
        let mut cmd = self.hosts[host].ns.command(bin.to_str().expect("path"));
        cmd.args(etcd)
            .arg("--socket")
            .arg(api::socket_path(&self.hosts[host].run_dir));
        cmd
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
