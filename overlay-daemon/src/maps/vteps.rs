use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{HashMap, Map, MapData, MapError};
use overlay_common::{maps::names, VtepInfo};

use super::{hash_map, ip_key, map_err, sync_hash, MapsError};

/// Remote VTEP address -> node. Only VXLAN from these addresses is accepted, and only these
/// are encapsulated to.
pub struct VtepMap(HashMap<MapData, u32, VtepInfo>);

impl VtepMap {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        Ok(Self(hash_map(map, names::VTEPS)?))
    }

    /// `vteps`: (address, stable node id).
    pub fn sync(
        &mut self,
        vteps: impl IntoIterator<Item = (Ipv4Addr, u32)>,
    ) -> Result<(usize, usize), MapsError> {
        let desired: BTreeMap<u32, VtepInfo> = vteps
            .into_iter()
            .map(|(ip, node_id)| (ip_key(ip), VtepInfo { node_id, flags: 0 }))
            .collect();
        sync_hash(&mut self.0, &desired, names::VTEPS)
    }

    /// Adds or replaces one VTEP.
    pub fn insert(&mut self, ip: Ipv4Addr, node_id: u32) -> Result<(), MapsError> {
        self.0
            .insert(ip_key(ip), VtepInfo { node_id, flags: 0 }, 0)
            .map_err(map_err(names::VTEPS))
    }

    /// Removes one VTEP (absent is fine).
    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<(), MapsError> {
        match self.0.remove(&ip_key(ip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::VTEPS)(e)),
        }
    }
}
