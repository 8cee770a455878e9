//! The datapaths under comparison, each as two hosts with one container each, identical
//! addressing (198.19.1.11 <-> 198.19.1.21, or 2001:2:0:1001::b <-> ::15 for the IPv6 modes)
//! and container MTU (`run_container_mtu`: underlay 1500 - 50, or 1500 - 70 for every mode
//! of a run that has an IPv6-underlay mode). The underlay is IPv4, except that `routed-ipv6`
//! routes IPv6 between the hosts and the `-ul6` modes carry VXLAN over an IPv6-only underlay
//! (2001:2:0:ff00::<i>, as `TopologySpec::with_ipv6_underlay` builds it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};

use crate::tunnel_md::{self, HostPlan};
use overlay_tests::{
    netns::unique_id,
    topology::{underlay_ip6, CONTAINER_MTU, CONTAINER_MTU6, UNDERLAY6_PREFIX_LEN},
    Netns, Topology, TopologySpec,
};

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
    /// This project with TCX links on the container veths too (`--tc-mode tcx`; by default
    /// they get clsact filters, which attach without waiting for a grace period).
    OverlayTcx,
    /// `routed` with IPv6 in the containers and between the hosts.
    #[value(name = "routed-ipv6")]
    Routed6,
    /// `kernel-vxlan` with IPv6 in the containers (the underlay stays IPv4).
    #[value(name = "kernel-vxlan-ipv6")]
    KernelVxlan6,
    /// `overlay` with IPv6 in the containers (a dual-stack network).
    #[value(name = "overlay-ipv6")]
    Overlay6,
    /// `kernel-vxlan` over an IPv6-only underlay (vxlan device with IPv6 `local`/FDB `dst`),
    /// IPv4 in the containers; the kernel's default of computed outer UDP checksums.
    #[value(name = "kernel-vxlan-ul6")]
    KernelVxlanUl6,
    /// `kernel-vxlan-ul6` with zero outer UDP checksums (`udp6zerocsumtx udp6zerocsumrx`), as
    /// this project sends them over IPv6.
    #[value(name = "kernel-vxlan-ul6-zerocsum")]
    KernelVxlanUl6ZeroCsum,
    /// `overlay` over an IPv6-only underlay (`TopologySpec::with_ipv6_underlay`: IPv6 VTEPs),
    /// IPv4 in the containers.
    #[value(name = "overlay-ul6")]
    OverlayUl6,
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
            Mode::OverlayTcx => "overlay-tcx",
            Mode::Routed6 => "routed-ipv6",
            Mode::KernelVxlan6 => "kernel-vxlan-ipv6",
            Mode::Overlay6 => "overlay-ipv6",
            Mode::KernelVxlanUl6 => "kernel-vxlan-ul6",
            Mode::KernelVxlanUl6ZeroCsum => "kernel-vxlan-ul6-zerocsum",
            Mode::OverlayUl6 => "overlay-ul6",
        }
    }

    /// Whether the containers talk IPv6.
    pub fn ipv6(self) -> bool {
        matches!(self, Mode::Routed6 | Mode::KernelVxlan6 | Mode::Overlay6)
    }

    /// Whether VXLAN crosses an IPv6-only underlay between the hosts (the `-ul6` modes).
    pub fn ipv6_underlay(self) -> bool {
        matches!(
            self,
            Mode::KernelVxlanUl6 | Mode::KernelVxlanUl6ZeroCsum | Mode::OverlayUl6
        )
    }

    /// The mode a mode is compared with: `base` (an IPv4 mode), its IPv6 counterpart for
    /// the modes with IPv6 in the containers, or for the IPv6-underlay modes its
    /// IPv6-underlay counterpart (`routed` has no encapsulation, so no underlay family: the
    /// IPv6-underlay modes are compared with `routed` itself, at the same container MTU).
    pub fn baseline(self, base: Mode) -> Mode {
        match (self.ipv6(), self.ipv6_underlay(), base) {
            (true, _, Mode::Routed) => Mode::Routed6,
            (true, _, Mode::KernelVxlan) => Mode::KernelVxlan6,
            (true, _, Mode::Overlay) => Mode::Overlay6,
            (_, true, Mode::KernelVxlan) => Mode::KernelVxlanUl6,
            (_, true, Mode::Overlay) => Mode::OverlayUl6,
            _ => base,
        }
    }

    /// The container MTU of this mode on its own: underlay 1500 less the VXLAN overhead of
    /// its underlay's family.
    pub fn container_mtu(self) -> u32 {
        if self.ipv6_underlay() {
            CONTAINER_MTU6
        } else {
            CONTAINER_MTU
        }
    }
}

/// The container MTU of every mode of a run: the smallest any of them needs (1430 as soon
/// as an IPv6-underlay mode is in it, else 1450), so that every mode carries packets of the
/// same size and every ratio between two of them is like for like.
pub fn run_container_mtu(modes: &[Mode]) -> u32 {
    modes
        .iter()
        .map(|m| m.container_mtu())
        .min()
        .unwrap_or(CONTAINER_MTU)
}

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 11);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 21);
const SUBNET6: &str = "2001:2:0:1001::/64";
/// The same offsets in the IPv6 subnet (11 and 21).
const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1001, 0, 0, 0, 0xb);
const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1001, 0, 0, 0, 0x15);
const GATEWAY6: &str = "2001:2:0:1001::1";

/// A client and a server container on two hosts, whatever connects them.
pub struct Pair {
    pub mode: Mode,
    pub client: Netns,
    pub server: Netns,
    /// The containers' addresses, of the mode's family.
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
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

    /// Builds the hosts, containers and datapath of `mode`, with the mode's own container
    /// MTU.
    pub fn build(mode: Mode) -> Result<Self> {
        Self::build_with_mtu(mode, mode.container_mtu())
    }

    /// Builds the hosts, containers and datapath of `mode` with container MTU `mtu` (at most
    /// the mode's own, `Mode::container_mtu`). The namespaces come from the test
    /// scaffolding, which panics on a failed `ip` command; a datapath that cannot be loaded
    /// (the eBPF programs of kernel-vxlan-bpf) is an error that says so.
    pub fn build_with_mtu(mode: Mode, mtu: u32) -> Result<Self> {
        anyhow::ensure!(
            mtu <= mode.container_mtu(),
            "{}: container MTU {mtu} above the {} its underlay carries",
            mode.label(),
            mode.container_mtu()
        );
        match mode {
            Mode::Overlay
            | Mode::OverlayXdpNative
            | Mode::OverlayXdpSkb
            | Mode::OverlayTcx
            | Mode::Overlay6
            | Mode::OverlayUl6 => Ok(overlay(mode, mtu)),
            Mode::Routed
            | Mode::KernelVxlan
            | Mode::KernelVxlanBpf
            | Mode::Routed6
            | Mode::KernelVxlan6
            | Mode::KernelVxlanUl6
            | Mode::KernelVxlanUl6ZeroCsum => plain(mode, mtu),
        }
    }
}

fn overlay(mode: Mode, mtu: u32) -> Pair {
    let spec = TopologySpec::new(2);
    let spec = if mode.ipv6_underlay() {
        spec.with_ipv6_underlay()
    } else {
        spec
    };
    let spec = if mode.ipv6() {
        spec.network6("bench", 100, "198.19.1.0/24", SUBNET6)
    } else {
        spec.network("bench", 100, "198.19.1.0/24")
    };
    let mut t = Topology::new(spec);
    t.add_container(0, "a", "bench", 1);
    t.add_container(1, "b", "bench", 1);
    if mode.ipv6_underlay() {
        for h in &t.hosts {
            assert!(
                h.underlay_ip.is_ipv6(),
                "{}: {} has the underlay address {}",
                mode.label(),
                h.name,
                h.underlay_ip
            );
        }
    }
    // The run's MTU where it is below the topology's (an IPv4-underlay mode in a run with an
    // IPv6-underlay one): both ends of each container's veth, before the daemons start.
    if mtu != t.container_mtu() {
        let mtu = mtu.to_string();
        for c in &t.containers {
            t.hosts[c.host]
                .ns
                .ip(&["link", "set", "dev", &c.host_ifname, "mtu", &mtu]);
            c.ns.ip(&["link", "set", "dev", "eth0", "mtu", &mtu]);
        }
    }
    t.write_tables();
    let xdp = match mode {
        Mode::OverlayXdpNative => "native",
        Mode::OverlayXdpSkb => "skb",
        _ => "auto",
    };
    let tc = match mode {
        Mode::OverlayTcx => "tcx",
        _ => "auto",
    };
    t.start_all(&["--xdp", xdp, "--tc-mode", tc]);
    // Re-open the container namespaces by name; the topology owns and removes them.
    let client = Netns::open(t.container("a").ns.name());
    let server = Netns::open(t.container("b").ns.name());
    assert_eq!(t.container("a").ip, CLIENT_IP);
    assert_eq!(t.container("b").ip, SERVER_IP);
    let (client_ip, server_ip) = if mode.ipv6() {
        assert_eq!(t.container("a").ip6(), CLIENT_IP6);
        assert_eq!(t.container("b").ip6(), SERVER_IP6);
        (CLIENT_IP6.into(), SERVER_IP6.into())
    } else {
        (CLIENT_IP.into(), SERVER_IP.into())
    };
    Pair {
        mode,
        client,
        server,
        client_ip,
        server_ip,
        _rest: Rest::Overlay {
            _topology: Box::new(t),
        },
    }
}

/// The addresses of a plain pair's family: container `i` (1: client, 2: server), the
/// gateway on each host's container veth, a host's address on the vxlan device or (routed)
/// the underlay, and the prefix length of a single address.
struct Plan {
    v6: bool,
}

impl Plan {
    fn container(&self, i: usize) -> IpAddr {
        match (self.v6, i) {
            (false, 1) => CLIENT_IP.into(),
            (false, _) => SERVER_IP.into(),
            (true, 1) => CLIENT_IP6.into(),
            (true, _) => SERVER_IP6.into(),
        }
    }
    fn gateway(&self) -> &'static str {
        if self.v6 {
            GATEWAY6
        } else {
            "198.19.1.1"
        }
    }
    fn vxlan_host(&self, i: usize) -> String {
        if self.v6 {
            format!("2001:2:0:1000::{i}")
        } else {
            format!("198.19.0.{i}")
        }
    }
    fn underlay_host(&self, i: usize) -> String {
        if self.v6 {
            format!("2001:2:0:ff::{i}")
        } else {
            format!("198.18.0.{i}")
        }
    }
    fn single(&self, addr: impl std::fmt::Display) -> String {
        format!("{addr}/{}", if self.v6 { 128 } else { 32 })
    }
    /// `ip` arguments before a command: the family, and for IPv6 addresses no DAD wait.
    fn family(&self) -> &'static str {
        if self.v6 {
            "-6"
        } else {
            "-4"
        }
    }
    fn addr_add(&self, ns: &Netns, addr: &str, dev: &str) {
        let mut args = vec![self.family(), "addr", "add", addr, "dev", dev];
        if self.v6 {
            args.push("nodad");
        }
        ns.ip(&args);
    }
}

/// Host `i`'s (1-based) address on the IPv6-only underlay of the `-ul6` modes,
/// 2001:2:0:ff00::<i>, the address `TopologySpec::with_ipv6_underlay` gives it.
fn underlay6_host(i: usize) -> Ipv6Addr {
    underlay_ip6(i as u16)
}

fn plain(mode: Mode, mtu: u32) -> Result<Pair> {
    let id = unique_id();
    let plan = Plan { v6: mode.ipv6() };
    let f = plan.family();
    let ul6 = mode.ipv6_underlay();
    let underlay = Netns::create(&format!("ovb{id}-ul"));
    underlay.add_switch();
    if ul6 {
        // As the test topology's IPv6 underlay.
        overlay_tests::topology::ready_switch6(&underlay);
    }
    let mut hosts = Vec::new();
    let mut containers = Vec::new();
    let mtu = mtu.to_string();
    for i in [1usize, 2] {
        let ip = plan.container(i);
        let h = Netns::create(&format!("ovb{id}-h{i}"));
        if plan.v6 {
            h.sysctl("net/ipv6/conf/all/forwarding", "1");
        } else {
            h.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        }
        h.sysctl("net/ipv4/ip_forward", "1");
        h.add_veth("ul0", "1500", &format!("p{i}"), underlay.name());
        if ul6 {
            // IPv6 only on the underlay (IPv6 stays off on the host's other links).
            for dev in ["ul0", "lo"] {
                h.sysctl(&format!("net/ipv6/conf/{dev}/disable_ipv6"), "0");
            }
            let addr = format!("{}/{UNDERLAY6_PREFIX_LEN}", underlay6_host(i));
            h.ip(&["-6", "addr", "add", &addr, "dev", "ul0", "nodad"]);
        } else {
            h.ip(&["addr", "add", &format!("198.18.0.{i}/24"), "dev", "ul0"]);
        }
        if mode == Mode::Routed6 {
            plan.addr_add(&h, &format!("{}/64", plan.underlay_host(i)), "ul0");
        }
        h.ip(&["link", "set", "ul0", "up"]);
        underlay.ip(&["link", "set", &format!("p{i}"), "master", "br0", "up"]);
        // Container: a /32 (/128) behind the host, default route via the gateway address on
        // the host's veth.
        let c = Netns::create(&format!("ovb{id}-c{i}"));
        if !plan.v6 {
            c.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        }
        h.add_veth("vc", &mtu, "eth0", c.name());
        plan.addr_add(&h, &plan.single(plan.gateway()), "vc");
        h.ip(&["link", "set", "vc", "up"]);
        h.ip(&[f, "route", "add", &plan.single(ip), "dev", "vc"]);
        c.ip(&["link", "set", "eth0", "mtu", &mtu, "up"]);
        plan.addr_add(&c, &plan.single(ip), "eth0");
        c.ip(&[f, "route", "add", plan.gateway(), "dev", "eth0"]);
        c.ip(&[f, "route", "add", "default", "via", plan.gateway()]);
        hosts.push(h);
        containers.push(c);
    }
    for (i, h) in hosts.iter().enumerate() {
        let me = i + 1;
        let peer = 3 - me;
        let peer_ip = plan.single(plan.container(peer));
        match mode {
            Mode::Routed | Mode::Routed6 => {
                h.ip(&[
                    f,
                    "route",
                    "add",
                    &peer_ip,
                    "via",
                    &plan.underlay_host(peer),
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
                // The VTEPs are the hosts' underlay addresses, IPv4 or (-ul6) IPv6.
                let vtep = |n: usize| {
                    if ul6 {
                        underlay6_host(n).to_string()
                    } else {
                        format!("198.18.0.{n}")
                    }
                };
                let mac = |n: usize| format!("02:00:00:00:00:{n:02x}");
                let (local, my_mac) = (vtep(me), mac(me));
                let mut args = vec![
                    "link",
                    "add",
                    "vx0",
                    "address",
                    &my_mac,
                    "mtu",
                    &mtu,
                    "type",
                    "vxlan",
                    "id",
                    "100",
                    "dstport",
                    "4789",
                    "local",
                    &local,
                    "dev",
                    "ul0",
                    "nolearning",
                ];
                if mode == Mode::KernelVxlanUl6ZeroCsum {
                    // Without these the kernel computes the outer checksum over IPv6 and
                    // drops received packets whose checksum is zero.
                    args.extend(["udp6zerocsumtx", "udp6zerocsumrx"]);
                }
                h.ip(&args);
                plan.addr_add(h, &plan.single(plan.vxlan_host(me)), "vx0");
                h.ip(&["link", "set", "vx0", "up"]);
                let hop = plan.vxlan_host(peer);
                h.ip(&[
                    f, "route", "add", &peer_ip, "via", &hop, "dev", "vx0", "onlink",
                ]);
                h.ip(&[
                    f,
                    "neigh",
                    "add",
                    &hop,
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
                        &vtep(peer),
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
        client_ip: plan.container(1),
        server_ip: plan.container(2),
        _rest: Rest::Plain {
            _programs: programs,
            _hosts: hosts,
            _underlay: underlay,
        },
    })
}
