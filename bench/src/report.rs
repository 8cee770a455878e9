//! Medians, ranges and ratios as a Markdown report, plus the raw samples as JSON.

use std::fmt::Write as _;

use crate::{measure::Metric, modes::Mode, Samples};

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The nearest-rank percentile `p` (0-100).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)]
}

fn range(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    format!(
        "{cpu}, {cores} cores, {} GiB, Linux {}",
        mem_kb / 1024 / 1024,
        kernel.trim()
    )
}

/// The `| metric | mode... |` header row and its separator.
fn header(s: &mut String, modes: &[Mode]) {
    let _ = write!(s, "| metric |");
    for m in modes {
        let _ = write!(s, " {} |", m.label());
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|---|{}", "---|".repeat(modes.len()));
}

/// The report of a datapath run whose every mode had container MTU `mtu`.
pub fn markdown(
    modes: &[Mode],
    samples: &Samples,
    rounds: usize,
    seconds: u32,
    mtu: u32,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Datapath benchmark\n");
    let ul6 = if modes.iter().any(|m| m.ipv6_underlay()) {
        " (every mode's: the MTU an IPv6 underlay leaves, 1500 - 70, also for the IPv4-underlay modes)"
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "Machine: {}. Two hosts (network namespaces on a veth/bridge underlay, MTU 1500), one container \
         each (MTU {mtu}{ul6}), {rounds} rounds of {seconds} s per measurement, modes alternated every round; \
         every figure is the median with [min-max]. Sender and receiver share the machine's cores.\n",
        machine()
    );
    // Only what was measured (`--tests` may have chosen a subset).
    let metrics: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|k| modes.iter().any(|m| samples.contains_key(&(*m, *k))))
        .collect();
    header(&mut s, modes);
    for &k in &metrics {
        let _ = write!(s, "| {} |", k.label());
        for m in modes {
            match samples.get(&(*m, k)) {
                Some(v) => {
                    let (lo, hi) = range(v);
                    let _ = write!(s, " {:.2} [{lo:.2}-{hi:.2}] |", median(v));
                }
                None => {
                    let _ = write!(s, " - |");
                }
            }
        }
        let _ = writeln!(s);
    }
    for (base, name) in [
        (Mode::KernelVxlan, "kernel-vxlan"),
        (Mode::Routed, "routed"),
    ] {
        // A table wherever some mode's baseline was measured (`kernel-vxlan-ul6` without
        // `kernel-vxlan`, say); "-" for the modes whose baseline was not.
        if !modes.iter().any(|m| modes.contains(&m.baseline(base))) {
            continue;
        }
        let mut notes = Vec::new();
        if modes.iter().any(|m| m.ipv6()) {
            notes.push(format!("`{name}-ipv6` for the IPv6 modes"));
        }
        if modes.iter().any(|m| m.ipv6_underlay()) {
            notes.push(match base {
                Mode::KernelVxlan => "`kernel-vxlan-ul6` for the IPv6-underlay modes".to_owned(),
                _ => "`routed` itself for the IPv6-underlay modes".to_owned(),
            });
        }
        notes.push(">1 is better for every row".to_owned());
        let _ = writeln!(
            s,
            "\nRatio of medians to `{name}` ({}):\n",
            notes.join("; ")
        );
        header(&mut s, modes);
        for &k in &metrics {
            let _ = write!(s, "| {} |", k.label());
            for m in modes {
                cell(&mut s, ratio(samples, *m, m.baseline(base), k));
            }
            let _ = writeln!(s);
        }
    }
    family_cost(
        &mut s,
        modes,
        samples,
        &metrics,
        Mode::Overlay6,
        "IPv6 against IPv4: the overlay's IPv6 ratio to each alternative divided by its IPv4 ratio \
         (1.00: IPv6 costs the overlay exactly what it costs the alternative)",
    );
    family_cost(
        &mut s,
        modes,
        samples,
        &metrics,
        Mode::OverlayUl6,
        "IPv6 underlay against IPv4 underlay: the overlay's ratio to each alternative over an \
         IPv6 underlay divided by its ratio over an IPv4 one (1.00: the IPv6 underlay costs the \
         overlay exactly what it costs kernel vxlan; against `routed`, which has no underlay \
         encapsulation, simply `overlay-ul6` / `overlay`)",
    );
    let _ = writeln!(
        s,
        "\nModes: `routed` plain routing of container /32s between the hosts (no encapsulation); \
         `kernel-vxlan` flannel's backend (vxlan device, static FDB/neighbour entries); `kernel-vxlan-bpf` Cilium's tunnel mode (collect_md vxlan device, a TC program on the container veth sets the tunnel key and redirects to it, one on the device's ingress redirects to the container's veth peer); `overlay` this project with its defaults (on a veth underlay: TC programs only, no XDP); `overlay-xdp-native` with the \
         XDP filter forced native (on veth the kernel then strips GSO from the peer); `overlay-xdp-skb` with the XDP filter in generic mode; \
         `routed-ipv6`, `kernel-vxlan-ipv6` and `overlay-ipv6` the same with IPv6 in the containers (routed: IPv6 between the hosts too; \
         the VXLAN underlay stays IPv4); `kernel-vxlan-ul6` and `overlay-ul6` VXLAN over an IPv6-only underlay \
         (`2001:2:0:ff00::/64`) with IPv4 containers, the kernel with its default computed outer UDP checksums, \
         `kernel-vxlan-ul6-zerocsum` the kernel with zero ones (`udp6zerocsumtx udp6zerocsumrx`), as this project sends. \
         sockperf 3.7 has no IPv6: the IPv6 modes' latency is the bench's own ping-pong, measured for every mode.\n\n\
         Produced by `cargo xtask bench`."
    );
    s
}

/// A ratio's table cell: "-" where a mode did not measure the metric.
fn cell(s: &mut String, ratio: f64) {
    if ratio.is_nan() {
        let _ = write!(s, " - |");
    } else {
        let _ = write!(s, " {ratio:.2} |");
    }
}

/// How `m` compares with `base` on `k`, as a ratio of medians (>1: `m` is better).
fn ratio(samples: &Samples, m: Mode, base: Mode, k: Metric) -> f64 {
    let med = |m: Mode| samples.get(&(m, k)).map(|v| median(v)).unwrap_or(f64::NAN);
    let (a, b) = (med(m), med(base));
    if k.higher_is_better() {
        a / b
    } else {
        b / a
    }
}

/// Whether a family (IPv6 in the containers: `other` = `overlay-ipv6`; an IPv6 underlay:
/// `overlay-ul6`) costs the overlay more than it costs the alternatives: `other`'s ratio to
/// each alternative of its family (`Mode::baseline`) divided by `overlay`'s ratio to the
/// IPv4 one (1: the same standing in both families; below 1: the family loses ground).
fn family_cost(
    s: &mut String,
    modes: &[Mode],
    samples: &Samples,
    metrics: &[Metric],
    other: Mode,
    intro: &str,
) {
    let bases: Vec<(Mode, &str)> = [
        (Mode::KernelVxlan, "kernel-vxlan"),
        (Mode::Routed, "routed"),
    ]
    .into_iter()
    .filter(|(b, _)| {
        [*b, other.baseline(*b), Mode::Overlay, other]
            .iter()
            .all(|m| modes.contains(m))
    })
    .collect();
    if bases.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n{intro}:\n");
    let _ = write!(s, "| metric |");
    for (_, name) in &bases {
        let _ = write!(s, " vs {name} |");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|---|{}", "---|".repeat(bases.len()));
    for &k in metrics {
        let cells: Vec<f64> = bases
            .iter()
            .map(|(b, _)| {
                ratio(samples, other, other.baseline(*b), k) / ratio(samples, Mode::Overlay, *b, k)
            })
            .collect();
        if cells.iter().all(|c| c.is_nan()) {
            continue;
        }
        let _ = write!(s, "| {} |", k.label());
        for c in cells {
            cell(s, c);
        }
        let _ = writeln!(s);
    }
}

pub fn json(samples: &Samples) -> String {
    let map: serde_json::Map<String, serde_json::Value> = samples
        .iter()
        .map(|((m, k), v)| (format!("{}/{:?}", m.label(), k), serde_json::json!(v)))
        .collect();
    serde_json::to_string_pretty(&map).unwrap_or_default()
}
