//! `cargo xtask <task>`: everything a new machine needs, in one place.

mod fuzz;
mod setup;
mod upgrade;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Project tasks for the eBPF VXLAN overlay"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent): Debian packages, nightly rust-src,
    /// bpf-linker built against the nightly's LLVM, cargo-fuzz, and a mounted bpffs.
    Setup,
    /// Build overlayd and overlayctl (with the embedded eBPF object) and overlay-cni.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, lint, then every test: unit tests and the privileged integration tests.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
        /// Skip cargo fmt/clippy.
        #[arg(long)]
        no_lint: bool,
    },
    /// cargo fmt --check and clippy -D warnings, for userspace and the eBPF crate.
    Lint,
    /// Setup, build, then run a real overlay across namespace hosts and show traffic crossing it.
    Demo {
        /// Arguments for the demo (`--ipv6-underlay`: the hosts' underlay is IPv6 only).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The chaos soak: churn, kills, etcd member restarts and link flaps under long-lived
    /// streams for N minutes; report in target/soak/.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Reproduce an earlier run's choices.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Fuzz every parser of untrusted or operator input (cargo-fuzz, libFuzzer; one target per
    /// parser in fuzz/fuzz_targets/) for N seconds each, or just TARGET; fails naming the
    /// input of any crash. With --datapath: random packets through the eBPF programs instead.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(conflicts_with = "datapath")]
        target: Option<String>,
        /// Fuzz the datapath (overlay-packet-fuzz) instead of the parsers.
        #[arg(long)]
        datapath: bool,
        /// With --datapath: reproduce an earlier run's packets.
        #[arg(long, requires = "datapath")]
        seed: Option<u64>,
    },
    /// The upgrade test alone: builds the previous release (kept in target/upgrade/), then
    /// rolls a three-host cluster from it to this one and back on one node, under traffic.
    UpgradeTest,
    /// Build the container image the DaemonSet names from the release binaries and the shared
    /// libraries they load, pulling nothing (no registry, no base image): a docker-archive
    /// tarball for `docker load`, `podman load` or `ctr images import`.
    Image {
        #[arg(long, default_value = "target/image/overlay-ebpf.tar")]
        out: PathBuf,
        #[arg(long, default_value = "overlay-ebpf:latest")]
        tag: String,
    },
    /// Datapath benchmarks (overlay vs kernel vxlan vs routing), report in target/bench/.
    Bench {
        /// Arguments for overlay-bench (e.g. --rounds 5 --seconds 5 --modes overlay,kernel-vxlan).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release } => build(release),
        Task::Test { filter, no_lint } => test(filter, no_lint),
        Task::Lint => lint(),
        Task::Demo { args } => demo(args),
        Task::Bench { args } => bench(args),
        Task::Image { out, tag } => {
            build(true)?;
            run(Command::new("sh")
                .arg("deploy/image/build.sh")
                .arg("target/release")
                .arg(&out)
                .arg(&tag))
        }
        Task::Soak { minutes, seed } => soak(minutes, seed),
        Task::UpgradeTest => upgrade_test(),
        Task::Fuzz {
            seconds,
            target,
            datapath: false,
            ..
        } => fuzz::parsers(seconds, target.as_deref()),
        Task::Fuzz {
            seconds,
            datapath: true,
            seed,
            ..
        } => fuzz_datapath(seconds, seed),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs a command from the workspace root, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    let what = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Make bpf-linker (installed into ~/.cargo/bin) visible to the nightly build of overlay-ebpf.
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "overlay-daemon",
        "--package",
        "overlay-cni",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn overlayd_path(release: bool) -> PathBuf {
    workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("overlayd")
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "overlay-ebpf",
        "--exclude",
        "overlay-bench-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crates only build for the BPF target, with the nightly toolchain. `$CARGO` is
    // the toolchain's own binary (no `+nightly`), so go through rustup.
    let mut nightly = Command::new("rustup");
    nightly
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "overlay-ebpf",
            "--package",
            "overlay-bench-ebpf",
            "--release",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("PATH", setup::path_with_cargo_bin());
    run(&mut nightly)
}

fn test(filter: Option<String>, no_lint: bool) -> Result<()> {
    setup::run()?;
    build(false)?;
    if !no_lint {
        lint()?;
    }
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "overlay-ebpf",
        "--exclude",
        "overlay-bench-ebpf",
    ])
    .env("OVERLAYD", overlayd_path(false));
    previous_release(&mut cmd)?;
    cmd.arg("--");
    let everything = filter.is_none();
    if let Some(f) = filter {
        cmd.arg(f);
    }
    // Each integration test runs three hosts with real traffic: two at a time fit two cores.
    cmd.args(["--test-threads", "2"]);
    run(&mut cmd)?;
    // Every parser under libFuzzer for a few seconds: enough to catch a regression of a
    // known input class, bounded for CI. `cargo xtask fuzz` runs them for longer.
    if everything {
        fuzz::parsers(fuzz::TEST_SECONDS, None)?;
    }
    Ok(())
}

/// Points the upgrade test at the previous release's binaries (built once), or says why it
/// cannot run: a clone without that commit (a shallow one) skips it, loudly.
fn previous_release(cmd: &mut Command) -> Result<()> {
    if upgrade::available() {
        let bins = upgrade::build_previous()?;
        cmd.env("OVERLAYD_PREVIOUS", bins.overlayd);
    } else {
        let why = format!(
            "release {} ({}) is not in this clone (shallow?): the upgrade test is skipped",
            upgrade::PREVIOUS.version,
            upgrade::PREVIOUS.commit
        );
        eprintln!("WARNING: {why}");
        cmd.env("OVERLAY_UPGRADE_UNAVAILABLE", why);
    }
    Ok(())
}

fn upgrade_test() -> Result<()> {
    setup::run()?;
    build(false)?;
    let bins = upgrade::build_previous()?;
    run(cargo()
        .args([
            "test",
            "--package",
            "overlay-tests",
            "--test",
            "upgrade",
            "--",
            "--nocapture",
        ])
        .env("OVERLAYD", overlayd_path(false))
        .env("OVERLAYD_PREVIOUS", bins.overlayd))
}

fn demo(args: Vec<String>) -> Result<()> {
    setup::run()?;
    build(false)?;
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "overlay-tests",
            "--bin",
            "overlay-demo",
            "--",
        ])
        .args(args)
        .env("OVERLAYD", overlayd_path(false)))
}

/// Runs one of overlay-tests' binaries (`--release` for the fast ones) after setup and a
/// build of the daemon it drives.
fn run_test_bin(bin: &str, release: bool, args: &[String]) -> Result<()> {
    setup::run()?;
    build(false)?;
    let mut cmd = cargo();
    cmd.args(["run", "--quiet"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--package", "overlay-tests", "--bin", bin, "--"])
        .args(args)
        .env("OVERLAYD", overlayd_path(false));
    run(&mut cmd)
}

fn soak(minutes: u64, seed: Option<u64>) -> Result<()> {
    let mut args = vec!["--minutes".to_owned(), minutes.to_string()];
    if let Some(seed) = seed {
        args.extend(["--seed".to_owned(), seed.to_string()]);
    }
    run_test_bin("overlay-soak", false, &args)
}

/// Random and mutated packets through the eBPF programs (`overlay-packet-fuzz`).
fn fuzz_datapath(seconds: u64, seed: Option<u64>) -> Result<()> {
    let mut args = vec!["--seconds".to_owned(), seconds.to_string()];
    if let Some(seed) = seed {
        args.extend(["--seed".to_owned(), seed.to_string()]);
    }
    run_test_bin("overlay-packet-fuzz", true, &args)
}

fn bench(args: Vec<String>) -> Result<()> {
    setup::run()?;
    // Control-plane figures (propagation, scale) are only meaningful for an optimised daemon.
    build(true)?;
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "overlay-bench",
            "--",
        ])
        .args(args)
        .env("OVERLAYD", overlayd_path(true)))
}
