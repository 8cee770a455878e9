//! Named VIPs: `service add` without `--vip` takes the service's VIP from its network's
//! service range. Each allocated address is claimed in etcd in the service's own creation
//! transaction (`vips/<network>_<vip>`), so two operators, or a hundred scripts on two
//! hosts, never get the same one; a claim lost to another service moves on to the next free
//! address.

use std::{
    collections::BTreeSet,
    hash::{BuildHasher, Hasher},
    net::IpAddr,
};

use ipnet::IpNet;

use super::{
    invalid, records_under,
    service::{check_backends, check_capacity, check_vip, create, node_vteps},
    AdminError,
};
use crate::{
    store::{
        keys::Key,
        records::{NetworkRecord, ServiceRecord, RECORD_VERSION},
        Store,
    },
    tables::{BackendSpec, Proto},
};

/// Addresses tried before the range is called full: concurrent allocators start at random
/// places, so a lost claim is rare and this bounds a range that is truly full.
const MAX_TRIES: usize = 4096;

/// Which family an allocated VIP is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// What `service add` without `--vip` asks for.
pub struct AllocatedService {
    pub network: String,
    pub port: u16,
    pub proto: Proto,
    pub backends: Vec<BackendSpec>,
    /// None: IPv4 where the network has an IPv4 service range, else IPv6.
    pub family: Option<Family>,
}

/// Creates a service with a VIP from its network's service range; returns its record.
pub async fn add_allocated(
    store: &Store,
    name: &str,
    req: AllocatedService,
) -> Result<ServiceRecord, AdminError> {
    if !overlay_api::labels::valid_name(name) {
        return Err(invalid(format!(
            "service name {name:?}: use letters, digits, '.', '_' and '-'"
        )));
    }
    let net = super::network_record(store, &req.network).await?;
    let range = service_range(&req.network, &net, req.family)?;
    let mut record = ServiceRecord {
        version: RECORD_VERSION,
        network: req.network.clone(),
        vip: range.network(),
        port: req.port,
        proto: req.proto,
        backends: req.backends,
        allocated: true,
    };
    check_backends(&record.backends, record.vip, &record.network, &net)?;
    check_capacity(store, &record).await?;
    let vteps = node_vteps(store).await?;
    // Every VIP of the network's services: an explicit one may sit in the range too.
    let services: Vec<(Key, ServiceRecord, i64)> =
        records_under(store, &store.layout.services()).await?;
    let used: BTreeSet<IpAddr> = services
        .iter()
        .filter(|(_, s, _)| s.network == req.network)
        .map(|(_, s, _)| s.vip)
        .collect();
    let offset = random();
    for vip in candidates(range, offset)
        .filter(|ip| !used.contains(ip))
        .take(MAX_TRIES)
    {
        record.vip = vip;
        if check_vip(&record, &net, &vteps).is_err() {
            continue;
        }
        match create(store, name, &record).await {
            Ok(()) => return Ok(record),
            // Claimed by a service created since the list: the next one.
            Err(AdminError::VipTaken { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(invalid(format!(
        "service range {range} of network {:?} has no free VIP: widen it with `overlayctl network set {} --service-range`, or give --vip",
        req.network, req.network
    )))
}

/// The network's service range of the family asked for.
fn service_range(
    network: &str,
    net: &NetworkRecord,
    family: Option<Family>,
) -> Result<IpNet, AdminError> {
    let v4 = net.service_range.map(IpNet::V4);
    let v6 = net.service_range6.map(IpNet::V6);
    let (range, which) = match family {
        Some(Family::Ipv4) => (v4, "IPv4 "),
        Some(Family::Ipv6) => (v6, "IPv6 "),
        None => (v4.or(v6), ""),
    };
    range.ok_or_else(|| {
        invalid(format!(
            "network {network:?} has no {which}service range to take a VIP from: give --vip, or set one with `overlayctl network set {network} --service-range CIDR`"
        ))
    })
}

/// The range's usable addresses (an IPv4 range without its network and broadcast
/// addresses), from `offset` on, wrapping around: each allocator starts elsewhere.
fn candidates(range: IpNet, offset: u64) -> impl Iterator<Item = IpAddr> {
    let (base, size): (u128, u128) = match range {
        IpNet::V4(r) => (
            u128::from(u32::from(r.network())) + 1,
            (1u128 << (32 - r.prefix_len())).saturating_sub(2),
        ),
        IpNet::V6(r) => (
            u128::from(r.network()) + 1,
            (1u128 << (128 - u32::from(r.prefix_len())).min(127)) - 1,
        ),
    };
    let start = if size == 0 {
        0
    } else {
        u128::from(offset) % size
    };
    let v6 = matches!(range, IpNet::V6(_));
    (0..size).map(move |i| {
        let n = base + (start + i) % size;
        if v6 {
            IpAddr::V6(n.into())
        } else {
            IpAddr::V4((n as u32).into())
        }
    })
}

/// A random number from the standard library's per-process hash keys.
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_the_range_once_from_any_offset() {
        let range: IpNet = "198.19.240.0/29".parse().unwrap();
        for offset in [0, 3, 5, 1 << 40] {
            let got: BTreeSet<IpAddr> = candidates(range, offset).collect();
            let want: BTreeSet<IpAddr> = (1..=6)
                .map(|i| format!("198.19.240.{i}").parse().unwrap())
                .collect();
            assert_eq!(got, want, "offset {offset}");
        }
        let v6: IpNet = "2001:2:0:1200::/126".parse().unwrap();
        let got: Vec<IpAddr> = candidates(v6, 1).collect();
        assert_eq!(got.len(), 3);
        assert!(!got.contains(&"2001:2:0:1200::".parse::<IpAddr>().unwrap()));
        // A /64 is not enumerated up front.
        let big: IpNet = "2001:2:0:1200::/64".parse().unwrap();
        assert_eq!(candidates(big, u64::MAX).take(3).count(), 3);
    }

    #[test]
    fn the_range_of_the_family_asked_for_or_a_clear_error() {
        let net: NetworkRecord = crate::store::records::decode(
            br#"{"version":1,"vni":1,"subnet":"198.19.1.0/24","subnet6":"2001:2:0:1001::/64","service_range6":"2001:2:0:1200::/112"}"#,
        )
        .unwrap();
        assert_eq!(
            service_range("red", &net, None).unwrap().to_string(),
            "2001:2:0:1200::/112"
        );
        let e = service_range("red", &net, Some(Family::Ipv4)).unwrap_err();
        assert!(e.to_string().contains("no IPv4 service range"), "{e}");
    }
}
