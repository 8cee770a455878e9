//! `cargo xtask fuzz`: the parser fuzz targets of `fuzz/` under libFuzzer (cargo-fuzz, nightly).
//!
//! Each target runs on a working corpus in `<target dir>/fuzz/corpus/<target>/`, seeded from
//! the committed `fuzz/corpus/<target>/` and kept between runs, so what libFuzzer finds never
//! lands in the repository; crashes are written to `fuzz/artifacts/<target>/` (ignored by git).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{setup, workspace_root};

/// Seconds per target in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 5;

/// Longest a single input may run before libFuzzer calls it a hang (its default is 20 min).
const INPUT_TIMEOUT_SECS: u64 = 10;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// Where scratch corpora and logs go: the fuzz crate's target directory.
fn scratch_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fuzz_dir().join("target"))
        .join("fuzz")
}

/// The targets: one file per parser in `fuzz/fuzz_targets/`.
pub fn targets() -> Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".rs"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// `cargo fuzz ...` with the nightly toolchain, from the workspace root.
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .env("PATH", setup::path_with_cargo_bin())
        .current_dir(workspace_root());
    cmd
}

/// What one target's run came to.
struct Outcome {
    target: String,
    executions: Option<u64>,
    per_second: Option<u64>,
    /// The input libFuzzer kept when the target failed.
    crash: Option<PathBuf>,
    failed: bool,
    log: PathBuf,
}

/// Builds and runs every target (or `only`) for `seconds` each; fails naming each crash.
pub fn parsers(seconds: u64, only: Option<&str>) -> Result<()> {
    setup::cargo_fuzz()?;
    let all = targets()?;
    let chosen: Vec<String> = match only {
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_owned()],
        Some(t) => bail!("no fuzz target {t:?}: the targets are {}", all.join(", ")),
        None => all,
    };
    let mut build = cargo_fuzz();
    build.arg("build");
    if let [one] = chosen.as_slice() {
        build.arg(one);
    }
    crate::run(&mut build)?;
    let mut outcomes = Vec::new();
    for target in &chosen {
        eprintln!("fuzz: {target} for {seconds} s");
        outcomes.push(run_target(target, seconds)?);
    }
    eprintln!(
        "\n{:<18} {:>14} {:>10}  result",
        "target", "executions", "exec/s"
    );
    for o in &outcomes {
        let n = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
        let result = match (&o.crash, o.failed) {
            (Some(path), _) => format!("CRASH {}", path.display()),
            (None, true) => format!("FAILED, see {}", o.log.display()),
            (None, false) => "ok".to_owned(),
        };
        eprintln!(
            "{:<18} {:>14} {:>10}  {result}",
            o.target,
            n(o.executions),
            n(o.per_second)
        );
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.failed)
        .map(|o| match &o.crash {
            Some(path) => format!(
                "{} crashed on {} (reproduce: cargo +nightly fuzz run {} {}; log {})",
                o.target,
                path.display(),
                o.target,
                path.display(),
                o.log.display()
            ),
            None => format!(
                "{} failed without a crash input (log {})",
                o.target,
                o.log.display()
            ),
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found {} failing target(s): fix the parser, then keep the input in fuzz/regressions/<target>/ (see docs/fuzzing.md):\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

fn run_target(target: &str, seconds: u64) -> Result<Outcome> {
    let scratch = scratch_dir();
    let corpus = scratch.join("corpus").join(target);
    seed(&fuzz_dir().join("corpus").join(target), &corpus)?;
    let artifacts = fuzz_dir().join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let log = scratch.join("logs").join(format!("{target}.log"));
    std::fs::create_dir_all(log.parent().expect("logs dir"))?;
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = cargo_fuzz()
        .args(["run", target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("starting cargo fuzz run")?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let crash = text
        .lines()
        .find_map(|l| l.split_once("Test unit written to "))
        .map(|(_, path)| PathBuf::from(path.trim()));
    let failed = !status.success() || crash.is_some();
    if failed {
        // The panic message and where it happened, without the whole log.
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    Ok(Outcome {
        target: target.to_owned(),
        executions: stat("stat::number_of_executed_units:"),
        per_second: stat("stat::average_exec_per_sec:"),
        crash,
        failed,
        log,
    })
}

/// Copies the committed seeds into the working corpus (what libFuzzer added earlier stays).
fn seed(seeds: &Path, corpus: &Path) -> Result<()> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let Ok(entries) = std::fs::read_dir(seeds) else {
        return Ok(());
    };
    for e in entries.filter_map(Result::ok) {
        if e.path().is_file() {
            std::fs::copy(e.path(), corpus.join(e.file_name()))
                .with_context(|| format!("seeding {}", corpus.display()))?;
        }
    }
    Ok(())
}
