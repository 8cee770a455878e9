//! `cargo xtask setup`: idempotent preparation of a fresh machine (Debian, root).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::run as exec;

/// Debian packages the build, the tests, the demo and the benchmarks use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "iperf3",
    "sockperf",
    // trafgen: the benchmark's UDP flood (packet mmap ring, no socket layer on the sender).
    "netsniff-ng",
    "tcpdump",
    "bpftool",
    "etcd-server",
    "etcd-client",
    "ipvsadm",
    "busybox-static",
    "protobuf-compiler",
    "podman",
    "containernetworking-plugins",
    "uidmap",
    "runc",
    "docker.io",
    "curl",
    // The DNS test's upstream resolver and the DNS benchmark's baseline (the binary only:
    // the `dnsmasq` package would start a system-wide service).
    "dnsmasq-base",
    // The metrics test's scraper (a real Prometheus server in a namespace).
    "prometheus",
    // The benchmark charts' font (read at run time; no font libraries needed).
    "fonts-dejavu-core",
];

/// The bpf-linker release known to work with the nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    check_root()?;
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    bpffs()?;
    kernel_report();
    Ok(())
}

fn check_root() -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("setup and the tests need root (BPF, network namespaces): run as root");
    }
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // Debian starts the packaged Prometheus as a host service; the tests run their own
    // inside a namespace, and nothing of theirs listens in the host's.
    if missing.contains(&"prometheus") && Path::new("/run/systemd/system").exists() {
        eprintln!("setup: stopping the host's prometheus service (the tests start their own)");
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "prometheus"])
            .status();
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing (needed for the eBPF crate): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

pub fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin")
}

pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// bpf-linker must use the same LLVM as the nightly rustc: link it against the nightly's own
/// libLLVM (a system LLVM of another major version does not work).
fn bpf_linker() -> Result<()> {
    let linker = cargo_bin().join("bpf-linker");
    if Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let lib = nightly_sysroot()?.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.<ver>-rust-* in {}", lib.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .context("LLVM version in the library name")?
        .to_owned();
    let prefix = PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".local/share/overlay/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major}");
    exec(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// cargo-fuzz, for the parser fuzz targets (`cargo xtask fuzz`; they build with the nightly
/// toolchain, whose x86_64 std ships the sanitizer runtimes, so no component is needed).
pub fn cargo_fuzz() -> Result<()> {
    let works = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", path_with_cargo_bin())
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz");
    exec(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .env("PATH", path_with_cargo_bin()),
    )
}

fn is_bpffs(path: &Path) -> bool {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "bpf_fs")
}

fn bpffs() -> Result<()> {
    let path = Path::new("/sys/fs/bpf");
    if is_bpffs(path) {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs on /sys/fs/bpf");
    exec(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn kernel_report() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut parts = release
        .split(['.', '-'])
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 6) {
        eprintln!("setup: kernel {release}: TC programs will use clsact (TCX needs 6.6+)");
    }
    if (major, minor) < (5, 10) {
        eprintln!(
            "setup: kernel {release} is older than 5.10: bpf_redirect_peer/neigh are missing"
        );
    }
}
