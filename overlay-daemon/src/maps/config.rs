use std::net::Ipv4Addr;

use aya::maps::{Array, Map, MapData};
use overlay_common::{
    maps::{names, CONFIG_F_READY},
    Config,
};

use super::{ip_key, map_err, MapsError};

/// The node's datapath configuration (a one-slot array).
pub struct ConfigMap(Array<MapData, Config>);

/// What the datapath needs to know about this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeDatapathConfig {
    pub vtep_ip: Ipv4Addr,
    pub underlay_ifindex: u32,
    pub underlay_mtu: u32,
    pub vxlan_port: u16,
}

impl ConfigMap {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        Ok(Self(Array::try_from(map).map_err(map_err(names::CONFIG))?))
    }

    /// Publishes the configuration and marks the datapath ready to forward.
    pub fn set(&mut self, cfg: &NodeDatapathConfig) -> Result<(), MapsError> {
        let value = Config {
            vtep_ip: ip_key(cfg.vtep_ip),
            underlay_ifindex: cfg.underlay_ifindex,
            underlay_mtu: cfg.underlay_mtu,
            vxlan_port: cfg.vxlan_port,
            flags: CONFIG_F_READY,
        };
        self.0.set(0, value, 0).map_err(map_err(names::CONFIG))
    }
}
