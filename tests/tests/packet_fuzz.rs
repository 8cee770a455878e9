//! The packet fuzzer (`overlay_tests::packet_fuzz`, docs/packet-fuzzing.md) for a bounded
//! time with a fixed seed, and the saved regression frames (tests/fixtures/packet-fuzz/)
//! replayed. The real datapath through BPF_PROG_TEST_RUN in a private network namespace:
//! root and BPF needed, nothing attached, nothing sent. `cargo xtask fuzz --datapath` runs
//! the same fuzzer for longer with a random seed.

use std::{path::PathBuf, time::Duration};

use overlay_tests::packet_fuzz::{self, fixture::Program, FuzzConfig};

/// Fixed, so a failure here is reproduced by `overlay-packet-fuzz --seed 3735928559`.
const SEED: u64 = 0xdead_beef;
/// Seconds of fuzzing, all three programs together.
const SECONDS: u64 = 24;
/// And at most this many frames: the same frames on a fast machine as on the one the pass
/// was last run on, so the suite's verdict does not depend on the machine's speed (longer
/// runs, with other seeds, are `cargo xtask fuzz --datapath`'s).
const MAX_FRAMES: u64 = 900_000;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn fuzzed_frames_violate_no_invariant() {
    let mut cfg = FuzzConfig::new(Duration::from_secs(SECONDS), SEED);
    cfg.max_frames = Some(MAX_FRAMES);
    cfg.out_dir = Some(packet_fuzz::default_out_dir());
    let report = packet_fuzz::run(cfg).unwrap_or_else(|e| panic!("packet fuzz fixture: {e}"));
    println!("{}", report.render());
    if let Some(failure) = &report.failure {
        panic!("{failure}");
    }
    for program in Program::ALL {
        let stats = &report.stats[&program];
        assert!(
            stats.frames >= 1000,
            "{}: only {} frames in {SECONDS} s",
            program.name(),
            stats.frames
        );
        assert!(
            stats.verdicts.keys().any(|v| v == "shot" || v == "drop")
                && stats
                    .verdicts
                    .keys()
                    .any(|v| v == "redirect" || v == "pass"),
            "{}: verdicts {:?} lack drops or deliveries",
            program.name(),
            stats.verdicts
        );
    }
}

#[test]
fn regression_frames_replay_without_violation() {
    let dir = manifest_dir().join("fixtures/packet-fuzz");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression frames in {}",
        dir.display()
    );
    let replayed = packet_fuzz::replay(&files).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replayed, files.len());
}
