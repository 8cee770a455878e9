//! What overlayctl does to the cluster, as a library: the checks before a change, the
//! change itself in etcd (one transaction where a check must still hold when it applies),
//! and what an operator sees of each object. The binary only parses flags and prints.

mod network;
mod service;
mod snapshot;
mod vip;

use serde::de::DeserializeOwned;

pub use network::{create_network, network_record, remove_network, set_service_ranges};
pub use service::{add_service, check_backends, remove_service, service_record, set_backends};
pub use snapshot::{
    BackendState, BlockView, EndpointFilter, EndpointView, NetworkView, NodeView, ServiceView,
    Snapshot,
};
pub use vip::{add_allocated, AllocatedService, Family};

use crate::store::{keys::Key, records, records::Versioned, Store, StoreError};

/// What went wrong, by kind; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request itself is wrong; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    #[error("network {0:?} does not exist: see `overlayctl network ls`")]
    NoSuchNetwork(String),
    #[error("service {0:?} does not exist: see `overlayctl service ls`")]
    NoSuchService(String),
    #[error("node {0:?} is not registered: see `overlayctl node ls`")]
    NoSuchNode(String),
    #[error("no endpoint {0}: see `overlayctl endpoint ls`")]
    NoSuchEndpoint(String),
    #[error("network {0:?} already exists: pick another name")]
    NetworkExists(String),
    #[error("VNI {vni} is taken by network {network:?}: pick another --vni")]
    VniTaken { vni: u32, network: String },
    #[error("service {0:?} already exists: pick another name")]
    ServiceExists(String),
    #[error("{vip} in network {network:?} is taken by service {service:?}: pick another --vip")]
    VipTaken {
        vip: String,
        network: String,
        service: String,
    },
    #[error("network {network:?} still has {count} endpoint(s): remove their containers first (`overlayctl endpoint ls --network {network}`)")]
    HasEndpoints { network: String, count: usize },
    /// Someone else changed the object between this command's read and its write.
    #[error("{0} changed while this command ran: run it again")]
    Changed(String),
}

fn invalid(msg: impl Into<String>) -> AdminError {
    AdminError::Invalid(msg.into())
}

/// A value of either address family (a subnet, an address), for flags given once per family.
pub trait ByFamily: Copy + std::fmt::Display {
    type Four;
    type Six;
    fn family(self) -> Result<Self::Four, Self::Six>;
}

impl ByFamily for ipnet::IpNet {
    type Four = ipnet::Ipv4Net;
    type Six = ipnet::Ipv6Net;
    fn family(self) -> Result<Self::Four, Self::Six> {
        match self {
            ipnet::IpNet::V4(n) => Ok(n),
            ipnet::IpNet::V6(n) => Err(n),
        }
    }
}

impl ByFamily for std::net::IpAddr {
    type Four = std::net::Ipv4Addr;
    type Six = std::net::Ipv6Addr;
    fn family(self) -> Result<Self::Four, Self::Six> {
        match self {
            std::net::IpAddr::V4(a) => Ok(a),
            std::net::IpAddr::V6(a) => Err(a),
        }
    }
}

/// A flag's value of each family, if given.
pub type PerFamily<T> = (Option<<T as ByFamily>::Four>, Option<<T as ByFamily>::Six>);

/// Splits a repeated flag's values by family: at most one of each.
pub fn one_per_family<T: ByFamily>(flag: &str, values: &[T]) -> Result<PerFamily<T>, AdminError> {
    let (mut v4, mut v6) = (None, None);
    for value in values {
        let twice = match value.family() {
            Ok(a) => v4.replace(a).is_some(),
            Err(a) => v6.replace(a).is_some(),
        };
        if twice {
            return Err(invalid(format!(
                "{flag} {value}: give at most one IPv4 and one IPv6 {flag}"
            )));
        }
    }
    Ok((v4, v6))
}

/// The decodable records under `prefix`, with their parsed keys and leases; what does not
/// decode is left out (the daemons skip it too).
pub async fn records_under<T: DeserializeOwned + Versioned>(
    store: &Store,
    prefix: &str,
) -> Result<Vec<(Key, T, i64)>, AdminError> {
    let (kvs, _) = store.list(prefix).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| {
            Some((
                store.layout.parse(&kv.key)?,
                records::decode(&kv.value).ok()?,
                kv.lease,
            ))
        })
        .collect())
}
