//! The load balancer's maps: services (VIP:port -> its Maglev table), backends (id ->
//! address), the Maglev tables (`maglev_space`), and the flow tables the datapath fills
//! (connection tracking, reverse translation, the backends unconnected UDP sockets were
//! given), which the daemon only purges of flows that lost their service or backend.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::Range,
};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::{
    lb::{
        maglev_size_fits, maglev_size_for, Backend6Info, BackendInfo, BackendOf, Ct6Entry, CtEntry,
        Flow6Key, FlowKey, RevNat6Entry, RevNatEntry, ServiceInfo, Sock6Addr, Sock6Key, SockAddr,
        SockKey,
    },
    maps::names,
};

use super::{
    hash_map, ip_key,
    lb_family::{ip6_key, key_ip, key_ip6, remove, Addr, FamilyMaps, SvcKey},
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
    /// An IPv4 or IPv6 VIP (balanced per packet and by the socket hooks); its backends are
    /// of the same family.
    pub vip: IpAddr,
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    /// (address, port, weight), live backends only.
    pub backends: Vec<(IpAddr, u16, u32)>,
}

impl ServiceEntry {
    fn key(&self) -> SvcKey {
        SvcKey::new(self.vni, self.vip, self.port, self.proto)
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
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub backend: Addr,
}

pub struct LbMaps {
    family: FamilyMaps,
    /// Backend address -> id, for the datapath to know a direct flow to a backend.
    backend_addrs: HashMap<MapData, BackendInfo, u32>,
    backend_addrs6: HashMap<MapData, Backend6Info, u32>,
    maglev: MaglevArray,
    ct: HashMap<MapData, FlowKey, CtEntry>,
    revnat: HashMap<MapData, FlowKey, RevNatEntry>,
    ct6: HashMap<MapData, Flow6Key, Ct6Entry>,
    revnat6: HashMap<MapData, Flow6Key, RevNat6Entry>,
    sock_fwd: HashMap<MapData, SockKey, SockAddr>,
    sock6_fwd: HashMap<MapData, Sock6Key, Sock6Addr>,
    /// The backend list each service's table was last built from, so unchanged services
    /// are not rebuilt on every reconciliation.
    built: BTreeMap<SvcKey, Vec<(IpAddr, u16, u32)>>,
}

fn range(info: &ServiceInfo) -> Range<u32> {
    info.table_offset..info.table_offset.saturating_add(info.table_size)
}

impl LbMaps {
    /// The maps by name from `take` (the loaded object's, or pins).
    pub(super) fn new(
        mut take: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        Ok(Self {
            family: FamilyMaps::new(
                take(names::LB_SERVICES)?,
                take(names::LB6_SERVICES)?,
                take(names::LB_BACKENDS)?,
                take(names::LB6_BACKENDS)?,
            )?,
            backend_addrs: hash_map(take(names::LB_BACKEND_ADDRS)?, names::LB_BACKEND_ADDRS)?,
            backend_addrs6: hash_map(take(names::LB6_BACKEND_ADDRS)?, names::LB6_BACKEND_ADDRS)?,
            maglev: MaglevArray::new(take(names::LB_MAGLEV)?)?,
            ct: hash_map(take(names::LB_CT)?, names::LB_CT)?,
            revnat: hash_map(take(names::LB_REVNAT)?, names::LB_REVNAT)?,
            ct6: hash_map(take(names::LB6_CT)?, names::LB6_CT)?,
            revnat6: hash_map(take(names::LB6_REVNAT)?, names::LB6_REVNAT)?,
            sock_fwd: hash_map(take(names::SOCK_FWD)?, names::SOCK_FWD)?,
            sock6_fwd: hash_map(take(names::SOCK6_FWD)?, names::SOCK6_FWD)?,
            built: BTreeMap::new(),
        })
    }

    /// Makes the services, backends and Maglev tables equal to `desired`. Backends are added
    /// before the tables that name them and removed after; a table is written before the
    /// service entry that points at it, and a service keeps its table (and so its flows'
    /// backends) for as long as it exists, across daemon restarts too.
    pub fn sync(&mut self, desired: &[ServiceEntry]) -> Result<LbSync, MapsError> {
        let mut out = LbSync::default();
        let current: BTreeMap<SvcKey, ServiceInfo> = self.family.services()?;
        let backends: BTreeMap<u32, Addr> = self.family.backends()?;
        let mut ids: BTreeMap<Addr, u32> = backends.iter().map(|(id, b)| (*b, *id)).collect();

        // Backend ids: kept while the address is a backend anywhere, new ones after the
        // highest in use (a recycled id is caught by the address check in the datapath).
        let wanted: BTreeSet<Addr> = desired
            .iter()
            .flat_map(|s| s.backends.iter().map(|(ip, port, _)| (*ip, *port)))
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
            self.family.set_backend(next_id, *addr)?;
            ids.insert(*addr, next_id);
            out.written += 1;
        }

        // Addresses before the services that lead to them, so a direct flow to a new
        // backend is known as one from its first packet.
        let mut addrs: BTreeMap<BackendInfo, u32> = BTreeMap::new();
        let mut addrs6: BTreeMap<Backend6Info, u32> = BTreeMap::new();
        for ((ip, port), id) in ids.iter().filter(|(addr, _)| wanted.contains(addr)) {
            let port = *port;
            match ip {
                IpAddr::V4(ip) => addrs.insert(
                    BackendOf {
                        ip: ip_key(*ip),
                        port,
                        _pad: 0,
                    },
                    *id,
                ),
                IpAddr::V6(ip) => addrs6.insert(
                    BackendOf {
                        ip: ip6_key(*ip),
                        port,
                        _pad: 0,
                    },
                    *id,
                ),
            };
        }
        for (written, removed) in [
            super::sync_hash(&mut self.backend_addrs, &addrs, names::LB_BACKEND_ADDRS)?,
            super::sync_hash(&mut self.backend_addrs6, &addrs6, names::LB6_BACKEND_ADDRS)?,
        ] {
            out.written += written;
            out.removed += removed;
        }
        let desired_keys: BTreeMap<SvcKey, &ServiceEntry> =
            desired.iter().map(|s| (s.key(), s)).collect();
        // Services that went give up their tables first, so a new service taking the space
        // never shares it with a stale entry that still points there.
        let mut gone_services = Vec::new();
        for key in current.keys() {
            if !desired_keys.contains_key(key) {
                self.family.remove_service(key)?;
                self.built.remove(key);
                gone_services.push(*key);
                out.removed += 1;
            }
        }
        let mut space = Space::new(self.maglev.len());
        // Tables the services kept hold (one that overlaps another is rebuilt elsewhere).
        let mut held: BTreeMap<SvcKey, Range<u32>> = BTreeMap::new();
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
        let mut gone_pairs: BTreeSet<(SvcKey, Addr)> = BTreeSet::new();
        for (key, svc) in &desired_keys {
            let mut list = svc.backends.clone();
            list.sort();
            let old = held.get(key).cloned();
            if let Some(r) = &old {
                // What the table held (also after a restart, when `built` is empty).
                let new: BTreeSet<Addr> = list.iter().map(|(ip, port, _)| (*ip, *port)).collect();
                let before: BTreeSet<Addr> = self
                    .maglev
                    .read(r.clone())
                    .iter()
                    .filter_map(|id| backends.get(id).copied())
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
                                    "{}: no room for its {size}-slot Maglev table ({} of {} slots free): remove services or backends",
                                    std::net::SocketAddr::new(svc.vip, svc.port),
                                    space.free_slots(),
                                    self.maglev.len()
                                ),
                            ));
                            if current.contains_key(key) {
                                self.family.remove_service(key)?;
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
                self.family.set_service(key, info)?;
                out.written += 1;
            }
            // The old table is free once nothing points at it any more.
            if let Some(r) = old.filter(|r| Some(r) != table.as_ref()) {
                space.free(r.start);
            }
        }

        for (id, b) in &backends {
            if !wanted.contains(b) {
                self.family.remove_backend(*id, b.0)?;
                out.removed += 1;
            }
        }
        if !gone_services.is_empty() || !gone_pairs.is_empty() {
            self.purge_flows(&gone_services, &gone_pairs)?;
        }
        out.ended = gone_pairs
            .iter()
            .map(|(s, backend)| EndedBackend {
                vip: s.vip(),
                port: s.port(),
                proto: s.proto(),
                backend: *backend,
            })
            .collect();
        Ok(out)
    }

    /// A Maglev table of `size` slots over `list`, as backend ids.
    fn build(&self, list: &[(IpAddr, u16, u32)], ids: &BTreeMap<Addr, u32>, size: u32) -> Vec<u32> {
        let names: Vec<String> = list
            .iter()
            .map(|(ip, port, _)| std::net::SocketAddr::new(*ip, *port).to_string())
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
                ids[&(ip, port)]
            })
            .collect()
    }

    /// Forgets the flows of removed services and of backends removed from a service, in
    /// both directions, so nothing stale is balanced or translated later.
    fn purge_flows(
        &mut self,
        services: &[SvcKey],
        pairs: &BTreeSet<(SvcKey, Addr)>,
    ) -> Result<(), MapsError> {
        let stale = |vni: u32, vip: IpAddr, port: u16, proto: u8, backend: Addr| {
            let svc = SvcKey::new(vni, vip, port, proto);
            services.contains(&svc) || pairs.contains(&(svc, backend))
        };
        let v4 = |ip: u32| IpAddr::from(key_ip(ip));
        let v6 = |ip: [u32; 4]| IpAddr::from(key_ip6(ip));
        purge(&mut self.ct, names::LB_CT, |k, v| {
            let backend = (v4(v.backend.ip), v.backend.port);
            stale(k.vni, v4(k.dst_ip), k.dst_port, k.proto, backend)
        })?;
        purge(&mut self.revnat, names::LB_REVNAT, |k, v| {
            stale(
                k.vni,
                v4(v.vip),
                v.port,
                k.proto,
                (v4(k.src_ip), k.src_port),
            )
        })?;
        purge(&mut self.ct6, names::LB6_CT, |k, v| {
            let backend = (v6(v.backend.ip), v.backend.port);
            stale(k.vni, v6(k.dst_ip), k.dst_port, k.proto, backend)
        })?;
        purge(&mut self.revnat6, names::LB6_REVNAT, |k, v| {
            stale(
                k.vni,
                v6(v.vip),
                v.port,
                k.proto,
                (v6(k.src_ip), k.src_port),
            )
        })?;
        // Unconnected UDP sockets stop sending to a backend that left (their next send picks
        // again). The socket maps carry no VNI: any network's loss of the pair counts.
        let ended: BTreeSet<(IpAddr, u16, u8, Addr)> = pairs
            .iter()
            .map(|(s, b)| (s.vip(), s.port(), s.proto(), *b))
            .collect();
        let gone: BTreeSet<(IpAddr, u16, u8)> = services
            .iter()
            .map(|s| (s.vip(), s.port(), s.proto()))
            .collect();
        let stale_send = |vip: IpAddr, port: u16, proto: u8, to: Addr| {
            gone.contains(&(vip, port, proto)) || ended.contains(&(vip, port, proto, to))
        };
        let fwd: Vec<(SockKey, SockAddr)> = self.sock_fwd.iter().filter_map(Result::ok).collect();
        for (k, v) in fwd {
            if stale_send(
                key_ip(k.ip).into(),
                k.port,
                k.proto,
                (key_ip(v.ip).into(), v.port),
            ) {
                remove(&mut self.sock_fwd, &k, names::SOCK_FWD)?;
            }
        }
        let fwd6: Vec<(Sock6Key, Sock6Addr)> =
            self.sock6_fwd.iter().filter_map(Result::ok).collect();
        for (k, v) in fwd6 {
            let vip = key_ip6(k.ip).into();
            if stale_send(vip, k.port, k.proto, (key_ip6(v.ip).into(), v.port)) {
                remove(&mut self.sock6_fwd, &k, names::SOCK6_FWD)?;
            }
        }
        Ok(())
    }

    /// Backend addresses of one service's Maglev table as the datapath sees it (for
    /// tools/tests).
    pub fn table(&self, vni: u32, vip: IpAddr, port: u16, proto: u8) -> Option<Vec<Addr>> {
        let info = self.family.service(&SvcKey::new(vni, vip, port, proto))?;
        let (backends, _) = self.family.read_backends().ok()?;
        Some(
            self.maglev
                .read(range(&info))
                .iter()
                .filter_map(|id| backends.get(id).copied())
                .collect(),
        )
    }
}

/// Open-by-pin access for tools and tests: one service's table as backend addresses.
pub fn pinned_table(
    dir: &std::path::Path,
    vni: u32,
    vip: impl Into<IpAddr>,
    port: u16,
    proto: u8,
) -> Result<Option<Vec<Addr>>, MapsError> {
    let lb = LbMaps::new(|name| {
        let data = super::open_pinned(dir, name)?;
        Ok(match name {
            names::LB_MAGLEV => Map::Array(data),
            names::LB_CT
            | names::LB_REVNAT
            | names::LB6_CT
            | names::LB6_REVNAT
            | names::SOCK_FWD
            | names::SOCK6_FWD => Map::LruHashMap(data),
            _ => Map::HashMap(data),
        })
    })?;
    Ok(lb.table(vni, vip.into(), port, proto))
}

impl LbMaps {
    /// How many flows the conntrack tables (both families) hold on a running datapath
    /// (tools and tests).
    pub fn flow_count(dir: &std::path::Path) -> Result<usize, MapsError> {
        let open = |name| super::open_pinned(dir, name).map(Map::LruHashMap);
        let ct: HashMap<MapData, FlowKey, CtEntry> =
            HashMap::try_from(open(names::LB_CT)?).map_err(map_err(names::LB_CT))?;
        let ct6: HashMap<MapData, Flow6Key, Ct6Entry> =
            HashMap::try_from(open(names::LB6_CT)?).map_err(map_err(names::LB6_CT))?;
        Ok(ct.keys().filter(Result::is_ok).count() + ct6.keys().filter(Result::is_ok).count())
    }
}

/// Removes the entries of a flow map that `stale` picks (read first: removing while
/// iterating a hash map skips entries).
fn purge<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    stale: impl Fn(&K, &V) -> bool,
) -> Result<(), MapsError> {
    let all: Vec<(K, V)> = map
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for (k, _) in all.iter().filter(|(k, v)| stale(k, v)) {
        remove(map, k, name)?;
    }
    Ok(())
}
