//! Creating, changing and removing services, with the checks the daemons would otherwise
//! reject them by.

use std::{collections::BTreeSet, net::SocketAddr};

use overlay_api::labels::valid_name;

use super::{invalid, records_under, AdminError};
use crate::{
    store::{
        keys::Key,
        records::{self, NetworkRecord, NodeRecord, ServiceRecord, RECORD_VERSION},
        Store,
    },
    tables::BackendSpec,
};

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
    let net = super::network_record(store, &record.network).await?;
    let vteps = node_vteps(store).await?;
    check_vip(record, &net, &vteps)?;
    check_backends(&record.backends, record.vip, &record.network, &net)?;
    check_capacity(store, record).await?;
    create(store, name, record).await
}

/// The registered nodes' VTEP addresses, by node name.
pub(super) async fn node_vteps(
    store: &Store,
) -> Result<Vec<(String, std::net::IpAddr)>, AdminError> {
    let nodes: Vec<(Key, NodeRecord, i64)> = records_under(store, &store.layout.nodes()).await?;
    Ok(nodes
        .into_iter()
        .flat_map(|(key, n, _)| match key {
            Key::Node(name) => n
                .vteps()
                .into_iter()
                .flat_map(|v| v.addrs())
                .map(|ip| (name.clone(), ip))
                .collect(),
            _ => Vec::new(),
        })
        .collect())
}

/// A VIP the daemons would refuse: inside the network's subnet, not a unicast address,
/// or a node's VTEP address.
pub(super) fn check_vip(
    record: &ServiceRecord,
    net: &NetworkRecord,
    vteps: &[(String, std::net::IpAddr)],
) -> Result<(), AdminError> {
    if let Some(p) =
        crate::tables::vip_in_network(record.vip, &record.network, net.subnet, net.subnet6)
    {
        return Err(invalid(p));
    }
    if let Some(p) = crate::tables::vip_problem(record.vip) {
        return Err(invalid(p));
    }
    if let Some((node, _)) = vteps.iter().find(|(_, vtep)| *vtep == record.vip) {
        return Err(invalid(format!(
            "VIP {} is node {node:?}'s VTEP address: pick an address no host has",
            record.vip
        )));
    }
    Ok(())
}

/// Creates the checked service: its name and VIP:port/proto (and an allocated VIP's
/// address) reserved in one transaction, while its network exists; a refusal says which.
pub(super) async fn create(
    store: &Store,
    name: &str,
    record: &ServiceRecord,
) -> Result<(), AdminError> {
    if store.create_service(name, record).await? {
        return Ok(());
    }
    // Which part is taken: the name, else the VIP:port/proto (its key names its service).
    if store
        .get(&store.layout.key(&Key::Service(name.to_owned())))
        .await?
        .is_some()
    {
        return Err(AdminError::ServiceExists(name.to_owned()));
    }
    // Then the VIP:port/proto, then an allocated VIP's address (each key names its service).
    let mut claims = vec![record.vip_id()];
    if record.allocated {
        claims.push(record.vip_address_id());
    }
    for (i, claim) in claims.iter().enumerate() {
        let owner = store
            .get(&store.layout.key(&Key::ServiceVip(claim.clone())))
            .await?;
        if let Some(owner) = owner {
            let vip = match i {
                0 => format!(
                    "{}/{}",
                    SocketAddr::new(record.vip, record.port),
                    record.proto
                ),
                _ => format!("VIP {}", record.vip),
            };
            return Err(AdminError::VipTaken {
                vip,
                network: record.network.clone(),
                service: String::from_utf8_lossy(&owner.value).into_owned(),
            });
        }
    }
    // Nothing taken: the network was removed after the checks above.
    super::network_record(store, &record.network).await?;
    Err(AdminError::Changed(format!("service {name:?}")))
}

/// Refuses a service no node could install: the cluster has as many services as a node's
/// service table holds, or their Maglev tables (sized for their configured backends) would
/// not fit a node's shared table.
pub(super) async fn check_capacity(
    store: &Store,
    record: &ServiceRecord,
) -> Result<(), AdminError> {
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

/// Removes a service; returns what it was.
/// Removes a service; returns what it was (None: its record was not readable, and is
/// removed all the same: nothing else could remove it).
pub async fn remove_service(
    store: &Store,
    name: &str,
) -> Result<Option<ServiceRecord>, AdminError> {
    let key = store.layout.key(&Key::Service(name.to_owned()));
    let record = match store.get(&key).await? {
        Some(kv) => records::decode::<ServiceRecord>(&kv.value).ok(),
        None => None,
    };
    match store.delete_service(name).await? {
        true => Ok(record),
        false => Err(AdminError::NoSuchService(name.to_owned())),
    }
}

/// Replaces a service's configured backends (compare-and-swap on the record).
pub async fn set_backends(
    store: &Store,
    name: &str,
    backends: Vec<BackendSpec>,
) -> Result<ServiceRecord, AdminError> {
    let key = store.layout.key(&Key::Service(name.to_owned()));
    let Some(kv) = store.get(&key).await? else {
        return Err(AdminError::NoSuchService(name.to_owned()));
    };
    let mut record: ServiceRecord =
        records::decode(&kv.value).map_err(|e| invalid(format!("service {name:?}: {e}")))?;
    let net = super::network_record(store, &record.network).await?;
    check_backends(&backends, record.vip, &record.network, &net)?;
    record.backends = backends;
    if !store
        .replace(&key, kv.value, records::encode(&record), None)
        .await?
    {
        return Err(AdminError::Changed(format!("service {name:?}")));
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
        allocated: false,
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
