//! Service load balancing: connections per second and throughput through a VIP balanced by
//! the eBPF datapath, against the same backends reached directly, and against the kernel's
//! balancers doing the same job on a kernel-vxlan overlay: kube-proxy's iptables DNAT and,
//! where the kernel has it, IPVS (Minuteman's later datapath). Variants alternate every
//! round; medians are reported.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use overlay_common::Direction;
use overlay_tests::{ChildGuard, Netns, Topology, TopologySpec};

use crate::{
    modes::{Mode, Pair, SERVER_IP},
    report::median,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 10);
/// The IPv6 VIP of the same services on the dual-stack cluster.
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1250, 0, 0, 0, 0x10);
/// The balanced service: VIP:80 over three backends (three ports of the server container).
const SERVICE_PORT: u16 = 80;
const BACKEND_PORTS: [u16; 3] = [8080, 8081, 8082];
/// A one-backend service for iperf3 (its control and data connections must meet).
const IPERF_PORT: u16 = 5201;
const CLIENT_THREADS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    /// The eBPF overlay balancing the VIP at connect time (cgroup socket hooks).
    VipSocket,
    /// The eBPF overlay balancing the VIP per packet (Maglev + conntrack in TC).
    VipPacket,
    /// The eBPF overlay, client picking backends itself: the cost of no balancer. Measured
    /// on the socket-LB cluster, so only the addressing differs.
    Direct,
    /// Kernel vxlan + kube-proxy-style iptables DNAT on the client's host.
    Iptables,
    /// Kernel vxlan + IPVS (NAT mode, Maglev scheduler) on the client's host.
    Ipvs,
    /// `VipSocket` and `Direct` over IPv6 (IPv6 VIP and backends), on the same cluster.
    VipSocket6,
    Direct6,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::VipSocket => "overlay VIP, socket LB",
            Variant::VipPacket => "overlay VIP, per-packet",
            Variant::Direct => "overlay direct",
            Variant::Iptables => "kernel vxlan + iptables",
            Variant::Ipvs => "kernel vxlan + IPVS",
            Variant::VipSocket6 => "overlay IPv6 VIP, socket LB",
            Variant::Direct6 => "overlay IPv6 direct",
        }
    }

    fn ipv6(self) -> bool {
        matches!(self, Variant::VipSocket6 | Variant::Direct6)
    }

    /// Whether the variant is measured on another's setup (the socket-LB cluster).
    fn shares_setup(self) -> bool {
        matches!(
            self,
            Variant::Direct | Variant::VipSocket6 | Variant::Direct6
        )
    }
}

/// What carries a variant's traffic: an etcd-backed overlay cluster (containers made by the
/// daemons, so the socket hooks know their namespaces) or a kernel-vxlan pair.
enum Net {
    Cluster {
        client: Netns,
        server: Netns,
        // Owns and removes the namespaces above; dropped after them.
        topology: Box<Topology>,
    },
    Pair(Pair),
}

struct Setup {
    variant: Variant,
    _servers: Vec<Server>,
    _iperf: ChildGuard,
    server_ip: Ipv4Addr,
    /// The backends' IPv6 address (the overlay clusters are dual-stack).
    server_ip6: Option<Ipv6Addr>,
    net: Net,
}

impl Setup {
    fn client(&self) -> &Netns {
        match &self.net {
            Net::Cluster { client, .. } => client,
            Net::Pair(p) => &p.client,
        }
    }
}

pub fn run(rounds: usize, seconds: u32) -> Result<String> {
    let mut variants = vec![
        Variant::VipSocket,
        Variant::VipPacket,
        Variant::Direct,
        Variant::Iptables,
        Variant::VipSocket6,
        Variant::Direct6,
    ];
    let ipvs = ipvs_available();
    if ipvs {
        variants.push(Variant::Ipvs);
    }
    let setups: Vec<Setup> = variants
        .iter()
        .filter(|v| !v.shares_setup())
        .map(|v| setup(*v))
        .collect::<Result<_>>()?;
    let of = |v: Variant| {
        let own = if v.shares_setup() {
            Variant::VipSocket
        } else {
            v
        };
        setups
            .iter()
            .find(|s| s.variant == own)
            .expect("a setup per variant")
    };
    let mut samples: BTreeMap<(Variant, &'static str), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for k in 0..variants.len() {
            let v = variants[(round + k) % variants.len()];
            eprintln!("service round {}/{rounds}: {}", round + 1, v.label());
            let cps = connections_per_second(of(v), v, seconds)?;
            samples.entry((v, "cps")).or_default().push(cps);
            let gbps = iperf(of(v), v, seconds)?;
            samples.entry((v, "gbps")).or_default().push(gbps);
        }
    }
    let paths = setups
        .iter()
        .filter_map(path_taken)
        .collect::<Result<Vec<String>>>()?;
    drop(setups);
    Ok(report(&variants, &samples, rounds, seconds, ipvs) + &paths.join(""))
}

/// Which path balanced an overlay VIP variant, from the client host's counters; an error if
/// it was not the one the variant stands for (the figures would be mislabelled).
fn path_taken(s: &Setup) -> Option<Result<String>> {
    let Net::Cluster { topology, .. } = &s.net else {
        return None;
    };
    let c = topology.counters(0);
    let socket = c.traffic(Direction::SockLbConnect).packets;
    let dnat = c.traffic(Direction::LbDnat).packets;
    let ok = match s.variant {
        Variant::VipSocket => socket > 0 && dnat == 0,
        Variant::VipPacket => socket == 0 && dnat > 0,
        _ => return None,
    };
    Some(if ok {
        Ok(format!(
            "\n{}: {socket} connections balanced at connect, {dnat} packets translated in TC.",
            s.variant.label()
        ))
    } else {
        Err(anyhow::anyhow!(
            "{} took the wrong path: sock_lb_connect {socket}, lb_dnat {dnat}",
            s.variant.label()
        ))
    })
}

fn ipvs_available() -> bool {
    let ns = Netns::create(&format!("ovb{}-ipvs", overlay_tests::netns::unique_id()));
    ns.output("ipvsadm", &["-Ln"]).status.success()
}

/// Two hosts with etcd, a client container on the first and the backends' container on the
/// second, made through the daemons' API; the VIP services added with overlayctl.
fn cluster(variant: Variant) -> Result<(Net, Ipv4Addr, Option<Ipv6Addr>)> {
    let mut t = Topology::new(
        TopologySpec::new(2)
            .network6("bench", 100, "198.19.1.0/24", "2001:2:0:1001::/64")
            .with_etcd(10),
    );
    let extra: &[&str] = match variant {
        Variant::VipPacket => &["--socket-lb", "off"],
        _ => &[],
    };
    for h in 0..2 {
        t.start_daemon(h, extra);
    }
    for h in 0..2 {
        t.wait_status(h, "network installed", |s| {
            s["networks"] == 1 && s["vteps"] == 1
        });
    }
    t.add_pod(0, "a", "bench");
    t.add_pod(1, "b", "bench");
    for h in 0..2 {
        t.wait_converged(h);
    }
    let server_ip = t.container("b").ip;
    let server_ip6 = t.container("b").ip6();
    let mut services = 0;
    for (name, vip, server) in [
        ("", IpAddr::V4(VIP), IpAddr::V4(server_ip)),
        ("6", IpAddr::V6(VIP6), IpAddr::V6(server_ip6)),
    ] {
        // IPv6 services only where the socket hooks run (there is no per-packet IPv6 path).
        if vip.is_ipv6() && variant != Variant::VipSocket {
            continue;
        }
        for (svc, port, ports) in [
            ("svc", SERVICE_PORT, &BACKEND_PORTS[..]),
            ("iperf", IPERF_PORT, &[IPERF_PORT][..]),
        ] {
            let name = format!("{svc}{name}");
            let vip = SocketAddr::new(vip, port).to_string();
            let mut args = vec!["service", "add", &name, "--network", "bench", "--vip", &vip];
            let backends: Vec<String> = ports
                .iter()
                .map(|p| SocketAddr::new(server, *p).to_string())
                .collect();
            for b in &backends {
                args.extend(["--backend", b.as_str()]);
            }
            t.overlayctl_ok(0, &args);
            services += 1;
        }
    }
    t.wait_status(0, "services installed", |s| s["services"] == services);
    let client = Netns::open(t.container("a").ns.name());
    let server = Netns::open(t.container("b").ns.name());
    Ok((
        Net::Cluster {
            client,
            server,
            topology: Box::new(t),
        },
        server_ip,
        Some(server_ip6),
    ))
}

fn setup(variant: Variant) -> Result<Setup> {
    let (net, server_ip, server_ip6) = match variant {
        Variant::VipSocket | Variant::VipPacket => cluster(variant)?,
        Variant::Direct | Variant::VipSocket6 | Variant::Direct6 => {
            bail!("measured on the socket-LB cluster")
        }
        Variant::Iptables | Variant::Ipvs => {
            (Net::Pair(Pair::build(Mode::KernelVxlan)?), SERVER_IP, None)
        }
    };
    let (client, server) = match &net {
        Net::Cluster { client, server, .. } => (client, server),
        Net::Pair(p) => (&p.client, &p.server),
    };
    for ns in [client, server] {
        ns.sysctl("net/ipv4/ip_local_port_range", "1024 65000");
        ns.sysctl("net/ipv4/tcp_tw_reuse", "1");
    }
    if let Net::Pair(pair) = &net {
        let host = pair.plain_host(0).context("plain pair")?;
        match variant {
            Variant::Iptables => iptables(host),
            Variant::Ipvs => ipvs(host),
            _ => {}
        }
    }
    let servers = BACKEND_PORTS
        .iter()
        .map(|p| Server::start(server, *p, server_ip6.is_some()))
        .collect::<Result<_>>()?;
    let iperf = crate::measure::iperf_server(server)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Setup {
        variant,
        _servers: servers,
        _iperf: iperf,
        server_ip,
        server_ip6,
        net,
    })
}

/// kube-proxy's iptables mode: one DNAT rule per backend, chosen with probabilities 1/3,
/// 1/2, 1 (uniform overall), in PREROUTING of the client's host.
fn iptables(host: &Netns) {
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

/// As kube-proxy's IPVS mode: the VIP on a dummy device, NAT (masquerade) mode.
fn ipvs(host: &Netns) {
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
    let to = format!("{SERVER_IP}:{IPERF_PORT}");
    host.run(
        "ipvsadm",
        &["-a", "-t", "198.19.250.10:5201", "-r", &to, "-m"],
    );
}

/// Short TCP connections (connect, 8 bytes each way, server closes) from several client
/// threads for `seconds`; completed connections per second.
fn connections_per_second(s: &Setup, variant: Variant, seconds: u32) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let direct = matches!(variant, Variant::Direct | Variant::Direct6);
    let (server_ip, vip) = match (variant.ipv6(), s.server_ip6) {
        (true, Some(ip6)) => (IpAddr::V6(ip6), IpAddr::V6(VIP6)),
        (true, None) => bail!("{}: the setup has no IPv6", variant.label()),
        (false, _) => (IpAddr::V4(s.server_ip), IpAddr::V4(VIP)),
    };
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            s.client().spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let addr = if direct {
                        SocketAddr::new(server_ip, BACKEND_PORTS[i % BACKEND_PORTS.len()])
                    } else {
                        SocketAddr::new(vip, SERVICE_PORT)
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
        bail!("{}: {failed} connections failed", variant.label());
    }
    Ok(done.load(Ordering::Relaxed) as f64 / secs)
}

fn one_connection(addr: SocketAddr) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
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

fn iperf(s: &Setup, variant: Variant, seconds: u32) -> Result<f64> {
    let target = match variant {
        Variant::Direct => s.server_ip.to_string(),
        Variant::Direct6 => s.server_ip6.context("no IPv6")?.to_string(),
        Variant::VipSocket6 => VIP6.to_string(),
        _ => VIP.to_string(),
    };
    let t = seconds.to_string();
    let out = s
        .client()
        .output("iperf3", &["-c", &target, "-p", "5201", "-J", "-t", &t]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 via {}: {}",
            variant.label(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3 via {}: {e}", variant.label());
    }
    Ok(json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9)
}

/// An 8-byte echo server that closes each connection after answering, with one blocking
/// accept thread per client thread: however the balancer spreads connections over the ports,
/// none waits for another's (a single polling thread per port made a random spread slower
/// than a round-robin one, which measured the server, not the balancer).
struct Server {
    stop: Arc<AtomicBool>,
    listener: Option<TcpListener>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on `port` of both families (`[::]`) when `ipv6`, else on IPv4 only.
    fn start(ns: &Netns, port: u16, ipv6: bool) -> Result<Self> {
        let any = if ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let listener = ns
            .spawn(move || TcpListener::bind(SocketAddr::new(any, port)))
            .join()
            .map_err(|_| anyhow::anyhow!("binding backend port {port}: thread panicked"))?
            .with_context(|| format!("binding backend port {port}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..CLIENT_THREADS)
            .map(|_| {
                let (flag, listener) = (stop.clone(), listener.try_clone()?);
                Ok(std::thread::spawn(move || {
                    while !flag.load(Ordering::Relaxed) {
                        let Ok((mut conn, _)) = listener.accept() else {
                            continue;
                        };
                        let _ = conn.set_nodelay(true);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 8];
                        if conn.read_exact(&mut buf).is_ok() {
                            let _ = conn.write_all(&buf);
                        }
                    }
                }))
            })
            .collect::<std::io::Result<_>>()
            .context("accept threads")?;
        Ok(Self {
            stop,
            listener: Some(listener),
            handles,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Shutting the listening socket down wakes every blocked accept (with an error).
        if let Some(l) = self.listener.take() {
            use std::os::fd::AsRawFd;
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for h in self.handles.drain(..) {
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
        "## Service load balancing\n\n{rounds} rounds x {seconds} s, medians (min–max); one client container, \
         three backends (three ports of one container on the other host), {CLIENT_THREADS} client threads.\n"
    );
    let mut header = "| metric |".to_owned();
    let mut rule = "|---|".to_owned();
    for v in variants {
        let _ = write!(header, " {} |", v.label());
        rule += "---:|";
    }
    header += " socket VIP / direct | per-packet VIP / direct | socket VIP / iptables | IPv6 socket VIP / IPv6 direct |";
    rule += "---:|---:|---:|---:|";
    if ipvs {
        header += " socket VIP / IPVS |";
        rule += "---:|";
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for (metric, label, digits) in [
        ("cps", "TCP connections/s (short, 8 B echo)", 0),
        ("gbps", "TCP throughput, 1 stream (Gbit/s)", 2),
    ] {
        let mut row = format!("| {label} |");
        for v in variants {
            let (m, lo, hi) = spread(samples.get(&(*v, metric)));
            let _ = write!(row, " {m:.digits$} ({lo:.digits$}–{hi:.digits$}) |");
        }
        let sock = med(Variant::VipSocket, metric);
        let direct = med(Variant::Direct, metric);
        let _ = write!(
            row,
            " {:.2} | {:.2} | {:.2} | {:.2} |",
            sock / direct,
            med(Variant::VipPacket, metric) / direct,
            sock / med(Variant::Iptables, metric),
            med(Variant::VipSocket6, metric) / med(Variant::Direct6, metric)
        );
        if ipvs {
            let _ = write!(row, " {:.2} |", sock / med(Variant::Ipvs, metric));
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

/// Median, min and max of a variant's samples (NaN when it has none).
fn spread(samples: Option<&Vec<f64>>) -> (f64, f64, f64) {
    match samples {
        Some(s) if !s.is_empty() => (
            median(s),
            s.iter().copied().fold(f64::INFINITY, f64::min),
            s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}
