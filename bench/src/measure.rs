//! One measurement of one metric on one pair, with iperf3 and sockperf, and the CPU time the
//! whole machine spent meanwhile (from /proc/stat).

use std::{process::Stdio, time::Duration};

use anyhow::{bail, Context as _, Result};
use overlay_tests::ChildGuard;

use crate::modes::{Pair, SERVER_IP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// iperf3, one TCP stream, Gbit/s received.
    Tcp1,
    /// iperf3, four TCP streams, Gbit/s received.
    Tcp4,
    /// iperf3 UDP 64-byte payloads at full rate, packets/s received.
    Udp64,
    /// iperf3 UDP 1400-byte payloads at full rate, packets/s received.
    Udp1400,
    /// sockperf ping-pong, round trip p50 (µs).
    RttP50,
    /// sockperf ping-pong, round trip p99 (µs).
    RttP99,
    /// CPU time (all cores, softirq + system + user) per Gbit transferred in Tcp1, ms.
    CpuPerGbit,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Tcp1,
        Metric::Tcp4,
        Metric::Udp64,
        Metric::Udp1400,
        Metric::RttP50,
        Metric::RttP99,
        Metric::CpuPerGbit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::Tcp1 => "TCP 1 stream (Gbit/s)",
            Metric::Tcp4 => "TCP 4 streams (Gbit/s)",
            Metric::Udp64 => "UDP 64 B (kpps received)",
            Metric::Udp1400 => "UDP 1400 B (kpps received)",
            Metric::RttP50 => "RTT p50 (µs)",
            Metric::RttP99 => "RTT p99 (µs)",
            Metric::CpuPerGbit => "CPU per Gbit, TCP 1 stream (ms)",
        }
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::Tcp1 | Metric::Tcp4 | Metric::Udp64 | Metric::Udp1400
        )
    }
}

/// Servers running in the server container for the whole benchmark.
pub struct Servers {
    _iperf: ChildGuard,
    _sockperf: ChildGuard,
}

/// An iperf3 server on port 5201 in `ns`, stopped on drop.
pub fn iperf_server(ns: &overlay_tests::Netns) -> Result<ChildGuard> {
    let child = ns
        .command("iperf3")
        .args(["-s", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 (installed by cargo xtask setup)")?;
    Ok(ChildGuard::new(child, "iperf3 server"))
}

pub fn start_servers(pair: &Pair) -> Result<Servers> {
    let iperf = iperf_server(&pair.server)?;
    let sockperf = pair
        .server
        .command("sockperf")
        .args([
            "server",
            "-i",
            &SERVER_IP.to_string(),
            "-p",
            "11111",
            "--tcp",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("sockperf (installed by cargo xtask setup)")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Servers {
        _iperf: iperf,
        _sockperf: ChildGuard::new(sockperf, "sockperf server"),
    })
}

/// Busy CPU jiffies of the whole machine (user + nice + system + irq + softirq).
fn busy_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0))
        .sum()
}

fn iperf(pair: &Pair, args: &[&str]) -> Result<serde_json::Value> {
    let mut full = vec!["-c", "198.19.1.21", "-p", "5201", "-J"];
    full.extend_from_slice(args);
    let out = pair.client.output("iperf3", &full);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 {args:?}: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3 {args:?} on {}: {e}", pair.mode.label());
    }
    Ok(json)
}

/// Runs the measurements of one round on one pair; returns (metric, value) pairs.
pub fn round(pair: &Pair, seconds: u32) -> Result<Vec<(Metric, f64)>> {
    let t = seconds.to_string();
    let mut out = Vec::new();

    let jiffies0 = busy_jiffies();
    let json = iperf(pair, &["-t", &t])?;
    let jiffies = busy_jiffies() - jiffies0;
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let bytes = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    out.push((Metric::Tcp1, bps / 1e9));
    let hz = 100.0; // USER_HZ
    if bytes > 0.0 {
        out.push((
            Metric::CpuPerGbit,
            jiffies as f64 / hz * 1000.0 / (bytes * 8.0 / 1e9),
        ));
    }

    let json = iperf(pair, &["-t", &t, "-P", "4"])?;
    out.push((
        Metric::Tcp4,
        json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9,
    ));

    for (metric, len) in [(Metric::Udp64, "64"), (Metric::Udp1400, "1400")] {
        let json = iperf(pair, &["-t", &t, "-u", "-b", "0", "-l", len])?;
        let sum = &json["end"]["sum"];
        let received =
            sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
        let secs = sum["seconds"].as_f64().unwrap_or(seconds as f64).max(0.001);
        out.push((metric, received / secs / 1e3));
    }

    let sp = pair.client.output(
        "sockperf",
        &[
            "ping-pong",
            "-i",
            &SERVER_IP.to_string(),
            "-p",
            "11111",
            "--tcp",
            "-t",
            &t,
            "--full-rtt",
        ],
    );
    let text =
        String::from_utf8_lossy(&sp.stdout).into_owned() + &String::from_utf8_lossy(&sp.stderr);
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.contains(&format!("percentile {p}")))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    match (pct("50.000"), pct("99.000")) {
        (Some(p50), Some(p99)) => {
            out.push((Metric::RttP50, p50));
            out.push((Metric::RttP99, p99));
        }
        _ => bail!(
            "sockperf on {}: no percentiles in its output:\n{text}",
            pair.mode.label()
        ),
    }
    Ok(out)
}
