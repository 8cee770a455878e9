//! `cargo xtask fuzz --datapath [--seconds N] [--seed S]`: the packet fuzzer for the eBPF
//! programs (BPF_PROG_TEST_RUN; nothing attached, nothing sent). Needs root. Prints frames,
//! verdicts and drop reasons per program and the seed; exits non-zero on the first
//! invariant violation, with the frame saved under target/packet-fuzz/ for replay.
//!
//! ```text
//! overlay-packet-fuzz [--seconds N] [--seed S] [--frames N]
//! overlay-packet-fuzz --replay FILE...
//! ```

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use overlay_tests::packet_fuzz::{self, FuzzConfig};

const USAGE: &str =
    "usage: overlay-packet-fuzz [--seconds N] [--seed S] [--frames N] | --replay FILE...";

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(stop) = STOP.get() {
        stop.store(true, Ordering::Relaxed);
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut seconds = 60u64;
    let mut seed = None;
    let mut frames = None;
    let mut replay = Vec::new();
    while let Some(a) = args.next() {
        let mut number = |name: &str| -> Option<u64> {
            let v = args.next().and_then(|v| v.parse().ok());
            if v.is_none() {
                eprintln!("overlay-packet-fuzz: {name} needs a number\n{USAGE}");
            }
            v
        };
        match a.as_str() {
            "--seconds" => match number("--seconds") {
                Some(v) => seconds = v,
                None => return ExitCode::from(2),
            },
            "--seed" => match number("--seed") {
                Some(v) => seed = Some(v),
                None => return ExitCode::from(2),
            },
            "--frames" => match number("--frames") {
                Some(v) => frames = Some(v),
                None => return ExitCode::from(2),
            },
            "--replay" => replay.extend(args.by_ref().map(PathBuf::from)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("overlay-packet-fuzz: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if !replay.is_empty() {
        return match packet_fuzz::replay(&replay) {
            Ok(n) => {
                println!("{n} frame(s) replayed, no invariant violated");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let seed = seed.unwrap_or_else(random_seed);
    println!("packet fuzz: seed {seed}, {seconds} s");
    let mut cfg = FuzzConfig::new(Duration::from_secs(seconds), seed);
    cfg.max_frames = frames;
    cfg.out_dir = Some(packet_fuzz::default_out_dir());
    cfg.progress = true;
    let _ = STOP.set(cfg.stop.clone());
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        if let Err(e) = unsafe { signal(sig, SigHandler::Handler(on_signal)) } {
            eprintln!("overlay-packet-fuzz: no {sig} handler: {e}");
        }
    }
    match packet_fuzz::run(cfg) {
        Ok(report) => {
            print!("{}", report.render());
            if report.failure.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("overlay-packet-fuzz: {e} (seed {seed})");
            ExitCode::FAILURE
        }
    }
}

fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok()
    {
        return u64::from_le_bytes(buf);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
