//! The monitor (`overlayctl monitor`): events the programs put in a ring buffer while a
//! monitor is attached (every drop, and a sample of forwarding decisions), rate-limited per
//! CPU so a flood can neither slow the forwarding path nor fill userspace. With no monitor
//! attached a program checks one flag and does nothing else.

/// `MonitorConfig.flags`: send an event for every dropped packet.
pub const MONITOR_F_DROP: u32 = 1;
/// `MonitorConfig.flags`: send an event for (a sample of) forwarded packets.
pub const MONITOR_F_TRACE: u32 = 2;

/// `MonitorEvent.kind`, also the index of its kind's token bucket and lost count.
pub const EVENT_DROP: u8 = 0;
pub const EVENT_TRACE: u8 = 1;
pub const EVENT_KINDS: u32 = 2;

/// Bytes of each packet an event carries (from its first byte: Ethernet, IP, L4, and for
/// VXLAN on the underlay the inner headers too).
pub const EVENT_HEAD: usize = 128;

/// Size of the events ring buffer (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Where a packet was seen.
pub const HOOK_FROM_CONTAINER: u8 = 0;
pub const HOOK_FROM_UNDERLAY: u8 = 1;
pub const HOOK_UNDERLAY_XDP: u8 = 2;
/// A container's socket (connect/sendmsg): no packet yet.
pub const HOOK_SOCKET: u8 = 3;

/// What the datapath did with a traced packet (`MonitorEvent.code` of a trace).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceVerdict {
    /// Handed to a container on this node.
    Local = 1,
    /// Encapsulated towards another node's VTEP.
    Encap = 2,
    /// Decapsulated and handed to a container on this node.
    Decap = 3,
    /// Answered in place (ARP).
    Answered = 4,
    /// A socket's service VIP given a backend at connect or send.
    SocketLb = 5,
}

impl TraceVerdict {
    pub const ALL: [TraceVerdict; 5] = [
        Self::Local,
        Self::Encap,
        Self::Decap,
        Self::Answered,
        Self::SocketLb,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Encap => "encap",
            Self::Decap => "decap",
            Self::Answered => "answered",
            Self::SocketLb => "socket_lb",
        }
    }
}

/// The monitor's settings: the single slot of `MONITOR`, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorConfig {
    /// `MONITOR_F_*`; 0 while no monitor is attached.
    pub flags: u32,
    /// Events per second each CPU may send, and how many it may send at once.
    pub rate: u32,
    pub burst: u32,
    /// Traces: one forwarded packet in `sample` (0 and 1: every one), before the bucket.
    pub sample: u32,
}
const _: () = assert!(core::mem::size_of::<MonitorConfig>() == 16);

/// A CPU's token bucket (the value of the per-CPU `MONITOR_BUCKET`): credit in
/// billionths of an event, refilled at `rate` per second up to `burst`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub credit: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);

/// One event in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorEvent {
    /// `bpf_ktime_get_ns`.
    pub time_ns: u64,
    /// `HOOK_*`.
    pub hook: u8,
    /// `EVENT_DROP` or `EVENT_TRACE`.
    pub kind: u8,
    /// A drop's `DropReason`, a trace's `TraceVerdict`.
    pub code: u16,
    /// The interface the packet came in on (0 for a socket).
    pub ifindex: u32,
    /// The packet's length, and how much of it `head` holds.
    pub len: u32,
    pub caplen: u32,
    /// Traces: the interface the packet leaves by, its network, and the node id
    /// (`VtepInfo.node_id`) of the VTEP it was sent to or came from (0: none).
    pub out_ifindex: u32,
    pub vni: u32,
    pub vtep_node: u32,
    /// Traces of a balanced service: 4 or 6 (0: none), the IP protocol, and the VIP and
    /// backend with their ports (an IPv4 address in the first four bytes). A per-packet
    /// translation leaves the backend to the packet itself (backend port 0).
    pub family: u8,
    pub proto: u8,
    pub vip_port: u16,
    pub backend_port: u16,
    pub _pad: [u8; 6],
    pub vip: [u8; 16],
    pub backend: [u8; 16],
    pub head: [u8; EVENT_HEAD],
}
const _: () = assert!(core::mem::size_of::<MonitorEvent>() == 80 + EVENT_HEAD);

impl Default for MonitorEvent {
    fn default() -> Self {
        Self {
            time_ns: 0,
            hook: 0,
            kind: EVENT_DROP,
            code: 0,
            ifindex: 0,
            len: 0,
            caplen: 0,
            out_ifindex: 0,
            vni: 0,
            vtep_node: 0,
            family: 0,
            proto: 0,
            vip_port: 0,
            backend_port: 0,
            _pad: [0; 6],
            vip: [0; 16],
            backend: [0; 16],
            head: [0; EVENT_HEAD],
        }
    }
}

/// Whether a bucket with `credit` last filled at `last_ns` lets one event through at `now`,
/// and its new state. Pure, so the datapath and the tests share it.
#[inline(always)]
pub const fn take_token(b: TokenBucket, now: u64, rate: u32, burst: u32) -> (bool, TokenBucket) {
    const ONE: u64 = 1_000_000_000;
    // At most 10 s of refill: bounds the product and the burst anyway.
    let mut elapsed = now.saturating_sub(b.last_ns);
    if elapsed > 10 * ONE {
        elapsed = 10 * ONE;
    }
    let cap = burst as u64 * ONE;
    let mut credit = b.credit + elapsed * rate as u64;
    if credit > cap {
        credit = cap;
    }
    if credit >= ONE {
        (
            true,
            TokenBucket {
                credit: credit - ONE,
                last_ns: now,
            },
        )
    } else {
        (
            false,
            TokenBucket {
                credit,
                last_ns: now,
            },
        )
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for MonitorConfig {}
    unsafe impl aya::Pod for TokenBucket {}
    unsafe impl aya::Pod for MonitorEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_rate_and_burst_and_no_more() {
        let (rate, burst) = (100, 10);
        let mut b = TokenBucket::default();
        let mut allowed = 0;
        // One second of a flood, one packet every 10 µs, starting with an empty bucket.
        let start = 1_000_000_000u64;
        b.last_ns = start;
        for i in 0..100_000u64 {
            let (ok, next) = take_token(b, start + i * 10_000, rate, burst);
            b = next;
            allowed += ok as u32;
        }
        assert!((99..=101).contains(&allowed), "{allowed}");
        // After a quiet minute, a burst of at most `burst`.
        let later = start + 61_000_000_000;
        let mut burst_allowed = 0;
        for i in 0..1000u64 {
            let (ok, next) = take_token(b, later + i, rate, burst);
            b = next;
            burst_allowed += ok as u32;
        }
        assert_eq!(burst_allowed, burst);
    }
}
