//! The benchmark harness itself must keep working: one short round of every comparison mode,
//! with real traffic through each datapath (a mode whose packets do not arrive fails the run).
//! Privileged; run through `cargo xtask test`, which also points OVERLAYD at the daemon.

use std::{path::PathBuf, process::Command};

/// The report directory, removed however the test ends.
struct OutDir(PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_datapath_mode_carries_traffic() {
    let dir = OutDir(std::env::temp_dir().join(format!("ovb-smoke-{}", std::process::id())));
    let out = &dir.0;
    let run = Command::new(env!("CARGO_BIN_EXE_overlay-bench"))
        .args([
            "--scenario",
            "datapath",
            "--modes",
            "routed,kernel-vxlan,kernel-vxlan-bpf,overlay",
            "--tests",
            "flood,rtt",
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--out",
        ])
        .arg(out)
        .output()
        .expect("overlay-bench runs");
    assert!(
        run.status.success(),
        "overlay-bench failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let samples = std::fs::read_to_string(out.join("samples.json")).expect("samples.json");
    let samples: serde_json::Value = serde_json::from_str(&samples).expect("samples are JSON");
    for mode in ["routed", "kernel-vxlan", "kernel-vxlan-bpf", "overlay"] {
        for metric in ["Flood64", "CpuPerPacket", "RttP50"] {
            let key = format!("{mode}/{metric}");
            let value = samples[&key][0].as_f64().unwrap_or_default();
            assert!(value > 0.0, "{key}: no measurement in {samples}");
        }
    }
}
