use std::net::Ipv4Addr;

use aya::maps::{Array, Map, MapData};
use overlay_common::{
    maps::{names, CONFIG_F_LB, CONFIG_F_READY},
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

    /// Publishes the configuration and marks the datapath ready to forward. Whether
    /// services exist is kept from the running datapath (a restart must not pause them).
    pub fn set(&mut self, cfg: &NodeDatapathConfig) -> Result<(), MapsError> {
        let lb = self.current().flags & CONFIG_F_LB;
        let value = Config {
            vtep_ip: ip_key(cfg.vtep_ip),
            underlay_ifindex: cfg.underlay_ifindex,
            underlay_mtu: cfg.underlay_mtu,
            vxlan_port: cfg.vxlan_port,
            flags: CONFIG_F_READY | lb,
        };
        self.0.set(0, value, 0).map_err(map_err(names::CONFIG))
    }

    /// Tells the datapath whether services exist (replies are then checked for reverse
    /// translation; without services that lookup is skipped).
    pub fn set_services(&mut self, present: bool) -> Result<(), MapsError> {
        let mut value = self.current();
        let flags = if present {
            value.flags | CONFIG_F_LB
        } else {
            value.flags & !CONFIG_F_LB
        };
        if flags == value.flags {
            return Ok(());
        }
        value.flags = flags;
        self.0.set(0, value, 0).map_err(map_err(names::CONFIG))
    }

    fn current(&self) -> Config {
        self.0.get(&0, 0).unwrap_or_default()
    }
}
