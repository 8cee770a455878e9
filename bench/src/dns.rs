//! DNS: queries per second and latency from a container against its host's overlayd (the
//! network's gateway) and against dnsmasq (Debian's) on the same host, serving the same
//! names from a hosts file, reached at the host's address. Closed-loop clients in the
//! container, each one query at a time; modes alternate every round.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};
use overlay_tests::{ChildGuard, Topology, TopologySpec};

use crate::report::{median, percentile};

/// Services (names) both servers hold.
const NAMES: usize = 100;
/// Clients querying at once, each waiting for its answer before the next question.
const CLIENTS: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Overlayd,
    Dnsmasq,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Overlayd => "overlayd (gateway)",
            Server::Dnsmasq => "dnsmasq (hosts file)",
        }
    }
}

#[derive(Default)]
struct Figures {
    qps: Vec<f64>,
    /// Microseconds, every answered query of every round.
    latency: Vec<f64>,
    lost: u64,
}

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("query")
}

/// `seconds` of closed-loop querying of `server` from the calling thread's namespace:
/// (answered, latencies in microseconds, lost).
fn load(server: SocketAddr, queries: Arc<Vec<Vec<u8>>>, seconds: u64) -> (u64, Vec<f64>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let (stop, queries) = (stop.clone(), queries.clone());
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
                sock.connect(server).expect("connect");
                sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
                let (mut lat, mut lost, mut buf) = (Vec::new(), 0u64, [0u8; 1500]);
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let q = &queries[i % queries.len()];
                    i += 1;
                    let start = Instant::now();
                    if sock.send(q).is_err() {
                        lost += 1;
                        continue;
                    }
                    // The answer to this id (the first two bytes).
                    loop {
                        match sock.recv(&mut buf) {
                            Ok(n) if n >= 12 && buf[..2] == q[..2] => {
                                lat.push(start.elapsed().as_secs_f64() * 1e6);
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => {
                                lost += 1;
                                break;
                            }
                        }
                    }
                }
                (lat, lost)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut lost) = (Vec::new(), 0);
    for w in workers {
        let (lat, l) = w.join().expect("client");
        all.extend(lat);
        lost += l;
    }
    (all.len() as u64, all, lost)
}

pub fn run(rounds: usize, seconds: u64) -> Result<String> {
    eprintln!("dns: one host, {NAMES} names, {CLIENTS} clients, {rounds} rounds of {seconds} s");
    let mut t = Topology::new(
        TopologySpec::new(1)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd(5),
    );
    t.start_daemon(0, &[]);
    t.wait_status(0, "network installed", |s| s["networks"] == 1);
    t.wait_registered(0);
    t.add_named_pod(0, "client", "red");
    t.wait_converged(0);
    let backend = format!("{}:80", t.container("client").ip);
    let mut hosts = String::new();
    for i in 0..NAMES {
        let vip = Ipv4Addr::new(198, 18, 250, i as u8 + 1);
        t.overlayctl_ok(
            0,
            &[
                "service",
                "add",
                &format!("s{i}"),
                "--network",
                "red",
                "--vip",
                &format!("{vip}:80"),
                "--backend",
                &backend,
            ],
        );
        writeln!(hosts, "{vip} s{i}.red.overlay.internal")?;
    }
    let hosts_file = t.dir.join("dns-bench.hosts");
    std::fs::write(&hosts_file, hosts)?;
    let host_ip = t.hosts[0].vtep_ip;
    let _dnsmasq = t.hosts[0]
        .ns
        .command("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            &format!("--listen-address={host_ip}"),
            &format!("--addn-hosts={}", hosts_file.display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|c| ChildGuard::new(c, "dnsmasq"))
        .context("dnsmasq (cargo xtask setup installs dnsmasq-base)")?;
    let gateway = t.container("client").gateway;
    let queries: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..NAMES)
            .map(|i| query(&format!("s{i}.red.overlay.internal")))
            .collect(),
    );
    let target = |s: Server| match s {
        Server::Overlayd => SocketAddr::new(gateway.into(), 53),
        Server::Dnsmasq => SocketAddr::new(host_ip.into(), 53),
    };
    // Both answer every name before anything is timed.
    let ns = &t.container("client").ns;
    for s in [Server::Overlayd, Server::Dnsmasq] {
        let (server, q) = (target(s), queries.clone());
        let ready = ns.enter(move || {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                let (n, _, lost) = load(server, q.clone(), 1);
                if n > 0 && lost == 0 {
                    return true;
                }
            }
            false
        });
        if !ready {
            bail!("{} does not answer from the container", s.label());
        }
    }
    let mut figures = [Figures::default(), Figures::default()];
    let order = [Server::Overlayd, Server::Dnsmasq];
    for round in 0..rounds {
        for k in 0..2 {
            let s = order[(round + k) % 2];
            eprintln!("dns round {}/{rounds}: {}", round + 1, s.label());
            let (server, q) = (target(s), queries.clone());
            let (n, lat, lost) = ns.enter(move || load(server, q, seconds));
            let f = &mut figures[s as usize];
            f.qps.push(n as f64 / seconds as f64);
            f.latency.extend(lat);
            f.lost += lost;
        }
    }
    let mut out = String::new();
    writeln!(out, "## DNS (`--scenario dns`)\n")?;
    writeln!(
        out,
        "One host; a container queries {NAMES} names (A records) with {CLIENTS} closed-loop \
         clients for {seconds} s per round, {rounds} rounds, servers alternated: overlayd on \
         the network's gateway, and dnsmasq on the host's address serving the same names \
         from a hosts file. Queries/s median (min-max); latency in microseconds over every \
         answered query.\n"
    )?;
    writeln!(out, "| server | queries/s | p50 | p99 | max | lost |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for s in order {
        let f = &figures[s as usize];
        let (lo, hi) = f
            .qps
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        writeln!(
            out,
            "| {} | {:.0} ({:.0}-{:.0}) | {:.0} | {:.0} | {:.0} | {} |",
            s.label(),
            median(&f.qps),
            lo,
            hi,
            percentile(&f.latency, 50.0),
            percentile(&f.latency, 99.0),
            percentile(&f.latency, 100.0),
            f.lost
        )?;
    }
    let ratio = median(&figures[0].qps) / median(&figures[1].qps).max(1.0);
    writeln!(out, "\nqueries/s overlayd / dnsmasq: {ratio:.2}")?;
    Ok(out)
}
