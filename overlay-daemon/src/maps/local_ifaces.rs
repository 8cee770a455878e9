use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{HashMap, Map, MapData};
use overlay_common::{maps::names, LocalIface};

use super::{absent_ok, hash_map, ip_key, map_err, sync_hash, MapsError};

/// Host-side veth ifindex -> the only (VNI, IP, IPv6, MAC) its container may send as.
pub struct LocalIfaceMap(HashMap<MapData, u32, LocalIface>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalIdentity {
    pub ifindex: u32,
    pub vni: u32,
    /// Absent on an IPv6-only network.
    pub ip: Option<Ipv4Addr>,
    pub mac: [u8; 6],
    /// Its IPv6 address, on a network with IPv6.
    pub ip6: Option<Ipv6Addr>,
    /// Its bandwidth limits, if it has any (an ingress limit: `ShapedMap`).
    pub bandwidth: Option<overlay_api::Bandwidth>,
}

impl LocalIdentity {
    /// The address that names the endpoint: IPv4 when it has one.
    pub fn key_ip(&self) -> std::net::IpAddr {
        overlay_api::endpoint::key_address(self.ip, self.ip6)
    }

    fn value(&self) -> LocalIface {
        LocalIface {
            vni: self.vni,
            // 0: no IPv4 address; the datapath drops the container's IPv4 and ARP.
            ip: ip_key(self.ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            mac: self.mac,
            _pad: [0; 2],
            ip6: self.ip6.map_or([0; 16], |ip| ip.octets()),
        }
    }
}

impl LocalIfaceMap {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        Ok(Self(hash_map(map, names::LOCAL_IFACES)?))
    }

    pub fn sync<'a>(
        &mut self,
        identities: impl IntoIterator<Item = &'a LocalIdentity>,
    ) -> Result<(usize, usize), MapsError> {
        let desired: BTreeMap<u32, LocalIface> = identities
            .into_iter()
            .map(|id| (id.ifindex, id.value()))
            .collect();
        sync_hash(&mut self.0, &desired, names::LOCAL_IFACES)
    }

    /// Installs one container's identity.
    pub fn insert(&mut self, id: &LocalIdentity) -> Result<(), MapsError> {
        self.0
            .insert(id.ifindex, id.value(), 0)
            .map_err(map_err(names::LOCAL_IFACES))
    }

    /// Removes a container's identity (absent is fine).
    pub fn remove(&mut self, ifindex: u32) -> Result<(), MapsError> {
        match absent_ok(self.0.remove(&ifindex)) {
            Ok(()) => Ok(()),
            Err(e) => Err(map_err(names::LOCAL_IFACES)(e)),
        }
    }
}
