//! What can go wrong in the cluster module, each with the kind the API answers with.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use overlay_api::ErrorKind;

use crate::{ipam::IpamError, netlink::NetlinkError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("network {0:?} does not exist: create it with `overlayctl network create`")]
    NoSuchNetwork(String),
    #[error("not registered in etcd yet: try again")]
    NotRegistered,
    #[error("the cluster state is not listed from etcd yet: try again")]
    NotSynced,
    #[error("endpoint {container_id}/{ifname} already exists: delete it first")]
    Exists {
        container_id: String,
        ifname: String,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("address {0} is already in use: pick another or let the IPAM choose")]
    AddressTaken(Ipv4Addr),
    #[error("endpoint {0} is not known to this node")]
    NotFound(String),
    #[error("local state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The datapath did not install the change in time (or could not).
    #[error("the datapath did not install the change: {0}; try again")]
    NotApplied(String),
    /// The datapath installed the tables, but not this endpoint.
    #[error("the datapath could not install endpoint {ip}: {reason}")]
    NotInstalled { ip: IpAddr, reason: String },
    #[error("overlayd is stopping: try again when it is back")]
    Stopping,
}

impl ClusterError {
    /// The kind a caller (the API, the Docker driver) decides on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // etcd away or in an election: the runtime retries later (CNI code 11).
            ClusterError::Store(e) if e.is_transient() => ErrorKind::Unavailable,
            // Certificates, credentials, roles: nothing changes until the operator acts.
            ClusterError::Store(_) => ErrorKind::Internal,
            ClusterError::Ipam(IpamError::Exhausted(_)) => ErrorKind::Exhausted,
            ClusterError::Ipam(
                IpamError::BadBlockLen { .. }
                | IpamError::BadBlockLen6 { .. }
                | IpamError::TooManyBlocks { .. },
            ) => ErrorKind::Invalid,
            ClusterError::Netlink(NetlinkError::Exists(_)) => ErrorKind::Conflict,
            // The configuration asks for what the container's other networks hold.
            ClusterError::Netlink(NetlinkError::DefaultRouteTaken { .. }) => ErrorKind::Invalid,
            ClusterError::Netlink(NetlinkError::Netns { .. }) => ErrorKind::Invalid,
            ClusterError::Netlink(_) => ErrorKind::Internal,
            ClusterError::NoSuchNetwork(_) | ClusterError::NotFound(_) => ErrorKind::NotFound,
            ClusterError::Exists { .. } | ClusterError::AddressTaken(_) => ErrorKind::Conflict,
            ClusterError::Invalid(_) => ErrorKind::Invalid,
            ClusterError::State { .. } => ErrorKind::Internal,
            // A full table frees up as endpoints leave: the runtime retries later.
            ClusterError::NotRegistered
            | ClusterError::NotSynced
            | ClusterError::NotApplied(_)
            | ClusterError::NotInstalled { .. }
            | ClusterError::Stopping => ErrorKind::Unavailable,
        }
    }

    pub fn to_api(&self) -> overlay_api::ApiError {
        overlay_api::ApiError::new(self.kind(), self.to_string())
    }
}
