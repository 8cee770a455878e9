//! The chaos soak's short run (2 minutes; `cargo xtask soak --minutes N` for a long one):
//! churn, kills, etcd member restarts and link flaps under long-lived streams, then no byte
//! lost, nothing leaked, the same tables everywhere.

use std::time::Duration;

use overlay_tests::soak::{self, SoakConfig};

#[test]
fn two_minutes_of_chaos_lose_and_leak_nothing() {
    let seconds = std::env::var("OVT_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed = std::env::var("OVT_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1)
        });
    let report = soak::run(&SoakConfig {
        duration: Duration::from_secs(seconds),
        seed,
        docker: true,
    });
    eprintln!("{}", report.to_markdown());
    assert!(
        report.problems.is_empty(),
        "soak with seed {seed} (OVT_SOAK_SEED reproduces the choices): {:#?}",
        report.problems
    );
    let churn: u64 = report.ops.values().sum();
    assert!(churn >= seconds / 3, "too little churn: {:?}", report.ops);
    assert!(
        report.faults.values().sum::<u64>() >= 3,
        "too few faults: {:?}",
        report.faults
    );
}
