//! This host as the daemon runs it: the datapath loaded on the underlay (or, in
//! control-plane-only mode, tables in memory), and what the daemon follows of the host:
//! route changes (next hops), the underlay's address (the VTEP), vanished links and kernel
//! vxlan devices on the VXLAN port.

use std::{collections::BTreeSet, net::IpAddr};

use tracing::{error, info, warn};

use super::{status::ebpf_log_level, DaemonConfig, DaemonError, DatapathMode};
use crate::{
    datapath::{Datapath, DatapathError, DatapathOptions, PinLayout},
    host_events::{HostChanges, HostEvents},
    kernel_vxlan::{self, VxlanDevice},
    maps::{EndpointMaps, NodeDatapathConfig},
    netif::Interface,
    nexthop::NextHops,
    reconcile::Target,
    tables::MacAddr,
    vtep::Vteps,
};

/// This host as the daemon runs it.
pub(super) struct LocalNode {
    pub(super) target: Target,
    pub(super) underlay: Option<Interface>,
    pub(super) vteps: Vteps,
    pub(super) vtep_mac: MacAddr,
    /// Container MTU.
    pub(super) mtu: u32,
    /// What is followed of the host (datapath mode only).
    pub(super) host: Option<HostWatch>,
}

/// The host's announcements and what the daemon made of them.
pub(super) struct HostWatch {
    /// Present while changes can be seen (next hops are pinned only then).
    events: Option<HostEvents>,
    underlay: Interface,
    /// The VTEP was given with --vtep-ip: it is not moved with the underlay's address.
    vtep_explicit: bool,
    /// What encapsulation adds (`Vteps::overhead`), for the MTU a changed underlay leaves.
    overhead: u32,
    vxlan_port: u16,
    /// Kernel vxlan devices sharing the VXLAN port.
    pub(super) devices: Vec<VxlanDevice>,
}

/// What the loop has to do after a burst of host changes.
#[derive(Default)]
pub(super) struct HostActions {
    /// The VTEP addresses moved to these.
    pub(super) vtep_moved: Option<Vteps>,
    /// Links that went away (container veths whose namespace vanished).
    pub(super) links_removed: BTreeSet<String>,
    /// The kernel vxlan devices on the port changed.
    pub(super) devices_changed: bool,
}

/// Loads and attaches the datapath on the underlay.
pub(super) fn datapath_node(
    cfg: &DaemonConfig,
    opts: &DatapathMode,
    pins: &PinLayout,
) -> Result<LocalNode, DaemonError> {
    let underlay = Interface::lookup(&opts.underlay)?;
    let vteps = underlay.vteps(&opts.vtep_ips, opts.vtep_prefer)?;
    let mut datapath = Datapath::load(&DatapathOptions {
        pins: pins.clone(),
        underlay_ifindex: underlay.ifindex,
        xdp: opts.xdp.resolve(underlay.driver.as_deref()),
        tc_mode: opts.tc_mode,
        ebpf_log_level: ebpf_log_level(),
        max_endpoints: opts.max_endpoints,
        socket_lb: opts.socket_lb,
        socket_lb_cgroup: opts.socket_lb_cgroup.clone(),
    })?;
    datapath
        .maps
        .config
        .set(&NodeDatapathConfig {
            vteps,
            underlay_ifindex: underlay.ifindex,
            underlay_mtu: underlay.mtu,
            vxlan_port: cfg.vxlan_port,
        })
        .map_err(DatapathError::from)?;
    // Next hops are pinned only while route changes can be seen.
    let events = match HostEvents::subscribe(vteps.v6.is_some())
        .map_err(|e| e.to_string())
        .and_then(|events| {
            Ok((
                events,
                NextHops::new(underlay.ifindex, vteps).map_err(|e| e.to_string())?,
            ))
        }) {
        Ok((events, next_hops)) => {
            datapath.set_next_hops(next_hops);
            Some(events)
        }
        Err(e) => {
            warn!("host changes cannot be followed ({e}); the kernel routes each encapsulated packet and a moved underlay address is not followed");
            None
        }
    };
    let host = HostWatch {
        events,
        underlay: underlay.clone(),
        vtep_explicit: !opts.vtep_ips.is_empty(),
        overhead: vteps.overhead(),
        vxlan_port: cfg.vxlan_port,
        devices: Vec::new(),
    };
    Ok(LocalNode {
        target: Target::Kernel(Box::new(datapath)),
        host: Some(host),
        vteps,
        vtep_mac: MacAddr(underlay.mac.unwrap_or([0; 6])),
        mtu: underlay.mtu - vteps.overhead(),
        underlay: Some(underlay),
    })
}

/// No datapath: the node takes part in the cluster and keeps its tables in memory, so many
/// simulated nodes fit on one machine (control-plane scale tests).
pub(super) fn control_plane_node(vteps: Vteps) -> LocalNode {
    LocalNode {
        target: Target::Memory(Box::new(EndpointMaps::in_memory())),
        host: None,
        underlay: None,
        vteps,
        vtep_mac: MacAddr([0x02, 0, 0, 0, 0, 0]),
        mtu: 1500 - vteps.overhead(),
    }
}

impl HostWatch {
    /// The next burst of host changes; forever without a subscription.
    pub(super) async fn next(host: &mut Option<HostWatch>) -> Option<HostChanges> {
        match host.as_mut().and_then(|h| h.events.as_mut()) {
            Some(events) => events.next().await,
            None => std::future::pending().await,
        }
    }

    /// Acts on a burst (`None`: the subscription ended): next hops, the VTEP address,
    /// vxlan devices. What the loop must do follows.
    pub(super) async fn apply(
        &mut self,
        target: &mut Target,
        changes: Option<HostChanges>,
        vtep: Vteps,
    ) -> HostActions {
        let mut actions = HostActions::default();
        let Target::Kernel(dp) = target else {
            return actions;
        };
        let Some(changes) = changes else {
            warn!("host change subscription ended; the kernel routes each encapsulated packet");
            self.events = None;
            if let Err(e) = dp.clear_next_hops() {
                error!("underlay next hops: {e}");
            }
            return actions;
        };
        // Before the address: reading it again refreshes the MTU this compares with.
        if let Some(&mtu) = changes.mtus.get(&self.underlay.ifindex) {
            self.follow_mtu(dp, mtu);
        }
        if changes.addresses.contains(&self.underlay.ifindex) {
            actions.vtep_moved = self.vtep_moved(vtep);
        }
        if !changes.addresses.is_empty() {
            crate::host_route::follow_addresses(&mut dp.maps.host_addrs).await;
        }
        if changes.routes || actions.vtep_moved.is_some() {
            if let Err(e) = dp.refresh_next_hops() {
                error!("underlay next hops: {e}");
            }
        }
        if changes.links_changed || !changes.links_removed.is_empty() {
            actions.devices_changed = self.scan_devices(vtep).await;
        }
        actions.links_removed = changes.links_removed;
        actions
    }

    /// An operator changed the underlay's MTU: the datapath checks packets against the new
    /// one at once (a container above it gets ICMP "fragmentation needed"); containers made
    /// from now on still get the MTU this daemon registered with until it restarts.
    fn follow_mtu(&mut self, dp: &mut crate::datapath::Datapath, mtu: u32) {
        if mtu == self.underlay.mtu {
            return;
        }
        let fits = mtu.saturating_sub(self.overhead);
        warn!(underlay = %self.underlay.name, old = self.underlay.mtu, new = mtu,
              "the underlay MTU changed: packets of containers above {fits} now get ICMP fragmentation needed; restart overlayd to give new containers that MTU");
        match dp.maps.config.set_underlay_mtu(mtu) {
            Ok(()) => self.underlay.mtu = mtu,
            Err(e) => error!("following the underlay MTU: {e}"),
        }
    }

    /// The new VTEP addresses if the underlay's moved (and were not fixed with --vtep-ip):
    /// an address that left the underlay is replaced by its first one of that family.
    fn vtep_moved(&mut self, vtep: Vteps) -> Option<Vteps> {
        let now = match Interface::lookup(&self.underlay.name) {
            Ok(i) => i,
            Err(e) => {
                error!("the underlay changed and cannot be read ({e}); the VTEP stays {vtep}");
                return None;
            }
        };
        let (v4, v6) = (now.ipv4, now.ipv6);
        self.underlay = now;
        if self.vtep_explicit {
            for ip in vtep.addrs().filter(|ip| !self.has_address(*ip)) {
                error!(%ip, underlay = %self.underlay.name, "the VTEP address given with --vtep-ip is no longer on the underlay: peers cannot reach this node by it until it is back");
            }
            return None;
        }
        // Each family's address stays while it is on the underlay (another address added
        // next to it, an IPv6 prefix or a privacy address, moves nothing).
        let mut moved = vtep;
        if let Some(old) = vtep.v4.filter(|ip| !self.has_address(IpAddr::V4(*ip))) {
            match v4 {
                Some(ip) => moved.v4 = Some(ip),
                None => {
                    error!(vtep = %old, underlay = %self.underlay.name, "the underlay has no IPv4 address left: peers cannot reach this node over IPv4 until one is assigned")
                }
            }
        }
        if let Some(old) = vtep.v6.filter(|ip| !self.has_address(IpAddr::V6(*ip))) {
            match v6 {
                Some(ip) => moved.v6 = Some(ip),
                None => {
                    error!(vtep = %old, underlay = %self.underlay.name, "the underlay has no usable global IPv6 address left: peers cannot reach this node over IPv6 until one is assigned")
                }
            }
        }
        if moved == vtep {
            return None;
        }
        info!(old = %vtep, new = %moved, underlay = %self.underlay.name, "the underlay address moved; the VTEP follows");
        Some(moved)
    }

    fn has_address(&self, ip: IpAddr) -> bool {
        nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
            addrs.any(|a| {
                let addr = a.address.and_then(|s| {
                    s.as_sockaddr_in()
                        .map(|s| IpAddr::V4(s.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                });
                a.interface_name == self.underlay.name && addr == Some(ip)
            })
        })
    }

    /// Moves the datapath to a new VTEP address: the config's outer source and decap
    /// address, and the next hops' source. The caller re-plans (local entries carry it).
    pub(super) fn move_vtep(&self, target: &mut Target, vtep: Vteps) {
        let Target::Kernel(dp) = target else {
            return;
        };
        let cfg = NodeDatapathConfig {
            vteps: vtep,
            underlay_ifindex: self.underlay.ifindex,
            underlay_mtu: self.underlay.mtu,
            vxlan_port: self.vxlan_port,
        };
        if let Err(e) = dp.maps.config.set(&cfg) {
            error!("moving the VTEP to {vtep}: {e}");
        }
        if self.events.is_some() {
            match NextHops::new(self.underlay.ifindex, vtep) {
                Ok(n) => dp.set_next_hops(n),
                Err(e) => warn!("underlay next hops from {vtep}: {e}"),
            }
            if let Err(e) = dp.refresh_next_hops() {
                error!("underlay next hops: {e}");
            }
        }
    }

    /// Passes foreign VNIs to the kernel while a device shares the port; the VNIs the
    /// devices hold, for the reconciler to refuse.
    pub(super) fn apply_devices(
        &self,
        target: &mut Target,
    ) -> std::collections::BTreeMap<u32, String> {
        if let Target::Kernel(dp) = target {
            if let Err(e) = dp
                .maps
                .config
                .set_foreign_vni_pass(!self.devices.is_empty())
            {
                error!("passing foreign VXLAN to the kernel: {e}");
            }
        }
        self.devices
            .iter()
            .filter_map(|d| Some((d.vni?, d.name.clone())))
            .collect()
    }

    /// Looks for kernel vxlan devices on the VXLAN port; true if the set changed.
    pub(super) async fn scan_devices(&mut self, vtep: Vteps) -> bool {
        let devices = match kernel_vxlan::sharing_port(self.vxlan_port, vtep).await {
            Ok(d) => d,
            Err(e) => {
                warn!("listing vxlan devices: {e}");
                return false;
            }
        };
        if devices == self.devices {
            return false;
        }
        if devices.is_empty() {
            info!(
                port = self.vxlan_port,
                "no kernel vxlan device shares the VXLAN port any more"
            );
        } else {
            let names: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
            warn!(port = self.vxlan_port, devices = %names.join(", "), "kernel vxlan devices share the VXLAN port: VXLAN with VNIs no overlay network uses goes to them untouched; an overlay network using one of their VNIs is refused on this node");
        }
        self.devices = devices;
        true
    }
}
