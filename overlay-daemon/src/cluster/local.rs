//! What this node remembers of its own endpoints: `<run-dir>/endpoints/<host ifname>.json`,
//! written before anything touches the host, so a crash from then on is cleaned up and a
//! restarted daemon can publish them again.

use std::path::PathBuf;

use overlay_api::{Attachment, Endpoint, Sandbox};

use super::ClusterError;
use crate::netlink::{self, NetlinkError};

/// The host-side veth name of an endpoint: stable, unique, at most 15 characters.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let h = crate::reconcile::node_id(&format!("{container_id}/{ifname}"));
    let h2 = crate::reconcile::node_id(&format!("{ifname}/{container_id}"));
    format!("ovl{h:08x}{:02x}", h2 & 0xff)
}

pub(crate) struct LocalState {
    pub(crate) dir: PathBuf,
}

impl LocalState {
    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", host_ifname(container_id, ifname)))
    }

    pub(crate) fn load(&self, container_id: &str, ifname: &str) -> Option<Endpoint> {
        let text = std::fs::read(self.path(container_id, ifname)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub(crate) fn all(&self) -> Vec<Endpoint> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    pub(crate) fn save(&self, ep: &Endpoint) -> Result<(), ClusterError> {
        let path = self.path(&ep.container_id, &ep.ifname);
        let tmp = path.with_extension("tmp");
        let err = |source| ClusterError::State {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        std::fs::write(&tmp, serde_json::to_vec_pretty(ep).expect("serializable")).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// How long ago the endpoint's state last changed.
    pub(crate) fn age(&self, container_id: &str, ifname: &str) -> Option<std::time::Duration> {
        std::fs::metadata(self.path(container_id, ifname))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
    }

    pub(crate) fn remove(&self, container_id: &str, ifname: &str) {
        let _ = std::fs::remove_file(self.path(container_id, ifname));
    }
}

/// Whether what an endpoint stands for still exists on the host.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presence {
    Present,
    Gone,
    /// Could not be told (the check itself failed): the endpoint is kept.
    Unknown(String),
}

/// A reserved address always exists; an interface the runtime moved itself while its
/// host-side veth exists; one the daemon made in a namespace while the container has it (a
/// namespace that is gone takes it along).
pub(crate) async fn presence(ep: &Endpoint) -> Presence {
    match (&ep.attachment, &ep.sandbox) {
        (Attachment::Reserved, _) => Presence::Present,
        (Attachment::Veth { host_ifname }, Sandbox::Runtime) => {
            match crate::netif::ifindex(host_ifname) {
                Some(_) => Presence::Present,
                None => Presence::Gone,
            }
        }
        (Attachment::Veth { .. }, Sandbox::Netns(netns)) => {
            match netlink::container_has(netns, &ep.ifname).await {
                Ok(true) => Presence::Present,
                Ok(false) => Presence::Gone,
                Err(NetlinkError::Netns { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Presence::Gone
                }
                Err(e) => Presence::Unknown(e.to_string()),
            }
        }
    }
}
