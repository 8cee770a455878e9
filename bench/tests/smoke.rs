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

/// The control-plane scale benchmark against what operators run: a 3-member etcd with TLS,
/// client certificates and a role limited to the overlay's prefix, with the first member
/// (the one every client tries first) down from the start. The daemons must sync, propagate
/// and log no etcd trouble (the benchmark fails if they do).
#[test]
fn the_scale_benchmark_runs_on_a_secure_cluster_with_a_member_down() {
    let dir = OutDir(std::env::temp_dir().join(format!("ovb-smoke-scale-{}", std::process::id())));
    let run = Command::new(env!("CARGO_BIN_EXE_overlay-bench"))
        .args([
            "--scenario",
            "scale",
            "--scale-nodes",
            "3",
            "--scale-endpoints",
            "200",
            "--scale-samples",
            "3",
            "--scale-etcd-members",
            "3",
            "--scale-etcd-down",
            "1",
            "--scale-etcd-secure",
            "--out",
        ])
        .arg(&dir.0)
        .output()
        .expect("overlay-bench runs");
    assert!(
        run.status.success(),
        "overlay-bench failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let cells: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.0.join("scale.json")).unwrap()).unwrap();
    assert_eq!(cells[0]["endpoints"], 200, "{cells}");
    assert!(cells[0]["prop_p50_ms"].as_f64().unwrap() > 0.0, "{cells}");
}
