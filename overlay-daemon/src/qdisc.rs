//! The token-bucket qdiscs (`tbf`) that enforce containers' bandwidth limits, as the
//! reference `bandwidth` plugin's do: what a container sends is shaped on its own interface
//! (inside its namespace, so the sender's socket is held back rather than its packets
//! dropped), what is delivered to it on the host side of its veth (the datapath delivers a
//! container with an ingress limit through that interface's qdisc instead of straight into
//! its namespace). `tbf` is in every kernel that has traffic control; `fq`, which an
//! earliest-departure-time design would need, is not (it is missing from this project's own
//! test machines).

use futures::StreamExt as _;
use overlay_api::bandwidth::Limit;
use rtnetlink::{
    packet_core::{
        DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
        NLM_F_REQUEST,
    },
    packet_route::{
        tc::{TcAttribute, TcHandle, TcMessage, TcOption},
        RouteNetlinkMessage,
    },
    Handle,
};

use crate::netlink::{rt, NetlinkError};

/// `TCA_TBF_PARMS`, `TCA_TBF_RATE64` and `TCA_TBF_BURST` (linux/pkt_sched.h).
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
/// `TC_LINKLAYER_ETHERNET`: the rate counts bytes as sent (no ATM cells, no rate table).
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// The least burst: a GSO packet larger than the bucket is cut into segments, and a segment
/// larger than it could never be sent (a jumbo frame is 9000 bytes).
const MIN_BURST_BYTES: u64 = 16 * 1024;
/// How long packets may queue behind the limit (besides a bucketful, the most a packet can
/// be) before the qdisc drops what comes next.
const QUEUE_NS: u64 = 100_000_000;

/// The parameters of the token bucket for `limit`: (bytes per second, burst bytes, queue
/// bytes).
fn bucket(limit: &Limit) -> (u64, u32, u32) {
    let rate = (limit.rate_bps / 8).max(1);
    let burst = (u128::from(rate) * u128::from(limit.burst_ns()) / 1_000_000_000) as u64;
    let burst = burst.max(MIN_BURST_BYTES).min(u64::from(u32::MAX / 2));
    let queue = (u128::from(rate) * u128::from(QUEUE_NS) / 1_000_000_000) as u64;
    (
        rate,
        burst as u32,
        (burst + queue).min(u64::from(u32::MAX)) as u32,
    )
}

/// `struct tc_tbf_qopt`: rate and peak rate (`tc_ratespec`), limit, buffer, mtu.
fn tbf_qopt(rate: u64, burst: u32, queue: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(36);
    // tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, rate.
    b.extend_from_slice(&[0, TC_LINKLAYER_ETHERNET]);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&0i16.to_ne_bytes());
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&(rate.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    b.extend_from_slice(&[0; 12]); // no peak rate
    b.extend_from_slice(&queue.to_ne_bytes());
    // The bucket in 64 ns ticks; TCA_TBF_BURST states it in bytes as well.
    let ticks = u128::from(burst) * 1_000_000_000 / u128::from(rate) / 64;
    b.extend_from_slice(&(ticks.min(u128::from(u32::MAX)) as u32).to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b
}

/// Makes a token bucket for `limit` the root qdisc of interface `ifindex` (replacing what
/// was there: a container's interfaces are the overlay's own).
pub async fn shape(handle: &mut Handle, ifindex: u32, limit: &Limit) -> Result<(), NetlinkError> {
    let (rate, burst, queue) = bucket(limit);
    let mut options = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, tbf_qopt(rate, burst, queue))),
        TcOption::Other(DefaultNla::new(TCA_TBF_BURST, burst.to_ne_bytes().to_vec())),
    ];
    if rate > u64::from(u32::MAX) {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            rate.to_ne_bytes().to_vec(),
        )));
    }
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::ROOT;
    msg.attributes.push(TcAttribute::Kind("tbf".to_owned()));
    msg.attributes.push(TcAttribute::Options(options));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let what = || format!("limiting interface {ifindex} to {} bit/s", limit.rate_bps);
    let mut answers = handle.request(req).map_err(rt(what()))?;
    while let Some(answer) = answers.next().await {
        if let NetlinkPayload::Error(e) = answer.payload {
            if e.code.is_some() {
                return Err(rt(what())(rtnetlink::Error::NetlinkError(e)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_a_gso_packet_and_the_asked_burst() {
        let small = Limit {
            rate_bps: 8_000_000,
            burst_bits: 0,
        };
        assert_eq!(bucket(&small), (1_000_000, 16_384, 116_384));
        // containerd's 2^32-bit burst: a second of the rate.
        let containerd = Limit {
            rate_bps: 80_000_000,
            burst_bits: 1 << 32,
        };
        assert_eq!(bucket(&containerd).1, 10_000_000);
        assert_eq!(tbf_qopt(1_000_000, 16_384, 116_384).len(), 36);
    }
}
