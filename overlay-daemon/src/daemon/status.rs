//! What the daemon reports outside its API: `<run-dir>/status.json` after every pass, and
//! the eBPF programs' logs forwarded into its own.

use std::{path::Path, time::SystemTime};

use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tracing::{level_filters::LevelFilter, warn};

use crate::reconcile::Report;

pub(crate) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `<run-dir>/status.json`: what the datapath holds after the last reconciliation.
pub(super) fn write_status(run_dir: &Path, report: &Report) {
    let path = run_dir.join("status.json");
    let tmp = run_dir.join(".status.json.tmp");
    let body = serde_json::to_vec_pretty(report).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path)) {
        warn!(path = %path.display(), "writing status: {e}");
    }
}

/// aya-log's level for the eBPF side, from the most verbose level tracing will print.
pub(super) fn ebpf_log_level() -> u8 {
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

pub(super) async fn forward_ebpf_logs(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns the ring buffer fd and lives inside the AsyncFd, so the fd
    // stays open for as long as it is registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("eBPF log reader: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
