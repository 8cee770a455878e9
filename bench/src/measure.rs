//! One measurement of one metric on one pair, with iperf3 and sockperf, and the CPU time the
//! whole machine spent meanwhile (from /proc/stat).

use std::{process::Stdio, time::Duration};

use anyhow::{bail, Context as _, Result};
use overlay_tests::ChildGuard;

use crate::modes::{Pair, CLIENT_IP, SERVER_IP};

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
    /// trafgen flooding UDP 64-byte payloads from the client's interface (no socket layer on
    /// the sender), packets/s arriving in the server container.
    Flood64,
    /// CPU time (all cores) per packet of that flood, ns.
    CpuPerPacket,
    /// sockperf ping-pong, round trip p50 (µs), client and server on one CPU: the datapath
    /// and the stack, without a cross-CPU wake-up.
    RttP50,
    /// The same, p99.
    RttP99,
    /// sockperf ping-pong with client and server on two CPUs: every message also wakes a
    /// process on the other CPU (inter-processor interrupt, idle exit).
    RttP50Cross,
    /// The same, p99.
    RttP99Cross,
    /// CPU time (all cores, softirq + system + user) per Gbit transferred in Tcp1, ms.
    CpuPerGbit,
}

impl Metric {
    pub const ALL: [Metric; 11] = [
        Metric::Tcp1,
        Metric::Tcp4,
        Metric::Udp64,
        Metric::Udp1400,
        Metric::Flood64,
        Metric::CpuPerPacket,
        Metric::RttP50,
        Metric::RttP99,
        Metric::RttP50Cross,
        Metric::RttP99Cross,
        Metric::CpuPerGbit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::Tcp1 => "TCP 1 stream (Gbit/s)",
            Metric::Tcp4 => "TCP 4 streams (Gbit/s)",
            Metric::Udp64 => "UDP 64 B (kpps received)",
            Metric::Udp1400 => "UDP 1400 B (kpps received)",
            Metric::Flood64 => "UDP 64 B flood, trafgen (kpps received)",
            Metric::CpuPerPacket => "CPU per packet, flood (ns)",
            Metric::RttP50 => "RTT p50, one CPU (µs)",
            Metric::RttP99 => "RTT p99, one CPU (µs)",
            Metric::RttP50Cross => "RTT p50, two CPUs (µs)",
            Metric::RttP99Cross => "RTT p99, two CPUs (µs)",
            Metric::CpuPerGbit => "CPU per Gbit, TCP 1 stream (ms)",
        }
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::Tcp1 | Metric::Tcp4 | Metric::Udp64 | Metric::Udp1400 | Metric::Flood64
        )
    }
}

/// The measurements of a datapath round, to run a subset (`--tests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Test {
    /// iperf3 TCP, 1 and 4 streams, and the CPU per Gbit of the first.
    Tcp,
    /// iperf3 UDP, 64 and 1400 bytes.
    Udp,
    /// trafgen UDP 64-byte flood and its CPU per packet.
    Flood,
    /// sockperf TCP ping-pong.
    Rtt,
}

impl Test {
    pub const ALL: [Test; 4] = [Test::Tcp, Test::Udp, Test::Flood, Test::Rtt];
}

/// The CPU the sockperf server is pinned to. Pinned processes make the latency figures
/// repeatable: unpinned, the scheduler's placement decides whether a round trip includes
/// cross-CPU wake-ups, which on a VM cost more than the whole datapath.
const SERVER_CPU: usize = 0;

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
        .command("taskset")
        .args([
            "-c",
            &SERVER_CPU.to_string(),
            "sockperf",
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
pub fn round(pair: &Pair, seconds: u32, tests: &[Test]) -> Result<Vec<(Metric, f64)>> {
    let mut out = Vec::new();
    for test in tests {
        match test {
            Test::Tcp => tcp(pair, seconds, &mut out)?,
            Test::Udp => udp(pair, seconds, &mut out)?,
            Test::Flood => {
                let (kpps, ns_per_packet) = flood(pair, seconds)?;
                out.push((Metric::Flood64, kpps));
                out.push((Metric::CpuPerPacket, ns_per_packet));
            }
            Test::Rtt => rtt(pair, seconds, &mut out)?,
        }
    }
    Ok(out)
}

fn tcp(pair: &Pair, seconds: u32, out: &mut Vec<(Metric, f64)>) -> Result<()> {
    let t = seconds.to_string();

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
    Ok(())
}

fn udp(pair: &Pair, seconds: u32, out: &mut Vec<(Metric, f64)>) -> Result<()> {
    let t = seconds.to_string();
    for (metric, len) in [(Metric::Udp64, "64"), (Metric::Udp1400, "1400")] {
        let json = iperf(pair, &["-t", &t, "-u", "-b", "0", "-l", len])?;
        let sum = &json["end"]["sum"];
        let received =
            sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
        let secs = sum["seconds"].as_f64().unwrap_or(seconds as f64).max(0.001);
        out.push((metric, received / secs / 1e3));
    }
    Ok(())
}

fn rtt(pair: &Pair, seconds: u32, out: &mut Vec<(Metric, f64)>) -> Result<()> {
    let (p50, p99) = sockperf(pair, seconds, SERVER_CPU)?;
    out.push((Metric::RttP50, p50));
    out.push((Metric::RttP99, p99));
    if num_cpus() > 1 {
        let (p50, p99) = sockperf(pair, seconds, SERVER_CPU + 1)?;
        out.push((Metric::RttP50Cross, p50));
        out.push((Metric::RttP99Cross, p99));
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// sockperf TCP ping-pong with the client pinned to `cpu` (the server is on SERVER_CPU).
/// Returns the round trip's p50 and p99 in µs.
fn sockperf(pair: &Pair, seconds: u32, cpu: usize) -> Result<(f64, f64)> {
    let sp = pair.client.output(
        "taskset",
        &[
            "-c",
            &cpu.to_string(),
            "sockperf",
            "ping-pong",
            "-i",
            &SERVER_IP.to_string(),
            "-p",
            "11111",
            "--tcp",
            "-t",
            &seconds.to_string(),
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
        (Some(p50), Some(p99)) => Ok((p50, p99)),
        _ => bail!(
            "sockperf on {}: no percentiles in its output:\n{text}",
            pair.mode.label()
        ),
    }
}

const FLOOD_PORT: u16 = 9;

/// Packets received so far on the server container's eth0 (/proc/net/dev is per namespace).
fn server_rx_packets(pair: &Pair) -> Result<u64> {
    let out = pair.server.output("cat", &["/proc/net/dev"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("eth0:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .context("no eth0 in the server's /proc/net/dev")
}

/// The frame the client's kernel would send to the server: its own MACs and addresses, the
/// next hop's MAC as its neighbour table has it (the gateway, or the server on one subnet).
fn flood_frame(pair: &Pair) -> Result<String> {
    let c = &pair.client;
    let server = SERVER_IP.to_string();
    c.run("ping", &["-c", "1", "-W", "1", &server]);
    let json =
        |args: &[&str]| -> Result<serde_json::Value> { Ok(serde_json::from_str(&c.ip(args))?) };
    let route = json(&["-j", "route", "get", &server])?;
    let hop = route[0]["gateway"].as_str().unwrap_or(&server).to_owned();
    let neigh = json(&["-j", "neigh", "show", "dev", "eth0"])?;
    let da = neigh
        .as_array()
        .and_then(|n| n.iter().find(|e| e["dst"] == hop.as_str()))
        .and_then(|e| e["lladdr"].as_str())
        .with_context(|| format!("{}: no neighbour entry for {hop}", pair.mode.label()))?
        .to_owned();
    let link = json(&["-j", "link", "show", "dev", "eth0"])?;
    let sa = link[0]["address"].as_str().context("client eth0 MAC")?;
    Ok(format!(
        "{{ eth(da={da}, sa={sa}, type=0x0800), \
         ipv4(saddr={CLIENT_IP}, daddr={server}, ttl=64, df), \
         udp(sp=40000, dp={FLOOD_PORT}), fill(0x41, 64) }}"
    ))
}

/// Floods 64-byte UDP payloads from the client's eth0 with trafgen (packet mmap ring, qdisc
/// bypassed), so the sender costs little and the datapath sets the rate. The count is what
/// reaches the server container's interface. Returns kpps and CPU ns per received packet.
fn flood(pair: &Pair, seconds: u32) -> Result<(f64, f64)> {
    let frame = flood_frame(pair)?;
    // A socket that is never read: once its buffer is full, packets are dropped cheaply there,
    // instead of each one costing an ICMP port-unreachable attempt (a route lookup and the
    // rate limiter) that would weigh on every mode alike.
    let _sink = pair
        .server
        .enter(|| std::net::UdpSocket::bind((SERVER_IP, FLOOD_PORT)))
        .context("UDP sink in the server container")?;
    let rx0 = server_rx_packets(pair)?;
    let jiffies0 = busy_jiffies();
    let t0 = std::time::Instant::now();
    let out = pair.client.output(
        "timeout",
        &[
            "-s",
            "INT",
            &seconds.to_string(),
            "trafgen",
            "-o",
            "eth0",
            "-P",
            "1",
            "--no-sock-mem",
            "-C",
            &frame,
        ],
    );
    let elapsed = t0.elapsed().as_secs_f64();
    // Let the last packets arrive before counting.
    std::thread::sleep(Duration::from_millis(200));
    let jiffies = busy_jiffies() - jiffies0;
    let received = server_rx_packets(pair)? - rx0;
    if received == 0 {
        bail!(
            "trafgen on {}: nothing arrived: {}",
            pair.mode.label(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cpu_ns = jiffies as f64 / 100.0 * 1e9;
    Ok((received as f64 / elapsed / 1e3, cpu_ns / received as f64))
}
