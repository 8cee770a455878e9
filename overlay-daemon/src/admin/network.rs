//! Creating and removing networks.

use super::{invalid, records_under, AdminError};
use crate::store::{
    keys::Key,
    records::{self, NetworkRecord, NodeRecord},
    NetworkRemoval, Store,
};

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
    if store
        .create_network(name, record.vni, records::encode(record))
        .await?
    {
        return Ok(());
    }
    // Which part is taken: the name, else the VNI (its key names its network).
    if store
        .get(&store.layout.key(&Key::Network(name.to_owned())))
        .await?
        .is_some()
    {
        return Err(AdminError::NetworkExists(name.to_owned()));
    }
    let owner = store
        .get(&store.layout.key(&Key::Vni(record.vni)))
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    match owner {
        Some(network) => Err(AdminError::VniTaken {
            vni: record.vni,
            network,
        }),
        // Both free again: removed in between.
        None => Err(AdminError::Changed(format!("network {name:?}"))),
    }
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
            "MTU {mtu} is above the overlay's maximum {max} (node {node:?}: its underlay MTU - 50, or - 70 with an IPv6 VTEP): pass --mtu {max} or less"
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

/// Removes a network that has no endpoints. The check and the removal are one etcd
/// transaction: an endpoint created by any node before it applies makes it fail, and once
/// it applied, no node can create an endpoint of the network.
/// Returns what the record was (None: it was not readable, and is removed all the same:
/// nothing else could remove it).
pub async fn remove_network(
    store: &Store,
    name: &str,
) -> Result<Option<NetworkRecord>, AdminError> {
    // A record changed between the read and the transaction is read again (a few times:
    // nothing rewrites a network record in a loop).
    let key = store.layout.key(&Key::Network(name.to_owned()));
    for _ in 0..3 {
        let record = match store.get(&key).await? {
            Some(kv) => records::decode::<NetworkRecord>(&kv.value).ok(),
            None => return Err(AdminError::NoSuchNetwork(name.to_owned())),
        };
        match store.delete_network(name).await? {
            NetworkRemoval::Removed => return Ok(record),
            NetworkRemoval::Absent => return Err(AdminError::NoSuchNetwork(name.to_owned())),
            NetworkRemoval::HasEndpoints(count) => {
                return Err(AdminError::HasEndpoints {
                    network: name.to_owned(),
                    count,
                })
            }
            NetworkRemoval::Changed => continue,
        }
    }
    Err(AdminError::Changed(format!("network {name:?}")))
}

pub async fn network_record(store: &Store, network: &str) -> Result<NetworkRecord, AdminError> {
    let key = store.layout.key(&Key::Network(network.to_owned()));
    match store.get(&key).await? {
        Some(kv) => {
            records::decode(&kv.value).map_err(|e| invalid(format!("network {network:?}: {e}")))
        }
        None => Err(AdminError::NoSuchNetwork(network.to_owned())),
    }
}

/// Sets a network's service ranges (one per family; a family not given keeps its range):
/// a compare-and-swap on the record, so a concurrent change is not overwritten.
pub async fn set_service_ranges(
    store: &Store,
    name: &str,
    ranges: &[ipnet::IpNet],
) -> Result<NetworkRecord, AdminError> {
    let (v4, v6) = super::one_per_family("--service-range", ranges)?;
    if v4.is_none() && v6.is_none() {
        return Err(invalid(
            "nothing to set: give --service-range CIDR (one per family)",
        ));
    }
    let key = store.layout.key(&Key::Network(name.to_owned()));
    let Some(kv) = store.get(&key).await? else {
        return Err(AdminError::NoSuchNetwork(name.to_owned()));
    };
    let mut record: NetworkRecord =
        records::decode(&kv.value).map_err(|e| invalid(format!("network {name:?}: {e}")))?;
    if let Some(r) = v4 {
        record.service_range = Some(r.trunc());
    }
    if let Some(r) = v6 {
        record.service_range6 = Some(r.trunc());
    }
    record.check(name).map_err(AdminError::Invalid)?;
    if !store
        .replace(&key, kv.value, records::encode(&record), None)
        .await?
    {
        return Err(AdminError::Changed(format!("network {name:?}")));
    }
    Ok(record)
}
