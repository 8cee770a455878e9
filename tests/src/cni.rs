//! The real `overlay-cni` binary, exec'd the way a runtime does.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use crate::topology::overlayd_bin;

pub fn plugin() -> PathBuf {
    overlayd_bin().with_file_name("overlay-cni")
}

/// What a runtime puts in the environment for `command` on interface eth0.
pub fn cni_env(command: &str, container_id: String, netns: String) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0".to_owned()),
    ]
}

/// Runs the plugin like a runtime does: a clean environment, the config on stdin.
pub fn exec_plugin(env: &[(&str, String)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(plugin());
    cmd.env_clear()
        .env("CNI_PATH", "/usr/lib/cni")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("overlay-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("config on stdin");
    child.wait_with_output().expect("overlay-cni output")
}

/// A plugin config for `network` against the daemon at `socket`.
pub fn conf(version: &str, network: &str, socket: &std::path::Path) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"{network}","type":"overlay-cni","socket":"{}"}}"#,
        socket.display()
    )
}
