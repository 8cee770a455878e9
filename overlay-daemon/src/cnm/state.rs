//! What the Docker driver must remember across overlayd restarts: which overlay network each
//! Docker network stands for, and each Docker endpoint's address and interface. Docker does
//! not call CreateNetwork again after a restart, so this lives in `<run-dir>/docker/`.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

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

/// One JSON file per Docker id under a directory.
pub struct JsonDir {
    dir: PathBuf,
}

/// Docker ids are hex; anything that could escape the directory is refused.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl JsonDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn load<T: DeserializeOwned>(&self, id: &str) -> Option<T> {
        serde_json::from_slice(&std::fs::read(self.path(id)).ok()?).ok()
    }

    pub fn save<T: Serialize>(&self, id: &str, value: &T) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(id);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(value).expect("serializable"))?;
        std::fs::rename(tmp, path)
    }

    /// Every entry that parses, in no particular order.
    pub fn all<T: DeserializeOwned>(&self) -> Vec<T> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.path(id));
    }
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
