//! This host as the daemon runs it: the datapath loaded on the underlay (or, in
//! control-plane-only mode, tables in memory), and the underlay's route changes.

use std::net::Ipv4Addr;

use tracing::{error, warn};

use super::{status::ebpf_log_level, DaemonConfig, DaemonError, DatapathMode};
use crate::{
    datapath::{Datapath, DatapathError, DatapathOptions, PinLayout},
    maps::{EndpointMaps, NodeDatapathConfig},
    netif::Interface,
    nexthop::{NextHops, RouteChanges},
    reconcile::Target,
    tables::MacAddr,
};

/// This host as the daemon runs it.
pub(super) struct LocalNode {
    pub(super) target: Target,
    pub(super) underlay: Option<Interface>,
    pub(super) vtep_ip: Ipv4Addr,
    pub(super) vtep_mac: MacAddr,
    /// Container MTU.
    pub(super) mtu: u32,
    /// Present while the datapath pins underlay next hops.
    pub(super) route_changes: Option<RouteChanges>,
}

/// Loads and attaches the datapath on the underlay.
pub(super) fn datapath_node(
    cfg: &DaemonConfig,
    opts: &DatapathMode,
    pins: &PinLayout,
) -> Result<LocalNode, DaemonError> {
    let underlay = Interface::lookup(&opts.underlay)?;
    let vtep_ip = underlay.vtep_ip(opts.vtep_ip)?;
    let mut datapath = Datapath::load(&DatapathOptions {
        pins: pins.clone(),
        underlay_ifindex: underlay.ifindex,
        xdp: opts.xdp.resolve(underlay.driver.as_deref()),
        tc_mode: opts.tc_mode,
        ebpf_log_level: ebpf_log_level(),
        max_endpoints: opts.max_endpoints,
    })?;
    datapath
        .maps
        .config
        .set(&NodeDatapathConfig {
            vtep_ip,
            underlay_ifindex: underlay.ifindex,
            underlay_mtu: underlay.mtu,
            vxlan_port: cfg.vxlan_port,
        })
        .map_err(DatapathError::from)?;
    // Next hops are pinned only while route changes can be seen.
    let route_changes = match RouteChanges::subscribe()
        .and_then(|changes| Ok((changes, NextHops::new(underlay.ifindex, vtep_ip)?)))
    {
        Ok((changes, next_hops)) => {
            datapath.set_next_hops(next_hops);
            Some(changes)
        }
        Err(e) => {
            warn!("{e}; the kernel routes each encapsulated packet");
            None
        }
    };
    Ok(LocalNode {
        target: Target::Kernel(Box::new(datapath)),
        route_changes,
        vtep_ip,
        vtep_mac: MacAddr(underlay.mac.unwrap_or([0; 6])),
        mtu: underlay.mtu - overlay_common::wire::VXLAN_OVERHEAD,
        underlay: Some(underlay),
    })
}

/// No datapath: the node takes part in the cluster and keeps its tables in memory, so many
/// simulated nodes fit on one machine (control-plane scale tests).
pub(super) fn control_plane_node(vtep_ip: Ipv4Addr) -> LocalNode {
    LocalNode {
        target: Target::Memory(Box::new(EndpointMaps::in_memory())),
        route_changes: None,
        underlay: None,
        vtep_ip,
        vtep_mac: MacAddr([0x02, 0, 0, 0, 0, 0]),
        mtu: 1500 - overlay_common::wire::VXLAN_OVERHEAD,
    }
}

/// A full pass frees tens of MB of temporary tables at 100k endpoints; glibc keeps freed
/// memory in its arenas unless asked to give it back.
pub(super) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Waits for the next IPv4 route change; forever without a subscription.
pub(super) async fn next_route_change(changes: &mut Option<RouteChanges>) -> bool {
    match changes {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Asks again for the VTEPs' next hops after a route change; unpins them all once changes
/// can no longer be seen (`seen` false), since a pinned next hop could then go stale.
pub(super) fn on_route_change(target: &mut Target, changes: &mut Option<RouteChanges>, seen: bool) {
    let Target::Kernel(dp) = target else {
        return;
    };
    let result = if seen {
        dp.refresh_next_hops()
    } else {
        warn!("route change subscription ended; the kernel routes each encapsulated packet");
        *changes = None;
        dp.clear_next_hops()
    };
    if let Err(e) = result {
        error!("underlay next hops: {e}");
    }
}
