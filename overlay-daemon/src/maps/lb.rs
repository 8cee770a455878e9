//! The load balancer's maps: services (VIP:port -> its Maglev table), backends (id ->
//! address), the Maglev tables (`maglev_space`), and the flow tables the datapath fills
//! (connection tracking, reverse translation, the backends unconnected UDP sockets were
//! given), which the daemon only purges of flows that lost their service or backend.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    ops::Range,
};

use aya::maps::{HashMap, Map, MapData, MapError};
use overlay_common::{
    lb::{
        maglev_size_fits, maglev_size_for, BackendInfo, CtEntry, FlowKey, RevNatEntry, ServiceInfo,
        ServiceKey, SockAddr, SockKey,
    },
    maps::names,
};

use super::{
    hash_map, ip_key,
    maglev_space::{MaglevArray, Space},
    map_err, MapsError,
};
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
    /// (VIP, port, protocol, backend) pairs that ended: sockets balanced to them are
    /// closed (`sock_lb::terminate`).
    pub ended: Vec<EndedBackend>,
}

/// A backend that stopped serving a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndedBackend {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub backend: (Ipv4Addr, u16),
}

pub struct LbMaps {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    backends: HashMap<MapData, u32, BackendInfo>,
    /// Backend address -> id, for the datapath to know a direct flow to a backend.
    backend_addrs: HashMap<MapData, BackendInfo, u32>,
    maglev: MaglevArray,
    ct: HashMap<MapData, FlowKey, CtEntry>,
    revnat: HashMap<MapData, FlowKey, RevNatEntry>,
    sock_fwd: HashMap<MapData, SockKey, SockAddr>,
    /// The backend list each service's table was last built from, so unchanged services
    /// are not rebuilt on every reconciliation.
    built: BTreeMap<ServiceKey, Vec<(Ipv4Addr, u16, u32)>>,
}

fn range(info: &ServiceInfo) -> Range<u32> {
    info.table_offset..info.table_offset.saturating_add(info.table_size)
}

impl LbMaps {
    pub(super) fn new(
        services: Map,
        backends: Map,
        backend_addrs: Map,
        maglev: Map,
        ct: Map,
        revnat: Map,
        sock_fwd: Map,
    ) -> Result<Self, MapsError> {
        Ok(Self {
            services: hash_map(services, names::LB_SERVICES)?,
            backends: hash_map(backends, names::LB_BACKENDS)?,
            backend_addrs: hash_map(backend_addrs, names::LB_BACKEND_ADDRS)?,
            maglev: MaglevArray::new(maglev)?,
            ct: hash_map(ct, names::LB_CT)?,
            revnat: hash_map(revnat, names::LB_REVNAT)?,
            sock_fwd: hash_map(sock_fwd, names::SOCK_FWD)?,
            built: BTreeMap::new(),
        })
    }

    /// Makes the services, backends and Maglev tables equal to `desired`. Backends are added
    /// before the tables that name them and removed after; a table is written before the
    /// service entry that points at it, and a service keeps its table (and so its flows'
    /// backends) for as long as it exists, across daemon restarts too.
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

        // Addresses before the services that lead to them, so a direct flow to a new
        // backend is known as one from its first packet.
        let addrs: BTreeMap<BackendInfo, u32> = ids
            .iter()
            .filter(|(addr, _)| wanted.contains(addr))
            .map(|((ip, port), id)| {
                let b = BackendInfo {
                    ip: *ip,
                    port: *port,
                    _pad: 0,
                };
                (b, *id)
            })
            .collect();
        let (written, removed) =
            super::sync_hash(&mut self.backend_addrs, &addrs, names::LB_BACKEND_ADDRS)?;
        out.written += written;
        out.removed += removed;
        let desired_keys: BTreeMap<ServiceKey, &ServiceEntry> =
            desired.iter().map(|s| (s.key(), s)).collect();
        // Services that went give up their tables first, so a new service taking the space
        // never shares it with a stale entry that still points there.
        let mut gone_services = Vec::new();
        for key in current.keys() {
            if !desired_keys.contains_key(key) {
                remove(&mut self.services, key, names::LB_SERVICES)?;
                self.built.remove(key);
                gone_services.push(*key);
                out.removed += 1;
            }
        }
        let mut space = Space::new(self.maglev.len());
        // Tables the services kept hold (one that overlaps another is rebuilt elsewhere).
        let mut held: BTreeMap<ServiceKey, Range<u32>> = BTreeMap::new();
        for (key, info) in &current {
            if desired_keys.contains_key(key)
                && info.table_size > 0
                && space.claim(info.table_offset, info.table_size)
            {
                held.insert(*key, range(info));
            }
        }
        // (service, backend) pairs that ended: their flows are forgotten even when the
        // backend still serves another service.
        let mut gone_pairs: BTreeSet<(ServiceKey, (u32, u16))> = BTreeSet::new();
        for (key, svc) in &desired_keys {
            let mut list = svc.backends.clone();
            list.sort();
            let old = held.get(key).cloned();
            if let Some(r) = &old {
                // What the table held (also after a restart, when `built` is empty).
                let new: BTreeSet<(u32, u16)> = list
                    .iter()
                    .map(|(ip, port, _)| (ip_key(*ip), *port))
                    .collect();
                let before: BTreeSet<(u32, u16)> = self
                    .maglev
                    .read(r.clone())
                    .iter()
                    .filter_map(|id| backends.get(id))
                    .map(|b| (b.ip, b.port))
                    .collect();
                gone_pairs.extend(before.difference(&new).map(|addr| (*key, *addr)));
            }
            let table = match (&old, list.len()) {
                (_, 0) => None,
                (Some(r), n) if maglev_size_fits(r.len() as u32, n) => Some(r.clone()),
                (_, n) => {
                    let size = maglev_size_for(n);
                    match space.alloc(size) {
                        Some(offset) => Some(offset..offset + size),
                        // No room to grow: the table it has serves, a little less evenly.
                        None if old.is_some() => old.clone(),
                        None => {
                            out.rejected.push(Rejection::new(
                                Subject::Service(svc.name.clone()),
                                format!(
                                    "{}:{}: no room for its {size}-slot Maglev table ({} of {} slots free): remove services or backends",
                                    svc.vip,
                                    svc.port,
                                    space.free_slots(),
                                    self.maglev.len()
                                ),
                            ));
                            if current.contains_key(key) {
                                remove(&mut self.services, key, names::LB_SERVICES)?;
                                gone_services.push(*key);
                            }
                            continue;
                        }
                    }
                }
            };
            if let Some(r) = &table {
                if table != old || self.built.get(key) != Some(&list) {
                    let slots = self.build(&list, &ids, r.len() as u32);
                    out.slots_changed += self.maglev.write(r.clone(), &slots);
                }
            }
            self.built.insert(*key, list.clone());
            let info = ServiceInfo {
                table_offset: table.as_ref().map_or(0, |r| r.start),
                table_size: table.as_ref().map_or(0, |r| r.len() as u32),
                backends: list.len() as u32,
                _pad: 0,
            };
            if current.get(key) != Some(&info) {
                self.services
                    .insert(key, info, 0)
                    .map_err(map_err(names::LB_SERVICES))?;
                out.written += 1;
            }
            // The old table is free once nothing points at it any more.
            if let Some(r) = old.filter(|r| Some(r) != table.as_ref()) {
                space.free(r.start);
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
        out.ended = gone_pairs
            .iter()
            .map(|(s, (ip, port))| EndedBackend {
                vip: key_ip(s.vip),
                port: s.port,
                proto: s.proto,
                backend: (key_ip(*ip), *port),
            })
            .collect();
        Ok(out)
    }

    /// A Maglev table of `size` slots over `list`, as backend ids.
    fn build(
        &self,
        list: &[(Ipv4Addr, u16, u32)],
        ids: &BTreeMap<(u32, u16), u32>,
        size: u32,
    ) -> Vec<u32> {
        let names: Vec<String> = list
            .iter()
            .map(|(ip, port, _)| format!("{ip}:{port}"))
            .collect();
        let weighted: Vec<maglev::Weighted<'_>> = names
            .iter()
            .zip(list)
            .map(|(n, (_, _, w))| maglev::Weighted {
                name: n.as_bytes(),
                weight: *w,
            })
            .collect();
        maglev::build(&weighted, size)
            .into_iter()
            .map(|i| {
                let (ip, port, _) = list[i as usize];
                ids[&(ip_key(ip), port)]
            })
            .collect()
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
        // Unconnected UDP sockets stop sending to a backend that left (their next send picks
        // again). The socket maps carry no VNI: any network's loss of the pair counts.
        let ended: BTreeSet<(u32, u16, u8, (u32, u16))> = pairs
            .iter()
            .map(|(s, b)| (s.vip, s.port, s.proto, *b))
            .collect();
        let gone: BTreeSet<(u32, u16, u8)> =
            services.iter().map(|s| (s.vip, s.port, s.proto)).collect();
        let fwd: Vec<(SockKey, SockAddr)> = self.sock_fwd.iter().filter_map(Result::ok).collect();
        for (k, v) in fwd {
            if gone.contains(&(k.ip, k.port, k.proto))
                || ended.contains(&(k.ip, k.port, k.proto, (v.ip, v.port)))
            {
                remove(&mut self.sock_fwd, &k, names::SOCK_FWD)?;
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
                .read(range(&info))
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
        open(names::LB_BACKEND_ADDRS)?,
        maglev,
        super::open_pinned(dir, names::LB_CT).map(Map::LruHashMap)?,
        super::open_pinned(dir, names::LB_REVNAT).map(Map::LruHashMap)?,
        super::open_pinned(dir, names::SOCK_FWD).map(Map::LruHashMap)?,
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

fn key_ip(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(key.to_ne_bytes())
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
