use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::{
    maps::{names, ENDPOINT_F_LOCAL},
    EndpointInfo, EndpointIpKey, EndpointMacKey,
};

use super::{hash_map, ip_key, sync_hash, MapsError};

/// The MAC/IP table, kept as two views with the same values: by (VNI, IP) for the ARP
/// responder and the gateway path, by (VNI, MAC) for switching and decapsulation.
pub struct EndpointMaps {
    by_ip: HashMap<MapData, EndpointIpKey, EndpointInfo>,
    by_mac: HashMap<MapData, EndpointMacKey, EndpointInfo>,
}

/// Where an endpoint lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// On this host, behind the host-side veth with this ifindex.
    Local { ifindex: u32 },
    /// Behind a remote VTEP.
    Remote { vtep: Ipv4Addr },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub location: Location,
}

impl EndpointEntry {
    fn value(&self, local_vtep: Ipv4Addr) -> EndpointInfo {
        let (vtep, ifindex, flags) = match self.location {
            Location::Local { ifindex } => (local_vtep, ifindex, ENDPOINT_F_LOCAL),
            Location::Remote { vtep } => (vtep, 0, 0),
        };
        EndpointInfo {
            vtep_ip: ip_key(vtep),
            ifindex,
            mac: self.mac,
            flags,
            ip: ip_key(self.ip),
        }
    }
}

impl EndpointMaps {
    pub(super) fn new(by_ip: Map, by_mac: Map) -> Result<Self, MapsError> {
        Ok(Self {
            by_ip: hash_map(by_ip, names::ENDPOINTS_BY_IP)?,
            by_mac: hash_map(by_mac, names::ENDPOINTS_BY_MAC)?,
        })
    }

    /// Makes both views equal to `endpoints`. Returns (written, removed) over both maps.
    pub fn sync<'a>(
        &mut self,
        endpoints: impl IntoIterator<Item = &'a EndpointEntry>,
        local_vtep: Ipv4Addr,
    ) -> Result<(usize, usize), MapsError> {
        let mut by_ip = BTreeMap::new();
        let mut by_mac = BTreeMap::new();
        for ep in endpoints {
            let value = ep.value(local_vtep);
            by_ip.insert(
                EndpointIpKey {
                    vni: ep.vni,
                    ip: ip_key(ep.ip),
                },
                value,
            );
            by_mac.insert(EndpointMacKey::new(ep.vni, ep.mac), value);
        }
        let (w1, r1) = sync_hash(&mut self.by_ip, &by_ip, names::ENDPOINTS_BY_IP)?;
        let (w2, r2) = sync_hash(&mut self.by_mac, &by_mac, names::ENDPOINTS_BY_MAC)?;
        Ok((w1 + w2, r1 + r2))
    }

    /// Opens the tables of a running datapath from its pins (tools, tests, benchmarks).
    pub fn open_pinned(map_dir: &std::path::Path) -> Result<Self, MapsError> {
        let by_ip = Map::HashMap(super::open_pinned(map_dir, names::ENDPOINTS_BY_IP)?);
        let by_mac = Map::HashMap(super::open_pinned(map_dir, names::ENDPOINTS_BY_MAC)?);
        Self::new(by_ip, by_mac)
    }

    /// Number of endpoints in the by-IP view.
    pub fn len(&self) -> usize {
        self.by_ip.keys().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Looks an endpoint up the way the ARP responder does.
    pub fn lookup_ip(&self, vni: u32, ip: Ipv4Addr) -> Option<EndpointInfo> {
        self.by_ip
            .get(
                &EndpointIpKey {
                    vni,
                    ip: ip_key(ip),
                },
                0,
            )
            .ok()
    }
}
