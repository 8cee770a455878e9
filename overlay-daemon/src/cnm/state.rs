//! What the Docker driver must remember across overlayd restarts: which overlay network each
//! Docker network stands for, and each Docker endpoint's address and interface. Docker does
//! not call CreateNetwork again after a restart, so this lives in `<run-dir>/docker/`.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

pub use crate::json_dir::JsonDir;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkBinding {
    /// The overlay network (etcd) this Docker network uses.
    pub network: String,
    /// Its containers' MTU (`-o com.docker.network.driver.mtu`), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointBinding {
    pub network_id: String,
    pub network: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on an `--ipv6` network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// The veth side Docker moves into the container.
    pub peer: String,
    /// The container's network namespace (Join's SandboxKey), once joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<PathBuf>,
}

/// Docker ids are hex; anything that could escape the directory is refused.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_escape_the_directory() {
        assert!(valid_id("3f4e5d6c7b8a"));
        assert!(!valid_id("../../etc/passwd"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
    }
}
