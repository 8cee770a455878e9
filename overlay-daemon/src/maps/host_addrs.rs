use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::maps::names;

use super::{hash_map, sync_hash, MapsError};

/// The host's own addresses a container may send to (handed to the host's stack): IPv4 ones
/// mapped into IPv6.
pub struct HostAddrMap(HashMap<MapData, [u8; 16], u8>);

impl HostAddrMap {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        Ok(Self(hash_map(map, names::HOST_ADDRS)?))
    }

    /// Makes the map hold exactly `addrs`. Returns (written, removed).
    pub fn sync(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<(usize, usize), MapsError> {
        let desired: BTreeMap<[u8; 16], u8> = addrs.iter().map(|ip| (key(*ip), 1)).collect();
        sync_hash(&mut self.0, &desired, names::HOST_ADDRS)
    }
}

fn key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_are_mapped_as_the_datapath_builds_them() {
        let k = key("198.18.0.1".parse().unwrap());
        assert_eq!(&k[..10], &[0; 10]);
        assert_eq!(&k[10..12], &[0xff, 0xff]);
        assert_eq!(&k[12..], &[198, 18, 0, 1]);
    }
}
