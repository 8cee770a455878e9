//! `cargo xtask bench`: the eBPF overlay against kernel vxlan and plain routing, measured side
//! by side in one run with the modes alternated every round, medians reported.

mod charts;
mod cni;
mod dns;
mod measure;
mod modes;
mod monitor;
mod pingpong;
mod propagation;
mod report;
mod scale;
mod scrape;
mod service;
mod tunnel_md;

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Result;
use clap::Parser;

use crate::{
    measure::Metric,
    modes::{Mode, Pair},
};

#[derive(Parser)]
#[command(
    name = "overlay-bench",
    about = "Datapath benchmarks in network namespaces"
)]
struct Cli {
    /// Rounds; every round measures every mode once, in rotating order.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Modes to compare (default: all but the IPv6-underlay ones, `kernel-vxlan-ul6`,
    /// `kernel-vxlan-ul6-zerocsum` and `overlay-ul6`: with any of them in a run, every mode
    /// of the run gets their container MTU, 1430 instead of 1450).
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Vec<Mode>,
    /// Datapath measurements to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    tests: Vec<measure::Test>,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Which benchmarks to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Datapath, Scenario::Propagation, Scenario::Service, Scenario::Monitor, Scenario::Scale, Scenario::Cni, Scenario::Dns])]
    scenario: Vec<Scenario>,
    /// Samples for the propagation benchmark.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Node counts of the scale benchmark.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100])]
    scale_nodes: Vec<usize>,
    /// Endpoint counts of the scale benchmark (each is loaded on top of the previous).
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000, 100000])]
    scale_endpoints: Vec<usize>,
    /// Endpoint adds timed per cell of the scale benchmark.
    #[arg(long, default_value_t = 30)]
    scale_samples: usize,
    /// Whether the scale benchmark's endpoints are named and its daemons keep the DNS zone
    /// (off: what the control plane costs without DNS).
    #[arg(long, value_enum, default_value = "on")]
    scale_dns: Switch,
    /// etcd members of the scale benchmark (1, or a cluster of 3 or more).
    #[arg(long, default_value_t = 1)]
    scale_etcd_members: usize,
    /// Members of that cluster stopped before anything starts (the first ones, which every
    /// client tries first).
    #[arg(long, default_value_t = 0)]
    scale_etcd_down: usize,
    /// etcd with TLS, client certificates and a role limited to the overlay's prefix.
    #[arg(long)]
    scale_etcd_secure: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Throughput, packet rate, latency and CPU: overlay vs kernel vxlan vs routing.
    Datapath,
    /// etcd write to BPF map update on the other hosts.
    Propagation,
    /// Connections/s and throughput through a service VIP: eBPF vs direct vs iptables/IPVS.
    Service,
    /// Control plane at N nodes x M endpoints: sync time, propagation, memory, CPU, and the
    /// time to serve /metrics.
    Scale,
    /// The datapath with no monitor, a drop monitor and a trace monitor attached.
    Monitor,
    /// Pod network setup: CNI ADD/DEL and RunPodSandbox through the CRI, overlay-cni vs the
    /// reference bridge + host-local plugins.
    Cni,
    /// DNS queries/s and latency from a container: overlayd against dnsmasq.
    Dns,
}

/// Samples per (mode, metric).
pub type Samples = BTreeMap<(Mode, Metric), Vec<f64>>;

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    let mut report = String::new();
    if cli.scenario.contains(&Scenario::Datapath) {
        report += &datapath(&cli)?;
    }
    if cli.scenario.contains(&Scenario::Propagation) {
        eprintln!("propagation: {} samples", cli.samples);
        let text = propagation::run(cli.samples)?;
        report += "\n";
        report += &text;
    }
    if cli.scenario.contains(&Scenario::Service) {
        report += "\n";
        report += &service::run(cli.rounds, cli.seconds)?;
    }
    if cli.scenario.contains(&Scenario::Monitor) {
        report += "\n";
        report += &monitor::run(cli.rounds, cli.seconds)?;
    }
    if cli.scenario.contains(&Scenario::Scale) {
        let etcd = scale::EtcdSetup {
            members: cli.scale_etcd_members,
            down: cli.scale_etcd_down,
            secure: cli.scale_etcd_secure,
        };
        let cells = scale::run(
            &cli.scale_nodes,
            &cli.scale_endpoints,
            cli.scale_samples,
            &etcd,
            cli.scale_dns == Switch::On,
        )?;
        std::fs::write(cli.out.join("scale.json"), scale::json(&cells))?;
        charts::scale(&cli.out.join("scale.png"), &cells)?;
        report += "\n";
        report += &scale::markdown(&cells);
        report += "\n![control-plane cost against size](scale.png)\n";
    }
    if cli.scenario.contains(&Scenario::Cni) {
        report += "\n";
        report += &cni::run(cli.rounds)?;
    }
    if cli.scenario.contains(&Scenario::Dns) {
        report += "\n";
        report += &dns::run(cli.rounds, cli.seconds.into())?;
    }
    let path = cli.out.join("report.md");
    std::fs::write(&path, &report)?;
    println!("{report}");
    eprintln!("report written to {}", path.display());
    Ok(())
}

fn datapath(cli: &Cli) -> Result<String> {
    let modes = if cli.modes.is_empty() {
        vec![
            Mode::Routed,
            Mode::KernelVxlan,
            Mode::KernelVxlanBpf,
            Mode::Overlay,
            Mode::OverlayXdpNative,
            Mode::OverlayXdpSkb,
            Mode::OverlayTcx,
            Mode::Routed6,
            Mode::KernelVxlan6,
            Mode::Overlay6,
        ]
    } else {
        cli.modes.clone()
    };
    let tests = if cli.tests.is_empty() {
        measure::Test::ALL.to_vec()
    } else {
        cli.tests.clone()
    };
    // One container MTU for every mode of the run, so that every ratio compares packets of
    // the same size.
    let mtu = modes::run_container_mtu(&modes);
    eprintln!("building {} topologies (container MTU {mtu})", modes.len());
    let pairs: Vec<Pair> = modes
        .iter()
        .map(|m| Pair::build_with_mtu(*m, mtu))
        .collect::<Result<_>>()?;
    let _servers: Vec<_> = pairs
        .iter()
        .map(measure::start_servers)
        .collect::<Result<_>>()?;
    let mut samples = Samples::new();
    for round in 0..cli.rounds {
        // Rotate the order so no mode always runs first (A B C, B C A, ...).
        for k in 0..pairs.len() {
            let pair = &pairs[(round + k) % pairs.len()];
            eprintln!("round {}/{}: {}", round + 1, cli.rounds, pair.mode.label());
            for (metric, value) in measure::round(pair, cli.seconds, &tests)? {
                samples.entry((pair.mode, metric)).or_default().push(value);
            }
        }
    }
    drop(_servers);
    drop(pairs);
    std::fs::write(cli.out.join("samples.json"), report::json(&samples))?;
    let chart = charts::datapath(&cli.out.join("datapath.png"), &modes, &samples)?;
    let mut text = report::markdown(&modes, &samples, cli.rounds, cli.seconds, mtu);
    if chart {
        text += "\n![datapath ratios to kernel vxlan](datapath.png)\n";
    }
    Ok(text)
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}
