//! Checks of balanced services against a running topology: a node's Maglev table, many
//! connections counted per backend, and shares compared with weights.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use overlay_daemon::maps::pinned_table;

use crate::{services::tcp_ask, Topology, TopologySpec};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// A service as the LB maps key it: network VNI, VIP, port and IP protocol.
#[derive(Clone, Copy, Debug)]
pub struct Svc {
    pub vni: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

impl Svc {
    pub fn tcp(vni: u32, vip: Ipv4Addr, port: u16) -> Self {
        Self {
            vni,
            vip,
            port,
            proto: TCP,
        }
    }

    pub fn udp(vni: u32, vip: Ipv4Addr, port: u16) -> Self {
        Self {
            vni,
            vip,
            port,
            proto: UDP,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddrV4 {
        std::net::SocketAddrV4::new(self.vip, self.port)
    }
}

/// `hosts` nodes with etcd (leases of `ttl` s) and daemons started with `extra` flags (e.g.
/// `--socket-lb off` for the per-packet path only), sharing network "red" (VNI 100,
/// 198.19.1.0/24), each with the network installed and the others' VTEPs.
pub fn cluster(hosts: usize, ttl: u32, extra: &[&str]) -> Topology {
    let mut t = Topology::new(
        TopologySpec::new(hosts)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd(ttl),
    );
    for h in 0..hosts {
        t.start_daemon(h, extra);
    }
    let others = hosts as u64 - 1;
    for h in 0..hosts {
        t.wait_status(h, "network installed", |s| {
            s["networks"] == 1 && s["vteps"] == others
        });
    }
    t
}

/// The daemon flags of a mode: socket-level balancing (the default) or per-packet only.
pub fn mode(socket_lb: bool) -> &'static [&'static str] {
    if socket_lb {
        &[]
    } else {
        &["--socket-lb", "off"]
    }
}

/// Adds a pod per (host, name) in network "red", then waits until every node has them all.
pub fn pods(t: &mut Topology, pods: &[(usize, &str)]) {
    for (host, name) in pods {
        t.add_pod(*host, name, "red");
    }
    for h in 0..t.hosts.len() {
        t.wait_converged(h);
    }
}

/// `overlayctl service add NAME` in network "red" for `vip` (address:port) over `backends`
/// (address:port[@weight]).
pub fn add_service(t: &Topology, name: &str, vip: &str, proto: &str, backends: &[String]) {
    let mut args = vec![
        "service",
        "add",
        name,
        "--network",
        "red",
        "--vip",
        vip,
        "--proto",
        proto,
    ];
    for b in backends {
        args.extend(["--backend", b.as_str()]);
    }
    t.overlayctl_ok(0, &args);
}

/// The service's Maglev table on `host`, as backend addresses (empty if not installed).
pub fn table(t: &Topology, host: usize, svc: Svc) -> Vec<(Ipv4Addr, u16)> {
    table_of(t, host, svc.vni, svc.vip.into(), svc.port, svc.proto)
        .into_iter()
        .filter_map(|(ip, port)| match ip {
            IpAddr::V4(ip) => Some((ip, port)),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The Maglev table on `host` of the service at `vip` (either family), as backend addresses.
pub fn table_of(
    t: &Topology,
    host: usize,
    vni: u32,
    vip: IpAddr,
    port: u16,
    proto: u8,
) -> Vec<(IpAddr, u16)> {
    pinned_table(&t.hosts[host].pins.maps(), vni, vip, port, proto)
        .expect("open LB maps")
        .unwrap_or_default()
}

/// Waits until `host`'s table for the service is made of exactly `backends`.
pub fn wait_table(t: &Topology, host: usize, svc: Svc, backends: &[Ipv4Addr]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut want: Vec<Ipv4Addr> = backends.to_vec();
    want.sort();
    loop {
        let mut have: Vec<Ipv4Addr> = table(t, host, svc).iter().map(|b| b.0).collect();
        have.sort();
        have.dedup();
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "table of {svc:?} on {} has {have:?}, want {want:?}\n{}",
            t.hosts[host].name,
            t.daemon_log(host)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `n` short TCP connections to `addr` from container `client`; panics on any failure with
/// every node's counters. Counts per backend name.
pub fn spread(
    t: &Topology,
    client: &str,
    addr: impl Into<SocketAddr>,
    n: usize,
) -> BTreeMap<String, usize> {
    let addr: SocketAddr = addr.into();
    let result = t.container(client).ns.spawn(move || {
        let mut counts = BTreeMap::new();
        for i in 0..n {
            let token = format!("conn-{i}-{}", i * 7919);
            let name =
                tcp_ask(addr, &token).map_err(|e| format!("connection {i} to {addr}: {e}"))?;
            *counts.entry(name).or_insert(0) += 1;
        }
        Ok::<_, String>(counts)
    });
    match result.join().expect("client thread") {
        Ok(counts) => counts,
        Err(e) => {
            let counters: Vec<String> = (0..t.hosts.len())
                .map(|h| format!("{}: {:?}", t.hosts[h].name, t.counters(h)))
                .collect();
            let host = t.container(client).host;
            panic!("{e}\n{}\n{}", counters.join("\n"), t.daemon_log(host));
        }
    }
}

/// Asserts that `counts` splits by `weights` within ±15 % of each expected share.
pub fn assert_shares(counts: &BTreeMap<String, usize>, weights: &[(&str, u32)]) {
    let total: usize = counts.values().sum();
    let weight_sum: u32 = weights.iter().map(|w| w.1).sum();
    assert_eq!(
        counts.len(),
        weights.len(),
        "backends seen: {counts:?}, expected {weights:?}"
    );
    for (name, w) in weights {
        let expected = total as f64 * *w as f64 / weight_sum as f64;
        let got = *counts.get(*name).unwrap_or(&0) as f64;
        eprintln!(
            "{name}: {got} connections, expected {expected:.0} ({:+.1}%)",
            (got / expected - 1.0) * 100.0
        );
        assert!(
            (got / expected - 1.0).abs() <= 0.15,
            "{name}: {got} of {total}, expected {expected:.0} (±15%): {counts:?}"
        );
    }
}

/// A two-node cluster (socket hooks on or off), backend b1 on node 0 and a client on node 1,
/// and one service of `proto` at `vip` with b1's `port` as its backend, installed on the
/// client's node. Returns b1's address.
pub fn one_service(socket_lb: bool, vip: &str, proto: &str, port: u16) -> (Topology, Ipv4Addr) {
    let mut t = cluster(2, 3, mode(socket_lb));
    pods(&mut t, &[(0, "b1"), (1, "client")]);
    let b1 = t.container("b1").ip;
    add_service(&t, "svc", vip, proto, &[format!("{b1}:{port}")]);
    t.wait_status(1, "service installed", |s| s["services"] == 1);
    (t, b1)
}
