use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::{maps::names, NetworkInfo};

use super::{hash_map, ip_key, sync_hash, MapsError};

/// VNI -> network (virtual gateway address and MAC).
pub struct NetworkMap(HashMap<MapData, u32, NetworkInfo>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkEntry {
    pub vni: u32,
    /// Absent on an IPv6-only network (0 in the map: no ARP is answered there).
    pub gateway_ip: Option<Ipv4Addr>,
    pub gateway_mac: [u8; 6],
    /// The IPv6 gateway of a dual-stack network.
    pub gateway_ip6: Option<Ipv6Addr>,
}

impl NetworkMap {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        Ok(Self(hash_map(map, names::NETWORKS)?))
    }

    pub fn sync<'a>(
        &mut self,
        networks: impl IntoIterator<Item = &'a NetworkEntry>,
    ) -> Result<(usize, usize), MapsError> {
        let desired: BTreeMap<u32, NetworkInfo> = networks
            .into_iter()
            .map(|n| {
                let info = NetworkInfo {
                    gateway_ip: ip_key(n.gateway_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
                    gateway_mac: n.gateway_mac,
                    _pad: [0; 2],
                    gateway_ip6: n.gateway_ip6.map_or([0; 16], |ip| ip.octets()),
                };
                (n.vni, info)
            })
            .collect();
        sync_hash(&mut self.0, &desired, names::NETWORKS)
    }
}
