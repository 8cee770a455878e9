//! The datapath's maps. Names come from overlay-common so the daemon's wrappers match.
//! Tables are pinned by name, so a restarted daemon finds them again with their contents.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use overlay_common::{
    lb::{
        Backend6Info, BackendInfo, Ct6Entry, CtEntry, DirectRemaps, Flow6Key, FlowKey, MaglevSlot,
        NetnsInfo, RevNat6Entry, RevNatEntry, Service6Key, ServiceInfo, ServiceKey, Sock6Addr,
        Sock6Key, SockAddr, SockKey, LB_FLOWS, MAGLEV_SLOTS, MAX_BACKENDS, MAX_NETNS, MAX_SERVICES,
        SOCK_FLOWS,
    },
    maps::{MAX_ENDPOINTS, MAX_HOST_ADDRS, MAX_LOCAL_IFACES, MAX_NETWORKS, MAX_VTEPS},
    monitor::{MonitorConfig, TokenBucket, EVENTS_BYTES, EVENT_KINDS},
    Config, Direction, DropReason, EndpointInfo, EndpointIp6Key, EndpointIpKey, EndpointMacKey,
    LocalIface, NetworkInfo, PacketCounter, VtepInfo, VtepKey,
};

/// Large tables allocate entries on demand instead of reserving memory for 1M endpoints.
const BPF_F_NO_PREALLOC: u32 = 1;
/// The daemon writes Maglev tables through a shared mapping instead of 65537 syscalls.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map(name = "OVL_CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "OVL_NETWORKS")]
pub static NETWORKS: HashMap<u32, NetworkInfo> = HashMap::pinned(MAX_NETWORKS, 0);

/// The host's own addresses (IPv4 ones mapped into IPv6, `::ffff:a.b.c.d`): what a
/// container's packet sent through its gateway may be handed to the host's stack for.
#[map(name = "OVL_HOST_ADDRS")]
pub static HOST_ADDRS: HashMap<[u8; 16], u8> = HashMap::pinned(MAX_HOST_ADDRS, 0);

#[map(name = "OVL_EP_BY_IP")]
pub static ENDPOINTS_BY_IP: HashMap<EndpointIpKey, EndpointInfo> =
    HashMap::pinned(MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

#[map(name = "OVL_EP_BY_IP6")]
pub static ENDPOINTS_BY_IP6: HashMap<EndpointIp6Key, EndpointInfo> =
    HashMap::pinned(MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

#[map(name = "OVL_EP_BY_MAC")]
pub static ENDPOINTS_BY_MAC: HashMap<EndpointMacKey, EndpointInfo> =
    HashMap::pinned(MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

#[map(name = "OVL_VTEPS")]
pub static VTEPS: HashMap<VtepKey, VtepInfo> = HashMap::pinned(MAX_VTEPS, BPF_F_NO_PREALLOC);

#[map(name = "OVL_LOCAL_IFACES")]
pub static LOCAL_IFACES: HashMap<u32, LocalIface> = HashMap::pinned(MAX_LOCAL_IFACES, 0);

/// Container interfaces (host-side veth ifindex) whose deliveries go through the interface's
/// qdisc, which shapes them (an ingress limit): looked up only while `CONFIG_F_SHAPED` says
/// some exist. The value is unused (1).
#[map(name = "OVL_SHAPED")]
pub static SHAPED: HashMap<u32, u32> = HashMap::pinned(MAX_LOCAL_IFACES, BPF_F_NO_PREALLOC);

#[map(name = "OVL_TRAFFIC")]
pub static TRAFFIC: PerCpuArray<PacketCounter> = PerCpuArray::pinned(Direction::COUNT, 0);

#[map(name = "OVL_DROPS")]
pub static DROPS: PerCpuArray<PacketCounter> = PerCpuArray::pinned(DropReason::COUNT, 0);

#[map(name = "OVL_LB_SERVICES")]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceInfo> =
    HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "OVL_LB_BACKENDS")]
pub static LB_BACKENDS: HashMap<u32, BackendInfo> =
    HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// Backend address -> id: a packet to one that is not through a VIP is a direct flow
/// (recorded on nodes that track them, `CONFIG_F_TRACK_DIRECT`).
#[map(name = "OVL_LB_BACKEND_ADDRS")]
pub static LB_BACKEND_ADDRS: HashMap<BackendInfo, u32> =
    HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// The same for IPv6 backends.
#[map(name = "OVL_LB6_BACKEND_ADDRS")]
pub static LB6_BACKEND_ADDRS: HashMap<Backend6Info, u32> =
    HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// Whether direct flows with a remapped source port may be live (written here only).
#[map(name = "OVL_LB_DIRECT")]
pub static LB_DIRECT: Array<DirectRemaps> = Array::pinned(1, 0);

/// Every service's Maglev table, each at the offset the daemon gave it: slot -> backend id
/// (0: none).
#[map(name = "OVL_LB_MAGLEV")]
pub static LB_MAGLEV: Array<MaglevSlot> = Array::pinned(MAGLEV_SLOTS, BPF_F_MMAPABLE);

#[map(name = "OVL_LB_CT")]
pub static LB_CT: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(LB_FLOWS, 0);

#[map(name = "OVL_LB_REVNAT")]
pub static LB_REVNAT: LruHashMap<FlowKey, RevNatEntry> = LruHashMap::pinned(LB_FLOWS, 0);

/// Container network namespaces (by netns cookie) and the networks they are on.
#[map(name = "OVL_SOCK_NETNS")]
pub static SOCK_NETNS: HashMap<u64, NetnsInfo> = HashMap::pinned(MAX_NETNS, BPF_F_NO_PREALLOC);

/// (socket, VIP:port) -> the backend its unconnected UDP sends go to.
#[map(name = "OVL_SOCK_FWD")]
pub static SOCK_FWD: LruHashMap<SockKey, SockAddr> = LruHashMap::pinned(SOCK_FLOWS, 0);

/// (socket, backend) -> the VIP:port the application addressed.
#[map(name = "OVL_SOCK_REV")]
pub static SOCK_REV: LruHashMap<SockKey, SockAddr> = LruHashMap::pinned(SOCK_FLOWS, 0);

#[map(name = "OVL_LB6_SERVICES")]
pub static LB6_SERVICES: HashMap<Service6Key, ServiceInfo> =
    HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "OVL_LB6_BACKENDS")]
pub static LB6_BACKENDS: HashMap<u32, Backend6Info> =
    HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// Per-packet balancing of IPv6 services, as `LB_CT` and `LB_REVNAT` for IPv4 ones.
#[map(name = "OVL_LB6_CT")]
pub static LB6_CT: LruHashMap<Flow6Key, Ct6Entry> = LruHashMap::pinned(LB_FLOWS, 0);

#[map(name = "OVL_LB6_REVNAT")]
pub static LB6_REVNAT: LruHashMap<Flow6Key, RevNat6Entry> = LruHashMap::pinned(LB_FLOWS, 0);

/// (socket, IPv6 VIP:port) -> the backend its unconnected UDP sends go to.
#[map(name = "OVL_SOCK6_FWD")]
pub static SOCK6_FWD: LruHashMap<Sock6Key, Sock6Addr> = LruHashMap::pinned(SOCK_FLOWS, 0);

/// (socket, IPv6 backend) -> the VIP:port the application addressed.
#[map(name = "OVL_SOCK6_REV")]
pub static SOCK6_REV: LruHashMap<Sock6Key, Sock6Addr> = LruHashMap::pinned(SOCK_FLOWS, 0);

/// The monitor's settings (flags 0: no monitor attached, no event work).
#[map(name = "OVL_MONITOR")]
pub static MONITOR: Array<MonitorConfig> = Array::pinned(1, 0);

/// Each CPU's token bucket for monitor events, one per kind (drops, traces): a flood of
/// traces never takes the drops' share.
#[map(name = "OVL_MONITOR_BUCKET")]
pub static MONITOR_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::pinned(EVENT_KINDS, 0);

/// Events not sent (over the rate, or the ring buffer full), per CPU and kind.
#[map(name = "OVL_MONITOR_LOST")]
pub static MONITOR_LOST: PerCpuArray<u64> = PerCpuArray::pinned(EVENT_KINDS, 0);

/// Monitor events for the daemon.
#[map(name = "OVL_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// The node configuration, if the daemon has marked it ready.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let cfg = CONFIG.get(0)?;
    if cfg.flags & overlay_common::maps::CONFIG_F_READY == 0 {
        return None;
    }
    Some(cfg)
}
