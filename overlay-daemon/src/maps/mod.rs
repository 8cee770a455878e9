//! One typed wrapper per BPF map. Nothing else in the daemon touches raw keys or values:
//! the rest of the code speaks in addresses, VNIs and interface indexes.

mod config;
mod counters;
mod endpoints;
mod host_addrs;
mod lb;
mod lb_family;
mod local_ifaces;
mod maglev_space;
mod monitor;
mod networks;
mod shaped;
mod sock;
mod vteps;

pub use config::{ConfigMap, NodeDatapathConfig};
pub use counters::{Count, CounterMap, CounterSnapshot};
pub use endpoints::{EndpointEntry, EndpointMaps, Location};
pub use host_addrs::HostAddrMap;
pub use lb::{pinned_table, EndedBackend, LbMaps, LbSync, ServiceEntry};
pub use local_ifaces::{LocalIdentity, LocalIfaceMap};
pub use monitor::{open_events, MonitorMaps};
pub use networks::{NetworkEntry, NetworkMap};
pub use shaped::ShapedMap;
pub use sock::{BalancedSocket, SockMaps, NETNS_NETWORKS};
pub use vteps::VtepMap;

use std::{collections::BTreeMap, hash::Hash, net::Ipv4Addr, path::Path};

use aya::{
    maps::{HashMap, Map, MapData, MapError},
    Ebpf, Pod,
};
use overlay_common::maps::names;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("BPF map {0} is missing from the loaded object")]
    Missing(&'static str),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("BPF map {name}: mapping it into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn map_err(name: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// Every map of the datapath, taken out of the loaded object (or opened from its pins).
pub struct DatapathMaps {
    pub config: ConfigMap,
    pub networks: NetworkMap,
    pub endpoints: EndpointMaps,
    pub vteps: VtepMap,
    pub local_ifaces: LocalIfaceMap,
    pub shaped: ShapedMap,
    pub counters: CounterMap,
    pub lb: LbMaps,
    pub sock: SockMaps,
    pub host_addrs: HostAddrMap,
}

impl DatapathMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing(name));
        Ok(Self {
            config: ConfigMap::new(take(names::CONFIG)?)?,
            networks: NetworkMap::new(take(names::NETWORKS)?)?,
            endpoints: EndpointMaps::new(
                take(names::ENDPOINTS_BY_IP)?,
                take(names::ENDPOINTS_BY_MAC)?,
                take(names::ENDPOINTS_BY_IP6)?,
            )?,
            vteps: VtepMap::new(take(names::VTEPS)?)?,
            local_ifaces: LocalIfaceMap::new(take(names::LOCAL_IFACES)?)?,
            shaped: ShapedMap::new(take(names::SHAPED)?)?,
            counters: CounterMap::new(take(names::TRAFFIC)?, take(names::DROPS)?)?,
            lb: LbMaps::new(&mut take)?,
            sock: SockMaps::new(
                take(names::SOCK_NETNS)?,
                take(names::SOCK_REV)?,
                take(names::SOCK6_REV)?,
            )?,
            host_addrs: HostAddrMap::new(take(names::HOST_ADDRS)?)?,
        })
    }
}

/// A removal's result with "the key was not there" taken as done: aya reports the kernel's
/// ENOENT for a removal as a syscall error, not as `MapError::KeyNotFound` (which only its
/// lookups return), so matching that alone let removing an absent key fail a pass.
pub(crate) fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Opens one pinned map by name from a node's map directory (for tools and tests that read a
/// running datapath without loading it).
pub fn open_pinned(dir: &Path, name: &'static str) -> Result<MapData, MapsError> {
    MapData::from_pin(dir.join(name)).map_err(map_err(name))
}

/// Makes a kernel hash map equal to `desired`: removes stale keys, writes changed values.
/// Returns (written, removed).
pub(crate) fn sync_hash<K, V>(
    map: &mut HashMap<MapData, K, V>,
    desired: &BTreeMap<K, V>,
    name: &'static str,
) -> Result<(usize, usize), MapsError>
where
    K: Pod + Ord + Hash,
    V: Pod + PartialEq,
{
    let current: BTreeMap<K, V> = map
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    let mut removed = 0;
    for key in current.keys() {
        if !desired.contains_key(key) {
            match absent_ok(map.remove(key)) {
                Ok(()) => removed += 1,
                Err(e) => return Err(map_err(name)(e)),
            }
        }
    }
    let mut written = 0;
    for (key, value) in desired {
        if current.get(key) != Some(value) {
            map.insert(key, value, 0).map_err(map_err(name))?;
            written += 1;
        }
    }
    Ok((written, removed))
}

pub(crate) fn hash_map<K: Pod, V: Pod>(
    map: Map,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, MapsError> {
    HashMap::try_from(map).map_err(map_err(name))
}

/// The datapath's key form of an IPv4 address.
pub(crate) fn ip_key(ip: Ipv4Addr) -> u32 {
    overlay_common::wire::ipv4_key(ip.octets())
}
