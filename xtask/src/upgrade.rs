//! The previous release, built from its commit for the upgrade test: a checkout of it in
//! `target/upgrade/<version>/src`, built with a target directory of its own next to it and
//! kept (a stamp names the commit), so later runs only check that it is there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{run, setup, workspace_root};

/// The release the upgrade test starts from (CHANGELOG.md): the last one users run.
pub const PREVIOUS: Release = Release {
    version: "0.2.0",
    commit: "e1770d1a44305727e5668611b6f9cab4c3d0e2fb",
};

pub struct Release {
    pub version: &'static str,
    pub commit: &'static str,
}

/// The previous release's binaries.
pub struct Binaries {
    pub overlayd: PathBuf,
}

fn dir() -> PathBuf {
    workspace_root()
        .join("target")
        .join("upgrade")
        .join(PREVIOUS.version)
}

fn git(args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(workspace_root()).args(args);
    cmd
}

/// Whether this checkout holds the previous release's commit; a shallow clone fetches it
/// from `origin` first (protocol v2 serves any reachable commit).
pub fn available() -> bool {
    let present = || {
        git(&["cat-file", "-e", &format!("{}^{{commit}}", PREVIOUS.commit)])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    present()
        || (git(&["fetch", "--quiet", "--depth=1", "origin", PREVIOUS.commit])
            .status()
            .is_ok_and(|s| s.success())
            && present())
}

/// Builds the previous release once (its overlayd, overlayctl and overlay-cni, debug, with
/// its own eBPF object) and returns where its binaries are.
pub fn build_previous() -> Result<Binaries> {
    let dir = dir();
    let src = dir.join("src");
    let target = dir.join("target");
    let stamp = dir.join("built");
    let bins = Binaries {
        overlayd: target.join("debug").join("overlayd"),
    };
    let built = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == PREVIOUS.commit);
    if built && bins.overlayd.exists() {
        return Ok(bins);
    }
    if !available() {
        bail!(
            "commit {} (release {}) is not in this checkout: fetch it (git fetch --unshallow) to run the upgrade test",
            PREVIOUS.commit,
            PREVIOUS.version
        );
    }
    eprintln!(
        "upgrade: building release {} ({}) in {}",
        PREVIOUS.version,
        &PREVIOUS.commit[..12],
        dir.display()
    );
    if src.exists() {
        std::fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    std::fs::create_dir_all(&src)?;
    // `git archive` rather than a worktree: nothing to unregister if the directory goes.
    let archive = git(&["archive", "--format=tar", PREVIOUS.commit])
        .output()
        .context("git archive")?;
    if !archive.status.success() {
        bail!(
            "git archive {}: {}",
            PREVIOUS.commit,
            String::from_utf8_lossy(&archive.stderr)
        );
    }
    untar(&archive.stdout, &src)?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Its own manifest: `run` works from this workspace's root.
    cmd.env("PATH", setup::path_with_cargo_bin())
        .env("CARGO_TARGET_DIR", &target)
        // Built once and only run: no incremental state or debug info to keep on disk.
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .arg("build")
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .args([
            "--package",
            "overlay-daemon",
            "--package",
            "overlay-cni",
            "--bins",
        ]);
    run(&mut cmd)?;
    std::fs::write(&stamp, PREVIOUS.commit)?;
    Ok(bins)
}

fn untar(tar: &[u8], into: &Path) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("tar")
        .args(["-x", "-C"])
        .arg(into)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("tar")?;
    child.stdin.take().context("tar stdin")?.write_all(tar)?;
    if !child.wait()?.success() {
        bail!("tar -x into {} failed", into.display());
    }
    Ok(())
}
