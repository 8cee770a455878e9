//! One measurement of one metric on one pair, with iperf3 and sockperf, and the CPU time the
//! whole machine spent meanwhile (from /proc/stat).

use std::{process::Stdio, time::Duration};

use anyhow::{bail, Context as _, Result};
use overlay_tests::ChildGuard;

use crate::{modes::Pair, pingpong};

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
    /// CPU time (all cores) per packet of 64-byte UDP sent at CPU_RATE_PPS on average, ns.
    CpuPerPacket,
    /// sockperf ping-pong, round trip p50 (µs), client and server on one CPU: the datapath
    /// and the stack, without a cross-CPU wake-up.
    RttP50,
    /// The same, p99.
    RttP99,
    /// sockperf ping-pong with client and server on two CPUs, idle CPUs kept polling (PM QoS
    /// latency 0): every message also wakes a process on the other CPU with an
    /// inter-processor interrupt.
    RttP50Poll,
    /// The same, p99.
    RttP99Poll,
    /// The same with idle CPUs allowed to halt, as they do by default: on a VM every wake-up
    /// then also costs the hypervisor's exit and re-entry, which dwarfs the datapath.
    RttP50Halt,
    /// The same, p99.
    RttP99Halt,
    /// CPU time (all cores, softirq + system + user) per Gbit transferred in Tcp1, ms.
    CpuPerGbit,
    /// The bench's own TCP ping-pong (`pingpong.rs`), one CPU, round trip p50 (µs): what
    /// RttP50 measures, for both families (the packaged sockperf 3.7 has no IPv6).
    PingPongP50,
    /// The same, p99.
    PingPongP99,
}

impl Metric {
    pub const ALL: [Metric; 15] = [
        Metric::Tcp1,
        Metric::Tcp4,
        Metric::Udp64,
        Metric::Udp1400,
        Metric::Flood64,
        Metric::CpuPerPacket,
        Metric::RttP50,
        Metric::RttP99,
        Metric::RttP50Poll,
        Metric::RttP99Poll,
        Metric::RttP50Halt,
        Metric::RttP99Halt,
        Metric::CpuPerGbit,
        Metric::PingPongP50,
        Metric::PingPongP99,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::Tcp1 => "TCP 1 stream (Gbit/s)",
            Metric::Tcp4 => "TCP 4 streams (Gbit/s)",
            Metric::Udp64 => "UDP 64 B (kpps received)",
            Metric::Udp1400 => "UDP 1400 B (kpps received)",
            Metric::Flood64 => "UDP 64 B flood, trafgen (kpps received)",
            Metric::CpuPerPacket => "CPU per packet, 50 kpps average (ns)",
            Metric::RttP50 => "RTT p50, one CPU (µs)",
            Metric::RttP99 => "RTT p99, one CPU (µs)",
            Metric::RttP50Poll => "RTT p50, two CPUs (µs)",
            Metric::RttP99Poll => "RTT p99, two CPUs (µs)",
            Metric::RttP50Halt => "RTT p50, two CPUs, idle halts (µs)",
            Metric::RttP99Halt => "RTT p99, two CPUs, idle halts (µs)",
            Metric::CpuPerGbit => "CPU per Gbit, TCP 1 stream (ms)",
            Metric::PingPongP50 => "RTT p50, one CPU, bench ping-pong (µs)",
            Metric::PingPongP99 => "RTT p99, one CPU, bench ping-pong (µs)",
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
    /// trafgen UDP 64-byte flood, and the CPU per packet of the same at 50 kpps on average.
    Flood,
    /// sockperf TCP ping-pong (IPv4): on one CPU, and on two with idle CPUs polling and
    /// halting; the bench's own ping-pong on one CPU (both families).
    Rtt,
}

impl Test {
    pub const ALL: [Test; 4] = [Test::Tcp, Test::Udp, Test::Flood, Test::Rtt];
}

/// The first two CPUs this process may run on: the sockperf server is pinned to the first,
/// the client to the first or the second. Pinned processes make the latency figures
/// repeatable: unpinned, the scheduler's placement decides whether a round trip includes
/// cross-CPU wake-ups, which on a VM cost more than the whole datapath.
fn allowed_cpus() -> Result<(usize, Option<usize>)> {
    use nix::sched::{sched_getaffinity, CpuSet};
    let set = sched_getaffinity(nix::unistd::Pid::from_raw(0)).context("sched_getaffinity")?;
    let mut cpus = (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false));
    let first = cpus
        .next()
        .context("no CPU in this process's affinity mask")?;
    Ok((first, cpus.next()))
}

/// Servers running in the server container for the whole benchmark.
pub struct Servers {
    _iperf: ChildGuard,
    /// IPv4 only: sockperf 3.7 has no IPv6.
    _sockperf: Option<ChildGuard>,
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
    if pair.mode.ipv6() {
        return Ok(Servers {
            _iperf: iperf,
            _sockperf: None,
        });
    }
    let (server_cpu, _) = allowed_cpus()?;
    let sockperf = pair
        .server
        .command("taskset")
        .args([
            "-c",
            &server_cpu.to_string(),
            "sockperf",
            "server",
            "-i",
            &pair.server_ip.to_string(),
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
        _sockperf: Some(ChildGuard::new(sockperf, "sockperf server")),
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
    let server = pair.server_ip.to_string();
    let mut full = vec!["-c", server.as_str(), "-p", "5201", "-J"];
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
    let (server_cpu, other_cpu) = allowed_cpus()?;
    let (p50, p99) = pingpong::run(pair, seconds, server_cpu)?;
    out.push((Metric::PingPongP50, p50));
    out.push((Metric::PingPongP99, p99));
    if pair.mode.ipv6() {
        return Ok(());
    }
    let (p50, p99) = sockperf(pair, seconds, server_cpu)?;
    out.push((Metric::RttP50, p50));
    out.push((Metric::RttP99, p99));
    let Some(cpu) = other_cpu else {
        return Ok(());
    };
    let (p50, p99) = sockperf(pair, seconds, cpu)?;
    out.push((Metric::RttP50Halt, p50));
    out.push((Metric::RttP99Halt, p99));
    match IdlePolling::request() {
        Ok(_polling) => {
            let (p50, p99) = sockperf(pair, seconds, cpu)?;
            out.push((Metric::RttP50Poll, p50));
            out.push((Metric::RttP99Poll, p99));
        }
        Err(e) => eprintln!("two-CPU latency with polling idle CPUs not measured: {e:#}"),
    }
    Ok(())
}

/// A PM QoS request for zero wake-up latency: while it is held, cpuidle keeps idle CPUs in
/// their polling state instead of halting them. The kernel drops the request when the file
/// is closed, so nothing outlives the measurement (the way tuned and cyclictest do it).
struct IdlePolling {
    _request: std::fs::File,
}

impl IdlePolling {
    fn request() -> Result<Self> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .context("/dev/cpu_dma_latency (needs root and CONFIG_PM)")?;
        file.write_all(&0i32.to_ne_bytes())
            .context("writing a 0 µs request to /dev/cpu_dma_latency")?;
        Ok(Self { _request: file })
    }
}

/// sockperf TCP ping-pong with the client pinned to `cpu` (the server is on the first allowed
/// CPU).
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
            &pair.server_ip.to_string(),
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

/// The average rate at which CPU per packet is measured, below what the slowest mode carries,
/// so that the figure is measured rather than derived: at full rate one core is saturated in
/// every mode, and CPU per packet is 1 / rate by construction. trafgen's shaper sends each
/// second's packets back to back and then idles, so this is the per-packet cost in bursts;
/// that it agrees with 1 / flood rate shows the flood is bound by per-packet CPU work.
/// `Metric::CpuPerPacket`'s label names it; change both together.
const CPU_RATE_PPS: u32 = 50_000;

/// Datagrams that reached UDP in the server container so far and were not queued: the UDP
/// error counters of its namespace (a full receive buffer, memory, checksum). Queued ones are
/// counted when the sink is drained.
fn server_udp_errors(pair: &Pair) -> Result<u64> {
    if pair.mode.ipv6() {
        return pair
            .server
            .snmp6("Udp6InErrors")
            .context("no Udp6InErrors in the server's /proc/net/snmp6");
    }
    pair.server
        .snmp("Udp", "InErrors")
        .context("no Udp InErrors in the server's /proc/net/snmp")
}

/// A UDP socket in the server container that is not read while the flood runs: once its
/// buffer is full, packets are dropped cheaply there (and counted in InErrors), instead of
/// each one costing an ICMP port-unreachable attempt (a route lookup and the rate limiter)
/// that would weigh on every mode alike.
struct Sink(std::net::UdpSocket);

impl Sink {
    fn bind(pair: &Pair) -> Result<Self> {
        let ip = pair.server_ip;
        let socket = pair
            .server
            .enter(move || std::net::UdpSocket::bind((ip, FLOOD_PORT)))
            .context("UDP sink in the server container")?;
        socket.set_nonblocking(true)?;
        Ok(Self(socket))
    }

    /// Reads and counts what is queued.
    fn drain(&self) -> u64 {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while self.0.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

/// The frame the client's kernel would send to the server: its own MACs and addresses, the
/// next hop's MAC as its neighbour table has it (the gateway, or the server on one subnet).
fn flood_frame(pair: &Pair) -> Result<String> {
    let c = &pair.client;
    let server = pair.server_ip.to_string();
    // Only to resolve the next hop; a lost reply is not an error here.
    c.output("ping", &["-c", "1", "-W", "1", &server]);
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
    let client = pair.client_ip;
    let ip = if pair.mode.ipv6() {
        format!("eth(da={da}, sa={sa}, type=0x86dd), ipv6(saddr={client}, daddr={server}, hl=64)")
    } else {
        format!(
            "eth(da={da}, sa={sa}, type=0x0800), ipv4(saddr={client}, daddr={server}, ttl=64, df)"
        )
    };
    Ok(format!(
        "{{ {ip}, udp(sp=40000, dp={FLOOD_PORT}), fill(0x41, 64) }}"
    ))
}

/// What one trafgen run delivered.
struct Delivered {
    /// Datagrams that reached UDP in the server container.
    packets: u64,
    /// How long trafgen ran, s.
    seconds: f64,
    /// Busy CPU time of the whole machine from the start until the last packet arrived, ns.
    cpu_ns: f64,
}

/// Sends `frame` from the client's eth0 with trafgen for `seconds`: at full speed (packet mmap
/// ring, qdisc bypassed, so the sender costs little and the datapath sets the rate), or at
/// `rate_pps`. Counts what reaches UDP in the server container, so packets the datapath
/// delivered but IP dropped are not counted.
fn trafgen(pair: &Pair, frame: &str, seconds: u32, rate_pps: Option<u32>) -> Result<Delivered> {
    let sink = Sink::bind(pair)?;
    let errors0 = server_udp_errors(pair)?;
    let secs = seconds.to_string();
    let rate = rate_pps.map(|r| format!("{r}pps"));
    let mut args = vec![
        "-s",
        "INT",
        &secs,
        "trafgen",
        "-o",
        "eth0",
        "-P",
        "1",
        "--no-sock-mem",
    ];
    if let Some(rate) = &rate {
        args.extend(["-b", rate.as_str()]);
    }
    args.extend(["-C", frame]);

    let jiffies0 = busy_jiffies();
    let t0 = std::time::Instant::now();
    let out = pair.client.output("timeout", &args);
    let elapsed = t0.elapsed().as_secs_f64();
    // `timeout` exits 124 when it had to stop trafgen, which is how a full run ends; anything
    // else means trafgen stopped by itself (a bad frame, no interface).
    if out.status.code() != Some(124) || elapsed < seconds as f64 {
        bail!(
            "trafgen on {} stopped after {elapsed:.2} s ({}): {}",
            pair.mode.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // Let the last packets arrive before counting; the CPU they cost is part of the window.
    std::thread::sleep(Duration::from_millis(200));
    let jiffies = busy_jiffies() - jiffies0;
    let packets = server_udp_errors(pair)? - errors0 + sink.drain();
    if packets == 0 {
        bail!(
            "trafgen on {}: nothing arrived: {}",
            pair.mode.label(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Delivered {
        packets,
        seconds: elapsed,
        cpu_ns: jiffies as f64 / 100.0 * 1e9, // USER_HZ
    })
}

/// The 64-byte UDP flood: the rate that arrives at full speed (kpps), and the CPU spent per
/// packet at CPU_RATE_PPS on average (ns).
fn flood(pair: &Pair, seconds: u32) -> Result<(f64, f64)> {
    let frame = flood_frame(pair)?;
    let full = trafgen(pair, &frame, seconds, None)?;
    let paced = trafgen(pair, &frame, seconds, Some(CPU_RATE_PPS))?;
    Ok((
        full.packets as f64 / full.seconds / 1e3,
        paced.cpu_ns / paced.packets as f64,
    ))
}
