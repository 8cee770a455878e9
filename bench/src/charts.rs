//! PNG charts of the report (plotters): datapath ratios to kernel vxlan, and control-plane
//! cost against cluster size.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use plotters::{
    prelude::*,
    style::{register_font, FontStyle},
};

use crate::{measure::Metric, modes::Mode, report::median, scale::Cell, Samples};

/// Fonts plotters can use without system libraries (the pure-Rust ab_glyph renderer); the
/// first one found is registered. `cargo xtask setup` installs DejaVu.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn load_font() -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no DejaVu Sans font found for the charts: install fonts-dejavu-core (cargo xtask setup does)"))?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path}: not a usable font"))?;
    Ok(())
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
];

fn short(metric: Metric) -> &'static str {
    match metric {
        Metric::Tcp1 => "TCP 1",
        Metric::Tcp4 => "TCP 4",
        Metric::Udp64 => "UDP 64B",
        Metric::Udp1400 => "UDP 1400B",
        Metric::Flood64 => "flood 64B",
        Metric::CpuPerPacket => "CPU/pkt",
        Metric::RttP50 => "RTT p50",
        Metric::RttP99 => "RTT p99",
        Metric::RttP50Poll => "p50 2CPU",
        Metric::RttP99Poll => "p99 2CPU",
        Metric::RttP50Halt => "p50 halt",
        Metric::RttP99Halt => "p99 halt",
        Metric::CpuPerGbit => "CPU/Gbit",
        Metric::PingPongP50 => "pp p50",
        Metric::PingPongP99 => "pp p99",
    }
}

/// Grouped bars: for every metric, each mode's median as a ratio to kernel vxlan of its
/// family (`Mode::baseline`; >1 better). Whether there was a kernel vxlan to draw against.
pub fn datapath(path: &Path, modes: &[Mode], samples: &Samples) -> Result<bool> {
    if !modes
        .iter()
        .any(|m| modes.contains(&m.baseline(Mode::KernelVxlan)))
    {
        return Ok(false);
    }
    load_font()?;
    let med = |m: Mode, k: Metric| samples.get(&(m, k)).map(|v| median(v));
    let ratio = |m: Mode, k: Metric| -> Option<f64> {
        let (a, b) = (med(m, k)?, med(m.baseline(Mode::KernelVxlan), k)?);
        Some(if k.higher_is_better() { a / b } else { b / a })
    };
    let top = Metric::ALL
        .iter()
        .flat_map(|k| modes.iter().filter_map(|m| ratio(*m, *k)))
        .fold(1.5_f64, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let groups = Metric::ALL.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Datapath: median ratio to kernel vxlan of the same families (higher is better)",
            ("sans-serif", 26),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..groups as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 && i < groups {
                short(Metric::ALL[i]).to_owned()
            } else {
                String::new()
            }
        })
        .y_desc("ratio to kernel-vxlan")
        .label_style(("sans-serif", 15))
        .draw()?;
    let width = 0.8 / modes.len() as f64;
    for (mi, mode) in modes.iter().enumerate() {
        let color = PALETTE[mi % PALETTE.len()];
        let bars: Vec<_> = Metric::ALL
            .iter()
            .enumerate()
            .filter_map(|(gi, k)| {
                let r = ratio(*mode, *k)?;
                let x0 = gi as f64 + 0.1 + mi as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, r)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(mode.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
    }
    chart.draw_series(LineSeries::new(
        [(0.0, 1.0), (groups as f64, 1.0)],
        BLACK.stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present().context("writing the datapath chart")?;
    Ok(true)
}

/// Three panels against the number of endpoints (log scale), one line per node count:
/// propagation p99, full-sync time of a joining node, and daemon RSS.
pub fn scale(path: &Path, cells: &[Cell]) -> Result<()> {
    if cells.is_empty() {
        return Ok(());
    }
    load_font()?;
    let root = BitMapBackend::new(path, (1500, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.titled(
        "Control plane cost against cluster size (overlayd --control-plane-only, real etcd)",
        ("sans-serif", 24),
    )?;
    let panels = body.split_evenly((1, 3));
    let mut node_counts: Vec<usize> = cells.iter().map(|c| c.nodes).collect();
    node_counts.dedup();
    let x_min = cells.iter().map(|c| c.endpoints).min().unwrap_or(1) as f64 * 0.7;
    let x_max = cells.iter().map(|c| c.endpoints).max().unwrap_or(10) as f64 * 1.4;
    type Metric = (&'static str, &'static str, fn(&Cell) -> f64, f64);
    let metrics: [Metric; 3] = [
        (
            "Endpoint-add propagation p99",
            "ms",
            |c| c.prop_p99_ms,
            100.0,
        ),
        ("Full sync of a joining node", "s", |c| c.full_sync_s, 2.0),
        ("Daemon RSS (median)", "MB", |c| c.rss_median_mb, 50.0),
    ];
    for (panel, (name, unit, value, target)) in panels.iter().zip(metrics) {
        let top = cells.iter().map(value).fold(target, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("endpoints in the cluster")
            .y_desc(unit)
            .x_label_formatter(&|x| format!("{}k", (*x / 1000.0).round()))
            .label_style(("sans-serif", 14))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                [(x_min, target), (x_max, target)],
                RED.mix(0.6).stroke_width(1),
            ))?
            .label(format!("target {target} {unit}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RED.mix(0.6)));
        for (i, n) in node_counts.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = cells
                .iter()
                .filter(|c| c.nodes == *n)
                .map(|c| (c.endpoints as f64, value(c)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(format!("{n} nodes"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present().context("writing the scale chart")?;
    Ok(())
}
