use std::{
    collections::HashMap as StdHashMap,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{HashMap, IterableMap as _, Map, MapData, MapError},
    Pod,
};
use overlay_common::{
    maps::{names, ENDPOINT_F_LOCAL},
    EndpointInfo, EndpointIp6Key, EndpointIpKey, EndpointMacKey,
};

use super::{hash_map, ip_key, map_err, MapsError};

/// The MAC/IP table, kept as views with the same values: by (VNI, IP) for the ARP
/// responder and the gateway path, by (VNI, MAC) for switching and decapsulation, and by
/// (VNI, IPv6) for neighbour discovery, IPv6's gateway path and its source checks (only
/// endpoints of dual-stack networks are in it).
///
/// A userspace copy of what was written is the reference for every change, so a change costs
/// syscalls only for the entries that differ, not a read of the whole table (100k endpoints
/// would be 400k syscalls per pass). Without kernel maps (control-plane-only mode) the copy
/// is all there is.
pub struct EndpointMaps {
    kernel: Option<KernelMaps>,
    /// Endpoints the tables can hold (the kernel maps' max_entries).
    capacity: usize,
    by_ip: StdHashMap<EndpointIpKey, EndpointInfo>,
    by_mac: StdHashMap<EndpointMacKey, EndpointInfo>,
    by_ip6: StdHashMap<EndpointIp6Key, EndpointInfo>,
    /// (VNI, IPv4) -> its IPv6 entry, so an endpoint's change finds the entry it replaces.
    ip6_of: StdHashMap<EndpointIpKey, EndpointIp6Key>,
}

struct KernelMaps {
    by_ip: HashMap<MapData, EndpointIpKey, EndpointInfo>,
    by_mac: HashMap<MapData, EndpointMacKey, EndpointInfo>,
    by_ip6: HashMap<MapData, EndpointIp6Key, EndpointInfo>,
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
    /// Its IPv6 address on a dual-stack network.
    pub ip6: Option<Ipv6Addr>,
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
    /// Takes over the kernel maps with what they hold (a restarted daemon finds the previous
    /// one's entries; the next full pass corrects them).
    pub(super) fn new(by_ip: Map, by_mac: Map, by_ip6: Map) -> Result<Self, MapsError> {
        let kernel = KernelMaps {
            by_ip: hash_map(by_ip, names::ENDPOINTS_BY_IP)?,
            by_mac: hash_map(by_mac, names::ENDPOINTS_BY_MAC)?,
            by_ip6: hash_map(by_ip6, names::ENDPOINTS_BY_IP6)?,
        };
        let by_ip = kernel
            .by_ip
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::ENDPOINTS_BY_IP))?;
        let by_mac = kernel
            .by_mac
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::ENDPOINTS_BY_MAC))?;
        let by_ip6: StdHashMap<EndpointIp6Key, EndpointInfo> = kernel
            .by_ip6
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::ENDPOINTS_BY_IP6))?;
        let ip6_of = by_ip6
            .iter()
            .map(|(k, v)| (ip_entry_key(k.vni, Ipv4Addr::from(v.ip.to_ne_bytes())), *k))
            .collect();
        let capacity = max_entries(kernel.by_ip.map(), names::ENDPOINTS_BY_IP)?
            .min(max_entries(kernel.by_mac.map(), names::ENDPOINTS_BY_MAC)?)
            .min(max_entries(kernel.by_ip6.map(), names::ENDPOINTS_BY_IP6)?);
        Ok(Self {
            kernel: Some(kernel),
            capacity,
            by_ip,
            by_mac,
            by_ip6,
            ip6_of,
        })
    }

    /// The table without a datapath behind it (control-plane-only mode).
    pub fn in_memory() -> Self {
        Self::in_memory_with_capacity(overlay_common::maps::MAX_ENDPOINTS as usize)
    }

    pub fn in_memory_with_capacity(capacity: usize) -> Self {
        Self {
            kernel: None,
            capacity,
            by_ip: StdHashMap::new(),
            by_mac: StdHashMap::new(),
            by_ip6: StdHashMap::new(),
            ip6_of: StdHashMap::new(),
        }
    }

    /// Makes both views equal to `endpoints`. Returns (written, removed) over both maps.
    pub fn sync<'a>(
        &mut self,
        endpoints: impl IntoIterator<Item = &'a EndpointEntry>,
        local_vtep: Ipv4Addr,
    ) -> Result<(usize, usize), MapsError> {
        let mut by_ip = StdHashMap::new();
        let mut by_mac = StdHashMap::new();
        let mut by_ip6 = StdHashMap::new();
        let mut ip6_of = StdHashMap::new();
        for ep in endpoints {
            let value = ep.value(local_vtep);
            by_ip.insert(ip_entry_key(ep.vni, ep.ip), value);
            by_mac.insert(EndpointMacKey::new(ep.vni, ep.mac), value);
            if let Some(ip6) = ep.ip6 {
                by_ip6.insert(ip6_entry_key(ep.vni, ip6), value);
                ip6_of.insert(ip_entry_key(ep.vni, ep.ip), ip6_entry_key(ep.vni, ip6));
            }
        }
        self.ip6_of = ip6_of;
        let kernel = self.kernel.as_mut();
        let (w1, r1) = sync_view(
            &mut self.by_ip,
            &by_ip,
            kernel.map(|k| &mut k.by_ip),
            names::ENDPOINTS_BY_IP,
        )?;
        let kernel = self.kernel.as_mut();
        let (w2, r2) = sync_view(
            &mut self.by_mac,
            &by_mac,
            kernel.map(|k| &mut k.by_mac),
            names::ENDPOINTS_BY_MAC,
        )?;
        let kernel = self.kernel.as_mut();
        let (w3, r3) = sync_view(
            &mut self.by_ip6,
            &by_ip6,
            kernel.map(|k| &mut k.by_ip6),
            names::ENDPOINTS_BY_IP6,
        )?;
        Ok((w1 + w2 + w3, r1 + r2 + r3))
    }

    /// The installed entry of (VNI, IP), from the userspace copy.
    pub fn installed(&self, vni: u32, ip: Ipv4Addr) -> Option<EndpointInfo> {
        self.by_ip.get(&ip_entry_key(vni, ip)).copied()
    }

    /// Both views, sorted (for comparing two tables in tests).
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_ip
            .iter()
            .map(|(k, v)| format!("ip {k:?} {v:?}"))
            .chain(self.by_mac.iter().map(|(k, v)| format!("mac {k:?} {v:?}")))
            .chain(self.by_ip6.iter().map(|(k, v)| format!("ip6 {k:?} {v:?}")))
            .collect();
        v.sort();
        v
    }

    /// Every endpoint by (VNI, IP): its MAC and where it lives (tools and tests compare
    /// the tables of nodes with it).
    pub fn entries(&self) -> Vec<EndpointEntry> {
        let mut out: Vec<EndpointEntry> = self
            .by_ip
            .iter()
            .map(|(k, v)| EndpointEntry {
                ip6: self.ip6_of.get(k).map(|k6| Ipv6Addr::from(k6.ip6)),
                vni: k.vni,
                ip: Ipv4Addr::from(k.ip.to_ne_bytes()),
                mac: v.mac,
                location: if v.flags & ENDPOINT_F_LOCAL != 0 {
                    Location::Local { ifindex: v.ifindex }
                } else {
                    Location::Remote {
                        vtep: Ipv4Addr::from(v.vtep_ip.to_ne_bytes()),
                    }
                },
            })
            .collect();
        out.sort_by_key(|e| (e.vni, e.ip));
        out
    }

    /// The IPv6 address installed for the endpoint (VNI, IP), from the userspace copy.
    pub fn installed_ip6(&self, vni: u32, ip: Ipv4Addr) -> Option<Ipv6Addr> {
        self.ip6_of
            .get(&ip_entry_key(vni, ip))
            .map(|k| Ipv6Addr::from(k.ip6))
    }

    /// The (IPv4 of the) endpoint that holds (VNI, IPv6) now, if any.
    pub fn ip_of_ip6(&self, vni: u32, ip6: Ipv6Addr) -> Option<Ipv4Addr> {
        self.by_ip6
            .get(&ip6_entry_key(vni, ip6))
            .map(|v| Ipv4Addr::from(v.ip.to_ne_bytes()))
    }

    /// Number of endpoints in the userspace copy.
    pub fn len_installed(&self) -> usize {
        self.by_ip.len()
    }

    /// How many endpoints the tables can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The IP that holds (VNI, MAC) now, if any.
    pub fn ip_of_mac(&self, vni: u32, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.by_mac
            .get(&EndpointMacKey::new(vni, mac))
            .map(|v| Ipv4Addr::from(v.ip.to_ne_bytes()))
    }

    /// Installs or replaces one endpoint (its old MAC entry goes if the MAC changed).
    /// Returns (written, removed).
    pub fn upsert(
        &mut self,
        ep: &EndpointEntry,
        local_vtep: Ipv4Addr,
    ) -> Result<(usize, usize), MapsError> {
        let value = ep.value(local_vtep);
        let ip_key = ip_entry_key(ep.vni, ep.ip);
        let old = self.by_ip.get(&ip_key).copied();
        let ip6_key = ep.ip6.map(|ip6| ip6_entry_key(ep.vni, ip6));
        if old == Some(value) && self.ip6_of.get(&ip_key) == ip6_key.as_ref() {
            return Ok((0, 0));
        }
        // A changed IPv6 address replaces the old entry; an unchanged one is overwritten in
        // place, never missing in between.
        let mut removed = 0;
        if self.ip6_of.get(&ip_key) != ip6_key.as_ref() {
            removed += self.remove_ip6(&ip_key)?;
        }
        let mut written = 2;
        if let Some(key) = ip6_key {
            if let Some(k) = self.kernel.as_mut() {
                k.by_ip6
                    .insert(key, value, 0)
                    .map_err(map_err(names::ENDPOINTS_BY_IP6))?;
            }
            self.by_ip6.insert(key, value);
            self.ip6_of.insert(ip_key, key);
            written += 1;
        }
        if let Some(old) = old.filter(|o| o.mac != ep.mac) {
            removed += self.remove_mac(EndpointMacKey::new(ep.vni, old.mac))?;
        }
        let mac_key = EndpointMacKey::new(ep.vni, ep.mac);
        if let Some(k) = self.kernel.as_mut() {
            k.by_ip
                .insert(ip_key, value, 0)
                .map_err(map_err(names::ENDPOINTS_BY_IP))?;
            k.by_mac
                .insert(mac_key, value, 0)
                .map_err(map_err(names::ENDPOINTS_BY_MAC))?;
        }
        self.by_ip.insert(ip_key, value);
        self.by_mac.insert(mac_key, value);
        Ok((written, removed))
    }

    /// Removes the IPv6 entry of the endpoint (VNI, IPv4), if it has one.
    fn remove_ip6(&mut self, ip_key: &EndpointIpKey) -> Result<usize, MapsError> {
        let Some(key) = self.ip6_of.remove(ip_key) else {
            return Ok(0);
        };
        if let Some(k) = self.kernel.as_mut() {
            match k.by_ip6.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::ENDPOINTS_BY_IP6)(e)),
            }
        }
        Ok(usize::from(self.by_ip6.remove(&key).is_some()))
    }

    /// Removes the endpoint (VNI, IP) and its MAC entry. Returns the entries removed.
    pub fn remove(&mut self, vni: u32, ip: Ipv4Addr) -> Result<usize, MapsError> {
        let ip_key = ip_entry_key(vni, ip);
        let Some(old) = self.by_ip.get(&ip_key).copied() else {
            return Ok(0);
        };
        if let Some(k) = self.kernel.as_mut() {
            match k.by_ip.remove(&ip_key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::ENDPOINTS_BY_IP)(e)),
            }
        }
        self.by_ip.remove(&ip_key);
        // The MAC entry belongs to this IP unless another endpoint took the MAC over.
        let mac_key = EndpointMacKey::new(vni, old.mac);
        let mut removed = 1 + self.remove_ip6(&ip_key)?;
        if self.by_mac.get(&mac_key).is_some_and(|v| v.ip == old.ip) {
            removed += self.remove_mac(mac_key)?;
        }
        Ok(removed)
    }

    fn remove_mac(&mut self, key: EndpointMacKey) -> Result<usize, MapsError> {
        if let Some(k) = self.kernel.as_mut() {
            match k.by_mac.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::ENDPOINTS_BY_MAC)(e)),
            }
        }
        Ok(usize::from(self.by_mac.remove(&key).is_some()))
    }

    /// Opens the tables of a running datapath from its pins (tools, tests, benchmarks).
    pub fn open_pinned(map_dir: &std::path::Path) -> Result<Self, MapsError> {
        let by_ip = Map::HashMap(super::open_pinned(map_dir, names::ENDPOINTS_BY_IP)?);
        let by_mac = Map::HashMap(super::open_pinned(map_dir, names::ENDPOINTS_BY_MAC)?);
        let by_ip6 = Map::HashMap(super::open_pinned(map_dir, names::ENDPOINTS_BY_IP6)?);
        Self::new(by_ip, by_mac, by_ip6)
    }

    /// Looks an endpoint up the way the ARP responder does: in the kernel map when there is
    /// one (tools read a map another process writes), else in the userspace copy.
    pub fn lookup_ip(&self, vni: u32, ip: Ipv4Addr) -> Option<EndpointInfo> {
        match &self.kernel {
            Some(k) => k.by_ip.get(&ip_entry_key(vni, ip), 0).ok(),
            None => self.installed(vni, ip),
        }
    }
}

fn max_entries(map: &MapData, name: &'static str) -> Result<usize, MapsError> {
    map.info()
        .map(|i| i.max_entries() as usize)
        .map_err(map_err(name))
}

fn ip6_entry_key(vni: u32, ip6: Ipv6Addr) -> EndpointIp6Key {
    EndpointIp6Key {
        vni,
        ip6: ip6.octets(),
    }
}

fn ip_entry_key(vni: u32, ip: Ipv4Addr) -> EndpointIpKey {
    EndpointIpKey {
        vni,
        ip: ip_key(ip),
    }
}

/// Makes one view equal to `desired`, writing the kernel map (if any) only where the
/// userspace copy differs. Returns (written, removed).
fn sync_view<K, V>(
    copy: &mut StdHashMap<K, V>,
    desired: &StdHashMap<K, V>,
    mut kernel: Option<&mut HashMap<MapData, K, V>>,
    name: &'static str,
) -> Result<(usize, usize), MapsError>
where
    K: Pod + Eq + Hash,
    V: Pod + PartialEq,
{
    let stale: Vec<K> = copy
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    for key in &stale {
        if let Some(map) = kernel.as_deref_mut() {
            match map.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        copy.remove(key);
    }
    let mut written = 0;
    for (key, value) in desired {
        if copy.get(key) != Some(value) {
            if let Some(map) = kernel.as_deref_mut() {
                map.insert(key, value, 0).map_err(map_err(name))?;
            }
            copy.insert(*key, *value);
            written += 1;
        }
    }
    Ok((written, stale.len()))
}
