//! Service load balancing (Minuteman-style): the keys and values of the LB maps. A packet to
//! a service's VIP:port picks a backend from the service's Maglev table, the flow is pinned
//! in connection tracking, and replies are translated back to the VIP.

/// Sizes a service's Maglev table can have (primes, as Maglev requires), each for up to
/// `size / 100` backends (Maglev's M >= 100 N keeps the imbalance near 1 %). A table keeps
/// its size while its backends change within that bound, so a change moves only the share
/// of the backends that came or went.
pub const MAGLEV_SIZES: [u32; 5] = [307, 1021, 4093, 16381, 65537];
/// Slots of every service's table together in `LB_MAGLEV` (the daemon places each table
/// at an offset of its own): 32 MiB, e.g. 13 000 services of up to 3 backends.
pub const MAGLEV_SLOTS: u32 = 1 << 22;
/// Services one node can balance.
pub const MAX_SERVICES: u32 = 1 << 16;

/// The table size a service with `backends` backends is given: the smallest with at least
/// 100 slots per backend (the largest past 655 backends).
pub const fn maglev_size_for(backends: usize) -> u32 {
    let mut i = 0;
    while i < MAGLEV_SIZES.len() {
        if MAGLEV_SIZES[i] as usize >= backends * 100 {
            return MAGLEV_SIZES[i];
        }
        i += 1;
    }
    MAGLEV_SIZES[MAGLEV_SIZES.len() - 1]
}

/// Whether a table of `size` slots still suits `backends` backends: big enough (or the
/// largest), and not so big that a class two sizes smaller would do (memory is shared).
pub const fn maglev_size_fits(size: u32, backends: usize) -> bool {
    let wanted = maglev_size_for(backends);
    size >= wanted && (size as u64) < (wanted as u64) * 16
}
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
    /// The service's table is `LB_MAGLEV[table_offset .. table_offset + table_size]`.
    pub table_offset: u32,
    pub table_size: u32,
    /// Live backends; 0 makes the datapath answer with a TCP reset or ICMP unreachable.
    pub backends: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 16);

/// A backend of either family (`A`: `u32` for IPv4, `[u32; 4]` for IPv6): the value of
/// `LB_BACKENDS`/`LB6_BACKENDS`, keyed by backend id (`u32`, never 0), and the key of
/// `LB_BACKEND_ADDRS` (-> its id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendOf<A> {
    /// Backend address (network order key; for IPv6 as `Service6Key::vip`).
    pub ip: A,
    /// Backend port, host byte order.
    pub port: u16,
    pub _pad: u16,
}
/// An IPv4 backend.
pub type BackendInfo = BackendOf<u32>;
const _: () = assert!(core::mem::size_of::<BackendInfo>() == 8);

/// A flow as seen in one direction: key of `LB_CT` (client -> VIP) and `LB_REVNAT`
/// (backend -> client); `A` as in `BackendOf`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey<A = u32> {
    pub vni: u32,
    pub src_ip: A,
    pub dst_ip: A,
    /// Ports in host byte order.
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 20);
/// Key of `LB6_CT` and `LB6_REVNAT`.
pub type Flow6Key = FlowKey<[u32; 4]>;
const _: () = assert!(core::mem::size_of::<Flow6Key>() == 44);

/// `CtEntry.flags`/`RevNatEntry.flags`: the flow is closing and ends after
/// `CT_CLOSE_TIMEOUT_NS`; a new SYN on its tuple starts a new flow. On a flow entry: the
/// client sent a FIN or RST. On a reverse entry, which decides whether the translated tuple
/// is still held: a RST, or FINs both ways (a half-closed connection still holds its tuple,
/// whichever side closed first).
pub const CT_F_CLOSING: u16 = 1;
/// `RevNatEntry.flags`: the client's FIN was seen.
pub const CT_F_FIN_CLIENT: u16 = 8;
/// `RevNatEntry.flags`: the server's FIN was seen.
pub const CT_F_FIN_SERVER: u16 = 16;

/// The flags a reverse entry gets from a packet with TCP `flags` (`TCP_FIN`/`TCP_RST` bits)
/// going the direction whose FIN is `fin`: closing at a RST, or once both FINs were seen.
#[inline(always)]
pub const fn rev_close_flags(rev_flags: u16, tcp_flags: u8, fin: u16) -> u16 {
    if tcp_flags & crate::wire::TCP_RST != 0 {
        return rev_flags | CT_F_CLOSING;
    }
    if tcp_flags & crate::wire::TCP_FIN == 0 {
        return rev_flags;
    }
    let flags = rev_flags | fin;
    if flags & (CT_F_FIN_CLIENT | CT_F_FIN_SERVER) == CT_F_FIN_CLIENT | CT_F_FIN_SERVER {
        flags | CT_F_CLOSING
    } else {
        flags
    }
}
/// The client is the backend itself (hairpin): its source is translated to the VIP as well.
pub const CT_F_HAIRPIN: u16 = 2;
/// A direct flow (to a backend's own address, not a VIP), recorded because it got a source
/// port of its own or because the node tracks direct flows (`CONFIG_F_TRACK_DIRECT`).
pub const CT_F_DIRECT: u16 = 4;
/// Flows idle this long are over (TCP without a close; UDP and ICMP).
pub const CT_TCP_TIMEOUT_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_UDP_TIMEOUT_NS: u64 = 60 * 1_000_000_000;
/// How long a closed TCP flow's entries still translate (its last ACKs, retransmitted FINs).
pub const CT_CLOSE_TIMEOUT_NS: u64 = 10 * 1_000_000_000;

/// The backend a flow was given: the value of `LB_CT` (`LB6_CT`: `A` as in `BackendOf`,
/// `P` the padding that keeps `last_seen` 8-byte aligned without a hidden gap). The
/// address is kept with the id so a recycled id is noticed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry<A = u32, P = [u8; 0]> {
    pub backend_id: u32,
    pub backend: BackendOf<A>,
    /// The client's source port on the wire (differs from its own when remapped to keep the
    /// translated tuple unique).
    pub src_port: u16,
    pub flags: u16,
    pub _pad: P,
    /// `bpf_ktime_get_ns` of the flow's last packet.
    pub last_seen: u64,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 24);
/// The value of `LB6_CT`.
pub type Ct6Entry = CtEntry<[u32; 4], [u8; 4]>;
const _: () = assert!(core::mem::size_of::<Ct6Entry>() == 40);

/// How a reply of a translated flow is turned back: the value of `LB_REVNAT` (`LB6_REVNAT`),
/// keyed by the reply as it arrives (backend -> client, or backend -> VIP for hairpin flows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatEntry<A = u32> {
    /// The source it gets: the VIP and service port.
    pub vip: A,
    pub port: u16,
    pub flags: u16,
    /// The destination it gets: the client's address and port (its own, not remapped).
    pub client_ip: A,
    pub client_port: u16,
    pub _pad: u16,
    pub last_seen: u64,
}
const _: () = assert!(core::mem::size_of::<RevNatEntry>() == 24);
/// The value of `LB6_REVNAT`.
pub type RevNat6Entry = RevNatEntry<[u32; 4]>;
const _: () = assert!(core::mem::size_of::<RevNat6Entry>() == 48);

/// Whether direct flows with a source port of their own may be live, so packets not to a VIP
/// must be looked up in `LB_CT`: the single slot of `LB_DIRECT`, written by the datapath.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectRemaps {
    /// Remapped TCP flows not yet seen closing (one that expires or is evicted keeps it
    /// high, which only costs lookups).
    pub tcp_open: u64,
    /// `bpf_ktime_get_ns` of the last close of one: its entry still translates for
    /// `CT_CLOSE_TIMEOUT_NS`, and a new flow on its tuple must clear it away meanwhile.
    pub tcp_closed: u64,
    /// `bpf_ktime_get_ns` of the last UDP remap (those flows end by expiring).
    pub udp_last: u64,
}
const _: () = assert!(core::mem::size_of::<DirectRemaps>() == 24);

/// Whether an entry last seen at `last_seen` with `flags`, of protocol `proto`, is over at
/// `now`.
#[inline(always)]
pub const fn ct_expired(last_seen: u64, flags: u16, proto: u8, now: u64) -> bool {
    let timeout = if flags & CT_F_CLOSING != 0 {
        CT_CLOSE_TIMEOUT_NS
    } else if proto == crate::wire::IPPROTO_TCP {
        CT_TCP_TIMEOUT_NS
    } else {
        CT_UDP_TIMEOUT_NS
    };
    now.saturating_sub(last_seen) > timeout
}

/// Socket-level balancing (cgroup connect/sendmsg hooks): which networks a container's
/// network namespace is on, by its netns cookie: the value of `SOCK_NETNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsInfo {
    /// VNIs of the namespace's endpoints, `count` of them.
    pub vnis: [u32; 4],
    pub count: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NetnsInfo>() == 24);

/// A socket and an address: the key of `SOCK_FWD` (socket, VIP -> its backend, for
/// unconnected UDP) and of `SOCK_REV` (socket, backend -> the VIP it stands for).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub cookie: u64,
    pub ip: u32,
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 16);

/// An address and port (host byte order): the values of `SOCK_FWD` and `SOCK_REV`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddr {
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockAddr>() == 8);

/// Key of `LB6_SERVICES`: an IPv6 VIP:port in one network, balanced by the socket hooks
/// (connect6/sendmsg6) and per packet like IPv4 ones; their tables share `LB_MAGLEV` with
/// IPv4 ones, and their slots name `LB6_BACKENDS` ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service6Key {
    pub vni: u32,
    /// Virtual IPv6 address, as the socket hooks see it (`user_ip6`: four network-order
    /// words in memory order).
    pub vip: [u32; 4],
    /// Port, host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Service6Key>() == 24);

/// An IPv6 backend: the value of `LB6_BACKENDS`.
pub type Backend6Info = BackendOf<[u32; 4]>;
const _: () = assert!(core::mem::size_of::<Backend6Info>() == 20);

/// A socket and an IPv6 address: the key of `SOCK6_FWD` and `SOCK6_REV` (as `SockKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sock6Key {
    pub cookie: u64,
    pub ip: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Sock6Key>() == 32);

/// An IPv6 address and port (host byte order): the values of `SOCK6_FWD` and `SOCK6_REV`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sock6Addr {
    pub ip: [u32; 4],
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Sock6Addr>() == 20);

/// Sockets remembered by the socket-level balancer (LRU).
pub const SOCK_FLOWS: u32 = 1 << 16;
/// Container network namespaces one node balances sockets for.
pub const MAX_NETNS: u32 = 1 << 16;

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

/// An IPv6 address (`Service6Key::vip` form) folded to 32 bits for `flow_hash`.
#[inline(always)]
pub const fn fold6(ip: &[u32; 4]) -> u32 {
    ip[0] ^ ip[1] ^ ip[2] ^ ip[3]
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
    unsafe impl aya::Pod for DirectRemaps {}
    unsafe impl aya::Pod for NetnsInfo {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockAddr {}
    unsafe impl aya::Pod for Service6Key {}
    unsafe impl aya::Pod for Backend6Info {}
    unsafe impl aya::Pod for Flow6Key {}
    unsafe impl aya::Pod for Ct6Entry {}
    unsafe impl aya::Pod for RevNat6Entry {}
    unsafe impl aya::Pod for Sock6Key {}
    unsafe impl aya::Pod for Sock6Addr {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{TCP_ACK, TCP_FIN, TCP_RST};

    #[test]
    fn a_tuple_is_released_after_fins_both_ways_or_a_reset() {
        let fin = TCP_FIN | TCP_ACK;
        let client = rev_close_flags(0, fin, CT_F_FIN_CLIENT);
        assert_eq!(client & CT_F_CLOSING, 0, "half-closed by the client");
        let server = rev_close_flags(0, fin, CT_F_FIN_SERVER);
        assert_eq!(server & CT_F_CLOSING, 0, "half-closed by the server");
        for both in [
            rev_close_flags(client, fin, CT_F_FIN_SERVER),
            rev_close_flags(server, fin, CT_F_FIN_CLIENT),
        ] {
            assert_ne!(both & CT_F_CLOSING, 0);
        }
        assert_ne!(
            rev_close_flags(CT_F_DIRECT, TCP_RST, CT_F_FIN_SERVER) & CT_F_CLOSING,
            0
        );
        assert_eq!(
            rev_close_flags(CT_F_HAIRPIN, TCP_ACK, CT_F_FIN_CLIENT),
            CT_F_HAIRPIN
        );
    }
}
