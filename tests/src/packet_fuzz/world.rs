//! The fuzzer's cluster, as plain Rust tables: what the datapath's maps are loaded with, and
//! what the invariants are computed from, independently of the programs.

use std::net::Ipv4Addr;

use overlay_api::MacAddr;

use super::frames::{Mac, PROTO_TCP, PROTO_UDP};

pub const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const VTEP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VTEP_C: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// Endpoints behind it are in the tables, the VTEP itself is not (a node that left).
pub const UNKNOWN_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
pub const VXLAN_PORT: u16 = 4789;
pub const UNDERLAY_MTU: u32 = 1500;
/// Ifindex of the loopback in the fuzzer's namespace: an interface with no identity.
pub const LOOPBACK: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// On this host behind this host-side ifindex.
    Local(u32),
    Remote(Ipv4Addr),
}

#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub loc: Loc,
}

impl Endpoint {
    pub fn is_local(&self) -> bool {
        matches!(self.loc, Loc::Local(_))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Network {
    pub vni: u32,
    pub gw_ip: Ipv4Addr,
    pub gw_mac: Mac,
}

/// A local container interface: what it may send as.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub ifindex: u32,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub vni: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub backends: Vec<(Ipv4Addr, u16)>,
}

#[derive(Clone, Debug)]
pub struct World {
    pub networks: Vec<Network>,
    /// Known remote VTEPs and their pinned next hop.
    pub vteps: Vec<(Ipv4Addr, Option<Ipv4Addr>)>,
    pub endpoints: Vec<Endpoint>,
    pub identities: Vec<Identity>,
    pub services: Vec<Service>,
    /// Interfaces test frames enter on (ifindex, MTU): veths in the fuzzer's namespace.
    pub devices: Vec<(u32, u32)>,
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn mac_of(addr: Ipv4Addr) -> Mac {
    MacAddr::from_ip(addr).0
}

impl World {
    /// Three networks (one with the largest VNI), four senders with identities (one in a VNI
    /// without a network), a local endpoint without an interface, remote endpoints behind two
    /// known VTEPs and one unknown, an endpoint sharing another VNI's MAC, and services.
    pub fn standard() -> Self {
        let networks = [
            (100, ip(10, 1, 0, 1)),
            (200, ip(10, 2, 0, 1)),
            (0xff_ffff, ip(10, 3, 0, 1)),
        ]
        .into_iter()
        .map(|(vni, gw_ip)| Network {
            vni,
            gw_ip,
            gw_mac: MacAddr::gateway(vni).0,
        })
        .collect();
        let local = |vni, addr: Ipv4Addr, ifindex| Endpoint {
            vni,
            ip: addr,
            mac: mac_of(addr),
            loc: Loc::Local(ifindex),
        };
        let remote = |vni, addr: Ipv4Addr, vtep| Endpoint {
            vni,
            ip: addr,
            mac: mac_of(addr),
            loc: Loc::Remote(vtep),
        };
        let endpoints = vec![
            local(100, ip(10, 1, 0, 11), 2),
            local(100, ip(10, 1, 0, 12), 3),
            local(200, ip(10, 2, 0, 11), 4),
            local(0xff_ffff, ip(10, 3, 0, 11), 5),
            local(300, ip(10, 4, 0, 11), 6),
            // Attached elsewhere in the host's life: a delivery target only.
            local(100, ip(10, 1, 0, 15), 40),
            remote(100, ip(10, 1, 0, 21), VTEP_B),
            remote(100, ip(10, 1, 0, 22), VTEP_C),
            remote(100, ip(10, 1, 0, 29), UNKNOWN_VTEP),
            remote(200, ip(10, 2, 0, 21), VTEP_B),
            // Same IP and MAC as 10.1.0.21 of VNI 100, but in VNI 200 and behind C.
            remote(200, ip(10, 1, 0, 21), VTEP_C),
            remote(0xff_ffff, ip(10, 3, 0, 21), VTEP_C),
        ];
        let identities = endpoints
            .iter()
            .filter_map(|e| match e.loc {
                Loc::Local(ifindex) if ifindex < 40 => Some(Identity {
                    ifindex,
                    vni: e.vni,
                    ip: e.ip,
                    mac: e.mac,
                }),
                _ => None,
            })
            .collect();
        let vip = ip(10, 96, 0, 10);
        let services = vec![
            Service {
                vni: 100,
                vip,
                port: 80,
                proto: PROTO_TCP,
                backends: vec![
                    (ip(10, 1, 0, 12), 8080),
                    (ip(10, 1, 0, 21), 8080),
                    (ip(10, 1, 0, 29), 8080),
                ],
            },
            Service {
                vni: 100,
                vip,
                port: 53,
                proto: PROTO_UDP,
                backends: vec![],
            },
            Service {
                vni: 100,
                vip: ip(10, 96, 0, 11),
                port: 443,
                proto: PROTO_TCP,
                backends: vec![],
            },
            Service {
                vni: 100,
                vip: ip(10, 96, 0, 11),
                port: 5353,
                proto: PROTO_UDP,
                backends: vec![(ip(10, 1, 0, 22), 53), (ip(10, 1, 0, 11), 53)],
            },
        ];
        Self {
            networks,
            vteps: vec![(VTEP_B, None), (VTEP_C, Some(ip(198, 18, 0, 254)))],
            endpoints,
            identities,
            services,
            devices: vec![(2, 1500), (3, 1500), (4, 1500), (5, 1500), (6, 1500)],
        }
    }

    pub fn network(&self, vni: u32) -> Option<&Network> {
        self.networks.iter().find(|n| n.vni == vni)
    }

    pub fn vtep_known(&self, addr: Ipv4Addr) -> bool {
        self.vteps.iter().any(|(v, _)| *v == addr)
    }

    pub fn by_mac(&self, vni: u32, mac: Mac) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.vni == vni && e.mac == mac)
    }

    pub fn by_ip(&self, vni: u32, addr: Ipv4Addr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.vni == vni && e.ip == addr)
    }

    pub fn identity(&self, ifindex: u32) -> Option<&Identity> {
        self.identities.iter().find(|i| i.ifindex == ifindex)
    }

    pub fn is_vip(&self, vni: u32, addr: Ipv4Addr) -> bool {
        self.services.iter().any(|s| s.vni == vni && s.vip == addr)
    }

    pub fn service(&self, vni: u32, vip: Ipv4Addr, port: u16, proto: u8) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.vni == vni && s.vip == vip && s.port == port && s.proto == proto)
    }

    /// Ifindexes a container frame may enter on: every sender, and the loopback.
    pub fn senders(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.devices.iter().map(|(i, _)| *i).collect();
        v.push(LOOPBACK);
        v
    }
}
