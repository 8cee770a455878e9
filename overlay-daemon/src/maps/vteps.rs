use std::{collections::BTreeMap, net::IpAddr, path::Path};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::{
    maps::{names, VtepKey},
    VtepInfo,
};

use super::{absent_ok, hash_map, map_err, open_pinned, sync_hash, MapsError};
use crate::vtep::{from_key, key};

/// Remote VTEP address (either family) -> node. Only VXLAN from these addresses is
/// accepted, and only these are encapsulated to, in the address's family.
pub struct VtepMap(HashMap<MapData, VtepKey, VtepInfo>);

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
        vteps: impl IntoIterator<Item = (IpAddr, u32, Option<IpAddr>)>,
    ) -> Result<(usize, usize), MapsError> {
        let desired: BTreeMap<VtepKey, VtepInfo> = vteps
            .into_iter()
            .map(|(ip, node_id, nexthop)| (key(ip), info(node_id, nexthop)))
            .collect();
        sync_hash(&mut self.0, &desired, names::VTEPS)
    }

    /// Adds or replaces one VTEP.
    pub fn insert(
        &mut self,
        ip: IpAddr,
        node_id: u32,
        nexthop: Option<IpAddr>,
    ) -> Result<(), MapsError> {
        self.0
            .insert(key(ip), info(node_id, nexthop), 0)
            .map_err(map_err(names::VTEPS))
    }

    /// Every installed VTEP: (address, node id, next hop).
    pub fn entries(&self) -> Result<Vec<(IpAddr, u32, Option<IpAddr>)>, MapsError> {
        self.0
            .iter()
            .map(|r| {
                r.map(|(k, v)| {
                    let nexthop = (v.nexthop != [0; 16]).then(|| from_key(v.nexthop));
                    (from_key(k), v.node_id, nexthop)
                })
            })
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VTEPS))
    }

    /// Removes one VTEP (absent is fine).
    pub fn remove(&mut self, ip: IpAddr) -> Result<(), MapsError> {
        match absent_ok(self.0.remove(&key(ip))) {
            Ok(()) => Ok(()),
            Err(e) => Err(map_err(names::VTEPS)(e)),
        }
    }
}

fn info(node_id: u32, nexthop: Option<IpAddr>) -> VtepInfo {
    VtepInfo {
        node_id,
        nexthop: nexthop.map_or([0; 16], key),
    }
}
