//! overlay-cni: the CNI plugin of the eBPF VXLAN overlay. Runtimes exec it with CNI_* in the
//! environment and the network configuration on stdin; it asks the host's overlayd.

use std::{io::Read as _, process::ExitCode};

use overlay_daemon::cni::{self, CniEnv, CniError};

fn main() -> ExitCode {
    let env = CniEnv::from_vars(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(
            "1.1.0",
            CniError::new(
                cni::E_DECODE,
                format!("reading the configuration from stdin: {e}"),
            ),
        );
    }
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            (
                "1.1.0".to_owned(),
                CniError::new(cni::E_ATTACHMENT, e.to_string()),
            )
        })
        .and_then(|rt| rt.block_on(cni::run(&env, &stdin)));
    match outcome {
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
    println!("{}", e.to_json(version));
    ExitCode::from(1)
}
