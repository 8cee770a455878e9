//! `cargo xtask soak --minutes N`: the chaos soak for as long as asked, with its report in
//! target/soak/ (report.md and report.json). Exits non-zero if a check failed.

use std::{process::ExitCode, time::Duration};

use overlay_tests::soak::{self, SoakConfig};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut minutes = 10u64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let mut docker = true;
    while let Some(a) = args.next() {
        let value = |args: &mut dyn Iterator<Item = String>, name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--minutes" => minutes = value(&mut args, "--minutes"),
            "--seed" => seed = value(&mut args, "--seed"),
            "--no-docker" => docker = false,
            other => {
                eprintln!("overlay-soak: unknown argument {other:?}: use --minutes N, --seed N, --no-docker");
                return ExitCode::from(2);
            }
        }
    }
    let report = soak::run(&SoakConfig {
        duration: Duration::from_secs(minutes * 60),
        seed,
        docker,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/soak");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("report.md"), report.to_markdown());
    let _ = std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report.to_json()).unwrap_or_default(),
    );
    println!("{}", report.to_markdown());
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
