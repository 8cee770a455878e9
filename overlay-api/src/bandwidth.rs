//! A container's bandwidth limits, as CNI's `bandwidth` capability states them (the runtime
//! config a CRI runtime fills from a pod's `kubernetes.io/ingress-bandwidth` and
//! `egress-bandwidth` annotations): rates in bits per second, bursts in bits.

use serde::{Deserialize, Serialize};

/// The lowest rate a limit may have (100 kbit/s): the token bucket holds at least a jumbo
/// frame or two, which must drain in a second or so.
pub const MIN_RATE_BPS: u64 = 100_000;
/// The highest (1 Tbit/s): above it a limit would limit nothing.
pub const MAX_RATE_BPS: u64 = 1_000_000_000_000;
/// A burst lets at most this long's worth of the rate leave at once after an idle time
/// (containerd asks for 2³²−1 bits whatever the pod says).
pub const MAX_BURST_NS: u64 = 1_000_000_000;

/// One direction's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limit {
    pub rate_bps: u64,
    /// Bits that may leave at once after an idle time (0: none beyond the rate).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub burst_bits: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Limit {
    /// The burst as time at the rate, at most `MAX_BURST_NS`: what may leave at once after
    /// an idle time.
    pub fn burst_ns(&self) -> u64 {
        let ns = u128::from(self.burst_bits) * 1_000_000_000 / u128::from(self.rate_bps.max(1));
        ns.min(u128::from(MAX_BURST_NS)) as u64
    }
}

/// What is delivered to the container (`ingress`) and what it sends (`egress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Limit>,
}

impl Bandwidth {
    /// From the CNI runtime config's fields (`ingressRate`, `ingressBurst`, `egressRate`,
    /// `egressBurst`): a direction is limited when its rate is given and not 0 (the
    /// reference plugin's reading); a burst without a rate is refused.
    pub fn from_cni(
        ingress_rate: u64,
        ingress_burst: u64,
        egress_rate: u64,
        egress_burst: u64,
    ) -> Result<Option<Self>, String> {
        let limit = |dir: &str, rate: u64, burst: u64| match (rate, burst) {
            (0, 0) => Ok(None),
            (0, _) => Err(format!(
                "bandwidth: {dir}Burst without {dir}Rate: give the rate in bits per second"
            )),
            _ => Ok(Some(Limit {
                rate_bps: rate,
                burst_bits: burst,
            })),
        };
        let bw = Self {
            ingress: limit("ingress", ingress_rate, ingress_burst)?,
            egress: limit("egress", egress_rate, egress_burst)?,
        };
        bw.check()?;
        Ok((bw != Self::default()).then_some(bw))
    }

    /// Whether the limits can be enforced: each rate within [`MIN_RATE_BPS`,
    /// `MAX_RATE_BPS`].
    pub fn check(&self) -> Result<(), String> {
        for (dir, limit) in [("ingress", self.ingress), ("egress", self.egress)] {
            let Some(l) = limit else { continue };
            if !(MIN_RATE_BPS..=MAX_RATE_BPS).contains(&l.rate_bps) {
                return Err(format!(
                    "bandwidth: {dir} rate {} bit/s is outside {MIN_RATE_BPS}..={MAX_RATE_BPS} \
                     (rates are in bits per second)",
                    l.rate_bps
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |l: Option<Limit>| match l {
            Some(l) if l.rate_bps >= 1_000_000 => format!("{}M", l.rate_bps as f64 / 1e6),
            Some(l) => format!("{}k", l.rate_bps as f64 / 1e3),
            None => "-".to_owned(),
        };
        write!(f, "in {} out {}", show(self.ingress), show(self.egress))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_fields_make_limits_or_one_line_errors() {
        assert_eq!(Bandwidth::from_cni(0, 0, 0, 0).unwrap(), None);
        let bw = Bandwidth::from_cni(0, 0, 10_000_000, 1 << 32)
            .unwrap()
            .unwrap();
        assert_eq!(bw.ingress, None);
        let egress = bw.egress.unwrap();
        assert_eq!(egress.rate_bps, 10_000_000);
        // containerd's 2^32-bit burst is capped at a second of the rate.
        assert_eq!(egress.burst_ns(), MAX_BURST_NS);
        let small = Limit {
            rate_bps: 8_000_000,
            burst_bits: 800_000,
        };
        assert_eq!(small.burst_ns(), 100_000_000);
        let e = Bandwidth::from_cni(0, 5, 0, 0).unwrap_err();
        assert!(e.contains("ingressBurst without ingressRate"), "{e}");
        let e = Bandwidth::from_cni(10, 0, 0, 0).unwrap_err();
        assert!(e.contains("ingress rate 10 bit/s is outside"), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(bw.to_string(), "in - out 10M");
        let odd = Bandwidth::from_cni(1_500_000, 0, 250_000, 0)
            .unwrap()
            .unwrap();
        assert_eq!(odd.to_string(), "in 1.5M out 250k");
    }
}
