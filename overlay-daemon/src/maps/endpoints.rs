use std::{
    collections::HashMap as StdHashMap,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{HashMap, IterableMap as _, Map, MapData},
    Pod,
};
use overlay_common::{
    maps::{names, ENDPOINT_F_LOCAL},
    EndpointInfo, EndpointIp6Key, EndpointIpKey, EndpointMacKey,
};

use super::{absent_ok, hash_map, ip_key, map_err, MapsError};
use crate::vtep::{self, Vteps};

/// The MAC/IP table, kept as views with the same values: by (VNI, IP) for the ARP
/// responder and the gateway path, by (VNI, MAC) for switching and decapsulation, and by
/// (VNI, IPv6) for neighbour discovery, IPv6's gateway path and its source checks (endpoints
/// of networks with IPv6). An endpoint of an IPv6-only network has no (VNI, IP) entry: its
/// IPv6 entry names it, and its `ip` is 0 in every view.
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
    /// Behind a remote VTEP, at the address this node reaches it by.
    Remote { vtep: IpAddr },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub vni: u32,
    /// Absent on an IPv6-only network.
    pub ip: Option<Ipv4Addr>,
    pub mac: [u8; 6],
    pub location: Location,
    /// Its IPv6 address, on a network with IPv6.
    pub ip6: Option<Ipv6Addr>,
}

impl EndpointEntry {
    /// The address that names it: IPv4 when it has one (as its etcd key).
    pub fn key_ip(&self) -> IpAddr {
        overlay_api::endpoint::key_address(self.ip, self.ip6)
    }

    fn value(&self, local: &Vteps) -> EndpointInfo {
        let (vtep, ifindex, flags) = match self.location {
            Location::Local { ifindex } => (local.own(), ifindex, ENDPOINT_F_LOCAL),
            Location::Remote { vtep } => (vtep, 0, 0),
        };
        EndpointInfo {
            vtep: vtep::key(vtep),
            ifindex,
            mac: self.mac,
            flags,
            // 0: no IPv4 address (the datapath drops IPv4 from such an endpoint).
            ip: ip_key(self.ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
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
            .filter(|(_, v)| v.ip != 0)
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
        local_vtep: &Vteps,
    ) -> Result<(usize, usize), MapsError> {
        let mut by_ip = StdHashMap::new();
        let mut by_mac = StdHashMap::new();
        let mut by_ip6 = StdHashMap::new();
        let mut ip6_of = StdHashMap::new();
        for ep in endpoints {
            let value = ep.value(local_vtep);
            by_mac.insert(EndpointMacKey::new(ep.vni, ep.mac), value);
            if let Some(ip) = ep.ip {
                by_ip.insert(ip_entry_key(ep.vni, ip), value);
            }
            if let Some(ip6) = ep.ip6 {
                by_ip6.insert(ip6_entry_key(ep.vni, ip6), value);
            }
            if let Some((ip, ip6)) = ep.ip.zip(ep.ip6) {
                ip6_of.insert(ip_entry_key(ep.vni, ip), ip6_entry_key(ep.vni, ip6));
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

    /// Whether the endpoint named (VNI, `key_ip`) is installed (userspace copy).
    pub fn is_installed(&self, vni: u32, key_ip: IpAddr) -> bool {
        self.installed_by_key(vni, key_ip).is_some()
    }

    /// The installed entry of the endpoint named (VNI, `key_ip`) (its IPv4 address, or
    /// its IPv6 one on an IPv6-only network), with its installed IPv6 address.
    pub fn installed_by_key(
        &self,
        vni: u32,
        key_ip: IpAddr,
    ) -> Option<(EndpointInfo, Option<Ipv6Addr>)> {
        match key_ip {
            IpAddr::V4(ip) => {
                let key = ip_entry_key(vni, ip);
                let ip6 = self.ip6_of.get(&key).map(|k| Ipv6Addr::from(k.ip6));
                self.by_ip.get(&key).map(|v| (*v, ip6))
            }
            IpAddr::V6(ip6) => {
                let key = ip6_entry_key(vni, ip6);
                let v = self.by_ip6.get(&key).filter(|v| self.is_v6_only(&key, v))?;
                Some((*v, Some(ip6)))
            }
        }
    }

    /// Whether (VNI, `mac`) is installed for another endpoint than the one named `key_ip`.
    pub fn mac_held_by_other(&self, vni: u32, mac: [u8; 6], key_ip: IpAddr) -> bool {
        let Some(held) = self.by_mac.get(&EndpointMacKey::new(vni, mac)) else {
            return false;
        };
        match key_ip {
            IpAddr::V4(ip) => held.ip != ip_key(ip),
            // No IPv4 address to tell holders apart: it is ours if our IPv6 entry has it.
            IpAddr::V6(ip6) => {
                !(held.ip == 0
                    && self
                        .by_ip6
                        .get(&ip6_entry_key(vni, ip6))
                        .is_some_and(|own| own.mac == mac))
            }
        }
    }

    /// Whether (VNI, `ip6`) is installed for another endpoint than the one named `key_ip`.
    pub fn ip6_held_by_other(&self, vni: u32, ip6: Ipv6Addr, key_ip: IpAddr) -> bool {
        let Some(held) = self.by_ip6.get(&ip6_entry_key(vni, ip6)) else {
            return false;
        };
        match key_ip {
            IpAddr::V4(ip) => held.ip != ip_key(ip),
            IpAddr::V6(_) => held.ip != 0,
        }
    }

    /// Whether an IPv6 entry is an IPv6-only network's endpoint: no IPv4 address, and its
    /// MAC entry is the same (an entry a release without IPv6 left behind after a
    /// downgrade is not: that release syncs the MAC view only).
    fn is_v6_only(&self, key: &EndpointIp6Key, v: &EndpointInfo) -> bool {
        v.ip == 0 && self.by_mac.get(&EndpointMacKey::new(key.vni, v.mac)) == Some(v)
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
        let entry = |vni, ip, ip6, v: &EndpointInfo| EndpointEntry {
            vni,
            ip,
            ip6,
            mac: v.mac,
            location: if v.flags & ENDPOINT_F_LOCAL != 0 {
                Location::Local { ifindex: v.ifindex }
            } else {
                Location::Remote {
                    vtep: vtep::from_key(v.vtep),
                }
            },
        };
        let dual = self.by_ip.iter().map(|(k, v)| {
            let ip6 = self.ip6_of.get(k).map(|k6| Ipv6Addr::from(k6.ip6));
            entry(k.vni, Some(Ipv4Addr::from(k.ip.to_ne_bytes())), ip6, v)
        });
        let v6_only = self
            .by_ip6
            .iter()
            .filter(|(k, v)| self.is_v6_only(k, v))
            .map(|(k, v)| entry(k.vni, None, Some(Ipv6Addr::from(k.ip6)), v));
        let mut out: Vec<EndpointEntry> = dual.chain(v6_only).collect();
        out.sort_by_key(|e| (e.vni, e.key_ip()));
        out
    }

    /// Number of endpoints in the userspace copy (each has one MAC entry).
    pub fn len_installed(&self) -> usize {
        self.by_mac.len()
    }

    /// How many endpoints the tables can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Installs or replaces one endpoint (its old MAC entry goes if the MAC changed).
    /// Returns (written, removed).
    pub fn upsert(
        &mut self,
        ep: &EndpointEntry,
        local_vtep: &Vteps,
    ) -> Result<(usize, usize), MapsError> {
        let value = ep.value(local_vtep);
        let (Some(ip), ip6) = (ep.ip, ep.ip6) else {
            return match ep.ip6 {
                Some(ip6) => self.upsert6_only(ep, ip6, value),
                None => Ok((0, 0)),
            };
        };
        let ip_key = ip_entry_key(ep.vni, ip);
        let old = self.by_ip.get(&ip_key).copied();
        let ip6_key = ip6.map(|ip6| ip6_entry_key(ep.vni, ip6));
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

    /// Installs or replaces an endpoint of an IPv6-only network: its IPv6 and MAC entries.
    fn upsert6_only(
        &mut self,
        ep: &EndpointEntry,
        ip6: Ipv6Addr,
        value: EndpointInfo,
    ) -> Result<(usize, usize), MapsError> {
        let key = ip6_entry_key(ep.vni, ip6);
        let old = self.by_ip6.get(&key).copied();
        if old == Some(value) {
            return Ok((0, 0));
        }
        let mut removed = 0;
        if let Some(old) = old.filter(|o| o.mac != ep.mac) {
            // Unless another endpoint took the MAC over meanwhile.
            let old_mac = EndpointMacKey::new(ep.vni, old.mac);
            if self.by_mac.get(&old_mac) == Some(&old) {
                removed += self.remove_mac(old_mac)?;
            }
        }
        let mac_key = EndpointMacKey::new(ep.vni, ep.mac);
        if let Some(k) = self.kernel.as_mut() {
            k.by_ip6
                .insert(key, value, 0)
                .map_err(map_err(names::ENDPOINTS_BY_IP6))?;
            k.by_mac
                .insert(mac_key, value, 0)
                .map_err(map_err(names::ENDPOINTS_BY_MAC))?;
        }
        self.by_ip6.insert(key, value);
        self.by_mac.insert(mac_key, value);
        Ok((2, removed))
    }

    /// Removes the IPv6 entry of the endpoint (VNI, IPv4), if it has one.
    fn remove_ip6(&mut self, ip_key: &EndpointIpKey) -> Result<usize, MapsError> {
        let Some(key) = self.ip6_of.remove(ip_key) else {
            return Ok(0);
        };
        if let Some(k) = self.kernel.as_mut() {
            match absent_ok(k.by_ip6.remove(&key)) {
                Ok(()) => {}
                Err(e) => return Err(map_err(names::ENDPOINTS_BY_IP6)(e)),
            }
        }
        Ok(usize::from(self.by_ip6.remove(&key).is_some()))
    }

    /// Removes the endpoint named (VNI, `key_ip`) and its MAC entry. Returns the entries
    /// removed.
    pub fn remove(&mut self, vni: u32, key_ip: IpAddr) -> Result<usize, MapsError> {
        let ip = match key_ip {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip6) => return self.remove6_only(vni, ip6),
        };
        let ip_key = ip_entry_key(vni, ip);
        let Some(old) = self.by_ip.get(&ip_key).copied() else {
            return Ok(0);
        };
        if let Some(k) = self.kernel.as_mut() {
            match absent_ok(k.by_ip.remove(&ip_key)) {
                Ok(()) => {}
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

    /// Removes an endpoint of an IPv6-only network: its IPv6 entry, and its MAC entry unless
    /// another endpoint took the MAC over.
    fn remove6_only(&mut self, vni: u32, ip6: Ipv6Addr) -> Result<usize, MapsError> {
        let key = ip6_entry_key(vni, ip6);
        let Some(old) = self.by_ip6.get(&key).copied().filter(|v| v.ip == 0) else {
            return Ok(0);
        };
        if let Some(k) = self.kernel.as_mut() {
            match absent_ok(k.by_ip6.remove(&key)) {
                Ok(()) => {}
                Err(e) => return Err(map_err(names::ENDPOINTS_BY_IP6)(e)),
            }
        }
        self.by_ip6.remove(&key);
        let mac_key = EndpointMacKey::new(vni, old.mac);
        let mut removed = 1;
        if self.by_mac.get(&mac_key) == Some(&old) {
            removed += self.remove_mac(mac_key)?;
        }
        Ok(removed)
    }

    fn remove_mac(&mut self, key: EndpointMacKey) -> Result<usize, MapsError> {
        if let Some(k) = self.kernel.as_mut() {
            match absent_ok(k.by_mac.remove(&key)) {
                Ok(()) => {}
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
            match absent_ok(map.remove(key)) {
                Ok(()) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v6_only(ip6: &str, mac: u8, location: Location) -> EndpointEntry {
        EndpointEntry {
            vni: 300,
            ip: None,
            ip6: Some(ip6.parse().unwrap()),
            mac: [0x0e, 0x58, 0, 0, 0, mac],
            location,
        }
    }

    /// An IPv6-only network's endpoint lives in the IPv6 and MAC views only, with IP 0;
    /// upserts and removes by its IPv6 address keep both views right, and a full sync
    /// agrees with them.
    #[test]
    fn ipv6_only_endpoints_live_in_the_ipv6_and_mac_views() {
        let vtep = &Vteps::v4(Ipv4Addr::new(198, 18, 0, 1));
        let remote = Location::Remote {
            vtep: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
        };
        let a = v6_only("2001:2:0:1090::2", 2, Location::Local { ifindex: 7 });
        let b = v6_only("2001:2:0:1090::3", 3, remote);
        let mut m = EndpointMaps::in_memory();
        assert_eq!(m.upsert(&a, vtep).unwrap(), (2, 0));
        assert_eq!(m.upsert(&b, vtep).unwrap(), (2, 0));
        assert_eq!(m.upsert(&b, vtep).unwrap(), (0, 0), "unchanged");
        assert_eq!(m.len_installed(), 2);
        assert!(m.is_installed(300, a.key_ip()) && !m.is_installed(301, a.key_ip()));
        assert_eq!(m.entries(), vec![a, b]);
        assert!(m.snapshot().iter().all(|e| !e.starts_with("ip ")));
        // b's MAC changes: the old MAC entry goes.
        let b2 = EndpointEntry {
            mac: [0x0e, 0x58, 0, 0, 0, 9],
            ..b
        };
        assert_eq!(m.upsert(&b2, vtep).unwrap(), (2, 1));
        assert_eq!(m.len_installed(), 2);
        let mut full = EndpointMaps::in_memory();
        full.sync([&a, &b2], vtep).unwrap();
        assert_eq!(full.snapshot(), m.snapshot());
        assert_eq!(m.remove(300, a.key_ip()).unwrap(), 2);
        assert_eq!(m.remove(300, a.key_ip()).unwrap(), 0);
        assert_eq!(m.entries(), vec![b2]);
    }
}
