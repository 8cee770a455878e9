//! What overlayctl does to the cluster, as a library: the checks before a change and the
//! change itself in etcd. The binary only parses flags and prints.

use std::{collections::BTreeSet, net::SocketAddr};

use overlay_api::labels::valid_name;
use serde::de::DeserializeOwned;

use crate::{
    store::{
        keys::Key,
        records::{self, NetworkRecord, NodeRecord, ServiceRecord, Versioned, RECORD_VERSION},
        Store, StoreError,
    },
    tables::BackendSpec,
};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request itself is wrong; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
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

/// Creates a network (its name and VNI reserved in one transaction).
pub async fn create_network(
    store: &Store,
    name: &str,
    record: &NetworkRecord,
) -> Result<(), AdminError> {
    record.check(name).map_err(AdminError::Invalid)?;
    if let Some(mtu) = record.mtu {
        check_mtu(store, mtu).await?;
    }
    if record.subnet.is_none() {
        check_ipv6_only(store, name).await?;
    }
    if !store
        .create_network(name, record.vni, records::encode(record))
        .await?
    {
        return Err(AdminError::Conflict(format!(
            "network {name:?} or VNI {} already exists: pick another name or VNI",
            record.vni
        )));
    }
    Ok(())
}

/// A network MTU no registered node can give its containers is refused: each node's record
/// says its maximum (underlay - 50).
async fn check_mtu(store: &Store, mtu: u32) -> Result<(), AdminError> {
    let nodes = records_under::<NodeRecord>(store, &store.layout.nodes()).await?;
    let smallest = nodes
        .iter()
        .filter_map(|(key, n, _)| match key {
            Key::Node(name) => Some((n.container_mtu?, name.clone())),
            _ => None,
        })
        .min();
    match smallest {
        Some((max, node)) if mtu > max => Err(invalid(format!(
            "MTU {mtu} is above the overlay's maximum {max} (node {node:?}: its underlay MTU - 50): pass --mtu {max} or less"
        ))),
        _ => Ok(()),
    }
}

/// An IPv6-only network is refused while a registered node runs a release before 0.3: such
/// a node would skip the network's record and its endpoints, and its containers could not
/// reach them.
async fn check_ipv6_only(store: &Store, name: &str) -> Result<(), AdminError> {
    let nodes = records_under::<NodeRecord>(store, &store.layout.nodes()).await?;
    let old = nodes.iter().find_map(|(key, n, _)| match key {
        Key::Node(node) if !crate::store::carries_ipv6(n) => Some((node.clone(), n)),
        _ => None,
    });
    match old {
        Some((node, n)) => Err(invalid(format!(
            "network {name:?} would be IPv6-only, which node {node:?} (release {}) cannot carry: upgrade it to 0.3 or later first, or add an IPv4 subnet",
            n.release.as_deref().unwrap_or("before 0.2")
        ))),
        None => Ok(()),
    }
}

/// Removes a network that has no endpoints.
pub async fn remove_network(store: &Store, name: &str) -> Result<(), AdminError> {
    let (eps, _) = store.list(&store.layout.endpoints(name)).await?;
    if !eps.is_empty() {
        return Err(AdminError::Conflict(format!(
            "network {name:?} still has {} endpoint(s): remove their containers first",
            eps.len()
        )));
    }
    if !store.delete_network(name).await? {
        return Err(AdminError::NotFound(format!(
            "network {name:?} does not exist"
        )));
    }
    Ok(())
}

pub async fn network_record(store: &Store, network: &str) -> Result<NetworkRecord, AdminError> {
    let key = store.layout.key(&Key::Network(network.to_owned()));
    match store.get(&key).await? {
        Some(kv) => {
            records::decode(&kv.value).map_err(|e| invalid(format!("network {network:?}: {e}")))
        }
        None => Err(AdminError::NotFound(format!(
            "network {network:?} does not exist: create it with `overlayctl network create`"
        ))),
    }
}

/// Backends given once each, of the VIP's family, inside the service's network.
pub fn check_backends(
    backends: &[BackendSpec],
    vip: std::net::IpAddr,
    network: &str,
    net: &NetworkRecord,
) -> Result<(), AdminError> {
    let mut seen = BTreeSet::new();
    for b in backends {
        if b.ip.is_ipv6() != vip.is_ipv6() {
            return Err(invalid(format!(
                "backend {} is not of VIP {vip}'s address family: give {} backends",
                b.ip,
                if vip.is_ipv6() { "IPv6" } else { "IPv4" }
            )));
        }
        if !seen.insert((b.ip, b.port)) {
            return Err(invalid(format!(
                "backend {} is given twice: list each backend once",
                SocketAddr::new(b.ip, b.port)
            )));
        }
        if b.port == 0 {
            return Err(invalid(format!(
                "backend {}: give the port the backend listens on, e.g. {}",
                SocketAddr::new(b.ip, 0),
                SocketAddr::new(b.ip, 8080)
            )));
        }
        match (b.ip, net.subnet6) {
            (std::net::IpAddr::V4(ip), _) if !net.subnet.is_some_and(|s| s.contains(&ip)) => {
                return Err(invalid(match net.subnet {
                    Some(s) => format!("backend {ip} is outside network {network:?}'s subnet {s}"),
                    None => format!("backend {ip} is IPv4 but network {network:?} is IPv6-only"),
                }));
            }
            (std::net::IpAddr::V6(_), None) => {
                return Err(invalid(format!(
                    "backend {} is IPv6 but network {network:?} has no IPv6 subnet",
                    b.ip
                )));
            }
            (std::net::IpAddr::V6(ip), Some(s)) if !s.contains(&ip) => {
                return Err(invalid(format!(
                    "backend {} is outside network {network:?}'s subnet {s}",
                    b.ip
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Creates a service (its name and VIP:port/proto reserved in one transaction).
pub async fn add_service(
    store: &Store,
    name: &str,
    record: &ServiceRecord,
) -> Result<(), AdminError> {
    if !valid_name(name) {
        return Err(invalid(format!(
            "service name {name:?}: use letters, digits, '.', '_' and '-'"
        )));
    }
    if record.port == 0 {
        return Err(invalid(format!(
            "--vip {}: give the service port, e.g. {}",
            SocketAddr::new(record.vip, 0),
            SocketAddr::new(record.vip, 80)
        )));
    }
    let net = network_record(store, &record.network).await?;
    check_backends(&record.backends, record.vip, &record.network, &net)?;
    if let Some(p) =
        crate::tables::vip_in_network(record.vip, &record.network, net.subnet, net.subnet6)
    {
        return Err(invalid(p));
    }
    if let Some(p) = crate::tables::vip_problem(record.vip) {
        return Err(invalid(p));
    }

    let nodes: Vec<(Key, NodeRecord, i64)> = records_under(store, &store.layout.nodes()).await?;
    if let Some((key, _, _)) = nodes
        .iter()
        .find(|(_, n, _)| std::net::IpAddr::V4(n.vtep_ip) == record.vip)
    {
        let node = match key {
            Key::Node(n) => n.as_str(),
            _ => "?",
        };
        return Err(invalid(format!(
            "VIP {} is node {node:?}'s VTEP address: pick an address no host has",
            record.vip
        )));
    }
    check_capacity(store, record).await?;
    if !store.create_service(name, record).await? {
        return Err(AdminError::Conflict(format!(
            "service {name:?} or {}/{} in network {:?} already exists: pick another name or VIP",
            SocketAddr::new(record.vip, record.port),
            record.proto,
            record.network
        )));
    }
    Ok(())
}

/// Refuses a service no node could install: the cluster has as many services as a node's
/// service table holds, or their Maglev tables (sized for their configured backends) would
/// not fit a node's shared table.
async fn check_capacity(store: &Store, record: &ServiceRecord) -> Result<(), AdminError> {
    use overlay_common::lb::{maglev_size_for, MAGLEV_SLOTS, MAX_SERVICES};
    let services: Vec<(Key, ServiceRecord, i64)> =
        records_under(store, &store.layout.services()).await?;
    if services.len() >= MAX_SERVICES as usize {
        return Err(invalid(format!(
            "the cluster has {} services, as many as a node can balance: remove one first",
            services.len()
        )));
    }
    let slots = |n: usize| u64::from(maglev_size_for(n.max(1)));
    let used: u64 = services
        .iter()
        .map(|(_, s, _)| slots(s.backends.len()))
        .sum();
    let wanted = slots(record.backends.len());
    if used + wanted > u64::from(MAGLEV_SLOTS) {
        return Err(invalid(format!(
            "no room for the service's {wanted}-slot Maglev table: the cluster's services use {used} of {MAGLEV_SLOTS} slots; remove services or backends"
        )));
    }
    Ok(())
}

pub async fn remove_service(store: &Store, name: &str) -> Result<(), AdminError> {
    if !store.delete_service(name).await? {
        return Err(AdminError::NotFound(format!(
            "service {name:?} does not exist"
        )));
    }
    Ok(())
}

/// Replaces a service's configured backends (compare-and-swap on the record).
pub async fn set_backends(
    store: &Store,
    name: &str,
    backends: Vec<BackendSpec>,
) -> Result<ServiceRecord, AdminError> {
    let key = store.layout.key(&Key::Service(name.to_owned()));
    let Some(kv) = store.get(&key).await? else {
        return Err(AdminError::NotFound(format!(
            "service {name:?} does not exist: create it with `overlayctl service add`"
        )));
    };
    let mut record: ServiceRecord =
        records::decode(&kv.value).map_err(|e| invalid(format!("service {name:?}: {e}")))?;
    let net = network_record(store, &record.network).await?;
    check_backends(&backends, record.vip, &record.network, &net)?;
    record.backends = backends;
    if !store
        .replace(&key, kv.value, records::encode(&record), None)
        .await?
    {
        return Err(AdminError::Conflict(format!(
            "service {name:?} changed while updating it: run the command again"
        )));
    }
    Ok(record)
}

/// A new service record.
pub fn service_record(
    network: String,
    vip: std::net::SocketAddr,
    proto: crate::tables::Proto,
    backends: Vec<BackendSpec>,
) -> ServiceRecord {
    ServiceRecord {
        version: RECORD_VERSION,
        network,
        vip: vip.ip(),
        port: vip.port(),
        proto,
        backends,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_checked_against_the_network() {
        let net: NetworkRecord = records::decode(
            br#"{"version":1,"vni":100,"subnet":"198.19.1.0/24","subnet6":"2001:2:0:1001::/64"}"#,
        )
        .unwrap();
        let v4: std::net::IpAddr = "198.19.200.1".parse().unwrap();
        let v6: std::net::IpAddr = "2001:2:0:1200::1".parse().unwrap();
        let b = |s: &str| s.parse::<BackendSpec>().unwrap();
        let check = |list: &[BackendSpec], vip| check_backends(list, vip, "red", &net);
        assert!(check(&[b("198.19.1.2:80"), b("198.19.1.2:81")], v4).is_ok());
        assert!(check(&[b("[2001:2:0:1001::2]:80")], v6).is_ok());
        let invalid = |r: Result<(), AdminError>, what: &str| {
            assert!(
                matches!(&r, Err(AdminError::Invalid(m)) if m.contains(what)),
                "{r:?}"
            );
        };
        invalid(
            check(&[b("198.19.1.2:80"), b("198.19.1.2:80@2")], v4),
            "twice",
        );
        invalid(check(&[b("198.19.2.2:80")], v4), "outside");
        invalid(check(&[b("[2001:2:0:1002::2]:80")], v6), "outside");
        invalid(check(&[b("[2001:2:0:1001::2]:80")], v4), "address family");
        invalid(check(&[b("198.19.1.2:80")], v6), "give IPv6 backends");
    }
}
