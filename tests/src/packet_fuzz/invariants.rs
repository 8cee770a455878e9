//! The invariants every run is checked against: first the structural ones (what a verdict
//! may be, that every drop is counted with one reason, what may be redirected where and what
//! an encapsulated or decapsulated frame must look like; `from_container`'s redirects are in
//! `egress`), computed from the frame and the fuzzer's tables; then agreement with the
//! reference model (`model`).

use std::{net::Ipv4Addr, time::Duration};

use overlay_common::{Direction, DropReason};

use super::{
    egress,
    fixture::{Case, Observed, Phase, Program},
    frames::{be16, ip_at, mac_at, ETH_HLEN, ETH_P_IP, PROTO_TCP},
    model::{balanced_proto, Expected, Leeway, Outcome},
    world::{Loc, World, LOCAL_VTEP, VXLAN_PORT},
};

pub const TC_NEXT: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
/// A single test run taking longer than this counts as a hang.
pub const HANG: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (a short stable name).
    pub invariant: &'static str,
    pub detail: String,
}

pub(super) fn fail<T>(invariant: &'static str, detail: impl Into<String>) -> Result<T, Violation> {
    Err(Violation {
        invariant,
        detail: detail.into(),
    })
}

pub(super) fn ensure(
    ok: bool,
    invariant: &'static str,
    detail: impl FnOnce() -> String,
) -> Result<(), Violation> {
    if ok {
        Ok(())
    } else {
        fail(invariant, detail())
    }
}

/// Drop reasons of the balancing code, which may replace any outcome it could touch.
const NAT_REASONS: [DropReason; 2] = [DropReason::LbNatFailed, DropReason::LbTupleConflict];
/// How a packet to a service VIP may be dropped.
const SERVICE_REASONS: [DropReason; 8] = [
    DropReason::LbNoBackend,
    DropReason::LbNatFailed,
    DropReason::LbTupleConflict,
    DropReason::Malformed,
    DropReason::UnknownDestination,
    DropReason::UnknownVtep,
    DropReason::TooBig,
    DropReason::EncapFailed,
];
const LB_DIRECTIONS: [Direction; 6] = [
    Direction::LbNewFlow,
    Direction::LbDnat,
    Direction::LbRevNat,
    Direction::LbRejected,
    Direction::LbHairpin,
    Direction::LbDirectRemap,
];

/// The verdict's name, for reports.
pub fn verdict_label(program: Program, verdict: &Result<i32, String>) -> String {
    match (program, verdict) {
        (_, Err(_)) => "refused".into(),
        (Program::UnderlayXdp, Ok(XDP_PASS)) => "pass".into(),
        (Program::UnderlayXdp, Ok(XDP_DROP)) => "drop".into(),
        (Program::UnderlayXdp, Ok(v)) => format!("xdp_{v}"),
        (_, Ok(TC_NEXT)) => "next".into(),
        (_, Ok(TC_ACT_SHOT)) => "shot".into(),
        (_, Ok(TC_ACT_REDIRECT)) => "redirect".into(),
        (_, Ok(v)) => format!("tc_{v}"),
    }
}

/// Checks one run against every invariant.
pub fn check(
    w: &World,
    phase: Phase,
    case: &Case,
    obs: &Observed,
    exp: &Expected,
) -> Result<(), Violation> {
    ensure(obs.elapsed < HANG, "no-hang", || {
        format!("one test run took {:?}", obs.elapsed)
    })?;
    let verdict = match &obs.verdict {
        Err(e) => {
            ensure(exp.outcome == Outcome::Refused, "kernel-runs-frame", || {
                format!("BPF_PROG_TEST_RUN refused the frame ({e}); expected {exp:?}")
            })?;
            let moved = obs.drops.iter().chain(&obs.traffic).any(|&d| d != 0);
            return ensure(!moved, "refused-frame-counts-nothing", || {
                "counters moved for a frame the kernel refused".into()
            });
        }
        Ok(v) => *v,
    };
    let documented: &[i32] = match case.program {
        Program::FromContainer => &[TC_ACT_REDIRECT, TC_ACT_SHOT],
        Program::FromUnderlay => &[TC_NEXT, TC_ACT_REDIRECT, TC_ACT_SHOT],
        Program::UnderlayXdp => &[XDP_PASS, XDP_DROP],
    };
    ensure(documented.contains(&verdict), "documented-verdict", || {
        format!("verdict {verdict} is none of {documented:?}")
    })?;
    let dropped = verdict
        == match case.program {
            Program::UnderlayXdp => XDP_DROP,
            _ => TC_ACT_SHOT,
        };
    let reason = drop_accounting(obs, dropped)?;
    match case.program {
        Program::FromContainer if verdict == TC_ACT_REDIRECT => {
            egress::container_redirect(w, phase, case, &obs.frame)?
        }
        Program::FromContainer => {}
        Program::FromUnderlay => underlay_tc(w, phase, case, verdict, &obs.frame)?,
        Program::UnderlayXdp => underlay_xdp(w, phase, case, verdict, &obs.frame)?,
    }
    agrees_with_model(case, obs, exp, verdict, reason)
}

/// Every TC_ACT_SHOT / XDP_DROP moves exactly one drop counter by one; anything else moves
/// none. Returns the reason of a drop.
fn drop_accounting(obs: &Observed, dropped: bool) -> Result<Option<DropReason>, Violation> {
    let moved: Vec<(DropReason, u64)> = obs
        .drops
        .iter()
        .enumerate()
        .filter(|(_, &d)| d != 0)
        .map(|(i, &d)| {
            (
                DropReason::from_index(i as u32).unwrap_or(DropReason::Malformed),
                d,
            )
        })
        .collect();
    if dropped {
        match moved.as_slice() {
            [(reason, 1)] => Ok(Some(*reason)),
            _ => fail(
                "drop-counted-once",
                format!("a drop moved the drop counters by {moved:?}, not one reason by one"),
            ),
        }
    } else {
        ensure(moved.is_empty(), "no-drop-counted-without-drop", || {
            format!("drop counters moved by {moved:?} for a frame that was not dropped")
        })?;
        Ok(None)
    }
}

/// Bytes of an IPv4 packet at `ip_off` that address and port translation rewrites.
fn nat_bytes(ip_off: usize, proto: u8) -> [std::ops::Range<usize>; 3] {
    let l4 = ip_off + 20;
    let csum = if proto == PROTO_TCP { l4 + 16 } else { l4 + 6 };
    [ip_off + 10..ip_off + 20, l4..l4 + 4, csum..csum + 2]
}

/// The first byte where `got` and `want` differ outside `skip`, if any (or a length change).
pub(super) fn differs(got: &[u8], want: &[u8], skip: &[std::ops::Range<usize>]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("length {} instead of {}", got.len(), want.len()));
    }
    (0..got.len())
        .find(|&i| got[i] != want[i] && !skip.iter().any(|r| r.contains(&i)))
        .map(|i| format!("byte {i} is {:#04x} instead of {:#04x}", got[i], want[i]))
}

pub(super) fn nat_skip(phase: Phase, f: &[u8], ip_off: usize) -> Vec<std::ops::Range<usize>> {
    match balanced_proto(f, ip_off) {
        Some(proto) if phase.lb => nat_bytes(ip_off, proto).to_vec(),
        _ => vec![],
    }
}

/// VXLAN this node must look at: IPv4 without options or fragmentation, UDP to our VTEP on
/// the VXLAN port (unless its VNI is foreign and foreign VNIs pass).
pub fn vxlan_for_us(w: &World, phase: Phase, f: &[u8]) -> bool {
    let ours = f.len() >= 42
        && be16(f, 12) == ETH_P_IP
        && f[14] == 0x45
        && be16(f, 20) & 0x3fff == 0
        && f[23] == 17
        && ip_at(f, 30) == LOCAL_VTEP
        && be16(f, 36) == VXLAN_PORT;
    let foreign = f.len() >= 50
        && phase.foreign_vni_pass
        && w.network(u32::from_be_bytes([0, f[46], f[47], f[48]]))
            .is_none();
    ours && !foreign
}

/// The acceptance rule: VXLAN for us with the I flag, from a known VTEP, in a known VNI,
/// carrying IPv4 to a local endpoint of that VNI from an endpoint of that VNI which lives
/// behind the sending VTEP and uses its own IP.
pub fn delivery_allowed(w: &World, phase: Phase, f: &[u8]) -> bool {
    if !vxlan_for_us(w, phase, f) || f.len() < 84 || f[42] & 0x08 == 0 {
        return false;
    }
    let vtep: Ipv4Addr = ip_at(f, 26);
    let vni = u32::from_be_bytes([0, f[46], f[47], f[48]]);
    w.vtep_known(vtep)
        && w.network(vni).is_some()
        && be16(f, 62) == ETH_P_IP
        && f[64] & 0x0f >= 5
        && w.by_mac(vni, mac_at(f, 50)).is_some_and(|e| e.is_local())
        && w.by_mac(vni, mac_at(f, 56))
            .is_some_and(|e| e.loc == Loc::Remote(vtep) && e.ip == ip_at(f, 76))
}

fn underlay_tc(
    w: &World,
    phase: Phase,
    case: &Case,
    verdict: i32,
    out: &[u8],
) -> Result<(), Violation> {
    let f = &case.frame;
    match verdict {
        TC_ACT_REDIRECT => {
            ensure(
                delivery_allowed(w, phase, f),
                "decap-only-allowed-delivery",
                || {
                    "redirected into a container without a known VTEP, VNI, local endpoint and a \
                 source that VTEP owns"
                        .into()
                },
            )?;
            ensure(
                out.len() + 50 == f.len() && out[..14] == f[50..64],
                "decap-output",
                || "the delivered frame is not the inner frame".into(),
            )?;
            if let Some(d) = differs(out, &f[50..], &nat_skip(phase, out, ETH_HLEN)) {
                return fail("decap-output", d);
            }
            egress::nat_keeps_checksums(f, 64, out, ETH_HLEN)
        }
        TC_NEXT => {
            ensure(
                !vxlan_for_us(w, phase, f),
                "vxlan-for-us-never-passes",
                || "VXLAN for this node passed to the stack".into(),
            )?;
            ensure(out == f.as_slice(), "pass-untouched", || {
                "a passed frame was changed".into()
            })
        }
        _ => ensure(
            vxlan_for_us(w, phase, f),
            "foreign-traffic-never-dropped",
            || "dropped underlay traffic that is not VXLAN for this node".into(),
        ),
    }
}

fn underlay_xdp(
    w: &World,
    phase: Phase,
    case: &Case,
    verdict: i32,
    out: &[u8],
) -> Result<(), Violation> {
    let f = &case.frame;
    let pass = !vxlan_for_us(w, phase, f) || delivery_allowed(w, phase, f);
    ensure(
        (verdict == XDP_PASS) == pass,
        "xdp-pass-iff-foreign-or-allowed",
        || format!("verdict {verdict}; foreign or allowed: {pass}"),
    )?;
    ensure(out == f.as_slice(), "xdp-untouched", || {
        "XDP changed the frame".into()
    })
}

fn agrees_with_model(
    case: &Case,
    obs: &Observed,
    exp: &Expected,
    verdict: i32,
    reason: Option<DropReason>,
) -> Result<(), Violation> {
    let nat = matches!(exp.leeway, Leeway::Nat { .. });
    let lb_drop = nat && reason.is_some_and(|r| NAT_REASONS.contains(&r));
    let model = |detail: String| fail("model", detail);
    match &exp.outcome {
        Outcome::Refused => {
            return model(format!(
                "ran (verdict {verdict}) but test_run should refuse it"
            ))
        }
        Outcome::Drop(want) if reason != Some(*want) && !lb_drop => {
            return model(format!(
                "expected drop {}, got verdict {verdict} {reason:?}",
                want.label()
            ))
        }
        Outcome::Pass if reason.is_some() || verdict == TC_ACT_REDIRECT => {
            return model(format!("expected pass, got verdict {verdict} {reason:?}"))
        }
        Outcome::Redirect { frame, ignore } if !lb_drop => {
            if verdict != TC_ACT_REDIRECT {
                return model(format!(
                    "expected redirect, got verdict {verdict} {reason:?}"
                ));
            }
            let mut skip: Vec<_> = ignore.iter().cloned().collect();
            if let Leeway::Nat { ip_off, proto } = exp.leeway {
                skip.extend(nat_bytes(ip_off, proto));
            }
            if let Some(d) = differs(&obs.frame, frame, &skip) {
                return model(format!("output frame: {d}"));
            }
        }
        Outcome::Service if reason.is_some_and(|r| !SERVICE_REASONS.contains(&r)) => {
            return model(format!("packet to a service dropped as {reason:?}"))
        }
        _ => {}
    }
    traffic_agrees(
        case,
        obs,
        exp,
        nat || exp.outcome == Outcome::Service,
        verdict,
    )
}

fn traffic_agrees(
    case: &Case,
    obs: &Observed,
    exp: &Expected,
    loose: bool,
    verdict: i32,
) -> Result<(), Violation> {
    let moved: Vec<(Direction, u64)> = obs
        .traffic
        .iter()
        .enumerate()
        .filter(|(_, &d)| d != 0)
        .filter_map(|(i, &d)| Direction::from_index(i as u32).map(|dir| (dir, d)))
        .collect();
    let detail = || {
        format!(
            "traffic counters moved by {moved:?}, expected {:?}",
            exp.traffic
        )
    };
    if !loose {
        let exact = moved.len() == exp.traffic.len()
            && moved
                .iter()
                .all(|(d, n)| *n == 1 && exp.traffic.contains(d));
        return ensure(exact, "traffic-counted", detail);
    }
    let service = exp.outcome == Outcome::Service;
    let allowed = |d: &Direction| {
        exp.traffic.contains(d)
            || LB_DIRECTIONS.contains(d)
            || (service && matches!(d, Direction::LocalDelivery | Direction::EncapTx))
    };
    ensure(
        moved.iter().all(|(d, n)| *n == 1 && allowed(d)),
        "traffic-counted",
        detail,
    )?;
    // Counted before balancing can act: the container's packet, always.
    let first_ok = case.program != Program::FromContainer
        || moved.iter().any(|(d, _)| *d == Direction::FromContainer);
    ensure(first_ok, "traffic-counted", detail)?;
    if verdict == TC_ACT_REDIRECT && !service {
        let all = exp
            .traffic
            .iter()
            .all(|d| moved.iter().any(|(m, _)| m == d));
        ensure(all, "traffic-counted", detail)?;
    }
    Ok(())
}
