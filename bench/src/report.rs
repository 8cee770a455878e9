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

pub fn markdown(modes: &[Mode], samples: &Samples, rounds: usize, seconds: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Datapath benchmark\n");
    let _ = writeln!(
        s,
        "Machine: {}. Two hosts (network namespaces on a veth/bridge underlay, MTU 1500), one container \
         each (MTU 1450), {rounds} rounds of {seconds} s per measurement, modes alternated every round; \
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
        if !modes.contains(&base) {
            continue;
        }
        let _ = writeln!(
            s,
            "\nRatio of medians to `{name}` (`{name}-ipv6` for the IPv6 modes; >1 is better for every row):\n"
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
    ipv6_cost(&mut s, modes, samples, &metrics);
    let _ = writeln!(
        s,
        "\nModes: `routed` plain routing of container /32s between the hosts (no encapsulation); \
         `kernel-vxlan` flannel's backend (vxlan device, static FDB/neighbour entries); `kernel-vxlan-bpf` Cilium's tunnel mode (collect_md vxlan device, a TC program on the container veth sets the tunnel key and redirects to it, one on the device's ingress redirects to the container's veth peer); `overlay` this project with its defaults (on a veth underlay: TC programs only, no XDP); `overlay-xdp-native` with the \
         XDP filter forced native (on veth the kernel then strips GSO from the peer); `overlay-xdp-skb` with the XDP filter in generic mode; \
         `routed-ipv6`, `kernel-vxlan-ipv6` and `overlay-ipv6` the same with IPv6 in the containers (routed: IPv6 between the hosts too; \
         the VXLAN underlay stays IPv4). sockperf 3.7 has no IPv6: the IPv6 modes' latency is the bench's own ping-pong, measured for every mode.\n\n\
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

/// Whether IPv6 costs the overlay more than it costs the alternatives: the overlay's IPv6
/// ratio to each alternative divided by its IPv4 ratio (1: the same standing in both
/// families; below 1: IPv6 loses ground).
fn ipv6_cost(s: &mut String, modes: &[Mode], samples: &Samples, metrics: &[Metric]) {
    let bases: Vec<(Mode, &str)> = [
        (Mode::KernelVxlan, "kernel-vxlan"),
        (Mode::Routed, "routed"),
    ]
    .into_iter()
    .filter(|(b, _)| {
        [
            *b,
            Mode::Overlay6.baseline(*b),
            Mode::Overlay,
            Mode::Overlay6,
        ]
        .iter()
        .all(|m| modes.contains(m))
    })
    .collect();
    if bases.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nIPv6 against IPv4: the overlay's IPv6 ratio to each alternative divided by its IPv4 ratio \
         (1.00: IPv6 costs the overlay exactly what it costs the alternative):\n"
    );
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
                ratio(samples, Mode::Overlay6, Mode::Overlay6.baseline(*b), k)
                    / ratio(samples, Mode::Overlay, *b, k)
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
