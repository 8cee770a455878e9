//! The two address families of the load balancer's maps: IPv4 services and backends in
//! `LB_SERVICES`/`LB_BACKENDS`, IPv6 ones in `LB6_SERVICES`/`LB6_BACKENDS` (each balanced
//! per packet and by the socket hooks). Both share `LB_MAGLEV` and
//! one backend id space, so a table slot's id names one backend whatever its family.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::{
    lb::{Backend6Info, BackendInfo, Service6Key, ServiceInfo, ServiceKey},
    maps::names,
};

use super::{absent_ok, hash_map, ip_key, map_err, MapsError};

/// A backend address and port.
pub type Addr = (IpAddr, u16);

/// The datapath's key form of an IPv6 address (`user_ip6`: network-order words in memory
/// order).
pub(crate) fn ip6_key(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

pub(crate) fn key_ip6(key: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in key.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

pub(crate) fn key_ip(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(key.to_ne_bytes())
}

/// A service's key in the map of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SvcKey {
    V4(ServiceKey),
    V6(Service6Key),
}

impl SvcKey {
    pub fn new(vni: u32, vip: IpAddr, port: u16, proto: u8) -> Self {
        match vip {
            IpAddr::V4(ip) => SvcKey::V4(ServiceKey {
                vni,
                vip: ip_key(ip),
                port,
                proto,
                _pad: 0,
            }),
            IpAddr::V6(ip) => SvcKey::V6(Service6Key {
                vni,
                vip: ip6_key(ip),
                port,
                proto,
                _pad: 0,
            }),
        }
    }

    pub fn vip(&self) -> IpAddr {
        match self {
            SvcKey::V4(k) => key_ip(k.vip).into(),
            SvcKey::V6(k) => key_ip6(k.vip).into(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            SvcKey::V4(k) => k.port,
            SvcKey::V6(k) => k.port,
        }
    }

    pub fn proto(&self) -> u8 {
        match self {
            SvcKey::V4(k) => k.proto,
            SvcKey::V6(k) => k.proto,
        }
    }
}

/// The services and backends maps of both families.
pub struct FamilyMaps {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    services6: HashMap<MapData, Service6Key, ServiceInfo>,
    backends: HashMap<MapData, u32, BackendInfo>,
    backends6: HashMap<MapData, u32, Backend6Info>,
}

impl FamilyMaps {
    pub fn new(
        services: Map,
        services6: Map,
        backends: Map,
        backends6: Map,
    ) -> Result<Self, MapsError> {
        Ok(Self {
            services: hash_map(services, names::LB_SERVICES)?,
            services6: hash_map(services6, names::LB6_SERVICES)?,
            backends: hash_map(backends, names::LB_BACKENDS)?,
            backends6: hash_map(backends6, names::LB6_BACKENDS)?,
        })
    }

    pub fn services(&self) -> Result<BTreeMap<SvcKey, ServiceInfo>, MapsError> {
        let mut out = BTreeMap::new();
        for r in self.services.iter() {
            let (k, v) = r.map_err(map_err(names::LB_SERVICES))?;
            out.insert(SvcKey::V4(k), v);
        }
        for r in self.services6.iter() {
            let (k, v) = r.map_err(map_err(names::LB6_SERVICES))?;
            out.insert(SvcKey::V6(k), v);
        }
        Ok(out)
    }

    pub fn service(&self, key: &SvcKey) -> Option<ServiceInfo> {
        match key {
            SvcKey::V4(k) => self.services.get(k, 0).ok(),
            SvcKey::V6(k) => self.services6.get(k, 0).ok(),
        }
    }

    pub fn set_service(&mut self, key: &SvcKey, info: ServiceInfo) -> Result<(), MapsError> {
        match key {
            SvcKey::V4(k) => self
                .services
                .insert(k, info, 0)
                .map_err(map_err(names::LB_SERVICES)),
            SvcKey::V6(k) => self
                .services6
                .insert(k, info, 0)
                .map_err(map_err(names::LB6_SERVICES)),
        }
    }

    pub fn remove_service(&mut self, key: &SvcKey) -> Result<(), MapsError> {
        match key {
            SvcKey::V4(k) => remove(&mut self.services, k, names::LB_SERVICES),
            SvcKey::V6(k) => remove(&mut self.services6, k, names::LB6_SERVICES),
        }
    }

    /// Every backend by id. Ids are unique across both maps, except after a release that
    /// knew only `LB_BACKENDS` ran on these pins (a downgrade and upgrade): an IPv6 entry
    /// whose id an IPv4 one took is removed here, and the sync gives it a new id.
    pub fn backends(&mut self) -> Result<BTreeMap<u32, Addr>, MapsError> {
        let (out, taken) = self.read_backends()?;
        for id in taken {
            remove(&mut self.backends6, &id, names::LB6_BACKENDS)?;
        }
        Ok(out)
    }

    /// Every backend by id, and the ids of IPv6 entries an IPv4 one also holds (left out).
    pub fn read_backends(&self) -> Result<(BTreeMap<u32, Addr>, Vec<u32>), MapsError> {
        let mut out = BTreeMap::new();
        for r in self.backends.iter() {
            let (id, b) = r.map_err(map_err(names::LB_BACKENDS))?;
            out.insert(id, (key_ip(b.ip).into(), b.port));
        }
        let mut taken = Vec::new();
        for r in self.backends6.iter() {
            let (id, b) = r.map_err(map_err(names::LB6_BACKENDS))?;
            match out.entry(id) {
                std::collections::btree_map::Entry::Occupied(_) => taken.push(id),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((key_ip6(b.ip).into(), b.port));
                }
            }
        }
        Ok((out, taken))
    }

    pub fn set_backend(&mut self, id: u32, (ip, port): Addr) -> Result<(), MapsError> {
        match ip {
            IpAddr::V4(ip) => {
                let info = BackendInfo {
                    ip: ip_key(ip),
                    port,
                    _pad: 0,
                };
                self.backends
                    .insert(id, info, 0)
                    .map_err(map_err(names::LB_BACKENDS))
            }
            IpAddr::V6(ip) => {
                let info = Backend6Info {
                    ip: ip6_key(ip),
                    port,
                    _pad: 0,
                };
                self.backends6
                    .insert(id, info, 0)
                    .map_err(map_err(names::LB6_BACKENDS))
            }
        }
    }

    pub fn remove_backend(&mut self, id: u32, ip: IpAddr) -> Result<(), MapsError> {
        match ip {
            IpAddr::V4(_) => remove(&mut self.backends, &id, names::LB_BACKENDS),
            IpAddr::V6(_) => remove(&mut self.backends6, &id, names::LB6_BACKENDS),
        }
    }
}

pub(crate) fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), MapsError> {
    match absent_ok(map.remove(key)) {
        Ok(()) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_keys_are_the_address_bytes_in_order() {
        let ip: Ipv6Addr = "2001:2:0:1001::5".parse().unwrap();
        let key = ip6_key(ip);
        let bytes: Vec<u8> = key.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, ip.octets());
        assert_eq!(key_ip6(key), ip);
    }
}
