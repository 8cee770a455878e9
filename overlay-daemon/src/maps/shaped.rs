use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::maps::names;

use super::{absent_ok, hash_map, map_err, sync_hash, LocalIdentity, MapsError};

/// Host-side veth ifindexes of containers with an ingress limit: the datapath delivers to
/// them through that interface's qdisc (`qdisc::shape`). The keys are mirrored here, so
/// that an endpoint without limits (nearly all) costs the reconciler no syscall.
pub struct ShapedMap {
    map: HashMap<MapData, u32, u32>,
    keys: BTreeSet<u32>,
}

fn shaped(id: &LocalIdentity) -> bool {
    id.bandwidth.is_some_and(|b| b.ingress.is_some())
}

impl ShapedMap {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        let map: HashMap<MapData, u32, u32> = hash_map(map, names::SHAPED)?;
        // A pinned map a previous daemon filled.
        let keys = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::SHAPED))?;
        Ok(Self { map, keys })
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
        let tally = sync_hash(&mut self.map, &desired, names::SHAPED)?;
        self.keys = desired.into_keys().collect();
        Ok((tally, !self.keys.is_empty()))
    }

    /// Adds (or, without an ingress limit, removes) one container's interface; whether it
    /// is shaped.
    pub fn set(&mut self, id: &LocalIdentity) -> Result<bool, MapsError> {
        if !shaped(id) {
            self.remove(id.ifindex)?;
            return Ok(false);
        }
        if self.keys.insert(id.ifindex) {
            self.map
                .insert(id.ifindex, 1, 0)
                .map_err(map_err(names::SHAPED))?;
        }
        Ok(true)
    }

    /// Removes a container's interface (absent is fine).
    pub fn remove(&mut self, ifindex: u32) -> Result<(), MapsError> {
        if !self.keys.remove(&ifindex) {
            return Ok(());
        }
        absent_ok(self.map.remove(&ifindex)).map_err(map_err(names::SHAPED))
    }
}
