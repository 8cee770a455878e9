//! The load balancer's maps: services (VIP:port -> Maglev slot), backends (id -> address),
//! the Maglev tables (one shared array, written through a memory mapping), and the flow
//! tables the datapath fills (connection tracking and reverse translation), which the
//! daemon only purges of flows that lost their service or backend.

use std::{
    collections::{BTreeMap, BTreeSet},
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::{HashMap, Map, MapData, MapError};
use overlay_common::{
    lb::{
        BackendInfo, CtEntry, FlowKey, MaglevSlot, RevNatEntry, ServiceInfo, ServiceKey,
        MAGLEV_TABLE_SIZE, MAX_SERVICES,
    },
    maps::names,
};

use super::{hash_map, ip_key, map_err, MapsError};
use crate::{
    maglev,
    tables::{Rejection, Subject},
};

/// A service as the datapath should hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The service's name (for reports only).
    pub name: String,
    pub vni: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    /// (address, port, weight), live backends only.
    pub backends: Vec<(Ipv4Addr, u16, u32)>,
}

impl ServiceEntry {
    fn key(&self) -> ServiceKey {
        ServiceKey {
            vni: self.vni,
            vip: ip_key(self.vip),
            port: self.port,
            proto: self.proto,
            _pad: 0,
        }
    }
}

/// What one sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbSync {
    pub written: usize,
    pub removed: usize,
    /// Maglev slots rewritten (a measure of disruption).
    pub slots_changed: usize,
    /// Services that could not be installed, with the reason.
    pub rejected: Vec<Rejection>,
}

pub struct LbMaps {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    backends: HashMap<MapData, u32, BackendInfo>,
    maglev: MaglevArray,
    ct: HashMap<MapData, FlowKey, CtEntry>,
    revnat: HashMap<MapData, FlowKey, RevNatEntry>,
    /// The backend list each slot's table was last built from, so unchanged services are
    /// not rebuilt on every reconciliation.
    built: BTreeMap<u32, Vec<(Ipv4Addr, u16, u32)>>,
}

impl LbMaps {
    pub(super) fn new(
        services: Map,
        backends: Map,
        maglev: Map,
        ct: Map,
        revnat: Map,
    ) -> Result<Self, MapsError> {
        Ok(Self {
            services: hash_map(services, names::LB_SERVICES)?,
            backends: hash_map(backends, names::LB_BACKENDS)?,
            maglev: MaglevArray::new(maglev)?,
            ct: hash_map(ct, names::LB_CT)?,
            revnat: hash_map(revnat, names::LB_REVNAT)?,
            built: BTreeMap::new(),
        })
    }

    /// Makes the services, backends and Maglev tables equal to `desired`. Backends are added
    /// before the tables that name them and removed after; a service keeps its slot (and
    /// so its table) for as long as it exists, including across daemon restarts.
    pub fn sync(&mut self, desired: &[ServiceEntry]) -> Result<LbSync, MapsError> {
        let mut out = LbSync::default();
        let current: BTreeMap<ServiceKey, ServiceInfo> =
            collect(&self.services, names::LB_SERVICES)?;
        let backends: BTreeMap<u32, BackendInfo> = collect(&self.backends, names::LB_BACKENDS)?;
        let mut ids: BTreeMap<(u32, u16), u32> = backends
            .iter()
            .map(|(id, b)| ((b.ip, b.port), *id))
            .collect();

        // Backend ids: kept while the address is a backend anywhere, new ones after the
        // highest in use (a recycled id is caught by the address check in the datapath).
        let wanted: BTreeSet<(u32, u16)> = desired
            .iter()
            .flat_map(|s| s.backends.iter().map(|(ip, port, _)| (ip_key(*ip), *port)))
            .collect();
        let mut next_id = backends.keys().max().copied().unwrap_or(0);
        for addr in &wanted {
            if ids.contains_key(addr) {
                continue;
            }
            next_id = next_id.checked_add(1).unwrap_or(1);
            while backends.contains_key(&next_id) {
                next_id += 1;
            }
            let info = BackendInfo {
                ip: addr.0,
                port: addr.1,
                _pad: 0,
            };
            self.backends
                .insert(next_id, info, 0)
                .map_err(map_err(names::LB_BACKENDS))?;
            ids.insert(*addr, next_id);
            out.written += 1;
        }

        let desired_keys: BTreeMap<ServiceKey, &ServiceEntry> =
            desired.iter().map(|s| (s.key(), s)).collect();
        // Services that went give up their slots first, so a new service taking a slot never
        // shares it with a stale entry that still points there.
        let mut gone_services = Vec::new();
        for (key, info) in &current {
            if !desired_keys.contains_key(key) {
                remove(&mut self.services, key, names::LB_SERVICES)?;
                self.built.remove(&info.slot);
                gone_services.push(*key);
                out.removed += 1;
            }
        }
        // (service, backend) pairs that ended: their flows are forgotten even when the
        // backend still serves another service.
        let mut gone_pairs: BTreeSet<(ServiceKey, (u32, u16))> = BTreeSet::new();
        let mut used: BTreeSet<u32> = current
            .iter()
            .filter(|(k, _)| desired_keys.contains_key(k))
            .map(|(_, v)| v.slot)
            .collect();
        for (key, svc) in &desired_keys {
            let slot = match current.get(key) {
                Some(info) => info.slot,
                None => match (0..MAX_SERVICES).find(|s| !used.contains(s)) {
                    Some(s) => {
                        used.insert(s);
                        s
                    }
                    None => {
                        out.rejected.push(Rejection::new(
                            Subject::Service(svc.name.clone()),
                            format!(
                                "{}:{}: this node balances at most {MAX_SERVICES} services",
                                svc.vip, svc.port
                            ),
                        ));
                        continue;
                    }
                },
            };
            let mut list = svc.backends.clone();
            list.sort();
            if !current.contains_key(key) || self.built.get(&slot) != Some(&list) {
                if current.contains_key(key) {
                    // What the table held (also after a restart, when `built` is empty).
                    let new: BTreeSet<(u32, u16)> = list
                        .iter()
                        .map(|(ip, port, _)| (ip_key(*ip), *port))
                        .collect();
                    let old: BTreeSet<(u32, u16)> = self
                        .maglev
                        .read(slot)
                        .iter()
                        .filter_map(|id| backends.get(id))
                        .map(|b| (b.ip, b.port))
                        .collect();
                    gone_pairs.extend(old.difference(&new).map(|addr| (*key, *addr)));
                }
                let names: Vec<String> = list
                    .iter()
                    .map(|(ip, port, _)| format!("{ip}:{port}"))
                    .collect();
                let weighted: Vec<maglev::Weighted<'_>> = names
                    .iter()
                    .zip(&list)
                    .map(|(n, (_, _, w))| maglev::Weighted {
                        name: n.as_bytes(),
                        weight: *w,
                    })
                    .collect();
                let table: Vec<u32> = maglev::build(&weighted, MAGLEV_TABLE_SIZE)
                    .into_iter()
                    .map(|i| {
                        let (ip, port, _) = list[i as usize];
                        ids[&(ip_key(ip), port)]
                    })
                    .collect();
                if !table.is_empty() {
                    out.slots_changed += self.maglev.write(slot, &table);
                }
                self.built.insert(slot, list.clone());
            }
            let info = ServiceInfo {
                slot,
                backends: list.len() as u32,
            };
            if current.get(key) != Some(&info) {
                self.services
                    .insert(key, info, 0)
                    .map_err(map_err(names::LB_SERVICES))?;
                out.written += 1;
            }
        }

        for (id, b) in &backends {
            if !wanted.contains(&(b.ip, b.port)) {
                remove(&mut self.backends, id, names::LB_BACKENDS)?;
                out.removed += 1;
            }
        }
        if !gone_services.is_empty() || !gone_pairs.is_empty() {
            self.purge_flows(&gone_services, &gone_pairs)?;
        }
        Ok(out)
    }

    /// Forgets the flows of removed services and of backends removed from a service, in
    /// both directions, so nothing stale is balanced or translated later.
    fn purge_flows(
        &mut self,
        services: &[ServiceKey],
        pairs: &BTreeSet<(ServiceKey, (u32, u16))>,
    ) -> Result<(), MapsError> {
        let stale = |vni: u32, vip: u32, port: u16, proto: u8, backend: (u32, u16)| {
            let svc = ServiceKey {
                vni,
                vip,
                port,
                proto,
                _pad: 0,
            };
            services.contains(&svc) || pairs.contains(&(svc, backend))
        };
        let ct: BTreeMap<_, _> = collect_flows(&self.ct, names::LB_CT)?;
        for (k, v) in ct {
            if stale(
                k.vni,
                k.dst_ip,
                k.dst_port,
                k.proto,
                (v.backend.ip, v.backend.port),
            ) {
                remove(&mut self.ct, &k, names::LB_CT)?;
            }
        }
        let rev: BTreeMap<_, _> = collect_flows(&self.revnat, names::LB_REVNAT)?;
        for (k, v) in rev {
            if stale(k.vni, v.vip, v.port, k.proto, (k.src_ip, k.src_port)) {
                remove(&mut self.revnat, &k, names::LB_REVNAT)?;
            }
        }
        Ok(())
    }

    /// Backend ids of one service's Maglev table as the datapath sees it (for tools/tests).
    pub fn table(
        &self,
        vni: u32,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
    ) -> Option<Vec<(Ipv4Addr, u16)>> {
        let key = ServiceKey {
            vni,
            vip: ip_key(vip),
            port,
            proto,
            _pad: 0,
        };
        let info = self.services.get(&key, 0).ok()?;
        let backends: BTreeMap<u32, BackendInfo> =
            collect(&self.backends, names::LB_BACKENDS).ok()?;
        Some(
            self.maglev
                .read(info.slot)
                .iter()
                .filter_map(|id| backends.get(id))
                .map(|b| (Ipv4Addr::from(b.ip.to_ne_bytes()), b.port))
                .collect(),
        )
    }
}

/// Open-by-pin access for tools and tests: one service's table as backend addresses.
pub fn pinned_table(
    dir: &std::path::Path,
    vni: u32,
    vip: Ipv4Addr,
    port: u16,
    proto: u8,
) -> Result<Option<Vec<(Ipv4Addr, u16)>>, MapsError> {
    let open = |name: &'static str| super::open_pinned(dir, name).map(Map::HashMap);
    let maglev = super::open_pinned(dir, names::LB_MAGLEV).map(Map::Array)?;
    let lb = LbMaps::new(
        open(names::LB_SERVICES)?,
        open(names::LB_BACKENDS)?,
        maglev,
        super::open_pinned(dir, names::LB_CT).map(Map::LruHashMap)?,
        super::open_pinned(dir, names::LB_REVNAT).map(Map::LruHashMap)?,
    )?;
    Ok(lb.table(vni, vip, port, proto))
}

impl LbMaps {
    /// How many flows the conntrack table holds on a running datapath (tools and tests).
    pub fn flow_count(dir: &std::path::Path) -> Result<usize, MapsError> {
        let map = super::open_pinned(dir, names::LB_CT).map(Map::LruHashMap)?;
        let ct: HashMap<MapData, FlowKey, CtEntry> =
            HashMap::try_from(map).map_err(map_err(names::LB_CT))?;
        Ok(ct.keys().filter(Result::is_ok).count())
    }
}

fn collect<K: aya::Pod + Ord, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<BTreeMap<K, V>, MapsError> {
    map.iter().collect::<Result<_, _>>().map_err(map_err(name))
}

/// Flow keys are not `Ord`; order them by their bytes.
fn collect_flows<V: aya::Pod>(
    map: &HashMap<MapData, FlowKey, V>,
    name: &'static str,
) -> Result<BTreeMap<FlowOrd, V>, MapsError> {
    map.iter()
        .map(|r| r.map(|(k, v)| (FlowOrd(k), v)))
        .collect::<Result<_, _>>()
        .map_err(map_err(name))
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FlowOrd(FlowKey);
impl std::ops::Deref for FlowOrd {
    type Target = FlowKey;
    fn deref(&self) -> &FlowKey {
        &self.0
    }
}
impl Ord for FlowOrd {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        let t = |k: &FlowKey| (k.vni, k.src_ip, k.dst_ip, k.src_port, k.dst_port, k.proto);
        t(&self.0).cmp(&t(&o.0))
    }
}
impl PartialOrd for FlowOrd {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), MapsError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// `LB_MAGLEV` mapped into the daemon (BPF_F_MMAPABLE): a table is a plain memory write
/// instead of 65537 syscalls. Slots change one aligned u32 at a time, so the datapath sees
/// every slot either old or new, both naming live backends.
struct MaglevArray {
    _map: MapData,
    base: NonNull<MaglevSlot>,
    entries: usize,
    bytes: usize,
}

// The mapping is owned by this value and only written through `&mut self`.
unsafe impl Send for MaglevArray {}
unsafe impl Sync for MaglevArray {}

impl MaglevArray {
    fn new(map: Map) -> Result<Self, MapsError> {
        let Map::Array(data) = map else {
            return Err(MapsError::Map {
                name: names::LB_MAGLEV,
                source: MapError::InvalidMapType { map_type: 0 },
            });
        };
        let entries = (MAX_SERVICES * MAGLEV_TABLE_SIZE) as usize;
        let page = 4096;
        let bytes = (entries * size_of::<MaglevSlot>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's own fd, as long as the map; unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MapsError::Mmap {
                name: names::LB_MAGLEV,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            _map: data,
            base: NonNull::new(ptr.cast()).expect("mmap succeeded"),
            entries,
            bytes,
        })
    }

    fn range(&self, slot: u32) -> std::ops::Range<usize> {
        let start = slot as usize * MAGLEV_TABLE_SIZE as usize;
        start..(start + MAGLEV_TABLE_SIZE as usize).min(self.entries)
    }

    /// Writes a service's table; returns how many slots changed.
    fn write(&mut self, slot: u32, table: &[u32]) -> usize {
        let mut changed = 0;
        for (i, &id) in self.range(slot).zip(table) {
            // SAFETY: `i` is inside the mapping (range() is clamped to `entries`).
            unsafe {
                let p = self.base.as_ptr().add(i);
                if p.read_volatile().backend_id != id {
                    p.write_volatile(MaglevSlot {
                        backend_id: id,
                        _pad: 0,
                    });
                    changed += 1;
                }
            }
        }
        changed
    }

    fn read(&self, slot: u32) -> Vec<u32> {
        // SAFETY: as in `write`.
        self.range(slot)
            .map(|i| unsafe { self.base.as_ptr().add(i).read_volatile().backend_id })
            .collect()
    }
}

impl Drop for MaglevArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}
