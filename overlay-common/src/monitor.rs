//! The drop monitor (`overlayctl monitor`): events the programs put in a ring buffer while a
//! monitor is attached, rate-limited per CPU so a flood of bad packets can neither slow the
//! forwarding path nor fill userspace. With no monitor attached a program checks one flag
//! and does nothing else.

/// `MonitorConfig.flags`: send an event for every dropped packet.
pub const MONITOR_F_DROP: u32 = 1;

/// Bytes of each packet an event carries (from its first byte: Ethernet, IP, L4, and for
/// VXLAN on the underlay the inner headers too).
pub const EVENT_HEAD: usize = 128;

/// Size of the events ring buffer (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Where a packet was seen.
pub const HOOK_FROM_CONTAINER: u8 = 0;
pub const HOOK_FROM_UNDERLAY: u8 = 1;
pub const HOOK_UNDERLAY_XDP: u8 = 2;

/// The monitor's settings: the single slot of `MONITOR`, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorConfig {
    /// `MONITOR_F_*`; 0 while no monitor is attached.
    pub flags: u32,
    /// Events per second each CPU may send, and how many it may send at once.
    pub rate: u32,
    pub burst: u32,
    pub _pad: u32,
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
    pub _pad: u8,
    /// The `DropReason`.
    pub reason: u16,
    /// The interface the packet came in on.
    pub ifindex: u32,
    /// The packet's length, and how much of it `head` holds.
    pub len: u32,
    pub caplen: u32,
    pub head: [u8; EVENT_HEAD],
}
const _: () = assert!(core::mem::size_of::<MonitorEvent>() == 24 + EVENT_HEAD);

impl Default for MonitorEvent {
    fn default() -> Self {
        Self {
            time_ns: 0,
            hook: 0,
            _pad: 0,
            reason: 0,
            ifindex: 0,
            len: 0,
            caplen: 0,
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
