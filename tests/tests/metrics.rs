//! Metrics and health endpoints against a real Prometheus server: two daemons serve
//! `--metrics-listen` on their underlay addresses, Prometheus (the Debian package, in the
//! underlay namespace) scrapes both every second, and the test asks Prometheus' HTTP API
//! what it saw: forged VXLAN counted as `unknown_vtep` exactly, pings counted by encap and
//! decap, both targets up. `/readyz` follows etcd: 503 while it is down beyond the lease
//! TTL, 200 again after.

use std::{
    net::Ipv4Addr,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use overlay_tests::{lb, traffic, ChildGuard, Netns, Topology, TopologySpec};

const PORT: u16 = 9462;
const PROMETHEUS: &str = "198.18.0.254:9090";

fn target(t: &Topology, h: usize) -> String {
    format!("{}:{PORT}", t.hosts[h].vtep_ip)
}

/// Prometheus in the underlay namespace, scraping every host's daemon every second.
fn prometheus(t: &Topology) -> ChildGuard {
    let targets: Vec<String> = (0..t.hosts.len())
        .map(|h| format!("'{}'", target(t, h)))
        .collect();
    let dir = t.dir.join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: overlay\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .expect("prometheus config");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
    let child = t
        .underlay
        .command("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("run prometheus (cargo xtask setup installs it)");
    ChildGuard::new(child, "prometheus")
}

/// One instant query through Prometheus' HTTP API: the value per instance.
fn query(ns: &Netns, promql: &str) -> Vec<(String, f64)> {
    let out = ns.output(
        "curl",
        &[
            "-sf",
            "--max-time",
            "5",
            &format!("http://{PROMETHEUS}/api/v1/query"),
            "--data-urlencode",
            &format!("query={promql}"),
        ],
    );
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    json["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let instance = r["metric"]["instance"].as_str().unwrap_or("").to_owned();
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (instance, value)
        })
        .collect()
}

/// The value of `promql` for `instance`, once `done` accepts it (Prometheus scrapes every
/// second; a value needs a scrape or two to arrive).
fn wait_value(ns: &Netns, promql: &str, instance: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = query(ns, promql)
            .into_iter()
            .find(|(i, _)| i == instance)
            .map(|(_, v)| v);
        if let Some(v) = v.filter(|v| done(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{promql} for {instance}: {v:?} after 30 s"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

/// `curl` of one daemon's endpoint from the underlay: (HTTP status, body).
fn get(t: &Topology, h: usize, path: &str) -> (u16, String) {
    let out = t.underlay.output(
        "curl",
        &[
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://{}{path}", target(t, h)),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn prometheus_sees_drops_traffic_and_both_targets() {
    // Each daemon in its own host namespace: the same address on every host.
    let listen = format!("0.0.0.0:{PORT}");
    let mut t = lb::cluster(2, 3, &["--metrics-listen", &listen]);
    lb::pods(&mut t, &[(0, "a"), (1, "b")]);
    let _prometheus = prometheus(&t);
    let (i0, i1) = (target(&t, 0), target(&t, 1));
    for i in [&i0, &i1] {
        wait_value(&t.underlay, "up", i, |v| v == 1.0);
    }

    // Forged VXLAN from an underlay address that is no VTEP: exactly N `unknown_vtep` drops.
    const N: u32 = 7;
    let drops = "overlay_datapath_drops_total{reason=\"unknown_vtep\"}";
    let before = wait_value(&t.underlay, drops, &i0, |v| v >= 0.0);
    t.underlay
        .run("ip", &["addr", "add", "198.18.0.250/24", "dev", "br0"]);
    let (a, b) = (t.container("a"), t.container("b"));
    let frame = traffic::inner_udp_frame(b.mac.0, a.mac.0, b.ip, a.ip, 7001, b"forged");
    for _ in 0..N {
        traffic::udp_send(
            &t.underlay,
            t.hosts[0].vtep_ip,
            4789,
            traffic::vxlan_payload(100, 0x08, &frame),
        );
    }
    let after = wait_value(&t.underlay, drops, &i0, |v| v >= before + N as f64);
    assert_eq!(after, before + N as f64, "unknown_vtep drops");
    // Still exactly N a few scrapes later.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        wait_value(&t.underlay, drops, &i0, |_| true),
        before + N as f64
    );

    // M pings from a (host 0) to b (host 1): encapsulated by one, decapsulated by the other.
    const M: u32 = 20;
    let encap = "overlay_datapath_packets_total{direction=\"encap_tx\"}";
    let decap = "overlay_datapath_packets_total{direction=\"decap_rx\"}";
    let (encap0, decap1) = (
        wait_value(&t.underlay, encap, &i0, |v| v >= 0.0),
        wait_value(&t.underlay, decap, &i1, |v| v >= 0.0),
    );
    let b_ip: Ipv4Addr = b.ip;
    assert_eq!(traffic::ping_received(&t.container("a").ns, b_ip, M), M);
    wait_value(&t.underlay, encap, &i0, |v| v >= encap0 + M as f64);
    wait_value(&t.underlay, decap, &i1, |v| v >= decap1 + M as f64);

    // What the node knows, its maps and its control plane are there too.
    for (promql, want) in [
        ("overlay_known{what=\"nodes\"}", 2.0),
        ("overlay_known{what=\"endpoints_local\"}", 1.0),
        ("overlay_known{what=\"endpoints_remote\"}", 1.0),
        ("overlay_map_entries{map=\"OVL_EP_BY_IP\"}", 2.0),
        ("overlay_etcd_up", 1.0),
        ("overlay_next_hops{state=\"pinned\"}", 1.0),
    ] {
        wait_value(&t.underlay, promql, &i0, |v| v == want);
    }
    wait_value(
        &t.underlay,
        "overlay_map_capacity{map=\"OVL_EP_BY_IP\"}",
        &i0,
        |v| v > 0.0,
    );
    wait_value(&t.underlay, "overlay_lease_renewals_total", &i0, |v| {
        v >= 1.0
    });
    wait_value(
        &t.underlay,
        "overlay_api_requests_total{op=\"create_endpoint\",result=\"ok\"}",
        &i0,
        |v| v == 1.0,
    );
    wait_value(&t.underlay, "overlay_reconcile_seconds_count", &i0, |v| {
        v >= 1.0
    });

    // Every sample is an overlay_ metric with bounded labels (no address in any label).
    let (code, text) = get(&t, 0, "/metrics");
    assert_eq!(code, 200);
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("overlay_"), "{line}");
        assert!(!line.contains("198.19."), "per-endpoint label: {line}");
    }
    assert_eq!(get(&t, 0, "/nosuch").0, 404);
}

#[test]
fn readiness_follows_etcd_and_health_follows_the_datapath() {
    let mut t = Topology::new(
        TopologySpec::new(1)
            .network("red", 100, "198.19.1.0/24")
            .with_etcd(2),
    );
    let listen = target(&t, 0);
    t.start_daemon(0, &["--metrics-listen", &listen]);
    let wait = |t: &Topology, path: &str, code: u16| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (got, body) = get(t, 0, path);
            if got == code {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {got} {body:?}, want {code}\n{}",
                t.daemon_log(0)
            );
            thread::sleep(Duration::from_millis(100));
        }
    };
    wait(&t, "/readyz", 200);
    assert_eq!(wait(&t, "/healthz", 200).trim(), "ok");

    // etcd down beyond the lease TTL: not ready, with the reason; still healthy.
    t.etcd.as_mut().expect("etcd").pause();
    let body = wait(&t, "/readyz", 503);
    assert!(body.contains("not registered in etcd"), "{body}");
    assert_eq!(body.trim().lines().count(), 1, "{body}");
    assert_eq!(get(&t, 0, "/healthz").0, 200);
    t.etcd.as_mut().expect("etcd").resume();
    wait(&t, "/readyz", 200);

    // Another program already on the port: the daemon refuses to start, with one line
    // naming the flag, before it touches the datapath.
    assert!(t.stop_daemon(0, nix::sys::signal::Signal::SIGTERM));
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let _squatter = t.hosts[0]
        .ns
        .enter(move || std::net::TcpListener::bind(addr).expect("bind the port first"));
    let (run_dir, bpffs) = (
        t.hosts[0].run_dir.clone(),
        t.hosts[0].pins.root().to_owned(),
    );
    let (code, out) = t.run_extra_daemon(
        0,
        &[
            "--node-name",
            "h1",
            "--underlay",
            "ul0",
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--bpffs",
            bpffs.to_str().unwrap(),
            "--metrics-listen",
            &listen,
        ],
        Duration::from_secs(10),
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(code.is_some(), "still running after 10 s: {out}");
    assert!(
        out.contains(&format!("--metrics-listen {listen}")) && out.contains("in use"),
        "{out}"
    );
}
