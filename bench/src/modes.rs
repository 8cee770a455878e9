//! The datapaths under comparison, each as two hosts with one container each, identical
//! addressing (198.19.1.11 <-> 198.19.1.21) and container MTU (underlay 1500 - 50).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};

use crate::tunnel_md::{self, HostPlan};
use overlay_tests::{netns::unique_id, topology::CONTAINER_MTU, Netns, Topology, TopologySpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Mode {
    /// No overlay: hosts route container /32s to each other. The limit.
    Routed,
    /// flannel's vxlan backend: a kernel vxlan device, static FDB and neighbour entries.
    KernelVxlan,
    /// Cilium's tunnel mode: a collect_md vxlan device, TC programs setting the tunnel key.
    KernelVxlanBpf,
    /// This project with its defaults (on a veth underlay: TC only, no XDP).
    Overlay,
    /// This project with the XDP filter forced to native mode.
    OverlayXdpNative,
    /// This project with the XDP filter in generic (skb) mode.
    OverlayXdpSkb,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Routed => "routed",
            Mode::KernelVxlan => "kernel-vxlan",
            Mode::KernelVxlanBpf => "kernel-vxlan-bpf",
            Mode::Overlay => "overlay",
            Mode::OverlayXdpNative => "overlay-xdp-native",
            Mode::OverlayXdpSkb => "overlay-xdp-skb",
        }
    }
}

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 11);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 21);

/// A client and a server container on two hosts, whatever connects them.
pub struct Pair {
    pub mode: Mode,
    pub client: Netns,
    pub server: Netns,
    // Keeps the rest of the topology alive (dropped after the containers).
    _rest: Rest,
}

enum Rest {
    Overlay {
        _topology: Box<Topology>,
    },
    Plain {
        // Detached before the namespaces go.
        _programs: Vec<tunnel_md::Programs>,
        _hosts: Vec<Netns>,
        _underlay: Netns,
    },
}

impl Pair {
    /// Host `i` (0: the client's) of a plain pair.
    pub fn plain_host(&self, i: usize) -> Option<&Netns> {
        match &self._rest {
            Rest::Plain { _hosts, .. } => _hosts.get(i),
            Rest::Overlay { .. } => None,
        }
    }

    /// Builds the hosts, containers and datapath of `mode`. The namespaces come from the test
    /// scaffolding, which panics on a failed `ip` command; a datapath that cannot be loaded
    /// (the eBPF programs of kernel-vxlan-bpf) is an error that says so.
    pub fn build(mode: Mode) -> Result<Self> {
        match mode {
            Mode::Overlay | Mode::OverlayXdpNative | Mode::OverlayXdpSkb => Ok(overlay(mode)),
            Mode::Routed | Mode::KernelVxlan | Mode::KernelVxlanBpf => plain(mode),
        }
    }
}

fn overlay(mode: Mode) -> Pair {
    let mut t = Topology::new(TopologySpec::new(2).network("bench", 100, "198.19.1.0/24"));
    t.add_container(0, "a", "bench", 1);
    t.add_container(1, "b", "bench", 1);
    t.write_tables();
    let xdp = match mode {
        Mode::OverlayXdpNative => "native",
        Mode::OverlayXdpSkb => "skb",
        _ => "auto",
    };
    t.start_all(&["--xdp", xdp]);
    // Re-open the container namespaces by name; the topology owns and removes them.
    let client = Netns::open(t.container("a").ns.name());
    let server = Netns::open(t.container("b").ns.name());
    assert_eq!(t.container("a").ip, CLIENT_IP);
    assert_eq!(t.container("b").ip, SERVER_IP);
    Pair {
        mode,
        client,
        server,
        _rest: Rest::Overlay {
            _topology: Box::new(t),
        },
    }
}

fn plain(mode: Mode) -> Result<Pair> {
    let id = unique_id();
    let underlay = Netns::create(&format!("ovb{id}-ul"));
    underlay.add_switch();
    let mut hosts = Vec::new();
    let mut containers = Vec::new();
    let mtu = CONTAINER_MTU.to_string();
    for (i, ip) in [(1u8, CLIENT_IP), (2u8, SERVER_IP)] {
        let h = Netns::create(&format!("ovb{id}-h{i}"));
        h.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        h.sysctl("net/ipv4/ip_forward", "1");
        h.ip(&[
            "link",
            "add",
            "ul0",
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            &format!("p{i}"),
            "netns",
            underlay.name(),
        ]);
        h.ip(&["addr", "add", &format!("198.18.0.{i}/24"), "dev", "ul0"]);
        h.ip(&["link", "set", "ul0", "up"]);
        underlay.ip(&["link", "set", &format!("p{i}"), "master", "br0", "up"]);
        // Container: a /32 behind the host, default route via 198.19.1.1 on the host's veth.
        let c = Netns::create(&format!("ovb{id}-c{i}"));
        c.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        h.ip(&[
            "link",
            "add",
            "vc",
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            c.name(),
        ]);
        h.ip(&["addr", "add", "198.19.1.1/32", "dev", "vc"]);
        h.ip(&["link", "set", "vc", "up"]);
        h.ip(&["route", "add", &format!("{ip}/32"), "dev", "vc"]);
        c.ip(&["link", "set", "eth0", "mtu", &mtu, "up"]);
        c.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        c.ip(&["route", "add", "198.19.1.1", "dev", "eth0"]);
        c.ip(&["route", "add", "default", "via", "198.19.1.1"]);
        hosts.push(h);
        containers.push(c);
    }
    for (i, h) in hosts.iter().enumerate() {
        let me = i + 1;
        let peer = 3 - me;
        let peer_ip = if peer == 1 { CLIENT_IP } else { SERVER_IP };
        match mode {
            Mode::Routed => {
                h.ip(&[
                    "route",
                    "add",
                    &format!("{peer_ip}/32"),
                    "via",
                    &format!("198.18.0.{peer}"),
                ]);
            }
            Mode::KernelVxlanBpf => {
                // Cilium: one collect_md device per host; the programs choose the tunnel.
                h.ip(&[
                    "link",
                    "add",
                    tunnel_md::DEVICE,
                    "mtu",
                    &mtu,
                    "type",
                    "vxlan",
                    "external",
                    "dstport",
                    "4789",
                ]);
                h.ip(&["link", "set", tunnel_md::DEVICE, "up"]);
            }
            _ => {
                // flannel: vxlan device, /32 on it, onlink route + permanent neighbour + FDB.
                let mac = |n: usize| format!("02:00:00:00:00:{n:02x}");
                h.ip(&[
                    "link",
                    "add",
                    "vx0",
                    "address",
                    &mac(me),
                    "mtu",
                    &mtu,
                    "type",
                    "vxlan",
                    "id",
                    "100",
                    "dstport",
                    "4789",
                    "local",
                    &format!("198.18.0.{me}"),
                    "dev",
                    "ul0",
                    "nolearning",
                ]);
                h.ip(&["addr", "add", &format!("198.19.0.{me}/32"), "dev", "vx0"]);
                h.ip(&["link", "set", "vx0", "up"]);
                h.ip(&[
                    "route",
                    "add",
                    &format!("{peer_ip}/32"),
                    "via",
                    &format!("198.19.0.{peer}"),
                    "dev",
                    "vx0",
                    "onlink",
                ]);
                h.ip(&[
                    "neigh",
                    "add",
                    &format!("198.19.0.{peer}"),
                    "lladdr",
                    &mac(peer),
                    "dev",
                    "vx0",
                    "nud",
                    "permanent",
                ]);
                h.run(
                    "bridge",
                    &[
                        "fdb",
                        "append",
                        &mac(peer),
                        "dev",
                        "vx0",
                        "dst",
                        &format!("198.18.0.{peer}"),
                    ],
                );
            }
        }
    }
    let mut programs = Vec::new();
    if mode == Mode::KernelVxlanBpf {
        for (i, h) in hosts.iter().enumerate() {
            let peer = 1 - i;
            let ips = [CLIENT_IP, SERVER_IP];
            let plan = HostPlan {
                host: h,
                container: &containers[i],
                veth: "vc",
                local_ip: ips[i],
                remote_ip: ips[peer],
                remote_vtep: Ipv4Addr::new(198, 18, 0, peer as u8 + 1),
            };
            let loaded = tunnel_md::install(&plan)
                .with_context(|| format!("loading the kernel-vxlan-bpf programs on host {i}"))?;
            programs.push(loaded);
        }
    }
    let server = containers.pop().expect("server");
    let client = containers.pop().expect("client");
    Ok(Pair {
        mode,
        client,
        server,
        _rest: Rest::Plain {
            _programs: programs,
            _hosts: hosts,
            _underlay: underlay,
        },
    })
}
