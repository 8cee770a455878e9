//! What `overlayctl monitor` costs the datapath: the overlay with no monitor, with a drop
//! monitor and with a trace monitor (every packet sampled, the rate limit doing the rest)
//! attached on both nodes, states alternated every round. Measured: TCP 1 stream, UDP 64 B
//! packet rate, and UDP 64 B while a second sender floods the server's node with forged
//! VXLAN from an underlay address that is no VTEP (every one a drop, and with a monitor
//! attached a drop event to rate-limit), the good packets' rate reported.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use overlay_daemon::api;
use overlay_tests::{lb, topology::overlayd_bin, traffic, ChildGuard, Topology};

use crate::{measure, report::median};

/// The underlay address the forged packets come from.
const FORGER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Detached,
    Drops,
    Traces,
}

impl State {
    const ALL: [State; 3] = [State::Detached, State::Drops, State::Traces];

    fn label(self) -> &'static str {
        match self {
            State::Detached => "no monitor",
            State::Drops => "drop monitor",
            State::Traces => "trace monitor (every packet)",
        }
    }

    fn args(self) -> Option<&'static [&'static str]> {
        match self {
            State::Detached => None,
            State::Drops => Some(&["--type", "drop"]),
            State::Traces => Some(&["--type", "trace", "--sample", "1"]),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    Tcp1,
    Udp64,
    /// Good packets received while the forged ones flood.
    MixGood,
    /// Forged packets sent meanwhile (to show the mix).
    MixBad,
}

/// `overlayctl monitor` on every node, printing to nowhere (the daemon still decodes and
/// sends each event); gone when dropped.
fn attach(t: &Topology, args: &[&str]) -> Result<Vec<ChildGuard>> {
    let bin = overlayd_bin().with_file_name("overlayctl");
    let mut monitors = Vec::new();
    for h in &t.hosts {
        let child = std::process::Command::new(&bin)
            .arg("--socket")
            .arg(api::socket_path(&h.run_dir))
            .arg("monitor")
            .args(args)
            .args(["--output", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("overlayctl monitor")?;
        monitors.push(ChildGuard::new(child, "overlayctl monitor"));
    }
    // Attached once the daemons say so.
    std::thread::sleep(Duration::from_millis(500));
    Ok(monitors)
}

pub fn run(rounds: usize, seconds: u32) -> Result<String> {
    let mut t = lb::cluster(2, 10, &[]);
    lb::pods(&mut t, &[(0, "a"), (1, "b")]);
    t.underlay.run(
        "ip",
        &["addr", "add", &format!("{FORGER}/24"), "dev", "br0"],
    );
    let (client, server) = (t.container("a"), t.container("b"));
    let _iperf = measure::iperf_server(&server.ns)?;
    std::thread::sleep(Duration::from_millis(300));
    let frame = traffic::inner_udp_frame(client.mac.0, server.mac.0, client.ip, server.ip, 9, b"x");
    let forged = traffic::vxlan_payload(100, 0x08, &frame);
    let vtep = t.hosts[1].vtep_ip;

    let iperf = |args: &[&str]| -> Result<serde_json::Value> {
        let server = server.ip.to_string();
        let mut full = vec!["-c", server.as_str(), "-p", "5201", "-J"];
        full.extend_from_slice(args);
        let out = client.ns.output("iperf3", &full);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!("iperf3 {args:?}: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        if let Some(e) = json["error"].as_str() {
            bail!("iperf3 {args:?}: {e}");
        }
        Ok(json)
    };
    let udp_kpps = |json: &serde_json::Value| {
        let sum = &json["end"]["sum"];
        let received =
            sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
        received / sum["seconds"].as_f64().unwrap_or(seconds as f64).max(0.001) / 1e3
    };
    let secs = seconds.to_string();
    let mut samples: BTreeMap<(State, Metric), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for k in 0..State::ALL.len() {
            let state = State::ALL[(round + k) % State::ALL.len()];
            eprintln!("monitor round {}/{rounds}: {}", round + 1, state.label());
            let _monitors = match state.args() {
                Some(args) => attach(&t, args)?,
                None => Vec::new(),
            };
            let mut put = |m: Metric, v: f64| samples.entry((state, m)).or_default().push(v);
            let json = iperf(&["-t", &secs])?;
            let bps = json["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0);
            put(Metric::Tcp1, bps / 1e9);
            put(
                Metric::Udp64,
                udp_kpps(&iperf(&["-t", &secs, "-u", "-b", "0", "-l", "64"])?),
            );

            // The flood runs for as long as iperf does.
            let stop = Arc::new(AtomicBool::new(false));
            let (payload, flag) = (forged.clone(), stop.clone());
            let flood = t.underlay.spawn(move || {
                let sock = UdpSocket::bind(SocketAddrV4::new(FORGER, 0)).expect("bind");
                let to = SocketAddrV4::new(vtep, 4789);
                let (start, mut sent) = (Instant::now(), 0u64);
                while !flag.load(Ordering::Relaxed) {
                    if sock.send_to(&payload, to).is_ok() {
                        sent += 1;
                    }
                }
                sent as f64 / start.elapsed().as_secs_f64() / 1e3
            });
            let good = iperf(&["-t", &secs, "-u", "-b", "0", "-l", "64"]);
            stop.store(true, Ordering::Relaxed);
            let bad = flood.join().map_err(|_| anyhow::anyhow!("flood thread"))?;
            put(Metric::MixGood, udp_kpps(&good?));
            put(Metric::MixBad, bad);
        }
    }
    Ok(report(&samples, rounds, seconds))
}

fn report(samples: &BTreeMap<(State, Metric), Vec<f64>>, rounds: usize, seconds: u32) -> String {
    let spread = |s: State, m: Metric| -> (f64, f64, f64) {
        match samples.get(&(s, m)) {
            Some(v) if !v.is_empty() => (
                median(v),
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ),
            _ => (f64::NAN, f64::NAN, f64::NAN),
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## The monitor's cost\n\n{rounds} rounds x {seconds} s, states alternated every round, \
         medians (min–max); monitors attached on both nodes, their output discarded.\n"
    );
    let mut header = "| metric |".to_owned();
    let mut rule = "|---|".to_owned();
    for s in State::ALL {
        let _ = write!(header, " {} |", s.label());
        rule += "---:|";
    }
    header += " drop / none | trace / none |";
    rule += "---:|---:|";
    let _ = writeln!(out, "{header}\n{rule}");
    for (metric, label, digits) in [
        (Metric::Tcp1, "TCP 1 stream (Gbit/s)", 2),
        (Metric::Udp64, "UDP 64 B (kpps received)", 0),
        (
            Metric::MixGood,
            "UDP 64 B during a forged-VXLAN flood (good kpps received)",
            0,
        ),
        (Metric::MixBad, "forged VXLAN sent meanwhile (kpps)", 0),
    ] {
        let mut row = format!("| {label} |");
        for s in State::ALL {
            let (m, lo, hi) = spread(s, metric);
            let _ = write!(row, " {m:.digits$} ({lo:.digits$}–{hi:.digits$}) |");
        }
        let none = spread(State::Detached, metric).0;
        let _ = write!(
            row,
            " {:.2} | {:.2} |",
            spread(State::Drops, metric).0 / none,
            spread(State::Traces, metric).0 / none
        );
        let _ = writeln!(out, "{row}");
    }
    out
}
