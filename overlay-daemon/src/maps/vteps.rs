use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::{maps::names, VtepInfo};

use super::{absent_ok, hash_map, ip_key, map_err, open_pinned, sync_hash, MapsError};

/// Remote VTEP address -> node. Only VXLAN from these addresses is accepted, and only these
/// are encapsulated to.
pub struct VtepMap(HashMap<MapData, u32, VtepInfo>);

impl VtepMap {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        Ok(Self(hash_map(map, names::VTEPS)?))
    }

    /// Opens the VTEP table of a running datapath from its pins (to inspect it).
    pub fn open_pinned(map_dir: &Path) -> Result<Self, MapsError> {
        Self::new(Map::HashMap(open_pinned(map_dir, names::VTEPS)?))
    }

    /// `vteps`: (address, stable node id, underlay next hop if pinned).
    pub fn sync(
        &mut self,
        vteps: impl IntoIterator<Item = (Ipv4Addr, u32, Option<Ipv4Addr>)>,
    ) -> Result<(usize, usize), MapsError> {
        let desired: BTreeMap<u32, VtepInfo> = vteps
            .into_iter()
            .map(|(ip, node_id, nexthop)| (ip_key(ip), info(node_id, nexthop)))
            .collect();
        sync_hash(&mut self.0, &desired, names::VTEPS)
    }

    /// Adds or replaces one VTEP.
    pub fn insert(
        &mut self,
        ip: Ipv4Addr,
        node_id: u32,
        nexthop: Option<Ipv4Addr>,
    ) -> Result<(), MapsError> {
        self.0
            .insert(ip_key(ip), info(node_id, nexthop), 0)
            .map_err(map_err(names::VTEPS))
    }

    /// Every installed VTEP: (address, node id, next hop).
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, u32, Option<Ipv4Addr>)>, MapsError> {
        let key_ip = |k: u32| Ipv4Addr::from(overlay_common::wire::ipv4_octets(k));
        self.0
            .iter()
            .map(|r| {
                r.map(|(k, v)| {
                    let nexthop = (v.nexthop != 0).then(|| key_ip(v.nexthop));
                    (key_ip(k), v.node_id, nexthop)
                })
            })
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VTEPS))
    }

    /// Removes one VTEP (absent is fine).
    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<(), MapsError> {
        match absent_ok(self.0.remove(&ip_key(ip))) {
            Ok(()) => Ok(()),
            Err(e) => Err(map_err(names::VTEPS)(e)),
        }
    }
}

fn info(node_id: u32, nexthop: Option<Ipv4Addr>) -> VtepInfo {
    VtepInfo {
        node_id,
        nexthop: nexthop.map_or(0, ip_key),
    }
}
