//! What this node remembers of its own endpoints: `<run-dir>/endpoints/<host ifname>.json`,
//! written before anything touches the host, so a crash from then on is cleaned up and a
//! restarted daemon can publish them again.

use std::path::Path;

use overlay_api::{Attachment, Endpoint, Sandbox};

use super::ClusterError;
use crate::json_dir::JsonDir;
use crate::netlink::{self, NetlinkError};

/// The host-side veth name of an endpoint: stable, unique, at most 15 characters.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let h = crate::reconcile::node_id(&format!("{container_id}/{ifname}"));
    let h2 = crate::reconcile::node_id(&format!("{ifname}/{container_id}"));
    format!("ovl{h:08x}{:02x}", h2 & 0xff)
}

pub(crate) struct LocalState {
    files: JsonDir,
}

impl LocalState {
    pub(crate) fn open(dir: &Path) -> Self {
        Self {
            files: JsonDir::open(dir),
        }
    }

    pub(crate) fn load(&self, container_id: &str, ifname: &str) -> Option<Endpoint> {
        self.files.load(&host_ifname(container_id, ifname))
    }

    pub(crate) fn all(&self) -> Vec<Endpoint> {
        self.files.all()
    }

    pub(crate) fn save(&self, ep: &Endpoint) -> Result<(), ClusterError> {
        let id = host_ifname(&ep.container_id, &ep.ifname);
        self.files
            .save(&id, ep)
            .map_err(|source| ClusterError::State {
                path: self.files.path(&id),
                source,
            })
    }

    /// How long ago the endpoint's state last changed.
    pub(crate) fn age(&self, container_id: &str, ifname: &str) -> Option<std::time::Duration> {
        self.files.age(&host_ifname(container_id, ifname))
    }

    pub(crate) fn remove(&self, container_id: &str, ifname: &str) {
        self.files.remove(&host_ifname(container_id, ifname));
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
