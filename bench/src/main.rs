//! `cargo xtask bench`: the eBPF overlay against kernel vxlan and plain routing, measured side
//! by side in one run with the modes alternated every round, medians reported.

mod measure;
mod modes;
mod report;

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
    /// Modes to compare (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Vec<Mode>,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// Samples per (mode, metric).
pub type Samples = BTreeMap<(Mode, Metric), Vec<f64>>;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let modes = if cli.modes.is_empty() {
        vec![
            Mode::Routed,
            Mode::KernelVxlan,
            Mode::Overlay,
            Mode::OverlayTc,
        ]
    } else {
        cli.modes.clone()
    };
    eprintln!("building {} topologies", modes.len());
    let pairs: Vec<Pair> = modes.iter().map(|m| Pair::build(*m)).collect();
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
            for (metric, value) in measure::round(pair, cli.seconds)? {
                samples.entry((pair.mode, metric)).or_default().push(value);
            }
        }
    }
    drop(_servers);
    drop(pairs);
    std::fs::create_dir_all(&cli.out)?;
    let text = report::markdown(&modes, &samples, cli.rounds, cli.seconds);
    let path = cli.out.join("report.md");
    std::fs::write(&path, &text)?;
    std::fs::write(cli.out.join("samples.json"), report::json(&samples))?;
    println!("{text}");
    eprintln!("report written to {}", path.display());
    Ok(())
}
