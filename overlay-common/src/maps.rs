//! Keys and values of the datapath's BPF maps. The names of the maps themselves are here too,
//! so the daemon's typed wrappers and the eBPF programs cannot disagree.

/// Map names, as pinned under the node's bpffs directory.
pub mod names {
    pub const CONFIG: &str = "OVL_CONFIG";
    pub const NETWORKS: &str = "OVL_NETWORKS";
    pub const ENDPOINTS_BY_IP: &str = "OVL_EP_BY_IP";
    pub const ENDPOINTS_BY_MAC: &str = "OVL_EP_BY_MAC";
    pub const VTEPS: &str = "OVL_VTEPS";
    pub const LOCAL_IFACES: &str = "OVL_LOCAL_IFACES";
    pub const TRAFFIC: &str = "OVL_TRAFFIC";
    pub const DROPS: &str = "OVL_DROPS";
    pub const LB_SERVICES: &str = "OVL_LB_SERVICES";
    pub const LB_BACKENDS: &str = "OVL_LB_BACKENDS";
    pub const LB_MAGLEV: &str = "OVL_LB_MAGLEV";
    pub const LB_CT: &str = "OVL_LB_CT";
    pub const LB_REVNAT: &str = "OVL_LB_REVNAT";
    pub const SOCK_NETNS: &str = "OVL_SOCK_NETNS";
    pub const SOCK_FWD: &str = "OVL_SOCK_FWD";
    pub const SOCK_REV: &str = "OVL_SOCK_REV";
    pub const LB_BACKEND_ADDRS: &str = "OVL_LB_BACKEND_ADDRS";
    pub const LB_DIRECT: &str = "OVL_LB_DIRECT";
    pub const ENDPOINTS_BY_IP6: &str = "OVL_EP_BY_IP6";
    pub const LB6_SERVICES: &str = "OVL_LB6_SERVICES";
    pub const LB6_BACKENDS: &str = "OVL_LB6_BACKENDS";
    pub const SOCK6_FWD: &str = "OVL_SOCK6_FWD";
    pub const SOCK6_REV: &str = "OVL_SOCK6_REV";
    pub const LB6_CT: &str = "OVL_LB6_CT";
    pub const LB6_REVNAT: &str = "OVL_LB6_REVNAT";
    pub const LB6_BACKEND_ADDRS: &str = "OVL_LB6_BACKEND_ADDRS";
    pub const MONITOR: &str = "OVL_MONITOR";
    pub const MONITOR_BUCKET: &str = "OVL_MONITOR_BUCKET";
    pub const MONITOR_LOST: &str = "OVL_MONITOR_LOST";
    pub const EVENTS: &str = "OVL_EVENTS";
    pub const HOST_ADDRS: &str = "OVL_HOST_ADDRS";
    pub const SHAPED: &str = "OVL_SHAPED";

    /// Every map of the datapath.
    pub const ALL: &[&str] = &[
        CONFIG,
        NETWORKS,
        ENDPOINTS_BY_IP,
        ENDPOINTS_BY_MAC,
        VTEPS,
        LOCAL_IFACES,
        TRAFFIC,
        DROPS,
        LB_SERVICES,
        LB_BACKENDS,
        LB_MAGLEV,
        LB_CT,
        LB_REVNAT,
        SOCK_NETNS,
        SOCK_FWD,
        SOCK_REV,
        LB_BACKEND_ADDRS,
        LB_DIRECT,
        ENDPOINTS_BY_IP6,
        LB6_SERVICES,
        LB6_BACKENDS,
        SOCK6_FWD,
        SOCK6_REV,
        LB6_CT,
        LB6_REVNAT,
        LB6_BACKEND_ADDRS,
        MONITOR,
        MONITOR_BUCKET,
        MONITOR_LOST,
        EVENTS,
        HOST_ADDRS,
        SHAPED,
    ];
}

/// Program names (the function names in overlay-ebpf).
pub mod programs {
    /// TC ingress on the host side of each container veth.
    pub const FROM_CONTAINER: &str = "from_container";
    /// TC ingress on the underlay interface: VXLAN decapsulation.
    pub const FROM_UNDERLAY: &str = "from_underlay";
    /// XDP on the underlay interface: drops foreign VXLAN early.
    pub const UNDERLAY_XDP: &str = "underlay_xdp";
    /// cgroup hooks of socket-level balancing.
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    pub const SOCK_CONNECT6: &str = "sock_connect6";
    pub const SOCK_SENDMSG6: &str = "sock_sendmsg6";
    pub const SOCK_RECVMSG6: &str = "sock_recvmsg6";
    pub const SOCK_GETPEERNAME6: &str = "sock_getpeername6";
    /// cgroup sock hook: a closing socket forgets the VIP it was balanced from.
    pub const SOCK_RELEASE: &str = "sock_release";
}

/// Capacity of the endpoint tables (both keyed views).
pub const MAX_ENDPOINTS: u32 = 1 << 20;
/// Capacity of the VTEP table (hosts in the cluster).
pub const MAX_VTEPS: u32 = 1 << 16;
/// Capacity of the network table.
pub const MAX_NETWORKS: u32 = 1 << 12;
/// The host's own addresses (`HOST_ADDRS`): those of its interfaces a container may send to.
pub const MAX_HOST_ADDRS: u32 = 1024;
/// Capacity of the local interface identity table (containers on one host).
pub const MAX_LOCAL_IFACES: u32 = 1 << 16;

/// `Config.flags`: the datapath is configured and may forward.
pub const CONFIG_F_READY: u16 = 1;
/// `Config.flags`: services exist, so replies must be checked for reverse translation
/// (without services the datapath skips those lookups).
pub const CONFIG_F_LB: u16 = 2;
/// `Config.flags`: a kernel vxlan device shares the VXLAN port, so VXLAN with a VNI no
/// network of the overlay uses goes to the kernel untouched instead of being dropped.
pub const CONFIG_F_FOREIGN_VNI_PASS: u16 = 4;
/// `Config.flags`: the socket hooks are off, so the per-packet path carries every flow and
/// records direct flows to backends too (a VIP flow then never takes a live direct one's
/// tuple; with the hooks on, sockets keep their tuples apart themselves).
pub const CONFIG_F_TRACK_DIRECT: u16 = 8;
/// `Config.flags`: the daemon serves DNS on every network's gateway address, so a
/// container's UDP or TCP to its own network's gateway, port 53, goes to the host's stack
/// marked `DNS_MARK` (which the daemon routes to a local table: docs/dns.md).
pub const CONFIG_F_DNS: u16 = 16;
/// `Config.flags`: some container on this node has an ingress bandwidth limit (`SHAPED`),
/// so packets delivered to containers look their interface up there (without limits the
/// datapath skips that lookup).
pub const CONFIG_F_SHAPED: u16 = 32;

/// `skb->mark` of a container's DNS query to its gateway, handed to the host's stack. The
/// daemon's policy rule sends packets with exactly this mark to a table that delivers them
/// locally, to its sockets bound to the gateway addresses.
pub const DNS_MARK: u32 = 0x4789_0035;
/// The port containers send DNS queries to.
pub const DNS_PORT: u16 = 53;

/// The layout of the pinned maps this release's programs use, written into `CONFIG`. Layout
/// 1 (releases up to 0.1) had no version field (a 16-byte `CONFIG`); each layout change
/// bumps it, and a daemon finding maps of another layout migrates them (see
/// `overlay-daemon/src/datapath/compat.rs` and docs/upgrades.md).
pub const DATAPATH_LAYOUT: u32 = 3;

/// The node's datapath configuration: the single slot of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// This node's IPv4 VTEP address (network order key, see `wire::ipv4_key`); 0: none.
    pub vtep_ip: u32,
    /// ifindex of the underlay interface encapsulated traffic leaves through.
    pub underlay_ifindex: u32,
    /// MTU of the underlay interface.
    pub underlay_mtu: u32,
    /// VXLAN UDP destination port, host byte order.
    pub vxlan_port: u16,
    pub flags: u16,
    /// `DATAPATH_LAYOUT` of the daemon that wrote it (the programs do not read it).
    pub layout: u32,
    /// The most encapsulation adds on this node (`wire::VXLAN_OVERHEAD`, or
    /// `wire::VXLAN6_OVERHEAD` once it has an IPv6 VTEP): the MTU the datapath's "too big"
    /// answers advertise is the underlay's less this, whichever family a peer is reached in
    /// (the check itself uses the family of each packet's VTEP).
    pub overhead: u32,
    /// This node's IPv6 VTEP address; all zeros: none.
    pub vtep_ip6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Config>() == 40);

/// A network (one VNI): the value of `NETWORKS`, keyed by VNI (`u32`, host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Virtual gateway address that containers route through (network order key).
    pub gateway_ip: u32,
    /// Virtual gateway MAC the ARP and neighbour discovery responders answer with.
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Virtual IPv6 gateway address; all zeros on a network without IPv6.
    pub gateway_ip6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<NetworkInfo>() == 28);

/// Key of `ENDPOINTS_BY_IP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointIpKey {
    pub vni: u32,
    pub ip: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointIpKey>() == 8);

/// Key of `ENDPOINTS_BY_IP6`: an endpoint's IPv6 address (octets, network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointIp6Key {
    pub vni: u32,
    pub ip6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<EndpointIp6Key>() == 20);

/// Key of `ENDPOINTS_BY_MAC`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointMacKey {
    pub vni: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<EndpointMacKey>() == 12);

impl EndpointMacKey {
    pub const fn new(vni: u32, mac: [u8; 6]) -> Self {
        Self {
            vni,
            mac,
            _pad: [0; 2],
        }
    }
}

/// `EndpointInfo.flags`: the endpoint is on this host (deliver to `ifindex`).
pub const ENDPOINT_F_LOCAL: u16 = 1;

/// A VTEP address as the datapath keys it: an IPv6 address, or an IPv4 one mapped into IPv6
/// (`::ffff:a.b.c.d`, see `wire::vtep_v4`). One key for both families keeps one table of
/// VTEPs and one comparison in the spoofing checks.
pub type VtepKey = [u8; 16];

/// Where an endpoint lives: the value of both endpoint maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// VTEP of the host the endpoint is on, in the family this node reaches it by; ours
    /// (either family) for local endpoints.
    pub vtep: VtepKey,
    /// Host-side veth ifindex for local endpoints, 0 for remote ones.
    pub ifindex: u32,
    /// The endpoint's MAC address.
    pub mac: [u8; 6],
    pub flags: u16,
    /// The endpoint's IPv4 address (network order key).
    pub ip: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 32);

impl EndpointInfo {
    #[inline(always)]
    pub const fn is_local(&self) -> bool {
        self.flags & ENDPOINT_F_LOCAL != 0
    }
}

/// A remote host's VTEP: the value of `VTEPS`, keyed by the VTEP address (`VtepKey`). The
/// key's family is the outer header's: an IPv4-mapped key is reached over IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtepInfo {
    /// Stable small id of the node, for counters and the monitor's traces.
    pub node_id: u32,
    /// The underlay next hop towards the VTEP, of the key's family (IPv4 mapped like the
    /// key), handed to the neighbour layer so no route lookup runs per packet; all zeros:
    /// the kernel routes each packet.
    pub nexthop: VtepKey,
}
const _: () = assert!(core::mem::size_of::<VtepInfo>() == 20);

/// The identity of a local container interface, used for anti-spoofing: the value of
/// `LOCAL_IFACES`, keyed by the host-side veth ifindex (`u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalIface {
    pub vni: u32,
    /// The only source IPv4 the container may use (network order key).
    pub ip: u32,
    /// The only source MAC the container may use.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The only source IPv6 the container may use (besides its link-local address in
    /// neighbour discovery); all zeros: none.
    pub ip6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<LocalIface>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for NetworkInfo {}
    unsafe impl aya::Pod for EndpointIpKey {}
    unsafe impl aya::Pod for EndpointMacKey {}
    unsafe impl aya::Pod for EndpointIp6Key {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for VtepInfo {}
    unsafe impl aya::Pod for LocalIface {}
}
