//! Service load balancing: connections per second and throughput through a VIP balanced by
//! the eBPF datapath, against the same backends reached directly, and against the kernel's
//! balancers doing the same job on a kernel-vxlan overlay: kube-proxy's iptables DNAT and,
//! where the kernel has it, IPVS (Minuteman's later datapath). Variants alternate every
//! round; medians are reported.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use overlay_daemon::tables::{BackendSpec, Proto, ServiceSpec};
use overlay_tests::{ChildGuard, Netns};

use crate::{
    modes::{Mode, Pair, SERVER_IP},
    report::median,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 10);
/// The balanced service: VIP:80 over three backends (three ports of the server container).
const SERVICE_PORT: u16 = 80;
const BACKEND_PORTS: [u16; 3] = [8080, 8081, 8082];
/// A one-backend service for iperf3 (its control and data connections must meet).
const IPERF_PORT: u16 = 5201;
const CLIENT_THREADS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    /// The eBPF datapath balancing the VIP (Maglev + conntrack in TC).
    Vip,
    /// The eBPF overlay, client picking backends itself: the cost of no balancer.
    Direct,
    /// Kernel vxlan + kube-proxy-style iptables DNAT on the client's host.
    Iptables,
    /// Kernel vxlan + IPVS (NAT mode, Maglev scheduler) on the client's host.
    Ipvs,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Vip => "overlay VIP (eBPF)",
            Variant::Direct => "overlay direct",
            Variant::Iptables => "kernel vxlan + iptables",
            Variant::Ipvs => "kernel vxlan + IPVS",
        }
    }
}

struct Setup {
    variant: Variant,
    pair: Pair,
    _servers: Vec<Server>,
    _iperf: ChildGuard,
}

pub fn run(rounds: usize, seconds: u32) -> Result<String> {
    let mut variants = vec![Variant::Vip, Variant::Direct, Variant::Iptables];
    let ipvs = ipvs_available();
    if ipvs {
        variants.push(Variant::Ipvs);
    }
    let setups: Vec<Setup> = variants.iter().map(|v| setup(*v)).collect::<Result<_>>()?;
    let mut samples: BTreeMap<(Variant, &'static str), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for k in 0..setups.len() {
            let s = &setups[(round + k) % setups.len()];
            eprintln!(
                "service round {}/{rounds}: {}",
                round + 1,
                s.variant.label()
            );
            let cps = connections_per_second(s, seconds)?;
            samples.entry((s.variant, "cps")).or_default().push(cps);
            let gbps = iperf(s, seconds)?;
            samples.entry((s.variant, "gbps")).or_default().push(gbps);
        }
    }
    drop(setups);
    Ok(report(&variants, &samples, rounds, seconds, ipvs))
}

fn ipvs_available() -> bool {
    let ns = Netns::create(&format!("ovb{}-ipvs", overlay_tests::netns::unique_id()));
    ns.output("ipvsadm", &["-Ln"]).status.success()
}

fn setup(variant: Variant) -> Result<Setup> {
    let mut pair = match variant {
        Variant::Vip | Variant::Direct => Pair::build(Mode::Overlay)?,
        Variant::Iptables | Variant::Ipvs => Pair::build(Mode::KernelVxlan)?,
    };
    for ns in [&pair.client, &pair.server] {
        ns.sysctl("net/ipv4/ip_local_port_range", "1024 65000");
        ns.sysctl("net/ipv4/tcp_tw_reuse", "1");
    }
    match variant {
        Variant::Vip => {
            let t = pair.topology_mut().context("overlay pair")?;
            let backends = |ports: &[u16]| {
                ports
                    .iter()
                    .map(|p| BackendSpec {
                        ip: SERVER_IP,
                        port: *p,
                        weight: 1,
                    })
                    .collect()
            };
            for (name, port, ports) in [
                ("svc", SERVICE_PORT, &BACKEND_PORTS[..]),
                ("iperf", IPERF_PORT, &[IPERF_PORT][..]),
            ] {
                t.tables.services.push(ServiceSpec {
                    name: name.into(),
                    network: "bench".into(),
                    vip: VIP,
                    port,
                    proto: Proto::Tcp,
                    backends: backends(ports),
                });
            }
            t.write_tables();
            t.wait_status(0, "services installed", |s| s["services"] == 2);
        }
        Variant::Direct => {}
        Variant::Iptables => {
            let host = pair.plain_host(0).context("plain pair")?;
            // kube-proxy's iptables mode: one DNAT rule per backend, chosen with
            // probabilities 1/3, 1/2, 1 (uniform overall), in PREROUTING of the client's host.
            let dnat = |dport: &str, probability: Option<f64>, to: &str| {
                let p = probability.map(|p| format!("{p:.8}"));
                let mut args = vec![
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-d",
                    "198.19.250.10",
                    "-p",
                    "tcp",
                    "--dport",
                    dport,
                ];
                if let Some(p) = &p {
                    args.extend(["-m", "statistic", "--mode", "random", "--probability", p]);
                }
                args.extend(["-j", "DNAT", "--to-destination", to]);
                host.run("iptables", &args);
            };
            let n = BACKEND_PORTS.len();
            for (i, port) in BACKEND_PORTS.iter().enumerate() {
                let probability = (i + 1 < n).then(|| 1.0 / (n - i) as f64);
                dnat("80", probability, &format!("{SERVER_IP}:{port}"));
            }
            dnat("5201", None, &format!("{SERVER_IP}:{IPERF_PORT}"));
        }
        Variant::Ipvs => {
            let host = pair.plain_host(0).context("plain pair")?;
            // As kube-proxy's IPVS mode: the VIP on a dummy device, NAT (masquerade) mode.
            host.ip(&["link", "add", "ipvs0", "type", "dummy"]);
            host.ip(&["addr", "add", "198.19.250.10/32", "dev", "ipvs0"]);
            host.ip(&["link", "set", "ipvs0", "up"]);
            let sched = if host
                .output("ipvsadm", &["-A", "-t", "198.19.250.10:80", "-s", "mh"])
                .status
                .success()
            {
                "mh"
            } else {
                host.run("ipvsadm", &["-A", "-t", "198.19.250.10:80", "-s", "rr"]);
                "rr"
            };
            eprintln!("IPVS scheduler: {sched}");
            for port in BACKEND_PORTS {
                let to = format!("{SERVER_IP}:{port}");
                host.run(
                    "ipvsadm",
                    &["-a", "-t", "198.19.250.10:80", "-r", &to, "-m"],
                );
            }
            host.run("ipvsadm", &["-A", "-t", "198.19.250.10:5201", "-s", "rr"]);
            host.run(
                "ipvsadm",
                &[
                    "-a",
                    "-t",
                    "198.19.250.10:5201",
                    "-r",
                    "198.19.1.21:5201",
                    "-m",
                ],
            );
        }
    }
    let servers = BACKEND_PORTS
        .iter()
        .map(|p| Server::start(&pair.server, *p))
        .collect::<Result<_>>()?;
    let iperf = crate::measure::iperf_server(&pair.server)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Setup {
        variant,
        pair,
        _servers: servers,
        _iperf: iperf,
    })
}

/// Short TCP connections (connect, 8 bytes each way, server closes) from several client
/// threads for `seconds`; completed connections per second.
fn connections_per_second(s: &Setup, seconds: u32) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let direct = s.variant == Variant::Direct;
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            s.pair.client.spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let addr = if direct {
                        SocketAddrV4::new(SERVER_IP, BACKEND_PORTS[i % BACKEND_PORTS.len()])
                    } else {
                        SocketAddrV4::new(VIP, SERVICE_PORT)
                    };
                    i += 1;
                    match one_connection(addr) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds as u64));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{}: {failed} connections failed", s.variant.label());
    }
    Ok(done.load(Ordering::Relaxed) as f64 / secs)
}

fn one_connection(addr: SocketAddrV4) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_nodelay(true)?;
    conn.write_all(b"01234567")?;
    let mut buf = [0u8; 8];
    conn.read_exact(&mut buf)?;
    if &buf != b"01234567" {
        return Err(std::io::Error::other("echo differs"));
    }
    // The server closes first, so TIME_WAIT stays on its side.
    let mut rest = [0u8; 1];
    match conn.read(&mut rest)? {
        0 => Ok(()),
        _ => Err(std::io::Error::other("server sent more than the echo")),
    }
}

fn iperf(s: &Setup, seconds: u32) -> Result<f64> {
    let target = match s.variant {
        Variant::Direct => SERVER_IP,
        _ => VIP,
    }
    .to_string();
    let t = seconds.to_string();
    let out = s
        .pair
        .client
        .output("iperf3", &["-c", &target, "-p", "5201", "-J", "-t", &t]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 via {}: {}",
            s.variant.label(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3 via {}: {e}", s.variant.label());
    }
    Ok(json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9)
}

/// An 8-byte echo server that closes each connection after answering.
struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = ns.spawn(move || {
            let listener = match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = tx.send(Ok(()));
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_nodelay(true);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 8];
                        if conn.read_exact(&mut buf).is_ok() {
                            let _ = conn.write_all(&buf);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .context("backend server start")?
            .with_context(|| format!("binding backend port {port}"))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn report(
    variants: &[Variant],
    samples: &BTreeMap<(Variant, &'static str), Vec<f64>>,
    rounds: usize,
    seconds: u32,
    ipvs: bool,
) -> String {
    let med = |v: Variant, m: &str| samples.get(&(v, m)).map(|s| median(s)).unwrap_or(f64::NAN);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Service load balancing\n\n{rounds} rounds x {seconds} s, medians; one client container, \
         three backends (three ports of one container on the other host), {CLIENT_THREADS} client threads.\n"
    );
    let mut header = "| metric |".to_owned();
    let mut rule = "|---|".to_owned();
    for v in variants {
        let _ = write!(header, " {} |", v.label());
        rule += "---:|";
    }
    header += " VIP / direct | VIP / iptables |";
    rule += "---:|---:|";
    if ipvs {
        header += " VIP / IPVS |";
        rule += "---:|";
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for (metric, label, digits) in [
        ("cps", "TCP connections/s (short, 8 B echo)", 0),
        ("gbps", "TCP throughput, 1 stream (Gbit/s)", 2),
    ] {
        let mut row = format!("| {label} |");
        for v in variants {
            let _ = write!(row, " {:.*} |", digits, med(*v, metric));
        }
        let vip = med(Variant::Vip, metric);
        let _ = write!(
            row,
            " {:.2} | {:.2} |",
            vip / med(Variant::Direct, metric),
            vip / med(Variant::Iptables, metric)
        );
        if ipvs {
            let _ = write!(row, " {:.2} |", vip / med(Variant::Ipvs, metric));
        }
        let _ = writeln!(out, "{row}");
    }
    if !ipvs {
        let _ = writeln!(
            out,
            "\nIPVS was not measured: this kernel has no IP Virtual Server (`ipvsadm -Ln` fails; \
             CONFIG_IP_VS is not set). On a kernel with it the IPVS column is added automatically."
        );
    }
    out
}
