use std::collections::BTreeMap;

use aya::maps::{HashMap, Map, MapData};
use overlay_common::maps::names;

use super::{absent_ok, hash_map, map_err, sync_hash, LocalIdentity, MapsError};

/// Host-side veth ifindexes of containers with an ingress limit: the datapath delivers to
/// them through that interface's qdisc (`qdisc::shape`).
pub struct ShapedMap(HashMap<MapData, u32, u32>);

fn shaped(id: &LocalIdentity) -> bool {
    id.bandwidth.is_some_and(|b| b.ingress.is_some())
}

impl ShapedMap {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        Ok(Self(hash_map(map, names::SHAPED)?))
    }

    /// Makes the map hold the shaped interfaces of `identities` and nothing else. Returns
    /// (written, removed) and whether any is shaped.
    pub fn sync<'a>(
        &mut self,
        identities: impl IntoIterator<Item = &'a LocalIdentity>,
    ) -> Result<((usize, usize), bool), MapsError> {
        let desired: BTreeMap<u32, u32> = identities
            .into_iter()
            .filter(|id| shaped(id))
            .map(|id| (id.ifindex, 1))
            .collect();
        let any = !desired.is_empty();
        Ok((sync_hash(&mut self.0, &desired, names::SHAPED)?, any))
    }

    /// Adds (or, without an ingress limit, removes) one container's interface; whether it
    /// is shaped.
    pub fn set(&mut self, id: &LocalIdentity) -> Result<bool, MapsError> {
        if !shaped(id) {
            self.remove(id.ifindex)?;
            return Ok(false);
        }
        self.0
            .insert(id.ifindex, 1, 0)
            .map_err(map_err(names::SHAPED))?;
        Ok(true)
    }

    /// Removes a container's interface (absent is fine).
    pub fn remove(&mut self, ifindex: u32) -> Result<(), MapsError> {
        match absent_ok(self.0.remove(&ifindex)) {
            Ok(()) => Ok(()),
            Err(e) => Err(map_err(names::SHAPED)(e)),
        }
    }
}
