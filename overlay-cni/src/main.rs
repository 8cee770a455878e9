//! overlay-cni: the CNI plugin of the eBPF VXLAN overlay. Runtimes exec it with CNI_* in the
//! environment and the network configuration on stdin; it asks the host's overlayd.

use std::{io::Read as _, process::ExitCode};

use overlay_cni::{types::code, CniEnv, CniError, LATEST_VERSION};

fn main() -> ExitCode {
    let env = CniEnv::from_vars(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(
            LATEST_VERSION,
            CniError::new(
                code::DECODE,
                format!("reading the configuration from stdin: {e}"),
            ),
        );
    }
    match overlay_cni::run(&env, &stdin) {
        Ok(Some(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err((version, e)) => fail(&version, e),
    }
}

/// Errors go to stdout as the spec's error JSON, with a non-zero exit.
fn fail(version: &str, e: CniError) -> ExitCode {
    let body = serde_json::to_string(&e.to_result(version)).expect("errors serialize");
    println!("{body}");
    ExitCode::from(1)
}
