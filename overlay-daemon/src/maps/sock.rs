//! The socket-level balancer's maps: which networks each container network namespace is
//! on (`SOCK_NETNS`, written by the daemon), and which VIP each balanced socket stands for
//! (`SOCK_REV`, filled by the cgroup hooks; read to find the sockets of a backend that left).

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::{
    lb::{NetnsInfo, Sock6Addr, Sock6Key, SockAddr, SockKey},
    maps::names,
};

use super::{
    hash_map,
    lb_family::{key_ip, key_ip6},
    map_err, sync_hash, EndedBackend, MapsError,
};

/// Networks a namespace can be balanced for (a container on more is balanced for the first
/// four; the per-packet path still serves the rest).
pub const NETNS_NETWORKS: usize = 4;

pub struct SockMaps {
    netns: HashMap<MapData, u64, NetnsInfo>,
    rev: HashMap<MapData, SockKey, SockAddr>,
    rev6: HashMap<MapData, Sock6Key, Sock6Addr>,
}

/// A socket the hooks balanced: its cookie and the backend it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BalancedSocket {
    pub cookie: u64,
    pub backend: (IpAddr, u16),
    pub proto: u8,
    pub vip: (IpAddr, u16),
}

impl SockMaps {
    pub(super) fn new(netns: Map, rev: Map, rev6: Map) -> Result<Self, MapsError> {
        Ok(Self {
            netns: hash_map(netns, names::SOCK_NETNS)?,
            rev: hash_map(rev, names::SOCK_REV)?,
            rev6: hash_map(rev6, names::SOCK6_REV)?,
        })
    }

    /// Makes the namespace table equal to `desired` (netns cookie -> VNIs, in order).
    /// Returns (written, removed).
    pub fn sync_netns(
        &mut self,
        desired: &BTreeMap<u64, Vec<u32>>,
    ) -> Result<(usize, usize), MapsError> {
        let values: BTreeMap<u64, NetnsInfo> = desired
            .iter()
            .map(|(cookie, vnis)| {
                let mut info = NetnsInfo::default();
                for (slot, vni) in info.vnis.iter_mut().zip(vnis) {
                    *slot = *vni;
                }
                info.count = vnis.len().min(NETNS_NETWORKS) as u32;
                (*cookie, info)
            })
            .collect();
        sync_hash(&mut self.netns, &values, names::SOCK_NETNS)
    }

    /// Sockets balanced to any of `ended`'s backends for its service, in one walk of the
    /// table however many backends left.
    pub fn balanced_to(&self, ended: &[EndedBackend]) -> Result<Vec<BalancedSocket>, MapsError> {
        let mut out = Vec::new();
        if ended.is_empty() {
            return Ok(out);
        }
        let mut check = |cookie: u64, backend: (IpAddr, u16), proto: u8, vip: (IpAddr, u16)| {
            let hit = ended
                .iter()
                .find(|e| e.backend == backend && e.proto == proto && (e.vip, e.port) == vip);
            if let Some(e) = hit {
                out.push(BalancedSocket {
                    cookie,
                    backend: e.backend,
                    proto: e.proto,
                    vip: (e.vip, e.port),
                });
            }
        };
        if ended.iter().any(|e| e.vip.is_ipv4()) {
            for entry in self.rev.iter() {
                let (k, v) = entry.map_err(map_err(names::SOCK_REV))?;
                let backend = (key_ip(k.ip).into(), k.port);
                check(k.cookie, backend, k.proto, (key_ip(v.ip).into(), v.port));
            }
        }
        if ended.iter().any(|e| e.vip.is_ipv6()) {
            for entry in self.rev6.iter() {
                let (k, v) = entry.map_err(map_err(names::SOCK6_REV))?;
                let backend = (key_ip6(k.ip).into(), k.port);
                check(k.cookie, backend, k.proto, (key_ip6(v.ip).into(), v.port));
            }
        }
        Ok(out)
    }

    /// How many sockets the pinned `SOCK_REV` and `SOCK6_REV` in `dir` hold (for tools and
    /// tests).
    pub fn balanced_count(dir: &std::path::Path) -> Result<usize, MapsError> {
        let map = super::open_pinned(dir, names::SOCK_REV).map(Map::LruHashMap)?;
        let rev: HashMap<MapData, SockKey, SockAddr> =
            HashMap::try_from(map).map_err(map_err(names::SOCK_REV))?;
        let map = super::open_pinned(dir, names::SOCK6_REV).map(Map::LruHashMap)?;
        let rev6: HashMap<MapData, Sock6Key, Sock6Addr> =
            HashMap::try_from(map).map_err(map_err(names::SOCK6_REV))?;
        Ok(rev.keys().filter(Result::is_ok).count() + rev6.keys().filter(Result::is_ok).count())
    }
}
