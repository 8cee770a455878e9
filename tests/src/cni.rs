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
    exec_plugin_at(&plugin(), env, stdin)
}

/// `exec_plugin` with the plugin binary at `bin` (another release's).
pub fn exec_plugin_at(bin: &std::path::Path, env: &[(&str, String)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(bin);
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

/// What the real plugin answered: the container's address, or the CNI error (code, msg).
pub type CniOutcome = Result<std::net::Ipv4Addr, (u64, String)>;

fn outcome(out: &Output) -> Result<serde_json::Value, (u64, String)> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "overlay-cni printed no JSON: stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if out.status.success() {
        return Ok(v);
    }
    let code = v["code"].as_u64().expect("a CNI error has a code");
    Err((code, v["msg"].as_str().unwrap_or_default().to_owned()))
}

/// ADD of `id` (interface eth0 in `netns`) to `network` through the real plugin and the
/// daemon at `socket`.
pub fn add(socket: &std::path::Path, network: &str, id: &str, netns: &str) -> CniOutcome {
    add_using(&plugin(), socket, network, id, netns).map(|ip| match ip {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(ip) => panic!("{network} gave IPv6 {ip} first: not an IPv4 network"),
    })
}

/// `add` through the plugin binary at `bin`: the first address of the result (IPv6 on an
/// IPv6-only network).
pub fn add_using(
    bin: &std::path::Path,
    socket: &std::path::Path,
    network: &str,
    id: &str,
    netns: &str,
) -> Result<std::net::IpAddr, (u64, String)> {
    let out = exec_plugin_at(
        bin,
        &cni_env("ADD", id.to_owned(), netns.to_owned()),
        conf("1.0.0", network, socket).as_bytes(),
    );
    let v = outcome(&out)?;
    let addr = v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("ADD result without an address: {v}"));
    Ok(addr)
}

/// DEL of `id` through the real plugin.
pub fn del(
    socket: &std::path::Path,
    network: &str,
    id: &str,
    netns: &str,
) -> Result<(), (u64, String)> {
    del_using(&plugin(), socket, network, id, netns)
}

/// `del` through the plugin binary at `bin`.
pub fn del_using(
    bin: &std::path::Path,
    socket: &std::path::Path,
    network: &str,
    id: &str,
    netns: &str,
) -> Result<(), (u64, String)> {
    let out = exec_plugin_at(
        bin,
        &cni_env("DEL", id.to_owned(), netns.to_owned()),
        conf("1.0.0", network, socket).as_bytes(),
    );
    if out.status.success() {
        return Ok(());
    }
    outcome(&out).map(|_| ())
}

/// Runs the real plugin's `command` for container `id` in `ns` with `config`: whether it
/// succeeded, and what it printed (null for nothing).
pub fn run(command: &str, id: &str, ns: &crate::Netns, config: &str) -> (bool, serde_json::Value) {
    run_on(command, id, ns, "eth0", config)
}

/// `run` for interface `ifname`.
pub fn run_on(
    command: &str,
    id: &str,
    ns: &crate::Netns,
    ifname: &str,
    config: &str,
) -> (bool, serde_json::Value) {
    let mut env = cni_env(command, id.to_owned(), ns.path());
    env.retain(|(k, _)| *k != "CNI_IFNAME");
    env.push(("CNI_IFNAME", ifname.to_owned()));
    let out = exec_plugin(&env, config.as_bytes());
    let value = if out.stdout.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{command}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    (out.status.success(), value)
}
