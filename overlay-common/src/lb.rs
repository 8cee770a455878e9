//! Service load balancing (Minuteman-style): the keys and values of the LB maps. A packet to
//! a service's VIP:port picks a backend from the service's Maglev table, the flow is pinned
//! in connection tracking, and replies are translated back to the VIP.

/// Slots of one service's Maglev lookup table (a prime, as Maglev requires).
pub const MAGLEV_TABLE_SIZE: u32 = 65537;
/// Services one node can balance (each has `MAGLEV_TABLE_SIZE` slots in `LB_MAGLEV`).
pub const MAX_SERVICES: u32 = 64;
/// Backends of all services together (ids index `LB_BACKENDS`; 0 marks an empty slot).
pub const MAX_BACKENDS: u32 = 1 << 16;
/// Flows remembered by connection tracking (LRU: the oldest idle flows are evicted first).
pub const LB_FLOWS: u32 = 1 << 17;

/// One slot of a Maglev table in `LB_MAGLEV`. Array elements are 8-byte aligned in the
/// kernel, so the padding is explicit: the daemon writes the table through a memory mapping
/// and must see the same layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaglevSlot {
    /// Backend id (`LB_BACKENDS` key); 0 for none.
    pub backend_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<MaglevSlot>() == 8);

/// Key of `LB_SERVICES`: a VIP:port in one network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vni: u32,
    /// Virtual IP (network order key).
    pub vip: u32,
    /// Port, host byte order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 12);

/// A service as the datapath sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The service's table in `LB_MAGLEV` starts at `slot * MAGLEV_TABLE_SIZE`.
    pub slot: u32,
    /// Live backends; 0 makes the datapath answer with a TCP reset or ICMP unreachable.
    pub backends: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 8);

/// A backend: the value of `LB_BACKENDS`, keyed by backend id (`u32`, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    /// Backend address (network order key).
    pub ip: u32,
    /// Backend port, host byte order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<BackendInfo>() == 8);

/// A flow as seen in one direction: key of `LB_CT` (client -> VIP) and `LB_REVNAT`
/// (backend -> client).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub vni: u32,
    pub src_ip: u32,
    pub dst_ip: u32,
    /// Ports in host byte order.
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 20);

/// The backend a flow was given: the value of `LB_CT`. The address is kept with the id so a
/// recycled id is noticed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub backend_id: u32,
    pub backend: BackendInfo,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 12);

/// What a reply's source becomes again: the value of `LB_REVNAT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatEntry {
    pub vip: u32,
    /// Service port, host byte order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNatEntry>() == 8);

/// The 5-tuple hash Maglev indexes with (a murmur3-style mix: cheap in BPF, well spread).
#[inline(always)]
pub const fn flow_hash(src_ip: u32, dst_ip: u32, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x9747_b28c;
    h = mix(h, src_ip);
    h = mix(h, dst_ip);
    h = mix(h, ((src_port as u32) << 16) | dst_port as u32);
    h = mix(h, proto as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for MaglevSlot {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for RevNatEntry {}
}
