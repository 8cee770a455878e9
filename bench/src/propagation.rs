//! Control-plane propagation: the time from an endpoint written to etcd until the BPF
//! endpoint table of every other host holds it, and until a delete is gone everywhere.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use overlay_daemon::{
    maps::EndpointMaps,
    store::{
        keys::Key,
        records::{self, EndpointRecord, RECORD_VERSION},
        EtcdConfig, Store,
    },
    tables::MacAddr,
};
use overlay_tests::{Topology, TopologySpec};

use crate::report::{median, percentile};

const VNI: u32 = 100;

/// Waits until `present(maps)` holds on every map set; returns the elapsed time.
fn wait_all(
    maps: &[EndpointMaps],
    ip: Ipv4Addr,
    present: bool,
    start: Instant,
) -> Result<Duration> {
    let deadline = start + Duration::from_secs(10);
    loop {
        if maps
            .iter()
            .all(|m| m.lookup_ip(VNI, ip).is_some() == present)
        {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{ip} did not propagate within 10 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub fn run(samples: usize) -> Result<String> {
    let mut t = Topology::new(
        TopologySpec::new(3)
            .network("bench", VNI, "198.19.1.0/24")
            .with_etcd(15),
    );
    for h in 0..3 {
        t.start_daemon(h, &[]);
    }
    for h in 0..3 {
        t.wait_status(h, "registered", |s| s["vteps"] == 2 && s["networks"] == 1);
    }
    // h3 "owns" the endpoints; h1 and h2 must install them as remote.
    let maps: Vec<EndpointMaps> = (0..2)
        .map(|h| EndpointMaps::open_pinned(&t.hosts[h].pins.maps()))
        .collect::<Result<_, _>>()?;
    let etcd = EtcdConfig {
        endpoints: vec![t.etcd.as_ref().context("etcd")?.endpoint()],
        ..EtcdConfig::local("/overlay")
    };
    // etcd is reachable from the underlay namespace: run the client there.
    let underlay = overlay_tests::Netns::open(t.underlay.name());
    let (add, del) = underlay.enter(move || -> Result<(Vec<f64>, Vec<f64>)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store = rt.block_on(Store::connect(&etcd))?;
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for i in 0..samples {
            let ip = Ipv4Addr::new(198, 19, 1, 100 + (i % 100) as u8);
            let key = store.layout.key(&Key::Endpoint {
                network: "bench".into(),
                ip: std::net::IpAddr::V4(ip),
            });
            let record = EndpointRecord {
                version: RECORD_VERSION,
                mac: MacAddr::from_ip(ip),
                node: "h3".into(),
                container_id: format!("bench-{i}"),
                attachment: overlay_api::Attachment::Veth {
                    host_ifname: "ovlbench".into(),
                },
                ifname: "eth0".into(),
                services: Vec::new(),
            };
            let start = Instant::now();
            rt.block_on(store.put(&key, records::encode(&record), None))?;
            add.push(wait_all(&maps, ip, true, start)?.as_secs_f64() * 1e3);
            let start = Instant::now();
            rt.block_on(store.delete(&key))?;
            del.push(wait_all(&maps, ip, false, start)?.as_secs_f64() * 1e3);
        }
        Ok((add, del))
    })?;
    let mut s = String::new();
    let _ = writeln!(s, "# Control-plane propagation\n");
    let _ = writeln!(
        s,
        "Three hosts with overlayd and a real etcd (3.4) in network namespaces; an endpoint record of \
         host h3 is written to etcd, and the time until both other hosts' BPF endpoint tables hold it \
         (and, after its delete, no longer hold it) is measured, {samples} samples, polling every 0.2 ms.\n"
    );
    let _ = writeln!(
        s,
        "| change | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|"
    );
    for (what, v) in [("endpoint added", &add), ("endpoint deleted", &del)] {
        let max = v.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| {what} | {:.2} | {:.2} | {max:.2} |",
            median(v),
            percentile(v, 99.0)
        );
    }
    let _ = writeln!(
        s,
        "\nProduced by `cargo xtask bench --scenario propagation`."
    );
    Ok(s)
}
