use aya::maps::{Array, Map, MapData};
use overlay_common::{
    maps::{
        names, CONFIG_F_DNS, CONFIG_F_FOREIGN_VNI_PASS, CONFIG_F_LB, CONFIG_F_READY,
        CONFIG_F_SHAPED, CONFIG_F_TRACK_DIRECT, DATAPATH_LAYOUT,
    },
    Config,
};

use super::{ip_key, map_err, MapsError};
use crate::vtep::Vteps;

/// The node's datapath configuration (a one-slot array).
pub struct ConfigMap(Array<MapData, Config>);

/// What the datapath needs to know about this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeDatapathConfig {
    pub vteps: Vteps,
    pub underlay_ifindex: u32,
    pub underlay_mtu: u32,
    pub vxlan_port: u16,
}

impl ConfigMap {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        Ok(Self(Array::try_from(map).map_err(map_err(names::CONFIG))?))
    }

    /// Publishes the configuration and marks the datapath ready to forward. Whether
    /// services exist and whether foreign VNIs pass are kept from the running datapath (a
    /// restart must not pause either), and so are whether direct flows are tracked and
    /// whether containers are shaped.
    pub fn set(&mut self, cfg: &NodeDatapathConfig) -> Result<(), MapsError> {
        let kept = self.current().flags
            & (CONFIG_F_LB
                | CONFIG_F_FOREIGN_VNI_PASS
                | CONFIG_F_TRACK_DIRECT
                | CONFIG_F_DNS
                | CONFIG_F_SHAPED);
        let value = Config {
            vtep_ip: cfg.vteps.v4.map_or(0, ip_key),
            underlay_ifindex: cfg.underlay_ifindex,
            underlay_mtu: cfg.underlay_mtu,
            vxlan_port: cfg.vxlan_port,
            flags: CONFIG_F_READY | kept,
            layout: DATAPATH_LAYOUT,
            overhead: cfg.vteps.overhead(),
            vtep_ip6: cfg.vteps.v6.map_or([0; 16], |ip| ip.octets()),
        };
        self.0.set(0, value, 0).map_err(map_err(names::CONFIG))
    }

    /// Tells the datapath whether services exist (replies are then checked for reverse
    /// translation; without services that lookup is skipped).
    pub fn set_services(&mut self, present: bool) -> Result<(), MapsError> {
        self.set_flag(CONFIG_F_LB, present)
    }

    /// Tells the datapath whether it carries every flow (the socket hooks are off) and so
    /// must record direct flows to backends, to keep translated tuples apart from them.
    pub fn set_track_direct(&mut self, track: bool) -> Result<(), MapsError> {
        self.set_flag(CONFIG_F_TRACK_DIRECT, track)
    }

    /// Tells the datapath whether containers on this node have ingress limits (deliveries
    /// are then looked up in `SHAPED`).
    pub fn set_shaped(&mut self, on: bool) -> Result<(), MapsError> {
        self.set_flag(CONFIG_F_SHAPED, on)
    }

    /// Tells the datapath whether the daemon serves DNS on the gateways (containers'
    /// queries to their gateway then go to the host's stack, marked).
    pub fn set_dns(&mut self, on: bool) -> Result<(), MapsError> {
        self.set_flag(CONFIG_F_DNS, on)
    }

    /// Tells the datapath whether VXLAN with VNIs the overlay does not use goes to the
    /// kernel (a kernel vxlan device shares the port) or is dropped.
    pub fn set_foreign_vni_pass(&mut self, pass: bool) -> Result<(), MapsError> {
        self.set_flag(CONFIG_F_FOREIGN_VNI_PASS, pass)
    }

    /// Follows a changed underlay MTU: the datapath's "too big" checks (and the MTU its ICMP
    /// "fragmentation needed" advertises) use it from the next packet on.
    pub fn set_underlay_mtu(&mut self, mtu: u32) -> Result<(), MapsError> {
        let mut value = self.current();
        if value.underlay_mtu == mtu {
            return Ok(());
        }
        value.underlay_mtu = mtu;
        self.0.set(0, value, 0).map_err(map_err(names::CONFIG))
    }

    fn set_flag(&mut self, flag: u16, on: bool) -> Result<(), MapsError> {
        let mut value = self.current();
        let flags = if on {
            value.flags | flag
        } else {
            value.flags & !flag
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
